//! EFI_GUID (UEFI 2.10 appendix A, "GUID and Time Formats"): 128 bits stored as
//! `Data1: u32, Data2: u16, Data3: u16, Data4: [u8; 8]`, the first three fields
//! little-endian. RFC 4122 "string order" stores all fields big-endian, so the two orders
//! differ in the first 8 bytes.

use std::fmt;

/// A GUID held in EFI (on-disk, mixed-endian) byte order.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Guid([u8; 16]);

impl Guid {
    /// EFI_GLOBAL_VARIABLE (UEFI 2.10 §3.3): the vendor GUID of `Boot####`, `BootOrder`, ...
    pub const EFI_GLOBAL_VARIABLE: Guid =
        Guid::from_fields(0x8be4_df61, 0x93ca, 0x11d2, [0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c]);
    /// EFI_SYSTEM_NV_DATA_FV_GUID (edk2 MdePkg/Include/Guid/SystemNvDataGuid.h): the file
    /// system GUID of the firmware volume that holds the non-volatile variables.
    pub const SYSTEM_NV_DATA_FV: Guid =
        Guid::from_fields(0xfff1_2b8d, 0x7696, 0x4c8b, [0xa9, 0x85, 0x27, 0x47, 0x07, 0x5b, 0x4f, 0x50]);
    /// gEfiAuthenticatedVariableGuid (edk2 MdeModulePkg/Include/Guid/VariableFormat.h): a
    /// variable store whose headers are AUTHENTICATED_VARIABLE_HEADER.
    pub const AUTHENTICATED_VARIABLE: Guid =
        Guid::from_fields(0xaaf3_2c78, 0x947b, 0x439a, [0xa1, 0x80, 0x2e, 0x14, 0x4e, 0xc3, 0x77, 0x92]);
    /// gEfiVariableGuid (same header): a variable store whose headers are the plain
    /// VARIABLE_HEADER.
    pub const VARIABLE: Guid =
        Guid::from_fields(0xddcf_3616, 0x3275, 0x4164, [0x98, 0xb6, 0xfe, 0x85, 0x70, 0x7f, 0xfe, 0x7d]);

    /// A GUID from its four C fields, as GUIDs are written in the UEFI spec and edk2 headers.
    pub const fn from_fields(data1: u32, data2: u16, data3: u16, data4: [u8; 8]) -> Guid {
        let a = data1.to_le_bytes();
        let b = data2.to_le_bytes();
        let c = data3.to_le_bytes();
        let d = data4;
        Guid([a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
    }

    /// A GUID from its 16 bytes in EFI (on-disk) order.
    pub const fn from_efi_bytes(bytes: [u8; 16]) -> Guid {
        Guid(bytes)
    }

    /// A GUID from its 16 bytes in RFC 4122 string order (what `mdi_ident::Uuid` holds).
    pub const fn from_uuid_bytes(b: [u8; 16]) -> Guid {
        Guid([b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]])
    }

    /// The 16 bytes in EFI (on-disk) order.
    pub const fn to_efi_bytes(self) -> [u8; 16] {
        self.0
    }

    /// The 16 bytes in RFC 4122 string order. The swap is its own inverse.
    pub const fn to_uuid_bytes(self) -> [u8; 16] {
        Guid::from_uuid_bytes(self.0).0
    }
}

impl fmt::Display for Guid {
    /// The canonical lowercase text form, e.g. `8be4df61-93ca-11d2-aa0d-00e098032b8c`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let u = self.to_uuid_bytes();
        for (i, b) in u.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_variable_guid_bytes_and_text() {
        // The on-disk bytes as edk2 lays out { 0x8BE4DF61, 0x93CA, 0x11d2, { 0xAA, ... } }.
        assert_eq!(
            Guid::EFI_GLOBAL_VARIABLE.to_efi_bytes(),
            [0x61, 0xdf, 0xe4, 0x8b, 0xca, 0x93, 0xd2, 0x11, 0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c]
        );
        assert_eq!(Guid::EFI_GLOBAL_VARIABLE.to_string(), "8be4df61-93ca-11d2-aa0d-00e098032b8c");
    }

    #[test]
    fn uuid_order_round_trip() {
        let uuid = [0xf2, 0x22, 0x51, 0x3b, 0xde, 0xd1, 0x49, 0xfa, 0xb5, 0x91, 0x20, 0xce, 0x86, 0xa2, 0xfe, 0x7f];
        let g = Guid::from_uuid_bytes(uuid);
        assert_eq!(&g.to_efi_bytes()[..8], &[0x3b, 0x51, 0x22, 0xf2, 0xd1, 0xde, 0xfa, 0x49]);
        assert_eq!(g.to_uuid_bytes(), uuid);
        assert_eq!(g.to_string(), "f222513b-ded1-49fa-b591-20ce86a2fe7f");
    }
}
