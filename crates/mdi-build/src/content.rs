//! Collect (docs/design.md §3 step 1): one tree from the spec's sources (closure, rootDir,
//! configFile, contents), before any filesystem is planned.

use crate::demo;
use crate::spec::{self, Spec};
use anyhow::{anyhow, bail, Context, Result};
use mdi_tree::{scan_host, EntryId, FileData, Kind, Meta, ScanOptions, Timestamp, Tree, ROOT};
use std::collections::VecDeque;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

fn parse_mode(v: &serde_json::Value) -> Result<u16> {
    let s = match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        v => bail!("mode {v} is not an octal mode like \"0644\""),
    };
    u16::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| anyhow!("mode '{s}' is not an octal mode like \"0644\""))
}

/// Collects the tree the root filesystem is made of.
pub fn collect(spec: &Spec, sde: i64) -> Result<Tree> {
    let dir_meta = Meta::root(0o755, Timestamp::from_secs(sde));
    let closure = match &spec.closure_info {
        Some(dir) => Some(mdi_nix::ClosureInfo::load(dir)?),
        None => None,
    };
    if let Some(info) = &closure {
        for p in &spec.additional_paths {
            info.require(p, "additionalPaths")?;
        }
        if let Some(c) = &spec.channel {
            info.require(c, "channel")?;
        }
    }
    if spec.only_nix_store {
        let info = closure.expect("validated: onlyNixStore has closureInfo");
        let mut tree = mdi_nix::store_only_tree(&info, &spec.store_root, sde, sde)?;
        if spec.nix_path_registration {
            mdi_nix::add_path_registration(&mut tree, &info, "nix-path-registration", sde)?;
            tree.finish();
        }
        return Ok(tree);
    }
    let mut tree = match &spec.root_dir {
        Some(root) => {
            let md = std::fs::metadata(root)
                .with_context(|| format!("rootDir '{}' cannot be read; give an existing folder", root.display()))?;
            if !md.is_dir() {
                bail!("rootDir '{}' is not a folder; give the folder to use as the root filesystem", root.display());
            }
            // rootDir is often a symlink to the folder (Nix's ./result): the root is what it
            // points to. Only this argument is followed; links inside the tree stay links.
            let root = &std::fs::canonicalize(root)
                .with_context(|| format!("rootDir '{}' cannot be resolved", root.display()))?;
            scan_host(root, &ScanOptions { clamp: sde, keep_owner: true, keep_xattrs: true, cancel: None })
                .with_context(|| format!("reading rootDir '{}'", root.display()))?
        }
        None => Tree::new(dir_meta.clone()),
    };
    if let Some(info) = &closure {
        let (store, _) = tree.make_parents(b"/nix/store/x", &dir_meta)?;
        mdi_nix::add_store_paths(&mut tree, store, &info.store_paths, &spec.store_root, sde)?;
        mdi_nix::add_nix_state(&mut tree, info, spec.system.as_deref(), sde)?;
        if let Some(channel) = spec.channel_to_install() {
            mdi_nix::add_channel_profile(&mut tree, info, channel, sde)?;
        }
        if spec.nix_path_registration {
            mdi_nix::add_path_registration(&mut tree, info, "nix-path-registration", sde)?;
        }
    } else if spec.system.is_some() {
        bail!("system needs closureInfo: the closure of the toplevel (nixpkgs' closureInfo {{ rootPaths = [ toplevel ]; }})");
    }
    if let Some(cfg) = &spec.config_file {
        // nixos-install's place for it: /etc/nixos/configuration.nix, 0644 root.
        add_content(&mut tree, cfg, "/etc/nixos/configuration.nix", Some(0o644), sde, &dir_meta)
            .with_context(|| format!("configFile '{}'", cfg.display()))?;
    }
    let what = |i: usize, c: &spec::ContentEntry| {
        format!("contents[{i}] (source '{}', target '{}')", c.source.display(), c.target)
    };
    for (i, c) in spec.contents.iter().enumerate() {
        let mode = c.mode.as_ref().map(parse_mode).transpose().with_context(|| what(i, c))?;
        add_content(&mut tree, &c.source, &c.target, mode, sde, &dir_meta).with_context(|| what(i, c))?;
    }
    // Ownership comes last, as nixpkgs' `chown -R user:group target` runs once everything
    // is in place: it covers whatever lies below the target by then, in entry order.
    let mut names = Names::new(spec);
    for (i, c) in spec.contents.iter().enumerate() {
        let (Some(u), Some(g)) = (&c.user, &c.group) else {
            continue;
        };
        let uid = names.id(&tree, u, NameKind::User).with_context(|| what(i, c))?;
        let gid = names.id(&tree, g, NameKind::Group).with_context(|| what(i, c))?;
        let plain: Vec<&str> = c.target.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
        let id = tree.lookup(plain.join("/").as_bytes()).expect("target placed above");
        tree.for_each_below(id, |e| {
            e.meta.uid = uid;
            e.meta.gid = gid;
        });
    }
    if spec.root_dir.is_none()
        && closure.is_none()
        && spec.contents.is_empty()
        && spec.system.is_none()
        && spec.config_file.is_none()
    {
        return Ok(demo::tree(sde));
    }
    tree.finish();
    Ok(tree)
}

