//! Renders the generated sections of docs/logstore-format.md from the code (header layouts
//! and record bodies); a test compares them with the document.

use std::fmt::Write;

use wire::codec::{Described, FieldMeta};
use wire::doc::{fields_table, one_line};

use crate::checkpoint::{CheckpointState, PendingEntry};
use crate::index::{IndexHeader, ObjectEntry, SerialEntry, TransactionIndexEntry};
use crate::log::SegmentHeader;
use crate::record::{
    DeleteReplicatedBody, DropPartitionBody, LockBody, Metadata, PackBody, RecordHeader,
    RecordKind, RelocateBody, RelocateVoteBody, ReplicateObjectBody, ReplicateTransactionBody,
    ReserveOidsBody, SegmentEndBody, StoreBody, TransactionMeta, TruncateBody, TtidBody, VoteBody,
};

/// The generated sections, by name.
pub fn sections() -> Vec<(&'static str, String)> {
    vec![
        ("SEGMENT HEADER", layout(&segment_header_fields())),
        ("RECORD HEADER", layout(&record_header_fields())),
        ("RECORDS", records()),
        ("INDEX HEADER", layout(&index_header_fields())),
        ("INDEX ENTRIES", index_entries()),
    ]
}

fn segment_header_fields() -> Vec<(&'static str, usize, usize)> {
    use std::mem::offset_of;
    vec![
        ("magic", offset_of!(SegmentHeader, magic), 8),
        ("format_version", offset_of!(SegmentHeader, format_version), 4),
        ("segment_size", offset_of!(SegmentHeader, segment_size), 4),
        ("segment_id", offset_of!(SegmentHeader, segment_id), 4),
        ("reserved", offset_of!(SegmentHeader, reserved), 40),
        ("crc", offset_of!(SegmentHeader, crc), 4),
    ]
}

fn record_header_fields() -> Vec<(&'static str, usize, usize)> {
    use std::mem::offset_of;
    vec![
        ("position", offset_of!(RecordHeader, position), 8),
        ("durable_before", offset_of!(RecordHeader, durable_before), 8),
        ("body_size", offset_of!(RecordHeader, body_size), 4),
        ("kind", offset_of!(RecordHeader, kind), 1),
        ("flags", offset_of!(RecordHeader, flags), 1),
        ("reserved", offset_of!(RecordHeader, reserved), 2),
        ("reserved2", offset_of!(RecordHeader, reserved2), 4),
        ("crc", offset_of!(RecordHeader, crc), 4),
    ]
}

fn index_header_fields() -> Vec<(&'static str, usize, usize)> {
    use std::mem::offset_of;
    vec![
        ("magic", offset_of!(IndexHeader, magic), 8),
        ("version", offset_of!(IndexHeader, version), 4),
        ("reserved", offset_of!(IndexHeader, reserved), 4),
        ("generation", offset_of!(IndexHeader, generation), 8),
        ("log_position", offset_of!(IndexHeader, log_position), 8),
        ("objects_offset", offset_of!(IndexHeader, objects_offset), 8),
        ("objects_count", offset_of!(IndexHeader, objects_count), 8),
        ("serials_offset", offset_of!(IndexHeader, serials_offset), 8),
        ("serials_count", offset_of!(IndexHeader, serials_count), 8),
        ("transactions_offset", offset_of!(IndexHeader, transactions_offset), 8),
        ("transactions_count", offset_of!(IndexHeader, transactions_count), 8),
        ("state_offset", offset_of!(IndexHeader, state_offset), 8),
        ("state_size", offset_of!(IndexHeader, state_size), 8),
        ("state_crc", offset_of!(IndexHeader, state_crc), 4),
        ("fence_offset", offset_of!(IndexHeader, fence_offset), 8),
        ("fence_count", offset_of!(IndexHeader, fence_count), 8),
        ("fence_crc", offset_of!(IndexHeader, fence_crc), 4),
        ("reserved2", offset_of!(IndexHeader, reserved2), 4),
        ("header_crc", offset_of!(IndexHeader, header_crc), 4),
    ]
}

