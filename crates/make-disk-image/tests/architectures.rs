//! Images for other architectures, built on x86_64 without running any of their code: an
//! aarch64 stand-in system (Debian's arm64 cloud kernel and busybox, unpacked from their
//! packages by tests/boot/make-boot-system.sh) boots under qemu-system-aarch64 (`virt`,
//! Cortex-A57, TCG) with AAVMF through systemd-boot and GRUB, and with U-Boot through
//! extlinux.conf; the target's systemd-boot and GRUB modules come from Debian's arm64
//! packages. Layouts that need a PC BIOS are refused.

mod common;
use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

const AAVMF_CODE: &str = "/usr/share/AAVMF/AAVMF_CODE.fd";
const AAVMF_VARS: &str = "/usr/share/AAVMF/AAVMF_VARS.fd";
const UBOOT: &str = "/usr/lib/u-boot/qemu_arm64/u-boot.bin";

/// One boot at a time (parallel TCG boots are no faster on 2 cores).
static QEMU: Mutex<()> = Mutex::new(());

fn system() -> Option<&'static Path> {
    static SYS: OnceLock<Option<PathBuf>> = OnceLock::new();
    SYS.get_or_init(|| {
        let tools = ["qemu-system-aarch64", "grub-mkimage", "dpkg-deb", "apt-get"];
        let sys = boot_system_for("aarch64", "boot-system-aarch64", &tools, "aarch64 boot tests")?;
        for f in [AAVMF_CODE, UBOOT] {
            if !Path::new(f).exists() {
                skip(format_args!("aarch64 boot tests: {f} is missing (apt-get install qemu-efi-aarch64 u-boot-qemu)"));
                return None;
            }
        }
        Some(sys)
    })
    .as_deref()
}

fn systemd_boot(sys: &Path) -> PathBuf {
    sys.join("arm64/usr/lib/systemd/boot/efi/systemd-bootaa64.efi")
}

enum Firmware<'a> {
    /// AAVMF with this variable store (copied: QEMU writes to it).
    Uefi(&'a Path),
    UBoot,
}

fn boot(img: &Path, fw: Firmware, marker: &str) -> String {
    let _one = QEMU.lock().unwrap_or_else(|e| e.into_inner());
    let mut cmd = Command::new("qemu-system-aarch64");
    cmd.args(["-machine", "virt", "-cpu", "cortex-a57", "-accel", "tcg", "-m", "512"])
        .args(["-display", "none", "-monitor", "none", "-serial", "stdio", "-no-reboot", "-nodefaults"])
        // No firmware menu wait (saves ~5 s under TCG).
        .args(["-boot", "menu=on,splash-time=0"])
        .arg("-drive")
        .arg(format!("file={},format=raw,if=none,id=disk", img.display()))
        .args(["-device", "virtio-blk-pci,drive=disk"]);
    match fw {
        Firmware::Uefi(vars) => {
            let copy = img.with_extension("vars.fd");
            fs::copy(vars, &copy).unwrap();
            cmd.arg("-drive")
                .arg(format!("if=pflash,format=raw,unit=0,readonly=on,file={AAVMF_CODE}"))
                .arg("-drive")
                .arg(format!("if=pflash,format=raw,unit=1,file={}", copy.display()));
        }
        Firmware::UBoot => {
            cmd.arg("-bios").arg(UBOOT);
        }
    }
    let log = qemu_until(cmd, &format!("MDI-BOOT-MARKER: {marker}"), img);
    let toplevel_init = "-nixos-system-boot-test/init console=ttyAMA0 panic=-1 loglevel=4";
    assert!(log.contains(toplevel_init), "kernel command line not the bootspec's:\n{log}");
    log
}

fn manifest(out: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(out.join("manifest.json")).unwrap()).unwrap()
}

