//! A storage core's replication of its out-of-date cells, as a state machine: which cell to
//! replicate next, from which storage, up to which tid, and when it is done. The driver
//! (`storage.rs`) asks the master, fetches chunks from the source and writes them; it
//! feeds the outcomes here and carries out the `Step` it gets back. No socket, no clock.
//!
//! Rules (reference 5.1):
//! - One cell at a time, the furthest behind first (the lowest position; ties by
//!   partition), among this core's out-of-date cells.
//! - A round starts by asking the master the last committed tid and the transactions in
//!   flight (`AskUnfinishedTransactions`). From then on the cell receives every new
//!   transaction in full (clients store to out-of-date cells too). The cell replicates up to
//!   that tid; the transactions in flight at the start may still commit without it having
//!   their data, so the master is asked again until none of them is in flight, and the
//!   cell replicates up to the new last tid. Then it is done (`NotifyReplicationDone`).
//! - The source is a storage holding a readable cell of the partition, running and not
//!   this one; one that failed is tried last. With no source, the cell waits (a table
//!   change or a node coming back starts it again).
//! - The position (how far the cell is replicated) only moves forward, chunk by chunk,
//!   once the chunk is durable: a storage that restarts resumes there.

use std::collections::{BTreeMap, BTreeSet};

use wire::{CellState, NodeId, PartitionId, Tid};

use crate::pt::PartitionTable;

/// What the driver does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing to replicate (no out-of-date cell, or no source for any).
    Idle,
    /// Ask the master for the last committed tid and the transactions in flight.
    AskUnfinished { partition: PartitionId },
    /// Copy the partition's transactions and objects after `from` (exclusive) up to `to`
    /// from `source`.
    Fetch { partition: PartitionId, source: NodeId, from: Tid, to: Tid },
    /// The cell holds everything up to `tid`: tell the master.
    Done { partition: PartitionId, tid: Tid },
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Round {
    partition: PartitionId,
    /// Replicate up to this tid (known once the master answered).
    target: Option<Tid>,
    /// Transactions in flight when the round started, not yet seen finished.
    waiting: Option<BTreeSet<Tid>>,
    /// Whether the cell holds everything up to `target`.
    caught_up: bool,
}

/// The replication state of one storage core.
#[derive(Clone, Debug, Default)]
pub struct Replication {
    /// How far each cell is replicated (durable), by partition.
    positions: BTreeMap<PartitionId, Tid>,
    round: Option<Round>,
    /// Sources that failed, with how many times: tried last.
    failures: BTreeMap<NodeId, u32>,
}

impl Replication {
    /// Starts from the positions the core kept.
    pub fn new(positions: impl IntoIterator<Item = (PartitionId, Tid)>) -> Replication {
        Replication { positions: positions.into_iter().collect(), ..Replication::default() }
    }

    /// How far `partition`'s cell is replicated.
    pub fn position(&self, partition: PartitionId) -> Tid {
        self.positions.get(&partition).copied().unwrap_or(Tid::ZERO)
    }

