//! Giving a freshly made btrfs filesystem its UUID (fsid).
//!
//! mkfs.btrfs refuses a UUID that any block device of the build machine already carries
//! (it asks libblkid about every device), so building with a fixed UUID fails while, say,
//! an earlier image of the same spec is attached, or on a NixOS machine whose own root has
//! nixpkgs' default UUID. The filesystem is therefore made with a random UUID, which is
//! then replaced here wherever btrfs stores it, as `btrfstune -U` would (which asks
//! libblkid too): every superblock copy and every tree block, each with its checksum
//! (btrfs on-disk format, "Superblock" and "Tree block header"):
//! - superblock at 64 KiB, 64 MiB, 256 GiB: csum [32] @0 over bytes 0x20..0x1000, fsid
//!   [16] @0x20, magic `_BHRfS_M` @0x40, nodesize u32 @0x94, csum_type u16 @0xC4 (0 =
//!   crc32c), dev_item @0xC9 whose fsid [16] is at +82;
//! - tree block: csum [32] @0 over bytes 0x20..nodesize, fsid [16] @0x20; chunk tree
//!   leaves also hold the fsid in each DEV_ITEM.
//!
//! The same pass puts device numbers into device inodes: mkfs.btrfs 6.2 leaves their
//! `rdev` at 0. A leaf (level u8 @0x64 = 0) of the FS tree (owner u64 @0x58 = 5) holds
//! nritems (u32 @0x60) items after the 0x65-byte header, each a key (objectid u64, type u8,
//! offset u64), data offset u32 and size u32 (25 bytes); an INODE_ITEM (type 1) keeps
//! `rdev` u64 at +56 of its data, in the kernel's dev_t encoding (major << 20 | minor).
//!
//! A random 16-byte value occurs nowhere else, so every occurrence inside a block whose
//! checksum proves it is a superblock or tree block is the fsid. Tree blocks are found by
//! scanning every 4 KiB of the file for the old fsid at +0x20 and a valid checksum.

use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::Path;

const SUPERS: [u64; 3] = [64 << 10, 64 << 20, 256 << 30];
const SUPER_SIZE: usize = 4096;
const MAGIC: &[u8; 8] = b"_BHRfS_M";

/// btrfs' crc32c checksum, stored little-endian in the first 4 bytes of the csum field.
fn csum(b: &[u8]) -> [u8; 4] {
    crc32c::crc32c(&b[0x20..]).to_le_bytes()
}

fn replace_all(b: &mut [u8], from: &[u8; 16], to: &[u8; 16]) -> usize {
    let mut n = 0;
    let mut i = 0;
    while i + 16 <= b.len() {
        if &b[i..i + 16] == from {
            b[i..i + 16].copy_from_slice(to);
            n += 1;
            i += 16;
        } else {
            i += 1;
        }
    }
    n
}

/// The fsid mkfs wrote (from the primary superblock).
pub(super) fn read_fsid(img: &Path) -> Result<[u8; 16]> {
    let f = std::fs::File::open(img).with_context(|| format!("'{}'", img.display()))?;
    let mut sb = vec![0u8; SUPER_SIZE];
    f.read_exact_at(&mut sb, SUPERS[0])?;
    if &sb[0x40..0x48] != MAGIC {
        bail!("mkfs.btrfs wrote no btrfs superblock to '{}'", img.display());
    }
    Ok(sb[0x20..0x30].try_into().expect("16 bytes"))
}

/// Sets `rdev` of the inodes in `devices` (inode number → (major, minor)) in a leaf.
fn set_rdev(node: &mut [u8], devices: &HashMap<u64, (u32, u32)>) {
    let u64_at = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
    if node[0x64] != 0 || u64_at(node, 0x58) != 5 {
        return;
    }
    let n = u32::from_le_bytes(node[0x60..0x64].try_into().expect("4 bytes")) as usize;
    for i in 0..n {
        let item = 0x65 + i * 25;
        if item + 25 > node.len() {
            return;
        }
        let (ino, kind) = (u64_at(node, item), node[item + 8]);
        let data = 0x65 + u32::from_le_bytes(node[item + 17..item + 21].try_into().expect("4 bytes")) as usize;
        if kind == 1 && data + 64 <= node.len() {
            if let Some(&(major, minor)) = devices.get(&ino) {
                let rdev = (u64::from(major) << 20) | u64::from(minor);
                node[data + 56..data + 64].copy_from_slice(&rdev.to_le_bytes());
            }
        }
    }
}

/// Replaces fsid `from` by `to` in the btrfs image `img`, and sets the device numbers.
pub(super) fn set_fsid(img: &Path, from: [u8; 16], to: [u8; 16], devices: &HashMap<u64, (u32, u32)>) -> Result<()> {
    let f =
        std::fs::OpenOptions::new().read(true).write(true).open(img).with_context(|| format!("'{}'", img.display()))?;
    let len = f.metadata()?.len();
    let mut nodesize = 0usize;
    for &at in SUPERS.iter().filter(|&&at| at + SUPER_SIZE as u64 <= len) {
        let mut sb = vec![0u8; SUPER_SIZE];
        f.read_exact_at(&mut sb, at)?;
        if &sb[0x40..0x48] != MAGIC || sb[0x20..0x30] != from {
            continue;
        }
        if u16::from_le_bytes([sb[0xC4], sb[0xC5]]) != 0 || sb[..4] != csum(&sb) {
            bail!("the btrfs superblock at byte {at} does not carry the crc32c checksum expected; cannot set its UUID");
        }
        nodesize = u32::from_le_bytes(sb[0x94..0x98].try_into().expect("4 bytes")) as usize;
        replace_all(&mut sb[0x20..], &from, &to);
        let c = csum(&sb);
        sb[..4].copy_from_slice(&c);
        f.write_all_at(&sb, at)?;
    }
    if !(4096..=65536).contains(&nodesize) {
        bail!("the btrfs superblock gives a node size of {nodesize}, which this program does not handle");
    }
    let mut buf = vec![0u8; 4 << 20];
    let mut node = vec![0u8; nodesize];
    let mut pos = 0u64;
    let mut blocks = 0u64;
    while pos < len {
        pos = match rustix::fs::seek(&f, rustix::fs::SeekFrom::Data(pos)) {
            Ok(d) => d.min(len) / 4096 * 4096,
            Err(rustix::io::Errno::NXIO) => len,
            Err(_) => pos,
        };
        if pos >= len {
            break;
        }
        let n = (buf.len() as u64).min(len - pos) as usize;
        f.read_exact_at(&mut buf[..n], pos)?;
        let mut i = 0;
        while i + 0x30 <= n {
            let at = pos + i as u64;
            if buf[i + 0x20..i + 0x30] == from && !SUPERS.contains(&at) && at + nodesize as u64 <= len {
                f.read_exact_at(&mut node, at)?;
                if node[..4] == csum(&node) {
                    replace_all(&mut node[0x20..], &from, &to);
                    set_rdev(&mut node, devices);
                    let c = csum(&node);
                    node[..4].copy_from_slice(&c);
                    f.write_all_at(&node, at)?;
                    blocks += 1;
                    i += nodesize;
                    continue;
                }
            }
            i += 4096;
        }
        pos += n as u64;
    }
    if blocks == 0 {
        bail!("found no btrfs tree block in '{}' to set the UUID in", img.display());
    }
    Ok(())
}
