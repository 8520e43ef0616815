//! The primary master's driver: sockets around the `Cluster` state machine.
//!
//! One glommio task per connection reads frames and applies them to the shared `Cluster`;
//! one writer task per connection sends what the node is told, from its outbox. Nothing
//! here decides: every decision is `Cluster`'s.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use glommio::net::TcpListener;
use wire::messages::{CellChange, CellInfo, PartitionRow};
use wire::{
    AcceptIdentification, AnswerAddPendingNodes, AnswerClusterState, AnswerNodeList,
    AnswerPartitionList, AnswerPartitionTable, AnswerSetClusterState, AnswerSetNumReplicas,
    AnswerTweakPartitionTable, Body, ClusterState, ErrorCode, Hello, Message, NodeId, NodeInfo,
    NodeType, NotifyClusterInformation, NotifyPartitionChanges, PartitionId, Ptid, RawFrame,
    SendPartitionTable, StartOperation, Text, Tid,
};

use crate::check::{Digests, PartitionCheck, Range};
use crate::cluster::{Cluster, ClusterConfig, Identification, Refusal, refuse};
use crate::election::{Election, Key, Reply, Role};
use crate::in_doubt::{Decision, InDoubt};
use crate::liveness::Liveness;
use crate::net::{
    Connection, ConnectionError, FrameReader, Outbox, Outgoing, connect_within, shutdown_socket,
    spawn_writer,
};
use crate::packs::{PackWaiter, Packs};
use crate::pt::{Cell, Change, PartitionTable};
use crate::transactions::{FinishRequest, Finishing, NewOids, Outcome, Reservation, Transactions};
use wire::NotPrimaryMaster;
use wire::messages::Address;
use wire::{NodeState, NotifyNodeInformation};

pub use crate::limits::IDENTIFICATION_DEADLINE;

/// A client is given up when a ping stays unanswered this many storage timeouts (60 s by
/// default): one that identified and never reads again would otherwise be held forever.
const CLIENT_TIMEOUT_FACTOR: u32 = 6;

/// Finishing transactions timed at once (`finish_seconds`); a finish past it is not timed
/// (the map of start times stays bounded even if finishes are never answered).
const FINISHES_TIMED_MAX: usize = 100_000;

/// How long `ctl stats` waits for the storages' figures; those that have not answered by
/// then are left out.
const STATS_PATIENCE: Duration = Duration::from_secs(2);

/// A `ctl stats` request being answered: the figures gathered so far, and the storages
/// still to answer.
#[derive(Debug)]
struct StatsGathering {
    nodes: RefCell<Vec<wire::NodeStats>>,
    waiting: std::cell::Cell<usize>,
    done: logstore::Notify,
}

/// Most messages queued for one peer before the master stops waiting for it.
const OUTBOX_SIZE_MAX: usize = 1024;

