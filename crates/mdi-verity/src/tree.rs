//! The dm-verity hash tree, format 1 (kernel Documentation/admin-guide/device-mapper/verity.rst,
//! "Hash tree"; cryptsetup lib/verity/verity_hash.c builds the same bytes):
//!
//! - every data block is hashed as `H(salt || block)` (format 1 puts the salt first; the
//!   Chrome OS format 0 puts it last);
//! - the digests are packed into hash blocks, `hash_block_size / digest_size` per block (each
//!   digest padded to a power of two, a no-op for SHA-256's 32 bytes), the last block of a
//!   level zero-filled; the hash blocks of a level are hashed the same way to make the next
//!   level, until a level is a single block, whose hash is the root hash;
//! - the number of levels is the smallest `n` with `(data_blocks - 1) >> (n * log2(fanout)) == 0`
//!   (kernel `verity_ctr`), so one data block gives no level at all (the root hash is that
//!   block's hash) and up to `fanout` data blocks give one;
//! - on disk the levels follow the superblock's block, the top level (nearest the root) first,
//!   level 0 (the data blocks' digests) last.
//!
//! The builder is fed the data in order, in pieces of any length, and keeps only the digests:
//! memory is the size of the tree (data / fanout), never of the data. Data blocks are hashed in
//! batches on rayon's pool; each digest lands at its block's index, so the bytes do not depend
//! on the number of threads.

use crate::superblock::{Superblock, SUPERBLOCK_SIZE};
use crate::{block_size_ok, VerityError, VerityParams};
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use std::io::{self, Write};

/// SHA-256 digest size; the only hash we write.
pub const DIGEST: usize = 32;
/// Data buffered before a parallel hashing batch: 4 MiB, enough to keep every core busy.
const BATCH: usize = 4 << 20;

fn salted(salt: &[u8], block: &[u8]) -> [u8; DIGEST] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(block);
    h.finalize().into()
}

/// Streams a data device through the hash function; [`VerityBuilder::finish`] gives the tree.
pub struct VerityBuilder {
    params: VerityParams,
    /// Bytes of an incomplete batch (less than `BATCH`).
    pending: Vec<u8>,
    /// Level-0 digests, 32 bytes each, in block order.
    leaves: Vec<u8>,
    data_blocks: u64,
}

impl VerityBuilder {
    pub fn new(params: VerityParams) -> Result<Self, VerityError> {
        params.check()?;
        Ok(VerityBuilder { params, pending: Vec::new(), leaves: Vec::new(), data_blocks: 0 })
    }

