//! Virtual disk formats, written in one pass as the filesystems produce their bytes: no
//! raw intermediate file and no qemu-img (docs/design.md §4.7).
//!
//! Every format here maps the virtual disk in fixed-size units (qcow2 clusters, VHD and
//! VDI blocks). A unit gets its place in the output file the first time a non-zero byte
//! is written to it; units never written stay unallocated and read as zeros. The tables
//! that map units (L1/L2 and refcounts, BAT, block map) are written at the end, when the
//! virtual size is known. Compressed qcow2 keeps units in memory until they leave a
//! bounded cache, then compresses a batch in parallel and appends it in a fixed order, so
//! the bytes do not depend on the number of threads.
//!
//! Identity fields (VHD unique id, VDI UUIDs) and timestamps come from the caller.
#![forbid(unsafe_code)]

mod qcow2;
pub mod read;
mod store;
mod vdi;
mod vhd;
mod vhdx;
mod vmdk;

pub use qcow2::{Compression, Qcow2};
pub use vdi::Vdi;
pub use vhd::Vhd;
pub use vhdx::{Vhdx, VhdxIds};
pub use vmdk::{Vmdk, VmdkKind};

use std::fs::File;
use std::io;

/// A container being written: a [`mdi_sink::Sink`] that is finished with the final size.
pub trait Container: mdi_sink::Sink {
    /// Writes the tables and headers for a disk of `virtual_size` bytes and returns the file.
    fn finish(self: Box<Self>, virtual_size: u64) -> io::Result<File>;
}

pub(crate) fn put_u16_be(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_be_bytes());
}
pub(crate) fn put_u32_be(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_be_bytes());
}
pub(crate) fn put_u64_be(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_be_bytes());
}
pub(crate) fn put_u32_le(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
pub(crate) fn put_u64_le(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// A raw image is its own container: the sparse file as written.
impl Container for mdi_sink::RawSink {
    fn finish(self: Box<Self>, virtual_size: u64) -> io::Result<File> {
        (*self).finish_unsynced(virtual_size)
    }
}
