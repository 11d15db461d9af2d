//! Device paths (UEFI 2.10 §10.2 EFI_DEVICE_PATH_PROTOCOL, §10.3 device path nodes): a
//! list of nodes, each `Type u8, SubType u8, Length u16` (§10.3.1, Length counts the four
//! header bytes) and its body, closed by an End node. Only the nodes a boot entry on a
//! local disk needs: Hard Drive and File Path media nodes.

use crate::error::{invalid, Result};
use crate::le::{put_u16, put_u32, put_u64};
use crate::Guid;

/// Type of media device path nodes (§10.3.5).
const MEDIA_DEVICE_PATH: u8 = 0x04;
/// Media subtype: Hard Drive (§10.3.5.1).
const MEDIA_HARDDRIVE_DP: u8 = 0x01;
/// Media subtype: File Path (§10.3.5.4).
const MEDIA_FILEPATH_DP: u8 = 0x04;
/// End of Hardware Device Path type (§10.3.1).
const END_DEVICE_PATH_TYPE: u8 = 0x7f;
/// End Entire Device Path subtype (§10.3.1).
const END_ENTIRE_DEVICE_PATH_SUBTYPE: u8 = 0xff;
/// Length of the Hard Drive node: header 4 + 4 + 8 + 8 + 16 + 1 + 1 (§10.3.5.1 table).
const HARDDRIVE_LEN: usize = 42;

/// Which partition table a Hard Drive node's partition lives in, with that table's
/// identifier for it (§10.3.5.1 PartitionFormat / SignatureType / PartitionSignature).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartitionSignature {
    /// GPT (PartitionFormat 0x02, SignatureType 0x02): the partition's unique GUID.
    Gpt(Guid),
    /// MBR (PartitionFormat 0x01, SignatureType 0x01): the disk's 32-bit MBR signature
    /// (bytes 440..444 of the MBR).
    Mbr(u32),
}

/// A Hard Drive media node: one partition of a disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HardDrive {
    /// Entry number in the partition table, from 1.
    pub partition_number: u32,
    /// First logical block of the partition.
    pub partition_start: u64,
    /// Size of the partition in logical blocks.
    pub partition_size: u64,
    /// The partition table kind and identifier.
    pub signature: PartitionSignature,
}

/// One device path node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DevicePathNode {
    /// Media / Hard Drive (type 4, subtype 1).
    HardDrive(HardDrive),
    /// Media / File Path (type 4, subtype 4): a path like `\EFI\BOOT\BOOTX64.EFI`.
    FilePath(String),
}

impl HardDrive {
    fn encode_into(&self, out: &mut Vec<u8>) {
        let mut b = [0u8; HARDDRIVE_LEN];
        b[0x00] = MEDIA_DEVICE_PATH; // Type
        b[0x01] = MEDIA_HARDDRIVE_DP; // SubType
        put_u16(&mut b, 0x02, HARDDRIVE_LEN as u16); // Length
        put_u32(&mut b, 0x04, self.partition_number); // PartitionNumber
        put_u64(&mut b, 0x08, self.partition_start); // PartitionStart (LBA)
        put_u64(&mut b, 0x10, self.partition_size); // PartitionSize (LBAs)
        let (format, signature_type) = match self.signature {
            PartitionSignature::Gpt(guid) => {
                b[0x18..0x28].copy_from_slice(&guid.to_efi_bytes()); // PartitionSignature, EFI GUID order
                (0x02, 0x02)
            }
            PartitionSignature::Mbr(sig) => {
                put_u32(&mut b, 0x18, sig); // PartitionSignature: 4 bytes, then 12 zero bytes
                (0x01, 0x01)
            }
        };
        b[0x28] = format; // PartitionFormat
        b[0x29] = signature_type; // SignatureType
        out.extend_from_slice(&b);
    }
}

/// `s` as a NUL-terminated UCS-2 string (UEFI 2.10 §2.3.1: CHAR16 is UCS-2), little-endian.
pub(crate) fn ucs2_nul(what: &'static str, s: &str) -> Result<Vec<u8>> {
    if s.contains('\0') {
        return Err(invalid(what, format!("{s:?} contains NUL")));
    }
    if let Some(c) = s.chars().find(|c| u32::from(*c) > 0xffff) {
        return Err(invalid(what, format!("{s:?}: {c:?} is outside UCS-2 (the Basic Multilingual Plane)")));
    }
    let mut b: Vec<u8> = s.encode_utf16().flat_map(u16::to_le_bytes).collect();
    b.extend_from_slice(&[0, 0]);
    Ok(b)
}

