//! The client: what an application (the bench, the tests, the Python ZODB storage) links to
//! read and commit objects.
//!
//! Threads, not an executor: ZODB calls a storage from many application threads, each
//! blocking on its request. A thread that loads takes a storage connection from a pool,
//! writes its request and reads the answer on its own socket, so a load costs one round
//! trip and no wake-up of another thread (on this VM a cross-thread wake-up costs about as
//! much as a loopback round trip). The master connection is the exception: it carries
//! notifications that arrive at any time (node list, partition table, invalidations), so
//! a background thread reads it and hands answers to the threads waiting for them.
//!
//! Reads use the snapshot of the newest tid this client has seen (its own commits and the
//! invalidations the master sent); a store goes to every cell of the object's partition; a
//! transaction holds its storage connections from its first store to its end, so that its
//! stores are pipelined and their answers collected at vote.
//!
//! ```no_run
//! use bytes::Bytes;
//! use engine::client::{Client, ClientOptions, TransactionMeta};
//! use wire::Tid;
//!
//! let masters = vec!["127.0.0.1:10000".parse().unwrap()];
//! let client = Client::connect(ClientOptions::new("demo", masters))?;
//! let oid = client.new_oids(1)?[0];
//! let mut transaction = client.tpc_begin(None)?;
//! transaction.store(oid, Tid::ZERO, Bytes::from_static(b"hello"))?;
//! let conflicts = transaction.vote(&TransactionMeta::default())?;
//! assert!(conflicts.is_empty(), "resolve, store again and vote again, or abort");
//! let tid = transaction.finish(|tid| println!("committed {tid}"))?;
//! assert_eq!(client.load(oid)?.serial, tid);
//! client.close();
//! # Ok::<(), engine::client::ClientError>(())
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::io::Read;
use std::net::{SocketAddr, TcpStream};

use crate::blocking::SyncStream;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use wire::messages::NodeInfo;
use wire::{
    Body, CellState, ClusterState, Compression, ErrorCode, FrameDecoder, Hello, Message, NodeId,
    NodeState, NodeType, Oid, PartitionId, RawFrame, RequestIdentification, StoreOutcome, Text,
    Tid,
};

use crate::net::QueuedFrames;
use crate::pt::{Change, PartitionTable};

/// How long a connection attempt, a hello or an identification may take.
const CONNECT_DEADLINE: Duration = Duration::from_secs(5);
/// How long `Client::connect` waits for the cluster to run and send its table.
const READY_DEADLINE: Duration = Duration::from_secs(30);
/// How long a storage that does not know this client yet is retried (the primary's news of
/// a new client reaches the storages a moment after the client's identification).
const ADMISSION_PATIENCE: Duration = Duration::from_secs(5);
/// Pause between attempts to reach a primary master again.
const RECONNECT_DELAY: Duration = Duration::from_millis(100);
/// Queued store bytes that are sent without waiting for the vote.
const STORE_BATCH_BYTES: usize = 256 << 10;
/// Stores sent and not answered before the client reads answers (a storage drops a peer
/// whose answers pile up beyond its outbox).
const STORES_IN_FLIGHT_MAX: usize = 1024;
/// Oids asked of the master at a time by `new_oid` (NEO's client asks 100).
const OID_BATCH: u32 = 100;
/// Default size of the object cache: NEO's default.
pub const CACHE_SIZE_DEFAULT: usize = 20 << 20;
/// Default of `ClientOptions::spin`.
pub const SPIN_DEFAULT: Duration = Duration::from_micros(50);
/// Default of `ClientOptions::storage_timeout`.
pub const STORAGE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// How long `finish` tries to learn the outcome of a commit whose answer was lost with the
/// master (the cluster may be recovering meanwhile) before it says the outcome is unknown.
const OUTCOME_PATIENCE: Duration = Duration::from_secs(60);

/// How a client connects.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    pub cluster: String,
    pub masters: Vec<SocketAddr>,
    /// Bytes of object data kept in the cache; 0 turns the cache off.
    pub cache_size: usize,
    pub read_only: bool,
    /// How long a thread waiting for a storage's answer polls its socket before it sleeps
    /// in the kernel: an answer that comes within it costs no wake-up (about 45 us of the
    /// round trip on the development VM), for that much CPU time at most. Zero: sleep at
    /// once.
    pub spin: Duration,
    /// How long a storage may stay silent before this client takes it for hung: a store's
    /// answer may wait for another transaction's lock for any time, so the client pings a
    /// storage that has said nothing for a quarter of this, and gives it up (for this
    /// transaction: `FailedVote`) when the ping goes unanswered this long. A vote's or a
    /// load's answer may take twice this, a write may block this long. The master gives a
    /// storage up after its own timeout (`neo master --storage-timeout`).
    pub storage_timeout: Duration,
    /// Mutual TLS to every node (its certificate must carry the `neo-client` role); `None`:
    /// plain TCP.
    pub tls: Option<crate::tls::Tls>,
}

impl ClientOptions {
    pub fn new(cluster: &str, masters: Vec<SocketAddr>) -> ClientOptions {
        ClientOptions {
            cluster: cluster.to_owned(),
            masters,
            cache_size: CACHE_SIZE_DEFAULT,
            read_only: false,
            spin: SPIN_DEFAULT,
            storage_timeout: STORAGE_TIMEOUT_DEFAULT,
            tls: None,
        }
    }
}

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("{code}: {message}")]
    Refused { code: ErrorCode, message: String },
    #[error("object {0} does not exist")]
    OidDoesNotExist(Oid),
    #[error("object {0} has no revision matching the request")]
    OidNotFound(Oid),
    #[error("no readable copy of object {0} could be reached: {1}")]
    NoReadableCell(Oid, String),
    #[error("the connection to the primary master was lost")]
    MasterLost,
    #[error("the client is closed")]
    Closed,
    #[error("no primary master could be reached: {0}")]
    NoMaster(String),
    #[error("object {0}: data checksum mismatch (corrupt data refused)")]
    Corrupt(Oid),
    #[error("object {0}: compressed data ({1}) is not supported by this client")]
    Compressed(Oid, Compression),
    #[error(
        "transaction {0} did not commit (the cluster lost it before any storage locked it): nothing of it is visible; it can be retried"
    )]
    NotCommitted(Tid),
    #[error(
        "transaction {ttid}: the outcome is unknown (it may or may not have committed): {reason}"
    )]
    OutcomeUnknown { ttid: Tid, reason: String },
    #[error("storage {0} failed during the transaction and the master refused to go on: {1}")]
    Incomplete(NodeId, String),
    #[error("cannot send: {0}")]
    Encode(String),
    #[error("the client failed: {0}")]
    Broken(String),
    #[error("TLS: {0}")]
    Tls(String),
}

impl ClientError {
    /// Whether the failure comes from the cluster's state or a failover, so that the same
    /// call may succeed later (a transaction that failed so did not commit): what ZODB
    /// applications retry (`TransientError`). Conflicts are reported apart; an unknown
    /// outcome, a refusal, bad data or a local limit are not transient.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Io(_)
            | ClientError::NoReadableCell(..)
            | ClientError::MasterLost
            | ClientError::NoMaster(_)
            | ClientError::NotCommitted(_)
            | ClientError::Incomplete(..) => true,
            ClientError::Refused { code, .. } => matches!(
                code,
                ErrorCode::NotReady | ErrorCode::IncompleteTransaction | ErrorCode::NonReadableCell
            ),
            _ => false,
        }
    }
}

fn protocol(message: impl Into<String>) -> ClientError {
    ClientError::Protocol(message.into())
}

impl From<wire::DecodeError> for ClientError {
    fn from(error: wire::DecodeError) -> ClientError {
        ClientError::Protocol(error.to_string())
    }
}

/// A revision as a load returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loaded {
    pub data: Bytes,
    /// The tid that wrote this revision.
    pub serial: Tid,
    /// The serial of the next revision, if any (`loadBefore`'s end tid).
    pub next_serial: Option<Tid>,
    /// For a revision that undid others: the revision whose data it took back.
    pub data_serial: Option<Tid>,
}

/// A store that conflicted at vote: the object changed since `base`; `current` is the
/// committed serial to resolve against. (A store that meets another transaction's lock
/// waits; when that makes an older transaction wait for this one, this client gives the
/// object up and takes it back behind the older one: NEO's relock, done inside `vote`, whose
/// conflicts come back here too.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub oid: Oid,
    pub base: Tid,
    pub current: Tid,
}

/// A committed transaction, as `transaction_information` returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransactionInformation {
    pub tid: Tid,
    pub user: Bytes,
    pub description: Bytes,
    pub extension: Bytes,
    /// Packed: the history before it may be gone.
    pub packed: bool,
    /// The objects it changed.
    pub oids: Vec<Oid>,
}

/// A transaction's metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TransactionMeta {
    pub user: Bytes,
    pub description: Bytes,
    pub extension: Bytes,
}

/// Called with each transaction committed by other clients, in commit order.
pub type InvalidationCallback = Box<dyn Fn(Tid, &[Oid]) + Send + Sync>;
/// What `set_reset_callback` takes.
pub type ResetCallback = Box<dyn Fn() + Send + Sync>;

// ---- blocking framed connection ------------------------------------------------------------

/// A blocking framed connection (hello exchanged).
struct SyncConnection {
    stream: SyncStream,
    decoder: FrameDecoder,
    frames: QueuedFrames,
    next_msg_id: u32,
    buffer: Vec<u8>,
    /// `ClientOptions::spin`.
    spin: Duration,
    /// The socket's read timeout outside the identification.
    read_timeout: Option<Duration>,
    /// When bytes last came (a storage's liveness while store answers are due).
    heard: Instant,
    /// A ping sent to see whether the peer still runs: its id and when.
    ping: Option<(u32, Instant)>,
}

