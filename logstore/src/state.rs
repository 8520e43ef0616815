//! The index of one storage core, in layers: the last checkpoint's index file (read through
//! mmap), a frozen in-memory delta while a checkpoint is being written, and the active
//! in-memory delta. Pack, truncate and partition drops change the active delta directly and
//! are kept as filters over the older layers until a checkpoint bakes them in.
//!
//! `State::apply` is the only way the index changes, from records, both live and during
//! recovery, so a restart rebuilds exactly the state the records describe. It does no I/O
//! besides reading the mapped index file.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use bytes::BytesMut;
use wire::codec::{Field, Reader};
use wire::{Compression, DecodeError, EncodeError, Oid, PartitionId, Tid};

use crate::error::{Result, StoreError};
use crate::index::IndexFile;
use crate::limits::RECORD_HEADER_SIZE;
use crate::record::{
    DeleteReplicatedBody, DropPartitionBody, LockBody, LogPosition, Metadata, PackBody,
    RELOCATE_DATA_OFFSET, REPLICATE_DATA_OFFSET, RawRecord, RecordDefect, RecordKind, RelocateBody,
    RelocateVoteBody, ReplicateObjectBody, ReplicateTransactionBody, ReserveOidsBody,
    STORE_DATA_OFFSET, StoreBody, TruncateBody, TtidBody, Value, VoteBody,
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

    /// The same revision with its data elsewhere (after compaction moved it).
    pub fn with_data(&self, moved: DataRef) -> Stored {
        match *self {
            Stored::Data(_) => Stored::Data(moved),
            Stored::Undo { data_serial, data: Some(_) } => {
                Stored::Undo { data_serial, data: Some(moved) }
            }
            other => other,
        }
    }
}

fn encode_data_ref(data: &DataRef, out: &mut BytesMut) -> Result<(), EncodeError> {
    data.position.0.encode(out)?;
    data.size.encode(out)?;
    data.compression.encode(out)?;
    data.data_crc.encode(out)
}

fn decode_data_ref(reader: &mut Reader<'_>) -> Result<DataRef, DecodeError> {
    Ok(DataRef {
        position: LogPosition(u64::decode(reader)?),
        size: u32::decode(reader)?,
        compression: Compression::decode(reader)?,
        data_crc: u32::decode(reader)?,
    })
}

/// In a checkpoint's replay state: a `Stored` of a transaction in flight.
impl Field for Stored {
    const WIRE: &'static str = "u8 tag: 0 data ref, 1 undo + ref, 2 undo without data, 3 delete";
    const SIZE_MIN: usize = 1;
    const SIZE_FIXED: Option<usize> = None;

    fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        match self {
            Stored::Data(data) => {
                0u8.encode(out)?;
                encode_data_ref(data, out)
            }
            Stored::Undo { data_serial, data: Some(data) } => {
                1u8.encode(out)?;
                data_serial.encode(out)?;
                encode_data_ref(data, out)
            }
            Stored::Undo { data_serial, data: None } => {
                2u8.encode(out)?;
                data_serial.encode(out)
            }
            Stored::Delete => 3u8.encode(out),
        }
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match u8::decode(reader)? {
            0 => Ok(Stored::Data(decode_data_ref(reader)?)),
            1 => Ok(Stored::Undo {
                data_serial: Tid::decode(reader)?,
                data: Some(decode_data_ref(reader)?),
            }),
            2 => Ok(Stored::Undo { data_serial: Tid::decode(reader)?, data: None }),
            3 => Ok(Stored::Delete),
            tag => Err(DecodeError::BadValue { what: "stored tag", value: u64::from(tag) }),
        }
    }

    wire::__field_arbitrary!(u => Ok(if bool::arbitrary(u)? { Stored::Delete } else {
        Stored::Undo { data_serial: Tid::arbitrary(u)?, data: None }
    }));
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

