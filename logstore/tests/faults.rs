//! Injected disk faults: a full disk when a segment must be created (refused cleanly, usable
//! again once space returns), and failed writes or fdatasyncs (the log is poisoned; reopening
//! recovers everything that was durable).

use std::cell::Cell;
use std::path::PathBuf;
use std::rc::Rc;

use bytes::Bytes;
use logstore::{Disk, FileDisk, LogStore, Options, PendingStage, StoreError, Value};
use wire::{Compression, Oid, Tid};

#[derive(Default)]
struct Faults {
    create: Cell<Option<i32>>,
    write: Cell<Option<i32>>,
    sync: Cell<Option<i32>>,
}

/// A `FileDisk` whose calls fail with the configured errno while it is set.
struct FaultyDisk {
    inner: FileDisk,
    faults: Rc<Faults>,
}

fn fail(errno: Option<i32>, operation: &'static str) -> logstore::Result<()> {
    match errno {
        Some(errno) => Err(StoreError::Io {
            operation,
            path: PathBuf::from("injected"),
            source: std::io::Error::from_raw_os_error(errno),
        }),
        None => Ok(()),
    }
}

impl Disk for FaultyDisk {
    fn list_segments(&mut self) -> logstore::Result<Vec<u32>> {
        self.inner.list_segments()
    }
    fn create_segment(&mut self, id: u32, size: u32) -> logstore::Result<()> {
        fail(self.faults.create.get(), "create")?;
        self.inner.create_segment(id, size)
    }
    fn remove_segment(&mut self, id: u32) -> logstore::Result<()> {
        self.inner.remove_segment(id)
    }
    fn segment_size(&mut self, id: u32) -> logstore::Result<u64> {
        self.inner.segment_size(id)
    }
    fn write(&mut self, id: u32, offset: u32, bytes: &[u8]) -> logstore::Result<()> {
        fail(self.faults.write.get(), "write")?;
        self.inner.write(id, offset, bytes)
    }
    fn sync(&mut self, id: u32) -> logstore::Result<()> {
        fail(self.faults.sync.get(), "fdatasync")?;
        self.inner.sync(id)
    }
    fn read(&mut self, id: u32, offset: u32, size: usize) -> logstore::Result<Bytes> {
        self.inner.read(id, offset, size)
    }
}

const SEGMENT_SIZE: u32 = 8 << 10;

/// Opens the store and, as a master would after a restart, commits what was locked.
fn open(directory: &std::path::Path, faults: &Rc<Faults>) -> LogStore<FaultyDisk> {
    let disk = FaultyDisk { inner: FileDisk::open(directory).unwrap(), faults: Rc::clone(faults) };
    let mut store = LogStore::open(disk, Options { segment_size: SEGMENT_SIZE }).unwrap();
    for (ttid, stage) in store.unfinished() {
        match stage {
            PendingStage::Locked(_) => store.unlock(ttid).unwrap(),
            _ => store.abort(ttid).unwrap(),
        }
    }
    store
}

fn value(seed: u64) -> Value {
    let data: Vec<u8> = (0..900).map(|i| (i as u64 ^ seed) as u8).collect();
    Value::Data {
        compression: Compression::None,
        data_crc: crc32fast::hash(&data),
        data: Bytes::from(data),
    }
}

fn commit(store: &mut LogStore<FaultyDisk>, ttid: u64, oid: u64) -> logstore::Result<()> {
    let ttid = Tid(ttid);
    store.store(ttid, Oid(oid), value(ttid.0))?;
    store.vote(ttid, None)?;
    store.flush()?;
    store.lock(ttid, ttid)?;
    store.flush()?;
    store.unlock(ttid)
}

#[test]
fn full_disk_at_segment_creation_is_refused_then_recovers() {
    let directory = tempfile::tempdir().unwrap();
    let faults = Rc::new(Faults::default());
    let mut store = open(directory.path(), &faults);
    faults.create.set(Some(libc::ENOSPC));
    // Commit until a record needs a new segment: that append fails, and nothing changes.
    let mut ttid = 100;
    let error = loop {
        ttid += 1;
        if let Err(error) = commit(&mut store, ttid, ttid % 7) {
            break error;
        }
        assert!(ttid < 200, "a segment of {SEGMENT_SIZE} bytes must fill up");
    };
    assert!(error.is_disk_full(), "{error}");
    assert!(error.to_string().contains("No space left"), "{error}");
    let failed = Tid(ttid);
    // The log is not poisoned: reads work, and once space returns so do writes.
    store.load(Oid((ttid - 1) % 7), None, None).unwrap();
    faults.create.set(None);
    store.abort(failed).unwrap();
    for ttid in ttid + 1..ttid + 20 {
        commit(&mut store, ttid, ttid % 7).unwrap();
    }
    let last = ttid + 19;
    drop(store);
    let mut store = open(directory.path(), &faults);
    for ttid in 101..=last {
        let found = store.load_serial(Oid(ttid % 7), Tid(ttid));
        assert_eq!(found.is_ok(), Tid(ttid) != failed, "transaction {ttid}");
    }
}

