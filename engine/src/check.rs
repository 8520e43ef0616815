//! A replica check of one partition, as a state machine: which range to ask every cell's
//! storage for next, how to compare their digests, which cell is bad. The primary's driver
//! (`master.rs`) sends `AskCheckTidRange` / `AskCheckSerialRange` to the storages, feeds
//! their answers here and reports the findings. No socket, no clock.
//!
//! Rules (reference 5.2, with more than NEO does):
//! - The readable cells of the partition on running storages are compared over a tid range
//!   fixed at the start (up to the last committed tid): first the transactions (count,
//!   SHA-1 of the tids, last tid) in chunks of `CHECK_LENGTH`, then the object records
//!   (count, SHA-1 of serials, of oids and of the data checksums, last record).
//! - Every storage reads the data of the records it digests and checks it against its
//!   checksum: a record that does not match makes its cell bad by itself, with no
//!   comparison needed (even when only one cell is left).
//! - Chunks that differ are halved until one item differs: the first difference. Which cell
//!   is bad there: with a reference cell, every cell that differs from it; otherwise the
//!   cells outside a strict majority; with no majority (two cells), the cell that lacks the
//!   first record the other has (losing a record is what damage does; copying the other
//!   way would lose it). Two cells with the same record but different data, and no
//!   majority: both are reported, neither judged (give a reference).
//! - A bad cell leaves the comparison; the others go on from where they were, until the
//!   range is done. A storage that does not answer leaves it too, reported unchecked.

use std::collections::{BTreeMap, BTreeSet};

use wire::messages::Digest;
use wire::{NodeId, Oid, PartitionId, Tid};

/// Items asked for in one chunk (transactions, or object records whose data is read).
pub const CHECK_LENGTH: u32 = 4000;

/// What the storages are asked to digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Range {
    /// Transactions of the partition in `min ..= max`, at most `length`.
    Tids { min: Tid, max: Tid, length: u32 },
    /// Object records from `(min_tid, min_oid)` on with serial up to `max_tid`, at most
    /// `length`.
    Serials { min_tid: Tid, min_oid: Oid, max_tid: Tid, length: u32 },
}

/// A storage's answer for a range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Digests {
    pub count: u32,
    /// The digests compared (tids; or serials, oids and data), in order.
    pub digests: [Digest; 3],
    /// The last item digested: a tid (with oid 0), or a record's (serial, oid).
    pub last: Option<(Tid, Oid)>,
    /// The first record whose data does not match its checksum on that storage.
    pub damaged: Option<(Tid, Oid)>,
}

impl Digests {
    /// What cells are compared on: everything but the damage report.
    fn compared(&self) -> (u32, [[u8; 20]; 3], Option<(Tid, Oid)>) {
        (self.count, self.digests.map(|d| d.0), self.last)
    }
}

/// What the check found about one cell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub nid: NodeId,
    /// Where: the first difference (a tid, with an oid for an object record), the damaged
    /// record; none for a cell that could not be checked.
    pub at: Option<(Tid, Option<Oid>)>,
    /// Judged bad (to mark CORRUPTED), or only reported.
    pub bad: bool,
    pub what: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Tids { cursor: Tid },
    Serials { cursor: (Tid, Oid) },
    Done,
}

/// The check of one partition.
#[derive(Clone, Debug)]
pub struct PartitionCheck {
    pub partition: PartitionId,
    max_tid: Tid,
    min_tid: Tid,
    reference: Option<NodeId>,
    phase: Phase,
    length: u32,
    /// Cells still in the comparison.
    cells: BTreeSet<NodeId>,
    /// The range asked, and the answers in so far (a cell asked and not in yet is awaited).
    asked: Option<Range>,
    answers: BTreeMap<NodeId, Digests>,
    findings: Vec<Finding>,
}

impl PartitionCheck {
    /// A check of `cells` (the partition's readable cells on running storages) over
    /// `min_tid ..= max_tid`, against `reference` if it is one of them.
    pub fn new(
        partition: PartitionId,
        cells: BTreeSet<NodeId>,
        reference: Option<NodeId>,
        min_tid: Tid,
        max_tid: Tid,
    ) -> PartitionCheck {
        let phase = if cells.is_empty() || min_tid > max_tid {
            Phase::Done
        } else {
            Phase::Tids { cursor: min_tid }
        };
        PartitionCheck {
            partition,
            max_tid,
            min_tid,
            reference: reference.filter(|r| cells.contains(r)),
            phase,
            length: CHECK_LENGTH,
            cells,
            asked: None,
            answers: BTreeMap::new(),
            findings: Vec::new(),
        }
    }

    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    pub fn findings(&self) -> &[Finding] {
        &self.findings
    }

