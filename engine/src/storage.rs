//! A storage core's driver, as far as the cluster goes: it keeps its node id and its copy of
//! the partition table in its log store, identifies to the primary master (reconnecting when
//! the master goes away), answers recovery, and follows the table's changes. It listens for
//! other nodes and admits only those the primary has told it of; what they may ask beyond a
//! ping (object data) comes with the transactions issue.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use glommio::net::TcpListener;
use logstore::{LogStore, Metadata, Options};
use wire::messages::NodeInfo;
use wire::{
    AcceptIdentification, Body, ErrorCode, Hello, Message, NodeId, NodeState, NodeType,
    NotifyReady, Pong, RequestIdentification, Text,
};

use crate::cluster::Refusal;
use crate::master::{
    FindPrimaryError, IDENTIFICATION_DEADLINE, address_of, identify_to_primary,
    partition_table_answer, table_of, to_error,
};
use crate::net::{Connection, ConnectionError};
use crate::pt::PartitionTable;

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
}

/// The nodes the primary has told this core of: who may connect.
type KnownNodes = Rc<RefCell<BTreeMap<NodeId, NodeInfo>>>;

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

/// Runs a storage core: forever, unless its store fails or the master refuses it.
pub async fn serve(options: StorageOptions) -> Result<(), StorageError> {
    let mut store = LogStore::open_directory(&options.data, Options::default())?;
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
    let listener = TcpListener::bind(options.listen)
        .map_err(|error| StorageError::Listen(options.listen, error.to_string()))?;
    let address = listener
        .local_addr()
        .map_err(|error| StorageError::Listen(options.listen, error.to_string()))?;
    eprintln!("neo storage: listening on {address}");
    let known: KnownNodes = Rc::default();
    let me = Rc::new(Cell::new(None));
    // Dropped (and so cancelled) when this function returns.
    let _accepting = glommio::spawn_local(accept_peers(
        listener,
        options.cluster.clone(),
        Rc::clone(&known),
        Rc::clone(&me),
    ));
    loop {
        let peers = Peers { address, known: &known, me: &me };
        let outcome = futures_lite::future::or(session(&mut store, &options, peers), async {
            crate::shutdown::wait().await;
            Ok(())
        })
        .await;
        let stopping = crate::shutdown::requested();
        // A session that got as far as identification lost a working master: try again
        // soon. One that never got there retries at the slower pace.
        let retry = if me.get().is_some() { REJOIN_DELAY } else { RECONNECT_DELAY };
        match outcome {
            _ if stopping => {}
            Err(SessionError::Stopping) => {}
            Ok(()) => {
                glommio::timer::sleep(retry).await;
                continue;
            }
            Err(SessionError::Refused(reason)) => return Err(StorageError::Refused(reason)),
            Err(SessionError::Store(error)) => return Err(error.into()),
            Err(SessionError::Connection(error)) => {
                eprintln!("neo storage: masters {:?}: {error}; retrying", options.masters);
                glommio::timer::sleep(retry).await;
                continue;
            }
        }
        // Everything durable, and a checkpoint so that the next start maps the index.
        store.flush()?;
        store.checkpoint()?;
        eprintln!("neo storage: stopped cleanly");
        return Ok(());
    }
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    #[error(transparent)]
    Store(#[from] logstore::StoreError),
    #[error("refused: {0}")]
    Refused(String),
    #[error("the cluster is stopping")]
    Stopping,
}

fn table(store: &LogStore) -> Option<PartitionTable> {
    let metadata = store.metadata();
    metadata.ptid.map(|ptid| table_of(ptid, metadata.replicas, &metadata.partition_table))
}

fn persist(store: &mut LogStore, table: &PartitionTable) -> Result<(), logstore::StoreError> {
    let metadata = Metadata {
        ptid: Some(table.ptid),
        replicas: table.replicas,
        partitions: table.partitions(),
        partition_table: partition_table_answer(Some(table)).rows,
        ..store.metadata().clone()
    };
    store.set_metadata(metadata)?;
    store.flush()?;
    Ok(())
}

/// What a session shares with the listening side.
struct Peers<'a> {
    address: SocketAddr,
    known: &'a KnownNodes,
    me: &'a Cell<Option<NodeId>>,
}

