//! Records: the unit of the log. A 32-byte header (position, durable-before mark, body size,
//! kind, crc32) and a body encoded with the `wire` field codec.
//!
//! docs/logstore-format.md describes every byte; keep it in step.

use bytes::{Bytes, BytesMut};
use wire::codec::{Field, ObjectData, Reader};
use wire::messages::{CellInfo, PackOrder, PackRequest, SerialOids};
use wire::{Compression, DecodeError, EncodeError, NodeId, Oid, PartitionId, Ptid, Text, Tid};
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::limits::RECORD_HEADER_SIZE;

/// Where a record starts in the log: `segment << 32 | offset within the segment file`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct LogPosition(pub u64);

impl LogPosition {
    pub fn new(segment: u32, offset: u32) -> LogPosition {
        LogPosition((u64::from(segment) << 32) | u64::from(offset))
    }

    pub fn segment(self) -> u32 {
        (self.0 >> 32) as u32
    }

    pub fn offset(self) -> u32 {
        self.0 as u32
    }

    pub fn advance(self, bytes: usize) -> LogPosition {
        let offset = u64::from(self.offset()) + bytes as u64;
        assert!(offset <= u64::from(u32::MAX), "position past the end of a segment");
        LogPosition(self.0 + bytes as u64)
    }
}

impl std::fmt::Display for LogPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.segment(), self.offset())
    }
}

/// The fixed header of every record.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct RecordHeader {
    /// The record's own position: a record read elsewhere (a recycled segment, a stale
    /// tail) does not match and is not taken for a record of this log.
    pub position: U64,
    /// Everything before this position was durable (fdatasync returned) when this record
    /// was written: recovery uses it to tell a torn tail from damage to durable records.
    pub durable_before: U64,
    pub body_size: U32,
    pub kind: u8,
    /// Reserved, zero.
    pub flags: u8,
    /// Reserved, zero.
    pub reserved: U16,
    /// Reserved, zero.
    pub reserved2: U32,
    /// crc32 of header bytes 0..28, then the body.
    pub crc: U32,
}

const _: () = assert!(size_of::<RecordHeader>() == RECORD_HEADER_SIZE);

pub const CRC_OFFSET: usize = std::mem::offset_of!(RecordHeader, crc);

/// Record kinds. Values are stored on disk: never reuse one.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum RecordKind {
    /// The last record of a full segment: the log continues in the next segment.
    SegmentEnd = 1,
    /// Object data stored by a transaction (not visible until unlock).
    Store = 2,
    /// A transaction voted: its stores before this record are complete; with metadata on
    /// the core that holds the ttid's partition.
    Vote = 3,
    /// A voted transaction locked under its final tid: the durable commit point.
    Lock = 4,
    /// A locked transaction made visible.
    Unlock = 5,
    /// A transaction dropped.
    Abort = 6,
    /// The store's metadata, whole (the last one wins).
    Metadata = 7,
    /// Everything after a tid dropped.
    Truncate = 8,
    /// Old revisions dropped (pack).
    Pack = 9,
    /// A partition's data dropped.
    DropPartition = 10,
    /// Object data copied out of a segment being compacted.
    Relocate = 11,
    /// A committed transaction's metadata copied out of a segment being compacted.
    RelocateVote = 12,
    /// Oids the primary may hand out, up to one: counted in the store's last oid, so that
    /// a later primary never hands them out again. (Added after the first release of the
    /// format: a build that predates it refuses a log holding one as an unknown kind.)
    ReserveOids = 13,
    /// A committed transaction's metadata copied from another storage (replication).
    ReplicateTransaction = 14,
    /// A committed object revision copied from another storage (replication).
    ReplicateObject = 15,
    /// Committed transactions and revisions the storage replicated from has not: dropped.
    DeleteReplicated = 16,
}

impl RecordKind {
    pub fn from_u8(value: u8) -> Option<RecordKind> {
        Some(match value {
            1 => RecordKind::SegmentEnd,
            2 => RecordKind::Store,
            3 => RecordKind::Vote,
            4 => RecordKind::Lock,
            5 => RecordKind::Unlock,
            6 => RecordKind::Abort,
            7 => RecordKind::Metadata,
            8 => RecordKind::Truncate,
            9 => RecordKind::Pack,
            10 => RecordKind::DropPartition,
            11 => RecordKind::Relocate,
            12 => RecordKind::RelocateVote,
            13 => RecordKind::ReserveOids,
            14 => RecordKind::ReplicateTransaction,
            15 => RecordKind::ReplicateObject,
            16 => RecordKind::DeleteReplicated,
            _ => return None,
        })
    }
}

