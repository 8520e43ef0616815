//! The primary master's transactions: ttids at begin, oids, final tids at finish, and the
//! order in which committed transactions become visible. Plain state: the driver feeds it
//! events (with the time and the storages involved, which it reads from the cluster) and
//! carries out what it returns.
//!
//! Rules:
//! - Every tid handed out (ttid or final tid) is a ZODB timestamp greater than every tid
//!   handed out or committed before, so that tids are strictly increasing whatever the
//!   clock does.
//! - No oid is handed out twice, across primaries too: none is handed out above the oid the
//!   storages keep reserved (`NewOids::Reserve` asks the driver to reserve more first), and
//!   a new primary starts above the highest oid any storage reports (stored or reserved).
//! - A final tid lies in its ttid's partition (`tid % np == ttid % np`): the storages file
//!   the transaction's metadata under the ttid's partition.
//! - Transactions become visible in final-tid order: a transaction whose storages have all
//!   locked it waits for every earlier finishing transaction, so that the invalidations
//!   every client receives, and the unlocks every storage receives, follow commit order.
//! - A transaction whose lock was asked is never aborted: the lock is the durable commit
//!   point on the storages, whatever happens to the client.
//! - A client hears "committed" only when, for every partition the transaction wrote (its
//!   objects' and its metadata's), a cell that is readable in the table *now* has durably
//!   locked it. A transaction whose storages all answered (or were lost) without that is
//!   *stalled*: it is not published, and everything after it waits; only a lost readable
//!   copy leads there, so the cluster is out of operation, and the next verification
//!   commits it everywhere from the storages that locked it (its client asks for the
//!   outcome once the cluster runs again).

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use wire::messages::PackRequest;
use wire::{ErrorCode, NodeId, Oid, PartitionId, Tid};

use crate::cluster::{Refusal, refuse};

/// A finishing transaction.
#[derive(Clone, Debug, PartialEq)]
pub struct Finishing {
    pub ttid: Tid,
    pub tid: Tid,
    pub client: NodeId,
    /// The client's `AskFinishTransaction`, to answer.
    pub msg_id: u32,
    pub oids: Vec<Oid>,
    /// The storages asked to lock, which are told to unlock.
    pub storages: BTreeSet<NodeId>,
    /// The partitions it writes (its objects', deleted objects' and its metadata's): each
    /// needs a readable cell that locked it before the client hears "committed".
    pub written: BTreeSet<PartitionId>,
    /// The pack the transaction requests (an order once it commits).
    pub pack: Option<PackRequest>,
}

#[derive(Clone, Debug)]
enum Stage {
    Begun,
    /// Locks asked of `awaiting` (of `finishing.storages`); `locked` answered.
    Locking {
        finishing: Finishing,
        awaiting: BTreeSet<NodeId>,
        locked: BTreeSet<NodeId>,
        /// Reported stalled already (see the rules).
        stalled: bool,
    },
}

#[derive(Clone, Debug)]
struct Transaction {
    client: NodeId,
    stage: Stage,
    /// Storages the client could not store or vote on (`FailedVote`): not asked to lock.
    failed: BTreeSet<NodeId>,
    /// Begun with a tid of the client's (an import): it commits under that tid.
    given: bool,
}

/// What the driver does after a lock answer or a lost storage.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    /// Committed, in commit order: answer the client, invalidate the others, unlock.
    pub committed: Vec<Finishing>,
    /// Every storage asked has answered or is gone, but some partition it wrote has no
    /// readable cell that locked it: not published (see the module's rules). Reported
    /// once per transaction.
    pub stalled: Vec<Tid>,
}

/// A client's `AskFinishTransaction`, with what the driver read from the table.
#[derive(Clone, Debug, PartialEq)]
pub struct FinishRequest {
    pub client: NodeId,
    /// To answer.
    pub msg_id: u32,
    pub ttid: Tid,
    pub oids: Vec<Oid>,
    /// The storages in service with a cell of a partition involved: asked to lock.
    pub storages: BTreeSet<NodeId>,
    /// The partitions written (see `Finishing::written`).
    pub written: BTreeSet<PartitionId>,
    /// The table's partition count (the final tid stays in the ttid's partition).
    pub partitions: u32,
    pub pack: Option<PackRequest>,
}

