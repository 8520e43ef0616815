//! `neo doctor`: checks a host that runs (or is about to run) neo storage and master nodes,
//! and says for each check OK, WARN or FAIL, what it found and what to change.
//!
//! Rules:
//! - Every check is a decision that takes what was read (a kernel release, a limit, the
//!   CPU governors, fdatasync latencies) and returns a `Finding`; no decision reads the host,
//!   so each is unit-tested with made-up facts. `read_facts` is the only code that reads
//!   /proc, /sys, the rlimits and the data directory's disk; `decide` turns `Facts` into a
//!   `Report`.
//! - FAIL means a node will not start or will lose data (no io_uring, a memlock limit glommio
//!   refuses, a data directory it cannot write or that lives in memory); WARN means it runs
//!   but slower or less safely than it could; `neo doctor` exits 1 when anything FAILs.
//! - The limits and latencies the checks compare against are named constants below, each
//!   with why; docs/deploy.md gives the measurements behind them.
//!
//! The facts come from the process that runs `neo doctor`: its rlimits and capabilities are
//! the shell's, not those systemd gives the units (`LimitMEMLOCK=`, `LimitNOFILE=`); run it as
//! the service would (`systemd-run -p User=neo -p LimitMEMLOCK=infinity -p
//! LimitNOFILE=65536 --pty neo doctor ...`) to check those.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// io_memory of a storage core's executor (`neo storage`): the slab glommio allocates its
/// I/O buffers from (buffered reads of data not in the page cache).
pub const STORAGE_IO_MEMORY_BYTES: usize = 4 << 20;
/// io_memory of the admin node's and ctl's executors.
pub const ADMIN_IO_MEMORY_BYTES: usize = 1 << 20;
/// io_memory of the master's executor: glommio's default (`DEFAULT_IO_MEMORY` in glommio 0.9).
pub const MASTER_IO_MEMORY_BYTES: usize = 10 << 20;
/// glommio 0.9 registers an executor's io_memory with each of its three rings (main, poll,
/// latency); the kernel pins and accounts it once per ring. Measured: a storage core's
/// process shows `VmPin: 12288 kB` in /proc/PID/status, a master's 30720 kB.
pub const RING_REGISTRATIONS: usize = 3;
/// glommio refuses to start an executor when RLIMIT_MEMLOCK is below this
/// (`MemLockLimit(limit/524288)`, and the node exits with status 2).
pub const GLOMMIO_MEMLOCK_MIN_BYTES: u64 = 512 << 10;
/// The oldest kernel glommio supports.
pub const KERNEL_MIN: (u32, u32) = (5, 8);
/// Above this fdatasync p50 the disk is the commit's bottleneck: a commit waits for two
/// group-commit flushes in sequence (the vote, then the lock), each one write + fdatasync,
/// so a p50 of 2 ms holds one client to ~250 commits/s and makes every batch of concurrent
/// committers wait at least that long. Disks fit for a database sync in 20-600 us (the
/// development VM's virtual disk: ~400-600 us; docs/deploy.md).
pub const FDATASYNC_P50_WARN_US: u64 = 2_000;
/// Above this fdatasync p99 a commit batch stalls every committer at once for that long.
pub const FDATASYNC_P99_WARN_US: u64 = 20_000;
/// Write + fdatasync rounds of the disk check (one 4 KiB block each): 0.1 s on a disk that
/// syncs in 500 us, 2 s on one that takes 10 ms.
pub const FDATASYNC_SAMPLES_DEFAULT: usize = 200;
/// The most rounds `--fsync-samples` may ask for.
pub const FDATASYNC_SAMPLES_MAX: usize = 100_000;
/// A storage preallocates its log in segments of this size (`logstore`'s default).
pub const SEGMENT_BYTES: u64 = logstore::limits::SEGMENT_SIZE_DEFAULT as u64;
/// Below this free space on the data directory's filesystem a storage cannot preallocate
/// its next segment and write a checkpoint: FAIL.
pub const FREE_BYTES_FAIL: u64 = 2 * SEGMENT_BYTES;
/// Below this free space (or 10% of the filesystem, whichever is more) compaction, which
/// writes the live records of old segments into new ones before deleting the old, has
/// little room: WARN.
pub const FREE_BYTES_WARN: u64 = 2 << 30;
/// Descriptors a storage core holds besides its segments and connections: three io_uring
/// rings, an eventfd, its lock file, its listening socket, the master connection, stdio
/// and the blocking-thread pool's (measured: 14 for a core with one segment; rounded up).
pub const FDS_PER_CORE: u64 = 32;
/// A segment is open twice: mapped for loads (`FileDisk`) and as an io_uring file for
/// writes and uncached reads (`UringFiles`).
pub const FDS_PER_SEGMENT: u64 = 2;
/// Descriptors of connections a storage core may hold: its listener serves
/// `limits::CONNECTIONS_MAX` at once (clients hold a pooled connection per loading thread
/// to each storage core they read, plus the other storages and the master) and refuses up
/// to `limits::REFUSALS_MAX` more with a word.
pub const CONNECTIONS_PER_CORE: u64 =
    (crate::limits::CONNECTIONS_MAX + crate::limits::REFUSALS_MAX) as u64;
/// The open-file limit the units set (`LimitNOFILE=` in deploy/).
pub const NOFILE_RECOMMENDED: u64 = 65_536;

/// The checks, in the order they are printed.
pub const CHECK_NAMES: [&str; 8] =
    ["io_uring", "memlock", "fdatasync", "filesystem", "governor", "hugepages", "nofile", "cpus"];

/// How a check came out. Ordered: the report's worst status is the maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

/// One check's verdict: what was found, and what to change (empty when nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub status: Status,
    pub found: String,
    pub change: String,
}

impl Finding {
    fn ok(found: impl Into<String>) -> Finding {
        Finding { status: Status::Ok, found: found.into(), change: String::new() }
    }
    fn warn(found: impl Into<String>, change: impl Into<String>) -> Finding {
        Finding { status: Status::Warn, found: found.into(), change: change.into() }
    }
    fn fail(found: impl Into<String>, change: impl Into<String>) -> Finding {
        Finding { status: Status::Fail, found: found.into(), change: change.into() }
    }
}

/// What `neo doctor` was asked.
#[derive(Debug, Clone)]
pub struct Options {
    /// The storage's data directory (its disk is measured there); None: not measured.
    pub data: Option<PathBuf>,
    /// Storage cores this host will run, all storage processes together.
    pub cores: usize,
    /// Write + fdatasync rounds of the disk check.
    pub fsync_samples: usize,
}

