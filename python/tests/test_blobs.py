"""ZODB's blob suites (`ZODB.tests.testblob.storage_reusable_suite`: blob_connection,
blob_importexport, blob_transaction and blob_packing, testblob's doctests, BlobUndoTests
and RecoveryBlobStorage) against neo_rs.Storage with a blob directory, a `neo cluster`
process per storage the tests create.

blob_packing.txt's last examples expect a pack to collect garbage (NEEDS_GC), which
neo-rs's pack never does, as NEO's: they are skipped, the ones before them run.

As root, one example of blob_transaction.txt cannot pass whatever the storage does: it
checks that a committed blob file cannot be opened for writing, which root always can. That
example alone is skipped when running as root (the file's mode, which is what the storage
sets, is checked by `test_committed_blob_files_are_read_only` instead); everything else
runs.
"""

import doctest
import os
import stat
import unittest

import pytest
import transaction
import ZODB
from ZODB.blob import Blob
from ZODB.tests import testblob

import neo_rs
from test_conformance import CLUSTER, Cluster

CLUSTERS = []

# The example of blob_transaction.txt that only a non-root user can pass.
NEEDS_NON_ROOT = "open(blob.committed(), 'w')"

# The examples of blob_packing.txt that expect a pack to collect garbage (an object no
# longer referenced loses its current revision, and its blob file): neo-rs's pack, like
# NEO's, never does. The examples before them (old revisions' files go) run.
NEEDS_GC = ("del root['blob']", "blob_storage.pack(packtime, referencesf)",
            "[ os.path.exists(x) for x in fns ]", "os.path.exists(os.path.split(fns[0])[0])")


def _factory(name, blob_dir):
    cluster = Cluster()
    CLUSTERS.append(cluster)
    return neo_rs.Storage(cluster.master, CLUSTER, blob_dir=blob_dir)


def _cases(suite):
    for test in suite:
        if isinstance(test, unittest.TestSuite):
            yield from _cases(test)
        else:
            yield test


def _skip_examples(case):
    """Skips the examples that cannot pass here: see NEEDS_NON_ROOT and NEEDS_GC."""
    doctest_ = getattr(case, "_dt_test", None)
    if doctest_ is None:
        return
    if os.geteuid() == 0:
        for example in doctest_.examples:
            if NEEDS_NON_ROOT in example.source:
                example.options[doctest.SKIP] = True
    if doctest_.name == "blob_packing.txt":
        # From the deletion of the object on, every example is about garbage collection.
        deleted = False
        for example in doctest_.examples:
            deleted = deleted or "del root['blob']" in example.source
            if deleted and any(part in example.source for part in NEEDS_GC):
                example.options[doctest.SKIP] = True


CASES = list(_cases(testblob.storage_reusable_suite(
    "NeoRs", _factory, test_blob_storage_recovery=True, test_packing=True, test_undo=True)))


@pytest.mark.parametrize("case", CASES, ids=[case.id() for case in CASES])
def test_zodb_blob_suite(case):
    _skip_examples(case)
    result = unittest.TestResult()
    try:
        case.run(result)
    finally:
        while CLUSTERS:
            CLUSTERS.pop().stop()
    problems = result.failures + result.errors
    assert not problems, "\n".join(trace for _, trace in problems)


@pytest.fixture
def blob_db(tmp_path):
    """Opens databases on one fresh cluster, each client with a blob directory of its own;
    closes them and stops the cluster afterwards."""
    cluster = Cluster()
    databases = []

    def open_db(name="blobs"):
        storage = neo_rs.Storage(cluster.master, CLUSTER, blob_dir=str(tmp_path / name))
        databases.append(ZODB.DB(storage))
        return databases[-1]

    try:
        yield open_db
    finally:
        for db in databases:
            db.close()
        cluster.stop()


def test_committed_blob_files_are_read_only(blob_db):
    db = blob_db()
    with db.transaction() as connection:
        connection.root()["blob"] = Blob(b"committed")
    with db.transaction() as connection:
        committed = connection.root()["blob"].committed()
        mode = os.stat(committed).st_mode
        assert not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH), oct(mode)
        with open(committed, "rb") as file:
            assert file.read() == b"committed"


def test_a_second_client_reads_blobs_from_the_cluster(blob_db):
    """Each client has a blob directory of its own: the blob comes from the cluster."""
    writer, reader = blob_db("a"), blob_db("b")
    with writer.transaction() as connection:
        connection.root()["blob"] = Blob(b"x" * 100000)
    manager = transaction.TransactionManager()
    connection = reader.open(manager)
    # A transaction begins with a barrier (sync): the writer's commit is seen.
    manager.begin()
    with connection.root()["blob"].open() as file:
        assert file.read() == b"x" * 100000
    connection.close()


def test_a_blob_over_the_record_limit_is_a_clear_error(blob_db):
    connection = blob_db().open()
    connection.root()["blob"] = Blob(b"x" * (64 << 20))
    with pytest.raises(ZODB.POSException.StorageError, match="one record"):
        transaction.commit()
    transaction.abort()
    connection.close()
