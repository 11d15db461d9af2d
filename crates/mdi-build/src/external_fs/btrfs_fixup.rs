//! Post-processing a filesystem made by `mkfs.btrfs --rootdir` (btrfs-progs 6.2) so it
//! holds what the spec says and nothing drawn from the clock or at random.
//!
//! mkfs.btrfs refuses a UUID that any block device of the build machine already carries
//! (it asks libblkid about every device), so building with a fixed UUID fails while, say,
//! an earlier image of the same spec is attached, or on a NixOS machine whose own root has
//! nixpkgs' default UUID. And it has no option for the other identifiers it draws at
//! random, nor for the times it takes from the clock. So the filesystem is made with
//! whatever mkfs picks, and this pass then rewrites, in every superblock copy and every
//! tree block (each with its checksum):
//! - the four random 16-byte values by ones derived from the spec's seed: the fsid, the
//!   device UUID (superblock `dev_item`, DEV_ITEM and each chunk stripe), the chunk tree
//!   UUID (every tree block header, DEV_EXTENT items) and the subvolume UUID of the FS
//!   tree (its ROOT_ITEM, and the key of its UUID tree entry);
//! - times: every inode's atime, ctime and otime, the mtime of the inodes mkfs made
//!   itself (root folder, root tree folder, data relocation tree) and the FS tree's
//!   ROOT_ITEM ctime/otime become SOURCE_DATE_EPOCH; file mtimes regain the tree's
//!   nanoseconds (mkfs keeps whole seconds);
//! - the root folder's mode, owner and mtime, which mkfs sets to 0755, 0:0 and the clock
//!   instead of taking them from the folder;
//! - the `transid` of directory entries and extended attribute items, which mkfs never
//!   sets (whatever bytes were there stay): it becomes the generation of the inode the
//!   entry names (of its own inode for attributes), as the kernel writes it;
//! - device numbers, which mkfs 6.2 leaves at 0 (fakeroot's device nodes are plain files);
//! - the unused middle of each tree block, which holds stale bytes of moved items.
//!
//! On-disk format (<https://btrfs.readthedocs.io/en/latest/dev/On-disk-format.html>), all
//! little-endian:
//! - superblock at 64 KiB, 64 MiB, 256 GiB: csum [32] @0 over bytes 0x20..0x1000, fsid
//!   [16] @0x20, magic `_BHRfS_M` @0x40, nodesize u32 @0x94, csum_type u16 @0xC4 (0 =
//!   crc32c), dev_item @0xC9 (uuid [16] at +66, fsid [16] at +82), sys_chunk_array
//!   @0x32B (chunk items whose stripes carry the device UUID), metadata_uuid @0x23B;
//! - tree block header (0x65 bytes): csum [32] @0 over bytes 0x20..nodesize, fsid [16]
//!   @0x20, chunk_tree_uuid [16] @0x40, owner u64 @0x58, nritems u32 @0x60, level u8
//!   @0x64; a leaf (level 0) then holds nritems items of 25 bytes: key (objectid u64, type
//!   u8, offset u64), data offset u32 (from the end of the header) and data size u32;
//! - INODE_ITEM (type 1, 160 bytes): generation u64 @0, nlink u32 @40, uid u32 @44, gid
//!   u32 @48, mode u32 @52, rdev u64 @56 (the kernel's dev_t: major << 20 | minor),
//!   atime @112, ctime @124, mtime @136, otime @148, each a timespec of sec u64 and nsec
//!   u32;
//! - XATTR_ITEM (24), DIR_ITEM (84), DIR_INDEX (96): one or more dir items, each a
//!   location key [17] @0, transid u64 @17, data_len u16 @25, name_len u16 @27, type u8
//!   @29, then name and data;
//! - ROOT_ITEM (132, 439 bytes): uuid [16] @247, ctime @327, otime @339;
//! - UUID_KEY_SUBVOL (251) in the UUID tree: the key's objectid and offset are the
//!   subvolume UUID's two halves, read as little-endian u64s.
//!
//! A random 16-byte value occurs nowhere else, so every occurrence inside a block whose
//! checksum proves it is a superblock or tree block is that identifier. Tree blocks are
//! found by scanning every 4 KiB of the file for the old fsid at +0x20 and a valid
//! checksum; metadata is DUP, so both copies are found and rewritten alike.

