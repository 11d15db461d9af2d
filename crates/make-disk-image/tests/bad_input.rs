//! docs/design.md §8: each bad input gets a clear error naming the input and the fix, a non-zero
//! exit, and nothing at the output path.

mod common;
use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The output folder holds nothing (it may not even exist).
fn nothing_at(out: &Path) {
    if let Ok(rd) = fs::read_dir(out) {
        let left: Vec<PathBuf> = rd.map(|e| e.unwrap().path()).collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }
}

fn fails(args: &[&str], out: &Path, expect: &[&str]) -> String {
    let mut a: Vec<&std::ffi::OsStr> = args.iter().map(|s| os(s)).collect();
    a.push(os("-o"));
    a.push(out.as_os_str());
    let err = build_fails(&a);
    for e in expect {
        assert!(err.contains(e), "error should mention {e:?}:\n{err}");
    }
    nothing_at(out);
    err
}

fn tiny_closure(dir: &Path, registration: &str) -> PathBuf {
    let ci = dir.join("closure-info");
    fs::create_dir_all(&ci).unwrap();
    fs::write(ci.join("store-paths"), "/nix/store/00000000000000000000000000000000-a\n").unwrap();
    fs::write(ci.join("registration"), registration).unwrap();
    ci
}

#[test]
fn missing_root_dir() {
    let t = tempfile::tempdir().unwrap();
    fails(
        &["--root-dir", "/nonexistent/tree", "--partition-table-type", "none"],
        &t.path().join("out"),
        &["rootDir '/nonexistent/tree'", "existing folder"],
    );
}