/// Places one `contents` entry as nixpkgs' rsync step does: a source
/// with `*` is a pattern and `target` a folder receiving each match under its own name;
/// otherwise the source (a folder's content, a file) becomes `target`, whose parents are
/// made. `mode` applies to every file and folder copied (rsync `--chmod`), not to
/// symlinks. A target that already exists is nixpkgs' "duplicate entry" error.
fn add_content(
    tree: &mut Tree,
    source: &Path,
    target: &str,
    mode: Option<u16>,
    sde: i64,
    dir_meta: &Meta,
) -> Result<()> {
    if !target.starts_with('/') {
        bail!("target '{target}' must be an absolute path in the image, e.g. /etc/foo");
    }
    let scan = |p: &Path| -> Result<Tree> {
        let mut sub = scan_host(p, &ScanOptions { clamp: sde, keep_owner: false, keep_xattrs: false, cancel: None })?;
        if let Some(m) = mode {
            sub.for_each_below(ROOT, |e| {
                if !matches!(e.kind, Kind::Symlink { .. }) {
                    e.meta.perm = m;
                }
            });
        }
        Ok(sub)
    };
    let duplicate = |t: &str, s: &Path| {
        anyhow!(
            "duplicate entry {t} -> {}: '{t}' is already in the image (from rootDir, the closure, configFile or an earlier entry); remove one of them or pick another target",
            s.display()
        )
    };
    if source.as_os_str().as_bytes().contains(&b'*') {
        let matches = glob(source.as_os_str().as_bytes());
        if matches.is_empty() {
            bail!(
                "source '{}' matches nothing; a source with '*' is a pattern whose matches go into the target folder, and it needs at least one",
                source.display()
            );
        }
        let dir = make_dir(tree, target, dir_meta)?;
        for m in matches {
            let name = m.file_name().expect("a match has a name").as_bytes().to_vec();
            if tree.child(dir, &name).is_some() {
                let t = format!("{}/{}", target.trim_end_matches('/'), String::from_utf8_lossy(&name));
                return Err(duplicate(&t, &m));
            }
            tree.graft(dir, &name, scan(&m)?)?;
        }
        return Ok(());
    }
    let md = std::fs::symlink_metadata(source)
        .with_context(|| format!("source '{}' cannot be read; give an existing file or folder", source.display()))?;
    // nixpkgs copies `source/` when `[ -d source ]`: a symlink to a folder is followed.
    let from = if md.file_type().is_symlink() && std::fs::metadata(source).is_ok_and(|m| m.is_dir()) {
        std::fs::canonicalize(source).with_context(|| format!("source '{}'", source.display()))?
    } else {
        source.to_path_buf()
    };
    let (parent, name) = tree.make_parents(target.as_bytes(), dir_meta)?;
    if tree.child(parent, &name).is_some() {
        return Err(duplicate(target, source));
    }
    tree.graft(parent, &name, scan(&from)?)?;
    Ok(())
}