/// systemd-boot from the arm64 package: BOOTAA64.EFI and systemd-bootaa64.efi on the ESP.
/// With touchEFIVars, Debian's blank AAVMF store is formatted and gets a Boot0001 entry;
/// with the removable path deleted, that entry alone leads the firmware to the loader.
#[test]
fn systemd_boot_and_the_efi_vars_entry() {
    let Some(sys) = system() else { return };
    let t = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let sd = systemd_boot(sys);
    let (out, marker) = stand_in_image(
        sys,
        &t.path().join("sd"),
        &["--partition-table-type", "efi", "--systemd-boot", sd.to_str().unwrap(), "--touch-efi-vars", "true"],
    );
    let m = manifest(&out);
    assert_eq!(m["system"], "aarch64-linux");
    assert_eq!(m["efiLoader"], "\\EFI\\systemd\\systemd-bootaa64.efi");
    let img = out.join("nixos.img");
    let esp = format!("{}@@{}", img.display(), m["partitions"][0]["start"].as_u64().unwrap());
    let dir = Command::new("mdir").args(["-b", "-i", &esp, "::/EFI/BOOT", "::/EFI/systemd"]).output().unwrap();
    let listing = String::from_utf8_lossy(&dir.stdout);
    assert!(listing.contains("BOOTAA64.EFI") && listing.contains("systemd-bootaa64.efi"), "{listing}");
    assert!(!listing.contains("X64"), "{listing}");
    let o = Command::new("mdel").args(["-i", &esp, "::/EFI/BOOT/BOOTAA64.EFI"]).output().unwrap();
    assert!(o.status.success(), "mdel: {}", String::from_utf8_lossy(&o.stderr));
    let log = boot(&img, Firmware::Uefi(&out.join("efi-vars.fd")), &marker);
    assert!(log.contains("Boot0001"), "the firmware did not start our Boot0001 entry:\n{log}");
}

/// GRUB's arm64-efi image (grub-mkimage of the build machine, the target's modules) at the
/// removable path; the firmware starts it from a fresh store.
#[test]
fn grub_efi() {
    let Some(sys) = system() else { return };
    let t = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let grub = sys.join("arm64/usr/lib/grub");
    let (out, marker) = stand_in_image(
        sys,
        &t.path().join("grub"),
        &["--partition-table-type", "efi", "--boot-loader", "grub", "--grub", grub.to_str().unwrap()],
    );
    assert_eq!(manifest(&out)["efiLoader"], "\\EFI\\BOOT\\BOOTAA64.EFI");
    boot(&out.join("nixos.img"), Firmware::Uefi(Path::new(AAVMF_VARS)), &marker);
}

/// generic-extlinux-compatible: /boot/extlinux/extlinux.conf as NixOS writes it, read by
/// U-Boot's distro boot from the partition marked bootable: the MBR root of `legacy`, the
/// GPT ESP (mounted at /boot, legacy-BIOS-bootable attribute) of `efi`.
#[test]
fn extlinux_under_u_boot() {
    let Some(sys) = system() else { return };
    let t = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    for ptt in ["legacy", "efi"] {
        let (out, marker) = stand_in_image(
            sys,
            &t.path().join(format!("ext-{ptt}")),
            &["--partition-table-type", ptt, "--boot-loader", "extlinux", "--boot-timeout", "1"],
        );
        let img = out.join("nixos.img");
        let dump = Command::new("sfdisk").arg("--json").arg(&img).output().unwrap();
        let table: serde_json::Value = serde_json::from_slice(&dump.stdout).unwrap();
        let parts = table["partitiontable"]["partitions"].as_array().unwrap().clone();
        if ptt == "legacy" {
            assert_eq!(parts[0]["bootable"], true, "{table}");
        } else {
            assert_eq!(parts[0]["attrs"], "LegacyBIOSBootable", "{table}");
            assert!(parts[1].get("attrs").is_none(), "{table}");
        }
        let log = boot(&img, Firmware::UBoot, &marker);
        assert!(
            log.contains("Retrieving file: ") && log.contains("extlinux/extlinux.conf"),
            "U-Boot did not read extlinux.conf:\n{log}"
        );
    }
}

