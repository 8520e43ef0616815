//! Which storages stopped answering. A storage whose process hangs (stopped, stuck on a
//! dead disk) keeps its TCP connection: the kernel still acknowledges, so neither a FIN nor
//! keepalive ever tells. The master therefore times its own requests: the locks it asks
//! and a ping it sends to every storage that has nothing outstanding. A storage with a
//! request unanswered for longer than the timeout is given up, as if its connection had
//! been lost: its cells are outdated and commits stop waiting for it.
//!
//! Rules:
//! - Only requests count, never silence: a storage owes the master nothing until asked.
//! - The oldest unanswered request decides: an answer to a newer one does not excuse an
//!   older one (a storage answering pings while its locks never complete is stuck on its
//!   disk).
//! - A peer is given up once (the driver forgets it when its connection ends).
//!
//! Plain state: the time is handed in (a `Duration` since any fixed origin).

use std::collections::BTreeMap;
use std::time::Duration;

use wire::NodeId;

/// Default of `Liveness::timeout` (`neo master --storage-timeout`): long enough for a
/// slow fdatasync on a loaded disk, short enough that commits stall only briefly behind a
/// hung storage.
pub const STORAGE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

/// The requests each peer has not answered yet, with when they were sent.
#[derive(Clone, Debug)]
pub struct Liveness {
    timeout: Duration,
    outstanding: BTreeMap<NodeId, BTreeMap<u32, Duration>>,
}

impl Liveness {
    pub fn new(timeout: Duration) -> Liveness {
        assert!(!timeout.is_zero(), "a zero timeout would give every storage up at once");
        Liveness { timeout, outstanding: BTreeMap::new() }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// How often the driver should look (and ping idle peers): a quarter of the timeout,
    /// so that a hung peer is given up between 1 and 1.25 timeouts after the request.
    pub fn probe_interval(&self) -> Duration {
        (self.timeout / 4).max(Duration::from_millis(10))
    }

    /// Request `id` was sent to `peer` at `now`.
    pub fn asked(&mut self, peer: NodeId, id: u32, now: Duration) {
        self.outstanding.entry(peer).or_default().insert(id, now);
    }

    /// `peer` answered request `id` (an unknown id is ignored).
    pub fn answered(&mut self, peer: NodeId, id: u32) {
        if let Some(requests) = self.outstanding.get_mut(&peer) {
            requests.remove(&id);
        }
    }

    /// Whether `peer` has nothing outstanding: the driver pings it.
    pub fn idle(&self, peer: NodeId) -> bool {
        self.outstanding.get(&peer).is_none_or(BTreeMap::is_empty)
    }

    /// The peer's connection ended: nothing more is expected of it.
    pub fn forget(&mut self, peer: NodeId) {
        self.outstanding.remove(&peer);
    }

    /// Peers with a request older than the timeout at `now`, with how long it has waited.
    /// They are forgotten: each is reported once.
    pub fn expired(&mut self, now: Duration) -> Vec<(NodeId, Duration)> {
        let timeout = self.timeout;
        let expired: Vec<(NodeId, Duration)> = self
            .outstanding
            .iter()
            .filter_map(|(&peer, requests)| {
                let oldest = requests.values().min()?;
                let waited = now.saturating_sub(*oldest);
                (waited > timeout).then_some((peer, waited))
            })
            .collect();
        for (peer, _) in &expired {
            self.outstanding.remove(peer);
        }
        expired
    }
}

#[cfg(test)]
mod tests {
    use wire::NodeType;

    use super::*;

    fn s(n: u32) -> NodeId {
        NodeId::new(NodeType::Storage, n)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_peer_is_given_up_once_a_request_waits_longer_than_the_timeout() {
        let mut liveness = Liveness::new(ms(100));
        assert!(liveness.idle(s(1)));
        liveness.asked(s(1), 7, ms(0));
        liveness.asked(s(2), 8, ms(0));
        assert!(!liveness.idle(s(1)));
        liveness.answered(s(2), 8);
        assert!(liveness.expired(ms(100)).is_empty(), "not longer than the timeout yet");
        assert_eq!(liveness.expired(ms(101)), vec![(s(1), ms(101))]);
        assert!(liveness.expired(ms(500)).is_empty(), "reported once");
        assert!(liveness.idle(s(2)));
    }

    #[test]
    fn a_newer_answer_does_not_excuse_an_older_request() {
        let mut liveness = Liveness::new(ms(100));
        liveness.asked(s(1), 1, ms(0)); // a lock stuck on the disk
        liveness.asked(s(1), 2, ms(60)); // a ping, answered
        liveness.answered(s(1), 2);
        assert_eq!(liveness.expired(ms(150)), vec![(s(1), ms(150))]);
        // Silence alone is fine; a forgotten peer owes nothing.
        liveness.asked(s(3), 3, ms(0));
        liveness.forget(s(3));
        assert!(liveness.expired(ms(1000)).is_empty());
        assert!(liveness.probe_interval() >= ms(10));
    }
}
