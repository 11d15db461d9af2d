//! Fault injection (issue 13): the output folder's invariant at every failure point. A
//! failed or interrupted build leaves the folder exactly as it was (the previous build
//! intact, no `.partial`), interrupts act within a second in every phase, and a staging
//! folder left by a killed build is removed by the next one.
//!
//! Failure points are reached with the build's test hooks (`MDI_FAIL_AT=PHASE`,
//! `MDI_FAIL_AT=write:N` for a sink that fails after N writes, `MDI_PAUSE_AT=PHASE` to
//! park the build where a signal is to land) and with real signals at random moments.

mod common;
use common::*;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What a folder holds: relative path → (type, mode, mtime, content hash / link target).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut m = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd {
            let p = e.unwrap().path();
            let md = fs::symlink_metadata(&p).unwrap();
            let what = if md.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else if md.file_type().is_symlink() {
                format!("link {:?}", fs::read_link(&p).unwrap())
            } else {
                format!("file {}", hex::encode(Sha256::digest(fs::read(&p).unwrap())))
            };
            m.insert(
                p.strip_prefix(dir).unwrap().to_path_buf(),
                format!("{what} {:o} {}.{}", md.mode(), md.mtime(), md.mtime_nsec()),
            );
        }
    }
    m
}

/// A small tree and a folder holding a finished build of it (the "previous build").
struct Setup {
    _t: tempfile::TempDir,
    tree: PathBuf,
    big: PathBuf,
    out: PathBuf,
    before: BTreeMap<PathBuf, String>,
}

fn setup() -> Setup {
    let t = tempfile::tempdir().unwrap();
    let tree = t.path().join("tree");
    fs::create_dir_all(tree.join("etc")).unwrap();
    fs::write(tree.join("etc/motd"), "previous\n").unwrap();
    // A second tree that takes a moment to write (signals land mid-write).
    let big = t.path().join("big");
    fs::create_dir_all(&big).unwrap();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..8 {
        let data: Vec<u8> = (0..(16 << 20))
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        fs::write(big.join(format!("f{i}")), data).unwrap();
    }
    let out = t.path().join("out");
    build(&[os("--root-dir"), tree.as_os_str(), os("--partition-table-type"), os("none"), os("-o"), out.as_os_str()]);
    // Something of the user's own beside the build's files must survive too.
    fs::write(out.join("notes.txt"), "mine\n").unwrap();
    let before = snapshot(&out);
    Setup { _t: t, tree, big, out, before }
}

fn no_partial(out: &Path) {
    for e in fs::read_dir(out).into_iter().flatten() {
        let n = e.unwrap().file_name();
        assert!(!n.to_string_lossy().ends_with(".partial"), "left behind: {n:?}");
    }
}

fn run_with(env: &[(&str, &str)], args: &[&std::ffi::OsStr]) -> std::process::Output {
    let mut c = Command::new(bin());
    c.arg("build").args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

#[test]
fn failure_at_every_point_leaves_the_folder_as_it_was() {
    let s = setup();
    let base = |fmt: &'static str| -> Vec<std::ffi::OsString> {
        ["--root-dir", s.tree.to_str().unwrap(), "--partition-table-type", "none", "--format", fmt, "-o"]
            .iter()
            .map(Into::into)
            .chain([s.out.clone().into_os_string()])
            .collect()
    };
    let cases: &[(&str, &str, &[&str])] = &[
        ("validate", "raw", &[]),
        ("scan", "raw", &[]),
        ("write", "raw", &[]),
        ("write:0", "raw", &[]),
        ("write:3", "qcow2", &[]),
        ("write:12", "raw", &[]),
        ("compress", "qcow2-compressed", &[]),
        ("manifest", "raw", &[]),
        ("postVM", "raw", &[]),
        ("rename", "raw", &[]),
        // A real failing postVM that first changes what it was given.
        ("", "raw", &["--post-vm", "echo new > $out/extra; rm -f $diskImage; exit 3"]),
    ];
    for (at, fmt, extra) in cases {
        let mut args = base(fmt);
        args.extend(extra.iter().map(Into::into));
        let a: Vec<&std::ffi::OsStr> = args.iter().map(|x| x.as_os_str()).collect();
        let o = run_with(&[("MDI_FAIL_AT", at)], &a);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "MDI_FAIL_AT={at} {extra:?}: the build succeeded");
        assert_eq!(o.status.code(), Some(1), "MDI_FAIL_AT={at}: exit {:?}, {err}", o.status);
        assert_eq!(snapshot(&s.out), s.before, "MDI_FAIL_AT={at} {extra:?} changed the folder: {err}");
        no_partial(&s.out);
    }
    // A folder that did not exist does not exist after a failure.
    let fresh = s.out.with_file_name("fresh");
    let o = run_with(
        &[("MDI_FAIL_AT", "manifest")],
        &[os("--root-dir"), s.tree.as_os_str(), os("--partition-table-type"), os("none"), os("-o"), fresh.as_os_str()],
    );
    assert!(!o.status.success());
    assert!(!fresh.exists(), "a failed build left the output folder it made");
}

