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

/// Every format we write, with its qemu-img name, extension and cluster size.
const ALL: &[(&str, &str, &str, &str, u64)] = &[
    ("qcow2", "{}", "qcow2", "qcow2", 65536),
    ("qcow2-compressed", "{}", "qcow2", "qcow2", 65536),
    ("qcow2-compressed", r#"{"compression":"zstd"}"#, "qcow2", "qcow2", 65536),
    ("vdi", "{}", "vdi", "vdi", 1 << 20),
    ("vpc", "{}", "vpc", "vhd", 2 << 20),
    ("vpc", r#"{"subformat":"fixed"}"#, "vpc", "vhd", 0),
    ("vmdk", "{}", "vmdk", "vmdk", 65536),
    ("vmdk", r#"{"subformat":"streamOptimized"}"#, "vmdk", "vmdk", 65536),
    ("vhdx", "{}", "vhdx", "vhdx", 32 << 20),
];

/// Builds `extra` spec keys in every format of `formats` and checks each against the raw
/// build with qemu-img check, compare and info.
fn check_formats(extra: serde_json::Value, formats: &[&str]) {
    let t = tempfile::tempdir().unwrap();
    let spec_for = |format: &str, options: &str| {
        let mut s = extra.clone();
        s["format"] = serde_json::json!(format);
        s["formatOptions"] = serde_json::from_str(options).unwrap();
        s["sourceDateEpoch"] = serde_json::json!(1_700_000_000);
        let p = t.path().join(format!("spec-{format}-{}.json", options.len()));
        fs::write(&p, s.to_string()).unwrap();
        p
    };
    let raw = build_to(&spec_for("raw", "{}"), &t.path().join("raw"), "2");
    let raw_size = fs::metadata(&raw).unwrap().len();
    for (format, options, qfmt, _, cluster) in ALL.iter().filter(|f| formats.contains(&f.0)) {
        let out = t.path().join(format!("out-{format}-{}", options.len()));
        let img = build_to(&spec_for(format, options), &out, "2");
        let (ok, cmp) = qemu_img(&["compare", "-f", "raw", "-F", qfmt, raw.to_str().unwrap(), img.to_str().unwrap()]);
        assert!(ok && cmp.contains("Images are identical"), "{format} {options}: qemu-img compare: {cmp}");
        if *qfmt != "vpc" {
            let (ok, check) = qemu_img(&["check", "-f", qfmt, img.to_str().unwrap()]);
            assert!(
                ok && check.contains("No errors were found") && !check.contains("leaked"),
                "{format} {options}: {check}"
            );
        }
        let (ok, info) = qemu_img(&["info", "--output=json", "-f", qfmt, img.to_str().unwrap()]);
        assert!(ok, "{info}");
        let info: serde_json::Value = serde_json::from_str(&info).unwrap();
        assert_eq!(info["format"], *qfmt);
        assert_eq!(info["virtual-size"].as_u64().unwrap(), raw_size, "{format} {options}: virtual size");
        if *cluster > 0 {
            assert_eq!(info["cluster-size"].as_u64(), Some(*cluster), "{format} {options}: cluster size");
        }
        let m: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(m["image"]["format"], *format);
        assert_eq!(m["image"]["virtualSize"].as_u64(), Some(raw_size));
        assert_eq!(m["image"]["fileSize"].as_u64(), Some(fs::metadata(&img).unwrap().len()));
    }
}

#[test]
fn tiny_image_in_every_format() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("r");
    fs::create_dir(&root).unwrap();
    fs::write(root.join("hello"), "hello\n").unwrap();
    let all: Vec<&str> = ALL.iter().map(|f| f.0).collect();
    check_formats(serde_json::json!({"partitionTableType": "legacy", "rootDir": root, "additionalSpace": "0"}), &all);
}

#[test]
fn sparse_file_over_4_gib_in_every_format() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("r");
    fs::create_dir(&root).unwrap();
    let f = fs::File::create(root.join("sparse")).unwrap();
    f.set_len((5 << 30) + 4096).unwrap();
    use std::os::unix::fs::FileExt;
    for at in [0u64, 4 << 30, 5 << 30] {
        f.write_all_at(&vec![0x5a; 1 << 20][..], at).unwrap();
    }
    let all: Vec<&str> = ALL.iter().map(|f| f.0).collect();
    check_formats(serde_json::json!({"partitionTableType": "efi", "rootDir": root, "additionalSpace": "16M"}), &all);
}

#[test]
fn past_2_tib_where_the_format_allows() {
    // VHD stops at 2040 GiB and VMDK's sparse extents at 2 TiB. VHDX goes further; it is
    // checked past 2 TiB by the next test (qemu-img compare cannot skip its holes).
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("r");
    fs::create_dir(&root).unwrap();
    fs::write(root.join("x"), "x").unwrap();
    check_formats(
        serde_json::json!({"partitionTableType": "efi", "rootDir": root, "diskSize": 3_145_728}),
        &["qcow2", "qcow2-compressed", "vdi"],
    );
}

#[test]
fn every_format_is_deterministic() {
    let t = tempfile::tempdir().unwrap();
    let root = tree(t.path());
    for (format, options, ..) in ALL {
        let s = spec(t.path(), &root, format, serde_json::from_str(options).unwrap());
        let a = build_to(&s, &t.path().join("one"), "1");
        let out2 = t.path().join("elsewhere/two");
        let cmd = format!("umask 077 && cd / && exec {} build {} -o {}", bin(), s.display(), out2.display());
        let o = Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .env("TZ", "America/St_Johns")
            .env("RAYON_NUM_THREADS", "2")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let b = out2.join(a.file_name().unwrap());
        assert!(fs::read(&a).unwrap() == fs::read(&b).unwrap(), "{format} {options}: bytes depend on the conditions");
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

/// Data extents of a sparse raw file, as `qemu-img map` reports them.
fn data_extents(raw: &Path) -> Vec<(u64, u64)> {
    let (ok, out) = qemu_img(&["map", "--output=json", "-f", "raw", raw.to_str().unwrap()]);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .filter(|e| e["data"] == true)
        .map(|e| (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap()))
        .collect()
}

#[test]
fn vhdx_past_2_tib_reads_right_through_qemu() {
    // qemu-img compare would read 3 TiB of VHDX zeros (QEMU's VHDX driver reports no
    // block status), so QEMU's driver reads what matters instead: every data extent of the
    // raw build, the same range of the VHDX (`qemu-img dd` with skip/count), byte-equal;
    // plus ranges in the holes, which must read as zeros. `qemu-img check` checks the BAT.
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("r");
    fs::create_dir(&root).unwrap();
    fs::write(root.join("x"), "x".repeat(100_000)).unwrap();
    let mk = |format: &str| {
        let p = t.path().join(format!("spec-{format}.json"));
        let s = serde_json::json!({"partitionTableType": "efi", "rootDir": root, "diskSize": 3_145_728, "format": format, "sourceDateEpoch": 1});
        fs::write(&p, s.to_string()).unwrap();
        build_to(&p, &t.path().join(format), "2")
    };
    let (raw, vhdx) = (mk("raw"), mk("vhdx"));
    let size = fs::metadata(&raw).unwrap().len();
    assert!(size >= 3 << 40);
    let (ok, out) = qemu_img(&["check", "-f", "vhdx", vhdx.to_str().unwrap()]);
    assert!(ok && out.contains("No errors"), "{out}");
    let (ok, info) = qemu_img(&["info", "--output=json", "-f", "vhdx", vhdx.to_str().unwrap()]);
    assert!(ok, "{info}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&info).unwrap()["virtual-size"], size);
    let mut ranges = data_extents(&raw);
    assert!(ranges.iter().any(|r| r.0 > 2 << 40), "the backup GPT lies past 2 TiB: {ranges:?}");
    // Holes: 1 MiB in the middle of the disk and just before the backup GPT's MiB.
    for at in [size / 2 / (1 << 20) * (1 << 20), size / (1 << 20) * (1 << 20) - (2 << 20)] {
        if !ranges.iter().any(|&(s, l)| at < s + l && s < at + (1 << 20)) {
            ranges.push((at, 1 << 20));
        }
    }
    const BS: u64 = 64 << 10;
    for (start, len) in ranges {
        let (s, e) = (start / BS * BS, (start + len).div_ceil(BS) * BS);
        let mine = t.path().join("part");
        let _ = fs::remove_file(&mine);
        let (ok, out) = qemu_img(&[
            "dd",
            "-f",
            "vhdx",
            "-O",
            "raw",
            &format!("bs={BS}"),
            &format!("skip={}", s / BS),
            // qemu-img dd counts the skipped blocks in `count` too (unlike dd(1)).
            &format!("count={}", e / BS),
            &format!("if={}", vhdx.display()),
            &format!("of={}", mine.display()),
        ]);
        assert!(ok, "{out}");
        let got = fs::read(&mine).unwrap();
        let mut want = vec![0u8; (e - s) as usize];
        std::os::unix::fs::FileExt::read_exact_at(&fs::File::open(&raw).unwrap(), &mut want, s).unwrap();
        assert!(got == want, "VHDX bytes at {s}..{e} differ from the raw build");
    }
}
