//! Every bound the wire format enforces, in one place.
//!
//! A decoder checks each of these before it allocates or slices anything, so a peer cannot
//! make a node reserve more memory than these numbers allow, whatever bytes it sends.

/// Size of the frame header in bytes (see `frame::FrameHeader`).
pub const FRAME_HEADER_SIZE: usize = 24;

/// Size of the handshake hello in bytes (see `handshake::Hello`).
pub const HELLO_SIZE: usize = 16;

/// Largest body (the checksummed, structured part of a frame).
///
/// The largest body a correct peer sends is a vote or a finish of a transaction that
/// touches `OIDS_PER_TRANSACTION_MAX` objects: 8 bytes per oid, about 16 MiB, plus the
/// transaction's user, description and extension.
pub const BODY_SIZE_MAX: usize = 32 << 20;

/// Largest payload (object data carried beside the body, see `frame`).
///
/// NEO refuses packets over 64 MiB; an object bigger than this cannot be stored.
pub const PAYLOAD_SIZE_MAX: usize = 64 << 20;

/// Largest frame on the wire: header, body and payload together.
pub const FRAME_SIZE_MAX: usize = FRAME_HEADER_SIZE + BODY_SIZE_MAX + PAYLOAD_SIZE_MAX;

/// Most bytes the streaming decoder reserves ahead of the bytes received, while a frame is
/// incomplete.
pub const READ_RESERVE_MAX: usize = 256 << 10;

/// Most oids one transaction may modify (NEO's limit, 2^21 - 1).
pub const OIDS_PER_TRANSACTION_MAX: usize = (1 << 21) - 1;

/// Most elements in any list of a message. Oid lists are the longest lists.
pub const LIST_LENGTH_MAX: usize = OIDS_PER_TRANSACTION_MAX;

/// Longest text field (cluster names, host names, error messages, monitor summaries).
pub const TEXT_SIZE_MAX: usize = 64 << 10;

/// Longest opaque byte field in a body (transaction user, description and extension).
pub const BYTES_SIZE_MAX: usize = 16 << 20;

/// Longest cluster name accepted at identification.
pub const CLUSTER_NAME_SIZE_MAX: usize = 255;

const _: () = assert!(FRAME_HEADER_SIZE.is_multiple_of(8));
const _: () = assert!(BODY_SIZE_MAX <= u32::MAX as usize);
const _: () = assert!(PAYLOAD_SIZE_MAX <= u32::MAX as usize);
const _: () = assert!(FRAME_SIZE_MAX <= u32::MAX as usize);
const _: () = assert!(OIDS_PER_TRANSACTION_MAX * 8 < BODY_SIZE_MAX);
const _: () = assert!(BYTES_SIZE_MAX < BODY_SIZE_MAX);
const _: () = assert!(READ_RESERVE_MAX < BODY_SIZE_MAX);
const _: () = assert!(TEXT_SIZE_MAX < BYTES_SIZE_MAX);
const _: () = assert!(CLUSTER_NAME_SIZE_MAX < TEXT_SIZE_MAX);
