//! VHD ("vpc"), Microsoft's Virtual Hard Disk Image Format Specification 1.0; every field
//! is big-endian.
//!
//! A 512-byte footer ends the file (cookie "conectix"; dynamic disks also keep a copy at
//! offset 0). The virtual size is the footer's "current size". A fixed disk (type 2) is the
//! virtual disk followed by the footer. A dynamic disk (type 3) has a dynamic header
//! (cookie "cxsparse") at the footer's data offset, with the block allocation table (BAT)
//! offset, entry count and block size (2 MiB by default). A BAT entry is the sector at
//! which the block's sector bitmap starts, the block's data following the bitmap, or
//! 0xFFFFFFFF for a block never written (zeros). As QEMU does for disks without a parent,
//! the data of an allocated block is read whatever its bitmap says.
//!
//! Differencing disks (type 4, with a parent) are refused.

use super::{be32, be64, read_mapped, units, Format, Image, Src};
use std::io;

const UNALLOCATED: u32 = 0xFFFF_FFFF;

pub(crate) struct Vhd {
    src: Src,
    size: u64,
    /// None for a fixed disk.
    dynamic: Option<Dynamic>,
}

struct Dynamic {
    block: u64,
    /// Bytes of sector bitmap before each block's data.
    bitmap: u64,
    bat: Vec<u32>,
}

impl Vhd {
    pub fn open(src: Src) -> io::Result<Self> {
        let mut f = [0u8; 512];
        if src.len >= 512 {
            src.read(src.len - 512, &mut f, "the VHD footer")?;
        }
        if !f.starts_with(b"conectix") {
            // Only the copy at the start survives.
            src.read(0, &mut f, "the VHD footer copy")?;
        }
        if !f.starts_with(b"conectix") {
            return Err(src.bad("VHD footer not found"));
        }
        let size = be64(&f, 48);
        match be32(&f, 60) {
            2 => {
                if size > src.len - 512 {
                    return Err(src.bad(format_args!("fixed VHD of {size} bytes is larger than its file")));
                }
                Ok(Vhd { src, size, dynamic: None })
            }
            3 => {
                let dyn_off = be64(&f, 16);
                let mut d = [0u8; 1024];
                src.read(dyn_off, &mut d, "the VHD dynamic header")?;
                if !d.starts_with(b"cxsparse") {
                    return Err(src.bad("VHD dynamic header not found"));
                }
                let bat_off = be64(&d, 16);
                let entries = u64::from(be32(&d, 28));
                let block = u64::from(be32(&d, 32));
                if block == 0 || block % 512 != 0 || block > 1 << 28 {
                    return Err(src.bad(format_args!("VHD block size {block} is not supported")));
                }
                if entries.checked_mul(block).is_none_or(|b| b < size) {
                    return Err(
                        src.bad(format_args!("VHD has {entries} blocks of {block} bytes, too few for {size} bytes"))
                    );
                }
                // Entries past the virtual size are never consulted.
                let need = size.div_ceil(block);
                let raw = src.table(bat_off, need * 4, "VHD block allocation table")?;
                let bat = raw.chunks_exact(4).map(|e| be32(e, 0)).collect();
                Ok(Vhd {
                    src,
                    size,
                    dynamic: Some(Dynamic { block, bitmap: (block / 512).div_ceil(8).next_multiple_of(512), bat }),
                })
            }
            4 => Err(src.unsupported("is a differencing VHD with a parent; convert needs a self-contained image")),
            t => Err(src.bad(format_args!("unknown VHD disk type {t}"))),
        }
    }
}

impl Dynamic {
    fn entry(&self, src: &Src, k: u64) -> io::Result<Option<u64>> {
        match self.bat.get(k as usize) {
            None => Err(src.bad("VHD block outside the allocation table")),
            Some(&UNALLOCATED) => Ok(None),
            Some(&e) => Ok(Some(u64::from(e) * 512 + self.bitmap)),
        }
    }
}

impl Image for Vhd {
    fn format(&self) -> Format {
        Format::Vpc
    }

    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.src.check_range(self.size, offset, buf.len())?;
        let src = &self.src;
        let Some(d) = &self.dynamic else {
            return src.read(offset, buf, "VHD data");
        };
        read_mapped(src, offset, buf, d.block, "VHD data block", |k| d.entry(src, k))
    }

    fn maybe_data(&mut self, offset: u64, len: u64) -> io::Result<bool> {
        let Some(d) = &self.dynamic else {
            let end = offset.saturating_add(len).min(self.size);
            return Ok(super::raw::file_has_data(&self.src, offset, end.saturating_sub(offset)));
        };
        for k in units(offset, len, d.block, self.size) {
            if d.entry(&self.src, k)?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }
}
