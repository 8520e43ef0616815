//! Pack orders at the primary master: a state machine with no sockets or clocks.
//!
//! A pack is requested by a transaction (`PackRequest` in its finish): once it commits, its
//! tid is the order's id and every storage packs its own copy, in id order. There is no
//! approval step yet, so every order is approved when it commits. Storages keep the orders
//! they heard of in their metadata; a new primary learns them back from the storages
//! (`AskPackOrders` with the table), and a storage that was away asks for what it missed.
//! `WaitForPack` waits until every storage in service has packed up to an order.

use std::collections::BTreeMap;

use wire::messages::{PackOrder, PackRequest};
use wire::{NodeId, Tid};

/// A client waiting for packs (`WaitForPack`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackWaiter {
    pub client: NodeId,
    pub msg_id: u32,
    /// Every order with an id at or below this one must be done.
    pub tid: Tid,
}

#[derive(Debug, Default)]
pub struct Packs {
    orders: BTreeMap<Tid, PackOrder>,
    /// The newest order each storage reported done.
    completed: BTreeMap<NodeId, Tid>,
    waiters: Vec<PackWaiter>,
}

impl Packs {
    /// Orders a storage reported (it keeps them across restarts of the masters).
    pub fn learn(&mut self, orders: impl IntoIterator<Item = PackOrder>) {
        for order in orders {
            self.orders.entry(order.pack_id).or_insert(order);
        }
    }

    /// A transaction carrying `request` committed as `tid`: the new order, approved.
    pub fn committed(&mut self, tid: Tid, request: PackRequest) -> PackOrder {
        let order = PackOrder {
            pack_id: tid,
            approved: Some(true),
            partial: request.oids.is_some(),
            oids: request.oids,
            pack_tid: request.pack_tid,
        };
        self.orders.insert(tid, order.clone());
        order
    }

    /// Orders with an id at or after `min`, in id order.
    pub fn orders_from(&self, min: Tid) -> Vec<PackOrder> {
        self.orders.range(min..).map(|(_, order)| order.clone()).collect()
    }

    /// The newest order at or below `tid`: what a wait for `tid` waits for.
    fn newest_upto(&self, tid: Tid) -> Option<Tid> {
        self.orders.range(..=tid).next_back().map(|(&id, _)| id)
    }

    /// Whether every storage of `in_service` packed every order up to `tid`.
    fn done(&self, tid: Tid, in_service: &[NodeId]) -> bool {
        let Some(target) = self.newest_upto(tid) else { return true };
        in_service.iter().all(|nid| self.completed.get(nid).is_some_and(|&done| done >= target))
    }

    /// The newest pack tid after `tid` of an order known: history before it is gone, so a
    /// truncation to `tid` could not bring it back.
    pub fn packed_after(&self, tid: Tid) -> Option<Tid> {
        self.orders.values().map(|order| order.pack_tid).filter(|&pack_tid| pack_tid > tid).max()
    }

    /// Whether every storage of `storages` packed every order known (a replica check
    /// compares copies packed alike).
    pub fn all_done(&self, storages: &[NodeId]) -> bool {
        self.done(Tid(u64::MAX), storages)
    }

    /// A client waits for packs up to `waiter.tid`: `true` when that is already so (answer
    /// now), otherwise it waits for `completed` or `storage_lost`.
    pub fn wait(&mut self, waiter: PackWaiter, in_service: &[NodeId]) -> bool {
        if self.done(waiter.tid, in_service) {
            return true;
        }
        self.waiters.push(waiter);
        false
    }

    /// A storage packed up to `pack_id`. Returns the waiters to answer now.
    pub fn completed(
        &mut self,
        storage: NodeId,
        pack_id: Tid,
        in_service: &[NodeId],
    ) -> Vec<PackWaiter> {
        let done = self.completed.entry(storage).or_insert(pack_id);
        *done = (*done).max(pack_id);
        self.release(in_service)
    }

    /// A storage left service (its copy is no longer waited for; when it comes back it
    /// reports again). Returns the waiters to answer now.
    pub fn storage_lost(&mut self, storage: NodeId, in_service: &[NodeId]) -> Vec<PackWaiter> {
        self.completed.remove(&storage);
        self.release(in_service)
    }

