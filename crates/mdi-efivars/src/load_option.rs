//! EFI_LOAD_OPTION, the value of `Boot####` variables (UEFI 2.10 §3.1.3 "Load Options"):
//!
//! ```text
//! 0x00 Attributes u32            LOAD_OPTION_ACTIVE = 0x1, ...
//! 0x04 FilePathListLength u16    bytes of FilePathList
//! 0x06 Description               CHAR16, NUL-terminated
//!      FilePathList              EFI_DEVICE_PATH_PROTOCOL list, End node included
//!      OptionalData              the rest of the variable
//! ```

use crate::device_path::ucs2_nul;
use crate::error::{invalid, Result};

/// LOAD_OPTION_ACTIVE (§3.1.3): the boot manager tries this option.
pub const LOAD_OPTION_ACTIVE: u32 = 0x0000_0001;

/// A load option, to encode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadOption {
    /// LOAD_OPTION_* bits.
    pub attributes: u32,
    /// What the boot menu shows.
    pub description: String,
    /// An encoded device path (see [`crate::encode_device_path`]), End node included.
    pub file_path_list: Vec<u8>,
    /// Bytes passed to the loaded image; usually empty.
    pub optional_data: Vec<u8>,
}

impl LoadOption {
    /// The variable value.
    ///
    /// # Errors
    /// [`crate::Error::Invalid`] for a description with NUL or characters outside UCS-2,
    /// or a device path longer than FilePathListLength can say.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let description = ucs2_nul("boot entry description", &self.description)?;
        let path_len = u16::try_from(self.file_path_list.len()).map_err(|_| {
            invalid("device path", format!("{} bytes is longer than a load option can hold", self.file_path_list.len()))
        })?;
        let mut b = Vec::with_capacity(6 + description.len() + self.file_path_list.len() + self.optional_data.len());
        b.extend_from_slice(&self.attributes.to_le_bytes()); // 0x00 Attributes
        b.extend_from_slice(&path_len.to_le_bytes()); // 0x04 FilePathListLength
        b.extend_from_slice(&description); // 0x06 Description
        b.extend_from_slice(&self.file_path_list); // FilePathList
        b.extend_from_slice(&self.optional_data); // OptionalData
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let o = LoadOption {
            attributes: LOAD_OPTION_ACTIVE,
            description: "Hi".into(),
            file_path_list: vec![0x7f, 0xff, 4, 0],
            optional_data: vec![0xab],
        };
        let want = [1, 0, 0, 0, 4, 0, b'H', 0, b'i', 0, 0, 0, 0x7f, 0xff, 4, 0, 0xab];
        assert_eq!(o.encode().unwrap(), want);
    }

    #[test]
    fn rejects_what_cannot_be_stored() {
        let o = |d: &str, n: usize| {
            LoadOption { attributes: 1, description: d.into(), file_path_list: vec![0; n], optional_data: vec![] }
                .encode()
        };
        assert!(o("a\0", 4).unwrap_err().to_string().contains("NUL"));
        assert!(o("a", 70000).unwrap_err().to_string().contains("longer"));
        assert!(o("", 4).is_ok());
    }
}
