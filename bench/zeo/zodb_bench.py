"""neo-bench's ZODB workloads: the same application-level operations through ZODB.DB on
neo_rs.Storage (a running neo-rs cluster) or on a ZEO ClientStorage (a ZEO server with a
FileStorage, started here), in CLIENTS client processes (Python's GIL: processes, not
threads), each with a warm-up (excluded) and then SECONDS measured.

- loads: an object not in ZODB's cache nor in the storage client's (client cache off):
  one of OBJECTS small persistent objects, ghosted, then activated (ZODB loads and
  unpickles it);
- cached-loads: the same with the storage client's cache on (20 MB, both storages' default
  size), every object loaded once first: ZODB's loads are answered by it;
- commits: a small transaction: one attribute of the client's own object changed, then
  transaction.commit().

Writes every latency in nanoseconds to LATENCIES and prints {"rate": ..., "count": ...}.

    python3 zodb_bench.py --storage neo --master 127.0.0.1:10000 --name demo \\
        --workload loads --clients 8 --seconds 1 --latencies out.bin
    python3 zodb_bench.py --storage zeo --dir D --workload commits --clients 1 ...
"""

import argparse
import multiprocessing
import os
import random

from zeo_bench import (
    add_common_arguments,
    measure,
    run_clients,
    start_server,
    write_latencies,
)


def open_db(args, port):
    import ZODB

    cache = CLIENT_CACHE if args.workload == "cached-loads" else 0
    if args.storage == "neo":
        import neo_rs

        storage = neo_rs.Storage(args.master, args.name, cache_size=cache)
    else:
        import ZEO

        storage = ZEO.client(("127.0.0.1", port), cache_size=cache, wait_timeout=30)
    return ZODB.DB(storage)


# The storage client's cache of the cached-loads workload: neo_rs's and ZEO's default.
CLIENT_CACHE = 20 << 20


def populate(args, port):
    import transaction
    from persistent.mapping import PersistentMapping

    db = open_db(args, port)
    with db.transaction() as connection:
        connection.root()["bench"] = [PersistentMapping(value=i) for i in range(args.objects)]
        for i in range(args.clients):
            connection.root()["own-%d" % i] = PersistentMapping(value=0)
    db.close()
    del transaction


def client(args, port, number, out):
    import transaction

    db = open_db(args, port)
    manager = transaction.TransactionManager()
    connection = db.open(manager)
    root = connection.root()
    objects = root["bench"]
    own = root["own-%d" % number]
    rng = random.Random(number)

    if args.workload == "cached-loads":
        # Every object through the storage client's cache once, before any measurement:
        # a warm-up of a fraction of a second would not reach them all at ZEO's rate.
        for obj in objects:
            obj._p_invalidate()
            obj._p_activate()

    if args.workload in ("loads", "cached-loads"):

        def operation():
            obj = rng.choice(objects)
            obj._p_invalidate()
            obj._p_activate()

    else:

        def operation():
            manager.begin()
            own["value"] += 1
            manager.commit()

    outcome = measure(operation, args.warmup, args.seconds)
    connection.close()
    db.close()
    out.put(outcome)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--storage", choices=["neo", "zeo"], required=True)
    parser.add_argument("--master", help="neo: the masters")
    parser.add_argument("--name", help="neo: the cluster's name")
    parser.add_argument("--dir", help="zeo: where the FileStorage goes")
    parser.add_argument(
        "--workload", choices=["loads", "cached-loads", "commits"], default="loads")
    add_common_arguments(parser)
    args = parser.parse_args()
    if args.storage == "neo" and not (args.master and args.name):
        parser.error("--storage neo needs --master and --name")
    if args.storage == "zeo" and not args.dir:
        parser.error("--storage zeo needs --dir")

    server, port = (None, None)
    if args.storage == "zeo":
        server, port = start_server(args.dir, args.server_cpu)
    try:
        if args.client_cpu is not None:
            os.sched_setaffinity(0, {args.client_cpu})
        populate(args, port)
        # Spawned, not forked: the neo-rs client runs threads, which fork does not copy.
        outcomes = run_clients(
            multiprocessing.get_context("spawn"), args.clients,
            lambda i, results: (client, (args, port, i, results)))
    finally:
        if server is not None:
            server.terminate()
            server.wait()
    write_latencies(args.latencies, outcomes)


if __name__ == "__main__":
    main()
