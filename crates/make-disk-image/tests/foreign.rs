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

// ------------------------------------------------------------------ item 5

/// A debugfs request's output.
fn debugfs(img: &Path, req: &str) -> String {
    tool("debugfs", &["-R", req, p(img)])
}

/// The first block number debugfs prints for `blocks PATH`.
fn first_block(img: &Path, path: &str) -> u64 {
    debugfs(img, &format!("blocks {path}")).split_whitespace().next().unwrap().parse().unwrap()
}

fn poke(img: &Path, at: u64, byte: u8) {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new().write(true).open(img).unwrap();
    f.write_all_at(&[byte], at).unwrap();
}

/// `diff --json` of two images: (exit code, the "what" of every difference).
fn diff_whats(a: &Path, b: &Path) -> (i32, Vec<String>) {
    let (code, out, err) = mdi(&["diff", p(a), p(b), "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    let whats = v["differences"].as_array().unwrap().iter().map(|d| format!("{}: {}", d["place"], d["what"])).collect();
    (code, whats)
}

/// Item 5: one byte changed anywhere — directory slack, past a file's end, an unwritten
/// extent, free space, a qcow2's metadata, a raw file's last partial sector — makes `diff`
/// exit 1 and name the structure it belongs to.
#[test]
fn diff_is_exact_and_names_what_no_file_explains() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let src = d.join("src");
    fs::create_dir_all(src.join("dir")).unwrap();
    fs::write(src.join("small"), "hello\n").unwrap();
    fs::write(src.join("big"), vec![7u8; 100_000]).unwrap();
    fs::write(src.join("dir/f"), "x").unwrap();
    let base = d.join("base.img");
    // No metadata_csum: the changed bytes are then invisible to every checksum, the hardest
    // case for a comparison by structure.
    tool("mkfs.ext4", &["-q", "-F", "-b", "4096", "-O", "^metadata_csum", "-d", p(&src), p(&base), "16M"]);
    // An unwritten extent at logical blocks 30-40 of /big (debugfs' fallocate).
    debugfs_w(&base, "fallocate /big 30 40");
    let extents = debugfs(&base, "stat /big");
    let unwritten: u64 = extents
        .split([' ', ',', '\n'])
        .find_map(|w| w.strip_prefix("(30-40[u]):").and_then(|r| r.split('-').next()).and_then(|n| n.parse().ok()))
        .unwrap_or_else(|| panic!("no unwritten extent: {extents}"));
    let bs = 4096u64;
    let free = (3000..4096u64).find(|b| debugfs(&base, &format!("testb {b}")).contains("not in use")).unwrap();
    let cases: Vec<(&str, u64, &str)> = vec![
        ("slack", first_block(&base, "/dir") * bs + 2048, "directory /dir: bytes its entries do not use"),
        ("past-end", first_block(&base, "/small") * bs + 1000, "file /small: bytes past its end (6 bytes)"),
        ("unwritten", unwritten * bs + 5, "file /big: an unwritten extent"),
        ("free", free * bs + 77, "free space"),
    ];
    for (name, at, want) in cases {
        let img = d.join(format!("{name}.img"));
        fs::copy(&base, &img).unwrap();
        poke(&img, at, 0xA5);
        let (code, whats) = diff_whats(&base, &img);
        assert_eq!(code, 1, "{name}: {whats:?}");
        assert!(whats.iter().any(|w| w.contains(want) && w.contains("filesystem (ext4)")), "{name}: {whats:?}");
        // A file that reads the same does not count as a file difference.
        assert!(!whats.iter().any(|w| w.contains("content")), "{name}: {whats:?}");
    }
    let (code, whats) = diff_whats(&base, &base);
    assert_eq!((code, whats.len()), (0, 0), "{whats:?}");

    // A flipped byte in the metadata of an empty qcow2 (an unused part of its header
    // cluster): the disks are equal, the files are not.
    let q = d.join("empty.qcow2");
    tool("qemu-img", &["create", "-f", "qcow2", p(&q), "64M"]);
    let q2 = d.join("flipped.qcow2");
    fs::copy(&q, &q2).unwrap();
    poke(&q2, 40_000, 1);
    let (code, whats) = diff_whats(&q, &q2);
    assert_eq!(code, 1, "{whats:?}");
    assert!(whats.iter().any(|w| w.contains("at file offset 39936") && w.contains("qcow2 metadata")), "{whats:?}");

    // Raw files of 2,182 and 2,560 bytes are one disk (the padding of the last sector),
    // not one file.
    let (r1, r2) = (d.join("r1.img"), d.join("r2.img"));
    fs::write(&r1, vec![0u8; 2182]).unwrap();
    fs::write(&r2, vec![0u8; 2560]).unwrap();
    let (code, whats) = diff_whats(&r1, &r2);
    assert_eq!(code, 1, "{whats:?}");
    assert!(whats.iter().any(|w| w.contains("file size")), "{whats:?}");
}

fn debugfs_w(img: &Path, req: &str) {
    tool("debugfs", &["-w", "-R", req, p(img)]);
}

// ------------------------------------------------------------------ item 4

/// Item 4: `diff` of an ext4 with 20,000 hard links to one file stays small (it took
/// memory quadratic in the links: 7.1 GB for 8,000), and a changed link set is named
/// briefly.
#[test]
fn diff_memory_is_linear_in_hard_links() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir_all(src.join("links")).unwrap();
    fs::write(src.join("target"), "one inode, many names\n").unwrap();
    for i in 0..20_000 {
        fs::hard_link(src.join("target"), src.join(format!("links/l{i:05}"))).unwrap();
    }
    let a = t.path().join("a.img");
    tool("mkfs.ext4", &["-q", "-F", "-N", "4096", "-d", p(&src), p(&a), "64M"]);
    fs::remove_file(src.join("links/l00000")).unwrap();
    let b = t.path().join("b.img");
    tool(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-N",
            "4096",
            "-U",
            &uuid_of(&a),
            "-E",
            &format!("hash_seed={}", hash_seed_of(&a)),
            "-d",
            p(&src),
            p(&b),
            "64M",
        ],
    );
    // Under a 1 GiB address-space limit (the quadratic version needed about 12 GB here).
    let o = Command::new("sh")
        .args(["-c", "ulimit -v 1048576 && exec \"$0\" diff \"$1\" \"$2\"", bin(), p(&a), p(&b)])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{}{}", &text[..text.len().min(2000)], String::from_utf8_lossy(&o.stderr));
    assert!(text.contains("/links/l00000: only in the first image"), "{}", &text[..text.len().min(2000)]);
    // Every other name's link set changed: each line names a few, then a count.
    let line = text
        .lines()
        .find(|l| l.contains("/links/l00001: hard links"))
        .unwrap_or_else(|| panic!("{}", &text[..text.len().min(2000)]));
    assert!(line.len() < 400 && line.contains("more"), "{line}");
}

