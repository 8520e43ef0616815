//! The checks that the fuzz targets (`fuzz/`) and the property tests share: each takes
//! arbitrary bytes, must never panic, and asserts what must hold for every input.

use arbitrary::Unstructured;
use bytes::{Bytes, BytesMut};

use crate::frame::{FrameDecoder, decode_frame, encode_frame};
use crate::handshake::Hello;
use crate::messages::{Body, Kind, Message};

/// Feeds bytes to a streaming decoder in chunks whose sizes come from the input, and
/// decodes every frame that comes out. Anything may fail; nothing may panic.
pub fn decode_stream(data: &[u8]) {
    let _ = Hello::decode(data);
    let mut decoder = FrameDecoder::with_capacity(0);
    let mut rest = data;
    while !rest.is_empty() {
        let chunk = usize::from(rest[0]).max(1).min(rest.len());
        decoder.extend_from_slice(&rest[..chunk]);
        rest = &rest[chunk..];
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    let _ = frame.message();
                }
                Ok(None) => break,
                Err(_) => {
                    // A failed decoder stays failed.
                    assert!(decoder.next_frame().is_err());
                    return;
                }
            }
        }
    }
}

/// Decodes a body of a kind chosen by the input, bypassing the frame checksums, so that
/// every field decoder sees arbitrary bytes. A body that decodes must encode back to itself.
pub fn decode_body(data: &[u8]) {
    if data.len() < 4 {
        return;
    }
    let kind = Kind::ALL[usize::from(u16::from_le_bytes([data[0], data[1]])) % Kind::ALL.len()];
    let split = usize::from(data[2]).min(data.len() - 3);
    let body = Bytes::copy_from_slice(&data[3..data.len() - split]);
    let payload = Bytes::copy_from_slice(&data[data.len() - split..]);
    if let Ok(message) = Message::decode(kind, &body, payload.clone()) {
        let mut out = BytesMut::new();
        message.encode_body(&mut out).expect("a decoded message encodes");
        assert_eq!(&out[..], &body[..], "re-encoding {kind} changed its body");
        assert_eq!(message.payload().cloned().unwrap_or_default(), payload);
    }
}

/// Builds a message from the input, frames it, and checks that it decodes to itself, both
/// from one buffer and through the streaming decoder fed in small pieces.
pub fn round_trip(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(message) = Message::arbitrary(&mut u) else { return };
    let msg_id = u32::from_le_bytes([data.first().copied().unwrap_or(0), 1, 2, 3]);
    let wire = frame_bytes(msg_id, &message);
    let (frame, size) = decode_frame(&wire).expect("valid frame").expect("complete frame");
    assert_eq!(size, wire.len());
    assert_eq!(frame.msg_id, msg_id);
    assert_eq!(frame.message().expect("valid body"), message);
    let mut decoder = FrameDecoder::with_capacity(0);
    let step = 1 + usize::from(data.last().copied().unwrap_or(0) % 7);
    let mut decoded = None;
    for chunk in wire.chunks(step) {
        assert!(decoded.is_none(), "frame complete before its last byte");
        decoder.extend_from_slice(chunk);
        decoded = decoder.next_frame().expect("valid stream");
    }
    assert_eq!(decoded.expect("frame after last byte").message().expect("valid body"), message);
}

/// A whole frame as it goes on the wire: header and body, then the payload.
pub fn frame_bytes<M: Body + ?Sized>(msg_id: u32, message: &M) -> Bytes {
    let mut out = BytesMut::new();
    let payload = encode_frame(&mut out, msg_id, message).expect("encodable").cloned();
    if let Some(payload) = payload {
        out.extend_from_slice(&payload);
    }
    out.freeze()
}

/// A frame with any kind code, flags, body and payload, and correct checksums: lets tests
/// reach the checks that come after the checksums.
pub fn raw_frame_bytes(msg_id: u32, kind: u16, flags: u16, body: &[u8], payload: &[u8]) -> Vec<u8> {
    use zerocopy::IntoBytes;
    use zerocopy::little_endian::{U16, U32};

    use crate::frame::FrameHeader;
    let mut header = FrameHeader {
        msg_id: U32::new(msg_id),
        kind: U16::new(kind),
        flags: U16::new(flags),
        body_size: U32::new(body.len() as u32),
        payload_size: U32::new(payload.len() as u32),
        body_crc: U32::new(crc32fast::hash(body)),
        header_crc: U32::new(0),
    };
    header.header_crc = U32::new(crc32fast::hash(&header.as_bytes()[..20]));
    let mut out = header.as_bytes().to_vec();
    out.extend_from_slice(body);
    out.extend_from_slice(payload);
    out
}