use anyhow::{bail, Context, Result};
use mdi_ident::Timestamp;
use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::Path;

const SUPERS: [u64; 3] = [64 << 10, 64 << 20, 256 << 30];
const SUPER_SIZE: usize = 4096;
const MAGIC: &[u8; 8] = b"_BHRfS_M";
const HEADER: usize = 0x65;
const ITEM: usize = 25;

/// The folder every FS tree has (BTRFS_FIRST_FREE_OBJECTID).
pub(super) const ROOT_DIR: u64 = 256;
const ROOT_TREE: u64 = 1;
const FS_TREE: u64 = 5;
const UUID_TREE: u64 = 9;

const INODE_ITEM: u8 = 1;
const XATTR_ITEM: u8 = 24;
const DIR_ITEM: u8 = 84;
const DIR_INDEX: u8 = 96;
const ROOT_ITEM: u8 = 132;
const UUID_KEY_SUBVOL: u8 = 251;

/// The identifiers the filesystem is to have.
pub(super) struct Identity {
    pub fsid: [u8; 16],
    pub dev_uuid: [u8; 16],
    pub chunk_tree_uuid: [u8; 16],
    pub subvol_uuid: [u8; 16],
}

/// What an inode of the FS tree is to hold, by its inode number.
#[derive(Clone, Debug, Default)]
pub(super) struct InodeFix {
    pub mtime: Timestamp,
    /// Device number (major, minor) of a device node.
    pub rdev: Option<(u32, u32)>,
    /// Permission bits, owner and group (the root folder's, which mkfs does not take).
    pub perm: Option<(u16, u32, u32)>,
}

/// Everything to set.
pub(super) struct Fixes<'a> {
    pub ids: Identity,
    /// SOURCE_DATE_EPOCH.
    pub time: i64,
    pub inodes: &'a HashMap<u64, InodeFix>,
}

/// btrfs' crc32c checksum, stored little-endian in the first 4 bytes of the csum field.
fn csum(b: &[u8]) -> [u8; 4] {
    crc32c::crc32c(&b[0x20..]).to_le_bytes()
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}

fn uuid_at(b: &[u8], at: usize) -> [u8; 16] {
    b[at..at + 16].try_into().expect("16 bytes")
}

fn replace_all(b: &mut [u8], from: &[u8; 16], to: &[u8; 16]) {
    let mut i = 0;
    while i + 16 <= b.len() {
        if &b[i..i + 16] == from {
            b[i..i + 16].copy_from_slice(to);
            i += 16;
        } else {
            i += 1;
        }
    }
}

/// A btrfs timespec: seconds (two's complement, as the kernel reads it) and nanoseconds.
fn set_time(b: &mut [u8], at: usize, t: Timestamp) {
    b[at..at + 8].copy_from_slice(&t.secs.to_le_bytes());
    b[at + 8..at + 12].copy_from_slice(&t.nsecs.to_le_bytes());
}

/// The items of a leaf: (index of the item header, key objectid, key type, data range).
fn items(node: &[u8]) -> Vec<(usize, u64, u8, std::ops::Range<usize>)> {
    let n = u32_at(node, 0x60) as usize;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let item = HEADER + i * ITEM;
        if item + ITEM > node.len() {
            break;
        }
        let data = HEADER + u32_at(node, item + 17) as usize;
        let size = u32_at(node, item + 21) as usize;
        if data + size > node.len() {
            continue;
        }
        out.push((item, u64_at(node, item), node[item + 8], data..data + size));
    }
    out
}

fn is_leaf(node: &[u8]) -> bool {
    node[0x64] == 0
}

