//! What every cluster workload shares: glommio executors placed on CPUs, the cluster under
//! test (embedded in this process, or an existing one), the raw echo server of the network
//! baselines, and client threads measured over one common window.
//!
//! Every client thread connects first, then all start together: a warm-up (excluded), then
//! the measured window. The window is the same for every thread, so the process CPU time
//! sampled at its edges belongs to the operations counted inside it.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use engine::client::{Client, ClientOptions};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use hdrhistogram::Histogram;

use crate::report::{histogram_ns, pin_to_cpu};

/// The embedded cluster's name.
pub const CLUSTER: &str = "bench";
/// Size of the objects and of the raw ping-pong message in the component benchmark.
pub const MESSAGE_SIZE: usize = 64;

pub fn executor(name: &str, cpu: usize, spin: Option<Duration>) -> glommio::LocalExecutorBuilder {
    let mut builder = glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(cpu))
        .name(name)
        .io_memory(4 << 20)
        .blocking_thread_pool_placement(glommio::PoolPlacement::Unbound(1));
    if let Some(spin) = spin {
        builder = builder.spin_before_park(spin);
    }
    builder
}

/// The online CPUs, whatever the calling thread is pinned to.
pub fn online_cpus() -> usize {
    // SAFETY: sysconf only reads a system value.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }).unwrap_or(1).max(1)
}

/// The shape and placement of an embedded cluster.
#[derive(Clone, Debug)]
pub struct Shape {
    pub partitions: u32,
    pub replicas: u32,
    /// Storage cores: each its own executor and storage node, with its own log.
    pub storage_cores: usize,
    /// The CPU of each storage core (and of the echo server: the first one).
    pub storage_cpus: Vec<usize>,
    pub master_cpu: usize,
    /// Storage cores and the echo server spin this long before parking (`None`: park).
    pub spin: Option<Duration>,
    /// Mutual TLS on every connection (the nodes' and the clients' certificate), or none.
    pub tls: Option<engine::tls::Tls>,
}

/// A master and storage cores in this process, data under one directory.
pub struct Embedded {
    pub master: SocketAddr,
    tls: Option<engine::tls::Tls>,
    threads: Vec<glommio::ExecutorJoinHandle<()>>,
}

impl Embedded {
    pub fn start(data: &Path, shape: &Shape) -> Embedded {
        // A stop of an earlier embedded cluster in this process left the flag set.
        engine::shutdown::clear();
        let (sender, receiver) = std::sync::mpsc::channel();
        let config = engine::cluster::ClusterConfig {
            name: CLUSTER.to_owned(),
            partitions: shape.partitions,
            replicas: shape.replicas,
            autostart: Some(shape.storage_cores),
            storage_timeout: engine::liveness::STORAGE_TIMEOUT_DEFAULT,
        };
        let tls = shape.tls.clone();
        let master = executor("bench-master", shape.master_cpu, None)
            .spawn(move || async move {
                engine::net::use_tls(tls);
                let listener = engine::net::listen("127.0.0.1:0".parse().expect("an address"))
                    .expect("listen");
                sender.send(listener.local_addr().expect("address")).expect("waiting");
                let serving = engine::master::serve(listener, config, Vec::new());
                engine::shutdown::run_until_requested(serving).await;
            })
            .expect("master executor");
        let address = receiver.recv().expect("the master starts");
        let mut threads = vec![master];
        for core in 0..shape.storage_cores {
            let options = engine::storage::StorageOptions {
                cluster: CLUSTER.to_owned(),
                masters: vec![address],
                data: data.join(format!("core-{core}")),
                host: "bench".to_owned(),
                listen: "127.0.0.1:0".parse().expect("address"),
                metrics: None,
            };
            let cpu = shape.storage_cpus[core % shape.storage_cpus.len()];
            let tls = shape.tls.clone();
            let storage = executor(&format!("bench-storage-{core}"), cpu, shape.spin)
                .spawn(move || async move {
                    engine::net::use_tls(tls);
                    if let Err(error) = engine::storage::serve(options).await {
                        eprintln!("neo-bench: storage: {error}");
                    }
                })
                .expect("storage executor");
            threads.push(storage);
        }
        Embedded { master: address, tls: shape.tls.clone(), threads }
    }

