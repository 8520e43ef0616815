//! `LogStore`: one storage core's durable state, the API the storage node uses.
//!
//! Every change is a record appended to the log and applied to the in-memory `State`
//! (the same `apply` that replays the log at open). Durability is explicit: a change is
//! durable once `durable()` passes the position it returned; `flush` (or a runtime running
//! `take_flush` batches) gets it there, one fdatasync for every change made meanwhile.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use sha1_smol::Sha1;
use wire::messages::Digest;
use wire::{Compression, Oid, PartitionId, Tid};

use crate::checkpoint::{CheckpointJob, CheckpointState, WrittenIndex, encode_state, index_files};
use crate::disk::{Disk, FileDisk};
use crate::error::{Result, StoreError};
use crate::index::IndexFile;
use crate::limits::RECORD_HEADER_SIZE;
use crate::limits::SEGMENT_SIZE_DEFAULT;
use crate::log::{FlushBatch, Log, RecoveryReport};
use crate::record::{
    DeleteReplicatedBody, REPLICATE_DATA_OFFSET, ReplicateObjectBody, ReplicateTransactionBody,
};
use crate::record::{
    DropPartitionBody, LockBody, LogPosition, Metadata, PackBody, RELOCATE_DATA_OFFSET, RawRecord,
    RecordKind, RelocateBody, RelocateVoteBody, ReserveOidsBody, STORE_DATA_OFFSET, StoreBody,
    TransactionMeta, TruncateBody, TtidBody, Value, VoteBody, check_record,
};
use crate::state::{Around, DataRef, Filter, PendingStage, State, Stored, TransactionEntry};

#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Size of new segment files. Existing segments keep the size they were made with.
    pub segment_size: u32,
}

impl Default for Options {
    fn default() -> Options {
        Options { segment_size: SEGMENT_SIZE_DEFAULT }
    }
}

/// A revision as a load returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    pub oid: Oid,
    pub serial: Tid,
    /// The serial of the revision after this one, if any.
    pub next_serial: Option<Tid>,
    pub compression: Compression,
    pub data_crc: u32,
    /// Empty with crc 0 when the revision deletes the object.
    pub data: Bytes,
    /// Set when the revision reuses an earlier serial's data (undo).
    pub data_serial: Option<Tid>,
}

/// A revision found by `locate`: a load's answer but for the data bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Located {
    pub oid: Oid,
    pub serial: Tid,
    pub next_serial: Option<Tid>,
    /// Where the data is; none when the revision deletes the object.
    pub data: Option<DataRef>,
    pub data_serial: Option<Tid>,
}

impl Located {
    /// The load answer, with the data read.
    pub fn with_data(self, data: Bytes) -> Loaded {
        Loaded {
            oid: self.oid,
            serial: self.serial,
            next_serial: self.next_serial,
            compression: self.data.map_or(Compression::None, |d| d.compression),
            data_crc: self.data.map_or(0, |d| d.data_crc),
            data,
            data_serial: self.data_serial,
        }
    }
}

/// Why a load found nothing.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("object {0} does not exist")]
    OidDoesNotExist(Oid),
    #[error("object {0} has no revision matching the request")]
    OidNotFound(Oid),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A committed transaction's metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct TransactionInfo {
    pub tid: Tid,
    pub ttid: Tid,
    pub packed: bool,
    pub meta: TransactionMeta,
}

/// A replica check of a range of transactions (`LogStore::check_tid_range`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TidRangeCheck {
    pub count: u32,
    /// SHA-1 of the tids and of their transactions' metadata.
    pub digest: Digest,
    pub last: Option<Tid>,
    /// The first transaction whose record does not match its checksum.
    pub damaged: Option<Tid>,
}

/// A replica check of object records being digested (`LogStore::check_records`).
#[derive(Clone, Default)]
pub struct SerialCheck {
    serials: Sha1,
    oids: Sha1,
    data: Sha1,
    count: u32,
    last: Option<(Tid, Oid)>,
    damaged: Option<(Tid, Oid)>,
}

impl std::fmt::Debug for SerialCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialCheck").field("count", &self.count).field("last", &self.last).finish()
    }
}

impl SerialCheck {
    pub fn finish(self) -> SerialRangeCheck {
        SerialRangeCheck {
            count: self.count,
            tid_digest: Digest(self.serials.digest().bytes()),
            max_tid: self.last.map(|(serial, _)| serial),
            oid_digest: Digest(self.oids.digest().bytes()),
            max_oid: self.last.map(|(_, oid)| oid),
            data_digest: Digest(self.data.digest().bytes()),
            damaged: self.damaged,
        }
    }
}

/// A replica check of object records (`check_serial_range`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SerialRangeCheck {
    pub count: u32,
    /// SHA-1 of the serials, 8 bytes big-endian each, in (serial, oid) order.
    pub tid_digest: Digest,
    pub max_tid: Option<Tid>,
    /// SHA-1 of the oids, in the same order.
    pub oid_digest: Digest,
    pub max_oid: Option<Oid>,
    /// SHA-1 of each record's data checksum (4 bytes big-endian; the complement for data
    /// that does not match its checksum, 0 for none) and undo back-pointer (8 bytes).
    pub data_digest: Digest,
    /// The first record whose data does not match its checksum.
    pub damaged: Option<(Tid, Oid)>,
}

/// What undoing a transaction means for one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UndoInfo {
    pub current_serial: Tid,
    /// The serial whose data the undo restores; none when undo removes the object.
    pub undo_serial: Option<Tid>,
    pub is_current: bool,
}

#[derive(Debug)]
pub struct LogStore<D: Disk = FileDisk> {
    log: Log<D>,
    state: State,
    report: RecoveryReport,
    /// The delta being written by a checkpoint (or left by one that failed, for a retry).
    frozen: Option<Frozen>,
    checkpoint_running: bool,
    /// Live bytes per segment, as the installed index file counted them.
    live: BTreeMap<u32, u64>,
    /// Segments deleted since `compact` last looked.
    deleted: Vec<u32>,
    /// A compaction in progress (`start_compaction`, `compaction_step`).
    compaction: Option<Compaction>,
    /// Segments whose live contents were relocated, with the sequence number after which a
    /// checkpoint no longer refers to them: deleted once such a checkpoint is installed.
    relocated: Vec<(u32, u64)>,
}

/// A compaction in progress: the segments left, the votes found in each, the segment being
/// read and where.
#[derive(Debug)]
struct Compaction {
    segments: VecDeque<u32>,
    votes: BTreeMap<u32, Vec<Tid>>,
    current: Option<(u32, Bytes, LogPosition)>,
    report: CompactionReport,
}

/// Segments with less than this fraction of live data are compacted by `compact`.
pub const COMPACTION_LIVE_FRACTION_MAX: f64 = 0.5;

/// What one compaction did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactionReport {
    /// Segments whose live contents were copied to the log's tail (deleted at the next
    /// checkpoint).
    pub segments: Vec<u32>,
    /// Segments left alone because transactions in flight refer to them.
    pub skipped: Vec<u32>,
    pub relocated_data: u64,
    pub relocated_votes: u64,
    pub relocated_bytes: u64,
    /// Segment files removed.
    pub deleted: Vec<u32>,
}

