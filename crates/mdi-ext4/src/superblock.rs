//! The superblock (ext4 on-disk layout document, "Super Block"): 1024 bytes at byte 1024
//! of the filesystem, and copies at the start of each sparse_super backup group.

use crate::bytes::{hi32, lo32, put_u16, put_u32, put_u8};
use crate::checksum::crc32c_raw;
use crate::geometry::{BLOCKS_PER_GROUP, INODE_SIZE, LOG_GROUPS_PER_FLEX};

/// Size of the superblock record.
pub const SIZE: usize = 1024;
/// Offset of `s_checksum`.
const S_CHECKSUM: usize = 0x3FC;

// s_feature_compat
const COMPAT_HAS_JOURNAL: u32 = 0x4;
const COMPAT_EXT_ATTR: u32 = 0x8;
const COMPAT_RESIZE_INODE: u32 = 0x10;
const COMPAT_DIR_INDEX: u32 = 0x20;
// s_feature_incompat
const INCOMPAT_FILETYPE: u32 = 0x2;
const INCOMPAT_EXTENTS: u32 = 0x40;
const INCOMPAT_64BIT: u32 = 0x80;
const INCOMPAT_FLEX_BG: u32 = 0x200;
// s_feature_ro_compat
const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
const RO_COMPAT_LARGE_FILE: u32 = 0x2;
const RO_COMPAT_HUGE_FILE: u32 = 0x8;
const RO_COMPAT_DIR_NLINK: u32 = 0x20;
const RO_COMPAT_EXTRA_ISIZE: u32 = 0x40;
const RO_COMPAT_METADATA_CSUM: u32 = 0x400;

/// The values a superblock is made of.
#[derive(Clone, Debug)]
pub struct Superblock {
    pub inodes_count: u32,
    pub blocks_count: u64,
    pub free_blocks: u64,
    pub free_inodes: u32,
    pub inodes_per_group: u32,
    pub time: u32,
    pub uuid: [u8; 16],
    pub label: [u8; 16],
    pub reserved_gdt_blocks: u16,
    pub hash_seed: [u32; 4],
    /// `s_jnl_blocks`: the journal inode's i_block words, then i_size_high, i_size.
    pub jnl_blocks: [u32; 17],
}

impl Superblock {
    /// Encodes the record for group `group` (0 for the primary) with its checksum.
    pub fn encode(&self, group: u16) -> [u8; SIZE] {
        let mut b = [0u8; SIZE];
        put_u32(&mut b, 0x00, self.inodes_count); // s_inodes_count
        put_u32(&mut b, 0x04, lo32(self.blocks_count)); // s_blocks_count_lo
        put_u32(&mut b, 0x08, 0); // s_r_blocks_count_lo: no root reserve
        put_u32(&mut b, 0x0C, lo32(self.free_blocks)); // s_free_blocks_count_lo
        put_u32(&mut b, 0x10, self.free_inodes); // s_free_inodes_count
        put_u32(&mut b, 0x14, 0); // s_first_data_block: 0 with 4 KiB blocks
        put_u32(&mut b, 0x18, 2); // s_log_block_size: 1024 << 2
        put_u32(&mut b, 0x1C, 2); // s_log_cluster_size
        put_u32(&mut b, 0x20, BLOCKS_PER_GROUP as u32); // s_blocks_per_group
        put_u32(&mut b, 0x24, BLOCKS_PER_GROUP as u32); // s_clusters_per_group
        put_u32(&mut b, 0x28, self.inodes_per_group); // s_inodes_per_group
        put_u32(&mut b, 0x2C, 0); // s_mtime: never mounted
        put_u32(&mut b, 0x30, self.time); // s_wtime
        put_u16(&mut b, 0x34, 0); // s_mnt_count
        put_u16(&mut b, 0x36, 0xFFFF); // s_max_mnt_count: -1, no forced checks
        put_u16(&mut b, 0x38, 0xEF53); // s_magic
        put_u16(&mut b, 0x3A, 1); // s_state: cleanly unmounted
        put_u16(&mut b, 0x3C, 1); // s_errors: continue
        put_u32(&mut b, 0x40, self.time); // s_lastcheck
        put_u32(&mut b, 0x48, 0); // s_creator_os: Linux
        put_u32(&mut b, 0x4C, 1); // s_rev_level: dynamic
        put_u32(&mut b, 0x54, 11); // s_first_ino
        put_u16(&mut b, 0x58, INODE_SIZE as u16); // s_inode_size
        put_u16(&mut b, 0x5A, group); // s_block_group_nr
        put_u32(&mut b, 0x5C, COMPAT_HAS_JOURNAL | COMPAT_EXT_ATTR | COMPAT_RESIZE_INODE | COMPAT_DIR_INDEX);
        put_u32(&mut b, 0x60, INCOMPAT_FILETYPE | INCOMPAT_EXTENTS | INCOMPAT_64BIT | INCOMPAT_FLEX_BG);
        put_u32(
            &mut b,
            0x64,
            RO_COMPAT_SPARSE_SUPER
                | RO_COMPAT_LARGE_FILE
                | RO_COMPAT_HUGE_FILE
                | RO_COMPAT_DIR_NLINK
                | RO_COMPAT_EXTRA_ISIZE
                | RO_COMPAT_METADATA_CSUM,
        );
        b[0x68..0x78].copy_from_slice(&self.uuid); // s_uuid
        b[0x78..0x88].copy_from_slice(&self.label); // s_volume_name
        put_u16(&mut b, 0xCE, self.reserved_gdt_blocks); // s_reserved_gdt_blocks
        put_u32(&mut b, 0xE0, 8); // s_journal_inum
        for (i, w) in self.hash_seed.iter().enumerate() {
            put_u32(&mut b, 0xEC + 4 * i, *w); // s_hash_seed
        }
        put_u8(&mut b, 0xFC, 1); // s_def_hash_version: half_md4
        put_u8(&mut b, 0xFD, 1); // s_jnl_backup_type: EXT3_JNL_BACKUP_BLOCKS
        put_u16(&mut b, 0xFE, 64); // s_desc_size
        put_u32(&mut b, 0x100, 0x000C); // s_default_mount_opts: user_xattr | acl
        put_u32(&mut b, 0x108, self.time); // s_mkfs_time
        for (i, w) in self.jnl_blocks.iter().enumerate() {
            put_u32(&mut b, 0x10C + 4 * i, *w); // s_jnl_blocks
        }
        put_u32(&mut b, 0x150, hi32(self.blocks_count)); // s_blocks_count_hi
        put_u32(&mut b, 0x158, hi32(self.free_blocks)); // s_free_blocks_count_hi
        put_u16(&mut b, 0x15C, 32); // s_min_extra_isize
        put_u16(&mut b, 0x15E, 32); // s_want_extra_isize
        put_u32(&mut b, 0x160, 0x2); // s_flags: EXT2_FLAGS_UNSIGNED_HASH
        put_u8(&mut b, 0x174, LOG_GROUPS_PER_FLEX); // s_log_groups_per_flex
        put_u8(&mut b, 0x175, 1); // s_checksum_type: crc32c
        let csum = crc32c_raw(!0, &b[..S_CHECKSUM]);
        put_u32(&mut b, S_CHECKSUM, csum); // s_checksum
        b
    }
}
