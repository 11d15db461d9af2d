//! Reading partition tables back (for `make-disk-image inspect` and `diff`): the MBR with
//! its extended-partition chain, and the GPT (UEFI 2.10 §5.3) with both CRCs checked and the
//! backup used when the primary is damaged.
//!
//! Sector size: the MBR is read with 512-byte sectors. A GPT's header is at LBA 1, which
//! is byte 512 on a disk with 512-byte logical sectors and byte 4096 on a 4Kn disk
//! (UEFI 2.10 §5.3.1, "the GPT header is in LBA 1"); the first place with the "EFI PART"
//! signature decides the sector size, reported in [`Table::sector_size`], and every LBA of
//! the table (partitions included) counts sectors of that size.
//!
//! Nothing read is trusted: the entry array is capped at [`MAX_ARRAY`] bytes and at the
//! disk size, the chain of extended boot records at [`MAX_LOGICAL`] links, every LBA sum
//! is checked. Damage that still leaves a usable table (a bad CRC in one GPT copy, an
//! entry past the disk end) is reported in [`Table::problems`]; only a failing read of the
//! disk is an error.

use crate::SECTOR;
use mdi_ident::Uuid;
use mdi_sink::ReadAt;
use std::io;

/// Largest GPT entry array read (the usual one is 16 KiB).
pub const MAX_ARRAY: u64 = 4 << 20;
/// Most logical partitions followed in an extended partition.
pub const MAX_LOGICAL: usize = 128;

/// The kind of table found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A classic MBR ("dos" in sfdisk's words).
    Mbr,
    /// A GPT (with its protective or hybrid MBR).
    Gpt,
}

impl Kind {
    /// sfdisk's name for the label: "dos" or "gpt".
    pub fn name(self) -> &'static str {
        match self {
            Kind::Mbr => "dos",
            Kind::Gpt => "gpt",
        }
    }
}

/// One partition, in the form common to both tables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// Partition number as Linux counts them (MBR: 1–4 primary, 5… logical; GPT: entry
    /// index + 1).
    pub number: u32,
    /// First sector.
    pub start: u64,
    /// Sectors.
    pub sectors: u64,
    /// The type as sfdisk prints it: MBR type byte in hex ("83", "c"), GPT type GUID upper-case.
    pub type_id: String,
    /// GPT: unique partition GUID.
    pub guid: Option<Uuid>,
    /// GPT: partition name.
    pub name: String,
    /// GPT: attribute bits; MBR: 0x80 when the boot indicator is set.
    pub attributes: u64,
}

/// One raw MBR entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MbrEntry {
    /// Slot 1–4.
    pub slot: u32,
    /// Boot indicator byte.
    pub status: u8,
    /// Partition type byte.
    pub kind: u8,
    /// Starting LBA.
    pub start: u32,
    /// Size in sectors.
    pub sectors: u32,
}

/// The MBR in sector 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MbrSector {
    /// Disk signature (bytes 440–443).
    pub signature: u32,
    /// Bytes 0–439: boot code.
    pub boot_code: Vec<u8>,
    /// Non-empty entries.
    pub entries: Vec<MbrEntry>,
}

/// A GPT header (the copy in use).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GptHeader {
    /// Revision (0x00010000 for 1.0).
    pub revision: u32,
    /// HeaderSize.
    pub header_size: u32,
    /// MyLBA.
    pub my_lba: u64,
    /// AlternateLBA.
    pub alternate_lba: u64,
    /// FirstUsableLBA.
    pub first_usable: u64,
    /// LastUsableLBA.
    pub last_usable: u64,
    /// DiskGUID.
    pub disk_guid: Uuid,
    /// PartitionEntryLBA.
    pub entries_lba: u64,
    /// NumberOfPartitionEntries.
    pub entry_count: u32,
    /// SizeOfPartitionEntry.
    pub entry_size: u32,
    /// PartitionEntryArrayCRC32.
    pub entries_crc: u32,
}

