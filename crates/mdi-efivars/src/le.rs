//! Little-endian field access. Everything in UEFI and PI structures is little-endian
//! (UEFI 2.10 §2.3.1 "Data Types"; PI 1.8 vol. 3 §3.2.1).
//!
//! Readers work on slices whose length the caller has already checked against the
//! structure's fixed size; `bytes` is the one bounds-checked entry point for variable data.

/// `len` bytes at `off`, or `None` when they are not all inside `b`.
pub(crate) fn bytes(b: &[u8], off: usize, len: usize) -> Option<&[u8]> {
    b.get(off..off.checked_add(len)?)
}

/// A fixed-size array at `off`, or `None` when it is not inside `b`.
pub(crate) fn array<const N: usize>(b: &[u8], off: usize) -> Option<&[u8; N]> {
    bytes(b, off, N)?.try_into().ok()
}

pub(crate) fn u16_at<const N: usize>(b: &[u8; N], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

pub(crate) fn u32_at<const N: usize>(b: &[u8; N], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

pub(crate) fn u64_at<const N: usize>(b: &[u8; N], off: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(v)
}

pub(crate) fn guid_at<const N: usize>(b: &[u8; N], off: usize) -> crate::Guid {
    let mut v = [0u8; 16];
    v.copy_from_slice(&b[off..off + 16]);
    crate::Guid::from_efi_bytes(v)
}

pub(crate) fn put_u16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_guid(b: &mut [u8], off: usize, g: crate::Guid) {
    b[off..off + 16].copy_from_slice(&g.to_efi_bytes());
}
