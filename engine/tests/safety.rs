//! Safety under crashes and faults, on real processes: `neo` masters and storages on
//! 127.0.0.1 killed with SIGKILL, stopped with SIGSTOP, a writer interrupted by signals,
//! clients given a secondary master first. Every acknowledged commit is journaled by the
//! writers and read back, value by value, after a full restart: none lost, none wrong,
//! none partly applied.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use engine::client::{Client, ClientError, ClientOptions, TransactionMeta};
use wire::{Oid, Tid};

use common::*;

fn connect(masters: &str, tune: impl FnOnce(&mut ClientOptions)) -> Client {
    let masters = masters.split(',').map(|m| m.parse().unwrap()).collect();
    let mut options = ClientOptions::new(CLUSTER, masters);
    tune(&mut options);
    Client::connect(options).unwrap()
}

fn meta() -> TransactionMeta {
    TransactionMeta {
        user: Bytes::from_static(b"safety"),
        description: Bytes::from_static(b"group increment"),
        extension: Bytes::new(),
    }
}

fn value(data: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(data.try_into().ok()?))
}

/// What one writer did to its group.
#[derive(Debug, Default)]
struct Journal {
    /// (tid, value) of every commit `finish` acknowledged, in order.
    acked: Vec<(Tid, u64)>,
    /// Commits whose outcome the client could not learn.
    unknown: usize,
    /// The group's objects seen disagreeing (a half transaction visible).
    torn: Vec<String>,
    /// Failed attempts, by kind.
    failures: std::collections::BTreeMap<String, usize>,
}

impl Journal {
    fn failed(&mut self, what: &str, error: &ClientError) {
        let kind = format!("{what}: {}", error.to_string().split(':').next().unwrap_or(""));
        *self.failures.entry(kind).or_default() += 1;
    }
}

/// Increments every object of `group` together, one transaction per increment, until
/// `stop`: each transaction writes the same counter to every object (in as many partitions,
/// on as many storages), so that a transaction applied in part shows as objects that
/// disagree. Faults are expected: an attempt that fails is tried again from what the
/// cluster holds.
fn write_group(client: Client, group: Vec<Oid>, stop: Arc<AtomicBool>) -> Journal {
    let mut journal = Journal::default();
    let pause = || std::thread::sleep(Duration::from_millis(20));
    'attempts: while !stop.load(Ordering::Relaxed) {
        let mut current = Vec::new();
        for &oid in &group {
            match client.load(oid) {
                Ok(loaded) => current.push((loaded.serial, value(&loaded.data).unwrap_or(0))),
                Err(ClientError::OidDoesNotExist(_)) => current.push((Tid::ZERO, 0)),
                Err(error) => {
                    journal.failed("load", &error);
                    pause();
                    continue 'attempts;
                }
            }
        }
        if current.iter().any(|&(_, v)| v != current[0].1) {
            journal.torn.push(format!("{group:?} read as {current:?}"));
        }
        let next = current.iter().map(|&(_, v)| v).max().unwrap_or(0) + 1;
        let data = Bytes::copy_from_slice(&next.to_le_bytes());
        let mut transaction = match client.tpc_begin(None) {
            Ok(transaction) => transaction,
            Err(error) => {
                journal.failed("begin", &error);
                pause();
                continue;
            }
        };
        for (&oid, &(serial, _)) in group.iter().zip(&current) {
            if let Err(error) = transaction.store(oid, serial, data.clone()) {
                journal.failed("store", &error);
                pause();
                continue 'attempts;
            }
        }
        match transaction.vote(&meta()) {
            Ok(conflicts) if conflicts.is_empty() => {}
            // The snapshot was stale (an attempt whose outcome was unknown committed).
            Ok(_) => {
                *journal.failures.entry("conflict".to_owned()).or_default() += 1;
                let _ = client.sync();
                continue;
            }
            Err(error) => {
                journal.failed("vote", &error);
                pause();
                continue;
            }
        }
        match transaction.finish(|_| {}) {
            Ok(tid) => journal.acked.push((tid, next)),
            Err(error) => {
                if matches!(error, ClientError::OutcomeUnknown { .. }) {
                    journal.unknown += 1;
                }
                journal.failed("finish", &error);
                let _ = client.sync();
                pause();
            }
        }
    }
    journal
}

/// Groups of `size` consecutive new oids: each in as many distinct partitions.
fn groups(client: &Client, count: usize, size: usize) -> Vec<Vec<Oid>> {
    let oids = client.new_oids((count * size) as u32).unwrap();
    oids.chunks(size).map(<[Oid]>::to_vec).collect()
}