/// The value of an object revision.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Data, as sent by the client (possibly compressed), with its crc32.
    Data { compression: Compression, data_crc: u32, data: Bytes },
    /// Undo: the revision reuses the data of an earlier serial of the same object.
    Undo { data_serial: Tid },
    /// The object is deleted (or its creation undone) by this revision.
    Delete,
}

impl Field for Value {
    const WIRE: &'static str =
        "u8 tag: 0 data (u8 compression, u32 crc, object data), 1 undo (u64 serial), 2 delete";
    const SIZE_MIN: usize = 1;
    const SIZE_FIXED: Option<usize> = None;

    fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        match self {
            Value::Data { compression, data_crc, data } => {
                0u8.encode(out)?;
                compression.encode(out)?;
                data_crc.encode(out)?;
                wire::codec::ObjectData(data.clone()).encode(out)
            }
            Value::Undo { data_serial } => {
                1u8.encode(out)?;
                data_serial.encode(out)
            }
            Value::Delete => 2u8.encode(out),
        }
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match u8::decode(reader)? {
            0 => Ok(Value::Data {
                compression: Compression::decode(reader)?,
                data_crc: u32::decode(reader)?,
                data: wire::codec::ObjectData::decode(reader)?.0,
            }),
            1 => Ok(Value::Undo { data_serial: Tid::decode(reader)? }),
            2 => Ok(Value::Delete),
            tag => Err(DecodeError::BadValue { what: "value tag", value: u64::from(tag) }),
        }
    }

    wire::__field_arbitrary!(u => Ok(match u.int_in_range(0..=2)? {
        0 => Value::Data {
            compression: Compression::arbitrary(u)?,
            data_crc: u32::arbitrary(u)?,
            data: Bytes::arbitrary(u)?,
        },
        1 => Value::Undo { data_serial: Tid::arbitrary(u)? },
        _ => Value::Delete,
    }));
}

/// Offset of the data bytes within a `Store` body holding `Value::Data`: ttid (8), oid (8),
/// tag (1), compression (1), crc (4), length (4).
pub const STORE_DATA_OFFSET: usize = 26;

/// Offset of the data bytes within a `Relocate` body: oid (8), old position (8),
/// compression (1), crc (4), length (4).
pub const RELOCATE_DATA_OFFSET: usize = 25;

/// Offset of the data bytes within a `ReplicateObject` body: oid (8), serial (8),
/// compression (1), crc (4), length (4).
pub const REPLICATE_DATA_OFFSET: usize = 25;

