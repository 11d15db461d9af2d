//! xfs through `mkfs.xfs -p PROTOFILE` (xfsprogs 6.1 has no populate-from-folder option)
//! and `xfs_db -x` for what a prototype file cannot say.
//!
//! The prototype file (mkfs.xfs(8), "-p protofile") names every entry with its type, mode,
//! owner and content: whitespace-separated tokens, a folder's entries ending with `$`. It
//! has no times, no sticky bit, no sockets, no hard links and no extended attributes. So:
//! - every inode's times are set with xfs_db afterwards: mtime from the tree, the others to
//!   SOURCE_DATE_EPOCH (mkfs.xfs stamps the build time, the only thing that made two builds
//!   differ);
//! - sticky bits are written into the inode's mode with xfs_db;
//! - sockets are refused (an inode's type could be changed with xfs_db, but not the type
//!   its folder entry records, which xfs_repair then reports);
//! - each extra name of a hard-linked file becomes a copy;
//! - extended attributes are refused (xfs_db 6.1 cannot write attribute values).
//!
//! mkfs.xfs 6.1 writes a file's data as if its first extent held all of it; when the
//! allocator returns a shorter extent, the rest lands on whatever follows (seen here: a
//! 1 GiB file in a 2 GiB filesystem overwrote the next AG headers). Every file's block
//! count is therefore checked with xfs_db, and a short one makes a second attempt with
//! two allocation groups large enough to hold all data, or an error.

use super::{run, too_small, Options, Size, Stats, MIB};
use anyhow::{anyhow, bail, Context, Result};
use mdi_tree::{FileData, Kind, Timestamp, Tree, ROOT};
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

/// Longest symlink target xfs holds (xfs_format.h, XFS_SYMLINK_MAXLEN); mkfs.xfs 6.1
/// writes a longer one without complaint, and the kernel then finds the inode corrupt.
const XFS_SYMLINK_MAXLEN: usize = 1024;

/// Inode size for the tree. mkfs.xfs 6.1 writes a symlink target that does not fit in its
/// inode into a block without the v5 block header, which the kernel rejects ("Structure
/// needs cleaning"); so inodes are made big enough to hold every target inside. An inode
/// holds (size - 176) bytes after its v3 core (xfs_format.h, struct xfs_dinode).
fn inode_size(tree: &Tree) -> u64 {
    let mut longest = 0;
    tree.walk(|id| {
        if let Kind::Symlink { target } = &tree.get(id).kind {
            longest = longest.max(target.len() as u64);
        }
    });
    [512, 1024, 2048].into_iter().find(|s| longest <= s - 176).unwrap_or(2048)
}

/// mkfs.xfs refuses smaller filesystems ("Filesystem must be larger than 300MB").
const XFS_MIN: u64 = 300 * MIB;

/// A token of the prototype file (and of an xfs_db command line): no whitespace, and not
/// starting a comment (`:`) or ending a folder (`$`).
fn token_ok(b: &[u8]) -> bool {
    !b.is_empty() && !b.iter().any(|c| c.is_ascii_whitespace()) && b[0] != b':' && b != b"$"
}

/// Refuses what a prototype file cannot express.
pub(super) fn check(tree: &Tree) -> Result<()> {
    let mut err = None;
    tree.walk(|id| {
        if err.is_some() {
            return;
        }
        let e = tree.get(id);
        if id != ROOT && !token_ok(&e.name) {
            err = Some(anyhow!(
                "'{}': xfsprogs' prototype files (mkfs.xfs -p) cannot hold a name with spaces or other whitespace, or one that starts with ':' or is '$'; rename it or choose another fsType",
                tree.path_of(id)
            ));
        } else if let Kind::Symlink { target } = &e.kind {
            if target.len() > XFS_SYMLINK_MAXLEN {
                err = Some(anyhow!(
                    "symlink '{}': xfs holds targets of at most {XFS_SYMLINK_MAXLEN} bytes and this one has {}; shorten it or choose another fsType",
                    tree.path_of(id),
                    target.len()
                ));
            } else if !token_ok(target) {
                err = Some(anyhow!(
                    "symlink '{}': xfsprogs' prototype files (mkfs.xfs -p) cannot hold a target with whitespace or one that starts with ':'; change it or choose another fsType",
                    tree.path_of(id)
                ));
            }
        } else if e.kind == Kind::Socket {
            err = Some(anyhow!(
                "'{}' is a socket, which xfsprogs' prototype files (mkfs.xfs -p) cannot create; remove it or choose another fsType",
                tree.path_of(id)
            ));
        }
        if err.is_none() && !e.meta.xattrs.is_empty() {
            err = Some(anyhow!(
                "'{}' has extended attributes, which xfsprogs 6.1 cannot put into an xfs filesystem built without root; remove them or choose another fsType (btrfs, erofs)",
                tree.path_of(id)
            ));
        }
    });
    err.map_or(Ok(()), Err)
}

