//! Issue 17: reading images made elsewhere. Every image here is made at test time by the
//! real tools (qemu-img, mkfs.ext4, mkfs.vfat, mtools, sfdisk/fdisk) or, for formats no
//! installed tool writes (Bochs, cloop, DMG, a Virtual PC VHD), crafted from their
//! published layouts; nothing is fetched. Each test names the item of the issue it guards.

mod common;
use common::*;
use proptest::prelude::*;
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `make-disk-image ARGS`: (exit code, stdout, stderr).
fn mdi(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(bin()).args(args).output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Runs a tool that must succeed; returns its stdout.
fn tool(cmd: &str, args: &[&str]) -> String {
    let o = Command::new(cmd)
        .args(args)
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e} (is it installed?)"));
    assert!(
        o.status.success(),
        "{cmd} {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn inspect_json(img: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["inspect", p(img), "--json"];
    args.extend_from_slice(extra);
    let (code, out, err) = mdi(&args);
    assert_eq!(code, 0, "inspect {}: {err}", img.display());
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("inspect --json output: {e}\n{out}"))
}

fn qemu_vpc_size(img: &Path) -> u64 {
    let v: Value = serde_json::from_str(&tool("qemu-img", &["info", "-f", "vpc", "--output=json", p(img)])).unwrap();
    v["virtual-size"].as_u64().unwrap()
}

// ------------------------------------------------------------------ item 1

