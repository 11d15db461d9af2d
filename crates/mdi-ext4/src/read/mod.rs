//! Reading ext2/3/4 back, for `make-disk-image inspect` and `diff` (kernel
//! Documentation/filesystems/ext4, the "on-disk layout" document, for every offset).
//!
//! Read: the superblock, group descriptors (including meta_bg), inodes of any size,
//! extent trees and ext2/3 block maps, linear and hash-indexed directories (the index is
//! not needed: its blocks read as empty directory blocks), fast and slow symlinks, device
//! numbers, extended attributes in the inode and in an attribute block, and inline data
//! (files, symlinks and directories kept in i_block and "system.data"). Not read:
//! attribute values kept in inodes (ea_inode), which give an [`Error::Unsupported`] for
//! that one file. The journal is not replayed.
//!
//! A hostile image cannot make the reader loop or allocate without bound: extent trees are
//! at most five levels deep and must be strictly ordered, a file maps at most as many
//! blocks as the device holds, a block number must lie inside the filesystem, directory
//! entries must stay inside their block, and every sum of on-disk values is checked.
//! Checksums are verified and mismatches reported (the superblock, group descriptors and
//! inodes through `checksum_ok` flags), not refused, so a damaged filesystem still shows
//! what is left.

mod superblock;
mod xattr;

pub use superblock::Superblock;

use crate::checksum::{crc32c_raw, inode_seed};
use mdi_sink::ReadAt;
use std::io;

/// Why something could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading the device failed (or a structure lies past its end).
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The filesystem is damaged.
    #[error("corrupt ext4: {0}")]
    Corrupt(String),
    /// A feature this reader does not implement.
    #[error("unsupported ext4 feature: {0}")]
    Unsupported(String),
}

impl Error {
    pub(crate) fn corrupt(msg: impl Into<String>) -> Error {
        Error::Corrupt(msg.into())
    }
}

pub(crate) fn le16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
pub(crate) fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
pub(crate) fn le64(b: &[u8], o: usize) -> u64 {
    u64::from(le32(b, o)) | (u64::from(le32(b, o + 4)) << 32)
}

/// The root directory's inode number.
pub const ROOT_INO: u32 = 2;
/// Deepest extent tree (the kernel's EXT4_MAX_EXTENT_DEPTH).
const MAX_EXTENT_DEPTH: u16 = 5;
/// Longest symlink target read.
const MAX_LINK: u64 = 4096;
/// Bytes handed to a content visitor at once.
const CHUNK: u64 = 256 << 10;

// i_flags bits.
use crate::inode::{FL_EXTENTS, FL_INDEX};
const FL_INLINE_DATA: u32 = 0x1000_0000;
const FL_HUGE_FILE: u32 = 0x40000;

/// One group descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupDesc {
    /// bg_block_bitmap.
    pub block_bitmap: u64,
    /// bg_inode_bitmap.
    pub inode_bitmap: u64,
    /// bg_inode_table.
    pub inode_table: u64,
    /// bg_free_blocks_count.
    pub free_blocks: u32,
    /// bg_free_inodes_count.
    pub free_inodes: u32,
    /// bg_used_dirs_count.
    pub used_dirs: u32,
    /// bg_flags.
    pub flags: u16,
    /// bg_itable_unused.
    pub itable_unused: u32,
    /// Whether bg_checksum matches (metadata_csum only; true otherwise).
    pub checksum_ok: bool,
}

/// A time with nanoseconds as ext4 keeps it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Time {
    /// Seconds since the epoch.
    pub secs: i64,
    /// Nanoseconds.
    pub nsecs: u32,
}

/// A decoded inode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inode {
    /// Its number.
    pub ino: u32,
    /// i_mode: type and permission bits.
    pub mode: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// i_size.
    pub size: u64,
    /// i_links_count.
    pub links: u16,
    /// Access, change, modification times.
    pub atime: Time,
    /// Change time.
    pub ctime: Time,
    /// Modification time.
    pub mtime: Time,
    /// Creation time (inodes with room for it).
    pub crtime: Option<Time>,
    /// i_dtime.
    pub dtime: u32,
    /// i_flags.
    pub flags: u32,
    /// i_generation.
    pub generation: u32,
    /// i_file_acl: the attribute block, or 0.
    pub file_acl: u64,
    /// i_blocks in 512-byte units.
    pub sectors: u64,
    /// i_block.
    pub i_block: [u8; 60],
    /// The in-inode extended attribute area (after i_extra_isize), possibly empty.
    pub xattr_area: Vec<u8>,
    /// Whether the inode checksum matches (metadata_csum only; true otherwise).
    pub checksum_ok: bool,
}

