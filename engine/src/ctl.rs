//! `neo ctl`: one request to the cluster, its answer printed for a person (or as JSON).
//!
//! `ctl` finds the primary in the list of masters it is given (a secondary answers with
//! the primary's address), or talks to an admin node that relays to the primary.

use std::net::SocketAddr;
use std::time::Duration;

use wire::messages::{CellInfo, PartitionSource, ReplicationProgress};
use wire::{
    AddPendingNodes, AskClusterState, AskNodeList, AskPartitionList, AskPrimary, ClusterState,
    Message, NodeId, NodeState, NodeType, RequestIdentification, SetClusterState, SetNodeState,
    SetNumReplicas, Tid, TweakPartitionTable,
};

use crate::cluster::Refusal;
use crate::master::{
    FindPrimaryError, answer_or_refusal, identify_to_primary, socket_of, table_of,
};
use crate::net::{Connection, ConnectionError};
use crate::pt::PartitionTable;

const DEADLINE: Duration = Duration::from_secs(10);

/// What to ask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    PrintCluster,
    /// `print pt [MIN [MAX [NID]]]`: partitions `MIN .. MAX` (MAX 0: to the end), the cells
    /// of one node only if given.
    PrintPartitionTable {
        min: u32,
        max: u32,
        nid: Option<NodeId>,
    },
    /// `print node [TYPE]`.
    PrintNodes(Option<NodeType>),
    Start,
    SetCluster(ClusterState),
    SetReplicas(u32),
    Add(Vec<NodeId>),
    Tweak {
        dry_run: bool,
        drop: Vec<NodeId>,
    },
    Kill(NodeId),
    Drop(NodeId),
    PrintPrimary,
    PrintSummary,
    PrintIds,
    /// `truncate TID`: everything committed after `TID` goes, on every storage.
    Truncate(Tid),
    /// `stats [--hgrm DIR]`: every node's counters and latency percentiles (the master's,
    /// each storage core's); with a directory, each histogram also as an `.hgrm` file.
    Stats {
        hgrm: Option<std::path::PathBuf>,
    },
    /// `check [--repair] [PARTITION[:REFERENCE] ...] [MIN_TID [MAX_TID]]`: partitions with
    /// their reference node (an empty list: every partition).
    Check {
        partitions: Vec<(wire::PartitionId, Option<NodeId>)>,
        min_tid: Tid,
        max_tid: Option<Tid>,
        repair: bool,
    },
}

/// How a ctl run ended; the process exit code follows it.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("cannot reach the cluster: {0}")]
    Connection(#[from] ConnectionError),
    #[error("refused: {0}")]
    Refused(Refusal),
    /// The request was carried out and found problems (`check`): the text says which.
    #[error("{0}")]
    Problems(String),
    /// A local failure (the `--hgrm` directory cannot be written).
    #[error("{0}")]
    Io(String),
}

impl CtlError {
    /// 1: the cluster refused; 3: it could not be reached; 4: a check found problems (2 is
    /// bad usage, from the argument parser).
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Refused(_) => 1,
            CtlError::Problems(_) => 4,
            CtlError::Connection(_) => 3,
            CtlError::Io(_) => 2,
        }
    }
}