    /// Feeds the next bytes of the data device.
    pub fn update(&mut self, mut data: &[u8]) {
        let bs = self.params.data_block_size as usize;
        if !self.pending.is_empty() {
            let take = (BATCH - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() == BATCH {
                let batch = std::mem::take(&mut self.pending);
                self.hash_blocks(&batch);
                self.pending = batch;
                self.pending.clear();
            }
        }
        // Whole batches straight from the caller's buffer, without a copy.
        let whole = data.len() / BATCH * BATCH;
        if whole > 0 {
            self.hash_blocks(&data[..whole]);
            data = &data[whole..];
        }
        // A multiple of the block size can be hashed now too; only a partial block waits.
        if self.pending.is_empty() {
            let blocks = data.len() / bs * bs;
            if blocks > 0 {
                self.hash_blocks(&data[..blocks]);
                data = &data[blocks..];
            }
        }
        self.pending.extend_from_slice(data);
    }

    /// Hashes whole data blocks and appends their digests.
    fn hash_blocks(&mut self, data: &[u8]) {
        let bs = self.params.data_block_size as usize;
        debug_assert_eq!(data.len() % bs, 0);
        let salt = &self.params.salt;
        let digests: Vec<[u8; DIGEST]> = data.par_chunks(bs).map(|b| salted(salt, b)).collect();
        for d in &digests {
            self.leaves.extend_from_slice(d);
        }
        self.data_blocks += digests.len() as u64;
    }

    /// Data bytes fed so far.
    pub fn data_len(&self) -> u64 {
        self.data_blocks * u64::from(self.params.data_block_size) + self.pending.len() as u64
    }

    /// Ends the data: builds the upper levels and the superblock. The data must be a whole,
    /// non-zero number of data blocks.
    pub fn finish(mut self) -> Result<VerityTree, VerityError> {
        let bs = self.params.data_block_size as usize;
        if self.pending.len() % bs != 0 {
            return Err(VerityError::NotBlockAligned { len: self.data_len(), block: bs as u32 });
        }
        let rest = std::mem::take(&mut self.pending);
        self.hash_blocks(&rest);
        if self.data_blocks == 0 {
            return Err(VerityError::Empty);
        }
        let hbs = self.params.hash_block_size as usize;
        let salt = &self.params.salt;
        // levels[0] is level 0 (the data digests); each is a whole number of hash blocks.
        let mut levels: Vec<Vec<u8>> = Vec::new();
        let mut digests = std::mem::take(&mut self.leaves);
        while digests.len() > DIGEST {
            let mut level = digests;
            level.resize(level.len().div_ceil(hbs) * hbs, 0);
            digests = level.par_chunks(hbs).map(|b| salted(salt, b)).collect::<Vec<_>>().concat();
            levels.push(level);
        }
        let root_hash: [u8; DIGEST] = digests[..].try_into().expect("one digest");
        let superblock = Superblock {
            hash_type: 1,
            uuid: self.params.uuid,
            algorithm: "sha256".into(),
            data_block_size: self.params.data_block_size,
            hash_block_size: self.params.hash_block_size,
            data_blocks: self.data_blocks,
            salt: self.params.salt.clone(),
        };
        superblock.encode()?; // checked in `new`; keeps `write_to` infallible but for I/O
        Ok(VerityTree { root_hash, superblock, levels })
    }
}

/// A finished hash tree with its superblock: the contents of a verity hash partition.
#[derive(Clone, Debug)]
pub struct VerityTree {
    /// The root hash: what `roothash=`/`usrhash=` and `veritysetup ... ROOTHASH` take.
    pub root_hash: [u8; DIGEST],
    pub superblock: Superblock,
    /// Level 0 first; written in reverse.
    levels: Vec<Vec<u8>>,
}

impl VerityTree {
    /// Number of tree levels (0 for a single data block).
    pub fn levels(&self) -> usize {
        self.levels.len()
    }

    /// Bytes of the hash device as veritysetup lays it out with `--hash-offset 0`: the
    /// superblock padded to one hash block, then the levels, top first.
    pub fn hash_device_len(&self) -> u64 {
        u64::from(self.superblock.hash_block_size) + self.levels.iter().map(|l| l.len() as u64).sum::<u64>()
    }

    /// Writes the hash device (superblock, then tree); [`Self::hash_device_len`] bytes.
    pub fn write_to<W: Write>(&self, w: &mut W) -> io::Result<()> {
        let sb = self.superblock.encode().map_err(io::Error::other)?;
        w.write_all(&sb)?;
        let pad = self.superblock.hash_block_size as usize - SUPERBLOCK_SIZE;
        w.write_all(&vec![0u8; pad])?;
        for level in self.levels.iter().rev() {
            w.write_all(level)?;
        }
        Ok(())
    }

    /// The hash device as one buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.hash_device_len() as usize);
        self.write_to(&mut v).expect("writing to a Vec");
        v
    }
}

/// Size of the hash device (superblock block + tree) for `data_len` bytes of data, without
/// hashing anything: what a layout needs to size the hash partition before the data exists.
pub fn hash_device_len(data_len: u64, data_block_size: u32, hash_block_size: u32) -> Result<u64, VerityError> {
    if !block_size_ok(data_block_size) || !block_size_ok(hash_block_size) {
        return Err(VerityError::BadBlockSize(data_block_size.min(hash_block_size)));
    }
    if data_len == 0 {
        return Err(VerityError::Empty);
    }
    if data_len % u64::from(data_block_size) != 0 {
        return Err(VerityError::NotBlockAligned { len: data_len, block: data_block_size });
    }
    let fanout = u64::from(hash_block_size) / DIGEST as u64;
    let mut n = data_len / u64::from(data_block_size);
    let mut total = u64::from(hash_block_size);
    while n > 1 {
        n = n.div_ceil(fanout);
        total += n * u64::from(hash_block_size);
    }
    Ok(total)
}
