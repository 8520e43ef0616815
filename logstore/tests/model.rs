//! The log store against a reference model (`BTreeMap`s), driven by property-based sequences
//! of store / vote / lock / unlock / abort / pack / truncate / flush / restart / crash.
//! Every lookup is compared after every step.

use std::collections::BTreeMap;

use bytes::Bytes;
use logstore::{LoadError, LogStore, Metadata, Options, PendingStage, TransactionMeta, Value};
use proptest::prelude::*;
use wire::{Compression, Oid, PartitionId, Tid};

const OIDS: u64 = 6;
const PARTITIONS: u32 = 3;

#[derive(Debug, Clone)]
enum Op {
    /// Store in the open transaction `slot` (begun if needed).
    Store {
        slot: usize,
        oid: u64,
        value: ModelValueSpec,
    },
    Vote {
        slot: usize,
    },
    /// Lock and unlock (each made durable first, as the storage node does).
    Commit {
        slot: usize,
    },
    /// Lock only: left for a crash or restart to find.
    LockOnly {
        slot: usize,
    },
    Abort {
        slot: usize,
    },
    Pack {
        back: usize,
    },
    Truncate {
        back: usize,
    },
    Flush,
    Restart,
    Crash,
    /// Flush and write a checkpoint on the spot.
    Checkpoint,
    /// Start a checkpoint and leave it running while other steps go on.
    CheckpointStart,
    /// Run and finish the checkpoint started earlier.
    CheckpointFinish,
    /// Compact: relocate what segments before the checkpoint still hold, delete them.
    Compact,
    /// Start a compaction of every sealed segment, to be done in slices.
    CompactStart,
    /// One slice of the running compaction.
    CompactStep,
}

#[derive(Debug, Clone)]
enum ModelValueSpec {
    Data(Vec<u8>),
    Delete,
    /// Undo to the `back`-th last committed serial of the object, if it has one.
    Undo(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let slot = 0..2usize;
    prop_oneof![
        8 => (slot.clone(), 0..OIDS, value()).prop_map(|(slot, oid, value)| Op::Store { slot, oid, value }),
        2 => slot.clone().prop_map(|slot| Op::Vote { slot }),
        5 => slot.clone().prop_map(|slot| Op::Commit { slot }),
        1 => slot.clone().prop_map(|slot| Op::LockOnly { slot }),
        1 => slot.prop_map(|slot| Op::Abort { slot }),
        1 => (0..4usize).prop_map(|back| Op::Pack { back }),
        1 => (0..4usize).prop_map(|back| Op::Truncate { back }),
        1 => Just(Op::Flush),
        1 => Just(Op::Restart),
        1 => Just(Op::Crash),
        1 => Just(Op::Checkpoint),
        1 => Just(Op::CheckpointStart),
        1 => Just(Op::CheckpointFinish),
        1 => Just(Op::Compact),
        1 => Just(Op::CompactStart),
        3 => Just(Op::CompactStep),
    ]
}

fn value() -> impl Strategy<Value = ModelValueSpec> {
    prop_oneof![
        4 => proptest::collection::vec(any::<u8>(), 0..1200).prop_map(ModelValueSpec::Data),
        1 => Just(ModelValueSpec::Delete),
        1 => (0..3usize).prop_map(ModelValueSpec::Undo),
    ]
}

/// A committed revision in the model: data, or none for a deletion; and the undo serial.
#[derive(Debug, Clone, PartialEq)]
struct Revision {
    data: Option<Vec<u8>>,
    data_serial: Option<Tid>,
}

#[derive(Debug, Clone, Default)]
struct Pending {
    ttid: Tid,
    stores: BTreeMap<Oid, (Value, Revision)>,
    voted: bool,
    locked: Option<Tid>,
}

/// The reference: committed revisions and transactions, plus the open transactions.
#[derive(Debug, Clone, Default)]
struct Model {
    /// Highest pack tid: truncation below it is refused.
    pack_tid: Option<Tid>,
    objects: BTreeMap<Oid, BTreeMap<Tid, Revision>>,
    transactions: BTreeMap<Tid, Vec<Oid>>,
    slots: [Option<Pending>; 2],
}

impl Model {
    fn commit(&mut self, pending: Pending, tid: Tid) {
        let oids: Vec<Oid> = pending.stores.keys().copied().collect();
        for (oid, (_, revision)) in pending.stores {
            self.objects.entry(oid).or_default().insert(tid, revision);
        }
        self.transactions.insert(tid, oids);
    }

