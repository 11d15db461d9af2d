//! Root filesystems other than ext4 (docs/design.md §4.4). btrfs, erofs and squashfs are made by
//! their own mkfs tools from a staged copy of the tree, under fakeroot so owners and
//! device nodes need no root; xfs by `mkfs.xfs -p` from a prototype file (which states
//! owners itself) with its times set afterwards by `xfs_db`; vfat by our own FAT writer.
//! The tool writes a temporary file in the output folder, whose blocks are then copied
//! into the image at the root partition's offset (zero blocks stay holes).
//!
//! What each tool can and cannot do, as shipped in Debian 12 (btrfs-progs 6.2, xfsprogs
//! 6.1, erofs-utils 1.5, squashfs-tools 4.5.1):
//! - squashfs and erofs are byte-for-byte reproducible: fixed creation time, file times
//!   from the tree, entries sorted by the tool, and (erofs) the UUID given.
//! - xfs is reproducible once `xfs_db` has set every inode's times (mkfs.xfs stamps the
//!   build time into each inode and has no option against it).
//! - btrfs is reproducible when run as root, and only then: `mkfs.btrfs --rootdir` numbers
//!   inodes after the staging folder's inode numbers and lays out folders and data in the
//!   order `readdir` lists them, which only a fresh btrfs staging filesystem (a loop mount)
//!   makes a function of the tree ([`FreshBtrfs`]). It also draws the chunk tree, device
//!   and subvolume UUIDs at random, takes times from the clock, gives the root folder mode
//!   0755, leaves a field of every directory item uninitialized and keeps no nanoseconds;
//!   `btrfs_fixup` rewrites all of that afterwards.

mod btrfs_fixup;
mod erofs;
mod xfs;

use anyhow::{anyhow, bail, Context, Result};
use mdi_ident::{Seed, Uuid};
use mdi_sink::Sink;
use mdi_tree::stage::{stage, StageOptions, Staged};
use mdi_tree::{Kind, Timestamp, Tree};
use std::collections::{HashMap, HashSet};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

const MIB: u64 = 1 << 20;

/// How big the root filesystem is to be.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Size {
    /// As big as the content needs plus `extra` (read-write filesystems only), rounded up
    /// to `align`.
    Auto { extra: u64, align: u64 },
    /// Exactly the partition's size.
    Fixed(u64),
}

/// Everything but the tree.
pub(crate) struct Options<'a> {
    pub fs_type: &'a str,
    pub size: Size,
    pub uuid: Uuid,
    /// Where other identifiers come from (btrfs' device, chunk tree and subvolume UUIDs).
    pub seed: Seed,
    pub label: &'a str,
    /// SOURCE_DATE_EPOCH.
    pub time: i64,
    /// Folder for the temporary staging folder and filesystem file (the output folder).
    pub work_dir: &'a Path,
    /// Name prefix of that temporary folder.
    pub temp_prefix: &'a str,
    /// Bytes of the disk outside the root partition (to state a minimum diskSize).
    pub disk_overhead: u64,
    /// Byte offset of the partition (vfat's hidden sectors).
    pub offset: u64,
    pub cancel: Option<&'a AtomicBool>,
    pub progress: Option<&'a AtomicU64>,
}

/// What was made.
pub(crate) struct Report {
    /// The partition's size (the filesystem's, rounded up to `align` for read-only ones).
    pub part_bytes: u64,
    /// The filesystem's own size.
    pub fs_bytes: u64,
    pub uuid: Option<String>,
    pub label: Option<String>,
    /// The tool and its version.
    pub tool: String,
    /// Whether identical inputs give identical bytes (see the module comment).
    pub reproducible: bool,
    /// What the tool could not hold as asked.
    pub notes: Vec<String>,
}

/// A program a filesystem type needs and the Debian package that has it.
struct Tool {
    program: &'static str,
    package: &'static str,
}

