//! `neo_rs._core`: the engine's client (`engine::client`) for Python. The ZODB storage in
//! `neo_rs/storage.py` is a thin layer over it; conflict resolution and ZODB's exceptions
//! stay in Python.
//!
//! Ids cross as 8-byte big-endian `bytes` (ZODB's `p64`). Every call that can wait on the
//! network releases the GIL: the client's master thread takes the GIL to run the
//! invalidation callback, so a call waiting for that thread while holding the GIL would
//! deadlock.

use std::sync::Mutex;

use bytes::Bytes;
use engine::client::{ClientError, ClientOptions, TransactionMeta};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use wire::{Oid, Tid};

create_exception!(_core, NeoError, PyException, "A neo-rs client call failed.");
create_exception!(_core, OidDoesNotExist, NeoError, "The object has never existed.");
create_exception!(_core, OidNotFound, NeoError, "The object has no revision matching the request.");
create_exception!(_core, ClientClosed, NeoError, "The client is closed.");
create_exception!(
    _core,
    NotCommitted,
    NeoError,
    "The outcome of a commit is unknown: it may or may not have committed."
);
create_exception!(
    _core,
    Transient,
    NeoError,
    "A failure the same call may overcome later (a failover, the cluster recovering, a \
     storage lost); a transaction that failed so did not commit."
);
create_exception!(
    _core,
    Unreachable,
    Transient,
    "The cluster cannot be reached or is not operational."
);

fn to_py(error: ClientError) -> PyErr {
    let text = error.to_string();
    match error {
        ClientError::OidDoesNotExist(_) => OidDoesNotExist::new_err(text),
        ClientError::OidNotFound(_) => OidNotFound::new_err(text),
        ClientError::Closed => ClientClosed::new_err(text),
        ClientError::OutcomeUnknown { .. } => NotCommitted::new_err(text),
        ClientError::NoMaster(_) | ClientError::MasterLost | ClientError::NoReadableCell(..) => {
            Unreachable::new_err(text)
        }
        error if error.is_transient() => Transient::new_err(text),
        _ => NeoError::new_err(text),
    }
}

fn id(bytes: &[u8], what: &str) -> PyResult<u64> {
    let array: [u8; 8] = bytes.try_into().map_err(|_| {
        PyValueError::new_err(format!("{what} must be 8 bytes, not {}", bytes.len()))
    })?;
    Ok(u64::from_be_bytes(array))
}

fn oid(bytes: &[u8]) -> PyResult<Oid> {
    id(bytes, "an oid").map(Oid)
}

fn tid(bytes: &[u8]) -> PyResult<Tid> {
    id(bytes, "a tid").map(Tid)
}

/// `(data, serial, next serial)` as `load_before` returns it.
type Revision<'py> = (Bound<'py, PyBytes>, Bound<'py, PyBytes>, Option<Bound<'py, PyBytes>>);
/// `(user, description, extension, packed, oids)` of a committed transaction.
type TransactionTuple<'py> =
    (Bound<'py, PyBytes>, Bound<'py, PyBytes>, Bound<'py, PyBytes>, bool, Vec<Bound<'py, PyBytes>>);
/// `(oid, current serial, serial restored or None, is current)` of an object to undo.
type UndoTuple<'py> = (Bound<'py, PyBytes>, Bound<'py, PyBytes>, Option<Bound<'py, PyBytes>>, bool);
/// `(oid, serial stored on, current serial)` of a conflict.
type ConflictTuple<'py> = (Bound<'py, PyBytes>, Bound<'py, PyBytes>, Bound<'py, PyBytes>);

