//! Shared pieces of every benchmark report: machine facts, core pinning, and latency
//! histograms printed as percentiles.

use std::fmt::Write;

use hdrhistogram::Histogram;

/// A histogram of nanoseconds, 1 ns to 60 s at 3 significant digits.
pub fn histogram_ns() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// "p50 … p99 … p999 … max" of a histogram of nanoseconds, in a unit chosen per value.
pub fn percentiles(histogram: &Histogram<u64>) -> String {
    let mut out = String::new();
    for (label, quantile) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)] {
        write!(out, "{label} {:>9}  ", format_ns(histogram.value_at_quantile(quantile) as f64))
            .unwrap();
    }
    write!(out, "max {:>9}", format_ns(histogram.max() as f64)).unwrap();
    out
}

pub fn format_ns(ns: f64) -> String {
    if ns < 1_000.0 {
        format!("{ns:.1} ns")
    } else if ns < 1_000_000.0 {
        format!("{:.2} us", ns / 1_000.0)
    } else {
        format!("{:.2} ms", ns / 1_000_000.0)
    }
}

pub fn format_rate(per_second: f64) -> String {
    if per_second >= 1e6 {
        format!("{:.2} M/s", per_second / 1e6)
    } else if per_second >= 1e3 {
        format!("{:.1} k/s", per_second / 1e3)
    } else {
        format!("{per_second:.0} /s")
    }
}

/// Pins the calling thread to one CPU, so that runs compare; returns false if refused.
pub fn pin_to_cpu(cpu: usize) -> bool {
    // SAFETY: `cpu_set_t` is plain data; zeroed is its empty set. CPU_SET writes inside it,
    // and sched_setaffinity reads it; pid 0 is the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// One line describing the machine: CPU model, cores, kernel.
pub fn machine_summary() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".to_owned(), |k| k.trim().to_owned());
    format!("{cpu}, {cores} cores, Linux {kernel}")
}

/// The git commit of the working tree, if there is one.
pub fn git_commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(
            || "unknown".to_owned(),
            |o| String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        )
}
