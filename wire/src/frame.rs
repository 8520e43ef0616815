//! Frames: the 24-byte header, the body and the payload; encoding into a `BytesMut`, and
//! decoding from a buffer or a byte stream.
//!
//! ```text
//! +--------------------+------------------------------+----------------------------+
//! | header (24 bytes)  | body (body_size bytes)       | payload (payload_size)     |
//! | crc32 of itself    | message fields, crc32 in hdr | object data, checksummed   |
//! |                    |                              | by the message's own field |
//! +--------------------+------------------------------+----------------------------+
//! ```
//!
//! The header has its own checksum so that a stranger or a desynchronised stream is
//! refused after 24 bytes, before any body is buffered. The body checksum covers every
//! field. Object data rides in the payload, outside the frame checksum, because it already
//! carries an end-to-end checksum that the storage checks on store and the client on load:
//! checksumming it twice would cost a second pass over every byte on the hot path.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::error::{DecodeError, EncodeError};
use crate::limits::{self, BODY_SIZE_MAX, FRAME_HEADER_SIZE, PAYLOAD_SIZE_MAX};
use crate::messages::{Body, Kind, Message};

/// The fixed header in front of every frame. All fields little-endian.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct FrameHeader {
    /// Chosen by the sender of a request or notification; an answer repeats its request's id.
    pub msg_id: U32,
    /// The message kind; bit 15 set marks an answer.
    pub kind: U16,
    /// Reserved for later versions; must be zero.
    pub flags: U16,
    /// Bytes of body after the header.
    pub body_size: U32,
    /// Bytes of payload after the body.
    pub payload_size: U32,
    /// crc32 (IEEE) of the body.
    pub body_crc: U32,
    /// crc32 (IEEE) of the 20 header bytes before this field.
    pub header_crc: U32,
}

const _: () = assert!(size_of::<FrameHeader>() == FRAME_HEADER_SIZE);

/// Offset of `header_crc`: the header checksum covers the bytes before it.
const HEADER_CRC_OFFSET: usize = std::mem::offset_of!(FrameHeader, header_crc);

/// A frame whose header and body checksum were checked, and whose body is not decoded yet.
#[derive(Debug, Clone)]
pub struct RawFrame {
    pub msg_id: u32,
    pub kind: Kind,
    pub body: Bytes,
    pub payload: Bytes,
}

impl RawFrame {
    /// Decodes the body. Fields of type `Bytes`, `Text` and `Payload` borrow from the frame.
    pub fn message(&self) -> Result<Message, DecodeError> {
        Message::decode(self.kind, &self.body, self.payload.clone())
    }

    /// Decodes the body, handing the payload over instead of sharing it.
    pub fn into_message(self) -> Result<Message, DecodeError> {
        Message::decode(self.kind, &self.body, self.payload)
    }
}

/// A header that passed every check that needs no body.
#[derive(Debug, Clone, Copy)]
struct CheckedHeader {
    msg_id: u32,
    kind: Kind,
    body_size: usize,
    payload_size: usize,
    body_crc: u32,
}

/// Appends a frame's header and body to `out`, and returns the payload to write after them.
///
/// The payload is returned, not copied, so that a sender can hand both buffers to one
/// vectored write. On error `out` is left as it was.
pub fn encode_frame<'m, M: Body + ?Sized>(
    out: &mut BytesMut,
    msg_id: u32,
    message: &'m M,
) -> Result<Option<&'m Bytes>, EncodeError> {
    let start = out.len();
    out.put_bytes(0, FRAME_HEADER_SIZE);
    let encoded = message.encode_body(out).and_then(|()| {
        let body_size = out.len() - start - FRAME_HEADER_SIZE;
        if body_size > BODY_SIZE_MAX {
            return Err(EncodeError::TooLarge {
                what: "frame body",
                size: body_size,
                max: BODY_SIZE_MAX,
            });
        }
        let payload = message.payload().filter(|p| !p.is_empty());
        let payload_size = payload.map_or(0, Bytes::len);
        if payload_size > PAYLOAD_SIZE_MAX {
            return Err(EncodeError::TooLarge {
                what: "payload",
                size: payload_size,
                max: PAYLOAD_SIZE_MAX,
            });
        }
        Ok((body_size, payload, payload_size))
    });
    let (body_size, payload, payload_size) = match encoded {
        Ok(sizes) => sizes,
        Err(error) => {
            out.truncate(start);
            return Err(error);
        }
    };
    let mut header = FrameHeader {
        msg_id: U32::new(msg_id),
        kind: U16::new(message.kind() as u16),
        flags: U16::new(0),
        body_size: U32::new(body_size as u32),
        payload_size: U32::new(payload_size as u32),
        body_crc: U32::new(crc32fast::hash(&out[start + FRAME_HEADER_SIZE..])),
        header_crc: U32::new(0),
    };
    header.header_crc = U32::new(crc32fast::hash(&header.as_bytes()[..HEADER_CRC_OFFSET]));
    out[start..start + FRAME_HEADER_SIZE].copy_from_slice(header.as_bytes());
    Ok(payload)
}

