//! Plans a volume from a tree (names, clusters, chains) and writes it in one pass.

use crate::boot_sector::{self, Identity};
use crate::dir_entry::{self, ShortEntry, ATTR_ARCHIVE, ATTR_DIRECTORY, ATTR_READ_ONLY, ATTR_VOLUME_ID};
use crate::layout::{FatType, Layout, SECTOR};
use crate::{time, Error};
use mdi_sink::Sink;
use mdi_tree::{EntryId, FileData, Kind, Tree};
use std::collections::{HashMap, HashSet};
use std::io::Read;

/// What varies between volumes besides the tree.
#[derive(Clone, Debug)]
pub struct Options {
    /// BS_VolID.
    pub volume_id: u32,
    /// Volume label (up to 11 characters, stored upper-case).
    pub label: String,
    /// Every timestamp (clamped to 1980).
    pub time: i64,
    /// The partition's first LBA (BPB_HiddSec).
    pub hidden_sectors: u32,
}

/// What was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub fat_type: FatType,
    pub cluster_bytes: u64,
    pub clusters: u64,
    pub free_clusters: u64,
}

/// One directory or file and the clusters it owns.
struct Obj {
    entry: EntryId,
    is_dir: bool,
    first: u32,
    clusters: u64,
    /// Directory: parent directory object index (None for the root).
    parent: Option<usize>,
}

fn name_of(tree: &Tree, id: EntryId) -> Result<String, Error> {
    let e = tree.get(id);
    let n = std::str::from_utf8(&e.name).map_err(|_| Error::BadName(tree.path_of(id)))?;
    if !dir_entry::valid_long_name(n) {
        return Err(Error::BadName(tree.path_of(id)));
    }
    Ok(n.to_string())
}

