//! Every bound a node puts on what its peers can make it hold: connections, bytes of frames
//! still arriving, time to say hello or to finish a frame, messages queued for a peer.
//! Past a bound a peer is refused or disconnected with an error that names the bound; the
//! node itself, and its other peers, go on. The protocol's own bounds (frame and field
//! sizes) are `wire::limits`.
//!
//! What one connection costs a node while it is idle: its receive buffer
//! (`READ_CHUNK_BYTES`), its frame decoder's (`DECODER_INITIAL_BYTES`, growing with the
//! frames that come and shrinking back), and its outbox, empty. So `CONNECTIONS_MAX` idle
//! connections cost a few tens of MiB; what they can make it hold beyond that is bounded
//! by `INCOMPLETE_FRAME_BYTES_MAX` (frames on the way in) and the outboxes' lengths
//! (messages on the way out: a peer that does not read is dropped when its outbox fills).

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

/// Connections a listener (a master, a storage core, an admin node) serves at once; one
/// more is answered with a refusal that names this bound, then closed.
pub const CONNECTIONS_MAX: usize = 4096;

/// Connections one identified node (a client, a storage) may hold to one storage core: a
/// client opens one per thread using that storage at once, so this is far above what one
/// needs, and far below `CONNECTIONS_MAX`: one peer cannot take every slot.
pub const CONNECTIONS_PER_PEER_MAX: usize = 256;

/// Refusals of connections past `CONNECTIONS_MAX` in progress at once: beyond, a new
/// connection is closed without a word.
pub const REFUSALS_MAX: usize = 64;

/// Time a new connection has for its TLS handshake, hello and identification: one
/// deadline, which bytes trickling in do not restart.
pub const IDENTIFICATION_DEADLINE: Duration = Duration::from_secs(5);

/// Time a peer has to send a whole frame once it began it, beyond
/// `FRAME_BYTES_PER_SECOND_MIN`'s share: a peer that announces a large frame and trickles
/// it (a byte now and then does not restart the clock) is disconnected, and its bytes
/// released. A 64 MiB object gets 74 s.
pub const FRAME_DEADLINE_BASE: Duration = Duration::from_secs(10);

/// The slowest a frame may come in (`FRAME_DEADLINE_BASE`).
pub const FRAME_BYTES_PER_SECOND_MIN: u64 = 1 << 20;

/// The deadline of a frame of `size` bytes (none known yet: the base).
pub fn frame_deadline(size: Option<usize>) -> Duration {
    let bytes = size.unwrap_or(0) as u64;
    FRAME_DEADLINE_BASE + Duration::from_millis(bytes * 1000 / FRAME_BYTES_PER_SECOND_MIN)
}

/// Bytes of frames begun and not yet complete that one executor (a master, a storage
/// core) holds for all its connections together. A connection whose frame would take the
/// total past it is disconnected: its peer (a client storing a large object) sees the
/// connection fail and retries, and the node's memory stays bounded whatever peers send.
/// Two of the largest frames the protocol allows fit.
pub const INCOMPLETE_FRAME_BYTES_MAX: usize = 2 * wire::limits::FRAME_SIZE_MAX;

/// Bytes read from a socket at a time.
pub const READ_CHUNK_BYTES: usize = 16 << 10;

/// A frame decoder's first buffer; it grows with the frames that arrive.
pub const DECODER_INITIAL_BYTES: usize = 4 << 10;

/// A decoder's buffer larger than this, once empty, is given back rather than kept for the
/// next frame (a connection that received one large object does not hold its size).
pub const DECODER_KEPT_BYTES_MAX: usize = 256 << 10;

/// Live connections of one listener: an `Admission` for each, while under
/// `CONNECTIONS_MAX`.
#[derive(Debug, Default, Clone)]
pub struct Connections {
    live: Rc<Cell<usize>>,
    refusing: Rc<Cell<usize>>,
}

/// What a listener decides for a new connection.
#[derive(Debug)]
pub enum Admit {
    /// Served; the connection counts until the guard is dropped.
    Serve(Admission),
    /// Past the bound: told so (the guard counts the refusal in progress).
    Refuse(Admission),
    /// Past the bound with too many refusals in progress: closed at once.
    Drop,
}

impl Connections {
    pub fn admit(&self) -> Admit {
        if self.live.get() < CONNECTIONS_MAX {
            self.live.set(self.live.get() + 1);
            return Admit::Serve(Admission { count: Rc::clone(&self.live) });
        }
        if self.refusing.get() < REFUSALS_MAX {
            self.refusing.set(self.refusing.get() + 1);
            return Admit::Refuse(Admission { count: Rc::clone(&self.refusing) });
        }
        Admit::Drop
    }

    /// Connections served now.
    pub fn live(&self) -> usize {
        self.live.get()
    }
}

/// One connection counted by `Connections`, until dropped.
#[derive(Debug)]
pub struct Admission {
    count: Rc<Cell<usize>>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.count.set(self.count.get() - 1);
        release_memory_soon();
    }
}

thread_local! {
    /// Connections of each identified peer to this executor's node.
    static PER_PEER: std::cell::RefCell<std::collections::HashMap<wire::NodeId, usize>> =
        std::cell::RefCell::default();
}

/// One connection of an identified peer, counted until dropped (`admit_peer`).
#[derive(Debug)]
pub struct PeerAdmission {
    peer: wire::NodeId,
}

