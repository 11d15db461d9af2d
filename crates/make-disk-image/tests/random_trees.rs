//! Property: any tree → image → e2fsck clean, and the kernel's view equals the input.

mod common;
use common::*;
use proptest::prelude::*;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

#[derive(Debug, Clone)]
enum Node {
    File { blocks: Vec<u8>, tail: usize, perm: u32 },
    Dir { perm: u32 },
    Symlink { target_len: usize },
    HardLink { to: usize },
}

fn node() -> impl Strategy<Value = Node> {
    prop_oneof![
        4 => (proptest::collection::vec(0u8..3, 0..12), 0usize..4096, prop_oneof![Just(0o644u32), Just(0o755), Just(0o4755), Just(0o600), Just(0o444)])
            .prop_map(|(blocks, tail, perm)| Node::File { blocks, tail, perm }),
        2 => prop_oneof![Just(0o755u32), Just(0o700), Just(0o1777), Just(0o2755)].prop_map(|perm| Node::Dir { perm }),
        1 => (1usize..300).prop_map(|target_len| Node::Symlink { target_len }),
        1 => (0usize..50).prop_map(|to| Node::HardLink { to }),
    ]
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z]{1,12}", "[a-zA-Z0-9._ -]{1,40}", "[à-ÿ]{1,20}", Just("x".repeat(255)),]
        .prop_filter("not . or ..", |n| n != "." && n != "..")
}

fn materialize(root: &Path, nodes: &[(u8, String, Node)]) {
    let mut dirs = vec![root.to_path_buf()];
    let mut files: Vec<std::path::PathBuf> = Vec::new();
    for (parent, n, kind) in nodes {
        let dir = dirs[*parent as usize % dirs.len()].clone();
        let p = dir.join(n);
        if fs::symlink_metadata(&p).is_ok() {
            continue;
        }
        match kind {
            Node::File { blocks, tail, perm } => {
                let mut data = Vec::new();
                for (i, b) in blocks.iter().enumerate() {
                    // 0 = an all-zero block (must become a hole), else data.
                    data.extend(std::iter::repeat_n(if *b == 0 { 0 } else { (i as u8).wrapping_mul(31) | 1 }, 4096));
                }
                data.extend(std::iter::repeat_n(7u8, *tail));
                fs::write(&p, &data).unwrap();
                fs::set_permissions(&p, fs::Permissions::from_mode(*perm)).unwrap();
                files.push(p);
            }
            Node::Dir { perm } => {
                fs::create_dir(&p).unwrap();
                dirs.push(p.clone());
                fs::set_permissions(&p, fs::Permissions::from_mode(*perm)).unwrap();
            }
            Node::Symlink { target_len } => symlink("t".repeat(*target_len), &p).unwrap(),
            Node::HardLink { to } => {
                if !files.is_empty() {
                    fs::hard_link(&files[to % files.len()], &p).unwrap();
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn any_tree_round_trips(nodes in proptest::collection::vec((any::<u8>(), name(), node()), 0..60)) {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir(&src).unwrap();
        materialize(&src, &nodes);
        let out = t.path().join("out");
        // Now: after every source mtime (only this second's are clamped), and not in the
        // future, which e2fsck would report.
        let sde = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        build(&[os("--root-dir"), src.as_os_str(), os("--partition-table-type"), os("none"), os("--additional-space"), os("0"), os("--source-date-epoch"), os(&sde.to_string()), os("-o"), out.as_os_str()]);
        let img = out.join("nixos.img");
        e2fsck_clean(&img);
        if !skip_unless_root("the kernel's view of the image") {
            let m = Mount::new(&img);
            compare_trees(&src, m.path(), &["lost+found"], &Expect { sde, owner: None });
        }
    }
}

/// Builds `src` at `mib` MiB (layout `layout`); e2fsck checks what it makes.
fn build_at(src: &Path, out: &Path, layout: &str, mib: u64) -> std::process::Output {
    let o = std::process::Command::new(bin())
        .arg("build")
        .arg("--root-dir")
        .arg(src)
        .args(["--partition-table-type", layout, "--disk-size", &mib.to_string(), "-o"])
        .arg(out)
        .output()
        .unwrap();
    if o.status.success() {
        e2fsck_root(out);
    }
    let _ = fs::remove_dir_all(out);
    o
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Issue 13: the too-small error's minimum is the true one: building at exactly that
    /// size succeeds, one MiB less fails. Trees get bulk data (so minimums spread over the
    /// journal's size steps) and many small files (so inodes matter too).
    #[test]
    fn too_small_error_gives_the_true_minimum(
        nodes in proptest::collection::vec((any::<u8>(), name(), node()), 0..40),
        bulk_kib in proptest::collection::vec(0u64..60_000, 0..4),
        empties in 0usize..4000,
        layout in prop_oneof![Just("none"), Just("legacy"), Just("legacy+gpt")],
    ) {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir(&src).unwrap();
        materialize(&src, &nodes);
        fs::create_dir(src.join("bulk")).unwrap();
        for (i, kib) in bulk_kib.iter().enumerate() {
            // Non-zero data, so every block is stored.
            fs::write(src.join(format!("bulk/{i}")), vec![(i as u8) | 1; (*kib as usize) << 10]).unwrap();
        }
        for i in 0..empties {
            fs::write(src.join(format!("bulk/e{i}")), b"").unwrap();
        }
        let out = t.path().join("out");
        // Two MiB of root partition after the layout's head: less than any tree needs.
        let small = match layout { "none" => 2, "legacy" => 3, _ => 5 };
        let err = build_at(&src, &out, layout, small);
        prop_assert!(!err.status.success());
        let err = String::from_utf8_lossy(&err.stderr).into_owned();
        let key = "set diskSize to at least ";
        let i = err.find(key).unwrap_or_else(|| panic!("no minimum in: {err}")) + key.len();
        let min: u64 = err[i..].split(' ').next().unwrap().parse().unwrap();
        let at_min = build_at(&src, &out, layout, min);
        prop_assert!(at_min.status.success(), "{} MiB, the stated minimum, fails: {}", min, String::from_utf8_lossy(&at_min.stderr));
        prop_assert!(!build_at(&src, &out, layout, min - 1).status.success(), "{} MiB works, below the stated minimum", min - 1);
    }
}
