//! Connections between nodes: TCP (`TCP_NODELAY`) on glommio, the 16-byte hello each way,
//! then frames. Every way a peer can misbehave ends in a typed error for this connection
//! only: a stranger, another protocol version or cluster, garbage, a frame cut short, a
//! peer that connects and never speaks (the hello has a deadline).

use std::time::Duration;

use bytes::BytesMut;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use crate::tls::Tls;
use wire::limits::HELLO_SIZE;
use wire::{
    Body, DecodeError, EncodeError, FrameDecoder, HandshakeError, Hello, RawFrame, encode_frame,
};

/// Payloads up to this size are copied next to their frame, so that one write sends both.
const PAYLOAD_COPY_MAX: usize = 16 << 10;

/// Frames queued to go out together, for the glommio writer and the client's blocking
/// sockets alike: small payloads are copied next to their frame, because each socket write
/// costs more than such a copy; big ones stay in their own buffers, uncopied.
#[derive(Debug, Default)]
pub struct QueuedFrames {
    out: BytesMut,
    /// Payloads too big to copy into `out`, each with the offset in `out` it follows.
    large: Vec<(usize, bytes::Bytes)>,
}

impl QueuedFrames {
    pub fn queue<M: Body + ?Sized>(&mut self, msg_id: u32, message: &M) -> Result<(), EncodeError> {
        if let Some(payload) = encode_frame(&mut self.out, msg_id, message)? {
            if payload.len() <= PAYLOAD_COPY_MAX {
                self.out.extend_from_slice(payload);
            } else {
                self.large.push((self.out.len(), payload.clone()));
            }
        }
        Ok(())
    }

    /// Bytes queued.
    pub fn len(&self) -> usize {
        self.out.len() + self.large.iter().map(|(_, p)| p.len()).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
    }

    /// The queued bytes, in the order they go out: write each, then `clear`.
    pub fn segments(&self) -> Vec<&[u8]> {
        let mut segments = Vec::with_capacity(2 * self.large.len() + 1);
        let mut written = 0;
        for (end, payload) in &self.large {
            segments.push(&self.out[written..*end]);
            segments.push(&payload[..]);
            written = *end;
        }
        segments.push(&self.out[written..]);
        segments.retain(|s| !s.is_empty());
        segments
    }

    pub fn clear(&mut self) {
        self.out.clear();
        self.large.clear();
    }
}
/// A writer task stops gathering queued messages into one write at this many bytes.
const WRITE_BATCH_MAX: usize = 256 << 10;

/// Why a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("handshake: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("bad frame: {0}")]
    Decode(#[from] DecodeError),
    #[error("cannot encode: {0}")]
    Encode(#[from] EncodeError),
    #[error("peer closed the connection{}", if *.mid_frame { " in the middle of a frame" } else { "" })]
    Closed { mid_frame: bool },
    #[error("peer sent nothing for {0:?} while {1}")]
    TimedOut(Duration, &'static str),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("over a limit: {0}")]
    Limit(String),
    #[error(
        "the peer did not finish a frame within {0:?} of its start (10 s + 1 s per MiB it \
         announced): disconnected"
    )]
    FrameTooSlow(Duration),
    #[error("{address} is a {found}, not the node this one looked for")]
    Unexpected { address: std::net::SocketAddr, found: wire::NodeType },
    #[error(
        "the peer's hello says {node_type}, and its certificate ({subject}) carries {roles}: \
         {node_type} needs the OU {}", crate::tls::role_name(*node_type)
    )]
    Role { node_type: wire::NodeType, roles: crate::tls::Roles, subject: String },
}

impl From<glommio::GlommioError<()>> for ConnectionError {
    fn from(error: glommio::GlommioError<()>) -> ConnectionError {
        ConnectionError::Io(match error {
            glommio::GlommioError::IoError(source) => source,
            glommio::GlommioError::EnhancedIoError { source, .. } => source,
            glommio::GlommioError::TimedOut(duration) => std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("timed out after {duration:?}"),
            ),
            other => std::io::Error::other(other.to_string()),
        })
    }
}

/// One framed connection.
#[derive(Debug)]
pub struct Connection {
    peer: Hello,
    peer_address: Option<std::net::SocketAddr>,
    /// The socket, for `shutdown_socket` (the halves own the stream).
    socket: std::os::fd::RawFd,
    reader: FrameReader,
    writer: FrameWriter,
}

/// Seconds of silence before the kernel starts probing a peer.
pub const KEEPALIVE_IDLE_SECONDS: i32 = 5;
/// Seconds between probes.
pub const KEEPALIVE_INTERVAL_SECONDS: i32 = 1;
/// Unanswered probes before the connection fails with ETIMEDOUT.
pub const KEEPALIVE_PROBES: i32 = 5;
/// Milliseconds sent data may stay unacknowledged before the connection fails: the same
/// bound for a peer that vanishes while we are writing to it.
pub const UNACKNOWLEDGED_MILLISECONDS_MAX: i32 = 10_000;

