//! dm-verity for disk images: the hash tree of a data partition (format 1, SHA-256), the
//! superblock veritysetup reads, the root hash, and the partition UUIDs systemd derives from
//! the root hash. Written natively, streaming and deterministically, so that a build needs
//! neither `veritysetup format` nor a loop device.
//!
//! ```
//! use mdi_verity::{VerityBuilder, VerityParams};
//! let mut b = VerityBuilder::new(VerityParams::new(vec![0x5a; 32], [1; 16])).unwrap();
//! b.update(&vec![0u8; 3 * 4096]);
//! let tree = b.finish().unwrap();
//! let hash_partition: Vec<u8> = tree.to_bytes(); // superblock + tree, --hash-offset 0
//! let (data_uuid, hash_uuid) = mdi_verity::partition_uuids(&tree.root_hash);
//! # let _ = (hash_partition, data_uuid, hash_uuid);
//! ```
#![forbid(unsafe_code)]

pub mod superblock;
pub mod tree;

pub use mdi_ident::{Seed, Uuid};
pub use superblock::Superblock;
pub use tree::{hash_device_len, VerityBuilder, VerityTree};

/// Why a verity tree or superblock cannot be made or read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum VerityError {
    #[error("verity salt of {0} bytes is longer than the superblock's 256")]
    SaltTooLong(usize),
    #[error("verity hash algorithm '{0}' cannot be recorded (1 to 31 ASCII characters)")]
    BadAlgorithm(String),
    #[error("verity block size {0} is not a power of two from 512 to 65536")]
    BadBlockSize(u32),
    #[error("verity data of {len} bytes is not a whole number of {block}-byte blocks")]
    NotBlockAligned { len: u64, block: u32 },
    #[error("verity needs at least one data block")]
    Empty,
    #[error("no verity superblock (no \"verity\" signature)")]
    NoSuperblock,
    #[error("verity superblock unreadable: {0}")]
    BadSuperblock(String),
}

/// Block sizes cryptsetup accepts (a power of two, 512 bytes to the page-size-independent
/// maximum it allows, `VERITY_MAX_BLOCK_SIZE`... we cap at 64 KiB).
pub(crate) fn block_size_ok(s: u32) -> bool {
    s.is_power_of_two() && (512..=65536).contains(&s)
}

/// What a hash tree is made with. Hash type 1 and SHA-256 are fixed: they are what
/// systemd-repart writes and what `roothash=`/`usrhash=` discovery expects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerityParams {
    /// Salt, at most 256 bytes (repart: 32 bytes, [`repart_salt`]).
    pub salt: Vec<u8>,
    /// UUID recorded in the superblock (repart: [`repart_superblock_uuid`]).
    pub uuid: [u8; 16],
    /// Bytes per data block (4096, repart's default `VerityDataBlockSizeBytes=`).
    pub data_block_size: u32,
    /// Bytes per hash block (4096, repart's default `VerityHashBlockSizeBytes=`).
    pub hash_block_size: u32,
}

impl VerityParams {
    /// 4 KiB data and hash blocks.
    pub fn new(salt: Vec<u8>, uuid: [u8; 16]) -> Self {
        VerityParams { salt, uuid, data_block_size: 4096, hash_block_size: 4096 }
    }

    /// The parameters repart would use for `seed` ([`repart_salt`], [`repart_superblock_uuid`]).
    pub fn from_seed(seed: &Seed) -> Self {
        Self::new(repart_salt(seed).to_vec(), repart_superblock_uuid(seed).0)
    }

    fn check(&self) -> Result<(), VerityError> {
        if self.salt.len() > superblock::MAX_SALT {
            return Err(VerityError::SaltTooLong(self.salt.len()));
        }
        for s in [self.data_block_size, self.hash_block_size] {
            if !block_size_ok(s) {
                return Err(VerityError::BadBlockSize(s));
            }
        }
        Ok(())
    }
}

/// Hashes a whole data device held in memory (small partitions, tests).
pub fn hash_data(params: VerityParams, data: &[u8]) -> Result<VerityTree, VerityError> {
    let mut b = VerityBuilder::new(params)?;
    b.update(data);
    b.finish()
}

/// The partition UUIDs of a verity pair, derived from the root hash as systemd-repart sets
/// them and as the Discoverable Partitions Specification asks ("the partition UUID of the root
/// partition should be the first 128 bits of the root hash ..., and the partition UUID of this
/// dm-verity partition should be the final 128 bits"): `(data, hash)`.
///
/// The bytes are copied verbatim, **without** forcing the RFC 4122 version-4/variant bits:
/// repart's `partition_format_verity_hash()` (src/repart/repart.c) does
/// `memcpy_safe(dp->new_uuid.bytes, roothash, sizeof(sd_id128_t))` for the data partition and
/// copies the last 16 bytes for the hash partition, and the consumers
/// (`systemd-veritysetup-generator`'s `determine_device()`, `dissect-image`) look the
/// partitions up by those raw bytes (`/dev/disk/by-partuuid/<first 32 hex digits>`). Forcing
/// v4 bits would break that lookup. The returned [`Uuid`]s are in string order, as
/// [`Uuid::to_guid_bytes`] expects for the GPT entry.
pub fn partition_uuids(root_hash: &[u8; 32]) -> (Uuid, Uuid) {
    let mut data = [0u8; 16];
    let mut hash = [0u8; 16];
    data.copy_from_slice(&root_hash[..16]);
    hash.copy_from_slice(&root_hash[16..]);
    (Uuid(data), Uuid(hash))
}

