//! The standard suite: the field's usual workload shapes through the Rust client, against an
//! embedded cluster (or an existing one), each beside baselines measured in the same run.
//!
//! Workloads:
//! - `zwrk`: NEO's zwrk shape: clients loading random existing objects, client cache off
//!   (latency at 1 client, throughput at many);
//! - `commit`: transactions of 3 objects of 999 bytes (ZEO's commit test), each client its
//!   own objects;
//! - `add`, `update`, `cold`, `warm`: zodbshootout's shapes with `objects_per_txn` objects of
//!   `object_size` bytes per transaction or read round (cold: client cache off, every read
//!   asks a storage; warm: every read answered by the client's cache). zodbshootout's `hot`
//!   reads are served by ZODB's object cache, above the storage, and never reach it: they
//!   are not run at this layer, and the report says so;
//! - `mixed`: 90% loads, 10% commits at a fixed offered rate, timed from each operation's
//!   scheduled start (no coordinated omission), so the percentiles are those at that rate.
//!
//! Baselines (same run, same placement): a raw TCP ping-pong of an object's size against a
//! glommio echo server on the storage core's CPU (1 client; an echo with N clients for N > 1), raw
//! 4 KiB write + fdatasync on the data directory's disk, and ZEO through its ClientStorage
//! (the storage API ZODB calls) when Python can import ZEO.
//!
//! Each repeat runs every case once, baselines first, so that the noise of a shared machine
//! hits ours and the baselines alike; ratios are computed within a repeat, and their spread
//! over the repeats is printed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use engine::client::{Client, TransactionMeta};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use wire::{Oid, Tid};

use crate::harness::{self, CLUSTER, Drive, EchoServer, Embedded, Outcome, Random, Shape, Target};
use crate::logstore_bench::raw_fdatasync;
use crate::output;
use crate::report::{format_ns, format_rate};
use crate::zeo::{self, ZeoPlacement, ZeoWorkload};

/// ZEO's commit test: 3 objects of 999 bytes.
const COMMIT_OBJECTS: usize = 3;
const COMMIT_OBJECT_SIZE: usize = 999;
/// One operation in this many of the mixed workload is a commit; the others are loads.
const MIXED_COMMIT_EVERY: u64 = 10;
/// ZEO runs one Python process per client; more than this is more than the machine's worth.
const ZEO_CLIENTS_MAX: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    Zwrk,
    Commit,
    Add,
    Update,
    Cold,
    Warm,
    Hot,
    Mixed,
    Zodb,
}

impl Workload {
    pub const ALL: [Workload; 9] = [
        Workload::Zwrk,
        Workload::Commit,
        Workload::Add,
        Workload::Update,
        Workload::Cold,
        Workload::Warm,
        Workload::Hot,
        Workload::Mixed,
        Workload::Zodb,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Zwrk => "zwrk",
            Workload::Commit => "commit",
            Workload::Add => "add",
            Workload::Update => "update",
            Workload::Cold => "cold",
            Workload::Warm => "warm",
            Workload::Hot => "hot",
            Workload::Mixed => "mixed",
            Workload::Zodb => "zodb",
        }
    }

    pub fn parse(name: &str) -> Option<Workload> {
        Workload::ALL.into_iter().find(|w| w.name() == name)
    }

    /// Client counts run when `--clients` does not say.
    fn default_clients(self) -> Vec<usize> {
        match self {
            Workload::Zwrk => vec![1, 16],
            Workload::Commit => vec![1, 16, 64],
            Workload::Mixed => vec![8],
            Workload::Zodb => vec![1, 8],
            _ => vec![1],
        }
    }
}

/// Whether to run the ZEO baseline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZeoMode {
    /// When Python can import ZEO; else say why not.
    Auto,
    /// Always: a missing ZEO is an error.
    On,
    Off,
}

/// The cluster the suite runs against.
#[derive(Clone, Debug)]
pub enum TargetSpec {
    Embedded(Shape),
    Remote { name: String, masters: Vec<std::net::SocketAddr> },
}

#[derive(Clone, Debug)]
pub struct SuiteOptions {
    pub workloads: Vec<Workload>,
    pub seconds: f64,
    pub warmup: Duration,
    pub repeats: usize,
    /// Client counts for every workload; `None`: each workload's own.
    pub clients: Option<Vec<usize>>,
    pub object_size: usize,
    pub objects_per_txn: usize,
    /// Objects written before the read workloads, and read at random.
    pub objects: u64,
    /// Offered operations per second of the mixed workload.
    pub offered_rate: f64,
    /// Client cache of the zwrk and mixed clients, in bytes (0: off).
    pub cache_bytes: usize,
    pub target: TargetSpec,
    pub client_cpus: Vec<usize>,
    /// The CPU of the echo server (the first storage core's).
    pub server_cpu: usize,
    pub spin: Option<Duration>,
    pub zeo: ZeoMode,
    /// Where the data (embedded cluster, fdatasync file, ZEO) goes; removed afterwards.
    pub directory: Option<PathBuf>,
    /// Where the histograms, plots and summary go.
    pub output: PathBuf,
    /// The command line, for the summary.
    pub command_line: String,
}

/// Why a suite cannot run: a message for the operator.
#[derive(Debug)]
pub struct SuiteError(pub String);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Ours,
    Baseline,
}

/// One repeat's figures of a case.
#[derive(Clone, Copy, Debug)]
struct Run {
    rate: f64,
    p50: f64,
    p99: f64,
    cpu_per_op: Option<f64>,
}

/// A case: its runs over the repeats and the histogram of all of them.
struct Case {
    id: String,
    label: String,
    role: Role,
    clients: usize,
    /// What one operation is: "load", "txn", "read round", ...
    unit: &'static str,
    objects_per_op: usize,
    offered_rate: Option<f64>,
    /// The charts it appears on.
    plots: Vec<&'static str>,
    runs: Vec<Run>,
    histogram: Histogram<u64>,
}