/// A peer whose host died or dropped off the network sends no FIN: without probes a
/// connection to it would wait forever (a secondary master would never take over, a storage
/// would never look for a new primary). TCP keepalive makes an idle connection to it fail
/// within about idle + interval * probes = 10 s, and the user timeout one with data in
/// flight. The probes are answered by the peer's kernel, so a live but busy (or stopped)
/// peer process is never taken for dead.
fn set_keepalive(stream: &TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    set_keepalive_fd(stream.as_raw_fd())
}

/// `set_keepalive` for any TCP socket (the client's blocking ones too).
pub(crate) fn set_keepalive_fd(fd: std::os::fd::RawFd) -> std::io::Result<()> {
    let options = [
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1),
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, KEEPALIVE_IDLE_SECONDS),
        (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, KEEPALIVE_INTERVAL_SECONDS),
        (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, KEEPALIVE_PROBES),
        (libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, UNACKNOWLEDGED_MILLISECONDS_MAX),
    ];
    for (level, name, value) in options {
        // SAFETY: `fd` is the stream's open socket for the duration of the call; the value
        // is a c_int whose size is passed along.
        let result = unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                std::ptr::from_ref(&value).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if result != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A listening socket on `address` for this executor. glommio's own `bind` sets
/// SO_REUSEPORT, with which a second process binding the same address succeeds and the
/// kernel splits new connections between the two: a master started twice would answer
/// half of the nodes as an empty cluster. This binds like `std` (SO_REUSEADDR only, so a
/// restart does not wait for old connections' TIME_WAIT), and a taken address is an
/// error.
pub fn listen(address: std::net::SocketAddr) -> std::io::Result<glommio::net::TcpListener> {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let listener = std::net::TcpListener::bind(address)?;
    // SAFETY: the descriptor is a bound, listening TCP socket whose ownership passes here.
    Ok(unsafe { glommio::net::TcpListener::from_raw_fd(listener.into_raw_fd()) })
}

/// Shuts a connection's socket down both ways, from outside its tasks: its reader sees
/// the end of the stream, its writer fails, and the peer (when it runs again) sees a FIN.
/// The caller must know that `socket` is still the connection's (its halves are alive).
pub fn shutdown_socket(socket: std::os::fd::RawFd) {
    // SAFETY: shutdown takes a descriptor and flags; on a descriptor that is not a socket
    // it fails with ENOTSOCK and changes nothing.
    unsafe {
        libc::shutdown(socket, libc::SHUT_RDWR);
    }
}

/// Connects within `deadline`: a SYN to a host that vanished is otherwise retried by the
/// kernel for about two minutes.
pub async fn connect_within(
    address: std::net::SocketAddr,
    deadline: Duration,
) -> Result<TcpStream, ConnectionError> {
    futures_lite::future::or(
        async { TcpStream::connect(address).await.map_err(ConnectionError::from) },
        async {
            glommio::timer::sleep(deadline).await;
            Err(ConnectionError::TimedOut(deadline, "connecting"))
        },
    )
    .await
}

/// A connection's bytes: plain TCP, or TLS over it (`tls`).
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<futures_rustls::TlsStream<TcpStream>>),
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stream::Plain(_) => "Stream::Plain",
            Stream::Tls(_) => "Stream::Tls",
        })
    }
}

impl futures_lite::AsyncRead for Stream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
        buffer: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(stream) => std::pin::Pin::new(stream).poll_read(context, buffer),
            Stream::Tls(stream) => std::pin::Pin::new(&mut **stream).poll_read(context, buffer),
        }
    }
}

impl futures_lite::AsyncWrite for Stream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
        buffer: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(stream) => std::pin::Pin::new(stream).poll_write(context, buffer),
            Stream::Tls(stream) => std::pin::Pin::new(&mut **stream).poll_write(context, buffer),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => std::pin::Pin::new(stream).poll_flush(context),
            Stream::Tls(stream) => std::pin::Pin::new(&mut **stream).poll_flush(context),
        }
    }

    fn poll_close(
        self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => std::pin::Pin::new(stream).poll_close(context),
            Stream::Tls(stream) => std::pin::Pin::new(&mut **stream).poll_close(context),
        }
    }
}

thread_local! {
    /// The TLS of the node this executor runs (`use_tls`).
    static TLS: std::cell::RefCell<Option<Tls>> = const { std::cell::RefCell::new(None) };
}

/// Makes every connection this executor (thread) accepts or opens from now on speak TLS
/// with `tls`, or plain TCP (`None`). Each node's `serve` calls it first, with its
/// options': one node per executor, so no connection of it can be made without.
pub fn use_tls(tls: Option<Tls>) {
    TLS.with(|current| *current.borrow_mut() = tls);
}

