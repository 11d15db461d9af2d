//! The readers against images made by `qemu-img` (and `qemu-io`) and by this crate's
//! writers, compared byte for byte with the data put in; refusals of what cannot be read;
//! and a loop that corrupts and truncates valid images and checks that opening and reading
//! them returns errors but never panics.
//!
//! Tests that need `qemu-img` are skipped, with a message, when it is not installed.

use super::{open, Format};
use crate::{Compression, Container, Qcow2, Vdi, Vhd, Vhdx, VhdxIds, Vmdk, VmdkKind};
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

const MIB: usize = 1 << 20;
/// The test disk: over 64 MiB, not a whole number of clusters or blocks.
const RAW_LEN: usize = 80 * MIB + 3 * 512;

/// A directory removed on drop.
struct TmpDir(PathBuf);

impl TmpDir {
    fn new(tag: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "mdi-read-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&p).unwrap();
        TmpDir(p)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn fill(&mut self, b: &mut [u8]) {
        for c in b.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// Patterned data with holes: per 64 KiB, a hole, random bytes, compressible text, a few
/// sectors or a single byte; a few MiB-sized holes; and data at the start, past 32 MiB, past
/// 64 MiB and at the end.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut d = vec![0u8; len];
    let mut r = Rng(seed);
    for (i, chunk) in d.chunks_mut(64 << 10).enumerate() {
        match r.below(10) {
            0..=3 => {}
            4 | 5 => r.fill(chunk),
            6 | 7 => {
                let text = format!("chunk {i} of the test disk; ");
                for (k, b) in chunk.iter_mut().enumerate() {
                    *b = text.as_bytes()[k % text.len()];
                }
            }
            8 => {
                for _ in 0..4 {
                    let s = r.below((chunk.len() / 512) as u64) as usize * 512;
                    let end = (s + 512).min(chunk.len());
                    r.fill(&mut chunk[s..end]);
                }
            }
            _ => {
                let k = r.below(chunk.len() as u64) as usize;
                chunk[k] = 0x5A;
            }
        }
    }
    // Holes of whole blocks for the formats with large units.
    for (a, b) in [(8 * MIB, 16 * MIB), (40 * MIB, 64 * MIB)] {
        if b <= len {
            d[a..b].fill(0);
        }
    }
    d[..16].copy_from_slice(b"start of disk!!!");
    // A boot signature, so that the raw file is taken for a disk (read/detect.rs).
    d[510..512].copy_from_slice(&[0x55, 0xAA]);
    for at in [32 * MIB + 12345, 64 * MIB + 777, len - 100] {
        if at + 64 <= len {
            d[at..at + 64].fill(0xC3);
        }
    }
    d[len - 1] = 0xEE;
    d
}

fn test_data() -> &'static [u8] {
    static DATA: OnceLock<Vec<u8>> = OnceLock::new();
    DATA.get_or_init(|| pattern(RAW_LEN, 0x9E37_79B9_7F4A_7C15))
}

/// Writes `data` as a sparse raw file.
fn write_raw(path: &Path, data: &[u8]) {
    let f = File::create(path).unwrap();
    for (i, c) in data.chunks(4096).enumerate() {
        if c.iter().any(|&b| b != 0) {
            f.write_all_at(c, (i * 4096) as u64).unwrap();
        }
    }
    f.set_len(data.len() as u64).unwrap();
}

fn have_qemu() -> bool {
    let ok = Command::new("qemu-img").arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("qemu-img not found: test skipped");
    }
    ok
}

