//! A build-once FAT writer (Microsoft "FAT32 File System Specification" 1.03, the
//! reference for every offset here): plans the whole volume from a tree, then writes boot
//! sector, FSInfo, both FATs and the data region in one pass.
//!
//! FAT32 when the volume holds at least 65525 clusters with the specification's cluster
//! size for its size, else FAT16 (docs/design.md §4.3). Directories get long file names (VFAT);
//! short names are generated deterministically. Every timestamp is the given time,
//! clamped to 1980-01-01, FAT's epoch.
#![forbid(unsafe_code)]

mod boot_sector;
mod dir_entry;
mod layout;
pub mod read;
mod time;
mod writer;

pub use layout::{FatType, Layout};
pub use writer::{write, Options, Report};

use std::path::PathBuf;

/// Why a FAT volume could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The volume is too small for FAT16's minimum or for the files.
    #[error("the FAT partition has {have} bytes but needs at least {need} bytes ({} MiB) for its files and FAT's minimum; make the boot partition bigger (bootSize)", need.div_ceil(1 << 20))]
    TooSmall {
        /// Bytes needed.
        need: u64,
        /// Bytes available.
        have: u64,
    },
    /// A name FAT cannot hold.
    #[error("'{0}': FAT file names cannot contain control characters or any of \" * / : < > ? \\ |, cannot end in '.' or ' ', must be UTF-8 and at most 255 characters; rename it")]
    BadName(String),
    /// Two names that FAT treats as the same (it ignores case).
    #[error("'{0}' and '{1}' are the same name on FAT, which ignores case; rename one")]
    CaseCollision(String, String),
    /// A file type FAT cannot hold.
    #[error("'{0}' is a symlink, device, FIFO or socket, which FAT cannot hold; give a regular file or folder")]
    Unsupported(String),
    /// A file larger than FAT allows.
    #[error("'{0}' is 4 GiB or larger, which FAT cannot hold")]
    TooLarge(String),
    /// A source file could not be read.
    #[error("cannot read '{path}': {source}")]
    Read {
        /// The source.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A source file changed size while it was copied.
    #[error("'{0}' changed while it was being copied")]
    SourceChanged(PathBuf),
    /// Writing the output failed.
    #[error("cannot write the image: {0}")]
    Write(#[source] std::io::Error),
}