    fn pack(&mut self, pack_tid: Tid) {
        self.pack_tid = self.pack_tid.max(Some(pack_tid));
        for revisions in self.objects.values_mut() {
            let Some((&newest, kept)) = revisions.range(..=pack_tid).next_back() else { continue };
            let delete_newest = kept.data.is_none() && kept.data_serial.is_none();
            revisions.retain(|&serial, _| serial >= newest);
            if delete_newest {
                revisions.remove(&newest);
            }
        }
        self.objects.retain(|_, revisions| !revisions.is_empty());
    }

    fn truncate(&mut self, tid: Tid) {
        for revisions in self.objects.values_mut() {
            revisions.retain(|&serial, _| serial <= tid);
        }
        self.objects.retain(|_, revisions| !revisions.is_empty());
        self.transactions.retain(|&t, _| t <= tid);
    }

    fn committed_tids(&self) -> Vec<Tid> {
        let mut tids: Vec<Tid> = self.transactions.keys().copied().collect();
        tids.extend(self.objects.values().flat_map(|r| r.keys().copied()));
        tids.sort_unstable();
        tids.dedup();
        tids
    }
}

struct Harness {
    directory: tempfile::TempDir,
    store: LogStore,
    model: Model,
    /// The model as of the last point where everything was durable.
    durable_model: Model,
    next_tid: u64,
    checkpoint: Option<logstore::CheckpointJob>,
    /// A checkpoint written and waiting for the log to be durable up to its position.
    awaiting_install: bool,
    /// A compaction is running (in slices).
    compacting: bool,
}

fn options() -> Options {
    Options { segment_size: 4 << 10 }
}

impl Harness {
    fn new() -> Harness {
        let directory = tempfile::tempdir().unwrap();
        let mut store = LogStore::open_directory(directory.path(), options()).unwrap();
        let metadata = Metadata { partitions: PARTITIONS, ..Metadata::default() };
        store.set_metadata(metadata).unwrap();
        store.flush().unwrap();
        Harness {
            directory,
            store,
            model: Model::default(),
            durable_model: Model::default(),
            next_tid: 1 << 40,
            checkpoint: None,
            awaiting_install: false,
            compacting: false,
        }
    }

    fn tid(&mut self) -> Tid {
        self.next_tid += 1 + self.next_tid % 3;
        Tid(self.next_tid)
    }

    fn flush(&mut self) {
        self.store.flush().unwrap();
        self.durable_model = self.model.clone();
        if self.awaiting_install {
            // Everything appended before the checkpoint started is durable now.
            let installed = self.store.install_checkpoint().unwrap();
            assert!(installed, "a written checkpoint is installed after a flush");
            self.awaiting_install = false;
        }
    }

    fn reopen(&mut self) {
        // A compaction in progress does not survive the store; what it relocated does.
        self.compacting = false;
        // The crashed store lets go of the directory first (a store locks it), as a dead
        // process would: a store on a scratch directory takes its place meanwhile.
        let scratch = tempfile::tempdir().unwrap();
        let placeholder = LogStore::open_directory(scratch.path(), options()).unwrap();
        drop(std::mem::replace(&mut self.store, placeholder));
        self.store = LogStore::open_directory(self.directory.path(), options()).unwrap();
    }

