//! The transaction path through a real cluster, each figure beside a baseline measured in
//! the same run with the same placement:
//!
//! - load latency, one client, client cache off, vs a raw TCP ping-pong of 64 bytes with a
//!   glommio echo server (the same runtime, CPU and parking policy as the storage core);
//! - load throughput with 16 clients vs the same echo server with 16 clients;
//! - commit latency of 3 objects of 1 KiB, one client, vs 2 raw fdatasyncs + 4 round trips;
//! - commits per second with 16 clients vs the raw (single-stream) fdatasync rate.
//!
//! The cluster is embedded: a master and one storage core, each on its own glommio
//! executor; the storage core (and the echo server of the baselines) on the server CPU,
//! clients are threads pinned to the client CPU (the bench's own). The master gets a CPU of
//! its own when there are three or more, else it runs beside the clients (`--master-cpu`
//! overrides): the storage core, which carries the data traffic, keeps its CPU to itself.
//! On the 2-CPU development VM the two placements measured within the noise of each other
//! (5.0-5.2k vs 4.2-5.0k commits/s with 16 clients, back to back). `--spin` applies to the
//! storage core and the echo server alike (same parking policy as the baseline); the master
//! always parks, as it shares a CPU. The storage's data goes to the bench directory, so
//! fdatasync is measured on the same disk.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use engine::client::{Client, ClientOptions, TransactionMeta};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use hdrhistogram::Histogram;
use wire::{Oid, Tid};

use crate::logstore_bench::raw_fdatasync;
use crate::report::{format_rate, histogram_ns, percentiles, pin_to_cpu};

const CLUSTER: &str = "bench";
/// Objects loaded at random by the load cases.
const OBJECTS: u64 = 1000;
/// Size of an object in the load cases, and of the raw ping-pong message.
const MESSAGE_SIZE: usize = 64;
const COMMIT_OBJECTS: usize = 3;
const COMMIT_OBJECT_SIZE: usize = 1024;

pub struct ClusterOptions {
    pub seconds: f64,
    pub repeats: usize,
    pub directory: Option<std::path::PathBuf>,
    /// Concurrent clients in the throughput cases.
    pub clients: usize,
    /// The CPU of the storage core and the echo server; clients stay on the bench's CPU.
    pub server_cpu: usize,
    pub master_cpu: usize,
    pub spin_before_park: Option<Duration>,
}

fn executor(name: &str, cpu: usize, spin: Option<Duration>) -> glommio::LocalExecutorBuilder {
    let mut builder = glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(cpu))
        .name(name)
        .io_memory(4 << 20)
        .blocking_thread_pool_placement(glommio::PoolPlacement::Unbound(1));
    if let Some(spin) = spin {
        builder = builder.spin_before_park(spin);
    }
    builder
}

/// A master and one storage core in this process.
struct Embedded {
    master: SocketAddr,
    threads: Vec<glommio::ExecutorJoinHandle<()>>,
}

impl Embedded {
    fn start(data: &Path, cpu: usize, master_cpu: usize, spin: Option<Duration>) -> Embedded {
        let (sender, receiver) = std::sync::mpsc::channel();
        let master = executor("bench-master", master_cpu, None)
            .spawn(move || async move {
                let listener = glommio::net::TcpListener::bind("127.0.0.1:0").expect("bind");
                sender.send(listener.local_addr().expect("address")).expect("waiting");
                let config = engine::cluster::ClusterConfig {
                    name: CLUSTER.to_owned(),
                    partitions: 4,
                    replicas: 0,
                    autostart: Some(1),
                };
                let serving = engine::master::serve(listener, config, Vec::new());
                futures_lite::future::or(serving, engine::shutdown::wait()).await;
            })
            .expect("master executor");
        let address = receiver.recv().expect("the master starts");
        let options = engine::storage::StorageOptions {
            cluster: CLUSTER.to_owned(),
            masters: vec![address],
            data: data.to_owned(),
            host: "bench".to_owned(),
            listen: "127.0.0.1:0".parse().expect("address"),
        };
        let storage = executor("bench-storage", cpu, spin)
            .spawn(move || async move {
                if let Err(error) = engine::storage::serve(options).await {
                    eprintln!("neo-bench: storage: {error}");
                }
            })
            .expect("storage executor");
        Embedded { master: address, threads: vec![master, storage] }
    }