fn index_entries() -> String {
    use std::mem::offset_of;
    let mut out = String::from("Object entry (sorted by oid, serial):\n\n");
    out.push_str(&layout(&[
        ("oid", offset_of!(ObjectEntry, oid), 8),
        ("serial", offset_of!(ObjectEntry, serial), 8),
        ("data_position", offset_of!(ObjectEntry, data_position), 8),
        ("data_serial", offset_of!(ObjectEntry, data_serial), 8),
        ("data_size", offset_of!(ObjectEntry, data_size), 4),
        ("data_crc", offset_of!(ObjectEntry, data_crc), 4),
        ("kind", offset_of!(ObjectEntry, kind), 1),
        ("compression", offset_of!(ObjectEntry, compression), 1),
        ("reserved", offset_of!(ObjectEntry, reserved), 2),
        ("crc", offset_of!(ObjectEntry, crc), 4),
    ]));
    out.push_str("\nSerial entry (sorted by serial, oid):\n\n");
    out.push_str(&layout(&[
        ("serial", offset_of!(SerialEntry, serial), 8),
        ("oid", offset_of!(SerialEntry, oid), 8),
        ("crc", offset_of!(SerialEntry, crc), 4),
    ]));
    out.push_str("\nTransaction entry (sorted by tid):\n\n");
    out.push_str(&layout(&[
        ("tid", offset_of!(TransactionIndexEntry, tid), 8),
        ("ttid", offset_of!(TransactionIndexEntry, ttid), 8),
        ("vote_position", offset_of!(TransactionIndexEntry, vote_position), 8),
        ("packed", offset_of!(TransactionIndexEntry, packed), 1),
        ("reserved", offset_of!(TransactionIndexEntry, reserved), 3),
        ("crc", offset_of!(TransactionIndexEntry, crc), 4),
    ]));
    out.push_str("\nReplay state (`CheckpointState`):\n\n");
    fields_table(&mut out, CheckpointState::FIELDS);
    out.push_str("\n`PendingEntry`:\n\n");
    fields_table(&mut out, PendingEntry::FIELDS);
    out
}

fn layout(fields: &[(&str, usize, usize)]) -> String {
    let mut out = String::from("| offset | size | field |\n|---:|---:|---|\n");
    for (name, offset, size) in fields {
        writeln!(out, "| {offset} | {size} | `{name}` |").unwrap();
    }
    let (_, offset, size) = fields.last().expect("fields");
    writeln!(out, "\nTotal: {} bytes, little-endian.", offset + size).unwrap();
    out
}

fn records() -> String {
    let kinds: [(RecordKind, &str, &str, &[FieldMeta]); 16] = [
        (RecordKind::SegmentEnd, "SegmentEndBody", SegmentEndBody::DOC, SegmentEndBody::FIELDS),
        (RecordKind::Store, "StoreBody", StoreBody::DOC, StoreBody::FIELDS),
        (RecordKind::Vote, "VoteBody", VoteBody::DOC, VoteBody::FIELDS),
        (RecordKind::Lock, "LockBody", LockBody::DOC, LockBody::FIELDS),
        (RecordKind::Unlock, "TtidBody", TtidBody::DOC, TtidBody::FIELDS),
        (RecordKind::Abort, "TtidBody", TtidBody::DOC, TtidBody::FIELDS),
        (RecordKind::Metadata, "Metadata", Metadata::DOC, Metadata::FIELDS),
        (RecordKind::Truncate, "TruncateBody", TruncateBody::DOC, TruncateBody::FIELDS),
        (RecordKind::Pack, "PackBody", PackBody::DOC, PackBody::FIELDS),
        (
            RecordKind::DropPartition,
            "DropPartitionBody",
            DropPartitionBody::DOC,
            DropPartitionBody::FIELDS,
        ),
        (RecordKind::Relocate, "RelocateBody", RelocateBody::DOC, RelocateBody::FIELDS),
        (
            RecordKind::RelocateVote,
            "RelocateVoteBody",
            RelocateVoteBody::DOC,
            RelocateVoteBody::FIELDS,
        ),
        (RecordKind::ReserveOids, "ReserveOidsBody", ReserveOidsBody::DOC, ReserveOidsBody::FIELDS),
        (
            RecordKind::ReplicateTransaction,
            "ReplicateTransactionBody",
            ReplicateTransactionBody::DOC,
            ReplicateTransactionBody::FIELDS,
        ),
        (
            RecordKind::ReplicateObject,
            "ReplicateObjectBody",
            ReplicateObjectBody::DOC,
            ReplicateObjectBody::FIELDS,
        ),
        (
            RecordKind::DeleteReplicated,
            "DeleteReplicatedBody",
            DeleteReplicatedBody::DOC,
            DeleteReplicatedBody::FIELDS,
        ),
    ];
    let mut out = String::new();
    for (kind, body, doc, fields) in kinds {
        writeln!(out, "#### {:?} (kind {}, body `{body}`)\n", kind, kind as u8).unwrap();
        writeln!(out, "{}\n", one_line(doc)).unwrap();
        fields_table(&mut out, fields);
        out.push('\n');
    }
    writeln!(out, "#### TransactionMeta (inside `VoteBody`)\n").unwrap();
    writeln!(out, "{}\n", one_line(TransactionMeta::DOC)).unwrap();
    fields_table(&mut out, TransactionMeta::FIELDS);
    out
}
