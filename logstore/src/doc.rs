//! Renders the generated sections of docs/logstore-format.md from the code (header layouts
//! and record bodies); a test compares them with the document.

use std::fmt::Write;

use wire::codec::{Described, FieldMeta};
use wire::doc::{fields_table, one_line};

use crate::log::SegmentHeader;
use crate::record::{
    DropPartitionBody, LockBody, Metadata, PackBody, RecordHeader, RecordKind, SegmentEndBody,
    StoreBody, TransactionMeta, TruncateBody, TtidBody, VoteBody,
};

/// The generated sections, by name.
pub fn sections() -> Vec<(&'static str, String)> {
    vec![
        ("SEGMENT HEADER", layout(&segment_header_fields())),
        ("RECORD HEADER", layout(&record_header_fields())),
        ("RECORDS", records()),
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
    let kinds: [(RecordKind, &str, &str, &[FieldMeta]); 10] = [
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
