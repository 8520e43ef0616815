//! docs/logstore-format.md stays true: its generated sections must equal what the code
//! renders. Run with `UPDATE_DOCS=1` to rewrite them after a deliberate format change (which
//! also needs a new `FORMAT_VERSION`).

use std::path::PathBuf;

#[test]
fn format_document_matches_code() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/logstore-format.md");
    let stale = wire::doc::check_generated(
        &path,
        "cargo test -p logstore --test docs",
        logstore::doc::sections(),
    );
    assert!(
        stale.is_empty(),
        "docs/logstore-format.md is out of date in {stale:?}; review, then run with UPDATE_DOCS=1"
    );
}
