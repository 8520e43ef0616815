//! The log store's errors.

use std::path::PathBuf;

use wire::Tid;

/// Why an operation of the log store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An I/O call failed. `ENOSPC` comes here too (see `is_disk_full`).
    #[error("{operation} {path}: {source}")]
    Io { operation: &'static str, path: PathBuf, source: std::io::Error },
    /// A write or fdatasync failed earlier; the log refuses further writes, because what is
    /// on disk is no longer known. Reopen the store to recover from what was made durable.
    #[error("log is poisoned by an earlier write failure ({0}); reopen the store")]
    Poisoned(String),
    /// Bytes in the log or a segment header are damaged where the log must be intact.
    #[error("corrupt log: segment {segment} offset {offset}: {reason}")]
    Corrupt { segment: u32, offset: u64, reason: String },
    /// An index file is damaged: the store can rebuild it from the log (delete it and
    /// reopen).
    #[error("corrupt index file {path} at offset {offset}: {reason}")]
    CorruptIndex { path: PathBuf, offset: u64, reason: String },
    /// A record would not fit in a segment.
    #[error("record of {size} bytes exceeds the largest record a segment holds ({max} bytes)")]
    RecordTooLarge { size: usize, max: usize },
    /// The operation refers to a transaction this store does not have in that state.
    #[error("transaction {ttid}: {reason}")]
    Transaction { ttid: Tid, reason: &'static str },
    /// A caller's argument is invalid (a bad option, a tid out of range).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// Another process (or another store in this one) has the directory open: two writers
    /// would interleave their records.
    #[error("data directory {0} is in use by another process (it holds the lock on its LOCK file)")]
    InUse(PathBuf),
}

impl StoreError {
    /// Whether the error is the disk being full: the store stays usable once space returns.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StoreError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC))
            || matches!(self, StoreError::Poisoned(reason) if reason.contains("No space left"))
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
