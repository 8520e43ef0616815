//! The ZEO baseline: `zeo/zeo_bench.py` runs a workload through ZEO's ClientStorage (a ZEO
//! server with a FileStorage, client processes with their cache off) and hands back every
//! latency, so ZEO's figures get the same histograms, files and plots as ours.

use std::path::Path;

use hdrhistogram::Histogram;

use crate::report::histogram_ns;

/// What ZEO measured: every operation's latency (nanoseconds) and the total rate.
pub struct ZeoRun {
    pub histogram: Histogram<u64>,
    pub rate: f64,
}

#[derive(Clone, Copy, Debug)]
pub enum ZeoWorkload {
    /// Random loads among `objects` objects of `size` bytes.
    Loads { objects: usize, size: usize },
    /// Transactions rewriting the client's own `objects` objects of `size` bytes.
    Commits { objects: usize, size: usize },
    /// Transactions of `objects` new objects of `size` bytes.
    Add { objects: usize, size: usize },
    /// Rounds of `objects` loads of the client's own objects, among `population`.
    Reads { objects: usize, size: usize, population: usize },
}

/// Where ZEO runs: CPUs of the server and of the client processes.
#[derive(Clone, Copy, Debug)]
pub struct ZeoPlacement {
    pub server_cpu: usize,
    pub client_cpu: usize,
}

/// The Python that runs the baseline: `NEO_BENCH_PYTHON`, else `python3`, if it can import
/// ZEO and ZODB; else why not.
pub fn python() -> Result<String, String> {
    python_importing("ZEO, ZODB", "pip install ZEO ZODB")
}

/// The Python for the ZODB workloads: one that also imports neo_rs (scripts/bench.sh
/// installs it).
pub fn zodb_python() -> Result<String, String> {
    python_importing("ZEO, ZODB, neo_rs", "pip install ZEO ZODB ./python, or scripts/bench.sh")
}

fn python_importing(modules: &str, how: &str) -> Result<String, String> {
    let python = std::env::var("NEO_BENCH_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let probe =
        std::process::Command::new(&python).args(["-c", &format!("import {modules}")]).output();
    match probe {
        Ok(output) if output.status.success() => Ok(python),
        _ => Err(format!(
            "{python} cannot import {modules} ({how}, or set NEO_BENCH_PYTHON to a Python that can)"
        )),
    }
}

/// Runs `workload` on `clients` ZEO client processes: `warmup` seconds excluded, then
/// `seconds` measured. `directory` holds the FileStorage and is removed afterwards.
pub fn run(
    python: &str,
    directory: &Path,
    workload: ZeoWorkload,
    clients: usize,
    window: (f64, f64),
    placement: ZeoPlacement,
) -> Result<ZeoRun, String> {
    let (name, objects, size, population) = match workload {
        ZeoWorkload::Loads { objects, size } => ("loads", objects, size, 0),
        ZeoWorkload::Commits { objects, size } => ("commits", objects, size, 0),
        ZeoWorkload::Add { objects, size } => ("add", objects, size, 0),
        ZeoWorkload::Reads { objects, size, population } => ("reads", objects, size, population),
    };
    let mut arguments = vec!["--dir".to_owned(), directory.display().to_string()];
    for (option, value) in [
        ("--workload", name.to_owned()),
        ("--objects", objects.to_string()),
        ("--size", size.to_string()),
        ("--population", population.max(1).to_string()),
    ] {
        arguments.extend([option.to_owned(), value]);
    }
    run_script(python, "zeo_bench.py", directory, &arguments, clients, window, placement)
}

/// Where the ZODB workloads run: a neo-rs cluster (its masters and name), or a ZEO server
/// the script starts with its FileStorage in the directory.
pub enum ZodbStorage<'a> {
    Neo { masters: &'a str, name: &'a str },
    Zeo,
}

/// Runs a ZODB-level workload (`zeo/zodb_bench.py`: "loads" of objects not cached
/// anywhere, or small "commits") through ZODB.DB on `storage`, in `clients` processes.
pub fn run_zodb(
    python: &str,
    directory: &Path,
    storage: ZodbStorage<'_>,
    workload: &str,
    clients: usize,
    window: (f64, f64),
    placement: ZeoPlacement,
) -> Result<ZeoRun, String> {
    let mut arguments = vec!["--workload".to_owned(), workload.to_owned()];
    match storage {
        ZodbStorage::Neo { masters, name } => arguments
            .extend(["--storage", "neo", "--master", masters, "--name", name].map(str::to_owned)),
        ZodbStorage::Zeo => arguments.extend([
            "--storage".to_owned(),
            "zeo".to_owned(),
            "--dir".to_owned(),
            directory.display().to_string(),
        ]),
    }
    run_script(python, "zodb_bench.py", directory, &arguments, clients, window, placement)
}

/// Runs one of the scripts in `zeo/` with `arguments` and the common ones (clients,
/// window, placement, where the latencies go), then reads what it measured. `directory`
/// is its scratch space, removed afterwards.
fn run_script(
    python: &str,
    script: &str,
    directory: &Path,
    arguments: &[String],
    clients: usize,
    (warmup, seconds): (f64, f64),
    placement: ZeoPlacement,
) -> Result<ZeoRun, String> {
    let script = format!("{}/zeo/{script}", env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(directory).map_err(|e| e.to_string())?;
    let latencies = directory.join("latencies.bin");
    let output = std::process::Command::new(python)
        .arg(&script)
        .args(arguments)
        .arg("--latencies")
        .arg(&latencies)
        .args(["--clients", &clients.to_string()])
        .args(["--warmup", &warmup.to_string(), "--seconds", &seconds.to_string()])
        .args(["--server-cpu", &placement.server_cpu.to_string()])
        .args(["--client-cpu", &placement.client_cpu.to_string()])
        .output()
        .map_err(|e| format!("{python} {script}: {e}"));
    let bytes = std::fs::read(&latencies);
    let _ = std::fs::remove_dir_all(directory);
    let output = output?;
    if !output.status.success() {
        return Err(format!(
            "{script} failed: {}",
            String::from_utf8_lossy(&output.stderr).lines().last().unwrap_or("")
        ));
    }
    let bytes = bytes.map_err(|e| format!("{script} wrote no latencies: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let summary: serde_json::Value =
        serde_json::from_str(text.trim()).map_err(|e| format!("{script} printed {text}: {e}"))?;
    let rate = summary["rate"].as_f64().ok_or_else(|| format!("no rate in {text}"))?;
    let mut histogram = histogram_ns();
    for chunk in bytes.chunks_exact(8) {
        let nanoseconds = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        histogram.saturating_record(nanoseconds.max(1));
    }
    Ok(ZeoRun { histogram, rate })
}