/// Sends one command and returns the text to print.
pub async fn run(
    masters: &[SocketAddr],
    cluster: &str,
    command: &Command,
    json: bool,
) -> Result<String, CtlError> {
    let identification = RequestIdentification {
        node_type: NodeType::Admin,
        nid: None,
        address: None,
        cluster_name: cluster.into(),
        id_timestamp: None,
        devpath: Vec::new(),
        read_only: false,
        backup: Vec::new(),
        new_nid: None,
    };
    let found = identify_to_primary(masters, NodeType::Admin, cluster, &identification).await;
    let mut connection = match found {
        Ok((connection, _)) => connection,
        Err(FindPrimaryError::Refused(refusal)) => return Err(CtlError::Refused(refusal)),
        Err(FindPrimaryError::Connection(error)) => return Err(error.into()),
    };
    let request: Message = match command {
        Command::PrintCluster => AskClusterState {}.into(),
        Command::PrintNodes(node_type) => AskNodeList { node_type: *node_type }.into(),
        Command::Start => SetClusterState { state: ClusterState::Verifying }.into(),
        Command::SetCluster(state) => SetClusterState { state: *state }.into(),
        Command::SetReplicas(replicas) => SetNumReplicas { replicas: *replicas }.into(),
        Command::Add(nids) => AddPendingNodes { nids: nids.clone() }.into(),
        Command::Tweak { dry_run, drop } => {
            TweakPartitionTable { dry_run: *dry_run, drop: drop.clone() }.into()
        }
        Command::Kill(nid) => SetNodeState { nid: *nid, state: NodeState::Down }.into(),
        Command::Truncate(tid) => wire::Truncate { tid: *tid }.into(),
        Command::Drop(nid) => SetNodeState { nid: *nid, state: NodeState::Unknown }.into(),
        Command::PrintPrimary => {
            let answer = ask(&mut connection, AskPrimary {}.into()).await?;
            // Talking to the primary itself, its address is the one we reached; through an
            // admin node only the id is known.
            // The hello says who answered: an admin node relays the master's acceptance.
            let address = match (connection.peer().node_type, &answer) {
                (NodeType::Master, _) => connection.peer_address().ok(),
                // Through an admin node: the primary's address from the node list.
                (_, Message::AnswerPrimary(primary)) => {
                    let nodes = AskNodeList { node_type: Some(NodeType::Master) };
                    match ask(&mut connection, nodes.into()).await? {
                        Message::AnswerNodeList(list) => list
                            .nodes
                            .iter()
                            .find(|n| n.nid == Some(primary.primary))
                            .and_then(|n| n.address.as_ref())
                            .and_then(socket_of),
                        _ => None,
                    }
                }
                _ => None,
            };
            return Ok(match (&answer, address) {
                (Message::AnswerPrimary(primary), Some(address)) if json => format!(
                    "{{\"primary\": \"{}\", \"address\": \"{address}\"}}\n",
                    primary.primary
                ),
                (Message::AnswerPrimary(primary), Some(address)) => {
                    format!("{} {address}\n", primary.primary)
                }
                _ => render(&answer, json),
            });
        }
        Command::PrintIds => {
            let ids = ask(&mut connection, wire::AskLastIds {}.into()).await?;
            let table = ask(
                &mut connection,
                AskPartitionList { min_offset: 0, max_offset: 0, nid: None }.into(),
            )
            .await?;
            let ptid = match table {
                Message::AnswerPartitionList(list) => list.ptid,
                _ => None,
            };
            let Message::AnswerLastIds(ids) = ids else { return Ok(render(&ids, json)) };
            let show = |id: Option<String>| id.unwrap_or_else(|| "none".to_owned());
            let (oid, tid, ptid) = (
                show(ids.last_oid.map(|o| o.to_string())),
                show(ids.last_tid.map(|t| t.to_string())),
                show(ptid.map(|p| p.0.to_string())),
            );
            return Ok(if json {
                format!(
                    "{{\"last_oid\": \"{oid}\", \"last_tid\": \"{tid}\", \"ptid\": \"{ptid}\"}}\n"
                )
            } else {
                format!("last oid {oid}\nlast tid {tid}\nptid {ptid}\n")
            });
        }
        Command::Stats { hgrm } => {
            let answer = ask(&mut connection, wire::AskNodeStats {}.into()).await?;
            let Message::AnswerNodeStats(answer) = answer else {
                return Ok(render(&answer, json));
            };
            if let Some(directory) = hgrm {
                write_hgrm(directory, &answer.nodes).map_err(|error| {
                    CtlError::Io(format!(
                        "writing .hgrm files into {}: {error}",
                        directory.display()
                    ))
                })?;
            }
            return Ok(render_stats(&answer.nodes, json));
        }
        Command::PrintSummary => {
            let state = ask(&mut connection, AskClusterState {}.into()).await?;
            let nodes = ask(&mut connection, AskNodeList { node_type: None }.into()).await?;
            let list = AskPartitionList { min_offset: 0, max_offset: 0, nid: None };
            let table = ask(&mut connection, list.into()).await?;
            let progress = replication_progress(&mut connection).await?;
            return Ok(summary(&state, &nodes, &table, &progress, json));
        }
        Command::Check { partitions, min_tid, max_tid, repair } => {
            let request = wire::CheckReplicas {
                partitions: partitions
                    .iter()
                    .map(|&(partition, source)| PartitionSource { partition, source })
                    .collect(),
                min_tid: *min_tid,
                max_tid: *max_tid,
                repair: *repair,
            };
            let answer = ask_within(&mut connection, request.into(), None).await?;
            let Message::AnswerCheckReplicas(answer) = answer else {
                return Ok(render(&answer, json));
            };
            let text = render_check(&answer, json);
            // Only cells judged bad, or left unchecked, fail the command.
            return if answer.findings.is_empty() {
                Ok(text)
            } else {
                Err(CtlError::Problems(text))
            };
        }
        Command::PrintPartitionTable { min, max, nid } => {
            let list = AskPartitionList { min_offset: *min, max_offset: *max, nid: *nid };
            let table = ask(&mut connection, list.into()).await?;
            let mut progress = replication_progress(&mut connection).await?;
            if (*min, *max, *nid) == (0, 0, None) {
                return Ok(render_table_and_progress(&table, &progress, json));
            }
            // Some rows, or one node's cells: said so, with the partition numbers.
            let Message::AnswerPartitionList(list) = &table else {
                return Ok(render(&table, json));
            };
            let shown: Vec<wire::PartitionId> = list.rows.iter().map(|r| r.partition).collect();
            progress.retain(|c| shown.contains(&c.partition) && nid.is_none_or(|n| c.nid == n));
            return Ok(render_rows(list, &progress, json));
        }
    };
    let answer = ask(&mut connection, request).await?;
    Ok(render(&answer, json))
}