/// What was found on a disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    /// MBR or GPT.
    pub kind: Kind,
    /// Sector 0.
    pub mbr: MbrSector,
    /// The GPT header in use (GPT only).
    pub gpt: Option<GptHeader>,
    /// Whether that header is the backup (the primary being damaged).
    pub gpt_from_backup: bool,
    /// The partitions, in entry order.
    pub partitions: Vec<Partition>,
    /// Damage found that did not stop the table from being read.
    pub problems: Vec<String>,
    /// Logical sector size the LBAs count: 512, or 4096 for a GPT found at byte 4096.
    pub sector_size: u64,
}

impl Table {
    /// The disk identifier as sfdisk prints it: the disk GUID, or 0x and the signature.
    pub fn id(&self) -> String {
        match &self.gpt {
            Some(h) => h.disk_guid.to_string().to_uppercase(),
            None => format!("0x{:08x}", self.mbr.signature),
        }
    }
}

fn le16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn le64(b: &[u8], o: usize) -> u64 {
    u64::from(le32(b, o)) | (u64::from(le32(b, o + 4)) << 32)
}

/// A GUID from its on-disk mixed-endian bytes (UEFI appendix A).
pub fn guid_from_disk(b: &[u8]) -> Uuid {
    Uuid([b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]])
}

fn read_sectors(disk: &dyn ReadAt, ss: u64, lba: u64, count: u64) -> io::Result<Vec<u8>> {
    let len = count.checked_mul(ss).filter(|&l| l <= MAX_ARRAY + ss).ok_or_else(|| too_big(count))?;
    let off = lba.checked_mul(ss).ok_or_else(|| too_big(lba))?;
    let mut b = vec![0u8; len as usize];
    disk.read_at(off, &mut b)?;
    Ok(b)
}

fn too_big(n: u64) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("sector number or count {n} is out of range"))
}

/// Reads the partition table of `disk`: None when sector 0 has no 0x55AA signature or
/// no partition entries (a bare filesystem, or an empty disk).
pub fn read(disk: &dyn ReadAt) -> io::Result<Option<Table>> {
    if disk.size() < SECTOR {
        return Ok(None);
    }
    let s0 = read_sectors(disk, SECTOR, 0, 1)?;
    if le16(&s0, 510) != 0xAA55 {
        return Ok(None);
    }
    let mut entries = Vec::new();
    for slot in 0..4u32 {
        let o = 446 + 16 * slot as usize;
        let e = &s0[o..o + 16];
        if e[4] == 0 && le32(e, 8) == 0 && le32(e, 12) == 0 {
            continue;
        }
        entries.push(MbrEntry { slot: slot + 1, status: e[0], kind: e[4], start: le32(e, 8), sectors: le32(e, 12) });
    }
    // A FAT or NTFS boot sector also ends in 0x55AA; its "entries" are code or BPB bytes.
    // Like the kernel, refuse entries whose status byte is not 0x00 or 0x80.
    if entries.is_empty() || entries.iter().any(|e| e.status != 0 && e.status != 0x80) {
        return Ok(None);
    }
    let mbr = MbrSector { signature: le32(&s0, 440), boot_code: s0[..440].to_vec(), entries };
    let mut problems = Vec::new();
    if mbr.entries.iter().any(|e| e.kind == 0xEE) {
        let ss = gpt_sector_size(disk)?;
        let sectors = disk.size() / ss;
        if let Some((header, backup, parts)) = read_gpt(disk, ss, sectors, &mut problems)? {
            if mbr.entries.len() > 1 {
                problems.push("the MBR is a hybrid MBR (partitions besides the protective one)".into());
            }
            return Ok(Some(Table {
                kind: Kind::Gpt,
                mbr,
                gpt: Some(header),
                gpt_from_backup: backup,
                partitions: parts,
                problems,
                sector_size: ss,
            }));
        }
        problems.push("the MBR has a GPT protective entry but neither GPT header is valid".into());
    }
    let sectors = disk.size() / SECTOR;
    let mut parts = Vec::new();
    for e in &mbr.entries {
        check_extent(u64::from(e.start), u64::from(e.sectors), sectors, e.slot, &mut problems);
        parts.push(Partition {
            number: e.slot,
            start: u64::from(e.start),
            sectors: u64::from(e.sectors),
            type_id: format!("{:x}", e.kind),
            guid: None,
            name: String::new(),
            attributes: u64::from(e.status & 0x80),
        });
    }
    if let Some(ext) = mbr.entries.iter().find(|e| matches!(e.kind, 0x05 | 0x0F | 0x85)) {
        logical(disk, u64::from(ext.start), sectors, &mut parts, &mut problems)?;
    }
    Ok(Some(Table {
        kind: Kind::Mbr,
        mbr,
        gpt: None,
        gpt_from_backup: false,
        partitions: parts,
        problems,
        sector_size: SECTOR,
    }))
}

