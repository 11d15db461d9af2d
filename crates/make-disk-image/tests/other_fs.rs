//! Root filesystems other than ext4 (issue 5 item 7, docs/design.md §4.4): each one, made by its
//! own mkfs tool at the root partition's offset, is attached with `losetup --offset
//! --sizelimit`, mounted by the kernel and compared with its source, owners included;
//! the reproducible ones are built twice under changed conditions and compared byte for
//! byte. vfat (our own writer) is checked with fsck.fat and mtools.

mod common;
use common::*;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

const SDE: i64 = 1_700_000_000;

struct FsType {
    name: &'static str,
    mkfs: &'static str,
    package: &'static str,
    leeway: Leeway,
    /// Keeps `user.*` extended attributes.
    xattrs: bool,
    /// Identical inputs give identical bytes (btrfs only as root: see external_fs).
    reproducible: bool,
    /// Has a label and UUID (squashfs has neither).
    identity: bool,
}

const TYPES: [FsType; 4] = [
    FsType {
        name: "btrfs",
        mkfs: "mkfs.btrfs",
        package: "btrfs-progs",
        leeway: Leeway { any_allocation: true, whole_seconds: false, links_as_copies: false },
        xattrs: true,
        reproducible: true,
        identity: true,
    },
    FsType {
        name: "xfs",
        mkfs: "mkfs.xfs",
        package: "xfsprogs",
        leeway: Leeway { any_allocation: true, whole_seconds: false, links_as_copies: true },
        xattrs: false,
        reproducible: true,
        identity: true,
    },
    FsType {
        name: "erofs",
        mkfs: "mkfs.erofs",
        package: "erofs-utils",
        leeway: Leeway { any_allocation: true, whole_seconds: false, links_as_copies: false },
        xattrs: true,
        reproducible: true,
        identity: true,
    },
    FsType {
        name: "squashfs",
        mkfs: "mksquashfs",
        package: "squashfs-tools",
        leeway: Leeway { any_allocation: true, whole_seconds: true, links_as_copies: false },
        xattrs: true,
        reproducible: true,
        identity: false,
    },
];

fn fs_type(name: &str) -> &'static FsType {
    TYPES.iter().find(|t| t.name == name).unwrap()
}

/// Prints why and returns true when the filesystem's tools are missing.
fn skip_without_tools(t: &FsType) -> bool {
    for (tool, pkg) in [(t.mkfs, t.package), ("fakeroot", "fakeroot")] {
        if !tool_exists(tool) {
            skip(format_args!("{}: {tool} is not installed (apt-get install {pkg})", t.name));
            return true;
        }
    }
    false
}

fn sh(cmd: &str, dir: &Path) {
    let o = Command::new("sh").arg("-c").arg(cmd).current_dir(dir).output().unwrap();
    assert!(o.status.success(), "{cmd}: {}", String::from_utf8_lossy(&o.stderr));
}

fn set_mtime(p: &Path, secs: i64, nsecs: u32) {
    let t = std::time::UNIX_EPOCH + std::time::Duration::new(secs as u64, nsecs);
    let f = fs::File::options().write(true).open(p).or_else(|_| fs::File::open(p)).unwrap();
    f.set_times(fs::FileTimes::new().set_modified(t).set_accessed(t)).unwrap();
}

