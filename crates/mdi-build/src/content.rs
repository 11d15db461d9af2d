//! Collect (DESIGN §3 step 1): one tree from the spec's sources (closure, rootDir,
//! configFile, contents), before any filesystem is planned.

use crate::demo;
use crate::spec::{self, Spec};
use anyhow::{anyhow, bail, Context, Result};
use mdi_tree::{scan_host, Meta, ScanOptions, Timestamp, Tree};
use serde_json::json;

fn parse_id(v: &serde_json::Value, what: &str) -> Result<u32> {
    match v {
        serde_json::Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(|| anyhow!("{what} {n} is not a valid numeric id")),
        serde_json::Value::String(s) if s == "root" => Ok(0),
        serde_json::Value::String(s) => s.parse::<u32>().map_err(|_| {
            anyhow!("{what} '{s}' cannot be resolved: there is no user database to look names up in at build time; give the numeric id instead")
        }),
        v => bail!("{what} {v} is not a user/group name or number"),
    }
}

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
    if spec.only_nix_store {
        let info = closure.expect("validated: onlyNixStore has closureInfo");
        return Ok(mdi_nix::store_only_tree(&info, &spec.store_root, sde, sde)?);
    }
    let mut tree = match &spec.root_dir {
        Some(root) => {
            let md = std::fs::metadata(root)
                .with_context(|| format!("rootDir '{}' cannot be read; give an existing folder", root.display()))?;
            if !md.is_dir() {
                bail!("rootDir '{}' is not a folder; give the folder to use as the root filesystem", root.display());
            }
            scan_host(root, &ScanOptions { clamp: sde, keep_owner: true, keep_xattrs: true })
                .with_context(|| format!("reading rootDir '{}'", root.display()))?
        }
        None => Tree::new(dir_meta.clone()),
    };
    if let Some(info) = &closure {
        let (store, _) = tree.make_parents(b"/nix/store/x", &dir_meta)?;
        mdi_nix::add_store_paths(&mut tree, store, &info.store_paths, &spec.store_root, sde)?;
        mdi_nix::add_nix_state(&mut tree, info, spec.system.as_deref(), sde)?;
    } else if spec.system.is_some() {
        bail!("system needs closureInfo: the closure of the toplevel (nixpkgs' closureInfo {{ rootPaths = [ toplevel ]; }})");
    }
    if let Some(cfg) = &spec.config_file {
        // nixos-install's place for it: /etc/nixos/configuration.nix, 0644 root.
        let entry = spec::ContentEntry {
            source: cfg.clone(),
            target: "/etc/nixos/configuration.nix".into(),
            mode: Some(json!("0644")),
            user: Some(json!(0)),
            group: Some(json!(0)),
        };
        add_content(&mut tree, &entry, sde, &dir_meta).with_context(|| format!("configFile '{}'", cfg.display()))?;
    }
    for (i, c) in spec.contents.iter().enumerate() {
        add_content(&mut tree, c, sde, &dir_meta)
            .with_context(|| format!("contents[{i}] (source '{}', target '{}')", c.source.display(), c.target))?;
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

pub(crate) fn add_content(tree: &mut Tree, c: &spec::ContentEntry, sde: i64, dir_meta: &Meta) -> Result<()> {
    if !c.target.starts_with('/') {
        bail!("target '{}' must be an absolute path in the image, e.g. /etc/foo", c.target);
    }
    let sub = scan_host(&c.source, &ScanOptions { clamp: sde, keep_owner: false, keep_xattrs: false })?;
    let (parent, name) = tree.make_parents(c.target.as_bytes(), dir_meta)?;
    let id = tree.graft(parent, &name, sub)?;
    if let Some(m) = &c.mode {
        let m = parse_mode(m)?;
        tree.get_mut(id).meta.perm = m;
    }
    if let (Some(u), Some(g)) = (&c.user, &c.group) {
        let (uid, gid) = (parse_id(u, "user")?, parse_id(g, "group")?);
        tree.for_each_below(id, |e| {
            e.meta.uid = uid;
            e.meta.gid = gid;
        });
    }
    Ok(())
}
