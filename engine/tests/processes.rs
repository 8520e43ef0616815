//! Real processes on 127.0.0.1: a master and three storages started with the `neo` binary,
//! driven with `neo ctl`, killed with SIGKILL and restarted.
//!
//! Waiting is by polling with a generous deadline (never a timed assertion): the test
//! fails only if the cluster never reaches the expected state.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn start_lose_a_storage_and_restart_everything() {
    let directory = tempfile::tempdir().unwrap();
    let mut processes = Processes(Vec::new());
    let master = start_master(&mut processes, "127.0.0.1:0");
    for host in ["h1", "h2", "h3"] {
        start_storage(&mut processes, &master, &directory.path().join(host), host);
    }
    wait_for(&master, &["print", "node"], "three pending storages", |text| {
        text.lines().filter(|l| l.contains("STORAGE") && l.contains("PENDING")).count() == 3
    });
    assert_eq!(ctl_text(&master, &["print", "cluster"]), "RECOVERING\n");
    assert_eq!(ctl_text(&master, &["print", "pt"]), "no partition table yet\n");

    // A new cluster starts with `ctl start`.
    ctl_text(&master, &["start"]);
    wait_for(&master, &["print", "cluster"], "RUNNING", |text| text == "RUNNING\n");
    let table = ctl_text(&master, &["print", "pt"]);
    assert!(table.starts_with("ptid 1, 1 replicas, 6 partitions"), "{table}");
    let rows = grid(&table);
    assert_eq!(rows.len(), 3, "{table}");
    // Every partition has two up-to-date cells.
    for partition in 0..6 {
        let cells = rows
            .iter()
            .filter(|r| r.split_whitespace().nth(1).unwrap().as_bytes()[partition] == b'U');
        assert_eq!(cells.count(), 2, "{table}");
    }
    let json = ctl_text(&master, &["--json", "print", "pt"]);
    assert!(json.starts_with("{\"ptid\": 1, \"replicas\": 1"), "{json}");

    // Kill -9 a storage: its cells go out of date, the cluster keeps running.
    processes.kill("h2");
    let outdated =
        wait_for(&master, &["print", "pt"], "out-of-date cells", |text| text.contains('O'));
    assert_eq!(ctl_text(&master, &["print", "cluster"]), "RUNNING\n");
    assert!(outdated.starts_with("ptid 2"), "{outdated}");

    // It comes back under the same id, goes into service and replicates what it missed:
    // its cells are up to date again.
    start_storage(&mut processes, &master, &directory.path().join("h2"), "h2");
    let nodes = wait_for(&master, &["print", "node"], "three running storages", |text| {
        text.lines().filter(|l| l.contains("STORAGE RUNNING")).count() == 3
    });
    assert!(!nodes.contains("S4"), "{nodes}");
    let caught_up = wait_for(&master, &["print", "pt"], "h2 up to date again", |text| {
        !grid(text).join("").contains('O')
    });
    assert_eq!(grid(&caught_up), grid(&table), "the same cells, all up to date");
    processes.kill("h2");
    wait_for(&master, &["print", "node"], "h2 down again", |text| text.contains("DOWN"));
    let outdated =
        wait_for(&master, &["print", "pt"], "out-of-date cells", |text| text.contains('O'));

    // A tweak dry run shows a plan without changing the table.
    let plan = ctl_text(&master, &["tweak", "-n"]);
    assert!(plan.starts_with("changes:") || plan.starts_with("no change:"), "{plan}");
    assert_eq!(ctl_text(&master, &["print", "pt"]), outdated);

    // Bad input on the master's port: the master stays up.
    {
        use std::io::Write;
        let mut garbage = std::net::TcpStream::connect(&master).unwrap();
        garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    }
    assert_eq!(ctl_text(&master, &["print", "cluster"]), "RUNNING\n");
    // Another protocol version, and a frame cut short: refused, the master stays up.
    {
        use std::io::{Read, Write};
        let mut hello = wire::Hello::new(wire::NodeType::Client, CLUSTER);
        hello.version = 99;
        let mut old = std::net::TcpStream::connect(&master).unwrap();
        old.write_all(&hello.encode()).unwrap();
        let mut reply = Vec::new();
        let _ = old.read_to_end(&mut reply);
        let mut cut = std::net::TcpStream::connect(&master).unwrap();
        cut.write_all(&wire::Hello::new(wire::NodeType::Admin, CLUSTER).encode()).unwrap();
        cut.write_all(&[1, 0, 0, 0, 1, 0]).unwrap();
    }
    assert_eq!(ctl_text(&master, &["print", "cluster"]), "RUNNING\n");
    // Another cluster's ctl is refused at the handshake.
    let other = Command::new(NEO)
        .args(["ctl", "--cluster", "other", "--master", &master, "print", "cluster"])
        .output()
        .unwrap();
    assert_eq!(other.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&other.stderr).contains("another cluster"));

    // Restart everything: the master holds nothing; the table comes back from the storages
    // and the cluster starts by itself once every node with readable cells is back.
    drop(processes);
    let mut processes = Processes(Vec::new());
    let master = start_master(&mut processes, &master);
    for host in ["h1", "h2", "h3"] {
        start_storage(&mut processes, &master, &directory.path().join(host), host);
    }
    wait_for(&master, &["print", "cluster"], "RUNNING after restart", |text| text == "RUNNING\n");
    let ptid = |text: &str| -> u64 {
        text.split_whitespace().nth(1).unwrap().trim_end_matches(',').parse().unwrap()
    };
    let back = ctl_text(&master, &["print", "pt"]);
    assert!(ptid(&back) >= ptid(&outdated), "the same table came back (or a later one): {back}");
    wait_for(&master, &["print", "pt"], "h2 up to date after the restart", |text| {
        grid(text) == grid(&table)
    });
}