    /// The positions to keep durably.
    pub fn positions(&self) -> impl Iterator<Item = (PartitionId, Tid)> + '_ {
        self.positions.iter().map(|(&p, &t)| (p, t))
    }

    /// The partition of the round in progress.
    pub fn replicating(&self) -> Option<PartitionId> {
        self.round.as_ref().map(|r| r.partition)
    }

    /// The next step, given the table (`me`'s cells) and which nodes run.
    pub fn next(
        &mut self,
        table: &PartitionTable,
        me: NodeId,
        running: impl Fn(NodeId) -> bool,
    ) -> Step {
        let out_of_date = out_of_date_cells(table, me);
        // A round whose cell is no longer out of date (done, discarded, moved) ends.
        if self.round.as_ref().is_some_and(|r| !out_of_date.contains(&r.partition)) {
            self.round = None;
        }
        // Positions of cells this core no longer has out of date are forgotten.
        self.positions.retain(|p, _| out_of_date.contains(p));
        if self.round.is_none() {
            let Some(partition) = out_of_date
                .iter()
                .copied()
                .filter_map(|p| Some((p, self.source(table, p, me, &running)?)))
                .min_by_key(|&(p, source)| {
                    (self.failures.get(&source).copied().unwrap_or(0), self.position(p), p)
                })
                .map(|(p, _)| p)
            else {
                return Step::Idle;
            };
            self.round = Some(Round { partition, target: None, waiting: None, caught_up: false });
        }
        let round = self.round.as_ref().expect("set above");
        let partition = round.partition;
        let Some(target) = round.target else { return Step::AskUnfinished { partition } };
        let position = self.position(partition);
        if !round.caught_up && position < target {
            return match self.source(table, partition, me, &running) {
                Some(source) => Step::Fetch { partition, source, from: position, to: target },
                // The source went away: wait for one.
                None => Step::Idle,
            };
        }
        match &round.waiting {
            Some(waiting) if waiting.is_empty() => Step::Done { partition, tid: target },
            _ => Step::AskUnfinished { partition },
        }
    }

    /// The master's answer: its last committed tid and the ttids in flight.
    pub fn unfinished(&mut self, partition: PartitionId, max_tid: Option<Tid>, ttids: &[Tid]) {
        let Some(round) = self.round.as_mut().filter(|r| r.partition == partition) else {
            return;
        };
        let in_flight: BTreeSet<Tid> = ttids.iter().copied().collect();
        round.waiting = Some(match round.waiting.take() {
            // The first answer: these may commit without this cell having their data.
            None => in_flight,
            Some(waiting) => waiting.intersection(&in_flight).copied().collect(),
        });
        let target = max_tid.unwrap_or(Tid::ZERO);
        round.caught_up = round.caught_up && round.target == Some(target);
        round.target = Some(round.target.map_or(target, |t| t.max(target)));
    }

    /// A chunk up to `tid` is durable in the cell.
    pub fn advanced(&mut self, partition: PartitionId, tid: Tid) {
        let position = self.positions.entry(partition).or_insert(Tid::ZERO);
        *position = (*position).max(tid);
        if let Some(round) = self.round.as_mut().filter(|r| r.partition == partition)
            && round.target.is_some_and(|target| *position >= target)
        {
            round.caught_up = true;
        }
    }

    /// Everything up to the round's target is in the cell (the source had nothing more).
    pub fn caught_up(&mut self, partition: PartitionId) {
        if let Some(round) = self.round.as_mut().filter(|r| r.partition == partition) {
            round.caught_up = true;
            if let Some(target) = round.target {
                let position = self.positions.entry(partition).or_insert(Tid::ZERO);
                *position = (*position).max(target);
            }
        }
    }

    /// Fetching from `source` failed (it went away, or refused): another is tried, and the
    /// round goes on from the position reached.
    /// A fetch of `partition` from `source` failed: the source is tried after the others,
    /// and the round ends, so that the next pick may take another partition first (one
    /// whose source works, rather than waiting behind one whose only source keeps failing).
    pub fn source_failed(&mut self, partition: PartitionId, source: NodeId) {
        *self.failures.entry(source).or_default() += 1;
        if self.round.as_ref().is_some_and(|r| r.partition == partition) {
            self.round = None;
        }
    }

    /// The master was told the cell is done; a new round starts if it is still out of
    /// date when the driver looks again (the master refused, or more must be fetched).
    pub fn reported(&mut self, partition: PartitionId) {
        if self.round.as_ref().is_some_and(|r| r.partition == partition) {
            self.round = None;
        }
    }

    /// The cell's copy was dropped (it was corrupted, and is being repaired): it
    /// replicates from the start.
    pub fn start_over(&mut self, partition: PartitionId) {
        self.positions.insert(partition, Tid::ZERO);
        if self.round.as_ref().is_some_and(|r| r.partition == partition) {
            self.round = None;
        }
    }

    /// The database was truncated after `tid`: no position is past it.
    pub fn clip(&mut self, tid: Tid) {
        for position in self.positions.values_mut() {
            *position = (*position).min(tid);
        }
        self.round = None;
    }

    /// Forgets the round in progress (the session with the master ended).
    pub fn restart(&mut self) {
        self.round = None;
    }

    /// The source for `partition`: a running node with a readable cell of it, other than
    /// `me`, the one that failed least (then the lowest id).
    fn source(
        &self,
        table: &PartitionTable,
        partition: PartitionId,
        me: NodeId,
        running: &impl Fn(NodeId) -> bool,
    ) -> Option<NodeId> {
        table
            .rows
            .get(partition.0 as usize)?
            .iter()
            .filter(|c| c.nid != me && c.state.is_readable() && running(c.nid))
            .map(|c| c.nid)
            .min_by_key(|&nid| (self.failures.get(&nid).copied().unwrap_or(0), nid))
    }
}

