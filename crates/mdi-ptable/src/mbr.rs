//! The MBR: 446 bytes of boot code (disk signature at 440), four 16-byte partition
//! entries at 446, the 0x55AA signature at 510.

use crate::{chs, put_u16, put_u32};

/// One primary partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MbrPartition {
    /// Bootable flag (0x80).
    pub bootable: bool,
    /// Partition type byte (0x83 Linux, 0x0C FAT32 LBA, 0xEE GPT protective).
    pub kind: u8,
    /// First sector.
    pub start: u64,
    /// Sectors.
    pub sectors: u64,
}

/// A classic MBR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mbr {
    /// Disk signature (bytes 440–443).
    pub signature: u32,
    /// Up to four primary partitions.
    pub partitions: Vec<MbrPartition>,
}

impl Mbr {
    /// The protective MBR of a GPT disk of `disk_sectors` (UEFI §5.2.3).
    pub fn protective(disk_sectors: u64) -> Mbr {
        Mbr {
            signature: 0,
            partitions: vec![MbrPartition {
                bootable: false,
                kind: 0xEE,
                start: 1,
                sectors: (disk_sectors - 1).min(0xFFFF_FFFF),
            }],
        }
    }

    /// Encodes sector 0. `boot_code` (at most 440 bytes) goes first.
    pub fn encode(&self, boot_code: &[u8]) -> [u8; 512] {
        assert!(self.partitions.len() <= 4 && boot_code.len() <= 440);
        let mut b = [0u8; 512];
        b[..boot_code.len()].copy_from_slice(boot_code);
        put_u32(&mut b, 440, self.signature); // unique MBR disk signature
        for (i, p) in self.partitions.iter().enumerate() {
            let o = 446 + 16 * i;
            b[o] = if p.bootable { 0x80 } else { 0 }; // boot indicator
            let protective = p.kind == 0xEE;
            // The protective entry's CHS start is 0/0/2 and its end saturated (UEFI §5.2.3).
            let start_chs = if protective { [0x00, 0x02, 0x00] } else { chs(p.start) };
            let end_chs = if protective { [0xFF, 0xFF, 0xFF] } else { chs(p.start + p.sectors - 1) };
            b[o + 1..o + 4].copy_from_slice(&start_chs); // starting CHS
            b[o + 4] = p.kind; // OS type
            b[o + 5..o + 8].copy_from_slice(&end_chs); // ending CHS
            put_u32(&mut b, o + 8, p.start as u32); // starting LBA
            put_u32(&mut b, o + 12, p.sectors.min(0xFFFF_FFFF) as u32); // size in LBA
        }
        put_u16(&mut b, 510, 0xAA55); // signature 0x55, 0xAA
        b
    }
}
