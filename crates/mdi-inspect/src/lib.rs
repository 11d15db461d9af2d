//! What is inside a disk image (`make-disk-image inspect`) and why two images differ
//! (`make-disk-image diff`), from the outside in: the image format and its header, the
//! partition table, each filesystem, each file.
//!
//! Everything here sits on the readers of the format crates (mdi-container for image
//! formats, mdi-ptable, mdi-ext4, mdi-fat), which take nothing on trust: a corrupt or
//! hostile image gives error messages, never a panic or a hang (see each reader's
//! documentation, and this crate's fuzz tests).
//!
//! # `inspect --json`
//!
//! The JSON document (keys sorted; sizes in bytes unless named otherwise; stable across
//! versions: keys are only ever added):
//!
//! ```text
//! {
//!   "image": {
//!     "path": "nixos.qcow2",
//!     "format": "qcow2",            // raw, qcow2, vdi, vpc, vmdk, vhdx
//!     "virtualSize": 1073741824,
//!     "fileSize": 2228224,
//!     "header": [["version", "3"], ["cluster_bits", "16"], ...],  // as the format names them; [] for raw
//!     "notes": ["…"]                // what the reader decided: a raw file padded to whole
//!                                   // sectors, a VHD sized by its CHS geometry, …
//!   },
//!   "partitionTable": null | {
//!     "type": "gpt",                // "gpt" or "dos", as sfdisk --json's "label"
//!     "id": "…",                    // disk GUID (upper case) or MBR signature "0x1234abcd"
//!     "firstLba": 34, "lastLba": 2097118,   // GPT only: the usable sectors
//!     "sectorSize": 512,            // 4096 for a GPT on 4096-byte sectors (found at byte 4096)
//!     "problems": ["…"],
//!     "partitions": [{
//!       "number": 1,
//!       "start": 2048, "size": 522240,      // in sectors, as sfdisk
//!       "type": "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",  // GUID, or the MBR type in hex ("83")
//!       "typeName": "EFI System",
//!       "uuid": "…" | null, "name": "ESP", // GPT only
//!       "attributes": 0, "bootable": false
//!     }]
//!   },
//!   "filesystems": [{
//!     "partition": 1 | null,        // null: the filesystem spans the whole disk
//!     "offset": 1048576,            // bytes from the start of the disk
//!     "type": "ext4",               // ext2, ext3, ext4, vfat (blkid's TYPE) or null when unknown;
//!                                   // btrfs, xfs, erofs, squashfs: recognised by the superblock
//!                                   // only (type, label, uuid, size; files not read)
//!     "version": "1.0" | "FAT32",
//!     "label": "nixos", "uuid": "…",      // uuid as blkid prints it
//!     "blockSize": 4096, "blocks": 262144, "freeBlocks": 1234,   // clusters on FAT
//!     "inodes": 65536, "freeInodes": 60000,                       // ext only
//!     "clusterSize": 65536,         // ext4 with bigalloc only
//!     "size": 1073741824, "used": 12345678,
//!     "features": ["has_journal", …],     // ext: dumpe2fs's names
//!     "problems": ["…"],
//!     "error": "…"                  // present when the filesystem could not be opened
//!   }],
//!   "ls": {                         // with --ls
//!     "partition": 2 | null, "path": "/etc",
//!     "entries": [{"name", "path", "type", "mode" (octal text), "uid", "gid", "size",
//!                  "mtime", "target", "rdev", "xattrs": {"name": "hex"}, "error"}]
//!   }
//! }
//! ```

pub mod content;
pub mod diff;
pub mod fs;
pub mod other_fs;

pub use mdi_container::read::Format;
use mdi_container::read::Image;
use mdi_ptable::read::{self as ptable, Table};
use mdi_sink::{ReadAt, Window};
use serde_json::{json, Value};
use std::io;
use std::path::Path;
use std::sync::Mutex;

