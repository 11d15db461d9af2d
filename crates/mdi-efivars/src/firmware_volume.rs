//! EFI_FIRMWARE_VOLUME_HEADER: the header in front of the variable store. PI specification
//! 1.8, volume 3, §3.2.1 "Firmware Volume Header"; edk2 MdePkg/Include/Pi/PiFirmwareVolume.h.
//!
//! ```text
//! 0x00 ZeroVector[16]      0x28 Signature "_FVH"      0x34 ExtHeaderOffset u16
//! 0x10 FileSystemGuid      0x2c Attributes u32        0x36 Reserved u8
//! 0x20 FvLength u64        0x30 HeaderLength u16      0x37 Revision u8
//!                          0x32 Checksum u16          0x38 BlockMap[] {NumBlocks u32, Length u32}, ends {0, 0}
//! ```
//! We never change the volume; the header is decoded to find and check the variable store
//! and re-encoded field by field (checksum recomputed) when the file is written.

use crate::error::{corrupt, Error, Result};
use crate::le::{array, put_guid, put_u16, put_u32, put_u64, u16_at, u32_at, u64_at};
use crate::Guid;

/// Bytes before the block map.
const FIXED_LEN: usize = 0x38;
/// One EFI_FV_BLOCK_MAP_ENTRY.
const MAP_ENTRY_LEN: usize = 8;
/// `Signature` (§3.2.1: EFI_FVH_SIGNATURE = SIGNATURE_32('_','F','V','H')).
const FVH_SIGNATURE: [u8; 4] = *b"_FVH";
/// `Revision` (§3.2.1: EFI_FVH_REVISION).
const FVH_REVISION: u8 = 2;

/// A decoded firmware volume header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FirmwareVolumeHeader {
    zero_vector: [u8; 16],
    file_system_guid: Guid,
    /// Length of the whole volume, header included, in bytes.
    fv_length: u64,
    attributes: u32,
    ext_header_offset: u16,
    reserved: u8,
    revision: u8,
    /// (NumBlocks, Length in bytes) runs, without the {0, 0} terminator.
    block_map: Vec<(u32, u32)>,
    /// Bytes between the block-map terminator and `HeaderLength`, kept as they are.
    trailer: Vec<u8>,
}

