//! Crash tests on real files: the log is cut at every record boundary and inside records
//! (torn writes, zeros or garbage), or has bytes flipped, and reopened. Every transaction
//! whose lock was durable before the cut must survive whole; nothing partial may appear;
//! damage to durable records must be reported with its segment and offset.

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;
use logstore::limits::{RECORD_HEADER_SIZE, SEGMENT_HEADER_SIZE};
use logstore::{
    LoadError, LogPosition, LogStore, Options, PendingStage, StoreError, TransactionMeta, Value,
};
use wire::{Compression, Oid, Tid};

const SEGMENT_SIZE: u32 = 8 << 10;

fn options() -> Options {
    Options { segment_size: SEGMENT_SIZE }
}

/// A committed transaction of the generated log.
#[derive(Debug, Clone)]
struct Committed {
    ttid: Tid,
    tid: Tid,
    /// End of the lock record: once durable, the transaction must survive.
    lock_end: LogPosition,
    objects: BTreeMap<Oid, Vec<u8>>,
}

fn data(oid: u64, round: u64) -> Vec<u8> {
    let size = 40 + ((oid * 131 + round * 17) % 700) as usize;
    (0..size).map(|i| (i as u64 ^ oid ^ round) as u8).collect()
}

/// Writes a log of committed transactions, each made durable in its own flushes, with the
/// last one locked but not unlocked.
fn build(directory: &Path) -> Vec<Committed> {
    let mut store = LogStore::open_directory(directory, options()).unwrap();
    let mut committed = Vec::new();
    let mut tid = 1u64 << 40;
    for round in 0..40u64 {
        tid += 2;
        let ttid = Tid(tid);
        let mut objects = BTreeMap::new();
        for oid in [round % 5, 5 + round % 3, 9] {
            let bytes = data(oid, round);
            let value = Value::Data {
                compression: Compression::None,
                data_crc: crc32fast::hash(&bytes),
                data: Bytes::from(bytes.clone()),
            };
            store.store(ttid, Oid(oid), value).unwrap();
            objects.insert(Oid(oid), bytes);
        }
        let meta = TransactionMeta {
            user: Bytes::from_static(b"crash"),
            description: Bytes::new(),
            extension: Bytes::new(),
            oids: objects.keys().copied().collect(),
            pack: None,
        };
        store.vote(ttid, Some(meta)).unwrap();
        store.flush().unwrap();
        let final_tid = Tid(tid + 1);
        store.lock(ttid, final_tid).unwrap();
        let lock_end = store.flush().unwrap();
        if round < 39 {
            store.unlock(ttid).unwrap();
        }
        committed.push(Committed { ttid, tid: final_tid, lock_end, objects });
    }
    committed
}

/// Every record's start, in log order, read from the segment files.
fn record_positions(directory: &Path) -> Vec<(LogPosition, usize)> {
    let mut positions = Vec::new();
    for segment in 0.. {
        let path = directory.join(format!("segment-{segment:08}.log"));
        let Ok(bytes) = std::fs::read(&path) else { break };
        let mut offset = SEGMENT_HEADER_SIZE;
        while offset + RECORD_HEADER_SIZE <= bytes.len() {
            let position = u64::from_le_bytes(bytes[offset..offset + 8].try_into().unwrap());
            if position != LogPosition::new(segment, offset as u32).0 {
                break;
            }
            let body =
                u32::from_le_bytes(bytes[offset + 16..offset + 20].try_into().unwrap()) as usize;
            positions.push((LogPosition(position), RECORD_HEADER_SIZE + body));
            offset += RECORD_HEADER_SIZE + body;
        }
    }
    positions
}

