//! The real firmware as oracle: OVMF (Debian's `ovmf`) under QEMU/TCG boots a disk whose
//! only loader is systemd-boot at `\EFI\systemd\systemd-bootx64.efi` (no removable-media
//! fallback path), so it can only start through the Boot0001 entry we wrote.

use mdi_efivars::{add_boot_entry, BootEntry};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
const SYSTEMD_BOOT: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";
const GUID: &str = "f222513b-ded1-49fa-b591-20ce86a2fe7f";

fn missing() -> Option<String> {
    for f in [CODE, VARS, SYSTEMD_BOOT] {
        if !Path::new(f).exists() {
            return Some(format!("{f} (packages ovmf, systemd-boot-efi)"));
        }
    }
    for tool in ["qemu-system-x86_64", "sgdisk", "mkfs.fat", "mmd", "mcopy"] {
        if Command::new(tool).arg("--version").output().is_err() {
            return Some(format!("{tool} (packages qemu-system-x86, gdisk, dosfstools, mtools)"));
        }
    }
    None
}

fn run(cmd: &str, args: &[&str]) {
    let o = Command::new(cmd).args(args).env("MTOOLS_SKIP_CHECK", "1").output().unwrap();
    assert!(o.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn ovmf_starts_the_loader_through_our_boot_entry() {
    if let Some(m) = missing() {
        eprintln!("SKIP OVMF boot of the Boot0001 entry: needs {m}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();

    // A GPT disk: partition 1 = ESP at LBA 2048, 65536 sectors, with our partition GUID.
    std::fs::File::create(p("disk.img")).unwrap().set_len(40 << 20).unwrap();
    run("sgdisk", &["-n", "1:2048:+32M", "-t", "1:ef00", "-u", &format!("1:{GUID}"), &p("disk.img")]);
    std::fs::File::create(p("esp.img")).unwrap().set_len(32 << 20).unwrap();
    run("mkfs.fat", &["-i", "12345678", &p("esp.img")]);
    run("mmd", &["-i", &p("esp.img"), "::/EFI", "::/EFI/systemd", "::/loader"]);
    run("mcopy", &["-i", &p("esp.img"), SYSTEMD_BOOT, "::/EFI/systemd/systemd-bootx64.efi"]);
    std::fs::write(p("loader.conf"), "timeout 30\n").unwrap();
    run("mcopy", &["-i", &p("esp.img"), &p("loader.conf"), "::/loader/loader.conf"]);
    let mut disk = std::fs::OpenOptions::new().write(true).open(p("disk.img")).unwrap();
    disk.seek(SeekFrom::Start(2048 * 512)).unwrap();
    disk.write_all(&std::fs::read(p("esp.img")).unwrap()).unwrap();
    drop(disk);

    let entry = BootEntry {
        number: 1,
        description: "NixOS".into(),
        partition_number: 1,
        partition_start_lba: 2048,
        partition_size_lba: 65536,
        partition_guid: [
            0xf2, 0x22, 0x51, 0x3b, 0xde, 0xd1, 0x49, 0xfa, 0xb5, 0x91, 0x20, 0xce, 0x86, 0xa2, 0xfe, 0x7f,
        ],
        loader_path: r"\EFI\systemd\systemd-bootx64.efi".into(),
    };
    std::fs::write(p("vars.fd"), add_boot_entry(&std::fs::read(VARS).unwrap(), &entry).unwrap()).unwrap();

    let mut qemu = Command::new("qemu-system-x86_64")
        .args(["-machine", "q35", "-accel", "tcg", "-m", "256", "-display", "none", "-nodefaults", "-no-reboot"])
        .args(["-serial", "stdio"])
        .args(["-drive", &format!("if=pflash,format=raw,unit=0,readonly=on,file={CODE}")])
        .args(["-drive", &format!("if=pflash,format=raw,unit=1,file={}", p("vars.fd"))])
        .args(["-drive", &format!("file={},format=raw,if=virtio", p("disk.img"))])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut out = qemu.stdout.take().unwrap();
    let sink = Arc::clone(&log);
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });

    // OVMF names the entry it boots; systemd-boot then draws its menu.
    let started = format!(
        r#"BdsDxe: starting Boot0001 "NixOS" from HD(1,GPT,{},0x800,0x10000)/\EFI\systemd\systemd-bootx64.efi"#,
        GUID.to_uppercase()
    );
    let menu = "Reboot Into Firmware Interface";
    let deadline = Instant::now() + Duration::from_secs(240);
    let text = loop {
        let text = String::from_utf8_lossy(&log.lock().unwrap()).into_owned();
        let done = text.contains(&started) && text.contains(menu);
        if done || Instant::now() > deadline || qemu.try_wait().unwrap().is_some() {
            break text;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = qemu.kill();
    let _ = qemu.wait();
    let _ = reader.join();
    let printable: String = text.chars().filter(|c| !c.is_control() || *c == '\n').collect();
    assert!(text.contains(&started), "OVMF did not start our Boot0001; serial console:\n{printable}");
    assert!(text.contains(menu), "systemd-boot's menu did not appear; serial console:\n{printable}");
}