/// Whether storage `nid` holds a readable cell of `partition` in the current table.
pub type Readable<'a> = &'a dyn Fn(PartitionId, NodeId) -> bool;

/// What `new_oids` decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NewOids {
    /// The first of the oids asked for.
    Given(Oid),
    /// Not before the storages keep oids up to this one reserved (`oids_reserved`).
    Reserve(Oid),
}

/// How many oids a reservation covers beyond what was asked: one durable write on every
/// storage per this many oids.
pub const OID_RESERVATION: u64 = 1 << 16;

/// A reservation of oids being made durable on the storages in service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    pub up_to: Oid,
    awaiting: BTreeSet<NodeId>,
}

impl Reservation {
    /// Asked of `storages` (never none: a running cluster has storages in service).
    pub fn new(up_to: Oid, storages: BTreeSet<NodeId>) -> Reservation {
        assert!(!storages.is_empty(), "a reservation is kept by some storage");
        Reservation { up_to, awaiting: storages }
    }

    /// A storage answered (or is gone, and no longer counts): whether it is done. Done
    /// with every storage in service answering, a later verification, which hears every
    /// storage holding readable cells, finds the reservation on one of them.
    pub fn answered(&mut self, storage: NodeId) -> bool {
        self.awaiting.remove(&storage);
        self.awaiting.is_empty()
    }
}

#[derive(Clone, Debug, Default)]
pub struct Transactions {
    /// The newest tid handed out or committed.
    last_tid: Option<Tid>,
    last_oid: Option<Oid>,
    /// The highest oid the storages keep reserved: none above is handed out.
    reserved: Option<Oid>,
    /// The newest committed (visible) tid.
    committed: Option<Tid>,
    transactions: BTreeMap<Tid, Transaction>,
    /// Finishing transactions by final tid.
    order: BTreeMap<Tid, Tid>,
    /// Final tids of transactions the previous primary left locked (verification).
    recovered: BTreeMap<Tid, Tid>,
}

/// How far ahead of the master's clock a tid given at begin (an import) may be.
const GIVEN_TID_AHEAD_MAX: std::time::Duration = std::time::Duration::from_secs(3600);

impl Transactions {
    /// Starts from the newest ids the storages reported (verification): `last_oid` is the
    /// highest oid any of them stored or keeps reserved.
    pub fn new(last_tid: Option<Tid>, last_oid: Option<Oid>) -> Transactions {
        Transactions {
            last_tid,
            last_oid,
            reserved: last_oid,
            committed: last_tid,
            ..Transactions::default()
        }
    }

    /// The newest committed tid and the newest oid handed out (`neo ctl print ids`).
    pub fn last_ids(&self) -> crate::cluster::LastIds {
        crate::cluster::LastIds { last_tid: self.committed, last_oid: self.last_oid }
    }

    /// The newest committed tid (`lastTransaction`).
    pub fn last_transaction(&self) -> Option<Tid> {
        self.committed
    }

    fn next_tid(&mut self, now: SystemTime) -> Tid {
        let tid = Tid::from_system_time(now);
        let tid = match self.last_tid {
            Some(last) => tid.later_than(last),
            None => tid,
        };
        self.last_tid = Some(tid);
        tid
    }