/// A resource limit as getrlimit gives it (None: unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

/// The CPUs as the kernel shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cpus {
    /// CPUs online (/sys/devices/system/cpu/online).
    pub online: usize,
    /// CPUs this process may run on (its affinity mask; a cgroup or taskset narrows it).
    pub allowed: usize,
    /// Physical cores (distinct sibling sets in the topology), when exposed.
    pub physical: Option<usize>,
}

/// The data directory's filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filesystem {
    /// statfs's f_type.
    pub magic: i64,
    pub total_bytes: u64,
    pub free_bytes: u64,
    /// Segment files already there (`segment-*.log`, in DATA and DATA/core-N).
    pub segments: u64,
}

/// Everything the checks decide on, as read from the host.
#[derive(Debug, Clone)]
pub struct Facts {
    /// /proc/sys/kernel/osrelease.
    pub kernel_release: String,
    /// /proc/sys/kernel/io_uring_disabled, when the kernel has it (6.6 and later).
    pub io_uring_disabled: Option<u32>,
    /// io_uring_setup(2) of a one-entry ring: Ok, or the errno.
    pub ring: Result<(), i32>,
    /// A glommio executor started as a storage core's (None: not tried, no ring): Ok with
    /// the bytes it pinned (VmPin), or glommio's error.
    pub executor: Option<Result<u64, String>>,
    pub memlock: Limit,
    /// The process has CAP_IPC_LOCK (root has): no memlock limit applies to it.
    pub cap_ipc_lock: bool,
    pub nofile: Limit,
    /// scaling_governor of each CPU that exposes one.
    pub governors: Vec<String>,
    /// /sys/kernel/mm/transparent_hugepage/{enabled,defrag}, when present.
    pub thp_enabled: Option<String>,
    pub thp_defrag: Option<String>,
    pub cpus: Cpus,
    /// The data directory (None: no --data).
    pub data: Option<PathBuf>,
    pub filesystem: Option<Result<Filesystem, String>>,
    /// Each write + fdatasync round, in microseconds.
    pub fdatasync_us: Option<Result<Vec<u64>, String>>,
}

/// One check's name and finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub finding: Finding,
}

/// Every check, in `CHECK_NAMES` order.
#[derive(Debug, Clone)]
pub struct Report {
    pub checks: Vec<Check>,
    pub cores: usize,
    pub data: Option<PathBuf>,
}

impl Report {
    /// Something FAILed: `neo doctor` exits 1.
    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.finding.status == Status::Fail)
    }

    fn count(&self, status: Status) -> usize {
        self.checks.iter().filter(|c| c.finding.status == status).count()
    }

    /// One line per check (`STATUS  name  found`), and under it `change: ...` when there
    /// is something to change.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let data =
            self.data.as_ref().map_or("none (--data DIR to measure its disk)".to_owned(), |d| {
                d.display().to_string()
            });
        let _ = writeln!(
            out,
            "neo doctor: {} checks, {} FAIL, {} WARN; storage cores planned: {}; data: {data}",
            self.checks.len(),
            self.count(Status::Fail),
            self.count(Status::Warn),
            self.cores,
        );
        for check in &self.checks {
            let _ = writeln!(
                out,
                "{:<4}  {:<10}  {}",
                check.finding.status.label(),
                check.name,
                check.finding.found
            );
            if !check.finding.change.is_empty() {
                let _ = writeln!(out, "{:<4}  {:<10}  change: {}", "", "", check.finding.change);
            }
        }
        out
    }

    /// `{"failed": bool, "cores": N, "data": PATH|null, "checks": [{"check", "status",
    /// "found", "change"}, ...]}`.
    pub fn json(&self) -> String {
        let mut out = String::from("{");
        let _ = write!(out, "\"failed\":{},\"cores\":{},\"data\":", self.failed(), self.cores);
        match &self.data {
            Some(path) => json_string(&mut out, &path.display().to_string()),
            None => out.push_str("null"),
        }
        out.push_str(",\"checks\":[");
        for (i, check) in self.checks.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str("{\"check\":");
            json_string(&mut out, check.name);
            out.push_str(",\"status\":");
            json_string(&mut out, check.finding.status.label());
            out.push_str(",\"found\":");
            json_string(&mut out, &check.finding.found);
            out.push_str(",\"change\":");
            json_string(&mut out, &check.finding.change);
            out.push('}');
        }
        out.push_str("]}\n");
        out
    }
}

/// Appends `text` as a JSON string.
fn json_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Every check's decision on `facts`.
pub fn decide(facts: &Facts, cores: usize) -> Report {
    let checks = vec![
        Check {
            name: "io_uring",
            finding: io_uring_finding(
                &facts.kernel_release,
                facts.io_uring_disabled,
                facts.ring,
                facts.executor.as_ref(),
            ),
        },
        Check {
            name: "memlock",
            finding: memlock_finding(
                facts.memlock,
                facts.cap_ipc_lock,
                cores,
                facts.executor.as_ref().and_then(|e| e.as_ref().ok().copied()),
            ),
        },
        Check { name: "fdatasync", finding: fdatasync_finding(facts.fdatasync_us.as_ref()) },
        Check {
            name: "filesystem",
            finding: filesystem_finding(facts.data.as_deref(), facts.filesystem.as_ref()),
        },
        Check { name: "governor", finding: governor_finding(&facts.governors) },
        Check {
            name: "hugepages",
            finding: hugepages_finding(facts.thp_enabled.as_deref(), facts.thp_defrag.as_deref()),
        },
        Check {
            name: "nofile",
            finding: nofile_finding(
                facts.nofile,
                cores,
                facts.filesystem.as_ref().and_then(|f| f.as_ref().ok()),
            ),
        },
        Check { name: "cpus", finding: cpus_finding(facts.cpus, cores) },
    ];
    debug_assert!(checks.iter().map(|c| c.name).eq(CHECK_NAMES));
    Report { checks, cores, data: facts.data.clone() }
}

// ---------------------------------------------------------------------------------------
// The decisions.