/// File types from i_mode: the writer's constants.
pub use crate::inode::{S_IFBLK, S_IFCHR, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG};

impl Inode {
    /// The type bits.
    pub fn kind(&self) -> u16 {
        self.mode & S_IFMT
    }

    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        self.kind() == S_IFDIR
    }

    /// (major, minor) of a device inode (old 16-bit or new 32-bit encoding).
    pub fn rdev(&self) -> (u32, u32) {
        let (w0, w1) = (le32(&self.i_block, 0), le32(&self.i_block, 4));
        if w0 != 0 {
            ((w0 >> 8) & 0xFF, w0 & 0xFF)
        } else {
            ((w1 & 0xF_FF00) >> 8, (w1 & 0xFF) | ((w1 >> 12) & 0xF_FF00))
        }
    }

    /// Whether the directory is hash-indexed.
    pub fn is_indexed(&self) -> bool {
        self.flags & FL_INDEX != 0
    }
}

/// Receives a file's content as (file offset, bytes) pieces.
pub type Visit<'v> = dyn FnMut(u64, &[u8]) -> Result<(), Error> + 'v;

/// Extended attributes: (full name, value) pairs.
pub type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// One mapped run of a file: `len` blocks from logical block `logical` at `start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// First logical block.
    pub logical: u64,
    /// First physical block.
    pub start: u64,
    /// Blocks.
    pub len: u64,
    /// Allocated but unwritten: reads as zeros.
    pub unwritten: bool,
}

/// Where a file's blocks are.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Map {
    /// Data runs in logical order.
    pub extents: Vec<Extent>,
    /// Mapping blocks: extent tree nodes or indirect blocks.
    pub meta: Vec<u64>,
}

/// State of walking an ext2/3 block map.
struct BlockMap {
    /// Logical blocks the file size covers.
    blocks: u64,
    /// The next logical block.
    logical: u64,
    /// Blocks that may still be mapped.
    budget: u64,
    /// Indirect blocks seen.
    seen: std::collections::HashSet<u64>,
}

/// One directory entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// Name bytes.
    pub name: Vec<u8>,
    /// Inode number.
    pub ino: u32,
    /// file_type byte (0 without the filetype feature).
    pub file_type: u8,
}

/// An opened filesystem.
pub struct Fs<'a> {
    dev: &'a dyn ReadAt,
    /// The superblock.
    pub sb: Superblock,
    gdt: Vec<GroupDesc>,
}

