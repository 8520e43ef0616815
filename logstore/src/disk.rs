//! The narrow seam between the log and the files it lives in: segment files named by id,
//! written at offsets, made durable by fdatasync, read as zero-copy views.
//!
//! `FileDisk` is the real thing (std files, `fallocate`, `memmap2` for reads). The trait
//! keeps the log's logic apart from the filesystem, so that a simulated disk can inject
//! faults and crashes under a deterministic simulator.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use memmap2::Mmap;

use crate::error::{Result, StoreError};

pub trait Disk {
    /// Ids of the segment files present, ascending.
    fn list_segments(&mut self) -> Result<Vec<u32>>;
    /// Creates (or re-creates, empty) a segment file of `size` bytes with its space
    /// allocated, so that writes inside it cannot fail for lack of space.
    fn create_segment(&mut self, id: u32, size: u32) -> Result<()>;
    fn remove_segment(&mut self, id: u32) -> Result<()>;
    /// Size of an existing segment file.
    fn segment_size(&mut self, id: u32) -> Result<u64>;
    fn write(&mut self, id: u32, offset: u32, bytes: &[u8]) -> Result<()>;
    /// fdatasync: everything written to the segment before is durable when this returns.
    fn sync(&mut self, id: u32) -> Result<()>;
    /// Bytes `offset .. offset + size` of a segment, as a view where the disk can give one.
    fn read(&mut self, id: u32, offset: u32, size: usize) -> Result<Bytes>;
    /// The regions of a segment from `from` on that may hold written bytes, as
    /// (start, end) pairs; everything outside them reads as zeros. A disk that cannot tell
    /// returns the whole rest of the segment. Recovery uses it to skip the never-written
    /// part of a preallocated segment.
    fn written_regions(&mut self, id: u32, from: u64) -> Result<Vec<(u64, u64)>> {
        Ok(vec![(from, self.segment_size(id)?)])
    }

    /// The directory where index files (checkpoints) go beside the segments, if the disk
    /// has one; without it the store keeps its whole index in memory.
    fn index_directory(&self) -> Option<&Path> {
        None
    }

    /// Whether reading these bytes with `read` would be served from memory, without waiting
    /// for the device. A disk that cannot tell says yes.
    fn is_resident(&mut self, _id: u32, _offset: u32, _size: usize) -> Result<bool> {
        Ok(true)
    }
}

/// Segment files in a directory: `segment-00000001.log`, ...
#[derive(Debug)]
pub struct FileDisk {
    directory: PathBuf,
    open: BTreeMap<u32, OpenSegment>,
    /// The directory's `LOCK` file, locked (`flock`, exclusive) while this disk lives: one
    /// writer per directory. The kernel drops the lock when the process dies.
    _lock: File,
}

#[derive(Debug)]
struct OpenSegment {
    file: File,
    map: Arc<Mmap>,
}

/// Keeps a segment's mapping alive while a `Bytes` view of it exists.
struct MapSlice {
    map: Arc<Mmap>,
    start: usize,
    end: usize,
}

impl AsRef<[u8]> for MapSlice {
    fn as_ref(&self) -> &[u8] {
        &self.map[self.start..self.end]
    }
}

fn io<'a>(
    operation: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io { operation, path: path.to_owned(), source }
}

impl FileDisk {
    /// Uses `directory` (created if missing) for segment files.
    /// Opens (creating it if need be) a store's directory, and takes its lock: a second
    /// store on the same directory, in this process or another, gets `StoreError::InUse`.
    pub fn open(directory: impl Into<PathBuf>) -> Result<FileDisk> {
        let directory = directory.into();
        std::fs::create_dir_all(&directory).map_err(io("create directory", &directory))?;
        let path = directory.join("LOCK");
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io("open", &path))?;
        // SAFETY: flock takes a descriptor this function owns for the call's duration.
        let locked = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if locked != 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::WouldBlock {
                return Err(StoreError::InUse(directory));
            }
            return Err(StoreError::Io { operation: "lock", path, source: error });
        }
        Ok(FileDisk { directory, open: BTreeMap::new(), _lock: lock })
    }

    pub fn directory(&self) -> &Path {
        &self.directory
    }

    pub fn segment_path(&self, id: u32) -> PathBuf {
        self.directory.join(format!("segment-{id:08}.log"))
    }

    fn sync_directory(&self) -> Result<()> {
        let directory =
            File::open(&self.directory).map_err(io("open directory", &self.directory))?;
        directory.sync_all().map_err(io("fsync directory", &self.directory))
    }

    fn segment(&mut self, id: u32) -> Result<&OpenSegment> {
        if !self.open.contains_key(&id) {
            let path = self.segment_path(id);
            let file =
                OpenOptions::new().read(true).write(true).open(&path).map_err(io("open", &path))?;
            let map = map_file(&file, &path)?;
            self.open.insert(id, OpenSegment { file, map: Arc::new(map) });
        }
        Ok(&self.open[&id])
    }
}

fn map_file(file: &File, path: &Path) -> Result<Mmap> {
    // SAFETY: the map is read-only and this process only changes the file through `write`,
    // within its length; no one else is expected to truncate a segment while the store is
    // open (the store's directory is its own). Views handed out keep the map alive.
    unsafe { Mmap::map(file) }.map_err(io("mmap", path))
}