fn tools_for(fs_type: &str) -> &'static [Tool] {
    const FAKEROOT: Tool = Tool { program: "fakeroot", package: "fakeroot" };
    match fs_type {
        "btrfs" => &[Tool { program: "mkfs.btrfs", package: "btrfs-progs" }, FAKEROOT],
        "xfs" => &[Tool { program: "mkfs.xfs", package: "xfsprogs" }, Tool { program: "xfs_db", package: "xfsprogs" }],
        "erofs" => &[Tool { program: "mkfs.erofs", package: "erofs-utils" }, FAKEROOT],
        "squashfs" => &[Tool { program: "mksquashfs", package: "squashfs-tools" }, FAKEROOT],
        _ => &[],
    }
}

/// The program's path on PATH, if it is there and executable.
fn find_program(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

fn require(fs_type: &str, t: &Tool) -> Result<()> {
    if find_program(t.program).is_none() {
        bail!(
            "fsType '{fs_type}' needs {}, which is not installed (not on PATH); install the Debian package {}",
            t.program,
            t.package
        );
    }
    Ok(())
}

/// Longest label each filesystem holds, in bytes.
fn label_limit(fs_type: &str) -> Option<usize> {
    match fs_type {
        "btrfs" => Some(255), // BTRFS_LABEL_SIZE 256 with its NUL
        "xfs" => Some(12),    // sb_fname[12]
        "erofs" => Some(16),  // volume_name[16]
        "vfat" => Some(11),   // BS_VolLab[11]
        _ => None,            // squashfs has no label
    }
}

/// Sizes the estimates work from.
#[derive(Default)]
struct Stats {
    entries: u64,
    /// Bytes of distinct files, each rounded up to 4 KiB.
    file_bytes: u64,
    /// The same counting every name of a hard-linked file (xfs stores copies).
    name_bytes: u64,
    name_len: u64,
    links: u64,
}

fn stats(tree: &Tree) -> Stats {
    let mut s = Stats::default();
    let mut seen = HashSet::new();
    tree.walk(|id| {
        let e = tree.get(id);
        s.entries += 1;
        s.name_len += e.name.len() as u64;
        if let Kind::File { size, .. } = e.kind {
            let r = size.next_multiple_of(4096);
            s.name_bytes += r;
            if e.link.is_none_or(|k| seen.insert(k)) {
                s.file_bytes += r;
            } else {
                s.links += 1;
            }
        }
    });
    s
}

/// With MDI_TRACE set, says when a step ended (as build() does).
fn trace(what: &str) {
    if std::env::var_os("MDI_TRACE").is_some() {
        eprintln!("[external fs] {what}");
    }
}

fn cancelled(opts: &Options) -> Result<()> {
    if opts.cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
        bail!("interrupted");
    }
    Ok(())
}

