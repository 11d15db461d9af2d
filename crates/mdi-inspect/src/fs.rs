//! One interface over the filesystem readers (ext2/3/4 and FAT): detection by magic, a
//! summary, and a walk of every entry with its metadata, content digest and the blocks it
//! owns.

use crate::content::Digest;
use mdi_ext4::read as e4;
use mdi_fat::read as fat;
use mdi_sink::ReadAt;
use std::collections::{HashMap, HashSet};
use std::io::Write;

/// An opened filesystem.
pub enum Fs<'a> {
    /// ext2, ext3 or ext4.
    Ext4(e4::Fs<'a>),
    /// FAT12, FAT16 or FAT32.
    Fat(fat::Volume<'a>),
}

/// What kind of filesystem the bytes at the start of `dev` hold, by magic number.
pub fn probe(dev: &dyn ReadAt) -> Option<&'static str> {
    let mut b = vec![0u8; 2048.min(dev.size()) as usize];
    dev.read_at(0, &mut b).ok()?;
    if b.len() >= 1082 && u16::from_le_bytes([b[1080], b[1081]]) == 0xEF53 {
        return Some("ext4");
    }
    if b.len() >= 512 && fat::probe(&b[..512]) {
        return Some("vfat");
    }
    None
}

/// Opens the filesystem on `dev`: Ok(None) when no known one is there.
pub fn open(dev: &dyn ReadAt) -> Result<Option<Fs<'_>>, String> {
    match probe(dev) {
        Some("ext4") => e4::Fs::open(dev).map(|f| Some(Fs::Ext4(f))).map_err(|e| e.to_string()),
        Some(_) => fat::Volume::open(dev).map(|v| Some(Fs::Fat(v))).map_err(|e| e.to_string()),
        None => Ok(None),
    }
}

/// A summary of a filesystem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Info {
    /// "ext4", "ext3", "ext2" or "vfat" (blkid's TYPE).
    pub kind: String,
    /// "FAT12", "FAT16", "FAT32" for vfat, "1.0" for ext (blkid's VERSION).
    pub version: String,
    /// Volume label.
    pub label: String,
    /// UUID as blkid prints it (ext: lower-case with dashes; FAT: the volume ID as XXXX-XXXX).
    pub uuid: String,
    /// Block (ext) or cluster (FAT) size in bytes.
    pub block_size: u64,
    /// ext4 with bigalloc: the allocation cluster in bytes.
    pub cluster_size: Option<u64>,
    /// Blocks or clusters.
    pub blocks: u64,
    /// Free blocks or clusters.
    pub free_blocks: u64,
    /// Inodes (ext only).
    pub inodes: Option<u64>,
    /// Free inodes (ext only).
    pub free_inodes: Option<u64>,
    /// Filesystem size in bytes.
    pub size: u64,
    /// Bytes in use.
    pub used: u64,
    /// Feature names (ext: as dumpe2fs prints them).
    pub features: Vec<String>,
    /// Every header field by its specification name, for `diff`.
    pub fields: Vec<(String, String)>,
    /// Damage noticed (checksums, counts).
    pub problems: Vec<String>,
}

/// A file type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Type {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Character device.
    CharDev,
    /// Block device.
    BlockDev,
    /// Named pipe.
    Fifo,
    /// Socket.
    Socket,
}

impl Type {
    /// A short name ("file", "dir", "symlink", "chr", "blk", "fifo", "sock").
    pub fn name(self) -> &'static str {
        match self {
            Type::File => "file",
            Type::Dir => "dir",
            Type::Symlink => "symlink",
            Type::CharDev => "chr",
            Type::BlockDev => "blk",
            Type::Fifo => "fifo",
            Type::Socket => "sock",
        }
    }

    /// The `ls -l` letter.
    pub fn letter(self) -> char {
        match self {
            Type::File => '-',
            Type::Dir => 'd',
            Type::Symlink => 'l',
            Type::CharDev => 'c',
            Type::BlockDev => 'b',
            Type::Fifo => 'p',
            Type::Socket => 's',
        }
    }
}

/// A time: seconds and nanoseconds since the epoch.
pub type Time = (i64, u32);

