"""ZEO baseline for neo-bench's cluster workload: loads of small objects through ZEO.

A ZEO server (FileStorage) runs in its own process; CLIENTS client processes each open a
ClientStorage and load random existing objects for SECONDS, with the client cache off (every
load asks the server), after a warm-up. Prints one JSON object: the total rate and latency
percentiles in nanoseconds.

    python3 zeo_loads.py --dir D --clients 16 --seconds 1 --objects 1000 --size 64
"""

import argparse
import json
import multiprocessing
import os
import random
import socket
import subprocess
import sys
import time

WARMUP = 0.2


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def open_storage(port):
    import ZEO

    # cache_size=0: no client cache, so that every load is a round trip to the server.
    return ZEO.client(("127.0.0.1", port), cache_size=0, wait_timeout=30)


def populate(port, objects, size):
    import transaction as txn_module
    from ZODB.Connection import TransactionMetaData

    storage = open_storage(port)
    oids = []
    data = b"x" * size
    for start in range(0, objects, 100):
        t = TransactionMetaData()
        storage.tpc_begin(t)
        for _ in range(min(100, objects - start)):
            oid = storage.new_oid()
            storage.store(oid, b"\0" * 8, data, "", t)
            oids.append(oid)
        storage.tpc_vote(t)
        storage.tpc_finish(t)
    storage.close()
    del txn_module
    return oids


def client(port, oids, seconds, seed, out):
    storage = open_storage(port)
    rng = random.Random(seed)
    load = storage.load
    started = time.perf_counter()
    while time.perf_counter() - started < WARMUP:
        load(rng.choice(oids))
    latencies = []
    started = time.perf_counter()
    clock = time.perf_counter_ns
    while time.perf_counter() - started < seconds:
        began = clock()
        load(rng.choice(oids))
        latencies.append(clock() - began)
    elapsed = time.perf_counter() - started
    storage.close()
    out.put((latencies, elapsed))


def percentile(sorted_values, q):
    if not sorted_values:
        return 0
    index = min(len(sorted_values) - 1, int(q * len(sorted_values)))
    return sorted_values[index]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--objects", type=int, default=1000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--server-cpu", type=int, default=None)
    parser.add_argument("--client-cpu", type=int, default=None)
    args = parser.parse_args()

    port = free_port()
    path = os.path.join(args.dir, "Data.fs")
    server = subprocess.Popen(
        [sys.executable, "-m", "ZEO.runzeo", "-a", f"127.0.0.1:{port}", "-f", path],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        if args.server_cpu is not None:
            os.sched_setaffinity(server.pid, {args.server_cpu})
        if args.client_cpu is not None:
            os.sched_setaffinity(0, {args.client_cpu})
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise SystemExit("the ZEO server did not start")
                time.sleep(0.05)
        oids = populate(port, args.objects, args.size)
        results = multiprocessing.Queue()
        processes = [
            multiprocessing.Process(target=client, args=(port, oids, args.seconds, i, results))
            for i in range(args.clients)
        ]
        for process in processes:
            process.start()
        outcomes = [results.get() for _ in processes]
        for process in processes:
            process.join()
    finally:
        server.terminate()
        server.wait()
    latencies = sorted(value for values, _ in outcomes for value in values)
    rate = sum(len(values) / elapsed for values, elapsed in outcomes)
    print(
        json.dumps(
            {
                "rate": rate,
                "count": len(latencies),
                "p50": percentile(latencies, 0.5),
                "p90": percentile(latencies, 0.9),
                "p99": percentile(latencies, 0.99),
                "p999": percentile(latencies, 0.999),
                "max": latencies[-1] if latencies else 0,
            }
        )
    )


if __name__ == "__main__":
    main()
