//! Everything the builder knows about Nix lives here: the closureInfo folder
//! (`store-paths`, `registration`, nixpkgs' format), store paths read from a store root
//! (a Nix "chroot store": path P is at storeRoot + P), and how they enter the image tree.
#![forbid(unsafe_code)]

pub mod bootspec;
pub mod db;

use mdi_tree::{scan_host, Meta, ScanOptions, Timestamp, Tree, TreeError, ROOT};
use rayon::prelude::*;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The store directory every path must be under.
pub const STORE_DIR: &str = "/nix/store";

/// Errors reading Nix inputs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NixError {
    /// A closureInfo file is missing or unreadable.
    #[error("cannot read '{path}': {source}; closureInfo must be a folder made by nixpkgs' closureInfo (store-paths, registration)")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A line of `registration` is not what nixpkgs' closureInfo writes.
    #[error("{file}:{line}: {what}")]
    Registration {
        /// The file.
        file: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What was expected.
        what: String,
    },
    /// A listed store path is not a valid store path name.
    #[error("{file}:{line}: '{path}' is not a store path under /nix/store")]
    BadStorePath {
        /// The file.
        file: PathBuf,
        /// 1-based line.
        line: usize,
        /// The text.
        path: String,
    },
    /// A store path is listed but not present under the store root.
    #[error("store path '{path}' is listed in the closure but '{}' does not exist; set storeRoot to the folder that holds nix/store (a chroot store), or build the closure first", .physical.display())]
    Missing {
        /// The store path.
        path: String,
        /// Where it was looked for.
        physical: PathBuf,
    },
    /// Scanning a store path failed.
    #[error(transparent)]
    Tree(#[from] TreeError),
    /// Writing the Nix database failed.
    #[error("cannot write the Nix database: {0}")]
    Db(String),
    /// A store path the spec names (system, channel, additionalPaths) is not in the closure.
    #[error("{role} '{path}' is not in the closure; build closureInfo with it among the root paths (nixpkgs' closureInfo {{ rootPaths = [ ... ]; }})")]
    NotInClosure {
        /// The spec key naming it.
        role: String,
        /// The store path.
        path: String,
    },
    /// A spec value that must be a store path is not one.
    #[error("{role} '{path}' is not a store path (/nix/store/<32-character hash>-<name>)")]
    NotAStorePath {
        /// The spec key naming it.
        role: String,
        /// The text.
        path: String,
    },
}

/// One path's registration record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    /// The store path.
    pub path: String,
    /// NAR hash as written (`sha256:<base32>` or base16 or SRI).
    pub nar_hash: String,
    /// NAR size in bytes.
    pub nar_size: u64,
    /// Deriver path, if any.
    pub deriver: Option<String>,
    /// References (sorted, self included when self-referencing).
    pub references: Vec<String>,
}

/// A parsed closureInfo folder.
#[derive(Clone, Debug)]
pub struct ClosureInfo {
    /// Every store path of the closure, in file order (sorted by Nix).
    pub store_paths: Vec<String>,
    /// Registration records, in file order.
    pub registrations: Vec<Registration>,
    /// The `registration` file as read: what `/nix-path-registration` holds.
    pub registration_bytes: Vec<u8>,
}

fn read(path: &Path) -> Result<String, NixError> {
    std::fs::read_to_string(path).map_err(|source| NixError::Read { path: path.to_path_buf(), source })
}

/// Whether `p` is a store path name: `/nix/store/<32-character hash>-<name>`.
pub fn is_store_path(p: &str) -> bool {
    let name = p.strip_prefix("/nix/store/").unwrap_or("");
    name.len() > 33
        && name.as_bytes()[32] == b'-'
        && !name.contains('/')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-._?=".contains(&b))
}

fn check_store_path(file: &Path, line: usize, p: &str) -> Result<(), NixError> {
    if is_store_path(p) {
        Ok(())
    } else {
        Err(NixError::BadStorePath { file: file.to_path_buf(), line, path: p.to_string() })
    }
}

impl ClosureInfo {
    /// Reads `dir/store-paths` and `dir/registration`.
    pub fn load(dir: &Path) -> Result<Self, NixError> {
        let sp_file = dir.join("store-paths");
        let store_paths_text = read(&sp_file)?;
        let mut store_paths = Vec::new();
        for (i, l) in store_paths_text.lines().enumerate() {
            if l.is_empty() {
                continue;
            }
            check_store_path(&sp_file, i + 1, l)?;
            store_paths.push(l.to_string());
        }
        let reg_file = dir.join("registration");
        let reg_text = read(&reg_file)?;
        let registrations = parse_registration(&reg_file, &reg_text)?;
        Ok(ClosureInfo { store_paths, registrations, registration_bytes: reg_text.into_bytes() })
    }

    /// Checks that `path`, named by spec key `role`, is a store path of this closure.
    pub fn require(&self, path: &str, role: &str) -> Result<(), NixError> {
        if !is_store_path(path) {
            return Err(NixError::NotAStorePath { role: role.to_string(), path: path.to_string() });
        }
        if !self.store_paths.iter().any(|p| p == path) {
            return Err(NixError::NotInClosure { role: role.to_string(), path: path.to_string() });
        }
        Ok(())
    }
}

