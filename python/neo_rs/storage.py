"""The ZODB storage on a neo-rs cluster.

    import ZODB, neo_rs
    db = ZODB.DB(neo_rs.Storage(master_nodes="127.0.0.1:10000", name="demo"))

A thin layer over the Rust client (``neo_rs._core``): it keeps ZODB's rules for two-phase
commit (one transaction at a time per storage object, the errors ZODB expects), resolves
conflicts with ZODB's own ``tryToResolveConflict`` and maps the client's errors to
``ZODB.POSException``.
"""

import os
import tempfile
import threading
import time
import warnings
from pickle import loads

import zope.interface
from transaction.interfaces import TransientError
from ZODB import POSException
from ZODB.BaseStorage import DataRecord, TransactionRecord, copy
from ZODB.ConflictResolution import ConflictResolvingStorage
from ZODB.blob import (
    BlobFile,
    FilesystemHelper,
    copyTransactionsFromTo,
    remove_committed,
    rename_or_copy_blob,
    set_not_writable,
)
from ZODB.interfaces import (
    IBlobStorage,
    IBlobStorageRestoreable,
    IExternalGC,
    IMultiCommitStorage,
    IStorage,
    IStorageIteration,
    IStorageRestoreable,
    IStorageUndoable,
)
from persistent.TimeStamp import TimeStamp
from ZODB.utils import p64, tid_repr, u64, z64

from . import _core, blobs

# Interfaces ZODB checks with verifyObject (and IBlobStorage, IBlobStorageRestoreable on a
# storage with a blob_dir).
_INTERFACES = (
    IStorage,
    IExternalGC,
    IMultiCommitStorage,
    IStorageIteration,
    IStorageRestoreable,
    IStorageUndoable,
)


def _masters(master_nodes):
    if isinstance(master_nodes, str):
        master_nodes = master_nodes.replace(",", " ").split()
    masters = [str(m) for m in master_nodes]
    if not masters:
        raise ValueError("master_nodes: at least one master address (host:port)")
    return masters


class ClientDisconnected(POSException.StorageError, TransientError):
    """The cluster could not serve the call now: no primary master reachable, a failover,
    the cluster recovering from a lost storage, a storage that failed during the commit.
    Nothing of a transaction that failed so was committed: retry it (ZODB's transaction
    managers retry a ``TransientError``), as with ZEO's exception of the same name."""


class NotCommitted(POSException.StorageError):
    """``tpc_finish`` could not learn whether the transaction committed: the cluster lost
    its answer and could not say afterwards (it stayed out of operation too long). It may
    or may not be committed: look at the data before doing it again."""


def _translated(call, *args):
    """Calls the Rust client, turning its failures into ZODB's exceptions: what a retry may
    overcome into ``ClientDisconnected`` (a ``TransientError``), an unknown commit outcome
    into ``NotCommitted``."""
    try:
        return call(*args)
    except (_core.OidDoesNotExist, _core.OidNotFound):
        raise  # the callers turn these into POSKeyError, or a missing revision
    except _core.Transient as error:
        raise ClientDisconnected("neo-rs: %s" % error) from error
    except _core.NotCommitted as error:
        raise NotCommitted("neo-rs: %s" % error) from error
    except _core.ClientClosed as error:
        raise POSException.StorageError("the storage is closed") from error
    except _core.NeoError as error:
        # Anything else the cluster or the client refused: a limit, a protocol error.
        raise POSException.StorageError("neo-rs: %s" % error) from error


