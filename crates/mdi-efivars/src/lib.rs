//! Deterministic edits of edk2/OVMF UEFI variable-store files (`OVMF_VARS*.fd`), so an
//! image can ship an `efi-vars.fd` whose boot entry already points at its loader.
//!
//! The file is an edk2 NV data firmware volume (PI 1.8 vol. 3 §3.2.1) holding a variable
//! store (edk2 `VariableFormat.h`), followed by the fault-tolerant-write working block and
//! spare area, which we copy unchanged. [`VarStore`] decodes it, changes variables and
//! encodes it again at the same size; with no change the output is the input, byte for byte.
//! The first change rewrites the variable list compactly (live variables only, in their
//! order, new ones appended), as the firmware's own reclaim does. Nothing comes from the
//! clock: new variables carry a zero timestamp, MonotonicCount and PubKeyIndex.
//!
//! [`add_boot_entry`] is the one call an image build needs: a `Boot####` load option
//! (UEFI 2.10 §3.1.3) for a file on a GPT partition, placed first in `BootOrder`.
//!
//! ```no_run
//! let template = std::fs::read("/usr/share/OVMF/OVMF_VARS_4M.fd")?;
//! let entry = mdi_efivars::BootEntry {
//!     number: 1,
//!     description: "NixOS".into(),
//!     partition_number: 1,
//!     partition_start_lba: 2048,
//!     partition_size_lba: 524_288,
//!     partition_guid: [0x11; 16], // RFC 4122 order, e.g. mdi_ident::Uuid.0
//!     loader_path: r"\EFI\systemd\systemd-bootx64.efi".into(),
//! };
//! std::fs::write("efi-vars.fd", mdi_efivars::add_boot_entry(&template, &entry)?)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod blank;
mod device_path;
mod error;
mod firmware_volume;
mod guid;
mod le;
mod load_option;
mod variable_store;

pub use blank::{format_arm_virt, is_blank};
pub use device_path::{encode_device_path, DevicePathNode, HardDrive, PartitionSignature};
pub use error::{Error, Result};
pub use guid::Guid;
pub use load_option::{LoadOption, LOAD_OPTION_ACTIVE};
pub use variable_store::{VarStore, Variable};

/// EFI_VARIABLE_* attribute bits (UEFI 2.10 §8.2.1, GetVariable()).
pub mod attributes {
    /// Kept across resets.
    pub const NON_VOLATILE: u32 = 0x01;
    /// Visible to boot services.
    pub const BOOTSERVICE_ACCESS: u32 = 0x02;
    /// Visible at runtime (needs BOOTSERVICE_ACCESS).
    pub const RUNTIME_ACCESS: u32 = 0x04;
    /// A hardware error record.
    pub const HARDWARE_ERROR_RECORD: u32 = 0x08;
    /// Count-based authenticated writes (deprecated).
    pub const AUTHENTICATED_WRITE_ACCESS: u32 = 0x10;
    /// Time-based authenticated writes (PK, KEK, db, dbx).
    pub const TIME_BASED_AUTHENTICATED_WRITE_ACCESS: u32 = 0x20;
    /// A SetVariable() flag, never stored.
    pub const APPEND_WRITE: u32 = 0x40;
    /// Enhanced authenticated access.
    pub const ENHANCED_AUTHENTICATED_ACCESS: u32 = 0x80;
    /// The bits that need the authenticated variable header.
    pub(crate) const AUTHENTICATED: u32 =
        AUTHENTICATED_WRITE_ACCESS | TIME_BASED_AUTHENTICATED_WRITE_ACCESS | ENHANCED_AUTHENTICATED_ACCESS;
    /// Every bit a stored variable may have.
    pub(crate) const STORABLE: u32 =
        NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS | HARDWARE_ERROR_RECORD | AUTHENTICATED;
    /// NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS, what `Boot####` and `BootOrder` have.
    pub const NV_BS_RT: u32 = NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS;
}

/// A boot entry for a loader on a GPT partition (512-byte logical blocks assumed by the
/// caller's LBA values).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootEntry {
    /// The option number: the variable is `Boot` + 4 uppercase hex digits (§3.1.1).
    pub number: u16,
    /// What the firmware's boot menu shows, e.g. `NixOS`.
    pub description: String,
    /// GPT entry number of the partition, from 1.
    pub partition_number: u32,
    /// First LBA of the partition.
    pub partition_start_lba: u64,
    /// Size of the partition in LBAs.
    pub partition_size_lba: u64,
    /// The partition's unique GUID in RFC 4122 byte order (`mdi_ident::Uuid.0`).
    pub partition_guid: [u8; 16],
    /// The loader's path on that partition, with backslashes, e.g.
    /// `\EFI\systemd\systemd-bootx64.efi`.
    pub loader_path: String,
}

