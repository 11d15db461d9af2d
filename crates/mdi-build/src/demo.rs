//! The embedded example tree: what `make-disk-image build` with no inputs puts in an
//! image, so that a first run shows something real.

use mdi_tree::{FileData, Kind, Meta, Timestamp, Tree, ROOT};
use std::sync::Arc;

const FILES: &[(&str, u16, &str)] = &[
    ("etc/os-release", 0o644, "NAME=\"make-disk-image demo\"\nID=mdi-demo\n"),
    ("etc/hostname", 0o644, "demo\n"),
    ("etc/motd", 0o644, "This filesystem was written by make-disk-image: no VM, no root, no mkfs.\n"),
    (
        "bin/hello",
        0o755,
        "#!/bin/sh\necho \"hello from an image built without a VM\"\n",
    ),
    ("README", 0o444, "Built by `make-disk-image build` from its embedded demo tree.\nInspect it with: debugfs -R 'ls -l /' nixos.img\n"),
];

/// The demo tree, every time stamped `time`.
pub fn tree(time: i64) -> Tree {
    let ts = Timestamp::from_secs(time);
    let dir = Meta::root(0o755, ts);
    let mut t = Tree::new(dir.clone());
    for (path, perm, text) in FILES {
        let (parent, name) = t.make_parents(path.as_bytes(), &dir).expect("demo paths are valid");
        let data: Arc<[u8]> = Arc::from(text.as_bytes());
        t.add(
            parent,
            &name,
            Meta::root(*perm, ts),
            Kind::File { size: data.len() as u64, data: FileData::Inline(data) },
            None,
        )
        .expect("demo paths are unique");
    }
    t.add(ROOT, b"hello", Meta::root(0o777, ts), Kind::Symlink { target: b"bin/hello".to_vec() }, None)
        .expect("unique");
    t.add(ROOT, b"tmp", Meta::root(0o1777, ts), Kind::Dir { children: Vec::new() }, None).expect("unique");
    t.finish();
    t
}
