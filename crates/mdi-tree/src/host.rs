//! Reading a host directory tree into a [`Tree`] (metadata only; no file data is read).

use crate::{Entry, EntryId, FileData, Kind, Meta, Timestamp, Tree, TreeError, ROOT};
use std::fs;
use std::os::unix::ffi::OsStrExt;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// How host metadata is mapped into the tree.
#[derive(Clone, Debug)]
pub struct ScanOptions {
    /// SOURCE_DATE_EPOCH: later modification times are clamped to it.
    pub clamp: i64,
    /// Keep the source's uid/gid (else everything is 0:0, as in the Nix store).
    pub keep_owner: bool,
    /// Read extended attributes (the Nix store has none; Nix strips them).
    pub keep_xattrs: bool,
    /// Set to stop the scan early (an interrupt); the scan returns
    /// [`TreeError::Cancelled`].
    pub cancel: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

fn io_err(path: &Path, source: std::io::Error) -> TreeError {
    TreeError::Io { path: path.to_path_buf(), source }
}

/// Glibc's encoding of `dev_t` (sys/sysmacros.h), so that device numbers survive as the
/// kernel reported them.
fn dev_major(rdev: u64) -> u32 {
    (((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0x0000_0fff)) as u32
}
fn dev_minor(rdev: u64) -> u32 {
    (((rdev >> 12) & 0xffff_ff00) | (rdev & 0x0000_00ff)) as u32
}

/// Paths at least this long are opened piecewise ([`open_deep`]): the kernel refuses
/// paths of PATH_MAX (4096 bytes, NUL included) or more with ENAMETOOLONG.
const DIRECT_PATH_MAX: usize = 4000;

/// Opens `path` even when it is longer than PATH_MAX, by opening a prefix of it as a
/// directory (O_PATH) and resolving the rest relative to that, as often as needed. Each
/// piece is resolved as an ordinary path would be (symlinks in the middle followed), so
/// the result is the file the whole path names. Deep trees (mkfs.ext4 -d builds them)
/// then build here too.
pub fn open_deep(path: &Path, flags: rustix::fs::OFlags) -> std::io::Result<std::os::fd::OwnedFd> {
    use rustix::fs::{openat, Mode, OFlags, CWD};
    let flags = flags | OFlags::CLOEXEC;
    let mut rest = path.as_os_str().as_bytes();
    let mut base: Option<std::os::fd::OwnedFd> = None;
    loop {
        let at = |p: &[u8], f: OFlags| match &base {
            Some(b) => openat(b, p, f, Mode::empty()),
            None => openat(CWD, p, f, Mode::empty()),
        };
        if rest.len() < DIRECT_PATH_MAX {
            return Ok(at(rest, flags)?);
        }
        // The last '/' that keeps the piece short enough (names are at most 255 bytes, so
        // there is one unless the path is malformed).
        let cut = match rest[..DIRECT_PATH_MAX].iter().rposition(|&b| b == b'/') {
            Some(0) | None => return Err(std::io::Error::from_raw_os_error(36)), // ENAMETOOLONG
            Some(c) => c,
        };
        let dir = at(&rest[..cut], OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC)?;
        base = Some(dir);
        rest = &rest[cut + 1..];
    }
}

/// Opens a source file for reading, however long its path ([`open_deep`]).
pub fn open_file(path: &Path) -> std::io::Result<fs::File> {
    Ok(fs::File::from(open_deep(path, rustix::fs::OFlags::RDONLY)?))
}

/// The metadata of one directory entry, read relative to its directory.
struct Stat {
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    rdev: u64,
    nlink: u64,
    dev: u64,
    ino: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl Stat {
    fn of(st: &rustix::fs::Stat) -> Stat {
        #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
        Stat {
            mode: st.st_mode as u32,
            uid: st.st_uid as u32,
            gid: st.st_gid as u32,
            size: st.st_size as u64,
            rdev: st.st_rdev as u64,
            nlink: st.st_nlink as u64,
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
            mtime: st.st_mtime as i64,
            mtime_nsec: st.st_mtime_nsec as i64,
        }
    }
    fn from_md(md: &fs::Metadata) -> Stat {
        Stat {
            mode: md.mode(),
            uid: md.uid(),
            gid: md.gid(),
            size: md.len(),
            rdev: md.rdev(),
            nlink: md.nlink(),
            dev: md.dev(),
            ino: md.ino(),
            mtime: md.mtime(),
            mtime_nsec: md.mtime_nsec(),
        }
    }
    fn file_type(&self) -> rustix::fs::FileType {
        rustix::fs::FileType::from_raw_mode(self.mode as _)
    }
    fn is_dir(&self) -> bool {
        self.file_type() == rustix::fs::FileType::Directory
    }
}

/// Where the xattr calls find an entry: its own path when short, else the same entry
/// through its directory's descriptor in /proc (the l*xattr calls do not follow the last
/// component, and /proc/self/fd/N stands for the directory whatever its depth).
fn xattr_path(path: &Path, dir: Option<&std::os::fd::OwnedFd>, name: &[u8]) -> PathBuf {
    use std::os::fd::AsRawFd;
    match dir {
        Some(d) if path.as_os_str().len() >= DIRECT_PATH_MAX => {
            let mut p = PathBuf::from(format!("/proc/self/fd/{}", d.as_raw_fd()));
            p.push(std::ffi::OsStr::from_bytes(name));
            p
        }
        _ => path.to_path_buf(),
    }
}

fn meta_of(path: &Path, xpath: &Path, md: &Stat, opts: &ScanOptions) -> Result<Meta, TreeError> {
    let mtime = Timestamp { secs: md.mtime, nsecs: md.mtime_nsec.clamp(0, 999_999_999) as u32 }.clamp_to(opts.clamp);
    let mut xattrs = Vec::new();
    if opts.keep_xattrs {
        // The xattr crate uses the l*xattr calls: a symlink's own attributes, not its target's.
        match xattr::list(xpath) {
            Ok(names) => {
                for name in names {
                    if let Some(value) = xattr::get(xpath, &name).map_err(|e| io_err(path, e))? {
                        xattrs.push((name.as_bytes().to_vec(), value));
                    }
                }
            }
            Err(e) if e.raw_os_error() == Some(libc_enotsup()) => {}
            Err(e) => return Err(io_err(path, e)),
        }
        xattrs.sort();
    }
    let (uid, gid) = if opts.keep_owner { (md.uid, md.gid) } else { (0, 0) };
    Ok(Meta { perm: (md.mode & 0o7777) as u16, uid, gid, mtime, xattrs })
}

const fn libc_enotsup() -> i32 {
    95 // EOPNOTSUPP on Linux
}

/// The entry's kind; `read_link` reads a symlink's target.
fn kind_of(path: &Path, md: &Stat, read_link: impl FnOnce() -> std::io::Result<Vec<u8>>) -> Result<Kind, TreeError> {
    use rustix::fs::FileType;
    Ok(match md.file_type() {
        FileType::Directory => Kind::Dir { children: Vec::new() },
        FileType::RegularFile => Kind::File { data: FileData::Path(path.to_path_buf()), size: md.size },
        FileType::Symlink => Kind::Symlink { target: read_link().map_err(|e| io_err(path, e))? },
        FileType::CharacterDevice => Kind::CharDev { major: dev_major(md.rdev), minor: dev_minor(md.rdev) },
        FileType::BlockDevice => Kind::BlockDev { major: dev_major(md.rdev), minor: dev_minor(md.rdev) },
        FileType::Fifo => Kind::Fifo,
        FileType::Socket => Kind::Socket,
        FileType::Unknown => return Err(TreeError::UnsupportedType(path.to_path_buf())),
    })
}

/// Reads the host path `root` (not following a symlink at `root` itself) into a tree
/// whose root entry is `root`. Hard links are keyed by (device, inode) of the source, so
/// they stay hard links; the keys never reach the image, only the grouping does.
///
/// Folders are read through descriptors (`statat`, `readlinkat` relative to the open
/// folder), so paths longer than PATH_MAX work and each entry costs no path lookup.
pub fn scan_host(root: &Path, opts: &ScanOptions) -> Result<Tree, TreeError> {
    use rustix::fs::{statat, AtFlags, OFlags};
    let md = Stat::from_md(&fs::symlink_metadata(root).map_err(|e| io_err(root, e))?);
    let kind = kind_of(root, &md, || Ok(fs::read_link(root)?.as_os_str().as_bytes().to_vec()))?;
    let link = link_key(&md);
    let meta = meta_of(root, root, &md, opts)?;
    let mut tree = Tree { entries: vec![Entry { parent: ROOT, name: Vec::new(), meta, kind, link }] };
    let mut stack: Vec<(EntryId, PathBuf)> = Vec::new();
    if md.is_dir() {
        stack.push((ROOT, root.to_path_buf()));
    }
    while let Some((dir, path)) = stack.pop() {
        if opts.cancel.as_ref().is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed)) {
            return Err(TreeError::Cancelled);
        }
        let fd = open_deep(&path, OFlags::RDONLY | OFlags::DIRECTORY).map_err(|e| io_err(&path, e))?;
        let rd = rustix::fs::Dir::read_from(&fd).map_err(|e| io_err(&path, e.into()))?;
        for de in rd {
            let de = de.map_err(|e| io_err(&path, e.into()))?;
            let name = de.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let name = name.to_vec();
            let p = path.join(std::ffi::OsStr::from_bytes(&name));
            let md =
                Stat::of(&statat(&fd, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW).map_err(|e| io_err(&p, e.into()))?);
            let kind = kind_of(&p, &md, || Ok(rustix::fs::readlinkat(&fd, name.as_slice(), Vec::new())?.into_bytes()))?;
            let is_dir = md.is_dir();
            let meta = meta_of(&p, &xattr_path(&p, Some(&fd), &name), &md, opts)?;
            let id = tree.push_child(dir, name, meta, kind, link_key(&md))?;
            if is_dir {
                stack.push((id, p));
            }
        }
    }
    tree.finish();
    Ok(tree)
}

fn link_key(md: &Stat) -> Option<(u64, u64)> {
    (!md.is_dir() && md.nlink > 1).then_some((md.dev, md.ino))
}