    /// The range to ask of each cell now, once per range: none while answers are awaited,
    /// or when the check is done.
    pub fn next_ask(&mut self) -> Option<(Range, Vec<NodeId>)> {
        if self.asked.is_some() {
            return None;
        }
        let range = match self.phase {
            Phase::Done => return None,
            Phase::Tids { cursor } => {
                Range::Tids { min: cursor, max: self.max_tid, length: self.length }
            }
            Phase::Serials { cursor: (tid, oid) } => Range::Serials {
                min_tid: tid,
                min_oid: oid,
                max_tid: self.max_tid,
                length: self.length,
            },
        };
        self.asked = Some(range);
        self.answers.clear();
        Some((range, self.cells.iter().copied().collect()))
    }

    /// A storage's digests of the range asked.
    pub fn answered(&mut self, nid: NodeId, digests: Digests) {
        if self.asked.is_some() && self.cells.contains(&nid) {
            self.answers.insert(nid, digests);
            self.evaluate();
        }
    }

    /// A storage could not answer (it went away, or refused): it leaves the check.
    pub fn failed(&mut self, nid: NodeId, reason: &str) {
        if self.phase == Phase::Done || !self.cells.remove(&nid) {
            return;
        }
        self.answers.remove(&nid);
        self.findings.push(Finding {
            nid,
            at: None,
            bad: false,
            what: format!("not checked: {reason}"),
        });
        if self.cells.is_empty() {
            self.phase = Phase::Done;
            self.asked = None;
        } else {
            self.evaluate();
        }
    }

    /// Once every cell answered: damage, then the comparison.
    fn evaluate(&mut self) {
        let Some(range) = self.asked else { return };
        if self.cells.iter().any(|nid| !self.answers.contains_key(nid)) {
            return;
        }
        self.asked = None;
        let serials = matches!(range, Range::Serials { .. });
        let damaged: Vec<(NodeId, (Tid, Oid))> =
            self.answers.iter().filter_map(|(&nid, d)| Some((nid, d.damaged?))).collect();
        for (nid, (tid, oid)) in damaged {
            if serials {
                self.leave(
                    nid,
                    Some((tid, Some(oid))),
                    true,
                    format!("object {oid} at {tid}: its data does not match its checksum"),
                );
            } else {
                self.leave(
                    nid,
                    Some((tid, None)),
                    true,
                    format!("transaction {tid}: its record does not match its checksum"),
                );
            }
        }
        if self.cells.is_empty() {
            self.phase = Phase::Done;
            return;
        }
        let first = self.answers.values().next().expect("a cell left").compared();
        if self.answers.values().all(|d| d.compared() == first) {
            let (count, _, last) = first;
            match last {
                Some(last) if count >= self.length => self.advance_past(last),
                _ => self.end_phase(),
            }
            return;
        }
        if self.length > 1 {
            self.length /= 2;
            return;
        }
        self.judge(serials);
        self.length = CHECK_LENGTH;
    }

    /// Removes a cell from the comparison, with a finding.
    fn leave(&mut self, nid: NodeId, at: Option<(Tid, Option<Oid>)>, bad: bool, what: String) {
        self.cells.remove(&nid);
        self.answers.remove(&nid);
        self.findings.push(Finding { nid, at, bad, what });
    }

    fn advance_past(&mut self, (tid, oid): (Tid, Oid)) {
        self.phase = match self.phase {
            Phase::Tids { .. } => match tid.0.checked_add(1) {
                Some(next) if Tid(next) <= self.max_tid => Phase::Tids { cursor: Tid(next) },
                _ => Phase::Serials { cursor: (self.min_tid, Oid(0)) },
            },
            Phase::Serials { .. } => match next_key((tid, oid)) {
                Some(next) if next.0 <= self.max_tid => Phase::Serials { cursor: next },
                _ => Phase::Done,
            },
            Phase::Done => Phase::Done,
        };
    }