/// PC-BIOS layouts are refused for aarch64 by name, leaving nothing; a systemd-boot built
/// for another architecture is refused naming both.
#[test]
fn refusals_name_the_architecture() {
    let Some(sys) = system() else { return };
    let t = tempfile::tempdir().unwrap();
    let toplevel = fs::read_to_string(sys.join("closure-info/toplevel")).unwrap();
    let (ci, root) = (sys.join("closure-info"), sys.join("root"));
    let base = |out: &Path| {
        vec![
            os("--closure-info").to_owned(),
            ci.as_os_str().to_owned(),
            os("--store-root").to_owned(),
            root.as_os_str().to_owned(),
            os("--system").to_owned(),
            os(toplevel.trim()).to_owned(),
            os("-o").to_owned(),
            out.as_os_str().to_owned(),
        ]
    };
    for ptt in ["legacy", "legacy+boot", "legacy+gpt", "hybrid"] {
        let out = t.path().join(ptt);
        let mut args = base(&out);
        args.extend(["--partition-table-type", ptt, "--boot-loader", "grub"].map(|a| os(a).to_owned()));
        let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        let err = build_fails(&refs);
        assert!(err.contains("aarch64-linux") && err.contains("PC BIOS") && err.contains("extlinux"), "{err}");
        assert!(!out.join("nixos.img").exists(), "{ptt}: an image after a refused build");
    }
    let x64 = Path::new("/usr/lib/systemd/boot/efi/systemd-bootx64.efi");
    if x64.exists() {
        let out = t.path().join("x64");
        let mut args = base(&out);
        args.extend(["--partition-table-type", "efi", "--systemd-boot"].map(|a| os(a).to_owned()));
        args.push(x64.as_os_str().to_owned());
        let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        let err = build_fails(&refs);
        assert!(err.contains("x86_64 (x64)") && err.contains("aarch64 (aa64)"), "{err}");
    }
    // targetSystem that disagrees with the bootspec.
    let out = t.path().join("disagree");
    let mut args = base(&out);
    args.extend(["--target-system", "x86_64-linux"].map(|a| os(a).to_owned()));
    let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let err = build_fails(&refs);
    assert!(err.contains("targetSystem") && err.contains("aarch64-linux"), "{err}");
}

