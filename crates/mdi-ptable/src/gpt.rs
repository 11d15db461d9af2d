//! The GUID Partition Table (UEFI 2.10 §5.3): primary header at LBA 1 and entry array at
//! LBA 2–33, backup array in the 32 sectors before the backup header in the last LBA.

use crate::{put_u32, put_u64, SECTOR};
use mdi_ident::Uuid;

/// Entries in the array (the minimum the spec allows a full 16 KiB array for).
pub const GPT_ENTRIES: usize = 128;
/// Sectors one header plus array takes at either end of the disk.
pub const GPT_SECTORS: u64 = 1 + (GPT_ENTRIES as u64 * 128) / SECTOR;

/// One partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GptPartition {
    /// Partition type GUID.
    pub type_guid: Uuid,
    /// Unique partition GUID.
    pub guid: Uuid,
    /// First LBA.
    pub first: u64,
    /// Last LBA (inclusive).
    pub last: u64,
    /// Attribute bits.
    pub attributes: u64,
    /// Name (up to 36 UTF-16 code units).
    pub name: String,
}

/// A GPT for a disk of `disk_sectors` sectors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gpt {
    /// Disk GUID.
    pub disk_guid: Uuid,
    /// Disk size in sectors.
    pub disk_sectors: u64,
    /// Partitions in entry order.
    pub partitions: Vec<GptPartition>,
}

impl Gpt {
    /// First LBA a partition may use.
    pub fn first_usable(&self) -> u64 {
        1 + GPT_SECTORS
    }

    /// Last LBA a partition may use.
    pub fn last_usable(&self) -> u64 {
        self.disk_sectors - 1 - GPT_SECTORS
    }

    fn entries(&self) -> Vec<u8> {
        let mut a = vec![0u8; GPT_ENTRIES * 128];
        for (i, p) in self.partitions.iter().enumerate() {
            let e = &mut a[i * 128..(i + 1) * 128];
            e[0..16].copy_from_slice(&p.type_guid.to_guid_bytes()); // PartitionTypeGUID
            e[16..32].copy_from_slice(&p.guid.to_guid_bytes()); // UniquePartitionGUID
            put_u64(e, 32, p.first); // StartingLBA
            put_u64(e, 40, p.last); // EndingLBA
            put_u64(e, 48, p.attributes); // Attributes
            for (k, u) in p.name.encode_utf16().take(36).enumerate() {
                e[56 + 2 * k..58 + 2 * k].copy_from_slice(&u.to_le_bytes()); // PartitionName
            }
        }
        a
    }

    fn header(&self, my_lba: u64, alternate: u64, entries_lba: u64, entries_crc: u32) -> [u8; 512] {
        let mut h = [0u8; 512];
        h[0..8].copy_from_slice(b"EFI PART"); // Signature
        put_u32(&mut h, 8, 0x0001_0000); // Revision 1.0
        put_u32(&mut h, 12, 92); // HeaderSize
        put_u64(&mut h, 24, my_lba); // MyLBA
        put_u64(&mut h, 32, alternate); // AlternateLBA
        put_u64(&mut h, 40, self.first_usable()); // FirstUsableLBA
        put_u64(&mut h, 48, self.last_usable()); // LastUsableLBA
        h[56..72].copy_from_slice(&self.disk_guid.to_guid_bytes()); // DiskGUID
        put_u64(&mut h, 72, entries_lba); // PartitionEntryLBA
        put_u32(&mut h, 80, GPT_ENTRIES as u32); // NumberOfPartitionEntries
        put_u32(&mut h, 84, 128); // SizeOfPartitionEntry
        put_u32(&mut h, 88, entries_crc); // PartitionEntryArrayCRC32
        let crc = crc32fast::hash(&h[..92]); // HeaderCRC32 over the header with itself zero
        put_u32(&mut h, 16, crc);
        h
    }

    /// (byte offset, bytes) of the primary header+array (LBA 1–33) and the backup
    /// array+header (the last 33 sectors). The protective MBR is separate.
    pub fn encode(&self) -> [(u64, Vec<u8>); 2] {
        let entries = self.entries();
        let crc = crc32fast::hash(&entries);
        let last = self.disk_sectors - 1;
        let backup_entries = last - (GPT_SECTORS - 1);
        let mut primary = self.header(1, last, 2, crc).to_vec();
        primary.extend_from_slice(&entries);
        let mut backup = entries;
        backup.extend_from_slice(&self.header(last, 1, backup_entries, crc));
        [(SECTOR, primary), (backup_entries * SECTOR, backup)]
    }
}
