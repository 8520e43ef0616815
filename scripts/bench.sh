#!/usr/bin/env bash
# The main job: the benchmark harness on an embedded cluster (README's first command).
# Sets up what it needs on a fresh machine: the ZEO baseline's Python packages (ZEO and ZODB
# from PyPI, in .venv-bench; without them the report says the ZEO baseline was skipped) and
# the Python binding (for the ZODB workloads), then runs `neo-bench` in release mode with
# the arguments given (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null || { echo "bench.sh: cargo not found; install Rust 1.95 (rustup)" >&2; exit 1; }
venv=.venv-bench
if [ -z "${NEO_BENCH_PYTHON:-}" ] && command -v python3 >/dev/null; then
  if ! "$venv/bin/python" -c "import ZEO, ZODB" 2>/dev/null; then
    echo "bench.sh: installing ZEO and ZODB into $venv for the ZEO baseline" >&2
    { python3 -m venv "$venv" && "$venv/bin/pip" install -q "ZODB>=6" "ZEO>=6"; } \
      || echo "bench.sh: could not install ZEO; the report will skip the ZEO baseline" >&2
  fi
  if "$venv/bin/python" -c "import ZEO, ZODB" 2>/dev/null; then
    export NEO_BENCH_PYTHON="$PWD/$venv/bin/python"
    # The ZODB workloads run neo_rs.Storage: the Python binding, built in release mode.
    echo "bench.sh: building the Python binding (release; a few minutes on a first run)" >&2
    { "$venv/bin/pip" install -q "maturin>=1.5,<2" \
        && (cd python && VIRTUAL_ENV="$PWD/../$venv" CARGO_TARGET_DIR="$PWD/../target/python" \
              "../$venv/bin/maturin" develop --release --locked --quiet >/dev/null); } \
      || echo "bench.sh: could not build the Python binding; the report will skip the ZODB workloads" >&2
  fi
fi
# The neo binary beside neo-bench: the replication benchmark runs neo processes.
cargo build --release --locked -p engine --bin neo
exec cargo run --release --locked -p bench --bin neo-bench -- "$@"
