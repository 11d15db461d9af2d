//! Where two images differ, from the outside in: the format headers (when both images have
//! the same format; an image and its conversion to another format compare as their
//! virtual disks), the virtual size, the partition table, then per partition the
//! filesystem's metadata and every file (type, content, mode, owner, times, xattrs, link
//! target, device number, hard links), and last the blocks of the virtual disks that
//! differ without any of that explaining them (free space, gaps between partitions,
//! partitions without a known filesystem, metadata that differs although nothing above
//! does).
//!
//! Content is compared by [`Digest`](crate::content::Digest), so a file stored with holes
//! and the same file written out in full are equal, and blocks that only moved (the same
//! file at another place) are explained by the file they belong to.

use crate::fs::{self, Owner, Role, Walk, WalkOptions};
use crate::{layout, Disk, Layout, Part};
use mdi_ptable::read::Table;
use mdi_sink::ReadAt;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

/// One difference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Difference {
    /// "image", "header", "table", "filesystem", "file" or "blocks".
    pub level: &'static str,
    /// Where: "qcow2 header", "partition 2", "partition 2 (ext4) /etc/hostname", …
    pub place: String,
    /// What differs.
    pub what: String,
    /// The value in the first image ("" when not applicable).
    pub a: String,
    /// The value in the second image.
    pub b: String,
}

/// The outcome of a comparison.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Differences, outside in.
    pub differences: Vec<Difference>,
    /// Remarks that are not differences (formats differ, so headers were not compared).
    pub notes: Vec<String>,
    /// What could not be read.
    pub errors: Vec<String>,
}

impl Outcome {
    fn add(
        &mut self,
        level: &'static str,
        place: &str,
        what: impl Into<String>,
        a: impl Into<String>,
        b: impl Into<String>,
    ) {
        self.differences.push(Difference { level, place: place.into(), what: what.into(), a: a.into(), b: b.into() });
    }

    fn cmp<T: PartialEq + std::fmt::Display>(&mut self, level: &'static str, place: &str, what: &str, a: T, b: T) {
        if a != b {
            self.add(level, place, what, a.to_string(), b.to_string());
        }
    }
}

/// Runs `make-disk-image diff`: (exit code, text for stdout, errors for stderr). In JSON
/// the errors are also in the document's "errors".
pub fn run(a: &Path, b: &Path, as_json: bool, format: Option<mdi_container::read::Format>) -> (i32, String, String) {
    let open = |p: &Path| Disk::open_as(p, format).map_err(|e| format!("cannot read image '{}': {e}", p.display()));
    let out = match (open(a), open(b)) {
        (Ok(da), Ok(db)) => diff(&da, &db),
        (ea, eb) => {
            let errors: Vec<String> = [ea.err(), eb.err()].into_iter().flatten().collect();
            Outcome { errors, ..Outcome::default() }
        }
    };
    let code = if !out.errors.is_empty() {
        2
    } else if out.differences.is_empty() {
        0
    } else {
        1
    };
    let text = if as_json {
        let diffs: Vec<_> = out
            .differences
            .iter()
            .map(|d| json!({"level": d.level, "place": d.place, "what": d.what, "a": d.a, "b": d.b}))
            .collect();
        let v = json!({
            "identical": code == 0,
            "differences": diffs,
            "notes": out.notes,
            "errors": out.errors,
        });
        serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
    } else {
        render(&out, a, b)
    };
    let errors: String = out.errors.iter().map(|e| format!("error: {e}\n")).collect();
    (code, text, errors)
}

/// The human-readable form (without the errors, which go to stderr).
pub fn render(out: &Outcome, a: &Path, b: &Path) -> String {
    let mut s = String::new();
    for n in &out.notes {
        let _ = writeln!(s, "note: {n}");
    }
    for d in &out.differences {
        if d.a.is_empty() && d.b.is_empty() {
            let _ = writeln!(s, "{}: {}", d.place, d.what);
        } else {
            let _ = writeln!(s, "{}: {}: {} vs {}", d.place, d.what, d.a, d.b);
        }
    }
    if out.errors.is_empty() {
        if out.differences.is_empty() {
            let _ = writeln!(s, "{} and {} are identical", a.display(), b.display());
        } else {
            let n = out.differences.len();
            let _ = writeln!(
                s,
                "{} and {} differ ({n} difference{})",
                a.display(),
                b.display(),
                if n == 1 { "" } else { "s" }
            );
        }
    }
    s
}

