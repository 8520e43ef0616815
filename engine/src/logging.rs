//! The nodes' logs, through `tracing`: one line per event with a UTC timestamp (RFC 3339,
//! microseconds), a level, the node that logged it and the message, as text or as one JSON
//! object per line; written to stderr or appended to a file that SIGHUP reopens (for
//! logrotate).
//!
//! The node is the thread's: each node runs on an executor thread of its own (a storage
//! core, the master, the admin; `neo cluster` runs several), so `set_node` at the start of
//! its driver and `set_node_id` once identified name every line that thread logs, and
//! `neo cluster`'s lines say which of its nodes spoke (`master M1`, `storage S2`, `admin`).
//! Threads without one (the `neo` process's main thread, an application's threads calling
//! the client) take the default `init` was given.
//!
//! Levels: `error` for a failure of this node, `warn` for a peer that misbehaves or a node
//! lost, `info` for changes of state, `debug` for each connection's story. Filters are
//! `tracing_subscriber::EnvFilter` directives (`info`, `engine::client=debug,warn`): from
//! `--log-level`, else `NEO_LOG`, else the caller's default.
//!
//! Text: `2026-03-01T12:00:00.123456Z  INFO storage S2: identified as S2 key=value`.
//! JSON: `{"timestamp":"...","level":"INFO","node":"storage S2","message":"...",
//! "target":"engine::storage","fields":{"key":"value"}}`. Our own formatter rather than
//! tracing-subscriber's `json` one, whose lines cannot carry the node at the top level.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::SystemTime;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

/// The environment variable read when no `--log-level` is given.
pub const ENV: &str = "NEO_LOG";

/// The level of the nodes' logs unless told otherwise.
pub const DEFAULT_LEVEL: &str = "info";

/// How each line is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// `TIMESTAMP LEVEL NODE: MESSAGE key=value...`
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl std::str::FromStr for Format {
    type Err = LogError;

    fn from_str(text: &str) -> Result<Format, LogError> {
        match text {
            "text" => Ok(Format::Text),
            "json" => Ok(Format::Json),
            other => Err(LogError::Format(other.to_owned())),
        }
    }
}

/// What a process's logging is told.
#[derive(Clone, Debug, Default)]
pub struct LogOptions {
    /// A level or an `EnvFilter` directive; `None`: `NEO_LOG`, else the default.
    pub level: Option<String>,
    /// The file lines are appended to; `None`: stderr.
    pub file: Option<PathBuf>,
    pub format: Format,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error(
        "log level {directive:?}: {reason} (give error, warn, info, debug, trace, or a filter such as engine::storage=debug,info)"
    )]
    Level { directive: String, reason: String },
    #[error("log format {0:?}: give text or json")]
    Format(String),
    #[error("log file {}: {source}", path.display())]
    File { path: PathBuf, source: io::Error },
    #[error("handling SIGHUP: {0}")]
    Signal(io::Error),
    #[error("this process already has a log subscriber")]
    AlreadySet,
}

/// The filter for `level` (the option), else `from_env` (`NEO_LOG`'s value), else `default`.
pub fn filter(
    level: Option<&str>,
    from_env: Option<&str>,
    default: &str,
) -> Result<EnvFilter, LogError> {
    let directive = level
        .or(from_env.filter(|value| !value.trim().is_empty()))
        .unwrap_or(default)
        .trim()
        .to_owned();
    // EnvFilter takes a bare word as a target to log at every level ("warning" would log
    // nothing of ours, "debgu" everything of a crate that does not exist): a part without
    // `=` must be a level.
    for part in directive.split(',').map(str::trim).filter(|part| !part.is_empty()) {
        if !part.contains(['=', '['])
            && part.parse::<tracing::level_filters::LevelFilter>().is_err()
        {
            let reason = format!("{part:?} is not a level");
            return Err(LogError::Level { directive, reason });
        }
    }
    EnvFilter::try_new(&directive)
        .map_err(|error| LogError::Level { directive, reason: error.to_string() })
}

/// `NEO_LOG`'s value, if set.
pub fn from_env() -> Option<String> {
    std::env::var(ENV).ok()
}

