//! The ext4 writer checked by real oracles: e2fsck -fn, the kernel (loop mount),
//! getfattr/getfacl and debugfs. Issue 2, "Checked by".

mod common;
use common::*;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;

const SDE: i64 = 1_700_000_000;

fn sh(cmd: &str, dir: &Path) {
    let o = Command::new("sh").arg("-c").arg(cmd).current_dir(dir).output().unwrap();
    assert!(o.status.success(), "{cmd}: {}", String::from_utf8_lossy(&o.stderr));
}

fn set_mtime(p: &Path, secs: i64, nsecs: u32) {
    let t = std::time::UNIX_EPOCH + std::time::Duration::new(secs as u64, nsecs);
    let f = fs::File::options().write(true).open(p).or_else(|_| fs::File::open(p)).unwrap();
    f.set_times(fs::FileTimes::new().set_modified(t).set_accessed(t)).unwrap();
}

/// A tree with every edge case of issue 2 §3.
fn edge_tree(root: &Path) {
    let w = |p: &str, data: &[u8]| {
        let p = root.join(p);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, data).unwrap();
    };
    w("plain.txt", b"hello\n");
    w("empty", b"");
    w("dir/nested/deep.bin", &(0..=255u8).cycle().take(70_000).collect::<Vec<u8>>());
    // Zero blocks inside a file become holes even though the source has none.
    let mut zeros_inside = vec![7u8; 4096];
    zeros_inside.extend(vec![0u8; 3 * 4096]);
    zeros_inside.extend(vec![9u8; 100]);
    w("zero-blocks-inside", &zeros_inside);
    w("all-zero", &vec![0u8; 5 * 4096]);
    // A sparse source file with data far apart, and one over 4 GiB.
    let f = fs::File::create(root.join("sparse")).unwrap();
    f.set_len(64 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(b"start", 0).unwrap();
    f.write_all_at(b"middle", 33 << 20).unwrap();
    let f = fs::File::create(root.join("huge")).unwrap();
    f.set_len((5 << 30) + 123).unwrap();
    f.write_all_at(b"at 0", 0).unwrap();
    f.write_all_at(b"at 4 GiB", 4 << 30).unwrap();
    f.write_all_at(b"end", (5 << 30) + 120).unwrap();
    // Many-extent file: alternating data and zero blocks (needs an extent tree block).
    let mut striped = Vec::new();
    for i in 0..2000u32 {
        striped.extend(vec![(i % 250 + 1) as u8; 4096]);
        striped.extend(vec![0u8; 4096]);
    }
    w("striped", &striped);
    // Hard links, including across directories.
    w("links/a", b"linked\n");
    fs::create_dir_all(root.join("links/sub")).unwrap();
    fs::hard_link(root.join("links/a"), root.join("links/b")).unwrap();
    fs::hard_link(root.join("links/a"), root.join("links/sub/c")).unwrap();
    // Symlinks: fast (<= 59 bytes), slow (60+), long, dangling.
    symlink("plain.txt", root.join("sym-rel")).unwrap();
    symlink("x".repeat(59), root.join("sym-59")).unwrap();
    symlink("y".repeat(60), root.join("sym-60")).unwrap();
    symlink("z".repeat(4095), root.join("sym-4095")).unwrap();
    symlink("/nonexistent/target", root.join("sym-dangling")).unwrap();
    // Names at the limits.
    w(&"n".repeat(255), b"long name\n");
    w("sp ace\ttab", b"odd\n");
    // Special files.
    sh("mknod chr c 1 3 && mknod blk b 7 200 && mknod bigdev c 300 70000 && mkfifo fifo", root);
    let _ = std::os::unix::net::UnixListener::bind(root.join("sock")).unwrap();
    // Permission bits.
    w("suid", b"#!/bin/sh\n");
    fs::set_permissions(root.join("suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    w("sgid", b"#!/bin/sh\n");
    fs::set_permissions(root.join("sgid"), fs::Permissions::from_mode(0o2711)).unwrap();
    fs::create_dir(root.join("sticky")).unwrap();
    fs::set_permissions(root.join("sticky"), fs::Permissions::from_mode(0o1777)).unwrap();
    w("private", b"secret\n");
    fs::set_permissions(root.join("private"), fs::Permissions::from_mode(0o600)).unwrap();
    // Ownership.
    w("owned", b"x\n");
    sh("chown 1234:5678 owned && chown -h 42:43 sym-rel", root);
    // Extended attributes, ACLs and a file capability; one set too big for the inode.
    w("xattrs", b"x\n");
    sh("setfattr -n user.small -v hi xattrs && setfattr -n trusted.t -v 0x0102 xattrs", root);
    w("bigxattr", b"x\n");
    sh(&format!("setfattr -n user.big -v {} bigxattr", "v".repeat(300)), root);
    w("acl-file", b"x\n");
    sh("setfacl -m u:1000:rw,g:100:r acl-file", root);
    fs::create_dir(root.join("acl-dir")).unwrap();
    sh("setfacl -m u:1000:rwx acl-dir && setfacl -d -m g:100:rx acl-dir", root);
    w("cap", b"\x7fELF");
    sh("setfattr -n security.capability -v 0x0100000200200000000000000000000000000000 cap", root);
    // A directory that needs an htree (more than one block of entries).
    fs::create_dir(root.join("wide")).unwrap();
    for i in 0..3000 {
        fs::write(root.join(format!("wide/entry-{i:05}")), b"").unwrap();
    }
    // Times: one after SOURCE_DATE_EPOCH (clamped), one before with nanoseconds (kept).
    set_mtime(&root.join("plain.txt"), SDE + 1000, 0);
    set_mtime(&root.join("dir/nested/deep.bin"), 1_000_000, 123_456_789);
}

fn build_root_dir(src: &Path, out: &Path, extra: &[&str]) -> std::path::PathBuf {
    let mut args = vec![
        os("--root-dir"),
        src.as_os_str(),
        os("--partition-table-type"),
        os("none"),
        os("--source-date-epoch"),
        os("1700000000"),
        os("-o"),
        out.as_os_str(),
    ];
    args.extend(extra.iter().map(|s| os(s)));
    build(&args);
    out.join("nixos.img")
}

#[test]
fn edge_case_tree_round_trips_through_the_kernel() {
    if skip_unless_root("edge-case tree (mknod, chown, loop mount)") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    edge_tree(&src);
    let img = build_root_dir(&src, &tmp.path().join("out"), &[]);
    e2fsck_clean(&img);
    let m = Mount::new(&img);
    compare_trees(&src, m.path(), &["lost+found"], &Expect { sde: SDE, owner: None });
    compare_xattrs(&src, m.path());

    // debugfs sees the special files and the indexed directory as built.
    let stat = |p: &str| tool_in(tmp.path(), "debugfs", &["-R", &format!("stat /{p}"), img.to_str().unwrap()]);
    assert!(
        stat("chr").contains("Type: character special") && stat("chr").contains("Device major/minor number: 01:03"),
        "{}",
        stat("chr")
    );
    assert!(stat("bigdev").contains("Device major/minor number: 300:70000"), "{}", stat("bigdev"));
    assert!(stat("fifo").contains("Type: FIFO"));
    assert!(stat("sock").contains("Type: socket"));
    assert!(stat("sym-59").contains("Fast link dest"), "59-byte symlink is fast: {}", stat("sym-59"));
    assert!(!stat("sym-60").contains("Fast link dest"), "60-byte symlink lives in a block");
    assert!(stat("huge").contains("Size: 5368709243"));
    let htree = tool_in(tmp.path(), "debugfs", &["-R", "htree /wide", img.to_str().unwrap()]);
    assert!(
        htree.contains("Root node dump") && htree.contains("Number of entries (count):"),
        "wide/ is not indexed: {htree}"
    );
}

#[test]
fn empty_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("empty");
    fs::create_dir(&src).unwrap();
    let img = build_root_dir(&src, &tmp.path().join("out"), &["--additional-space", "0"]);
    e2fsck_clean(&img);
    if !skip_unless_root("the kernel's view of the image") {
        let m = Mount::new(&img);
        compare_trees(&src, m.path(), &["lost+found"], &Expect { sde: SDE, owner: None });
    }
}

#[test]
fn hundred_thousand_files_in_one_directory() {
    // 100,000 names of 24 bytes fill ~790 leaf blocks: more than a dx_root indexes, so
    // this also exercises the two-level htree.
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("many")).unwrap();
    for i in 0..100_000u32 {
        fs::write(
            src.join(format!("many/file-{i:08}-abcdefghij")),
            if i % 1000 == 0 { &b"data"[..] } else { &b""[..] },
        )
        .unwrap();
    }
    let img = build_root_dir(&src, &tmp.path().join("out"), &["--additional-space", "0"]);
    e2fsck_clean(&img);
    let htree = tool_in(tmp.path(), "debugfs", &["-R", "htree /many", img.to_str().unwrap()]);
    assert!(htree.contains("Indirect levels: 1"), "expected a two-level htree");
    if !skip_unless_root("the kernel's view of the image") {
        let m = Mount::new(&img);
        compare_trees(&src, m.path(), &["lost+found"], &Expect { sde: SDE, owner: None });
    }
}