fn copy_directory(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// Simulates a crash where nothing at or after `cut` reached the disk: the rest of its
/// segment holds `fill` bytes, later segments hold only their header (or are gone).
/// Returns the first position whose byte actually changed (a zero written over a zero
/// changes nothing).
fn cut(directory: &Path, cut: LogPosition, fill: impl Fn(usize) -> u8) -> LogPosition {
    let mut first_change = None;
    for entry in std::fs::read_dir(directory).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        // Segments only (the directory also holds its LOCK file).
        let Some(segment) = name.strip_prefix("segment-").and_then(|n| n.strip_suffix(".log"))
        else {
            continue;
        };
        let segment: u32 = segment.parse().unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        if segment == cut.segment() {
            for (i, byte) in bytes[cut.offset() as usize..].iter_mut().enumerate() {
                if *byte != fill(i) && first_change.is_none() {
                    first_change = Some(cut.advance(i));
                }
                *byte = fill(i);
            }
        } else if segment > cut.segment() {
            for byte in &mut bytes[SEGMENT_HEADER_SIZE..] {
                *byte = 0;
            }
        }
        std::fs::write(&path, bytes).unwrap();
    }
    first_change.unwrap_or(LogPosition::new(cut.segment() + 1, 0))
}

/// Checks the reopened store: transactions locked before `cut` are whole (committed, or
/// reported locked and then committed as the master would), later ones absent.
fn check_after_cut(store: &mut LogStore, committed: &[Committed], cut: LogPosition) {
    let unfinished: BTreeMap<Tid, PendingStage> = store.unfinished().into_iter().collect();
    for transaction in committed {
        if transaction.lock_end <= cut {
            if let Some(stage) = unfinished.get(&transaction.ttid) {
                assert_eq!(*stage, PendingStage::Locked(transaction.tid), "cut {cut}");
                store.unlock(transaction.ttid).unwrap();
            }
        } else if let Some(stage) = unfinished.get(&transaction.ttid) {
            assert!(
                matches!(stage, PendingStage::Stored | PendingStage::Voted),
                "cut {cut}: {stage:?}"
            );
            store.abort(transaction.ttid).unwrap();
        }
    }
    store.flush().unwrap();
    for transaction in committed {
        let durable = transaction.lock_end <= cut;
        for (oid, bytes) in &transaction.objects {
            match store.load_serial(*oid, transaction.tid) {
                Ok(loaded) => {
                    assert!(
                        durable,
                        "cut {cut}: transaction {} visible though not locked",
                        transaction.tid
                    );
                    assert_eq!(loaded.data.as_ref(), &bytes[..]);
                }
                Err(LoadError::OidNotFound(_) | LoadError::OidDoesNotExist(_)) => {
                    assert!(!durable, "cut {cut}: locked transaction {} lost", transaction.tid);
                }
                Err(other) => panic!("cut {cut}: {other}"),
            }
        }
        let info = store.transaction(transaction.tid).unwrap();
        assert_eq!(info.is_some(), durable, "cut {cut}: metadata of {}", transaction.tid);
    }
    // The reopened store takes new transactions after the cut.
    let ttid = Tid(1 << 50);
    store.store(ttid, Oid(1), Value::Delete).unwrap();
    store.vote(ttid, None).unwrap();
    store.flush().unwrap();
    store.lock(ttid, ttid).unwrap();
    store.flush().unwrap();
    store.unlock(ttid).unwrap();
    store.flush().unwrap();
}

