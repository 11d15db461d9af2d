//! SBAT, shim's Secure Boot Advanced Targeting metadata: a `.sbat` section holding CSV lines
//! `component,generation,vendor,package,version,url`, the first being the format's own
//! `sbat,1,...` line (shim's SBAT.md). A UKI carries one `.sbat` that merges the stub's and
//! the kernel's entries with the UKI's own, so that a revocation of any of them applies to
//! the UKI: ukify's `merge_sbat()` (systemd src/ukify/ukify.py), whose output we reproduce
//! byte for byte.

use crate::image::PeImage;

/// The `sbat,1,...` header line, first in every SBAT section (shim SBAT.md).
pub const SBAT_HEADER: &str = "sbat,1,SBAT Version,sbat,1,https://github.com/rhboot/shim/blob/main/SBAT.md";

/// The policy ukify adds for a UKI when no `--sbat` is given (ukify.py `STUB_SBAT`).
pub const UKI_SBAT: &str = "sbat,1,SBAT Version,sbat,1,https://github.com/rhboot/shim/blob/main/SBAT.md\nuki,1,UKI,uki,1,https://uapi-group.org/specifications/specs/unified_kernel_image/\n";

/// Lines as Python's `str.splitlines()` splits ASCII text (`\n`, `\r\n`, `\r`, and the
/// ASCII separators \x0b \x0c \x1c \x1d \x1e), no trailing empty line.
fn split_lines(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let (mut start, mut i) = (0, 0);
    while i < b.len() {
        let c = b[i];
        if matches!(c, b'\n' | b'\r' | 0x0b | 0x0c | 0x1c | 0x1d | 0x1e) {
            out.push(&s[start..i]);
            if c == b'\r' && b.get(i + 1) == Some(&b'\n') {
                i += 1;
            }
            start = i + 1;
        }
        i += 1;
    }
    if start < b.len() {
        out.push(&s[start..]);
    }
    out
}

/// The entries (lines after the `sbat,` header) of one SBAT text, or none if it does not start
/// with the header (ukify skips such input).
fn entries(text: &str) -> Vec<String> {
    let lines = split_lines(text);
    match lines.first() {
        Some(first) if first.starts_with("sbat,") => lines[1..].iter().map(|l| l.to_string()).collect(),
        _ => Vec::new(),
    }
}

/// The `.sbat` text of a PE image: its raw section data up to the last non-NUL byte, or
/// `None` when it has no such section or it is not UTF-8.
pub fn section_text(image: &PeImage) -> Option<String> {
    let s = image.sections.iter().find(|s| s.name_str() == ".sbat")?;
    let raw = image.raw_data(s);
    let end = raw.iter().rposition(|&c| c != 0).map_or(0, |p| p + 1);
    String::from_utf8(raw[..end].to_vec()).ok()
}

/// ukify's merge: the header line, then the entries of each PE image's `.sbat` (in order),
/// then those of each policy text, joined by newlines, ending with a newline and a NUL.
pub fn merge(images: &[&PeImage], policies: &[&str]) -> Vec<u8> {
    let mut lines = Vec::new();
    for img in images {
        if let Some(t) = section_text(img) {
            lines.extend(entries(&t));
        }
    }
    for p in policies {
        lines.extend(entries(p));
    }
    format!("{SBAT_HEADER}\n{}\n\0", lines.join("\n")).into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_python() {
        assert_eq!(split_lines("a\nb\r\nc\rd\n"), ["a", "b", "c", "d"]);
        assert_eq!(split_lines("a\n\nb"), ["a", "", "b"]);
        assert!(split_lines("").is_empty());
    }

    #[test]
    fn merges_policies() {
        let m = merge(&[], &[UKI_SBAT, "not sbat\nx,1\n", "sbat,1,whatever\nfoo,2,Foo,foo,2,url\n"]);
        assert_eq!(
            String::from_utf8(m).unwrap(),
            format!("{SBAT_HEADER}\nuki,1,UKI,uki,1,https://uapi-group.org/specifications/specs/unified_kernel_image/\nfoo,2,Foo,foo,2,url\n\0")
        );
    }
}
