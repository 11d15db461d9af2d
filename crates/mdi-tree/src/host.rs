//! Reading a host directory tree into a [`Tree`] (metadata only; no file data is read).

use crate::{Entry, EntryId, FileData, Kind, Meta, Timestamp, Tree, TreeError, ROOT};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
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

fn meta_of(path: &Path, md: &fs::Metadata, opts: &ScanOptions) -> Result<Meta, TreeError> {
    let mtime =
        Timestamp { secs: md.mtime(), nsecs: md.mtime_nsec().clamp(0, 999_999_999) as u32 }.clamp_to(opts.clamp);
    let mut xattrs = Vec::new();
    if opts.keep_xattrs {
        // The xattr crate uses the l*xattr calls: a symlink's own attributes, not its target's.
        match xattr::list(path) {
            Ok(names) => {
                for name in names {
                    if let Some(value) = xattr::get(path, &name).map_err(|e| io_err(path, e))? {
                        xattrs.push((name.as_bytes().to_vec(), value));
                    }
                }
            }
            Err(e) if e.raw_os_error() == Some(libc_enotsup()) => {}
            Err(e) => return Err(io_err(path, e)),
        }
        xattrs.sort();
    }
    let (uid, gid) = if opts.keep_owner { (md.uid(), md.gid()) } else { (0, 0) };
    Ok(Meta { perm: (md.mode() & 0o7777) as u16, uid, gid, mtime, xattrs })
}

const fn libc_enotsup() -> i32 {
    95 // EOPNOTSUPP on Linux
}

fn kind_of(path: &Path, md: &fs::Metadata) -> Result<Kind, TreeError> {
    let ft = md.file_type();
    Ok(if ft.is_dir() {
        Kind::Dir { children: Vec::new() }
    } else if ft.is_file() {
        Kind::File { data: FileData::Path(path.to_path_buf()), size: md.len() }
    } else if ft.is_symlink() {
        let t = fs::read_link(path).map_err(|e| io_err(path, e))?;
        Kind::Symlink { target: t.as_os_str().as_bytes().to_vec() }
    } else if ft.is_char_device() {
        Kind::CharDev { major: dev_major(md.rdev()), minor: dev_minor(md.rdev()) }
    } else if ft.is_block_device() {
        Kind::BlockDev { major: dev_major(md.rdev()), minor: dev_minor(md.rdev()) }
    } else if ft.is_fifo() {
        Kind::Fifo
    } else if ft.is_socket() {
        Kind::Socket
    } else {
        return Err(TreeError::UnsupportedType(path.to_path_buf()));
    })
}

/// Reads the host path `root` (not following a symlink at `root` itself) into a tree
/// whose root entry is `root`. Hard links are keyed by (device, inode) of the source, so
/// they stay hard links; the keys never reach the image, only the grouping does.
pub fn scan_host(root: &Path, opts: &ScanOptions) -> Result<Tree, TreeError> {
    let md = fs::symlink_metadata(root).map_err(|e| io_err(root, e))?;
    let kind = kind_of(root, &md)?;
    let link = link_key(&md);
    let meta = meta_of(root, &md, opts)?;
    let mut tree = Tree { entries: vec![Entry { parent: ROOT, name: Vec::new(), meta, kind, link }] };
    let mut stack: Vec<(EntryId, PathBuf)> = Vec::new();
    if md.is_dir() {
        stack.push((ROOT, root.to_path_buf()));
    }
    while let Some((dir, path)) = stack.pop() {
        let rd = fs::read_dir(&path).map_err(|e| io_err(&path, e))?;
        for de in rd {
            let de = de.map_err(|e| io_err(&path, e))?;
            let p = de.path();
            let md = fs::symlink_metadata(&p).map_err(|e| io_err(&p, e))?;
            let kind = kind_of(&p, &md)?;
            let is_dir = md.is_dir();
            let meta = meta_of(&p, &md, opts)?;
            let id = tree.push_child(dir, de.file_name().as_bytes().to_vec(), meta, kind, link_key(&md))?;
            if is_dir {
                stack.push((id, p));
            }
        }
    }
    tree.finish();
    Ok(tree)
}

fn link_key(md: &fs::Metadata) -> Option<(u64, u64)> {
    (!md.is_dir() && md.nlink() > 1).then(|| (md.dev(), md.ino()))
}