/// Runs a tool; a failure carries the end of its messages.
fn run(cmd: &mut Command, what: &str) -> Result<std::process::Output> {
    cmd.env("LC_ALL", "C").env("TZ", "UTC");
    let out = cmd.output().with_context(|| format!("cannot run {what}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let msg = String::from_utf8_lossy(&out.stdout);
        let text: Vec<&str> = err.lines().chain(msg.lines()).filter(|l| !l.trim().is_empty()).collect();
        let tail = text[text.len().saturating_sub(12)..].join("\n  ");
        bail!("{what} failed ({}):\n  {tail}", out.status);
    }
    Ok(out)
}

fn out_of_space(e: &anyhow::Error) -> bool {
    let s = format!("{e:#}");
    s.contains("No space left") || s.contains("ENOSPC") || s.contains("too small")
}

/// The tool's version line, for the manifest.
fn version(program: &str, arg: &str) -> String {
    Command::new(program)
        .arg(arg)
        .output()
        .ok()
        .and_then(|o| {
            let text = [o.stdout, o.stderr].concat();
            String::from_utf8_lossy(&text).lines().find(|l| !l.trim().is_empty()).map(|l| l.trim().to_string())
        })
        .unwrap_or_else(|| program.to_string())
}

/// Runs `program args` in the staged root under fakeroot, after the staging script.
fn fakeroot(staged: &Staged, program: &str, args: &[&std::ffi::OsStr]) -> Command {
    let mut c = Command::new("fakeroot");
    c.arg("--").arg("sh").arg(&staged.script).arg(program).args(args).current_dir(&staged.root);
    c
}

fn too_small(fs_type: &str, need: u64, have: u64, opts: &Options) -> anyhow::Error {
    anyhow!(
        "diskSize is too small: the {fs_type} root filesystem needs about {need} bytes but the disk leaves it {have} bytes; set diskSize to at least {} (MiB) or to \"auto\"",
        (need + opts.disk_overhead).div_ceil(MIB)
    )
}

/// Makes the root filesystem and writes it into `sink` (offset 0 = the partition's start).
pub(crate) fn write(tree: &Tree, opts: &Options, sink: &mut dyn Sink) -> Result<Report> {
    for t in tools_for(opts.fs_type) {
        require(opts.fs_type, t)?;
    }
    if let Some(max) = label_limit(opts.fs_type) {
        if opts.label.len() > max {
            bail!(
                "label '{}' is {} bytes, longer than {}'s {max}; give a shorter label",
                opts.label,
                opts.label.len(),
                opts.fs_type
            );
        }
    }
    let has_xattrs = tree.entries().iter().any(|e| !e.meta.xattrs.is_empty());
    if has_xattrs && opts.fs_type != "xfs" && opts.fs_type != "vfat" {
        require(opts.fs_type, &Tool { program: "setfattr", package: "attr" })?;
    }
    if opts.fs_type == "vfat" {
        return vfat(tree, opts, sink);
    }
    if opts.fs_type == "squashfs" {
        check_squashfs_xattrs(tree)?;
    }
    if opts.fs_type == "xfs" {
        xfs::check(tree)?;
    }
    let tmp =
        tempfile::Builder::new().prefix(opts.temp_prefix).suffix(".stage").tempdir_in(opts.work_dir).with_context(
            || format!("output folder '{}' is not writable; choose another with -o", opts.work_dir.display()),
        )?;
    let img = tmp.path().join("fs.img");
    let s = stats(tree);
    let mut notes = Vec::new();
    // Declared after `tmp`, so unmounted before it is removed.
    let mut staging_fs: Option<FreshBtrfs> = None;
    let (fs_bytes, tool, uuid, label, reproducible) = match opts.fs_type {
        "xfs" => {
            let r = xfs::make(tree, tmp.path(), &img, &s, opts)?;
            if s.links > 0 {
                notes.push(format!(
                    "xfsprogs' prototype files cannot express hard links: {} extra names of hard-linked files are separate copies",
                    s.links
                ));
            }
            (r, version("mkfs.xfs", "-V"), Some(opts.uuid.to_string()), Some(opts.label.to_string()), true)
        }
        other => {
            let mut stage_dir = tmp.path().to_path_buf();
            if other == "btrfs" {
                match FreshBtrfs::mount(tmp.path(), &s) {
                    Ok(m) => {
                        stage_dir = m.dir.clone();
                        staging_fs = Some(m);
                    }
                    Err(e) => notes.push(format!(
                        "the btrfs filesystem is not byte-reproducible: mkfs.btrfs copies the inode numbers and folder order of the staging folder, which are the host's unless it is a fresh btrfs, and that could not be mounted ({e:#})"
                    )),
                }
            }
            let staged = stage(
                tree,
                &stage_dir,
                &StageOptions { atime: Timestamp::from_secs(opts.time), cancel: opts.cancel, progress: opts.progress },
            )
            .map_err(|e| match e {
                mdi_tree::TreeError::Cancelled => anyhow!("interrupted"),
                e => anyhow::Error::new(e).context(format!("staging the tree for {other}")),
            })?;
            trace("tree staged");
            cancelled(opts)?;
            match other {
                "squashfs" => {
                    squashfs(&staged, &img, opts)?;
                    notes.push("squashfs has no label and no UUID".into());
                    (file_len(&img)?, version("mksquashfs", "-version"), None, None, true)
                }
                "erofs" => {
                    let v = erofs_make(tree, &staged, &img, opts)?;
                    (file_len(&img)?, v, Some(opts.uuid.to_string()), Some(opts.label.to_string()), true)
                }
                "btrfs" => {
                    let (b, n) = btrfs(tree, &staged, &img, &s, opts)?;
                    notes.extend(n);
                    if !tree.get(mdi_tree::ROOT).meta.xattrs.is_empty() {
                        notes.push(
                            "mkfs.btrfs (btrfs-progs 6.2) does not copy the root folder's extended attributes".into(),
                        );
                    }
                    (
                        b,
                        version("mkfs.btrfs", "--version"),
                        Some(opts.uuid.to_string()),
                        Some(opts.label.to_string()),
                        staging_fs.is_some(),
                    )
                }
                other => bail!("fsType '{other}' is not supported; use ext4, btrfs, xfs, erofs, squashfs or vfat"),
            }
        }
    };
    trace("filesystem made");
    cancelled(opts)?;
    let part_bytes = match opts.size {
        Size::Auto { align, .. } => fs_bytes.next_multiple_of(align),
        Size::Fixed(have) => {
            if fs_bytes > have {
                return Err(too_small(opts.fs_type, fs_bytes, have, opts));
            }
            have
        }
    };
    copy_into(&img, sink, opts)?;
    trace("filesystem copied into the image");
    drop(staging_fs);
    drop(tmp);
    trace("staging folder removed");
    Ok(Report { part_bytes, fs_bytes, uuid, label, tool, reproducible, notes })
}

fn file_len(p: &Path) -> Result<u64> {
    Ok(std::fs::metadata(p).with_context(|| format!("reading '{}'", p.display()))?.len())
}

/// Copies the data of a (sparse) file into the sink, skipping holes and zero blocks.
fn copy_into(img: &Path, sink: &mut dyn Sink, opts: &Options) -> Result<()> {
    let f = std::fs::File::open(img).with_context(|| format!("reading '{}'", img.display()))?;
    let len = f.metadata()?.len();
    let mut buf = vec![0u8; 4 << 20];
    let mut pos = 0u64;
    while pos < len {
        cancelled(opts)?;
        pos = match rustix::fs::seek(&f, rustix::fs::SeekFrom::Data(pos)) {
            Ok(d) => d.min(len),
            Err(rustix::io::Errno::NXIO) => len,
            Err(_) => pos,
        };
        if pos >= len {
            break;
        }
        let n = (buf.len() as u64).min(len - pos) as usize;
        f.read_exact_at(&mut buf[..n], pos).with_context(|| format!("reading '{}'", img.display()))?;
        // The sink drops all-zero 4 KiB grains itself (they stay holes).
        sink.write_at(pos, &buf[..n]).map_err(|e| {
            anyhow!(
                "cannot write the image in '{}': {e}; free space there or choose another output folder with -o",
                opts.work_dir.display()
            )
        })?;
        pos += n as u64;
    }
    Ok(())
}

/// squashfs keeps only these extended attribute namespaces (its xattr type field).
fn check_squashfs_xattrs(tree: &Tree) -> Result<()> {
    let mut bad = None;
    tree.walk(|id| {
        if bad.is_some() {
            return;
        }
        for (name, _) in &tree.get(id).meta.xattrs {
            if ![&b"user."[..], b"trusted.", b"security."].iter().any(|p| name.starts_with(p)) {
                bad = Some((tree.path_of(id), String::from_utf8_lossy(name).into_owned()));
                return;
            }
        }
    });
    if let Some((path, name)) = bad {
        bail!(
            "squashfs cannot hold the extended attribute '{name}' of '{path}' (it keeps only user., trusted. and security. attributes, so no POSIX ACLs); remove it or choose another fsType (erofs keeps it)"
        );
    }
    Ok(())
}

fn squashfs(staged: &Staged, img: &Path, opts: &Options) -> Result<()> {
    let mkfs_time = u32::try_from(opts.time).map_err(|_| {
        anyhow!("squashfs stores times as unsigned 32-bit seconds; sourceDateEpoch {} does not fit", opts.time)
    })?;
    let t = mkfs_time.to_string();
    let args: Vec<&std::ffi::OsStr> = vec![
        ".".as_ref(),
        img.as_os_str(),
        "-noappend".as_ref(),
        "-comp".as_ref(),
        "gzip".as_ref(),
        "-reproducible".as_ref(),
        "-mkfs-time".as_ref(),
        t.as_ref(),
        "-no-progress".as_ref(),
        "-quiet".as_ref(),
    ];
    // With SOURCE_DATE_EPOCH set, mksquashfs 4.5 would stamp it on every file instead of
    // keeping each file's (already clamped) time.
    run(fakeroot(staged, "mksquashfs", &args).env_remove("SOURCE_DATE_EPOCH"), "mksquashfs")?;
    Ok(())
}

/// Makes the erofs filesystem; returns the tool's version line.
fn erofs_make(tree: &Tree, staged: &Staged, img: &Path, opts: &Options) -> Result<String> {
    let u = format!("-U{}", opts.uuid);
    let args: Vec<&std::ffi::OsStr> = vec![u.as_ref(), img.as_os_str(), ".".as_ref()];
    // SOURCE_DATE_EPOCH makes mkfs.erofs use it as the build time and clamp file times to
    // it, keeping each file's own time (with nanoseconds); -T would overwrite them all.
    let out = run(fakeroot(staged, "mkfs.erofs", &args).env("SOURCE_DATE_EPOCH", opts.time.to_string()), "mkfs.erofs")
        .map_err(|e| {
            // erofs-utils 1.5 fails with ENOENT on a name of the full 255 bytes.
            let mut long = None;
            tree.walk(|id| {
                if long.is_none() && tree.get(id).name.len() >= 255 {
                    long = Some(tree.path_of(id));
                }
            });
            match long {
                Some(p) => e.context(format!(
                    "mkfs.erofs (erofs-utils 1.5) cannot store a file name of 255 bytes such as '{p}'; shorten it or choose another fsType"
                )),
                None => e,
            }
        })?;
    erofs::set_label(img, opts.label.as_bytes())?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.lines().find(|l| l.starts_with("mkfs.erofs ")).unwrap_or("mkfs.erofs").trim().to_string())
}

