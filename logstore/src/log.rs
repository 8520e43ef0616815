//! The segmented append-only log: appending records, group commit, and the recovery scan.
//!
//! Appends go to an in-memory batch. `take_flush` hands everything appended so far to one
//! flush (writes in segment order, each segment fdatasync'ed before the next is written);
//! `finish_flush` marks it durable. Everything appended while a flush is in flight waits for
//! the next one: one fdatasync serves every record appended meanwhile (group commit).
//! `flush` runs a batch with the log's own disk, synchronously; a runtime (glommio) can
//! instead run the batch's writes itself and report back.

use bytes::{Bytes, BytesMut};
use wire::codec::Field;
use zerocopy::little_endian::U32;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::disk::Disk;
use crate::error::{Result, StoreError};
use crate::limits::{RECORD_HEADER_SIZE, SEGMENT_HEADER_SIZE, SEGMENTS_MAX, TORN_TAIL_ZERO_MIN};
use crate::record::{
    LogPosition, RawRecord, RecordDefect, RecordKind, SegmentEndBody, check_record, encode_record,
};

/// Magic at the start of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"NEOrLOG\0";
/// Version of the log format (docs/logstore-format.md).
pub const FORMAT_VERSION: u32 = 1;

/// The header of a segment file.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct SegmentHeader {
    pub magic: [u8; 8],
    pub format_version: U32,
    pub segment_size: U32,
    pub segment_id: U32,
    pub reserved: [u8; 40],
    /// crc32 of bytes 0..60.
    pub crc: U32,
}

const _: () = assert!(size_of::<SegmentHeader>() == SEGMENT_HEADER_SIZE);

/// Bytes a `SegmentEnd` record takes: every segment keeps room for one.
const SEGMENT_END_SIZE: usize = RECORD_HEADER_SIZE + 4;

fn segment_header(id: u32, segment_size: u32) -> [u8; SEGMENT_HEADER_SIZE] {
    let mut header = SegmentHeader {
        magic: SEGMENT_MAGIC,
        format_version: U32::new(FORMAT_VERSION),
        segment_size: U32::new(segment_size),
        segment_id: U32::new(id),
        reserved: [0; 40],
        crc: U32::new(0),
    };
    header.crc = U32::new(crc32fast::hash(&header.as_bytes()[..60]));
    let mut bytes = [0u8; SEGMENT_HEADER_SIZE];
    bytes.copy_from_slice(header.as_bytes());
    bytes
}

fn check_segment_header(bytes: &[u8], id: u32) -> std::result::Result<u32, String> {
    let Ok((header, _)) = SegmentHeader::ref_from_prefix(bytes) else {
        return Err("segment shorter than its header".to_owned());
    };
    if header.magic != SEGMENT_MAGIC {
        return Err(format!("bad magic {:02x?}", header.magic));
    }
    if crc32fast::hash(&bytes[..60]) != header.crc.get() {
        return Err("segment header checksum mismatch".to_owned());
    }
    if header.format_version.get() != FORMAT_VERSION {
        return Err(format!(
            "log format version {} (this build reads version {FORMAT_VERSION})",
            header.format_version.get()
        ));
    }
    if header.segment_id.get() != id {
        return Err(format!("header names segment {}", header.segment_id.get()));
    }
    Ok(header.segment_size.get())
}

/// Bytes appended to one segment and not yet handed to a flush.
#[derive(Debug)]
struct PendingWrite {
    segment: u32,
    offset: u32,
    bytes: BytesMut,
}

/// One write of a flush.
#[derive(Debug, Clone)]
pub struct BatchWrite {
    pub segment: u32,
    pub offset: u32,
    pub bytes: Bytes,
}

/// What one flush must do: each write, then fdatasync of its segment, in order.
#[derive(Debug)]
pub struct FlushBatch {
    pub writes: Vec<BatchWrite>,
    /// Everything before this position is durable once the batch is done.
    pub end: LogPosition,
}

/// What recovery found at the end of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    pub segment: u32,
    pub offset: u32,
    pub reason: String,
    /// Bytes after the tail that were zeroed so that no stale record can be mistaken for a
    /// new one.
    pub zeroed_bytes: usize,
}