    /// `tpc_begin`: a new ttid, or `given` for an import (which must be newer than every
    /// tid so far).
    pub fn begin(
        &mut self,
        client: NodeId,
        given: Option<Tid>,
        now: SystemTime,
    ) -> Result<Tid, Refusal> {
        let ttid = match given {
            Some(tid) if self.last_tid.is_some_and(|last| tid <= last) => {
                return Err(refuse(
                    ErrorCode::ProtocolError,
                    format!(
                        "tid {tid} is not after the last tid {}",
                        self.last_tid.expect("checked")
                    ),
                ));
            }
            // An import copies past tids; one from the future would move every later tid
            // there (and Tid::MAX would leave no tid after it).
            Some(tid) if tid > Tid::from_system_time(now + GIVEN_TID_AHEAD_MAX) => {
                return Err(refuse(
                    ErrorCode::ProtocolError,
                    format!("tid {tid} is in the future"),
                ));
            }
            Some(tid) => {
                self.last_tid = Some(tid);
                tid
            }
            None => self.next_tid(now),
        };
        self.transactions.insert(
            ttid,
            Transaction {
                client,
                stage: Stage::Begun,
                failed: BTreeSet::new(),
                given: given.is_some(),
            },
        );
        Ok(ttid)
    }

    /// `count` new oids: the first of a contiguous batch, once the storages keep them
    /// reserved. Oid 0 is never handed out: it is ZODB's root object, which a database
    /// creates without asking for an oid.
    pub fn new_oids(&mut self, count: u32) -> Result<NewOids, Refusal> {
        let first = self.last_oid.map_or(1, |o| o.0 + 1);
        let last = first.checked_add(u64::from(count.max(1)) - 1).filter(|&l| l < u64::MAX);
        let Some(last) = last else {
            return Err(refuse(ErrorCode::ProtocolError, "the oid space is exhausted"));
        };
        if count == 0 {
            return Ok(NewOids::Given(Oid(first)));
        }
        if self.reserved < Some(Oid(last)) {
            let up_to = last.saturating_add(OID_RESERVATION).min(u64::MAX - 1);
            return Ok(NewOids::Reserve(Oid(up_to)));
        }
        self.last_oid = Some(Oid(last));
        Ok(NewOids::Given(Oid(first)))
    }

    /// The storages keep oids up to `oid` reserved.
    pub fn oids_reserved(&mut self, oid: Oid) {
        self.reserved = self.reserved.max(Some(oid));
    }

    /// The highest oid the storages keep reserved (a storage going into service is told).
    pub fn reserved_oid(&self) -> Option<Oid> {
        self.reserved
    }

    /// `tpc_finish`: picks the final tid and returns it with the storages to ask for locks.
    /// Refused when some partition written has no readable cell among the storages to ask
    /// (the client could never hear "committed").
    pub fn finish(
        &mut self,
        request: FinishRequest,
        readable: Readable<'_>,
        now: SystemTime,
    ) -> Result<Finishing, Refusal> {
        let FinishRequest { client, msg_id, ttid, oids, storages, written, partitions, pack } =
            request;
        match self.transactions.get(&ttid) {
            Some(t) if t.client == client && matches!(t.stage, Stage::Begun) => {}
            Some(t) if t.client == client => {
                return Err(refuse(ErrorCode::ProtocolError, format!("{ttid} is finishing")));
            }
            _ => {
                return Err(refuse(
                    ErrorCode::TidNotFound,
                    format!("no transaction {ttid} of this client"),
                ));
            }
        }
        let failed = &self.transactions[&ttid].failed;
        let storages: BTreeSet<NodeId> = storages.difference(failed).copied().collect();
        if storages.is_empty() {
            return Err(refuse(
                ErrorCode::IncompleteTransaction,
                format!("no storage holds the partitions of transaction {ttid}"),
            ));
        }
        if let Some(partition) =
            written.iter().find(|&&p| !storages.iter().any(|&nid| readable(p, nid)))
        {
            return Err(refuse(
                ErrorCode::IncompleteTransaction,
                format!(
                    "partition {} of transaction {ttid} has no readable cell left to commit it",
                    partition.0
                ),
            ));
        }
        // An import commits under the tid it gave at begin, as long as no other transaction
        // took a tid since (commit order must stay tid order); else under a new one.
        let tid = if self.transactions[&ttid].given && self.last_tid == Some(ttid) {
            ttid
        } else {
            let mut tid = self.next_tid(now);
            if partitions > 0 {
                let wanted = PartitionId::of(ttid.0, partitions);
                while PartitionId::of(tid.0, partitions) != wanted {
                    tid = tid.next();
                }
                self.last_tid = Some(tid);
            }
            tid
        };
        let finishing = Finishing { ttid, tid, client, msg_id, oids, storages, written, pack };
        self.start_locking(finishing.clone());
        Ok(finishing)
    }