#[test]
fn missing_contents_source() {
    let t = tempfile::tempdir().unwrap();
    let spec = t.path().join("spec.json");
    fs::write(&spec, r#"{"partitionTableType":"none","contents":[{"source":"/nonexistent/file","target":"/etc/x"}]}"#)
        .unwrap();
    fails(&[spec.to_str().unwrap()], &t.path().join("out"), &["contents[0]", "/nonexistent/file"]);
}

#[test]
fn store_path_absent_under_store_root() {
    let t = tempfile::tempdir().unwrap();
    let reg = format!("/nix/store/00000000000000000000000000000000-a\nsha256:{}\n8\n\n0\n", "0".repeat(52));
    let ci = tiny_closure(t.path(), &reg);
    fails(
        &[
            "--closure-info",
            ci.to_str().unwrap(),
            "--store-root",
            t.path().to_str().unwrap(),
            "--only-nix-store",
            "true",
            "--partition-table-type",
            "none",
        ],
        &t.path().join("out"),
        &["00000000000000000000000000000000-a", "does not exist", "storeRoot"],
    );
}

#[test]
fn registration_that_does_not_parse() {
    let t = tempfile::tempdir().unwrap();
    let reg = format!("/nix/store/00000000000000000000000000000000-a\nsha256:{}\nnot-a-size\n\n0\n", "0".repeat(52));
    let ci = tiny_closure(t.path(), &reg);
    fails(
        &["--closure-info", ci.to_str().unwrap(), "--only-nix-store", "true", "--partition-table-type", "none"],
        &t.path().join("out"),
        &["registration:3:", "NAR size"],
    );
}

#[test]
fn contents_target_escaping_or_colliding() {
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join("f");
    fs::write(&f, "x").unwrap();
    let spec = t.path().join("escape.json");
    fs::write(
        &spec,
        format!(
            r#"{{"partitionTableType":"none","contents":[{{"source":"{}","target":"/etc/../../x"}}]}}"#,
            f.display()
        ),
    )
    .unwrap();
    fails(
        &[spec.to_str().unwrap()],
        &t.path().join("out"),
        &["contents[0]", "/etc/../../x", "not a valid path inside the image"],
    );
    let spec = t.path().join("collide.json");
    fs::write(
        &spec,
        format!(r#"{{"partitionTableType":"none","contents":[{{"source":"{0}","target":"/etc/x"}},{{"source":"{0}","target":"/etc/x"}}]}}"#, f.display()),
    )
    .unwrap();
    fails(&[spec.to_str().unwrap()], &t.path().join("out"), &["contents[1]", "duplicate entry /etc/x -> "]);
}

#[test]
fn unresolvable_user() {
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join("f");
    fs::write(&f, "x").unwrap();
    let spec = t.path().join("spec.json");
    fs::write(&spec, format!(r#"{{"partitionTableType":"none","contents":[{{"source":"{}","target":"/x","user":"alice","group":"users"}}]}}"#, f.display())).unwrap();
    fails(&[spec.to_str().unwrap()], &t.path().join("out"), &["user 'alice' cannot be resolved", "numeric id"]);
}

#[test]
fn disk_size_too_small_states_the_minimum() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("big"), vec![1u8; 40 << 20]).unwrap();
    let err = fails(
        &["--root-dir", src.to_str().unwrap(), "--partition-table-type", "none", "--disk-size", "16"],
        &t.path().join("out"),
        &["diskSize is too small", "at least"],
    );
    // The stated minimum really is enough.
    let need = err.split("set diskSize to at least ").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
    let out = t.path().join("ok");
    build(&[
        os("--root-dir"),
        src.as_os_str(),
        os("--partition-table-type"),
        os("none"),
        os("--disk-size"),
        os(&need),
        os("-o"),
        out.as_os_str(),
    ]);
    e2fsck_clean(&out.join("nixos.img"));
}

#[test]
fn unknown_key_flag_and_value() {
    let t = tempfile::tempdir().unwrap();
    let spec = t.path().join("spec.json");
    fs::write(&spec, r#"{"partitionTableTyp":"none"}"#).unwrap();
    fails(
        &[spec.to_str().unwrap()],
        &t.path().join("out"),
        &["unknown spec key 'partitionTableTyp'", "did you mean 'partitionTableType'"],
    );
    fails(&["--disk-sise", "auto"], &t.path().join("out"), &["unknown flag '--disk-sise'", "--disk-size"]);
    fails(&["--format", "qcow"], &t.path().join("out"), &["format", "'qcow' is not one of", "did you mean 'qcow2'"]);
}

#[test]
fn nixpkgs_assertions() {
    let t = tempfile::tempdir().unwrap();
    let spec = t.path().join("spec.json");
    fs::write(
        &spec,
        r#"{"onlyNixStore":true,"closureInfo":"/x","contents":[{"source":"/etc/hostname","target":"/h"}]}"#,
    )
    .unwrap();
    fails(&[spec.to_str().unwrap()], &t.path().join("out"), &["contents", "onlyNixStore"]);
}

#[test]
fn output_folder_not_writable() {
    let t = tempfile::tempdir().unwrap();
    let file = t.path().join("a-file");
    fs::write(&file, "x").unwrap();
    let out = file.join("out");
    let err = build_fails(&[os("-o"), out.as_os_str()]);
    assert!(err.contains("cannot create output folder") && err.contains("-o"), "{err}");
}

#[test]
fn disk_full_while_writing() {
    if skip_unless_root("disk full (mounts a small tmpfs)") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("data"), vec![0x5au8; 24 << 20]).unwrap();
    let small = t.path().join("small");
    fs::create_dir(&small).unwrap();
    assert!(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap()
        .success());
    let out = small.join("out");
    let res = std::panic::catch_unwind(|| {
        fails(
            &["--root-dir", src.to_str().unwrap(), "--partition-table-type", "none"],
            &out,
            &["No space left on device", "choose another output folder with -o"],
        );
    });
    Command::new("umount").arg(&small).status().unwrap();
    res.unwrap();
}

#[test]
fn interrupted_build_leaves_nothing() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    // Enough non-zero data that the build is still running when the signal comes.
    let chunk = vec![0xa5u8; 1 << 20];
    let mut f = fs::File::create(src.join("big")).unwrap();
    for _ in 0..1536 {
        std::io::Write::write_all(&mut f, &chunk).unwrap();
    }
    drop(f);
    let out = t.path().join("out");
    let child = Command::new(bin())
        .args(["build", "--partition-table-type", "none", "--root-dir"])
        .arg(&src)
        .arg("-o")
        .arg(&out)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the partial image exists, then interrupt.
    for _ in 0..500 {
        if fs::read_dir(&out).map(|mut d| d.next().is_some()).unwrap_or(false) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Command::new("kill").arg("-INT").arg(child.id().to_string()).status().unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(!o.status.success(), "build finished before the interrupt; make the input bigger");
    assert!(String::from_utf8_lossy(&o.stderr).contains("interrupted"), "{}", String::from_utf8_lossy(&o.stderr));
    nothing_at(&out);
}
