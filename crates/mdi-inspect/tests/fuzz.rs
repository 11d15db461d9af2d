//! Fuzzing every reader with proptest: real small images (made in memory by this project's
//! writers, and by mkfs/qemu-img when they are installed) are mutated — bits flipped,
//! ranges overwritten with zeros, 0xFF or random bytes, words set to boundary values,
//! the image truncated — and each variant goes through the whole inspect walk: image
//! format, partition table, filesystem summary, every directory, every file read and
//! digested, xattrs, link targets, block ownership, `--ls` and the rendered report. Any
//! panic fails the test (proptest then shrinks it to a minimal mutation list); a case that
//! runs longer than [`STALL`] aborts the process with the case, so a hang cannot pass.
//!
//! Mutations land mostly where the pristine walk reads (metadata), so they reach deep.
//! Variants are overlays on the pristine bytes: no copy per case, so a case costs about
//! what its walk costs.
//!
//! `MDI_FUZZ_CASES` sets the cases per reader (default 100000 in release builds, 5000 in
//! debug builds); `MDI_FUZZ_SEED` (a number) changes the random stream, which is fixed by
//! default so that CI runs are reproducible. Crashes found become tests in `regressions`.

use mdi_inspect::fs::{self as ifs, WalkOptions};
use mdi_inspect::{layout, Disk};
use mdi_sink::{MemSink, ReadAt};
use mdi_tree::{FileData, Kind, Meta, Timestamp, Tree, ROOT};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use std::io;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A case running longer than this is a hang.
const STALL: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------- mutated images

/// A pristine image with the byte ranges its walk reads (where mutations go).
struct Seed {
    name: String,
    bytes: Arc<Vec<u8>>,
    hot: Vec<(u64, u64)>,
}

impl std::fmt::Debug for Seed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

/// One change to the image.
#[derive(Clone, Debug)]
enum Mutation {
    /// Flip bit `bit` of the byte at `at`.
    Flip { at: u64, bit: u8 },
    /// Overwrite `len` bytes at `at` with `fill` (None: the random bytes in `data`).
    Fill { at: u64, len: u8, fill: Option<u8>, data: u64 },
    /// Set the little- or big-endian word of `width` bytes at `at` to `value`.
    Word { at: u64, width: u8, value: u64, big: bool },
    /// Cut the image at `at`.
    Truncate { at: u64 },
}

/// Position selector: `sel` picks a hot range (or, one time in four, the whole image),
/// `off` a byte in it.
fn place(seed: &Seed, sel: u64, off: u64) -> u64 {
    let len = seed.bytes.len() as u64;
    if sel % 4 == 0 || seed.hot.is_empty() {
        return off % len;
    }
    let (s, n) = seed.hot[(sel / 4) as usize % seed.hot.len()];
    (s + off % n.max(1)).min(len - 1)
}

fn interesting(v: u64, k: u8) -> u64 {
    match k % 8 {
        0 => 0,
        1 => u64::MAX,
        2 => 1,
        3 => 1 << (v % 64),
        4 => (1 << (v % 64)) - 1,
        5 => v % 4096,
        6 => 0x8000_0000,
        _ => v,
    }
}

fn mutation(seed: Arc<Seed>) -> impl Strategy<Value = Mutation> {
    (0u8..16, any::<u64>(), any::<u64>(), any::<u64>(), any::<u8>()).prop_map(move |(k, sel, off, v, b)| {
        let at = place(&seed, sel, off);
        match k {
            0..=5 => Mutation::Flip { at, bit: b % 8 },
            6..=9 => {
                Mutation::Fill { at, len: b % 32 + 1, fill: [Some(0), Some(0xFF), None][(v % 3) as usize], data: v }
            }
            10..=14 => Mutation::Word {
                at,
                width: [1, 2, 4, 8][(b % 4) as usize],
                value: interesting(v, b / 4),
                big: b >= 128,
            },
            _ => Mutation::Truncate { at: off % (seed.bytes.len() as u64 + 1) },
        }
    })
}

/// The pristine image with the mutations applied, without copying it.
struct Mutated {
    base: Arc<Vec<u8>>,
    len: u64,
    patches: Vec<(u64, Vec<u8>)>,
}

impl Mutated {
    fn new(base: Arc<Vec<u8>>, ms: &[Mutation]) -> Mutated {
        let mut len = base.len() as u64;
        let mut patches = Vec::new();
        for m in ms {
            match *m {
                Mutation::Flip { at, bit } => patches.push((at, vec![base[at as usize] ^ (1 << bit)])),
                Mutation::Fill { at, len: n, fill, data } => {
                    let bytes = (0..n).map(|i| fill.unwrap_or((data >> ((i % 8) * 8)) as u8 ^ i)).collect();
                    patches.push((at, bytes));
                }
                Mutation::Word { at, width, value, big } => {
                    let b = if big {
                        value.to_be_bytes()[8 - width as usize..].to_vec()
                    } else {
                        value.to_le_bytes()[..width as usize].to_vec()
                    };
                    patches.push((at, b));
                }
                Mutation::Truncate { at } => len = len.min(at),
            }
        }
        Mutated { base, len, patches }
    }
}

