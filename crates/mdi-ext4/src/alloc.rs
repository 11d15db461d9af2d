//! Block allocation: a bump allocator that steps over the superblock-backup regions of
//! sparse_super groups, and the record of every used range (for the block bitmaps).
//!
//! Allocation is strictly increasing, so the layout is a pure function of the order of
//! requests: the writer makes them in a fixed order (docs/design.md §5).

use crate::geometry::{has_super, Block, BLOCKS_PER_GROUP};

/// A run of blocks: (first block, count).
pub type Run = (Block, u64);

/// The allocator.
#[derive(Clone, Debug)]
pub struct Alloc {
    next: Block,
    /// Blocks each backup region spans: superblock + GDT region.
    backup_len: u64,
    used: Vec<Run>,
}

impl Alloc {
    /// Starts after the primary superblock and GDT region of group 0 (`head_len` blocks).
    pub fn new(head_len: u64) -> Self {
        Alloc { next: head_len, backup_len: head_len, used: Vec::new() }
    }

    /// The first block not yet handed out.
    pub fn next(&self) -> Block {
        self.next
    }

    fn skip_backup(&mut self) {
        let g = self.next / BLOCKS_PER_GROUP;
        let off = self.next % BLOCKS_PER_GROUP;
        if g > 0 && has_super(g) && off < self.backup_len {
            self.next = g * BLOCKS_PER_GROUP + self.backup_len;
        }
    }

    /// Blocks until the next backup region (or the end of this group when none).
    fn room(&self) -> u64 {
        let g = self.next / BLOCKS_PER_GROUP;
        let mut limit = (g + 1) * BLOCKS_PER_GROUP;
        let mut ng = g + 1;
        while !has_super(ng) {
            ng += 1;
            limit = ng * BLOCKS_PER_GROUP;
        }
        limit - self.next
    }

    fn record(&mut self, start: Block, len: u64) {
        if let Some(last) = self.used.last_mut() {
            if last.0 + last.1 == start {
                last.1 += len;
                return;
            }
        }
        self.used.push((start, len));
    }

    /// Up to `max` contiguous blocks, fewer when a backup region is in the way.
    pub fn run(&mut self, max: u64) -> Run {
        debug_assert!(max > 0);
        self.skip_backup();
        let len = max.min(self.room());
        let start = self.next;
        self.next += len;
        self.record(start, len);
        (start, len)
    }

    /// Exactly `n` contiguous blocks; steps over a backup region (leaving the blocks
    /// before it free) when the run would cross one.
    pub fn contiguous(&mut self, n: u64) -> Block {
        self.skip_backup();
        if self.room() < n {
            self.next += self.room();
            self.skip_backup();
        }
        assert!(self.room() >= n, "a contiguous run of {n} blocks fits in a group");
        let start = self.next;
        self.next += n;
        self.record(start, n);
        start
    }

    /// `n` blocks in as few runs as the layout allows.
    pub fn runs(&mut self, mut n: u64) -> Vec<Run> {
        let mut v = Vec::new();
        while n > 0 {
            let r = self.run(n);
            n -= r.1;
            v.push(r);
        }
        v
    }

    /// Every allocated run, ascending and merged.
    pub fn used(&self) -> &[Run] {
        &self.used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_over_backup_regions() {
        let mut a = Alloc::new(10);
        let r = a.runs(BLOCKS_PER_GROUP);
        // Group 1 has a backup: blocks 32768..32778 are skipped.
        assert_eq!(r, vec![(10, BLOCKS_PER_GROUP - 10), (BLOCKS_PER_GROUP + 10, 10)]);
        // Group 2 has none, so a run may span from group 1 into group 2.
        let big = a.contiguous(BLOCKS_PER_GROUP);
        assert_eq!(big, BLOCKS_PER_GROUP + 20);
    }
}