    fn start_locking(&mut self, finishing: Finishing) {
        assert!(finishing.tid >= finishing.ttid, "a final tid never precedes its ttid");
        assert!(!finishing.storages.is_empty(), "a finish asks some storage to lock");
        let transaction = self.transactions.get_mut(&finishing.ttid).expect("checked by finish");
        self.order.insert(finishing.tid, finishing.ttid);
        transaction.stage = Stage::Locking {
            awaiting: finishing.storages.clone(),
            finishing,
            locked: BTreeSet::new(),
            stalled: false,
        };
    }

    /// The client could not store or vote on `storages` (their cells are outdated by the
    /// driver): they are not asked to lock.
    pub fn failed(
        &mut self,
        client: NodeId,
        ttid: Tid,
        storages: &[NodeId],
    ) -> Result<(), Refusal> {
        match self.transactions.get_mut(&ttid) {
            Some(t) if t.client == client && matches!(t.stage, Stage::Begun) => {
                t.failed.extend(storages.iter().copied());
                Ok(())
            }
            _ => Err(refuse(ErrorCode::TidNotFound, format!("no open transaction {ttid}"))),
        }
    }

    /// A storage could not lock a transaction (it never got its data): like a storage lost,
    /// for this transaction only.
    pub fn lock_failed(&mut self, storage: NodeId, ttid: Tid, readable: Readable<'_>) -> Outcome {
        if let Some(Transaction { stage: Stage::Locking { awaiting, finishing, .. }, .. }) =
            self.transactions.get_mut(&ttid)
        {
            awaiting.remove(&storage);
            finishing.storages.remove(&storage);
        }
        self.publish(readable)
    }

    /// A storage answered a lock: the transaction is durably locked there.
    pub fn locked(&mut self, storage: NodeId, ttid: Tid, readable: Readable<'_>) -> Outcome {
        if let Some(Transaction { stage: Stage::Locking { awaiting, locked, .. }, .. }) =
            self.transactions.get_mut(&ttid)
            && awaiting.remove(&storage)
        {
            locked.insert(storage);
        }
        self.publish(readable)
    }

    /// Pops the finishing transactions, oldest first, while every storage asked has
    /// answered and each partition written has a readable cell that locked them.
    fn publish(&mut self, readable: Readable<'_>) -> Outcome {
        let mut outcome = Outcome::default();
        while let Some((&tid, &ttid)) = self.order.first_key_value() {
            let Some(Transaction {
                stage: Stage::Locking { awaiting, finishing, locked, stalled },
                ..
            }) = self.transactions.get_mut(&ttid)
            else {
                unreachable!("every ordered transaction is locking")
            };
            if !awaiting.is_empty() {
                break;
            }
            let covered = finishing
                .written
                .iter()
                .all(|&partition| locked.iter().any(|&nid| readable(partition, nid)));
            if !covered {
                if !std::mem::replace(stalled, true) {
                    outcome.stalled.push(ttid);
                }
                break;
            }
            self.order.remove(&tid);
            let Some(Transaction { stage: Stage::Locking { finishing, .. }, .. }) =
                self.transactions.remove(&ttid)
            else {
                unreachable!("checked above")
            };
            assert!(self.committed < Some(tid), "commits are published in tid order");
            self.committed = Some(tid);
            outcome.committed.push(finishing);
        }
        outcome
    }

    /// A storage is gone: finishing transactions stop waiting for it. What it locked is
    /// durable there; whether that still counts depends on its cells staying readable (a
    /// lost storage's cells are outdated, unless one is a partition's last readable copy).
    pub fn storage_lost(&mut self, storage: NodeId, readable: Readable<'_>) -> Outcome {
        for transaction in self.transactions.values_mut() {
            if let Stage::Locking { awaiting, finishing, .. } = &mut transaction.stage {
                awaiting.remove(&storage);
                finishing.storages.remove(&storage);
            }
        }
        self.publish(readable)
    }