impl ReadAt for Mutated {
    fn size(&self) -> u64 {
        self.len
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.len)
            .ok_or_else(|| mdi_sink::past_end(offset, buf.len(), self.len))?;
        buf.copy_from_slice(&self.base[offset as usize..end as usize]);
        for (at, p) in &self.patches {
            let (pa, pe) = (*at, at + p.len() as u64);
            if pe <= offset || pa >= end {
                continue;
            }
            let from = pa.max(offset);
            let to = pe.min(end);
            buf[(from - offset) as usize..(to - offset) as usize]
                .copy_from_slice(&p[(from - pa) as usize..(to - pa) as usize]);
        }
        Ok(())
    }
}

/// Records the ranges read (to find the hot bytes of a pristine image).
struct Tracer {
    inner: Arc<Vec<u8>>,
    log: Mutex<Vec<(u64, u64)>>,
}

impl ReadAt for Tracer {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.log.lock().unwrap().push((offset, buf.len() as u64));
        self.inner.read_at(offset, buf)
    }
}

// ---------------------------------------------------------------- the walk

/// Everything `inspect` and `inspect --ls` do, on the filesystems of a disk.
fn walk_disk(disk: &dyn ReadAt) -> usize {
    walk_disk_after(disk, false)
}

/// The same, without the summary when `inspect` already made it.
fn walk_disk_after(disk: &dyn ReadAt, summary_done: bool) -> usize {
    let Ok(l) = layout(disk) else { return 0 };
    let mut n = 0;
    for p in &l.parts {
        let w = p.window(disk);
        let Ok(Some(f)) = ifs::open(&w) else { continue };
        if !summary_done {
            let _ = f.info();
        }
        let walk = f.walk(WalkOptions { content: true, spans: true });
        n += walk.nodes.len();
        let _ = f.list(b"/");
        for node in walk.nodes.iter().take(4) {
            let _ = f.list(&node.path);
            // A damaged size can make a file of terabytes of holes: writing those zeros out
            // is not the reader's work.
            if node.ty == ifs::Type::File && node.size < 1 << 20 {
                let _ = f.cat(&node.path, &mut io::sink());
            }
        }
        let _ = f.cat(b"/no/such/file", &mut io::sink());
    }
    n
}

/// The walk through an image format reader first.
fn walk_image(name: &str, data: Arc<dyn ReadAt + Send + Sync>) -> usize {
    let Ok(img) = mdi_container::read::open_from(name, Box::new(data)) else { return 0 };
    let disk = Disk::from_image(name, img, 0);
    if let Ok(v) = mdi_inspect::inspect(&disk) {
        let _ = mdi_inspect::render(&v);
    }
    walk_disk_after(&disk, true)
}

// ---------------------------------------------------------------- the runner

fn cases() -> u32 {
    std::env::var("MDI_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(if cfg!(debug_assertions) {
        5_000
    } else {
        100_000
    })
}

/// Runs `cases()` mutated variants of the seeds through `exercise`.
fn fuzz(reader: &str, seeds: Vec<Seed>, exercise: fn(&str, Arc<Mutated>) -> usize) {
    let seeds: Vec<Arc<Seed>> = seeds.into_iter().map(Arc::new).collect();
    for s in &seeds {
        let pristine = exercise(&s.name, Arc::new(Mutated::new(s.bytes.clone(), &[])));
        // Seeds named "-empty" hold only their root by design.
        let least = if s.name.ends_with("-empty") { 1 } else { 2 };
        assert!(pristine >= least, "{reader}: the pristine seed {} shows only {pristine} entries", s.name);
    }
    let n = cases();
    let salt = std::env::var("MDI_FUZZ_SEED").ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&salt.to_le_bytes());
    key[8..8 + reader.len().min(24)].copy_from_slice(&reader.as_bytes()[..reader.len().min(24)]);
    let config = Config { cases: n, failure_persistence: None, max_shrink_iters: 2000, ..Config::default() };
    let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &key));

    // Watchdog: a case that stalls aborts the run with its description.
    let done = Arc::new(AtomicU64::new(0));
    let current = Arc::new(Mutex::new(String::new()));
    let finished = Arc::new(AtomicU64::new(0));
    {
        let (done, current, finished, reader) = (done.clone(), current.clone(), finished.clone(), reader.to_string());
        std::thread::spawn(move || {
            let (mut last, mut since) = (u64::MAX, Instant::now());
            while finished.load(Ordering::Relaxed) == 0 {
                std::thread::sleep(Duration::from_millis(200));
                let d = done.load(Ordering::Relaxed);
                if d != last {
                    (last, since) = (d, Instant::now());
                } else if since.elapsed() > STALL {
                    eprintln!("{reader}: a case ran for more than {STALL:?} (a hang): {}", current.lock().unwrap());
                    std::process::abort();
                }
            }
        });
    }
    let strategy = (0..seeds.len()).prop_flat_map(move |i| {
        let s = seeds[i].clone();
        (Just(s.clone()), proptest::collection::vec(mutation(s), 1..=4))
    });
    let start = Instant::now();
    let result = runner.run(&strategy, |(seed, ms)| {
        *current.lock().unwrap() = format!("seed {} mutations {ms:?}", seed.name);
        exercise(&seed.name, Arc::new(Mutated::new(seed.bytes.clone(), &ms)));
        done.fetch_add(1, Ordering::Relaxed);
        Ok(())
    });
    finished.store(1, Ordering::Relaxed);
    eprintln!("{reader}: {n} cases in {:.1} s", start.elapsed().as_secs_f64());
    if let Err(e) = result {
        panic!("{reader}: {e}");
    }
}