/// Zeroes the unused middle of a tree block: in a leaf, between the item headers and the
/// item data (packed at the end); in a node, after the key pointers (33 bytes each). It
/// holds stale copies of items moved while mkfs filled the tree, uninitialized fields and
/// all (seen: heap addresses, which change with every run).
fn zero_free_space(node: &mut [u8]) {
    let n = u32_at(node, 0x60) as usize;
    let (start, end) = if is_leaf(node) {
        let data_start =
            (0..n).map(|i| HEADER + u32_at(node, HEADER + i * ITEM + 17) as usize).min().unwrap_or(node.len());
        (HEADER + n * ITEM, data_start.min(node.len()))
    } else {
        (HEADER + n * 33, node.len())
    };
    if start < end {
        node[start..end].fill(0);
    }
}

/// What the first pass learns from the tree blocks.
#[derive(Default)]
struct Found {
    /// Offsets of all tree blocks.
    blocks: Vec<u64>,
    chunk_tree_uuid: Option<[u8; 16]>,
    subvol_uuid: Option<[u8; 16]>,
    /// Generation of each inode, by (tree, inode number).
    generations: HashMap<(u64, u64), u64>,
}

fn learn(node: &[u8], found: &mut Found) {
    found.chunk_tree_uuid.get_or_insert(uuid_at(node, 0x40));
    if !is_leaf(node) {
        return;
    }
    let owner = u64_at(node, 0x58);
    for (item, objectid, kind, data) in items(node) {
        match kind {
            INODE_ITEM if data.len() >= 160 => {
                found.generations.insert((owner, objectid), u64_at(node, data.start));
            }
            ROOT_ITEM
                if owner == ROOT_TREE && objectid == FS_TREE && u64_at(node, item + 9) == 0 && data.len() >= 439 =>
            {
                found.subvol_uuid = Some(uuid_at(node, data.start + 247));
            }
            _ => {}
        }
    }
}

/// Rewrites the items of a leaf (after the identifiers were replaced in its bytes).
fn fix_leaf(node: &mut [u8], fixes: &Fixes, found: &Found, old_subvol: Option<[u8; 16]>) {
    let owner = u64_at(node, 0x58);
    let sde = Timestamp::from_secs(fixes.time);
    for (item, objectid, kind, data) in items(node) {
        let d = data.start;
        match kind {
            INODE_ITEM if data.len() >= 160 => {
                for at in [112, 124, 148] {
                    set_time(node, d + at, sde);
                }
                let fix = if owner == FS_TREE { fixes.inodes.get(&objectid) } else { None };
                match fix {
                    Some(f) => {
                        set_time(node, d + 136, f.mtime);
                        if let Some((major, minor)) = f.rdev {
                            let rdev = (u64::from(major) << 20) | u64::from(minor);
                            node[d + 56..d + 64].copy_from_slice(&rdev.to_le_bytes());
                        }
                        if let Some((perm, uid, gid)) = f.perm {
                            let mode = (u32_at(node, d + 52) & 0o170000) | u32::from(perm & 0o7777);
                            node[d + 44..d + 48].copy_from_slice(&uid.to_le_bytes());
                            node[d + 48..d + 52].copy_from_slice(&gid.to_le_bytes());
                            node[d + 52..d + 56].copy_from_slice(&mode.to_le_bytes());
                        }
                    }
                    // Inodes mkfs made itself, with the clock's time.
                    None if owner != FS_TREE || objectid == ROOT_DIR => set_time(node, d + 136, sde),
                    None => {}
                }
            }
            XATTR_ITEM | DIR_ITEM | DIR_INDEX => {
                let mut at = d;
                while at + 30 <= data.end {
                    let (target, target_kind) = (u64_at(node, at), node[at + 8]);
                    let len = 30 + u16_at(node, at + 25) as usize + u16_at(node, at + 27) as usize;
                    let named = if kind != XATTR_ITEM && target_kind == INODE_ITEM { target } else { objectid };
                    let generation = found
                        .generations
                        .get(&(owner, named))
                        .or_else(|| found.generations.get(&(owner, objectid)))
                        .copied()
                        .unwrap_or(0);
                    node[at + 17..at + 25].copy_from_slice(&generation.to_le_bytes());
                    at += len;
                }
            }
            ROOT_ITEM if owner == ROOT_TREE && objectid == FS_TREE && data.len() >= 439 => {
                set_time(node, d + 327, sde);
                set_time(node, d + 339, sde);
            }
            UUID_KEY_SUBVOL if owner == UUID_TREE => {
                let key = |u: &[u8; 16]| (u64_at(u, 0), u64_at(u, 8));
                if old_subvol.is_some_and(|o| key(&o) == (objectid, u64_at(node, item + 9))) {
                    let (lo, hi) = key(&fixes.ids.subvol_uuid);
                    node[item..item + 8].copy_from_slice(&lo.to_le_bytes());
                    node[item + 9..item + 17].copy_from_slice(&hi.to_le_bytes());
                }
            }
            _ => {}
        }
    }
}