impl BootEntry {
    /// The variable name, `Boot####`.
    pub fn variable_name(&self) -> String {
        format!("Boot{:04X}", self.number)
    }

    /// The `EFI_LOAD_OPTION` value: active, HD(partition)/File(loader path), no optional data.
    ///
    /// # Errors
    /// [`Error::Invalid`] for partition number 0, an empty partition, or a loader path that
    /// does not start with `\`, contains `/` or cannot be stored as UCS-2.
    pub fn load_option(&self) -> Result<Vec<u8>> {
        if self.partition_number == 0 {
            return Err(Error::Invalid { what: "partition number", why: "GPT entries count from 1".into() });
        }
        if self.partition_size_lba == 0 {
            return Err(Error::Invalid { what: "partition size", why: "0 LBAs".into() });
        }
        if !self.loader_path.starts_with('\\') || self.loader_path.contains('/') {
            return Err(Error::Invalid {
                what: "loader path",
                why: format!(
                    "{:?}: give an absolute path with backslashes, like \\EFI\\BOOT\\BOOTX64.EFI",
                    self.loader_path
                ),
            });
        }
        let hd = HardDrive {
            partition_number: self.partition_number,
            partition_start: self.partition_start_lba,
            partition_size: self.partition_size_lba,
            signature: PartitionSignature::Gpt(Guid::from_uuid_bytes(self.partition_guid)),
        };
        let path =
            encode_device_path(&[DevicePathNode::HardDrive(hd), DevicePathNode::FilePath(self.loader_path.clone())])?;
        LoadOption {
            attributes: LOAD_OPTION_ACTIVE,
            description: self.description.clone(),
            file_path_list: path,
            optional_data: Vec::new(),
        }
        .encode()
    }
}

/// `template` (an `OVMF_VARS*.fd` file's bytes) with `entry` written as `Boot####` and
/// put first in `BootOrder`, followed by the numbers the template's `BootOrder` already
/// had (without a duplicate of `entry.number`). Same size as `template`.
///
/// # Errors
/// Everything [`VarStore::parse`], [`BootEntry::load_option`] and [`VarStore::encode`]
/// report, and [`Error::Corrupt`] for an existing `BootOrder` of odd length.
pub fn add_boot_entry(template: &[u8], entry: &BootEntry) -> Result<Vec<u8>> {
    let mut store = VarStore::parse(template)?;
    let option = entry.load_option()?;
    let mut order = vec![entry.number];
    if let Some(old) = store.get("BootOrder", Guid::EFI_GLOBAL_VARIABLE) {
        if old.data.len() % 2 != 0 {
            return Err(Error::Corrupt {
                offset: 0,
                what: format!("the existing BootOrder has {} bytes, not a list of 16-bit numbers", old.data.len()),
            });
        }
        let numbers = old.data.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]));
        order.extend(numbers.filter(|&n| n != entry.number));
    }
    store.set(&entry.variable_name(), Guid::EFI_GLOBAL_VARIABLE, attributes::NV_BS_RT, option)?;
    let order: Vec<u8> = order.into_iter().flat_map(u16::to_le_bytes).collect();
    store.set("BootOrder", Guid::EFI_GLOBAL_VARIABLE, attributes::NV_BS_RT, order)?;
    store.encode()
}

#[cfg(test)]
mod tests {
    use super::*;
    use variable_store::tests::blank;

    fn entry(number: u16) -> BootEntry {
        BootEntry {
            number,
            description: "NixOS".into(),
            partition_number: 1,
            partition_start_lba: 2048,
            partition_size_lba: 1_048_576,
            partition_guid: [
                0xf2, 0x22, 0x51, 0x3b, 0xde, 0xd1, 0x49, 0xfa, 0xb5, 0x91, 0x20, 0xce, 0x86, 0xa2, 0xfe, 0x7f,
            ],
            loader_path: r"\EFI\systemd\systemd-bootx64.efi".into(),
        }
    }

