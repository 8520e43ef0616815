//! What mutual TLS costs: load and commit latency (one client) and load throughput (many
//! clients) through an embedded cluster speaking TLS on every connection, beside the same
//! cluster in plain TCP, each repeat starting one after the other on the same CPUs and
//! disk. Certificates are made on the fly (a CA, one certificate with every role).
//!
//! The target (issue 16): a TLS load's p50 at most 15% above the plain one's.

use std::time::Duration;

use hdrhistogram::Histogram;
use wire::NodeType;

use crate::cluster_bench::{
    ClusterOptions, bench_directory, commits, current_cpu, loads, p50, populate,
};
use crate::harness::{Drive, Embedded, Shape, Target};
use crate::report::{format_rate, percentiles};

#[path = "../../engine/src/tls_testing.rs"]
#[allow(dead_code, unreachable_pub)]
mod certificates;

struct Figures {
    load: Histogram<u64>,
    load_rate: f64,
    load_n: Histogram<u64>,
    load_n_rate: f64,
    commit: Histogram<u64>,
    commit_rate: f64,
}

fn measure(
    data: &std::path::Path,
    shape: &Shape,
    drive: &dyn Fn(usize) -> Drive,
    clients: usize,
) -> Figures {
    let cluster = Target::Embedded(Embedded::start(data, shape));
    populate(&cluster);
    let (load, load_rate) = loads(&cluster, &drive(1));
    let (load_n, load_n_rate) = loads(&cluster, &drive(clients));
    let (commit, commit_rate, _) = commits(&cluster, &drive(1));
    cluster.stop();
    Figures { load, load_rate, load_n, load_n_rate, commit, commit_rate }
}

pub fn run(options: &ClusterOptions) {
    let root = bench_directory(options.directory.as_deref());
    let authority = certificates::Authority::new(root.path(), "bench-ca");
    let files = authority
        .issue("bench", &[NodeType::Master, NodeType::Storage, NodeType::Admin, NodeType::Client]);
    let tls = engine::tls::Tls::load(&files).expect("the bench's certificates");
    let client_cpu = current_cpu();
    let n = options.clients;
    println!(
        "tls: 1 storage core on CPU {}, master on CPU {}, clients on CPU {client_cpu}; TLS 1.3 \
         (rustls, ring), ECDSA P-256 certificates, mutual",
        options.server_cpu, options.master_cpu
    );
    let shape = |tls: Option<engine::tls::Tls>| Shape {
        partitions: 4,
        replicas: 0,
        storage_cores: 1,
        storage_cpus: vec![options.server_cpu],
        master_cpu: options.master_cpu,
        spin: options.spin_before_park,
        tls,
    };
    let drive = |threads| Drive {
        threads,
        cpus: vec![client_cpu],
        warmup: Duration::from_millis(200),
        seconds: options.seconds,
        kinds: 1,
        offered_rate: None,
    };
    let mut ratios: [Vec<f64>; 3] = Default::default();
    for repeat in 0..options.repeats {
        eprintln!("neo-bench: tls: repeat {} of {}", repeat + 1, options.repeats);
        let plain = measure(&root.path().join(format!("plain-{repeat}")), &shape(None), &drive, n);
        let secure = measure(
            &root.path().join(format!("tls-{repeat}")),
            &shape(Some(tls.clone())),
            &drive,
            n,
        );
        println!(" repeat {}:", repeat + 1);
        for (name, figures) in [("plain", &plain), ("TLS", &secure)] {
            let rows = [
                (
                    format!("{name}: load 64 B, 1 client, cache off"),
                    &figures.load,
                    figures.load_rate,
                ),
                (format!("{name}: load 64 B, {n} clients"), &figures.load_n, figures.load_n_rate),
                (
                    format!("{name}: commit 3 x 1 KiB, 1 client"),
                    &figures.commit,
                    figures.commit_rate,
                ),
            ];
            for (label, histogram, rate) in rows {
                println!("  {label:<44} {:>10}   {}", format_rate(rate), percentiles(histogram));
            }
        }
        ratios[0].push(p50(&secure.load) / p50(&plain.load));
        ratios[1].push(p50(&secure.commit) / p50(&plain.commit));
        ratios[2].push(secure.load_n_rate / plain.load_n_rate);
    }
    let spread = |ratios: &[f64]| {
        let min = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let max = ratios.iter().copied().fold(0.0, f64::max);
        (min, max)
    };
    println!(" ratios over {} repeats (min-max):", options.repeats);
    let (low, high) = spread(&ratios[0]);
    let verdict = if high <= 1.15 { "meets" } else { "MISSES" };
    println!(
        "  {:<46} {low:.2}-{high:.2}  ({verdict} the 1.15 target)",
        "TLS load p50 / plain load p50, 1 client"
    );
    let (low, high) = spread(&ratios[1]);
    println!("  {:<46} {low:.2}-{high:.2}", "TLS commit p50 / plain commit p50, 1 client");
    let (low, high) = spread(&ratios[2]);
    println!(
        "  {:<46} {low:.2}-{high:.2}",
        format!("TLS load rate / plain load rate, {n} clients")
    );
}
