//! A digest of file content that does not depend on how the content is stored: the
//! SHA-256 of the size followed by every 4 KiB piece of the file that is not all zeros,
//! each as its index, the length without trailing zeros, and those bytes. Holes, unwritten extents and written zeros give the same
//! digest, and a sparse file costs only its data to digest.

use sha2::{Digest as _, Sha256};

/// The content digest of one file.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; 32]);

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.hex())
    }
}

impl Digest {
    /// A builder for a file of `size` bytes.
    pub fn builder(size: u64) -> Builder {
        let mut h = Sha256::new();
        h.update(size.to_le_bytes());
        Builder { h, piece: vec![0u8; PIECE as usize], index: None }
    }

    /// Lower-case hex.
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Piece size of the digest.
const PIECE: u64 = 4096;

/// Collects content fed in increasing offset order.
pub struct Builder {
    h: Sha256,
    piece: Vec<u8>,
    /// Index of the piece being filled.
    index: Option<u64>,
}

impl Builder {
    /// Adds `data` found at file offset `at` (offsets must increase; gaps are zeros).
    pub fn feed(&mut self, mut at: u64, mut data: &[u8]) {
        while !data.is_empty() {
            let idx = at / PIECE;
            if self.index != Some(idx) {
                self.flush();
                self.index = Some(idx);
            }
            let within = (at % PIECE) as usize;
            let n = data.len().min(PIECE as usize - within);
            self.piece[within..within + n].copy_from_slice(&data[..n]);
            data = &data[n..];
            at += n as u64;
        }
    }

    fn flush(&mut self) {
        if let Some(idx) = self.index.take() {
            // The last non-zero byte: whole words first.
            let words = self.piece.chunks_exact(8).rposition(|w| w != [0u8; 8]);
            let used = words.map_or(0, |k| {
                let w = &self.piece[8 * k..8 * k + 8];
                8 * k + w.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1)
            });
            if used > 0 {
                self.h.update(idx.to_le_bytes());
                self.h.update((used as u32).to_le_bytes());
                self.h.update(&self.piece[..used]);
                self.piece[..used].fill(0);
            }
        }
    }

    /// The digest.
    pub fn finish(mut self) -> Digest {
        self.flush();
        Digest(self.h.finalize().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_content_same_digest_however_stored() {
        let mut data = vec![0u8; 3 * 4096 + 100];
        data[5000] = 1;
        data[3 * 4096 + 50] = 2;
        let mut a = Digest::builder(data.len() as u64);
        a.feed(0, &data);
        let mut b = Digest::builder(data.len() as u64);
        b.feed(4096, &data[4096..8192]);
        b.feed(3 * 4096, &data[3 * 4096..]);
        assert_eq!(a.finish(), b.finish());
        let mut c = Digest::builder(data.len() as u64 + 1);
        c.feed(0, &data);
        let mut d = Digest::builder(data.len() as u64);
        data[5000] = 3;
        d.feed(0, &data);
        let e = Digest::builder(data.len() as u64).finish();
        let mut all = vec![c.finish(), d.finish(), e];
        all.dedup();
        assert_eq!(all.len(), 3);
    }
}
