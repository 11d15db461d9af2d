//! Fixed geometry and block-group arithmetic (ext4 on-disk layout document, "Blocks" and
//! "Block Groups"): 4 KiB blocks, 32768 blocks per group, sparse_super backups.

/// Block size in bytes. Every ext4 we write uses 4 KiB blocks (docs/design.md §4.2).
pub const BLOCK_SIZE: u64 = 4096;
/// Block size as usize.
pub const BS: usize = 4096;
/// Blocks per group: one block bitmap block covers 8 * 4096 blocks.
pub const BLOCKS_PER_GROUP: u64 = 8 * BLOCK_SIZE;
/// Inode record size in bytes.
pub const INODE_SIZE: u64 = 256;
/// Inodes per inode-table block.
pub const INODES_PER_BLOCK: u64 = BLOCK_SIZE / INODE_SIZE;
/// Group descriptor size with the 64bit feature.
pub const DESC_SIZE: u64 = 64;
/// Descriptors per GDT block.
pub const DESCS_PER_BLOCK: u64 = BLOCK_SIZE / DESC_SIZE;
/// Most inodes one group can have: its inode bitmap is one block.
pub const MAX_INODES_PER_GROUP: u64 = 8 * BLOCK_SIZE;
/// log2(groups per flex group); mke2fs's default of 16.
pub const LOG_GROUPS_PER_FLEX: u8 = 4;
/// The largest reserved-GDT count the resize inode can map (one indirect block).
pub const MAX_RESERVED_GDT: u64 = BLOCK_SIZE / 4;

/// A block number in the filesystem.
pub type Block = u64;

/// Whether group `g` holds a superblock backup under sparse_super: groups 0, 1 and the
/// powers of 3, 5 and 7.
pub fn has_super(g: u64) -> bool {
    if g <= 1 {
        return true;
    }
    [3u64, 5, 7].iter().any(|&b| {
        let mut p = b;
        while p < g {
            p *= b;
        }
        p == g
    })
}

/// Backup groups (1, 3, 5, 7, 9, 25, 27, …) below `groups`, ascending.
pub fn backup_groups(groups: u64) -> Vec<u64> {
    let mut v = Vec::new();
    for b in [3u64, 5, 7] {
        let mut p = b;
        while p < groups {
            v.push(p);
            p *= b;
        }
    }
    if groups > 1 {
        v.push(1);
    }
    v.sort_unstable();
    v
}

/// GDT blocks for `groups` groups.
pub fn desc_blocks(groups: u64) -> u64 {
    groups.div_ceil(DESCS_PER_BLOCK)
}

/// mke2fs's rule for reserved GDT blocks: enough descriptors to grow the filesystem to
/// 1024 times its size, capped by 2^32 blocks and by what one indirect block can map.
pub fn reserved_gdt_for(blocks: u64) -> u64 {
    let max_blocks = blocks.saturating_mul(1024).min(1 << 32);
    let rsv_groups = max_blocks.div_ceil(BLOCKS_PER_GROUP);
    let groups = blocks.div_ceil(BLOCKS_PER_GROUP);
    (desc_blocks(rsv_groups).saturating_sub(desc_blocks(groups))).min(MAX_RESERVED_GDT)
}

/// Journal size in blocks for a filesystem of `blocks` blocks: e2fsprogs'
/// `ext2fs_default_journal_size` table, with JBD2's minimum of 1024 blocks.
pub fn journal_blocks_for(blocks: u64) -> u64 {
    match blocks {
        b if b < 32768 => 1024,
        b if b < 256 * 1024 => 4096,
        b if b < 512 * 1024 => 8192,
        b if b < 4096 * 1024 => 16384,
        b if b < 8192 * 1024 => 32768,
        b if b < 16384 * 1024 => 65536,
        b if b < 32768 * 1024 => 131072,
        _ => 262144,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_super_groups() {
        let want = [0, 1, 3, 5, 7, 9, 25, 27, 49, 81, 125, 243, 343];
        let got: Vec<u64> = (0..400).filter(|&g| has_super(g)).collect();
        assert_eq!(got, want);
        assert_eq!(backup_groups(50), vec![1, 3, 5, 7, 9, 25, 27, 49]);
    }

    #[test]
    fn reserved_gdt_matches_mke2fs_examples() {
        // 1 GiB: 8 groups → growth to 8192 groups needs 128 GDT blocks, 1 is used.
        assert_eq!(reserved_gdt_for(262144), 127);
        // Huge filesystems are capped by the 2^32-block limit and the indirect block.
        assert_eq!(reserved_gdt_for(1 << 30), 1024);
    }
}
