//! A child process commits transactions and prints each one's tid once its lock is durable
//! (the acknowledgement a storage node would send); the parent kills it with SIGKILL at a
//! random moment, reopens the store, and checks that every acknowledged transaction is
//! there, whole. Repeated on the same store, so recovery also runs over recovered logs.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use logstore::{LogStore, Options, PendingStage, TransactionMeta, Value};
use wire::{Compression, Oid, Tid};

const CHILD_ENV: &str = "LOGSTORE_KILL9_CHILD_DIRECTORY";
const ROUNDS: usize = 8;

fn options() -> Options {
    Options { segment_size: 64 << 10 }
}

fn object(tid: Tid, index: u64) -> Vec<u8> {
    (0..200 + (tid.0 % 300) as usize).map(|i| (i as u64 ^ tid.0 ^ index) as u8).collect()
}

/// The child: commits until killed. Not a test when the variable is unset.
#[test]
fn kill9_child_writer() {
    let Some(directory) = std::env::var_os(CHILD_ENV) else { return };
    let mut store = LogStore::open_directory(&directory, options()).unwrap();
    // Finish what the last run left, as a master would: locked ones commit, others abort.
    for (ttid, stage) in store.unfinished() {
        match stage {
            PendingStage::Locked(_) => store.unlock(ttid).unwrap(),
            _ => store.abort(ttid).unwrap(),
        }
    }
    let mut tid = store.last_ids().0.map_or(1 << 40, |t| t.0) + 10;
    loop {
        tid += 2;
        let ttid = Tid(tid);
        let oids: Vec<Oid> = (0..3).map(|i| Oid(tid % 50 + i * 100)).collect();
        for (index, &oid) in oids.iter().enumerate() {
            let data = object(Tid(tid + 1), index as u64);
            let value = Value::Data {
                compression: Compression::None,
                data_crc: crc32fast::hash(&data),
                data: Bytes::from(data),
            };
            store.store(ttid, oid, value).unwrap();
        }
        let meta = TransactionMeta {
            user: Bytes::new(),
            description: Bytes::new(),
            extension: Bytes::new(),
            oids,
            pack: None,
        };
        store.vote(ttid, Some(meta)).unwrap();
        store.flush().unwrap();
        store.lock(ttid, Tid(tid + 1)).unwrap();
        store.flush().unwrap();
        println!("ack {}", tid + 1);
        store.unlock(ttid).unwrap();
    }
}

#[test]
fn acknowledged_transactions_survive_kill9() {
    let directory = tempfile::tempdir().unwrap();
    let mut acknowledged: Vec<Tid> = Vec::new();
    for round in 0..ROUNDS {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "kill9_child_writer", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, directory.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut acks = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(tid) = line.strip_prefix("ack ") {
                    acks.push(Tid(tid.parse().unwrap()));
                }
            }
            acks
        });
        // Let it commit for a while, then kill it wherever it is.
        std::thread::sleep(Duration::from_millis(30 + (round as u64 * 37) % 90));
        child.kill().unwrap();
        child.wait().unwrap();
        acknowledged.extend(reader.join().unwrap());

        let mut store = LogStore::open_directory(directory.path(), options()).unwrap();
        for (ttid, stage) in store.unfinished() {
            if let PendingStage::Locked(_) = stage {
                store.unlock(ttid).unwrap();
            }
        }
        for &tid in &acknowledged {
            let info = store
                .transaction(tid)
                .unwrap()
                .unwrap_or_else(|| panic!("round {round}: {tid} lost"));
            for (index, &oid) in info.meta.oids.iter().enumerate() {
                let loaded = store.load_serial(oid, tid).unwrap();
                assert_eq!(
                    loaded.data.as_ref(),
                    &object(tid, index as u64)[..],
                    "round {round}: {tid}"
                );
            }
        }
    }
    eprintln!("{} transactions acknowledged over {ROUNDS} kills", acknowledged.len());
    assert!(
        acknowledged.len() >= ROUNDS,
        "the child committed ({} acknowledged)",
        acknowledged.len()
    );
}