@zope.interface.implementer(*_INTERFACES)
class Storage(ConflictResolvingStorage):
    """A ZODB storage backed by a neo-rs cluster.

    master_nodes: the masters, "host:port" separated by spaces or commas (or a list).
    name: the cluster's name. read_only: refuse every write. cache_size: bytes of the
    client's object cache (0: off). spin_us: microseconds a thread waiting for a storage's
    answer polls before it sleeps (an answer within it costs no wake-up; 0: sleep at once).
    storage_timeout: seconds a storage may stay silent (its pings unanswered) before this
    client takes it for hung and goes on without it.
    blob_dir: a directory of this client's where blob files are kept (ZODB's blobs are
    supported only with one): the blobs themselves are in the cluster, this is a cache of
    their files, which it does not bound.
    """

    def __init__(self, master_nodes, name="neo", read_only=False, cache_size=20 << 20,
                 spin_us=50, blob_dir=None, storage_timeout=10.0, ca=None, cert=None,
                 key=None, **_ignored):
        self._masters = _masters(master_nodes)
        self._name = name
        self._read_only = bool(read_only)
        self._cache_size = int(cache_size)
        self._spin_us = int(spin_us)
        self._storage_timeout = float(storage_timeout)
        # Mutual TLS (the cluster's CA, this client's certificate with the neo-client role
        # and its key, PEM files), or plain TCP.
        self._tls = (ca, cert, key)
        self._client = _translated(
            _core.Client, name, self._masters, self._cache_size, self._read_only,
            self._spin_us, self._storage_timeout, *self._tls)
        # Held from tpc_begin to tpc_finish or tpc_abort: one transaction at a time.
        self._commit_lock = threading.Lock()
        # Guards what follows and orders invalidations against close.
        self._lock = threading.RLock()
        self._reset()
        self._db = None
        self._closed = False
        # What lastTransaction returns: a tid whose invalidations were all delivered.
        self._last_tid = z64
        # The next sync takes the master's last tid (after a reconnection: the caches above
        # are dropped, so the snapshot may move past what was missed).
        self._resync = False
        # Invalidations are followed from the start, so that lastTransaction never passes
        # one that a database registered later would miss.
        self._blob_dir = blob_dir
        if blob_dir is not None:
            # Absolute: the application may change its working directory.
            self.fshelper = FilesystemHelper(os.path.abspath(blob_dir))
            self.fshelper.create()
            zope.interface.alsoProvides(self, IBlobStorage, IBlobStorageRestoreable)
        self._client.set_invalidation_callback(self._invalidate)
        self._client.set_reset_callback(self._reconnected)
        self._advance(_translated(self._client.sync))

    # -- identity and state --------------------------------------------------------------

    def getName(self):
        return self._name

    def sortKey(self):
        return "neo-rs:%s@%s" % (self._name, ",".join(self._masters))

    def getSize(self):
        return 0

    def __len__(self):
        return 0

    def isReadOnly(self):
        return self._read_only

    def lastTransaction(self):
        return self._last_tid

    def _advance(self, tid):
        with self._lock:
            if tid is not None and tid > self._last_tid:
                self._last_tid = tid

    def sync(self, force=True):
        # A barrier: the invalidations of every commit the master knew of are delivered
        # (and lastTransaction moved with them) when it returns. The master's last tid is
        # not taken, but after a reconnection: a commit of this storage object may be
        # finishing in another thread, its sibling connections not yet invalidated.
        tid = _translated(self._client.sync)
        with self._lock:
            resync, self._resync = self._resync, False
        if resync:
            self._advance(tid)

    def _reconnected(self):
        # From the client's master thread, before anything the new primary sends: what the
        # database cached may have missed invalidations.
        with self._lock:
            if self._closed:
                return
            self._resync = True
            db = self._db
            if db is not None:
                db.invalidateCache()

    def registerDB(self, db):
        with self._lock:
            self._db = db

    def _invalidate(self, tid, oids):
        # From the client's master thread, in commit order, before lastTransaction moves.
        with self._lock:
            if self._closed:
                return
            db = self._db
            if db is not None:
                db.invalidate(tid, set(oids))
            if tid > self._last_tid:
                self._last_tid = tid

    def metrics(self):
        """This client's figures in Prometheus's text format: loads from the storages and
        commits, counted, with latency percentiles (neo_client_load_seconds,
        neo_client_commit_seconds), for the application to serve at its /metrics."""
        return self._client.metrics_text()

    def close(self):
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._client.close()

    def new_client(self):
        """A second client of the same cluster, as another process would open it."""
        ca, cert, key = self._tls
        return Storage(self._masters, self._name, self._read_only, self._cache_size,
                       self._spin_us, self._blob_dir, self._storage_timeout, ca, cert, key)

    # -- reads ---------------------------------------------------------------------------

    def loadBefore(self, oid, tid):
        try:
            loaded = _translated(self._client.load_before, oid, tid)
        except _core.OidDoesNotExist:
            raise POSException.POSKeyError(oid) from None
        # A revision without data deletes the object (deleteObject, or its creation undone).
        if loaded is not None and not loaded[0]:
            raise POSException.POSKeyError(oid)
        if loaded is not None and blobs.is_blob(loaded[0]):
            return blobs.pickle_of(loaded[0]), loaded[1], loaded[2]
        return loaded

    def load(self, oid, version=""):
        loaded = self.loadBefore(oid, _core.MAX_TID)
        if loaded is None:
            raise POSException.POSKeyError(oid)
        return loaded[0], loaded[1]

    def loadSerial(self, oid, serial):
        return blobs.pickle_of(self._record(oid, serial))

    def _record(self, oid, serial):
        """The whole record the revision `serial` of `oid` holds (a blob's included)."""
        try:
            data = _translated(self._client.load_serial, oid, serial)
        except (_core.OidDoesNotExist, _core.OidNotFound):
            raise POSException.POSKeyError(oid) from None
        if not data:
            raise POSException.POSKeyError(oid)
        return data

    def getTid(self, oid):
        return self.load(oid)[1]

    # -- writes --------------------------------------------------------------------------

    def _check_writable(self):
        if self._read_only:
            raise POSException.ReadOnlyError()

    def new_oid(self):
        self._check_writable()
        while True:
            (oid,) = _translated(self._client.new_oids, 1)
            # The root object is z64, created by ZODB.DB without new_oid.
            if oid != z64:
                return oid

    def tpc_begin(self, transaction, tid=None, status=" "):
        self._check_writable()
        if self._transaction is transaction:
            raise POSException.StorageTransactionError(
                "Duplicate tpc_begin calls for same transaction")
        self._commit_lock.acquire()
        try:
            self._txn = _translated(self._client.tpc_begin, tid)
        except BaseException:
            self._commit_lock.release()
            raise
        self._transaction = transaction

    def tpc_transaction(self):
        return self._transaction

    def _check_transaction(self, transaction):
        if transaction is not self._transaction or self._txn is None:
            raise POSException.StorageTransactionError(self, transaction)

    def store(self, oid, serial, data, version, transaction):
        self._check_writable()
        self._check_transaction(transaction)
        if version:
            raise POSException.Unsupported("versions are not supported")
        if serial is None:
            serial = z64
        elif isinstance(serial, str):
            # Some of ZODB's tests still pass a serial as text (Python 2's bytes).
            serial = serial.encode("latin-1")
        _translated(self._txn.store, oid, serial, data)
        self._stored[oid] = (data, serial)

    def restore(self, oid, serial, data, version, prev_txn, transaction):
        """A revision copied from another storage (copyTransactionsFrom), in a transaction
        begun with its tid: no conflict check against what this storage holds; `data`
        None with `prev_txn` takes that revision's data back (an undo), without it deletes
        the object (its creation undone)."""
        self._check_writable()
        self._check_transaction(transaction)
        if version:
            raise POSException.Unsupported("versions are not supported")
        current = self._current_serial(oid)
        if data is None:
            _translated(self._txn.store_undo, oid, current, prev_txn)
        else:
            _translated(self._txn.store, oid, current, data)
        self._stored[oid] = (data, current)

    def _current_serial(self, oid):
        """The serial of the object's newest revision, deletions included (z64: none)."""
        try:
            loaded = _translated(self._client.load_before, oid, _core.MAX_TID)
        except _core.OidDoesNotExist:
            return z64
        return z64 if loaded is None else loaded[1]

    def copyTransactionsFrom(self, other, verbose=False):
        """Copies every transaction of `other` (an iterable storage) here, under the same
        tids (this storage must hold none after the first of them); with a blob directory,
        blobs too."""
        if self._blob_dir is not None:
            copyTransactionsFromTo(other, self)
        else:
            copy(other, self, verbose)

    # -- blobs (with a blob directory) -----------------------------------------------------

    def storeBlob(self, oid, oldserial, data, blobfilename, version, transaction):
        """Stores the object and its blob in one record; the file is this storage's from
        here on (kept as the committed blob's file once the transaction commits)."""
        self._check_blobs()
        self._check_transaction(transaction)
        record, kept = self._take_blob_file(data, blobfilename)
        try:
            self.store(oid, oldserial, record, version, transaction)
        except BaseException:
            os.remove(kept)
            raise
        self._blob_files.append((oid, kept))

    def restoreBlob(self, oid, serial, data, blobfilename, prev_txn, transaction):
        """`restore` of a blob revision (copyTransactionsFrom); the file is this
        storage's from here on."""
        self._check_blobs()
        self._check_transaction(transaction)
        record, kept = self._take_blob_file(data, blobfilename)
        try:
            self.restore(oid, serial, record, "", prev_txn, transaction)
        except BaseException:
            os.remove(kept)
            raise
        self._blob_files.append((oid, kept))

    def _take_blob_file(self, data, blobfilename):
        """The record of a blob revision, and the blob's file, moved into this storage's
        temporary directory (the caller's may go away before the commit ends)."""
        descriptor, kept = tempfile.mkstemp(suffix=".blob", dir=self.fshelper.temp_dir)
        os.close(descriptor)
        rename_or_copy_blob(blobfilename, kept, chmod=False)
        try:
            with open(kept, "rb") as blob:
                return blobs.record(data, blob.read()), kept
        except BaseException:
            os.remove(kept)
            raise

    def loadBlob(self, oid, serial):
        """The file of the blob of revision `serial` of `oid`: from the blob directory,
        where it is written from the cluster's record the first time."""
        self._check_blobs()
        filename = self.fshelper.getBlobFilename(oid, serial)
        if os.path.exists(filename):
            return filename
        try:
            _, blob = blobs.split(self._record(oid, serial))
        except POSException.POSKeyError:
            blob = None
        if blob is None:
            raise POSException.POSKeyError("No blob file", oid, serial)
        self.fshelper.createPathForOID(oid)
        descriptor, temporary = tempfile.mkstemp(
            suffix=".tmp", dir=self.fshelper.temp_dir)
        with os.fdopen(descriptor, "wb") as file:
            file.write(blob)
        set_not_writable(temporary)
        # In place at once, whole: another thread or process may be writing the same file.
        os.replace(temporary, filename)
        return filename

    def openCommittedBlobFile(self, oid, serial, blob=None):
        filename = self.loadBlob(oid, serial)
        if blob is None:
            return open(filename, "rb")
        return BlobFile(filename, "r", blob)

    def temporaryDirectory(self):
        self._check_blobs()
        return self.fshelper.temp_dir

    def _check_blobs(self):
        if self._blob_dir is None:
            raise POSException.Unsupported("blobs need a blob_dir")

    def _keep_blob_files(self, tid):
        """The blob files of a committed transaction become its committed blobs' files."""
        for oid, filename in self._blob_files:
            self.fshelper.createPathForOID(oid)
            target = self.fshelper.getBlobFilename(oid, tid)
            if os.path.exists(target):
                os.remove(filename)
            else:
                rename_or_copy_blob(filename, target)

    def _drop_blob_files(self):
        for _, filename in self._blob_files:
            try:
                os.remove(filename)
            except FileNotFoundError:
                pass

    def checkCurrentSerialInTransaction(self, oid, serial, transaction):
        self._check_transaction(transaction)
        _translated(self._txn.check_current_serial, oid, serial)
        self._checked[oid] = serial

    def deleteObject(self, oid, serial, transaction):
        self._check_writable()
        self._check_transaction(transaction)
        _translated(self._txn.delete_object, oid, serial)
        self._stored[oid] = (None, serial)

    def tpc_vote(self, transaction):
        self._check_transaction(transaction)
        user = _bytes(getattr(transaction, "user", b""))
        description = _bytes(getattr(transaction, "description", b""))
        extension = getattr(transaction, "extension_bytes", b"")
        while True:
            conflicts = _translated(self._txn.vote, user, description, extension)
            if not conflicts:
                return list(self._resolved) or None
            for oid, base, current in conflicts:
                if oid in self._checked and oid not in self._stored:
                    raise POSException.ReadConflictError(oid=oid, serials=(current, base))
                data = self._stored[oid][0]
                if data is None:
                    raise POSException.ConflictError(oid=oid, serials=(current, base))
                # ZODB resolves no conflict of blobs (the error names the class).
                if blobs.is_blob(data):
                    raise POSException.ConflictError(
                        oid=oid, serials=(current, base), data=blobs.pickle_of(data))
                # Raises ConflictError when the application cannot resolve it.
                resolved = self.tryToResolveConflict(oid, current, base, data)
                _translated(self._txn.store, oid, current, resolved)
                self._stored[oid] = (resolved, current)
                self._resolved.add(oid)

    def tpc_finish(self, transaction, func=lambda tid: None):
        self._check_transaction(transaction)
        try:
            tid = _translated(self._txn.finish, func)
            self._advance(tid)
            self._keep_blob_files(tid)
            return tid
        finally:
            self._end()

    def tpc_abort(self, transaction):
        if transaction is not self._transaction or self._txn is None:
            return
        try:
            self._txn.abort()
        finally:
            self._drop_blob_files()
            self._end()

    def _end(self):
        self._reset()
        self._commit_lock.release()

    def _reset(self):
        """No transaction in progress: what one holds, emptied."""
        self._transaction = None
        self._txn = None
        # oid -> (data stored, serial it is based on): what conflict resolution needs.
        self._stored = {}
        # oid -> serial an undo of this transaction took the data of back.
        self._undone_to = {}
        self._checked = {}
        self._resolved = set()
        # (oid, file) of the blobs stored: kept once committed, removed if aborted.
        self._blob_files = []

    # -- iteration -----------------------------------------------------------------------

    def iterator(self, start=None, stop=None):
        """The committed transactions with tids in `start ..= stop`, oldest first, as of
        now (later commits are not seen)."""
        return TransactionIterator(self, start, stop)

    # -- history -------------------------------------------------------------------------

    def history(self, oid, size=1):
        """The object's revisions, newest first, at most `size`, as ZODB's dicts."""
        try:
            revisions = _translated(self._client.history, oid, max(int(size), 1))
        except _core.OidDoesNotExist:
            raise POSException.POSKeyError(oid) from None
        history = []
        for serial, length in revisions:
            entry = self._transaction_entry(serial)
            entry.update(tid=serial, serial=serial, size=length)
            history.append(entry)
        return history

    def _transaction_entry(self, tid, undoable_only=False):
        """ZODB's dict of a transaction's metadata: time, user_name, description and the
        extension's keys. With `undoable_only`, None for a transaction there is nothing to
        undo of: packed (the revisions before it may be gone), or changing no object (a
        pack's own transaction)."""
        user, description, extension, packed, oids = _translated(
            self._client.transaction_information, tid)
        if undoable_only and (packed or not oids):
            return None
        entry = {}
        if extension:
            try:
                entry.update(loads(extension))
            except Exception:  # an extension that is not a pickled dict: left out
                pass
        entry.update(time=TimeStamp(tid).timeTime(), user_name=user, description=description)
        return entry

    # -- undo ----------------------------------------------------------------------------

    def supportsUndo(self):
        return True

    def undoLog(self, first=0, last=-20, filter=None):
        """Transactions that can be undone, newest first: entries `first .. last` of those
        `filter` accepts (a negative `last` counts from `first`)."""
        if last < 0:
            last = first - last
        entries = []
        position, page = 0, max(last, 20)
        while len(entries) < last:
            tids = _translated(self._client.tids_descending, position, position + page)
            for tid in tids:
                entry = self._transaction_entry(tid, undoable_only=True)
                if entry is None:
                    continue
                entry["id"] = tid
                if filter is None or filter(entry):
                    entries.append(entry)
            position += len(tids)
            if len(tids) < page:
                break
        return entries[first:last]

    def undoInfo(self, first=0, last=-20, specification=None):
        def matches(entry):
            return all(entry.get(key) == value for key, value in specification.items())

        return self.undoLog(first, last, matches if specification else None)

    def undo(self, transaction_id, transaction=None):
        """Undoes transaction `transaction_id` within `transaction`: each object it changed
        takes back its previous data (or, changed since, what conflict resolution makes of
        both). Returns (None, oids)."""
        self._check_writable()
        self._check_transaction(transaction)
        undone = transaction_id
        try:
            oids = _translated(self._client.transaction_information, undone)[4]
            serials = _translated(self._txn.undo_serials, undone, oids)
        except ClientDisconnected:
            raise
        except (_core.NeoError, POSException.StorageError) as error:
            raise POSException.UndoError("cannot undo %s: %s" % (tid_repr(undone), error)) from None
        for oid, current, restored, is_current in serials:
            # Changed earlier in this transaction (by another undo): that is the state to
            # undo from, rather than the committed one.
            pending = self._stored.get(oid)
            if pending is not None:
                is_current = self._undone_to.get(oid) == undone
            if is_current:
                _translated(self._txn.store_undo, oid, current, restored)
                data = None if restored is None else self.loadSerial(oid, restored)
                self._stored[oid] = (data, current)
                self._undone_to[oid] = restored
                continue
            if restored is None:
                raise POSException.UndoError(
                    "the object was created by the transaction undone and changed since", oid)
            committed = pending[0] if pending is not None else self.loadSerial(oid, current)
            if blobs.is_blob(committed):
                committed = blobs.pickle_of(committed)
            try:
                resolved = self.tryToResolveConflict(
                    oid, current, undone, self.loadSerial(oid, restored), committed)
            except POSException.ConflictError:
                raise POSException.UndoError(
                    "some data were modified by a later transaction", oid) from None
            _translated(self._txn.store, oid, current, resolved)
            self._stored[oid] = (resolved, current)
            self._undone_to.pop(oid, None)
        return None, [oid for oid, _, _, _ in serials]

    def pack(self, t, referencesf, gc=False):
        """Drops every revision older than the newest one at or before time `t` (seconds
        since the epoch), and the objects deleted by then; returns when every storage in
        service has packed. There is no garbage collection (as in NEO): objects no longer
        referenced stay and `referencesf` is not used; `gc=True` packs the same, with a
        warning (collect garbage with an external tool and `deleteObject`). A pack to a time
        before an earlier pack's changes nothing."""
        self._check_writable()
        if gc:
            warnings.warn("neo_rs does not collect garbage: packing without it", stacklevel=2)
        pack_tid = TimeStamp(*time.gmtime(t)[:5], t % 60).raw()
        pack_id = _translated(self._client.pack, pack_tid, b"", b"IStorage.pack", b"")
        # A transaction that changed nothing: no invalidation is owed for it.
        self._advance(pack_id)
        if self._blob_dir is not None:
            self._forget_packed_blob_files()

    def _forget_packed_blob_files(self):
        """Removes from the blob directory the files of blob revisions the pack dropped
        (one question to the cluster per file; other clients' directories keep theirs
        until they pack, as files nobody reads any more)."""
        for oid, path in self.fshelper.listOIDs():
            for name in os.listdir(path):
                filename = os.path.join(path, name)
                _, serial = self.fshelper.splitBlobFilename(filename)
                if serial is None:
                    continue
                try:
                    _translated(self._client.load_serial, oid, serial)
                except (_core.OidDoesNotExist, _core.OidNotFound):
                    remove_committed(filename)


