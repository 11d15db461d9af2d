//! VHDX, Microsoft's "[MS-VHDX]: Virtual Hard Disk v2 (VHDX) File Format" specification;
//! every field is little-endian, GUIDs in their mixed-endian on-disk form.
//!
//! The first 1 MiB holds the file type identifier ("vhdxfile"), two headers at 64 and
//! 128 KiB (the valid one, by signature "head" and CRC-32C, with the higher sequence number
//! is current) and two copies of the region table at 192 and 256 KiB ("regi"), which
//! locates the block allocation table (BAT) and the metadata region. The metadata gives
//! the block size, the virtual disk size and the logical sector size, from which follows
//! the chunk ratio: after every `chunk ratio` payload block entries the BAT holds one
//! sector bitmap entry. A payload BAT entry has the block state in bits 0-2 and the file
//! offset in MiB in bits 20-63; FULLY_PRESENT (6) and PARTIALLY_PRESENT (7) blocks are
//! read from the file, every other state reads as zeros.
//!
//! Refused: images with a parent (differencing) and images whose log must be replayed
//! (non-zero log GUID in the current header), as well as unknown required regions and
//! metadata items.

use super::{any_mapped, le16, le32, le64, read_mapped, Format, Image, Src};
use std::io;

const KIB: u64 = 1024;
const MIB: u64 = 1 << 20;

/// A GUID as the specification writes it, in its on-disk byte order.
const fn guid(a: u32, b: u16, c: u16, d: [u8; 8]) -> [u8; 16] {
    let (a, b, c) = (a.to_le_bytes(), b.to_le_bytes(), c.to_le_bytes());
    [a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]
}

const BAT_REGION: [u8; 16] = guid(0x2DC2_7766, 0xF623, 0x4200, [0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08]);
const METADATA_REGION: [u8; 16] = guid(0x8B7C_A206, 0x4790, 0x4B9A, [0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88, 0x6E]);
const FILE_PARAMETERS: [u8; 16] = guid(0xCAA1_6737, 0xFA36, 0x4D43, [0xB3, 0xB6, 0x33, 0xF0, 0xAA, 0x44, 0xE7, 0x6B]);
const VIRTUAL_DISK_SIZE: [u8; 16] = guid(0x2FA5_4224, 0xCD1B, 0x4876, [0xB2, 0x11, 0x5D, 0xBE, 0xD8, 0x3B, 0xF4, 0xB8]);
const VIRTUAL_DISK_ID: [u8; 16] = guid(0xBECA_12AB, 0xB2E6, 0x4523, [0x93, 0xEF, 0xC3, 0x09, 0xE0, 0x00, 0xC7, 0x46]);
const LOGICAL_SECTOR_SIZE: [u8; 16] =
    guid(0x8141_BF1D, 0xA96F, 0x4709, [0xBA, 0x47, 0xF2, 0x33, 0xA8, 0xFA, 0xAB, 0x5F]);
const PHYSICAL_SECTOR_SIZE: [u8; 16] =
    guid(0xCDA3_48C7, 0x445D, 0x4471, [0x9C, 0xC9, 0xE9, 0x88, 0x52, 0x51, 0xC5, 0x56]);
const PARENT_LOCATOR: [u8; 16] = guid(0xA8D3_5F2D, 0xB30B, 0x454D, [0xAB, 0xF7, 0xD3, 0xD8, 0x48, 0x34, 0xAB, 0x0C]);

/// CRC-32C (Castagnoli) of `data` with the 4 bytes at `skip` (the checksum field) taken
/// as zeros; it guards headers and region tables.
pub(super) fn crc32c_skipping(data: &[u8], skip: usize) -> u32 {
    let c = crc32c::crc32c(&data[..skip]);
    let c = crc32c::crc32c_append(c, &[0; 4]);
    crc32c::crc32c_append(c, &data[skip + 4..])
}

/// Payload block states that have data in the file.
const FULLY_PRESENT: u64 = 6;
const PARTIALLY_PRESENT: u64 = 7;