/// The same aarch64 image twice, the second under another time zone, umask and thread
/// count: the same bytes, EFI variables included.
#[test]
fn aarch64_images_are_reproducible() {
    let Some(sys) = system() else { return };
    let t = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let sd = systemd_boot(sys);
    let grub = sys.join("arm64/usr/lib/grub");
    for (name, extra) in [
        (
            "sd",
            vec!["--partition-table-type", "efi", "--systemd-boot", sd.to_str().unwrap(), "--touch-efi-vars", "true"],
        ),
        ("grub", vec!["--partition-table-type", "efi", "--boot-loader", "grub", "--grub", grub.to_str().unwrap()]),
        ("ext", vec!["--partition-table-type", "legacy", "--boot-loader", "extlinux", "--format", "qcow2"]),
    ] {
        let (a, _) = stand_in_image(sys, &t.path().join(format!("{name}-a")), &extra);
        let toplevel = fs::read_to_string(sys.join("closure-info/toplevel")).unwrap();
        let b = t.path().join(format!("{name}-b"));
        fs::create_dir_all(&b).unwrap();
        fs::copy(t.path().join(format!("{name}-a/marker")), b.join("marker")).unwrap();
        let contents = format!(r#"[{{"source":"{}","target":"/boot-marker"}}]"#, b.join("marker").display());
        let script = format!(
            "umask 077; exec \"$0\" build --closure-info '{ci}' --store-root '{root}' --system '{top}' --boot-timeout 0 --contents '{contents}' -o '{out}' {extra}",
            ci = sys.join("closure-info").display(),
            root = sys.join("root").display(),
            top = toplevel.trim(),
            out = b.join("out").display(),
            extra = extra.join(" "),
        );
        let o = Command::new("sh")
            .arg("-c")
            .arg(&script)
            .arg(bin())
            .env("TZ", "Pacific/Kiritimati")
            .env("RAYON_NUM_THREADS", "1")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        for f in fs::read_dir(&a).unwrap() {
            let f = f.unwrap().file_name();
            if f == "manifest.json" || f == "nix-support" {
                continue; // they name the output folder
            }
            let (x, y) = (fs::read(a.join(&f)).unwrap(), fs::read(b.join("out").join(&f)).unwrap());
            assert!(x == y, "{name}: {} differs between the two builds", f.to_string_lossy());
        }
    }
}

/// A chroot store holding a system for `nix_system` without Nix: a toplevel with boot.json,
/// a kernel and an initrd (placeholders: these images are inspected, not booted), and a
/// closureInfo naming the three paths. Returns (store root, closure-info, toplevel).
fn hand_made_system(dir: &Path, nix_system: &str) -> (PathBuf, PathBuf, String) {
    let root = dir.join("root");
    let store = root.join("nix/store");
    let h = |c: char| c.to_string().repeat(32);
    let (top, linux, initrd) = (
        format!("/nix/store/{}-nixos-system-{nix_system}", h('a')),
        format!("/nix/store/{}-linux", h('b')),
        format!("/nix/store/{}-initrd", h('c')),
    );
    for (p, file, bytes) in [(&linux, "Image", &b"kernel"[..]), (&initrd, "initrd", &b"initrd"[..])] {
        fs::create_dir_all(root.join(p.trim_start_matches('/'))).unwrap();
        fs::write(root.join(p.trim_start_matches('/')).join(file), bytes).unwrap();
    }
    let t = root.join(top.trim_start_matches('/'));
    fs::create_dir_all(&t).unwrap();
    fs::write(t.join("init"), "#!/bin/sh\n").unwrap();
    let boot_json = serde_json::json!({"org.nixos.bootspec.v1": {
        "system": nix_system, "kernel": format!("{linux}/Image"), "initrd": format!("{initrd}/initrd"),
        "kernelParams": ["console=ttyS0"], "label": "NixOS stand-in", "toplevel": top, "init": format!("{top}/init")}});
    fs::write(t.join("boot.json"), serde_json::to_vec_pretty(&boot_json).unwrap()).unwrap();
    assert!(store.is_dir());
    let ci = dir.join("closure-info");
    fs::create_dir_all(&ci).unwrap();
    let mut paths = [top.clone(), linux, initrd];
    paths.sort();
    fs::write(ci.join("store-paths"), paths.join("\n") + "\n").unwrap();
    let reg: String = paths.iter().map(|p| format!("{p}\nsha256:{}\n8\n\n0\n", "0".repeat(52))).collect();
    fs::write(ci.join("registration"), reg).unwrap();
    (root, ci, top)
}

/// The smallest file our PE check reads as an EFI binary for `machine`.
fn fake_pe(path: &Path, machine: u16) {
    let mut b = vec![0u8; 0x100];
    b[..2].copy_from_slice(b"MZ");
    b[0x3C..0x40].copy_from_slice(&0x80u32.to_le_bytes());
    b[0x80..0x84].copy_from_slice(b"PE\0\0");
    b[0x84..0x86].copy_from_slice(&machine.to_le_bytes());
    fs::write(path, b).unwrap();
}

/// riscv64 and i686 systems (no boot here: the names are the point): the loader names,
/// systemd-boot's binary name and the EFI variable-store default follow the bootspec's
/// system.
#[test]
fn riscv64_and_i686_names() {
    let t = tempfile::tempdir().unwrap();
    for (system, efi, machine) in [("riscv64-linux", "riscv64", 0x5064u16), ("i686-linux", "ia32", 0x014c)] {
        let dir = t.path().join(system);
        let (root, ci, top) = hand_made_system(&dir, system);
        let sd = dir.join(format!("systemd-boot{efi}.efi"));
        fake_pe(&sd, machine);
        let out = dir.join("out");
        let base = [
            os("--closure-info"),
            ci.as_os_str(),
            os("--store-root"),
            root.as_os_str(),
            os("--system"),
            os(&top),
            os("--partition-table-type"),
            os("efi"),
            os("--systemd-boot"),
            sd.as_os_str(),
            os("-o"),
            out.as_os_str(),
        ];
        build(&base);
        let m = manifest(&out);
        assert_eq!(m["system"], system);
        assert_eq!(m["efiLoader"].as_str().unwrap(), format!("\\EFI\\systemd\\systemd-boot{efi}.efi"));
        let esp = format!("{}@@{}", out.join("nixos.img").display(), m["partitions"][0]["start"].as_u64().unwrap());
        let o = Command::new("mdir")
            .args(["-b", "-i", &esp, "::/EFI/BOOT"])
            .env("MTOOLS_SKIP_CHECK", "1")
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&o.stdout);
        assert!(listing.contains(&format!("BOOT{}.EFI", efi.to_uppercase())), "{listing}");
        // inspect reads the image like any other.
        let o = Command::new(bin())
            .arg("inspect")
            .arg(out.join("nixos.img"))
            .arg("--ls")
            .arg("1:/EFI/BOOT")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success() && text.contains(&format!("BOOT{}.EFI", efi.to_uppercase())), "{text}");
        if system == "riscv64-linux" {
            // Debian 12 has no riscv64 firmware: touchEFIVars needs a template named.
            let mut args = base.to_vec();
            args.extend([os("--touch-efi-vars"), os("true")]);
            let err = build_fails(&args);
            assert!(err.contains("efiVariables") && err.contains("riscv64-linux"), "{err}");
            // An x64 binary for a riscv64 system.
            let x64 = dir.join("x64.efi");
            fake_pe(&x64, 0x8664);
            let mut args = base.to_vec();
            args.extend([os("--systemd-boot"), x64.as_os_str()]);
            let err = build_fails(&args);
            assert!(err.contains("x86_64 (x64)") && err.contains("riscv64"), "{err}");
        }
    }
}