impl Disk for FileDisk {
    fn index_directory(&self) -> Option<&Path> {
        Some(&self.directory)
    }

    /// `mincore` over the mapped pages of the range.
    fn is_resident(&mut self, id: u32, offset: u32, size: usize) -> Result<bool> {
        const PAGE: usize = 4096;
        let segment = self.segment(id)?;
        let start = (offset as usize) / PAGE * PAGE;
        let end = (offset as usize + size).min(segment.map.len());
        if end <= start {
            return Ok(true);
        }
        let pages = (end - start).div_ceil(PAGE);
        let mut residency = vec![0u8; pages];
        // SAFETY: the range lies within the live mapping (clamped to its length, start is
        // page-aligned as the call requires) and `residency` has one byte per page.
        let result = unsafe {
            libc::mincore(
                segment.map.as_ptr().add(start) as *mut libc::c_void,
                end - start,
                residency.as_mut_ptr(),
            )
        };
        if result != 0 {
            // Without an answer, assume resident: the read still works, it may just wait.
            return Ok(true);
        }
        Ok(residency.iter().all(|page| page & 1 == 1))
    }

    /// `lseek(SEEK_DATA / SEEK_HOLE)`: allocated but never-written extents count as holes
    /// on ext4, xfs and tmpfs. Where the filesystem cannot tell, it reports everything as
    /// data, which is only slower.
    fn written_regions(&mut self, id: u32, from: u64) -> Result<Vec<(u64, u64)>> {
        let path = self.segment_path(id);
        let segment = self.segment(id)?;
        let size = segment.map.len() as u64;
        let fd = segment.file.as_raw_fd();
        let mut regions = Vec::new();
        let mut position = from;
        while position < size {
            // SAFETY: lseek on a valid descriptor; it only moves the file offset, which
            // this store never uses (all I/O is positioned).
            let data = unsafe { libc::lseek(fd, position as i64, libc::SEEK_DATA) };
            if data < 0 {
                let error = std::io::Error::last_os_error();
                if error.raw_os_error() == Some(libc::ENXIO) {
                    break;
                }
                return Err(io("seek data", &path)(error));
            }
            // SAFETY: as above.
            let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
            if hole < 0 {
                return Err(io("seek hole", &path)(std::io::Error::last_os_error()));
            }
            let (start, end) = (data as u64, (hole as u64).min(size));
            if end <= start {
                break;
            }
            regions.push((start, end));
            position = end;
        }
        Ok(regions)
    }

    fn list_segments(&mut self) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        let entries = std::fs::read_dir(&self.directory).map_err(io("list", &self.directory))?;
        for entry in entries {
            let entry = entry.map_err(io("list", &self.directory))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(id) = name.strip_prefix("segment-").and_then(|n| n.strip_suffix(".log"))
                && let Ok(id) = id.parse::<u32>()
            {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }

    fn create_segment(&mut self, id: u32, size: u32) -> Result<()> {
        self.open.remove(&id);
        let path = self.segment_path(id);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io("create", &path))?;
        // SAFETY: fallocate on a valid descriptor, mode 0 (allocate and extend).
        let allocated = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, i64::from(size)) };
        if allocated != 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::EOPNOTSUPP) {
                drop(file);
                let _ = std::fs::remove_file(&path);
                return Err(io("fallocate", &path)(error));
            }
            file.set_len(u64::from(size)).map_err(io("extend", &path))?;
        }
        self.sync_directory()?;
        let map = map_file(&file, &path)?;
        self.open.insert(id, OpenSegment { file, map: Arc::new(map) });
        Ok(())
    }

    fn remove_segment(&mut self, id: u32) -> Result<()> {
        self.open.remove(&id);
        let path = self.segment_path(id);
        std::fs::remove_file(&path).map_err(io("remove", &path))?;
        self.sync_directory()
    }

    fn segment_size(&mut self, id: u32) -> Result<u64> {
        Ok(self.segment(id)?.map.len() as u64)
    }

    fn write(&mut self, id: u32, offset: u32, bytes: &[u8]) -> Result<()> {
        let path = self.segment_path(id);
        let segment = self.segment(id)?;
        assert!(
            u64::from(offset) + bytes.len() as u64 <= segment.map.len() as u64,
            "write past segment end"
        );
        segment.file.write_all_at(bytes, u64::from(offset)).map_err(io("write", &path))
    }

    fn sync(&mut self, id: u32) -> Result<()> {
        let path = self.segment_path(id);
        self.segment(id)?.file.sync_data().map_err(io("fdatasync", &path))
    }

    fn read(&mut self, id: u32, offset: u32, size: usize) -> Result<Bytes> {
        let segment = self.segment(id)?;
        let start = offset as usize;
        let end =
            start.checked_add(size).filter(|&end| end <= segment.map.len()).ok_or_else(|| {
                StoreError::Corrupt {
                    segment: id,
                    offset: u64::from(offset),
                    reason: format!("read of {size} bytes past the segment's end"),
                }
            })?;
        Ok(Bytes::from_owner(MapSlice { map: Arc::clone(&segment.map), start, end }))
    }
}
