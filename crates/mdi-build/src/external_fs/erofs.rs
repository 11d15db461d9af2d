//! The erofs volume label. mkfs.erofs 1.5 (Debian 12) has no label option, so the label
//! goes into the superblock afterwards. Layout (linux/fs/erofs/erofs_fs.h, struct
//! erofs_super_block, at byte 1024): magic u32 @0, checksum u32 @4, feature_compat u32 @8,
//! blkszbits u8 @12, ..., uuid [16] @48, volume_name [16] @64.

use anyhow::{bail, Context, Result};
use std::os::unix::fs::FileExt;
use std::path::Path;

const SUPER_OFFSET: usize = 1024;
const MAGIC: u32 = 0xE0F5_E1E2;
/// EROFS_FEATURE_COMPAT_SB_CHKSUM: the superblock carries a CRC32C.
const COMPAT_SB_CHKSUM: u32 = 0x1;
const VOLUME_NAME: usize = 64;

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// The superblock checksum: the kernel's `crc32c(~0, sb, len)` over the superblock to the
/// end of the first block with the checksum field zeroed. That is CRC32C without its final
/// inversion.
fn checksum(block: &[u8]) -> u32 {
    let mut sb = block[SUPER_OFFSET..].to_vec();
    sb[4..8].fill(0);
    !crc32c::crc32c(&sb)
}

/// Writes `label` into the erofs image `img`'s superblock and fixes its checksum.
pub(super) fn set_label(img: &Path, label: &[u8]) -> Result<()> {
    let f =
        std::fs::OpenOptions::new().read(true).write(true).open(img).with_context(|| format!("'{}'", img.display()))?;
    let mut head = vec![0u8; SUPER_OFFSET + 16];
    f.read_exact_at(&mut head, 0)?;
    if le32(&head, SUPER_OFFSET) != MAGIC {
        bail!("mkfs.erofs wrote no erofs superblock to '{}'", img.display());
    }
    let blkszbits = head[SUPER_OFFSET + 12];
    if !(12..=16).contains(&blkszbits) {
        bail!("mkfs.erofs wrote an erofs block size of 2^{blkszbits}, which this program does not handle");
    }
    let mut block = vec![0u8; 1 << blkszbits];
    f.read_exact_at(&mut block, 0)?;
    let sb = SUPER_OFFSET;
    let summed = le32(&block, sb + 8) & COMPAT_SB_CHKSUM != 0;
    // Check that we read the superblock as the kernel does before changing it.
    if summed && checksum(&block) != le32(&block, sb + 4) {
        bail!("the erofs superblock's checksum is not CRC32C as expected; cannot set the label");
    }
    block[sb + VOLUME_NAME..sb + VOLUME_NAME + 16].fill(0);
    block[sb + VOLUME_NAME..sb + VOLUME_NAME + label.len()].copy_from_slice(label);
    if summed {
        let c = checksum(&block);
        block[sb + 4..sb + 8].copy_from_slice(&c.to_le_bytes());
    }
    f.write_all_at(&block[sb..], sb as u64)?;
    Ok(())
}
