//! The writer: numbers inodes, places metadata, streams data, then sizes and writes the
//! tail metadata and the superblock. See the crate documentation for the layout.

use crate::alloc::{Alloc, Run};
use crate::bytes::{get_u32, put_u32};
use crate::checksum::{crc32c_raw, fs_seed, inode_seed};
use crate::dir_entry::{self, DirEnt, FT_BLK, FT_CHR, FT_DIR, FT_FIFO, FT_REG, FT_SOCK, FT_SYMLINK, LEAF_SPACE};
use crate::extent::{self, Extent};
use crate::geometry::*;
use crate::group_desc::GroupDesc;
use crate::inode::{self, Inode, FL_EXTENTS, FL_INDEX};
use crate::superblock::Superblock;
use crate::{htree, journal, xattr, Error, Options, Report, SizeRequest};
use mdi_sink::{is_zero, Sink};
use mdi_tree::{EntryId, FileData, Kind, Tree, ROOT};
use rayon::prelude::*;
use std::collections::HashMap;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;

/// The lost+found inode mke2fs uses, and the first non-reserved inode.
const LPF_INO: u32 = 11;
/// lost+found gets 4 blocks, as mke2fs makes it, so e2fsck can reconnect files.
const LPF_BLOCKS: u64 = 4;
/// Inode ratio for free space: one inode per 16 KiB (mke2fs's default).
const BYTES_PER_FREE_INODE: u64 = 16384;
/// Alignment of the superblock regions: 16 blocks = 64 KiB, the cluster size of qcow2
/// and VMDK.
const HEAD_ALIGN_BLOCKS: u64 = 16;
/// Directories with more links than this get i_links_count 1 (dir_nlink).
const MAX_DIR_LINKS: u32 = 65000;
/// EXT4_LINK_MAX: the most names a non-directory may have. dir_nlink's "1 means many"
/// applies to directories only; the kernel refuses link(2) beyond this, and e2fsck
/// compares the count exactly, so more names cannot be written.
const MAX_FILE_LINKS: u32 = 65000;

/// One allocation the writer made before the tail, in order, so that the layout can be
/// replayed for another head size (to find the true minimum size, see [`too_small`]).
#[derive(Clone, Copy)]
enum Req {
    /// Contiguous blocks that are no inode's extents (xattr blocks).
    Contig(u64),
    /// `n` blocks of inode `idx` (node index) at logical block `logical`, as runs.
    Runs { idx: u32, logical: u32, n: u64 },
}

/// The head (superblock, GDT region, resize indirect block) for a filesystem of at most
/// `blocks_ub` blocks, rounded to 64 KiB: the GDT region must hold the descriptors of every
/// group plus mke2fs's reserve for 1024-fold growth. Returns (GDT region, head length).
fn head_for(blocks_ub: u64) -> (u64, u64) {
    let groups_ub = blocks_ub.div_ceil(BLOCKS_PER_GROUP).max(1);
    let gdt_region = desc_blocks(groups_ub) + reserved_gdt_for(blocks_ub).max(1);
    // The superblock region (superblock, GDT region, the resize inode's indirect block) is
    // written last, in every backup group too. Rounding it to 64 KiB keeps it out of the
    // clusters that data lands in, so a compressed container never has to compress a
    // cluster twice.
    let dind = 1 + gdt_region;
    (gdt_region, (dind + 1).next_multiple_of(HEAD_ALIGN_BLOCKS))
}

/// Per-inode state while the filesystem is built.
struct Node {
    /// Tree entry (None for lost+found when we make it).
    entry: Option<EntryId>,
    links: u32,
    inode: Inode,
    extents: Vec<Extent>,
    /// Blocks owned besides data extents (extent tree, xattr block), for i_blocks.
    extra_blocks: u64,
}

fn ft_of(kind: &Kind) -> u8 {
    match kind {
        Kind::Dir { .. } => FT_DIR,
        Kind::File { .. } => FT_REG,
        Kind::Symlink { .. } => FT_SYMLINK,
        Kind::CharDev { .. } => FT_CHR,
        Kind::BlockDev { .. } => FT_BLK,
        Kind::Fifo => FT_FIFO,
        Kind::Socket => FT_SOCK,
    }
}

fn mode_of(kind: &Kind) -> u16 {
    match kind {
        Kind::Dir { .. } => inode::S_IFDIR,
        Kind::File { .. } => inode::S_IFREG,
        Kind::Symlink { .. } => inode::S_IFLNK,
        Kind::CharDev { .. } => inode::S_IFCHR,
        Kind::BlockDev { .. } => inode::S_IFBLK,
        Kind::Fifo => inode::S_IFIFO,
        Kind::Socket => inode::S_IFSOCK,
    }
}

fn check_cancel(opts: &Options) -> Result<(), Error> {
    match &opts.cancel {
        Some(c) if c.load(Ordering::Relaxed) => Err(Error::Interrupted),
        _ => Ok(()),
    }
}