thread_local! {
    /// This thread's node, as its lines name it.
    static NODE: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// The node of threads that have none of their own.
static DEFAULT_NODE: OnceLock<String> = OnceLock::new();

/// Lines logged by this thread from now on are this node's (`"storage"`, `"master"`).
pub fn set_node(node: &str) {
    NODE.with(|current| *current.borrow_mut() = Some(node.to_owned()));
}

/// This thread's node now has an id: its lines name both (`storage S2`).
pub fn set_node_id(nid: wire::NodeId) {
    let role = nid.node_type().to_string().to_lowercase();
    set_node(&format!("{role} {nid}"));
}

/// The node that names this thread's lines (empty if none).
pub fn node() -> String {
    NODE.with(|current| current.borrow().clone())
        .or_else(|| DEFAULT_NODE.get().cloned())
        .unwrap_or_default()
}

/// `time` as RFC 3339 in UTC with microseconds: `2026-03-01T12:00:00.123456Z`.
pub fn timestamp(time: SystemTime) -> String {
    let since = time.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let seconds = since.as_secs();
    let (year, month, day) = civil_from_days((seconds / 86_400) as i64);
    let in_day = seconds % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        in_day / 3600,
        in_day / 60 % 60,
        in_day % 60,
        since.subsec_micros()
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// An event's message and other fields.
#[derive(Default)]
struct Fields {
    message: String,
    others: serde_json::Map<String, serde_json::Value>,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            self.others.insert(field.name().to_owned(), format!("{value:?}").into());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.others.insert(field.name().to_owned(), value.into());
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.others.insert(field.name().to_owned(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.others.insert(field.name().to_owned(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.others.insert(field.name().to_owned(), value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.others.insert(field.name().to_owned(), value.into());
    }
}

/// The event formatter: the node comes from the logging thread (`set_node`).
#[derive(Debug, Clone, Copy)]
struct NodeFormat(Format);

impl<S, N> FormatEvent<S, N> for NodeFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _context: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let metadata = event.metadata();
        let line =
            line(self.0, SystemTime::now(), *metadata.level(), &node(), metadata.target(), fields);
        writer.write_str(&line)
    }
}

/// One log line, newline included.
fn line(
    format: Format,
    time: SystemTime,
    level: tracing::Level,
    node: &str,
    target: &str,
    fields: Fields,
) -> String {
    match format {
        Format::Text => {
            let mut line = format!("{} {level:>5} ", timestamp(time));
            if !node.is_empty() {
                let _ = write!(line, "{node}: ");
            }
            line.push_str(&fields.message);
            for (key, value) in &fields.others {
                match value {
                    serde_json::Value::String(text) => {
                        let _ = write!(line, " {key}={text:?}");
                    }
                    other => {
                        let _ = write!(line, " {key}={other}");
                    }
                }
            }
            line.push('\n');
            line
        }
        Format::Json => {
            let object = serde_json::json!({
                "timestamp": timestamp(time),
                "level": level.as_str(),
                "node": node,
                "message": fields.message,
                "target": target,
                "fields": fields.others,
            });
            // serde_json escapes every control character: one line per event.
            let mut line = object.to_string();
            line.push('\n');
            line
        }
    }
}

/// A log file opened for appending, which `reopen` opens again by its path (logrotate
/// renamed it: the next lines go to a new file of that name).
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    file: Mutex<File>,
    /// Set by the SIGHUP handler: the next line reopens the file first.
    reopen: Arc<AtomicBool>,
    /// Why the last reopening failed (the old file is kept meanwhile).
    failure: Mutex<Option<io::Error>>,
}

fn open_append(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new().create(true).append(true).open(path)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl LogFile {
    pub fn open(path: &Path) -> Result<LogFile, LogError> {
        let file =
            open_append(path).map_err(|source| LogError::File { path: path.to_owned(), source })?;
        Ok(LogFile {
            path: path.to_owned(),
            file: Mutex::new(file),
            reopen: Arc::new(AtomicBool::new(false)),
            failure: Mutex::new(None),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The flag that makes the next line reopen the file (what a SIGHUP handler sets).
    pub fn reopen_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.reopen)
    }

    /// The file to write the next line to, reopened first if asked.
    fn writer(&self) -> MutexGuard<'_, File> {
        let mut file = lock(&self.file);
        if self.reopen.swap(false, Ordering::AcqRel) {
            match open_append(&self.path) {
                Ok(new) => *file = new,
                Err(error) => *lock(&self.failure) = Some(error),
            }
        }
        file
    }

    /// Why the last reopening failed, once.
    pub fn take_failure(&self) -> Option<io::Error> {
        lock(&self.failure).take()
    }
}

/// Where lines go: stderr or a `LogFile`. Each line is written whole, with one write,
/// under the file's lock (lines of several threads never mix).
#[derive(Clone, Debug)]
pub enum Output {
    Stderr,
    File(Arc<LogFile>),
}

/// What writes one line.
#[derive(Debug)]
pub enum LineWriter<'a> {
    Stderr(io::StderrLock<'static>),
    File(MutexGuard<'a, File>),
}

impl Write for LineWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        match self {
            LineWriter::Stderr(stderr) => stderr.write(bytes),
            LineWriter::File(file) => file.write(bytes),
        }
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            LineWriter::Stderr(stderr) => stderr.write_all(bytes),
            LineWriter::File(file) => file.write_all(bytes),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            LineWriter::Stderr(stderr) => stderr.flush(),
            LineWriter::File(file) => file.flush(),
        }
    }
}

impl<'a> MakeWriter<'a> for Output {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> LineWriter<'a> {
        match self {
            Output::Stderr => LineWriter::Stderr(io::stderr().lock()),
            Output::File(file) => LineWriter::File(file.writer()),
        }
    }
}

/// What `init` set up.
#[derive(Clone, Debug)]
pub struct Logging {
    pub output: Output,
}

static INITIALIZED: OnceLock<Logging> = OnceLock::new();

/// The logging this process set up with `init`, if any.
pub fn current() -> Option<&'static Logging> {
    INITIALIZED.get()
}