fn uuid_of(img: &Path) -> String {
    let out = tool("dumpe2fs", &["-h", p(img)]);
    out.lines().find_map(|l| l.strip_prefix("Filesystem UUID:")).unwrap().trim().to_string()
}

fn hash_seed_of(img: &Path) -> String {
    let out = tool("dumpe2fs", &["-h", p(img)]);
    out.lines().find_map(|l| l.strip_prefix("Directory Hash Seed:")).unwrap().trim().to_string()
}

// ------------------------------------------------------------------ item 6

/// Item 6: a GPT written by `fdisk -b 4096` (LBA 1 at byte 4096) is found with its
/// 4096-byte sectors, its partitions where fdisk put them, and their filesystems read.
#[test]
fn gpt_on_4096_byte_sectors() {
    use std::io::Write;
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let img = d.join("4kn.img");
    fs::File::create(&img).unwrap().set_len(64 << 20).unwrap();
    let mut c = Command::new("fdisk")
        .args(["-b", "4096", p(&img)])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("fdisk (apt-get install fdisk)");
    // New GPT; partition 1 from sector 256, 16 MiB; partition 2 the rest; write.
    c.stdin.take().unwrap().write_all(b"g\nn\n1\n256\n+16M\nn\n2\n\n\nw\n").unwrap();
    assert!(c.wait().unwrap().success());
    // fdisk's own view: "4kn.img1  256  4351  4096  16M Linux filesystem".
    let list = tool("fdisk", &["-b", "4096", "-l", p(&img)]);
    let rows: Vec<(u64, u64)> = list
        .lines()
        .filter(|l| l.starts_with(p(&img)))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[1].parse().unwrap(), f[3].parse().unwrap())
        })
        .collect();
    assert_eq!(rows.len(), 2, "{list}");
    // Filesystems made apart and copied to the partitions' byte offsets.
    let vfat = d.join("vfat.img");
    tool("mkfs.vfat", &["-n", "FOURK", "-C", p(&vfat), "16384"]);
    let src = d.join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("hello"), "from a 4Kn disk\n").unwrap();
    let ext4 = d.join("ext4.img");
    tool("mkfs.ext4", &["-q", "-F", "-L", "root4k", "-d", p(&src), p(&ext4), "32M"]);
    {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new().write(true).open(&img).unwrap();
        f.write_all_at(&fs::read(&vfat).unwrap(), rows[0].0 * 4096).unwrap();
        f.write_all_at(&fs::read(&ext4).unwrap(), rows[1].0 * 4096).unwrap();
    }
    let v = inspect_json(&img, &[]);
    let table = &v["partitionTable"];
    assert_eq!(table["type"], "gpt", "{v}");
    assert_eq!(table["sectorSize"], 4096);
    assert_eq!(table["problems"].as_array().unwrap().len(), 0, "{table}");
    let parts: Vec<(u64, u64)> = table["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["start"].as_u64().unwrap(), x["size"].as_u64().unwrap()))
        .collect();
    assert_eq!(parts, rows);
    let fss = v["filesystems"].as_array().unwrap();
    assert_eq!(fss[0]["type"], "vfat", "{v}");
    assert_eq!(fss[0]["offset"], rows[0].0 * 4096);
    assert_eq!(fss[1]["type"], "ext4");
    assert_eq!(fss[1]["label"], "root4k");
    let (code, out, err) = mdi(&["inspect", p(&img), "--cat", "root4k:/hello"]);
    assert_eq!((code, out.as_str()), (0, "from a 4Kn disk\n"), "{err}");
    let (code, out, _) = mdi(&["inspect", p(&img)]);
    assert!(code == 0 && out.contains("4096-byte sectors"), "{out}");
}

