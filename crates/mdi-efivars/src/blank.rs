//! A blank flash, formatted. Debian's `AAVMF_VARS.fd` (package qemu-efi-aarch64) is all
//! zeros: edk2's ArmVirtQemu firmware formats its variable flash at first boot. To write a
//! boot entry into it beforehand, we format it the same way first: an NV data firmware
//! volume of three 256 KiB areas (ArmVirtQemu.fdf: variable store, fault-tolerant-write
//! working block, spare area) with the header the firmware's flash driver writes, an empty
//! authenticated variable store, and an empty FTW working block; zeros after it, as in the
//! blank file.

use crate::error::{Error, Result};
use crate::le::{put_guid, put_u16, put_u32, put_u64};
use crate::Guid;

/// Each of the three areas (ArmVirtQemu.fdf: PcdFlashNvStorageVariableSize,
/// PcdFlashNvStorageFtwWorkingSize, PcdFlashNvStorageFtwSpareSize).
const AREA: usize = 0x40000;
/// EFI_FVB2_* attributes of the volume (read/write enabled and status, sticky write,
/// memory mapped, erase polarity 1, 16-byte alignment), as the enrolled Debian file has them.
const FV_ATTRIBUTES: u32 = 0x0000_0e36;
/// The volume header: 0x38 fixed bytes, one block-map run and its {0, 0} terminator.
const FV_HEADER_LEN: usize = 0x48;
/// edk2 MdeModulePkg/Include/Guid/SystemNvDataGuid.h: EDKII_WORKING_BLOCK_SIGNATURE_GUID.
const FTW_WORKING_BLOCK: Guid =
    Guid::from_fields(0x9e58292b, 0x7c68, 0x497d, [0xa0, 0xce, 0x65, 0x00, 0xfd, 0x9f, 0x1b, 0x95]);
/// EFI_FAULT_TOLERANT_WORKING_BLOCK_HEADER: signature, Crc, state byte + 3 reserved, WriteQueueSize.
const FTW_HEADER_LEN: usize = 0x20;

/// Whether `b` is a blank (all-zero) flash image.
pub fn is_blank(b: &[u8]) -> bool {
    !b.is_empty() && b.iter().all(|&x| x == 0)
}

/// The formatted, empty variable flash of QEMU's ArmVirt (aarch64 `virt`) firmware, `len`
/// bytes long (the pflash size, 64 MiB for Debian's file).
pub fn format_arm_virt(len: usize) -> Result<Vec<u8>> {
    if len < 3 * AREA {
        return Err(Error::NotVarStore(format!(
            "a blank store of {len} bytes is too small for ArmVirt's three 256 KiB areas"
        )));
    }
    let mut b = vec![0u8; len];
    b[..3 * AREA].fill(0xff); // erased flash
    let fv = &mut b[..FV_HEADER_LEN];
    fv[..0x10].fill(0); // ZeroVector
    put_guid(fv, 0x10, Guid::SYSTEM_NV_DATA_FV);
    put_u64(fv, 0x20, (3 * AREA) as u64); // FvLength
    fv[0x28..0x2c].copy_from_slice(b"_FVH");
    put_u32(fv, 0x2c, FV_ATTRIBUTES);
    put_u16(fv, 0x30, FV_HEADER_LEN as u16); // HeaderLength
    put_u16(fv, 0x32, 0); // Checksum, below
    put_u16(fv, 0x34, 0); // ExtHeaderOffset
    fv[0x36] = 0; // Reserved
    fv[0x37] = 2; // Revision
                  // Block map as ArmVirtQemu's flash driver writes it (NorFlashDxe,
                  // InitializeFvAndVariableStoreHeaders): the volume in flash blocks of 256 KiB, then the
                  // terminator. (Debian's enrolled file claims the whole 64 MiB bank here.)
    put_u32(fv, 0x38, 3);
    put_u32(fv, 0x3c, AREA as u32);
    put_u64(fv, 0x40, 0);
    let sum = crate::firmware_volume::checksum16(fv);
    put_u16(fv, 0x32, 0u16.wrapping_sub(sum));

    // VARIABLE_STORE_HEADER (edk2 VariableFormat.h): signature, Size, Format, State, 6 reserved.
    let vs = &mut b[FV_HEADER_LEN..FV_HEADER_LEN + 0x1c];
    put_guid(vs, 0, Guid::AUTHENTICATED_VARIABLE);
    put_u32(vs, 0x10, (AREA - FV_HEADER_LEN) as u32);
    vs[0x14] = 0x5a; // VARIABLE_STORE_FORMATTED
    vs[0x15] = 0xfe; // VARIABLE_STORE_HEALTHY
    vs[0x16..0x1c].fill(0);

    // The FTW working block: its CRC32 covers the header with Crc and the state byte
    // erased (0xff), then WorkingBlockValid is programmed (bit 0 cleared).
    let w = &mut b[AREA..AREA + FTW_HEADER_LEN];
    put_guid(w, 0, FTW_WORKING_BLOCK);
    w[0x10..0x18].fill(0xff);
    put_u64(w, 0x18, (AREA - FTW_HEADER_LEN) as u64); // WriteQueueSize
    let crc = crc32_ieee(w);
    put_u32(w, 0x10, crc);
    w[0x14] = 0xfe;
    Ok(b)
}

/// CRC-32 (IEEE 802.3, reflected, as edk2's CalculateCrc32).
fn crc32_ieee(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_as_an_empty_store() {
        let b = format_arm_virt(64 << 20).unwrap();
        let s = crate::VarStore::parse(&b).unwrap();
        assert!(s.is_authenticated());
        assert!(s.variables().is_empty());
        // Encoding an unchanged store gives the same bytes.
        assert_eq!(s.encode().unwrap(), b);
    }

    #[test]
    fn crc_matches_a_known_header() {
        // Debian's AAVMF_VARS.ms.fd working-block header, with Crc and state erased.
        let mut h = [0xffu8; 0x20];
        put_guid(&mut h, 0, FTW_WORKING_BLOCK);
        put_u64(&mut h, 0x18, 0x3ffe0);
        assert_eq!(crc32_ieee(&h), 0x86c6_e75b);
    }

    #[test]
    fn same_as_debians_enrolled_file_where_present() {
        // The enrolled file's headers equal ours but for the block map (its variables
        // differ, of course).
        let Ok(ms) = std::fs::read("/usr/share/AAVMF/AAVMF_VARS.ms.fd") else { return };
        let ours = format_arm_virt(ms.len()).unwrap();
        assert_eq!(ours[..0x32], ms[..0x32]); // up to the checksum: GUID, length, attributes
        assert_eq!(ours[FV_HEADER_LEN..FV_HEADER_LEN + 0x1c], ms[FV_HEADER_LEN..FV_HEADER_LEN + 0x1c]);
        assert_eq!(ours[AREA..AREA + FTW_HEADER_LEN], ms[AREA..AREA + FTW_HEADER_LEN]);
        assert_eq!(ours[3 * AREA..], ms[3 * AREA..]);
    }
}
