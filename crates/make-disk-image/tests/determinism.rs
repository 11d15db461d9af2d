//! docs/design.md §5: the bytes depend on the inputs and the spec only. The same tree built
//! twice under changed conditions (time zone, umask, thread count, creation order of the
//! input, output folder) gives identical images.

mod common;
use common::*;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;

/// Creates the same tree in a given order of creation (so inode numbers and directory
/// read order of the source differ).
fn make_tree(root: &Path, reverse: bool) {
    let mut names: Vec<usize> = (0..400).collect();
    if reverse {
        names.reverse();
    }
    fs::create_dir_all(root.join("sub/deeper")).unwrap();
    for i in names {
        let d = if i % 3 == 0 {
            "sub"
        } else if i % 3 == 1 {
            "sub/deeper"
        } else {
            ""
        };
        let p = root.join(d).join(format!("f{i}"));
        fs::write(&p, format!("content {i}\n").repeat(i)).unwrap();
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000 + i as u64);
        fs::File::options().write(true).open(&p).unwrap().set_times(fs::FileTimes::new().set_modified(t)).unwrap();
    }
    fs::hard_link(root.join("f2"), root.join("f2-link")).unwrap();
    symlink("sub/f3", root.join("link")).unwrap();
    let mut big = vec![0u8; 3 << 20];
    big[1 << 20] = 1;
    fs::write(root.join("big"), &big).unwrap();
    // Directories get fixed times too (their mtimes change as files are created).
    for d in ["sub/deeper", "sub", ""] {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(2_000_000);
        fs::File::open(root.join(d)).unwrap().set_times(fs::FileTimes::new().set_modified(t)).unwrap();
    }
}

fn build_with(src: &Path, out: &Path, tz: &str, umask: &str, threads: &str, cwd: &Path) -> Vec<u8> {
    let cmd = format!(
        "umask {umask} && exec {} build --root-dir {} --partition-table-type none --additional-space 8M --source-date-epoch 1700000000 -o {}",
        bin(),
        src.display(),
        out.display()
    );
    let o = Command::new("sh")
        .arg("-c")
        .arg(&cmd)
        .env("TZ", tz)
        .env("RAYON_NUM_THREADS", threads)
        .current_dir(cwd)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    fs::read(out.join("nixos.img")).unwrap()
}

#[test]
fn same_bytes_under_changed_conditions() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a/tree"), tmp.path().join("b/tree"));
    make_tree(&a, false);
    make_tree(&b, true);
    let img1 = build_with(&a, &tmp.path().join("out1"), "UTC", "022", "1", tmp.path());
    let img2 = build_with(&b, &tmp.path().join("elsewhere/out2"), "Pacific/Chatham", "077", "7", &a);
    assert!(img1 == img2, "images differ");
    e2fsck_clean(&tmp.path().join("out1/nixos.img"));
    // The manifest records the same image hash too.
    let m1 = fs::read_to_string(tmp.path().join("out1/manifest.json")).unwrap();
    let m2 = fs::read_to_string(tmp.path().join("elsewhere/out2/manifest.json")).unwrap();
    let h = |m: &str| serde_json::from_str::<serde_json::Value>(m).unwrap()["image"]["sha256"].clone();
    assert_eq!(h(&m1), h(&m2));
}

#[test]
fn seed_and_epoch_change_the_bytes() {
    // The converse: identity inputs really reach the image (the test above cannot pass
    // by ignoring them).
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("t");
    make_tree(&src, false);
    let run = |out: &str, extra: &[&str]| {
        let mut args = vec![
            os("--root-dir"),
            src.as_os_str(),
            os("--partition-table-type"),
            os("none"),
            os("--additional-space"),
            os("8M"),
            os("-o"),
        ];
        let o = tmp.path().join(out);
        args.push(o.as_os_str());
        args.extend(extra.iter().map(|s| os(s)));
        build(&args);
        fs::read(o.join("nixos.img")).unwrap()
    };
    let base = run("o1", &["--source-date-epoch", "1700000000"]);
    assert!(base != run("o2", &["--source-date-epoch", "1700000001"]));
    assert!(
        base != run("o3", &["--source-date-epoch", "1700000000", "--seed", "11111111-2222-4333-8444-555555555555"])
    );
}
