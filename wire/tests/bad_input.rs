//! Bad input: every decoder returns a typed error, never panics, and never allocates more
//! than the bytes it was given justify.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use proptest::prelude::*;
use wire::fuzz::{decode_body, decode_stream, frame_bytes, raw_frame_bytes};
use wire::limits::{BODY_SIZE_MAX, FRAME_HEADER_SIZE, PAYLOAD_SIZE_MAX};
use wire::{Bytes, DecodeError, FrameDecoder, Kind, Message, decode_frame};

/// Tracks the largest single allocation of the current thread (tests run in parallel), to
/// prove that lengths from the wire are checked before anything is reserved.
struct LargestAllocation;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn record(size: usize) {
    let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(size)));
}

fn reset_largest() {
    LARGEST.with(|largest| largest.set(0));
}

fn largest() -> usize {
    LARGEST.with(Cell::get)
}

// SAFETY: forwards every call to the system allocator unchanged; only records sizes.
unsafe impl GlobalAlloc for LargestAllocation {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: LargestAllocation = LargestAllocation;

fn frame(kind: Kind, body: &[u8]) -> Bytes {
    Bytes::from(raw_frame_bytes(1, kind as u16, 0, body, &[]))
}

fn root_error(kind: Kind, body: &[u8]) -> DecodeError {
    let (frame, _) = decode_frame(&frame(kind, body)).unwrap().unwrap();
    frame.message().unwrap_err().root().clone()
}

#[test]
fn huge_list_count_is_refused_before_allocation() {
    // AnswerTids: a u32 count of 2 million tids, with 8 bytes behind it.
    let mut body = ((1u32 << 21) - 1).to_le_bytes().to_vec();
    body.extend_from_slice(&[0; 8]);
    reset_largest();
    let error = root_error(Kind::AnswerTids, &body);
    assert!(
        matches!(error, DecodeError::Truncated { needed: 16_777_208, available: 8 }),
        "{error}"
    );
    assert!(largest() < 4096, "allocated {}", largest());

    let body = u32::MAX.to_le_bytes();
    assert!(matches!(root_error(Kind::AnswerTids, &body), DecodeError::ListTooLong { .. }));
}

#[test]
fn nested_lists_cannot_multiply_allocations() {
    // AnswerPartitionTable rows: a list of lists, each inner count claiming a million cells.
    let mut body = vec![0u8]; // ptid: none
    body.extend_from_slice(&1u32.to_le_bytes()); // num_replicas
    body.extend_from_slice(&1000u32.to_le_bytes()); // 1000 rows
    for _ in 0..1000 {
        body.extend_from_slice(&1_000_000u32.to_le_bytes());
    }
    reset_largest();
    let error = root_error(Kind::AnswerPartitionTable, &body);
    assert!(matches!(error, DecodeError::Truncated { .. }), "{error}");
    assert!(largest() < 64 * 1024, "allocated {}", largest());
}

#[test]
fn oversized_header_is_refused_before_the_body_arrives() {
    let mut header = raw_frame_bytes(1, Kind::AnswerTids as u16, 0, &[], &[]);
    // Rewrite body_size to more than the limit, with a correct header checksum.
    header[8..12].copy_from_slice(&(BODY_SIZE_MAX as u32 + 1).to_le_bytes());
    let crc = crc32fast::hash(&header[..20]);
    header[20..24].copy_from_slice(&crc.to_le_bytes());
    let mut decoder = FrameDecoder::with_capacity(0);
    decoder.extend_from_slice(&header[..FRAME_HEADER_SIZE]);
    reset_largest();
    let error = decoder.next_frame().unwrap_err();
    assert!(matches!(error, DecodeError::TooLarge { what: "frame body", .. }), "{error}");
    assert!(largest() < 4096, "allocated {}", largest());
    // The decoder stays failed.
    assert!(matches!(decoder.next_frame(), Err(DecodeError::Poisoned(_))));

    let mut payload = raw_frame_bytes(1, Kind::AnswerObject as u16, 0, &[], &[]);
    payload[12..16].copy_from_slice(&(PAYLOAD_SIZE_MAX as u32 + 1).to_le_bytes());
    let crc = crc32fast::hash(&payload[..20]);
    payload[20..24].copy_from_slice(&crc.to_le_bytes());
    assert!(matches!(
        decode_frame(&Bytes::from(payload)),
        Err(DecodeError::TooLarge { what: "payload", .. })
    ));
}

#[test]
fn announced_size_is_not_reserved_up_front() {
    // A header announcing 64 MiB of payload, and nothing after it.
    let mut header = raw_frame_bytes(1, Kind::AnswerObject as u16, 0, &[], &[]);
    header[12..16].copy_from_slice(&(PAYLOAD_SIZE_MAX as u32).to_le_bytes());
    let crc = crc32fast::hash(&header[..20]);
    header[20..24].copy_from_slice(&crc.to_le_bytes());
    let mut decoder = FrameDecoder::with_capacity(0);
    decoder.extend_from_slice(&header);
    reset_largest();
    assert!(decoder.next_frame().unwrap().is_none());
    assert!(decoder.is_mid_frame());
    assert!(largest() <= wire::limits::READ_RESERVE_MAX + 4096, "allocated {}", largest());
}

#[test]
fn each_bad_field_gives_its_own_error() {
    let unknown = raw_frame_bytes(1, 0x7777, 0, &[], &[]);
    assert_eq!(decode_frame(&Bytes::from(unknown)).unwrap_err(), DecodeError::UnknownKind(0x7777));

    let flags = raw_frame_bytes(1, Kind::Ping as u16, 4, &[], &[]);
    assert!(matches!(
        decode_frame(&Bytes::from(flags)),
        Err(DecodeError::ReservedBits { value: 4, .. })
    ));

    let payload = raw_frame_bytes(1, Kind::Ping as u16, 0, &[], b"data");
    assert!(matches!(
        decode_frame(&Bytes::from(payload)),
        Err(DecodeError::UnexpectedPayload { size: 4 })
    ));

    assert!(matches!(root_error(Kind::Ping, &[0]), DecodeError::TrailingBytes { extra: 1 }));
    assert!(matches!(
        root_error(Kind::AskBeginTransaction, &[2]),
        DecodeError::BadValue { what: "option tag", .. }
    ));
    assert!(matches!(
        root_error(Kind::AnswerClusterState, &[9]),
        DecodeError::BadValue { what: "ClusterState", .. }
    ));
    assert!(matches!(
        root_error(Kind::StartOperation, &[2]),
        DecodeError::BadValue { what: "bool", .. }
    ));
    assert!(matches!(
        root_error(Kind::AnswerPrimary, &[0, 0, 0, 0]),
        DecodeError::BadValue { what: "node id", .. }
    ));
    assert!(matches!(
        root_error(Kind::AnswerPrimary, &[1, 0]),
        DecodeError::Truncated { needed: 4, available: 2 }
    ));
    let mut text = 2u32.to_le_bytes().to_vec();
    text.extend_from_slice(&[0xC3, 0x28]);
    let mut error_body = vec![1u8];
    error_body.extend_from_slice(&text);
    assert_eq!(root_error(Kind::Error, &error_body), DecodeError::InvalidUtf8);

    // Errors name the message and field.
    let (frame, _) = decode_frame(&frame(Kind::AskBeginTransaction, &[2])).unwrap().unwrap();
    let text = frame.message().unwrap_err().to_string();
    assert_eq!(text, "AskBeginTransaction.tid: invalid option tag: 0x2");
}

#[test]
fn corrupted_frames_are_caught_by_checksums() {
    let message =
        Message::from(wire::AskObject { oid: wire::Oid(42), at: None, before: Some(wire::Tid(7)) });
    let wire = frame_bytes(5, &message);
    for position in 0..wire.len() {
        let mut bad = wire.to_vec();
        bad[position] ^= 0x20;
        let error = decode_frame(&Bytes::from(bad)).unwrap_err();
        let expected = if position < FRAME_HEADER_SIZE {
            matches!(error, DecodeError::BadHeaderChecksum { .. })
        } else {
            matches!(error, DecodeError::BadBodyChecksum { .. })
        };
        assert!(expected, "byte {position}: {error}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    #[test]
    fn random_streams_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        decode_stream(&data);
    }

    #[test]
    fn random_bodies_never_panic(data in proptest::collection::vec(any::<u8>(), 0..400)) {
        decode_body(&data);
    }

    #[test]
    fn mutated_valid_bodies_never_panic(seed in any::<u64>(), flips in proptest::collection::vec((any::<u16>(), any::<u8>()), 1..6)) {
        let bytes: Vec<u8> = (0..2048u64).map(|i| (seed.wrapping_mul(i + 1) >> 13) as u8).collect();
        let mut u = arbitrary::Unstructured::new(&bytes);
        let message = Message::arbitrary(&mut u).unwrap();
        let wire = frame_bytes(1, &message);
        let (frame, _) = decode_frame(&wire).unwrap().unwrap();
        let mut body = frame.body.to_vec();
        for (position, value) in flips {
            if !body.is_empty() {
                let index = usize::from(position) % body.len();
                body[index] ^= value;
            }
        }
        // Checksums made right, so the field decoders see the damage.
        let mutated = raw_frame_bytes(1, frame.kind as u16, 0, &body, &frame.payload);
        if let Ok(Some((frame, _))) = decode_frame(&Bytes::from(mutated)) {
            let _ = frame.message();
        }
    }
}