fn run(prog: &str, args: &[&str]) {
    let out = Command::new(prog).args(args).output().unwrap();
    assert!(out.status.success(), "{prog} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn qemu_img(args: &[&str]) {
    run("qemu-img", args);
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The virtual size `qemu-img info` reports.
fn qemu_size(path: &Path, fmt: &str) -> u64 {
    let out = Command::new("qemu-img").args(["info", "-f", fmt, p(path)]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line =
        text.lines().find(|l| l.starts_with("virtual size:")).unwrap_or_else(|| panic!("no virtual size in {text}"));
    let n = line.rsplit('(').next().unwrap();
    n.trim_end_matches(" bytes)").parse().unwrap()
}

/// Opens `path` and compares every byte of the virtual disk with `data` (zeros past it).
fn check(path: &Path, format: Format, data: &[u8], size: u64) {
    let mut img = open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    assert_eq!(img.format(), format);
    assert_eq!(img.virtual_size(), size, "virtual size of {}", path.display());
    assert!(size >= data.len() as u64);
    let at = |o: u64| data.get(o as usize).copied().unwrap_or(0);

    // Sequential reads in steps that cross every kind of unit boundary.
    let step = MIB as u64 + 4097;
    let mut buf = vec![0u8; step as usize];
    let mut off = 0;
    while off < size {
        let n = step.min(size - off) as usize;
        img.read_at(off, &mut buf[..n]).unwrap();
        let want = &data[(off as usize).min(data.len())..((off as usize) + n).min(data.len())];
        assert!(buf[..want.len()] == *want, "data at {off} of {}", path.display());
        assert!(buf[want.len()..n].iter().all(|&b| b == 0));
        off += n as u64;
    }

    // Small reads at random places, in random order.
    let mut r = Rng(size ^ 0x1234_5678);
    for _ in 0..2000 {
        let o = r.below(size);
        let n = (r.below(9000) + 1).min(size - o) as usize;
        img.read_at(o, &mut buf[..n]).unwrap();
        for (k, &b) in buf[..n].iter().enumerate() {
            assert_eq!(b, at(o + k as u64), "byte {} of {}", o + k as u64, path.display());
        }
    }

    // maybe_data never hides data.
    let mut holes = 0;
    let unit = 64 << 10;
    for o in (0..size).step_by(unit) {
        let n = (unit as u64).min(size - o);
        if !img.maybe_data(o, n).unwrap() {
            holes += 1;
            assert!((o..o + n).all(|b| at(b) == 0), "data hidden at {o}");
        }
    }
    eprintln!("{}: {holes} holes of 64 KiB reported", path.display());

    // Past the end.
    assert!(img.read_at(size, &mut [0u8; 1]).is_err());
    assert!(img.read_at(u64::MAX, &mut [0u8; 1]).is_err());
    img.read_at(size, &mut []).unwrap();
}

/// Converts the test data with `qemu-img convert -O <fmt> <args>` and checks the result.
fn qemu_case(tag: &str, fmt: &str, args: &[&str], format: Format, sparse: bool) {
    if !have_qemu() {
        return;
    }
    let dir = TmpDir::new(tag);
    let raw = dir.path("in.raw");
    let out = dir.path("out.img");
    write_raw(&raw, test_data());
    let mut a = vec!["convert", "-f", "raw", "-O", fmt];
    a.extend_from_slice(args);
    a.extend([p(&raw), p(&out)]);
    qemu_img(&a);
    let size = qemu_size(&out, fmt);
    check(&out, format, test_data(), size);
    if sparse {
        // The holes must show: the 32 MiB of whole-MiB holes at least.
        let mut img = open(&out).unwrap();
        let holes = (0..size).step_by(64 << 10).filter(|&o| !img.maybe_data(o, 64 << 10).unwrap()).count();
        assert!(holes >= 512, "{tag}: only {holes} holes");
    }
}

/// Checks an image against `qemu-img convert -O raw` of it.
fn check_against_qemu(path: &Path, fmt: &str, format: Format) {
    let raw = path.with_extension("oracle.raw");
    qemu_img(&["convert", "-f", fmt, "-O", "raw", p(path), p(&raw)]);
    let data = fs::read(&raw).unwrap();
    check(path, format, &data, data.len() as u64);
}

#[test]
fn read_raw() {
    let dir = TmpDir::new("raw");
    let raw = dir.path("in.raw");
    write_raw(&raw, test_data());
    check(&raw, Format::Raw, test_data(), RAW_LEN as u64);
}

#[test]
fn read_qemu_qcow2_v3() {
    qemu_case("q3", "qcow2", &[], Format::Qcow2, true);
}

#[test]
fn read_qemu_qcow2_v2() {
    qemu_case("q2", "qcow2", &["-o", "compat=0.10"], Format::Qcow2, true);
}

#[test]
fn read_qemu_qcow2_deflate() {
    qemu_case("qz", "qcow2", &["-c"], Format::Qcow2, true);
}

#[test]
fn read_qemu_qcow2_v2_deflate() {
    qemu_case("q2z", "qcow2", &["-c", "-o", "compat=0.10"], Format::Qcow2, true);
}

#[test]
fn read_qemu_qcow2_zstd() {
    qemu_case("qzstd", "qcow2", &["-c", "-o", "compression_type=zstd"], Format::Qcow2, true);
}

#[test]
fn read_qemu_qcow2_cluster_sizes() {
    qemu_case("q512", "qcow2", &["-c", "-o", "cluster_size=512"], Format::Qcow2, true);
    qemu_case("q2m", "qcow2", &["-o", "cluster_size=2M"], Format::Qcow2, false);
}

#[test]
fn read_qemu_qcow2_extended_l2() {
    qemu_case("qext", "qcow2", &["-o", "extended_l2=on,cluster_size=128k"], Format::Qcow2, true);
    qemu_case("qextz", "qcow2", &["-c", "-o", "extended_l2=on,compression_type=zstd"], Format::Qcow2, true);
}

/// Zero clusters (v3 flag), subclusters partly written or zeroed, discarded clusters:
/// made with qemu-io, checked against qemu-img's own raw conversion.
#[test]
fn read_qemu_io_edits() {
    if !have_qemu() {
        return;
    }
    let dir = TmpDir::new("qio");
    let raw = dir.path("in.raw");
    write_raw(&raw, &test_data()[..8 * MIB]);
    let edits = [
        "write -z 0 64k",
        "write -z 200k 300k",
        "write -P 0xab 70k 3k",
        "write -P 0xcd 1m 4k",
        "write -z 1028k 8k",
        "discard 2m 1m",
        "write -P 0x11 7m 129k",
        "write -z 7300k 4k",
    ];
    for (tag, opts) in [("plain", "compat=1.1"), ("v2", "compat=0.10"), ("ext", "extended_l2=on,cluster_size=64k")] {
        let img = dir.path(&format!("{tag}.qcow2"));
        qemu_img(&["convert", "-f", "raw", "-O", "qcow2", "-o", opts, p(&raw), p(&img)]);
        let mut a = vec!["-f", "qcow2"];
        for e in &edits {
            a.extend(["-c", e]);
        }
        a.push(p(&img));
        run("qemu-io", &a);
        check_against_qemu(&img, "qcow2", Format::Qcow2);
    }
    // Subclusters written piecemeal into a fresh image.
    let img = dir.path("sub.qcow2");
    qemu_img(&["create", "-f", "qcow2", "-o", "extended_l2=on,cluster_size=128k", p(&img), "8M"]);
    run(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x22 4k 4k",
            "-c",
            "write -P 0x33 130k 2k",
            "-c",
            "write -z 512k 8k",
            "-c",
            "write -P 0x44 8188k 4k",
            p(&img),
        ],
    );
    check_against_qemu(&img, "qcow2", Format::Qcow2);
}

#[test]
fn read_qemu_vdi() {
    qemu_case("vdi", "vdi", &[], Format::Vdi, true);
    qemu_case("vdis", "vdi", &["-o", "static=on"], Format::Vdi, false);
}

#[test]
fn read_qemu_vpc() {
    qemu_case("vpcd", "vpc", &["-o", "subformat=dynamic"], Format::Vpc, true);
    qemu_case("vpcf", "vpc", &["-o", "subformat=fixed"], Format::Vpc, false);
    qemu_case("vpcfs", "vpc", &["-o", "subformat=dynamic,force_size=on"], Format::Vpc, true);
}

#[test]
fn read_qemu_vmdk() {
    qemu_case("vmdk", "vmdk", &[], Format::Vmdk, true);
    qemu_case("vmdks", "vmdk", &["-o", "subformat=streamOptimized"], Format::Vmdk, true);
}

/// qemu-img writes streamOptimized VMDKs with the grain directory up front; VMware and
/// VirtualBox put it at the end (gdOffset = GD_AT_END) and the real header in a footer.
/// Moves a qemu image to that layout.
fn gd_at_end(mut b: Vec<u8>) -> Vec<u8> {
    assert!(b[b.len() - 512..].iter().all(|&c| c == 0), "EOS marker");
    b.truncate(b.len() - 512);
    let header = b[..512].to_vec();
    let mut marker = [0u8; 512];
    marker[..8].copy_from_slice(&1u64.to_le_bytes());
    marker[12..16].copy_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&marker);
    b.extend_from_slice(&header);
    b.extend_from_slice(&[0u8; 512]);
    b[56..64].copy_from_slice(&u64::MAX.to_le_bytes());
    b
}

#[test]
fn read_vmdk_gd_at_end() {
    if !have_qemu() {
        return;
    }
    let dir = TmpDir::new("vmdkend");
    let raw = dir.path("in.raw");
    write_raw(&raw, test_data());
    let out = dir.path("s.vmdk");
    qemu_img(&["convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", p(&raw), p(&out)]);
    let end = dir.path("end.vmdk");
    fs::write(&end, gd_at_end(fs::read(&out).unwrap())).unwrap();
    check(&end, Format::Vmdk, test_data(), RAW_LEN as u64);
    check_against_qemu(&end, "vmdk", Format::Vmdk);
}

#[test]
fn read_qemu_vhdx() {
    qemu_case("vhdx", "vhdx", &[], Format::Vhdx, false);
    qemu_case("vhdx1", "vhdx", &["-o", "block_size=1M"], Format::Vhdx, true);
    qemu_case("vhdxf", "vhdx", &["-o", "subformat=fixed"], Format::Vhdx, false);
}

/// Writes `data` through one of this crate's containers.
fn write_ours(mut c: Box<dyn Container>, data: &[u8], size: u64) -> File {
    // Irregular pieces, as filesystems write them.
    let mut off = 0;
    let mut r = Rng(77);
    while off < data.len() {
        let n = (r.below(300_000) as usize + 1).min(data.len() - off);
        c.write_at(off as u64, &data[off..off + n]).unwrap();
        off += n;
    }
    c.finish(size).unwrap()
}

fn new_file(path: &Path) -> File {
    File::options().read(true).write(true).create(true).truncate(true).open(path).unwrap()
}

/// One of this crate's writers, chosen by the file name used in the tests.
fn our_writer(name: &str, f: File) -> Box<dyn Container> {
    match name {
        "q.qcow2" => Box::new(Qcow2::new(f, Compression::None)),
        "qz.qcow2" => Box::new(Qcow2::new(f, Compression::Deflate)),
        "qzstd.qcow2" => Box::new(Qcow2::new(f, Compression::Zstd)),
        "d.vdi" => Box::new(Vdi::new(f, [1; 16], [2; 16])),
        "d.vhd" => Box::new(Vhd::new(f, false, 1_700_000_000, [3; 16])),
        "f.vhd" => Box::new(Vhd::new(f, true, 1_700_000_000, [4; 16])),
        "s.vmdk" => Box::new(Vmdk::new(f, VmdkKind::MonolithicSparse, 0x1234_5678, name)),
        "so.vmdk" => Box::new(Vmdk::new(f, VmdkKind::StreamOptimized, 0x1234_5678, name)),
        "d.vhdx" => {
            Box::new(Vhdx::new(f, VhdxIds { file_write: [5; 16], data_write: [6; 16], virtual_disk_id: [7; 16] }))
        }
        other => panic!("no writer for {other}"),
    }
}

/// This crate's writers, read back (and by qemu-img, when it is installed).
#[test]
fn read_ours() {
    let dir = TmpDir::new("ours");
    let data = test_data();
    let size = RAW_LEN as u64;
    let qemu = have_qemu();
    let cases: Vec<(&str, &str, Format, u64)> = vec![
        ("q.qcow2", "qcow2", Format::Qcow2, size),
        ("qz.qcow2", "qcow2", Format::Qcow2, size),
        ("qzstd.qcow2", "qcow2", Format::Qcow2, size),
        ("d.vdi", "vdi", Format::Vdi, size),
        ("d.vhd", "vpc", Format::Vpc, size),
        ("f.vhd", "vpc", Format::Vpc, size.next_multiple_of(MIB as u64)),
        ("s.vmdk", "vmdk", Format::Vmdk, size),
        ("so.vmdk", "vmdk", Format::Vmdk, size),
        ("d.vhdx", "vhdx", Format::Vhdx, size),
    ];
    for (name, fmt, format, expect) in cases {
        let path = dir.path(name);
        let f = new_file(&path);
        drop(write_ours(our_writer(name, f), data, size));
        check(&path, format, data, expect);
        if qemu {
            assert_eq!(qemu_size(&path, fmt), expect, "{name}");
            check_against_qemu(&path, fmt, format);
        }
    }
}

fn expect_refusal(path: &Path, words: &str) {
    match open(path) {
        Ok(_) => panic!("{} opened", path.display()),
        Err(e) => {
            let msg = e.to_string();
            eprintln!("{msg}");
            assert!(msg.contains(words), "{msg}");
            assert!(msg.contains(p(path)), "{msg}");
        }
    }
}

#[test]
fn refusals() {
    if !have_qemu() {
        return;
    }
    let dir = TmpDir::new("refuse");
    let base = dir.path("base.raw");
    write_raw(&base, &test_data()[..4 * MIB]);

    let child = dir.path("child.qcow2");
    qemu_img(&["create", "-f", "qcow2", "-b", p(&base), "-F", "raw", p(&child)]);
    expect_refusal(&child, "backing file");

    let enc = dir.path("enc.qcow2");
    qemu_img(&[
        "create",
        "--object",
        "secret,id=sec0,data=123456",
        "-f",
        "qcow2",
        "-o",
        "encrypt.format=luks,encrypt.key-secret=sec0",
        p(&enc),
        "4M",
    ]);
    expect_refusal(&enc, "encrypted");

    let ext = dir.path("ext.qcow2");
    let data_file = dir.path("ext.data");
    qemu_img(&["create", "-f", "qcow2", "-o", &format!("data_file={}", p(&data_file)), p(&ext), "4M"]);
    expect_refusal(&ext, "external data file");

    let vbase = dir.path("base.vmdk");
    let vchild = dir.path("child.vmdk");
    qemu_img(&["convert", "-f", "raw", "-O", "vmdk", p(&base), p(&vbase)]);
    qemu_img(&["create", "-f", "vmdk", "-b", p(&vbase), "-F", "vmdk", p(&vchild)]);
    expect_refusal(&vchild, "parent");

    // VHDX: a log to replay (both headers), then a parent flag in the file parameters.
    let vhdx = dir.path("log.vhdx");
    qemu_img(&["convert", "-f", "raw", "-O", "vhdx", p(&base), p(&vhdx)]);
    let mut bytes = fs::read(&vhdx).unwrap();
    let pristine = bytes.clone();
    for at in [64 << 10, 128 << 10] {
        let h = &mut bytes[at..at + 4096];
        h[48] = 1;
        h[4..8].fill(0);
        let sum = super::vhdx::crc32c_skipping(h, 4);
        h[4..8].copy_from_slice(&sum.to_le_bytes());
    }
    fs::write(&vhdx, &bytes).unwrap();
    expect_refusal(&vhdx, "log");

    let mut bytes = pristine;
    let id = [0x37, 0x67, 0xA1, 0xCA, 0x36, 0xFA, 0x43, 0x4D, 0xB3, 0xB6, 0x33, 0xF0, 0xAA, 0x44, 0xE7, 0x6B];
    let meta = bytes.windows(8).position(|w| w == b"metadata").expect("metadata table");
    let entry = meta + bytes[meta..].windows(16).position(|w| w == id).unwrap();
    let item = meta + u32::from_le_bytes(bytes[entry + 16..entry + 20].try_into().unwrap()) as usize;
    bytes[item + 4] |= 2;
    fs::write(&vhdx, &bytes).unwrap();
    expect_refusal(&vhdx, "parent");

    let desc = dir.path("desc.vmdk");
    qemu_img(&["create", "-f", "vmdk", "-o", "subformat=monolithicFlat", p(&desc), "1M"]);
    expect_refusal(&desc, "descriptor");
}

/// One valid image to corrupt.
struct Victim {
    name: String,
    bytes: Vec<u8>,
}

fn victims(dir: &TmpDir) -> Vec<Victim> {
    let data = pattern(6 * MIB + 512, 5);
    let size = data.len() as u64;
    let mut v = Vec::new();
    for name in ["q.qcow2", "qz.qcow2", "qzstd.qcow2", "d.vdi", "d.vhd", "f.vhd", "s.vmdk", "so.vmdk", "d.vhdx"] {
        let path = dir.path(&format!("ours-{name}"));
        drop(write_ours(our_writer(name, new_file(&path)), &data, size));
        v.push(Victim { name: format!("ours-{name}"), bytes: fs::read(&path).unwrap() });
    }
    if Command::new("qemu-img").arg("--version").output().is_ok() {
        let raw = dir.path("in.raw");
        write_raw(&raw, &data);
        for (name, fmt, args) in [
            ("qemu-q.qcow2", "qcow2", &["-o", "cluster_size=4k"][..]),
            ("qemu-q2.qcow2", "qcow2", &["-o", "compat=0.10,cluster_size=16k"][..]),
            ("qemu-qz.qcow2", "qcow2", &["-c", "-o", "cluster_size=4k"][..]),
            ("qemu-qzstd.qcow2", "qcow2", &["-c", "-o", "compression_type=zstd"][..]),
            ("qemu-qext.qcow2", "qcow2", &["-o", "extended_l2=on"][..]),
            ("qemu-q.vdi", "vdi", &[][..]),
            ("qemu-qd.vhd", "vpc", &[][..]),
            ("qemu-qf.vhd", "vpc", &["-o", "subformat=fixed"][..]),
            ("qemu-q.vmdk", "vmdk", &[][..]),
            ("qemu-qs.vmdk", "vmdk", &["-o", "subformat=streamOptimized"][..]),
            ("qemu-q.vhdx", "vhdx", &["-o", "block_size=1M"][..]),
        ] {
            let out = dir.path(name);
            let mut a = vec!["convert", "-f", "raw", "-O", fmt];
            a.extend_from_slice(args);
            a.extend([p(&raw), p(&out)]);
            qemu_img(&a);
            v.push(Victim { name: name.into(), bytes: fs::read(&out).unwrap() });
        }
        v.push(Victim { name: "qemu-end.vmdk".into(), bytes: gd_at_end(fs::read(dir.path("qemu-qs.vmdk")).unwrap()) });
    }
    v
}

/// Opens and reads a (possibly corrupt) image every way the converter would; any result
/// is fine, a panic is not.
fn exercise(path: &Path, r: &mut Rng) -> bool {
    let Ok(mut img) = open(path) else {
        return false;
    };
    let size = img.virtual_size();
    let _ = img.format();
    let mut buf = vec![0u8; 300 << 10];
    if size <= 16 * MIB as u64 {
        let mut off = 0;
        while off < size {
            let n = (buf.len() as u64).min(size - off) as usize;
            let _ = img.read_at(off, &mut buf[..n]);
            let _ = img.maybe_data(off, n as u64);
            off += n as u64;
        }
    } else {
        for _ in 0..64 {
            let off = r.below(size);
            let n = (r.below(buf.len() as u64) + 1).min(size - off) as usize;
            let _ = img.read_at(off, &mut buf[..n]);
            let _ = img.maybe_data(off, n as u64);
        }
    }
    let _ = img.maybe_data(0, size);
    let _ = img.maybe_data(size / 2, u64::MAX);
    let _ = img.read_at(size.saturating_sub(1), &mut buf[..1]);
    let _ = img.read_at(size, &mut buf[..1]);
    true
}

/// Flips, overwrites and truncates bytes of valid images (60 variants of each, about 1200
/// in all): open and read must return Ok or Err, never panic.
#[test]
fn read_corrupt_images_never_panic() {
    let dir = TmpDir::new("fuzz");
    let victims = victims(&dir);
    // MDI_READ_FUZZ=<variants per image>[,<seed>] runs a longer or different campaign.
    let env = std::env::var("MDI_READ_FUZZ").unwrap_or_default();
    let mut env = env.split(',').map(|x| x.trim().parse::<u64>().ok());
    let rounds = env.next().flatten().unwrap_or(60);
    let mut r = Rng(env.next().flatten().unwrap_or(0xDEAD_BEEF_CAFE_F00D) | 1);
    let (mut variants, mut opened) = (0, 0);
    for v in &victims {
        let path = dir.path(&format!("fuzz-{}", v.name));
        fs::write(&path, &v.bytes).unwrap();
        // The pristine image reads.
        let mut img = open(&path).unwrap_or_else(|e| panic!("{}: {e}", v.name));
        let mut b = vec![0u8; img.virtual_size().min(1 << 20) as usize];
        img.read_at(0, &mut b).unwrap();
        let len = v.bytes.len() as u64;
        for i in 0..rounds {
            let f = File::options().write(true).open(&path).unwrap();
            // Mutations, undone after each variant.
            let mut touched: Vec<(u64, usize)> = Vec::new();
            let what = match r.below(8) {
                0 => {
                    let at = r.below(len + 1);
                    f.set_len(at).unwrap();
                    format!("truncated to {at}")
                }
                1 => {
                    // A whole sector of garbage, mostly in the metadata-rich head and tail.
                    let at = if r.below(2) == 0 {
                        r.below(len.min(1 << 19))
                    } else {
                        len.saturating_sub(r.below(len.min(1 << 16)) + 512)
                    } & !511;
                    let mut s = vec![0u8; 512.min((len - at) as usize)];
                    r.fill(&mut s);
                    f.write_all_at(&s, at).unwrap();
                    touched.push((at, s.len()));
                    format!("sector {at} overwritten")
                }
                k => {
                    let n = r.below(4) + 1;
                    let mut places = Vec::new();
                    for _ in 0..n {
                        let at = match r.below(4) {
                            0 => r.below(len),
                            1 => r.below(len.min(4096)),
                            2 => r.below(len.min(4 << 20)),
                            _ => len - 1 - r.below(len.min(1 << 16)),
                        };
                        if k == 7 {
                            // The next word that looks like a table entry or header field
                            // (a non-zero offset, sector or index below the file length),
                            // bent.
                            let found =
                                (at & !3..len.saturating_sub(4).min((at & !3) + (64 << 10))).step_by(4).find_map(|o| {
                                    let b: [u8; 4] = v.bytes[o as usize..o as usize + 4].try_into().unwrap();
                                    let (le, be) = (u32::from_le_bytes(b), u32::from_be_bytes(b));
                                    if le != 0 && u64::from(le) < len {
                                        Some((o, le, true))
                                    } else if be != 0 && u64::from(be) < len {
                                        Some((o, be, false))
                                    } else {
                                        None
                                    }
                                });
                            if let Some((o, w, little)) = found {
                                let nw = match r.below(5) {
                                    0 => w ^ (1 << r.below(32)),
                                    1 => w.wrapping_add(1),
                                    2 => w.wrapping_sub(1),
                                    3 => u32::MAX,
                                    _ => r.next() as u32 >> r.below(32),
                                };
                                let b = if little { nw.to_le_bytes() } else { nw.to_be_bytes() };
                                f.write_all_at(&b, o).unwrap();
                                touched.push((o, 4));
                                places.push(o);
                            }
                            continue;
                        }
                        if k < 5 {
                            // One byte flipped.
                            let mut b = [0u8];
                            f.read_at(&mut b, at).ok();
                            b[0] ^= 1 << r.below(8);
                            f.write_all_at(&b, at).unwrap();
                            touched.push((at, 1));
                        } else {
                            // An aligned word set to an interesting value.
                            let at = (at & !7).min(len.saturating_sub(8));
                            let val: u64 = match r.below(6) {
                                0 => 0,
                                1 => u64::MAX,
                                2 => 1 << 63,
                                3 => 1 << r.below(64),
                                4 => r.next() >> r.below(64),
                                _ => r.next(),
                            };
                            let w = (8).min(len - at) as usize;
                            f.write_all_at(&val.to_be_bytes()[..w], at).unwrap();
                            touched.push((at, w));
                        }
                        places.push(at);
                    }
                    format!("bytes changed at {places:?}")
                }
            };
            drop(f);
            let res = catch_unwind(AssertUnwindSafe(|| exercise(&path, &mut r)));
            let Ok(ok) = res else {
                panic!("{} variant {i} ({what}) panicked", v.name);
            };
            opened += usize::from(ok);
            variants += 1;
            // Undo.
            let f = File::options().write(true).open(&path).unwrap();
            f.set_len(len).unwrap();
            for (at, n) in touched {
                let at = at as usize;
                f.write_all_at(&v.bytes[at..at + n], at as u64).unwrap();
            }
            if what.starts_with("truncated") {
                f.write_all_at(&v.bytes, 0).unwrap();
            }
        }
    }
    eprintln!("{variants} corrupt variants of {} images survived ({opened} opened)", victims.len());
    assert!(variants >= 300 || victims.len() < 10);
}

#[test]
fn format_names() {
    assert_eq!(Format::Vpc.to_string(), "vpc");
    assert_eq!(Format::Qcow2.name(), "qcow2");
    let e: io::Error = super::Src::open(Path::new("/nonexistent/x.img")).err().unwrap();
    assert!(e.to_string().contains("/nonexistent/x.img"));
}