#[test]
fn failed_write_or_sync_poisons_until_reopen() {
    for errno in [libc::ENOSPC, libc::EIO] {
        for fault in ["write", "sync"] {
            let directory = tempfile::tempdir().unwrap();
            let faults = Rc::new(Faults::default());
            let mut store = open(directory.path(), &faults);
            for ttid in 1..=5 {
                commit(&mut store, ttid, ttid).unwrap();
            }
            match fault {
                "write" => faults.write.set(Some(errno)),
                _ => faults.sync.set(Some(errno)),
            }
            store.store(Tid(6), Oid(6), value(6)).unwrap();
            store.vote(Tid(6), None).unwrap();
            let error = store.flush().unwrap_err();
            assert!(matches!(error, StoreError::Io { .. }), "{fault}: {error}");
            // Poisoned: no write is accepted, even after the fault clears.
            faults.write.set(None);
            faults.sync.set(None);
            let refused = store.store(Tid(7), Oid(7), value(7)).unwrap_err();
            assert!(matches!(refused, StoreError::Poisoned(_)), "{refused}");
            assert!(store.flush().is_err());
            assert_eq!(refused.is_disk_full(), errno == libc::ENOSPC);
            // Reopening recovers what was durable; the failed vote was never acknowledged.
            drop(store);
            let mut store = open(directory.path(), &faults);
            for ttid in 1..=5 {
                store.load_serial(Oid(ttid), Tid(ttid)).unwrap();
            }
            commit(&mut store, 8, 8).unwrap();
        }
    }
}

/// A checkpoint whose file cannot be put in place (here: a directory squats its name) is
/// reported, and the next checkpoint writes it again and installs it.
#[test]
fn a_checkpoint_that_cannot_be_installed_is_written_again() {
    let directory = tempfile::tempdir().unwrap();
    let mut store = LogStore::open_directory(directory.path(), Options::default()).unwrap();
    let data = Bytes::from_static(b"checkpointed");
    let value =
        Value::Data { compression: Compression::None, data_crc: crc32fast::hash(&data), data };
    store.store(Tid(10), Oid(1), value).unwrap();
    store.vote(Tid(10), None).unwrap();
    store.flush().unwrap();
    store.lock(Tid(10), Tid(11)).unwrap();
    store.flush().unwrap();
    store.unlock(Tid(10)).unwrap();
    store.flush().unwrap();
    let job = store.start_checkpoint().unwrap();
    let outcome = job.run();
    let path = outcome.as_ref().unwrap().path.clone();
    std::fs::create_dir(&path).unwrap();
    std::fs::write(path.join("squatter"), b"x").unwrap();
    assert!(store.finish_checkpoint(outcome).is_err(), "the rename cannot succeed");
    assert!(!store.checkpoint_awaiting_install(), "nothing left waiting");
    std::fs::remove_dir_all(&path).unwrap();
    let job = store.start_checkpoint().expect("written again");
    assert!(store.finish_checkpoint(job.run()).unwrap(), "installed");
    assert_eq!(&store.load_serial(Oid(1), Tid(11)).unwrap().data[..], b"checkpointed");
    drop(store);
    let store = LogStore::open_directory(directory.path(), Options::default()).unwrap();
    assert!(store.recovery_report().skipped_indexes.is_empty());
}

/// A directory holds one store at a time: a second one (another process started on the
/// same `--data`, or a second open in this one) is refused before it reads or writes
/// anything, and the first goes on; once the first is gone the directory opens again.
#[test]
fn a_directory_in_use_is_refused() {
    let directory = tempfile::tempdir().unwrap();
    let mut first = LogStore::open_directory(directory.path(), Options::default()).unwrap();
    match LogStore::open_directory(directory.path(), Options::default()) {
        Err(StoreError::InUse(path)) => assert_eq!(path, directory.path()),
        other => panic!("a second store opened the directory: {:?}", other.map(|_| ())),
    }
    let data = Bytes::from_static(b"first");
    let value =
        Value::Data { compression: Compression::None, data_crc: crc32fast::hash(&data), data };
    first.store(Tid(10), Oid(1), value).unwrap();
    first.flush().unwrap();
    drop(first);
    let again = LogStore::open_directory(directory.path(), Options::default()).unwrap();
    assert_eq!(again.unfinished(), vec![(Tid(10), PendingStage::Stored)]);
}
