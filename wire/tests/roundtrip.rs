//! Every message survives encode then decode, from one buffer and from a byte stream.

use proptest::prelude::*;
use wire::fuzz::{frame_bytes, round_trip};
use wire::{FrameDecoder, Kind, Message, decode_frame};

/// Deterministic pseudo-random bytes, so that each kind gets many different values.
fn noise(seed: u64, size: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn sample(kind: Kind, seed: u64) -> Message {
    let bytes = noise(seed, 4096);
    let mut u = arbitrary::Unstructured::new(&bytes);
    Message::arbitrary_of(kind, &mut u).expect("enough bytes")
}

#[test]
fn every_kind_round_trips() {
    for &kind in Kind::ALL {
        for seed in 0..64 {
            let message = sample(kind, seed);
            let wire = frame_bytes(seed as u32, &message);
            let (frame, size) = decode_frame(&wire).unwrap().unwrap();
            assert_eq!(size, wire.len());
            assert_eq!(frame.kind, kind);
            assert_eq!(frame.msg_id, seed as u32);
            assert_eq!(frame.message().unwrap(), message, "{kind} seed {seed}");
        }
    }
}

#[test]
fn stream_of_every_kind_fed_one_byte_at_a_time() {
    let messages: Vec<Message> =
        Kind::ALL.iter().enumerate().map(|(i, &k)| sample(k, 1000 + i as u64)).collect();
    let mut stream = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        stream.extend_from_slice(&frame_bytes(i as u32, message));
    }
    let mut decoder = FrameDecoder::with_capacity(0);
    let mut decoded = Vec::new();
    for &byte in &stream {
        decoder.extend_from_slice(&[byte]);
        while let Some(frame) = decoder.next_frame().unwrap() {
            assert_eq!(frame.msg_id as usize, decoded.len());
            decoded.push(frame.message().unwrap());
        }
    }
    assert!(!decoder.is_mid_frame());
    assert_eq!(decoded, messages);
}

#[test]
fn incomplete_frame_is_reported_as_mid_frame() {
    let wire = frame_bytes(7, &sample(Kind::AnswerObject, 3));
    let mut decoder = FrameDecoder::new();
    decoder.extend_from_slice(&wire[..wire.len() - 1]);
    assert!(decoder.next_frame().unwrap().is_none());
    assert!(decoder.is_mid_frame());
    assert!(decode_frame(&wire.slice(..wire.len() - 1)).unwrap().is_none());
}

#[test]
fn answers_pair_with_requests() {
    for &kind in Kind::ALL {
        match kind.role() {
            wire::Role::Request => {
                let answer = kind.answer().expect("a request has an answer");
                assert_eq!(answer as u16, kind as u16 | wire::ANSWER_BIT, "{kind}");
                assert!(answer.is_answer());
            }
            wire::Role::Notification => assert!(kind.answer().is_none() && !kind.is_answer()),
            wire::Role::Answer => assert!(kind.is_answer() && kind.answer().is_none()),
        }
    }
    // Every answer but Error answers exactly one request.
    for &kind in Kind::ALL.iter().filter(|k| k.is_answer() && **k != Kind::Error) {
        let requests = Kind::ALL.iter().filter(|r| r.answer() == Some(kind)).count();
        assert_eq!(requests, 1, "{kind}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_messages_round_trip(data in proptest::collection::vec(any::<u8>(), 0..3000)) {
        round_trip(&data);
    }
}