impl FirmwareVolumeHeader {
    /// Decodes and checks the header at the start of `b` (the whole file).
    pub(crate) fn parse(b: &[u8]) -> Result<Self> {
        let Some(f) = array::<FIXED_LEN>(b, 0) else {
            return Err(Error::NotVarStore(format!("only {} bytes, too short for a firmware volume header", b.len())));
        };
        if f[0x28..0x2c] != FVH_SIGNATURE {
            return Err(Error::NotVarStore("no firmware volume signature '_FVH' at byte 0x28".into()));
        }
        let file_system_guid = crate::le::guid_at(f, 0x10); // FileSystemGuid
        if file_system_guid != Guid::SYSTEM_NV_DATA_FV {
            return Err(Error::NotVarStore(format!(
                "the firmware volume's file system GUID is {file_system_guid}, not the system NV data GUID {}",
                Guid::SYSTEM_NV_DATA_FV
            )));
        }
        let mut zero_vector = [0u8; 16];
        zero_vector.copy_from_slice(&f[0x00..0x10]); // ZeroVector
        let fv_length = u64_at(f, 0x20); // FvLength
        let attributes = u32_at(f, 0x2c); // Attributes (EFI_FVB_ATTRIBUTES_2)
        let header_length = usize::from(u16_at(f, 0x30)); // HeaderLength
        let ext_header_offset = u16_at(f, 0x34); // ExtHeaderOffset
        let reserved = f[0x36]; // Reserved[1]
        let revision = f[0x37]; // Revision

        if revision != FVH_REVISION {
            return Err(Error::Unsupported(format!(
                "firmware volume header revision {revision}, expected {FVH_REVISION}"
            )));
        }
        if header_length < FIXED_LEN + 2 * MAP_ENTRY_LEN || header_length % 2 != 0 || header_length > b.len() {
            return Err(corrupt(0x30, format!("firmware volume HeaderLength {header_length:#x} is impossible")));
        }
        let header = &b[..header_length];
        if checksum16(header) != 0 {
            return Err(corrupt(0x32, "the firmware volume header's 16-bit checksum does not sum to zero"));
        }
        if fv_length > b.len() as u64 || fv_length < header_length as u64 {
            return Err(corrupt(
                0x20,
                format!("firmware volume FvLength is {fv_length:#x} bytes but the file has {:#x}", b.len()),
            ));
        }
        if ext_header_offset != 0 {
            return Err(Error::Unsupported(format!(
                "the firmware volume has an extended header (ExtHeaderOffset {ext_header_offset:#x}), which OVMF variable stores do not have"
            )));
        }

        let mut block_map = Vec::new();
        let mut off = FIXED_LEN;
        let mut mapped: u64 = 0;
        loop {
            let Some(e) = array::<MAP_ENTRY_LEN>(header, off) else {
                return Err(corrupt(off, "the firmware volume block map has no {0, 0} terminator within HeaderLength"));
            };
            let (num_blocks, length) = (u32_at(e, 0), u32_at(e, 4));
            off += MAP_ENTRY_LEN;
            if num_blocks == 0 && length == 0 {
                break;
            }
            // u32 * u32 cannot overflow u64; the sum of at most 8 K entries cannot either.
            mapped += u64::from(num_blocks) * u64::from(length);
            block_map.push((num_blocks, length));
        }
        if mapped != fv_length {
            return Err(corrupt(
                FIXED_LEN,
                format!("the firmware volume block map covers {mapped:#x} bytes, FvLength says {fv_length:#x}"),
            ));
        }
        let trailer = header[off..].to_vec();
        Ok(FirmwareVolumeHeader {
            zero_vector,
            file_system_guid,
            fv_length,
            attributes,
            ext_header_offset,
            reserved,
            revision,
            block_map,
            trailer,
        })
    }

    /// `HeaderLength`: where the variable store starts, in bytes from the volume start.
    pub(crate) fn header_length(&self) -> usize {
        FIXED_LEN + (self.block_map.len() + 1) * MAP_ENTRY_LEN + self.trailer.len()
    }

    /// `FvLength` in bytes.
    pub(crate) fn fv_length(&self) -> u64 {
        self.fv_length
    }

    /// The header, `HeaderLength` bytes, with its checksum.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let header_length = self.header_length();
        let mut b = vec![0u8; header_length];
        b[0x00..0x10].copy_from_slice(&self.zero_vector); // ZeroVector
        put_guid(&mut b, 0x10, self.file_system_guid); // FileSystemGuid
        put_u64(&mut b, 0x20, self.fv_length); // FvLength
        b[0x28..0x2c].copy_from_slice(&FVH_SIGNATURE); // Signature
        put_u32(&mut b, 0x2c, self.attributes); // Attributes
        put_u16(&mut b, 0x30, header_length as u16); // HeaderLength (parsed from a u16)
        put_u16(&mut b, 0x32, 0); // Checksum, filled in below
        put_u16(&mut b, 0x34, self.ext_header_offset); // ExtHeaderOffset
        b[0x36] = self.reserved; // Reserved[1]
        b[0x37] = self.revision; // Revision
        let mut off = FIXED_LEN;
        for &(num_blocks, length) in &self.block_map {
            put_u32(&mut b, off, num_blocks); // BlockMap[i].NumBlocks
            put_u32(&mut b, off + 4, length); // BlockMap[i].Length
            off += MAP_ENTRY_LEN;
        }
        off += MAP_ENTRY_LEN; // the {0, 0} terminator, already zero
        b[off..].copy_from_slice(&self.trailer);
        // §3.2.1: "A valid header sums to zero" (16-bit words, HeaderLength bytes).
        let sum = checksum16(&b);
        put_u16(&mut b, 0x32, 0u16.wrapping_sub(sum));
        b
    }
}