/// `major.minor` of a kernel release (`6.18.44-fc-v1272` gives (6, 18)).
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The kernel, `kernel.io_uring_disabled`, and whether a ring and a glommio executor could
/// be set up.
pub fn io_uring_finding(
    release: &str,
    disabled: Option<u32>,
    ring: Result<(), i32>,
    executor: Option<&Result<u64, String>>,
) -> Finding {
    let sysctl = disabled.map_or(String::new(), |d| format!(", kernel.io_uring_disabled = {d}"));
    let kernel = format!("Linux {release}{sysctl}");
    match kernel_version(release) {
        Some(version) if version < KERNEL_MIN => {
            return Finding::fail(
                format!("{kernel}: glommio needs {}.{} or later", KERNEL_MIN.0, KERNEL_MIN.1),
                "upgrade the kernel (a distribution's 5.15, 6.1 or later LTS kernel)",
            );
        }
        Some(_) => {}
        None => {
            return Finding::warn(
                format!("{kernel}: cannot read the version from the release"),
                "check `uname -r`: neo needs Linux 5.8 or later with io_uring",
            );
        }
    }
    if let Err(errno) = ring {
        let error = std::io::Error::from_raw_os_error(errno);
        let change = match (errno, disabled) {
            (libc::EPERM, Some(2)) => {
                "io_uring is disabled for everyone: sysctl -w kernel.io_uring_disabled=0 \
                 (and in /etc/sysctl.d/ to keep it)"
            }
            (libc::EPERM, Some(1)) => {
                "only members of kernel.io_uring_group may create rings: put the neo user's \
                 group there (sysctl -w kernel.io_uring_group=GID) or set \
                 kernel.io_uring_disabled=0"
            }
            (libc::EPERM, _) => {
                "a seccomp filter refuses io_uring (container runtimes' default profiles do): \
                 run neo with a profile that allows io_uring_setup, io_uring_enter and \
                 io_uring_register, or outside the container"
            }
            (libc::ENOSYS, _) => "the kernel is built without io_uring (CONFIG_IO_URING=y)",
            (libc::ENOMEM, _) => {
                "raise RLIMIT_MEMLOCK (before 5.12 the ring's memory counts against it): \
                 LimitMEMLOCK=infinity"
            }
            _ => "neo cannot run without io_uring on this host",
        };
        return Finding::fail(format!("{kernel}: io_uring_setup failed: {error}"), change);
    }
    if let Some(Err(error)) = executor {
        return Finding::fail(
            format!("{kernel}: a ring works, but glommio could not start an executor: {error}"),
            "see the memlock check (glommio needs RLIMIT_MEMLOCK >= 512 KiB)",
        );
    }
    let started = match executor {
        Some(Ok(_)) => "an io_uring ring and a glommio executor started",
        _ => "an io_uring ring started",
    };
    if disabled == Some(1) {
        return Finding::warn(
            format!("{kernel}: {started} here, but only for root and kernel.io_uring_group"),
            "make sure the neo user's group is kernel.io_uring_group \
             (sysctl -w kernel.io_uring_group=GID), or set kernel.io_uring_disabled=0",
        );
    }
    Finding::ok(format!("{kernel}: {started}"))
}

fn mib(bytes: u64) -> String {
    if bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else if bytes.is_multiple_of(1 << 10) {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} bytes")
    }
}

fn limit_text(limit: Option<u64>, unit: impl Fn(u64) -> String) -> String {
    limit.map_or("unlimited".to_owned(), unit)
}

/// Locked memory a host's `cores` storage cores pin (three registrations of each core's
/// io_memory).
pub fn memlock_needed_bytes(cores: usize) -> u64 {
    (cores * RING_REGISTRATIONS * STORAGE_IO_MEMORY_BYTES) as u64
}

/// RLIMIT_MEMLOCK against what glommio needs: 512 KiB to start at all; each storage core's
/// io_memory registered with its three rings to use registered buffers. `pinned` is what
/// this process's probe executor (a storage core's io_memory) pinned.
pub fn memlock_finding(
    limit: Limit,
    cap_ipc_lock: bool,
    cores: usize,
    pinned: Option<u64>,
) -> Finding {
    let needed = memlock_needed_bytes(cores);
    let per_core = (RING_REGISTRATIONS * STORAGE_IO_MEMORY_BYTES) as u64;
    let probe = pinned.map_or(String::new(), |p| {
        format!("; a probe executor with a storage core's io_memory pinned {}", mib(p))
    });
    let soft = limit_text(limit.soft, mib);
    let needs = format!(
        "each storage core pins {} ({} of io_memory registered with {RING_REGISTRATIONS} \
         rings), a master {}, an admin {}",
        mib(per_core),
        mib(STORAGE_IO_MEMORY_BYTES as u64),
        mib((RING_REGISTRATIONS * MASTER_IO_MEMORY_BYTES) as u64),
        mib((RING_REGISTRATIONS * ADMIN_IO_MEMORY_BYTES) as u64),
    );
    let change = "LimitMEMLOCK=infinity in the unit (deploy/*.service); by hand: `ulimit -l \
                  unlimited` as root, or a memlock line in /etc/security/limits.conf";
    if cap_ipc_lock {
        return Finding::ok(format!(
            "soft limit {soft}, but this process has CAP_IPC_LOCK (root): no limit applies to \
             it; {needs}{probe} (run doctor as the service's user to check its limit)"
        ));
    }
    match limit.soft {
        Some(soft_bytes) if soft_bytes < GLOMMIO_MEMLOCK_MIN_BYTES => Finding::fail(
            format!(
                "soft limit {soft}: glommio refuses to start an executor below {} (the node \
                 exits: MemLockLimit)",
                mib(GLOMMIO_MEMLOCK_MIN_BYTES)
            ),
            change,
        ),
        Some(soft_bytes) if soft_bytes < needed => Finding::warn(
            format!(
                "soft limit {soft} < {} for {cores} storage core(s): {needs}, counted per user \
                 across all its processes; past the limit glommio runs without registered \
                 buffers (no error; neo's buffered file I/O does not use them, so the cost is \
                 expected nil but unmeasured){probe}",
                mib(needed)
            ),
            change,
        ),
        _ => Finding::ok(format!("soft limit {soft} >= {} : {needs}{probe}", mib(needed))),
    }
}

/// The `percent`th percentile of `sorted` (nearest rank).
pub fn percentile(sorted: &[u64], percent: u32) -> u64 {
    assert!(!sorted.is_empty() && percent <= 100);
    let rank = (sorted.len() * percent as usize).div_ceil(100).max(1);
    sorted[rank - 1]
}