/// Header fields keyed by name and occurrence ("Region#2").
fn keyed(h: &[(String, String)]) -> Vec<(String, String)> {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    h.iter()
        .map(|(k, v)| {
            let n = seen.entry(k).or_insert(0);
            *n += 1;
            (if *n == 1 { k.clone() } else { format!("{k}#{n}") }, v.clone())
        })
        .collect()
}

/// Compares two ordered field lists; returns whether any differed.
fn cmp_fields(
    out: &mut Outcome,
    level: &'static str,
    place: &str,
    a: &[(String, String)],
    b: &[(String, String)],
    skip: &[&str],
) -> bool {
    let (ka, kb) = (keyed(a), keyed(b));
    let mb: BTreeMap<&str, &str> = kb.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let ma: BTreeMap<&str, &str> = ka.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let before = out.differences.len();
    for (k, va) in &ka {
        if skip.contains(&k.as_str()) {
            continue;
        }
        match mb.get(k.as_str()) {
            Some(vb) if *vb == va => {}
            Some(vb) => out.add(level, place, k.clone(), va.clone(), (*vb).to_string()),
            None => out.add(level, place, k.clone(), va.clone(), "(absent)"),
        }
    }
    for (k, vb) in &kb {
        if !ma.contains_key(k.as_str()) && !skip.contains(&k.as_str()) {
            out.add(level, place, k.clone(), "(absent)", vb.clone());
        }
    }
    out.differences.len() > before
}

/// Compares two images.
pub fn diff(a: &Disk, b: &Disk) -> Outcome {
    let mut out = Outcome::default();
    // 1. The container.
    if a.format != b.format {
        out.notes.push(format!(
            "the formats differ ({} vs {}): their headers are not compared, only what they hold",
            a.format, b.format
        ));
    } else {
        let place = format!("{} header", a.format);
        // A header checksum follows from the fields it covers: only worth saying alone.
        let sums = ["checksum", "dyn.checksum"];
        if !cmp_fields(&mut out, "header", &place, &a.header, &b.header, &sums) {
            cmp_fields(&mut out, "header", &place, &a.header, &b.header, &[]);
        }
    }
    out.cmp("image", "image", "virtual size", a.size(), b.size());

    // 2. The partition table.
    let (la, lb) = match (layout(a), layout(b)) {
        (Ok(x), Ok(y)) => (x, y),
        (x, y) => {
            for e in [x.err(), y.err()].into_iter().flatten() {
                out.errors.push(format!("reading the partition table: {e}"));
            }
            return out;
        }
    };
    let table_diffs = out.differences.len();
    cmp_tables(&mut out, la.table.as_ref(), lb.table.as_ref());
    let table_differs = out.differences.len() > table_diffs;

    // 3-4. Filesystems and files, partition by partition.
    let numbers: BTreeSet<Option<u32>> = la.parts.iter().chain(&lb.parts).map(|p| p.number).collect();
    let mut regions: Vec<Region> = Vec::new();
    for n in numbers {
        let (pa, pb) = (la.parts.iter().find(|p| p.number == n), lb.parts.iter().find(|p| p.number == n));
        regions.push(compare_part(&mut out, a, b, pa, pb));
    }

    // 5. Blocks nothing above explains.
    compare_blocks(&mut out, a, b, &la, &lb, &regions, table_differs);

    // 6. The files themselves: two images of one format that hold the same disk can still
    // differ in the container's own bytes (tables, padding, unused space).
    if a.format == b.format && out.differences.is_empty() && out.errors.is_empty() {
        if let (Some(pa), Some(pb)) = (&a.path, &b.path) {
            compare_files_bytes(&mut out, a.format, pa, pb);
        }
    }
    for n in a.notes.iter().chain(&b.notes) {
        out.notes.push(n.clone());
    }
    out
}

