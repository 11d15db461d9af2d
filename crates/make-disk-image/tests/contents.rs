//! Issue 5 §4, §6: `contents` placed as nixpkgs' rsync/chown steps do (modes, globs,
//! owners by number or by name), every bad entry a clear error; postVM with nixpkgs'
//! variables, whose failure fails the build and leaves nothing. Checked on the kernel's
//! loop mount of the image, sfdisk for the partition figures.

mod common;
use common::*;
use serde_json::{json, Value};
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds `spec` (plus `partitionTableType: none` unless set) into `out`; returns the image.
fn build_spec(dir: &Path, spec: Value, out: &Path) -> PathBuf {
    let mut spec = spec;
    let m = spec.as_object_mut().unwrap();
    m.entry("partitionTableType").or_insert(json!("none"));
    m.entry("additionalSpace").or_insert(json!("1M"));
    let file = dir.join("spec.json");
    fs::write(&file, spec.to_string()).unwrap();
    build(&[file.as_os_str(), os("-o"), out.as_os_str()]);
    out.join("nixos.img")
}

/// Expects the build of `spec` to fail with every string of `expect` in its error, and
/// nothing left at the output folder.
fn spec_fails(dir: &Path, spec: Value, expect: &[&str]) {
    let mut spec = spec;
    spec.as_object_mut().unwrap().entry("partitionTableType").or_insert(json!("none"));
    let file = dir.join("bad.json");
    fs::write(&file, spec.to_string()).unwrap();
    let out = dir.join("bad-out");
    let err = build_fails(&[file.as_os_str(), os("-o"), out.as_os_str()]);
    for e in expect {
        assert!(err.contains(e), "error should mention {e:?}:\n{err}");
    }
    assert!(!out.exists(), "output left behind for a failed build: {err}");
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).permissions().mode() & 0o7777
}

fn owner(p: &Path) -> (u32, u32) {
    let m = fs::symlink_metadata(p).unwrap();
    (m.uid(), m.gid())
}

/// Source trees: a folder (files, a subfolder, a symlink), files to glob, user databases.
struct Sources {
    dir: PathBuf,
}

impl Sources {
    fn new(t: &Path) -> Sources {
        let s = t.join("src");
        fs::create_dir_all(s.join("tree/sub")).unwrap();
        fs::write(s.join("tree/a"), "a\n").unwrap();
        fs::write(s.join("tree/sub/b"), "b\n").unwrap();
        symlink("a", s.join("tree/link")).unwrap();
        fs::set_permissions(s.join("tree/a"), fs::Permissions::from_mode(0o644)).unwrap();
        fs::create_dir_all(s.join("globs/adir")).unwrap();
        fs::write(s.join("globs/adir/inner"), "i\n").unwrap();
        for f in ["one.conf", "two.conf", "three.txt", ".hidden.conf"] {
            fs::write(s.join("globs").join(f), f).unwrap();
        }
        fs::write(s.join("plain"), "plain\n").unwrap();
        fs::set_permissions(s.join("plain"), fs::Permissions::from_mode(0o640)).unwrap();
        // Owned by someone else on the host: rsync --no-o --no-g makes it root's. Only root
        // can give a file away; for others the file is theirs, which tests the same rule.
        if is_root() {
            std::os::unix::fs::chown(s.join("plain"), Some(4321), Some(4321)).unwrap();
        }
        symlink(s.join("tree"), s.join("tree-link")).unwrap();
        // The image's own /etc (from rootDir) and a spec-given database that differs.
        fs::create_dir_all(s.join("rootdir/etc")).unwrap();
        fs::write(s.join("rootdir/etc/passwd"), "root:x:0:0::/root:/bin/sh\nalice:x:1001:100::/home/alice:/bin/sh\n")
            .unwrap();
        fs::write(s.join("rootdir/etc/group"), "root:x:0:\n# comment\n\nusers:x:100:\nwheel:x:1:alice\n").unwrap();
        fs::write(s.join("passwd"), "alice:x:2002:100::/home/alice:/bin/sh\nbob:x:2003:100::/:/bin/sh\n").unwrap();
        fs::write(s.join("group"), "wheel:x:7:\nstaff:x:50:\n").unwrap();
        Sources { dir: s }
    }
    fn p(&self, rel: &str) -> String {
        self.dir.join(rel).to_str().unwrap().to_string()
    }
}