pub(crate) struct Vhdx {
    src: Src,
    size: u64,
    block: u64,
    chunk_ratio: u64,
    bat: Vec<u64>,
    header: Vec<(&'static str, String)>,
}

/// A GUID in its usual text form from its on-disk (mixed-endian) bytes.
fn guid_text(b: &[u8]) -> String {
    format!(
        "{:08x}-{:04x}-{:04x}-{}",
        le32(b, 0),
        le16(b, 4),
        le16(b, 6),
        b[8..16]
            .iter()
            .enumerate()
            .map(|(i, x)| if i == 2 { format!("-{x:02x}") } else { format!("{x:02x}") })
            .collect::<String>()
    )
}

impl Vhdx {
    pub fn open(src: Src) -> io::Result<Self> {
        // Headers: the valid one with the higher sequence number.
        let mut current: Option<(u64, Vec<u8>)> = None;
        for at in [64 * KIB, 128 * KIB] {
            let mut h = vec![0u8; 4096];
            src.read(at, &mut h, "a VHDX header")?;
            if !h.starts_with(b"head") || le32(&h, 4) != crc32c_skipping(&h, 4) {
                continue;
            }
            let seq = le64(&h, 8);
            if current.as_ref().is_none_or(|(s, _)| seq > *s) {
                current = Some((seq, h));
            }
        }
        let Some((_, h)) = current else {
            return Err(src.bad("no valid VHDX header"));
        };
        let mut ident = vec![0u8; 520];
        src.read(0, &mut ident, "the VHDX file type identifier")?;
        let creator: Vec<u16> = ident[8..520].chunks_exact(2).map(|c| le16(c, 0)).take_while(|&u| u != 0).collect();
        let mut header = vec![
            ("Creator", String::from_utf16_lossy(&creator)),
            ("SequenceNumber", le64(&h, 8).to_string()),
            ("FileWriteGuid", guid_text(&h[16..32])),
            ("DataWriteGuid", guid_text(&h[32..48])),
            ("LogGuid", guid_text(&h[48..64])),
            ("LogVersion", le16(&h, 64).to_string()),
            ("Version", le16(&h, 66).to_string()),
            ("LogLength", le32(&h, 68).to_string()),
            ("LogOffset", le64(&h, 72).to_string()),
        ];
        if le16(&h, 66) != 1 {
            return Err(src.unsupported(format_args!("VHDX version {} is not supported", le16(&h, 66))));
        }
        if h[48..64].iter().any(|&b| b != 0) {
            return Err(src.unsupported(
                "has a VHDX log that must be replayed first \
                 (opening it read-write once, e.g. with `qemu-img check -r all`, does that)",
            ));
        }

        // Region table: the first valid copy.
        let mut regions = None;
        for at in [192 * KIB, 256 * KIB] {
            let mut r = vec![0u8; (64 * KIB) as usize];
            src.read(at, &mut r, "a VHDX region table")?;
            if r.starts_with(b"regi") && le32(&r, 4) == crc32c_skipping(&r, 4) {
                regions = Some(r);
                break;
            }
        }
        let Some(r) = regions else {
            return Err(src.bad("no valid VHDX region table"));
        };
        let count = le32(&r, 8) as usize;
        if count > 2047 {
            return Err(src.bad(format_args!("VHDX region table has {count} entries")));
        }
        let (mut bat_region, mut meta_region) = (None, None);
        for e in r[16..].chunks_exact(32).take(count) {
            let id: [u8; 16] = e[..16].try_into().expect("16 bytes");
            let place = (le64(e, 16), u64::from(le32(e, 24)));
            header.push((
                "Region",
                format!("{} at {} length {} required {}", guid_text(&id), place.0, place.1, le32(e, 28) & 1),
            ));
            if id == BAT_REGION {
                bat_region = Some(place);
            } else if id == METADATA_REGION {
                meta_region = Some(place);
            } else if le32(e, 28) & 1 != 0 {
                return Err(src.unsupported("has an unknown required VHDX region"));
            }
        }
        let (Some(bat_region), Some((meta_off, meta_len))) = (bat_region, meta_region) else {
            return Err(src.bad("VHDX region table lacks the BAT or the metadata region"));
        };

        // Metadata.
        // The metadata table is the region's first 64 KiB; items are read one by one.
        let meta = src.table(meta_off, meta_len.min(64 * KIB), "VHDX metadata table")?;
        if meta.len() < 32 || !meta.starts_with(b"metadata") {
            return Err(src.bad("VHDX metadata table not found"));
        }
        let items = le16(&meta, 10) as usize;
        if items > 2047 {
            return Err(src.bad(format_args!("VHDX metadata table has {items} entries")));
        }
        let (mut params, mut size, mut lss) = (None, None, None);
        for e in meta[32..].chunks_exact(32).take(items) {
            let id: [u8; 16] = e[..16].try_into().expect("16 bytes");
            let (off, len) = (u64::from(le32(e, 16)), u64::from(le32(e, 20)));
            if off.checked_add(len).is_none_or(|end| end > meta_len) {
                return Err(src.bad("VHDX metadata item lies outside its region"));
            }
            // Only the fixed-size items below are used: read at most their 16 bytes.
            let mut item = vec![0u8; len.min(16) as usize];
            let at = meta_off.checked_add(off).ok_or_else(|| src.bad("VHDX metadata item offset overflows"))?;
            src.read(at, &mut item, "a VHDX metadata item")?;
            let item = &item[..];
            let need = |n: usize| {
                if item.len() < n {
                    Err(src.bad("VHDX metadata item is too short"))
                } else {
                    Ok(())
                }
            };
            match id {
                FILE_PARAMETERS => {
                    need(8)?;
                    params = Some((u64::from(le32(item, 0)), le32(item, 4)));
                }
                VIRTUAL_DISK_SIZE => {
                    need(8)?;
                    size = Some(le64(item, 0));
                }
                LOGICAL_SECTOR_SIZE => {
                    need(4)?;
                    lss = Some(u64::from(le32(item, 0)));
                }
                PARENT_LOCATOR => {
                    return Err(src.unsupported(
                        "is a differencing VHDX with a parent; \
                         convert needs a self-contained image",
                    ))
                }
                VIRTUAL_DISK_ID => {
                    need(16)?;
                    header.push(("VirtualDiskId", guid_text(item)));
                }
                PHYSICAL_SECTOR_SIZE => {
                    need(4)?;
                    header.push(("PhysicalSectorSize", le32(item, 0).to_string()));
                }
                _ if le32(e, 24) & 4 != 0 => {
                    return Err(src.unsupported("has an unknown required VHDX metadata item"));
                }
                _ => {}
            }
        }
        let (Some((block, flags)), Some(size), Some(lss)) = (params, size, lss) else {
            return Err(src.bad("VHDX metadata lacks the block size, disk size or sector size"));
        };
        if flags & 2 != 0 {
            return Err(src.unsupported("is a differencing VHDX with a parent; convert needs a self-contained image"));
        }
        if !block.is_power_of_two() || !(MIB..=256 * MIB).contains(&block) {
            return Err(src.bad(format_args!("VHDX block size {block} is not supported")));
        }
        if lss != 512 && lss != 4096 {
            return Err(src.bad(format_args!("VHDX logical sector size {lss} is not supported")));
        }
        if size > 64 << 40 {
            return Err(src.bad(format_args!("VHDX disk size {size} is above 64 TiB")));
        }
        let chunk_ratio = (1 << 23) * lss / block;
        header.extend([
            ("BlockSize", block.to_string()),
            ("FileParametersFlags", flags.to_string()),
            ("VirtualDiskSize", size.to_string()),
            ("LogicalSectorSize", lss.to_string()),
        ]);

        // BAT: entries up to the last payload block's.
        let blocks = size.div_ceil(block);
        let entries = if blocks == 0 { 0 } else { blocks + (blocks - 1) / chunk_ratio };
        if entries * 8 > bat_region.1 {
            return Err(src.bad("VHDX BAT region is too small for the disk size"));
        }
        let raw = src.table(bat_region.0, entries * 8, "VHDX BAT")?;
        let bat = raw.chunks_exact(8).map(|e| le64(e, 0)).collect();
        Ok(Vhdx { src, size, block, chunk_ratio, bat, header })
    }