impl SyncConnection {
    /// Connects and exchanges hellos. `timeout`: how long a read or a write may block
    /// afterwards (none: forever).
    fn open(
        address: SocketAddr,
        expected: NodeType,
        options: &ClientOptions,
        spin: Duration,
        timeout: Option<Duration>,
    ) -> Result<SyncConnection, ClientError> {
        let socket = TcpStream::connect_timeout(&address, CONNECT_DEADLINE)?;
        socket.set_nodelay(true)?;
        crate::net::set_keepalive_fd(socket.as_raw_fd())?;
        socket.set_write_timeout(Some(CONNECT_DEADLINE))?;
        socket.set_read_timeout(Some(CONNECT_DEADLINE))?;
        let (stream, peer_roles) = match &options.tls {
            None => (SyncStream::plain(socket), None),
            Some(tls) => {
                let (stream, roles) = SyncStream::handshake(socket, address, tls)
                    .map_err(|e| ClientError::Tls(format!("{address}: {e}")))?;
                (stream, Some(roles))
            }
        };
        let ours = Hello::new(NodeType::Client, &options.cluster);
        stream.write_all(&ours.encode())?;
        let mut hello = [0u8; wire::limits::HELLO_SIZE];
        let mut received = 0;
        while received < hello.len() {
            let read = stream.read(&mut hello[received..], Duration::ZERO)?;
            if read == 0 {
                let error = wire::HandshakeError::Truncated { received };
                return Err(protocol(format!("{address}: {error}")));
            }
            received += read;
        }
        let peer = Hello::decode(&hello).map_err(|e| protocol(format!("{address}: {e}")))?;
        ours.check_peer(&peer).map_err(|e| protocol(format!("{address}: {e}")))?;
        if peer.node_type != expected {
            return Err(protocol(format!(
                "{address}: the peer is a {}, not the {expected} this client looked for",
                peer.node_type
            )));
        }
        if let Some((roles, subject)) = peer_roles
            && !roles.allows(peer.node_type)
        {
            return Err(ClientError::Tls(format!(
                "{address}: the peer says it is a {}, and its certificate ({subject}) carries \
                 {roles}: a {} needs the OU {}",
                peer.node_type,
                peer.node_type,
                crate::tls::role_name(peer.node_type)
            )));
        }
        // Reads wait twice as long as writes: an answer may wait for a lock another
        // transaction holds while the master gives a hung storage up.
        let read_timeout = timeout.map(|t| t * 2);
        stream.set_read_timeout(read_timeout)?;
        stream.set_write_timeout(timeout)?;
        Ok(SyncConnection {
            stream,
            decoder: FrameDecoder::new(),
            frames: QueuedFrames::default(),
            next_msg_id: 1,
            buffer: vec![0u8; 64 << 10],
            spin,
            read_timeout,
            heard: Instant::now(),
            ping: None,
        })
    }

    fn next_id(&mut self) -> u32 {
        let id = self.next_msg_id;
        self.next_msg_id = self.next_msg_id.wrapping_add(1);
        id
    }

    /// Queues a frame; `flush` sends what is queued (`QueuedFrames`). An error here is
    /// this client's (a message over the protocol's limits), never the peer's.
    fn queue<M: Body + ?Sized>(&mut self, msg_id: u32, message: &M) -> Result<(), ClientError> {
        self.frames.queue(msg_id, message).map_err(|e| ClientError::Encode(e.to_string()))
    }

    /// Bytes queued.
    fn queued(&self) -> usize {
        self.frames.len()
    }

    fn flush(&mut self) -> Result<(), ClientError> {
        for segment in self.frames.segments() {
            self.stream.write_all(segment)?;
        }
        self.frames.clear();
        Ok(())
    }

    /// Sends a request now; returns its id.
    fn request<M: Body + ?Sized>(&mut self, message: &M) -> Result<u32, ClientError> {
        let msg_id = self.next_id();
        self.queue(msg_id, message)?;
        self.flush()?;
        Ok(msg_id)
    }