/// Reads back what the writers journaled and fails with every problem found: an
/// acknowledged commit missing or holding another value on any object of its group, its
/// transaction's metadata missing, a group whose objects' histories differ (a transaction
/// visible on some objects only), objects that disagree, a final value below the last
/// acknowledged one.
fn check_journals(client: &Client, groups: &[Vec<Oid>], journals: &[Journal]) {
    let mut problems = Vec::new();
    let mut acked = 0;
    for (group, journal) in groups.iter().zip(journals) {
        problems.extend(journal.torn.iter().map(|t| format!("torn read: {t}")));
        acked += journal.acked.len();
        for &(tid, expected) in &journal.acked {
            for &oid in group {
                match client.load_serial(oid, tid) {
                    Ok(loaded) if value(&loaded.data) == Some(expected) => {}
                    Ok(loaded) => problems.push(format!(
                        "wrong: {oid} at {tid} holds {:?}, acknowledged {expected}",
                        value(&loaded.data)
                    )),
                    Err(error) => {
                        problems.push(format!("lost: {oid} at {tid} (value {expected}): {error}"))
                    }
                }
            }
        }
        let histories: Vec<BTreeSet<Tid>> = group
            .iter()
            .map(|&oid| match client.history(oid, 100_000) {
                Ok(history) => history.into_iter().map(|(serial, _)| serial).collect(),
                Err(error) => {
                    problems.push(format!("history of {oid}: {error}"));
                    BTreeSet::new()
                }
            })
            .collect();
        for (oid, history) in group.iter().zip(&histories) {
            let missing: Vec<&Tid> = histories[0].symmetric_difference(history).collect();
            if !missing.is_empty() {
                problems.push(format!(
                    "partial: {oid} and {} differ at {missing:?} (transactions applied in part)",
                    group[0]
                ));
            }
        }
        for &tid in &histories[0] {
            match client.transaction_information(tid) {
                Ok(info) if group.iter().all(|oid| info.oids.contains(oid)) => {}
                Ok(info) => problems.push(format!("metadata of {tid} lists {:?}", info.oids)),
                Err(error) => problems.push(format!("metadata of {tid} lost: {error}")),
            }
        }
        let latest: Vec<Option<u64>> =
            group.iter().map(|&oid| client.load(oid).ok().and_then(|l| value(&l.data))).collect();
        if latest.iter().any(|v| *v != latest[0]) {
            problems.push(format!("group {group:?} disagrees: {latest:?}"));
        }
        let last = journal.acked.last().map_or(0, |&(_, v)| v);
        if latest[0].unwrap_or(0) < last {
            problems.push(format!("group {group:?} at {:?}, below acknowledged {last}", latest[0]));
        }
    }
    assert!(acked > 0, "no commit was ever acknowledged: {journals:?}");
    assert!(
        problems.is_empty(),
        "{} problems over {acked} acknowledged commits:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// How a kill loop disturbs the cluster.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Victims {
    Storages,
    StoragesAndPrimary,
    /// Storages, each killed only once the table is up to date again (replication caught
    /// up); at the end every cell is read, one by one.
    StoragesCaughtUp,
}

/// A cluster of three storages (and one or two masters) under `writers` writers, each
/// incrementing its own group of `group_size` objects, while a storage (or the primary) is
/// killed with SIGKILL and restarted `cycles` times; then everything is killed and started
/// again, and every acknowledged commit is read back.
fn kill_loop(test: &str, replicas: u32, victims: Victims, cycles: usize, writers: usize) {
    let directory = tempfile::tempdir().unwrap();
    let data = directory.path();
    let hosts = ["h1", "h2", "h3"];
    let mut processes = Processes(Vec::new());
    let replicas_text = replicas.to_string();
    let base = ["--replicas", replicas_text.as_str(), "--storage-timeout", "5"];
    let first = start_master_with(&mut processes, "m1", &base);
    let mut masters_list = vec![first.clone()];
    if victims == Victims::StoragesAndPrimary {
        let mut options = base.to_vec();
        options.extend(["--masters", first.as_str()]);
        masters_list.push(start_master_with(&mut processes, "m2", &options));
    }
    let masters = masters_list.join(",");
    start_storages_and_run(&mut processes, &masters, data, &hosts);

    let client = connect(&masters, |_| {});
    let groups = groups(&client, writers, 4);
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = groups
        .iter()
        .map(|group| {
            let (client, group, stop) = (client.clone(), group.clone(), Arc::clone(&stop));
            std::thread::spawn(move || write_group(client, group, stop))
        })
        .collect();

    let mut random = Random::new(test);
    // The primary is m1 until it is killed; a killed master comes back as a secondary.
    let mut primary = 0;
    for cycle in 0..cycles {
        std::thread::sleep(Duration::from_millis(random.between(50, 300)));
        let kill_master =
            victims == Victims::StoragesAndPrimary && random.between(0, 3) == 0 && cycle > 0;
        if kill_master {
            let name = ["m1", "m2"][primary];
            processes.kill(name);
            std::thread::sleep(Duration::from_millis(random.between(100, 900)));
            let other = masters_list[1 - primary].clone();
            let bind = masters_list[primary].clone();
            start_master_with(
                &mut processes,
                name,
                &[&base[..], &["--bind", bind.as_str(), "--masters", other.as_str()]].concat(),
            );
            primary = 1 - primary;
        } else {
            if victims == Victims::StoragesCaughtUp {
                wait_for(&masters, &["print", "pt"], "every cell up to date", |text| {
                    let cells = grid(text).join("");
                    !cells.contains('O') && !cells.contains('F')
                });
            }
            let host = hosts[random.between(0, hosts.len() as u64) as usize];
            processes.kill(host);
            std::thread::sleep(Duration::from_millis(random.between(100, 900)));
            start_storage(&mut processes, &masters, &data.join(host), host);
        }
    }
    // Whole again: the writers go on, then stop.
    wait_for(&masters, &["print", "cluster"], "RUNNING after the kill loop", |text| {
        text == "RUNNING\n"
    });
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let journals: Vec<Journal> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    client.close();
    eprintln!(
        "{test}: {} acknowledged, {} unknown; failures {:?}",
        journals.iter().map(|j| j.acked.len()).sum::<usize>(),
        journals.iter().map(|j| j.unknown).sum::<usize>(),
        journals.iter().map(|j| &j.failures).collect::<Vec<_>>()
    );

    // A full crash and restart: every process killed, then started again.
    for name in ["m1", "m2", "h1", "h2", "h3"] {
        if processes.has(name) {
            processes.kill(name);
        }
    }
    for (index, bind) in masters_list.iter().enumerate() {
        let mut options = base.to_vec();
        options.extend(["--bind", bind.as_str()]);
        if masters_list.len() > 1 {
            options.extend(["--masters", masters_list[1 - index].as_str()]);
        }
        start_master_with(&mut processes, ["m1", "m2"][index], &options);
    }
    for host in hosts {
        start_storage(&mut processes, &masters, &data.join(host), host);
    }
    wait_for(&masters, &["print", "cluster"], "RUNNING after a full restart", |text| {
        text == "RUNNING\n"
    });
    let reader = connect(&masters, |_| {});
    check_journals(&reader, &groups, &journals);
    if victims == Victims::StoragesCaughtUp {
        wait_for(&masters, &["print", "pt"], "every cell up to date", |text| {
            !grid(text).join("").contains('O')
        });
        check_every_cell(&masters, &groups, &journals);
        // And the replica check finds the copies alike (data included).
        let output = ctl(&masters, &["check"]);
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success() && text.ends_with("the replicas match\n"), "{text}");
    }
}

