//! Issue 7 §1, docs/design.md §5: every layout × every format × (no boot loader, GRUB,
//! systemd-boot) of a real NixOS-like system (tests/boot/make-boot-system.sh, built by real
//! Nix) gives the same bytes when built again under changed conditions: time zone, umask,
//! an input copy created in reverse order (other inode numbers and directory order), thread
//! count, output and working folder, wall clock (faketime) and the user running it.
//!
//! Every combination is built twice: once plainly, once with all of the changes at the
//! same time. A few combinations are also built once per change, so that a difference
//! would point at its cause. The converse (different seeds give different identifiers but
//! the same files) closes the file.

mod common;
use common::*;
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const FORMATS: &[(&str, &str)] = &[
    ("raw", "img"),
    ("qcow2", "qcow2"),
    ("qcow2-compressed", "qcow2"),
    ("vdi", "vdi"),
    ("vpc", "vhd"),
    ("vmdk", "vmdk"),
    ("vhdx", "vhdx"),
];

/// Layouts and the boot loaders that fit them.
const LAYOUTS: &[(&str, &[&str])] = &[
    ("none", &["none"]),
    ("legacy", &["none", "grub"]),
    ("legacy+boot", &["none", "grub"]),
    ("legacy+gpt", &["none", "grub"]),
    ("efi", &["none", "grub", "systemd-boot"]),
    ("efixbootldr", &["none", "grub", "systemd-boot"]),
    ("hybrid", &["none", "grub", "systemd-boot"]),
];

/// aarch64 (the stand-in of tests/boot_aarch64.rs): the layouts an aarch64 machine boots
/// and their loaders (GRUB arm64-efi, systemd-bootaa64.efi, extlinux for U-Boot).
const AARCH64_LAYOUTS: &[(&str, &[&str])] = &[
    ("none", &["none"]),
    ("legacy", &["extlinux"]),
    ("efi", &["grub", "systemd-boot", "extlinux"]),
    ("efixbootldr", &["systemd-boot"]),
];

/// The changes of docs/design.md §5 that a build can be subjected to.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Change {
    TimeZone,
    Umask,
    ReverseInput,
    Threads,
    Folders,
    WallClock,
    User,
}
const ALL: &[Change] = &[
    Change::TimeZone,
    Change::Umask,
    Change::ReverseInput,
    Change::Threads,
    Change::Folders,
    Change::WallClock,
    Change::User,
];

struct Inputs {
    /// Copies of the system's chroot store: created in sorted and in reverse order.
    forward: PathBuf,
    reverse: PathBuf,
    closure_info: PathBuf,
    toplevel: String,
    /// A world-readable folder for everything, so an unprivileged user can run builds.
    work: PathBuf,
    /// The binary, copied where any user can run it.
    bin: PathBuf,
    /// Arguments every build gets: the target's loader files (aarch64).
    extra: Vec<String>,
    /// Boot partitions that hold a 27 MB kernel (aarch64's is not compressed).
    big_kernel: bool,
}

/// Copies `src` to `dst` creating entries in sorted or reverse-sorted order, keeping
/// modes, mtimes and symlinks (a store has no other kinds).
fn copy_ordered(src: &Path, dst: &Path, reverse: bool) {
    let md = fs::symlink_metadata(src).unwrap();
    if md.file_type().is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(src).unwrap(), dst).unwrap();
        return;
    }
    if md.is_file() {
        fs::copy(src, dst).unwrap();
    } else {
        fs::create_dir(dst).unwrap();
        let mut names: Vec<OsString> = fs::read_dir(src).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        if reverse {
            names.reverse();
        }
        for n in names {
            copy_ordered(&src.join(&n), &dst.join(&n), reverse);
        }
    }
    fs::set_permissions(dst, fs::Permissions::from_mode(md.mode() & 0o7777 | 0o444)).unwrap();
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(md.mtime() as u64);
    let f = fs::File::open(dst).unwrap();
    f.set_times(fs::FileTimes::new().set_modified(t)).unwrap();
}

fn inputs() -> Option<&'static Inputs> {
    static IN: OnceLock<Option<Inputs>> = OnceLock::new();
    IN.get_or_init(|| make_inputs("x86_64")).as_ref()
}

fn inputs_aarch64() -> Option<&'static Inputs> {
    static IN: OnceLock<Option<Inputs>> = OnceLock::new();
    IN.get_or_init(|| make_inputs("aarch64")).as_ref()
}