#[test]
fn a_storage_of_another_cluster_is_refused() {
    let directory = tempfile::tempdir().unwrap();
    let mut processes = Processes(Vec::new());
    let master = start_master(&mut processes, "127.0.0.1:0");
    let mut intruder = Command::new(NEO)
        .args(["storage", "--cluster", "intruder", "--master", &master, "--host", "x"])
        .arg("--data")
        .arg(directory.path().join("intruder"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // It keeps retrying (the master may be another cluster's by mistake) and says why,
    // naming its cluster, once: not at every retry.
    std::thread::sleep(Duration::from_millis(2500));
    let nodes = ctl_text(&master, &["print", "node"]);
    let _ = intruder.kill();
    let output = intruder.wait_with_output().unwrap();
    assert!(!nodes.contains("STORAGE"), "{nodes}");
    let log = String::from_utf8_lossy(&output.stderr);
    let said: Vec<&str> = log.lines().filter(|l| l.contains("another cluster")).collect();
    assert_eq!(said.len(), 1, "{log}");
    assert!(said[0].contains("cluster \"intruder\""), "{log}");
}

#[test]
fn ctl_kill_drop_and_tweak() {
    let directory = tempfile::tempdir().unwrap();
    let (_processes, master) = running_cluster(directory.path(), &["h1", "h2", "h3"]);
    assert_eq!(ctl_text(&master, &["print", "primary"]), format!("M1 {master}\n"));
    // No transaction yet: no ids; the table's version is known.
    assert_eq!(ctl_text(&master, &["print", "ids"]), "last oid none\nlast tid none\nptid 1\n");
    let summary = ctl_text(&master, &["print", "summary"]);
    assert!(summary.starts_with("cluster RUNNING, 6 partitions"), "{summary}");
    assert!(
        summary.contains("3 STORAGE RUNNING") && summary.contains("12 UP_TO_DATE"),
        "{summary}"
    );

    // Kill S1: it is told to stop and exits; its cells go out of date.
    ctl_text(&master, &["kill", "S1"]);
    wait_for(&master, &["print", "node"], "S1 down", |text| {
        text.lines().any(|l| l.starts_with("S1") && l.contains("DOWN"))
    });
    // Drop it: its cells are removed; then a tweak gives its partitions new cells.
    ctl_text(&master, &["drop", "S1"]);
    let table = ctl_text(&master, &["print", "pt"]);
    assert!(!table.contains("S1"), "{table}");
    let plan = ctl_text(&master, &["tweak"]);
    assert!(plan.starts_with("changes:"), "{plan}");
    let table = ctl_text(&master, &["print", "pt"]);
    assert_eq!(grid(&table).len(), 2, "{table}");
    // Every partition has two cells again, on the two storages left.
    for row in grid(&table) {
        assert!(!row.contains('.'), "{table}");
    }
    // Refusals have exit code 1 and say why.
    let refused = ctl(&master, &["kill", "S9"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("S9"));
}

#[test]
fn embedded_cluster_starts_by_itself() {
    let directory = tempfile::tempdir().unwrap();
    let mut command = Command::new(NEO);
    command
        .args([
            "cluster",
            "--cluster",
            CLUSTER,
            "--bind",
            "127.0.0.1:0",
            "--storages",
            "3",
            "--replicas",
            "1",
        ])
        .arg("--data")
        .arg(directory.path());
    let (child, line) = spawn_announcing(&mut command);
    let mut processes = Processes(vec![("cluster".to_owned(), child)]);
    let address = |label: &str| {
        line.split(label)
            .nth(1)
            .and_then(|rest| rest.split(',').next())
            .expect("an address")
            .to_owned()
    };
    let (master, admin) = (address("listening on "), address("admin on "));
    wait_for(&master, &["print", "cluster"], "RUNNING", |text| text == "RUNNING\n");
    assert_eq!(ctl_text(&admin, &["print", "cluster"]), "RUNNING\n");
    let table = ctl_text(&master, &["print", "pt"]);
    assert_eq!(grid(&table).len(), 3, "{table}");
    for core in 0..3 {
        assert!(directory.path().join(format!("core-{core}")).is_dir());
    }
    // STOPPING ends the whole process cleanly.
    assert_eq!(ctl_text(&admin, &["set", "cluster", "STOPPING"]), "ok\n");
    assert_eq!(wait_exit(&mut processes, "cluster"), Some(0));
}

#[test]
fn sigterm_stops_cleanly_with_a_checkpoint() {
    let directory = tempfile::tempdir().unwrap();
    let (mut processes, master) = running_cluster(directory.path(), &["h1"]);
    let index = processes.0.iter().position(|(name, _)| name == "h1").unwrap();
    let (_, mut storage) = processes.0.remove(index);
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(storage.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = storage.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the storage did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    let checkpointed = std::fs::read_dir(directory.path().join("h1"))
        .unwrap()
        .any(|e| e.unwrap().file_name().to_string_lossy().ends_with(".index"));
    assert!(checkpointed, "a clean stop writes a checkpoint");
    // The master saw it go: its cells are the last copies and stay, the cluster stops.
    wait_for(&master, &["print", "cluster"], "RECOVERING", |text| text == "RECOVERING\n");
    // It comes back (from its checkpoint): every readable node is there, RUNNING again.
    start_storage(&mut processes, &master, &directory.path().join("h1"), "h1");
    wait_for(&master, &["print", "cluster"], "RUNNING again", |text| text == "RUNNING\n");
}

#[test]
fn ctl_through_an_admin_node() {
    let directory = tempfile::tempdir().unwrap();
    let mut processes = Processes(Vec::new());
    let master = start_master(&mut processes, "127.0.0.1:0");
    let (admin, line) = spawn_announcing(Command::new(NEO).args([
        "admin",
        "--cluster",
        CLUSTER,
        "--master",
        &master,
        "--bind",
        "127.0.0.1:0",
    ]));
    processes.0.push(("admin".to_owned(), admin));
    let admin = line.trim().rsplit(' ').next().unwrap().to_owned();
    start_storage(&mut processes, &master, &directory.path().join("h1"), "h1");
    wait_for(&admin, &["print", "node"], "a pending storage", |text| text.contains("PENDING"));
    ctl_text(&admin, &["start"]);
    wait_for(&admin, &["print", "cluster"], "RUNNING", |text| text == "RUNNING\n");
    assert!(ctl_text(&admin, &["print", "pt"]).starts_with("ptid 1"));
    // Through the admin, the primary's address, not the admin's own.
    assert_eq!(ctl_text(&admin, &["print", "primary"]), format!("M1 {master}\n"));
    let refused = ctl(&admin, &["kill", "S7"]);
    assert_eq!(refused.status.code(), Some(1), "refusals pass through the admin");

    // Bad input on the admin's port: garbage, another cluster, a cut frame, a request before
    // identification, a message that is not a ctl request. Each is refused; the admin stays up.
    {
        use std::io::Write;
        let mut garbage = std::net::TcpStream::connect(&admin).unwrap();
        garbage.write_all(b"\x16\x03\x01\x02\x00 TLS hello").unwrap();
        let mut other = std::net::TcpStream::connect(&admin).unwrap();
        other.write_all(&wire::Hello::new(wire::NodeType::Admin, "other").encode()).unwrap();
        let mut cut = std::net::TcpStream::connect(&admin).unwrap();
        cut.write_all(&wire::Hello::new(wire::NodeType::Admin, CLUSTER).encode()).unwrap();
        cut.write_all(&[7, 0, 0]).unwrap();
    }
    let mut early = Peer::connect(&admin, wire::NodeType::Admin);
    let Some(wire::Message::Error(error)) = early.ask(&wire::AskClusterState {}) else {
        panic!("a request before identification must be refused")
    };
    assert!(error.message.as_str().contains("identify first"), "{}", error.message);
    // A client's identification is refused: an admin node relays ctl only.
    let mut client = Peer::connect(&admin, wire::NodeType::Admin);
    let Some(wire::Message::Error(error)) = client.ask(&identification(None)) else {
        panic!("a client's identification must be refused")
    };
    assert!(error.message.as_str().contains("serves ctl only"), "{}", error.message);
    let mut odd = Peer::connect(&admin, wire::NodeType::Admin);
    let as_ctl =
        wire::RequestIdentification { node_type: wire::NodeType::Admin, ..identification(None) };
    let accepted = odd.ask(&as_ctl);
    assert!(matches!(accepted, Some(wire::Message::AcceptIdentification(_))), "{accepted:?}");
    let Some(wire::Message::Error(error)) = odd.ask(&wire::AskNewOids { count: 5 }) else {
        panic!("a client's request must be refused")
    };
    assert!(error.message.as_str().contains("not a ctl request"), "{}", error.message);
    let answer = odd.ask(&wire::NotifyReady {});
    assert!(matches!(answer, None | Some(wire::Message::Error(_))), "{answer:?}");
    assert_eq!(ctl_text(&admin, &["print", "cluster"]), "RUNNING\n");
}

#[test]
fn options_from_a_configuration_file() {
    let directory = tempfile::tempdir().unwrap();
    let config = directory.path().join("neo.toml");
    std::fs::write(
        &config,
        format!("[master]\ncluster = \"{CLUSTER}\"\nbind = \"127.0.0.1:0\"\npartitions = 5\nreplicas = 0\nautostart = 1\n"),
    )
    .unwrap();
    let (child, line) =
        spawn_announcing(Command::new(NEO).arg("--config").arg(&config).arg("master"));
    let mut processes = Processes(vec![("master".to_owned(), child)]);
    let master = line.trim().rsplit(' ').next().unwrap().to_owned();
    // The storage's options from the same file, its masters as a list.
    let data = directory.path().join("h1");
    let storage = format!(
        "[storage]\ncluster = \"{CLUSTER}\"\nmaster = [\"{master}\"]\nhost = \"h1\"\ndata = {:?}\n",
        data.display().to_string()
    );
    std::fs::write(&config, std::fs::read_to_string(&config).unwrap() + &storage).unwrap();
    let child = Command::new(NEO)
        .arg("--config")
        .arg(&config)
        .arg("storage")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    processes.0.push(("h1".to_owned(), child));
    // autostart = 1 from the file: the cluster starts by itself, with 5 partitions.
    let table = wait_for(&master, &["print", "pt"], "a table", |text| text.starts_with("ptid"));
    assert!(table.starts_with("ptid 1, 0 replicas, 5 partitions"), "{table}");
    // A missing file is a clear error.
    let missing =
        Command::new(NEO).args(["--config", "/nonexistent/neo.toml", "master"]).output().unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/neo.toml"));
}

/// A primary ("master"), a secondary ("secondary") that knows it, and storages on `hosts`
/// given both, started with `ctl start`, RUNNING.
/// Returns the processes and both masters' addresses.
#[test]
fn a_secondary_master_takes_over_when_the_primary_dies() {
    let directory = tempfile::tempdir().unwrap();
    let (mut processes, first, second) = two_master_cluster(directory.path(), &["h1", "h2"]);
    let masters = format!("{first},{second}");
    // ctl through either master reaches the primary (the secondary redirects).
    assert_eq!(ctl_text(&second, &["print", "primary"]), format!("M1 {first}\n"));
    let table = ctl_text(&masters, &["print", "pt"]);

    // Kill -9 the primary: the secondary takes over, the storages find it, and the table
    // comes back from them; the cluster runs again by itself (every readable node is back).
    processes.kill("master");
    wait_for(&masters, &["print", "primary"], "the secondary as primary", |text| {
        text == format!("M1 {second}\n")
    });
    wait_for(&second, &["print", "cluster"], "RUNNING after take-over", |text| text == "RUNNING\n");
    assert_eq!(ctl_text(&second, &["print", "pt"]), table, "the same table came back");
}

#[test]
fn storages_listen_and_admit_only_announced_nodes() {
    use wire::{Message, NodeId, NodeType};
    let directory = tempfile::tempdir().unwrap();
    let (_processes, master) = running_cluster(directory.path(), &["h1", "h2"]);
    // The node list shows where each storage listens.
    let nodes = ctl_text(&master, &["print", "node"]);
    let address_of = |nid: &str| {
        let line = nodes.lines().find(|l| l.starts_with(nid)).expect("listed");
        line.rsplit(' ').next().unwrap().to_owned()
    };
    let s1 = address_of("S1");
    assert!(s1.starts_with("127.0.0.1:"), "{nodes}");
    let json = ctl_text(&master, &["--json", "print", "node"]);
    assert!(json.contains(&format!("\"address\": \"{s1}\"")), "{json}");

    // Garbage, another cluster, a cut frame: the storage stays up.
    {
        use std::io::Write;
        let mut garbage = std::net::TcpStream::connect(&s1).unwrap();
        garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let mut other = std::net::TcpStream::connect(&s1).unwrap();
        other.write_all(&wire::Hello::new(NodeType::Client, "other").encode()).unwrap();
        let mut cut = std::net::TcpStream::connect(&s1).unwrap();
        cut.write_all(&wire::Hello::new(NodeType::Client, CLUSTER).encode()).unwrap();
        cut.write_all(&[1, 0, 0, 0, 1, 0]).unwrap();
    }
    // A node the primary never announced is refused with a reason.
    let mut stranger = Peer::connect(&s1, NodeType::Client);
    let Some(Message::Error(refused)) =
        stranger.ask(&identification(Some(NodeId::new(NodeType::Client, 9))))
    else {
        panic!("a stranger must get an error")
    };
    assert_eq!(refused.code, wire::ErrorCode::NotReady);
    assert!(refused.message.as_str().contains("not in the node list"), "{}", refused.message);
    // Another storage of the cluster is admitted and answered; requests this storage does
    // not serve yet are refused with a reason, and the connection stays usable.
    let mut peer = Peer::connect(&s1, NodeType::Storage);
    let Some(Message::AcceptIdentification(accept)) =
        peer.ask(&identification(Some(NodeId::new(NodeType::Storage, 2))))
    else {
        panic!("S2 must be admitted")
    };
    assert_eq!(accept.nid, Some(NodeId::new(NodeType::Storage, 1)));
    assert!(matches!(peer.ask(&wire::Ping {}), Some(Message::Pong(_))));
    let Some(Message::Error(not_yet)) = peer.ask(&wire::AskLastIds {}) else {
        panic!("an unserved request must get an error")
    };
    assert!(not_yet.message.as_str().contains("does not serve"), "{}", not_yet.message);
    assert!(matches!(peer.ask(&wire::Ping {}), Some(Message::Pong(_))));
    assert_eq!(ctl_text(&master, &["print", "cluster"]), "RUNNING\n");

    // A client is identified by the master and served; what the master does not serve a
    // client is refused with a reason, not left waiting.
    let mut client = Peer::connect(&master, NodeType::Client);
    let Some(Message::AcceptIdentification(accept)) = client.ask(&identification(None)) else {
        panic!("a client of a running cluster must be accepted")
    };
    assert_eq!(accept.your_nid.map(|n| n.node_type()), Some(NodeType::Client));
    let Some(Message::AnswerNewOids(oids)) = client.ask(&wire::AskNewOids { count: 100 }) else {
        panic!("new oids must be served")
    };
    assert_eq!((oids.first, oids.count), (wire::Oid(1), 100), "oid 0 is the root's");
    let Some(Message::Error(refused)) = client.ask(&wire::AskLastIds {}) else {
        panic!("a request the master does not serve a client must get an error")
    };
    assert_eq!(refused.code, wire::ErrorCode::ProtocolError);
    assert!(refused.message.as_str().contains("AskLastIds"), "{}", refused.message);
}

#[test]
fn set_cluster_stopping_stops_every_node_cleanly() {
    let directory = tempfile::tempdir().unwrap();
    let (mut processes, first, _) = two_master_cluster(directory.path(), &["h1", "h2"]);
    let table = ctl_text(&first, &["print", "pt"]);

    // Every process exits by itself with success: storages after a checkpoint, the
    // secondary without taking over, the primary once the storages are gone.
    assert_eq!(ctl_text(&first, &["set", "cluster", "STOPPING"]), "ok\n");
    for name in ["h1", "h2", "secondary", "master"] {
        assert_eq!(wait_exit(&mut processes, name), Some(0), "{name}");
    }

    // Started again, the cluster comes back by itself with the same table.
    let master = start_master(&mut processes, &first);
    for host in ["h1", "h2"] {
        start_storage(&mut processes, &master, &directory.path().join(host), host);
    }
    wait_for(&master, &["print", "cluster"], "RUNNING after restart", |text| text == "RUNNING\n");
    assert_eq!(ctl_text(&master, &["print", "pt"]), table);
}

#[test]
fn ctl_on_a_recovering_cluster_says_why_it_refuses() {
    let mut processes = Processes(Vec::new());
    let master = start_master(&mut processes, "127.0.0.1:0");
    let summary = ctl_text(&master, &["print", "summary"]);
    assert!(summary.starts_with("cluster RECOVERING"), "{summary}");
    assert!(summary.contains("cells: none (no partition table yet)"), "{summary}");
    assert_eq!(ctl_text(&master, &["print", "ids"]), "last oid none\nlast tid none\nptid none\n");
    for (words, reason) in [
        (&["start"][..], "cannot be made operational"),
        (&["tweak"][..], "the cluster is RECOVERING"),
        (&["kill", "S1"][..], "unknown node S1"),
        (&["add", "S1"][..], "the cluster is RECOVERING"),
        (&["set", "cluster", "RUNNING"][..], "cannot go from RECOVERING to RUNNING"),
    ] {
        let output = ctl(&master, words);
        assert_eq!(output.status.code(), Some(1), "{words:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(reason), "{words:?}: {stderr}");
    }
    // Bad usage is told apart from a refusal.
    assert_eq!(ctl(&master, &["set", "cluster", "SIDEWAYS"]).status.code(), Some(2));
    assert_eq!(ctl_text(&master, &["print", "cluster"]), "RECOVERING\n");
}

/// Two network namespaces joined by a veth pair (10.231.0.1 in `a`, 10.231.0.2 in `b`),
/// removed on drop. Taking `a`'s end down cuts it off without a FIN or a reset: what a
/// host that loses power or its network looks like to the others.
struct Namespaces {
    a: String,
    b: String,
}

impl Namespaces {
    /// None (and why) where namespaces cannot be made: not root, or no `ip`.
    fn new() -> Result<Namespaces, String> {
        let id = std::process::id();
        let (a, b) = (format!("neo{id}a"), format!("neo{id}b"));
        let namespaces = Namespaces { a: a.clone(), b: b.clone() };
        let steps: [&[&str]; 9] = [
            &["netns", "add", &a],
            &["netns", "add", &b],
            &["link", "add", &a, "netns", &a, "type", "veth", "peer", "name", &b, "netns", &b],
            &["-n", &a, "addr", "add", "10.231.0.1/24", "dev", &a],
            &["-n", &b, "addr", "add", "10.231.0.2/24", "dev", &b],
            &["-n", &a, "link", "set", &a, "up"],
            &["-n", &b, "link", "set", &b, "up"],
            &["-n", &a, "link", "set", "lo", "up"],
            &["-n", &b, "link", "set", "lo", "up"],
        ];
        for step in steps {
            let output = Command::new("ip").args(step).output().map_err(|e| e.to_string())?;
            if !output.status.success() {
                return Err(format!("ip {step:?}: {}", String::from_utf8_lossy(&output.stderr)));
            }
        }
        Ok(namespaces)
    }

    /// `neo` run inside namespace `ns`.
    fn neo(ns: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", ns, NEO]);
        command
    }

    fn cut_off_a(&self) {
        let status = Command::new("ip")
            .args(["-n", &self.a, "link", "set", &self.a, "down"])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

#[test]
fn a_primary_cut_off_without_a_fin_is_replaced() {
    let namespaces = match Namespaces::new() {
        Ok(namespaces) => namespaces,
        Err(why) if std::env::var_os("NEO_REQUIRE_NETNS").is_some() => {
            panic!("network namespaces are required here: {why}")
        }
        Err(why) => {
            eprintln!("skipped: network namespaces unavailable: {why}");
            return;
        }
    };
    let directory = tempfile::tempdir().unwrap();
    let mut processes = Processes(Vec::new());
    let master = |ns: &str, bind: &str, extra: &[&str]| {
        let mut command = Namespaces::neo(ns);
        command.args(["master", "--cluster", CLUSTER, "--partitions", "6", "--replicas", "1"]);
        command.args(["--bind", bind]).args(extra);
        let (child, line) = spawn_announcing(&mut command);
        (child, line.trim().rsplit(' ').next().unwrap().to_owned())
    };
    let (primary, first) = master(&namespaces.a, "10.231.0.1:0", &[]);
    processes.0.push(("primary".to_owned(), primary));
    let (secondary, second) = master(&namespaces.b, "10.231.0.2:0", &["--masters", &first]);
    processes.0.push(("secondary".to_owned(), secondary));
    let masters = format!("{first},{second}");
    for host in ["h1", "h2"] {
        let child = Namespaces::neo(&namespaces.b)
            .args(["storage", "--cluster", CLUSTER, "--master", &masters, "--host", host])
            .args(["--bind", "10.231.0.2:0", "--data"])
            .arg(directory.path().join(host))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        processes.0.push((host.to_owned(), child));
    }
    let ctl = |words: &[&str]| {
        let output = Namespaces::neo(&namespaces.b)
            .args(["ctl", "--cluster", CLUSTER, "--master", &masters])
            .args(words)
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let until = |what: &str, accept: &dyn Fn(&str) -> bool, words: &[&str]| {
        // A vanished host is noticed by keepalive (~10 s) and connects to it time out (5 s):
        // more patience than on loopback.
        let deadline = Instant::now() + 3 * PATIENCE;
        loop {
            let text = ctl(words);
            if accept(&text) {
                return;
            }
            assert!(Instant::now() < deadline, "never saw {what}; last output:\n{text}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    until(
        "pending storages",
        &|text| text.lines().filter(|l| l.contains("STORAGE PENDING")).count() == 2,
        &["print", "node"],
    );
    ctl(&["start"]);
    until("RUNNING", &|text| text == "RUNNING\n", &["print", "cluster"]);
    let table = ctl(&["print", "pt"]);

    namespaces.cut_off_a();
    until(
        "the secondary as primary",
        &|text| text == format!("M1 {second}\n"),
        &["print", "primary"],
    );
    until("RUNNING after the take-over", &|text| text == "RUNNING\n", &["print", "cluster"]);
    assert_eq!(ctl(&["print", "pt"]), table, "the same table came back");
}

/// The CPUs each thread of `pid` whose name starts with `prefix` may run on
/// (`Cpus_allowed_list`).
fn thread_cpus(pid: u32, prefix: &str) -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    let mut found = Vec::new();
    for task in tasks.flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else { continue };
        let field = |key: &str| {
            status.lines().find_map(|l| l.strip_prefix(key)).map(|v| v.trim().to_owned())
        };
        if field("Name:").is_some_and(|name| name.starts_with(prefix)) {
            found.extend(field("Cpus_allowed_list:"));
        }
    }
    found
}

/// `--cpus` pins each storage core's executor to its CPU; a list that does not give one
/// CPU per core, or a CPU the host lacks, is refused with a clear error.
#[test]
fn storage_cores_are_pinned_to_the_cpus_given() {
    let directory = tempfile::tempdir().unwrap();
    let data = directory.path().join("h1");
    let refused = |extra: &[&str]| {
        let output = Command::new(NEO)
            .args(["storage", "--cluster", "neo-test", "--master", "127.0.0.1:1", "--data"])
            .arg(&data)
            .args(extra)
            .output()
            .unwrap();
        assert!(!output.status.success());
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let text = refused(&["--cores", "2", "--cpus", "0"]);
    assert!(text.contains("--cpus lists 1 CPUs for 2 cores"), "{text}");
    let text = refused(&["--cpus", "100000"]);
    assert!(text.contains("CPU 100000"), "{text}");

    let mut storage = Command::new(NEO)
        .args(["storage", "--cluster", "neo-test", "--master", "127.0.0.1:1", "--data"])
        .arg(&data)
        .args(["--cpus", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    // The executor's thread (glommio names it storage-0-ID; its blocking-task thread has
    // the same name and stays unpinned).
    loop {
        let cpus = thread_cpus(storage.id(), "storage-0");
        if cpus.iter().any(|c| c == "0") {
            break;
        }
        assert!(Instant::now() < deadline, "no storage thread pinned to CPU 0: {cpus:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = storage.kill();
    let _ = storage.wait();
}

/// Host names are accepted wherever an address is (resolved at start); a name that does
/// not resolve is a clear error.
#[test]
fn host_names_are_accepted_for_addresses() {
    let directory = tempfile::tempdir().unwrap();
    let mut processes = Processes(Vec::new());
    let master = start_master(&mut processes, "localhost:0");
    let port = master.rsplit(':').next().unwrap();
    let by_name = format!("localhost:{port}");
    start_storage(&mut processes, &by_name, &directory.path().join("h1"), "h1");
    wait_for(&by_name, &["print", "node"], "h1 pending", |t| t.contains("PENDING"));
    assert_eq!(ctl_text(&by_name, &["start"]), "ok\n");
    wait_for(&by_name, &["print", "cluster"], "RUNNING", |t| t == "RUNNING\n");
    let output = Command::new(NEO)
        .args(["ctl", "--cluster", CLUSTER, "--master", "no-such-host.invalid:1"])
        .args(["print", "cluster"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(text.contains("cannot resolve \"no-such-host.invalid:1\""), "{text}");
}

/// Every option of every command says what it is for, and `neo --help` names `--config`.
#[test]
fn every_option_has_help_text() {
    let help = |words: &[&str]| {
        let output = Command::new(NEO).args(words).arg("--help").output().unwrap();
        assert!(output.status.success());
        String::from_utf8(output.stdout).unwrap()
    };
    assert!(help(&[]).contains("--config FILE"));
    assert!(help(&["ctl"]).contains("Exit codes"));
    for command in ["master", "storage", "cluster", "admin", "pack", "ctl"] {
        let text = help(&[command]);
        let lines: Vec<&str> = text.lines().collect();
        for (index, line) in lines.iter().enumerate() {
            let Some(option) = line.trim_start().strip_prefix("--") else { continue };
            let name = option.split_whitespace().next().unwrap();
            // Help on the same line (after two spaces past the name), or on the next.
            let same_line = option.split("  ").skip(1).any(|part| !part.trim().is_empty());
            let next_line = lines.get(index + 1).is_some_and(|next| {
                next.starts_with("          ") && !next.trim_start().starts_with('-')
            });
            assert!(same_line || next_line, "neo {command} --{name} has no help text:\n{text}");
        }
    }
}

/// A storage restarted before the master saw its old connection close (here: the old
/// process stopped with SIGSTOP, its connection open) is told to try again, and gets in
/// once the old connection is gone, instead of exiting.
#[test]
fn a_storage_back_before_its_old_connection_closed_retries() {
    let directory = tempfile::tempdir().unwrap();
    let (mut processes, master) = running_cluster(directory.path(), &["h1", "h2"]);
    processes.signal("h1", libc::SIGSTOP);
    // The same node (same id, same data) in a second directory: the lock of the first
    // does not stop it, the master's view of the first does.
    let copy = directory.path().join("h1-again");
    std::fs::create_dir(&copy).unwrap();
    for entry in std::fs::read_dir(directory.path().join("h1")).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap() != "LOCK" {
            std::fs::copy(&path, copy.join(path.file_name().unwrap())).unwrap();
        }
    }
    start_storage(&mut processes, &master, &copy, "h1-again");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(processes.exited("h1-again"), None, "the second one waits, it does not exit");
    processes.kill("h1");
    wait_for(&master, &["print", "node"], "two running storages", |text| {
        text.lines().filter(|l| l.contains("STORAGE RUNNING")).count() == 2
    });
    assert_eq!(processes.exited("h1-again"), None);
}
