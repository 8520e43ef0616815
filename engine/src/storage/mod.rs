//! A storage core's driver. It keeps its node id and its copy of the partition table in its
//! log store, identifies to the primary master (reconnecting when the master goes away),
//! answers recovery and follows the table's changes. It listens for other nodes, admits only
//! those the primary has told it of, and serves clients: loads, stores under object locks
//! (`locks`), votes made durable by the core's group commit (one fdatasync for every
//! transaction that voted meanwhile), and the master's lock, unlock and abort orders.
//!
//! Every request runs as its own task, so that a store waiting for a lock or a vote waiting
//! for its fdatasync holds up nothing else; answers go out through the connection's writer
//! task (`net::spawn_writer`).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use glommio::net::TcpListener;
use logstore::uring::{DurableWatch, Notify, UringFiles, flush_loop};
use logstore::{LoadError, LogPosition, LogStore, Metadata, Options, TransactionMeta, Value};
use wire::messages::NodeInfo;
use wire::{
    AcceptIdentification, Body, ErrorCode, Hello, Message, NodeId, NodeState, NodeType,
    NotifyReady, Oid, PartitionId, Pong, RequestIdentification, StoreOutcome, Text, Tid,
};

use crate::cluster::{Refusal, refuse};
use crate::locks::{Acquire, Locks};
use crate::master::{
    FindPrimaryError, IDENTIFICATION_DEADLINE, address_of, identify_to_primary,
    partition_table_answer, table_of, to_error,
};
use crate::net::{Connection, ConnectionError, Outbox, Outgoing, spawn_writer};
use crate::pt::PartitionTable;
use crate::replication::Replication;

mod check;
mod index_damage;
mod replicate;

/// Wait between attempts to reach the master.
const RECONNECT_DELAY: Duration = Duration::from_millis(500);
/// Wait before the first attempt after losing a master this core was identified to: a
/// secondary is probably taking over, and the cluster waits for its storages.
const REJOIN_DELAY: Duration = Duration::from_millis(20);

#[derive(Clone, Debug)]
pub struct StorageOptions {
    pub cluster: String,
    /// Every master's address: the primary is found among them.
    pub masters: Vec<SocketAddr>,
    pub data: PathBuf,
    /// Topology label: the partition table never puts two copies on one host.
    pub host: String,
    /// Where this core listens for other nodes (port 0: any free port). The address goes
    /// into the node list, so it must be one the other nodes can reach.
    pub listen: SocketAddr,
    /// Where this core serves its figures to Prometheus (`GET /metrics`), if anywhere.
    pub metrics: Option<SocketAddr>,
}

/// Most messages queued for one connection before it is dropped.
const OUTBOX_SIZE_MAX: usize = 4096;
/// Shares of the replication task queue against the default queue's 1000: a core busy with
/// loads and commits gives replication about 1% of its time.
const REPLICATION_SHARES: usize = 10;
/// Aborted ttids remembered, so that a store arriving after its abort takes no lock.
const ABORTED_REMEMBERED: usize = 4096;

/// Why a storage core stopped.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("store: {0}")]
    Store(#[from] logstore::StoreError),
    #[error("the master refused this node: {0}")]
    Refused(String),
    #[error("listening on {0}: {1}")]
    Listen(SocketAddr, String),
}

/// A counter that tasks wait on for "something changed" (a lock released, a store
/// answered): every wait resolves at the next bump after it looked.
#[derive(Debug, Default)]
struct Changes {
    generation: Cell<u64>,
    waiters: RefCell<Vec<std::task::Waker>>,
}

impl Changes {
    fn now(&self) -> u64 {
        self.generation.get()
    }

    fn bump(&self) {
        self.generation.set(self.generation.get() + 1);
        for waker in self.waiters.borrow_mut().drain(..) {
            waker.wake();
        }
    }

    /// Resolves once the generation differs from `seen`.
    async fn since(&self, seen: u64) {
        std::future::poll_fn(|context| {
            if self.generation.get() != seen {
                return std::task::Poll::Ready(());
            }
            self.waiters.borrow_mut().push(context.waker().clone());
            std::task::Poll::Pending
        })
        .await;
    }
}

/// A transaction that stored on this core.
#[derive(Debug)]
struct Flight {
    /// Stores (and checks, relocks) received and not yet answered: a vote waits for them.
    storing: usize,
    /// Its client: when the primary reports it gone, its unvoted transaction is dropped
    /// (even under a ttid the master never handed out, which nobody else would abort).
    owner: Option<NodeId>,
    /// The connection it stores through: where its client hears that it must relock an
    /// object (deadlock avoidance).
    channel: std::rc::Weak<crate::net::Outbox>,
    /// Objects whose last store (or check, or relock) here was answered with a conflict
    /// and not stored again since: a vote is refused while there are any (a client may send
    /// its vote right behind its stores, before it has seen their answers).
    conflicted: BTreeSet<Oid>,
}

/// What the tasks of one storage core share.
struct Core {
    store: RefCell<LogStore>,
    locks: RefCell<Locks>,
    /// Lock releases and store answers: what waiting stores, loads and votes look for.
    changes: Changes,
    /// The log's durable position (published by the flusher).
    durable: DurableWatch,
    /// Wakes the flusher.
    flush: Notify,
    stop_flushing: Cell<bool>,
    /// Shutting down: no new checkpoint starts off the core.
    stopping: Cell<bool>,
    /// The nodes the primary has told this core of: who may connect.
    known: RefCell<BTreeMap<NodeId, NodeInfo>>,
    me: Cell<Option<NodeId>>,
    /// This core's copy of the table, as persisted.
    table: RefCell<Option<PartitionTable>>,
    /// Transactions that stored here, until unlocked or aborted.
    flights: RefCell<HashMap<Tid, Flight>>,
    aborted: RefCell<(HashSet<Tid>, VecDeque<Tid>)>,
    /// A task is carrying out pack orders (`run_packs`).
    packing: Cell<bool>,
    /// The connection to the primary of the current session (a task that outlives a
    /// session reports to the next primary).
    master: RefCell<std::rc::Weak<Outbox>>,
    /// A checkpoint task is running (`checkpoint_soon`): a stopping core waits for it.
    checkpointing: Cell<bool>,
    /// The master put this core in service (`StartOperation`) in the current session.
    in_service: Cell<bool>,
    /// Replication of this core's out-of-date cells (`replicate`): its decisions, what
    /// wakes its task, and the master's last `AnswerUnfinishedTransactions`.
    replication: RefCell<Replication>,
    replication_wake: replicate::Wake,
    unfinished: RefCell<Option<wire::AnswerUnfinishedTransactions>>,
    /// Object data copied by the replication round of each partition (reported).
    copied: RefCell<BTreeMap<PartitionId, u64>>,
    /// The low-priority task queue: replication, both ways, and compaction.
    background: glommio::TaskQueueHandle,
    /// Data died (a partition dropped, a pack, a truncation): compaction is due, and what
    /// wakes its task (`compact_when_due`).
    compaction_due: Cell<bool>,
    compaction_wake: replicate::Wake,
    /// The compaction task is copying or checkpointing: a stopping core waits for it.
    compacting: Cell<bool>,
    /// When this core last acted on a damaged index file (`index_damage`).
    index_damage: Cell<Option<std::time::Instant>>,
}

impl Core {
    /// Waits until everything appended so far is durable.
    async fn durable(&self) -> Result<(), logstore::StoreError> {
        let tail = self.store.borrow().tail();
        self.wait_durable(tail).await
    }

    /// Waits until the record before `end` is durable (the flusher is woken for it).
    async fn wait_durable(&self, end: LogPosition) -> Result<(), logstore::StoreError> {
        if self.store.borrow().durable() >= end {
            return Ok(());
        }
        self.flush.notify();
        self.durable.wait(LogPosition(end.0 - 1)).await
    }

    fn persist(&self, table: &PartitionTable) -> Result<(), logstore::StoreError> {
        let mut store = self.store.borrow_mut();
        let metadata = Metadata {
            ptid: Some(table.ptid),
            replicas: table.replicas,
            partitions: table.partitions(),
            partition_table: partition_table_answer(Some(table)).rows,
            ..store.metadata().clone()
        };
        store.set_metadata(metadata)?;
        *self.table.borrow_mut() = Some(table.clone());
        self.flush.notify();
        Ok(())
    }

    fn abort(&self, ttid: Tid) {
        if let Err(error) = self.store.borrow_mut().abort(ttid) {
            tracing::error!("abort {ttid}: {error}");
            return;
        }
        self.locks.borrow_mut().release(ttid);
        self.flights.borrow_mut().remove(&ttid);
        let mut aborted = self.aborted.borrow_mut();
        if aborted.0.insert(ttid) {
            aborted.1.push_back(ttid);
            if aborted.1.len() > ABORTED_REMEMBERED
                && let Some(old) = aborted.1.pop_front()
            {
                aborted.0.remove(&old);
            }
        }
        drop(aborted);
        self.changes.bump();
    }

    fn is_aborted(&self, ttid: Tid) -> bool {
        self.aborted.borrow().0.contains(&ttid)
    }

    /// This core's cell of `partition`: whether it has one, and whether it is readable.
    fn cell(&self, partition_of: u64) -> (bool, bool) {
        let (Some(table), Some(me)) = (&*self.table.borrow(), self.me.get()) else {
            return (false, false);
        };
        let partition = PartitionId::of(partition_of, table.partitions());
        let cell = table.rows.get(partition.0 as usize).and_then(|row| {
            row.iter().find(|c| c.nid == me && c.state != wire::CellState::Discarded)
        });
        (cell.is_some(), cell.is_some_and(|c| c.state.is_readable()))
    }
}