/// An image opened as a random-access virtual disk.
pub struct Disk {
    img: Mutex<Box<dyn Image>>,
    size: u64,
    /// Its format.
    pub format: Format,
    /// The header fields the format's reader parsed.
    pub header: Vec<(String, String)>,
    /// Bytes of the image file.
    pub file_size: u64,
    /// The name used in messages.
    pub name: String,
    /// What the format's reader decided that the user should know (padding, rounding).
    pub notes: Vec<String>,
    /// The image file, when it was opened from one (for `diff`'s byte comparison).
    pub path: Option<std::path::PathBuf>,
}

impl Disk {
    /// Opens an image file of any format the readers know.
    pub fn open(path: &Path) -> io::Result<Disk> {
        Disk::open_as(path, None)
    }

    /// Opens an image file as `format` (None: detect it; see `mdi_container::read::open_as`).
    pub fn open_as(path: &Path, format: Option<Format>) -> io::Result<Disk> {
        let img = mdi_container::read::open_as(path, format)?;
        let file_size = std::fs::metadata(path)?.len();
        let mut d = Disk::from_image(&path.display().to_string(), img, file_size);
        d.path = Some(path.to_path_buf());
        Ok(d)
    }

    /// Wraps an opened image.
    pub fn from_image(name: &str, img: Box<dyn Image>, file_size: u64) -> Disk {
        let notes = img.notes();
        let header = img.header().iter().map(|(k, v)| ((*k).to_string(), v.clone())).collect();
        Disk {
            size: img.virtual_size(),
            format: img.format(),
            header,
            img: Mutex::new(img),
            file_size,
            name: name.into(),
            notes,
            path: None,
        }
    }

    /// Whether `[offset, offset + len)` may hold data (false: surely zeros).
    pub fn maybe_data(&self, offset: u64, len: u64) -> io::Result<bool> {
        self.img.lock().unwrap_or_else(|p| p.into_inner()).maybe_data(offset, len)
    }
}

impl ReadAt for Disk {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.img.lock().unwrap_or_else(|p| p.into_inner()).read_at(offset, buf)
    }
}

/// A place that may hold a filesystem: a partition, or the whole disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    /// Partition number; None for the whole disk.
    pub number: Option<u32>,
    /// Byte offset on the disk.
    pub offset: u64,
    /// Bytes.
    pub size: u64,
    /// Its partition table entry.
    pub entry: Option<ptable::Partition>,
}

/// The partition table and the places that may hold filesystems.
#[derive(Clone, Debug)]
pub struct Layout {
    /// The table, if any.
    pub table: Option<Table>,
    /// Partitions (without extended-partition containers and GPT protective entries),
    /// or the whole disk when there is no table.
    pub parts: Vec<Part>,
}

/// Finds the partition table of `disk`.
pub fn layout(disk: &dyn ReadAt) -> io::Result<Layout> {
    let table = ptable::read(disk)?;
    let parts = match &table {
        // A FAT or ext filesystem directly on the disk can carry 0x55AA: trust the magic.
        Some(_) if fs::probe(disk).is_some() => vec![Part { number: None, offset: 0, size: disk.size(), entry: None }],
        Some(t) => t
            .partitions
            .iter()
            .filter(|p| !matches!(p.type_id.as_str(), "5" | "f" | "85" | "ee") && p.sectors > 0)
            .map(|p| Part {
                number: Some(p.number),
                offset: p.start.saturating_mul(t.sector_size),
                size: p.sectors.saturating_mul(t.sector_size),
                entry: Some(p.clone()),
            })
            .collect(),
        None => vec![Part { number: None, offset: 0, size: disk.size(), entry: None }],
    };
    let table = table.filter(|_| parts.first().is_none_or(|p| p.number.is_some()));
    Ok(Layout { table, parts })
}

impl Part {
    /// The partition's bytes.
    pub fn window<'a>(&self, disk: &'a dyn ReadAt) -> Window<'a> {
        Window::new(disk, self.offset, self.size)
    }
}

