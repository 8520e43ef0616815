//! A storage core's driver, as far as the cluster goes: it keeps its node id and its copy of
//! the partition table in its log store, identifies to the primary master (reconnecting when
//! the master goes away), answers recovery, and follows the table's changes. Serving
//! clients comes with the transactions issue.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use logstore::{LogStore, Metadata, Options};
use wire::{Message, NodeState, NodeType, NotifyReady, RequestIdentification, Text};

use crate::master::{FindPrimaryError, identify_to_primary, partition_table_answer, table_of};
use crate::net::ConnectionError;
use crate::pt::PartitionTable;

/// Wait between attempts to reach the master.
const RECONNECT_DELAY: Duration = Duration::from_millis(500);

#[derive(Clone, Debug)]
pub struct StorageOptions {
    pub cluster: String,
    /// Every master's address: the primary is found among them.
    pub masters: Vec<SocketAddr>,
    pub data: PathBuf,
    /// Topology label: the partition table never puts two copies on one host.
    pub host: String,
}

/// Why a storage core stopped.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("store: {0}")]
    Store(#[from] logstore::StoreError),
    #[error("the master refused this node: {0}")]
    Refused(String),
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
    loop {
        let outcome = futures_lite::future::or(session(&mut store, &options), async {
            crate::shutdown::wait().await;
            Ok(())
        })
        .await;
        if crate::shutdown::requested() {
            // Everything durable, and a checkpoint so that the next start maps the index.
            store.flush()?;
            store.checkpoint()?;
            eprintln!("neo storage: stopped cleanly");
            return Ok(());
        }
        match outcome {
            Ok(()) => {}
            Err(SessionError::Refused(reason)) => return Err(StorageError::Refused(reason)),
            Err(SessionError::Store(error)) => return Err(error.into()),
            Err(SessionError::Connection(error)) => {
                eprintln!("neo storage: masters {:?}: {error}; retrying", options.masters);
            }
        }
        glommio::timer::sleep(RECONNECT_DELAY).await;
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

async fn session(store: &mut LogStore, options: &StorageOptions) -> Result<(), SessionError> {
    let identification = RequestIdentification {
        node_type: NodeType::Storage,
        nid: store.metadata().node_id,
        address: None,
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
        Err(error @ FindPrimaryError::NoPrimary(_)) => {
            return Err(ConnectionError::Io(std::io::Error::other(error.to_string())).into());
        }
    };
    let nid = accept.your_nid;
    if nid != store.metadata().node_id {
        let metadata = Metadata { node_id: nid, ..store.metadata().clone() };
        store.set_metadata(metadata)?;
        store.flush()?;
    }
    eprintln!("neo storage: identified as {}", nid.map_or("?".into(), |n| n.to_string()));
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
                eprintln!("neo storage: cluster is {}", info.state)
            }
            Message::NotifyNodeInformation(info) => {
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