/// A histogram's unit for people: microseconds for latencies, bytes otherwise.
fn unit_of(name: &str) -> (f64, &'static str) {
    if name.ends_with("_seconds") { (1000.0, "us") } else { (1.0, "") }
}

/// `ctl stats`: per node, its counters on one line, then one line per histogram with its
/// count and percentiles.
fn render_stats(nodes: &[wire::NodeStats], json: bool) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    if json {
        let nodes: Vec<String> = nodes
            .iter()
            .map(|node| {
                let counters: Vec<String> = node
                    .counters
                    .iter()
                    .map(|c| format!("\"{}\": {}", c.name.as_str(), c.value))
                    .collect();
                let histograms: Vec<String> = node
                    .histograms
                    .iter()
                    .filter_map(|h| {
                        let histogram = crate::metrics::histogram_from_wire(&h.encoded)?;
                        let (scale, suffix) = unit_of(h.name.as_str());
                        let at = |q: f64| histogram.value_at_quantile(q) as f64 / scale;
                        let unit = if suffix.is_empty() { "bytes" } else { suffix };
                        Some(format!(
                            "\"{}\": {{\"unit\": \"{unit}\", \"count\": {}, \"p50\": {}, \"p90\": {}, \"p99\": {}, \"p999\": {}, \"max\": {}}}",
                            h.name.as_str(),
                            histogram.len(),
                            at(0.5),
                            at(0.9),
                            at(0.99),
                            at(0.999),
                            histogram.max() as f64 / scale
                        ))
                    })
                    .collect();
                format!(
                    "{{\"node\": \"{}\", \"counters\": {{{}}}, \"histograms\": {{{}}}}}",
                    node.nid,
                    counters.join(", "),
                    histograms.join(", ")
                )
            })
            .collect();
        let _ = writeln!(out, "[{}]", nodes.join(", "));
        return out;
    }
    for node in nodes {
        let counters: Vec<String> =
            node.counters.iter().map(|c| format!("{} {}", c.name.as_str(), c.value)).collect();
        let _ = writeln!(out, "{}: {}", node.nid, counters.join(", "));
        for stat in &node.histograms {
            let Some(histogram) = crate::metrics::histogram_from_wire(&stat.encoded) else {
                let _ = writeln!(out, "  {:<20} (unreadable)", stat.name.as_str());
                continue;
            };
            let (unit, suffix) = unit_of(stat.name.as_str());
            let at = |q: f64| histogram.value_at_quantile(q) as f64 / unit;
            let _ = writeln!(
                out,
                "  {:<20} count {:>9}  p50 {:>9.1}{suffix}  p90 {:>9.1}{suffix}  p99 {:>9.1}{suffix}  p999 {:>9.1}{suffix}  max {:>9.1}{suffix}",
                stat.name.as_str(),
                histogram.len(),
                at(0.5),
                at(0.9),
                at(0.99),
                at(0.999),
                histogram.max() as f64 / unit
            );
        }
    }
    out
}

