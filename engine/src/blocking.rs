//! The client's blocking byte stream: a TCP socket, plain or with TLS (rustls) over it.
//!
//! The client reads a connection on one thread while others write to it (the master
//! connection's reader thread; the application's threads send requests), so a TLS
//! session is shared behind a mutex that no thread holds while it waits on the socket:
//! a reader that has no plaintext left reads the socket's bytes unlocked, then locks to
//! decrypt them; a writer locks, encrypts and writes. Every read drains what the session
//! can give, so that a socket with nothing to read means a session with nothing buffered
//! (`buffered` says otherwise in between, for `poll`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::tls::{Roles, Tls};

/// A TLS session with the bytes read from the socket and not yet given to it.
struct Session {
    connection: rustls::ClientConnection,
    raw: Vec<u8>,
    /// `raw[fed..]` is still to be given to the session.
    fed: usize,
}

/// A connected socket, plain or TLS.
pub(crate) struct SyncStream {
    socket: TcpStream,
    tls: Option<Arc<Mutex<Session>>>,
}

impl std::fmt::Debug for SyncStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncStream").field("tls", &self.tls.is_some()).finish()
    }
}

fn invalid(error: rustls::Error) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, error)
}

impl SyncStream {
    pub(crate) fn plain(socket: TcpStream) -> SyncStream {
        SyncStream { socket, tls: None }
    }

    /// Runs the TLS handshake with the server at `address` on `socket` (whose timeouts
    /// bound it); the stream and the roles and subject of the server's certificate.
    pub(crate) fn handshake(
        socket: TcpStream,
        address: std::net::SocketAddr,
        tls: &Tls,
    ) -> Result<(SyncStream, (Roles, String)), String> {
        let mut connection =
            rustls::ClientConnection::new(tls.client_config(), crate::tls::server_name(address))
                .map_err(|e| crate::tls::explain_error(&e))?;
        let mut io = &socket;
        while connection.is_handshaking() {
            if let Err(error) = connection.complete_io(&mut io) {
                return Err(crate::tls::explain_io(&error).unwrap_or_else(|| error.to_string()));
            }
        }
        let roles = crate::tls::peer_roles(connection.peer_certificates());
        let session = Session { connection, raw: Vec::new(), fed: 0 };
        Ok((SyncStream { socket, tls: Some(Arc::new(Mutex::new(session))) }, roles))
    }

    fn lock(tls: &Mutex<Session>) -> MutexGuard<'_, Session> {
        tls.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reads into `buffer` (0: the peer closed), waiting for bytes as
    /// `client::recv_waiting` does with `spin`.
    pub(crate) fn read(&self, buffer: &mut [u8], spin: Duration) -> std::io::Result<usize> {
        let Some(tls) = &self.tls else {
            return crate::client::recv_waiting(&self.socket, buffer, spin);
        };
        loop {
            if let Some(read) =
                SyncStream::plaintext(&mut SyncStream::lock(tls), &self.socket, buffer)?
            {
                return Ok(read);
            }
            // Nothing buffered: wait for the socket without the lock, so writers go on.
            let read = crate::client::recv_waiting(&self.socket, buffer, spin)?;
            if read == 0 {
                return Ok(0);
            }
            let mut session = SyncStream::lock(tls);
            session.raw.clear();
            session.raw.extend_from_slice(&buffer[..read]);
            session.fed = 0;
        }
    }

    /// Plaintext the session has or can make from the bytes it was given, into `buffer`:
    /// `None` when it needs more from the socket.
    fn plaintext(
        session: &mut Session,
        socket: &TcpStream,
        buffer: &mut [u8],
    ) -> std::io::Result<Option<usize>> {
        loop {
            match session.connection.reader().read(buffer) {
                Ok(read) => return Ok(Some(read)),
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(error) => return Err(error),
            }
            if session.fed == session.raw.len() {
                return Ok(None);
            }
            let Session { connection, raw, fed } = session;
            let mut pending = &raw[*fed..];
            *fed += connection.read_tls(&mut pending)?;
            connection.process_new_packets().map_err(invalid)?;
            // What the session has to say back (an alert, a key update's answer).
            SyncStream::write_out(connection, socket)?;
        }
    }

    fn write_out(
        connection: &mut rustls::ClientConnection,
        socket: &TcpStream,
    ) -> std::io::Result<()> {
        let mut io = socket;
        while connection.wants_write() {
            connection.write_tls(&mut io)?;
        }
        Ok(())
    }

    /// Whether bytes already read from the socket wait in the session: `poll` on the
    /// socket would not see them.
    pub(crate) fn buffered(&self) -> bool {
        let Some(tls) = &self.tls else { return false };
        let mut session = SyncStream::lock(tls);
        session.fed < session.raw.len()
            || session
                .connection
                .process_new_packets()
                .is_ok_and(|s| s.plaintext_bytes_to_read() > 0)
    }

    pub(crate) fn write_all(&self, data: &[u8]) -> std::io::Result<()> {
        let Some(tls) = &self.tls else { return (&self.socket).write_all(data) };
        let mut session = SyncStream::lock(tls);
        let mut written = 0;
        while written < data.len() {
            // The session takes at most its buffer's worth at a time.
            written += session.connection.writer().write(&data[written..])?;
            SyncStream::write_out(&mut session.connection, &self.socket)?;
        }
        Ok(())
    }

    /// A second handle on the same connection, for another thread.
    pub(crate) fn try_clone(&self) -> std::io::Result<SyncStream> {
        Ok(SyncStream { socket: self.socket.try_clone()?, tls: self.tls.clone() })
    }

    pub(crate) fn set_read_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        self.socket.set_read_timeout(timeout)
    }

    pub(crate) fn set_write_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        self.socket.set_write_timeout(timeout)
    }

    pub(crate) fn shutdown(&self) {
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}
