//! Extended attributes (ext4 on-disk layout document, "Extended Attributes"): in the
//! inode after the extra fields when they fit, else in one attribute block.
//! POSIX ACLs are converted from the kernel's xattr form to ext4's own, shorter form.

use crate::bytes::{get_u16, get_u32, put_u16, put_u32, put_u8};
use crate::checksum::crc32c_raw;
use crate::geometry::BS;
use crate::inode::XATTR_OFFSET;

/// Header magic of the in-inode area and of attribute blocks.
const MAGIC: u32 = 0xEA02_0000;
/// Room after i_extra_isize in a 256-byte inode.
const IN_INODE_SPACE: usize = 256 - XATTR_OFFSET;
/// Attribute block header size.
const BLOCK_HEADER: usize = 32;

/// Error for an attribute ext4 cannot store.
#[derive(Debug, thiserror::Error)]
pub enum XattrError {
    #[error("extended attribute '{0}' is in a namespace ext4 does not store (user., trusted., security., system.)")]
    Namespace(String),
    #[error("extended attributes take {0} bytes, more than one 4 KiB block")]
    TooBig(usize),
    #[error("extended attribute '{0}' is not a valid POSIX ACL")]
    BadAcl(String),
}

struct Attr {
    index: u8,
    name: Vec<u8>,
    value: Vec<u8>,
}

fn split(name: &[u8], value: &[u8]) -> Result<Attr, XattrError> {
    let shown = || String::from_utf8_lossy(name).into_owned();
    // Name index table: fs/ext4/xattr.h (EXT4_XATTR_INDEX_*).
    let (index, rest) = if name == b"system.posix_acl_access" {
        return Ok(Attr {
            index: 2,
            name: Vec::new(),
            value: acl_to_disk(value).ok_or_else(|| XattrError::BadAcl(shown()))?,
        });
    } else if name == b"system.posix_acl_default" {
        return Ok(Attr {
            index: 3,
            name: Vec::new(),
            value: acl_to_disk(value).ok_or_else(|| XattrError::BadAcl(shown()))?,
        });
    } else if let Some(r) = name.strip_prefix(b"user.") {
        (1, r)
    } else if let Some(r) = name.strip_prefix(b"trusted.") {
        (4, r)
    } else if let Some(r) = name.strip_prefix(b"security.") {
        (6, r)
    } else if let Some(r) = name.strip_prefix(b"system.") {
        (7, r)
    } else {
        return Err(XattrError::Namespace(shown()));
    };
    if rest.len() > 255 {
        return Err(XattrError::Namespace(shown()));
    }
    Ok(Attr { index, name: rest.to_vec(), value: value.to_vec() })
}

/// POSIX ACL xattr (version 2, 8-byte entries) → ext4 ACL (version 1; owner, group-owner,
/// mask and other entries are 4 bytes, named user and group entries 8).
fn acl_to_disk(v: &[u8]) -> Option<Vec<u8>> {
    if v.len() < 4 || (v.len() - 4) % 8 != 0 || get_u32(v, 0) != 2 {
        return None;
    }
    let mut out = 1u32.to_le_bytes().to_vec();
    for e in v[4..].chunks_exact(8) {
        let tag = get_u16(e, 0);
        out.extend_from_slice(&e[0..4]);
        match tag {
            0x01 | 0x04 | 0x10 | 0x20 => {}                 // USER_OBJ, GROUP_OBJ, MASK, OTHER
            0x02 | 0x08 => out.extend_from_slice(&e[4..8]), // USER, GROUP: + id
            _ => return None,
        }
    }
    Some(out)
}

fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

/// e2fsprogs/kernel entry hash: name bytes (as signed char), then value words.
fn entry_hash(a: &Attr) -> u32 {
    let mut h: u32 = 0;
    for &c in &a.name {
        h = (h << 5) ^ (h >> 27) ^ (i32::from(c as i8) as u32);
    }
    let mut padded = a.value.clone();
    padded.resize(pad4(a.value.len()), 0);
    for w in padded.chunks_exact(4) {
        h = (h << 16) ^ (h >> 16) ^ get_u32(w, 0);
    }
    h
}

