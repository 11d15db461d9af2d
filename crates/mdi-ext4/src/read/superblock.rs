//! Decoding the superblock (ext4 on-disk layout document, "Super Block") into validated
//! values, plus the named raw fields `diff` compares.

use super::{le16, le32, le64, Error};
use crate::checksum::crc32c_raw;

// Feature bits the reader acts on.
pub(crate) const COMPAT_HAS_JOURNAL: u32 = 0x4;
pub(crate) const INCOMPAT_FILETYPE: u32 = 0x2;
pub(crate) const INCOMPAT_RECOVER: u32 = 0x4;
pub(crate) const INCOMPAT_META_BG: u32 = 0x10;
pub(crate) const INCOMPAT_64BIT: u32 = 0x80;
pub(crate) const INCOMPAT_CSUM_SEED: u32 = 0x2000;
pub(crate) const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
pub(crate) const RO_COMPAT_METADATA_CSUM: u32 = 0x400;
/// RO_COMPAT_BIGALLOC (kernel Documentation/filesystems/ext4/super.rst): blocks are
/// allocated in clusters of 2^s_log_cluster_size KiB; bitmaps and group sizes count
/// clusters, extents still count blocks.
pub(crate) const RO_COMPAT_BIGALLOC: u32 = 0x200;
/// Incompatible features this reader can read: filetype, needs_recovery (the journal is
/// not replayed: said in the problems), meta_bg, extent, 64bit, mmp, flex_bg, ea_inode
/// (such values are refused one by one), csum_seed, large_dir, inline_data (refused per
/// file), encrypt (names shown as stored), casefold.
const INCOMPAT_READABLE: u32 =
    0x2 | 0x4 | 0x10 | 0x40 | 0x80 | 0x100 | 0x200 | 0x400 | 0x2000 | 0x4000 | 0x8000 | 0x10000 | 0x20000;

const COMPAT_NAMES: &[(u32, &str)] = &[
    (0x1, "dir_prealloc"),
    (0x2, "imagic_inodes"),
    (0x4, "has_journal"),
    (0x8, "ext_attr"),
    (0x10, "resize_inode"),
    (0x20, "dir_index"),
    (0x40, "lazy_bg"),
    (0x200, "sparse_super2"),
    (0x400, "fast_commit"),
    (0x800, "stable_inodes"),
    (0x1000, "orphan_file"),
];
const INCOMPAT_NAMES: &[(u32, &str)] = &[
    (0x1, "compression"),
    (0x2, "filetype"),
    (0x4, "needs_recovery"),
    (0x8, "journal_dev"),
    (0x10, "meta_bg"),
    (0x40, "extent"),
    (0x80, "64bit"),
    (0x100, "mmp"),
    (0x200, "flex_bg"),
    (0x400, "ea_inode"),
    (0x1000, "dirdata"),
    (0x2000, "metadata_csum_seed"),
    (0x4000, "large_dir"),
    (0x8000, "inline_data"),
    (0x10000, "encrypt"),
    (0x20000, "casefold"),
];
const RO_COMPAT_NAMES: &[(u32, &str)] = &[
    (0x1, "sparse_super"),
    (0x2, "large_file"),
    (0x4, "btree_dir"),
    (0x8, "huge_file"),
    (0x10, "uninit_bg"),
    (0x20, "dir_nlink"),
    (0x40, "extra_isize"),
    (0x100, "quota"),
    (0x200, "bigalloc"),
    (0x400, "metadata_csum"),
    (0x800, "replica"),
    (0x1000, "read-only"),
    (0x2000, "project"),
    (0x4000, "shared_blocks"),
    (0x8000, "verity"),
    (0x10000, "orphan_present"),
];

