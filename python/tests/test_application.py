"""An application's shape: several processes committing into shared BTrees through
ZODB.DB(neo_rs.Storage), with ZODB's conflict resolution (BTree buckets merge concurrent
inserts of different keys) and retries of what cannot be resolved."""

import multiprocessing
import unittest

import transaction
import ZODB
from BTrees.Length import Length
from BTrees.OOBTree import OOBTree
from ZODB.POSException import ConflictError

import neo_rs
from test_conformance import CLUSTER, Cluster

PROCESSES = 4
KEYS_PER_PROCESS = 150
KEYS_PER_TRANSACTION = 5


def writer(master, number, results):
    """Inserts this process's keys into the shared tree, a few per transaction, and counts
    them in a Length (whose conflicts always resolve)."""
    db = ZODB.DB(neo_rs.Storage(master, CLUSTER))
    manager = transaction.TransactionManager()
    connection = db.open(manager)
    retries = 0
    try:
        keys = ["k%04d-%d" % (i, number) for i in range(KEYS_PER_PROCESS)]
        for start in range(0, len(keys), KEYS_PER_TRANSACTION):
            while True:
                try:
                    manager.begin()
                    root = connection.root()
                    for key in keys[start:start + KEYS_PER_TRANSACTION]:
                        root["tree"][key] = number
                    root["count"].change(len(keys[start:start + KEYS_PER_TRANSACTION]))
                    manager.commit()
                    break
                except ConflictError:
                    manager.abort()
                    retries += 1
        results.put((number, retries, None))
    except BaseException as error:  # reported to the test, which fails with it
        results.put((number, retries, repr(error)))
    finally:
        connection.close()
        db.close()


class BTreesFromSeveralProcesses(unittest.TestCase):
    def setUp(self):
        self.cluster = Cluster()

    def tearDown(self):
        self.cluster.stop()

    def test_concurrent_inserts_all_land_and_the_count_agrees(self):
        db = ZODB.DB(neo_rs.Storage(self.cluster.master, CLUSTER))
        try:
            with db.transaction() as connection:
                connection.root()["tree"] = OOBTree()
                connection.root()["count"] = Length()
            context = multiprocessing.get_context("spawn")
            results = context.Queue()
            processes = [
                context.Process(target=writer, args=(self.cluster.master, n, results))
                for n in range(PROCESSES)
            ]
            for process in processes:
                process.start()
            outcomes = [results.get(timeout=300) for _ in processes]
            for process in processes:
                process.join(60)
            errors = [(n, error) for n, _, error in outcomes if error]
            print("retries per process:", [r for _, r, _ in outcomes])
            self.assertEqual(errors, [])
            with db.transaction() as connection:
                tree, count = connection.root()["tree"], connection.root()["count"]
                self.assertEqual(len(tree), PROCESSES * KEYS_PER_PROCESS)
                self.assertEqual(count(), PROCESSES * KEYS_PER_PROCESS)
                for n in range(PROCESSES):
                    self.assertEqual(tree["k%04d-%d" % (KEYS_PER_PROCESS - 1, n)], n)
                tree._check()  # the BTree's own structural check after the merges
        finally:
            db.close()

