//! Transactions through a real cluster: a master and storages started with the `neo`
//! binary on 127.0.0.1, the Rust client in this process.

mod common;

use std::path::Path;
use std::sync::{Arc, Barrier, Mutex};

use bytes::Bytes;
use engine::client::{Client, ClientError, ClientOptions, TransactionMeta};
use wire::{Message, Oid, Tid};

use common::*;

fn client(master: &str) -> Client {
    let masters = master.split(',').map(|m| m.parse().unwrap()).collect();
    Client::connect(ClientOptions::new(CLUSTER, masters)).unwrap()
}

fn meta(description: &str) -> TransactionMeta {
    TransactionMeta {
        user: Bytes::from_static(b"tests"),
        description: Bytes::copy_from_slice(description.as_bytes()),
        extension: Bytes::new(),
    }
}

/// Commits `writes` (oid, base serial, data) in one transaction; conflicts are an error.
fn commit(client: &Client, writes: &[(Oid, Tid, &[u8])]) -> Result<Tid, String> {
    let mut transaction = client.tpc_begin(None).map_err(|e| e.to_string())?;
    for &(oid, serial, data) in writes {
        transaction.store(oid, serial, Bytes::copy_from_slice(data)).map_err(|e| e.to_string())?;
    }
    let conflicts = transaction.vote(&meta("commit")).map_err(|e| e.to_string())?;
    if !conflicts.is_empty() {
        return Err(format!("conflicts: {conflicts:?}"));
    }
    transaction.finish(|_| {}).map_err(|e| e.to_string())
}

/// `commit`, retried on conflicts until `PATIENCE` runs out (a lock held by a vanished
/// client must be released by then).
fn commit_eventually(client: &Client, writes: &[(Oid, Tid, &[u8])]) -> Tid {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        match commit(client, writes) {
            Ok(tid) => return tid,
            Err(error) => {
                assert!(std::time::Instant::now() < deadline, "never committed: {error}");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }
}

/// What an invalidation callback saw: each commit's tid and oids.
type Invalidations = Vec<(Tid, Vec<Oid>)>;

fn counter(loaded: &[u8]) -> u64 {
    u64::from_le_bytes(loaded.try_into().expect("8-byte counter"))
}

#[test]
fn commit_load_history_and_invalidations() {
    let directory = tempfile::tempdir().unwrap();
    let (_processes, master) = running_cluster(directory.path(), &["h1", "h2"]);
    let writer = client(&master);
    let reader = client(&master);
    let seen: Arc<Mutex<Invalidations>> = Arc::default();
    {
        let seen = Arc::clone(&seen);
        reader.set_invalidation_callback(Box::new(move |tid, oids| {
            seen.lock().unwrap().push((tid, oids.to_vec()));
        }));
    }
    assert_eq!(writer.last_transaction(), None, "a new database");
    let oids = writer.new_oids(3).unwrap();
    assert_eq!(oids.len(), 3);
    // One at a time (from batches): never an oid handed out before, by any client.
    let singles: Vec<Oid> = (0..150).map(|_| writer.new_oid().unwrap()).collect();
    let from_reader = reader.new_oid().unwrap();
    let mut all: Vec<Oid> = oids.iter().chain(&singles).copied().collect();
    all.push(from_reader);
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 3 + 150 + 1, "an oid was handed out twice");
    let (a, b, c) = (oids[0], oids[1], oids[2]);
    assert!(matches!(reader.load(a), Err(ClientError::OidDoesNotExist(_))));

    let mut published = None;
    let mut transaction = writer.tpc_begin(None).unwrap();
    let ttid = transaction.ttid();
    for (oid, data) in [(a, &b"one"[..]), (b, b"two"), (c, b"three")] {
        transaction.store(oid, Tid::ZERO, Bytes::from_static(data)).unwrap();
    }
    assert!(transaction.vote(&meta("first")).unwrap().is_empty());
    let first = transaction.finish(|tid| published = Some(tid)).unwrap();
    assert_eq!(published, Some(first), "the callback ran with the final tid");
    assert!(first > ttid, "the final tid follows the ttid");
    assert_eq!(writer.last_transaction(), Some(first));
    let loaded = writer.load(b).unwrap();
    assert_eq!((&loaded.data[..], loaded.serial, loaded.next_serial), (&b"two"[..], first, None));

    // A second revision of `a`, and a deletion of `c`, based on the first.
    let second = commit(&writer, &[(a, first, b"one again")]).unwrap();
    let mut transaction = writer.tpc_begin(None).unwrap();
    transaction.delete_object(c, first).unwrap();
    assert!(transaction.vote(&meta("delete")).unwrap().is_empty());
    let third = transaction.finish(|_| {}).unwrap();
    assert!(first < second && second < third);

    // The other client saw the three commits, in order, and reads the newest data.
    assert_eq!(reader.sync().unwrap(), Some(third));
    let invalidations = seen.lock().unwrap().clone();
    assert_eq!(
        invalidations,
        vec![(first, vec![a, b, c]), (second, vec![a]), (third, vec![c])],
        "every commit, in commit order"
    );
    assert_eq!(&reader.load(a).unwrap().data[..], b"one again");
    assert!(reader.load(c).unwrap().data.is_empty(), "a deleted object loads empty");

    // History: load_before and load_serial.
    let before = reader.load_before(a, second).unwrap();
    assert_eq!(
        (&before.data[..], before.serial, before.next_serial),
        (&b"one"[..], first, Some(second))
    );
    assert!(matches!(reader.load_before(a, first), Err(ClientError::OidNotFound(_))));
    assert_eq!(&reader.load_serial(a, first).unwrap().data[..], b"one");
    assert!(matches!(reader.load_serial(a, Tid(first.0 + 1)), Err(ClientError::OidNotFound(_))));

    // A store based on an old serial conflicts, with the current serial to resolve against;
    // storing again on the current one commits.
    let mut transaction = reader.tpc_begin(None).unwrap();
    transaction.store(a, first, Bytes::from_static(b"stale")).unwrap();
    let conflicts = transaction.vote(&meta("stale")).unwrap();
    assert_eq!(conflicts.len(), 1);
    assert_eq!((conflicts[0].oid, conflicts[0].base, conflicts[0].current), (a, first, second));
    transaction.store(a, second, Bytes::from_static(b"resolved")).unwrap();
    assert!(transaction.vote(&meta("resolved")).unwrap().is_empty());
    let fourth = transaction.finish(|_| {}).unwrap();
    assert_eq!(writer.sync().unwrap(), Some(fourth));
    assert_eq!(&writer.load(a).unwrap().data[..], b"resolved", "the cache was invalidated");

    // A big object (its payload is sent from its own buffer, not copied) round trips.
    let big_oid = writer.new_oids(1).unwrap()[0];
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let big_tid = commit(&writer, &[(big_oid, Tid::ZERO, &big)]).unwrap();
    reader.sync().unwrap();
    let loaded = reader.load(big_oid).unwrap();
    assert_eq!((loaded.data.len(), loaded.serial), (big.len(), big_tid));
    assert!(loaded.data[..] == big[..], "the big object came back intact");

    // check_current_serial: a conflict when the object moved on.
    let mut transaction = writer.tpc_begin(None).unwrap();
    transaction.check_current_serial(b, first).unwrap();
    transaction.check_current_serial(a, second).unwrap();
    let conflicts = transaction.vote(&meta("check")).unwrap();
    assert_eq!(conflicts.iter().map(|c| c.oid).collect::<Vec<_>>(), vec![a]);
    transaction.abort();

    // No invalidation reaches a closed client.
    let before_close = seen.lock().unwrap().len();
    reader.close();
    commit(&writer, &[(b, first, b"after close")]).unwrap();
    writer.sync().unwrap();
    assert_eq!(seen.lock().unwrap().len(), before_close, "a callback ran after close");
    assert!(matches!(reader.load(a), Err(ClientError::Closed)));
    writer.close();
}

