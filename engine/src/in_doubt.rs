//! Transactions in doubt: voted on some storage, but neither locked there nor known to the
//! master. They come from a restart (the previous primary died between vote and unlock;
//! verification) or from a storage that rejoins a running cluster after missing the end of
//! a commit. Each is settled by asking the storages whether they committed it.
//!
//! Rules:
//! - A transaction whose lock was asked is committed: if any storage reports it locked or
//!   committed (`AskFinalTid`: a pending lock, or a committed transaction whose metadata
//!   it holds, found by its ttid), it commits everywhere under that tid. Storages keep a
//!   lock pending across restarts until the master settles it, so a lock is always found.
//! - It is aborted only once every storage of the partition table has answered that it
//!   does not know it committed. A storage that is away is waited for, and asked when it
//!   is back: it may be the one that locked it (a transaction the master never published
//!   can be locked on out-of-date cells only, or on a storage that died since). Asking
//!   only the storages present once aborted a transaction that a storage away had
//!   locked: back, it made the transaction visible alone (a transaction applied in
//!   part). A storage dropped from the table is no longer waited for.
//! - A storage that answers a tid settles the question at once. A holder that leaves is
//!   no longer told the outcome (it reports the transaction again when it is back).
//!
//! Plain state: the driver sends the questions, feeds the answers and carries out the
//! decisions.

use std::collections::{BTreeMap, BTreeSet};

use wire::{NodeId, Tid};

/// How a transaction in doubt ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Some storage committed it (or locked it) under `tid`: every holder commits it.
    Commit { ttid: Tid, tid: Tid, holders: BTreeSet<NodeId> },
    /// No storage asked committed it: the holders drop it.
    Abort { ttid: Tid, holders: BTreeSet<NodeId> },
}

impl Decision {
    pub fn ttid(&self) -> Tid {
        match self {
            Decision::Commit { ttid, .. } | Decision::Abort { ttid, .. } => *ttid,
        }
    }
}

#[derive(Clone, Debug, Default)]
struct Question {
    /// The storages that hold it voted: where the decision goes.
    holders: BTreeSet<NodeId>,
    /// Asked, not yet answered.
    awaiting: BTreeSet<NodeId>,
}

/// The questions in flight.
#[derive(Clone, Debug, Default)]
pub struct InDoubt {
    questions: BTreeMap<Tid, Question>,
}

impl InDoubt {
    /// `holder` holds `ttid` voted and nobody knows its fate: asks every storage of the
    /// table (`candidates`; the holder itself is not asked, it would only say it voted).
    /// Returns the storages to send `AskFinalTid` to now, those of `connected` (none when
    /// the question is already out: the holder joins it); the others are asked when they
    /// are back (`storage_back`). With nobody to ask, the decision comes at once.
    pub fn ask(
        &mut self,
        ttid: Tid,
        holder: NodeId,
        candidates: &BTreeSet<NodeId>,
        connected: &BTreeSet<NodeId>,
    ) -> (Vec<NodeId>, Option<Decision>) {
        if let Some(question) = self.questions.get_mut(&ttid) {
            question.holders.insert(holder);
            question.awaiting.remove(&holder);
            return (Vec::new(), self.decide_if_answered(ttid));
        }
        let awaiting: BTreeSet<NodeId> =
            candidates.iter().copied().filter(|&n| n != holder).collect();
        let asked = awaiting.intersection(connected).copied().collect();
        self.questions.insert(ttid, Question { holders: [holder].into(), awaiting });
        (asked, self.decide_if_answered(ttid))
    }

    /// A storage answered `AskFinalTid` for `ttid`: the tid it committed or locked it
    /// under, or none.
    pub fn answered(&mut self, storage: NodeId, ttid: Tid, tid: Option<Tid>) -> Option<Decision> {
        let question = self.questions.get_mut(&ttid)?;
        if !question.awaiting.remove(&storage) {
            return None;
        }
        if let Some(tid) = tid {
            assert!(tid >= ttid, "a final tid never precedes its ttid");
            let question = self.questions.remove(&ttid).expect("found above");
            return Some(Decision::Commit { ttid, tid, holders: question.holders });
        }
        self.decide_if_answered(ttid)
    }

    /// A storage is gone: still waited for (asked again when it is back), no longer told
    /// the outcome. A question with no holder left is dropped (nobody to tell).
    pub fn storage_lost(&mut self, storage: NodeId) {
        self.questions.retain(|_, question| {
            question.holders.remove(&storage);
            !question.holders.is_empty()
        });
    }

    /// A storage is back: the questions it must answer (send `AskFinalTid` again).
    pub fn storage_back(&self, storage: NodeId) -> Vec<Tid> {
        self.questions
            .iter()
            .filter(|(_, question)| question.awaiting.contains(&storage))
            .map(|(&ttid, _)| ttid)
            .collect()
    }

    /// A storage left the table for good (`ctl drop`): no longer waited for.
    pub fn storage_dropped(&mut self, storage: NodeId) -> Vec<Decision> {
        self.storage_lost(storage);
        let ttids: Vec<Tid> = self.questions.keys().copied().collect();
        for question in self.questions.values_mut() {
            question.awaiting.remove(&storage);
        }
        ttids.into_iter().filter_map(|ttid| self.decide_if_answered(ttid)).collect()
    }