/// `me`'s out-of-date cells.
pub fn out_of_date_cells(table: &PartitionTable, me: NodeId) -> BTreeSet<PartitionId> {
    table
        .rows
        .iter()
        .enumerate()
        .filter(|(_, row)| row.iter().any(|c| c.nid == me && c.state == CellState::OutOfDate))
        .map(|(p, _)| PartitionId(p as u32))
        .collect()
}

#[cfg(test)]
mod tests {
    use wire::{NodeType, Ptid};

    use super::*;
    use crate::pt::Cell;

    fn s(n: u32) -> NodeId {
        NodeId::new(NodeType::Storage, n)
    }

    /// Partitions whose cells are `(node, state)` each.
    fn table(rows: &[&[(u32, CellState)]]) -> PartitionTable {
        PartitionTable {
            ptid: Ptid(1),
            replicas: 1,
            rows: rows
                .iter()
                .map(|row| row.iter().map(|&(n, state)| Cell { nid: s(n), state }).collect())
                .collect(),
        }
    }

    use CellState::{OutOfDate as O, UpToDate as U};

    #[test]
    fn a_round_fetches_up_to_the_last_tid_then_waits_for_what_was_in_flight() {
        let table = table(&[&[(1, U), (2, O)], &[(1, U), (2, U)]]);
        let mut replication = Replication::default();
        let p = PartitionId(0);
        let all = |_| true;
        assert_eq!(replication.next(&table, s(2), all), Step::AskUnfinished { partition: p });
        replication.unfinished(p, Some(Tid(50)), &[Tid(45), Tid(48)]);
        let fetch = Step::Fetch { partition: p, source: s(1), from: Tid::ZERO, to: Tid(50) };
        assert_eq!(replication.next(&table, s(2), all), fetch);
        replication.advanced(p, Tid(30));
        let fetch = Step::Fetch { partition: p, source: s(1), from: Tid(30), to: Tid(50) };
        assert_eq!(replication.next(&table, s(2), all), fetch);
        replication.caught_up(p);
        assert_eq!(replication.position(p), Tid(50));
        // 45 and 48 were in flight: ask again.
        assert_eq!(replication.next(&table, s(2), all), Step::AskUnfinished { partition: p });
        replication.unfinished(p, Some(Tid(60)), &[Tid(48), Tid(55)]);
        let fetch = Step::Fetch { partition: p, source: s(1), from: Tid(50), to: Tid(60) };
        assert_eq!(replication.next(&table, s(2), all), fetch);
        replication.caught_up(p);
        assert_eq!(replication.next(&table, s(2), all), Step::AskUnfinished { partition: p });
        // 48 finished (55 began later: this cell gets its data).
        replication.unfinished(p, Some(Tid(60)), &[Tid(55)]);
        assert_eq!(replication.next(&table, s(2), all), Step::Done { partition: p, tid: Tid(60) });
        replication.reported(p);
        // The master made it up to date.
        let done = self::table(&[&[(1, U), (2, U)], &[(1, U), (2, U)]]);
        assert_eq!(replication.next(&done, s(2), all), Step::Idle);
        assert_eq!(replication.position(p), Tid::ZERO, "forgotten once up to date");
    }

