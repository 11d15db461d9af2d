//! Shared test helpers: running the binary, the real oracles (e2fsck, the kernel via a
//! loop mount, getfattr/getfacl, debugfs) and the Nix store corpus.
#![allow(dead_code)]

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_make-disk-image")
}

pub fn is_root() -> bool {
    // SAFETY-free check: `id -u` is the portable way without libc calls in tests.
    Command::new("id").arg("-u").output().map(|o| o.stdout == b"0\n").unwrap_or(false)
}

pub use mdi_testkit::skip;

/// Says why a test does not run and returns true when it must skip.
pub fn skip_unless_root(what: &str) -> bool {
    if is_root() {
        return false;
    }
    skip(format_args!("{what}: needs root (loop mount); CI runs as root"));
    true
}

pub fn tool_exists(t: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {t}")).output().map(|o| o.status.success()).unwrap_or(false)
}

/// Runs `make-disk-image build` with args; panics with its stderr on failure.
pub fn build(args: &[&OsStr]) -> Output {
    let o = Command::new(bin()).arg("build").args(args).output().expect("run make-disk-image");
    assert!(
        o.status.success(),
        "build failed: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
    o
}

/// Runs `make-disk-image build` expecting failure; returns stderr.
pub fn build_fails(args: &[&OsStr]) -> String {
    let o = Command::new(bin()).arg("build").args(args).output().expect("run make-disk-image");
    assert!(!o.status.success(), "build unexpectedly succeeded: {}", String::from_utf8_lossy(&o.stdout));
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// `e2fsck -fn` must exit 0 and print nothing but its pass headers and the summary.
pub fn e2fsck_clean(img: &Path) {
    let o = Command::new("e2fsck").arg("-fn").arg(img).output().expect("e2fsck (apt-get install e2fsprogs)");
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    let unexpected: Vec<&str> = out
        .lines()
        .chain(err.lines())
        .filter(|l| !l.is_empty() && !l.starts_with("Pass ") && !l.starts_with("e2fsck ") && !is_summary(l))
        .collect();
    assert!(
        o.status.success() && unexpected.is_empty(),
        "e2fsck -fn {} complained (exit {:?}):\n{out}\n{err}",
        img.display(),
        o.status.code()
    );
}

fn is_summary(l: &str) -> bool {
    // "<label>: 20/32880 files (0.0% non-contiguous), 6766/137472 blocks"
    l.contains(" files (") && l.ends_with(" blocks")
}

/// A read-only loop mount that is undone on drop.
pub struct Mount {
    pub dir: tempfile::TempDir,
}

impl Mount {
    pub fn new(img: &Path) -> Mount {
        let dir = tempfile::tempdir().unwrap();
        let o = Command::new("mount").args(["-o", "ro,loop", "-t", "ext4"]).arg(img).arg(dir.path()).output().unwrap();
        assert!(
            o.status.success(),
            "kernel refused to mount {}: {}",
            img.display(),
            String::from_utf8_lossy(&o.stderr)
        );
        Mount { dir }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub kind: &'static str,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, i64),
    pub size: u64,
    pub rdev: u64,
    pub target: Option<Vec<u8>>,
    pub sha256: Option<String>,
    /// Non-zero 4 KiB blocks (files), which must be exactly the allocated data blocks.
    pub data_blocks: u64,
    pub st_blocks: u64,
    pub ino: (u64, u64),
}

fn kind_of(md: &fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = md.file_type();
    if t.is_dir() {
        "dir"
    } else if t.is_file() {
        "file"
    } else if t.is_symlink() {
        "symlink"
    } else if t.is_char_device() {
        "chr"
    } else if t.is_block_device() {
        "blk"
    } else if t.is_fifo() {
        "fifo"
    } else {
        "sock"
    }
}

fn file_digest(p: &Path) -> (String, u64) {
    use std::io::Read;
    let mut f = fs::File::open(p).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut nonzero = 0u64;
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        carry.extend_from_slice(&buf[..n]);
        let whole = carry.len() / 4096 * 4096;
        nonzero += carry[..whole].chunks(4096).filter(|c| c.iter().any(|&b| b != 0)).count() as u64;
        carry.drain(..whole);
    }
    if carry.iter().any(|&b| b != 0) {
        nonzero += 1;
    }
    (hex::encode(h.finalize()), nonzero)
}

/// Every entry below `root` (relative path → info), not following symlinks.
pub fn scan(root: &Path, skip: &[&str]) -> BTreeMap<Vec<u8>, Info> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = fs::symlink_metadata(&p).unwrap();
        let rel = p.strip_prefix(root).unwrap().as_os_str().as_bytes().to_vec();
        if skip.iter().any(|s| rel == s.as_bytes()) {
            continue;
        }
        let kind = kind_of(&md);
        let (sha256, data_blocks) = if kind == "file" {
            let (d, n) = file_digest(&p);
            (Some(d), n)
        } else {
            (None, 0)
        };
        out.insert(
            rel,
            Info {
                kind,
                perm: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                mtime: (md.mtime(), md.mtime_nsec()),
                size: if kind == "dir" { 0 } else { md.size() },
                rdev: md.rdev(),
                target: (kind == "symlink").then(|| fs::read_link(&p).unwrap().as_os_str().as_bytes().to_vec()),
                sha256,
                data_blocks,
                st_blocks: md.blocks(),
                ino: (md.dev(), md.ino()),
            },
        );
        if md.is_dir() {
            for e in fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    out
}

/// Groups of paths that are one inode (only groups of two or more).
fn link_groups(m: &BTreeMap<Vec<u8>, Info>) -> Vec<Vec<Vec<u8>>> {
    let mut by: BTreeMap<(u64, u64), Vec<Vec<u8>>> = BTreeMap::new();
    for (p, i) in m {
        if i.kind != "dir" {
            by.entry(i.ino).or_default().push(p.clone());
        }
    }
    let mut g: Vec<Vec<Vec<u8>>> = by.into_values().filter(|v| v.len() > 1).collect();
    g.sort();
    g
}

pub struct Expect {
    /// SOURCE_DATE_EPOCH the image was built with (mtimes clamp to it).
    pub sde: i64,
    /// Force owner (the Nix store is 0:0 whatever the source says).
    pub owner: Option<(u32, u32)>,
}

/// What a filesystem other than our ext4 cannot be held to.
#[derive(Clone, Copy, Debug)]
pub struct Leeway {
    /// Its allocation follows its own rules (no check that zero blocks are holes).
    pub any_allocation: bool,
    /// Times in whole seconds only (nanoseconds are dropped).
    pub whole_seconds: bool,
    /// Hard links may become copies (each name its own inode).
    pub links_as_copies: bool,
}

/// Compares a source tree with the mounted image, entry by entry.
pub fn compare_trees(src: &Path, img: &Path, img_skip: &[&str], exp: &Expect) {
    compare_trees_with(
        src,
        img,
        img_skip,
        exp,
        Leeway { any_allocation: false, whole_seconds: false, links_as_copies: false },
    )
}

/// [`compare_trees`] with what the image's filesystem cannot hold left out.
pub fn compare_trees_with(src: &Path, img: &Path, img_skip: &[&str], exp: &Expect, leeway: Leeway) {
    let a = scan(src, &[]);
    let b = scan(img, img_skip);
    let a_keys: Vec<_> = a.keys().collect();
    let b_keys: Vec<_> = b.keys().collect();
    if a_keys != b_keys {
        let only_a: Vec<String> =
            a.keys().filter(|k| !b.contains_key(*k)).take(10).map(|k| String::from_utf8_lossy(k).into()).collect();
        let only_b: Vec<String> =
            b.keys().filter(|k| !a.contains_key(*k)).take(10).map(|k| String::from_utf8_lossy(k).into()).collect();
        panic!("entry sets differ: only in source {only_a:?}, only in image {only_b:?}");
    }
    for (p, s) in &a {
        let i = &b[p];
        let name = String::from_utf8_lossy(p);
        assert_eq!(s.kind, i.kind, "{name}: type");
        if !p.is_empty() {
            assert_eq!(s.perm, i.perm, "{name}: mode");
        }
        let (uid, gid) = exp.owner.unwrap_or((s.uid, s.gid));
        if !p.is_empty() {
            assert_eq!((uid, gid), (i.uid, i.gid), "{name}: owner");
            let mut want = if s.mtime.0 >= exp.sde { (exp.sde, 0) } else { s.mtime };
            if leeway.whole_seconds {
                want.1 = 0;
            }
            assert_eq!(want, i.mtime, "{name}: mtime");
        }
        assert_eq!(s.size, i.size, "{name}: apparent size");
        assert_eq!(s.target, i.target, "{name}: symlink target");
        assert_eq!(s.sha256, i.sha256, "{name}: content");
        if s.kind == "chr" || s.kind == "blk" {
            assert_eq!(s.rdev, i.rdev, "{name}: device number");
        }
        if s.kind == "file" && !leeway.any_allocation {
            // Holes are decided by content: allocated = non-zero blocks (+ extent-tree
            // blocks for heavily fragmented files).
            let data_sectors = s.data_blocks * 8;
            assert!(
                i.st_blocks >= data_sectors && i.st_blocks <= data_sectors + 8 * (1 + s.data_blocks / 300),
                "{name}: allocated {} sectors for {} non-zero blocks",
                i.st_blocks,
                s.data_blocks
            );
        }
    }
    if !leeway.links_as_copies {
        assert_eq!(link_groups(&a), link_groups(&b), "hard-link groups differ");
    }
}

/// Output of a tool run in `dir` (for getfattr / getfacl comparisons).
pub fn tool_in(dir: &Path, cmd: &str, args: &[&str]) -> String {
    let o = Command::new(cmd).args(args).current_dir(dir).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The per-file blocks of getfattr/getfacl output, sorted (the tools print in readdir
/// order, which differs between filesystems).
fn blocks(out: String) -> Vec<String> {
    let mut v: Vec<String> = out.split("\n\n").filter(|b| !b.trim().is_empty()).map(str::to_string).collect();
    v.sort();
    v
}

/// getfattr and getfacl see the same attributes and ACLs in both trees.
pub fn compare_xattrs(src: &Path, img: &Path) {
    let fa = |d: &Path| blocks(tool_in(d, "getfattr", &["-R", "-d", "-m", "-", "-h", "-e", "hex", "."]));
    let acl = |d: &Path| blocks(tool_in(d, "getfacl", &["-R", "-P", "-n", "--skip-base", "."]));
    assert_eq!(fa(src), fa(img), "getfattr output differs");
    assert_eq!(acl(src), acl(img), "getfacl output differs");
}

/// The Nix store corpus (scripts/make-store-corpus, docs/corpus.md), built once per test
/// binary with real Nix; `MDI_CORPUS_DIR` names a folder to keep it (and the .deb cache) in.
/// Returns None (after saying why) where it cannot be built.
pub fn corpus(preset: &str) -> Option<PathBuf> {
    static DIRS: OnceLock<std::sync::Mutex<BTreeMap<String, Option<PathBuf>>>> = OnceLock::new();
    let m = DIRS.get_or_init(Default::default);
    let mut g = m.lock().unwrap();
    if let Some(v) = g.get(preset) {
        return v.clone();
    }
    let r = build_corpus(preset);
    g.insert(preset.to_string(), r.clone());
    r
}

fn build_corpus(preset: &str) -> Option<PathBuf> {
    if !is_root() || !tool_exists("nix-store") {
        skip(format_args!("corpus '{preset}': needs root and nix-bin (apt-get install nix-bin jq); CI has both"));
        return None;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let script = repo.join("scripts/make-store-corpus");
    let base = std::env::var_os("MDI_CORPUS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("corpus"));
    let out = base.join(preset);
    let o = Command::new(&script)
        .arg("--cache")
        .arg(base.join("debs"))
        .arg(&out)
        .arg(preset)
        .output()
        .expect("run make-store-corpus");
    assert!(o.status.success(), "make-store-corpus {preset} failed:\n{}", String::from_utf8_lossy(&o.stderr));
    Some(out)
}

/// The stand-in NixOS system that boots (tests/boot/make-boot-system.sh, built by real Nix)
/// in `CARGO_TARGET_TMPDIR/<name>`, or None after saying why it cannot be built here.
/// `tools` are the other programs the caller needs; `who` names the caller in SKIP lines.
pub fn boot_system(name: &str, tools: &[&str], who: &str) -> Option<PathBuf> {
    boot_system_for("x86_64", name, tools, who)
}

/// [`boot_system`] for another architecture (`aarch64`: Debian's arm64 packages, fetched
/// with apt-get download and unpacked, never installed).
pub fn boot_system_for(arch: &str, name: &str, tools: &[&str], who: &str) -> Option<PathBuf> {
    if !is_root() {
        skip(format_args!("{who}: needs root (the Nix chroot store's sandbox); CI runs as root"));
        return None;
    }
    for t in ["nix-build", "jq", "cpio"].iter().chain(tools) {
        if !tool_exists(t) {
            skip(format_args!("{who}: {t} is missing (scripts/test.sh installs it)"));
            return None;
        }
    }
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/boot/make-boot-system.sh");
    let o = Command::new(&script).arg(&out).arg(arch).output().expect("run make-boot-system.sh");
    assert!(o.status.success(), "make-boot-system.sh failed:\n{}", String::from_utf8_lossy(&o.stderr));
    Some(out)
}

/// Runs QEMU (`cmd`, with `-serial stdio`) until its serial console shows `want`, then stops
/// it; returns the console output. Panics with the output on a 240 s timeout or when the
/// guest stops without printing it. `image` names the disk in the message.
pub fn qemu_until(mut cmd: Command, want: &str, image: &Path) -> String {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("run qemu-system");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            if tx.send(String::from_utf8_lossy(&line).replace('\r', "")).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut log = String::new();
    let found = loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                log.push_str(&line);
                log.push('\n');
                if line.contains(want) {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(found, "no '{want}' on the serial console of {}:\n{log}", image.display());
    log
}

/// `e2fsck_clean` on the root filesystem of a build in `out` (raw format), whatever the
/// layout: the partition is copied out (sparsely) at the offset manifest.json gives.
pub fn e2fsck_root(out: &Path) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let m: serde_json::Value = serde_json::from_str(&fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    let root = m["filesystems"].as_array().unwrap().iter().find(|f| f["role"] == "root").unwrap().clone();
    let (off, size) = (root["offset"].as_u64().unwrap(), root["size"].as_u64().unwrap());
    let img = out.join(m["image"]["file"].as_str().unwrap());
    if off == 0 {
        return e2fsck_clean(&img);
    }
    let part = tempfile::NamedTempFile::new().unwrap();
    let mut src = fs::File::open(&img).unwrap();
    src.seek(SeekFrom::Start(off)).unwrap();
    let mut dst = part.reopen().unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    while done < size {
        let n = buf.len().min((size - done) as usize);
        src.read_exact(&mut buf[..n]).unwrap();
        if buf[..n].iter().any(|&b| b != 0) {
            dst.seek(SeekFrom::Start(done)).unwrap();
            dst.write_all(&buf[..n]).unwrap();
        }
        done += n as u64;
    }
    dst.set_len(size).unwrap();
    e2fsck_clean(part.path());
}

/// A path as the `&str` an argument list of `&str` wants.
pub fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `make-disk-image ARGS`: (exit code, stdout, stderr).
pub fn mdi(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(bin()).args(args).output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// `make-disk-image inspect IMAGE --json EXTRA…`, which must succeed, parsed.
pub fn inspect_json(img: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["inspect", p(img), "--json"];
    args.extend_from_slice(extra);
    let (code, out, err) = mdi(&args);
    assert_eq!(code, 0, "inspect {}: {err}", img.display());
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("inspect --json output: {e}\n{out}"))
}

/// Builds an image of a stand-in system of [`boot_system`] into `dir/out` with `extra`
/// arguments, with a marker file only its root holds (`/boot-marker`, which the stand-in's
/// initrd prints); returns the output folder and the marker text.
pub fn stand_in_image(sys: &Path, dir: &Path, extra: &[&str]) -> (PathBuf, String) {
    let marker = format!("marker {}", dir.file_name().unwrap().to_string_lossy());
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("marker"), &marker).unwrap();
    let contents = format!(r#"[{{"source":"{}","target":"/boot-marker"}}]"#, dir.join("marker").display());
    let toplevel = fs::read_to_string(sys.join("closure-info/toplevel")).unwrap();
    let (ci, root, out) = (sys.join("closure-info"), sys.join("root"), dir.join("out"));
    let mut args = vec![
        os("--closure-info"),
        ci.as_os_str(),
        os("--store-root"),
        root.as_os_str(),
        os("--system"),
        os(toplevel.trim()),
        os("--boot-timeout"),
        os("0"),
        os("--contents"),
        os(&contents),
        os("-o"),
        out.as_os_str(),
    ];
    args.extend(extra.iter().map(|a| os(a)));
    build(&args);
    (out, marker)
}
