//! Replicated records: a store fed committed transactions and revisions from another
//! storage serves them as its own (metadata by tid and ttid, data, undos, deletions), keeps
//! them across a replay, a checkpoint and a compaction, and drops what the source lacks.

use bytes::Bytes;
use logstore::{LoadError, LogStore, Options, StoreError, TransactionMeta, Value};
use wire::messages::SerialOids;
use wire::{Compression, Oid, PartitionId, Tid};

const SEGMENT_SIZE: u32 = 16 << 10;

fn options() -> Options {
    Options { segment_size: SEGMENT_SIZE }
}

fn meta(oids: &[u64]) -> TransactionMeta {
    TransactionMeta {
        user: Bytes::from_static(b"replicated"),
        description: Bytes::from_static(b"copied"),
        extension: Bytes::new(),
        oids: oids.iter().map(|&o| Oid(o)).collect(),
        pack: None,
    }
}

fn data(seed: u64) -> Bytes {
    Bytes::from((0..700).map(|i| (i as u64 ^ seed) as u8).collect::<Vec<u8>>())
}

fn replicate_data(store: &mut LogStore, oid: u64, serial: u64) {
    let bytes = data(serial);
    let crc = crc32fast::hash(&bytes);
    store.replicate_object(Oid(oid), Tid(serial), Compression::None, crc, bytes, None).unwrap();
}

/// Two partitions' worth: transactions 10 (oid 2), 20 (oid 2 again, oid 4), 30 (undo of oid
/// 2 to 10's data, resolved here), 40 (undo of oid 4 with its data along), 50 (delete 2).
fn feed(store: &mut LogStore) {
    store.replicate_transaction(Tid(10), Tid(9), false, meta(&[2])).unwrap();
    replicate_data(store, 2, 10);
    store.replicate_transaction(Tid(20), Tid(18), false, meta(&[2, 4])).unwrap();
    replicate_data(store, 2, 20);
    replicate_data(store, 4, 20);
    store.replicate_transaction(Tid(30), Tid(30), false, meta(&[2])).unwrap();
    store
        .replicate_object(Oid(2), Tid(30), Compression::None, 0, Bytes::new(), Some(Tid(10)))
        .unwrap();
    store.replicate_transaction(Tid(40), Tid(40), true, meta(&[4])).unwrap();
    let undo = data(3);
    let crc = crc32fast::hash(&undo);
    store.replicate_object(Oid(4), Tid(40), Compression::None, crc, undo, Some(Tid(3))).unwrap();
    store.replicate_transaction(Tid(50), Tid(50), false, meta(&[2])).unwrap();
    store.replicate_object(Oid(2), Tid(50), Compression::None, 0, Bytes::new(), None).unwrap();
    store.flush().unwrap();
}

fn check(store: &mut LogStore) {
    let info = store.transaction(Tid(20)).unwrap().expect("replicated metadata");
    assert_eq!((info.ttid, info.packed, info.meta.oids.len()), (Tid(18), false, 2));
    assert!(store.transaction(Tid(40)).unwrap().unwrap().packed);
    assert_eq!(store.final_tid(Tid(18)).unwrap(), Some(Tid(20)), "found by its ttid");
    assert_eq!(store.load_serial(Oid(2), Tid(20)).unwrap().data, data(20));
    let undone = store.load_serial(Oid(2), Tid(30)).unwrap();
    assert_eq!((undone.data, undone.data_serial), (data(10), Some(Tid(10))));
    let undone = store.load_serial(Oid(4), Tid(40)).unwrap();
    assert_eq!((undone.data, undone.data_serial), (data(3), Some(Tid(3))));
    match store.load(Oid(2), None, None) {
        Ok(loaded) => assert!(loaded.data.is_empty(), "deleted at 50"),
        Err(error) => panic!("{error}"),
    }
    assert_eq!(store.history(Oid(2), 0, 10).unwrap().len(), 4);
    assert!(store.last_ids().0 >= Some(Tid(50)));
    assert!(store.last_ids().1 >= Some(Oid(4)));
}

fn set_partitions(store: &mut LogStore, partitions: u32) {
    let metadata = logstore::Metadata { partitions, ..store.metadata().clone() };
    store.set_metadata(metadata).unwrap();
}