/// A ratio against a baseline, per repeat.
struct Versus {
    case: String,
    text: String,
    ratios: Vec<f64>,
    /// The target, if any: (threshold, whether higher is better).
    target: Option<(f64, bool)>,
}

#[derive(Default)]
struct Results {
    cases: Vec<Case>,
    skipped: Vec<(String, String)>,
}

/// What a case is, for the report and the files.
struct About<'a> {
    id: &'a str,
    label: &'a str,
    role: Role,
    clients: usize,
    /// What one operation is: "load", "txn", "read round", ...
    unit: &'static str,
    /// The charts it appears on.
    plots: &'a [&'static str],
}

/// One repeat's measurement of a case.
struct Measured<'a> {
    histogram: &'a Histogram<u64>,
    rate: f64,
    cpu_per_op: Option<f64>,
}

impl<'a, S> From<&'a Outcome<S>> for Measured<'a> {
    /// The first kind of operation of a run.
    fn from(outcome: &'a Outcome<S>) -> Measured<'a> {
        Measured {
            histogram: &outcome.histograms[0],
            rate: outcome.rate(0),
            cpu_per_op: outcome.cpu_per_operation(),
        }
    }
}

impl Results {
    /// Adds a repeat's measurement to its case (made on its first repeat), and returns it.
    fn record(&mut self, about: About<'_>, measured: Measured<'_>) -> &mut Case {
        let histogram = measured.histogram;
        let run = Run {
            rate: measured.rate,
            p50: histogram.value_at_quantile(0.5) as f64,
            p99: histogram.value_at_quantile(0.99) as f64,
            cpu_per_op: measured.cpu_per_op,
        };
        let index = match self.cases.iter().position(|c| c.id == about.id) {
            Some(index) => {
                let case = &mut self.cases[index];
                case.runs.push(run);
                case.histogram.add(histogram).expect("same bounds");
                index
            }
            None => {
                self.cases.push(Case {
                    id: about.id.to_owned(),
                    label: about.label.to_owned(),
                    role: about.role,
                    clients: about.clients,
                    unit: about.unit,
                    objects_per_op: 1,
                    offered_rate: None,
                    plots: about.plots.to_vec(),
                    runs: vec![run],
                    histogram: histogram.clone(),
                });
                self.cases.len() - 1
            }
        };
        &mut self.cases[index]
    }

    fn get(&self, id: &str) -> Option<&Case> {
        self.cases.iter().find(|c| c.id == id)
    }

    /// Per repeat: `f(case's run, baseline's run)` where both ran in that repeat.
    fn ratios(&self, case: &str, baseline: &str, f: impl Fn(&Run, &Run) -> f64) -> Vec<f64> {
        match (self.get(case), self.get(baseline)) {
            (Some(case), Some(baseline)) => {
                case.runs.iter().zip(&baseline.runs).map(|(c, b)| f(c, b)).collect()
            }
            _ => Vec::new(),
        }
    }
}

fn clients_for(options: &SuiteOptions, workload: Workload) -> Vec<usize> {
    options.clients.clone().unwrap_or_else(|| workload.default_clients())
}

fn plural(clients: usize) -> String {
    if clients == 1 { "1 client".to_owned() } else { format!("{clients} clients") }
}