/// mkfs.btrfs refuses devices below this (btrfs-progs 6.2, DUP metadata).
const BTRFS_MIN: u64 = 114_294_784;

/// Makes the btrfs filesystem; returns its size and what to note.
///
/// `mkfs.btrfs --rootdir` (btrfs-progs 6.2) enlarges the file to its own estimate of what
/// the folder needs when the file is smaller, whatever `-b` says, and that estimate is
/// generous (1.1 GiB for 170 MB of files). The filesystem then fills the larger file, so
/// the free space is at least what was asked. When a fixed partition is smaller than that
/// estimate, `--shrink` makes the smallest filesystem that holds the files instead, and
/// the partition keeps the rest for `btrfs filesystem resize max` at boot.
fn btrfs(tree: &Tree, staged: &Staged, img: &Path, s: &Stats, opts: &Options) -> Result<(u64, Vec<String>)> {
    // Our own floor: files (written whole: btrfs-progs 6.2 makes no holes), metadata of
    // about 1 KiB per entry and names, DUP, plus the system and first chunks.
    let meta = s.entries * 1024 + s.name_len * 3 + s.file_bytes / 1024;
    let estimate = (s.file_bytes + s.file_bytes / 16 + 4 * meta + 96 * MIB).max(BTRFS_MIN);
    let (mut size, fixed) = match opts.size {
        Size::Auto { extra, align } => ((estimate + extra).next_multiple_of(align), None),
        Size::Fixed(b) => {
            if b < BTRFS_MIN {
                return Err(too_small("btrfs", BTRFS_MIN, b, opts));
            }
            (b, Some(b))
        }
    };
    let mut shrink = false;
    for attempt in 0.. {
        let _ = std::fs::remove_file(img);
        let f = std::fs::File::create(img).with_context(|| format!("creating '{}'", img.display()))?;
        f.set_len(size)?;
        drop(f);
        // Random UUIDs here, ours afterwards (see btrfs_fixup).
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "-q".as_ref(),
            "-f".as_ref(),
            "-K".as_ref(),
            "-L".as_ref(),
            opts.label.as_ref(),
            "--data".as_ref(),
            "single".as_ref(),
            "--metadata".as_ref(),
            "dup".as_ref(),
            "--nodesize".as_ref(),
            "16384".as_ref(),
            "--sectorsize".as_ref(),
            "4096".as_ref(),
            "--checksum".as_ref(),
            "crc32c".as_ref(),
            "--rootdir".as_ref(),
            ".".as_ref(),
        ];
        if shrink {
            args.push("--shrink".as_ref());
        }
        args.push(img.as_os_str());
        match run(fakeroot(staged, "mkfs.btrfs", &args).env("SOURCE_DATE_EPOCH", opts.time.to_string()), "mkfs.btrfs") {
            Ok(_) => {
                let made = file_len(img)?;
                let inodes = inodes_fixed(tree, staged)?;
                btrfs_fixup::fix(img, &btrfs_fixes(opts, &inodes))?;
                match fixed {
                    Some(have) if made > have && !shrink => shrink = true,
                    Some(have) if made > have => return Err(too_small("btrfs", made, have, opts)),
                    Some(have) if made < have => {
                        let note = format!(
                            "the btrfs filesystem is {made} bytes, smaller than its {have}-byte partition (btrfs-progs sized it for its files); grow it with 'btrfs filesystem resize max /'"
                        );
                        return Ok((made, vec![note]));
                    }
                    _ => return Ok((made, Vec::new())),
                }
            }
            Err(e) if out_of_space(&e) && (fixed.is_some() || attempt >= 4) => {
                return Err(too_small("btrfs", size + size / 2, size, opts).context(e));
            }
            // The estimate was short: grow by half (still a function of the tree only).
            Err(e) if out_of_space(&e) => size = (size + size / 2).next_multiple_of(MIB),
            Err(e) => return Err(e),
        }
        cancelled(opts)?;
    }
    unreachable!("the loop returns")
}