/// Edge cases every one of these filesystems must keep (needs root: chown, mknod). No
/// names with whitespace: xfsprogs' prototype files cannot hold them.
fn edge_tree(root: &Path, t: &FsType) {
    let w = |p: &str, data: &[u8]| {
        let p = root.join(p);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, data).unwrap();
    };
    w("plain.txt", b"hello\n");
    w("empty", b"");
    w("a/b/c/deep.bin", &(0..=255u8).cycle().take(70_000).collect::<Vec<u8>>());
    // Data, then 3 MiB of zeros, then data again.
    let mut sparse = vec![1u8; 5000];
    sparse.extend(vec![0u8; 3 << 20]);
    sparse.extend(b"end");
    w("sparse-ish", &sparse);
    w("links/one", b"linked\n");
    fs::create_dir_all(root.join("links/sub")).unwrap();
    fs::hard_link(root.join("links/one"), root.join("links/two")).unwrap();
    fs::hard_link(root.join("links/one"), root.join("links/sub/three")).unwrap();
    symlink("plain.txt", root.join("sym-rel")).unwrap();
    symlink("/nonexistent/target", root.join("sym-dangling")).unwrap();
    symlink("y".repeat(300), root.join("sym-long")).unwrap();
    sh("mkfifo fifo && mknod chr c 1 3 && mknod blk b 7 200", root);
    w("suid", b"#!/bin/sh\n");
    fs::set_permissions(root.join("suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::create_dir(root.join("sgid-dir")).unwrap();
    fs::set_permissions(root.join("sgid-dir"), fs::Permissions::from_mode(0o2775)).unwrap();
    w("sgid-dir/inside", b"x\n");
    fs::create_dir(root.join("sticky")).unwrap();
    fs::set_permissions(root.join("sticky"), fs::Permissions::from_mode(0o1777)).unwrap();
    w("locked", b"secret\n");
    fs::set_permissions(root.join("locked"), fs::Permissions::from_mode(0o000)).unwrap();
    fs::create_dir(root.join("read-only-dir")).unwrap();
    w("read-only-dir/file", b"r\n");
    w("owned-by-user", b"x\n");
    w("owned-by-root", b"x\n");
    sh(
        "chown 1000:100 owned-by-user a/b && chown 0:0 owned-by-root && chown -h 1000:100 sym-rel && chown 1000:100 sgid-dir/inside && chown 0:100 sgid-dir",
        root,
    );
    if t.xattrs {
        sh("setfattr -n user.note -v hi plain.txt && setfattr -n user.empty a/b/c/deep.bin", root);
    }
    // One time after SOURCE_DATE_EPOCH (clamped), one before with nanoseconds (kept where
    // the filesystem has them).
    set_mtime(&root.join("plain.txt"), SDE + 1000, 0);
    set_mtime(&root.join("a/b/c/deep.bin"), 1_000_000, 123_456_789);
    fs::set_permissions(root.join("read-only-dir"), fs::Permissions::from_mode(0o555)).unwrap();
    // The root folder's own mode, owner and time (last: its entries changed its mtime).
    sh("chown 1000:100 .", root);
    fs::set_permissions(root, fs::Permissions::from_mode(0o750)).unwrap();
    set_mtime(root, ROOT_MTIME.0, ROOT_MTIME.1);
}

/// Modification time of the edge tree's root folder.
const ROOT_MTIME: (i64, u32) = (SDE - 5000, 987_654_321);

/// A copy of `src` made by tar from a list of its entries in reverse name order
/// (children before their folders), so every inode is created in another order than in
/// `src`; the root folder gets the mode, owner and times of `src`'s.
fn reverse_copy(src: &Path, dst: &Path) {
    fs::create_dir(dst).unwrap();
    let list = dst.with_extension("list");
    sh(&format!("find . -mindepth 1 | LC_ALL=C sort -r > {}", list.display()), src);
    sh(
        &format!(
            "tar -C {} -H posix --xattrs --xattrs-include='*' --no-recursion -T {} -cf - | tar --xattrs --xattrs-include='*' -xpf - && chown --reference={0} . && chmod --reference={0} . && touch -r {0} .",
            src.display(),
            list.display()
        ),
        dst,
    );
    let exact = Leeway { any_allocation: true, whole_seconds: false, links_as_copies: false };
    compare_trees_with(src, dst, &[], &Expect { sde: i64::MAX, owner: None }, exact);
}

/// The root partition attached read-only as a loop device and mounted; undone on drop.
struct PartMount {
    dir: tempfile::TempDir,
    dev: String,
}

impl PartMount {
    fn new(img: &Path, offset: u64, size: u64, fstype: &str) -> PartMount {
        let o = Command::new("losetup")
            .args([
                "--find",
                "--show",
                "--read-only",
                "--offset",
                &offset.to_string(),
                "--sizelimit",
                &size.to_string(),
            ])
            .arg(img)
            .output()
            .unwrap();
        assert!(o.status.success(), "losetup: {}", String::from_utf8_lossy(&o.stderr));
        let dev = String::from_utf8_lossy(&o.stdout).trim().to_string();
        let dir = tempfile::tempdir().unwrap();
        let m = Command::new("mount").args(["-t", fstype, "-o", "ro", &dev]).arg(dir.path()).output().unwrap();
        if !m.status.success() {
            let _ = Command::new("losetup").arg("-d").arg(&dev).status();
            panic!("the kernel refused to mount the {fstype} partition: {}", String::from_utf8_lossy(&m.stderr));
        }
        PartMount { dir, dev }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PartMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

fn manifest(out: &Path) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap()
}

fn root_fs(out: &Path) -> serde_json::Value {
    manifest(out)["filesystems"].as_array().unwrap().iter().find(|f| f["role"] == "root").unwrap().clone()
}

fn build_root_dir(src: &Path, out: &Path, fs: &str, extra: &[&str]) -> PathBuf {
    let mut args = vec![
        os("--root-dir"),
        src.as_os_str(),
        os("--fs-type"),
        os(fs),
        os("--partition-table-type"),
        os("legacy"),
        os("--source-date-epoch"),
        os("1700000000"),
        os("--additional-space"),
        os("16M"),
        os("-o"),
        out.as_os_str(),
    ];
    args.extend(extra.iter().map(|s| os(s)));
    build(&args);
    out.join("nixos.img")
}

/// blkid's view of the root partition.
fn blkid(dev: &str, tag: &str) -> String {
    let o = Command::new("blkid").args(["-p", "-s", tag, "-o", "value", dev]).output().unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn edge_case_tree(name: &str) {
    let t = fs_type(name);
    if skip_without_tools(t) || skip_unless_root(&format!("{name} edge-case tree (chown, mknod, loop mount)")) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    edge_tree(&src, t);
    let out = tmp.path().join("out");
    let img = build_root_dir(&src, &out, name, &["--label", "edge"]);
    let r = root_fs(&out);
    assert_eq!(r["type"], name);
    assert_eq!(r["offset"], 1 << 20, "legacy layout: root at 1 MiB");
    let (offset, size) = (r["offset"].as_u64().unwrap(), r["size"].as_u64().unwrap());
    {
        let m = PartMount::new(&img, offset, size, name);
        assert_eq!(blkid(&m.dev, "TYPE"), name);
        if t.identity {
            assert_eq!(blkid(&m.dev, "LABEL"), "edge");
            assert_eq!(blkid(&m.dev, "UUID"), r["uuid"].as_str().unwrap());
        }
        compare_trees_with(&src, m.path(), &[], &Expect { sde: SDE, owner: None }, t.leeway);
        if name == "btrfs" {
            // The root folder as the kernel sees it.
            let md = fs::metadata(m.path()).unwrap();
            assert_eq!(md.mode() & 0o7777, 0o750, "root folder mode");
            assert_eq!((md.uid(), md.gid()), (1000, 100), "root folder owner");
            assert_eq!((md.mtime(), md.mtime_nsec() as u32), ROOT_MTIME, "root folder mtime");
            assert_eq!((md.atime(), md.ctime()), (SDE, SDE), "root folder atime, ctime");
        }
        if t.xattrs {
            assert_eq!(
                tool_in(m.path(), "getfattr", &["-d", "-h", "plain.txt", "a/b/c/deep.bin"]),
                tool_in(&src, "getfattr", &["-d", "-h", "plain.txt", "a/b/c/deep.bin"]),
                "user xattrs"
            );
        }
    }
    // The filesystem's own checker on the partition (the UUID of btrfs was set by us).
    let checker: Option<&[&str]> = match name {
        "xfs" => Some(&["xfs_repair", "-n"]),
        "btrfs" => Some(&["btrfs", "check", "--readonly"]),
        _ => None,
    };
    if let Some(cmd) = checker {
        let part = tmp.path().join("part.img");
        sh(&format!("dd if={} of={} bs=1M skip=1 status=none conv=sparse", img.display(), part.display()), tmp.path());
        let o = Command::new(cmd[0]).args(&cmd[1..]).arg(&part).output().unwrap();
        assert!(
            o.status.success(),
            "{cmd:?}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        if name == "btrfs" {
            btrfs_dump_checks(&part, r["uuid"].as_str().unwrap());
        }
    }
    // The staging folder is gone.
    let left: Vec<_> = fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.iter().all(|n| !n.to_string_lossy().starts_with('.')), "left behind in the output folder: {left:?}");

    if !t.reproducible {
        eprintln!("NOTE {name}: not byte-reproducible with this tool version (see external_fs); not compared");
        return;
    }
    // Again, from a copy of the source elsewhere whose inodes were made in reverse order,
    // with another TZ and umask and the output (and staging) on another filesystem
    // (/dev/shm is tmpfs): the same bytes.
    let shm = tempfile::tempdir_in("/dev/shm").unwrap_or_else(|_| tempfile::tempdir().unwrap());
    let src2 = shm.path().join("copy-of-source");
    reverse_copy(&src, &src2);
    let out2 = shm.path().join("out2");
    // Under another wall clock too, where faketime is installed (its clock reaches the
    // mkfs tools, which take times from it).
    let clock = if tool_exists("faketime") { "env NO_FAKE_STAT=1 faketime '2038-01-19 03:14:00' " } else { "" };
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 077; exec {clock}{} build --root-dir {} --fs-type {name} --partition-table-type legacy --source-date-epoch 1700000000 --additional-space 16M --label edge -o {}",
            bin(),
            src2.display(),
            out2.display()
        ))
        .env("TZ", "Pacific/Chatham")
        .env("SOURCE_DATE_EPOCH", "42")
        .output()
        .unwrap();
    assert!(o.status.success(), "second build: {}", String::from_utf8_lossy(&o.stderr));
    assert!(fs::read(&img).unwrap() == fs::read(out2.join("nixos.img")).unwrap(), "{name}: the two images differ");
}