#[derive(Debug, Default, Clone)]
pub struct RecoveryReport {
    pub segments: usize,
    pub records: u64,
    /// Where the valid log ended early, if it did: an incomplete last write (never
    /// acknowledged), cut off and reported.
    pub torn_tail: Option<TornTail>,
    /// Segments after the end of the log that held no record and were removed.
    pub removed_segments: Vec<u32>,
    /// The index file the replay started from, if any.
    pub index: Option<std::path::PathBuf>,
    /// Index files that failed their checks and were not used (the log was replayed
    /// further back instead).
    pub skipped_indexes: Vec<String>,
}

#[derive(Debug)]
pub struct Log<D: Disk> {
    disk: D,
    segment_size: u32,
    /// Where the next record goes.
    tail: LogPosition,
    /// Everything before this is durable.
    durable: LogPosition,
    pending: Vec<PendingWrite>,
    in_flight: Option<LogPosition>,
    /// The writes of the flush in flight, kept so that reads of them are served from memory
    /// until they are known to be on disk.
    in_flight_writes: Vec<BatchWrite>,
    poisoned: Option<String>,
}

impl<D: Disk> Log<D> {
    /// Opens the log on `disk`, replaying every record from `start` (a checkpoint's
    /// position; the beginning if none) through `apply`, in log order.
    pub fn open(
        mut disk: D,
        segment_size: u32,
        start: Option<LogPosition>,
        mut apply: impl FnMut(&RawRecord) -> Result<()>,
    ) -> Result<(Log<D>, RecoveryReport)> {
        let segments = disk.list_segments()?;
        let mut report = RecoveryReport::default();
        if let Some(start) = start.filter(|start| !segments.contains(&start.segment())) {
            return Err(StoreError::Corrupt {
                segment: start.segment(),
                offset: u64::from(start.offset()),
                reason: "the checkpoint's replay position is in a missing segment".to_owned(),
            });
        }
        if segments.is_empty() {
            let log = Log::create(disk, segment_size)?;
            report.segments = 1;
            return Ok((log, report));
        }
        if segments.len() > SEGMENTS_MAX as usize {
            return Err(StoreError::Invalid(format!(
                "{} segments, more than {SEGMENTS_MAX}",
                segments.len()
            )));
        }
        // Compaction deletes segments before the index file's position: from there on the
        // segments must follow each other.
        let first_scanned = start.map_or(segments[0], LogPosition::segment);
        if start.is_none() && first_scanned != 0 {
            return Err(StoreError::Corrupt {
                segment: first_scanned,
                offset: 0,
                reason: "the log starts here because compaction removed the earlier segments, \
                         and no usable index file says where to replay from: restore this \
                         storage from a replica"
                    .to_owned(),
            });
        }
        for pair in segments.windows(2).filter(|pair| pair[0] >= first_scanned) {
            if pair[1] != pair[0] + 1 {
                return Err(StoreError::Corrupt {
                    segment: pair[1],
                    offset: 0,
                    reason: format!("segment {} is missing", pair[0] + 1),
                });
            }
        }
        let mut end = None;
        let mut last_size = segment_size;
        for (index, &id) in segments.iter().enumerate() {
            if start.is_some_and(|start| id < start.segment()) {
                // Covered by the checkpoint.
                continue;
            }
            let size = disk.segment_size(id)?;
            let bytes = disk.read(id, 0, size as usize)?;
            let later = &segments[index + 1..];
            let declared = match check_segment_header(&bytes, id) {
                Ok(declared) if u64::from(declared) == size => declared,
                Ok(declared) => {
                    return Err(StoreError::Corrupt {
                        segment: id,
                        offset: 0,
                        reason: format!("file has {size} bytes, header says {declared}"),
                    });
                }
                Err(_)
                    if later.is_empty()
                        && last_nonzero(&bytes[SEGMENT_HEADER_SIZE.min(bytes.len())..])
                            .is_none() =>
                {
                    // Created, but the header never made durable and nothing written after
                    // it: a crash while the segment was being created.
                    report.removed_segments.push(id);
                    disk.remove_segment(id)?;
                    break;
                }
                Err(reason) => return Err(StoreError::Corrupt { segment: id, offset: 0, reason }),
            };
            report.segments += 1;
            last_size = declared;
            let from = match start {
                Some(start) if start.segment() == id => start.offset(),
                _ => SEGMENT_HEADER_SIZE as u32,
            };
            match scan_segment(&mut disk, id, from, &bytes, later, &mut apply, &mut report)? {
                SegmentScan::Continues => continue,
                SegmentScan::Ends(position) => {
                    end = Some(position);
                    for &later_id in later {
                        disk.remove_segment(later_id)?;
                        report.removed_segments.push(later_id);
                    }
                    break;
                }
            }
        }
        if report.segments == 0 && start.is_none() {
            // The only segment was a crashed creation: start afresh.
            let log = Log::create(disk, segment_size)?;
            report.segments = 1;
            return Ok((log, report));
        }
        let tail = match end {
            Some(tail) => tail,
            None => {
                // The last segment ended with SegmentEnd but its successor was removed or
                // never created: start it now.
                let last = *segments.last().expect("not empty");
                let next = report.removed_segments.first().copied().unwrap_or(last + 1);
                Log::start_segment(&mut disk, next, last_size)?;
                LogPosition::new(next, SEGMENT_HEADER_SIZE as u32)
            }
        };
        Ok((Log::at(disk, last_size, tail), report))
    }

