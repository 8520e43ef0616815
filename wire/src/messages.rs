//! The message catalogue: every message of every NEO role, declared once.
//!
//! One declaration gives the message's struct, its code (`Kind`), its field encoding, its
//! decoding with field-named errors, the catalogue metadata that docs/protocol.md is checked
//! against, and (for tests and fuzzing) generation from unstructured bytes.
//!
//! Codes: a request or notification has a code below 0x8000; the answer to request `c` has
//! code `c | 0x8000` and reuses the request's message id. `Error` (0x8000) answers any
//! request. Notifications have no answer.

use bytes::{Bytes, BytesMut};

use crate::codec::{Described, Field, FieldMeta, Payload, Reader, Text};
use crate::enums::{CellState, ClusterState, Compression, ErrorCode, NodeState, NodeType};
use crate::error::{DecodeError, EncodeError};
use crate::ids::{NodeId, Oid, PartitionId, Ptid, Tid};
use crate::wire_struct;

/// Bit 15 of a kind: set on answers.
pub const ANSWER_BIT: u16 = 0x8000;

/// Whether a message is a request (expects an answer), a notification, or an answer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Role {
    Request,
    Notification,
    Answer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Request => "request",
            Role::Notification => "notification",
            Role::Answer => "answer",
        }
    }
}

/// What every message can do to be framed.
pub trait Body {
    fn kind(&self) -> Kind;
    /// Appends the body's fields (not the payload).
    fn encode_body(&self, out: &mut BytesMut) -> Result<(), EncodeError>;
    /// The object data that follows the body, for the messages that carry some.
    fn payload(&self) -> Option<&Bytes>;
}

/// One entry of the catalogue, for docs/protocol.md and for tests over every message.
#[derive(Debug, Clone, Copy)]
pub struct MessageMeta {
    pub kind: Kind,
    pub name: &'static str,
    pub role: Role,
    /// Which roles send it to which: M master, S storage, C client, A admin, ctl.
    pub direction: &'static str,
    pub answer: Option<Kind>,
    pub doc: &'static str,
    pub fields: &'static [FieldMeta],
}

/// A composite type of a body, for docs/protocol.md.
#[derive(Debug, Clone, Copy)]
pub struct TypeMeta {
    pub name: &'static str,
    pub doc: &'static str,
    pub fields: &'static [FieldMeta],
}

macro_rules! role {
    (request) => {
        Role::Request
    };
    (notify) => {
        Role::Notification
    };
    (answer) => {
        Role::Answer
    };
}

macro_rules! answer_kind {
    () => {
        None
    };
    ($answer:ident) => {
        Some(Kind::$answer)
    };
}