/// Traces the pristine walk to find the hot ranges.
fn seed(name: &str, bytes: Vec<u8>, image_format: bool) -> Seed {
    let bytes = Arc::new(bytes);
    let t = Arc::new(Tracer { inner: bytes.clone(), log: Mutex::new(Vec::new()) });
    if image_format {
        walk_image(name, t.clone());
    } else {
        walk_disk(&*t);
    }
    let log = std::mem::take(&mut *t.log.lock().unwrap());
    // Each read is one range (large data reads count once, cut to 4 KiB): mutations land
    // on metadata as often as on data.
    let mut hot: Vec<(u64, u64)> = log.into_iter().map(|(o, n)| (o, n.min(4096))).collect();
    hot.sort_unstable();
    hot.dedup();
    Seed { name: name.into(), bytes, hot }
}

fn exercise_disk(_: &str, m: Arc<Mutated>) -> usize {
    walk_disk(&*m)
}

fn exercise_image(name: &str, m: Arc<Mutated>) -> usize {
    walk_image(name, m)
}

// ---------------------------------------------------------------- seed images

fn t0() -> Timestamp {
    Timestamp { secs: 1_700_000_000, nsecs: 0 }
}

fn file(d: &[u8]) -> Kind {
    Kind::File { data: FileData::Inline(Arc::from(d)), size: d.len() as u64 }
}

fn dir() -> Kind {
    Kind::Dir { children: vec![] }
}

/// A small tree with every kind of entry ext4 holds.
fn ext4_tree() -> Tree {
    let mut t = Tree::new(Meta::root(0o755, t0()));
    let m = |perm| Meta { perm, uid: 1000, gid: 100, mtime: t0(), xattrs: Vec::new() };
    let etc = t.add(ROOT, b"etc", m(0o755), dir(), None).unwrap();
    let mut x = m(0o644);
    x.xattrs = vec![(b"user.small".to_vec(), b"v".to_vec())];
    t.add(etc, b"hostname", x, file(b"fuzz\n"), None).unwrap();
    let mut x = m(0o4755);
    x.xattrs = vec![(b"user.big".to_vec(), vec![7; 300]), (b"security.capability".to_vec(), vec![1; 20])];
    let big: Vec<u8> = (0..13_000u32).map(|i| (i * 7 % 251) as u8).collect();
    t.add(etc, b"big", x, file(&big), None).unwrap();
    let mut sparse = vec![0u8; 5 * 4096];
    sparse[3 * 4096 + 5] = 1;
    t.add(etc, b"sparse", m(0o600), file(&sparse), Some((1, 1))).unwrap();
    t.add(ROOT, b"hard", m(0o600), file(&sparse), Some((1, 1))).unwrap();
    t.add(ROOT, b"fast", m(0o777), Kind::Symlink { target: b"etc/hostname".to_vec() }, None).unwrap();
    t.add(ROOT, b"slow", m(0o777), Kind::Symlink { target: vec![b'y'; 200] }, None).unwrap();
    t.add(ROOT, b"null", m(0o666), Kind::CharDev { major: 1, minor: 3 }, None).unwrap();
    t.add(ROOT, b"fifo", m(0o644), Kind::Fifo, None).unwrap();
    let many = t.add(ROOT, b"many", m(0o755), dir(), None).unwrap();
    for i in 0..90 {
        t.add(
            many,
            format!("a-rather-long-entry-name-for-the-htree-{i:03}").as_bytes(),
            m(0o644),
            file(&[i as u8]),
            None,
        )
        .unwrap();
    }
    t.finish();
    t
}

fn ext4_image() -> Vec<u8> {
    let opts = mdi_ext4::Options {
        size: mdi_ext4::SizeRequest::Auto { extra_bytes: 0, align_bytes: 1 << 20 },
        uuid: [3; 16],
        hash_seed: [5; 16],
        label: b"fuzz".to_vec(),
        time: 1_700_000_000,
        cancel: None,
        progress: None,
    };
    let mut s = MemSink::default();
    let r = mdi_ext4::write(&ext4_tree(), &opts, &mut s).unwrap();
    s.0.resize(r.bytes as usize, 0);
    s.0
}

