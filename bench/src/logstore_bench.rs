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
    /// Log written after the checkpoint before the crash-restart measurement.
    pub tail_bytes: u64,
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
pub(crate) fn raw_fdatasync(directory: &Path, seconds: f64) -> Measured {
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

/// Hot loads of 1 KiB objects (all in the page cache), one at a time, in process: first with
/// the index in memory, then after a checkpoint, through the mmap'd index file.
fn hot_lookup(directory: &Path, seconds: f64, objects: u64) -> (Measured, Measured) {
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
    let in_memory = measure_loads(&mut store, seconds, objects, "hot load, 1 KiB, index in memory");
    store.checkpoint().expect("checkpoint");
    let mapped = measure_loads(&mut store, seconds, objects, "hot load, 1 KiB, index file (mmap)");
    (in_memory, mapped)
}

fn measure_loads(store: &mut LogStore, seconds: f64, objects: u64, name: &str) -> Measured {
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
    Measured { name: name.into(), histogram, rate, unit: "loads" }
}

/// Group commit on one glommio executor: `committers` tasks, a flusher task, and a reader
/// task loading hot objects at a fixed rate (latency measured from each load's scheduled
/// start, so a stalled core shows). With `blocking`, the flusher calls the std fdatasync on
/// the core instead of io_uring, as a baseline for what a blocking sync costs the core.
fn glommio_group_commit(
    directory: &Path,
    seconds: f64,
    committers: u64,
    blocking: bool,
) -> (Measured, Measured) {
    use std::cell::{Cell, RefCell};
    use std::rc::Rc;

    use logstore::{DurableWatch, Notify, UringFiles, flush_loop};

    let directory = directory.to_owned();
    glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(0))
        .io_memory(2 << 20)
        // glommio pins its blocking thread (checkpoint jobs) to the core by default.
        .blocking_thread_pool_placement(glommio::PoolPlacement::Unbound(1))
        .spawn(move || async move {
            let store = Rc::new(RefCell::new(
                LogStore::open_directory(&directory, Options::default()).expect("open store"),
            ));
            // Objects for the reader.
            let objects = 10_000u64;
            let mut tid = 1u64 << 40;
            {
                let mut store = store.borrow_mut();
                for first in (0..objects).step_by(1000) {
                    commit_small_in(&mut store, &mut tid, first..first + 1000, 1024);
                }
            }
            let watch = Rc::new(DurableWatch::new(store.borrow().durable()));
            let work = Rc::new(Notify::default());
            let stop = Rc::new(Cell::new(false));
            let flusher = {
                let (store, watch, work, stop) =
                    (store.clone(), watch.clone(), work.clone(), stop.clone());
                let directory = directory.clone();
                glommio::spawn_local(async move {
                    if blocking {
                        loop {
                            let behind = store.borrow().durable() < store.borrow().tail();
                            if behind {
                                let durable = store.borrow_mut().flush().expect("flush");
                                watch.publish(durable);
                                // Let the other tasks run between syncs, as a fair baseline.
                                glommio::yield_if_needed().await;
                                futures_lite_yield().await;
                            } else if stop.get() {
                                break;
                            } else {
                                work.notified().await;
                            }
                        }
                    } else {
                        let mut files = UringFiles::new(&directory);
                        flush_loop(&store, &mut files, &watch, &work, &stop, &|_, _| {})
                            .await
                            .expect("flush");
                        files.close().await.expect("close");
                    }
                })
            };
            let deadline = Instant::now() + Duration::from_secs_f64(seconds);
            let next_tid = Rc::new(Cell::new(tid + 10));
            let commits = Rc::new(RefCell::new(histogram_ns()));
            let mut tasks = Vec::new();
            for committer in 0..committers {
                let (store, watch, work) = (store.clone(), watch.clone(), work.clone());
                let (next_tid, commits) = (next_tid.clone(), commits.clone());
                tasks.push(glommio::spawn_local(async move {
                    while Instant::now() < deadline {
                        next_tid.set(next_tid.get() + 2);
                        let ttid = Tid(next_tid.get());
                        let began = Instant::now();
                        let oids: Vec<Oid> =
                            (0..3).map(|i| Oid(objects + committer * 3 + i)).collect();
                        let vote = {
                            let mut store = store.borrow_mut();
                            for &oid in &oids {
                                store.store(ttid, oid, value(ttid.0 ^ oid.0, 1024)).expect("store");
                            }
                            store.vote(ttid, Some(meta(oids))).expect("vote")
                        };
                        work.notify();
                        watch.wait(vote).await.expect("vote durable");
                        let lock = store.borrow_mut().lock(ttid, Tid(ttid.0 + 1)).expect("lock");
                        work.notify();
                        watch.wait(lock).await.expect("lock durable");
                        store.borrow_mut().unlock(ttid).expect("unlock");
                        commits
                            .borrow_mut()
                            .record(began.elapsed().as_nanos() as u64)
                            .expect("in bounds");
                    }
                }));
            }
            let reader = {
                let store = store.clone();
                glommio::spawn_local(async move {
                    let interval = Duration::from_micros(200);
                    let mut histogram = histogram_ns();
                    let mut next = Instant::now();
                    let mut state = 0x9E37_79B9_7F4A_7C15u64;
                    while next < deadline {
                        let now = Instant::now();
                        if next > now {
                            glommio::timer::sleep(next - now).await;
                        }
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        let loaded = store
                            .borrow_mut()
                            .load(Oid(state % objects), None, None)
                            .expect("load");
                        std::hint::black_box(loaded.data.len());
                        histogram
                            .record(next.elapsed().as_nanos().max(1) as u64)
                            .expect("in bounds");
                        next += interval;
                    }
                    histogram
                })
            };
            let start = Instant::now();
            for task in tasks {
                task.await;
            }
            let elapsed = start.elapsed().as_secs_f64();
            let loads = reader.await;
            stop.set(true);
            work.notify();
            flusher.await;
            let commits = commits.borrow().clone();
            let mode =
                if blocking { "blocking fdatasync on the core" } else { "io_uring fdatasync" };
            let commit_rate = commits.len() as f64 / elapsed;
            let load_rate = loads.len() as f64 / elapsed;
            (
                Measured {
                    name: format!("glommio commit, {committers} tasks, {mode}"),
                    histogram: commits,
                    rate: commit_rate,
                    unit: "txn",
                },
                Measured {
                    name: format!("  loads meanwhile, 5k/s offered ({mode})"),
                    histogram: loads,
                    rate: load_rate,
                    unit: "loads",
                },
            )
        })
        .expect("glommio executor")
        .join()
        .expect("glommio executor ran")
}