/// A fresh btrfs filesystem in a sparse file of the temporary folder, loop-mounted (as
/// root) on its `stage` folder for the tree to be staged in; unmounted on drop.
///
/// `mkfs.btrfs --rootdir` (6.2) numbers each inode after its staged file's inode number
/// and, within each folder, gives entries their DIR_INDEX numbers, and files their data
/// extents, in the order `readdir` lists the staged folder. On most filesystems both
/// depend on the machine: inode numbers come from a shared allocator, and ext4 lists a
/// folder in the order of a hash keyed by a per-filesystem random seed. On a fresh btrfs,
/// both follow the staging: inode numbers count up from 257 in creation order, and
/// `readdir` lists a folder in creation order (its DIR_INDEX order, an on-disk property,
/// not a kernel version's), and [`stage`] creates everything in the tree's walk order.
/// Renumbering in our post-pass instead would not be enough: data extents would still be
/// laid out in the staging filesystem's `readdir` order.
///
/// The mount is in the host's mount namespace (the staging runs on rayon's threads and
/// mkfs under fakeroot, which all have to see it); a build killed by SIGKILL leaves it
/// mounted on the temporary folder.
struct FreshBtrfs {
    dir: PathBuf,
}

impl FreshBtrfs {
    fn mount(tmp: &Path, s: &Stats) -> Result<FreshBtrfs> {
        if !rustix::process::geteuid().is_root() {
            bail!("mounting it needs root");
        }
        let img = tmp.join("stage.img");
        // Sparse: room for the files, their metadata (small files are inline) and slack.
        let bytes = 2 * s.file_bytes + s.entries * 16 * 1024 + 1024 * MIB;
        let f = std::fs::File::create(&img).with_context(|| format!("creating '{}'", img.display()))?;
        f.set_len(bytes)?;
        drop(f);
        run(Command::new("mkfs.btrfs").args(["-q", "-f", "-m", "single", "-d", "single"]).arg(&img), "mkfs.btrfs")?;
        let dir = tmp.join("stage");
        std::fs::create_dir(&dir).with_context(|| format!("creating '{}'", dir.display()))?;
        run(Command::new("mount").args(["-t", "btrfs", "-o", "loop,noatime"]).arg(&img).arg(&dir), "mount")?;
        Ok(FreshBtrfs { dir })
    }
}