    fn end_phase(&mut self) {
        self.length = CHECK_LENGTH;
        self.phase = match self.phase {
            Phase::Tids { .. } => Phase::Serials { cursor: (self.min_tid, Oid(0)) },
            Phase::Serials { .. } | Phase::Done => Phase::Done,
        };
    }

    /// One item each (or none) differs: the bad cells leave the comparison.
    fn judge(&mut self, serials: bool) {
        let item = |d: &Digests| d.last.filter(|_| d.count > 0);
        let describe = |(tid, oid): (Tid, Oid)| {
            if serials { format!("object {oid} at {tid}") } else { format!("transaction {tid}") }
        };
        let at = |(tid, oid): (Tid, Oid)| Some((tid, serials.then_some(oid)));
        // The first item any cell holds there: where they differ.
        let first = self.answers.values().filter_map(item).min();
        let mut groups: BTreeMap<_, Vec<NodeId>> = BTreeMap::new();
        for (&nid, digests) in &self.answers {
            groups.entry(digests.compared()).or_default().push(nid);
        }
        let good: Option<Vec<NodeId>> = match self.reference {
            Some(reference) => {
                let key = self.answers[&reference].compared();
                Some(groups[&key].clone())
            }
            None => {
                let largest = groups.values().map(Vec::len).max().unwrap_or(0);
                let mut majority = groups.values().filter(|g| g.len() == largest);
                match (majority.next(), majority.next()) {
                    (Some(group), None) => Some(group.clone()),
                    // No majority: those holding the first item are good, if not everyone.
                    _ => {
                        let holders: Vec<NodeId> = self
                            .answers
                            .iter()
                            .filter(|(_, d)| item(d) == first)
                            .map(|(&nid, _)| nid)
                            .collect();
                        (holders.len() < self.answers.len()).then_some(holders)
                    }
                }
            }
        };
        let Some(good) = good else {
            // The same record everywhere, different data, no majority: reported, not judged.
            let place = first.map_or_else(|| "here".to_owned(), describe);
            for nid in self.cells.clone() {
                self.leave(
                    nid,
                    first.and_then(at),
                    false,
                    format!(
                        "{place}: the copies differ and no majority tells which is right (check again with a reference)"
                    ),
                );
            }
            self.phase = Phase::Done;
            return;
        };
        let good_item = item(&self.answers[&good[0]]);
        let bad: Vec<NodeId> =
            self.answers.keys().copied().filter(|nid| !good.contains(nid)).collect();
        for nid in bad {
            let mine = item(&self.answers[&nid]);
            let (key, what) = match (mine, good_item) {
                (Some(m), Some(g)) if m == g => {
                    (Some(m), format!("{}: the data differs", describe(m)))
                }
                (Some(m), Some(g)) if m < g => {
                    (Some(m), format!("{}: not in the good copies", describe(m)))
                }
                (_, Some(g)) => (Some(g), format!("{}: missing", describe(g))),
                (Some(m), None) => (Some(m), format!("{}: not in the good copies", describe(m))),
                // Nothing on either side, yet different digests: a confused storage.
                (None, None) => (None, "its digests of nothing differ from the others'".to_owned()),
            };
            self.leave(nid, key.and_then(at), true, what);
        }
    }
}