    #[test]
    fn a_partition_whose_only_source_fails_waits_behind_the_others() {
        // Partition 0 (furthest behind) only from S1, partition 1 only from S3.
        let table = table(&[&[(1, U), (2, O)], &[(3, U), (2, O)]]);
        let mut replication = Replication::new([(PartitionId(1), Tid(50))]);
        let all = |_| true;
        let ask_0 = Step::AskUnfinished { partition: PartitionId(0) };
        assert_eq!(replication.next(&table, s(2), all), ask_0);
        replication.unfinished(PartitionId(0), Some(Tid(80)), &[]);
        let fetch_0 =
            Step::Fetch { partition: PartitionId(0), source: s(1), from: Tid(0), to: Tid(80) };
        assert_eq!(replication.next(&table, s(2), all), fetch_0);
        // S1 fails: partition 1, whose source works, goes first now.
        replication.source_failed(PartitionId(0), s(1));
        let ask_1 = Step::AskUnfinished { partition: PartitionId(1) };
        assert_eq!(replication.next(&table, s(2), all), ask_1);
    }

    #[test]
    fn the_furthest_behind_goes_first_and_a_failed_source_is_tried_last() {
        let table = table(&[&[(1, U), (3, U), (2, O)], &[(1, U), (2, O)], &[(3, U), (2, O)]]);
        let mut replication =
            Replication::new([(PartitionId(0), Tid(70)), (PartitionId(1), Tid(20))]);
        let all = |_| true;
        // Partition 2 has no position at all: furthest behind.
        assert_eq!(
            replication.next(&table, s(2), all),
            Step::AskUnfinished { partition: PartitionId(2) }
        );
        replication.unfinished(PartitionId(2), Some(Tid(80)), &[]);
        let fetch =
            Step::Fetch { partition: PartitionId(2), source: s(3), from: Tid(0), to: Tid(80) };
        assert_eq!(replication.next(&table, s(2), all), fetch);
        replication.caught_up(PartitionId(2));
        assert_eq!(
            replication.next(&table, s(2), all),
            Step::Done { partition: PartitionId(2), tid: Tid(80) }
        );
        replication.reported(PartitionId(2));
        // Still out of date (the master did not answer yet): partition 1 (at 20) first.
        assert_eq!(
            replication.next(&table, s(2), all),
            Step::AskUnfinished { partition: PartitionId(1) }
        );
        replication.restart();
        // Partition 0 from S1 or S3: S1 failed, so S3.
        replication.source_failed(PartitionId(0), s(1));
        let only_0 =
            self::table(&[&[(1, U), (3, U), (2, O)], &[(1, U), (2, U)], &[(3, U), (2, U)]]);
        assert_eq!(
            replication.next(&only_0, s(2), all),
            Step::AskUnfinished { partition: PartitionId(0) }
        );
        replication.unfinished(PartitionId(0), Some(Tid(90)), &[]);
        let fetch =
            Step::Fetch { partition: PartitionId(0), source: s(3), from: Tid(70), to: Tid(90) };
        assert_eq!(replication.next(&only_0, s(2), all), fetch);
        // S3 stops running: S1 is what is left.
        let fetch =
            Step::Fetch { partition: PartitionId(0), source: s(1), from: Tid(70), to: Tid(90) };
        assert_eq!(replication.next(&only_0, s(2), |n| n != s(3)), fetch);
        // Nobody runs: wait.
        assert_eq!(replication.next(&only_0, s(2), |_| false), Step::Idle);
    }

    #[test]
    fn a_cell_without_a_source_waits_and_a_discarded_one_is_forgotten() {
        let lonely = table(&[&[(2, O)]]);
        let mut replication = Replication::new([(PartitionId(0), Tid(5))]);
        assert_eq!(replication.next(&lonely, s(2), |_| true), Step::Idle);
        let gone = table(&[&[(1, U)]]);
        assert_eq!(replication.next(&gone, s(2), |_| true), Step::Idle);
        assert_eq!(replication.positions().count(), 0);
    }
}
