//! Block group descriptors, 64 bytes each with the 64bit feature (ext4 on-disk layout
//! document, "Block Group Descriptors").

use crate::bytes::{hi32, lo32, put_u16, put_u32};
use crate::checksum::crc32c_raw;
use crate::geometry::DESC_SIZE;

/// bg_flags: the inode table is known to be zeroed (EXT4_BG_INODE_ZEROED).
const BG_INODE_ZEROED: u16 = 0x4;
/// Offset of bg_checksum.
const BG_CHECKSUM: usize = 0x1E;

/// One group's descriptor values.
#[derive(Clone, Debug, Default)]
pub struct GroupDesc {
    pub block_bitmap: u64,
    pub inode_bitmap: u64,
    pub inode_table: u64,
    pub free_blocks: u32,
    pub free_inodes: u32,
    pub used_dirs: u32,
    pub itable_unused: u32,
    pub block_bitmap_csum: u32,
    pub inode_bitmap_csum: u32,
}

impl GroupDesc {
    /// Encodes descriptor `group` into `out` (64 bytes) with its checksum.
    pub fn encode(&self, group: u32, fs_seed: u32, out: &mut [u8]) {
        let b = &mut out[..DESC_SIZE as usize];
        b.fill(0);
        put_u32(b, 0x00, lo32(self.block_bitmap)); // bg_block_bitmap_lo
        put_u32(b, 0x04, lo32(self.inode_bitmap)); // bg_inode_bitmap_lo
        put_u32(b, 0x08, lo32(self.inode_table)); // bg_inode_table_lo
        put_u16(b, 0x0C, self.free_blocks as u16); // bg_free_blocks_count_lo
        put_u16(b, 0x0E, self.free_inodes as u16); // bg_free_inodes_count_lo
        put_u16(b, 0x10, self.used_dirs as u16); // bg_used_dirs_count_lo
        put_u16(b, 0x12, BG_INODE_ZEROED); // bg_flags
        put_u16(b, 0x18, self.block_bitmap_csum as u16); // bg_block_bitmap_csum_lo
        put_u16(b, 0x1A, self.inode_bitmap_csum as u16); // bg_inode_bitmap_csum_lo
        put_u16(b, 0x1C, self.itable_unused as u16); // bg_itable_unused_lo
        put_u32(b, 0x20, hi32(self.block_bitmap)); // bg_block_bitmap_hi
        put_u32(b, 0x24, hi32(self.inode_bitmap)); // bg_inode_bitmap_hi
        put_u32(b, 0x28, hi32(self.inode_table)); // bg_inode_table_hi
        put_u16(b, 0x2C, (self.free_blocks >> 16) as u16); // bg_free_blocks_count_hi
        put_u16(b, 0x2E, (self.free_inodes >> 16) as u16); // bg_free_inodes_count_hi
        put_u16(b, 0x30, (self.used_dirs >> 16) as u16); // bg_used_dirs_count_hi
        put_u16(b, 0x32, (self.itable_unused >> 16) as u16); // bg_itable_unused_hi
        put_u16(b, 0x38, (self.block_bitmap_csum >> 16) as u16); // bg_block_bitmap_csum_hi
        put_u16(b, 0x3A, (self.inode_bitmap_csum >> 16) as u16); // bg_inode_bitmap_csum_hi
                                                                 // metadata_csum: crc32c(fs seed, group number, descriptor with bg_checksum zeroed),
                                                                 // low 16 bits.
        let s = crc32c_raw(fs_seed, &group.to_le_bytes());
        let s = crc32c_raw(s, b);
        put_u16(b, BG_CHECKSUM, s as u16);
    }
}