#[test]
fn replicated_records_survive_replay_checkpoint_and_compaction() {
    let directory = tempfile::tempdir().unwrap();
    let mut store = LogStore::open_directory(directory.path(), options()).unwrap();
    set_partitions(&mut store, 2);
    feed(&mut store);
    check(&mut store);
    assert_eq!(store.last_ids(), (Some(Tid(50)), Some(Oid(4)), Some(Tid(10))));
    assert_eq!(
        store.tids_from(Tid(0), Tid(100), 10, PartitionId(0)).unwrap(),
        vec![Tid(10), Tid(20), Tid(30), Tid(40), Tid(50)]
    );
    assert_eq!(
        store.object_records(PartitionId(0), 10, Tid(0), Tid(100), Oid(0)).unwrap().len(),
        6
    );
    let replicated = store.replicated_revision(Oid(4), Tid(40)).unwrap();
    assert_eq!((replicated.2, replicated.3), (data(3), Some(Tid(3))));
    drop(store);

    let mut store = LogStore::open_directory(directory.path(), options()).unwrap();
    check(&mut store);
    store.checkpoint().unwrap();
    drop(store);
    let mut store = LogStore::open_directory(directory.path(), options()).unwrap();
    check(&mut store);

    // Enough new records to fill segments, then everything old compacted away.
    for round in 0..60u64 {
        replicate_data(&mut store, 6, 100 + round);
    }
    store.flush().unwrap();
    store.pack(Tid(200), Some(vec![Oid(6)])).unwrap();
    store.flush().unwrap();
    store.checkpoint().unwrap();
    let report = store.compact().unwrap();
    assert!(!report.segments.is_empty(), "segments compacted: {report:?}");
    assert!(report.relocated_data > 0 && report.relocated_votes > 0, "{report:?}");
    store.flush().unwrap();
    store.checkpoint().unwrap();
    drop(store);
    let mut store = LogStore::open_directory(directory.path(), options()).unwrap();
    check(&mut store);
    assert_eq!(store.load(Oid(6), None, None).unwrap().data, data(159));
}

#[test]
fn what_the_source_lacks_is_dropped_in_every_layer() {
    let directory = tempfile::tempdir().unwrap();
    let mut store = LogStore::open_directory(directory.path(), options()).unwrap();
    set_partitions(&mut store, 2);
    feed(&mut store);
    // Half in the index file, half in the in-memory delta.
    store.checkpoint().unwrap();
    store.replicate_transaction(Tid(60), Tid(60), false, meta(&[4])).unwrap();
    replicate_data(&mut store, 4, 60);
    let deleted = vec![
        SerialOids { serial: Tid(20), oids: vec![Oid(4)] },
        SerialOids { serial: Tid(60), oids: vec![Oid(4)] },
    ];
    assert!(store.delete_replicated(vec![Tid(40), Tid(60)], deleted).unwrap().is_some());
    assert!(store.delete_replicated(vec![], vec![]).unwrap().is_none(), "nothing to write");
    store.flush().unwrap();
    let gone = |store: &mut LogStore| {
        assert!(store.transaction(Tid(40)).unwrap().is_none());
        assert!(store.transaction(Tid(60)).unwrap().is_none());
        assert!(matches!(store.load_serial(Oid(4), Tid(20)), Err(LoadError::OidNotFound(_))));
        assert!(matches!(store.load_serial(Oid(4), Tid(60)), Err(LoadError::OidNotFound(_))));
        // The rest stays.
        assert_eq!(store.load_serial(Oid(4), Tid(40)).unwrap().data, data(3));
        assert!(store.transaction(Tid(20)).unwrap().is_some());
        assert_eq!(
            store.tids_from(Tid(0), Tid(100), 10, PartitionId(0)).unwrap(),
            vec![Tid(10), Tid(20), Tid(30), Tid(50)]
        );
    };
    gone(&mut store);
    drop(store);
    let mut store = LogStore::open_directory(directory.path(), options()).unwrap();
    gone(&mut store);
    store.checkpoint().unwrap();
    gone(&mut store);
    drop(store);
    let mut store = LogStore::open_directory(directory.path(), options()).unwrap();
    gone(&mut store);
}

#[test]
fn replicated_data_that_does_not_match_its_checksum_is_refused() {
    let directory = tempfile::tempdir().unwrap();
    let mut store = LogStore::open_directory(directory.path(), options()).unwrap();
    let refused = store.replicate_object(Oid(1), Tid(5), Compression::None, 7, data(1), None);
    assert!(matches!(refused, Err(StoreError::Invalid(_))), "{refused:?}");
    assert!(store.replicate_transaction(Tid(5), Tid(6), false, meta(&[1])).is_err());
    // The store is still usable.
    store.store(Tid(9), Oid(1), Value::Delete).unwrap();
}
