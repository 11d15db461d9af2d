//! Our UKI builder against systemd's own `ukify build` (the oracle: same inputs, same bytes)
//! and binutils' `objdump -h` (an independent PE reader: the sections where we put them).
//!
//! ukify is found as `$MDI_UKIFY`, `ukify` on PATH, or /usr/lib/systemd/ukify; it needs
//! python3-pefile. Debian 12 has no ukify package: Debian 13's `systemd-ukify` (a Python
//! script, architecture all) runs on Debian 12 with bookworm's python3-pefile.

use mdi_pe::uki::Uki;
use std::path::{Path, PathBuf};
use std::process::Command;

const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";
const BOOT: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";

use mdi_testkit::skip;

fn ukify() -> Option<PathBuf> {
    let mut c: Vec<PathBuf> = std::env::var_os("MDI_UKIFY").map(PathBuf::from).into_iter().collect();
    if let Some(path) = std::env::var_os("PATH") {
        c.extend(std::env::split_paths(&path).map(|d| d.join("ukify")));
    }
    c.push("/usr/lib/systemd/ukify".into());
    let found = c.into_iter().find(|p| p.is_file());
    if found.is_none() {
        skip("ukify not found (set MDI_UKIFY, or install systemd-ukify and python3-pefile)");
    }
    found
}

fn read(p: &str) -> Option<Vec<u8>> {
    let r = std::fs::read(p).ok();
    if r.is_none() {
        skip(format_args!("{p}: not installed (apt-get install systemd-boot-efi)"));
    }
    r
}

/// The host's kernel, when readable (a real bzImage makes the `.linux` VirtualSize case real).
fn host_kernel() -> Option<PathBuf> {
    let mut k: Vec<PathBuf> = std::fs::read_dir("/boot")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
        .filter(|p| std::fs::File::open(p).is_ok())
        .collect();
    k.sort();
    k.pop()
}

/// `ukify build` with the same inputs as `uki`, written through files in `dir`.
fn ukify_build(ukify: &Path, dir: &Path, uki: &Uki, linux: &Path) -> Vec<u8> {
    let mut cmd = Command::new("python3");
    cmd.arg(ukify).arg("build").arg(format!("--stub={STUB}")).arg(format!("--linux={}", linux.display()));
    for (i, initrd) in uki.initrds.iter().enumerate() {
        let p = dir.join(format!("initrd{i}"));
        std::fs::write(&p, initrd).unwrap();
        cmd.arg(format!("--initrd={}", p.display()));
    }
    for (flag, data) in [("cmdline", uki.cmdline), ("os-release", uki.os_release)] {
        if let Some(d) = data {
            let p = dir.join(flag);
            std::fs::write(&p, d).unwrap();
            cmd.arg(format!("--{flag}=@{}", p.display()));
        }
    }
    let uname = std::str::from_utf8(uki.uname.expect("tests give --uname")).unwrap();
    cmd.arg(format!("--uname={uname}"));
    let out = dir.join("ukify.efi");
    cmd.arg(format!("--output={}", out.display()));
    let o = cmd.env("SOURCE_DATE_EPOCH", "0").output().expect("python3 runs");
    assert!(o.status.success(), "ukify: {}", String::from_utf8_lossy(&o.stderr));
    std::fs::read(out).unwrap()
}

fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y).or((a.len() != b.len()).then(|| a.len().min(b.len())))
}

