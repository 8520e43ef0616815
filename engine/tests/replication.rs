//! Replication on real processes: a storage that was away catches up and then serves every
//! revision alone; partitions move to new storages and the old ones leave; a destination
//! killed mid-way resumes where it was; a source killed mid-way is replaced; a pack during
//! replication leaves both copies alike.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;

use common::writes::*;
use common::*;

/// The id `ctl print node` gives the storage listening at the line's address, by host
/// order of appearance: the nodes of `state`.
fn storage_ids(masters: &str, state: &str) -> Vec<String> {
    ctl_text(masters, &["print", "node"])
        .lines()
        .filter(|l| l.contains("STORAGE") && l.contains(state))
        .map(|l| l.split_whitespace().next().unwrap().to_owned())
        .collect()
}

/// A storage whose stderr goes to `log` (to read what it did), with small replication
/// chunks when `chunk` is given.
fn start_logged_storage(
    processes: &mut Processes,
    masters: &str,
    data: &Path,
    host: &str,
    log: &Path,
    chunk: Option<u32>,
) {
    let file = std::fs::File::create(log).unwrap();
    let mut command = Command::new(NEO);
    command
        .args(["storage", "--cluster", CLUSTER, "--master", masters, "--host", host])
        .arg("--data")
        .arg(data)
        .stdout(Stdio::null())
        .stderr(Stdio::from(file));
    if let Some(items) = chunk {
        command.env("NEO_REPLICATION_CHUNK", items.to_string());
    }
    processes.0.push((host.to_owned(), command.spawn().unwrap()));
}

/// The `(partition, after, source)` of each "replicating partition P from S, after T" line.
fn fetches(log: &Path) -> Vec<(u32, u64, String)> {
    let file = std::fs::File::open(log).unwrap();
    BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter_map(|line| {
            // TIME LEVEL storage SN: replicating partition P from S, after T up to U
            let (_, rest) = line.split_once(": replicating partition ")?;
            let (partition, rest) = rest.split_once(" from ")?;
            let (source, rest) = rest.split_once(", after ")?;
            let after = rest.split_whitespace().next()?;
            let after = u64::from_str_radix(after.trim_start_matches("0x"), 16).ok()?;
            Some((partition.parse().ok()?, after, source.to_owned()))
        })
        .collect()
}