/// The data directory's write + fdatasync latencies (microseconds) against the thresholds.
pub fn fdatasync_finding(samples_us: Option<&Result<Vec<u64>, String>>) -> Finding {
    let samples = match samples_us {
        None => {
            return Finding::warn(
                "not measured: no data directory given",
                "run `neo doctor --data DIR` with each storage's --data directory",
            );
        }
        Some(Err(error)) => {
            return Finding::fail(
                format!("cannot write and fdatasync in the data directory: {error}"),
                "create it for the neo user: install -d -o neo -g neo DIR",
            );
        }
        Some(Ok(samples)) if samples.is_empty() => {
            return Finding::warn("not measured: 0 samples asked", "--fsync-samples 200");
        }
        Some(Ok(samples)) => samples,
    };
    let mut sorted = samples.clone();
    sorted.sort_unstable();
    let (p50, p99) = (percentile(&sorted, 50), percentile(&sorted, 99));
    let found = format!(
        "4 KiB write + fdatasync x{}: p50 {p50} us, p99 {p99} us, max {} us (a commit waits \
         for two in sequence)",
        sorted.len(),
        sorted[sorted.len() - 1]
    );
    let change = "put the data directory on a disk that syncs faster (an SSD with power-loss \
                  protection syncs in tens of microseconds); docs/deploy.md, Filesystem and disk";
    if p50 > FDATASYNC_P50_WARN_US {
        Finding::warn(
            format!("{found}; p50 above {FDATASYNC_P50_WARN_US} us: the disk bounds every commit"),
            change,
        )
    } else if p99 > FDATASYNC_P99_WARN_US {
        Finding::warn(
            format!(
                "{found}; p99 above {FDATASYNC_P99_WARN_US} us: a slow sync stalls every \
                 committer of its batch"
            ),
            change,
        )
    } else {
        Finding::ok(format!("{found}; under {FDATASYNC_P50_WARN_US} us p50"))
    }
}

/// The name of a filesystem from statfs's f_type, for those that matter here.
pub fn filesystem_name(magic: i64) -> Option<&'static str> {
    Some(match magic {
        0xEF53 => "ext4",
        0x5846_5342 => "xfs",
        0x9123_683E => "btrfs",
        0x2FC1_2FC1 => "zfs",
        0xF2F5_2010 => "f2fs",
        0x0102_1994 => "tmpfs",
        0x8584_58F6 => "ramfs",
        0x794C_7630 => "overlayfs",
        0x6969 => "nfs",
        0x6573_5546 => "fuse",
        0xFF53_4D42 => "cifs",
        _ => return None,
    })
}

/// The data directory's filesystem: its kind and free space.
pub fn filesystem_finding(
    data: Option<&Path>,
    filesystem: Option<&Result<Filesystem, String>>,
) -> Finding {
    let (data, filesystem) = match (data, filesystem) {
        (Some(data), Some(Ok(filesystem))) => (data, filesystem),
        (_, Some(Err(error))) => {
            return Finding::fail(
                format!("cannot read the data directory's filesystem: {error}"),
                "create it for the neo user: install -d -o neo -g neo DIR",
            );
        }
        _ => {
            return Finding::warn(
                "not checked: no data directory given",
                "run `neo doctor --data DIR` with each storage's --data directory",
            );
        }
    };
    let name = filesystem_name(filesystem.magic)
        .map_or_else(|| format!("filesystem 0x{:x}", filesystem.magic), str::to_owned);
    let space = format!(
        "{} on {name}, {} GiB free of {} GiB, {} segment file(s) there",
        data.display(),
        filesystem.free_bytes >> 30,
        filesystem.total_bytes >> 30,
        filesystem.segments
    );
    let elsewhere = "give --data a directory on a local ext4 or xfs filesystem";
    match name.as_str() {
        "tmpfs" | "ramfs" => {
            return Finding::fail(
                format!("{space}: memory, lost at every reboot (fdatasync does nothing)"),
                elsewhere,
            );
        }
        "nfs" | "fuse" | "cifs" | "overlayfs" => {
            return Finding::warn(
                format!(
                    "{space}: not a local disk filesystem (flock, fallocate and fdatasync \
                     may not mean what the log's crash analysis assumes)"
                ),
                format!("{elsewhere} (a container: mount a host volume there)"),
            );
        }
        _ => {}
    }
    if filesystem.free_bytes < FREE_BYTES_FAIL {
        return Finding::fail(
            format!(
                "{space}: a storage preallocates {} per segment and cannot roll over",
                mib(SEGMENT_BYTES)
            ),
            "free space on it, or move the data directory",
        );
    }
    let warn_below = FREE_BYTES_WARN.max(filesystem.total_bytes / 10);
    if filesystem.free_bytes < warn_below {
        return Finding::warn(
            format!(
                "{space}: under {} GiB free, compaction (which copies live records into new \
                 segments before deleting old ones) has little room",
                warn_below >> 30
            ),
            "free space, or grow the filesystem, before it fills",
        );
    }
    match name.as_str() {
        "ext4" | "xfs" => Finding::ok(space),
        _ => Finding::warn(
            format!(
                "{space}: neo-rs is tested on ext4 (copy-on-write filesystems make overwrites of \
                 preallocated segments allocate again)"
            ),
            format!("{elsewhere}, or measure this one with neo-bench (docs/benchmarks.md)"),
        ),
    }
}

/// The CPUs' frequency governors.
pub fn governor_finding(governors: &[String]) -> Finding {
    if governors.is_empty() {
        return Finding::ok("not exposed (no cpufreq driver: a VM, or the firmware decides)");
    }
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for governor in governors {
        match counts.iter_mut().find(|(g, _)| *g == governor.as_str()) {
            Some((_, n)) => *n += 1,
            None => counts.push((governor.as_str(), 1)),
        }
    }
    let listed: Vec<String> = counts.iter().map(|(g, n)| format!("{n} CPU(s) {g}")).collect();
    let listed = listed.join(", ");
    if counts.iter().all(|(g, _)| *g == "performance") {
        return Finding::ok(listed);
    }
    Finding::warn(
        format!(
            "{listed}: a CPU that slows down when idle answers the next request at a low \
             clock (a storage core idles between requests)"
        ),
        "cpupower frequency-set -g performance (or echo performance | tee \
         /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor); it costs power",
    )
}

/// The value in brackets of a /sys/kernel/mm/transparent_hugepage file
/// (`always [madvise] never` gives `madvise`).
pub fn bracketed(line: &str) -> Option<&str> {
    let start = line.find('[')?;
    let end = start + line[start..].find(']')?;
    Some(&line[start + 1..end])
}

