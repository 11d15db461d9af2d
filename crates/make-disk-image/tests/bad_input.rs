//! docs/design.md §8: each bad input gets a clear error naming the input and the fix, a non-zero
//! exit, and nothing at the output path.

mod common;
use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The output folder holds nothing (it may not even exist).
fn nothing_at(out: &Path) {
    if let Ok(rd) = fs::read_dir(out) {
        let left: Vec<PathBuf> = rd.map(|e| e.unwrap().path()).collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }
}

fn fails(args: &[&str], out: &Path, expect: &[&str]) -> String {
    let mut a: Vec<&std::ffi::OsStr> = args.iter().map(|s| os(s)).collect();
    a.push(os("-o"));
    a.push(out.as_os_str());
    let err = build_fails(&a);
    for e in expect {
        assert!(err.contains(e), "error should mention {e:?}:\n{err}");
    }
    nothing_at(out);
    err
}

fn tiny_closure(dir: &Path, registration: &str) -> PathBuf {
    let ci = dir.join("closure-info");
    fs::create_dir_all(&ci).unwrap();
    fs::write(ci.join("store-paths"), "/nix/store/00000000000000000000000000000000-a\n").unwrap();
    fs::write(ci.join("registration"), registration).unwrap();
    ci
}

#[test]
fn missing_root_dir() {
    let t = tempfile::tempdir().unwrap();
    fails(
        &["--root-dir", "/nonexistent/tree", "--partition-table-type", "none"],
        &t.path().join("out"),
        &["rootDir '/nonexistent/tree'", "existing folder"],
    );
}

