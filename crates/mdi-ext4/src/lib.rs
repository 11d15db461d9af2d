//! A build-once ext4 writer.
//!
//! Turns a [`mdi_tree::Tree`] into a complete ext4 filesystem written through a
//! [`mdi_sink::Sink`], without mkfs, without mounting and without root. The result uses
//! 4 KiB blocks, 256-byte inodes and the feature set of docs/design.md §4.2 (has_journal,
//! ext_attr, resize_inode, dir_index, filetype, extent, 64bit, flex_bg, sparse_super,
//! large_file, huge_file, dir_nlink, extra_isize, metadata_csum).
//!
//! # Layout
//! Everything is allocated by one increasing cursor ([`alloc`]), in this order:
//! 1. block 0 (superblock) and the GDT region (descriptors + reserved GDT blocks);
//! 2. the resize inode's indirect block, then per inode in inode order: its xattr block,
//!    its directory blocks or its long-symlink block;
//! 3. regular file data, streamed: files are read in parallel and each non-zero 4 KiB
//!    block is given the next free block, so all-zero blocks become holes whatever the
//!    source looked like, and every input byte is read once;
//! 4. extent-tree blocks, the journal, then block bitmaps, inode bitmaps and inode tables
//!    (flex_bg lets them live anywhere), sized once the data is placed.
//!
//! The cursor steps over the superblock-backup regions of sparse_super groups. Since the
//! order of requests is fixed by the sorted tree, the bytes depend only on the tree and
//! the [`Options`] (docs/design.md §5).
#![forbid(unsafe_code)]

mod alloc;
mod bytes;
mod checksum;
mod dir_entry;
mod dirhash;
mod extent;
mod geometry;
mod group_desc;
mod htree;
mod inode;
mod journal;
pub mod read;
mod superblock;
mod writer;
mod xattr;

pub use geometry::BLOCK_SIZE;

/// The largest filesystem written: 64 TiB. Every group's bitmaps and descriptor are
/// written eagerly (no uninit_bg), so the time, the output and the descriptor table held
/// in memory grow with the size: at 64 TiB about 25 s, 3 GiB of qcow2 and 32 MiB. It also
/// keeps s_inodes_count (32 bits) exact at the default inode ratio's cap.
pub const MAX_BYTES: u64 = 64 << 40;
pub use writer::write;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

/// How big the filesystem is to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizeRequest {
    /// Exactly what the tree needs (data + metadata + journal + inode headroom), plus
    /// `extra_bytes` of free space, rounded up to a multiple of `align_bytes`.
    Auto {
        /// Free space to add (nixpkgs' additionalSpace).
        extra_bytes: u64,
        /// Size granularity (1 MiB for nixpkgs compatibility).
        align_bytes: u64,
    },
    /// A fixed size in bytes (rounded down to whole blocks).
    Fixed {
        /// The partition or file size.
        bytes: u64,
    },
}

/// Everything that varies between filesystems besides the tree.
#[derive(Clone, Debug)]
pub struct Options {
    /// Size policy.
    pub size: SizeRequest,
    /// Filesystem UUID (s_uuid; also seeds every metadata checksum).
    pub uuid: [u8; 16],
    /// Directory hash seed (s_hash_seed).
    pub hash_seed: [u8; 16],
    /// Volume label, at most 16 bytes.
    pub label: Vec<u8>,
    /// SOURCE_DATE_EPOCH: superblock times and every inode time except mtime.
    pub time: i64,
    /// Set to stop the build early (Ctrl-C); the writer returns [`Error::Interrupted`].
    pub cancel: Option<Arc<AtomicBool>>,
    /// Incremented with the bytes of file data read, for progress display.
    pub progress: Option<Arc<AtomicU64>>,
}

/// What was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// Filesystem size in bytes.
    pub bytes: u64,
    /// Blocks in the filesystem.
    pub blocks: u64,
    /// Free blocks.
    pub free_blocks: u64,
    /// Inodes in the filesystem.
    pub inodes: u64,
    /// Free inodes.
    pub free_inodes: u64,
    /// Block groups.
    pub groups: u64,
    /// Bytes of regular-file data stored (non-zero blocks only).
    pub data_bytes: u64,
}

/// Why a filesystem could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The fixed size cannot hold the tree.
    #[error("the filesystem needs at least {need} bytes ({} MiB) but only {have} bytes were given; set diskSize to at least that or to \"auto\"", need.div_ceil(1 << 20))]
    TooSmall {
        /// The smallest size that fits, bytes.
        need: u64,
        /// The size given, bytes.
        have: u64,
    },
    /// A source file could not be read.
    #[error("cannot read '{path}': {source}")]
    Read {
        /// The source.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A source file changed size while the image was written.
    #[error("'{0}' changed while it was being copied; build from a store or tree that is not being modified")]
    SourceChanged(PathBuf),
    /// Writing the output failed.
    #[error("cannot write the image: {0}")]
    Write(#[source] std::io::Error),
    /// A name ext4 cannot hold.
    #[error("'{0}': ext4 file names are 1 to 255 bytes without '/' or NUL")]
    BadName(String),
    /// A symlink target longer than ext4 allows.
    #[error("symlink '{0}' has a target longer than 4095 bytes, which ext4 cannot store")]
    SymlinkTooLong(String),
    /// An extended attribute problem.
    #[error("'{path}': {source}")]
    Xattr {
        /// The entry.
        path: String,
        /// What is wrong.
        source: xattr::XattrError,
    },
    /// A directory with more entries than a two-level htree holds.
    #[error("directory '{0}' has too many entries for an ext4 directory without large_dir")]
    DirTooLarge(String),
    /// More inodes than ext4 can address.
    #[error("the tree has {0} entries, more than ext4 can hold")]
    TooManyInodes(u64),
    /// A file with more hard links than ext4's i_links_count holds.
    #[error(
        "'{path}' has {links} hard links, more than ext4 allows a file ({max}); make some of them copies or symlinks"
    )]
    TooManyLinks {
        /// The file (its first name in the image).
        path: String,
        /// How many names it has.
        links: u64,
        /// EXT4_LINK_MAX.
        max: u32,
    },
    /// `/lost+found` exists but is not a directory: e2fsck and the kernel expect the
    /// directory there, so the entry would be shadowed or duplicated.
    #[error("'/lost+found' in the tree is a {0}, but ext4 keeps a folder of that name at the root for e2fsck; rename or remove it from the source")]
    LostFoundNotDir(&'static str),
    /// A size beyond what the writer makes.
    #[error("a {bytes}-byte ext4 filesystem is larger than this writer makes ({max} bytes = {} TiB); choose a smaller diskSize (the filesystem can be grown on the running system with resize2fs)", max >> 40)]
    TooLarge {
        /// The size asked for (or that additionalSpace leads to), bytes.
        bytes: u64,
        /// [`MAX_BYTES`].
        max: u64,
    },
    /// The build was cancelled.
    #[error("interrupted")]
    Interrupted,
}