/// `mkdir -p target` in the tree; "/" is the root.
pub(crate) fn make_dir(tree: &mut Tree, target: &str, dir_meta: &Meta) -> Result<EntryId> {
    if target.split('/').all(|c| c.is_empty() || c == ".") {
        return Ok(ROOT);
    }
    let (parent, name) = tree.make_parents(target.as_bytes(), dir_meta)?;
    match tree.child(parent, &name) {
        Some(id) if matches!(tree.get(id).kind, Kind::Dir { .. }) => Ok(id),
        Some(id) => Err(mdi_tree::TreeError::NotADir(tree.path_of(id)).into()),
        None => Ok(tree.add(parent, &name, dir_meta.clone(), Kind::Dir { children: Vec::new() }, None)?),
    }
}

/// Pathname expansion as bash does it for nixpkgs' unquoted `$source` (no globstar, no
/// dotglob): `*`, `?` and `[...]` match within one component, names starting with '.'
/// only match a pattern starting with '.', folders along the way may be symlinks.
/// Returns the existing matches in byte order.
fn glob(pattern: &[u8]) -> Vec<PathBuf> {
    let magic = |c: &[u8]| c.iter().any(|b| b"*?[".contains(b));
    let comps: Vec<&[u8]> = pattern.split(|&b| b == b'/').filter(|c| !c.is_empty()).collect();
    let mut cur = vec![PathBuf::from(if pattern.starts_with(b"/") { "/" } else { "" })];
    for (i, c) in comps.iter().enumerate() {
        let last = i + 1 == comps.len();
        let mut next = Vec::new();
        for base in &cur {
            if !magic(c) {
                next.push(base.join(std::ffi::OsStr::from_bytes(c)));
                continue;
            }
            let dir = if base.as_os_str().is_empty() { Path::new(".") } else { base.as_path() };
            let Ok(rd) = std::fs::read_dir(dir) else { continue };
            let mut found: Vec<Vec<u8>> = rd.filter_map(|e| e.ok()).map(|e| e.file_name().into_vec()).collect();
            found.sort();
            for n in found {
                if (n.starts_with(b".") && !c.starts_with(b".")) || !glob_match(c, &n) {
                    continue;
                }
                let p = base.join(std::ffi::OsStr::from_bytes(&n));
                if last || p.is_dir() {
                    next.push(p);
                }
            }
        }
        cur = next;
    }
    let mut out: Vec<PathBuf> = cur.into_iter().filter(|p| std::fs::symlink_metadata(p).is_ok()).collect();
    out.sort_by(|a, b| a.as_os_str().as_bytes().cmp(b.as_os_str().as_bytes()));
    out
}

/// One bracket expression at the start of `p` against `c`: (matched, bytes consumed), or
/// None when there is no closing ']' (then '[' is literal, as in bash).
fn bracket(p: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(p.get(1), Some(b'!' | b'^'));
    if negate {
        i += 1;
    }
    let mut hit = false;
    let mut first = true;
    while i < p.len() {
        if p[i] == b']' && !first {
            return Some((hit != negate, i + 1));
        }
        first = false;
        if i + 2 < p.len() && p[i + 1] == b'-' && p[i + 2] != b']' {
            hit |= p[i] <= c && c <= p[i + 2];
            i += 3;
        } else {
            hit |= p[i] == c;
            i += 1;
        }
    }
    None
}

