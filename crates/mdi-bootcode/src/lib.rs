//! GRUB's BIOS boot code, placed without `grub-install`/`grub-bios-setup`.
//!
//! A BIOS boots the first 440 bytes of the MBR (GRUB's `boot.img`), which loads the first
//! sector of `core.img` (`diskboot.img`) from the LBA patched into it, which in turn loads
//! the rest of core.img from the blocklist at the end of its own sector. Offsets are those
//! of GRUB 2's `include/grub/i386/pc/boot.h` and `diskboot.S`; they have not changed since
//! GRUB 2.00.
#![forbid(unsafe_code)]

/// Bytes of the MBR that hold boot code; the disk signature and partition table follow.
pub const MBR_CODE_LEN: usize = 440;
/// boot.img: the BIOS parameter block area, copied from the disk's existing sector 0
/// (GRUB_BOOT_MACHINE_BPB_START/END).
const BPB_START: usize = 0x03;
const BPB_END: usize = 0x5A;
/// boot.img: LBA of core.img's first sector, 8 bytes little-endian
/// (GRUB_BOOT_MACHINE_KERNEL_SECTOR).
const KERNEL_SECTOR: usize = 0x5C;
/// boot.img: the boot drive (GRUB_BOOT_MACHINE_BOOT_DRIVE); 0xFF means "the drive the
/// BIOS booted from".
const BOOT_DRIVE: usize = 0x64;
/// boot.img: a 2-byte short jump that skips the drive-number workaround
/// (GRUB_BOOT_MACHINE_DRIVE_CHECK); grub-bios-setup turns it into two NOPs for hard disks,
/// for BIOSes that pass a wrong drive number.
const DRIVE_CHECK: usize = 0x66;
/// diskboot.img: the first (and, for a contiguous core.img, only) blocklist entry sits at
/// the end of the sector, before nothing: start LBA (8 bytes), sector count (2), segment (2).
const BLOCKLIST: usize = 0x200 - 12;

const SECTOR: usize = 512;

/// Errors placing GRUB's boot code.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum BootcodeError {
    /// boot.img is not a 512-byte sector ending in 55 AA.
    #[error("boot.img is not GRUB's 512-byte boot sector ({0})")]
    BadBootImg(String),
    /// core.img is not a diskboot.img-headed image.
    #[error("core.img does not start with GRUB's diskboot sector ({0})")]
    BadCoreImg(String),
    /// core.img does not fit where it must go.
    #[error("core.img is {need} bytes but the space for it holds {have} bytes")]
    TooBig {
        /// core.img's size rounded to sectors.
        need: u64,
        /// The gap or BIOS boot partition size.
        have: u64,
    },
}

/// The MBR's boot code: boot.img with core.img's LBA set, as `grub-bios-setup` makes it.
/// `old_mbr` is the disk's current sector 0, whose BPB area is kept.
pub fn mbr_boot_code(
    boot_img: &[u8],
    old_mbr: &[u8; SECTOR],
    core_lba: u64,
) -> Result<[u8; MBR_CODE_LEN], BootcodeError> {
    if boot_img.len() != SECTOR || boot_img[510..] != [0x55, 0xAA] {
        return Err(BootcodeError::BadBootImg(format!("{} bytes", boot_img.len())));
    }
    if boot_img[DRIVE_CHECK] != 0xEB {
        return Err(BootcodeError::BadBootImg("no drive-check jump at 0x66".into()));
    }
    let mut code = [0u8; MBR_CODE_LEN];
    code.copy_from_slice(&boot_img[..MBR_CODE_LEN]);
    code[BPB_START..BPB_END].copy_from_slice(&old_mbr[BPB_START..BPB_END]);
    code[KERNEL_SECTOR..KERNEL_SECTOR + 8].copy_from_slice(&core_lba.to_le_bytes());
    code[BOOT_DRIVE] = 0xFF;
    code[DRIVE_CHECK] = 0x90;
    code[DRIVE_CHECK + 1] = 0x90;
    Ok(code)
}

/// core.img padded to whole sectors, its blocklist pointing at its own sectors when it is
/// written contiguously at `core_lba`, within `room` bytes.
pub fn place_core_img(core: &[u8], core_lba: u64, room: u64) -> Result<Vec<u8>, BootcodeError> {
    if core.len() <= SECTOR {
        return Err(BootcodeError::BadCoreImg(format!("{} bytes, not more than one sector", core.len())));
    }
    let mut core = core.to_vec();
    core.resize(core.len().next_multiple_of(SECTOR), 0);
    if core.len() as u64 > room {
        return Err(BootcodeError::TooBig { need: core.len() as u64, have: room });
    }
    let rest = (core.len() / SECTOR - 1) as u16;
    let entry = &mut core[BLOCKLIST..SECTOR];
    // The segment grub-mkimage writes (0x820) is where the rest is loaded; keep it.
    let segment = u16::from_le_bytes([entry[10], entry[11]]);
    if segment == 0 {
        return Err(BootcodeError::BadCoreImg("empty blocklist segment".into()));
    }
    entry[..8].copy_from_slice(&(core_lba + 1).to_le_bytes());
    entry[8..10].copy_from_slice(&rest.to_le_bytes());
    Ok(core)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_boot_img() -> Vec<u8> {
        let mut b = vec![0u8; 512];
        b[0] = 0xEB;
        b[DRIVE_CHECK] = 0xEB;
        b[DRIVE_CHECK + 1] = 0x05;
        b[510] = 0x55;
        b[511] = 0xAA;
        b
    }

    #[test]
    fn mbr_code_patches_the_fields() {
        let mut old = [0u8; 512];
        old[0x10] = 0x42;
        let c = mbr_boot_code(&fake_boot_img(), &old, 2048).unwrap();
        assert_eq!(&c[KERNEL_SECTOR..KERNEL_SECTOR + 8], &2048u64.to_le_bytes());
        assert_eq!(c[0x10], 0x42);
        assert_eq!(&c[DRIVE_CHECK..DRIVE_CHECK + 2], &[0x90, 0x90]);
        assert!(mbr_boot_code(&[0u8; 100], &old, 1).is_err());
    }

    #[test]
    fn core_blocklist_points_after_its_first_sector() {
        let mut core = vec![0u8; 3 * 512 + 7];
        core[BLOCKLIST + 10] = 0x20;
        core[BLOCKLIST + 11] = 0x08;
        let placed = place_core_img(&core, 2048, 1 << 20).unwrap();
        assert_eq!(placed.len(), 4 * 512);
        assert_eq!(&placed[BLOCKLIST..BLOCKLIST + 8], &2049u64.to_le_bytes());
        assert_eq!(&placed[BLOCKLIST + 8..BLOCKLIST + 10], &3u16.to_le_bytes());
        assert_eq!(place_core_img(&core, 1, 1024), Err(BootcodeError::TooBig { need: 2048, have: 1024 }));
    }
}