/// A frozen delta and what a checkpoint of it must record.
#[derive(Debug, Clone)]
struct Frozen {
    generation: u64,
    position: LogPosition,
    state: Bytes,
    /// The job's file, once written, waiting for the log to be durable up to `position`.
    written: Option<WrittenIndex>,
}

impl LogStore<FileDisk> {
    /// Opens (or creates) the store in `directory`.
    pub fn open_directory(
        directory: impl AsRef<Path>,
        options: Options,
    ) -> Result<LogStore<FileDisk>> {
        LogStore::open(FileDisk::open(directory.as_ref())?, options)
    }
}

/// Where `LogStore::scrub_index` is in the index file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IndexScrub {
    generation: Option<u64>,
    next: usize,
}

impl IndexScrub {
    /// Entries checked so far.
    pub fn checked(&self) -> usize {
        self.next
    }
}

impl<D: Disk> LogStore<D> {
    /// Opens the store on `disk`, replaying the log.
    pub fn open(disk: D, options: Options) -> Result<LogStore<D>> {
        if options.segment_size < crate::limits::SEGMENT_SIZE_MIN {
            return Err(StoreError::Invalid(format!(
                "segment size {} is below the minimum {}",
                options.segment_size,
                crate::limits::SEGMENT_SIZE_MIN
            )));
        }
        let mut state = State::default();
        let mut start = None;
        let mut index_used = None;
        let mut skipped_indexes = Vec::new();
        // The next checkpoint's generation is above every index file here, skipped ones
        // too: it replaces them (a damaged file of a higher generation would otherwise be
        // tried first at every start).
        let mut highest_generation = 0;
        if let Some(directory) = disk.index_directory() {
            // A checkpoint cut short by a crash leaves its temporary file: not needed.
            if let Ok(entries) = std::fs::read_dir(directory) {
                for entry in entries.flatten() {
                    if entry.file_name().to_string_lossy().ends_with(".index.tmp") {
                        let _ = std::fs::remove_file(entry.path());
                    }
                }
            }
            let found = index_files(directory)?;
            highest_generation = found.iter().map(|&(generation, _)| generation).max().unwrap_or(0);
            for (generation, path) in found {
                let opened = IndexFile::open(&path).and_then(|index| {
                    let blob = index.state_bytes();
                    let mut reader = wire::codec::Reader::new(&blob, Bytes::new());
                    let decoded = <CheckpointState as wire::Field>::decode(&mut reader)
                        .and_then(|s| reader.finish().map(|()| s))
                        .map_err(|e| StoreError::CorruptIndex {
                            path: path.clone(),
                            offset: 0,
                            reason: format!("replay state: {e}"),
                        })?;
                    Ok((index, decoded))
                });
                match opened {
                    Ok((index, checkpoint)) if index.generation == generation => {
                        checkpoint.restore(&mut state);
                        start = Some(index.log_position);
                        state.base_generation = generation;
                        state.next_sequence = generation;
                        state.base = Some(Arc::new(index));
                        index_used = Some(path);
                        break;
                    }
                    Ok(_) => {
                        skipped_indexes.push(format!("{}: generation mismatch", path.display()))
                    }
                    Err(error) => skipped_indexes.push(error.to_string()),
                }
            }
        }
        let opened = Log::open(disk, options.segment_size, start, |record| {
            state.apply(record).map_err(|defect| StoreError::Corrupt {
                segment: record.position.segment(),
                offset: u64::from(record.position.offset()),
                reason: format!("{:?} record contradicts the log: {defect}", record.kind),
            })
        });
        let (log, mut report) = opened.map_err(|error| match error {
            StoreError::Corrupt { segment, offset, reason } if !skipped_indexes.is_empty() => {
                let skipped = skipped_indexes.join("; ");
                StoreError::Corrupt {
                    segment,
                    offset,
                    reason: format!("{reason} (index files skipped: {skipped})"),
                }
            }
            other => other,
        })?;
        report.index = index_used;
        report.skipped_indexes = skipped_indexes;
        state.next_sequence = state.next_sequence.max(highest_generation);
        Ok(LogStore {
            log,
            state,
            report,
            frozen: None,
            checkpoint_running: false,
            live: BTreeMap::new(),
            relocated: Vec::new(),
            deleted: Vec::new(),
            compaction: None,
        })
    }

    /// Checks the next `count` entries of the mapped index file, from `cursor` (start with
    /// `IndexScrub::default()`): lookups check only the entries they touch, this finds
    /// damage anywhere in the file before a read needs it. Returns the next cursor, `None`
    /// once every entry of the file was checked (or a checkpoint replaced it by a file it
    /// wrote from entries it read, each checked). A damaged entry is
    /// `StoreError::CorruptIndex`.
    pub fn scrub_index(&self, cursor: IndexScrub, count: usize) -> Result<Option<IndexScrub>> {
        let Some(base) = self.state.base.as_ref() else { return Ok(None) };
        let generation = self.state.base_generation;
        if cursor.generation.is_some_and(|g| g != generation) || cursor.next >= base.entries_len() {
            return Ok(None);
        }
        let next = base.check_entries(cursor.next, count)?;
        Ok(Some(IndexScrub { generation: Some(generation), next }))
    }

    /// The generation of the index file lookups read, if any (none once every partition
    /// was dropped since it was written: see `state::visible_base`).
    pub fn index_generation(&self) -> Option<u64> {
        self.state.view().base.map(|(_, generation)| generation)
    }