/// Starts a build that will wait at `pause` (if given; "script" is a postVM that waits).
fn start(s: &Setup, pause: Option<&str>, tree: &Path) -> Child {
    let mut c = Command::new(bin());
    c.args(["build", "--root-dir"]).arg(tree).args(["--partition-table-type", "none", "-o"]).arg(&s.out);
    match pause {
        Some("script") => {
            c.args(["--post-vm", "echo half > $out/made-by-script; sleep 30"]);
        }
        Some(p) => {
            c.env("MDI_PAUSE_AT", p);
        }
        None => {}
    }
    c.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap()
}

/// Sends `sig` and returns the exit status and how long the process took to exit.
fn signal(child: &mut Child, sig: i32) -> (std::process::ExitStatus, Duration) {
    let t0 = Instant::now();
    let r = Command::new("kill").arg(format!("-{sig}")).arg(child.id().to_string()).status().unwrap();
    assert!(r.success());
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return (st, t0.elapsed());
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "the build ignored signal {sig}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

const SIGNALS: [(i32, &str); 3] = [(2, "SIGINT"), (15, "SIGTERM"), (1, "SIGHUP")];

#[test]
fn signals_act_within_a_second_in_every_phase() {
    let s = setup();
    for phase in ["validate", "scan", "write", "manifest", "postVM", "script"] {
        for (sig, name) in SIGNALS {
            let mut child = start(&s, Some(phase), &s.tree);
            std::thread::sleep(Duration::from_millis(400));
            let (st, took) = signal(&mut child, sig);
            assert!(!st.success(), "{name} at {phase}: exit 0");
            assert!(took < Duration::from_secs(1), "{name} at {phase}: took {took:?}");
            assert_eq!(snapshot(&s.out), s.before, "{name} at {phase} changed the folder");
            no_partial(&s.out);
        }
    }
}

#[test]
fn signals_at_random_moments() {
    let s = setup();
    let mut before = s.before.clone();
    // A fixed seed: the moments vary over the run but the test is repeatable.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for round in 0..12 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let delay = Duration::from_millis(x % 1500);
        let (sig, name) = SIGNALS[(x >> 32) as usize % 3];
        // Every other round compresses (qcow2-compressed), so signals land there too.
        let mut child = if round % 2 == 1 {
            Command::new(bin())
                .args(["build", "--root-dir"])
                .arg(&s.big)
                .args(["--partition-table-type", "none", "--format", "qcow2-compressed", "-o"])
                .arg(&s.out)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        } else {
            start(&s, None, &s.big)
        };
        std::thread::sleep(delay);
        let (st, took) = signal(&mut child, sig);
        assert!(took < Duration::from_secs(1), "round {round}: {name} after {delay:?} took {took:?}");
        no_partial(&s.out);
        if st.success() {
            // The build committed before the signal: the folder holds the new build.
            let m: serde_json::Value =
                serde_json::from_str(&fs::read_to_string(s.out.join("manifest.json")).unwrap()).unwrap();
            let img = fs::read(s.out.join(m["image"]["file"].as_str().unwrap())).unwrap();
            assert_eq!(m["image"]["sha256"].as_str().unwrap(), hex::encode(Sha256::digest(&img)));
            before = snapshot(&s.out);
            continue;
        }
        assert_eq!(snapshot(&s.out), before, "round {round}: {name} after {delay:?} changed the folder");
    }
}

#[test]
fn stale_staging_folder_of_a_killed_build_is_removed() {
    let s = setup();
    let mut child = start(&s, Some("manifest"), &s.tree);
    std::thread::sleep(Duration::from_millis(400));
    let (st, _) = signal(&mut child, 9);
    assert!(!st.success());
    let stale: Vec<_> = fs::read_dir(&s.out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().ends_with(".partial"))
        .collect();
    assert_eq!(stale.len(), 1, "SIGKILL cannot clean up; its staging folder is expected: {stale:?}");
    // A leftover of an older version's image partial goes too.
    fs::write(s.out.join(".nixos.img.AbC123.partial"), "old").unwrap();
    build(&[
        os("--root-dir"),
        s.tree.as_os_str(),
        os("--partition-table-type"),
        os("none"),
        os("-o"),
        s.out.as_os_str(),
    ]);
    no_partial(&s.out);
    assert!(s.out.join("notes.txt").exists());
}

#[test]
fn a_running_build_keeps_its_staging_folder_from_another() {
    // A second build into the same folder must not take the first one's staging folder
    // for a stale one.
    let s = setup();
    let mut first = start(&s, Some("manifest"), &s.tree);
    std::thread::sleep(Duration::from_millis(400));
    let o = run_with(
        &[],
        &[os("--root-dir"), s.tree.as_os_str(), os("--partition-table-type"), os("none"), os("-o"), s.out.as_os_str()],
    );
    assert!(o.status.success());
    let partials = fs::read_dir(&s.out).unwrap().filter(|e| e.as_ref().unwrap().path().is_dir()).count();
    assert!(partials >= 2, "the running build's staging folder was removed"); // nix-support + it
    let _ = signal(&mut first, 15);
    no_partial(&s.out);
}
