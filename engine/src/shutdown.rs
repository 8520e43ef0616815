//! Clean shutdown on SIGTERM or SIGINT: the signal sets a flag; each executor's tasks watch
//! it (every `POLL_INTERVAL`) and stop in order: storages flush their log and write a
//! checkpoint, so the next start maps the index instead of replaying the log.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// How often a waiting task looks at the flag.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

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

/// Resolves once a shutdown is asked for.
pub async fn wait() {
    while !requested() {
        glommio::timer::sleep(POLL_INTERVAL).await;
    }
}
