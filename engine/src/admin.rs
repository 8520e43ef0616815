//! The admin node: `neo ctl` talks to it, and it forwards each request to the primary
//! master over a connection of its own, relaying the answer. It keeps no state: a restarted
//! master is reached again at the next request.

use std::net::SocketAddr;
use std::time::Duration;

use glommio::net::{TcpListener, TcpStream};
use wire::{Body, Hello, Message, NodeType, RequestIdentification, Text};

use crate::master::{FindPrimaryError, identify_to_primary};
use crate::net::{Connection, ConnectionError};

const DEADLINE: Duration = Duration::from_secs(10);

/// Serves ctl connections on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, cluster: String, masters: Vec<SocketAddr>) {
    crate::logging::set_node("admin");
    let mut acceptor = crate::net::Acceptor::new(listener, Hello::new(NodeType::Admin, &cluster));
    loop {
        let (stream, admission) = acceptor.next().await;
        let (cluster, masters) = (cluster.clone(), masters.clone());
        glommio::spawn_local(async move {
            let _counted = admission;
            let peer = stream.peer_addr().map_or_else(|_| "?".to_owned(), |a| a.to_string());
            let outcome = relay(stream, &cluster, &masters).await;
            if let Err(error) = outcome.filter_closed() {
                tracing::warn!("connection from {peer}: {error}");
            }
        })
        .detach();
    }
}

async fn relay(
    stream: TcpStream,
    cluster: &str,
    masters: &[SocketAddr],
) -> Result<(), ConnectionError> {
    let hello = Hello::new(NodeType::Admin, cluster);
    let mut ctl = Connection::accept(stream, hello, DEADLINE).await?;
    let identification = ctl.receive(Some(DEADLINE)).await?;
    // Only ctl (an admin's hello and identification; with TLS, a certificate with the
    // neo-admin role) is relayed.
    let hello_type = ctl.peer().node_type;
    let refusal = match identification.message() {
        Ok(Message::RequestIdentification(request))
            if hello_type != NodeType::Admin || request.node_type != NodeType::Admin =>
        {
            Some((
                wire::ErrorCode::Denied,
                format!(
                    "an admin node serves ctl only: this connection identified as {} (its \
                     hello: {})",
                    request.node_type, hello_type
                ),
            ))
        }
        Ok(Message::RequestIdentification(request)) if request.cluster_name.as_str() == cluster => {
            None
        }
        Ok(Message::RequestIdentification(request)) => Some((
            wire::ErrorCode::ProtocolError,
            format!(
                "this admin serves cluster {cluster:?}, not {:?}",
                request.cluster_name.as_str()
            ),
        )),
        Ok(other) => {
            Some((wire::ErrorCode::ProtocolError, format!("identify first, not {}", other.kind())))
        }
        Err(error) => Some((wire::ErrorCode::ProtocolError, error.to_string())),
    };
    if let Some((code, message)) = refusal {
        tracing::warn!(
            "refused {}: {message}",
            ctl.peer_address().map_or_else(|_| "?".to_owned(), |a| a.to_string())
        );
        let error = wire::Error { code, message: message.into() };
        ctl.send(identification.msg_id, &error).await?;
        return ctl.close().await;
    }
    let ours = RequestIdentification {
        node_type: NodeType::Admin,
        nid: None,
        address: None,
        cluster_name: Text::from(cluster),
        id_timestamp: None,
        devpath: Vec::new(),
        read_only: false,
        backup: Vec::new(),
        new_nid: None,
    };
    let mut master = match identify_to_primary(masters, NodeType::Admin, cluster, &ours).await {
        Ok((master, accept)) => {
            ctl.send(identification.msg_id, &accept).await?;
            master
        }
        Err(FindPrimaryError::Refused(refusal)) => {
            let error = wire::Error { code: refusal.code, message: Text::from(refusal.message) };
            ctl.send(identification.msg_id, &error).await?;
            return Ok(());
        }
        Err(FindPrimaryError::Connection(error)) => return Err(error),
    };
    loop {
        let request = ctl.receive(None).await?;
        let answer = exchange(&mut master, &request.message()?).await?;
        ctl.send(request.msg_id, &answer).await?;
    }
}

trait FilterClosed {
    /// A peer that closed between frames is not an error.
    fn filter_closed(self) -> Result<(), ConnectionError>;
}

impl FilterClosed for Result<(), ConnectionError> {
    fn filter_closed(self) -> Result<(), ConnectionError> {
        match self {
            Err(ConnectionError::Closed { mid_frame: false }) => Ok(()),
            other => other,
        }
    }
}

/// Sends a request to the master and returns its answer (notifications are skipped).
async fn exchange(master: &mut Connection, request: &Message) -> Result<Message, ConnectionError> {
    let msg_id = master.request(request).await?;
    // A replica check answers when it is over: as long as reading the data takes.
    let deadline = match request {
        Message::CheckReplicas(_) => None,
        _ => Some(DEADLINE),
    };
    loop {
        let frame = master.receive(deadline).await?;
        if frame.msg_id == msg_id && frame.kind.is_answer() {
            return Ok(frame.message()?);
        }
    }
}