    fn step(&mut self, op: &Op) {
        match op {
            Op::Store { slot, oid, value } => {
                if self.model.slots[*slot].as_ref().is_some_and(|p| p.voted) {
                    return;
                }
                let oid = Oid(*oid);
                let (value, revision) = match value {
                    ModelValueSpec::Data(data) => (
                        Value::Data {
                            compression: Compression::None,
                            data_crc: crc32fast::hash(data),
                            data: Bytes::copy_from_slice(data),
                        },
                        Revision { data: Some(data.clone()), data_serial: None },
                    ),
                    ModelValueSpec::Delete => {
                        (Value::Delete, Revision { data: None, data_serial: None })
                    }
                    ModelValueSpec::Undo(back) => {
                        let Some(revisions) = self.model.objects.get(&oid) else { return };
                        let Some((&serial, target)) = revisions.iter().rev().nth(*back) else {
                            return;
                        };
                        let data = target.data.clone();
                        (
                            Value::Undo { data_serial: serial },
                            Revision { data, data_serial: Some(serial) },
                        )
                    }
                };
                if self.model.slots[*slot].is_none() {
                    let ttid = self.tid();
                    self.model.slots[*slot] = Some(Pending { ttid, ..Pending::default() });
                }
                let ttid = self.model.slots[*slot].as_ref().unwrap().ttid;
                self.store.store(ttid, oid, value.clone()).unwrap();
                self.model.slots[*slot].as_mut().unwrap().stores.insert(oid, (value, revision));
            }
            Op::Vote { slot } => {
                let Some(pending) = &mut self.model.slots[*slot] else { return };
                if pending.voted {
                    return;
                }
                pending.voted = true;
                let meta = meta_of(pending);
                self.store.vote(pending.ttid, Some(meta)).unwrap();
            }
            Op::Commit { slot } | Op::LockOnly { slot } => {
                let Some(pending) = &self.model.slots[*slot] else { return };
                if !pending.voted {
                    self.step(&Op::Vote { slot: *slot });
                }
                let Some(pending) = &self.model.slots[*slot] else { return };
                let ttid = pending.ttid;
                let tid = match pending.locked {
                    Some(tid) => tid,
                    None => {
                        let tid = self.tid();
                        self.flush();
                        self.store.lock(ttid, tid).unwrap();
                        self.model.slots[*slot].as_mut().unwrap().locked = Some(tid);
                        tid
                    }
                };
                if matches!(op, Op::Commit { .. }) {
                    self.flush();
                    self.store.unlock(ttid).unwrap();
                    let pending = self.model.slots[*slot].take().unwrap();
                    self.model.commit(pending, tid);
                }
            }
            Op::Abort { slot } => {
                let Some(pending) = &self.model.slots[*slot] else { return };
                if pending.locked.is_some() {
                    assert!(
                        self.store.abort(pending.ttid).is_err(),
                        "locked transactions are never aborted"
                    );
                    return;
                }
                self.store.abort(pending.ttid).unwrap();
                self.model.slots[*slot] = None;
            }
            Op::Pack { back } => {
                let tids = self.model.committed_tids();
                let Some(&pack_tid) = tids.iter().rev().nth(*back) else { return };
                let locked = self.model.slots.iter().flatten().filter_map(|p| p.locked);
                if locked.into_iter().any(|tid| tid <= pack_tid) {
                    assert!(self.store.pack(pack_tid, None).is_err(), "pack over a locked tid");
                    return;
                }
                self.store.pack(pack_tid, None).unwrap();
                self.model.pack(pack_tid);
            }
            Op::Truncate { back } => {
                if self.model.slots.iter().flatten().next().is_some() {
                    let ttid = Tid(1);
                    assert!(
                        self.store.truncate(ttid).is_err(),
                        "truncate with transactions in flight"
                    );
                    return;
                }
                let tids = self.model.committed_tids();
                let Some(&tid) = tids.iter().rev().nth(*back) else { return };
                if self.model.pack_tid.is_some_and(|pack_tid| pack_tid > tid) {
                    assert!(self.store.truncate(tid).is_err(), "truncate below a pack");
                    return;
                }
                self.store.truncate(tid).unwrap();
                self.model.truncate(tid);
            }
            Op::Flush => self.flush(),
            Op::Checkpoint => {
                if self.checkpoint.is_none() && !self.awaiting_install {
                    self.store.checkpoint().unwrap();
                    self.durable_model = self.model.clone();
                }
            }
            Op::CompactStart => {
                if self.checkpoint.is_none() && !self.awaiting_install && !self.compacting {
                    self.store.checkpoint().unwrap();
                    self.durable_model = self.model.clone();
                    let ids = self.store.compaction_candidates(2.0).unwrap();
                    self.store.start_compaction(&ids).unwrap();
                    self.compacting = true;
                }
            }
            Op::CompactStep => {
                if self.compacting && self.store.compaction_step(700).unwrap().is_some() {
                    self.compacting = false;
                }
            }
            Op::Compact => {
                if self.checkpoint.is_none() && !self.awaiting_install && !self.compacting {
                    // Every sealed segment, so that relocation runs often.
                    let report = self.store.compact_below(2.0).unwrap();
                    assert_eq!(report.segments.len(), report.deleted.len(), "{report:?}");
                    self.durable_model = self.model.clone();
                }
            }
            Op::CheckpointStart => {
                if self.checkpoint.is_none() && !self.awaiting_install {
                    self.checkpoint = Some(self.store.start_checkpoint().unwrap());
                }
            }
            Op::CheckpointFinish => {
                if let Some(job) = self.checkpoint.take() {
                    let outcome = job.run();
                    let installed = self.store.finish_checkpoint(outcome).unwrap();
                    self.awaiting_install = !installed;
                }
            }
            Op::Restart => {
                // A clean stop: everything flushed, a running checkpoint finished, reopened.
                self.step(&Op::CheckpointFinish);
                self.flush();
                self.reopen();
                self.after_reopen();
            }
            Op::Crash => {
                // Nothing flushed: what was not durable is gone. A running checkpoint may
                // or may not have written its file.
                if let Some(job) =
                    self.checkpoint.take().filter(|_| self.next_tid.is_multiple_of(2))
                {
                    job.run().unwrap();
                }
                // A written checkpoint not yet installed stays a temporary file.
                self.awaiting_install = false;
                self.model = self.durable_model.clone();
                self.reopen();
                self.after_reopen();
            }
        }
    }