/// A decoded, validated superblock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// Block size in bytes (1 KiB to 64 KiB).
    pub block_size: u64,
    /// Allocation cluster in bytes: the block size, or with bigalloc 1024 <<
    /// s_log_cluster_size.
    pub cluster_size: u64,
    /// s_clusters_per_group (with bigalloc; else equal to s_blocks_per_group).
    pub clusters_per_group: u64,
    /// s_blocks_count.
    pub blocks_count: u64,
    /// s_free_blocks_count.
    pub free_blocks: u64,
    /// s_r_blocks_count.
    pub reserved_blocks: u64,
    /// s_inodes_count.
    pub inodes_count: u32,
    /// s_free_inodes_count.
    pub free_inodes: u32,
    /// s_first_data_block.
    pub first_data_block: u64,
    /// s_blocks_per_group.
    pub blocks_per_group: u64,
    /// s_inodes_per_group.
    pub inodes_per_group: u32,
    /// s_inode_size (128 for revision 0).
    pub inode_size: u64,
    /// s_first_ino.
    pub first_ino: u32,
    /// s_feature_compat.
    pub compat: u32,
    /// s_feature_incompat.
    pub incompat: u32,
    /// s_feature_ro_compat.
    pub ro_compat: u32,
    /// s_uuid.
    pub uuid: [u8; 16],
    /// s_volume_name, up to the first NUL.
    pub label: Vec<u8>,
    /// Group descriptor size in bytes.
    pub desc_size: u64,
    /// s_first_meta_bg.
    pub first_meta_bg: u64,
    /// s_state.
    pub state: u16,
    /// s_hash_seed.
    pub hash_seed: [u8; 16],
    /// s_def_hash_version.
    pub def_hash_version: u8,
    /// s_journal_inum.
    pub journal_inum: u32,
    /// s_mkfs_time.
    pub mkfs_time: u32,
    /// s_wtime.
    pub write_time: u32,
    /// s_checksum_seed (metadata_csum_seed).
    pub checksum_seed: u32,
    /// Whether the stored s_checksum matches (true when there is no metadata_csum).
    pub checksum_ok: bool,
    /// Every field by its kernel name, for `diff` (values as text).
    pub fields: Vec<(&'static str, String)>,
    /// The whole 1024-byte record.
    pub raw: Vec<u8>,
}

impl Superblock {
    /// Decodes the 1024-byte record.
    pub fn decode(b: &[u8]) -> Result<Superblock, Error> {
        if b.len() < 1024 || le16(b, 0x38) != 0xEF53 {
            return Err(Error::corrupt("no ext2/3/4 superblock (magic 0xEF53 at byte 1080)"));
        }
        let log = le32(b, 0x18);
        if log > 6 {
            return Err(Error::corrupt(format!("s_log_block_size {log} is above 6 (64 KiB blocks)")));
        }
        let block_size = 1024u64 << log;
        let incompat = le32(b, 0x60);
        let is64 = incompat & INCOMPAT_64BIT != 0;
        let hi = |lo: u64, at: usize| if is64 { lo | (u64::from(le32(b, at)) << 32) } else { lo };
        let rev = le32(b, 0x4C);
        let inode_size = if rev == 0 { 128 } else { u64::from(le16(b, 0x58)) };
        let desc_size = if is64 { u64::from(le16(b, 0xFE)) } else { 32 };
        let ro_compat = le32(b, 0x64);
        let bigalloc = ro_compat & RO_COMPAT_BIGALLOC != 0;
        let log_cluster = le32(b, 0x1C);
        if bigalloc && !(log..=log + 16).contains(&log_cluster) {
            return Err(Error::corrupt(format!(
                "s_log_cluster_size {log_cluster} is not in {log}..={} (clusters of 1 to 65536 blocks)",
                log + 16
            )));
        }
        let sb = Superblock {
            block_size,
            cluster_size: if bigalloc { 1024u64 << log_cluster } else { block_size },
            clusters_per_group: if bigalloc { u64::from(le32(b, 0x24)) } else { u64::from(le32(b, 0x20)) },
            blocks_count: hi(u64::from(le32(b, 0x04)), 0x150),
            free_blocks: hi(u64::from(le32(b, 0x0C)), 0x158),
            reserved_blocks: hi(u64::from(le32(b, 0x08)), 0x154),
            inodes_count: le32(b, 0x00),
            free_inodes: le32(b, 0x10),
            first_data_block: u64::from(le32(b, 0x14)),
            blocks_per_group: u64::from(le32(b, 0x20)),
            inodes_per_group: le32(b, 0x28),
            inode_size,
            first_ino: if rev == 0 { 11 } else { le32(b, 0x54) },
            compat: le32(b, 0x5C),
            incompat,
            ro_compat: le32(b, 0x64),
            uuid: b[0x68..0x78].try_into().expect("16 bytes"),
            label: b[0x78..0x88].split(|&c| c == 0).next().unwrap_or_default().to_vec(),
            desc_size,
            first_meta_bg: u64::from(le32(b, 0x104)),
            state: le16(b, 0x3A),
            hash_seed: b[0xEC..0xFC].try_into().expect("16 bytes"),
            def_hash_version: b[0xFC],
            journal_inum: le32(b, 0xE0),
            mkfs_time: le32(b, 0x108),
            write_time: le32(b, 0x30),
            checksum_seed: le32(b, 0x270),
            checksum_ok: le32(b, 0x64) & RO_COMPAT_METADATA_CSUM == 0 || crc32c_raw(!0, &b[..0x3FC]) == le32(b, 0x3FC),
            fields: fields(b),
            raw: b[..1024].to_vec(),
        };
        sb.validate()?;
        Ok(sb)
    }

