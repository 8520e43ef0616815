//! The primary master's decisions about nodes and the cluster's state (reference sections
//! 1.2, 1.4 and 2.4): who may identify and with which id, which state each node is in, when
//! the cluster starts, and what a lost storage does to the partition table.
//!
//! A plain state machine: the driver feeds it what happened (an identification, a lost
//! connection, a storage's partition table, a `ctl` command) and sends what it returns. No
//! sockets, no clock (id timestamps come from a counter).

use std::collections::{BTreeMap, BTreeSet};

use wire::{CellState, ClusterState, ErrorCode, NodeId, NodeState, NodeType, Ptid};

use crate::pt::{Change, PartitionTable, PtError, StorageNode};

/// What a node says about itself when it identifies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identification {
    pub node_type: NodeType,
    /// The id it had (storages keep theirs across restarts).
    pub nid: Option<NodeId>,
    pub cluster_name: String,
    /// Topology label (a storage's host): two copies of a partition never share one.
    pub host: String,
    pub read_only: bool,
    /// Where it listens for other nodes (storages), if it does.
    pub address: Option<std::net::SocketAddr>,
}

/// A known node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub nid: NodeId,
    pub node_type: NodeType,
    pub state: NodeState,
    pub host: String,
    /// When the primary identified it (a counter): storages refuse clients whose timestamp
    /// they do not know yet.
    pub id_timestamp: u64,
    pub connected: bool,
    /// Where it listens for other nodes (storages), if it does.
    pub address: Option<std::net::SocketAddr>,
}

/// Why a request was refused: the error answer to send.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

pub(crate) fn refuse(code: ErrorCode, message: impl Into<String>) -> Refusal {
    Refusal { code, message: message.into() }
}

impl From<PtError> for Refusal {
    fn from(error: PtError) -> Refusal {
        refuse(ErrorCode::Denied, error.to_string())
    }
}

/// How the cluster is configured at the primary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    pub name: String,
    pub partitions: u32,
    pub replicas: u32,
    /// Start a new cluster by itself once this many storages are pending.
    pub autostart: Option<usize>,
    /// How long a storage may leave a request of the master's unanswered before it is
    /// given up (`liveness`).
    pub storage_timeout: std::time::Duration,
}

/// An identification stamp: SipHash (std's `DefaultHasher`) of the secret key and the
/// clock: distinct in practice for each tick, and without the key's 128 bits nobody
/// predicts one from another.
fn stamp(clock: u64, key: (u64, u64)) -> u64 {
    use std::hash::Hasher;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    hasher.write_u64(key.0);
    hasher.write_u64(key.1);
    hasher.write_u64(clock);
    hasher.finish()
}

/// The primary master's view of the cluster.
#[derive(Clone, Debug)]
pub struct Cluster {
    config: ClusterConfig,
    state: ClusterState,
    nodes: BTreeMap<NodeId, Node>,
    /// The table: recovered from the storages (highest ptid) or made at first start.
    table: Option<PartitionTable>,
    /// `ctl start` was given: start even without every node of the table, or a new cluster.
    startup_allowed: bool,
    clock: u64,
    /// The key of the identification stamps (`set_stamp_key`).
    stamp_key: (u64, u64),
    /// The highest ids the storages reported (`AskLastIds`).
    last_ids: LastIds,
    /// In VERIFYING once the storages were asked for their last ids: those yet to answer.
    /// The cluster runs only when none is left, so that no id is handed out twice.
    awaiting_ids: Option<BTreeSet<NodeId>>,
    /// `ctl truncate` in progress: the tid, and the storages that keep the order durably.
    /// The cluster starts again only once every storage of the table keeps it; each then
    /// truncates when asked for its last ids.
    truncate: Option<(wire::Tid, BTreeSet<NodeId>)>,
    /// In RECOVERING: the connected storages asked for their table that have not answered.
    /// The cluster does not start before they have: a newer table may be among them (a
    /// storage that was away would otherwise have the cluster start on its older one).
    tables_awaited: BTreeSet<NodeId>,
}

/// The newest ids known in the cluster.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LastIds {
    pub last_tid: Option<wire::Tid>,
    pub last_oid: Option<wire::Oid>,
}

impl Cluster {
    pub fn new(config: ClusterConfig) -> Cluster {
        Cluster {
            config,
            state: ClusterState::Recovering,
            nodes: BTreeMap::new(),
            table: None,
            startup_allowed: false,
            clock: 0,
            stamp_key: (0, 0),
            last_ids: LastIds::default(),
            awaiting_ids: None,
            truncate: None,
            tables_awaited: BTreeSet::new(),
        }
    }

    pub fn state(&self) -> ClusterState {
        self.state
    }

    pub fn table(&self) -> Option<&PartitionTable> {
        self.table.as_ref()
    }

    /// Hosts that hold more than one copy of some partition (storage cores of one process,
    /// or too few hosts for the replicas): losing such a host loses several copies at once.
    /// Each host with the number of partitions it holds twice or more.
    pub fn shared_hosts(&self) -> Vec<(String, usize)> {
        let Some(table) = &self.table else { return Vec::new() };
        let mut shared: BTreeMap<String, usize> = BTreeMap::new();
        for row in &table.rows {
            let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
            for cell in row {
                let host = self.nodes.get(&cell.nid).map_or("", |n| n.host.as_str());
                *seen.entry(host).or_default() += 1;
            }
            for (host, copies) in seen {
                if copies > 1 {
                    *shared.entry(host.to_owned()).or_default() += 1;
                }
            }
        }
        shared.into_iter().collect()
    }

    pub fn node(&self, nid: NodeId) -> Option<&Node> {
        self.nodes.get(&nid)
    }

    /// Every known node, for `NotifyNodeInformation` and `ctl print node`.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    /// A new timestamp for `NotifyNodeInformation` (strictly increasing).
    pub fn next_timestamp(&mut self) -> u64 {
        self.tick()
    }

