//! Raw images: the file is the virtual disk. Holes of a sparse file are found with
//! `lseek(SEEK_DATA)` (POSIX.1-2024), so converting skips them without reading.

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

impl Image for Raw {
    fn format(&self) -> Format {
        Format::Raw
    }

    fn virtual_size(&self) -> u64 {
        self.src.len
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.src.check_range(self.src.len, offset, buf.len())?;
        self.src.read(offset, buf, "data")
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
