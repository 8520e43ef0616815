//! `neo ctl truncate TID` on processes: everything committed after the tid goes, on every
//! storage, for good (across a restart of everything); commits go on after it; the
//! truncation is refused when it could not be carried out whole.

mod common;

use common::writes::*;
use common::*;
use engine::client::ClientError;
use wire::Tid;

/// Revisions written up to the truncation tid read back; those after it are gone, their
/// transactions too; the last tid is the truncation tid, even after a restart of every
/// process; a new commit lands after it.
#[test]
fn truncation_drops_every_later_transaction_on_every_storage() {
    let directory = tempfile::tempdir().unwrap();
    let data = directory.path();
    let (mut processes, master) = running_cluster(data, &["h1", "h2"]);
    let client = connect(&master);
    let oids = client.new_oids(12).unwrap();
    let mut kept = Written::new();
    for round in 1..=3 {
        write_round(&client, &oids, round, 3, &mut kept);
    }
    let tid = client.last_transaction().expect("committed");
    let mut dropped = Written::new();
    for round in 4..=6 {
        write_round(&client, &oids, round, 3, &mut dropped);
    }
    let last = client.last_transaction().expect("committed");
    client.close();

    // Refused: nothing after the last tid; a malformed tid.
    let refused = ctl(&master, &["truncate", &last.to_string()]);
    let text = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && text.contains("nothing to truncate"), "{text}");
    let refused = ctl(&master, &["truncate", "12"]);
    assert!(!refused.status.success());
    assert_eq!(ctl_text(&master, &["print", "cluster"]), "RUNNING\n", "refusals change nothing");

    ctl_text(&master, &["truncate", &tid.to_string()]);
    wait_for(&master, &["print", "cluster"], "RUNNING after the truncation", |t| t == "RUNNING\n");
    let after = |master: &str| {
        let client = connect(master);
        assert_eq!(client.last_transaction(), Some(tid), "the last tid is the truncation's");
        check_written(&client, &kept);
        check_gone(&client, &dropped);
        // The newest revision of each object is the one of round 3.
        for &oid in &oids {
            assert_eq!(client.load(oid).unwrap().data, value(oid, 3), "{oid}");
        }
        client
    };
    after(&master).close();

    // For good: every process killed and started again.
    for name in ["master", "h1", "h2"] {
        processes.kill(name);
    }
    start_master_with(&mut processes, "master", &["--bind", &master]);
    for host in ["h1", "h2"] {
        start_storage(&mut processes, &master, &data.join(host), host);
    }
    wait_for(&master, &["print", "cluster"], "RUNNING after a restart", |t| t == "RUNNING\n");
    let client = after(&master);
    // Commits go on, after the truncation tid.
    let mut more = Written::new();
    write_round(&client, &oids, 7, 4, &mut more);
    assert!(more.keys().all(|&(_, serial)| serial > tid));
    check_written(&client, &more);
    // And each copy agrees.
    let output = ctl(&master, &["check"]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success() && text.ends_with("the replicas match\n"), "{text}");
}

/// A storage of the table away: the truncation is refused (it would come back with the
/// transactions after the tid), and nothing changes.
#[test]
fn truncation_is_refused_while_a_storage_is_away() {
    let directory = tempfile::tempdir().unwrap();
    let data = directory.path();
    let (mut processes, master) = running_cluster(data, &["h1", "h2", "h3"]);
    let client = connect(&master);
    let oids = client.new_oids(6).unwrap();
    let mut written = Written::new();
    write_round(&client, &oids, 1, 2, &mut written);
    let tid = client.last_transaction().expect("committed");
    write_round(&client, &oids, 2, 2, &mut written);
    processes.kill("h3");
    wait_for(&master, &["print", "pt"], "h3 out of date", |t| t.contains('O'));
    let refused = ctl(&master, &["truncate", &tid.to_string()]);
    let text = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && text.contains("every storage of the table"), "{text}");
    assert_eq!(ctl_text(&master, &["print", "cluster"]), "RUNNING\n");
    check_written(&client, &written);
}

