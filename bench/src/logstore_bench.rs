//! The logstore benchmark, with its baseline measured in the same run on the same disk:
//!
//! - raw 4 KiB write + fdatasync into a preallocated file (allocated the way segments are);
//! - group commit: 16 committers, 3 objects of 1 KiB per transaction, each transaction
//!   durable at vote and at lock, as a storage core runs them;
//! - one committer alone (two fdatasyncs per transaction);
//! - hot lookup of a 1 KiB object (page cache), in process;
//! - restart: replaying a log of many revisions, and the index's heap memory.
//!
//! Estimate first: a transaction needs two fdatasyncs in sequence (vote, then lock), so one
//! committer gets at best half the raw rate; with 16 committers each fdatasync carries up to
//! 16 transactions' records, so the rate should approach 16 / 2 = 8x raw, less the cost of
//! writing 16 x 3 KiB per sync.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use logstore::{Disk, FileDisk, LogStore, Options, TransactionMeta, Value};
use wire::{Compression, Oid, Tid};

use crate::alloc::live_bytes;
use crate::report::{format_ns, format_rate, histogram_ns, percentiles};

#[derive(Debug, Clone)]
pub struct LogstoreOptions {
    pub seconds: f64,
    pub directory: Option<PathBuf>,
    pub committers: usize,
    pub lookup_objects: u64,
    pub restart_revisions: u64,
}

pub struct Measured {
    pub name: String,
    pub histogram: Histogram<u64>,
    pub rate: f64,
    pub unit: &'static str,
}

fn data(seed: u64, size: usize) -> Bytes {
    Bytes::from((0..size).map(|i| (i as u64 ^ seed.wrapping_mul(31)) as u8).collect::<Vec<u8>>())
}

fn value(seed: u64, size: usize) -> Value {
    let data = data(seed, size);
    Value::Data { compression: Compression::None, data_crc: crc32fast::hash(&data), data }
}

fn meta(oids: Vec<Oid>) -> TransactionMeta {
    TransactionMeta {
        user: Bytes::from_static(b"bench"),
        description: Bytes::new(),
        extension: Bytes::new(),
        oids,
        pack: None,
    }
}

/// Raw baseline: 4 KiB pwrite + fdatasync at increasing offsets of one preallocated file.
fn raw_fdatasync(directory: &Path, seconds: f64) -> Measured {
    let mut disk = FileDisk::open(directory.join("raw")).expect("raw directory");
    let size: u32 = 256 << 20;
    disk.create_segment(0, size).expect("preallocate");
    let block = vec![0x5Au8; 4096];
    let mut histogram = histogram_ns();
    let start = Instant::now();
    let mut offset = 0u32;
    let mut count = 0u64;
    while start.elapsed().as_secs_f64() < seconds {
        let began = Instant::now();
        disk.write(0, offset, &block).expect("write");
        disk.sync(0).expect("fdatasync");
        histogram.record(began.elapsed().as_nanos() as u64).expect("in bounds");
        offset = (offset + 4096) % (size - 4096);
        count += 1;
    }
    let rate = count as f64 / start.elapsed().as_secs_f64();
    Measured { name: "raw 4 KiB write + fdatasync".into(), histogram, rate, unit: "syncs" }
}

#[derive(Clone, Copy)]
enum Stage {
    Idle,
    Voting(Tid, Instant),
    Locking(Tid, Instant),
}