/// Transparent huge pages. neo asks for none (no madvise) and most of its memory is the
/// page cache of its mapped segments and index files, which this setting does not cover;
/// what `always` changes is the heap. No effect of it on neo has been measured.
pub fn hugepages_finding(enabled: Option<&str>, defrag: Option<&str>) -> Finding {
    let Some(enabled_line) = enabled else {
        return Finding::ok("not exposed (kernel without transparent huge pages)");
    };
    let enabled = bracketed(enabled_line).unwrap_or(enabled_line.trim());
    let defrag = defrag.map(|d| bracketed(d).unwrap_or(d.trim()));
    let found = format!(
        "enabled [{enabled}], defrag [{}]; neo asks for no huge pages and its large memory \
         is mapped files, which this setting does not cover",
        defrag.unwrap_or("?")
    );
    match (enabled, defrag) {
        ("always", Some("always")) => Finding::warn(
            format!(
                "{found}: with both `always` a page fault of neo's heap may wait for the \
                 kernel to compact memory (latency spikes; unmeasured here)"
            ),
            "echo madvise > /sys/kernel/mm/transparent_hugepage/enabled (the kernel's \
             default; or transparent_hugepage=madvise on the kernel command line)",
        ),
        ("always", _) => Finding::ok(format!(
            "{found}: `always` gives neo's heap huge pages without stalling faults (defrag \
             is not `always`); madvise is what neo is measured with"
        )),
        _ => Finding::ok(format!("{found}: recommended as is (madvise, the default, or never)")),
    }
}

/// The descriptors `cores` storage cores need: (to start with the segments already there,
/// with a full disk of segments and the connection allowance).
pub fn nofile_needed(cores: usize, filesystem: Option<&Filesystem>) -> (u64, u64) {
    let fixed = cores as u64 * FDS_PER_CORE;
    let (present, capacity) =
        filesystem.map_or((0, 0), |f| (f.segments, f.total_bytes / SEGMENT_BYTES));
    let start = fixed + FDS_PER_SEGMENT * present;
    let full =
        fixed + FDS_PER_SEGMENT * capacity.max(present) + cores as u64 * CONNECTIONS_PER_CORE;
    (start, full)
}

/// RLIMIT_NOFILE against what a storage needs: its segments (two descriptors each) and its
/// connections.
pub fn nofile_finding(limit: Limit, cores: usize, filesystem: Option<&Filesystem>) -> Finding {
    let (start, full) = nofile_needed(cores, filesystem);
    let recommended = NOFILE_RECOMMENDED.max(full.next_power_of_two());
    let soft = limit_text(limit.soft, |n| n.to_string());
    let hard = limit_text(limit.hard, |n| n.to_string());
    let basis = match filesystem {
        Some(f) => format!(
            "{cores} storage core(s) with {} segment file(s) now, up to {} when the data \
             filesystem is full ({FDS_PER_SEGMENT} descriptors each), {CONNECTIONS_PER_CORE} \
             connections per core",
            f.segments,
            f.total_bytes / SEGMENT_BYTES
        ),
        None => format!(
            "{cores} storage core(s), {CONNECTIONS_PER_CORE} connections per core, segments \
             not counted (no --data)"
        ),
    };
    let change = format!(
        "LimitNOFILE={recommended} in the unit (deploy/*.service); by hand: ulimit -n \
         {recommended} (the hard limit must allow it)"
    );
    match limit.soft {
        Some(soft_n) if soft_n < start => Finding::fail(
            format!("soft limit {soft} (hard {hard}) < {start} to open the log: {basis}"),
            change,
        ),
        Some(soft_n) if soft_n < full => {
            Finding::warn(format!("soft limit {soft} (hard {hard}) < {full}: {basis}"), change)
        }
        _ => Finding::ok(format!("soft limit {soft} (hard {hard}) >= {full}: {basis}")),
    }
}

/// CPUs against the storage cores planned: thread-per-core wants a CPU per storage core and
/// one more for the master, the kernel's network stack and io_uring's fdatasync workers.
pub fn cpus_finding(cpus: Cpus, cores: usize) -> Finding {
    let physical = cpus.physical.map_or(String::new(), |p| format!(", {p} physical core(s)"));
    let found = format!(
        "{} CPU(s) online, {} allowed to this process{physical}; {cores} storage core(s) planned",
        cpus.online, cpus.allowed
    );
    let smt = match cpus.physical {
        Some(p) if p < cpus.online => {
            "; hyperthreads: pin storage cores to one thread of distinct physical cores \
             (`lscpu -e`, --cpus)"
        }
        _ => "",
    };
    if cpus.allowed < cores {
        return Finding::warn(
            format!("{found}: storage cores would share CPUs{smt}"),
            format!(
                "run at most {} storage core(s) here (--cores), or give the process more CPUs",
                cpus.allowed.saturating_sub(1).max(1)
            ),
        );
    }
    if cpus.allowed == cores && cpus.allowed > 1 {
        return Finding::warn(
            format!(
                "{found}: no CPU left for the master, the network stack and io_uring's \
                 workers{smt}"
            ),
            format!("run {} storage core(s) here, leaving one CPU", cores - 1),
        );
    }
    Finding::ok(format!("{found}: a CPU each and {} left{smt}", cpus.allowed - cores))
}

// ---------------------------------------------------------------------------------------
// Reading the host.

fn read_trimmed(path: impl AsRef<Path>) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_owned())
}

fn rlimit(resource: libc::__rlimit_resource_t) -> Limit {
    let mut value = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct it is given.
    let done = unsafe { libc::getrlimit(resource, &mut value) };
    if done != 0 {
        return Limit { soft: None, hard: None };
    }
    let finite = |v: libc::rlim_t| (v != libc::RLIM_INFINITY).then_some(v);
    Limit { soft: finite(value.rlim_cur), hard: finite(value.rlim_max) }
}

/// A field of /proc/self/status (`VmPin:    12288 kB` gives Some("12288 kB")).
fn status_field(name: &str) -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key == name).then(|| value.trim().to_owned())
    })
}

/// CAP_IPC_LOCK (bit 14) in the effective set.
fn has_cap_ipc_lock() -> bool {
    status_field("CapEff")
        .and_then(|hex| u64::from_str_radix(&hex, 16).ok())
        .is_some_and(|caps| caps & (1 << 14) != 0)
}

/// io_uring_setup(2) of a one-entry ring, closed at once.
fn try_ring() -> Result<(), i32> {
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup with a zeroed, writable 120-byte parameter block (struct
    // io_uring_params); the descriptor it returns is closed below.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, params.as_mut_ptr()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO));
    }
    // SAFETY: closing the descriptor io_uring_setup returned.
    unsafe { libc::close(fd as i32) };
    Ok(())
}

