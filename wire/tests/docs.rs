//! docs/protocol.md stays true: its generated sections must equal what the code renders.
//! Run with `UPDATE_DOCS=1` to rewrite them after a deliberate change.

use std::path::PathBuf;

fn document_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/protocol.md")
}

#[test]
fn protocol_document_matches_code() {
    let path = document_path();
    let mut document = std::fs::read_to_string(&path).expect("docs/protocol.md exists");
    let update = std::env::var_os("UPDATE_DOCS").is_some();
    let mut stale = Vec::new();
    for (section, rendered) in wire::doc::sections() {
        let (begin, end) = wire::doc::markers(section);
        let start = document
            .find(&begin)
            .unwrap_or_else(|| panic!("docs/protocol.md lacks the marker {begin}"));
        let content_start = start + begin.len();
        let stop = content_start
            + document[content_start..]
                .find(&end)
                .unwrap_or_else(|| panic!("docs/protocol.md lacks the marker {end}"));
        let expected = format!("\n{rendered}");
        if document[content_start..stop] != expected {
            stale.push(section);
            document.replace_range(content_start..stop, &expected);
        }
    }
    if update {
        std::fs::write(&path, document).unwrap();
    } else {
        assert!(
            stale.is_empty(),
            "docs/protocol.md is out of date in sections {stale:?}; the code changed the protocol. \
             Review the change, then run `UPDATE_DOCS=1 cargo test -p wire --test docs`."
        );
    }
}

#[test]
fn every_message_has_a_prose_or_field_description() {
    for meta in wire::CATALOGUE {
        assert!(
            !meta.doc.trim().is_empty()
                || !meta.fields.is_empty()
                || meta.role == wire::Role::Answer,
            "{} is neither documented nor has fields",
            meta.name
        );
    }
}
