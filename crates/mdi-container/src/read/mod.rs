//! Readers of the image formats, as this crate writes them and as `qemu-img` writes them:
//! the read side of `make-disk-image convert`.
//!
//! Every format maps the virtual disk in fixed-size units (qcow2 clusters, VDI, VHD and
//! VHDX blocks, VMDK grains); a unit that is not allocated reads as zeros. [`open`] tells
//! the format from its magic number; a file without one is read as raw only when it
//! starts like a disk (see [`detect`] for the exact rule), else it is an error naming the
//! format or showing the magic. [`open_as`] with [`Format::Raw`] reads any file as raw.
//!
//! Nothing in an input file is trusted. Every offset and size read from it is checked
//! against the file length with checked arithmetic, tables are capped (never larger than
//! the file, never above [`MAX_TABLE`]), decompressed units have a fixed size, and a corrupt
//! or truncated image gives an [`io::ErrorKind::InvalidData`] error that names the file and
//! what is wrong, never a panic. Features a reader does not implement (backing files,
//! encryption, logs to replay) are refused with an error that says so.

pub mod detect;
mod qcow2;
mod raw;
#[cfg(test)]
mod tests;
mod vdi;
mod vhd;
mod vhdx;
mod vmdk;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// An image format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// The virtual disk byte for byte.
    Raw,
    /// QEMU copy-on-write, versions 2 and 3.
    Qcow2,
    /// VirtualBox disk image.
    Vdi,
    /// Virtual PC / Hyper-V VHD (QEMU calls it "vpc").
    Vpc,
    /// VMware sparse extent (monolithicSparse, streamOptimized).
    Vmdk,
    /// Hyper-V VHDX.
    Vhdx,
}

impl Format {
    /// The name `qemu-img` uses for the format.
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Vdi => "vdi",
            Format::Vpc => "vpc",
            Format::Vmdk => "vmdk",
            Format::Vhdx => "vhdx",
        }
    }
}

impl Format {
    /// Every format, in the order messages list them.
    pub const ALL: [Format; 6] = [Format::Raw, Format::Qcow2, Format::Vdi, Format::Vpc, Format::Vmdk, Format::Vhdx];