impl<'a> Fs<'a> {
    /// Opens the filesystem on `dev` (the partition, byte 0 = the filesystem's first byte).
    pub fn open(dev: &'a dyn ReadAt) -> Result<Fs<'a>, Error> {
        let mut raw = vec![0u8; 1024];
        dev.read_at(1024, &mut raw)
            .map_err(|e| Error::corrupt(format!("cannot read the superblock at byte 1024: {e}")))?;
        let sb = Superblock::decode(&raw)?;
        let groups = sb.groups();
        let gdt_bytes = groups.checked_mul(sb.desc_size).filter(|&b| b <= dev.size()).ok_or_else(|| {
            Error::corrupt(format!(
                "{groups} block groups of {} blocks: the group descriptors would not fit the device ({} bytes)",
                sb.blocks_per_group,
                dev.size()
            ))
        })?;
        let mut fs = Fs { dev, sb, gdt: Vec::new() };
        let raw = fs.read_gdt(groups, gdt_bytes)?;
        let ds = fs.sb.desc_size as usize;
        let seed = fs.sb.csum_seed();
        for (g, d) in raw.chunks_exact(ds).enumerate() {
            fs.gdt.push(decode_desc(d, g as u32, fs.sb.incompat & superblock::INCOMPAT_64BIT != 0, &fs.sb, seed));
        }
        Ok(fs)
    }

    /// Every group descriptor's bytes, in group order.
    fn read_gdt(&self, groups: u64, bytes: u64) -> Result<Vec<u8>, Error> {
        let bs = self.sb.block_size;
        let first = self.sb.first_data_block + 1 + self.group_zero_adjust();
        let mut raw = vec![0u8; bytes as usize];
        if self.sb.incompat & superblock::INCOMPAT_META_BG == 0 {
            self.read_block_bytes(first, 0, &mut raw)?;
            return Ok(raw);
        }
        // meta_bg: groups below s_first_meta_bg * (descriptors per block) keep the
        // classic layout; each later meta group's block sits in the meta group's first
        // group, after the superblock backup if there is one.
        let per_block = bs / self.sb.desc_size;
        let classic = self.sb.first_meta_bg.saturating_mul(per_block).min(groups);
        let classic_bytes = (classic * self.sb.desc_size) as usize;
        self.read_block_bytes(first, 0, &mut raw[..classic_bytes])?;
        let mut g = classic;
        while g < groups {
            let mg_first = g / per_block * per_block;
            let block = self.sb.first_data_block
                + mg_first * self.sb.blocks_per_group
                + u64::from(self.sb.has_super(mg_first))
                + if mg_first == 0 { self.group_zero_adjust() } else { 0 };
            let at = (g * self.sb.desc_size) as usize;
            let n = (per_block.min(groups - g) * self.sb.desc_size) as usize;
            self.read_block_bytes(block, 0, &mut raw[at..at + n])?;
            g += per_block;
        }
        Ok(raw)
    }

    /// Bigalloc with 1 KiB blocks has s_first_data_block 0 but keeps the superblock at byte
    /// 1024, that is block 1: group 0's superblock and descriptors sit one block later than
    /// s_first_data_block says (e2fsprogs lib/ext2fs/openfs.c, "group_zero_adjust").
    fn group_zero_adjust(&self) -> u64 {
        u64::from(self.sb.block_size == 1024 && self.sb.first_data_block == 0)
    }

    /// The device size in blocks, capped by the filesystem's: the most blocks any one
    /// file can own.
    pub fn block_limit(&self) -> u64 {
        self.sb.blocks_count.min(self.dev.size() / self.sb.block_size)
    }

    /// Group descriptors.
    pub fn groups(&self) -> &[GroupDesc] {
        &self.gdt
    }

    /// Reads `buf.len()` bytes from `within` bytes into block `block`.
    fn read_block_bytes(&self, block: u64, within: u64, buf: &mut [u8]) -> Result<(), Error> {
        if block >= self.sb.blocks_count {
            return Err(Error::corrupt(format!("block {block} is past the end ({} blocks)", self.sb.blocks_count)));
        }
        let off = block
            .checked_mul(self.sb.block_size)
            .and_then(|o| o.checked_add(within))
            .ok_or_else(|| Error::corrupt(format!("block {block} is out of range")))?;
        self.dev.read_at(off, buf).map_err(|e| Error::Io(io::Error::new(e.kind(), format!("block {block}: {e}"))))
    }

    fn read_block(&self, block: u64) -> Result<Vec<u8>, Error> {
        let mut b = vec![0u8; self.sb.block_size as usize];
        self.read_block_bytes(block, 0, &mut b)?;
        Ok(b)
    }

    /// Reads inode `ino`.
    pub fn inode(&self, ino: u32) -> Result<Inode, Error> {
        if ino == 0 || ino > self.sb.inodes_count {
            return Err(Error::corrupt(format!("inode number {ino} is not in 1..={}", self.sb.inodes_count)));
        }
        let ipg = self.sb.inodes_per_group;
        let (g, i) = (u64::from((ino - 1) / ipg), u64::from((ino - 1) % ipg));
        let gd = self.gdt.get(g as usize).ok_or_else(|| Error::corrupt(format!("inode {ino}: no group {g}")))?;
        let isz = self.sb.inode_size;
        let block = gd
            .inode_table
            .checked_add(i * isz / self.sb.block_size)
            .ok_or_else(|| Error::corrupt(format!("inode {ino}: the inode table of group {g} is out of range")))?;
        let within = i * isz % self.sb.block_size;
        let mut b = vec![0u8; isz as usize];
        self.read_block_bytes(block, within, &mut b)
            .map_err(|e| Error::corrupt(format!("inode {ino} (inode table of group {g}): {e}")))?;
        Ok(self.decode_inode(ino, &b))
    }

    fn decode_inode(&self, ino: u32, b: &[u8]) -> Inode {
        let isz = b.len();
        // i_extra_isize: how many bytes past the 128-byte base are in use.
        let extra = if isz > 128 { usize::from(le16(b, 0x80)).min(isz - 128) } else { 0 };
        let has = |end: usize| isz > 128 && 128 + extra >= end;
        let time = |lo: usize, ex: usize| {
            let secs = i64::from(le32(b, lo) as i32);
            if has(ex + 4) {
                let x = le32(b, ex);
                Time { secs: secs + (i64::from(x & 3) << 32), nsecs: x >> 2 }
            } else {
                Time { secs, nsecs: 0 }
            }
        };
        let crtime = has(0x94).then(|| {
            let secs = i64::from(le32(b, 0x90) as i32);
            if has(0x98) {
                let x = le32(b, 0x94);
                Time { secs: secs + (i64::from(x & 3) << 32), nsecs: x >> 2 }
            } else {
                Time { secs, nsecs: 0 }
            }
        });
        let flags = le32(b, 0x20);
        let mut sectors = u64::from(le32(b, 0x1C)) | (u64::from(le16(b, 0x74)) << 32);
        if flags & FL_HUGE_FILE != 0 {
            sectors = sectors.saturating_mul(self.sb.block_size / 512);
        }
        let xattr_area = if isz > 128 + extra + 4 && extra % 4 == 0 { b[128 + extra..].to_vec() } else { Vec::new() };
        let checksum_ok = !self.sb.metadata_csum() || {
            let mut z = b.to_vec();
            z[0x7C..0x7E].fill(0);
            let hi = has(0x84);
            if hi {
                z[0x82..0x84].fill(0);
            }
            let c = crc32c_raw(inode_seed(self.sb.csum_seed(), ino, le32(b, 0x64)), &z);
            let stored = u32::from(le16(b, 0x7C)) | if hi { u32::from(le16(b, 0x82)) << 16 } else { 0 };
            let c = if hi { c } else { c & 0xFFFF };
            c == stored
        };
        Inode {
            ino,
            mode: le16(b, 0x00),
            uid: u32::from(le16(b, 0x02)) | (u32::from(le16(b, 0x78)) << 16),
            gid: u32::from(le16(b, 0x18)) | (u32::from(le16(b, 0x7A)) << 16),
            size: u64::from(le32(b, 0x04)) | (u64::from(le32(b, 0x6C)) << 32),
            links: le16(b, 0x1A),
            atime: time(0x08, 0x8C),
            ctime: time(0x0C, 0x84),
            mtime: time(0x10, 0x88),
            crtime,
            dtime: le32(b, 0x14),
            flags,
            generation: le32(b, 0x64),
            file_acl: u64::from(le32(b, 0x68)) | (u64::from(le16(b, 0x76)) << 32),
            sectors,
            i_block: b[0x28..0x64].try_into().expect("60 bytes"),
            xattr_area,
            checksum_ok,
        }
    }

    /// Where the blocks of `inode` are. Inline-data inodes have none.
    pub fn map(&self, inode: &Inode) -> Result<Map, Error> {
        let mut m = Map::default();
        if inode.flags & FL_INLINE_DATA != 0 || (inode.kind() == S_IFLNK && self.is_fast_symlink(inode)) {
            return Ok(m);
        }
        if matches!(inode.kind(), S_IFCHR | S_IFBLK | 0o010000 | 0o140000) {
            return Ok(m);
        }
        let mut budget = self.block_limit();
        if inode.flags & FL_EXTENTS != 0 {
            let mut next = 0u64;
            self.extent_node(inode, &inode.i_block, None, &mut m, &mut budget, &mut next)?;
        } else {
            // ext2/3 block map: 12 direct pointers, then single, double, triple indirect.
            let mut w = BlockMap {
                blocks: inode.size.div_ceil(self.sb.block_size),
                logical: 0,
                budget,
                seen: std::collections::HashSet::new(),
            };
            for k in 0..15usize {
                if w.logical >= w.blocks {
                    break;
                }
                let p = u64::from(le32(&inode.i_block, 4 * k));
                let level = k.saturating_sub(11) as u32;
                self.indirect(inode, p, level, &mut w, &mut m)?;
            }
        }
        Ok(m)
    }

    /// Walks one extent tree node; `at` is its block (None for the root in i_block).
    fn extent_node(
        &self,
        inode: &Inode,
        node: &[u8],
        at: Option<(u64, u16)>,
        m: &mut Map,
        budget: &mut u64,
        next: &mut u64,
    ) -> Result<(), Error> {
        let ino = inode.ino;
        let bad = |what: String| Error::corrupt(format!("inode {ino}: extent tree {what}"));
        let place = || at.map_or("root".to_string(), |(b, _)| format!("node at block {b}"));
        if le16(node, 0) != 0xF30A {
            return Err(bad(format!("{} has no header magic", place())));
        }
        let (entries, max, depth) = (usize::from(le16(node, 2)), usize::from(le16(node, 4)), le16(node, 6));
        let capacity = (node.len() - 12) / 12;
        if entries > max || max > capacity {
            return Err(bad(format!("{} claims {entries} of {max} entries, room for {capacity}", place())));
        }
        match at {
            None if depth > MAX_EXTENT_DEPTH => return Err(bad(format!("is {depth} levels deep"))),
            Some((_, want)) if depth != want => {
                return Err(bad(format!("{} has depth {depth}, its parent expects {want}", place())))
            }
            _ => {}
        }
        for i in 0..entries {
            let e = &node[12 + 12 * i..24 + 12 * i];
            let logical = u64::from(le32(e, 0));
            if depth == 0 {
                let raw_len = u64::from(le16(e, 4));
                let (len, unwritten) = if raw_len > 32768 { (raw_len - 32768, true) } else { (raw_len, false) };
                let start = u64::from(le32(e, 8)) | (u64::from(le16(e, 6)) << 32);
                if len == 0 {
                    return Err(bad(format!("{} has an empty extent", place())));
                }
                if logical < *next {
                    return Err(bad(format!("extents overlap or are out of order at logical block {logical}")));
                }
                if start.checked_add(len).is_none_or(|end| end > self.sb.blocks_count) || start == 0 {
                    return Err(bad(format!("maps blocks {start}+{len} outside the filesystem")));
                }
                *budget = budget.checked_sub(len).ok_or_else(|| {
                    bad("maps more blocks than the device holds (blocks shared or a corrupt tree)".into())
                })?;
                *next = logical + len;
                m.extents.push(Extent { logical, start, len, unwritten });
            } else {
                let child = u64::from(le32(e, 4)) | (u64::from(le16(e, 8)) << 32);
                if logical < *next {
                    return Err(bad(format!("index entries overlap or are out of order at logical block {logical}")));
                }
                if child == 0 || child >= self.sb.blocks_count {
                    return Err(bad(format!("points to block {child} outside the filesystem")));
                }
                *budget =
                    budget.checked_sub(1).ok_or_else(|| bad("has more nodes than the device has blocks".into()))?;
                m.meta.push(child);
                let b = self.read_block(child)?;
                self.extent_node(inode, &b, Some((child, depth - 1)), m, budget, next)?;
            }
        }
        Ok(())
    }

    /// Maps the blocks under pointer `p` at indirection `level` (0 = a data block).
    fn indirect(&self, inode: &Inode, p: u64, level: u32, w: &mut BlockMap, m: &mut Map) -> Result<(), Error> {
        let per = self.sb.block_size / 4;
        let span = per.checked_pow(level).unwrap_or(u64::MAX);
        if p == 0 {
            w.logical = w.logical.saturating_add(span);
            return Ok(());
        }
        if p >= self.sb.blocks_count {
            return Err(Error::corrupt(format!("inode {}: block pointer {p} is outside the filesystem", inode.ino)));
        }
        w.budget = w
            .budget
            .checked_sub(1)
            .ok_or_else(|| Error::corrupt(format!("inode {}: maps more blocks than the device holds", inode.ino)))?;
        if level == 0 {
            let logical = w.logical;
            match m.extents.last_mut() {
                Some(e) if e.logical + e.len == logical && e.start + e.len == p => e.len += 1,
                _ => m.extents.push(Extent { logical, start: p, len: 1, unwritten: false }),
            }
            w.logical += 1;
            return Ok(());
        }
        // A legitimate file never maps a block twice; a hostile one could make the walk
        // revisit the same indirect block many times.
        if !w.seen.insert(p) {
            return Err(Error::corrupt(format!("inode {}: indirect block {p} is used twice", inode.ino)));
        }
        m.meta.push(p);
        let b = self.read_block(p)?;
        for k in 0..per as usize {
            if w.logical >= w.blocks {
                break;
            }
            let q = u64::from(le32(&b, 4 * k));
            if q == 0 && level == 1 {
                // A hole of one block (the common case in sparse maps, kept cheap).
                w.logical += 1;
                continue;
            }
            self.indirect(inode, q, level - 1, w, m)?;
        }
        Ok(())
    }

    /// Streams the content of a regular file (or any inode with data) as (file offset,
    /// bytes) pieces in increasing offset order; holes and unwritten extents are skipped
    /// (they read as zeros).
    pub fn read_data(&self, inode: &Inode, map: &Map, visit: &mut Visit<'_>) -> Result<(), Error> {
        if inode.flags & FL_INLINE_DATA != 0 {
            let data = self.inline_data(inode)?;
            let n = usize::try_from(inode.size).unwrap_or(usize::MAX);
            if n > data.len() {
                return Err(Error::corrupt(format!(
                    "inode {} keeps its data inline but holds {} of its {} bytes",
                    inode.ino,
                    data.len(),
                    inode.size
                )));
            }
            if n > 0 {
                visit(0, &data[..n])?;
            }
            return Ok(());
        }
        let bs = self.sb.block_size;
        let mut buf = Vec::new();
        for e in &map.extents {
            if e.unwritten {
                continue;
            }
            let Some(from) = e.logical.checked_mul(bs).filter(|&f| f < inode.size) else {
                continue;
            };
            let end = e.logical.saturating_add(e.len).saturating_mul(bs).min(inode.size);
            let mut pos = from;
            while pos < end {
                let n = (end - pos).min(CHUNK);
                buf.resize(n as usize, 0);
                let rel = pos - from;
                self.read_block_bytes(e.start + rel / bs, rel % bs, &mut buf)?;
                visit(pos, &buf)?;
                pos += n;
            }
        }
        Ok(())
    }

    /// The bytes of an inline-data inode (ext4 on-disk layout, "Inline Data"): the 60 bytes
    /// of i_block, then the value of the in-inode attribute "system.data" (possibly empty).
    fn inline_data(&self, inode: &Inode) -> Result<Vec<u8>, Error> {
        let mut data = inode.i_block.to_vec();
        let area = &inode.xattr_area;
        if area.len() >= 4 && le32(area, 0) == xattr::MAGIC {
            let mut attrs = Vec::new();
            xattr::parse(&area[4..], 0, inode.ino, &mut attrs)?;
            if let Some((_, v)) = attrs.into_iter().find(|(k, _)| k == b"system.data") {
                data.extend_from_slice(&v);
            }
        }
        Ok(data)
    }

    /// Reads a whole file into memory, refusing files larger than `max` bytes.
    pub fn read_file(&self, inode: &Inode, max: u64) -> Result<Vec<u8>, Error> {
        if inode.size > max {
            return Err(Error::corrupt(format!("inode {} has {} bytes, more than {max}", inode.ino, inode.size)));
        }
        let map = self.map(inode)?;
        let mut out = vec![0u8; inode.size as usize];
        self.read_data(inode, &map, &mut |off, data| {
            out[off as usize..off as usize + data.len()].copy_from_slice(data);
            Ok(())
        })?;
        Ok(out)
    }

    fn is_fast_symlink(&self, inode: &Inode) -> bool {
        let ea = if inode.file_acl != 0 { self.sb.block_size / 512 } else { 0 };
        inode.flags & FL_EXTENTS == 0 && inode.flags & FL_INLINE_DATA == 0 && inode.size < 60 && inode.sectors <= ea
    }

    /// The target of a symlink.
    pub fn read_link(&self, inode: &Inode) -> Result<Vec<u8>, Error> {
        if inode.size > MAX_LINK.min(self.sb.block_size) {
            return Err(Error::corrupt(format!("symlink inode {} has a {}-byte target", inode.ino, inode.size)));
        }
        if self.is_fast_symlink(inode) {
            return Ok(inode.i_block[..inode.size as usize].to_vec());
        }
        self.read_file(inode, MAX_LINK)
    }

    /// The entries of directory `inode` (without "." and ".."), in on-disk order.
    pub fn read_dir(&self, inode: &Inode) -> Result<Vec<DirEntry>, Error> {
        let ino = inode.ino;
        if !inode.is_dir() {
            return Err(Error::corrupt(format!("inode {ino} is not a directory")));
        }
        let filetype = self.sb.incompat & superblock::INCOMPAT_FILETYPE != 0;
        if inode.flags & FL_INLINE_DATA != 0 {
            // An inline directory: i_block holds the parent's inode number (4 bytes) and
            // entries in the other 56; "system.data" holds more entries. Each region is
            // parsed like a block whose last record reaches its end.
            let data = self.inline_data(inode)?;
            let mut out = Vec::new();
            for (what, region) in [("i_block", &data[4..60]), ("system.data", &data[60..])] {
                parse_dir_block(region, filetype, self.sb.inodes_count, &mut out)
                    .map_err(|m| Error::corrupt(format!("inline directory inode {ino}, {what}: {m}")))?;
            }
            return Ok(out);
        }
        let map = self.map(inode)?;
        let bs = self.sb.block_size as usize;
        let mut out = Vec::new();
        let mut data = Vec::new();
        self.read_data(inode, &map, &mut |off, chunk| {
            data.clear();
            data.extend_from_slice(chunk);
            if off % bs as u64 != 0 || data.len() % bs != 0 {
                return Err(Error::corrupt(format!("directory inode {ino} has a size that is not whole blocks")));
            }
            for (k, block) in data.chunks_exact(bs).enumerate() {
                let blk = off / bs as u64 + k as u64;
                parse_dir_block(block, filetype, self.sb.inodes_count, &mut out)
                    .map_err(|m| Error::corrupt(format!("directory inode {ino}, block {blk}: {m}")))?;
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Extended attributes of `inode` (kernel names such as `user.x`,
    /// `system.posix_acl_access` in the kernel's xattr form), in-inode ones first.
    pub fn xattrs(&self, inode: &Inode) -> Result<Xattrs, Error> {
        let mut out = Vec::new();
        let area = &inode.xattr_area;
        if area.len() >= 4 && le32(area, 0) == xattr::MAGIC {
            xattr::parse(&area[4..], 0, inode.ino, &mut out)?;
        }
        if inode.file_acl != 0 {
            let b = self.read_block(inode.file_acl)?;
            if le32(&b, 0) != xattr::MAGIC || le32(&b, 8) != 1 {
                return Err(Error::corrupt(format!(
                    "inode {}: attribute block {} has no valid header",
                    inode.ino, inode.file_acl
                )));
            }
            xattr::parse(&b, 32, inode.ino, &mut out)?;
        }
        // "system.data" holds an inline-data inode's bytes, not an attribute (the kernel
        // does not list it either).
        if inode.flags & FL_INLINE_DATA != 0 {
            out.retain(|(k, _)| k != b"system.data");
        }
        Ok(out)
    }

    /// Looks up an absolute path ("/" is the root); symlinks are not followed.
    pub fn lookup(&self, path: &[u8]) -> Result<Option<Inode>, Error> {
        let mut cur = self.inode(ROOT_INO)?;
        for part in path.split(|&c| c == b'/').filter(|p| !p.is_empty() && *p != b".") {
            if !cur.is_dir() {
                return Ok(None);
            }
            let Some(e) = self.read_dir(&cur)?.into_iter().find(|e| e.name == part) else {
                return Ok(None);
            };
            cur = self.inode(e.ino)?;
        }
        Ok(Some(cur))
    }

    /// Blocks holding filesystem metadata that no inode owns: superblocks and their
    /// backups, group descriptor tables (with reserved GDT blocks), bitmaps and inode
    /// tables, as (first block, count, what).
    pub fn metadata_blocks(&self) -> Vec<(u64, u64, String)> {
        let mut v = Vec::new();
        let bs = self.sb.block_size;
        let gdt_blocks = (self.sb.groups() * self.sb.desc_size).div_ceil(bs);
        let reserved = u64::from(le16(&self.sb.raw, 0xCE));
        let itable = (u64::from(self.sb.inodes_per_group) * self.sb.inode_size).div_ceil(bs);
        for (g, d) in self.gdt.iter().enumerate() {
            let g = g as u64;
            let first = self.sb.first_data_block
                + g * self.sb.blocks_per_group
                + if g == 0 { self.group_zero_adjust() } else { 0 };
            if self.sb.has_super(g) {
                v.push((first, 1, format!("superblock (group {g})")));
                if self.sb.incompat & superblock::INCOMPAT_META_BG == 0 {
                    v.push((first + 1, gdt_blocks + reserved, format!("group descriptors (group {g})")));
                }
            }
            v.push((d.block_bitmap, 1, format!("block bitmap of group {g}")));
            v.push((d.inode_bitmap, 1, format!("inode bitmap of group {g}")));
            v.push((d.inode_table, itable, format!("inode table of group {g}")));
        }
        v
    }
}

/// Decodes one group descriptor.
fn decode_desc(d: &[u8], g: u32, is64: bool, sb: &Superblock, seed: u32) -> GroupDesc {
    let big = is64 && d.len() >= 64;
    let hi32 = |lo: u32, at: usize| u64::from(lo) | if big { u64::from(le32(d, at)) << 32 } else { 0 };
    let hi16 = |lo: u16, at: usize| u32::from(lo) | if big { u32::from(le16(d, at)) << 16 } else { 0 };
    let checksum_ok = !sb.metadata_csum() || {
        let mut z = d.to_vec();
        z[0x1E..0x20].fill(0);
        let c = crc32c_raw(crc32c_raw(seed, &g.to_le_bytes()), &z);
        c as u16 == le16(d, 0x1E)
    };
    GroupDesc {
        block_bitmap: hi32(le32(d, 0x00), 0x20),
        inode_bitmap: hi32(le32(d, 0x04), 0x24),
        inode_table: hi32(le32(d, 0x08), 0x28),
        free_blocks: hi16(le16(d, 0x0C), 0x2C),
        free_inodes: hi16(le16(d, 0x0E), 0x2E),
        used_dirs: hi16(le16(d, 0x10), 0x30),
        flags: le16(d, 0x12),
        itable_unused: hi16(le16(d, 0x1C), 0x32),
        checksum_ok,
    }
}

/// Parses one directory block, appending live entries other than "." and "..".
fn parse_dir_block(b: &[u8], filetype: bool, inodes: u32, out: &mut Vec<DirEntry>) -> Result<(), String> {
    let mut off = 0usize;
    while off < b.len() {
        if b.len() - off < 8 {
            return Err(format!("entry at offset {off} is cut off by the block end"));
        }
        let ino = le32(b, off);
        let mut rec = usize::from(le16(b, off + 4));
        // 64 KiB blocks store a whole-block rec_len as 0 or 65535 (ext4_rec_len_from_disk).
        if b.len() >= 65536 && (rec == 0 || rec == 65535) {
            rec = 65536;
        }
        let name_len = if filetype { usize::from(b[off + 6]) } else { usize::from(le16(b, off + 6)) };
        if rec < 8 || rec % 4 != 0 || rec > b.len() - off {
            return Err(format!("entry at offset {off} has rec_len {rec}"));
        }
        if ino != 0 {
            if 8 + name_len > rec || name_len == 0 {
                return Err(format!("entry at offset {off} has a name of {name_len} bytes in a {rec}-byte record"));
            }
            if ino > inodes {
                return Err(format!("entry at offset {off} names inode {ino}, past the last inode {inodes}"));
            }
            let name = &b[off + 8..off + 8 + name_len];
            if name != b"." && name != b".." {
                out.push(DirEntry { name: name.to_vec(), ino, file_type: if filetype { b[off + 7] } else { 0 } });
            }
        }
        off += rec;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