/// `committers` transactions in flight at once, each made durable at vote and at lock; one
/// flush per round serves them all (group commit), as a storage core would run them.
fn group_commit(directory: &Path, seconds: f64, committers: usize) -> Measured {
    let mut store = LogStore::open_directory(directory, Options::default()).expect("open store");
    let mut stages = vec![Stage::Idle; committers];
    let mut histogram = histogram_ns();
    let mut next_tid = 1u64 << 40;
    let mut committed = 0u64;
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < seconds {
        for (index, stage) in stages.iter_mut().enumerate() {
            *stage = match *stage {
                Stage::Idle => {
                    next_tid += 1;
                    let ttid = Tid(next_tid);
                    let oids: Vec<Oid> = (0..3).map(|i| Oid((index * 3 + i) as u64)).collect();
                    let began = Instant::now();
                    for &oid in &oids {
                        store.store(ttid, oid, value(next_tid ^ oid.0, 1024)).expect("store");
                    }
                    store.vote(ttid, Some(meta(oids))).expect("vote");
                    Stage::Voting(ttid, began)
                }
                Stage::Voting(ttid, began) => {
                    next_tid += 1;
                    store.lock(ttid, Tid(next_tid)).expect("lock");
                    Stage::Locking(ttid, began)
                }
                Stage::Locking(ttid, began) => {
                    store.unlock(ttid).expect("unlock");
                    histogram.record(began.elapsed().as_nanos() as u64).expect("in bounds");
                    committed += 1;
                    Stage::Idle
                }
            };
        }
        store.flush().expect("flush");
    }
    let rate = committed as f64 / start.elapsed().as_secs_f64();
    Measured {
        name: format!("commit, {committers} committers x 3 x 1 KiB"),
        histogram,
        rate,
        unit: "txn",
    }
}

/// Hot loads of 1 KiB objects (all in the page cache), one at a time, in process.
fn hot_lookup(directory: &Path, seconds: f64, objects: u64) -> Measured {
    let mut store = LogStore::open_directory(directory, Options::default()).expect("open store");
    let per_transaction = 1000;
    let mut tid = 1u64 << 40;
    for first in (0..objects).step_by(per_transaction) {
        tid += 2;
        let ttid = Tid(tid);
        let oids: Vec<Oid> =
            (first..(first + per_transaction as u64).min(objects)).map(Oid).collect();
        for &oid in &oids {
            store.store(ttid, oid, value(oid.0, 1024)).expect("store");
        }
        store.vote(ttid, None).expect("vote");
        store.flush().expect("flush");
        store.lock(ttid, Tid(tid + 1)).expect("lock");
        store.flush().expect("flush");
        store.unlock(ttid).expect("unlock");
    }
    // Touch everything once so that the measured loads hit the page cache.
    for oid in 0..objects {
        store.load(Oid(oid), None, None).expect("load");
    }
    let mut histogram = histogram_ns();
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let start = Instant::now();
    let mut count = 0u64;
    while start.elapsed().as_secs_f64() < seconds {
        for _ in 0..1000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let oid = Oid(state % objects);
            let began = Instant::now();
            let loaded = store.load(oid, None, None).expect("load");
            histogram.record(began.elapsed().as_nanos().max(1) as u64).expect("in bounds");
            std::hint::black_box(loaded.data.len());
        }
        count += 1000;
    }
    let rate = count as f64 / start.elapsed().as_secs_f64();
    Measured { name: "hot load, 1 KiB object, in process".into(), histogram, rate, unit: "loads" }
}

pub struct RestartResult {
    pub revisions: u64,
    pub log_bytes: u64,
    pub open: Duration,
    pub index_bytes: u64,
}

/// Writes `revisions` small revisions, closes cleanly, and times the reopen (today a full
/// replay: there are no index checkpoints yet) and the heap the index takes.
fn restart(directory: &Path, revisions: u64) -> RestartResult {
    {
        let mut store =
            LogStore::open_directory(directory, Options::default()).expect("open store");
        let per_transaction = 10_000u64;
        let mut tid = 1u64 << 40;
        for first in (0..revisions).step_by(per_transaction as usize) {
            tid += 2;
            let ttid = Tid(tid);
            for oid in first..(first + per_transaction).min(revisions) {
                store.store(ttid, Oid(oid), value(oid, 64)).expect("store");
            }
            store.vote(ttid, None).expect("vote");
            store.flush().expect("flush");
            store.lock(ttid, Tid(tid + 1)).expect("lock");
            store.flush().expect("flush");
            store.unlock(ttid).expect("unlock");
        }
        store.flush().expect("flush");
    }
    let before = live_bytes();
    let began = Instant::now();
    let store = LogStore::open_directory(directory, Options::default()).expect("reopen");
    let open = began.elapsed();
    let index_bytes = live_bytes().saturating_sub(before);
    // Bytes of log written: every segment before the last is full.
    let durable = store.durable();
    let log_bytes = u64::from(durable.segment()) * u64::from(Options::default().segment_size)
        + u64::from(durable.offset());
    assert_eq!(store.revision_count().expect("count") as u64, revisions);
    RestartResult { revisions, log_bytes, open, index_bytes }
}