/// Each histogram as `DIR/NODE-NAME.hgrm` (microseconds for latencies), as neo-bench
/// writes its own.
fn write_hgrm(directory: &std::path::Path, nodes: &[wire::NodeStats]) -> std::io::Result<()> {
    std::fs::create_dir_all(directory)?;
    for node in nodes {
        for stat in &node.histograms {
            let Some(histogram) = crate::metrics::histogram_from_wire(&stat.encoded) else {
                continue;
            };
            let (unit, _) = unit_of(stat.name.as_str());
            let path = directory.join(format!("{}-{}.hgrm", node.nid, stat.name.as_str()));
            std::fs::write(path, crate::metrics::hgrm(&histogram, unit))?;
        }
    }
    Ok(())
}

/// The cells replicating and how far they are (none from a master that does not say).
async fn replication_progress(
    connection: &mut Connection,
) -> Result<Vec<ReplicationProgress>, CtlError> {
    match ask(connection, wire::AskReplicationProgress {}.into()).await {
        Ok(Message::AnswerReplicationProgress(answer)) => Ok(answer.cells),
        Ok(_) | Err(CtlError::Refused(_)) => Ok(Vec::new()),
        Err(error) => Err(error),
    }
}

/// Bytes for a person.
fn bytes_text(bytes: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{value:.0} B") } else { format!("{value:.1} {}", units[unit]) }
}

/// Seconds for a person.
fn seconds_text(seconds: f64) -> String {
    match seconds {
        s if s < 120.0 => format!("{s:.0} s"),
        s if s < 7200.0 => format!("{:.0} min", s / 60.0),
        s if s < 172_800.0 => format!("{:.1} h", s / 3600.0),
        s => format!("{:.1} days", s / 86400.0),
    }
}

/// What one replicating cell's report means: bytes per second, the history left to copy
/// (seconds between its position and its target, as ZODB timestamps), and at the rate the
/// position moved so far, when it will be done.
struct ProgressFigures {
    bytes_per_second: f64,
    history_left_seconds: Option<f64>,
    eta_seconds: Option<f64>,
}

fn progress_figures(cell: &ReplicationProgress) -> ProgressFigures {
    let seconds = |tid: wire::Tid| tid.to_unix_nanos().map(|n| n as f64 / 1e9);
    let elapsed = (cell.elapsed_ms as f64 / 1000.0).max(0.001);
    let history_left = match (seconds(cell.target), seconds(cell.position)) {
        (Some(target), Some(position)) if cell.position.0 > 0 => Some((target - position).max(0.0)),
        _ => None,
    };
    let moved = match (seconds(cell.position), seconds(cell.start)) {
        (Some(position), Some(start)) if cell.start.0 > 0 => Some(position - start),
        _ => None,
    };
    let eta = match (history_left, moved) {
        (Some(left), Some(moved)) if moved > 0.0 => Some(left / (moved / elapsed)),
        _ => None,
    };
    ProgressFigures {
        bytes_per_second: cell.bytes as f64 / elapsed,
        history_left_seconds: history_left,
        eta_seconds: eta,
    }
}