    pub fn stop(self) {
        engine::shutdown::request();
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// The cluster the workloads run against.
pub enum Target {
    Embedded(Embedded),
    /// An existing cluster: its name and masters.
    Remote {
        name: String,
        masters: Vec<SocketAddr>,
    },
}

impl Target {
    /// A client with `cache_size` bytes of cache (0: off).
    pub fn client(&self, cache_size: usize) -> Client {
        let (name, masters, tls) = match self {
            Target::Embedded(embedded) => (CLUSTER, vec![embedded.master], embedded.tls.clone()),
            Target::Remote { name, masters } => (name.as_str(), masters.clone(), None),
        };
        let mut options = ClientOptions::new(name, masters);
        options.tls = tls;
        options.cache_size = cache_size;
        match Client::connect(options) {
            Ok(client) => client,
            Err(error) => {
                eprintln!("neo-bench: cannot connect a client to the cluster: {error}");
                std::process::exit(3);
            }
        }
    }

    pub fn stop(self) {
        if let Target::Embedded(embedded) = self {
            embedded.stop();
        }
    }
}

/// A raw echo server on glommio: writes back every byte it reads, as it reads them. The
/// network baseline: the same runtime, CPU and parking policy as a storage core.
pub struct EchoServer {
    pub address: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: glommio::ExecutorJoinHandle<()>,
}

impl EchoServer {
    pub fn start(cpu: usize, spin: Option<Duration>) -> EchoServer {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let (sender, receiver) = std::sync::mpsc::channel();
        let thread = executor("bench-echo", cpu, spin)
            .spawn(move || async move {
                let listener = engine::net::listen("127.0.0.1:0".parse().expect("an address"))
                    .expect("listen");
                sender.send(listener.local_addr().expect("address")).expect("waiting");
                // A task of its own: the looks at the stop flag must not poll the pending
                // accept (see engine::shutdown).
                let accepting = glommio::spawn_local(async move {
                    while let Ok(mut stream) = listener.accept().await {
                        stream.set_nodelay(true).expect("nodelay");
                        glommio::spawn_local(async move {
                            let mut buffer = vec![0u8; 64 << 10];
                            while let Ok(read) = stream.read(&mut buffer).await {
                                if read == 0 || stream.write_all(&buffer[..read]).await.is_err() {
                                    break;
                                }
                            }
                        })
                        .detach();
                    }
                });
                while !stopped.load(Ordering::Relaxed) {
                    glommio::timer::sleep(Duration::from_millis(20)).await;
                }
                drop(accepting);
            })
            .expect("echo executor");
        let address = receiver.recv().expect("the echo server starts");
        EchoServer { address, stop, thread }
    }

    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

/// How a measured run is driven.
#[derive(Clone, Debug)]
pub struct Drive {
    pub threads: usize,
    /// The CPUs client threads are pinned to, round robin.
    pub cpus: Vec<usize>,
    pub warmup: Duration,
    pub seconds: f64,
    /// Kinds of operation, each with its own histogram (an operation returns its kind).
    pub kinds: usize,
    /// Open loop: operations per second offered by all threads together, each timed from
    /// its scheduled start (so a stall shows as latency, not as fewer samples). `None`:
    /// closed loop, each thread starts its next operation when the last one ends.
    pub offered_rate: Option<f64>,
}

/// What a measured run gives: one histogram per kind of operation (nanoseconds), the
/// window's length, the process CPU time spent in it, and the threads' states.
pub struct Outcome<S> {
    pub histograms: Vec<Histogram<u64>>,
    pub elapsed: f64,
    pub cpu: Option<Duration>,
    pub states: Vec<S>,
}

impl<S> Outcome<S> {
    pub fn rate(&self, kind: usize) -> f64 {
        self.histograms[kind].len() as f64 / self.elapsed
    }

    /// The figures without the threads' states.
    pub fn figures(self) -> Outcome<()> {
        Outcome {
            histograms: self.histograms,
            elapsed: self.elapsed,
            cpu: self.cpu,
            states: Vec::new(),
        }
    }

    /// Process CPU time per operation of every kind, in nanoseconds.
    pub fn cpu_per_operation(&self) -> Option<f64> {
        let operations: u64 = self.histograms.iter().map(Histogram::len).sum();
        let cpu = self.cpu?;
        (operations > 0).then(|| cpu.as_nanos() as f64 / operations as f64)
    }
}

/// Runs `operation` on `drive.threads` threads, each with the state `setup` gives it.
pub fn run<S: Send + 'static>(
    drive: &Drive,
    setup: impl Fn(usize) -> S + Send + Sync + 'static,
    operation: impl Fn(&mut S) -> usize + Send + Sync + 'static,
) -> Outcome<S> {
    run_with(drive, setup, |_| {}, operation)
}

/// How long past the end of the window a thread that measured nothing goes on trying to.
const OVERTIME: Duration = Duration::from_secs(30);

/// `run`, with `measuring` called on each thread's state as its warm-up ends (to drop what
/// the state recorded during the warm-up).
pub fn run_with<S: Send + 'static>(
    drive: &Drive,
    setup: impl Fn(usize) -> S + Send + Sync + 'static,
    measuring: impl Fn(&mut S) + Send + Sync + 'static,
    operation: impl Fn(&mut S) -> usize + Send + Sync + 'static,
) -> Outcome<S> {
    let measuring = Arc::new(measuring);
    let setup = Arc::new(setup);
    let operation = Arc::new(operation);
    let start = Arc::new(Barrier::new(drive.threads + 1));
    let interval = drive.offered_rate.map(|rate| drive.threads as f64 / rate);
    let handles: Vec<_> = (0..drive.threads)
        .map(|index| {
            let (setup, operation, start) =
                (Arc::clone(&setup), Arc::clone(&operation), Arc::clone(&start));
            let measuring = Arc::clone(&measuring);
            let cpu = drive.cpus[index % drive.cpus.len()];
            let (warmup, seconds, kinds) = (drive.warmup, drive.seconds, drive.kinds);
            let threads = drive.threads;
            std::thread::spawn(move || {
                pin_to_cpu(cpu);
                let mut state = setup(index);
                start.wait();
                let began = Instant::now();
                let measured_from = began + warmup;
                let until = measured_from + Duration::from_secs_f64(seconds);
                let mut histograms: Vec<_> = (0..kinds).map(|_| histogram_ns()).collect();
                // Open loop: threads start staggered over one interval, not all at once.
                let mut scheduled = interval.map(|interval| {
                    began + Duration::from_secs_f64(interval * index as f64 / threads as f64)
                });
                let mut warming = true;
                let mut measured_any = false;
                loop {
                    let now = Instant::now();
                    // A thread whose operations all straddled the window (one stall longer
                    // than the whole window on a busy machine) goes on until it has measured
                    // one operation, so that the case reports the slowness, not nothing.
                    if now >= until && (measured_any || now >= until + OVERTIME) {
                        break;
                    }
                    if warming && now >= measured_from {
                        warming = false;
                        measuring(&mut state);
                    }
                    let from = match (&mut scheduled, interval) {
                        (Some(at), Some(interval)) => {
                            let at_now = *at;
                            *at += Duration::from_secs_f64(interval);
                            if at_now > now {
                                std::thread::sleep(at_now - now);
                            }
                            at_now
                        }
                        _ => now,
                    };
                    let kind = operation(&mut state);
                    if from >= measured_from && (from < until || !measured_any) {
                        let took = from.elapsed().as_nanos() as u64;
                        histograms[kind].saturating_record(took);
                        measured_any = true;
                    }
                }
                (histograms, state)
            })
        })
        .collect();
    start.wait();
    let began = Instant::now();
    std::thread::sleep(drive.warmup);
    let cpu_before = process_cpu();
    let measured_from = Instant::now();
    std::thread::sleep(
        (began + drive.warmup + Duration::from_secs_f64(drive.seconds)) - measured_from,
    );
    let cpu_after = process_cpu();
    let elapsed = measured_from.elapsed().as_secs_f64();
    let mut histograms: Vec<_> = (0..drive.kinds).map(|_| histogram_ns()).collect();
    let mut states = Vec::new();
    for handle in handles {
        let (own, state) = handle.join().expect("a bench thread");
        for (total, own) in histograms.iter_mut().zip(&own) {
            total.add(own).expect("same bounds");
        }
        states.push(state);
    }
    let cpu = cpu_before.zip(cpu_after).map(|(before, after)| after.saturating_sub(before));
    Outcome { histograms, elapsed, cpu, states }
}

/// CPU time (user + system) of every thread of this process so far.
pub fn process_cpu() -> Option<Duration> {
    // SAFETY: rusage is plain data; getrusage fills it.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return None;
        }
        usage
    };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    Some(time(usage.ru_utime) + time(usage.ru_stime))
}

/// Blocking clients doing a ping-pong of `size` bytes with the echo server, waiting for
/// each echo as the client waits for a storage's answer (`engine::client::recv_waiting`
/// with `engine::client::SPIN_DEFAULT`).
pub fn ping_pong(echo: SocketAddr, drive: &Drive, size: usize) -> Outcome<()> {
    let outcome = run(
        drive,
        move |_| {
            let stream = std::net::TcpStream::connect(echo).expect("echo server");
            stream.set_nodelay(true).expect("nodelay");
            (stream, vec![7u8; size])
        },
        |(stream, message)| {
            stream.write_all(message).expect("echo write");
            let mut filled = 0;
            while filled < message.len() {
                let spin = engine::client::SPIN_DEFAULT;
                let read = engine::client::recv_waiting(stream, &mut message[filled..], spin)
                    .expect("echo read");
                assert!(read > 0, "the echo server closed the connection");
                filled += read;
            }
            0
        },
    );
    outcome.figures()
}

/// A small, fast generator for picking objects (PCG's multiplier), one per thread.
#[derive(Clone, Copy, Debug)]
pub struct Random(u64);

impl Random {
    pub fn new(seed: u64) -> Random {
        Random(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn below(&mut self, bound: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % bound.max(1)
    }
}
