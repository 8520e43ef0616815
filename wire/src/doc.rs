//! Renders the generated parts of docs/protocol.md from the code: the frame header layout,
//! the composite types and the message catalogue. A test compares them with the document,
//! so the document cannot drift from the code unnoticed.

use std::fmt::Write;

use crate::codec::FieldMeta;
use crate::enums::NodeType;
use crate::frame::FrameHeader;
use crate::handshake::{Hello, PROTOCOL_VERSION};
use crate::limits;
use crate::messages::{CATALOGUE, Role, TYPES};

/// Marks around a generated section; `command` names the test that checks it.
pub fn markers(section: &str, command: &str) -> (String, String) {
    (
        format!("<!-- BEGIN GENERATED {section} ({command}; UPDATE_DOCS=1 rewrites) -->"),
        format!("<!-- END GENERATED {section} -->"),
    )
}

/// Compares the generated sections of the document at `path` with `sections`, and returns
/// the names of the stale ones. With `UPDATE_DOCS` set in the environment it rewrites them
/// instead (and returns none). Panics if a marker is missing.
pub fn check_generated(
    path: &std::path::Path,
    command: &str,
    sections: Vec<(&'static str, String)>,
) -> Vec<&'static str> {
    let mut document =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut stale = Vec::new();
    for (section, rendered) in sections {
        let (begin, end) = markers(section, command);
        let start = document.find(&begin).unwrap_or_else(|| panic!("missing marker {begin}"));
        let content_start = start + begin.len();
        let stop = content_start
            + document[content_start..]
                .find(&end)
                .unwrap_or_else(|| panic!("missing marker {end}"));
        let expected = format!("\n{rendered}");
        if document[content_start..stop] != expected {
            stale.push(section);
            document.replace_range(content_start..stop, &expected);
        }
    }
    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::write(path, document).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        return Vec::new();
    }
    stale
}

/// The generated sections, by name.
pub fn sections() -> Vec<(&'static str, String)> {
    vec![
        ("HELLO", hello_example()),
        ("HEADER", header_table()),
        ("LIMITS", limits_table()),
        ("TYPES", types_section()),
        ("MESSAGES", messages_section()),
    ]
}

fn hello_example() -> String {
    let hello = Hello::new(NodeType::Client, "neo").encode();
    let hex: Vec<String> = hello.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "Example: a client of cluster `neo` speaking version {PROTOCOL_VERSION} sends\n\n```text\n{}\n```\n",
        hex.join(" ")
    )
}

fn limits_table() -> String {
    let rows: [(&str, usize, &str); 10] = [
        ("FRAME_HEADER_SIZE", limits::FRAME_HEADER_SIZE, "bytes of frame header"),
        ("HELLO_SIZE", limits::HELLO_SIZE, "bytes of hello"),
        ("BODY_SIZE_MAX", limits::BODY_SIZE_MAX, "bytes of body in one frame"),
        (
            "PAYLOAD_SIZE_MAX",
            limits::PAYLOAD_SIZE_MAX,
            "bytes of payload (one object's data) in one frame",
        ),
        ("FRAME_SIZE_MAX", limits::FRAME_SIZE_MAX, "bytes of one frame, header included"),
        (
            "READ_RESERVE_MAX",
            limits::READ_RESERVE_MAX,
            "bytes the stream decoder reserves ahead of what arrived",
        ),
        ("LIST_LENGTH_MAX", limits::LIST_LENGTH_MAX, "elements in one list"),
        (
            "OIDS_PER_TRANSACTION_MAX",
            limits::OIDS_PER_TRANSACTION_MAX,
            "oids one transaction may modify",
        ),
        ("BYTES_SIZE_MAX", limits::BYTES_SIZE_MAX, "bytes of one opaque bytes field"),
        ("TEXT_SIZE_MAX", limits::TEXT_SIZE_MAX, "bytes of one text field"),
    ];
    let mut out = String::from("| limit | value | bounds |\n|---|---:|---|\n");
    for (name, value, meaning) in rows {
        writeln!(out, "| `{name}` | {value} | {meaning} |").unwrap();
    }
    out
}

fn header_table() -> String {
    let fields: [(&str, usize, usize); 7] = [
        ("msg_id", std::mem::offset_of!(FrameHeader, msg_id), 4),
        ("kind", std::mem::offset_of!(FrameHeader, kind), 2),
        ("flags", std::mem::offset_of!(FrameHeader, flags), 2),
        ("body_size", std::mem::offset_of!(FrameHeader, body_size), 4),
        ("payload_size", std::mem::offset_of!(FrameHeader, payload_size), 4),
        ("body_crc", std::mem::offset_of!(FrameHeader, body_crc), 4),
        ("header_crc", std::mem::offset_of!(FrameHeader, header_crc), 4),
    ];
    let mut out = String::from("| offset | size | field |\n|---:|---:|---|\n");
    for (name, offset, size) in fields {
        writeln!(out, "| {offset} | {size} | `{name}` |").unwrap();
    }
    writeln!(out, "\nTotal: {} bytes.", size_of::<FrameHeader>()).unwrap();
    out
}

/// A markdown table of fields: name, type, size, encoding, meaning.
pub fn fields_table(out: &mut String, fields: &[FieldMeta]) {
    if fields.is_empty() {
        out.push_str("Empty body.\n");
        return;
    }
    out.push_str("| field | type | size | encoding | meaning |\n|---|---|---:|---|---|\n");
    for field in fields {
        let size = field.size_fixed.map_or_else(|| "var".to_owned(), |s| s.to_string());
        let ty = field.ty.replace(' ', "");
        writeln!(
            out,
            "| `{}` | `{}` | {} | {} | {} |",
            field.name,
            ty,
            size,
            field.wire,
            one_line(field.doc)
        )
        .unwrap();
    }
}

/// Doc comment text on one line.
pub fn one_line(doc: &str) -> String {
    doc.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn types_section() -> String {
    let mut out = String::new();
    for ty in TYPES {
        writeln!(out, "#### {}\n", ty.name).unwrap();
        if !ty.doc.trim().is_empty() {
            writeln!(out, "{}\n", one_line(ty.doc)).unwrap();
        }
        fields_table(&mut out, ty.fields);
        out.push('\n');
    }
    out
}

fn messages_section() -> String {
    let mut out =
        String::from("| code | message | role | direction | answer |\n|---|---|---|---|---|\n");
    for meta in CATALOGUE {
        let answer = meta.answer.map_or_else(String::new, |a| format!("{a} ({:#06x})", a as u16));
        writeln!(
            out,
            "| {:#06x} | [{}](#{}) | {} | {} | {} |",
            meta.kind as u16,
            meta.name,
            meta.name.to_lowercase(),
            meta.role.as_str(),
            meta.direction,
            answer
        )
        .unwrap();
    }
    out.push('\n');
    for meta in CATALOGUE {
        writeln!(out, "#### {}\n", meta.name).unwrap();
        let answer = match (meta.role, meta.answer) {
            (Role::Request, Some(answer)) => format!(", answered by {answer}"),
            (Role::Answer, _) => String::from(", answer"),
            _ => String::from(", notification (no answer)"),
        };
        writeln!(out, "Code {:#06x}{answer}; {}.\n", meta.kind as u16, meta.direction).unwrap();
        if !meta.doc.trim().is_empty() {
            writeln!(out, "{}\n", one_line(meta.doc)).unwrap();
        }
        fields_table(&mut out, meta.fields);
        out.push('\n');
    }
    out
}
