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
    let python = std::env::var("NEO_BENCH_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let probe = std::process::Command::new(&python).args(["-c", "import ZEO, ZODB"]).output();
    match probe {
        Ok(output) if output.status.success() => Ok(python),
        _ => Err(format!(
            "{python} cannot import ZEO and ZODB (pip install ZEO ZODB, or set NEO_BENCH_PYTHON to a Python that can)"
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
    (warmup, seconds): (f64, f64),
    placement: ZeoPlacement,
) -> Result<ZeoRun, String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/zeo/zeo_bench.py");
    std::fs::create_dir_all(directory).map_err(|e| e.to_string())?;
    let latencies = directory.join("latencies.bin");
    let (name, objects, size, population) = match workload {
        ZeoWorkload::Loads { objects, size } => ("loads", objects, size, 0),
        ZeoWorkload::Commits { objects, size } => ("commits", objects, size, 0),
        ZeoWorkload::Add { objects, size } => ("add", objects, size, 0),
        ZeoWorkload::Reads { objects, size, population } => ("reads", objects, size, population),
    };
    let output = std::process::Command::new(python)
        .arg(script)
        .arg("--dir")
        .arg(directory)
        .arg("--latencies")
        .arg(&latencies)
        .args(["--workload", name, "--clients", &clients.to_string()])
        .args(["--warmup", &warmup.to_string(), "--seconds", &seconds.to_string()])
        .args(["--objects", &objects.to_string(), "--size", &size.to_string()])
        .args(["--population", &population.max(1).to_string()])
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