    /// After a reopen, the store reports exactly the unfinished transactions that were
    /// durable; then they are finished (locked) or aborted (the others) as a master would.
    fn after_reopen(&mut self) {
        let mut expected: Vec<(Tid, PendingStage)> = self
            .model
            .slots
            .iter()
            .flatten()
            .map(|p| {
                let stage = match (p.voted, p.locked) {
                    (_, Some(tid)) => PendingStage::Locked(tid),
                    (true, None) => PendingStage::Voted,
                    (false, None) => PendingStage::Stored,
                };
                (p.ttid, stage)
            })
            .collect();
        expected.sort_unstable_by_key(|(ttid, _)| *ttid);
        assert_eq!(self.store.unfinished(), expected, "unfinished transactions after reopen");
        // As a master would: locked transactions are committed, the others aborted.
        for slot in 0..self.model.slots.len() {
            let Some(pending) = self.model.slots[slot].take() else { continue };
            match pending.locked {
                Some(tid) => {
                    self.store.unlock(pending.ttid).unwrap();
                    self.model.commit(pending, tid);
                }
                None => self.store.abort(pending.ttid).unwrap(),
            }
        }
        self.flush();
    }

    fn check(&mut self) {
        for oid in (0..OIDS).map(Oid) {
            let revisions = self.model.objects.get(&oid).cloned().unwrap_or_default();
            // Latest.
            match (self.store.load(oid, None, None), revisions.iter().next_back()) {
                (Ok(loaded), Some((&serial, revision))) => {
                    check_loaded(&loaded, serial, revision, None)
                }
                (Err(LoadError::OidDoesNotExist(_)), None) => {}
                (other, expected) => panic!("load {oid}: {other:?}, model {expected:?}"),
            }
            // Before each serial and just after it; at each serial.
            let serials: Vec<Tid> = revisions.keys().copied().collect();
            for (index, &serial) in serials.iter().enumerate() {
                let next = serials.get(index + 1).copied();
                let loaded = self.store.load(oid, None, Some(Tid(serial.0 + 1))).unwrap();
                check_loaded(&loaded, serial, &revisions[&serial], next);
                let at = self.store.load(oid, Some(serial), None).unwrap();
                check_loaded(&at, serial, &revisions[&serial], next);
                let exact = self.store.load_serial(oid, serial).unwrap();
                check_loaded(&exact, serial, &revisions[&serial], next);
                if index == 0 {
                    let before_first = self.store.load(oid, None, Some(serial));
                    assert!(
                        matches!(before_first, Err(LoadError::OidNotFound(_))),
                        "{before_first:?}"
                    );
                }
            }
            let history: Vec<Tid> =
                self.store.history(oid, 0, 100).unwrap().into_iter().map(|(s, _)| s).collect();
            assert_eq!(history, serials.iter().rev().copied().collect::<Vec<_>>());
        }
        for (&tid, oids) in &self.model.transactions {
            let info = self.store.transaction(tid).unwrap().expect("committed transaction");
            assert_eq!(&info.meta.oids, oids);
        }
        let all: Vec<Tid> = self.model.transactions.keys().copied().collect();
        for partition in 0..PARTITIONS {
            let expected: Vec<Tid> = all
                .iter()
                .copied()
                .filter(|t| PartitionId::of(t.0, PARTITIONS) == PartitionId(partition))
                .collect();
            let tids =
                self.store.tids_from(Tid(0), Tid(u64::MAX), 1000, PartitionId(partition)).unwrap();
            assert_eq!(tids, expected);
        }
        let (last_tid, _, _) = self.store.last_ids();
        assert_eq!(last_tid, self.model.committed_tids().last().copied());
    }
}

fn meta_of(pending: &Pending) -> TransactionMeta {
    TransactionMeta {
        user: Bytes::from_static(b"user"),
        description: Bytes::from(format!("ttid {}", pending.ttid)),
        extension: Bytes::new(),
        oids: pending.stores.keys().copied().collect(),
        pack: None,
    }
}

fn check_loaded(loaded: &logstore::Loaded, serial: Tid, revision: &Revision, next: Option<Tid>) {
    assert_eq!(loaded.serial, serial);
    assert_eq!(loaded.next_serial, next);
    assert_eq!(loaded.data_serial, revision.data_serial);
    assert_eq!(loaded.data.as_ref(), revision.data.as_deref().unwrap_or_default());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_model(ops in proptest::collection::vec(op(), 1..80)) {
        let mut harness = Harness::new();
        for op in &ops {
            harness.step(op);
            harness.check();
        }
        harness.step(&Op::Restart);
        harness.check();
    }
}