/// Runs the suite, prints the report, writes the files. Returns the summary.
pub fn run(options: &SuiteOptions) -> Result<Value, SuiteError> {
    let root = match &options.directory {
        Some(directory) => tempfile::tempdir_in(directory),
        None => tempfile::tempdir(),
    }
    .map_err(|e| SuiteError(format!("cannot make a data directory: {e}")))?;
    std::fs::create_dir_all(&options.output).map_err(|e| {
        SuiteError(format!("cannot make the output directory {}: {e}", options.output.display()))
    })?;
    let zodb_python = zeo::zodb_python();
    let zeo_python = match options.zeo {
        ZeoMode::Off => Err("not asked for (--compare none)".to_owned()),
        ZeoMode::Auto => zeo::python(),
        ZeoMode::On => Ok(zeo::python().map_err(SuiteError)?),
    };
    let started = Instant::now();
    let progress = |what: &str| {
        eprintln!("neo-bench: {:>6.1} s: {what}", started.elapsed().as_secs_f64());
    };

    progress("starting the cluster");
    let target = match &options.target {
        TargetSpec::Embedded(shape) => {
            Target::Embedded(Embedded::start(&root.path().join("cluster"), shape))
        }
        TargetSpec::Remote { name, masters } => {
            Target::Remote { name: name.clone(), masters: masters.clone() }
        }
    };
    let echo = EchoServer::start(options.server_cpu, options.spin);
    progress(&format!("writing {} objects of {} bytes", options.objects, options.object_size));
    let objects = Arc::new(populate(&target, options.objects, options.object_size));

    let mut results = Results::default();
    let drive = |threads: usize| Drive {
        threads,
        cpus: options.client_cpus.clone(),
        warmup: options.warmup,
        seconds: options.seconds,
        kinds: 1,
        offered_rate: None,
    };
    let wants = |w: Workload| options.workloads.contains(&w);
    let echo_clients: Vec<usize> = if wants(Workload::Zwrk) {
        clients_for(options, Workload::Zwrk).into_iter().filter(|&n| n > 1).collect()
    } else {
        Vec::new()
    };
    let zeo_placement =
        ZeoPlacement { server_cpu: options.server_cpu, client_cpu: options.client_cpus[0] };
    let window = (options.warmup.as_secs_f64(), options.seconds);
    let mut zeo_failure = None;

    for repeat in 0..options.repeats {
        let step =
            |what: &str| progress(&format!("repeat {}/{}: {what}", repeat + 1, options.repeats));
        step("baselines: ping-pong, echo, fdatasync");
        let ping = harness::ping_pong(echo.address, &drive(1), options.object_size);
        let id = "baseline-ping-pong-1";
        let label = format!("raw TCP ping-pong {} B, 1 client", options.object_size);
        let plots = ["zwrk", "shapes", "mixed"];
        let about = About {
            id,
            label: &label,
            role: Role::Baseline,
            clients: 1,
            unit: "round trip",
            plots: &plots,
        };
        results.record(about, (&ping).into());
        for &n in &echo_clients {
            let outcome = harness::ping_pong(echo.address, &drive(n), options.object_size);
            let label = format!("raw TCP echo {} B, {n} clients", options.object_size);
            let id = format!("baseline-echo-{n}");
            let (role, unit) = (Role::Baseline, "round trip");
            let about = About { id: &id, label: &label, role, clients: n, unit, plots: &["zwrk"] };
            results.record(about, (&outcome).into());
        }
        let raw_directory = root.path().join(format!("raw-{repeat}"));
        std::fs::create_dir_all(&raw_directory)
            .map_err(|e| SuiteError(format!("cannot make {}: {e}", raw_directory.display())))?;
        let raw = raw_fdatasync(&raw_directory, options.seconds);
        let _ = std::fs::remove_dir_all(&raw_directory);
        let about = About {
            id: "baseline-fdatasync",
            label: "raw 4 KiB write + fdatasync",
            role: Role::Baseline,
            clients: 1,
            unit: "sync",
            plots: &["commit", "shapes", "mixed"],
        };
        results.record(
            about,
            Measured { histogram: &raw.histogram, rate: raw.rate, cpu_per_op: None },
        );

        if wants(Workload::Zwrk) {
            for n in clients_for(options, Workload::Zwrk) {
                step(&format!("zwrk, {}", plural(n)));
                let outcome = zwrk(&target, &drive(n), &objects, options.cache_bytes);
                let label = format!("zwrk load {} B, {}", options.object_size, plural(n));
                let id = format!("zwrk-{n}");
                let (role, unit) = (Role::Ours, "load");
                let about =
                    About { id: &id, label: &label, role, clients: n, unit, plots: &["zwrk"] };
                results.record(about, (&outcome).into());
            }
        }
        if wants(Workload::Commit) {
            for n in clients_for(options, Workload::Commit) {
                step(&format!("commit, {}", plural(n)));
                let outcome = commits(&target, &drive(n), COMMIT_OBJECTS, COMMIT_OBJECT_SIZE);
                let label = format!("commit 3 x 999 B, {}", plural(n));
                let id = format!("commit-{n}");
                let (role, unit) = (Role::Ours, "txn");
                let about =
                    About { id: &id, label: &label, role, clients: n, unit, plots: &["commit"] };
                results.record(about, (&outcome).into());
            }
        }
        let k = options.objects_per_txn;
        let size = options.object_size;
        for workload in [Workload::Add, Workload::Update, Workload::Cold, Workload::Warm] {
            if !wants(workload) {
                continue;
            }
            for n in clients_for(options, workload) {
                step(&format!("{}, {}", workload.name(), plural(n)));
                let (outcome, unit, what) = match workload {
                    Workload::Add => (add(&target, &drive(n), k, size), "txn", "add"),
                    Workload::Update => (commits(&target, &drive(n), k, size), "txn", "update"),
                    Workload::Cold => {
                        (reads(&target, &drive(n), &objects, k, 0), "read round", "cold read")
                    }
                    _ => (
                        reads(&target, &drive(n), &objects, k, warm_cache(k, size)),
                        "read round",
                        "warm read",
                    ),
                };
                let id = format!("{}-{n}", workload.name());
                let label = format!("{what} {k} x {size} B, {}", plural(n));
                let role = Role::Ours;
                let about =
                    About { id: &id, label: &label, role, clients: n, unit, plots: &["shapes"] };
                results.record(about, (&outcome).into()).objects_per_op = k;
            }
        }
        if wants(Workload::Mixed) {
            for n in clients_for(options, Workload::Mixed) {
                step(&format!(
                    "mixed at {} offered, {}",
                    format_rate(options.offered_rate),
                    plural(n)
                ));
                let mut mixed_drive = drive(n);
                mixed_drive.kinds = 2;
                mixed_drive.offered_rate = Some(options.offered_rate);
                let outcome = mixed(&target, &mixed_drive, &objects, options.cache_bytes);
                let cpu = outcome.cpu_per_operation();
                for (kind, what) in [(0, "load"), (1, "commit")] {
                    let id = format!("mixed-{what}-{n}");
                    let label = format!("mixed 90/10: {what}s, {}", plural(n));
                    let histogram = &outcome.histograms[kind];
                    let unit = if kind == 0 { "load" } else { "txn" };
                    let role = Role::Ours;
                    let about =
                        About { id: &id, label: &label, role, clients: n, unit, plots: &["mixed"] };
                    let measured =
                        Measured { histogram, rate: outcome.rate(kind), cpu_per_op: cpu };
                    results.record(about, measured).offered_rate =
                        Some(options.offered_rate * if kind == 0 { 0.9 } else { 0.1 });
                }
            }
        }
        if wants(Workload::Zodb) {
            match &zodb_python {
                Ok(python) => {
                    for n in clients_for(options, Workload::Zodb) {
                        step(&format!("through ZODB, neo-rs and ZEO, {}", plural(n)));
                        let directory = root.path().join(format!("zodb-{repeat}"));
                        let run = ZodbRun { python, directory: &directory, target: &target, n };
                        zodb_cases(&mut results, &run, window, zeo_placement, &mut zeo_failure);
                    }
                }
                Err(why) if repeat == 0 => results.skipped.push(("zodb".to_owned(), why.clone())),
                Err(_) => {}
            }
        }
        if let Ok(python) = &zeo_python {
            let mut zeo_cases = Vec::new();
            if wants(Workload::Zwrk) {
                for n in clients_for(options, Workload::Zwrk) {
                    let workload = ZeoWorkload::Loads { objects: 1000, size: options.object_size };
                    let label = format!("ZEO load {} B, {}", options.object_size, plural(n));
                    zeo_cases.push((format!("zeo-zwrk-{n}"), label, n, workload, "load", "zwrk"));
                }
            }
            if wants(Workload::Commit) {
                for n in clients_for(options, Workload::Commit) {
                    let workload =
                        ZeoWorkload::Commits { objects: COMMIT_OBJECTS, size: COMMIT_OBJECT_SIZE };
                    let label = format!("ZEO commit 3 x 999 B, {}", plural(n));
                    zeo_cases.push((
                        format!("zeo-commit-{n}"),
                        label,
                        n,
                        workload,
                        "txn",
                        "commit",
                    ));
                }
            }
            let (k, size) = (options.objects_per_txn, options.object_size);
            for (workload, what, unit) in [
                (Workload::Add, "add", "txn"),
                (Workload::Update, "update", "txn"),
                (Workload::Cold, "cold read", "read round"),
            ] {
                if !wants(workload) {
                    continue;
                }
                for n in clients_for(options, workload) {
                    let zeo_workload = match workload {
                        Workload::Add => ZeoWorkload::Add { objects: k, size },
                        Workload::Update => ZeoWorkload::Commits { objects: k, size },
                        _ => ZeoWorkload::Reads {
                            objects: k,
                            size,
                            population: options.objects as usize,
                        },
                    };
                    let label = format!("ZEO {what} {k} x {size} B, {}", plural(n));
                    let id = format!("zeo-{}-{n}", workload.name());
                    zeo_cases.push((id, label, n, zeo_workload, unit, "shapes"));
                }
            }
            for (id, label, n, workload, unit, plot) in zeo_cases {
                if n > ZEO_CLIENTS_MAX {
                    if repeat == 0 {
                        let why =
                            format!("ZEO runs a process per client; {n} is over {ZEO_CLIENTS_MAX}");
                        results.skipped.push((id, why));
                    }
                    continue;
                }
                step(&label);
                let directory = root.path().join(format!("zeo-{repeat}"));
                let per_op = match workload {
                    ZeoWorkload::Add { objects, .. } | ZeoWorkload::Reads { objects, .. } => {
                        objects
                    }
                    ZeoWorkload::Commits { objects, .. } if plot == "shapes" => objects,
                    _ => 1,
                };
                match zeo::run(python, &directory, workload, n, window, zeo_placement) {
                    Ok(run) => {
                        let role = Role::Baseline;
                        let plots = [plot];
                        let about =
                            About { id: &id, label: &label, role, clients: n, unit, plots: &plots };
                        let measured = Measured {
                            histogram: &run.histogram,
                            rate: run.rate,
                            cpu_per_op: None,
                        };
                        results.record(about, measured).objects_per_op = per_op;
                    }
                    Err(error) => {
                        eprintln!("neo-bench: ZEO baseline: {error}");
                        zeo_failure = Some(error);
                    }
                }
            }
        }
    }
    echo.stop();
    target.stop();
    drop(root);
    progress("done");

    let versus = versus(&results, options);
    if wants(Workload::Hot) {
        results.skipped.push((
            "hot".to_owned(),
            "hot reads are served by ZODB's object cache, above the storage, and never reach it: \
             they measure ZODB alone, the same whatever the storage"
                .to_owned(),
        ));
    }
    let zeo_status = match (&zeo_python, &zeo_failure) {
        (Ok(_), None) => "ran".to_owned(),
        (Ok(_), Some(error)) => format!("failed: {error}"),
        (Err(why), _) => format!("skipped: {why}"),
    };
    print_report(&results, &versus, options, &zeo_status);
    let summary = write_files(&results, &versus, options, &zeo_status);
    Ok(summary)
}