    fn client(&self, cache_size: usize) -> Client {
        let mut options = ClientOptions::new(CLUSTER, vec![self.master]);
        options.cache_size = cache_size;
        Client::connect(options).expect("a client connects to the embedded cluster")
    }

    fn stop(self) {
        engine::shutdown::request();
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// A raw echo server on glommio: reads `MESSAGE_SIZE` bytes, writes them back.
fn echo_server(
    cpu: usize,
    spin: Option<Duration>,
    stop: Arc<AtomicBool>,
) -> (SocketAddr, glommio::ExecutorJoinHandle<()>) {
    let (sender, receiver) = std::sync::mpsc::channel();
    let handle = executor("bench-echo", cpu, spin)
        .spawn(move || async move {
            let listener = glommio::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            sender.send(listener.local_addr().expect("address")).expect("waiting");
            let accepting = async {
                while let Ok(mut stream) = listener.accept().await {
                    stream.set_nodelay(true).expect("nodelay");
                    glommio::spawn_local(async move {
                        let mut message = [0u8; MESSAGE_SIZE];
                        while stream.read_exact(&mut message).await.is_ok() {
                            if stream.write_all(&message).await.is_err() {
                                break;
                            }
                        }
                    })
                    .detach();
                }
            };
            let stopping = async {
                while !stop.load(Ordering::Relaxed) {
                    glommio::timer::sleep(Duration::from_millis(20)).await;
                }
            };
            futures_lite::future::or(accepting, stopping).await;
        })
        .expect("echo executor");
    (receiver.recv().expect("the echo server starts"), handle)
}

/// Runs `operation` on `threads` threads (pinned to `cpu`) for `seconds` after a warm-up:
/// the latency histogram of all operations and the total rate.
fn run_threads<S: Send + 'static>(
    threads: usize,
    cpu: usize,
    seconds: f64,
    setup: impl Fn(usize) -> S + Send + Sync + 'static,
    operation: impl Fn(&mut S) + Send + Sync + 'static,
) -> (Histogram<u64>, f64) {
    let (histogram, rate, _) = run_threads_with(threads, cpu, seconds, setup, |_| {}, operation);
    (histogram, rate)
}

/// `run_threads`, with `measuring` called on each thread's state as the measured period
/// starts, and the states returned.
fn run_threads_with<S: Send + 'static>(
    threads: usize,
    cpu: usize,
    seconds: f64,
    setup: impl Fn(usize) -> S + Send + Sync + 'static,
    measuring: impl Fn(&mut S) + Send + Sync + 'static,
    operation: impl Fn(&mut S) + Send + Sync + 'static,
) -> (Histogram<u64>, f64, Vec<S>) {
    let measuring = Arc::new(measuring);
    let setup = Arc::new(setup);
    let operation = Arc::new(operation);
    let warmup = Duration::from_millis(200);
    let handles: Vec<_> = (0..threads)
        .map(|index| {
            let (setup, operation) = (Arc::clone(&setup), Arc::clone(&operation));
            let measuring = Arc::clone(&measuring);
            std::thread::spawn(move || {
                pin_to_cpu(cpu);
                let mut state = setup(index);
                let started = Instant::now();
                while started.elapsed() < warmup {
                    operation(&mut state);
                }
                let mut histogram = histogram_ns();
                measuring(&mut state);
                let started = Instant::now();
                while started.elapsed().as_secs_f64() < seconds {
                    let began = Instant::now();
                    operation(&mut state);
                    histogram.record(began.elapsed().as_nanos() as u64).expect("in bounds");
                }
                (histogram, started.elapsed().as_secs_f64(), state)
            })
        })
        .collect();
    let mut total = histogram_ns();
    let mut rate = 0.0;
    let mut states = Vec::new();
    for handle in handles {
        let (histogram, elapsed, state) = handle.join().expect("a bench thread");
        rate += histogram.len() as f64 / elapsed;
        total.add(&histogram).expect("same bounds");
        states.push(state);
    }
    (total, rate, states)
}