wire::wire_struct! {
    /// Body of `SegmentEnd`: the segment that follows.
    pub struct SegmentEndBody {
        pub next_segment: u32,
    }

    /// Body of `Store`.
    pub struct StoreBody {
        pub ttid: Tid,
        pub oid: Oid,
        pub value: Value,
    }

    /// Transaction metadata, kept by the cells of the ttid's partition.
    pub struct TransactionMeta {
        pub user: Bytes,
        pub description: Bytes,
        pub extension: Bytes,
        pub oids: Vec<Oid>,
        pub pack: Option<PackRequest>,
    }

    /// Body of `Vote`.
    pub struct VoteBody {
        pub ttid: Tid,
        pub meta: Option<TransactionMeta>,
    }

    /// Body of `Lock`.
    pub struct LockBody {
        pub ttid: Tid,
        pub tid: Tid,
    }

    /// Body of `Unlock` and `Abort`.
    pub struct TtidBody {
        pub ttid: Tid,
    }

    /// Body of `Truncate`.
    pub struct TruncateBody {
        pub tid: Tid,
    }

    /// Body of `ReserveOids`.
    pub struct ReserveOidsBody {
        /// The highest oid the primary may hand out.
        pub oid: Oid,
    }

    /// Body of `ReplicateTransaction`: a committed transaction as its source holds it.
    pub struct ReplicateTransactionBody {
        pub tid: Tid,
        pub packed: bool,
        /// Its ttid and metadata, as a vote carries them.
        pub vote: VoteBody,
    }

    /// Body of `ReplicateObject`: a committed revision as its source holds it. Empty data
    /// with no `data_serial` deletes the object; with one, it takes that revision's data
    /// (resolved here, from what this store holds); data with one is an undo whose data
    /// came along (its target may be packed away).
    pub struct ReplicateObjectBody {
        pub oid: Oid,
        pub serial: Tid,
        pub compression: Compression,
        pub data_crc: u32,
        pub data: ObjectData,
        pub data_serial: Option<Tid>,
    }

    /// Body of `DeleteReplicated`.
    pub struct DeleteReplicatedBody {
        pub tids: Vec<Tid>,
        pub objects: Vec<SerialOids>,
    }

    /// Body of `Pack`.
    pub struct PackBody {
        pub pack_tid: Tid,
        /// Pack only these objects, or all.
        pub oids: Option<Vec<Oid>>,
    }

    /// Body of `Relocate`: the data at `old_position` (in a segment being compacted), now
    /// here; every revision of `oid` that pointed there points here.
    pub struct RelocateBody {
        pub oid: Oid,
        pub old_position: u64,
        pub compression: Compression,
        pub data_crc: u32,
        pub data: ObjectData,
    }

    /// Body of `RelocateVote`: the vote (with metadata) of committed transaction `tid`,
    /// copied out of a segment being compacted.
    pub struct RelocateVoteBody {
        pub tid: Tid,
        pub vote: VoteBody,
    }

    /// Body of `DropPartition`.
    pub struct DropPartitionBody {
        pub partition: PartitionId,
        pub partitions: u32,
    }

    /// How far a cell has replicated.
    pub struct CellPosition {
        pub partition: PartitionId,
        pub tid: Tid,
    }

    /// Body of `Metadata`: everything a storage core keeps besides objects and
    /// transactions. Written whole at each change.
    pub struct Metadata {
        pub node_id: Option<NodeId>,
        pub cluster_name: Text,
        /// Number of partitions of the cluster (0 until the storage gets a table).
        pub partitions: u32,
        pub replicas: u32,
        pub ptid: Option<Ptid>,
        pub partition_table: Vec<Vec<CellInfo>>,
        pub replication: Vec<CellPosition>,
        pub backup_tid: Option<Tid>,
        pub truncate_tid: Option<Tid>,
        /// Every pack order this node has heard of (one per pack: a few bytes each).
        pub pack_orders: Vec<PackOrder>,
        /// The newest order packed here (orders run in id order).
        pub pack_completed: Option<Tid>,
    }
}

// `wire_struct!` declares the type, so `Default` cannot be derived.
#[allow(clippy::derivable_impls)]
impl Default for Metadata {
    fn default() -> Metadata {
        Metadata {
            node_id: None,
            cluster_name: Text::default(),
            partitions: 0,
            replicas: 0,
            ptid: None,
            partition_table: Vec::new(),
            replication: Vec::new(),
            backup_tid: None,
            truncate_tid: None,
            pack_orders: Vec::new(),
            pack_completed: None,
        }
    }
}

/// Appends a whole record (header and body) to `out`.
pub fn encode_record(
    out: &mut BytesMut,
    position: LogPosition,
    durable_before: LogPosition,
    kind: RecordKind,
    body: &impl Field,
) -> Result<(), EncodeError> {
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_HEADER_SIZE]);
    if let Err(error) = body.encode(out) {
        out.truncate(start);
        return Err(error);
    }
    let body_size = out.len() - start - RECORD_HEADER_SIZE;
    let mut header = RecordHeader {
        position: U64::new(position.0),
        durable_before: U64::new(durable_before.0),
        body_size: U32::new(body_size as u32),
        kind: kind as u8,
        flags: 0,
        reserved: U16::new(0),
        reserved2: U32::new(0),
        crc: U32::new(0),
    };
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header.as_bytes()[..CRC_OFFSET]);
    hasher.update(&out[start + RECORD_HEADER_SIZE..]);
    header.crc = U32::new(hasher.finalize());
    out[start..start + RECORD_HEADER_SIZE].copy_from_slice(header.as_bytes());
    Ok(())
}

/// Why bytes at a position are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordDefect {
    /// Fewer bytes left in the segment than a header, or than the body it announces.
    Truncated,
    /// The header names another position (stale bytes, or zeros).
    WrongPosition(u64),
    BadCrc,
    ReservedBits,
    UnknownKind(u8),
    /// The crc matched, but the body does not decode.
    BadBody(String),
}

