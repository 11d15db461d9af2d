//! Materializing a [`Tree`] into a host folder, for filesystems made by their own mkfs
//! tools from a folder (docs/design.md §4.4).
//!
//! What an unprivileged process can do itself is done here: folders, file contents (with
//! every all-zero 4 KiB block left as a hole, so the result does not depend on whether a
//! source happened to be sparse), symlinks, hard links, FIFOs, sockets and times. What
//! needs root (owners, device nodes, `security.*`/`trusted.*` attributes) and the final
//! permission bits (a mode such as 0000 or 0555 would lock the staging process out of its
//! own folder) are written into a shell script that runs under `fakeroot` right before the
//! mkfs tool, in the same fakeroot session: fakeroot records them and the tool reads them
//! back through `stat` and `getxattr`.

use crate::{EntryId, FileData, Kind, Timestamp, Tree, TreeError, ROOT};
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Options of [`stage`].
#[derive(Clone, Copy, Debug, Default)]
pub struct StageOptions<'a> {
    /// Access time of every entry (docs/design.md §4.2: every time but mtime is SOURCE_DATE_EPOCH).
    pub atime: Timestamp,
    /// Set by a Ctrl-C handler: staging stops with [`TreeError::Cancelled`].
    pub cancel: Option<&'a AtomicBool>,
    /// Source bytes read so far (progress display).
    pub progress: Option<&'a AtomicU64>,
}

/// A staged tree.
#[derive(Debug)]
pub struct Staged {
    /// The folder that holds the tree (the tree's root directory itself).
    pub root: PathBuf,
    /// Shell script to run, with `root` as working directory and under `fakeroot`, as
    /// `sh SCRIPT PROGRAM ARGS...`: it applies owners, modes, device nodes and extended
    /// attributes, then `exec`s PROGRAM.
    pub script: PathBuf,
    /// The script calls `setfattr` (the tree has extended attributes).
    pub uses_setfattr: bool,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TreeError + '_ {
    move |source| TreeError::Io { path: path.to_path_buf(), source }
}

/// Path of every reachable entry relative to the root (`.` for the root), in walk order.
pub fn relative_paths(tree: &Tree) -> Vec<(EntryId, Vec<u8>)> {
    let mut rel: HashMap<EntryId, Vec<u8>> = HashMap::new();
    let mut out = Vec::new();
    tree.walk(|id| {
        let p = if id == ROOT {
            b".".to_vec()
        } else {
            let e = tree.get(id);
            let parent = &rel[&e.parent];
            let mut p = if e.parent == ROOT { Vec::new() } else { [parent.as_slice(), b"/"].concat() };
            p.extend_from_slice(&e.name);
            p
        };
        if matches!(tree.get(id).kind, Kind::Dir { .. }) {
            rel.insert(id, p.clone());
        }
        out.push((id, p));
    });
    out
}

/// A shell word that stands for exactly these bytes.
fn sh_quote(b: &[u8]) -> Vec<u8> {
    let mut q = vec![b'\''];
    for &c in b {
        if c == b'\'' {
            q.extend_from_slice(b"'\\''");
        } else {
            q.push(c);
        }
    }
    q.push(b'\'');
    q
}

/// `touch -d` argument for a timestamp (`@-2.5` means -2.5 s, so negative times with
/// nanoseconds borrow a second).
fn touch_time(t: Timestamp) -> String {
    if t.secs < 0 && t.nsecs > 0 {
        format!("@-{}.{:09}", -(t.secs + 1), 1_000_000_000 - t.nsecs)
    } else {
        format!("@{}.{:09}", t.secs, t.nsecs)
    }
}

/// setfattr's escaping of names and paths in its dump format (attr's `quote`): bytes
/// outside printable ASCII, `\` and `=` as three octal digits.
fn attr_quote(b: &[u8], out: &mut Vec<u8>) {
    for &c in b {
        if c <= b' ' || c >= 0x7f || c == b'\\' || c == b'=' {
            out.extend_from_slice(format!("\\{c:03o}").as_bytes());
        } else {
            out.push(c);
        }
    }
}

