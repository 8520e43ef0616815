//! A storage core's object locks: who may store which object, and when a load must wait.
//! Plain state (no I/O, no time), so the storage driver and a simulator share it.
//!
//! Rules:
//! - A store write-locks its object for its transaction (ttid) until the transaction is
//!   unlocked (committed and visible) or aborted. The base serial is checked once the lock
//!   is held: a store based on anything but the current committed serial is a conflict,
//!   answered with the current serial so that the client can resolve.
//! - Deadlock avoidance as in NEO: a store that meets a lock held by another transaction
//!   waits. When the waiter is the older one and the holder has not voted, the holder's
//!   client is asked to relock (`Deadlock`): it answers with `relock`, which gives the
//!   object to the older transaction at once and queues the younger one behind it, its base
//!   serial checked again when it gets the lock back. The older transaction always goes
//!   on; a voted holder takes no more locks, so waiting on it cannot close a cycle.
//! - Between lock (final tid known) and unlock, a load that could see the new revision
//!   waits: the revision is committed but not visible yet, and serving the old one would
//!   let a client that was told of the commit read the past.

use std::collections::{BTreeMap, HashMap};

use wire::{Oid, Tid};

/// What a store (or a current-serial check) gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acquire {
    /// The lock is held and the base serial is current: store the data.
    Locked,
    /// The base serial is not the current one: the current committed serial, for the
    /// client to resolve against.
    Conflict(Tid),
    /// Another transaction holds the lock: ask again once a lock is released.
    Wait,
    /// As `Wait`, and the younger holder's client must be asked to relock this object
    /// (once per holder and object).
    WaitAndNotify { holder: Tid },
}

#[derive(Clone, Debug, Default)]
struct Transaction {
    /// Objects locked, with the base serial each was stored on.
    oids: BTreeMap<Oid, Tid>,
    voted: bool,
    /// The final tid, once locked.
    tid: Option<Tid>,
    /// Objects this holder was asked to relock, with the older transaction waiting.
    notified: BTreeMap<Oid, Tid>,
}

/// The locks of one storage core.
#[derive(Clone, Debug, Default)]
pub struct Locks {
    holders: HashMap<Oid, Tid>,
    transactions: BTreeMap<Tid, Transaction>,
    /// Objects given up by a relock, kept for the older transaction that waited for them.
    reserved: HashMap<Oid, Tid>,
}

/// What a relock request gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Relock {
    /// The lock was given up: take it again (with `acquire`, on `base`) behind the older
    /// transaction.
    Released { base: Tid },
    /// Nothing to do: the transaction voted (it goes on), or does not hold the object.
    Kept,
}

impl Locks {
    /// Tries to lock `oid` for `ttid`, with the data based on `base` (`Tid::ZERO` for a new
    /// object); `current` is the object's newest committed serial (none if it does not
    /// exist).
    pub fn acquire(&mut self, ttid: Tid, oid: Oid, base: Tid, current: Option<Tid>) -> Acquire {
        match self.reserved.get(&oid) {
            Some(&waiter) if waiter == ttid => {
                self.reserved.remove(&oid);
            }
            Some(_) => return Acquire::Wait,
            None => {}
        }
        match self.holders.get(&oid) {
            Some(&holder) if holder == ttid => {}
            Some(&holder) => {
                let entry = self.transactions.entry(holder).or_default();
                if ttid < holder && !entry.voted && !entry.notified.contains_key(&oid) {
                    entry.notified.insert(oid, ttid);
                    return Acquire::WaitAndNotify { holder };
                }
                return Acquire::Wait;
            }
            None => {}
        }
        if current.unwrap_or(Tid::ZERO) != base {
            // Not locked: the client resolves and stores again, or aborts.
            return Acquire::Conflict(current.unwrap_or(Tid::ZERO));
        }
        self.holders.insert(oid, ttid);
        self.transactions.entry(ttid).or_default().oids.insert(oid, base);
        Acquire::Locked
    }

    /// Takes `oid`'s lock for `ttid` without a serial check, if nobody holds it: a store
    /// this core took without lock while its cell was out of date (another, readable, cell
    /// locked and checked it), locked here once the cell becomes readable, so that a later
    /// transaction cannot take the object from under it. `base` is the serial it was
    /// stored on (checked again if a relock gives it up). Returns whether it got it.
    pub fn adopt(&mut self, ttid: Tid, oid: Oid, base: Tid) -> bool {
        match self.holders.get(&oid) {
            Some(&holder) => holder == ttid,
            None => {
                self.holders.insert(oid, ttid);
                self.transactions.entry(ttid).or_default().oids.insert(oid, base);
                true
            }
        }
    }

