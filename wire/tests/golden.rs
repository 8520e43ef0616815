//! Golden bytes: the exact encoding of a few messages, so the format cannot drift unnoticed.
//! A change here is a protocol change: bump `PROTOCOL_VERSION` and update docs/protocol.md.

use wire::fuzz::frame_bytes;
use wire::*;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
}

fn check(message: impl Into<Message>, msg_id: u32, expected: &str) {
    let message = message.into();
    let wire = frame_bytes(msg_id, &message);
    assert_eq!(hex(&wire), expected, "encoding of {message:?}");
    let (frame, _) = decode_frame(&wire).unwrap().unwrap();
    assert_eq!(frame.message().unwrap(), message);
}

#[test]
fn hello() {
    let hello = Hello::new(NodeType::Client, "neo");
    assert_eq!(hex(&hello.encode()), "4e 45 4f 72 01 00 02 00 13 dc 8f 78 68 48 e4 11");
}

#[test]
fn ping() {
    check(Ping {}, 1, "01 00 00 00 02 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 a8 85 12 ed");
}

#[test]
fn ask_object() {
    check(
        AskObject { oid: Oid(0x2a), at: None, before: Some(Tid(0x040D_43A6_8000_0000)) },
        2,
        "02 00 00 00 20 00 00 00 12 00 00 00 00 00 00 00 37 d9 5a 26 9b 1b fa 4f 2a 00 00 00 00 00 00 00 00 01 00 00 00 80 a6 43 0d 04",
    );
}

#[test]
fn answer_object_with_payload() {
    let data = Bytes::from_static(b"data");
    check(
        AnswerObject {
            oid: Oid(0x2a),
            serial: Tid(0x0102_0304_0506_0708),
            next_serial: None,
            compression: Compression::None,
            data_crc: crc32fast::hash(&data),
            data_serial: None,
            data: Payload(data),
        },
        2,
        "02 00 00 00 20 80 00 00 17 00 00 00 04 00 00 00 f9 2d b0 50 9c 1f 3c 24 2a 00 00 00 00 00 00 00 08 07 06 05 04 03 02 01 00 00 63 f3 f3 ad 00 64 61 74 61",
    );
}

#[test]
fn error() {
    check(
        Error { code: ErrorCode::OidDoesNotExist, message: Text::from("no") },
        3,
        "03 00 00 00 00 80 00 00 07 00 00 00 00 00 00 00 32 6b ef a4 4a 53 9e 8c 05 02 00 00 00 6e 6f",
    );
}

#[test]
fn notify_partition_changes() {
    check(
        NotifyPartitionChanges {
            ptid: Ptid(9),
            num_replicas: 1,
            changes: vec![CellChange {
                partition: PartitionId(3),
                nid: NodeId::new(NodeType::Storage, 2),
                state: CellState::OutOfDate,
            }],
        },
        0xFFFF_FFFF,
        "ff ff ff ff 0b 00 00 00 19 00 00 00 00 00 00 00 55 70 32 79 06 09 1e 58 09 00 00 00 00 00 00 00 01 00 00 00 01 00 00 00 03 00 00 00 02 00 00 00 00",
    );
}