/// Starts a glommio executor as a storage core does (its io_memory) and reads what the
/// process pinned meanwhile (VmPin).
fn try_executor() -> Result<u64, String> {
    let thread = std::thread::Builder::new()
        .name("doctor-executor".to_owned())
        .spawn(|| -> Result<u64, String> {
            let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
                .io_memory(STORAGE_IO_MEMORY_BYTES)
                .make()
                .map_err(|e| e.to_string())?;
            let pinned = status_field("VmPin")
                .and_then(|v| v.trim_end_matches(" kB").trim().parse::<u64>().ok())
                .map_or(0, |kib| kib << 10);
            drop(executor);
            Ok(pinned)
        })
        .map_err(|e| e.to_string())?;
    thread.join().unwrap_or_else(|_| Err("the executor's thread panicked".to_owned()))
}

/// Counts CPUs in a list like `0-3,8,10-11`.
pub fn cpu_list_count(list: &str) -> usize {
    list.trim()
        .split(',')
        .filter(|part| !part.is_empty())
        .map(|part| match part.split_once('-') {
            Some((a, b)) => match (a.parse::<usize>(), b.parse::<usize>()) {
                (Ok(a), Ok(b)) if b >= a => b - a + 1,
                _ => 0,
            },
            None => usize::from(part.parse::<usize>().is_ok()),
        })
        .sum()
}

fn cpu_directories() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/sys/devices/system/cpu") else { return Vec::new() };
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.strip_prefix("cpu")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

fn read_cpus() -> Cpus {
    let directories = cpu_directories();
    let online = read_trimmed("/sys/devices/system/cpu/online")
        .map(|l| cpu_list_count(&l))
        .filter(|&n| n > 0)
        .unwrap_or(directories.len().max(1));
    // SAFETY: sched_getaffinity fills the zeroed cpu_set_t it is given.
    let allowed = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            libc::CPU_COUNT(&set) as usize
        } else {
            online
        }
    };
    let mut siblings: Vec<String> = directories
        .iter()
        .filter_map(|d| read_trimmed(d.join("topology/thread_siblings_list")))
        .collect();
    siblings.sort();
    siblings.dedup();
    let physical = (!siblings.is_empty()).then_some(siblings.len());
    Cpus { online, allowed, physical }
}

fn read_filesystem(data: &Path) -> Result<Filesystem, String> {
    use std::os::unix::ffi::OsStrExt;
    let metadata = std::fs::metadata(data).map_err(|e| format!("{}: {e}", data.display()))?;
    if !metadata.is_dir() {
        return Err(format!("{} is not a directory", data.display()));
    }
    let path = std::ffi::CString::new(data.as_os_str().as_bytes())
        .map_err(|_| format!("{}: a NUL in the path", data.display()))?;
    // SAFETY: statfs on a NUL-terminated path, writing into the zeroed struct it is given.
    let stat = unsafe {
        let mut stat: libc::statfs = std::mem::zeroed();
        if libc::statfs(path.as_ptr(), &mut stat) != 0 {
            return Err(format!("statfs {}: {}", data.display(), std::io::Error::last_os_error()));
        }
        stat
    };
    let block = stat.f_bsize as u64;
    Ok(Filesystem {
        magic: stat.f_type as i64,
        total_bytes: stat.f_blocks as u64 * block,
        free_bytes: stat.f_bavail as u64 * block,
        segments: count_segments(data),
    })
}

/// `segment-*.log` files in `data` and its `core-N` directories.
fn count_segments(data: &Path) -> u64 {
    let in_directory = |directory: &Path| -> u64 {
        std::fs::read_dir(directory).map_or(0, |entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| {
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    name.starts_with("segment-") && name.ends_with(".log")
                })
                .count() as u64
        })
    };
    let cores: u64 = std::fs::read_dir(data).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("core-"))
            .map(|e| in_directory(&e.path()))
            .sum()
    });
    in_directory(data) + cores
}

/// Removes the probe file however the measurement ends.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// 4 KiB write + fdatasync at increasing offsets of a preallocated file in `data`, as the
/// log appends to a preallocated segment: each round's microseconds.
fn measure_fdatasync(data: &Path, samples: usize) -> Result<Vec<u64>, String> {
    use std::os::unix::fs::FileExt;
    use std::os::unix::io::AsRawFd;
    const BLOCK: usize = 4096;
    let path = data.join(format!(".neo-doctor-{}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let _remove = RemoveOnDrop(path.clone());
    let size = (samples.max(1) * BLOCK) as i64;
    // SAFETY: fallocate on the descriptor this function owns, mode 0 (allocate and extend).
    if unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, size) } != 0 {
        return Err(format!("fallocate {}: {}", path.display(), std::io::Error::last_os_error()));
    }
    file.sync_all().map_err(|e| format!("fsync {}: {e}", path.display()))?;
    let block = [0x5Au8; BLOCK];
    let mut latencies = Vec::with_capacity(samples);
    for round in 0..samples {
        let began = Instant::now();
        file.write_all_at(&block, (round * BLOCK) as u64)
            .map_err(|e| format!("write {}: {e}", path.display()))?;
        file.sync_data().map_err(|e| format!("fdatasync {}: {e}", path.display()))?;
        latencies.push(began.elapsed().as_micros() as u64);
    }
    Ok(latencies)
}

/// Reads everything the checks decide on. Writes only the fdatasync probe file in the data
/// directory (removed at once); starts one glommio executor for a moment.
pub fn read_facts(options: &Options) -> Facts {
    let ring = try_ring();
    let executor = ring.is_ok().then(try_executor);
    let governors = cpu_directories()
        .iter()
        .filter_map(|d| read_trimmed(d.join("cpufreq/scaling_governor")))
        .collect();
    let filesystem = options.data.as_deref().map(read_filesystem);
    let fdatasync_us = match (&options.data, &filesystem) {
        (Some(data), Some(Ok(_))) => Some(measure_fdatasync(data, options.fsync_samples)),
        (_, Some(Err(error))) => Some(Err(error.clone())),
        _ => None,
    };
    Facts {
        kernel_release: read_trimmed("/proc/sys/kernel/osrelease")
            .unwrap_or_else(|| "unknown".to_owned()),
        io_uring_disabled: read_trimmed("/proc/sys/kernel/io_uring_disabled")
            .and_then(|v| v.parse().ok()),
        ring,
        executor,
        memlock: rlimit(libc::RLIMIT_MEMLOCK),
        cap_ipc_lock: has_cap_ipc_lock(),
        nofile: rlimit(libc::RLIMIT_NOFILE),
        governors,
        thp_enabled: read_trimmed("/sys/kernel/mm/transparent_hugepage/enabled"),
        thp_defrag: read_trimmed("/sys/kernel/mm/transparent_hugepage/defrag"),
        cpus: read_cpus(),
        data: options.data.clone(),
        filesystem,
        fdatasync_us,
    }
}