/// Makes the subscriber `options` describe this process's default. `default_node` names
/// the lines of threads without a node of their own; `default_level` applies when neither
/// the option nor `NEO_LOG` gives one.
pub fn init(
    options: &LogOptions,
    default_node: &str,
    default_level: &str,
) -> Result<&'static Logging, LogError> {
    let filter = filter(options.level.as_deref(), from_env().as_deref(), default_level)?;
    let output = match &options.file {
        Some(path) => Output::File(Arc::new(LogFile::open(path)?)),
        None => Output::Stderr,
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .event_format(NodeFormat(options.format))
        .with_writer(output.clone())
        .try_init()
        .map_err(|_| LogError::AlreadySet)?;
    let _ = DEFAULT_NODE.set(default_node.to_owned());
    Ok(INITIALIZED.get_or_init(|| Logging { output }))
}

/// A default subscriber for a process that has none (the Python binding, at import):
/// lines at `level` and above (NEO_LOG overrides it) on stderr, in text. A bad NEO_LOG is
/// said, and `level` used. Nothing changes if the process already has a subscriber.
pub fn try_init_default(node: &str, level: &str) {
    match init(&LogOptions::default(), node, level) {
        Ok(_) | Err(LogError::AlreadySet) => {}
        Err(error) => {
            let options = LogOptions { level: Some(level.to_owned()), ..LogOptions::default() };
            if init(&options, node, level).is_ok() {
                tracing::warn!("{ENV}: {error}; logging at {level}");
            }
        }
    }
}

/// SIGHUP reopens the log file (logrotate renamed it) and says so in the new one; without
/// a log file it is logged and ignored: never the default action, which ends the process.
/// A thread of its own waits for the signal: the handler itself only wakes it.
pub fn reopen_on_sighup(logging: &'static Logging) -> Result<(), LogError> {
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])
        .map_err(LogError::Signal)?;
    std::thread::Builder::new()
        .name("sighup".to_owned())
        .spawn(move || {
            for _ in signals.forever() {
                match &logging.output {
                    Output::File(file) => {
                        file.reopen_flag().store(true, Ordering::Release);
                        // The first line of the new file (the flag is seen as it is written).
                        // Below the level (`--log-level warn`), the next line that is
                        // written reopens it instead.
                        tracing::info!("SIGHUP: log file {} reopened", file.path().display());
                        if let Some(error) = file.take_failure() {
                            tracing::error!(
                                "SIGHUP: cannot reopen the log file {}: {error}; still writing to the one open",
                                file.path().display()
                            );
                        }
                    }
                    Output::Stderr => tracing::info!("SIGHUP: no log file to reopen"),
                }
            }
        })
        .map_err(LogError::Signal)?;
    Ok(())
}