/// Copies `size` bytes of a source into the (empty) file `dst`, leaving all-zero 4 KiB
/// blocks as holes.
fn copy_file(data: &FileData, size: u64, dst: &Path, opts: &StageOptions) -> Result<(), TreeError> {
    let out = fs::OpenOptions::new().write(true).open(dst).map_err(io(dst))?;
    const BLOCK: usize = 4096;
    let write_nonzero = |buf: &[u8], at: u64| -> Result<(), TreeError> {
        let mut i = 0;
        while i < buf.len() {
            let end = (i + BLOCK).min(buf.len());
            if buf[i..end].iter().all(|&b| b == 0) {
                i = end;
                continue;
            }
            let start = i;
            while i < buf.len() && buf[i..(i + BLOCK).min(buf.len())].iter().any(|&b| b != 0) {
                i = (i + BLOCK).min(buf.len());
            }
            out.write_all_at(&buf[start..i], at + start as u64).map_err(io(dst))?;
        }
        Ok(())
    };
    match data {
        FileData::Inline(bytes) => write_nonzero(bytes, 0)?,
        FileData::Path(src) => {
            let f = fs::File::open(src).map_err(io(src))?;
            let mut buf = vec![0u8; 1 << 20];
            let mut pos = 0u64;
            while pos < size {
                if opts.cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                    return Err(TreeError::Cancelled);
                }
                // Skip the source's holes without reading them.
                let data = match rustix::fs::seek(&f, rustix::fs::SeekFrom::Data(pos)) {
                    Ok(d) => d.min(size),
                    Err(rustix::io::Errno::NXIO) => size,
                    Err(_) => pos,
                };
                pos = data;
                if pos >= size {
                    break;
                }
                let n = (buf.len() as u64).min(size - pos) as usize;
                f.read_exact_at(&mut buf[..n], pos).map_err(|e| {
                    if e.kind() == std::io::ErrorKind::UnexpectedEof {
                        TreeError::SourceChanged(src.clone())
                    } else {
                        TreeError::Io { path: src.clone(), source: e }
                    }
                })?;
                if let Some(p) = opts.progress {
                    p.fetch_add(n as u64, Ordering::Relaxed);
                }
                write_nonzero(&buf[..n], pos)?;
                pos += n as u64;
            }
        }
    }
    out.set_len(size).map_err(io(dst))?;
    Ok(())
}