/// Compares two image files byte for byte, naming the ranges that differ as the
/// container's (the virtual disks being equal when this runs).
fn compare_files_bytes(out: &mut Outcome, format: mdi_container::read::Format, a: &Path, b: &Path) {
    let open = |p: &Path| std::fs::File::open(p).map(std::io::BufReader::new);
    let (mut fa, mut fb) = match (open(a), open(b)) {
        (Ok(x), Ok(y)) => (x, y),
        (x, y) => {
            for e in [x.err(), y.err()].into_iter().flatten() {
                out.errors.push(format!("comparing the image files: {e}"));
            }
            return;
        }
    };
    let what = if format == mdi_container::read::Format::Raw {
        "the file bytes past the disk's last whole sector".to_string()
    } else {
        format!("{format} metadata or unused space (nothing of the virtual disk)")
    };
    const CHUNK: usize = 1 << 20;
    let (mut ba, mut bb) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    let mut off = 0u64;
    loop {
        let (na, nb) = match (read_full(&mut fa, &mut ba), read_full(&mut fb, &mut bb)) {
            (Ok(x), Ok(y)) => (x, y),
            (x, y) => {
                for e in [x.err(), y.err()].into_iter().flatten() {
                    out.errors.push(format!("comparing the image files at byte {off}: {e}"));
                }
                return;
            }
        };
        for (k, (x, y)) in ba[..na.min(nb)].chunks(512).zip(bb[..na.min(nb)].chunks(512)).enumerate() {
            if x != y {
                let pos = off + (k * 512) as u64;
                match ranges.last_mut() {
                    Some(r) if r.0 + r.1 == pos => r.1 += x.len() as u64,
                    _ => ranges.push((pos, x.len() as u64)),
                }
            }
        }
        if na != nb || na < CHUNK {
            break;
        }
        off += na as u64;
    }
    let (la, lb) = (std::fs::metadata(a).map(|m| m.len()), std::fs::metadata(b).map(|m| m.len()));
    if let (Ok(la), Ok(lb)) = (la, lb) {
        if la != lb {
            out.add("image", "image file", format!("file size ({what})"), la.to_string(), lb.to_string());
        }
    }
    let total = ranges.len();
    for (pos, len) in ranges.into_iter().take(MAX_RANGES) {
        out.add("image", "image file", format!("{len} bytes at file offset {pos} differ ({what})"), "", "");
    }
    if total > MAX_RANGES {
        out.add("image", "image file", format!("and {} more ranges", total - MAX_RANGES), "", "");
    }
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_full(r: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn cmp_tables(out: &mut Outcome, a: Option<&Table>, b: Option<&Table>) {
    let (a, b) = match (a, b) {
        (None, None) => return,
        (Some(x), None) => return out.add("table", "partition table", "type", x.kind.name(), "none"),
        (None, Some(y)) => return out.add("table", "partition table", "type", "none", y.kind.name()),
        (Some(x), Some(y)) => (x, y),
    };
    let p = "partition table";
    if a.kind != b.kind {
        return out.add("table", p, "type", a.kind.name(), b.kind.name());
    }
    out.cmp("table", p, "disk identifier", a.id(), b.id());
    if let (Some(x), Some(y)) = (&a.gpt, &b.gpt) {
        out.cmp("table", p, "first usable LBA", x.first_usable, y.first_usable);
        out.cmp("table", p, "last usable LBA", x.last_usable, y.last_usable);
        out.cmp("table", p, "backup header LBA", x.alternate_lba, y.alternate_lba);
        out.cmp("table", p, "entries", x.entry_count, y.entry_count);
        out.cmp("table", p, "entry size", x.entry_size, y.entry_size);
        out.cmp("table", p, "revision", x.revision, y.revision);
    }
    if a.mbr.boot_code != b.mbr.boot_code {
        let n = a.mbr.boot_code.iter().zip(&b.mbr.boot_code).filter(|(x, y)| x != y).count();
        out.add("table", "MBR", format!("boot code differs ({n} of 440 bytes)"), "", "");
    }
    if a.kind == mdi_ptable::read::Kind::Gpt && a.mbr.entries != b.mbr.entries {
        out.add(
            "table",
            "MBR",
            "protective MBR entries differ",
            format!("{:?}", a.mbr.entries),
            format!("{:?}", b.mbr.entries),
        );
    }
    out.cmp("table", p, "problems", a.problems.join("; "), b.problems.join("; "));
    let numbers: BTreeSet<u32> = a.partitions.iter().chain(&b.partitions).map(|p| p.number).collect();
    for n in numbers {
        let place = format!("partition {n}");
        match (a.partitions.iter().find(|p| p.number == n), b.partitions.iter().find(|p| p.number == n)) {
            (Some(_), None) => out.add("table", &place, "only in the first image", "", ""),
            (None, Some(_)) => out.add("table", &place, "only in the second image", "", ""),
            (Some(x), Some(y)) => {
                out.cmp("table", &place, "start sector", x.start, y.start);
                out.cmp("table", &place, "sectors", x.sectors, y.sectors);
                out.cmp("table", &place, "type", x.type_id.as_str(), y.type_id.as_str());
                let g = |u: &Option<mdi_ident::Uuid>| u.map(|u| u.to_string().to_uppercase()).unwrap_or_default();
                out.cmp("table", &place, "GUID", g(&x.guid), g(&y.guid));
                out.cmp("table", &place, "name", x.name.as_str(), y.name.as_str());
                out.cmp("table", &place, "attributes", format!("{:#x}", x.attributes), format!("{:#x}", y.attributes));
            }
            (None, None) => {}
        }
    }
}

/// What the comparison of one partition leaves for the block comparison.
struct Region {
    number: Option<u32>,
    /// Whether a filesystem- or file-level difference was found in it.
    explained: bool,
    /// Owners of each image's bytes, absolute on the disk, non-overlapping and sorted.
    spans_a: Vec<(u64, u64, SpanKind)>,
    spans_b: Vec<(u64, u64, SpanKind)>,
    /// Each image's entries (by walk index): path, type, size, and whether a difference
    /// was reported for it (then its blocks are explained).
    nodes_a: Vec<Entry>,
    nodes_b: Vec<Entry>,
    has_fs: bool,
    /// The filesystem type ("" when none).
    kind: String,
}

struct Entry {
    path: Vec<u8>,
    ty: fs::Type,
    size: u64,
    differs: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum SpanKind {
    /// Entry index, what the range holds for it, and the byte of the disk at which the
    /// range starts (to place a byte within the entry).
    File(usize, Role, u64),
    Meta(String),
}

fn abs_spans(part: &Part, w: &Walk) -> Vec<(u64, u64, SpanKind)> {
    let mut v: Vec<(u64, u64, SpanKind)> = Vec::new();
    let mut end = 0u64;
    for s in &w.spans {
        let first = part.offset.saturating_add(s.start);
        let start = first.max(end);
        let stop = first.saturating_add(s.len);
        if stop <= start {
            continue;
        }
        let kind = match &s.owner {
            Owner::Node(i, role) => SpanKind::File(*i, *role, first),
            Owner::Meta(m) => SpanKind::Meta(m.clone()),
        };
        v.push((start, stop, kind));
        end = stop;
    }
    v
}

/// "partition 2 (ext4)", or for a filesystem on the whole disk "filesystem (ext4)"; without
/// a type, "partition 2" or "the filesystem".
fn part_place(n: Option<u32>, kind: &str) -> String {
    match (n, kind) {
        (Some(n), "") => format!("partition {n}"),
        (Some(n), k) => format!("partition {n} ({k})"),
        (None, "") => "the filesystem".to_string(),
        (None, k) => format!("filesystem ({k})"),
    }
}

fn compare_part(out: &mut Outcome, a: &Disk, b: &Disk, pa: Option<&Part>, pb: Option<&Part>) -> Region {
    let number = pa.or(pb).and_then(|p| p.number);
    let mut region = Region {
        number,
        explained: false,
        spans_a: Vec::new(),
        spans_b: Vec::new(),
        nodes_a: Vec::new(),
        nodes_b: Vec::new(),
        has_fs: false,
        kind: String::new(),
    };
    let (Some(pa), Some(pb)) = (pa, pb) else {
        region.explained = true; // reported at the table level
        return region;
    };
    let (wa, wb) = (pa.window(a), pb.window(b));
    let (fa, fb) = match (fs::open(&wa), fs::open(&wb)) {
        (Ok(x), Ok(y)) => (x, y),
        (x, y) => {
            let place = part_place(number, "");
            for (which, e) in [("first", x.err()), ("second", y.err())] {
                if let Some(e) = e {
                    out.errors.push(format!("{place} in the {which} image: {e}"));
                }
            }
            region.explained = true;
            return region;
        }
    };
    let before = out.differences.len();
    let (fa, fb) = match (fa, fb) {
        (None, None) => {
            // Filesystems known by their superblock only: compare what is known of them.
            if let (Some(x), Some(y)) = (crate::other_fs::identify(&wa), crate::other_fs::identify(&wb)) {
                let place = part_place(number, &x.kind);
                if x.kind != y.kind {
                    out.add("filesystem", &place, "filesystem type", x.kind, y.kind);
                } else {
                    out.cmp("filesystem", &place, "label", x.label.as_str(), y.label.as_str());
                    out.cmp("filesystem", &place, "UUID", x.uuid.as_str(), y.uuid.as_str());
                    cmp_fields(out, "filesystem", &place, &x.fields, &y.fields, &[]);
                }
                region.explained = out.differences.len() > before;
            }
            return region;
        }
        (Some(x), Some(y)) => (x, y),
        (x, y) => {
            let k = |f: &Option<fs::Fs<'_>>| f.as_ref().map_or("none".to_string(), |f| f.info().kind);
            out.add("filesystem", &part_place(number, ""), "filesystem type", k(&x), k(&y));
            region.explained = true;
            region.has_fs = true;
            return region;
        }
    };
    region.has_fs = true;
    let (ia, ib) = (fa.info(), fb.info());
    let place = part_place(number, &ia.kind);
    region.kind = ia.kind.clone();
    if ia.kind != ib.kind {
        out.add("filesystem", &place, "type", ia.kind, ib.kind);
        region.explained = true;
        return region;
    }
    // Checksums follow from the fields they cover: only worth saying when nothing else does.
    let differ = cmp_fields(out, "filesystem", &place, &ia.fields, &ib.fields, &["s_checksum"]);
    if !differ {
        cmp_fields(out, "filesystem", &place, &ia.fields, &ib.fields, &[]);
    }
    out.cmp("filesystem", &place, "problems", ia.problems.join("; "), ib.problems.join("; "));

    let opts = WalkOptions { content: true, spans: true };
    let (wa_, wb_) = (fa.walk(opts), fb.walk(opts));
    for (which, w) in [("first", &wa_), ("second", &wb_)] {
        for p in &w.problems {
            out.errors.push(format!("{place} in the {which} image: {p}"));
        }
    }
    let (da, db) = compare_files(out, &place, &fa, &fb, &wa_, &wb_);
    region.explained = out.differences.len() > before;
    region.spans_a = abs_spans(pa, &wa_);
    region.spans_b = abs_spans(pb, &wb_);
    let entries = |w: Walk, d: Vec<bool>| -> Vec<Entry> {
        w.nodes.into_iter().zip(d).map(|(n, differs)| Entry { path: n.path, ty: n.ty, size: n.size, differs }).collect()
    };
    region.nodes_a = entries(wa_, da);
    region.nodes_b = entries(wb_, db);
    region
}

fn show_time(t: fs::Time) -> String {
    if t.1 == 0 {
        t.0.to_string()
    } else {
        format!("{}.{:09}", t.0, t.1)
    }
}

fn show_bytes(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) if s.chars().all(|c| !c.is_control()) => format!("{s:?}"),
        _ => format!("0x{}", crate::hex(b)),
    }
}

/// Hard-link groups (non-directories with more than one link seen under several paths):
/// for each walk index, its group's number, and each group's walk indices in path order.
/// Memory is linear in the number of entries, however many names one inode has.
struct LinkGroups {
    of: Vec<Option<usize>>,
    members: Vec<Vec<usize>>,
}

fn link_groups(w: &Walk) -> LinkGroups {
    let mut by: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (k, n) in w.nodes.iter().enumerate() {
        if n.ty != fs::Type::Dir && n.nlink > 1 && n.attr.is_none() {
            by.entry(n.id).or_default().push(k);
        }
    }
    let mut g = LinkGroups { of: vec![None; w.nodes.len()], members: Vec::new() };
    for m in by.into_values().filter(|m| m.len() > 1) {
        for &k in &m {
            g.of[k] = Some(g.members.len());
        }
        g.members.push(m);
    }
    g
}

/// The other names of entry `k` for a message: at most a few, then how many more.
fn other_names(w: &Walk, g: &LinkGroups, k: usize) -> String {
    const SHOWN: usize = 5;
    let Some(m) = g.of[k].map(|i| &g.members[i]) else { return "no other name".to_string() };
    let others: Vec<String> = m
        .iter()
        .filter(|&&j| j != k)
        .take(SHOWN)
        .map(|&j| String::from_utf8_lossy(&w.nodes[j].path).into_owned())
        .collect();
    let more = m.len() - 1 - others.len();
    if more > 0 {
        format!("{} and {more} more", others.join(", "))
    } else {
        others.join(", ")
    }
}

/// Compares every entry; returns, for each entry of each walk, whether a difference was
/// reported for it.
fn compare_files(
    out: &mut Outcome,
    place: &str,
    fa: &fs::Fs<'_>,
    fb: &fs::Fs<'_>,
    a: &Walk,
    b: &Walk,
) -> (Vec<bool>, Vec<bool>) {
    let ma: BTreeMap<&[u8], usize> = a.nodes.iter().enumerate().map(|(k, n)| (n.path.as_slice(), k)).collect();
    let mb: BTreeMap<&[u8], usize> = b.nodes.iter().enumerate().map(|(k, n)| (n.path.as_slice(), k)).collect();
    let paths: BTreeSet<&[u8]> = ma.keys().chain(mb.keys()).copied().collect();
    let (ga, gb) = (link_groups(a), link_groups(b));
    let (mut da, mut db) = (vec![false; a.nodes.len()], vec![false; b.nodes.len()]);
    // Whether two link groups hold the same names, decided once per pair of groups.
    let mut same_group: BTreeMap<(usize, usize), bool> = BTreeMap::new();
    for p in paths {
        let at = format!("{place} {}", String::from_utf8_lossy(p));
        let before = out.differences.len();
        let (ka, kb) = match (ma.get(p), mb.get(p)) {
            (Some(&x), None) => {
                out.add("file", &at, format!("only in the first image ({})", a.nodes[x].ty.name()), "", "");
                da[x] = true;
                continue;
            }
            (None, Some(&y)) => {
                out.add("file", &at, format!("only in the second image ({})", b.nodes[y].ty.name()), "", "");
                db[y] = true;
                continue;
            }
            (Some(&x), Some(&y)) => (x, y),
            (None, None) => continue,
        };
        let (x, y) = (&a.nodes[ka], &b.nodes[kb]);
        if x.ty != y.ty {
            out.add("file", &at, "type", x.ty.name(), y.ty.name());
            da[ka] = true;
            db[kb] = true;
            continue;
        }
        if x.digest != y.digest {
            let mut what = "content".to_string();
            if x.size == y.size {
                if let Some(off) = first_difference(fa, fb, p, x.size) {
                    what = format!("content (first difference at byte {off})");
                }
                out.add("file", &at, what, "", "");
            } else {
                out.add("file", &at, "content and size", format!("{} bytes", x.size), format!("{} bytes", y.size));
            }
        }
        let f = "file";
        out.cmp(f, &at, "mode", format!("{:04o}", x.perm), format!("{:04o}", y.perm));
        out.cmp(f, &at, "owner", format!("{}:{}", x.uid, x.gid), format!("{}:{}", y.uid, y.gid));
        out.cmp(f, &at, "mtime", show_time(x.mtime), show_time(y.mtime));
        out.cmp(f, &at, "atime", show_time(x.atime), show_time(y.atime));
        out.cmp(f, &at, "ctime", show_time(x.ctime), show_time(y.ctime));
        out.cmp(
            f,
            &at,
            "crtime",
            x.crtime.map(show_time).unwrap_or_default(),
            y.crtime.map(show_time).unwrap_or_default(),
        );
        if let (Some(t), Some(u)) = (&x.target, &y.target) {
            out.cmp(f, &at, "link target", show_bytes(t), show_bytes(u));
        }
        if x.rdev != y.rdev {
            let r = |d: Option<(u32, u32)>| d.map(|(a, b)| format!("{a},{b}")).unwrap_or_default();
            out.add(f, &at, "device number", r(x.rdev), r(y.rdev));
        }
        if x.attr != y.attr {
            let r = |a: Option<u8>| a.map(|a| format!("{a:#04x}")).unwrap_or_default();
            out.add(f, &at, "FAT attributes", r(x.attr), r(y.attr));
        }
        if x.ty != fs::Type::Dir {
            out.cmp(f, &at, "link count", x.nlink, y.nlink);
        }
        let (xa, ya): (BTreeMap<_, _>, BTreeMap<_, _>) =
            (x.xattrs.iter().map(|(k, v)| (k, v)).collect(), y.xattrs.iter().map(|(k, v)| (k, v)).collect());
        for k in xa.keys().chain(ya.keys()).collect::<BTreeSet<_>>() {
            let name = format!("xattr {}", String::from_utf8_lossy(k));
            match (xa.get(k), ya.get(k)) {
                (Some(v), Some(w)) if v != w => out.add(f, &at, name, show_bytes(v), show_bytes(w)),
                (Some(v), None) => out.add(f, &at, name, show_bytes(v), "(absent)"),
                (None, Some(w)) => out.add(f, &at, name, "(absent)", show_bytes(w)),
                _ => {}
            }
        }
        let links_differ = match (ga.of[ka], gb.of[kb]) {
            (None, None) => false,
            (Some(i), Some(j)) => !*same_group.entry((i, j)).or_insert_with(|| {
                let (x, y) = (&ga.members[i], &gb.members[j]);
                x.len() == y.len() && x.iter().zip(y).all(|(&u, &v)| a.nodes[u].path == b.nodes[v].path)
            }),
            _ => true,
        };
        if links_differ {
            out.add(f, &at, "hard links", other_names(a, &ga, ka), other_names(b, &gb, kb));
        }
        if x.error != y.error {
            out.add(f, &at, "read error", x.error.clone().unwrap_or_default(), y.error.clone().unwrap_or_default());
        }
        if out.differences.len() > before {
            da[ka] = true;
            db[kb] = true;
        }
    }
    (da, db)
}

/// The first byte at which two files of `size` bytes differ (files up to 64 MiB).
fn first_difference(fa: &fs::Fs<'_>, fb: &fs::Fs<'_>, path: &[u8], size: u64) -> Option<u64> {
    if size > 64 << 20 {
        return None;
    }
    let (mut x, mut y) = (Vec::new(), Vec::new());
    fa.cat(path, &mut x).ok()?;
    fb.cat(path, &mut y).ok()?;
    x.iter().zip(&y).position(|(p, q)| p != q).map(|i| i as u64)
}

/// Unit of the block comparison.
const UNIT: u64 = 4096;
/// Ranges of unexplained blocks listed before "and N more".
const MAX_RANGES: usize = 20;

/// The entry owning `pos`, what the range holds for it, and the byte within the range.
fn entry_at<'a>(o: Option<&SpanKind>, nodes: &'a [Entry], pos: u64) -> Option<(&'a Entry, Role, u64)> {
    match o {
        Some(SpanKind::File(i, role, first)) => nodes.get(*i).map(|e| (e, *role, pos.saturating_sub(*first))),
        _ => None,
    }
}

