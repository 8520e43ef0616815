//! The nodes' logs on real processes: a log file with a timestamp, a level and the node on
//! every line, reopened on SIGHUP after logrotate renamed it; JSON lines that all parse;
//! SIGHUP without a log file leaves the node serving.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Starts a master with `options`, its stderr into `stderr`; its address.
fn start_logging_master(processes: &mut Processes, options: &[&str], stderr: &Path) -> String {
    let mut command = Command::new(NEO);
    command
        .args(["master", "--cluster", CLUSTER, "--bind", "127.0.0.1:0"])
        .args(options)
        .stderr(Stdio::from(std::fs::File::create(stderr).unwrap()));
    let mut child = command.stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    processes.0.push(("master".to_owned(), child));
    assert!(line.starts_with("neo master: listening on "), "stdout keeps its line: {line:?}");
    line.trim().rsplit(' ').next().unwrap().to_owned()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Polls until `path` holds a line that `accept` likes; that line.
fn wait_line(path: &Path, what: &str, accept: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(line) = read(path).lines().find(|l| accept(l)) {
            return line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "never saw {what} in {}:\n{}",
            path.display(),
            read(path)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn master_child(processes: &mut Processes) -> &mut Child {
    &mut processes.0.iter_mut().find(|(name, _)| name == "master").unwrap().1
}

/// `TIME LEVEL NODE: MESSAGE`: the time RFC 3339 in UTC with microseconds.
fn check_text_line(line: &str) {
    let (time, rest) = line.split_once(' ').unwrap_or_else(|| panic!("{line:?}"));
    let bytes = time.as_bytes();
    assert!(
        time.len() == 27
            && bytes[4] == b'-'
            && bytes[10] == b'T'
            && bytes[19] == b'.'
            && time.ends_with('Z')
            && time[20..26].bytes().all(|b| b.is_ascii_digit()),
        "timestamp of {line:?}"
    );
    let rest = rest.trim_start();
    let (level, rest) = rest.split_once(' ').unwrap();
    assert!(["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&level), "level of {line:?}");
    assert!(rest.starts_with("master"), "node of {line:?}");
}

#[test]
fn a_log_file_has_time_level_and_node_and_sighup_reopens_it() {
    let directory = tempfile::tempdir().unwrap();
    let log = directory.path().join("master.log");
    let stderr = directory.path().join("stderr");
    let mut processes = Processes(Vec::new());
    let log_option = log.to_str().unwrap();
    let master = start_logging_master(
        &mut processes,
        &["--log-file", log_option, "--log-level", "debug"],
        &stderr,
    );
    // A ctl command: the master logs its identification (debug).
    ctl_text(&master, &["print", "cluster"]);
    let line = wait_line(&log, "ctl's identification", |l| l.contains(" identified as A"));
    check_text_line(&line);
    assert!(line.contains(" DEBUG master M1: 127.0.0.1:"), "{line}");
    for line in read(&log).lines() {
        check_text_line(line);
    }
    assert_eq!(read(&stderr), "", "the lines go to the file only");

    // logrotate: rename, then SIGHUP. The next lines go to a new file of the same name.
    let rotated = directory.path().join("master.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    processes.signal("master", libc::SIGHUP);
    let reopened = wait_line(&log, "the reopening", |l| l.contains("SIGHUP: log file"));
    check_text_line(&reopened);
    ctl_text(&master, &["print", "node"]);
    wait_line(&log, "ctl's identification after SIGHUP", |l| l.contains(" identified as A"));
    assert!(!read(&rotated).contains("SIGHUP"), "{}", read(&rotated));
    assert_eq!(master_child(&mut processes).try_wait().unwrap(), None, "SIGHUP ends nothing");
    for line in read(&log).lines() {
        check_text_line(line);
    }
}

#[test]
fn json_lines_all_parse_and_sighup_without_a_file_is_harmless() {
    let directory = tempfile::tempdir().unwrap();
    let stderr = directory.path().join("stderr");
    let mut processes = Processes(Vec::new());
    let master = start_logging_master(
        &mut processes,
        &["--log-format", "json", "--log-level", "debug"],
        &stderr,
    );
    ctl_text(&master, &["print", "cluster"]);
    wait_line(&stderr, "ctl's identification", |l| l.contains(" identified as A"));
    // Without a log file SIGHUP is said and ignored: the master serves on.
    processes.signal("master", libc::SIGHUP);
    wait_line(&stderr, "SIGHUP's line", |l| l.contains("SIGHUP: no log file"));
    assert_eq!(ctl_text(&master, &["print", "cluster"]), "RECOVERING\n");
    assert_eq!(master_child(&mut processes).try_wait().unwrap(), None);
    let text = read(&stderr);
    assert!(text.lines().count() >= 3, "{text}");
    for line in text.lines() {
        let object: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        let time = object["timestamp"].as_str().unwrap_or_else(|| panic!("{line}"));
        assert!(time.len() == 27 && time.ends_with('Z'), "{line}");
        assert!(["ERROR", "WARN", "INFO", "DEBUG"].contains(&object["level"].as_str().unwrap()));
        // The master's own lines name it with its id; the SIGHUP thread's, the process.
        let node = object["node"].as_str().unwrap();
        assert!(node == "master M1" || node == "master", "{line}");
        assert!(object["message"].is_string() && object["fields"].is_object(), "{line}");
    }
}

/// The options come from the config file too, and a bad one is refused with the reason.
#[test]
fn log_options_from_the_config_file_and_bad_ones_refused() {
    let directory = tempfile::tempdir().unwrap();
    let log = directory.path().join("from-config.log");
    let config = directory.path().join("neo.toml");
    std::fs::write(
        &config,
        format!(
            "[master]\ncluster = \"{CLUSTER}\"\nbind = \"127.0.0.1:0\"\nlog_level = \"debug\"\n\
             log_file = {:?}\nlog_format = \"json\"\n",
            log.to_str().unwrap()
        ),
    )
    .unwrap();
    let mut command = Command::new(NEO);
    command.arg("--config").arg(&config).arg("master");
    let (child, line) = spawn_announcing(&mut command);
    let mut processes = Processes(vec![("master".to_owned(), child)]);
    let master = line.trim().rsplit(' ').next().unwrap().to_owned();
    ctl_text(&master, &["print", "cluster"]);
    let line = wait_line(&log, "a debug line", |l| l.contains(" identified as A"));
    let object: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(object["level"], "DEBUG", "{line}");
    drop(processes.0.pop());

    for (option, value, says) in [
        ("--log-level", "loud", "is not a level"),
        ("--log-format", "xml", "text or json"),
        ("--log-file", "/nonexistent/dir/neo.log", "/nonexistent/dir/neo.log"),
    ] {
        let output = Command::new(NEO)
            .args(["master", "--cluster", CLUSTER, "--bind", "127.0.0.1:0", option, value])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{option} {value}: {output:?}");
        let text = String::from_utf8_lossy(&output.stderr);
        assert!(text.contains(says), "{option} {value}: {text}");
    }
}