/// Reads the host and decides: what `neo doctor` prints.
pub fn run(options: &Options) -> Report {
    decide(&read_facts(options), options.cores)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(soft: Option<u64>) -> Limit {
        Limit { soft, hard: soft }
    }

    #[test]
    fn kernel_versions_are_read_from_releases() {
        assert_eq!(kernel_version("6.18.44-fc-v1272"), Some((6, 18)));
        assert_eq!(kernel_version("5.4.0-150-generic"), Some((5, 4)));
        assert_eq!(kernel_version("6.1"), Some((6, 1)));
        assert_eq!(kernel_version("weird"), None);
    }

    #[test]
    fn io_uring_fails_on_old_kernels_and_refused_rings_and_says_why() {
        let ok = Ok(12 << 20);
        let f = io_uring_finding("6.1.0", Some(0), Ok(()), Some(&ok));
        assert_eq!(f.status, Status::Ok, "{f:?}");
        assert!(f.found.contains("glommio executor started"));

        let f = io_uring_finding("5.4.0-150-generic", None, Ok(()), Some(&ok));
        assert_eq!(f.status, Status::Fail);
        assert!(f.found.contains("5.8"));

        let f = io_uring_finding("6.6.0", Some(2), Err(libc::EPERM), None);
        assert_eq!(f.status, Status::Fail);
        assert!(f.change.contains("io_uring_disabled=0"), "{f:?}");

        let f = io_uring_finding("6.6.0", Some(1), Err(libc::EPERM), None);
        assert!(f.change.contains("io_uring_group"), "{f:?}");

        let f = io_uring_finding("6.1.0", None, Err(libc::EPERM), None);
        assert!(f.change.contains("seccomp"), "{f:?}");

        let f = io_uring_finding("6.1.0", None, Err(libc::ENOSYS), None);
        assert!(f.change.contains("CONFIG_IO_URING"), "{f:?}");

        let failed = Err("MemLockLimit(262144/524288)".to_owned());
        let f = io_uring_finding("6.1.0", None, Ok(()), Some(&failed));
        assert_eq!(f.status, Status::Fail);
        assert!(f.found.contains("MemLockLimit"));

        // Root may make rings when only the group may: the service's user may not.
        let f = io_uring_finding("6.6.0", Some(1), Ok(()), Some(&ok));
        assert_eq!(f.status, Status::Warn);
    }

    #[test]
    fn memlock_fails_below_glommio_minimum_and_warns_below_the_registrations() {
        let f = memlock_finding(limit(Some(256 << 10)), false, 1, None);
        assert_eq!(f.status, Status::Fail);
        assert!(f.change.contains("LimitMEMLOCK"));

        // The default 8 MiB of systemd and most distributions: one core pins 12 MiB.
        let f = memlock_finding(limit(Some(8 << 20)), false, 1, None);
        assert_eq!(f.status, Status::Warn, "{f:?}");
        assert!(f.found.contains("12 MiB"), "{f:?}");

        assert_eq!(memlock_finding(limit(Some(12 << 20)), false, 1, None).status, Status::Ok);
        assert_eq!(memlock_finding(limit(Some(12 << 20)), false, 2, None).status, Status::Warn);
        assert_eq!(memlock_finding(limit(None), false, 64, None).status, Status::Ok);
        // Root: no limit applies.
        assert_eq!(memlock_finding(limit(Some(64 << 10)), true, 4, None).status, Status::Ok);
        assert_eq!(memlock_needed_bytes(2), 24 << 20);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let sorted: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&sorted, 50), 50);
        assert_eq!(percentile(&sorted, 99), 99);
        assert_eq!(percentile(&sorted, 100), 100);
        assert_eq!(percentile(&[7], 50), 7);
        assert_eq!(percentile(&[1, 2, 3], 99), 3);
    }

    #[test]
    fn fdatasync_warns_above_its_thresholds() {
        let fast: Result<Vec<u64>, String> = Ok(vec![500; 100]);
        let f = fdatasync_finding(Some(&fast));
        assert_eq!(f.status, Status::Ok, "{f:?}");
        assert!(f.found.contains("p50 500 us"));

        let slow: Result<Vec<u64>, String> = Ok(vec![2_500; 100]);
        assert_eq!(fdatasync_finding(Some(&slow)).status, Status::Warn);

        let mut spiky = vec![300; 97];
        spiky.extend([50_000, 50_000, 50_000]);
        let f = fdatasync_finding(Some(&Ok(spiky)));
        assert_eq!(f.status, Status::Warn, "{f:?}");
        assert!(f.found.contains("p99 50000 us"));

        assert_eq!(fdatasync_finding(None).status, Status::Warn);
        let failed: Result<Vec<u64>, String> = Err("permission denied".into());
        assert_eq!(fdatasync_finding(Some(&failed)).status, Status::Fail);
        assert_eq!(fdatasync_finding(Some(&Ok(Vec::new()))).status, Status::Warn);
    }

    fn filesystem(magic: i64, free_gib: u64, total_gib: u64) -> Filesystem {
        Filesystem { magic, total_bytes: total_gib << 30, free_bytes: free_gib << 30, segments: 3 }
    }

    #[test]
    fn filesystems_in_memory_fail_and_a_full_one_warns_or_fails() {
        let data = Some(Path::new("/srv/neo"));
        let check = |fs: Filesystem| filesystem_finding(data, Some(&Ok(fs)));
        assert_eq!(check(filesystem(0xEF53, 100, 200)).status, Status::Ok);
        assert_eq!(check(filesystem(0x5846_5342, 100, 200)).status, Status::Ok);
        assert_eq!(check(filesystem(0x0102_1994, 100, 200)).status, Status::Fail);
        assert_eq!(check(filesystem(0x794C_7630, 100, 200)).status, Status::Warn);
        assert_eq!(check(filesystem(0x9123_683E, 100, 200)).status, Status::Warn);
        // Under 10% free of a big one; under 2 GiB of a small one; under two segments.
        assert_eq!(check(filesystem(0xEF53, 90, 1000)).status, Status::Warn);
        assert_eq!(check(filesystem(0xEF53, 1, 8)).status, Status::Warn);
        let mut nearly_full = filesystem(0xEF53, 0, 200);
        nearly_full.free_bytes = 300 << 20;
        assert_eq!(check(nearly_full).status, Status::Fail);

        assert_eq!(filesystem_finding(None, None).status, Status::Warn);
        let failed: Result<Filesystem, String> = Err("/srv/neo: No such file".into());
        assert_eq!(filesystem_finding(data, Some(&failed)).status, Status::Fail);
        assert_eq!(filesystem_name(0xEF53), Some("ext4"));
        assert_eq!(filesystem_name(1), None);
    }

    #[test]
    fn governors_other_than_performance_warn() {
        let governors = |list: &[&str]| list.iter().map(|g| (*g).to_owned()).collect::<Vec<_>>();
        assert_eq!(governor_finding(&[]).status, Status::Ok);
        assert!(governor_finding(&[]).found.contains("not exposed"));
        assert_eq!(governor_finding(&governors(&["performance"; 4])).status, Status::Ok);
        let f = governor_finding(&governors(&["performance", "powersave", "powersave"]));
        assert_eq!(f.status, Status::Warn);
        assert!(f.found.contains("2 CPU(s) powersave"), "{f:?}");
        assert!(f.change.contains("performance"));
    }

    #[test]
    fn huge_pages_warn_only_when_faults_may_stall_on_compaction() {
        assert_eq!(bracketed("always [madvise] never"), Some("madvise"));
        assert_eq!(bracketed("never"), None);
        let f = |e: &str, d: &str| hugepages_finding(Some(e), Some(d)).status;
        assert_eq!(
            f("always [madvise] never", "always defer defer+madvise [madvise] never"),
            Status::Ok
        );
        assert_eq!(f("always madvise [never]", "[always] defer"), Status::Ok);
        assert_eq!(f("[always] madvise never", "[always] defer madvise never"), Status::Warn);
        assert_eq!(f("[always] madvise never", "always defer [madvise] never"), Status::Ok);
        assert_eq!(hugepages_finding(None, None).status, Status::Ok);
    }

    #[test]
    fn open_files_cover_segments_and_connections() {
        // 200 GiB: 800 segments of 256 MiB, 2 descriptors each, + 4096 + 64 + 32.
        let fs = filesystem(0xEF53, 100, 200);
        assert_eq!(CONNECTIONS_PER_CORE, 4096 + 64);
        assert_eq!(nofile_needed(1, Some(&fs)), (32 + 6, 32 + 1600 + 4160));
        assert_eq!(nofile_needed(2, None), (64, 64 + 2 * 4160));

        let f = nofile_finding(limit(Some(1024)), 1, Some(&fs));
        assert_eq!(f.status, Status::Warn, "{f:?}");
        assert!(f.change.contains("LimitNOFILE=65536"), "{f:?}");
        assert_eq!(nofile_finding(limit(Some(65536)), 1, Some(&fs)).status, Status::Ok);
        assert_eq!(nofile_finding(limit(None), 8, Some(&fs)).status, Status::Ok);

        // A log bigger than the limit cannot even be opened.
        let mut big = filesystem(0xEF53, 100, 2000);
        big.segments = 600;
        assert_eq!(nofile_finding(limit(Some(1024)), 1, Some(&big)).status, Status::Fail);
        // A huge disk asks for more than the usual recommendation.
        let huge = filesystem(0xEF53, 10_000, 64_000);
        assert!(
            nofile_finding(limit(Some(65536)), 1, Some(&huge))
                .change
                .contains("LimitNOFILE=524288")
        );
    }

    #[test]
    fn cpus_leave_one_for_the_master_and_the_kernel() {
        let cpus = |online, allowed, physical| Cpus { online, allowed, physical };
        assert_eq!(cpus_finding(cpus(2, 2, Some(2)), 1).status, Status::Ok);
        assert_eq!(cpus_finding(cpus(1, 1, None), 1).status, Status::Ok);
        let f = cpus_finding(cpus(4, 4, Some(4)), 4);
        assert_eq!(f.status, Status::Warn);
        assert!(f.change.contains("3 storage core"), "{f:?}");
        assert_eq!(cpus_finding(cpus(8, 2, Some(8)), 4).status, Status::Warn);
        let f = cpus_finding(cpus(16, 16, Some(8)), 4);
        assert_eq!(f.status, Status::Ok);
        assert!(f.found.contains("hyperthreads"));
        assert_eq!(cpu_list_count("0-3,8,10-11"), 7);
        assert_eq!(cpu_list_count("0"), 1);
        assert_eq!(cpu_list_count(""), 0);
    }

    fn facts() -> Facts {
        Facts {
            kernel_release: "6.1.0".into(),
            io_uring_disabled: Some(0),
            ring: Ok(()),
            executor: Some(Ok(12 << 20)),
            memlock: limit(None),
            cap_ipc_lock: false,
            nofile: limit(Some(65536)),
            governors: vec!["performance".into()],
            thp_enabled: Some("always [madvise] never".into()),
            thp_defrag: Some("always defer defer+madvise [madvise] never".into()),
            cpus: Cpus { online: 4, allowed: 4, physical: Some(4) },
            data: Some(PathBuf::from("/srv/neo \"a\"")),
            filesystem: Some(Ok(filesystem(0xEF53, 100, 200))),
            fdatasync_us: Some(Ok(vec![400; 50])),
        }
    }

    #[test]
    fn a_report_lists_every_check_and_fails_when_one_fails() {
        let report = decide(&facts(), 1);
        assert!(!report.failed());
        assert!(report.checks.iter().all(|c| c.finding.status == Status::Ok), "{report:?}");
        let text = report.text();
        for name in CHECK_NAMES {
            assert!(text.lines().any(|l| l.starts_with("OK") && l.contains(name)), "{text}");
        }

        let mut broken = facts();
        broken.filesystem = Some(Ok(filesystem(0x0102_1994, 100, 200)));
        let report = decide(&broken, 1);
        assert!(report.failed());
        assert!(report.text().lines().any(|l| l.starts_with("FAIL") && l.contains("filesystem")));
        assert!(report.json().starts_with("{\"failed\":true,"));
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut out = String::new();
        json_string(&mut out, "a \"b\"\\\n\u{1}é");
        assert_eq!(out, "\"a \\\"b\\\"\\\\\\n\\u0001é\"");
        let json = decide(&facts(), 1).json();
        assert!(json.contains("\"data\":\"/srv/neo \\\"a\\\"\""), "{json}");
        assert_eq!(json.matches("\"check\":").count(), CHECK_NAMES.len());
    }
}