/// Runs a storage core: forever, unless its store fails or the master refuses it.
pub async fn serve(options: StorageOptions) -> Result<(), StorageError> {
    // This executor's lines are this storage core's, with the id it had (a restart).
    crate::logging::set_node("storage");
    let mut store = LogStore::open_directory(&options.data, log_options())?;
    if let Some(nid) = store.metadata().node_id {
        crate::logging::set_node_id(nid);
    }
    for skipped in &store.recovery_report().skipped_indexes {
        tracing::error!(
            "index file not used ({skipped}): the log is replayed instead, and the next checkpoint replaces it"
        );
    }
    if store.metadata().cluster_name.is_empty() {
        let metadata = Metadata {
            cluster_name: Text::from(options.cluster.as_str()),
            ..store.metadata().clone()
        };
        store.set_metadata(metadata)?;
        store.flush()?;
    } else if store.metadata().cluster_name.as_str() != options.cluster {
        return Err(StorageError::Refused(format!(
            "this data directory belongs to cluster {:?}, not {:?}",
            store.metadata().cluster_name.as_str(),
            options.cluster
        )));
    }
    if options.listen.ip().is_unspecified() {
        return Err(StorageError::Listen(
            options.listen,
            "give the address the other nodes reach this storage at, not a wildcard".to_owned(),
        ));
    }
    // A restart. Transactions stored but not voted died with their clients. Voted and
    // locked ones wait for the master's word (validate or abort; a locked one is always
    // validated). A lock is not made visible here: the master may have settled the
    // transaction while this storage was away only once it heard from it (`in_doubt`),
    // and a lock kept pending is what it hears.
    for (ttid, stage) in store.unfinished() {
        if stage == logstore::PendingStage::Stored {
            store.abort(ttid)?;
        }
    }
    store.flush()?;
    let listener = crate::net::listen(options.listen)
        .map_err(|error| StorageError::Listen(options.listen, error.to_string()))?;
    let address = listener
        .local_addr()
        .map_err(|error| StorageError::Listen(options.listen, error.to_string()))?;
    tracing::info!("listening on {address}");
    let _metrics = match options.metrics {
        Some(metrics) => {
            let listener = crate::net::listen(metrics)
                .map_err(|error| StorageError::Listen(metrics, error.to_string()))?;
            let bound = listener.local_addr().map_or(metrics, |a| a);
            tracing::info!("metrics on http://{bound}/metrics");
            Some(glommio::spawn_local(crate::metrics::serve_http(listener)))
        }
        None => None,
    };
    // Replication runs at a low priority: loads and commits keep their latency while a
    // cell catches up (or this core serves another's catch-up).
    let background = glommio::executor().create_task_queue(
        glommio::Shares::Static(REPLICATION_SHARES),
        glommio::Latency::NotImportant,
        "replication",
    );
    let replication = Replication::new(
        store.metadata().replication.iter().map(|position| (position.partition, position.tid)),
    );
    let locks = pending_locks(&store);
    let core = Rc::new(Core {
        table: RefCell::new(table(&store)),
        durable: DurableWatch::new(store.durable()),
        store: RefCell::new(store),
        locks: RefCell::new(locks),
        changes: Changes::default(),
        flush: Notify::default(),
        stop_flushing: Cell::new(false),
        stopping: Cell::new(false),
        known: RefCell::default(),
        me: Cell::new(None),
        flights: RefCell::default(),
        aborted: RefCell::default(),
        packing: Cell::new(false),
        master: RefCell::new(std::rc::Weak::new()),
        checkpointing: Cell::new(false),
        in_service: Cell::new(false),
        replication: RefCell::new(replication),
        replication_wake: replicate::Wake::default(),
        unfinished: RefCell::new(None),
        copied: RefCell::default(),
        background,
        compaction_due: Cell::new(false),
        compaction_wake: replicate::Wake::default(),
        compacting: Cell::new(false),
        index_damage: Cell::new(None),
    });
    crate::metrics::set_node("storage", "");
    {
        let core = Rc::downgrade(&core);
        let data = options.data.clone();
        crate::metrics::set_provider(Rc::new(move |figures| {
            let (mut log, mut index) = (0, 0);
            for entry in std::fs::read_dir(&data).into_iter().flatten().flatten() {
                let name = entry.file_name();
                let size = entry.metadata().map_or(0, |m| m.len());
                match name.to_str() {
                    Some(n) if n.ends_with(".log") => log += size,
                    Some(n) if n.ends_with(".index") => index += size,
                    _ => {}
                }
            }
            figures.gauge("log_bytes", log);
            figures.gauge("index_bytes", index);
            if let Some(core) = core.upgrade() {
                let replicating = core.replication.borrow().replicating().is_some();
                figures.gauge("cells_replicating", u64::from(replicating));
            }
        }));
    }
    let flusher = {
        let core = Rc::clone(&core);
        let mut files = UringFiles::new(options.data.clone());
        glommio::spawn_local(async move {
            let outcome = flush_loop(
                &core.store,
                &mut files,
                &core.durable,
                &core.flush,
                &core.stop_flushing,
                &|bytes, elapsed| {
                    crate::metrics::latency("fdatasync_seconds", elapsed);
                    crate::metrics::observe("flush_batch_bytes", bytes as u64);
                },
            )
            .await;
            let _ = files.close().await;
            outcome
        })
    };
    // Dropped (and so cancelled) when this function returns.
    let _accepting =
        glommio::spawn_local(accept_peers(listener, options.cluster.clone(), Rc::clone(&core)));
    let _replicating =
        glommio::spawn_local_into(replicate::replicate_cells(Rc::clone(&core)), background)
            .expect("the replication task queue belongs to this executor");
    let _compacting = glommio::spawn_local_into(compact_when_due(Rc::clone(&core)), background)
        .expect("the background task queue belongs to this executor");
    let _scrubbing =
        glommio::spawn_local_into(index_damage::scrub_index(Rc::clone(&core)), background)
            .expect("the background task queue belongs to this executor");
    let mut repeats = crate::repeats::Repeats::default();
    let outcome = loop {
        let outcome = futures_lite::future::or(session(&core, &options, address), async {
            crate::shutdown::wait().await;
            Ok(())
        })
        .await;
        let stopping = crate::shutdown::requested();
        // A session that got as far as identification lost a working master: try again
        // soon. One that never got there retries at the slower pace.
        let retry = if core.me.get().is_some() { REJOIN_DELAY } else { RECONNECT_DELAY };
        match outcome {
            _ if stopping => break Ok(()),
            Err(SessionError::Stopping) => break Ok(()),
            Ok(()) => {
                repeats.clear();
                glommio::timer::sleep(retry).await;
            }
            Err(SessionError::Refused(reason)) => break Err(StorageError::Refused(reason)),
            Err(SessionError::Store(error)) => break Err(error.into()),
            Err(error @ (SessionError::Connection(_) | SessionError::NotNow(_))) => {
                let line = format!(
                    "cluster {:?}, masters {:?}: {error}; retrying every {retry:?}",
                    options.cluster, options.masters
                );
                if let Some(line) = repeats.note(&line, std::time::Instant::now()) {
                    tracing::warn!("{line}");
                }
                glommio::timer::sleep(retry).await;
            }
        }
    };
    // A checkpoint running off the core needs the flusher to be installed: let it finish
    // before the flusher stops (the final checkpoint below would be refused meanwhile).
    let started = std::time::Instant::now();
    // (A checkpoint that failed is not waited for: its task has ended.)
    while (core.checkpointing.get() || core.compacting.get())
        && started.elapsed() < CHECKPOINT_PATIENCE
    {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    core.stopping.set(true);
    core.stop_flushing.set(true);
    core.flush.notify();
    let flushed = flusher.await;
    outcome?;
    flushed?;
    // Everything durable, and a checkpoint so that the next start maps the index.
    let mut store = core.store.borrow_mut();
    store.flush()?;
    // Everything is durable in the log: without a checkpoint, the next start replays more
    // of it (a damaged index file that is still in use fails every checkpoint).
    match store.checkpoint() {
        Ok(()) => tracing::info!("stopped cleanly"),
        Err(error) => tracing::error!(
            "stopped; the last checkpoint failed ({error}): the next start replays the log"
        ),
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    #[error(transparent)]
    Store(#[from] logstore::StoreError),
    #[error("refused: {0}")]
    Refused(String),
    /// The master cannot take this node now (its previous connection is not yet seen
    /// closed): tried again, as a master out of reach is.
    #[error("not now: {0}")]
    NotNow(String),
    #[error("the cluster is stopping")]
    Stopping,
}

fn table(store: &LogStore) -> Option<PartitionTable> {
    let metadata = store.metadata();
    metadata.ptid.map(|ptid| table_of(ptid, metadata.replicas, &metadata.partition_table))
}

async fn session(
    core: &Rc<Core>,
    options: &StorageOptions,
    address: SocketAddr,
) -> Result<(), SessionError> {
    // A new primary sends the whole node list again; until then nobody is admitted.
    core.known.borrow_mut().clear();
    core.me.set(None);
    core.in_service.set(false);
    core.replication.borrow_mut().restart();
    let identification = RequestIdentification {
        node_type: NodeType::Storage,
        nid: core.store.borrow().metadata().node_id,
        address: Some(address_of(address)),
        cluster_name: Text::from(options.cluster.as_str()),
        id_timestamp: None,
        devpath: vec![Text::from(options.host.as_str())],
        read_only: false,
        backup: Vec::new(),
        new_nid: None,
    };
    let found =
        identify_to_primary(&options.masters, NodeType::Storage, &options.cluster, &identification)
            .await;
    let (connection, accept) = match found {
        Ok(found) => found,
        Err(FindPrimaryError::Refused(refusal)) if refusal.code == ErrorCode::NotReady => {
            return Err(SessionError::NotNow(refusal.to_string()));
        }
        Err(FindPrimaryError::Refused(refusal)) => {
            return Err(SessionError::Refused(refusal.to_string()));
        }
        Err(FindPrimaryError::Connection(error)) => return Err(error.into()),
    };
    let nid = accept.your_nid;
    if nid != core.store.borrow().metadata().node_id {
        let metadata = Metadata { node_id: nid, ..core.store.borrow().metadata().clone() };
        core.store.borrow_mut().set_metadata(metadata)?;
        core.durable().await?;
    }
    if let Some(nid) = nid {
        crate::logging::set_node_id(nid);
    }
    tracing::info!("identified as {}", nid.map_or("?".into(), |n| n.to_string()));
    core.me.set(nid);
    crate::metrics::set_node("storage", &nid.map_or_else(String::new, |n| n.to_string()));
    // Transactions not voted belong to clients of the previous session: a new primary
    // knows nothing of them, and they would hold their locks forever.
    let unvoted: Vec<Tid> = core
        .store
        .borrow()
        .unfinished()
        .into_iter()
        .filter(|(_, stage)| *stage == logstore::PendingStage::Stored)
        .map(|(ttid, _)| ttid)
        .collect();
    for ttid in unvoted {
        core.abort(ttid);
    }
    let (mut reader, writer) = connection.split();
    let (outbox, _writing) = spawn_writer(writer, OUTBOX_SIZE_MAX);
    let outbox = Rc::new(outbox);
    *core.master.borrow_mut() = Rc::downgrade(&outbox);
    let answer = |msg_id: u32, message: Message| {
        if outbox.try_send(Outgoing::Answer(msg_id, message)).is_err() {
            tracing::warn!("the connection to the master does not keep up");
        }
    };
    loop {
        let frame = reader.receive().await?;
        match frame.message().map_err(ConnectionError::from)? {
            Message::AskLastIds(_) => {
                // A truncation this core keeps the order of happens now: every storage of
                // the table keeps it, and the cluster is verifying.
                let pending = core.store.borrow().metadata().truncate_tid;
                if let Some(tid) = pending {
                    truncate(core, tid)?;
                    core.durable().await?;
                }
                let (last_tid, last_oid, first_tid) = core.store.borrow().last_ids();
                answer(frame.msg_id, wire::AnswerLastIds { last_tid, last_oid, first_tid }.into());
            }
            Message::AskRecovery(_) => {
                let metadata = core.store.borrow().metadata().clone();
                let recovery = wire::AnswerRecovery {
                    ptid: metadata.ptid,
                    backup_tid: metadata.backup_tid,
                    truncate_tid: metadata.truncate_tid,
                };
                answer(frame.msg_id, recovery.into());
            }
            // `ctl truncate`: the order is kept durably; carried out at the next
            // `AskLastIds`, once every storage keeps it.
            Message::Truncate(order) => {
                let metadata = Metadata {
                    truncate_tid: Some(order.tid),
                    ..core.store.borrow().metadata().clone()
                };
                core.store.borrow_mut().set_metadata(metadata)?;
                core.durable().await?;
                tracing::info!("keeping the order to truncate after {}", order.tid);
                answer(frame.msg_id, wire::AnswerTruncate {}.into());
            }
            Message::AskPartitionTable(_) => {
                let table = core.table.borrow().clone();
                answer(frame.msg_id, partition_table_answer(table.as_ref()).into());
            }
            Message::SendPartitionTable(send) => {
                if let Some(ptid) = send.ptid {
                    let before = core.table.borrow().clone();
                    let table = table_of(ptid, send.num_replicas, &send.rows);
                    replicate::drop_repaired(core, before.as_ref(), &table);
                    core.persist(&table)?;
                    replicate::table_changed(core, before.as_ref(), &table);
                    core.durable().await?;
                }
            }
            Message::NotifyPartitionChanges(notify) => {
                let changes: Vec<crate::pt::Change> = notify
                    .changes
                    .iter()
                    .map(|c| crate::pt::Change {
                        partition: c.partition,
                        nid: c.nid,
                        state: c.state,
                    })
                    .collect();
                let current = core.table.borrow().clone();
                if let Some(mut current) = current {
                    let before = current.clone();
                    match current.apply(notify.ptid, notify.num_replicas, &changes) {
                        Ok(()) => {
                            replicate::drop_repaired(core, Some(&before), &current);
                            core.persist(&current)?;
                            replicate::table_changed(core, Some(&before), &current);
                        }
                        // A gap: ask again for the whole table at the next connection.
                        Err(error) => {
                            tracing::warn!("{error}; reconnecting");
                            return Ok(());
                        }
                    }
                }
            }
            Message::StartOperation(_) => {
                let _ = outbox.try_send(Outgoing::Notify(NotifyReady {}.into()));
                core.in_service.set(true);
                core.replication_wake.wake();
                // In service: the master hears how far this core packed, and this core
                // asks for the orders it missed while away.
                if let Some(pack_id) = core.store.borrow().metadata().pack_completed {
                    let done = wire::NotifyPackCompleted { pack_id };
                    let _ = outbox.try_send(Outgoing::Notify(done.into()));
                }
                ask_pack_orders(&outbox, Tid::ZERO);
            }
            Message::AskPackOrders(ask) => {
                let orders = core
                    .store
                    .borrow()
                    .metadata()
                    .pack_orders
                    .iter()
                    .filter(|order| order.pack_id >= ask.min_pack_id)
                    .cloned()
                    .collect();
                answer(frame.msg_id, wire::AnswerPackOrders { orders }.into());
            }
            Message::NotifyPackSigned(signed) => {
                let unknown = {
                    let store = core.store.borrow();
                    let known = &store.metadata().pack_orders;
                    signed
                        .approved
                        .iter()
                        .copied()
                        .filter(|id| !known.iter().any(|order| order.pack_id == *id))
                        .min()
                };
                match unknown {
                    Some(first) => ask_pack_orders(&outbox, first),
                    None => run_packs(core),
                }
            }
            Message::AnswerUnfinishedTransactions(answer) => {
                *core.unfinished.borrow_mut() = Some(answer);
                core.replication_wake.wake();
            }
            Message::AnswerPackOrders(answer) => {
                if learn_pack_orders(core, answer.orders)? {
                    core.durable().await?;
                }
                run_packs(core);
            }
            Message::NotifyClusterInformation(info) => {
                tracing::info!("cluster is {}", info.state);
                if info.state == wire::ClusterState::Stopping {
                    return Err(SessionError::Stopping);
                }
                // Out of operation (recovering, maybe truncating): replication waits for
                // the next `StartOperation`.
                if info.state != wire::ClusterState::Running {
                    core.in_service.set(false);
                    core.replication.borrow_mut().restart();
                }
            }
            Message::NotifyNodeInformation(info) => {
                {
                    let mut known = core.known.borrow_mut();
                    for node in info.nodes.iter() {
                        let Some(id) = node.nid else { continue };
                        if node.state == NodeState::Unknown {
                            known.remove(&id);
                        } else {
                            known.insert(id, node.clone());
                        }
                    }
                }
                // Clients gone: their transactions that did not vote are dropped.
                let gone: HashSet<NodeId> = info
                    .nodes
                    .iter()
                    .filter(|n| n.node_type == NodeType::Client)
                    .filter(|n| matches!(n.state, NodeState::Down | NodeState::Unknown))
                    .filter_map(|n| n.nid)
                    .collect();
                if !gone.is_empty() {
                    let orphans: Vec<Tid> = core
                        .flights
                        .borrow()
                        .iter()
                        .filter(|(_, flight)| flight.owner.is_some_and(|o| gone.contains(&o)))
                        .map(|(&ttid, _)| ttid)
                        .collect();
                    let unfinished: HashMap<Tid, logstore::PendingStage> =
                        core.store.borrow().unfinished().into_iter().collect();
                    for ttid in orphans {
                        // Voted: the master decides (it may be finishing it). Otherwise
                        // (stored, or only checked, or still waiting for a lock) dropped.
                        match unfinished.get(&ttid) {
                            Some(logstore::PendingStage::Stored) | None => core.abort(ttid),
                            Some(_) => {}
                        }
                    }
                }
                // A source may have come back.
                core.replication_wake.wake();
                let told = info.nodes.iter().find(|n| n.nid == nid);
                let gone = told.filter(|n| matches!(n.state, NodeState::Down | NodeState::Unknown));
                if let Some(node) = gone {
                    // `ctl kill` (DOWN) or `ctl drop` (UNKNOWN): an operator's order, carried
                    // out as a clean stop.
                    tracing::info!("the master set this node {}: stopping", node.state);
                    return Err(SessionError::Stopping);
                }
            }
            Message::AskLockInformation(ask) => {
                let (core, outbox) = (Rc::clone(core), Rc::clone(&outbox));
                glommio::spawn_local(async move {
                    let started = std::time::Instant::now();
                    let locked = lock(&core, ask.ttid, ask.tid).await;
                    crate::metrics::latency("lock_seconds", started.elapsed());
                    crate::metrics::count("locks", 1);
                    let message = match locked {
                        Ok(()) => wire::AnswerInformationLocked { ttid: ask.ttid }.into(),
                        Err(error) => {
                            tracing::error!("lock {}: {error}", ask.ttid);
                            refusal(ErrorCode::Denied, format!("lock {}: {error}", ask.ttid))
                        }
                    };
                    let _ = outbox.try_send(Outgoing::Answer(frame.msg_id, message));
                })
                .detach();
            }
            Message::NotifyUnlockInformation(unlock) => {
                let unlocked = core.store.borrow_mut().unlock(unlock.ttid);
                match unlocked {
                    Ok(()) => {
                        core.flights.borrow_mut().remove(&unlock.ttid);
                        core.locks.borrow_mut().release(unlock.ttid);
                        core.changes.bump();
                        core.flush.notify();
                        maybe_checkpoint(core);
                    }
                    Err(error) => tracing::error!("unlock {}: {error}", unlock.ttid),
                }
            }
            Message::AbortTransaction(abort) => core.abort(abort.ttid),
            Message::AskNodeStats(_) => {
                // Identified by now: this session began with the master's acceptance.
                let (figures, _, _) = crate::metrics::snapshot();
                let nodes = core.me.get().map(|me| figures.to_wire(me)).into_iter().collect();
                answer(frame.msg_id, wire::AnswerNodeStats { nodes }.into());
            }
            Message::AskLockedTransactions(_) => {
                let transactions = core
                    .store
                    .borrow()
                    .unfinished()
                    .into_iter()
                    .filter_map(|(ttid, stage)| match stage {
                        logstore::PendingStage::Locked(tid) => {
                            Some(wire::messages::LockedTransaction { ttid, tid: Some(tid) })
                        }
                        logstore::PendingStage::Voted => {
                            Some(wire::messages::LockedTransaction { ttid, tid: None })
                        }
                        logstore::PendingStage::Stored => None,
                    })
                    .collect::<Vec<_>>();
                for held in &transactions {
                    match held.tid {
                        Some(tid) => tracing::info!("holds {} locked as {tid}", held.ttid),
                        None => tracing::info!("holds {} voted", held.ttid),
                    }
                }
                answer(frame.msg_id, wire::AnswerLockedTransactions { transactions }.into());
            }
            // Verification: a transaction locked somewhere commits everywhere. Done before
            // the next message, so that the cluster runs only with it visible.
            Message::ValidateTransaction(validate) => {
                validate_transaction(core, validate.ttid, validate.tid).await?;
            }
            Message::Ping(_) => answer(frame.msg_id, Pong {}.into()),
            // Replica checks: in the low-priority queue, answered when computed.
            ask @ (Message::AskCheckTidRange(_) | Message::AskCheckSerialRange(_)) => {
                let checking =
                    check::answer_check(Rc::clone(core), Rc::clone(&outbox), frame.msg_id, ask);
                glommio::spawn_local_into(checking, core.background)
                    .expect("the replication task queue belongs to this executor")
                    .detach();
            }
            // Oids the primary will hand out: durable before the answer.
            Message::AskReserveOids(ask) => {
                let reserved = core.store.borrow_mut().reserve_oids(ask.oid)?;
                if let Some(position) = reserved {
                    core.wait_durable(position.advance(1)).await?;
                }
                answer(frame.msg_id, wire::AnswerReserveOids {}.into());
            }
            // A transaction another storage holds voted, in doubt: did this core commit it
            // (or lock it)? Only a core holding its metadata can tell once it is visible.
            Message::AskFinalTid(ask) => {
                let found = core.store.borrow().final_tid(ask.ttid);
                match found {
                    Ok(tid) => answer(frame.msg_id, wire::AnswerFinalTid { tid }.into()),
                    Err(error) => {
                        answer(frame.msg_id, refusal(ErrorCode::Denied, error.to_string()))
                    }
                }
            }
            Message::Error(error) => {
                tracing::warn!("master says {}: {}", error.code, error.message)
            }
            _ => {}
        }
    }
}

/// Drops everything committed after `tid` (the kept order of `ctl truncate`), clips the
/// replication positions to it, and forgets the order, in that order in the log.
fn truncate(core: &Core, tid: Tid) -> Result<(), logstore::StoreError> {
    let mut store = core.store.borrow_mut();
    store.truncate(tid)?;
    let mut metadata = store.metadata().clone();
    for position in &mut metadata.replication {
        position.tid = position.tid.min(tid);
    }
    metadata.truncate_tid = None;
    store.set_metadata(metadata)?;
    drop(store);
    core.replication.borrow_mut().clip(tid);
    compaction_due(core);
    tracing::info!("truncated: nothing after {tid} is left");
    Ok(())
}

/// The id of this core's requests to the master (only pack orders are asked; the answer
/// is recognised by its kind).
const PACK_ORDERS_REQUEST: u32 = 1;

fn ask_pack_orders(outbox: &Outbox, min_pack_id: Tid) {
    let ask = wire::AskPackOrders { min_pack_id };
    let _ = outbox.try_send(Outgoing::Request(PACK_ORDERS_REQUEST, ask.into()));
}

/// Keeps the orders this core did not know in its metadata. Returns whether it changed.
fn learn_pack_orders(
    core: &Core,
    orders: Vec<wire::messages::PackOrder>,
) -> Result<bool, logstore::StoreError> {
    let mut store = core.store.borrow_mut();
    let mut metadata = store.metadata().clone();
    let before = metadata.pack_orders.len();
    for order in orders {
        if !metadata.pack_orders.iter().any(|known| known.pack_id == order.pack_id) {
            metadata.pack_orders.push(order);
        }
    }
    if metadata.pack_orders.len() == before {
        return Ok(false);
    }
    metadata.pack_orders.sort_by_key(|order| order.pack_id);
    store.set_metadata(metadata)?;
    Ok(true)
}

/// The oldest approved order this core has not packed yet.
fn next_pack(metadata: &Metadata) -> Option<wire::messages::PackOrder> {
    metadata
        .pack_orders
        .iter()
        .filter(|order| order.approved == Some(true))
        .find(|order| metadata.pack_completed.is_none_or(|done| order.pack_id > done))
        .cloned()
}

/// Longest pause between attempts at a pack refused while a transaction locked at or
/// before its tid is not yet visible (its unlock is on its way, or comes with the next
/// primary's verification).
const PACK_RETRY_MAX: Duration = Duration::from_millis(100);

/// Carries out the approved orders not yet packed here, in id order, in a task of its own
/// (one at a time): each is a pack record (loads filter through it until the next
/// checkpoint bakes it in), then the metadata saying it is done; once durable, the master
/// hears of it. A checkpoint follows, so that loads go back to their fast path.
fn run_packs(core: &Rc<Core>) {
    if core.packing.replace(true) {
        // The running task looks for more orders before it ends.
        return;
    }
    let core = Rc::clone(core);
    glommio::spawn_local(async move {
        let mut packed = false;
        let mut pause = Duration::from_millis(1);
        loop {
            if core.stopping.get() {
                break;
            }
            let Some(order) = next_pack(core.store.borrow().metadata()) else { break };
            let outcome = core.store.borrow_mut().pack(order.pack_tid, order.oids.clone());
            match outcome {
                Ok(_) => {}
                // A transaction locked at or before the pack tid is not yet visible.
                Err(logstore::StoreError::Invalid(_)) => {
                    glommio::timer::sleep(pause).await;
                    pause = (pause * 2).min(PACK_RETRY_MAX);
                    continue;
                }
                Err(error) => {
                    tracing::error!("pack {}: {error}", order.pack_id);
                    break;
                }
            }
            let done = {
                let mut store = core.store.borrow_mut();
                let metadata =
                    Metadata { pack_completed: Some(order.pack_id), ..store.metadata().clone() };
                store.set_metadata(metadata)
            };
            let durable = match done {
                Ok(_) => core.durable().await,
                Err(error) => Err(error),
            };
            if let Err(error) = durable {
                tracing::error!("pack {}: {error}", order.pack_id);
                break;
            }
            packed = true;
            tracing::info!("packed up to {} (order {})", order.pack_tid, order.pack_id);
            // To the primary of now: one that came since hears at `StartOperation` too.
            if let Some(master) = core.master.borrow().upgrade() {
                let done = wire::NotifyPackCompleted { pack_id: order.pack_id };
                let _ = master.try_send(Outgoing::Notify(done.into()));
            }
        }
        core.packing.set(false);
        if packed {
            // The compaction's checkpoint bakes the pack in too.
            compaction_due(&core);
        }
    })
    .detach();
}

/// The locks of the transactions a restarted store holds voted or locked: their objects
/// stay taken, and a locked one is committed but not visible, until the master settles
/// it. Loads of those objects and listings up to its tid wait meanwhile, as a replication
/// source's chunks do (served without it, they would make a copy that lacks it).
fn pending_locks(store: &LogStore) -> Locks {
    let mut locks = Locks::default();
    let stages: BTreeMap<Tid, logstore::PendingStage> = store.unfinished().into_iter().collect();
    for (ttid, oids) in store.pending_oids() {
        for oid in oids {
            locks.adopt(ttid, oid, Tid::ZERO);
        }
        match stages.get(&ttid) {
            Some(logstore::PendingStage::Locked(tid)) => locks.locked(ttid, *tid),
            Some(logstore::PendingStage::Voted) => locks.voted(ttid),
            _ => {}
        }
    }
    locks
}

/// The log's options: the default segment size (256 MiB), or `NEO_SEGMENT_SIZE` bytes (a
/// test hook: small segments let a test see compaction give disk space back).
fn log_options() -> Options {
    let segment_size = std::env::var("NEO_SEGMENT_SIZE").ok().and_then(|s| s.parse::<u32>().ok());
    match segment_size {
        Some(size) => Options { segment_size: size.max(logstore::limits::SEGMENT_SIZE_MIN) },
        None => Options::default(),
    }
}

/// Object data copied by one slice of compaction (the log store's bench, loads at 5 k/s
/// during compaction: 64 KiB slices kept their p99 near 6 ms, 16 KiB near 3 ms for twice
/// the time). It runs in the low-priority queue besides.
const COMPACTION_SLICE: usize = 16 << 10;
/// How often the compaction task looks whether it is due, besides being woken.
const COMPACTION_LOOK: Duration = Duration::from_secs(30);

/// Data died here (a partition dropped, a pack carried out, a truncation): the compaction
/// task reclaims the space.
fn compaction_due(core: &Core) {
    core.compaction_due.set(true);
    core.compaction_wake.wake();
}

/// Reclaims the disk space of dead data, in the background, whenever some died: a
/// checkpoint off the core (to seal the segments and count what each still holds), then
/// every segment less than half live is copied, slice by slice, to the log's tail (the
/// core serves loads and commits between slices), and a checkpoint after which those
/// segments are deleted. A shutdown stops it between slices (what it copied stays valid;
/// the next compaction finds the rest).
async fn compact_when_due(core: Rc<Core>) {
    loop {
        core.compaction_wake.wait(COMPACTION_LOOK).await;
        if core.stopping.get() || crate::shutdown::requested() {
            return;
        }
        if !core.compaction_due.get() {
            continue;
        }
        // One checkpoint at a time: the periodic ones go first.
        if core.checkpointing.get() || checkpoint_in_progress(&core.store.borrow()) {
            core.compaction_wake.wake();
            glommio::timer::sleep(Duration::from_millis(100)).await;
            continue;
        }
        core.compaction_due.set(false);
        core.compacting.set(true);
        let outcome = compact(&core).await;
        core.compacting.set(false);
        match outcome {
            Ok(Some(report)) if !report.deleted.is_empty() => tracing::info!(
                "compaction: {} segments deleted ({} records, {} bytes of data moved)",
                report.deleted.len(),
                report.relocated_data,
                report.relocated_bytes
            ),
            Ok(_) => {}
            Err(error) => {
                tracing::error!("compaction: {error}");
                index_damage::store_failed(&core, &error);
            }
        }
    }
}

/// One compaction (`compact_when_due`); `None` if a shutdown interrupted it.
async fn compact(core: &Core) -> Result<Option<logstore::CompactionReport>, logstore::StoreError> {
    let stopping = || core.stopping.get() || crate::shutdown::requested();
    logstore::uring::compact_on_core(
        &core.store,
        &core.durable,
        &core.flush,
        COMPACTION_SLICE,
        stopping,
    )
    .await
}

/// How long a stopping storage waits for a checkpoint running off the core.
const CHECKPOINT_PATIENCE: Duration = Duration::from_secs(60);

/// Whether a checkpoint is being written, or written and waiting for the log to install.
fn checkpoint_in_progress(store: &LogStore) -> bool {
    store.checkpoint_running() || store.checkpoint_awaiting_install()
}

/// Writes a checkpoint off the core when the in-memory index has grown enough, so that
/// memory stays bounded and a restart replays only the log after it.
fn maybe_checkpoint(core: &Rc<Core>) {
    checkpoint_soon(core, false);
}

/// Writes a checkpoint off the core when one is due, or now if `now` (after a pack, whose
/// filter slows loads until a checkpoint bakes it in).
fn checkpoint_soon(core: &Rc<Core>, now: bool) {
    let due = {
        let store = core.store.borrow();
        (now || store.needs_checkpoint()) && !checkpoint_in_progress(&store) && !core.stopping.get()
    };
    if !due {
        return;
    }
    let core = Rc::clone(core);
    core.checkpointing.set(true);
    glommio::spawn_local(async move {
        let outcome =
            logstore::uring::checkpoint_off_core(&core.store, &core.durable, &core.flush).await;
        core.checkpointing.set(false);
        if let Err(error) = outcome {
            tracing::error!("checkpoint: {error}");
            index_damage::store_failed(&core, &error);
        }
    })
    .detach();
}

/// Commits a transaction that verification found locked somewhere: locked here too if it
/// was only voted, then made visible.
async fn validate_transaction(
    core: &Core,
    ttid: Tid,
    tid: Tid,
) -> Result<(), logstore::StoreError> {
    let stage = core.store.borrow().unfinished().into_iter().find(|(t, _)| *t == ttid);
    match stage.map(|(_, stage)| stage) {
        Some(logstore::PendingStage::Voted) => lock(core, ttid, tid).await?,
        Some(logstore::PendingStage::Locked(_)) => {}
        // Not voted here, or already visible: nothing to do.
        _ => return Ok(()),
    }
    core.store.borrow_mut().unlock(ttid)?;
    core.locks.borrow_mut().release(ttid);
    core.changes.bump();
    core.durable().await
}

/// Locks a voted transaction under its final tid and waits until that is durable: the
/// commit point.
async fn lock(core: &Core, ttid: Tid, tid: Tid) -> Result<(), logstore::StoreError> {
    let position = core.store.borrow_mut().lock(ttid, tid)?;
    core.locks.borrow_mut().locked(ttid, tid);
    core.wait_durable(position.advance(1)).await
}

fn refusal(code: ErrorCode, message: String) -> Message {
    to_error(&refuse(code, message)).into()
}

/// Accepts other nodes' connections until the task is dropped.
async fn accept_peers(listener: TcpListener, cluster: String, core: Rc<Core>) {
    let mut acceptor = crate::net::Acceptor::new(listener, Hello::new(NodeType::Storage, &cluster));
    loop {
        let (stream, admission) = acceptor.next().await;
        let (cluster, core) = (cluster.clone(), Rc::clone(&core));
        glommio::spawn_local(async move {
            let _counted = admission;
            let peer = stream.peer_addr().map_or_else(|_| "?".to_owned(), |a| a.to_string());
            tracing::debug!("connection from {peer}");
            match serve_peer(stream, &cluster, &core).await {
                // A peer that closes between frames just left.
                Ok(()) | Err(ConnectionError::Closed { mid_frame: false }) => {
                    tracing::debug!("connection from {peer} closed");
                }
                Err(error) => tracing::warn!("connection from {peer}: {error}"),
            }
        })
        .detach();
    }
}

/// One connection from another node: identification checked against the node list, then
/// its requests, each in a task of its own.
async fn serve_peer(
    stream: glommio::net::TcpStream,
    cluster: &str,
    core: &Rc<Core>,
) -> Result<(), ConnectionError> {
    let ours = Hello::new(NodeType::Storage, cluster);
    let mut connection = Connection::accept(stream, ours, IDENTIFICATION_DEADLINE).await?;
    // What its hello said it is: with TLS, what its certificate allows (`net`).
    let hello_type = connection.peer().node_type;
    let frame = connection.receive(Some(IDENTIFICATION_DEADLINE)).await?;
    let admitted = match frame.message() {
        Ok(Message::RequestIdentification(request)) if request.node_type != hello_type => {
            Err(Refusal {
                code: ErrorCode::Denied,
                message: format!(
                    "a connection that said it is a {hello_type} cannot identify as a {}",
                    request.node_type
                ),
            })
        }
        Ok(Message::RequestIdentification(request)) => {
            admit(&request, cluster, &core.known.borrow(), core.me.get())
        }
        Ok(_) => {
            Err(Refusal { code: ErrorCode::ProtocolError, message: "identify first".to_owned() })
        }
        Err(error) => Err(Refusal { code: ErrorCode::ProtocolError, message: error.to_string() }),
    };
    let accept = match admitted {
        Ok(accept) => accept,
        Err(refusal) => {
            tracing::debug!("refused a {hello_type}: {refusal}");
            connection.send(frame.msg_id, &to_error(&refusal)).await?;
            return connection.close().await;
        }
    };
    // One peer holds a bounded share of this core's connections.
    let _counted = match accept.your_nid.map(crate::limits::admit_peer).transpose() {
        Ok(counted) => counted,
        Err(reason) => {
            let refusal = Refusal { code: ErrorCode::NotReady, message: reason };
            connection.send(frame.msg_id, &to_error(&refusal)).await?;
            return connection.close().await;
        }
    };
    connection.send(frame.msg_id, &accept).await?;
    let peer = accept.your_nid;
    tracing::debug!("admitted {}", peer.map_or_else(|| "?".to_owned(), |nid| nid.to_string()));
    let (mut reader, writer) = connection.split();
    let (outbox, _writing) = spawn_writer(writer, OUTBOX_SIZE_MAX);
    let outbox = Rc::new(outbox);
    loop {
        let frame = reader.receive().await?;
        let message = match frame.message() {
            Ok(message) => message,
            Err(error) => {
                let answer = refusal(ErrorCode::ProtocolError, error.to_string());
                let _ = outbox.try_send(Outgoing::Answer(frame.msg_id, answer));
                return Err(error.into());
            }
        };
        if frame.kind.answer().is_none() {
            // Notifications: only an abort means something here, from the transaction's
            // own client before its vote (after it, only the master decides: it relays a
            // client's abort through its own connection).
            if let Message::AbortTransaction(abort) = message {
                let voted = core.store.borrow().unfinished().iter().any(|&(ttid, stage)| {
                    ttid == abort.ttid && stage != logstore::PendingStage::Stored
                });
                // Decided before the abort borrows the flights again.
                let allowed = may_touch(&core.flights.borrow(), peer, abort.ttid);
                match allowed {
                    Ok(()) if !voted => core.abort(abort.ttid),
                    Ok(()) => {}
                    Err(refusal) => {
                        tracing::warn!("ignored an abort: {}", refusal.message);
                    }
                }
            }
            continue;
        }
        // Replication's requests come from storages only.
        let fetching =
            matches!(message, Message::AskFetchTransactions(_) | Message::AskFetchObjects(_));
        if fetching && peer.is_none_or(|p| p.node_type() != NodeType::Storage) {
            let who = peer.map_or_else(|| "an unidentified peer".to_owned(), |p| p.to_string());
            let answer = refusal(
                ErrorCode::Denied,
                format!("{who} is not a storage: it replicates nothing"),
            );
            let _ = outbox.try_send(Outgoing::Answer(frame.msg_id, answer));
            continue;
        }
        // Replication's requests run at low priority, streaming their items.
        let fetch = match message {
            Message::AskFetchTransactions(ask) => Some(glommio::spawn_local_into(
                replicate::serve_transactions(
                    Rc::clone(core),
                    Rc::clone(&outbox),
                    frame.msg_id,
                    ask,
                ),
                core.background,
            )),
            Message::AskFetchObjects(ask) => Some(glommio::spawn_local_into(
                replicate::serve_objects(Rc::clone(core), Rc::clone(&outbox), frame.msg_id, ask),
                core.background,
            )),
            message => {
                handle_request(core, &outbox, peer, frame.msg_id, message).await;
                None
            }
        };
        if let Some(spawned) = fetch {
            spawned.expect("the replication task queue belongs to this executor").detach();
        }
    }
}

/// A peer's request other than replication's: counted as a store if it is one, answered on
/// the spot when it has nothing to wait for, else in a task of its own.
async fn handle_request(
    core: &Rc<Core>,
    outbox: &Rc<Outbox>,
    peer: Option<NodeId>,
    msg_id: u32,
    message: Message,
) {
    let (storing, voting) = match &message {
        Message::AskStoreObject(ask) => (Some(ask.ttid), None),
        Message::AskCheckCurrentSerial(ask) => (Some(ask.ttid), None),
        Message::AskRelockObject(ask) => (Some(ask.ttid), None),
        Message::AskStoreTransaction(ask) => (None, Some(ask.ttid)),
        Message::AskVoteTransaction(ask) => (None, Some(ask.ttid)),
        _ => (None, None),
    };
    if let Some(ttid) = storing.or(voting) {
        // A transaction is its client's: nobody else stores into it or votes it.
        let allowed = may_touch(&core.flights.borrow(), peer, ttid);
        if let Err(refusal) = allowed {
            tracing::warn!("refused {}: {}", message.kind(), refusal.message);
            let _ = outbox.try_send(Outgoing::Answer(msg_id, to_error(&refusal).into()));
            return;
        }
        let mut flights = core.flights.borrow_mut();
        let flight = flights.entry(ttid).or_insert_with(|| Flight {
            storing: 0,
            owner: peer,
            channel: Rc::downgrade(outbox),
            conflicted: BTreeSet::new(),
        });
        if storing.is_some() {
            flight.storing += 1;
        }
    }
    let (core, outbox) = (Rc::clone(core), Rc::clone(outbox));
    let measured = measured(&message);
    let mut answering = Box::pin(async move {
        let started = std::time::Instant::now();
        let answer = request(&core, message).await;
        if let Some((latency, counter, bytes)) = measured {
            crate::metrics::latency(latency, started.elapsed());
            crate::metrics::count(counter, 1);
            let bytes = match &answer {
                Message::AnswerObject(loaded) => loaded.data.0.len(),
                _ => bytes,
            };
            if bytes > 0 {
                let name = if counter == "loads" { "load_bytes" } else { "store_bytes" };
                crate::metrics::count(name, bytes as u64);
            }
        }
        if outbox.try_send(Outgoing::Answer(msg_id, answer)).is_err() {
            tracing::warn!("a peer does not read its answers");
        }
    });
    // Most requests (a load with nothing to wait for, a store that gets its lock) are
    // answered on the spot; only those that wait (a lock, a flush) get a task.
    if futures_lite::future::poll_once(&mut answering).await.is_none() {
        glommio::spawn_local(answering).detach();
    }
}

/// The latency histogram, counter and bytes (stored) a request is measured under, if any.
fn measured(message: &Message) -> Option<(&'static str, &'static str, usize)> {
    Some(match message {
        Message::AskObject(_) => ("load_seconds", "loads", 0),
        Message::AskStoreObject(ask) => ("store_seconds", "stores", ask.data.0.len()),
        Message::AskCheckCurrentSerial(_) | Message::AskRelockObject(_) => {
            ("store_seconds", "stores", 0)
        }
        Message::AskVoteTransaction(_) | Message::AskStoreTransaction(_) => {
            ("vote_seconds", "votes", 0)
        }
        _ => return None,
    })
}

/// Whether `peer` may store into, vote or abort `ttid`: a client, and the one that stored
/// into it first.
fn may_touch(
    flights: &HashMap<Tid, Flight>,
    peer: Option<NodeId>,
    ttid: Tid,
) -> Result<(), Refusal> {
    let Some(peer) = peer.filter(|p| p.node_type() == NodeType::Client) else {
        let who = peer.map_or_else(|| "an unidentified peer".to_owned(), |p| p.to_string());
        return Err(refuse(
            ErrorCode::Denied,
            format!("{who} is not a client: it has no transaction {ttid}"),
        ));
    };
    match flights.get(&ttid).and_then(|f| f.owner) {
        Some(owner) if owner != peer => {
            Err(refuse(ErrorCode::Denied, format!("transaction {ttid} is {owner}'s, not {peer}'s")))
        }
        _ => Ok(()),
    }
}

/// A peer's request, answered.
async fn request(core: &Core, message: Message) -> Message {
    match message {
        Message::Ping(_) => Pong {}.into(),
        Message::AskObject(ask) => load(core, ask.oid, ask.at, ask.before).await,
        Message::AskStoreObject(ask) => {
            let value = match (ask.data_serial, ask.data.0.is_empty() && ask.data_crc == 0) {
                (Some(data_serial), _) => Value::Undo { data_serial },
                (None, true) => Value::Delete,
                (None, false) => Value::Data {
                    compression: ask.compression,
                    data_crc: ask.data_crc,
                    data: ask.data.0,
                },
            };
            let outcome = store(core, ask.ttid, ask.oid, ask.serial, Some(value)).await;
            stored(core, ask.ttid, ask.oid, is_conflict(&outcome));
            outcome.map_or_else(
                |e| to_error(&e).into(),
                |outcome| wire::AnswerStoreObject { outcome }.into(),
            )
        }
        Message::AskRelockObject(ask) => {
            let conflict = relock(core, ask.ttid, ask.oid).await;
            stored(core, ask.ttid, ask.oid, matches!(conflict, Ok(Some(_))));
            match conflict {
                Ok(conflict) => wire::AnswerRelockObject {
                    conflict,
                    data_info: None,
                    data: wire::Payload(bytes::Bytes::new()),
                }
                .into(),
                Err(refusal) => to_error(&refusal).into(),
            }
        }
        Message::AskCheckCurrentSerial(ask) => {
            let outcome = store(core, ask.ttid, ask.oid, ask.serial, None).await;
            stored(core, ask.ttid, ask.oid, is_conflict(&outcome));
            outcome.map_or_else(
                |e| to_error(&e).into(),
                |outcome| wire::AnswerCheckCurrentSerial { outcome }.into(),
            )
        }
        Message::AskStoreTransaction(ask) => {
            let meta = TransactionMeta {
                user: ask.user,
                description: ask.description,
                extension: ask.extension,
                oids: ask.oids,
                pack: ask.pack,
            };
            match vote(core, ask.ttid, Some(meta)).await {
                Ok(()) => wire::AnswerStoreTransaction {}.into(),
                Err(refusal) => to_error(&refusal).into(),
            }
        }
        Message::AskFinalTid(ask) => match core.store.borrow().final_tid(ask.ttid) {
            Ok(tid) => wire::AnswerFinalTid { tid }.into(),
            Err(error) => refusal(ErrorCode::Denied, error.to_string()),
        },
        Message::AskVoteTransaction(ask) => match vote(core, ask.ttid, None).await {
            Ok(()) => wire::AnswerVoteTransaction {}.into(),
            Err(refusal) => to_error(&refusal).into(),
        },
        // What was committed: once what is committed but not yet visible here is (the
        // client that committed it may ask right after its finish returned).
        Message::AskObjectHistory(ask) => {
            settled(core, |locks| locks.load_must_wait(ask.oid)).await;
            history(core, ask)
        }
        Message::AskTransactionInformation(ask) => {
            settled(core, |locks| locks.locked_between(ask.tid, ask.tid)).await;
            transaction_information(core, ask.tid)
        }
        Message::AskTidsFrom(ask) => {
            settled(core, |locks| locks.locked_between(ask.min_tid, ask.max_tid)).await;
            tids_from(core, ask)
        }
        Message::AskTids(ask) => {
            settled(core, |locks| locks.locked_between(Tid::ZERO, Tid::MAX)).await;
            tids_descending(core, ask)
        }
        Message::AskObjectUndoSerial(ask) => {
            settled(core, |locks| ask.oids.iter().any(|&oid| locks.load_must_wait(oid))).await;
            undo_serials(core, ask)
        }
        other => refusal(
            ErrorCode::NotReady,
            format!("this storage does not serve {} yet", other.kind()),
        ),
    }
}

/// A store (or serial check, without a value, or relock) of `oid` answered, with a
/// conflict or not: a vote waiting for it may go on.
fn stored(core: &Core, ttid: Tid, oid: Oid, conflict: bool) {
    if let Some(flight) = core.flights.borrow_mut().get_mut(&ttid) {
        flight.storing -= 1;
        if conflict {
            flight.conflicted.insert(oid);
        } else {
            flight.conflicted.remove(&oid);
        }
    }
    core.changes.bump();
}

fn is_conflict(outcome: &Result<StoreOutcome, Refusal>) -> bool {
    matches!(outcome, Ok(StoreOutcome::Conflict(_)))
}

/// The newest committed serial of `oid`, if it exists.
fn current_serial(store: &LogStore, oid: Oid) -> Result<Option<Tid>, Refusal> {
    match store.locate(oid, None, None) {
        Ok(located) => Ok(Some(located.serial)),
        Err(LoadError::OidDoesNotExist(_) | LoadError::OidNotFound(_)) => Ok(None),
        Err(LoadError::Store(error)) => Err(refuse(ErrorCode::Denied, error.to_string())),
    }
}

/// Takes the object's lock (waiting as `locks` says) and stores the value.
async fn store(
    core: &Core,
    ttid: Tid,
    oid: Oid,
    base: Tid,
    value: Option<Value>,
) -> Result<StoreOutcome, Refusal> {
    let readable = match core.cell(oid.0) {
        (false, _) => return Ok(StoreOutcome::NotAssigned),
        (true, _) if core.is_aborted(ttid) => {
            return Err(refuse(ErrorCode::TidNotFound, format!("{ttid} was aborted")));
        }
        (true, readable) => readable,
    };
    if !readable {
        // An out-of-date cell: its copy lags behind, so its serials say nothing about
        // conflicts (the readable cells decide). The data is written without lock or
        // check, so that the cell does not miss this transaction.
        if let Some(value) = value {
            write(core, ttid, oid, value)?;
        }
        return Ok(StoreOutcome::Lockless);
    }
    loop {
        let seen = core.changes.now();
        if core.is_aborted(ttid) {
            return Err(refuse(ErrorCode::TidNotFound, format!("{ttid} was aborted")));
        }
        match acquire(core, ttid, oid, base)? {
            Acquire::Locked => break,
            Acquire::Conflict(serial) => return Ok(StoreOutcome::Conflict(serial)),
            Acquire::Wait | Acquire::WaitAndNotify { .. } => core.changes.since(seen).await,
        }
    }
    if let Some(value) = value {
        write(core, ttid, oid, value)?;
    }
    Ok(StoreOutcome::Locked)
}

/// One attempt at `oid`'s lock for `ttid`: when an older transaction must wait for a
/// younger one, the younger's client is asked to relock (`NotifyDeadlock`, on the
/// connection it stores through).
fn acquire(core: &Core, ttid: Tid, oid: Oid, base: Tid) -> Result<Acquire, Refusal> {
    let current = current_serial(&core.store.borrow(), oid)?;
    let acquired = core.locks.borrow_mut().acquire(ttid, oid, base, current);
    if let Acquire::WaitAndNotify { holder } = acquired {
        let channel = core.flights.borrow().get(&holder).and_then(|f| f.channel.upgrade());
        if let Some(channel) = channel {
            let notice = wire::NotifyDeadlock { ttid: holder, oid };
            let _ = channel.try_send(Outgoing::Notify(notice.into()));
        }
    }
    Ok(acquired)
}

/// `AskRelockObject`: unless it voted, `ttid` gives `oid` up to the older transaction
/// waiting for it, then takes it again behind it. A conflict (the older one changed the
/// object meanwhile) comes back with the serial stored on and the current one; the client
/// keeps its data, so none is sent back.
async fn relock(
    core: &Core,
    ttid: Tid,
    oid: Oid,
) -> Result<Option<wire::messages::RelockConflict>, Refusal> {
    let relocked = core.locks.borrow_mut().relock(ttid, oid);
    let crate::locks::Relock::Released { base } = relocked else { return Ok(None) };
    core.changes.bump();
    loop {
        let seen = core.changes.now();
        if core.is_aborted(ttid) {
            return Err(refuse(ErrorCode::TidNotFound, format!("{ttid} was aborted")));
        }
        match acquire(core, ttid, oid, base)? {
            Acquire::Locked => return Ok(None),
            Acquire::Conflict(current) => {
                let conflict =
                    wire::messages::RelockConflict { serial: base, conflict_serial: current };
                return Ok(Some(conflict));
            }
            Acquire::Wait | Acquire::WaitAndNotify { .. } => core.changes.since(seen).await,
        }
    }
}

/// Writes a stored value to the log. A value the log refuses (data that does not match its
/// checksum, an undo to a serial this core lacks) cannot be committed: the transaction is
/// aborted here, which also releases the lock just taken.
fn write(core: &Core, ttid: Tid, oid: Oid, value: Value) -> Result<(), Refusal> {
    let written = core.store.borrow_mut().store(ttid, oid, value);
    written.map(drop).map_err(|error| {
        core.abort(ttid);
        refuse(
            ErrorCode::ProtocolError,
            format!("store {oid}: {error}; transaction {ttid} aborted"),
        )
    })
}

/// Votes once the transaction's stores here are answered, and waits until it is durable.
/// A transaction with a conflict not stored again since is not voted: the client, which
/// sent its vote before seeing the stores' answers, resolves and votes again.
async fn vote(core: &Core, ttid: Tid, meta: Option<TransactionMeta>) -> Result<(), Refusal> {
    loop {
        let seen = core.changes.now();
        if core.flights.borrow().get(&ttid).is_none_or(|f| f.storing == 0) {
            break;
        }
        core.changes.since(seen).await;
    }
    if core.is_aborted(ttid) {
        return Err(refuse(ErrorCode::TidNotFound, format!("{ttid} was aborted")));
    }
    let conflicted = core.flights.borrow().get(&ttid).map_or(0, |f| f.conflicted.len());
    if conflicted > 0 {
        return Err(refuse(
            ErrorCode::Denied,
            format!(
                "{ttid} not voted: {conflicted} object(s) conflicted and were not stored again"
            ),
        ));
    }
    let position = core.store.borrow_mut().vote(ttid, meta);
    let position = position.map_err(|e| refuse(ErrorCode::ProtocolError, e.to_string()))?;
    core.locks.borrow_mut().voted(ttid);
    core.wait_durable(position.advance(1))
        .await
        .map_err(|e| refuse(ErrorCode::Denied, format!("vote {ttid}: {e}")))
}

/// Waits until `pending` is false: it looks at the locks each time they change.
async fn settled(core: &Core, pending: impl Fn(&Locks) -> bool) {
    loop {
        let seen = core.changes.now();
        if !pending(&core.locks.borrow()) {
            return;
        }
        core.changes.since(seen).await;
    }
}

/// Most revisions one `AskObjectHistory` answers (a client pages through longer histories).
const HISTORY_ANSWER_MAX: u64 = 10_000;

/// An object's committed revisions, newest first, positions `first .. last`: their serials
/// and data sizes.
fn history(core: &Core, ask: wire::AskObjectHistory) -> Message {
    if !core.cell(ask.oid.0).1 {
        return refusal(
            ErrorCode::NonReadableCell,
            format!("no readable cell of {} here", ask.oid),
        );
    }
    let (first, last) = page(ask.first, ask.last);
    match core.store.borrow().history(ask.oid, first, last) {
        Ok(revisions) => wire::AnswerObjectHistory {
            oid: ask.oid,
            history: revisions
                .into_iter()
                .map(|(serial, size)| wire::messages::HistoryEntry { serial, size })
                .collect(),
        }
        .into(),
        Err(error) => refusal(ErrorCode::Denied, error.to_string()),
    }
}

/// Committed tids of a partition in `min_tid ..= max_tid`, ascending, at most `length`
/// (and at most `HISTORY_ANSWER_MAX`): what a client's iterator pages through.
fn tids_from(core: &Core, ask: wire::AskTidsFrom) -> Message {
    if let Some(refused) = partition_refusal(core, ask.partition) {
        return refused;
    }
    let length = u64::from(ask.length).min(HISTORY_ANSWER_MAX) as usize;
    match core.store.borrow().tids_from(ask.min_tid, ask.max_tid, length, ask.partition) {
        Ok(tids) => wire::AnswerTidsFrom { tids }.into(),
        Err(error) => refusal(ErrorCode::Denied, error.to_string()),
    }
}

/// Committed tids of one partition (or of every partition readable here), newest first,
/// positions `first .. last` (the undo log).
fn tids_descending(core: &Core, ask: wire::AskTids) -> Message {
    let (first, last) = page(ask.first, ask.last);
    let listed = match ask.partition {
        Some(partition) => {
            if let Some(refused) = partition_refusal(core, partition) {
                return refused;
            }
            core.store.borrow().tids_descending(first, last, Some(partition))
        }
        None => core.store.borrow().tids_descending(0, usize::MAX, None).map(|tids| {
            let readable = tids.into_iter().filter(|tid| core.cell(tid.0).1);
            readable.skip(first).take(last.saturating_sub(first)).collect()
        }),
    };
    match listed {
        Ok(tids) => wire::AnswerTids { tids }.into(),
        Err(error) => refusal(ErrorCode::Denied, error.to_string()),
    }
}

/// Positions `first .. last` of a listing, at most `HISTORY_ANSWER_MAX` of them.
fn page(first: u64, last: u64) -> (usize, usize) {
    let last = last.min(first.saturating_add(HISTORY_ANSWER_MAX));
    (usize::try_from(first).unwrap_or(usize::MAX), usize::try_from(last).unwrap_or(usize::MAX))
}

/// The refusal of a request about `partition`, unless it is in the table and has a
/// readable cell here.
fn partition_refusal(core: &Core, partition: PartitionId) -> Option<Message> {
    let partitions = core.table.borrow().as_ref().map_or(0, |t| t.partitions());
    if partition.0 < partitions && core.cell(u64::from(partition.0)).1 {
        return None;
    }
    let partition = partition.0;
    Some(refusal(
        ErrorCode::NonReadableCell,
        format!("no readable cell of partition {partition} here"),
    ))
}

/// For undoing `undone_tid`: each object's current serial (as of `ltid`, the client's
/// snapshot), the serial whose data undo restores, and whether the undone revision is
/// still current.
fn undo_serials(core: &Core, ask: wire::AskObjectUndoSerial) -> Message {
    let mut serials = Vec::with_capacity(ask.oids.len());
    for oid in ask.oids {
        if !core.cell(oid.0).1 {
            return refusal(ErrorCode::NonReadableCell, format!("no readable cell of {oid} here"));
        }
        match core.store.borrow().undo_info(oid, ask.undone_tid, ask.ltid) {
            Ok(info) => serials.push(wire::messages::UndoSerial {
                oid,
                current_serial: info.current_serial,
                undo_serial: info.undo_serial,
                is_current: info.is_current,
            }),
            Err(LoadError::OidDoesNotExist(_) | LoadError::OidNotFound(_)) => {
                return refusal(
                    ErrorCode::OidNotFound,
                    format!("{oid} has no revision {} to undo here", ask.undone_tid),
                );
            }
            Err(LoadError::Store(error)) => return refusal(ErrorCode::Denied, error.to_string()),
        }
    }
    wire::AnswerObjectUndoSerial { serials }.into()
}

/// A committed transaction's metadata and oids, from a readable cell of its partition.
fn transaction_information(core: &Core, tid: Tid) -> Message {
    if !core.cell(tid.0).1 {
        return refusal(ErrorCode::NonReadableCell, format!("no readable cell of {tid} here"));
    }
    let found = core.store.borrow_mut().transaction(tid);
    match found {
        Ok(Some(info)) => wire::AnswerTransactionInformation {
            tid,
            user: info.meta.user,
            description: info.meta.description,
            extension: info.meta.extension,
            packed: info.packed,
            oids: info.meta.oids,
        }
        .into(),
        Ok(None) => refusal(ErrorCode::TidNotFound, format!("no committed transaction {tid}")),
        Err(error) => {
            if matches!(error, logstore::StoreError::Corrupt { .. }) {
                let partitions = core.table.borrow().as_ref().map_or(1, PartitionTable::partitions);
                let partition = PartitionId::of(tid.0, partitions);
                check::report_damage(core, partition, &format!("transaction {tid}: {error}"));
            }
            index_damage::store_failed(core, &error);
            refusal(ErrorCode::Denied, error.to_string())
        }
    }
}

/// A load, once no committed but invisible revision it could see is pending.
async fn load(core: &Core, oid: Oid, at: Option<Tid>, before: Option<Tid>) -> Message {
    match core.cell(oid.0) {
        (_, true) => {}
        (true, false) => {
            return refusal(
                ErrorCode::NonReadableCell,
                format!("the cell of {oid} is not readable here"),
            );
        }
        (false, _) => {
            return refusal(ErrorCode::NonReadableCell, format!("no cell of {oid} here"));
        }
    }
    settled(core, |locks| locks.load_must_wait(oid)).await;
    let loaded = core.store.borrow_mut().load(oid, at, before);
    match loaded {
        Ok(loaded) => wire::AnswerObject {
            oid,
            serial: loaded.serial,
            next_serial: loaded.next_serial,
            compression: loaded.compression,
            data_crc: loaded.data_crc,
            data_serial: loaded.data_serial,
            data: wire::Payload(loaded.data),
        }
        .into(),
        Err(LoadError::OidDoesNotExist(oid)) => {
            refusal(ErrorCode::OidDoesNotExist, format!("object {oid} does not exist"))
        }
        Err(LoadError::OidNotFound(oid)) => {
            refusal(ErrorCode::OidNotFound, format!("object {oid} has no such revision"))
        }
        // Corruption is reported, never served.
        Err(LoadError::Store(error)) => {
            if let logstore::StoreError::Corrupt { .. } = error {
                let partitions = core.table.borrow().as_ref().map_or(1, PartitionTable::partitions);
                check::report_damage(
                    core,
                    PartitionId::of(oid.0, partitions),
                    &format!("loading {oid}: {error}"),
                );
            } else {
                // A damaged index file, an I/O error: said here too, not only to the client.
                tracing::error!("loading {oid}: {error}");
                index_damage::store_failed(core, &error);
            }
            refusal(ErrorCode::Denied, error.to_string())
        }
    }
}

/// Whether a node that connects may stay: it must belong to the cluster, and the primary
/// must have told this storage of it, under the same identification time (a client the
/// primary has identified again since is refused until the news arrives).
fn admit(
    request: &RequestIdentification,
    cluster: &str,
    known: &BTreeMap<NodeId, NodeInfo>,
    me: Option<NodeId>,
) -> Result<AcceptIdentification, Refusal> {
    let refuse = |code, message: String| Err(Refusal { code, message });
    if request.cluster_name.as_str() != cluster {
        return refuse(
            ErrorCode::ProtocolError,
            format!(
                "this storage belongs to cluster {cluster:?}, not {:?}",
                request.cluster_name.as_str()
            ),
        );
    }
    let Some(me) = me else {
        return refuse(
            ErrorCode::NotReady,
            "this storage is not identified to a primary yet".to_owned(),
        );
    };
    if !matches!(request.node_type, NodeType::Client | NodeType::Storage) {
        return refuse(
            ErrorCode::ProtocolError,
            format!("a {} has nothing to ask a storage", request.node_type),
        );
    }
    let Some(nid) = request.nid else {
        return refuse(
            ErrorCode::ProtocolError,
            "identify to the primary master first: no node id given".to_owned(),
        );
    };
    // A client must show the stamp the primary gave it (unguessable: `Cluster::identify`),
    // which only it and the storages know: its id alone does not let another peer pose as
    // it. One refusal for an unknown id and a wrong stamp, so that it tells nothing.
    let stamp_required = request.node_type == NodeType::Client;
    let known = known.get(&nid).filter(|n| {
        n.node_type == request.node_type
            && !matches!(n.state, NodeState::Down | NodeState::Unknown)
            && (request.id_timestamp == n.id_timestamp
                || (!stamp_required && request.id_timestamp.is_none()))
    });
    if known.is_none() {
        return refuse(
            ErrorCode::NotReady,
            format!(
                "{nid} with this identification is not in the node list the primary sent \
                 (yet: it may be on its way)"
            ),
        );
    }
    Ok(AcceptIdentification { node_type: NodeType::Storage, nid: Some(me), your_nid: Some(nid) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(nid: NodeId, state: NodeState, id_timestamp: u64) -> (NodeId, NodeInfo) {
        let info = NodeInfo {
            node_type: nid.node_type(),
            address: None,
            nid: Some(nid),
            state,
            id_timestamp: Some(id_timestamp),
        };
        (nid, info)
    }

    fn request(
        nid: Option<NodeId>,
        cluster: &str,
        id_timestamp: Option<u64>,
    ) -> RequestIdentification {
        RequestIdentification {
            node_type: nid.map_or(NodeType::Client, NodeId::node_type),
            nid,
            address: None,
            cluster_name: Text::from(cluster),
            id_timestamp,
            devpath: Vec::new(),
            read_only: false,
            backup: Vec::new(),
            new_nid: None,
        }
    }

    #[test]
    fn only_a_transactions_client_touches_it() {
        let owner = NodeId::new(NodeType::Client, 1);
        let stranger = NodeId::new(NodeType::Client, 2);
        let storage = NodeId::new(NodeType::Storage, 1);
        let ttid = Tid(42);
        let mut flights = HashMap::new();
        // Nobody stored yet: the first client to store owns it.
        may_touch(&flights, Some(stranger), ttid).unwrap();
        flights.insert(
            ttid,
            Flight {
                storing: 0,
                owner: Some(owner),
                channel: std::rc::Weak::new(),
                conflicted: BTreeSet::new(),
            },
        );
        may_touch(&flights, Some(owner), ttid).unwrap();
        let refusal = may_touch(&flights, Some(stranger), ttid).unwrap_err();
        assert_eq!(refusal.code, ErrorCode::Denied);
        assert!(refusal.message.contains("is C1's, not C2's"), "{}", refusal.message);
        let refusal = may_touch(&flights, Some(storage), ttid).unwrap_err();
        assert!(refusal.message.contains("S1 is not a client"), "{}", refusal.message);
        assert!(may_touch(&flights, None, ttid).is_err());
    }

    #[test]
    fn only_nodes_the_primary_announced_are_admitted() {
        let me = NodeId::new(NodeType::Storage, 1);
        let client = NodeId::new(NodeType::Client, 1);
        let storage = NodeId::new(NodeType::Storage, 2);
        let down = NodeId::new(NodeType::Storage, 3);
        let known: BTreeMap<NodeId, NodeInfo> = [
            node(client, NodeState::Running, 7),
            node(storage, NodeState::Running, 8),
            node(down, NodeState::Down, 9),
        ]
        .into_iter()
        .collect();
        let admit = |request: &RequestIdentification, me| admit(request, "c", &known, me);

        let accepted = admit(&request(Some(client), "c", Some(7)), Some(me)).unwrap();
        assert_eq!((accepted.nid, accepted.your_nid), (Some(me), Some(client)));
        assert!(admit(&request(Some(storage), "c", None), Some(me)).is_ok());

        let refusal = |request: &RequestIdentification, me| admit(request, me).unwrap_err();
        let other_cluster = refusal(&request(Some(client), "d", Some(7)), Some(me));
        assert!(other_cluster.message.contains("cluster \"c\", not \"d\""), "{other_cluster}");
        let not_ready = refusal(&request(Some(client), "c", Some(7)), None);
        assert_eq!(not_ready.code, ErrorCode::NotReady);
        // A wrong stamp, no stamp (a client must show its own), an unknown id and a node
        // DOWN are refused alike: the refusal tells a peer posing as another nothing.
        let stale = refusal(&request(Some(client), "c", Some(6)), Some(me));
        let unstamped = refusal(&request(Some(client), "c", None), Some(me));
        let unknown =
            refusal(&request(Some(NodeId::new(NodeType::Client, 2)), "c", Some(7)), Some(me));
        let gone = refusal(&request(Some(down), "c", None), Some(me));
        for refused in [&stale, &unstamped, &unknown, &gone] {
            assert_eq!(refused.code, ErrorCode::NotReady);
            assert!(refused.message.contains("not in the node list"), "{refused}");
        }
        assert_eq!(
            stale.message.replace("C1", "X"),
            unknown.message.replace("C2", "X"),
            "a wrong stamp reads as an unknown id"
        );
        assert!(refusal(&request(None, "c", None), Some(me)).message.contains("no node id"));
        let admin = RequestIdentification {
            node_type: NodeType::Admin,
            ..request(Some(NodeId::new(NodeType::Admin, 1)), "c", None)
        };
        assert!(refusal(&admin, Some(me)).message.contains("nothing to ask a storage"));
    }
}
