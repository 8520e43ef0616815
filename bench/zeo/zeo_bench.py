"""ZEO baseline for neo-bench: the same workloads through ZEO's ClientStorage, the storage
API that ZODB calls, against a ZEO server with a FileStorage.

A ZEO server runs in its own process; CLIENTS client processes (not threads: Python's GIL)
each open a ClientStorage with its cache off (every load asks the server), run the workload
for a warm-up (excluded) and then SECONDS, and send back their latencies. Workloads:

- loads: random existing objects of SIZE bytes (OBJECTS of them, written first);
- commits: transactions of OBJECTS objects of SIZE bytes each (every client its own
  objects, so no conflicts): tpc_begin, store, tpc_vote, tpc_finish (zodbshootout's update);
- add: transactions of OBJECTS new objects (zodbshootout's add);
- reads: rounds of OBJECTS loads of the client's own objects, cache off (zodbshootout's
  cold read; POPULATION objects are written first).

Writes every latency in nanoseconds to LATENCIES (little-endian unsigned 64-bit integers,
for the harness's histograms) and prints one JSON object: {"rate": ..., "count": ...}.

    python3 zeo_bench.py --dir D --workload loads --clients 16 --seconds 1 \\
        --objects 1000 --size 64 --latencies out.bin
"""

import argparse
import json
import multiprocessing
import os
import random
import socket
import struct
import subprocess
import sys
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(directory, cpu=None):
    """A ZEO server with a FileStorage in `directory`, on a free port of 127.0.0.1 (pinned
    to `cpu`), once it accepts connections: (process, port)."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "ZEO.runzeo", "-a", f"127.0.0.1:{port}",
         "-f", os.path.join(directory, "Data.fs")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    if cpu is not None:
        os.sched_setaffinity(server.pid, {cpu})
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server, port
        except OSError:
            if time.time() > deadline or server.poll() is not None:
                server.kill()
                raise SystemExit("the ZEO server did not start")
            time.sleep(0.05)


def add_common_arguments(parser):
    """The options neo-bench gives every script here."""
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--warmup", type=float, default=0.2)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--objects", type=int, default=1000)
    parser.add_argument("--server-cpu", type=int, default=None)
    parser.add_argument("--client-cpu", type=int, default=None)
    parser.add_argument("--latencies", required=True)


def measure(operation, warmup, seconds):
    """Runs `operation` for `warmup` seconds (not measured), then for `seconds`:
    (latencies in nanoseconds, elapsed seconds)."""
    started = time.perf_counter()
    while time.perf_counter() - started < warmup:
        operation()
    latencies = []
    clock = time.perf_counter_ns
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        began = clock()
        operation()
        latencies.append(clock() - began)
    return latencies, time.perf_counter() - started


def run_clients(context, clients, target_of):
    """Runs `clients` processes of `context`, the i-th `target(*arguments)` where
    `(target, arguments) = target_of(i, results)`, each putting its outcome on `results`;
    the outcomes."""
    results = context.Queue()
    processes = []
    for i in range(clients):
        target, arguments = target_of(i, results)
        processes.append(context.Process(target=target, args=arguments))
    for process in processes:
        process.start()
    outcomes = [results.get() for _ in processes]
    for process in processes:
        process.join()
    return outcomes


def write_latencies(path, outcomes):
    """Every client's latencies to `path` (little-endian u64) and the summary line."""
    latencies = [value for values, _ in outcomes for value in values]
    with open(path, "wb") as f:
        f.write(struct.pack(f"<{len(latencies)}Q", *latencies))
    rate = sum(len(values) / elapsed for values, elapsed in outcomes)
    print(json.dumps({"rate": rate, "count": len(latencies)}))


def open_storage(port):
    import ZEO

    # cache_size=0: no client cache, so that every load is a round trip to the server.
    return ZEO.client(("127.0.0.1", port), cache_size=0, wait_timeout=30)


def commit(storage, oids, serials, data):
    from ZODB.Connection import TransactionMetaData

    t = TransactionMetaData(user="bench")
    storage.tpc_begin(t)
    for oid, serial in zip(oids, serials):
        storage.store(oid, serial, data, "", t)
    storage.tpc_vote(t)
    tid = storage.tpc_finish(t)
    return [tid] * len(oids)


def populate(port, objects, size):
    storage = open_storage(port)
    oids = []
    data = b"x" * size
    for start in range(0, objects, 100):
        batch = [storage.new_oid() for _ in range(min(100, objects - start))]
        commit(storage, batch, [b"\0" * 8] * len(batch), data)
        oids.extend(batch)
    storage.close()
    return oids


def client(port, args, oids, seed, out):
    storage = open_storage(port)
    rng = random.Random(seed)
    if args.workload == "loads":
        load = storage.load

        def operation():
            load(rng.choice(oids))

    elif args.workload == "reads":
        start = (seed * args.objects) % len(oids)
        own_reads = [oids[(start + i) % len(oids)] for i in range(args.objects)]
        load = storage.load

        def operation():
            for oid in own_reads:
                load(oid)

    elif args.workload == "add":
        data = b"a" * args.size

        def operation():
            new = [storage.new_oid() for _ in range(args.objects)]
            commit(storage, new, [b"\0" * 8] * len(new), data)

    else:
        own = [storage.new_oid() for _ in range(args.objects)]
        serials = [b"\0" * 8] * len(own)
        data = b"y" * args.size

        def operation():
            nonlocal serials
            serials = commit(storage, own, serials, data)

    outcome = measure(operation, args.warmup, args.seconds)
    storage.close()
    out.put(outcome)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True)
    parser.add_argument(
        "--workload", choices=["loads", "commits", "add", "reads"], default="loads"
    )
    add_common_arguments(parser)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--population", type=int, default=1000)
    args = parser.parse_args()

    server, port = start_server(args.dir, args.server_cpu)
    try:
        if args.client_cpu is not None:
            os.sched_setaffinity(0, {args.client_cpu})
        if args.workload == "loads":
            oids = populate(port, args.objects, args.size)
        elif args.workload == "reads":
            oids = populate(port, args.population, args.size)
        else:
            oids = []
        outcomes = run_clients(
            multiprocessing.get_context(), args.clients,
            lambda i, results: (client, (port, args, oids, i, results)))
    finally:
        server.terminate()
        server.wait()
    write_latencies(args.latencies, outcomes)


if __name__ == "__main__":
    main()
