//! The wire benchmark: frames per second to decode and encode the two hottest frames (a load
//! answer and a store request, each with 4 KiB of object data), heap allocations per frame,
//! and, measured in the same run, the rate of plain memcpy of the same bytes.
//!
//! Estimate first: decoding touches the 24-byte header and a ~50-byte body (two crc32 runs
//! over ~70 bytes, a dozen field reads) and slices the payload (two atomic increments); it
//! never reads the 4 KiB of data. That is tens of nanoseconds, so well over 5 M frames/s,
//! whereas copying 4 KiB costs ~100-200 ns even from cache. Encoding writes ~70 bytes.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use wire::{
    AnswerObject, AskStoreObject, Compression, FrameDecoder, Message, Oid, Payload, Tid,
    decode_frame, encode_frame,
};

use crate::alloc::allocations;
use crate::report::{format_ns, format_rate, histogram_ns, percentiles};

/// Operations timed together; one histogram sample is the mean of a batch (a single
/// decode is shorter than the clock's resolution).
const BATCH_OPS: u64 = 1_000;
const DATA_SIZE: usize = 4096;
/// The target this benchmark checks (issue: wire crate).
const TARGET_FRAMES_PER_SECOND: f64 = 5e6;

#[derive(Debug, Clone, Copy)]
pub struct WireOptions {
    pub seconds_per_case: f64,
    pub repeats: usize,
    pub warmup: Duration,
}

/// One measured case: per-batch latency, throughput per repeat, allocations per op.
#[derive(Debug)]
pub struct CaseResult {
    pub name: &'static str,
    pub histogram: Histogram<u64>,
    /// Operations per second of each repeat.
    pub rates: Vec<f64>,
    pub allocations_per_op: f64,
}

impl CaseResult {
    pub fn median_rate(&self) -> f64 {
        let mut rates = self.rates.clone();
        rates.sort_by(f64::total_cmp);
        rates[rates.len() / 2]
    }

    pub fn spread(&self) -> (f64, f64) {
        let min = self.rates.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self.rates.iter().copied().fold(0.0, f64::max);
        (min, max)
    }
}

fn measure(name: &'static str, options: &WireOptions, mut op: impl FnMut()) -> CaseResult {
    let warmup_end = Instant::now() + options.warmup;
    while Instant::now() < warmup_end {
        for _ in 0..BATCH_OPS {
            op();
        }
    }
    let mut histogram = histogram_ns();
    let mut rates = Vec::with_capacity(options.repeats);
    let mut ops_total = 0u64;
    let allocations_before = allocations();
    for _ in 0..options.repeats {
        let start = Instant::now();
        let end = start + Duration::from_secs_f64(options.seconds_per_case);
        let mut ops = 0u64;
        loop {
            let batch_start = Instant::now();
            for _ in 0..BATCH_OPS {
                op();
            }
            let batch_end = Instant::now();
            let per_op_ns = (batch_end - batch_start).as_nanos() as u64 / BATCH_OPS;
            histogram.record(per_op_ns.max(1)).expect("in histogram bounds");
            ops += BATCH_OPS;
            if batch_end >= end {
                rates.push(ops as f64 / (batch_end - start).as_secs_f64());
                break;
            }
        }
        ops_total += ops;
    }
    let allocations_per_op = (allocations() - allocations_before) as f64 / ops_total as f64;
    CaseResult { name, histogram, rates, allocations_per_op }
}

fn data() -> Bytes {
    Bytes::from((0..DATA_SIZE).map(|i| (i * 7) as u8).collect::<Vec<u8>>())
}

fn load_answer() -> AnswerObject {
    let data = data();
    AnswerObject {
        oid: Oid(0x1234),
        serial: Tid(0x040D_43A6_8000_0000),
        next_serial: None,
        compression: Compression::None,
        data_crc: crc32fast::hash(&data),
        data_serial: None,
        data: Payload(data),
    }
}

fn store_request() -> AskStoreObject {
    let data = data();
    AskStoreObject {
        oid: Oid(0x1234),
        serial: Tid(0x040D_43A6_8000_0000),
        compression: Compression::None,
        data_crc: crc32fast::hash(&data),
        data_serial: None,
        ttid: Tid(0x040D_43A6_9000_0000),
        data: Payload(data),
    }
}

/// Header, body and payload in one buffer, as they arrive from a socket.
fn wire_frame(message: &Message) -> Bytes {
    let mut out = BytesMut::new();
    let payload = encode_frame(&mut out, 7, message).expect("encodable").cloned();
    out.extend_from_slice(&payload.unwrap_or_default());
    let frame = out.freeze();
    // The first clone of a Vec-backed `Bytes` moves its refcount to the heap; do it now so
    // the measured loop sees the steady state of a receive buffer.
    drop(frame.clone());
    frame
}

