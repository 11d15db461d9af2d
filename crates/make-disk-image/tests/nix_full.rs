//! Issue 5 §1, §2, §5: a full image's Nix state (database, profiles, the channel,
//! additionalPaths, /nix-path-registration), checked by real Nix on the mounted image.

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

/// The corpus store path whose name contains `part` (versions follow Debian's archive).
fn store_path(corpus: &Path, part: &str) -> String {
    let sp = fs::read_to_string(corpus.join("closure-info/store-paths")).unwrap();
    sp.lines().find(|l| l.contains(part)).unwrap_or_else(|| panic!("no store path with '{part}'")).to_string()
}

/// The channel stand-in (a real store path with references) and the additional path.
fn channel_and_extra(corpus: &Path) -> (String, String) {
    (store_path(corpus, "-hello-"), store_path(corpus, "-edge-empty-file"))
}

/// The closure of `path` according to the corpus' registration (what Nix recorded).
fn closure_of(corpus: &Path, path: &str) -> Vec<String> {
    let reg = fs::read_to_string(corpus.join("closure-info/registration")).unwrap();
    let lines: Vec<&str> = reg.lines().collect();
    let mut refs = std::collections::BTreeMap::new();
    let mut i = 0;
    while i < lines.len() {
        let n = lines[i + 4].parse::<usize>().unwrap();
        refs.insert(lines[i].to_string(), lines[i + 5..i + 5 + n].iter().map(|s| s.to_string()).collect::<Vec<_>>());
        i += 5 + n;
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut todo = vec![path.to_string()];
    while let Some(p) = todo.pop() {
        if seen.insert(p.clone()) {
            todo.extend(refs[&p].iter().cloned());
        }
    }
    seen.into_iter().collect()
}

/// Follows `path` inside the image mounted at `root` as the booted system would (absolute
/// link targets start at the image's root); returns the final path in the image.
fn resolve_inside(root: &Path, path: &str) -> std::path::PathBuf {
    let mut cur = std::path::PathBuf::from("/");
    let mut rest: std::collections::VecDeque<String> = path.split('/').map(str::to_string).collect();
    let mut hops = 0;
    while let Some(c) = rest.pop_front() {
        if c.is_empty() || c == "." {
            continue;
        }
        let next = cur.join(&c);
        let host = root.join(next.strip_prefix("/").unwrap());
        match fs::read_link(&host) {
            Ok(t) => {
                hops += 1;
                assert!(hops < 40, "{path}: symlink loop");
                let t = t.to_string_lossy().into_owned();
                if t.starts_with('/') {
                    cur = "/".into();
                }
                let mut v: std::collections::VecDeque<String> = t.split('/').map(str::to_string).collect();
                v.extend(rest);
                rest = v;
            }
            Err(_) => {
                assert!(host.exists(), "{path}: {} does not exist in the image", next.display());
                cur = next;
            }
        }
    }
    cur
}

fn build_full(corpus: &Path, out: &Path) -> std::path::PathBuf {
    let system = fs::read_to_string(corpus.join("closure-info/toplevel")).unwrap();
    let (channel, extra) = channel_and_extra(corpus);
    let extra = format!("[\"{extra}\"]");
    build(&[
        os("--channel"),
        os(&channel),
        os("--additional-paths"),
        os(&extra),
        os("--nix-path-registration"),
        os("true"),
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
        // The channel: root's channel profile as nixos-install makes it, resolving inside
        // the image, and a valid path whose requisites are its closure.
        let (channel, extra) = channel_and_extra(&corpus);
        let profiles = root.join("nix/var/nix/profiles/per-user/root");
        assert_eq!(fs::read_link(profiles.join("channels")).unwrap(), Path::new("channels-1-link"));
        assert_eq!(fs::read_link(profiles.join("channels-1-link")).unwrap(), Path::new(&channel));
        assert_eq!(
            fs::read_link(root.join("root/.nix-defexpr/channels")).unwrap(),
            Path::new("/nix/var/nix/profiles/per-user/root/channels")
        );
        assert_eq!(resolve_inside(&root, "/root/.nix-defexpr/channels"), Path::new(&channel));
        assert_eq!(resolve_inside(&root, "/nix/var/nix/profiles/system"), Path::new(&system));
        use std::os::unix::fs::PermissionsExt;
        for d in ["root", "root/.nix-defexpr"] {
            assert_eq!(fs::metadata(root.join(d)).unwrap().permissions().mode() & 0o7777, 0o700, "{d}");
        }
        let mut req: Vec<String> = nix(&root, &["-q", "--requisites", &channel]).lines().map(str::to_string).collect();
        req.sort();
        assert_eq!(req, closure_of(&corpus, &channel), "requisites of the channel");
        let gens = Command::new("nix-env")
            .args(["--store", &format!("local?root={}", root.display()), "-p"])
            .arg(profiles.join("channels"))
            .arg("--list-generations")
            .output()
            .unwrap();
        let gens_out = String::from_utf8_lossy(&gens.stdout);
        assert!(
            gens.status.success() && gens_out.contains("1 ") && gens_out.contains("(current)"),
            "nix-env --list-generations: {gens_out} {}",
            String::from_utf8_lossy(&gens.stderr)
        );
        // additionalPaths: valid, registered.
        nix(&root, &["--check-validity", &extra]);
        // /nix-path-registration is the closure's registration, and real Nix loads it into
        // a fresh store with the same result as the image's own database.
        assert_eq!(fs::read(root.join("nix-path-registration")).unwrap(), reg.as_bytes());
        assert_eq!(fs::metadata(root.join("nix-path-registration")).unwrap().permissions().mode() & 0o7777, 0o644);
        let fresh = t.path().join("fresh");
        fs::create_dir_all(&fresh).unwrap();
        let load = Command::new("nix-store")
            .args(["--store", &format!("local?root={}", fresh.display()), "--load-db"])
            .stdin(fs::File::open(root.join("nix-path-registration")).unwrap())
            .output()
            .unwrap();
        assert!(load.status.success(), "--load-db: {}", String::from_utf8_lossy(&load.stderr));
        assert_eq!(nix(&fresh, &["--dump-db"]), nix(&root, &["--dump-db"]), "loaded registration = image database");
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

#[test]
fn store_only_image_carries_the_registration() {
    let Some(corpus) = corpus("tiny") else { return };
    if skip_unless_root("loop mount of the store image") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    build(&[
        os("--only-nix-store"),
        os("true"),
        os("--closure-info"),
        corpus.join("closure-info").as_os_str(),
        os("--store-root"),
        corpus.join("root").as_os_str(),
        os("--nix-path-registration"),
        os("true"),
        os("--partition-table-type"),
        os("none"),
        os("--additional-space"),
        os("1M"),
        os("-o"),
        out.as_os_str(),
    ]);
    let m = Mount::new(&out.join("nixos.img"));
    assert_eq!(
        fs::read(m.path().join("nix-path-registration")).unwrap(),
        fs::read(corpus.join("closure-info/registration")).unwrap()
    );
}

/// A closureInfo with one path and its registration (nothing needs to exist on disk for
/// the errors below: they come before any store path is read).
fn small_closure(dir: &Path) -> std::path::PathBuf {
    let ci = dir.join("ci");
    fs::create_dir_all(&ci).unwrap();
    fs::write(ci.join("store-paths"), "/nix/store/00000000000000000000000000000000-a\n").unwrap();
    let reg = format!("/nix/store/00000000000000000000000000000000-a\nsha256:{}\n8\n\n0\n", "0".repeat(52));
    fs::write(ci.join("registration"), reg).unwrap();
    ci
}

#[test]
fn channel_and_additional_paths_errors() {
    let t = tempfile::tempdir().unwrap();
    let ci = small_closure(t.path());
    let out = t.path().join("out");
    let absent = "/nix/store/11111111111111111111111111111111-nixos-24.05";
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--closure-info", ci.to_str().unwrap(), "--channel", absent],
            &["channel '", absent, "is not in the closure", "rootPaths"],
        ),
        (
            &["--closure-info", ci.to_str().unwrap(), "--additional-paths", &format!("[\"{absent}\"]")],
            &["additionalPaths '", absent, "is not in the closure"],
        ),
        (&["--additional-paths", "[\"/etc/passwd\"]"], &["additionalPaths", "'/etc/passwd' is not a store path"]),
        (&["--additional-paths", &format!("[\"{absent}\"]")], &["additionalPaths", "needs closureInfo"]),
        (&["--channel", absent], &["channel", "needs closureInfo"]),
        (&["--copy-channel", "true"], &["copyChannel", "needs channel"]),
        (&["--nix-path-registration", "true"], &["nixPathRegistration", "needs closureInfo"]),
    ];
    for (args, expect) in cases {
        let mut a: Vec<&std::ffi::OsStr> = args.iter().map(|s| os(s)).collect();
        a.extend([os("--partition-table-type"), os("none"), os("-o"), out.as_os_str()]);
        let err = build_fails(&a);
        for e in *expect {
            assert!(err.contains(e), "{args:?}: error should mention {e:?}:\n{err}");
        }
        assert!(!out.exists(), "{args:?}: output left behind");
    }
}

/// The README's closureInfo recipe for machines without nixpkgs: `nix-store --query
/// --requisites` and `--dump-db` make a folder the build takes. Its paths are the ones
/// nixpkgs' closureInfo lists, and a store-only image made from it is byte for byte the image
/// made from nixpkgs' format (dump-db writes base16 hashes and derivers; neither is in a
/// store-only image).
#[test]
fn closure_info_from_nix_store_queries() {
    let Some(corpus) = corpus("tiny") else { return };
    let t = tempfile::tempdir().unwrap();
    let root = corpus.join("root");
    let top = fs::read_to_string(corpus.join("closure-info/toplevel")).unwrap();
    let ci = t.path().join("closure-info");
    fs::create_dir(&ci).unwrap();
    let paths = nix(&root, &["--query", "--requisites", top.trim()]);
    fs::write(ci.join("store-paths"), &paths).unwrap();
    let mut args = vec!["--dump-db"];
    args.extend(paths.lines());
    fs::write(ci.join("registration"), nix(&root, &args)).unwrap();

    let mut ours: Vec<&str> = paths.lines().collect();
    ours.sort_unstable();
    let nixpkgs_format = fs::read_to_string(corpus.join("closure-info/store-paths")).unwrap();
    let mut theirs: Vec<&str> = nixpkgs_format.lines().collect();
    theirs.sort_unstable();
    assert_eq!(ours, theirs, "nix-store --query --requisites and closureInfo list different paths");

    let image = |ci: &Path, out: &Path| {
        build(&[
            os("--closure-info"),
            ci.as_os_str(),
            os("--store-root"),
            root.as_os_str(),
            os("--only-nix-store"),
            os("true"),
            os("--partition-table-type"),
            os("none"),
            os("-o"),
            out.as_os_str(),
        ]);
        fs::read(out.join("nixos.img")).unwrap()
    };
    let a = image(&ci, &t.path().join("a"));
    let b = image(&corpus.join("closure-info"), &t.path().join("b"));
    e2fsck_clean(&t.path().join("a/nixos.img"));
    assert!(a == b, "the image from the nix-store recipe differs from the one from closureInfo");
}

/// A store-only image gets no boot loader even when the system is named (nixpkgs asserts
/// onlyNixStore → no boot loader), and inputs it cannot hold are refused by name.
#[test]
fn store_only_image_takes_no_boot_loader_and_refuses_other_roots() {
    let Some(corpus) = corpus("tiny") else { return };
    let t = tempfile::tempdir().unwrap();
    let top = fs::read_to_string(corpus.join("closure-info/toplevel")).unwrap();
    let (ci, root, out) = (corpus.join("closure-info"), corpus.join("root"), t.path().join("out"));
    let args = [
        os("--closure-info"),
        ci.as_os_str(),
        os("--store-root"),
        root.as_os_str(),
        os("--only-nix-store"),
        os("true"),
        os("--system"),
        os(top.trim()),
        os("--partition-table-type"),
        os("none"),
        os("-o"),
        out.as_os_str(),
    ];
    build(&args);
    let img = out.join("nixos.img");
    let ls = tool_in(t.path(), "debugfs", &["-R", "ls -p /", img.to_str().unwrap()]);
    assert!(!ls.contains("/boot/"), "a store-only image holds /boot:\n{ls}");
    let mut with_root_dir = args.to_vec();
    with_root_dir.extend([os("--root-dir"), t.path().as_os_str()]);
    let err = build_fails(&with_root_dir);
    assert!(err.contains("rootDir") && err.contains("onlyNixStore"), "{err}");
}
