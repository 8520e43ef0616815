//! The handshake: 16 bytes each side sends before its first frame.
//!
//! It lets a node refuse a stranger (another protocol, TLS, NEO/py, HTTP), a peer of another
//! protocol version, or a peer of another cluster, before reading a single frame. Both sides
//! send their hello at once, without waiting for the other's.
//!
//! ```text
//! offset  size  field
//!      0     4  magic "NEOr" (0x4E 0x45 0x4F 0x72)
//!      4     2  protocol version, u16 little-endian
//!      6     1  node type of the sender (NodeType)
//!      7     1  reserved: zero, or 1 from a node that speaks only TLS to a peer that
//!                 connected without it (the node closes the connection after this hello)
//!      8     4  crc32 of the cluster name
//!     12     4  crc32 of bytes 0..12
//! ```

use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::enums::NodeType;
use crate::limits::HELLO_SIZE;

/// The first four bytes every neo-rs connection starts with.
pub const MAGIC: [u8; 4] = *b"NEOr";

/// The reserved byte of a hello that says "TLS only" (`Hello::encode_requiring_tls`).
const RESERVED_TLS_REQUIRED: u8 = 1;

/// The version of the protocol this crate speaks. Peers must speak the same version; see
/// docs/protocol.md for the compatibility rules.
pub const PROTOCOL_VERSION: u16 = 1;

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
struct HelloBytes {
    magic: [u8; 4],
    version: U16,
    node_type: u8,
    reserved: u8,
    cluster_crc: U32,
    hello_crc: U32,
}

const _: () = assert!(size_of::<HelloBytes>() == HELLO_SIZE);

/// One side's hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    pub version: u16,
    pub node_type: NodeType,
    /// crc32 of the cluster name: enough to tell clusters apart early; identification then
    /// compares the full names.
    pub cluster_crc: u32,
}

/// Why a handshake failed. Each message names what was expected and what came.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("peer is not a neo-rs node: it sent {bytes:02x?}{}", guess.map(|g| format!(" ({g})")).unwrap_or_default())]
    NotNeo { bytes: [u8; 4], guess: Option<&'static str> },
    #[error("protocol version mismatch: we speak version {ours}, the peer speaks version {theirs}")]
    VersionMismatch { ours: u16, theirs: u16 },
    #[error(
        "the peer belongs to another cluster: its cluster name is not ours (name checksums {theirs:#010x} and ours {ours:#010x})"
    )]
    ClusterMismatch { ours: u32, theirs: u32 },
    #[error("corrupt hello: checksum {expected:#010x} given, {actual:#010x} computed")]
    BadChecksum { expected: u32, actual: u32 },
    #[error("invalid hello: {0}")]
    Invalid(&'static str),
    #[error(
        "the peer speaks only TLS and this side connected without it: give this side the \
         cluster's CA, a certificate and its key (--ca, --cert, --key)"
    )]
    TlsRequired,
    #[error("peer closed the connection after {received} of the {HELLO_SIZE} hello bytes")]
    Truncated { received: usize },
}

