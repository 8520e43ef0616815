//! docs/protocol.md stays true: its generated sections must equal what the code renders.
//! Run with `UPDATE_DOCS=1` to rewrite them after a deliberate change.

use std::path::PathBuf;

fn document_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/protocol.md")
}

#[test]
fn protocol_document_matches_code() {
    let stale = wire::doc::check_generated(
        &document_path(),
        "cargo test -p wire --test docs",
        wire::doc::sections(),
    );
    assert!(
        stale.is_empty(),
        "docs/protocol.md is out of date in sections {stale:?}; the code changed the protocol. \
         Review the change, then run `UPDATE_DOCS=1 cargo test -p wire --test docs`."
    );
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
