//! A storage core whose index file is damaged.
//!
//! Every entry of an index file carries its own checksum, checked by every lookup that
//! touches it, and by a scrub that walks the whole file in the background once the core is
//! in service (`scrub_index`), so that damage is found before a read needs the entry. A
//! damaged entry is never served, and it cannot be rebuilt from the file itself: an object
//! entry is the only place that says where its record lies in the log.
//!
//! So the core gets rid of the file by copying its partitions again from the other
//! storages: each readable cell is reported to the primary as damaged
//! (`NotifyPartitionCorrupted`), which marks it CORRUPTED and has it repaired, so that
//! the core drops it and replicates it from the start (`replicate::drop_repaired`); each
//! cell that is not readable is dropped and started over here, and so is every partition
//! the core has no cell of. Once every partition was dropped since the file was written,
//! the log store no longer reads the file at all (`logstore` `visible_base`), and the next
//! checkpoint writes a new one without it. A cell that is the last readable copy of its
//! partition cannot be repaired: it stays, its damaged entries refused, the rest served,
//! and its partition keeps the damaged file in use (each attempt says so in the log).

use std::rc::Rc;
use std::time::{Duration, Instant};

use wire::{CellState, PartitionId};

use super::Core;
use crate::net::Outgoing;

/// Entries checked between two yields to loads and commits.
const SCRUB_SLICE: usize = 4096;
/// How often a core whose damaged file is still in use tries again (a primary that was
/// not running, a last copy that now has a sibling).
const RETRY: Duration = Duration::from_secs(10);

/// `error` came from the log store: when it says the index file is damaged, the core
/// starts getting rid of the file (at most once every `RETRY`).
pub(super) fn store_failed(core: &Core, error: &logstore::StoreError) {
    if !matches!(error, logstore::StoreError::CorruptIndex { .. }) {
        return;
    }
    let now = Instant::now();
    if core.index_damage.get().is_some_and(|last| now.duration_since(last) < RETRY) {
        return;
    }
    core.index_damage.set(Some(now));
    tracing::error!(
        "{error}: the damaged entries are not served; every cell here is to be copied again from another storage (a cell with no other readable copy cannot be, and keeps the file in use)"
    );
    rebuild(core);
}

/// Reports every readable cell of this core as damaged, and drops every other partition
/// (each once: a cell copying again since is left to finish).
fn rebuild(core: &Core) {
    let (Some(me), Some(table)) = (core.me.get(), core.table.borrow().clone()) else {
        tracing::warn!("the index file will be replaced once this storage has a table");
        return;
    };
    let master = core.master.borrow().upgrade();
    let mut dropped = false;
    for (partition, row) in table.rows.iter().enumerate() {
        let id = PartitionId(partition as u32);
        if core.store.borrow().dropped_since_index(id) {
            continue;
        }
        let mine = row.iter().find(|c| c.nid == me && c.state != CellState::Discarded);
        if mine.is_some_and(|c| c.state.is_readable()) {
            if let Some(master) = &master {
                let notify = wire::NotifyPartitionCorrupted { partition: id, nids: vec![me] };
                let _ = master.try_send(Outgoing::Notify(notify.into()));
            }
            continue;
        }
        match super::replicate::drop_copy(core, id) {
            Ok(()) => dropped = true,
            Err(error) => tracing::error!("dropping partition {partition}: {error}"),
        }
    }
    if dropped {
        core.replication_wake.wake();
    }
}

/// Checks every entry of the index file in the background, once the core is in service;
/// damage found starts the rebuild, tried again every `RETRY` while the file is in use.
pub(super) async fn scrub_index(core: Rc<Core>) {
    while !core.in_service.get() {
        if core.stopping.get() {
            return;
        }
        glommio::timer::sleep(Duration::from_millis(200)).await;
    }
    let mut cursor = logstore::IndexScrub::default();
    let damaged_generation = loop {
        if core.stopping.get() {
            return;
        }
        let step = core.store.borrow().scrub_index(cursor, SCRUB_SLICE);
        match step {
            Ok(Some(next)) => cursor = next,
            Ok(None) => return,
            Err(error) => {
                let generation = core.store.borrow().index_generation();
                store_failed(&core, &error);
                break generation;
            }
        }
        glommio::yield_if_needed().await;
    };
    // Until a checkpoint no longer reads the damaged file.
    loop {
        glommio::timer::sleep(RETRY).await;
        if core.stopping.get() {
            return;
        }
        let generation = core.store.borrow().index_generation();
        if generation.is_none() || generation != damaged_generation {
            tracing::info!("the damaged index file is no longer used");
            return;
        }
        if core.in_service.get() {
            core.index_damage.set(None);
            tracing::warn!("the damaged index file is still in use: trying again");
            rebuild(&core);
            core.index_damage.set(Some(Instant::now()));
        }
    }
}