#[test]
fn cut_at_every_record_boundary_and_inside_records() {
    let original = tempfile::tempdir().unwrap();
    let committed = build(original.path());
    let positions = record_positions(original.path());
    assert!(positions.len() > 200, "{} records", positions.len());
    assert!(positions.last().unwrap().0.segment() >= 3, "the log spans several segments");
    let mut cuts = Vec::new();
    for &(position, size) in &positions {
        cuts.push(position);
        cuts.push(position.advance(1));
        cuts.push(position.advance(RECORD_HEADER_SIZE - 1));
        cuts.push(position.advance(size / 2));
        cuts.push(position.advance(size - 1));
    }
    for (index, &point) in cuts.iter().enumerate() {
        let copy = tempfile::tempdir().unwrap();
        copy_directory(original.path(), copy.path());
        // Zeros for most cuts; garbage for some, as a torn write may leave.
        let changed = if index % 3 == 0 {
            cut(copy.path(), point, |i| (i as u8).wrapping_mul(167).wrapping_add(13))
        } else {
            cut(copy.path(), point, |_| 0)
        };
        let damaged =
            positions.iter().find(|&&(p, size)| p <= changed && changed < p.advance(size));
        // A tail that is all zeros from a record boundary on is a clean end; anything else
        // is torn and must be reported.
        let torn_record = damaged.map(|&(record, _)| record).filter(|&record| {
            let path = copy.path().join(format!("segment-{:08}.log", record.segment()));
            std::fs::read(path).unwrap()[record.offset() as usize..].iter().any(|&b| b != 0)
        });
        let mut store = LogStore::open_directory(copy.path(), options())
            .unwrap_or_else(|e| panic!("reopen after cut at {point}: {e}"));
        if let Some(record) = torn_record {
            let torn = store.recovery_report().torn_tail.clone().unwrap_or_else(|| {
                panic!(
                    "cut at {point} damaging record {record} is reported: {:?}",
                    store.recovery_report()
                )
            });
            assert_eq!(LogPosition::new(torn.segment, torn.offset), record);
        }
        check_after_cut(&mut store, &committed, changed);
        // And once more: the repaired log reopens cleanly.
        drop(store);
        let store = LogStore::open_directory(copy.path(), options()).unwrap();
        assert!(store.recovery_report().torn_tail.is_none(), "second reopen after cut at {point}");
    }
}

#[test]
fn damage_to_durable_records_is_reported_not_skipped() {
    let original = tempfile::tempdir().unwrap();
    build(original.path());
    let positions = record_positions(original.path());
    // Every record but those of the last flush (which is followed by nothing that proves
    // it durable) gets a byte flipped, in its header or its body.
    let checked = &positions[..positions.len() - 3];
    for (index, &(position, size)) in checked.iter().enumerate().step_by(3) {
        let copy = tempfile::tempdir().unwrap();
        copy_directory(original.path(), copy.path());
        let path = copy.path().join(format!("segment-{:08}.log", position.segment()));
        let mut bytes = std::fs::read(&path).unwrap();
        let within =
            if index % 2 == 0 { 9 } else { RECORD_HEADER_SIZE + (size - RECORD_HEADER_SIZE) / 2 };
        bytes[position.offset() as usize + within] ^= 0x40;
        std::fs::write(&path, bytes).unwrap();
        match LogStore::open_directory(copy.path(), options()) {
            Err(StoreError::Corrupt { segment, offset, .. }) => {
                assert_eq!((segment, offset), (position.segment(), u64::from(position.offset())));
            }
            Err(other) => panic!("flip in record at {position}: {other}"),
            Ok(_) => panic!("flip in record at {position} was not detected"),
        }
    }
}

#[test]
fn corrupt_object_data_is_never_served() {
    let directory = tempfile::tempdir().unwrap();
    let committed = build(directory.path());
    let target = &committed[3];
    let (&oid, bytes) = target.objects.iter().next().unwrap();
    // Flip a data byte in the segment files, where the object's data is, while the store is
    // open (as a disk might).
    let mut store = LogStore::open_directory(directory.path(), options()).unwrap();
    let mut flipped = false;
    for segment in 0.. {
        let path = directory.path().join(format!("segment-{segment:08}.log"));
        let Ok(mut file_bytes) = std::fs::read(&path) else { break };
        if let Some(at) = file_bytes.windows(bytes.len()).position(|w| w == &bytes[..]) {
            file_bytes[at + bytes.len() / 2] ^= 1;
            std::fs::write(&path, file_bytes).unwrap();
            flipped = true;
            break;
        }
    }
    assert!(flipped);
    match store.load_serial(oid, target.tid) {
        Err(LoadError::Store(StoreError::Corrupt { reason, .. })) => {
            assert!(reason.contains("checksum"))
        }
        other => panic!("corrupt data served: {other:?}"),
    }
}