fn current_tls() -> Option<Tls> {
    TLS.with(|current| current.borrow().clone())
}

/// Runs `work` until `until`; past it, `TimedOut(deadline, waiting_for)`.
async fn before<T>(
    until: std::time::Instant,
    deadline: Duration,
    waiting_for: &'static str,
    work: impl std::future::Future<Output = Result<T, ConnectionError>>,
) -> Result<T, ConnectionError> {
    let left = until.saturating_duration_since(std::time::Instant::now());
    futures_lite::future::or(work, async {
        glommio::timer::sleep(left).await;
        Err(ConnectionError::TimedOut(deadline, waiting_for))
    })
    .await
}

/// A failed TLS handshake, explained.
fn tls_failed(error: std::io::Error, side: &'static str) -> ConnectionError {
    match crate::tls::explain_io(&error) {
        Some(explained) => ConnectionError::Tls(format!("{side}: {explained}")),
        None if error.kind() == std::io::ErrorKind::UnexpectedEof => ConnectionError::Tls(format!(
            "{side}: the peer closed the connection (did it refuse this node's certificate, \
             one of another CA?)"
        )),
        None => ConnectionError::Io(error),
    }
}

impl Connection {
    /// Exchanges hellos on a stream this node accepted (with `tls`, after the TLS
    /// handshake): ours is sent at once; the peer's must arrive within `deadline` and match
    /// our version and cluster (and, with TLS, its certificate must carry the role of the
    /// node type it claims).
    /// TLS is this executor's (`use_tls`).
    pub async fn accept(
        stream: TcpStream,
        ours: Hello,
        deadline: Duration,
    ) -> Result<Connection, ConnectionError> {
        Connection::handshake(stream, ours, deadline, current_tls().as_ref(), None).await
    }

    /// `accept`'s counterpart for a stream this node opened to `address`, where it expects
    /// a node of one of the `expected` types.
    pub async fn connect(
        stream: TcpStream,
        address: std::net::SocketAddr,
        ours: Hello,
        deadline: Duration,
        expected: &[wire::NodeType],
    ) -> Result<Connection, ConnectionError> {
        let tls = current_tls();
        let connection =
            Connection::handshake(stream, ours, deadline, tls.as_ref(), Some(address)).await?;
        let found = connection.peer.node_type;
        if !expected.contains(&found) {
            return Err(ConnectionError::Unexpected { address, found });
        }
        Ok(connection)
    }

    /// `connected`: the address this node connected to; `None` for an accepted stream.
    pub async fn handshake(
        stream: TcpStream,
        ours: Hello,
        deadline: Duration,
        tls: Option<&Tls>,
        connected: Option<std::net::SocketAddr>,
    ) -> Result<Connection, ConnectionError> {
        stream.set_nodelay(true)?;
        set_keepalive(&stream)?;
        // One deadline for the whole handshake: a peer sending a byte at a time does not
        // restart it.
        let until = std::time::Instant::now() + deadline;
        let peer_address = stream.peer_addr().ok();
        let socket = std::os::fd::AsRawFd::as_raw_fd(&stream);
        let (mut stream, peer_roles) = match (tls, connected) {
            (None, _) => (Stream::Plain(stream), None),
            (Some(tls), None) => {
                // A peer without TLS starts with its hello: it is told, in a hello it can
                // read, that this node speaks only TLS.
                let mut first = [0u8; 1];
                let peeked = before(until, deadline, "waiting for the TLS handshake", async {
                    Ok(stream.peek(&mut first).await?)
                })
                .await?;
                if peeked == 1 && first[0] == wire::MAGIC[0] {
                    let mut stream = stream;
                    let _ = stream.write_all(&ours.encode_requiring_tls()).await;
                    let _ = stream.close().await;
                    return Err(ConnectionError::Tls(
                        "the peer connected without TLS, and this node speaks only TLS \
                         (is TLS configured on this side only?)"
                            .to_owned(),
                    ));
                }
                let acceptor = futures_rustls::TlsAcceptor::from(tls.server_config());
                let stream = before(until, deadline, "the TLS handshake", async {
                    acceptor.accept(stream).await.map_err(|e| tls_failed(e, "TLS handshake"))
                })
                .await?;
                let roles = crate::tls::peer_roles(stream.get_ref().1.peer_certificates());
                (Stream::Tls(Box::new(stream.into())), Some(roles))
            }
            (Some(tls), Some(address)) => {
                let connector = futures_rustls::TlsConnector::from(tls.client_config());
                let stream = before(until, deadline, "the TLS handshake", async {
                    connector
                        .connect(crate::tls::server_name(address), stream)
                        .await
                        .map_err(|e| tls_failed(e, "TLS handshake"))
                })
                .await?;
                let roles = crate::tls::peer_roles(stream.get_ref().1.peer_certificates());
                (Stream::Tls(Box::new(stream.into())), Some(roles))
            }
        };
        stream.write_all(&ours.encode()).await?;
        stream.flush().await?;
        let mut hello = [0u8; HELLO_SIZE];
        let mut received = 0;
        while received < HELLO_SIZE {
            let read = before(until, deadline, "waiting for the hello", async {
                Ok(stream.read(&mut hello[received..]).await?)
            })
            .await?;
            if read == 0 {
                return Err(HandshakeError::Truncated { received }.into());
            }
            received += read;
            // A stranger is told apart by its first four bytes, without waiting for more.
            let decoded = (received >= 4).then(|| Hello::decode(&hello[..received]));
            if let Some(Err(error @ HandshakeError::NotNeo { .. })) = decoded {
                return Err(error.into());
            }
        }
        let peer = Hello::decode(&hello)?;
        ours.check_peer(&peer)?;
        let refused = match peer_roles {
            Some((roles, subject)) if !roles.allows(peer.node_type) => {
                Some(ConnectionError::Role { node_type: peer.node_type, roles, subject })
            }
            _ => None,
        };
        let (reader, writer) = futures_lite::io::split(stream);
        let mut connection = Connection {
            peer,
            peer_address,
            socket,
            reader: FrameReader {
                reader,
                decoder: FrameDecoder::with_capacity(crate::limits::DECODER_INITIAL_BYTES),
                read_buffer: vec![0u8; crate::limits::READ_CHUNK_BYTES],
                held: 0,
                frame_due: None,
            },
            writer: FrameWriter { writer, frames: QueuedFrames::default(), next_msg_id: 0 },
        };
        if let Some(refusal) = refused {
            // The peer is told why, in answer to its first request (its identification).
            if connected.is_none()
                && let Ok(frame) = before(until, deadline, "waiting for identification", async {
                    connection.receive(None).await
                })
                .await
            {
                let error = wire::Error {
                    code: wire::ErrorCode::Denied,
                    message: wire::Text::from(refusal.to_string().as_str()),
                };
                let _ = connection.send(frame.msg_id, &error).await;
            }
            return Err(refusal);
        }
        Ok(connection)
    }

