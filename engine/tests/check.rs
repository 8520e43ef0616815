//! Replica checks and repairs on real processes: a record damaged by hand in one copy and
//! a transaction removed from the other are both named by `ctl check`, the damage is
//! repaired by itself, `check --repair` repairs the rest, and every revision then reads
//! back from each copy alone; damage found by a load is never served and is repaired
//! without an operator.

mod common;

use std::path::Path;
use std::process::Output;

use logstore::{LogStore, Options};
use wire::messages::SerialOids;
use wire::{NodeId, PartitionId};

use common::writes::*;
use common::*;

const PARTITIONS: u32 = 6;

/// Stops the cluster cleanly (every storage checkpoints: the records are then read
/// through the index, not scanned again at the next start).
fn stop_cluster(processes: &mut Processes, master: &str, hosts: &[&str]) {
    assert_eq!(ctl_text(master, &["set", "cluster", "STOPPING"]), "ok\n");
    for name in hosts.iter().chain(&["master"]) {
        assert_eq!(wait_exit(processes, name), Some(0), "{name} stops cleanly");
    }
}

/// The same cluster again, on the same data: it starts by itself once every storage holding
/// readable cells is back.
fn restart_cluster(processes: &mut Processes, data: &Path, hosts: &[&str]) -> String {
    let master = start_master(processes, "127.0.0.1:0");
    for host in hosts {
        start_storage(processes, &master, &data.join(host), host);
    }
    wait_for(&master, &["print", "cluster"], "RUNNING", |text| text == "RUNNING\n");
    master
}

/// The node id a stopped storage keeps in its data directory.
fn node_id(data: &Path) -> NodeId {
    let store = LogStore::open_directory(data, Options::default()).unwrap();
    store.metadata().node_id.expect("identified once")
}

/// Flips a byte in the middle of `needle`, found exactly once in the log of `data`.
fn damage(data: &Path, needle: &[u8]) {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(data).unwrap() {
        let path = entry.unwrap().path();
        if !path.file_name().unwrap().to_string_lossy().starts_with("segment-") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let offsets = bytes.windows(needle.len()).enumerate().filter(|(_, w)| *w == needle);
        found.extend(offsets.map(|(offset, _)| (path.clone(), offset)));
    }
    assert_eq!(found.len(), 1, "the value is in the log once: {found:?}");
    let (path, offset) = &found[0];
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset + needle.len() / 2] ^= 0x20;
    std::fs::write(path, bytes).unwrap();
}

fn check(master: &str, words: &[&str]) -> (Option<i32>, String) {
    let Output { status, stdout, stderr } = ctl(master, &[&["check"], words].concat());
    let text = String::from_utf8_lossy(&stdout).into_owned();
    assert!(stderr.is_empty() || status.code() == Some(4), "{}", String::from_utf8_lossy(&stderr));
    (status.code(), text)
}

/// The letter of `nid`'s cell of `partition` in `ctl print pt`.
fn cell_letter(master: &str, nid: NodeId, partition: PartitionId) -> Option<char> {
    let table = ctl_text(master, &["print", "pt"]);
    let line =
        grid(&table).into_iter().find(|l| l.split_whitespace().next() == Some(&nid.to_string()))?;
    line.split_whitespace().nth(1)?.chars().nth(partition.0 as usize)
}

fn partition_of(id: u64) -> PartitionId {
    PartitionId((id % u64::from(PARTITIONS)) as u32)
}

/// Kills `away`, reads every revision through the other storage alone, brings `away` back.
fn read_through_the_other(
    processes: &mut Processes,
    master: &str,
    data: &Path,
    away: &str,
    written: &Written,
) {
    processes.kill(away);
    wait_for(master, &["print", "pt"], "cells out of date", |t| t.contains('O'));
    check_written(&connect(master), written);
    start_storage(processes, master, &data.join(away), away);
    wait_up_to_date(master, "back up to date");
}