fn wait_until(what: &str, accept: impl Fn() -> bool) {
    let deadline = Instant::now() + PATIENCE * 2;
    while !accept() {
        assert!(Instant::now() < deadline, "never saw {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A storage killed while the cluster commits comes back and catches up (its cells turn
/// UP_TO_DATE); then the other one is killed and every revision, deleted objects and
/// transaction metadata included, reads back from it alone.
#[test]
fn a_storage_that_was_away_catches_up_and_serves_everything_alone() {
    let directory = tempfile::tempdir().unwrap();
    let (mut processes, master) = running_cluster(directory.path(), &["h1", "h2"]);
    let client = connect(&master);
    let oids = client.new_oids(60).unwrap();
    let mut written = Written::new();
    write_round(&client, &oids, 1, 10, &mut written);

    processes.kill("h2");
    wait_for(&master, &["print", "pt"], "h2's cells out of date", |t| t.contains('O'));
    write_round(&client, &oids, 2, 7, &mut written);
    write_round(&client, &oids[..20], 3, 1, &mut written);
    // A deletion, while it is away.
    let deleted = oids[59];
    let serial = client.load(deleted).unwrap().serial;
    let mut transaction = client.tpc_begin(None).unwrap();
    transaction.delete_object(deleted, serial).unwrap();
    assert!(transaction.vote(&meta()).unwrap().is_empty());
    let deletion = transaction.finish(|_| {}).unwrap();
    written.insert((deleted, deletion), Bytes::new());

    start_storage(&mut processes, &master, &directory.path().join("h2"), "h2");
    wait_up_to_date(&master, "h2 up to date again");
    // Commits go on once it is back, and reach it directly.
    write_round(&client, &oids[20..30], 4, 5, &mut written);

    processes.kill("h1");
    wait_for(&master, &["print", "pt"], "h1's cells out of date", |t| t.contains('O'));
    assert_eq!(ctl_text(&master, &["print", "cluster"]), "RUNNING\n", "h2 holds everything");
    let reader = connect(&master);
    check_written(&reader, &written);
    assert!(matches!(reader.load(deleted), Ok(loaded) if loaded.data.is_empty()));
}

/// Two storages join, the table moves partitions to them (new cells replicate, the old
/// ones feed until then), the old storages are tweaked out, killed and dropped: everything
/// reads back from the new ones.
#[test]
fn partitions_move_to_new_storages_and_the_old_ones_leave() {
    let directory = tempfile::tempdir().unwrap();
    let data = directory.path();
    // Small log segments (16 KiB), so that the old storages' disk space is seen to come
    // back once their partitions are gone.
    let mut processes = Processes(Vec::new());
    let master = start_master(&mut processes, "127.0.0.1:0");
    for host in ["h1", "h2"] {
        let small = [("NEO_SEGMENT_SIZE", "16384")];
        start_storage_env(&mut processes, &master, &data.join(host), host, &small);
    }
    wait_for(&master, &["print", "node"], "two pending storages", |text| {
        text.lines().filter(|l| l.contains("STORAGE") && l.contains("PENDING")).count() == 2
    });
    ctl_text(&master, &["start"]);
    wait_for(&master, &["print", "cluster"], "RUNNING", |text| text == "RUNNING\n");
    let client = connect(&master);
    let oids = client.new_oids(40).unwrap();
    let mut written = Written::new();
    for round in 1..=6 {
        write_round(&client, &oids, round, 8, &mut written);
    }
    let segments_before = segment_bytes(&data.join("h1"));
    let old = storage_ids(&master, "RUNNING");
    assert_eq!(old.len(), 2);

    for host in ["h3", "h4"] {
        start_storage(&mut processes, &master, &data.join(host), host);
    }
    wait_for(&master, &["print", "node"], "two pending storages", |text| {
        text.lines().filter(|l| l.contains("STORAGE") && l.contains("PENDING")).count() == 2
    });
    let new = storage_ids(&master, "PENDING");
    let mut add = vec!["add"];
    add.extend(new.iter().map(String::as_str));
    ctl_text(&master, &add);
    let tweaked = ctl_text(&master, &["tweak"]);
    assert!(tweaked.contains('O'), "new cells to fill: {tweaked}");
    // Commits meanwhile reach the new cells too.
    write_round(&client, &oids[..10], 3, 5, &mut written);
    let grown = wait_up_to_date(&master, "the new cells up to date");
    assert_eq!(grid(&grown).len(), 4, "{grown}");

    // Away from the old ones.
    let mut tweak = vec!["tweak"];
    tweak.extend(old.iter().map(String::as_str));
    ctl_text(&master, &tweak);
    write_round(&client, &oids[10..20], 4, 5, &mut written);
    let moved = wait_up_to_date(&master, "everything on the new storages");
    for nid in &old {
        assert!(
            !moved.lines().any(|l| l.starts_with(nid.as_str())),
            "{nid} still has cells: {moved}"
        );
    }
    // Their data is dropped, and compaction gives the disk space back (what is left: the
    // segment being written, and the last few that are not sealed yet).
    wait_until("the old storage's segments deleted", || {
        segment_bytes(&data.join("h1")) * 4 < segments_before
    });
    for nid in &old {
        ctl_text(&master, &["kill", nid]);
        // Whichever of h1 and h2 it is stops, cleanly.
        let deadline = Instant::now() + PATIENCE;
        let code = loop {
            if let Some(code) = ["h1", "h2"].iter().find_map(|host| processes.exited(host)) {
                break code;
            }
            assert!(Instant::now() < deadline, "{nid} never stopped");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(code, Some(0), "{nid} stops cleanly when killed");
        ctl_text(&master, &["drop", nid]);
    }
    assert_eq!(ctl_text(&master, &["print", "cluster"]), "RUNNING\n");
    let reader = connect(&master);
    check_written(&reader, &written);
    write_round(&reader, &oids[..5], 5, 5, &mut written);
}

/// A destination killed mid-way resumes from the position it had made durable, not from
/// the start: its first fetch after the restart begins after a tid past zero.
#[test]
fn a_destination_killed_mid_way_resumes_where_it_was() {
    let directory = tempfile::tempdir().unwrap();
    let data = directory.path();
    let (mut processes, master) = running_cluster(data, &["h1", "h2"]);
    let _dump = DumpOnPanic(vec![data.join("h2-first.log"), data.join("h2-second.log")]);
    let client = connect(&master);
    let oids = client.new_oids(40).unwrap();
    let mut written = Written::new();
    processes.kill("h2");
    wait_for(&master, &["print", "pt"], "h2's cells out of date", |t| t.contains('O'));
    // Many transactions, one object each: many chunks of one item.
    for round in 1..=8 {
        write_round(&client, &oids, round, 1, &mut written);
    }
    let first_log = data.join("h2-first.log");
    start_logged_storage(&mut processes, &master, &data.join("h2"), "h2", &first_log, Some(1));
    // Some chunks made durable (each is reported with small chunks), the partition not
    // done yet.
    wait_until("a few chunks replicated", || {
        let text = std::fs::read_to_string(&first_log).unwrap_or_default();
        text.lines().filter(|l| l.ends_with("so far")).count() >= 3
    });
    // Operators see it: the cells replicating, how far, and a warning.
    let table = ctl_text(&master, &["print", "pt"]);
    let summary = ctl_text(&master, &["print", "summary"]);
    let json = ctl_text(&master, &["--json", "print", "pt"]);
    processes.kill("h2");
    assert!(table.contains("\nreplicating: S") && table.contains("copied at"), "{table}");
    assert!(summary.contains("warning:") && summary.contains("cells not up to date"), "{summary}");
    assert!(
        json.contains("\"replicating\": [{\"nid\": \"S") && json.contains("\"eta_seconds\""),
        "{json}"
    );
    let second_log = data.join("h2-second.log");
    start_logged_storage(&mut processes, &master, &data.join("h2"), "h2", &second_log, Some(2));
    wait_up_to_date(&master, "h2 up to date");
    let resumed = fetches(&second_log);
    assert!(
        resumed.iter().any(|&(_, after, _)| after > 0),
        "the restarted destination started over: first run {:?}, second run {resumed:?}",
        fetches(&first_log)
    );
    processes.kill("h1");
    wait_for(&master, &["print", "pt"], "h1 out of date", |t| t.contains('O'));
    check_written(&connect(&master), &written);
}

/// The bytes of a storage's log segments on disk.
fn segment_bytes(data: &Path) -> u64 {
    std::fs::read_dir(data)
        .unwrap()
        .map(|entry| entry.unwrap())
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("segment-"))
        .map(|entry| entry.metadata().unwrap().len())
        .sum()
}

/// The id a storage says it was given, from its log.
fn identified_as(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text.lines().rev().find(|l| l.contains(": identified as "))?;
    Some(line.rsplit(' ').next()?.to_owned())
}

/// The source of a replication is killed mid-way: the destination goes on from another
/// storage holding a readable copy.
#[test]
fn a_source_killed_mid_way_is_replaced() {
    let directory = tempfile::tempdir().unwrap();
    let data = directory.path();
    let mut processes = Processes(Vec::new());
    let master = start_master_with(&mut processes, "master", &["--replicas", "2"]);
    let hosts = ["h1", "h2", "h3"];
    for host in hosts {
        let log = data.join(format!("{host}.log"));
        start_logged_storage(&mut processes, &master, &data.join(host), host, &log, Some(2));
    }
    wait_for(&master, &["print", "node"], "three pending storages", |text| {
        text.lines().filter(|l| l.contains("STORAGE") && l.contains("PENDING")).count() == 3
    });
    ctl_text(&master, &["start"]);
    wait_for(&master, &["print", "cluster"], "RUNNING", |text| text == "RUNNING\n");
    let client = connect(&master);
    let oids = client.new_oids(30).unwrap();
    let mut written = Written::new();
    processes.kill("h3");
    wait_for(&master, &["print", "pt"], "h3 out of date", |t| t.contains('O'));
    for round in 1..=6 {
        write_round(&client, &oids, round, 1, &mut written);
    }
    let log = data.join("h3-again.log");
    start_logged_storage(&mut processes, &master, &data.join("h3"), "h3", &log, Some(2));
    wait_until("a fetch started", || !fetches(&log).is_empty());
    let source = fetches(&log)[0].2.clone();
    let source_host = hosts[..2]
        .iter()
        .find(|host| {
            identified_as(&data.join(format!("{host}.log"))).as_deref() == Some(source.as_str())
        })
        .expect("the source is h1 or h2");
    processes.kill(source_host);
    wait_up_to_date_without(&master, &source, "h3 up to date from the other source");
    let sources: std::collections::BTreeSet<String> =
        fetches(&log).into_iter().map(|(_, _, source)| source).collect();
    assert!(sources.len() >= 2, "one source only: {sources:?}");
    check_written(&connect(&master), &written);
}

/// Up to date but for the cells of `gone` (a node that died: its cells are out of date).
fn wait_up_to_date_without(masters: &str, gone: &str, what: &str) {
    wait_for(masters, &["print", "pt"], what, |text| {
        grid(text).iter().filter(|l| !l.starts_with(gone)).all(|l| {
            let cells = l.split_whitespace().nth(1).unwrap_or("");
            !cells.contains('O') && !cells.contains('F')
        })
    });
}

/// A pack while a cell replicates: once it is done, both copies hold the same revisions.
#[test]
fn a_pack_during_replication_leaves_both_copies_alike() {
    let directory = tempfile::tempdir().unwrap();
    let data = directory.path();
    let (mut processes, master) = running_cluster(data, &["h1", "h2"]);
    let client = connect(&master);
    let oids = client.new_oids(20).unwrap();
    let mut written = Written::new();
    processes.kill("h2");
    wait_for(&master, &["print", "pt"], "h2 out of date", |t| t.contains('O'));
    for round in 1..=6 {
        write_round(&client, &oids, round, 1, &mut written);
    }
    let log = data.join("h2.log");
    start_logged_storage(&mut processes, &master, &data.join("h2"), "h2", &log, Some(2));
    wait_until("a fetch started", || !fetches(&log).is_empty());
    let last = client.sync().unwrap().unwrap();
    let pack_id = client.pack(last, None, &meta()).unwrap();
    assert!(pack_id > last);
    wait_up_to_date(&master, "h2 up to date");
    // Through h2 alone: only the newest revision of each object is left.
    processes.kill("h1");
    wait_for(&master, &["print", "pt"], "h1 out of date", |t| t.contains('O'));
    let reader = connect(&master);
    for &oid in &oids {
        let history = reader.history(oid, 100).unwrap();
        assert_eq!(history.len(), 1, "{oid}: {history:?}");
        let newest =
            written.iter().filter(|((o, _), _)| *o == oid).map(|((_, t), d)| (*t, d)).max();
        let (serial, data) = newest.unwrap();
        assert_eq!(history[0].0, serial);
        assert_eq!(&reader.load(oid).unwrap().data, data);
    }
}