    #[test]
    fn boot_entry_bytes() {
        let e = entry(0x1a);
        assert_eq!(e.variable_name(), "Boot001A");
        let b = e.load_option().unwrap();
        let path: Vec<u8> = e.loader_path.encode_utf16().flat_map(u16::to_le_bytes).chain([0, 0]).collect();
        let file_node_len = 4 + path.len();
        assert_eq!(&b[..4], &[1, 0, 0, 0]); // LOAD_OPTION_ACTIVE
        assert_eq!(usize::from(u16::from_le_bytes([b[4], b[5]])), 42 + file_node_len + 4); // FilePathListLength
        assert_eq!(&b[6..18], &[b'N', 0, b'i', 0, b'x', 0, b'O', 0, b'S', 0, 0, 0]);
        let hd = &b[18..60];
        assert_eq!(&hd[..8], &[4, 1, 42, 0, 1, 0, 0, 0]);
        assert_eq!(&hd[0x18..0x20], &[0x3b, 0x51, 0x22, 0xf2, 0xd1, 0xde, 0xfa, 0x49]); // mixed-endian GUID
        assert_eq!(&b[60..64], &[4, 4, file_node_len as u8, 0]);
        assert_eq!(&b[64..64 + path.len()], &path[..]);
        assert_eq!(&b[b.len() - 4..], &[0x7f, 0xff, 4, 0]);
    }

    #[test]
    fn boot_order_puts_the_new_entry_first_without_duplicates() {
        let mut s = VarStore::parse(&blank(Guid::AUTHENTICATED_VARIABLE)).unwrap();
        s.set("BootOrder", Guid::EFI_GLOBAL_VARIABLE, 7, vec![0, 0, 2, 0, 1, 0]).unwrap();
        let out = add_boot_entry(&s.encode().unwrap(), &entry(1)).unwrap();
        let s = VarStore::parse(&out).unwrap();
        assert_eq!(s.get("BootOrder", Guid::EFI_GLOBAL_VARIABLE).unwrap().data, [1, 0, 0, 0, 2, 0]);
        let names: Vec<String> = s.variables().into_iter().map(|v| v.name).collect();
        assert_eq!(names, ["BootOrder", "Boot0001"]);
    }

    #[test]
    fn empty_store_gets_entry_then_order() {
        let out = add_boot_entry(&blank(Guid::AUTHENTICATED_VARIABLE), &entry(1)).unwrap();
        let vars = VarStore::parse(&out).unwrap().variables();
        assert_eq!(vars.len(), 2);
        assert_eq!((vars[0].name.as_str(), vars[0].attributes), ("Boot0001", 7));
        assert_eq!(vars[0].data, entry(1).load_option().unwrap());
        assert_eq!((vars[1].name.as_str(), &vars[1].data[..]), ("BootOrder", &[1u8, 0][..]));
        // Deterministic: same input, same bytes.
        assert_eq!(out, add_boot_entry(&blank(Guid::AUTHENTICATED_VARIABLE), &entry(1)).unwrap());
    }

    #[test]
    fn rejects_bad_entries() {
        let t = blank(Guid::AUTHENTICATED_VARIABLE);
        let err = |f: &dyn Fn(&mut BootEntry)| {
            let mut e = entry(1);
            f(&mut e);
            add_boot_entry(&t, &e).unwrap_err().to_string()
        };
        assert!(err(&|e| e.partition_number = 0).contains("count from 1"));
        assert!(err(&|e| e.partition_size_lba = 0).contains("0 LBAs"));
        assert!(err(&|e| e.loader_path = "/EFI/BOOT/BOOTX64.EFI".into()).contains("backslashes"));
        assert!(err(&|e| e.description = "a\0".into()).contains("NUL"));
        assert!(add_boot_entry(&t[..100], &entry(1)).unwrap_err().to_string().contains("FvLength"));
    }

    #[test]
    fn odd_boot_order_is_corrupt() {
        let mut s = VarStore::parse(&blank(Guid::AUTHENTICATED_VARIABLE)).unwrap();
        s.set("BootOrder", Guid::EFI_GLOBAL_VARIABLE, 7, vec![1, 0, 2]).unwrap();
        let err = add_boot_entry(&s.encode().unwrap(), &entry(1)).unwrap_err();
        assert!(err.to_string().contains("BootOrder has 3 bytes"), "{err}");
    }
}