    fn create(mut disk: D, segment_size: u32) -> Result<Log<D>> {
        Log::start_segment(&mut disk, 0, segment_size)?;
        Ok(Log::at(disk, segment_size, LogPosition::new(0, SEGMENT_HEADER_SIZE as u32)))
    }

    /// A log whose records end, durable, at `tail`.
    fn at(disk: D, segment_size: u32, tail: LogPosition) -> Log<D> {
        Log {
            disk,
            segment_size,
            tail,
            durable: tail,
            pending: Vec::new(),
            in_flight: None,
            in_flight_writes: Vec::new(),
            poisoned: None,
        }
    }

    /// Creates a segment and makes its header durable, before any record goes into it.
    fn start_segment(disk: &mut D, id: u32, segment_size: u32) -> Result<()> {
        if id >= SEGMENTS_MAX {
            return Err(StoreError::Invalid(format!(
                "segment id {id} reaches the limit of {SEGMENTS_MAX}"
            )));
        }
        disk.create_segment(id, segment_size)?;
        disk.write(id, 0, &segment_header(id, segment_size))?;
        disk.sync(id)
    }

    pub fn disk_mut(&mut self) -> &mut D {
        &mut self.disk
    }

    pub fn disk(&self) -> &D {
        &self.disk
    }

    pub fn tail(&self) -> LogPosition {
        self.tail
    }

    pub fn durable(&self) -> LogPosition {
        self.durable
    }

    pub fn segment_size(&self) -> u32 {
        self.segment_size
    }

    /// The largest record a segment holds.
    pub fn record_size_max(&self) -> usize {
        self.segment_size as usize - SEGMENT_HEADER_SIZE - SEGMENT_END_SIZE
    }

    pub fn check_writable(&self) -> Result<()> {
        match &self.poisoned {
            Some(reason) => Err(StoreError::Poisoned(reason.clone())),
            None => Ok(()),
        }
    }

    /// Appends a record to the current batch and returns it. Nothing is on disk until a
    /// flush; the record is durable once `durable() > record.position`.
    ///
    /// When the record does not fit in the current segment, the next segment is created
    /// first: if that fails (a full disk), nothing is appended and the log stays usable.
    pub fn append(&mut self, kind: RecordKind, body: &impl Field) -> Result<RawRecord> {
        self.check_writable()?;
        let mut encoded = BytesMut::new();
        encode_record(&mut encoded, self.tail, self.durable, kind, body)
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        if encoded.len() > self.record_size_max() {
            return Err(StoreError::RecordTooLarge {
                size: encoded.len(),
                max: self.record_size_max(),
            });
        }
        if self.tail.offset() as usize + encoded.len() + SEGMENT_END_SIZE
            > self.segment_size as usize
        {
            self.roll_over()?;
            encoded.clear();
            encode_record(&mut encoded, self.tail, self.durable, kind, body)
                .map_err(|e| StoreError::Invalid(e.to_string()))?;
        }
        let position = self.tail;
        let durable_before = self.durable;
        self.push_pending(&encoded);
        let encoded = encoded.freeze();
        Ok(RawRecord { position, durable_before, kind, body: encoded.slice(RECORD_HEADER_SIZE..) })
    }

    fn push_pending(&mut self, encoded: &[u8]) {
        let tail = self.tail;
        match self.pending.last_mut() {
            Some(write) if write.segment == tail.segment() => {
                write.bytes.extend_from_slice(encoded)
            }
            _ => self.pending.push(PendingWrite {
                segment: tail.segment(),
                offset: tail.offset(),
                bytes: BytesMut::from(encoded),
            }),
        }
        self.tail = tail.advance(encoded.len());
    }

