//! The store driven by glommio: group commit through io_uring with concurrent committer
//! tasks on one executor, and reads of data evicted from the page cache through io_uring.

use std::cell::{Cell, RefCell};
use std::os::unix::io::AsRawFd;
use std::rc::Rc;

use bytes::Bytes;
use glommio::LocalExecutorBuilder;
use logstore::{
    DurableWatch, LogStore, Notify, Options, UringFiles, Value, checkpoint_off_core, flush_loop,
};
use wire::{Compression, Oid, Tid};

const COMMITTERS: u64 = 8;
const ROUNDS: u64 = 25;

fn data(seed: u64) -> Vec<u8> {
    (0..500 + seed % 300).map(|i| (i ^ seed) as u8).collect()
}

#[test]
fn group_commit_through_io_uring() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().to_owned();
    LocalExecutorBuilder::default()
        .io_memory(1 << 20)
        .spawn(move || async move {
            let store = Rc::new(RefCell::new(
                LogStore::open_directory(&path, Options { segment_size: 64 << 10 }).unwrap(),
            ));
            let watch = Rc::new(DurableWatch::new(store.borrow().durable()));
            let work = Rc::new(Notify::default());
            let stop = Rc::new(Cell::new(false));
            let flusher = {
                let (store, watch, work, stop) =
                    (store.clone(), watch.clone(), work.clone(), stop.clone());
                let path = path.clone();
                glommio::spawn_local(async move {
                    let mut files = UringFiles::new(&path);
                    flush_loop(&store, &mut files, &watch, &work, &stop, &|_, _| {}).await.unwrap();
                    files.close().await.unwrap();
                })
            };
            let mut committers = Vec::new();
            for committer in 0..COMMITTERS {
                let (store, watch, work) = (store.clone(), watch.clone(), work.clone());
                committers.push(glommio::spawn_local(async move {
                    for round in 0..ROUNDS {
                        let ttid = Tid(1000 + (round * COMMITTERS + committer) * 2);
                        let oid = Oid(committer * 1000 + round);
                        let bytes = data(ttid.0);
                        let value = Value::Data {
                            compression: Compression::None,
                            data_crc: crc32fast::hash(&bytes),
                            data: Bytes::from(bytes),
                        };
                        store.borrow_mut().store(ttid, oid, value).unwrap();
                        let vote = store.borrow_mut().vote(ttid, None).unwrap();
                        work.notify();
                        watch.wait(vote).await.unwrap();
                        let lock = store.borrow_mut().lock(ttid, Tid(ttid.0 + 1)).unwrap();
                        work.notify();
                        watch.wait(lock).await.unwrap();
                        store.borrow_mut().unlock(ttid).unwrap();
                    }
                }));
            }
            // A checkpoint written off the core while the committers go on.
            let checkpoint = {
                let (store, watch, work) = (store.clone(), watch.clone(), work.clone());
                glommio::spawn_local(async move {
                    glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
                    checkpoint_off_core(&store, &watch, &work).await.unwrap();
                })
            };
            for committer in committers {
                committer.await;
            }
            checkpoint.await;
            stop.set(true);
            work.notify();
            flusher.await;

            // Evict the segments from the page cache, then read through io_uring.
            let mut files = UringFiles::new(&path);
            for entry in std::fs::read_dir(&path).unwrap() {
                let file = std::fs::File::open(entry.unwrap().path()).unwrap();
                // SAFETY: advisory call on a valid descriptor.
                unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
            }
            let mut evicted = 0;
            for committer in 0..COMMITTERS {
                for round in 0..ROUNDS {
                    let ttid = Tid(1000 + (round * COMMITTERS + committer) * 2);
                    let located =
                        store.borrow().locate(Oid(committer * 1000 + round), None, None).unwrap();
                    assert_eq!(located.serial, Tid(ttid.0 + 1));
                    let data_ref = located.data.unwrap();
                    if !store.borrow_mut().is_resident(data_ref).unwrap() {
                        evicted += 1;
                    }
                    let bytes = files.read_data(data_ref).await.unwrap();
                    assert_eq!(&bytes[..], &data(ttid.0)[..]);
                }
            }
            files.close().await.unwrap();
            eprintln!(
                "{evicted} of {} reads found their data out of the page cache",
                COMMITTERS * ROUNDS
            );
        })
        .unwrap()
        .join()
        .unwrap();

    // Everything committed is there after a reopen (the last unlocks may need replaying).
    let mut store =
        LogStore::open_directory(directory.path(), Options { segment_size: 64 << 10 }).unwrap();
    assert!(store.recovery_report().index.is_some(), "the checkpoint was installed");
    for (ttid, stage) in store.unfinished() {
        assert!(matches!(stage, logstore::PendingStage::Locked(_)));
        store.unlock(ttid).unwrap();
    }
    for committer in 0..COMMITTERS {
        for round in 0..ROUNDS {
            let ttid = Tid(1000 + (round * COMMITTERS + committer) * 2);
            let loaded = store.load(Oid(committer * 1000 + round), None, None).unwrap();
            assert_eq!(loaded.data.as_ref(), &data(ttid.0)[..]);
        }
    }
}