fn ping_pong(
    address: SocketAddr,
    threads: usize,
    cpu: usize,
    seconds: f64,
) -> (Histogram<u64>, f64) {
    run_threads(
        threads,
        cpu,
        seconds,
        move |_| {
            let stream = std::net::TcpStream::connect(address).expect("echo server");
            stream.set_nodelay(true).expect("nodelay");
            stream
        },
        |stream| {
            let mut message = [7u8; MESSAGE_SIZE];
            stream.write_all(&message).expect("echo write");
            stream.read_exact(&mut message).expect("echo read");
        },
    )
}

fn loads(cluster: &Embedded, threads: usize, cpu: usize, seconds: f64) -> (Histogram<u64>, f64) {
    let clients: Vec<Client> = (0..threads).map(|_| cluster.client(0)).collect();
    let clients = Arc::new(clients);
    let outcome = {
        let clients = Arc::clone(&clients);
        run_threads(
            threads,
            cpu,
            seconds,
            move |index| (clients[index].clone(), index as u64 * 7919),
            |(client, seed)| {
                *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let oid = Oid((*seed >> 33) % OBJECTS);
                client.load(oid).expect("load");
            },
        )
    };
    for client in clients.iter() {
        client.close();
    }
    outcome
}

/// One client's objects and their serials, committed again and again.
struct Committer {
    client: Client,
    oids: Vec<Oid>,
    serials: Vec<Tid>,
    data: Bytes,
    /// Time in begin, in store + vote, in finish.
    phases: [Histogram<u64>; 3],
}

fn commit(committer: &mut Committer) {
    let began = Instant::now();
    let mut transaction = committer.client.tpc_begin(None).expect("begin");
    let stored = Instant::now();
    for (&oid, &serial) in committer.oids.iter().zip(&committer.serials) {
        transaction.store(oid, serial, committer.data.clone()).expect("store");
    }
    let meta = TransactionMeta { user: Bytes::from_static(b"bench"), ..TransactionMeta::default() };
    let conflicts = transaction.vote(&meta).expect("vote");
    assert!(conflicts.is_empty(), "each committer has its own objects");
    let voted = Instant::now();
    let tid = transaction.finish(|_| {}).expect("finish");
    let finished = Instant::now();
    committer.serials.fill(tid);
    for (phase, (from, to)) in
        [(began, stored), (stored, voted), (voted, finished)].into_iter().enumerate()
    {
        committer.phases[phase].record((to - from).as_nanos() as u64).expect("in bounds");
    }
}

/// Commits on `threads` clients: latency, rate, and the time in each phase.
fn commits(
    cluster: &Embedded,
    threads: usize,
    cpu: usize,
    seconds: f64,
) -> (Histogram<u64>, f64, [Histogram<u64>; 3]) {
    let committers: Vec<std::sync::Mutex<Option<Committer>>> = (0..threads)
        .map(|_| {
            let client = cluster.client(0);
            let oids = client.new_oids(COMMIT_OBJECTS as u32).expect("oids");
            let data = Bytes::from(vec![0x42u8; COMMIT_OBJECT_SIZE]);
            std::sync::Mutex::new(Some(Committer {
                client,
                serials: vec![Tid::ZERO; oids.len()],
                oids,
                data,
                phases: [histogram_ns(), histogram_ns(), histogram_ns()],
            }))
        })
        .collect();
    let committers = Arc::new(committers);
    let (histogram, rate, states) = run_threads_with(
        threads,
        cpu,
        seconds,
        move |index| committers[index].lock().expect("not poisoned").take().expect("once"),
        |committer| committer.phases.iter_mut().for_each(Histogram::reset),
        commit,
    );
    let mut phases = [histogram_ns(), histogram_ns(), histogram_ns()];
    for committer in states {
        for (total, phase) in phases.iter_mut().zip(&committer.phases) {
            total.add(phase).expect("same bounds");
        }
        committer.client.close();
    }
    (histogram, rate, phases)
}