impl std::fmt::Display for RecordDefect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordDefect::Truncated => f.write_str("record runs past the end of the segment"),
            RecordDefect::WrongPosition(found) => {
                write!(f, "no record here (header names position {found:#x})")
            }
            RecordDefect::BadCrc => f.write_str("checksum mismatch"),
            RecordDefect::ReservedBits => f.write_str("reserved bits set"),
            RecordDefect::UnknownKind(kind) => write!(f, "unknown record kind {kind}"),
            RecordDefect::BadBody(error) => write!(f, "undecodable body: {error}"),
        }
    }
}

/// A record whose header and checksum were checked, with its body still encoded.
#[derive(Debug, Clone)]
pub struct RawRecord {
    pub position: LogPosition,
    pub durable_before: LogPosition,
    pub kind: RecordKind,
    pub body: Bytes,
}

impl RawRecord {
    /// Bytes the record takes in the log.
    pub fn size(&self) -> usize {
        RECORD_HEADER_SIZE + self.body.len()
    }

    pub fn end(&self) -> LogPosition {
        self.position.advance(self.size())
    }

    pub fn decode<T: Field>(&self) -> Result<T, RecordDefect> {
        let mut reader = Reader::new(&self.body, Bytes::new());
        let value = T::decode(&mut reader).map_err(|e| RecordDefect::BadBody(e.to_string()))?;
        reader.finish().map_err(|e| RecordDefect::BadBody(e.to_string()))?;
        Ok(value)
    }
}

/// Checks the record expected at `position`, given the segment's bytes from that position
/// to the segment's end.
pub fn check_record(bytes: &Bytes, position: LogPosition) -> Result<RawRecord, RecordDefect> {
    let Ok((header, _)) = RecordHeader::ref_from_prefix(&bytes[..]) else {
        return Err(RecordDefect::Truncated);
    };
    if header.position.get() != position.0 {
        return Err(RecordDefect::WrongPosition(header.position.get()));
    }
    let body_size = header.body_size.get() as usize;
    if body_size > bytes.len() - RECORD_HEADER_SIZE {
        return Err(RecordDefect::Truncated);
    }
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&bytes[..CRC_OFFSET]);
    hasher.update(&bytes[RECORD_HEADER_SIZE..RECORD_HEADER_SIZE + body_size]);
    if hasher.finalize() != header.crc.get() {
        return Err(RecordDefect::BadCrc);
    }
    if header.flags != 0 || header.reserved.get() != 0 || header.reserved2.get() != 0 {
        return Err(RecordDefect::ReservedBits);
    }
    let kind = RecordKind::from_u8(header.kind).ok_or(RecordDefect::UnknownKind(header.kind))?;
    let durable_before = LogPosition(header.durable_before.get());
    Ok(RawRecord {
        position,
        durable_before,
        kind,
        body: bytes.slice(RECORD_HEADER_SIZE..RECORD_HEADER_SIZE + body_size),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip_and_defects() {
        let body = StoreBody {
            ttid: Tid(5),
            oid: Oid(9),
            value: Value::Data {
                compression: Compression::None,
                data_crc: crc32fast::hash(b"abc"),
                data: Bytes::from_static(b"abc"),
            },
        };
        let position = LogPosition::new(3, 64);
        let mut out = BytesMut::new();
        encode_record(&mut out, position, LogPosition::new(3, 64), RecordKind::Store, &body)
            .unwrap();
        let bytes = out.freeze();
        let raw = check_record(&bytes, position).unwrap();
        assert_eq!(raw.kind, RecordKind::Store);
        assert_eq!(raw.decode::<StoreBody>().unwrap(), body);
        assert_eq!(&raw.body[STORE_DATA_OFFSET..STORE_DATA_OFFSET + 3], b"abc");
        assert_eq!(
            check_record(&bytes, position.advance(1)).unwrap_err(),
            RecordDefect::WrongPosition(position.0)
        );
        assert_eq!(
            check_record(&bytes.slice(..bytes.len() - 1), position).unwrap_err(),
            RecordDefect::Truncated
        );
        for index in 8..bytes.len() {
            let mut bad = bytes.to_vec();
            bad[index] ^= 1;
            let defect = check_record(&Bytes::from(bad), position).unwrap_err();
            assert!(
                matches!(defect, RecordDefect::BadCrc | RecordDefect::Truncated),
                "{index}: {defect}"
            );
        }
    }
}