/// The mode token: type, setuid, setgid, three octal digits.
fn mode_token(kind: &Kind, perm: u16) -> String {
    let t = match kind {
        Kind::Dir { .. } => 'd',
        Kind::File { .. } => '-',
        Kind::Symlink { .. } => 'l',
        Kind::CharDev { .. } => 'c',
        Kind::BlockDev { .. } => 'b',
        Kind::Fifo | Kind::Socket => 'p',
    };
    let u = if perm & 0o4000 != 0 { 'u' } else { '-' };
    let g = if perm & 0o2000 != 0 { 'g' } else { '-' };
    format!("{t}{u}{g}{:03o}", perm & 0o777)
}

/// The full st_mode of an entry (type bits from linux/stat.h).
fn st_mode(kind: &Kind, perm: u16) -> u32 {
    let t = match kind {
        Kind::Dir { .. } => 0o040000,
        Kind::File { .. } => 0o100000,
        Kind::Symlink { .. } => 0o120000,
        Kind::CharDev { .. } => 0o020000,
        Kind::BlockDev { .. } => 0o060000,
        Kind::Fifo => 0o010000,
        Kind::Socket => 0o140000,
    };
    t | u32::from(perm & 0o7777)
}

/// An inode timestamp as xfs_db writes it on a bigtime filesystem: one 64-bit count of
/// nanoseconds since 1901-12-13T20:45:52Z (xfs_format.h, XFS_BIGTIME_EPOCH_OFFSET = 2^31 s).
fn bigtime(t: Timestamp) -> u64 {
    let secs = (t.secs + (1 << 31)).max(0) as u64;
    secs * 1_000_000_000 + u64::from(t.nsecs)
}

/// What [`prototype`] makes.
struct Prototype {
    /// The prototype file.
    proto: Vec<u8>,
    /// xfs_db commands setting times and modes, printing each data file's block count.
    cmds: Vec<u8>,
    /// Per regular file with data: its path and expected block count.
    checks: Vec<(String, u64)>,
}

