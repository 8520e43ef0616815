//! Compaction: after a pack, segments holding mostly dead revisions are emptied (their live
//! data and votes relocated to the tail) and deleted; every visible revision, undo and
//! transaction survives, across reopens.

use bytes::Bytes;
use logstore::{LoadError, LogStore, Options, StoreError, TransactionMeta, Value};
use wire::{Compression, Oid, Tid};

const SEGMENT_SIZE: u32 = 16 << 10;

fn options() -> Options {
    Options { segment_size: SEGMENT_SIZE }
}

fn data(tid: u64) -> Vec<u8> {
    (0..1000).map(|i| (i as u64 ^ tid) as u8).collect()
}

fn commit(store: &mut LogStore, tid: u64, oid: u64, value: Value) {
    let ttid = Tid(tid);
    store.store(ttid, Oid(oid), value).unwrap();
    let meta = TransactionMeta {
        user: Bytes::from_static(b"compaction"),
        description: Bytes::from(format!("transaction {tid}")),
        extension: Bytes::new(),
        oids: vec![Oid(oid)],
        pack: None,
    };
    store.vote(ttid, Some(meta)).unwrap();
    store.flush().unwrap();
    store.lock(ttid, ttid).unwrap();
    store.flush().unwrap();
    store.unlock(ttid).unwrap();
}

fn data_value(tid: u64) -> Value {
    let bytes = data(tid);
    Value::Data {
        compression: Compression::None,
        data_crc: crc32fast::hash(&bytes),
        data: Bytes::from(bytes),
    }
}

fn segment_files(directory: &std::path::Path) -> usize {
    std::fs::read_dir(directory)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_str().unwrap().starts_with("segment-"))
        .count()
}

/// Latest data of each of the 10 objects, and the oid 99 undo.
fn check(store: &mut LogStore, last_round: u64) {
    for oid in 0..10u64 {
        let newest = (0..=last_round).rev().find(|round| round % 10 == oid).unwrap();
        let loaded = store.load(Oid(oid), None, None).unwrap();
        assert_eq!(loaded.serial, Tid(1000 + newest));
        assert_eq!(loaded.data.as_ref(), &data(1000 + newest)[..], "oid {oid}");
        assert_eq!(store.history(Oid(oid), 0, 100).unwrap().len(), 1, "packed to one revision");
    }
    let undo = store.load(Oid(99), None, None).unwrap();
    assert_eq!(undo.data_serial, Some(Tid(500)));
    assert_eq!(undo.data.as_ref(), &data(500)[..], "undo data survives pack and compaction");
    // Every transaction's metadata is still there (votes relocated).
    for round in 0..=last_round {
        let info = store.transaction(Tid(1000 + round)).unwrap().expect("transaction kept");
        assert_eq!(
            info.meta.description.as_ref(),
            format!("transaction {}", 1000 + round).as_bytes()
        );
    }
}

#[test]
fn compaction_after_pack_reclaims_segments_and_keeps_everything_visible() {
    let directory = tempfile::tempdir().unwrap();
    let mut store = LogStore::open_directory(directory.path(), options()).unwrap();
    // An object whose only surviving revision is an undo to data written long ago.
    commit(&mut store, 500, 99, data_value(500));
    commit(&mut store, 501, 99, data_value(501));
    commit(&mut store, 502, 99, Value::Undo { data_serial: Tid(500) });
    let last_round = 299;
    for round in 0..=last_round {
        commit(&mut store, 1000 + round, round % 10, data_value(1000 + round));
    }
    store.pack(Tid(1000 + last_round), None).unwrap();
    store.flush().unwrap();
    let before = segment_files(directory.path());
    let report = store.compact().unwrap();
    let after = segment_files(directory.path());
    assert!(before >= 20, "{before} segments");
    assert!(!report.deleted.is_empty(), "{report:?}");
    eprintln!("{before} segments before compaction, {after} after: {report:?}");
    assert!(after < before / 2, "{before} segments before, {after} after: {report:?}");
    check(&mut store, last_round);

    // Reopen: from the checkpoint, with the early segments gone.
    drop(store);
    let mut store = LogStore::open_directory(directory.path(), options()).unwrap();
    assert!(store.recovery_report().index.is_some());
    check(&mut store, last_round);

    // Compacting again is safe (nothing left to move from the first segments).
    store.compact().unwrap();
    check(&mut store, last_round);
    drop(store);

    // Without its index file, a compacted log cannot be rebuilt: a clear error.
    for entry in std::fs::read_dir(directory.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "index") {
            std::fs::remove_file(path).unwrap();
        }
    }
    match LogStore::open_directory(directory.path(), options()) {
        Err(StoreError::Corrupt { reason, .. }) => assert!(reason.contains("replica"), "{reason}"),
        other => panic!("opened a compacted log without its index: {other:?}"),
    }
}

#[test]
fn compaction_keeps_transactions_in_flight_and_their_segments() {
    let directory = tempfile::tempdir().unwrap();
    let mut store = LogStore::open_directory(directory.path(), options()).unwrap();
    // A transaction voted early and left open: its segment must not be compacted away.
    store.store(Tid(10), Oid(7), data_value(10)).unwrap();
    store.vote(Tid(10), None).unwrap();
    store.flush().unwrap();
    for round in 0..100 {
        commit(&mut store, 1000 + round, round % 5, data_value(1000 + round));
    }
    store.pack(Tid(1099), None).unwrap();
    let report = store.compact().unwrap();
    assert!(report.skipped.contains(&0), "{report:?}");
    assert!(!report.deleted.contains(&0));
    store.lock(Tid(10), Tid(2000)).unwrap();
    store.flush().unwrap();
    store.unlock(Tid(10)).unwrap();
    assert_eq!(store.load(Oid(7), None, None).unwrap().data.as_ref(), &data(10)[..]);
    match store.load(Oid(7), None, Some(Tid(2000))) {
        Err(LoadError::OidNotFound(_)) => {}
        other => panic!("{other:?}"),
    }
}