#[test]
fn object_history_transaction_information_and_tids() {
    let directory = tempfile::tempdir().unwrap();
    let (_processes, master) = running_cluster(directory.path(), &["h1", "h2"]);
    let client = client(&master);
    let oids = client.new_oids(2).unwrap();
    let (a, b) = (oids[0], oids[1]);
    let first = commit(&client, &[(a, Tid::ZERO, b"one"), (b, Tid::ZERO, b"b")]).unwrap();
    let second = commit(&client, &[(a, first, b"three")]).unwrap();
    // Newest first, with data sizes; a count bounds it.
    assert_eq!(client.history(a, 10).unwrap(), vec![(second, 5), (first, 3)]);
    assert_eq!(client.history(a, 1).unwrap(), vec![(second, 5)]);
    assert_eq!(client.history(b, 10).unwrap(), vec![(first, 1)]);
    assert!(matches!(client.history(Oid(1 << 40), 10), Err(ClientError::OidDoesNotExist(_))));
    let info = client.transaction_information(first).unwrap();
    assert_eq!((&info.user[..], &info.description[..]), (&b"tests"[..], &b"commit"[..]));
    let mut changed = info.oids.clone();
    changed.sort();
    assert_eq!(changed, vec![a, b]);
    assert!(!info.packed);
    // Iteration's pages: every partition's tids, merged in order.
    assert_eq!(client.tids_from(Tid::ZERO, Tid::MAX, 100).unwrap(), vec![first, second]);
    assert_eq!(client.tids_from(Tid::ZERO, Tid::MAX, 1).unwrap(), vec![first]);
    assert_eq!(client.tids_from(Tid(first.0 + 1), Tid::MAX, 10).unwrap(), vec![second]);
    assert!(client.tids_from(Tid(second.0 + 1), Tid::MAX, 10).unwrap().is_empty());
    let unknown = client.transaction_information(Tid(first.0 - 1)).unwrap_err();
    assert!(matches!(unknown, ClientError::Refused { code: wire::ErrorCode::TidNotFound, .. }));
}

