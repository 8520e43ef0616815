//! Bytes from disk are untrusted: whatever a segment or an index file holds, opening the
//! store and reading through it returns data or an error, and never panics.

use logstore::index::IndexFile;
use logstore::record::{LogPosition, RecordKind, check_record};
use logstore::{LogStore, Options};
use proptest::prelude::*;
use wire::{Bytes, Oid, Tid};

const SEGMENT_SIZE: u32 = 4 << 10;

/// A valid segment header for segment 0, so that the records behind it are looked at.
fn segment_header() -> Vec<u8> {
    let directory = tempfile::tempdir().unwrap();
    drop(
        LogStore::open_directory(directory.path(), Options { segment_size: SEGMENT_SIZE }).unwrap(),
    );
    std::fs::read(directory.path().join("segment-00000000.log")).unwrap()[..64].to_vec()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn any_segment_contents_open_or_fail_cleanly(body in proptest::collection::vec(any::<u8>(), 0..4032)) {
        let directory = tempfile::tempdir().unwrap();
        let mut segment = segment_header();
        segment.extend_from_slice(&body);
        segment.resize(SEGMENT_SIZE as usize, 0);
        std::fs::write(directory.path().join("segment-00000000.log"), &segment).unwrap();
        if let Ok(mut store) = LogStore::open_directory(directory.path(), Options { segment_size: SEGMENT_SIZE }) {
            for oid in 0..4 {
                let _ = store.load(Oid(oid), None, None);
                let _ = store.history(Oid(oid), 0, 10);
            }
            let _ = store.transaction(Tid(1));
            let _ = store.unfinished();
        }
    }

    #[test]
    fn any_record_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..512), offset in 64u32..4000) {
        let bytes = Bytes::from(bytes);
        let position = LogPosition::new(0, offset);
        if let Ok(record) = check_record(&bytes, position) {
            let _ = match record.kind {
                RecordKind::Store => record.decode::<logstore::record::StoreBody>().map(drop),
                RecordKind::Vote => record.decode::<logstore::record::VoteBody>().map(drop),
                _ => record.decode::<logstore::record::Metadata>().map(drop),
            };
        }
    }

    #[test]
    fn damaged_index_entries_never_panic(flips in proptest::collection::vec((any::<u16>(), 1u8..=255), 1..8)) {
        let directory = tempfile::tempdir().unwrap();
        let mut store = LogStore::open_directory(directory.path(), Options { segment_size: SEGMENT_SIZE }).unwrap();
        for round in 0..20u64 {
            let ttid = Tid(100 + round * 2);
            let data = Bytes::from(vec![round as u8; 50]);
            let value = logstore::Value::Data { compression: wire::Compression::None, data_crc: crc32fast::hash(&data), data };
            store.store(ttid, Oid(round % 7), value).unwrap();
            store.vote(ttid, None).unwrap();
            store.flush().unwrap();
            store.lock(ttid, ttid).unwrap();
            store.flush().unwrap();
            store.unlock(ttid).unwrap();
        }
        store.checkpoint().unwrap();
        drop(store);
        let path = std::fs::read_dir(directory.path()).unwrap().map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "index")).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        // Entries only (between the header and the fences), so the file still opens.
        let entries = 128..128 + 20 * 48;
        for (at, flip) in flips {
            let index = entries.start + usize::from(at) % entries.len();
            bytes[index] ^= flip;
        }
        std::fs::write(&path, &bytes).unwrap();
        let mut store = LogStore::open_directory(directory.path(), Options { segment_size: SEGMENT_SIZE }).unwrap();
        for oid in 0..8 {
            if let Ok(loaded) = store.load(Oid(oid), None, None) {
                // Served data is always right: an undetected flip cannot serve garbage.
                prop_assert_eq!(loaded.data.len(), 50);
            }
            let _ = store.history(Oid(oid), 0, 100);
        }
        let _ = store.revision_count();
        let _ = store.compact();
    }

    #[test]
    fn any_index_file_opens_or_fails_cleanly(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("index-0000000000000001.index");
        std::fs::write(&path, &body).unwrap();
        if let Ok(index) = IndexFile::open(&path) {
            let _ = index.objects_from(Oid(1), Tid(0));
            let _ = index.serials_from(Tid(0), Oid(0));
            let _ = index.transactions_from(Tid(0));
        }
    }
}