/// Writes the prototype file and the data links into `dir`.
fn prototype(tree: &Tree, dir: &Path, time: i64) -> Result<Prototype> {
    let data_dir = dir.join("data");
    std::fs::create_dir(&data_dir).with_context(|| format!("creating '{}'", data_dir.display()))?;
    let mut proto = b"make-disk-image\n0 0\n".to_vec();
    let mut cmds = Vec::new();
    let mut checks = Vec::new();
    let mut data_of: HashMap<(u64, u64), String> = HashMap::new();
    let other = bigtime(Timestamp::from_secs(time));
    let mut n = 0u64;
    // Depth-first with an explicit stack: (folder, its path, next child index).
    let mut stack: Vec<(mdi_tree::EntryId, Vec<u8>, usize)> = vec![(ROOT, Vec::new(), 0)];
    let root = tree.get(ROOT);
    proto.extend_from_slice(
        format!("{} {} {}\n", mode_token(&root.kind, root.meta.perm), root.meta.uid, root.meta.gid).as_bytes(),
    );
    let fix = |path: &[u8], id: mdi_tree::EntryId, parent_sgid: bool, cmds: &mut Vec<u8>| {
        let e = tree.get(id);
        cmds.extend_from_slice(b"path /");
        cmds.extend_from_slice(path);
        cmds.push(b'\n');
        for (field, v) in [
            ("core.atime.sec", other),
            ("core.mtime.sec", bigtime(e.meta.mtime)),
            ("core.ctime.sec", other),
            ("v3.crtime.sec", other),
        ] {
            cmds.extend_from_slice(format!("write {field} {v}\n").as_bytes());
        }
        // A setgid parent makes mkfs.xfs give children its group (and folders its setgid),
        // as the kernel would: the tree's values win.
        if e.meta.perm & 0o1000 != 0 || parent_sgid {
            cmds.extend_from_slice(format!("write core.mode 0{:o}\n", st_mode(&e.kind, e.meta.perm)).as_bytes());
            cmds.extend_from_slice(format!("write core.gid {}\n", e.meta.gid).as_bytes());
        }
    };
    fix(b"", ROOT, false, &mut cmds);
    while let Some((d, dpath, i)) = stack.pop() {
        let kids = tree.children(d);
        if i >= kids.len() {
            proto.extend_from_slice(b"$\n");
            continue;
        }
        stack.push((d, dpath.clone(), i + 1));
        let c = kids[i];
        let e = tree.get(c);
        let mut path = dpath.clone();
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(&e.name);
        proto.extend_from_slice(&e.name);
        proto.extend_from_slice(
            format!(" {} {} {}", mode_token(&e.kind, e.meta.perm), e.meta.uid, e.meta.gid).as_bytes(),
        );
        match &e.kind {
            Kind::File { data, size } => {
                let key = e.link.unwrap_or((u64::MAX, u64::from(c)));
                let name = match data_of.get(&key) {
                    Some(n) => n.clone(),
                    None => {
                        n += 1;
                        let name = format!("data/{n}");
                        let p = dir.join(&name);
                        match data {
                            // mkfs.xfs opens the path it is given, following the link.
                            FileData::Path(src) => {
                                let src = std::path::absolute(src).with_context(|| format!("'{}'", src.display()))?;
                                std::os::unix::fs::symlink(&src, &p)
                            }
                            FileData::Inline(bytes) => std::fs::write(&p, bytes),
                        }
                        .with_context(|| format!("creating '{}'", p.display()))?;
                        data_of.insert(key, name.clone());
                        name
                    }
                };
                proto.extend_from_slice(format!(" {name}").as_bytes());
                if *size > 0 {
                    checks.push((String::from_utf8_lossy(&path).into_owned(), size.div_ceil(4096)));
                }
            }
            Kind::Symlink { target } => {
                proto.push(b' ');
                proto.extend_from_slice(target);
            }
            Kind::CharDev { major, minor } | Kind::BlockDev { major, minor } => {
                proto.extend_from_slice(format!(" {major} {minor}").as_bytes());
            }
            _ => {}
        }
        proto.push(b'\n');
        fix(&path, c, tree.get(d).meta.perm & 0o2000 != 0, &mut cmds);
        if let Kind::File { size, .. } = e.kind {
            if size > 0 {
                cmds.extend_from_slice(b"print core.nblocks\n");
            }
        }
        if matches!(e.kind, Kind::Dir { .. }) {
            stack.push((c, path, 0));
        }
    }
    Ok(Prototype { proto, cmds, checks })
}