/// Writes `tree` as an ext4 filesystem into `sink` (byte 0 = the filesystem's first byte).
pub fn write(tree: &Tree, opts: &Options, sink: &mut dyn Sink) -> Result<Report, Error> {
    let t0 = std::time::Instant::now();
    let trace = std::env::var_os("MDI_TRACE").is_some();
    let phase = |what: &str| {
        if trace {
            eprintln!("[ext4 {:>8.3}s] {what}", t0.elapsed().as_secs_f64());
        }
    };
    let fs_seed = fs_seed(&opts.uuid);
    let mut hash_seed = [0u32; 4];
    for (i, w) in hash_seed.iter_mut().enumerate() {
        *w = get_u32(&opts.hash_seed, 4 * i);
    }
    let t = (opts.time, 0u32);

    // Sizes are checked before anything is allocated from them.
    match opts.size {
        SizeRequest::Fixed { bytes } if bytes > crate::MAX_BYTES => {
            return Err(Error::TooLarge { bytes, max: crate::MAX_BYTES })
        }
        SizeRequest::Auto { extra_bytes, align_bytes }
            if extra_bytes > crate::MAX_BYTES || align_bytes > crate::MAX_BYTES =>
        {
            return Err(Error::TooLarge { bytes: extra_bytes.max(align_bytes), max: crate::MAX_BYTES })
        }
        _ => {}
    }

    // ---- 1. Number inodes: depth-first in sorted order; hard links share one inode.
    // A non-directory named lost+found at the root would sit beside the lost+found the
    // filesystem needs (two entries of one name): refuse it.
    let has_lpf = match tree.child(ROOT, b"lost+found").map(|c| &tree.get(c).kind) {
        Some(Kind::Dir { .. }) => true,
        Some(k) => return Err(Error::LostFoundNotDir(kind_name(k))),
        None => false,
    };
    let mut ino_of = vec![0u32; tree.len()];
    let mut nodes: Vec<Node> = Vec::new(); // index = ino - 1
    let blank = |entry| Node { entry, links: 0, inode: Inode::default(), extents: Vec::new(), extra_blocks: 0 };
    for _ in 0..10 {
        nodes.push(blank(None));
    }
    nodes[1].entry = Some(ROOT);
    ino_of[ROOT as usize] = 2;
    if !has_lpf {
        nodes.push(blank(None)); // 11: lost+found
    }
    let mut link_ino: HashMap<(u64, u64), u32> = HashMap::new();
    let mut bad_name = None;
    tree.walk(|id| {
        if id == ROOT {
            return;
        }
        let e = tree.get(id);
        if bad_name.is_none()
            && (e.name.is_empty()
                || e.name.len() > 255
                || e.name.contains(&b'/')
                || e.name.contains(&0)
                || e.name == b"."
                || e.name == b"..")
        {
            bad_name = Some(tree.path_of(id));
        }
        if let Some(key) = e.link {
            if let Some(&ino) = link_ino.get(&key) {
                ino_of[id as usize] = ino;
                nodes[ino as usize - 1].links += 1;
                return;
            }
        }
        nodes.push(blank(Some(id)));
        let ino = nodes.len() as u32;
        ino_of[id as usize] = ino;
        nodes[ino as usize - 1].links = 1;
        if let Some(key) = e.link {
            link_ino.insert(key, ino);
        }
    });
    if let Some(p) = bad_name {
        return Err(Error::BadName(p));
    }
    if let Some(n) = nodes.iter().find(|n| n.links > MAX_FILE_LINKS) {
        let id = n.entry.expect("only tree entries have several names");
        return Err(Error::TooManyLinks { path: tree.path_of(id), links: n.links.into(), max: MAX_FILE_LINKS });
    }
    let last_ino = nodes.len() as u64;
    if last_ino > u64::from(u32::MAX) / 2 {
        return Err(Error::TooManyInodes(last_ino));
    }
    let lpf_ino = if has_lpf { ino_of[tree.child(ROOT, b"lost+found").expect("checked") as usize] } else { LPF_INO };

    // ---- 2. The GDT region: descriptors plus reserved blocks, sized from an upper bound
    // of the final size so that it can be fixed before anything else is placed.
    let data_blocks_ub: u64 = tree
        .entries()
        .iter()
        .map(|e| match &e.kind {
            Kind::File { size, .. } => size.div_ceil(BLOCK_SIZE) + size.div_ceil(BLOCK_SIZE * 170),
            Kind::Dir { children } => 2 + (children.len() as u64) / 8,
            _ => 2,
        })
        .sum();
    let blocks_ub = match opts.size {
        SizeRequest::Fixed { bytes } => bytes / BLOCK_SIZE,
        SizeRequest::Auto { extra_bytes, align_bytes } => {
            let inodes_ub = last_ino + extra_bytes / BYTES_PER_FREE_INODE + 64;
            data_blocks_ub
                + (extra_bytes + align_bytes) / BLOCK_SIZE
                + inodes_ub * INODE_SIZE / BLOCK_SIZE
                + 262144
                + 4096
        }
    };
    let (gdt_region, head_len) = head_for(blocks_ub);
    let dind = 1 + gdt_region;
    let mut alloc = Alloc::new(head_len);
    let mut log: Vec<Req> = Vec::new();

    // ---- 3. Metadata known before the data: resize indirect block, then per inode its
    // xattr block and directory / long-symlink blocks, written right away.
    for (idx, node) in nodes.iter_mut().enumerate() {
        check_cancel(opts)?;
        let ino = idx as u32 + 1;
        let is_lpf = ino == LPF_INO && !has_lpf;
        let Some(id) = node.entry.or(is_lpf.then_some(ROOT)) else {
            continue;
        };
        if is_lpf {
            // Our own lost+found: root-owned 0700 directory of 4 empty blocks.
            let seed = inode_seed(fs_seed, ino, 0);
            let mut blocks = vec![dir_entry::leaf_block(
                &[DirEnt { name: b".", ino, ft: FT_DIR }, DirEnt { name: b"..", ino: 2, ft: FT_DIR }],
                seed,
            )];
            for _ in 1..LPF_BLOCKS {
                blocks.push(dir_entry::leaf_block(&[], seed));
            }
            place_blocks(&mut alloc, sink, &blocks, &mut node.extents)?;
            log.push(Req::Runs { idx: idx as u32, logical: 0, n: blocks.len() as u64 });
            let n = &mut *node;
            n.links = 2;
            n.inode = special_inode(inode::S_IFDIR | 0o700, LPF_BLOCKS * BLOCK_SIZE, FL_EXTENTS, t);
            continue;
        }
        let e = tree.get(id);
        let path = || tree.path_of(id);
        let mut node_inode = Inode {
            mode: mode_of(&e.kind) | (e.meta.perm & 0o7777),
            uid: e.meta.uid,
            gid: e.meta.gid,
            atime: t,
            ctime: t,
            mtime: (e.meta.mtime.secs, e.meta.mtime.nsecs),
            crtime: t,
            ..Inode::default()
        };
        match xattr::encode(&e.meta.xattrs).map_err(|source| Error::Xattr { path: path(), source })? {
            xattr::Placement::None => {}
            xattr::Placement::Inline(area) => node_inode.inline_xattrs = area,
            xattr::Placement::Block(mut b) => {
                let at = alloc.contiguous(1);
                log.push(Req::Contig(1));
                xattr::seal_block(&mut b, at, fs_seed);
                sink.write_at(at * BLOCK_SIZE, &b).map_err(Error::Write)?;
                node_inode.file_acl = at;
                node.extra_blocks += 1;
            }
        }
        let seed = inode_seed(fs_seed, ino, 0);
        match &e.kind {
            Kind::Dir { children } => {
                let parent = if id == ROOT { 2 } else { ino_of[e.parent as usize] };
                let mut ents: Vec<DirEnt<'_>> = children
                    .iter()
                    .map(|&c| DirEnt { name: &tree.get(c).name, ino: ino_of[c as usize], ft: ft_of(&tree.get(c).kind) })
                    .collect();
                if id == ROOT && !has_lpf {
                    let pos = ents.partition_point(|d| d.name < &b"lost+found"[..]);
                    ents.insert(pos, DirEnt { name: b"lost+found", ino: LPF_INO, ft: FT_DIR });
                }
                let subdirs = ents.iter().filter(|d| d.ft == FT_DIR).count() as u32;
                let dot = [DirEnt { name: b".", ino, ft: FT_DIR }, DirEnt { name: b"..", ino: parent, ft: FT_DIR }];
                let blocks = if dir_entry::packed_len(&dot) + dir_entry::packed_len(&ents) <= LEAF_SPACE {
                    let mut all = dot.to_vec();
                    all.extend(ents.iter().cloned());
                    vec![dir_entry::leaf_block(&all, seed)]
                } else {
                    node_inode.flags |= FL_INDEX;
                    htree::build(ino, parent, &ents, &hash_seed, seed).map_err(|_| Error::DirTooLarge(path()))?
                };
                node_inode.flags |= FL_EXTENTS;
                node_inode.size = blocks.len() as u64 * BLOCK_SIZE;
                place_blocks(&mut alloc, sink, &blocks, &mut node.extents)?;
                log.push(Req::Runs { idx: idx as u32, logical: 0, n: blocks.len() as u64 });
                let links = 2 + subdirs;
                node.links = if links > MAX_DIR_LINKS { 1 } else { links };
            }
            Kind::Symlink { target } => {
                node_inode.size = target.len() as u64;
                if target.len() > 4095 || target.is_empty() {
                    return Err(Error::SymlinkTooLong(path()));
                }
                if target.len() < 60 {
                    // Fast symlink: the target lives in i_block, no extents flag.
                    node_inode.i_block[..target.len()].copy_from_slice(target);
                } else {
                    let mut b = vec![0u8; BS];
                    b[..target.len()].copy_from_slice(target);
                    node_inode.flags |= FL_EXTENTS;
                    place_blocks(&mut alloc, sink, &[b], &mut node.extents)?;
                    log.push(Req::Runs { idx: idx as u32, logical: 0, n: 1 });
                }
            }
            Kind::CharDev { major, minor } | Kind::BlockDev { major, minor } => {
                // Old 16-bit encoding in i_block[0] when it fits, else the new one in
                // i_block[1] (the kernel's ext4_inode encoding of i_rdev).
                if *major < 256 && *minor < 256 {
                    put_u32(&mut node_inode.i_block, 0, (major << 8) | minor);
                } else {
                    put_u32(&mut node_inode.i_block, 4, (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12));
                }
            }
            Kind::File { size, .. } => {
                node_inode.size = *size;
                node_inode.flags |= FL_EXTENTS;
            }
            Kind::Fifo | Kind::Socket => {}
        }
        node.inode = node_inode;
    }

    phase("metadata before data placed");
    // ---- 4. File data, streamed in inode order.
    let jobs: Vec<(usize, &FileData, u64)> = nodes
        .iter()
        .enumerate()
        .filter_map(|(idx, n)| match n.entry.map(|id| &tree.get(id).kind) {
            Some(Kind::File { data, size }) if *size > 0 => Some((idx, data, *size)),
            _ => None,
        })
        .collect();
    let data_bytes = stream_data(&jobs, &mut nodes, &mut alloc, &mut log, sink, opts)?;

    phase("data streamed");
    // ---- 5. Extent-tree blocks for inodes with more than four extents.
    let mut tree_blocks: Vec<(usize, Vec<u64>)> = Vec::new();
    for (idx, n) in nodes.iter_mut().enumerate() {
        let need = extent::tree_blocks(n.extents.len());
        if need > 0 {
            let at: Vec<u64> = (0..need).map(|_| alloc.contiguous(1)).collect();
            n.extra_blocks += need;
            tree_blocks.push((idx, at));
        }
    }

    // ---- 6. Size the filesystem and place journal, bitmaps and inode tables.
    let used_inodes = last_ino;
    let tail = match size_and_place_tail(&alloc, used_inodes, head_len, opts) {
        Err(Error::TooSmall { have, .. }) => {
            let need = min_fixed_size(&log, nodes.len(), used_inodes)?;
            return Err(Error::TooSmall { need, have });
        }
        r => r?,
    };
    let Tail {
        blocks,
        groups,
        ipg,
        journal_len,
        ref journal_runs,
        ref journal_tree,
        ref block_bitmaps,
        ref inode_bitmaps,
        ref inode_tables,
        alloc: ref final_alloc,
    } = tail;
    let desc = desc_blocks(groups);
    let reserved = (gdt_region - desc).min(MAX_RESERVED_GDT);

    // Journal inode (8).
    {
        let n = &mut nodes[7];
        for &(s, l) in journal_runs {
            let logical = n.extents.iter().map(|e| e.len).sum::<u32>();
            extent::push(&mut n.extents, logical, s, l as u32);
        }
        n.links = 1;
        n.extra_blocks = journal_tree.len() as u64;
        n.inode = special_inode(inode::S_IFREG | 0o600, journal_len * BLOCK_SIZE, FL_EXTENTS, t);
        let jsb = journal::superblock(journal_len as u32, &opts.uuid);
        sink.write_at(journal_runs[0].0 * BLOCK_SIZE, &jsb).map_err(Error::Write)?;
    }
    if !journal_tree.is_empty() {
        tree_blocks.push((7, journal_tree.clone()));
    }

    // Resize inode (7): double-indirect block mapping the reserved GDT blocks.
    let backups = backup_groups(groups);
    {
        let n = &mut nodes[6];
        n.links = 1;
        // mke2fs's size: what a double-indirect map can address; block-mapped (no flags).
        n.inode = special_inode(inode::S_IFREG | 0o600, (1024 * 1024 + 1024 + 12) * BLOCK_SIZE, 0, t);
        n.inode.links = 1;
        n.inode.sectors = (1 + reserved * (1 + backups.len() as u64)) * (BLOCK_SIZE / 512);
        put_u32(&mut n.inode.i_block, 13 * 4, dind as u32); // i_block[EXT2_DIND_BLOCK]
        let mut d = vec![0u8; BS];
        for i in 0..reserved {
            let slot = ((desc + i) % (BLOCK_SIZE / 4)) as usize;
            put_u32(&mut d, slot * 4, (1 + desc + i) as u32);
        }
        sink.write_at(dind * BLOCK_SIZE, &d).map_err(Error::Write)?;
        // Each primary reserved GDT block lists its copies in the backup groups.
        for i in 0..reserved {
            let mut ind = vec![0u8; BS];
            for (k, g) in backups.iter().enumerate() {
                put_u32(&mut ind, k * 4, (1 + desc + i + g * BLOCKS_PER_GROUP) as u32);
            }
            sink.write_at((1 + desc + i) * BLOCK_SIZE, &ind).map_err(Error::Write)?;
        }
    }

    // Root directory links count includes its own "..".
    // Finish inode records: extents, sectors, link counts.
    let mut tree_data: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut tree_at: HashMap<usize, Vec<u64>> = tree_blocks.into_iter().collect();
    for (idx, n) in nodes.iter_mut().enumerate() {
        let ino = idx as u32 + 1;
        if idx == 6 || (n.entry.is_none() && idx != 7 && ino != lpf_ino) {
            continue;
        }
        n.inode.links = n.links as u16;
        let uses_extents = n.inode.flags & FL_EXTENTS != 0;
        if uses_extents {
            let at = tree_at.remove(&idx).unwrap_or_default();
            let enc = extent::encode(&n.extents, &at, inode_seed(fs_seed, ino, 0));
            n.inode.i_block = enc.i_block;
            tree_data.extend(enc.blocks);
        }
        let data: u64 = n.extents.iter().map(|e| u64::from(e.len)).sum();
        n.inode.sectors = (data + n.extra_blocks) * (BLOCK_SIZE / 512);
    }
    tree_data.sort_by_key(|(b, _)| *b);
    for (b, data) in &tree_data {
        sink.write_at(b * BLOCK_SIZE, data).map_err(Error::Write)?;
    }

    phase("tail placed");
    // ---- 7. Bitmaps and inode tables.
    let mut used: Vec<Run> = vec![(0, 1 + desc + reserved), (dind, 1)];
    for &g in &backups {
        used.push((g * BLOCKS_PER_GROUP, 1 + desc + reserved));
    }
    used.extend_from_slice(final_alloc.used());
    used.sort_unstable();
    let mut gds = Vec::with_capacity(groups as usize);
    let mut used_dirs = vec![0u32; groups as usize];
    for (idx, n) in nodes.iter().enumerate() {
        if n.inode.mode & 0o170000 == inode::S_IFDIR {
            used_dirs[idx / ipg as usize] += 1;
        }
    }
    let mut run_i = 0;
    let (mut free_blocks_total, mut free_inodes_total) = (0u64, 0u64);
    for g in 0..groups {
        check_cancel(opts)?;
        let gstart = g * BLOCKS_PER_GROUP;
        let gend = ((g + 1) * BLOCKS_PER_GROUP).min(blocks);
        let mut bb = vec![0u8; BS];
        let mut used_here = 0u64;
        while run_i < used.len() && used[run_i].0 + used[run_i].1 <= gstart {
            run_i += 1;
        }
        let mut j = run_i;
        while j < used.len() && used[j].0 < gend {
            let s = used[j].0.max(gstart);
            let e = (used[j].0 + used[j].1).min(gend);
            if e > s {
                set_bits(&mut bb, (s - gstart) as usize, (e - gstart) as usize);
                used_here += e - s;
            }
            j += 1;
        }
        // Bits past the end of the filesystem are set (e2fsck: "padding at end of bitmap").
        set_bits(&mut bb, (gend - gstart) as usize, BLOCKS_PER_GROUP as usize);
        let free_b = (gend - gstart) - used_here;
        let first_ino = g * u64::from(ipg);
        let used_i = used_inodes.saturating_sub(first_ino).min(u64::from(ipg));
        let mut ib = vec![0u8; BS];
        set_bits(&mut ib, 0, used_i as usize);
        set_bits(&mut ib, ipg as usize, BS * 8);
        let gd = GroupDesc {
            block_bitmap: block_bitmaps[g as usize],
            inode_bitmap: inode_bitmaps[g as usize],
            inode_table: inode_tables[g as usize],
            free_blocks: free_b as u32,
            free_inodes: (u64::from(ipg) - used_i) as u32,
            used_dirs: used_dirs[g as usize],
            itable_unused: (u64::from(ipg) - used_i) as u32,
            block_bitmap_csum: crc32c_raw(fs_seed, &bb),
            inode_bitmap_csum: crc32c_raw(fs_seed, &ib[..ipg as usize / 8]),
        };
        free_blocks_total += free_b;
        free_inodes_total += u64::from(ipg) - used_i;
        sink.write_at(block_bitmaps[g as usize] * BLOCK_SIZE, &bb).map_err(Error::Write)?;
        sink.write_at(inode_bitmaps[g as usize] * BLOCK_SIZE, &ib).map_err(Error::Write)?;
        // Inode table: the used inodes are a prefix of the group.
        if used_i > 0 {
            let mut it = vec![0u8; (used_i * INODE_SIZE) as usize];
            for k in 0..used_i {
                let ino = first_ino + k + 1;
                let n = &nodes[ino as usize - 1];
                let off = (k * INODE_SIZE) as usize;
                if n.inode.mode != 0 || n.inode.links != 0 {
                    n.inode.encode(ino as u32, fs_seed, &mut it[off..off + INODE_SIZE as usize]);
                }
            }
            sink.write_at(inode_tables[g as usize] * BLOCK_SIZE, &it).map_err(Error::Write)?;
        }
        gds.push(gd);
    }

    // ---- 8. Superblock and descriptors, primary and backups.
    let mut label = [0u8; 16];
    let l = opts.label.len().min(16);
    label[..l].copy_from_slice(&opts.label[..l]);
    let mut jnl_blocks = [0u32; 17];
    for (i, w) in jnl_blocks.iter_mut().take(15).enumerate() {
        *w = get_u32(&nodes[7].inode.i_block, 4 * i);
    }
    jnl_blocks[15] = ((journal_len * BLOCK_SIZE) >> 32) as u32;
    jnl_blocks[16] = (journal_len * BLOCK_SIZE) as u32;
    let sb = Superblock {
        inodes_count: (u64::from(ipg) * groups) as u32,
        blocks_count: blocks,
        free_blocks: free_blocks_total,
        free_inodes: free_inodes_total as u32,
        inodes_per_group: ipg,
        time: opts.time as u32,
        uuid: opts.uuid,
        label,
        reserved_gdt_blocks: reserved as u16,
        hash_seed,
        jnl_blocks,
    };
    let mut gdt = vec![0u8; (desc * BLOCK_SIZE) as usize];
    for (g, gd) in gds.iter().enumerate() {
        gd.encode(g as u32, fs_seed, &mut gdt[g * DESC_SIZE as usize..]);
    }
    for g in std::iter::once(0).chain(backups.iter().copied()) {
        let mut first = vec![0u8; BS];
        let off = if g == 0 { 1024 } else { 0 };
        first[off..off + 1024].copy_from_slice(&sb.encode(g as u16));
        sink.write_at(g * BLOCKS_PER_GROUP * BLOCK_SIZE, &first).map_err(Error::Write)?;
        sink.write_at((g * BLOCKS_PER_GROUP + 1) * BLOCK_SIZE, &gdt).map_err(Error::Write)?;
    }

    phase("done");
    Ok(Report {
        bytes: blocks * BLOCK_SIZE,
        blocks,
        free_blocks: free_blocks_total,
        inodes: u64::from(ipg) * groups,
        free_inodes: free_inodes_total,
        groups,
        data_bytes,
    })
}