// ------------------------------------------------------------------ item 7

/// Item 7: bigalloc ext4 (1 KiB blocks in 16 KiB clusters, where group 0's superblock is
/// block 1 though s_first_data_block is 0; and 4 KiB blocks in 64 KiB clusters) is read:
/// the summary matches dumpe2fs, files list and read back.
#[test]
fn bigalloc_ext4_is_read() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir_all(src.join("dir")).unwrap();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
    fs::write(src.join("dir/data"), &data).unwrap();
    fs::write(src.join("hello"), "bigalloc\n").unwrap();
    for (bs, cluster) in [("1024", "16384"), ("4096", "65536")] {
        let img = t.path().join(format!("bigalloc-{bs}.img"));
        tool("mkfs.ext4", &["-q", "-F", "-b", bs, "-O", "bigalloc", "-C", cluster, "-d", p(&src), p(&img), "128M"]);
        e2fsck_clean(&img);
        let dump = tool("dumpe2fs", &["-h", p(&img)]);
        let field =
            |name: &str| -> u64 { dump.lines().find_map(|l| l.strip_prefix(name)).unwrap().trim().parse().unwrap() };
        let v = inspect_json(&img, &[]);
        let f = &v["filesystems"][0];
        assert_eq!(f["type"], "ext4", "{v}");
        assert!(f.get("error").is_none(), "{f}");
        assert_eq!(f["problems"].as_array().unwrap().len(), 0, "{f}");
        assert_eq!(f["blockSize"], field("Block size:"));
        assert_eq!(f["clusterSize"], field("Cluster size:"));
        assert_eq!(f["blocks"], field("Block count:"));
        assert_eq!(f["freeBlocks"], field("Free blocks:"));
        assert!(f["features"].as_array().unwrap().iter().any(|x| x == "bigalloc"));
        let o = Command::new(bin()).args(["inspect", p(&img), "--cat", "/dir/data"]).output().unwrap();
        assert!(o.status.success() && o.stdout == data, "{}", String::from_utf8_lossy(&o.stderr));
        let (code, out, err) = mdi(&["inspect", p(&img), "--cat", "/hello"]);
        assert_eq!((code, out.as_str()), (0, "bigalloc\n"), "{err}");
        let (code, _, err) = mdi(&["diff", p(&img), p(&img)]);
        assert_eq!(code, 0, "{err}");
    }
}

// ------------------------------------------------------------------ item 8