    fn validate(&self) -> Result<(), Error> {
        let unknown = self.incompat & !INCOMPAT_READABLE;
        if unknown != 0 {
            return Err(Error::Unsupported(format!(
                "incompatible features {} ({unknown:#x}) cannot be read",
                names(unknown, INCOMPAT_NAMES, 'I').join(" ")
            )));
        }
        let bs = self.block_size;
        // One bitmap block maps a group: 8 × block size clusters (blocks without bigalloc).
        if self.clusters_per_group == 0 || self.clusters_per_group > 8 * bs {
            return Err(Error::corrupt(format!(
                "s_clusters_per_group {} is not in 1..={}",
                self.clusters_per_group,
                8 * bs
            )));
        }
        let ratio = self.cluster_size / bs;
        if self.blocks_per_group != self.clusters_per_group * ratio {
            return Err(Error::corrupt(format!(
                "s_blocks_per_group {} is not s_clusters_per_group {} × {ratio} blocks per cluster",
                self.blocks_per_group, self.clusters_per_group
            )));
        }
        if self.inodes_per_group == 0 || u64::from(self.inodes_per_group) > 8 * bs {
            return Err(Error::corrupt(format!(
                "s_inodes_per_group {} is not in 1..={}",
                self.inodes_per_group,
                8 * bs
            )));
        }
        if self.inode_size < 128 || self.inode_size > bs || !self.inode_size.is_power_of_two() {
            return Err(Error::corrupt(format!(
                "s_inode_size {} is not a power of two in 128..={bs}",
                self.inode_size
            )));
        }
        if self.desc_size < 32 || self.desc_size > 1024 || !self.desc_size.is_power_of_two() {
            return Err(Error::corrupt(format!("s_desc_size {} is not a power of two in 32..=1024", self.desc_size)));
        }
        if self.first_data_block >= self.blocks_count {
            return Err(Error::corrupt(format!(
                "s_first_data_block {} is not below s_blocks_count {}",
                self.first_data_block, self.blocks_count
            )));
        }
        if self.blocks_count > 1 << 48 {
            return Err(Error::corrupt(format!("s_blocks_count {} is above 2^48", self.blocks_count)));
        }
        let max_inodes = self.groups().saturating_mul(u64::from(self.inodes_per_group));
        if u64::from(self.inodes_count) > max_inodes {
            return Err(Error::corrupt(format!(
                "s_inodes_count {} is more than {} groups of {} inodes",
                self.inodes_count,
                self.groups(),
                self.inodes_per_group
            )));
        }
        if self.first_ino < 11 && self.inodes_count >= 11 {
            return Err(Error::corrupt(format!("s_first_ino {} is below 11", self.first_ino)));
        }
        Ok(())
    }