/// Committed entries of one in-memory layer.
#[derive(Debug, Default, Clone)]
pub struct Delta {
    pub objects: BTreeMap<(Oid, Tid), Stored>,
    pub by_serial: BTreeSet<(Tid, Oid)>,
    pub transactions: BTreeMap<Tid, TransactionEntry>,
    /// Deletions a pack dropped from this layer while older layers still hold revisions of
    /// the object: never visible, but the pack filter over the older layers must still see
    /// them as the newest revision at or before the pack tid.
    pub pack_tombstones: BTreeSet<(Oid, Tid)>,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty() && self.transactions.is_empty()
    }

    fn truncate(&mut self, tid: Tid) {
        let after = (Bound::Excluded((tid, Oid(u64::MAX))), Bound::Unbounded);
        let dropped: Vec<(Tid, Oid)> = self.by_serial.range(after).copied().collect();
        for (serial, oid) in dropped {
            self.by_serial.remove(&(serial, oid));
            self.objects.remove(&(oid, serial));
        }
        self.transactions.retain(|&committed, _| committed <= tid);
        self.pack_tombstones.retain(|&(_, serial)| serial <= tid);
    }

    fn drop_partition(&mut self, partition: PartitionId, partitions: u32) {
        let inside = |id: u64| PartitionId::of(id, partitions) == partition;
        self.objects.retain(|&(oid, _), _| !inside(oid.0));
        self.by_serial.retain(|&(_, oid)| !inside(oid.0));
        self.transactions.retain(|&tid, _| !inside(tid.0));
        self.pack_tombstones.retain(|&(oid, _)| !inside(oid.0));
    }
}

/// A change to the older layers, kept until a checkpoint bakes it in.
#[derive(Clone, Debug)]
pub enum Filter {
    Truncate(Tid),
    Pack {
        pack_tid: Tid,
        oids: Option<Arc<BTreeSet<Oid>>>,
    },
    DropPartition {
        partition: PartitionId,
        partitions: u32,
    },
    /// Committed entries the storage replicated from has not (replication's deletions).
    Deleted {
        tids: Arc<BTreeSet<Tid>>,
        objects: Arc<BTreeSet<(Oid, Tid)>>,
    },
}

/// The index file, unless every partition was dropped since it was written: then nothing
/// in it is visible, and it is not read at all (so that a storage whose index file is
/// damaged gets rid of it by dropping every partition and copying them again from the
/// other storages).
pub fn visible_base<'a>(
    base: Option<(&'a IndexFile, u64)>,
    filters: &[(u64, Filter)],
) -> Option<(&'a IndexFile, u64)> {
    let (_, generation) = base?;
    let mut partitions = None;
    let mut dropped = Vec::new();
    for (sequence, filter) in filters {
        if let Filter::DropPartition { partition, partitions: count } = filter
            && *sequence > generation
        {
            // Drops under another partition count than the last one say nothing here.
            if partitions != Some(*count) {
                partitions = Some(*count);
                dropped = vec![false; *count as usize];
            }
            if let Some(slot) = dropped.get_mut(partition.0 as usize) {
                *slot = true;
            }
        }
    }
    if !dropped.is_empty() && dropped.iter().all(|&d| d) { None } else { base }
}

/// Layers and filters to read through: the live state, or a checkpoint's snapshot.
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    pub base: Option<(&'a IndexFile, u64)>,
    pub frozen: Option<(&'a Delta, u64)>,
    pub delta: Option<&'a Delta>,
    /// (sequence, filter): a filter applies to the layers whose generation is below its
    /// sequence, that is, the layers that existed when it was made.
    pub filters: &'a [(u64, Filter)],
}

/// What `View::revision_at` found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Around {
    /// The object has no revision at all.
    Nothing,
    /// The object has revisions, none at or below the bound.
    NotFound,
    Found {
        serial: Tid,
        stored: Stored,
        next: Option<Tid>,
    },
}

/// Generation of the active delta: no filter applies to it (filters change it directly).
const ACTIVE: u64 = u64::MAX;

