//! `neo`: the neo-rs command. Today: `neo master`, `neo storage`, `neo ctl`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use engine::cluster::ClusterConfig;
use engine::ctl::Command as CtlCommand;
use engine::storage::StorageOptions;
use glommio::LocalExecutorBuilder;
use wire::{ClusterState, NodeId};

/// neo-rs: distributed, redundant, transactional object storage for ZODB.
#[derive(Parser, Debug)]
#[command(name = "neo", version, about, long_about = None)]
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
        #[arg(long, default_value = "127.0.0.1:10000")]
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
    },
    /// Run a storage node (one core).
    Storage {
        #[arg(long)]
        cluster: String,
        /// Address of the primary master.
        #[arg(long, default_value = "127.0.0.1:10000")]
        master: SocketAddr,
        /// Directory of this storage's log and index files.
        #[arg(long)]
        data: PathBuf,
        /// Host label: two copies of a partition never go to one host (default: hostname).
        #[arg(long)]
        host: Option<String>,
    },
    /// Ask the cluster something, or tell it what to do.
    Ctl {
        #[arg(long)]
        cluster: String,
        #[arg(long, default_value = "127.0.0.1:10000")]
        master: SocketAddr,
        /// Print JSON, for scripts.
        #[arg(long)]
        json: bool,
        /// print cluster | print pt | print node | print primary | start |
        /// set cluster STATE | set replicas N | add NID... | tweak [-n] [DROP_NID...] |
        /// kill NID | drop NID
        #[arg(required = true, num_args = 1.., allow_hyphen_values = true)]
        words: Vec<String>,
    },
}

fn parse_ctl(words: &[String]) -> anyhow::Result<CtlCommand> {
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let nids = |list: &[&str]| -> anyhow::Result<Vec<NodeId>> {
        list.iter().map(|w| w.parse::<NodeId>().map_err(anyhow::Error::from)).collect()
    };
    Ok(match words.as_slice() {
        ["print", "cluster"] => CtlCommand::PrintCluster,
        ["print", "pt"] => CtlCommand::PrintPartitionTable,
        ["print", "node"] => CtlCommand::PrintNodes,
        ["print", "primary"] => CtlCommand::PrintPrimary,
        ["kill", nid] => CtlCommand::Kill(nid.parse()?),
        ["drop", nid] => CtlCommand::Drop(nid.parse()?),
        ["start"] => CtlCommand::Start,
        ["set", "cluster", state] => {
            let state = ClusterState::parse(state)
                .with_context(|| format!("unknown cluster state {state:?}"))?;
            CtlCommand::SetCluster(state)
        }
        ["set", "replicas", n] => CtlCommand::SetReplicas(n.parse().context("replicas: a number")?),
        ["add", rest @ ..] if !rest.is_empty() => CtlCommand::Add(nids(rest)?),
        ["tweak", "-n", rest @ ..] => CtlCommand::Tweak { dry_run: true, drop: nids(rest)? },
        ["tweak", rest @ ..] => CtlCommand::Tweak { dry_run: false, drop: nids(rest)? },
        _ => bail!("unknown ctl command {:?} (see neo ctl --help)", words.join(" ")),
    })
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("neo: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    check_io_uring()?;
    match cli.command {
        Command::Master { cluster, bind, partitions, replicas, autostart } => {
            let config = ClusterConfig { name: cluster, partitions, replicas, autostart };
            LocalExecutorBuilder::default()
                .name("master")
                .spawn(move || async move {
                    let listener = glommio::net::TcpListener::bind(bind).expect("bind");
                    println!(
                        "neo master: listening on {}",
                        listener.local_addr().expect("address")
                    );
                    engine::master::serve(listener, config).await;
                })
                .map_err(|e| anyhow::anyhow!("starting the master: {e}"))?
                .join()
                .map_err(|e| anyhow::anyhow!("master stopped: {e}"))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Storage { cluster, master, data, host } => {
            let options =
                StorageOptions { cluster, master, data, host: host.unwrap_or_else(hostname) };
            let outcome = LocalExecutorBuilder::default()
                .name("storage")
                .spawn(move || async move { engine::storage::serve(options).await })
                .map_err(|e| anyhow::anyhow!("starting the storage: {e}"))?
                .join()
                .map_err(|e| anyhow::anyhow!("storage stopped: {e}"))?;
            outcome.context("storage")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Ctl { cluster, master, json, words } => {
            let command = parse_ctl(&words)?;
            let outcome = LocalExecutorBuilder::default()
                .io_memory(1 << 20)
                .spawn(
                    move || async move { engine::ctl::run(master, &cluster, &command, json).await },
                )
                .map_err(|e| anyhow::anyhow!("starting ctl: {e}"))?
                .join()
                .map_err(|e| anyhow::anyhow!("ctl stopped: {e}"))?;
            match outcome {
                Ok(text) => {
                    print!("{text}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(error) => {
                    eprintln!("neo ctl: {error}");
                    Ok(ExitCode::from(error.exit_code()))
                }
            }
        }
    }
}
