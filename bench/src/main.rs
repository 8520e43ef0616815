//! `neo-bench`: the neo-rs benchmark harness. Every figure comes with a baseline measured in
//! the same run on the same machine, because these machines are shared and noisy: compare
//! ratios, not absolute numbers.
//!
//! With no arguments it starts an embedded cluster, runs the standard suite (`suite.rs`),
//! prints a one-screen report and writes histograms, plots and a JSON summary.
//! `neo-bench compare A.json B.json` sets two runs side by side. The component benchmarks
//! (`wire`, `logstore`, `cluster`) run when named.

mod alloc;
mod cluster_bench;
mod harness;
mod logstore_bench;
mod output;
mod replication_bench;
mod report;
mod suite;
mod tls_bench;
mod wire_bench;
mod zeo;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::harness::{Shape, online_cpus};
use crate::suite::{SuiteOptions, TargetSpec, Workload, ZeoMode};

#[global_allocator]
static ALLOCATOR: alloc::CountingAllocator = alloc::CountingAllocator;

const AFTER_HELP: &str = "\
Workloads of the standard suite (default: all of them):
  zwrk      clients loading random existing objects, client cache off (NEO's zwrk)
  commit    transactions of 3 objects of 999 bytes (ZEO's commit test)
  add       zodbshootout's add: transactions of --objects-per-txn new objects
  update    zodbshootout's update: transactions rewriting --objects-per-txn objects
  cold      zodbshootout's cold read: --objects-per-txn loads, client cache off
  warm      zodbshootout's warm read: the same loads answered by the client cache
  hot       zodbshootout's hot read: served by ZODB's object cache, not run at this layer
  mixed     90% loads / 10% commits at --rate operations per second (open loop)
  zodb      through ZODB from Python, neo-rs beside ZEO: loads of objects cached nowhere and
            small commits, 1 and 8 client processes (needs a Python with neo_rs, ZODB and
            ZEO: scripts/bench.sh installs them)

Component benchmarks (run only when named):
  wire      encode/decode of 4 KiB load answers and store requests vs memcpy
  logstore  group commit vs raw fdatasync, hot lookups, restart time, index memory
  cluster   the transaction issue's targets: loads and commits vs ping-pong, echo, fdatasync
  tls       what mutual TLS costs: loads and commits through a TLS cluster vs the same
            cluster in plain TCP, started one after the other in each repeat
  replication  a storage catching up --replication-mib of objects vs a raw file copy, and
            loads and commits meanwhile vs before (neo processes: needs the neo binary
            beside neo-bench)

Two runs side by side:
  neo-bench compare A/summary.json B/summary.json

Exit codes: 0 done, 2 bad usage, 3 cannot reach the cluster; an operation that fails
stops the run with its reason (exit code 101).";

/// The neo-rs benchmark harness: latency histograms of the usual ZODB workload shapes
/// through an embedded (or existing) cluster, with same-run baselines.
#[derive(Parser, Debug)]
#[command(name = "neo-bench", after_help = AFTER_HELP)]
struct Cli {
    /// Workloads to run (see below); default: the whole standard suite.
    workloads: Vec<String>,
    /// Measured seconds per case and repeat.
    #[arg(long, default_value_t = 1.0)]
    seconds: f64,
    /// Warm-up seconds before each case's measurement (excluded from every figure).
    #[arg(long, default_value_t = 0.2)]
    warmup: f64,
    /// Repeats of each case, to show the spread.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Client counts, comma-separated (default: per workload: zwrk 1,16; commit 1,16,64;
    /// mixed 8; zodb 1,8; the shootout shapes 1).
    #[arg(long, value_delimiter = ',')]
    clients: Option<Vec<usize>>,
    /// MiB of objects the replication benchmark's storage catches up.
    #[arg(long, default_value_t = 256)]
    replication_mib: usize,
    /// Bytes per object in zwrk, the shootout shapes and mixed's loads.
    #[arg(long, default_value_t = 300)]
    object_size: usize,
    /// Objects per transaction (or read round) in add, update, cold and warm.
    #[arg(long, default_value_t = 100)]
    objects_per_txn: usize,
    /// Objects written first, read at random by zwrk, cold and mixed.
    #[arg(long, default_value_t = 10_000)]
    objects: u64,
    /// Offered operations per second of the mixed workload (all clients together).
    #[arg(long, default_value_t = 2_000.0)]
    rate: f64,
    /// Client cache of zwrk's and mixed's clients, in MiB (0: off, zwrk's shape).
    #[arg(long, default_value_t = 0)]
    cache_mib: usize,
    /// Partitions of the embedded cluster.
    #[arg(long, default_value_t = 12)]
    partitions: u32,
    /// Replicas of the embedded cluster (copies = replicas + 1; needs that many cores).
    #[arg(long, default_value_t = 0)]
    replicas: u32,
    /// Storage cores of the embedded cluster, each a storage node with its own log.
    #[arg(long, default_value_t = 1)]
    storage_cores: usize,
    /// Pin the benchmark and its client threads to CPU N (-1: leave them unpinned).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    cpu: i64,
    /// CPUs of the client threads, comma-separated (default: --cpu).
    #[arg(long, value_delimiter = ',')]
    client_cpus: Option<Vec<usize>>,
    /// CPU of the first storage core and of the echo server (the next cores take the
    /// next CPUs); default: the CPU after the clients'.
    #[arg(long)]
    server_cpu: Option<usize>,
    /// CPU of the master (default: a CPU of its own if there is one, else the clients').
    #[arg(long)]
    master_cpu: Option<usize>,
    /// Storage cores and the echo server spin this many microseconds before parking (0:
    /// park when idle, as `neo storage` does by default; `--spin-us` there). On 2 CPUs 50
    /// makes loads faster and commits slower (the spinning core delays the fdatasync's
    /// completion). Client threads poll 50 us for an answer either way
    /// (`engine::client::SPIN_DEFAULT`), the baselines' clients too.
    #[arg(long, default_value_t = 0)]
    spin: u64,
    /// Same-run comparison with another storage: auto (ZEO when Python can import it),
    /// zeo (required), none.
    #[arg(long, default_value = "auto")]
    compare: String,
    /// Run against an existing cluster: its masters, comma-separated host:port (the
    /// workloads write new objects into it). Default: an embedded cluster.
    #[arg(long, value_delimiter = ',')]
    cluster: Option<Vec<String>>,
    /// The existing cluster's name (with --cluster).
    #[arg(long, default_value = "neo")]
    name: String,
    /// Where the histograms, plots and summary.json go (default:
    /// target/neo-bench/<UTC time>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Where benchmark data goes (default: the temporary directory); removed afterwards.
    /// Put it on the disk you want to measure.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Smoke run: 0.3 s per case, 2 repeats, 2000 objects, smaller data sets.
    #[arg(long)]
    quick: bool,
    /// logstore: concurrent committers in the group-commit case.
    #[arg(long, default_value_t = 16)]
    committers: usize,
    /// logstore: revisions written for the restart case.
    #[arg(long, default_value_t = 1_000_000)]
    revisions: u64,
    /// logstore: MiB of log written after the checkpoint for the crash-restart case.
    #[arg(long, default_value_t = 256)]
    tail_mib: u64,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("compare") {
        return compare(&args[2..]);
    }
    let cli = Cli::parse();
    // The embedded nodes' and clients' warnings and errors on stderr (NEO_LOG for more).
    let options = engine::logging::LogOptions::default();
    if let Err(error) = engine::logging::init(&options, "bench", "warn") {
        eprintln!("neo-bench: {error}");
        return ExitCode::from(2);
    }
    match run(cli, &args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("neo-bench: {error}");
            ExitCode::from(2)
        }
    }
}

fn compare(paths: &[String]) -> ExitCode {
    let [a, b] = paths else {
        eprintln!("usage: neo-bench compare A/summary.json B/summary.json");
        return ExitCode::from(2);
    };
    let summaries = output::read_summary(a.as_ref())
        .and_then(|a| output::read_summary(b.as_ref()).map(|b| (a, b)))
        .and_then(|(a, b)| output::compare(&a, &b));
    match summaries {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("neo-bench compare: {error}");
            ExitCode::from(2)
        }
    }
}

