//! Issue 4: the image goes straight into its format. Checked by qemu-img: check (where
//! the format has checks), compare against the raw build of the same spec, info.

mod common;
use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn qemu_img(args: &[&str]) -> (bool, String) {
    let o = Command::new("qemu-img").args(args).output().expect("qemu-img (apt-get install qemu-utils)");
    (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

/// A tree with enough data that compressed clusters leave the writer's cache and are
/// written to again later (the partition table and superblock come last).
fn tree(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    fs::create_dir_all(root.join("data")).unwrap();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut random = vec![0u8; 24 << 20];
    for b in random.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    fs::write(root.join("data/random"), &random).unwrap();
    let text: Vec<u8> = (0..60u32 << 20).map(|i| b"make-disk-image "[(i % 16) as usize]).collect();
    fs::write(root.join("data/text"), &text).unwrap();
    for i in 0..300 {
        fs::write(root.join(format!("data/small-{i}")), format!("{i}\n").repeat(i)).unwrap();
    }
    root
}

fn spec(dir: &Path, root: &Path, format: &str, options: serde_json::Value) -> PathBuf {
    let p = dir.join(format!("spec-{format}-{}.json", options.to_string().len()));
    let s = serde_json::json!({
        "partitionTableType": "efi",
        "rootDir": root,
        "format": format,
        "formatOptions": options,
        "additionalSpace": "64M",
        "sourceDateEpoch": 1_700_000_000,
    });
    fs::write(&p, s.to_string()).unwrap();
    p
}

fn build_to(spec: &Path, out: &Path, threads: &str) -> PathBuf {
    let o = Command::new(bin())
        .arg("build")
        .arg(spec)
        .arg("-o")
        .arg(out)
        .env("RAYON_NUM_THREADS", threads)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m: serde_json::Value = serde_json::from_str(&fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    out.join(m["image"]["file"].as_str().unwrap())
}

#[test]
fn every_format_equals_the_raw_image() {
    let t = tempfile::tempdir().unwrap();
    let root = tree(t.path());
    let raw = build_to(&spec(t.path(), &root, "raw", serde_json::json!({})), &t.path().join("raw"), "2");
    let raw_size = fs::metadata(&raw).unwrap().len();
    let cases: &[(&str, serde_json::Value, &str, &str)] = &[
        ("qcow2", serde_json::json!({}), "qcow2", "qcow2"),
        ("qcow2-compressed", serde_json::json!({}), "qcow2", "qcow2"),
        ("qcow2-compressed", serde_json::json!({"compression": "zstd"}), "qcow2", "qcow2"),
        ("vdi", serde_json::json!({}), "vdi", "vdi"),
        ("vpc", serde_json::json!({}), "vpc", "vhd"),
        ("vpc", serde_json::json!({"subformat": "fixed"}), "vpc", "vhd"),
    ];
    for (format, options, qemu_fmt, ext) in cases {
        let out = t.path().join(format!("out-{format}-{}", options.to_string().len()));
        let img = build_to(&spec(t.path(), &root, format, options.clone()), &out, "2");
        assert_eq!(img.extension().unwrap(), *ext);
        let (ok, cmp) =
            qemu_img(&["compare", "-f", "raw", "-F", qemu_fmt, raw.to_str().unwrap(), img.to_str().unwrap()]);
        assert!(ok && cmp.contains("Images are identical"), "{format} {options}: qemu-img compare: {cmp}");
        if matches!(*qemu_fmt, "qcow2" | "vdi" | "vmdk" | "vhdx") {
            let (ok, check) = qemu_img(&["check", "-f", qemu_fmt, img.to_str().unwrap()]);
            assert!(ok && check.contains("No errors were found"), "{format} {options}: qemu-img check: {check}");
        }
        let (ok, info) = qemu_img(&["info", "--output=json", "-f", qemu_fmt, img.to_str().unwrap()]);
        assert!(ok, "{info}");
        let info: serde_json::Value = serde_json::from_str(&info).unwrap();
        assert_eq!(info["virtual-size"].as_u64().unwrap(), raw_size, "{format} {options}: virtual size");
        if *format == "qcow2-compressed" {
            let want = if options.get("compression").is_some() { "zstd" } else { "zlib" };
            assert_eq!(info["format-specific"]["data"]["compression-type"], want);
            // Compression pays: the file is much smaller than the data.
            assert!(fs::metadata(&img).unwrap().len() < 40 << 20, "{format}: not compressed");
        }
        let products = fs::read_to_string(out.join("nix-support/hydra-build-products")).unwrap();
        let kind = if *format == "qcow2-compressed" { "qcow2" } else { format };
        assert!(products.starts_with(&format!("file {kind}-image ")), "{products}");
    }
}

#[test]
fn compressed_output_is_the_same_for_any_thread_count() {
    let t = tempfile::tempdir().unwrap();
    let root = tree(t.path());
    for options in [serde_json::json!({}), serde_json::json!({"compression": "zstd"})] {
        let s = spec(t.path(), &root, "qcow2-compressed", options.clone());
        let a = build_to(&s, &t.path().join("one"), "1");
        let b = build_to(&s, &t.path().join("four"), "4");
        assert!(fs::read(&a).unwrap() == fs::read(&b).unwrap(), "{options}: output depends on the thread count");
    }
}

#[test]
fn unknown_format_option() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("r");
    fs::create_dir(&root).unwrap();
    let s = spec(t.path(), &root, "qcow2", serde_json::json!({"subformat": "fixed"}));
    let err = build_fails(&[s.as_os_str(), os("-o"), t.path().join("o").as_os_str()]);
    assert!(err.contains("formatOptions.subformat is not an option of format 'qcow2'"), "{err}");
}