/// Reads every acknowledged commit from every cell that holds its objects, one storage at
/// a time (a raw client identified to the master asks each storage directly).
fn check_every_cell(masters: &str, groups: &[Vec<Oid>], journals: &[Journal]) {
    use wire::Message;
    let master = masters.split(',').next().unwrap();
    let table = ctl_text(master, &["print", "pt"]);
    let nodes = ctl_text(master, &["print", "node"]);
    // Kept open: the storages admit the raw client only while the master knows it.
    let (_to_master, raw, stamp) = client_at_master(master);
    let mut problems = Vec::new();
    let mut read = 0;
    for row in grid(&table) {
        let (nid, letters) = row.split_once(' ').unwrap();
        let letters = letters.trim();
        let address = nodes
            .lines()
            .find(|l| l.starts_with(&format!("{nid} ")))
            .and_then(|l| l.rsplit(' ').next())
            .unwrap()
            .to_owned();
        let mut storage = admitted_at_storage(&address, raw, stamp);
        for (group, journal) in groups.iter().zip(journals) {
            for &oid in group {
                let partition = (oid.0 % letters.len() as u64) as usize;
                if letters.as_bytes()[partition] != b'U' {
                    continue;
                }
                for &(tid, expected) in &journal.acked {
                    let ask = wire::AskObject { oid, at: Some(tid), before: None };
                    read += 1;
                    match storage.ask(&ask) {
                        Some(Message::AnswerObject(object))
                            if object.serial == tid && value(&object.data.0) == Some(expected) => {}
                        other => problems.push(format!("{nid}: {oid} at {tid}: {other:?}")),
                    }
                }
            }
        }
    }
    assert!(read > 0, "nothing read");
    assert!(
        problems.is_empty(),
        "{} of {read} reads wrong:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// The kill loop that lost 5 acknowledged commits of 50,119 (the master answered clients
/// whose transaction no readable cell had locked): replicas 1, a random storage killed and
/// restarted 100 times.
#[test]
fn no_acknowledged_commit_is_lost_in_a_storage_kill_loop_with_replicas() {
    kill_loop("replicas 1", 1, Victims::Storages, 100, 2);
}

/// The same with replicas 0: every kill takes partitions' only copy, the cluster goes back
/// to RECOVERING each time, and the writers retry until it runs again.
#[test]
fn no_acknowledged_commit_is_lost_in_a_storage_kill_loop_without_replicas() {
    kill_loop("replicas 0", 0, Victims::Storages, 100, 2);
}

/// Groups of four objects spread over partitions and storages, incremented together by
/// three writers, while storages and the primary master are killed: every group agrees,
/// holds every acknowledged value, and no transaction is visible in part.
#[test]
fn transactions_stay_atomic_when_storages_and_the_primary_are_killed() {
    kill_loop("atomicity", 1, Victims::StoragesAndPrimary, 60, 3);
}

/// The kill loop with replication: a random storage killed and restarted 50 times, each
/// time once every cell is up to date again; every acknowledged commit then reads back
/// from every cell, and `ctl check` finds the copies alike.
#[test]
fn every_cell_holds_every_commit_after_a_kill_loop_with_catch_up() {
    kill_loop("catch-up", 1, Victims::StoragesCaughtUp, 50, 2);
}

/// The cells of the table, as `ctl print pt` shows them (one letter per partition).
fn cells(masters: &str) -> String {
    grid(&ctl_text(masters, &["print", "pt"])).join("\n")
}

extern "C" fn ignore_signal(_: libc::c_int) {}

/// A writer interrupted by a storm of signals (as Python's handlers leave a blocking call:
/// EINTR) commits every transaction, and no storage is taken for failed.
#[test]
fn signals_delivered_to_a_committing_thread_fail_nothing() {
    let directory = tempfile::tempdir().unwrap();
    let (_processes, master) = running_cluster(directory.path(), &["h1", "h2"]);
    let before = cells(&master);
    assert!(!before.contains('O'), "{before}");
    // A handler without SA_RESTART: each signal interrupts the blocking call it lands in.
    // SAFETY: installing a handler that does nothing, for a signal only this test sends.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = ignore_signal as *const () as usize;
        action.sa_flags = 0;
        libc::sigemptyset(&mut action.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGUSR2, &action, std::ptr::null_mut()), 0);
    }
    let client = connect(&master, |_| {});
    let group = groups(&client, 1, 3).remove(0);
    let (sender, receiver) = std::sync::mpsc::channel();
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (client, group, done) = (client.clone(), group.clone(), Arc::clone(&done));
        std::thread::spawn(move || {
            // SAFETY: pthread_self has no preconditions.
            sender.send(unsafe { libc::pthread_self() } as usize).unwrap();
            let mut committed = Vec::new();
            let mut serials = vec![Tid::ZERO; group.len()];
            for value in 1..=300u64 {
                let data = Bytes::copy_from_slice(&value.to_le_bytes());
                let mut transaction = client.tpc_begin(None).expect("begin");
                for (&oid, &serial) in group.iter().zip(&serials) {
                    transaction.store(oid, serial, data.clone()).expect("store");
                }
                assert_eq!(transaction.vote(&meta()).expect("vote"), vec![]);
                let tid = transaction.finish(|_| {}).expect("finish");
                assert_eq!(client.load(group[0]).expect("load").serial, tid);
                serials = vec![tid; group.len()];
                committed.push(tid);
            }
            done.store(true, Ordering::Release);
            committed
        })
    };
    let thread = receiver.recv().unwrap() as libc::pthread_t;
    let mut signals = 0;
    while !done.load(Ordering::Acquire) && !writer.is_finished() {
        // SAFETY: the writer thread is alive until `done`, and handles SIGUSR2.
        unsafe { libc::pthread_kill(thread, libc::SIGUSR2) };
        signals += 1;
        std::thread::sleep(Duration::from_micros(300));
    }
    let committed = writer.join().unwrap();
    assert_eq!(committed.len(), 300);
    assert!(signals > 100, "the storm was too small to mean anything: {signals}");
    let after = cells(&master);
    assert_eq!(after, before, "no cell may go out of date ({signals} signals)");
}