class TransactionIterator:
    """IStorageIteration's iterator: pages of tids from every partition, each transaction
    with its metadata and its records (read when the transaction is reached)."""

    PAGE = 100

    def __init__(self, storage, start, stop):
        self._storage = storage
        self._next = z64 if start is None else start
        last = storage.lastTransaction()
        self._stop = last if stop is None or stop > last else stop
        self._page = []

    def __iter__(self):
        return self

    def __next__(self):
        if not self._page:
            if self._next is None or self._next > self._stop:
                raise StopIteration
            client = self._storage._client
            self._page = _translated(client.tids_from, self._next, self._stop, self.PAGE)
            if not self._page:
                self._next = None
                raise StopIteration
            self._next = p64(u64(self._page[-1]) + 1)
        tid = self._page.pop(0)
        return _Transaction(self._storage, tid)

    def close(self):
        self._page = []
        self._next = None


class _Transaction(TransactionRecord):
    def __init__(self, storage, tid):
        client = storage._client
        user, description, extension, packed, oids = _translated(
            client.transaction_information, tid)
        TransactionRecord.__init__(
            self, tid, "p" if packed else " ", user, description,
            loads(extension) if extension else {})
        self._storage = storage
        self._oids = oids

    def __iter__(self):
        client = self._storage._client
        for oid in self._oids:
            try:
                data, data_txn = _translated(client.load_serial_record, oid, self.tid)
            except (_core.OidDoesNotExist, _core.OidNotFound):
                data, data_txn = None, None
            # No data: the transaction deleted the object (or undid its creation).
            yield DataRecord(oid, self.tid, blobs.pickle_of(data) or None, data_txn)


def _bytes(value):
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


__all__ = ["Storage", "p64", "u64"]