#[test]
fn missing_contents_source() {
    let t = tempfile::tempdir().unwrap();
    let spec = t.path().join("spec.json");
    fs::write(&spec, r#"{"partitionTableType":"none","contents":[{"source":"/nonexistent/file","target":"/etc/x"}]}"#)
        .unwrap();
    fails(&[spec.to_str().unwrap()], &t.path().join("out"), &["contents[0]", "/nonexistent/file"]);
}

#[test]
fn store_path_absent_under_store_root() {
    let t = tempfile::tempdir().unwrap();
    let reg = format!("/nix/store/00000000000000000000000000000000-a\nsha256:{}\n8\n\n0\n", "0".repeat(52));
    let ci = tiny_closure(t.path(), &reg);
    fails(
        &[
            "--closure-info",
            ci.to_str().unwrap(),
            "--store-root",
            t.path().to_str().unwrap(),
            "--only-nix-store",
            "true",
            "--partition-table-type",
            "none",
        ],
        &t.path().join("out"),
        &["00000000000000000000000000000000-a", "does not exist", "storeRoot"],
    );
}

#[test]
fn registration_that_does_not_parse() {
    let t = tempfile::tempdir().unwrap();
    let reg = format!("/nix/store/00000000000000000000000000000000-a\nsha256:{}\nnot-a-size\n\n0\n", "0".repeat(52));
    let ci = tiny_closure(t.path(), &reg);
    fails(
        &["--closure-info", ci.to_str().unwrap(), "--only-nix-store", "true", "--partition-table-type", "none"],
        &t.path().join("out"),
        &["registration:3:", "NAR size"],
    );
}

#[test]
fn contents_target_escaping_or_colliding() {
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join("f");
    fs::write(&f, "x").unwrap();
    let spec = t.path().join("escape.json");
    fs::write(
        &spec,
        format!(
            r#"{{"partitionTableType":"none","contents":[{{"source":"{}","target":"/etc/../../x"}}]}}"#,
            f.display()
        ),
    )
    .unwrap();
    fails(
        &[spec.to_str().unwrap()],
        &t.path().join("out"),
        &["contents[0]", "/etc/../../x", "not a valid path inside the image"],
    );
    let spec = t.path().join("collide.json");
    fs::write(
        &spec,
        format!(r#"{{"partitionTableType":"none","contents":[{{"source":"{0}","target":"/etc/x"}},{{"source":"{0}","target":"/etc/x"}}]}}"#, f.display()),
    )
    .unwrap();
    fails(&[spec.to_str().unwrap()], &t.path().join("out"), &["contents[1]", "duplicate entry /etc/x -> "]);
}

#[test]
fn unresolvable_user() {
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join("f");
    fs::write(&f, "x").unwrap();
    let spec = t.path().join("spec.json");
    fs::write(&spec, format!(r#"{{"partitionTableType":"none","contents":[{{"source":"{}","target":"/x","user":"alice","group":"users"}}]}}"#, f.display())).unwrap();
    fails(&[spec.to_str().unwrap()], &t.path().join("out"), &["user 'alice' cannot be resolved", "numeric id"]);
}

#[test]
fn disk_size_too_small_states_the_minimum() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("big"), vec![1u8; 40 << 20]).unwrap();
    let err = fails(
        &["--root-dir", src.to_str().unwrap(), "--partition-table-type", "none", "--disk-size", "16"],
        &t.path().join("out"),
        &["diskSize is too small", "at least"],
    );
    // The stated minimum really is enough.
    let need = err.split("set diskSize to at least ").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
    let out = t.path().join("ok");
    build(&[
        os("--root-dir"),
        src.as_os_str(),
        os("--partition-table-type"),
        os("none"),
        os("--disk-size"),
        os(&need),
        os("-o"),
        out.as_os_str(),
    ]);
    e2fsck_clean(&out.join("nixos.img"));
}

#[test]
fn unknown_key_flag_and_value() {
    let t = tempfile::tempdir().unwrap();
    let spec = t.path().join("spec.json");
    fs::write(&spec, r#"{"partitionTableTyp":"none"}"#).unwrap();
    fails(
        &[spec.to_str().unwrap()],
        &t.path().join("out"),
        &["unknown spec key 'partitionTableTyp'", "did you mean 'partitionTableType'"],
    );
    fails(&["--disk-sise", "auto"], &t.path().join("out"), &["unknown flag '--disk-sise'", "--disk-size"]);
    fails(&["--format", "qcow"], &t.path().join("out"), &["format", "'qcow' is not one of", "did you mean 'qcow2'"]);
}

#[test]
fn nixpkgs_assertions() {
    let t = tempfile::tempdir().unwrap();
    let spec = t.path().join("spec.json");
    fs::write(
        &spec,
        r#"{"onlyNixStore":true,"closureInfo":"/x","contents":[{"source":"/etc/hostname","target":"/h"}]}"#,
    )
    .unwrap();
    fails(&[spec.to_str().unwrap()], &t.path().join("out"), &["contents", "onlyNixStore"]);
}

#[test]
fn output_folder_not_writable() {
    let t = tempfile::tempdir().unwrap();
    let file = t.path().join("a-file");
    fs::write(&file, "x").unwrap();
    let out = file.join("out");
    let err = build_fails(&[os("-o"), out.as_os_str()]);
    assert!(err.contains("cannot create output folder") && err.contains("-o"), "{err}");
}

#[test]
fn disk_full_while_writing() {
    if skip_unless_root("disk full (mounts a small tmpfs)") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("data"), vec![0x5au8; 24 << 20]).unwrap();
    let small = t.path().join("small");
    fs::create_dir(&small).unwrap();
    assert!(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap()
        .success());
    let out = small.join("out");
    let res = std::panic::catch_unwind(|| {
        fails(
            &["--root-dir", src.to_str().unwrap(), "--partition-table-type", "none"],
            &out,
            &["No space left on device", "choose another output folder with -o"],
        );
    });
    Command::new("umount").arg(&small).status().unwrap();
    res.unwrap();
}

#[test]
fn interrupted_build_leaves_nothing() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    // Enough non-zero data that the build is still running when the signal comes.
    let chunk = vec![0xa5u8; 1 << 20];
    let mut f = fs::File::create(src.join("big")).unwrap();
    for _ in 0..1536 {
        std::io::Write::write_all(&mut f, &chunk).unwrap();
    }
    drop(f);
    let out = t.path().join("out");
    let child = Command::new(bin())
        .args(["build", "--partition-table-type", "none", "--root-dir"])
        .arg(&src)
        .arg("-o")
        .arg(&out)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the partial image exists, then interrupt.
    for _ in 0..500 {
        if fs::read_dir(&out).map(|mut d| d.next().is_some()).unwrap_or(false) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Command::new("kill").arg("-INT").arg(child.id().to_string()).status().unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(!o.status.success(), "build finished before the interrupt; make the input bigger");
    assert!(String::from_utf8_lossy(&o.stderr).contains("interrupted"), "{}", String::from_utf8_lossy(&o.stderr));
    nothing_at(&out);
}

// ---- Issue 13: hostile trees and extreme sizes. Each reproduction from the issue, with
// e2fsck -fn, the kernel (loop mount, as root) or qemu-img check as the oracle.

fn none_args<'a>(tree: &'a Path, out: &'a Path) -> Vec<&'a std::ffi::OsStr> {
    vec![os("--root-dir"), tree.as_os_str(), os("--partition-table-type"), os("none"), os("-o"), out.as_os_str()]
}

#[test]
fn root_dir_given_as_a_symlink_is_followed() {
    // Nix's ./result is a symlink to the folder: the root must be the folder.
    let t = tempfile::tempdir().unwrap();
    let tree = t.path().join("t");
    fs::create_dir(&tree).unwrap();
    fs::write(tree.join("a"), "hello\n").unwrap();
    std::os::unix::fs::symlink("t", t.path().join("link")).unwrap();
    let out = t.path().join("o");
    build(&none_args(&t.path().join("link"), &out));
    let img = out.join("nixos.img");
    e2fsck_clean(&img);
    let stat = tool_in(t.path(), "debugfs", &["-R", "stat /", img.to_str().unwrap()]);
    assert!(stat.contains("Type: directory"), "root inode is not a directory:\n{stat}");
    if !skip_unless_root("mounting the image") {
        let m = Mount::new(&img);
        assert_eq!(fs::read_to_string(m.path().join("a")).unwrap(), "hello\n");
    }
}

#[test]
fn lost_found_that_is_not_a_folder_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let tree = t.path().join("t");
    fs::create_dir(&tree).unwrap();
    fs::write(tree.join("lost+found"), "data\n").unwrap();
    fails(
        &["--root-dir", tree.to_str().unwrap(), "--partition-table-type", "none"],
        &t.path().join("out"),
        &["'/lost+found'", "regular file", "rename or remove it"],
    );
    // A folder of that name is the filesystem's lost+found, as before.
    fs::remove_file(tree.join("lost+found")).unwrap();
    fs::create_dir(tree.join("lost+found")).unwrap();
    let out = t.path().join("out2");
    build(&none_args(&tree, &out));
    e2fsck_clean(&out.join("nixos.img"));
}

#[test]
fn more_hard_links_than_ext4_holds_are_refused() {
    // The source needs more links than ext4 allows: tmpfs has no such limit.
    let Ok(t) = tempfile::tempdir_in("/dev/shm") else {
        skip("more_hard_links_than_ext4_holds_are_refused: no /dev/shm (tmpfs) for a file with 65001 names");
        return;
    };
    let tree = t.path().join("t");
    fs::create_dir(&tree).unwrap();
    fs::write(tree.join("f"), "x").unwrap();
    for i in 1..65000 {
        fs::hard_link(tree.join("f"), tree.join(format!("l{i}"))).unwrap();
    }
    // 65000 names: the limit itself is fine.
    let ok = t.path().join("ok");
    build(&none_args(&tree, &ok));
    e2fsck_clean(&ok.join("nixos.img"));
    fs::hard_link(tree.join("f"), tree.join("one-too-many")).unwrap();
    fails(
        &["--root-dir", tree.to_str().unwrap(), "--partition-table-type", "none"],
        &t.path().join("out"),
        &["'/f'", "65001 hard links", "65000"],
    );
}

#[test]
fn sizes_beyond_every_limit_are_refused_exactly() {
    let t = tempfile::tempdir().unwrap();
    let tree = t.path().join("t");
    fs::create_dir(&tree).unwrap();
    fs::write(tree.join("a"), "x").unwrap();
    let tr = tree.to_str().unwrap();
    let cases: &[(&[&str], &[&str])] = &[
        // Was an allocation abort (exit 134).
        (&["--disk-size", "1E"], &["diskSize", "64 TiB"]),
        // Was wrapped to 0 bytes.
        (&["--disk-size", "17592186044416"], &["diskSize", "17592186044416 MiB", "64-bit"]),
        (&["--disk-size", "99999999999999999999"], &["diskSize"]),
        (&["--disk-size", "65T", "--format", "qcow2"], &["diskSize", "64 TiB"]),
        (&["--disk-size", "3T", "--format", "vmdk"], &["diskSize", "format 'vmdk'"]),
        (&["--disk-size", "3T", "--format", "vpc"], &["diskSize", "format 'vpc'"]),
        (&["--disk-size", "65T", "--format", "vhdx"], &["diskSize", "format 'vhdx'"]),
        (&["--additional-space", "1E"], &["additionalSpace", "64 TiB"]),
        (&["--boot-size", "16E"], &["bootSize"]),
    ];
    for (i, (extra, expect)) in cases.iter().enumerate() {
        let mut a = vec!["--root-dir", tr, "--partition-table-type", "none"];
        a.extend_from_slice(extra);
        let err = fails(&a, &t.path().join(format!("out{i}")), expect);
        assert!(!err.contains("panicked") && !err.contains("memory allocation"), "{extra:?}: {err}");
    }
}

#[test]
fn raw_image_larger_than_the_output_filesystem_holds_gets_the_right_hint() {
    let t = tempfile::tempdir().unwrap();
    let tree = t.path().join("t");
    fs::create_dir(&tree).unwrap();
    fs::write(tree.join("a"), "x").unwrap();
    // ext4's largest file is 16 TiB - 4 KiB; other filesystems take it and the build
    // goes on to write a sparse 16 TiB file, so only ext4 is checked.
    let fs_type = Command::new("stat").args(["-f", "-c", "%T"]).arg(t.path()).output().unwrap();
    if String::from_utf8_lossy(&fs_type.stdout).trim() != "ext2/ext3" {
        skip("the temporary folder is not on ext4");
        return;
    }
    let err = fails(
        &["--root-dir", tree.to_str().unwrap(), "--partition-table-type", "none", "--disk-size", "16T"],
        &t.path().join("out"),
        &["diskSize", "largest file", "qcow2"],
    );
    assert!(!err.contains("free space"), "{err}");
}

#[test]
fn sixty_four_tib_qcow2_has_a_correct_superblock() {
    // Was s_inodes_count = 0 ("superblock is corrupt"): the inode count is capped to
    // 32 bits. The whole filesystem cannot be checked here (3 GiB of metadata behind
    // qemu-img); its superblock and group descriptors can.
    let t = tempfile::tempdir().unwrap();
    let tree = t.path().join("t");
    fs::create_dir(&tree).unwrap();
    fs::write(tree.join("a"), "x").unwrap();
    let out = t.path().join("o");
    let mut a = none_args(&tree, &out);
    a.extend([os("--format"), os("qcow2"), os("--disk-size"), os("64T")]);
    build(&a);
    let img = out.join("nixos.qcow2");
    let check = Command::new("qemu-img").arg("check").arg(&img).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));
    let head = t.path().join("head.raw");
    let dd = Command::new("qemu-img")
        .args(["dd", "-f", "qcow2", "-O", "raw", "bs=1M", "count=1"])
        .arg(format!("if={}", img.display()))
        .arg(format!("of={}", head.display()))
        .status()
        .unwrap();
    assert!(dd.success());
    let d = tool_in(t.path(), "dumpe2fs", &["-h", head.to_str().unwrap()]);
    let field = |k: &str| -> u64 {
        d.lines()
            .find(|l| l.starts_with(k))
            .unwrap_or_else(|| panic!("{k} in\n{d}"))
            .split(':')
            .nth(1)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let (inodes, blocks, ipg) = (field("Inode count"), field("Block count"), field("Inodes per group"));
    assert_eq!(blocks, 1 << 34);
    assert!(inodes > 0 && inodes <= u64::from(u32::MAX), "inode count {inodes}");
    assert_eq!(inodes, ipg * (blocks / 32768));
}