    fn receive(&mut self) -> Result<RawFrame, ClientError> {
        loop {
            if let Some(frame) = self.decoder.next_frame()? {
                return Ok(frame);
            }
            let read = self.stream.read(&mut self.buffer, self.spin)?;
            if read == 0 {
                return Err(ClientError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            self.decoder.extend_from_slice(&self.buffer[..read]);
        }
    }

    /// Reads what the socket has into the decoder; false when the peer closed.
    fn read_some(&mut self) -> Result<bool, ClientError> {
        // A signal delivered to this thread (Python's handlers run later) is retried.
        let read = self.stream.read(&mut self.buffer, Duration::ZERO)?;
        self.decoder.extend_from_slice(&self.buffer[..read]);
        if read > 0 {
            self.heard = Instant::now();
        }
        Ok(read > 0)
    }

    /// The answer to `msg_id` (other frames, notifications, are skipped).
    fn answer(&mut self, msg_id: u32) -> Result<Message, ClientError> {
        loop {
            let frame = self.receive()?;
            if frame.msg_id == msg_id && frame.kind.is_answer() {
                return Ok(frame.message()?);
            }
        }
    }
}

/// Threads of this process waiting in `recv_waiting` with a spin now.
static WAITING: AtomicUsize = AtomicUsize::new(0);

/// Reads what `stream` has into `buffer` (0: the peer closed), waiting for it if need be.
/// A thread that waits alone first polls for up to `spin` without sleeping in the kernel:
/// an answer that comes meanwhile costs no wake-up (about 45 us on the development VM).
/// While other threads of the process wait too, nobody polls: their CPU has other work,
/// which polling would only delay. The poller yields between polls, so that threads
/// sharing its CPU run meanwhile.
pub fn recv_waiting(
    stream: &TcpStream,
    buffer: &mut [u8],
    spin: Duration,
) -> std::io::Result<usize> {
    if spin.is_zero() {
        // Not counted: such a thread (the master connection's reader) waits most of the
        // time, and never for an answer another thread could poll for.
        return read_retrying(stream, buffer);
    }
    let alone = WAITING.fetch_add(1, Ordering::AcqRel) == 0;
    let polled = if alone { poll_recv(stream, buffer, spin) } else { Ok(None) };
    let read = match polled {
        Ok(Some(read)) => Ok(read),
        Ok(None) => read_retrying(stream, buffer),
        Err(error) => Err(error),
    };
    WAITING.fetch_sub(1, Ordering::AcqRel);
    read
}

/// A blocking read, retried when a signal interrupts it: a signal is the application's
/// business (Python runs its handler once the call returns), never a failed peer.
fn read_retrying(stream: &TcpStream, buffer: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match (&*stream).read(buffer) {
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            read => return read,
        }
    }
}

/// Polls `stream` for up to `spin` (or until another thread starts waiting): what came,
/// or `None`.
fn poll_recv(
    stream: &TcpStream,
    buffer: &mut [u8],
    spin: Duration,
) -> std::io::Result<Option<usize>> {
    let started = Instant::now();
    loop {
        // SAFETY: the buffer is valid for writes of its length for the whole call.
        let read = unsafe {
            libc::recv(
                stream.as_raw_fd(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if let Ok(read) = usize::try_from(read) {
            return Ok(Some(read));
        }
        let error = std::io::Error::last_os_error();
        match error.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => {}
            _ => return Err(error),
        }
        if started.elapsed() >= spin || WAITING.load(Ordering::Acquire) > 1 {
            return Ok(None);
        }
        std::thread::yield_now();
    }
}

/// Why an answer from `nid` was not taken: its error, or its unexpected kind.
fn unexpected(nid: NodeId, answer: Message) -> String {
    match answer {
        Message::Error(error) => format!("{nid}: {}", error.message),
        other => format!("{nid}: unexpected {}", other.kind()),
    }
}

fn refused(error: &wire::Error) -> ClientError {
    ClientError::Refused { code: error.code, message: error.message.to_string() }
}

// ---- shared state ---------------------------------------------------------------------

/// What the master told this client.
#[derive(Default)]
struct View {
    nid: Option<NodeId>,
    nodes: BTreeMap<NodeId, NodeInfo>,
    table: Option<PartitionTable>,
    cluster_state: Option<ClusterState>,
    /// The newest tid seen (own commits, invalidations): the read snapshot.
    last_tid: Option<Tid>,
    /// Bumped by each invalidation: a load that raced one does not fill the cache.
    invalidations: u64,
    /// Whether the master connection is up.
    connected: bool,
    /// Bumped at each new master connection: answers awaited on an older one are lost.
    session: u64,
    /// Answers received, by msg_id, for the threads waiting for them.
    answers: HashMap<u32, Message>,
    /// msg_ids of requests in flight on the current session.
    waiting: BTreeSet<u32>,
    /// This client's finishes in flight (by msg_id) and the objects they change: the
    /// master connection's reader drops those objects from the cache when the answer
    /// comes, before it reads anything after it (a `sync` answer may move `last_tid` past
    /// the commit before the committing thread runs again).
    finishing: HashMap<u32, Vec<Oid>>,
}

/// The object cache: current revisions only, dropped on invalidation, bounded in bytes
/// (oldest entries go first).
#[derive(Default)]
struct Cache {
    entries: HashMap<Oid, Loaded>,
    order: VecDeque<Oid>,
    bytes: usize,
    limit: usize,
}

impl Cache {
    fn get(&self, oid: Oid) -> Option<Loaded> {
        self.entries.get(&oid).cloned()
    }

    fn insert(&mut self, oid: Oid, loaded: Loaded) {
        if self.limit == 0 || loaded.data.len() > self.limit / 4 {
            return;
        }
        self.bytes += loaded.data.len();
        if let Some(old) = self.entries.insert(oid, loaded) {
            self.bytes -= old.data.len();
        } else {
            self.order.push_back(oid);
        }
        while self.bytes > self.limit {
            let Some(oldest) = self.order.pop_front() else { break };
            if let Some(old) = self.entries.remove(&oldest) {
                self.bytes -= old.data.len();
            }
        }
    }

    fn invalidate(&mut self, oid: Oid) {
        if let Some(old) = self.entries.remove(&oid) {
            self.bytes -= old.data.len();
            self.order.retain(|&o| o != oid);
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.order.clear();
        self.bytes = 0;
    }
}

struct Inner {
    /// This client's figures: load and commit latencies (`Client::metrics`).
    figures: Mutex<crate::metrics::Figures>,
    options: ClientOptions,
    view: Mutex<View>,
    changed: Condvar,
    /// The master connection's writing side (the reader thread owns a clone).
    master: Mutex<Option<SyncConnection>>,
    pools: Mutex<HashMap<NodeId, Vec<SyncConnection>>>,
    cache: Mutex<Cache>,
    callback: Mutex<Option<InvalidationCallback>>,
    /// Called after the client reconnected to a primary: invalidations may have been missed.
    reset: Mutex<Option<ResetCallback>>,
    closed: AtomicBool,
    /// Why the client stopped working, if it broke (its master thread panicked).
    broken: Mutex<Option<String>>,
    /// Oids fetched from the master and not yet handed out (`new_oid`), with the master
    /// session they came from: a new primary recovers the last oid from what the storages
    /// hold, so it may hand the rest of an old batch out again; they are dropped.
    oids: Mutex<(u64, VecDeque<Oid>)>,
}

/// A connected client. Cheap to clone; usable from any number of threads.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    reader: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("nid", &self.inner.lock_view().nid).finish()
    }
}

impl Inner {
    fn lock_view(&self) -> MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check_open(&self) -> Result<(), ClientError> {
        if !self.closed.load(Ordering::Acquire) {
            return Ok(());
        }
        match self.broken.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            Some(reason) => Err(ClientError::Broken(reason)),
            None => Err(ClientError::Closed),
        }
    }

    /// The client cannot work any more (its master connection's thread panicked): every
    /// call, and every thread waiting, gets `Broken` with the reason.
    fn break_down(&self, reason: String) {
        tracing::error!("{reason}");
        *self.broken.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
        self.closed.store(true, Ordering::Release);
        self.lock_view().connected = false;
        self.changed.notify_all();
    }

    /// Sends this client's identification on a fresh connection; the answer, within
    /// `CONNECT_DEADLINE`.
    fn identify_on(
        &self,
        connection: &mut SyncConnection,
        nid: Option<NodeId>,
        id_timestamp: Option<u64>,
    ) -> Result<Message, ClientError> {
        let request = RequestIdentification {
            node_type: NodeType::Client,
            nid,
            address: None,
            cluster_name: Text::from(self.options.cluster.as_str()),
            id_timestamp,
            devpath: Vec::new(),
            read_only: self.options.read_only,
            backup: Vec::new(),
            new_nid: None,
        };
        connection.stream.set_read_timeout(Some(CONNECT_DEADLINE))?;
        let msg_id = connection.request(&request)?;
        // The answer, or a secondary master's `NotPrimaryMaster` (a notification sent under
        // the request's id, followed by the end of the connection).
        let answer = loop {
            let frame = connection.receive()?;
            if frame.msg_id == msg_id
                && (frame.kind.is_answer() || frame.kind == wire::Kind::NotPrimaryMaster)
            {
                break frame.message()?;
            }
        };
        connection.stream.set_read_timeout(connection.read_timeout)?;
        Ok(answer)
    }

    /// Connects and identifies to the primary (following secondaries' hints).
    fn identify(&self) -> Result<(SyncConnection, NodeId), ClientError> {
        let mut candidates: VecDeque<SocketAddr> = self.options.masters.iter().copied().collect();
        let mut last_error = String::from("no master address given");
        // Masters that refused the handshake (another cluster's name, another protocol
        // version): waiting does not change that, so when every master did, say so at once.
        let mut refused_handshakes = std::collections::HashSet::new();
        for _ in 0..self.options.masters.len() * 3 + 1 {
            let Some(target) = candidates.pop_front() else { break };
            candidates.push_back(target);
            // Its reader thread waits for notifications most of the time: it never spins,
            // and never times out (the master may have nothing to say for hours).
            let opened =
                SyncConnection::open(target, NodeType::Master, &self.options, Duration::ZERO, None);
            let mut connection = match opened {
                Ok(connection) => connection,
                Err(error) => {
                    if matches!(error, ClientError::Protocol(_) | ClientError::Tls(_)) {
                        refused_handshakes.insert(target);
                        if self.options.masters.iter().all(|m| refused_handshakes.contains(m)) {
                            return Err(error);
                        }
                    }
                    last_error = format!("{target}: {error}");
                    continue;
                }
            };
            let answer = match self.identify_on(&mut connection, None, None) {
                Ok(answer) => answer,
                // A master that closes or garbles: the next one is tried.
                Err(error) => {
                    last_error = format!("{target}: {error}");
                    continue;
                }
            };
            match answer {
                Message::AcceptIdentification(accept) => {
                    let nid = accept.your_nid.ok_or_else(|| protocol("the master gave no id"))?;
                    return Ok((connection, nid));
                }
                Message::NotPrimaryMaster(not) => {
                    let hint = not
                        .primary
                        .and_then(|i| not.masters.get(i as usize))
                        .and_then(crate::master::socket_of);
                    if let Some(primary) = hint {
                        candidates.retain(|&c| c != primary);
                        candidates.push_front(primary);
                    }
                    last_error = format!("{target} is not the primary");
                    std::thread::sleep(Duration::from_millis(50));
                }
                Message::Error(error) if error.code == ErrorCode::NotReady => {
                    last_error = format!("{target}: {}", error.message);
                    std::thread::sleep(RECONNECT_DELAY);
                }
                Message::Error(error) => return Err(refused(&error)),
                other => return Err(protocol(format!("unexpected {}", other.kind()))),
            }
        }
        Err(ClientError::NoMaster(last_error))
    }

    /// Waits (at most `READY_DEADLINE`) until a master connection is up.
    fn wait_for_master(&self) -> Result<(), ClientError> {
        let started = Instant::now();
        let mut view = self.lock_view();
        while !view.connected {
            self.check_open()?;
            let remaining = READY_DEADLINE.saturating_sub(started.elapsed());
            if remaining.is_zero() {
                return Err(ClientError::MasterLost);
            }
            view = self.changed.wait_timeout(view, remaining).unwrap_or_else(|p| p.into_inner()).0;
        }
        Ok(())
    }

    /// Sends a request to the master and waits for its answer. While the master connection
    /// is being re-established, waits for it first; a request sent on a connection that is
    /// then lost fails with `MasterLost` (whether it took effect is unknown).
    fn ask_master<M: Body + ?Sized>(&self, message: &M) -> Result<Message, ClientError> {
        self.ask_master_finishing(message, Vec::new())
    }

    /// `ask_master`; the objects in `changed` leave the cache when the answer is read
    /// (`View::finishing`).
    fn ask_master_finishing<M: Body + ?Sized>(
        &self,
        message: &M,
        changed: Vec<Oid>,
    ) -> Result<Message, ClientError> {
        self.check_open()?;
        self.wait_for_master()?;
        let (msg_id, session) = {
            let mut master = self.master.lock().unwrap_or_else(|p| p.into_inner());
            let Some(connection) = master.as_mut() else { return Err(ClientError::MasterLost) };
            let mut view = self.lock_view();
            let msg_id = connection.next_id();
            view.waiting.insert(msg_id);
            if !changed.is_empty() {
                view.finishing.insert(msg_id, changed);
            }
            let session = view.session;
            drop(view);
            let sent = connection.queue(msg_id, message).and_then(|()| connection.flush());
            if let Err(error) = sent {
                let mut view = self.lock_view();
                view.waiting.remove(&msg_id);
                view.finishing.remove(&msg_id);
                return Err(error);
            }
            (msg_id, session)
        };
        let mut view = self.lock_view();
        loop {
            if let Some(answer) = view.answers.remove(&msg_id) {
                view.waiting.remove(&msg_id);
                view.finishing.remove(&msg_id);
                return match answer {
                    Message::Error(error) => Err(refused(&error)),
                    answer => Ok(answer),
                };
            }
            if view.session != session || !view.connected {
                view.waiting.remove(&msg_id);
                view.finishing.remove(&msg_id);
                return Err(ClientError::MasterLost);
            }
            if self.closed.load(Ordering::Acquire) {
                return Err(ClientError::Closed);
            }
            view = self.changed.wait(view).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn tell_master<M: Body + ?Sized>(&self, message: &M) {
        let mut master = self.master.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(connection) = master.as_mut() {
            let _ = connection.request(message);
        }
    }

    /// The master connection's reader: applies notifications, hands out answers, and
    /// reconnects when the master is lost, until the client closes.
    fn read_master(self: &Arc<Inner>, mut reader: SyncConnection) {
        loop {
            let outcome = loop {
                match reader.receive() {
                    Ok(frame) => {
                        if let Err(error) = self.on_master_frame(frame) {
                            break error;
                        }
                    }
                    Err(error) => break error,
                }
            };
            // Closed at once, so that the master forgets this connection before another
            // one is identified (possibly under the same id).
            reader.stream.shutdown();
            if self.closed.load(Ordering::Acquire) {
                return;
            }
            tracing::warn!("master connection: {outcome}; reconnecting");
            {
                let mut view = self.lock_view();
                view.connected = false;
                view.session += 1;
                view.answers.clear();
                view.waiting.clear();
                view.finishing.clear();
            }
            // Invalidations may have been missed: nothing cached can be trusted, nor what
            // a load in flight is about to cache.
            {
                let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
                self.lock_view().invalidations += 1;
                cache.clear();
            }
            *self.master.lock().unwrap_or_else(|p| p.into_inner()) = None;
            self.changed.notify_all();
            // Said once, then every 30 s while it goes on (one try every 100 ms).
            let mut repeats = crate::repeats::Repeats::default();
            reader = loop {
                if self.closed.load(Ordering::Acquire) {
                    return;
                }
                let failure = match self.identify() {
                    Ok((connection, nid)) => match self.install(connection, nid) {
                        Ok(reader) => {
                            crate::logging::set_node_id(nid);
                            tracing::info!("reconnected to the primary master as {nid}");
                            break reader;
                        }
                        Err(error) => error.to_string(),
                    },
                    Err(error) => error.to_string(),
                };
                if let Some(line) = repeats.note(&failure, Instant::now()) {
                    tracing::warn!("{line}");
                }
                std::thread::sleep(RECONNECT_DELAY);
            };
            // Before anything the new primary sends is applied.
            let reset = self.reset.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(reset) = reset.as_ref()
                && !self.closed.load(Ordering::Acquire)
            {
                reset();
            }
        }
    }

    /// Makes `connection` the master connection; returns the reading clone.
    fn install(
        &self,
        mut connection: SyncConnection,
        nid: NodeId,
    ) -> Result<SyncConnection, ClientError> {
        // What followed the identification's answer in the same read is the reader's.
        let decoder = std::mem::replace(&mut connection.decoder, FrameDecoder::new());
        let reader = SyncConnection {
            stream: connection.stream.try_clone()?,
            decoder,
            frames: QueuedFrames::default(),
            next_msg_id: 0,
            buffer: vec![0u8; 64 << 10],
            spin: Duration::ZERO,
            read_timeout: None,
            heard: Instant::now(),
            ping: None,
        };
        {
            let mut view = self.lock_view();
            view.nid = Some(nid);
            view.connected = true;
            view.session += 1;
            view.nodes.clear();
        }
        *self.master.lock().unwrap_or_else(|p| p.into_inner()) = Some(connection);
        // Storage connections identified under the old id are useless, and so are oids of
        // an earlier session (see `Inner::oids`).
        self.pools.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.oids.lock().unwrap_or_else(|p| p.into_inner()).1.clear();
        self.changed.notify_all();
        Ok(reader)
    }

    fn on_master_frame(&self, frame: RawFrame) -> Result<(), ClientError> {
        let message = frame.message()?;
        // A request's id, to answer it under (the master's pings).
        let frame_msg_id = frame.kind.answer().map(|_| frame.msg_id);
        if frame.kind.is_answer() {
            // A finish of this client's: what it changed leaves the cache before anything
            // read after the answer (a sync's answer) moves the last tid past it.
            let changed = match &message {
                Message::AnswerTransactionFinished(_) => {
                    self.lock_view().finishing.remove(&frame.msg_id)
                }
                _ => None,
            };
            if let Some(changed) = changed {
                self.invalidate_cached(&changed);
            }
            let mut view = self.lock_view();
            if view.waiting.contains(&frame.msg_id) {
                view.answers.insert(frame.msg_id, message);
                drop(view);
                self.changed.notify_all();
            }
            return Ok(());
        }
        match message {
            Message::NotifyNodeInformation(info) => {
                let mut stale = Vec::new();
                {
                    let mut view = self.lock_view();
                    for node in info.nodes {
                        let Some(nid) = node.nid else { continue };
                        // A storage that went down, or came back (elsewhere, perhaps):
                        // pooled connections to it are dead.
                        if view.nodes.get(&nid).is_none_or(|known| {
                            known.state != node.state || known.address != node.address
                        }) {
                            stale.push(nid);
                        }
                        if node.state == NodeState::Unknown {
                            view.nodes.remove(&nid);
                        } else {
                            view.nodes.insert(nid, node);
                        }
                    }
                }
                let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
                for nid in stale {
                    pools.remove(&nid);
                }
            }
            Message::SendPartitionTable(send) => {
                let mut view = self.lock_view();
                view.table = send
                    .ptid
                    .map(|ptid| crate::master::table_of(ptid, send.num_replicas, &send.rows));
            }
            Message::NotifyPartitionChanges(notify) => {
                let changes: Vec<Change> = notify
                    .changes
                    .iter()
                    .map(|c| Change { partition: c.partition, nid: c.nid, state: c.state })
                    .collect();
                let mut view = self.lock_view();
                let applied = match view.table.as_mut() {
                    Some(table) => table.apply(notify.ptid, notify.num_replicas, &changes),
                    None => Ok(()),
                };
                // A gap: reconnect, which sends the whole table again.
                applied.map_err(|e| protocol(e.to_string()))?;
            }
            Message::NotifyClusterInformation(info) => {
                self.lock_view().cluster_state = Some(info.state);
            }
            Message::InvalidateObjects(invalidate) => {
                self.invalidate_cached(&invalidate.oids);
                // The callback runs before the last tid moves: whoever reads
                // `last_transaction` (ZODB's lastTransaction) and then loads finds the
                // application's caches already invalidated up to it.
                {
                    let callback = self.callback.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(callback) = callback.as_ref()
                        && !self.closed.load(Ordering::Acquire)
                    {
                        callback(invalidate.tid, &invalidate.oids);
                    }
                }
                let mut view = self.lock_view();
                view.last_tid = view.last_tid.max(Some(invalidate.tid));
                // Nobody waits on invalidations: no wake-up (a futex call per commit).
                return Ok(());
            }
            // The master asks whether this client still reads (a silent client is given
            // up): answered at once.
            Message::Ping(_) => {
                let mut master = self.master.lock().unwrap_or_else(|p| p.into_inner());
                if let (Some(connection), Some(msg_id)) = (master.as_mut(), frame_msg_id) {
                    let answered = connection.queue(msg_id, &wire::Pong {});
                    let _ = answered.and_then(|()| connection.flush());
                }
                return Ok(());
            }
            _ => {}
        }
        self.changed.notify_all();
        Ok(())
    }

    /// A connection to storage `nid`, from the pool or new.
    fn storage(&self, nid: NodeId) -> Result<SyncConnection, ClientError> {
        if let Some(connection) =
            self.pools.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&nid).and_then(Vec::pop)
        {
            return Ok(connection);
        }
        let started = Instant::now();
        loop {
            let (address, me, id_timestamp) = {
                let view = self.lock_view();
                let node = view.nodes.get(&nid);
                let address =
                    node.and_then(|n| n.address.as_ref()).and_then(crate::master::socket_of);
                let me = view.nid;
                let stamp = me.and_then(|m| view.nodes.get(&m)).and_then(|n| n.id_timestamp);
                (address, me, stamp)
            };
            let address = address.ok_or_else(|| protocol(format!("no address known for {nid}")))?;
            let mut connection = SyncConnection::open(
                address,
                NodeType::Storage,
                &self.options,
                self.options.spin,
                Some(self.options.storage_timeout),
            )?;
            match self.identify_on(&mut connection, me, id_timestamp)? {
                Message::AcceptIdentification(_) => return Ok(connection),
                Message::Error(error)
                    if error.code == ErrorCode::NotReady
                        && started.elapsed() < ADMISSION_PATIENCE =>
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Message::Error(error) => return Err(refused(&error)),
                other => return Err(protocol(format!("unexpected {}", other.kind()))),
            }
        }
    }

    fn give_back(&self, nid: NodeId, mut connection: SyncConnection) {
        // A ping's answer may still come: the next user skips it, and owes nothing.
        connection.ping = None;
        connection.heard = Instant::now();
        self.pools
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(nid)
            .or_default()
            .push(connection);
    }

    /// The cells of `oid`'s partition: readable ones (to load from) or every cell a store
    /// goes to.
    fn cells(&self, oid: u64, readable: bool) -> Result<Vec<NodeId>, ClientError> {
        let view = self.lock_view();
        let table = view.table.as_ref().ok_or_else(|| protocol("no partition table yet"))?;
        let partition = PartitionId::of(oid, table.partitions());
        let row = table.rows.get(partition.0 as usize).map_or(&[][..], Vec::as_slice);
        Ok(row
            .iter()
            .filter(
                |c| if readable { c.state.is_readable() } else { c.state != CellState::Discarded },
            )
            .filter(|c| view.nodes.get(&c.nid).is_some_and(|n| n.state == NodeState::Running))
            .map(|c| c.nid)
            .collect())
    }

    fn partitions(&self) -> u32 {
        self.lock_view().table.as_ref().map_or(0, PartitionTable::partitions)
    }

    /// Drops `oids` from the cache, and makes every load that started before skip caching
    /// what it read (it may be what a commit just replaced). The count moves under the
    /// cache's lock, so a load compares and inserts atomically with respect to it.
    fn invalidate_cached(&self, oids: &[Oid]) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        self.lock_view().invalidations += 1;
        for &oid in oids {
            cache.invalidate(oid);
        }
    }

    /// Caches what a load read, unless an invalidation came since it started
    /// (`invalidations`, read before the load).
    fn cache_unless_invalidated(&self, oid: Oid, loaded: &Loaded, invalidations: u64) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if self.lock_view().invalidations == invalidations {
            cache.insert(oid, loaded.clone());
        }
    }