/// Parses the `nix-store --load-db` format: per path its name, hash, size, deriver (may
/// be empty), reference count and references, one value per line.
pub fn parse_registration(file: &Path, text: &str) -> Result<Vec<Registration>, NixError> {
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    let mut out = Vec::new();
    let err =
        |line: usize, what: &str| NixError::Registration { file: file.to_path_buf(), line, what: what.to_string() };
    while i < lines.len() {
        if lines[i].is_empty() {
            break; // Nix stops at a blank line too.
        }
        let path = lines[i];
        check_store_path(file, i + 1, path)?;
        let hash = *lines.get(i + 1).ok_or_else(|| err(i + 2, "missing NAR hash"))?;
        if hash.is_empty()
            || !(hash.starts_with("sha256:") || hash.starts_with("sha256-") || hash.len() == 64 || hash.len() == 52)
        {
            return Err(err(i + 2, &format!("expected a NAR hash like sha256:<52 base32 chars>, found '{hash}'")));
        }
        let size_s = *lines.get(i + 2).ok_or_else(|| err(i + 3, "missing NAR size"))?;
        let nar_size = size_s
            .parse::<u64>()
            .map_err(|_| err(i + 3, &format!("expected a NAR size (decimal), found '{size_s}'")))?;
        let deriver = *lines.get(i + 3).ok_or_else(|| err(i + 4, "missing deriver line (may be empty)"))?;
        let n_s = *lines.get(i + 4).ok_or_else(|| err(i + 5, "missing reference count"))?;
        let n = n_s.parse::<usize>().map_err(|_| err(i + 5, &format!("expected a reference count, found '{n_s}'")))?;
        let mut references = Vec::with_capacity(n);
        for k in 0..n {
            let r = *lines.get(i + 5 + k).ok_or_else(|| err(i + 6 + k, "missing reference"))?;
            check_store_path(file, i + 6 + k, r)?;
            references.push(r.to_string());
        }
        out.push(Registration {
            path: path.to_string(),
            nar_hash: hash.to_string(),
            nar_size,
            deriver: (!deriver.is_empty()).then(|| deriver.to_string()),
            references,
        });
        i += 5 + n;
    }
    Ok(out)
}

/// Reads every store path (in parallel) from `store_root` and puts it into `tree` below
/// `dir` under its base name, with Nix's canonical ownership (0:0) and no xattrs.
pub fn add_store_paths(
    tree: &mut Tree,
    dir: u32,
    paths: &[String],
    store_root: &Path,
    clamp: i64,
) -> Result<(), NixError> {
    let opts = ScanOptions { clamp, keep_owner: false, keep_xattrs: false, cancel: None };
    let scanned: Vec<Result<(Vec<u8>, Tree), NixError>> = paths
        .par_iter()
        .map(|p| {
            let physical = store_root.join(p.trim_start_matches('/'));
            if std::fs::symlink_metadata(&physical).is_err() {
                return Err(NixError::Missing { path: p.clone(), physical });
            }
            let name = Path::new(p).file_name().expect("checked store path").as_bytes().to_vec();
            Ok((name, scan_host(&physical, &opts)?))
        })
        .collect();
    for s in scanned {
        let (name, sub) = s?;
        tree.graft(dir, &name, sub)?;
    }
    Ok(())
}

/// Adds what nixos-install puts next to the store of a full image (docs/design.md §4.5): Nix's
/// database for the closure, its `schema` and `big-lock`, the system profile and its GC
/// root, and `/etc/NIXOS`. `/nix/store` is NixOS's root:nixbld 1775.
pub fn add_nix_state(tree: &mut Tree, info: &ClosureInfo, system: Option<&str>, time: i64) -> Result<(), NixError> {
    use mdi_tree::{FileData, Kind};
    use std::sync::Arc;
    let ts = Timestamp::from_secs(time);
    let dir = Meta::root(0o755, ts);
    let file = |bytes: Vec<u8>| {
        let data: Arc<[u8]> = Arc::from(bytes);
        Kind::File { size: data.len() as u64, data: FileData::Inline(data) }
    };
    let link = |t: &str| Kind::Symlink { target: t.as_bytes().to_vec() };
    let put = |tree: &mut Tree, path: &str, perm: u16, kind: Kind| -> Result<(), NixError> {
        let (parent, name) = tree.make_parents(path.as_bytes(), &dir)?;
        tree.add(parent, &name, Meta::root(perm, ts), kind, None)?;
        Ok(())
    };
    put(tree, "/nix/var/nix/db/db.sqlite", 0o644, file(db::db_bytes(&info.registrations, time)?))?;
    put(tree, "/nix/var/nix/db/schema", 0o644, file(db::SCHEMA_VERSION.as_bytes().to_vec()))?;
    put(tree, "/nix/var/nix/db/big-lock", 0o644, file(Vec::new()))?;
    put(tree, "/nix/var/nix/gcroots/profiles", 0o777, link("/nix/var/nix/profiles"))?;
    if let Some(system) = system {
        info.require(system, "system")?;
        put(tree, "/nix/var/nix/profiles/system", 0o777, link("system-1-link"))?;
        put(tree, "/nix/var/nix/profiles/system-1-link", 0o777, link(system))?;
    } else {
        tree.make_parents(b"/nix/var/nix/profiles/x", &dir)?;
    }
    put(tree, "/etc/NIXOS", 0o644, file(Vec::new()))?;
    if let Some(store) = tree.lookup(b"/nix/store") {
        let m = &mut tree.get_mut(store).meta;
        m.perm = 0o1775;
        m.gid = NIXBLD_GID;
    }
    Ok(())
}