impl Hello {
    pub fn new(node_type: NodeType, cluster_name: &str) -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            node_type,
            cluster_crc: crc32fast::hash(cluster_name.as_bytes()),
        }
    }

    pub fn encode(&self) -> [u8; HELLO_SIZE] {
        self.encode_with(0)
    }

    /// The hello a node that speaks only TLS sends to a peer that connected in plain TCP,
    /// before it closes the connection: the peer's `decode` fails with `TlsRequired`.
    pub fn encode_requiring_tls(&self) -> [u8; HELLO_SIZE] {
        self.encode_with(RESERVED_TLS_REQUIRED)
    }

    fn encode_with(&self, reserved: u8) -> [u8; HELLO_SIZE] {
        let mut hello = HelloBytes {
            magic: MAGIC,
            version: U16::new(self.version),
            node_type: self.node_type as u8,
            reserved,
            cluster_crc: U32::new(self.cluster_crc),
            hello_crc: U32::new(0),
        };
        hello.hello_crc = U32::new(crc32fast::hash(&hello.as_bytes()[..12]));
        let mut bytes = [0u8; HELLO_SIZE];
        bytes.copy_from_slice(hello.as_bytes());
        bytes
    }

    /// Decodes a peer's hello. The magic is checked first, then the version, so that a peer
    /// of another version gets a version error even if later fields changed meaning.
    pub fn decode(bytes: &[u8]) -> Result<Hello, HandshakeError> {
        if bytes.len() >= 4 && bytes[..4] != MAGIC {
            let first = [bytes[0], bytes[1], bytes[2], bytes[3]];
            return Err(HandshakeError::NotNeo { bytes: first, guess: guess_protocol(&first) });
        }
        let Ok((hello, _)) = HelloBytes::ref_from_prefix(bytes) else {
            return Err(HandshakeError::Truncated { received: bytes.len() });
        };
        if hello.version.get() != PROTOCOL_VERSION {
            return Err(HandshakeError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: hello.version.get(),
            });
        }
        let actual = crc32fast::hash(&bytes[..12]);
        if actual != hello.hello_crc.get() {
            return Err(HandshakeError::BadChecksum { expected: hello.hello_crc.get(), actual });
        }
        if hello.reserved == RESERVED_TLS_REQUIRED {
            return Err(HandshakeError::TlsRequired);
        }
        if hello.reserved != 0 {
            return Err(HandshakeError::Invalid("reserved byte is not zero"));
        }
        let node_type = NodeType::from_u8(hello.node_type)
            .ok_or(HandshakeError::Invalid("unknown node type"))?;
        Ok(Hello { version: hello.version.get(), node_type, cluster_crc: hello.cluster_crc.get() })
    }

    /// Checks a peer's hello against ours.
    pub fn check_peer(&self, peer: &Hello) -> Result<(), HandshakeError> {
        if peer.version != self.version {
            return Err(HandshakeError::VersionMismatch {
                ours: self.version,
                theirs: peer.version,
            });
        }
        if peer.cluster_crc != self.cluster_crc {
            return Err(HandshakeError::ClusterMismatch {
                ours: self.cluster_crc,
                theirs: peer.cluster_crc,
            });
        }
        Ok(())
    }
}

/// Names what a stranger probably speaks, from its first bytes, for the error message.
fn guess_protocol(bytes: &[u8; 4]) -> Option<&'static str> {
    match bytes {
        [0x16, 0x03, ..] => Some("a TLS handshake; is TLS configured on one side only?"),
        [0x00, 0x00, 0x00, _] => Some("NEO/py 1.12 or NEO/go binary protocol"),
        [0x92, 0xa3, b'N', b'E'] => Some("NEO/py msgpack protocol"),
        _ if bytes.iter().all(|b| b.is_ascii_graphic() || *b == b' ') => Some("text, perhaps HTTP"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tls_only_node_says_so_in_its_hello() {
        let hello = Hello::new(NodeType::Master, "prod").encode_requiring_tls();
        assert_eq!(Hello::decode(&hello), Err(HandshakeError::TlsRequired));
        let message = HandshakeError::TlsRequired.to_string();
        assert!(message.contains("--ca, --cert, --key"), "{message}");
    }

    #[test]
    fn hello_round_trip_and_checks() {
        let ours = Hello::new(NodeType::Storage, "prod");
        let bytes = ours.encode();
        assert_eq!(&bytes[..4], b"NEOr");
        let theirs = Hello::decode(&bytes).unwrap();
        assert_eq!(theirs, ours);
        ours.check_peer(&theirs).unwrap();
        let other = Hello::new(NodeType::Client, "test");
        assert!(matches!(ours.check_peer(&other), Err(HandshakeError::ClusterMismatch { .. })));
    }

    #[test]
    fn version_mismatch_names_both_versions() {
        let mut bytes = Hello::new(NodeType::Client, "c").encode();
        bytes[4] = 7;
        let error = Hello::decode(&bytes).unwrap_err();
        assert_eq!(error, HandshakeError::VersionMismatch { ours: PROTOCOL_VERSION, theirs: 7 });
        let text = error.to_string();
        assert!(text.contains("version 1") && text.contains("version 7"), "{text}");
    }

    #[test]
    fn strangers_are_named() {
        let tls = [0x16, 0x03, 0x01, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(Hello::decode(&tls).unwrap_err().to_string().contains("TLS"));
        assert!(Hello::decode(b"GET / HTTP/1.1\r\n").unwrap_err().to_string().contains("HTTP"));
        assert!(Hello::decode(&[0, 0, 0, 6]).unwrap_err().to_string().contains("NEO/py 1.12"));
        assert!(matches!(Hello::decode(b"NEO"), Err(HandshakeError::Truncated { received: 3 })));
        let mut corrupt = Hello::new(NodeType::Admin, "c").encode();
        corrupt[9] ^= 1;
        assert!(matches!(Hello::decode(&corrupt), Err(HandshakeError::BadChecksum { .. })));
    }
}
