//! The harness end to end, as an operator runs it: `neo-bench` on an embedded cluster and
//! against a `neo cluster` process, its files read back, `neo-bench compare` on two runs, and
//! bad usage. Tiny durations: these check what the harness writes, never how fast anything is.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn neo_bench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_neo-bench"))
}

/// Arguments for a short run of `workloads`: no ZEO, 0.1 s per case, one repeat.
fn short_run(out: &Path, workloads: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = workloads.iter().map(|w| (*w).to_owned()).collect();
    for arg in [
        "--seconds",
        "0.1",
        "--warmup",
        "0.05",
        "--repeats",
        "1",
        "--objects",
        "200",
        "--objects-per-txn",
        "5",
        "--clients",
        "2",
        "--rate",
        "200",
        "--compare",
        "none",
        "--out",
    ] {
        args.push(arg.to_owned());
    }
    args.push(out.display().to_string());
    args
}

fn run(command: &mut Command) -> Output {
    let output = command.output().expect("neo-bench runs");
    assert!(
        output.status.success(),
        "neo-bench failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn summary(out: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(out.join("summary.json")).expect("summary.json written");
    serde_json::from_str(&text).expect("summary.json is JSON")
}

fn case<'a>(summary: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    summary["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("no case {id} in {summary:#}"))
}

/// Rows of an `.hgrm` file: value (us), percentile, total count.
fn hgrm_rows(path: &Path) -> Vec<(f64, f64, u64)> {
    let text = std::fs::read_to_string(path).expect("hgrm written");
    assert!(text.trim_start().starts_with("Value"), "{text}");
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            (fields[0].parse().unwrap(), fields[1].parse().unwrap(), fields[2].parse().unwrap())
        })
        .collect()
}

#[test]
fn the_suite_on_an_embedded_cluster_writes_its_report_histograms_plots_and_summary() {
    let out = tempfile::tempdir().unwrap();
    let output = run(neo_bench().args(short_run(out.path(), &[])));
    let report = String::from_utf8_lossy(&output.stdout);
    for line in [
        "baselines (this run)",
        "raw TCP ping-pong",
        "zwrk load 300 B, 2 clients",
        "commit 3 x 999 B, 2 clients",
        "mixed 90/10: loads",
        "not run: hot",
    ] {
        assert!(report.contains(line), "no {line:?} in the report:\n{report}");
    }
    let summary = summary(out.path());
    assert_eq!(summary["config"]["target"]["cluster"], "embedded");
    assert!(summary["git_commit"].is_string() && summary["machine"]["kernel"].is_string());
    for id in [
        "baseline-ping-pong-1",
        "baseline-echo-2",
        "baseline-fdatasync",
        "zwrk-2",
        "commit-2",
        "add-2",
        "update-2",
        "cold-2",
        "warm-2",
        "mixed-load-2",
        "mixed-commit-2",
    ] {
        let case = case(&summary, id);
        assert!(case["count"].as_u64().unwrap() > 0, "{id} measured nothing: {case:#}");
        assert!(case["rate"].as_f64().unwrap() > 0.0, "{id}");
        let (p50, p99, max) = (
            case["p50_ns"].as_u64().unwrap(),
            case["p99_ns"].as_u64().unwrap(),
            case["max_ns"].as_u64().unwrap(),
        );
        assert!(0 < p50 && p50 <= p99 && p99 <= max, "{id}: {case:#}");
        // The histogram file agrees with the summary: same count, same max.
        let rows = hgrm_rows(&out.path().join(case["hgrm"].as_str().unwrap()));
        let last = rows.last().unwrap();
        assert_eq!(last.1, 1.0, "{id}");
        assert_eq!(last.2, case["count"].as_u64().unwrap(), "{id}");
        let max_us = max as f64 / 1000.0;
        assert!((last.0 - max_us).abs() <= max_us * 0.01 + 0.001, "{id}: {} vs {max_us}", last.0);
    }
    // Each read round reads 5 objects; zwrk's 1-client case was not asked for.
    assert_eq!(case(&summary, "cold-2")["objects_per_op"], 5);
    assert!(summary["cases"].as_array().unwrap().iter().all(|c| c["id"] != "zwrk-1"));
    assert!(summary["skipped"].as_array().unwrap().iter().any(|s| s["workload"] == "hot"));
    for plot in ["zwrk.svg", "commit.svg", "shapes.svg", "mixed.svg"] {
        let svg = std::fs::read_to_string(out.path().join(plot)).expect(plot);
        assert!(svg.starts_with("<svg") && svg.contains("<polyline"), "{plot}");
    }
    // The baseline ratios are computed and printed.
    let zwrk = case(&summary, "zwrk-2");
    assert!(zwrk["versus"][0]["median"].as_f64().unwrap() > 0.0, "{zwrk:#}");

    // A second run of one workload, compared with the first.
    let second = tempfile::tempdir().unwrap();
    run(neo_bench().args(short_run(second.path(), &["zwrk"])));
    let compared = run(neo_bench().args(
        ["compare".into(), out.path().join("summary.json"), second.path().join("summary.json")]
            .map(|p: PathBuf| p.into_os_string()),
    ));
    let text = String::from_utf8_lossy(&compared.stdout);
    let line = text.lines().find(|l| l.starts_with("zwrk load 300 B, 2 clients")).expect(&text);
    assert!(line.contains('%'), "a change for a case in both runs: {line}");
    let line = text.lines().find(|l| l.starts_with("commit 3 x 999 B, 2 clients")).expect(&text);
    assert!(line.contains("-> -"), "a case only in the first run: {line}");
}