impl<'a> View<'a> {
    /// Whether truncate and drop filters hide an entry of a layer: `id` decides the
    /// partition (the oid of an object record, the tid of a transaction), `tid` the
    /// truncation (its serial or tid).
    fn hides(&self, generation: u64, id: u64, tid: Tid) -> bool {
        self.filters.iter().any(|(sequence, filter)| {
            *sequence > generation
                && match filter {
                    Filter::Truncate(truncate) => tid > *truncate,
                    Filter::DropPartition { partition, partitions } => {
                        PartitionId::of(id, *partitions) == *partition
                    }
                    Filter::Pack { .. } | Filter::Deleted { .. } => false,
                }
        })
    }

    /// The index file, unless `id`'s partition (of an oid or a tid) was dropped since it
    /// was written: lookups of one object or transaction of a dropped partition do not
    /// touch the file (a damaged entry near it would fail them).
    fn base_for(&self, id: u64) -> Option<(&'a IndexFile, u64)> {
        let (base, generation) = self.base?;
        let dropped = self.filters.iter().any(|(sequence, filter)| {
            *sequence > generation
                && matches!(filter, Filter::DropPartition { partition, partitions }
                    if PartitionId::of(id, *partitions) == *partition)
        });
        (!dropped).then_some((base, generation))
    }

    fn hides_object(&self, generation: u64, oid: Oid, serial: Tid) -> bool {
        self.hides(generation, oid.0, serial)
            || self.filters.iter().any(|(sequence, filter)| {
                *sequence > generation
                    && matches!(filter, Filter::Deleted { objects, .. } if objects.contains(&(oid, serial)))
            })
    }

    fn hides_transaction(&self, generation: u64, tid: Tid) -> bool {
        self.hides(generation, tid.0, tid)
            || self.filters.iter().any(|(sequence, filter)| {
                *sequence > generation
                    && matches!(filter, Filter::Deleted { tids, .. } if tids.contains(&tid))
            })
    }

    fn packed(&self, generation: u64, tid: Tid, entry: TransactionEntry) -> TransactionEntry {
        let packed = entry.packed
            || self.filters.iter().any(|(sequence, filter)| {
                *sequence > generation
                    && matches!(filter, Filter::Pack { pack_tid, oids: None } if tid <= *pack_tid)
            });
        TransactionEntry { packed, ..entry }
    }

    /// Applies pack filters to an object's revisions (ascending, with their generation).
    fn apply_packs(&self, oid: Oid, revisions: &mut Vec<(Tid, Stored, u64)>) {
        for (sequence, filter) in self.filters {
            let Filter::Pack { pack_tid, oids } = filter else { continue };
            if oids.as_ref().is_some_and(|oids| !oids.contains(&oid)) {
                continue;
            }
            let Some(&(newest, stored, _)) =
                revisions.iter().rev().find(|(serial, _, _)| serial <= pack_tid)
            else {
                continue;
            };
            revisions.retain(|&(serial, _, generation)| {
                generation >= *sequence
                    || serial > newest
                    || (serial == newest && stored != Stored::Delete)
            });
        }
    }

    /// An object's visible revisions, ascending by serial.
    pub fn revisions(&self, oid: Oid) -> Result<Vec<(Tid, Stored)>> {
        let mut revisions = Vec::new();
        if let Some((base, generation)) = self.base_for(oid.0) {
            let mut index = base.objects_from(oid, Tid(0))?;
            while index < base.objects_len() {
                let (entry_oid, serial, stored) = base.object(index)?;
                if entry_oid != oid {
                    break;
                }
                if !self.hides_object(generation, oid, serial) {
                    revisions.push((serial, stored, generation));
                }
                index += 1;
            }
        }
        let mut tombstones = Vec::new();
        for (layer, generation) in self.frozen.into_iter().chain(self.delta.map(|d| (d, ACTIVE))) {
            for (&(_, serial), &stored) in layer.objects.range((oid, Tid(0))..=(oid, Tid(u64::MAX)))
            {
                if !self.hides_object(generation, oid, serial) {
                    revisions.push((serial, stored, generation));
                }
            }
            for &(_, serial) in layer.pack_tombstones.range((oid, Tid(0))..=(oid, Tid(u64::MAX))) {
                if !self.hides_object(generation, oid, serial) {
                    revisions.push((serial, Stored::Delete, generation));
                    tombstones.push(serial);
                }
            }
        }
        // A revision in several layers (compaction moved its data): the newest layer wins.
        revisions.sort_unstable_by_key(|&(serial, _, generation)| {
            (serial, std::cmp::Reverse(generation))
        });
        revisions.dedup_by_key(|&mut (serial, _, _)| serial);
        self.apply_packs(oid, &mut revisions);
        Ok(revisions
            .into_iter()
            .filter(|(serial, _, _)| !tombstones.contains(serial))
            .map(|(serial, stored, _)| (serial, stored))
            .collect())
    }