    /// The partitions table changed (cells outdated, a tweak): a transaction whose
    /// storages all answered may be published, or stall, now.
    pub fn table_changed(&mut self, readable: Readable<'_>) -> Outcome {
        self.publish(readable)
    }

    /// A client is gone: its transactions not yet finishing are aborted (returned, for the
    /// storages to drop); finishing ones still commit.
    pub fn client_lost(&mut self, client: NodeId) -> Vec<Tid> {
        let aborted: Vec<Tid> = self
            .transactions
            .iter()
            .filter(|(_, t)| t.client == client && matches!(t.stage, Stage::Begun))
            .map(|(&ttid, _)| ttid)
            .collect();
        for ttid in &aborted {
            self.transactions.remove(ttid);
        }
        aborted
    }

    /// `tpc_abort` from the client. A finishing transaction cannot be aborted.
    /// `client` aborts `ttid`: true when it was begun and is now gone (the storages are to
    /// drop it), false when it is unknown (already aborted: nothing to relay). Another
    /// client's transaction, or one finishing, is refused.
    pub fn abort(&mut self, client: NodeId, ttid: Tid) -> Result<bool, Refusal> {
        match self.transactions.get(&ttid) {
            Some(t) if t.client == client && matches!(t.stage, Stage::Begun) => {
                self.transactions.remove(&ttid);
                Ok(true)
            }
            Some(t) if t.client == client => Err(refuse(
                ErrorCode::ProtocolError,
                format!("{ttid} is finishing: it is committed"),
            )),
            Some(t) => Err(refuse(
                ErrorCode::Denied,
                format!("{ttid} is {}'s transaction, not {client}'s", t.client),
            )),
            // Unknown: already aborted (the client's connection was lost meanwhile).
            None => Ok(false),
        }
    }

    /// Remembers the final tids of transactions verification committed, for clients that
    /// lost the previous primary while finishing them (`AskFinalTid`).
    pub fn with_recovered(mut self, recovered: BTreeMap<Tid, Tid>) -> Transactions {
        self.recovered = recovered;
        self
    }

    /// The final tid of a transaction still finishing, or committed by verification.
    pub fn final_tid(&self, ttid: Tid) -> Option<Tid> {
        match self.transactions.get(&ttid) {
            Some(Transaction { stage: Stage::Locking { finishing, .. }, .. }) => {
                Some(finishing.tid)
            }
            _ => self.recovered.get(&ttid).copied(),
        }
    }

    /// Every transaction begun and not yet published or aborted (a replicating storage
    /// waits until those in flight when it started are over).
    pub fn in_flight(&self) -> Vec<Tid> {
        self.transactions.keys().copied().collect()
    }

    /// Whether `ttid` is finishing: its locks are asked, it is not published yet.
    pub fn is_finishing(&self, ttid: Tid) -> bool {
        matches!(
            self.transactions.get(&ttid),
            Some(Transaction { stage: Stage::Locking { .. }, .. })
        )
    }

