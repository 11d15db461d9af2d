//! Directory entries (FAT spec §6) and VFAT long-name entries (§7): 32 bytes each.

/// Attribute bits.
pub const ATTR_READ_ONLY: u8 = 0x01;
pub const ATTR_VOLUME_ID: u8 = 0x08;
pub const ATTR_DIRECTORY: u8 = 0x10;
pub const ATTR_ARCHIVE: u8 = 0x20;
/// READ_ONLY | HIDDEN | SYSTEM | VOLUME_ID marks a long-name entry.
const ATTR_LONG_NAME: u8 = 0x0F;

/// Characters a long name may not contain (besides controls).
const LFN_FORBIDDEN: &[char] = &['"', '*', '/', ':', '<', '>', '?', '\\', '|'];
/// Characters a short name may not contain besides those and space, '.', lower case.
const SHORT_FORBIDDEN: &[u8] = b"\"*+,./:;<=>?[\\]|";

/// Whether FAT can hold this long name.
pub fn valid_long_name(name: &str) -> bool {
    !name.is_empty()
        && name.encode_utf16().count() <= 255
        && !name.chars().any(|c| (c as u32) < 0x20 || LFN_FORBIDDEN.contains(&c))
        && !name.ends_with('.')
        && !name.ends_with(' ')
}

/// The 11-byte short name when `name` is already a plain upper-case 8.3 name (then no
/// long-name entries are needed).
pub fn exact_short(name: &str) -> Option<[u8; 11]> {
    if name == "." || name == ".." {
        let mut s = [b' '; 11];
        s[..name.len()].copy_from_slice(name.as_bytes());
        return Some(s);
    }
    let (base, ext) = match name.rfind('.') {
        Some(i) => (&name[..i], &name[i + 1..]),
        None => (name, ""),
    };
    let ok = |p: &str, max: usize| {
        !p.is_empty()
            && p.len() <= max
            && p.bytes().all(|b| b.is_ascii_graphic() && !b.is_ascii_lowercase() && !SHORT_FORBIDDEN.contains(&b))
    };
    if !ok(base, 8) || !(ext.is_empty() || ok(ext, 3)) {
        return None;
    }
    let mut s = [b' '; 11];
    s[..base.len()].copy_from_slice(base.as_bytes());
    s[8..8 + ext.len()].copy_from_slice(ext.as_bytes());
    Some(s)
}

fn short_char(c: char) -> Option<u8> {
    if c.is_ascii_alphanumeric() {
        Some(c.to_ascii_uppercase() as u8)
    } else if c.is_ascii() && !c.is_ascii_control() && c != ' ' && c != '.' && !SHORT_FORBIDDEN.contains(&(c as u8)) {
        Some(c as u8)
    } else if c == ' ' || c == '.' {
        None // dropped
    } else {
        Some(b'_') // lossy
    }
}

/// A generated short name `BASIS~N.EXT` for a long name (the "numeric tail" scheme of
/// spec §7.4), the first one not in `taken`.
pub fn generate_short(name: &str, taken: &dyn Fn(&[u8; 11]) -> bool) -> [u8; 11] {
    let trimmed = name.trim_start_matches('.');
    let (base, ext) = match trimmed.rfind('.') {
        Some(i) if i > 0 => (&trimmed[..i], &trimmed[i + 1..]),
        _ => (trimmed, ""),
    };
    let basis: Vec<u8> = base.chars().filter_map(short_char).take(8).collect();
    let extb: Vec<u8> = ext.chars().filter_map(short_char).take(3).collect();
    let basis = if basis.is_empty() { b"_".to_vec() } else { basis };
    for n in 1u32.. {
        let tail = format!("~{n}");
        let keep = basis.len().min(8 - tail.len());
        let mut s = [b' '; 11];
        s[..keep].copy_from_slice(&basis[..keep]);
        s[keep..keep + tail.len()].copy_from_slice(tail.as_bytes());
        s[8..8 + extb.len()].copy_from_slice(&extb);
        if !taken(&s) {
            return s;
        }
    }
    unreachable!("some numeric tail is free")
}

