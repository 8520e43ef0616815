"""Blob records: how neo_rs.Storage keeps a ZODB blob in the cluster.

A blob revision is stored as one object record: a marker, the length of the object's
pickle, the pickle, then the blob's bytes. ZODB never sees the marker: every read that
returns object data to ZODB strips it (`pickle_of`), and the blob reaches the application
as a file, written into the client's blob directory when first asked for (`loadBlob`).
The marker cannot begin a ZODB record: those begin with a pickle opcode (or a
`transform_record_data` prefix), never a NUL byte.

A blob travels in one message, so its size is bounded by the wire's payload limit (64 MiB,
the pickle included).
"""

import struct

from ZODB import POSException

MARKER = b"\x00neo-rs blob\x00"
_LENGTH = struct.Struct(">Q")
_HEADER = len(MARKER) + _LENGTH.size
# The wire's payload limit (wire::limits::PAYLOAD_SIZE_MAX).
RECORD_SIZE_MAX = 64 << 20


def is_blob(data):
    return data is not None and data[:len(MARKER)] == MARKER


def record(pickle, blob):
    """The record of a blob revision: `pickle` (the Blob object's) and the blob's bytes."""
    size = _HEADER + len(pickle) + len(blob)
    if size > RECORD_SIZE_MAX:
        raise POSException.StorageError(
            "a blob of %d bytes: neo-rs keeps a blob and its object in one record of at most "
            "%d bytes" % (len(blob), RECORD_SIZE_MAX - _HEADER - len(pickle)))
    return b"".join((MARKER, _LENGTH.pack(len(pickle)), pickle, blob))


def split(data):
    """(pickle, blob bytes) of a record; blob None for a record without a blob."""
    if not is_blob(data):
        return data, None
    if len(data) < _HEADER:
        raise POSException.StorageError("a blob record cut short (%d bytes)" % len(data))
    (length,) = _LENGTH.unpack_from(data, len(MARKER))
    if _HEADER + length > len(data):
        raise POSException.StorageError(
            "a blob record whose pickle (%d bytes) runs past its end (%d bytes)"
            % (length, len(data)))
    return data[_HEADER:_HEADER + length], data[_HEADER + length:]


def pickle_of(data):
    """What ZODB reads of a record: its pickle, without the blob."""
    return split(data)[0] if is_blob(data) else data