/// One client count of the ZODB workloads.
struct ZodbRun<'a> {
    python: &'a str,
    directory: &'a Path,
    target: &'a Target,
    n: usize,
}

/// The ZODB workloads (`zeo/zodb_bench.py`) on neo-rs and on ZEO, for `run.n` client
/// processes: loads of objects cached nowhere, the same answered by the storage client's
/// cache, and small commits.
fn zodb_cases(
    results: &mut Results,
    run: &ZodbRun<'_>,
    window: (f64, f64),
    placement: ZeoPlacement,
    failure: &mut Option<String>,
) {
    let (masters, name) = match run.target {
        Target::Embedded(embedded) => (embedded.master.to_string(), CLUSTER.to_owned()),
        Target::Remote { name, masters } => {
            let masters: Vec<String> = masters.iter().map(ToString::to_string).collect();
            (masters.join(","), name.clone())
        }
    };
    let n = run.n;
    let what = if n == 1 { "1 process".to_owned() } else { format!("{n} processes") };
    for (workload, kind, unit, label) in [
        ("loads", "load", "load", format!("zodb load, {what}")),
        ("cached-loads", "cached-load", "load", format!("zodb load from the client cache, {what}")),
        ("commits", "txn", "txn", format!("zodb commit, {what}")),
    ] {
        for (role, storage) in [
            (Role::Ours, zeo::ZodbStorage::Neo { masters: &masters, name: &name }),
            (Role::Baseline, zeo::ZodbStorage::Zeo),
        ] {
            let prefix = if role == Role::Ours { "" } else { "zeo-" };
            let id = format!("{prefix}zodb-{kind}-{n}");
            let label = if role == Role::Ours { label.clone() } else { format!("ZEO {label}") };
            match zeo::run_zodb(run.python, run.directory, storage, workload, n, window, placement)
            {
                Ok(measured) => {
                    let about =
                        About { id: &id, label: &label, role, clients: n, unit, plots: &["zodb"] };
                    let rate = measured.rate;
                    results.record(
                        about,
                        Measured { histogram: &measured.histogram, rate, cpu_per_op: None },
                    );
                }
                Err(error) => {
                    eprintln!("neo-bench: ZODB workload: {error}");
                    *failure = Some(error);
                }
            }
        }
    }
}

