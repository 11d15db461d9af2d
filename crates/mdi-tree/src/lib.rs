//! The format-neutral entry tree (docs/design.md §3, step 1 "Collect").
//!
//! Every source of an image (a Nix closure, a plain `rootDir`, `contents` entries,
//! generated files such as the Nix database) is collected into one [`Tree`]. Filesystem
//! writers take a `Tree` and nothing else, so they know nothing about where entries came
//! from. No file data is held here: regular files refer to their source by path (or carry
//! small generated contents inline).
#![forbid(unsafe_code)]

mod host;
pub mod stage;

pub use host::{open_deep, open_file, scan_host, ScanOptions};
pub use mdi_ident::Timestamp;

use std::path::PathBuf;
use std::sync::Arc;

/// Index of an entry in its [`Tree`]. The root directory is always [`ROOT`].
pub type EntryId = u32;
/// The root directory's id.
pub const ROOT: EntryId = 0;

/// Permission and ownership metadata of an entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits including setuid (0o4000), setgid (0o2000) and sticky (0o1000).
    pub perm: u16,
    /// Numeric owner.
    pub uid: u32,
    /// Numeric group.
    pub gid: u32,
    /// Modification time (already clamped by whoever collected it).
    pub mtime: Timestamp,
    /// Extended attributes, full names (`user.x`, `security.capability`,
    /// `system.posix_acl_access`), values as the kernel's xattr API returns them.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Meta {
    /// Root-owned, given permissions, given time, no xattrs.
    pub fn root(perm: u16, mtime: Timestamp) -> Self {
        Meta { perm, uid: 0, gid: 0, mtime, xattrs: Vec::new() }
    }
}

/// Where a regular file's bytes come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileData {
    /// Read from this host path when the image is written.
    Path(PathBuf),
    /// Generated content held in memory (small files only: configs, the Nix DB, demo files).
    Inline(Arc<[u8]>),
}

/// What an entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A directory; children sorted by name once [`Tree::finish`] ran.
    Dir {
        /// Child entry ids.
        children: Vec<EntryId>,
    },
    /// A regular file.
    File {
        /// Its bytes.
        data: FileData,
        /// Apparent size in bytes.
        size: u64,
    },
    /// A symbolic link and its target bytes.
    Symlink {
        /// Target, not followed.
        target: Vec<u8>,
    },
    /// A character device.
    CharDev {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A block device.
    BlockDev {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A named pipe.
    Fifo,
    /// A Unix socket.
    Socket,
}

/// One entry of the tree.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Parent directory (the root is its own parent).
    pub parent: EntryId,
    /// File name (raw bytes; no `/`, not empty except for the root).
    pub name: Vec<u8>,
    /// Ownership, permissions, time and xattrs.
    pub meta: Meta,
    /// Type and type-specific data.
    pub kind: Kind,
    /// Hard-link identity: entries with the same `Some(key)` are one inode.
    pub link: Option<(u64, u64)>,
}

/// Errors building a tree.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TreeError {
    /// Two sources put something at the same path.
    #[error("'{path}' is provided twice ({what}); remove one of the entries or pick another target")]
    Collision {
        /// The colliding image path.
        path: String,
        /// Which sources collided.
        what: String,
    },
    /// A target path leaves the filesystem root or is not usable.
    #[error(
        "target '{0}' is not a valid path inside the image (no '..', not empty); use an absolute path such as /etc/foo"
    )]
    BadTarget(String),
    /// A path component exists but is not a directory.
    #[error("'{0}' is not a directory in the image, so nothing can be placed below it")]
    NotADir(String),
    /// Reading a source failed.
    #[error("cannot read '{path}': {source}")]
    Io {
        /// The host path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A source has a type the image cannot hold.
    #[error("'{0}' has a file type that cannot go into an image")]
    UnsupportedType(PathBuf),
    /// A source file became shorter while it was copied.
    #[error("'{0}' changed while it was being copied; build again once it stays put")]
    SourceChanged(PathBuf),
    /// The build was interrupted.
    #[error("interrupted")]
    Cancelled,
}

/// The tree. Entry 0 is the root directory.
#[derive(Clone, Debug)]
pub struct Tree {
    entries: Vec<Entry>,
}

impl Tree {
    /// A tree holding only its root directory.
    pub fn new(root: Meta) -> Self {
        Tree {
            entries: vec![Entry {
                parent: ROOT,
                name: Vec::new(),
                meta: root,
                kind: Kind::Dir { children: Vec::new() },
                link: None,
            }],
        }
    }

    /// Number of entries, the root included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Always false: a tree has its root.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The entry with id `id`.
    pub fn get(&self, id: EntryId) -> &Entry {
        &self.entries[id as usize]
    }

    /// Mutable access to an entry (to adjust metadata).
    pub fn get_mut(&mut self, id: EntryId) -> &mut Entry {
        &mut self.entries[id as usize]
    }

    /// Children of a directory (empty for other kinds).
    pub fn children(&self, id: EntryId) -> &[EntryId] {
        match &self.entries[id as usize].kind {
            Kind::Dir { children } => children,
            _ => &[],
        }
    }

    /// All entries in id order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The image path of an entry, for messages (`/a/b`; lossy for non-UTF-8 names).
    pub fn path_of(&self, mut id: EntryId) -> String {
        let mut parts = Vec::new();
        while id != ROOT {
            let e = &self.entries[id as usize];
            parts.push(String::from_utf8_lossy(&e.name).into_owned());
            id = e.parent;
        }
        parts.reverse();
        format!("/{}", parts.join("/"))
    }