pub fn run(options: &LogstoreOptions) {
    let parent = options.directory.clone().unwrap_or_else(std::env::temp_dir);
    let scratch = tempfile::tempdir_in(&parent).expect("scratch directory");
    let root = scratch.path();
    println!("logstore: data in {} (removed afterwards)", root.display());

    let raw = raw_fdatasync(root, options.seconds);
    let single = group_commit(&root.join("single"), options.seconds, 1);
    let group = group_commit(&root.join("group"), options.seconds, options.committers);
    for measured in [&raw, &single, &group] {
        print_measured(measured, Some(raw.rate));
    }
    let single_p50 = single.histogram.value_at_quantile(0.5) as f64;
    let raw_p50 = raw.histogram.value_at_quantile(0.5) as f64;
    println!(
        "  one committer: commit p50 {} = {:.2} x raw fdatasync p50 {} (two fdatasyncs per commit)",
        format_ns(single_p50),
        single_p50 / raw_p50,
        format_ns(raw_p50)
    );
    let verdict = if group.rate >= 3.0 * raw.rate { "meets" } else { "MISSES" };
    println!(
        "  group commit: {:.1}x the raw fdatasync rate ({verdict} the 3x target)",
        group.rate / raw.rate
    );

    let lookup = hot_lookup(&root.join("lookup"), options.seconds, options.lookup_objects);
    print_measured(&lookup, None);
    let p50 = lookup.histogram.value_at_quantile(0.5) as f64;
    let verdict = if p50 < 2000.0 { "meets" } else { "MISSES" };
    println!("  hot load p50 {} ({verdict} the 2 us target)", format_ns(p50));

    let restart = restart(&root.join("restart"), options.restart_revisions);
    let per_million =
        restart.index_bytes as f64 / (restart.revisions as f64 / 1e6) / (1 << 20) as f64;
    let replay_rate = restart.log_bytes as f64 / restart.open.as_secs_f64();
    println!(
        "  restart: {} revisions, {:.0} MiB of log, reopened in {:.2} s (full replay: no index checkpoint yet)",
        restart.revisions,
        restart.log_bytes as f64 / (1 << 20) as f64,
        restart.open.as_secs_f64()
    );
    println!(
        "    replay {:.0} MiB/s, so a crash restart with a 1 GiB tail takes about {:.1} s on this disk (computed from this rate)",
        replay_rate / (1 << 20) as f64,
        (1u64 << 30) as f64 / replay_rate
    );
    println!(
        "    10 M revisions at this rate: about {:.1} s (target after a clean shutdown: under 2 s; MISSES until index files exist)",
        restart.open.as_secs_f64() * 1e7 / restart.revisions as f64
    );
    println!(
        "    index heap: {per_million:.1} MiB per million revisions (target under 16 MiB: {})",
        if per_million < 16.0 { "meets" } else { "MISSES, the index is all in memory" }
    );
}

fn print_measured(measured: &Measured, baseline: Option<f64>) {
    let ratio = baseline
        .map_or_else(String::new, |b| format!("  x{:.2} vs raw fdatasync", measured.rate / b));
    println!("  {:<40} {:>10} {}{ratio}", measured.name, format_rate(measured.rate), measured.unit);
    println!("  {:<40} {}", "", percentiles(&measured.histogram));
}
