//! `neo`: the neo-rs command: `neo master`, `neo storage`, `neo cluster`, `neo ctl`,
//! `neo doctor`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use engine::cluster::ClusterConfig;
use engine::ctl::Command as CtlCommand;
use engine::storage::StorageOptions;
use glommio::LocalExecutorBuilder;
use wire::{ClusterState, NodeId, NodeType};

/// neo-rs: distributed, redundant, transactional object storage for ZODB.
///
/// Options may also come from a TOML file: `neo --config neo.toml master`, with a table per
/// subcommand (`[master]`, `[storage]`, ...) of `option = value` (the command line wins).
#[derive(Parser, Debug)]
#[command(
    name = "neo",
    version,
    about,
    long_about = None,
    after_help = "Options may also come from a TOML file: neo --config FILE SUBCOMMAND ..., \
                  with a table per subcommand ([master], [storage], ...) of option = value; \
                  the command line wins."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the primary master: it owns the partition table and the cluster's state.
    Master {
        /// Name of the cluster; every node of it must give the same.
        #[arg(long)]
        cluster: String,
        /// Address to listen on (port 0: any free port, printed at start).
        #[arg(long, value_parser = address, default_value = "127.0.0.1:10000")]
        bind: SocketAddr,
        /// Number of partitions (fixed once the cluster has data).
        #[arg(long, default_value_t = 100)]
        partitions: u32,
        /// Copies of each partition beyond the first.
        #[arg(long, default_value_t = 0)]
        replicas: u32,
        /// Start a new cluster by itself once this many storages are connected.
        #[arg(long)]
        autostart: Option<usize>,
        /// The other masters (comma-separated): they elect a primary; the others stand by.
        #[arg(long, value_parser = address, value_delimiter = ',')]
        masters: Vec<SocketAddr>,
        /// Seconds a storage may leave a request (a lock, a ping) unanswered before the
        /// master gives it up as dead (its cells go out of date): a stopped or hung process
        /// keeps its connection open, so only its silence tells.
        #[arg(long, default_value_t = 10.0)]
        storage_timeout: f64,
        /// Serve the master's figures to Prometheus at http://ADDRESS/metrics (counters,
        /// latency percentiles; `neo ctl stats` shows them too).
        #[arg(long, value_parser = address)]
        metrics_bind: Option<SocketAddr>,
        #[command(flatten)]
        tls: TlsArgs,
        #[command(flatten)]
        log: LogArgs,
    },
    /// Run a storage node (one core).
    Storage {
        /// Name of the cluster: the one its masters were started with.
        #[arg(long)]
        cluster: String,
        /// The masters' addresses (comma-separated); the primary is found among them.
        #[arg(long, value_parser = address, value_delimiter = ',', default_value = "127.0.0.1:10000")]
        master: Vec<SocketAddr>,
        /// Directory of this storage's log and index files.
        #[arg(long)]
        data: PathBuf,
        /// Host label: two copies of a partition never go to one host (default: hostname).
        #[arg(long)]
        host: Option<String>,
        /// Storage cores: one glommio executor each, each a storage node with its own id,
        /// log store (DATA/core-N when more than one), listening socket and connection;
        /// one host label.
        #[arg(long, default_value_t = 1)]
        cores: usize,
        /// Where the storage listens for other nodes: an address they can reach (not
        /// 0.0.0.0). Core N takes PORT + N; port 0 gives each core a free port.
        #[arg(long, value_parser = address, default_value = "127.0.0.1:0")]
        bind: SocketAddr,
        /// Microseconds each storage core polls for work before it sleeps in the kernel:
        /// a request that comes within it costs no wake-up (about 45 us of a round trip on
        /// a VM), for that much CPU time. 0: sleep when idle.
        #[arg(long, default_value_t = 0)]
        spin_us: u64,
        /// CPUs the storage cores run on, one per core in order (e.g. `--cores 2 --cpus
        /// 2,3`): each core's executor is pinned to its CPU, as thread-per-core wants on a
        /// host tuned for it. Default: unpinned, the kernel places them.
        #[arg(long, value_delimiter = ',')]
        cpus: Vec<usize>,
        /// Serve each storage core's figures to Prometheus at http://ADDRESS/metrics: core
        /// N on PORT + N (port 0: any free port, logged at start).
        #[arg(long, value_parser = address)]
        metrics_bind: Option<SocketAddr>,
        #[command(flatten)]
        tls: TlsArgs,
        #[command(flatten)]
        log: LogArgs,
    },
    /// Run a whole cluster in one process: a master and storage cores, for a laptop, the
    /// tests and the benchmark harness. It starts by itself once its storages are up.
    Cluster {
        /// Name of the cluster (clients and ctl give it too).
        #[arg(long, default_value = "neo")]
        cluster: String,
        /// Address the master listens on (port 0: any free port, printed at start).
        #[arg(long, value_parser = address, default_value = "127.0.0.1:10000")]
        bind: SocketAddr,
        /// Directory for the storage cores' data (DATA/core-N).
        #[arg(long)]
        data: PathBuf,
        /// Address of the embedded admin node, for ctl (port 0: any free port).
        #[arg(long, value_parser = address, default_value = "127.0.0.1:0")]
        admin_bind: SocketAddr,
        /// Storage cores.
        #[arg(long, default_value_t = 2)]
        storages: usize,
        /// Number of partitions (fixed once the cluster has data).
        #[arg(long, default_value_t = 12)]
        partitions: u32,
        /// Copies of each partition beyond the first (at most storages - 1 are placed).
        #[arg(long, default_value_t = 0)]
        replicas: u32,
        /// Microseconds each storage core polls for work before it sleeps in the kernel:
        /// a request that comes within it costs no wake-up (about 45 us of a round trip on
        /// a VM), for that much CPU time. 0: sleep when idle.
        #[arg(long, default_value_t = 0)]
        spin_us: u64,
        /// Seconds a storage core may leave a request of the master's unanswered before it
        /// is given up (see `neo master --storage-timeout`).
        #[arg(long, default_value_t = 10.0)]
        storage_timeout: f64,
        /// Serve figures to Prometheus at http://ADDRESS/metrics: the master on PORT,
        /// storage core N on PORT + 1 + N (port 0: free ports, logged at start).
        #[arg(long, value_parser = address)]
        metrics_bind: Option<SocketAddr>,
        #[command(flatten)]
        tls: TlsArgs,
        #[command(flatten)]
        log: LogArgs,
    },
    /// Run an admin node: `neo ctl` talks to it; it forwards to the primary master.
    Admin {
        /// Name of the cluster: the one its masters were started with.
        #[arg(long)]
        cluster: String,
        /// The masters' addresses (comma-separated); the primary is found among them.
        #[arg(long, value_parser = address, value_delimiter = ',', default_value = "127.0.0.1:10000")]
        master: Vec<SocketAddr>,
        /// Address to listen on for ctl.
        #[arg(long, value_parser = address, default_value = "127.0.0.1:9999")]
        bind: SocketAddr,
        #[command(flatten)]
        tls: TlsArgs,
        #[command(flatten)]
        log: LogArgs,
    },
    /// Pack the database: every revision older than the newest one at or before the pack
    /// time goes, and so do objects deleted by then, on every storage (a transaction
    /// carries the order). No garbage collection: unreferenced objects stay. Returns once
    /// every storage in service has packed.
    Pack {
        /// Name of the cluster: the one its masters were started with.
        #[arg(long)]
        cluster: String,
        /// The masters' addresses (comma-separated): it connects as a client.
        #[arg(long, value_parser = address, value_delimiter = ',', default_value = "127.0.0.1:10000")]
        master: Vec<SocketAddr>,
        /// Pack up to this many days ago (0: up to the last commit).
        #[arg(long, default_value_t = 0.0, conflicts_with = "tid")]
        days: f64,
        /// Pack up to this tid instead (16 hex digits, as `ctl print ids` shows it).
        #[arg(long)]
        tid: Option<String>,
        #[command(flatten)]
        tls: TlsArgs,
    },
    /// Check this host for running neo nodes: io_uring, memlock, the data directory's
    /// fdatasync latency and filesystem, CPU governor, transparent huge pages, open-file
    /// limit, CPUs. Prints OK, WARN or FAIL per check, what it found and what to change.
    /// It checks the limits of the process it runs in: run it as the service's user, under
    /// the service's limits, to check theirs (docs/deploy.md).
    #[command(after_help = "Exit codes: 0 nothing FAILed (WARNs may be listed); 1 a check \
                      FAILed (a node would not start, or would lose data); 2 bad usage.")]
    Doctor {
        /// A storage's data directory: its disk's write + fdatasync latency is measured in
        /// a temporary file there (removed), its filesystem and free space checked.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Storage cores this host will run, all storage processes together (sizes the
        /// memlock, open-file and CPU checks).
        #[arg(long, default_value_t = 1)]
        cores: usize,
        /// Write + fdatasync rounds of the disk check.
        #[arg(long, default_value_t = engine::doctor::FDATASYNC_SAMPLES_DEFAULT)]
        fsync_samples: usize,
        /// Print JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Ask the cluster something, or tell it what to do.
    #[command(after_help = "Exit codes: 0 done; 1 the cluster refused (the reason is printed); \
                      2 bad usage; 3 the cluster could not be reached; 4 a check found problems.")]
    Ctl {
        /// Name of the cluster: the one its masters were started with.
        #[arg(long)]
        cluster: String,
        /// An admin node's address, or the masters' (comma-separated).
        #[arg(long, value_parser = address, visible_alias = "admin", value_delimiter = ',', default_value = "127.0.0.1:10000")]
        master: Vec<SocketAddr>,
        /// Print JSON, for scripts.
        #[arg(long)]
        json: bool,
        /// print cluster | print pt [MIN [MAX [NID]]] | print node [TYPE] | print primary |
        /// print summary | print ids | start |
        /// set cluster STATE | set replicas N | add NID... | add all |
        /// tweak [-n] [DROP_NID...] | kill NID (a storage, or a secondary master) | drop NID |
        /// check [--repair] [PARTITION[:REFERENCE] ...] [MIN_TID [MAX_TID]] | truncate TID |
        /// stats [--hgrm DIR] (every node's counters and latency percentiles; DIR gets an
        /// .hgrm file per histogram)
        #[arg(required = true, num_args = 1.., allow_hyphen_values = true)]
        words: Vec<String>,
        #[command(flatten)]
        tls: TlsArgs,
    },
}