/// Cache for the warm reads: every object of a round, with room to spare.
fn warm_cache(objects_per_txn: usize, object_size: usize) -> usize {
    (objects_per_txn * (object_size + 256) * 4).max(1 << 20)
}

/// Writes `count` objects of `size` bytes, 100 per transaction; their oids.
fn populate(target: &Target, count: u64, size: usize) -> Vec<Oid> {
    let client = target.client(0);
    let mut oids = Vec::with_capacity(count as usize);
    let data = Bytes::from(vec![0x11u8; size]);
    let mut left = count;
    while left > 0 {
        let batch = left.min(100) as u32;
        let batch_oids = client.new_oids(batch).expect("oids");
        let mut transaction = client.tpc_begin(None).expect("begin");
        for &oid in &batch_oids {
            transaction.store(oid, Tid::ZERO, data.clone()).expect("store");
        }
        let conflicts = transaction.vote(&meta()).expect("vote");
        assert!(conflicts.is_empty(), "new objects cannot conflict");
        transaction.finish(|_| {}).expect("finish");
        oids.extend(batch_oids);
        left -= u64::from(batch);
    }
    client.close();
    oids
}

fn meta() -> TransactionMeta {
    TransactionMeta { user: Bytes::from_static(b"neo-bench"), ..TransactionMeta::default() }
}

/// Runs `operation` on `drive.threads` threads, each with a client of its own (`cache_bytes`
/// of cache) in the state `setup` makes of it; the clients are closed afterwards.
fn on_clients<S: Send + 'static>(
    target: &Target,
    drive: &Drive,
    cache_bytes: usize,
    setup: impl Fn(usize, Client) -> S + Send + Sync + 'static,
    operation: impl Fn(&mut S) -> usize + Send + Sync + 'static,
) -> Outcome<()> {
    let clients: Arc<Vec<Client>> =
        Arc::new((0..drive.threads).map(|_| target.client(cache_bytes)).collect());
    let handed = Arc::clone(&clients);
    let outcome = harness::run(drive, move |index| setup(index, handed[index].clone()), operation);
    for client in clients.iter() {
        client.close();
    }
    outcome.figures()
}

fn zwrk(target: &Target, drive: &Drive, objects: &Arc<Vec<Oid>>, cache: usize) -> Outcome<()> {
    let objects = Arc::clone(objects);
    on_clients(
        target,
        drive,
        cache,
        move |index, client| (client, Random::new(index as u64 + 1), Arc::clone(&objects)),
        |(client, random, objects)| {
            let oid = objects[random.below(objects.len() as u64) as usize];
            client.load(oid).expect("load");
            0
        },
    )
}

/// A client committing its own objects again and again.
struct Committer {
    client: Client,
    oids: Vec<Oid>,
    serials: Vec<Tid>,
    data: Bytes,
}

impl Committer {
    fn new(client: Client, objects: usize, size: usize) -> Committer {
        let oids = client.new_oids(objects as u32).expect("oids");
        Committer {
            client,
            serials: vec![Tid::ZERO; oids.len()],
            oids,
            data: Bytes::from(vec![0x42u8; size]),
        }
    }

    fn commit(&mut self) {
        let mut transaction = self.client.tpc_begin(None).expect("begin");
        for (&oid, &serial) in self.oids.iter().zip(&self.serials) {
            transaction.store(oid, serial, self.data.clone()).expect("store");
        }
        let conflicts = transaction.vote(&meta()).expect("vote");
        assert!(conflicts.is_empty(), "each committer has its own objects");
        let tid = transaction.finish(|_| {}).expect("finish");
        self.serials.fill(tid);
    }
}

/// Transactions of `objects` objects of `size` bytes, each thread its own objects (ZEO's
/// commit test, and zodbshootout's update).
fn commits(target: &Target, drive: &Drive, objects: usize, size: usize) -> Outcome<()> {
    on_clients(
        target,
        drive,
        0,
        move |_, client| Committer::new(client, objects, size),
        |committer| {
            committer.commit();
            0
        },
    )
}

/// zodbshootout's add: transactions of `objects` new objects.
fn add(target: &Target, drive: &Drive, objects: usize, size: usize) -> Outcome<()> {
    let data = Bytes::from(vec![0x33u8; size]);
    on_clients(
        target,
        drive,
        0,
        move |_, client| (client, data.clone()),
        move |(client, data)| {
            let oids = client.new_oids(objects as u32).expect("oids");
            let mut transaction = client.tpc_begin(None).expect("begin");
            for oid in oids {
                transaction.store(oid, Tid::ZERO, data.clone()).expect("store");
            }
            let conflicts = transaction.vote(&meta()).expect("vote");
            assert!(conflicts.is_empty(), "new objects cannot conflict");
            transaction.finish(|_| {}).expect("finish");
            0
        },
    )
}

/// Read rounds of `per_round` objects, each thread its own objects; with the cache off
/// (cold: every read asks a storage) or on and big enough (warm: after the warm-up, every
/// read is a cache hit).
fn reads(
    target: &Target,
    drive: &Drive,
    objects: &Arc<Vec<Oid>>,
    per_round: usize,
    cache: usize,
) -> Outcome<()> {
    let objects = Arc::clone(objects);
    on_clients(
        target,
        drive,
        cache,
        move |index, client| {
            let start = (index * per_round) % objects.len().max(1);
            let own: Vec<Oid> =
                (0..per_round).map(|i| objects[(start + i) % objects.len()]).collect();
            (client, own)
        },
        |(client, own)| {
            for &oid in own.iter() {
                client.load(oid).expect("load");
            }
            0
        },
    )
}