/// Whether two (role, byte within the range) pairs are the same byte of an entry.
fn at_same_place(ra: Role, oa: u64, rb: Role, ob: u64) -> bool {
    match (ra, rb) {
        (Role::Content(x), Role::Content(y)) => x.checked_add(oa) == y.checked_add(ob),
        (x, y) => x == y,
    }
}

/// What a byte of an unchanged entry is, when it differs: never its content.
fn entry_part(e: &Entry, role: Role, within: u64) -> String {
    let path = String::from_utf8_lossy(&e.path);
    match (role, e.ty) {
        (Role::Content(_), fs::Type::Dir) => {
            format!("directory {path}: bytes its entries do not use (record slack, padding or unused slots)")
        }
        (Role::Content(off), _) if off.saturating_add(within) >= e.size => {
            format!("{} {path}: bytes past its end ({} bytes), in its last block", e.ty.name(), e.size)
        }
        (Role::Content(off), _) => format!(
            "{} {path}: byte {} of its data, which reads the same (a checksum or an unread form)",
            e.ty.name(),
            off.saturating_add(within)
        ),
        (Role::Unwritten, _) => format!("{} {path}: an unwritten extent (it reads as zeros)", e.ty.name()),
        (Role::Mapping, _) => format!("{} {path}: its extent tree or block map", e.ty.name()),
        (Role::Xattr, _) => format!("{} {path}: its extended-attribute block", e.ty.name()),
    }
}