    /// Block groups (validated: blocks_count > first_data_block, blocks_per_group > 0).
    pub fn groups(&self) -> u64 {
        (self.blocks_count - self.first_data_block).div_ceil(self.blocks_per_group)
    }

    /// The type blkid reports: ext4 when a feature beyond ext3's is set, ext3 with a
    /// journal, else ext2.
    pub fn fs_type(&self) -> &'static str {
        // ext3's supported sets (e2fsprogs' EXT3_FEATURE_*_SUPP).
        let ext3_incompat = INCOMPAT_FILETYPE | INCOMPAT_RECOVER | INCOMPAT_META_BG;
        let ext3_ro = RO_COMPAT_SPARSE_SUPER | 0x2 | 0x4;
        if self.incompat & !ext3_incompat != 0 || self.ro_compat & !ext3_ro != 0 {
            "ext4"
        } else if self.compat & COMPAT_HAS_JOURNAL != 0 {
            "ext3"
        } else {
            "ext2"
        }
    }

    /// Feature names in dumpe2fs order (compat, incompat, ro_compat, each by bit).
    pub fn features(&self) -> Vec<String> {
        let mut v = names(self.compat, COMPAT_NAMES, 'C');
        v.extend(names(self.incompat, INCOMPAT_NAMES, 'I'));
        v.extend(names(self.ro_compat, RO_COMPAT_NAMES, 'R'));
        v
    }

    /// The seed of every metadata checksum.
    pub fn csum_seed(&self) -> u32 {
        if self.incompat & INCOMPAT_CSUM_SEED != 0 {
            self.checksum_seed
        } else {
            crate::checksum::fs_seed(&self.uuid)
        }
    }

    /// Whether metadata_csum is on.
    pub fn metadata_csum(&self) -> bool {
        self.ro_compat & RO_COMPAT_METADATA_CSUM != 0
    }

    /// Whether group `g` holds a superblock backup.
    pub fn has_super(&self, g: u64) -> bool {
        self.ro_compat & RO_COMPAT_SPARSE_SUPER == 0 || crate::geometry::has_super(g)
    }
}