    fn roll_over(&mut self) -> Result<()> {
        let next = self.tail.segment() + 1;
        Log::start_segment(&mut self.disk, next, self.segment_size)?;
        let mut end = BytesMut::new();
        encode_record(
            &mut end,
            self.tail,
            self.durable,
            RecordKind::SegmentEnd,
            &SegmentEndBody { next_segment: next },
        )
        .expect("segment end encodes");
        debug_assert_eq!(end.len(), SEGMENT_END_SIZE);
        self.push_pending(&end);
        self.tail = LogPosition::new(next, SEGMENT_HEADER_SIZE as u32);
        Ok(())
    }

    /// Hands every pending record to one flush, unless a flush is in flight or nothing is
    /// pending.
    pub fn take_flush(&mut self) -> Option<FlushBatch> {
        if self.in_flight.is_some() || self.pending.is_empty() || self.poisoned.is_some() {
            return None;
        }
        let writes: Vec<BatchWrite> = self
            .pending
            .drain(..)
            .map(|w| BatchWrite { segment: w.segment, offset: w.offset, bytes: w.bytes.freeze() })
            .collect();
        self.in_flight = Some(self.tail);
        self.in_flight_writes = writes.clone();
        Some(FlushBatch { writes, end: self.tail })
    }

    /// Records the outcome of a flush. A failure poisons the log: what reached the disk is
    /// unknown, so nothing more is written until the store is reopened and recovered.
    pub fn finish_flush(&mut self, end: LogPosition, outcome: Result<()>) -> Result<LogPosition> {
        assert_eq!(self.in_flight, Some(end), "finish_flush of a batch not in flight");
        self.in_flight = None;
        self.in_flight_writes.clear();
        match outcome {
            Ok(()) => {
                assert!(end >= self.durable);
                self.durable = end;
                Ok(end)
            }
            Err(error) => {
                self.poisoned = Some(error.to_string());
                Err(error)
            }
        }
    }

    /// Writes and syncs one batch with the log's disk. Returns the durable position.
    pub fn flush(&mut self) -> Result<LogPosition> {
        self.check_writable()?;
        let Some(batch) = self.take_flush() else { return Ok(self.durable) };
        let disk = &mut self.disk;
        let outcome = batch.writes.iter().try_for_each(|write| {
            disk.write(write.segment, write.offset, &write.bytes)?;
            disk.sync(write.segment)
        });
        self.finish_flush(batch.end, outcome)
    }

    /// Reads `size` bytes at `position` (which must be written: durable or in flight).
    pub fn read(&mut self, position: LogPosition, size: usize) -> Result<Bytes> {
        // Records appended and not yet written (or being written) are read from memory.
        if position >= self.durable {
            let (segment, offset) = (position.segment(), position.offset() as usize);
            let inside = |write_segment: u32, write_offset: u32, length: usize| {
                let start = write_offset as usize;
                (write_segment == segment && offset >= start && offset + size <= start + length)
                    .then(|| offset - start)
            };
            for write in &self.in_flight_writes {
                if let Some(at) = inside(write.segment, write.offset, write.bytes.len()) {
                    return Ok(write.bytes.slice(at..at + size));
                }
            }
            for write in &self.pending {
                if let Some(at) = inside(write.segment, write.offset, write.bytes.len()) {
                    return Ok(Bytes::copy_from_slice(&write.bytes[at..at + size]));
                }
            }
        }
        self.disk.read(position.segment(), position.offset(), size)
    }

    /// Reads and checks the whole record at `position`.
    pub fn read_record(&mut self, position: LogPosition) -> Result<RawRecord> {
        let header = self.read(position, RECORD_HEADER_SIZE)?;
        let body_size = u32::from_le_bytes(header[16..20].try_into().expect("4 bytes")) as usize;
        let room = self.segment_size as usize - position.offset() as usize;
        let size = (RECORD_HEADER_SIZE + body_size).min(room);
        let bytes = self.read(position, size)?;
        check_record(&bytes, position).map_err(|defect| StoreError::Corrupt {
            segment: position.segment(),
            offset: u64::from(position.offset()),
            reason: defect.to_string(),
        })
    }
}

enum SegmentScan {
    Continues,
    Ends(LogPosition),
}