fn owner_at(spans: &[(u64, u64, SpanKind)], pos: u64) -> Option<&SpanKind> {
    let i = spans.partition_point(|s| s.0 <= pos);
    i.checked_sub(1).map(|i| &spans[i]).filter(|s| pos < s.1).map(|s| &s.2)
}

fn compare_blocks(
    out: &mut Outcome,
    a: &Disk,
    b: &Disk,
    la: &Layout,
    lb: &Layout,
    regions: &[Region],
    table_differs: bool,
) {
    let size = a.size().min(b.size());
    let parts: Vec<(&Part, Option<&Region>)> =
        la.parts.iter().map(|p| (p, regions.iter().find(|r| r.number == p.number))).collect();
    let ss = la.table.as_ref().map_or(512, |t| t.sector_size);
    let gpt_tail = la.table.as_ref().and_then(|t| t.gpt.as_ref()).map(|h| h.last_usable + 1);
    let _ = lb;
    // Classifies one differing unit: None when explained, else what it is.
    let classify = |pos: u64| -> Option<String> {
        if let Some((p, r)) = parts.iter().find(|(p, _)| pos >= p.offset && pos - p.offset < p.size) {
            let Some(r) = r else { return Some(format!("partition {}", p.number.unwrap_or(0))) };
            let place = part_place(p.number, &r.kind);
            if !r.has_fs {
                return if r.explained { None } else { Some(format!("{place}, which holds no known filesystem")) };
            }
            let (oa, ob) = (owner_at(&r.spans_a, pos), owner_at(&r.spans_b, pos));
            let (ea, eb) = (entry_at(oa, &r.nodes_a, pos), entry_at(ob, &r.nodes_b, pos));
            // An entry with a reported difference explains its blocks.
            if ea.is_some_and(|e| e.0.differs) || eb.is_some_and(|e| e.0.differs) {
                return None;
            }
            match (ea, eb) {
                // The same byte of the same unchanged entry: the difference is in what is
                // not its content (slack, an unwritten extent, its mapping blocks).
                (Some((x, rx, ox)), Some((y, ry, oy))) if x.path == y.path && at_same_place(rx, ox, ry, oy) => {
                    return Some(format!("{place}: {}", entry_part(x, rx, ox)));
                }
                // An unchanged entry here in one image and not at this place in the other:
                // it moved, and the mapping that says so (inode table, extent tree) differs
                // and is named, or is explained by a difference above.
                (Some(_), _) | (_, Some(_)) => return None,
                (None, None) => {}
            }
            match (oa, ob) {
                (Some(SpanKind::Meta(m)), _) | (_, Some(SpanKind::Meta(m))) => {
                    if r.explained {
                        None
                    } else {
                        Some(format!("{place}: {m}"))
                    }
                }
                _ => Some(format!("{place}: free space")),
            }
        } else {
            let sector = pos / ss;
            let what = if sector == 0 {
                "the MBR".to_string()
            } else if la.table.as_ref().and_then(|t| t.gpt.as_ref()).is_some_and(|h| sector < h.first_usable) {
                "the primary GPT".to_string()
            } else if gpt_tail.is_some_and(|t| sector >= t) {
                "the backup GPT".to_string()
            } else {
                "outside any partition".to_string()
            };
            if table_differs && (what.contains("GPT") || what == "the MBR") {
                None
            } else {
                Some(what)
            }
        }
    };
    let mut ranges: Vec<(u64, u64, String)> = Vec::new();
    const CHUNK: u64 = 1 << 20;
    let (mut ba, mut bb) = (vec![0u8; CHUNK as usize], vec![0u8; CHUNK as usize]);
    let mut off = 0u64;
    while off < size {
        let n = CHUNK.min(size - off);
        let (da, db) = match (a.maybe_data(off, n), b.maybe_data(off, n)) {
            (Ok(x), Ok(y)) => (x, y),
            (x, y) => {
                for e in [x.err(), y.err()].into_iter().flatten() {
                    out.errors.push(format!("comparing blocks at byte {off}: {e}"));
                }
                return;
            }
        };
        if da || db {
            let (xa, xb) = (&mut ba[..n as usize], &mut bb[..n as usize]);
            let fill = |x: &mut [u8]| {
                x.fill(0);
                Ok(())
            };
            let ra = if da { a.read_at(off, xa) } else { fill(xa) };
            let rb = if db { b.read_at(off, xb) } else { fill(xb) };
            if let Some(e) = ra.err().or(rb.err()) {
                out.errors.push(format!("comparing blocks at byte {off}: {e}"));
                return;
            }
            if xa != xb {
                for (k, (ua, ub)) in xa.chunks(UNIT as usize).zip(xb.chunks(UNIT as usize)).enumerate() {
                    if ua == ub {
                        continue;
                    }
                    // Sector by sector: partitions and tables are sector-aligned, not unit-aligned.
                    for (j, (sa, sb)) in ua.chunks(512).zip(ub.chunks(512)).enumerate() {
                        if sa == sb {
                            continue;
                        }
                        let pos = off + k as u64 * UNIT + j as u64 * 512;
                        if let Some(what) = classify(pos) {
                            let len = sa.len() as u64;
                            match ranges.last_mut() {
                                Some(r) if r.0 + r.1 == pos && r.2 == what => r.1 += len,
                                _ => ranges.push((pos, len, what)),
                            }
                        }
                    }
                }
            }
        }
        off += n;
    }
    let total = ranges.len();
    for (pos, len, what) in ranges.into_iter().take(MAX_RANGES) {
        out.add(
            "blocks",
            "blocks",
            format!("{len} bytes at byte {pos} ({what}) differ and no difference above explains them"),
            "",
            "",
        );
    }
    if total > MAX_RANGES {
        out.add("blocks", "blocks", format!("and {} more ranges", total - MAX_RANGES), "", "");
    }
}