/// The primary dies while a storage has not yet made the order durable (it is stopped): the
/// next primary learns the order from the storage that keeps it and carries it out.
#[test]
fn a_truncation_outlives_the_primary_that_began_it() {
    let directory = tempfile::tempdir().unwrap();
    let data = directory.path();
    let (mut processes, master) = running_cluster(data, &["h1", "h2"]);
    let client = connect(&master);
    let oids = client.new_oids(6).unwrap();
    let mut kept = Written::new();
    write_round(&client, &oids, 1, 3, &mut kept);
    let tid = client.last_transaction().expect("committed");
    let mut dropped = Written::new();
    write_round(&client, &oids, 2, 3, &mut dropped);
    client.close();
    processes.signal("h2", libc::SIGSTOP);
    ctl_text(&master, &["truncate", &tid.to_string()]);
    // Out of operation until h2 keeps the order too.
    wait_for(&master, &["print", "cluster"], "RECOVERING", |t| t == "RECOVERING\n");
    processes.kill("master");
    start_master_with(&mut processes, "master", &["--bind", &master]);
    processes.signal("h2", libc::SIGCONT);
    wait_for(&master, &["print", "cluster"], "RUNNING after the truncation", |t| t == "RUNNING\n");
    let client = connect(&master);
    assert_eq!(client.last_transaction(), Some(tid));
    check_written(&client, &kept);
    check_gone(&client, &dropped);
}

/// Every revision of `dropped` is gone, and its transaction too.
fn check_gone(client: &engine::client::Client, dropped: &Written) {
    let mut problems = Vec::new();
    for &(oid, serial) in dropped.keys() {
        match client.load_serial(oid, serial) {
            Err(ClientError::OidDoesNotExist(_) | ClientError::OidNotFound(_)) => {}
            other => problems.push(format!("{oid} at {serial}: {other:?}")),
        }
    }
    let tids: std::collections::BTreeSet<Tid> = dropped.keys().map(|&(_, tid)| tid).collect();
    for tid in tids {
        if client.transaction_information(tid).is_ok() {
            problems.push(format!("transaction {tid} is still there"));
        }
    }
    assert!(problems.is_empty(), "{} problems:\n{}", problems.len(), problems.join("\n"));
}

/// A storage outside the table (dropped, then back with its old data, PENDING) does not
/// lend its tids to the cluster: after a truncation the last tid is the truncation's.
#[test]
fn a_storage_outside_the_table_does_not_bring_tids_back() {
    let directory = tempfile::tempdir().unwrap();
    let data = directory.path();
    let (mut processes, master) = running_cluster(data, &["h1", "h2", "h3"]);
    let client = connect(&master);
    let oids = client.new_oids(6).unwrap();
    let mut kept = Written::new();
    write_round(&client, &oids, 1, 3, &mut kept);
    let tid = client.last_transaction().expect("committed");
    write_round(&client, &oids, 2, 3, &mut Written::new());
    client.close();
    // h3 leaves the table with the history up to round 2.
    processes.kill("h3");
    let nodes = wait_for(&master, &["print", "node", "storage"], "h3 down", |t| t.contains("DOWN"));
    let h3 = nodes.lines().find(|l| l.contains("DOWN")).unwrap().split_whitespace().next().unwrap();
    ctl_text(&master, &["drop", h3]);
    ctl_text(&master, &["tweak"]);
    wait_up_to_date(&master, "two storages up to date");
    start_storage(&mut processes, &master, &data.join("h3"), "h3");
    wait_for(&master, &["print", "node", "storage"], "h3 pending", |t| t.contains("PENDING"));

    ctl_text(&master, &["truncate", &tid.to_string()]);
    wait_for(&master, &["print", "cluster"], "RUNNING", |t| t == "RUNNING\n");
    let ids = ctl_text(&master, &["print", "ids"]);
    assert!(ids.contains(&format!("last tid {tid}\n")), "{ids}");
    let client = connect(&master);
    assert_eq!(client.last_transaction(), Some(tid));
    check_written(&client, &kept);
}