#[test]
fn check_names_a_damaged_record_and_a_missing_transaction_and_repair_fixes_both() {
    let directory = tempfile::tempdir().unwrap();
    let data = directory.path();
    let hosts = ["h1", "h2"];
    let (mut processes, master) = running_cluster(data, &hosts);
    let client = connect(&master);
    let oids = client.new_oids(30).unwrap();
    let mut written = Written::new();
    write_round(&client, &oids, 1, 5, &mut written);
    write_round(&client, &oids, 2, 1, &mut written);
    let (code, text) = check(&master, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.starts_with("checked 6 partitions from ") && text.ends_with("the replicas match\n"),
        "{text}"
    );
    drop(client);
    stop_cluster(&mut processes, &master, &hosts);

    // h1: one record's data damaged. h2: a one-object transaction of another partition
    // (its metadata too) removed, as if it was never written there.
    let damaged_oid = oids[0];
    let damaged_serial =
        *written.keys().find(|(oid, _)| *oid == damaged_oid).map(|(_, t)| t).unwrap();
    damage(&data.join("h1"), &value(damaged_oid, 1));
    let damaged_partition = partition_of(damaged_oid.0);
    let (removed_oid, removed_tid) = written
        .keys()
        .copied()
        .filter(|&(oid, tid)| {
            written.keys().filter(|(_, t)| *t == tid).count() == 1
                && partition_of(oid.0) != damaged_partition
                && partition_of(tid.0) != damaged_partition
        })
        .last()
        .expect("a transaction away from the damaged partition");
    let (s1, s2) = (node_id(&data.join("h1")), node_id(&data.join("h2")));
    {
        let mut store = LogStore::open_directory(data.join("h2"), Options::default()).unwrap();
        let objects = vec![SerialOids { serial: removed_tid, oids: vec![removed_oid] }];
        store.delete_replicated(vec![removed_tid], objects).unwrap();
        store.flush().unwrap();
    }

    let master = restart_cluster(&mut processes, data, &hosts);
    let (code, text) = check(&master, &[]);
    assert_eq!(code, Some(4), "{text}");
    let line = |partition: PartitionId, nid: NodeId, what: String| {
        let start = format!("partition {} {nid}: {what}", partition.0);
        assert!(text.lines().any(|l| l.starts_with(&start)), "no {start:?} in:\n{text}");
    };
    line(
        damaged_partition,
        s1,
        format!("object {damaged_oid} at {damaged_serial}: its data does not match its checksum"),
    );
    line(partition_of(removed_tid.0), s2, format!("transaction {removed_tid}: missing"));
    // A cell leaves the comparison at its first difference: the object is named when it
    // is in another partition than its transaction's metadata.
    if partition_of(removed_oid.0) != partition_of(removed_tid.0) {
        let what = format!("object {removed_oid} at {removed_tid}: missing");
        line(partition_of(removed_oid.0), s2, what);
    }
    assert!(!text.contains(&format!("{} {s2}", damaged_partition.0)), "{text}");

    // The damage is repaired without an operator; the missing transaction's cells stay
    // CORRUPTED (never read) until `check --repair`.
    wait_for(&master, &["print", "pt"], "the damaged cell repaired", |t| {
        !grid(t).join("").contains('O')
    });
    assert_eq!(cell_letter(&master, s1, damaged_partition), Some('U'));
    assert_eq!(cell_letter(&master, s2, partition_of(removed_tid.0)), Some('C'));
    assert_eq!(cell_letter(&master, s2, partition_of(removed_oid.0)), Some('C'));
    let (code, text) = check(&master, &["--repair"]);
    assert_eq!(code, Some(4), "{text}");
    assert!(text.contains(&format!("{s2}: CORRUPTED: being copied again")), "{text}");
    wait_up_to_date(&master, "the corrupted cells repaired");
    let (code, text) = check(&master, &[]);
    assert_eq!(code, Some(0), "{text}");

    // Each copy alone holds every revision, with its data.
    read_through_the_other(&mut processes, &master, data, "h1", &written);
    read_through_the_other(&mut processes, &master, data, "h2", &written);
    let mut extra = Written::new();
    write_round(&connect(&master), &oids[..6], 3, 3, &mut extra);
    let (code, text) = check(&master, &[]);
    assert_eq!(code, Some(0), "{text}");
}

/// A load that meets damaged data gets the revision from the good copy; the damaged cell
/// is marked, copied again, and serves the right data alone afterwards.
#[test]
fn damage_found_by_a_load_is_never_served_and_is_repaired() {
    let directory = tempfile::tempdir().unwrap();
    let data = directory.path();
    let hosts = ["h1", "h2"];
    let (mut processes, master) = running_cluster(data, &hosts);
    let client = connect(&master);
    let oids = client.new_oids(12).unwrap();
    let mut written = Written::new();
    write_round(&client, &oids, 1, 4, &mut written);
    drop(client);
    stop_cluster(&mut processes, &master, &hosts);
    let damaged_oid = oids[5];
    damage(&data.join("h1"), &value(damaged_oid, 1));
    let partition = partition_of(damaged_oid.0);

    let master = restart_cluster(&mut processes, data, &hosts);
    let client = connect(&master);
    // Loads go to either copy: until one went to h1 (and h1 reported its cell: the table
    // changes), every one gets the right data.
    let ptid = || ctl_text(&master, &["print", "pt"]).split(',').next().unwrap().to_owned();
    let before = ptid();
    let mut loads = 0;
    while ptid() == before {
        let loaded = client.load(damaged_oid).unwrap();
        assert_eq!(loaded.data, value(damaged_oid, 1));
        loads += 1;
        assert!(loads < 500, "h1 never read its damaged copy");
    }
    wait_up_to_date(&master, "the damaged cell repaired");
    read_through_the_other(&mut processes, &master, data, "h2", &written);
    let (code, text) = check(&master, &[partition.to_string().as_str()]);
    assert_eq!(code, Some(0), "{text}");
}