/// The logical sector size of a GPT disk: 4096 when LBA 1 of 4096-byte sectors holds the
/// header and LBA 1 of 512-byte sectors does not, else 512.
fn gpt_sector_size(disk: &dyn ReadAt) -> io::Result<u64> {
    for ss in [SECTOR, 4096] {
        if disk.size() >= 2 * ss {
            let mut sig = [0u8; 8];
            disk.read_at(ss, &mut sig)?;
            if &sig == b"EFI PART" {
                return Ok(ss);
            }
        }
    }
    Ok(SECTOR)
}

fn check_extent(start: u64, count: u64, sectors: u64, number: u32, problems: &mut Vec<String>) {
    if start.checked_add(count).is_none_or(|end| end > sectors) {
        problems.push(format!(
            "partition {number} (sectors {start}+{count}) extends past the end of the disk ({sectors} sectors)"
        ));
    }
}

/// Follows the chain of extended boot records from the extended partition at `base`.
fn logical(
    disk: &dyn ReadAt,
    base: u64,
    sectors: u64,
    parts: &mut Vec<Partition>,
    problems: &mut Vec<String>,
) -> io::Result<()> {
    let mut ebr = base;
    let mut seen = std::collections::HashSet::new();
    for number in 5u32.. {
        if parts.len() >= 4 + MAX_LOGICAL || !seen.insert(ebr) {
            problems.push(format!("the chain of extended boot records loops or is longer than {MAX_LOGICAL}"));
            return Ok(());
        }
        if ebr >= sectors {
            problems.push(format!("extended boot record at sector {ebr} is past the end of the disk"));
            return Ok(());
        }
        let b = read_sectors(disk, SECTOR, ebr, 1)?;
        if le16(&b, 510) != 0xAA55 {
            problems.push(format!("extended boot record at sector {ebr} has no 0x55AA signature"));
            return Ok(());
        }
        let (e1, e2) = (&b[446..462], &b[462..478]);
        if e1[4] != 0 {
            let start = ebr.saturating_add(u64::from(le32(e1, 8)));
            let count = u64::from(le32(e1, 12));
            check_extent(start, count, sectors, number, problems);
            parts.push(Partition {
                number,
                start,
                sectors: count,
                type_id: format!("{:x}", e1[4]),
                guid: None,
                name: String::new(),
                attributes: u64::from(e1[0] & 0x80),
            });
        }
        if e2[4] == 0 || le32(e2, 8) == 0 {
            return Ok(());
        }
        ebr = base.saturating_add(u64::from(le32(e2, 8)));
    }
    Ok(())
}

