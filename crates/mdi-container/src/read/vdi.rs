//! VDI (VirtualBox Disk Image), header version 1.1, dynamic ("normal") and static
//! ("fixed") images; every field is little-endian. Layout as documented in VirtualBox's
//! `VDICore.h`: a 0x40-byte text, the signature 0xBEDA107F at 0x40, then the header with
//! the offsets of the block map and of the data, the disk size and block size. Block map
//! entry `k` is the index of virtual block `k` among the data blocks (each preceded by
//! "block extra" bytes), or 0xFFFFFFFF (never written) / 0xFFFFFFFE (discarded): zeros.
//!
//! Differencing and undo images (which have a parent) are refused.

use super::{any_mapped, le32, le64, read_mapped, Format, Image, Src};
use std::io;

pub(crate) const SIGNATURE: u32 = 0xBEDA_107F;
const VERSION_1_1: u32 = 0x0001_0001;
/// Block map entries at and above this value are not allocated.
const FIRST_FREE: u32 = 0xFFFF_FFFE;

pub(crate) struct Vdi {
    src: Src,
    size: u64,
    block: u64,
    /// File offset of data block 0 (past its extra bytes) and the distance between blocks.
    data: u64,
    stride: u64,
    map: Vec<u32>,
    header: Vec<(&'static str, String)>,
    notes: Vec<String>,
}

/// Header fields (names as in VirtualBox's VDIHEADER1).
fn header_fields(h: &[u8]) -> Vec<(&'static str, String)> {
    let text = |r: std::ops::Range<usize>| String::from_utf8_lossy(&h[r]).trim_end_matches('\0').to_string();
    let uuid = |at: usize| h[at..at + 16].iter().map(|x| format!("{x:02x}")).collect::<String>();
    vec![
        ("szFileInfo", text(0..0x40)),
        ("u32Version", format!("{:#x}", le32(h, 0x44))),
        ("cbHeader", le32(h, 0x48).to_string()),
        ("u32Type", le32(h, 0x4C).to_string()),
        ("fFlags", format!("{:#x}", le32(h, 0x50))),
        ("szComment", text(0x54..0x154)),
        ("offBlocks", le32(h, 0x154).to_string()),
        ("offData", le32(h, 0x158).to_string()),
        ("LegacyGeometry", format!("{}/{}/{}/{}", le32(h, 0x15C), le32(h, 0x160), le32(h, 0x164), le32(h, 0x168))),
        ("cbDisk", le64(h, 0x170).to_string()),
        ("cbBlock", le32(h, 0x178).to_string()),
        ("cbBlockExtra", le32(h, 0x17C).to_string()),
        ("cBlocks", le32(h, 0x180).to_string()),
        ("cBlocksAllocated", le32(h, 0x184).to_string()),
        ("uuidCreate", uuid(0x188)),
        ("uuidModify", uuid(0x198)),
        ("uuidLinkage", uuid(0x1A8)),
        ("uuidParentModify", uuid(0x1B8)),
    ]
}

impl Vdi {
    pub fn open(src: Src) -> io::Result<Self> {
        let mut h = [0u8; 0x1C8];
        src.read(0, &mut h, "the VDI header")?;
        let version = le32(&h, 0x44);
        if version != VERSION_1_1 {
            return Err(src.unsupported(format_args!(
                "VDI version {}.{} is not supported (only 1.1)",
                version >> 16,
                version & 0xFFFF
            )));
        }
        if le32(&h, 0x48) < 0x180 {
            return Err(src.bad("VDI header is too short"));
        }
        match le32(&h, 0x4C) {
            1 | 2 => {}
            3 | 4 => {
                return Err(src.unsupported(
                    "is a VDI undo or differencing image with a parent; \
                     convert needs a self-contained image",
                ))
            }
            t => return Err(src.bad(format_args!("unknown VDI image type {t}"))),
        }
        let map_off = u64::from(le32(&h, 0x154));
        let data_off = u64::from(le32(&h, 0x158));
        let (size, note) = super::whole_sectors(&src, "the VDI disk size", le64(&h, 0x170));
        let block = u64::from(le32(&h, 0x178));
        let extra = u64::from(le32(&h, 0x17C));
        let blocks = u64::from(le32(&h, 0x180));
        if block == 0 || block % 512 != 0 || block > 1 << 28 {
            return Err(src.bad(format_args!("VDI block size {block} is not supported")));
        }
        if blocks.checked_mul(block).is_none_or(|b| b < size) {
            return Err(src.bad(format_args!("VDI has {blocks} blocks of {block} bytes, too few for {size} bytes")));
        }
        let raw = src.table(map_off, blocks * 4, "VDI block map")?;
        let map = raw.chunks_exact(4).map(|e| le32(e, 0)).collect();
        let data = data_off.checked_add(extra).ok_or_else(|| src.bad("VDI data offset overflows"))?;
        Ok(Vdi {
            src,
            size,
            block,
            data,
            stride: block + extra,
            map,
            header: header_fields(&h),
            notes: note.into_iter().collect(),
        })
    }

    fn entry(&self, k: u64) -> io::Result<Option<u64>> {
        let Some(&e) = self.map.get(k as usize) else {
            return Err(self.src.bad("VDI block outside the block map"));
        };
        if e >= FIRST_FREE {
            return Ok(None);
        }
        u64::from(e)
            .checked_mul(self.stride)
            .and_then(|o| o.checked_add(self.data))
            .map(Some)
            .ok_or_else(|| self.src.bad(format_args!("VDI block map entry {e} is out of range")))
    }
}

impl Image for Vdi {
    fn format(&self) -> Format {
        Format::Vdi
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
        read_mapped(&self.src, offset, buf, self.block, "VDI data block", |k| self.entry(k))
    }

    fn maybe_data(&mut self, offset: u64, len: u64) -> io::Result<bool> {
        any_mapped(offset, len, self.block, self.size, |k| self.entry(k))
    }
}
