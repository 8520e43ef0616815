//! Live figures of a node: counters, gauges and HdrHistogram latencies, read by Prometheus
//! (`--metrics-bind`: the text exposition format at `/metrics`) and by `neo ctl stats`
//! (`AskNodeStats`: the histograms themselves, serialized, so that ctl prints percentiles
//! and writes `.hgrm` files like neo-bench's).
//!
//! One node per executor (a master, a storage core, an admin node), so each executor keeps
//! its own figures in a thread-local `Figures`: recording takes no lock and crosses no
//! core (a counter is a map lookup and an add; a latency an HdrHistogram record, a few
//! tens of nanoseconds: `neo-bench cluster` prints the cost beside a load's p50). What is
//! cheaper to read when asked than to keep (a storage's log and index sizes, the cluster's
//! state) comes from the node's `Provider`, called at each scrape. The client library's
//! threads share one `Figures` behind a mutex instead (`client::Client::metrics`).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::rc::Rc;
use std::time::Duration;

use hdrhistogram::Histogram;

/// Latencies are recorded in nanoseconds, from 1 ns to an hour, 3 significant digits.
const HIGHEST_NS: u64 = 3_600_000_000_000;

/// What `Figures::prometheus` names each series after, and its help line.
const HELP: &[(&str, &str)] = &[
    ("loads", "object loads answered"),
    ("load_bytes", "bytes of object data loaded"),
    ("stores", "object stores, read-current checks and relocks answered"),
    ("store_bytes", "bytes of object data stored"),
    ("votes", "transactions voted (made durable, not yet committed)"),
    ("locks", "transactions locked: the commit point"),
    ("load_seconds", "time from a load request to its answer"),
    ("store_seconds", "time from a store request to its answer (a lock wait included)"),
    ("vote_seconds", "time from a vote request to its durable answer"),
    ("lock_seconds", "time from the master's lock request to its durable answer"),
    ("fdatasync_seconds", "one group-commit flush: its writes and fdatasync"),
    ("flush_batch_bytes", "bytes made durable by one group-commit flush"),
    ("log_bytes", "bytes of the log's segment files"),
    ("index_bytes", "bytes of the index files"),
    ("cells_replicating", "cells of this storage catching up"),
    ("begins", "transactions begun"),
    ("finishes", "transactions committed"),
    ("aborts", "transactions aborted by their clients"),
    ("finish_seconds", "time from a client's finish request to its answer"),
    ("transactions_in_flight", "transactions begun and not yet committed or aborted"),
    ("clients", "clients connected"),
    ("storages", "storages connected"),
    ("commit_seconds", "time from tpc_begin to the end of tpc_finish"),
    ("commits", "transactions committed"),
];

fn help(name: &str) -> &'static str {
    HELP.iter().find(|(n, _)| *n == name).map_or("", |(_, h)| h)
}

/// The figures of one node.
#[derive(Debug, Default, Clone)]
pub struct Figures {
    counters: BTreeMap<&'static str, u64>,
    gauges: BTreeMap<&'static str, u64>,
    /// Named `*_seconds` (nanoseconds recorded) or `*_bytes`.
    histograms: BTreeMap<&'static str, Histogram<u64>>,
    /// Labels that are states: `(metric, label value)` shown as a gauge of 1.
    states: BTreeMap<&'static str, String>,
}

impl Figures {
    pub fn count(&mut self, name: &'static str, by: u64) {
        *self.counters.entry(name).or_default() += by;
    }

    pub fn gauge(&mut self, name: &'static str, value: u64) {
        self.gauges.insert(name, value);
    }

    pub fn state(&mut self, name: &'static str, value: String) {
        self.states.insert(name, value);
    }

    /// Records `value` (nanoseconds for a `*_seconds` histogram, else its unit).
    pub fn observe(&mut self, name: &'static str, value: u64) {
        let histogram = self
            .histograms
            .entry(name)
            .or_insert_with(|| Histogram::new_with_bounds(1, HIGHEST_NS, 3).expect("valid bounds"));
        let _ = histogram.record(value.clamp(1, HIGHEST_NS));
    }