/// What `btrfs inspect-internal` shows of a btrfs partition: no time from the clock, inode
/// times as the spec says, directory items' transid set, the identifiers consistent.
fn btrfs_dump_checks(part: &Path, fsid: &str) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!(now > SDE + 86_400, "the clock is before SOURCE_DATE_EPOCH: the time checks below would prove nothing");
    let run = |args: &[&str]| {
        let o = Command::new("btrfs").args(args).arg(part).output().unwrap();
        assert!(o.status.success(), "btrfs {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let sup = run(&["inspect-internal", "dump-super"]);
    let field = |name: &str| {
        sup.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_string()).unwrap_or_else(|| panic!("{name}"))
    };
    assert!(field("fsid").starts_with(fsid), "fsid");
    let dev_uuid = field("dev_item.uuid");
    assert!(dev_uuid != fsid && !dev_uuid.starts_with("00000000-"), "device UUID {dev_uuid}");
    let dump = run(&["inspect-internal", "dump-tree"]);
    let lines: Vec<&str> = dump.lines().map(str::trim).collect();
    let num = |s: &str| -> i64 { s.split('.').next().unwrap().parse().unwrap() };
    let after = |l: &str, word: &str| -> String {
        l.split_whitespace().skip_while(|w| *w != word).nth(1).unwrap_or_else(|| panic!("{word} in '{l}'")).to_string()
    };
    // Generation of every inode of the FS tree (printed first), for directory items.
    let fs_tree = lines.iter().position(|l| l.starts_with("fs tree key")).unwrap();
    let mut generations = std::collections::HashMap::new();
    let mut item = ("", "", "");
    let (mut times, mut entries, mut subvol_uuid, mut uuid_key) = (0, 0, None, None);
    for (i, l) in lines.iter().enumerate() {
        if let Some(rest) = l.strip_prefix("item ") {
            let key = rest.split_once("key (").unwrap().1.split_once(')').unwrap().0;
            let mut k = key.split(' ');
            item = (k.next().unwrap(), k.next().unwrap(), k.next().unwrap());
            if item.1 == "UUID_KEY_SUBVOL" {
                uuid_key = Some((item.0.to_string(), item.2.to_string()));
            }
            continue;
        }
        if item.1 == "INODE_ITEM" && l.starts_with("generation ") && i > fs_tree {
            generations.entry(item.0.to_string()).or_insert(after(l, "generation"));
        }
        for t in ["atime", "ctime", "mtime", "otime", "stime", "rtime"] {
            if let Some(v) = l.strip_prefix(t).and_then(|v| v.split_whitespace().next()) {
                let secs = num(v);
                times += 1;
                assert!(secs <= SDE, "{item:?}: {t} {v} is after SOURCE_DATE_EPOCH (from the clock)");
                let spec_time = item.1 == "INODE_ITEM" && t != "mtime"
                    || item == ("FS_TREE", "ROOT_ITEM", "0") && (t == "ctime" || t == "otime");
                if spec_time {
                    assert_eq!(v, format!("{SDE}.0"), "{item:?}: {t}");
                }
            }
        }
        if item == ("FS_TREE", "ROOT_ITEM", "0") && l.starts_with("uuid ") {
            subvol_uuid = Some(after(l, "uuid"));
        }
    }
    // Directory entries: transid = generation of the inode named.
    for w in lines.windows(2) {
        if let (Some(loc), true) = (w[0].strip_prefix("location key ("), w[1].starts_with("transid ")) {
            let target = loc.split(' ').next().unwrap();
            if loc.contains("INODE_ITEM") {
                if let Some(g) = generations.get(target) {
                    assert_eq!(&after(w[1], "transid"), g, "transid of the entry for inode {target}");
                    entries += 1;
                }
            }
        }
    }
    assert!(times > 50 && entries > 20, "{times} times, {entries} entries checked");
    // The UUID tree's key is the FS tree's subvolume UUID, halves read little-endian.
    let u = subvol_uuid.expect("FS tree ROOT_ITEM uuid").replace('-', "");
    assert!(u.chars().any(|c| c != '0'), "subvolume UUID");
    let half = |h: &str| {
        let b: Vec<String> = (0..8).rev().map(|i| h[2 * i..2 * i + 2].to_string()).collect();
        format!("0x{}", b.concat())
    };
    assert_eq!(uuid_key, Some((half(&u[..16]), half(&u[16..]))), "UUID tree key");
    // Every device UUID the chunk tree and superblock carry is the superblock's.
    assert!(dump.contains(&format!("dev_uuid {dev_uuid}")), "chunk stripes name the device");
    for l in dump.lines().chain(sup.lines()).filter(|l| l.trim().starts_with("dev_uuid ")) {
        assert_eq!(l.trim(), format!("dev_uuid {dev_uuid}"));
    }
}

