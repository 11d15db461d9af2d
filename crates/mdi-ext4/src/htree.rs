//! Hash-indexed directories (ext4 on-disk layout document, "Hash Tree Directories").
//!
//! Block 0 is the dx_root (fake `.` and `..` entries, dx_root_info, then index entries);
//! with more than 507 leaves a level of dx_node blocks sits between root and leaves.
//! Leaves are ordinary directory blocks whose entries are grouped by hash: the index
//! entry of a leaf holds the lowest hash in it, with bit 0 set when that hash continues
//! from the previous leaf (a collision split across blocks).

use crate::bytes::{put_u16, put_u32, put_u8};
use crate::checksum::crc32c_raw;
use crate::dir_entry::{leaf_block, put_entry, rec_len, DirEnt, FT_DIR, LEAF_SPACE};
use crate::dirhash::name_hash;
use crate::geometry::BS;

/// Index entries in the root: (4096 - 0x20 header - 8 dx_tail) / 8.
const ROOT_LIMIT: usize = (BS - 0x20 - 8) / 8;
/// Index entries in an interior node: (4096 - 8 fake dirent - 8 dx_tail) / 8.
const NODE_LIMIT: usize = (BS - 8 - 8) / 8;
/// dx_root_info.hash_version: half MD4 (unsigned per the superblock flag).
const HASH_HALF_MD4: u8 = 1;

/// Why a directory cannot be indexed.
#[derive(Debug)]
pub struct TooLarge;

/// Builds a hashed directory: returns its blocks in logical order.
pub fn build(
    dot: u32,
    dotdot: u32,
    children: &[DirEnt<'_>],
    hash_seed: &[u32; 4],
    csum_seed: u32,
) -> Result<Vec<Vec<u8>>, TooLarge> {
    let mut hashed: Vec<(u32, u32, &DirEnt<'_>)> = children
        .iter()
        .map(|e| {
            let (h, m) = name_hash(e.name, hash_seed);
            (h, m, e)
        })
        .collect();
    hashed.sort_by(|a, b| (a.0, a.1, a.2.name).cmp(&(b.0, b.1, b.2.name)));

    // Pack leaves; remember each leaf's index hash.
    let mut leaves: Vec<(u32, Vec<DirEnt<'_>>)> = Vec::new();
    let mut cur: Vec<DirEnt<'_>> = Vec::new();
    let mut used = 0;
    let mut first_hash = 0u32;
    let mut last_hash: Option<u32> = None;
    for (h, _, e) in &hashed {
        let need = rec_len(e.name.len());
        if used + need > LEAF_SPACE && !cur.is_empty() {
            leaves.push((first_hash, std::mem::take(&mut cur)));
            used = 0;
        }
        if cur.is_empty() {
            // Continuation bit when the previous leaf ends with the same hash.
            first_hash = if last_hash == Some(*h) { h | 1 } else { *h };
        }
        cur.push((*e).clone());
        used += need;
        last_hash = Some(*h);
    }
    if !cur.is_empty() || leaves.is_empty() {
        leaves.push((first_hash, cur));
    }

    let levels = if leaves.len() <= ROOT_LIMIT { 0 } else { 1 };
    let nodes: Vec<&[(u32, Vec<DirEnt<'_>>)]> =
        if levels == 1 { leaves.chunks(NODE_LIMIT).collect() } else { Vec::new() };
    if nodes.len() > ROOT_LIMIT {
        return Err(TooLarge);
    }
    // Logical layout: 0 root, 1..=nodes interior nodes, then the leaves.
    let first_leaf = 1 + nodes.len() as u32;
    let mut out = Vec::with_capacity(1 + nodes.len() + leaves.len());

    let mut root = vec![0u8; BS];
    put_entry(&mut root, 0, &DirEnt { name: b".", ino: dot, ft: FT_DIR }, 12);
    put_entry(&mut root, 12, &DirEnt { name: b"..", ino: dotdot, ft: FT_DIR }, BS - 12);
    put_u32(&mut root, 0x18, 0); // dx_root_info.reserved_zero
    put_u8(&mut root, 0x1C, HASH_HALF_MD4); // hash_version
    put_u8(&mut root, 0x1D, 8); // info_length
    put_u8(&mut root, 0x1E, levels); // indirect_levels
    put_u8(&mut root, 0x1F, 0); // unused_flags
    if levels == 0 {
        let idx: Vec<(u32, u32)> = leaves.iter().enumerate().map(|(i, (h, _))| (*h, first_leaf + i as u32)).collect();
        put_index(&mut root, 0x20, ROOT_LIMIT, &idx, csum_seed);
        out.push(root);
    } else {
        let mut root_idx = Vec::new();
        let mut node_blocks = Vec::new();
        let mut leaf_no = first_leaf;
        for (n, chunk) in nodes.iter().enumerate() {
            let mut node = vec![0u8; BS];
            put_u32(&mut node, 0, 0); // fake dirent: inode 0
            put_u16(&mut node, 4, BS as u16); // rec_len: whole block
            let idx: Vec<(u32, u32)> = chunk
                .iter()
                .map(|(h, _)| {
                    let e = (*h, leaf_no);
                    leaf_no += 1;
                    e
                })
                .collect();
            put_index(&mut node, 8, NODE_LIMIT, &idx, csum_seed);
            root_idx.push((chunk[0].0, 1 + n as u32));
            node_blocks.push(node);
        }
        put_index(&mut root, 0x20, ROOT_LIMIT, &root_idx, csum_seed);
        out.push(root);
        out.extend(node_blocks);
    }
    for (_, ents) in &leaves {
        out.push(leaf_block(ents, csum_seed));
    }
    Ok(out)
}

/// Writes a dx_countlimit + dx_entry array at `at` and the dx_tail checksum. The first
/// entry's hash field is the count/limit header itself (its hash is implicitly 0).
fn put_index(b: &mut [u8], at: usize, limit: usize, idx: &[(u32, u32)], seed: u32) {
    put_u16(b, at, limit as u16); // limit
    put_u16(b, at + 2, idx.len() as u16); // count
    for (i, (h, blk)) in idx.iter().enumerate() {
        let o = at + 8 * i;
        if i > 0 {
            put_u32(b, o, *h); // hash
        }
        put_u32(b, o + 4, *blk); // block
    }
    // dx_tail after `limit` entries: dt_reserved then dt_checksum = crc32c(seed, block up
    // to the last used entry, then dt_reserved, then a zero checksum field).
    let tail = at + 8 * limit;
    put_u32(b, tail, 0);
    let used = at + 8 * idx.len();
    let c = crc32c_raw(seed, &b[..used]);
    let c = crc32c_raw(c, &b[tail..tail + 4]);
    let c = crc32c_raw(c, &[0u8; 4]);
    put_u32(b, tail + 4, c);
}