/// Matches one name against one pattern component (`*` backtracks to its last use).
fn glob_match(p: &[u8], n: &[u8]) -> bool {
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() {
            let step = match p[pi] {
                b'*' => {
                    star = Some((pi, ni));
                    pi += 1;
                    continue;
                }
                b'?' => Some(1),
                b'[' => match bracket(&p[pi..], n[ni]) {
                    Some((true, len)) => Some(len),
                    Some((false, _)) => None,
                    None => (n[ni] == b'[').then_some(1),
                },
                b'\\' if pi + 1 < p.len() => (p[pi + 1] == n[ni]).then_some(2),
                b => (b == n[ni]).then_some(1),
            };
            if let Some(len) = step {
                pi += len;
                ni += 1;
                continue;
            }
        }
        match star {
            Some((sp, sn)) => {
                pi = sp + 1;
                ni = sn + 1;
                star = Some((sp, sn + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

#[derive(Clone, Copy)]
enum NameKind {
    User,
    Group,
}

/// User and group names of the image: from passwdFile/groupFile, else the image's own
/// /etc/passwd and /etc/group (read once, when a name first needs them).
struct Names<'a> {
    spec: &'a Spec,
    /// None: not read yet; Some(None): there is no database.
    users: Option<Option<NameDb>>,
    groups: Option<Option<NameDb>>,
}

/// One passwd or group file: where it came from (for messages) and its (name, id) pairs.
struct NameDb {
    from: String,
    ids: Vec<(String, u32)>,
}

impl<'a> Names<'a> {
    fn new(spec: &'a Spec) -> Self {
        Names { spec, users: None, groups: None }
    }

    /// A contents entry's user or group: a number, a numeric string, or a name.
    fn id(&mut self, tree: &Tree, v: &serde_json::Value, kind: NameKind) -> Result<u32> {
        let what = match kind {
            NameKind::User => "user",
            NameKind::Group => "group",
        };
        let name = match v {
            serde_json::Value::Number(n) => {
                return n
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| anyhow!("{what} {n} is not a valid numeric id"))
            }
            serde_json::Value::String(s) => s,
            v => bail!("{what} {v} is not a {what} name or number"),
        };
        if let Ok(n) = name.parse::<u32>() {
            return Ok(n);
        }
        let spec = self.spec;
        let (spec_file, image_file, key) = match kind {
            NameKind::User => (&spec.passwd_file, "/etc/passwd", "passwdFile"),
            NameKind::Group => (&spec.group_file, "/etc/group", "groupFile"),
        };
        let slot = match kind {
            NameKind::User => &mut self.users,
            NameKind::Group => &mut self.groups,
        };
        if slot.is_none() {
            *slot = Some(load_names(tree, spec_file.as_deref(), image_file, key)?);
        }
        match slot.as_ref().expect("loaded above") {
            Some(NameDb { from, ids }) => match ids.iter().find(|(n, _)| n == name) {
                Some((_, id)) => Ok(*id),
                None if name == "root" => Ok(0),
                None => bail!("{what} '{name}' cannot be resolved: {from} has no such name; add it there or give the numeric id"),
            },
            None if name == "root" => Ok(0),
            None => bail!(
                "{what} '{name}' cannot be resolved: there is no {image_file} in the image and no {key} in the spec to look it up in; set {key} to such a file, put {image_file} in the image (rootDir or contents), or give the numeric id"
            ),
        }
    }
}

/// Reads a passwd/group file (name in field 1, id in field 3): the spec's, else the
/// image's own. Ok(None) when neither exists.
fn load_names(tree: &Tree, spec_file: Option<&Path>, image_file: &str, key: &str) -> Result<Option<NameDb>> {
    let (from, bytes) = match spec_file {
        Some(p) => {
            let b = std::fs::read(p)
                .with_context(|| format!("{key} '{}' cannot be read; give an existing file", p.display()))?;
            (format!("{key} '{}'", p.display()), b)
        }
        None => match read_image_file(tree, image_file.as_bytes())? {
            Some(b) => (format!("{image_file} of the image"), b),
            None => return Ok(None),
        },
    };
    let text = String::from_utf8_lossy(&bytes);
    let mut list = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split(':').collect();
        let id = f
            .get(2)
            .and_then(|s| s.parse::<u32>().ok())
            .ok_or_else(|| anyhow!("{from}, line {}: '{line}' is not name:password:id:…; fix the line", i + 1))?;
        list.push((f[0].to_string(), id));
    }
    Ok(Some(NameDb { from, ids: list }))
}

/// The bytes of a regular file of the image, following symlinks inside the image (as
/// the system would once booted: absolute targets start at the image's root).
fn read_image_file(tree: &Tree, path: &[u8]) -> Result<Option<Vec<u8>>> {
    let Some(id) = resolve(tree, path) else { return Ok(None) };
    match &tree.get(id).kind {
        Kind::File { data: FileData::Inline(d), .. } => Ok(Some(d.to_vec())),
        Kind::File { data: FileData::Path(p), .. } => {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(
                &mut mdi_tree::open_file(p).with_context(|| format!("reading '{}' for the image", p.display()))?,
                &mut bytes,
            )
            .with_context(|| format!("reading '{}' for the image", p.display()))?;
            Ok(Some(bytes))
        }
        _ => Ok(None),
    }
}

fn resolve(tree: &Tree, path: &[u8]) -> Option<EntryId> {
    let split = |p: &[u8]| -> VecDeque<Vec<u8>> { p.split(|&b| b == b'/').map(<[u8]>::to_vec).collect() };
    let mut rest = split(path);
    let mut cur = ROOT;
    let mut hops = 0;
    while let Some(c) = rest.pop_front() {
        match c.as_slice() {
            b"" | b"." => continue,
            b".." => cur = tree.get(cur).parent,
            _ => {
                let id = tree.child(cur, &c)?;
                if let Kind::Symlink { target } = &tree.get(id).kind {
                    hops += 1;
                    if hops > 40 {
                        return None; // a loop, as ELOOP
                    }
                    if target.starts_with(b"/") {
                        cur = ROOT;
                    }
                    let mut t = split(target);
                    t.extend(rest);
                    rest = t;
                } else {
                    cur = id;
                }
            }
        }
    }
    Some(cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_patterns() {
        assert!(glob_match(b"*", b"abc"));
        assert!(glob_match(b"a*c", b"abbbc"));
        assert!(!glob_match(b"a*c", b"abbbd"));
        assert!(glob_match(b"*.conf", b"x.conf"));
        assert!(!glob_match(b"*.conf", b"x.confx"));
        assert!(glob_match(b"?b*", b"abz"));
        assert!(glob_match(b"[a-c]x", b"bx"));
        assert!(!glob_match(b"[!a-c]x", b"bx"));
        assert!(glob_match(b"[]]", b"]"));
        assert!(glob_match(b"[x", b"[x"));
        assert!(glob_match(b"a**", b"a"));
    }

    #[test]
    fn glob_on_disk() {
        let t = tempfile::tempdir().unwrap();
        for d in ["d1", "d2", ".hidden"] {
            std::fs::create_dir(t.path().join(d)).unwrap();
            std::fs::write(t.path().join(d).join("f.txt"), "x").unwrap();
        }
        std::fs::write(t.path().join("top.txt"), "x").unwrap();
        let pat = format!("{}/*/f.txt", t.path().display());
        let got = glob(pat.as_bytes());
        assert_eq!(got, vec![t.path().join("d1/f.txt"), t.path().join("d2/f.txt")]);
        let pat = format!("{}/.*", t.path().display());
        assert_eq!(glob(pat.as_bytes()), vec![t.path().join(".hidden")]);
        let pat = format!("{}/*.none", t.path().display());
        assert!(glob(pat.as_bytes()).is_empty());
    }

    #[test]
    fn resolves_symlinks_in_the_tree() {
        let ts = Timestamp::from_secs(1);
        let mut tree = Tree::new(Meta::root(0o755, ts));
        let dm = Meta::root(0o755, ts);
        let (p, n) = tree.make_parents(b"/nix/store/x-etc/etc/passwd", &dm).unwrap();
        let data: std::sync::Arc<[u8]> = std::sync::Arc::from(b"alice:x:1000:100::/:/bin/sh\n".to_vec());
        tree.add(p, &n, Meta::root(0o644, ts), Kind::File { size: 28, data: FileData::Inline(data) }, None).unwrap();
        let (p, n) = tree.make_parents(b"/etc/static", &dm).unwrap();
        tree.add(p, &n, Meta::root(0o777, ts), Kind::Symlink { target: b"/nix/store/x-etc/etc".to_vec() }, None)
            .unwrap();
        let (p, n) = tree.make_parents(b"/etc/passwd", &dm).unwrap();
        tree.add(p, &n, Meta::root(0o777, ts), Kind::Symlink { target: b"static/passwd".to_vec() }, None).unwrap();
        let got = read_image_file(&tree, b"/etc/passwd").unwrap().unwrap();
        assert!(got.starts_with(b"alice"));
        let db = load_names(&tree, None, "/etc/passwd", "passwdFile").unwrap().unwrap();
        assert_eq!(db.ids, vec![("alice".to_string(), 1000)]);
        assert!(read_image_file(&tree, b"/etc/group").unwrap().is_none());
    }
}