    /// The client of `ttid` answers a deadlock notification: unless it voted, it gives
    /// `oid` up, so that the older transaction waiting for it goes on.
    pub fn relock(&mut self, ttid: Tid, oid: Oid) -> Relock {
        let Some(transaction) = self.transactions.get_mut(&ttid) else { return Relock::Kept };
        if transaction.voted || self.holders.get(&oid) != Some(&ttid) {
            return Relock::Kept;
        }
        let base = transaction.oids.remove(&oid).expect("a holder knows its objects");
        self.holders.remove(&oid);
        // The older transaction that waited takes it first.
        if let Some(waiter) = transaction.notified.remove(&oid) {
            self.reserved.insert(oid, waiter);
        }
        Relock::Released { base }
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
        // Reservations for it are void (it aborted before taking them).
        self.reserved.retain(|_, waiter| *waiter != ttid);
        let Some(transaction) = self.transactions.remove(&ttid) else { return false };
        for oid in transaction.oids.into_keys() {
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

    /// Whether a load of `oid` must wait: a revision of it is committed (locked) and not
    /// yet visible. Whatever snapshot the load reads, that revision decides its answer,
    /// as the revision itself or as the next serial of an older one (a client that was
    /// told its commit finished must not be answered "current" for what it replaced).
    pub fn load_must_wait(&self, oid: Oid) -> bool {
        let Some(holder) = self.holders.get(&oid) else { return false };
        self.transactions.get(holder).is_some_and(|t| t.tid.is_some())
    }

    /// Whether a transaction with a final tid in `min ..= max` is locked and not yet
    /// visible: listings of committed transactions (iteration, the undo log, a
    /// transaction's metadata) wait for it, as loads wait for their object.
    pub fn locked_between(&self, min: Tid, max: Tid) -> bool {
        self.transactions.values().any(|t| t.tid.is_some_and(|tid| min <= tid && tid <= max))
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
    fn opposite_orders_end_with_the_younger_relocking_behind_the_older() {
        let mut locks = Locks::default();
        let (old, young) = (Tid(10), Tid(20));
        assert_eq!(locks.acquire(old, A, Tid::ZERO, None), Acquire::Locked);
        assert_eq!(locks.acquire(young, B, Tid(5), Some(Tid(5))), Acquire::Locked);
        // Opposite orders: the younger waits for the older; the older waits too, and the
        // younger's client is asked (once) to relock.
        assert_eq!(locks.acquire(young, A, Tid::ZERO, None), Acquire::Wait);
        assert_eq!(
            locks.acquire(old, B, Tid(5), Some(Tid(5))),
            Acquire::WaitAndNotify { holder: young }
        );
        assert_eq!(locks.acquire(old, B, Tid(5), Some(Tid(5))), Acquire::Wait, "notified once");
        // The relock gives B to the older transaction, which commits it.
        assert_eq!(locks.relock(young, B), Relock::Released { base: Tid(5) });
        assert_eq!(locks.relock(young, B), Relock::Kept, "no longer held");
        assert_eq!(
            locks.acquire(young, B, Tid(5), Some(Tid(5))),
            Acquire::Wait,
            "kept for the older"
        );
        assert_eq!(locks.acquire(old, B, Tid(5), Some(Tid(5))), Acquire::Locked);
        assert_eq!(locks.acquire(young, B, Tid(5), Some(Tid(5))), Acquire::Wait);
        locks.locked(old, Tid(30));
        assert!(locks.release(old));
        // The younger gets both objects back; B moved on meanwhile: a conflict to resolve.
        assert_eq!(locks.acquire(young, A, Tid::ZERO, Some(Tid(30))), Acquire::Conflict(Tid(30)));
        assert_eq!(locks.acquire(young, B, Tid(5), Some(Tid(30))), Acquire::Conflict(Tid(30)));
        assert_eq!(locks.acquire(young, B, Tid(30), Some(Tid(30))), Acquire::Locked);
    }

    #[test]
    fn a_voted_holder_is_not_asked_to_relock() {
        let mut locks = Locks::default();
        assert_eq!(locks.acquire(Tid(20), A, Tid::ZERO, None), Acquire::Locked);
        locks.voted(Tid(20));
        assert_eq!(locks.acquire(Tid(10), A, Tid::ZERO, None), Acquire::Wait);
        assert_eq!(locks.relock(Tid(20), A), Relock::Kept);
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
    fn loads_wait_for_committed_revisions_not_yet_visible() {
        let mut locks = Locks::default();
        assert_eq!(locks.acquire(Tid(10), A, Tid::ZERO, None), Acquire::Locked);
        assert!(!locks.load_must_wait(A), "stored only: the old revision is current");
        locks.voted(Tid(10));
        assert!(!locks.load_must_wait(A));
        locks.locked(Tid(10), Tid(30));
        assert!(locks.load_must_wait(A), "committed: it is the next serial of any older one");
        assert!(!locks.load_must_wait(B));
        assert!(locks.locked_between(Tid(30), Tid(30)) && locks.locked_between(Tid(0), Tid(99)));
        assert!(!locks.locked_between(Tid(31), Tid(99)), "committed below the range");
        locks.release(Tid(10));
        assert!(!locks.load_must_wait(A));
        assert!(!locks.locked_between(Tid(0), Tid(99)));
    }
}
