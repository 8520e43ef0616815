//! Replication on a storage core, both ways. As the destination, a task of its own (in a
//! low-priority task queue, so that loads and commits keep their latency) carries out what
//! `crate::replication::Replication` decides: it asks the master what is in flight, copies
//! chunks of transactions and objects from a source storage (`AskFetchTransactions`,
//! `AskFetchObjects`, answered after a stream of `AddTransaction` / `AddObject` under the
//! request's id), makes each chunk durable with the cell's new position, and reports the
//! cell done. As the source, it answers those requests, also at low priority.
//!
//! Both sides list what they hold in a chunk; items both have are not compared, items only
//! the destination has are dropped there (`DeleteReplicated`). A chunk ends where either
//! side's list of `length` items ends, so that nothing inside it goes unseen.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use logstore::record::CellPosition;
use logstore::{LoadError, Metadata};
use wire::messages::{PackOrder, SerialOids};
use wire::{
    AcceptIdentification, Body, ErrorCode, Hello, Message, NodeId, NodeState, NodeType, Oid,
    PartitionId, RequestIdentification, Tid,
};

use super::{Core, refusal, settled};
use crate::master::{IDENTIFICATION_DEADLINE, socket_of};
use crate::net::{Connection, ConnectionError, Outbox, Outgoing, connect_within};
use crate::pt::PartitionTable;
use crate::replication::Step;

/// Items (transactions, or object records) in one chunk (NEO's 1000).
pub const CHUNK_ITEMS: u32 = 1000;

/// `CHUNK_ITEMS`, or fewer from `NEO_REPLICATION_CHUNK` (a test hook: small chunks make a
/// replication last long enough to be interrupted).
fn chunk_items() -> u32 {
    static ITEMS: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *ITEMS.get_or_init(|| {
        std::env::var("NEO_REPLICATION_CHUNK")
            .ok()
            .and_then(|items| items.parse::<u32>().ok())
            .map_or(CHUNK_ITEMS, |items| items.clamp(1, CHUNK_ITEMS))
    })
}
/// Object data in one chunk: the source ends a chunk early past it. A vote that follows a
/// chunk in the destination's log waits for the chunk's write: kept small.
const CHUNK_BYTES_MAX: usize = 1 << 20;
/// Replication's pacing while transactions are in flight on the core (see
/// `fetch_objects`): the core is left to them this many times as long as a chunk took
/// (from asking for it to its sync), at most `PACING_PAUSE_MAX`. Measured (`neo-bench
/// replication`, 2-core VM), pausing after the sync's time only: factor 1 kept 0.56 of the
/// commit rate without replication, 3 kept 0.70, 6 kept 0.83, the catch-up under load
/// going from 60 to 25 MiB/s; after the whole chunk's time, 6 keeps 0.88-0.94, the load p99
/// ~2.0 ms instead of ~2.5, the catch-up under load 18-20 MiB/s (both storages then shared
/// one CPU; alone, it is not paced).
const PACING_FACTOR: u32 = 6;
const PACING_PAUSE_MAX: Duration = Duration::from_millis(300);
/// Object data handled between two yields to the core's other task queues (loads and
/// commits): replication runs in bursts this size at most.
const YIELD_BYTES: usize = 64 << 10;
/// How long the destination waits for a frame of the source's.
const FETCH_DEADLINE: Duration = Duration::from_secs(30);
/// How long the destination waits for the master's `AnswerUnfinishedTransactions`.
const UNFINISHED_DEADLINE: Duration = Duration::from_secs(5);
/// Pause of an idle replicator between looks (it is also woken by what may give it work).
const IDLE_LOOK: Duration = Duration::from_secs(1);
/// Pause after a source failed.
const FAILED_SOURCE_PAUSE: Duration = Duration::from_millis(200);
/// Longest pause after sources failed in a row.
const FAILED_SOURCE_PAUSE_MAX: Duration = Duration::from_secs(2);
/// The id of the core's `AskUnfinishedTransactions` requests (recognised by their answer's
/// kind).
pub(super) const UNFINISHED_REQUEST: u32 = 2;

