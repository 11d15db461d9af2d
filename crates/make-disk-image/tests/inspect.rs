//! Issue 7: `inspect` and `diff`, checked against real tools. `inspect --json` of every
//! layout matches `sfdisk --json` (table and partitions), `blkid -p` (type, label, UUID,
//! version of each filesystem), `dumpe2fs -h` (ext4 label, UUID, counts, features),
//! `fsck.fat -n -v` and `minfo` (FAT type, clusters, serial, label); `--ls` and `--cat`
//! match the source tree; every format (ours and qemu-img's) inspects like the raw image;
//! `diff` names exactly the one difference between two builds, and finds an image and its
//! conversion identical.

mod common;
use common::*;
use serde_json::Value;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

fn run(cmd: &str, args: &[&str]) -> (bool, String) {
    let o =
        Command::new(cmd).args(args).env("MTOOLS_SKIP_CHECK", "1").output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

/// A source tree: files with several modes, a symlink, a nested folder, boot files.
fn source(dir: &Path, hostname: &str, mode: u32) -> PathBuf {
    let root = dir.join("root");
    fs::create_dir_all(root.join("etc/nested/deeper")).unwrap();
    fs::create_dir_all(root.join("boot/EFI/BOOT")).unwrap();
    fs::create_dir_all(root.join("boot/loader/entries")).unwrap();
    fs::write(root.join("etc/hostname"), hostname).unwrap();
    fs::write(root.join("etc/nested/deeper/data"), (0..100_000u32).map(|i| (i % 251) as u8).collect::<Vec<u8>>())
        .unwrap();
    fs::write(root.join("etc/secret"), "s3cret\n").unwrap();
    fs::set_permissions(root.join("etc/secret"), fs::Permissions::from_mode(mode)).unwrap();
    std::os::unix::fs::symlink("hostname", root.join("etc/link")).unwrap();
    fs::write(root.join("boot/EFI/BOOT/BOOTX64.EFI"), vec![0x5A; 70_000]).unwrap();
    fs::write(root.join("boot/loader/entries/nixos-generation-1.conf"), "title NixOS\n").unwrap();
    root
}

/// Builds `ptt` from `root`; returns the image path.
fn build_image(dir: &Path, root: &Path, ptt: &str, extra: &[&str]) -> PathBuf {
    let out = dir.join(format!("out-{}", ptt.replace('+', "-")));
    let boot = if ptt == "efixbootldr" { "140M" } else { "64M" };
    let mut args: Vec<&str> = vec![
        "--partition-table-type",
        ptt,
        "--root-dir",
        p(root),
        "--boot-size",
        boot,
        "--additional-space",
        "8M",
        "--source-date-epoch",
        "1700000000",
    ];
    args.extend_from_slice(extra);
    args.extend(["-o", p(&out)]);
    let os_args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    build(&os_args);
    fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|x| x.file_stem().is_some_and(|s| s == "nixos") && x.extension().is_some_and(|e| e != "json"))
        .unwrap()
}

fn field<'a>(text: &'a str, name: &str) -> &'a str {
    text.lines().find_map(|l| l.strip_prefix(name)).map(str::trim).unwrap_or_else(|| panic!("no '{name}' in:\n{text}"))
}