    /// The storages a question waits for, by transaction.
    pub fn awaiting(&self) -> impl Iterator<Item = (Tid, &BTreeSet<NodeId>)> {
        self.questions.iter().map(|(&ttid, question)| (ttid, &question.awaiting))
    }

    /// The transactions in question (they may still commit: a cell catching up waits
    /// for them as for those in flight).
    pub fn ttids(&self) -> Vec<Tid> {
        self.questions.keys().copied().collect()
    }

    fn decide_if_answered(&mut self, ttid: Tid) -> Option<Decision> {
        if !self.questions.get(&ttid)?.awaiting.is_empty() {
            return None;
        }
        let question = self.questions.remove(&ttid).expect("found above");
        Some(Decision::Abort { ttid, holders: question.holders })
    }

    /// Whether some question still waits for answers.
    pub fn is_settling(&self) -> bool {
        !self.questions.is_empty()
    }

    /// Forgets every question (the cluster left the state that asked them).
    pub fn clear(&mut self) {
        self.questions.clear();
    }
}

#[cfg(test)]
mod tests {
    use wire::NodeType;

    use super::*;

    fn s(n: u32) -> NodeId {
        NodeId::new(NodeType::Storage, n)
    }

    fn set(ids: &[u32]) -> BTreeSet<NodeId> {
        ids.iter().map(|&n| s(n)).collect()
    }

    #[test]
    fn one_storage_that_committed_it_commits_it_everywhere() {
        let mut doubt = InDoubt::default();
        let ttid = Tid(10);
        let all = set(&[1, 2, 3]);
        let (asked, decided) = doubt.ask(ttid, s(1), &all, &all);
        assert_eq!((asked, decided), (vec![s(2), s(3)], None));
        // A second holder joins the question without asking again.
        assert_eq!(doubt.ask(ttid, s(2), &all, &all), (vec![], None));
        assert_eq!(doubt.answered(s(1), ttid, None), None, "the holder was not asked");
        let decided = doubt.answered(s(3), ttid, Some(Tid(12)));
        assert_eq!(decided, Some(Decision::Commit { ttid, tid: Tid(12), holders: set(&[1, 2]) }));
        assert!(!doubt.is_settling());
    }

    #[test]
    fn it_is_aborted_only_once_everyone_asked_said_no() {
        let mut doubt = InDoubt::default();
        let ttid = Tid(10);
        doubt.ask(ttid, s(1), &set(&[1, 2, 3]), &set(&[1, 2, 3]));
        assert_eq!(doubt.answered(s(2), ttid, None), None);
        assert!(doubt.is_settling());
        assert_eq!(
            doubt.answered(s(3), ttid, None),
            Some(Decision::Abort { ttid, holders: set(&[1]) })
        );
        // A late or repeated answer changes nothing.
        assert_eq!(doubt.answered(s(3), ttid, Some(Tid(11))), None);
    }

    /// The kill loop's partial transaction: S2 locked it on out-of-date cells and was away
    /// when the others (holding it voted) settled it.
    #[test]
    fn a_storage_away_is_waited_for_and_asked_when_it_is_back() {
        let mut doubt = InDoubt::default();
        let ttid = Tid(10);
        let table = set(&[1, 2, 3]);
        let (asked, decided) = doubt.ask(ttid, s(1), &table, &set(&[1, 3]));
        assert_eq!((asked, decided), (vec![s(3)], None));
        assert_eq!(doubt.ask(ttid, s(3), &table, &set(&[1, 3])), (vec![], None));
        assert!(doubt.is_settling(), "S2, away, may have locked it");
        assert_eq!(doubt.storage_back(s(1)), vec![]);
        assert_eq!(doubt.storage_back(s(2)), vec![ttid]);
        // S2 comes back with its lock.
        assert_eq!(
            doubt.answered(s(2), ttid, Some(Tid(11))),
            Some(Decision::Commit { ttid, tid: Tid(11), holders: set(&[1, 3]) })
        );
    }

    #[test]
    fn a_lost_storage_is_still_waited_for_and_a_dropped_one_no_longer() {
        let mut doubt = InDoubt::default();
        let (a, b) = (Tid(10), Tid(20));
        let table = set(&[1, 2, 3]);
        doubt.ask(a, s(1), &table, &table);
        doubt.ask(b, s(2), &table, &table);
        // S2 goes: b has no holder left (dropped); a still waits for S2's answer.
        doubt.storage_lost(s(2));
        assert_eq!(doubt.answered(s(3), a, None), None);
        assert_eq!(doubt.ttids(), vec![a]);
        assert_eq!(doubt.storage_back(s(2)), vec![a]);
        // S2 is gone for good: nobody else to wait for.
        assert_eq!(
            doubt.storage_dropped(s(2)),
            vec![Decision::Abort { ttid: a, holders: set(&[1]) }]
        );
        assert!(!doubt.is_settling());
        let (asked, decided) = doubt.ask(a, s(1), &set(&[1]), &set(&[1]));
        assert!(asked.is_empty());
        assert_eq!(decided, Some(Decision::Abort { ttid: a, holders: set(&[1]) }));
    }
}