#[test]
fn trees_deeper_than_path_max_build() {
    // 2000 levels, 18 KB paths: mkfs.ext4 -d builds them, so must we.
    let t = tempfile::tempdir().unwrap();
    let tree = t.path().join("deep");
    fs::create_dir(&tree).unwrap();
    // Made by a shell stepping down with relative `cd`s, since the whole paths are too
    // long for the kernel: 10 × `mkdir -p` of 200 levels.
    let names: Vec<String> = (0..2000).map(|i| format!("d{i:07}")).collect();
    let script: String =
        names.chunks(200).map(|c| format!("mkdir -p {p} && cd {p} && ", p = c.join("/"))).collect::<String>()
            + "echo 'deep data' > leaf";
    // bash, whose `cd` falls back to a relative chdir when the logical path is too long.
    let st = Command::new("bash").arg("-c").arg(script).current_dir(&tree).status().unwrap();
    assert!(st.success());
    let out = t.path().join("o");
    build(&none_args(&tree, &out));
    let img = out.join("nixos.img");
    e2fsck_clean(&img);
    let path = format!("/{}/leaf", names.join("/"));
    let cat = tool_in(t.path(), "debugfs", &["-R", &format!("cat {path}"), img.to_str().unwrap()]);
    assert!(cat.contains("deep data"), "{cat}");
}