    /// The newest revision of `oid` with serial at or below `upto`, and the serial of the
    /// revision after it: what a load needs. Without filters (pack, truncate, drop) and
    /// pack tombstones for the object, each layer is searched for just those two entries,
    /// so a load costs O(log n) however many revisions the object has; otherwise the whole
    /// history is built by `revisions`.
    pub fn revision_at(&self, oid: Oid, upto: Tid) -> Result<Around> {
        let layers = || self.frozen.map(|(d, _)| d).into_iter().chain(self.delta);
        let all = (oid, Tid(0))..=(oid, Tid(u64::MAX));
        let tombstones =
            layers().any(|layer| layer.pack_tombstones.range(all.clone()).next().is_some());
        if !self.filters.is_empty() || tombstones {
            let revisions = self.revisions(oid)?;
            let Some(index) = revisions.iter().rposition(|&(serial, _)| serial <= upto) else {
                return Ok(if revisions.is_empty() { Around::Nothing } else { Around::NotFound });
            };
            let (serial, stored) = revisions[index];
            let next = revisions.get(index + 1).map(|&(next, _)| next);
            return Ok(Around::Found { serial, stored, next });
        }
        let mut exists = false;
        // (serial, layer rank, stored): a revision in several layers (moved by compaction)
        // is taken from the newest layer.
        let mut best: Option<(Tid, u8, Stored)> = None;
        let mut next: Option<Tid> = None;
        let mut consider = |found: Option<(Tid, u8, Stored)>, after: Option<Tid>| {
            if let Some(found) = found
                && best.is_none_or(|b| (found.0, found.1) > (b.0, b.1))
            {
                best = Some(found);
            }
            if let Some(after) = after {
                next = Some(next.map_or(after, |n| n.min(after)));
            }
        };
        if let Some((base, _)) = self.base_for(oid.0) {
            let first = base.objects_from(oid, Tid(0))?;
            let beyond = match upto.0.checked_add(1) {
                Some(after) => base.objects_from(oid, Tid(after))?,
                None => match oid.0.checked_add(1) {
                    Some(following) => base.objects_from(Oid(following), Tid(0))?,
                    None => base.objects_len(),
                },
            };
            let entry = |index: usize| -> Result<Option<(Tid, Stored)>> {
                if index >= base.objects_len() {
                    return Ok(None);
                }
                let (entry_oid, serial, stored) = base.object(index)?;
                Ok((entry_oid == oid).then_some((serial, stored)))
            };
            exists |= entry(first)?.is_some();
            let found = if beyond > first { entry(beyond - 1)? } else { None };
            let after = entry(beyond)?.map(|(serial, _)| serial);
            consider(found.map(|(serial, stored)| (serial, 0, stored)), after);
        }
        for (rank, layer) in [(1u8, self.frozen.map(|(d, _)| d)), (2, self.delta)] {
            let Some(layer) = layer else { continue };
            exists |= layer.objects.range(all.clone()).next().is_some();
            let found = layer.objects.range((oid, Tid(0))..=(oid, upto)).next_back();
            let after = layer
                .objects
                .range((
                    std::ops::Bound::Excluded((oid, upto)),
                    std::ops::Bound::Included((oid, Tid(u64::MAX))),
                ))
                .next();
            consider(
                found.map(|(&(_, serial), &stored)| (serial, rank, stored)),
                after.map(|(&(_, serial), _)| serial),
            );
        }
        Ok(match best {
            Some((serial, _, stored)) => Around::Found { serial, stored, next },
            None if exists => Around::NotFound,
            None => Around::Nothing,
        })
    }