fn fat_tree() -> Tree {
    let mut t = Tree::new(Meta::root(0o755, t0()));
    let efi = t.add(ROOT, b"EFI", Meta::root(0o755, t0()), dir(), None).unwrap();
    let boot = t.add(efi, b"BOOT", Meta::root(0o755, t0()), dir(), None).unwrap();
    let big: Vec<u8> = (0..9000u32).map(|i| (i % 249) as u8).collect();
    t.add(boot, b"BOOTX64.EFI", Meta::root(0o644, t0()), file(&big), None).unwrap();
    let entries = t.add(ROOT, b"loader", Meta::root(0o755, t0()), dir(), None).unwrap();
    for i in 0..12 {
        t.add(
            entries,
            format!("nixos-generation-{i}.conf").as_bytes(),
            Meta::root(0o644, t0()),
            file(b"title x\n"),
            None,
        )
        .unwrap();
    }
    t.add(ROOT, b"a long name with spaces.txt", Meta::root(0o644, t0()), file(b"x"), None).unwrap();
    t.finish();
    t
}

fn fat_image(bytes: u64) -> Vec<u8> {
    let opts = mdi_fat::Options { volume_id: 0xC0FF_EE00, label: "ESP".into(), time: 1_700_000_000, hidden_sectors: 0 };
    let mut s = MemSink::default();
    mdi_fat::write(&fat_tree(), ROOT, bytes, &opts, &mut s).unwrap();
    s.0.resize(bytes as usize, 0);
    s.0
}

const MIB: u64 = 1 << 20;

/// A GPT disk with an ESP (FAT16) and a second small FAT partition (`two`), or just the
/// ESP.
fn gpt_disk(two: bool) -> Vec<u8> {
    use mdi_ident::Uuid;
    let sectors = if two { 12 * MIB / 512 } else { 7 * MIB / 512 };
    let part = |first: u64, last: u64, name: &str, n: u8| mdi_ptable::GptPartition {
        type_guid: Uuid::parse(mdi_ptable::types::ESP).unwrap(),
        guid: Uuid([n; 16]),
        first,
        last,
        attributes: 0,
        name: name.into(),
    };
    let g = mdi_ptable::Gpt {
        disk_guid: Uuid([9; 16]),
        disk_sectors: sectors,
        partitions: if two {
            vec![part(2048, 2048 + 5 * 2048 - 1, "ESP", 1), part(6 * 2048, 11 * 2048 - 1, "BOOT", 2)]
        } else {
            vec![part(2048, 2048 + 5 * 2048 - 1, "ESP", 1)]
        },
    };
    let mut d = vec![0u8; (sectors * 512) as usize];
    d[..512].copy_from_slice(&mdi_ptable::Mbr::protective(sectors).encode(&[]));
    for (off, b) in g.encode() {
        d[off as usize..off as usize + b.len()].copy_from_slice(&b);
    }
    let fat = fat_image(5 * MIB);
    d[MIB as usize..MIB as usize + fat.len()].copy_from_slice(&fat);
    if two {
        d[6 * MIB as usize..6 * MIB as usize + fat.len()].copy_from_slice(&fat);
    }
    d
}