/// Encodes `nodes` followed by the End Entire Device Path node.
///
/// # Errors
/// [`crate::Error::Invalid`] for an empty file path, one with NUL or characters outside
/// UCS-2, or one too long for a node's 16-bit length.
pub fn encode_device_path(nodes: &[DevicePathNode]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for node in nodes {
        match node {
            DevicePathNode::HardDrive(hd) => hd.encode_into(&mut out),
            DevicePathNode::FilePath(path) => {
                if path.is_empty() {
                    return Err(invalid("file path", "empty"));
                }
                let name = ucs2_nul("file path", path)?;
                let len = u16::try_from(4 + name.len())
                    .map_err(|_| invalid("file path", format!("{} characters is too long", path.len())))?;
                out.extend_from_slice(&[MEDIA_DEVICE_PATH, MEDIA_FILEPATH_DP]); // Type, SubType
                out.extend_from_slice(&len.to_le_bytes()); // Length
                out.extend_from_slice(&name); // PathName, NUL-terminated
            }
        }
    }
    out.extend_from_slice(&[END_DEVICE_PATH_TYPE, END_ENTIRE_DEVICE_PATH_SUBTYPE, 4, 0]); // Type, SubType, Length
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hard_drive_gpt_layout() {
        let guid = Guid::from_fields(0x1234_5678, 0x9abc, 0xdef0, [1, 2, 3, 4, 5, 6, 7, 8]);
        let hd = HardDrive {
            partition_number: 1,
            partition_start: 2048,
            partition_size: 0x0001_0000,
            signature: PartitionSignature::Gpt(guid),
        };
        let b = encode_device_path(&[DevicePathNode::HardDrive(hd)]).unwrap();
        let want: Vec<u8> = [
            &[0x04, 0x01, 42, 0][..],        // media, hard drive, length 42
            &[1, 0, 0, 0],                   // PartitionNumber
            &[0x00, 0x08, 0, 0, 0, 0, 0, 0], // PartitionStart 2048
            &[0, 0, 1, 0, 0, 0, 0, 0],       // PartitionSize 65536
            &[0x78, 0x56, 0x34, 0x12, 0xbc, 0x9a, 0xf0, 0xde, 1, 2, 3, 4, 5, 6, 7, 8], // GUID, EFI order
            &[0x02, 0x02],                   // GPT, GUID signature
            &[0x7f, 0xff, 4, 0],             // End
        ]
        .concat();
        assert_eq!(b, want);
    }

    #[test]
    fn hard_drive_mbr_layout() {
        let hd = HardDrive {
            partition_number: 2,
            partition_start: 63,
            partition_size: 100,
            signature: PartitionSignature::Mbr(0xdead_beef),
        };
        let b = encode_device_path(&[DevicePathNode::HardDrive(hd)]).unwrap();
        assert_eq!(&b[0x18..0x2a], &[0xef, 0xbe, 0xad, 0xde, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x01]);
    }

    #[test]
    fn file_path_layout() {
        let b = encode_device_path(&[DevicePathNode::FilePath(r"\A.EFI".into())]).unwrap();
        let want = [
            0x04, 0x04, 18, 0, // media, file path, 4 + 7 * 2
            b'\\', 0, b'A', 0, b'.', 0, b'E', 0, b'F', 0, b'I', 0, 0, 0, //
            0x7f, 0xff, 4, 0,
        ];
        assert_eq!(b, want);
    }

    #[test]
    fn rejects_paths_that_cannot_be_stored() {
        let enc = |p: &str| encode_device_path(&[DevicePathNode::FilePath(p.into())]).unwrap_err().to_string();
        assert!(enc("").contains("empty"));
        assert!(enc("\\a\0b").contains("NUL"));
        assert!(enc("\\\u{1F600}").contains("UCS-2"));
        assert!(enc(&"a".repeat(40000)).contains("too long"));
    }
}