#[test]
fn undo_takes_the_previous_data_back_or_deletes_a_creation() {
    let directory = tempfile::tempdir().unwrap();
    let (_processes, master) = running_cluster(directory.path(), &["h1", "h2"]);
    let client = client(&master);
    let oids = client.new_oids(2).unwrap();
    let (a, b) = (oids[0], oids[1]);
    let first = commit(&client, &[(a, Tid::ZERO, b"one")]).unwrap();
    let second = commit(&client, &[(a, first, b"two"), (b, Tid::ZERO, b"created")]).unwrap();
    assert_eq!(client.tids_descending(0, 10).unwrap(), vec![second, first], "the undo log");
    // Undo the second transaction: a goes back to the first one's data, b's creation is
    // undone.
    let mut transaction = client.tpc_begin(None).unwrap();
    let mut serials = transaction.undo_serials(second, &[a, b]).unwrap();
    serials.sort_by_key(|s| s.oid);
    let expected = |oid, undo_serial| wire::messages::UndoSerial {
        oid,
        current_serial: second,
        undo_serial,
        is_current: true,
    };
    assert_eq!(serials, vec![expected(a, Some(first)), expected(b, None)]);
    for serial in &serials {
        transaction.store_undo(serial.oid, serial.current_serial, serial.undo_serial).unwrap();
    }
    assert!(transaction.vote(&meta("undo")).unwrap().is_empty());
    let undo = transaction.finish(|_| {}).unwrap();
    let loaded = client.load_serial(a, undo).unwrap();
    assert_eq!((&loaded.data[..], loaded.data_serial), (&b"one"[..], Some(first)));
    assert!(client.load(b).unwrap().data.is_empty(), "a deletion: no data");
    // The undo itself is current for a: undoing the first transaction now restores
    // nothing (its creation), and the object's history shows all three revisions.
    let mut transaction = client.tpc_begin(None).unwrap();
    let serials = transaction.undo_serials(first, &[a]).unwrap();
    assert_eq!(serials[0].current_serial, undo);
    assert!(serials[0].is_current, "the current revision carries the undone one's data");
    assert_eq!(serials[0].undo_serial, None);
    transaction.abort();
    let history: Vec<Tid> = client.history(a, 10).unwrap().into_iter().map(|(t, _)| t).collect();
    assert_eq!(history, vec![undo, second, first]);
}

#[test]
fn load_before_the_next_tid_is_cached_and_invalidated() {
    let directory = tempfile::tempdir().unwrap();
    let (_processes, master) = running_cluster(directory.path(), &["h1"]);
    let (reader, writer) = (client(&master), client(&master));
    let oid = writer.new_oids(1).unwrap()[0];
    let first = commit(&writer, &[(oid, Tid::ZERO, b"one")]).unwrap();
    let next = |client: &Client| Tid(client.sync().unwrap().unwrap().0 + 1);
    // ZODB's read: before the next tid. It fills the cache, which answers the next one.
    let loaded = reader.load_before(oid, next(&reader)).unwrap();
    assert_eq!((&loaded.data[..], loaded.serial, loaded.next_serial), (&b"one"[..], first, None));
    assert_eq!(reader.cached_serial(oid), Some(first));
    let again = reader.load_before(oid, next(&reader)).unwrap();
    assert_eq!((&again.data[..], again.serial), (&b"one"[..], first));
    // Before the object existed: nothing, whatever the cache holds.
    assert!(matches!(reader.load_before(oid, first), Err(ClientError::OidNotFound(_))));
    // Another client commits: the invalidation drops the entry before the reader's
    // snapshot moves past the commit, which it then reads; an old snapshot still gets
    // the old revision with its next serial, and does not fill the cache.
    let second = commit(&writer, &[(oid, first, b"two")]).unwrap();
    let snapshot = next(&reader);
    assert_eq!(reader.cached_serial(oid), None, "invalidated");
    let old = reader.load_before(oid, second).unwrap();
    assert_eq!((&old.data[..], old.serial, old.next_serial), (&b"one"[..], first, Some(second)));
    assert_eq!(reader.cached_serial(oid), None);
    let loaded = reader.load_before(oid, snapshot).unwrap();
    assert_eq!((&loaded.data[..], loaded.serial), (&b"two"[..], second));
    assert_eq!(reader.cached_serial(oid), Some(second));
    // Its own commit drops the entry as the master's answer is read.
    let third = commit(&reader, &[(oid, second, b"three")]).unwrap();
    assert_eq!(reader.cached_serial(oid), None, "invalidated by its own commit");
    assert_eq!(reader.load_before(oid, Tid(third.0 + 1)).unwrap().serial, third);
    assert_eq!(reader.cached_serial(oid), Some(third));
}