/// Yields once to the executor's other tasks.
async fn futures_lite_yield() {
    let mut yielded = false;
    std::future::poll_fn(|context| {
        if yielded {
            std::task::Poll::Ready(())
        } else {
            yielded = true;
            context.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await
}

fn commit_small_in(store: &mut LogStore, tid: &mut u64, oids: std::ops::Range<u64>, size: usize) {
    *tid += 2;
    let ttid = Tid(*tid);
    for oid in oids {
        store.store(ttid, Oid(oid), value(oid ^ *tid, size)).expect("store");
    }
    store.vote(ttid, None).expect("vote");
    store.flush().expect("flush");
    store.lock(ttid, Tid(*tid + 1)).expect("lock");
    store.flush().expect("flush");
    store.unlock(ttid).expect("unlock");
}

/// Compaction on a glommio core after a pack, with a reader loading hot objects at a fixed
/// rate: reader latency before and during the compaction, space reclaimed, time taken.
fn glommio_compaction(directory: &Path) -> (Measured, Measured, String) {
    use std::cell::{Cell, RefCell};
    use std::rc::Rc;

    use logstore::{DurableWatch, Notify, UringFiles, compact_on_core, flush_loop};

    let directory = directory.to_owned();
    glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(0))
        .io_memory(2 << 20)
        // glommio pins its blocking thread (checkpoint jobs) to the core by default.
        .blocking_thread_pool_placement(glommio::PoolPlacement::Unbound(1))
        .spawn(move || async move {
            let segment_size = 16u32 << 20;
            let options = Options { segment_size };
            let store =
                Rc::new(RefCell::new(LogStore::open_directory(&directory, options).expect("open")));
            // 20k objects of 1 KiB, rewritten in 8 rounds that each touch a pseudo-random
            // half of them: after a pack the survivors are spread over every segment.
            let objects = 20_000u64;
            let mut tid = 1u64 << 40;
            let mut state = 0x2545_F491_4F6C_DD1Du64;
            for round in 0..8 {
                let mut store = store.borrow_mut();
                tid += 2;
                let ttid = Tid(tid);
                for oid in 0..objects {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    if round == 0 || state.is_multiple_of(2) {
                        store.store(ttid, Oid(oid), value(oid ^ tid, 1024)).expect("store");
                    }
                }
                store.vote(ttid, None).expect("vote");
                store.flush().expect("flush");
                store.lock(ttid, Tid(tid + 1)).expect("lock");
                store.flush().expect("flush");
                store.unlock(ttid).expect("unlock");
            }
            store.borrow_mut().pack(Tid(tid + 1), None).expect("pack");
            store.borrow_mut().flush().expect("flush");
            let segments_before = segment_count(&directory);

            let watch = Rc::new(DurableWatch::new(store.borrow().durable()));
            let work = Rc::new(Notify::default());
            let stop = Rc::new(Cell::new(false));
            let flusher = {
                let (store, watch, work, stop) =
                    (store.clone(), watch.clone(), work.clone(), stop.clone());
                let directory = directory.clone();
                glommio::spawn_local(async move {
                    let mut files = UringFiles::new(&directory);
                    flush_loop(&store, &mut files, &watch, &work, &stop, &|_, _| {}).await.expect("flush");
                    files.close().await.expect("close");
                })
            };
            let compacting = Rc::new(Cell::new(false));
            let done = Rc::new(Cell::new(false));
            let reader = {
                let (store, compacting, done) = (store.clone(), compacting.clone(), done.clone());
                glommio::spawn_local(async move {
                    let interval = Duration::from_micros(200);
                    let (mut before, mut during) = (histogram_ns(), histogram_ns());
                    let mut next = Instant::now();
                    let mut state = 0x9E37_79B9_7F4A_7C15u64;
                    while !done.get() {
                        let now = Instant::now();
                        if next > now {
                            glommio::timer::sleep(next - now).await;
                        }
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        let loaded =
                            store.borrow_mut().load(Oid(state % objects), None, None).expect("load");
                        std::hint::black_box(loaded.data.len());
                        let latency = next.elapsed().as_nanos().max(1) as u64;
                        let histogram = if compacting.get() { &mut during } else { &mut before };
                        histogram.record(latency).expect("in bounds");
                        next += interval;
                    }
                    (before, during)
                })
            };
            glommio::timer::sleep(Duration::from_millis(500)).await;
            compacting.set(true);
            let began = Instant::now();
            let report = compact_on_core(&store, &watch, &work, 64 << 10, || false)
                .await
                .expect("compact")
                .expect("never stopped");
            let took = began.elapsed();
            compacting.set(false);
            done.set(true);
            let (before, during) = reader.await;
            stop.set(true);
            work.notify();
            flusher.await;
            let segments_after = segment_count(&directory);
            let summary = format!(
                "compaction after pack: {segments_before} -> {segments_after} segments of {} MiB \
                 ({} deleted), {:.1} MiB of live data relocated, {:.2} s on the core in 64 KiB slices",
                segment_size >> 20,
                report.deleted.len(),
                report.relocated_bytes as f64 / (1 << 20) as f64,
                took.as_secs_f64()
            );
            let rate = |h: &Histogram<u64>, seconds: f64| h.len() as f64 / seconds;
            (
                Measured {
                    name: "  loads before, 5k/s offered".into(),
                    rate: rate(&before, 0.5),
                    histogram: before,
                    unit: "loads",
                },
                Measured {
                    name: "  loads during compaction, 5k/s offered".into(),
                    rate: rate(&during, took.as_secs_f64()),
                    histogram: during,
                    unit: "loads",
                },
                summary,
            )
        })
        .expect("glommio executor")
        .join()
        .expect("glommio executor ran")
}

/// The write path, measured on its own: 16 KiB block-aligned write + fdatasync into a
/// preallocated file, through glommio with O_DIRECT (DmaFile) and through the page cache
/// (BufferedFile), both on io_uring. Chooses between them for the log's flushes.
fn glommio_write_paths(directory: &Path, seconds: f64) -> (Measured, Measured) {
    let directory = directory.to_owned();
    glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(0))
        .io_memory(2 << 20)
        // glommio pins its blocking thread (checkpoint jobs) to the core by default.
        .blocking_thread_pool_placement(glommio::PoolPlacement::Unbound(1))
        .spawn(move || async move {
            std::fs::create_dir_all(&directory).expect("directory");
            let size: u64 = 256 << 20;
            let block = 16usize << 10;
            let mut results = Vec::new();
            for direct in [true, false] {
                let path = directory.join(if direct { "dma" } else { "buffered" });
                let file = std::fs::File::create(&path).expect("create");
                file.set_len(size).expect("size");
                drop(file);
                let mut histogram = histogram_ns();
                let deadline = Instant::now() + Duration::from_secs_f64(seconds);
                let mut offset = 0u64;
                if direct {
                    let file = glommio::io::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .dma_open(&path)
                        .await
                        .expect("dma open");
                    file.pre_allocate(size, true).await.expect("allocate");
                    while Instant::now() < deadline {
                        let mut buffer = file.alloc_dma_buffer(block);
                        buffer.as_bytes_mut().fill(0x5A);
                        let began = Instant::now();
                        file.write_at(buffer, offset).await.expect("write");
                        file.fdatasync().await.expect("fdatasync");
                        histogram.record(began.elapsed().as_nanos() as u64).expect("in bounds");
                        offset = (offset + block as u64) % (size - block as u64);
                    }
                    file.close().await.expect("close");
                } else {
                    let file = glommio::io::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .buffered_open(&path)
                        .await
                        .expect("buffered open");
                    while Instant::now() < deadline {
                        let began = Instant::now();
                        file.write_at(vec![0x5A; block], offset).await.expect("write");
                        file.fdatasync().await.expect("fdatasync");
                        histogram.record(began.elapsed().as_nanos() as u64).expect("in bounds");
                        offset = (offset + block as u64) % (size - block as u64);
                    }
                    file.close().await.expect("close");
                }
                let rate = histogram.len() as f64 / seconds;
                let name = if direct {
                    "16 KiB write+fdatasync, O_DIRECT"
                } else {
                    "16 KiB write+fdatasync, buffered"
                };
                results.push(Measured {
                    name: format!("glommio {name}"),
                    histogram,
                    rate,
                    unit: "syncs",
                });
            }
            let buffered = results.pop().expect("two");
            let direct = results.pop().expect("two");
            (direct, buffered)
        })
        .expect("glommio executor")
        .join()
        .expect("glommio executor ran")
}

fn segment_count(directory: &Path) -> usize {
    std::fs::read_dir(directory)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("segment-"))
                .count()
        })
        .unwrap_or(0)
}