#[test]
fn crash_while_creating_a_segment() {
    // The very first segment: file allocated, header never written.
    let directory = tempfile::tempdir().unwrap();
    std::fs::write(directory.path().join("segment-00000000.log"), vec![0u8; SEGMENT_SIZE as usize])
        .unwrap();
    let store = LogStore::open_directory(directory.path(), options()).unwrap();
    assert_eq!(store.recovery_report().removed_segments, vec![0]);
    drop(store);
    LogStore::open_directory(directory.path(), options()).unwrap();

    // A later segment: the log's last segment is full and its successor has a torn header.
    let directory = tempfile::tempdir().unwrap();
    let committed = build(directory.path());
    let last = record_positions(directory.path()).last().unwrap().0.segment();
    let mut torn = vec![0u8; SEGMENT_SIZE as usize];
    torn[..5].copy_from_slice(b"NEOrL");
    std::fs::write(directory.path().join(format!("segment-{:08}.log", last + 1)), torn).unwrap();
    let mut store = LogStore::open_directory(directory.path(), options()).unwrap();
    assert_eq!(store.recovery_report().removed_segments, vec![last + 1]);
    check_after_cut(&mut store, &committed, LogPosition(u64::MAX));

    // The last record torn, and its successor created empty (not even a header): a torn
    // tail, not damage (a kill -9 in `kill9.rs` found the empty file made the scan panic).
    let directory = tempfile::tempdir().unwrap();
    let committed = build(directory.path());
    let (position, size) = *record_positions(directory.path()).last().unwrap();
    let path = directory.path().join(format!("segment-{:08}.log", position.segment()));
    let mut bytes = std::fs::read(&path).unwrap();
    let offset = position.offset() as usize;
    bytes[offset + size / 2..offset + size].fill(0);
    std::fs::write(&path, bytes).unwrap();
    std::fs::write(directory.path().join(format!("segment-{:08}.log", position.segment() + 1)), [])
        .unwrap();
    let mut store = LogStore::open_directory(directory.path(), options()).unwrap();
    check_after_cut(&mut store, &committed, position);
}

fn index_file(directory: &Path) -> std::path::PathBuf {
    std::fs::read_dir(directory)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "index"))
        .expect("an index file")
}

/// The built log, its transactions committed, and a checkpoint written.
fn checkpointed() -> (tempfile::TempDir, Vec<Committed>, LogStore) {
    let directory = tempfile::tempdir().unwrap();
    let committed = build(directory.path());
    let mut store = LogStore::open_directory(directory.path(), options()).unwrap();
    check_after_cut(&mut store, &committed, LogPosition(u64::MAX));
    store.checkpoint().unwrap();
    (directory, committed, store)
}

#[test]
fn damaged_index_entries_are_reported_not_served() {
    let (directory, _, store) = checkpointed();
    drop(store);
    let path = index_file(directory.path());
    let mut bytes = std::fs::read(&path).unwrap();
    // The first object entry (oid 0's first revision) gets a byte flipped.
    bytes[logstore::index::INDEX_HEADER_SIZE + 20] ^= 0x10;
    std::fs::write(&path, bytes).unwrap();
    let mut store = LogStore::open_directory(directory.path(), options()).unwrap();
    assert_eq!(store.recovery_report().index.as_deref(), Some(path.as_path()));
    match store.load(Oid(0), None, None) {
        Err(LoadError::Store(StoreError::CorruptIndex { reason, .. })) => {
            assert!(reason.contains("checksum"), "{reason}")
        }
        other => panic!("a damaged index entry was served: {other:?}"),
    }
}

/// Scrubs the whole index file, a few entries at a time: the entries checked, or the damage.
fn scrub(store: &LogStore) -> Result<usize, StoreError> {
    let mut cursor = logstore::IndexScrub::default();
    while let Some(next) = store.scrub_index(cursor, 7)? {
        cursor = next;
    }
    Ok(cursor.checked())
}

