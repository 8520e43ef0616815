//! Index files: an immutable snapshot of the committed index (revisions by (oid, serial),
//! object records by (serial, oid), transactions by tid) plus the state a replay needs
//! (metadata, transactions in flight), written by a checkpoint and read through mmap.
//!
//! Every entry carries its own crc32, checked whenever a lookup touches it, so a damaged
//! index is reported (and can be rebuilt from the log), never served. See
//! docs/logstore-format.md.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use memmap2::Mmap;
use wire::{Compression, Oid, Tid};
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::error::{Result, StoreError};
use crate::record::LogPosition;
use crate::state::{DataRef, Stored, TransactionEntry};

pub const INDEX_MAGIC: [u8; 8] = *b"NEOrIDX\0";
pub const INDEX_VERSION: u32 = 1;

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct IndexHeader {
    pub magic: [u8; 8],
    pub version: U32,
    pub reserved: U32,
    /// The checkpoint's generation: filters (pack, truncate, drop) older than it are baked in.
    pub generation: U64,
    /// Replay the log from here: every record before it is reflected in this file.
    pub log_position: U64,
    pub objects_offset: U64,
    pub objects_count: U64,
    pub serials_offset: U64,
    pub serials_count: U64,
    pub transactions_offset: U64,
    pub transactions_count: U64,
    pub state_offset: U64,
    pub state_size: U64,
    pub state_crc: U32,
    /// Every `FENCE_STRIDE`-th object key, so a lookup searches memory first and then one
    /// block of entries.
    pub fence_offset: U64,
    pub fence_count: U64,
    pub fence_crc: U32,
    pub reserved2: [u8; 4],
    /// crc32 of bytes 0..124.
    pub header_crc: U32,
}

pub const INDEX_HEADER_SIZE: usize = 128;
const _: () = assert!(size_of::<IndexHeader>() == INDEX_HEADER_SIZE);

/// One fence key per this many object entries: the fences of 10 million revisions take
/// 2.4 MiB of heap, and a lookup then probes at most 6 entries of the file.
pub const FENCE_STRIDE: usize = 64;

/// One revision, sorted by (oid, serial).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct ObjectEntry {
    pub oid: U64,
    pub serial: U64,
    pub data_position: U64,
    pub data_serial: U64,
    pub data_size: U32,
    pub data_crc: U32,
    /// 0 data, 1 undo with data, 2 undo of a creation (no data), 3 delete.
    pub kind: u8,
    pub compression: u8,
    pub reserved: [u8; 2],
    /// crc32 of bytes 0..44.
    pub crc: U32,
}

/// One object record, sorted by (serial, oid).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct SerialEntry {
    pub serial: U64,
    pub oid: U64,
    /// crc32 of bytes 0..16.
    pub crc: U32,
}

/// One committed transaction, sorted by tid.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct TransactionIndexEntry {
    pub tid: U64,
    pub ttid: U64,
    pub vote_position: U64,
    pub packed: u8,
    pub reserved: [u8; 3],
    /// crc32 of bytes 0..28.
    pub crc: U32,
}

const _: () = assert!(size_of::<ObjectEntry>() == 48);
const _: () = assert!(size_of::<SerialEntry>() == 20);
const _: () = assert!(size_of::<TransactionIndexEntry>() == 32);

fn entry_crc<T: IntoBytes + Immutable>(entry: &T) -> u32 {
    let bytes = entry.as_bytes();
    crc32fast::hash(&bytes[..bytes.len() - 4])
}

impl ObjectEntry {
    pub fn new(oid: Oid, serial: Tid, stored: Stored) -> ObjectEntry {
        let (kind, data, data_serial) = match stored {
            Stored::Data(data) => (0, Some(data), Tid(0)),
            Stored::Undo { data_serial, data: Some(data) } => (1, Some(data), data_serial),
            Stored::Undo { data_serial, data: None } => (2, None, data_serial),
            Stored::Delete => (3, None, Tid(0)),
        };
        let mut entry = ObjectEntry {
            oid: U64::new(oid.0),
            serial: U64::new(serial.0),
            data_position: U64::new(data.map_or(0, |d| d.position.0)),
            data_serial: U64::new(data_serial.0),
            data_size: U32::new(data.map_or(0, |d| d.size)),
            data_crc: U32::new(data.map_or(0, |d| d.data_crc)),
            kind,
            compression: data.map_or(0, |d| d.compression as u8),
            reserved: [0; 2],
            crc: U32::new(0),
        };
        entry.crc = U32::new(entry_crc(&entry));
        entry
    }