/// Reads the primary superblock: (fsid, device UUID, node size).
fn read_super(f: &std::fs::File, img: &Path) -> Result<([u8; 16], [u8; 16], usize)> {
    let mut sb = vec![0u8; SUPER_SIZE];
    f.read_exact_at(&mut sb, SUPERS[0]).with_context(|| format!("reading '{}'", img.display()))?;
    if &sb[0x40..0x48] != MAGIC {
        bail!("mkfs.btrfs wrote no btrfs superblock to '{}'", img.display());
    }
    if u16_at(&sb, 0xC4) != 0 || sb[..4] != csum(&sb) {
        bail!("the btrfs superblock does not carry the crc32c checksum expected; cannot rewrite it");
    }
    let nodesize = u32_at(&sb, 0x94) as usize;
    if !(4096..=65536).contains(&nodesize) {
        bail!("the btrfs superblock gives a node size of {nodesize}, which this program does not handle");
    }
    Ok((uuid_at(&sb, 0x20), uuid_at(&sb, 0xC9 + 66), nodesize))
}

/// Offsets of every tree block: 4 KiB steps over the file's data with the fsid at +0x20
/// and a valid checksum (superblocks left out).
fn find_blocks(f: &std::fs::File, len: u64, fsid: &[u8; 16], nodesize: usize, found: &mut Found) -> Result<()> {
    let mut buf = vec![0u8; 4 << 20];
    let mut node = vec![0u8; nodesize];
    let mut pos = 0u64;
    while pos < len {
        pos = match rustix::fs::seek(f, rustix::fs::SeekFrom::Data(pos)) {
            Ok(d) => d.min(len) / 4096 * 4096,
            Err(rustix::io::Errno::NXIO) => len,
            Err(_) => pos,
        };
        if pos >= len {
            break;
        }
        let n = (buf.len() as u64).min(len - pos) as usize;
        f.read_exact_at(&mut buf[..n], pos)?;
        let mut i = 0;
        while i + 0x30 <= n {
            let at = pos + i as u64;
            if &buf[i + 0x20..i + 0x30] == fsid && !SUPERS.contains(&at) && at + nodesize as u64 <= len {
                f.read_exact_at(&mut node, at)?;
                if node[..4] == csum(&node) {
                    learn(&node, found);
                    found.blocks.push(at);
                    i += nodesize;
                    continue;
                }
            }
            i += 4096;
        }
        pos += n as u64;
    }
    Ok(())
}