    /// The smallest oid at or after `from` that has a record in some layer (visible or not).
    pub fn next_oid(&self, from: Oid) -> Result<Option<Oid>> {
        let mut next = None;
        if let Some((base, _)) = self.base {
            let index = base.objects_from(from, Tid(0))?;
            if index < base.objects_len() {
                next = Some(base.object(index)?.0);
            }
        }
        for layer in self.frozen.map(|(d, _)| d).into_iter().chain(self.delta) {
            if let Some((&(oid, _), _)) = layer.objects.range((from, Tid(0))..).next() {
                next = Some(next.map_or(oid, |n: Oid| n.min(oid)));
            }
        }
        Ok(next)
    }

    /// Visits object records in (serial, oid) order from `from` to `to` (inclusive) until
    /// `visit` returns false.
    pub fn serial_records(
        &self,
        from: (Tid, Oid),
        to: (Tid, Oid),
        mut visit: impl FnMut(Tid, Oid) -> Result<bool>,
    ) -> Result<()> {
        if from > to {
            return Ok(());
        }
        let mut base_index = match self.base {
            Some((base, _)) => base.serials_from(from.0, from.1)?,
            None => 0,
        };
        let mut frozen = self.frozen.map(|(d, g)| (d.by_serial.range(from..=to).peekable(), g));
        let mut active = self.delta.map(|d| d.by_serial.range(from..=to).peekable());
        let has_packs = self.filters.iter().any(|(_, f)| matches!(f, Filter::Pack { .. }));
        loop {
            let base_next = match self.base {
                Some((base, generation)) if base_index < base.serials_len() => {
                    let key = base.serial(base_index)?;
                    (key <= to).then_some((key, generation))
                }
                _ => None,
            };
            let frozen_next = frozen.as_mut().and_then(|(it, g)| it.peek().map(|&&k| (k, *g)));
            let active_next = active.as_mut().and_then(|it| it.peek().map(|&&k| (k, ACTIVE)));
            let Some(key) =
                [base_next, frozen_next, active_next].into_iter().flatten().map(|(k, _)| k).min()
            else {
                return Ok(());
            };
            // A record in several layers (compaction moved its data) is visited once, as
            // its newest layer has it.
            let mut generation = 0;
            if let Some((_, g)) = base_next.filter(|&(k, _)| k == key) {
                base_index += 1;
                generation = generation.max(g);
            }
            if let Some((_, g)) = frozen_next.filter(|&(k, _)| k == key) {
                frozen.as_mut().expect("peeked").0.next();
                generation = generation.max(g);
            }
            if active_next.is_some_and(|(k, _)| k == key) {
                active.as_mut().expect("peeked").next();
                generation = ACTIVE;
            }
            let (serial, oid) = key;
            if self.hides_object(generation, oid, serial) {
                continue;
            }
            if has_packs && !self.revisions(oid)?.iter().any(|&(s, _)| s == serial) {
                continue;
            }
            if !visit(serial, oid)? {
                return Ok(());
            }
        }
    }

