//! Issue 4 §4: `make-disk-image convert` reads raw, every format we write and the same
//! formats as qemu-img writes them (compressed qcow2 included), and writes any format we
//! write. Checked with qemu-img compare.

mod common;
use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn qemu_img(args: &[&str]) -> (bool, String) {
    let o = Command::new("qemu-img").args(args).output().expect("qemu-img (apt-get install qemu-utils)");
    (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

/// A 96 MiB raw disk with data in a few places and holes between.
fn raw_disk(dir: &Path) -> PathBuf {
    let p = dir.join("disk.raw");
    let f = fs::File::create(&p).unwrap();
    f.set_len(96 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    let pattern: Vec<u8> = (0..3u32 << 20).map(|i| (i % 253) as u8).collect();
    for at in [0u64, 5 << 20, 33 << 20, (96 << 20) - (3 << 20)] {
        f.write_all_at(&pattern, at).unwrap();
    }
    f.write_all_at(b"odd spot", (40 << 20) + 12345).unwrap();
    // A boot signature, so that the file starts like a disk and is read as raw without
    // --input-format (issue 17).
    f.write_all_at(&[0x55, 0xAA], 510).unwrap();
    p
}

fn convert(input: &Path, output: &Path, format: &str, options: &str) {
    let o = Command::new(bin())
        .arg("convert")
        .arg(input)
        .arg(output)
        .args(["--format", format, "--format-options", options])
        .output()
        .unwrap();
    assert!(o.status.success(), "convert {} → {format}: {}", input.display(), String::from_utf8_lossy(&o.stderr));
}

fn identical(raw: &Path, fmt: &str, img: &Path) {
    let (ok, out) = qemu_img(&["compare", "-f", "raw", "-F", fmt, raw.to_str().unwrap(), img.to_str().unwrap()]);
    assert!(ok && out.contains("Images are identical"), "{} ({fmt}): {out}", img.display());
}

#[test]
fn reads_what_qemu_img_writes() {
    let t = tempfile::tempdir().unwrap();
    let raw = raw_disk(t.path());
    let cases: &[(&str, &[&str])] = &[
        ("qcow2", &["-O", "qcow2"]),
        ("qcow2", &["-O", "qcow2", "-o", "compat=0.10"]),
        ("qcow2", &["-O", "qcow2", "-c"]),
        ("qcow2", &["-O", "qcow2", "-c", "-o", "compression_type=zstd"]),
        ("vdi", &["-O", "vdi"]),
        ("vpc", &["-O", "vpc"]),
        ("vpc", &["-O", "vpc", "-o", "subformat=fixed"]),
        ("vmdk", &["-O", "vmdk"]),
        ("vmdk", &["-O", "vmdk", "-o", "subformat=streamOptimized"]),
        ("vhdx", &["-O", "vhdx"]),
    ];
    for (i, (fmt, args)) in cases.iter().enumerate() {
        let img = t.path().join(format!("q{i}.{fmt}"));
        let mut a = vec!["convert", "-f", "raw"];
        a.extend_from_slice(args);
        a.push(raw.to_str().unwrap());
        a.push(img.to_str().unwrap());
        let (ok, out) = qemu_img(&a);
        assert!(ok, "{out}");
        let back = t.path().join(format!("back{i}.img"));
        convert(&img, &back, "raw", "{}");
        identical(&raw, "raw", &back);
    }
}

#[test]
fn writes_every_format_from_raw_and_back() {
    let t = tempfile::tempdir().unwrap();
    let raw = raw_disk(t.path());
    let cases: &[(&str, &str, &str)] = &[
        ("qcow2", "{}", "qcow2"),
        ("qcow2-compressed", "{}", "qcow2"),
        ("qcow2-compressed", r#"{"compression":"zstd"}"#, "qcow2"),
        ("vdi", "{}", "vdi"),
        ("vpc", "{}", "vpc"),
        ("vpc", r#"{"subformat":"fixed"}"#, "vpc"),
        ("vmdk", "{}", "vmdk"),
        ("vmdk", r#"{"subformat":"streamOptimized"}"#, "vmdk"),
        ("vhdx", "{}", "vhdx"),
    ];
    for (i, (format, options, qfmt)) in cases.iter().enumerate() {
        let out = t.path().join(format!("o{i}.img"));
        convert(&raw, &out, format, options);
        identical(&raw, qfmt, &out);
        // Our own reader reads our output back, and a second conversion gives the same bytes.
        let back = t.path().join(format!("b{i}.raw"));
        convert(&out, &back, "raw", "{}");
        identical(&raw, "raw", &back);
        // Same file name (VMDK's descriptor names its own file), another folder.
        fs::create_dir_all(t.path().join("again")).unwrap();
        let again = t.path().join("again").join(format!("o{i}.img"));
        convert(&raw, &again, format, options);
        assert!(fs::read(&out).unwrap() == fs::read(&again).unwrap(), "{format}: conversion is not reproducible");
    }
}

#[test]
fn unreadable_input_is_a_clear_error() {
    let t = tempfile::tempdir().unwrap();
    let bad = t.path().join("bad.qcow2");
    let mut b = b"QFI\xfb".to_vec();
    b.extend_from_slice(&[0u8; 100]);
    b[7] = 3;
    fs::write(&bad, &b).unwrap();
    let out = t.path().join("out.raw");
    let o = Command::new(bin()).arg("convert").arg(&bad).arg(&out).args(["--format", "raw"]).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("bad.qcow2"), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!out.exists(), "nothing at the output path");
}