/// A transaction's record (its metadata) damaged in one copy: the check reads every
/// transaction's record too, names the cell, the storage reports it, and it is copied
/// again; the metadata is never served damaged.
#[test]
fn check_names_a_damaged_transaction_record() {
    let directory = tempfile::tempdir().unwrap();
    let data = directory.path();
    let hosts = ["h1", "h2"];
    let (mut processes, master) = running_cluster(data, &hosts);
    let client = connect(&master);
    let oids = client.new_oids(6).unwrap();
    let mut written = Written::new();
    write_round(&client, &oids, 1, 3, &mut written);
    let description = bytes::Bytes::from_static(b"a transaction whose record gets damaged");
    let mut transaction = client.tpc_begin(None).unwrap();
    transaction.store(oids[0], client.load(oids[0]).unwrap().serial, value(oids[0], 2)).unwrap();
    let damaged_meta =
        engine::client::TransactionMeta { description: description.clone(), ..meta() };
    transaction.vote(&damaged_meta).unwrap();
    let tid = transaction.finish(|_| {}).unwrap();
    written.insert((oids[0], tid), value(oids[0], 2));
    drop(client);
    stop_cluster(&mut processes, &master, &hosts);
    damage(&data.join("h2"), &description);
    let s2 = node_id(&data.join("h2"));

    let master = restart_cluster(&mut processes, data, &hosts);
    let (code, text) = check(&master, &[]);
    assert_eq!(code, Some(4), "{text}");
    let start = format!(
        "partition {} {s2}: transaction {tid}: its record does not match its checksum",
        partition_of(tid.0).0
    );
    assert!(text.lines().any(|l| l.starts_with(&start)), "no {start:?} in:\n{text}");
    assert_eq!(text.lines().filter(|l| l.starts_with("partition ")).count(), 1, "{text}");
    // Reported by the storage itself: copied again without an operator.
    wait_up_to_date(&master, "the damaged cell repaired");
    let (code, text) = check(&master, &[]);
    assert_eq!(code, Some(0), "{text}");
    read_through_the_other(&mut processes, &master, data, "h1", &written);
    let info = connect(&master).transaction_information(tid).unwrap();
    assert_eq!(info.description, description);
}

/// The index file of `data` (there is one after a clean stop).
fn index_files(data: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "index"))
        .collect()
}

/// A byte flipped in an object entry of one storage's index file (the entry that alone
/// says where a record lies in its log): the storage's background scrub finds it though no
/// load touched it, every cell of that storage is copied again from the other, the damaged
/// file is replaced, and every revision then reads back from that storage alone.
#[test]
fn a_damaged_index_file_is_found_and_the_storage_copied_again_from_the_other() {
    let directory = tempfile::tempdir().unwrap();
    let data = directory.path();
    let hosts = ["h1", "h2"];
    let (mut processes, master) = running_cluster(data, &hosts);
    let client = connect(&master);
    let oids = client.new_oids(40).unwrap();
    let mut written = Written::new();
    write_round(&client, &oids, 1, 4, &mut written);
    write_round(&client, &oids, 2, 4, &mut written);
    drop(client);
    stop_cluster(&mut processes, &master, &hosts);
    let files = index_files(&data.join("h1"));
    assert_eq!(files.len(), 1, "{files:?}");
    let damaged = files[0].clone();
    let mut bytes = std::fs::read(&damaged).unwrap();
    // The 30th object entry (48 bytes each, after the 128-byte header), its data position.
    bytes[128 + 48 * 30 + 17] ^= 0x08;
    std::fs::write(&damaged, bytes).unwrap();

    let master = restart_cluster(&mut processes, data, &hosts);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while damaged.exists() {
        assert!(std::time::Instant::now() < deadline, "the damaged index file is still used");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    wait_up_to_date(&master, "h1 copied again");
    read_through_the_other(&mut processes, &master, data, "h2", &written);
    stop_cluster(&mut processes, &master, &hosts);
    // The file h1 wrote since checks clean, entry by entry.
    let store = LogStore::open_directory(data.join("h1"), Options::default()).unwrap();
    let mut cursor = logstore::IndexScrub::default();
    while let Some(next) = store.scrub_index(cursor, 1 << 20).unwrap() {
        cursor = next;
    }
    assert!(cursor.checked() > 0);
}

/// Damaged data with no other copy: the load fails with the storage's refusal, an error a
/// retry does not overcome (not a cell out of reach), and the other objects are served.
#[test]
fn damage_with_no_other_copy_is_a_refusal_not_a_transient_error() {
    let directory = tempfile::tempdir().unwrap();
    let data = directory.path();
    let hosts = ["h1"];
    let (mut processes, master) = running_cluster(data, &hosts);
    let client = connect(&master);
    let oids = client.new_oids(6).unwrap();
    let mut written = Written::new();
    write_round(&client, &oids, 1, 3, &mut written);
    drop(client);
    stop_cluster(&mut processes, &master, &hosts);
    damage(&data.join("h1"), &value(oids[2], 1));
    let master = restart_cluster(&mut processes, data, &hosts);
    let client = connect(&master);
    let error = client.load(oids[2]).unwrap_err();
    assert!(!error.is_transient(), "{error}");
    assert!(error.to_string().contains("checksum"), "{error}");
    assert_eq!(client.load(oids[3]).unwrap().data, value(oids[3], 1));
}