/// An inode the filesystem itself owns (lost+found, journal, resize inode): root-owned,
/// every time SOURCE_DATE_EPOCH.
fn special_inode(mode: u16, size: u64, flags: u32, t: (i64, u32)) -> Inode {
    Inode { mode, size, flags, atime: t, ctime: t, mtime: t, crtime: t, ..Inode::default() }
}

/// Sets bits `from..to` of a bitmap.
fn set_bits(b: &mut [u8], mut from: usize, to: usize) {
    while from < to && from % 8 != 0 {
        b[from / 8] |= 1 << (from % 8);
        from += 1;
    }
    while from + 8 <= to {
        b[from / 8] = 0xFF;
        from += 8;
    }
    while from < to {
        b[from / 8] |= 1 << (from % 8);
        from += 1;
    }
}

/// Allocates and writes whole metadata blocks of one inode, recording extents.
fn place_blocks(
    alloc: &mut Alloc,
    sink: &mut dyn Sink,
    blocks: &[Vec<u8>],
    extents: &mut Vec<Extent>,
) -> Result<(), Error> {
    let mut logical = 0u32;
    for (s, l) in alloc.runs(blocks.len() as u64) {
        let mut buf = Vec::with_capacity((l * BLOCK_SIZE) as usize);
        for b in &blocks[logical as usize..(logical as u64 + l) as usize] {
            buf.extend_from_slice(b);
        }
        sink.write_at(s * BLOCK_SIZE, &buf).map_err(Error::Write)?;
        extent::push(extents, logical, s, l as u32);
        logical += l as u32;
    }
    Ok(())
}