fn table_json(t: &Table) -> Value {
    let parts: Vec<Value> = t
        .partitions
        .iter()
        .map(|p| {
            json!({
                "number": p.number,
                "start": p.start,
                "size": p.sectors,
                "type": p.type_id,
                "typeName": ptable::type_name(&p.type_id),
                "uuid": p.guid.map(|g| g.to_string().to_uppercase()),
                "name": p.name,
                "attributes": p.attributes,
                "bootable": t.kind == ptable::Kind::Mbr && p.attributes & 0x80 != 0,
            })
        })
        .collect();
    let mut v = json!({
        "type": t.kind.name(),
        "id": t.id(),
        "sectorSize": t.sector_size,
        "partitions": parts,
        "problems": t.problems,
    });
    if let Some(h) = &t.gpt {
        v["firstLba"] = json!(h.first_usable);
        v["lastLba"] = json!(h.last_usable);
    }
    v
}

fn fs_json(part: &Part, disk: &dyn ReadAt) -> Value {
    let w = part.window(disk);
    let mut v = json!({ "partition": part.number, "offset": part.offset, "type": null });
    let info = match fs::open(&w) {
        Ok(None) => other_fs::identify(&w),
        Ok(Some(f)) => Some(f.info()),
        Err(e) => {
            v["type"] = json!(fs::probe(&w));
            v["error"] = json!(e);
            None
        }
    };
    match info {
        None => {}
        Some(i) => {
            v = json!({
                "partition": part.number,
                "offset": part.offset,
                "type": i.kind,
                "version": i.version,
                "label": i.label,
                "uuid": i.uuid,
                "blockSize": i.block_size,
                "blocks": i.blocks,
                "freeBlocks": i.free_blocks,
                "size": i.size,
                "used": i.used,
                "features": i.features,
                "problems": i.problems,
            });
            if let Some(c) = i.cluster_size {
                v["clusterSize"] = json!(c);
            }
            if let (Some(n), Some(f)) = (i.inodes, i.free_inodes) {
                v["inodes"] = json!(n);
                v["freeInodes"] = json!(f);
            }
        }
    }
    v
}

/// The `inspect --json` document (without "ls"), see the crate documentation.
pub fn inspect(disk: &Disk) -> io::Result<Value> {
    let l = layout(disk)?;
    let filesystems: Vec<Value> = l.parts.iter().map(|p| fs_json(p, disk)).collect();
    Ok(json!({
        "image": {
            "path": disk.name,
            "format": disk.format.name(),
            "virtualSize": disk.size(),
            "fileSize": disk.file_size,
            "header": disk.header,
            "notes": disk.notes,
        },
        "partitionTable": l.table.as_ref().map(table_json),
        "filesystems": filesystems,
    }))
}

/// Splits `[PART:]PATH` and finds the filesystem: PART is a partition number, a GPT
/// partition name or a filesystem label; without it, the only filesystem, else the last
/// ext filesystem (the root of every layout), else the first filesystem.
pub fn select(disk: &dyn ReadAt, spec: &str) -> Result<(Part, Vec<u8>), String> {
    let l = layout(disk).map_err(|e| e.to_string())?;
    let (which, path) = match spec.split_once(':') {
        Some((w, p)) if !w.contains('/') => (Some(w), p),
        _ => (None, spec),
    };
    let path = if path.starts_with('/') { path.to_string() } else { format!("/{path}") };
    let with_fs: Vec<(&Part, Option<fs::Info>)> =
        l.parts.iter().map(|p| (p, fs::open(&p.window(disk)).ok().flatten().map(|f| f.info()))).collect();
    let found = match which {
        Some(w) => with_fs.iter().find(|(p, i)| {
            p.number.is_some_and(|n| n.to_string() == w)
                || p.entry.as_ref().is_some_and(|e| !e.name.is_empty() && e.name.eq_ignore_ascii_case(w))
                || i.as_ref().is_some_and(|i| !i.label.is_empty() && i.label.eq_ignore_ascii_case(w))
        }),
        None => {
            let fss: Vec<&(&Part, Option<fs::Info>)> = with_fs.iter().filter(|(_, i)| i.is_some()).collect();
            fss.iter()
                .rev()
                .find(|(_, i)| i.as_ref().is_some_and(|i| i.kind.starts_with("ext")))
                .or(fss.first())
                .copied()
        }
    };
    match found {
        Some((p, Some(_))) => Ok(((*p).clone(), path.into_bytes())),
        Some((p, None)) => Err(match other_fs::identify(&p.window(disk)) {
            Some(i) => format!(
                "{} holds a {} filesystem, whose files this tool does not read (it shows its type, label, UUID and size)",
                p.number.map_or("the disk".to_string(), |n| format!("partition {n}")),
                i.kind
            ),
            None => format!("partition {} holds no filesystem this tool reads", p.number.unwrap_or(0)),
        }),
        None => Err(match which {
            Some(w) => format!("no partition or filesystem called '{w}' (use a partition number, GPT name or label)"),
            None => match l.parts.iter().find_map(|p| other_fs::identify(&p.window(disk))) {
                Some(i) => format!(
                    "the image holds a {} filesystem, whose files this tool does not read (it shows its type, label, UUID and size)",
                    i.kind
                ),
                None => "the image holds no filesystem this tool reads".into(),
            },
        }),
    }
}