/// Item 8: FAT32 by its BPB with fewer than 65,525 clusters (mkfs.vfat -F 32 with 4 KiB
/// sectors, or 8 sectors per cluster on a small volume) is read as FAT32 with fsck.fat's
/// cluster count and a warning like fsck.fat's; its root directory (label entry) is read.
#[test]
fn small_fat32_is_fat32_with_a_warning() {
    let t = tempfile::tempdir().unwrap();
    for (name, opts) in [("s4096", ["-S", "4096"]), ("s8", ["-s", "8"])] {
        let img = t.path().join(format!("{name}.img"));
        let mut a = vec!["-F", "32", "-n", "SMALL32"];
        a.extend(opts);
        a.extend(["-C", p(&img), "65536"]);
        tool("mkfs.vfat", &a);
        // fsck.fat -n: "IMG: 0 files, 1/16320 clusters", and its warning.
        let o = Command::new("fsck.fat").args(["-n", p(&img)]).output().unwrap();
        let fsck = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        assert!(o.status.success() && fsck.contains("less than the required minimum of 65525"), "{fsck}");
        let total: u64 = fsck
            .split_whitespace()
            .find_map(|w| w.split_once('/').and_then(|(_, t)| t.parse().ok()))
            .unwrap_or_else(|| panic!("{fsck}"));
        let v = inspect_json(&img, &[]);
        let f = &v["filesystems"][0];
        assert!(f.get("error").is_none(), "{f}");
        assert_eq!((f["type"].as_str(), f["version"].as_str()), (Some("vfat"), Some("FAT32")), "{f}");
        assert_eq!(f["blocks"], total, "{f}");
        assert_eq!(f["label"], "SMALL32");
        let problems = f["problems"].as_array().unwrap();
        assert!(problems.len() == 1 && problems[0].as_str().unwrap().contains("fewer than the 65525"), "{f}");
        let (code, out, err) = mdi(&["inspect", p(&img), "--ls", "/"]);
        assert_eq!((code, out.as_str()), (0, ""), "{err}");
    }
}

// ------------------------------------------------------------------ item 9

/// Item 9: 8.3-only names that mtools wrote in its DOS code page (CP850) are shown as
/// mdir shows them and found by `--cat`, in either case.
#[test]
fn fat_short_names_in_cp850() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("cp850.img");
    tool("mkfs.vfat", &["-C", p(&img), "4096"]);
    let names = ["ÜBER.TXT", "ÉTÉ.TXT", "NIÑO", "£5.TXT"];
    for (i, n) in names.iter().enumerate() {
        let f = t.path().join(n);
        fs::write(&f, format!("file {i}\n")).unwrap();
        let o = Command::new("mcopy")
            .args(["-i", p(&img), p(&f), "::/"])
            .env("MTOOLS_SKIP_CHECK", "1")
            .env("LC_ALL", "C.UTF-8")
            .output()
            .unwrap();
        assert!(o.status.success(), "mcopy {n}: {}", String::from_utf8_lossy(&o.stderr));
    }
    // mdir's view, converted by mtools from CP850 to UTF-8: "ÜBER     TXT   9 …".
    let o = Command::new("mdir")
        .args(["-i", p(&img), "::/"])
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("LC_ALL", "C.UTF-8")
        .output()
        .unwrap();
    let mdir = String::from_utf8_lossy(&o.stdout).into_owned();
    // The raw bytes are CP850 (Ü is 0x9A): make sure no long name carries the text.
    let raw = fs::read(&img).unwrap();
    assert!(raw.windows(11).any(|w| w == b"\x9aBER    TXT"), "mtools wrote no CP850 short name");
    let (code, out, err) = mdi(&["inspect", p(&img), "--ls", "/"]);
    assert_eq!(code, 0, "{err}");
    for (i, n) in names.iter().enumerate() {
        let (base, ext) = n.split_once('.').unwrap_or((n, ""));
        assert!(
            mdir.lines().any(|l| l.starts_with(base) && l[base.len()..].trim_start().starts_with(ext)),
            "{n}: {mdir}"
        );
        assert!(out.lines().any(|l| l.ends_with(&format!(" {n}"))), "{n} not listed: {out}");
        for name in [n.to_string(), n.to_lowercase()] {
            let (code, content, err) = mdi(&["inspect", p(&img), "--cat", &format!("/{name}")]);
            assert_eq!((code, content), (0, format!("file {i}\n")), "--cat /{name}: {err}");
        }
    }
    assert!(!out.chars().any(|c| c.is_control() && c != '\n'), "control characters: {out:?}");
}

