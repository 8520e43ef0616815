//! The neo-rs wire protocol: identifiers, enumerations, the frame format, the handshake and
//! every message of every NEO role. No I/O and no runtime: bytes in, messages out, and back.
//!
//! A connection starts with a 16-byte hello each way (`handshake`), then carries frames
//! (`frame`): a 24-byte header, a body of fields (`codec`), and for object data a payload.
//! Decoding borrows from the receive buffer (`bytes::Bytes`) and never panics: any input
//! either decodes or gives a `DecodeError`, within the bounds of `limits`.
//!
//! The byte-level description is docs/protocol.md; a test keeps it in step with this crate.

pub mod codec;
pub mod doc;
pub mod enums;
pub mod error;
pub mod frame;
#[cfg(feature = "arbitrary")]
pub mod fuzz;
pub mod handshake;
pub mod ids;
pub mod limits;
pub mod messages;

#[cfg(any(test, feature = "arbitrary"))]
pub use arbitrary;
pub use bytes::{Bytes, BytesMut};
pub use codec::{Field, Payload, Text};
pub use enums::{CellState, ClusterState, Compression, ErrorCode, NodeState, NodeType};
pub use error::{DecodeError, EncodeError};
pub use frame::{FrameDecoder, FrameHeader, RawFrame, decode_frame, encode_frame};
pub use handshake::{HandshakeError, Hello, MAGIC, PROTOCOL_VERSION};
pub use ids::{NodeId, Oid, PartitionId, Ptid, Tid, UtcTime};
pub use messages::*;