#[test]
fn btrfs_edge_case_tree() {
    edge_case_tree("btrfs");
}

#[test]
fn xfs_edge_case_tree() {
    edge_case_tree("xfs");
}

#[test]
fn erofs_edge_case_tree() {
    edge_case_tree("erofs");
}

#[test]
fn squashfs_edge_case_tree() {
    edge_case_tree("squashfs");
}

/// Without root there is no loop mount for a fresh staging filesystem: btrfs is staged on
/// the output folder's filesystem, the manifest says the result is not reproducible and
/// why, and all the rest holds as with root.
#[test]
fn btrfs_without_root_is_not_reproducible_but_right() {
    let t = fs_type("btrfs");
    if skip_without_tools(t) || skip_unless_root("btrfs without root (setpriv drops root; loop mount)") {
        return;
    }
    if !tool_exists("setpriv") {
        skip(format_args!("btrfs without root: setpriv is not installed (apt-get install util-linux)"));
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    for d in ["one", "two/three", "four"] {
        fs::create_dir_all(src.join(d)).unwrap();
        for f in 0..8 {
            fs::write(src.join(d).join(format!("f{f}")), vec![b'x'; f * 3000]).unwrap();
        }
    }
    fs::set_permissions(&src, fs::Permissions::from_mode(0o751)).unwrap();
    set_mtime(&src, ROOT_MTIME.0, ROOT_MTIME.1);
    sh("chown -R 65534:65534 .", tmp.path());
    let out = tmp.path().join("out");
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--", bin(), "build", "--root-dir"])
        .arg(&src)
        .args(["--fs-type", "btrfs", "--partition-table-type", "none", "--source-date-epoch", &SDE.to_string(), "-o"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "build as nobody: {}", String::from_utf8_lossy(&o.stderr));
    let r = root_fs(&out);
    assert_eq!(r["reproducible"], false);
    let notes = r["notes"].to_string();
    assert!(notes.contains("not byte-reproducible") && notes.contains("needs root"), "{notes}");
    let img = out.join("nixos.img");
    let c = Command::new("btrfs").args(["check", "--readonly"]).arg(&img).output().unwrap();
    assert!(c.status.success(), "btrfs check: {}", String::from_utf8_lossy(&c.stdout));
    btrfs_dump_checks(&img, r["uuid"].as_str().unwrap());
    let m = PartMount::new(&img, 0, r["size"].as_u64().unwrap(), "btrfs");
    let md = fs::metadata(m.path()).unwrap();
    assert_eq!((md.mode() & 0o7777, md.uid(), md.gid()), (0o751, 65534, 65534), "root folder mode, owner");
    assert_eq!((md.mtime(), md.mtime_nsec() as u32), ROOT_MTIME, "root folder mtime");
    compare_trees_with(&src, m.path(), &[], &Expect { sde: SDE, owner: None }, t.leeway);
}

/// The tiny Nix corpus as a full image (store, Nix database, profiles) where the tool can
/// hold every name in it; else its clear error, and the store without those names.
fn tiny_corpus(name: &str) {
    let t = fs_type(name);
    if skip_without_tools(t) {
        return;
    }
    let Some(corpus) = corpus("tiny") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let system = fs::read_to_string(corpus.join("closure-info/toplevel")).unwrap();
    let (ci, store_root) = (corpus.join("closure-info"), corpus.join("root"));
    let args = [
        os("--closure-info"),
        ci.as_os_str(),
        os("--store-root"),
        store_root.as_os_str(),
        os("--system"),
        os(system.trim()),
        os("--install-boot-loader"),
        os("false"),
        os("--fs-type"),
        os(name),
        os("--partition-table-type"),
        os("legacy"),
        os("--additional-space"),
        os("16M"),
        os("--source-date-epoch"),
        os("1700000000"),
        os("-o"),
        out.as_os_str(),
    ];
    let store_src = corpus.join("root/nix/store");
    let paths = fs::read_to_string(corpus.join("closure-info/store-paths")).unwrap();
    if name == "xfs" || name == "erofs" {
        // Names of the edge-case path: with spaces (xfs prototype files) and of 255 bytes
        // (erofs-utils 1.5).
        let err = build_fails(&args);
        let why = if name == "xfs" { "cannot hold a name with spaces" } else { "255 bytes" };
        assert!(err.contains(why) && err.contains("-edge-cases/names/"), "{err}");
        assert!(!out.join("nixos.img").exists(), "no image after a failed build");
        // The same store without that folder, as a rootDir.
        let copy = tmp.path().join("store");
        sh(&format!("cp -a {} {}", store_src.display(), copy.display()), tmp.path());
        sh("chmod u+w *-edge-cases *-edge-cases/symlinks && rm -rf *-edge-cases/names", &copy);
        if name == "xfs" {
            // xfs holds symlink targets of up to 1024 bytes.
            sh("rm *-edge-cases/symlinks/len-4095", &copy);
        }
        let img = build_root_dir(&copy, &tmp.path().join("out2"), name, &[]);
        if skip_unless_root("loop mount of the corpus image") {
            return;
        }
        let r = root_fs(&tmp.path().join("out2"));
        let m = PartMount::new(&img, r["offset"].as_u64().unwrap(), r["size"].as_u64().unwrap(), name);
        compare_trees_with(&copy, m.path(), &[], &Expect { sde: SDE, owner: None }, t.leeway);
        return;
    }
    build(&args);
    if skip_unless_root("loop mount of the corpus image") {
        return;
    }
    let r = root_fs(&out);
    let m = PartMount::new(&out.join("nixos.img"), r["offset"].as_u64().unwrap(), r["size"].as_u64().unwrap(), name);
    for p in paths.lines() {
        let rel = p.trim_start_matches('/');
        compare_trees_with(
            &store_src.join(p.trim_start_matches("/nix/store/")),
            &m.path().join(rel),
            &[],
            &Expect { sde: SDE, owner: Some((0, 0)) },
            t.leeway,
        );
    }
    assert_eq!(fs::read_to_string(m.path().join("nix/var/nix/db/schema")).unwrap(), "10");
    assert_eq!(fs::read_link(m.path().join("nix/var/nix/profiles/system-1-link")).unwrap(), Path::new(system.trim()));
}

#[test]
fn btrfs_tiny_corpus() {
    tiny_corpus("btrfs");
}

#[test]
fn xfs_tiny_corpus() {
    tiny_corpus("xfs");
}

#[test]
fn erofs_tiny_corpus() {
    tiny_corpus("erofs");
}

#[test]
fn squashfs_tiny_corpus() {
    tiny_corpus("squashfs");
}

#[test]
fn missing_mkfs_is_a_clear_error_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), b"x").unwrap();
    // A PATH with none of the tools.
    let empty = tmp.path().join("empty-path");
    fs::create_dir(&empty).unwrap();
    for t in &TYPES {
        let out = tmp.path().join(format!("out-{}", t.name));
        let o = Command::new(bin())
            .args(["build", "--partition-table-type", "legacy", "--fs-type", t.name, "--root-dir"])
            .arg(&src)
            .arg("-o")
            .arg(&out)
            .env("PATH", &empty)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{}: built without its mkfs", t.name);
        let want = format!("fsType '{}' needs {}, which is not installed", t.name, t.mkfs);
        assert!(err.contains(&want) && err.contains(&format!("Debian package {}", t.package)), "{err}");
        let left: Vec<_> = fs::read_dir(&out).map(|d| d.map(|e| e.unwrap().file_name()).collect()).unwrap_or_default();
        assert!(left.is_empty(), "{}: left {left:?}", t.name);
    }
}