    /// Keys the identification stamps (`identify`): the driver gives a random key; a
    /// simulation, a fixed one.
    pub fn set_stamp_key(&mut self, key: (u64, u64)) {
        self.stamp_key = key;
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn connected_storages(&self) -> Vec<StorageNode> {
        self.nodes
            .values()
            .filter(|n| n.node_type == NodeType::Storage && n.connected)
            .map(|n| StorageNode { nid: n.nid, host: n.host.clone() })
            .collect()
    }

    /// A node identifies. Returns its record (id, state) or the refusal to answer with.
    pub fn identify(&mut self, request: &Identification) -> Result<Node, Refusal> {
        if request.cluster_name != self.config.name {
            return Err(refuse(
                ErrorCode::ProtocolError,
                format!(
                    "invalid cluster name {:?}: this is cluster {:?}",
                    request.cluster_name, self.config.name
                ),
            ));
        }
        match request.node_type {
            NodeType::Client if self.state != ClusterState::Running => {
                return Err(refuse(ErrorCode::NotReady, format!("the cluster is {}", self.state)));
            }
            NodeType::Master => {
                return Err(refuse(
                    ErrorCode::ProtocolError,
                    "a master takes part in the election; it is not identified as a node",
                ));
            }
            _ => {}
        }
        let nid = match request.nid {
            Some(nid) if nid.node_type() != request.node_type => {
                return Err(refuse(
                    ErrorCode::ProtocolError,
                    format!("node id {nid} is not a {} id", request.node_type),
                ));
            }
            // Most often the node itself, restarted before its old connection is seen
            // closed: it may try again (NOT_READY) and gets in once the old one is gone.
            Some(nid) if self.nodes.get(&nid).is_some_and(|n| n.connected) => {
                return Err(refuse(
                    ErrorCode::NotReady,
                    format!(
                        "{nid} is already connected (its previous connection is not closed yet)"
                    ),
                ));
            }
            // Storage ids are persistent: a storage keeps its id. Others get a new one
            // when theirs is taken.
            Some(nid)
                if request.node_type == NodeType::Storage || !self.nodes.contains_key(&nid) =>
            {
                nid
            }
            _ => self.free_id(request.node_type),
        };
        let state = match request.node_type {
            NodeType::Storage => {
                let in_table = self.table.as_ref().is_some_and(|t| t.nodes().contains(&nid));
                if self.state == ClusterState::Running && in_table {
                    NodeState::Running
                } else {
                    NodeState::Pending
                }
            }
            _ => NodeState::Running,
        };
        // The stamp a storage checks when the node connects to it: unguessable (keyed by
        // `stamp_key`), so that knowing a client's id is not enough to pose as it.
        let id_timestamp = stamp(self.tick(), self.stamp_key);
        let node = Node {
            nid,
            node_type: request.node_type,
            state,
            host: request.host.clone(),
            id_timestamp,
            connected: true,
            address: request.address,
        };
        self.nodes.insert(nid, node.clone());
        Ok(node)
    }

    /// The smallest number not in use in a type's namespace.
    fn free_id(&self, node_type: NodeType) -> NodeId {
        let number = (1..)
            .find(|&n| !self.nodes.contains_key(&NodeId::new(node_type, n)))
            .expect("a free node number");
        NodeId::new(node_type, number)
    }

    /// A storage reported its newest ids: the cluster's are the highest.
    pub fn storage_ids(
        &mut self,
        nid: NodeId,
        last_tid: Option<wire::Tid>,
        last_oid: Option<wire::Oid>,
    ) {
        if let Some(awaiting) = &mut self.awaiting_ids {
            awaiting.remove(&nid);
        }
        // A storage outside the table (pending, or dropped and back with its old data)
        // holds nothing the cluster committed: its tids are not the cluster's (after a
        // truncation they may be past it). Its oids are kept out of use all the same.
        if self.in_table(nid) {
            self.last_ids.last_tid = self.last_ids.last_tid.max(last_tid);
        }
        self.last_ids.last_oid = self.last_ids.last_oid.max(last_oid);
    }

    /// Whether `nid` has a cell in the table.
    pub fn in_table(&self, nid: NodeId) -> bool {
        self.table.as_ref().is_some_and(|t| t.nodes().contains(&nid))
    }

    pub fn last_ids(&self) -> LastIds {
        self.last_ids
    }

    /// A storage answered the recovery: keep its table if it is the newest.
    pub fn recovered(&mut self, nid: NodeId, table: Option<PartitionTable>) {
        self.tables_awaited.remove(&nid);
        // Only while recovering: once the cluster started, its table is the one that
        // storages were sent, and an answer that comes late changes nothing.
        if self.state != ClusterState::Recovering {
            return;
        }
        let Some(table) = table else { return };
        if self.table.as_ref().is_none_or(|current| table.ptid > current.ptid) {
            self.table = Some(table);
        }
    }

    /// A storage was asked for its table (`AskPartitionTable`): the cluster does not start
    /// before it answers (`recovered`) or goes.
    pub fn table_asked(&mut self, nid: NodeId) {
        self.tables_awaited.insert(nid);
    }

    /// `ctl truncate TID`: refused unless the cluster runs with no transaction in flight,
    /// every storage of the table running, `tid` before the last committed tid, and no pack
    /// after it (its history is gone). The cluster leaves operation; returns the storages
    /// to send the order to (`Truncate`).
    pub fn begin_truncate(
        &mut self,
        tid: wire::Tid,
        last_tid: Option<wire::Tid>,
        in_flight: bool,
        packed_after: Option<wire::Tid>,
    ) -> Result<Vec<NodeId>, Refusal> {
        let denied = |message: String| Err(refuse(ErrorCode::Denied, message));
        if self.state != ClusterState::Running {
            return Err(refuse(ErrorCode::NotReady, format!("the cluster is {}", self.state)));
        }
        if in_flight {
            return denied("transactions are in flight; truncate when none is".to_owned());
        }
        match last_tid {
            Some(last) if tid < last => {}
            last => {
                let last = last.map_or("none".to_owned(), |t| t.to_string());
                return denied(format!("nothing to truncate after {tid} (last tid {last})"));
            }
        }
        if let Some(pack_tid) = packed_after {
            return denied(format!(
                "the history is packed up to {pack_tid}, after {tid}: it cannot come back"
            ));
        }
        let table = self.table.as_ref().ok_or_else(|| refuse(ErrorCode::Denied, "no table"))?;
        let storages: Vec<NodeId> = table.nodes().into_iter().collect();
        let away: Vec<String> = storages
            .iter()
            .filter(|nid| {
                !self.nodes.get(nid).is_some_and(|n| n.connected && n.state == NodeState::Running)
            })
            .map(NodeId::to_string)
            .collect();
        if !away.is_empty() {
            return denied(format!(
                "every storage of the table must run to truncate: {} not",
                away.join(", ")
            ));
        }
        self.leave_operation();
        self.truncate = Some((tid, BTreeSet::new()));
        // The tids after it are gone; the oids stay used.
        self.last_ids.last_tid = None;
        Ok(storages)
    }

    /// The truncation in progress, if any.
    pub fn truncating(&self) -> Option<wire::Tid> {
        self.truncate.as_ref().map(|(tid, _)| *tid)
    }

    /// A storage in recovery says which truncation order it keeps, if any: a truncation a
    /// previous primary began is carried on. Returns the order to send it, unless it keeps
    /// it already.
    pub fn truncate_kept(&mut self, nid: NodeId, kept: Option<wire::Tid>) -> Option<wire::Tid> {
        if self.state != ClusterState::Recovering {
            return None;
        }
        if self.truncate.is_none()
            && let Some(tid) = kept
        {
            self.truncate = Some((tid, BTreeSet::new()));
            self.last_ids.last_tid = None;
        }
        let (tid, keeping) = self.truncate.as_mut()?;
        if kept == Some(*tid) {
            keeping.insert(nid);
            None
        } else {
            Some(*tid)
        }
    }

    /// A storage made the truncation order durable (`AnswerTruncate`).
    pub fn truncate_acknowledged(&mut self, nid: NodeId) {
        if let Some((_, keeping)) = self.truncate.as_mut() {
            keeping.insert(nid);
        }
    }

    /// A node's connection is gone. Returns the partition table changes to broadcast.
    pub fn disconnected(&mut self, nid: NodeId) -> Vec<Change> {
        if let Some((_, keeping)) = self.truncate.as_mut() {
            keeping.remove(&nid);
        }
        if let Some(awaiting) = &mut self.awaiting_ids {
            awaiting.remove(&nid);
        }
        self.tables_awaited.remove(&nid);
        let Some(node) = self.nodes.get_mut(&nid) else { return Vec::new() };
        node.connected = false;
        match (node.node_type, node.state) {
            (NodeType::Storage, NodeState::Running) => {
                node.state = NodeState::Down;
                let changes = match self.table.as_mut() {
                    Some(table) => table.outdate(nid),
                    None => Vec::new(),
                };
                let operational = self.operational();
                if !operational
                    && matches!(self.state, ClusterState::Running | ClusterState::Verifying)
                {
                    self.leave_operation();
                }
                changes
            }
            (NodeType::Storage, NodeState::Down) => Vec::new(),
            _ => {
                self.nodes.remove(&nid);
                Vec::new()
            }
        }
    }

    fn operational(&self) -> bool {
        let running = |nid: NodeId| {
            self.nodes.get(&nid).is_some_and(|n| n.connected && n.state == NodeState::Running)
        };
        self.table.as_ref().is_some_and(|t| t.operational(running))
    }

    /// VERIFYING: `storages` were asked for their last ids. Returns false if they already
    /// were (nothing to send again).
    pub fn begin_verification(&mut self, storages: &[NodeId]) -> bool {
        if self.state != ClusterState::Verifying || self.awaiting_ids.is_some() {
            return false;
        }
        self.awaiting_ids = Some(storages.iter().copied().collect());
        true
    }

    /// Whether verification is done: every storage asked has answered (or left).
    pub fn ids_collected(&self) -> bool {
        self.state == ClusterState::Verifying
            && self.awaiting_ids.as_ref().is_some_and(BTreeSet::is_empty)
    }

    /// Back to RECOVERING: running storages become pending, clients are forgotten (the
    /// driver sends them away). A storage loss that leaves a partition without a readable
    /// copy does this; so does a commit that cannot be confirmed (the driver's last resort).
    pub fn leave_operation(&mut self) {
        self.awaiting_ids = None;
        self.state = ClusterState::Recovering;
        self.startup_allowed = false;
        for node in self.nodes.values_mut() {
            if node.node_type == NodeType::Storage && node.state == NodeState::Running {
                node.state = NodeState::Pending;
            }
        }
        self.nodes.retain(|_, n| n.node_type != NodeType::Client);
    }

    /// In RECOVERING: starts (to VERIFYING) if the rules allow. An existing cluster starts
    /// by itself once every node holding a readable cell is back; a degraded start, or a
    /// new cluster, needs `ctl start` (or `--autostart N` with N storages pending for a new
    /// cluster). Returns the changes made to the table (cells of missing nodes outdated).
    pub fn try_start(&mut self) -> Option<Vec<Change>> {
        if self.state != ClusterState::Recovering {
            return None;
        }
        let pending = self.connected_storages();
        let connected = |nid: NodeId| pending.iter().any(|s| s.nid == nid);
        if self.tables_awaited.iter().any(|&nid| connected(nid)) {
            return None;
        }
        let mut changes = Vec::new();
        match &self.table {
            None => {
                let autostart = self.config.autostart.is_some_and(|n| pending.len() >= n);
                if pending.is_empty() || !(self.startup_allowed || autostart) {
                    return None;
                }
                let table =
                    PartitionTable::make(self.config.partitions, self.config.replicas, &pending)
                        .ok()?;
                self.table = Some(table);
            }
            // A truncation needs every storage of the table, each keeping the order (they
            // truncate when verification asks for their last ids).
            Some(table) if self.truncate.is_some() => {
                let (_, keeping) = self.truncate.as_ref().expect("matched");
                if !table.nodes().iter().all(|nid| connected(*nid) && keeping.contains(nid)) {
                    return None;
                }
            }
            Some(table) => {
                let all_back = table
                    .rows
                    .iter()
                    .flatten()
                    .filter(|c| c.state.is_readable())
                    .all(|c| connected(c.nid));
                // Never without a readable copy of every partition on a node that is here
                // (a table whose cells are all out of date is "all back" with nobody).
                let operational = table.operational(connected);
                if !(operational && (all_back || self.startup_allowed)) {
                    return None;
                }
                let missing: Vec<NodeId> =
                    table.nodes().into_iter().filter(|&nid| !connected(nid)).collect();
                let table = self.table.as_mut().expect("matched");
                for nid in missing {
                    changes.extend(table.outdate(nid));
                }
            }
        }
        let in_table = self.table.as_ref().expect("made or recovered").nodes();
        for node in self.nodes.values_mut() {
            if node.connected && in_table.contains(&node.nid) {
                node.state = NodeState::Running;
            }
        }
        self.state = ClusterState::Verifying;
        Some(changes)
    }

    /// Verification done (unfinished transactions replayed or dropped): RUNNING. Storages
    /// of the table that identified while it was starting (PENDING) go into service too:
    /// returned, for the driver to treat as storages rejoining a running cluster.
    pub fn verified(&mut self) -> Vec<NodeId> {
        assert_eq!(self.state, ClusterState::Verifying);
        self.awaiting_ids = None;
        self.truncate = None;
        self.state = ClusterState::Running;
        let in_table = self.table.as_ref().map(PartitionTable::nodes).unwrap_or_default();
        let mut late = Vec::new();
        for node in self.nodes.values_mut() {
            if node.node_type == NodeType::Storage
                && node.connected
                && node.state == NodeState::Pending
                && in_table.contains(&node.nid)
            {
                node.state = NodeState::Running;
                late.push(node.nid);
            }
        }
        late
    }

    /// `ctl set cluster STATE` (and `ctl start`, which asks for VERIFYING).
    pub fn set_cluster_state(&mut self, target: ClusterState) -> Result<(), Refusal> {
        match (self.state, target) {
            // Already started (or starting): nothing to do.
            (ClusterState::Verifying | ClusterState::Running, ClusterState::Verifying) => Ok(()),
            (ClusterState::Recovering, ClusterState::Verifying) => {
                let allowed_before = self.startup_allowed;
                self.startup_allowed = true;
                let connected: BTreeSet<NodeId> =
                    self.connected_storages().into_iter().map(|s| s.nid).collect();
                let awaited = self.tables_awaited.iter().any(|nid| connected.contains(nid));
                match self.try_start() {
                    Some(_) => Ok(()),
                    // Storages still to say what table they hold: the start is allowed, and
                    // happens once they have (`try_start` after each answer).
                    None if awaited => Ok(()),
                    // Refused: the order does not linger to start the cluster later.
                    None => {
                        self.startup_allowed = allowed_before;
                        Err(refuse(
                            ErrorCode::Denied,
                            "the partition table cannot be made operational with the storages connected",
                        ))
                    }
                }
            }
            (_, ClusterState::Stopping) => {
                self.state = ClusterState::Stopping;
                Ok(())
            }
            (_, ClusterState::StartingBackup | ClusterState::StoppingBackup) => {
                Err(refuse(ErrorCode::Denied, "backup clusters are not supported yet"))
            }
            (current, target) => {
                Err(refuse(ErrorCode::Denied, format!("cannot go from {current} to {target}")))
            }
        }
    }

    /// `ctl add`: pending storages enter service (their cells come with `tweak`); none named
    /// (`add all`): every pending storage. Returns those added.
    pub fn add_pending(&mut self, nids: &[NodeId]) -> Result<Vec<NodeId>, Refusal> {
        if self.state != ClusterState::Running {
            return Err(refuse(ErrorCode::Denied, format!("the cluster is {}", self.state)));
        }
        // None named (`ctl add all`): every pending storage.
        let all: Vec<NodeId>;
        let nids = if nids.is_empty() {
            all = self
                .nodes
                .values()
                .filter(|n| {
                    n.node_type == NodeType::Storage && n.connected && n.state == NodeState::Pending
                })
                .map(|n| n.nid)
                .collect();
            if all.is_empty() {
                return Err(refuse(ErrorCode::Denied, "no storage is pending"));
            }
            &all[..]
        } else {
            nids
        };
        for nid in nids {
            let node = self
                .nodes
                .get(nid)
                .ok_or_else(|| refuse(ErrorCode::Denied, format!("unknown node {nid}")))?;
            if node.node_type != NodeType::Storage || node.state != NodeState::Pending {
                return Err(refuse(ErrorCode::Denied, format!("{nid} is not a pending storage")));
            }
        }
        for nid in nids {
            self.nodes.get_mut(nid).expect("checked").state = NodeState::Running;
        }
        Ok(nids.to_vec())
    }

    /// `ctl tweak [-n] [drop...]`: rebalance over the running storages. A dry run returns
    /// the plan and changes nothing.
    pub fn tweak(
        &mut self,
        drop: &[NodeId],
        dry_run: bool,
    ) -> Result<(PartitionTable, Vec<Change>), Refusal> {
        if !matches!(self.state, ClusterState::Running) {
            return Err(refuse(ErrorCode::Denied, format!("the cluster is {}", self.state)));
        }
        let running: Vec<StorageNode> = self
            .nodes
            .values()
            .filter(|n| {
                n.node_type == NodeType::Storage && n.state == NodeState::Running && n.connected
            })
            .map(|n| StorageNode { nid: n.nid, host: n.host.clone() })
            .collect();
        if let Some(unknown) = drop.iter().find(|nid| {
            self.nodes.get(nid).is_none_or(|n| n.node_type != NodeType::Storage)
                && !self.in_table(**nid)
        }) {
            return Err(refuse(
                ErrorCode::Denied,
                format!("{unknown} is not a storage of the cluster"),
            ));
        }
        if running.iter().all(|n| drop.contains(&n.nid)) {
            return Err(refuse(ErrorCode::Denied, "tweak would leave no storage"));
        }
        let table = self.table.as_ref().expect("a running cluster has a table");
        let (planned, changes) = table.tweak(&running, drop);
        if !dry_run {
            self.table = Some(planned.clone());
        }
        Ok((planned, changes))
    }

    /// `ctl set replicas N` (applied by the next tweak).
    /// `ctl set replicas N`: the table's new replica count, under a new ptid that the
    /// driver announces (a change list with no cell in it), so that every node's copy follows
    /// (`tweak` then places the cells). Returns whether the table changed.
    pub fn set_replicas(&mut self, replicas: u32) -> bool {
        self.config.replicas = replicas;
        match self.table.as_mut() {
            Some(table) if table.replicas != replicas => {
                table.replicas = replicas;
                table.ptid = Ptid(table.ptid.0 + 1);
                true
            }
            _ => false,
        }
    }

    /// `ctl kill`: a storage leaves service (it shuts down); refused if it holds the last
    /// readable copy of a partition.
    pub fn kill(&mut self, nid: NodeId) -> Result<Vec<Change>, Refusal> {
        if !self.nodes.contains_key(&nid) {
            return Err(refuse(ErrorCode::Denied, format!("unknown node {nid}")));
        }
        if nid.node_type() != NodeType::Storage {
            return Err(refuse(
                ErrorCode::Denied,
                format!("{nid} is not a storage: only storages and standby masters are killed"),
            ));
        }
        self.check_not_last_copy(nid)?;
        let node = self
            .nodes
            .get_mut(&nid)
            .ok_or_else(|| refuse(ErrorCode::Denied, format!("unknown node {nid}")))?;
        node.state = NodeState::Down;
        node.connected = false;
        Ok(self.table.as_mut().expect("checked").outdate(nid))
    }

    /// Refused if `nid` holds the last readable copy of some partition.
    fn check_not_last_copy(&self, nid: NodeId) -> Result<(), Refusal> {
        let table =
            self.table.as_ref().ok_or_else(|| refuse(ErrorCode::Denied, "no partition table"))?;
        for (partition, row) in table.rows.iter().enumerate() {
            let readable_elsewhere =
                row.iter().filter(|c| c.nid != nid && c.state.is_readable()).count();
            if row.iter().any(|c| c.nid == nid && c.state.is_readable()) && readable_elsewhere == 0
            {
                return Err(
                    PtError::LastReadableCopy(nid, wire::PartitionId(partition as u32)).into()
                );
            }
        }
        Ok(())
    }

    /// A client could not store or vote on `nid` (`FailedVote`): its cells are outdated so
    /// that the transaction may commit without it, unless it holds the last readable copy
    /// of some partition (then the transaction cannot commit: INCOMPLETE_TRANSACTION).
    pub fn outdate_for_failed_vote(&mut self, nid: NodeId) -> Result<Vec<Change>, Refusal> {
        self.check_not_last_copy(nid).map_err(|refusal| Refusal {
            code: ErrorCode::IncompleteTransaction,
            message: refusal.message,
        })?;
        Ok(self.table.as_mut().expect("checked").outdate(nid))
    }

    /// A storage finished replicating its out-of-date cell of `partition`: the cell is
    /// UP_TO_DATE, and FEEDING cells it replaces are discarded (`PartitionTable::
    /// set_up_to_date`).
    pub fn replication_done(
        &mut self,
        partition: wire::PartitionId,
        nid: NodeId,
    ) -> Result<Vec<Change>, Refusal> {
        let table =
            self.table.as_mut().ok_or_else(|| refuse(ErrorCode::Denied, "no partition table"))?;
        Ok(table.set_up_to_date(partition, nid)?)
    }

    /// A cell holds bad data: CORRUPTED (`PartitionTable::mark_corrupted`), unless it is the
    /// last readable copy on a running storage. Only in a running cluster.
    pub fn mark_corrupted(
        &mut self,
        partition: wire::PartitionId,
        nid: NodeId,
    ) -> Result<Vec<Change>, Refusal> {
        if self.state != ClusterState::Running {
            return Err(refuse(ErrorCode::NotReady, format!("the cluster is {}", self.state)));
        }
        let running: BTreeSet<NodeId> = self
            .nodes
            .values()
            .filter(|n| n.connected && n.state == NodeState::Running)
            .map(|n| n.nid)
            .collect();
        let table =
            self.table.as_mut().ok_or_else(|| refuse(ErrorCode::Denied, "no partition table"))?;
        Ok(table.mark_corrupted(partition, nid, |nid| running.contains(&nid))?)
    }

    /// A CORRUPTED cell whose storage runs is copied again: OUT_OF_DATE
    /// (`PartitionTable::repair`). A storage that is away is repaired when it is back.
    pub fn repair(
        &mut self,
        partition: wire::PartitionId,
        nid: NodeId,
    ) -> Result<Vec<Change>, Refusal> {
        let running =
            self.nodes.get(&nid).is_some_and(|n| n.connected && n.state == NodeState::Running);
        if self.state != ClusterState::Running || !running {
            return Err(refuse(ErrorCode::NotReady, format!("{nid} is not running")));
        }
        let table =
            self.table.as_mut().ok_or_else(|| refuse(ErrorCode::Denied, "no partition table"))?;
        Ok(table.repair(partition, nid)?)
    }

    /// `ctl drop`: a storage that is not running is removed, with its cells.
    pub fn drop_node(&mut self, nid: NodeId) -> Result<Vec<Change>, Refusal> {
        if nid.node_type() != NodeType::Storage {
            return Err(refuse(ErrorCode::Denied, format!("{nid} is not a storage")));
        }
        let node = self
            .nodes
            .get(&nid)
            .ok_or_else(|| refuse(ErrorCode::Denied, format!("unknown node {nid}")))?;
        if node.connected && node.state == NodeState::Running {
            return Err(refuse(ErrorCode::Denied, format!("{nid} is running: kill it first")));
        }
        let changes = match self.table.as_mut() {
            Some(table) => table.drop_node(nid)?,
            None => Vec::new(),
        };
        self.nodes.remove(&nid);
        Ok(changes)
    }

    /// Counts of cells in each state, for `ctl print summary`.
    pub fn cell_summary(&self) -> BTreeMap<CellState, usize> {
        let mut summary = BTreeMap::new();
        for cell in self.table.iter().flat_map(|t| t.rows.iter().flatten()) {
            *summary.entry(cell.state).or_insert(0) += 1;
        }
        summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(replicas: u32) -> ClusterConfig {
        ClusterConfig {
            name: "test".to_owned(),
            partitions: 6,
            replicas,
            autostart: None,
            storage_timeout: crate::liveness::STORAGE_TIMEOUT_DEFAULT,
        }
    }

    fn storage(nid: Option<u32>, host: &str) -> Identification {
        Identification {
            node_type: NodeType::Storage,
            nid: nid.map(|n| NodeId::new(NodeType::Storage, n)),
            cluster_name: "test".to_owned(),
            host: host.to_owned(),
            read_only: false,
            address: None,
        }
    }

    fn client() -> Identification {
        Identification {
            node_type: NodeType::Client,
            nid: None,
            cluster_name: "test".to_owned(),
            host: String::new(),
            read_only: false,
            address: None,
        }
    }

    /// A new cluster of three storages started with `ctl start`.
    fn running(replicas: u32) -> (Cluster, Vec<NodeId>) {
        let mut cluster = Cluster::new(config(replicas));
        let nids: Vec<NodeId> = ["a", "b", "c"]
            .iter()
            .map(|h| cluster.identify(&storage(None, h)).unwrap().nid)
            .collect();
        assert!(nids.iter().all(|&n| cluster.node(n).unwrap().state == NodeState::Pending));
        cluster.set_cluster_state(ClusterState::Verifying).unwrap();
        cluster.verified();
        (cluster, nids)
    }

    #[test]
    fn running_waits_for_every_storages_last_ids() {
        let mut cluster = Cluster::new(config(1));
        let nids: Vec<NodeId> = ["a", "b", "c"]
            .iter()
            .map(|h| cluster.identify(&storage(None, h)).unwrap().nid)
            .collect();
        cluster.set_cluster_state(ClusterState::Verifying).unwrap();
        assert!(!cluster.ids_collected(), "nobody asked yet");
        assert!(cluster.begin_verification(&nids));
        assert!(!cluster.begin_verification(&nids), "asked once");
        let oid = |n| Some(wire::Oid(n));
        cluster.storage_ids(nids[0], None, oid(7));
        assert!(!cluster.ids_collected());
        // One leaves during verification (the table stays operational): not waited for.
        cluster.disconnected(nids[2]);
        assert_eq!(cluster.state(), ClusterState::Verifying);
        assert!(!cluster.ids_collected());
        cluster.storage_ids(nids[1], None, oid(3));
        assert!(cluster.ids_collected());
        assert_eq!(cluster.last_ids().last_oid, oid(7), "the highest wins");
        cluster.verified();
        assert_eq!(cluster.state(), ClusterState::Running);
        assert!(!cluster.ids_collected());
    }

    /// A truncation is refused unless the cluster could carry it out whole; once begun,
    /// the cluster starts again only when every storage of the table keeps the order, and
    /// a new primary learns it from any storage that does.
    #[test]
    fn truncation_needs_every_storage_keeping_the_order() {
        let tid = wire::Tid;
        let (mut cluster, nids) = running(1);
        let refused = |cluster: &mut Cluster, t, last, in_flight, packed| {
            cluster.begin_truncate(tid(t), Some(tid(last)), in_flight, packed).unwrap_err().message
        };
        assert!(refused(&mut cluster, 5, 9, true, None).contains("in flight"));
        assert!(refused(&mut cluster, 9, 9, false, None).contains("nothing to truncate"));
        assert!(refused(&mut cluster, 5, 9, false, Some(tid(6))).contains("packed up to"));
        assert_eq!(cluster.state(), ClusterState::Running, "refusals change nothing");
        let asked = cluster.begin_truncate(tid(5), Some(tid(9)), false, None).unwrap();
        assert_eq!(asked, nids);
        assert_eq!(
            (cluster.state(), cluster.truncating()),
            (ClusterState::Recovering, Some(tid(5)))
        );
        assert!(cluster.try_start().is_none(), "nobody keeps the order yet");
        cluster.truncate_acknowledged(nids[0]);
        cluster.truncate_acknowledged(nids[1]);
        assert!(
            cluster.set_cluster_state(ClusterState::Verifying).is_err(),
            "ctl start skips no storage"
        );
        // A storage that reconnects must keep the order again before the start.
        cluster.disconnected(nids[0]);
        cluster.identify(&storage(Some(nids[0].number()), "a")).unwrap();
        cluster.truncate_acknowledged(nids[2]);
        assert!(cluster.try_start().is_none(), "{} left", nids[0]);
        assert_eq!(cluster.truncate_kept(nids[0], Some(tid(5))), None);
        assert!(cluster.try_start().is_some());
        cluster.verified();
        assert_eq!(cluster.truncating(), None);

        // A new primary: one storage keeps an order, the others are sent it.
        let mut fresh = Cluster::new(config(1));
        for (nid, host) in nids.iter().zip(["a", "b", "c"]) {
            fresh.identify(&storage(Some(nid.number()), host)).unwrap();
        }
        assert_eq!(fresh.truncate_kept(nids[1], None), None, "nothing to carry on yet");
        assert_eq!(fresh.truncate_kept(nids[0], Some(tid(5))), None);
        assert_eq!(fresh.truncating(), Some(tid(5)));
        assert_eq!(fresh.truncate_kept(nids[1], None), Some(tid(5)));
        assert_eq!(fresh.truncate_kept(nids[2], Some(tid(4))), Some(tid(5)));
    }

    #[test]
    fn copies_sharing_a_host_are_reported() {
        let (cluster, _) = running(1);
        assert_eq!(cluster.shared_hosts(), Vec::new(), "three hosts hold two copies apart");
        // Two storage cores of one process and one other host, two copies of 6 partitions:
        // at least some partitions must keep both copies on the shared host.
        let mut cluster = Cluster::new(config(2));
        for host in ["a", "a", "b"] {
            cluster.identify(&storage(None, host)).unwrap();
        }
        cluster.set_cluster_state(ClusterState::Verifying).unwrap();
        cluster.verified();
        let shared = cluster.shared_hosts();
        assert_eq!(shared.len(), 1, "{shared:?}");
        assert_eq!(shared[0], ("a".to_owned(), 6), "three copies over two hosts");
    }

    #[test]
    fn new_cluster_starts_with_ctl_start() {
        let mut cluster = Cluster::new(config(1));
        let s1 = cluster.identify(&storage(None, "a")).unwrap().nid;
        assert_eq!(s1.to_string(), "S1");
        assert!(cluster.try_start().is_none(), "a new cluster waits for ctl start");
        assert!(matches!(
            cluster.identify(&client()),
            Err(Refusal { code: ErrorCode::NotReady, .. })
        ));
        let (cluster, nids) = running(1);
        assert_eq!(cluster.state(), ClusterState::Running);
        assert!(nids.iter().all(|&n| cluster.node(n).unwrap().state == NodeState::Running));
        assert_eq!(cluster.table().unwrap().ptid, Ptid(1));
        assert_eq!(cluster.cell_summary()[&CellState::UpToDate], 12);
    }

    #[test]
    fn autostart_waits_for_enough_storages() {
        let mut cluster = Cluster::new(ClusterConfig { autostart: Some(2), ..config(0) });
        cluster.identify(&storage(None, "a")).unwrap();
        assert!(cluster.try_start().is_none());
        cluster.identify(&storage(None, "b")).unwrap();
        assert!(cluster.try_start().is_some());
        assert_eq!(cluster.state(), ClusterState::Verifying);
    }

    #[test]
    fn restart_recovers_the_table_and_waits_for_every_readable_node() {
        let (old, nids) = running(1);
        let table = old.table().unwrap().clone();
        // A new primary: storages come back with their ids and tables.
        let mut cluster = Cluster::new(config(1));
        for (nid, host) in nids.iter().zip(["a", "b"]) {
            cluster.identify(&storage(Some(nid.number()), host)).unwrap();
            cluster.table_asked(*nid);
            cluster.recovered(*nid, Some(table.clone()));
        }
        assert!(cluster.try_start().is_none(), "S3 holds readable cells and is not back");
        cluster.identify(&storage(Some(nids[2].number()), "c")).unwrap();
        // Back, but its table not yet heard of: it may be newer than the others'.
        cluster.table_asked(nids[2]);
        assert!(cluster.try_start().is_none(), "S3's table is awaited");
        // `ctl start` meanwhile is taken: the start happens once the table is in.
        assert_eq!(cluster.set_cluster_state(ClusterState::Verifying), Ok(()));
        assert_eq!(cluster.state(), ClusterState::Recovering);
        // An older table from one storage does not replace the newer.
        let mut stale = table.clone();
        stale.ptid = Ptid(0);
        cluster.recovered(nids[2], Some(stale));
        assert_eq!(cluster.table().unwrap().ptid, table.ptid);
        assert_eq!(cluster.try_start(), Some(Vec::new()));
        assert_eq!(cluster.table().unwrap(), &table, "the same table came back");
        // Once started, a table that comes late changes nothing.
        let mut newer = table.clone();
        newer.ptid = Ptid(table.ptid.0 + 5);
        cluster.recovered(nids[0], Some(newer));
        assert_eq!(cluster.table().unwrap().ptid, table.ptid);
    }

    #[test]
    fn ctl_start_is_idempotent_and_a_refused_one_does_not_linger() {
        let (mut running, _) = running(1);
        assert_eq!(running.set_cluster_state(ClusterState::Verifying), Ok(()));
        assert_eq!(running.state(), ClusterState::Running);
        // A new cluster with no storage yet: refused, and the refusal is not remembered:
        // a storage that comes later does not start a cluster by itself.
        let mut cluster = Cluster::new(config(0));
        assert!(cluster.set_cluster_state(ClusterState::Verifying).is_err());
        cluster.identify(&storage(None, "a")).unwrap();
        assert_eq!(cluster.try_start(), None);
        assert_eq!(cluster.set_cluster_state(ClusterState::Verifying), Ok(()));
        assert_eq!(cluster.state(), ClusterState::Verifying);
    }

    #[test]
    fn degraded_restart_needs_ctl_start() {
        let (old, nids) = running(1);
        let mut cluster = Cluster::new(config(1));
        for (nid, host) in nids.iter().zip(["a", "b"]) {
            cluster.identify(&storage(Some(nid.number()), host)).unwrap();
            cluster.recovered(*nid, old.table().cloned());
        }
        assert!(cluster.try_start().is_none());
        cluster.set_cluster_state(ClusterState::Verifying).unwrap();
        let outdated = cluster.table().unwrap().rows.iter().flatten().filter(|c| c.nid == nids[2]);
        assert!(outdated.clone().all(|c| c.state == CellState::OutOfDate), "missing node outdated");
    }

    #[test]
    fn storage_death_with_and_without_replicas() {
        let (mut cluster, nids) = running(1);
        let changes = cluster.disconnected(nids[0]);
        assert!(!changes.is_empty() && changes.iter().all(|c| c.state == CellState::OutOfDate));
        assert_eq!(cluster.state(), ClusterState::Running, "replicas keep the cluster running");
        assert_eq!(cluster.node(nids[0]).unwrap().state, NodeState::Down);

        let (mut cluster, nids) = running(0);
        let client_nid = cluster.identify(&client()).unwrap().nid;
        cluster.disconnected(nids[0]);
        assert_eq!(cluster.state(), ClusterState::Recovering, "a partition has no readable copy");
        assert!(cluster.node(client_nid).is_none(), "clients are sent away");
        // The storage comes back: every readable node is there again, the cluster restarts.
        cluster.identify(&storage(Some(nids[0].number()), "a")).unwrap();
        assert!(cluster.try_start().is_some());
        cluster.verified();
        assert_eq!(cluster.state(), ClusterState::Running);
    }

    #[test]
    fn identification_rules() {
        let (mut cluster, nids) = running(1);
        let wrong = Identification { cluster_name: "other".to_owned(), ..storage(None, "x") };
        let refusal = cluster.identify(&wrong).unwrap_err();
        assert_eq!(refusal.code, ErrorCode::ProtocolError);
        assert!(refusal.message.contains("other") && refusal.message.contains("test"));
        let duplicate = cluster.identify(&storage(Some(nids[0].number()), "a")).unwrap_err();
        assert!(duplicate.message.contains("already connected"));
        assert_eq!(duplicate.code, ErrorCode::NotReady, "the node may try again");
        let new_storage = cluster.identify(&storage(None, "d")).unwrap();
        assert_eq!(new_storage.state, NodeState::Pending, "unknown storages wait for ctl add");
        assert_eq!(cluster.add_pending(&[new_storage.nid]).unwrap(), vec![new_storage.nid]);
        // `add all`: every pending storage, and a refusal when none is.
        let (e, f) = (cluster.identify(&storage(None, "e")).unwrap(), storage(None, "f"));
        let f = cluster.identify(&f).unwrap();
        assert_eq!(cluster.add_pending(&[]).unwrap(), vec![e.nid, f.nid]);
        assert!(cluster.add_pending(&[]).unwrap_err().message.contains("no storage is pending"));
        let first = cluster.identify(&client()).unwrap();
        let second = cluster.identify(&client()).unwrap();
        assert_ne!(first.nid, second.nid);
        assert_ne!(second.id_timestamp, first.id_timestamp);
    }

    /// A table whose cells are all out of date (no readable copy anywhere) never starts:
    /// "every node holding a readable cell is back" held vacuously, and the cluster went
    /// RUNNING with nothing to read.
    #[test]
    fn a_table_without_readable_cells_never_starts() {
        let mut cluster = Cluster::new(config(0));
        let s1 = cluster.identify(&storage(Some(1), "a")).unwrap().nid;
        let table = PartitionTable {
            ptid: Ptid(7),
            replicas: 0,
            rows: (0..4)
                .map(|_| vec![crate::pt::Cell { nid: s1, state: CellState::OutOfDate }])
                .collect(),
        };
        cluster.recovered(s1, Some(table));
        assert_eq!(cluster.try_start(), None);
        assert_eq!(cluster.state(), ClusterState::Recovering);
        assert!(cluster.set_cluster_state(ClusterState::Verifying).is_err(), "not even by ctl");
    }

    /// `ctl set replicas` changes the table under a new ptid only when the count changes.
    #[test]
    fn set_replicas_changes_the_table_version() {
        let (mut cluster, _) = running(0);
        let before = cluster.table().unwrap().ptid;
        assert!(cluster.set_replicas(1));
        assert_eq!(cluster.table().unwrap().ptid, Ptid(before.0 + 1));
        assert!(!cluster.set_replicas(1), "the same count: nothing to announce");
        assert_eq!(cluster.table().unwrap().ptid, Ptid(before.0 + 1));
    }

    #[test]
    fn ctl_commands_follow_the_safety_rules() {
        let (mut cluster, nids) = running(0);
        assert!(cluster.kill(nids[0]).is_err(), "last readable copies");
        assert!(cluster.set_cluster_state(ClusterState::Recovering).is_err());
        cluster.set_replicas(1);
        let (plan, changes) = cluster.tweak(&[], true).unwrap();
        assert!(!changes.is_empty());
        assert_ne!(cluster.table().unwrap(), &plan, "dry run changes nothing");
        cluster.tweak(&[], false).unwrap();
        assert!(cluster.tweak(&nids, false).is_err(), "no storage left");
        assert!(cluster.drop_node(nids[0]).is_err(), "running nodes are killed first");
        assert_eq!(cluster.set_cluster_state(ClusterState::Stopping), Ok(()));
    }
}
