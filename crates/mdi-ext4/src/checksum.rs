//! ext4's CRC32C checksums (kernel Documentation/filesystems/ext4/checksums.rst).
//!
//! ext4 uses the raw Castagnoli CRC: the running value is seeded by the caller and not
//! inverted at the end (`ext4_chksum` / e2fsprogs `ext2fs_crc32c_le`). The `crc32c` crate
//! computes the standard form (pre- and post-inverted), so `raw(seed, d) = !append(!seed, d)`.

/// CRC32C over `data`, starting from the raw state `seed`, without final inversion.
#[inline]
pub(crate) fn crc32c_raw(seed: u32, data: &[u8]) -> u32 {
    !crc32c::crc32c_append(!seed, data)
}

/// The per-filesystem checksum seed: CRC32C of the UUID from `~0` (no `csum_seed` feature).
pub(crate) fn fs_seed(uuid: &[u8; 16]) -> u32 {
    crc32c_raw(!0, uuid)
}

/// Per-inode seed used by inode, extent, directory and htree checksums:
/// the fs seed run over the inode number and generation (both little-endian u32).
pub(crate) fn inode_seed(fs_seed: u32, ino: u32, generation: u32) -> u32 {
    let s = crc32c_raw(fs_seed, &ino.to_le_bytes());
    crc32c_raw(s, &generation.to_le_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_matches_standard_check_value() {
        // The standard CRC32C check value for "123456789" is 0xE3069283.
        assert_eq!(!crc32c_raw(!0, b"123456789"), 0xE306_9283);
    }
}