/// Writes the subtree below `root` as a FAT volume of `bytes` into `sink` (offset 0 = the
/// volume's first byte).
pub fn write(tree: &Tree, root: EntryId, bytes: u64, opts: &Options, sink: &mut dyn Sink) -> Result<Report, Error> {
    // ---- Names and entry counts per directory (children already sorted by name).
    let mut dirs: Vec<EntryId> = Vec::new();
    let mut files: Vec<EntryId> = Vec::new();
    let mut stack = vec![root];
    while let Some(d) = stack.pop() {
        dirs.push(d);
        for &c in tree.children(d).iter().rev() {
            match tree.get(c).kind {
                Kind::Dir { .. } => stack.push(c),
                Kind::File { size, .. } => {
                    if size >= 1 << 32 {
                        return Err(Error::TooLarge(tree.path_of(c)));
                    }
                }
                _ => return Err(Error::Unsupported(tree.path_of(c))),
            }
        }
    }
    // Files in the same depth-first order as their directories.
    for &d in &dirs {
        files.extend(tree.children(d).iter().copied().filter(|&c| matches!(tree.get(c).kind, Kind::File { .. })));
    }
    let mut names: HashMap<EntryId, (String, [u8; 11], bool)> = HashMap::new();
    let mut dir_entries: HashMap<EntryId, u64> = HashMap::new();
    for &d in &dirs {
        let mut taken: HashSet<[u8; 11]> = HashSet::new();
        let mut lower: HashMap<String, String> = HashMap::new();
        let mut count: u64 = if d == root { 1 } else { 2 }; // volume label, or . and ..
        let kids = tree.children(d);
        let long: Vec<String> = kids.iter().map(|&c| name_of(tree, c)).collect::<Result<_, _>>()?;
        for (c, n) in kids.iter().zip(&long) {
            if let Some(prev) = lower.insert(n.to_lowercase(), n.clone()) {
                return Err(Error::CaseCollision(format!("{}/{prev}", tree.path_of(d)), tree.path_of(*c)));
            }
        }
        // Exact 8.3 names first, so generated ones never take them.
        for (c, n) in kids.iter().zip(&long) {
            if let Some(s) = dir_entry::exact_short(n) {
                taken.insert(s);
                names.insert(*c, (n.clone(), s, true));
            }
        }
        for (c, n) in kids.iter().zip(&long) {
            if names.contains_key(c) {
                count += 1;
                continue;
            }
            let s = dir_entry::generate_short(n, &|s| taken.contains(s));
            taken.insert(s);
            count += 1 + n.encode_utf16().count().div_ceil(13) as u64;
            names.insert(*c, (n.clone(), s, false));
        }
        dir_entries.insert(d, count);
    }

    // ---- Geometry, then clusters: directories first (the root first: FAT32's root is
    // cluster 2), then files, each contiguous.
    let need_clusters = |cb: u64| -> u64 {
        dirs.iter().map(|d| if *d == root { 0 } else { (dir_entries[d] * 32).div_ceil(cb).max(1) }).sum::<u64>()
            + files.iter().map(|&f| file_size(tree, f).div_ceil(cb)).sum::<u64>()
    };
    let layout = Layout::plan(bytes).ok_or_else(|| too_small(bytes, &need_clusters, &dir_entries, root))?;
    let cb = layout.cluster_bytes();
    let fat32 = layout.fat_type == FatType::Fat32;
    if !fat32 && dir_entries[&root] > crate::layout::FAT16_ROOT_ENTRIES {
        return Err(Error::TooSmall { need: bytes.max(64 << 20), have: bytes });
    }
    let root_clusters = if fat32 { (dir_entries[&root] * 32).div_ceil(cb).max(1) } else { 0 };
    if need_clusters(cb) + root_clusters > layout.clusters {
        return Err(too_small(bytes, &need_clusters, &dir_entries, root));
    }
    let mut objs: Vec<Obj> = Vec::new();
    let mut index: HashMap<EntryId, usize> = HashMap::new();
    let mut next = 2u64;
    for &d in &dirs {
        let n = if d == root { root_clusters } else { (dir_entries[&d] * 32).div_ceil(cb).max(1) };
        let parent = if d == root { None } else { Some(index[&tree.get(d).parent]) };
        index.insert(d, objs.len());
        objs.push(Obj { entry: d, is_dir: true, first: if n > 0 { next as u32 } else { 0 }, clusters: n, parent });
        next += n;
    }
    for &f in &files {
        let n = file_size(tree, f).div_ceil(cb);
        index.insert(f, objs.len());
        objs.push(Obj {
            entry: f,
            is_dir: false,
            first: if n > 0 { next as u32 } else { 0 },
            clusters: n,
            parent: None,
        });
        next += n;
    }
    let used = next - 2;
    let free = layout.clusters - used;

    // ---- Reserved region, FATs.
    let (date, tod) = time::dos(opts.time);
    let mut label = [b' '; 11];
    for (i, b) in opts.label.to_uppercase().bytes().take(11).enumerate() {
        label[i] = b;
    }
    let id = Identity { volume_id: opts.volume_id, label, hidden_sectors: opts.hidden_sectors };
    let bs = boot_sector::encode(&layout, &id);
    let w = |sink: &mut dyn Sink, off: u64, data: &[u8]| sink.write_at(off, data).map_err(Error::Write);
    w(sink, 0, &bs)?;
    if fat32 {
        let info = boot_sector::fsinfo(free as u32, (next as u32).min(layout.clusters as u32 + 1));
        let mut third = [0u8; 512];
        third[510] = 0x55;
        third[511] = 0xAA;
        // Sectors 0–2 and their backup at 6–8 (BPB_BkBootSec).
        for base in [0u64, 6] {
            w(sink, base * SECTOR, &bs)?;
            w(sink, (base + 1) * SECTOR, &info)?;
            w(sink, (base + 2) * SECTOR, &third)?;
        }
    }
    let entry_bytes = if fat32 { 4 } else { 2 };
    let mut fat = vec![0u8; (layout.fat_sectors * SECTOR) as usize];
    let mut set = |c: u64, v: u32| {
        let o = (c * entry_bytes) as usize;
        if fat32 {
            fat[o..o + 4].copy_from_slice(&v.to_le_bytes());
        } else {
            fat[o..o + 2].copy_from_slice(&(v as u16).to_le_bytes());
        }
    };
    let eoc = if fat32 { 0x0FFF_FFFF } else { 0xFFFF };
    // Entry 0 holds the media byte; entry 1 the end-of-chain mark with the "clean" bits.
    set(0, if fat32 { 0x0FFF_FFF8 } else { 0xFFF8 });
    set(1, eoc);
    for o in &objs {
        for k in 0..o.clusters {
            let c = u64::from(o.first) + k;
            set(c, if k + 1 == o.clusters { eoc } else { (c + 1) as u32 });
        }
    }
    for copy in 0..2 {
        w(sink, (layout.reserved_sectors + copy * layout.fat_sectors) * SECTOR, &fat)?;
    }

    // ---- Directories.
    let entry_for = |o: &Obj, name: [u8; 11]| {
        let e = tree.get(o.entry);
        let (attr, size) = match e.kind {
            Kind::Dir { .. } => (ATTR_DIRECTORY, 0),
            Kind::File { size, .. } => {
                (ATTR_ARCHIVE | if e.meta.perm & 0o222 == 0 { ATTR_READ_ONLY } else { 0 }, size as u32)
            }
            _ => unreachable!("checked above"),
        };
        ShortEntry { name, attr, cluster: o.first, size, date, time: tod }.encode()
    };
    for o in objs.iter().filter(|o| o.is_dir) {
        let mut buf: Vec<u8> = Vec::new();
        if o.entry == root {
            buf.extend_from_slice(
                &ShortEntry { name: label, attr: ATTR_VOLUME_ID, cluster: 0, size: 0, date, time: tod }.encode(),
            );
        } else {
            buf.extend_from_slice(
                &ShortEntry { name: *b".          ", attr: ATTR_DIRECTORY, cluster: o.first, size: 0, date, time: tod }
                    .encode(),
            );
            // ".." of a directory in the root points at cluster 0, even on FAT32 (spec §6.7).
            let parent = &objs[o.parent.expect("non-root has a parent")];
            let pc = if parent.entry == root { 0 } else { parent.first };
            buf.extend_from_slice(
                &ShortEntry { name: *b"..         ", attr: ATTR_DIRECTORY, cluster: pc, size: 0, date, time: tod }
                    .encode(),
            );
        }
        for c in tree.children(o.entry) {
            let (long, short, exact) = &names[c];
            if !exact {
                for l in dir_entry::long_entries(long, short) {
                    buf.extend_from_slice(&l);
                }
            }
            buf.extend_from_slice(&entry_for(&objs[index[c]], *short));
        }
        let at = if o.entry == root && !fat32 {
            (layout.reserved_sectors + 2 * layout.fat_sectors) * SECTOR
        } else {
            layout.cluster_offset(u64::from(o.first))
        };
        w(sink, at, &buf)?;
    }

    // ---- File data, contiguous from each file's first cluster.
    for o in objs.iter().filter(|o| !o.is_dir && o.clusters > 0) {
        let (data, size) = match &tree.get(o.entry).kind {
            Kind::File { data, size } => (data, *size),
            _ => unreachable!(),
        };
        let at = layout.cluster_offset(u64::from(o.first));
        match data {
            FileData::Inline(b) => {
                if b.len() as u64 != size {
                    return Err(Error::SourceChanged("<generated>".into()));
                }
                w(sink, at, b)?;
            }
            FileData::Path(p) => {
                let rerr = |source| Error::Read { path: p.clone(), source };
                let mut f = mdi_tree::open_file(p).map_err(rerr)?;
                let mut buf = vec![0u8; (8 << 20).min(size as usize)];
                let mut done = 0u64;
                while done < size {
                    let n = buf.len().min((size - done) as usize);
                    f.read_exact(&mut buf[..n]).map_err(|e| {
                        if e.kind() == std::io::ErrorKind::UnexpectedEof {
                            Error::SourceChanged(p.clone())
                        } else {
                            rerr(e)
                        }
                    })?;
                    w(sink, at + done, &buf[..n])?;
                    done += n as u64;
                }
            }
        }
    }
    Ok(Report { fat_type: layout.fat_type, cluster_bytes: cb, clusters: layout.clusters, free_clusters: free })
}

fn file_size(tree: &Tree, f: EntryId) -> u64 {
    match tree.get(f).kind {
        Kind::File { size, .. } => size,
        _ => 0,
    }
}

/// The smallest whole-MiB volume that holds everything.
fn too_small(
    have: u64,
    need_clusters: &dyn Fn(u64) -> u64,
    dir_entries: &HashMap<EntryId, u64>,
    root: EntryId,
) -> Error {
    let mut mib = (have >> 20).max(1);
    loop {
        mib += 1;
        if let Some(l) = Layout::plan(mib << 20) {
            let cb = l.cluster_bytes();
            let root_clusters =
                if l.fat_type == FatType::Fat32 { (dir_entries[&root] * 32).div_ceil(cb).max(1) } else { 0 };
            if need_clusters(cb) + root_clusters <= l.clusters {
                return Error::TooSmall { need: mib << 20, have };
            }
        }
    }
}