/// A wake-up for one waiting task that may also give up after a time: a wait keeps one
/// waker at most (replaced at each poll), so waits that time out leave nothing behind.
#[derive(Debug, Default)]
pub(super) struct Wake {
    woken: Cell<bool>,
    waiter: RefCell<Option<Waker>>,
}

impl Wake {
    pub(super) fn wake(&self) {
        self.woken.set(true);
        if let Some(waker) = self.waiter.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Resolves at the next `wake` (or one since the last wait), or after `timeout`.
    pub(super) async fn wait(&self, timeout: Duration) {
        let woken = std::future::poll_fn(|context| {
            if self.woken.replace(false) {
                return Poll::Ready(());
            }
            *self.waiter.borrow_mut() = Some(context.waker().clone());
            Poll::Pending
        });
        futures_lite::future::or(woken, glommio::timer::sleep(timeout)).await;
    }
}

/// Why fetching from a source failed.
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    #[error("store: {0}")]
    Store(#[from] logstore::StoreError),
    #[error("{0}")]
    Refused(String),
    #[error("the cluster left operation")]
    OutOfService,
}

impl From<wire::DecodeError> for FetchError {
    fn from(error: wire::DecodeError) -> FetchError {
        FetchError::Connection(error.into())
    }
}

/// The destination's task: replicates this core's out-of-date cells, one round after the
/// other, for as long as the core runs.
pub(super) async fn replicate_cells(core: Rc<Core>) {
    // Fetches that failed in a row: each pause is twice the last, up to
    // `FAILED_SOURCE_PAUSE_MAX` (a source that keeps failing, its copy damaged too, is not
    // asked five times a second forever).
    let mut failures: u32 = 0;
    loop {
        if core.stopping.get() {
            return;
        }
        match next_step(&core) {
            None | Some(Step::Idle) => core.replication_wake.wait(IDLE_LOOK).await,
            Some(Step::AskUnfinished { partition }) => ask_unfinished(&core, partition).await,
            Some(Step::Fetch { partition, source, from, to }) => {
                let fetched = fetch(&core, partition, source, from, to).await;
                if let Err(FetchError::OutOfService) = fetched {
                    continue;
                }
                match fetched {
                    Ok(()) => failures = 0,
                    Err(error) => {
                        let pause = (FAILED_SOURCE_PAUSE * 2u32.saturating_pow(failures.min(16)))
                            .min(FAILED_SOURCE_PAUSE_MAX);
                        failures = failures.saturating_add(1);
                        eprintln!(
                            "neo storage: replicating partition {} from {source}: {error}; trying again in {} ms",
                            partition.0,
                            pause.as_millis()
                        );
                        core.replication.borrow_mut().source_failed(partition, source);
                        glommio::timer::sleep(pause).await;
                    }
                }
            }
            Some(Step::Done { partition, tid }) => {
                report_done(&core, partition, tid);
                // The master answers with the table change (or not, and a new round
                // starts).
                core.replication_wake.wait(IDLE_LOOK).await;
            }
        }
    }
}

/// What the replication state machine says now, if the core is in service.
fn next_step(core: &Core) -> Option<Step> {
    if !core.in_service.get() {
        return None;
    }
    let me = core.me.get()?;
    let table = core.table.borrow().clone()?;
    let known = core.known.borrow();
    let running = |nid: NodeId| known.get(&nid).is_some_and(|n| n.state == NodeState::Running);
    Some(core.replication.borrow_mut().next(&table, me, running))
}

async fn ask_unfinished(core: &Core, partition: PartitionId) {
    core.unfinished.borrow_mut().take();
    let Some(master) = core.master.borrow().upgrade() else {
        core.replication_wake.wait(IDLE_LOOK).await;
        return;
    };
    let ask = wire::AskUnfinishedTransactions { partitions: vec![partition] };
    if master.try_send(Outgoing::Request(UNFINISHED_REQUEST, ask.into())).is_err() {
        return;
    }
    drop(master);
    let started = std::time::Instant::now();
    while started.elapsed() < UNFINISHED_DEADLINE {
        if let Some(answer) = core.unfinished.borrow_mut().take() {
            core.replication.borrow_mut().unfinished(partition, answer.max_tid, &answer.ttids);
            return;
        }
        core.replication_wake.wait(UNFINISHED_DEADLINE).await;
    }
}

/// Tells the master the cell is done, once this core's pack orders are applied to what it
/// copied too (a revision copied after a pack here would otherwise outlive it).
fn report_done(core: &Core, partition: PartitionId, tid: Tid) {
    if let Err(error) = repack(core) {
        eprintln!("neo storage: packing replicated data again: {error}; reporting later");
        return;
    }
    let Some(master) = core.master.borrow().upgrade() else { return };
    let done = wire::NotifyReplicationDone { partition, tid };
    if master.try_send(Outgoing::Notify(done.into())).is_ok() {
        eprintln!("neo storage: partition {} replicated up to {tid}", partition.0);
        core.replication.borrow_mut().reported(partition);
        core.copied.borrow_mut().remove(&partition);
    }
}

/// Applies again every pack order this core has carried out: packs are idempotent, and
/// revisions copied since are packed like the others.
fn repack(core: &Core) -> Result<(), logstore::StoreError> {
    let orders: Vec<PackOrder> = {
        let store = core.store.borrow();
        let metadata = store.metadata();
        let done = metadata.pack_completed;
        metadata
            .pack_orders
            .iter()
            .filter(|o| o.approved == Some(true) && done.is_some_and(|d| o.pack_id <= d))
            .cloned()
            .collect()
    };
    for order in orders {
        core.store.borrow_mut().pack(order.pack_tid, order.oids)?;
    }
    Ok(())
}

/// Connects to `source` as this storage.
async fn connect_source(core: &Core, source: NodeId) -> Result<Connection, FetchError> {
    let address = core
        .known
        .borrow()
        .get(&source)
        .and_then(|n| n.address.as_ref())
        .and_then(socket_of)
        .ok_or_else(|| FetchError::Refused(format!("no address known for {source}")))?;
    let cluster = core.store.borrow().metadata().cluster_name.clone();
    let stream = connect_within(address, IDENTIFICATION_DEADLINE).await?;
    let hello = Hello::new(NodeType::Storage, cluster.as_str());
    let mut connection =
        Connection::connect(stream, address, hello, IDENTIFICATION_DEADLINE, &[NodeType::Storage])
            .await?;
    let request = RequestIdentification {
        node_type: NodeType::Storage,
        nid: core.me.get(),
        address: None,
        cluster_name: cluster,
        id_timestamp: None,
        devpath: Vec::new(),
        read_only: false,
        backup: Vec::new(),
        new_nid: None,
    };
    connection.request(&request).await?;
    match connection.receive(Some(IDENTIFICATION_DEADLINE)).await?.message()? {
        Message::AcceptIdentification(AcceptIdentification { .. }) => Ok(connection),
        Message::Error(error) => Err(FetchError::Refused(error.message.to_string())),
        other => Err(FetchError::Refused(format!("unexpected {}", other.kind()))),
    }
}

/// Copies `partition`'s transactions and objects after `from` up to `to` from `source`,
/// chunk by chunk, each made durable with the cell's position before the next.
async fn fetch(
    core: &Core,
    partition: PartitionId,
    source: NodeId,
    from: Tid,
    to: Tid,
) -> Result<(), FetchError> {
    let mut connection = connect_source(core, source).await?;
    eprintln!(
        "neo storage: replicating partition {} from {source}, after {from} up to {to}",
        partition.0
    );
    let chunk = chunk_items();
    let mut position = from;
    report_progress(core, partition, position, to);
    loop {
        let min_tid = position.next();
        let have = core.store.borrow().tids_from(min_tid, to, chunk as usize, partition)?;
        let ask = wire::AskFetchTransactions {
            partition,
            length: chunk,
            min_tid,
            max_tid: to,
            have,
            want_pack_info: false,
        };
        let msg_id = connection.request(&ask).await?;
        let answer = loop {
            let frame = connection.receive(Some(FETCH_DEADLINE)).await?;
            if frame.msg_id != msg_id {
                continue;
            }
            match frame.message()? {
                Message::AddTransaction(added) => {
                    // Nothing is written once the cluster left operation (a truncation
                    // may be coming).
                    if !core.in_service.get() {
                        return Err(FetchError::OutOfService);
                    }
                    copy_transaction(core, added)?
                }
                Message::AnswerFetchTransactions(answer) => break answer,
                Message::Error(error) => {
                    return Err(FetchError::Refused(error.message.to_string()));
                }
                other => return Err(FetchError::Refused(format!("unexpected {}", other.kind()))),
            }
        };
        core.store.borrow_mut().delete_replicated(answer.delete, Vec::new())?;
        let bound = answer.next_tid.map_or(to, |next| Tid(next.0 - 1));
        fetch_objects(core, &mut connection, partition, (min_tid, bound), to).await?;
        // The chunk and the cell's position, durable together.
        if !core.in_service.get() {
            return Err(FetchError::OutOfService);
        }
        set_position(core, partition, bound)?;
        core.durable().await?;
        core.replication.borrow_mut().advanced(partition, bound);
        report_progress(core, partition, bound, to);
        if chunk < CHUNK_ITEMS {
            // Small chunks are a test's: each is reported.
            eprintln!("neo storage: partition {} replicated up to {bound} so far", partition.0);
        }
        position = bound;
        if answer.next_tid.is_none() {
            core.replication.borrow_mut().caught_up(partition);
            return Ok(());
        }
        // Another round of the loop may start if the cell changed meanwhile.
        if core.replication.borrow().replicating() != Some(partition) {
            return Ok(());
        }
        glommio::yield_if_needed().await;
    }
}

/// The object records of `partition` with serial in `min_tid ..= max_tid`.
async fn fetch_objects(
    core: &Core,
    connection: &mut Connection,
    partition: PartitionId,
    (min_tid, max_tid): (Tid, Tid),
    target: Tid,
) -> Result<(), FetchError> {
    let mut since_yield = 0;
    // The next chunk is asked for before this one is durable: the source reads and sends
    // it while this core syncs.
    let mut msg_id = ask_objects(core, connection, partition, (min_tid, Oid(0)), max_tid).await?;
    let mut chunk_began = std::time::Instant::now();
    loop {
        let answer = loop {
            let frame = connection.receive(Some(FETCH_DEADLINE)).await?;
            if frame.msg_id != msg_id {
                continue;
            }
            match frame.message()? {
                Message::AddObject(added) => {
                    if !core.in_service.get() {
                        return Err(FetchError::OutOfService);
                    }
                    let size = added.data.0.len();
                    *core.copied.borrow_mut().entry(partition).or_default() += size as u64;
                    core.store.borrow_mut().replicate_object(
                        added.oid,
                        added.serial,
                        added.compression,
                        added.data_crc,
                        added.data.0,
                        added.data_serial,
                    )?;
                    since_yield += size;
                    if since_yield >= YIELD_BYTES {
                        since_yield = 0;
                        glommio::executor().yield_task_queue_now().await;
                    }
                }
                Message::AnswerFetchObjects(answer) => break answer,
                Message::Error(error) => {
                    return Err(FetchError::Refused(error.message.to_string()));
                }
                other => return Err(FetchError::Refused(format!("unexpected {}", other.kind()))),
            }
        };
        core.store.borrow_mut().delete_replicated(Vec::new(), answer.delete)?;
        let next = answer.next_tid.zip(answer.next_oid);
        if let Some(cursor) = next {
            msg_id = ask_objects(core, connection, partition, cursor, max_tid).await?;
        }
        // Written now, a chunk's worth at a time: a vote behind it in the log then waits
        // for one chunk's write, not for everything copied since the last sync. While
        // transactions are in flight on this core, replication then pauses
        // `PACING_FACTOR` times as long as the chunk took: commits get most of the disk
        // and of the CPU.
        core.durable().await?;
        if !core.flights.borrow().is_empty() {
            let pause = chunk_began.elapsed() * PACING_FACTOR;
            glommio::timer::sleep(pause.min(PACING_PAUSE_MAX)).await;
        }
        chunk_began = std::time::Instant::now();
        let Some((cursor_tid, _)) = next else { return Ok(()) };
        // Operators see the bytes move within a chunk of transactions too (one chunk of
        // big transactions may be the whole partition): the objects before the cursor
        // are copied.
        let copied_up_to =
            Tid(cursor_tid.0.saturating_sub(1)).max(Tid(min_tid.0.saturating_sub(1)));
        report_progress(core, partition, copied_up_to, target);
        glommio::yield_if_needed().await;
    }
}

/// Asks `connection`'s source for the object records of `partition` from `(min_tid,
/// min_oid)` on up to `max_tid`, listing those this core has there; returns the request id.
async fn ask_objects(
    core: &Core,
    connection: &mut Connection,
    partition: PartitionId,
    (min_tid, min_oid): (Tid, Oid),
    max_tid: Tid,
) -> Result<u32, FetchError> {
    let chunk = chunk_items();
    let records =
        core.store.borrow().object_records(partition, chunk as usize, min_tid, max_tid, min_oid)?;
    let ask = wire::AskFetchObjects {
        partition,
        length: chunk,
        min_tid,
        max_tid,
        min_oid,
        have: group_by_serial(&records),
    };
    Ok(connection.request(&ask).await?)
}

/// Tells the master how far the cell is (`ctl print pt` shows it).
fn report_progress(core: &Core, partition: PartitionId, position: Tid, target: Tid) {
    let Some(master) = core.master.borrow().upgrade() else { return };
    let bytes = core.copied.borrow().get(&partition).copied().unwrap_or(0);
    let progress = wire::NotifyReplicationProgress { partition, position, target, bytes };
    let _ = master.try_send(Outgoing::Notify(progress.into()));
}

fn copy_transaction(core: &Core, added: wire::AddTransaction) -> Result<(), FetchError> {
    let meta = logstore::TransactionMeta {
        user: added.user,
        description: added.description,
        extension: added.extension,
        oids: added.oids,
        pack: added
            .pack
            .map(|order| wire::PackRequest { oids: order.oids, pack_tid: order.pack_tid }),
    };
    core.store.borrow_mut().replicate_transaction(added.tid, added.ttid, added.packed, meta)?;
    Ok(())
}

/// The cell's replication position in the metadata (durable with the next flush).
fn set_position(core: &Core, partition: PartitionId, tid: Tid) -> Result<(), logstore::StoreError> {
    let mut store = core.store.borrow_mut();
    let mut metadata: Metadata = store.metadata().clone();
    metadata.replication.retain(|p| p.partition != partition);
    metadata.replication.push(CellPosition { partition, tid });
    metadata.replication.sort_by_key(|p| p.partition);
    store.set_metadata(metadata)?;
    Ok(())
}

fn group_by_serial(records: &[(Tid, Oid)]) -> Vec<SerialOids> {
    let mut groups: Vec<SerialOids> = Vec::new();
    for &(serial, oid) in records {
        match groups.last_mut() {
            Some(group) if group.serial == serial => group.oids.push(oid),
            _ => groups.push(SerialOids { serial, oids: vec![oid] }),
        }
    }
    groups
}

/// The table changed: a cell of this core that became readable takes the locks of the
/// stores it took without (so that a later transaction waits for them, now that this cell
/// checks conflicts); a cell removed drops its data; the replicator looks again.
/// Before a new table is kept: the cells it repairs (CORRUPTED before, OUT_OF_DATE now)
/// lose their copy here, and replicate again from the start. Appended before the table, so
/// that no restart finds the new table without the drop.
pub(super) fn drop_repaired(core: &Core, before: Option<&PartitionTable>, after: &PartitionTable) {
    let Some(me) = core.me.get() else { return };
    for partition in 0..after.rows.len() {
        let state = |table: Option<&PartitionTable>| {
            table?.rows.get(partition)?.iter().find(|c| c.nid == me).map(|c| c.state)
        };
        if state(before) != Some(wire::CellState::Corrupted)
            || state(Some(after)) != Some(wire::CellState::OutOfDate)
        {
            continue;
        }
        match drop_copy(core, PartitionId(partition as u32)) {
            Ok(()) => {
                eprintln!(
                    "neo storage: partition {partition} is being repaired: its copy here is dropped and replicated again"
                );
            }
            Err(error) => eprintln!("neo storage: dropping partition {partition}: {error}"),
        }
    }
}

/// Drops this core's copy of `partition` (durably, with its replication position back at
/// the start): a cell of it replicates from the start; compaction reclaims the space.
pub(super) fn drop_copy(core: &Core, partition: PartitionId) -> Result<(), logstore::StoreError> {
    core.store.borrow_mut().drop_partition(partition)?;
    set_position(core, partition, Tid::ZERO)?;
    core.replication.borrow_mut().start_over(partition);
    super::compaction_due(core);
    Ok(())
}

pub(super) fn table_changed(core: &Core, before: Option<&PartitionTable>, after: &PartitionTable) {
    let Some(me) = core.me.get() else { return };
    fn cell(
        table: Option<&PartitionTable>,
        partition: usize,
        me: NodeId,
    ) -> Option<crate::pt::Cell> {
        let row = table?.rows.get(partition)?;
        row.iter().find(|c| c.nid == me).copied()
    }
    let partitions = after.partitions();
    for partition in 0..after.rows.len() {
        let (was, is) = (cell(before, partition, me), cell(Some(after), partition, me));
        let id = PartitionId(partition as u32);
        match (was, is) {
            (Some(was), Some(is)) if !was.state.is_readable() && is.state.is_readable() => {
                adopt_locks(core, id, partitions);
            }
            (Some(_), None) => {
                let dropped = core.store.borrow_mut().drop_partition(id);
                match dropped {
                    Ok(_) => {
                        super::compaction_due(core);
                        eprintln!(
                            "neo storage: partition {partition} left this core: its data is dropped"
                        )
                    }
                    Err(error) => eprintln!("neo storage: dropping partition {partition}: {error}"),
                }
            }
            _ => {}
        }
    }
    core.replication_wake.wake();
}

/// Locks, for each transaction in flight, the objects of `partition` it stored here while
/// the cell was out of date.
fn adopt_locks(core: &Core, partition: PartitionId, partitions: u32) {
    let pending = core.store.borrow().pending_oids();
    for (ttid, oids) in pending {
        for oid in oids.into_iter().filter(|oid| PartitionId::of(oid.0, partitions) == partition) {
            let base = super::current_serial(&core.store.borrow(), oid).ok().flatten();
            if !core.locks.borrow_mut().adopt(ttid, oid, base.unwrap_or(Tid::ZERO)) {
                eprintln!("neo storage: {oid} of {ttid}: locked by another transaction already");
            }
        }
    }
}

// ---- the source side ------------------------------------------------------------------

/// Whether this core holds a readable cell of `partition`.
/// Whether this core may serve `partition` as a replication source: a readable cell here,
/// and in service in the master's current session (the transactions verification commits
/// are made visible here before it is: a chunk served earlier could lack one).
fn serving(core: &Core, partition: PartitionId) -> Result<(), (ErrorCode, String)> {
    if !core.in_service.get() {
        return Err((ErrorCode::NotReady, "not in service yet".to_owned()));
    }
    if !readable_here(core, partition) {
        return Err((
            ErrorCode::NonReadableCell,
            format!("no readable cell of partition {} here", partition.0),
        ));
    }
    Ok(())
}

fn readable_here(core: &Core, partition: PartitionId) -> bool {
    let partitions = core.table.borrow().as_ref().map_or(0, PartitionTable::partitions);
    partition.0 < partitions && core.cell(u64::from(partition.0)).1
}

fn send(outbox: &Outbox, msg_id: u32, message: Message) -> bool {
    outbox.try_send(Outgoing::Answer(msg_id, message)).is_ok()
}

/// `AskFetchTransactions`: the partition's transactions in the chunk that the asker lacks
/// (streamed as `AddTransaction`), then those it has and this core has not.
pub(super) async fn serve_transactions(
    core: Rc<Core>,
    outbox: Rc<Outbox>,
    msg_id: u32,
    ask: wire::AskFetchTransactions,
) {
    let answer = transactions_chunk(&core, &outbox, msg_id, ask).await;
    answer_chunk(&outbox, msg_id, answer);
}

async fn transactions_chunk(
    core: &Core,
    outbox: &Outbox,
    msg_id: u32,
    ask: wire::AskFetchTransactions,
) -> Result<Message, (ErrorCode, String)> {
    let partition = ask.partition;
    serving(core, partition)?;
    // What is locked but not yet visible in the range would be missed.
    settled(core, |locks| locks.locked_between(ask.min_tid, ask.max_tid)).await;
    let length = ask.length.clamp(1, CHUNK_ITEMS) as usize;
    let store_error = |e| serving_failed(core, e);
    let mine = core
        .store
        .borrow()
        .tids_from(ask.min_tid, ask.max_tid, length, partition)
        .map_err(store_error)?;
    let mut have = ask.have;
    have.sort_unstable();
    have.retain(|&tid| ask.min_tid <= tid && tid <= ask.max_tid);
    let mut bound = ask.max_tid;
    if mine.len() == length {
        bound = bound.min(*mine.last().expect("full"));
    }
    if have.len() >= length {
        bound = bound.min(have[length - 1]);
    }
    let theirs: BTreeSet<Tid> = have.iter().copied().filter(|&t| t <= bound).collect();
    let ours: BTreeSet<Tid> = mine.iter().copied().filter(|&t| t <= bound).collect();
    for &tid in ours.difference(&theirs) {
        let found = core.store.borrow_mut().transaction(tid);
        if let Err(error @ logstore::StoreError::Corrupt { .. }) = &found {
            super::check::report_damage(core, partition, &format!("transaction {tid}: {error}"));
        }
        let info = found.map_err(store_error)?;
        let Some(info) = info else { continue };
        let add = wire::AddTransaction {
            tid,
            user: info.meta.user,
            description: info.meta.description,
            extension: info.meta.extension,
            packed: info.packed,
            ttid: info.ttid,
            oids: info.meta.oids,
            pack: info.meta.pack.map(|request| PackOrder {
                pack_id: tid,
                approved: None,
                partial: request.oids.is_some(),
                oids: request.oids,
                pack_tid: request.pack_tid,
            }),
        };
        if !send(outbox, msg_id, add.into()) {
            return Err((ErrorCode::ReplicationError, "the asker does not keep up".to_owned()));
        }
    }
    let delete = theirs.difference(&ours).copied().collect();
    let next_tid = (bound < ask.max_tid).then(|| bound.next());
    Ok(wire::AnswerFetchTransactions { next_tid, delete, completed_pack: None }.into())
}

/// `AskFetchObjects`: as `serve_transactions`, for object records, keyed (serial, oid);
/// a chunk also ends once it carries `CHUNK_BYTES_MAX` of data.
pub(super) async fn serve_objects(
    core: Rc<Core>,
    outbox: Rc<Outbox>,
    msg_id: u32,
    ask: wire::AskFetchObjects,
) {
    let answer = objects_chunk(&core, &outbox, msg_id, ask).await;
    answer_chunk(&outbox, msg_id, answer);
}

/// The end of a served chunk: its answer, or the refusal (logged).
fn answer_chunk(outbox: &Outbox, msg_id: u32, answer: Result<Message, (ErrorCode, String)>) {
    let message = answer.unwrap_or_else(|(code, reason)| {
        eprintln!("neo storage: serving replication: {reason}");
        refusal(code, reason)
    });
    send(outbox, msg_id, message);
}

async fn objects_chunk(
    core: &Core,
    outbox: &Outbox,
    msg_id: u32,
    ask: wire::AskFetchObjects,
) -> Result<Message, (ErrorCode, String)> {
    let partition = ask.partition;
    serving(core, partition)?;
    settled(core, |locks| locks.locked_between(ask.min_tid, ask.max_tid)).await;
    let length = ask.length.clamp(1, CHUNK_ITEMS) as usize;
    let start = (ask.min_tid, ask.min_oid);
    let end = (ask.max_tid, Oid(u64::MAX));
    let mine = core
        .store
        .borrow()
        .object_records(partition, length, ask.min_tid, ask.max_tid, ask.min_oid)
        .map_err(|e| serving_failed(core, e))?;
    let mut have: Vec<(Tid, Oid)> = ask
        .have
        .iter()
        .flat_map(|group| group.oids.iter().map(|&oid| (group.serial, oid)))
        .filter(|&key| start <= key && key <= end)
        .collect();
    have.sort_unstable();
    let mut bound = end;
    if mine.len() == length {
        bound = bound.min(*mine.last().expect("full"));
    }
    if have.len() >= length {
        bound = bound.min(have[length - 1]);
    }
    let theirs: BTreeSet<(Tid, Oid)> = have.into_iter().filter(|&k| k <= bound).collect();
    let mut sent_bytes = 0;
    for &(serial, oid) in mine.iter().filter(|&&k| k <= bound) {
        if theirs.contains(&(serial, oid)) {
            continue;
        }
        if sent_bytes >= CHUNK_BYTES_MAX {
            // Enough for one chunk: it ends before this record.
            bound = previous_key((serial, oid));
            break;
        }
        let revision = core.store.borrow_mut().replicated_revision(oid, serial);
        let (compression, data_crc, data, data_serial) = match revision {
            Ok(revision) => revision,
            // Packed away since it was listed: the asker may keep its copy, if any.
            Err(LoadError::OidNotFound(_) | LoadError::OidDoesNotExist(_)) => continue,
            Err(LoadError::Store(error)) => {
                if let logstore::StoreError::Corrupt { .. } = error {
                    super::check::report_damage(
                        core,
                        partition,
                        &format!("replicating {oid} at {serial}: {error}"),
                    );
                }
                super::index_damage::store_failed(core, &error);
                return Err((ErrorCode::ReplicationError, format!("{oid} at {serial}: {error}")));
            }
        };
        sent_bytes += data.len();
        if sent_bytes / YIELD_BYTES > (sent_bytes - data.len()) / YIELD_BYTES {
            glommio::executor().yield_task_queue_now().await;
        }
        let add = wire::AddObject {
            oid,
            serial,
            compression,
            data_crc,
            data_serial,
            data: wire::Payload(data),
        };
        if !send(outbox, msg_id, add.into()) {
            return Err((ErrorCode::ReplicationError, "the asker does not keep up".to_owned()));
        }
        glommio::yield_if_needed().await;
    }
    let ours: BTreeSet<(Tid, Oid)> = mine.into_iter().filter(|&k| k <= bound).collect();
    let delete: Vec<(Tid, Oid)> =
        theirs.into_iter().filter(|k| *k <= bound && !ours.contains(k)).collect();
    let (next_tid, next_oid) = match next_key(bound).filter(|&next| next <= end) {
        Some((tid, oid)) => (Some(tid), Some(oid)),
        None => (None, None),
    };
    Ok(wire::AnswerFetchObjects { next_tid, next_oid, delete: group_by_serial(&delete) }.into())
}

/// A store error met while serving a chunk, as the refusal says it (a damaged index file
/// is acted on).
fn serving_failed(core: &Core, error: logstore::StoreError) -> (ErrorCode, String) {
    super::index_damage::store_failed(core, &error);
    (ErrorCode::ReplicationError, error.to_string())
}

/// The key right after `key` in (serial, oid) order.
fn next_key((serial, oid): (Tid, Oid)) -> Option<(Tid, Oid)> {
    match oid.0.checked_add(1) {
        Some(next) => Some((serial, Oid(next))),
        None => serial.0.checked_add(1).map(|next| (Tid(next), Oid(0))),
    }
}

/// The key right before `key` in (serial, oid) order.
fn previous_key((serial, oid): (Tid, Oid)) -> (Tid, Oid) {
    match oid.0.checked_sub(1) {
        Some(previous) => (serial, Oid(previous)),
        None => (Tid(serial.0.saturating_sub(1)), Oid(u64::MAX)),
    }
}