/// Replays one segment's records. Stops at `SegmentEnd`, or at the first defect, which is
/// either the end of the log (a torn write never acknowledged) or damage (an error).
fn scan_segment<D: Disk>(
    disk: &mut D,
    id: u32,
    from: u32,
    bytes: &Bytes,
    later: &[u32],
    apply: &mut impl FnMut(&RawRecord) -> Result<()>,
    report: &mut RecoveryReport,
) -> Result<SegmentScan> {
    let mut position = LogPosition::new(id, from);
    loop {
        let defect = match check_record(&bytes.slice(position.offset() as usize..), position) {
            Ok(record) if record.kind == RecordKind::SegmentEnd => {
                let end: SegmentEndBody = record.decode().map_err(|d| corrupt(position, &d))?;
                if end.next_segment != id + 1 {
                    return Err(corrupt(
                        position,
                        &RecordDefect::BadBody("segment end names another segment".into()),
                    ));
                }
                report.records += 1;
                return Ok(SegmentScan::Continues);
            }
            Ok(record) => {
                apply(&record)?;
                report.records += 1;
                position = record.end();
                continue;
            }
            Err(defect) => defect,
        };
        // A later segment with a record in it means this one was complete and synced before
        // the later one was written: the defect is damage, not a torn tail.
        for &later_id in later {
            let first = LogPosition::new(later_id, SEGMENT_HEADER_SIZE as u32);
            let size = disk.segment_size(later_id)? as usize;
            let later_bytes = disk.read(later_id, 0, size)?;
            // A later segment cut short before its header (a crash while creating it)
            // holds no record.
            if later_bytes.len() > SEGMENT_HEADER_SIZE
                && check_record(&later_bytes.slice(SEGMENT_HEADER_SIZE..), first).is_ok()
            {
                return Err(corrupt(position, &defect));
            }
        }
        // Past the last non-zero byte the preallocated segment was never written; only the
        // regions the disk reports as written are searched for it.
        let mut written_end = 0;
        for (start, end) in
            disk.written_regions(id, u64::from(position.offset()))?.into_iter().rev()
        {
            let (start, end) = (start as usize, (end as usize).min(bytes.len()));
            if let Some(last) = last_nonzero(&bytes[start.min(end)..end]) {
                written_end = start + last + 1;
                break;
            }
        }
        let start = position.offset() as usize;
        if written_end <= start {
            return Ok(SegmentScan::Ends(position));
        }
        // A record after the defect that was written after the defect was durable proves
        // damage. Records written in the same batch as the defect were never acknowledged:
        // they go with the torn tail, and are zeroed so that no later scan takes them for
        // records of the new tail.
        let mut zero_end = written_end.max(start + TORN_TAIL_ZERO_MIN).min(bytes.len());
        let scan_end = written_end.min(bytes.len().saturating_sub(RECORD_HEADER_SIZE));
        for offset in start + 1..scan_end {
            let candidate = LogPosition::new(id, offset as u32);
            if bytes[offset..offset + 8] != candidate.0.to_le_bytes() {
                continue;
            }
            if let Ok(record) = check_record(&bytes.slice(offset..), candidate) {
                if record.durable_before > position {
                    return Err(corrupt(position, &defect));
                }
                zero_end = zero_end.max(record.end().offset() as usize);
            }
        }
        disk.write(id, position.offset(), &vec![0u8; zero_end - start])?;
        disk.sync(id)?;
        report.torn_tail = Some(TornTail {
            segment: id,
            offset: position.offset(),
            reason: defect.to_string(),
            zeroed_bytes: zero_end - start,
        });
        return Ok(SegmentScan::Ends(position));
    }
}

/// Index of the last non-zero byte, scanning back a word at a time.
fn last_nonzero(bytes: &[u8]) -> Option<usize> {
    let words = bytes.len() / 8;
    let tail_start = words * 8;
    if let Some(index) = bytes[tail_start..].iter().rposition(|&b| b != 0) {
        return Some(tail_start + index);
    }
    let word = (0..words).rev().find(|&w| bytes[w * 8..w * 8 + 8] != [0u8; 8])?;
    let index = bytes[word * 8..word * 8 + 8].iter().rposition(|&b| b != 0).expect("non-zero word");
    Some(word * 8 + index)
}

fn corrupt(position: LogPosition, defect: &RecordDefect) -> StoreError {
    StoreError::Corrupt {
        segment: position.segment(),
        offset: u64::from(position.offset()),
        reason: defect.to_string(),
    }
}