/// Checks one filesystem of the `inspect` report against blkid, dumpe2fs, fsck.fat, minfo.
fn check_fs(img: &Path, f: &Value, tmp: &Path) {
    let off = f["offset"].as_u64().unwrap();
    let (ok, id) = run("blkid", &["-p", "-o", "export", "-O", &off.to_string(), p(img)]);
    assert!(ok, "blkid: {id}");
    let kv = |k: &str| id.lines().find_map(|l| l.strip_prefix(&format!("{k}="))).unwrap_or("").to_string();
    assert_eq!(f["type"], kv("TYPE").as_str(), "blkid TYPE at {off}: {id}");
    assert_eq!(f["label"], kv("LABEL").as_str(), "blkid LABEL at {off}");
    assert_eq!(f["uuid"], kv("UUID").as_str(), "blkid UUID at {off}");
    assert_eq!(f["version"], kv("VERSION").as_str(), "blkid VERSION at {off}");
    match f["type"].as_str().unwrap() {
        "ext4" => {
            let (ok, d) = run("dumpe2fs", &["-h", &format!("{}?offset={off}", p(img))]);
            assert!(ok, "dumpe2fs: {d}");
            assert_eq!(f["label"], field(&d, "Filesystem volume name:"));
            assert_eq!(f["uuid"], field(&d, "Filesystem UUID:"));
            assert_eq!(f["blocks"].to_string(), field(&d, "Block count:"));
            assert_eq!(f["freeBlocks"].to_string(), field(&d, "Free blocks:"));
            assert_eq!(f["inodes"].to_string(), field(&d, "Inode count:"));
            assert_eq!(f["freeInodes"].to_string(), field(&d, "Free inodes:"));
            assert_eq!(f["blockSize"].to_string(), field(&d, "Block size:"));
            let features: Vec<&str> = f["features"].as_array().unwrap().iter().map(|x| x.as_str().unwrap()).collect();
            assert_eq!(features.join(" "), field(&d, "Filesystem features:"));
        }
        "vfat" => {
            // fsck.fat reads a file: copy the partition out (sparse).
            let size = f["size"].as_u64().unwrap();
            let part = tmp.join(format!("fat-{off}"));
            let (ok, e) = run(
                "dd",
                &[
                    &format!("if={}", p(img)),
                    &format!("of={}", p(&part)),
                    "bs=512",
                    &format!("skip={}", off / 512),
                    &format!("count={}", size / 512),
                    "conv=sparse",
                    "status=none",
                ],
            );
            assert!(ok, "dd: {e}");
            let (ok, v) = run("fsck.fat", &["-n", "-v", p(&part)]);
            assert!(ok, "fsck.fat: {v}");
            let per_cluster = v.lines().find(|l| l.trim_end().ends_with("bytes per cluster")).unwrap();
            assert_eq!(f["blockSize"].to_string(), per_cluster.split_whitespace().next().unwrap(), "{v}");
            let data = v.lines().find(|l| l.contains("data clusters")).unwrap();
            assert_eq!(f["blocks"].to_string(), data.split_whitespace().next().unwrap(), "{v}");
            // "<file>: N files, USED/TOTAL clusters"
            let summary = v.lines().last().unwrap();
            let used_total = summary.rsplit(", ").next().unwrap().trim_end_matches(" clusters");
            let (used, total) = used_total.split_once('/').unwrap();
            assert_eq!(f["blocks"].to_string(), total);
            let used: u64 = used.parse().unwrap();
            assert_eq!(f["used"].as_u64().unwrap(), used * f["blockSize"].as_u64().unwrap(), "{summary}");
            let (ok, m) = run("minfo", &["-i", &format!("{}@@{off}", p(img)), "::"]);
            assert!(ok, "minfo: {m}");
            let serial = field(&m, "serial number:");
            assert_eq!(f["uuid"].as_str().unwrap().replace('-', ""), serial);
            assert_eq!(f["label"], field(&m, "disk label=").trim_matches('"').trim_end());
            assert_eq!(f["version"], field(&m, "disk type=").trim_matches('"').trim_end());
            fs::remove_file(&part).unwrap();
        }
        other => panic!("unexpected filesystem {other}"),
    }
}

