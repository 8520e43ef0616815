//! A storage core's object locks: who may store which object, and when a load must wait.
//! Plain state (no I/O, no time), so the storage driver and a simulator share it.
//!
//! Rules:
//! - A store write-locks its object for its transaction (ttid) until the transaction is
//!   unlocked (committed and visible) or aborted. The base serial is checked once the lock
//!   is held: a store based on anything but the current committed serial is a conflict,
//!   answered with the current serial so that the client can resolve.
//! - Deadlock avoidance by age (wait-die): a store that meets a lock held by another
//!   transaction waits when it is the older one, or when the holder has voted (a voted
//!   transaction takes no more locks, so waiting on it cannot close a cycle); otherwise the
//!   younger requester gets a conflict at once and its client retries the transaction.
//!   NEO instead asks the younger holder to release and retake its locks (relock); wait-die
//!   needs no extra round trip and cannot hang, at the price of more retries under
//!   contention on the same objects.
//! - Between lock (final tid known) and unlock, a load that could see the new revision
//!   waits: the revision is committed but not visible yet, and serving the old one would
//!   let a client that was told of the commit read the past.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use wire::{Oid, Tid};

/// What a store (or a current-serial check) gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acquire {
    /// The lock is held and the base serial is current: store the data.
    Locked,
    /// The base serial is not the current one (or the requester lost by age): the current
    /// committed serial, for the client to resolve against.
    Conflict(Tid),
    /// Another transaction holds the lock: ask again once a lock is released.
    Wait,
}

#[derive(Clone, Debug, Default)]
struct Transaction {
    oids: BTreeSet<Oid>,
    voted: bool,
    /// The final tid, once locked.
    tid: Option<Tid>,
}

/// The locks of one storage core.
#[derive(Clone, Debug, Default)]
pub struct Locks {
    holders: HashMap<Oid, Tid>,
    transactions: BTreeMap<Tid, Transaction>,
}

impl Locks {
    /// Tries to lock `oid` for `ttid`, with the data based on `base` (`Tid::ZERO` for a new
    /// object); `current` is the object's newest committed serial (none if it does not
    /// exist).
    pub fn acquire(&mut self, ttid: Tid, oid: Oid, base: Tid, current: Option<Tid>) -> Acquire {
        match self.holders.get(&oid) {
            Some(&holder) if holder == ttid => {}
            Some(&holder) => {
                let holder_voted = self.transactions.get(&holder).is_some_and(|t| t.voted);
                if ttid < holder || holder_voted {
                    return Acquire::Wait;
                }
                return Acquire::Conflict(current.unwrap_or(Tid::ZERO));
            }
            None => {}
        }
        if current.unwrap_or(Tid::ZERO) != base {
            // Not locked: the client resolves and stores again, or aborts.
            return Acquire::Conflict(current.unwrap_or(Tid::ZERO));
        }
        self.holders.insert(oid, ttid);
        self.transactions.entry(ttid).or_default().oids.insert(oid);
        Acquire::Locked
    }

    /// The transaction voted: it takes no more locks.
    pub fn voted(&mut self, ttid: Tid) {
        self.transactions.entry(ttid).or_default().voted = true;
    }

    /// The transaction is locked under its final tid: its objects are committed, not yet
    /// visible.
    pub fn locked(&mut self, ttid: Tid, tid: Tid) {
        let transaction = self.transactions.entry(ttid).or_default();
        transaction.voted = true;
        transaction.tid = Some(tid);
    }

    /// Releases every lock of `ttid` (unlocked or aborted). Returns whether it held any
    /// state: waiters should then try again.
    pub fn release(&mut self, ttid: Tid) -> bool {
        let Some(transaction) = self.transactions.remove(&ttid) else { return false };
        for oid in transaction.oids {
            if self.holders.get(&oid) == Some(&ttid) {
                self.holders.remove(&oid);
            }
        }
        true
    }

    /// Whether `ttid` is known here (stored or voted, not yet released).
    pub fn knows(&self, ttid: Tid) -> bool {
        self.transactions.contains_key(&ttid)
    }

