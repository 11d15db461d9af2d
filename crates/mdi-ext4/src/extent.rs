//! Extent trees (ext4 on-disk layout document, "Extent Tree"): a 12-byte header, then
//! 12-byte leaf or index entries; four fit in the inode's i_block, 340 in a 4 KiB block
//! followed by a 4-byte checksum tail.

use crate::bytes::{hi32, lo32, put_u16, put_u32};
use crate::checksum::crc32c_raw;
use crate::geometry::{Block, BS};

/// Header magic (eh_magic).
const MAGIC: u16 = 0xF30A;
/// Entries in the inode's i_block.
pub const IN_INODE: usize = 4;
/// Entries in one tree block: (4096 - 12 header - 4 tail) / 12.
pub const PER_BLOCK: usize = (BS - 12 - 4) / 12;
/// Longest initialized extent (ee_len; larger values mean "unwritten").
pub const MAX_LEN: u32 = 32768;

/// One mapping of `len` logical blocks from `logical` to physical `start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub logical: u32,
    pub len: u32,
    pub start: Block,
}

/// Appends blocks `logical..logical+len` at `start`, merging with the last extent when
/// both logically and physically contiguous.
pub fn push(list: &mut Vec<Extent>, mut logical: u32, mut start: Block, mut len: u32) {
    if let Some(last) = list.last_mut() {
        if last.logical + last.len == logical && last.start + u64::from(last.len) == start && last.len < MAX_LEN {
            let take = len.min(MAX_LEN - last.len);
            last.len += take;
            logical += take;
            start += u64::from(take);
            len -= take;
        }
    }
    while len > 0 {
        let take = len.min(MAX_LEN);
        list.push(Extent { logical, len: take, start });
        logical += take;
        start += u64::from(take);
        len -= take;
    }
}

/// Number of tree blocks needed for `n` extents (0 when they fit in the inode).
pub fn tree_blocks(n: usize) -> u64 {
    let mut total = 0u64;
    let mut level = n;
    while level > IN_INODE {
        let blocks = level.div_ceil(PER_BLOCK);
        total += blocks as u64;
        level = blocks;
    }
    total
}

fn header(buf: &mut [u8], entries: usize, max: usize, depth: u16) {
    put_u16(buf, 0, MAGIC); // eh_magic
    put_u16(buf, 2, entries as u16); // eh_entries
    put_u16(buf, 4, max as u16); // eh_max
    put_u16(buf, 6, depth); // eh_depth
    put_u32(buf, 8, 0); // eh_generation
}

fn leaf_entry(buf: &mut [u8], e: &Extent) {
    put_u32(buf, 0, e.logical); // ee_block
    put_u16(buf, 4, e.len as u16); // ee_len
    put_u16(buf, 6, (e.start >> 32) as u16); // ee_start_hi
    put_u32(buf, 8, lo32(e.start)); // ee_start_lo
}

fn index_entry(buf: &mut [u8], logical: u32, leaf: Block) {
    put_u32(buf, 0, logical); // ei_block
    put_u32(buf, 4, lo32(leaf)); // ei_leaf_lo
    put_u16(buf, 8, hi32(leaf) as u16); // ei_leaf_hi
    put_u16(buf, 10, 0); // ei_unused
}

/// An encoded tree: the inode's i_block and the tree blocks to write.
pub struct Encoded {
    pub i_block: [u8; 60],
    pub blocks: Vec<(Block, Vec<u8>)>,
}

/// Encodes `extents` into i_block plus tree blocks placed at `tree_at` (exactly
/// `tree_blocks(extents.len())` of them, lowest level first). `seed` is the inode's
/// checksum seed.
pub fn encode(extents: &[Extent], tree_at: &[Block], seed: u32) -> Encoded {
    let mut i_block = [0u8; 60];
    let mut blocks = Vec::new();
    // Each level: (first logical block, physical block) of every node.
    let mut level: Vec<(u32, Option<Block>)> = Vec::new();
    let mut depth = 0u16;
    let mut next_tree = tree_at.iter();
    if extents.len() <= IN_INODE {
        header(&mut i_block, extents.len(), IN_INODE, 0);
        for (i, e) in extents.iter().enumerate() {
            leaf_entry(&mut i_block[12 + 12 * i..], e);
        }
        return Encoded { i_block, blocks };
    }
    for chunk in extents.chunks(PER_BLOCK) {
        let at = *next_tree.next().expect("enough tree blocks");
        let mut b = vec![0u8; BS];
        header(&mut b, chunk.len(), PER_BLOCK, 0);
        for (i, e) in chunk.iter().enumerate() {
            leaf_entry(&mut b[12 + 12 * i..], e);
        }
        level.push((chunk[0].logical, Some(at)));
        blocks.push((at, b));
    }
    depth += 1;
    while level.len() > IN_INODE {
        let mut up = Vec::new();
        for chunk in level.chunks(PER_BLOCK) {
            let at = *next_tree.next().expect("enough tree blocks");
            let mut b = vec![0u8; BS];
            header(&mut b, chunk.len(), PER_BLOCK, depth);
            for (i, (l, p)) in chunk.iter().enumerate() {
                index_entry(&mut b[12 + 12 * i..], *l, p.expect("placed"));
            }
            up.push((chunk[0].0, Some(at)));
            blocks.push((at, b));
        }
        level = up;
        depth += 1;
    }
    header(&mut i_block, level.len(), IN_INODE, depth);
    for (i, (l, p)) in level.iter().enumerate() {
        index_entry(&mut i_block[12 + 12 * i..], *l, p.expect("placed"));
    }
    // Tail checksum of each tree block: crc32c(inode seed, block up to the tail).
    for (_, b) in &mut blocks {
        let c = crc32c_raw(seed, &b[..BS - 4]);
        put_u32(b, BS - 4, c);
    }
    Encoded { i_block, blocks }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_and_splitting() {
        let mut v = Vec::new();
        push(&mut v, 0, 100, 10);
        push(&mut v, 10, 110, 5);
        assert_eq!(v, vec![Extent { logical: 0, len: 15, start: 100 }]);
        push(&mut v, 20, 115, 1);
        assert_eq!(v.len(), 2);
        let mut w = Vec::new();
        push(&mut w, 0, 0, 70000);
        assert_eq!(w.iter().map(|e| e.len).collect::<Vec<_>>(), vec![32768, 32768, 4464]);
    }

    #[test]
    fn tree_block_counts() {
        assert_eq!(tree_blocks(4), 0);
        assert_eq!(tree_blocks(5), 1);
        assert_eq!(tree_blocks(340 * 4), 4);
        assert_eq!(tree_blocks(340 * 4 + 1), 5 + 1);
    }
}