#[test]
fn a_scrub_finds_damage_anywhere_and_dropping_every_partition_gets_rid_of_it() {
    let (directory, committed, store) = checkpointed();
    drop(store);
    let path = index_file(directory.path());
    let clean = std::fs::read(&path).unwrap();
    let entries = scrub(&LogStore::open_directory(directory.path(), options()).unwrap()).unwrap();
    assert!(entries > 100, "{entries}");
    // The last entry of the file (a transaction's), then one in the middle (a serial's):
    // each found by a scrub, though no lookup touched it.
    let header_size = logstore::index::INDEX_HEADER_SIZE;
    let header: &[u8] = &clean[..header_size];
    let field = |offset: usize| u64::from_le_bytes(header[offset..offset + 8].try_into().unwrap());
    let (serials, transactions, transactions_count) = (field(48) as usize, field(64), field(72));
    let last_transaction = transactions as usize + (transactions_count as usize - 1) * 32;
    // Two whole object entries swapped, each with a good checksum: found by their order.
    {
        let mut bytes = clean.clone();
        let (a, b) = (header_size + 48 * 10, header_size + 48 * 13);
        let first: Vec<u8> = bytes[a..a + 48].to_vec();
        bytes.copy_within(b..b + 48, a);
        bytes[b..b + 48].copy_from_slice(&first);
        std::fs::write(&path, bytes).unwrap();
        let store = LogStore::open_directory(directory.path(), options()).unwrap();
        let error = scrub(&store).expect_err("swapped entries not found");
        assert!(error.to_string().contains("out of order"), "{error}");
    }
    for offset in [last_transaction + 3, serials + 20 * 10 + 2] {
        let mut bytes = clean.clone();
        bytes[offset] ^= 0x04;
        std::fs::write(&path, bytes).unwrap();
        let store = LogStore::open_directory(directory.path(), options()).unwrap();
        let error = scrub(&store).expect_err("damage not found");
        assert!(matches!(error, StoreError::CorruptIndex { .. }), "{offset}: {error}");
    }
    // With the damaged file in place, every partition dropped: the file is no longer read,
    // a checkpoint writes one without it, and the store opens clean.
    let mut store = LogStore::open_directory(directory.path(), options()).unwrap();
    let mut metadata = store.metadata().clone();
    metadata.partitions = 3;
    store.set_metadata(metadata).unwrap();
    for partition in 0..3 {
        store.drop_partition(wire::PartitionId(partition)).unwrap();
    }
    store.flush().unwrap();
    store.checkpoint().unwrap();
    drop(store);
    let mut store = LogStore::open_directory(directory.path(), options()).unwrap();
    assert_ne!(store.recovery_report().index.as_deref(), Some(path.as_path()));
    scrub(&store).unwrap();
    for transaction in &committed {
        assert_eq!(store.transaction(transaction.tid).unwrap(), None);
        for oid in transaction.objects.keys() {
            assert!(matches!(store.load(*oid, None, None), Err(LoadError::OidDoesNotExist(_))));
        }
    }
}

