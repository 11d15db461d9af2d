//! The reader against filesystems made by this crate's writer: every entry, its metadata,
//! content, xattrs and link target come back as written.

use super::*;
use crate::{Options, SizeRequest};
use mdi_sink::MemSink;
use mdi_tree::{FileData, Kind, Meta, Timestamp, Tree, ROOT};
use std::sync::Arc;

fn meta(perm: u16, uid: u32, secs: i64) -> Meta {
    Meta { perm, uid, gid: uid + 1, mtime: Timestamp { secs, nsecs: 0 }, xattrs: Vec::new() }
}

fn sample() -> (Tree, Vec<u8>) {
    let mut t = Tree::new(Meta::root(0o755, Timestamp { secs: 100, nsecs: 0 }));
    let big: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
    let mut sparse = vec![0u8; 3 * 4096 + 10];
    sparse[2 * 4096] = 7;
    let etc = t.add(ROOT, b"etc", meta(0o755, 0, 50), Kind::Dir { children: vec![] }, None).unwrap();
    let file = |d: &[u8]| Kind::File { data: FileData::Inline(Arc::from(d)), size: d.len() as u64 };
    let mut m = meta(0o4711, 1000, 60);
    m.xattrs = vec![(b"user.note".to_vec(), b"hello".to_vec()), (b"security.capability".to_vec(), vec![1; 20])];
    t.add(etc, b"big", m, file(&big), None).unwrap();
    t.add(etc, b"sparse", meta(0o644, 0, 70), file(&sparse), None).unwrap();
    t.add(etc, b"hostname", meta(0o644, 0, 70), file(b"box\n"), None).unwrap();
    let long = vec![b'x'; 100];
    t.add(ROOT, b"fast", meta(0o777, 0, 80), Kind::Symlink { target: b"etc/hostname".to_vec() }, None).unwrap();
    t.add(ROOT, b"slow", meta(0o777, 0, 80), Kind::Symlink { target: long }, None).unwrap();
    t.add(ROOT, b"tty", meta(0o620, 0, 80), Kind::CharDev { major: 4, minor: 300 }, None).unwrap();
    let many = t.add(ROOT, b"many", meta(0o755, 0, 90), Kind::Dir { children: vec![] }, None).unwrap();
    for i in 0..400 {
        t.add(many, format!("entry-with-a-long-name-{i:04}").as_bytes(), meta(0o600, 0, 90), file(b""), None).unwrap();
    }
    t.finish();
    (t, big)
}

fn image(t: &Tree) -> Vec<u8> {
    let opts = Options {
        size: SizeRequest::Auto { extra_bytes: 0, align_bytes: 1 << 20 },
        uuid: [7; 16],
        hash_seed: [9; 16],
        label: b"testfs".to_vec(),
        time: 1000,
        cancel: None,
        progress: None,
    };
    let mut sink = MemSink::default();
    let r = crate::write(t, &opts, &mut sink).unwrap();
    sink.0.resize(r.bytes as usize, 0);
    sink.0
}

#[test]
fn reads_back_what_was_written() {
    let (t, big) = sample();
    let img = image(&t);
    let fs = Fs::open(&img).unwrap();
    assert!(fs.sb.checksum_ok);
    assert_eq!(fs.sb.label, b"testfs");
    assert_eq!(fs.sb.uuid, [7; 16]);
    assert_eq!(fs.sb.fs_type(), "ext4");
    assert!(fs.sb.features().contains(&"metadata_csum".to_string()));
    assert!(fs.groups().iter().all(|g| g.checksum_ok));
    let root = fs.inode(ROOT_INO).unwrap();
    let names: Vec<Vec<u8>> = fs.read_dir(&root).unwrap().into_iter().map(|e| e.name).collect();
    for n in [&b"etc"[..], b"fast", b"slow", b"tty", b"many"] {
        assert!(names.iter().any(|x| x == n), "{}", String::from_utf8_lossy(n));
    }
    let b = fs.lookup(b"/etc/big").unwrap().unwrap();
    assert!(b.checksum_ok);
    assert_eq!((b.mode & 0o7777, b.uid, b.gid, b.mtime.secs, b.ctime.secs), (0o4711, 1000, 1001, 60, 1000));
    assert_eq!(fs.read_file(&b, 1 << 20).unwrap(), big);
    let mut x = fs.xattrs(&b).unwrap();
    x.sort();
    assert_eq!(x[1], (b"user.note".to_vec(), b"hello".to_vec()));
    let s = fs.lookup(b"/etc/sparse").unwrap().unwrap();
    let data = fs.read_file(&s, 1 << 20).unwrap();
    assert_eq!((data.len(), data[2 * 4096], data.iter().filter(|&&c| c != 0).count()), (3 * 4096 + 10, 7, 1));
    assert_eq!(fs.read_link(&fs.lookup(b"/fast").unwrap().unwrap()).unwrap(), b"etc/hostname");
    assert_eq!(fs.read_link(&fs.lookup(b"/slow").unwrap().unwrap()).unwrap(), vec![b'x'; 100]);
    assert_eq!(fs.lookup(b"/tty").unwrap().unwrap().rdev(), (4, 300));
    let many = fs.lookup(b"/many").unwrap().unwrap();
    assert!(many.is_indexed());
    assert_eq!(fs.read_dir(&many).unwrap().len(), 400);
    assert!(fs.lookup(b"/nope").unwrap().is_none());
    assert!(fs.lookup(b"/etc/big/x").unwrap().is_none());
}

#[test]
fn damage_is_an_error_not_a_panic() {
    let (t, _) = sample();
    let img = image(&t);
    let mut bad = img.clone();
    bad[1024 + 0x18] = 9; // s_log_block_size
    assert!(matches!(Fs::open(&bad), Err(Error::Corrupt(_))));
    let mut bad = img.clone();
    bad[1024 + 0x60] |= 0x1; // compression
    assert!(matches!(Fs::open(&bad), Err(Error::Unsupported(_))));
    let mut bad = img.clone();
    bad[1024 + 0x40] ^= 1; // s_lastcheck: only the checksum notices
    assert!(!Fs::open(&bad).unwrap().sb.checksum_ok);
    assert!(Fs::open(&img[..2000].to_vec()).is_err());
}
