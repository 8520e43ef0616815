//! Clean shutdown on SIGTERM or SIGINT: the signal sets a flag; each executor's tasks watch
//! it (every `POLL_INTERVAL`) and stop in order: storages flush their log and write a
//! checkpoint, so the next start maps the index instead of replaying the log.
//!
//! The watching task must never poll anything else: glommio keeps one waker for every
//! poll of a pending accept (any I/O it awaits through `collect_rw`) and releases them only
//! when that I/O completes, so a listener polled at each look at the flag overflowed its
//! task's 16-bit reference count after 32767 looks (27 minutes with no new connection) and
//! panicked. `run_until_requested` keeps the served future in a task of its own.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// How often a waiting task looks at the flag.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// `POLL_INTERVAL`, or the microseconds in `NEO_SHUTDOWN_POLL_US` (a test hook: a test
/// looks at the flag thousands of times a second to drive, in seconds, what an idle node
/// does in hours).
fn poll_interval() -> Duration {
    static INTERVAL: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *INTERVAL.get_or_init(|| {
        std::env::var("NEO_SHUTDOWN_POLL_US")
            .ok()
            .and_then(|us| us.parse::<u64>().ok())
            .filter(|&us| us > 0)
            .map_or(POLL_INTERVAL, Duration::from_micros)
    })
}

/// Installs the handlers (once per process).
pub fn install() -> std::io::Result<()> {
    let flag = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&flag))?;
    }
    std::thread::Builder::new().name("signals".to_owned()).spawn(move || {
        while !flag.load(Ordering::Relaxed) {
            std::thread::sleep(POLL_INTERVAL);
        }
        REQUESTED.store(true, Ordering::Relaxed);
    })?;
    Ok(())
}

/// Asks every executor of this process to stop, as a signal would (the cluster was set
/// STOPPING).
pub fn request() {
    REQUESTED.store(true, Ordering::Relaxed);
}

/// Forgets a shutdown asked for earlier, once everything it stopped has stopped: for a
/// process that starts nodes again after stopping them (the benchmark harness runs several
/// embedded clusters in turn).
pub fn clear() {
    REQUESTED.store(false, Ordering::Relaxed);
}

/// Whether a shutdown was asked for.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::Relaxed)
}

/// Resolves once a shutdown is asked for. Await it alone in its task (or beside futures
/// that only wait on timers and channels): see the module's note.
pub async fn wait() {
    while !requested() {
        glommio::timer::sleep(poll_interval()).await;
    }
}

/// Runs `serving` (in a task of its own, so that the looks at the flag never poll it)
/// until it ends or a shutdown is asked for, then cancels it. Its output, if it ended.
pub async fn run_until_requested<T: 'static>(
    serving: impl std::future::Future<Output = T> + 'static,
) -> Option<T> {
    let task = glommio::spawn_local(serving);
    let ended = async { Some(task.await) };
    let stopped = async {
        wait().await;
        None
    };
    // The task is polled only when it ends (glommio keeps one awaiter waker, replaced at
    // each poll); `wait` only sleeps.
    futures_lite::future::or(ended, stopped).await
}
