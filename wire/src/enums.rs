//! The enumerations of NEO's vocabulary: node types and states, cell states, cluster states,
//! error codes, and the compression of object data. Each travels as one byte; any other value
//! is a decode error.

use bytes::BytesMut;

use crate::codec::{Field, Reader};
use crate::error::{DecodeError, EncodeError};

macro_rules! wire_enum {
    ($(
        $(#[doc = $doc:literal])*
        pub enum $name:ident { $( $(#[doc = $vdoc:literal])* $variant:ident = $value:literal => $text:literal ),* $(,)? }
    )*) => {$(
        $(#[doc = $doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
        #[repr(u8)]
        pub enum $name { $( $(#[doc = $vdoc])* $variant = $value ),* }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            pub fn from_u8(value: u8) -> Option<$name> {
                match value {
                    $($value => Some($name::$variant),)*
                    _ => None,
                }
            }

            /// The name operators see (`ctl`, logs), as NEO spells it.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),* }
            }

            /// Parses the operator's spelling, case-insensitively.
            pub fn parse(text: &str) -> Option<$name> {
                $name::ALL.iter().copied().find(|v| v.as_str().eq_ignore_ascii_case(text))
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Field for $name {
            const WIRE: &'static str = concat!("u8 (", stringify!($name), ")");
            const SIZE_MIN: usize = 1;
            const SIZE_FIXED: Option<usize> = Some(1);

            #[inline]
            fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
                (*self as u8).encode(out)
            }

            #[inline]
            fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
                let value = u8::decode(reader)?;
                $name::from_u8(value)
                    .ok_or(DecodeError::BadValue { what: stringify!($name), value: u64::from(value) })
            }

            #[cfg(any(test, feature = "arbitrary"))]
            fn arbitrary(u: &mut arbitrary::Unstructured<'_>) -> arbitrary::Result<Self> {
                u.choose($name::ALL).copied()
            }
        }
    )*};
}

wire_enum! {
    /// The role of a node.
    pub enum NodeType {
        /// Allocates ids, coordinates commits, owns the partition table (the primary), or
        /// waits to take over (a secondary).
        Master = 0 => "MASTER",
        /// Holds cells (copies of partitions): one storage core of a `neo storage` process.
        Storage = 1 => "STORAGE",
        /// An application's connection to the cluster (the ZODB storage).
        Client = 2 => "CLIENT",
        /// Serves `neo ctl` and monitors the cluster.
        Admin = 3 => "ADMIN",
    }

    /// A node's state, as the primary master decides it.
    pub enum NodeState {
        /// Forgotten, or never seen.
        Unknown = 0 => "UNKNOWN",
        /// Known but not connected.
        Down = 1 => "DOWN",
        /// Connected and in service.
        Running = 2 => "RUNNING",
        /// Connected, waiting to be added (`ctl add`) or for the cluster to start.
        Pending = 3 => "PENDING",
    }

    /// The state of a cell: one copy of a partition on one storage node.
    pub enum CellState {
        /// Missing recent transactions; written to, not read from; replicating.
        OutOfDate = 0 => "OUT_OF_DATE",
        /// Readable and writable.
        UpToDate = 1 => "UP_TO_DATE",
        /// Readable; dropped once the cell that replaces it is up to date.
        Feeding = 2 => "FEEDING",
        /// A replica check found it differs from the others.
        Corrupted = 3 => "CORRUPTED",
        /// Not a state a cell is in: in a change list, it removes the cell.
        Discarded = 4 => "DISCARDED",
    }

    /// The state of the whole cluster, as the primary master drives it.
    pub enum ClusterState {
        /// Electing a primary and gathering the partition table from the storages.
        Recovering = 0 => "RECOVERING",
        /// Replaying or dropping transactions a crash left unfinished.
        Verifying = 1 => "VERIFYING",
        /// In service: clients may connect.
        Running = 2 => "RUNNING",
        /// Finishing pending transactions before every node stops.
        Stopping = 3 => "STOPPING",
        /// Connecting to the upstream cluster to back it up.
        StartingBackup = 4 => "STARTING_BACKUP",
        /// Replicating from the upstream cluster; clients may only read.
        BackingUp = 5 => "BACKINGUP",
        /// Leaving backup mode at a consistent tid.
        StoppingBackup = 6 => "STOPPING_BACKUP",
    }

    /// Why a request failed, in an `Error` answer.
    pub enum ErrorCode {
        /// Not allowed in the current state, or against a safety rule.
        Denied = 1 => "DENIED",
        /// The node or cluster cannot serve this yet; the connection is closed after it.
        NotReady = 2 => "NOT_READY",
        /// The object exists, but has no revision matching the request.
        OidNotFound = 3 => "OID_NOT_FOUND",
        /// No such transaction.
        TidNotFound = 4 => "TID_NOT_FOUND",
        /// The object has never existed.
        OidDoesNotExist = 5 => "OID_DOES_NOT_EXIST",
        /// The peer broke the protocol; the connection is closed after it.
        ProtocolError = 6 => "PROTOCOL_ERROR",
        /// Replication between storages failed.
        ReplicationError = 7 => "REPLICATION_ERROR",
        /// A replica check could not run.
        CheckingError = 8 => "CHECKING_ERROR",
        /// The storage does not implement the request.
        BackendNotImplemented = 9 => "BACKEND_NOT_IMPLEMENTED",
        /// The cell asked is not readable here; ask another cell.
        NonReadableCell = 10 => "NON_READABLE_CELL",
        /// A read-only client tried to write.
        ReadOnlyAccess = 11 => "READ_ONLY_ACCESS",
        /// The transaction cannot commit: some partition would lose its last readable copy.
        IncompleteTransaction = 12 => "INCOMPLETE_TRANSACTION",
        /// Undo is impossible because the history it needs was packed.
        UndoPackError = 13 => "UNDO_PACK_ERROR",
    }

    /// How object data is compressed. Checksums cover the bytes as stored (compressed).
    pub enum Compression {
        None = 0 => "none",
        Zlib = 1 => "zlib",
    }
}

impl NodeType {
    /// The letter of node ids of this type: `S1`, `M1`, `C1`, `A1`.
    pub fn letter(self) -> char {
        match self {
            NodeType::Master => 'M',
            NodeType::Storage => 'S',
            NodeType::Client => 'C',
            NodeType::Admin => 'A',
        }
    }

    pub fn from_letter(letter: char) -> Option<NodeType> {
        NodeType::ALL.iter().copied().find(|t| t.letter() == letter)
    }
}

impl CellState {
    /// Loads may be served from a cell in this state.
    pub fn is_readable(self) -> bool {
        matches!(self, CellState::UpToDate | CellState::Feeding)
    }

    /// Stores must be sent to a cell in this state.
    pub fn is_writable(self) -> bool {
        matches!(self, CellState::OutOfDate | CellState::UpToDate | CellState::Feeding)
    }

    /// The letter of the partition table grid (`neo ctl print pt`).
    pub fn letter(self) -> char {
        match self {
            CellState::OutOfDate => 'O',
            CellState::UpToDate => 'U',
            CellState::Feeding => 'F',
            CellState::Corrupted => 'C',
            CellState::Discarded => '.',
        }
    }
}