    /// The format called `name` (qemu-img's names; "vhd" too).
    pub fn parse(name: &str) -> Option<Format> {
        match name {
            "vhd" => Some(Format::Vpc),
            _ => Format::ALL.into_iter().find(|f| f.name() == name),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An image opened for reading.
pub trait Image: Send {
    /// The format of the file.
    fn format(&self) -> Format;
    /// Size of the virtual disk in bytes.
    fn virtual_size(&self) -> u64;
    /// Reads virtual bytes at `offset` into buf (zeros for unallocated); errors, never
    /// panics, on corrupt input. Reading past the virtual size is an error.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// For fast conversion: whether [offset, offset+len) may contain data (false = surely
    /// zero).
    fn maybe_data(&mut self, offset: u64, len: u64) -> io::Result<bool> {
        let _ = (offset, len);
        Ok(true)
    }
    /// The header fields the reader parsed, by their names in the format's specification,
    /// in file order (for `inspect` and `diff`); empty for raw.
    fn header(&self) -> &[(&'static str, String)] {
        &[]
    }
    /// What the reader decided that the user should know (a size rounded to whole
    /// sectors, a geometry preferred to a size field), as sentences naming the file.
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }
}

/// QEMU counts a container's virtual disk in whole 512-byte sectors, rounding a size
/// field down (`total_sectors = size / BDRV_SECTOR_SIZE` in block/qcow2.c, vdi.c, vpc.c):
/// the readers do the same, so that a conversion equals qemu-img's. Returns the size to
/// use and, when it was rounded, a note for [`Image::notes`].
pub(crate) fn whole_sectors(src: &Src, field: &str, size: u64) -> (u64, Option<String>) {
    let whole = size / 512 * 512;
    let note = (whole != size).then(|| {
        format!(
            "{}: {field} is {size} bytes, not a whole number of 512-byte sectors: read as \
             {whole} bytes, as qemu-img does",
            src.name
        )
    });
    (whole, note)
}

/// Opens an image, telling its format by magic number (see the module documentation for
/// what is taken as raw).
pub fn open(path: &Path) -> io::Result<Box<dyn Image>> {
    open_src(Src::open(path)?)
}

/// Opens an image as the user said: `Some(Format::Raw)` reads the file as a raw disk
/// whatever it starts with; another format must be the one its magic says; None detects.
pub fn open_as(path: &Path, format: Option<Format>) -> io::Result<Box<dyn Image>> {
    let src = Src::open(path)?;
    match format {
        None => open_src(src),
        Some(Format::Raw) => Ok(Box::new(raw::Raw::new(src))),
        Some(want) => {
            let name = src.name.clone();
            let img = open_src(src)?;
            if img.format() != want {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{name}: is a {} image, not {want} (drop --input-format to detect it)", img.format()),
                ));
            }
            Ok(img)
        }
    }
}

/// Opens an image held by any positional reader (an image in memory, for tests and
/// fuzzing); `name` is used in error messages.
pub fn open_from(name: &str, data: Box<dyn mdi_sink::ReadAt + Send + Sync>) -> io::Result<Box<dyn Image>> {
    let len = data.size();
    open_src(Src { data: Backing::Other(data), len, name: name.to_string() })
}

fn open_src(src: Src) -> io::Result<Box<dyn Image>> {
    let mut head = [0u8; 512];
    let n = src.len.min(512) as usize;
    src.read(0, &mut head[..n], "the first sector")?;
    let head = &head[..n];
    let mut tail = [0u8; 8];
    if src.len >= 512 {
        src.read(src.len - 512, &mut tail, "the last sector")?;
    }
    if head.starts_with(b"QFI\xfb") {
        Ok(Box::new(qcow2::Qcow2::open(src)?))
    } else if head.starts_with(b"vhdxfile") {
        Ok(Box::new(vhdx::Vhdx::open(src)?))
    } else if head.starts_with(b"KDMV") {
        Ok(Box::new(vmdk::Vmdk::open(src)?))
    } else if head.len() >= 0x44 && le32(head, 0x40) == vdi::SIGNATURE {
        Ok(Box::new(vdi::Vdi::open(src)?))
    } else if head.starts_with(b"conectix") || &tail == b"conectix" {
        Ok(Box::new(vhd::Vhd::open(src)?))
    } else if head.starts_with(b"# Disk DescriptorFile") {
        Err(src.bad(
            "is a VMDK descriptor with separate extent files, which cannot be read \
             (only single-file sparse VMDKs can)",
        ))
    } else {
        detect::check_raw(&src)?;
        Ok(Box::new(raw::Raw::new(src)))
    }
}

/// Largest metadata table a reader loads into memory.
pub const MAX_TABLE: u64 = 1 << 30;

/// The input file, with bounds-checked reads and errors that name it.
pub(crate) struct Src {
    pub data: Backing,
    pub len: u64,
    name: String,
}

/// Where the image bytes come from.
pub(crate) enum Backing {
    File(File),
    Other(Box<dyn mdi_sink::ReadAt + Send + Sync>),
}

impl Src {
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let meta = file.metadata()?;
        // A block device has no length in its metadata: ask for its end.
        let len = if std::os::unix::fs::FileTypeExt::is_block_device(&meta.file_type()) {
            rustix::fs::seek(&file, rustix::fs::SeekFrom::End(0))?
        } else {
            meta.len()
        };
        Ok(Src { data: Backing::File(file), len, name: path.display().to_string() })
    }

    /// The name used in messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// An `InvalidData` error about this file.
    pub fn bad(&self, msg: impl fmt::Display) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, format!("{}: {msg}", self.name))
    }

    /// An `Unsupported` error about this file.
    pub fn unsupported(&self, msg: impl fmt::Display) -> io::Error {
        io::Error::new(io::ErrorKind::Unsupported, format!("{}: {msg}", self.name))
    }

    /// Reads `buf.len()` bytes at `off`, which must lie inside the file.
    pub fn read(&self, off: u64, buf: &mut [u8], what: &str) -> io::Result<()> {
        match off.checked_add(buf.len() as u64) {
            Some(end) if end <= self.len => match &self.data {
                Backing::File(f) => f.read_exact_at(buf, off),
                Backing::Other(r) => r.read_at(off, buf),
            }
            .map_err(|e| io::Error::new(e.kind(), format!("{}: reading {what}: {e}", self.name))),
            _ => Err(self.bad(format_args!(
                "{what} ({} bytes at offset {off}) lies past the end of the file ({} bytes)",
                buf.len(),
                self.len
            ))),
        }
    }

    /// Loads a table of `len` bytes at `off`, refusing tables larger than the file or
    /// than [`MAX_TABLE`].
    pub fn table(&self, off: u64, len: u64, what: &str) -> io::Result<Vec<u8>> {
        if len > self.len || len > MAX_TABLE {
            return Err(
                self.bad(format_args!("{what} of {len} bytes is larger than the file or than {MAX_TABLE} bytes"))
            );
        }
        let mut v = vec![0u8; len as usize];
        self.read(off, &mut v, what)?;
        Ok(v)
    }

    /// Checks a read of `len` virtual bytes at `offset` against the virtual size.
    pub fn check_range(&self, size: u64, offset: u64, len: usize) -> io::Result<()> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= size => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{}: read of {len} bytes at {offset} is past the end of the virtual disk \
                     ({size} bytes)",
                    self.name
                ),
            )),
        }
    }
}

