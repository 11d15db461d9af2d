//! The one I/O seam between writers (filesystems, partition tables) and the output.
//!
//! Writers describe the disk as "these bytes at this offset"; a sink turns that into a raw
//! sparse file or (later) a container format. Contract: every byte range is written at most
//! once, and a range never written reads as zeros, so a sink is free to drop all-zero data
//! (it becomes a hole in a raw file, an unallocated cluster in qcow2).
#![forbid(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Where image bytes go.
pub trait Sink: Send {
    /// Writes `data` at byte `offset` of the virtual disk.
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;

    /// Writes `bufs` one after another from `offset` (file data: no copy into one buffer).
    fn write_vectored_at(&mut self, mut offset: u64, bufs: &[&[u8]]) -> io::Result<()> {
        for b in bufs {
            self.write_at(offset, b)?;
            offset += b.len() as u64;
        }
        Ok(())
    }
}

/// Fault injection for tests: passes the first `budget` writes through to `inner`, then
/// fails every write, as a full or failing disk would. Lets tests prove that a write
/// error anywhere leaves no corrupt output behind.
pub struct FailAfter<S> {
    /// The real sink.
    pub inner: S,
    /// Writes still allowed.
    pub budget: u64,
}

impl<S: Sink> Sink for FailAfter<S> {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        if self.budget == 0 {
            return Err(io::Error::other("injected write fault"));
        }
        self.budget -= 1;
        self.inner.write_at(offset, data)
    }
}

impl<S: Sink + ?Sized> Sink for Box<S> {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        (**self).write_at(offset, data)
    }
    fn write_vectored_at(&mut self, offset: u64, bufs: &[&[u8]]) -> io::Result<()> {
        (**self).write_vectored_at(offset, bufs)
    }
}

/// Granularity at which all-zero data is dropped.
const ZERO_GRAIN: usize = 4096;

/// A raw image in a sparse file: zero runs are never written, so they stay holes.
pub struct RawSink {
    file: File,
    written: u64,
}

impl RawSink {
    /// Wraps a freshly created, empty file.
    pub fn new(file: File) -> Self {
        RawSink { file, written: 0 }
    }

    /// Sets the final length (the tail becomes a hole), flushes and returns the file.
    pub fn finish(self, len: u64) -> io::Result<File> {
        let f = self.finish_unsynced(len)?;
        f.sync_all()?;
        Ok(f)
    }

    /// Sets the final length and returns the file without waiting for the disk, so the
    /// caller can overlap `sync_all` with other work (hashing the image).
    pub fn finish_unsynced(self, len: u64) -> io::Result<File> {
        self.file.set_len(len)?;
        Ok(self.file)
    }

    /// Bytes actually written (non-zero data).
    pub fn bytes_written(&self) -> u64 {
        self.written
    }
}

impl Sink for RawSink {
    fn write_vectored_at(&mut self, offset: u64, bufs: &[&[u8]]) -> io::Result<()> {
        // Data pieces are not scanned for zero grains: callers hand over non-zero data.
        self.pwritev_all(offset, bufs)
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        // Write maximal runs of non-zero grains; skip zero grains.
        let mut i = 0;
        while i < data.len() {
            while i < data.len() && is_zero(&data[i..(i + ZERO_GRAIN).min(data.len())]) {
                i += ZERO_GRAIN;
            }
            if i >= data.len() {
                break;
            }
            let start = i;
            while i < data.len() && !is_zero(&data[i..(i + ZERO_GRAIN).min(data.len())]) {
                i += ZERO_GRAIN;
            }
            let end = i.min(data.len());
            self.file.write_all_at(&data[start..end], offset + start as u64)?;
            self.written += (end - start) as u64;
        }
        Ok(())
    }
}

impl RawSink {
    /// pwritev until everything is written (the kernel may write less than asked).
    fn pwritev_all(&mut self, mut offset: u64, bufs: &[&[u8]]) -> io::Result<()> {
        let mut slices: Vec<io::IoSlice<'_>> = bufs.iter().map(|b| io::IoSlice::new(b)).collect();
        let mut view: &mut [io::IoSlice<'_>] = &mut slices;
        while !view.is_empty() {
            let n = rustix::io::pwritev(&self.file, view, offset)?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            offset += n as u64;
            self.written += n as u64;
            io::IoSlice::advance_slices(&mut view, n);
        }
        Ok(())
    }
}

/// True when every byte is zero (word-at-a-time; this runs over every output byte).
pub fn is_zero(buf: &[u8]) -> bool {
    let (head, body) = buf.split_at(buf.len() % 16);
    head.iter().all(|&b| b == 0)
        && body.chunks_exact(16).all(|c| u128::from_ne_bytes(c.try_into().expect("16 bytes")) == 0)
}

/// Shifts every write by a fixed offset (a partition inside a disk).
pub struct OffsetSink<'a> {
    /// The disk sink.
    pub inner: &'a mut dyn Sink,
    /// Byte offset of the partition.
    pub offset: u64,
}