// ------------------------------------------------------------------ inline_data

/// inline_data: directories kept in i_block, files in i_block and "system.data" (a 100-byte
/// file), and inline symlinks are read; `diff` of the image with itself is clean.
#[test]
fn inline_data_is_read() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir_all(src.join("tiny")).unwrap();
    fs::create_dir_all(src.join("many")).unwrap();
    fs::write(src.join("tiny/a"), "small\n").unwrap();
    let hundred: Vec<u8> = (0..100u8).map(|i| i.wrapping_mul(7) | 1).collect();
    fs::write(src.join("hundred"), &hundred).unwrap();
    for i in 0..40 {
        fs::write(src.join(format!("many/file-{i:02}")), format!("{i}\n")).unwrap();
    }
    std::os::unix::fs::symlink("tiny/a", src.join("link")).unwrap();
    let img = t.path().join("inline.img");
    tool("mkfs.ext4", &["-q", "-F", "-O", "inline_data", "-d", p(&src), p(&img), "16M"]);
    e2fsck_clean(&img);
    for (path, want) in [("/hundred", "Size of inline data: 100"), ("/tiny", "Size of inline data: 60")] {
        let stat = debugfs(&img, &format!("stat {path}"));
        assert!(stat.contains(want), "{path} is not inline: {stat}");
    }
    let (code, out, err) = mdi(&["inspect", p(&img), "--ls", "/tiny"]);
    assert!(code == 0 && out.ends_with(" a\n"), "{out}{err}");
    let o = Command::new(bin()).args(["inspect", p(&img), "--cat", "/hundred"]).output().unwrap();
    assert!(o.status.success() && o.stdout == hundred, "{}", String::from_utf8_lossy(&o.stderr));
    let (code, out, _) = mdi(&["inspect", p(&img), "--cat", "/tiny/a"]);
    assert_eq!((code, out.as_str()), (0, "small\n"));
    let v = inspect_json(&img, &["--ls", "/"]);
    let entries = v["ls"]["entries"].as_array().unwrap();
    let link = entries.iter().find(|e| e["name"] == "link").unwrap();
    assert_eq!(link["target"], "tiny/a");
    assert!(entries.iter().all(|e| e["error"].is_null() && e["xattrs"].as_object().unwrap().is_empty()), "{entries:?}");
    assert_eq!(inspect_json(&img, &["--ls", "/many"])["ls"]["entries"].as_array().unwrap().len(), 40);
    let (code, out, err) = mdi(&["diff", p(&img), p(&img)]);
    assert_eq!(code, 0, "{out}{err}");
}

// ------------------------------------------------------------------ item 10

