//! engine: the nodes of a neo-rs cluster (master, storage cores, client, admin) and the
//! `neo` binary.
//!
//! Built so far: `pt`, the partition table and the decisions about it (creation, outdating
//! cells of lost nodes, rebalancing with `tweak`, replication done, dropping a node), as a
//! plain state machine with no sockets or clocks. The nodes themselves and the binary come
//! with the cluster issue.

pub mod admin;
pub mod cluster;
pub mod ctl;
pub mod election;
pub mod master;
pub mod net;
pub mod pt;
pub mod shutdown;
pub mod storage;