    /// Whether a load of `oid` that sees revisions up to `at` (none: the newest) must wait
    /// for a committed, not yet visible revision.
    pub fn load_must_wait(&self, oid: Oid, at: Option<Tid>) -> bool {
        let Some(holder) = self.holders.get(&oid) else { return false };
        match self.transactions.get(holder).and_then(|t| t.tid) {
            Some(tid) => at.is_none_or(|at| tid <= at),
            None => false,
        }
    }

    /// Transactions holding state here, oldest first.
    pub fn transactions(&self) -> impl Iterator<Item = Tid> + '_ {
        self.transactions.keys().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Oid = Oid(1);
    const B: Oid = Oid(2);

    #[test]
    fn base_serial_is_checked_and_conflicts_carry_the_current_serial() {
        let mut locks = Locks::default();
        assert_eq!(locks.acquire(Tid(10), A, Tid::ZERO, None), Acquire::Locked);
        // Storing the same object again in the same transaction (after a resolution).
        assert_eq!(locks.acquire(Tid(10), A, Tid::ZERO, None), Acquire::Locked);
        assert_eq!(locks.acquire(Tid(11), B, Tid(3), Some(Tid(5))), Acquire::Conflict(Tid(5)));
        assert!(!locks.knows(Tid(11)), "a conflict takes no lock");
        assert_eq!(locks.acquire(Tid(11), B, Tid::ZERO, Some(Tid(5))), Acquire::Conflict(Tid(5)));
        assert_eq!(locks.acquire(Tid(11), B, Tid(5), Some(Tid(5))), Acquire::Locked);
    }

    #[test]
    fn the_older_waits_and_the_younger_dies_so_opposite_orders_cannot_deadlock() {
        let mut locks = Locks::default();
        let (old, young) = (Tid(10), Tid(20));
        assert_eq!(locks.acquire(old, A, Tid::ZERO, None), Acquire::Locked);
        assert_eq!(locks.acquire(young, B, Tid::ZERO, None), Acquire::Locked);
        // Opposite orders: the younger gets a conflict, the older waits.
        assert_eq!(locks.acquire(young, A, Tid::ZERO, None), Acquire::Conflict(Tid::ZERO));
        assert_eq!(locks.acquire(old, B, Tid::ZERO, None), Acquire::Wait);
        // The younger aborts; the older gets its lock.
        assert!(locks.release(young));
        assert_eq!(locks.acquire(old, B, Tid::ZERO, None), Acquire::Locked);
    }

    #[test]
    fn a_younger_transaction_waits_on_a_voted_one() {
        let mut locks = Locks::default();
        assert_eq!(locks.acquire(Tid(10), A, Tid::ZERO, None), Acquire::Locked);
        locks.voted(Tid(10));
        assert_eq!(locks.acquire(Tid(20), A, Tid::ZERO, None), Acquire::Wait);
        locks.locked(Tid(10), Tid(30));
        assert_eq!(locks.acquire(Tid(20), A, Tid::ZERO, None), Acquire::Wait);
        assert!(locks.release(Tid(10)));
        // Committed meanwhile: the serial moved on.
        assert_eq!(locks.acquire(Tid(20), A, Tid::ZERO, Some(Tid(30))), Acquire::Conflict(Tid(30)));
        assert!(!locks.release(Tid(10)), "released twice");
    }

    #[test]
    fn loads_wait_only_for_committed_revisions_they_could_see() {
        let mut locks = Locks::default();
        assert_eq!(locks.acquire(Tid(10), A, Tid::ZERO, None), Acquire::Locked);
        assert!(!locks.load_must_wait(A, None), "stored only: the old revision is current");
        locks.voted(Tid(10));
        assert!(!locks.load_must_wait(A, None));
        locks.locked(Tid(10), Tid(30));
        assert!(locks.load_must_wait(A, None));
        assert!(locks.load_must_wait(A, Some(Tid(30))));
        assert!(!locks.load_must_wait(A, Some(Tid(29))), "a snapshot before the commit");
        assert!(!locks.load_must_wait(B, None));
        locks.release(Tid(10));
        assert!(!locks.load_must_wait(A, None));
    }
}