/// An object too big to send fails its store at once, with the reason; the storages are
/// fine and the next transaction commits.
#[test]
fn an_object_too_big_to_send_fails_the_call_and_no_storage() {
    let directory = tempfile::tempdir().unwrap();
    let (_processes, master) = running_cluster(directory.path(), &["h1", "h2"]);
    let before = cells(&master);
    let client = connect(&master, |_| {});
    let oid = client.new_oids(1).unwrap()[0];
    let mut transaction = client.tpc_begin(None).unwrap();
    let huge = Bytes::from(vec![7u8; wire::limits::PAYLOAD_SIZE_MAX + 1]);
    let refused = transaction.store(oid, Tid::ZERO, huge).unwrap_err();
    assert!(matches!(refused, ClientError::Encode(_)), "{refused}");
    transaction.abort();
    assert_eq!(cells(&master), before, "no cell may go out of date");
    // Up to the limit, an object goes through (the log's records take what the protocol
    // carries: a 40 MiB object was refused by the storage at 16 MiB).
    let big = Bytes::from(vec![9u8; 40 << 20]);
    let mut transaction = client.tpc_begin(None).unwrap();
    transaction.store(oid, Tid::ZERO, big.clone()).unwrap();
    assert_eq!(transaction.vote(&meta()).unwrap(), vec![]);
    let tid = transaction.finish(|_| {}).unwrap();
    let reader = connect(&master, |options| options.cache_size = 0);
    let loaded = reader.load(oid).unwrap();
    assert_eq!((loaded.serial, loaded.data == big), (tid, true));
    assert_eq!(cells(&master), before, "no cell may go out of date");
}