fn p64(py: Python<'_>, value: u64) -> Bound<'_, PyBytes> {
    PyBytes::new(py, &value.to_be_bytes())
}

/// A connection to a neo-rs cluster: `Client(cluster, masters, cache_size, read_only)`,
/// masters as "host:port" strings.
#[pyclass(frozen, module = "neo_rs._core")]
struct Client {
    inner: engine::client::Client,
}

#[pymethods]
impl Client {
    #[new]
    #[pyo3(signature = (
        cluster,
        masters,
        cache_size = engine::client::CACHE_SIZE_DEFAULT,
        read_only = false,
        spin_us = engine::client::SPIN_DEFAULT.as_micros() as u64,
        storage_timeout = engine::client::STORAGE_TIMEOUT_DEFAULT.as_secs_f64(),
        ca = None,
        cert = None,
        key = None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        cluster: &str,
        masters: Vec<String>,
        cache_size: usize,
        read_only: bool,
        spin_us: u64,
        storage_timeout: f64,
        ca: Option<std::path::PathBuf>,
        cert: Option<std::path::PathBuf>,
        key: Option<std::path::PathBuf>,
    ) -> PyResult<Client> {
        // Mutual TLS: the three files together; the certificate must carry neo-client.
        let tls = engine::tls::TlsFiles::from_options(ca, cert, key)
            .and_then(|files| {
                files
                    .map(|files| engine::tls::Tls::load_for(&files, &[wire::NodeType::Client]))
                    .transpose()
            })
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        if !(storage_timeout.is_finite() && storage_timeout > 0.0) {
            return Err(PyValueError::new_err(format!(
                "storage_timeout must be a positive number of seconds, not {storage_timeout}"
            )));
        }
        use std::net::ToSocketAddrs;
        let mut addresses = Vec::new();
        for master in &masters {
            let address = master
                .to_socket_addrs()
                .map_err(|e| PyValueError::new_err(format!("master {master:?}: {e}")))?
                .next()
                .ok_or_else(|| PyValueError::new_err(format!("master {master:?}: no address")))?;
            addresses.push(address);
        }
        if addresses.is_empty() {
            return Err(PyValueError::new_err("no master address given"));
        }
        let mut options = ClientOptions::new(cluster, addresses);
        options.cache_size = cache_size;
        options.read_only = read_only;
        options.tls = tls;
        options.spin = std::time::Duration::from_micros(spin_us);
        options.storage_timeout = std::time::Duration::try_from_secs_f64(storage_timeout)
            .map_err(|e| PyValueError::new_err(format!("storage_timeout: {e}")))?;
        let inner = py.detach(|| engine::client::Client::connect(options)).map_err(to_py)?;
        Ok(Client { inner })
    }

    /// `(data, serial, next_serial or None)` of the revision current before `before`;
    /// None if the object has no revision before it; `OidDoesNotExist` if it never existed.
    fn load_before<'py>(
        &self,
        py: Python<'py>,
        oid_bytes: &[u8],
        before: &[u8],
    ) -> PyResult<Option<Revision<'py>>> {
        let (oid, before) = (oid(oid_bytes)?, tid(before)?);
        match py.detach(|| self.inner.load_before(oid, before)) {
            Ok(loaded) => Ok(Some((
                PyBytes::new(py, &loaded.data),
                p64(py, loaded.serial.0),
                loaded.next_serial.map(|next| p64(py, next.0)),
            ))),
            Err(ClientError::OidNotFound(_)) => Ok(None),
            Err(error) => Err(to_py(error)),
        }
    }

    /// The data of the revision `serial` wrote.
    fn load_serial<'py>(
        &self,
        py: Python<'py>,
        oid_bytes: &[u8],
        serial: &[u8],
    ) -> PyResult<Bound<'py, PyBytes>> {
        let (oid, serial) = (oid(oid_bytes)?, tid(serial)?);
        let loaded = py.detach(|| self.inner.load_serial(oid, serial)).map_err(to_py)?;
        Ok(PyBytes::new(py, &loaded.data))
    }

    /// The object's committed revisions, newest first, at most `count`: `[(serial, size)]`;
    /// `OidDoesNotExist` if it has none.
    fn history<'py>(
        &self,
        py: Python<'py>,
        oid_bytes: &[u8],
        count: u64,
    ) -> PyResult<Vec<(Bound<'py, PyBytes>, u32)>> {
        let oid = oid(oid_bytes)?;
        let revisions = py.detach(|| self.inner.history(oid, count)).map_err(to_py)?;
        Ok(revisions.into_iter().map(|(serial, size)| (p64(py, serial.0), size)).collect())
    }

    /// A committed transaction: `(user, description, extension, packed, [oids])`.
    fn transaction_information<'py>(
        &self,
        py: Python<'py>,
        tid_bytes: &[u8],
    ) -> PyResult<TransactionTuple<'py>> {
        let tid = tid(tid_bytes)?;
        let info = py.detach(|| self.inner.transaction_information(tid)).map_err(to_py)?;
        Ok((
            PyBytes::new(py, &info.user),
            PyBytes::new(py, &info.description),
            PyBytes::new(py, &info.extension),
            info.packed,
            info.oids.into_iter().map(|oid| p64(py, oid.0)).collect(),
        ))
    }

    /// Committed tids, newest first, positions `first .. last` (the undo log).
    fn tids_descending<'py>(
        &self,
        py: Python<'py>,
        first: u64,
        last: u64,
    ) -> PyResult<Vec<Bound<'py, PyBytes>>> {
        let tids = py.detach(|| self.inner.tids_descending(first, last)).map_err(to_py)?;
        Ok(tids.into_iter().map(|tid| p64(py, tid.0)).collect())
    }

    /// Committed tids in `min ..= max`, ascending, at most `length`.
    fn tids_from<'py>(
        &self,
        py: Python<'py>,
        min: &[u8],
        max: &[u8],
        length: u32,
    ) -> PyResult<Vec<Bound<'py, PyBytes>>> {
        let (min, max) = (tid(min)?, tid(max)?);
        let tids = py.detach(|| self.inner.tids_from(min, max, length)).map_err(to_py)?;
        Ok(tids.into_iter().map(|tid| p64(py, tid.0)).collect())
    }

    /// The revision `serial` wrote: `(data, data_serial or None)`, the second naming the
    /// revision whose data an undo took back.
    fn load_serial_record<'py>(
        &self,
        py: Python<'py>,
        oid_bytes: &[u8],
        serial: &[u8],
    ) -> PyResult<(Bound<'py, PyBytes>, Option<Bound<'py, PyBytes>>)> {
        let (oid, serial) = (oid(oid_bytes)?, tid(serial)?);
        let loaded = py.detach(|| self.inner.load_serial(oid, serial)).map_err(to_py)?;
        let data_serial = loaded.data_serial.map(|s| p64(py, s.0));
        Ok((PyBytes::new(py, &loaded.data), data_serial))
    }

    /// `count` new oids.
    fn new_oids<'py>(&self, py: Python<'py>, count: u32) -> PyResult<Vec<Bound<'py, PyBytes>>> {
        let oids = py.detach(|| self.inner.new_oids(count)).map_err(to_py)?;
        Ok(oids.into_iter().map(|oid| p64(py, oid.0)).collect())
    }

    /// The newest tid this client has seen (invalidations delivered up to it), or None.
    fn last_transaction<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.inner.last_transaction().map(|tid| p64(py, tid.0))
    }

    /// A barrier with the master: every invalidation sent before is delivered on return.
    fn sync<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let last = py.detach(|| self.inner.sync()).map_err(to_py)?;
        Ok(last.map(|tid| p64(py, tid.0)))
    }

    /// `callback(tid, oids)` for each transaction other clients commit, in commit order,
    /// from the client's master thread; never after `close`.
    fn set_invalidation_callback(&self, py: Python<'_>, callback: Py<PyAny>) {
        let callback = Box::new(move |tid: Tid, oids: &[Oid]| {
            Python::attach(|py| {
                let oids: Vec<Bound<'_, PyBytes>> = oids.iter().map(|oid| p64(py, oid.0)).collect();
                if let Err(error) = callback.call1(py, (p64(py, tid.0), oids)) {
                    error.print(py);
                }
            });
        });
        // Without the GIL: the master thread may hold the callback's lock, waiting for it.
        py.detach(|| self.inner.set_invalidation_callback(callback));
    }

    /// `callback()` each time the client reconnected to a primary (invalidations may have
    /// been missed), from the client's master thread; never after `close`.
    fn set_reset_callback(&self, py: Python<'_>, callback: Py<PyAny>) {
        let callback = Box::new(move || {
            Python::attach(|py| {
                if let Err(error) = callback.call0(py) {
                    error.print(py);
                }
            });
        });
        py.detach(|| self.inner.set_reset_callback(callback));
    }

    /// A new transaction (`tid`: the one to commit under, for imports).
    #[pyo3(signature = (tid = None))]
    fn tpc_begin(&self, py: Python<'_>, tid: Option<&[u8]>) -> PyResult<Transaction> {
        let given = tid.map(self::tid).transpose()?;
        let transaction = py.detach(|| self.inner.tpc_begin(given)).map_err(to_py)?;
        Ok(Transaction { inner: Mutex::new(Some(transaction)) })
    }

    /// Packs up to `pack_tid` (clamped to the last commit), through a transaction with
    /// this metadata; returns the pack's id once every storage in service has packed.
    fn pack<'py>(
        &self,
        py: Python<'py>,
        pack_tid: &[u8],
        user: &[u8],
        description: &[u8],
        extension: &[u8],
    ) -> PyResult<Bound<'py, PyBytes>> {
        let pack_tid = tid(pack_tid)?;
        let meta = TransactionMeta {
            user: Bytes::copy_from_slice(user),
            description: Bytes::copy_from_slice(description),
            extension: Bytes::copy_from_slice(extension),
        };
        let pack_id = py.detach(|| self.inner.pack(pack_tid, None, &meta)).map_err(to_py)?;
        Ok(p64(py, pack_id.0))
    }

    fn close(&self, py: Python<'_>) {
        py.detach(|| self.inner.close());
    }

    /// This client's figures (loads from storages, commits: counts and latency
    /// percentiles) in Prometheus's text format.
    fn metrics_text(&self) -> String {
        self.inner.prometheus()
    }
}