/// The masters' addresses: `host:port` each, names resolved (the first address of each).
fn resolve(names: &[String]) -> Result<Vec<SocketAddr>, String> {
    use std::net::ToSocketAddrs;
    names
        .iter()
        .map(|name| {
            name.to_socket_addrs()
                .map_err(|e| format!("--cluster {name}: {e}"))?
                .next()
                .ok_or_else(|| format!("--cluster {name}: no address"))
        })
        .collect()
}

fn run(mut cli: Cli, args: &[String]) -> Result<(), String> {
    if !(cli.seconds.is_finite() && cli.seconds > 0.0) {
        return Err("--seconds must be positive".to_owned());
    }
    if !(cli.warmup.is_finite() && cli.warmup >= 0.0) {
        return Err("--warmup must be zero or more".to_owned());
    }
    if cli.repeats == 0 || cli.committers == 0 || cli.revisions == 0 || cli.tail_mib == 0 {
        return Err("--repeats, --committers, --revisions and --tail-mib must be positive".into());
    }
    if cli.storage_cores == 0 || cli.partitions == 0 {
        return Err("--storage-cores and --partitions must be positive".to_owned());
    }
    if cli.replicas as usize >= cli.storage_cores {
        return Err(format!(
            "--replicas {} keeps {} copies: it needs at least that many --storage-cores",
            cli.replicas,
            cli.replicas + 1
        ));
    }
    if cli.clients.as_ref().is_some_and(|c| c.is_empty() || c.contains(&0)) {
        return Err("--clients takes positive counts".to_owned());
    }
    let mut lookup_objects = 100_000;
    if cli.quick {
        cli.seconds = 0.3;
        cli.repeats = 2;
        cli.objects = cli.objects.min(2_000);
        cli.revisions = 100_000;
        cli.tail_mib = 32;
        lookup_objects = 10_000;
    }
    let cpus = online_cpus();
    let zeo = match cli.compare.as_str() {
        "auto" => ZeoMode::Auto,
        "zeo" => ZeoMode::On,
        "none" => ZeoMode::Off,
        other => return Err(format!("--compare takes auto, zeo or none, not {other:?}")),
    };
    let mut suite_workloads = Vec::new();
    let mut components = Vec::new();
    for name in &cli.workloads {
        match (Workload::parse(name), name.as_str()) {
            (Some(workload), _) => suite_workloads.push(workload),
            (None, "wire" | "logstore" | "cluster" | "replication" | "tls") => {
                components.push(name.clone())
            }
            (None, other) => return Err(format!("unknown workload {other:?} (see --help)")),
        }
    }
    if suite_workloads.is_empty() && components.is_empty() {
        suite_workloads = Workload::ALL.to_vec();
    }
    for cpu in cli.client_cpus.iter().flatten().chain(&cli.server_cpu).chain(&cli.master_cpu) {
        if *cpu >= cpus {
            return Err(format!("CPU {cpu} is not online (this machine has {cpus})"));
        }
    }

    let placement = if cli.cpu >= 0 && report::pin_to_cpu(cli.cpu as usize) {
        format!("pinned to CPU {}", cli.cpu)
    } else {
        "unpinned".to_owned()
    };
    let client_cpu = cli.cpu.max(0) as usize;
    let client_cpus = cli.client_cpus.clone().unwrap_or_else(|| vec![client_cpu]);
    let server_cpu =
        cli.server_cpu.unwrap_or(if cpus > 1 { (client_cpus[0] + 1) % cpus } else { 0 });
    let storage_cpus: Vec<usize> =
        (0..cli.storage_cores).map(|core| (server_cpu + core) % cpus).collect();
    let master_cpu = cli.master_cpu.unwrap_or_else(|| {
        (0..cpus)
            .find(|c| !client_cpus.contains(c) && !storage_cpus.contains(c))
            .unwrap_or(client_cpus[0])
    });
    let spin = (cli.spin > 0).then(|| Duration::from_micros(cli.spin));

    println!("neo-rs benchmark report");
    println!("  machine: {}", report::machine_summary());
    println!(
        "  commit:  {}   {}   placement: {placement}",
        report::git_commit(),
        report::now_utc()
    );
    println!();

    if !suite_workloads.is_empty() {
        let target = match &cli.cluster {
            Some(names) => {
                let masters = resolve(names)?;
                TargetSpec::Remote { name: cli.name.clone(), masters }
            }
            None => TargetSpec::Embedded(Shape {
                partitions: cli.partitions,
                replicas: cli.replicas,
                storage_cores: cli.storage_cores,
                storage_cpus,
                master_cpu,
                spin,
                tls: None,
            }),
        };
        let options = SuiteOptions {
            workloads: suite_workloads,
            seconds: cli.seconds,
            warmup: Duration::from_secs_f64(cli.warmup),
            repeats: cli.repeats,
            clients: cli.clients.clone(),
            object_size: cli.object_size,
            objects_per_txn: cli.objects_per_txn,
            objects: cli.objects,
            offered_rate: cli.rate,
            cache_bytes: cli.cache_mib << 20,
            target,
            client_cpus: client_cpus.clone(),
            server_cpu,
            spin,
            zeo,
            directory: cli.dir.clone(),
            output: cli.out.clone().unwrap_or_else(suite::default_output),
            command_line: args.join(" "),
        };
        suite::check(&options).map_err(|e| e.0)?;
        suite::run(&options).map_err(|e| e.0)?;
        println!();
    }
    // The cluster and tls components' shape.
    let cluster_options = cluster_bench::ClusterOptions {
        seconds: cli.seconds,
        repeats: cli.repeats,
        directory: cli.dir.clone(),
        clients: cli.clients.as_ref().and_then(|c| c.iter().max().copied()).unwrap_or(16),
        server_cpu,
        master_cpu,
        spin_before_park: spin,
    };
    for component in &components {
        if component == "wire" {
            let wire_options = wire_bench::WireOptions {
                seconds_per_case: cli.seconds,
                repeats: cli.repeats,
                warmup: Duration::from_secs_f64(cli.warmup),
            };
            let results = wire_bench::run(&wire_options);
            wire_bench::print(&results, wire_bench::frame_size());
        } else if component == "tls" {
            tls_bench::run(&cluster_options);
        } else if component == "replication" {
            replication_bench::run(&replication_bench::ReplicationOptions {
                mib: cli.replication_mib,
                seconds: cli.seconds * cli.repeats as f64,
                directory: cli.dir.clone(),
            })?;
        } else if component == "logstore" {
            logstore_bench::run(&logstore_bench::LogstoreOptions {
                seconds: cli.seconds * cli.repeats as f64,
                directory: cli.dir.clone(),
                committers: cli.committers,
                lookup_objects,
                restart_revisions: cli.revisions,
                tail_bytes: cli.tail_mib << 20,
            });
        } else {
            cluster_bench::run(&cluster_options);
        }
        println!();
    }
    Ok(())
}