/// The tail placement once the size is known.
struct Tail {
    blocks: u64,
    groups: u64,
    ipg: u32,
    journal_len: u64,
    journal_runs: Vec<Run>,
    journal_tree: Vec<u64>,
    block_bitmaps: Vec<u64>,
    inode_bitmaps: Vec<u64>,
    inode_tables: Vec<u64>,
    alloc: Alloc,
}

/// Places journal, bitmaps and inode tables after `base` for `blocks` blocks in `groups`
/// groups; returns the placement and its end.
fn place_tail(base: &Alloc, blocks: u64, groups: u64, ipg: u64, journal_len: u64) -> (Tail, u64) {
    let itb = ipg * INODE_SIZE / BLOCK_SIZE;
    let mut a = base.clone();
    let journal_runs = a.runs(journal_len);
    let jext: Vec<Extent> = {
        let mut v = Vec::new();
        let mut l = 0u32;
        for &(s, n) in &journal_runs {
            extent::push(&mut v, l, s, n as u32);
            l += n as u32;
        }
        v
    };
    let journal_tree: Vec<u64> = (0..extent::tree_blocks(jext.len())).map(|_| a.contiguous(1)).collect();
    let block_bitmaps: Vec<u64> = (0..groups).map(|_| a.contiguous(1)).collect();
    let inode_bitmaps: Vec<u64> = (0..groups).map(|_| a.contiguous(1)).collect();
    let inode_tables: Vec<u64> = (0..groups).map(|_| a.contiguous(itb)).collect();
    let end = a.next();
    let tail = Tail {
        blocks,
        groups,
        ipg: ipg as u32,
        journal_len,
        journal_runs,
        journal_tree,
        block_bitmaps,
        inode_bitmaps,
        inode_tables,
        alloc: a,
    };
    (tail, end)
}