    /// One load from the readable cells, trying the next when one fails.
    fn load_from_storage(
        &self,
        oid: Oid,
        at: Option<Tid>,
        before: Option<Tid>,
    ) -> Result<Loaded, ClientError> {
        let started = Instant::now();
        let loaded = self.load_from_storage_untimed(oid, at, before);
        if loaded.is_ok() {
            let mut figures = self.figures.lock().unwrap_or_else(|p| p.into_inner());
            figures.latency("load_seconds", started.elapsed());
            figures.count("loads", 1);
        }
        loaded
    }

    fn load_from_storage_untimed(
        &self,
        oid: Oid,
        at: Option<Tid>,
        before: Option<Tid>,
    ) -> Result<Loaded, ClientError> {
        // A storage that refuses the load (damaged data, never served): the next cell is
        // tried; when the last one refused too, the error is that refusal, not a cell out of
        // reach (which a retry may overcome, and this may not).
        let denied: std::cell::RefCell<Option<String>> = std::cell::RefCell::new(None);
        let asked =
            self.ask_readable(oid.0, &wire::AskObject { oid, at, before }, |nid, answer| {
                match answer {
                    Message::AnswerObject(object) => {
                        if object.compression != Compression::None {
                            return Err(ClientError::Compressed(oid, object.compression));
                        }
                        if crc32fast::hash(&object.data.0) != object.data_crc
                            && !(object.data.0.is_empty() && object.data_crc == 0)
                        {
                            return Ok(Err(format!("{nid}: corrupt data")));
                        }
                        Ok(Ok(Loaded {
                            data: object.data.0,
                            serial: object.serial,
                            next_serial: object.next_serial,
                            data_serial: object.data_serial,
                        }))
                    }
                    Message::Error(error) if error.code == ErrorCode::OidDoesNotExist => {
                        Err(ClientError::OidDoesNotExist(oid))
                    }
                    Message::Error(error) if error.code == ErrorCode::OidNotFound => {
                        Err(ClientError::OidNotFound(oid))
                    }
                    Message::Error(error) if error.code == ErrorCode::Denied => {
                        let reason = format!("{nid}: {}", error.message);
                        *denied.borrow_mut() = Some(reason.clone());
                        Ok(Err(reason))
                    }
                    other => Ok(Err(unexpected(nid, other))),
                }
            })?;
        asked.map_err(|last_error| match denied.into_inner() {
            Some(reason) if reason == last_error => {
                ClientError::Refused { code: ErrorCode::Denied, message: reason }
            }
            _ => ClientError::NoReadableCell(oid, last_error),
        })
    }

    /// Asks `request` of the readable cells of `partition_of`'s partition in turn (from a
    /// start that depends on the thread, to spread the reads) until `take` takes an answer
    /// (`Ok(Ok(_))`) or fails the call (`Err(_)`); `Ok(Err(why))` tries the next cell.
    /// `Ok(Err(last reason))` when no cell gave an answer taken.
    fn ask_readable<M: Body + ?Sized, T>(
        &self,
        partition_of: u64,
        request: &M,
        mut take: impl FnMut(NodeId, Message) -> Result<Result<T, String>, ClientError>,
    ) -> Result<Result<T, String>, ClientError> {
        let cells = self.cells(partition_of, true)?;
        let mut last_error = String::from("the partition has no readable cell");
        let start = thread_seed() % cells.len().max(1);
        for index in 0..cells.len() {
            let nid = cells[(start + index) % cells.len()];
            let mut connection = match self.storage(nid) {
                Ok(connection) => connection,
                Err(error) => {
                    last_error = format!("{nid}: {error}");
                    continue;
                }
            };
            let answer = match connection.request(request).and_then(|id| connection.answer(id)) {
                Ok(answer) => answer,
                Err(error) => {
                    last_error = format!("{nid}: {error}");
                    continue;
                }
            };
            self.give_back(nid, connection);
            match take(nid, answer)? {
                Ok(taken) => return Ok(Ok(taken)),
                Err(why) => last_error = why,
            }
        }
        Ok(Err(last_error))
    }
}

/// A random number: where a load starts among the readable cells.
fn thread_seed() -> usize {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new().build_hasher().finish() as usize
}

