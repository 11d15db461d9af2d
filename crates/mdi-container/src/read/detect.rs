//! Telling a raw disk from a format this crate does not read.
//!
//! A container format announces itself with a magic number; a raw disk has none. Reading
//! anything without a known magic as raw (what qemu-img does, with a warning) turns a
//! Parallels or QED file into a "disk" of its own header bytes, so [`open`](super::open)
//! only takes a file for raw when its first bytes look like the start of a disk:
//!
//! 1. the file is empty, or its first 512 bytes (all of it when shorter) are zeros: a
//!    disk never written, or one whose first sector is unused;
//! 2. sector 0 ends with the boot signature 0x55 0xAA at byte 510 (an MBR, a protective
//!    MBR, or a FAT/exFAT/NTFS boot sector);
//! 3. a GPT header signature "EFI PART" at byte 512 or 4096 (UEFI 2.10 §5.3.2: LBA 1 of a
//!    disk with 512- or 4096-byte sectors);
//! 4. a filesystem superblock at its fixed place: ext2/3/4 (s_magic 0xEF53 at byte 1080,
//!    e2fsprogs lib/ext2fs/ext2_fs.h), XFS ("XFSB" at 0, xfs_format.h XFS_SB_MAGIC),
//!    squashfs ("hsqs" at 0, squashfs_fs.h), EROFS (0xE0F5E1E2 little-endian at 1024,
//!    erofs_fs.h), btrfs ("_BHRfS_M" at 65600, the superblock at 64 KiB plus 64),
//!    ISO 9660 ("CD001" at 32769, ECMA-119 §8.1), Linux swap ("SWAPSPACE2" ending at byte
//!    4096, linux/swap.h), an LVM2 physical volume ("LABELONE" at 512, lvm2's label.h).
//!
//! Formats that qemu-img reads but this crate does not are named by their magic (QED,
//! Parallels, Bochs, cloop, DMG, VMDK3 "COWD", LUKS; qcow version 1 is named by the qcow2
//! reader). Everything else is "unrecognised", with its first bytes shown, and the user can
//! still say `--input-format raw`.

use super::Src;
use std::io;

/// What `convert` reads, for messages.
pub const READABLE: &str = "raw, qcow2, vdi, vpc, vmdk, vhdx";

/// Bytes read from the start of the file to decide (the btrfs superblock magic ends at
/// 65608).
const PROBE: u64 = 65_608;

/// A format qemu-img reads and this crate does not: (magic test, description).
fn unsupported_by_magic(head: &[u8], tail: &[u8]) -> Option<&'static str> {
    // QEMU docs/interop/qed_spec.txt: magic 'Q' 'E' 'D' 0x00.
    if head.starts_with(b"QED\0") {
        return Some("a QED image (QEMU enhanced disk)");
    }
    // QEMU block/parallels.c HEADER_MAGIC and HEADER_MAGIC2.
    if head.starts_with(b"WithoutFreeSpace") || head.starts_with(b"WithouFreSpacExt") {
        return Some("a Parallels image");
    }
    // QEMU block/bochs.c HEADER_MAGIC.
    if head.starts_with(b"Bochs Virtual HD Image") {
        return Some("a Bochs image");
    }
    // The shell-script preamble every cloop V2.0 file starts with (QEMU block/cloop.c).
    if head.starts_with(b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop") {
        return Some("a cloop image (compressed loopback)");
    }
    // VMware's older sparse extent (VMDK3 / ESX "COWD", QEMU block/vmdk.c VMDK3_MAGIC).
    if head.starts_with(b"COWD") {
        return Some("a VMDK3 (COWD) sparse extent");
    }
    // LUKS1 and LUKS2 headers both start with "LUKS" 0xBA 0xBE (LUKS on-disk format
    // specification §2.4); qemu-img calls the container "luks".
    if head.starts_with(b"LUKS\xba\xbe") {
        return Some("a LUKS encrypted image (qemu-img's \"luks\" format)");
    }
    // Apple UDIF: a 512-byte trailer whose signature is "koly" ends the file.
    if tail.starts_with(b"koly") {
        return Some("a DMG (Apple disk image)");
    }
    None
}

fn at(b: &[u8], off: usize, magic: &[u8]) -> bool {
    b.len() >= off + magic.len() && &b[off..off + magic.len()] == magic
}

/// Why the start of the file looks like a raw disk (rule 1-4 of the module documentation),
/// or None.
pub fn raw_reason(head: &[u8], file_len: u64) -> Option<&'static str> {
    let first = &head[..head.len().min(512)];
    if file_len == 0 || first.iter().all(|&b| b == 0) {
        return Some("its first sector is zeros");
    }
    if at(head, 510, &[0x55, 0xAA]) {
        return Some("sector 0 has the boot signature 0x55AA");
    }
    if at(head, 512, b"EFI PART") || at(head, 4096, b"EFI PART") {
        return Some("it has a GPT header");
    }
    let fs: [(usize, &[u8], &str); 9] = [
        (1080, &[0x53, 0xEF], "an ext2/3/4 superblock"),
        (0, b"XFSB", "an XFS superblock"),
        (0, b"hsqs", "a squashfs superblock"),
        (1024, &[0xE2, 0xE1, 0xF5, 0xE0], "an EROFS superblock"),
        (65600, b"_BHRfS_M", "a btrfs superblock"),
        (32769, b"CD001", "an ISO 9660 volume descriptor"),
        (4086, b"SWAPSPACE2", "a Linux swap signature"),
        (4086, b"SWAP-SPACE", "a Linux swap signature"),
        (512, b"LABELONE", "an LVM2 label"),
    ];
    fs.iter().find(|(off, magic, _)| at(head, *off, magic)).map(|(_, _, what)| *what)
}

/// Decides whether `src`, which has no known container magic, may be read as raw: Ok when
/// it looks like a disk, else an error naming what it is or showing its magic.
pub(crate) fn check_raw(src: &Src) -> io::Result<()> {
    let n = src.len.min(PROBE);
    let mut head = vec![0u8; n as usize];
    src.read(0, &mut head, "the start of the file")?;
    let mut tail = [0u8; 4];
    if src.len >= 512 {
        src.read(src.len - 512, &mut tail, "the last sector")?;
    }
    if let Some(what) = unsupported_by_magic(&head, &tail) {
        return Err(src.unsupported(format_args!(
            "is {what}, which this tool does not read; convert reads {READABLE} \
             (qemu-img convert -O qcow2 turns it into one)"
        )));
    }
    if raw_reason(&head, src.len).is_some() {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "{}: unrecognised image format (magic {}); convert reads {READABLE}. \
             If the file is a raw disk (it starts with no partition table or filesystem this \
             tool knows), say --input-format raw",
            src.name(),
            show_magic(&head[..head.len().min(8)])
        ),
    ))
}

/// The first bytes as hex and, when printable, as text: `51 46 49 fb ("QFI.")`.
fn show_magic(b: &[u8]) -> String {
    let hex: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
    let text: String = b.iter().map(|&c| if (0x20..0x7f).contains(&c) { c as char } else { '.' }).collect();
    format!("{} \"{text}\"", hex.join(" "))
}