/// Fills the load cases' objects: `OBJECTS` objects of `MESSAGE_SIZE` bytes.
fn populate(cluster: &Embedded) {
    let client = cluster.client(0);
    let oids = client.new_oids(OBJECTS as u32).expect("oids");
    for chunk in oids.chunks(100) {
        let mut transaction = client.tpc_begin(None).expect("begin");
        for &oid in chunk {
            transaction.store(oid, Tid::ZERO, Bytes::from(vec![1u8; MESSAGE_SIZE])).expect("store");
        }
        let conflicts = transaction.vote(&TransactionMeta::default()).expect("vote");
        assert!(conflicts.is_empty());
        transaction.finish(|_| {}).expect("finish");
    }
    client.close();
}

/// Latency percentiles and rate of the ZEO baseline, as `zeo/zeo_loads.py` prints them.
struct Zeo {
    rate: f64,
    /// p50, p90, p99, p999, max, in nanoseconds.
    percentiles: [f64; 5],
}

/// The Python that runs the ZEO baseline: `NEO_BENCH_PYTHON`, else `python3`, if it can
/// import ZEO and ZODB.
fn zeo_python() -> Result<String, String> {
    let python = std::env::var("NEO_BENCH_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let probe = std::process::Command::new(&python).args(["-c", "import ZEO, ZODB"]).output();
    match probe {
        Ok(output) if output.status.success() => Ok(python),
        _ => Err(format!(
            "{python} cannot import ZEO and ZODB (pip install ZEO ZODB, or set NEO_BENCH_PYTHON to a Python that can)"
        )),
    }
}

/// Runs the ZEO baseline: a ZEO server on `server_cpu`, `clients` client processes on
/// `client_cpu`, loading 64-byte objects with the client cache off.
fn zeo_loads(
    python: &str,
    directory: &Path,
    clients: usize,
    seconds: f64,
    server_cpu: usize,
    client_cpu: usize,
) -> Result<Zeo, String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/zeo/zeo_loads.py");
    std::fs::create_dir_all(directory).map_err(|e| e.to_string())?;
    let output = std::process::Command::new(python)
        .arg(script)
        .arg("--dir")
        .arg(directory)
        .args(["--clients", &clients.to_string(), "--seconds", &seconds.to_string()])
        .args(["--objects", &OBJECTS.to_string(), "--size", &MESSAGE_SIZE.to_string()])
        .args(["--server-cpu", &server_cpu.to_string(), "--client-cpu", &client_cpu.to_string()])
        .output()
        .map_err(|e| format!("{python} {script}: {e}"))?;
    let _ = std::fs::remove_dir_all(directory);
    if !output.status.success() {
        return Err(format!(
            "{script} failed: {}",
            String::from_utf8_lossy(&output.stderr).lines().last().unwrap_or("")
        ));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    // A flat JSON object of numbers: no JSON crate needed.
    let field = |name: &str| -> Result<f64, String> {
        let key = format!("\"{name}\": ");
        let start = text.find(&key).ok_or_else(|| format!("no {name} in {text}"))? + key.len();
        let end = text[start..].find([',', '}']).map_or(text.len(), |e| start + e);
        text[start..end].trim().parse().map_err(|_| format!("bad {name} in {text}"))
    };
    Ok(Zeo {
        rate: field("rate")?,
        percentiles: [field("p50")?, field("p90")?, field("p99")?, field("p999")?, field("max")?],
    })
}

fn print_zeo(name: &str, zeo: &Zeo) {
    let [p50, p90, p99, p999, max] = zeo.percentiles.map(crate::report::format_ns);
    println!(
        "  {:<44} {:>10}   p50 {p50:>9}  p90 {p90:>9}  p99 {p99:>9}  p999 {p999:>9}  max {max:>9}",
        name,
        format_rate(zeo.rate)
    );
}

struct Row {
    name: String,
    histogram: Histogram<u64>,
    rate: f64,
}

fn print_row(row: &Row) {
    println!("  {:<44} {:>10}   {}", row.name, format_rate(row.rate), percentiles(&row.histogram));
}

fn p50(histogram: &Histogram<u64>) -> f64 {
    histogram.value_at_quantile(0.5) as f64
}

pub fn run(options: &ClusterOptions) {
    let root = match &options.directory {
        Some(directory) => tempfile::tempdir_in(directory),
        None => tempfile::tempdir(),
    }
    .expect("bench directory");
    let client_cpu = current_cpu();
    let spin = options.spin_before_park;
    println!(
        "cluster: 1 storage core (and the echo server) on CPU {}, master on CPU {}, clients on CPU {client_cpu}, parking: {}",
        options.server_cpu,
        options.master_cpu,
        spin.map_or_else(|| "park when idle".to_owned(), |s| format!("spin {s:?} before parking"))
    );
    let stop_echo = Arc::new(AtomicBool::new(false));
    let (echo, echo_thread) = echo_server(options.server_cpu, spin, Arc::clone(&stop_echo));
    let cluster = Embedded::start(
        &root.path().join("storage"),
        options.server_cpu,
        std::env::var("MCPU").ok().and_then(|v| v.parse().ok()).unwrap_or(options.server_cpu),
        spin,
    );
    populate(&cluster);

    let mut load_ratios = Vec::new();
    let mut throughput_ratios = Vec::new();
    let mut commit_budgets = Vec::new();
    let mut commit_rate_ratios = Vec::new();
    let zeo_python = zeo_python();
    let mut zeo_rows: Vec<Vec<(String, Zeo)>> = Vec::new();
    let mut zeo_ratios = Vec::new();
    let mut zeo_latency_ratios = Vec::new();
    let mut rows: Vec<Vec<Row>> = Vec::new();
    let started = Instant::now();
    let progress = |case: &str| {
        eprintln!("neo-bench: cluster: {:>6.1} s: {case}", started.elapsed().as_secs_f64());
    };
    for repeat in 0..options.repeats {
        progress(&format!("repeat {} of {}", repeat + 1, options.repeats));
        progress("ping-pong and loads, 1 client");
        let (ping, ping_rate) = ping_pong(echo, 1, client_cpu, options.seconds);
        let (load, load_rate) = loads(&cluster, 1, client_cpu, options.seconds);
        progress("ping-pong and loads, many clients");
        let (ping_n, ping_n_rate) = ping_pong(echo, options.clients, client_cpu, options.seconds);
        let (load_n, load_n_rate) = loads(&cluster, options.clients, client_cpu, options.seconds);
        let raw_directory = root.path().join(format!("raw-{repeat}"));
        std::fs::create_dir_all(&raw_directory).expect("raw directory");
        if let Ok(python) = &zeo_python {
            progress("ZEO loads, 1 and many clients");
            let mut rows = Vec::new();
            for clients in [1, options.clients] {
                let directory = root.path().join(format!("zeo-{repeat}-{clients}"));
                let cpus = (options.server_cpu, client_cpu);
                match zeo_loads(python, &directory, clients, options.seconds, cpus.0, cpus.1) {
                    Ok(zeo) => {
                        if clients == 1 {
                            zeo_latency_ratios.push(zeo.percentiles[0] / p50(&load));
                        } else {
                            zeo_ratios.push(load_n_rate / zeo.rate);
                        }
                        let what = if clients == 1 { "client" } else { "client processes" };
                        let name = format!("ZEO load 64 B, {clients} {what}, cache off");
                        rows.push((name, zeo));
                    }
                    Err(error) => eprintln!("neo-bench: ZEO baseline: {error}"),
                }
            }
            zeo_rows.push(rows);
        }
        progress("raw fdatasync");
        let raw = raw_fdatasync(&raw_directory, options.seconds);
        let _ = std::fs::remove_dir_all(&raw_directory);
        progress("commits, 1 client");
        let (commit_1, commit_1_rate, phases_1) = commits(&cluster, 1, client_cpu, options.seconds);
        progress("commits, many clients");
        let (commit_n, commit_n_rate, phases_n) =
            commits(&cluster, options.clients, client_cpu, options.seconds);
        load_ratios.push(p50(&load) / p50(&ping));
        throughput_ratios.push(load_n_rate / ping_n_rate);
        let budget = 2.0 * p50(&raw.histogram) + 4.0 * p50(&ping);
        commit_budgets.push(p50(&commit_1) / budget);
        commit_rate_ratios.push(commit_n_rate / raw.rate);
        let n = options.clients;
        rows.push(vec![
            Row {
                name: "raw TCP ping-pong 64 B, 1 client".into(),
                histogram: ping,
                rate: ping_rate,
            },
            Row { name: "load 64 B, 1 client, cache off".into(), histogram: load, rate: load_rate },
            Row {
                name: format!("raw TCP ping-pong 64 B, {n} clients"),
                histogram: ping_n,
                rate: ping_n_rate,
            },
            Row {
                name: format!("load 64 B, {n} clients, cache off"),
                histogram: load_n,
                rate: load_n_rate,
            },
            Row {
                name: "raw 4 KiB write + fdatasync".into(),
                histogram: raw.histogram,
                rate: raw.rate,
            },
            Row {
                name: "commit 3 x 1 KiB, 1 client".into(),
                histogram: commit_1,
                rate: commit_1_rate,
            },
            Row {
                name: format!("commit 3 x 1 KiB, {n} clients"),
                histogram: commit_n,
                rate: commit_n_rate,
            },
        ]);
        let rows = rows.last_mut().expect("pushed");
        for (clients, phases) in [(1, phases_1), (n, phases_n)] {
            for (name, histogram) in ["begin", "stores + vote", "finish"].into_iter().zip(phases) {
                let rate = 0.0;
                let name = format!("  of which {name}, {clients} client(s)");
                rows.push(Row { name, histogram, rate });
            }
        }
    }
    // Every repeat's figures, then the ratios with their spread over the repeats.
    for (repeat, rows) in rows.iter().enumerate() {
        println!(" repeat {}:", repeat + 1);
        for row in rows {
            print_row(row);
        }
        for (name, zeo) in zeo_rows.get(repeat).into_iter().flatten() {
            print_zeo(name, zeo);
        }
    }
    let spread = |ratios: &[f64]| {
        let min = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let max = ratios.iter().copied().fold(0.0, f64::max);
        format!("{min:.2}-{max:.2}")
    };
    let verdict = |ok: bool| if ok { "meets" } else { "MISSES" };
    let worst_high = |ratios: &[f64]| ratios.iter().copied().fold(0.0, f64::max);
    let worst_low = |ratios: &[f64]| ratios.iter().copied().fold(f64::INFINITY, f64::min);
    println!(" ratios over {} repeats (min-max):", options.repeats);
    let n = options.clients;
    let mut checks = vec![
        (
            "load p50 / ping-pong p50, 1 client".to_owned(),
            &load_ratios,
            worst_high(&load_ratios) <= 2.0,
            "2x",
        ),
        (
            format!("load rate / echo rate, {n} clients"),
            &throughput_ratios,
            worst_low(&throughput_ratios) >= 0.7,
            "0.70",
        ),
        (
            "commit p50 / (2 fdatasync + 4 RTT), 1 client".to_owned(),
            &commit_budgets,
            worst_high(&commit_budgets) <= 1.0,
            "1.0",
        ),
        (
            format!("commits/s / raw fdatasync rate, {n} clients"),
            &commit_rate_ratios,
            worst_low(&commit_rate_ratios) >= 3.0,
            "3x",
        ),
    ];
    if !zeo_ratios.is_empty() {
        checks.push((
            format!("load rate / ZEO's, {n} clients"),
            &zeo_ratios,
            worst_low(&zeo_ratios) >= 10.0,
            "10x",
        ));
    }
    for (label, ratios, ok, target) in checks {
        println!("  {label:<46} {}  ({} the {target} target)", spread(ratios), verdict(ok));
    }
    match &zeo_python {
        Ok(_) if !zeo_latency_ratios.is_empty() => {
            println!("  {:<46} {}", "ZEO load p50 / ours, 1 client", spread(&zeo_latency_ratios));
        }
        Ok(_) => println!("  ZEO baseline: failed (see stderr)"),
        Err(why) => println!("  ZEO baseline: skipped: {why}"),
    }
    stop_echo.store(true, Ordering::Relaxed);
    let _ = echo_thread.join();
    cluster.stop();
}

/// The CPU the calling thread runs on.
fn current_cpu() -> usize {
    // SAFETY: sched_getcpu has no arguments and only returns a number.
    let cpu = unsafe { libc::sched_getcpu() };
    usize::try_from(cpu).unwrap_or(0)
}