/// Inodes per group for `wanted` inodes over `groups` groups: whole inode-table blocks,
/// at most one bitmap block's worth, and s_inodes_count (32 bits) must hold the total.
fn ipg_for(wanted: u64, groups: u64) -> u64 {
    wanted.div_ceil(groups).next_multiple_of(INODES_PER_BLOCK).clamp(INODES_PER_BLOCK, max_ipg(groups))
}

/// The most inodes per group: one bitmap block's worth, and s_inodes_count (32 bits)
/// must hold the total.
fn max_ipg(groups: u64) -> u64 {
    let cap = (u64::from(u32::MAX) / groups) / INODES_PER_BLOCK * INODES_PER_BLOCK;
    MAX_INODES_PER_GROUP.min(cap).max(INODES_PER_BLOCK)
}

/// Finds the filesystem size and places the journal, bitmaps and inode tables after
/// everything else. The size, the journal size (a step function of the size), the group
/// count and the inodes per group depend on each other: iterate to the fixed point.
fn size_and_place_tail(base: &Alloc, used_inodes: u64, head_len: u64, opts: &Options) -> Result<Tail, Error> {
    let (extra_blocks, align) = match opts.size {
        SizeRequest::Auto { extra_bytes, align_bytes } => {
            (extra_bytes.div_ceil(BLOCK_SIZE), (align_bytes / BLOCK_SIZE).max(1))
        }
        SizeRequest::Fixed { bytes } => return fixed_tail(base, used_inodes, head_len, bytes),
    };
    let mut blocks = base.next() + extra_blocks;
    for _ in 0..64 {
        if blocks > crate::MAX_BYTES / BLOCK_SIZE {
            return Err(Error::TooLarge { bytes: blocks * BLOCK_SIZE, max: crate::MAX_BYTES });
        }
        let groups = blocks.div_ceil(BLOCKS_PER_GROUP).max(1);
        let wanted = used_inodes + 16 + extra_blocks * BLOCK_SIZE / BYTES_PER_FREE_INODE;
        let min_groups_for_inodes = wanted.div_ceil(MAX_INODES_PER_GROUP);
        // The fewest blocks that give enough groups for the inodes.
        let floor = match min_groups_for_inodes {
            0 | 1 => 0,
            g => (g - 1) * BLOCKS_PER_GROUP + head_len + 1024,
        };
        if groups < min_groups_for_inodes {
            blocks = floor.next_multiple_of(align);
            continue;
        }
        let ipg = ipg_for(wanted, groups);
        let journal_len = journal_blocks_for(blocks);
        let (tail, end) = place_tail(base, blocks, groups, ipg, journal_len);
        let w = (end + extra_blocks).max(floor).next_multiple_of(align);
        // A last group that is a backup group must hold more than its backup region.
        let last_g = w.div_ceil(BLOCKS_PER_GROUP) - 1;
        let want_blocks = if last_g > 0 && has_super(last_g) && w - last_g * BLOCKS_PER_GROUP <= head_len {
            (last_g * BLOCKS_PER_GROUP + head_len + 1).next_multiple_of(align)
        } else {
            w
        };
        if want_blocks == blocks && journal_blocks_for(want_blocks) == journal_len {
            return Ok(tail);
        }
        blocks = want_blocks;
    }
    unreachable!("the size iteration converges: every quantity grows monotonically with the size")
}