impl Client {
    /// Connects to the cluster's primary master and waits until the cluster runs and this
    /// client has the node list and the partition table.
    pub fn connect(options: ClientOptions) -> Result<Client, ClientError> {
        let inner = Arc::new(Inner {
            figures: Mutex::default(),
            cache: Mutex::new(Cache { limit: options.cache_size, ..Cache::default() }),
            options,
            view: Mutex::default(),
            changed: Condvar::new(),
            master: Mutex::new(None),
            pools: Mutex::default(),
            callback: Mutex::new(None),
            reset: Mutex::new(None),
            closed: AtomicBool::new(false),
            broken: Mutex::new(None),
            oids: Mutex::default(),
        });
        let started = Instant::now();
        let (connection, nid) = loop {
            match inner.identify() {
                Ok(found) => break found,
                Err(ClientError::NoMaster(reason)) if started.elapsed() < READY_DEADLINE => {
                    let _ = reason;
                    std::thread::sleep(RECONNECT_DELAY);
                }
                Err(error) => return Err(error),
            }
        };
        let reader = inner.install(connection, nid)?;
        let thread = {
            let inner = Arc::clone(&inner);
            std::thread::Builder::new()
                .name("neo-client-master".to_owned())
                .spawn(move || {
                    // This thread's lines name the client (others' take the process's node).
                    crate::logging::set_node_id(nid);
                    let read = std::panic::AssertUnwindSafe(|| inner.read_master(reader));
                    if let Err(panic) = std::panic::catch_unwind(read) {
                        let what = panic
                            .downcast_ref::<&str>()
                            .map(|s| (*s).to_owned())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_default();
                        inner.break_down(format!(
                            "the master connection's thread panicked ({what}); reconnect with a new client"
                        ));
                    }
                })?
        };
        let client = Client { inner, reader: Arc::new(Mutex::new(Some(thread))) };
        // Ready once the table and this client's own node entry have arrived.
        let mut view = client.inner.lock_view();
        while view.table.is_none() || view.nid.is_none_or(|nid| !view.nodes.contains_key(&nid)) {
            let remaining = READY_DEADLINE.saturating_sub(started.elapsed());
            if remaining.is_zero() {
                return Err(protocol("the master sent no partition table"));
            }
            view = client
                .inner
                .changed
                .wait_timeout(view, remaining)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        drop(view);
        let last = client.inner.ask_master(&wire::AskLastTransaction {})?;
        if let Message::AnswerLastTransaction(last) = last {
            let mut view = client.inner.lock_view();
            view.last_tid = view.last_tid.max(last.tid);
        }
        Ok(client)
    }

    /// This client's node id.
    /// This client's figures: its loads from storages and its commits, counted and timed
    /// (HdrHistogram latencies).
    pub fn metrics(&self) -> crate::metrics::Figures {
        self.inner.figures.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// `metrics` in Prometheus's text format (`neo_client_*`, labelled with this client's
    /// node id), for an application to serve at its own `/metrics`.
    pub fn prometheus(&self) -> String {
        let node = self.nid().map_or_else(String::new, |nid| nid.to_string());
        let mut text = String::new();
        self.metrics().prometheus("client", &node, &mut text);
        text
    }

    pub fn nid(&self) -> Option<NodeId> {
        self.inner.lock_view().nid
    }

    /// The newest tid this client has seen: the snapshot `load` reads.
    pub fn last_transaction(&self) -> Option<Tid> {
        self.inner.lock_view().last_tid
    }

    /// A barrier with the master: every invalidation the master sent before is applied
    /// when it returns, and the newest committed tid is known.
    pub fn sync(&self) -> Result<Option<Tid>, ClientError> {
        let answer = self.inner.ask_master(&wire::AskLastTransaction {})?;
        let Message::AnswerLastTransaction(last) = answer else {
            return Err(protocol(format!("unexpected {}", answer.kind())));
        };
        let mut view = self.inner.lock_view();
        view.last_tid = view.last_tid.max(last.tid);
        Ok(view.last_tid)
    }

    /// Calls `callback` with each transaction other clients commit, in commit order, from
    /// the master connection's thread, before `last_transaction` moves to it; never after
    /// `close` returns.
    pub fn set_invalidation_callback(&self, callback: InvalidationCallback) {
        *self.inner.callback.lock().unwrap_or_else(|p| p.into_inner()) = Some(callback);
    }

    /// Calls `callback` from the master connection's thread each time the client has
    /// reconnected to a primary (a new one, or the same after the cluster left operation):
    /// invalidations may have been missed meanwhile, so whatever the application cached
    /// must go (ZODB's `invalidateCache`). Never after `close` returns.
    pub fn set_reset_callback(&self, callback: ResetCallback) {
        *self.inner.reset.lock().unwrap_or_else(|p| p.into_inner()) = Some(callback);
    }

    /// The newest revision as of `last_transaction`.
    pub fn load(&self, oid: Oid) -> Result<Loaded, ClientError> {
        self.inner.check_open()?;
        if let Some(hit) = self.inner.cache.lock().unwrap_or_else(|p| p.into_inner()).get(oid) {
            return Ok(hit);
        }
        let (at, invalidations) = {
            let view = self.inner.lock_view();
            (view.last_tid, view.invalidations)
        };
        let loaded = self.inner.load_from_storage(oid, at, None)?;
        if loaded.next_serial.is_none() {
            self.inner.cache_unless_invalidated(oid, &loaded, invalidations);
        }
        Ok(loaded)
    }

    /// The revision before `tid`, with the serial of the revision after it. ZODB reads
    /// everything through it, mostly at `last_transaction + 1`: up to there the cache
    /// answers (a cached revision is current as of the last tid: every commit up to it,
    /// this client's or another's, dropped what it changed before the last tid could move
    /// past it), and the storages' answer there fills it.
    pub fn load_before(&self, oid: Oid, tid: Tid) -> Result<Loaded, ClientError> {
        self.inner.check_open()?;
        let (last, invalidations) = {
            let view = self.inner.lock_view();
            (view.last_tid.unwrap_or(Tid::ZERO), view.invalidations)
        };
        // The snapshot `tid - 1` is at most the last tid.
        if tid.0 <= last.0.saturating_add(1)
            && let Some(hit) = self.inner.cache.lock().unwrap_or_else(|p| p.into_inner()).get(oid)
            && hit.serial < tid
        {
            return Ok(hit);
        }
        let loaded = self.inner.load_from_storage(oid, None, Some(tid))?;
        // Current as of the last tid, and no invalidation raced the load: what `load`
        // would cache.
        if tid.0 == last.0.saturating_add(1) && loaded.next_serial.is_none() {
            self.inner.cache_unless_invalidated(oid, &loaded, invalidations);
        }
        Ok(loaded)
    }

    /// The serial of the revision the cache holds for `oid`, if any (diagnostics).
    pub fn cached_serial(&self, oid: Oid) -> Option<Tid> {
        self.inner.cache.lock().unwrap_or_else(|p| p.into_inner()).get(oid).map(|hit| hit.serial)
    }

    /// The revision written by `serial`.
    pub fn load_serial(&self, oid: Oid, serial: Tid) -> Result<Loaded, ClientError> {
        self.inner.check_open()?;
        let loaded = self.inner.load_from_storage(oid, Some(serial), None)?;
        if loaded.serial != serial {
            return Err(ClientError::OidNotFound(oid));
        }
        Ok(loaded)
    }

    /// The object's committed revisions, newest first, at most `count` of them: their
    /// serials and data sizes (ZODB's `history`; the metadata comes from
    /// `transaction_information`).
    pub fn history(&self, oid: Oid, count: u64) -> Result<Vec<(Tid, u32)>, ClientError> {
        self.inner.check_open()?;
        let ask = wire::AskObjectHistory { oid, first: 0, last: count };
        let asked = self.inner.ask_readable(oid.0, &ask, |nid, answer| match answer {
            Message::AnswerObjectHistory(answer) if answer.oid == oid => {
                Ok(Ok(answer.history.into_iter().map(|e| (e.serial, e.size)).collect()))
            }
            other => Ok(Err(unexpected(nid, other))),
        })?;
        match asked {
            Ok(history) if Vec::is_empty(&history) && count > 0 => {
                Err(ClientError::OidDoesNotExist(oid))
            }
            Ok(history) => Ok(history),
            Err(last_error) => Err(ClientError::NoReadableCell(oid, last_error)),
        }
    }

    /// A committed transaction's metadata and the oids it changed.
    pub fn transaction_information(&self, tid: Tid) -> Result<TransactionInformation, ClientError> {
        self.inner.check_open()?;
        let ask = wire::AskTransactionInformation { tid };
        let asked = self.inner.ask_readable(tid.0, &ask, |nid, answer| match answer {
            Message::AnswerTransactionInformation(info) if info.tid == tid => {
                Ok(Ok(TransactionInformation {
                    tid,
                    user: info.user,
                    description: info.description,
                    extension: info.extension,
                    packed: info.packed,
                    oids: info.oids,
                }))
            }
            Message::Error(error) if error.code == ErrorCode::TidNotFound => Err(refused(&error)),
            other => Ok(Err(unexpected(nid, other))),
        })?;
        asked.map_err(|last_error| {
            ClientError::Protocol(format!("no readable cell answered for {tid}: {last_error}"))
        })
    }

    /// Committed tids, newest first, positions `first .. last` over every partition (the
    /// undo log).
    pub fn tids_descending(&self, first: u64, last: u64) -> Result<Vec<Tid>, ClientError> {
        self.inner.check_open()?;
        let mut tids = Vec::new();
        for partition in 0..self.inner.partitions() {
            let ask = wire::AskTids { first: 0, last, partition: Some(PartitionId(partition)) };
            let asked =
                self.inner.ask_readable(
                    u64::from(partition),
                    &ask,
                    |nid, answer| match answer {
                        Message::AnswerTids(answer) => Ok(Ok(answer.tids)),
                        other => Ok(Err(unexpected(nid, other))),
                    },
                )?;
            tids.extend(asked.map_err(|last_error| {
                ClientError::Protocol(format!("partition {partition}: {last_error}"))
            })?);
        }
        tids.sort_unstable_by(|a, b| b.cmp(a));
        tids.dedup();
        let first = usize::try_from(first).unwrap_or(usize::MAX);
        let last = usize::try_from(last).unwrap_or(usize::MAX);
        Ok(tids.into_iter().skip(first).take(last.saturating_sub(first)).collect())
    }

    /// Committed tids in `min ..= max`, ascending, at most `length`, from every partition
    /// (what iterating over transactions pages through).
    pub fn tids_from(&self, min: Tid, max: Tid, length: u32) -> Result<Vec<Tid>, ClientError> {
        self.inner.check_open()?;
        let mut tids = Vec::new();
        for partition in 0..self.inner.partitions() {
            let ask = wire::AskTidsFrom {
                min_tid: min,
                max_tid: max,
                length,
                partition: PartitionId(partition),
            };
            let asked =
                self.inner.ask_readable(
                    u64::from(partition),
                    &ask,
                    |nid, answer| match answer {
                        Message::AnswerTidsFrom(answer) => Ok(Ok(answer.tids)),
                        other => Ok(Err(unexpected(nid, other))),
                    },
                )?;
            let found = asked.map_err(|last_error| {
                ClientError::Protocol(format!("partition {partition}: {last_error}"))
            })?;
            tids.extend(found);
        }
        tids.sort_unstable();
        tids.dedup();
        tids.truncate(length as usize);
        Ok(tids)
    }

    /// One new oid (ZODB's `new_oid`), from a batch of `OID_BATCH` asked of the master
    /// when the previous batch is used up.
    pub fn new_oid(&self) -> Result<Oid, ClientError> {
        if let Some(oid) = self.inner.oids.lock().unwrap_or_else(|p| p.into_inner()).1.pop_front() {
            return Ok(oid);
        }
        let session = self.inner.lock_view().session;
        let mut batch: VecDeque<Oid> = self.new_oids(OID_BATCH)?.into();
        let oid = batch.pop_front().ok_or_else(|| protocol("the master gave no oid"))?;
        // Another thread may have refilled meanwhile: both batches are good, unless the
        // master connection changed since this one was asked (`Inner::oids`).
        let mut oids = self.inner.oids.lock().unwrap_or_else(|p| p.into_inner());
        if self.inner.lock_view().session == session {
            oids.0 = session;
            oids.1.extend(batch);
        }
        Ok(oid)
    }

    /// `count` new oids, consecutive.
    pub fn new_oids(&self, count: u32) -> Result<Vec<Oid>, ClientError> {
        let answer = self.inner.ask_master(&wire::AskNewOids { count })?;
        let Message::AnswerNewOids(new) = answer else {
            return Err(protocol(format!("unexpected {}", answer.kind())));
        };
        if new.count != count || new.first.0.checked_add(u64::from(count)).is_none() {
            return Err(protocol(format!(
                "asked {count} oids, the master gave {} from {}",
                new.count, new.first
            )));
        }
        Ok((0..u64::from(new.count)).map(|i| Oid(new.first.0 + i)).collect())
    }

    /// `tpc_begin`: a transaction with a new ttid (or `tid`, for an import).
    pub fn tpc_begin(&self, tid: Option<Tid>) -> Result<Transaction, ClientError> {
        if self.inner.options.read_only {
            return Err(ClientError::Refused {
                code: ErrorCode::ReadOnlyAccess,
                message: "this client is read-only".to_owned(),
            });
        }
        let answer = self.inner.ask_master(&wire::AskBeginTransaction { tid })?;
        let Message::AnswerBeginTransaction(begun) = answer else {
            return Err(protocol(format!("unexpected {}", answer.kind())));
        };
        Ok(Transaction {
            began: Instant::now(),
            client: self.clone(),
            ttid: begun.ttid,
            connections: BTreeMap::new(),
            pending: Vec::new(),
            failed: BTreeSet::new(),
            stored: Vec::new(),
            checked: BTreeSet::new(),
            conflicts: Vec::new(),
            bases: HashMap::new(),
            early_vote: None,
            early_answer: None,
            pack: None,
            locked: HashMap::new(),
            ended: false,
        })
    }

    /// Packs the database: drops every revision older than the newest one at or before
    /// `pack_tid` (clamped to the last committed tid), of `oids` only if given, and objects
    /// deleted by then. The request travels in a transaction of its own (`meta`), which
    /// orders the pack against commits; every storage then packs its copy. Returns the
    /// pack's id (that transaction's tid) once every storage in service has packed
    /// (`WaitForPack`). There is no garbage collection: unreferenced objects stay.
    pub fn pack(
        &self,
        pack_tid: Tid,
        oids: Option<Vec<Oid>>,
        meta: &TransactionMeta,
    ) -> Result<Tid, ClientError> {
        let last = self.sync()?.unwrap_or(Tid::ZERO);
        let mut transaction = self.tpc_begin(None)?;
        transaction.pack = Some(wire::PackRequest { oids, pack_tid: pack_tid.min(last) });
        let conflicts = transaction.vote(meta)?;
        debug_assert!(conflicts.is_empty(), "a transaction without stores has no conflicts");
        let pack_id = transaction.finish(|_| {})?;
        self.wait_for_pack(pack_id)?;
        Ok(pack_id)
    }

    /// Waits until every storage in service has carried out every pack order up to `tid`.
    pub fn wait_for_pack(&self, tid: Tid) -> Result<(), ClientError> {
        match self.inner.ask_master(&wire::WaitForPack { tid })? {
            Message::AnswerWaitForPack(_) => Ok(()),
            other => Err(protocol(format!("unexpected {}", other.kind()))),
        }
    }

    /// Closes the client: the master connection's thread is stopped (no callback runs
    /// after this returns) and every connection is closed.
    pub fn close(&self) {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(master) = self.inner.master.lock().unwrap_or_else(|p| p.into_inner()).take() {
            master.stream.shutdown();
        }
        self.inner.changed.notify_all();
        if let Some(thread) = self.reader.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = thread.join();
        }
        self.inner.pools.lock().unwrap_or_else(|p| p.into_inner()).clear();
        *self.inner.callback.lock().unwrap_or_else(|p| p.into_inner()) = None;
        *self.inner.reset.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// A store awaiting its answer.
#[derive(Clone, Copy, Debug)]
struct PendingStore {
    nid: NodeId,
    msg_id: u32,
    oid: Oid,
    base: Tid,
}

/// A transaction in progress. Dropping it without `finish` aborts it.
pub struct Transaction {
    /// When `tpc_begin` asked for it (`commit_seconds`).
    began: Instant,
    client: Client,
    ttid: Tid,
    /// The storage connections this transaction holds, by node.
    connections: BTreeMap<NodeId, SyncConnection>,
    pending: Vec<PendingStore>,
    /// Storages that failed during the transaction.
    failed: BTreeSet<NodeId>,
    /// Oids stored (data or deletion), in order, without repeats.
    stored: Vec<Oid>,
    /// Partitions of objects checked with `check_current_serial`.
    checked: BTreeSet<PartitionId>,
    conflicts: Vec<Conflict>,
    /// The serial each object was last stored on (what a relock checks again).
    bases: HashMap<Oid, Tid>,
    /// A vote sent right behind the stores (one storage holds the whole transaction), and
    /// its answer when it came while store answers were still being read.
    early_vote: Option<(NodeId, u32)>,
    early_answer: Option<Message>,
    /// The pack this transaction requests (`Client::pack`).
    pack: Option<wire::PackRequest>,
    /// Whether a cell that holds itself readable locked each object stored (or checked)
    /// since its last store: out-of-date cells store without a lock or a conflict check,
    /// so an object that none locked was checked by nobody (the table changed under the
    /// transaction) and must not be voted.
    locked: HashMap<Oid, bool>,
    ended: bool,
}

fn conflict_serial(outcome: StoreOutcome) -> Option<Tid> {
    match outcome {
        StoreOutcome::Conflict(current) => Some(current),
        StoreOutcome::Locked | StoreOutcome::Lockless | StoreOutcome::NotAssigned => None,
    }
}

impl std::fmt::Debug for Transaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction").field("ttid", &self.ttid).finish()
    }
}

impl Transaction {
    pub fn ttid(&self) -> Tid {
        self.ttid
    }