fn make_inputs(arch: &str) -> Option<Inputs> {
    let tools: &[&str] = if arch == "x86_64" {
        &["grub-mkimage", "faketime", "setpriv"]
    } else {
        &["grub-mkimage", "faketime", "setpriv", "dpkg-deb", "apt-get"]
    };
    let sys = boot_system_for(arch, &format!("repro-system-{arch}"), tools, "reproducibility matrix")?;
    // Under /tmp: every parent folder is searchable by an unprivileged user (the
    // checkout may be below a private home). A fixed name, emptied first, so runs do
    // not pile up.
    let work = PathBuf::from(format!("/tmp/mdi-reproducible-test-{arch}"));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir(&work).unwrap();
    fs::set_permissions(&work, fs::Permissions::from_mode(0o777)).unwrap();
    let (forward, reverse) = (work.join("store-a"), work.join("inputs-b/store"));
    fs::create_dir(work.join("inputs-b")).unwrap();
    copy_ordered(
        &sys.join("root/nix"),
        &{
            fs::create_dir(&forward).unwrap();
            forward.join("nix")
        },
        false,
    );
    copy_ordered(
        &sys.join("root/nix"),
        &{
            fs::create_dir(&reverse).unwrap();
            reverse.join("nix")
        },
        true,
    );
    let closure_info = work.join("closure-info");
    copy_ordered(&sys.join("closure-info"), &closure_info, false);
    let copy = work.join("make-disk-image");
    fs::copy(bin(), &copy).unwrap();
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).unwrap();
    let toplevel = fs::read_to_string(sys.join("closure-info/toplevel")).unwrap().trim().to_string();
    let mut extra = Vec::new();
    if arch == "aarch64" {
        let (sd, grub) = (work.join("systemd-bootaa64.efi"), work.join("grub"));
        copy_ordered(&sys.join("arm64/usr/lib/systemd/boot/efi/systemd-bootaa64.efi"), &sd, false);
        copy_ordered(&sys.join("arm64/usr/lib/grub"), &grub, false);
        extra = ["--systemd-boot", sd.to_str().unwrap(), "--grub", grub.to_str().unwrap()].map(String::from).to_vec();
    }
    let big_kernel = arch == "aarch64";
    Some(Inputs { forward, reverse, closure_info, toplevel, work, bin: copy, extra, big_kernel })
}

/// One build; returns (sha256 of the image by sha256sum, efi-vars.fd bytes).
fn build_one(
    inp: &Inputs,
    ptt: &str,
    loader: &str,
    format: &str,
    ext: &str,
    changes: &[Change],
    tag: &str,
) -> (String, Vec<u8>) {
    let has = |c: Change| changes.contains(&c);
    let store_root = if has(Change::ReverseInput) { &inp.reverse } else { &inp.forward };
    let out = if has(Change::Folders) {
        inp.work.join(format!("elsewhere/deeper/{tag}"))
    } else {
        inp.work.join(format!("out/{tag}"))
    };
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&out).unwrap();
    fs::set_permissions(&out, fs::Permissions::from_mode(0o777)).unwrap();
    let mut args: Vec<String> = vec![
        "build".into(),
        "--closure-info".into(),
        inp.closure_info.display().to_string(),
        "--store-root".into(),
        store_root.display().to_string(),
        "--system".into(),
        inp.toplevel.clone(),
        "--partition-table-type".into(),
        ptt.into(),
        "--format".into(),
        format.into(),
        "--additional-space".into(),
        "4M".into(),
        "--source-date-epoch".into(),
        "1700000000".into(),
        "-o".into(),
        out.display().to_string(),
    ];
    let (xbootldr, boot) = if inp.big_kernel { ("140M", "64M") } else { ("120M", "32M") };
    if ptt == "efixbootldr" {
        args.extend(["--boot-size".into(), xbootldr.into()]);
    } else if ptt != "none" && ptt != "legacy" && ptt != "legacy+gpt" {
        args.extend(["--boot-size".into(), boot.into()]);
    }
    args.extend(inp.extra.iter().cloned());
    match loader {
        "none" => args.extend(["--install-boot-loader".into(), "false".into()]),
        l => args.extend(["--boot-loader".into(), l.into()]),
    }
    if matches!(ptt, "efi" | "efixbootldr" | "hybrid" | "legacy+gpt") {
        args.extend(["--touch-efi-vars".into(), "true".into()]);
    }
    let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    let umask = if has(Change::Umask) { "077" } else { "022" };
    let mut script = format!("umask {umask} && exec {} {}", inp.bin.display(), quoted.join(" "));
    if has(Change::WallClock) {
        script = format!("exec faketime '2038-01-19 03:14:00' sh -c \"{}\"", script.replace('"', "\\\""));
    }
    let mut cmd = if has(Change::User) {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c", &script]);
        c
    } else {
        let mut c = Command::new("sh");
        c.args(["-c", &script]);
        c
    };
    cmd.env("TZ", if has(Change::TimeZone) { "Pacific/Chatham" } else { "UTC" })
        .env("RAYON_NUM_THREADS", if has(Change::Threads) { "1" } else { "2" })
        .env_remove("SOURCE_DATE_EPOCH")
        .current_dir(if has(Change::Folders) { store_root.as_path() } else { inp.work.as_path() });
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "{ptt}/{loader}/{format} {changes:?}: {}{}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
    // The image's hash by coreutils, not by our own manifest code (which must agree).
    let image = out.join(format!("nixos.{ext}"));
    let o = Command::new("sha256sum").arg(&image).output().unwrap();
    assert!(o.status.success(), "sha256sum {}", image.display());
    let sha = String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap().to_string();
    let m: serde_json::Value = serde_json::from_slice(&fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["image"]["sha256"], sha.as_str(), "manifest sha256 of {}", image.display());
    let vars = fs::read(out.join("efi-vars.fd")).unwrap_or_default();
    let _ = fs::remove_dir_all(&out);
    (sha, vars)
}