struct Master {
    cluster: Cluster,
    /// Transactions, from the moment the cluster runs (built from the verified last ids).
    transactions: Option<Transactions>,
    /// VERIFYING: transactions the storages hold voted (`None`) or locked (the final tid),
    /// with the storages that reported them.
    reported: BTreeMap<Tid, (Option<Tid>, BTreeSet<NodeId>)>,
    /// VERIFYING: the decisions taken so far (ttid -> final tid), and whether the voted
    /// transactions were asked about (`in_doubt`).
    validated: BTreeMap<Tid, Tid>,
    verification_asked: bool,
    /// Voted transactions nobody knows the fate of, being asked about (at verification,
    /// and when a storage rejoins a running cluster).
    in_doubt: InDoubt,
    /// `AskFinalTid` requests in flight, by request id.
    final_tid_requests: BTreeMap<u32, (NodeId, Tid)>,
    /// Clients asking for the final tid of a transaction still finishing (their finish's
    /// answer was lost): answered when it is published.
    final_tid_waiters: BTreeMap<Tid, Vec<(NodeId, u32)>>,
    /// Lock requests in flight, by the id the master gave them: a refusal names no ttid.
    lock_requests: BTreeMap<u32, (NodeId, Tid)>,
    /// An oid reservation being made durable on the storages, its requests by id, and the
    /// clients' `AskNewOids` waiting for it (client, msg_id, count), in order.
    reservation: Option<Reservation>,
    reserve_requests: BTreeMap<u32, NodeId>,
    oid_waiters: std::collections::VecDeque<(NodeId, u32, u32)>,
    /// The storages' unanswered requests (locks, pings): a hung storage is given up.
    liveness: Liveness,
    /// Whether each client still reads: pinged when it owes nothing, given up when a ping
    /// stays unanswered for `CLIENT_TIMEOUT_FACTOR` storage timeouts.
    client_liveness: Liveness,
    /// Clients' sockets, to close one given up.
    client_sockets: BTreeMap<NodeId, std::os::fd::RawFd>,
    /// The origin of the times handed to `liveness`.
    started: std::time::Instant,
    /// Each identified storage's socket, to shut down when it is given up.
    sockets: BTreeMap<NodeId, std::os::fd::RawFd>,
    /// Replications in progress (a storage asked `AskUnfinishedTransactions` for the cell),
    /// and whether a transaction failed on that storage since (then its `NotifyReplication
    /// Done` is not taken: the cell may lack that transaction's data).
    replicating: BTreeMap<(NodeId, PartitionId), bool>,
    /// How far each replicating cell got (`ctl print pt`): its last report, and when and
    /// where its round began.
    progress: BTreeMap<(NodeId, PartitionId), (wire::NotifyReplicationProgress, Duration, Tid)>,
    /// Pack orders, and clients waiting for packs.
    packs: Packs,
    /// The replica check in progress (`ctl check`), if any.
    check: Option<CheckRun>,
    /// Invalidations not yet handed to each client's writer (see `queue_invalidation`).
    invalidations: BTreeMap<NodeId, Vec<Message>>,
    invalidations_flush_due: bool,
    /// Clients whose news (identified, gone) the storages have yet to hear: sent together
    /// at the executor's next turn (`announce`), so that a flood of clients costs each
    /// storage a few messages, never an outbox full enough to drop it.
    client_news: BTreeSet<NodeId>,
    /// When each finishing transaction's client asked to finish (`finish_seconds`).
    finish_started: BTreeMap<Tid, std::time::Instant>,
    /// `ctl stats` gatherings waiting for storages' figures, by the request id each
    /// storage was asked under.
    stats_requests: BTreeMap<u32, Rc<StatsGathering>>,
    next_request_id: u32,
    outboxes: BTreeMap<NodeId, Rc<Outbox>>,
    election: Election,
    /// Every master's address, this one's included.
    masters: Vec<SocketAddr>,
    /// The secondaries following this primary, by the id `ctl` knows them by (M2, M3...,
    /// for as long as they follow): their address, and whether `ctl kill` stops them.
    secondaries: BTreeMap<NodeId, (SocketAddr, Rc<std::cell::Cell<bool>>)>,
    /// The number of the next secondary's id.
    next_secondary: u32,
    /// The id each secondary's address was given.
    secondary_ids: BTreeMap<SocketAddr, NodeId>,
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A socket address as the wire carries it.
pub fn address_of(address: SocketAddr) -> Address {
    Address { host: Text::from(address.ip().to_string()), port: address.port() }
}

/// 128 random bits (the OS's randomness, through std's hasher seeding), for the
/// identification stamps.
fn random_key() -> (u64, u64) {
    use std::hash::{BuildHasher, Hasher};
    let draw = || std::collections::hash_map::RandomState::new().build_hasher().finish();
    (draw(), draw())
}

/// The socket address of a wire address (IP literals only).
pub fn socket_of(address: &Address) -> Option<SocketAddr> {
    let ip: std::net::IpAddr = address.host.as_str().parse().ok()?;
    Some(SocketAddr::new(ip, address.port))
}

fn not_primary(master: &Rc<RefCell<Master>>) -> NotPrimaryMaster {
    let state = master.borrow();
    let primary = state.election.primary();
    NotPrimaryMaster {
        primary: primary.and_then(|p| state.masters.iter().position(|&m| m == p)).map(|i| i as u32),
        masters: state.masters.iter().map(|&m| address_of(m)).collect(),
    }
}

/// The id the primary master gives itself.
fn master_id() -> NodeId {
    NodeId::new(NodeType::Master, 1)
}

/// Runs a master on `listener` until the task is dropped. With other masters in `masters`,
/// it takes part in the election and serves only while it is the primary.
pub async fn serve(listener: TcpListener, config: ClusterConfig, masters: Vec<SocketAddr>) {
    crate::logging::set_node("master");
    let name = config.name.clone();
    let me = listener.local_addr().expect("a bound listener has an address");
    let mut masters = masters;
    if !masters.contains(&me) {
        masters.push(me);
    }
    let alone = masters.len() == 1;
    let liveness = Liveness::new(config.storage_timeout);
    let mut cluster = Cluster::new(config);
    cluster.set_stamp_key(random_key());
    let master = Rc::new(RefCell::new(Master {
        cluster,
        transactions: None,
        reported: BTreeMap::new(),
        validated: BTreeMap::new(),
        verification_asked: false,
        in_doubt: InDoubt::default(),
        final_tid_requests: BTreeMap::new(),
        final_tid_waiters: BTreeMap::new(),
        lock_requests: BTreeMap::new(),
        reservation: None,
        reserve_requests: BTreeMap::new(),
        oid_waiters: std::collections::VecDeque::new(),
        client_liveness: Liveness::new(liveness.timeout() * CLIENT_TIMEOUT_FACTOR),
        client_sockets: BTreeMap::new(),
        liveness,
        started: std::time::Instant::now(),
        sockets: BTreeMap::new(),
        replicating: BTreeMap::new(),
        progress: BTreeMap::new(),
        packs: Packs::default(),
        check: None,
        invalidations: BTreeMap::new(),
        invalidations_flush_due: false,
        client_news: BTreeSet::new(),
        finish_started: BTreeMap::new(),
        stats_requests: BTreeMap::new(),
        // Far from the writer tasks' own ids, which count from zero.
        next_request_id: 1 << 31,
        outboxes: BTreeMap::new(),
        election: Election::new(me, now_nanos(), alone),
        masters,
        secondaries: BTreeMap::new(),
        next_secondary: 2,
        secondary_ids: BTreeMap::new(),
    }));
    crate::metrics::set_node("master", &me.to_string());
    {
        let master = Rc::downgrade(&master);
        crate::metrics::set_provider(Rc::new(move |figures| {
            let Some(master) = master.upgrade() else { return };
            let state = master.borrow();
            figures.state("cluster_state", state.cluster.state().to_string());
            // The primary is M1 (as ctl names it); a secondary, by its address.
            let primary = state.election.is_primary();
            let name = if primary { master_id().to_string() } else { me.to_string() };
            crate::metrics::set_node("master", &name);
            let role = if primary { "primary" } else { "secondary" };
            figures.state("role", role.to_owned());
            let in_flight = state.transactions.as_ref().map_or(0, |t| t.in_flight().len());
            figures.gauge("transactions_in_flight", in_flight as u64);
            let connected = |node_type| {
                state.outboxes.keys().filter(|n| n.node_type() == node_type).count() as u64
            };
            figures.gauge("clients", connected(NodeType::Client));
            figures.gauge("storages", connected(NodeType::Storage));
        }));
    }
    if alone {
        crate::logging::set_node_id(master_id());
    } else {
        let master = Rc::clone(&master);
        let name = name.clone();
        glommio::spawn_local(async move { elect(master, &name).await }).detach();
    }
    {
        let master = Rc::clone(&master);
        glommio::spawn_local(async move { watch_storages(master).await }).detach();
    }
    {
        let master = Rc::clone(&master);
        glommio::spawn_local(async move { watch_clients(master).await }).detach();
    }
    let mut acceptor = crate::net::Acceptor::new(listener, Hello::new(NodeType::Master, &name));
    loop {
        let (stream, admission) = acceptor.next().await;
        let master = Rc::clone(&master);
        let name = name.clone();
        glommio::spawn_local(async move {
            let _counted = admission;
            let peer = stream.peer_addr().map_or_else(|_| "?".to_owned(), |a| a.to_string());
            if let Err(error) = handle(master, stream, &name, &peer).await {
                tracing::warn!("connection from {peer}: {error}");
            }
        })
        .detach();
    }
}

async fn handle(
    master: Rc<RefCell<Master>>,
    stream: glommio::net::TcpStream,
    cluster_name: &str,
    peer: &str,
) -> Result<(), ConnectionError> {
    let ours = Hello::new(NodeType::Master, cluster_name);
    let connection = Connection::accept(stream, ours, IDENTIFICATION_DEADLINE).await?;
    // What its hello said it is: with TLS, what its certificate allows (`net`).
    let hello_type = connection.peer().node_type;
    let peer_ip =
        connection.peer_address().map(|a: SocketAddr| a.ip().to_string()).unwrap_or_default();
    let socket = connection.socket();
    let (mut reader, mut writer) = connection.split();
    let frame =
        reader.receive_within(IDENTIFICATION_DEADLINE, "waiting for identification").await?;
    let identification = frame.message();
    let Ok(Message::RequestIdentification(request)) = identification else {
        match identification {
            Err(error) => tracing::warn!("{peer}: a bad identification: {error}"),
            Ok(other) => tracing::warn!("{peer}: {} before identifying", other.kind()),
        }
        let error = refusal_message(ErrorCode::ProtocolError, "identify first");
        writer.send(frame.msg_id, &error).await?;
        return Ok(());
    };
    if request.node_type != hello_type {
        tracing::warn!(
            "{peer}: identifies as a {} after a {}'s hello",
            request.node_type,
            hello_type
        );
        let message = format!(
            "a connection that said it is a {hello_type} cannot identify as a {}",
            request.node_type
        );
        writer.send(frame.msg_id, &refusal_message(ErrorCode::Denied, &message)).await?;
        return Ok(());
    }
    if request.node_type == NodeType::Master {
        let Some(address) = request.address.as_ref().and_then(socket_of) else {
            let error = refusal_message(ErrorCode::ProtocolError, "a master gives its address");
            writer.send(frame.msg_id, &error).await?;
            return Ok(());
        };
        // A master we were not told of: remember it, so our hints name it too.
        if !master.borrow().masters.contains(&address) {
            master.borrow_mut().masters.push(address);
        }
        let key = Key { timestamp: request.id_timestamp.unwrap_or(u64::MAX), address };
        let reply = master.borrow_mut().election.identified_by(key);
        match reply {
            Reply::Accept => {
                let accept = AcceptIdentification {
                    node_type: NodeType::Master,
                    nid: Some(master_id()),
                    your_nid: None,
                };
                writer.send(frame.msg_id, &accept).await?;
                // A secondary holds this connection open while it follows us; it hears of
                // a stop here (the cluster's, or its own: `ctl kill`).
                let killed = Rc::new(std::cell::Cell::new(false));
                let secondary = {
                    let mut state = master.borrow_mut();
                    // The same id as the last time this address followed (M2, M3... in
                    // the order they first came).
                    let known = state.secondary_ids.get(&address).copied();
                    let nid = known.unwrap_or_else(|| {
                        let nid = NodeId::new(NodeType::Master, state.next_secondary);
                        state.next_secondary += 1;
                        nid
                    });
                    state.secondary_ids.insert(address, nid);
                    state.secondaries.insert(nid, (address, Rc::clone(&killed)));
                    nid
                };
                let stop_now =
                    || killed.get() || master.borrow().cluster.state() == ClusterState::Stopping;
                let stopping = async {
                    while !stop_now() {
                        glommio::timer::sleep(Duration::from_millis(20)).await;
                    }
                };
                let closed = async { while reader.receive().await.is_ok() {} };
                futures_lite::future::or(closed, stopping).await;
                master.borrow_mut().secondaries.remove(&secondary);
                if stop_now() {
                    let stop = NotifyClusterInformation { state: ClusterState::Stopping };
                    writer.request(&stop).await?;
                    writer.close().await?;
                }
            }
            Reply::NotPrimary(_) => writer.send(frame.msg_id, &not_primary(&master)).await?,
        }
        return Ok(());
    }
    if !master.borrow().election.is_primary() {
        writer.send(frame.msg_id, &not_primary(&master)).await?;
        return Ok(());
    }
    let host = request.devpath.first().map_or(peer_ip, |h| h.as_str().to_owned());
    let identification = Identification {
        node_type: request.node_type,
        nid: request.nid,
        cluster_name: request.cluster_name.as_str().to_owned(),
        host,
        read_only: request.read_only,
        address: request.address.as_ref().and_then(socket_of),
    };
    let identified = master.borrow_mut().cluster.identify(&identification);
    let node = match identified {
        Ok(node) => node,
        Err(refusal) => {
            tracing::warn!("refused {peer}: {refusal}");
            writer.send(frame.msg_id, &to_error(&refusal)).await?;
            return Ok(());
        }
    };
    let accept = AcceptIdentification {
        node_type: NodeType::Master,
        nid: Some(master_id()),
        your_nid: Some(node.nid),
    };
    writer.send(frame.msg_id, &accept).await?;
    // Storages come and go rarely; clients and ctl (an admin's identification per command)
    // at any rate.
    if node.node_type == NodeType::Storage {
        tracing::info!("{peer} identified as {} (host {})", node.nid, identification.host);
    } else {
        tracing::debug!("{peer} identified as {}", node.nid);
    }

    // From here the node's writer task sends whatever it is told.
    let (sender, writing) = spawn_writer(writer, OUTBOX_SIZE_MAX);
    let outbox = Rc::new(sender);
    // Weak: the connection ends when the master drops the outbox (`send_clients_away`).
    let mine = Rc::downgrade(&outbox);
    master.borrow_mut().outboxes.insert(node.nid, outbox);
    if node.node_type == NodeType::Storage {
        master.borrow_mut().sockets.insert(node.nid, socket);
    }
    if node.node_type == NodeType::Client {
        master.borrow_mut().client_sockets.insert(node.nid, socket);
    }
    // The newcomer gets the node list; the others hear of the newcomer.
    let list = node_list_for(&master, node.nid);
    tell(&master, node.nid, list);
    announce(&master, node.nid);
    if node.node_type == NodeType::Client {
        send_table_only(&master, node.nid);
    }
    if node.node_type == NodeType::Storage {
        // Questions about transactions in doubt wait for it: asked first (it answers in
        // order, before anything settles them here).
        let questions = master.borrow().in_doubt.storage_back(node.nid);
        for ttid in questions {
            ask_final_tid(&master, node.nid, ttid);
        }
        if node.state == NodeState::Running {
            // A storage of the table rejoining a running cluster: the current table (its
            // cells were outdated while it was away), and into service.
            send_table(&master, node.nid);
            tell(&master, node.nid, StartOperation { backup: false }.into());
            tell_reservation(&master, node.nid);
        } else {
            // Recovery: does it keep a truncation order, what table does it hold?
            tell(&master, node.nid, wire::AskRecovery {}.into());
            master.borrow_mut().cluster.table_asked(node.nid);
            tell(&master, node.nid, Message::AskPartitionTable(wire::AskPartitionTable {}));
        }
    }
    let outcome = read_loop(&master, node.nid, node.node_type, &mut reader).await;
    // Only what is still this connection's: a client sent away may have been identified
    // again, under the same id, before its old connection ended.
    let (mine, changes) = {
        let mut state = master.borrow_mut();
        if state.outboxes.get(&node.nid).is_some_and(|o| std::ptr::eq(Rc::as_ptr(o), mine.as_ptr()))
        {
            state.outboxes.remove(&node.nid);
            state.invalidations.remove(&node.nid);
        }
        if state.sockets.get(&node.nid) == Some(&socket) {
            state.sockets.remove(&node.nid);
        }
        if state.client_sockets.get(&node.nid) == Some(&socket) {
            state.client_sockets.remove(&node.nid);
            state.client_liveness.forget(node.nid);
        }
        let mine = state.cluster.node(node.nid).is_none_or(|n| n.id_timestamp == node.id_timestamp);
        (mine, if mine { state.cluster.disconnected(node.nid) } else { Vec::new() })
    };
    if !mine {
        drop(writing);
        return Ok(());
    }
    if node.node_type != NodeType::Storage {
        tracing::debug!("{} disconnected", node.nid);
    }
    node_lost(&master, node.nid, node.node_type);
    broadcast_changes(&master, &changes);
    send_clients_away(&master);
    announce(&master, node.nid);
    // A storage that left during verification is no longer waited for.
    finish_start(&master);
    drop(writing);
    match outcome {
        Err(ConnectionError::Closed { mid_frame: false }) => Ok(()),
        other => other,
    }
}

async fn read_loop(
    master: &Rc<RefCell<Master>>,
    nid: NodeId,
    node_type: NodeType,
    reader: &mut FrameReader,
) -> Result<(), ConnectionError> {
    loop {
        let frame = reader.receive().await?;
        match node_type {
            NodeType::Storage => storage_frame(master, nid, &frame)?,
            NodeType::Admin => ctl_frame(master, nid, &frame)?,
            NodeType::Client => client_frame(master, nid, &frame),
            _ => unserved_frame(master, nid, &frame),
        }
    }
}

/// Requests of nodes with nothing to ask this master are answered with a refusal that
/// names them rather than left waiting.
fn unserved_frame(master: &Rc<RefCell<Master>>, nid: NodeId, frame: &RawFrame) {
    // Answers and notifications expect nothing back.
    if frame.kind.answer().is_none() {
        return;
    }
    let message = match frame.message() {
        Ok(_) => format!("this master does not serve {} to this node", frame.kind),
        Err(error) => error.to_string(),
    };
    answer(master, nid, frame.msg_id, refusal_message(ErrorCode::NotReady, &message).into());
}

fn storage_frame(
    master: &Rc<RefCell<Master>>,
    nid: NodeId,
    frame: &RawFrame,
) -> Result<(), ConnectionError> {
    match frame.message()? {
        Message::AnswerNodeStats(answer) => {
            let gathering = master.borrow_mut().stats_requests.remove(&frame.msg_id);
            if let Some(gathering) = gathering {
                gathering.nodes.borrow_mut().extend(answer.nodes);
                gathering.waiting.set(gathering.waiting.get() - 1);
                if gathering.waiting.get() == 0 {
                    gathering.done.notify();
                }
            }
        }
        Message::AnswerRecovery(answer) => {
            let send = master.borrow_mut().cluster.truncate_kept(nid, answer.truncate_tid);
            if let Some(tid) = send {
                let msg_id = next_request_id(master);
                send_to(master, nid, Outgoing::Request(msg_id, wire::Truncate { tid }.into()));
            }
        }
        Message::AnswerTruncate(_) => {
            master.borrow_mut().cluster.truncate_acknowledged(nid);
            maybe_start(master);
        }
        Message::AnswerPartitionTable(answer) => {
            let table = answer.ptid.map(|ptid| table_of(ptid, answer.num_replicas, &answer.rows));
            master.borrow_mut().cluster.recovered(nid, table);
            maybe_start(master);
        }
        Message::AnswerLockedTransactions(answer) => {
            let verifying = master.borrow().cluster.state() == ClusterState::Verifying;
            if !master.borrow().cluster.in_table(nid) {
                // Outside the table (pending, or dropped and back with its old data): what
                // it holds is nobody's concern but its own, settled there at once (its
                // locks committed, its votes dropped); if it is given cells, replication
                // drops whatever the cells' sources do not have.
                for held in &answer.transactions {
                    let message: Message = match held.tid {
                        Some(tid) => wire::ValidateTransaction { ttid: held.ttid, tid }.into(),
                        None => wire::AbortTransaction { ttid: held.ttid, nids: Vec::new() }.into(),
                    };
                    tell(master, nid, message);
                }
            } else if verifying {
                let mut state = master.borrow_mut();
                for locked in answer.transactions {
                    let entry = state.reported.entry(locked.ttid).or_default();
                    entry.0 = entry.0.max(locked.tid);
                    entry.1.insert(nid);
                }
            } else if master.borrow().transactions.is_some() {
                // A storage back in a running cluster: what it voted or locked before it
                // went away is settled now (it no longer takes part in those commits): one
                // finishing commits here too; one still open is left to its client; one
                // locked here is committed (a lock is only asked once the transaction is
                // decided, and it is never aborted while a storage that may hold its lock
                // is away); of any other, the storages are asked whether they committed it.
                for held in &answer.transactions {
                    let known = {
                        let state = master.borrow();
                        let transactions = state.transactions.as_ref().expect("checked");
                        (transactions.final_tid(held.ttid), transactions.is_open(held.ttid))
                    };
                    match (known, held.tid) {
                        ((Some(tid), _), _) | ((None, false), Some(tid)) => tell(
                            master,
                            nid,
                            wire::ValidateTransaction { ttid: held.ttid, tid }.into(),
                        ),
                        ((None, true), _) => {}
                        ((None, false), None) => {
                            let decided = ask_in_doubt(master, held.ttid, nid);
                            carry_out(master, decided);
                        }
                    }
                }
            }
        }
        Message::AnswerLastIds(ids) => {
            master.borrow_mut().cluster.storage_ids(nid, ids.last_tid, ids.last_oid);
            finish_start(master);
        }
        Message::AnswerFinalTid(answer)
            if master.borrow().final_tid_requests.contains_key(&frame.msg_id) =>
        {
            let request = master.borrow_mut().final_tid_requests.remove(&frame.msg_id);
            let (_, ttid) = request.expect("checked");
            let decision = master.borrow_mut().in_doubt.answered(nid, ttid, answer.tid);
            settle(master, decision.into_iter().collect());
        }
        Message::AnswerInformationLocked(locked) => {
            let mut state = master.borrow_mut();
            state.lock_requests.remove(&frame.msg_id);
            state.liveness.answered(nid, frame.msg_id);
            drop(state);
            let outcome =
                with_transactions(master, |t, readable| t.locked(nid, locked.ttid, readable));
            publish(master, outcome);
        }
        Message::Error(error) if master.borrow().final_tid_requests.contains_key(&frame.msg_id) => {
            // It cannot say (its index is damaged?): no longer asked.
            let request = master.borrow_mut().final_tid_requests.remove(&frame.msg_id);
            let (_, ttid) = request.expect("checked");
            tracing::error!("{nid} cannot say whether {ttid} committed: {}", error.message);
            let decision = master.borrow_mut().in_doubt.answered(nid, ttid, None);
            settle(master, decision.into_iter().collect());
        }
        Message::Error(error) if master.borrow().lock_requests.contains_key(&frame.msg_id) => {
            let request = master.borrow_mut().lock_requests.remove(&frame.msg_id);
            master.borrow_mut().liveness.answered(nid, frame.msg_id);
            let (storage, ttid) = request.expect("checked");
            tracing::warn!(
                "{storage} cannot lock {ttid}: {}; its cells are outdated",
                error.message
            );
            taint_replications(master, storage);
            let outdated = master.borrow_mut().cluster.outdate_for_failed_vote(storage);
            match outdated {
                Ok(changes) => broadcast_changes(master, &changes),
                Err(refusal) => {
                    // It holds a partition's last readable copy without the transaction:
                    // out of service with it; the next verification settles the commit.
                    tracing::error!(
                        "{refusal}: {storage} refused to lock {ttid} and holds the only readable copy of some of its data; giving it up"
                    );
                    give_up(master, storage);
                }
            }
            let outcome =
                with_transactions(master, |t, readable| t.lock_failed(storage, ttid, readable));
            publish(master, outcome);
        }
        Message::AnswerPackOrders(answer) => master.borrow_mut().packs.learn(answer.orders),
        // A storage catching up on the orders it missed (it was away, or just started).
        Message::AskPackOrders(ask) => {
            let orders = master.borrow().packs.orders_from(ask.min_pack_id);
            answer(master, nid, frame.msg_id, wire::AnswerPackOrders { orders }.into());
        }
        Message::NotifyPackCompleted(completed) => {
            let in_service = storages_in_service(master);
            let ready = master.borrow_mut().packs.completed(nid, completed.pack_id, &in_service);
            answer_pack_waiters(master, ready);
        }
        Message::Pong(_) => master.borrow_mut().liveness.answered(nid, frame.msg_id),
        // A storage starts (or goes on with) replicating out-of-date cells: the last
        // committed tid, and what is in flight (it may commit without that cell's data).
        Message::AskUnfinishedTransactions(ask) => {
            let answered = {
                let mut state = master.borrow_mut();
                let Master { transactions, replicating, cluster, in_doubt, .. } = &mut *state;
                match transactions.as_ref().filter(|_| cluster.state() == ClusterState::Running) {
                    Some(transactions) => {
                        // A round asks several times: a failure since its first ask
                        // is not forgotten (`NotifyReplicationDone` takes the entry).
                        for &partition in &ask.partitions {
                            replicating.entry((nid, partition)).or_insert(false);
                        }
                        // Transactions in doubt may still commit: waited for too.
                        let mut ttids = transactions.in_flight();
                        ttids.extend(in_doubt.ttids());
                        Ok(wire::AnswerUnfinishedTransactions {
                            max_tid: transactions.last_transaction(),
                            ttids,
                        })
                    }
                    None => Err(not_running(cluster.state())),
                }
            };
            let message = answered.map_or_else(|r| to_error(&r).into(), Message::from);
            answer(master, nid, frame.msg_id, message);
        }
        Message::NotifyReplicationDone(done) => replication_done(master, nid, done),
        Message::NotifyReplicationProgress(progress) => {
            let now = elapsed(master);
            let mut state = master.borrow_mut();
            let entry = state
                .progress
                .entry((nid, progress.partition))
                .or_insert_with(|| (progress.clone(), now, progress.position));
            entry.0 = progress;
        }
        Message::AnswerReserveOids(_) => {
            let ours = {
                let mut state = master.borrow_mut();
                state.liveness.answered(nid, frame.msg_id);
                state.reserve_requests.remove(&frame.msg_id).is_some()
            };
            // (Answers to `tell_reservation` need nothing.)
            if ours {
                reservation_answered(master, nid);
            }
        }
        Message::NotifyReady(_) => {}
        Message::AnswerCheckTidRange(answer) => {
            let empty = wire::messages::Digest([0; 20]);
            let digests = Digests {
                count: answer.count,
                digests: [answer.digest, empty, empty],
                last: (answer.count > 0).then_some((answer.max_tid, wire::Oid(0))),
                damaged: answer.damaged_tid.map(|tid| (tid, wire::Oid(0))),
            };
            check_answered(master, nid, frame.msg_id, Ok(digests));
        }
        Message::AnswerCheckSerialRange(answer) => {
            let digests = Digests {
                count: answer.count,
                digests: [answer.tid_digest, answer.oid_digest, answer.data_digest],
                last: (answer.count > 0).then_some((answer.max_tid, answer.max_oid)),
                damaged: answer.damaged_tid.zip(answer.damaged_oid),
            };
            check_answered(master, nid, frame.msg_id, Ok(digests));
        }
        Message::Error(error) if is_check_request(master, frame.msg_id) => {
            check_answered(master, nid, frame.msg_id, Err(error.message.to_string()));
        }
        Message::NotifyPartitionCorrupted(notify) => damage_reported(master, nid, notify),
        Message::Error(error) => {
            tracing::warn!("{nid} says {}: {}", error.code, error.message)
        }
        other => tracing::warn!("unexpected {} from {nid}", other.kind()),
    }
    Ok(())
}

fn ctl_frame(
    master: &Rc<RefCell<Master>>,
    nid: NodeId,
    frame: &RawFrame,
) -> Result<(), ConnectionError> {
    let outcome: Result<Message, Refusal> = match frame.message()? {
        Message::AskNodeStats(_) => {
            gather_stats(master, nid, frame.msg_id);
            return Ok(());
        }
        Message::AskClusterState(_) => {
            Ok(AnswerClusterState { state: master.borrow().cluster.state() }.into())
        }
        Message::AskPartitionList(ask) => {
            let state = master.borrow();
            let table = state.cluster.table();
            let partitions = table.map_or(0, PartitionTable::partitions);
            let end = if ask.max_offset == 0 { partitions } else { ask.max_offset };
            let no_cell = ask.nid.filter(|&nid| !state.cluster.in_table(nid));
            if let Some(nid) = no_cell.filter(|_| table.is_some()) {
                Err(refuse(ErrorCode::Denied, format!("{nid} holds no cell of the table")))
            } else if ask.max_offset != 0 && ask.max_offset <= ask.min_offset {
                Err(refuse(
                    ErrorCode::Denied,
                    format!(
                        "MAX ({}) is the first partition not shown: give one above MIN ({}), or 0 for the end",
                        ask.max_offset, ask.min_offset
                    ),
                ))
            } else if table.is_some() && (ask.min_offset >= end || end > partitions) {
                Err(refuse(
                    ErrorCode::Denied,
                    format!(
                        "no partition {} to show: the table has partitions 0 to {}",
                        if ask.min_offset >= partitions { ask.min_offset } else { end - 1 },
                        partitions.saturating_sub(1)
                    ),
                ))
            } else {
                let rows = table.map_or_else(Vec::new, |t| {
                    t.rows
                        .iter()
                        .enumerate()
                        .skip(ask.min_offset as usize)
                        .take((end - ask.min_offset) as usize)
                        .map(|(p, row)| PartitionRow {
                            partition: PartitionId(p as u32),
                            cells: cells_of(row)
                                .into_iter()
                                .filter(|c| ask.nid.is_none_or(|nid| c.nid == nid))
                                .collect(),
                        })
                        .collect()
                });
                Ok(AnswerPartitionList {
                    ptid: table.map(|t| t.ptid),
                    num_replicas: table.map_or(0, |t| t.replicas),
                    rows,
                }
                .into())
            }
        }
        Message::AskNodeList(ask) => {
            let state = master.borrow();
            let mut nodes = masters_info(&state);
            nodes.extend(state.cluster.nodes().map(node_info));
            nodes.retain(|n| ask.node_type.is_none_or(|t| t == n.node_type));
            Ok(AnswerNodeList { nodes }.into())
        }
        Message::SetClusterState(set) => {
            let outcome = master.borrow_mut().cluster.set_cluster_state(set.state);
            outcome.map(|()| {
                if set.state == ClusterState::Stopping {
                    stop(master);
                } else {
                    maybe_start(master);
                }
                send_clients_away(master);
                AnswerSetClusterState {}.into()
            })
        }
        Message::AddPendingNodes(add) => {
            let outcome = master.borrow_mut().cluster.add_pending(&add.nids);
            outcome.map(|added| {
                for nid in added {
                    announce(master, nid);
                    send_table(master, nid);
                    tell(master, nid, StartOperation { backup: false }.into());
                    tell_reservation(master, nid);
                }
                AnswerAddPendingNodes {}.into()
            })
        }
        Message::TweakPartitionTable(tweak) => {
            let outcome = master.borrow_mut().cluster.tweak(&tweak.drop, tweak.dry_run);
            outcome.map(|(planned, changes)| {
                if !tweak.dry_run {
                    broadcast_changes(master, &changes);
                    warn_of_shared_hosts(master);
                }
                AnswerTweakPartitionTable {
                    changed: !changes.is_empty(),
                    rows: planned.rows.iter().map(|row| cells_of(row)).collect(),
                }
                .into()
            })
        }
        Message::AskPrimary(_) => Ok(wire::AnswerPrimary { primary: master_id() }.into()),
        // Answered when the check is over.
        Message::CheckReplicas(ask) => match start_check(master, nid, frame.msg_id, ask) {
            Ok(()) => return Ok(()),
            Err(refusal) => Err(refusal),
        },
        Message::AskReplicationProgress(_) => Ok(replication_progress(master).into()),
        Message::Truncate(truncate) => truncate_database(master, truncate.tid),
        Message::AskLastIds(_) => {
            let state = master.borrow();
            let ids = match &state.transactions {
                Some(transactions) => transactions.last_ids(),
                None => state.cluster.last_ids(),
            };
            Ok(wire::AnswerLastIds {
                last_tid: ids.last_tid,
                last_oid: ids.last_oid,
                first_tid: None,
            }
            .into())
        }
        Message::SetNodeState(set) if set.nid.node_type() == NodeType::Master => {
            kill_master(master, set.nid, set.state).map(|()| wire::AnswerSetNodeState {}.into())
        }
        Message::SetNodeState(set) => {
            let outcome = match set.state {
                NodeState::Down => master.borrow_mut().cluster.kill(set.nid),
                NodeState::Unknown => master.borrow_mut().cluster.drop_node(set.nid),
                other => Err(Refusal {
                    code: ErrorCode::Denied,
                    message: format!(
                        "cannot set a node {other}: only DOWN (kill) or UNKNOWN (drop)"
                    ),
                }),
            };
            outcome.map(|changes| {
                // A killed storage is told so, and shuts down.
                let info = NodeInfo {
                    node_type: NodeType::Storage,
                    address: None,
                    nid: Some(set.nid),
                    state: set.state,
                    id_timestamp: None,
                };
                tell(
                    master,
                    set.nid,
                    NotifyNodeInformation { timestamp: 0, nodes: vec![info] }.into(),
                );
                broadcast_changes(master, &changes);
                if set.state == NodeState::Unknown {
                    // Gone for good: questions in doubt no longer wait for it.
                    let decisions = master.borrow_mut().in_doubt.storage_dropped(set.nid);
                    settle(master, decisions);
                }
                wire::AnswerSetNodeState {}.into()
            })
        }
        Message::SetNumReplicas(set) => {
            let changed = master.borrow_mut().cluster.set_replicas(set.replicas);
            if changed {
                broadcast_table_version(master);
            }
            Ok(AnswerSetNumReplicas {}.into())
        }
        other => Err(Refusal {
            code: ErrorCode::ProtocolError,
            message: format!("{} is not a ctl request", other.kind()),
        }),
    };
    let message = outcome.unwrap_or_else(|refusal| to_error(&refusal).into());
    answer(master, nid, frame.msg_id, message);
    Ok(())
}

/// The election: ask every other master; follow the one that wins; when the primary
/// followed is lost, elect again.
async fn elect(master: Rc<RefCell<Master>>, cluster_name: &str) {
    loop {
        let role = master.borrow().election.role;
        match role {
            Role::Primary => {
                crate::logging::set_node_id(master_id());
                tracing::info!("elected primary master, as {}", master_id());
                return;
            }
            Role::Candidate(key) => {
                let others: Vec<SocketAddr> = {
                    let state = master.borrow();
                    state.masters.iter().copied().filter(|&m| m != state.election.me).collect()
                };
                for other in others {
                    if !matches!(master.borrow().election.role, Role::Candidate(_)) {
                        break;
                    }
                    if let Ok(reply) = ask_master(other, cluster_name, key).await {
                        master.borrow_mut().election.answered(other, reply.0);
                    }
                }
                master.borrow_mut().election.asked_everyone();
            }
            Role::Secondary(primary) => {
                let key = Key { timestamp: 0, address: master.borrow().election.me };
                match ask_master(primary, cluster_name, key).await {
                    Ok((Reply::Accept, Some(mut connection))) => {
                        tracing::info!("secondary master: following the primary at {primary}");
                        // Follow it until it goes away, or the cluster stops.
                        while let Ok(frame) = connection.receive(None).await {
                            if let Ok(Message::NotifyClusterInformation(info)) = frame.message()
                                && info.state == ClusterState::Stopping
                            {
                                tracing::info!(
                                    "told to stop by the primary (the cluster stops, or ctl kill)"
                                );
                                crate::shutdown::request();
                                return;
                            }
                        }
                        tracing::warn!("the primary at {primary} is lost: electing again");
                    }
                    _ => glommio::timer::sleep(Duration::from_millis(200)).await,
                }
                master.borrow_mut().election.primary_lost(now_nanos());
            }
        }
    }
}

/// Identifies to another master with our key; its reply, and the connection if it accepted.
async fn ask_master(
    other: SocketAddr,
    cluster_name: &str,
    key: Key,
) -> Result<(Reply, Option<Connection>), ConnectionError> {
    let request = wire::RequestIdentification {
        node_type: NodeType::Master,
        nid: None,
        address: Some(address_of(key.address)),
        cluster_name: Text::from(cluster_name),
        id_timestamp: Some(key.timestamp),
        devpath: Vec::new(),
        read_only: false,
        backup: Vec::new(),
        new_nid: None,
    };
    match identify_once(other, NodeType::Master, cluster_name, &request).await? {
        (connection, Message::AcceptIdentification(_)) => Ok((Reply::Accept, Some(connection))),
        (_, Message::NotPrimaryMaster(not)) => Ok((Reply::NotPrimary(primary_hint(&not)), None)),
        _ => Err(ConnectionError::Closed { mid_frame: false }),
    }
}

/// Connects to `target`, exchanges hellos and sends `request`: the connection and the
/// identification's answer.
async fn identify_once(
    target: SocketAddr,
    node_type: NodeType,
    cluster_name: &str,
    request: &wire::RequestIdentification,
) -> Result<(Connection, Message), ConnectionError> {
    let stream = connect_within(target, IDENTIFICATION_DEADLINE).await?;
    let hello = Hello::new(node_type, cluster_name);
    // ctl may be given an admin node's address.
    let expected: &[NodeType] = if node_type == NodeType::Admin {
        &[NodeType::Master, NodeType::Admin]
    } else {
        &[NodeType::Master]
    };
    let mut connection =
        Connection::connect(stream, target, hello, IDENTIFICATION_DEADLINE, expected).await?;
    connection.request(request).await?;
    let answer = connection.receive(Some(IDENTIFICATION_DEADLINE)).await?;
    let message = answer.message()?;
    Ok((connection, message))
}

/// The primary a secondary names, if it knows one.
fn primary_hint(not: &NotPrimaryMaster) -> Option<SocketAddr> {
    not.primary.and_then(|i| not.masters.get(i as usize)).and_then(socket_of)
}

/// What finding the primary ended with.
#[derive(Debug, thiserror::Error)]
pub enum FindPrimaryError {
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    #[error("refused: {0}")]
    Refused(Refusal),
}

/// Connects to the primary among `masters` (following the secondaries' hints) and
/// identifies; returns the connection and the acceptance.
pub async fn identify_to_primary(
    masters: &[SocketAddr],
    node_type: NodeType,
    cluster_name: &str,
    request: &wire::RequestIdentification,
) -> Result<(Connection, AcceptIdentification), FindPrimaryError> {
    let mut candidates: std::collections::VecDeque<SocketAddr> = masters.iter().copied().collect();
    let mut last_error = None;
    for _ in 0..masters.len() * 3 + 1 {
        let Some(target) = candidates.pop_front() else { break };
        candidates.push_back(target);
        match identify_once(target, node_type, cluster_name, request).await {
            Ok((connection, Message::AcceptIdentification(accept))) => {
                return Ok((connection, accept));
            }
            Ok((_, Message::NotPrimaryMaster(not))) => {
                if let Some(primary) = primary_hint(&not) {
                    candidates.retain(|&c| c != primary);
                    candidates.push_front(primary);
                }
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
            Ok((_, Message::Error(error))) => {
                return Err(FindPrimaryError::Refused(Refusal {
                    code: error.code,
                    message: error.message.to_string(),
                }));
            }
            Ok((_, other)) => {
                return Err(FindPrimaryError::Refused(Refusal {
                    code: ErrorCode::ProtocolError,
                    message: format!("unexpected {}", other.kind()),
                }));
            }
            Err(error) => last_error = Some(error),
        }
    }
    let error = last_error.unwrap_or_else(|| {
        ConnectionError::Io(std::io::Error::other(format!("no primary master among {masters:?}")))
    });
    Err(error.into())
}

/// How long a stopping primary waits for its storages to leave before it stops anyway.
const STOPPING_PATIENCE: Duration = Duration::from_secs(10);

/// The cluster was set STOPPING: every node is told; storages flush, checkpoint and exit;
/// secondary masters exit; this process stops once the storages are gone.
fn stop(master: &Rc<RefCell<Master>>) {
    broadcast(master, NotifyClusterInformation { state: ClusterState::Stopping }.into());
    let master = Rc::clone(master);
    glommio::spawn_local(async move {
        let started = std::time::Instant::now();
        while started.elapsed() < STOPPING_PATIENCE {
            let storages =
                master.borrow().outboxes.keys().any(|nid| nid.node_type() == NodeType::Storage);
            if !storages {
                break;
            }
            glommio::timer::sleep(Duration::from_millis(20)).await;
        }
        tracing::info!("the cluster is stopping");
        crate::shutdown::request();
    })
    .detach();
}

/// Starts the cluster if the rules allow: the table goes to every storage, storages in
/// service are told to start, and (nothing to verify before transactions exist) the cluster
/// is RUNNING.
fn maybe_start(master: &Rc<RefCell<Master>>) {
    // `ctl start` moves the cluster to VERIFYING itself; otherwise the rules may.
    master.borrow_mut().cluster.try_start();
    let storages = connected_storages(master);
    if !master.borrow_mut().cluster.begin_verification(&storages) {
        return;
    }
    tracing::info!("VERIFYING with {}", nid_list(&storages));
    {
        // A new verification: whatever an earlier one (or the running cluster) was asking.
        let mut state = master.borrow_mut();
        state.reported.clear();
        state.validated.clear();
        state.verification_asked = false;
        state.in_doubt.clear();
        state.final_tid_requests.clear();
    }
    // Verification: every storage gets the table and is asked for its last ids (the
    // answers finish the start).
    for &nid in &storages {
        send_table(master, nid);
    }
    finish_start(master);
}

fn nid_list(nids: &[NodeId]) -> String {
    nids.iter().map(NodeId::to_string).collect::<Vec<_>>().join(", ")
}

fn connected_storages(master: &Rc<RefCell<Master>>) -> Vec<NodeId> {
    master
        .borrow()
        .cluster
        .nodes()
        .filter(|n| n.node_type == NodeType::Storage && n.connected)
        .map(|n| n.nid)
        .collect()
}

/// Once every storage asked has reported its last ids (or left), and every transaction in
/// doubt is settled: RUNNING, and the storages go into service. Until then no id can be
/// handed out.
///
/// Transactions in doubt (the previous primary died while finishing them): one locked
/// anywhere was committed, and every storage makes it visible; one only voted is committed
/// if some storage committed it (`in_doubt`: its lock was asked, so it is committed), and
/// dropped only when no storage did. Each storage carries these out before it starts
/// operation.
fn finish_start(master: &Rc<RefCell<Master>>) {
    if !master.borrow().cluster.ids_collected() {
        return;
    }
    if !std::mem::replace(&mut master.borrow_mut().verification_asked, true) {
        let reported = std::mem::take(&mut master.borrow_mut().reported);
        for (ttid, (tid, holders)) in reported {
            match tid {
                Some(tid) => {
                    tracing::info!("transaction {ttid} was locked: committed as {tid}");
                    master.borrow_mut().validated.insert(ttid, tid);
                    for nid in connected_storages(master) {
                        tell(master, nid, wire::ValidateTransaction { ttid, tid }.into());
                    }
                }
                None => {
                    for holder in holders {
                        let decided = ask_in_doubt(master, ttid, holder);
                        carry_out(master, decided);
                    }
                }
            }
        }
    }
    if master.borrow().in_doubt.is_settling() {
        // `settle` calls again once the answers are in.
        return;
    }
    let (ids, validated, late) = {
        let mut state = master.borrow_mut();
        let late = state.cluster.verified();
        state.verification_asked = false;
        (state.cluster.last_ids(), std::mem::take(&mut state.validated), late)
    };
    let last_tid = ids.last_tid.max(validated.values().copied().max());
    let shown = last_tid.map_or_else(|| "none".to_owned(), |tid| tid.to_string());
    tracing::info!("RUNNING (last tid {shown})");
    {
        let mut state = master.borrow_mut();
        state.transactions =
            Some(Transactions::new(last_tid, ids.last_oid).with_recovered(validated));
        // Those waited in an earlier session, whose clients were sent away.
        state.final_tid_waiters.clear();
        state.reservation = None;
        state.reserve_requests.clear();
        state.oid_waiters.clear();
    }
    // Storages went from PENDING to RUNNING: every node hears it (a replicating storage
    // picks its sources among the running ones).
    let nids: Vec<NodeId> = master.borrow().outboxes.keys().copied().collect();
    for nid in nids {
        let list = node_list_for(master, nid);
        tell(master, nid, list);
    }
    // Those that came while the cluster verified were not asked what they hold: they are
    // asked now, as a storage rejoining a running cluster is.
    for &nid in &late {
        send_table(master, nid);
    }
    for nid in connected_storages(master) {
        tell(master, nid, StartOperation { backup: false }.into());
        tell_reservation(master, nid);
    }
    broadcast(master, NotifyClusterInformation { state: ClusterState::Running }.into());
    warn_of_shared_hosts(master);
}

/// `holder` holds `ttid` voted and nobody here knows its fate: every other storage
/// connected is asked whether it committed it (`in_doubt`). The decision, when nobody is
/// left to ask.
fn ask_in_doubt(master: &Rc<RefCell<Master>>, ttid: Tid, holder: NodeId) -> Vec<Decision> {
    let connected: BTreeSet<NodeId> = connected_storages(master).into_iter().collect();
    let candidates: BTreeSet<NodeId> = {
        let state = master.borrow();
        let in_table = state.cluster.table().map(PartitionTable::nodes).unwrap_or_default();
        in_table.into_iter().chain(connected.iter().copied()).collect()
    };
    let (asked, decided) = master.borrow_mut().in_doubt.ask(ttid, holder, &candidates, &connected);
    let away: Vec<NodeId> =
        candidates.iter().copied().filter(|&n| n != holder && !connected.contains(&n)).collect();
    if decided.is_none() && !away.is_empty() {
        tracing::warn!(
            "transaction {ttid} is in doubt and may be locked on {}, away: waiting for them (ctl drop a storage gone for good)",
            nid_list(&away)
        );
    }
    for nid in asked {
        ask_final_tid(master, nid, ttid);
    }
    decided.into_iter().collect()
}

fn ask_final_tid(master: &Rc<RefCell<Master>>, nid: NodeId, ttid: Tid) {
    let msg_id = next_request_id(master);
    master.borrow_mut().final_tid_requests.insert(msg_id, (nid, ttid));
    send_to(master, nid, Outgoing::Request(msg_id, wire::AskFinalTid { ttid }.into()));
}

/// Decisions that came with answers: carried out, and in VERIFYING the start goes on if
/// they were the last.
fn settle(master: &Rc<RefCell<Master>>, decisions: Vec<Decision>) {
    if decisions.is_empty() {
        return;
    }
    carry_out(master, decisions);
    if master.borrow().cluster.state() == ClusterState::Verifying {
        finish_start(master);
    }
}

/// Carries out decisions about transactions in doubt. In VERIFYING every storage is told
/// (those that did not vote it ignore it); in a running cluster, the holders.
fn carry_out(master: &Rc<RefCell<Master>>, decisions: Vec<Decision>) {
    let verifying = master.borrow().cluster.state() == ClusterState::Verifying;
    for decision in decisions {
        let recipients: Vec<NodeId> = match &decision {
            _ if verifying => connected_storages(master),
            Decision::Commit { holders, .. } | Decision::Abort { holders, .. } => {
                holders.iter().copied().collect()
            }
        };
        // Clients waiting for the outcome: the tid, or "the storages know" (none did).
        let found = match &decision {
            Decision::Commit { tid, .. } => *tid,
            Decision::Abort { .. } => Tid::MAX,
        };
        let waiters = master.borrow_mut().final_tid_waiters.remove(&decision.ttid());
        for (client, msg_id) in waiters.unwrap_or_default() {
            answer(master, client, msg_id, wire::AnswerFinalTid { tid: Some(found) }.into());
        }
        let message: Message = match decision {
            Decision::Commit { ttid, tid, .. } => {
                tracing::info!("transaction {ttid} was committed as {tid} elsewhere: committed");
                if verifying {
                    master.borrow_mut().validated.insert(ttid, tid);
                }
                wire::ValidateTransaction { ttid, tid }.into()
            }
            Decision::Abort { ttid, .. } => {
                tracing::info!(
                    "transaction {ttid} was voted, and no storage committed it: aborted"
                );
                wire::AbortTransaction { ttid, nids: Vec::new() }.into()
            }
        };
        for nid in recipients {
            tell(master, nid, message.clone());
        }
    }
}

/// A fresh id for a request of the master's own (locks, pings, questions), far from the
/// writer tasks' ids.
/// This master's figures (and the cluster's state), then every connected storage's, asked
/// now and waited for at most `STATS_PATIENCE`: the answer to `ctl`'s `AskNodeStats`.
fn gather_stats(master: &Rc<RefCell<Master>>, ctl: NodeId, msg_id: u32) {
    let (figures, _, _) = crate::metrics::snapshot();
    let storages: Vec<NodeId> = master
        .borrow()
        .outboxes
        .keys()
        .copied()
        .filter(|n| n.node_type() == NodeType::Storage)
        .collect();
    let gathering = Rc::new(StatsGathering {
        nodes: RefCell::new(vec![figures.to_wire(master_id())]),
        waiting: std::cell::Cell::new(storages.len()),
        done: logstore::Notify::default(),
    });
    let mut asked = Vec::new();
    for storage in storages {
        let request = next_request_id(master);
        master.borrow_mut().stats_requests.insert(request, Rc::clone(&gathering));
        send_to(master, storage, Outgoing::Request(request, wire::AskNodeStats {}.into()));
        asked.push(request);
    }
    let master = Rc::clone(master);
    glommio::spawn_local(async move {
        if gathering.waiting.get() > 0 {
            futures_lite::future::or(gathering.done.notified(), async {
                glommio::timer::sleep(STATS_PATIENCE).await;
            })
            .await;
        }
        for request in asked {
            master.borrow_mut().stats_requests.remove(&request);
        }
        let nodes = std::mem::take(&mut *gathering.nodes.borrow_mut());
        answer(&master, ctl, msg_id, wire::AnswerNodeStats { nodes }.into());
    })
    .detach();
}

fn next_request_id(master: &Rc<RefCell<Master>>) -> u32 {
    let mut state = master.borrow_mut();
    let msg_id = state.next_request_id;
    state.next_request_id = msg_id.wrapping_add(1).max(1 << 31);
    msg_id
}

/// Makes oids up to `up_to` durable on every storage in service before any is handed out
/// (`AskReserveOids`), unless a reservation is already on its way (the waiting requests are
/// tried again when it is done, and ask for more if they need it).
fn reserve_oids(master: &Rc<RefCell<Master>>, up_to: wire::Oid) {
    if master.borrow().reservation.is_some() {
        return;
    }
    let storages: BTreeSet<NodeId> = storages_in_service(master).into_iter().collect();
    if storages.is_empty() {
        let waiters = std::mem::take(&mut master.borrow_mut().oid_waiters);
        for (client, msg_id, _) in waiters {
            let refusal = refusal_message(ErrorCode::NotReady, "no storage in service");
            answer(master, client, msg_id, refusal.into());
        }
        return;
    }
    let now = elapsed(master);
    master.borrow_mut().reservation = Some(Reservation::new(up_to, storages.clone()));
    for nid in storages {
        let msg_id = next_request_id(master);
        {
            let mut state = master.borrow_mut();
            state.reserve_requests.insert(msg_id, nid);
            state.liveness.asked(nid, msg_id, now);
        }
        send_to(master, nid, Outgoing::Request(msg_id, wire::AskReserveOids { oid: up_to }.into()));
    }
}

/// A storage answered the reservation, or is gone: once every storage in service has, the
/// oids are handed out to the clients waiting, in order.
fn reservation_answered(master: &Rc<RefCell<Master>>, storage: NodeId) {
    let done = {
        let mut state = master.borrow_mut();
        let finished = state.reservation.as_mut().is_some_and(|r| r.answered(storage));
        if finished { state.reservation.take() } else { None }
    };
    let Some(done) = done else { return };
    if let Some(transactions) = master.borrow_mut().transactions.as_mut() {
        transactions.oids_reserved(done.up_to);
    }
    loop {
        let next = master.borrow_mut().oid_waiters.pop_front();
        let Some((client, msg_id, count)) = next else { break };
        let decided = master.borrow_mut().transactions.as_mut().map(|t| t.new_oids(count));
        match decided {
            Some(Ok(NewOids::Given(first))) => {
                answer(master, client, msg_id, wire::AnswerNewOids { first, count }.into());
            }
            Some(Ok(NewOids::Reserve(up_to))) => {
                master.borrow_mut().oid_waiters.push_front((client, msg_id, count));
                reserve_oids(master, up_to);
                break;
            }
            Some(Err(refusal)) => answer(master, client, msg_id, to_error(&refusal).into()),
            None => {}
        }
    }
}

/// Tells a storage going into service how far oids are reserved, so that it reports at
/// least that to a later primary (it may be the one left holding readable cells).
fn tell_reservation(master: &Rc<RefCell<Master>>, nid: NodeId) {
    let reserved = master.borrow().transactions.as_ref().and_then(Transactions::reserved_oid);
    if let Some(oid) = reserved {
        tell(master, nid, wire::AskReserveOids { oid }.into());
    }
}

/// A storage says its out-of-date cell of a partition holds everything up to a tid: the
/// cell goes UP_TO_DATE (and FEEDING cells it replaces are discarded), unless a transaction
/// failed on that storage since its round began (it asks again, and goes on).
fn replication_done(master: &Rc<RefCell<Master>>, nid: NodeId, done: wire::NotifyReplicationDone) {
    master.borrow_mut().progress.remove(&(nid, done.partition));
    let clean = master.borrow_mut().replicating.remove(&(nid, done.partition));
    if clean != Some(false) {
        tracing::warn!(
            "{nid} replicated partition {} up to {}, but a transaction failed on it meanwhile (or it never asked): not taken",
            done.partition.0,
            done.tid
        );
        return;
    }
    let changed = master.borrow_mut().cluster.replication_done(done.partition, nid);
    match changed {
        Ok(changes) => {
            tracing::info!(
                "{nid} replicated partition {} up to {}: up to date",
                done.partition.0,
                done.tid
            );
            broadcast_changes(master, &changes);
        }
        Err(refusal) => tracing::warn!("{nid}: replication done: {refusal}"),
    }
}

/// The cells still out of date that reported progress.
fn replication_progress(master: &Rc<RefCell<Master>>) -> wire::AnswerReplicationProgress {
    let now = elapsed(master);
    let state = master.borrow();
    let out_of_date = |nid: NodeId, partition: PartitionId| {
        state.cluster.table().and_then(|t| t.rows.get(partition.0 as usize)).is_some_and(|row| {
            row.iter().any(|c| c.nid == nid && c.state == wire::CellState::OutOfDate)
        })
    };
    let cells = state
        .progress
        .iter()
        .filter(|((nid, partition), _)| out_of_date(*nid, *partition))
        .map(|(&(nid, partition), (report, began, start))| wire::messages::ReplicationProgress {
            nid,
            partition,
            position: report.position,
            target: report.target,
            bytes: report.bytes,
            elapsed_ms: now.saturating_sub(*began).as_millis() as u64,
            start: *start,
        })
        .collect();
    wire::AnswerReplicationProgress { cells }
}

/// A transaction failed on `storage`: its replications in progress must look again.
fn taint_replications(master: &Rc<RefCell<Master>>, storage: NodeId) {
    for ((nid, _), tainted) in master.borrow_mut().replicating.iter_mut() {
        if *nid == storage {
            *tainted = true;
        }
    }
}

/// `ctl truncate TID`: the cluster leaves operation (clients are sent away) and every
/// storage of the table is sent the order, which it keeps durably; once all keep it, the
/// cluster starts again (`Cluster::try_start`), and each storage truncates when
/// verification asks for its last ids. A primary that dies meanwhile leaves the order with
/// the storages: the next one carries it on (`AnswerRecovery`).
fn truncate_database(master: &Rc<RefCell<Master>>, tid: Tid) -> Result<Message, Refusal> {
    let storages = {
        let mut state = master.borrow_mut();
        if state.check.is_some() {
            return Err(refuse(ErrorCode::Denied, "a replica check is running"));
        }
        if state.in_doubt.is_settling() {
            return Err(refuse(ErrorCode::Denied, "transactions in doubt are being settled"));
        }
        let (last_tid, in_flight) = match &state.transactions {
            Some(transactions) => {
                (transactions.last_transaction(), !transactions.in_flight().is_empty())
            }
            None => (None, false),
        };
        let packed_after = state.packs.packed_after(tid);
        state.cluster.begin_truncate(tid, last_tid, in_flight, packed_after)?
    };
    tracing::info!("truncating the database after {tid}: the cluster recovers");
    broadcast(master, NotifyClusterInformation { state: ClusterState::Recovering }.into());
    send_clients_away(master);
    for nid in storages {
        let msg_id = next_request_id(master);
        send_to(master, nid, Outgoing::Request(msg_id, wire::Truncate { tid }.into()));
    }
    Ok(wire::AnswerTruncate {}.into())
}

/// A replica check in progress (`ctl check`): one `PartitionCheck` per partition, driven
/// here; the ctl request answered when all are done.
struct CheckRun {
    requester: (NodeId, u32),
    repair: bool,
    min_tid: Tid,
    max_tid: Tid,
    partitions: BTreeMap<PartitionId, PartitionCheck>,
    /// Requests in flight, by id: the partition and the storage asked.
    requests: BTreeMap<u32, (PartitionId, NodeId)>,
    /// Cells whose storage reported damage meanwhile: already being repaired.
    repairing: BTreeSet<(PartitionId, NodeId)>,
}

/// `ctl check`: the readable cells of each partition named (all if none) on running
/// storages, compared over `min_tid ..= max_tid` (the last committed tid if no max).
fn start_check(
    master: &Rc<RefCell<Master>>,
    requester: NodeId,
    msg_id: u32,
    ask: wire::CheckReplicas,
) -> Result<(), Refusal> {
    let run = {
        let state = master.borrow();
        if state.check.is_some() {
            return Err(refuse(ErrorCode::Denied, "a replica check is already running"));
        }
        let Some(transactions) =
            state.transactions.as_ref().filter(|_| state.cluster.state() == ClusterState::Running)
        else {
            return Err(not_running(state.cluster.state()));
        };
        let table =
            state.cluster.table().ok_or_else(|| refuse(ErrorCode::Denied, "no partition table"))?;
        let running = |nid: NodeId| {
            state.cluster.node(nid).is_some_and(|n| n.connected && n.state == NodeState::Running)
        };
        let last = transactions.last_transaction().unwrap_or(Tid::ZERO);
        let max_tid = ask.max_tid.unwrap_or(last).min(last);
        if ask.max_tid.is_some_and(|max| max < ask.min_tid) {
            return Err(refuse(
                ErrorCode::Denied,
                format!("MIN_TID {} is after MAX_TID {}", ask.min_tid, ask.max_tid.expect("some")),
            ));
        }
        let mut wanted: BTreeMap<PartitionId, Option<NodeId>> = BTreeMap::new();
        for named in &ask.partitions {
            if named.partition.0 as usize >= table.rows.len() {
                return Err(refuse(
                    ErrorCode::Denied,
                    format!(
                        "no partition {} (the table has {})",
                        named.partition.0,
                        table.rows.len()
                    ),
                ));
            }
            wanted.insert(named.partition, named.source);
        }
        if wanted.is_empty() {
            wanted = (0..table.rows.len()).map(|p| (PartitionId(p as u32), None)).collect();
        }
        let mut partitions = BTreeMap::new();
        let mut storages = BTreeSet::new();
        for (&partition, &reference) in &wanted {
            let cells: BTreeSet<NodeId> = table.rows[partition.0 as usize]
                .iter()
                .filter(|c| c.state.is_readable() && running(c.nid))
                .map(|c| c.nid)
                .collect();
            if let Some(reference) = reference.filter(|r| !cells.contains(r)) {
                return Err(refuse(
                    ErrorCode::Denied,
                    format!(
                        "{reference} has no readable cell of partition {} running",
                        partition.0
                    ),
                ));
            }
            storages.extend(cells.iter().copied());
            let check = PartitionCheck::new(partition, cells, reference, ask.min_tid, max_tid);
            partitions.insert(partition, check);
        }
        let storages: Vec<NodeId> = storages.into_iter().collect();
        if !state.packs.all_done(&storages) {
            return Err(refuse(
                ErrorCode::Denied,
                "a pack is in progress: the copies differ until every storage is done; check again then",
            ));
        }
        CheckRun {
            requester: (requester, msg_id),
            repair: ask.repair,
            min_tid: ask.min_tid,
            max_tid,
            partitions,
            requests: BTreeMap::new(),
            repairing: BTreeSet::new(),
        }
    };
    tracing::info!(
        "checking {} partitions from {} to {}{}",
        run.partitions.len(),
        run.min_tid,
        run.max_tid,
        if run.repair { ", repairing" } else { "" }
    );
    master.borrow_mut().check = Some(run);
    drive_check(master);
    Ok(())
}

fn is_check_request(master: &Rc<RefCell<Master>>, msg_id: u32) -> bool {
    master.borrow().check.as_ref().is_some_and(|run| run.requests.contains_key(&msg_id))
}

/// A storage's digests (or its refusal) for a check request.
fn check_answered(
    master: &Rc<RefCell<Master>>,
    nid: NodeId,
    msg_id: u32,
    answer: Result<Digests, String>,
) {
    {
        let mut state = master.borrow_mut();
        let Some(run) = state.check.as_mut() else { return };
        let Some((partition, asked)) = run.requests.remove(&msg_id) else { return };
        if asked != nid {
            return;
        }
        let check = run.partitions.get_mut(&partition).expect("asked for a partition checked");
        match answer {
            Ok(digests) => check.answered(nid, digests),
            Err(reason) => check.failed(nid, &reason),
        }
    }
    drive_check(master);
}

fn check_storage_lost(master: &Rc<RefCell<Master>>, nid: NodeId) {
    {
        let mut state = master.borrow_mut();
        let Some(run) = state.check.as_mut() else { return };
        run.requests.retain(|_, (_, asked)| *asked != nid);
        for check in run.partitions.values_mut() {
            check.failed(nid, "the storage went away");
        }
    }
    drive_check(master);
}

/// Sends what the partition checks ask next; once all are done, carries out and answers.
fn drive_check(master: &Rc<RefCell<Master>>) {
    let mut asks = Vec::new();
    {
        let mut state = master.borrow_mut();
        let Some(run) = state.check.as_mut() else { return };
        for (&partition, check) in &mut run.partitions {
            if let Some((range, nids)) = check.next_ask() {
                asks.extend(nids.into_iter().map(|nid| (partition, nid, range)));
            }
        }
    }
    for (partition, nid, range) in asks {
        let msg_id = next_request_id(master);
        if let Some(run) = master.borrow_mut().check.as_mut() {
            run.requests.insert(msg_id, (partition, nid));
        }
        let request: Message = match range {
            Range::Tids { min, max, length } => {
                wire::AskCheckTidRange { partition, length, min_tid: min, max_tid: max }.into()
            }
            Range::Serials { min_tid, min_oid, max_tid, length } => {
                wire::AskCheckSerialRange { partition, length, min_tid, max_tid, min_oid }.into()
            }
        };
        send_to(master, nid, Outgoing::Request(msg_id, request));
    }
    let done = master
        .borrow()
        .check
        .as_ref()
        .is_some_and(|run| run.partitions.values().all(PartitionCheck::is_done));
    if done {
        let run = master.borrow_mut().check.take().expect("checked");
        finish_check(master, run);
    }
}

/// The check is over: bad cells are marked CORRUPTED (never the last readable copy), with
/// `repair` every corrupted cell checked is copied again; the findings go to ctl.
fn finish_check(master: &Rc<RefCell<Master>>, run: CheckRun) {
    let mut findings = Vec::new();
    for (&partition, check) in &run.partitions {
        for finding in check.findings() {
            let mut what = finding.what.clone();
            if run.repairing.contains(&(partition, finding.nid)) {
                what.push_str(" (repaired since)");
            } else if finding.bad {
                let marked = master.borrow_mut().cluster.mark_corrupted(partition, finding.nid);
                match marked {
                    Ok(changes) => broadcast_changes(master, &changes),
                    Err(refusal) => what = format!("{what} (not marked: {})", refusal.message),
                }
            }
            tracing::warn!("check: partition {} on {}: {what}", partition.0, finding.nid);
            findings.push((partition, finding.clone(), what));
        }
        if run.repair {
            let corrupted: Vec<NodeId> = cell_states(master, partition)
                .into_iter()
                .filter(|&(_, state)| state == wire::CellState::Corrupted)
                .map(|(nid, _)| nid)
                .collect();
            for nid in corrupted {
                let repaired = master.borrow_mut().cluster.repair(partition, nid);
                match repaired {
                    Ok(changes) => {
                        tracing::info!("partition {} on {nid}: repairing", partition.0);
                        broadcast_changes(master, &changes);
                        let finding = crate::check::Finding {
                            nid,
                            at: None,
                            bad: true,
                            what: "CORRUPTED: being copied again from a good cell".to_owned(),
                        };
                        let what = finding.what.clone();
                        findings.push((partition, finding, what));
                    }
                    Err(refusal) => tracing::error!(
                        "partition {} on {nid}: not repaired: {}",
                        partition.0,
                        refusal.message
                    ),
                }
            }
        }
    }
    let findings = findings
        .into_iter()
        .map(|(partition, finding, what)| {
            let state = cell_states(master, partition)
                .into_iter()
                .find(|&(nid, _)| nid == finding.nid)
                .map_or(wire::CellState::Discarded, |(_, state)| state);
            wire::messages::CheckFinding {
                partition,
                nid: finding.nid,
                tid: finding.at.map(|(tid, _)| tid),
                oid: finding.at.and_then(|(_, oid)| oid),
                bad: finding.bad,
                state,
                what: Text::from(what.as_str()),
            }
        })
        .collect();
    let answer = wire::AnswerCheckReplicas {
        checked: run.partitions.len() as u32,
        min_tid: run.min_tid,
        max_tid: run.max_tid,
        findings,
    };
    let (requester, msg_id) = run.requester;
    self::answer(master, requester, msg_id, answer.into());
}

fn cell_states(
    master: &Rc<RefCell<Master>>,
    partition: PartitionId,
) -> Vec<(NodeId, wire::CellState)> {
    let state = master.borrow();
    let row = state.cluster.table().and_then(|t| t.rows.get(partition.0 as usize));
    row.map_or_else(Vec::new, |row| row.iter().map(|c| (c.nid, c.state)).collect())
}

/// A storage read damaged data of one of its cells: the cell is marked CORRUPTED and
/// copied again from a good one at once. The last readable copy is left as it is (the
/// damaged records are refused, the others served).
fn damage_reported(
    master: &Rc<RefCell<Master>>,
    nid: NodeId,
    notify: wire::NotifyPartitionCorrupted,
) {
    let partition = notify.partition;
    if !notify.nids.contains(&nid) {
        tracing::warn!("{nid} reports other nodes' cells corrupted: ignored");
        return;
    }
    let marked = master.borrow_mut().cluster.mark_corrupted(partition, nid);
    match marked {
        Ok(changes) => {
            if let Some(run) = master.borrow_mut().check.as_mut() {
                run.repairing.insert((partition, nid));
            }
            tracing::warn!(
                "partition {} on {nid}: damaged data found: CORRUPTED, repairing from a good copy",
                partition.0
            );
            broadcast_changes(master, &changes);
            let repaired = master.borrow_mut().cluster.repair(partition, nid);
            match repaired {
                Ok(changes) => broadcast_changes(master, &changes),
                Err(refusal) => tracing::error!(
                    "partition {} on {nid}: not repaired: {}",
                    partition.0,
                    refusal.message
                ),
            }
        }
        // Reported again before the change reached it.
        Err(Refusal { code: ErrorCode::Denied, .. })
            if !is_readable_cell(master, partition, nid) => {}
        Err(refusal) => tracing::error!(
            "partition {} on {nid}: damaged data found, and the cell stays: {}",
            partition.0,
            refusal.message
        ),
    }
}

fn is_readable_cell(master: &Rc<RefCell<Master>>, partition: PartitionId, nid: NodeId) -> bool {
    cell_states(master, partition).iter().any(|&(n, state)| n == nid && state.is_readable())
}

/// The time `liveness` works with.
fn elapsed(master: &Rc<RefCell<Master>>) -> Duration {
    master.borrow().started.elapsed()
}

/// Gives a storage up, as if its connection had been lost: its socket is shut down, so
/// its connection's task ends and the node is handled as lost (cells outdated, commits no
/// longer waiting for it). When its process runs again it sees the connection closed and
/// identifies again.
fn give_up(master: &Rc<RefCell<Master>>, nid: NodeId) {
    let socket = master.borrow().sockets.get(&nid).copied();
    if let Some(socket) = socket {
        shutdown_socket(socket);
    }
}

/// A liveness watch: the peers it follows (by socket) and their requests' ages.
type Watched = fn(&mut Master) -> (&mut Liveness, &BTreeMap<NodeId, std::os::fd::RawFd>);

fn storages_watched(state: &mut Master) -> (&mut Liveness, &BTreeMap<NodeId, std::os::fd::RawFd>) {
    (&mut state.liveness, &state.sockets)
}

fn clients_watched(state: &mut Master) -> (&mut Liveness, &BTreeMap<NodeId, std::os::fd::RawFd>) {
    (&mut state.client_liveness, &state.client_sockets)
}

/// Every probe interval of `watched`'s liveness: pings each of its peers that owes the
/// master nothing, and hands those with a request unanswered past the timeout to
/// `expired` (with how long they waited).
async fn watch(
    master: Rc<RefCell<Master>>,
    watched: Watched,
    expired: impl Fn(&Rc<RefCell<Master>>, NodeId, Duration),
) {
    loop {
        let interval = watched(&mut master.borrow_mut()).0.probe_interval();
        glommio::timer::sleep(interval).await;
        let now = elapsed(&master);
        let idle: Vec<NodeId> = {
            let mut state = master.borrow_mut();
            let connected: BTreeSet<NodeId> = state.outboxes.keys().copied().collect();
            let (liveness, sockets) = watched(&mut state);
            sockets
                .keys()
                .copied()
                .filter(|&nid| liveness.idle(nid) && connected.contains(&nid))
                .collect()
        };
        for nid in idle {
            let msg_id = next_request_id(&master);
            watched(&mut master.borrow_mut()).0.asked(nid, msg_id, now);
            send_to(&master, nid, Outgoing::Request(msg_id, wire::Ping {}.into()));
        }
        let late = watched(&mut master.borrow_mut()).0.expired(now);
        for (nid, waited) in late {
            expired(&master, nid, waited);
        }
    }
}

/// Pings every storage in service that owes the master nothing, and gives up those with a
/// request (a ping or a lock) unanswered for longer than the storage timeout: a stopped or
/// stuck process keeps its connection open, so only its silence tells.
async fn watch_storages(master: Rc<RefCell<Master>>) {
    watch(master, storages_watched, |master, nid, waited| {
        tracing::warn!(
            "{nid} has not answered for {:.1} s (storage timeout {:?}): giving it up",
            waited.as_secs_f64(),
            master.borrow().liveness.timeout()
        );
        give_up(master, nid);
    })
    .await;
}

/// Pings every client that owes the master nothing, and disconnects those whose ping stays
/// unanswered for the client timeout: a client that stopped reading (or a stranger that
/// identified and went silent) is disconnected, its transactions aborted, rather than held
/// forever. A live client's reader thread answers at once, whatever its application does.
async fn watch_clients(master: Rc<RefCell<Master>>) {
    watch(master, clients_watched, |master, nid, waited| {
        tracing::warn!(
            "{nid} has not answered a ping for {:.1} s: disconnecting it",
            waited.as_secs_f64()
        );
        let socket = master.borrow().client_sockets.get(&nid).copied();
        if let Some(socket) = socket {
            shutdown_socket(socket);
        }
    })
    .await;
}

/// Runs `change` on the transactions (if the cluster has them) with what the current
/// table says is readable.
fn with_transactions(
    master: &Rc<RefCell<Master>>,
    change: impl FnOnce(&mut Transactions, crate::transactions::Readable<'_>) -> Outcome,
) -> Outcome {
    let mut state = master.borrow_mut();
    let Master { cluster, transactions, .. } = &mut *state;
    let Some(transactions) = transactions.as_mut() else { return Outcome::default() };
    let readable = |partition: PartitionId, nid: NodeId| {
        cluster.table().is_some_and(|table| {
            table
                .rows
                .get(partition.0 as usize)
                .is_some_and(|row| row.iter().any(|c| c.nid == nid && c.state.is_readable()))
        })
    };
    change(transactions, &readable)
}

/// Says so when some host holds two copies of a partition (NEO warns too): the replicas do
/// not protect those partitions against the loss of that host.
fn warn_of_shared_hosts(master: &Rc<RefCell<Master>>) {
    for (host, partitions) in master.borrow().cluster.shared_hosts() {
        tracing::warn!(
            "host {host:?} holds two or more copies of {partitions} partitions; losing it loses them all"
        );
    }
}

/// Sends a node the whole partition table, and asks it for its newest ids and the
/// transactions it holds in doubt.
fn send_table(master: &Rc<RefCell<Master>>, nid: NodeId) {
    // Answered in order: the locked transactions are in when the last ids arrive.
    tell(master, nid, wire::AskLockedTransactions {}.into());
    tell(master, nid, wire::AskLastIds {}.into());
    // The pack orders it keeps: a new primary learns them back this way.
    tell(master, nid, wire::AskPackOrders { min_pack_id: Tid::ZERO }.into());
    send_table_only(master, nid);
}

/// Sends a node the whole partition table.
fn send_table_only(master: &Rc<RefCell<Master>>, nid: NodeId) {
    let full = {
        let state = master.borrow();
        let Some(table) = state.cluster.table() else { return };
        SendPartitionTable {
            ptid: Some(table.ptid),
            num_replicas: table.replicas,
            rows: table.rows.iter().map(|row| cells_of(row)).collect(),
        }
    };
    tell(master, nid, full.into());
}

/// A new ptid with no cell changed (the replica count): every node's copy follows it.
fn broadcast_table_version(master: &Rc<RefCell<Master>>) {
    let (ptid, replicas) = {
        let state = master.borrow();
        let Some(table) = state.cluster.table() else { return };
        (table.ptid, table.replicas)
    };
    let notification = NotifyPartitionChanges { ptid, num_replicas: replicas, changes: vec![] };
    broadcast(master, notification.into());
}

fn broadcast_changes(master: &Rc<RefCell<Master>>, changes: &[Change]) {
    if changes.is_empty() {
        return;
    }
    let (ptid, replicas) = {
        let state = master.borrow();
        let table = state.cluster.table().expect("changes come from a table");
        (table.ptid, table.replicas)
    };
    let notification = NotifyPartitionChanges {
        ptid,
        num_replicas: replicas,
        changes: changes
            .iter()
            .map(|c| CellChange { partition: c.partition, nid: c.nid, state: c.state })
            .collect(),
    };
    broadcast(master, notification.into());
    let state = master.borrow().cluster.state();
    if state != ClusterState::Running {
        broadcast(master, NotifyClusterInformation { state }.into());
    }
}

fn broadcast(master: &Rc<RefCell<Master>>, message: Message) {
    let nids: Vec<NodeId> = master.borrow().outboxes.keys().copied().collect();
    for nid in nids {
        tell(master, nid, message.clone());
    }
}

/// Tells the nodes that need it what became of `nid` (identified, gone, added): news of a
/// storage, master or admin goes to every node, itself included; news of a client only to the
/// storages (which admit only the clients the primary announced, and drop a gone client's
/// transactions), batched per executor turn. Clients never hear of each other: with N
/// clients that would be N^2 notifications, held in memory for those that do not read.
fn announce(master: &Rc<RefCell<Master>>, nid: NodeId) {
    if nid.node_type() != NodeType::Client {
        // The node itself too: a storage added by `ctl add` learns so (PENDING to RUNNING).
        let message = node_information(master, Some(nid));
        let nids: Vec<NodeId> = master.borrow().outboxes.keys().copied().collect();
        for other in nids {
            tell(master, other, message.clone());
        }
        return;
    }
    let schedule = {
        let mut state = master.borrow_mut();
        let first = state.client_news.is_empty();
        state.client_news.insert(nid);
        first
    };
    if schedule {
        let master = Rc::clone(master);
        glommio::spawn_local(async move {
            futures_lite::future::yield_now().await;
            let news = std::mem::take(&mut master.borrow_mut().client_news);
            let message = {
                let mut state = master.borrow_mut();
                let timestamp = state.cluster.next_timestamp();
                let nodes = news.iter().map(|&nid| info_of(&state, nid)).collect();
                Message::from(NotifyNodeInformation { timestamp, nodes })
            };
            let storages: Vec<NodeId> = master
                .borrow()
                .outboxes
                .keys()
                .copied()
                .filter(|n| n.node_type() == NodeType::Storage)
                .collect();
            for storage in storages {
                tell(&master, storage, message.clone());
            }
        })
        .detach();
    }
}

/// The node list a newcomer (or every node, at a start) gets: every node, but for a client
/// the other clients.
fn node_list_for(master: &Rc<RefCell<Master>>, nid: NodeId) -> Message {
    let mut state = master.borrow_mut();
    let timestamp = state.cluster.next_timestamp();
    let client = nid.node_type() == NodeType::Client;
    let nodes = state
        .cluster
        .nodes()
        .filter(|n| !client || n.nid.node_type() != NodeType::Client || n.nid == nid)
        .map(node_info)
        .collect();
    NotifyNodeInformation { timestamp, nodes }.into()
}

/// A node as the cluster now sees it (a node forgotten is UNKNOWN).
fn info_of(state: &Master, nid: NodeId) -> NodeInfo {
    state.cluster.node(nid).map_or(
        NodeInfo {
            node_type: nid.node_type(),
            address: None,
            nid: Some(nid),
            state: NodeState::Unknown,
            id_timestamp: None,
        },
        node_info,
    )
}

/// `NotifyNodeInformation` for one node (as the cluster now sees it: a node forgotten is
/// UNKNOWN), or for every known node.
/// A node as the node list describes it.
/// The masters, for `ctl print node`: this primary, the secondaries following it, and the
/// other masters it was told of that do not follow it (DOWN, without an id).
fn masters_info(state: &Master) -> Vec<NodeInfo> {
    let me = state.election.me;
    let info = |nid: Option<NodeId>, address: SocketAddr, state: NodeState| NodeInfo {
        node_type: NodeType::Master,
        address: Some(address_of(address)),
        nid,
        state,
        id_timestamp: None,
    };
    let mut nodes = vec![info(Some(master_id()), me, NodeState::Running)];
    for (&nid, &(address, _)) in &state.secondaries {
        nodes.push(info(Some(nid), address, NodeState::Running));
    }
    for &address in &state.masters {
        let following = state.secondaries.values().any(|(a, _)| *a == address);
        if address != me && !following {
            nodes.push(info(None, address, NodeState::Down));
        }
    }
    nodes
}

/// `ctl kill` of a master: a secondary is told the cluster stops for it, and shuts down;
/// the primary is not (stop the cluster, or kill its process: a secondary takes over).
fn kill_master(master: &Rc<RefCell<Master>>, nid: NodeId, state: NodeState) -> Result<(), Refusal> {
    if state != NodeState::Down {
        return Err(refuse(ErrorCode::Denied, format!("a master is only killed, not set {state}")));
    }
    if nid == master_id() {
        return Err(refuse(
            ErrorCode::Denied,
            "M1 is the primary: stop the cluster (set cluster STOPPING) or kill its process",
        ));
    }
    let state = master.borrow();
    let (address, killed) = state
        .secondaries
        .get(&nid)
        .ok_or_else(|| refuse(ErrorCode::Denied, format!("no secondary master {nid}")))?;
    tracing::info!("stopping the secondary master {nid} at {address}");
    killed.set(true);
    Ok(())
}

fn node_info(node: &crate::cluster::Node) -> NodeInfo {
    NodeInfo {
        node_type: node.node_type,
        address: node.address.map(address_of),
        nid: Some(node.nid),
        state: node.state,
        id_timestamp: Some(node.id_timestamp),
    }
}

fn node_information(master: &Rc<RefCell<Master>>, only: Option<NodeId>) -> Message {
    let mut state = master.borrow_mut();
    let timestamp = state.cluster.next_timestamp();
    let info = node_info;
    let nodes = match only {
        Some(nid) => vec![info_of(&state, nid)],
        None => state.cluster.nodes().map(info).collect(),
    };
    NotifyNodeInformation { timestamp, nodes }.into()
}

fn tell(master: &Rc<RefCell<Master>>, nid: NodeId, message: Message) {
    send_to(master, nid, Outgoing::Notify(message));
}

fn answer(master: &Rc<RefCell<Master>>, nid: NodeId, msg_id: u32, message: Message) {
    send_to(master, nid, Outgoing::Answer(msg_id, message));
}

/// Queues for a node's writer task, after the invalidations held for it; a node whose
/// outbox is full is dropped.
fn send_to(master: &Rc<RefCell<Master>>, nid: NodeId, outgoing: Outgoing) {
    let (outbox, held) = {
        let mut state = master.borrow_mut();
        (state.outboxes.get(&nid).cloned(), state.invalidations.remove(&nid))
    };
    let Some(outbox) = outbox else { return };
    let queued = held
        .into_iter()
        .flatten()
        .map(Outgoing::Notify)
        .chain(std::iter::once(outgoing))
        .try_for_each(|outgoing| outbox.try_send(outgoing).map_err(drop));
    if queued.is_err() {
        drop(outbox);
        tracing::warn!("{nid} does not keep up; dropping it");
        master.borrow_mut().outboxes.remove(&nid);
        // Its connection too: a storage only counts as lost once it ends.
        give_up(master, nid);
    }
}

/// How long an invalidation may wait for others to the same client: each socket write
/// costs the master several microseconds of kernel time, and every commit invalidates
/// every other client, so batching them is what lets commits scale with clients.
const INVALIDATION_BATCH_DELAY: Duration = Duration::from_micros(500);

/// Holds an invalidation for `client`: it leaves with the next batch (after at most
/// `INVALIDATION_BATCH_DELAY`), or before anything else sent to that client, so that a
/// client always sees commits in order and before any answer that follows them (the
/// answer to `sync`'s `AskLastTransaction` is a barrier).
fn queue_invalidation(master: &Rc<RefCell<Master>>, client: NodeId, invalidation: Message) {
    let schedule = {
        let mut state = master.borrow_mut();
        state.invalidations.entry(client).or_default().push(invalidation);
        !std::mem::replace(&mut state.invalidations_flush_due, true)
    };
    if schedule {
        let master = Rc::clone(master);
        glommio::spawn_local(async move {
            glommio::timer::sleep(INVALIDATION_BATCH_DELAY).await;
            let held = {
                let mut state = master.borrow_mut();
                state.invalidations_flush_due = false;
                std::mem::take(&mut state.invalidations)
            };
            for (client, messages) in held {
                let mut messages = messages.into_iter();
                let Some(last) = messages.next_back() else { continue };
                master.borrow_mut().invalidations.insert(client, messages.collect());
                send_to(&master, client, Outgoing::Notify(last));
            }
        })
        .detach();
    }
}

fn cells_of(row: &[Cell]) -> Vec<CellInfo> {
    row.iter().map(|c| CellInfo { nid: c.nid, state: c.state }).collect()
}

/// A partition table from its wire form.
pub fn table_of(ptid: Ptid, replicas: u32, rows: &[Vec<CellInfo>]) -> PartitionTable {
    PartitionTable {
        ptid,
        replicas,
        rows: rows
            .iter()
            .map(|row| row.iter().map(|c| Cell { nid: c.nid, state: c.state }).collect())
            .collect(),
    }
}

pub(crate) fn to_error(refusal: &Refusal) -> wire::Error {
    refusal_message(refusal.code, &refusal.message)
}

fn refusal_message(code: ErrorCode, message: &str) -> wire::Error {
    wire::Error { code, message: Text::from(message) }
}

/// For tests and tools: the answer to a ctl request, or the refusal.
pub fn answer_or_refusal(frame: &RawFrame) -> Result<Message, Refusal> {
    match frame.message() {
        Ok(Message::Error(error)) => {
            Err(Refusal { code: error.code, message: error.message.to_string() })
        }
        Ok(message) => Ok(message),
        Err(error) => Err(Refusal { code: ErrorCode::ProtocolError, message: error.to_string() }),
    }
}

/// The `AnswerPartitionTable` a storage sends for its persisted table.
pub fn partition_table_answer(table: Option<&PartitionTable>) -> AnswerPartitionTable {
    AnswerPartitionTable {
        ptid: table.map(|t| t.ptid),
        num_replicas: table.map_or(0, |t| t.replicas),
        rows: table.map_or_else(Vec::new, |t| t.rows.iter().map(|row| cells_of(row)).collect()),
    }
}

// ---- transactions ---------------------------------------------------------------------

/// A client's request: ids, commits, the last tid.
fn client_frame(master: &Rc<RefCell<Master>>, nid: NodeId, frame: &RawFrame) {
    if frame.kind == wire::Kind::Pong {
        master.borrow_mut().client_liveness.answered(nid, frame.msg_id);
        return;
    }
    if frame.kind.answer().is_none() {
        // Notifications: an abort, or answers (pongs) that expect nothing back.
        if let Ok(Message::AbortTransaction(abort)) = frame.message() {
            abort_transaction(master, nid, abort.ttid, &abort.nids);
        }
        return;
    }
    let outcome = match frame.message() {
        Ok(message) => client_request(master, nid, frame.msg_id, message),
        Err(error) => Err(Refusal { code: ErrorCode::ProtocolError, message: error.to_string() }),
    };
    match outcome {
        Ok(Some(message)) => answer(master, nid, frame.msg_id, message),
        // Answered later (a finish, once every storage locked).
        Ok(None) => {}
        Err(refusal) => answer(master, nid, frame.msg_id, to_error(&refusal).into()),
    }
}

fn not_running(state: ClusterState) -> Refusal {
    Refusal { code: ErrorCode::NotReady, message: format!("the cluster is {state}") }
}

fn client_request(
    master: &Rc<RefCell<Master>>,
    nid: NodeId,
    msg_id: u32,
    message: Message,
) -> Result<Option<Message>, Refusal> {
    let now = std::time::SystemTime::now();
    let mut state = master.borrow_mut();
    let cluster_state = state.cluster.state();
    if let Message::Ping(_) = message {
        return Ok(Some(wire::Pong {}.into()));
    }
    let partitions = state.cluster.table().map_or(0, PartitionTable::partitions);
    let Master {
        cluster,
        transactions,
        final_tid_waiters,
        oid_waiters,
        in_doubt,
        finish_started,
        ..
    } = &mut *state;
    let Some(transactions) =
        transactions.as_mut().filter(|_| cluster_state == ClusterState::Running)
    else {
        return Err(not_running(cluster_state));
    };
    match message {
        Message::AskBeginTransaction(begin) => {
            let ttid = transactions.begin(nid, begin.tid, now)?;
            crate::metrics::count("begins", 1);
            Ok(Some(wire::AnswerBeginTransaction { ttid }.into()))
        }
        Message::AskNewOids(ask) => match transactions.new_oids(ask.count)? {
            NewOids::Given(first) => {
                Ok(Some(wire::AnswerNewOids { first, count: ask.count }.into()))
            }
            // Answered once the storages keep the oids reserved.
            NewOids::Reserve(up_to) => {
                oid_waiters.push_back((nid, msg_id, ask.count));
                drop(state);
                reserve_oids(master, up_to);
                Ok(None)
            }
        },
        Message::AskLastTransaction(_) => {
            Ok(Some(wire::AnswerLastTransaction { tid: transactions.last_transaction() }.into()))
        }
        Message::AskFinalTid(ask) => {
            // Still finishing: answered once published (a client hears a tid only for a
            // commit it may rely on). Recovered by verification: its tid. Otherwise the
            // storages know (Tid::MAX says so).
            // In doubt (a storage back with it voted): answered once settled.
            if transactions.is_finishing(ask.ttid) || in_doubt.ttids().contains(&ask.ttid) {
                final_tid_waiters.entry(ask.ttid).or_default().push((nid, msg_id));
                return Ok(None);
            }
            let tid = transactions.final_tid(ask.ttid).unwrap_or(Tid::MAX);
            Ok(Some(wire::AnswerFinalTid { tid: Some(tid) }.into()))
        }
        Message::AskFinishTransaction(finish) => {
            if finish_started.len() < FINISHES_TIMED_MAX {
                finish_started.insert(finish.ttid, std::time::Instant::now());
            }
            // Written: the objects' partitions, the deleted ones' and the metadata's (the
            // ttid's). Locked: those and the partitions of the objects checked current.
            let mut written: BTreeSet<PartitionId> = finish.deleted.iter().copied().collect();
            if partitions > 0 {
                written.insert(PartitionId::of(finish.ttid.0, partitions));
                written.extend(finish.oids.iter().map(|oid| PartitionId::of(oid.0, partitions)));
            }
            let mut wanted = written.clone();
            wanted.extend(finish.checked.iter().copied());
            let request = FinishRequest {
                client: nid,
                msg_id,
                ttid: finish.ttid,
                oids: finish.oids,
                storages: involved_storages(cluster, &wanted),
                written,
                partitions,
                pack: finish.pack,
            };
            let table = cluster.table();
            let readable = |partition: PartitionId, storage: NodeId| {
                table.and_then(|t| t.rows.get(partition.0 as usize)).is_some_and(|row| {
                    row.iter().any(|c| c.nid == storage && c.state.is_readable())
                })
            };
            let finishing = transactions.finish(request, &readable, now)?;
            drop(state);
            let now = elapsed(master);
            for &storage in &finishing.storages {
                let ask = wire::AskLockInformation {
                    ttid: finishing.ttid,
                    tid: finishing.tid,
                    // No approval step: a pack is approved when it commits.
                    pack_auto_approved: finishing.pack.is_some(),
                };
                let msg_id = next_request_id(master);
                {
                    let mut state = master.borrow_mut();
                    state.lock_requests.insert(msg_id, (storage, finishing.ttid));
                    state.liveness.asked(storage, msg_id, now);
                }
                send_to(master, storage, Outgoing::Request(msg_id, ask.into()));
            }
            Ok(None)
        }
        Message::WaitForPack(wait) => {
            drop(state);
            let waiter = PackWaiter { client: nid, msg_id, tid: wait.tid };
            let in_service = storages_in_service(master);
            let done = master.borrow_mut().packs.wait(waiter, &in_service);
            Ok(done.then(|| wire::AnswerWaitForPack {}.into()))
        }
        Message::FailedVote(failed) => {
            // Accepted only if every partition keeps a readable copy without the failed
            // storages; their cells are then outdated like a lost node's, and they are not
            // asked to lock.
            transactions.failed(nid, failed.ttid, &failed.failed)?;
            drop(state);
            failed_vote(master, &failed.failed).map(|()| Some(wire::AnswerFailedVote {}.into()))
        }
        other => Err(Refusal {
            code: ErrorCode::ProtocolError,
            message: format!("{} is not a client request", other.kind()),
        }),
    }
}

/// The storages in service that hold a cell of one of `partitions` (every cell a client
/// stores to, out-of-date ones included): those asked to lock.
fn involved_storages(cluster: &Cluster, partitions: &BTreeSet<PartitionId>) -> BTreeSet<NodeId> {
    let Some(table) = cluster.table() else { return BTreeSet::new() };
    let running = |nid: NodeId| {
        cluster.node(nid).is_some_and(|n| n.connected && n.state == NodeState::Running)
    };
    partitions
        .iter()
        .filter_map(|p| table.rows.get(p.0 as usize))
        .flatten()
        .filter(|c| c.state != wire::CellState::Discarded && running(c.nid))
        .map(|c| c.nid)
        .collect()
}

fn failed_vote(master: &Rc<RefCell<Master>>, failed: &[NodeId]) -> Result<(), Refusal> {
    let mut changes = Vec::new();
    for &nid in failed {
        taint_replications(master, nid);
        let outcome = master.borrow_mut().cluster.outdate_for_failed_vote(nid);
        changes.extend(outcome?);
    }
    broadcast_changes(master, &changes);
    Ok(())
}

fn abort_transaction(master: &Rc<RefCell<Master>>, client: NodeId, ttid: Tid, nids: &[NodeId]) {
    let aborted = master.borrow_mut().transactions.as_mut().map(|t| t.abort(client, ttid));
    match aborted {
        Some(Ok(true)) => {}
        // Unknown (already aborted, or out of operation): the storages dropped it already.
        None | Some(Ok(false)) => return,
        // Another client's, or finishing: nothing is relayed.
        Some(Err(refusal)) => {
            tracing::warn!("{client}: {refusal}");
            return;
        }
    }
    crate::metrics::count("aborts", 1);
    master.borrow_mut().finish_started.remove(&ttid);
    let abort = wire::AbortTransaction { ttid, nids: Vec::new() };
    for &nid in nids.iter().filter(|n| n.node_type() == NodeType::Storage) {
        tell(master, nid, abort.clone().into());
    }
}

/// Out of operation, the cluster knows no client (`Cluster::leave_operation`): their
/// connections are closed, after what was queued for them, so that they reconnect once it
/// runs again (and drop caches whose invalidations they may miss meanwhile).
fn send_clients_away(master: &Rc<RefCell<Master>>) {
    let mut state = master.borrow_mut();
    if state.cluster.state() == ClusterState::Running {
        return;
    }
    let clients: Vec<NodeId> =
        state.outboxes.keys().copied().filter(|n| n.node_type() == NodeType::Client).collect();
    for client in clients {
        tracing::info!("the cluster is {}: closing {client}", state.cluster.state());
        // Its writer sends what is queued, then closes the connection.
        state.outboxes.remove(&client);
        state.invalidations.remove(&client);
    }
}

/// A node's connection is gone: its transactions are aborted (a client) or no longer
/// waited for (a storage).
fn node_lost(master: &Rc<RefCell<Master>>, nid: NodeId, node_type: NodeType) {
    match node_type {
        NodeType::Client => {
            master.borrow_mut().packs.client_lost(nid);
            let aborted = master.borrow_mut().transactions.as_mut().map(|t| t.client_lost(nid));
            // The master does not know where the client stored: every storage drops it.
            let storages: Vec<NodeId> = master
                .borrow()
                .outboxes
                .keys()
                .copied()
                .filter(|n| n.node_type() == NodeType::Storage)
                .collect();
            for ttid in aborted.unwrap_or_default() {
                for &storage in &storages {
                    tell(master, storage, wire::AbortTransaction { ttid, nids: Vec::new() }.into());
                }
            }
        }
        NodeType::Storage => {
            tracing::warn!("{nid} lost (cluster {})", master.borrow().cluster.state());
            {
                let mut state = master.borrow_mut();
                state.lock_requests.retain(|_, (storage, _)| *storage != nid);
                state.final_tid_requests.retain(|_, (storage, _)| *storage != nid);
                state.reserve_requests.retain(|_, storage| *storage != nid);
                state.replicating.retain(|(storage, _), _| *storage != nid);
                state.progress.retain(|(storage, _), _| *storage != nid);
                state.liveness.forget(nid);
            }
            check_storage_lost(master, nid);
            reservation_answered(master, nid);
            // Still waited for if it is asked something about a transaction in doubt.
            master.borrow_mut().in_doubt.storage_lost(nid);
            let outcome = with_transactions(master, |t, readable| t.storage_lost(nid, readable));
            publish(master, outcome);
            let in_service = storages_in_service(master);
            let ready = master.borrow_mut().packs.storage_lost(nid, &in_service);
            answer_pack_waiters(master, ready);
        }
        _ => {}
    }
}

/// Committed transactions, in commit order: the client gets its tid, every other client
/// the invalidations, the storages the unlock. A stalled transaction (no readable cell of
/// some partition it wrote locked it) is not published: that happens only when a
/// partition's last readable copy is lost, so the cluster is out of operation and the
/// next verification settles it; if the cluster still runs, it is made to.
fn publish(master: &Rc<RefCell<Master>>, outcome: Outcome) {
    for ttid in &outcome.stalled {
        let state = master.borrow().cluster.state();
        tracing::warn!(
            "transaction {ttid}: no readable copy of some partition it wrote has locked it; its client will ask for the outcome once the cluster runs again (cluster {state})"
        );
    }
    if !outcome.stalled.is_empty() && master.borrow().cluster.state() == ClusterState::Running {
        tracing::error!("a stalled commit in a running cluster: recovering");
        master.borrow_mut().cluster.leave_operation();
        broadcast(master, NotifyClusterInformation { state: ClusterState::Recovering }.into());
        send_clients_away(master);
        maybe_start(master);
    }
    publish_committed(master, outcome.committed);
}

fn publish_committed(master: &Rc<RefCell<Master>>, committed: Vec<Finishing>) {
    for finishing in committed {
        crate::metrics::count("finishes", 1);
        if let Some(started) = master.borrow_mut().finish_started.remove(&finishing.ttid) {
            crate::metrics::latency("finish_seconds", started.elapsed());
        }
        let answer_message =
            wire::AnswerTransactionFinished { ttid: finishing.ttid, tid: finishing.tid };
        answer(master, finishing.client, finishing.msg_id, answer_message.into());
        let waiters = master.borrow_mut().final_tid_waiters.remove(&finishing.ttid);
        for (client, msg_id) in waiters.unwrap_or_default() {
            let found = wire::AnswerFinalTid { tid: Some(finishing.tid) };
            answer(master, client, msg_id, found.into());
        }
        let clients: Vec<NodeId> = master
            .borrow()
            .outboxes
            .keys()
            .copied()
            .filter(|&n| n.node_type() == NodeType::Client && n != finishing.client)
            .collect();
        let invalidation =
            Message::from(wire::InvalidateObjects { tid: finishing.tid, oids: finishing.oids });
        for client in clients {
            queue_invalidation(master, client, invalidation.clone());
        }
        for &storage in &finishing.storages {
            tell(master, storage, wire::NotifyUnlockInformation { ttid: finishing.ttid }.into());
        }
        if let Some(request) = finishing.pack {
            // Every storage packs its copy: those that do not know the order yet ask for it.
            let order = master.borrow_mut().packs.committed(finishing.tid, request);
            tracing::info!("pack {} up to {} approved", order.pack_id, order.pack_tid);
            let signed = wire::NotifyPackSigned { approved: vec![order.pack_id], rejected: vec![] };
            for nid in connected_storages(master) {
                tell(master, nid, signed.clone().into());
            }
        }
    }
}

/// The storages in service: those whose packs a `WaitForPack` waits for.
fn storages_in_service(master: &Rc<RefCell<Master>>) -> Vec<NodeId> {
    let state = master.borrow();
    state
        .cluster
        .nodes()
        .filter(|n| n.node_type == NodeType::Storage && n.connected)
        .filter(|n| n.state == NodeState::Running)
        .map(|n| n.nid)
        .collect()
}

fn answer_pack_waiters(master: &Rc<RefCell<Master>>, ready: Vec<PackWaiter>) {
    for waiter in ready {
        answer(master, waiter.client, waiter.msg_id, wire::AnswerWaitForPack {}.into());
    }
}
