//! The operator commands NEO has beside the ones the other tests drive, on processes:
//! `print node [TYPE]` with the masters, `print pt MIN MAX [NID]`, `add all`, and `kill` of
//! a secondary master.

mod common;

use std::time::Instant;

use common::*;

#[test]
fn masters_are_listed_and_a_secondary_can_be_killed() {
    let directory = tempfile::tempdir().unwrap();
    let (mut processes, first, second) = two_master_cluster(directory.path(), &["h1", "h2"]);
    let nodes = wait_for(&first, &["print", "node"], "both masters listed", |text| {
        text.contains(&format!("MASTER RUNNING {second}"))
    });
    assert!(nodes.starts_with(&format!("M1     MASTER RUNNING {first}\n")), "{nodes}");
    let secondary = nodes
        .lines()
        .find(|l| l.ends_with(&second))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_owned();
    assert_eq!(&secondary[..1], "M", "{nodes}");
    // By type.
    let masters = ctl_text(&first, &["print", "node", "master"]);
    assert_eq!(masters.lines().count(), 2, "{masters}");
    let storages = ctl_text(&first, &["print", "node", "STORAGE"]);
    assert!(storages.lines().count() == 2 && !storages.contains("MASTER"), "{storages}");
    let json = ctl_text(&first, &["--json", "print", "node", "master"]);
    assert!(json.contains("\"type\": \"MASTER\"") && !json.contains("STORAGE"), "{json}");
    let unknown = ctl(&first, &["print", "node", "bogus"]);
    assert_eq!(unknown.status.code(), Some(2));

    // The primary is not killed this way; the secondary is, and is then shown DOWN.
    let refused = ctl(&first, &["kill", "M1"]);
    let text = String::from_utf8_lossy(&refused.stderr);
    assert!(refused.status.code() == Some(1) && text.contains("primary"), "{text}");
    ctl_text(&first, &["kill", &secondary]);
    let deadline = Instant::now() + PATIENCE;
    while processes.has("secondary") && processes.exited("secondary").is_none() {
        assert!(Instant::now() < deadline, "the secondary master never stopped");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let nodes = ctl_text(&first, &["print", "node", "master"]);
    assert!(nodes.contains(&format!("-      MASTER DOWN {second}")), "{nodes}");
    assert_eq!(ctl_text(&first, &["print", "cluster"]), "RUNNING\n");
    let gone = ctl(&first, &["kill", &secondary]);
    assert_eq!(gone.status.code(), Some(1));
}

#[test]
fn some_rows_of_the_table_and_add_all() {
    let directory = tempfile::tempdir().unwrap();
    let data = directory.path();
    let (mut processes, master) = running_cluster(data, &["h1", "h2"]);
    // Partitions 2 and 3 (MAX excluded), every node.
    let rows = ctl_text(&master, &["print", "pt", "2", "4"]);
    let lines: Vec<&str> = rows.lines().collect();
    assert!(lines[0].ends_with("partitions 2 to 3"), "{rows}");
    assert_eq!(lines.len(), 3, "{rows}");
    assert!(lines[1..].iter().all(|l| l.split_whitespace().nth(1).unwrap().len() == 2), "{rows}");
    // From 4 to the end, one node.
    let rows = ctl_text(&master, &["print", "pt", "4", "0", "S2"]);
    assert_eq!(rows.lines().skip(1).collect::<Vec<_>>(), ["S2 UU"], "{rows}");
    let json = ctl_text(&master, &["--json", "print", "pt", "1", "2"]);
    assert!(json.contains("\"rows\": [{\"partition\": 1, \"cells\": [[\"S"), "{json}");
    // Out of the table: refused, saying what exists; so are an empty range and a node
    // without cells.
    for (words, says) in [
        (&["print", "pt", "6", "9"][..], "0 to 5"),
        (&["print", "pt", "2", "2"][..], "above MIN"),
        (&["print", "pt", "0", "0", "S9"][..], "S9 holds no cell"),
        (&["tweak", "S9"][..], "S9 is not a storage"),
        (&["kill", "A1"][..], "not a storage"),
        (&["check", "0", "ffffffffffffffff", "0000000000000001"][..], "is after MAX_TID"),
    ] {
        let refused = ctl(&master, words);
        let text = String::from_utf8_lossy(&refused.stderr);
        assert!(refused.status.code() == Some(1) && text.contains(says), "{words:?}: {text}");
    }
    let usage = ctl(&master, &["truncate"]);
    let text = String::from_utf8_lossy(&usage.stderr);
    assert!(usage.status.code() == Some(2) && text.contains("usage: truncate TID"), "{text}");

    // Two new storages wait; `add all` takes both.
    for host in ["h3", "h4"] {
        start_storage(&mut processes, &master, &data.join(host), host);
    }
    wait_for(&master, &["print", "node", "storage"], "two pending storages", |text| {
        text.lines().filter(|l| l.contains("PENDING")).count() == 2
    });
    ctl_text(&master, &["add", "all"]);
    let storages = ctl_text(&master, &["print", "node", "storage"]);
    assert!(storages.lines().all(|l| l.contains("RUNNING")), "{storages}");
    let again = ctl(&master, &["add", "all"]);
    let text = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.code() == Some(1) && text.contains("no storage is pending"), "{text}");
}
