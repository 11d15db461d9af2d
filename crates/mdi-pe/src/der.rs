//! The little DER (ITU-T X.690) an Authenticode signature needs: writing TLVs, and reading the
//! issuer and serial number out of an X.509 certificate (RFC 5280 §4.1). Reading never
//! panics; lengths are checked against the input.

/// Tag, definite length (short or long form, X.690 §8.1.3), contents.
pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    let n = content.len();
    if n < 0x80 {
        v.push(n as u8);
    } else {
        let bytes = n.to_be_bytes();
        let skip = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len() - 1);
        v.push(0x80 | (bytes.len() - skip) as u8);
        v.extend_from_slice(&bytes[skip..]);
    }
    v.extend_from_slice(content);
    v
}

pub fn seq(parts: &[&[u8]]) -> Vec<u8> {
    tlv(0x30, &parts.concat())
}

/// A DER SET OF: the elements sorted by their encodings (X.690 §11.6).
pub fn set_of(mut parts: Vec<Vec<u8>>) -> Vec<u8> {
    parts.sort();
    tlv(0x31, &parts.concat())
}

/// An OBJECT IDENTIFIER from its arcs (X.690 §8.19).
pub fn oid(arcs: &[u64]) -> Vec<u8> {
    let mut c = Vec::new();
    let mut push = |mut v: u64| {
        let mut tmp = vec![(v & 0x7f) as u8];
        v >>= 7;
        while v > 0 {
            tmp.push(0x80 | (v & 0x7f) as u8);
            v >>= 7;
        }
        tmp.reverse();
        c.extend(tmp);
    };
    push(arcs[0] * 40 + arcs[1]);
    for &a in &arcs[2..] {
        push(a);
    }
    tlv(0x06, &c)
}

pub fn null() -> Vec<u8> {
    vec![0x05, 0x00]
}

pub fn octets(b: &[u8]) -> Vec<u8> {
    tlv(0x04, b)
}

pub fn small_int(v: u8) -> Vec<u8> {
    if v < 0x80 {
        vec![0x02, 0x01, v]
    } else {
        vec![0x02, 0x02, 0x00, v]
    }
}

/// One TLV read off the front of a buffer: (tag, whole encoding, contents, rest).
pub type Tlv<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);

/// One TLV at the start of `b`.
pub fn read(b: &[u8]) -> Option<Tlv<'_>> {
    let tag = *b.first()?;
    let first = *b.get(1)? as usize;
    let (len, hdr) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *b.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let end = hdr.checked_add(len)?;
    let whole = b.get(..end)?;
    Some((tag, whole, &whole[hdr..], &b[end..]))
}

/// The issuer Name and the serialNumber INTEGER (whole encodings) of a DER certificate.
pub fn issuer_and_serial(cert: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let (0x30, _, certificate, _) = read(cert)? else { return None };
    let (0x30, _, tbs, _) = read(certificate)? else { return None };
    let mut rest = tbs;
    // version [0] EXPLICIT, optional.
    if rest.first() == Some(&0xa0) {
        rest = read(rest)?.3;
    }
    let (0x02, serial, _, rest) = read(rest)? else { return None };
    let (0x30, _, _, rest) = read(rest)? else { return None }; // signature AlgorithmIdentifier
    let (0x30, issuer, _, _) = read(rest)? else { return None };
    Some((issuer.to_vec(), serial.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes() {
        assert_eq!(oid(&[1, 2, 840, 113549, 1, 7, 2]), [6, 9, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 1, 7, 2]);
        assert_eq!(tlv(4, &[0; 200])[..3], [4, 0x81, 200]);
        assert_eq!(tlv(4, &[0; 300])[..4], [4, 0x82, 1, 44]);
    }

    #[test]
    fn reads_without_panicking() {
        assert!(read(&[]).is_none());
        assert!(read(&[0x30, 0x85, 1, 1, 1, 1, 1]).is_none());
        assert!(read(&[0x30, 0x82, 0xff]).is_none());
        assert!(issuer_and_serial(&[0x30, 0x03, 0x30, 0x01, 0x02]).is_none());
        for n in 0..64u8 {
            let junk: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37) ^ n).collect();
            let _ = issuer_and_serial(&junk);
        }
    }
}