/// A second master on an address in use, or a second storage on a data directory in use,
/// is refused at once with the reason; the first goes on (glommio's listeners took the
/// address with SO_REUSEPORT, and the kernel split connections between the two masters).
#[test]
fn a_node_started_twice_is_refused() {
    let directory = tempfile::tempdir().unwrap();
    let (mut processes, master) = running_cluster(directory.path(), &["h1"]);
    let twice = std::process::Command::new(NEO)
        .args(["master", "--cluster", CLUSTER, "--bind", &master])
        .output()
        .unwrap();
    assert_eq!(twice.status.code(), Some(2), "{twice:?}");
    assert!(String::from_utf8_lossy(&twice.stderr).contains("cannot listen"), "{twice:?}");
    let twice = std::process::Command::new(NEO)
        .args(["storage", "--cluster", CLUSTER, "--master", &master, "--host", "h9", "--data"])
        .arg(directory.path().join("h1"))
        .output()
        .unwrap();
    assert!(!twice.status.success(), "{twice:?}");
    assert!(String::from_utf8_lossy(&twice.stderr).contains("in use"), "{twice:?}");
    // The first ones serve on.
    assert_eq!(ctl_text(&master, &["print", "cluster"]), "RUNNING\n");
    let client = connect(&master, |_| {});
    let oid = client.new_oids(1).unwrap()[0];
    let mut transaction = client.tpc_begin(None).unwrap();
    transaction.store(oid, Tid::ZERO, Bytes::from_static(b"one")).unwrap();
    assert_eq!(transaction.vote(&meta()).unwrap(), vec![]);
    transaction.finish(|_| {}).unwrap();
    processes.kill("h1");
}

