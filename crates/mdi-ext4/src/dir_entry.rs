//! Linear directory blocks (ext4 on-disk layout document, "Directory Entries"): entries
//! `inode u32, rec_len u16, name_len u8, file_type u8, name`, 4-byte aligned; with
//! metadata_csum each block ends in a 12-byte fake entry holding the checksum.

use crate::bytes::{put_u16, put_u32, put_u8};
use crate::checksum::crc32c_raw;
use crate::geometry::BS;

/// Bytes usable for entries in a leaf block (the checksum tail takes 12).
pub const LEAF_SPACE: usize = BS - 12;
/// file_type of the checksum tail entry.
const TAIL_FT: u8 = 0xDE;

/// dirent file_type codes.
pub const FT_REG: u8 = 1;
pub const FT_DIR: u8 = 2;
pub const FT_CHR: u8 = 3;
pub const FT_BLK: u8 = 4;
pub const FT_FIFO: u8 = 5;
pub const FT_SOCK: u8 = 6;
pub const FT_SYMLINK: u8 = 7;

/// One entry to place: name, inode number, type.
#[derive(Clone, Debug)]
pub struct DirEnt<'a> {
    pub name: &'a [u8],
    pub ino: u32,
    pub ft: u8,
}

/// Space one entry takes: 8-byte header plus the name, rounded up to 4.
pub fn rec_len(name_len: usize) -> usize {
    (8 + name_len + 3) & !3
}

/// Writes one entry at `off` with the given rec_len.
pub fn put_entry(b: &mut [u8], off: usize, e: &DirEnt<'_>, rec: usize) {
    put_u32(b, off, e.ino); // inode
    put_u16(b, off + 4, rec as u16); // rec_len
    put_u8(b, off + 6, e.name.len() as u8); // name_len
    put_u8(b, off + 7, e.ft); // file_type
    b[off + 8..off + 8 + e.name.len()].copy_from_slice(e.name);
}

/// Fills one leaf block with `entries` (which must fit in LEAF_SPACE); the last entry
/// stretches to the tail. An empty list gives one unused entry covering the block.
pub fn leaf_block(entries: &[DirEnt<'_>], seed: u32) -> Vec<u8> {
    let mut b = vec![0u8; BS];
    let mut off = 0;
    if entries.is_empty() {
        put_u16(&mut b, 4, LEAF_SPACE as u16);
    }
    for (i, e) in entries.iter().enumerate() {
        let rec = if i + 1 == entries.len() { LEAF_SPACE - off } else { rec_len(e.name.len()) };
        put_entry(&mut b, off, e, rec);
        off += rec;
    }
    seal_leaf(&mut b, seed);
    b
}

/// Writes the checksum tail: crc32c(inode seed, block before the tail).
pub fn seal_leaf(b: &mut [u8], seed: u32) {
    put_u32(b, LEAF_SPACE, 0); // det_reserved_zero1
    put_u16(b, LEAF_SPACE + 4, 12); // det_rec_len
    put_u8(b, LEAF_SPACE + 6, 0); // det_reserved_zero2
    put_u8(b, LEAF_SPACE + 7, TAIL_FT); // det_reserved_ft
    let c = crc32c_raw(seed, &b[..LEAF_SPACE]);
    put_u32(b, LEAF_SPACE + 8, c); // det_checksum
}

/// Total space of `entries` when packed.
pub fn packed_len(entries: &[DirEnt<'_>]) -> usize {
    entries.iter().map(|e| rec_len(e.name.len())).sum()
}