/// One entry of a filesystem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Absolute path ("/" for the root).
    pub path: Vec<u8>,
    /// Type.
    pub ty: Type,
    /// Permission bits (with setuid, setgid, sticky). FAT: 0755 for folders, 0644 for
    /// files, without the write bits when read-only.
    pub perm: u32,
    /// Owner (0 on FAT).
    pub uid: u32,
    /// Group (0 on FAT).
    pub gid: u32,
    /// Size in bytes (directories: their on-disk size on ext4, 0 on FAT).
    pub size: u64,
    /// Hard links.
    pub nlink: u32,
    /// Modification time.
    pub mtime: Time,
    /// Access time.
    pub atime: Time,
    /// Change time (ext) or creation time (FAT).
    pub ctime: Time,
    /// Creation time (ext4 inodes with room for it).
    pub crtime: Option<Time>,
    /// Extended attributes, sorted by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Symlink target.
    pub target: Option<Vec<u8>>,
    /// Device number (major, minor).
    pub rdev: Option<(u32, u32)>,
    /// Inode number (ext) or first cluster (FAT): entries with the same id are hard links.
    pub id: u64,
    /// FAT attribute byte.
    pub attr: Option<u8>,
    /// Content digest of regular files (when the walk reads contents).
    pub digest: Option<Digest>,
    /// Why some of it could not be read.
    pub error: Option<String>,
}

/// What an entry's range holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Content (file data, directory records, symlink target) starting at this byte of
    /// the entry; the part at or past the entry's size is slack of its last block.
    Content(u64),
    /// An allocated but unwritten extent: on disk, but it reads as zeros.
    Unwritten,
    /// Mapping blocks: extent tree nodes or indirect blocks.
    Mapping,
    /// The extended-attribute block.
    Xattr,
}

/// Who owns a range of the filesystem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    /// An entry (index into [`Walk::nodes`]) and what the range holds for it.
    Node(usize, Role),
    /// Filesystem metadata (superblock, group descriptors, bitmaps, inode tables, FATs, ...).
    Meta(String),
}

/// A byte range of the filesystem and its owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Span {
    /// First byte (from the filesystem start).
    pub start: u64,
    /// Bytes.
    pub len: u64,
    /// Owner.
    pub owner: Owner,
}

/// Everything found below the root.
#[derive(Clone, Debug, Default)]
pub struct Walk {
    /// Entries sorted by path (the root first).
    pub nodes: Vec<Node>,
    /// Problems that stopped part of the walk.
    pub problems: Vec<String>,
    /// Who owns which bytes (only when asked for), sorted by start.
    pub spans: Vec<Span>,
}