/// Checks a header: its checksum first (a stranger fails here), then flags, kind and sizes.
fn check_header(bytes: &[u8]) -> Result<CheckedHeader, DecodeError> {
    let (header, _) = FrameHeader::ref_from_prefix(bytes).map_err(|_| DecodeError::Truncated {
        needed: FRAME_HEADER_SIZE,
        available: bytes.len(),
    })?;
    let actual = crc32fast::hash(&bytes[..HEADER_CRC_OFFSET]);
    let expected = header.header_crc.get();
    if actual != expected {
        return Err(DecodeError::BadHeaderChecksum { expected, actual });
    }
    if header.flags.get() != 0 {
        return Err(DecodeError::ReservedBits {
            field: "frame flags",
            value: u64::from(header.flags.get()),
        });
    }
    let kind =
        Kind::from_u16(header.kind.get()).ok_or(DecodeError::UnknownKind(header.kind.get()))?;
    let body_size = size_within("frame body", header.body_size.get(), BODY_SIZE_MAX)?;
    let payload_size = size_within("payload", header.payload_size.get(), PAYLOAD_SIZE_MAX)?;
    if payload_size != 0 && !kind.carries_payload() {
        return Err(DecodeError::UnexpectedPayload { size: payload_size });
    }
    Ok(CheckedHeader {
        msg_id: header.msg_id.get(),
        kind,
        body_size,
        payload_size,
        body_crc: header.body_crc.get(),
    })
}

fn size_within(what: &'static str, size: u32, max: usize) -> Result<usize, DecodeError> {
    let size = size as usize;
    if size > max {
        return Err(DecodeError::TooLarge { what, size, max });
    }
    Ok(size)
}

fn check_body(header: &CheckedHeader, body: &[u8]) -> Result<(), DecodeError> {
    let actual = crc32fast::hash(body);
    if actual != header.body_crc {
        return Err(DecodeError::BadBodyChecksum { expected: header.body_crc, actual });
    }
    Ok(())
}

/// Decodes the frame at the start of `buffer`, if it is all there.
///
/// Returns the frame and its size on the wire, `Ok(None)` if more bytes are needed, or an
/// error as soon as the bytes present prove the stream bad.
pub fn decode_frame(buffer: &Bytes) -> Result<Option<(RawFrame, usize)>, DecodeError> {
    if buffer.len() < FRAME_HEADER_SIZE {
        return Ok(None);
    }
    let header = check_header(&buffer[..FRAME_HEADER_SIZE])?;
    let body_end = FRAME_HEADER_SIZE + header.body_size;
    let frame_end = body_end + header.payload_size;
    if buffer.len() < frame_end {
        return Ok(None);
    }
    check_body(&header, &buffer[FRAME_HEADER_SIZE..body_end])?;
    let frame = RawFrame {
        msg_id: header.msg_id,
        kind: header.kind,
        body: buffer.slice(FRAME_HEADER_SIZE..body_end),
        payload: if header.payload_size == 0 {
            Bytes::new()
        } else {
            buffer.slice(body_end..frame_end)
        },
    };
    Ok(Some((frame, frame_end)))
}

/// Turns a byte stream into frames, as the bytes arrive.
///
/// Append received bytes with `buffer_mut` (read straight into its spare capacity) or
/// `extend_from_slice`, then call `next_frame` until it returns `Ok(None)`. The header is
/// checked as soon as its 24 bytes are in, so a bad stream fails before its body is buffered.
/// The buffer grows with the bytes that arrive (by at most `limits::READ_RESERVE_MAX` ahead),
/// never with the size a header announces, and never past `limits::FRAME_SIZE_MAX`. After an error the decoder stays
/// failed: the stream has lost its framing and the connection must be closed.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buffer: BytesMut,
    header: Option<CheckedHeader>,
    failed: Option<DecodeError>,
}

impl FrameDecoder {
    pub fn new() -> FrameDecoder {
        FrameDecoder::with_capacity(64 << 10)
    }

    pub fn with_capacity(capacity: usize) -> FrameDecoder {
        FrameDecoder { buffer: BytesMut::with_capacity(capacity), header: None, failed: None }
    }

    /// The receive buffer, to append bytes to.
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buffer
    }

    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// Bytes received and not yet returned as part of a frame (the current header excluded).
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// The size (body and payload) of the frame being received, once its header is in.
    pub fn pending_frame_size(&self) -> Option<usize> {
        self.header.map(|header| header.body_size + header.payload_size)
    }

    /// Whether a frame has started and not finished: a stream that ends here was cut.
    pub fn is_mid_frame(&self) -> bool {
        self.header.is_some() || !self.buffer.is_empty()
    }

    pub fn next_frame(&mut self) -> Result<Option<RawFrame>, DecodeError> {
        if let Some(error) = &self.failed {
            return Err(DecodeError::Poisoned(Box::new(error.clone())));
        }
        let result = self.next_frame_unchecked();
        if let Err(error) = &result {
            self.failed = Some(error.clone());
        }
        result
    }

    fn next_frame_unchecked(&mut self) -> Result<Option<RawFrame>, DecodeError> {
        let header = match self.header {
            Some(header) => header,
            None => {
                if self.buffer.len() < FRAME_HEADER_SIZE {
                    return Ok(None);
                }
                let header = check_header(&self.buffer[..FRAME_HEADER_SIZE])?;
                self.buffer.advance(FRAME_HEADER_SIZE);
                self.header = Some(header);
                header
            }
        };
        let frame_size = header.body_size + header.payload_size;
        if self.buffer.len() < frame_size {
            // Room for the next read only, not for the whole frame: a peer that announces a
            // large frame and sends nothing more makes us hold what it sent, not what it
            // announced.
            let missing = frame_size - self.buffer.len();
            self.buffer.reserve(missing.min(limits::READ_RESERVE_MAX));
            return Ok(None);
        }
        self.header = None;
        check_body(&header, &self.buffer[..header.body_size])?;
        let mut frame = self.buffer.split_to(frame_size).freeze();
        let body = frame.split_to(header.body_size);
        Ok(Some(RawFrame { msg_id: header.msg_id, kind: header.kind, body, payload: frame }))
    }
}