/// JSON for entries as `--ls` lists them.
pub fn nodes_json(nodes: &[fs::Node]) -> Value {
    Value::Array(
        nodes
            .iter()
            .map(|n| {
                let name = n.path.rsplit(|&c| c == b'/').next().unwrap_or_default();
                json!({
                    "name": String::from_utf8_lossy(name),
                    "path": String::from_utf8_lossy(&n.path),
                    "type": n.ty.name(),
                    "mode": format!("{:04o}", n.perm),
                    "uid": n.uid,
                    "gid": n.gid,
                    "size": n.size,
                    "mtime": n.mtime.0,
                    "target": n.target.as_ref().map(|t| String::from_utf8_lossy(t).into_owned()),
                    "rdev": n.rdev.map(|(a, b)| format!("{a},{b}")),
                    "xattrs": n.xattrs.iter().map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), json!(hex(v)))).collect::<serde_json::Map<_, _>>(),
                    "error": n.error,
                })
            })
            .collect(),
    )
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Bytes as "1.5 MiB".
pub fn human_bytes(n: u64) -> String {
    const U: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < U.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

/// The human-readable form of an `inspect` document.
pub fn render(v: &Value) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let img = &v["image"];
    let _ = writeln!(
        s,
        "{}: {}, virtual size {} ({} bytes), file {}",
        img["path"].as_str().unwrap_or(""),
        img["format"].as_str().unwrap_or(""),
        human_bytes(img["virtualSize"].as_u64().unwrap_or(0)),
        img["virtualSize"],
        human_bytes(img["fileSize"].as_u64().unwrap_or(0))
    );
    if let Some(h) = img["header"].as_array().filter(|h| !h.is_empty()) {
        let fields: Vec<String> =
            h.iter().map(|f| format!("{}={}", f[0].as_str().unwrap_or(""), f[1].as_str().unwrap_or(""))).collect();
        let _ = writeln!(s, "  header: {}", fields.join(" "));
    }
    for n in img["notes"].as_array().into_iter().flatten() {
        let _ = writeln!(s, "  note: {}", n.as_str().unwrap_or(""));
    }
    let fss = v["filesystems"].as_array().cloned().unwrap_or_default();
    let fs_line = |f: &Value| -> String {
        if let Some(e) = f["error"].as_str() {
            return format!("{}: cannot read: {e}", f["type"].as_str().unwrap_or("filesystem"));
        }
        if f["type"].is_null() {
            return "no filesystem recognised".into();
        }
        let mut l = format!(
            "{} {} '{}' {}, {} of {} used",
            f["type"].as_str().unwrap_or(""),
            f["version"].as_str().unwrap_or(""),
            f["label"].as_str().unwrap_or(""),
            f["uuid"].as_str().unwrap_or(""),
            human_bytes(f["used"].as_u64().unwrap_or(0)),
            human_bytes(f["size"].as_u64().unwrap_or(0))
        );
        if let Some(c) = f["clusterSize"].as_u64() {
            let _ = write!(l, "; {} clusters", human_bytes(c));
        }
        if let Some(feat) = f["features"].as_array().filter(|a| !a.is_empty()) {
            let names: Vec<&str> = feat.iter().filter_map(Value::as_str).collect();
            let _ = write!(l, "; features: {}", names.join(" "));
        }
        for p in f["problems"].as_array().into_iter().flatten() {
            let _ = write!(l, "\n      problem: {}", p.as_str().unwrap_or(""));
        }
        l
    };
    match v["partitionTable"].as_object() {
        None => {
            let _ = writeln!(s, "no partition table");
            for f in &fss {
                let _ = writeln!(s, "  {}", fs_line(f));
            }
        }
        Some(t) => {
            let kind = t["type"].as_str().unwrap_or("");
            let _ = write!(
                s,
                "{} partition table, id {}",
                if kind == "gpt" { "GPT" } else { "MBR" },
                t["id"].as_str().unwrap_or("")
            );
            if let (Some(a), Some(b)) =
                (t.get("firstLba").and_then(Value::as_u64), t.get("lastLba").and_then(Value::as_u64))
            {
                let _ = write!(s, ", usable sectors {a}-{b}");
            }
            if let Some(ss) = t.get("sectorSize").and_then(Value::as_u64).filter(|&ss| ss != 512) {
                let _ = write!(s, ", {ss}-byte sectors");
            }
            let _ = writeln!(s);
            for p in t["problems"].as_array().into_iter().flatten() {
                let _ = writeln!(s, "  problem: {}", p.as_str().unwrap_or(""));
            }
            let _ = writeln!(s, "  {:>2} {:>12} {:>12} {:>10}  type", "#", "start", "sectors", "size");
            for p in t["partitions"].as_array().into_iter().flatten() {
                let size = p["size"].as_u64().unwrap_or(0).saturating_mul(t["sectorSize"].as_u64().unwrap_or(512));
                let mut extra = String::new();
                if let Some(n) = p["name"].as_str().filter(|n| !n.is_empty()) {
                    let _ = write!(extra, " '{n}'");
                }
                if let Some(u) = p["uuid"].as_str() {
                    let _ = write!(extra, " {u}");
                }
                if p["bootable"].as_bool() == Some(true) {
                    extra.push_str(" bootable");
                }
                let _ = writeln!(
                    s,
                    "  {:>2} {:>12} {:>12} {:>10}  {} ({}){extra}",
                    p["number"].as_u64().unwrap_or(0),
                    p["start"].as_u64().unwrap_or(0),
                    p["size"].as_u64().unwrap_or(0),
                    human_bytes(size),
                    p["typeName"].as_str().unwrap_or(""),
                    p["type"].as_str().unwrap_or("")
                );
                if let Some(f) = fss.iter().find(|f| f["partition"] == p["number"]) {
                    let _ = writeln!(s, "       {}", fs_line(f));
                }
            }
        }
    }
    s
}

/// `ls -l`-style lines for entries.
pub fn render_nodes(nodes: &[fs::Node]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    for n in nodes {
        let mut mode = String::new();
        mode.push(n.ty.letter());
        for (i, c) in "rwxrwxrwx".chars().enumerate() {
            let bit = 0o400 >> i;
            mode.push(if n.perm & bit != 0 { c } else { '-' });
        }
        let size = match n.rdev {
            Some((a, b)) => format!("{a}, {b}"),
            None => n.size.to_string(),
        };
        let name = String::from_utf8_lossy(n.path.rsplit(|&c| c == b'/').next().unwrap_or_default()).into_owned();
        let _ = write!(s, "{mode} {:>5} {:>5} {:>10} {:>11} {name}", n.uid, n.gid, size, n.mtime.0);
        if let Some(t) = &n.target {
            let _ = write!(s, " -> {}", String::from_utf8_lossy(t));
        }
        if let Some(e) = &n.error {
            let _ = write!(s, "  [{e}]");
        }
        s.push('\n');
    }
    s
}