/// What a walk does besides listing.
#[derive(Clone, Copy, Debug, Default)]
pub struct WalkOptions {
    /// Read and digest every regular file.
    pub content: bool,
    /// Record which blocks each entry owns.
    pub spans: bool,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn ext_uuid(u: &[u8; 16]) -> String {
    let h = hex(u);
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = dir.to_vec();
    if !p.ends_with(b"/") {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// EXT4_ENCRYPT_FL (ext4 on-disk layout, "Inode flags"): the directory's entry names are
/// fscrypt ciphertext, any byte value included ('/' and NUL too).
const FL_ENCRYPT: u32 = 0x800;

/// How an encrypted entry name is shown without its key: "encrypted:" and the ciphertext
/// in hex, so that it is a valid, stable path component and says what it is.
fn encrypted_name(cipher: &[u8]) -> Vec<u8> {
    let mut n = b"encrypted:".to_vec();
    n.extend(hex(cipher).into_bytes());
    n
}

/// Refuses entry names that would make paths ambiguous.
fn bad_name(name: &[u8]) -> bool {
    name.is_empty() || name.contains(&b'/') || name == b"." || name == b".."
}

impl Fs<'_> {
    /// The summary.
    pub fn info(&self) -> Info {
        match self {
            Fs::Ext4(f) => {
                let sb = &f.sb;
                let mut problems = Vec::new();
                if !sb.checksum_ok {
                    problems.push("superblock checksum does not match".to_string());
                }
                let bad: Vec<usize> =
                    f.groups().iter().enumerate().filter(|(_, g)| !g.checksum_ok).map(|(i, _)| i).collect();
                if !bad.is_empty() {
                    problems.push(format!("group descriptor checksums do not match for groups {bad:?}"));
                }
                if sb.incompat & 0x4 != 0 {
                    problems.push("the journal needs recovery (not replayed: recent changes may be missing)".into());
                }
                if sb.state & 1 == 0 {
                    problems.push("the filesystem was not cleanly unmounted".into());
                }
                let mut fields: Vec<(String, String)> =
                    sb.fields.iter().map(|(k, v)| ((*k).to_string(), v.clone())).collect();
                for (i, g) in f.groups().iter().enumerate() {
                    fields.push((
                        format!("group {i}"),
                        format!(
                            "block bitmap {}, inode bitmap {}, inode table {}, {} free blocks, {} free inodes, {} dirs, flags {:#x}, {} unused inodes",
                            g.block_bitmap, g.inode_bitmap, g.inode_table, g.free_blocks, g.free_inodes, g.used_dirs, g.flags, g.itable_unused
                        ),
                    ));
                }
                Info {
                    kind: sb.fs_type().into(),
                    version: "1.0".into(),
                    label: String::from_utf8_lossy(&sb.label).into_owned(),
                    uuid: ext_uuid(&sb.uuid),
                    block_size: sb.block_size,
                    cluster_size: (sb.cluster_size != sb.block_size).then_some(sb.cluster_size),
                    blocks: sb.blocks_count,
                    free_blocks: sb.free_blocks,
                    inodes: Some(u64::from(sb.inodes_count)),
                    free_inodes: Some(u64::from(sb.free_inodes)),
                    size: sb.blocks_count.saturating_mul(sb.block_size),
                    used: sb.blocks_count.saturating_sub(sb.free_blocks).saturating_mul(sb.block_size),
                    features: sb.features(),
                    fields,
                    problems,
                }
            }
            Fs::Fat(v) => {
                let cb = v.cluster_bytes();
                let free = u64::from(v.free_clusters());
                let mut problems = v.warnings.clone();
                match v.fsinfo_free() {
                    Ok(Some(n)) if n != 0xFFFF_FFFF && u64::from(n) != free => {
                        problems.push(format!("FSInfo says {n} free clusters, the FAT has {free}"))
                    }
                    Err(e) => problems.push(format!("FSInfo sector: {e}")),
                    _ => {}
                }
                let root_label = v.root_label().unwrap_or_else(|e| {
                    problems.push(format!("root directory: {e}"));
                    None
                });
                // blkid prefers the root directory's label entry, then the boot sector's.
                let label =
                    root_label.clone().or_else(|| v.boot.label.clone().filter(|l| l != "NO NAME")).unwrap_or_default();
                let mut fields: Vec<(String, String)> =
                    v.boot.fields().into_iter().map(|(k, x)| (k.to_string(), x)).collect();
                fields.push(("root directory label".into(), root_label.unwrap_or_default()));
                fields.push(("free clusters".into(), free.to_string()));
                if let Ok(Some(n)) = v.fsinfo_free() {
                    fields.push(("FSI_Free_Count".into(), n.to_string()));
                }
                let size = v.boot.total_sectors * v.boot.bytes_per_sector;
                Info {
                    kind: "vfat".into(),
                    version: v.kind.name().into(),
                    label,
                    uuid: v
                        .boot
                        .volume_id
                        .map(|id| format!("{:04X}-{:04X}", id >> 16, id & 0xFFFF))
                        .unwrap_or_default(),
                    block_size: cb,
                    cluster_size: None,
                    blocks: u64::from(v.clusters),
                    free_blocks: free,
                    inodes: None,
                    free_inodes: None,
                    size,
                    used: (u64::from(v.clusters) - free) * cb,
                    features: Vec::new(),
                    fields,
                    problems,
                }
            }
        }
    }

    /// Walks every entry below the root.
    pub fn walk(&self, opts: WalkOptions) -> Walk {
        match self {
            Fs::Ext4(f) => walk_ext4(f, opts),
            Fs::Fat(v) => walk_fat(v, opts),
        }
    }

    /// The entries of the folder at `path` (or the entry itself when it is not a folder).
    pub fn list(&self, path: &[u8]) -> Result<Vec<Node>, String> {
        match self {
            Fs::Ext4(f) => {
                let Some(ino) = f.lookup(path).map_err(|e| e.to_string())? else {
                    return Err(format!("'{}' not found", String::from_utf8_lossy(path)));
                };
                if !ino.is_dir() {
                    return Ok(vec![ext_node(f, path.to_vec(), &ino, &mut Ctx::default(), WalkOptions::default())]);
                }
                let mut out = Vec::new();
                let encrypted = ino.flags & FL_ENCRYPT != 0;
                for mut e in f.read_dir(&ino).map_err(|e| e.to_string())? {
                    if encrypted {
                        e.name = encrypted_name(&e.name);
                    }
                    let p = join(path, &e.name);
                    match f.inode(e.ino) {
                        Ok(i) => out.push(ext_node(f, p, &i, &mut Ctx::default(), WalkOptions::default())),
                        Err(x) => return Err(format!("'{}': {x}", String::from_utf8_lossy(&p))),
                    }
                }
                out.sort_by(|a, b| a.path.cmp(&b.path));
                Ok(out)
            }
            Fs::Fat(v) => {
                let p = String::from_utf8_lossy(path);
                let dir = if p.trim_matches('/').is_empty() {
                    fat::Dir::Root
                } else {
                    let Some(e) = v.lookup(&p).map_err(|e| e.to_string())? else {
                        return Err(format!("'{p}' not found"));
                    };
                    if !e.is_dir() {
                        return Ok(vec![fat_node(v, path.to_vec(), &e, &mut Ctx::default(), WalkOptions::default())]);
                    }
                    fat::Dir::Cluster(e.cluster)
                };
                let mut out: Vec<Node> = v
                    .read_dir(dir)
                    .map_err(|e| e.to_string())?
                    .iter()
                    .map(|e| fat_node(v, join(path, e.name.as_bytes()), e, &mut Ctx::default(), WalkOptions::default()))
                    .collect();
                out.sort_by(|a, b| a.path.cmp(&b.path));
                Ok(out)
            }
        }
    }

    /// Writes the content of the file at `path` to `out` (holes as zeros).
    pub fn cat(&self, path: &[u8], out: &mut dyn Write) -> Result<(), String> {
        let mut pos = 0u64;
        let mut put = |at: u64, data: &[u8], out: &mut dyn Write| -> std::io::Result<()> {
            let zeros = [0u8; 65536];
            while pos < at {
                let n = (at - pos).min(zeros.len() as u64) as usize;
                out.write_all(&zeros[..n])?;
                pos += n as u64;
            }
            out.write_all(data)?;
            pos += data.len() as u64;
            Ok(())
        };
        let name = String::from_utf8_lossy(path).into_owned();
        let size = match self {
            Fs::Ext4(f) => {
                let i = f.lookup(path).map_err(|e| e.to_string())?.ok_or_else(|| format!("'{name}' not found"))?;
                if i.kind() != e4::S_IFREG {
                    return Err(format!("'{name}' is not a regular file"));
                }
                let map = f.map(&i).map_err(|e| e.to_string())?;
                f.read_data(&i, &map, &mut |at, d| put(at, d, out).map_err(e4::Error::Io))
                    .map_err(|e| e.to_string())?;
                i.size
            }
            Fs::Fat(v) => {
                let e = v.lookup(&name).map_err(|e| e.to_string())?.ok_or_else(|| format!("'{name}' not found"))?;
                if e.is_dir() {
                    return Err(format!("'{name}' is a folder"));
                }
                v.read_data(&e, &mut |at, d| put(at, d, out).map_err(fat::Error::Io)).map_err(|e| e.to_string())?;
                u64::from(e.size)
            }
        };
        put(size, &[], out).map_err(|e| e.to_string())
    }
}

/// Walk state shared by the entries.
#[derive(Default)]
struct Ctx {
    /// Digests by inode (hard links are read once).
    digests: HashMap<u64, Result<Digest, String>>,
    /// Data blocks or clusters the walk may still read: a filesystem cannot hold more
    /// data than it has blocks, so a hostile one that maps blocks many times stops here.
    budget: u64,
    spans: Vec<Span>,
}

fn ext_node(f: &e4::Fs<'_>, path: Vec<u8>, i: &e4::Inode, ctx: &mut Ctx, opts: WalkOptions) -> Node {
    let ty = match i.kind() {
        e4::S_IFDIR => Type::Dir,
        e4::S_IFLNK => Type::Symlink,
        e4::S_IFCHR => Type::CharDev,
        e4::S_IFBLK => Type::BlockDev,
        0o010000 => Type::Fifo,
        0o140000 => Type::Socket,
        _ => Type::File,
    };
    let t = |x: e4::Time| (x.secs, x.nsecs);
    let mut n = Node {
        path,
        ty,
        perm: u32::from(i.mode & 0o7777),
        uid: i.uid,
        gid: i.gid,
        size: i.size,
        nlink: u32::from(i.links),
        mtime: t(i.mtime),
        atime: t(i.atime),
        ctime: t(i.ctime),
        crtime: i.crtime.map(t),
        xattrs: Vec::new(),
        target: None,
        rdev: matches!(ty, Type::CharDev | Type::BlockDev).then(|| i.rdev()),
        id: u64::from(i.ino),
        attr: None,
        digest: None,
        error: None,
    };
    let mut errors = Vec::new();
    if !i.checksum_ok {
        errors.push("inode checksum does not match".to_string());
    }
    match f.xattrs(i) {
        Ok(mut x) => {
            x.sort();
            n.xattrs = x;
        }
        Err(e) => errors.push(e.to_string()),
    }
    if ty == Type::Symlink {
        match f.read_link(i) {
            Ok(t) => n.target = Some(t),
            Err(e) => errors.push(e.to_string()),
        }
    }
    let want_digest = opts.content && ty == Type::File;
    if want_digest || opts.spans {
        match f.map(i) {
            Ok(map) => {
                if opts.spans {
                    let bs = f.sb.block_size;
                    // The entry index is patched by the caller.
                    for e in &map.extents {
                        let role =
                            if e.unwritten { Role::Unwritten } else { Role::Content(e.logical.saturating_mul(bs)) };
                        ctx.spans.push(Span {
                            start: e.start.saturating_mul(bs),
                            len: e.len.saturating_mul(bs),
                            owner: Owner::Node(usize::MAX, role),
                        });
                    }
                    for &b in &map.meta {
                        ctx.spans.push(Span {
                            start: b.saturating_mul(bs),
                            len: bs,
                            owner: Owner::Node(usize::MAX, Role::Mapping),
                        });
                    }
                    if i.file_acl != 0 {
                        ctx.spans.push(Span {
                            start: i.file_acl.saturating_mul(bs),
                            len: bs,
                            owner: Owner::Node(usize::MAX, Role::Xattr),
                        });
                    }
                }
                if want_digest {
                    let id = n.id;
                    let d = match ctx.digests.get(&id) {
                        Some(d) => d.clone(),
                        None => {
                            let blocks: u64 = map.extents.iter().map(|e| e.len).sum();
                            let d = match ctx.budget.checked_sub(blocks) {
                                None => Err("files map more blocks than the filesystem has; not read".to_string()),
                                Some(rest) => {
                                    ctx.budget = rest;
                                    let mut h = Digest::builder(i.size);
                                    f.read_data(i, &map, &mut |at, d| {
                                        h.feed(at, d);
                                        Ok(())
                                    })
                                    .map(|()| h.finish())
                                    .map_err(|e| e.to_string())
                                }
                            };
                            ctx.digests.insert(id, d.clone());
                            d
                        }
                    };
                    match d {
                        Ok(d) => n.digest = Some(d),
                        Err(e) => errors.push(e),
                    }
                }
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    if !errors.is_empty() {
        n.error = Some(errors.join("; "));
    }
    n
}

fn walk_ext4(f: &e4::Fs<'_>, opts: WalkOptions) -> Walk {
    let mut w = Walk::default();
    let mut ctx = Ctx { budget: f.block_limit(), ..Ctx::default() };
    let root = match f.inode(e4::ROOT_INO) {
        Ok(r) if r.is_dir() => r,
        Ok(_) => {
            w.problems.push("the root inode is not a directory".into());
            return w;
        }
        Err(e) => {
            w.problems.push(format!("root directory: {e}"));
            return w;
        }
    };
    let mut seen_dirs = HashSet::from([e4::ROOT_INO]);
    let mut stack = vec![(b"/".to_vec(), root)];
    let mut nodes: Vec<(Node, usize)> = Vec::new();
    while let Some((path, dir)) = stack.pop() {
        let idx = nodes.len();
        let first_span = ctx.spans.len();
        let node = ext_node(f, path.clone(), &dir, &mut ctx, opts);
        for s in &mut ctx.spans[first_span..] {
            if let Owner::Node(i, _) = &mut s.owner {
                *i = idx;
            }
        }
        nodes.push((node, idx));
        let entries = match f.read_dir(&dir) {
            Ok(e) => e,
            Err(e) => {
                w.problems.push(format!("{}: {e}", String::from_utf8_lossy(&path)));
                continue;
            }
        };
        let encrypted = dir.flags & FL_ENCRYPT != 0;
        for mut e in entries {
            if encrypted {
                e.name = encrypted_name(&e.name);
            }
            if bad_name(&e.name) {
                w.problems.push(format!(
                    "{}: an entry has the name {:?}",
                    String::from_utf8_lossy(&path),
                    String::from_utf8_lossy(&e.name)
                ));
                continue;
            }
            let p = join(&path, &e.name);
            let i = match f.inode(e.ino) {
                Ok(i) => i,
                Err(x) => {
                    w.problems.push(format!("{}: {x}", String::from_utf8_lossy(&p)));
                    continue;
                }
            };
            if i.is_dir() {
                if seen_dirs.insert(e.ino) {
                    stack.push((p, i));
                } else {
                    w.problems.push(format!(
                        "{}: directory inode {} is reached twice (a loop or a hard-linked directory)",
                        String::from_utf8_lossy(&p),
                        e.ino
                    ));
                }
                continue;
            }
            let idx = nodes.len();
            let first_span = ctx.spans.len();
            let node = ext_node(f, p, &i, &mut ctx, opts);
            for s in &mut ctx.spans[first_span..] {
                if let Owner::Node(i, _) = &mut s.owner {
                    *i = idx;
                }
            }
            nodes.push((node, idx));
        }
    }
    if opts.spans {
        let bs = f.sb.block_size;
        for (start, count, what) in f.metadata_blocks() {
            ctx.spans.push(Span {
                start: start.saturating_mul(bs),
                len: count.saturating_mul(bs),
                owner: Owner::Meta(what),
            });
        }
        // Reserved inodes other than the root (bad blocks, resize, journal, ...).
        for ino in (1..f.sb.first_ino.min(f.sb.inodes_count.saturating_add(1))).filter(|&i| i != e4::ROOT_INO) {
            let Ok(i) = f.inode(ino) else { continue };
            let Ok(map) = f.map(&i) else { continue };
            let what = match ino {
                7 => "resize inode".to_string(),
                8 => "journal".to_string(),
                _ => format!("reserved inode {ino}"),
            };
            for e in &map.extents {
                ctx.spans.push(Span {
                    start: e.start.saturating_mul(bs),
                    len: e.len.saturating_mul(bs),
                    owner: Owner::Meta(what.clone()),
                });
            }
            for &b in &map.meta {
                ctx.spans.push(Span { start: b.saturating_mul(bs), len: bs, owner: Owner::Meta(what.clone()) });
            }
        }
    }
    finish(w, nodes, ctx, opts)
}

/// Sorts nodes by path and renumbers the span owners to match.
fn finish(mut w: Walk, mut nodes: Vec<(Node, usize)>, mut ctx: Ctx, opts: WalkOptions) -> Walk {
    nodes.sort_by(|a, b| a.0.path.cmp(&b.0.path));
    let mut new_index = vec![0usize; nodes.len()];
    for (k, (_, old)) in nodes.iter().enumerate() {
        new_index[*old] = k;
    }
    if opts.spans {
        for s in &mut ctx.spans {
            if let Owner::Node(i, _) = &mut s.owner {
                *i = new_index.get(*i).copied().unwrap_or(usize::MAX);
            }
        }
        ctx.spans.sort_by_key(|s| s.start);
        w.spans = ctx.spans;
    }
    w.nodes = nodes.into_iter().map(|(n, _)| n).collect();
    w
}

fn fat_node(v: &fat::Volume<'_>, path: Vec<u8>, e: &fat::Entry, ctx: &mut Ctx, opts: WalkOptions) -> Node {
    let dir = e.is_dir();
    let mut perm = if dir { 0o755 } else { 0o644 };
    if e.attr & fat::ATTR_READ_ONLY != 0 {
        perm &= !0o222;
    }
    let mut n = Node {
        path,
        ty: if dir { Type::Dir } else { Type::File },
        perm,
        uid: 0,
        gid: 0,
        size: if dir { 0 } else { u64::from(e.size) },
        nlink: 1,
        mtime: (e.mtime, 0),
        atime: (e.atime, 0),
        ctime: (e.ctime, 0),
        crtime: None,
        xattrs: Vec::new(),
        target: None,
        rdev: None,
        id: u64::from(e.cluster),
        attr: Some(e.attr),
        digest: None,
        error: None,
    };
    if dir || !(opts.content || opts.spans) {
        return n;
    }
    match v.file_clusters(e) {
        Ok(chain) => {
            if opts.spans {
                let cb = v.cluster_bytes();
                for (k, c) in chain.iter().enumerate() {
                    let role = Role::Content((k as u64).saturating_mul(cb));
                    ctx.spans.push(Span { start: v.cluster_offset(*c), len: cb, owner: Owner::Node(usize::MAX, role) });
                }
            }
            if opts.content {
                match ctx.budget.checked_sub(chain.len() as u64) {
                    None => n.error = Some("files use more clusters than the volume has; not read".into()),
                    Some(rest) => {
                        ctx.budget = rest;
                        let mut h = Digest::builder(u64::from(e.size));
                        match v.read_data(e, &mut |at, d| {
                            h.feed(at, d);
                            Ok(())
                        }) {
                            Ok(()) => n.digest = Some(h.finish()),
                            Err(x) => n.error = Some(x.to_string()),
                        }
                    }
                }
            }
        }
        Err(x) => n.error = Some(x.to_string()),
    }
    n
}

fn walk_fat(v: &fat::Volume<'_>, opts: WalkOptions) -> Walk {
    let mut w = Walk::default();
    let mut ctx = Ctx { budget: u64::from(v.clusters), ..Ctx::default() };
    let root = Node {
        path: b"/".to_vec(),
        ty: Type::Dir,
        perm: 0o755,
        uid: 0,
        gid: 0,
        size: 0,
        nlink: 1,
        mtime: (0, 0),
        atime: (0, 0),
        ctime: (0, 0),
        crtime: None,
        xattrs: Vec::new(),
        target: None,
        rdev: None,
        id: 0,
        attr: None,
        digest: None,
        error: None,
    };
    let mut nodes = vec![(root, 0usize)];
    let mut seen = HashSet::new();
    let mut stack = vec![(b"/".to_vec(), fat::Dir::Root, 0usize)];
    while let Some((path, dir, owner)) = stack.pop() {
        if opts.spans {
            let cb = v.cluster_bytes();
            for (k, c) in v.dir_clusters(dir).unwrap_or_default().into_iter().enumerate() {
                let role = Role::Content((k as u64).saturating_mul(cb));
                ctx.spans.push(Span { start: v.cluster_offset(c), len: cb, owner: Owner::Node(owner, role) });
            }
        }
        let entries = match v.read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                w.problems.push(format!("{}: {e}", String::from_utf8_lossy(&path)));
                continue;
            }
        };
        let mut names = HashSet::new();
        for e in entries {
            let p = join(&path, e.name.as_bytes());
            if bad_name(e.name.as_bytes()) || !names.insert(e.name.to_lowercase()) {
                w.problems.push(format!(
                    "{}: the name {:?} is invalid or repeated",
                    String::from_utf8_lossy(&path),
                    e.name
                ));
                continue;
            }
            let idx = nodes.len();
            let first_span = ctx.spans.len();
            let node = fat_node(v, p.clone(), &e, &mut ctx, opts);
            for s in &mut ctx.spans[first_span..] {
                if let Owner::Node(i, _) = &mut s.owner {
                    *i = idx;
                }
            }
            nodes.push((node, idx));
            if e.is_dir() {
                if seen.insert(e.cluster) {
                    stack.push((p, fat::Dir::Cluster(e.cluster), idx));
                } else {
                    w.problems.push(format!(
                        "{}: folder cluster {} is reached twice (a loop)",
                        String::from_utf8_lossy(&p),
                        e.cluster
                    ));
                }
            }
        }
    }
    if opts.spans {
        for (start, len, what) in v.metadata_regions() {
            ctx.spans.push(Span { start, len, owner: Owner::Meta(what) });
        }
    }
    finish(w, nodes, ctx, opts)
}