    fn stored(&self) -> Option<Stored> {
        let data = || {
            Some(DataRef {
                position: LogPosition(self.data_position.get()),
                size: self.data_size.get(),
                compression: Compression::from_u8(self.compression)?,
                data_crc: self.data_crc.get(),
            })
        };
        Some(match self.kind {
            0 => Stored::Data(data()?),
            1 => Stored::Undo { data_serial: Tid(self.data_serial.get()), data: Some(data()?) },
            2 => Stored::Undo { data_serial: Tid(self.data_serial.get()), data: None },
            3 => Stored::Delete,
            _ => return None,
        })
    }
}

/// A checkpoint's index file, mapped.
#[derive(Debug)]
pub struct IndexFile {
    path: PathBuf,
    map: Mmap,
    pub generation: u64,
    pub log_position: LogPosition,
    objects: (usize, usize),
    serials: (usize, usize),
    transactions: (usize, usize),
    state: (usize, usize),
    /// (oid, serial) of object entries 0, FENCE_STRIDE, 2 * FENCE_STRIDE, ...
    fences: Vec<(Oid, Tid)>,
}

fn corrupt_index(path: &Path, offset: usize, reason: impl Into<String>) -> StoreError {
    StoreError::CorruptIndex { path: path.to_owned(), offset: offset as u64, reason: reason.into() }
}

