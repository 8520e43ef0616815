#!/usr/bin/env bash
# Measures a storage tuning choice end to end: starts a master and one `neo storage` on
# 127.0.0.1 with the storage options given, runs neo-bench's load and commit cases against
# it (with the bench's same-run baselines: ping-pong, echo, raw fdatasync on the same disk),
# stops the cluster and removes its data. Run it once per variant, alternating variants,
# and compare the ratios to the baselines (docs/deploy.md, "Host tuning").
#
#   deploy/tuning-bench.sh OUT_DIR [neo storage options...]
#   deploy/tuning-bench.sh /tmp/t/pinned --cpus 1
#   deploy/tuning-bench.sh /tmp/t/unpinned
#   deploy/tuning-bench.sh /tmp/t/spin --cpus 1 --spin-us 50
#
# Environment: NEO_BIN_DIR (default target/release: neo and neo-bench), WORK (default
# /tmp/neo-tuning: data directories, removed), PORT (default 17100), BENCH_ARGS (default:
# zwrk commit, 1 and 16 clients, 1 s per case, 3 repeats, clients on CPU 0).
set -euo pipefail
out=${1:?usage: tuning-bench.sh OUT_DIR [neo storage options...]}
shift
bin=${NEO_BIN_DIR:-target/release}
work=${WORK:-/tmp/neo-tuning}
port=${PORT:-17100}
read -r -a bench_args <<< "${BENCH_ARGS:-zwrk commit --clients 1,16 --seconds 1 --repeats 3 --cpu 0 --compare none}"

rm -rf "$work"
mkdir -p "$work/raw"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

"$bin/neo" master --cluster tuning --bind "127.0.0.1:$port" --partitions 12 --autostart 1 \
    > "$work/master.log" 2>&1 &
pids+=($!)
"$bin/neo" storage --cluster tuning --master "127.0.0.1:$port" --data "$work/storage" "$@" \
    > "$work/storage.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
    if "$bin/neo" ctl --cluster tuning --master "127.0.0.1:$port" print cluster 2>/dev/null \
        | grep -q RUNNING; then
        break
    fi
    sleep 0.1
done
"$bin/neo-bench" "${bench_args[@]}" --cluster "127.0.0.1:$port" --name tuning \
    --dir "$work/raw" --out "$out"
echo "storage options: $*" >> "$out/variant.txt"
