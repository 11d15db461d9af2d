//! Issue 6: images with a boot loader boot. A stand-in NixOS system (Debian's cloud kernel,
//! a busybox initrd, a bootspec; built by real Nix with tests/boot/make-boot-system.sh)
//! goes into images of every layout; each boots under qemu-system-x86_64 (q35, virtio
//! disk, serial console) with SeaBIOS or OVMF, and the initrd prints a marker file only
//! the image's root filesystem holds, plus the kernel command line.
//!
//! The tests run one after another (one QEMU at a time: parallel TCG boots are no faster
//! on 2 cores). QEMU runs with TCG unless MDI_BOOT_ACCEL says otherwise: this machine's
//! /dev/kvm is a paravirtual KVM that cannot run these guests.

mod common;
use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// One boot at a time.
static QEMU: Mutex<()> = Mutex::new(());

/// The stand-in system, built once per test binary; None (after saying why) where it
/// cannot be built.
fn system() -> Option<&'static Path> {
    static SYS: OnceLock<Option<PathBuf>> = OnceLock::new();
    SYS.get_or_init(|| boot_system("boot-system", &["qemu-system-x86_64", "grub-mkimage"], "boot tests")).as_deref()
}

enum Firmware<'a> {
    Bios,
    /// OVMF with this variable store (copied; QEMU writes to it).
    Uefi(&'a Path),
}

/// Boots `image` and returns the serial console output up to the marker (panics with the
/// output on timeout or when the guest stops without printing it).
fn boot(image: &Path, format: &str, fw: Firmware, marker: &str) -> String {
    boot_until(image, format, fw, &format!("MDI-BOOT-MARKER: {marker}"))
}