fn render_table_and_progress(
    table: &Message,
    progress: &[ReplicationProgress],
    json: bool,
) -> String {
    let rendered = render(table, json);
    if json {
        // The table's object, with the replicating cells added.
        let object = rendered.trim_end().trim_end_matches('}');
        return format!("{object}, \"replicating\": {}}}\n", progress_json(progress));
    }
    rendered + &progress_lines(progress)
}

/// The replicating cells, as a JSON array.
fn progress_json(progress: &[ReplicationProgress]) -> String {
    let cells: Vec<String> = progress
        .iter()
        .map(|cell| {
            let figures = progress_figures(cell);
            let optional = |v: Option<f64>| v.map_or("null".to_owned(), |v| format!("{v:.1}"));
            format!(
                "{{\"nid\": \"{}\", \"partition\": {}, \"position\": \"{}\", \"target\": \"{}\", \"bytes\": {}, \"bytes_per_second\": {:.0}, \"history_left_seconds\": {}, \"eta_seconds\": {}}}",
                cell.nid,
                cell.partition.0,
                cell.position,
                cell.target,
                cell.bytes,
                figures.bytes_per_second,
                optional(figures.history_left_seconds),
                optional(figures.eta_seconds),
            )
        })
        .collect();
    format!("[{}]", cells.join(", "))
}

/// The replicating cells, a line each.
fn progress_lines(progress: &[ReplicationProgress]) -> String {
    let mut out = String::new();
    for cell in progress {
        let figures = progress_figures(cell);
        let history = match figures.history_left_seconds {
            Some(left) => format!("{} of history left", seconds_text(left)),
            None => "from the beginning".to_owned(),
        };
        let eta = figures
            .eta_seconds
            .map_or(String::new(), |eta| format!(", about {} to go", seconds_text(eta)));
        out.push_str(&format!(
            "replicating: {} partition {}: {} copied at {}/s, {history}{eta}\n",
            cell.nid,
            cell.partition.0,
            bytes_text(cell.bytes as f64),
            bytes_text(figures.bytes_per_second),
        ));
    }
    out
}

/// Some rows of the table (`print pt MIN MAX [NID]`): the partitions shown, a letter per
/// cell of the nodes shown, and the replicating cells among them.
fn render_rows(
    list: &wire::AnswerPartitionList,
    progress: &[ReplicationProgress],
    json: bool,
) -> String {
    let ptid = list.ptid.map_or("null".to_owned(), |p| p.0.to_string());
    if json {
        let rows: Vec<String> = list
            .rows
            .iter()
            .map(|row| {
                let cells: Vec<String> =
                    row.cells.iter().map(|c| format!("[\"{}\", \"{}\"]", c.nid, c.state)).collect();
                format!("{{\"partition\": {}, \"cells\": [{}]}}", row.partition.0, cells.join(", "))
            })
            .collect();
        return format!(
            "{{\"ptid\": {ptid}, \"replicas\": {}, \"rows\": [{}], \"replicating\": {}}}\n",
            list.num_replicas,
            rows.join(", "),
            progress_json(progress)
        );
    }
    let (first, last) = match (list.rows.first(), list.rows.last()) {
        (Some(first), Some(last)) => (first.partition.0, last.partition.0),
        _ => (0, 0),
    };
    let rows: Vec<Vec<CellInfo>> = list.rows.iter().map(|r| r.cells.clone()).collect();
    let table = table_of(list.ptid.unwrap_or(wire::Ptid(0)), list.num_replicas, &rows);
    format!(
        "ptid {ptid}, {} replicas, partitions {first} to {last}\n{}{}",
        list.num_replicas,
        table.grid(),
        progress_lines(progress)
    )
}

/// Sends a request and returns its answer; notifications that come first are skipped.
async fn ask(connection: &mut Connection, request: Message) -> Result<Message, CtlError> {
    ask_within(connection, request, Some(DEADLINE)).await
}