#[test]
fn bad_usage_is_refused_with_a_reason_and_exit_code_2() {
    for (args, reason) in [
        (vec!["nope"], "unknown workload"),
        (vec!["--seconds", "0"], "--seconds must be positive"),
        (vec!["--replicas", "1"], "needs at least that many --storage-cores"),
        (vec!["--compare", "riak"], "--compare takes auto, zeo or none"),
        (vec!["--clients", "0"], "--clients takes positive counts"),
        (vec!["--server-cpu", "4096"], "is not online"),
        (vec!["compare", "/nonexistent/a.json", "/nonexistent/b.json"], "cannot read"),
        (vec!["compare", "only-one.json"], "usage: neo-bench compare"),
        (vec!["zwrk", "--cluster", "no-port-here"], "--cluster no-port-here"),
    ] {
        let output = neo_bench().args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
    }
    let not_json = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(not_json.path(), "{ not json").unwrap();
    let path = not_json.path().to_str().unwrap();
    let output = neo_bench().args(["compare", path, path]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("is not JSON"));
}

/// The `neo` binary, built beside `neo-bench` by the workspace's test build.
fn neo_binary() -> PathBuf {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_neo-bench"));
    let neo = bench.with_file_name("neo");
    assert!(neo.exists(), "{} is missing: build the workspace (cargo build) first", neo.display());
    neo
}

/// A `neo cluster` process, stopped with SIGTERM when dropped.
struct NeoCluster {
    child: std::process::Child,
    master: String,
}

impl Drop for NeoCluster {
    fn drop(&mut self) {
        // SAFETY: kill only sends a signal to our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

#[test]
fn the_suite_runs_against_an_existing_cluster() {
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(neo_binary())
        .args(["cluster", "--cluster", "remote-bench", "--bind", "127.0.0.1:0", "--storages", "1"])
        .arg("--data")
        .arg(data.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let master = line
        .split("master listening on ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_else(|| panic!("no master address in {line:?}"))
        .to_owned();
    let cluster = NeoCluster { child, master };
    let out = tempfile::tempdir().unwrap();
    let mut args = short_run(out.path(), &["zwrk", "commit"]);
    args.extend([
        "--cluster".into(),
        cluster.master.clone(),
        "--name".into(),
        "remote-bench".into(),
    ]);
    let output = run(neo_bench().args(&args));
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(report.contains("existing cluster \"remote-bench\""), "{report}");
    let summary = summary(out.path());
    assert_eq!(summary["config"]["target"]["cluster"], "remote-bench");
    assert!(case(&summary, "commit-2")["count"].as_u64().unwrap() > 0);
    assert!(case(&summary, "zwrk-2")["count"].as_u64().unwrap() > 0);

    // A cluster of another name refuses the client: a clear error and exit code 3.
    let mut args = short_run(out.path(), &["zwrk"]);
    args.extend(["--cluster".into(), cluster.master.clone(), "--name".into(), "wrong".into()]);
    let output = neo_bench().args(&args).output().unwrap();
    assert_eq!(output.status.code(), Some(3), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot connect"));
}
