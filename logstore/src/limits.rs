//! Every bound of the log store, in one place.

/// Bytes of a segment file's header.
pub const SEGMENT_HEADER_SIZE: usize = 64;

/// Bytes of a record header.
pub const RECORD_HEADER_SIZE: usize = 32;

/// Default size of a segment file. A segment must hold the largest record (an object of
/// `wire::limits::PAYLOAD_SIZE_MAX` bytes plus its header) with room to spare.
pub const SEGMENT_SIZE_DEFAULT: u32 = 256 << 20;

/// Smallest segment size accepted (tests use small segments to exercise rollover).
pub const SEGMENT_SIZE_MIN: u32 = 4 << 10;

/// Segment offsets are `u32`, and a position is `segment << 32 | offset`.
pub const SEGMENT_SIZE_MAX: u32 = u32::MAX;

/// Most segments one store may have: segment ids are `u32`, and the bound keeps the recovery
/// scan's list of files finite.
pub const SEGMENTS_MAX: u32 = 1 << 20;

/// Bytes zeroed past a torn tail at recovery, at least: enough to erase the header of any
/// record a torn write may have left.
pub const TORN_TAIL_ZERO_MIN: usize = RECORD_HEADER_SIZE;

/// Fewest in-memory index entries worth a checkpoint (`LogStore::needs_checkpoint`).
pub const CHECKPOINT_DELTA_MIN: usize = 256 << 10;

const _: () = assert!(SEGMENT_HEADER_SIZE.is_multiple_of(8));
const _: () = assert!(SEGMENT_SIZE_MIN as usize > SEGMENT_HEADER_SIZE + 4 * RECORD_HEADER_SIZE);
const _: () = assert!(SEGMENT_SIZE_DEFAULT as usize > wire::limits::PAYLOAD_SIZE_MAX + 4096);