/// The salt repart uses when given `--seed`: `HMAC-SHA256(key = seed, "verity-salt")`, all 32
/// bytes (systemd PR #28695, repart.c: `hmac_sha256(seed, "verity-salt")`).
pub fn repart_salt(seed: &Seed) -> [u8; 32] {
    seed.hmac(b"verity-salt")
}

/// The superblock UUID repart uses when given `--seed`: `derive_uuid(seed, "verity-uuid")`,
/// the first half of `HMAC-SHA256(key = seed, "verity-uuid")` with the v4/variant bits set
/// (systemd PR #28695; the same rule as every seed-derived identifier, [`Seed::uuid`]).
pub fn repart_superblock_uuid(seed: &Seed) -> Uuid {
    seed.uuid(b"verity-uuid")
}

/// Lower-case hex of a root hash, the form `roothash=`, `usrhash=` and veritysetup take.
pub fn hex(root_hash: &[u8]) -> String {
    root_hash.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_uuids_are_the_root_hash_halves() {
        // A root hash with bytes 0..32: the data UUID is bytes 0..16 in string order, the hash
        // UUID bytes 16..32, no version bits forced (byte 6 stays 0x06, byte 8 stays 0x08).
        let rh: [u8; 32] = core::array::from_fn(|i| i as u8);
        let (d, h) = partition_uuids(&rh);
        assert_eq!(d.to_string(), "00010203-0405-0607-0809-0a0b0c0d0e0f");
        assert_eq!(h.to_string(), "10111213-1415-1617-1819-1a1b1c1d1e1f");
        // In the GPT entry the first three fields are little-endian.
        assert_eq!(d.to_guid_bytes()[..4], [3, 2, 1, 0]);
        // The hex root hash's first 32 digits are the data partition's PARTUUID digits, which
        // is how systemd-veritysetup-generator builds /dev/disk/by-partuuid/<uuid>.
        let hx = hex(&rh);
        assert_eq!(d.to_string().replace('-', ""), hx[..32]);
        assert_eq!(h.to_string().replace('-', ""), hx[32..]);
    }

    #[test]
    fn seed_derivations() {
        let seed = Seed(Uuid::parse("b1b1b1b1-0000-4000-8000-000000000001").unwrap());
        let s = repart_salt(&seed);
        assert_eq!(s, seed.hmac(b"verity-salt"));
        let u = repart_superblock_uuid(&seed);
        assert_eq!(u.0[6] >> 4, 4);
        assert_eq!(u.0[8] >> 6, 2);
        let p = VerityParams::from_seed(&seed);
        assert_eq!(p.salt, s);
        assert_eq!(p.uuid, u.0);
    }

    #[test]
    fn sizes() {
        assert_eq!(hash_device_len(4096, 4096, 4096), Ok(4096));
        assert_eq!(hash_device_len(128 * 4096, 4096, 4096), Ok(2 * 4096));
        assert_eq!(hash_device_len(129 * 4096, 4096, 4096), Ok(4 * 4096));
        assert!(hash_device_len(100, 4096, 4096).is_err());
        assert!(hash_device_len(0, 4096, 4096).is_err());
        for blocks in [1u64, 2, 127, 128, 129, 1000, 16384, 16385] {
            let t = hash_data(VerityParams::new(vec![1], [0; 16]), &vec![3u8; blocks as usize * 4096]).unwrap();
            assert_eq!(t.hash_device_len(), hash_device_len(blocks * 4096, 4096, 4096).unwrap());
            assert_eq!(t.to_bytes().len() as u64, t.hash_device_len());
        }
    }

    #[test]
    fn piecewise_feeding_and_threads_do_not_change_the_bytes() {
        let data: Vec<u8> = (0..300 * 4096).map(|i| (i * 7 % 251) as u8).collect();
        let p = VerityParams::new(vec![9; 32], [2; 16]);
        let whole = hash_data(p.clone(), &data).unwrap();
        let mut b = VerityBuilder::new(p.clone()).unwrap();
        for piece in data.chunks(1000) {
            b.update(piece);
        }
        let pieces = b.finish().unwrap();
        assert_eq!(whole.root_hash, pieces.root_hash);
        assert_eq!(whole.to_bytes(), pieces.to_bytes());
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let single = one.install(|| hash_data(p, &data).unwrap());
        assert_eq!(single.to_bytes(), whole.to_bytes());
    }

    #[test]
    fn single_block_root_is_the_block_hash() {
        use sha2::{Digest, Sha256};
        let salt = vec![0x11; 32];
        let block = vec![0x42u8; 4096];
        let t = hash_data(VerityParams::new(salt.clone(), [0; 16]), &block).unwrap();
        let mut h = Sha256::new();
        h.update(&salt);
        h.update(&block);
        assert_eq!(t.root_hash[..], h.finalize()[..]);
        assert_eq!(t.levels(), 0);
    }

    #[test]
    fn refuses_bad_input() {
        let p = VerityParams::new(vec![], [0; 16]);
        assert_eq!(hash_data(p.clone(), &[]).unwrap_err(), VerityError::Empty);
        assert!(matches!(hash_data(p, &[0; 5000]), Err(VerityError::NotBlockAligned { .. })));
        let mut p = VerityParams::new(vec![0; 300], [0; 16]);
        assert!(VerityBuilder::new(p.clone()).is_err());
        p.salt = vec![];
        p.data_block_size = 1000;
        assert!(VerityBuilder::new(p).is_err());
    }
}