    pub fn latency(&mut self, name: &'static str, elapsed: Duration) {
        self.observe(name, u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
    }

    pub fn histogram(&self, name: &str) -> Option<&Histogram<u64>> {
        self.histograms.get(name)
    }

    pub fn counter(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }

    /// The Prometheus text exposition of these figures, each series named
    /// `neo_{role}_{name}` with the label `node`: counters `_total`, gauges as they are,
    /// histograms as summaries (quantiles 0.5, 0.9, 0.99, 0.999, max as 1, `_sum`, `_count`;
    /// `*_seconds` in seconds).
    pub fn prometheus(&self, role: &str, node: &str, out: &mut String) {
        let node = escape(node);
        for (name, value) in &self.counters {
            let metric = format!("neo_{role}_{name}_total");
            let _ = writeln!(out, "# HELP {metric} {}", help(name));
            let _ = writeln!(out, "# TYPE {metric} counter");
            let _ = writeln!(out, "{metric}{{node=\"{node}\"}} {value}");
        }
        for (name, value) in &self.gauges {
            let metric = format!("neo_{role}_{name}");
            let _ = writeln!(out, "# HELP {metric} {}", help(name));
            let _ = writeln!(out, "# TYPE {metric} gauge");
            let _ = writeln!(out, "{metric}{{node=\"{node}\"}} {value}");
        }
        for (name, value) in &self.states {
            let metric = format!("neo_{role}_{name}");
            let _ = writeln!(out, "# HELP {metric} the node's {name}: 1 for the current one");
            let _ = writeln!(out, "# TYPE {metric} gauge");
            let _ = writeln!(out, "{metric}{{node=\"{node}\",{name}=\"{}\"}} 1", escape(value));
        }
        for (name, histogram) in &self.histograms {
            let metric = format!("neo_{role}_{name}");
            let scale = if name.ends_with("_seconds") { 1e-9 } else { 1.0 };
            let _ = writeln!(out, "# HELP {metric} {}", help(name));
            let _ = writeln!(out, "# TYPE {metric} summary");
            for quantile in [0.5, 0.9, 0.99, 0.999] {
                let value = histogram.value_at_quantile(quantile) as f64 * scale;
                let _ =
                    writeln!(out, "{metric}{{node=\"{node}\",quantile=\"{quantile}\"}} {value}");
            }
            let max = histogram.max() as f64 * scale;
            let _ = writeln!(out, "{metric}{{node=\"{node}\",quantile=\"1\"}} {max}");
            let sum = histogram.mean() * histogram.len() as f64 * scale;
            let _ = writeln!(out, "{metric}_sum{{node=\"{node}\"}} {sum}");
            let _ = writeln!(out, "{metric}_count{{node=\"{node}\"}} {}", histogram.len());
        }
    }

    /// These figures on the wire (`AnswerNodeStats`), histograms serialized (HdrHistogram
    /// V2).
    pub fn to_wire(&self, nid: wire::NodeId) -> wire::NodeStats {
        let mut counters: Vec<wire::StatValue> = self
            .counters
            .iter()
            .chain(&self.gauges)
            .map(|(name, value)| wire::StatValue { name: (*name).into(), value: *value })
            .collect();
        counters.extend(self.states.iter().map(|(name, value)| wire::StatValue {
            name: format!("{name}={value}").as_str().into(),
            value: 1,
        }));
        let histograms = self
            .histograms
            .iter()
            .filter_map(|(name, histogram)| {
                let mut bytes = Vec::new();
                hdrhistogram::serialization::Serializer::serialize(
                    &mut hdrhistogram::serialization::V2Serializer::new(),
                    histogram,
                    &mut bytes,
                )
                .ok()?;
                Some(wire::StatHistogram { name: (*name).into(), encoded: bytes.into() })
            })
            .collect();
        wire::NodeStats { nid, counters, histograms }
    }
}

/// A histogram from the wire (`AnswerNodeStats`).
pub fn histogram_from_wire(encoded: &[u8]) -> Option<Histogram<u64>> {
    let mut reader = encoded;
    hdrhistogram::serialization::Deserializer::new().deserialize(&mut reader).ok()
}

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Updates what is read when asked (sizes, states) just before the figures are read.
pub type Provider = Rc<dyn Fn(&mut Figures)>;

thread_local! {
    /// This executor's node: its figures, role, name, and provider.
    static NODE: RefCell<(Figures, &'static str, String, Option<Provider>)> =
        RefCell::new((Figures::default(), "node", String::new(), None));
}

/// Names this executor's node (`role`: master, storage, admin; `node`: its id once it has
/// one, e.g. S1).
pub fn set_node(role: &'static str, node: &str) {
    NODE.with(|n| {
        let mut n = n.borrow_mut();
        n.1 = role;
        n.2 = node.to_owned();
    });
}

pub fn set_provider(provider: Provider) {
    NODE.with(|n| n.borrow_mut().3 = Some(provider));
}

/// Counts `by` on this executor's counter `name`.
pub fn count(name: &'static str, by: u64) {
    NODE.with(|n| n.borrow_mut().0.count(name, by));
}

/// Records a latency on this executor's histogram `name` (`*_seconds`).
pub fn latency(name: &'static str, elapsed: Duration) {
    NODE.with(|n| n.borrow_mut().0.latency(name, elapsed));
}

/// Records a value on this executor's histogram `name`.
pub fn observe(name: &'static str, value: u64) {
    NODE.with(|n| n.borrow_mut().0.observe(name, value));
}

/// This executor's figures now (the provider called first).
pub fn snapshot() -> (Figures, &'static str, String) {
    let provider = NODE.with(|n| n.borrow().3.clone());
    let mut figures = NODE.with(|n| n.borrow().0.clone());
    if let Some(provide) = provider {
        provide(&mut figures);
    }
    NODE.with(|n| {
        let n = n.borrow();
        (figures, n.1, n.2.clone())
    })
}

/// Connections the metrics endpoint serves at once: a new one past it closes the oldest
/// (slow or idle peers cannot keep Prometheus out).
const HTTP_CONNECTIONS_MAX: usize = 16;
/// Bytes of an HTTP request read at most.
const HTTP_REQUEST_BYTES_MAX: usize = 8 << 10;

/// Serves `GET /metrics` on `listener` (Prometheus's text format 0.0.4) with this
/// executor's figures, until the task is dropped. Each connection has
/// `limits::IDENTIFICATION_DEADLINE` to be answered.
pub async fn serve_http(listener: glommio::net::TcpListener) {
    use std::os::fd::AsRawFd;
    // Live connections, oldest first: their number and socket.
    let live: Rc<RefCell<std::collections::VecDeque<(u64, std::os::fd::RawFd)>>> = Rc::default();
    let mut next = 0u64;
    loop {
        let Ok(mut stream) = listener.accept().await else {
            glommio::timer::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if live.borrow().len() >= HTTP_CONNECTIONS_MAX
            && let Some((_, socket)) = live.borrow_mut().pop_front()
        {
            // Its task sees the end of its stream and ends.
            crate::net::shutdown_socket(socket);
        }
        let id = next;
        next += 1;
        live.borrow_mut().push_back((id, stream.as_raw_fd()));
        let live = Rc::clone(&live);
        glommio::spawn_local(async move {
            let _ = futures_lite::future::or(answer_http(&mut stream), async {
                glommio::timer::sleep(crate::limits::IDENTIFICATION_DEADLINE).await;
                Ok(())
            })
            .await;
            live.borrow_mut().retain(|(other, _)| *other != id);
        })
        .detach();
    }
}

async fn answer_http(stream: &mut glommio::net::TcpStream) -> std::io::Result<()> {
    use futures_lite::{AsyncReadExt, AsyncWriteExt};
    let mut request = Vec::new();
    let mut chunk = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < HTTP_REQUEST_BYTES_MAX {
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Ok(());
        }
        request.extend_from_slice(&chunk[..read]);
    }
    let line = request.split(|&b| b == b'\r').next().unwrap_or_default();
    let (status, content_type, body) = if line.starts_with(b"GET /metrics ")
        || line.starts_with(b"GET /metrics?")
        || line == b"GET /metrics"
    {
        let (figures, role, node) = snapshot();
        let mut body = String::new();
        figures.prometheus(role, &node, &mut body);
        ("200 OK", "text/plain; version=0.0.4; charset=utf-8", body)
    } else {
        ("404 Not Found", "text/plain", "neo serves /metrics only\n".to_owned())
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.close().await
}

/// A histogram as an `.hgrm` percentile distribution (HdrHistogram's text format, values
/// in microseconds for `*_seconds`), as neo-bench writes them: readable by HdrHistogram's
/// plotter and the same tools.
pub fn hgrm(histogram: &Histogram<u64>, unit: f64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    for step in histogram.iter_quantiles(5) {
        total += step.count_since_last_iteration();
        let value = step.value_iterated_to() as f64 / unit;
        let quantile = step.quantile_iterated_to();
        if quantile < 1.0 {
            let _ = writeln!(
                out,
                "{value:12.3} {quantile:2.12} {total:10} {:14.2}",
                1.0 / (1.0 - quantile)
            );
        } else {
            let _ = writeln!(out, "{value:12.3} {quantile:2.12} {total:10}");
        }
    }
    let mean = histogram.mean() / unit;
    let deviation = histogram.stdev() / unit;
    let _ = writeln!(out, "#[Mean    = {mean:12.3}, StdDeviation   = {deviation:12.3}]");
    let max = histogram.max() as f64 / unit;
    let _ = writeln!(out, "#[Max     = {max:12.3}, Total count    = {:12}]", histogram.len());
    let _ = writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        histogram.buckets(),
        // HdrHistogram's sub-bucket count: 2 x 10^digits, rounded up to a power of two.
        (2 * 10u64.pow(u32::from(histogram.sigfig()))).next_power_of_two()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_render_as_prometheus_text_and_travel_the_wire() {
        let mut figures = Figures::default();
        figures.count("loads", 3);
        figures.gauge("log_bytes", 1 << 20);
        figures.state("cluster_state", "RUNNING".to_owned());
        for micros in [20, 25, 30, 1000] {
            figures.latency("load_seconds", Duration::from_micros(micros));
        }
        let mut text = String::new();
        figures.prometheus("storage", "S\"1", &mut text);
        assert!(text.contains("# TYPE neo_storage_loads_total counter\n"), "{text}");
        assert!(text.contains("neo_storage_loads_total{node=\"S\\\"1\"} 3\n"), "{text}");
        assert!(text.contains("neo_storage_log_bytes{node=\"S\\\"1\"} 1048576\n"), "{text}");
        assert!(text.contains("cluster_state=\"RUNNING\"} 1\n"), "{text}");
        assert!(text.contains("neo_storage_load_seconds_count{node=\"S\\\"1\"} 4\n"), "{text}");
        let median = text
            .lines()
            .find(|l| l.starts_with("neo_storage_load_seconds{") && l.contains("quantile=\"0.5\""))
            .unwrap();
        let value: f64 = median.rsplit(' ').next().unwrap().parse().unwrap();
        assert!((24e-6..=26e-6).contains(&value), "{median}");
        // Every sample line: name{labels} value, the value a number.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').unwrap();
            assert!(series.contains('{') && series.ends_with('}'), "{line}");
            value.parse::<f64>().unwrap();
        }

        let on_wire = figures.to_wire(wire::NodeId::new(wire::NodeType::Storage, 1));
        assert!(on_wire.counters.iter().any(|c| c.name.as_str() == "loads" && c.value == 3));
        let back = histogram_from_wire(&on_wire.histograms[0].encoded).unwrap();
        assert_eq!(back.len(), 4);
        assert_eq!(back.max(), figures.histogram("load_seconds").unwrap().max());
        let hgrm = hgrm(&back, 1000.0);
        assert!(hgrm.contains("Total count    =            4"), "{hgrm}");
    }
}
