//! Live figures on real processes: a master and a storage serving Prometheus's text format
//! (`--metrics-bind`), and `neo ctl stats` printing every node's latency percentiles and
//! writing `.hgrm` files, after loads and commits went through.

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use bytes::Bytes;
use common::writes::{connect, meta};
use common::*;
use wire::Tid;

/// A port free now on 127.0.0.1 (the OS picks it; the node binds it right after).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `GET /metrics`, polled until the node serves it.
fn scrape(port: u16) -> String {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut response = String::new();
            if stream.read_to_string(&mut response).is_ok() && response.starts_with("HTTP/1.1 200")
            {
                return response.split_once("\r\n\r\n").unwrap().1.to_owned();
            }
        }
        assert!(std::time::Instant::now() < deadline, "no metrics on port {port}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The value of the sample line that starts with `series`.
fn sample(text: &str, series: &str) -> f64 {
    let line =
        text.lines().find(|l| l.starts_with(series)).unwrap_or_else(|| panic!("{series}:\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// Every line is a comment (`# HELP`, `# TYPE`) or `name{labels} number`.
fn well_formed(text: &str) {
    for line in text.lines() {
        if let Some(comment) = line.strip_prefix("# ") {
            assert!(comment.starts_with("HELP ") || comment.starts_with("TYPE "), "{line}");
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        let name = series.split('{').next().unwrap();
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{line}");
        assert!(series.ends_with('}'), "{line}");
        value.parse::<f64>().unwrap_or_else(|_| panic!("{line}"));
    }
}

#[test]
fn nodes_serve_their_figures_and_ctl_stats_prints_every_nodes_percentiles() {
    let directory = tempfile::tempdir().unwrap();
    let (master_port, storage_port) = (free_port(), free_port());
    let mut processes = Processes(Vec::new());
    let master = start_master_with(
        &mut processes,
        "master",
        &["--replicas", "0", "--metrics-bind", &format!("127.0.0.1:{master_port}")],
    );
    let mut storage = Command::new(NEO)
        .args(["storage", "--cluster", CLUSTER, "--master", &master, "--host", "h1"])
        .args(["--metrics-bind", &format!("127.0.0.1:{storage_port}")])
        .arg("--data")
        .arg(directory.path().join("h1"))
        .stdout(Stdio::null())
        .stderr(named_stderr())
        .spawn()
        .unwrap();
    relay_stderr(&mut storage, "h1");
    processes.0.push(("h1".to_owned(), storage));
    wait_for(&master, &["print", "node"], "a pending storage", |t| t.contains("PENDING"));
    ctl_text(&master, &["start"]);
    wait_for(&master, &["print", "cluster"], "RUNNING", |t| t == "RUNNING\n");

    let client = connect(&master);
    let oids = client.new_oids(3).unwrap();
    let mut serials = vec![Tid::ZERO; 3];
    for round in 0..5u8 {
        let mut transaction = client.tpc_begin(None).unwrap();
        for (oid, serial) in oids.iter().zip(&serials) {
            transaction.store(*oid, *serial, Bytes::from(vec![round; 500])).unwrap();
        }
        transaction.vote(&meta()).unwrap();
        let tid = transaction.finish(|_| {}).unwrap();
        serials.fill(tid);
        for &oid in &oids {
            client.load(oid).unwrap();
        }
    }
    client.close();

    let master_text = scrape(master_port);
    well_formed(&master_text);
    assert!(sample(&master_text, "neo_master_finishes_total{") >= 5.0, "{master_text}");
    assert!(sample(&master_text, "neo_master_begins_total{") >= 5.0, "{master_text}");
    assert!(master_text.contains("cluster_state=\"RUNNING\"} 1"), "{master_text}");
    assert!(master_text.contains("neo_master_finishes_total{node=\"M1\"}"), "{master_text}");
    assert!(sample(&master_text, "neo_master_finish_seconds_count{") >= 5.0, "{master_text}");

    let storage_text = scrape(storage_port);
    well_formed(&storage_text);
    assert!(storage_text.contains("node=\"S1\""), "{storage_text}");
    assert!(sample(&storage_text, "neo_storage_stores_total{") >= 15.0, "{storage_text}");
    assert!(sample(&storage_text, "neo_storage_locks_total{") >= 5.0, "{storage_text}");
    assert!(sample(&storage_text, "neo_storage_fdatasync_seconds_count{") >= 5.0, "{storage_text}");
    assert!(sample(&storage_text, "neo_storage_log_bytes{") > 0.0, "{storage_text}");
    let p50 = sample(&storage_text, "neo_storage_vote_seconds{node=\"S1\",quantile=\"0.5\"}");
    assert!(p50 > 0.0 && p50 < 60.0, "{storage_text}");
    // Slow peers holding connections (a request never finished) do not keep a scrape out.
    let slow: Vec<std::net::TcpStream> = (0..40)
        .map(|_| {
            let mut stream = std::net::TcpStream::connect(("127.0.0.1", storage_port)).unwrap();
            stream.write_all(b"GET /metr").unwrap();
            stream
        })
        .collect();
    // At once, not after the slow ones' deadline: one try.
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", storage_port)).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("neo_storage_loads_total"));
    drop(slow);
    // Any other path: 404, and the node serves on.
    let mut other = std::net::TcpStream::connect(("127.0.0.1", storage_port)).unwrap();
    other.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut response = String::new();
    other.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");

    let stats = ctl_text(&master, &["stats"]);
    assert!(stats.contains("M1: ") && stats.contains("S1: "), "{stats}");
    for histogram in ["finish_seconds", "load_seconds", "store_seconds", "fdatasync_seconds"] {
        let line = stats.lines().find(|l| l.trim_start().starts_with(histogram));
        let line = line.unwrap_or_else(|| panic!("{histogram}:\n{stats}"));
        assert!(line.contains("p99") && line.contains("us"), "{line}");
    }
    let hgrm = directory.path().join("hgrm");
    ctl_text(&master, &["stats", "--hgrm", hgrm.to_str().unwrap()]);
    let text = std::fs::read_to_string(hgrm.join("S1-load_seconds.hgrm")).unwrap();
    assert!(text.contains("Percentile") && text.contains("Total count"), "{text}");
    let json = ctl_text(&master, &["--json", "stats"]);
    assert!(json.starts_with("[{\"node\": \"M1\""), "{json}");
    assert_eq!(ctl_text(&master, &["stats", "--json"]).lines().count(), 1);
    processes.kill("h1");
}