macro_rules! catalogue {
    ($(
        $(#[doc = $doc:literal])*
        $code:literal $name:ident $role:ident $(($answer:ident))? $direction:literal {
            $( $(#[doc = $fdoc:literal])* $field:ident : $ty:ty ),* $(,)?
        }
    )*) => {
        /// The kind of a message: its code on the wire.
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
        #[repr(u16)]
        pub enum Kind { $($name = $code),* }

        impl Kind {
            pub const ALL: &'static [Kind] = &[$(Kind::$name),*];

            pub fn from_u16(code: u16) -> Option<Kind> {
                match code {
                    $($code => Some(Kind::$name),)*
                    _ => None,
                }
            }

            pub fn name(self) -> &'static str {
                match self { $(Kind::$name => stringify!($name)),* }
            }

            pub fn role(self) -> Role {
                match self { $(Kind::$name => role!($role)),* }
            }

            pub fn is_answer(self) -> bool {
                self as u16 & ANSWER_BIT != 0
            }

            /// The kind that answers this request.
            pub fn answer(self) -> Option<Kind> {
                match self { $(Kind::$name => answer_kind!($($answer)?)),* }
            }

            /// Whether frames of this kind may have a payload (object data).
            pub fn carries_payload(self) -> bool {
                match self { $(Kind::$name => false $(|| <$ty as Field>::IS_PAYLOAD)*),* }
            }
        }

        impl std::fmt::Display for Kind {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }

        $(
            $(#[doc = $doc])*
            #[derive(Debug, Clone, PartialEq)]
            pub struct $name { $( $(#[doc = $fdoc])* pub $field: $ty ),* }

            impl $name {
                pub const KIND: Kind = Kind::$name;

                /// Decodes a body (and payload) of this kind.
                #[allow(unused_mut)]
                pub fn decode_body(body: &Bytes, payload: Bytes) -> Result<$name, DecodeError> {
                    let mut reader = Reader::new(body, payload);
                    let message = $name { $(
                        $field: <$ty as Field>::decode(&mut reader)
                            .map_err(|e| e.in_field(stringify!($name), stringify!($field)))?,
                    )* };
                    reader.finish().map_err(|e| e.in_field(stringify!($name), "(end)"))?;
                    Ok(message)
                }
            }

            impl Body for $name {
                #[inline]
                fn kind(&self) -> Kind {
                    Kind::$name
                }

                #[inline]
                fn encode_body(&self, _out: &mut BytesMut) -> Result<(), EncodeError> {
                    $( Field::encode(&self.$field, _out)?; )*
                    Ok(())
                }

                #[inline]
                fn payload(&self) -> Option<&Bytes> {
                    let payload: Option<&Bytes> = None;
                    $( let payload = payload.or_else(|| Field::payload(&self.$field)); )*
                    payload
                }
            }

            impl From<$name> for Message {
                fn from(message: $name) -> Message {
                    Message::$name(message)
                }
            }
        )*

        /// Any message.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Message { $($name($name)),* }

        impl Message {
            /// Decodes a body of the given kind. `Bytes`, `Text` and `Payload` fields are views
            /// of `body` and `payload`.
            pub fn decode(kind: Kind, body: &Bytes, payload: Bytes) -> Result<Message, DecodeError> {
                match kind { $(Kind::$name => $name::decode_body(body, payload).map(Message::$name)),* }
            }

            /// A message of the given kind made from unstructured bytes.
            #[cfg(any(test, feature = "arbitrary"))]
            pub fn arbitrary_of(kind: Kind, _u: &mut arbitrary::Unstructured<'_>) -> arbitrary::Result<Message> {
                Ok(match kind {
                    $(Kind::$name => Message::$name($name { $( $field: <$ty as Field>::arbitrary(_u)?, )* }),)*
                })
            }
        }

        impl Body for Message {
            fn kind(&self) -> Kind {
                match self { $(Message::$name(m) => m.kind()),* }
            }

            fn encode_body(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
                match self { $(Message::$name(m) => m.encode_body(out)),* }
            }

            fn payload(&self) -> Option<&Bytes> {
                match self { $(Message::$name(m) => m.payload()),* }
            }
        }

        /// Every message, in code order as declared.
        pub const CATALOGUE: &[MessageMeta] = &[$(
            MessageMeta {
                kind: Kind::$name,
                name: stringify!($name),
                role: role!($role),
                direction: $direction,
                answer: answer_kind!($($answer)?),
                doc: concat!($($doc, "\n"),*),
                fields: &[$(
                    FieldMeta {
                        name: stringify!($field),
                        ty: stringify!($ty),
                        wire: <$ty as Field>::WIRE,
                        size_fixed: <$ty as Field>::SIZE_FIXED,
                        doc: concat!($($fdoc),*),
                    },
                )*],
            },
        )*];
    };
}

impl Message {
    /// A message of any kind made from unstructured bytes.
    #[cfg(any(test, feature = "arbitrary"))]
    pub fn arbitrary(u: &mut arbitrary::Unstructured<'_>) -> arbitrary::Result<Message> {
        let kind = *u.choose(Kind::ALL)?;
        Message::arbitrary_of(kind, u)
    }
}

/// The result of a store or of a check of the current serial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOutcome {
    /// Stored, and the object is write-locked for the transaction.
    Locked,
    /// Stored without lock or conflict check, because the cell is being replicated; a
    /// readable cell does the check.
    Lockless,
    /// Ignored: this storage holds no cell of the object's partition (any more).
    NotAssigned,
    /// Not stored: the object's current serial is this one, not the base serial given.
    Conflict(Tid),
}

impl Field for StoreOutcome {
    const WIRE: &'static str =
        "u8 tag: 0 locked, 1 lockless, 2 not assigned, 3 conflict + u64 serial";
    const SIZE_MIN: usize = 1;
    const SIZE_FIXED: Option<usize> = None;

    fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        match self {
            StoreOutcome::Locked => 0u8.encode(out),
            StoreOutcome::Lockless => 1u8.encode(out),
            StoreOutcome::NotAssigned => 2u8.encode(out),
            StoreOutcome::Conflict(serial) => {
                3u8.encode(out)?;
                serial.encode(out)
            }
        }
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match u8::decode(reader)? {
            0 => Ok(StoreOutcome::Locked),
            1 => Ok(StoreOutcome::Lockless),
            2 => Ok(StoreOutcome::NotAssigned),
            3 => Ok(StoreOutcome::Conflict(Tid::decode(reader)?)),
            tag => Err(DecodeError::BadValue { what: "store outcome tag", value: u64::from(tag) }),
        }
    }

    #[cfg(any(test, feature = "arbitrary"))]
    fn arbitrary(u: &mut arbitrary::Unstructured<'_>) -> arbitrary::Result<Self> {
        Ok(match u.int_in_range(0..=3)? {
            0 => StoreOutcome::Locked,
            1 => StoreOutcome::Lockless,
            2 => StoreOutcome::NotAssigned,
            _ => StoreOutcome::Conflict(Tid::arbitrary(u)?),
        })
    }
}

/// A 20-byte digest of a range of tids or serials, compared between replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Digest(pub [u8; 20]);

impl Field for Digest {
    const WIRE: &'static str = "20 bytes";
    const SIZE_MIN: usize = 20;
    const SIZE_FIXED: Option<usize> = Some(20);

    fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        out.extend_from_slice(&self.0);
        Ok(())
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Digest(reader.array()?))
    }

    #[cfg(any(test, feature = "arbitrary"))]
    fn arbitrary(u: &mut arbitrary::Unstructured<'_>) -> arbitrary::Result<Self> {
        Ok(Digest(<[u8; 20] as arbitrary::Arbitrary>::arbitrary(u)?))
    }
}

wire_struct! {
    /// A TCP address: host name or IP literal, and port.
    pub struct Address {
        pub host: Text,
        pub port: u16,
    }

    /// One node as the primary master describes it.
    pub struct NodeInfo {
        pub node_type: NodeType,
        /// Where it listens; none for clients.
        pub address: Option<Address>,
        pub nid: Option<NodeId>,
        pub state: NodeState,
        /// When the primary identified it (nanoseconds on the primary's clock); storages use
        /// it to refuse clients the primary does not know yet or any more.
        pub id_timestamp: Option<u64>,
    }

    /// One cell of a partition table row.
    pub struct CellInfo {
        pub nid: NodeId,
        pub state: CellState,
    }

    /// One row of a partition table listing.
    pub struct PartitionRow {
        pub partition: PartitionId,
        pub cells: Vec<CellInfo>,
    }

    /// One change of a cell; `DISCARDED` removes the cell.
    pub struct CellChange {
        pub partition: PartitionId,
        pub nid: NodeId,
        pub state: CellState,
    }

    /// A transaction left locked by a crash: its ttid and, if known, its final tid.
    pub struct LockedTransaction {
        pub ttid: Tid,
        pub tid: Option<Tid>,
    }

    /// A pack request carried by a transaction.
    pub struct PackRequest {
        /// Pack only these objects (a partial pack), or all when none.
        pub oids: Option<Vec<Oid>>,
        pub pack_tid: Tid,
    }

    /// A pack order, as storages keep them.
    pub struct PackOrder {
        /// The tid of the transaction that requested the pack.
        pub pack_id: Tid,
        /// Approved, rejected, or not decided yet.
        pub approved: Option<bool>,
        pub partial: bool,
        pub oids: Option<Vec<Oid>>,
        pub pack_tid: Tid,
    }

    /// How far an out-of-date cell has replicated (`ctl print pt`).
    pub struct ReplicationProgress {
        pub nid: NodeId,
        pub partition: PartitionId,
        /// The cell holds everything up to this tid.
        pub position: Tid,
        /// The round replicates up to this tid.
        pub target: Tid,
        /// Object data copied in the round so far.
        pub bytes: u64,
        /// Since the round began, and the position it began at.
        pub elapsed_ms: u64,
        pub start: Tid,
    }

    /// A counter or gauge of a node (`ctl stats`); a state as `name=value` with value 1.
    pub struct StatValue {
        pub name: Text,
        pub value: u64,
    }

    /// A latency (or size) histogram of a node, HdrHistogram's V2 serialization of its
    /// counts (`*_seconds`: nanoseconds).
    pub struct StatHistogram {
        pub name: Text,
        pub encoded: Bytes,
    }

    /// One node's live figures (`engine::metrics`).
    pub struct NodeStats {
        pub nid: NodeId,
        pub counters: Vec<StatValue>,
        pub histograms: Vec<StatHistogram>,
    }

    /// One revision in an object's history.
    pub struct HistoryEntry {
        pub serial: Tid,
        /// Size of the revision's data in bytes.
        pub size: u32,
    }

    /// What undoing a transaction means for one of its objects.
    pub struct UndoSerial {
        pub oid: Oid,
        pub current_serial: Tid,
        /// The serial whose data undo restores; none if undo deletes the object's creation.
        pub undo_serial: Option<Tid>,
        /// Whether the revision being undone is the current one.
        pub is_current: bool,
    }

    /// A partition to replicate and where from; no address means "nothing new up to the
    /// tid" (backup bookkeeping).
    pub struct ReplicateSource {
        pub partition: PartitionId,
        pub address: Option<Address>,
    }

    /// The replica a partition is checked against: another cell of this cluster (empty
    /// upstream name) or a cell of the upstream cluster.
    pub struct CheckSource {
        pub upstream_name: Text,
        pub address: Option<Address>,
    }

    /// A partition to check, and the node to compare with (or any readable cell).
    pub struct PartitionSource {
        pub partition: PartitionId,
        pub source: Option<NodeId>,
    }

    /// What a replica check found about one cell.
    pub struct CheckFinding {
        pub partition: PartitionId,
        pub nid: NodeId,
        /// Where the cell first differs (or its damaged record is); none if the cell could
        /// not be checked.
        pub tid: Option<Tid>,
        pub oid: Option<Oid>,
        /// The cell was judged bad (and marked CORRUPTED, unless it was the last readable
        /// copy); otherwise it is only reported.
        pub bad: bool,
        /// The cell's state after the check.
        pub state: CellState,
        pub what: Text,
    }

    /// Object records of one serial, for replication.
    pub struct SerialOids {
        pub serial: Tid,
        pub oids: Vec<Oid>,
    }

    /// How conflicting data is described in a relock answer.
    pub struct RelockConflict {
        pub serial: Tid,
        pub conflict_serial: Tid,
    }

    /// Compression and checksum of data in a payload.
    pub struct DataInfo {
        pub compression: Compression,
        pub data_crc: u32,
    }

    /// One item of monitoring information.
    pub struct MonitorEntry {
        pub key: Text,
        pub value: Text,
    }
}

/// Every composite type, for docs/protocol.md.
pub const TYPES: &[TypeMeta] = &[
    type_meta::<Address>("Address"),
    type_meta::<NodeInfo>("NodeInfo"),
    type_meta::<CellInfo>("CellInfo"),
    type_meta::<PartitionRow>("PartitionRow"),
    type_meta::<CellChange>("CellChange"),
    type_meta::<LockedTransaction>("LockedTransaction"),
    type_meta::<PackRequest>("PackRequest"),
    type_meta::<PackOrder>("PackOrder"),
    type_meta::<HistoryEntry>("HistoryEntry"),
    type_meta::<UndoSerial>("UndoSerial"),
    type_meta::<ReplicateSource>("ReplicateSource"),
    type_meta::<CheckSource>("CheckSource"),
    type_meta::<PartitionSource>("PartitionSource"),
    type_meta::<CheckFinding>("CheckFinding"),
    type_meta::<SerialOids>("SerialOids"),
    type_meta::<RelockConflict>("RelockConflict"),
    type_meta::<DataInfo>("DataInfo"),
    type_meta::<MonitorEntry>("MonitorEntry"),
    type_meta::<ReplicationProgress>("ReplicationProgress"),
];

const fn type_meta<T: Described>(name: &'static str) -> TypeMeta {
    TypeMeta { name, doc: T::DOC, fields: T::FIELDS }
}

catalogue! {
    /// Answers any request that failed.
    0x8000 Error answer "any -> any" {
        code: ErrorCode,
        message: Text,
    }

    /// First frame on every connection after the hello: who the sender is.
    0x0001 RequestIdentification request(AcceptIdentification) "any -> M, S, A" {
        node_type: NodeType,
        /// The id the sender had, if any (storages keep theirs across restarts).
        nid: Option<NodeId>,
        /// Where the sender listens; none for clients and ctl.
        address: Option<Address>,
        cluster_name: Text,
        /// The primary's identification time of the sender, when a client identifies to a
        /// storage; a master's election key (when it began playing primary), to another master.
        id_timestamp: Option<u64>,
        /// Topology path of a storage, most general first (host, then device): the partition
        /// table never puts two copies of a partition under one host.
        devpath: Vec<Text>,
        /// A client that will only read (backup clusters accept only these).
        read_only: bool,
        /// A backup cluster's name when its master connects upstream as a client; the backup
        /// clusters an admin monitors.
        backup: Vec<Text>,
        /// A cloned storage asking for a new id for these partitions.
        new_nid: Option<Vec<PartitionId>>,
    }

    0x8001 AcceptIdentification answer "M, S, A -> any" {
        node_type: NodeType,
        nid: Option<NodeId>,
        /// The id given to the sender.
        your_nid: Option<NodeId>,
    }

    /// A network barrier: answered once everything sent before it was processed.
    0x0002 Ping request(Pong) "any -> any" {}

    0x8002 Pong answer "any -> any" {}

    /// "You may close this connection once done with me" (idle storage-to-storage links).
    0x0003 CloseClient notify "S -> S" {}

    /// Which node is the primary master.
    0x0004 AskPrimary request(AnswerPrimary) "ctl -> A, A -> M" {}

    0x8004 AnswerPrimary answer "A -> ctl, M -> A" {
        primary: NodeId,
    }

    /// From a secondary master: it is not the primary; here is the one (an index into the
    /// address list) if known, and every master it knows.
    0x0005 NotPrimaryMaster notify "M -> any" {
        primary: Option<u32>,
        masters: Vec<Address>,
    }

    /// Changes of the node list, or the whole list after identification.
    0x0006 NotifyNodeInformation notify "M -> any" {
        /// Strictly increasing across notifications from one primary.
        timestamp: u64,
        nodes: Vec<NodeInfo>,
    }

    /// What a storage knows of the cluster, for the primary to pick the newest table.
    0x0007 AskRecovery request(AnswerRecovery) "M -> S" {}

    0x8007 AnswerRecovery answer "S -> M" {
        ptid: Option<Ptid>,
        backup_tid: Option<Tid>,
        truncate_tid: Option<Tid>,
    }

    /// The newest ids a storage holds; the storage truncates first if told to.
    0x0008 AskLastIds request(AnswerLastIds) "M -> S" {}

    0x8008 AnswerLastIds answer "S -> M" {
        last_tid: Option<Tid>,
        last_oid: Option<Oid>,
        first_tid: Option<Tid>,
    }

    /// The whole partition table a storage holds. In recovery the primary keeps the highest
    /// ptid it hears, and starts the cluster only once every connected storage it asked has
    /// answered (a storage that was away holds an older table).
    0x0009 AskPartitionTable request(AnswerPartitionTable) "M -> S" {}

    0x8009 AnswerPartitionTable answer "S -> M" {
        ptid: Option<Ptid>,
        num_replicas: u32,
        /// One row per partition, in partition order.
        rows: Vec<Vec<CellInfo>>,
    }

    /// The whole partition table, sent after identification.
    0x000A SendPartitionTable notify "M -> S, C, A" {
        ptid: Option<Ptid>,
        num_replicas: u32,
        rows: Vec<Vec<CellInfo>>,
    }

    /// Changes of the partition table; the receiver requires `ptid` = its ptid + 1.
    0x000B NotifyPartitionChanges notify "M -> S, C, A" {
        ptid: Ptid,
        num_replicas: u32,
        changes: Vec<CellChange>,
    }

    /// Start serving; the storage answers with `NotifyReady` when it is.
    0x000C StartOperation notify "M -> S" {
        backup: bool,
    }

    /// Stop serving: the cluster left operation.
    0x000D StopOperation notify "M -> S, C" {}

    /// Asked by a storage before replicating: the last committed tid and the transactions
    /// in flight it must also receive.
    0x000E AskUnfinishedTransactions request(AnswerUnfinishedTransactions) "S -> M" {
        partitions: Vec<PartitionId>,
    }

    0x800E AnswerUnfinishedTransactions answer "M -> S" {
        max_tid: Option<Tid>,
        ttids: Vec<Tid>,
    }

    /// Transactions locked but not unlocked when the cluster stopped.
    0x000F AskLockedTransactions request(AnswerLockedTransactions) "M -> S" {}

    0x800F AnswerLockedTransactions answer "S -> M" {
        transactions: Vec<LockedTransaction>,
    }

    /// The final tid of a ttid: none if it did not commit, `Tid::MAX` for "ask the storages".
    0x0010 AskFinalTid request(AnswerFinalTid) "C -> M, C -> S, M -> S" {
        ttid: Tid,
    }

    0x8010 AnswerFinalTid answer "M -> C, S -> C, S -> M" {
        tid: Option<Tid>,
    }

    /// Commit a transaction left locked, during verification.
    0x0011 ValidateTransaction notify "M -> S" {
        ttid: Tid,
        tid: Tid,
    }

    /// `tpc_begin`: a new ttid, or the given tid for an import.
    0x0012 AskBeginTransaction request(AnswerBeginTransaction) "C -> M" {
        tid: Option<Tid>,
    }

    0x8012 AnswerBeginTransaction answer "M -> C" {
        ttid: Tid,
    }

    /// Some storages failed during store or vote; may the transaction commit without them?
    0x0013 FailedVote request(AnswerFailedVote) "C -> M" {
        ttid: Tid,
        failed: Vec<NodeId>,
    }

    /// Accepted (an `Error` with INCOMPLETE_TRANSACTION refuses).
    0x8013 AnswerFailedVote answer "M -> C" {}

    /// `tpc_finish`.
    0x0014 AskFinishTransaction request(AnswerTransactionFinished) "C -> M" {
        ttid: Tid,
        /// Objects stored (invalidated in other clients).
        oids: Vec<Oid>,
        /// Partitions of objects deleted.
        deleted: Vec<PartitionId>,
        /// Partitions of objects checked with `AskCheckCurrentSerial`.
        checked: Vec<PartitionId>,
        pack: Option<PackRequest>,
    }

    0x8014 AnswerTransactionFinished answer "M -> C" {
        ttid: Tid,
        tid: Tid,
    }

    /// Lock a voted transaction under its final tid: the durable commit point.
    0x0015 AskLockInformation request(AnswerInformationLocked) "M -> S" {
        ttid: Tid,
        tid: Tid,
        pack_auto_approved: bool,
    }

    0x8015 AnswerInformationLocked answer "S -> M" {
        ttid: Tid,
    }

    /// Objects changed by a committed transaction, to every other client.
    0x0016 InvalidateObjects notify "M -> C" {
        tid: Tid,
        oids: Vec<Oid>,
    }

    /// Partitions changed by a committed transaction, to backup masters.
    0x0017 InvalidatePartitions notify "M -> M (backup)" {
        tid: Tid,
        partitions: Vec<PartitionId>,
    }

    /// Make a locked transaction visible and release its locks.
    0x0018 NotifyUnlockInformation notify "M -> S" {
        ttid: Tid,
    }

    /// New oids, allocated in one contiguous batch.
    0x0019 AskNewOids request(AnswerNewOids) "C -> M" {
        count: u32,
    }

    0x8019 AnswerNewOids answer "M -> C" {
        /// The first of `count` consecutive oids.
        first: Oid,
        count: u32,
    }

    /// An older transaction waits for a lock this younger one holds: relock it.
    0x001A NotifyDeadlock notify "S -> C" {
        ttid: Tid,
        oid: Oid,
    }

    /// Release and retake the write lock of an object (deadlock avoidance).
    0x001B AskRelockObject request(AnswerRelockObject) "C -> S" {
        ttid: Tid,
        oid: Oid,
    }

    /// Relocked (no conflict), or a conflict with the data stored earlier (the client may no
    /// longer hold it) in the payload.
    0x801B AnswerRelockObject answer "S -> C" {
        conflict: Option<RelockConflict>,
        data_info: Option<DataInfo>,
        data: Payload,
    }

    /// `store`: object data for a transaction, to every writable cell of its partition.
    0x001C AskStoreObject request(AnswerStoreObject) "C -> S" {
        oid: Oid,
        /// The serial the data was based on; zero for a new object.
        serial: Tid,
        compression: Compression,
        /// crc32 of the data as sent (compressed); 0 with empty data for a deletion.
        data_crc: u32,
        /// For undo: the serial whose data this revision reuses (the payload is then empty).
        data_serial: Option<Tid>,
        ttid: Tid,
        data: Payload,
    }

    0x801C AnswerStoreObject answer "S -> C" {
        outcome: StoreOutcome,
    }

    /// Abort a transaction (to the master, with the storages involved; to each storage).
    0x001D AbortTransaction notify "C -> M, C -> S, M -> S" {
        ttid: Tid,
        nids: Vec<NodeId>,
    }

    /// Vote, with the transaction's metadata, to the cells of the ttid's partition.
    0x001E AskStoreTransaction request(AnswerStoreTransaction) "C -> S" {
        ttid: Tid,
        user: Bytes,
        description: Bytes,
        extension: Bytes,
        oids: Vec<Oid>,
        pack: Option<PackRequest>,
    }

    0x801E AnswerStoreTransaction answer "S -> C" {}

    /// Vote, to the other storages involved.
    0x001F AskVoteTransaction request(AnswerVoteTransaction) "C -> S" {
        ttid: Tid,
    }

    0x801F AnswerVoteTransaction answer "S -> C" {}

    /// `load`: the revision current at `at`, or before `before`, or the latest.
    0x0020 AskObject request(AnswerObject) "C -> S" {
        oid: Oid,
        at: Option<Tid>,
        before: Option<Tid>,
    }

    /// Empty data with crc 0 and no data serial: the object was deleted (or its creation
    /// undone) in this revision.
    0x8020 AnswerObject answer "S -> C" {
        oid: Oid,
        serial: Tid,
        /// The serial of the next revision, if any (`loadBefore`).
        next_serial: Option<Tid>,
        compression: Compression,
        data_crc: u32,
        /// The revision reuses this earlier serial's data (undo).
        data_serial: Option<Tid>,
        data: Payload,
    }

    /// Transaction ids, newest first, from position `first` to `last` (undo log).
    0x0021 AskTids request(AnswerTids) "C -> S" {
        first: u64,
        last: u64,
        /// One partition, or all readable ones.
        partition: Option<PartitionId>,
    }

    0x8021 AnswerTids answer "S -> C" {
        tids: Vec<Tid>,
    }

    /// A committed transaction's metadata and the oids it modified.
    0x0022 AskTransactionInformation request(AnswerTransactionInformation) "C -> S" {
        tid: Tid,
    }

    0x8022 AnswerTransactionInformation answer "S -> C" {
        tid: Tid,
        user: Bytes,
        description: Bytes,
        extension: Bytes,
        packed: bool,
        oids: Vec<Oid>,
    }

    /// Revisions of an object, newest first, from position `first` to `last`.
    0x0023 AskObjectHistory request(AnswerObjectHistory) "C -> S" {
        oid: Oid,
        first: u64,
        last: u64,
    }

    0x8023 AnswerObjectHistory answer "S -> C" {
        oid: Oid,
        history: Vec<HistoryEntry>,
    }

    /// Partition table rows `min_offset .. max_offset` (max 0 = to the end), optionally only
    /// the cells of one node.
    0x0024 AskPartitionList request(AnswerPartitionList) "ctl -> A" {
        min_offset: u32,
        max_offset: u32,
        nid: Option<NodeId>,
    }

    0x8024 AnswerPartitionList answer "A -> ctl" {
        ptid: Option<Ptid>,
        num_replicas: u32,
        rows: Vec<PartitionRow>,
    }

    /// Known nodes, optionally of one type.
    0x0025 AskNodeList request(AnswerNodeList) "ctl -> A" {
        node_type: Option<NodeType>,
    }

    0x8025 AnswerNodeList answer "A -> ctl" {
        nodes: Vec<NodeInfo>,
    }

    /// `ctl kill` (DOWN) or `ctl drop` (UNKNOWN).
    0x0026 SetNodeState request(AnswerSetNodeState) "ctl -> A -> M" {
        nid: NodeId,
        state: NodeState,
    }

    0x8026 AnswerSetNodeState answer "M -> A -> ctl" {}

    /// `ctl add`: pending storages enter service (cells come with `tweak`).
    0x0027 AddPendingNodes request(AnswerAddPendingNodes) "ctl -> A -> M" {
        nids: Vec<NodeId>,
    }

    0x8027 AnswerAddPendingNodes answer "M -> A -> ctl" {}

    /// `ctl tweak`: rebalance cells, leaving out the nodes listed; a dry run only shows.
    0x0028 TweakPartitionTable request(AnswerTweakPartitionTable) "ctl -> A -> M" {
        dry_run: bool,
        drop: Vec<NodeId>,
    }

    0x8028 AnswerTweakPartitionTable answer "M -> A -> ctl" {
        changed: bool,
        /// The resulting table (simulated on a dry run).
        rows: Vec<Vec<CellInfo>>,
    }

    /// `ctl set replicas N` (applied by the next tweak).
    0x0029 SetNumReplicas request(AnswerSetNumReplicas) "ctl -> A -> M" {
        replicas: u32,
    }

    0x8029 AnswerSetNumReplicas answer "M -> A -> ctl" {}

    /// `ctl set cluster STATE` and `ctl start` (VERIFYING).
    0x002A SetClusterState request(AnswerSetClusterState) "ctl -> A -> M" {
        state: ClusterState,
    }

    0x802A AnswerSetClusterState answer "M -> A -> ctl" {}

    /// `ctl repair`: prune orphan data on these storages.
    0x002B Repair request(AnswerRepair) "ctl -> A -> M" {
        nids: Vec<NodeId>,
        dry_run: bool,
    }

    0x802B AnswerRepair answer "M -> A -> ctl" {}

    /// Prune orphan data (forwarded `Repair`).
    0x002C NotifyRepair notify "M -> S" {
        dry_run: bool,
    }

    /// The cluster's new state.
    0x002D NotifyClusterInformation notify "M -> any" {
        state: ClusterState,
    }

    /// The cluster's state.
    0x002E AskClusterState request(AnswerClusterState) "ctl -> A, A -> M" {}

    0x802E AnswerClusterState answer "A -> ctl, M -> A" {
        state: ClusterState,
    }

    /// For undo of `undone_tid` by `ttid`: the serials each object would return to.
    0x002F AskObjectUndoSerial request(AnswerObjectUndoSerial) "C -> S" {
        ttid: Tid,
        /// The last tid the client saw.
        ltid: Tid,
        undone_tid: Tid,
        oids: Vec<Oid>,
    }

    0x802F AnswerObjectUndoSerial answer "S -> C" {
        serials: Vec<UndoSerial>,
    }

    /// Transaction ids in `min_tid ..= max_tid`, ascending, at most `length` (iterator).
    0x0030 AskTidsFrom request(AnswerTidsFrom) "C -> S" {
        min_tid: Tid,
        max_tid: Tid,
        length: u32,
        partition: PartitionId,
    }

    0x8030 AnswerTidsFrom answer "S -> C" {
        tids: Vec<Tid>,
    }

    /// Oids of objects that exist at `tid`, from `min_oid`, at most `length`.
    0x0031 AskOidsFrom request(AnswerOidsFrom) "C -> S" {
        partition: PartitionId,
        length: u32,
        min_oid: Oid,
        tid: Tid,
    }

    0x8031 AnswerOidsFrom answer "S -> C" {
        /// Where to continue, if there is more.
        next_oid: Option<Oid>,
        oids: Vec<Oid>,
    }

    /// Wait until every storage in service has carried out the pack orders up to `tid`.
    0x0032 WaitForPack request(AnswerWaitForPack) "C -> M" {
        tid: Tid,
    }

    0x8032 AnswerWaitForPack answer "M -> C" {}

    /// Pack orders from `min_pack_id` on (the master asks each storage it sends the table,
    /// so a new primary learns them back; a storage asks when it goes into service and
    /// when it hears of an order it does not know).
    0x0033 AskPackOrders request(AnswerPackOrders) "M -> S, S -> M" {
        min_pack_id: Tid,
    }

    0x8033 AnswerPackOrders answer "S -> M, M -> S" {
        orders: Vec<PackOrder>,
    }

    /// Pack orders approved or rejected; approved packs may run (to every storage, when the
    /// transaction carrying the order commits).
    0x0034 NotifyPackSigned notify "M -> S" {
        approved: Vec<Tid>,
        rejected: Vec<Tid>,
    }

    /// A storage finished the pack orders up to this one (also sent when it goes into
    /// service, so that a new primary knows).
    0x0035 NotifyPackCompleted notify "S -> M" {
        pack_id: Tid,
    }

    /// `ctl check`: compare the readable replicas of these partitions (every partition if
    /// none is named) over a tid range (up to the last committed tid if no max); with
    /// `repair`, cells found bad are copied again from a good one. Answered when the check
    /// is over.
    0x0036 CheckReplicas request(AnswerCheckReplicas) "ctl -> A -> M" {
        partitions: Vec<PartitionSource>,
        min_tid: Tid,
        max_tid: Option<Tid>,
        repair: bool,
    }

    0x8036 AnswerCheckReplicas answer "M -> A -> ctl" {
        /// Partitions checked, and the tid range.
        checked: u32,
        min_tid: Tid,
        max_tid: Tid,
        findings: Vec<CheckFinding>,
    }

    /// Check one partition against a source.
    0x0037 CheckPartition notify "M -> S" {
        partition: PartitionId,
        source: CheckSource,
        min_tid: Tid,
        max_tid: Tid,
    }

    /// Count and digest of the tids of a chunk (replica check): tids of the partition in
    /// `min_tid ..= max_tid`, at most `length`.
    0x0038 AskCheckTidRange request(AnswerCheckTidRange) "M -> S" {
        partition: PartitionId,
        length: u32,
        min_tid: Tid,
        max_tid: Tid,
    }

    0x8038 AnswerCheckTidRange answer "S -> M" {
        count: u32,
        /// SHA-1 of each tid and of its transaction's metadata (user, description,
        /// extension, oids: the record is read and checked).
        digest: Digest,
        max_tid: Tid,
        /// The first transaction whose record does not match its checksum here.
        damaged_tid: Option<Tid>,
    }

    /// Count and digests of the object records of a chunk (replica check): records of the
    /// partition from `(min_tid, min_oid)` on, with serial up to `max_tid`, at most
    /// `length`, in (serial, oid) order.
    0x0039 AskCheckSerialRange request(AnswerCheckSerialRange) "M -> S" {
        partition: PartitionId,
        length: u32,
        min_tid: Tid,
        max_tid: Tid,
        min_oid: Oid,
    }

    0x8039 AnswerCheckSerialRange answer "S -> M" {
        count: u32,
        tid_digest: Digest,
        max_tid: Tid,
        oid_digest: Digest,
        max_oid: Oid,
        /// SHA-1 of each record's data checksum and undo back-pointer (the data is read
        /// and checked).
        data_digest: Digest,
        /// The first record whose data does not match its checksum here.
        damaged_tid: Option<Tid>,
        damaged_oid: Option<Oid>,
    }

    /// A storage read data of this partition that does not match its checksum: its cell
    /// (`nids` holds the sender's id) is marked CORRUPTED and copied again from a good one.
    0x003A NotifyPartitionCorrupted notify "S -> M" {
        partition: PartitionId,
        nids: Vec<NodeId>,
    }

    /// The storage is ready after `StartOperation`.
    0x003B NotifyReady notify "S -> M" {}

    /// The last committed tid (a backup cluster answers its backup tid).
    0x003C AskLastTransaction request(AnswerLastTransaction) "C -> M, ctl -> A -> M" {}

    0x803C AnswerLastTransaction answer "M -> C, M -> A -> ctl" {
        tid: Option<Tid>,
    }

    /// `checkCurrentSerialInTransaction`: lock the object and check its serial, no data.
    0x003D AskCheckCurrentSerial request(AnswerCheckCurrentSerial) "C -> S" {
        ttid: Tid,
        oid: Oid,
        serial: Tid,
    }

    0x803D AnswerCheckCurrentSerial answer "S -> C" {
        outcome: StoreOutcome,
    }

    /// A transaction a replicating storage waited for has finished.
    0x003E NotifyTransactionFinished notify "M -> S" {
        ttid: Tid,
        max_tid: Tid,
    }

    /// Replicate these partitions up to `tid`, from these sources.
    0x003F Replicate notify "M -> S" {
        tid: Tid,
        upstream_name: Text,
        sources: Vec<ReplicateSource>,
    }

    /// A cell finished replicating up to `tid`: the master may mark it UP_TO_DATE.
    0x0040 NotifyReplicationDone notify "S -> M" {
        partition: PartitionId,
        tid: Tid,
    }

    /// Replication, transactions: the sender lists the tids it has in the chunk; the source
    /// streams `AddTransaction` for the others before answering.
    0x0041 AskFetchTransactions request(AnswerFetchTransactions) "S -> S" {
        partition: PartitionId,
        length: u32,
        min_tid: Tid,
        max_tid: Tid,
        have: Vec<Tid>,
        want_pack_info: bool,
    }

    0x8041 AnswerFetchTransactions answer "S -> S" {
        /// Where the next chunk starts, if there is more.
        next_tid: Option<Tid>,
        /// Tids the asker has and the source does not: to delete.
        delete: Vec<Tid>,
        completed_pack: Option<Tid>,
    }

    /// Replication, objects: as transactions, streaming `AddObject`.
    0x0042 AskFetchObjects request(AnswerFetchObjects) "S -> S" {
        partition: PartitionId,
        length: u32,
        min_tid: Tid,
        max_tid: Tid,
        min_oid: Oid,
        have: Vec<SerialOids>,
    }

    0x8042 AnswerFetchObjects answer "S -> S" {
        next_tid: Option<Tid>,
        next_oid: Option<Oid>,
        delete: Vec<SerialOids>,
    }

    /// A transaction the replicating storage lacks (sent with the request's message id).
    0x0043 AddTransaction notify "S -> S" {
        tid: Tid,
        user: Bytes,
        description: Bytes,
        extension: Bytes,
        packed: bool,
        ttid: Tid,
        oids: Vec<Oid>,
        pack: Option<PackOrder>,
    }

    /// An object record the replicating storage lacks (sent with the request's message id).
    0x0044 AddObject notify "S -> S" {
        oid: Oid,
        serial: Tid,
        compression: Compression,
        data_crc: u32,
        data_serial: Option<Tid>,
        data: Payload,
    }

    /// `ctl truncate`, and the master's order to storages: drop everything after `tid`.
    0x0045 Truncate request(AnswerTruncate) "ctl -> A -> M, M -> S" {
        tid: Tid,
    }

    0x8045 AnswerTruncate answer "M -> A -> ctl, S -> M" {}

    /// Flush in-memory logs to disk (forwarded to every node).
    0x0046 FlushLog notify "ctl -> A -> M -> any" {}

    /// Monitoring summary of this cluster and of the backup clusters the admin watches.
    0x0047 AskMonitorInformation request(AnswerMonitorInformation) "ctl -> A" {}

    0x8047 AnswerMonitorInformation answer "A -> ctl" {
        /// Backup clusters with warnings.
        warnings: Vec<Text>,
        /// Backup clusters with problems.
        problems: Vec<Text>,
        summary: Text,
    }

    /// Monitoring state of a backup cluster, to the admin of its upstream cluster.
    0x0048 NotifyMonitorInformation notify "A -> A" {
        entries: Vec<MonitorEntry>,
    }

    /// The address of the upstream cluster's admin, to a backup cluster's admin.
    0x0049 NotifyUpstreamAdmin notify "M -> A" {
        address: Address,
    }

    /// The primary will hand out oids up to `oid`: the storage keeps that durably (and
    /// reports it as its last oid to a later primary) before it answers.
    0x004A AskReserveOids request(AnswerReserveOids) "M -> S" {
        oid: Oid,
    }

    0x804A AnswerReserveOids answer "S -> M" {}

    /// How far a cell replicating got: after each chunk (and when a round begins).
    0x004B NotifyReplicationProgress notify "S -> M" {
        partition: PartitionId,
        position: Tid,
        target: Tid,
        /// Object data copied in the round so far.
        bytes: u64,
    }

    /// `ctl print pt`: the cells replicating, and how far they are.
    0x004C AskReplicationProgress request(AnswerReplicationProgress) "ctl -> A -> M" {}

    0x804C AnswerReplicationProgress answer "M -> A -> ctl" {
        cells: Vec<ReplicationProgress>,
    }

    /// `ctl stats`: every node's live figures; the master asks each storage in service.
    0x004D AskNodeStats request(AnswerNodeStats) "ctl -> A -> M, M -> S" {}

    0x804D AnswerNodeStats answer "S -> M, M -> A -> ctl" {
        nodes: Vec<NodeStats>,
    }
}
