//! The inode record, 256 bytes (ext4 on-disk layout document, "Index Nodes").

use crate::bytes::{hi32, lo32, put_u16, put_u32};
use crate::checksum::{crc32c_raw, inode_seed};
use crate::geometry::INODE_SIZE;

/// i_flags: the inode uses extents (EXT4_EXTENTS_FL).
pub const FL_EXTENTS: u32 = 0x80000;
/// i_flags: hash-indexed directory (EXT4_INDEX_FL).
pub const FL_INDEX: u32 = 0x1000;

/// The file type bits of i_mode.
pub const S_IFMT: u16 = 0o170000;
/// File type bits of i_mode (S_IFMT values).
pub const S_IFIFO: u16 = 0o010000;
pub const S_IFCHR: u16 = 0o020000;
pub const S_IFDIR: u16 = 0o040000;
pub const S_IFBLK: u16 = 0o060000;
pub const S_IFREG: u16 = 0o100000;
pub const S_IFLNK: u16 = 0o120000;
pub const S_IFSOCK: u16 = 0o140000;

/// `i_extra_isize`: the fields up to i_projid (ends at 0xA0).
pub const EXTRA_ISIZE: u16 = 32;
/// Where in-inode extended attributes start: after the 128-byte base and the extra fields.
pub const XATTR_OFFSET: usize = 128 + EXTRA_ISIZE as usize;

/// A seconds-and-nanoseconds time as ext4 stores it: low 32 bits of seconds, and an
/// `_extra` word with two epoch bits (bits 32–33 of seconds) and the nanoseconds << 2.
pub fn encode_time(secs: i64, nsecs: u32) -> (u32, u32) {
    let lo = secs as i32;
    let epoch = ((secs - i64::from(lo)) >> 32) as u32 & 3;
    (lo as u32, epoch | (nsecs << 2))
}

/// Everything an inode record holds.
#[derive(Clone, Debug)]
pub struct Inode {
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub links: u16,
    /// Allocated space in 512-byte sectors (huge_file not needed below 2^48 sectors).
    pub sectors: u64,
    pub flags: u32,
    pub i_block: [u8; 60],
    pub file_acl: u64,
    /// (seconds, nanoseconds) for atime, ctime, mtime, crtime.
    pub atime: (i64, u32),
    pub ctime: (i64, u32),
    pub mtime: (i64, u32),
    pub crtime: (i64, u32),
    /// Encoded in-inode xattr area (magic first), at most 96 bytes.
    pub inline_xattrs: Vec<u8>,
}

impl Default for Inode {
    fn default() -> Self {
        Inode {
            mode: 0,
            uid: 0,
            gid: 0,
            size: 0,
            links: 0,
            sectors: 0,
            flags: 0,
            i_block: [0; 60],
            file_acl: 0,
            atime: (0, 0),
            ctime: (0, 0),
            mtime: (0, 0),
            crtime: (0, 0),
            inline_xattrs: Vec::new(),
        }
    }
}

impl Inode {
    /// Encodes inode number `ino` with its metadata_csum checksum.
    pub fn encode(&self, ino: u32, fs_seed: u32, out: &mut [u8]) {
        let b = &mut out[..INODE_SIZE as usize];
        b.fill(0);
        let (at, atx) = encode_time(self.atime.0, self.atime.1);
        let (ct, ctx) = encode_time(self.ctime.0, self.ctime.1);
        let (mt, mtx) = encode_time(self.mtime.0, self.mtime.1);
        let (crt, crtx) = encode_time(self.crtime.0, self.crtime.1);
        put_u16(b, 0x00, self.mode); // i_mode
        put_u16(b, 0x02, self.uid as u16); // i_uid
        put_u32(b, 0x04, lo32(self.size)); // i_size_lo
        put_u32(b, 0x08, at); // i_atime
        put_u32(b, 0x0C, ct); // i_ctime
        put_u32(b, 0x10, mt); // i_mtime
        put_u16(b, 0x18, self.gid as u16); // i_gid
        put_u16(b, 0x1A, self.links); // i_links_count
        put_u32(b, 0x1C, lo32(self.sectors)); // i_blocks_lo
        put_u32(b, 0x20, self.flags); // i_flags
        b[0x28..0x64].copy_from_slice(&self.i_block); // i_block
        put_u32(b, 0x68, lo32(self.file_acl)); // i_file_acl_lo
        put_u32(b, 0x6C, hi32(self.size)); // i_size_high
        put_u16(b, 0x74, (self.sectors >> 32) as u16); // l_i_blocks_high
        put_u16(b, 0x76, (self.file_acl >> 32) as u16); // l_i_file_acl_high
        put_u16(b, 0x78, (self.uid >> 16) as u16); // l_i_uid_high
        put_u16(b, 0x7A, (self.gid >> 16) as u16); // l_i_gid_high
        put_u16(b, 0x80, EXTRA_ISIZE); // i_extra_isize
        put_u32(b, 0x84, ctx); // i_ctime_extra
        put_u32(b, 0x88, mtx); // i_mtime_extra
        put_u32(b, 0x8C, atx); // i_atime_extra
        put_u32(b, 0x90, crt); // i_crtime
        put_u32(b, 0x94, crtx); // i_crtime_extra
        b[XATTR_OFFSET..XATTR_OFFSET + self.inline_xattrs.len()].copy_from_slice(&self.inline_xattrs);
        // Checksum over the whole record with l_i_checksum_lo (0x7C) and i_checksum_hi
        // (0x82) zero, seeded per inode (generation is always 0 here).
        let c = crc32c_raw(inode_seed(fs_seed, ino, 0), b);
        put_u16(b, 0x7C, c as u16); // l_i_checksum_lo
        put_u16(b, 0x82, (c >> 16) as u16); // i_checksum_hi
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_epoch_bits() {
        assert_eq!(encode_time(1, 0), (1, 0));
        assert_eq!(encode_time(1, 5), (1, 20));
        // 2040-01-01 is past 2^31: the low word wraps negative, epoch bit 1 set.
        let (lo, extra) = encode_time(2_208_988_800, 0);
        assert_eq!(lo, 2_208_988_800u64 as u32);
        assert_eq!(extra & 3, 1);
        // Before 1970: epoch bits 0 with a negative low word.
        assert_eq!(encode_time(-1, 0), (u32::MAX, 0));
    }
}
