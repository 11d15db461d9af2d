//! Issue 3: every partitionTableType, checked by sgdisk, sfdisk, blkid, fsck.fat,
//! mtools, e2fsck and the kernel; the FAT boot partitions filled from /boot (and /efi).

mod common;
use common::*;
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const MIB: u64 = 1 << 20;
const ROOT_GUID: &str = "F222513B-DED1-49FA-B591-20CE86A2FE7F";
const ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
const BIOS: &str = "21686148-6449-6E6F-744E-656564454649";
const LINUX: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
const XBOOTLDR: &str = "BC13C2FF-59E6-4262-A352-B275FD6F7172";

fn run(cmd: &str, args: &[&str]) -> (bool, String) {
    let o =
        Command::new(cmd).args(args).env("MTOOLS_SKIP_CHECK", "1").output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

/// Boot files to put below the boot mount points (some with long names, nested).
fn boot_sources(dir: &Path) -> Vec<(PathBuf, String)> {
    let files = [
        ("loader.conf", b"timeout 3\n".to_vec()),
        ("nixos-generation-1.conf", b"title NixOS\n".to_vec()),
        ("BOOTX64.EFI", (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect()),
        ("kernel with spaces.efi", vec![0x42; 70_000]),
        ("empty", Vec::new()),
    ];
    fs::create_dir_all(dir).unwrap();
    files
        .iter()
        .enumerate()
        .map(|(i, (n, data))| {
            let p = dir.join(n);
            fs::write(&p, data).unwrap();
            let sub = if i % 2 == 0 { "EFI/nixos" } else { "loader/entries" };
            (p, format!("{sub}/{n}"))
        })
        .collect()
}

struct Built {
    _dir: tempfile::TempDir,
    img: PathBuf,
    manifest: Value,
    boot_files: Vec<(PathBuf, String, String)>,
}

/// Builds `ptt` with a small root tree and boot contents, at `disk` ("auto" or MiB).
fn build_layout(ptt: &str, disk: &str, boot_size: &str) -> Built {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(root.join("etc/hostname"), "layout-test\n").unwrap();
    let srcs = boot_sources(&dir.path().join("bootsrc"));
    let mut contents = Vec::new();
    let mut boot_files = Vec::new();
    for (i, (src, rel)) in srcs.iter().enumerate() {
        // efixbootldr: the ESP is /efi, XBOOTLDR is /boot; elsewhere /boot is the ESP/BOOT.
        let mount = if ptt == "efixbootldr" && i % 2 == 0 { "/efi" } else { "/boot" };
        contents.push(serde_json::json!({"source": src, "target": format!("{mount}/{rel}")}));
        boot_files.push((src.clone(), mount.to_string(), rel.clone()));
    }
    let spec = serde_json::json!({
        "partitionTableType": ptt,
        "diskSize": disk,
        "bootSize": boot_size,
        "rootDir": root,
        "contents": contents,
        "additionalSpace": "16M",
        "sourceDateEpoch": 1_700_000_000,
    });
    let spec_path = dir.path().join("spec.json");
    fs::write(&spec_path, spec.to_string()).unwrap();
    let out = dir.path().join("out");
    build(&[spec_path.as_os_str(), os("-o"), out.as_os_str()]);
    let manifest: Value = serde_json::from_str(&fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    Built { img: out.join("nixos.img"), _dir: dir, manifest, boot_files }
}

/// (start, size, type, name, uuid) of each partition as sfdisk --json reports them.
fn sfdisk(img: &Path) -> Vec<(u64, u64, String, String, String)> {
    let (ok, out) = run("sfdisk", &["--json", img.to_str().unwrap()]);
    assert!(ok, "sfdisk: {out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    v["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let s = |k: &str| p[k].as_str().unwrap_or("").to_string();
            (p["start"].as_u64().unwrap(), p["size"].as_u64().unwrap(), s("type"), s("name"), s("uuid"))
        })
        .collect()
}

/// The docs/design.md §4.1 table for a disk of `disk` bytes and a boot partition ending at `b`.
fn expected(ptt: &str, disk: u64, b: u64) -> Vec<(u64, u64, &'static str, &'static str)> {
    let s = |bytes: u64| bytes / 512;
    let gpt_end = disk - MIB; // the root ends at the last MiB before the backup GPT
    match ptt {
        "legacy" => vec![(s(MIB), s(disk - MIB), "83", "")],
        "legacy+boot" => vec![(s(MIB), s(b - MIB), "c", ""), (s(b), s(disk - b), "83", "")],
        "legacy+gpt" => vec![(s(MIB), s(MIB), BIOS, "no-fs"), (s(2 * MIB), s(gpt_end - 2 * MIB), LINUX, "primary")],
        "efi" => vec![(s(8 * MIB), s(b - 8 * MIB), ESP, "ESP"), (s(b), s(gpt_end - b), LINUX, "primary")],
        "efixbootldr" => vec![
            (s(8 * MIB), s(92 * MIB), ESP, "ESP"),
            (s(100 * MIB), s(b - 100 * MIB), XBOOTLDR, "BOOT"),
            (s(b), s(gpt_end - b), LINUX, "ROOT"),
        ],
        "hybrid" => vec![
            (s(8 * MIB), s(b - 8 * MIB), ESP, "ESP"),
            (s(MIB), s(MIB), BIOS, "no-fs"),
            (s(b), s(gpt_end - b), LINUX, "primary"),
        ],
        _ => unreachable!(),
    }
}

/// A loop device over one partition (this kernel has no partition parser).
struct Loop(String);
impl Loop {
    fn new(img: &Path, offset: u64, size: u64) -> Loop {
        let (ok, out) = run(
            "losetup",
            &[
                "--find",
                "--show",
                "--read-only",
                "--offset",
                &offset.to_string(),
                "--sizelimit",
                &size.to_string(),
                img.to_str().unwrap(),
            ],
        );
        assert!(ok, "losetup: {out}");
        Loop(out.trim().to_string())
    }
}
impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

fn blkid(dev: &str) -> String {
    run("blkid", &["-p", "-o", "export", dev]).1
}

fn check_layout(ptt: &str, disk: &str, boot_size: &str) {
    let b = build_layout(ptt, disk, boot_size);
    let disk_bytes = fs::metadata(&b.img).unwrap().len();
    let boot_end =
        (b.manifest["spec"]["bootSize"].as_str().map(|s| s.trim_end_matches('M').parse::<u64>().unwrap()).unwrap())
            * MIB;
    let gpt = ptt != "legacy" && ptt != "legacy+boot";

    // Partition table oracles.
    if gpt {
        let (ok, out) = run("sgdisk", &["-v", b.img.to_str().unwrap()]);
        assert!(ok && out.contains("No problems found"), "sgdisk -v {ptt}: {out}");
    }
    let got = sfdisk(&b.img);
    let want = expected(ptt, disk_bytes, boot_end);
    assert_eq!(got.len(), want.len(), "{ptt}: {got:?}");
    for (g, w) in got.iter().zip(&want) {
        assert_eq!((g.0, g.1, g.2.as_str(), g.3.as_str()), *w, "{ptt} partition");
    }
    if gpt {
        let root = got.iter().find(|p| p.2 == LINUX).unwrap();
        assert_eq!(root.4, ROOT_GUID, "{ptt}: root partition GUID is rootGPUID");
    }

    if !is_root() {
        skip(format_args!("blkid/fsck.fat/e2fsck through loop devices for {ptt}: needs root"));
        return;
    }
    // Every filesystem through a loop device over its partition.
    for fsm in b.manifest["filesystems"].as_array().unwrap() {
        let (off, size) = (fsm["offset"].as_u64().unwrap(), fsm["size"].as_u64().unwrap());
        let lo = Loop::new(&b.img, off, size);
        let id = blkid(&lo.0);
        let label = fsm["label"].as_str().unwrap();
        assert!(id.contains(&format!("LABEL={label}\n")), "{ptt}: blkid {id}");
        match fsm["type"].as_str().unwrap() {
            "ext4" => {
                assert!(id.contains("TYPE=ext4") && id.contains(&format!("UUID={}", ROOT_GUID.to_lowercase())), "{id}");
                e2fsck_clean(Path::new(&lo.0));
                let m = tempfile::tempdir().unwrap();
                let (ok, out) = run("mount", &["-o", "ro", "-t", "ext4", &lo.0, m.path().to_str().unwrap()]);
                assert!(ok, "kernel mount of the root partition: {out}");
                let host = fs::read_to_string(m.path().join("etc/hostname"));
                let boot_is_dir = m.path().join("boot").is_dir();
                Command::new("umount").arg(m.path()).status().unwrap();
                assert_eq!(host.unwrap(), "layout-test\n");
                assert!(boot_is_dir, "/boot mount point exists in the root");
            }
            t @ ("fat32" | "fat16") => {
                assert!(id.contains("TYPE=vfat") && id.contains(&format!("VERSION={}", t.to_uppercase())), "{id}");
                let vol = fsm["volumeId"].as_str().unwrap();
                assert!(id.contains(&format!("UUID={}-{}\n", &vol[..4], &vol[4..])), "{id} vs {vol}");
                let (ok, out) = run("fsck.fat", &["-n", "-v", &lo.0]);
                assert!(
                    ok && !out.contains("Free cluster summary wrong") && !out.to_lowercase().contains("differ"),
                    "fsck.fat -n {ptt} {label}: {out}"
                );
                // mtools reads every file back byte-identical.
                let spec = format!("{}@@{off}", b.img.display());
                let mount = if label == "ESP" && ptt == "efixbootldr" { "/efi" } else { "/boot" };
                for (src, m, rel) in &b.boot_files {
                    if m != mount {
                        continue;
                    }
                    let o = Command::new("mcopy")
                        .env("MTOOLS_SKIP_CHECK", "1")
                        .args(["-n", "-i", &spec, &format!("::/{rel}"), "-"])
                        .output()
                        .unwrap();
                    assert!(o.status.success(), "mcopy {rel}: {}", String::from_utf8_lossy(&o.stderr));
                    assert_eq!(o.stdout, fs::read(src).unwrap(), "{ptt}: {rel} read back by mtools");
                }
                let (ok, listing) = run("mdir", &["-/", "-i", &spec, "::"]);
                assert!(ok, "mdir: {listing}");
            }
            other => panic!("unexpected filesystem {other}"),
        }
    }
}

const LAYOUTS: &[&str] = &["legacy", "legacy+boot", "legacy+gpt", "efi", "efixbootldr", "hybrid"];

#[test]
fn layouts_under_200_mib() {
    for ptt in LAYOUTS {
        let boot = if *ptt == "efixbootldr" { "140M" } else { "64M" };
        check_layout(ptt, "190", boot);
    }
}

#[test]
fn layouts_of_a_few_gib_with_auto_and_fixed_sizes() {
    for ptt in LAYOUTS {
        check_layout(ptt, "auto", "256M");
        check_layout(ptt, "3072", "512M");
    }
}

#[test]
fn gpt_layouts_on_a_3_tib_disk() {
    for ptt in ["efi", "hybrid", "legacy+gpt", "efixbootldr"] {
        check_layout(ptt, "3145728", "256M");
    }
}

#[test]
fn mbr_cannot_describe_3_tib() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    let err = build_fails(&[
        os("--partition-table-type"),
        os("legacy"),
        os("--disk-size"),
        os("3145728"),
        os("-o"),
        out.as_os_str(),
    ]);
    assert!(err.contains("2 TiB") && err.contains("GPT layout"), "{err}");
}

#[test]
fn boot_size_too_small() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    let err = build_fails(&[
        os("--partition-table-type"),
        os("efixbootldr"),
        os("--boot-size"),
        os("100M"),
        os("-o"),
        out.as_os_str(),
    ]);
    assert!(err.contains("bootSize") && err.contains("at least 108M"), "{err}");
    let err = build_fails(&[
        os("--partition-table-type"),
        os("efi"),
        os("--boot-size"),
        os("10M"),
        os("-o"),
        out.as_os_str(),
    ]);
    assert!(err.contains("bootSize") && err.contains("ESP"), "{err}");
    // Files that do not fit into the ESP: the message says how big bootSize must be.
    let big = t.path().join("big");
    fs::write(&big, vec![1u8; 30 << 20]).unwrap();
    let spec = t.path().join("s.json");
    fs::write(&spec, serde_json::json!({"partitionTableType":"efi","bootSize":"24M","contents":[{"source":big,"target":"/boot/big"}]}).to_string()).unwrap();
    let err = build_fails(&[spec.as_os_str(), os("-o"), out.as_os_str()]);
    assert!(err.contains("bootSize is too small") && err.contains("ESP"), "{err}");
    assert!(fs::read_dir(&out).map(|mut d| d.next().is_none()).unwrap_or(true), "nothing left behind");
}