/// Makes `channel` root's channel, as nixos-install does: the profile
/// `profiles/per-user/root/channels → channels-1-link → <channel>` and
/// `/root/.nix-defexpr/channels` pointing at that profile. `/root` (when the tree has none
/// yet) is 0700, as NixOS activation leaves root's home.
pub fn add_channel_profile(tree: &mut Tree, info: &ClosureInfo, channel: &str, time: i64) -> Result<(), NixError> {
    use mdi_tree::Kind;
    info.require(channel, "channel")?;
    let ts = Timestamp::from_secs(time);
    let dir = Meta::root(0o755, ts);
    let link = |t: &str| Kind::Symlink { target: t.as_bytes().to_vec() };
    let put = |tree: &mut Tree, path: &str, kind: Kind| -> Result<(), NixError> {
        let (parent, name) = tree.make_parents(path.as_bytes(), &dir)?;
        tree.add(parent, &name, Meta::root(0o777, ts), kind, None)?;
        Ok(())
    };
    const PROFILE: &str = "/nix/var/nix/profiles/per-user/root/channels";
    put(tree, PROFILE, link("channels-1-link"))?;
    put(tree, "/nix/var/nix/profiles/per-user/root/channels-1-link", link(channel))?;
    if tree.lookup(b"/root").is_none() {
        tree.add(ROOT, b"root", Meta::root(0o700, ts), Kind::Dir { children: Vec::new() }, None)?;
    }
    let (root_home, _) = tree.make_parents(b"/root/x", &dir)?;
    let defexpr =
        tree.add(root_home, b".nix-defexpr", Meta::root(0o700, ts), Kind::Dir { children: Vec::new() }, None)?;
    tree.add(defexpr, b"channels", Meta::root(0o777, ts), link(PROFILE), None)?;
    Ok(())
}

/// Adds `name` (a file at the root of `tree`, 0644 root) holding the closure's
/// registration, in the format `nix-store --load-db` reads: images whose database is
/// made at boot (make-ext4-fs' `/nix-path-registration`) load it from there.
pub fn add_path_registration(tree: &mut Tree, info: &ClosureInfo, name: &str, time: i64) -> Result<(), NixError> {
    use mdi_tree::{FileData, Kind};
    let data: std::sync::Arc<[u8]> = std::sync::Arc::from(info.registration_bytes.clone());
    let kind = Kind::File { size: data.len() as u64, data: FileData::Inline(data) };
    tree.add(ROOT, name.as_bytes(), Meta::root(0o644, Timestamp::from_secs(time)), kind, None)?;
    Ok(())
}

/// NixOS's nixbld group, which owns /nix/store.
pub const NIXBLD_GID: u32 = 30000;

/// The tree of a store-only image (onlyNixStore): the store paths at the root.
pub fn store_only_tree(info: &ClosureInfo, store_root: &Path, clamp: i64, time: i64) -> Result<Tree, NixError> {
    let mut tree = Tree::new(Meta::root(0o755, Timestamp::from_secs(time)));
    add_store_paths(&mut tree, ROOT, &info.store_paths, store_root, clamp)?;
    tree.finish();
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;

    const P1: &str = "/nix/store/00000000000000000000000000000000-a";
    const P2: &str = "/nix/store/11111111111111111111111111111111-b";

    #[test]
    fn parses_registration() {
        let text =
            format!("{P1}\nsha256:{}\n120\n\n1\n{P2}\n{P2}\nsha256:{}\n8\n\n0\n", "0".repeat(52), "1".repeat(52));
        let r = parse_registration(Path::new("r"), &text).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].references, vec![P2.to_string()]);
        assert_eq!(r[1].nar_size, 8);
        assert_eq!(r[1].deriver, None);
    }

    #[test]
    fn registration_errors_name_the_line() {
        let text = format!("{P1}\nsha256:{}\nbig\n\n0\n", "0".repeat(52));
        let e = parse_registration(Path::new("reg"), &text).unwrap_err().to_string();
        assert!(e.starts_with("reg:3:"), "{e}");
        let e = parse_registration(Path::new("reg"), "/etc/passwd\n").unwrap_err().to_string();
        assert!(e.contains("reg:1"), "{e}");
    }
}
