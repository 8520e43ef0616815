//! Checkpoints: writing the committed index to an index file, off the core, so that memory
//! stays bounded and a restart maps the file and replays only the log written after it.
//!
//! `LogStore::start_checkpoint` freezes the in-memory delta and returns a `CheckpointJob`
//! (`Send`: run it on any thread); `finish_checkpoint` swaps the new file in. Loads go on
//! meanwhile, reading through the frozen delta.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use wire::codec::Field;
use wire::{Oid, Tid};

use crate::error::{Result, StoreError};
use crate::index::{IndexFile, IndexWriter};
use crate::record::{LogPosition, Metadata};
use crate::state::{Delta, Filter, Pending, State, Stored, View, visible_base};

wire::wire_struct! {
    /// One store of a transaction in flight.
    pub struct PendingStore {
        pub oid: Oid,
        pub stored: Stored,
    }

    /// A lock of a transaction in flight.
    pub struct PendingLock {
        pub tid: Tid,
        pub position: u64,
    }

    /// A transaction in flight when the checkpoint was taken.
    pub struct PendingEntry {
        pub ttid: Tid,
        pub stores: Vec<PendingStore>,
        pub vote: Option<u64>,
        pub has_meta: bool,
        pub lock: Option<PendingLock>,
    }

    /// What a replay needs besides the committed index: in the index file's state section.
    pub struct CheckpointState {
        pub metadata: Metadata,
        pub last_oid: Option<Oid>,
        pub last_tid: Option<Tid>,
        pub first_tid: Option<Tid>,
        pub pack_tid: Option<Tid>,
        pub pending: Vec<PendingEntry>,
    }
}

impl CheckpointState {
    pub fn of(state: &State) -> CheckpointState {
        let mut pending: Vec<PendingEntry> = state
            .pending
            .iter()
            .map(|(&ttid, p)| PendingEntry {
                ttid,
                stores: p
                    .stores
                    .iter()
                    .map(|(&oid, &stored)| PendingStore { oid, stored })
                    .collect(),
                vote: p.vote.map(|v| v.0),
                has_meta: p.has_meta,
                lock: p.lock.map(|(tid, position)| PendingLock { tid, position: position.0 }),
            })
            .collect();
        pending.sort_unstable_by_key(|p| p.ttid);
        CheckpointState {
            metadata: state.metadata.clone(),
            last_oid: state.last_oid,
            last_tid: state.last_tid,
            first_tid: state.first_tid,
            pack_tid: state.pack_tid,
            pending,
        }
    }

    pub fn restore(self, state: &mut State) {
        state.metadata = self.metadata;
        state.last_oid = self.last_oid;
        state.last_tid = self.last_tid;
        state.first_tid = self.first_tid;
        state.pack_tid = self.pack_tid;
        state.pending = self
            .pending
            .into_iter()
            .map(|p| {
                let pending = Pending {
                    stores: p.stores.into_iter().map(|s| (s.oid, s.stored)).collect(),
                    vote: p.vote.map(LogPosition),
                    has_meta: p.has_meta,
                    lock: p.lock.map(|l| (l.tid, LogPosition(l.position))),
                };
                (p.ttid, pending)
            })
            .collect();
    }
}

/// The name of the index file of a generation.
pub fn index_path(directory: &Path, generation: u64) -> PathBuf {
    directory.join(format!("index-{generation:016x}.index"))
}

/// Index files in a directory, newest generation first.
pub fn index_files(directory: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let entries = std::fs::read_dir(directory).map_err(|source| StoreError::Io {
        operation: "list",
        path: directory.to_owned(),
        source,
    })?;
    let mut files = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let generation = name
            .strip_prefix("index-")
            .and_then(|n| n.strip_suffix(".index"))
            .and_then(|n| u64::from_str_radix(n, 16).ok());
        if let Some(generation) = generation {
            files.push((generation, entry.path()));
        }
    }
    files.sort_unstable_by_key(|&(generation, _)| std::cmp::Reverse(generation));
    Ok(files)
}

/// Writing one checkpoint: everything it needs, owned, so it can run on another thread.
#[derive(Debug)]
pub struct CheckpointJob {
    pub(crate) directory: PathBuf,
    pub(crate) generation: u64,
    pub(crate) log_position: LogPosition,
    pub(crate) base: Option<(Arc<IndexFile>, u64)>,
    pub(crate) frozen: Arc<Delta>,
    pub(crate) filters: Vec<(u64, Filter)>,
    pub(crate) state: Bytes,
}

impl CheckpointJob {
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Merges the previous index file and the frozen delta, with the filters made before
    /// the checkpoint, into a new index file, synced under a temporary name (the store
    /// renames it into place once the log is durable up to the checkpoint's position).
    pub fn run(&self) -> Result<WrittenIndex> {
        let written = self.write();
        if written.is_err() {
            // Nothing of a failed job stays on disk.
            let temporary =
                index_path(&self.directory, self.generation).with_extension("index.tmp");
            let _ = std::fs::remove_file(temporary);
        }
        written
    }

    fn write(&self) -> Result<WrittenIndex> {
        let view = View {
            base: visible_base(self.base.as_ref().map(|(b, g)| (&**b, *g)), &self.filters),
            frozen: Some((&self.frozen, self.generation)),
            delta: None,
            filters: &self.filters,
        };
        let path = index_path(&self.directory, self.generation);
        let mut writer = IndexWriter::create(&path, self.generation, self.log_position)?;
        // Bytes still referenced in each segment, for choosing what to compact.
        let mut live = BTreeMap::new();
        view.objects(|oid, revisions| {
            for (serial, stored) in revisions {
                if let Some(data) = stored.data() {
                    *live.entry(data.position.segment()).or_insert(0) += u64::from(data.size);
                }
                writer.object(oid, serial, stored)?;
            }
            Ok(())
        })?;
        view.serial_records((Tid(0), Oid(0)), (Tid(u64::MAX), Oid(u64::MAX)), |serial, oid| {
            writer.serial(serial, oid)?;
            Ok(true)
        })?;
        view.transactions(Tid(0), Tid(u64::MAX), |tid, entry| {
            *live.entry(entry.vote.segment()).or_insert(0) += VOTE_LIVE_BYTES;
            writer.transaction(tid, entry)?;
            Ok(true)
        })?;
        let (temporary, path) = writer.finish_temporary(&self.state)?;
        Ok(WrittenIndex { generation: self.generation, temporary, path, live })
    }
}

/// A checkpoint's index file, written and synced under its temporary name.
#[derive(Debug, Clone)]
pub struct WrittenIndex {
    pub generation: u64,
    pub temporary: PathBuf,
    pub path: PathBuf,
    /// Bytes each segment still holds that the index refers to (data, and an estimate
    /// for each transaction's vote record).
    pub live: BTreeMap<u32, u64>,
}

/// What one committed transaction's vote record counts for in `WrittenIndex::live`.
const VOTE_LIVE_BYTES: u64 = 128;

const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<CheckpointJob>();
    assert_send::<WrittenIndex>();
};

pub fn encode_state(state: &CheckpointState) -> Result<Bytes> {
    let mut out = BytesMut::new();
    state.encode(&mut out).map_err(|e| StoreError::Invalid(e.to_string()))?;
    Ok(out.freeze())
}
