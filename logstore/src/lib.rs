//! logstore: one storage core's durable state.
//!
//! A segmented append-only log of checksummed records (`record`, `log`) over a narrow disk
//! seam (`disk`), replayed at open into an in-memory index (`state`), behind the API the
//! storage node uses (`store`): two-phase commit (store, vote, lock, unlock, abort), MVCC
//! loads, history, undo information, per-partition iteration and digests for replication
//! and replica checks, metadata, truncate, pack and partition drop.
//!
//! The byte format and the crash analysis of every step are in docs/logstore-format.md.

pub mod checkpoint;
pub mod disk;
pub mod doc;
pub mod error;
pub mod index;
pub mod limits;
pub mod log;
pub mod record;
pub mod state;
pub mod store;
pub mod uring;

pub use checkpoint::CheckpointJob;
pub use disk::{Disk, FileDisk};
pub use error::{Result, StoreError};
pub use log::{FlushBatch, RecoveryReport, TornTail};
pub use record::{LogPosition, Metadata, TransactionMeta, Value};
pub use state::{DataRef, PendingStage};
pub use store::{
    CompactionReport, IndexScrub, LoadError, Loaded, Located, LogStore, Options, SerialCheck,
    SerialRangeCheck, TidRangeCheck, TransactionInfo, UndoInfo,
};
pub use uring::{
    DurableWatch, Notify, UringFiles, checkpoint_off_core, compact_on_core, flush_loop,
};