    /// The file offset of payload block `k`, or None when it reads as zeros.
    fn entry(&self, k: u64) -> io::Result<Option<u64>> {
        let Some(&e) = self.bat.get((k + k / self.chunk_ratio) as usize) else {
            return Err(self.src.bad("VHDX block outside the BAT"));
        };
        match e & 7 {
            FULLY_PRESENT | PARTIALLY_PRESENT => match (e >> 20).checked_mul(MIB) {
                Some(off) if off != 0 => Ok(Some(off)),
                _ => Err(self.src.bad(format_args!("VHDX payload block {k} has an invalid file offset"))),
            },
            // NOT_PRESENT, UNDEFINED, ZERO, UNMAPPED.
            0..=3 => Ok(None),
            s => Err(self.src.bad(format_args!("VHDX payload block state {s} is invalid"))),
        }
    }
}

impl Image for Vhdx {
    fn format(&self) -> Format {
        Format::Vhdx
    }

    fn header(&self) -> &[(&'static str, String)] {
        &self.header
    }

    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.src.check_range(self.size, offset, buf.len())?;
        read_mapped(&self.src, offset, buf, self.block, "VHDX payload block", |k| self.entry(k))
    }

    fn maybe_data(&mut self, offset: u64, len: u64) -> io::Result<bool> {
        any_mapped(offset, len, self.block, self.size, |k| self.entry(k))
    }
}