/// A fatal error of the process: logged, and said on stderr too when the log is a file
/// (whoever started the process sees why it stopped).
pub fn fatal(message: &str) {
    tracing::error!("{message}");
    if let Some(Logging { output: Output::File(_) }) = current() {
        let mut stderr = io::stderr().lock();
        let _ = writeln!(stderr, "neo: {message}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        let at = |seconds: u64, micros: u64| {
            timestamp(
                SystemTime::UNIX_EPOCH
                    + Duration::from_secs(seconds)
                    + Duration::from_micros(micros),
            )
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 7), "2000-02-29T00:00:00.000007Z");
        assert_eq!(at(1_709_251_199, 999_999), "2024-02-29T23:59:59.999999Z");
        assert_eq!(at(4_102_444_800, 123_456), "2100-01-01T00:00:00.123456Z");
    }

    #[test]
    fn levels_come_from_the_option_else_the_environment_else_the_default() {
        let shown = |option, env| filter(option, env, "info").unwrap().to_string();
        assert_eq!(shown(Some("debug"), Some("trace")), "debug");
        assert_eq!(shown(None, Some("trace")), "trace");
        assert_eq!(shown(None, Some("  ")), "info");
        assert_eq!(shown(None, None), "info");
        assert_eq!(shown(Some("engine::storage=debug,warn"), None), "engine::storage=debug,warn");
        let error = filter(Some("loud"), None, "info").unwrap_err().to_string();
        assert!(error.contains("\"loud\"") && error.contains("give error, warn"), "{error}");
        assert!(filter(Some("engine=shout"), None, "info").is_err());
        assert!(filter(Some("warning"), None, "info").is_err());
        assert!(filter(None, Some("engine"), "info").is_err());
        assert_eq!(shown(Some("WARN"), None), "warn");
        assert_eq!("json".parse::<Format>().unwrap(), Format::Json);
        assert_eq!("text".parse::<Format>().unwrap(), Format::Text);
        assert!("xml".parse::<Format>().unwrap_err().to_string().contains("text or json"));
    }

    /// Lines written to a buffer, for the tests.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            lock(&self.0).extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// What `log` logs through a subscriber of `format` at debug, as text.
    fn logged(format: Format, log: impl FnOnce()) -> String {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(filter(Some("debug"), None, "info").unwrap())
            .event_format(NodeFormat(format))
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, log);
        String::from_utf8(lock(&buffer.0).clone()).unwrap()
    }

    #[test]
    fn text_lines_have_time_level_node_and_message() {
        let text = logged(Format::Text, || {
            set_node("storage");
            tracing::info!("identified as {}", "S2");
            set_node_id(wire::NodeId::new(wire::NodeType::Storage, 2));
            tracing::warn!(peer = "127.0.0.1:5", attempts = 3, "a peer does not read");
            tracing::trace!("not shown");
        });
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        let (time, rest) = lines[0].split_once(' ').unwrap();
        assert!(time.len() == 27 && time.ends_with('Z') && time.as_bytes()[10] == b'T', "{time}");
        assert_eq!(rest, " INFO storage: identified as S2");
        assert!(
            lines[1].ends_with(
                " WARN storage S2: a peer does not read attempts=3 peer=\"127.0.0.1:5\""
            ),
            "{}",
            lines[1]
        );
    }

    #[test]
    fn json_lines_parse_and_carry_node_and_fields() {
        let text = logged(Format::Json, || {
            set_node("master M1");
            tracing::error!(nid = "S1", "a \"quoted\"\nmessage on two lines");
            tracing::debug!("plain");
        });
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        let first: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(first["level"], "ERROR");
        assert_eq!(first["node"], "master M1");
        assert_eq!(first["message"], "a \"quoted\"\nmessage on two lines");
        assert_eq!(first["fields"]["nid"], "S1");
        assert_eq!(first["target"], module_path!());
        let time = first["timestamp"].as_str().unwrap();
        assert!(time.len() == 27 && time.ends_with('Z'), "{time}");
        let second: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(
            (second["level"].as_str(), second["message"].as_str()),
            (Some("DEBUG"), Some("plain"))
        );
        assert_eq!(second["fields"], serde_json::json!({}));
    }

    #[test]
    fn a_log_file_is_reopened_by_its_path_when_asked() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("neo.log");
        let file = LogFile::open(&path).unwrap();
        file.writer().write_all(b"one\n").unwrap();
        std::fs::rename(&path, directory.path().join("neo.log.1")).unwrap();
        file.writer().write_all(b"two\n").unwrap();
        file.reopen_flag().store(true, Ordering::Release);
        file.writer().write_all(b"three\n").unwrap();
        assert!(file.take_failure().is_none());
        let read = |name: &str| std::fs::read_to_string(directory.path().join(name)).unwrap();
        assert_eq!(read("neo.log.1"), "one\ntwo\n");
        assert_eq!(read("neo.log"), "three\n");
        // A directory that went away: the old file is kept, the failure said once.
        let gone = directory.path().join("gone");
        std::fs::create_dir(&gone).unwrap();
        let file = LogFile::open(&gone.join("neo.log")).unwrap();
        std::fs::rename(&gone, directory.path().join("moved")).unwrap();
        file.reopen_flag().store(true, Ordering::Release);
        file.writer().write_all(b"kept\n").unwrap();
        assert!(file.take_failure().is_some());
        assert!(file.take_failure().is_none());
        assert_eq!(read("moved/neo.log"), "kept\n");
    }
}
