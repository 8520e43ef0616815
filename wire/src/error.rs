//! Typed errors for decoding and encoding. Every bad input maps to one of these; none panics.

/// Why a frame, a body or a handshake could not be decoded.
///
/// The connection that produced one of these is no longer framed correctly (or speaks
/// something else) and must be closed; the node itself stays up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("truncated: needed {needed} more bytes, {available} available")]
    Truncated { needed: usize, available: usize },
    #[error("unknown message kind {0:#06x}")]
    UnknownKind(u16),
    #[error("{what} of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge { what: &'static str, size: usize, max: usize },
    #[error("list of {length} elements exceeds the limit of {max}")]
    ListTooLong { length: usize, max: usize },
    #[error("reserved bits set in {field}: {value:#x}")]
    ReservedBits { field: &'static str, value: u64 },
    #[error("bad header checksum: header says {expected:#010x}, bytes give {actual:#010x}")]
    BadHeaderChecksum { expected: u32, actual: u32 },
    #[error("bad body checksum: header says {expected:#010x}, body gives {actual:#010x}")]
    BadBodyChecksum { expected: u32, actual: u32 },
    #[error("invalid {what}: {value:#x}")]
    BadValue { what: &'static str, value: u64 },
    #[error("text is not valid UTF-8")]
    InvalidUtf8,
    #[error("{extra} bytes left over after the last field")]
    TrailingBytes { extra: usize },
    #[error("payload of {size} bytes on a message that carries none")]
    UnexpectedPayload { size: usize },
    #[error("{message}.{field}: {source}")]
    InField { message: &'static str, field: &'static str, source: Box<DecodeError> },
    #[error("stream already failed: {0}")]
    Poisoned(Box<DecodeError>),
}

impl DecodeError {
    /// Wraps `self` with the name of the message (or composite type) and field it came from.
    #[cold]
    pub fn in_field(self, message: &'static str, field: &'static str) -> DecodeError {
        DecodeError::InField { message, field, source: Box::new(self) }
    }

    /// The innermost error, without the field path.
    pub fn root(&self) -> &DecodeError {
        match self {
            DecodeError::InField { source, .. } | DecodeError::Poisoned(source) => source.root(),
            other => other,
        }
    }
}

/// Why a message could not be encoded: it would exceed a limit the receiver enforces.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("{what} of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge { what: &'static str, size: usize, max: usize },
}
