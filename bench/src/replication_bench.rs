//! Replication: how fast an out-of-date cell catches up, and what it costs the cluster
//! meanwhile, each beside a baseline of the same run.
//!
//! A master and two storages (`neo` processes, replicas 1, on the bench directory's disk);
//! one storage is killed, `--replication-mib` of objects are written, and it is started
//! again: it replicates everything it missed from the other.
//!
//! - Catch-up rate, in bytes of object data per second, from the restart until every cell
//!   is up to date, against the raw baseline of copying the same bytes from one file to
//!   another on the same disk with one fdatasync per MiB (target: at least half).
//! - While it catches up, one client loads random objects (served by the source, the only
//!   readable copy) and one commits: load p99 against the same loads' p99 before the
//!   restart (target: at most 2x), commit rate against the rate after, both up to date (at
//!   least 70%).
//!
//! The storages are pinned (`neo storage --cpus`): the source to CPU 0, where the bench,
//! its clients and the master run by default, the destination to CPU 1, alone, as if on
//! another host.
//!
//! Back-of-envelope: objects of 4 KiB in chunks of 1000 records are ~4 MiB of writes and one
//! fdatasync per chunk on the destination, reads from the page cache on the source, and a
//! loopback stream between: disk-bound, so close to the raw copy if the low-priority queue
//! gets the CPU the load leaves free.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use engine::client::{Client, ClientOptions, TransactionMeta};
use hdrhistogram::Histogram;
use wire::{Oid, Tid};

use crate::harness::Random;
use crate::report::{format_rate, histogram_ns, percentiles};

const CLUSTER: &str = "bench-replication";
const OBJECT_SIZE: usize = 4096;
const OBJECTS_PER_TRANSACTION: usize = 64;

pub struct ReplicationOptions {
    /// Object data the restarted storage must copy, in MiB.
    pub mib: usize,
    /// Seconds of each idle baseline (loads, commits) before the restart.
    pub seconds: f64,
    pub directory: Option<PathBuf>,
}