/// Makes the xfs filesystem in `img`; returns its size.
pub(super) fn make(tree: &Tree, dir: &Path, img: &Path, s: &Stats, opts: &Options) -> Result<u64> {
    let Prototype { proto, cmds, checks } = prototype(tree, dir, opts.time)?;
    std::fs::write(dir.join("proto"), &proto)?;
    // Data (each name a copy), 512-byte inodes and folder blocks, the log (64 MiB from
    // 1 GiB up, in xfsprogs ≥ 5.15) and AG headers.
    let isize = inode_size(tree);
    let per_entry = isize + 1536;
    let estimate = (s.name_bytes + s.name_bytes / 32 + s.entries * per_entry + 96 * MIB).max(XFS_MIN);
    // All data fits in one AG of a two-AG filesystem of this size.
    let two_ag = 2 * (s.name_bytes + s.entries * per_entry + 64 * MIB) + 96 * MIB;
    let (mut size, fixed) = match opts.size {
        Size::Auto { extra, align } => ((estimate + extra).next_multiple_of(align), false),
        Size::Fixed(b) => {
            if b < XFS_MIN {
                return Err(too_small("xfs", XFS_MIN, b, opts));
            }
            (b, true)
        }
    };
    let mut two_ags = false;
    for attempt in 0..6 {
        super::cancelled(opts)?;
        let _ = std::fs::remove_file(img);
        let f = std::fs::File::create(img).with_context(|| format!("creating '{}'", img.display()))?;
        f.set_len(size)?;
        drop(f);
        let mut c = Command::new("mkfs.xfs");
        c.args(["-q", "-f", "-K"]).arg("-m").arg(format!("uuid={},crc=1,bigtime=1", opts.uuid));
        if !opts.label.is_empty() {
            c.arg("-L").arg(opts.label);
        }
        c.arg("-i").arg(format!("size={isize}"));
        if two_ags {
            c.args(["-d", "agcount=2"]);
        }
        c.arg("-p").arg("proto").arg(img).current_dir(dir);
        if let Err(e) = run(&mut c, "mkfs.xfs") {
            if !super::out_of_space(&e) {
                return Err(e);
            }
            if fixed || attempt >= 4 {
                return Err(too_small("xfs", size + size / 2, size, opts).context(e));
            }
            size = (size + size / 2).next_multiple_of(MIB);
            continue;
        }
        // The realtime bitmap and summary inodes are not in the tree but carry the build
        // time too.
        let mut c = Command::new("xfs_db");
        c.args(["-r", "-c", "sb 0", "-c", "print rbmino rsumino"]).arg(img);
        let sb = run(&mut c, "xfs_db (reading the superblock)")?;
        let mut fix = cmds.clone();
        for l in String::from_utf8_lossy(&sb.stdout).lines() {
            if let Some(ino) = l.split_once(" = ").and_then(|(_, v)| v.trim().parse::<u64>().ok()) {
                fix.extend_from_slice(format!("inode {ino}\n").as_bytes());
                for field in ["core.atime.sec", "core.mtime.sec", "core.ctime.sec", "v3.crtime.sec"] {
                    fix.extend_from_slice(
                        format!("write {field} {}\n", bigtime(Timestamp::from_secs(opts.time))).as_bytes(),
                    );
                }
            }
        }
        std::fs::write(dir.join("fix"), &fix)?;
        let mut c = Command::new("xfs_db");
        c.arg("-x").arg("-c").arg("source fix").arg(img).current_dir(dir);
        let out = run(&mut c, "xfs_db (setting times and modes)")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let got: Vec<u64> = text
            .lines()
            .filter_map(|l| l.strip_prefix("core.nblocks = "))
            .filter_map(|v| v.trim().parse().ok())
            .collect();
        let errors = String::from_utf8_lossy(&out.stderr);
        if got.len() != checks.len() || !errors.trim().is_empty() {
            bail!(
                "xfs_db did not find every file it set times on ({} of {}): {}",
                got.len(),
                checks.len(),
                errors.lines().next().unwrap_or("")
            );
        }
        let short = checks.iter().zip(&got).find(|((_, want), got)| *got < want);
        let Some(((path, want), got)) = short else {
            return Ok(size);
        };
        if two_ags {
            return Err(anyhow!(
                "mkfs.xfs could not store '/{path}' in one piece ({got} of {want} blocks), which xfsprogs 6.1 needs; set a larger diskSize or choose another fsType"
            ));
        }
        two_ags = true;
        if !fixed {
            size = size.max(two_ag.next_multiple_of(MIB));
        }
    }
    Err(anyhow!("mkfs.xfs kept running out of space; set a fixed diskSize"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prototype_tokens() {
        assert_eq!(mode_token(&Kind::Dir { children: Vec::new() }, 0o2755), "d-g755");
        assert_eq!(mode_token(&Kind::Fifo, 0o4644), "pu-644");
        assert!(token_ok(b"a\"b'c#d\\e:f"));
        for bad in [&b"a b"[..], b"a\tb", b":x", b"$", b""] {
            assert!(!token_ok(bad), "{bad:?}");
        }
    }

    #[test]
    fn bigtime_counts_nanoseconds_from_1901() {
        // 1970-01-01T00:00:00Z is 2^31 s after XFS_BIGTIME_EPOCH_OFFSET's epoch.
        assert_eq!(bigtime(Timestamp::from_secs(0)), 2_147_483_648_000_000_000);
        assert_eq!(bigtime(Timestamp { secs: 1_600_000_000, nsecs: 123 }), 3_747_483_648_000_000_123);
        assert_eq!(bigtime(Timestamp::from_secs(i64::MIN)), 0);
    }
}