/// Calls `f(unit index, offset within the unit, piece of buf)` for each unit of `unit`
/// bytes that `[offset, offset + buf.len())` touches. The range must not overflow.
pub(crate) fn for_each_unit(
    offset: u64,
    buf: &mut [u8],
    unit: u64,
    mut f: impl FnMut(u64, u64, &mut [u8]) -> io::Result<()>,
) -> io::Result<()> {
    let mut done = 0usize;
    while done < buf.len() {
        let pos = offset + done as u64;
        let (idx, within) = (pos / unit, pos % unit);
        let n = ((buf.len() - done) as u64).min(unit - within) as usize;
        f(idx, within, &mut buf[done..done + n])?;
        done += n;
    }
    Ok(())
}

/// Reads a block-mapped image (VDI, VHD, VHDX): `entry(k)` is the file offset of block
/// `k`, or None when it is not allocated (it reads as zeros).
pub(crate) fn read_mapped(
    src: &Src,
    offset: u64,
    buf: &mut [u8],
    block: u64,
    what: &str,
    entry: impl Fn(u64) -> io::Result<Option<u64>>,
) -> io::Result<()> {
    for_each_unit(offset, buf, block, |k, w, piece| match entry(k)? {
        None => {
            piece.fill(0);
            Ok(())
        }
        Some(at) => src.read(at.saturating_add(w), piece, what),
    })
}

/// Whether any block of `[offset, offset + len)` of a block-mapped image is allocated.
pub(crate) fn any_mapped(
    offset: u64,
    len: u64,
    block: u64,
    size: u64,
    entry: impl Fn(u64) -> io::Result<Option<u64>>,
) -> io::Result<bool> {
    for k in units(offset, len, block, size) {
        if entry(k)?.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The units of `unit` bytes that `[offset, offset + len)` touches (empty when len is 0),
/// clipped to a virtual disk of `size` bytes.
pub(crate) fn units(offset: u64, len: u64, unit: u64, size: u64) -> std::ops::Range<u64> {
    let end = offset.saturating_add(len).min(size);
    if end <= offset {
        return 0..0;
    }
    offset / unit..(end - 1) / unit + 1
}

/// Metadata tables (qcow2 L2 tables, VMDK grain tables) read on demand and kept by file
/// offset, up to a byte budget; the oldest goes first.
pub(crate) struct TableCache {
    tables: HashMap<u64, Vec<u8>>,
    order: VecDeque<u64>,
    budget: usize,
}

impl TableCache {
    pub fn new(budget: usize) -> Self {
        TableCache { tables: HashMap::new(), order: VecDeque::new(), budget }
    }

    /// The table of `len` bytes at `off` (len is small: the caller has capped it).
    pub fn get(&mut self, src: &Src, off: u64, len: usize, what: &str) -> io::Result<&[u8]> {
        if !self.tables.contains_key(&off) {
            let mut t = vec![0u8; len];
            src.read(off, &mut t, what)?;
            while !self.order.is_empty() && (self.order.len() + 1) * len > self.budget {
                if let Some(old) = self.order.pop_front() {
                    self.tables.remove(&old);
                }
            }
            self.tables.insert(off, t);
            self.order.push_back(off);
        }
        Ok(&self.tables[&off])
    }
}

/// One decompressed unit, kept for the reads that follow into the same unit.
pub(crate) struct LastUnit {
    pub key: Option<u64>,
    pub data: Vec<u8>,
}

impl LastUnit {
    pub fn new() -> Self {
        LastUnit { key: None, data: Vec::new() }
    }
}

pub(crate) fn be32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_be_bytes(a)
}
pub(crate) fn be64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_be_bytes(a)
}
pub(crate) fn le16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}
pub(crate) fn le32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}
pub(crate) fn le64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}