/// Encoded attributes: either the in-inode area or a block image (without its checksum,
/// which depends on where the block goes: call [`seal_block`]).
pub enum Placement {
    None,
    Inline(Vec<u8>),
    Block(Vec<u8>),
}

/// Lays out `xattrs` (kernel xattr names and values).
pub fn encode(xattrs: &[(Vec<u8>, Vec<u8>)]) -> Result<Placement, XattrError> {
    if xattrs.is_empty() {
        return Ok(Placement::None);
    }
    let mut attrs = xattrs.iter().map(|(n, v)| split(n, v)).collect::<Result<Vec<_>, _>>()?;
    // The kernel searches block entries assuming this order (ext4_xattr_find_entry).
    attrs.sort_by(|a, b| (a.index, a.name.len(), &a.name).cmp(&(b.index, b.name.len(), &b.name)));
    let entries_len: usize = attrs.iter().map(|a| pad4(16 + a.name.len())).sum();
    let values_len: usize = attrs.iter().map(|a| pad4(a.value.len())).sum();
    if 4 + entries_len + 4 + values_len <= IN_INODE_SPACE {
        let mut area = vec![0u8; IN_INODE_SPACE];
        put_u32(&mut area, 0, MAGIC);
        // Value offsets are relative to the first entry (just after the magic).
        fill(&mut area[4..], &attrs);
        return Ok(Placement::Inline(area));
    }
    let total = BLOCK_HEADER + entries_len + 4 + values_len;
    if total > BS {
        return Err(XattrError::TooBig(total));
    }
    let mut b = vec![0u8; BS];
    put_u32(&mut b, 0x0, MAGIC); // h_magic
    put_u32(&mut b, 0x4, 1); // h_refcount
    put_u32(&mut b, 0x8, 1); // h_blocks
                             // Entries start after the header; offsets are relative to the block start, so fill
                             // the whole block and let entries begin at 32.
    let hashes = fill_from(&mut b, BLOCK_HEADER, &attrs);
    // h_hash: rotate-xor of the entry hashes (ext4_xattr_rehash).
    let mut bh: u32 = 0;
    for h in hashes {
        bh = (bh << 16) ^ (bh >> 16) ^ h;
    }
    put_u32(&mut b, 0xC, bh);
    Ok(Placement::Block(b))
}

fn fill(area: &mut [u8], attrs: &[Attr]) {
    fill_from(area, 0, attrs);
}

/// Writes entries from `start` and values from the end of `buf`; offsets relative to
/// `buf[0]`. Returns the entry hashes.
fn fill_from(buf: &mut [u8], start: usize, attrs: &[Attr]) -> Vec<u32> {
    let mut off = start;
    let mut vend = buf.len();
    let mut hashes = Vec::new();
    for a in attrs {
        let vlen = pad4(a.value.len());
        vend -= vlen;
        buf[vend..vend + a.value.len()].copy_from_slice(&a.value);
        let h = entry_hash(a);
        hashes.push(h);
        put_u8(buf, off, a.name.len() as u8); // e_name_len
        put_u8(buf, off + 1, a.index); // e_name_index
        put_u16(buf, off + 2, if a.value.is_empty() { 0 } else { vend as u16 }); // e_value_offs
        put_u32(buf, off + 4, 0); // e_value_inum
        put_u32(buf, off + 8, a.value.len() as u32); // e_value_size
        put_u32(buf, off + 12, h); // e_hash
        buf[off + 16..off + 16 + a.name.len()].copy_from_slice(&a.name);
        off += pad4(16 + a.name.len());
    }
    hashes
}

/// Sets the block checksum: crc32c(fs seed, block number as le64, block with h_checksum 0).
pub fn seal_block(b: &mut [u8], block: u64, fs_seed: u32) {
    put_u32(b, 0x10, 0);
    let c = crc32c_raw(fs_seed, &block.to_le_bytes());
    let c = crc32c_raw(c, b);
    put_u32(b, 0x10, c); // h_checksum
}
