//! The verity superblock: the 512-byte header veritysetup (cryptsetup) writes at the start of
//! the hash area so that `veritysetup open/verify DATA HASH ROOTHASH` finds the parameters
//! without their being given on the command line. The kernel never reads it (its table line
//! carries every parameter; kernel Documentation/admin-guide/device-mapper/verity.rst), it is
//! cryptsetup's own on-disk format (cryptsetup docs/on-disk-format "VERITY", lib/verity/verity.c
//! `struct verity_sb`). All integers little-endian:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | signature `"verity\0\0"` |
//! | 8 | 4 | superblock version, 1 |
//! | 12 | 4 | hash type: 0 = Chrome OS (salt after the block), 1 = normal (salt before) |
//! | 16 | 16 | UUID of the hash device, raw bytes in string order |
//! | 32 | 32 | hash algorithm name, NUL-padded (`"sha256"`) |
//! | 64 | 4 | data block size in bytes |
//! | 68 | 4 | hash block size in bytes |
//! | 72 | 8 | number of data blocks |
//! | 80 | 2 | salt size in bytes (at most 256) |
//! | 82 | 6 | padding, zero |
//! | 88 | 256 | salt, zero-padded |
//! | 344 | 168 | padding, zero |

use crate::VerityError;

/// Size of the on-disk superblock; the hash tree starts at the next hash-block boundary.
pub const SUPERBLOCK_SIZE: usize = 512;
/// `"verity\0\0"` (cryptsetup `VERITY_SIGNATURE`).
pub const SIGNATURE: [u8; 8] = *b"verity\0\0";
/// The only superblock version cryptsetup defines.
pub const VERSION: u32 = 1;
/// Longest salt the superblock can hold (cryptsetup `VERITY_MAX_SALT_SIZE`... the field is 256
/// bytes).
pub const MAX_SALT: usize = 256;

/// The parameters a verity superblock records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// 0 = Chrome OS format, 1 = normal format (what we write).
    pub hash_type: u32,
    /// The hash device's UUID (veritysetup `--uuid`), bytes in string order.
    pub uuid: [u8; 16],
    /// Kernel crypto API hash name, e.g. `sha256`.
    pub algorithm: String,
    pub data_block_size: u32,
    pub hash_block_size: u32,
    pub data_blocks: u64,
    pub salt: Vec<u8>,
}

impl Superblock {
    /// The 512 on-disk bytes. Fails if the salt or the algorithm name does not fit.
    pub fn encode(&self) -> Result<[u8; SUPERBLOCK_SIZE], VerityError> {
        if self.salt.len() > MAX_SALT {
            return Err(VerityError::SaltTooLong(self.salt.len()));
        }
        // 31 bytes at most so that the name stays NUL-terminated, as cryptsetup reads it.
        if self.algorithm.is_empty() || self.algorithm.len() > 31 || !self.algorithm.is_ascii() {
            return Err(VerityError::BadAlgorithm(self.algorithm.clone()));
        }
        let mut b = [0u8; SUPERBLOCK_SIZE];
        b[0..8].copy_from_slice(&SIGNATURE);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.hash_type.to_le_bytes());
        b[16..32].copy_from_slice(&self.uuid);
        b[32..32 + self.algorithm.len()].copy_from_slice(self.algorithm.as_bytes());
        b[64..68].copy_from_slice(&self.data_block_size.to_le_bytes());
        b[68..72].copy_from_slice(&self.hash_block_size.to_le_bytes());
        b[72..80].copy_from_slice(&self.data_blocks.to_le_bytes());
        b[80..82].copy_from_slice(&(self.salt.len() as u16).to_le_bytes());
        b[88..88 + self.salt.len()].copy_from_slice(&self.salt);
        Ok(b)
    }

    /// Reads a superblock from the start of `bytes` (a hash device). Never panics: anything
    /// short, without the signature, of another version or with out-of-range fields is an error.
    pub fn decode(bytes: &[u8]) -> Result<Self, VerityError> {
        let b: &[u8; SUPERBLOCK_SIZE] =
            bytes.get(..SUPERBLOCK_SIZE).and_then(|s| s.try_into().ok()).ok_or(VerityError::NoSuperblock)?;
        if b[0..8] != SIGNATURE {
            return Err(VerityError::NoSuperblock);
        }
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let version = u32_at(8);
        if version != VERSION {
            return Err(VerityError::BadSuperblock(format!("version {version}, expected 1")));
        }
        let hash_type = u32_at(12);
        if hash_type > 1 {
            return Err(VerityError::BadSuperblock(format!("hash type {hash_type}")));
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[16..32]);
        let alg = &b[32..64];
        let alg_len = alg.iter().position(|&c| c == 0).unwrap_or(alg.len());
        let algorithm = std::str::from_utf8(&alg[..alg_len])
            .ok()
            .filter(|s| !s.is_empty() && s.is_ascii())
            .ok_or_else(|| VerityError::BadSuperblock("hash algorithm name unreadable".into()))?
            .to_string();
        let data_block_size = u32_at(64);
        let hash_block_size = u32_at(68);
        for (what, s) in [("data", data_block_size), ("hash", hash_block_size)] {
            if !crate::block_size_ok(s) {
                return Err(VerityError::BadSuperblock(format!("{what} block size {s}")));
            }
        }
        let data_blocks = u64::from_le_bytes(b[72..80].try_into().expect("8 bytes"));
        let salt_len = u16::from_le_bytes([b[80], b[81]]) as usize;
        if salt_len > MAX_SALT {
            return Err(VerityError::BadSuperblock(format!("salt size {salt_len}")));
        }
        Ok(Superblock {
            hash_type,
            uuid,
            algorithm,
            data_block_size,
            hash_block_size,
            data_blocks,
            salt: b[88..88 + salt_len].to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Superblock {
        Superblock {
            hash_type: 1,
            uuid: [7; 16],
            algorithm: "sha256".into(),
            data_block_size: 4096,
            hash_block_size: 4096,
            data_blocks: 12345,
            salt: vec![0xab; 32],
        }
    }

    #[test]
    fn round_trips() {
        let s = sample();
        let b = s.encode().unwrap();
        assert_eq!(&b[..8], b"verity\0\0");
        assert_eq!(Superblock::decode(&b).unwrap(), s);
    }

    #[test]
    fn refuses_hostile_input_without_panicking() {
        assert!(Superblock::decode(b"").is_err());
        assert!(Superblock::decode(&[0u8; 600]).is_err());
        let good = sample().encode().unwrap();
        for (at, val) in [(8, 2u8), (12, 5), (64, 3), (69, 0x11), (81, 0xff), (32, 0)] {
            let mut b = good;
            b[at] = val;
            assert!(Superblock::decode(&b).is_err(), "byte {at} = {val}");
        }
        let mut s = sample();
        s.salt = vec![0; 257];
        assert!(s.encode().is_err());
    }
}