/// The GPT header at `lba` when its signature and CRC are right, with its entry array
/// when that CRC is right too.
fn gpt_copy(
    disk: &dyn ReadAt,
    ss: u64,
    lba: u64,
    sectors: u64,
    which: &str,
    problems: &mut Vec<String>,
) -> io::Result<Option<(GptHeader, Vec<u8>)>> {
    if lba == 0 || lba >= sectors {
        problems.push(format!("the {which} GPT header's LBA {lba} is outside the disk"));
        return Ok(None);
    }
    let h = read_sectors(disk, ss, lba, 1)?;
    if &h[..8] != b"EFI PART" {
        problems.push(format!("no {which} GPT header at LBA {lba}"));
        return Ok(None);
    }
    let size = le32(&h, 12);
    if !(92..=ss as u32).contains(&size) {
        problems.push(format!("the {which} GPT header size {size} is not in 92..={ss}"));
        return Ok(None);
    }
    let mut z = h[..size as usize].to_vec();
    z[16..20].fill(0);
    if crc32fast::hash(&z) != le32(&h, 16) {
        problems.push(format!("the {which} GPT header's CRC is wrong"));
        return Ok(None);
    }
    let header = GptHeader {
        revision: le32(&h, 8),
        header_size: size,
        my_lba: le64(&h, 24),
        alternate_lba: le64(&h, 32),
        first_usable: le64(&h, 40),
        last_usable: le64(&h, 48),
        disk_guid: guid_from_disk(&h[56..72]),
        entries_lba: le64(&h, 72),
        entry_count: le32(&h, 80),
        entry_size: le32(&h, 84),
        entries_crc: le32(&h, 88),
    };
    if header.my_lba != lba {
        problems.push(format!("the {which} GPT header at LBA {lba} says it is at LBA {}", header.my_lba));
    }
    if header.entry_size < 128 || !header.entry_size.is_power_of_two() {
        problems.push(format!("the {which} GPT entry size {} is not a power of two ≥ 128", header.entry_size));
        return Ok(None);
    }
    let bytes = u64::from(header.entry_count) * u64::from(header.entry_size);
    if bytes > MAX_ARRAY || bytes > disk.size() {
        problems.push(format!("the {which} GPT entry array of {bytes} bytes is too large"));
        return Ok(None);
    }
    let end = bytes.div_ceil(ss).checked_add(header.entries_lba).filter(|&e| e <= sectors);
    if header.entries_lba < 1 || end.is_none() {
        problems.push(format!("the {which} GPT entry array at LBA {} lies outside the disk", header.entries_lba));
        return Ok(None);
    }
    let mut array = read_sectors(disk, ss, header.entries_lba, bytes.div_ceil(ss))?;
    array.truncate(bytes as usize);
    if crc32fast::hash(&array) != header.entries_crc {
        problems.push(format!("the {which} GPT entry array's CRC is wrong"));
        return Ok(None);
    }
    Ok(Some((header, array)))
}