#[test]
fn too_small_error_gives_the_true_minimum() {
    // The issue's case: a 120 MB file. Was "at least 125" with 125, 126 failing, 127
    // working, 128-138 failing.
    let t = tempfile::tempdir().unwrap();
    let tree = t.path().join("t");
    fs::create_dir(&tree).unwrap();
    let mut x = 1u64;
    let data: Vec<u8> = (0..120_000_000u32)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 56) as u8
        })
        .collect();
    fs::write(tree.join("f"), data).unwrap();
    let tr = tree.to_str().unwrap();
    for layout in ["none", "legacy", "legacy+gpt"] {
        let at = |mib: u64| -> std::process::Output {
            let out = t.path().join(format!("o-{layout}-{mib}"));
            let o = Command::new(bin())
                .args([
                    "build",
                    "--root-dir",
                    tr,
                    "--partition-table-type",
                    layout,
                    "--disk-size",
                    &mib.to_string(),
                    "-o",
                ])
                .arg(&out)
                .output()
                .unwrap();
            if o.status.success() {
                e2fsck_root(&out);
            }
            let _ = fs::remove_dir_all(&out);
            o
        };
        let err = String::from_utf8_lossy(&at(100).stderr).into_owned();
        let min = minimum_in(&err);
        assert!(at(min).status.success(), "{layout}: {min} MiB, the stated minimum, fails");
        assert!(!at(min - 1).status.success(), "{layout}: {} MiB works, below the stated minimum", min - 1);
        // Bigger sizes keep working (was: 128-138 failing after 127 worked).
        for more in [1, 2, 9, 10, 11, 20] {
            assert!(at(min + more).status.success(), "{layout}: {} MiB fails above the minimum", min + more);
        }
    }
}

/// The N of "set diskSize to at least N (MiB)".
pub fn minimum_in(err: &str) -> u64 {
    let key = "set diskSize to at least ";
    let i = err.find(key).unwrap_or_else(|| panic!("no minimum in: {err}")) + key.len();
    err[i..].split(' ').next().unwrap().parse().unwrap_or_else(|_| panic!("no minimum in: {err}"))
}