/// The tail of a filesystem of a fixed size. mke2fs's defaults come first (an inode per
/// 16 KiB, the journal of its size table); when the tree leaves no room for them, fewer
/// inodes (the tree's own plus 16) and then ever smaller journals, down to JBD2's 1024
/// blocks. So a size that fits the tree never fails because of a default that grows with
/// the size, and whether a size fits is monotonic in the size (which [`min_fixed_size`]
/// relies on). Sizes that fitted with the defaults get the same bytes as always.
fn fixed_tail(base: &Alloc, used_inodes: u64, head_len: u64, bytes: u64) -> Result<Tail, Error> {
    let too_small = || Error::TooSmall { need: 0, have: bytes };
    let blocks = trim_last_group(bytes / BLOCK_SIZE, head_len);
    let groups = blocks.div_ceil(BLOCKS_PER_GROUP).max(1);
    let least = used_inodes + 16;
    if least > groups * max_ipg(groups) {
        return Err(too_small());
    }
    let default_journal = journal_blocks_for(blocks);
    let mut tries = vec![(least.max(blocks * BLOCK_SIZE / BYTES_PER_FREE_INODE), default_journal)];
    let mut j = default_journal;
    loop {
        tries.push((least, j));
        if j <= 1024 {
            break;
        }
        j = (j / 2).max(1024);
    }
    for (wanted, journal_len) in tries {
        if blocks <= head_len + journal_len {
            continue;
        }
        let (tail, end) = place_tail(base, blocks, groups, ipg_for(wanted, groups), journal_len);
        if end <= blocks {
            return Ok(tail);
        }
    }
    Err(too_small())
}