    /// The socket's descriptor: valid while either half of the connection lives.
    pub fn socket(&self) -> std::os::fd::RawFd {
        self.socket
    }

    /// The peer's hello.
    pub fn peer(&self) -> &Hello {
        &self.peer
    }

    pub fn peer_address(&self) -> Result<std::net::SocketAddr, ConnectionError> {
        self.peer_address.ok_or(ConnectionError::Closed { mid_frame: false })
    }

    /// Sends a message with the given id (an answer repeats its request's).
    pub async fn send<M: Body + ?Sized>(
        &mut self,
        msg_id: u32,
        message: &M,
    ) -> Result<(), ConnectionError> {
        self.writer.send(msg_id, message).await
    }

    /// Sends a request or notification with a new id, and returns the id.
    pub async fn request<M: Body + ?Sized>(&mut self, message: &M) -> Result<u32, ConnectionError> {
        self.writer.request(message).await
    }

    /// The next frame, waiting at most `deadline` if one is given.
    pub async fn receive(
        &mut self,
        deadline: Option<Duration>,
    ) -> Result<RawFrame, ConnectionError> {
        match deadline {
            Some(deadline) => self.reader.receive_within(deadline, "waiting for a frame").await,
            None => self.reader.receive().await,
        }
    }

    /// Closes the connection.
    pub async fn close(self) -> Result<(), ConnectionError> {
        self.writer.close().await
    }

    /// Splits the connection, so that one task reads frames while others send.
    pub fn split(self) -> (FrameReader, FrameWriter) {
        (self.reader, self.writer)
    }
}

/// A listener's accept loop, bounded by `limits::CONNECTIONS_MAX`: past it a connection is
/// answered with the reason (`refuse`, in a task of its own) or, with too many refusals in
/// progress, closed; the refusals are logged at most every 30 s (`repeats`).
#[derive(Debug)]
pub struct Acceptor {
    listener: glommio::net::TcpListener,
    /// Our hello, for the refusals.
    ours: Hello,
    connections: crate::limits::Connections,
    refusals: crate::repeats::Repeats,
}

impl Acceptor {
    pub fn new(listener: glommio::net::TcpListener, ours: Hello) -> Acceptor {
        Acceptor {
            listener,
            ours,
            connections: crate::limits::Connections::default(),
            refusals: crate::repeats::Repeats::default(),
        }
    }