pub struct RestartResult {
    pub revisions: u64,
    /// Reopen after a clean shutdown (checkpoint written): map the index file.
    pub clean_open: Duration,
    /// Heap the reopened store holds, index files mapped.
    pub clean_heap_bytes: u64,
    /// Heap of the same index all in memory (before the checkpoint).
    pub memory_heap_bytes: u64,
    /// Log written after the checkpoint, then a crash (no checkpoint): replayed at open.
    pub tail_bytes: u64,
    pub tail_open: Duration,
}

fn commit_small(store: &mut LogStore, tid: &mut u64, oids: std::ops::Range<u64>) {
    commit_small_in(store, tid, oids, 64);
}

fn log_bytes(store: &LogStore) -> u64 {
    let durable = store.durable();
    u64::from(durable.segment()) * u64::from(Options::default().segment_size)
        + u64::from(durable.offset())
}

/// Writes `revisions` small revisions, checkpoints, closes and times the reopen (clean
/// shutdown); then writes `tail_bytes` of log after the checkpoint, "crashes" (closes
/// without a checkpoint) and times the reopen, which replays that tail.
fn restart(directory: &Path, revisions: u64, tail_bytes: u64) -> RestartResult {
    let per_transaction = 10_000u64;
    let mut tid = 1u64 << 40;
    let memory_heap_bytes;
    {
        let before = live_bytes();
        let mut store =
            LogStore::open_directory(directory, Options::default()).expect("open store");
        for first in (0..revisions).step_by(per_transaction as usize) {
            commit_small(&mut store, &mut tid, first..(first + per_transaction).min(revisions));
        }
        memory_heap_bytes = live_bytes().saturating_sub(before);
        store.checkpoint().expect("checkpoint");
    }
    let before = live_bytes();
    let began = Instant::now();
    let mut store = LogStore::open_directory(directory, Options::default()).expect("reopen");
    let clean_open = began.elapsed();
    let clean_heap_bytes = live_bytes().saturating_sub(before);
    assert!(store.recovery_report().index.is_some(), "reopened from the checkpoint");
    let start = log_bytes(&store);
    let mut next_oid = revisions;
    while log_bytes(&store) - start < tail_bytes {
        commit_small(&mut store, &mut tid, next_oid..next_oid + per_transaction);
        next_oid += per_transaction;
    }
    let tail = log_bytes(&store) - start;
    drop(store);
    let began = Instant::now();
    let store = LogStore::open_directory(directory, Options::default()).expect("reopen");
    let tail_open = began.elapsed();
    std::hint::black_box(store.delta_len());
    RestartResult {
        revisions,
        clean_open,
        clean_heap_bytes,
        memory_heap_bytes,
        tail_bytes: tail,
        tail_open,
    }
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

    let (direct, buffered) = glommio_write_paths(&root.join("paths"), options.seconds);
    print_measured(&direct, Some(raw.rate));
    print_measured(&buffered, Some(raw.rate));

    let committers = options.committers as u64;
    let (uring, uring_loads) =
        glommio_group_commit(&root.join("uring"), options.seconds, committers, false);
    let (blocking, blocking_loads) =
        glommio_group_commit(&root.join("blocking"), options.seconds, committers, true);
    for measured in [&uring, &uring_loads, &blocking, &blocking_loads] {
        print_measured(measured, (measured.unit == "txn").then_some(raw.rate));
    }
    println!(
        "  loads during group commit: p99 {} with io_uring vs {} with a blocking fdatasync on the core",
        format_ns(uring_loads.histogram.value_at_quantile(0.99) as f64),
        format_ns(blocking_loads.histogram.value_at_quantile(0.99) as f64)
    );

    let (in_memory, mapped) =
        hot_lookup(&root.join("lookup"), options.seconds, options.lookup_objects);
    for lookup in [&in_memory, &mapped] {
        print_measured(lookup, None);
        let p50 = lookup.histogram.value_at_quantile(0.5) as f64;
        let verdict = if p50 < 2000.0 { "meets" } else { "MISSES" };
        println!("  {:<40} p50 {} ({verdict} the 2 us target)", "", format_ns(p50));
    }

    let (before, during, summary) = glommio_compaction(&root.join("compaction"));
    println!("  {summary}");
    print_measured(&before, None);
    print_measured(&during, None);

    let restart = restart(&root.join("restart"), options.restart_revisions, options.tail_bytes);
    let millions = restart.revisions as f64 / 1e6;
    let mib = (1u64 << 20) as f64;
    println!(
        "  restart after a clean shutdown: {} revisions, index file mapped, reopened in {} (target for 10 M: under 2 s)",
        restart.revisions,
        format_ns(restart.clean_open.as_nanos() as f64)
    );
    println!(
        "    index heap per million revisions: {:.2} MiB with the index file mapped (target under 16 MiB: {}); {:.1} MiB all in memory before the checkpoint",
        restart.clean_heap_bytes as f64 / millions / mib,
        if restart.clean_heap_bytes as f64 / millions / mib < 16.0 { "meets" } else { "MISSES" },
        restart.memory_heap_bytes as f64 / millions / mib
    );
    let tail_rate = restart.tail_bytes as f64 / restart.tail_open.as_secs_f64();
    println!(
        "  crash restart replaying a {:.0} MiB tail: {:.2} s ({:.0} MiB/s; a 1 GiB tail of such records: about {:.1} s, computed)",
        restart.tail_bytes as f64 / mib,
        restart.tail_open.as_secs_f64(),
        tail_rate / mib,
        (1u64 << 30) as f64 / tail_rate
    );
}

fn print_measured(measured: &Measured, baseline: Option<f64>) {
    let ratio = baseline
        .map_or_else(String::new, |b| format!("  x{:.2} vs raw fdatasync", measured.rate / b));
    println!("  {:<40} {:>10} {}{ratio}", measured.name, format_rate(measured.rate), measured.unit);
    println!("  {:<40} {}", "", percentiles(&measured.histogram));
}