impl Drop for FreshBtrfs {
    fn drop(&mut self) {
        // The loop device goes with the mount (mount -o loop sets autoclear).
        if run(Command::new("umount").arg(&self.dir), "umount").is_err() {
            let _ = run(Command::new("umount").arg("-l").arg(&self.dir), "umount -l");
        }
    }
}

/// What mkfs.btrfs did not take from the staged tree, by inode number: it numbers each
/// inode as its staged file's inode number plus 256 (BTRFS_FIRST_FREE_OBJECTID) and the
/// root folder 256.
fn inodes_fixed(tree: &Tree, staged: &Staged) -> Result<HashMap<u64, btrfs_fixup::InodeFix>> {
    let mut inodes = HashMap::new();
    for (id, rel) in mdi_tree::stage::relative_paths(tree) {
        let e = tree.get(id);
        let mut fix = btrfs_fixup::InodeFix { mtime: e.meta.mtime, ..Default::default() };
        let ino = if id == mdi_tree::ROOT {
            fix.perm = Some((e.meta.perm, e.meta.uid, e.meta.gid));
            btrfs_fixup::ROOT_DIR
        } else {
            let p = staged.root.join(std::ffi::OsStr::from_bytes(&rel));
            std::fs::symlink_metadata(&p).with_context(|| format!("'{}'", p.display()))?.ino() + 256
        };
        if let Kind::CharDev { major, minor } | Kind::BlockDev { major, minor } = e.kind {
            fix.rdev = Some((major, minor));
        }
        inodes.insert(ino, fix);
    }
    Ok(inodes)
}