/// Children killed when the bench ends, however it ends.
struct Processes(Vec<(&'static str, Child)>);

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Processes {
    fn kill(&mut self, name: &str) {
        if let Some(index) = self.0.iter().position(|(n, _)| *n == name) {
            let (_, mut child) = self.0.remove(index);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn neo_binary() -> Result<PathBuf, String> {
    let neo = std::env::current_exe().map_err(|e| e.to_string())?.with_file_name("neo");
    if neo.exists() {
        Ok(neo)
    } else {
        Err(format!(
            "{} is missing: build it first (cargo build --release -p engine --bin neo)",
            neo.display()
        ))
    }
}

/// The CPU each storage is pinned to (`neo storage --cpus`): a on the first, b on the
/// second, as on two hosts, where the destination's ingest takes no CPU from the source.
/// (Unpinned, they would inherit the bench's own pinning to CPU 0, all on one CPU.) None
/// on a single-CPU machine.
fn storage_cpu(host: &str) -> Option<usize> {
    // The machine's CPUs, not this process's (the bench's main thread is pinned).
    // SAFETY: sysconf reads a system value.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    (cpus >= 2).then_some(usize::from(host == "b"))
}

fn start_storage(neo: &Path, master: &str, data: &Path, host: &str) -> Child {
    let mut command = Command::new(neo);
    if let Some(cpu) = storage_cpu(host) {
        command.args(["storage", "--cpus", &cpu.to_string()]);
    } else {
        command.arg("storage");
    }
    command
        .args(["--cluster", CLUSTER, "--master", master, "--host", host, "--data"])
        .arg(data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("a storage process")
}

fn ctl(neo: &Path, master: &str, words: &[&str]) -> String {
    let output = Command::new(neo)
        .args(["ctl", "--cluster", CLUSTER, "--master", master])
        .args(words)
        .output()
        .expect("neo ctl");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn wait_for(neo: &Path, master: &str, words: &[&str], accept: impl Fn(&str) -> bool) {
    wait_every(neo, master, words, Duration::from_millis(20), accept);
}

/// `wait_for`, looking every `every`: each look starts a `neo ctl` process, whose CPU the
/// measured clients would otherwise share.
fn wait_every(
    neo: &Path,
    master: &str,
    words: &[&str],
    every: Duration,
    accept: impl Fn(&str) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while !accept(&ctl(neo, master, words)) {
        assert!(Instant::now() < deadline, "the cluster never reached {words:?}'s state");
        std::thread::sleep(every);
    }
}

/// Every cell up to date (the table's grid lines hold no O or F).
fn up_to_date(text: &str) -> bool {
    let grid: String = text.lines().skip(1).filter(|l| !l.starts_with("replicating")).collect();
    !grid.is_empty() && !grid.contains('O') && !grid.contains('F')
}

fn meta() -> TransactionMeta {
    TransactionMeta {
        user: Bytes::from_static(b"neo-bench"),
        description: Bytes::from_static(b"replication"),
        extension: Bytes::new(),
    }
}

/// Writes `mib` MiB of new objects; returns them.
fn populate(client: &Client, mib: usize) -> Vec<Oid> {
    let count = (mib << 20) / OBJECT_SIZE;
    let oids = client.new_oids(count as u32).expect("oids");
    let mut random = Random::new(7);
    for group in oids.chunks(OBJECTS_PER_TRANSACTION) {
        let mut transaction = client.tpc_begin(None).expect("begin");
        for &oid in group {
            // Data that does not compress or repeat.
            let data: Vec<u8> = (0..OBJECT_SIZE).map(|_| random.below(256) as u8).collect();
            transaction.store(oid, Tid::ZERO, Bytes::from(data)).expect("store");
        }
        assert!(transaction.vote(&meta()).expect("vote").is_empty());
        transaction.finish(|_| {}).expect("finish");
    }
    oids
}

/// The raw baseline: `bytes` written to a file and made durable, then read back and
/// copied to another file with one fdatasync per MiB. Bytes per second of the copy.
fn raw_copy(directory: &Path, bytes: usize) -> f64 {
    use std::io::{Read, Write};
    let source = directory.join("raw-copy-source");
    let destination = directory.join("raw-copy-destination");
    let mut random = Random::new(11);
    let chunk: Vec<u8> = (0..1 << 20).map(|_| random.below(256) as u8).collect();
    {
        let mut file = std::fs::File::create(&source).expect("raw source");
        for _ in 0..bytes.div_ceil(1 << 20) {
            file.write_all(&chunk).expect("write");
        }
        file.sync_all().expect("sync");
    }
    let started = Instant::now();
    let mut input = std::fs::File::open(&source).expect("open");
    let mut output = std::fs::File::create(&destination).expect("raw destination");
    let mut buffer = vec![0u8; 1 << 20];
    let mut copied = 0;
    loop {
        let read = input.read(&mut buffer).expect("read");
        if read == 0 {
            break;
        }
        output.write_all(&buffer[..read]).expect("write");
        output.sync_data().expect("fdatasync");
        copied += read;
    }
    let rate = copied as f64 / started.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(source);
    let _ = std::fs::remove_file(destination);
    rate
}

/// What one client measured while `running`.
struct Load {
    loads: Histogram<u64>,
    commits: Histogram<u64>,
    seconds: f64,
}

/// One client loading random objects and one committing, until `stop`.
fn load_and_commit(masters: &str, oids: &Arc<Vec<Oid>>, stop: &Arc<AtomicBool>) -> Load {
    let connect = || {
        let mut options = ClientOptions::new(CLUSTER, vec![masters.parse().expect("address")]);
        options.cache_size = 0;
        Client::connect(options).expect("a client")
    };
    let (loader, committer) = (connect(), connect());
    let started = Instant::now();
    let loads = {
        let (oids, stop) = (Arc::clone(oids), Arc::clone(stop));
        std::thread::spawn(move || {
            let mut histogram = histogram_ns();
            let mut random = Random::new(3);
            while !stop.load(Ordering::Relaxed) {
                let oid = oids[random.below(oids.len() as u64) as usize];
                let began = Instant::now();
                loader.load(oid).expect("load");
                histogram.record(began.elapsed().as_nanos() as u64).expect("in bounds");
            }
            loader.close();
            histogram
        })
    };
    let commits = {
        let stop = Arc::clone(stop);
        std::thread::spawn(move || {
            let oids = committer.new_oids(3).expect("oids");
            let mut serials = [Tid::ZERO; 3];
            let mut count = 0u64;
            let mut histogram = histogram_ns();
            while !stop.load(Ordering::Relaxed) {
                let began = Instant::now();
                let mut transaction = committer.tpc_begin(None).expect("begin");
                for (oid, serial) in oids.iter().zip(&serials) {
                    let data = Bytes::from(vec![count as u8; 999]);
                    transaction.store(*oid, *serial, data).expect("store");
                }
                assert!(transaction.vote(&meta()).expect("vote").is_empty());
                let tid = transaction.finish(|_| {}).expect("finish");
                histogram.record(began.elapsed().as_nanos() as u64).expect("in bounds");
                serials = [tid; 3];
                count += 1;
            }
            committer.close();
            histogram
        })
    };
    let loads = loads.join().expect("loads");
    let commits = commits.join().expect("commits");
    Load { loads, commits, seconds: started.elapsed().as_secs_f64() }
}

pub fn run(options: &ReplicationOptions) -> Result<(), String> {
    let neo = neo_binary()?;
    let root = match &options.directory {
        Some(directory) => tempfile::tempdir_in(directory),
        None => tempfile::tempdir_in(std::env::temp_dir()),
    }
    .map_err(|e| format!("bench directory: {e}"))?;
    let data = root.path();
    let mut processes = Processes(Vec::new());
    let mut master = Command::new(&neo)
        .args(["master", "--cluster", CLUSTER, "--bind", "127.0.0.1:0", "--partitions", "12"])
        .args(["--replicas", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("neo master: {e}"))?;
    let mut line = String::new();
    {
        use std::io::BufRead;
        let stdout = master.stdout.take().expect("piped");
        std::io::BufReader::new(stdout).read_line(&mut line).map_err(|e| e.to_string())?;
    }
    processes.0.push(("master", master));
    let masters = line.trim().rsplit(' ').next().unwrap_or_default().to_owned();
    processes.0.push(("a", start_storage(&neo, &masters, &data.join("a"), "a")));
    processes.0.push(("b", start_storage(&neo, &masters, &data.join("b"), "b")));
    wait_for(&neo, &masters, &["print", "node"], |t| t.matches("PENDING").count() == 2);
    ctl(&neo, &masters, &["start"]);
    wait_for(&neo, &masters, &["print", "cluster"], |t| t == "RUNNING\n");

    let client = {
        let mut client_options =
            ClientOptions::new(CLUSTER, vec![masters.parse().map_err(|_| "address")?]);
        client_options.cache_size = 0;
        Client::connect(client_options).map_err(|e| e.to_string())?
    };
    // Phase 1, the catch-up rate: b is away while `mib` MiB are written, then comes back
    // to an idle cluster.
    eprintln!("neo-bench replication: {} MiB written while storage b is down", options.mib);
    processes.kill("b");
    wait_for(&neo, &masters, &["print", "pt"], |t| t.contains('O'));
    let oids = Arc::new(populate(&client, options.mib));
    let bytes = oids.len() * OBJECT_SIZE;
    let raw_rate = raw_copy(data, bytes);
    eprintln!("neo-bench replication: storage b back, catching up alone");
    let started = Instant::now();
    processes.0.push(("b", start_storage(&neo, &masters, &data.join("b"), "b")));
    wait_every(&neo, &masters, &["print", "pt"], Duration::from_millis(50), up_to_date);
    let catch_up = started.elapsed().as_secs_f64();

    // Phase 2, the cost: b away again while as much is written, loads and commits measured
    // with b away, then again while it catches up.
    processes.kill("b");
    wait_for(&neo, &masters, &["print", "pt"], |t| t.contains('O'));
    let more = Arc::new(populate(&client, options.mib));
    client.close();
    eprintln!("neo-bench replication: loads and commits before");
    let timed = |masters: &str, oids: &Arc<Vec<Oid>>| {
        let stop = Arc::new(AtomicBool::new(false));
        let timer = {
            let stop = Arc::clone(&stop);
            let seconds = options.seconds;
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_secs_f64(seconds));
                stop.store(true, Ordering::Relaxed);
            })
        };
        let measured = load_and_commit(masters, oids, &stop);
        timer.join().expect("timer");
        measured
    };
    let idle = timed(&masters, &more);
    eprintln!("neo-bench replication: storage b back, catching up under loads and commits");
    let stop = Arc::new(AtomicBool::new(false));
    let during = {
        let (masters, oids, stop) = (masters.clone(), Arc::clone(&more), Arc::clone(&stop));
        std::thread::spawn(move || load_and_commit(&masters, &oids, &stop))
    };
    let loaded_started = Instant::now();
    processes.0.push(("b", start_storage(&neo, &masters, &data.join("b"), "b")));
    // Looked at five times a second: the loads measured meanwhile would otherwise share
    // the CPUs with fifty `neo ctl` processes a second, which the loads before and after
    // do not.
    wait_every(&neo, &masters, &["print", "pt"], Duration::from_millis(200), up_to_date);
    let loaded_catch_up = loaded_started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let during = during.join().map_err(|_| "the clients failed during the catch-up")?;
    // Phase 3, the same clients without replication: both storages up to date.
    eprintln!("neo-bench replication: loads and commits after, both storages up to date");
    let after = timed(&masters, &more);

    let catch_up_rate = bytes as f64 / catch_up;
    let loaded_rate = (more.len() * OBJECT_SIZE) as f64 / loaded_catch_up;
    let mib = |rate: f64| format!("{:.1} MiB/s", rate / f64::from(1 << 20));
    let idle_commits = idle.commits.len() as f64 / idle.seconds;
    let during_commits = during.commits.len() as f64 / during.seconds;
    let after_commits = after.commits.len() as f64 / after.seconds;
    let p99 = |h: &Histogram<u64>| h.value_at_quantile(0.99) as f64;
    println!(
        "replication: one cell catching up {} MiB ({} objects of 4 KiB)",
        bytes >> 20,
        oids.len()
    );
    match (storage_cpu("a"), storage_cpu("b")) {
        (Some(a), Some(b)) => {
            println!(
                "  storages pinned (neo storage --cpus): a, the source, on CPU {a}, b on CPU {b}"
            )
        }
        _ => println!("  storages unpinned (one CPU)"),
    }
    println!("  raw copy, 1 fdatasync per MiB      {}", mib(raw_rate));
    println!("  catch-up alone ({catch_up:.2} s)        {}", mib(catch_up_rate));
    println!(
        "  catch-up under load ({loaded_catch_up:.2} s)   {} (paced while transactions are in flight)",
        mib(loaded_rate)
    );
    println!("  loads before   {}", percentiles(&idle.loads));
    println!("  loads during   {}", percentiles(&during.loads));
    println!("  commits before {}  ({})", percentiles(&idle.commits), format_rate(idle_commits));
    println!("  loads after    {}", percentiles(&after.loads));
    println!(
        "  commits during {}  ({})",
        percentiles(&during.commits),
        format_rate(during_commits)
    );
    println!("  commits after  {}  ({})", percentiles(&after.commits), format_rate(after_commits));
    let verdict = |ok: bool| if ok { "meets target" } else { "MISSES target" };
    let rate_ratio = catch_up_rate / raw_rate;
    let load_ratio = p99(&during.loads) / p99(&idle.loads).max(1.0);
    // Without replication: the same two storages, both up to date (each commit is
    // written and locked on both, as during the catch-up). With b away, on one only.
    let commit_ratio = during_commits / after_commits.max(1e-9);
    let commit_ratio_away = during_commits / idle_commits.max(1e-9);
    println!(
        "  catch-up / raw copy                 {rate_ratio:.2}  {} >= 0.5",
        verdict(rate_ratio >= 0.5)
    );
    println!(
        "  load p99 during / before            {load_ratio:.2}  {} <= 2",
        verdict(load_ratio <= 2.0)
    );
    println!(
        "  commit rate during / after          {commit_ratio:.2}  {} >= 0.7",
        verdict(commit_ratio >= 0.7)
    );
    println!("  commit rate during / before (b away) {commit_ratio_away:.2}");
    // The same cluster without replication (both up to date, loads served by either).
    let load_ratio_after = p99(&during.loads) / p99(&after.loads).max(1.0);
    println!("  load p99 during / after (both up)   {load_ratio_after:.2}");
    Ok(())
}
