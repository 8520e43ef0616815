//! The in-memory index of one storage core: committed revisions by (oid, serial) and by
//! (serial, oid), committed transactions by tid, transactions in flight by ttid, metadata.
//!
//! `State::apply` is the only way it changes, from records, both live and during recovery,
//! so a restart rebuilds exactly the state the records describe. It does no I/O.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;

use wire::{Compression, Oid, PartitionId, Tid};

use crate::limits::RECORD_HEADER_SIZE;
use crate::record::{
    DropPartitionBody, LockBody, LogPosition, Metadata, PackBody, RawRecord, RecordDefect,
    RecordKind, STORE_DATA_OFFSET, StoreBody, TruncateBody, TtidBody, Value, VoteBody,
};

/// Where a revision's data bytes are in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataRef {
    pub position: LogPosition,
    pub size: u32,
    pub compression: Compression,
    pub data_crc: u32,
}

/// What a revision holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    Data(DataRef),
    /// Undo: the data of `data_serial`, resolved to its bytes when the revision was stored
    /// (so that a pack of the earlier revision does not lose it).
    Undo {
        data_serial: Tid,
        data: Option<DataRef>,
    },
    Delete,
}

impl Stored {
    /// The bytes a load returns: none for a deletion (or an undo of a creation).
    pub fn data(&self) -> Option<DataRef> {
        match *self {
            Stored::Data(data) => Some(data),
            Stored::Undo { data, .. } => data,
            Stored::Delete => None,
        }
    }

    pub fn data_serial(&self) -> Option<Tid> {
        match *self {
            Stored::Undo { data_serial, .. } => Some(data_serial),
            _ => None,
        }
    }
}

/// A committed transaction, as indexed (its metadata stays in its vote record).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransactionEntry {
    pub ttid: Tid,
    pub vote: LogPosition,
    pub packed: bool,
}

/// A transaction in flight on this core.
#[derive(Clone, Debug, Default)]
pub struct Pending {
    pub stores: BTreeMap<Oid, Stored>,
    /// The vote record, once voted.
    pub vote: Option<LogPosition>,
    /// Whether the vote carried the transaction's metadata.
    pub has_meta: bool,
    /// The final tid and the lock record, once locked.
    pub lock: Option<(Tid, LogPosition)>,
}

/// Where an unfinished transaction stands (reported after a restart).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PendingStage {
    /// Objects stored, not voted: dropped unless the client votes.
    Stored,
    /// Voted (durable), not locked: the master decides.
    Voted,
    /// Locked under a final tid (durable commit point), not yet visible.
    Locked(Tid),
}

#[derive(Debug, Default)]
pub struct State {
    pub objects: BTreeMap<(Oid, Tid), Stored>,
    pub by_serial: BTreeSet<(Tid, Oid)>,
    pub transactions: BTreeMap<Tid, TransactionEntry>,
    pub pending: HashMap<Tid, Pending>,
    pub metadata: Metadata,
    /// Highest oid ever committed here (kept across packs and drops: oids are not reused).
    pub last_oid: Option<Oid>,
}

fn defect(reason: &'static str) -> RecordDefect {
    RecordDefect::BadBody(reason.to_owned())
}

impl State {
    /// Applies one record. Records are checked before they are appended, so an error here
    /// during recovery means the log contradicts itself.
    pub fn apply(&mut self, record: &RawRecord) -> Result<(), RecordDefect> {
        match record.kind {
            RecordKind::SegmentEnd => {}
            RecordKind::Store => {
                let body: StoreBody = record.decode()?;
                let stored = match body.value {
                    Value::Data { compression, data_crc, data } => Stored::Data(DataRef {
                        position: record.position.advance(RECORD_HEADER_SIZE + STORE_DATA_OFFSET),
                        size: data.len() as u32,
                        compression,
                        data_crc,
                    }),
                    // Resolved now, while the target is there: a pack before the commit
                    // must not take the data away.
                    Value::Undo { data_serial } => Stored::Undo {
                        data_serial,
                        data: self.objects.get(&(body.oid, data_serial)).and_then(Stored::data),
                    },
                    Value::Delete => Stored::Delete,
                };
                let pending = self.pending.entry(body.ttid).or_default();
                if pending.vote.is_some() {
                    return Err(defect("store after vote"));
                }
                pending.stores.insert(body.oid, stored);
            }
            RecordKind::Vote => {
                let body: VoteBody = record.decode()?;
                let pending = self.pending.entry(body.ttid).or_default();
                if pending.vote.is_some() {
                    return Err(defect("second vote"));
                }
                pending.vote = Some(record.position);
                pending.has_meta = body.meta.is_some();
            }
            RecordKind::Lock => {
                let body: LockBody = record.decode()?;
                let pending = self
                    .pending
                    .get_mut(&body.ttid)
                    .ok_or_else(|| defect("lock of unknown ttid"))?;
                if pending.vote.is_none() || pending.lock.is_some() {
                    return Err(defect("lock of a transaction not voted, or locked twice"));
                }
                pending.lock = Some((body.tid, record.position));
            }
            RecordKind::Unlock => {
                let body: TtidBody = record.decode()?;
                let pending = self
                    .pending
                    .remove(&body.ttid)
                    .ok_or_else(|| defect("unlock of unknown ttid"))?;
                let Some((tid, _)) = pending.lock else { return Err(defect("unlock before lock")) };
                self.commit(body.ttid, tid, pending);
            }
            RecordKind::Abort => {
                let body: TtidBody = record.decode()?;
                if let Some(pending) = self.pending.get(&body.ttid)
                    && pending.lock.is_some()
                {
                    return Err(defect("abort of a locked transaction"));
                }
                self.pending.remove(&body.ttid);
            }
            RecordKind::Metadata => self.metadata = record.decode()?,
            RecordKind::Truncate => {
                let body: TruncateBody = record.decode()?;
                self.truncate(body.tid);
            }
            RecordKind::Pack => {
                let body: PackBody = record.decode()?;
                self.pack(body.pack_tid, body.oids.as_deref());
            }
            RecordKind::DropPartition => {
                let body: DropPartitionBody = record.decode()?;
                self.drop_partition(body.partition, body.partitions);
            }
        }
        Ok(())
    }