    /// The next connection to serve, and its admission: it counts until dropped.
    pub async fn next(&mut self) -> (TcpStream, crate::limits::Admission) {
        loop {
            let stream = match self.listener.accept().await {
                Ok(stream) => stream,
                Err(error) => {
                    tracing::error!("accept: {error}");
                    glommio::timer::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let refused = match self.connections.admit() {
                crate::limits::Admit::Serve(admission) => return (stream, admission),
                refused => refused,
            };
            let reason = crate::limits::too_many_connections();
            let line = format!("refusing connections: {reason}");
            if let Some(line) = self.refusals.note(&line, std::time::Instant::now()) {
                tracing::warn!("{line}");
            }
            if let crate::limits::Admit::Refuse(admission) = refused {
                let ours = self.ours;
                glommio::spawn_local(async move {
                    let _counted = admission;
                    let _ = refuse(stream, ours, &reason).await;
                })
                .detach();
            }
        }
    }
}

/// Answers a connection this node will not serve (past `limits::CONNECTIONS_MAX`): the
/// handshake, then `Error(NOT_READY, reason)` in answer to its identification, then the end.
pub async fn refuse(stream: TcpStream, ours: Hello, reason: &str) -> Result<(), ConnectionError> {
    let deadline = crate::limits::IDENTIFICATION_DEADLINE;
    let mut connection = Connection::accept(stream, ours, deadline).await?;
    let frame = connection.receive(Some(deadline)).await?;
    let error = wire::Error { code: wire::ErrorCode::NotReady, message: wire::Text::from(reason) };
    connection.send(frame.msg_id, &error).await?;
    connection.close().await
}

/// The reading half of a split connection.
#[derive(Debug)]
pub struct FrameReader {
    reader: futures_lite::io::ReadHalf<Stream>,
    decoder: FrameDecoder,
    read_buffer: Vec<u8>,
    /// The decoder's bytes counted in this executor's incomplete frames (`limits`).
    held: usize,
    /// The frame being received: when it must be complete, and whether its size was known
    /// when that was set (`limits::frame_deadline`).
    frame_due: Option<(std::time::Instant, bool)>,
}

impl Drop for FrameReader {
    fn drop(&mut self) {
        let _ = crate::limits::hold_incomplete(self.held, 0);
    }
}

impl FrameReader {
    /// Counts the decoder's bytes against the executor's bound on incomplete frames; gives
    /// back a large buffer once it is empty.
    fn account(&mut self) -> Result<(), ConnectionError> {
        let held = self.decoder.buffered();
        crate::limits::hold_incomplete(self.held, held).map_err(ConnectionError::Limit)?;
        self.held = held;
        let buffer = self.decoder.buffer_mut();
        if buffer.is_empty() && buffer.capacity() > crate::limits::DECODER_KEPT_BYTES_MAX {
            *buffer = BytesMut::with_capacity(crate::limits::DECODER_INITIAL_BYTES);
        }
        Ok(())
    }

    /// The next frame.
    pub async fn receive(&mut self) -> Result<RawFrame, ConnectionError> {
        loop {
            let next = self.decoder.next_frame();
            self.account()?;
            if let Some(frame) = next? {
                // The next frame gets its own deadline.
                self.frame_due = None;
                return Ok(frame);
            }
            // A frame begun must be complete by its deadline, whatever trickles in: a peer
            // that stops (or crawls) in its middle would hold what it sent for as long as
            // it likes.
            let reading = if self.decoder.is_mid_frame() {
                let size = self.decoder.pending_frame_size();
                let due = match self.frame_due {
                    Some((due, sized)) if sized || size.is_none() => due,
                    _ => {
                        let due = std::time::Instant::now() + crate::limits::frame_deadline(size);
                        self.frame_due = Some((due, size.is_some()));
                        due
                    }
                };
                let left = due.saturating_duration_since(std::time::Instant::now());
                let (reader, buffer) = (&mut self.reader, &mut self.read_buffer);
                futures_lite::future::or(async { Some(reader.read(buffer).await) }, async {
                    glommio::timer::sleep(left).await;
                    None
                })
                .await
                .ok_or(ConnectionError::FrameTooSlow(crate::limits::frame_deadline(size)))?
            } else {
                self.frame_due = None;
                self.reader.read(&mut self.read_buffer).await
            };
            let read = match reading {
                Ok(read) => read,
                // A TLS peer that closed its socket without a close_notify: the end of the
                // stream (a frame cut short is still told apart below).
                Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => 0,
                Err(error) => return Err(error.into()),
            };
            if read == 0 {
                return Err(ConnectionError::Closed { mid_frame: self.decoder.is_mid_frame() });
            }
            self.decoder.extend_from_slice(&self.read_buffer[..read]);
            self.account()?;
        }
    }

    /// The next frame, or `TimedOut` after `deadline`.
    pub async fn receive_within(
        &mut self,
        deadline: Duration,
        waiting_for: &'static str,
    ) -> Result<RawFrame, ConnectionError> {
        futures_lite::future::or(self.receive(), async {
            glommio::timer::sleep(deadline).await;
            Err(ConnectionError::TimedOut(deadline, waiting_for))
        })
        .await
    }
}

/// The writing half of a split connection.
#[derive(Debug)]
pub struct FrameWriter {
    writer: futures_lite::io::WriteHalf<Stream>,
    frames: QueuedFrames,
    next_msg_id: u32,
}

impl FrameWriter {
    /// Sends a message with the given id (an answer repeats its request's).
    pub async fn send<M: Body + ?Sized>(
        &mut self,
        msg_id: u32,
        message: &M,
    ) -> Result<(), ConnectionError> {
        self.queue(msg_id, message)?;
        self.write_queued().await
    }

    /// Encodes a message into the outgoing buffer, to be sent by `write_queued` with the
    /// others queued meanwhile (one write for many frames).
    pub fn queue<M: Body + ?Sized>(
        &mut self,
        msg_id: u32,
        message: &M,
    ) -> Result<(), ConnectionError> {
        Ok(self.frames.queue(msg_id, message)?)
    }

    /// Sends every queued frame.
    pub async fn write_queued(&mut self) -> Result<(), ConnectionError> {
        for segment in self.frames.segments() {
            self.writer.write_all(segment).await?;
        }
        self.frames.clear();
        self.writer.flush().await?;
        Ok(())
    }

    /// Sends a request or notification with a new id, and returns the id.
    pub async fn request<M: Body + ?Sized>(&mut self, message: &M) -> Result<u32, ConnectionError> {
        let msg_id = self.queue_request(message)?;
        self.write_queued().await?;
        Ok(msg_id)
    }

    /// Queues a request or notification with a new id, and returns the id.
    pub fn queue_request<M: Body + ?Sized>(&mut self, message: &M) -> Result<u32, ConnectionError> {
        let msg_id = self.next_msg_id;
        self.next_msg_id = self.next_msg_id.wrapping_add(1);
        self.queue(msg_id, message)?;
        Ok(msg_id)
    }

    pub async fn close(mut self) -> Result<(), ConnectionError> {
        self.writer.close().await?;
        Ok(())
    }
}

/// An outgoing message: a new request or notification, the answer to `msg_id`, or a
/// request under an id the sender chose (to match its answer itself).
#[derive(Debug)]
pub enum Outgoing {
    Notify(wire::Message),
    Answer(u32, wire::Message),
    Request(u32, wire::Message),
}

/// A connection's outbox: tasks queue messages, one writer task sends them in order.
pub type Outbox = glommio::channels::local_channel::LocalSender<Outgoing>;

/// Starts the writer task of a split connection: it sends what the outbox receives until
/// every sender is gone or a send fails, then closes the connection. Dropping the returned
/// task cancels it.
pub fn spawn_writer(mut writer: FrameWriter, capacity: usize) -> (Outbox, glommio::Task<()>) {
    let (sender, receiver) = glommio::channels::local_channel::new_bounded(capacity);
    let task = glommio::spawn_local(async move {
        // Everything queued by the time the writer runs goes out in one write.
        'writing: while let Some(first) = receiver.recv().await {
            let mut next = Some(first);
            while let Some(outgoing) = next {
                let queued = match outgoing {
                    Outgoing::Notify(message) => writer.queue_request(&message).map(drop),
                    Outgoing::Answer(msg_id, message) | Outgoing::Request(msg_id, message) => {
                        writer.queue(msg_id, &message)
                    }
                };
                if queued.is_err() {
                    break 'writing;
                }
                next = if writer.frames.len() < WRITE_BATCH_MAX {
                    // Whatever is there now, without waiting.
                    futures_lite::future::poll_once(receiver.recv()).await.flatten()
                } else {
                    None
                };
            }
            if writer.write_queued().await.is_err() {
                break;
            }
        }
        let _ = writer.close().await;
    });
    (sender, task)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_lite::AsyncWriteExt;
    use glommio::LocalExecutorBuilder;
    use glommio::net::{TcpListener, TcpStream};
    use wire::{Message, NodeType, Ping, Pong};

    use super::*;

    const DEADLINE: Duration = Duration::from_millis(500);

    /// Runs a server that accepts `peers` connections one after another and reports how
    /// each ended, while `client` drives the other side.
    fn run<C, F>(peers: usize, client: C) -> Vec<Result<String, String>>
    where
        C: FnOnce(std::net::SocketAddr) -> F + Send + 'static,
        F: std::future::Future<Output = ()> + 'static,
    {
        run_with(peers, None, client)
    }

    /// `run` with a server that speaks only TLS with `tls`.
    fn run_with<C, F>(peers: usize, tls: Option<Tls>, client: C) -> Vec<Result<String, String>>
    where
        C: FnOnce(std::net::SocketAddr) -> F + Send + 'static,
        F: std::future::Future<Output = ()> + 'static,
    {
        LocalExecutorBuilder::default()
            .io_memory(1 << 20)
            .spawn(move || async move {
                let listener = TcpListener::bind("127.0.0.1:0").unwrap();
                let address = listener.local_addr().unwrap();
                let server = glommio::spawn_local(async move {
                    let mut outcomes = Vec::new();
                    for _ in 0..peers {
                        let stream = listener.accept().await.unwrap();
                        let ours = Hello::new(NodeType::Master, "test");
                        let accepted =
                            Connection::handshake(stream, ours, DEADLINE, tls.as_ref(), None).await;
                        let outcome = match accepted {
                            Ok(mut connection) => match connection.receive(Some(DEADLINE)).await {
                                Ok(frame) => {
                                    let message = frame.message().map_err(|e| e.to_string());
                                    if let Ok(Message::Ping(_)) = message {
                                        connection.send(frame.msg_id, &Pong {}).await.unwrap();
                                    }
                                    Ok(format!("{:?}", frame.kind))
                                }
                                Err(error) => Err(error.to_string()),
                            },
                            Err(error) => Err(error.to_string()),
                        };
                        outcomes.push(outcome);
                    }
                    outcomes
                });
                client(address).await;
                server.await
            })
            .unwrap()
            .join()
            .unwrap()
    }

    async fn raw(address: std::net::SocketAddr, bytes: &[u8]) -> TcpStream {
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream.write_all(bytes).await.unwrap();
        stream
    }

    #[test]
    fn connections_probe_a_silent_peer() {
        LocalExecutorBuilder::default()
            .spawn(|| async {
                let listener = TcpListener::bind("127.0.0.1:0").unwrap();
                let address = listener.local_addr().unwrap();
                let stream = TcpStream::connect(address).await.unwrap();
                set_keepalive(&stream).unwrap();
                let read = |level, name| {
                    use std::os::fd::AsRawFd;
                    let mut value: libc::c_int = 0;
                    let mut size = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
                    // SAFETY: the socket is open; value and size are valid for writes.
                    let result = unsafe {
                        libc::getsockopt(
                            stream.as_raw_fd(),
                            level,
                            name,
                            std::ptr::from_mut(&mut value).cast(),
                            &mut size,
                        )
                    };
                    assert_eq!(result, 0);
                    value
                };
                assert_eq!(read(libc::SOL_SOCKET, libc::SO_KEEPALIVE), 1);
                assert_eq!(read(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE), KEEPALIVE_IDLE_SECONDS);
                assert_eq!(
                    read(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL),
                    KEEPALIVE_INTERVAL_SECONDS
                );
                assert_eq!(read(libc::IPPROTO_TCP, libc::TCP_KEEPCNT), KEEPALIVE_PROBES);
                assert_eq!(
                    read(libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT),
                    UNACKNOWLEDGED_MILLISECONDS_MAX
                );
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn handshake_and_ping() {
        let outcomes = run(1, |address| async move {
            let stream = TcpStream::connect(address).await.unwrap();
            let ours = Hello::new(NodeType::Client, "test");
            let mut connection =
                Connection::connect(stream, address, ours, DEADLINE, &[NodeType::Master])
                    .await
                    .unwrap();
            assert_eq!(connection.peer().node_type, NodeType::Master);
            let id = connection.request(&Ping {}).await.unwrap();
            let answer = connection.receive(Some(DEADLINE)).await.unwrap();
            assert_eq!(answer.msg_id, id);
            assert!(matches!(answer.message().unwrap(), Message::Pong(_)));
        });
        assert_eq!(outcomes, vec![Ok("Ping".to_owned())]);
    }

    /// A hello sent a byte at a time, each byte well within the deadline, the whole past it:
    /// the deadline is the whole hello's.
    #[test]
    fn a_hello_trickled_byte_by_byte_times_out() {
        let outcomes = run(1, |address| async move {
            let mut stream = TcpStream::connect(address).await.unwrap();
            for byte in Hello::new(NodeType::Client, "test").encode() {
                if stream.write_all(&[byte]).await.is_err() {
                    return;
                }
                glommio::timer::sleep(DEADLINE / 5).await;
            }
        });
        let error = outcomes[0].clone().unwrap_err();
        assert!(error.contains("waiting for the hello"), "{error}");
    }

    #[test]
    fn bad_peers_get_clear_errors_and_the_server_stays_up() {
        let outcomes = run(6, |address| async move {
            // Another cluster.
            let stream = TcpStream::connect(address).await.unwrap();
            let error = Connection::connect(
                stream,
                address,
                Hello::new(NodeType::Client, "other"),
                DEADLINE,
                &[NodeType::Master],
            )
            .await
            .unwrap_err();
            assert!(error.to_string().contains("another cluster"), "{error}");
            // Another protocol version.
            let mut hello = Hello::new(NodeType::Client, "test");
            hello.version = 99;
            let _stream = raw(address, &hello.encode()).await;
            // A stranger speaking HTTP.
            let _http = raw(address, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
            // A frame cut short, then the connection closed.
            let mut cut = raw(address, &Hello::new(NodeType::Client, "test").encode()).await;
            let mut frame = BytesMut::new();
            encode_frame(&mut frame, 1, &Ping {}).unwrap();
            cut.write_all(&frame[..10]).await.unwrap();
            cut.close().await.unwrap();
            // A peer that connects and never speaks.
            let silent = TcpStream::connect(address).await.unwrap();
            glommio::timer::sleep(DEADLINE + Duration::from_millis(200)).await;
            drop(silent);
            // And a good one: the server still serves.
            let stream = TcpStream::connect(address).await.unwrap();
            let mut good = Connection::connect(
                stream,
                address,
                Hello::new(NodeType::Admin, "test"),
                DEADLINE,
                &[NodeType::Master],
            )
            .await
            .unwrap();
            good.request(&Ping {}).await.unwrap();
            good.receive(Some(DEADLINE)).await.unwrap();
        });
        let errors: Vec<String> = outcomes.iter().take(5).map(|o| o.clone().unwrap_err()).collect();
        assert!(errors[0].contains("another cluster"), "{errors:?}");
        assert!(errors[1].contains("version 1") && errors[1].contains("version 99"), "{errors:?}");
        assert!(errors[2].contains("HTTP"), "{errors:?}");
        assert!(errors[3].contains("middle of a frame"), "{errors:?}");
        assert!(errors[4].contains("sent nothing"), "{errors:?}");
        assert_eq!(outcomes[5], Ok("Ping".to_owned()));
    }

    /// A client of `tls` (or plain) that identifies as `node_type` and pings.
    async fn tls_client(
        address: std::net::SocketAddr,
        tls: Option<Tls>,
        node_type: NodeType,
    ) -> Result<(), String> {
        let stream = TcpStream::connect(address).await.unwrap();
        let ours = Hello::new(node_type, "test");
        let mut connection =
            Connection::handshake(stream, ours, DEADLINE, tls.as_ref(), Some(address))
                .await
                .map_err(|e| e.to_string())?;
        let id = connection.request(&Ping {}).await.map_err(|e| e.to_string())?;
        let answer = connection.receive(Some(DEADLINE)).await.map_err(|e| e.to_string())?;
        assert_eq!(answer.msg_id, id);
        match answer.message().unwrap() {
            Message::Pong(_) => Ok(()),
            Message::Error(error) => Err(error.message.to_string()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tls_is_mutual_checks_roles_and_never_mixes_with_plain_tcp() {
        use crate::tls::testing::Authority;
        let directory = tempfile::tempdir().unwrap();
        let ca = Authority::new(directory.path(), "ca");
        let other_ca = Authority::new(directory.path(), "other-ca");
        let load = |files| Tls::load(&files).unwrap();
        let master = load(ca.issue("master", &[NodeType::Master]));
        let client = load(ca.issue("client", &[NodeType::Client]));
        let foreign = load(other_ca.issue("foreign", &[NodeType::Client]));
        let outcomes = {
            let client = client.clone();
            run_with(5, Some(master), move |address| async move {
                // A client with the client role: served.
                tls_client(address, Some(client.clone()), NodeType::Client).await.unwrap();
                // The same certificate claiming to be a storage.
                let error = tls_client(address, Some(client), NodeType::Storage).await.unwrap_err();
                assert!(error.contains("needs the OU neo-storage"), "{error}");
                // A certificate of another CA.
                let error = tls_client(address, Some(foreign), NodeType::Client).await.unwrap_err();
                assert!(error.contains("not signed by the cluster's CA"), "{error}");
                // Plain TCP to a TLS node: told so in a hello it can read.
                let error = tls_client(address, None, NodeType::Client).await.unwrap_err();
                assert!(error.contains("speaks only TLS"), "{error}");
                // No certificate at all, but TLS: a plain peer's ClientHello is refused.
                let mut hello_only = TcpStream::connect(address).await.unwrap();
                let _ = hello_only.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5]).await;
                let mut byte = [0u8; 1];
                let _ = hello_only.read(&mut byte).await;
            })
        };
        assert_eq!(outcomes[0], Ok("Ping".to_owned()));
        let errors: Vec<String> = outcomes[1..].iter().map(|o| o.clone().unwrap_err()).collect();
        assert!(
            errors[0].contains("hello says STORAGE")
                && errors[0].contains("carries neo-client")
                && errors[0].contains("needs the OU neo-storage"),
            "{errors:?}"
        );
        assert!(errors[1].contains("another CA"), "{errors:?}");
        assert!(errors[2].contains("connected without TLS"), "{errors:?}");
        assert!(errors[3].contains("TLS handshake"), "{errors:?}");

        // A TLS client to a plain node: both sides say what is wrong.
        let outcomes = run(1, move |address| async move {
            let error = tls_client(address, Some(client), NodeType::Client).await.unwrap_err();
            assert!(error.contains("does not speak TLS"), "{error}");
        });
        let error = outcomes[0].clone().unwrap_err();
        assert!(error.contains("TLS handshake"), "{error}");
    }
}