/// Writes the tree into `dir` (an existing empty folder): the tree goes to `dir/root`,
/// the script and its lists to `dir/meta`.
pub fn stage(tree: &Tree, dir: &Path, opts: &StageOptions) -> Result<Staged, TreeError> {
    let root = dir.join("root");
    let meta = dir.join("meta");
    for d in [&root, &meta] {
        fs::DirBuilder::new().mode(0o700).create(d).map_err(io(d))?;
    }
    let abs = |rel: &[u8]| root.join(OsStr::from_bytes(rel));
    let paths = relative_paths(tree);

    // Everything in walk order (parents before children), hard-linked inodes at their
    // first name; their other names after.
    let mut first_of: HashMap<(u64, u64), usize> = HashMap::new();
    let mut files: Vec<(&FileData, u64, PathBuf)> = Vec::new();
    let mut later_links: Vec<(usize, usize)> = Vec::new();
    let mut devices: Vec<usize> = Vec::new();
    for (i, (id, rel)) in paths.iter().enumerate() {
        let e = tree.get(*id);
        if let Some(key) = e.link {
            if let Some(&first) = first_of.get(&key) {
                later_links.push((first, i));
                continue;
            }
            first_of.insert(key, i);
        }
        let p = abs(rel);
        match &e.kind {
            Kind::Dir { .. } if *id == ROOT => {}
            Kind::Dir { .. } => fs::DirBuilder::new().mode(0o700).create(&p).map_err(io(&p))?,
            // Created here, in walk order, and filled in parallel below: on a fresh
            // filesystem the inode numbers and directory order then follow the tree.
            Kind::File { data, size } => {
                fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&p).map_err(io(&p))?;
                files.push((data, *size, p));
            }
            Kind::Symlink { target } => std::os::unix::fs::symlink(OsStr::from_bytes(target), &p).map_err(io(&p))?,
            Kind::Fifo | Kind::Socket => {
                let ft = if e.kind == Kind::Fifo { rustix::fs::FileType::Fifo } else { rustix::fs::FileType::Socket };
                rustix::fs::mknodat(rustix::fs::CWD, &p, ft, rustix::fs::Mode::from_raw_mode(0o600), 0)
                    .map_err(|e| TreeError::Io { path: p.clone(), source: e.into() })?;
            }
            Kind::CharDev { .. } | Kind::BlockDev { .. } => devices.push(i),
        }
    }
    files.par_iter().try_for_each(|(data, size, p)| copy_file(data, *size, p, opts))?;
    let mut device_links = Vec::new();
    for &(first, i) in &later_links {
        if devices.contains(&first) {
            device_links.push((first, i));
        } else {
            let (a, b) = (abs(&paths[first].1), abs(&paths[i].1));
            fs::hard_link(&a, &b).map_err(io(&b))?;
        }
    }

    // Times of everything that exists now (setting a child's times leaves its folder's
    // alone); device nodes and their folders get theirs in the script, after mknod. Modes
    // that leave this process its access (a folder it can enter and write, a file it can
    // read) are set for real; the others, only under fakeroot.
    let special: HashSet<usize> = devices.iter().copied().chain(device_links.iter().map(|&(_, l)| l)).collect();
    let mut faked_mode = vec![false; paths.len()];
    for (i, (id, rel)) in paths.iter().enumerate() {
        if special.contains(&i) {
            faked_mode[i] = true;
            continue;
        }
        let e = tree.get(*id);
        let p = abs(rel);
        let perm = e.meta.perm & 0o7777;
        let real = match e.kind {
            Kind::Symlink { .. } => false,
            Kind::Dir { .. } => perm & 0o700 == 0o700,
            _ => perm & 0o400 != 0,
        };
        if real {
            rustix::fs::chmodat(
                rustix::fs::CWD,
                &p,
                rustix::fs::Mode::from_raw_mode(perm.into()),
                rustix::fs::AtFlags::empty(),
            )
            .map_err(|e| TreeError::Io { path: p.clone(), source: e.into() })?;
        } else {
            faked_mode[i] = !matches!(e.kind, Kind::Symlink { .. });
        }
        let ts = |t: Timestamp| rustix::fs::Timespec { tv_sec: t.secs, tv_nsec: t.nsecs.into() };
        let times = rustix::fs::Timestamps { last_access: ts(opts.atime), last_modification: ts(e.meta.mtime) };
        rustix::fs::utimensat(rustix::fs::CWD, &p, &times, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| TreeError::Io { path: p.clone(), source: e.into() })?;
    }

    // The script: paths are relative to the root (its working directory); lists of names
    // are NUL-separated files read by xargs, so any name works.
    let mut script: Vec<u8> = b"# Generated by make-disk-image: owners, modes, device nodes and extended attributes,\n\
# applied under fakeroot before the mkfs tool runs.\nset -eu\n"
        .to_vec();
    let mut retouch: Vec<usize> = Vec::new();
    let parent_index = |i: usize| -> usize {
        let parent = tree.get(paths[i].0).parent;
        paths.iter().position(|(id, _)| *id == parent).expect("parent is reachable")
    };
    for &i in &devices {
        let (kind, major, minor) = match tree.get(paths[i].0).kind {
            Kind::CharDev { major, minor } => ('c', major, minor),
            Kind::BlockDev { major, minor } => ('b', major, minor),
            _ => unreachable!("devices only"),
        };
        script.extend_from_slice(b"mknod -m 0600 -- ");
        script.extend(sh_quote(&paths[i].1));
        script.extend_from_slice(format!(" {kind} {major} {minor}\n").as_bytes());
        retouch.extend([i, parent_index(i)]);
    }
    for &(first, i) in &device_links {
        script.extend_from_slice(b"ln -- ");
        script.extend(sh_quote(&paths[first].1));
        script.push(b' ');
        script.extend(sh_quote(&paths[i].1));
        script.push(b'\n');
        retouch.extend([i, parent_index(i)]);
    }
    let mut owners: BTreeMap<(u32, u32), Vec<u8>> = BTreeMap::new();
    let mut modes: BTreeMap<u16, Vec<u8>> = BTreeMap::new();
    let mut xattrs: Vec<u8> = Vec::new();
    for (i, (id, rel)) in paths.iter().enumerate() {
        let e = tree.get(*id);
        // Under fakeroot (without -u), a file it has not seen is owned by 0:0.
        if (e.meta.uid, e.meta.gid) != (0, 0) {
            let o = owners.entry((e.meta.uid, e.meta.gid)).or_default();
            o.extend_from_slice(rel);
            o.push(0);
        }
        if faked_mode[i] {
            let m = modes.entry(e.meta.perm & 0o7777).or_default();
            m.extend_from_slice(rel);
            m.push(0);
        }
        if !e.meta.xattrs.is_empty() {
            xattrs.extend_from_slice(b"# file: ");
            attr_quote(rel, &mut xattrs);
            xattrs.push(b'\n');
            for (name, value) in &e.meta.xattrs {
                attr_quote(name, &mut xattrs);
                // setfattr wants at least one hex digit after 0x; "" is the empty value.
                let v = if value.is_empty() { "\"\"".to_string() } else { format!("0x{}", hex(value)) };
                xattrs.extend_from_slice(format!("={v}\n").as_bytes());
            }
            xattrs.push(b'\n');
        }
    }
    let write_list = |name: &str, bytes: &[u8]| -> Result<(), TreeError> {
        let p = meta.join(name);
        fs::write(&p, bytes).map_err(io(&p))
    };
    for (n, ((uid, gid), list)) in owners.iter().enumerate() {
        write_list(&format!("owner-{n}"), list)?;
        script.extend_from_slice(format!("xargs -0r chown -h {uid}:{gid} -- < ../meta/owner-{n}\n").as_bytes());
    }
    for (n, (mode, list)) in modes.iter().enumerate() {
        write_list(&format!("mode-{n}"), list)?;
        // Five digits: GNU chmod keeps a folder's setgid bit on a shorter numeric mode.
        script.extend_from_slice(format!("xargs -0r chmod 0{mode:04o} -- < ../meta/mode-{n}\n").as_bytes());
    }
    let uses_setfattr = !xattrs.is_empty();
    if uses_setfattr {
        write_list("xattrs", &xattrs)?;
        script.extend_from_slice(b"setfattr -h --restore=../meta/xattrs\n");
    }
    retouch.sort_unstable();
    retouch.dedup();
    for i in retouch {
        let (id, rel) = &paths[i];
        script.extend_from_slice(format!("touch -h -d {} -- ", touch_time(tree.get(*id).meta.mtime)).as_bytes());
        script.extend(sh_quote(rel));
        script.push(b'\n');
    }
    script.extend_from_slice(b"exec \"$@\"\n");
    let script_path = meta.join("apply.sh");
    let mut f = fs::File::create(&script_path).map_err(io(&script_path))?;
    f.write_all(&script).map_err(io(&script_path))?;
    Ok(Staged { root, script: script_path, uses_setfattr })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(sh_quote(b"a'b"), b"'a'\\''b'".to_vec());
        let mut v = Vec::new();
        attr_quote(b"a b=\\\n\xff", &mut v);
        assert_eq!(v, b"a\\040b\\075\\134\\012\\377".to_vec());
        assert_eq!(touch_time(Timestamp { secs: -3, nsecs: 250_000_000 }), "@-2.750000000");
        assert_eq!(touch_time(Timestamp { secs: 5, nsecs: 1 }), "@5.000000001");
    }
}
