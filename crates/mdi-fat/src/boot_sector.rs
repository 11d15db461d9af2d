//! The boot sector with its BIOS parameter block (FAT spec §3.1–3.3) and the FAT32
//! FSInfo sector (§5).

use crate::layout::{FatType, Layout};

/// Volume identity and placement fields of the boot sector.
pub struct Identity {
    pub volume_id: u32,
    pub label: [u8; 11],
    /// Sectors before the volume on the disk (BPB_HiddSec: the partition's first LBA).
    pub hidden_sectors: u32,
}

/// Encodes sector 0.
pub fn encode(l: &Layout, id: &Identity) -> [u8; 512] {
    let mut b = [0u8; 512];
    let fat32 = l.fat_type == FatType::Fat32;
    // BS_jmpBoot: a short jump over the BPB to a halt loop, and NOP.
    b[0..3].copy_from_slice(if fat32 { &[0xEB, 0x58, 0x90] } else { &[0xEB, 0x3C, 0x90] });
    b[3..11].copy_from_slice(b"MDI 0.1 "); // BS_OEMName
    b[11..13].copy_from_slice(&512u16.to_le_bytes()); // BPB_BytsPerSec
    b[13] = l.sectors_per_cluster as u8; // BPB_SecPerClus
    b[14..16].copy_from_slice(&(l.reserved_sectors as u16).to_le_bytes()); // BPB_RsvdSecCnt
    b[16] = 2; // BPB_NumFATs
    let root_entries: u16 = if fat32 { 0 } else { crate::layout::FAT16_ROOT_ENTRIES as u16 };
    b[17..19].copy_from_slice(&root_entries.to_le_bytes()); // BPB_RootEntCnt
    let (tot16, tot32) =
        if l.total_sectors < 0x10000 && !fat32 { (l.total_sectors as u16, 0u32) } else { (0, l.total_sectors as u32) };
    b[19..21].copy_from_slice(&tot16.to_le_bytes()); // BPB_TotSec16
    b[21] = 0xF8; // BPB_Media: fixed disk
    let fatsz16: u16 = if fat32 { 0 } else { l.fat_sectors as u16 };
    b[22..24].copy_from_slice(&fatsz16.to_le_bytes()); // BPB_FATSz16
    b[24..26].copy_from_slice(&63u16.to_le_bytes()); // BPB_SecPerTrk
    b[26..28].copy_from_slice(&255u16.to_le_bytes()); // BPB_NumHeads
    b[28..32].copy_from_slice(&id.hidden_sectors.to_le_bytes()); // BPB_HiddSec
    b[32..36].copy_from_slice(&tot32.to_le_bytes()); // BPB_TotSec32
    let ext = if fat32 {
        b[36..40].copy_from_slice(&(l.fat_sectors as u32).to_le_bytes()); // BPB_FATSz32
        b[40..42].copy_from_slice(&0u16.to_le_bytes()); // BPB_ExtFlags: both FATs mirrored
        b[42..44].copy_from_slice(&0u16.to_le_bytes()); // BPB_FSVer 0.0
        b[44..48].copy_from_slice(&2u32.to_le_bytes()); // BPB_RootClus
        b[48..50].copy_from_slice(&1u16.to_le_bytes()); // BPB_FSInfo
        b[50..52].copy_from_slice(&6u16.to_le_bytes()); // BPB_BkBootSec
        64
    } else {
        36
    };
    b[ext] = 0x80; // BS_DrvNum
    b[ext + 2] = 0x29; // BS_BootSig: the next three fields are present
    b[ext + 3..ext + 7].copy_from_slice(&id.volume_id.to_le_bytes()); // BS_VolID
    b[ext + 7..ext + 18].copy_from_slice(&id.label); // BS_VolLab
    b[ext + 18..ext + 26].copy_from_slice(if fat32 { b"FAT32   " } else { b"FAT16   " }); // BS_FilSysType
                                                                                          // Boot code: "int 0x18" (no bootable OS, try the next device), then halt.
    let code = ext + 26;
    b[code..code + 4].copy_from_slice(&[0xCD, 0x18, 0xEB, 0xFE]);
    b[510] = 0x55;
    b[511] = 0xAA;
    b
}

/// The FSInfo sector with the free-cluster count and the next-free hint.
pub fn fsinfo(free: u32, next_free: u32) -> [u8; 512] {
    let mut b = [0u8; 512];
    b[0..4].copy_from_slice(&0x4161_5252u32.to_le_bytes()); // FSI_LeadSig
    b[484..488].copy_from_slice(&0x6141_7272u32.to_le_bytes()); // FSI_StrucSig
    b[488..492].copy_from_slice(&free.to_le_bytes()); // FSI_Free_Count
    b[492..496].copy_from_slice(&next_free.to_le_bytes()); // FSI_Nxt_Free
    b[508..512].copy_from_slice(&0xAA55_0000u32.to_le_bytes()); // FSI_TrailSig
    b
}