/// `ask`, waiting for the answer as long as `deadline` (forever: a check takes as long as
/// reading the data).
async fn ask_within(
    connection: &mut Connection,
    request: Message,
    deadline: Option<Duration>,
) -> Result<Message, CtlError> {
    let msg_id = connection.request(&request).await?;
    let frame = loop {
        let frame = connection.receive(deadline).await?;
        if frame.msg_id == msg_id && frame.kind.is_answer() {
            break frame;
        }
    };
    answer_or_refusal(&frame).map_err(CtlError::Refused)
}

/// One screen: the cluster's state, its nodes by type and state, its cells by state, and
/// warnings: cells not up to date (how many replicating), nodes down.
fn summary(
    state: &Message,
    nodes: &Message,
    table: &Message,
    progress: &[ReplicationProgress],
    json: bool,
) -> String {
    let state = match state {
        Message::AnswerClusterState(answer) => answer.state.to_string(),
        _ => "?".to_owned(),
    };
    let mut node_counts = std::collections::BTreeMap::new();
    if let Message::AnswerNodeList(list) = nodes {
        for node in &list.nodes {
            *node_counts.entry(format!("{} {}", node.node_type, node.state)).or_insert(0) += 1;
        }
    }
    let mut cell_counts = std::collections::BTreeMap::new();
    let mut partitions = 0;
    if let Message::AnswerPartitionList(list) = table {
        partitions = list.rows.len();
        for cell in list.rows.iter().flat_map(|r| &r.cells) {
            *cell_counts.entry(cell.state.to_string()).or_insert(0) += 1;
        }
    }
    let join = |counts: &std::collections::BTreeMap<String, usize>, quote: bool| {
        counts
            .iter()
            .map(|(k, v)| if quote { format!("\"{k}\": {v}") } else { format!("{v} {k}") })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut warnings = Vec::new();
    let not_current: usize = cell_counts
        .iter()
        .filter(|(state, _)| state.as_str() != "UP_TO_DATE")
        .map(|(_, count)| count)
        .sum();
    if not_current > 0 {
        warnings
            .push(format!("{not_current} cells not up to date ({} replicating)", progress.len()));
    }
    let down: usize =
        node_counts.iter().filter(|(kind, _)| kind.ends_with("DOWN")).map(|(_, count)| count).sum();
    if down > 0 {
        warnings.push(format!("{down} nodes down"));
    }
    if json {
        let warnings: Vec<String> = warnings.iter().map(|w| format!("\"{w}\"")).collect();
        format!(
            "{{\"state\": \"{state}\", \"partitions\": {partitions}, \"nodes\": {{{}}}, \"cells\": {{{}}}, \"warnings\": [{}]}}\n",
            join(&node_counts, true),
            join(&cell_counts, true),
            warnings.join(", ")
        )
    } else {
        let cells = if cell_counts.is_empty() {
            "none (no partition table yet)".to_owned()
        } else {
            join(&cell_counts, false)
        };
        let mut out = format!(
            "cluster {state}, {partitions} partitions\nnodes: {}\ncells: {cells}\n",
            join(&node_counts, false),
        );
        for warning in warnings {
            out.push_str(&format!("warning: {warning}\n"));
        }
        out
    }
}

fn render(answer: &Message, json: bool) -> String {
    match answer {
        Message::AnswerClusterState(answer) if json => {
            format!("{{\"state\": \"{}\"}}\n", answer.state)
        }
        Message::AnswerClusterState(answer) => format!("{}\n", answer.state),
        Message::AnswerPartitionList(list) => {
            let rows: Vec<Vec<CellInfo>> = list.rows.iter().map(|r| r.cells.clone()).collect();
            let table = list.ptid.map(|ptid| table_of(ptid, list.num_replicas, &rows));
            render_table(table.as_ref(), json)
        }
        Message::AnswerTweakPartitionTable(answer) => {
            let table = table_of(wire::Ptid(0), 0, &answer.rows);
            let changed = if answer.changed { "changes:" } else { "no change:" };
            if json {
                render_table(Some(&table), true)
            } else {
                format!("{changed}\n{}", table.grid())
            }
        }
        Message::AnswerNodeList(list) if json => {
            let nodes: Vec<String> = list
                .nodes
                .iter()
                .map(|n| {
                    let nid = n.nid.map_or("null".to_owned(), |nid| format!("\"{nid}\""));
                    let address = n
                        .address
                        .as_ref()
                        .and_then(socket_of)
                        .map_or("null".to_owned(), |a| format!("\"{a}\""));
                    format!(
                        "{{\"nid\": {nid}, \"type\": \"{}\", \"state\": \"{}\", \"address\": {address}}}",
                        n.node_type, n.state
                    )
                })
                .collect();
            format!("[{}]\n", nodes.join(", "))
        }
        Message::AnswerNodeList(list) => {
            let mut out = String::new();
            for node in &list.nodes {
                let nid = node.nid.map_or("-".to_owned(), |nid| nid.to_string());
                out.push_str(&format!("{nid:<6} {:<8} {}", node.node_type, node.state));
                if let Some(address) = node.address.as_ref().and_then(socket_of) {
                    out.push_str(&format!(" {address}"));
                }
                out.push('\n');
            }
            out
        }
        Message::AnswerPrimary(answer) if json => {
            format!("{{\"primary\": \"{}\"}}\n", answer.primary)
        }
        Message::AnswerPrimary(answer) => format!("{}\n", answer.primary),
        _ if json => "{\"ok\": true}\n".to_owned(),
        _ => "ok\n".to_owned(),
    }
}

/// What a check found, one line per cell (and the state the cell is in now).
fn render_check(answer: &wire::AnswerCheckReplicas, json: bool) -> String {
    if json {
        let findings: Vec<String> = answer
            .findings
            .iter()
            .map(|f| {
                let optional = |v: Option<String>| v.map_or("null".to_owned(), |v| format!("\"{v}\""));
                format!(
                    "{{\"partition\": {}, \"nid\": \"{}\", \"tid\": {}, \"oid\": {}, \"bad\": {}, \"state\": \"{}\", \"what\": {}}}",
                    f.partition.0,
                    f.nid,
                    optional(f.tid.map(|t| t.to_string())),
                    optional(f.oid.map(|o| o.to_string())),
                    f.bad,
                    f.state,
                    json_string(f.what.as_str()),
                )
            })
            .collect();
        return format!(
            "{{\"checked\": {}, \"min_tid\": \"{}\", \"max_tid\": \"{}\", \"findings\": [{}]}}\n",
            answer.checked,
            answer.min_tid,
            answer.max_tid,
            findings.join(", ")
        );
    }
    let mut out = format!(
        "checked {} partition{} from {} to {}: ",
        answer.checked,
        if answer.checked == 1 { "" } else { "s" },
        answer.min_tid,
        answer.max_tid
    );
    if answer.findings.is_empty() {
        out.push_str("the replicas match\n");
        return out;
    }
    let count = answer.findings.len();
    out.push_str(&format!("{count} problem{}\n", if count == 1 { "" } else { "s" }));
    for finding in &answer.findings {
        out.push_str(&format!(
            "partition {} {}: {} ({})\n",
            finding.partition.0, finding.nid, finding.what, finding.state
        ));
    }
    out
}

/// `text` as a JSON string.
fn json_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn render_table(table: Option<&PartitionTable>, json: bool) -> String {
    match (table, json) {
        (None, true) => "{\"ptid\": null, \"rows\": []}\n".to_owned(),
        (None, false) => "no partition table yet\n".to_owned(),
        (Some(table), true) => {
            let rows: Vec<String> = table
                .rows
                .iter()
                .map(|row| {
                    let cells: Vec<String> =
                        row.iter().map(|c| format!("[\"{}\", \"{}\"]", c.nid, c.state)).collect();
                    format!("[{}]", cells.join(", "))
                })
                .collect();
            format!(
                "{{\"ptid\": {}, \"replicas\": {}, \"rows\": [{}]}}\n",
                table.ptid.0,
                table.replicas,
                rows.join(", ")
            )
        }
        (Some(table), false) => {
            format!(
                "ptid {}, {} replicas, {} partitions\n{}",
                table.ptid.0,
                table.replicas,
                table.partitions(),
                table.grid()
            )
        }
    }
}