#[test]
fn inspect_matches_sfdisk_blkid_dumpe2fs_and_fsck_fat_for_every_layout() {
    let t = tempfile::tempdir().unwrap();
    let root = source(t.path(), "box\n", 0o600);
    for ptt in ["none", "legacy", "legacy+boot", "legacy+gpt", "efi", "efixbootldr", "hybrid"] {
        let img = build_image(t.path(), &root, ptt, &[]);
        let v = inspect_json(&img, &[]);
        assert_eq!(v["image"]["format"], "raw");
        assert_eq!(v["image"]["virtualSize"].as_u64().unwrap(), fs::metadata(&img).unwrap().len());
        let fss = v["filesystems"].as_array().unwrap();
        if ptt == "none" {
            assert!(v["partitionTable"].is_null(), "{ptt}: {v}");
            assert_eq!(fss.len(), 1);
        } else {
            let (ok, out) = run("sfdisk", &["--json", p(&img)]);
            assert!(ok, "sfdisk: {out}");
            let sf: Value = serde_json::from_str(&out).unwrap();
            let (st, ours) = (&sf["partitiontable"], &v["partitionTable"]);
            assert_eq!(ours["type"], st["label"], "{ptt}");
            assert_eq!(ours["id"], st["id"], "{ptt}");
            if st["label"] == "gpt" {
                assert_eq!(ours["firstLba"], st["firstlba"], "{ptt}");
                assert_eq!(ours["lastLba"], st["lastlba"], "{ptt}");
            }
            let (a, b) = (ours["partitions"].as_array().unwrap(), st["partitions"].as_array().unwrap());
            assert_eq!(a.len(), b.len(), "{ptt}: {ours} vs {st}");
            for (x, y) in a.iter().zip(b) {
                let node = y["node"].as_str().unwrap();
                assert!(node.ends_with(&x["number"].to_string()), "{ptt}: {node} vs {x}");
                for k in ["start", "size", "type"] {
                    assert_eq!(x[k], y[k], "{ptt} partition {}: {k}", x["number"]);
                }
                if st["label"] == "gpt" {
                    assert_eq!(x["uuid"], y["uuid"], "{ptt} partition {}: uuid", x["number"]);
                    assert_eq!(x["name"], y["name"], "{ptt} partition {}: name", x["number"]);
                } else {
                    assert_eq!(
                        x["bootable"].as_bool().unwrap(),
                        y["bootable"].as_bool().unwrap_or(false),
                        "{ptt}: bootable"
                    );
                }
            }
            // Each partition with a filesystem shows up in "filesystems".
            let with_fs = fss.iter().filter(|f| !f["type"].is_null()).count();
            let expect = match ptt {
                "legacy" | "legacy+gpt" => 1,
                "efixbootldr" => 3,
                _ => 2,
            };
            assert_eq!(with_fs, expect, "{ptt}: {fss:?}");
        }
        for f in fss.iter().filter(|f| !f["type"].is_null()) {
            assert!(f["problems"].as_array().unwrap().is_empty(), "{ptt}: {f}");
            check_fs(&img, f, t.path());
        }
        // The human form names the same things.
        let (code, text, err) = mdi(&["inspect", p(&img)]);
        assert_eq!(code, 0, "{err}");
        for f in fss.iter().filter(|f| !f["type"].is_null()) {
            assert!(text.contains(f["uuid"].as_str().unwrap()), "{ptt}: {text}");
        }
        fs::remove_dir_all(img.parent().unwrap()).unwrap();
    }
}

