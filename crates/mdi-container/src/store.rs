//! Unit allocation shared by the formats: virtual unit → place in the output file.

use mdi_sink::is_zero;
use rayon::prelude::*;
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Where a virtual unit's bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loc {
    /// Uncompressed at this file offset.
    Plain(u64),
    /// Compressed: `len` bytes at file offset `off`.
    Compressed { off: u64, len: u64 },
}

/// Compresses unit number `v` (its bytes); None when compression does not pay (it is
/// then stored plain). The output may carry format framing (VMDK's grain marker).
pub type Compressor = fn(u64, &[u8]) -> io::Result<Option<Vec<u8>>>;
/// Undoes a [`Compressor`] (for a unit written to again after it was compressed).
pub type Decompressor = fn(&[u8], usize) -> io::Result<Vec<u8>>;

/// Unit allocation and placement.
pub struct Store {
    pub file: File,
    /// Unit size in bytes.
    pub unit: u64,
    /// Bytes before each unit's data in the file (VHD's sector bitmap); filled with 0xFF.
    pub prefix: u64,
    /// Next free byte of the file.
    pub next: u64,
    pub map: HashMap<u64, Loc>,
    compress: Option<(Compressor, Decompressor)>,
    cache: HashMap<u64, Vec<u8>>,
    fifo: VecDeque<u64>,
    /// Alignment of each compressed unit in the file (1: packed, as qcow2 allows).
    pub compressed_align: u64,
    /// Space left before the last plain unit when it was aligned past packed compressed
    /// data: later compressed units that fit go there (as QEMU's byte allocator keeps
    /// filling its partly used cluster), instead of the space being lost.
    hole: Option<(u64, u64)>,
}

/// Units kept in memory before a batch is compressed (compressed formats only).
const CACHE_UNITS: usize = 1024;
/// Units compressed per batch.
const BATCH_UNITS: usize = 256;

impl Store {
    pub fn new(
        file: File,
        unit: u64,
        prefix: u64,
        data_start: u64,
        compress: Option<(Compressor, Decompressor)>,
    ) -> Self {
        Store {
            file,
            unit,
            prefix,
            next: data_start,
            map: HashMap::new(),
            compress,
            cache: HashMap::new(),
            fifo: VecDeque::new(),
            compressed_align: 1,
            hole: None,
        }
    }

    fn alloc_plain(&mut self) -> io::Result<u64> {
        // Plain units are unit-aligned relative to the data area (qcow2 needs cluster
        // alignment; compressed data before them may have left the cursor unaligned).
        let start = self.next.next_multiple_of(if self.compress.is_some() { self.unit } else { 1 });
        if start > self.next && self.compressed_align == 1 {
            self.hole = Some((self.next, start));
        }
        if self.prefix > 0 {
            self.file.write_all_at(&vec![0xFF; self.prefix as usize], start)?;
        }
        self.next = start + self.prefix + self.unit;
        Ok(start + self.prefix)
    }

    /// Writes `data` at virtual byte `offset`; all-zero pieces are dropped.
    pub fn write(&mut self, mut offset: u64, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let v = offset / self.unit;
            let within = (offset % self.unit) as usize;
            let n = data.len().min(self.unit as usize - within);
            let piece = &data[..n];
            if !is_zero(piece) {
                if self.compress.is_some() {
                    self.write_cached(v, within, piece)?;
                } else {
                    let at = match self.map.get(&v) {
                        Some(Loc::Plain(p)) => *p,
                        _ => {
                            let p = self.alloc_plain()?;
                            self.map.insert(v, Loc::Plain(p));
                            p
                        }
                    };
                    self.file.write_all_at(piece, at + within as u64)?;
                }
            }
            offset += n as u64;
            data = &data[n..];
        }
        Ok(())
    }

    fn write_cached(&mut self, v: u64, within: usize, piece: &[u8]) -> io::Result<()> {
        if !self.cache.contains_key(&v) {
            let mut buf = vec![0u8; self.unit as usize];
            match self.map.remove(&v) {
                // Written again after it left the cache: bring it back. The old bytes stay
                // in the file unreferenced (refcount 0), which qcow2 allows.
                Some(Loc::Compressed { off, len }) => {
                    if std::env::var_os("MDI_TRACE").is_some() {
                        eprintln!("[container] unit {v} written again after compression ({len} bytes left behind)");
                    }
                    let mut c = vec![0u8; len as usize];
                    self.file.read_exact_at(&mut c, off)?;
                    let (_, d) = self.compress.expect("compressed store");
                    buf = d(&c, self.unit as usize)?;
                }
                Some(Loc::Plain(p)) => self.file.read_exact_at(&mut buf, p)?,
                None => {}
            }
            self.cache.insert(v, buf);
            self.fifo.push_back(v);
        }
        self.cache.get_mut(&v).expect("inserted")[within..within + piece.len()].copy_from_slice(piece);
        if self.cache.len() > CACHE_UNITS {
            self.evict(BATCH_UNITS)?;
        }
        Ok(())
    }

    /// Compresses the `n` oldest cached units in parallel and appends them in order.
    fn evict(&mut self, n: usize) -> io::Result<()> {
        let (c, _) = self.compress.expect("compressed store");
        let units: Vec<(u64, Vec<u8>)> = (0..n.min(self.fifo.len()))
            .map(|_| {
                let v = self.fifo.pop_front().expect("counted");
                (v, self.cache.remove(&v).expect("cached"))
            })
            .collect();
        let packed: Vec<io::Result<Option<Vec<u8>>>> = units.par_iter().map(|(v, d)| c(*v, d)).collect();
        for ((v, raw), z) in units.iter().zip(packed) {
            match z? {
                Some(z) if (z.len() as u64) < self.unit || self.compressed_align > 1 => {
                    let len = z.len() as u64;
                    let off = match self.hole {
                        Some((start, end)) if end - start >= len => {
                            self.hole = Some((start + len, end));
                            start
                        }
                        _ => {
                            self.next = self.next.next_multiple_of(self.compressed_align);
                            self.next += len;
                            self.next - len
                        }
                    };
                    self.file.write_all_at(&z, off)?;
                    self.map.insert(*v, Loc::Compressed { off, len });
                }
                _ => {
                    let p = self.alloc_plain()?;
                    self.file.write_all_at(raw, p)?;
                    self.map.insert(*v, Loc::Plain(p));
                }
            }
        }
        Ok(())
    }

    /// Flushes every cached unit.
    pub fn flush(&mut self) -> io::Result<()> {
        while !self.fifo.is_empty() {
            self.evict(BATCH_UNITS)?;
        }
        Ok(())
    }
}
