//! engine: the nodes of a neo-rs cluster (master, storage cores, client, admin) and the
//! `neo` binary.
//!
//! The decisions live in plain state machines with no sockets or clocks (`pt`, `cluster`,
//! `election`, `transactions`, `in_doubt`, `liveness`, `packs` at the master, `replication`, `locks` at a storage core); the drivers
//! (`master`, `storage`, `admin`, `client`) carry them out over glommio or threads.

// `engine::...` paths in files compiled both here and in the integration tests
// (`tls_testing.rs`).
#[cfg(test)]
extern crate self as engine;

pub mod admin;
pub mod blocking;
pub mod check;
pub mod client;
pub mod cluster;
pub mod ctl;
pub mod doctor;
pub mod election;
pub mod in_doubt;
pub mod limits;
pub mod liveness;
pub mod locks;
pub mod logging;
pub mod master;
pub mod metrics;
pub mod net;
pub mod packs;
pub mod pt;
pub mod repeats;
pub mod replication;
pub mod shutdown;
pub mod storage;
pub mod tls;
pub mod transactions;