async fn session(
    store: &mut LogStore,
    options: &StorageOptions,
    peers: Peers<'_>,
) -> Result<(), SessionError> {
    // A new primary sends the whole node list again; until then nobody is admitted.
    peers.known.borrow_mut().clear();
    peers.me.set(None);
    let identification = RequestIdentification {
        node_type: NodeType::Storage,
        nid: store.metadata().node_id,
        address: Some(address_of(peers.address)),
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
    let (mut connection, accept) = match found {
        Ok(found) => found,
        Err(FindPrimaryError::Refused(refusal)) => {
            return Err(SessionError::Refused(refusal.to_string()));
        }
        Err(FindPrimaryError::Connection(error)) => return Err(error.into()),
    };
    let nid = accept.your_nid;
    if nid != store.metadata().node_id {
        let metadata = Metadata { node_id: nid, ..store.metadata().clone() };
        store.set_metadata(metadata)?;
        store.flush()?;
    }
    eprintln!("neo storage: identified as {}", nid.map_or("?".into(), |n| n.to_string()));
    peers.me.set(nid);
    loop {
        let frame = connection.receive(None).await?;
        match frame.message().map_err(ConnectionError::from)? {
            Message::AskLastIds(_) => {
                let (last_tid, last_oid, first_tid) = store.last_ids();
                connection
                    .send(frame.msg_id, &wire::AnswerLastIds { last_tid, last_oid, first_tid })
                    .await?;
            }
            Message::AskPartitionTable(_) => {
                let answer = partition_table_answer(table(store).as_ref());
                connection.send(frame.msg_id, &answer).await?;
            }
            Message::SendPartitionTable(send) => {
                if let Some(ptid) = send.ptid {
                    persist(store, &table_of(ptid, send.num_replicas, &send.rows))?;
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
                if let Some(mut current) = table(store) {
                    match current.apply(notify.ptid, notify.num_replicas, &changes) {
                        Ok(()) => persist(store, &current)?,
                        // A gap: ask again for the whole table at the next connection.
                        Err(error) => {
                            eprintln!("neo storage: {error}; reconnecting");
                            return Ok(());
                        }
                    }
                }
            }
            Message::StartOperation(_) => {
                connection.request(&NotifyReady {}).await?;
            }
            Message::NotifyClusterInformation(info) => {
                eprintln!("neo storage: cluster is {}", info.state);
                if info.state == wire::ClusterState::Stopping {
                    return Err(SessionError::Stopping);
                }
            }
            Message::NotifyNodeInformation(info) => {
                {
                    let mut known = peers.known.borrow_mut();
                    for node in info.nodes.iter() {
                        let Some(id) = node.nid else { continue };
                        if node.state == NodeState::Unknown {
                            known.remove(&id);
                        } else {
                            known.insert(id, node.clone());
                        }
                    }
                }
                let told = info.nodes.iter().find(|n| n.nid == nid);
                let gone = told.filter(|n| matches!(n.state, NodeState::Down | NodeState::Unknown));
                if let Some(node) = gone {
                    return Err(SessionError::Refused(format!(
                        "the master set this node {}",
                        node.state
                    )));
                }
            }
            Message::Error(error) => {
                eprintln!("neo storage: master says {}: {}", error.code, error.message)
            }
            _ => {}
        }
    }
}

/// Accepts other nodes' connections until the task is dropped.
async fn accept_peers(
    listener: TcpListener,
    cluster: String,
    known: KnownNodes,
    me: Rc<Cell<Option<NodeId>>>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(error) => {
                eprintln!("neo storage: accept: {error}");
                glommio::timer::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (cluster, known, me) = (cluster.clone(), Rc::clone(&known), Rc::clone(&me));
        glommio::spawn_local(async move {
            let peer = stream.peer_addr().map_or_else(|_| "?".to_owned(), |a| a.to_string());
            if let Err(error) = serve_peer(stream, &cluster, &known, &me).await {
                eprintln!("neo storage: connection from {peer}: {error}");
            }
        })
        .detach();
    }
}

/// One connection from another node: identification checked against the node list, then
/// pings answered; every other request is refused with a reason.
async fn serve_peer(
    stream: glommio::net::TcpStream,
    cluster: &str,
    known: &KnownNodes,
    me: &Cell<Option<NodeId>>,
) -> Result<(), ConnectionError> {
    let ours = Hello::new(NodeType::Storage, cluster);
    let mut connection = Connection::handshake(stream, ours, IDENTIFICATION_DEADLINE).await?;
    let frame = connection.receive(Some(IDENTIFICATION_DEADLINE)).await?;
    let admitted = match frame.message() {
        Ok(Message::RequestIdentification(request)) => {
            admit(&request, cluster, &known.borrow(), me.get())
        }
        Ok(_) => {
            Err(Refusal { code: ErrorCode::ProtocolError, message: "identify first".to_owned() })
        }
        Err(error) => Err(Refusal { code: ErrorCode::ProtocolError, message: error.to_string() }),
    };
    let accept = match admitted {
        Ok(accept) => accept,
        Err(refusal) => {
            connection.send(frame.msg_id, &to_error(&refusal)).await?;
            return connection.close().await;
        }
    };
    connection.send(frame.msg_id, &accept).await?;
    loop {
        let frame = connection.receive(None).await?;
        // Answers and notifications expect nothing back.
        if frame.kind.answer().is_none() {
            continue;
        }
        match frame.message() {
            Ok(Message::Ping(_)) => connection.send(frame.msg_id, &Pong {}).await?,
            Ok(message) => {
                let refusal = Refusal {
                    code: ErrorCode::NotReady,
                    message: format!("this storage does not serve {} yet", message.kind()),
                };
                connection.send(frame.msg_id, &to_error(&refusal)).await?;
            }
            Err(error) => {
                let refusal =
                    Refusal { code: ErrorCode::ProtocolError, message: error.to_string() };
                connection.send(frame.msg_id, &to_error(&refusal)).await?;
                return Err(error.into());
            }
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
    let Some(node) = known.get(&nid).filter(|n| n.node_type == request.node_type) else {
        return refuse(
            ErrorCode::NotReady,
            format!("{nid} is not in the node list the primary sent"),
        );
    };
    if matches!(node.state, NodeState::Down | NodeState::Unknown) {
        return refuse(ErrorCode::NotReady, format!("{nid} is {}", node.state));
    }
    if request.id_timestamp.is_some() && request.id_timestamp != node.id_timestamp {
        return refuse(
            ErrorCode::NotReady,
            format!("{nid} was identified at another time than the primary told this storage"),
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
        let stale = refusal(&request(Some(client), "c", Some(6)), Some(me));
        assert!(stale.message.contains("another time"), "{stale}");
        let unknown =
            refusal(&request(Some(NodeId::new(NodeType::Client, 2)), "c", None), Some(me));
        assert!(unknown.message.contains("not in the node list"), "{unknown}");
        let gone = refusal(&request(Some(down), "c", None), Some(me));
        assert!(gone.message.contains("DOWN"), "{gone}");
        assert!(refusal(&request(None, "c", None), Some(me)).message.contains("no node id"));
        let admin = RequestIdentification {
            node_type: NodeType::Admin,
            ..request(Some(NodeId::new(NodeType::Admin, 1)), "c", None)
        };
        assert!(refusal(&admin, Some(me)).message.contains("nothing to ask a storage"));
    }
}
