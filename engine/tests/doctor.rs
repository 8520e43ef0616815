//! `neo doctor` as an operator runs it: one line per check, the exit status its FAIL lines
//! call for, JSON that parses, and nothing left in the data directory. What the host's
//! checks find depends on the host, so the tests assert the form and the consistency of
//! the report, and a FAIL only where one is certain (a data directory that does not exist).

use std::process::{Command, Output};

use engine::doctor::CHECK_NAMES;

const NEO: &str = env!("CARGO_BIN_EXE_neo");

fn doctor(arguments: &[&str]) -> Output {
    let output = Command::new(NEO).arg("doctor").args(arguments).output().expect("runs neo");
    assert!(matches!(output.status.code(), Some(0 | 1)), "neo doctor {arguments:?}: {output:?}");
    output
}

/// The status of each check's line, in `CHECK_NAMES` order.
fn statuses(text: &str) -> Vec<String> {
    CHECK_NAMES
        .iter()
        .map(|name| {
            let line = text
                .lines()
                .find(|line| line.split_whitespace().nth(1) == Some(name))
                .unwrap_or_else(|| panic!("no line for check {name}:\n{text}"));
            let status = line.split_whitespace().next().unwrap().to_owned();
            assert!(["OK", "WARN", "FAIL"].contains(&status.as_str()), "{line}");
            status
        })
        .collect()
}

#[test]
fn every_check_has_a_line_and_the_status_follows_the_fail_lines() {
    let data = tempfile::tempdir().unwrap();
    let path = data.path().to_str().unwrap();
    let output = doctor(&["--data", path, "--fsync-samples", "20"]);
    let text = String::from_utf8(output.stdout).unwrap();
    let statuses = statuses(&text);
    let failed = statuses.iter().any(|s| s == "FAIL");
    assert_eq!(output.status.code(), Some(i32::from(failed)), "{text}");
    // A WARN or FAIL says what to change, on the next line.
    for line in text.lines().filter(|l| l.starts_with("WARN") || l.starts_with("FAIL")) {
        let next = text.lines().skip_while(|l| *l != line).nth(1).unwrap_or("");
        assert!(next.trim_start().starts_with("change: "), "{line}\n{next}");
    }
    assert!(text.contains("4 KiB write + fdatasync x20"), "{text}");
    let left: Vec<_> = std::fs::read_dir(data.path()).unwrap().collect();
    assert!(left.is_empty(), "the probe file stayed: {left:?}");
}

#[test]
fn json_parses_and_agrees_with_the_exit_status() {
    let data = tempfile::tempdir().unwrap();
    let path = data.path().to_str().unwrap();
    let output = doctor(&["--data", path, "--fsync-samples", "10", "--json", "--cores", "2"]);
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let checks = json["checks"].as_array().expect("checks");
    let names: Vec<&str> = checks.iter().map(|c| c["check"].as_str().unwrap()).collect();
    assert_eq!(names, CHECK_NAMES);
    for check in checks {
        let status = check["status"].as_str().unwrap();
        assert!(["OK", "WARN", "FAIL"].contains(&status), "{check}");
        assert!(!check["found"].as_str().unwrap().is_empty(), "{check}");
        assert_eq!(check["change"].as_str().unwrap().is_empty(), status == "OK", "{check}");
    }
    let failed = checks.iter().any(|c| c["status"] == "FAIL");
    assert_eq!(json["failed"], failed);
    assert_eq!(json["cores"], 2);
    assert_eq!(json["data"], path);
    assert_eq!(output.status.code(), Some(i32::from(failed)));
}

#[test]
fn a_missing_data_directory_fails() {
    let data = tempfile::tempdir().unwrap();
    let missing = data.path().join("not-there");
    let output = doctor(&["--data", missing.to_str().unwrap()]);
    let text = String::from_utf8(output.stdout).unwrap();
    let statuses = statuses(&text);
    assert_eq!(statuses[CHECK_NAMES.iter().position(|n| *n == "filesystem").unwrap()], "FAIL");
    assert_eq!(statuses[CHECK_NAMES.iter().position(|n| *n == "fdatasync").unwrap()], "FAIL");
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(!missing.exists(), "doctor must not create the directory");
}

#[test]
fn without_data_the_disk_is_not_measured_and_bad_usage_is_status_2() {
    let output = doctor(&[]);
    let text = String::from_utf8(output.stdout).unwrap();
    let statuses = statuses(&text);
    assert_eq!(statuses[CHECK_NAMES.iter().position(|n| *n == "fdatasync").unwrap()], "WARN");
    assert!(text.contains("not measured"), "{text}");
    let bad = Command::new(NEO).args(["doctor", "--cores", "0"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
}
