//! VHD ("vpc"), Microsoft's Virtual Hard Disk Image Format Specification 1.0; every field
//! is big-endian.
//!
//! A 512-byte footer ends the file (cookie "conectix"; dynamic disks also keep a copy at
//! offset 0). The virtual size is the footer's "current size", except for disks made by
//! Virtual PC (see [`virtual_size`]). A fixed disk (type 2) is the
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
    header: Vec<(&'static str, String)>,
    notes: Vec<String>,
}

/// The largest geometry of the VHD specification's CHS algorithm (appendix "CHS
/// Calculation"): 65535 cylinders, 16 heads, 255 sectors per track.
const MAX_GEOMETRY: u64 = 65535 * 16 * 255;

/// The size of the virtual disk, as QEMU (10) decides it in block/vpc.c: Virtual PC
/// ("vpc ") and old QEMU ("qemu") sized their disks by the CHS geometry and wrote a larger
/// current size, so for them the disk is cylinders × heads × sectors × 512 bytes, unless
/// the geometry is the largest one (the disk did not fit in it and the size field is the
/// only truth). Every other creator (Hyper-V "win ", "qem2", Disk2vhd, Xen, Azure, us)
/// means the current size. Returns the size and a note when the geometry was used.
fn virtual_size(src: &Src, f: &[u8]) -> (u64, Vec<String>) {
    let current = be64(f, 48);
    let chs = u64::from(u16::from_be_bytes([f[56], f[57]])) * u64::from(f[58]) * u64::from(f[59]);
    let creator = &f[28..32];
    let mut notes = Vec::new();
    let size = if (creator == b"vpc " || creator == b"qemu") && chs != MAX_GEOMETRY {
        let size = chs * 512;
        if size != current {
            notes.push(format!(
                "{}: made by \"{}\", which sizes a disk by its CHS geometry: virtual size {size} bytes \
                 ({}/{}/{}), not the current size field ({current} bytes), as qemu-img does",
                src.name(),
                String::from_utf8_lossy(creator),
                u16::from_be_bytes([f[56], f[57]]),
                f[58],
                f[59]
            ));
        }
        size
    } else {
        current
    };
    let (size, note) = super::whole_sectors(src, "the VHD current size", size);
    notes.extend(note);
    (size, notes)
}

/// Footer fields (names as in the VHD specification).
fn footer_fields(f: &[u8]) -> Vec<(&'static str, String)> {
    vec![
        ("features", format!("{:#x}", be32(f, 8))),
        ("file_format_version", format!("{:#x}", be32(f, 12))),
        ("data_offset", format!("{:#x}", be64(f, 16))),
        ("time_stamp", be32(f, 24).to_string()),
        ("creator_application", text(&f[28..32])),
        ("creator_version", format!("{:#x}", be32(f, 32))),
        ("creator_host_os", text(&f[36..40])),
        ("original_size", be64(f, 40).to_string()),
        ("current_size", be64(f, 48).to_string()),
        ("disk_geometry", format!("{}/{}/{}", u16::from_be_bytes([f[56], f[57]]), f[58], f[59])),
        ("disk_type", be32(f, 60).to_string()),
        ("checksum", format!("{:#x}", be32(f, 64))),
        ("unique_id", hex(&f[68..84])),
        ("saved_state", f[84].to_string()),
    ]
}

/// Dynamic header fields.
fn dynamic_fields(d: &[u8]) -> Vec<(&'static str, String)> {
    vec![
        ("dyn.data_offset", format!("{:#x}", be64(d, 8))),
        ("dyn.table_offset", format!("{:#x}", be64(d, 16))),
        ("dyn.header_version", format!("{:#x}", be32(d, 24))),
        ("dyn.max_table_entries", be32(d, 28).to_string()),
        ("dyn.block_size", be32(d, 32).to_string()),
        ("dyn.checksum", format!("{:#x}", be32(d, 36))),
        ("dyn.parent_unique_id", hex(&d[40..56])),
    ]
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim_end_matches(['\0', ' ']).to_string()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
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
        let (size, notes) = virtual_size(&src, &f);
        match be32(&f, 60) {
            2 => {
                if size > src.len - 512 {
                    return Err(src.bad(format_args!("fixed VHD of {size} bytes is larger than its file")));
                }
                Ok(Vhd { src, size, dynamic: None, header: footer_fields(&f), notes })
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
                let mut header = footer_fields(&f);
                header.extend(dynamic_fields(&d));
                Ok(Vhd {
                    src,
                    size,
                    dynamic: Some(Dynamic { block, bitmap: (block / 512).div_ceil(8).next_multiple_of(512), bat }),
                    header,
                    notes,
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

    fn header(&self) -> &[(&'static str, String)] {
        &self.header
    }

    fn notes(&self) -> Vec<String> {
        self.notes.clone()
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