fn decode_case(
    name: &'static str,
    options: &WireOptions,
    frame: &Bytes,
    check_data: bool,
) -> CaseResult {
    measure(name, options, || {
        let (raw, size) = decode_frame(black_box(frame)).expect("valid").expect("complete");
        let message = raw.into_message().expect("valid body");
        let data_len = match &message {
            Message::AnswerObject(m) => {
                if check_data {
                    assert_eq!(crc32fast::hash(&m.data.0), m.data_crc);
                }
                m.data.0.len()
            }
            Message::AskStoreObject(m) => {
                if check_data {
                    assert_eq!(crc32fast::hash(&m.data.0), m.data_crc);
                }
                m.data.0.len()
            }
            _ => unreachable!(),
        };
        black_box((size, data_len));
    })
}

fn encode_case(name: &'static str, options: &WireOptions, message: &Message) -> CaseResult {
    let mut out = BytesMut::with_capacity(4096);
    measure(name, options, || {
        out.clear();
        let payload = encode_frame(&mut out, 7, black_box(message)).expect("encodable");
        black_box((out.len(), payload.map(Bytes::len)));
    })
}

fn memcpy_case(options: &WireOptions, size: usize) -> CaseResult {
    let source = vec![0x5Au8; size];
    let mut target = vec![0u8; size];
    measure("memcpy of the same frame bytes", options, || {
        target.copy_from_slice(black_box(&source));
        black_box(&mut target);
    })
}

/// Frames arriving in 64 KiB reads, as from a socket: copy into the decoder, take frames.
fn stream_case(options: &WireOptions, frame: &Bytes) -> CaseResult {
    let frames_per_read = (64 << 10) / frame.len();
    let mut read = Vec::with_capacity(frames_per_read * frame.len());
    for _ in 0..frames_per_read {
        read.extend_from_slice(frame);
    }
    let mut decoder = FrameDecoder::with_capacity(256 << 10);
    let mut pending = 0usize;
    measure("stream decode (64 KiB reads, copy in)", options, || {
        if pending == 0 {
            decoder.extend_from_slice(black_box(&read));
            pending = frames_per_read;
        }
        let frame = decoder.next_frame().expect("valid").expect("complete");
        black_box(frame.into_message().expect("valid body"));
        pending -= 1;
    })
}

pub fn run(options: &WireOptions) -> Vec<CaseResult> {
    let load = Message::from(load_answer());
    let store = Message::from(store_request());
    let load_frame = wire_frame(&load);
    let store_frame = wire_frame(&store);
    vec![
        memcpy_case(options, load_frame.len()),
        decode_case("decode load answer (4 KiB)", options, &load_frame, false),
        decode_case("decode store request (4 KiB)", options, &store_frame, false),
        decode_case("decode load answer + data crc", options, &load_frame, true),
        encode_case("encode load answer (4 KiB)", options, &load),
        encode_case("encode store request (4 KiB)", options, &store),
        stream_case(options, &load_frame),
    ]
}

pub fn print(results: &[CaseResult], frame_size: usize) {
    println!(
        "wire: frames of {frame_size} bytes (24 header + body + {DATA_SIZE} data), one core, batches of {BATCH_OPS}"
    );
    println!(
        "      latency = mean per frame within a batch; rate = median of repeats [min .. max]"
    );
    let baseline = results[0].median_rate();
    for result in results {
        let (min, max) = result.spread();
        let rate = result.median_rate();
        println!(
            "  {:<38} {:>10} [{} .. {}]  x{:<6.1} vs memcpy  allocs/frame {:.3}",
            result.name,
            format_rate(rate),
            format_rate(min),
            format_rate(max),
            rate / baseline,
            result.allocations_per_op
        );
        println!("  {:<38} {}", "", percentiles(&result.histogram));
    }
    let memcpy_gbps = baseline * frame_size as f64 / 1e9;
    println!(
        "  memcpy moves {memcpy_gbps:.1} GB/s; one memcpy of a frame takes {}",
        format_ns(1e9 / baseline)
    );
    for result in &results[1..3] {
        let verdict =
            if result.median_rate() >= TARGET_FRAMES_PER_SECOND { "meets" } else { "MISSES" };
        let allocs = if result.allocations_per_op == 0.0 { "no allocation" } else { "ALLOCATES" };
        println!("  {}: {verdict} the 5 M frames/s target, {allocs} per frame", result.name);
    }
}

pub fn frame_size() -> usize {
    wire_frame(&Message::from(load_answer())).len()
}