/// With every entry of the index file damaged, one partition dropped: lookups of its
/// objects and transactions no longer read the file (a storage that cannot be rid of its
/// damaged file still takes in new cells), the others' still fail, never served.
#[test]
fn lookups_of_a_dropped_partition_do_not_read_the_index_file() {
    let (directory, committed, store) = checkpointed();
    drop(store);
    let path = index_file(directory.path());
    let mut bytes = std::fs::read(&path).unwrap();
    let header_size = logstore::index::INDEX_HEADER_SIZE;
    let field =
        |offset: usize| u64::from_le_bytes(bytes[offset..offset + 8].try_into().unwrap()) as usize;
    let (objects, transactions) = ((field(32), field(40)), (field(64), field(72)));
    assert_eq!(objects.0, header_size);
    for i in 0..objects.1 {
        bytes[objects.0 + 48 * i + 9] ^= 0x01;
    }
    for i in 0..transactions.1 {
        bytes[transactions.0 + 32 * i + 9] ^= 0x01;
    }
    std::fs::write(&path, bytes).unwrap();
    let mut store = LogStore::open_directory(directory.path(), options()).unwrap();
    let mut metadata = store.metadata().clone();
    metadata.partitions = 2;
    store.set_metadata(metadata).unwrap();
    store.drop_partition(wire::PartitionId(0)).unwrap();
    let partition = |id: u64| id % 2;
    for transaction in &committed {
        let found = store.transaction(transaction.tid);
        if partition(transaction.tid.0) == 0 {
            assert_eq!(found.unwrap(), None);
        } else {
            assert!(matches!(found, Err(StoreError::CorruptIndex { .. })), "{found:?}");
        }
        for oid in transaction.objects.keys() {
            let loaded = store.load(*oid, None, None);
            if partition(oid.0) == 0 {
                assert!(matches!(loaded, Err(LoadError::OidDoesNotExist(_))), "{loaded:?}");
            } else {
                assert!(matches!(loaded, Err(LoadError::Store(_))), "{loaded:?}");
            }
        }
    }
}

#[test]
fn damaged_index_header_falls_back_to_the_log() {
    let (directory, committed, store) = checkpointed();
    drop(store);
    let path = index_file(directory.path());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[40] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
    // A checkpoint interrupted before its rename leaves a temporary file: ignored, removed.
    std::fs::write(path.with_extension("index.tmp"), b"partial").unwrap();
    let mut store = LogStore::open_directory(directory.path(), options()).unwrap();
    assert_eq!(store.recovery_report().index, None);
    assert_eq!(store.recovery_report().skipped_indexes.len(), 1);
    assert!(!path.with_extension("index.tmp").exists());
    for transaction in &committed {
        for (oid, bytes) in &transaction.objects {
            assert_eq!(store.load_serial(*oid, transaction.tid).unwrap().data.as_ref(), &bytes[..]);
        }
    }
    // The next checkpoint's file is newer than the damaged one, which it replaces.
    store.checkpoint().unwrap();
    assert!(!path.exists(), "the damaged index file is gone");
    drop(store);
    let store = LogStore::open_directory(directory.path(), options()).unwrap();
    assert!(store.recovery_report().skipped_indexes.is_empty());
    assert!(store.recovery_report().index.is_some());
}

#[test]
fn checkpoint_then_cut_replays_only_the_tail() {
    let (directory, _, store) = checkpointed();
    let records_before = store.recovery_report().records;
    drop(store);
    let store = LogStore::open_directory(directory.path(), options()).unwrap();
    assert!(store.recovery_report().index.is_some());
    assert_eq!(store.recovery_report().records, 0, "nothing after the checkpoint to replay");
    assert!(records_before > 100);
}

#[test]
fn final_tids_are_found_by_ttid_in_the_index_files_and_in_memory() {
    let (_directory, committed, mut store) = checkpointed();
    // One more transaction after the checkpoint, in memory only, locked and not unlocked.
    let (ttid, tid) = (Tid(1 << 50), Tid((1 << 50) + 5));
    let bytes = b"after the checkpoint";
    let value = Value::Data {
        compression: Compression::None,
        data_crc: crc32fast::hash(bytes),
        data: Bytes::from_static(bytes),
    };
    store.store(ttid, Oid(3), value).unwrap();
    store.vote(ttid, None).unwrap();
    store.flush().unwrap();
    store.lock(ttid, tid).unwrap();
    store.flush().unwrap();
    assert_eq!(store.final_tid(ttid).unwrap(), Some(tid), "locked, not yet visible");
    for transaction in &committed {
        assert_eq!(store.final_tid(transaction.ttid).unwrap(), Some(transaction.tid));
    }
    assert_eq!(store.final_tid(Tid(committed[0].ttid.0 + 1)).unwrap(), None, "never committed");
}