    /// A client left: its waits go.
    pub fn client_lost(&mut self, client: NodeId) {
        self.waiters.retain(|w| w.client != client);
    }

    fn release(&mut self, in_service: &[NodeId]) -> Vec<PackWaiter> {
        let (ready, waiting): (Vec<PackWaiter>, Vec<PackWaiter>) =
            self.waiters.iter().partition(|w| self.done(w.tid, in_service));
        self.waiters = waiting;
        ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::NodeType;

    fn storage(n: u32) -> NodeId {
        NodeId::new(NodeType::Storage, n)
    }

    fn client() -> NodeId {
        NodeId::new(NodeType::Client, 1)
    }

    fn request(pack_tid: u64) -> PackRequest {
        PackRequest { oids: None, pack_tid: Tid(pack_tid) }
    }

    #[test]
    fn a_wait_ends_when_every_storage_in_service_packed() {
        let mut packs = Packs::default();
        let (s1, s2) = (storage(1), storage(2));
        let order = packs.committed(Tid(10), request(5));
        assert_eq!(order.approved, Some(true));
        assert!(!order.partial);
        let waiter = PackWaiter { client: client(), msg_id: 7, tid: Tid(10) };
        assert!(!packs.wait(waiter, &[s1, s2]));
        assert!(packs.completed(s1, Tid(10), &[s1, s2]).is_empty());
        assert_eq!(packs.completed(s2, Tid(10), &[s1, s2]), vec![waiter]);
        // Nothing is left waiting.
        assert!(packs.completed(s2, Tid(10), &[s1, s2]).is_empty());
    }

    #[test]
    fn a_lost_storage_is_not_waited_for() {
        let mut packs = Packs::default();
        let (s1, s2) = (storage(1), storage(2));
        packs.committed(Tid(10), request(5));
        let waiter = PackWaiter { client: client(), msg_id: 7, tid: Tid(10) };
        assert!(!packs.wait(waiter, &[s1, s2]));
        assert!(packs.completed(s1, Tid(10), &[s1, s2]).is_empty());
        assert_eq!(packs.storage_lost(s2, &[s1]), vec![waiter]);
    }

    #[test]
    fn waits_without_orders_or_for_older_orders_end_at_once() {
        let mut packs = Packs::default();
        let s1 = storage(1);
        assert!(packs.wait(PackWaiter { client: client(), msg_id: 1, tid: Tid(3) }, &[s1]));
        packs.committed(Tid(10), request(5));
        // The order is newer than what the wait is for.
        assert!(packs.wait(PackWaiter { client: client(), msg_id: 2, tid: Tid(9) }, &[s1]));
        assert!(!packs.wait(PackWaiter { client: client(), msg_id: 3, tid: Tid(11) }, &[s1]));
        // A report of an older order does not end it; the client leaving does.
        packs.learn([PackOrder {
            pack_id: Tid(4),
            approved: Some(true),
            partial: false,
            oids: None,
            pack_tid: Tid(2),
        }]);
        assert!(packs.completed(s1, Tid(4), &[s1]).is_empty());
        packs.client_lost(client());
        assert!(packs.completed(s1, Tid(10), &[s1]).is_empty());
    }

    #[test]
    fn learned_orders_are_listed_in_id_order_without_repeats() {
        let mut packs = Packs::default();
        packs.committed(Tid(20), request(15));
        let order = |id: u64| PackOrder {
            pack_id: Tid(id),
            approved: Some(true),
            partial: false,
            oids: None,
            pack_tid: Tid(id - 1),
        };
        packs.learn([order(10), order(20), order(30)]);
        let ids: Vec<Tid> = packs.orders_from(Tid(15)).iter().map(|o| o.pack_id).collect();
        assert_eq!(ids, vec![Tid(20), Tid(30)]);
        // The committed order (pack_tid 15) was kept, not replaced by the report.
        assert_eq!(packs.orders_from(Tid(20))[0].pack_tid, Tid(15));
    }
}
