//! Filesystems recognised by their superblock only: btrfs, XFS, EROFS and squashfs. Their
//! type, label, UUID and size are shown (as blkid shows them); their files are not read.
//!
//! Every field is read from a fixed offset of a buffer whose length was checked, and every
//! product is checked: a damaged superblock gives None or odd numbers, never a panic.

use crate::fs::Info;
use mdi_sink::ReadAt;

fn le16(b: &[u8], o: usize) -> u64 {
    u64::from(u16::from_le_bytes([b[o], b[o + 1]]))
}
fn le32(b: &[u8], o: usize) -> u64 {
    u64::from(u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]))
}
fn le64(b: &[u8], o: usize) -> u64 {
    le32(b, o) | (le32(b, o + 4) << 32)
}
fn be16(b: &[u8], o: usize) -> u64 {
    u64::from(u16::from_be_bytes([b[o], b[o + 1]]))
}
fn be32(b: &[u8], o: usize) -> u64 {
    u64::from(u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]))
}
fn be64(b: &[u8], o: usize) -> u64 {
    (be32(b, o) << 32) | be32(b, o + 4)
}

/// A UUID as blkid prints it: lower-case with dashes.
fn uuid(b: &[u8]) -> String {
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// A NUL-padded label.
fn label(b: &[u8]) -> String {
    String::from_utf8_lossy(b.split(|&c| c == 0).next().unwrap_or_default()).into_owned()
}

fn read(dev: &dyn ReadAt, off: u64, len: usize) -> Option<Vec<u8>> {
    let end = off.checked_add(len as u64)?;
    if end > dev.size() {
        return None;
    }
    let mut b = vec![0u8; len];
    dev.read_at(off, &mut b).ok()?;
    Some(b)
}

fn info(kind: &str, version: &str, label: String, uuid: String, block: u64, blocks: u64, free: Option<u64>) -> Info {
    let size = block.saturating_mul(blocks);
    Info {
        kind: kind.into(),
        version: version.into(),
        label,
        uuid,
        block_size: block,
        cluster_size: None,
        blocks,
        free_blocks: free.unwrap_or(0),
        inodes: None,
        free_inodes: None,
        size,
        used: free.map_or(size, |f| blocks.saturating_sub(f).saturating_mul(block)),
        features: Vec::new(),
        fields: Vec::new(),
        problems: vec![format!("{kind} is recognised by its superblock only: its files are not read")],
    }
}

/// The filesystem whose superblock `dev` holds, when it is one of those above.
pub fn identify(dev: &dyn ReadAt) -> Option<Info> {
    // btrfs: struct btrfs_super_block at 64 KiB (kernel fs/btrfs/accessors.h, ctree.h):
    // fsid @0x20, magic "_BHRfS_M" @0x40, total_bytes @0x70, bytes_used @0x78,
    // sectorsize @0x90, label[256] @0x12B; little-endian.
    if let Some(b) = read(dev, 0x10000, 0x22B).filter(|b| &b[0x40..0x48] == b"_BHRfS_M") {
        let sector = le32(&b, 0x90).max(1);
        let total = le64(&b, 0x70);
        let used = le64(&b, 0x78);
        let mut i = info("btrfs", "", label(&b[0x12B..0x22B]), uuid(&b[0x20..0x30]), sector, total / sector, None);
        i.size = total;
        i.used = used;
        i.free_blocks = total.saturating_sub(used) / sector;
        i.fields = vec![
            ("generation".into(), le64(&b, 0x48).to_string()),
            ("total_bytes".into(), total.to_string()),
            ("bytes_used".into(), used.to_string()),
            ("num_devices".into(), le64(&b, 0x88).to_string()),
            ("sectorsize".into(), sector.to_string()),
            ("nodesize".into(), le32(&b, 0x94).to_string()),
        ];
        return Some(i);
    }
    // XFS: struct xfs_dsb at 0 (xfs_format.h), big-endian: magic "XFSB", sb_blocksize @4,
    // sb_dblocks @8, sb_uuid @32, sb_agblocks @84, sb_agcount @88, sb_versionnum @100,
    // sb_fname[12] @108, sb_icount @128, sb_ifree @136, sb_fdblocks @144.
    if let Some(b) = read(dev, 0, 152).filter(|b| &b[..4] == b"XFSB") {
        let bs = be32(&b, 4).max(1);
        let mut i = info("xfs", "", label(&b[108..120]), uuid(&b[32..48]), bs, be64(&b, 8), Some(be64(&b, 144)));
        i.inodes = Some(be64(&b, 128));
        i.free_inodes = Some(be64(&b, 128).saturating_sub(be64(&b, 136)));
        i.fields = vec![
            ("sb_blocksize".into(), bs.to_string()),
            ("sb_dblocks".into(), be64(&b, 8).to_string()),
            ("sb_agblocks".into(), be32(&b, 84).to_string()),
            ("sb_agcount".into(), be32(&b, 88).to_string()),
            ("sb_versionnum".into(), format!("{:#x}", be16(&b, 100))),
            ("sb_icount".into(), be64(&b, 128).to_string()),
            ("sb_ifree".into(), be64(&b, 136).to_string()),
            ("sb_fdblocks".into(), be64(&b, 144).to_string()),
        ];
        return Some(i);
    }
    // EROFS: struct erofs_super_block at 1024 (fs/erofs/erofs_fs.h), little-endian: magic
    // 0xE0F5E1E2 @0, blkszbits @12, inos @16, blocks @36, uuid @48, volume_name[16] @64.
    if let Some(b) = read(dev, 1024, 80).filter(|b| le32(b, 0) == 0xE0F5_E1E2) {
        let bits = u32::from(b[12]);
        let bs = if (9..=16).contains(&bits) { 1u64 << bits } else { 4096 };
        let mut i = info("erofs", "", label(&b[64..80]), uuid(&b[48..64]), bs, le32(&b, 36), Some(0));
        i.inodes = Some(le64(&b, 16));
        i.fields = vec![
            ("feature_compat".into(), format!("{:#x}", le32(&b, 8))),
            ("blkszbits".into(), bits.to_string()),
            ("inos".into(), le64(&b, 16).to_string()),
            ("build_time".into(), le64(&b, 24).to_string()),
            ("blocks".into(), le32(&b, 36).to_string()),
        ];
        return Some(i);
    }
    // squashfs 4: struct squashfs_super_block at 0 (squashfs_fs.h), little-endian: magic
    // "hsqs", inodes @4, mkfs_time @8, block_size @12, compression @20, s_major @28,
    // s_minor @30, bytes_used @40. It has neither label nor UUID (blkid shows none).
    if let Some(b) = read(dev, 0, 48).filter(|b| &b[..4] == b"hsqs") {
        let used = le64(&b, 40);
        let version = format!("{}.{}", le16(&b, 28), le16(&b, 30));
        let mut i = info("squashfs", &version, String::new(), String::new(), 1, used, Some(0));
        i.block_size = le32(&b, 12);
        i.blocks = if i.block_size > 0 { used.div_ceil(i.block_size) } else { 0 };
        i.inodes = Some(le32(&b, 4));
        i.fields = vec![
            ("inodes".into(), le32(&b, 4).to_string()),
            ("mkfs_time".into(), le32(&b, 8).to_string()),
            ("block_size".into(), le32(&b, 12).to_string()),
            ("compression".into(), le16(&b, 20).to_string()),
            ("bytes_used".into(), used.to_string()),
        ];
        return Some(i);
    }
    None
}
