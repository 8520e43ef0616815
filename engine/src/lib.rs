//! engine: the nodes (master, storage cores, client, admin) on glommio, and the `neo` binary.
//! Not built yet: see the cluster and transactions issues. It will depend on `wire` and
//! `logstore`.
