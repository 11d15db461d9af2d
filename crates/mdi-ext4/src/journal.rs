//! The JBD2 journal superblock. The journal is big-endian throughout (kernel
//! Documentation/filesystems/ext4/journal.rst, "Super Block").

use crate::bytes::put_u32_be;
use crate::geometry::BS;

/// JBD2 magic (h_magic).
const MAGIC: u32 = 0xC03B_3998;
/// h_blocktype: superblock version 2.
const SUPERBLOCK_V2: u32 = 4;

/// An empty, clean journal of `blocks` blocks for the filesystem `uuid`.
pub fn superblock(blocks: u32, uuid: &[u8; 16]) -> Vec<u8> {
    let mut b = vec![0u8; BS];
    put_u32_be(&mut b, 0x0, MAGIC); // h_magic
    put_u32_be(&mut b, 0x4, SUPERBLOCK_V2); // h_blocktype
    put_u32_be(&mut b, 0x8, 0); // h_sequence
    put_u32_be(&mut b, 0xC, BS as u32); // s_blocksize
    put_u32_be(&mut b, 0x10, blocks); // s_maxlen
    put_u32_be(&mut b, 0x14, 1); // s_first: first log block
    put_u32_be(&mut b, 0x18, 1); // s_sequence: first expected commit ID
    put_u32_be(&mut b, 0x1C, 0); // s_start: 0 = journal is clean
    b[0x30..0x40].copy_from_slice(uuid); // s_uuid
    put_u32_be(&mut b, 0x40, 1); // s_nr_users: the filesystem itself
    b
}
