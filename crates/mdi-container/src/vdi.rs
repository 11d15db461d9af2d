//! VDI (VirtualBox), version 1.1, dynamic: a 512-byte little-endian header, 1 MiB blocks,
//! and a block map of 32-bit entries. The data comes first and the block map after it,
//! since the number of blocks is known only at the end (the header points at both).

use crate::store::{Loc, Store};
use crate::{put_u32_le, put_u64_le, Container};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

const BLOCK: u64 = 1 << 20;
const HEADER: u64 = 512;
/// Block map entry of a block that was never written (VDI_UNALLOCATED).
const UNALLOCATED: u32 = 0xFFFF_FFFF;

/// A VDI being written.
pub struct Vdi {
    store: Store,
    uuid_image: [u8; 16],
    uuid_last_snap: [u8; 16],
}

impl Vdi {
    /// Starts an image; the UUIDs identify it (derive them from the seed).
    pub fn new(file: File, uuid_image: [u8; 16], uuid_last_snap: [u8; 16]) -> Self {
        Vdi { store: Store::new(file, BLOCK, 0, HEADER, None), uuid_image, uuid_last_snap }
    }
}

impl mdi_sink::Sink for Vdi {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.store.write(offset, data)
    }
}

impl Container for Vdi {
    fn finish(self: Box<Self>, size: u64) -> io::Result<File> {
        let file = self.store.file.try_clone()?;
        let blocks = size.div_ceil(BLOCK);
        let bmap_off = self.store.next.next_multiple_of(512);
        let mut bmap = vec![0u8; (blocks * 4).next_multiple_of(512) as usize];
        for b in 0..blocks {
            put_u32_le(&mut bmap, (b * 4) as usize, UNALLOCATED);
        }
        for (&v, loc) in &self.store.map {
            let Loc::Plain(p) = *loc else { unreachable!("VDI blocks are not compressed") };
            put_u32_le(&mut bmap, (v * 4) as usize, ((p - HEADER) / BLOCK) as u32);
        }
        file.write_all_at(&bmap, bmap_off)?;
        let mut h = [0u8; HEADER as usize];
        let text = b"<<< QEMU VM Virtual Disk Image >>>\n";
        h[..text.len()].copy_from_slice(text); // pre-header text (what QEMU writes)
        put_u32_le(&mut h, 0x40, 0xBEDA_107F); // signature
        put_u32_le(&mut h, 0x44, 0x0001_0001); // version 1.1
        put_u32_le(&mut h, 0x48, 0x180); // header size
        put_u32_le(&mut h, 0x4C, 1); // image type: dynamic
        put_u32_le(&mut h, 0x154, bmap_off as u32); // offset of the block map
        put_u32_le(&mut h, 0x158, HEADER as u32); // offset of the data
        put_u32_le(&mut h, 0x168, 512); // sector size
        put_u64_le(&mut h, 0x170, size); // disk size
        put_u32_le(&mut h, 0x178, BLOCK as u32); // block size
        put_u32_le(&mut h, 0x180, blocks as u32); // blocks in image
        put_u32_le(&mut h, 0x184, self.store.map.len() as u32); // blocks allocated
        h[0x188..0x198].copy_from_slice(&self.uuid_image); // image UUID
        h[0x198..0x1A8].copy_from_slice(&self.uuid_last_snap); // last snapshot UUID
        file.write_all_at(&h, 0)?;
        file.set_len(bmap_off + bmap.len() as u64)?;
        Ok(file)
    }
}
