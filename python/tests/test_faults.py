"""Faults as a ZODB application meets them, on `neo master` and `neo storage` processes:
a storm of signals while committing, a storage lost (a retryable error, then the commit
goes through), the outcome of each error."""

import os
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

import transaction
import ZODB
from persistent.mapping import PersistentMapping
from transaction.interfaces import TransientError
from ZODB.POSException import StorageError

import neo_rs
from test_conformance import CLUSTER, NEO

PATIENCE = 60


class Nodes:
    """A master and storages, each a process of its own, so that a test can kill one."""

    def __init__(self, storages, replicas):
        self.directory = tempfile.mkdtemp(prefix="neo-rs-faults-")
        self.processes = {}
        master = self._spawn("master", [
            "master", "--cluster", CLUSTER, "--bind", "127.0.0.1:0", "--partitions", "6",
            "--replicas", str(replicas)], announcing=True)
        self.master = master.stdout.readline().decode().rsplit(" ", 1)[1].strip()
        self.hosts = ["h%d" % (n + 1) for n in range(storages)]
        for host in self.hosts:
            self.start_storage(host)
        self.wait_for(["print", "node"], lambda t: t.count("PENDING") == storages)
        self.ctl("start")
        self.wait_for(["print", "cluster"], lambda t: t == "RUNNING\n")

    def _spawn(self, name, arguments, announcing=False):
        process = subprocess.Popen(
            [NEO] + arguments,
            stdout=subprocess.PIPE if announcing else subprocess.DEVNULL,
            stderr=None if os.environ.get("NEO_TEST_LOG") else subprocess.DEVNULL)
        self.processes[name] = process
        return process

    def start_storage(self, host):
        self._spawn(host, [
            "storage", "--cluster", CLUSTER, "--master", self.master, "--host", host,
            "--data", os.path.join(self.directory, host)])

    def kill(self, name):
        process = self.processes.pop(name)
        process.kill()
        process.wait()

    def ctl(self, *words):
        return subprocess.run(
            [NEO, "ctl", "--cluster", CLUSTER, "--master", self.master] + list(words),
            capture_output=True, text=True, check=True).stdout

    def wait_for(self, words, accept):
        deadline = time.monotonic() + PATIENCE
        while True:
            output = subprocess.run(
                [NEO, "ctl", "--cluster", CLUSTER, "--master", self.master] + words,
                capture_output=True, text=True)
            if output.returncode == 0 and accept(output.stdout):
                return output.stdout
            if time.monotonic() > deadline:
                raise AssertionError("never saw %s; last: %r" % (words, output.stdout))
            time.sleep(0.1)

    def cells(self):
        return self.ctl("print", "pt").splitlines()[1:]

    def stop(self):
        for process in self.processes.values():
            process.kill()
            process.wait()
            if process.stdout is not None:
                process.stdout.close()
        shutil.rmtree(self.directory, ignore_errors=True)


class SignalStorm(unittest.TestCase):
    """Python's signal handlers interrupt the blocking calls of the thread they land in
    (EINTR): the client retries them; no storage is taken for failed."""

    def setUp(self):
        self.nodes = Nodes(storages=2, replicas=1)

    def tearDown(self):
        self.nodes.stop()

    def test_commits_under_a_signal_storm_fail_nothing(self):
        before = self.nodes.cells()
        self.assertFalse(any("O" in line.split()[-1] for line in before), before)
        db = ZODB.DB(neo_rs.Storage(self.nodes.master, CLUSTER))
        received = []
        previous = signal.signal(signal.SIGALRM, lambda *_: received.append(1))
        try:
            with db.transaction() as connection:
                connection.root()["counters"] = PersistentMapping()
            signal.setitimer(signal.ITIMER_REAL, 0.0005, 0.0005)
            for value in range(300):
                with db.transaction() as connection:
                    counters = connection.root()["counters"]
                    for key in ("a", "b", "c"):
                        counters[key] = value
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0, 0)
            signal.signal(signal.SIGALRM, previous)
        try:
            with db.transaction() as connection:
                self.assertEqual(dict(connection.root()["counters"]), {"a": 299, "b": 299, "c": 299})
        finally:
            db.close()
        self.assertGreater(len(received), 100, "the storm was too small to mean anything")
        self.assertEqual(self.nodes.cells(), before, "no cell may go out of date")


class LostStorage(unittest.TestCase):
    """The only copy of the data goes away: what the application sees is a retryable
    error (a TransientError, as ZEO's ClientDisconnected), and once the storage is back the
    same work commits."""

    def setUp(self):
        self.nodes = Nodes(storages=1, replicas=0)

    def tearDown(self):
        self.nodes.stop()

    def test_a_lost_storage_is_a_transient_error_and_a_retry_commits(self):
        db = ZODB.DB(neo_rs.Storage(self.nodes.master, CLUSTER))
        try:
            with db.transaction() as connection:
                connection.root()["value"] = 1
            self.nodes.kill("h1")
            self.nodes.wait_for(["print", "cluster"], lambda t: t == "RECOVERING\n")
            manager = transaction.TransactionManager()
            connection = db.open(manager)
            connection.cacheMinimize()
            with self.assertRaises(TransientError) as caught:
                manager.begin()
                connection.root()["value"] = 2
                manager.commit()
            manager.abort()
            self.assertIsInstance(caught.exception, neo_rs.ClientDisconnected)
            self.assertIsInstance(caught.exception, StorageError)
            self.nodes.start_storage("h1")
            # A standard retry loop: only transient errors are retried.
            deadline = time.monotonic() + PATIENCE
            while True:
                try:
                    manager.begin()
                    connection.root()["value"] = 2
                    manager.commit()
                    break
                except Exception as error:
                    manager.abort()
                    self.assertTrue(manager.isRetryableError(error), repr(error))
                    self.assertLess(time.monotonic(), deadline, repr(error))
                    time.sleep(0.2)
            connection.close()
            with db.transaction() as connection:
                self.assertEqual(connection.root()["value"], 2)
        finally:
            db.close()

    def test_the_exceptions_say_what_a_client_may_conclude(self):
        self.assertTrue(issubclass(neo_rs.ClientDisconnected, TransientError))
        self.assertTrue(issubclass(neo_rs.ClientDisconnected, StorageError))
        self.assertTrue(issubclass(neo_rs.NotCommitted, StorageError))
        self.assertFalse(issubclass(neo_rs.NotCommitted, TransientError),
                         "an unknown outcome must not be retried blindly")