/// The checksum of a short name stored in each of its long-name entries (spec §7.2).
pub fn lfn_checksum(short: &[u8; 11]) -> u8 {
    short.iter().fold(0u8, |sum, &c| (sum >> 1).wrapping_add((sum & 1) << 7).wrapping_add(c))
}

/// One short (8.3) entry.
pub struct ShortEntry {
    pub name: [u8; 11],
    pub attr: u8,
    pub cluster: u32,
    pub size: u32,
    pub date: u16,
    pub time: u16,
}

impl ShortEntry {
    pub fn encode(&self) -> [u8; 32] {
        let mut e = [0u8; 32];
        e[0..11].copy_from_slice(&self.name); // DIR_Name
        e[11] = self.attr; // DIR_Attr
        e[14..16].copy_from_slice(&self.time.to_le_bytes()); // DIR_CrtTime
        e[16..18].copy_from_slice(&self.date.to_le_bytes()); // DIR_CrtDate
        e[18..20].copy_from_slice(&self.date.to_le_bytes()); // DIR_LstAccDate
        e[20..22].copy_from_slice(&((self.cluster >> 16) as u16).to_le_bytes()); // DIR_FstClusHI
        e[22..24].copy_from_slice(&self.time.to_le_bytes()); // DIR_WrtTime
        e[24..26].copy_from_slice(&self.date.to_le_bytes()); // DIR_WrtDate
        e[26..28].copy_from_slice(&(self.cluster as u16).to_le_bytes()); // DIR_FstClusLO
        e[28..32].copy_from_slice(&self.size.to_le_bytes()); // DIR_FileSize
        e
    }
}

/// The long-name entries for `name`, in on-disk order (last part first).
pub fn long_entries(name: &str, short: &[u8; 11]) -> Vec<[u8; 32]> {
    let units: Vec<u16> = name.encode_utf16().collect();
    let parts = units.len().div_ceil(13);
    let sum = lfn_checksum(short);
    let mut out = Vec::with_capacity(parts);
    for ord in (1..=parts).rev() {
        let mut chunk = [0xFFFFu16; 13];
        let from = (ord - 1) * 13;
        for (k, slot) in chunk.iter_mut().enumerate() {
            let i = from + k;
            if i < units.len() {
                *slot = units[i];
            } else if i == units.len() {
                *slot = 0; // terminator, then 0xFFFF padding
            }
        }
        let mut e = [0u8; 32];
        e[0] = ord as u8 | if ord == parts { 0x40 } else { 0 }; // LDIR_Ord (0x40: last)
        for k in 0..5 {
            e[1 + 2 * k..3 + 2 * k].copy_from_slice(&chunk[k].to_le_bytes()); // LDIR_Name1
        }
        e[11] = ATTR_LONG_NAME; // LDIR_Attr
        e[13] = sum; // LDIR_Chksum
        for k in 0..6 {
            e[14 + 2 * k..16 + 2 * k].copy_from_slice(&chunk[5 + k].to_le_bytes());
            // LDIR_Name2
        }
        for k in 0..2 {
            e[28 + 2 * k..30 + 2 * k].copy_from_slice(&chunk[11 + k].to_le_bytes());
            // LDIR_Name3
        }
        out.push(e);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names() {
        assert_eq!(&exact_short("BOOTX64.EFI").unwrap(), b"BOOTX64 EFI");
        assert!(exact_short("bootx64.efi").is_none());
        assert!(exact_short("loader.conf").is_none());
        let none = |_: &[u8; 11]| false;
        assert_eq!(&generate_short("loader.conf", &none), b"LOADER~1CON");
        assert_eq!(&generate_short("nixos-generation-1.conf", &none), b"NIXOS-~1CON");
        let taken = |s: &[u8; 11]| s == b"LOADER~1CON";
        assert_eq!(&generate_short("loader.conf", &taken), b"LOADER~2CON");
        assert!(valid_long_name("a b.c"));
        assert!(!valid_long_name("a:b"));
        assert!(!valid_long_name("dot."));
    }

    #[test]
    fn long_name_entries() {
        let s = *b"LOADER~1CON";
        let e = long_entries("loader.conf", &s);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0][0], 0x41);
        assert_eq!(e[0][13], lfn_checksum(&s));
        assert_eq!(long_entries(&"x".repeat(26), &s).len(), 2);
    }
}