/// A fixed size whose last group is a backup group too small to hold more than its
/// backup region loses that group (as mke2fs drops a runt last group).
fn trim_last_group(blocks: u64, head_len: u64) -> u64 {
    let last_g = blocks.div_ceil(BLOCKS_PER_GROUP).saturating_sub(1);
    if last_g > 0 && has_super(last_g) && blocks - last_g * BLOCKS_PER_GROUP <= head_len {
        last_g * BLOCKS_PER_GROUP
    } else {
        blocks
    }
}

/// The allocations before the tail as they fall for a head of `head_len` blocks: the
/// same requests in the same order, extents counted the same way, then the extent-tree
/// blocks (step 5 of [`write`]).
fn replay(log: &[Req], nodes: usize, head_len: u64) -> Alloc {
    let mut a = Alloc::new(head_len);
    let mut extents: Vec<Vec<Extent>> = vec![Vec::new(); nodes];
    for r in log {
        match *r {
            Req::Contig(n) => {
                a.contiguous(n);
            }
            Req::Runs { idx, logical, n } => {
                let mut done = 0u64;
                while done < n {
                    let (s, l) = a.run(n - done);
                    extent::push(&mut extents[idx as usize], logical + done as u32, s, l as u32);
                    done += l;
                }
            }
        }
    }
    for e in &extents {
        for _ in 0..extent::tree_blocks(e.len()) {
            a.contiguous(1);
        }
    }
    a
}

/// Whether a filesystem of exactly `bytes` holds what `log` placed.
fn fits(log: &[Req], nodes: usize, used_inodes: u64, bytes: u64) -> bool {
    let (_, head_len) = head_for(bytes / BLOCK_SIZE);
    fixed_tail(&replay(log, nodes, head_len), used_inodes, head_len, bytes).is_ok()
}

/// The granularity of the minimum reported by [`Error::TooSmall`]: every caller sizes
/// partitions in whole MiB.
const NEED_STEP: u64 = 1 << 20;

/// The smallest whole-MiB size that holds the tree, found by replaying the layout for
/// each candidate size (the head, and so every later block, moves with the size): a
/// binary search, since fitting is monotonic in the size ([`fixed_tail`]).
fn min_fixed_size(log: &[Req], nodes: usize, used_inodes: u64) -> Result<u64, Error> {
    let max_steps = crate::MAX_BYTES / NEED_STEP;
    let fit = |steps: u64| fits(log, nodes, used_inodes, steps * NEED_STEP);
    let mut hi = 1u64;
    while !fit(hi) {
        if hi >= max_steps {
            return Err(Error::TooLarge { bytes: crate::MAX_BYTES + 1, max: crate::MAX_BYTES });
        }
        hi = (hi * 2).min(max_steps);
    }
    let mut lo = 0u64; // does not fit (nothing fits in 0 bytes)
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fit(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Ok(hi * NEED_STEP)
}

/// A kind's name for messages.
fn kind_name(k: &Kind) -> &'static str {
    match k {
        Kind::Dir { .. } => "folder",
        Kind::File { .. } => "regular file",
        Kind::Symlink { .. } => "symlink",
        Kind::CharDev { .. } => "character device",
        Kind::BlockDev { .. } => "block device",
        Kind::Fifo => "named pipe",
        Kind::Socket => "socket",
    }
}

// ---------------------------------------------------------------------------------------
// Data streaming

/// Bytes of file data handed to the readers at once; bounds memory (two batches live).
const BATCH_BYTES: u64 = 32 << 20;
/// Largest piece of one file read by one task.
const CHUNK_BYTES: u64 = 8 << 20;

struct Chunk<'a> {
    job: usize,
    data: &'a FileData,
    offset: u64,
    len: u64,
}

/// Non-zero blocks of one chunk: runs of (logical block, count) and their bytes, packed.
struct ChunkOut {
    job: usize,
    runs: Vec<(u64, u64)>,
    bytes: Vec<u8>,
}

/// Keeps the non-zero blocks of `out.bytes[from..]` (which holds data for logical bytes
/// starting at `at`), moving them down in place, and records their runs.
fn compact(out: &mut ChunkOut, from: usize, at: u64) {
    // Round the tail up to a whole block (zero padding past the end of file).
    let len = out.bytes.len().next_multiple_of(BS);
    out.bytes.resize(len, 0);
    let mut w = from;
    let mut r = from;
    while r < len {
        if !is_zero(&out.bytes[r..r + BS]) {
            let lb = at / BLOCK_SIZE + ((r - from) / BS) as u64;
            match out.runs.last_mut() {
                Some((s, n)) if *s + *n == lb => *n += 1,
                _ => out.runs.push((lb, 1)),
            }
            if w != r {
                out.bytes.copy_within(r..r + BS, w);
            }
            w += BS;
        }
        r += BS;
    }
    out.bytes.truncate(w);
}

/// Files smaller than this are read whole, without asking the source for its holes.
const SEEK_HOLES_FROM: u64 = 256 << 10;