/// Nobody but a transaction's own client touches it at a storage: a stranger identified as
/// another client, or posing as a storage, cannot store into it nor abort it (after the
/// vote only the master's abort counts), nor pose as its client (whose id is not enough),
/// nor have the master abort it; a client cannot ask what only storages ask. Before, an AbortTransaction from a peer claiming
/// to be S1, sent after the vote, made the acknowledged commit vanish.
#[test]
fn a_stranger_cannot_touch_another_clients_transaction() {
    let directory = tempfile::tempdir().unwrap();
    let (mut processes, master) = running_cluster(directory.path(), &["h1"]);
    let nodes = ctl_text(&master, &["print", "node"]);
    let line = nodes.lines().find(|l| l.starts_with("S1")).expect("S1 listed");
    let storage = line.rsplit(' ').next().unwrap().to_owned();

    let client = connect(&master, |_| {});
    let oid = client.new_oids(1).unwrap()[0];
    let mut transaction = client.tpc_begin(None).unwrap();
    let ttid = transaction.ttid();
    transaction.store(oid, Tid::ZERO, Bytes::from_static(b"mine")).unwrap();

    // A stranger identified to the master as a client of its own ...
    let (mut at_master, stranger, stamp) = client_at_master(&master);
    let mut at_storage = admitted_at_storage(&storage, stranger, stamp);
    // It cannot pose as the transaction's client at the storage: the id is not enough
    // without the stamp the primary gave that client (none, or guesses, are refused alike).
    let victim = client.nid().unwrap();
    for guess in [None, Some(0), Some(1), Some(u64::MAX)] {
        let mut posing = Peer::connect(&storage, wire::NodeType::Client);
        let request =
            wire::RequestIdentification { id_timestamp: guess, ..identification(Some(victim)) };
        let answer = posing.ask(&request);
        let Some(wire::Message::Error(error)) = answer else { panic!("{guess:?}: {answer:?}") };
        assert!(error.message.as_str().contains("not in the node list"), "{}", error.message);
    }
    // Nor have the master abort it at the storage: the master relays a client's abort of
    // its own transactions only.
    at_master.tell(&wire::AbortTransaction { ttid, nids: vec!["S1".parse().unwrap()] });
    // Once the client's stores reached the storage (its vote waits for their answers), the
    // stranger cannot store into the transaction,
    assert_eq!(transaction.vote(&meta()).unwrap(), vec![]);
    let store = wire::AskStoreObject {
        oid,
        serial: Tid::ZERO,
        compression: wire::Compression::None,
        data_crc: crc32fast::hash(b"theirs"),
        data: wire::Payload(Bytes::from_static(b"theirs")),
        data_serial: None,
        ttid,
    };
    let answer = at_storage.ask(&store);
    let Some(wire::Message::Error(error)) = answer else { panic!("{answer:?}") };
    assert_eq!(error.code, wire::ErrorCode::Denied);
    assert!(error.message.as_str().contains(&format!("not {stranger}'s")), "{}", error.message);
    // ... nor pull the partition's data as a replicating storage would,
    let fetch = wire::AskFetchObjects {
        partition: wire::PartitionId(0),
        length: 1000,
        min_tid: Tid::ZERO,
        max_tid: Tid::MAX,
        min_oid: wire::Oid(0),
        have: Vec::new(),
    };
    let answer = at_storage.ask(&fetch);
    let Some(wire::Message::Error(error)) = answer else { panic!("{answer:?}") };
    assert!(error.message.as_str().contains("replicates nothing"), "{}", error.message);
    // ... nor abort it: ignored, as is the abort of a peer posing as the storage S1.
    at_storage.tell(&wire::AbortTransaction { ttid, nids: Vec::new() });
    let mut posing = Peer::connect(&storage, wire::NodeType::Storage);
    let s1: wire::NodeId = "S1".parse().unwrap();
    if let Some(wire::Message::AcceptIdentification(_)) = posing.ask(&identification(Some(s1))) {
        posing.tell(&wire::AbortTransaction { ttid, nids: Vec::new() });
        assert!(matches!(posing.ask(&wire::Ping {}), Some(wire::Message::Pong(_))));
    }
    // The stranger's own ping comes back: its notifications were read before it.
    assert!(matches!(at_storage.ask(&wire::Ping {}), Some(wire::Message::Pong(_))));
    let tid = transaction.finish(|_| {}).unwrap();
    let loaded = client.load(oid).unwrap();
    assert_eq!((loaded.serial, &loaded.data[..]), (tid, &b"mine"[..]));
    client.close();
    processes.kill("h1");
}

/// A storage stopped with SIGSTOP keeps its connections open: commits that need it wait
/// for it only until it is taken for hung (the client's and the master's storage timeout),
/// then go on without it; the master gives it up (DOWN) while it is still stopped. Once it
/// runs again it comes back.
#[test]
fn a_hung_storage_is_given_up_and_commits_go_on() {
    let directory = tempfile::tempdir().unwrap();
    let data = directory.path();
    let mut processes = Processes(Vec::new());
    let master = start_master_with(&mut processes, "master", &["--storage-timeout", "2"]);
    start_storages_and_run(&mut processes, &master, data, &["h1", "h2", "h3"]);
    let client = connect(&master, |options| options.storage_timeout = Duration::from_secs(2));
    let groups = groups(&client, 2, 4);
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = groups
        .iter()
        .map(|group| {
            let (client, group, stop) = (client.clone(), group.clone(), Arc::clone(&stop));
            std::thread::spawn(move || write_group(client, group, stop))
        })
        .collect();
    let reader = connect(&master, |options| options.cache_size = 0);
    let progress = |group: &[Oid]| {
        let _ = reader.sync();
        reader.load(group[0]).ok().and_then(|l| value(&l.data)).unwrap_or(0)
    };
    wait_until("commits before the stop", || progress(&groups[0]) > 5);

    processes.signal("h3", libc::SIGSTOP);
    wait_for(&master, &["print", "node"], "the stopped storage given up", |text| {
        text.lines().filter(|l| l.contains("STORAGE") && l.contains("DOWN")).count() == 1
    });
    // Still stopped: every group moves on.
    for group in &groups {
        let from = progress(group);
        wait_until("commits while a storage is stopped", || progress(group) > from + 5);
    }
    processes.signal("h3", libc::SIGCONT);
    wait_for(&master, &["print", "node"], "the storage back", |text| {
        text.lines().filter(|l| l.contains("STORAGE") && l.contains("RUNNING")).count() == 3
    });
    stop.store(true, Ordering::Relaxed);
    let journals: Vec<Journal> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    check_journals(&reader, &groups, &journals);
}