    /// Looks up a child by name.
    pub fn child(&self, dir: EntryId, name: &[u8]) -> Option<EntryId> {
        self.children(dir).iter().copied().find(|&c| self.entries[c as usize].name == name)
    }

    /// Adds `entry` as child `name` of `dir`. Fails if the name is taken.
    pub fn add(
        &mut self,
        dir: EntryId,
        name: &[u8],
        meta: Meta,
        kind: Kind,
        link: Option<(u64, u64)>,
    ) -> Result<EntryId, TreeError> {
        if self.child(dir, name).is_some() {
            let mut p = self.path_of(dir);
            if !p.ends_with('/') {
                p.push('/');
            }
            p.push_str(&String::from_utf8_lossy(name));
            return Err(TreeError::Collision { path: p, what: "two sources".into() });
        }
        self.push_child(dir, name.to_vec(), meta, kind, link)
    }

    fn push_child(
        &mut self,
        dir: EntryId,
        name: Vec<u8>,
        meta: Meta,
        kind: Kind,
        link: Option<(u64, u64)>,
    ) -> Result<EntryId, TreeError> {
        let id = EntryId::try_from(self.entries.len()).expect("fewer than 2^32 entries");
        self.entries.push(Entry { parent: dir, name, meta, kind, link });
        match &mut self.entries[dir as usize].kind {
            Kind::Dir { children } => children.push(id),
            _ => return Err(TreeError::NotADir(self.path_of(dir))),
        }
        Ok(id)
    }

    /// Resolves an absolute image path (`/etc/nixos`), creating missing directories with
    /// `dir_meta`. Returns the parent directory id and the last component.
    pub fn make_parents(&mut self, target: &[u8], dir_meta: &Meta) -> Result<(EntryId, Vec<u8>), TreeError> {
        let shown = String::from_utf8_lossy(target).into_owned();
        let comps: Vec<&[u8]> = target.split(|&b| b == b'/').filter(|c| !c.is_empty() && *c != b".").collect();
        if comps.is_empty() || comps.iter().any(|c| *c == b"..") {
            return Err(TreeError::BadTarget(shown));
        }
        let mut dir = ROOT;
        for c in &comps[..comps.len() - 1] {
            dir = match self.child(dir, c) {
                Some(id) => match self.entries[id as usize].kind {
                    Kind::Dir { .. } => id,
                    _ => return Err(TreeError::NotADir(self.path_of(id))),
                },
                None => self.push_child(dir, c.to_vec(), dir_meta.clone(), Kind::Dir { children: Vec::new() }, None)?,
            };
        }
        Ok((dir, comps[comps.len() - 1].to_vec()))
    }

    /// Moves every entry of `sub` (a tree from [`scan_host`], say) below `dir` under `name`:
    /// `sub`'s root becomes the new entry. Returns its id.
    pub fn graft(&mut self, dir: EntryId, name: &[u8], sub: Tree) -> Result<EntryId, TreeError> {
        if self.child(dir, name).is_some() {
            let mut p = self.path_of(dir);
            if !p.ends_with('/') {
                p.push('/');
            }
            p.push_str(&String::from_utf8_lossy(name));
            return Err(TreeError::Collision { path: p, what: "two sources".into() });
        }
        let base = EntryId::try_from(self.entries.len()).expect("fewer than 2^32 entries");
        let mut first = true;
        for mut e in sub.entries {
            if first {
                e.parent = dir;
                e.name = name.to_vec();
                first = false;
            } else {
                e.parent += base;
            }
            if let Kind::Dir { children } = &mut e.kind {
                for c in children.iter_mut() {
                    *c += base;
                }
            }
            self.entries.push(e);
        }
        match &mut self.entries[dir as usize].kind {
            Kind::Dir { children } => children.push(base),
            _ => return Err(TreeError::NotADir(self.path_of(dir))),
        }
        Ok(base)
    }

    /// Sorts every directory's children by name bytes, so that everything downstream
    /// (inode numbers, directory order, block allocation) is independent of the order in
    /// which sources were read.
    pub fn finish(&mut self) {
        let names: Vec<Vec<u8>> = self.entries.iter().map(|e| e.name.clone()).collect();
        for e in &mut self.entries {
            if let Kind::Dir { children } = &mut e.kind {
                children.sort_by(|a, b| names[*a as usize].cmp(&names[*b as usize]));
            }
        }
    }

    /// Visits entries depth-first, directories before their children, children in order.
    pub fn walk(&self, mut f: impl FnMut(EntryId)) {
        let mut stack = vec![ROOT];
        while let Some(id) = stack.pop() {
            f(id);
            for &c in self.children(id).iter().rev() {
                stack.push(c);
            }
        }
    }

    /// Empties a directory, keeping the directory itself (its former children become
    /// unreachable and are ignored by every writer, which walks from the root). Used to
    /// leave `/boot` as a mount point once its content went to a boot partition.
    pub fn clear_dir(&mut self, id: EntryId) {
        if let Kind::Dir { children } = &mut self.entries[id as usize].kind {
            children.clear();
        }
    }

    /// Resolves an absolute image path to an entry.
    pub fn lookup(&self, path: &[u8]) -> Option<EntryId> {
        let mut cur = ROOT;
        for c in path.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            cur = self.child(cur, c)?;
        }
        Some(cur)
    }

    /// Applies `f` to the metadata of every entry below (and including) `id`.
    pub fn for_each_below(&mut self, id: EntryId, mut f: impl FnMut(&mut Entry)) {
        let mut stack = vec![id];
        while let Some(i) = stack.pop() {
            stack.extend_from_slice(self.children(i));
            f(&mut self.entries[i as usize]);
        }
    }
}