#[test]
fn contents_as_nixpkgs_places_them() {
    if skip_unless_root("loop mount of the image") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let s = Sources::new(t.path());
    let spec = json!({
        "rootDir": s.p("rootdir"),
        "contents": [
            {"source": s.p("tree"), "target": "/srv/tree", "mode": "0750", "user": "alice", "group": "wheel"},
            {"source": s.p("globs/*.conf"), "target": "/etc/conf.d", "mode": "0600"},
            {"source": s.p("globs/a*"), "target": "/opt"},
            {"source": s.p("plain"), "target": "/var/lib/plain", "user": 1234, "group": "5"},
            {"source": s.p("tree-link"), "target": "/followed"},
            // A glob into an existing folder (rootDir's /etc) adds to it.
            {"source": s.p("globs/t*.txt"), "target": "/etc"},
        ],
    });
    let img = build_spec(t.path(), spec.clone(), &t.path().join("out"));
    e2fsck_clean(&img);
    let m = Mount::new(&img);
    let r = m.path();
    // mode applies to every file and folder copied, not to the symlink; chown -R covers all.
    for p in ["srv/tree", "srv/tree/a", "srv/tree/sub", "srv/tree/sub/b"] {
        assert_eq!(mode(&r.join(p)), 0o750, "{p}: mode");
        assert_eq!(owner(&r.join(p)), (1001, 1), "{p}: owner from the image's /etc");
    }
    assert_eq!(mode(&r.join("srv/tree/link")), 0o777);
    assert_eq!(fs::read_link(r.join("srv/tree/link")).unwrap(), Path::new("a"));
    assert_eq!(owner(&r.join("srv/tree/link")), (1001, 1));
    assert_eq!((mode(&r.join("srv")), owner(&r.join("srv"))), (0o755, (0, 0)), "made parents");
    // Globs: each match under its own name; no dot files, no non-matches.
    let mut names: Vec<String> =
        fs::read_dir(r.join("etc/conf.d")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["one.conf", "two.conf"]);
    assert_eq!(fs::read_to_string(r.join("etc/conf.d/two.conf")).unwrap(), "two.conf");
    assert_eq!(mode(&r.join("etc/conf.d/one.conf")), 0o600);
    assert_eq!(mode(&r.join("etc/conf.d")), 0o755, "the glob's target folder is made, not chmod-ed");
    assert_eq!(fs::read_to_string(r.join("opt/adir/inner")).unwrap(), "i\n", "a matched folder is copied whole");
    assert_eq!(fs::read_to_string(r.join("etc/three.txt")).unwrap(), "three.txt");
    assert!(r.join("etc/passwd").exists(), "rootDir's /etc kept");
    // Without mode the source's mode stays; the host owner does not (--no-o --no-g).
    assert_eq!(mode(&r.join("var/lib/plain")), 0o640);
    assert_eq!(owner(&r.join("var/lib/plain")), (1234, 5), "numeric ids, as numbers and strings");
    assert_eq!(owner(&r.join("etc/conf.d/one.conf")), (0, 0));
    // A symlink to a folder as source is followed (nixpkgs copies `source/`).
    assert!(fs::symlink_metadata(r.join("followed")).unwrap().is_dir());
    assert_eq!(fs::read_to_string(r.join("followed/sub/b")).unwrap(), "b\n");
    drop(m);

    // Deterministic: same bytes from another folder, umask, time zone and thread count.
    let other = tempfile::tempdir().unwrap();
    let out2 = other.path().join("elsewhere");
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 077 && cd / && {} build {} -o {}",
            bin(),
            t.path().join("spec.json").display(),
            out2.display()
        ))
        .env("TZ", "Asia/Kathmandu")
        .env("RAYON_NUM_THREADS", "3")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(fs::read(&img).unwrap() == fs::read(out2.join("nixos.img")).unwrap(), "images differ");
}

#[test]
fn names_from_spec_files_and_from_contents() {
    if skip_unless_root("loop mount of the image") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let s = Sources::new(t.path());
    // passwdFile/groupFile win over the image's own /etc (here from rootDir).
    let spec = json!({
        "rootDir": s.p("rootdir"),
        "passwdFile": s.p("passwd"),
        "groupFile": s.p("group"),
        "contents": [{"source": s.p("plain"), "target": "/p", "user": "alice", "group": "staff"}],
    });
    let img = build_spec(t.path(), spec, &t.path().join("a"));
    let m = Mount::new(&img);
    assert_eq!(owner(&m.path().join("p")), (2002, 50));
    drop(m);
    // The image's /etc may come from contents too, placed after the entry that names it;
    // "root" needs no database.
    let spec = json!({
        "contents": [
            {"source": s.p("plain"), "target": "/p", "user": "alice", "group": "users"},
            {"source": s.p("plain"), "target": "/q", "user": "root", "group": "root"},
            {"source": s.p("rootdir/etc/passwd"), "target": "/etc/passwd"},
            {"source": s.p("rootdir/etc/group"), "target": "/etc/group"},
        ],
    });
    let img = build_spec(t.path(), spec, &t.path().join("b"));
    let m = Mount::new(&img);
    assert_eq!(owner(&m.path().join("p")), (1001, 100));
    assert_eq!(owner(&m.path().join("q")), (0, 0));
}