    /// Visits committed transactions with tid in `range`, ascending, until `visit` returns
    /// false.
    pub fn transactions(
        &self,
        from: Tid,
        to: Tid,
        mut visit: impl FnMut(Tid, TransactionEntry) -> Result<bool>,
    ) -> Result<()> {
        if from > to {
            return Ok(());
        }
        // One transaction: the file is not read if its partition was dropped since.
        let base = if from == to { self.base_for(from.0) } else { self.base };
        let mut base_index = match base {
            Some((base, _)) => base.transactions_from(from)?,
            None => 0,
        };
        let mut frozen = self.frozen.map(|(d, g)| (d.transactions.range(from..=to).peekable(), g));
        let mut active = self.delta.map(|d| d.transactions.range(from..=to).peekable());
        loop {
            let base_next = match base {
                Some((base, generation)) if base_index < base.transactions_len() => {
                    let (tid, entry) = base.transaction(base_index)?;
                    (tid <= to).then_some((tid, entry, generation))
                }
                _ => None,
            };
            let frozen_next =
                frozen.as_mut().and_then(|(it, g)| it.peek().map(|&(&t, &e)| (t, e, *g)));
            let active_next =
                active.as_mut().and_then(|it| it.peek().map(|&(&t, &e)| (t, e, ACTIVE)));
            let Some(tid) = [base_next, frozen_next, active_next]
                .into_iter()
                .flatten()
                .map(|(t, _, _)| t)
                .min()
            else {
                return Ok(());
            };
            // A transaction in several layers (compaction moved its vote): the newest wins.
            let mut newest = None;
            if let Some(found) = base_next.filter(|&(t, _, _)| t == tid) {
                base_index += 1;
                newest = Some(found);
            }
            if let Some(found) = frozen_next.filter(|&(t, _, _)| t == tid) {
                frozen.as_mut().expect("peeked").0.next();
                newest = Some(found);
            }
            if let Some(found) = active_next.filter(|&(t, _, _)| t == tid) {
                active.as_mut().expect("peeked").next();
                newest = Some(found);
            }
            let (_, entry, generation) = newest.expect("the minimum came from a layer");
            if self.hides_transaction(generation, tid) {
                continue;
            }
            if !visit(tid, self.packed(generation, tid, entry))? {
                return Ok(());
            }
        }
    }

    pub fn transaction(&self, tid: Tid) -> Result<Option<TransactionEntry>> {
        let mut found = None;
        self.transactions(tid, tid, |_, entry| {
            found = Some(entry);
            Ok(false)
        })?;
        Ok(found)
    }

    /// Visits every object with its visible revisions, in oid order.
    pub fn objects(
        &self,
        mut visit: impl FnMut(Oid, Vec<(Tid, Stored)>) -> Result<()>,
    ) -> Result<()> {
        let mut cursor = Some(Oid(0));
        while let Some(from) = cursor {
            let Some(oid) = self.next_oid(from)? else { break };
            let revisions = self.revisions(oid)?;
            if !revisions.is_empty() {
                visit(oid, revisions)?;
            }
            cursor = oid.0.checked_add(1).map(Oid);
        }
        Ok(())
    }
}

/// The whole index of one core.
#[derive(Debug, Default)]
pub struct State {
    pub base: Option<Arc<IndexFile>>,
    pub base_generation: u64,
    pub frozen: Option<(Arc<Delta>, u64)>,
    pub delta: Delta,
    pub filters: Vec<(u64, Filter)>,
    pub next_sequence: u64,
    pub pending: HashMap<Tid, Pending>,
    pub metadata: Metadata,
    /// Highest oid ever committed here (kept across packs and drops: oids are not reused).
    pub last_oid: Option<Oid>,
    /// Highest and lowest committed tids (lowered by truncate).
    pub last_tid: Option<Tid>,
    pub first_tid: Option<Tid>,
    /// Highest pack tid: truncating below it is refused (packed history cannot come back).
    pub pack_tid: Option<Tid>,
}

fn defect(reason: &'static str) -> RecordDefect {
    RecordDefect::BadBody(reason.to_owned())
}

fn index_defect(error: StoreError) -> RecordDefect {
    RecordDefect::BadBody(format!("index: {error}"))
}