impl IndexFile {
    pub fn open(path: &Path) -> Result<IndexFile> {
        let file = File::open(path).map_err(|source| StoreError::Io {
            operation: "open",
            path: path.to_owned(),
            source,
        })?;
        // SAFETY: index files are written once, renamed into place, and never modified; the
        // map is read-only.
        let map = unsafe { Mmap::map(&file) }.map_err(|source| StoreError::Io {
            operation: "mmap",
            path: path.to_owned(),
            source,
        })?;
        let Ok((header, _)) = IndexHeader::read_from_prefix(&map[..]) else {
            return Err(corrupt_index(path, 0, "shorter than its header"));
        };
        if header.magic != INDEX_MAGIC {
            return Err(corrupt_index(path, 0, "bad magic"));
        }
        if crc32fast::hash(&map[..INDEX_HEADER_SIZE - 4]) != header.header_crc.get() {
            return Err(corrupt_index(path, 0, "header checksum mismatch"));
        }
        if header.version.get() != INDEX_VERSION {
            return Err(corrupt_index(path, 0, format!("index version {}", header.version.get())));
        }
        let section = |offset: u64, count: u64, size: usize| -> Result<(usize, usize)> {
            let start = usize::try_from(offset).ok();
            let bytes = usize::try_from(count).ok().and_then(|c| c.checked_mul(size));
            match (start, bytes) {
                (Some(start), Some(bytes))
                    if start.checked_add(bytes).is_some_and(|end| end <= map.len()) =>
                {
                    Ok((start, count as usize))
                }
                _ => Err(corrupt_index(path, 0, "section past the end of the file")),
            }
        };
        let objects = section(
            header.objects_offset.get(),
            header.objects_count.get(),
            size_of::<ObjectEntry>(),
        )?;
        let serials = section(
            header.serials_offset.get(),
            header.serials_count.get(),
            size_of::<SerialEntry>(),
        )?;
        let transactions = section(
            header.transactions_offset.get(),
            header.transactions_count.get(),
            size_of::<TransactionIndexEntry>(),
        )?;
        let state = section(header.state_offset.get(), header.state_size.get(), 1)?;
        if crc32fast::hash(&map[state.0..state.0 + state.1]) != header.state_crc.get() {
            return Err(corrupt_index(path, state.0, "state checksum mismatch"));
        }
        let fence = section(header.fence_offset.get(), header.fence_count.get(), 16)?;
        let fence_bytes = &map[fence.0..fence.0 + fence.1 * 16];
        if crc32fast::hash(fence_bytes) != header.fence_crc.get()
            || fence.1 != objects.1.div_ceil(FENCE_STRIDE)
        {
            return Err(corrupt_index(path, fence.0, "fence checksum mismatch"));
        }
        let fences = fence_bytes
            .chunks_exact(16)
            .map(|key| {
                let oid = u64::from_le_bytes(key[..8].try_into().expect("8 bytes"));
                let serial = u64::from_le_bytes(key[8..].try_into().expect("8 bytes"));
                (Oid(oid), Tid(serial))
            })
            .collect();
        Ok(IndexFile {
            path: path.to_owned(),
            generation: header.generation.get(),
            log_position: LogPosition(header.log_position.get()),
            map,
            objects,
            serials,
            transactions,
            state,
            fences,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The replay state (metadata, transactions in flight), checked at open.
    pub fn state_bytes(&self) -> Bytes {
        Bytes::copy_from_slice(&self.map[self.state.0..self.state.0 + self.state.1])
    }

    pub fn objects_len(&self) -> usize {
        self.objects.1
    }

    pub fn serials_len(&self) -> usize {
        self.serials.1
    }

    pub fn transactions_len(&self) -> usize {
        self.transactions.1
    }

    fn entry<T: FromBytes + IntoBytes + Immutable + KnownLayout>(
        &self,
        section: (usize, usize),
        index: usize,
    ) -> Result<T> {
        assert!(index < section.1);
        let offset = section.0 + index * size_of::<T>();
        let entry =
            T::read_from_bytes(&self.map[offset..offset + size_of::<T>()]).expect("sized slice");
        let bytes = entry.as_bytes();
        let stored = u32::from_le_bytes(bytes[bytes.len() - 4..].try_into().expect("4 bytes"));
        if entry_crc(&entry) != stored {
            return Err(corrupt_index(&self.path, offset, "entry checksum mismatch"));
        }
        Ok(entry)
    }

    /// The revision at `index` of the (oid, serial)-sorted section.
    pub fn object(&self, index: usize) -> Result<(Oid, Tid, Stored)> {
        let entry: ObjectEntry = self.entry(self.objects, index)?;
        let stored = entry.stored().ok_or_else(|| {
            corrupt_index(&self.path, self.objects.0 + index * 48, "invalid revision kind")
        })?;
        Ok((Oid(entry.oid.get()), Tid(entry.serial.get()), stored))
    }

    pub fn serial(&self, index: usize) -> Result<(Tid, Oid)> {
        let entry: SerialEntry = self.entry(self.serials, index)?;
        Ok((Tid(entry.serial.get()), Oid(entry.oid.get())))
    }

    pub fn transaction(&self, index: usize) -> Result<(Tid, TransactionEntry)> {
        let entry: TransactionIndexEntry = self.entry(self.transactions, index)?;
        Ok((
            Tid(entry.tid.get()),
            TransactionEntry {
                ttid: Tid(entry.ttid.get()),
                vote: LogPosition(entry.vote_position.get()),
                packed: entry.packed != 0,
            },
        ))
    }

    /// Every entry of the file, numbered across its sections (objects, serials,
    /// transactions): what `check_entries` walks.
    pub fn entries_len(&self) -> usize {
        self.objects.1 + self.serials.1 + self.transactions.1
    }

    /// Checks the checksums of up to `count` entries from `from` (numbered as by
    /// `entries_len`); returns where the next call starts. A damaged entry is an error.
    ///
    /// Each entry is checked against its checksum, its place too: after the entry before it
    /// in its section's order, and equal to its fence key when it starts a block. (An entry
    /// whole but in the wrong place, which its checksum cannot tell, would make lookups
    /// miss revisions.) The two sections of object records hold as many entries.
    pub fn check_entries(&self, from: usize, count: usize) -> Result<usize> {
        if self.objects.1 != self.serials.1 {
            return Err(corrupt_index(
                &self.path,
                0,
                format!("{} object entries but {} serial entries", self.objects.1, self.serials.1),
            ));
        }
        let end = from.saturating_add(count).min(self.entries_len());
        let (objects, serials) = (self.objects.1, self.objects.1 + self.serials.1);
        let misplaced = |section: (usize, usize), index: usize, size: usize| {
            corrupt_index(&self.path, section.0 + index * size, "entry out of order")
        };
        for entry in from..end {
            if entry < objects {
                let (oid, serial, _) = self.object(entry)?;
                if entry > 0 {
                    let (before, before_serial, _) = self.object(entry - 1)?;
                    if (before, before_serial) >= (oid, serial) {
                        return Err(misplaced(self.objects, entry, 48));
                    }
                }
                if entry % FENCE_STRIDE == 0 && self.fences[entry / FENCE_STRIDE] != (oid, serial) {
                    return Err(misplaced(self.objects, entry, 48));
                }
            } else if entry < serials {
                let index = entry - objects;
                let key = self.serial(index)?;
                if index > 0 && self.serial(index - 1)? >= key {
                    return Err(misplaced(self.serials, index, 20));
                }
            } else {
                let index = entry - serials;
                let (tid, _) = self.transaction(index)?;
                if index > 0 && self.transaction(index - 1)?.0 >= tid {
                    return Err(misplaced(self.transactions, index, 32));
                }
            }
        }
        Ok(end)
    }

    /// First index whose key is not less than `key` (binary search; every probe checked).
    fn lower_bound<K: Ord>(
        &self,
        len: usize,
        key: &K,
        key_at: impl Fn(usize) -> Result<K>,
    ) -> Result<usize> {
        let (mut low, mut high) = (0, len);
        while low < high {
            let middle = low + (high - low) / 2;
            if key_at(middle)? < *key {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        Ok(low)
    }

    /// Index of the first revision at or after (oid, serial): the fences in memory name the
    /// block, a binary search of the block's entries (each checked) finds the entry.
    pub fn objects_from(&self, oid: Oid, serial: Tid) -> Result<usize> {
        let key = (oid, serial);
        let fences_below = self.fences.partition_point(|&fence| fence < key);
        if fences_below == 0 {
            return Ok(0);
        }
        let start = (fences_below - 1) * FENCE_STRIDE;
        let end = (fences_below * FENCE_STRIDE).min(self.objects.1);
        let within = self
            .lower_bound(end - start, &key, |i| self.object(start + i).map(|(o, s, _)| (o, s)))?;
        Ok(start + within)
    }

    pub fn serials_from(&self, serial: Tid, oid: Oid) -> Result<usize> {
        self.lower_bound(self.serials.1, &(serial, oid), |i| self.serial(i))
    }

    pub fn transactions_from(&self, tid: Tid) -> Result<usize> {
        self.lower_bound(self.transactions.1, &tid, |i| self.transaction(i).map(|(t, _)| t))
    }
}

/// Writes an index file: to a temporary name, synced, then renamed into place and the
/// directory synced, so that a file under its final name is always complete.
#[derive(Debug)]
pub struct IndexWriter {
    final_path: PathBuf,
    temporary_path: PathBuf,
    file: BufWriter<File>,
    offset: u64,
    header: IndexHeader,
    section: u8,
    fences: Vec<u8>,
}

fn io_error<'a>(
    operation: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io { operation, path: path.to_owned(), source }
}

impl IndexWriter {
    pub fn create(path: &Path, generation: u64, log_position: LogPosition) -> Result<IndexWriter> {
        let temporary_path = path.with_extension("index.tmp");
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temporary_path)
            .map_err(io_error("create", &temporary_path))?;
        let mut file = BufWriter::with_capacity(1 << 20, file);
        file.write_all(&[0u8; INDEX_HEADER_SIZE]).map_err(io_error("write", &temporary_path))?;
        let header = IndexHeader {
            magic: INDEX_MAGIC,
            version: U32::new(INDEX_VERSION),
            reserved: U32::new(0),
            generation: U64::new(generation),
            log_position: U64::new(log_position.0),
            objects_offset: U64::new(INDEX_HEADER_SIZE as u64),
            objects_count: U64::new(0),
            serials_offset: U64::new(0),
            serials_count: U64::new(0),
            transactions_offset: U64::new(0),
            transactions_count: U64::new(0),
            state_offset: U64::new(0),
            state_size: U64::new(0),
            state_crc: U32::new(0),
            fence_offset: U64::new(0),
            fence_count: U64::new(0),
            fence_crc: U32::new(0),
            reserved2: [0; 4],
            header_crc: U32::new(0),
        };
        Ok(IndexWriter {
            final_path: path.to_owned(),
            temporary_path,
            file,
            offset: INDEX_HEADER_SIZE as u64,
            header,
            section: 0,
            fences: Vec::new(),
        })
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.file.write_all(bytes).map_err(io_error("write", &self.temporary_path))?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    /// Appends a revision; revisions come in (oid, serial) order, before any serial entry.
    pub fn object(&mut self, oid: Oid, serial: Tid, stored: Stored) -> Result<()> {
        assert_eq!(self.section, 0, "objects come first");
        if (self.header.objects_count.get() as usize).is_multiple_of(FENCE_STRIDE) {
            self.fences.extend_from_slice(&oid.0.to_le_bytes());
            self.fences.extend_from_slice(&serial.0.to_le_bytes());
        }
        self.header.objects_count = U64::new(self.header.objects_count.get() + 1);
        self.put(ObjectEntry::new(oid, serial, stored).as_bytes())
    }

    pub fn serial(&mut self, serial: Tid, oid: Oid) -> Result<()> {
        if self.section < 1 {
            self.section = 1;
            self.header.serials_offset = U64::new(self.offset);
        }
        assert_eq!(self.section, 1);
        let mut entry =
            SerialEntry { serial: U64::new(serial.0), oid: U64::new(oid.0), crc: U32::new(0) };
        entry.crc = U32::new(entry_crc(&entry));
        self.header.serials_count = U64::new(self.header.serials_count.get() + 1);
        self.put(entry.as_bytes())
    }

    pub fn transaction(&mut self, tid: Tid, transaction: TransactionEntry) -> Result<()> {
        if self.section < 1 {
            self.section = 1;
            self.header.serials_offset = U64::new(self.offset);
        }
        if self.section < 2 {
            self.section = 2;
            self.header.transactions_offset = U64::new(self.offset);
        }
        assert_eq!(self.section, 2);
        let mut entry = TransactionIndexEntry {
            tid: U64::new(tid.0),
            ttid: U64::new(transaction.ttid.0),
            vote_position: U64::new(transaction.vote.0),
            packed: u8::from(transaction.packed),
            reserved: [0; 3],
            crc: U32::new(0),
        };
        entry.crc = U32::new(entry_crc(&entry));
        self.header.transactions_count = U64::new(self.header.transactions_count.get() + 1);
        self.put(entry.as_bytes())
    }

    /// Writes the replay state, the header, syncs, and renames the file into place.
    pub fn finish(self, state: &[u8]) -> Result<PathBuf> {
        let (temporary, final_path) = self.finish_temporary(state)?;
        install(&temporary, &final_path)?;
        Ok(final_path)
    }

    /// Writes the replay state and the header and syncs, leaving the file under its
    /// temporary name: returns (temporary, final) paths for `install`.
    pub fn finish_temporary(mut self, state: &[u8]) -> Result<(PathBuf, PathBuf)> {
        if self.section < 1 {
            self.header.serials_offset = U64::new(self.offset);
        }
        if self.section < 2 {
            self.header.transactions_offset = U64::new(self.offset);
        }
        let fences = std::mem::take(&mut self.fences);
        self.header.fence_offset = U64::new(self.offset);
        self.header.fence_count = U64::new(fences.len() as u64 / 16);
        self.header.fence_crc = U32::new(crc32fast::hash(&fences));
        self.put(&fences)?;
        self.header.state_offset = U64::new(self.offset);
        self.header.state_size = U64::new(state.len() as u64);
        self.header.state_crc = U32::new(crc32fast::hash(state));
        self.put(state)?;
        self.header.header_crc =
            U32::new(crc32fast::hash(&self.header.as_bytes()[..INDEX_HEADER_SIZE - 4]));
        let path = self.temporary_path.clone();
        let mut file =
            self.file.into_inner().map_err(|e| io_error("write", &path)(e.into_error()))?;
        file.seek(SeekFrom::Start(0)).map_err(io_error("seek", &path))?;
        file.write_all(self.header.as_bytes()).map_err(io_error("write", &path))?;
        file.sync_all().map_err(io_error("fsync", &path))?;
        Ok((path, self.final_path))
    }
}

/// Renames a synced temporary index file into place and syncs the directory.
pub fn install(temporary: &Path, final_path: &Path) -> Result<()> {
    std::fs::rename(temporary, final_path).map_err(io_error("rename", temporary))?;
    let directory = final_path.parent().expect("index files live in a directory");
    File::open(directory).and_then(|d| d.sync_all()).map_err(io_error("fsync directory", directory))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_through_fences_find_every_key() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("index-0000000000000001.index");
        let mut writer = IndexWriter::create(&path, 1, LogPosition::new(0, 64)).unwrap();
        // 1000 revisions: oids 0, 3, 6, ... with 1 to 3 serials each.
        let mut keys = Vec::new();
        for oid in (0..1500u64).step_by(3) {
            for serial in 0..1 + oid % 3 {
                keys.push((Oid(oid), Tid(10 + serial * 5)));
            }
        }
        for &(oid, serial) in &keys {
            writer.object(oid, serial, Stored::Delete).unwrap();
        }
        writer.finish(b"state").unwrap();
        let index = IndexFile::open(&path).unwrap();
        assert_eq!(index.objects_len(), keys.len());
        assert_eq!(index.fences.len(), keys.len().div_ceil(FENCE_STRIDE));
        for (position, &(oid, serial)) in keys.iter().enumerate() {
            assert_eq!(index.objects_from(oid, serial).unwrap(), position);
            // A key just below lands on the same entry; just above, on the next.
            assert_eq!(index.objects_from(oid, Tid(serial.0 - 1)).unwrap(), position);
            assert_eq!(index.objects_from(oid, Tid(serial.0 + 1)).unwrap(), position + 1);
        }
        assert_eq!(index.objects_from(Oid(u64::MAX), Tid(0)).unwrap(), keys.len());
        assert_eq!(index.objects_from(Oid(0), Tid(0)).unwrap(), 0);
    }
}
