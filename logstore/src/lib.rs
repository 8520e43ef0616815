//! logstore: one storage core's durable state (segmented append-only log, mmap indexes,
//! MVCC lookups, crash recovery). Not built yet: see the logstore issue. It will depend on
//! `wire` for ids and enums, and on nothing above it.