impl State {
    pub fn view(&self) -> View<'_> {
        View {
            base: visible_base(
                self.base.as_deref().map(|b| (b, self.base_generation)),
                &self.filters,
            ),
            frozen: self.frozen.as_ref().map(|(d, g)| (&**d, *g)),
            delta: Some(&self.delta),
            filters: &self.filters,
        }
    }

    fn add_filter(&mut self, filter: Filter) {
        self.next_sequence += 1;
        if self.base.is_some() || self.frozen.is_some() {
            self.filters.push((self.next_sequence, filter));
        }
    }

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
                    Value::Undo { data_serial } => {
                        let revisions = self.view().revisions(body.oid).map_err(index_defect)?;
                        let target = revisions.iter().find(|(serial, _)| *serial == data_serial);
                        Stored::Undo {
                            data_serial,
                            data: target.and_then(|(_, stored)| stored.data()),
                        }
                    }
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
                if self.pending.get(&body.ttid).is_some_and(|p| p.lock.is_some()) {
                    return Err(defect("abort of a locked transaction"));
                }
                self.pending.remove(&body.ttid);
            }
            RecordKind::Metadata => self.metadata = record.decode()?,
            RecordKind::Truncate => {
                let body: TruncateBody = record.decode()?;
                self.delta.truncate(body.tid);
                self.add_filter(Filter::Truncate(body.tid));
                self.last_tid = self.last_tid.min(Some(body.tid));
                if self.first_tid.is_some_and(|first| first > body.tid) {
                    self.first_tid = None;
                }
            }
            RecordKind::Pack => {
                let body: PackBody = record.decode()?;
                let oids =
                    body.oids.map(|oids| Arc::new(oids.into_iter().collect::<BTreeSet<Oid>>()));
                self.pack_delta(body.pack_tid, oids.as_deref())?;
                self.add_filter(Filter::Pack { pack_tid: body.pack_tid, oids });
                self.pack_tid = self.pack_tid.max(Some(body.pack_tid));
            }
            RecordKind::Relocate => {
                let body: RelocateBody = record.decode()?;
                let old = LogPosition(body.old_position);
                let moved = DataRef {
                    position: record.position.advance(RECORD_HEADER_SIZE + RELOCATE_DATA_OFFSET),
                    size: body.data.0.len() as u32,
                    compression: body.compression,
                    data_crc: body.data_crc,
                };
                let revisions = self.view().revisions(body.oid).map_err(index_defect)?;
                for (serial, stored) in revisions {
                    if stored.data().is_some_and(|data| data.position == old) {
                        // In the active delta it shadows the entry of an older layer.
                        self.delta.objects.insert((body.oid, serial), stored.with_data(moved));
                        self.delta.by_serial.insert((serial, body.oid));
                    }
                }
                for pending in self.pending.values_mut() {
                    let stored = pending.stores.get_mut(&body.oid);
                    if let Some(stored) =
                        stored.filter(|s| s.data().is_some_and(|d| d.position == old))
                    {
                        *stored = stored.with_data(moved);
                    }
                }
            }
            RecordKind::RelocateVote => {
                let body: RelocateVoteBody = record.decode()?;
                if let Some(entry) = self.view().transaction(body.tid).map_err(index_defect)? {
                    let moved = TransactionEntry { vote: record.position, ..entry };
                    self.delta.transactions.insert(body.tid, moved);
                }
            }
            RecordKind::ReserveOids => {
                let body: ReserveOidsBody = record.decode()?;
                self.last_oid = self.last_oid.max(Some(body.oid));
            }
            RecordKind::ReplicateTransaction => {
                let body: ReplicateTransactionBody = record.decode()?;
                if body.vote.meta.is_none() {
                    return Err(defect("replicated transaction without metadata"));
                }
                let entry = TransactionEntry {
                    ttid: body.vote.ttid,
                    vote: record.position,
                    packed: body.packed,
                };
                self.delta.transactions.insert(body.tid, entry);
                self.committed_tid(body.tid);
            }
            RecordKind::ReplicateObject => {
                let body: ReplicateObjectBody = record.decode()?;
                let data = (!body.data.0.is_empty()).then(|| DataRef {
                    position: record.position.advance(RECORD_HEADER_SIZE + REPLICATE_DATA_OFFSET),
                    size: body.data.0.len() as u32,
                    compression: body.compression,
                    data_crc: body.data_crc,
                });
                let stored = match (data, body.data_serial) {
                    (Some(data), None) => Stored::Data(data),
                    (Some(data), Some(data_serial)) => {
                        Stored::Undo { data_serial, data: Some(data) }
                    }
                    (None, None) => Stored::Delete,
                    (None, Some(data_serial)) => {
                        let revisions = self.view().revisions(body.oid).map_err(index_defect)?;
                        let target = revisions.iter().find(|(serial, _)| *serial == data_serial);
                        Stored::Undo { data_serial, data: target.and_then(|(_, s)| s.data()) }
                    }
                };
                self.delta.objects.insert((body.oid, body.serial), stored);
                self.delta.by_serial.insert((body.serial, body.oid));
                self.last_oid = self.last_oid.max(Some(body.oid));
                self.committed_tid(body.serial);
            }
            RecordKind::DeleteReplicated => {
                let body: DeleteReplicatedBody = record.decode()?;
                let tids: BTreeSet<Tid> = body.tids.into_iter().collect();
                let objects: BTreeSet<(Oid, Tid)> = body
                    .objects
                    .iter()
                    .flat_map(|group| group.oids.iter().map(|&oid| (oid, group.serial)))
                    .collect();
                for tid in &tids {
                    self.delta.transactions.remove(tid);
                }
                for &(oid, serial) in &objects {
                    self.delta.objects.remove(&(oid, serial));
                    self.delta.by_serial.remove(&(serial, oid));
                }
                self.add_filter(Filter::Deleted {
                    tids: Arc::new(tids),
                    objects: Arc::new(objects),
                });
            }
            RecordKind::DropPartition => {
                let body: DropPartitionBody = record.decode()?;
                self.delta.drop_partition(body.partition, body.partitions);
                self.add_filter(Filter::DropPartition {
                    partition: body.partition,
                    partitions: body.partitions,
                });
            }
        }
        Ok(())
    }

    fn commit(&mut self, ttid: Tid, tid: Tid, pending: Pending) {
        for (oid, stored) in pending.stores {
            self.delta.objects.insert((oid, tid), stored);
            self.delta.by_serial.insert((tid, oid));
            self.last_oid = self.last_oid.max(Some(oid));
        }
        if pending.has_meta {
            let vote = pending.vote.expect("committed transactions voted");
            self.delta.transactions.insert(tid, TransactionEntry { ttid, vote, packed: false });
        }
        self.committed_tid(tid);
    }

    /// A committed tid now held here: the newest and oldest follow it.
    fn committed_tid(&mut self, tid: Tid) {
        self.last_tid = self.last_tid.max(Some(tid));
        self.first_tid = Some(self.first_tid.map_or(tid, |first| first.min(tid)));
    }

    /// Pack of the active delta: for each object with revisions in it, drops the delta's
    /// revisions older than the object's newest revision at or before `pack_tid` over all
    /// layers, and that one too if it is a deletion in the delta. Older layers are handled
    /// by the filter, evaluated over all layers too.
    fn pack_delta(
        &mut self,
        pack_tid: Tid,
        oids: Option<&BTreeSet<Oid>>,
    ) -> Result<(), RecordDefect> {
        let older_layers = self.base.is_some() || self.frozen.is_some();
        let candidates: Vec<Oid> = match oids {
            Some(oids) => oids.iter().copied().collect(),
            None => {
                let mut all: Vec<Oid> = self.delta.objects.keys().map(|&(oid, _)| oid).collect();
                all.dedup();
                all
            }
        };
        for oid in candidates {
            let revisions = self.view().revisions(oid).map_err(index_defect)?;
            let Some(&(newest, stored)) =
                revisions.iter().rev().find(|(serial, _)| *serial <= pack_tid)
            else {
                continue;
            };
            let mut doomed: Vec<Tid> = self
                .delta
                .objects
                .range((oid, Tid(0))..(oid, newest))
                .map(|(&(_, serial), _)| serial)
                .collect();
            if stored == Stored::Delete && self.delta.objects.contains_key(&(oid, newest)) {
                doomed.push(newest);
                if older_layers {
                    self.delta.pack_tombstones.insert((oid, newest));
                }
            }
            for serial in doomed {
                self.delta.objects.remove(&(oid, serial));
                self.delta.by_serial.remove(&(serial, oid));
            }
        }
        if oids.is_none() {
            for entry in self.delta.transactions.range_mut(..=pack_tid).map(|(_, e)| e) {
                entry.packed = true;
            }
        }
        Ok(())
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
}
