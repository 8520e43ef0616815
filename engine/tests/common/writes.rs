//! Writing and reading back known values through the client (the replication and check
//! tests).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use engine::client::{Client, ClientError, ClientOptions, TransactionMeta};
use wire::{Oid, Tid};

use super::*;

pub fn connect(masters: &str) -> Client {
    let masters = masters.split(',').map(|m| m.parse().unwrap()).collect();
    let mut options = ClientOptions::new(CLUSTER, masters);
    options.cache_size = 0;
    Client::connect(options).unwrap()
}

pub fn meta() -> TransactionMeta {
    TransactionMeta {
        user: Bytes::from_static(b"replication"),
        description: Bytes::from_static(b"a round"),
        extension: Bytes::new(),
    }
}

pub fn value(oid: Oid, round: u32) -> Bytes {
    Bytes::from(format!("object {} round {round} {}", oid.0, "x".repeat(200)))
}

/// Every revision written: (oid, serial) -> data (empty for a deletion).
pub type Written = BTreeMap<(Oid, Tid), Bytes>;

/// Writes round `round` of `oids`, `per_transaction` objects at a time (retried on
/// transient failures); returns the serials.
pub fn write_round(
    client: &Client,
    oids: &[Oid],
    round: u32,
    per_transaction: usize,
    written: &mut Written,
) {
    for group in oids.chunks(per_transaction) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match commit_group(client, group, round) {
                Ok(tid) => {
                    for &oid in group {
                        written.insert((oid, tid), value(oid, round));
                    }
                    break;
                }
                Err(error) => {
                    assert!(Instant::now() < deadline, "round {round} never committed: {error}");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
}

pub fn commit_group(client: &Client, group: &[Oid], round: u32) -> Result<Tid, ClientError> {
    let _ = client.sync();
    let mut transaction = client.tpc_begin(None)?;
    for &oid in group {
        let serial = match client.load(oid) {
            Ok(loaded) => loaded.serial,
            Err(ClientError::OidDoesNotExist(_)) => Tid::ZERO,
            Err(error) => return Err(error),
        };
        transaction.store(oid, serial, value(oid, round))?;
    }
    let conflicts = transaction.vote(&meta())?;
    assert!(conflicts.is_empty(), "one writer: {conflicts:?}");
    transaction.finish(|_| {})
}

/// Every revision written reads back with its data, and its transaction's metadata.
pub fn check_written(client: &Client, written: &Written) {
    let mut problems = Vec::new();
    for (&(oid, serial), data) in written {
        match client.load_serial(oid, serial) {
            Ok(loaded) if loaded.data == data => {}
            Ok(loaded) => {
                problems.push(format!("{oid} at {serial}: {} bytes differ", loaded.data.len()))
            }
            Err(error) => problems.push(format!("{oid} at {serial}: {error}")),
        }
    }
    let tids: std::collections::BTreeSet<Tid> = written.keys().map(|&(_, tid)| tid).collect();
    for tid in tids {
        if let Err(error) = client.transaction_information(tid) {
            problems.push(format!("metadata of {tid}: {error}"));
        }
    }
    assert!(problems.is_empty(), "{} problems:\n{}", problems.len(), problems.join("\n"));
}

pub fn wait_up_to_date(masters: &str, what: &str) -> String {
    wait_for(masters, &["print", "pt"], what, |text| {
        let cells = grid(text).join("");
        !cells.contains('O') && !cells.contains('F')
    })
}