/// Reads both GPT copies; returns the header in use, whether it is the backup, and the
/// partitions. None when neither copy is valid.
fn read_gpt(
    disk: &dyn ReadAt,
    ss: u64,
    sectors: u64,
    problems: &mut Vec<String>,
) -> io::Result<Option<(GptHeader, bool, Vec<Partition>)>> {
    let primary = gpt_copy(disk, ss, 1, sectors, "primary", problems)?;
    let alt = primary.as_ref().map_or(sectors.saturating_sub(1), |(h, _)| h.alternate_lba);
    let mut backup = gpt_copy(disk, ss, alt, sectors, "backup", problems)?;
    if backup.is_none() && alt != sectors.saturating_sub(1) {
        backup = gpt_copy(disk, ss, sectors.saturating_sub(1), sectors, "backup", problems)?;
    }
    if let (Some((p, pa)), Some((b, ba))) = (&primary, &backup) {
        if p.disk_guid != b.disk_guid || pa != ba || p.first_usable != b.first_usable || p.last_usable != b.last_usable
        {
            problems.push("the backup GPT differs from the primary".into());
        }
    }
    let from_backup = primary.is_none();
    let Some((header, array)) = primary.or(backup) else {
        return Ok(None);
    };
    if header.first_usable > header.last_usable || header.last_usable >= sectors {
        problems.push(format!(
            "the GPT's usable sectors {}..={} do not fit the disk ({sectors} sectors)",
            header.first_usable, header.last_usable
        ));
    }
    let mut parts = Vec::new();
    for (i, e) in array.chunks_exact(header.entry_size as usize).enumerate() {
        if e[..16].iter().all(|&b| b == 0) {
            continue;
        }
        let number = i as u32 + 1;
        let (first, last) = (le64(e, 32), le64(e, 40));
        let count = match last.checked_sub(first).and_then(|d| d.checked_add(1)) {
            Some(c) => c,
            None => {
                problems.push(format!("GPT partition {number} ends (LBA {last}) before it starts (LBA {first})"));
                0
            }
        };
        if count > 0 && (first < header.first_usable || last > header.last_usable) {
            problems.push(format!(
                "GPT partition {number} (LBA {first}..={last}) is outside the usable sectors {}..={}",
                header.first_usable, header.last_usable
            ));
        }
        let units: Vec<u16> = e[56..128].chunks_exact(2).map(|c| le16(c, 0)).take_while(|&u| u != 0).collect();
        parts.push(Partition {
            number,
            start: first,
            sectors: count,
            type_id: guid_from_disk(&e[..16]).to_string().to_uppercase(),
            guid: Some(guid_from_disk(&e[16..32])),
            name: String::from_utf16_lossy(&units),
            attributes: le64(e, 48),
        });
    }
    Ok(Some((header, from_backup, parts)))
}