#[test]
fn ls_and_cat_match_the_source_tree() {
    let t = tempfile::tempdir().unwrap();
    let root = source(t.path(), "box\n", 0o600);
    let img = build_image(t.path(), &root, "efi", &[]);
    for dir in ["/etc", "/etc/nested/deeper", "/"] {
        let v = inspect_json(&img, &["--ls", dir]);
        let entries = v["ls"]["entries"].as_array().unwrap();
        let mut want: Vec<String> = fs::read_dir(root.join(dir.trim_start_matches('/')))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        if dir == "/" {
            want.push("lost+found".into());
        }
        want.sort();
        let got: Vec<&str> = entries.iter().map(|e| e["name"].as_str().unwrap()).collect();
        assert_eq!(got, want, "--ls {dir}");
        for e in entries.iter().filter(|e| e["name"] != "lost+found") {
            let src = root.join(e["path"].as_str().unwrap().trim_start_matches('/'));
            let md = fs::symlink_metadata(&src).unwrap();
            assert_eq!(e["mode"].as_str().unwrap(), format!("{:04o}", md.mode() & 0o7777), "{src:?}");
            if md.is_file() {
                assert_eq!(e["size"].as_u64().unwrap(), md.len(), "{src:?}");
                assert_eq!(e["type"], "file");
            }
            if md.is_symlink() {
                assert_eq!(e["target"].as_str().unwrap(), fs::read_link(&src).unwrap().to_str().unwrap());
            }
        }
    }
    for (spec, src) in [
        ("/etc/hostname", root.join("etc/hostname")),
        ("2:/etc/nested/deeper/data", root.join("etc/nested/deeper/data")),
        ("ESP:/EFI/BOOT/BOOTX64.EFI", root.join("boot/EFI/BOOT/BOOTX64.EFI")),
        ("1:/loader/entries/nixos-generation-1.conf", root.join("boot/loader/entries/nixos-generation-1.conf")),
    ] {
        let o = Command::new(bin()).args(["inspect", p(&img), "--cat", spec]).output().unwrap();
        assert!(o.status.success(), "--cat {spec}: {}", String::from_utf8_lossy(&o.stderr));
        assert!(o.stdout == fs::read(&src).unwrap(), "--cat {spec} differs from {src:?}");
    }
    // The FAT listing, by GPT name.
    let v = inspect_json(&img, &["--ls", "ESP:/EFI/BOOT"]);
    assert_eq!(v["ls"]["entries"][0]["name"], "BOOTX64.EFI");
    assert_eq!(v["ls"]["entries"][0]["size"], 70_000);
    // Bad paths are clear errors.
    let (code, _, err) = mdi(&["inspect", p(&img), "--cat", "/etc/nope"]);
    assert!(code != 0 && err.contains("not found"), "{err}");
    let (code, _, err) = mdi(&["inspect", p(&img), "--ls", "9:/"]);
    assert!(code != 0 && err.contains("no partition"), "{err}");
    let (code, _, err) = mdi(&["inspect", p(&t.path().join("missing.img"))]);
    assert!(code != 0 && err.contains("missing.img"), "{err}");
}

/// The report without what depends on the container.
fn inner(v: &Value) -> Value {
    let mut v = v.clone();
    v.as_object_mut().unwrap().remove("image");
    v
}