fn read_chunk(c: &Chunk<'_>, file_size: u64) -> Result<ChunkOut, Error> {
    let mut out = ChunkOut {
        job: c.job,
        runs: Vec::new(),
        bytes: Vec::with_capacity(c.len.next_multiple_of(BLOCK_SIZE) as usize),
    };
    match c.data {
        FileData::Inline(bytes) => {
            if bytes.len() as u64 != file_size {
                return Err(Error::SourceChanged("<generated>".into()));
            }
            out.bytes.extend_from_slice(&bytes[c.offset as usize..(c.offset + c.len) as usize]);
            compact(&mut out, 0, c.offset);
        }
        FileData::Path(path) => {
            use std::os::unix::fs::MetadataExt;
            let rerr = |source| Error::Read { path: path.clone(), source };
            let f = mdi_tree::open_file(path).map_err(rerr)?;
            let md = f.metadata().map_err(rerr)?;
            if md.len() != file_size {
                return Err(Error::SourceChanged(path.clone()));
            }
            // Only a file with fewer allocated bytes than its size can have holes.
            let maybe_sparse = file_size >= SEEK_HOLES_FROM && md.blocks() * 512 < file_size;
            let end = c.offset + c.len;
            let mut pos = c.offset;
            while pos < end {
                // Skip holes of the source without reading them (they are zero anyway).
                let (data_at, hole_at) = if maybe_sparse {
                    let d = match rustix::fs::seek(&f, rustix::fs::SeekFrom::Data(pos)) {
                        Ok(p) => p,
                        Err(rustix::io::Errno::NXIO) => end,
                        Err(_) => pos,
                    };
                    let d = (d / BLOCK_SIZE * BLOCK_SIZE).max(pos);
                    if d >= end {
                        break;
                    }
                    let h = match rustix::fs::seek(&f, rustix::fs::SeekFrom::Hole(d)) {
                        Ok(p) if p < end => p.next_multiple_of(BLOCK_SIZE).min(end),
                        _ => end,
                    };
                    (d, h)
                } else {
                    (pos, end)
                };
                let from = out.bytes.len();
                let n = (hole_at - data_at) as usize;
                out.bytes.resize(from + n, 0);
                f.read_exact_at(&mut out.bytes[from..], data_at).map_err(|e| {
                    if e.kind() == io::ErrorKind::UnexpectedEof {
                        Error::SourceChanged(path.clone())
                    } else {
                        rerr(e)
                    }
                })?;
                compact(&mut out, from, data_at);
                pos = hole_at;
            }
        }
    }
    Ok(out)
}

/// Most slices one vectored write takes (Linux IOV_MAX).
const MAX_IOV: usize = 1024;

/// Writes physically contiguous pieces with as few vectored writes as possible.
fn write_pieces(sink: &mut dyn Sink, pieces: &[(u64, &[u8])]) -> Result<(), Error> {
    let mut i = 0;
    while i < pieces.len() {
        let start = pieces[i].0;
        let mut end = start + pieces[i].1.len() as u64;
        let mut j = i + 1;
        while j < pieces.len() && j - i < MAX_IOV && pieces[j].0 == end {
            end += pieces[j].1.len() as u64;
            j += 1;
        }
        let bufs: Vec<&[u8]> = pieces[i..j].iter().map(|p| p.1).collect();
        sink.write_vectored_at(start, &bufs).map_err(Error::Write)?;
        i = j;
    }
    Ok(())
}

/// Reads every job's file in parallel (in bounded batches, one batch ahead of the
/// writer) and places its non-zero blocks in job order. Returns the data bytes stored.
fn stream_data(
    jobs: &[(usize, &FileData, u64)],
    nodes: &mut [Node],
    alloc: &mut Alloc,
    log: &mut Vec<Req>,
    sink: &mut dyn Sink,
    opts: &Options,
) -> Result<u64, Error> {
    // Cut the work into chunks, then into batches.
    let mut batches: Vec<Vec<Chunk<'_>>> = Vec::new();
    let mut cur = Vec::new();
    let mut cur_bytes = 0u64;
    for (j, &(_, data, size)) in jobs.iter().enumerate() {
        let mut off = 0;
        while off < size {
            let len = CHUNK_BYTES.min(size - off);
            cur.push(Chunk { job: j, data, offset: off, len });
            cur_bytes += len;
            off += len;
            if cur_bytes >= BATCH_BYTES || cur.len() >= 8192 {
                batches.push(std::mem::take(&mut cur));
                cur_bytes = 0;
            }
        }
    }
    if !cur.is_empty() {
        batches.push(cur);
    }
    let sizes: Vec<u64> = jobs.iter().map(|j| j.2).collect();
    let mut stored = 0u64;
    std::thread::scope(|s| -> Result<(), Error> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<ChunkOut>, Error>>(1);
        let sizes = &sizes;
        let batches = &batches;
        let cancel = opts.cancel.clone();
        s.spawn(move || {
            // Reading is mostly waiting for the disk: keep more reads in flight than there
            // are cores. The order of the output does not depend on it.
            let readers =
                rayon::ThreadPoolBuilder::new().num_threads((rayon::current_num_threads() * 4).clamp(4, 32)).build();
            let Ok(readers) = readers else {
                let _ = tx.send(Err(Error::Write(io::Error::other("cannot start reader threads"))));
                return;
            };
            for batch in batches {
                if cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed)) {
                    let _ = tx.send(Err(Error::Interrupted));
                    return;
                }
                let r: Result<Vec<ChunkOut>, Error> =
                    readers.install(|| batch.par_iter().map(|c| read_chunk(c, sizes[c.job])).collect());
                let failed = r.is_err();
                if tx.send(r).is_err() || failed {
                    return;
                }
            }
        });
        for _ in 0..batches.len() {
            let outs = rx.recv().map_err(|_| Error::Interrupted)??;
            let mut pieces: Vec<(u64, &[u8])> = Vec::new();
            for out in &outs {
                let idx = jobs[out.job].0;
                let mut off = 0usize;
                for &(lb, count) in &out.runs {
                    log.push(Req::Runs { idx: idx as u32, logical: lb as u32, n: count });
                    let mut done = 0u64;
                    while done < count {
                        let (s, l) = alloc.run(count - done);
                        let bytes = &out.bytes[off..off + (l * BLOCK_SIZE) as usize];
                        pieces.push((s * BLOCK_SIZE, bytes));
                        extent::push(&mut nodes[idx].extents, (lb + done) as u32, s, l as u32);
                        off += bytes.len();
                        done += l;
                    }
                }
                stored += out.bytes.len() as u64;
                if let Some(p) = &opts.progress {
                    p.fetch_add(out.bytes.len() as u64, Ordering::Relaxed);
                }
            }
            write_pieces(sink, &pieces)?;
            check_cancel(opts)?;
        }
        Ok(())
    })?;
    Ok(stored)
}