fn store_only(preset: &str) {
    let Some(corpus) = corpus(preset) else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    build(&[
        os("--closure-info"),
        corpus.join("closure-info").as_os_str(),
        os("--store-root"),
        corpus.join("root").as_os_str(),
        os("--only-nix-store"),
        os("true"),
        os("--partition-table-type"),
        os("none"),
        os("-o"),
        out.as_os_str(),
    ]);
    let img = out.join("nixos.img");
    e2fsck_clean(&img);
    // Outputs of issue 2 §1.
    let products = fs::read_to_string(out.join("nix-support/hydra-build-products")).unwrap();
    assert_eq!(products, format!("file raw-image {}\n", img.canonicalize().unwrap().display()));
    let manifest: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["filesystems"][0]["label"], "nix-store");
    let label = tool_in(tmp.path(), "blkid", &["-p", "-s", "LABEL", "-o", "value", img.to_str().unwrap()]);
    assert_eq!(label.trim(), "nix-store");

    // debugfs: the wide directory of the corpus is hash-indexed.
    let paths = fs::read_to_string(corpus.join("closure-info/store-paths")).unwrap();
    if let Some(wide) = paths.lines().find(|p| p.contains("-edge-wide-dir-")) {
        let name = wide.trim_start_matches("/nix/store/");
        let h = tool_in(tmp.path(), "debugfs", &["-R", &format!("htree /{name}/wide"), img.to_str().unwrap()]);
        assert!(h.contains("Root node dump"), "{name}/wide is not indexed");
    }
    if skip_unless_root("Nix's --verify of the store image and the kernel's view of it") {
        return;
    }
    // Real Nix accepts the store: mount the image as <root>/nix/store, load the
    // closure's registration and verify every path's NAR hash against the image.
    {
        let nixroot = tempfile::tempdir().unwrap();
        // Nix writes store/.links, so the read-only image sits under a writable overlay.
        let (upper, work, store) =
            (nixroot.path().join("upper"), nixroot.path().join("work"), nixroot.path().join("nix/store"));
        for d in [&upper, &work, &store] {
            fs::create_dir_all(d).unwrap();
        }
        let lower_m = Mount::new(&img);
        let opts =
            format!("lowerdir={},upperdir={},workdir={}", lower_m.path().display(), upper.display(), work.display());
        assert!(Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(&store)
            .status()
            .unwrap()
            .success());
        let root_arg = format!("local?root={}", nixroot.path().display());
        let load = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "nix-store --store '{root_arg}' --load-db < {}",
                corpus.join("closure-info/registration").display()
            ))
            .output()
            .unwrap();
        let verify =
            Command::new("nix-store").args(["--store", &root_arg, "--verify", "--check-contents"]).output().unwrap();
        Command::new("umount").arg(&store).status().unwrap();
        drop(lower_m);
        assert!(load.status.success(), "nix-store --load-db: {}", String::from_utf8_lossy(&load.stderr));
        let verr = String::from_utf8_lossy(&verify.stderr);
        assert!(
            verify.status.success() && !verr.contains("modified") && !verr.contains("error"),
            "nix-store --verify --check-contents: {verr}"
        );
    }
    // The kernel: every store path equals its source.
    let m = Mount::new(&img);
    let root_entries: Vec<String> = fs::read_dir(m.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lost+found")
        .collect();
    assert_eq!(root_entries.len(), paths.lines().count());
    for p in paths.lines() {
        let name = p.trim_start_matches("/nix/store/");
        let src = corpus.join("root/nix/store").join(name);
        let img_p = m.path().join(name);
        if fs::symlink_metadata(&src).unwrap().is_dir() {
            compare_trees(&src, &img_p, &[], &Expect { sde: 1, owner: Some((0, 0)) });
        } else {
            let a = scan(&src, &[]);
            let b = scan(&img_p, &[]);
            assert_eq!(a[&Vec::new()].sha256, b[&Vec::new()].sha256, "{name}");
            assert_eq!(a[&Vec::new()].target, b[&Vec::new()].target, "{name}");
        }
    }
}

