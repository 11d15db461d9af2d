//! Raw images: the file is the virtual disk. Holes of a sparse file are found with
//! `lseek(SEEK_DATA)` (POSIX.1-2024), so converting skips them without reading.
//!
//! A disk is made of 512-byte sectors. QEMU's block layer counts a file's sectors
//! rounding up (`DIV_ROUND_UP(length, BDRV_SECTOR_SIZE)`), so a raw file of 2,182 bytes is
//! a disk of 2,560 bytes whose last 378 read as zeros; this reader does the same, so that a
//! conversion keeps every byte and equals `qemu-img convert -O raw`, and says so in
//! [`Image::notes`].

use super::{Format, Image, Src};
use std::io;

pub(crate) struct Raw {
    src: Src,
}

impl Raw {
    pub fn new(src: Src) -> Self {
        Raw { src }
    }
}

impl Raw {
    /// The file length rounded up to whole sectors.
    fn size(&self) -> u64 {
        self.src.len.div_ceil(512).saturating_mul(512)
    }
}

impl Image for Raw {
    fn format(&self) -> Format {
        Format::Raw
    }

    fn virtual_size(&self) -> u64 {
        self.size()
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.src.check_range(self.size(), offset, buf.len())?;
        // The part past the end of the file is the padding of the last sector.
        let in_file = self.src.len.saturating_sub(offset).min(buf.len() as u64) as usize;
        let (data, pad) = buf.split_at_mut(in_file);
        pad.fill(0);
        self.src.read(offset, data, "data")
    }

    fn notes(&self) -> Vec<String> {
        let len = self.src.len;
        if len % 512 == 0 {
            return Vec::new();
        }
        vec![format!(
            "{}: the file is {len} bytes, not a whole number of 512-byte sectors: read as a \
             disk of {} bytes whose last {} bytes are zeros, as qemu-img does",
            self.src.name(),
            self.size(),
            self.size() - len
        )]
    }

    fn maybe_data(&mut self, offset: u64, len: u64) -> io::Result<bool> {
        Ok(file_has_data(&self.src, offset, len))
    }
}

/// Whether bytes `[offset, offset + len)` of the file may hold data, by `SEEK_DATA`.
pub(crate) fn file_has_data(src: &Src, offset: u64, len: u64) -> bool {
    if len == 0 || offset >= src.len {
        return false;
    }
    let super::Backing::File(file) = &src.data else {
        return true;
    };
    match rustix::fs::seek(file, rustix::fs::SeekFrom::Data(offset)) {
        Ok(next) => next < offset.saturating_add(len),
        // No data at or after `offset`.
        Err(rustix::io::Errno::NXIO) => false,
        // The filesystem cannot tell: assume data.
        Err(_) => true,
    }
}