/// Applies `fixes` to the btrfs image `img`.
pub(super) fn fix(img: &Path, fixes: &Fixes) -> Result<()> {
    let f =
        std::fs::OpenOptions::new().read(true).write(true).open(img).with_context(|| format!("'{}'", img.display()))?;
    let len = f.metadata()?.len();
    let (fsid, dev_uuid, nodesize) = read_super(&f, img)?;
    let mut found = Found::default();
    find_blocks(&f, len, &fsid, nodesize, &mut found)?;
    if found.blocks.is_empty() {
        bail!("found no btrfs tree block in '{}' to rewrite", img.display());
    }
    let ids = &fixes.ids;
    let mut swaps = vec![(fsid, ids.fsid), (dev_uuid, ids.dev_uuid)];
    if let Some(c) = found.chunk_tree_uuid {
        swaps.push((c, ids.chunk_tree_uuid));
    }
    if let Some(s) = found.subvol_uuid {
        swaps.push((s, ids.subvol_uuid));
    }

    for &at in SUPERS.iter().filter(|&&at| at + SUPER_SIZE as u64 <= len) {
        let mut sb = vec![0u8; SUPER_SIZE];
        f.read_exact_at(&mut sb, at)?;
        if &sb[0x40..0x48] != MAGIC || sb[0x20..0x30] != fsid || sb[..4] != csum(&sb) {
            continue;
        }
        for (from, to) in &swaps {
            replace_all(&mut sb[0x20..], from, to);
        }
        let c = csum(&sb);
        sb[..4].copy_from_slice(&c);
        f.write_all_at(&sb, at)?;
    }
    let mut node = vec![0u8; nodesize];
    for &at in &found.blocks {
        f.read_exact_at(&mut node, at)?;
        for (from, to) in &swaps {
            replace_all(&mut node[0x20..], from, to);
        }
        if is_leaf(&node) {
            fix_leaf(&mut node, fixes, &found, found.subvol_uuid);
        }
        zero_free_space(&mut node);
        let c = csum(&node);
        node[..4].copy_from_slice(&c);
        f.write_all_at(&node, at)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A leaf with the given items (key, data), packed as btrfs packs them: headers from
    /// the front, data from the end.
    type Key = (u64, u8, u64);

    fn leaf(owner: u64, items: &[(Key, Vec<u8>)]) -> Vec<u8> {
        let mut node = vec![0u8; 4096];
        node[0x58..0x60].copy_from_slice(&owner.to_le_bytes());
        node[0x60..0x64].copy_from_slice(&(items.len() as u32).to_le_bytes());
        let mut end = node.len() - HEADER;
        for (i, ((objectid, kind, offset), data)) in items.iter().enumerate() {
            end -= data.len();
            let h = HEADER + i * ITEM;
            node[h..h + 8].copy_from_slice(&objectid.to_le_bytes());
            node[h + 8] = *kind;
            node[h + 9..h + 17].copy_from_slice(&offset.to_le_bytes());
            node[h + 17..h + 21].copy_from_slice(&(end as u32).to_le_bytes());
            node[h + 21..h + 25].copy_from_slice(&(data.len() as u32).to_le_bytes());
            node[HEADER + end..HEADER + end + data.len()].copy_from_slice(data);
        }
        node
    }

    fn dir_item(target: u64, name: &[u8]) -> Vec<u8> {
        let mut d = vec![0u8; 30];
        d[..8].copy_from_slice(&target.to_le_bytes());
        d[8] = INODE_ITEM;
        d[17..25].copy_from_slice(&0xdead_beef_u64.to_le_bytes());
        d[27..29].copy_from_slice(&(name.len() as u16).to_le_bytes());
        d[29] = 1;
        d.extend_from_slice(name);
        d
    }

    fn inode(generation: u64, mode: u32) -> Vec<u8> {
        let mut d = vec![0u8; 160];
        d[..8].copy_from_slice(&generation.to_le_bytes());
        d[52..56].copy_from_slice(&mode.to_le_bytes());
        for at in [112, 124, 136, 148] {
            d[at..at + 8].copy_from_slice(&1_795_702_350u64.to_le_bytes());
        }
        d
    }

    #[test]
    fn leaf_items_are_rewritten() {
        // Two entries under one hash (a collision) and one index entry.
        let both = [dir_item(300, b"a"), dir_item(301, b"bb")].concat();
        let mut node = leaf(
            FS_TREE,
            &[
                ((256, INODE_ITEM, 0), inode(3, 0o40755)),
                ((256, DIR_ITEM, 77), both),
                ((256, DIR_INDEX, 2), dir_item(301, b"bb")),
                ((300, INODE_ITEM, 0), inode(7, 0o100644)),
                ((301, INODE_ITEM, 0), inode(8, 0o20600)),
            ],
        );
        let mut found = Found::default();
        learn(&node, &mut found);
        let mut inodes = HashMap::new();
        inodes.insert(
            256,
            InodeFix { mtime: Timestamp { secs: -5, nsecs: 9 }, rdev: None, perm: Some((0o1750, 1000, 100)) },
        );
        inodes.insert(301, InodeFix { mtime: Timestamp::from_secs(20), rdev: Some((7, 200)), perm: None });
        let fixes = Fixes {
            ids: Identity { fsid: [1; 16], dev_uuid: [2; 16], chunk_tree_uuid: [3; 16], subvol_uuid: [4; 16] },
            time: 1_700_000_000,
            inodes: &inodes,
        };
        fix_leaf(&mut node, &fixes, &found, None);
        let it = items(&node);
        let data = |i: usize| it[i].3.start;
        // Root folder: mode kept as a folder with the tree's bits, owner, times.
        let r = data(0);
        assert_eq!(u32_at(&node, r + 52), 0o41750);
        assert_eq!((u32_at(&node, r + 44), u32_at(&node, r + 48)), (1000, 100));
        assert_eq!((u64_at(&node, r + 136) as i64, u32_at(&node, r + 144)), (-5, 9));
        for at in [112, 124, 148] {
            assert_eq!((u64_at(&node, r + at), u32_at(&node, r + at + 8)), (1_700_000_000, 0));
        }
        // Each entry's transid is the generation of the inode it names.
        let d = data(1);
        assert_eq!(u64_at(&node, d + 17), 7);
        assert_eq!(u64_at(&node, d + 31 + 17), 8);
        assert_eq!(u64_at(&node, data(2) + 17), 8);
        // A file the tree has no entry for keeps its mtime; the device gets its number.
        assert_eq!(u64_at(&node, data(3) + 136), 1_795_702_350);
        assert_eq!(u64_at(&node, data(3) + 112), 1_700_000_000);
        assert_eq!(u64_at(&node, data(4) + 56), (7 << 20) | 200);
        assert_eq!(u64_at(&node, data(4) + 136), 20);
    }

    #[test]
    fn free_space_is_zeroed_and_items_kept() {
        let entries = [((256, INODE_ITEM, 0), inode(3, 0o40755)), ((256, DIR_INDEX, 2), dir_item(300, b"a"))];
        let mut node = leaf(FS_TREE, &entries);
        let data_start = items(&node).iter().map(|i| i.3.start).min().unwrap();
        let headers_end = HEADER + 2 * ITEM;
        node[headers_end..data_start].fill(0xa5);
        let before = node.clone();
        zero_free_space(&mut node);
        assert!(node[headers_end..data_start].iter().all(|&b| b == 0));
        assert_eq!(node[..headers_end], before[..headers_end]);
        assert_eq!(node[data_start..], before[data_start..]);
        // A node: everything after its key pointers.
        let mut inner = vec![0xa5u8; 4096];
        inner[0x60..0x64].copy_from_slice(&2u32.to_le_bytes());
        inner[0x64] = 1;
        zero_free_space(&mut inner);
        assert!(inner[HEADER + 66..].iter().all(|&b| b == 0));
        assert!(inner[HEADER..HEADER + 66].iter().all(|&b| b == 0xa5));
    }

    #[test]
    fn uuid_tree_key_follows_the_subvolume_uuid() {
        let old: [u8; 16] = *b"0123456789abcdef";
        let mut node =
            leaf(UUID_TREE, &[((u64_at(&old, 0), UUID_KEY_SUBVOL, u64_at(&old, 8)), FS_TREE.to_le_bytes().to_vec())]);
        let inodes = HashMap::new();
        let new = *b"ABCDEFGHIJKLMNOP";
        let fixes = Fixes {
            ids: Identity { fsid: [1; 16], dev_uuid: [2; 16], chunk_tree_uuid: [3; 16], subvol_uuid: new },
            time: 0,
            inodes: &inodes,
        };
        fix_leaf(&mut node, &fixes, &Found::default(), Some(old));
        assert_eq!(&node[HEADER..HEADER + 8], &new[..8]);
        assert_eq!(node[HEADER + 8], UUID_KEY_SUBVOL);
        assert_eq!(&node[HEADER + 9..HEADER + 17], &new[8..]);
    }
}