/// Polls `accept` until it holds, for up to `PATIENCE`.
fn wait_until(what: &str, accept: impl Fn() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !accept() {
        assert!(Instant::now() < deadline, "never saw {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A client given a secondary master first follows its hint to the primary (it used to
/// fail with "unexpected end of file"), and after a failover, with the live secondary
/// still first in its list, it finds the new primary.
#[test]
fn clients_find_the_primary_whatever_the_order_of_their_masters() {
    let directory = tempfile::tempdir().unwrap();
    let mut processes = Processes(Vec::new());
    let first = start_master(&mut processes, "127.0.0.1:0");
    let second = start_master_with(&mut processes, "secondary", &["--masters", &first]);
    let third =
        start_master_with(&mut processes, "third", &["--masters", &format!("{first},{second}")]);
    let all = format!("{first},{second},{third}");
    start_storages_and_run(&mut processes, &all, directory.path(), &["h1", "h2"]);
    // Secondaries first.
    let client = connect(&format!("{second},{third},{first}"), |_| {});
    let oid = client.new_oids(1).unwrap()[0];
    let commit = |serial: Tid, data: &'static [u8]| -> Result<Tid, ClientError> {
        let mut transaction = client.tpc_begin(None)?;
        transaction.store(oid, serial, Bytes::from_static(data))?;
        assert_eq!(transaction.vote(&meta())?, vec![]);
        transaction.finish(|_| {})
    };
    let before = commit(Tid::ZERO, b"before").unwrap();
    processes.kill("master");
    wait_for(&format!("{second},{third}"), &["print", "cluster"], "a new primary", |text| {
        text == "RUNNING\n"
    });
    let deadline = Instant::now() + PATIENCE;
    let after = loop {
        match commit(before, b"after") {
            Ok(tid) => break tid,
            Err(error) => {
                assert!(Instant::now() < deadline, "never committed after the failover: {error}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    assert!(after > before);
    assert_eq!(&client.load(oid).unwrap().data[..], b"after");
}

/// A master, an admin and a storage whose shutdown watch looks at its flag every 50 us
/// (`NEO_SHUTDOWN_POLL_US`): in 8 s that is as many looks as 2 hours of the default 50 ms.
/// Each look used to poll the pending accept, and glommio keeps a waker per poll: after
/// 32767 of them the master panicked, kept its socket and ignored SIGTERM. They stay
/// healthy, serve, and stop cleanly.
#[test]
fn idle_nodes_stay_healthy() {
    let directory = tempfile::tempdir().unwrap();
    let mut processes = Processes(Vec::new());
    let fast = |command: &mut std::process::Command| {
        command.env("NEO_SHUTDOWN_POLL_US", "50");
    };
    let mut command = std::process::Command::new(NEO);
    command.args(["master", "--cluster", CLUSTER, "--bind", "127.0.0.1:0", "--replicas", "0"]);
    fast(&mut command);
    let (child, line) = spawn_announcing(&mut command);
    processes.0.push(("master".to_owned(), child));
    let master = line.trim().rsplit(' ').next().unwrap().to_owned();
    let mut command = std::process::Command::new(NEO);
    command.args(["admin", "--cluster", CLUSTER, "--master", &master, "--bind", "127.0.0.1:0"]);
    fast(&mut command);
    let (child, line) = spawn_announcing(&mut command);
    processes.0.push(("admin".to_owned(), child));
    let admin = line.trim().rsplit(' ').next().unwrap().to_owned();
    let mut command = std::process::Command::new(NEO);
    command
        .args(["storage", "--cluster", CLUSTER, "--master", &master, "--host", "h1", "--data"])
        .arg(directory.path().join("h1"))
        .stdout(std::process::Stdio::null())
        .stderr(node_stderr());
    fast(&mut command);
    processes.0.push(("h1".to_owned(), command.spawn().unwrap()));
    wait_for(&master, &["print", "node"], "a pending storage", |text| text.contains("PENDING"));
    ctl_text(&master, &["start"]);
    wait_for(&master, &["print", "cluster"], "RUNNING", |text| text == "RUNNING\n");
    std::thread::sleep(Duration::from_secs(8));
    // Still serving, through the admin too.
    assert_eq!(ctl_text(&admin, &["print", "cluster"]), "RUNNING\n");
    let client = connect(&master, |_| {});
    let oid = client.new_oids(1).unwrap()[0];
    let mut transaction = client.tpc_begin(None).unwrap();
    transaction.store(oid, Tid::ZERO, Bytes::from_static(b"alive")).unwrap();
    assert_eq!(transaction.vote(&meta()).unwrap(), vec![]);
    transaction.finish(|_| {}).unwrap();
    client.close();
    for name in ["h1", "admin", "master"] {
        processes.signal(name, libc::SIGTERM);
        assert_eq!(wait_exit(&mut processes, name), Some(0), "{name} stops cleanly");
    }
}

/// A panic in any task ends the node's process with a non-zero status, so that a
/// supervisor restarts it (a panicking executor thread used to die alone, leaving the
/// process up and deaf).
#[test]
fn a_panic_ends_the_process() {
    let mut processes = Processes(Vec::new());
    let mut command = std::process::Command::new(NEO);
    command
        .args(["master", "--cluster", CLUSTER, "--bind", "127.0.0.1:0"])
        .env("NEO_TEST_PANIC_AFTER_MS", "200");
    let (child, _) = spawn_announcing(&mut command);
    processes.0.push(("master".to_owned(), child));
    assert_eq!(wait_exit(&mut processes, "master"), Some(101));
}

/// Oids are never handed out twice: not after the cluster went back through recovery (a
/// storage lost with replicas 0), not by a new primary after a failover, not after every
/// process was killed and started again. They used to start again above the highest oid
/// stored, so oids handed out but not yet stored (and once, one already committed by a
/// transaction of the next session) were handed out again.
#[test]
fn no_oid_is_handed_out_twice() {
    let directory = tempfile::tempdir().unwrap();
    let data = directory.path();
    let mut processes = Processes(Vec::new());
    let first = start_master_with(&mut processes, "m1", &["--replicas", "0"]);
    let second = start_master_with(&mut processes, "m2", &["--replicas", "0", "--masters", &first]);
    let masters = format!("{first},{second}");
    start_storages_and_run(&mut processes, &masters, data, &["h1", "h2"]);
    let seen = std::cell::RefCell::new(BTreeSet::<Oid>::new());
    let take = |what: &str, client: &Client, count: u32| {
        let oids = client.new_oids(count).unwrap();
        let mut seen = seen.borrow_mut();
        for oid in &oids {
            assert!(seen.insert(*oid), "{what}: {oid} was handed out before ({seen:?})");
        }
        oids
    };
    let a = connect(&masters, |_| {});
    take("first", &a, 3);
    // A commit in between: its oid is stored, the others are not.
    let stored = take("to store", &a, 1)[0];
    let mut transaction = a.tpc_begin(None).unwrap();
    transaction.store(stored, Tid::ZERO, Bytes::from_static(b"stored")).unwrap();
    assert_eq!(transaction.vote(&meta()).unwrap(), vec![]);
    transaction.finish(|_| {}).unwrap();
    a.close();

    processes.kill("h1");
    wait_for(&masters, &["print", "cluster"], "RECOVERING", |text| text == "RECOVERING\n");
    start_storage(&mut processes, &masters, &data.join("h1"), "h1");
    wait_for(&masters, &["print", "cluster"], "RUNNING", |text| text == "RUNNING\n");
    take("after a recovery", &connect(&masters, |_| {}), 3);

    processes.kill("m1");
    wait_for(&second, &["print", "cluster"], "RUNNING after the failover", |text| {
        text == "RUNNING\n"
    });
    take("from a new primary", &connect(&masters, |_| {}), 3);

    for name in ["m2", "h1", "h2"] {
        processes.kill(name);
    }
    start_master_with(&mut processes, "m1", &["--replicas", "0", "--bind", &first]);
    start_storage(&mut processes, &first, &data.join("h1"), "h1");
    start_storage(&mut processes, &first, &data.join("h2"), "h2");
    wait_for(&first, &["print", "cluster"], "RUNNING after a full restart", |text| {
        text == "RUNNING\n"
    });
    take("after a full restart", &connect(&first, |_| {}), 3);
}
