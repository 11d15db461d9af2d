//! Extended attribute entries (ext4 on-disk layout document, "Extended Attributes"), in
//! the inode and in attribute blocks; ext4's short POSIX ACL form is turned back into the
//! kernel's xattr form, so names and values read as `getfattr` shows them.

use super::{le16, le32, Error};

/// Magic of the in-inode area and of attribute block headers.
pub(crate) const MAGIC: u32 = 0xEA02_0000;

fn pad4(n: usize) -> usize {
    n.div_ceil(4) * 4
}

/// Parses the entries starting at `start` of `region`; value offsets are relative to the
/// region start.
pub(crate) fn parse(region: &[u8], start: usize, ino: u32, out: &mut Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), Error> {
    let bad = |m: String| Error::corrupt(format!("inode {ino}: extended attribute {m}"));
    let mut off = start;
    while off + 4 <= region.len() && le32(region, off) != 0 {
        if off + 16 > region.len() {
            return Err(bad(format!("entry at {off} is cut off")));
        }
        let name_len = usize::from(region[off]);
        let index = region[off + 1];
        let voff = usize::from(le16(region, off + 2));
        let inum = le32(region, off + 4);
        let vsize = le32(region, off + 8) as usize;
        let name = region.get(off + 16..off + 16 + name_len).ok_or_else(|| bad(format!("name at {off} is cut off")))?;
        let prefix: &[u8] = match index {
            1 => b"user.",
            2 => b"system.posix_acl_access",
            3 => b"system.posix_acl_default",
            4 => b"trusted.",
            6 => b"security.",
            7 => b"system.",
            8 => b"system.richacl",
            _ => return Err(bad(format!("at {off} has unknown name index {index}"))),
        };
        let mut full = prefix.to_vec();
        full.extend_from_slice(name);
        if inum != 0 {
            return Err(Error::Unsupported(format!(
                "inode {ino}: the value of extended attribute '{}' is kept in inode {inum} (ea_inode)",
                String::from_utf8_lossy(&full)
            )));
        }
        let value = voff
            .checked_add(vsize)
            .and_then(|end| region.get(voff..end))
            .ok_or_else(|| bad(format!("'{}' has a value outside its area", String::from_utf8_lossy(&full))))?;
        let value = if index == 2 || index == 3 {
            acl_from_disk(value)
                .ok_or_else(|| bad(format!("'{}' is not a valid ACL", String::from_utf8_lossy(&full))))?
        } else {
            value.to_vec()
        };
        out.push((full, value));
        off += pad4(16 + name_len);
    }
    Ok(())
}

/// ext4 ACL (version 1; 4-byte entries except named users and groups, which carry an id)
/// → POSIX ACL xattr (version 2, 8-byte entries, id 0xFFFFFFFF where there is none).
fn acl_from_disk(v: &[u8]) -> Option<Vec<u8>> {
    if v.len() < 4 || le32(v, 0) != 1 {
        return None;
    }
    let mut out = 2u32.to_le_bytes().to_vec();
    let mut off = 4;
    while off < v.len() {
        let e = v.get(off..off + 4)?;
        let tag = le16(e, 0);
        out.extend_from_slice(e);
        match tag {
            0x01 | 0x04 | 0x10 | 0x20 => {
                out.extend_from_slice(&u32::MAX.to_le_bytes());
                off += 4;
            }
            0x02 | 0x08 => {
                out.extend_from_slice(v.get(off + 4..off + 8)?);
                off += 8;
            }
            _ => return None,
        }
    }
    Some(out)
}