/// One transaction in progress. Dropping it aborts it.
#[pyclass(frozen, module = "neo_rs._core")]
struct Transaction {
    inner: Mutex<Option<engine::client::Transaction>>,
}

impl Transaction {
    /// Runs `f` on the transaction without the GIL (it is taken out of its mutex meanwhile,
    /// so a second call from another thread finds none in progress).
    fn with<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut engine::client::Transaction) -> Result<T, ClientError> + Send,
    ) -> PyResult<T> {
        let mut transaction = self.take()?;
        let outcome = py.detach(|| f(&mut transaction));
        *self.inner.lock().unwrap_or_else(|p| p.into_inner()) = Some(transaction);
        outcome.map_err(to_py)
    }

    fn take(&self) -> PyResult<engine::client::Transaction> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| NeoError::new_err("the transaction is finished, aborted or in use"))
    }
}

#[pymethods]
impl Transaction {
    fn ttid<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let transaction = guard.as_ref().ok_or_else(|| NeoError::new_err("no transaction"))?;
        Ok(p64(py, transaction.ttid().0))
    }

    /// Stores `data` for `oid`, based on `serial` (z64 for a new object).
    fn store(&self, py: Python<'_>, oid_bytes: &[u8], serial: &[u8], data: &[u8]) -> PyResult<()> {
        let (oid, serial) = (oid(oid_bytes)?, tid(serial)?);
        let data = Bytes::copy_from_slice(data);
        self.with(py, |t| t.store(oid, serial, data))
    }

    /// Deletes `oid` (IExternalGC), based on `serial`.
    fn delete_object(&self, py: Python<'_>, oid_bytes: &[u8], serial: &[u8]) -> PyResult<()> {
        let (oid, serial) = (oid(oid_bytes)?, tid(serial)?);
        self.with(py, |t| t.delete_object(oid, serial))
    }

    /// Stores an undo of `oid`: the data of revision `data_serial` back, or a deletion
    /// when it is None; based on `serial`.
    fn store_undo(
        &self,
        py: Python<'_>,
        oid_bytes: &[u8],
        serial: &[u8],
        data_serial: Option<&[u8]>,
    ) -> PyResult<()> {
        let (oid, serial) = (oid(oid_bytes)?, tid(serial)?);
        let data_serial = data_serial.map(tid).transpose()?;
        self.with(py, |t| t.store_undo(oid, serial, data_serial))
    }

    /// For undoing `undone`: `[(oid, current serial, serial restored or None, is current)]`.
    fn undo_serials<'py>(
        &self,
        py: Python<'py>,
        undone: &[u8],
        oids: Vec<Vec<u8>>,
    ) -> PyResult<Vec<UndoTuple<'py>>> {
        let undone = tid(undone)?;
        let oids = oids.iter().map(|o| oid(o)).collect::<PyResult<Vec<Oid>>>()?;
        let serials = self.with(py, |t| t.undo_serials(undone, &oids))?;
        Ok(serials
            .into_iter()
            .map(|s| {
                let restored = s.undo_serial.map(|serial| p64(py, serial.0));
                (p64(py, s.oid.0), p64(py, s.current_serial.0), restored, s.is_current)
            })
            .collect())
    }

    /// Checks that `serial` is still current for `oid` (and stays so until the end).
    fn check_current_serial(
        &self,
        py: Python<'_>,
        oid_bytes: &[u8],
        serial: &[u8],
    ) -> PyResult<()> {
        let (oid, serial) = (oid(oid_bytes)?, tid(serial)?);
        self.with(py, |t| t.check_current_serial(oid, serial))
    }

    /// Votes: `[]` when the transaction is durable everywhere, else its conflicts as
    /// `(oid, serial stored on, current serial)`, nothing voted.
    fn vote<'py>(
        &self,
        py: Python<'py>,
        user: &[u8],
        description: &[u8],
        extension: &[u8],
    ) -> PyResult<Vec<ConflictTuple<'py>>> {
        let meta = TransactionMeta {
            user: Bytes::copy_from_slice(user),
            description: Bytes::copy_from_slice(description),
            extension: Bytes::copy_from_slice(extension),
        };
        let conflicts = self.with(py, |t| t.vote(&meta))?;
        Ok(conflicts
            .into_iter()
            .map(|c| (p64(py, c.oid.0), p64(py, c.base.0), p64(py, c.current.0)))
            .collect())
    }

    /// Commits; `callback(tid)` runs (with the GIL) before the client's last tid moves to
    /// `tid`. Returns the tid as `bytes`.
    fn finish<'py>(&self, py: Python<'py>, callback: Py<PyAny>) -> PyResult<Bound<'py, PyBytes>> {
        let transaction = self.take()?;
        let mut raised = None;
        let finished = py.detach(|| {
            transaction.finish(|tid| {
                Python::attach(|py| {
                    if let Err(error) = callback.call1(py, (p64(py, tid.0),)) {
                        raised = Some(error);
                    }
                })
            })
        });
        let tid = finished.map_err(to_py)?;
        if let Some(error) = raised {
            return Err(error);
        }
        Ok(p64(py, tid.0))
    }

    /// Aborts (nothing if already finished or aborted).
    fn abort(&self, py: Python<'_>) {
        let transaction = self.inner.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(transaction) = transaction {
            py.detach(|| transaction.abort());
        }
    }
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    // The client's warnings (a storage lost, the master reconnected) on stderr, unless the
    // application installed a subscriber of its own; NEO_LOG=info (or debug...) for more.
    engine::logging::try_init_default("client", "warn");
    m.add_class::<Client>()?;
    m.add_class::<Transaction>()?;
    m.add("NeoError", py.get_type::<NeoError>())?;
    m.add("OidDoesNotExist", py.get_type::<OidDoesNotExist>())?;
    m.add("OidNotFound", py.get_type::<OidNotFound>())?;
    m.add("ClientClosed", py.get_type::<ClientClosed>())?;
    m.add("NotCommitted", py.get_type::<NotCommitted>())?;
    m.add("Transient", py.get_type::<Transient>())?;
    m.add("Unreachable", py.get_type::<Unreachable>())?;
    m.add("MAX_TID", p64(py, Tid::MAX.0))?;
    Ok(())
}