#[test]
fn bad_contents_entries() {
    let t = tempfile::tempdir().unwrap();
    let s = Sources::new(t.path());
    let d = t.path();
    let plain = s.p("plain");
    // A name with nothing to look it up in.
    spec_fails(
        d,
        json!({"contents": [{"source": plain, "target": "/x", "user": "alice", "group": "users"}]}),
        &["contents[0]", "user 'alice' cannot be resolved", "passwdFile", "/etc/passwd", "numeric id"],
    );
    // A name the database lacks (the image's own, then the spec's).
    spec_fails(
        d,
        json!({"rootDir": s.p("rootdir"), "contents": [{"source": plain, "target": "/x", "user": "alice", "group": "nogroup"}]}),
        &["group 'nogroup' cannot be resolved", "/etc/group of the image has no such name"],
    );
    spec_fails(
        d,
        json!({"passwdFile": s.p("passwd"), "contents": [{"source": plain, "target": "/x", "user": "carol", "group": 0}]}),
        &["user 'carol' cannot be resolved", "passwdFile", "has no such name"],
    );
    spec_fails(
        d,
        json!({"passwdFile": s.p("nonexistent"), "contents": [{"source": plain, "target": "/x", "user": "carol", "group": 0}]}),
        &["passwdFile", "nonexistent", "cannot be read"],
    );
    spec_fails(
        d,
        json!({"passwdFile": s.p("tree/a"), "contents": [{"source": plain, "target": "/x", "user": "carol", "group": 0}]}),
        &["line 1", "'a' is not name:password:id"],
    );
    // Duplicate entries: the same target twice, a target from rootDir, a glob clash.
    spec_fails(
        d,
        json!({"contents": [{"source": plain, "target": "/etc/x"}, {"source": s.p("tree"), "target": "/etc/x"}]}),
        &["contents[1]", &format!("duplicate entry /etc/x -> {}", s.p("tree"))],
    );
    spec_fails(
        d,
        json!({"rootDir": s.p("rootdir"), "contents": [{"source": plain, "target": "/etc/passwd"}]}),
        &["contents[0]", "duplicate entry /etc/passwd -> "],
    );
    spec_fails(
        d,
        json!({"contents": [{"source": plain, "target": "/etc/one.conf"}, {"source": s.p("globs/*.conf"), "target": "/etc"}]}),
        &["contents[1]", &format!("duplicate entry /etc/one.conf -> {}", s.p("globs/one.conf"))],
    );
    // Targets outside the image or relative.
    for target in ["x", "../x", "etc/x"] {
        spec_fails(
            d,
            json!({"contents": [{"source": plain, "target": target}]}),
            &["contents[0]", &format!("target '{target}' must be an absolute path")],
        );
    }
    spec_fails(
        d,
        json!({"contents": [{"source": plain, "target": "/etc/../../x"}]}),
        &["contents[0]", "'/etc/../../x' is not a valid path inside the image"],
    );
    // Missing sources and empty globs.
    spec_fails(
        d,
        json!({"contents": [{"source": s.p("absent"), "target": "/x"}]}),
        &["contents[0]", &format!("source '{}' cannot be read", s.p("absent")), "existing file or folder"],
    );
    spec_fails(
        d,
        json!({"contents": [{"source": s.p("globs/*.none"), "target": "/x"}]}),
        &["contents[0]", "matches nothing"],
    );
    // A mode that is not octal, a glob into a file.
    spec_fails(
        d,
        json!({"contents": [{"source": plain, "target": "/x", "mode": "u+x"}]}),
        &["contents[0]", "'u+x' is not an octal mode"],
    );
    spec_fails(
        d,
        json!({"contents": [{"source": plain, "target": "/f"}, {"source": s.p("globs/*.conf"), "target": "/f"}]}),
        &["contents[1]", "'/f' is not a directory"],
    );
}