/// The wrapping sum of the little-endian 16-bit words of `b` (`b` has even length).
pub(crate) fn checksum16(b: &[u8]) -> u16 {
    b.chunks_exact(2).fold(0u16, |s, w| s.wrapping_add(u16::from_le_bytes([w[0], w[1]])))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A header as OVMF's build writes it (OvmfPkg/VarStore.fdf.inc): one run of `blocks`
    /// 4 KiB blocks, attributes 0x0004feff.
    pub(crate) fn ovmf_like(blocks: u32) -> Vec<u8> {
        FirmwareVolumeHeader {
            zero_vector: [0; 16],
            file_system_guid: Guid::SYSTEM_NV_DATA_FV,
            fv_length: u64::from(blocks) * 4096,
            attributes: 0x0004_feff,
            ext_header_offset: 0,
            reserved: 0,
            revision: 2,
            block_map: vec![(blocks, 4096)],
            trailer: Vec::new(),
        }
        .encode()
    }

    /// Layout guard: the first 0x48 bytes of Debian's OVMF_VARS.fd (128 KiB, 32 blocks),
    /// as `xxd` shows them.
    #[test]
    fn encodes_the_ovmf_header_byte_for_byte() {
        let want: [u8; 0x48] = [
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // ZeroVector
            0x8d, 0x2b, 0xf1, 0xff, 0x96, 0x76, 0x8b, 0x4c, 0xa9, 0x85, 0x27, 0x47, 0x07, 0x5b, 0x4f,
            0x50, // GUID
            0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, // FvLength 0x20000
            0x5f, 0x46, 0x56, 0x48, 0xff, 0xfe, 0x04, 0x00, // "_FVH", Attributes
            0x48, 0x00, 0x19, 0xf9, 0x00, 0x00, 0x00, 0x02, // HeaderLength, Checksum, ExtHeaderOffset, Rsvd, Rev
            0x20, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, // BlockMap[0] = {32, 4096}
            0, 0, 0, 0, 0, 0, 0, 0, // terminator
        ];
        let got = ovmf_like(32);
        assert_eq!(got, want);
        let parsed = FirmwareVolumeHeader::parse(&[got.clone(), vec![0xff; 0x20000 - 0x48]].concat()).unwrap();
        assert_eq!(parsed.header_length(), 0x48);
        assert_eq!(parsed.encode(), got);
    }

    fn parse_err(b: &[u8]) -> String {
        FirmwareVolumeHeader::parse(b).unwrap_err().to_string()
    }

    #[test]
    fn rejects_each_broken_field() {
        let good = [ovmf_like(2), vec![0xff; 8192 - 0x48]].concat();
        assert!(FirmwareVolumeHeader::parse(&good).is_ok());

        assert!(parse_err(&good[..0x20]).contains("too short"));
        let mut b = good.clone();
        b[0x28] = b'X';
        assert!(parse_err(&b).contains("'_FVH'"));
        let mut b = good.clone();
        b[0x10] ^= 1;
        assert!(parse_err(&b).contains("not the system NV data GUID"));
        let mut b = good.clone();
        b[0x37] = 1;
        assert!(parse_err(&b).contains("revision 1"));
        let mut b = good.clone();
        b[0x2c] ^= 1; // any byte: the checksum no longer holds
        assert!(parse_err(&b).contains("checksum"));
        let mut b = good.clone();
        b[0x30] = 0x40;
        assert!(parse_err(&b).contains("HeaderLength"));
        assert!(parse_err(&good[..4096]).contains("FvLength"));
    }

    #[test]
    fn rejects_a_block_map_that_disagrees_with_fv_length() {
        let mut h = FirmwareVolumeHeader::parse(&[ovmf_like(2), vec![0xff; 8192 - 0x48]].concat()).unwrap();
        h.block_map = vec![(1, 4096)];
        let b = [h.encode(), vec![0xff; 8192 - 0x48]].concat();
        assert!(parse_err(&b).contains("block map covers 0x1000"));
    }
}