/// An MBR disk: a FAT16 primary and an extended partition with two logical ones.
fn mbr_disk() -> Vec<u8> {
    let mut d = vec![0u8; (14 * MIB) as usize];
    let m = mdi_ptable::Mbr {
        signature: 0x1234_5678,
        partitions: vec![
            mdi_ptable::MbrPartition { bootable: true, kind: 0x0E, start: 2048, sectors: 5 * 2048 },
            mdi_ptable::MbrPartition { bootable: false, kind: 0x05, start: 6 * 2048, sectors: 8 * 2048 },
        ],
    };
    d[..512].copy_from_slice(&m.encode(&[]));
    let fat = fat_image(5 * MIB);
    d[MIB as usize..MIB as usize + fat.len()].copy_from_slice(&fat);
    // EBRs at 6 MiB and 6.5 MiB; logical partitions 1 sector after each.
    for (k, at) in [(0u64, 6 * 2048u64), (1, 6 * 2048 + 1024)] {
        let e = &mut d[(at * 512) as usize..(at * 512 + 512) as usize];
        e[446 + 4] = 0x83;
        e[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
        e[446 + 12..446 + 16].copy_from_slice(&1000u32.to_le_bytes());
        if k == 0 {
            e[462 + 4] = 0x05;
            e[462 + 8..462 + 12].copy_from_slice(&1024u32.to_le_bytes());
            e[462 + 12..462 + 16].copy_from_slice(&1024u32.to_le_bytes());
        }
        e[510] = 0x55;
        e[511] = 0xAA;
    }
    d
}

fn tool(name: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {name}")).output().is_ok_and(|o| o.status.success())
}

/// Images made by the real tools, when installed: mkfs.ext2/ext4 with other geometries,
/// mkfs.fat's FAT12.
fn tool_images(tag: &str) -> Vec<(String, Vec<u8>)> {
    let mut v = Vec::new();
    let dir = std::env::temp_dir().join(format!("mdi-fuzz-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("tree/sub")).unwrap();
    std::fs::write(dir.join("tree/a"), vec![b'a'; 30_000]).unwrap();
    std::fs::write(dir.join("tree/sub/b"), b"b").unwrap();
    let _ = std::os::unix::fs::symlink("sub/b", dir.join("tree/l"));
    let tree = dir.join("tree");
    if tool("mkfs.ext4") {
        for (name, args) in [
            ("mkfs-ext2-1k", &["-t", "ext2", "-b", "1024", "-I", "128"][..]),
            ("mkfs-ext4-1k", &["-t", "ext4", "-b", "1024", "-O", "^64bit,^metadata_csum", "-J", "size=1"][..]),
            // Issue 17: bigalloc with 1 KiB blocks (group 0 one block later) and inline data.
            ("mkfs-ext4-bigalloc-1k", &["-t", "ext4", "-b", "1024", "-O", "bigalloc", "-C", "16384"][..]),
            ("mkfs-ext4-inline", &["-t", "ext4", "-O", "inline_data", "-I", "1024"][..]),
        ] {
            let img = dir.join(name);
            let ok = Command::new("mkfs.ext4")
                .args(["-q", "-F", "-E", "root_owner=0:0", "-N", "64", "-d"])
                .arg(&tree)
                .args(args)
                .arg(&img)
                .arg("4M")
                .env("E2FSPROGS_FAKE_TIME", "1700000000")
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                v.push((name.to_string(), std::fs::read(&img).unwrap()));
            }
        }
    }
    if tool("mkfs.fat") && tool("mcopy") {
        let img = dir.join("fat12");
        let ok = Command::new("mkfs.fat")
            .args(["-C", "-F", "12", "-i", "12345678", "-n", "SMALL"])
            .arg(&img)
            .arg("1024")
            .output()
            .is_ok_and(|o| o.status.success())
            && Command::new("mcopy")
                .env("MTOOLS_SKIP_CHECK", "1")
                .args(["-s", "-i"])
                .arg(&img)
                .arg(tree.join("a"))
                .arg(tree.join("sub"))
                .arg("::/")
                .output()
                .is_ok_and(|o| o.status.success());
        if ok {
            v.push(("mkfs-fat12".into(), std::fs::read(&img).unwrap()));
        }
        // Issue 17: a short name in CP850 (as mtools writes it), and FAT32 by its BPB with
        // fewer than 65525 clusters.
        let cp = dir.join("ÜBER.TXT");
        std::fs::write(&cp, b"cp850").unwrap();
        let img = dir.join("fat-cp850");
        let ok = Command::new("mkfs.fat").arg("-C").arg(&img).arg("1024").output().is_ok_and(|o| o.status.success())
            && Command::new("mcopy")
                .env("MTOOLS_SKIP_CHECK", "1")
                .env("LC_ALL", "C.UTF-8")
                .args(["-s", "-i"])
                .arg(&img)
                .arg(&cp)
                .arg(tree.join("sub"))
                .arg("::/")
                .output()
                .is_ok_and(|o| o.status.success());
        if ok {
            v.push(("mkfs-fat-cp850".into(), std::fs::read(&img).unwrap()));
        }
        let img = dir.join("fat32-small");
        let ok = Command::new("mkfs.fat")
            .args(["-C", "-F", "32", "-s", "8", "-n", "SMALL32"])
            .arg(&img)
            .arg("34000")
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            // mtools cannot write to it (it takes it for FAT16): the root is all there is.
            v.push(("mkfs-fat32-small-empty".into(), std::fs::read(&img).unwrap()));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    v
}

fn disk_seeds(list: Vec<(&str, Vec<u8>)>) -> Vec<Seed> {
    list.into_iter().map(|(n, b)| seed(n, b, false)).collect()
}

/// The GPT disk in image format `fmt`, by this project's writers and by qemu-img.
fn container_seeds(fmt: &str) -> Vec<Seed> {
    use mdi_container::{Compression, Container, Qcow2, Vdi, Vhd, Vhdx, VhdxIds, Vmdk, VmdkKind};
    static DISK: OnceLock<Vec<u8>> = OnceLock::new();
    let disk = DISK.get_or_init(|| gpt_disk(false));
    let dir = std::env::temp_dir().join(format!("mdi-fuzz-{fmt}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut out = Vec::new();
    type Make = Box<dyn Fn(std::fs::File) -> Box<dyn Container>>;
    let ours: Vec<(&str, Make)> = match fmt {
        "qcow2" => vec![
            ("ours.qcow2", Box::new(|f| Box::new(Qcow2::new(f, Compression::None)))),
            ("ours-deflate.qcow2", Box::new(|f| Box::new(Qcow2::new(f, Compression::Deflate)))),
            ("ours-zstd.qcow2", Box::new(|f| Box::new(Qcow2::new(f, Compression::Zstd)))),
        ],
        "vdi" => vec![("ours.vdi", Box::new(|f| Box::new(Vdi::new(f, [1; 16], [2; 16]))))],
        "vpc" => vec![
            ("ours.vhd", Box::new(|f| Box::new(Vhd::new(f, false, 1_700_000_000, [3; 16])))),
            ("ours-fixed.vhd", Box::new(|f| Box::new(Vhd::new(f, true, 1_700_000_000, [3; 16])))),
        ],
        "vmdk" => vec![
            ("ours.vmdk", Box::new(|f| Box::new(Vmdk::new(f, VmdkKind::MonolithicSparse, 7, "ours.vmdk")))),
            (
                "ours-stream.vmdk",
                Box::new(|f| Box::new(Vmdk::new(f, VmdkKind::StreamOptimized, 7, "ours-stream.vmdk"))),
            ),
        ],
        "vhdx" => vec![(
            "ours.vhdx",
            Box::new(|f| {
                Box::new(Vhdx::new(f, VhdxIds { file_write: [4; 16], data_write: [5; 16], virtual_disk_id: [6; 16] }))
            }),
        )],
        _ => unreachable!(),
    };
    for (name, make) in ours {
        let path = dir.join(name);
        let f = std::fs::File::options().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        let mut c = make(f);
        c.write_at(0, disk).unwrap();
        drop(c.finish(disk.len() as u64).unwrap());
        out.push(seed(name, std::fs::read(&path).unwrap(), true));
    }
    if tool("qemu-img") {
        let raw = dir.join("disk.raw");
        std::fs::write(&raw, disk).unwrap();
        let variants: &[(&str, &[&str])] = match fmt {
            "qcow2" => &[("qemu.qcow2", &["-o", "cluster_size=4k"]), ("qemu-c.qcow2", &["-c", "-o", "compat=0.10"])],
            "vdi" => &[("qemu.vdi", &[])],
            "vpc" => &[("qemu.vhd", &[]), ("qemu-fixed.vhd", &["-o", "subformat=fixed"])],
            "vmdk" => &[("qemu.vmdk", &[]), ("qemu-stream.vmdk", &["-o", "subformat=streamOptimized"])],
            "vhdx" => &[("qemu.vhdx", &["-o", "block_size=1M"])],
            _ => &[],
        };
        for (name, extra) in variants {
            let path = dir.join(name);
            let ok = Command::new("qemu-img")
                .args(["convert", "-f", "raw", "-O", fmt])
                .args(*extra)
                .arg(&raw)
                .arg(&path)
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                out.push(seed(name, std::fs::read(&path).unwrap(), true));
            }
        }
    } else {
        eprintln!("note: qemu-img not installed; fuzzing the {fmt} reader on this project's images only");
    }
    let _ = std::fs::remove_dir_all(&dir);
    out
}

// ---------------------------------------------------------------- the tests

#[test]
fn fuzz_ext4() {
    let mut seeds = vec![seed("ours.ext4", ext4_image(), false)];
    for (n, b) in tool_images("ext").into_iter().filter(|(n, _)| n.contains("ext")) {
        seeds.push(seed(&n, b, false));
    }
    fuzz("ext4", seeds, exercise_disk);
}

#[test]
fn fuzz_fat() {
    let mut seeds = disk_seeds(vec![("fat16", fat_image(5 * MIB)), ("fat32", fat_image(34 * MIB))]);
    for (n, b) in tool_images("fat").into_iter().filter(|(n, _)| n.contains("fat")) {
        seeds.push(seed(&n, b, false));
    }
    fuzz("fat", seeds, exercise_disk);
}

#[test]
fn fuzz_partition_tables() {
    let mut seeds = disk_seeds(vec![("gpt", gpt_disk(true)), ("mbr", mbr_disk())]);
    if let Some(d) = gpt_4kn_disk() {
        seeds.push(seed("fdisk-gpt-4096", d, false));
    }
    fuzz("ptable", seeds, exercise_disk);
}

/// Issue 17: a GPT on 4096-byte sectors by `fdisk -b 4096`, with a FAT volume in its first
/// partition (so that the pristine walk finds entries).
fn gpt_4kn_disk() -> Option<Vec<u8>> {
    use std::io::Write;
    if !tool("fdisk") {
        return None;
    }
    let dir = std::env::temp_dir().join(format!("mdi-fuzz-4kn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let img = dir.join("4kn.img");
    std::fs::File::create(&img).unwrap().set_len(8 * MIB).unwrap();
    let mut c = Command::new("fdisk")
        .arg("-b")
        .arg("4096")
        .arg(&img)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    c.stdin.take()?.write_all(b"g\nn\n1\n256\n+6M\nw\n").ok()?;
    let ok = c.wait().is_ok_and(|s| s.success());
    let mut d = std::fs::read(&img).ok()?;
    let _ = std::fs::remove_dir_all(&dir);
    if !ok {
        return None;
    }
    let fat = fat_image(5 * MIB);
    d[256 * 4096..256 * 4096 + fat.len()].copy_from_slice(&fat);
    Some(d)
}

#[test]
fn fuzz_qcow2() {
    fuzz("qcow2", container_seeds("qcow2"), exercise_image);
}

#[test]
fn fuzz_vdi() {
    fuzz("vdi", container_seeds("vdi"), exercise_image);
}

#[test]
fn fuzz_vhd() {
    let mut seeds = container_seeds("vpc");
    // Issue 17: a fixed VHD as Virtual PC makes it (creator "vpc ", sized by its CHS
    // geometry): this project's fixed VHD with the creator and geometry changed.
    if let Some(s) = seeds.iter().find(|s| s.name == "ours-fixed.vhd") {
        let mut b = (*s.bytes).clone();
        let f = b.len() - 512;
        b[f + 28..f + 32].copy_from_slice(b"vpc ");
        let sectors = ((b.len() - 512) / 512) as u64;
        let cyls = (sectors / (16 * 63)).min(65535) as u16;
        b[f + 56..f + 58].copy_from_slice(&cyls.to_be_bytes());
        b[f + 58] = 16;
        b[f + 59] = 63;
        b[f + 64..f + 68].fill(0);
        let sum = !b[f..f + 512].iter().map(|&x| u32::from(x)).sum::<u32>();
        b[f + 64..f + 68].copy_from_slice(&sum.to_be_bytes());
        seeds.push(seed("virtualpc-fixed.vhd", b, true));
    }
    fuzz("vhd", seeds, exercise_image);
}

/// Issue 17: btrfs, XFS, EROFS and squashfs superblocks (the first 128 KiB of images made
/// by their mkfs tools, which hold every superblock field read).
#[test]
fn fuzz_other_filesystems() {
    let dir = std::env::temp_dir().join(format!("mdi-fuzz-otherfs-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("tree")).unwrap();
    std::fs::write(dir.join("tree/f"), b"content").unwrap();
    let mut seeds = Vec::new();
    let made: [(&str, u64, &[&str]); 4] = [
        ("mkfs.btrfs", 128 * MIB, &["-q", "-L", "B"]),
        ("mkfs.xfs", 320 * MIB, &["-q", "-L", "X"]),
        ("mkfs.erofs", 0, &[]),
        ("mksquashfs", 0, &[]),
    ];
    for (cmd, size, args) in made {
        if !tool(cmd) {
            eprintln!("note: {cmd} not installed; not a seed");
            continue;
        }
        let img = dir.join(cmd);
        let _ = std::fs::remove_file(&img);
        let mut c = Command::new(cmd);
        if size > 0 {
            std::fs::File::create(&img).unwrap().set_len(size).unwrap();
            c.args(args).arg(&img);
        } else if cmd == "mksquashfs" {
            c.arg(dir.join("tree")).arg(&img).args(["-quiet", "-noappend"]);
        } else {
            c.arg(&img).arg(dir.join("tree"));
        }
        if c.output().is_ok_and(|o| o.status.success()) {
            let mut b = std::fs::read(&img).unwrap();
            b.truncate(128 * 1024);
            let mut s = seed(cmd, b, false);
            // The superblocks identify() reads (the traced walk does not read them).
            s.hot.extend([(0, 512), (1024, 80), (0x10000, 0x22B)]);
            seeds.push(s);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    if seeds.is_empty() {
        mdi_testkit::skip("fuzz_other_filesystems: none of mkfs.btrfs, mkfs.xfs, mkfs.erofs, mksquashfs is installed");
        return;
    }
    fuzz("other-fs", seeds, exercise_other_fs);
}

fn exercise_other_fs(_: &str, m: Arc<Mutated>) -> usize {
    let found = mdi_inspect::other_fs::identify(&*m).map_or(0, |i| 2 + i.fields.len());
    found + walk_disk(&*m)
}

#[test]
fn fuzz_vmdk() {
    fuzz("vmdk", container_seeds("vmdk"), exercise_image);
}

#[test]
fn fuzz_vhdx() {
    fuzz("vhdx", container_seeds("vhdx"), exercise_image);
}

#[test]
fn mutations_apply_as_overlays() {
    let base = Arc::new((0..100u8).collect::<Vec<u8>>());
    let m = Mutated::new(
        base,
        &[
            Mutation::Flip { at: 0, bit: 1 },
            Mutation::Fill { at: 10, len: 3, fill: Some(0xFF), data: 0 },
            Mutation::Word { at: 20, width: 2, value: 0x0102, big: true },
            Mutation::Truncate { at: 50 },
        ],
    );
    let mut b = [0u8; 50];
    m.read_at(0, &mut b).unwrap();
    assert_eq!((b[0], &b[9..14], &b[20..22]), (2, &[9, 0xFF, 0xFF, 0xFF, 13][..], &[1, 2][..]));
    assert!(m.read_at(1, &mut b).is_err());
}

// ---------------------------------------------------------------- regressions
// Hostile structures the fuzzing led to guard against, built by hand: each must give an
// error (or a bounded result) quickly.

/// The byte offset of inode `ino`'s record in an image made by [`ext4_image`].
fn inode_at(img: &[u8], path: &[u8]) -> (usize, u64) {
    let owned = img.to_vec();
    let fs = mdi_ext4::read::Fs::open(&owned).unwrap();
    let i = fs.lookup(path).unwrap().unwrap();
    let g = (i.ino - 1) / fs.sb.inodes_per_group;
    let table = fs.groups()[g as usize].inode_table;
    let at = table * fs.sb.block_size + u64::from((i.ino - 1) % fs.sb.inodes_per_group) * fs.sb.inode_size;
    (at as usize, fs.sb.blocks_count - 1)
}

fn walk_all(img: Vec<u8>) -> (Vec<ifs::Node>, Vec<String>) {
    let start = Instant::now();
    let f = ifs::open(&img).unwrap().unwrap();
    let w = f.walk(WalkOptions { content: true, spans: true });
    assert!(start.elapsed() < Duration::from_secs(5), "walk took {:?}", start.elapsed());
    (w.nodes, w.problems)
}

#[test]
fn regression_indirect_block_that_points_to_itself() {
    let mut img = ext4_image();
    let (at, free) = inode_at(&img, b"/etc/big");
    let bs = 4096usize;
    // Block map instead of extents; the double-indirect block's first entry is itself.
    let flags = u32::from_le_bytes(img[at + 0x20..at + 0x24].try_into().unwrap()) & !0x80000;
    img[at + 0x20..at + 0x24].copy_from_slice(&flags.to_le_bytes());
    img[at + 0x28..at + 0x64].fill(0);
    img[at + 0x28 + 13 * 4..at + 0x28 + 14 * 4].copy_from_slice(&(free as u32).to_le_bytes());
    img[at + 0x04..at + 0x08].copy_from_slice(&u32::MAX.to_le_bytes()); // i_size: 4 GiB
    let f = free as usize * bs;
    img[f..f + 4].copy_from_slice(&(free as u32).to_le_bytes());
    let (nodes, _) = walk_all(img);
    let big = nodes.iter().find(|n| n.path == b"/etc/big").unwrap();
    assert!(big.error.as_deref().unwrap_or("").contains("used twice"), "{big:?}");
}

#[test]
fn regression_extent_node_with_the_wrong_depth() {
    let mut img = ext4_image();
    let (at, free) = inode_at(&img, b"/etc/big");
    // Root: depth 1, one index entry to `free`, whose header claims depth 1 again.
    let ib = at + 0x28;
    img[ib..ib + 12].copy_from_slice(&[0x0A, 0xF3, 1, 0, 4, 0, 1, 0, 0, 0, 0, 0]);
    img[ib + 12..ib + 24].copy_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    img[ib + 16..ib + 20].copy_from_slice(&(free as u32).to_le_bytes());
    let f = free as usize * 4096;
    img[f..f + 12].copy_from_slice(&[0x0A, 0xF3, 1, 0, 0x54, 1, 1, 0, 0, 0, 0, 0]);
    img[f + 16..f + 20].copy_from_slice(&(free as u32).to_le_bytes());
    let (nodes, _) = walk_all(img);
    let big = nodes.iter().find(|n| n.path == b"/etc/big").unwrap();
    assert!(big.error.as_deref().unwrap_or("").contains("depth 1, its parent expects 0"), "{big:?}");
}

#[test]
fn regression_file_of_exabytes_of_holes_is_digested_by_its_data() {
    let mut img = ext4_image();
    let (at, _) = inode_at(&img, b"/etc/sparse");
    img[at + 0x6C..at + 0x70].copy_from_slice(&0x4000_0000u32.to_le_bytes()); // i_size_high
    let (nodes, _) = walk_all(img);
    let s = nodes.iter().find(|n| n.path == b"/etc/sparse").unwrap();
    assert_eq!(s.size >> 32, 0x4000_0000);
    assert!(s.digest.is_some(), "{s:?}");
}

#[test]
fn regression_fat_directory_that_contains_itself() {
    let mut img = fat_image(5 * MIB);
    let v = mdi_fat::read::Volume::open(&img).unwrap();
    let efi = v.lookup("/EFI").unwrap().unwrap();
    // Point EFI/BOOT's entry at EFI's own cluster: EFI then contains itself.
    let dir = v.cluster_offset(efi.cluster) as usize;
    let slot =
        img[dir..dir + v.cluster_bytes() as usize].chunks_exact(32).position(|e| &e[..11] == b"BOOT       ").unwrap();
    let e = dir + 32 * slot;
    img[e + 26..e + 28].copy_from_slice(&(efi.cluster as u16).to_le_bytes());
    let (nodes, problems) = walk_all(img);
    assert!(problems.iter().any(|p| p.contains("reached twice")), "{problems:?} {nodes:?}");
}

#[test]
fn regression_group_descriptor_pointing_past_every_block() {
    // Found by fuzzing a debug build: block numbers from a descriptor times the block
    // size overflowed while recording who owns which bytes.
    let mut img = ext4_image();
    img[4096..4100].copy_from_slice(&u32::MAX.to_le_bytes()); // bg_block_bitmap_lo
    img[4096 + 0x20..4096 + 0x24].copy_from_slice(&u32::MAX.to_le_bytes()); // bg_block_bitmap_hi
    let (nodes, _) = walk_all(img);
    assert!(nodes.len() > 10);
}