/// Same inputs, same bytes as ukify: with systemd-boot standing in for a (small, PE) kernel,
/// one initrd and with several (4-byte padding between them).
#[test]
fn same_bytes_as_ukify() {
    let (Some(stub), Some(boot)) = (read(STUB), read(BOOT)) else { return };
    let Some(ukify) = ukify() else { return };
    let dir = tempfile::tempdir().unwrap();
    let osrel = b"ID=nixos\nNAME=NixOS\nVERSION_ID=\"25.05\"\nPRETTY_NAME=\"NixOS 25.05\"\n".to_vec();
    let cmdline = b"init=/nix/store/x-nixos-system/init usrhash=0123abcd quiet".to_vec();
    let initrd_a: Vec<u8> = (0..100_003u32).map(|i| (i * 31 % 253) as u8).collect();
    let initrd_b = b"second initrd, odd length".to_vec();
    for initrds in [vec![&initrd_a[..]], vec![&initrd_a[..], &initrd_b[..]], vec![]] {
        let uki = Uki {
            stub: &stub,
            linux: &boot,
            initrds: initrds.clone(),
            cmdline: Some(&cmdline),
            os_release: Some(&osrel),
            uname: Some(b"6.1.0-test"),
            ..Uki::default()
        };
        let ours = uki.build().unwrap();
        let theirs = ukify_build(&ukify, dir.path(), &uki, Path::new(BOOT));
        assert!(
            ours == theirs,
            "{} initrds: UKIs differ ({} vs {} bytes, first difference at {:?})",
            initrds.len(),
            ours.len(),
            theirs.len(),
            first_difference(&ours, &theirs)
        );
        // Building twice gives the same bytes.
        assert!(uki.build().unwrap() == ours);
    }
}

/// With the host's real kernel (its SizeOfImage becomes `.linux`'s VirtualSize).
#[test]
fn same_bytes_as_ukify_with_the_host_kernel() {
    let Some(stub) = read(STUB) else { return };
    let Some(ukify) = ukify() else { return };
    let Some(kpath) = host_kernel() else {
        skip("no readable /boot/vmlinuz-*");
        return;
    };
    let kernel = std::fs::read(&kpath).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let initrd = vec![0x5au8; 4099];
    let uki = Uki {
        stub: &stub,
        linux: &kernel,
        initrds: vec![&initrd],
        cmdline: Some(b"console=ttyS0"),
        os_release: Some(b"ID=debian\n"),
        uname: Some(b"6.1.0-host"),
        ..Uki::default()
    };
    let ours = uki.build().unwrap();
    let theirs = ukify_build(&ukify, dir.path(), &uki, &kpath);
    assert!(ours == theirs, "UKIs differ at {:?}", first_difference(&ours, &theirs));
}

/// objdump reads our UKI: every section at the address and file offset ukify's rules give.
#[test]
fn objdump_lists_the_sections() {
    let (Some(stub), Some(boot)) = (read(STUB), read(BOOT)) else { return };
    let initrd = vec![1u8; 5000];
    let uki = Uki {
        stub: &stub,
        linux: &boot,
        initrds: vec![&initrd],
        cmdline: Some(b"quiet"),
        os_release: Some(b"ID=nixos\n"),
        uname: Some(b"6.6.6"),
        ..Uki::default()
    };
    let bytes = uki.build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("uki.efi");
    std::fs::write(&p, &bytes).unwrap();
    let o = match Command::new("objdump").arg("-h").arg(&p).output() {
        Ok(o) => o,
        Err(_) => return skip("objdump not found (apt-get install binutils)"),
    };
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // name -> (size, vma, file offset) as objdump prints them.
    let rows: Vec<(String, u64, u64, u64)> = text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 6 && f[0].parse::<u32>().is_ok()).then(|| {
                let h = |s: &str| u64::from_str_radix(s, 16).unwrap();
                (f[1].to_string(), h(f[2]), h(f[3]), h(f[5]))
            })
        })
        .collect();
    let names: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    let added = [".osrel", ".cmdline", ".uname", ".linux", ".initrd"];
    assert_eq!(&names[names.len() - added.len()..], added, "{text}");
    let img = mdi_pe::image::PeImage::parse(bytes.clone()).unwrap();
    let sa = u64::from(img.section_alignment().unwrap());
    let fa = u64::from(img.file_alignment().unwrap());
    for w in rows.windows(2).skip(names.len() - added.len() - 1) {
        let (prev, cur) = (&w[0], &w[1]);
        assert_eq!(cur.2, (prev.2 + prev.1).div_ceil(sa) * sa, "{} VMA\n{text}", cur.0);
        assert_eq!(cur.3 % fa, 0, "{} file offset\n{text}", cur.0);
    }
    let find = |n: &str| rows.iter().find(|r| r.0 == n).unwrap().clone();
    assert_eq!(find(".initrd").1, 5000);
    assert_eq!(find(".cmdline").1, 5);
    let k = find(".linux");
    assert_eq!(&bytes[k.3 as usize..k.3 as usize + boot.len()], &boot[..]);
}