/// 90% loads of random objects, 10% commits of 3 x 999 bytes (each thread its own objects):
/// every tenth operation of a thread commits.
fn mixed(target: &Target, drive: &Drive, objects: &Arc<Vec<Oid>>, cache: usize) -> Outcome<()> {
    let objects = Arc::clone(objects);
    on_clients(
        target,
        drive,
        cache,
        move |index, client| {
            let committer = Committer::new(client, COMMIT_OBJECTS, COMMIT_OBJECT_SIZE);
            // Threads start at different points of the 1-in-10 cycle.
            let first = index as u64 % MIXED_COMMIT_EVERY;
            (committer, Random::new(index as u64 + 101), Arc::clone(&objects), first)
        },
        |(committer, random, objects, count)| {
            *count += 1;
            if *count % MIXED_COMMIT_EVERY != 0 {
                let oid = objects[random.below(objects.len() as u64) as usize];
                committer.client.load(oid).expect("load");
                0
            } else {
                committer.commit();
                1
            }
        },
    )
}

/// Each case's comparison with its baselines, per repeat, and the targets the issues set.
fn versus(results: &Results, options: &SuiteOptions) -> Vec<Versus> {
    let mut out = Vec::new();
    let mut push = |case: &str, text: String, ratios: Vec<f64>, target: Option<(f64, bool)>| {
        if !ratios.is_empty() {
            out.push(Versus { case: case.to_owned(), text, ratios, target });
        }
    };
    let ping = "baseline-ping-pong-1";
    let sync = "baseline-fdatasync";
    for n in clients_for(options, Workload::Zwrk) {
        let case = format!("zwrk-{n}");
        if n == 1 {
            let ratios = results.ratios(&case, ping, |c, b| c.p50 / b.p50);
            push(&case, "p50 / ping-pong p50".into(), ratios, Some((2.0, false)));
        } else {
            let ratios =
                results.ratios(&case, &format!("baseline-echo-{n}"), |c, b| c.rate / b.rate);
            push(&case, format!("rate / echo rate, {n} clients"), ratios, Some((0.7, true)));
        }
        let zeo = format!("zeo-zwrk-{n}");
        if n == 1 {
            let ratios = results.ratios(&case, &zeo, |c, b| b.p50 / c.p50);
            push(&case, "ZEO p50 / ours".into(), ratios, None);
        } else {
            let ratios = results.ratios(&case, &zeo, |c, b| c.rate / b.rate);
            push(&case, "rate / ZEO's".into(), ratios, Some((10.0, true)));
        }
    }
    for n in clients_for(options, Workload::Commit) {
        let case = format!("commit-{n}");
        if n == 1 {
            // The budget: 2 fdatasyncs + 4 round trips, p50s of the same repeat.
            let (Some(c), Some(s), Some(p)) =
                (results.get(&case), results.get(sync), results.get(ping))
            else {
                continue;
            };
            let ratios = c
                .runs
                .iter()
                .zip(&s.runs)
                .zip(&p.runs)
                .map(|((c, s), p)| c.p50 / (2.0 * s.p50 + 4.0 * p.p50))
                .collect();
            push(&case, "p50 / (2 fdatasync + 4 RTT)".into(), ratios, Some((1.0, false)));
        } else {
            let ratios = results.ratios(&case, sync, |c, b| c.rate / b.rate);
            let target = (n == 16).then_some((3.0, true));
            push(&case, "rate / raw fdatasync rate".into(), ratios, target);
        }
        let zeo = format!("zeo-commit-{n}");
        let ratios = results.ratios(&case, &zeo, |c, b| c.rate / b.rate);
        push(&case, "rate / ZEO's".into(), ratios, None);
    }
    let k = options.objects_per_txn as f64;
    for workload in [Workload::Add, Workload::Update] {
        for n in clients_for(options, workload) {
            let case = format!("{}-{n}", workload.name());
            let ratios = results.ratios(&case, sync, |c, b| c.p50 / b.p50);
            push(&case, "p50 / fdatasync p50".into(), ratios, None);
        }
    }
    for workload in [Workload::Add, Workload::Update, Workload::Cold] {
        for n in clients_for(options, workload) {
            let case = format!("{}-{n}", workload.name());
            let zeo = format!("zeo-{}-{n}", workload.name());
            let ratios = results.ratios(&case, &zeo, |c, b| b.p50 / c.p50);
            push(&case, "ZEO p50 / ours".into(), ratios, None);
        }
    }
    for n in clients_for(options, Workload::Cold) {
        let case = format!("cold-{n}");
        let ratios = results.ratios(&case, ping, |c, b| c.p50 / (k * b.p50));
        push(&case, format!("p50 / {k} ping-pongs"), ratios, None);
    }
    for n in clients_for(options, Workload::Warm) {
        let case = format!("warm-{n}");
        let ratios = results.ratios(&format!("cold-{n}"), &case, |cold, warm| cold.p50 / warm.p50);
        push(&case, "cold p50 / warm p50".into(), ratios, None);
    }
    for n in clients_for(options, Workload::Zodb) {
        let (load, commit) = (format!("zodb-load-{n}"), format!("zodb-txn-{n}"));
        let ratios = results.ratios(&load, &format!("zeo-{load}"), |c, b| b.p50 / c.p50);
        push(&load, "ZEO p50 / ours".into(), ratios, Some((5.0, true)));
        let ratios = results.ratios(&commit, &format!("zeo-{commit}"), |c, b| c.rate / b.rate);
        push(&commit, "rate / ZEO's".into(), ratios, Some((3.0, true)));
        let cached = format!("zodb-cached-load-{n}");
        let ratios = results.ratios(&cached, &format!("zeo-{cached}"), |c, b| b.p50 / c.p50);
        push(&cached, "ZEO p50 / ours".into(), ratios, None);
    }
    for n in clients_for(options, Workload::Mixed) {
        for what in ["load", "commit"] {
            let case = format!("mixed-{what}-{n}");
            let offered = options.offered_rate * if what == "load" { 0.9 } else { 0.1 };
            let ratios = results
                .get(&case)
                .map_or_else(Vec::new, |c| c.runs.iter().map(|r| r.rate / offered).collect());
            push(&case, "rate / offered".into(), ratios, Some((0.95, true)));
        }
    }
    out
}

