//! Transactions in doubt: voted on some storage, but neither locked there nor known to the
//! master. They come from a restart (the previous primary died between vote and unlock;
//! verification) or from a storage that rejoins a running cluster after missing the end of
//! a commit. Each is settled by asking the storages whether they committed it.
//!
//! Rules:
//! - A transaction whose lock was asked is committed: if any storage reports it locked or
//!   committed (`AskFinalTid`: a pending lock, or a committed transaction whose metadata
//!   it holds, found by its ttid), it commits everywhere under that tid.
//! - It is aborted only once every storage asked has answered that it does not know it
//!   committed (or is gone). Asking every storage in service is enough: a transaction the
//!   master published is durably locked on a readable cell of every partition it wrote,
//!   its metadata's included, and every node with a readable cell is present when the
//!   cluster runs or verifies (the start rule), so one of them answers with its tid.
//! - A storage that answers a tid settles the question at once; one that leaves is no
//!   longer waited for.
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
    /// `holder` holds `ttid` voted and nobody knows its fate: asks `storages` (the holder
    /// itself is not asked; it would only say it voted). Returns the storages to send
    /// `AskFinalTid` to now (none when the question is already out: the holder joins it).
    /// With nobody to ask, the decision comes at once.
    pub fn ask(
        &mut self,
        ttid: Tid,
        holder: NodeId,
        storages: &BTreeSet<NodeId>,
    ) -> (Vec<NodeId>, Option<Decision>) {
        if let Some(question) = self.questions.get_mut(&ttid) {
            question.holders.insert(holder);
            question.awaiting.remove(&holder);
            return (Vec::new(), self.decide_if_answered(ttid));
        }
        let awaiting: BTreeSet<NodeId> =
            storages.iter().copied().filter(|&n| n != holder).collect();
        let asked = awaiting.iter().copied().collect();
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

    /// A storage is gone: no longer waited for, nor told anything.
    pub fn storage_lost(&mut self, storage: NodeId) -> Vec<Decision> {
        let ttids: Vec<Tid> = self.questions.keys().copied().collect();
        let mut decisions = Vec::new();
        for ttid in ttids {
            let question = self.questions.get_mut(&ttid).expect("listed");
            question.awaiting.remove(&storage);
            question.holders.remove(&storage);
            if question.holders.is_empty() {
                // Nobody left to tell.
                self.questions.remove(&ttid);
                continue;
            }
            decisions.extend(self.decide_if_answered(ttid));
        }
        decisions
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
        let (asked, decided) = doubt.ask(ttid, s(1), &set(&[1, 2, 3]));
        assert_eq!((asked, decided), (vec![s(2), s(3)], None));
        // A second holder joins the question without asking again.
        assert_eq!(doubt.ask(ttid, s(2), &set(&[1, 2, 3])), (vec![], None));
        assert_eq!(doubt.answered(s(1), ttid, None), None, "the holder was not asked");
        let decided = doubt.answered(s(3), ttid, Some(Tid(12)));
        assert_eq!(decided, Some(Decision::Commit { ttid, tid: Tid(12), holders: set(&[1, 2]) }));
        assert!(!doubt.is_settling());
    }

    #[test]
    fn it_is_aborted_only_once_everyone_asked_said_no() {
        let mut doubt = InDoubt::default();
        let ttid = Tid(10);
        doubt.ask(ttid, s(1), &set(&[1, 2, 3]));
        assert_eq!(doubt.answered(s(2), ttid, None), None);
        assert!(doubt.is_settling());
        assert_eq!(
            doubt.answered(s(3), ttid, None),
            Some(Decision::Abort { ttid, holders: set(&[1]) })
        );
        // A late or repeated answer changes nothing.
        assert_eq!(doubt.answered(s(3), ttid, Some(Tid(11))), None);
    }

    #[test]
    fn a_storage_lost_is_not_waited_for_and_nobody_to_ask_decides_at_once() {
        let mut doubt = InDoubt::default();
        let (a, b) = (Tid(10), Tid(20));
        doubt.ask(a, s(1), &set(&[1, 2]));
        doubt.ask(b, s(2), &set(&[1, 2]));
        // S2 goes: a (held by S1) no longer waits for it; b has no holder left.
        assert_eq!(doubt.storage_lost(s(2)), vec![Decision::Abort { ttid: a, holders: set(&[1]) }]);
        assert!(!doubt.is_settling());
        let (asked, decided) = doubt.ask(a, s(1), &set(&[1]));
        assert!(asked.is_empty());
        assert_eq!(decided, Some(Decision::Abort { ttid: a, holders: set(&[1]) }));
    }
}