/// Mutual TLS: the three files, given together (or in the config file's table as `ca`,
/// `cert`, `key`).
#[derive(clap::Args, Debug, Clone, Default)]
struct TlsArgs {
    /// The cluster's CA certificate (PEM). With --cert and --key every connection is
    /// mutual TLS: a peer's certificate must be signed by this CA and carry the role of
    /// what it is (see --cert). Without the three: plain TCP, for a trusted network only.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// This process's certificate (PEM), signed by the CA. Its subject's organizational
    /// units (OU) give its roles: neo-master, neo-storage, neo-admin (ctl, admin nodes),
    /// neo-client (applications, `neo pack`).
    #[arg(long, value_name = "FILE")]
    cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
}

/// Where the node's log lines go, which, and how they look (or in the config file's table
/// as `log_level`, `log_file`, `log_format`).
#[derive(clap::Args, Debug, Clone, Default)]
struct LogArgs {
    /// Which lines to log: error, warn, info, debug or trace (each level includes those
    /// before it), or a filter such as `engine::storage=debug,info`. Default: the NEO_LOG
    /// environment variable, else info.
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
    /// Append the log lines to this file instead of stderr; SIGHUP reopens it (after
    /// logrotate renamed it).
    #[arg(long, value_name = "PATH")]
    log_file: Option<PathBuf>,
    /// Lines as text (`TIME LEVEL NODE: message`) or json (one object per line: timestamp,
    /// level, node, message, target, fields).
    #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = log_format)]
    log_format: engine::logging::Format,
}