/// The key right after `key` in (serial, oid) order.
fn next_key((serial, oid): (Tid, Oid)) -> Option<(Tid, Oid)> {
    match oid.0.checked_add(1) {
        Some(next) => Some((serial, Oid(next))),
        None => Some((Tid(serial.0.checked_add(1)?), Oid(0))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::NodeType;

    fn storage(number: u32) -> NodeId {
        NodeId::new(NodeType::Storage, number)
    }

    /// A storage's copy of a partition: tids, and object records (serial, oid, data crc),
    /// with the records whose data is damaged.
    #[derive(Clone, Default)]
    struct Copy {
        tids: Vec<Tid>,
        records: Vec<(Tid, Oid, u32)>,
        damaged: BTreeSet<(Tid, Oid)>,
    }

    fn digest(parts: impl Iterator<Item = Vec<u8>>) -> Digest {
        let mut sha = sha1_smol::Sha1::new();
        for part in parts {
            sha.update(&part);
        }
        Digest(sha.digest().bytes())
    }

    impl Copy {
        fn of(tids: &[u64], objects: &[(u64, u64)]) -> Copy {
            Copy {
                tids: tids.iter().map(|&t| Tid(t)).collect(),
                records: objects
                    .iter()
                    .map(|&(t, o)| (Tid(t), Oid(o), (t * 31 + o) as u32))
                    .collect(),
                damaged: BTreeSet::new(),
            }
        }

        /// What a storage answers (as `LogStore::check_tid_range` / `check_serial_range`).
        fn answer(&self, range: Range) -> Digests {
            match range {
                Range::Tids { min, max, length } => {
                    let tids: Vec<Tid> = self
                        .tids
                        .iter()
                        .copied()
                        .filter(|&t| min <= t && t <= max)
                        .take(length as usize)
                        .collect();
                    let empty = digest(std::iter::empty());
                    Digests {
                        count: tids.len() as u32,
                        digests: [
                            digest(tids.iter().map(|t| t.0.to_be_bytes().to_vec())),
                            empty,
                            empty,
                        ],
                        last: tids.last().map(|&t| (t, Oid(0))),
                        damaged: None,
                    }
                }
                Range::Serials { min_tid, min_oid, max_tid, length } => {
                    let records: Vec<(Tid, Oid, u32)> = self
                        .records
                        .iter()
                        .copied()
                        .filter(|&(t, o, _)| (min_tid, min_oid) <= (t, o) && t <= max_tid)
                        .take(length as usize)
                        .collect();
                    let crc = |&(t, o, c): &(Tid, Oid, u32)| {
                        if self.damaged.contains(&(t, o)) { !c } else { c }
                    };
                    Digests {
                        count: records.len() as u32,
                        digests: [
                            digest(records.iter().map(|r| r.0.0.to_be_bytes().to_vec())),
                            digest(records.iter().map(|r| r.1.0.to_be_bytes().to_vec())),
                            digest(records.iter().map(|r| crc(r).to_be_bytes().to_vec())),
                        ],
                        last: records.last().map(|&(t, o, _)| (t, o)),
                        damaged: records
                            .iter()
                            .map(|&(t, o, _)| (t, o))
                            .find(|key| self.damaged.contains(key)),
                    }
                }
            }
        }
    }

    /// Runs a check to its end against the copies; also counts the asks.
    fn run(copies: &BTreeMap<NodeId, Copy>, reference: Option<NodeId>) -> (Vec<Finding>, usize) {
        let cells = copies.keys().copied().collect();
        let mut check = PartitionCheck::new(PartitionId(0), cells, reference, Tid(1), Tid(100_000));
        let mut asks = 0;
        while let Some((range, nids)) = check.next_ask() {
            asks += 1;
            assert!(asks < 10_000, "the check does not end");
            for nid in nids {
                check.answered(nid, copies[&nid].answer(range));
            }
        }
        assert!(check.is_done());
        (check.findings().to_vec(), asks)
    }

    fn many(count: u64) -> (Vec<u64>, Vec<(u64, u64)>) {
        let tids: Vec<u64> = (1..=count).map(|t| t * 3).collect();
        let objects = tids.iter().flat_map(|&t| [(t, t % 7), (t, 100 + t % 5)]).collect();
        (tids, objects)
    }

    #[test]
    fn identical_copies_check_clean_in_few_asks() {
        let (tids, objects) = many(10_000);
        let copy = Copy::of(&tids, &objects);
        let copies: BTreeMap<NodeId, Copy> = (1..=3).map(|n| (storage(n), copy.clone())).collect();
        let (findings, asks) = run(&copies, None);
        assert!(findings.is_empty(), "{findings:?}");
        // 10,000 tids and 20,000 records in chunks of 4,000 (and the empty last ones).
        assert!(asks <= 3 + 6, "{asks} asks");
    }

    #[test]
    fn a_copy_missing_a_transaction_is_the_bad_one_of_two() {
        let (tids, objects) = many(9_000);
        let good = Copy::of(&tids, &objects);
        let mut bad = good.clone();
        bad.tids.retain(|&t| t != Tid(3 * 5_001));
        bad.records.retain(|&(t, _, _)| t != Tid(3 * 5_001));
        for (first, second) in [(good.clone(), bad.clone()), (bad.clone(), good.clone())] {
            let copies = BTreeMap::from([(storage(1), first), (storage(2), second)]);
            let (findings, _) = run(&copies, None);
            let lacking =
                if copies[&storage(1)].tids.len() < 9_000 { storage(1) } else { storage(2) };
            assert_eq!(findings.len(), 1, "{findings:?}");
            assert_eq!(findings[0].nid, lacking);
            assert!(findings[0].bad);
            assert_eq!(findings[0].at, Some((Tid(3 * 5_001), None)), "{findings:?}");
            assert!(findings[0].what.contains("missing"), "{findings:?}");
        }
    }

    #[test]
    fn damaged_data_names_its_cell_even_alone() {
        let (tids, objects) = many(2_000);
        let mut damaged = Copy::of(&tids, &objects);
        damaged.damaged.insert((Tid(3 * 1_500), Oid(1_500 * 3 % 7)));
        let (findings, _) = run(&BTreeMap::from([(storage(1), damaged.clone())]), None);
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].at, Some((Tid(4_500), Some(Oid(4_500 % 7)))));
        assert!(findings[0].bad && findings[0].what.contains("checksum"), "{findings:?}");
        // Beside a good copy: the damaged one only.
        let good = Copy::of(&tids, &objects);
        let copies = BTreeMap::from([(storage(1), good), (storage(2), damaged)]);
        let (findings, _) = run(&copies, None);
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert_eq!(findings[0].nid, storage(2));
    }

    /// Two cells bad in different ways among three: the majority names both, and each at
    /// its own first difference.
    #[test]
    fn the_majority_names_every_bad_cell() {
        let (tids, objects) = many(3_000);
        let good = Copy::of(&tids, &objects);
        let mut extra = good.clone();
        extra.records.push((Tid(3 * 2_000), Oid(55), 1));
        extra.records.sort();
        let mut changed = good.clone();
        changed.records[100].2 ^= 1;
        let copies = BTreeMap::from([
            (storage(1), extra),
            (storage(2), good.clone()),
            (storage(3), good.clone()),
        ]);
        let (findings, _) = run(&copies, None);
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert_eq!(
            (findings[0].nid, findings[0].at),
            (storage(1), Some((Tid(6_000), Some(Oid(55)))))
        );
        assert!(findings[0].what.contains("not in the good copies"), "{findings:?}");
        let key = changed.records[100];
        let copies =
            BTreeMap::from([(storage(1), good.clone()), (storage(2), changed), (storage(3), good)]);
        let (findings, _) = run(&copies, None);
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert_eq!((findings[0].nid, findings[0].at), (storage(2), Some((key.0, Some(key.1)))));
        assert!(findings[0].what.contains("data differs"), "{findings:?}");
    }

    #[test]
    fn without_majority_different_data_is_reported_unjudged_and_a_reference_decides() {
        let (tids, objects) = many(500);
        let good = Copy::of(&tids, &objects);
        let mut changed = good.clone();
        changed.records[10].2 ^= 1;
        let copies = BTreeMap::from([(storage(1), good), (storage(2), changed)]);
        let (findings, _) = run(&copies, None);
        assert_eq!(findings.len(), 2, "{findings:?}");
        assert!(findings.iter().all(|f| !f.bad), "{findings:?}");
        let (findings, _) = run(&copies, Some(storage(1)));
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert_eq!(findings[0].nid, storage(2));
        assert!(findings[0].bad);
        let (findings, _) = run(&copies, Some(storage(2)));
        assert_eq!(findings[0].nid, storage(1));
    }

    #[test]
    fn a_storage_that_goes_away_is_reported_unchecked_and_the_others_go_on() {
        let (tids, objects) = many(5_000);
        let copy = Copy::of(&tids, &objects);
        let cells = BTreeSet::from([storage(1), storage(2), storage(3)]);
        let mut check = PartitionCheck::new(PartitionId(0), cells, None, Tid(1), Tid(100_000));
        let (range, nids) = check.next_ask().unwrap();
        assert_eq!(nids.len(), 3);
        check.answered(storage(1), copy.answer(range));
        assert!(check.next_ask().is_none(), "answers awaited");
        check.failed(storage(3), "connection lost");
        check.answered(storage(2), copy.answer(range));
        while let Some((range, nids)) = check.next_ask() {
            assert_eq!(nids, vec![storage(1), storage(2)]);
            for nid in nids {
                check.answered(nid, copy.answer(range));
            }
        }
        assert!(check.is_done());
        assert_eq!(check.findings().len(), 1);
        assert!(!check.findings()[0].bad && check.findings()[0].what.contains("not checked"));
    }
}