impl Sink for OffsetSink<'_> {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.inner.write_at(self.offset + offset, data)
    }
    fn write_vectored_at(&mut self, offset: u64, bufs: &[&[u8]]) -> io::Result<()> {
        self.inner.write_vectored_at(self.offset + offset, bufs)
    }
}

/// A disk in memory, growing as it is written (tests, and the readers' fuzzing).
#[derive(Clone, Debug, Default)]
pub struct MemSink(pub Vec<u8>);

impl Sink for MemSink {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::Error::other("offset too large for memory"))?;
        let end = start + data.len();
        if self.0.len() < end {
            self.0.resize(end, 0);
        }
        self.0[start..end].copy_from_slice(data);
        Ok(())
    }
}

/// Positional reads of a disk, a partition or a file: the read side of the seam, used by
/// the readers of partition tables and filesystems (`make-disk-image inspect`).
///
/// Reads take `&self` like `pread`; a source with caches keeps them behind a lock.
pub trait ReadAt {
    /// Bytes readable.
    fn size(&self) -> u64;
    /// Fills `buf` from byte `offset`; reading past [`ReadAt::size`] is an error.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
}

/// The error for a read past the end of a source of `size` bytes.
pub fn past_end(offset: u64, len: usize, size: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("read of {len} bytes at byte {offset} is past the end ({size} bytes)"),
    )
}

impl ReadAt for [u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let start = usize::try_from(offset).ok().filter(|&s| s <= self.len());
        match start.and_then(|s| s.checked_add(buf.len()).map(|e| (s, e))) {
            Some((s, e)) if e <= self.len() => {
                buf.copy_from_slice(&self[s..e]);
                Ok(())
            }
            _ => Err(past_end(offset, buf.len(), self.size())),
        }
    }
}

impl ReadAt for Vec<u8> {
    fn size(&self) -> u64 {
        self.as_slice().size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.as_slice().read_at(offset, buf)
    }
}

impl ReadAt for File {
    fn size(&self) -> u64 {
        self.metadata().map(|m| m.len()).unwrap_or(0)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for &T {
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        (**self).read_at(offset, buf)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for Box<T> {
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        (**self).read_at(offset, buf)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for std::sync::Arc<T> {
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        (**self).read_at(offset, buf)
    }
}

/// `len` bytes of another source from `offset` (a partition of a disk). The window is
/// clipped to the source: a partition table may claim more than the disk has.
pub struct Window<'a> {
    inner: &'a dyn ReadAt,
    offset: u64,
    len: u64,
}

impl<'a> Window<'a> {
    /// The part of `inner` from `offset`, at most `len` bytes.
    pub fn new(inner: &'a dyn ReadAt, offset: u64, len: u64) -> Self {
        let len = len.min(inner.size().saturating_sub(offset));
        Window { inner, offset, len }
    }
}

impl ReadAt for Window<'_> {
    fn size(&self) -> u64 {
        self.len
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        match offset.checked_add(buf.len() as u64) {
            Some(end) if end <= self.len => self.inner.read_at(self.offset + offset, buf),
            _ => Err(past_end(offset, buf.len(), self.len)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[0u8; 4096]));
        let mut b = [0u8; 4097];
        b[4096] = 1;
        assert!(!is_zero(&b));
        b[4096] = 0;
        b[7] = 1;
        assert!(!is_zero(&b));
    }

    #[test]
    fn windows_stay_inside() {
        let disk: Vec<u8> = (0..100u8).collect();
        let w = Window::new(&disk, 90, 50);
        assert_eq!(w.size(), 10);
        let mut b = [0u8; 4];
        w.read_at(6, &mut b).unwrap();
        assert_eq!(b, [96, 97, 98, 99]);
        assert!(w.read_at(7, &mut b).is_err());
        assert!(w.read_at(u64::MAX, &mut b).is_err());
        assert!(disk.read_at(u64::MAX - 1, &mut b).is_err());
    }

    #[test]
    fn raw_sink_leaves_holes() {
        let f = tempfile_in_tmp();
        let mut s = RawSink::new(f.try_clone().unwrap());
        let mut data = vec![0u8; 3 * 4096];
        data[4096] = 9;
        s.write_at(8192, &data).unwrap();
        assert_eq!(s.bytes_written(), 4096);
        let f = s.finish(1 << 20).unwrap();
        let mut back = vec![0u8; 4096];
        f.read_exact_at(&mut back, 8192 + 4096).unwrap();
        assert_eq!(back[0], 9);
    }

    fn tempfile_in_tmp() -> File {
        let p = std::env::temp_dir().join(format!("mdi-sink-test-{}", std::process::id()));
        let f = File::options().read(true).write(true).create(true).truncate(true).open(&p).unwrap();
        std::fs::remove_file(&p).unwrap();
        f
    }
}