/// Item 1: a file with no known magic is not read as raw; the formats qemu-img reads and we
/// do not are named; `--input-format raw` reads anything; nothing is written on refusal.
#[test]
fn unknown_and_unsupported_formats_are_refused_by_name() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let made = |name: &str, args: &[&str]| -> PathBuf {
        let f = d.join(name);
        let mut a: Vec<&str> = vec!["create"];
        a.extend_from_slice(args);
        a.extend([p(&f), "4M"]);
        tool("qemu-img", &a);
        f
    };
    let crafted = |name: &str, head: &[u8], len: usize, tail: Option<&[u8]>| -> PathBuf {
        let f = d.join(name);
        let mut b = vec![0u8; len];
        b[..head.len()].copy_from_slice(head);
        if let Some(t) = tail {
            b[len - 512..len - 512 + t.len()].copy_from_slice(t);
        }
        fs::write(&f, b).unwrap();
        f
    };
    let cases: Vec<(PathBuf, &str)> = vec![
        (made("a.qed", &["-f", "qed"]), "QED image"),
        (made("a.parallels", &["-f", "parallels"]), "Parallels image"),
        (
            made("a.luks", &["-f", "luks", "--object", "secret,id=s0,data=pw", "-o", "key-secret=s0,iter-time=10"]),
            "LUKS",
        ),
        (made("a.qcow", &["-f", "qcow"]), "qcow version 1"),
        (crafted("a.bochs", b"Bochs Virtual HD Image\0", 4096, None), "Bochs image"),
        (
            crafted(
                "a.cloop",
                b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n",
                4096,
                None,
            ),
            "cloop image",
        ),
        (crafted("a.dmg", b"some compressed data", 8192, Some(b"koly")), "DMG"),
        (crafted("a.cowd", b"COWD", 4096, None), "VMDK3"),
    ];
    for (img, what) in &cases {
        for cmd in [vec!["inspect", p(img)], vec!["convert", p(img), p(&d.join("out.raw")), "--format", "raw"]] {
            let (code, _, err) = mdi(&cmd);
            assert_ne!(code, 0, "{cmd:?} accepted {}", img.display());
            assert!(err.contains(what) && err.contains("does not read"), "{cmd:?}: {err}");
            assert!(err.contains("raw, qcow2, vdi, vpc, vmdk, vhdx"), "{err}");
            assert!(!d.join("out.raw").exists());
        }
    }

    // No magic at all: unrecognised, with the magic shown and the way out named.
    let junk = crafted("junk.bin", b"hello, not a disk", 3000, None);
    let (code, out, err) = mdi(&["convert", p(&junk), p(&d.join("out.raw")), "--format", "raw"]);
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("unrecognised image format (magic 68 65 6c 6c 6f 2c 20 6e \"hello, n\")")
            && err.contains("convert reads raw, qcow2, vdi, vpc, vmdk, vhdx")
            && err.contains("--input-format raw"),
        "{err}"
    );
    let (code, _, err) = mdi(&["diff", p(&junk), p(&junk)]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unrecognised image format"), "diff's errors go to stderr: {err}");
    // ... unless the user says it is raw.
    let (code, _, err) = mdi(&["convert", p(&junk), p(&d.join("out.raw")), "--format", "raw", "--input-format", "raw"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(inspect_json(&junk, &["--input-format", "raw"])["image"]["format"], "raw");
    let (code, _, _) = mdi(&["diff", p(&junk), p(&junk), "--input-format", "raw"]);
    assert_eq!(code, 0);
    // A wrong forced format is an error naming what the file is.
    let q = made("b.qcow2", &["-f", "qcow2"]);
    let (code, _, err) = mdi(&["inspect", p(&q), "--input-format", "vdi"]);
    assert_ne!(code, 0);
    assert!(err.contains("is a qcow2 image, not vdi"), "{err}");

    // What starts like a disk is still raw without being told: zeros, an MBR, a GPT on
    // 4096-byte sectors, bare ext4 and FAT, an empty file.
    let zeros = crafted("zeros.img", b"", 1 << 20, None);
    let empty = crafted("empty.img", b"", 512, None);
    fs::write(&empty, b"").unwrap();
    let mbr = d.join("mbr.img");
    fs::write(&mbr, vec![0u8; 8 << 20]).unwrap();
    sfdisk(&mbr, "label: dos\nstart=2048, type=83\n");
    let ext4 = d.join("ext4.img");
    tool("mkfs.ext4", &["-q", "-F", p(&ext4), "8M"]);
    let vfat = d.join("vfat.img");
    tool("mkfs.vfat", &["-C", p(&vfat), "8192"]);
    for img in [&zeros, &empty, &mbr, &ext4, &vfat] {
        assert_eq!(inspect_json(img, &[])["image"]["format"], "raw", "{}", img.display());
    }
}

fn sfdisk(img: &Path, script: &str) {
    use std::io::Write;
    let mut c = Command::new("sfdisk")
        .args(["--no-reread", "--no-tell-kernel", "-q", p(img)])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("sfdisk (apt-get install fdisk)");
    c.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    assert!(c.wait().unwrap().success(), "sfdisk {script}");
}

// ------------------------------------------------------------------ item 3

fn convert_ok(input: &Path, output: &Path, format: &str, extra: &[&str]) -> String {
    let mut a = vec!["convert", p(input), p(output), "--format", format];
    a.extend_from_slice(extra);
    let (code, _, err) = mdi(&a);
    assert_eq!(code, 0, "convert {} → {format}: {err}", input.display());
    err
}

/// Item 3 on one input: every output format, read back by qemu-img, equals qemu-img's own
/// raw conversion of the input.
fn converts_like_qemu(dir: &Path, input: &Path, extra: &[&str]) {
    let oracle = dir.join("oracle.raw");
    tool("qemu-img", &["convert", "-f", "raw", "-O", "raw", p(input), p(&oracle)]);
    let want = fs::read(&oracle).unwrap();
    let len = fs::metadata(input).unwrap().len();
    assert_eq!(want.len() as u64, len.div_ceil(512) * 512, "qemu pads to whole sectors");
    for fmt in ["raw", "qcow2", "qcow2-compressed", "vpc", "vdi", "vmdk", "vhdx"] {
        let out = dir.join(format!("out.{fmt}"));
        let err = convert_ok(input, &out, fmt, extra);
        assert_eq!(err.contains("not a whole number of 512-byte sectors"), len % 512 != 0, "{fmt}: note: {err}");
        let back = dir.join("back.raw");
        let qfmt = if fmt == "qcow2-compressed" { "qcow2" } else { fmt };
        tool("qemu-img", &["convert", "-f", qfmt, "-O", "raw", p(&out), p(&back)]);
        let got = fs::read(&back).unwrap();
        // vpc rounds the disk up to its geometry (and fixed VHDs to a MiB): compare the
        // common part, and require the rest to be zeros.
        assert!(got.len() >= want.len(), "{fmt}: {} bytes, qemu-img says {}", got.len(), want.len());
        assert!(got[..want.len()] == want[..], "{fmt}: content differs from qemu-img convert -O raw ({len} bytes in)");
        assert!(got[want.len()..].iter().all(|&b| b == 0), "{fmt}: bytes past the disk");
        if fmt != "vpc" {
            assert_eq!(got.len(), want.len(), "{fmt}: virtual size");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]
    /// Item 3: inputs of any size, multiples of 512 or not, with the first sector a disk's
    /// (detected) or anything (--input-format raw).
    #[test]
    fn convert_of_any_size_equals_qemu_img(
        len in prop_oneof![1usize..600, 600usize..70_000, Just(2182usize), Just(512usize)],
        seed in any::<u64>(),
        detected in any::<bool>(),
    ) {
        let t = tempfile::tempdir().unwrap();
        let mut x = seed | 1;
        let mut data: Vec<u8> = (0..len).map(|_| { x ^= x << 13; x ^= x >> 7; x ^= x << 17; x as u8 }).collect();
        if detected {
            data[..len.min(512)].fill(0);
        }
        let input = t.path().join("in.bin");
        fs::write(&input, &data).unwrap();
        let extra: &[&str] = if detected { &[] } else { &["--input-format", "raw"] };
        converts_like_qemu(t.path(), &input, extra);
    }
}

// ------------------------------------------------------------------ item 2

/// The VHD footer checksum: the one's complement of the byte sum, the field taken as zero
/// (VHD specification 1.0, "Hard Disk Footer Format").
fn vhd_checksum(f: &[u8]) -> u32 {
    !f.iter().enumerate().filter(|(i, _)| !(64..68).contains(i)).map(|(_, &b)| u32::from(b)).sum::<u32>()
}

/// A fixed VHD of `current` data bytes with the given creator and geometry.
fn fixed_vhd(path: &Path, creator: &[u8; 4], current: u64, chs: (u16, u8, u8)) -> Vec<u8> {
    let mut data: Vec<u8> = (0..current).map(|i| (i % 251) as u8 + 1).collect();
    data[..512].fill(0);
    data[510] = 0x55;
    data[511] = 0xAA;
    let mut f = [0u8; 512];
    f[..8].copy_from_slice(b"conectix");
    f[8..12].copy_from_slice(&2u32.to_be_bytes()); // features: reserved bit
    f[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes()); // version 1.0
    f[16..24].copy_from_slice(&u64::MAX.to_be_bytes()); // data offset: none (fixed)
    f[28..32].copy_from_slice(creator);
    f[32..36].copy_from_slice(&0x0005_0003u32.to_be_bytes());
    f[36..40].copy_from_slice(b"Wi2k");
    f[40..48].copy_from_slice(&current.to_be_bytes());
    f[48..56].copy_from_slice(&current.to_be_bytes());
    f[56..58].copy_from_slice(&chs.0.to_be_bytes());
    f[58] = chs.1;
    f[59] = chs.2;
    f[60..64].copy_from_slice(&2u32.to_be_bytes()); // fixed
    let sum = vhd_checksum(&f);
    f[64..68].copy_from_slice(&sum.to_be_bytes());
    let mut file = data.clone();
    file.extend_from_slice(&f);
    fs::write(path, file).unwrap();
    data
}

/// Item 2: a VHD made by Virtual PC is as large as its CHS geometry (what qemu-img reads),
/// one made by Hyper-V as its current size; convert carries the same size.
#[test]
fn virtual_pc_vhd_is_sized_by_its_geometry() {
    let t = tempfile::tempdir().unwrap();
    // 20 cylinders × 4 heads × 17 sectors = 1360 sectors = 696,320 bytes, inside 1 MiB.
    for (creator, want) in [(b"vpc ", 1360u64 * 512), (b"qemu", 1360 * 512), (b"win ", 1 << 20)] {
        let img = t.path().join("vpc.vhd");
        let data = fixed_vhd(&img, creator, 1 << 20, (20, 4, 17));
        assert_eq!(qemu_vpc_size(&img), want, "qemu-img, creator {creator:?}");
        let v = inspect_json(&img, &[]);
        assert_eq!(v["image"]["format"], "vpc");
        assert_eq!(v["image"]["virtualSize"], want, "creator {creator:?}");
        let geometry_note = v["image"]["notes"].as_array().unwrap().iter().any(|n| n.as_str().unwrap().contains("CHS"));
        assert_eq!(geometry_note, want != 1 << 20, "{}", v["image"]["notes"]);
        let out = t.path().join("out.raw");
        convert_ok(&img, &out, "raw", &[]);
        let oracle = t.path().join("oracle.raw");
        tool("qemu-img", &["convert", "-f", "vpc", "-O", "raw", p(&img), p(&oracle)]);
        assert_eq!(fs::read(&out).unwrap(), fs::read(&oracle).unwrap(), "creator {creator:?}");
        assert_eq!(fs::read(&out).unwrap(), data[..want as usize], "creator {creator:?}");
    }
    // The largest geometry says nothing: the current size is used, as qemu does.
    let img = t.path().join("max.vhd");
    fixed_vhd(&img, b"vpc ", 1 << 20, (65535, 16, 255));
    assert_eq!(qemu_vpc_size(&img), 1 << 20);
    assert_eq!(inspect_json(&img, &[])["image"]["virtualSize"], 1 << 20);
}
