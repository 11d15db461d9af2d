//! Explicit-endian field encoders. ext4 is little-endian on disk; only the JBD2 journal
//! is big-endian (kernel Documentation/filesystems/ext4/journal.rst).

#[inline]
pub(crate) fn put_u8(buf: &mut [u8], off: usize, v: u8) {
    buf[off] = v;
}
#[inline]
pub(crate) fn put_u16(buf: &mut [u8], off: usize, v: u16) {
    buf[off..off + 2].copy_from_slice(&v.to_le_bytes());
}
#[inline]
pub(crate) fn put_u32(buf: &mut [u8], off: usize, v: u32) {
    buf[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
#[inline]
pub(crate) fn put_u32_be(buf: &mut [u8], off: usize, v: u32) {
    buf[off..off + 4].copy_from_slice(&v.to_be_bytes());
}
#[inline]
pub(crate) fn get_u16(buf: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([buf[off], buf[off + 1]])
}
#[inline]
pub(crate) fn get_u32(buf: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(buf[off..off + 4].try_into().expect("4 bytes"))
}
/// Low 32 bits of a 64-bit on-disk quantity (the `_lo` half).
#[inline]
pub(crate) fn lo32(v: u64) -> u32 {
    v as u32
}
/// High 32 bits of a 64-bit on-disk quantity (the `_hi` half).
#[inline]
pub(crate) fn hi32(v: u64) -> u32 {
    (v >> 32) as u32
}