fn log_format(text: &str) -> Result<engine::logging::Format, String> {
    text.parse().map_err(|error: engine::logging::LogError| error.to_string())
}

impl LogArgs {
    /// Starts this process's logging (`node`: the lines of threads that are no node, such
    /// as the main thread) and SIGHUP's handling.
    fn init(&self, node: &str) -> anyhow::Result<()> {
        let options = engine::logging::LogOptions {
            level: self.log_level.clone(),
            file: self.log_file.clone(),
            format: self.log_format,
        };
        let logging = engine::logging::init(&options, node, engine::logging::DEFAULT_LEVEL)?;
        engine::logging::reopen_on_sighup(logging)?;
        Ok(())
    }
}

impl TlsArgs {
    /// The TLS configuration, checked for a process that runs `node_types`; `None` for plain
    /// TCP.
    fn load(&self, node_types: &[NodeType]) -> anyhow::Result<Option<engine::tls::Tls>> {
        let files = engine::tls::TlsFiles::from_options(
            self.ca.clone(),
            self.cert.clone(),
            self.key.clone(),
        )?;
        let Some(files) = files else { return Ok(None) };
        Ok(Some(engine::tls::Tls::load_for(&files, node_types)?))
    }
}

/// A tid as 16 hex digits (an optional `0x` first).
fn parse_tid(text: &str) -> anyhow::Result<wire::Tid> {
    let digits = text.strip_prefix("0x").unwrap_or(text);
    if digits.len() != 16 {
        bail!("a tid is 16 hex digits, not {text:?}");
    }
    let value = u64::from_str_radix(digits, 16).with_context(|| format!("tid {text:?}"))?;
    Ok(wire::Tid(value))
}

fn parse_ctl(words: &[String]) -> anyhow::Result<CtlCommand> {
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let nids = |list: &[&str]| -> anyhow::Result<Vec<NodeId>> {
        list.iter().map(|w| w.parse::<NodeId>().map_err(anyhow::Error::from)).collect()
    };
    Ok(match words.as_slice() {
        ["print", "cluster"] => CtlCommand::PrintCluster,
        ["print", "pt", rest @ ..] if rest.len() <= 3 => {
            let number = |w: &str| w.parse::<u32>().context("a partition number");
            CtlCommand::PrintPartitionTable {
                min: rest.first().map(|w| number(w)).transpose()?.unwrap_or(0),
                max: rest.get(1).map(|w| number(w)).transpose()?.unwrap_or(0),
                nid: rest.get(2).map(|w| w.parse::<NodeId>()).transpose()?,
            }
        }
        ["print", "node"] => CtlCommand::PrintNodes(None),
        ["print", "node", kind] => {
            CtlCommand::PrintNodes(Some(NodeType::parse(kind).with_context(|| {
                format!("unknown node type {kind:?} (master, storage, client or admin)")
            })?))
        }
        ["print", "primary"] => CtlCommand::PrintPrimary,
        ["print", "summary"] => CtlCommand::PrintSummary,
        ["print", "ids"] => CtlCommand::PrintIds,
        ["kill", nid] => CtlCommand::Kill(nid.parse()?),
        ["drop", nid] => CtlCommand::Drop(nid.parse()?),
        ["start"] => CtlCommand::Start,
        ["set", "cluster", state] => {
            let state = ClusterState::parse(state)
                .with_context(|| format!("unknown cluster state {state:?}"))?;
            CtlCommand::SetCluster(state)
        }
        ["set", "replicas", n] => CtlCommand::SetReplicas(n.parse().context("replicas: a number")?),
        ["add", "all"] => CtlCommand::Add(Vec::new()),
        ["add", rest @ ..] if !rest.is_empty() => CtlCommand::Add(nids(rest)?),
        ["tweak", "-n", rest @ ..] => CtlCommand::Tweak { dry_run: true, drop: nids(rest)? },
        ["tweak", rest @ ..] => CtlCommand::Tweak { dry_run: false, drop: nids(rest)? },
        ["check", rest @ ..] => parse_check(rest)?,
        ["stats"] => CtlCommand::Stats { hgrm: None },
        ["stats", "--hgrm", directory] => CtlCommand::Stats { hgrm: Some(directory.into()) },
        ["stats", ..] => bail!("usage: stats [--hgrm DIR]"),
        ["truncate", tid] => CtlCommand::Truncate(parse_tid(tid)?),
        ["truncate", ..] => bail!("usage: truncate TID (16 hex digits: the last tid to keep)"),
        _ => bail!("unknown ctl command {:?} (see neo ctl --help)", words.join(" ")),
    })
}

