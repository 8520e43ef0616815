//! A storage core's side of replica checks and of damage found on reads.
//!
//! The primary drives a check (`crate::check`): it asks each readable cell's core for the
//! digests of a range (`AskCheckTidRange`, `AskCheckSerialRange`) and compares them. A core
//! computes them in the low-priority task queue, a few records at a time, reading every
//! record's data and checking it against its checksum.
//!
//! Data that does not match its checksum, found by any read (a load, a replication source,
//! a check), is never served: the core says so in its log and reports its cell to the
//! primary (`NotifyPartitionCorrupted`), which marks it CORRUPTED and has it copied again
//! from a good one, when there is one.

use std::rc::Rc;

use logstore::SerialCheck;
use wire::{ErrorCode, Message, Oid, PartitionId, Tid};

use super::{Core, refusal};
use crate::net::{Outbox, Outgoing};

/// Most items a check asks about at once (the primary asks `crate::check::CHECK_LENGTH`).
const CHECK_ITEMS_MAX: u32 = 100_000;
/// Records digested between two yields to loads and commits.
const RECORDS_PER_SLICE: usize = 64;

/// Answers a check request of the primary's, computed off the core's main queue.
pub(super) async fn answer_check(core: Rc<Core>, outbox: Rc<Outbox>, msg_id: u32, ask: Message) {
    let answer = match ask {
        Message::AskCheckTidRange(ask) => tid_range(&core, ask),
        Message::AskCheckSerialRange(ask) => serial_range(&core, ask).await,
        _ => return,
    };
    let message = answer.unwrap_or_else(|reason| {
        tracing::warn!("replica check: {reason}");
        refusal(ErrorCode::CheckingError, reason)
    });
    let _ = outbox.try_send(Outgoing::Answer(msg_id, message));
}

/// A store error, as the refusal says it (a damaged index file is acted on).
fn failed(core: &Core, error: &logstore::StoreError) -> String {
    super::index_damage::store_failed(core, error);
    error.to_string()
}

fn readable(core: &Core, partition: PartitionId) -> Result<(), String> {
    match super::partition_refusal(core, partition) {
        None => Ok(()),
        Some(_) => Err(format!("no readable cell of partition {} here", partition.0)),
    }
}

fn tid_range(core: &Core, ask: wire::AskCheckTidRange) -> Result<Message, String> {
    readable(core, ask.partition)?;
    let length = ask.length.clamp(1, CHECK_ITEMS_MAX) as usize;
    let check = core
        .store
        .borrow_mut()
        .check_tid_range(ask.partition, length, ask.min_tid, ask.max_tid)
        .map_err(|e| failed(core, &e))?;
    if let Some(tid) = check.damaged {
        report_damage(
            core,
            ask.partition,
            &format!("transaction {tid}: its record does not match its checksum"),
        );
    }
    Ok(wire::AnswerCheckTidRange {
        count: check.count,
        digest: check.digest,
        max_tid: check.last.unwrap_or(Tid::ZERO),
        damaged_tid: check.damaged,
    }
    .into())
}

async fn serial_range(core: &Core, ask: wire::AskCheckSerialRange) -> Result<Message, String> {
    readable(core, ask.partition)?;
    let length = ask.length.clamp(1, CHECK_ITEMS_MAX) as usize;
    let records = core
        .store
        .borrow()
        .object_records(ask.partition, length, ask.min_tid, ask.max_tid, ask.min_oid)
        .map_err(|e| failed(core, &e))?;
    let mut check = SerialCheck::default();
    for slice in records.chunks(RECORDS_PER_SLICE) {
        core.store.borrow_mut().check_records(&mut check, slice).map_err(|e| failed(core, &e))?;
        glommio::yield_if_needed().await;
    }
    let check = check.finish();
    if let Some((serial, oid)) = check.damaged {
        report_damage(
            core,
            ask.partition,
            &format!("object {oid} at {serial}: its data does not match its checksum"),
        );
    }
    Ok(wire::AnswerCheckSerialRange {
        count: check.count,
        tid_digest: check.tid_digest,
        max_tid: check.max_tid.unwrap_or(Tid::ZERO),
        oid_digest: check.oid_digest,
        max_oid: check.max_oid.unwrap_or(Oid(0)),
        data_digest: check.data_digest,
        damaged_tid: check.damaged.map(|(serial, _)| serial),
        damaged_oid: check.damaged.map(|(_, oid)| oid),
    }
    .into())
}

/// This core read data of `partition` that does not match its checksum: logged, and the
/// cell reported to the primary (which repairs it from a good copy, if there is one).
pub(super) fn report_damage(core: &Core, partition: PartitionId, what: &str) {
    let Some(me) = core.me.get() else { return };
    tracing::error!(
        "partition {}: {what}: the damaged copy is not served; reported to the master",
        partition.0
    );
    if let Some(master) = core.master.borrow().upgrade() {
        let notify = wire::NotifyPartitionCorrupted { partition, nids: vec![me] };
        let _ = master.try_send(Outgoing::Notify(notify.into()));
    }
}
