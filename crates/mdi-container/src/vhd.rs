//! VHD ("vpc"), Microsoft's Virtual Hard Disk Image Format Specification 1.0: a 512-byte
//! big-endian footer, and for dynamic disks a copy of it at 0, a dynamic header and a
//! block allocation table of 2 MiB blocks, each preceded by its sector bitmap.

use crate::store::{Loc, Store};
use crate::{put_u16_be, put_u32_be, put_u64_be, Container};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

const BLOCK: u64 = 2 << 20;
/// Sector bitmap before each block: one bit per 512-byte sector, padded to a sector.
const BITMAP: u64 = BLOCK / 512 / 8;
/// 2000-01-01 00:00:00 UTC, the VHD epoch.
const VHD_EPOCH: i64 = 946_684_800;

/// Where the disk's bytes go.
enum Body {
    /// 2 MiB blocks placed on first write, mapped by the BAT.
    Dynamic(Store),
    /// The disk itself, byte for byte (zero grains left as holes), then the footer.
    Fixed(mdi_sink::RawSink),
}

/// A VHD being written.
pub struct Vhd {
    body: Body,
    fixed: bool,
    time: i64,
    unique_id: [u8; 16],
}

impl Vhd {
    /// A dynamic (`fixed = false`) or fixed VHD; `time` stamps the footer, `unique_id`
    /// identifies the disk.
    pub fn new(file: File, fixed: bool, time: i64, unique_id: [u8; 16]) -> Self {
        let body = if fixed {
            Body::Fixed(mdi_sink::RawSink::new(file))
        } else {
            Body::Dynamic(Store::new(file, BLOCK, BITMAP, 512 + 1024, None))
        };
        Vhd { body, fixed, time, unique_id }
    }

    fn footer_for(fixed: bool, time: i64, unique_id: &[u8; 16], size: u64, data_offset: u64) -> [u8; 512] {
        let mut f = [0u8; 512];
        f[0..8].copy_from_slice(b"conectix"); // cookie
        put_u32_be(&mut f, 8, 2); // features: reserved bit, always set
        put_u32_be(&mut f, 12, 0x0001_0000); // file format version 1.0
        put_u64_be(&mut f, 16, data_offset); // data offset
        put_u32_be(&mut f, 24, (time - VHD_EPOCH).clamp(0, u32::MAX as i64) as u32); // time stamp
                                                                                     // Creator "win ": Hyper-V's semantics, where the current size (not the CHS
                                                                                     // geometry) is the disk size; QEMU and Azure read it that way.
        f[28..32].copy_from_slice(b"win "); // creator application
        put_u32_be(&mut f, 32, 0x000A_0000); // creator version
        f[36..40].copy_from_slice(b"Wi2k"); // creator host OS
        put_u64_be(&mut f, 40, size); // original size
        put_u64_be(&mut f, 48, size); // current size
        let (c, h, s) = chs(size);
        put_u16_be(&mut f, 56, c); // cylinders
        f[58] = h; // heads
        f[59] = s; // sectors per track
        put_u32_be(&mut f, 60, if fixed { 2 } else { 3 }); // disk type
        f[68..84].copy_from_slice(unique_id); // unique id
        let sum = f.iter().fold(0u32, |a, &b| a.wrapping_add(u32::from(b)));
        put_u32_be(&mut f, 64, !sum); // checksum: one's complement of the byte sum
        f
    }
}

/// The CHS geometry of the VHD specification's appendix.
fn chs(size: u64) -> (u16, u8, u8) {
    let total = (size / 512).min(65535 * 16 * 255);
    let (spt, heads, cth);
    if total >= 65535 * 16 * 63 {
        spt = 255;
        heads = 16;
        cth = total / spt;
    } else {
        let mut s = 17;
        let mut c = total / s;
        let mut h = c.div_ceil(1024);
        if h < 4 {
            h = 4;
        }
        if c >= h * 1024 || h > 16 {
            s = 31;
            h = 16;
            c = total / s;
        }
        if c >= h * 1024 {
            s = 63;
            h = 16;
            c = total / s;
        }
        spt = s;
        heads = h;
        cth = c;
    }
    ((cth / heads) as u16, heads as u8, spt as u8)
}

impl mdi_sink::Sink for Vhd {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        match &mut self.body {
            Body::Fixed(raw) => raw.write_at(offset, data),
            Body::Dynamic(store) => store.write(offset, data),
        }
    }
}

impl Container for Vhd {
    fn finish(self: Box<Self>, size: u64) -> io::Result<File> {
        let store = match self.body {
            Body::Fixed(raw) => {
                // Azure wants a whole number of MiB; the padding reads as zeros.
                let size = size.next_multiple_of(1 << 20);
                let footer = Vhd::footer_for(self.fixed, self.time, &self.unique_id, size, u64::MAX);
                let file = raw.finish_unsynced(size + 512)?;
                file.write_all_at(&footer, size)?;
                return Ok(file);
            }
            Body::Dynamic(store) => store,
        };
        let file = store.file.try_clone()?;
        let entries = size.div_ceil(BLOCK);
        let bat_off = store.next.next_multiple_of(512);
        let mut bat = vec![0xFFu8; (entries * 4).next_multiple_of(512) as usize];
        for (&v, loc) in &store.map {
            let Loc::Plain(p) = *loc else { unreachable!("VHD blocks are not compressed") };
            put_u32_be(&mut bat, (v * 4) as usize, ((p - BITMAP) / 512) as u32);
        }
        file.write_all_at(&bat, bat_off)?;
        let mut dh = [0u8; 1024];
        dh[0..8].copy_from_slice(b"cxsparse"); // cookie
        put_u64_be(&mut dh, 8, u64::MAX); // data offset: unused
        put_u64_be(&mut dh, 16, bat_off); // table offset
        put_u32_be(&mut dh, 24, 0x0001_0000); // header version
        put_u32_be(&mut dh, 28, entries as u32); // max table entries
        put_u32_be(&mut dh, 32, BLOCK as u32); // block size
        let sum = dh.iter().fold(0u32, |a, &b| a.wrapping_add(u32::from(b)));
        put_u32_be(&mut dh, 36, !sum); // checksum
        let footer = Vhd::footer_for(self.fixed, self.time, &self.unique_id, size, 512);
        let end = bat_off + bat.len() as u64;
        file.write_all_at(&footer, 0)?;
        file.write_all_at(&dh, 512)?;
        file.write_all_at(&footer, end)?;
        file.set_len(end + 512)?;
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry() {
        // 127 GB and more saturate at 65535/16/255.
        assert_eq!(chs(1 << 40), (65535, 16, 255));
        // A small disk: 17 sectors per track, at least 4 heads.
        assert_eq!(chs(10 << 20), (301, 4, 17));
    }
}