/// `check [--repair] [PARTITION[:REFERENCE] ...] [MIN_TID [MAX_TID]]`: partitions are
/// decimal numbers, tids 16 hex digits.
fn parse_check(words: &[&str]) -> anyhow::Result<CtlCommand> {
    let (repair, words) = match words {
        ["--repair", rest @ ..] => (true, rest),
        _ => (false, words),
    };
    let mut partitions = Vec::new();
    let mut tids = Vec::new();
    for word in words {
        if word.len() == 16 || word.starts_with("0x") {
            tids.push(parse_tid(word)?);
            continue;
        }
        if !tids.is_empty() {
            bail!("check: partitions come before the tids, not {word:?} after them");
        }
        let (partition, reference) = match word.split_once(':') {
            Some((partition, reference)) => (partition, Some(reference.parse::<NodeId>()?)),
            None => (*word, None),
        };
        let partition: u32 = partition.parse().with_context(|| {
            format!("check: {word:?} is neither PARTITION[:REFERENCE] nor a tid")
        })?;
        partitions.push((wire::PartitionId(partition), reference));
    }
    if tids.len() > 2 {
        bail!("check: at most two tids (MIN_TID MAX_TID)");
    }
    Ok(CtlCommand::Check {
        partitions,
        min_tid: tids.first().copied().unwrap_or(wire::Tid::ZERO),
        max_tid: tids.get(1).copied(),
        repair,
    })
}

/// What every storage core of a process shares.
struct Storages<'a> {
    cluster: &'a str,
    masters: &'a [SocketAddr],
    data: &'a std::path::Path,
    bind: SocketAddr,
    spin: std::time::Duration,
    /// The CPU of each core (empty: unpinned).
    cpus: &'a [usize],
    tls: Option<&'a engine::tls::Tls>,
    /// Where core 0 serves its figures (core N: PORT + N).
    metrics: Option<SocketAddr>,
}

/// Runs `cores` storage cores, each on its own executor, until they all stop.
fn run_storages(
    storages: &Storages<'_>,
    host: &str,
    cores: usize,
    per_core_directory: bool,
) -> anyhow::Result<()> {
    if cores == 0 {
        bail!("--cores must be at least 1");
    }
    if !storages.cpus.is_empty() && storages.cpus.len() != cores {
        bail!("--cpus lists {} CPUs for {cores} cores: give one CPU per core", storages.cpus.len());
    }

    let mut handles = Vec::new();
    for core in 0..cores {
        let data = storages.data;
        let directory =
            if per_core_directory { data.join(format!("core-{core}")) } else { data.to_owned() };
        let mut listen = storages.bind;
        if listen.port() != 0 {
            let port = u16::try_from(usize::from(listen.port()) + core)
                .map_err(|_| anyhow::anyhow!("--bind port + core {core} is past 65535"))?;
            listen.set_port(port);
        }
        let metrics = match storages.metrics {
            Some(mut metrics) if metrics.port() != 0 => {
                let port = u16::try_from(usize::from(metrics.port()) + core).map_err(|_| {
                    anyhow::anyhow!("--metrics-bind port + core {core} is past 65535")
                })?;
                metrics.set_port(port);
                Some(metrics)
            }
            other => other,
        };
        let options = StorageOptions {
            cluster: storages.cluster.to_owned(),
            masters: storages.masters.to_vec(),
            data: directory,
            host: host.to_owned(),
            listen,
            metrics,
        };
        let tls = storages.tls.cloned();
        let placement = match storages.cpus.get(core) {
            Some(&cpu) => glommio::Placement::Fixed(cpu),
            None => glommio::Placement::Unbound,
        };
        let mut builder = LocalExecutorBuilder::new(placement);
        if !storages.spin.is_zero() {
            builder = builder.spin_before_park(storages.spin);
        }
        let handle = builder
            .name(&format!("storage-{core}"))
            .io_memory(engine::doctor::STORAGE_IO_MEMORY_BYTES)
            .blocking_thread_pool_placement(glommio::PoolPlacement::Unbound(1))
            .spawn(move || async move {
                engine::net::use_tls(tls);
                engine::storage::serve(options).await
            })
            .map_err(|e| anyhow::anyhow!("starting storage core {core}: {e}"))?;
        handles.push(handle);
    }
    for (core, handle) in handles.into_iter().enumerate() {
        let outcome =
            handle.join().map_err(|e| anyhow::anyhow!("storage core {core} stopped: {e}"))?;
        outcome.with_context(|| format!("storage core {core}"))?;
    }
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_or_else(|_| "localhost".to_owned(), |h| h.trim().to_owned())
}