/// The identifiers (from the spec's seed) and times the filesystem is to have.
fn btrfs_fixes<'a>(opts: &Options, inodes: &'a HashMap<u64, btrfs_fixup::InodeFix>) -> btrfs_fixup::Fixes<'a> {
    btrfs_fixup::Fixes {
        ids: btrfs_fixup::Identity {
            fsid: opts.uuid.0,
            dev_uuid: opts.seed.uuid(b"btrfs-dev-uuid").0,
            chunk_tree_uuid: opts.seed.uuid(b"btrfs-chunk-tree-uuid").0,
            subvol_uuid: opts.seed.uuid(b"btrfs-subvol-uuid").0,
        },
        time: opts.time,
        inodes,
    }
}

fn vfat(tree: &Tree, opts: &Options, sink: &mut dyn Sink) -> Result<Report> {
    let s = stats(tree);
    let u = opts.uuid.0;
    let fat_opts = mdi_fat::Options {
        volume_id: u32::from_be_bytes([u[0], u[1], u[2], u[3]]),
        label: opts.label.to_string(),
        time: opts.time,
        hidden_sectors: u32::try_from(opts.offset / 512).unwrap_or(u32::MAX),
    };
    // Each file and folder takes whole clusters (up to 32 KiB on FAT32).
    let estimate = s.file_bytes + s.entries * 32 * 1024 + 8 * MIB;
    let (mut bytes, extra, fixed) = match opts.size {
        Size::Auto { extra, align } => ((estimate + extra).next_multiple_of(align), extra, false),
        Size::Fixed(b) => (b, 0, true),
    };
    loop {
        match mdi_fat::write(tree, mdi_tree::ROOT, bytes, &fat_opts, sink) {
            Ok(r) => {
                return Ok(Report {
                    part_bytes: bytes,
                    fs_bytes: bytes,
                    uuid: Some(format!("{:04X}-{:04X}", fat_opts.volume_id >> 16, fat_opts.volume_id & 0xffff)),
                    label: Some(opts.label.to_uppercase()),
                    tool: format!(
                        "make-disk-image's FAT writer ({})",
                        if r.fat_type == mdi_fat::FatType::Fat32 { "FAT32" } else { "FAT16" }
                    ),
                    reproducible: true,
                    notes: vec!["FAT keeps no owners, modes, symlinks or special files".into()],
                });
            }
            // Planning fails before anything is written, so trying again is clean.
            Err(mdi_fat::Error::TooSmall { need, have }) if !fixed && need > have => {
                bytes = (need + extra).next_multiple_of(MIB);
            }
            Err(mdi_fat::Error::TooSmall { need, have }) => return Err(too_small("vfat", need, have, opts)),
            Err(e) => return Err(anyhow::Error::new(e).context("the vfat root filesystem")),
        }
    }
}