fn names(bits: u32, table: &[(u32, &str)], tag: char) -> Vec<String> {
    (0..32)
        .map(|i| 1u32 << i)
        .filter(|b| bits & b != 0)
        .map(|b| match table.iter().find(|(v, _)| *v == b) {
            Some((_, n)) => (*n).to_string(),
            None => format!("FEATURE_{tag}{}", b.trailing_zeros()),
        })
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The superblock's fields by kernel name (struct ext4_super_block).
fn fields(b: &[u8]) -> Vec<(&'static str, String)> {
    let u32f = |n: &'static str, o: usize| (n, le32(b, o).to_string());
    let u16f = |n: &'static str, o: usize| (n, le16(b, o).to_string());
    let u8f = |n: &'static str, o: usize| (n, b[o].to_string());
    let text = |r: std::ops::Range<usize>| {
        String::from_utf8_lossy(b[r].split(|&c| c == 0).next().unwrap_or_default()).into_owned()
    };
    let mut f = vec![
        u32f("s_inodes_count", 0x0),
        u32f("s_blocks_count_lo", 0x4),
        u32f("s_r_blocks_count_lo", 0x8),
        u32f("s_free_blocks_count_lo", 0xC),
        u32f("s_free_inodes_count", 0x10),
        u32f("s_first_data_block", 0x14),
        u32f("s_log_block_size", 0x18),
        u32f("s_log_cluster_size", 0x1C),
        u32f("s_blocks_per_group", 0x20),
        u32f("s_clusters_per_group", 0x24),
        u32f("s_inodes_per_group", 0x28),
        u32f("s_mtime", 0x2C),
        u32f("s_wtime", 0x30),
        u16f("s_mnt_count", 0x34),
        u16f("s_max_mnt_count", 0x36),
        u16f("s_state", 0x3A),
        u16f("s_errors", 0x3C),
        u16f("s_minor_rev_level", 0x3E),
        u32f("s_lastcheck", 0x40),
        u32f("s_checkinterval", 0x44),
        u32f("s_creator_os", 0x48),
        u32f("s_rev_level", 0x4C),
        u16f("s_def_resuid", 0x50),
        u16f("s_def_resgid", 0x52),
        u32f("s_first_ino", 0x54),
        u16f("s_inode_size", 0x58),
        u16f("s_block_group_nr", 0x5A),
        ("s_feature_compat", format!("{:#x}", le32(b, 0x5C))),
        ("s_feature_incompat", format!("{:#x}", le32(b, 0x60))),
        ("s_feature_ro_compat", format!("{:#x}", le32(b, 0x64))),
        ("s_uuid", hex(&b[0x68..0x78])),
        ("s_volume_name", text(0x78..0x88)),
        ("s_last_mounted", text(0x88..0xC8)),
        u32f("s_algorithm_usage_bitmap", 0xC8),
        u8f("s_prealloc_blocks", 0xCC),
        u8f("s_prealloc_dir_blocks", 0xCD),
        u16f("s_reserved_gdt_blocks", 0xCE),
        ("s_journal_uuid", hex(&b[0xD0..0xE0])),
        u32f("s_journal_inum", 0xE0),
        u32f("s_journal_dev", 0xE4),
        u32f("s_last_orphan", 0xE8),
        ("s_hash_seed", hex(&b[0xEC..0xFC])),
        u8f("s_def_hash_version", 0xFC),
        u8f("s_jnl_backup_type", 0xFD),
        u16f("s_desc_size", 0xFE),
        ("s_default_mount_opts", format!("{:#x}", le32(b, 0x100))),
        u32f("s_first_meta_bg", 0x104),
        u32f("s_mkfs_time", 0x108),
        ("s_jnl_blocks", hex(&b[0x10C..0x150])),
        u32f("s_blocks_count_hi", 0x150),
        u32f("s_r_blocks_count_hi", 0x154),
        u32f("s_free_blocks_count_hi", 0x158),
        u16f("s_min_extra_isize", 0x15C),
        u16f("s_want_extra_isize", 0x15E),
        ("s_flags", format!("{:#x}", le32(b, 0x160))),
        u16f("s_raid_stride", 0x164),
        u16f("s_mmp_interval", 0x166),
        ("s_mmp_block", le64(b, 0x168).to_string()),
        u32f("s_raid_stripe_width", 0x170),
        u8f("s_log_groups_per_flex", 0x174),
        u8f("s_checksum_type", 0x175),
        ("s_kbytes_written", le64(b, 0x178).to_string()),
        u32f("s_error_count", 0x194),
        u32f("s_first_error_time", 0x198),
        u32f("s_last_error_time", 0x1CC),
        ("s_mount_opts", text(0x200..0x240)),
        u32f("s_usr_quota_inum", 0x240),
        u32f("s_grp_quota_inum", 0x244),
        u32f("s_overhead_blocks", 0x248),
        ("s_encrypt_algos", hex(&b[0x254..0x258])),
        ("s_encrypt_pw_salt", hex(&b[0x258..0x268])),
        u32f("s_lpf_ino", 0x268),
        u32f("s_prj_quota_inum", 0x26C),
        ("s_checksum_seed", format!("{:#x}", le32(b, 0x270))),
        u16f("s_encoding", 0x27C),
        u16f("s_encoding_flags", 0x27E),
        u32f("s_orphan_file_inum", 0x280),
    ];
    // Anything else in the record (reserved space), so no byte goes uncompared.
    let rest = &b[0x284..0x3FC];
    if rest.iter().any(|&c| c != 0) {
        f.push(("s_reserved", hex(rest)));
    }
    f.push(("s_checksum", format!("{:#x}", le32(b, 0x3FC))));
    f
}
