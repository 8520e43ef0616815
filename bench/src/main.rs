//! `neo-bench`: the neo-rs benchmark harness. Every figure comes with a baseline measured in
//! the same run on the same machine, because these machines are shared and noisy: compare
//! ratios, not absolute numbers.

mod alloc;
mod cluster_bench;
mod logstore_bench;
mod report;
mod wire_bench;

use std::process::ExitCode;
use std::time::Duration;

#[global_allocator]
static ALLOCATOR: alloc::CountingAllocator = alloc::CountingAllocator;

const USAGE: &str = "\
usage: neo-bench [WORKLOAD...] [options]

Workloads (default: all):
  wire        encode/decode of 4 KiB load answers and store requests vs memcpy
  logstore    group commit vs raw fdatasync, hot lookups, restart time, index memory
  cluster     loads and commits through an embedded cluster (master + storage core) vs
              raw TCP ping-pong / echo on the same glommio stack and raw fdatasync

Options:
  --seconds S     measured seconds per case and repeat (default 1)
  --repeats N     repeats of each case, to show the spread (default 3)
  --cpu N         pin the benchmark thread to CPU N (default 0; -1 to leave unpinned)
  --dir PATH      where logstore data goes (default: the temp directory); removed after
  --committers N  concurrent committers in the group-commit case (default 16)
  --clients N     concurrent clients in the cluster throughput cases (default 16)
  --server-cpu N  CPU of the cluster's executors and the echo server (default: the other
                  CPU than --cpu when there are two or more)
  --master-cpu N  CPU of the cluster's master (default: a third CPU if there is one, else
                  the clients' CPU)
  --spin US       cluster executors spin US microseconds before parking (default: park)
  --revisions N   revisions written for the restart case (default 1000000)
  --tail-mib N    log written after the checkpoint for the crash-restart case (default 256)
  --quick         0.2 s per case, 2 repeats, smaller data sets (smoke run)
  -h, --help      this text
";

#[derive(Debug)]
struct Options {
    workloads: Vec<String>,
    seconds: f64,
    repeats: usize,
    cpu: i64,
    directory: Option<std::path::PathBuf>,
    committers: usize,
    revisions: u64,
    lookup_objects: u64,
    tail_mib: u64,
    clients: usize,
    server_cpu: Option<usize>,
    master_cpu: Option<usize>,
    spin_micros: Option<u64>,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        workloads: Vec::new(),
        seconds: 1.0,
        repeats: 3,
        cpu: 0,
        directory: None,
        committers: 16,
        revisions: 1_000_000,
        lookup_objects: 100_000,
        tail_mib: 256,
        clients: 16,
        server_cpu: None,
        master_cpu: None,
        spin_micros: None,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "-h" | "--help" => return Err(String::new()),
            "--seconds" => {
                options.seconds = value("--seconds")?
                    .parse()
                    .map_err(|_| "--seconds takes a number".to_owned())?;
                if !options.seconds.is_finite() || options.seconds <= 0.0 {
                    return Err("--seconds must be positive".to_owned());
                }
            }
            "--repeats" => {
                options.repeats = value("--repeats")?
                    .parse()
                    .map_err(|_| "--repeats takes a count".to_owned())?;
                if options.repeats == 0 {
                    return Err("--repeats must be at least 1".to_owned());
                }
            }
            "--cpu" => {
                options.cpu =
                    value("--cpu")?.parse().map_err(|_| "--cpu takes a CPU number".to_owned())?
            }
            "--dir" => options.directory = Some(value("--dir")?.into()),
            "--committers" => {
                options.committers = value("--committers")?
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or("--committers takes a positive count")?;
            }
            "--revisions" => {
                options.revisions = value("--revisions")?
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or("--revisions takes a positive count")?;
            }
            "--tail-mib" => {
                options.tail_mib = value("--tail-mib")?
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or("--tail-mib takes a positive size")?;
            }
            "--clients" => {
                options.clients = value("--clients")?
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or("--clients takes a positive count")?;
            }
            "--server-cpu" => {
                options.server_cpu = Some(
                    value("--server-cpu")?
                        .parse()
                        .map_err(|_| "--server-cpu takes a CPU number".to_owned())?,
                );
            }
            "--master-cpu" => {
                options.master_cpu = Some(
                    value("--master-cpu")?
                        .parse()
                        .map_err(|_| "--master-cpu takes a CPU number".to_owned())?,
                );
            }
            "--spin" => {
                options.spin_micros = Some(
                    value("--spin")?.parse().map_err(|_| "--spin takes microseconds".to_owned())?,
                );
            }
            "--quick" => {
                options.seconds = 0.2;
                options.repeats = 2;
                options.revisions = 100_000;
                options.lookup_objects = 10_000;
                options.tail_mib = 32;
            }
            "wire" | "logstore" | "cluster" => options.workloads.push(arg.clone()),
            other => return Err(format!("unknown workload or option: {other}")),
        }
    }
    if options.workloads.is_empty() {
        options.workloads = vec!["wire".to_owned(), "logstore".to_owned(), "cluster".to_owned()];
    }
    Ok(options)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match parse(&args) {
        Ok(options) => options,
        Err(error) if error.is_empty() => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            eprintln!("neo-bench: {error}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let machine = report::machine_summary();
    let placement = if options.cpu >= 0 && report::pin_to_cpu(options.cpu as usize) {
        format!("pinned to CPU {}", options.cpu)
    } else {
        "unpinned".to_owned()
    };
    println!("neo-rs benchmark report");
    println!("  machine: {machine}");
    println!("  commit:  {}   placement: {placement}", report::git_commit());
    println!(
        "  method:  {} s per case x {} repeats, 0.2 s warm-up excluded; baselines measured in this run",
        options.seconds, options.repeats
    );
    println!();
    for workload in &options.workloads {
        if workload == "wire" {
            let wire_options = wire_bench::WireOptions {
                seconds_per_case: options.seconds,
                repeats: options.repeats,
                warmup: Duration::from_millis(200),
            };
            let results = wire_bench::run(&wire_options);
            wire_bench::print(&results, wire_bench::frame_size());
        } else if workload == "logstore" {
            logstore_bench::run(&logstore_bench::LogstoreOptions {
                seconds: options.seconds * options.repeats as f64,
                directory: options.directory.clone(),
                committers: options.committers,
                lookup_objects: options.lookup_objects,
                restart_revisions: options.revisions,
                tail_bytes: options.tail_mib << 20,
            });
        } else if workload == "cluster" {
            // Online CPUs, whatever this thread is pinned to.
            // SAFETY: sysconf only reads a system value.
            let cpus = usize::try_from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) })
                .unwrap_or(1)
                .max(1);
            let client_cpu = options.cpu.max(0) as usize;
            let server_cpu =
                options.server_cpu.unwrap_or(if cpus > 1 { (client_cpu + 1) % cpus } else { 0 });
            let master_cpu = options.master_cpu.unwrap_or(if cpus > 2 {
                (0..cpus).find(|&c| c != client_cpu && c != server_cpu).unwrap_or(client_cpu)
            } else {
                client_cpu
            });
            cluster_bench::run(&cluster_bench::ClusterOptions {
                seconds: options.seconds,
                repeats: options.repeats,
                directory: options.directory.clone(),
                clients: options.clients,
                server_cpu,
                master_cpu,
                spin_before_park: options.spin_micros.map(Duration::from_micros),
            });
        }
        println!();
    }
    ExitCode::SUCCESS
}