#[test]
fn store_only_image_of_tiny_corpus() {
    store_only("tiny");
}

#[test]
fn store_only_image_of_small_corpus() {
    store_only("small");
}

#[test]
fn htree_lookups_by_the_kernel_find_every_name() {
    // A lookup by name walks the htree with the kernel's own hash of the name: a name
    // whose hash we computed differently would not be found. Names of every length
    // (the hash consumes 32 bytes per round) and with bytes above 0x7f (signedness).
    if skip_unless_root("kernel htree lookups (loop mount)") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    let mut names: Vec<String> = (1..=255).map(|n| "a".repeat(n)).collect();
    names.extend((0..400).map(|i| format!("name-{i}-{}", "é".repeat(i % 60))));
    for n in &names {
        fs::write(src.join("d").join(n), n.as_bytes()).unwrap();
    }
    let img = build_root_dir(&src, &tmp.path().join("out"), &["--additional-space", "0"]);
    e2fsck_clean(&img);
    let htree = tool_in(tmp.path(), "debugfs", &["-R", "htree /d", img.to_str().unwrap()]);
    assert!(htree.contains("Root node dump"), "/d is not indexed");
    let m = Mount::new(&img);
    for n in &names {
        let got = fs::read(m.path().join("d").join(n)).unwrap_or_else(|e| panic!("kernel lookup of {n:?}: {e}"));
        assert_eq!(got, n.as_bytes());
    }
}