    /// Whether `ttid` is begun and not finished, aborted or lost.
    pub fn is_open(&self, ttid: Tid) -> bool {
        self.transactions.contains_key(&ttid)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use wire::NodeType;

    use super::*;

    fn client(n: u32) -> NodeId {
        NodeId::new(NodeType::Client, n)
    }

    fn storage(n: u32) -> NodeId {
        NodeId::new(NodeType::Storage, n)
    }

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + seconds)
    }

    fn storages(ids: &[u32]) -> BTreeSet<NodeId> {
        ids.iter().map(|&n| storage(n)).collect()
    }

    /// Every storage holds a readable cell of every partition.
    fn everywhere(_: PartitionId, _: NodeId) -> bool {
        true
    }

    /// A finish of `ttid` by client `c`, writing partition 0, locking `on`.
    fn request(c: u32, msg_id: u32, ttid: Tid, on: &[u32], partitions: u32) -> FinishRequest {
        FinishRequest {
            client: client(c),
            msg_id,
            ttid,
            oids: vec![Oid(1)],
            storages: storages(on),
            written: [PartitionId(0)].into(),
            partitions,
            pack: None,
        }
    }

    fn committed(outcome: Outcome) -> Vec<Tid> {
        outcome.committed.iter().map(|f| f.ttid).collect()
    }

    #[test]
    fn tids_increase_even_when_the_clock_steps_back() {
        let mut t = Transactions::new(None, None);
        let first = t.begin(client(1), None, at(100)).unwrap();
        let second = t.begin(client(1), None, at(50)).unwrap();
        assert!(second > first);
        let finished = t.finish(request(1, 0, first, &[1], 7), &everywhere, at(10)).unwrap();
        assert!(finished.tid > second);
        assert_eq!(PartitionId::of(finished.tid.0, 7), PartitionId::of(first.0, 7));
        let imported = t.begin(client(1), Some(Tid(finished.tid.0 + 100)), at(0)).unwrap();
        assert_eq!(imported, Tid(finished.tid.0 + 100));
        let stale = t.begin(client(1), Some(first), at(0)).unwrap_err();
        assert!(stale.message.contains("not after"), "{stale}");
        let future = t.begin(client(1), Some(Tid::MAX), at(0)).unwrap_err();
        assert!(future.message.contains("in the future"), "{future}");
        assert!(t.begin(client(1), None, at(0)).unwrap() > imported, "still allocating");
    }

    #[test]
    fn an_import_commits_under_its_given_tid_unless_overtaken() {
        let mut t = Transactions::new(None, None);
        let given = t.begin(client(1), Some(Tid(1)), at(100)).unwrap();
        let done = t.finish(request(1, 0, given, &[1], 7), &everywhere, at(100));
        assert_eq!(done.unwrap().tid, Tid(1), "the tid it gave");
        let given = t.begin(client(1), Some(Tid(2)), at(100)).unwrap();
        // Another transaction takes a tid meanwhile: the import gets a later one, so that
        // commit order stays tid order.
        let other = t.begin(client(2), None, at(100)).unwrap();
        let done = t.finish(request(1, 0, given, &[1], 7), &everywhere, at(100));
        let tid = done.unwrap().tid;
        assert!(tid > other, "{tid} after {other}");
        assert_eq!(PartitionId::of(tid.0, 7), PartitionId::of(given.0, 7));
    }

    #[test]
    fn oids_come_in_contiguous_batches_after_the_recovered_ones() {
        let mut t = Transactions::new(None, Some(Oid(41)));
        // Nothing above what the storages reported is reserved yet.
        let NewOids::Reserve(up_to) = t.new_oids(10).unwrap() else { panic!("reserve first") };
        assert_eq!(up_to, Oid(51 + OID_RESERVATION));
        assert_eq!(t.new_oids(10).unwrap(), NewOids::Reserve(up_to), "still not reserved");
        t.oids_reserved(up_to);
        assert_eq!(t.new_oids(10).unwrap(), NewOids::Given(Oid(42)));
        assert_eq!(t.new_oids(1).unwrap(), NewOids::Given(Oid(52)));
        // A new primary starts above the reservation the storages report, whatever of it
        // the previous one handed out.
        let mut next = Transactions::new(None, t.reserved_oid());
        next.oids_reserved(Oid(up_to.0 + 100));
        assert_eq!(next.new_oids(1).unwrap(), NewOids::Given(Oid(up_to.0 + 1)));
        let mut fresh = Transactions::new(None, None);
        fresh.oids_reserved(Oid(10));
        assert_eq!(fresh.new_oids(2).unwrap(), NewOids::Given(Oid(1)), "oid 0 is the root's");
        assert_eq!(fresh.new_oids(20).unwrap(), NewOids::Reserve(Oid(22 + OID_RESERVATION)));
        let mut full = Transactions::new(None, Some(Oid(u64::MAX - 2)));
        assert!(full.new_oids(5).is_err());
    }

    #[test]
    fn a_reservation_is_done_once_every_storage_answered_or_left() {
        let mut reservation = Reservation::new(Oid(100), storages(&[1, 2, 3]));
        assert!(!reservation.answered(storage(1)));
        assert!(!reservation.answered(storage(1)), "twice counts once");
        assert!(!reservation.answered(storage(3)));
        assert!(reservation.answered(storage(2)));
    }

    #[test]
    fn commits_become_visible_in_tid_order() {
        let mut t = Transactions::new(None, None);
        let a = t.begin(client(1), None, at(1)).unwrap();
        let b = t.begin(client(2), None, at(2)).unwrap();
        let fa = t.finish(request(1, 7, a, &[1, 2], 1), &everywhere, at(3)).unwrap();
        let fb = t.finish(request(2, 8, b, &[1], 1), &everywhere, at(4)).unwrap();
        assert!(fb.tid > fa.tid);
        // b is locked everywhere first, but waits for a.
        assert!(t.locked(storage(1), b, &everywhere).committed.is_empty());
        assert!(t.locked(storage(1), a, &everywhere).committed.is_empty());
        assert_eq!(t.last_transaction(), None);
        let outcome = t.locked(storage(2), a, &everywhere);
        assert_eq!(outcome.committed[0].msg_id, 7);
        assert_eq!(committed(outcome), vec![a, b]);
        assert_eq!(t.last_transaction(), Some(fb.tid));
    }

    #[test]
    fn a_lost_storage_is_not_waited_for() {
        let mut t = Transactions::new(None, None);
        let a = t.begin(client(1), None, at(1)).unwrap();
        t.finish(request(1, 0, a, &[1, 2], 1), &everywhere, at(2)).unwrap();
        assert!(t.locked(storage(1), a, &everywhere).committed.is_empty());
        let committed = t.storage_lost(storage(2), &everywhere).committed;
        assert_eq!(committed.len(), 1);
        assert_eq!(committed[0].storages, storages(&[1]), "no unlock for the lost one");
    }

    #[test]
    fn failed_storages_are_not_asked_to_lock_and_a_refused_lock_is_not_waited_for() {
        let mut t = Transactions::new(None, None);
        let a = t.begin(client(1), None, at(1)).unwrap();
        t.failed(client(1), a, &[storage(2)]).unwrap();
        assert!(t.failed(client(2), a, &[storage(1)]).is_err(), "another client's");
        let finishing = t.finish(request(1, 0, a, &[1, 2, 3], 1), &everywhere, at(2)).unwrap();
        assert_eq!(finishing.storages, storages(&[1, 3]));
        assert!(t.locked(storage(1), a, &everywhere).committed.is_empty());
        let committed = t.lock_failed(storage(3), a, &everywhere).committed;
        assert_eq!(committed.len(), 1);
        assert_eq!(committed[0].storages, storages(&[1]));
    }

    /// The lost acknowledgement of the kill loop: partition 0's only readable cell is on
    /// S1, S2's is out of date. S2 locks, S1 dies before locking: nobody readable locked
    /// it, so the client hears nothing (it asks for the outcome once the cluster runs
    /// again), and the transactions after it wait.
    #[test]
    fn no_commit_is_acknowledged_without_a_readable_cell_that_locked_it() {
        let s1_readable = |_: PartitionId, nid: NodeId| nid == storage(1);
        let mut t = Transactions::new(None, None);
        let a = t.begin(client(1), None, at(1)).unwrap();
        let b = t.begin(client(2), None, at(2)).unwrap();
        t.finish(request(1, 0, a, &[1, 2], 1), &s1_readable, at(3)).unwrap();
        t.finish(request(2, 0, b, &[1, 2], 1), &s1_readable, at(4)).unwrap();
        assert!(t.locked(storage(2), a, &s1_readable).committed.is_empty());
        assert!(t.locked(storage(2), b, &s1_readable).committed.is_empty());
        assert!(t.locked(storage(1), b, &s1_readable).committed.is_empty(), "b waits for a");
        // S1 is lost; as the last readable copy its cell stays readable, but it never
        // locked a.
        let outcome = t.storage_lost(storage(1), &s1_readable);
        assert_eq!(outcome, Outcome { committed: vec![], stalled: vec![a] });
        assert_eq!(t.last_transaction(), None, "nothing published");
        assert_eq!(t.final_tid(a).map(|tid| tid > a), Some(true), "still finishing");
        // Reported once.
        assert_eq!(t.table_changed(&s1_readable), Outcome::default());
    }

    /// A storage that locked and was then outdated (it died after its lock) no longer
    /// counts: its copy is not one a client reads.
    #[test]
    fn a_lock_counts_only_while_its_cell_is_readable() {
        let mut readable_on = storages(&[1, 2]);
        let mut t = Transactions::new(None, None);
        let a = t.begin(client(1), None, at(1)).unwrap();
        let table = |on: &BTreeSet<NodeId>| {
            let on = on.clone();
            move |_: PartitionId, nid: NodeId| on.contains(&nid)
        };
        t.finish(request(1, 0, a, &[1, 2], 1), &table(&readable_on), at(2)).unwrap();
        assert!(t.locked(storage(1), a, &table(&readable_on)).committed.is_empty());
        readable_on.remove(&storage(1));
        assert!(t.storage_lost(storage(1), &table(&readable_on)).committed.is_empty());
        // S2 is lost too before locking: S2's cell stays readable (last copy).
        let outcome = t.storage_lost(storage(2), &table(&readable_on));
        assert_eq!(outcome.stalled, vec![a]);
        assert!(outcome.committed.is_empty());
    }

    #[test]
    fn a_finish_needs_a_readable_cell_of_every_partition_written() {
        let mut t = Transactions::new(None, None);
        let a = t.begin(client(1), None, at(1)).unwrap();
        let nowhere = |_: PartitionId, _: NodeId| false;
        let refused = t.finish(request(1, 0, a, &[1], 1), &nowhere, at(2)).unwrap_err();
        assert_eq!(refused.code, ErrorCode::IncompleteTransaction);
        assert!(refused.message.contains("no readable cell"), "{refused}");
        assert!(t.is_open(a), "still open: the client may abort it");
    }

    #[test]
    fn a_lost_client_aborts_only_what_is_not_finishing() {
        let mut t = Transactions::new(None, None);
        let open = t.begin(client(1), None, at(1)).unwrap();
        let finishing = t.begin(client(1), None, at(2)).unwrap();
        let other = t.begin(client(2), None, at(3)).unwrap();
        t.finish(request(1, 0, finishing, &[1], 1), &everywhere, at(4)).unwrap();
        assert_eq!(t.client_lost(client(1)), vec![open]);
        assert!(t.is_open(finishing) && t.is_open(other) && !t.is_open(open));
        assert!(t.abort(client(1), finishing).is_err(), "a finishing transaction commits");
        assert_eq!(t.locked(storage(1), finishing, &everywhere).committed.len(), 1);
    }

    #[test]
    fn finish_is_refused_for_unknown_or_foreign_transactions() {
        let mut t = Transactions::new(None, None);
        let a = t.begin(client(1), None, at(1)).unwrap();
        let foreign = t.finish(request(2, 0, a, &[1], 1), &everywhere, at(2)).unwrap_err();
        assert_eq!(foreign.code, ErrorCode::TidNotFound);
        let nowhere = t.finish(request(1, 0, a, &[], 1), &everywhere, at(2)).unwrap_err();
        assert_eq!(nowhere.code, ErrorCode::IncompleteTransaction);
        let refused = t.abort(client(2), a).unwrap_err();
        assert_eq!(refused.code, ErrorCode::Denied, "another client's transaction");
        assert!(t.abort(client(1), a).unwrap());
        assert!(!t.abort(client(1), a).unwrap(), "already aborted: nothing to relay");
        assert!(t.finish(request(1, 0, a, &[1], 1), &everywhere, at(2)).is_err());
    }
}