#[test]
fn concurrent_increments_are_serializable() {
    concurrent_increments(&["h1", "h2"]);
}

/// With one storage, every transaction's vote goes right behind its stores (and is refused
/// there when a store conflicted).
#[test]
fn concurrent_increments_are_serializable_on_one_storage() {
    concurrent_increments(&["h1"]);
}

fn concurrent_increments(hosts: &[&str]) {
    const COUNTERS: usize = 3;
    const THREADS: usize = 6;
    const INCREMENTS: usize = 15;
    let directory = tempfile::tempdir().unwrap();
    let (_processes, master) = running_cluster(directory.path(), hosts);
    // Two clients, three threads each: threads of one client share its connections.
    let clients = [client(&master), client(&master)];
    let oids = clients[0].new_oids(COUNTERS as u32).unwrap();
    let zero = 0u64.to_le_bytes();
    let writes: Vec<(Oid, Tid, &[u8])> = oids.iter().map(|&o| (o, Tid::ZERO, &zero[..])).collect();
    commit(&clients[0], &writes).unwrap();
    clients[1].sync().unwrap();

    let successes = Arc::new(Mutex::new(vec![0u64; COUNTERS]));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let client = clients[t % 2].clone();
            let (oids, successes) = (oids.clone(), Arc::clone(&successes));
            std::thread::spawn(move || {
                for i in 0..INCREMENTS {
                    let which = (t + i) % COUNTERS;
                    loop {
                        client.sync().unwrap();
                        let current = client.load(oids[which]).unwrap();
                        let value = counter(&current.data) + 1;
                        let mut transaction = client.tpc_begin(None).unwrap();
                        transaction
                            .store(
                                oids[which],
                                current.serial,
                                Bytes::copy_from_slice(&value.to_le_bytes()),
                            )
                            .unwrap();
                        let conflicts = transaction.vote(&meta("increment")).unwrap();
                        if !conflicts.is_empty() {
                            // No resolution here: abort and retry from a fresh read.
                            transaction.abort();
                            continue;
                        }
                        transaction.finish(|_| {}).unwrap();
                        successes.lock().unwrap()[which] += 1;
                        break;
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let reader = client(&master);
    let successes = successes.lock().unwrap().clone();
    assert_eq!(successes.iter().sum::<u64>(), (THREADS * INCREMENTS) as u64);
    // The clients' caches were kept consistent through the concurrent commits: after a
    // sync, what they load (from their cache where they can) is the last committed value.
    for client in &clients {
        client.sync().unwrap();
        for (index, &oid) in oids.iter().enumerate() {
            assert_eq!(counter(&client.load(oid).unwrap().data), successes[index]);
        }
    }
    for (index, &oid) in oids.iter().enumerate() {
        let latest = reader.load(oid).unwrap();
        assert_eq!(counter(&latest.data), successes[index], "counter {index}");
        // The history: every revision is the previous one plus one, serials decreasing.
        let mut revision = latest;
        let mut value = successes[index];
        while value > 0 {
            let previous = reader.load_before(oid, revision.serial).unwrap();
            assert_eq!(previous.next_serial, Some(revision.serial));
            assert!(previous.serial < revision.serial);
            assert_eq!(counter(&previous.data), value - 1, "counter {index} history");
            value -= 1;
            revision = previous;
        }
    }
}

#[test]
fn opposite_store_orders_cannot_deadlock() {
    opposite_store_orders(&["h1", "h2"]);
}

/// One storage: the relocks of deadlock avoidance meet votes sent behind the stores.
#[test]
fn opposite_store_orders_cannot_deadlock_on_one_storage() {
    opposite_store_orders(&["h1"]);
}

fn opposite_store_orders(hosts: &[&str]) {
    let directory = tempfile::tempdir().unwrap();
    let (_processes, master) = running_cluster(directory.path(), hosts);
    let clients = [client(&master), client(&master)];
    let oids = clients[0].new_oids(2).unwrap();
    let zero = 0u64.to_le_bytes();
    commit(&clients[0], &[(oids[0], Tid::ZERO, &zero), (oids[1], Tid::ZERO, &zero)]).unwrap();
    for round in 0..10 {
        let barrier = Arc::new(Barrier::new(2));
        let threads: Vec<_> = (0..2)
            .map(|t| {
                let client = clients[t].clone();
                let (oids, barrier) = (oids.clone(), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    let order = if t == 0 { [oids[0], oids[1]] } else { [oids[1], oids[0]] };
                    let mut attempts = 0;
                    loop {
                        attempts += 1;
                        client.sync().unwrap();
                        let serials: Vec<Tid> =
                            order.iter().map(|&o| client.load(o).unwrap().serial).collect();
                        let mut transaction = client.tpc_begin(None).unwrap();
                        if attempts == 1 {
                            barrier.wait();
                        }
                        for (&oid, &serial) in order.iter().zip(&serials) {
                            let data = Bytes::from(format!("round {round} by {t}"));
                            transaction.store(oid, serial, data).unwrap();
                        }
                        if transaction.vote(&meta("opposite")).unwrap().is_empty() {
                            transaction.finish(|_| {}).unwrap();
                            return attempts;
                        }
                        transaction.abort();
                    }
                })
            })
            .collect();
        for thread in threads {
            assert!(thread.join().unwrap() >= 1);
        }
    }
}

#[test]
fn a_client_lost_mid_commit_releases_its_locks() {
    let directory = tempfile::tempdir().unwrap();
    let (_processes, master) = running_cluster(directory.path(), &["h1"]);
    let good = client(&master);
    let oid = good.new_oids(1).unwrap()[0];
    let first = commit(&good, &[(oid, Tid::ZERO, b"before")]).unwrap();

    // A raw client: begins, stores (taking the object's lock on the storage), and vanishes
    // without aborting, as a killed process would.
    {
        let (mut to_master, mut to_storage, _) = raw_client(&master);
        let Some(Message::AnswerBeginTransaction(begun)) =
            to_master.ask(&wire::AskBeginTransaction { tid: None })
        else {
            panic!("begun")
        };
        let store = store_request(oid, first, begun.ttid, b"never committed");
        let Some(Message::AnswerStoreObject(stored)) = to_storage.ask(&store) else {
            panic!("stored")
        };
        assert_eq!(stored.outcome, wire::StoreOutcome::Locked);
    }
    // The lock is released (the master aborts the lost client's transaction): another
    // client stores the object and commits (its store waits for the older transaction's
    // lock until the abort arrives; retried on a conflict, as an application would).
    let second = commit_eventually(&good, &[(oid, first, b"after")]);
    assert!(second > first);
    let loaded = good.load(oid).unwrap();
    assert_eq!((&loaded.data[..], loaded.serial), (&b"after"[..], second));
    assert_eq!(&good.load_before(oid, second).unwrap().data[..], b"before", "nothing else between");
}

/// What one writer thread saw: the commits acknowledged to it, and how its attempts ended.
#[derive(Debug, Default)]
struct WriterLog {
    /// (value, tid, when) of every commit `finish` acknowledged.
    finished: Vec<(u64, Tid, std::time::Instant)>,
    failures: Vec<String>,
}

/// Writers commit `value` to both objects of their own pair, again and again, while
/// `disturb` breaks the cluster. Afterwards: every acknowledged commit is readable whole
/// (both objects, at its tid), each pair holds one value (no half transaction), and the
/// newest value is at least the last acknowledged one.
fn commits_survive(disturb: impl FnOnce(&mut Processes, &str, &Path), two_masters: bool) {
    const WRITERS: usize = 3;
    let directory = tempfile::tempdir().unwrap();
    let (mut processes, masters) = if two_masters {
        let (processes, first, second) = two_master_cluster(directory.path(), &["h1", "h2"]);
        (processes, format!("{first},{second}"))
    } else {
        running_cluster(directory.path(), &["h1", "h2"])
    };
    let clients = [client(&masters), client(&masters)];
    let oids = clients[0].new_oids(2 * WRITERS as u32).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let client = clients[w % 2].clone();
            let (x, y) = (oids[2 * w], oids[2 * w + 1]);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut log = WriterLog::default();
                let mut value = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // The current state of the pair, whatever the last attempt did.
                    let serials = match (client.load(x), client.load(y)) {
                        (Ok(a), Ok(b)) => {
                            assert_eq!(a.data, b.data, "a half transaction is visible");
                            value = counter(&a.data);
                            (a.serial, b.serial)
                        }
                        (Err(ClientError::OidDoesNotExist(_)), _) if value == 0 => {
                            (Tid::ZERO, Tid::ZERO)
                        }
                        (a, b) => {
                            log.failures.push(format!("load: {a:?} {b:?}"));
                            std::thread::sleep(std::time::Duration::from_millis(20));
                            continue;
                        }
                    };
                    let next = (value + 1).to_le_bytes();
                    let writes = [(x, serials.0, &next[..]), (y, serials.1, &next[..])];
                    match commit(&client, &writes) {
                        Ok(tid) => {
                            value += 1;
                            log.finished.push((value, tid, std::time::Instant::now()));
                        }
                        Err(error) => {
                            log.failures.push(error);
                            std::thread::sleep(std::time::Duration::from_millis(20));
                        }
                    }
                }
                log
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(300));
    disturb(&mut processes, &masters, directory.path());
    // Once every storage is back in service, the writers must go on committing.
    wait_for(&masters, &["print", "node"], "both storages running", |text| {
        text.lines().filter(|l| l.contains("STORAGE") && l.contains("RUNNING")).count() == 2
    });
    let disturbed = std::time::Instant::now();
    std::thread::sleep(std::time::Duration::from_millis(700));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let logs: Vec<WriterLog> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    wait_for(&masters, &["print", "cluster"], "RUNNING", |text| text == "RUNNING\n");

    let reader = client(&masters);
    for (w, log) in logs.iter().enumerate() {
        let (x, y) = (oids[2 * w], oids[2 * w + 1]);
        assert!(
            log.finished.iter().any(|&(_, _, when)| when > disturbed),
            "writer {w} never committed once the cluster was whole again: {log:?}"
        );
        let (a, b) = (reader.load(x).unwrap(), reader.load(y).unwrap());
        assert_eq!(a.data, b.data, "writer {w}: a half transaction is visible");
        assert!(counter(&a.data) >= log.finished.last().unwrap().0, "writer {w} lost a commit");
        for &(value, tid, _) in &log.finished {
            for oid in [x, y] {
                let loaded = reader.load_serial(oid, tid).unwrap();
                assert_eq!(counter(&loaded.data), value, "writer {w}: commit {tid} of {oid}");
            }
        }
    }
}

/// Kills storage `name` with SIGKILL and starts it again on the same data.
fn kill_and_restart_storage(processes: &mut Processes, masters: &str, data: &Path, name: &str) {
    processes.kill(name);
    std::thread::sleep(std::time::Duration::from_millis(300));
    start_storage(processes, masters, &data.join(name), name);
}

#[test]
fn commits_survive_a_storage_killed_at_any_moment() {
    commits_survive(
        |processes, masters, data| kill_and_restart_storage(processes, masters, data, "h2"),
        false,
    );
}

#[test]
fn commits_survive_the_primary_killed_at_any_moment() {
    commits_survive(
        |processes, masters, _| {
            processes.kill("master");
            let second = masters.split(',').nth(1).unwrap();
            wait_for(second, &["print", "cluster"], "RUNNING after take-over", |text| {
                text == "RUNNING\n"
            });
        },
        true,
    );
}

#[test]
fn clients_follow_the_cluster_out_of_operation_and_back() {
    let directory = tempfile::tempdir().unwrap();
    let (mut processes, master) = running_cluster(directory.path(), &["h1"]);
    let client = client(&master);
    let resets = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = Arc::clone(&resets);
    client.set_reset_callback(Box::new(move || {
        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }));
    let oid = client.new_oids(1).unwrap()[0];
    let first = commit(&client, &[(oid, Tid::ZERO, b"before")]).unwrap();
    assert_eq!(resets.load(std::sync::atomic::Ordering::SeqCst), 0);

    // The only storage dies: no readable copy is left, the cluster leaves operation and
    // sends its clients away. It comes back, the cluster runs again by itself, and the same
    // client object goes on (it reconnected and was admitted by the storage again).
    processes.kill("h1");
    wait_for(&master, &["print", "cluster"], "RECOVERING", |text| text == "RECOVERING\n");
    start_storage(&mut processes, &master, &directory.path().join("h1"), "h1");
    wait_for(&master, &["print", "cluster"], "RUNNING again", |text| text == "RUNNING\n");
    let deadline = std::time::Instant::now() + PATIENCE;
    let second = loop {
        match commit(&client, &[(oid, first, b"after")]) {
            Ok(tid) => break tid,
            Err(error) => {
                assert!(std::time::Instant::now() < deadline, "never committed again: {error}");
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    };
    assert!(second > first);
    assert_eq!(&client.load(oid).unwrap().data[..], b"after");
    assert_eq!(&client.load_before(oid, second).unwrap().data[..], b"before");
    // It was told that it reconnected (what it cached may have missed invalidations).
    assert!(resets.load(std::sync::atomic::Ordering::SeqCst) >= 1);
}

#[test]
fn a_client_of_another_cluster_is_refused_at_once() {
    let mut processes = Processes(Vec::new());
    let master = start_master(&mut processes, "127.0.0.1:0");
    let masters = vec![master.parse().unwrap()];
    // The handshake's refusal is final: the client says so instead of waiting for a
    // master that might be starting (which would end in NoMaster).
    let refused = Client::connect(ClientOptions::new("another", masters)).err().unwrap();
    assert!(matches!(refused, ClientError::Protocol(_)), "{refused}");
    assert!(refused.to_string().contains("another cluster"), "{refused}");
}

/// A raw client identified to the master and admitted by storage S1: (master, storage,
/// the client's id).
fn raw_client(master: &str) -> (Peer, Peer, Option<wire::NodeId>) {
    let (to_master, nid, stamp) = client_at_master(master);
    let nodes = ctl_text(master, &["print", "node"]);
    let s1 = nodes.lines().find(|l| l.starts_with("S1")).unwrap().rsplit(' ').next().unwrap();
    let to_storage = admitted_at_storage(s1, nid, stamp);
    (to_master, to_storage, Some(nid))
}

fn store_request(oid: Oid, serial: Tid, ttid: Tid, data: &'static [u8]) -> wire::AskStoreObject {
    wire::AskStoreObject {
        oid,
        serial,
        compression: wire::Compression::None,
        data_crc: crc32fast::hash(data),
        data_serial: None,
        ttid,
        data: wire::Payload(Bytes::from_static(data)),
    }
}

#[test]
fn a_storage_votes_nothing_while_a_store_conflict_is_unresolved() {
    let directory = tempfile::tempdir().unwrap();
    let (_processes, master) = running_cluster(directory.path(), &["h1"]);
    let good = client(&master);
    let oid = good.new_oids(1).unwrap()[0];
    let first = commit(&good, &[(oid, Tid::ZERO, b"one")]).unwrap();
    let second = commit(&good, &[(oid, first, b"two")]).unwrap();
    let (mut to_master, mut to_storage, _) = raw_client(&master);
    let Some(Message::AnswerBeginTransaction(begun)) =
        to_master.ask(&wire::AskBeginTransaction { tid: None })
    else {
        panic!("a ttid")
    };
    let ttid = begun.ttid;
    let vote = wire::AskStoreTransaction {
        ttid,
        user: Bytes::new(),
        description: Bytes::new(),
        extension: Bytes::new(),
        oids: vec![oid],
        pack: None,
    };
    // A store on an old serial conflicts; the vote (which a client may send before it has
    // seen that answer) is refused, and nothing is voted.
    let Some(Message::AnswerStoreObject(stale)) =
        to_storage.ask(&store_request(oid, first, ttid, b"stale"))
    else {
        panic!("a store answer")
    };
    assert_eq!(stale.outcome, wire::StoreOutcome::Conflict(second));
    let Some(Message::Error(refused)) = to_storage.ask(&vote) else { panic!("refused") };
    assert_eq!(refused.code, wire::ErrorCode::Denied);
    assert!(refused.message.as_str().contains("not voted"), "{}", refused.message);
    // Stored again on the current serial, the conflict is resolved: the vote goes through.
    let Some(Message::AnswerStoreObject(resolved)) =
        to_storage.ask(&store_request(oid, second, ttid, b"resolved"))
    else {
        panic!("a store answer")
    };
    assert_eq!(resolved.outcome, wire::StoreOutcome::Locked);
    let Some(Message::AnswerStoreTransaction(_)) = to_storage.ask(&vote) else { panic!("voted") };
    // The raw client goes away without finishing: its transaction is dropped, and the
    // object is free for the others again.
    drop((to_master, to_storage));
    let third = commit_eventually(&good, &[(oid, second, b"three")]);
    assert_eq!(good.load_before(oid, third).unwrap().serial, second, "nothing in between");
}

#[test]
fn storages_refuse_bad_requests_and_drop_what_lost_clients_left() {
    let directory = tempfile::tempdir().unwrap();
    let (_processes, master) = running_cluster(directory.path(), &["h1"]);
    let good = client(&master);
    let oid = good.new_oids(1).unwrap()[0];
    let first = commit(&good, &[(oid, Tid::ZERO, b"before")]).unwrap();
    {
        let (_to_master, mut to_storage, _) = raw_client(&master);
        // Data whose checksum does not match: refused with the reason, nothing stored.
        let mut corrupt = store_request(oid, first, Tid(first.0 + 1), b"corrupt");
        corrupt.data_crc ^= 1;
        let Some(Message::Error(refused)) = to_storage.ask(&corrupt) else {
            panic!("a corrupt store must be refused")
        };
        assert!(refused.message.as_str().contains("checksum"), "{}", refused.message);
        // An object that never existed; a master's request from a client: clear errors.
        let ask = wire::AskObject { oid: Oid(1 << 40), at: None, before: None };
        let Some(Message::Error(missing)) = to_storage.ask(&ask) else { panic!("an error") };
        assert_eq!(missing.code, wire::ErrorCode::OidDoesNotExist);
        let lock = wire::AskLockInformation { ttid: first, tid: first, pack_auto_approved: false };
        let Some(Message::Error(refused)) = to_storage.ask(&lock) else { panic!("an error") };
        assert!(refused.message.as_str().contains("does not serve"), "{}", refused.message);
        // Still serving: a store under a ttid the master never handed out takes the lock,
        // and the client vanishes.
        let fake = store_request(oid, first, Tid(first.0 + 7), b"never begun");
        let Some(Message::AnswerStoreObject(stored)) = to_storage.ask(&fake) else {
            panic!("stored")
        };
        assert_eq!(stored.outcome, wire::StoreOutcome::Locked);
    }
    // The primary reports the client gone; the storage drops its transaction and lock.
    let second = commit_eventually(&good, &[(oid, first, b"after")]);
    assert_eq!(&good.load(oid).unwrap().data[..], b"after");
    assert_eq!(good.load_before(oid, second).unwrap().serial, first, "nothing in between");
}

/// Asserts that the revisions of `oid` in `gone` are packed away and that `kept` is the
/// current one.
fn assert_packed(client: &Client, oid: Oid, gone: &[Tid], kept: Tid, data: &[u8]) {
    for &serial in gone {
        let loaded = client.load_serial(oid, serial);
        assert!(matches!(loaded, Err(ClientError::OidNotFound(_))), "{serial}: {loaded:?}");
    }
    assert_eq!(&client.load_serial(oid, kept).unwrap().data[..], data);
    let current = client.load(oid).unwrap();
    assert_eq!((current.serial, &current.data[..]), (kept, data));
    let history: Vec<Tid> = client.history(oid, 10).unwrap().into_iter().map(|(t, _)| t).collect();
    assert_eq!(history, vec![kept], "the history after the pack");
}

#[test]
fn pack_keeps_the_newest_revisions_on_every_storage_across_restarts() {
    let directory = tempfile::tempdir().unwrap();
    let (mut processes, master) = running_cluster(directory.path(), &["h1", "h2"]);
    let client = client(&master);
    let oids = client.new_oids(2).unwrap();
    let (a, b) = (oids[0], oids[1]);
    let r1 = commit(&client, &[(a, Tid::ZERO, b"1"), (b, Tid::ZERO, b"b")]).unwrap();
    let r2 = commit(&client, &[(a, r1, b"2")]).unwrap();
    let r3 = commit(&client, &[(a, r2, b"3")]).unwrap();
    let mut deletion = client.tpc_begin(None).unwrap();
    deletion.delete_object(b, r1).unwrap();
    assert!(deletion.vote(&meta("delete b")).unwrap().is_empty());
    deletion.finish(|_| {}).unwrap();
    // Nothing is packed before a pack.
    assert_eq!(&client.load_serial(a, r1).unwrap().data[..], b"1");

    // A pack into the future packs up to the last commit: a keeps its newest revision,
    // b (deleted by then) is gone.
    let first = client.pack(Tid::MAX, None, &meta("pack")).unwrap();
    assert_packed(&client, a, &[r1, r2], r3, b"3");
    assert!(matches!(client.load(b), Err(ClientError::OidDoesNotExist(_))));
    let info = client.transaction_information(r1).unwrap();
    assert!(info.packed, "a transaction before the pack tid is marked packed");
    // A pack to an earlier time loses nothing more.
    client.pack(r2, None, &meta("pack again")).unwrap();
    assert_packed(&client, a, &[r1, r2], r3, b"3");

    // With h1 killed, a new revision and a pack that h1 misses: it catches up when it is
    // back (the wait counts it again once it is in service).
    processes.kill("h1");
    wait_for(&master, &["print", "node"], "h1 down", |text| text.contains("DOWN"));
    let r4 = commit_eventually(&client, &[(a, r3, b"4")]);
    let missed = client.pack(Tid::MAX, None, &meta("pack without h1")).unwrap();
    assert!(missed > first);
    assert_packed(&client, a, &[r1, r2, r3], r4, b"4");
    start_storage(&mut processes, &master, &directory.path().join("h1"), "h1");
    wait_for(&master, &["print", "node"], "both storages running", |text| {
        text.lines().filter(|l| l.contains("STORAGE") && l.contains("RUNNING")).count() == 2
    });
    client.wait_for_pack(missed).unwrap();
    client.close();

    // Everything killed and restarted: the packs are durable, and the new master learns
    // the orders back from the storages.
    drop(processes);
    let mut processes = Processes(Vec::new());
    let master = start_master(&mut processes, &master);
    for host in ["h1", "h2"] {
        start_storage(&mut processes, &master, &directory.path().join(host), host);
    }
    wait_for(&master, &["print", "cluster"], "RUNNING after restart", |text| text == "RUNNING\n");
    let client = self::client(&master);
    client.wait_for_pack(missed).unwrap();
    assert_packed(&client, a, &[r1, r2, r3], r4, b"4");
    assert!(matches!(client.load(b), Err(ClientError::OidDoesNotExist(_))));

    // The operator's command: `neo pack`, up to now.
    let r5 = commit(&client, &[(a, r4, b"5")]).unwrap();
    let pack = |args: &[&str]| {
        std::process::Command::new(NEO)
            .args(["pack", "--cluster", CLUSTER])
            .args(args)
            .output()
            .unwrap()
    };
    let packed = pack(&["--master", &master]);
    let said = String::from_utf8_lossy(&packed.stdout);
    assert!(packed.status.success() && said.contains("pack order"), "{said}");
    assert_packed(&client, a, &[r1, r2, r3, r4], r5, b"5");
    // Bad usage says so.
    let bad = pack(&["--master", &master, "--tid", "nonsense"]);
    assert_eq!(bad.status.code(), Some(2), "{}", String::from_utf8_lossy(&bad.stderr));
}