#[test]
fn every_layout_format_and_loader_is_reproducible() {
    let Some(inp) = inputs() else { return };
    let mut n = 0;
    for (ptt, loaders) in LAYOUTS {
        for loader in *loaders {
            for (format, ext) in FORMATS {
                let tag = format!("{ptt}-{loader}-{format}").replace('+', "_");
                let base = build_one(inp, ptt, loader, format, ext, &[], &tag);
                let changed = build_one(inp, ptt, loader, format, ext, ALL, &tag);
                assert!(base == changed, "{ptt} / {loader} / {format}: the bytes change under {ALL:?}");
                n += 1;
            }
        }
    }
    eprintln!("{n} combinations reproducible");
}

/// The same matrix for aarch64 images (UEFI with GRUB and systemd-boot, U-Boot with
/// extlinux), built on this x86_64 machine.
#[test]
fn aarch64_layouts_formats_and_loaders_are_reproducible() {
    let Some(inp) = inputs_aarch64() else { return };
    let mut n = 0;
    for (ptt, loaders) in AARCH64_LAYOUTS {
        for loader in *loaders {
            for (format, ext) in FORMATS {
                let tag = format!("aa64-{ptt}-{loader}-{format}");
                let base = build_one(inp, ptt, loader, format, ext, &[], &tag);
                let changed = build_one(inp, ptt, loader, format, ext, ALL, &tag);
                assert!(base == changed, "aarch64 {ptt} / {loader} / {format}: the bytes change under {ALL:?}");
                n += 1;
            }
        }
    }
    eprintln!("{n} aarch64 combinations reproducible");
}

#[test]
fn each_change_alone_changes_nothing() {
    let Some(inp) = inputs() else { return };
    for (ptt, loader, format, ext) in [
        ("hybrid", "grub", "qcow2-compressed", "qcow2"),
        ("efixbootldr", "systemd-boot", "vhdx", "vhdx"),
        ("legacy", "grub", "vmdk", "vmdk"),
    ] {
        let tag = format!("alone-{ptt}-{format}").replace('+', "_");
        let base = build_one(inp, ptt, loader, format, ext, &[], &tag);
        for c in ALL {
            let other = build_one(inp, ptt, loader, format, ext, &[*c], &tag);
            assert!(base == other, "{ptt} / {loader} / {format}: the bytes change under {c:?}");
        }
    }
}