impl Drop for PeerAdmission {
    fn drop(&mut self) {
        PER_PEER.with(|counts| {
            let mut counts = counts.borrow_mut();
            if let Some(count) = counts.get_mut(&self.peer) {
                *count -= 1;
                if *count == 0 {
                    counts.remove(&self.peer);
                }
            }
        });
    }
}

/// Counts a connection of `peer`, or says why not: it holds `CONNECTIONS_PER_PEER_MAX`.
pub fn admit_peer(peer: wire::NodeId) -> Result<PeerAdmission, String> {
    PER_PEER.with(|counts| {
        let mut counts = counts.borrow_mut();
        let count = counts.entry(peer).or_default();
        if *count >= CONNECTIONS_PER_PEER_MAX {
            return Err(format!(
                "{peer} holds {CONNECTIONS_PER_PEER_MAX} connections to this node, the limit \
                 for one node"
            ));
        }
        *count += 1;
        Ok(PeerAdmission { peer })
    })
}

/// The refusal a connection past `CONNECTIONS_MAX` hears.
pub fn too_many_connections() -> String {
    format!("this node serves {CONNECTIONS_MAX} connections, its limit: try again later")
}

thread_local! {
    /// Bytes of incomplete frames this executor holds (`INCOMPLETE_FRAME_BYTES_MAX`).
    static INCOMPLETE_FRAME_BYTES: Cell<usize> = const { Cell::new(0) };
    /// A memory release is scheduled (`release_memory_soon`).
    static RELEASE_DUE: Cell<bool> = const { Cell::new(false) };
}

/// Bytes of incomplete frames this executor holds now.
pub fn incomplete_frame_bytes() -> usize {
    INCOMPLETE_FRAME_BYTES.with(Cell::get)
}

/// Counts a connection's change of incomplete-frame bytes from `before` to `after`; an
/// error, and nothing counted, when `after` would take the executor past the bound.
pub fn hold_incomplete(before: usize, after: usize) -> Result<(), String> {
    INCOMPLETE_FRAME_BYTES.with(|held| {
        let others = held.get() - before;
        if after > before && others + after > INCOMPLETE_FRAME_BYTES_MAX {
            return Err(format!(
                "this node holds {} MiB of frames still arriving from its peers, its limit \
                 is {} MiB: this connection's frame ({} MiB so far) is refused",
                (others + before) >> 20,
                INCOMPLETE_FRAME_BYTES_MAX >> 20,
                after >> 20
            ));
        }
        held.set(others + after);
        Ok(())
    })
}

/// Gives memory freed by closed connections back to the system, once per second at most:
/// the allocator keeps freed buffers for reuse, so after a flood of peers the process
/// would stay at its peak. Runs on a glommio executor (the listeners').
pub fn release_memory_soon() {
    if RELEASE_DUE.with(|due| due.replace(true)) {
        return;
    }
    glommio::spawn_local(async {
        glommio::timer::sleep(Duration::from_secs(1)).await;
        RELEASE_DUE.with(|due| due.set(false));
        #[cfg(target_env = "gnu")]
        // SAFETY: malloc_trim only walks the allocator's own free lists.
        unsafe {
            libc::malloc_trim(0);
        }
    })
    .detach();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_serves_up_to_its_bound_then_refuses_then_drops() {
        // On an executor, as the listeners: a connection's end schedules a memory release.
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async { serves_up_to_its_bound() })
            .unwrap()
            .join()
            .unwrap();
    }

    fn serves_up_to_its_bound() {
        let connections = Connections::default();
        let served: Vec<Admit> = (0..CONNECTIONS_MAX).map(|_| connections.admit()).collect();
        assert!(served.iter().all(|a| matches!(a, Admit::Serve(_))));
        let refused: Vec<Admit> = (0..REFUSALS_MAX).map(|_| connections.admit()).collect();
        assert!(refused.iter().all(|a| matches!(a, Admit::Refuse(_))));
        assert!(matches!(connections.admit(), Admit::Drop));
        drop(refused);
        assert!(matches!(connections.admit(), Admit::Refuse(_)));
        assert_eq!(connections.live(), CONNECTIONS_MAX);
        drop(served);
        assert_eq!(connections.live(), 0);
        assert!(matches!(connections.admit(), Admit::Serve(_)));
    }

    #[test]
    fn one_peer_holds_a_bounded_share_of_a_nodes_connections() {
        let client = wire::NodeId::new(wire::NodeType::Client, 1);
        let other = wire::NodeId::new(wire::NodeType::Client, 2);
        let held: Vec<PeerAdmission> =
            (0..CONNECTIONS_PER_PEER_MAX).map(|_| admit_peer(client).unwrap()).collect();
        let refused = admit_peer(client).unwrap_err();
        assert!(refused.contains("C1 holds 256 connections"), "{refused}");
        let _other = admit_peer(other).unwrap();
        drop(held);
        let _again = admit_peer(client).unwrap();
    }

    #[test]
    fn incomplete_frames_are_bounded_per_executor() {
        let big = wire::limits::FRAME_SIZE_MAX;
        for connection in 0..2 {
            hold_incomplete(0, big).unwrap_or_else(|e| panic!("{connection}: {e}"));
        }
        let error = hold_incomplete(0, 1).unwrap_err();
        assert!(error.contains("its limit"), "{error}");
        // A connection already counted may shrink, and grow back to what it held.
        hold_incomplete(big, 10).unwrap();
        hold_incomplete(10, big).unwrap();
        for _ in 0..2 {
            hold_incomplete(big, 0).unwrap();
        }
        assert_eq!(incomplete_frame_bytes(), 0);
    }
}