/// Item 10: names in an encrypted directory are ciphertext and may hold '/': they are
/// shown as "encrypted:<hex>" (the image is made by mkfs.ext4 -O encrypt, the directory
/// flagged EXT4_ENCRYPT_FL by debugfs and one name byte made '/', as ciphertext can be);
/// `diff` compares them without error; `diff`'s errors go to stderr, its stdout keeps only
/// the comparison, and a place is never "filesystem (filesystem)".
#[test]
fn encrypted_names_and_diff_errors() {
    use std::os::unix::fs::FileExt;
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir_all(src.join("secret")).unwrap();
    fs::create_dir_all(src.join("plain")).unwrap();
    fs::write(src.join("secret/ab"), "x\n").unwrap();
    fs::write(src.join("secret/cd"), "y\n").unwrap();
    fs::write(src.join("plain/ef"), "z\n").unwrap();
    let img = t.path().join("enc.img");
    tool("mkfs.ext4", &["-q", "-F", "-b", "4096", "-O", "encrypt,^metadata_csum", "-d", p(&src), p(&img), "16M"]);
    // EXT4_ENCRYPT_FL (0x800) with EXT4_EXTENTS_FL (0x80000).
    debugfs_w(&img, "set_inode_field /secret flags 0x80800");
    let f = fs::OpenOptions::new().read(true).write(true).open(&img).unwrap();
    let name_at = |dir: &str, name: &[u8]| -> u64 {
        let at = first_block(&img, dir) * 4096;
        let mut b = vec![0u8; 4096];
        f.read_exact_at(&mut b, at).unwrap();
        at + b.windows(name.len()).position(|w| w == name).unwrap() as u64
    };
    f.write_all_at(b"/", name_at("/secret", b"ab")).unwrap();
    let (code, out, err) = mdi(&["inspect", p(&img), "--ls", "/secret"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(" encrypted:2f62\n") && out.contains(" encrypted:6364\n"), "{out}");
    let (code, out, err) = mdi(&["diff", p(&img), p(&img)]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.is_empty(), "{err}");

    // A damaged directory (a record length of 3) in the second image: exit 2, the error on
    // stderr only.
    let bad = t.path().join("bad.img");
    fs::copy(&img, &bad).unwrap();
    let g = fs::OpenOptions::new().write(true).open(&bad).unwrap();
    g.write_all_at(&3u16.to_le_bytes(), name_at("/plain", b"ef") - 4).unwrap();
    let (code, out, err) = mdi(&["diff", p(&img), p(&bad)]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("error:") && err.contains("filesystem (ext4)") && err.contains("rec_len 3"), "{err}");
    assert!(!out.contains("error"), "errors on stdout: {out}");
    assert!(!format!("{out}{err}").contains("filesystem (filesystem)"), "{out}{err}");
}

// ------------------------------------------------------------------ other filesystems

/// btrfs, XFS, EROFS and squashfs are recognised by their superblocks: type, label, UUID
/// and version as `blkid -p` says, size as the tools made it; `--ls` says why it cannot
/// list; `diff` names a changed label.
#[test]
fn other_filesystems_are_recognised_by_superblock() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let src = d.join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), "content\n").unwrap();
    let sized = |name: &str, len: u64| -> PathBuf {
        let f = d.join(name);
        fs::File::create(&f).unwrap().set_len(len).unwrap();
        f
    };
    let bt = sized("btrfs.img", 128 << 20);
    tool("mkfs.btrfs", &["-q", "-L", "BTRLABEL", p(&bt)]);
    let bt2 = sized("btrfs2.img", 128 << 20);
    tool("mkfs.btrfs", &["-q", "-L", "OTHER", "-U", &blkid_value(&bt, "UUID").unwrap(), p(&bt2)]);
    let xf = sized("xfs.img", 320 << 20);
    tool("mkfs.xfs", &["-q", "-L", "XFSLABEL", p(&xf)]);
    let er = d.join("erofs.img");
    tool("mkfs.erofs", &["-U", "11111111-2222-3333-4444-555555555555", p(&er), p(&src)]);
    let sq = d.join("squashfs.img");
    tool("mksquashfs", &[p(&src), p(&sq), "-quiet", "-noappend"]);
    for (img, kind) in [(&bt, "btrfs"), (&xf, "xfs"), (&er, "erofs"), (&sq, "squashfs")] {
        let v = inspect_json(img, &[]);
        let f = &v["filesystems"][0];
        assert_eq!(f["type"], kind, "{v}");
        assert_eq!(Some(kind.to_string()), blkid_value(img, "TYPE"));
        assert_eq!(f["label"].as_str().unwrap_or(""), blkid_value(img, "LABEL").unwrap_or_default(), "{kind}");
        assert_eq!(f["uuid"].as_str().unwrap_or(""), blkid_value(img, "UUID").unwrap_or_default(), "{kind}");
        if let Some(version) = blkid_value(img, "VERSION") {
            assert_eq!(f["version"], version, "{kind}");
        }
        let len = fs::metadata(img).unwrap().len();
        let size = f["size"].as_u64().unwrap();
        match kind {
            "squashfs" => assert!(size > 0 && size <= len, "{kind}: {size} of {len}"),
            _ => assert_eq!(size, len, "{kind}"),
        }
        assert!(f["used"].as_u64().unwrap() <= size);
        let (code, _, err) = mdi(&["inspect", p(img), "--ls", "/"]);
        assert!(
            code != 0 && err.contains(&format!("a {kind} filesystem, whose files this tool does not read")),
            "{err}"
        );
    }
    let (code, out, err) = mdi(&["diff", p(&bt), p(&bt2)]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("filesystem (btrfs): label: BTRLABEL vs OTHER"), "{out}");
}

/// A `blkid -p` value of an image, if it has that tag.
fn blkid_value(img: &Path, tag: &str) -> Option<String> {
    let o = Command::new("blkid").args(["-p", "-o", "value", "-s", tag, p(img)]).output().unwrap();
    let v = String::from_utf8_lossy(&o.stdout).trim().to_string();
    (!v.is_empty()).then_some(v)
}