/// A raw legacy image whose postVM writes what it sees to $out/vars.
#[test]
fn post_vm_sees_nixpkgs_variables() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    let script = r#"{ echo "out=$out"; echo "diskImage=$diskImage"; echo "efiVars=${efiVars-unset}";
echo "bootSize=$bootSize"; echo "bootSizeMiB=$bootSizeMiB"; echo "diskSize=$diskSize";
echo "rootPartition=$rootPartition"; echo "START=$START"; echo "SECTORS=$SECTORS";
echo "bytes=$(sectorsToBytes "$SECTORS")"; echo "cwd=$PWD"; test -f "$diskImage" && echo present; } > "$out/vars"
echo to-stdout"#;
    let o = build(&[
        os("--partition-table-type"),
        os("legacy"),
        os("--boot-size"),
        os("100M"),
        os("--post-vm"),
        os(script),
        os("--json"),
        os("-o"),
        out.as_os_str(),
    ]);
    // The script's stdout does not mix into --json.
    let _: Value = serde_json::from_slice(&o.stdout).expect("stdout is the manifest only");
    let vars = fs::read_to_string(out.join("vars")).unwrap();
    let get = |k: &str| {
        vars.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("{k} in {vars}"))
            .to_string()
    };
    let img = out.canonicalize().unwrap().join("nixos.img");
    assert_eq!(get("out"), out.canonicalize().unwrap().to_str().unwrap());
    assert_eq!(get("diskImage"), img.to_str().unwrap());
    assert!(vars.contains("\npresent\n"), "{vars}");
    assert_eq!(get("efiVars"), "unset");
    assert_eq!(get("bootSize"), (100u64 << 20).to_string());
    assert_eq!(get("bootSizeMiB"), "100MiB");
    assert_eq!(get("diskSize"), fs::metadata(&img).unwrap().len().to_string());
    assert_eq!(get("rootPartition"), "1");
    assert_ne!(get("cwd"), get("out"), "postVM runs in a scratch folder, as nixpkgs' build folder");
    // START and SECTORS are the root partition's, as sfdisk reads the table.
    let sf = Command::new("sfdisk").arg("--json").arg(&img).output().expect("sfdisk (apt-get install fdisk)");
    let table: Value = serde_json::from_slice(&sf.stdout).unwrap();
    let p = &table["partitiontable"]["partitions"][0];
    assert_eq!(get("START"), p["start"].to_string());
    assert_eq!(get("SECTORS"), p["size"].to_string());
    assert_eq!(get("bytes"), (p["size"].as_u64().unwrap() * 512).to_string());

    // efiVars is set with touchEFIVars, as nixpkgs does.
    let out = t.path().join("efi");
    build(&[
        os("--partition-table-type"),
        os("efi"),
        os("--touch-efi-vars"),
        os("true"),
        os("--post-vm"),
        os(r#"echo "$efiVars|$rootPartition" > "$out/vars""#),
        os("-o"),
        out.as_os_str(),
    ]);
    let want = format!("{}|2\n", out.canonicalize().unwrap().join("efi-vars.fd").display());
    assert_eq!(fs::read_to_string(out.join("vars")).unwrap(), want);
}

#[test]
fn post_vm_failure_removes_the_output() {
    let t = tempfile::tempdir().unwrap();
    // A new output folder: nothing at all is left.
    let out = t.path().join("new");
    let err = build_fails(&[
        os("--partition-table-type"),
        os("none"),
        os("--post-vm"),
        os("touch \"$out/made-by-script\"; exit 3"),
        os("-o"),
        out.as_os_str(),
    ]);
    assert!(err.contains("postVM failed with exit status 3") && err.contains("was left as it was"), "{err}");
    assert!(!out.exists(), "output folder left behind");
    // An existing folder keeps what it held and nothing else; a failing command in the
    // middle stops the script (errexit, as nixpkgs' builder).
    let out = t.path().join("existing");
    fs::create_dir(&out).unwrap();
    fs::write(out.join("keep"), "mine").unwrap();
    let err = build_fails(&[
        os("--partition-table-type"),
        os("none"),
        os("--post-vm"),
        os("mkdir \"$out/dir\"; false | cat; touch \"$out/after\""),
        os("-o"),
        out.as_os_str(),
    ]);
    assert!(err.contains("postVM failed with exit status 1"), "{err}");
    let left: Vec<String> =
        fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(left, ["keep"]);
    assert_eq!(fs::read_to_string(out.join("keep")).unwrap(), "mine");
}