    /// Sends a request to every cell of `oid`'s partition, without waiting.
    fn send_to_cells<M: Body + ?Sized>(
        &mut self,
        oid: Oid,
        base: Tid,
        message: &M,
    ) -> Result<(), ClientError> {
        let cells = self.client.inner.cells(oid.0, false)?;
        if cells.is_empty() {
            return Err(ClientError::NoReadableCell(oid, "no cell to store to".to_owned()));
        }
        for nid in cells {
            if self.failed.contains(&nid) {
                continue;
            }
            // Queued, not sent: the stores of a transaction leave in as few writes as
            // possible (each costs the storage a wake-up), at the latest when answers are
            // collected. Only the storage's failures mark it failed: a message this client
            // cannot encode fails the call, and the storage is fine.
            let Ok(connection) = self.connection(nid) else {
                self.fail(nid);
                continue;
            };
            let msg_id = connection.next_id();
            connection.queue(msg_id, message)?;
            if connection.queued() >= STORE_BATCH_BYTES && connection.flush().is_err() {
                self.fail(nid);
                continue;
            }
            self.bases.insert(oid, base);
            self.locked.insert(oid, false);
            self.pending.push(PendingStore { nid, msg_id, oid, base });
        }
        // Bounded pipelining: a storage queues at most so many answers for a peer.
        if self.pending.len() >= STORES_IN_FLIGHT_MAX {
            self.collect()?;
        }
        Ok(())
    }

    /// Sends what is queued on every connection of the transaction.
    fn flush(&mut self) {
        let mut broken = Vec::new();
        for (&nid, connection) in &mut self.connections {
            if connection.flush().is_err() {
                broken.push(nid);
            }
        }
        for nid in broken {
            self.fail(nid);
        }
    }

    fn connection(&mut self, nid: NodeId) -> Result<&mut SyncConnection, ClientError> {
        if !self.connections.contains_key(&nid) {
            let connection = self.client.inner.storage(nid)?;
            self.connections.insert(nid, connection);
        }
        Ok(self.connections.get_mut(&nid).expect("inserted above"))
    }

    fn fail(&mut self, nid: NodeId) {
        self.failed.insert(nid);
        self.connections.remove(&nid);
        self.pending.retain(|p| p.nid != nid);
    }

    /// Sends `message` to `nid` now: its id, or `None` when the storage failed (it is
    /// marked so). A message this client cannot encode fails the call instead.
    fn send_now<M: Body + ?Sized>(
        &mut self,
        nid: NodeId,
        message: &M,
    ) -> Result<Option<u32>, ClientError> {
        let Ok(connection) = self.connection(nid) else {
            self.fail(nid);
            return Ok(None);
        };
        let msg_id = connection.next_id();
        connection.queue(msg_id, message)?;
        if connection.flush().is_err() {
            self.fail(nid);
            return Ok(None);
        }
        Ok(Some(msg_id))
    }

    fn note_stored(&mut self, oid: Oid) {
        if !self.stored.contains(&oid) {
            self.stored.push(oid);
        }
    }

    /// `store`: `data` as the new revision of `oid`, based on `serial` (`Tid::ZERO` for a
    /// new object). Conflicts come back from `vote`.
    pub fn store(&mut self, oid: Oid, serial: Tid, data: Bytes) -> Result<(), ClientError> {
        let ask = wire::AskStoreObject {
            oid,
            serial,
            compression: Compression::None,
            data_crc: crc32fast::hash(&data),
            data_serial: None,
            ttid: self.ttid,
            data: wire::Payload(data),
        };
        self.send_to_cells(oid, serial, &ask)?;
        self.note_stored(oid);
        Ok(())
    }

    /// `deleteObject`: a revision that deletes `oid`, based on `serial`.
    pub fn delete_object(&mut self, oid: Oid, serial: Tid) -> Result<(), ClientError> {
        let ask = wire::AskStoreObject {
            oid,
            serial,
            compression: Compression::None,
            data_crc: 0,
            data_serial: None,
            ttid: self.ttid,
            data: wire::Payload(Bytes::new()),
        };
        self.send_to_cells(oid, serial, &ask)?;
        self.note_stored(oid);
        Ok(())
    }

    /// A revision of `oid` that undoes a transaction: it takes the data of revision
    /// `data_serial` back (without copying it), or deletes the object when the undone
    /// transaction created it (`None`). Based on `serial`, the current one.
    pub fn store_undo(
        &mut self,
        oid: Oid,
        serial: Tid,
        data_serial: Option<Tid>,
    ) -> Result<(), ClientError> {
        let Some(data_serial) = data_serial else { return self.delete_object(oid, serial) };
        let ask = wire::AskStoreObject {
            oid,
            serial,
            compression: Compression::None,
            data_crc: 0,
            data_serial: Some(data_serial),
            ttid: self.ttid,
            data: wire::Payload(Bytes::new()),
        };
        self.send_to_cells(oid, serial, &ask)?;
        self.note_stored(oid);
        Ok(())
    }