#[test]
fn every_format_inspects_like_raw_and_diff_finds_conversions_identical() {
    let t = tempfile::tempdir().unwrap();
    let root = source(t.path(), "box\n", 0o600);
    let raw = build_image(t.path(), &root, "hybrid", &[]);
    let base = inspect_json(&raw, &[]);
    let mut images = Vec::new();
    for (fmt, opts) in [
        ("qcow2", "{}"),
        ("qcow2-compressed", "{}"),
        ("vdi", "{}"),
        ("vpc", "{}"),
        ("vpc", r#"{"subformat":"fixed"}"#),
        ("vmdk", "{}"),
        ("vmdk", r#"{"subformat":"streamOptimized"}"#),
        ("vhdx", "{}"),
    ] {
        let out = t.path().join(format!("ours-{fmt}-{}.img", images.len()));
        let (code, _, err) = mdi(&["convert", p(&raw), p(&out), "--format", fmt, "--format-options", opts]);
        assert_eq!(code, 0, "convert {fmt}: {err}");
        images.push((format!("ours {fmt} {opts}"), out));
    }
    if tool_exists("qemu-img") {
        for (fmt, extra) in
            [("qcow2", ""), ("vdi", ""), ("vpc", ""), ("vmdk", "subformat=streamOptimized"), ("vhdx", "")]
        {
            let out = t.path().join(format!("qemu-{fmt}-{}.img", images.len()));
            let mut args = vec!["convert", "-f", "raw", "-O", fmt];
            if !extra.is_empty() {
                args.extend(["-o", extra]);
            }
            args.extend([p(&raw), p(&out)]);
            let (ok, e) = run("qemu-img", &args);
            assert!(ok, "qemu-img {fmt}: {e}");
            images.push((format!("qemu-img {fmt}"), out));
        }
    } else {
        skip(format_args!("images written by qemu-img: qemu-img is not installed (apt-get install qemu-utils)"));
    }
    for (what, img) in &images {
        let v = inspect_json(img, &[]);
        assert_ne!(v["image"]["format"], "raw", "{what}");
        assert!(!v["image"]["header"].as_array().unwrap().is_empty(), "{what}: header fields");
        // qemu-img rounds VHD sizes to its CHS geometry: compare what is inside the table.
        if what.contains("qemu-img vpc") {
            assert_eq!(v["filesystems"], base["filesystems"], "{what}");
            continue;
        }
        assert_eq!(inner(&v), inner(&base), "{what}");
        let (code, out, err) = mdi(&["diff", p(&raw), p(img)]);
        assert_eq!(code, 0, "diff raw vs {what}: {out}{err}");
        assert!(out.contains("identical") && out.contains("formats differ"), "{out}");
    }
}

fn diff_lines(a: &Path, b: &Path) -> (i32, Vec<Value>) {
    let (code, out, err) = mdi(&["diff", p(a), p(b), "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
    (code, v["differences"].as_array().unwrap().clone())
}

#[test]
fn diff_names_exactly_the_one_difference() {
    let t = tempfile::tempdir().unwrap();
    let build_in = |name: &str, host: &str, mode: u32, extra: &[&str]| {
        let d = t.path().join(name);
        fs::create_dir_all(&d).unwrap();
        let root = source(&d, host, mode);
        build_image(&d, &root, "efi", extra)
    };
    let base = build_in("base", "box\n", 0o600, &[]);
    let same = build_in("same", "box\n", 0o600, &[]);
    let (code, d) = diff_lines(&base, &same);
    assert_eq!((code, d.len()), (0, 0), "{d:?}");

    // One file's content (same length).
    let content = build_in("content", "bot\n", 0o600, &[]);
    let (code, d) = diff_lines(&base, &content);
    assert_eq!((code, d.len()), (1, 1), "{d:?}");
    assert_eq!(
        (d[0]["level"].as_str(), d[0]["place"].as_str()),
        (Some("file"), Some("partition 2 (ext4) /etc/hostname"))
    );
    assert!(d[0]["what"].as_str().unwrap().starts_with("content (first difference at byte 2)"), "{d:?}");

    // One file's mode.
    let mode = build_in("mode", "box\n", 0o640, &[]);
    let (code, d) = diff_lines(&base, &mode);
    assert_eq!((code, d.len()), (1, 1), "{d:?}");
    assert_eq!(d[0]["place"], "partition 2 (ext4) /etc/secret");
    assert_eq!(
        (d[0]["what"].as_str(), d[0]["a"].as_str(), d[0]["b"].as_str()),
        (Some("mode"), Some("0600"), Some("0640"))
    );

    // One GUID: the root partition's (the filesystem UUID kept).
    let guid = "11111111-2222-4333-8444-555555555555";
    let other = build_in(
        "guid",
        "box\n",
        0o600,
        &["--root-gpuid", guid, "--root-fsuid", "F222513B-DED1-49FA-B591-20CE86A2FE7F"],
    );
    let (code, d) = diff_lines(&base, &other);
    assert_eq!((code, d.len()), (1, 1), "{d:?}");
    assert_eq!((d[0]["place"].as_str(), d[0]["what"].as_str()), (Some("partition 2"), Some("GUID")));
    assert_eq!(d[0]["b"], guid.to_uppercase());

    // One format header field: the same disk converted with two seeds.
    let (a, b) = (t.path().join("a.vdi"), t.path().join("b.vdi"));
    for (out, seed) in [(&a, "00000000-0000-4000-8000-000000000001"), (&b, "00000000-0000-4000-8000-000000000002")] {
        let (code, _, err) = mdi(&["convert", p(&base), p(out), "--format", "vhdx", "--seed", seed]);
        assert_eq!(code, 0, "{err}");
    }
    let (code, d) = diff_lines(&a, &b);
    assert_eq!(code, 1);
    assert!(!d.is_empty() && d.iter().all(|x| x["level"] == "header" && x["place"] == "vhdx header"), "{d:?}");
    let named: Vec<&str> = d.iter().map(|x| x["what"].as_str().unwrap()).collect();
    assert_eq!(named, ["FileWriteGuid", "DataWriteGuid", "VirtualDiskId"], "{d:?}");
    // ...and one header field alone: the VHD unique id.
    let (c, e) = (t.path().join("c.vhd"), t.path().join("e.vhd"));
    for (out, seed) in [(&c, "00000000-0000-4000-8000-000000000001"), (&e, "00000000-0000-4000-8000-000000000002")] {
        let (code, _, err) = mdi(&["convert", p(&base), p(out), "--format", "vpc", "--seed", seed]);
        assert_eq!(code, 0, "{err}");
    }
    let (code, d) = diff_lines(&c, &e);
    assert_eq!((code, d.len()), (1, 1), "{d:?}");
    assert_eq!((d[0]["place"].as_str(), d[0]["what"].as_str()), (Some("vpc header"), Some("unique_id")));

    // The image and its conversion: identical; the human form says so.
    let (code, out, _) = mdi(&["diff", p(&base), p(&c)]);
    assert_eq!(code, 0, "{out}");
    // Free-space garbage no file explains is still found.
    let mut bytes = fs::read(&base).unwrap();
    let v = inspect_json(&base, &[]);
    let root_fs = &v["filesystems"][1];
    let at = (root_fs["offset"].as_u64().unwrap() + root_fs["size"].as_u64().unwrap() - 8192) as usize;
    bytes[at] = 0x77;
    let garbage = t.path().join("garbage.img");
    fs::write(&garbage, bytes).unwrap();
    let (code, d) = diff_lines(&base, &garbage);
    assert_eq!((code, d.len()), (1, 1), "{d:?}");
    assert_eq!(d[0]["level"], "blocks");
    assert!(d[0]["what"].as_str().unwrap().contains("free space"), "{d:?}");
    // Errors exit 2.
    let (code, _, _) = mdi(&["diff", p(&base), p(&t.path().join("missing.img"))]);
    assert_eq!(code, 2);
}

/// A reader that stops early (`| true`) ends the output, not the program: no panic, the
/// exit code of a full run (issue 18: "failed printing to stdout: Broken pipe").
#[test]
fn output_into_a_closed_pipe_is_not_a_panic() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    // More than a pipe holds (64 KiB), so the writer meets the closed end.
    for i in 0..3000 {
        fs::write(src.join(format!("file-with-a-long-name-{i:05}")), "x").unwrap();
    }
    fs::write(src.join("big"), vec![b'y'; 1 << 20]).unwrap();
    let out = t.path().join("out");
    build(&[os("--root-dir"), src.as_os_str(), os("--partition-table-type"), os("none"), os("-o"), out.as_os_str()]);
    let img = out.join("nixos.img");
    for cmd in [
        format!("\"$0\" inspect '{}' --ls / | true", img.display()),
        format!("\"$0\" inspect '{}' --ls / --json | true", img.display()),
        format!("\"$0\" inspect '{}' --cat /big | true", img.display()),
        format!(
            "\"$0\" build --root-dir '{}' --partition-table-type none -o '{}' --json | true",
            src.display(),
            t.path().join("o2").display()
        ),
    ] {
        // pipefail: the exit code is make-disk-image's, not true's.
        let o = Command::new("bash").arg("-c").arg(format!("set -o pipefail; {cmd}")).arg(bin()).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success() && !err.contains("panicked"), "{cmd}: {:?}\n{err}", o.status);
    }
}