/// "median (min-max)" of a list, through `format`.
fn spread(values: &[f64], format: impl Fn(f64) -> String) -> String {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.as_slice() {
        [] => "-".to_owned(),
        [one] => format(*one),
        _ => {
            let median = sorted[sorted.len() / 2];
            format!(
                "{} ({}-{})",
                format(median),
                format(sorted[0]),
                format(sorted[sorted.len() - 1])
            )
        }
    }
}

fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied()
}

/// `format_ns` without the space, for the report's narrow columns.
fn short_ns(ns: f64) -> String {
    format_ns(ns).replace(' ', "")
}

/// `format_rate` without the unit, for the report's narrow columns.
fn short_rate(rate: f64) -> String {
    format_rate(rate).replace(" /s", "").replace("/s", "").replace(' ', "")
}

fn verdict(versus: &Versus) -> &'static str {
    match versus.target {
        None => "",
        Some((threshold, higher)) => {
            let worst = if higher {
                versus.ratios.iter().copied().fold(f64::INFINITY, f64::min)
            } else {
                versus.ratios.iter().copied().fold(0.0, f64::max)
            };
            if (higher && worst >= threshold) || (!higher && worst <= threshold) {
                "meets"
            } else {
                "MISSES"
            }
        }
    }
}

fn print_report(results: &Results, versus: &[Versus], options: &SuiteOptions, zeo: &str) {
    let cpu_scope = match options.target {
        TargetSpec::Embedded(_) => "cpu/op: the whole process (clients and cluster)",
        TargetSpec::Remote { .. } => "cpu/op: this process (the clients) only",
    };
    println!(
        "{:<36} {:>20} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "case", "ops/s (min-max)", "p50", "p90", "p99", "p999", "max", "cpu/op"
    );
    for role in [Role::Baseline, Role::Ours] {
        println!("{}", if role == Role::Baseline { "baselines (this run)" } else { "neo-rs" });
        for case in results.cases.iter().filter(|c| c.role == role) {
            let rates: Vec<f64> = case.runs.iter().map(|r| r.rate).collect();
            let cpus: Vec<f64> = case.runs.iter().filter_map(|r| r.cpu_per_op).collect();
            let h = &case.histogram;
            let q = |q: f64| short_ns(h.value_at_quantile(q) as f64);
            println!(
                "  {:<34} {:>20} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
                case.label,
                spread(&rates, short_rate),
                q(0.5),
                q(0.9),
                q(0.99),
                q(0.999),
                short_ns(h.max() as f64),
                median(&cpus).map_or_else(|| "-".to_owned(), short_ns),
            );
        }
    }
    println!("compared (per repeat: median (min-max)):");
    for v in versus {
        let label = results.get(&v.case).map_or(v.case.as_str(), |c| c.label.as_str());
        let target = match v.target {
            Some((threshold, higher)) => {
                format!("  {} target {}{threshold}", verdict(v), if higher { ">= " } else { "<= " })
            }
            None => String::new(),
        };
        println!(
            "  {:<34} {:<30} {}{target}",
            label,
            v.text,
            spread(&v.ratios, |r| format!("{r:.2}"))
        );
    }
    for (what, why) in &results.skipped {
        println!("  not run: {what}: {why}");
    }
    println!("  ZEO baseline: {zeo}");
    let cpus = |cpus: &[usize]| cpus.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
    let target = match &options.target {
        TargetSpec::Embedded(shape) => format!(
            "embedded, {} storage core(s) on CPU {}, master on CPU {}, {} partitions, {} replica(s)",
            shape.storage_cores,
            cpus(&shape.storage_cpus),
            shape.master_cpu,
            shape.partitions,
            shape.replicas
        ),
        TargetSpec::Remote { name, masters } => {
            format!(
                "existing cluster {name:?} at {masters:?} (baselines are this machine's loopback and disk)"
            )
        }
    };
    println!(
        "cluster: {target}; clients on CPU {}; {}",
        cpus(&options.client_cpus),
        if options.spin.is_some() { "spin before park" } else { "park when idle" },
    );
    println!(
        "method:  {:.1} s warm-up excluded, then {} s per case x {} repeats; percentiles over all repeats; \
         each operation timed from its start (mixed: from its scheduled start); {cpu_scope}",
        options.warmup.as_secs_f64(),
        options.seconds,
        options.repeats,
    );
    println!(
        "files:   {} (.hgrm per case, .svg per workload, summary.json)",
        options.output.display()
    );
}