/// Two seeds: other partition GUIDs, disk GUID and FAT volume IDs, the same files
/// (systemd-boot: GRUB's config names the ESP by its volume ID, so its files would differ) (the root filesystem compared through the kernel, the ESP through mtools).
#[test]
fn another_seed_changes_identifiers_not_files() {
    let Some(inp) = inputs() else { return };
    let run = |seed: &str, tag: &str| -> (PathBuf, serde_json::Value) {
        let out = inp.work.join(format!("seed/{tag}"));
        let _ = fs::remove_dir_all(&out);
        let o = Command::new(&inp.bin)
            .args(["build", "--closure-info"])
            .arg(&inp.closure_info)
            .arg("--store-root")
            .arg(&inp.forward)
            .args(["--system", &inp.toplevel, "--partition-table-type", "hybrid", "--boot-loader", "systemd-boot"])
            .args(["--additional-space", "4M", "--boot-size", "32M", "--seed", seed, "-o"])
            .arg(&out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let m = serde_json::from_slice(&fs::read(out.join("manifest.json")).unwrap()).unwrap();
        (out, m)
    };
    let (a, ma) = run("11111111-2222-4333-8444-555555555555", "a");
    let (b, mb) = run("99999999-2222-4333-8444-555555555555", "b");
    assert_ne!(ma["image"]["sha256"], mb["image"]["sha256"]);
    for i in 0..3 {
        let (ga, gb) = (&ma["partitions"][i]["guid"], &mb["partitions"][i]["guid"]);
        // The root partition keeps nixpkgs' fixed rootGPUID; the others come from the seed.
        if ma["partitions"][i]["number"] == 3 {
            assert_eq!(ga, gb);
        } else {
            assert_ne!(ga, gb, "partition {i}");
        }
    }
    let esp = |m: &serde_json::Value| {
        m["filesystems"].as_array().unwrap().iter().find(|f| f["label"] == "ESP").unwrap().clone()
    };
    assert_ne!(esp(&ma)["volumeId"], esp(&mb)["volumeId"]);
    let disk_guid = |img: &Path| {
        let o = Command::new("sgdisk").arg("-p").arg(img).output().unwrap();
        String::from_utf8_lossy(&o.stdout).lines().find(|l| l.contains("Disk identifier")).unwrap().to_string()
    };
    assert_ne!(disk_guid(&a.join("nixos.img")), disk_guid(&b.join("nixos.img")));
    // Same files: the ESPs copied out with mtools, the roots mounted.
    let esp_files = |dir: &Path, m: &serde_json::Value| {
        let to = dir.join("esp-files");
        let img = format!("{}@@{}", dir.join("nixos.img").display(), esp(m)["offset"]);
        let o = Command::new("mcopy").args(["-s", "-p", "-i", &img, "::/"]).arg(&to).output().unwrap();
        assert!(o.status.success(), "mcopy: {}", String::from_utf8_lossy(&o.stderr));
        to
    };
    let (ea, eb) = (esp_files(&a, &ma), esp_files(&b, &mb));
    let o = Command::new("diff").arg("-r").arg(&ea).arg(&eb).output().unwrap();
    assert!(o.status.success(), "ESP files differ: {}", String::from_utf8_lossy(&o.stdout));
    let root_of = |dir: &Path, m: &serde_json::Value| {
        let root = m["filesystems"].as_array().unwrap().iter().find(|f| f["role"] == "root").unwrap().clone();
        let part = dir.join("root.img");
        let o = Command::new("dd")
            .arg(format!("if={}", dir.join("nixos.img").display()))
            .arg(format!("of={}", part.display()))
            .args(["bs=1M", "conv=sparse", "status=none"])
            .arg(format!("skip={}", root["offset"].as_u64().unwrap() >> 20))
            .arg(format!("count={}", root["size"].as_u64().unwrap() >> 20))
            .output()
            .unwrap();
        assert!(o.status.success());
        part
    };
    let (ra, rb) = (Mount::new(&root_of(&a, &ma)), Mount::new(&root_of(&b, &mb)));
    // Inode identity includes the loop device number; keep only the inode number.
    let scan_fs = |p: &Path| {
        let mut m = scan(p, &[]);
        m.values_mut().for_each(|i| i.ino.0 = 0);
        m
    };
    let (sa, sb) = (scan_fs(ra.path()), scan_fs(rb.path()));
    for (k, v) in &sa {
        assert!(
            sb.get(k) == Some(v),
            "root filesystems differ at {}: {v:?} vs {:?}",
            String::from_utf8_lossy(k),
            sb.get(k)
        );
    }
    assert_eq!(sa.len(), sb.len(), "root filesystems hold different files");
}