#[test]
fn names_fat_cannot_hold() {
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join("f");
    fs::write(&f, "x").unwrap();
    let out = t.path().join("out");
    for (target, what) in [("/boot/a:b", "FAT file names"), ("/boot/Case", "same name on FAT")] {
        let mut contents = vec![serde_json::json!({"source": f, "target": target})];
        if target.ends_with("Case") {
            contents.push(serde_json::json!({"source": f, "target": "/boot/case"}));
        }
        let spec = t.path().join("s.json");
        fs::write(&spec, serde_json::json!({"partitionTableType":"efi","contents":contents}).to_string()).unwrap();
        let err = build_fails(&[spec.as_os_str(), os("-o"), out.as_os_str()]);
        assert!(err.contains(what), "{err}");
    }
}

#[test]
fn every_layout_is_deterministic() {
    for ptt in LAYOUTS {
        let a = build_layout(ptt, "auto", if *ptt == "efixbootldr" { "140M" } else { "64M" });
        let cmd = |out: &Path| {
            format!(
                "umask 077 && cd / && {} build {} -o {}",
                bin(),
                a.img.parent().unwrap().parent().unwrap().join("spec.json").display(),
                out.display()
            )
        };
        let other = tempfile::tempdir().unwrap();
        let out2 = other.path().join("elsewhere");
        let o = Command::new("sh")
            .arg("-c")
            .arg(cmd(&out2))
            .env("TZ", "Asia/Kathmandu")
            .env("RAYON_NUM_THREADS", "3")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(fs::read(&a.img).unwrap() == fs::read(out2.join("nixos.img")).unwrap(), "{ptt}: images differ");
    }
}