/// glommio panics when io_uring is missing: check first and say so.
fn check_io_uring() -> anyhow::Result<()> {
    // SAFETY: io_uring_setup with a zeroed parameter block; the returned descriptor is
    // closed at once.
    let fd = unsafe {
        let mut params = [0u8; 120];
        libc_syscall_io_uring_setup(1, params.as_mut_ptr())
    };
    if fd < 0 {
        bail!(
            "io_uring is not available on this system ({}): neo needs Linux 5.8 or later with io_uring enabled",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: closing the descriptor io_uring_setup returned.
    unsafe { close(fd as i32) };
    Ok(())
}

unsafe extern "C" {
    fn syscall(number: i64, ...) -> i64;
    fn close(fd: i32) -> i32;
}

/// io_uring_setup(2), syscall 425 on x86_64 and aarch64.
unsafe fn libc_syscall_io_uring_setup(entries: u32, params: *mut u8) -> i64 {
    // SAFETY: the caller passes a writable 120-byte parameter block.
    unsafe { syscall(425, i64::from(entries), params) }
}

/// Arguments with those of a configuration file first: `neo --config FILE SUBCOMMAND ...`
/// reads the file's `[SUBCOMMAND]` table (`key = value` for each `--key value`, `true` for a
/// flag, a list of strings for a comma-separated list) and puts it before the command line's
/// own options, leaving out those the command line gives: the command line wins.
fn arguments() -> anyhow::Result<Vec<String>> {
    arguments_from(std::env::args().collect())
}

/// `arguments`, from the given command line.
fn arguments_from(mut args: Vec<String>) -> anyhow::Result<Vec<String>> {
    let Some(position) = args.iter().position(|a| a == "--config") else { return Ok(args) };
    let path = args.get(position + 1).context("--config needs a file")?.clone();
    args.drain(position..position + 2);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let table: toml::Table = text.parse().with_context(|| format!("parsing {path}"))?;
    let subcommand = args.get(1).context("a subcommand after --config FILE")?.clone();
    let mut from_file = Vec::new();
    if let Some(section) = table.get(&subcommand) {
        let section =
            section.as_table().with_context(|| format!("{path}: [{subcommand}] is not a table"))?;
        for (key, value) in section {
            let option = format!("--{}", key.replace('_', "-"));
            // The command line wins: an option it gives is left out of the file's (clap
            // refuses a single-valued option given twice and appends to a list).
            let given = |arg: &String| {
                arg == &option || arg.strip_prefix(&option).is_some_and(|r| r.starts_with('='))
            };
            if args[2..].iter().any(given) {
                continue;
            }
            match value {
                toml::Value::Boolean(true) => from_file.push(option),
                toml::Value::Boolean(false) => {}
                toml::Value::String(text) => from_file.extend([option, text.clone()]),
                toml::Value::Integer(number) => from_file.extend([option, number.to_string()]),
                // `storage_timeout = 2.5`.
                toml::Value::Float(number) => from_file.extend([option, number.to_string()]),
                // A list of addresses (`master = ["a:1", "b:2"]`): the comma-separated form.
                toml::Value::Array(items) if !items.is_empty() => {
                    let texts: Option<Vec<&str>> = items.iter().map(toml::Value::as_str).collect();
                    let texts = texts.with_context(|| {
                        format!("{path}: [{subcommand}] {key}: a list of strings is expected")
                    })?;
                    from_file.extend([option, texts.join(",")]);
                }
                other => bail!("{path}: [{subcommand}] {key}: unsupported value {other:?}"),
            }
        }
    }
    // neo SUBCOMMAND <file's options> <command line's options>
    let mut merged = args[..2].to_vec();
    merged.extend(from_file);
    merged.extend_from_slice(&args[2..]);
    Ok(merged)
}

/// How long a node retries an address in use before it gives up: right after a node is
/// restarted on its address, the kernel may still hold the port for a moment (a connection
/// of the previous process being torn down, or an outgoing connection that took the port
/// while it was free).
const ADDRESS_IN_USE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// Listens on `address`, or ends the process with status 2 and the reason (an address in
/// use by another node, one this host does not have).
/// An address option: `IP:PORT`, or `HOST:PORT` resolved once, at start (its first IPv4
/// address, else its first).
fn address(text: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(address) = text.parse() {
        return Ok(address);
    }
    if !text.contains(':') {
        return Err(format!("{text:?}: give HOST:PORT or IP:PORT"));
    }
    let found: Vec<SocketAddr> =
        text.to_socket_addrs().map_err(|e| format!("cannot resolve {text:?}: {e}"))?.collect();
    found
        .iter()
        .find(|a| a.is_ipv4())
        .or(found.first())
        .copied()
        .ok_or_else(|| format!("{text:?} resolves to no address"))
}

fn listen_or_exit(address: SocketAddr) -> glommio::net::TcpListener {
    listen_or_exit_within(address, ADDRESS_IN_USE_PATIENCE)
}

/// `listen_or_exit`, retrying an address in use for `patience` (said at once, so that a
/// node whose address another process holds does not look hung meanwhile).
fn listen_or_exit_within(
    address: SocketAddr,
    patience: std::time::Duration,
) -> glommio::net::TcpListener {
    let started = std::time::Instant::now();
    let mut said = false;
    loop {
        match engine::net::listen(address) {
            Ok(listener) => return listener,
            Err(error)
                if error.kind() == std::io::ErrorKind::AddrInUse
                    && started.elapsed() < patience =>
            {
                if !said {
                    said = true;
                    tracing::warn!(
                        "{address} is in use: trying again for {patience:?} (a node just \
                         restarted on it may still hold it), then giving up"
                    );
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(error) => {
                engine::logging::fatal(&format!("cannot listen on {address}: {error}"));
                std::process::exit(2)
            }
        }
    }
}

/// Serves this executor's figures at `address` (`--metrics-bind`), or ends the process
/// with status 2 if it cannot listen there. Dropping the task stops it.
fn serve_metrics(address: SocketAddr) -> glommio::Task<()> {
    // No patience: nothing of ours held it before.
    let listener = listen_or_exit_within(address, std::time::Duration::ZERO);
    let bound = listener.local_addr().map_or(address, |a| a);
    tracing::info!("metrics on http://{bound}/metrics");
    glommio::spawn_local(engine::metrics::serve_http(listener))
}

/// A positive number of seconds from the command line.
fn seconds(value: f64, option: &str) -> anyhow::Result<std::time::Duration> {
    if !(value.is_finite() && value > 0.0) {
        bail!("{option} must be a positive number of seconds, not {value}");
    }
    std::time::Duration::try_from_secs_f64(value)
        .with_context(|| format!("{option} {value} is too large"))
}

fn main() -> ExitCode {
    let cli = match arguments() {
        Ok(args) => Cli::parse_from(args),
        Err(error) => {
            eprintln!("neo: {error:#}");
            return ExitCode::from(2);
        }
    };
    let node = matches!(
        cli.command,
        Command::Master { .. }
            | Command::Storage { .. }
            | Command::Cluster { .. }
            | Command::Admin { .. }
    );
    match run(cli) {
        Ok(code) => code,
        // A node's failure goes to its log (and to stderr too when the log is a file); a
        // command's (ctl, pack), or one before the log is set up, to stderr as it is.
        Err(error) if node && engine::logging::current().is_some() => {
            engine::logging::fatal(&format!("{error:#}"));
            ExitCode::from(2)
        }
        Err(error) => {
            eprintln!("neo: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// A panic in any thread ends the process with status 101. By default a panicking glommio
/// executor thread dies alone: the process stays up half alive (a master that keeps its
/// listening socket, answers nothing and ignores SIGTERM), which no supervisor restarts.
fn exit_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        // In the log too, which may be a file.
        tracing::error!("a thread panicked ({info}); exiting with status 101");
        // SAFETY: _exit ends the process at once, running nothing of this process's that
        // could wait on a lock the panicking thread holds.
        unsafe { libc::_exit(101) }
    }));
}

/// For a test: a task that panics this many milliseconds after the node starts
/// (`NEO_TEST_PANIC_AFTER_MS`), to show that the process exits.
fn test_panic() {
    let Some(ms) = std::env::var("NEO_TEST_PANIC_AFTER_MS").ok().and_then(|v| v.parse().ok())
    else {
        return;
    };
    glommio::spawn_local(async move {
        glommio::timer::sleep(std::time::Duration::from_millis(ms)).await;
        panic!("NEO_TEST_PANIC_AFTER_MS: the panic a test asked for");
    })
    .detach();
}

/// `neo doctor`: reads the host and prints each check; status 1 when one FAILs.
fn doctor(
    data: Option<PathBuf>,
    cores: usize,
    fsync_samples: usize,
    json: bool,
) -> anyhow::Result<ExitCode> {
    use engine::doctor::FDATASYNC_SAMPLES_MAX;
    if cores == 0 {
        bail!("--cores must be at least 1");
    }
    if fsync_samples > FDATASYNC_SAMPLES_MAX {
        bail!("--fsync-samples is at most {FDATASYNC_SAMPLES_MAX}");
    }
    let report = engine::doctor::run(&engine::doctor::Options { data, cores, fsync_samples });
    print!("{}", if json { report.json() } else { report.text() });
    Ok(if report.failed() { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // The doctor reports a missing io_uring rather than refusing to start without it.
    if let Command::Doctor { data, cores, fsync_samples, json } = cli.command {
        return doctor(data, cores, fsync_samples, json);
    }
    exit_on_panic();
    match &cli.command {
        Command::Master { log, .. } => log.init("master")?,
        Command::Storage { log, .. } => log.init("storage")?,
        Command::Cluster { log, .. } => log.init("cluster")?,
        Command::Admin { log, .. } => log.init("admin")?,
        // Commands, not nodes: the client's warnings (a storage lost...) on stderr.
        Command::Pack { .. } => {
            let options = engine::logging::LogOptions::default();
            engine::logging::init(&options, "pack", "warn")?;
        }
        Command::Ctl { .. } => {
            let options = engine::logging::LogOptions::default();
            engine::logging::init(&options, "ctl", "warn")?;
        }
        Command::Doctor { .. } => unreachable!("handled above"),
    }
    check_io_uring()?;
    engine::shutdown::install().context("installing signal handlers")?;
    match cli.command {
        Command::Master {
            cluster,
            bind,
            partitions,
            replicas,
            autostart,
            masters,
            storage_timeout,
            metrics_bind,
            tls,
            log: _,
        } => {
            let tls = tls.load(&[NodeType::Master])?;
            let storage_timeout = seconds(storage_timeout, "--storage-timeout")?;
            let config =
                ClusterConfig { name: cluster, partitions, replicas, autostart, storage_timeout };
            LocalExecutorBuilder::default()
                .name("master")
                .spawn(move || async move {
                    engine::net::use_tls(tls);
                    let listener = listen_or_exit(bind);
                    println!(
                        "neo master: listening on {}",
                        listener.local_addr().expect("address")
                    );
                    let _metrics = metrics_bind.map(serve_metrics);
                    test_panic();
                    let serving = engine::master::serve(listener, config, masters);
                    engine::shutdown::run_until_requested(serving).await;
                    tracing::info!("stopped");
                })
                .map_err(|e| anyhow::anyhow!("starting the master: {e}"))?
                .join()
                .map_err(|e| anyhow::anyhow!("master stopped: {e}"))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Storage {
            cluster,
            master,
            data,
            host,
            cores,
            bind,
            spin_us,
            cpus,
            metrics_bind,
            tls,
            log: _,
        } => {
            let tls = tls.load(&[NodeType::Storage])?;
            let host = host.unwrap_or_else(hostname);
            let spin = std::time::Duration::from_micros(spin_us);
            let storages = Storages {
                cluster: &cluster,
                masters: &master,
                data: &data,
                bind,
                spin,
                cpus: &cpus,
                tls: tls.as_ref(),
                metrics: metrics_bind,
            };
            run_storages(&storages, &host, cores, cores > 1)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Cluster {
            cluster,
            bind,
            admin_bind,
            data,
            storages,
            partitions,
            replicas,
            spin_us,
            storage_timeout,
            metrics_bind,
            tls,
            log: _,
        } => {
            let tls = tls.load(&[NodeType::Master, NodeType::Storage, NodeType::Admin])?;
            let config = ClusterConfig {
                name: cluster.clone(),
                partitions,
                replicas,
                autostart: Some(storages),
                storage_timeout: seconds(storage_timeout, "--storage-timeout")?,
            };
            let (sender, receiver) = std::sync::mpsc::channel();
            let master_tls = tls.clone();
            let master = LocalExecutorBuilder::default()
                .name("master")
                .spawn(move || async move {
                    engine::net::use_tls(master_tls);
                    let listener = listen_or_exit(bind);
                    let _metrics = metrics_bind.map(serve_metrics);
                    sender
                        .send(listener.local_addr().expect("address"))
                        .expect("main thread waits");
                    let serving = engine::master::serve(listener, config, Vec::new());
                    engine::shutdown::run_until_requested(serving).await;
                })
                .map_err(|e| anyhow::anyhow!("starting the master: {e}"))?;
            let address = receiver.recv().context("the master did not start")?;
            let (sender, receiver) = std::sync::mpsc::channel();
            let admin_cluster = cluster.clone();
            let admin_tls = tls.clone();
            let admin = LocalExecutorBuilder::default()
                .name("admin")
                .io_memory(1 << 20)
                .spawn(move || async move {
                    engine::net::use_tls(admin_tls);
                    let listener = listen_or_exit(admin_bind);
                    sender
                        .send(listener.local_addr().expect("address"))
                        .expect("main thread waits");
                    let serving = engine::admin::serve(listener, admin_cluster, vec![address]);
                    engine::shutdown::run_until_requested(serving).await;
                })
                .map_err(|e| anyhow::anyhow!("starting the admin: {e}"))?;
            let admin_address = receiver.recv().context("the admin did not start")?;
            println!(
                "neo cluster: master listening on {address}, admin on {admin_address}, {storages} storage cores in {}",
                data.display()
            );
            // In one process the storages are reached on loopback when the master listens
            // on every interface.
            let ip = if address.ip().is_unspecified() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                address.ip()
            };
            let bind = SocketAddr::new(ip, 0);
            let spin = std::time::Duration::from_micros(spin_us);
            let cores = Storages {
                cluster: &cluster,
                masters: &[address],
                data: &data,
                bind,
                spin,
                cpus: &[],
                tls: tls.as_ref(),
                // The master takes PORT; storage core N, PORT + 1 + N.
                metrics: metrics_bind.map(|mut metrics| {
                    if metrics.port() != 0 {
                        metrics.set_port(metrics.port().saturating_add(1));
                    }
                    metrics
                }),
            };
            run_storages(&cores, &hostname(), storages, true)?;
            master.join().map_err(|e| anyhow::anyhow!("master stopped: {e}"))?;
            admin.join().map_err(|e| anyhow::anyhow!("admin stopped: {e}"))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Admin { cluster, master, bind, tls, log: _ } => {
            let tls = tls.load(&[NodeType::Admin])?;
            LocalExecutorBuilder::default()
                .name("admin")
                .io_memory(1 << 20)
                .spawn(move || async move {
                    engine::net::use_tls(tls);
                    let listener = listen_or_exit(bind);
                    println!("neo admin: listening on {}", listener.local_addr().expect("address"));
                    engine::shutdown::run_until_requested(engine::admin::serve(
                        listener, cluster, master,
                    ))
                    .await;
                })
                .map_err(|e| anyhow::anyhow!("starting the admin: {e}"))?
                .join()
                .map_err(|e| anyhow::anyhow!("admin stopped: {e}"))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Pack { cluster, master, days, tid, tls } => {
            let tls = tls.load(&[NodeType::Client])?;
            let pack_tid = match tid {
                Some(text) => parse_tid(&text)?,
                None if days.is_finite() && days >= 0.0 => {
                    let ago = std::time::Duration::from_secs_f64(days * 86400.0);
                    let when = std::time::SystemTime::now()
                        .checked_sub(ago)
                        .context("--days reaches before the epoch")?;
                    wire::Tid::from_system_time(when)
                }
                None => bail!("--days must be a number of days, 0 or more"),
            };
            let mut options = engine::client::ClientOptions::new(&cluster, master);
            options.cache_size = 0;
            options.tls = tls;
            // Exit codes as ctl's: 1 refused or failed, 3 the cluster cannot be reached.
            let client = match engine::client::Client::connect(options) {
                Ok(client) => client,
                Err(error) => {
                    eprintln!("neo pack: cannot reach the cluster: {error}");
                    return Ok(ExitCode::from(3));
                }
            };
            let meta = engine::client::TransactionMeta {
                user: bytes::Bytes::from_static(b"neo pack"),
                description: bytes::Bytes::from_static(b"IStorage.pack"),
                extension: bytes::Bytes::new(),
            };
            let packed = client.pack(pack_tid, None, &meta);
            client.close();
            match packed {
                Ok(pack_id) => {
                    println!(
                        "pack order {pack_id} done: packed up to {pack_tid} (at most the last commit)"
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(error) => {
                    eprintln!("neo pack: {error}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        Command::Doctor { .. } => unreachable!("handled above"),
        Command::Ctl { cluster, master, json, words, tls } => {
            // `--json` after the command's words too (`ctl stats --json`).
            let json = json || words.iter().any(|w| w == "--json");
            let words: Vec<String> = words.into_iter().filter(|w| w != "--json").collect();
            let command = parse_ctl(&words)?;
            let tls = tls.load(&[NodeType::Admin])?;
            let outcome = LocalExecutorBuilder::default()
                .io_memory(1 << 20)
                .spawn(move || async move {
                    engine::net::use_tls(tls);
                    engine::ctl::run(&master, &cluster, &command, json).await
                })
                .map_err(|e| anyhow::anyhow!("starting ctl: {e}"))?
                .join()
                .map_err(|e| anyhow::anyhow!("ctl stopped: {e}"))?;
            match outcome {
                Ok(text) => {
                    print!("{text}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(error @ engine::ctl::CtlError::Problems(_)) => {
                    print!("{error}");
                    Ok(ExitCode::from(error.exit_code()))
                }
                Err(error) => {
                    eprintln!("neo ctl: {error}");
                    Ok(ExitCode::from(error.exit_code()))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(words: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(words)
    }

    fn log_of(cli: &Cli) -> &LogArgs {
        match &cli.command {
            Command::Master { log, .. }
            | Command::Storage { log, .. }
            | Command::Cluster { log, .. }
            | Command::Admin { log, .. } => log,
            other => panic!("no log options on {other:?}"),
        }
    }

    #[test]
    fn log_options_on_every_node_with_their_defaults() {
        let nodes: [&[&str]; 4] = [
            &["neo", "master", "--cluster", "c"],
            &["neo", "storage", "--cluster", "c", "--data", "/d"],
            &["neo", "cluster", "--data", "/d"],
            &["neo", "admin", "--cluster", "c"],
        ];
        for words in nodes {
            let cli = parse(words).unwrap();
            let log = log_of(&cli);
            assert_eq!((&log.log_level, &log.log_file), (&None, &None), "{words:?}");
            assert_eq!(log.log_format, engine::logging::Format::Text, "{words:?}");
            let given = [words, &["--log-level", "debug", "--log-file", "/var/log/neo.log"]]
                .concat()
                .into_iter()
                .chain(["--log-format", "json"]);
            let cli = Cli::try_parse_from(given).unwrap();
            let log = log_of(&cli);
            assert_eq!(log.log_level.as_deref(), Some("debug"));
            assert_eq!(log.log_file.as_deref(), Some(std::path::Path::new("/var/log/neo.log")));
            assert_eq!(log.log_format, engine::logging::Format::Json);
        }
        let bad = parse(&["neo", "master", "--cluster", "c", "--log-format", "xml"]).unwrap_err();
        assert!(bad.to_string().contains("text or json"), "{bad}");
        // Commands are no nodes: no log options.
        assert!(parse(&["neo", "pack", "--cluster", "c", "--log-level", "debug"]).is_err());
    }

    #[test]
    fn log_options_from_a_config_file() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("neo.toml");
        std::fs::write(
            &path,
            "[storage]\ncluster = \"c\"\ndata = \"/d\"\nlog_level = \"engine::storage=debug,warn\"\n\
             log_file = \"/var/log/neo-storage.log\"\nlog_format = \"json\"\n",
        )
        .unwrap();
        let args = ["neo", "--config", path.to_str().unwrap(), "storage", "--log-format", "text"];
        let merged = arguments_from(args.iter().map(|a| a.to_string()).collect()).unwrap();
        let cli = Cli::try_parse_from(merged).unwrap();
        let log = log_of(&cli);
        assert_eq!(log.log_level.as_deref(), Some("engine::storage=debug,warn"));
        assert_eq!(log.log_file.as_deref(), Some(std::path::Path::new("/var/log/neo-storage.log")));
        // The command line wins.
        assert_eq!(log.log_format, engine::logging::Format::Text);
    }
}