    /// What undoing `undone` means for each of `oids`, as of what this client has seen:
    /// the current serial, the serial whose data undo restores (none: undo deletes the
    /// object's creation), and whether the revision undone is still the current one (if
    /// not, undo needs conflict resolution).
    pub fn undo_serials(
        &mut self,
        undone: Tid,
        oids: &[Oid],
    ) -> Result<Vec<wire::messages::UndoSerial>, ClientError> {
        let inner = &self.client.inner;
        let ltid = inner.lock_view().last_tid.unwrap_or(Tid::ZERO);
        let partitions = inner.partitions().max(1);
        let mut by_partition: BTreeMap<u32, Vec<Oid>> = BTreeMap::new();
        for &oid in oids {
            by_partition.entry(PartitionId::of(oid.0, partitions).0).or_default().push(oid);
        }
        let mut serials = Vec::new();
        for (partition, oids) in by_partition {
            let ask = wire::AskObjectUndoSerial { ttid: self.ttid, ltid, undone_tid: undone, oids };
            let asked =
                inner.ask_readable(u64::from(partition), &ask, |nid, answer| match answer {
                    Message::AnswerObjectUndoSerial(answer) => Ok(Ok(answer.serials)),
                    Message::Error(error)
                        if matches!(
                            error.code,
                            ErrorCode::OidNotFound | ErrorCode::UndoPackError
                        ) =>
                    {
                        Err(refused(&error))
                    }
                    other => Ok(Err(unexpected(nid, other))),
                })?;
            serials.extend(asked.map_err(|last_error| {
                ClientError::Protocol(format!("partition {partition}: {last_error}"))
            })?);
        }
        Ok(serials)
    }

    /// `checkCurrentSerialInTransaction`: `oid` must still be at `serial` when this
    /// transaction commits (it is locked, and a conflict comes back from `vote` otherwise).
    pub fn check_current_serial(&mut self, oid: Oid, serial: Tid) -> Result<(), ClientError> {
        let ask = wire::AskCheckCurrentSerial { ttid: self.ttid, oid, serial };
        self.send_to_cells(oid, serial, &ask)?;
        let partitions = self.client.inner.partitions();
        if partitions > 0 {
            self.checked.insert(PartitionId::of(oid.0, partitions));
        }
        Ok(())
    }

    /// Collects the answers of the stores sent so far.
    fn collect(&mut self) -> Result<(), ClientError> {
        self.flush();
        // Every connection with answers due is read as frames arrive, whichever it is: a
        // storage may ask this transaction to relock an object (deadlock avoidance) while
        // the answer awaited on another connection depends on it.
        while !self.pending.is_empty() {
            // All of the transaction's connections: a relock request may come on one whose
            // answers are all in.
            let due: BTreeSet<NodeId> = self.connections.keys().copied().collect();
            let mut frames = Vec::new();
            for &nid in &due {
                let Some(connection) = self.connections.get_mut(&nid) else { continue };
                match connection.decoder.next_frame() {
                    Ok(Some(frame)) => frames.push((nid, frame)),
                    Ok(None) => {}
                    Err(_) => self.fail(nid),
                }
            }
            if frames.is_empty() {
                self.wait_readable(&due)?;
                continue;
            }
            for (nid, frame) in frames {
                self.on_store_frame(nid, frame)?;
            }
        }
        Ok(())
    }

    /// Waits until one of `due`'s connections has bytes (or is closed), and reads them.
    /// Answers still due on a connection that fails are dropped with it (`fail`).
    fn wait_readable(&mut self, due: &BTreeSet<NodeId>) -> Result<(), ClientError> {
        let nids: Vec<NodeId> =
            due.iter().copied().filter(|nid| self.connections.contains_key(nid)).collect();
        let mut fds: Vec<libc::pollfd> = nids
            .iter()
            .map(|nid| libc::pollfd {
                fd: self.connections[nid].stream.raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        if fds.is_empty() {
            // Every connection failed: nothing more will come.
            self.pending.clear();
            return Ok(());
        }
        let timeout = self.client.inner.options.storage_timeout;
        let probe = (timeout / 4).max(Duration::from_millis(10));
        // Bytes a TLS session already read from a socket are not seen by poll: such a
        // connection is ready now.
        let buffered: Vec<bool> =
            nids.iter().map(|nid| self.connections[nid].stream.buffered()).collect();
        let probe_ms = if buffered.contains(&true) {
            0
        } else {
            libc::c_int::try_from(probe.as_millis()).unwrap_or(libc::c_int::MAX)
        };
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs for the call.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, probe_ms) };
        if ready < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::Interrupted {
                return Ok(());
            }
            return Err(error.into());
        }
        for ((nid, fd), buffered) in nids.into_iter().zip(fds).zip(buffered) {
            if fd.revents == 0 && !buffered {
                continue;
            }
            let read = self.connections.get_mut(&nid).map(SyncConnection::read_some);
            if !matches!(read, Some(Ok(true))) {
                self.fail(nid);
            }
        }
        self.check_liveness(probe, timeout)
    }