#[test]
fn labels_beyond_the_filesystems_limit_are_refused() {
    if !tool_exists("mkfs.xfs") {
        skip(format_args!("mkfs.xfs is not installed (apt-get install xfsprogs)"));
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    let err = build_fails(&[
        os("--root-dir"),
        src.as_os_str(),
        os("--fs-type"),
        os("xfs"),
        os("--label"),
        os("thirteen-char"),
        os("-o"),
        tmp.path().join("out").as_os_str(),
    ]);
    assert!(err.contains("label 'thirteen-char'") && err.contains("xfs's 12"), "{err}");
}

#[test]
fn vfat_root_passes_fsck_fat_and_mtools() {
    for tool in ["fsck.fat", "mtype"] {
        if !tool_exists(tool) {
            skip(format_args!("vfat root: {tool} is not installed (apt-get install dosfstools mtools)"));
            return;
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("dir/sub")).unwrap();
    fs::write(src.join("hello.txt"), b"hello vfat\n").unwrap();
    fs::write(src.join("dir/sub/Long File Name.bin"), vec![7u8; 100_000]).unwrap();
    let build_to = |out: &Path| {
        build(&[
            os("--root-dir"),
            src.as_os_str(),
            os("--fs-type"),
            os("vfat"),
            os("--partition-table-type"),
            os("none"),
            os("--additional-space"),
            os("1M"),
            os("-o"),
            out.as_os_str(),
        ]);
        out.join("nixos.img")
    };
    let out = tmp.path().join("out");
    let img = build_to(&out);
    let o = Command::new("fsck.fat").arg("-n").arg(&img).output().unwrap();
    assert!(o.status.success(), "fsck.fat -n: {}", String::from_utf8_lossy(&o.stdout));
    let i = img.to_str().unwrap();
    assert_eq!(tool_in(tmp.path(), "mtype", &["-i", i, "::/hello.txt"]), "hello vfat\n");
    let big = Command::new("mtype").args(["-i", i, "::/dir/sub/Long File Name.bin"]).output().unwrap();
    assert_eq!(big.stdout, vec![7u8; 100_000]);
    assert_eq!(root_fs(&out)["type"], "vfat");
    // Twice, the same bytes.
    assert!(fs::read(&img).unwrap() == fs::read(build_to(&tmp.path().join("out2"))).unwrap());
}