/// A readable name for a partition type (MBR byte in hex or GPT GUID), as fdisk names them.
pub fn type_name(type_id: &str) -> &'static str {
    match type_id {
        "83" => "Linux",
        "82" => "Linux swap",
        "8e" => "Linux LVM",
        "fd" => "Linux raid autodetect",
        "c" => "W95 FAT32 (LBA)",
        "b" => "W95 FAT32",
        "e" => "W95 FAT16 (LBA)",
        "6" => "FAT16",
        "4" => "FAT16 <32M",
        "1" => "FAT12",
        "5" => "Extended",
        "f" => "W95 Ext'd (LBA)",
        "85" => "Linux extended",
        "7" => "HPFS/NTFS/exFAT",
        "ee" => "GPT",
        "ef" => "EFI (FAT-12/16/32)",
        crate::types::ESP => "EFI System",
        crate::types::BIOS_BOOT => "BIOS boot",
        crate::types::LINUX_FS => "Linux filesystem",
        crate::types::XBOOTLDR => "Linux extended boot",
        "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F" => "Linux swap",
        "E6D6D379-F507-44C2-A23C-238F2A3DF928" => "Linux LVM",
        "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709" => "Linux root (x86-64)",
        "933AC7E1-2EB4-4F13-B844-0E14E2AEF915" => "Linux home",
        "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7" => "Microsoft basic data",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Gpt, GptPartition, Mbr, MbrPartition};

    fn gpt_disk() -> Vec<u8> {
        let sectors = 8192u64;
        let g = Gpt {
            disk_guid: Uuid::parse("01234567-89AB-CDEF-0123-456789ABCDEF").unwrap(),
            disk_sectors: sectors,
            partitions: vec![
                GptPartition {
                    type_guid: Uuid::parse(crate::types::ESP).unwrap(),
                    guid: Uuid::parse("11111111-2222-3333-4444-555555555555").unwrap(),
                    first: 2048,
                    last: 4095,
                    attributes: 0,
                    name: "ESP".into(),
                },
                GptPartition {
                    type_guid: Uuid::parse(crate::types::LINUX_FS).unwrap(),
                    guid: Uuid::parse("F222513B-DED1-49FA-B591-20CE86A2FE7F").unwrap(),
                    first: 4096,
                    last: 8000,
                    attributes: 1 << 60,
                    name: "primary".into(),
                },
            ],
        };
        let mut d = vec![0u8; (sectors * SECTOR) as usize];
        d[..512].copy_from_slice(&Mbr::protective(sectors).encode(&[]));
        for (off, bytes) in g.encode() {
            d[off as usize..off as usize + bytes.len()].copy_from_slice(&bytes);
        }
        d
    }

    #[test]
    fn gpt_round_trip() {
        let d = gpt_disk();
        let t = read(&d).unwrap().unwrap();
        assert_eq!(t.kind, Kind::Gpt);
        assert!(t.problems.is_empty(), "{:?}", t.problems);
        assert_eq!(t.id(), "01234567-89AB-CDEF-0123-456789ABCDEF");
        assert_eq!(t.partitions.len(), 2);
        let p = &t.partitions[1];
        assert_eq!((p.number, p.start, p.sectors, p.name.as_str()), (2, 4096, 3905, "primary"));
        assert_eq!(p.type_id, crate::types::LINUX_FS);
        assert_eq!(p.attributes, 1 << 60);
        assert_eq!(type_name(&t.partitions[0].type_id), "EFI System");
    }

    #[test]
    fn damaged_primary_falls_back_to_backup() {
        let mut d = gpt_disk();
        d[512 + 60] ^= 1; // inside the disk GUID: header CRC now wrong
        let t = read(&d).unwrap().unwrap();
        assert!(t.gpt_from_backup);
        assert_eq!(t.partitions.len(), 2);
        assert!(t.problems.iter().any(|p| p.contains("primary GPT header's CRC")), "{:?}", t.problems);
        // Both damaged: the MBR view remains.
        let n = d.len();
        d[n - 512 + 60] ^= 1;
        let t = read(&d).unwrap().unwrap();
        assert_eq!(t.kind, Kind::Mbr);
        assert_eq!(t.partitions[0].type_id, "ee");
    }

    #[test]
    fn mbr_with_logical_partitions() {
        let mut d = vec![0u8; 4096 * 512];
        let m = Mbr {
            signature: 0xDEAD_BEEF,
            partitions: vec![
                MbrPartition { bootable: true, kind: 0x0C, start: 2048, sectors: 1024 },
                MbrPartition { bootable: false, kind: 0x05, start: 3072, sectors: 1024 },
            ],
        };
        d[..512].copy_from_slice(&m.encode(&[]));
        // EBR 1 at 3072: logical at +8, link to +512; EBR 2 at 3584 links back to itself.
        for (at, link) in [(3072usize, 512u32), (3584, 512)] {
            let e = &mut d[at * 512..at * 512 + 512];
            e[446 + 4] = 0x83;
            e[446 + 8..446 + 12].copy_from_slice(&8u32.to_le_bytes());
            e[446 + 12..446 + 16].copy_from_slice(&100u32.to_le_bytes());
            e[462 + 4] = 0x05;
            e[462 + 8..462 + 12].copy_from_slice(&link.to_le_bytes());
            e[510] = 0x55;
            e[511] = 0xAA;
        }
        let t = read(&d).unwrap().unwrap();
        assert_eq!(t.id(), "0xdeadbeef");
        let starts: Vec<(u32, u64)> = t.partitions.iter().map(|p| (p.number, p.start)).collect();
        assert_eq!(starts, vec![(1, 2048), (2, 3072), (5, 3080), (6, 3592)]);
        assert!(t.problems.iter().any(|p| p.contains("loops")), "{:?}", t.problems);
        assert_eq!(t.partitions[0].attributes, 0x80);
    }

    #[test]
    fn not_a_table() {
        assert!(read(&vec![0u8; 100]).unwrap().is_none());
        assert!(read(&vec![0u8; 4096]).unwrap().is_none());
        let mut fat = vec![0u8; 4096];
        fat[446] = 0x12; // BPB-ish garbage in the entry area
        fat[450] = 7;
        fat[510] = 0x55;
        fat[511] = 0xAA;
        assert!(read(&fat).unwrap().is_none());
    }
}
