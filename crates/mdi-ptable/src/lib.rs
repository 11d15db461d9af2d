//! Partition tables: the classic MBR and GPT with its protective MBR, encoded field by
//! field from a plan. Sectors are 512 bytes. References: UEFI specification 2.10 §5
//! ("GUID Partition Table Disk Layout"); the MBR layout of §5.2.1 (legacy MBR) and
//! §5.2.3 (protective MBR).
#![forbid(unsafe_code)]

mod gpt;
mod mbr;
pub mod read;

pub use gpt::{Gpt, GptPartition, GPT_ENTRIES, GPT_SECTORS};
pub use mbr::{Mbr, MbrPartition};

/// Sector size in bytes.
pub const SECTOR: u64 = 512;

/// Well-known partition type GUIDs.
pub mod types {
    /// EFI System Partition.
    pub const ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
    /// BIOS boot partition (GRUB's core.img on GPT).
    pub const BIOS_BOOT: &str = "21686148-6449-6E6F-744E-656564454649";
    /// Linux filesystem data.
    pub const LINUX_FS: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
    /// Extended Boot Loader Partition (XBOOTLDR).
    pub const XBOOTLDR: &str = "BC13C2FF-59E6-4262-A352-B275FD6F7172";
}

fn put_u16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}
fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// CHS address for an LBA in the conventional 255-head, 63-sector geometry, saturated to
/// (1023, 254, 63) past what CHS can express, packed as the 3 MBR bytes.
fn chs(lba: u64) -> [u8; 3] {
    const HEADS: u64 = 255;
    const SPT: u64 = 63;
    let c = lba / (HEADS * SPT);
    if c > 1023 {
        return [0xFE, 0xFF, 0xFF];
    }
    let h = (lba / SPT) % HEADS;
    let s = lba % SPT + 1;
    [h as u8, (s as u8) | (((c >> 8) as u8) << 6), c as u8]
}