/// Boots `image` until the serial console shows `want`.
fn boot_until(image: &Path, format: &str, fw: Firmware, want: &str) -> String {
    let _one = QEMU.lock().unwrap_or_else(|e| e.into_inner());
    let accel = std::env::var("MDI_BOOT_ACCEL").unwrap_or_else(|_| "tcg".into());
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-machine", "q35", "-accel", &accel, "-m", "512", "-display", "none", "-monitor", "none"])
        .args(["-serial", "stdio", "-no-reboot", "-nodefaults"])
        .arg("-drive")
        .arg(format!("file={},format={format},if=none,id=disk", image.display()))
        .args(["-device", "virtio-blk-pci,drive=disk"]);
    let vars_copy;
    if let Firmware::Uefi(vars) = fw {
        vars_copy = image.with_extension("vars.fd");
        fs::copy(vars, &vars_copy).unwrap();
        cmd.arg("-drive")
            .arg(format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"))
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,unit=1,file={}", vars_copy.display()));
    }
    qemu_until(cmd, want, image)
}

/// The kernel command line the guest printed.
fn cmdline(log: &str) -> &str {
    log.lines().find_map(|l| l.split_once("MDI-BOOT-CMDLINE: ").map(|(_, c)| c)).expect("cmdline printed")
}

fn check_cmdline(log: &str, sys: &Path) {
    let toplevel = fs::read_to_string(sys.join("closure-info/toplevel")).unwrap();
    let c = cmdline(log);
    assert!(c.contains(&format!("init={}/init", toplevel.trim())), "{c}");
    assert!(c.contains("console=ttyS0 panic=-1 loglevel=4"), "{c}");
}

fn case(name: &str, ptt: &str, loader: &str, fws: &[&str]) {
    let Some(sys) = system() else { return };
    let t = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let dir = t.path().join(name);
    let (out, marker) = stand_in_image(sys, &dir, &["--partition-table-type", ptt, "--boot-loader", loader]);
    let img = out.join("nixos.img");
    for fw in fws {
        let f = if *fw == "bios" { Firmware::Bios } else { Firmware::Uefi(Path::new(OVMF_VARS)) };
        let log = boot(&img, "raw", f, &marker);
        check_cmdline(&log, sys);
        eprintln!("{name}: booted with {fw}");
    }
}

#[test]
fn grub_bios_legacy() {
    case("grub-legacy", "legacy", "grub", &["bios"]);
}

#[test]
fn grub_bios_legacy_boot() {
    case("grub-legacy-boot", "legacy+boot", "grub", &["bios"]);
}

#[test]
fn grub_bios_legacy_gpt() {
    case("grub-legacy-gpt", "legacy+gpt", "grub", &["bios"]);
}

#[test]
fn grub_hybrid_bios_and_uefi() {
    case("grub-hybrid", "hybrid", "grub", &["bios", "uefi"]);
}

#[test]
fn grub_uefi_efi() {
    case("grub-efi", "efi", "grub", &["uefi"]);
}

#[test]
fn systemd_boot_efi() {
    case("sd-efi", "efi", "systemd-boot", &["uefi"]);
}

#[test]
fn systemd_boot_efixbootldr() {
    case("sd-xbootldr", "efixbootldr", "systemd-boot", &["uefi"]);
}

#[test]
fn systemd_boot_hybrid() {
    case("sd-hybrid", "hybrid", "systemd-boot", &["uefi"]);
}

#[test]
fn qcow2_and_vhd_boot() {
    let Some(sys) = system() else { return };
    let t = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    for (format, qemu_fmt, ext) in [("qcow2", "qcow2", "qcow2"), ("vpc", "vpc", "vhd")] {
        let (out, marker) = stand_in_image(
            sys,
            &t.path().join(format),
            &["--partition-table-type", "hybrid", "--boot-loader", "grub", "--format", format],
        );
        let log = boot(&out.join(format!("nixos.{ext}")), qemu_fmt, Firmware::Bios, &marker);
        check_cmdline(&log, sys);
    }
}

/// touchEFIVars: with the removable path deleted from the ESP, only our Boot0001 entry in
/// efi-vars.fd can lead OVMF to systemd-boot; virt-fw-vars shows the entry.
#[test]
fn efi_vars_entry_boots_without_the_removable_path() {
    let Some(sys) = system() else { return };
    let t = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (out, marker) =
        stand_in_image(sys, &t.path().join("efivars"), &["--partition-table-type", "efi", "--touch-efi-vars", "true"]);
    let img = out.join("nixos.img");
    let vars = out.join("efi-vars.fd");
    let m: serde_json::Value = serde_json::from_slice(&fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let esp = m["filesystems"].as_array().unwrap().iter().find(|f| f["label"] == "ESP").unwrap();
    let esp_off = esp["offset"].as_u64().unwrap();
    let o = Command::new("mdel")
        .arg("-i")
        .arg(format!("{}@@{esp_off}", img.display()))
        .arg("::/EFI/BOOT/BOOTX64.EFI")
        .output()
        .unwrap();
    assert!(o.status.success(), "mdel: {}", String::from_utf8_lossy(&o.stderr));
    let log = boot(&img, "raw", Firmware::Uefi(&vars), &marker);
    check_cmdline(&log, sys);
    // OVMF names the device path it starts: HD(number,GPT,GUID,start,size)/File.
    let p = &m["partitions"][0];
    let hd = format!(
        "HD(1,GPT,{},0x{:X},0x{:X})/\\EFI\\systemd\\systemd-bootx64.efi",
        p["guid"].as_str().unwrap().to_uppercase(),
        p["start"].as_u64().unwrap() / 512,
        p["size"].as_u64().unwrap() / 512
    );
    assert!(
        log.contains("Boot0001 \"Linux Boot Manager\"") && log.contains(&hd),
        "OVMF did not start our entry {hd}:\n{log}"
    );
    if tool_exists("virt-fw-vars") {
        let o = Command::new("virt-fw-vars").arg("-i").arg(&vars).arg("--print").arg("--verbose").output().unwrap();
        let text = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{text}");
        assert!(text.contains("Boot0001"), "{text}");
        assert!(text.contains("\\EFI\\systemd\\systemd-bootx64.efi"), "{text}");
        assert!(text.contains("boot order: 0001"), "{text}");
    } else {
        skip(format_args!("virt-fw-vars check: not installed (pip install virt-firmware)"));
    }
}

/// GRUB reads /boot from btrfs and xfs roots (legacy layout: /boot on the root). The
/// test initrd mounts ext4 only (btrfs and xfs are modules in Debian's cloud kernel), so
/// the proof is the kernel starting with the bootspec's command line.
#[test]
fn grub_finds_the_kernel_on_btrfs_and_xfs_roots() {
    let Some(sys) = system() else { return };
    let t = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    for fs_type in ["btrfs", "xfs"] {
        if !tool_exists(&format!("mkfs.{fs_type}")) {
            skip(format_args!("{fs_type}: mkfs.{fs_type} missing"));
            continue;
        }
        let (out, _) =
            stand_in_image(sys, &t.path().join(fs_type), &["--partition-table-type", "legacy", "--fs-type", fs_type]);
        let log = boot_until(&out.join("nixos.img"), "raw", Firmware::Bios, "MDI-BOOT-CMDLINE: ");
        check_cmdline(&log, sys);
    }
}

/// The systemd-boot files land where NixOS puts them (checked with mtools on the ESP).
#[test]
fn systemd_boot_files_on_the_esp() {
    let Some(sys) = system() else { return };
    let t = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (out, _) = stand_in_image(sys, &t.path().join("files"), &["--partition-table-type", "efixbootldr"]);
    let img = out.join("nixos.img");
    let m: serde_json::Value = serde_json::from_slice(&fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let offset = |label: &str| {
        m["filesystems"].as_array().unwrap().iter().find(|f| f["label"] == label).unwrap()["offset"].as_u64().unwrap()
    };
    let mtype = |off: u64, path: &str| {
        let o = Command::new("mtype")
            .arg("-i")
            .arg(format!("{}@@{off}", img.display()))
            .arg(format!("::{path}"))
            .output()
            .unwrap();
        assert!(o.status.success(), "mtype {path}: {}", String::from_utf8_lossy(&o.stderr));
        o.stdout
    };
    let esp = offset("ESP");
    let xbootldr = offset("BOOT");
    let sd = fs::read("/usr/lib/systemd/boot/efi/systemd-bootx64.efi").unwrap();
    assert_eq!(mtype(esp, "/EFI/systemd/systemd-bootx64.efi"), sd);
    assert_eq!(mtype(esp, "/EFI/BOOT/BOOTX64.EFI"), sd);
    let conf = String::from_utf8(mtype(esp, "/loader/loader.conf")).unwrap();
    assert_eq!(conf, "timeout 0\ndefault nixos-generation-1.conf\nconsole-mode keep\n");
    let entry = String::from_utf8(mtype(xbootldr, "/loader/entries/nixos-generation-1.conf")).unwrap();
    let toplevel = fs::read_to_string(sys.join("closure-info/toplevel")).unwrap();
    assert!(
        entry.starts_with(
            "title NixOS\nsort-key nixos\nversion Generation 1 NixOS boot-test (Linux), built on 1970-01-01\n"
        ),
        "{entry}"
    );
    assert!(
        entry.contains(&format!("options init={}/init console=ttyS0 panic=-1 loglevel=4\n", toplevel.trim())),
        "{entry}"
    );
    // The specialisation gets its own entry with its own init and parameters, sharing
    // the kernel file.
    let alt = String::from_utf8(mtype(xbootldr, "/loader/entries/nixos-generation-1-specialisation-alt.conf")).unwrap();
    assert!(alt.starts_with("title NixOS (alt)\n"), "{alt}");
    assert!(
        alt.contains("-nixos-system-boot-test-alt/init console=ttyS0 panic=-1 loglevel=4 mdi.specialisation=alt\n"),
        "{alt}"
    );
    let linux = |e: &str| e.lines().find(|l| l.starts_with("linux ")).unwrap().to_string();
    assert_eq!(linux(&alt), linux(&entry));
    let kernel_line = entry.lines().find(|l| l.starts_with("linux ")).unwrap();
    let kernel = mtype(xbootldr, kernel_line.trim_start_matches("linux "));
    assert_eq!(kernel.len() as u64, fs::metadata(sys.join("build/bzImage")).unwrap().len());
}

/// GRUB's menu: the default entry and one per specialisation (install-grub.pl's top level),
/// read from the ESP of a hybrid image with mtools.
#[test]
fn grub_menu_has_the_specialisations() {
    let Some(sys) = system() else { return };
    let t = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (out, _) = stand_in_image(
        sys,
        &t.path().join("grub-menu"),
        &["--partition-table-type", "hybrid", "--boot-loader", "grub"],
    );
    let m: serde_json::Value = serde_json::from_slice(&fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let esp = m["filesystems"].as_array().unwrap().iter().find(|f| f["label"] == "ESP").unwrap();
    let img = format!("{}@@{}", out.join("nixos.img").display(), esp["offset"]);
    let o = Command::new("mtype").args(["-i", &img, "::/grub/grub.cfg"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cfg = String::from_utf8(o.stdout).unwrap();
    let toplevel = fs::read_to_string(sys.join("closure-info/toplevel")).unwrap();
    assert!(cfg.contains("menuentry \"NixOS - Default\""), "{cfg}");
    assert!(cfg.contains(&format!("init={}/init console=ttyS0", toplevel.trim())), "{cfg}");
    assert!(cfg.contains("menuentry \"NixOS - alt\""), "{cfg}");
    assert!(
        cfg.contains("-nixos-system-boot-test-alt/init console=ttyS0 panic=-1 loglevel=4 mdi.specialisation=alt"),
        "{cfg}"
    );
    // The top level: the default entry and the specialisation; then install-grub.pl's
    // "All configurations" submenu, empty: it skips a generation without nixos-version,
    // which this test system lacks (tests/nix_function.rs checks a generation in it).
    let (top, all) = cfg.split_once("submenu \"NixOS - All configurations\"").expect("the submenu");
    assert_eq!(top.matches("menuentry").count(), 2, "{cfg}");
    assert_eq!(all, " --class submenu {\n}\n", "{cfg}");
}

#[test]
fn boot_loader_errors_are_clear() {
    let Some(sys) = system() else { return };
    let t = tempfile::tempdir().unwrap();
    let toplevel = fs::read_to_string(sys.join("closure-info/toplevel")).unwrap();
    let ci = sys.join("closure-info");
    let root = sys.join("root");
    let run = |extra: &[&str]| {
        let out = t.path().join("out");
        let mut args = vec![
            os("--closure-info"),
            ci.as_os_str(),
            os("--store-root"),
            root.as_os_str(),
            os("--system"),
            os(toplevel.trim()),
            os("-o"),
            out.as_os_str(),
        ];
        args.extend(extra.iter().map(|a| os(a)));
        let err = build_fails(&args);
        assert!(!out.join("nixos.img").exists());
        err
    };
    let err = run(&["--partition-table-type", "legacy", "--boot-loader", "systemd-boot"]);
    assert!(err.contains("systemd-boot needs an EFI system partition"), "{err}");
    let err = run(&["--partition-table-type", "efi", "--systemd-boot", "/nonexistent/systemd-bootx64.efi"]);
    assert!(err.contains("systemdBoot") && err.contains("/nonexistent/systemd-bootx64.efi"), "{err}");
    let empty = t.path().join("no-grub");
    fs::create_dir(&empty).unwrap();
    let err = run(&["--partition-table-type", "legacy", "--grub", empty.to_str().unwrap()]);
    assert!(err.contains("grub-pc-bin"), "{err}");
    // A grub-mkimage whose core.img is bigger than the 1 MiB BIOS boot partition.
    let fat = t.path().join("fat-mkimage");
    fs::write(&fat, "#!/bin/sh\nwhile [ $# -gt 0 ]; do [ \"$1\" = -o ] && out=$2; shift; done\nhead -c 2000000 /dev/zero >\"$out\"\n").unwrap();
    fs::set_permissions(&fat, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let err = run(&["--partition-table-type", "legacy+gpt", "--grub-mkimage", fat.to_str().unwrap()]);
    assert!(err.contains("core.img") && err.contains("does not fit"), "{err}");
    // A system without boot.json: a hard-linked copy of the store without it.
    let bare = t.path().join("bare-root");
    let st = Command::new("cp").arg("-al").arg(&root).arg(&bare).status().unwrap();
    assert!(st.success());
    fs::remove_file(bare.join(&toplevel.trim()[1..]).join("boot.json")).unwrap();
    let err = build_fails(&[
        os("--closure-info"),
        ci.as_os_str(),
        os("--store-root"),
        bare.as_os_str(),
        os("--system"),
        os(toplevel.trim()),
        os("--partition-table-type"),
        os("efi"),
        os("-o"),
        t.path().join("out2").as_os_str(),
    ]);
    assert!(err.contains("bootspec") && err.contains("installBootLoader = false"), "{err}");
}

/// NixOS' `boot.loader.grub.forcei686` (32-bit UEFI firmware on an x86_64 machine): the
/// hybrid image's ESP holds GRUB for i386-efi as BOOTIA32.EFI (no BOOTX64.EFI), and the
/// BIOS side boots.
#[test]
fn grub_force_i686_hybrid() {
    let Some(sys) = system() else { return };
    if !Path::new("/usr/lib/grub/i386-efi/moddep.lst").exists() {
        skip(format_args!("grub_force_i686_hybrid: no /usr/lib/grub/i386-efi (apt-get install grub-efi-ia32-bin)"));
        return;
    }
    let t = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (out, marker) = stand_in_image(
        sys,
        &t.path().join("i686"),
        &["--partition-table-type", "hybrid", "--boot-loader", "grub", "--grub-force-i686", "true"],
    );
    let m: serde_json::Value = serde_json::from_slice(&fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["efiLoader"], "\\EFI\\BOOT\\BOOTIA32.EFI");
    let img = out.join("nixos.img");
    let esp = format!("{}@@{}", img.display(), m["partitions"][0]["start"].as_u64().unwrap());
    let loader = t.path().join("BOOTIA32.EFI");
    let o = Command::new("mcopy").args(["-i", &esp, "::/EFI/BOOT/BOOTIA32.EFI"]).arg(&loader).output().unwrap();
    assert!(o.status.success(), "mcopy: {}", String::from_utf8_lossy(&o.stderr));
    let kind = Command::new("file").arg("-b").arg(&loader).output().unwrap();
    let kind = String::from_utf8_lossy(&kind.stdout);
    assert!(kind.contains("EFI application") && kind.contains("80386"), "{kind}");
    let o = Command::new("mdir").args(["-b", "-i", &esp, "::/EFI/BOOT"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&o.stdout).contains("X64"), "a BOOTX64.EFI beside BOOTIA32.EFI");
    let log = boot(&img, "raw", Firmware::Bios, &marker);
    check_cmdline(&log, sys);
}

/// Issue 16: an entry of GRUB's extraEntries, chosen by `default` (boot.loader.grub.default
/// = 2: NixOS' entries come first, 0 the system and 1 its specialisation, the extra
/// entries after them as install-grub.pl writes them), boots: the kernel command line
/// carries the extra entry's own parameter.
#[test]
fn grub_extra_entry_chosen_by_default_boots() {
    let Some(sys) = system() else { return };
    let toplevel = fs::read_to_string(sys.join("closure-info/toplevel")).unwrap();
    let boot_json = sys.join("root").join(toplevel.trim().trim_start_matches('/')).join("boot.json");
    let spec: serde_json::Value = serde_json::from_slice(&fs::read(&boot_json).unwrap()).unwrap();
    let v1 = &spec["org.nixos.bootspec.v1"];
    let params: Vec<&str> = v1["kernelParams"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    // $drive1 is the filesystem holding /boot (here the root, legacy layout), which
    // grub.cfg's header searches for before any entry.
    let entry = format!(
        "menuentry \"Extra\" {{\n  linux ($drive1){} init={} {} mdi.entry=extra\n  initrd ($drive1){}\n}}",
        v1["kernel"].as_str().unwrap(),
        v1["init"].as_str().unwrap(),
        params.join(" "),
        v1["initrd"].as_str().unwrap()
    );
    // 0 and 1 are NixOS' entry and its specialisation "alt"; the extra entries follow.
    let options = serde_json::json!({ "extraEntries": entry, "default": "2" }).to_string();
    let t = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (out, marker) = stand_in_image(
        sys,
        &t.path().join("grub-extra"),
        &["--partition-table-type", "legacy", "--boot-loader", "grub", "--grub-options", &options],
    );
    let log = boot(&out.join("nixos.img"), "raw", Firmware::Bios, &marker);
    check_cmdline(&log, sys);
    assert!(cmdline(&log).contains("mdi.entry=extra"), "GRUB did not boot the extra entry: {}", cmdline(&log));
}
