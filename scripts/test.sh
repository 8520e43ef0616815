#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls this). Installs what it needs on a fresh
# machine of the project's kind (Rust 1.95 with cargo; rustfmt, clippy and nextest are added
# if missing; Python 3.11 with venv and pip: maturin, ZODB and pytest go into .venv), then:
# formatting, clippy with warnings denied, the fuzz crate, the Python binding's ZODB
# conformance suites, every Rust test.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null || { echo "test.sh: cargo not found; install Rust 1.95 (rustup)" >&2; exit 1; }
cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
command -v cargo-nextest >/dev/null || cargo install cargo-nextest --locked
# The dead-host test builds network namespaces with `ip` (as root); without them it is
# skipped and says so. NEO_REQUIRE_NETNS=1 makes it fail instead.
if ! command -v ip >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  { apt-get update -qq && apt-get install -y -qq iproute2 >/dev/null; } \
    || echo "test.sh: could not install iproute2; the dead-host test will be skipped" >&2
fi
# The Python TLS test makes its certificates with the openssl command, as an operator would.
if ! command -v openssl >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq && apt-get install -y -qq openssl >/dev/null
fi

# The Python binding's build and tests: a virtual environment with maturin, ZODB (with its
# test suites) and pytest from PyPI. Its own target directory: it is not a workspace member.
venv=.venv
command -v python3 >/dev/null || { echo "test.sh: python3 not found; install Python 3.11" >&2; exit 1; }
# Debian splits venv's pip bootstrap (ensurepip) into python3-venv.
if ! python3 -c 'import ensurepip' 2>/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
fi
python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check "maturin>=1.5,<2" "ZODB[test]==6.4" "pytest>=8"
export CARGO_TARGET_DIR_PYTHON="$PWD/target/python"

echo "== rustfmt"
cargo fmt --all --check
(cd fuzz && cargo fmt --check)
(cd python && cargo fmt --check)

echo "== clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
(cd python && CARGO_TARGET_DIR="$CARGO_TARGET_DIR_PYTHON" PYO3_PYTHON="$PWD/../$venv/bin/python" \
  cargo clippy --all-targets --locked -- -D warnings)

echo "== fuzz targets compile (run them with: cd fuzz && cargo fuzz run decode_stream)"
cargo check --manifest-path fuzz/Cargo.toml --locked --quiet

echo "== doctests"
cargo test --workspace --doc --locked --quiet

echo "== python: ZODB's conformance suites through neo_rs.Storage on neo cluster processes"
cargo build -p engine --bin neo --locked
echo "test.sh: building the Python binding (a few minutes on a first run)"
(cd python && VIRTUAL_ENV="$PWD/../$venv" CARGO_TARGET_DIR="$CARGO_TARGET_DIR_PYTHON" \
  "../$venv/bin/maturin" develop --locked --quiet >/dev/null)
(cd python && NEO_BIN="$PWD/../target/debug/neo" "../$venv/bin/python" -m pytest -q -p no:cacheprovider -rs tests)

echo "== tests"
# nextest runs every test binary's tests in parallel processes. It runs last, so that its
# summary is the suite's closing line.
cargo nextest run --workspace --locked --no-fail-fast --failure-output final