    /// Whether `partition` was dropped since the index file was written (nothing of it
    /// is read from the file any more).
    pub fn dropped_since_index(&self, partition: PartitionId) -> bool {
        let generation = self.state.base_generation;
        self.state.filters.iter().any(|(sequence, filter)| {
            *sequence > generation
                && matches!(filter, Filter::DropPartition { partition: p, .. } if *p == partition)
        })
    }

    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.report
    }

    fn append(&mut self, kind: RecordKind, body: &impl wire::Field) -> Result<RawRecord> {
        let record = self.log.append(kind, body)?;
        if let Err(defect) = self.state.apply(&record) {
            // Callers check every precondition before appending: this is a bug, and the log
            // now holds a record that recovery will refuse.
            panic!("{kind:?} record appended against the state: {defect}");
        }
        Ok(record)
    }

    // ---- durability ---------------------------------------------------------------------

    /// Everything before this position is durable.
    pub fn durable(&self) -> LogPosition {
        self.log.durable()
    }

    /// Where the next record goes: everything before it is appended (durable or not).
    pub fn tail(&self) -> LogPosition {
        self.log.tail()
    }

    /// Whether the change at `position` is durable.
    pub fn is_durable(&self, position: LogPosition) -> bool {
        self.log.durable() > position
    }

    /// Writes and syncs everything appended so far (group commit), with this store's disk.
    pub fn flush(&mut self) -> Result<LogPosition> {
        self.log.flush()
    }

    /// For a runtime that does the I/O itself: the next batch to write and sync.
    pub fn take_flush(&mut self) -> Option<FlushBatch> {
        self.log.take_flush()
    }

    pub fn finish_flush(&mut self, end: LogPosition, outcome: Result<()>) -> Result<LogPosition> {
        self.log.finish_flush(end, outcome)
    }

    pub fn disk_mut(&mut self) -> &mut D {
        self.log.disk_mut()
    }

    // ---- two-phase commit ---------------------------------------------------------------

    /// Stores a revision of `oid` for transaction `ttid`, invisible until unlock. Data whose
    /// checksum does not match is refused, so corrupt data never enters the log.
    pub fn store(&mut self, ttid: Tid, oid: Oid, value: Value) -> Result<LogPosition> {
        if let Some(pending) = self.state.pending.get(&ttid)
            && pending.vote.is_some()
        {
            return Err(StoreError::Transaction { ttid, reason: "store after vote" });
        }
        match &value {
            Value::Data { data_crc, data, .. } if crc32fast::hash(data) != *data_crc => {
                return Err(StoreError::Invalid(format!(
                    "object {oid}: data checksum {data_crc:#010x} does not match the data"
                )));
            }
            Value::Undo { data_serial }
                if !self.state.view().revisions(oid)?.iter().any(|(s, _)| s == data_serial) =>
            {
                return Err(StoreError::Invalid(format!(
                    "object {oid}: undo to serial {data_serial}, which this store does not have"
                )));
            }
            _ => {}
        }
        Ok(self.append(RecordKind::Store, &StoreBody { ttid, oid, value })?.position)
    }

    /// Votes `ttid`: its stores and metadata (on the core holding the ttid's partition)
    /// become durable with the returned position.
    pub fn vote(&mut self, ttid: Tid, meta: Option<TransactionMeta>) -> Result<LogPosition> {
        if self.state.pending.get(&ttid).is_some_and(|p| p.vote.is_some()) {
            return Err(StoreError::Transaction { ttid, reason: "already voted" });
        }
        if let Some(meta) = &meta
            && meta.oids.len() > wire::limits::OIDS_PER_TRANSACTION_MAX
        {
            return Err(StoreError::Invalid(format!(
                "{} oids in one transaction",
                meta.oids.len()
            )));
        }
        Ok(self.append(RecordKind::Vote, &VoteBody { ttid, meta })?.position)
    }

    /// Locks a durably voted transaction under its final tid: the durable commit point once
    /// the returned position is durable.
    pub fn lock(&mut self, ttid: Tid, tid: Tid) -> Result<LogPosition> {
        let pending = self
            .state
            .pending
            .get(&ttid)
            .ok_or(StoreError::Transaction { ttid, reason: "unknown" })?;
        let Some(vote) = pending.vote else {
            return Err(StoreError::Transaction { ttid, reason: "lock before vote" });
        };
        if pending.lock.is_some() {
            return Err(StoreError::Transaction { ttid, reason: "already locked" });
        }
        if !self.is_durable(vote) {
            return Err(StoreError::Transaction {
                ttid,
                reason: "lock before the vote is durable",
            });
        }
        if tid < ttid || self.state.view().transaction(tid)?.is_some() {
            return Err(StoreError::Invalid(format!("final tid {tid} for ttid {ttid}")));
        }
        Ok(self.append(RecordKind::Lock, &LockBody { ttid, tid })?.position)
    }

    /// Makes a durably locked transaction's revisions visible.
    pub fn unlock(&mut self, ttid: Tid) -> Result<()> {
        let pending = self
            .state
            .pending
            .get(&ttid)
            .ok_or(StoreError::Transaction { ttid, reason: "unknown" })?;
        let Some((_, lock)) = pending.lock else {
            return Err(StoreError::Transaction { ttid, reason: "unlock before lock" });
        };
        if !self.is_durable(lock) {
            return Err(StoreError::Transaction {
                ttid,
                reason: "unlock before the lock is durable",
            });
        }
        self.append(RecordKind::Unlock, &TtidBody { ttid })?;
        Ok(())
    }

    /// Drops a transaction that is not locked. Aborting an unknown ttid is allowed (a
    /// client may abort before storing here).
    pub fn abort(&mut self, ttid: Tid) -> Result<()> {
        match self.state.pending.get(&ttid) {
            None => Ok(()),
            Some(pending) if pending.lock.is_some() => Err(StoreError::Transaction {
                ttid,
                reason: "locked transactions are never aborted",
            }),
            Some(_) => self.append(RecordKind::Abort, &TtidBody { ttid }).map(drop),
        }
    }

    /// Transactions in flight with the oids they stored here.
    pub fn pending_oids(&self) -> Vec<(Tid, Vec<Oid>)> {
        self.state
            .pending
            .iter()
            .map(|(&ttid, p)| (ttid, p.stores.keys().copied().collect()))
            .collect()
    }

    /// Transactions in flight, with their stage (after a restart: what the master must
    /// replay or drop).
    pub fn unfinished(&self) -> Vec<(Tid, PendingStage)> {
        self.state.unfinished()
    }

    // ---- metadata -----------------------------------------------------------------------

    pub fn metadata(&self) -> &Metadata {
        &self.state.metadata
    }

    pub fn set_metadata(&mut self, metadata: Metadata) -> Result<LogPosition> {
        Ok(self.append(RecordKind::Metadata, &metadata)?.position)
    }

    // ---- checkpoints --------------------------------------------------------------------

    /// Whether the in-memory delta has grown enough to be worth a checkpoint: a quarter of
    /// the index file, and at least `CHECKPOINT_DELTA_MIN` entries.
    pub fn needs_checkpoint(&self) -> bool {
        let delta = self.state.delta.objects.len() + self.state.delta.transactions.len();
        let base = self.state.base.as_ref().map_or(0, |b| b.objects_len() + b.transactions_len());
        self.log.disk().index_directory().is_some()
            && delta >= crate::limits::CHECKPOINT_DELTA_MIN.max(base / 4)
    }

    /// Entries in the in-memory delta (heap memory grows with it until a checkpoint).
    pub fn delta_len(&self) -> usize {
        self.state.delta.objects.len() + self.state.delta.transactions.len()
    }

    /// Freezes the in-memory delta and returns the job that writes it, with the previous
    /// index file, into a new index file. Run the job anywhere (it is `Send`: off the core,
    /// on a blocking-task thread), then call `finish_checkpoint`. Loads go on meanwhile.
    pub fn start_checkpoint(&mut self) -> Result<CheckpointJob> {
        let directory = self
            .log
            .disk()
            .index_directory()
            .ok_or_else(|| StoreError::Invalid("this disk keeps no index files".to_owned()))?
            .to_owned();
        if self.checkpoint_running {
            return Err(StoreError::Invalid("a checkpoint is already running".to_owned()));
        }
        if self.frozen.as_ref().is_some_and(|f| f.written.is_some()) {
            return Err(StoreError::Invalid(
                "a checkpoint is written and waits for the log: call finish_checkpoint".to_owned(),
            ));
        }
        if self.frozen.is_none() {
            self.state.next_sequence += 1;
            let generation = self.state.next_sequence;
            let state = encode_state(&CheckpointState::of(&self.state))?;
            let delta = Arc::new(std::mem::take(&mut self.state.delta));
            self.state.frozen = Some((delta, generation));
            self.frozen =
                Some(Frozen { generation, position: self.log.tail(), state, written: None });
        }
        let frozen = self.frozen.clone().expect("frozen above");
        let (delta, _) = self.state.frozen.clone().expect("frozen with the store's");
        self.checkpoint_running = true;
        Ok(CheckpointJob {
            directory,
            generation: frozen.generation,
            log_position: frozen.position,
            base: self.state.base.clone().map(|b| (b, self.state.base_generation)),
            frozen: delta,
            filters: self
                .state
                .filters
                .iter()
                .filter(|(sequence, _)| *sequence < frozen.generation)
                .cloned()
                .collect(),
            state: frozen.state,
        })
    }

    /// Takes the outcome of a checkpoint job. The file is put in place only once the log
    /// is durable up to the checkpoint's position (an index must never describe records the
    /// log could still lose): until then this returns `Ok(false)`; call `install_checkpoint`
    /// after a flush. Then the new index file replaces the previous one and the frozen delta, and
    /// this returns `Ok(true)`. After a failed job (or a file that could not be put in
    /// place) the frozen delta stays, and a later `start_checkpoint` retries it.
    pub fn finish_checkpoint(&mut self, outcome: Result<WrittenIndex>) -> Result<bool> {
        assert!(self.checkpoint_running, "finish_checkpoint without a running checkpoint");
        self.checkpoint_running = false;
        let written = outcome?;
        let frozen = self.frozen.as_mut().expect("a running checkpoint has a frozen delta");
        assert_eq!(written.generation, frozen.generation);
        frozen.written = Some(written);
        self.install_checkpoint()
    }

    /// Puts a written checkpoint in place if the log is now durable up to its position
    /// (`Ok(true)`), or says it still waits (`Ok(false)`); `Ok(false)` too when there is
    /// no written checkpoint.
    pub fn install_checkpoint(&mut self) -> Result<bool> {
        let Some(frozen) = self.frozen.as_ref() else { return Ok(false) };
        let Some(written) = frozen.written.clone() else { return Ok(false) };
        if self.log.durable() < frozen.position {
            return Ok(false);
        }
        if let Err(error) = crate::index::install(&written.temporary, &written.path) {
            // Like a failed job: the frozen delta stays, and the next `start_checkpoint`
            // writes the file again (rather than waiting forever on this one).
            let _ = std::fs::remove_file(&written.temporary);
            if let Some(frozen) = self.frozen.as_mut() {
                frozen.written = None;
            }
            return Err(error);
        }
        let generation = written.generation;
        let index = IndexFile::open(&written.path)?;
        if index.generation != generation {
            return Err(StoreError::CorruptIndex {
                path: written.path,
                offset: 0,
                reason: format!("generation {} instead of {generation}", index.generation),
            });
        }
        self.state.base = Some(Arc::new(index));
        self.state.base_generation = generation;
        self.state.frozen = None;
        self.frozen = None;
        self.state.filters.retain(|(sequence, _)| *sequence > generation);
        self.live = written.live.clone();
        self.delete_relocated()?;
        // Older index files are no longer needed; one left behind is only disk space.
        if let Some(directory) = written.path.parent() {
            for (older, path) in index_files(directory)? {
                if older < generation {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        Ok(true)
    }

    /// Whether a checkpoint is started and not yet in place.
    pub fn checkpoint_pending(&self) -> bool {
        self.frozen.is_some()
    }

    /// The log position a started checkpoint covers: it is installed once the log is
    /// durable up to there.
    pub fn checkpoint_position(&self) -> Option<LogPosition> {
        self.frozen.as_ref().map(|f| f.position)
    }

    /// Whether a checkpoint is written and waits for the log to be durable up to its
    /// position before it is installed.
    pub fn checkpoint_awaiting_install(&self) -> bool {
        self.frozen.as_ref().is_some_and(|f| f.written.is_some())
    }

    /// Whether a checkpoint job is running (started, outcome not yet given).
    pub fn checkpoint_running(&self) -> bool {
        self.checkpoint_running
    }

    /// Writes a checkpoint on this thread, flushing as needed.
    pub fn checkpoint(&mut self) -> Result<()> {
        let job = self.start_checkpoint()?;
        let outcome = job.run();
        self.flush()?;
        let installed = self.finish_checkpoint(outcome)?;
        assert!(installed, "the log is durable after a flush");
        Ok(())
    }

    // ---- compaction ---------------------------------------------------------------------

    /// Segments worth compacting: entirely before the installed checkpoint's position, and
    /// holding less than `live_fraction_max` of a segment in data the index still refers to
    /// (by the index file's count).
    pub fn compaction_candidates(&mut self, live_fraction_max: f64) -> Result<Vec<u32>> {
        let Some(base) = self.state.base.as_ref() else { return Ok(Vec::new()) };
        let sealed_before = base.log_position.segment();
        let limit = (f64::from(self.log.segment_size()) * live_fraction_max) as u64;
        let relocated: Vec<u32> = self.relocated.iter().map(|&(id, _)| id).collect();
        Ok(self
            .log
            .disk_mut()
            .list_segments()?
            .into_iter()
            .filter(|id| *id < sealed_before && !relocated.contains(id))
            .filter(|id| self.live.get(id).copied().unwrap_or(0) < limit)
            .collect())
    }

    /// Copies what the index still refers to in the given segments (object data, committed
    /// transactions' votes) to the log's tail, as records that take over from the old
    /// places; each segment is deleted once a checkpoint started after this is installed.
    /// All at once: see `start_compaction` and `compaction_step` to do it in slices.
    pub fn compact_segments(&mut self, ids: &[u32]) -> Result<CompactionReport> {
        self.start_compaction(ids)?;
        loop {
            if let Some(report) = self.compaction_step(usize::MAX)? {
                return Ok(report);
            }
        }
    }

    /// Starts compacting the given segments (see `compact_segments`); `compaction_step`
    /// does the work in slices, so a core can serve between them. Refused for segments at
    /// or after the installed checkpoint's position. A segment that a transaction in
    /// flight refers to is left alone (`CompactionReport::skipped`).
    pub fn start_compaction(&mut self, ids: &[u32]) -> Result<()> {
        if self.compaction.is_some() {
            return Err(StoreError::Invalid("a compaction is already running".to_owned()));
        }
        let sealed_before = self.state.base.as_ref().map_or(0, |b| b.log_position.segment());
        if let Some(id) = ids.iter().find(|&&id| id >= sealed_before) {
            return Err(StoreError::Invalid(format!(
                "segment {id} is not before the installed checkpoint"
            )));
        }
        let mut report = CompactionReport::default();
        let mut segments = VecDeque::new();
        for &id in ids {
            // Transactions started later write at the tail; an undo they store resolves to
            // data already relocated, or is relocated with it.
            let in_flight = self.state.pending.values().any(|p| {
                p.vote.is_some_and(|v| v.segment() == id)
                    || p.lock.is_some_and(|(_, l)| l.segment() == id)
                    || p.stores
                        .values()
                        .any(|s| s.data().is_some_and(|d| d.position.segment() == id))
            });
            if in_flight {
                report.skipped.push(id);
            } else {
                segments.push_back(id);
            }
        }
        // One pass over the transactions finds the votes in every segment to compact.
        let mut votes: BTreeMap<u32, Vec<Tid>> = BTreeMap::new();
        self.state.view().transactions(Tid(0), Tid(u64::MAX), |tid, entry| {
            if segments.contains(&entry.vote.segment()) {
                votes.entry(entry.vote.segment()).or_default().push(tid);
            }
            Ok(true)
        })?;
        self.compaction = Some(Compaction { segments, votes, current: None, report });
        Ok(())
    }

    /// Does about `budget_bytes` of a running compaction's copying. Returns its report
    /// when it is done.
    pub fn compaction_step(&mut self, budget_bytes: usize) -> Result<Option<CompactionReport>> {
        let mut compaction = self.compaction.take().expect("compaction_step without a compaction");
        let outcome = self.compaction_slice(&mut compaction, budget_bytes);
        match outcome {
            Ok(true) => Ok(Some(compaction.report)),
            Ok(false) => {
                self.compaction = Some(compaction);
                Ok(None)
            }
            // A compaction that failed is dropped; what it relocated stays valid.
            Err(error) => Err(error),
        }
    }

    fn compaction_slice(
        &mut self,
        compaction: &mut Compaction,
        budget_bytes: usize,
    ) -> Result<bool> {
        let mut spent = 0usize;
        loop {
            if compaction.current.is_none() {
                let Some(id) = compaction.segments.pop_front() else { return Ok(true) };
                let size = self.log.disk_mut().segment_size(id)? as usize;
                let bytes = self.log.read(LogPosition::new(id, 0), size)?;
                let first = LogPosition::new(id, crate::limits::SEGMENT_HEADER_SIZE as u32);
                compaction.current = Some((id, bytes, first));
            }
            let (id, bytes, position) = compaction.current.clone().expect("set above");
            match self.relocate_record(id, &bytes, position, &mut compaction.report)? {
                Some((next, copied)) => {
                    compaction.current = Some((id, bytes, next));
                    spent += copied;
                }
                None => {
                    // The segment's records are done: its committed votes, then it is
                    // scheduled for deletion.
                    for tid in compaction.votes.remove(&id).unwrap_or_default() {
                        // Gone since the start (truncated, or its partition dropped).
                        let Some(info) = self.transaction(tid)? else { continue };
                        let vote = VoteBody { ttid: info.ttid, meta: Some(info.meta) };
                        compaction.report.relocated_votes += 1;
                        self.append(RecordKind::RelocateVote, &RelocateVoteBody { tid, vote })?;
                        spent += 128;
                    }
                    self.relocated.push((id, self.state.next_sequence));
                    compaction.report.segments.push(id);
                    compaction.current = None;
                }
            }
            if spent >= budget_bytes {
                return Ok(false);
            }
        }
    }

    /// Relocates the record at `position` if the index still refers to its data. Returns
    /// the next record's position and the bytes copied, or none at the segment's end.
    fn relocate_record(
        &mut self,
        id: u32,
        bytes: &Bytes,
        position: LogPosition,
        report: &mut CompactionReport,
    ) -> Result<Option<(LogPosition, usize)>> {
        let record = match check_record(&bytes.slice(position.offset() as usize..), position) {
            Ok(record) => record,
            // A sealed segment ends with SegmentEnd; a segment a checkpoint sealed mid-way
            // ends where its records end.
            Err(_) if bytes[position.offset() as usize..].iter().all(|&b| b == 0) => {
                return Ok(None);
            }
            Err(defect) => {
                return Err(StoreError::Corrupt {
                    segment: id,
                    offset: u64::from(position.offset()),
                    reason: format!("while compacting: {defect}"),
                });
            }
        };
        let corrupt = |defect: crate::record::RecordDefect| StoreError::Corrupt {
            segment: id,
            offset: u64::from(record.position.offset()),
            reason: format!("while compacting: {defect}"),
        };
        let data = match record.kind {
            RecordKind::SegmentEnd => return Ok(None),
            RecordKind::Store => match record.decode::<StoreBody>().map_err(corrupt)? {
                StoreBody { oid, value: Value::Data { compression, data_crc, data }, .. } => {
                    let at = record.position.advance(RECORD_HEADER_SIZE + STORE_DATA_OFFSET);
                    Some((oid, at, compression, data_crc, data))
                }
                _ => None,
            },
            RecordKind::Relocate => {
                let body: RelocateBody = record.decode().map_err(corrupt)?;
                let at = record.position.advance(RECORD_HEADER_SIZE + RELOCATE_DATA_OFFSET);
                Some((body.oid, at, body.compression, body.data_crc, body.data.0))
            }
            RecordKind::ReplicateObject => {
                let body: ReplicateObjectBody = record.decode().map_err(corrupt)?;
                let at = record.position.advance(RECORD_HEADER_SIZE + REPLICATE_DATA_OFFSET);
                (!body.data.0.is_empty()).then_some((
                    body.oid,
                    at,
                    body.compression,
                    body.data_crc,
                    body.data.0,
                ))
            }
            _ => None,
        };
        let mut copied = 0;
        if let Some((oid, at, compression, data_crc, data)) = data {
            let referenced = self
                .state
                .view()
                .revisions(oid)?
                .iter()
                .any(|(_, stored)| stored.data().is_some_and(|d| d.position == at));
            if referenced {
                copied = data.len();
                report.relocated_data += 1;
                report.relocated_bytes += data.len() as u64;
                let data = wire::codec::ObjectData(data);
                let body = RelocateBody { oid, old_position: at.0, compression, data_crc, data };
                self.append(RecordKind::Relocate, &body)?;
            }
        }
        Ok(Some((record.end(), copied.max(1))))
    }

    /// Deletes relocated segments that the installed index file no longer refers to.
    fn delete_relocated(&mut self) -> Result<Vec<u32>> {
        let installed = self.state.base_generation;
        let mut deleted = Vec::new();
        let mut kept = Vec::new();
        for (id, sequence) in std::mem::take(&mut self.relocated) {
            if installed > sequence {
                self.log.disk_mut().remove_segment(id)?;
                self.live.remove(&id);
                deleted.push(id);
            } else {
                kept.push((id, sequence));
            }
        }
        self.relocated = kept;
        self.deleted.extend(deleted.iter().copied());
        Ok(deleted)
    }

    /// Segments deleted (after compaction) since the last call.
    pub fn take_deleted(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.deleted)
    }

    /// Compacts on the spot: a checkpoint (to seal and count), every segment less than
    /// half full of live data, then a checkpoint that lets them be deleted.
    pub fn compact(&mut self) -> Result<CompactionReport> {
        self.compact_below(COMPACTION_LIVE_FRACTION_MAX)
    }

    /// `compact` with another threshold of live data (1.0 and more: every sealed segment).
    pub fn compact_below(&mut self, live_fraction_max: f64) -> Result<CompactionReport> {
        self.checkpoint()?;
        let candidates = self.compaction_candidates(live_fraction_max)?;
        let mut report = self.compact_segments(&candidates)?;
        self.take_deleted();
        self.checkpoint()?;
        report.deleted = self.take_deleted();
        Ok(report)
    }

    // ---- maintenance --------------------------------------------------------------------

    /// Drops every transaction and revision after `tid`. Refused while any transaction is
    /// in flight.
    pub fn truncate(&mut self, tid: Tid) -> Result<LogPosition> {
        // NEO truncates while the cluster is stopped; a transaction in flight here could
        // refer to what is dropped.
        if !self.state.pending.is_empty() {
            return Err(StoreError::Invalid(
                "truncate while transactions are in flight".to_owned(),
            ));
        }
        if let Some(pack_tid) = self.state.pack_tid.filter(|&pack_tid| pack_tid > tid) {
            return Err(StoreError::Invalid(format!(
                "truncate to {tid}, before the history packed up to {pack_tid}"
            )));
        }
        Ok(self.append(RecordKind::Truncate, &TruncateBody { tid })?.position)
    }

    /// Records that the primary may hand out oids up to `oid` (see
    /// `RecordKind::ReserveOids`); `last_ids` reports at least it from then on. Nothing is
    /// written when the store's last oid is already there. The reservation holds once the
    /// returned position is durable.
    pub fn reserve_oids(&mut self, oid: Oid) -> Result<Option<LogPosition>> {
        if self.state.last_oid >= Some(oid) {
            return Ok(None);
        }
        Ok(Some(self.append(RecordKind::ReserveOids, &ReserveOidsBody { oid })?.position))
    }

    // ---- replication (this store as the destination) ---------------------------------

    /// A committed transaction copied from another storage: indexed as committed at once
    /// (its objects come with `replicate_object`). Durable with the next flush.
    pub fn replicate_transaction(
        &mut self,
        tid: Tid,
        ttid: Tid,
        packed: bool,
        meta: TransactionMeta,
    ) -> Result<LogPosition> {
        if ttid > tid {
            return Err(StoreError::Invalid(format!("replicated {tid} has a later ttid {ttid}")));
        }
        let vote = VoteBody { ttid, meta: Some(meta) };
        let body = ReplicateTransactionBody { tid, packed, vote };
        Ok(self.append(RecordKind::ReplicateTransaction, &body)?.position)
    }

    /// A committed revision copied from another storage: `data` with its crc (checked:
    /// corrupt data never enters the log), and for an undo the serial whose data it takes;
    /// empty data without one deletes the object. Durable with the next flush.
    pub fn replicate_object(
        &mut self,
        oid: Oid,
        serial: Tid,
        compression: Compression,
        data_crc: u32,
        data: Bytes,
        data_serial: Option<Tid>,
    ) -> Result<LogPosition> {
        let empty = data.is_empty() && data_crc == 0;
        if !empty && crc32fast::hash(&data) != data_crc {
            return Err(StoreError::Invalid(format!(
                "replicated {oid} at {serial}: data does not match its checksum"
            )));
        }
        let data = wire::codec::ObjectData(if empty { Bytes::new() } else { data });
        let body = ReplicateObjectBody { oid, serial, compression, data_crc, data, data_serial };
        Ok(self.append(RecordKind::ReplicateObject, &body)?.position)
    }

    /// Drops committed transactions and revisions that the storage replicated from does not
    /// have (a transaction this one committed that the cluster did not, history packed
    /// there). Nothing is written when both lists are empty.
    pub fn delete_replicated(
        &mut self,
        tids: Vec<Tid>,
        objects: Vec<wire::messages::SerialOids>,
    ) -> Result<Option<LogPosition>> {
        if tids.is_empty() && objects.iter().all(|group| group.oids.is_empty()) {
            return Ok(None);
        }
        let body = DeleteReplicatedBody { tids, objects };
        Ok(Some(self.append(RecordKind::DeleteReplicated, &body)?.position))
    }

    /// A committed revision as replication sends it: compression, crc, data (empty for a
    /// deletion, or an undo whose target's data is gone) and the serial an undo took the
    /// data of.
    pub fn replicated_revision(
        &mut self,
        oid: Oid,
        serial: Tid,
    ) -> Result<(Compression, u32, Bytes, Option<Tid>), LoadError> {
        let located = self.locate_serial(oid, serial)?;
        match located.data {
            Some(data) => {
                let bytes = self.read_data(data)?;
                Ok((data.compression, data.data_crc, bytes, located.data_serial))
            }
            None => Ok((Compression::None, 0, Bytes::new(), located.data_serial)),
        }
    }

    /// Packs: drops revisions older than the newest one at or before `pack_tid` (of the
    /// given objects, or all), and objects whose newest such revision is a deletion.
    ///
    /// Refused while a transaction locked at or before `pack_tid` is not yet unlocked: its
    /// revisions must be visible before a pack decides which ones are the newest.
    pub fn pack(&mut self, pack_tid: Tid, oids: Option<Vec<Oid>>) -> Result<LogPosition> {
        let locked_before = self
            .state
            .pending
            .values()
            .filter_map(|p| p.lock.map(|(tid, _)| tid))
            .filter(|&tid| tid <= pack_tid)
            .min();
        if let Some(tid) = locked_before {
            return Err(StoreError::Invalid(format!(
                "pack to {pack_tid} while transaction {tid} is locked and not yet visible"
            )));
        }
        Ok(self.append(RecordKind::Pack, &PackBody { pack_tid, oids })?.position)
    }

    /// Drops a partition's objects and transactions (a discarded cell).
    pub fn drop_partition(&mut self, partition: PartitionId) -> Result<LogPosition> {
        let partitions = self.partitions()?;
        Ok(self
            .append(RecordKind::DropPartition, &DropPartitionBody { partition, partitions })?
            .position)
    }

    fn partitions(&self) -> Result<u32> {
        match self.state.metadata.partitions {
            0 => Err(StoreError::Invalid("no partition count in the metadata yet".to_owned())),
            partitions => Ok(partitions),
        }
    }

    // ---- loads --------------------------------------------------------------------------

    /// The revision current at `at`, or the last before `before`, or the latest.
    pub fn load(
        &mut self,
        oid: Oid,
        at: Option<Tid>,
        before: Option<Tid>,
    ) -> Result<Loaded, LoadError> {
        let located = self.locate(oid, at, before)?;
        self.read_located(located)
    }

    /// The revision written by `serial` exactly.
    pub fn load_serial(&mut self, oid: Oid, serial: Tid) -> Result<Loaded, LoadError> {
        let located = self.locate_serial(oid, serial)?;
        self.read_located(located)
    }

    /// Where the revision `load` would return is: everything but the data bytes, so that a
    /// runtime can read them itself (through io_uring when they are not in the page cache).
    pub fn locate(
        &self,
        oid: Oid,
        at: Option<Tid>,
        before: Option<Tid>,
    ) -> Result<Located, LoadError> {
        let upto = match (at, before) {
            (Some(at), _) => at,
            (None, Some(Tid(0))) => {
                // Nothing is before tid 0: only whether the object exists is left to say.
                return Err(match self.state.view().revision_at(oid, Tid(u64::MAX))? {
                    Around::Nothing => LoadError::OidDoesNotExist(oid),
                    _ => LoadError::OidNotFound(oid),
                });
            }
            (None, Some(before)) => Tid(before.0 - 1),
            (None, None) => Tid(u64::MAX),
        };
        located(oid, self.state.view().revision_at(oid, upto)?)
    }

    /// Where the revision written by `serial` is.
    pub fn locate_serial(&self, oid: Oid, serial: Tid) -> Result<Located, LoadError> {
        let located = located(oid, self.state.view().revision_at(oid, serial)?)?;
        if located.serial != serial {
            return Err(LoadError::OidNotFound(oid));
        }
        Ok(located)
    }

    fn read_located(&mut self, located: Located) -> Result<Loaded, LoadError> {
        let data = match located.data {
            Some(data) => self.read_data(data)?,
            None => Bytes::new(),
        };
        Ok(located.with_data(data))
    }

    /// Reads data from the log (through the page cache) and checks it: corrupt data is
    /// reported, never served.
    pub fn read_data(&mut self, data: DataRef) -> Result<Bytes> {
        let bytes = self.log.read(data.position, data.size as usize)?;
        if crc32fast::hash(&bytes) != data.data_crc {
            return Err(StoreError::Corrupt {
                segment: data.position.segment(),
                offset: u64::from(data.position.offset()),
                reason: "object data checksum mismatch".to_owned(),
            });
        }
        Ok(bytes)
    }

    /// Whether `read_data` would be served from the page cache without waiting for the
    /// device. A core reads other data through io_uring (`UringFiles::read_data`).
    pub fn is_resident(&mut self, data: DataRef) -> Result<bool> {
        let position = data.position;
        self.log.disk_mut().is_resident(position.segment(), position.offset(), data.size as usize)
    }

    /// Serials and data sizes of an object, newest first, positions `first .. last`.
    pub fn history(&self, oid: Oid, first: usize, last: usize) -> Result<Vec<(Tid, u32)>> {
        Ok(self
            .state
            .view()
            .revisions(oid)?
            .into_iter()
            .rev()
            .skip(first)
            .take(last.saturating_sub(first))
            .map(|(serial, stored)| (serial, stored.data().map_or(0, |d| d.size)))
            .collect())
    }

    /// For undoing `undone_tid` on `oid`, as seen by a client whose last tid is `ltid`.
    pub fn undo_info(&self, oid: Oid, undone_tid: Tid, ltid: Tid) -> Result<UndoInfo, LoadError> {
        let revisions = self.state.view().revisions(oid)?;
        let Some((current_serial, current)) = revisions.iter().rev().find(|(s, _)| *s <= ltid)
        else {
            return Err(if revisions.is_empty() {
                LoadError::OidDoesNotExist(oid)
            } else {
                LoadError::OidNotFound(oid)
            });
        };
        let Some(undone) = revisions.iter().position(|(s, _)| *s == undone_tid) else {
            return Err(LoadError::OidNotFound(oid));
        };
        let undo_serial = undone.checked_sub(1).and_then(|previous| match revisions[previous] {
            (_, Stored::Delete) | (_, Stored::Undo { data: None, .. }) => None,
            (_, Stored::Undo { data_serial, data: Some(_) }) => Some(data_serial),
            (serial, Stored::Data(_)) => Some(serial),
        });
        // Current too: a revision that took the undone one's data back (an undo of what
        // came after it): undoing it again conflicts with nothing.
        let is_current = *current_serial == undone_tid
            || matches!(current, Stored::Undo { data_serial, .. } if *data_serial == undone_tid);
        Ok(UndoInfo { current_serial: *current_serial, undo_serial, is_current })
    }

    // ---- transactions and iteration -----------------------------------------------------

    /// A committed transaction's metadata, if this core holds it.
    pub fn transaction(&mut self, tid: Tid) -> Result<Option<TransactionInfo>> {
        let Some(TransactionEntry { ttid, vote, packed }) = self.state.view().transaction(tid)?
        else {
            return Ok(None);
        };
        let corrupt = |reason: String| StoreError::Corrupt {
            segment: vote.segment(),
            offset: u64::from(vote.offset()),
            reason,
        };
        let record = self.log.read_record(vote)?;
        let body: VoteBody = match record.kind {
            RecordKind::RelocateVote => record.decode::<RelocateVoteBody>().map(|moved| moved.vote),
            RecordKind::ReplicateTransaction => {
                record.decode::<ReplicateTransactionBody>().map(|copied| copied.vote)
            }
            _ => record.decode(),
        }
        .map_err(|defect| corrupt(defect.to_string()))?;
        let meta =
            body.meta.ok_or_else(|| corrupt("indexed vote carries no metadata".to_owned()))?;
        Ok(Some(TransactionInfo { tid, ttid, packed, meta }))
    }

    /// The final tid of transaction `ttid`, if it is locked or committed here (a client
    /// that lost the master while finishing asks). Committed transactions are looked for
    /// from `ttid` on, as a final tid is never below its ttid.
    pub fn final_tid(&self, ttid: Tid) -> Result<Option<Tid>> {
        if let Some((tid, _)) = self.state.pending.get(&ttid).and_then(|p| p.lock) {
            return Ok(Some(tid));
        }
        let mut found = None;
        self.state.view().transactions(ttid, Tid(u64::MAX), |tid, entry| {
            if entry.ttid == ttid {
                found = Some(tid);
            }
            Ok(found.is_none())
        })?;
        Ok(found)
    }

    /// Committed tids, newest first, positions `first .. last`, of one partition or all.
    pub fn tids_descending(
        &self,
        first: usize,
        last: usize,
        partition: Option<PartitionId>,
    ) -> Result<Vec<Tid>> {
        let partitions = match partition {
            Some(_) => Some(self.partitions()?),
            None => None,
        };
        let mut tids = Vec::new();
        self.state.view().transactions(Tid(0), Tid(u64::MAX), |tid, _| {
            let inside = match (partition, partitions) {
                (Some(partition), Some(partitions)) => {
                    PartitionId::of(tid.0, partitions) == partition
                }
                _ => true,
            };
            if inside {
                tids.push(tid);
            }
            Ok(true)
        })?;
        Ok(tids.into_iter().rev().skip(first).take(last.saturating_sub(first)).collect())
    }

    /// Committed tids of a partition in `min ..= max`, ascending, at most `length`.
    pub fn tids_from(
        &self,
        min: Tid,
        max: Tid,
        length: usize,
        partition: PartitionId,
    ) -> Result<Vec<Tid>> {
        let partitions = self.partitions()?;
        let mut tids = Vec::new();
        if length == 0 {
            return Ok(tids);
        }
        self.state.view().transactions(min, max, |tid, _| {
            if PartitionId::of(tid.0, partitions) == partition {
                tids.push(tid);
            }
            Ok(tids.len() < length)
        })?;
        Ok(tids)
    }

    /// Object records of a partition with serial in `min_tid ..= max_tid`, from
    /// `(min_tid, min_oid)` on, in (serial, oid) order, at most `length` (replication).
    pub fn object_records(
        &self,
        partition: PartitionId,
        length: usize,
        min_tid: Tid,
        max_tid: Tid,
        min_oid: Oid,
    ) -> Result<Vec<(Tid, Oid)>> {
        let partitions = self.partitions()?;
        let mut records = Vec::new();
        if length == 0 {
            return Ok(records);
        }
        let to = (max_tid, Oid(u64::MAX));
        self.state.view().serial_records((min_tid, min_oid), to, |serial, oid| {
            if PartitionId::of(oid.0, partitions) == partition {
                records.push((serial, oid));
            }
            Ok(records.len() < length)
        })?;
        Ok(records)
    }

    /// Oids of a partition that exist at `tid` (newest revision at or before it is not a
    /// deletion), from `min_oid`, at most `length`; and where to continue.
    pub fn oids_from(
        &self,
        partition: PartitionId,
        length: usize,
        min_oid: Oid,
        tid: Tid,
    ) -> Result<(Option<Oid>, Vec<Oid>)> {
        let partitions = self.partitions()?;
        let view = self.state.view();
        let mut oids = Vec::new();
        let mut cursor = Some(min_oid);
        while let Some(from) = cursor {
            let Some(oid) = view.next_oid(from)? else { break };
            if PartitionId::of(oid.0, partitions) == partition {
                let revisions = view.revisions(oid)?;
                let at = revisions.iter().rev().find(|(serial, _)| *serial <= tid);
                if at.is_some_and(|(_, stored)| *stored != Stored::Delete) {
                    if oids.len() == length {
                        return Ok((Some(oid), oids));
                    }
                    oids.push(oid);
                }
            }
            cursor = oid.0.checked_add(1).map(Oid);
        }
        Ok((None, oids))
    }

    /// Replica check of transactions: count, SHA-1 of the tids (8 bytes big-endian each),
    /// and the last tid, over at most `length` tids of a partition in `min ..= max`.
    pub fn check_tid_range(
        &mut self,
        partition: PartitionId,
        length: usize,
        min: Tid,
        max: Tid,
    ) -> Result<TidRangeCheck> {
        let tids = self.tids_from(min, max, length, partition)?;
        let mut sha = Sha1::new();
        let mut damaged = None;
        for &tid in &tids {
            sha.update(&tid.to_zodb_bytes());
            match self.transaction(tid) {
                Ok(Some(info)) => {
                    let meta = &info.meta;
                    for field in [&meta.user, &meta.description, &meta.extension] {
                        sha.update(&(field.len() as u64).to_be_bytes());
                        sha.update(field);
                    }
                    sha.update(&(meta.oids.len() as u64).to_be_bytes());
                    for oid in &meta.oids {
                        sha.update(&oid.to_zodb_bytes());
                    }
                }
                Ok(None) => {}
                // Compared as what was read: differs from every good copy.
                Err(StoreError::Corrupt { .. }) => {
                    damaged.get_or_insert(tid);
                    sha.update(b"damaged");
                }
                Err(error) => return Err(error),
            }
        }
        Ok(TidRangeCheck {
            count: tids.len() as u32,
            digest: Digest(sha.digest().bytes()),
            last: tids.last().copied(),
            damaged,
        })
    }

    /// Replica check of object records: count, SHA-1 of the serials and of the oids, and
    /// the last of each, over the records `object_records` returns; and, what NEO's check
    /// does not look at, the data (`check_records`). In one go: a core digests a long
    /// range a few records at a time with `check_records` itself.
    pub fn check_serial_range(
        &mut self,
        partition: PartitionId,
        length: usize,
        min_tid: Tid,
        max_tid: Tid,
        min_oid: Oid,
    ) -> Result<SerialRangeCheck> {
        let records = self.object_records(partition, length, min_tid, max_tid, min_oid)?;
        let mut check = SerialCheck::default();
        self.check_records(&mut check, &records)?;
        Ok(check.finish())
    }

    /// Adds object records (in order, as `object_records` lists them) to a replica check:
    /// every record's data is read and checked against its checksum; the SHA-1 of the
    /// checksums (and undo back-pointers) is compared across replicas, and the first record
    /// whose data does not match its checksum is reported.
    pub fn check_records(&mut self, check: &mut SerialCheck, records: &[(Tid, Oid)]) -> Result<()> {
        for &(serial, oid) in records {
            let located = match self.locate_serial(oid, serial) {
                Ok(located) => located,
                Err(LoadError::Store(error)) => return Err(error),
                Err(_) => {
                    return Err(StoreError::Invalid(format!(
                        "object {oid} at {serial} went away during the check (packed or dropped)"
                    )));
                }
            };
            let crc = match located.data {
                Some(reference) => match self.read_data(reference) {
                    Ok(_) => reference.data_crc,
                    Err(StoreError::Corrupt { .. }) => {
                        check.damaged.get_or_insert((serial, oid));
                        // Compared as what was read: differs from every good copy.
                        !reference.data_crc
                    }
                    Err(error) => return Err(error),
                },
                None => 0,
            };
            check.serials.update(&serial.to_zodb_bytes());
            check.oids.update(&oid.to_zodb_bytes());
            check.data.update(&crc.to_be_bytes());
            check.data.update(&located.data_serial.unwrap_or(Tid::ZERO).to_zodb_bytes());
            check.count += 1;
            check.last = Some((serial, oid));
        }
        Ok(())
    }

    /// (last tid, last oid, first tid) committed here.
    /// The newest committed tid, the highest oid stored here, the oldest committed tid.
    /// The oid counts transactions not committed yet too: a voted one may still be
    /// committed (by the next verification), and a new primary must not hand its oids out
    /// again.
    pub fn last_ids(&self) -> (Option<Tid>, Option<Oid>, Option<Tid>) {
        let pending = self.state.pending.values().filter_map(|p| p.stores.keys().next_back());
        let last_oid = pending.copied().max().max(self.state.last_oid);
        (self.state.last_tid, last_oid, self.state.first_tid)
    }

    /// Visible revisions, counted (a full scan: for tests and tools).
    pub fn revision_count(&self) -> Result<usize> {
        let mut count = 0;
        self.state.view().objects(|_, revisions| {
            count += revisions.len();
            Ok(())
        })?;
        Ok(count)
    }
}

fn located(oid: Oid, around: Around) -> Result<Located, LoadError> {
    match around {
        Around::Found { serial, stored, next } => Ok(Located {
            oid,
            serial,
            next_serial: next,
            data: stored.data(),
            data_serial: stored.data_serial(),
        }),
        Around::NotFound => Err(LoadError::OidNotFound(oid)),
        Around::Nothing => Err(LoadError::OidDoesNotExist(oid)),
    }
}
