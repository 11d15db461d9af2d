//! Issue 5 §1: a full image's Nix state, checked by real Nix on the mounted image.

mod common;
use common::*;
use std::fs;
use std::path::Path;
use std::process::Command;

fn nix(root: &Path, args: &[&str]) -> String {
    let store = format!("local?root={}", root.display());
    let o = Command::new("nix-store").arg("--store").arg(&store).args(args).output().unwrap();
    assert!(o.status.success(), "nix-store {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn build_full(corpus: &Path, out: &Path) -> std::path::PathBuf {
    let system = fs::read_to_string(corpus.join("closure-info/toplevel")).unwrap();
    build(&[
        os("--closure-info"),
        corpus.join("closure-info").as_os_str(),
        os("--store-root"),
        corpus.join("root").as_os_str(),
        os("--system"),
        os(system.trim()),
        os("--install-boot-loader"),
        os("false"),
        os("--config-file"),
        corpus.join("closure-info/toplevel").as_os_str(),
        os("--partition-table-type"),
        os("none"),
        os("--additional-space"),
        os("16M"),
        os("-o"),
        out.as_os_str(),
    ]);
    out.join("nixos.img")
}

#[test]
fn full_image_nix_state_is_accepted_by_nix() {
    let Some(corpus) = corpus("tiny") else { return };
    if skip_unless_root("loop mount of the full image") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let img = build_full(&corpus, &t.path().join("a"));
    e2fsck_clean(&img);
    // The database file is the same bytes in a second build.
    let img2 = build_full(&corpus, &t.path().join("b"));
    assert!(fs::read(&img).unwrap() == fs::read(&img2).unwrap(), "full images differ");

    // Nix wants to write (locks, .links): the read-only image goes under an overlay.
    let lower = Mount::new(&img);
    let root = t.path().join("root");
    let (upper, work) = (t.path().join("upper"), t.path().join("work"));
    for d in [&root, &upper, &work] {
        fs::create_dir_all(d).unwrap();
    }
    let opts = format!("lowerdir={},upperdir={},workdir={}", lower.path().display(), upper.display(), work.display());
    assert!(Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(&root)
        .status()
        .unwrap()
        .success());
    let result = std::panic::catch_unwind(|| {
        let system = fs::read_to_string(corpus.join("closure-info/toplevel")).unwrap().trim().to_string();
        let verify = Command::new("nix-store")
            .args(["--store", &format!("local?root={}", root.display()), "--verify", "--check-contents"])
            .output()
            .unwrap();
        let verr = String::from_utf8_lossy(&verify.stderr);
        assert!(verify.status.success() && !verr.contains("error") && !verr.contains("modified"), "verify: {verr}");
        let mut req: Vec<String> = nix(&root, &["-q", "--requisites", &system]).lines().map(str::to_string).collect();
        req.sort();
        let mut want: Vec<String> =
            fs::read_to_string(corpus.join("closure-info/store-paths")).unwrap().lines().map(str::to_string).collect();
        want.sort();
        assert_eq!(req, want, "requisites of the system are the closure");
        // Hashes and references as registered, for every path.
        let reg = fs::read_to_string(corpus.join("closure-info/registration")).unwrap();
        let lines: Vec<&str> = reg.lines().collect();
        let mut i = 0;
        while i < lines.len() {
            let (path, hash, n) = (lines[i], lines[i + 1], lines[i + 4].parse::<usize>().unwrap());
            assert_eq!(nix(&root, &["-q", "--hash", path]).trim(), hash, "{path}: hash");
            let mut refs: Vec<&str> = lines[i + 5..i + 5 + n].to_vec();
            refs.sort();
            let got = nix(&root, &["-q", "--references", path]);
            let mut got: Vec<&str> = got.lines().collect();
            got.sort();
            assert_eq!(got, refs, "{path}: references");
            i += 5 + n;
        }
        // Profiles resolve inside the image.
        let prof = fs::read_link(root.join("nix/var/nix/profiles/system")).unwrap();
        assert_eq!(prof, Path::new("system-1-link"));
        assert_eq!(fs::read_link(root.join("nix/var/nix/profiles/system-1-link")).unwrap(), Path::new(&system));
        assert_eq!(
            fs::read_link(root.join("nix/var/nix/gcroots/profiles")).unwrap(),
            Path::new("/nix/var/nix/profiles")
        );
        assert!(root.join("etc/NIXOS").exists());
        // configFile lands where nixos-install puts it.
        assert_eq!(
            fs::read(root.join("etc/nixos/configuration.nix")).unwrap(),
            fs::read(corpus.join("closure-info/toplevel")).unwrap()
        );
        assert_eq!(fs::read_to_string(root.join("nix/var/nix/db/schema")).unwrap(), "10");
        let o = Command::new("sqlite3")
            .arg(lower.path().join("nix/var/nix/db/db.sqlite"))
            .arg("pragma integrity_check;")
            .output()
            .expect("sqlite3 (apt-get install sqlite3)");
        assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "ok");
    });
    Command::new("umount").arg(&root).status().unwrap();
    result.unwrap();
}