    /// A storage that owes answers and has said nothing for `probe` is pinged; one whose
    /// ping is unanswered after `timeout` is taken for hung (stopped, stuck) and failed for
    /// this transaction. A store may wait for another transaction's lock for any time: the
    /// ping, answered at once by a storage that runs, tells waiting from hanging.
    fn check_liveness(&mut self, probe: Duration, timeout: Duration) -> Result<(), ClientError> {
        let now = Instant::now();
        let owing: BTreeSet<NodeId> = self.pending.iter().map(|p| p.nid).collect();
        for nid in owing {
            let Some(connection) = self.connections.get_mut(&nid) else { continue };
            match connection.ping {
                // Anything heard since the ping shows the process runs (a stopped one
                // sends nothing); its answer may have been read elsewhere.
                Some((_, sent)) if connection.heard > sent => connection.ping = None,
                Some((_, sent)) if now.duration_since(sent) > timeout => {
                    tracing::warn!(
                        "{nid} has not answered a ping for {timeout:?}: it is taken for hung (transaction {})",
                        self.ttid
                    );
                    self.fail(nid);
                }
                None if now.duration_since(connection.heard) > probe => {
                    let msg_id = connection.next_id();
                    connection.queue(msg_id, &wire::Ping {})?;
                    if connection.flush().is_err() {
                        self.fail(nid);
                    } else {
                        connection.ping = Some((msg_id, now));
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// A frame from a storage while store answers are due.
    fn on_store_frame(&mut self, nid: NodeId, frame: RawFrame) -> Result<(), ClientError> {
        let message = frame.message()?;
        if !frame.kind.is_answer() {
            if let Message::NotifyDeadlock(notice) = message
                && notice.ttid == self.ttid
            {
                // Give the object up to the older transaction and take it back behind it.
                let base = self.bases.get(&notice.oid).copied().unwrap_or(Tid::ZERO);
                let relock = wire::AskRelockObject { ttid: self.ttid, oid: notice.oid };
                if let Some(msg_id) = self.send_now(nid, &relock)? {
                    self.pending.push(PendingStore { nid, msg_id, oid: notice.oid, base });
                }
            }
            return Ok(());
        }
        // The answer to a liveness ping: the storage runs.
        if let Some(connection) = self.connections.get_mut(&nid)
            && connection.ping.is_some_and(|(id, _)| id == frame.msg_id)
        {
            connection.ping = None;
            return Ok(());
        }
        if self.early_vote == Some((nid, frame.msg_id)) {
            self.early_answer = Some(message);
            return Ok(());
        }
        let Some(index) =
            self.pending.iter().position(|p| p.nid == nid && p.msg_id == frame.msg_id)
        else {
            return Ok(());
        };
        let store = self.pending.swap_remove(index);
        let (current, locked) = match message {
            Message::AnswerStoreObject(answer) => {
                (conflict_serial(answer.outcome), answer.outcome == StoreOutcome::Locked)
            }
            Message::AnswerCheckCurrentSerial(answer) => {
                (conflict_serial(answer.outcome), answer.outcome == StoreOutcome::Locked)
            }
            Message::AnswerRelockObject(answer) => {
                let locked = answer.conflict.is_none();
                (answer.conflict.map(|c| c.conflict_serial), locked)
            }
            Message::Error(error) => return Err(refused(&error)),
            other => return Err(protocol(format!("unexpected {}", other.kind()))),
        };
        if locked {
            self.locked.insert(store.oid, true);
        }
        if let Some(current) = current
            && !self.conflicts.iter().any(|c| c.oid == store.oid)
        {
            self.conflicts.push(Conflict { oid: store.oid, base: store.base, current });
        }
        Ok(())
    }

    /// `tpc_vote`: waits for every store's answer. Conflicts are returned (nothing is voted
    /// then): store the resolved data again (based on the conflict's current serial) and
    /// vote again, or abort. Without conflicts, the transaction is made durable on every
    /// storage involved and an empty list is returned.
    pub fn vote(&mut self, meta: &TransactionMeta) -> Result<Vec<Conflict>, ClientError> {
        // Metadata to the cells of the ttid's partition, a plain vote to the others.
        let meta_cells = self.client.inner.cells(self.ttid.0, false)?;
        let store_transaction = wire::AskStoreTransaction {
            ttid: self.ttid,
            user: meta.user.clone(),
            description: meta.description.clone(),
            extension: meta.extension.clone(),
            oids: self.stored.clone(),
            pack: self.pack.clone(),
        };
        if let Some(voted) = self.vote_behind_stores(&meta_cells, &store_transaction)? {
            return Ok(voted);
        }
        self.collect()?;
        if !self.conflicts.is_empty() {
            return Ok(std::mem::take(&mut self.conflicts));
        }
        self.check_locked()?;
        let mut asked = Vec::new();
        for nid in meta_cells {
            if self.failed.contains(&nid) {
                continue;
            }
            if let Some(msg_id) = self.send_now(nid, &store_transaction)? {
                asked.push((nid, msg_id));
            }
        }
        let others: Vec<NodeId> = self
            .connections
            .keys()
            .copied()
            .filter(|n| !asked.iter().any(|(a, _)| a == n))
            .collect();
        for nid in others {
            let vote = wire::AskVoteTransaction { ttid: self.ttid };
            if let Some(msg_id) = self.send_now(nid, &vote)? {
                asked.push((nid, msg_id));
            }
        }
        for (nid, msg_id) in asked {
            let answer = match self.connections.get_mut(&nid) {
                Some(connection) => connection.answer(msg_id),
                None => continue,
            };
            match answer {
                Ok(Message::AnswerStoreTransaction(_) | Message::AnswerVoteTransaction(_)) => {}
                Ok(Message::Error(error)) => return Err(refused(&error)),
                Ok(other) => return Err(protocol(format!("unexpected {}", other.kind()))),
                Err(_) => self.fail(nid),
            }
        }
        self.report_failed()?;
        Ok(Vec::new())
    }

    /// Tells the master which storages failed during the transaction (`FailedVote`): it
    /// goes on without them if every partition keeps a readable copy, else refuses.
    fn report_failed(&mut self) -> Result<(), ClientError> {
        if self.failed.is_empty() {
            return Ok(());
        }
        let failed: Vec<NodeId> = self.failed.iter().copied().collect();
        let answer = self
            .client
            .inner
            .ask_master(&wire::FailedVote { ttid: self.ttid, failed: failed.clone() });
        answer.map(drop).map_err(|error| ClientError::Incomplete(failed[0], error.to_string()))
    }

    /// When one storage holds the whole transaction (its stores and its metadata), the vote
    /// goes in the same write as the stores instead of after their answers: one round trip
    /// less. That storage votes once the stores are answered, and refuses to if one of them
    /// conflicted, so nothing is voted that the client must still resolve. With several
    /// storages this cannot work: one could vote while another reports a conflict, and a
    /// voted storage takes no resolved store. `None`: not done, vote the usual way.
    fn vote_behind_stores(
        &mut self,
        meta_cells: &[NodeId],
        store_transaction: &wire::AskStoreTransaction,
    ) -> Result<Option<Vec<Conflict>>, ClientError> {
        let nid = match (meta_cells, self.connections.keys().collect::<Vec<_>>().as_slice()) {
            ([meta], [only]) if meta == *only => *meta,
            _ => return Ok(None),
        };
        if !self.failed.is_empty() || !self.conflicts.is_empty() {
            return Ok(None);
        }
        let queued = self.connections.get_mut(&nid).map(|connection| {
            let msg_id = connection.next_id();
            connection.queue(msg_id, store_transaction).map(|()| msg_id)
        });
        let Some(msg_id) = queued.transpose()? else { return Ok(None) };
        self.early_vote = Some((nid, msg_id));
        self.early_answer = None;
        let collected = self.collect();
        self.early_vote = None;
        collected?;
        let answer = match self.early_answer.take() {
            Some(answer) => Ok(answer),
            None => match self.connections.get_mut(&nid) {
                Some(connection) => connection.answer(msg_id),
                None => Err(ClientError::Io(std::io::ErrorKind::UnexpectedEof.into())),
            },
        };
        if !self.conflicts.is_empty() {
            // The storage saw the same conflicts and voted nothing.
            return match answer {
                Ok(Message::Error(error)) if error.code == ErrorCode::Denied => {
                    Ok(Some(std::mem::take(&mut self.conflicts)))
                }
                Ok(other) => {
                    Err(protocol(format!("a vote with conflicts was answered {}", other.kind())))
                }
                Err(_) => {
                    self.fail(nid);
                    Ok(Some(std::mem::take(&mut self.conflicts)))
                }
            };
        }
        match answer {
            Ok(Message::AnswerStoreTransaction(_)) => {}
            Ok(Message::Error(error)) => return Err(refused(&error)),
            Ok(other) => return Err(protocol(format!("unexpected {}", other.kind()))),
            Err(_) => self.fail(nid),
        }
        self.check_locked()?;
        self.report_failed()?;
        Ok(Some(Vec::new()))
    }

    /// Fails (a transient error: the caller aborts and retries) if some object stored was
    /// locked by no cell: see `Transaction::locked`.
    fn check_locked(&self) -> Result<(), ClientError> {
        match self.locked.iter().find(|&(_, &locked)| !locked) {
            Some((&oid, _)) => Err(ClientError::NoReadableCell(
                oid,
                "no cell locked it (the partition table changed under the transaction); retry"
                    .to_owned(),
            )),
            None => Ok(()),
        }
    }

    /// `tpc_finish`: commits; `before_publish` runs with the final tid before this client's
    /// last tid moves to it. Returns the tid.
    pub fn finish(mut self, before_publish: impl FnOnce(Tid)) -> Result<Tid, ClientError> {
        let finish = wire::AskFinishTransaction {
            ttid: self.ttid,
            oids: self.stored.clone(),
            deleted: Vec::new(),
            checked: self.checked.iter().copied().collect(),
            pack: self.pack.clone(),
        };
        let answer = self.client.inner.ask_master_finishing(&finish, self.stored.clone());
        if matches!(answer, Ok(Message::AnswerTransactionFinished(_))) {
            let mut figures = self.client.inner.figures.lock().unwrap_or_else(|p| p.into_inner());
            figures.latency("commit_seconds", self.began.elapsed());
            figures.count("commits", 1);
        }
        // From here the transaction is never aborted: the master may have locked it.
        self.ended = true;
        let ttid = self.ttid;
        let unknown = |reason: String| ClientError::OutcomeUnknown { ttid, reason };
        let tid = match answer {
            Ok(Message::AnswerTransactionFinished(finished)) => finished.tid,
            Ok(other) => return Err(unknown(format!("the master answered {}", other.kind()))),
            // The master no longer knows the transaction (a new master session since its
            // begin): nothing was locked, the session's verification dropped it.
            Err(ClientError::Refused { code: ErrorCode::TidNotFound, .. }) => {
                return Err(ClientError::NotCommitted(self.ttid));
            }
            // The master refused the finish: nothing was locked.
            Err(error @ ClientError::Refused { .. }) => return Err(error),
            Err(error @ (ClientError::Closed | ClientError::Broken(_))) => {
                return Err(unknown(error.to_string()));
            }
            // The master was lost while finishing (or the cluster left operation and sent
            // this client away): the transaction committed if any storage had locked it;
            // ask, until the cluster can say.
            Err(lost) => match self.recover_final_tid() {
                Ok(Some(tid)) => tid,
                Ok(None) => return Err(ClientError::NotCommitted(self.ttid)),
                Err(error) => {
                    return Err(unknown(format!("{lost}; then, asking for it: {error}")));
                }
            },
        };
        // What it changed left the cache when the master's answer was read (or, when the
        // master was lost, when the client reconnected).
        before_publish(tid);
        {
            let mut view = self.client.inner.lock_view();
            view.last_tid = view.last_tid.max(Some(tid));
        }
        self.release();
        Ok(tid)
    }

    /// After the master was lost during `finish`: the final tid, from the primary (which
    /// answers once it is published, or knows it from verification) or the storages of
    /// the ttid's partition; none if the transaction did not commit. Retried while the
    /// cluster cannot say (recovering, no master), for up to `OUTCOME_PATIENCE`.
    fn recover_final_tid(&mut self) -> Result<Option<Tid>, ClientError> {
        // The connections of this transaction may be dead with the cluster's restart.
        self.connections.clear();
        let started = Instant::now();
        loop {
            match self.ask_final_tid() {
                Ok(found) => return Ok(found),
                Err(error @ (ClientError::Closed | ClientError::Broken(_))) => return Err(error),
                Err(error) if started.elapsed() >= OUTCOME_PATIENCE => return Err(error),
                Err(_) => std::thread::sleep(RECONNECT_DELAY),
            }
        }
    }

    /// One attempt of `recover_final_tid`.
    fn ask_final_tid(&mut self) -> Result<Option<Tid>, ClientError> {
        let asked = self.client.inner.ask_master(&wire::AskFinalTid { ttid: self.ttid })?;
        match asked {
            Message::AnswerFinalTid(answer) if answer.tid != Some(Tid::MAX) => {
                return Ok(answer.tid);
            }
            Message::AnswerFinalTid(_) => {}
            other => return Err(protocol(format!("unexpected {}", other.kind()))),
        }
        let mut reached = false;
        for nid in self.client.inner.cells(self.ttid.0, true)? {
            let Ok(mut connection) = self.client.inner.storage(nid) else { continue };
            let asked = connection
                .request(&wire::AskFinalTid { ttid: self.ttid })
                .and_then(|id| connection.answer(id));
            if let Ok(Message::AnswerFinalTid(answer)) = asked {
                self.client.inner.give_back(nid, connection);
                reached = true;
                if answer.tid.is_some() {
                    return Ok(answer.tid);
                }
            }
        }
        if !reached {
            return Err(ClientError::NoReadableCell(
                Oid(self.ttid.0),
                "no storage of the transaction's partition could say whether it committed"
                    .to_owned(),
            ));
        }
        Ok(None)
    }

    /// `tpc_abort`.
    pub fn abort(mut self) {
        self.abort_now();
    }

    fn abort_now(&mut self) {
        if self.ended {
            return;
        }
        self.ended = true;
        // Every storage the transaction reached, those it failed on too: a storage this
        // client took for failed may be alive and hold its locks.
        let nids: Vec<NodeId> = self.connections.keys().chain(&self.failed).copied().collect();
        let abort = wire::AbortTransaction { ttid: self.ttid, nids };
        // A connection with answers still due (a store may wait for a lock) is closed
        // rather than pooled: its next user would read them. The master relays the abort
        // to every storage named.
        let busy: BTreeSet<NodeId> = self.pending.iter().map(|p| p.nid).collect();
        self.connections.retain(|nid, _| !busy.contains(nid));
        for connection in self.connections.values_mut() {
            let _ = connection.request(&abort);
        }
        self.client.inner.tell_master(&abort);
        self.release();
    }

    fn release(&mut self) {
        for (nid, connection) in std::mem::take(&mut self.connections) {
            self.client.inner.give_back(nid, connection);
        }
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        self.abort_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn revision(size: usize, serial: u64) -> Loaded {
        Loaded {
            data: Bytes::from(vec![7u8; size]),
            serial: Tid(serial),
            next_serial: None,
            data_serial: None,
        }
    }

    #[test]
    fn the_cache_is_bounded_in_bytes_and_drops_the_oldest_first() {
        let mut cache = Cache { limit: 1000, ..Cache::default() };
        for oid in 0..5 {
            cache.insert(Oid(oid), revision(200, oid));
        }
        assert_eq!(cache.bytes, 1000);
        cache.insert(Oid(5), revision(200, 5));
        assert!(cache.get(Oid(0)).is_none(), "the oldest went");
        assert_eq!(cache.get(Oid(5)).map(|l| l.serial), Some(Tid(5)));
        assert_eq!(cache.bytes, 1000);
        // A newer revision replaces the old one in place.
        cache.insert(Oid(5), revision(100, 6));
        assert_eq!((cache.bytes, cache.get(Oid(5)).map(|l| l.serial)), (900, Some(Tid(6))));
        // Objects bigger than a quarter of the cache are not kept.
        cache.insert(Oid(9), revision(300, 9));
        assert!(cache.get(Oid(9)).is_none());
        cache.invalidate(Oid(5));
        assert!(cache.get(Oid(5)).is_none());
        assert_eq!((cache.bytes, cache.order.len(), cache.entries.len()), (800, 4, 4));
        cache.clear();
        assert_eq!((cache.bytes, cache.entries.len()), (0, 0));
        let mut off = Cache::default();
        off.insert(Oid(1), revision(1, 1));
        assert!(off.get(Oid(1)).is_none(), "size 0 turns the cache off");
    }
}