    fn commit(&mut self, ttid: Tid, tid: Tid, pending: Pending) {
        for (oid, stored) in pending.stores {
            self.objects.insert((oid, tid), stored);
            self.by_serial.insert((tid, oid));
            self.last_oid = self.last_oid.max(Some(oid));
        }
        if pending.has_meta {
            let vote = pending.vote.expect("committed transactions voted");
            self.transactions.insert(tid, TransactionEntry { ttid, vote, packed: false });
        }
    }

    fn truncate(&mut self, tid: Tid) {
        let after = (Bound::Excluded((tid, Oid(u64::MAX))), Bound::Unbounded);
        let dropped: Vec<(Tid, Oid)> = self.by_serial.range(after).copied().collect();
        for (serial, oid) in dropped {
            self.by_serial.remove(&(serial, oid));
            self.objects.remove(&(oid, serial));
        }
        self.transactions.retain(|&committed, _| committed <= tid);
    }

    /// Drops the revisions of each object older than its newest one at or before `pack_tid`,
    /// and that one too if it is a deletion.
    fn pack(&mut self, pack_tid: Tid, oids: Option<&[Oid]>) {
        let candidates: Vec<Oid> = match oids {
            Some(oids) => oids.to_vec(),
            None => {
                let mut all: Vec<Oid> = self.objects.keys().map(|&(oid, _)| oid).collect();
                all.dedup();
                all
            }
        };
        for oid in candidates {
            let kept = self
                .objects
                .range((oid, Tid(0))..=(oid, pack_tid))
                .next_back()
                .map(|(&k, &v)| (k, v));
            let Some(((_, newest), stored)) = kept else { continue };
            let mut doomed: Vec<Tid> = self
                .objects
                .range((oid, Tid(0))..(oid, newest))
                .map(|(&(_, serial), _)| serial)
                .collect();
            if stored == Stored::Delete {
                doomed.push(newest);
            }
            for serial in doomed {
                self.objects.remove(&(oid, serial));
                self.by_serial.remove(&(serial, oid));
            }
        }
        for entry in self.transactions.range_mut(..=pack_tid).map(|(_, e)| e) {
            if oids.is_none() {
                entry.packed = true;
            }
        }
    }

    fn drop_partition(&mut self, partition: PartitionId, partitions: u32) {
        let in_partition = |id: u64| PartitionId::of(id, partitions) == partition;
        self.objects.retain(|&(oid, _), _| !in_partition(oid.0));
        self.by_serial.retain(|&(_, oid)| !in_partition(oid.0));
        self.transactions.retain(|&tid, _| !in_partition(tid.0));
    }

    /// Where each unfinished transaction stands.
    pub fn unfinished(&self) -> Vec<(Tid, PendingStage)> {
        let mut list: Vec<(Tid, PendingStage)> = self
            .pending
            .iter()
            .map(|(&ttid, p)| {
                let stage = match (p.vote, p.lock) {
                    (_, Some((tid, _))) => PendingStage::Locked(tid),
                    (Some(_), None) => PendingStage::Voted,
                    (None, None) => PendingStage::Stored,
                };
                (ttid, stage)
            })
            .collect();
        list.sort_unstable_by_key(|&(ttid, _)| ttid);
        list
    }

    /// Highest committed tid: of a transaction record or of an object revision.
    pub fn last_tid(&self) -> Option<Tid> {
        let transactions = self.transactions.keys().next_back().copied();
        let objects = self.by_serial.iter().next_back().map(|&(tid, _)| tid);
        transactions.max(objects)
    }

    pub fn first_tid(&self) -> Option<Tid> {
        let transactions = self.transactions.keys().next().copied();
        let objects = self.by_serial.iter().next().map(|&(tid, _)| tid);
        match (transactions, objects) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}