/// The `.hgrm` files, the SVG charts and `summary.json`; returns the summary.
fn write_files(results: &Results, versus: &[Versus], options: &SuiteOptions, zeo: &str) -> Value {
    let directory = &options.output;
    for case in &results.cases {
        output::write(directory, &format!("{}.hgrm", case.id), &output::hgrm(&case.histogram));
    }
    let titles = [
        ("zwrk", "zwrk: random loads, client cache off"),
        ("commit", "commits of 3 x 999 B"),
        ("shapes", "zodbshootout shapes (latency per transaction or read round)"),
        ("mixed", "mixed 90% loads / 10% commits at a fixed offered rate"),
        ("zodb", "through ZODB from Python: neo-rs and ZEO"),
    ];
    let mut plots = Vec::new();
    for (plot, title) in titles {
        let series: Vec<output::Series<'_>> = results
            .cases
            .iter()
            .filter(|c| c.plots.contains(&plot))
            .map(|c| output::Series {
                name: c.label.clone(),
                baseline: c.role == Role::Baseline,
                histogram: &c.histogram,
            })
            .collect();
        if series.iter().any(|s| !s.baseline) {
            output::write(directory, &format!("{plot}.svg"), &output::svg(title, &series));
            plots.push(format!("{plot}.svg"));
        }
    }
    let cases: Vec<Value> = results
        .cases
        .iter()
        .map(|case| {
            let rates: Vec<f64> = case.runs.iter().map(|r| r.rate).collect();
            let cpus: Vec<f64> = case.runs.iter().filter_map(|r| r.cpu_per_op).collect();
            let mut value = output::percentiles_json(&case.histogram);
            let versus: Vec<Value> = versus
                .iter()
                .filter(|v| v.case == case.id)
                .map(|v| json!({"what": v.text, "ratios": v.ratios, "median": median(&v.ratios),
                                "target": v.target.map(|(t, higher)| json!({"threshold": t, "higher_is_better": higher})),
                                "verdict": verdict(v)}))
                .collect();
            let fields = json!({
                "id": case.id,
                "label": case.label,
                "role": if case.role == Role::Ours { "ours" } else { "baseline" },
                "clients": case.clients,
                "unit": case.unit,
                "objects_per_op": case.objects_per_op,
                "offered_rate": case.offered_rate,
                "rate": median(&rates),
                "rates": rates,
                "p50s_ns": case.runs.iter().map(|r| r.p50).collect::<Vec<_>>(),
                "p99s_ns": case.runs.iter().map(|r| r.p99).collect::<Vec<_>>(),
                "cpu_per_op_ns": median(&cpus),
                "versus": versus,
                "hgrm": format!("{}.hgrm", case.id),
            });
            if let (Value::Object(value), Value::Object(fields)) = (&mut value, fields) {
                value.extend(fields);
            }
            value
        })
        .collect();
    let config = match &options.target {
        TargetSpec::Embedded(shape) => json!({
            "cluster": "embedded",
            "storage_cores": shape.storage_cores,
            "storage_cpus": shape.storage_cpus,
            "master_cpu": shape.master_cpu,
            "partitions": shape.partitions,
            "replicas": shape.replicas,
        }),
        TargetSpec::Remote { name, masters } => json!({
            "cluster": name,
            "masters": masters.iter().map(ToString::to_string).collect::<Vec<_>>(),
        }),
    };
    let summary = json!({
        "neo_bench_summary": 1,
        "started": crate::report::now_utc(),
        "git_commit": crate::report::git_commit(),
        "command_line": options.command_line,
        "machine": crate::report::machine_json(),
        "config": {
            "target": config,
            "workloads": options.workloads.iter().map(|w| w.name()).collect::<Vec<_>>(),
            "seconds": options.seconds,
            "warmup_seconds": options.warmup.as_secs_f64(),
            "repeats": options.repeats,
            "object_size": options.object_size,
            "objects_per_txn": options.objects_per_txn,
            "objects": options.objects,
            "offered_rate": options.offered_rate,
            "client_cache_bytes": options.cache_bytes,
            "client_cpus": options.client_cpus,
            "echo_cpu": options.server_cpu,
            "spin_before_park_us": options.spin.map(|s| s.as_micros() as u64),
        },
        "zeo": zeo,
        "cases": cases,
        "skipped": results.skipped.iter().map(|(w, why)| json!({"workload": w, "why": why})).collect::<Vec<_>>(),
        "plots": plots,
    });
    let text = serde_json::to_string_pretty(&summary).expect("a JSON value");
    output::write(directory, "summary.json", &text);
    summary
}

/// Checks a suite's options before anything starts.
pub fn check(options: &SuiteOptions) -> Result<(), SuiteError> {
    if options.client_cpus.is_empty() {
        return Err(SuiteError("no client CPU".to_owned()));
    }
    if options.objects == 0 || options.objects_per_txn == 0 || options.object_size == 0 {
        return Err(SuiteError(
            "--objects, --objects-per-txn and --object-size must be positive".to_owned(),
        ));
    }
    if options.objects_per_txn > 10_000 {
        return Err(SuiteError("--objects-per-txn is at most 10000".to_owned()));
    }
    if !(options.offered_rate.is_finite() && options.offered_rate > 0.0) {
        return Err(SuiteError(
            "--rate must be a positive number of operations per second".to_owned(),
        ));
    }
    Ok(())
}

/// The default output directory: `target/neo-bench/<UTC time>` under the current directory.
pub fn default_output() -> PathBuf {
    let stamp = crate::report::now_utc().replace([':', '-'], "").replace('T', "-").replace('Z', "");
    Path::new("target").join("neo-bench").join(stamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_names_round_trip() {
        for workload in Workload::ALL {
            assert_eq!(Workload::parse(workload.name()), Some(workload));
        }
        assert_eq!(Workload::parse("nope"), None);
    }

    #[test]
    fn spread_shows_median_and_range() {
        assert_eq!(spread(&[3.0, 1.0, 2.0], |v| format!("{v:.0}")), "2 (1-3)");
        assert_eq!(spread(&[5.0], |v| format!("{v:.0}")), "5");
        assert_eq!(spread(&[], |v| format!("{v:.0}")), "-");
    }

    #[test]
    fn a_target_is_judged_on_the_worst_repeat() {
        let v = |ratios: Vec<f64>, target| Versus {
            case: String::new(),
            text: String::new(),
            ratios,
            target,
        };
        assert_eq!(verdict(&v(vec![3.5, 2.9], Some((3.0, true)))), "MISSES");
        assert_eq!(verdict(&v(vec![3.5, 3.1], Some((3.0, true)))), "meets");
        assert_eq!(verdict(&v(vec![0.9, 1.1], Some((1.0, false)))), "MISSES");
        assert_eq!(verdict(&v(vec![0.9, 0.95], Some((1.0, false)))), "meets");
        assert_eq!(verdict(&v(vec![0.9], None)), "");
    }
}
