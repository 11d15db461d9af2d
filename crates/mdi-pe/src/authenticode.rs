//! Authenticode signatures for PE images, what UEFI Secure Boot checks against `db`
//! (Microsoft "Windows Authenticode Portable Executable Signature Format"; PE format,
//! "The Attribute Certificate Table (Image Only)"; UEFI spec §32.2.4 "PE/COFF image
//! signatures"):
//!
//! - the image digest is SHA-256 over the file minus the CheckSum field, minus the Certificate
//!   Table data directory entry, minus the certificate table itself: the headers up to
//!   SizeOfHeaders, each section's raw data in file order, then whatever follows the last
//!   section (spec, "Calculating the PE Image Hash");
//! - the signature is a PKCS#7 (RFC 2315) SignedData whose content is an
//!   `SpcIndirectDataContent` (type `SPC_PE_IMAGE_DATAOBJ`, the image digest), signed by one
//!   SignerInfo with the authenticated attributes contentType, SpcSpOpusInfo (empty) and
//!   messageDigest (SHA-256 of the SpcIndirectDataContent's contents octets), RSA PKCS#1 v1.5
//!   over SHA-256 of those attributes; the signer's certificate is included;
//! - it is stored as a `WIN_CERTIFICATE` (dwLength, wRevision 0x0200, wCertificateType 0x0002
//!   = PKCS_SIGNED_DATA) at the end of the file, 8-byte aligned, located by data directory 4
//!   (a file offset, not an RVA); then the PE CheckSum is computed over the final file.
//!
//! Deterministic: no signing time attribute is added (nor any other time), and RSA PKCS#1
//! v1.5 signatures are a function of the key and the message. Signing the same image with
//! the same key and certificate gives the same bytes.

use crate::der::{self, octets, oid, seq, set_of, tlv};
use crate::image::{round_up, PeImage, DIR_SECURITY};
use crate::PeError;
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::DecodePrivateKey;
use rsa::{Pkcs1v15Sign, RsaPrivateKey};
use sha2::{Digest, Sha256};

/// `WIN_CERT_REVISION_2_0`.
const WIN_CERT_REVISION_2_0: u16 = 0x0200;
/// `WIN_CERT_TYPE_PKCS_SIGNED_DATA`.
const WIN_CERT_TYPE_PKCS_SIGNED_DATA: u16 = 0x0002;

// Object identifiers (Authenticode spec; RFC 2315; RFC 5754 for SHA-256; RFC 8017).
const OID_SIGNED_DATA: &[u64] = &[1, 2, 840, 113549, 1, 7, 2];
const OID_SPC_INDIRECT_DATA: &[u64] = &[1, 3, 6, 1, 4, 1, 311, 2, 1, 4];
const OID_SPC_PE_IMAGE_DATA: &[u64] = &[1, 3, 6, 1, 4, 1, 311, 2, 1, 15];
const OID_SPC_SP_OPUS_INFO: &[u64] = &[1, 3, 6, 1, 4, 1, 311, 2, 1, 12];
const OID_SHA256: &[u64] = &[2, 16, 840, 1, 101, 3, 4, 2, 1];
const OID_RSA_ENCRYPTION: &[u64] = &[1, 2, 840, 113549, 1, 1, 1];
const OID_CONTENT_TYPE: &[u64] = &[1, 2, 840, 113549, 1, 9, 3];
const OID_MESSAGE_DIGEST: &[u64] = &[1, 2, 840, 113549, 1, 9, 4];

/// A signing key and its X.509 certificate.
pub struct Signer {
    key: RsaPrivateKey,
    cert: Vec<u8>,
    issuer: Vec<u8>,
    serial: Vec<u8>,
}

fn bad(what: &str) -> PeError {
    PeError::Malformed(what.to_string())
}

impl Signer {
    /// From PEM texts: an RSA key (`PRIVATE KEY`, PKCS#8, or `RSA PRIVATE KEY`, PKCS#1,
    /// unencrypted) and a `CERTIFICATE`.
    pub fn from_pem(key_pem: &str, cert_pem: &str) -> Result<Signer, PeError> {
        let key = RsaPrivateKey::from_pkcs8_pem(key_pem)
            .or_else(|_| RsaPrivateKey::from_pkcs1_pem(key_pem))
            .map_err(|e| PeError::Malformed(format!("signing key: {e} (an unencrypted RSA key in PEM)")))?;
        let (label, cert) = rsa::pkcs8::der::pem::decode_vec(cert_pem.as_bytes())
            .map_err(|e| PeError::Malformed(format!("certificate: {e}")))?;
        if label != "CERTIFICATE" {
            return Err(PeError::Malformed(format!("certificate: PEM label {label}, expected CERTIFICATE")));
        }
        Self::new(key, cert)
    }

    /// From a key and a DER certificate.
    pub fn new(key: RsaPrivateKey, cert_der: Vec<u8>) -> Result<Signer, PeError> {
        let (issuer, serial) =
            der::issuer_and_serial(&cert_der).ok_or_else(|| bad("certificate: not a DER X.509 certificate"))?;
        Ok(Signer { key, cert: cert_der, issuer, serial })
    }
}

/// The Authenticode SHA-256 digest of `img` (its certificate table, if any, left out).
pub fn image_digest(img: &PeImage) -> Result<[u8; 32], PeError> {
    let d = &img.data;
    let cks = img.checksum_offset();
    let dir = img.data_dir_offset(DIR_SECURITY)?;
    let soh = img.size_of_headers()? as usize;
    if !(cks + 4 <= dir && dir + 8 <= soh && soh <= d.len()) {
        return Err(bad("headers out of order or past SizeOfHeaders"));
    }
    let mut h = Sha256::new();
    h.update(&d[..cks]);
    h.update(&d[cks + 4..dir]);
    h.update(&d[dir + 8..soh]);
    let mut sections: Vec<_> = img.sections.iter().filter(|s| s.size_of_raw_data != 0).collect();
    sections.sort_by_key(|s| s.pointer_to_raw_data);
    let mut hashed = soh as u64;
    for s in sections {
        let (p, n) = (s.pointer_to_raw_data as usize, s.size_of_raw_data as usize);
        let data = d.get(p..p.saturating_add(n)).ok_or(PeError::Truncated)?;
        h.update(data);
        hashed += n as u64;
    }
    let cert_size = u64::from(img.data_dir(DIR_SECURITY)?.1);
    let end = (d.len() as u64).saturating_sub(cert_size);
    if end > hashed {
        h.update(&d[hashed as usize..end as usize]);
    }
    Ok(h.finalize().into())
}

/// The PE CheckSum of `data` (imagehlp's `CheckSumMappedFile`: 16-bit one's-complement-style
/// sum of the file with the CheckSum field taken as zero, folded, plus the file length).
pub fn pe_checksum(data: &[u8], checksum_offset: usize) -> u32 {
    let mut sum: u64 = 0;
    for (i, w) in data.chunks(2).enumerate() {
        let o = i * 2;
        if o >= checksum_offset && o < checksum_offset + 4 {
            continue;
        }
        let v = u64::from(w[0]) | (u64::from(*w.get(1).unwrap_or(&0)) << 8);
        sum += v;
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum = (sum & 0xffff) + (sum >> 16);
    (sum as u32).wrapping_add(data.len() as u32)
}

/// The PKCS#7 SignedData (DER) for an image digest.
pub fn signed_data(digest: &[u8; 32], signer: &Signer) -> Result<Vec<u8>, PeError> {
    let sha256 = seq(&[&oid(OID_SHA256), &der::null()]);
    // SpcPeImageData: flags = empty BIT STRING, file = [0] { SpcLink [2] { SpcString
    // unicode [0] "<<<Obsolete>>>" } }, as signtool and sbsign write it.
    let obsolete: Vec<u8> = "<<<Obsolete>>>".encode_utf16().flat_map(|c| c.to_be_bytes()).collect();
    let file = tlv(0xa0, &tlv(0xa2, &tlv(0x80, &obsolete)));
    let pe_image_data = seq(&[&[0x03, 0x01, 0x00], &file]);
    let spc = seq(&[&seq(&[&oid(OID_SPC_PE_IMAGE_DATA), &pe_image_data]), &seq(&[&sha256, &octets(digest)])]);
    // messageDigest covers the SpcIndirectDataContent's contents octets, without its own tag
    // and length (Authenticode spec, "Authenticode-Specific Structures").
    let (_, _, spc_contents, _) = der::read(&spc).ok_or_else(|| bad("internal DER"))?;
    let md: [u8; 32] = Sha256::digest(spc_contents).into();
    let attrs = set_of(vec![
        seq(&[&oid(OID_CONTENT_TYPE), &set_of(vec![oid(OID_SPC_INDIRECT_DATA)])]),
        seq(&[&oid(OID_SPC_SP_OPUS_INFO), &set_of(vec![seq(&[])])]),
        seq(&[&oid(OID_MESSAGE_DIGEST), &set_of(vec![octets(&md)])]),
    ]);
    // The signature is over the attributes encoded as a SET (tag 0x31); in the SignerInfo they
    // are [0] IMPLICIT (tag 0xa0) (RFC 2315 §9.3).
    let attrs_hash = Sha256::digest(&attrs);
    let sig = signer
        .key
        .sign(Pkcs1v15Sign::new::<Sha256>(), &attrs_hash)
        .map_err(|e| PeError::Malformed(format!("RSA signing: {e}")))?;
    let mut attrs_implicit = attrs;
    attrs_implicit[0] = 0xa0;
    let signer_info = seq(&[
        &der::small_int(1),
        &seq(&[&signer.issuer, &signer.serial]),
        &sha256,
        &attrs_implicit,
        &seq(&[&oid(OID_RSA_ENCRYPTION), &der::null()]),
        &octets(&sig),
    ]);
    let signed = seq(&[
        &der::small_int(1),
        &set_of(vec![sha256.clone()]),
        &seq(&[&oid(OID_SPC_INDIRECT_DATA), &tlv(0xa0, &spc)]),
        &tlv(0xa0, &signer.cert),
        &set_of(vec![signer_info]),
    ]);
    Ok(seq(&[&oid(OID_SIGNED_DATA), &tlv(0xa0, &signed)]))
}

/// `image` signed: padded to 8 bytes, the certificate table appended and located by data
/// directory 4, the CheckSum set. Refuses an image that is already signed.
pub fn sign(image: &[u8], signer: &Signer) -> Result<Vec<u8>, PeError> {
    let mut img = PeImage::parse(image.to_vec())?;
    if img.data_dir(DIR_SECURITY)? != (0, 0) {
        return Err(bad("the image is already signed"));
    }
    // The certificate table starts 8-byte aligned (PE format, "The Attribute Certificate
    // Table"); the padding is part of the signed data, as sbsign does it.
    let padded = round_up(img.data.len() as u64, 8) as usize;
    img.data.resize(padded, 0);
    let digest = image_digest(&img)?;
    let p7 = signed_data(&digest, signer)?;
    let len = round_up(8 + p7.len() as u64, 8);
    let len32 = u32::try_from(len).map_err(|_| bad("signature too large"))?;
    let at = u32::try_from(padded).map_err(|_| bad("image too large to sign (4 GiB)"))?;
    img.data.extend_from_slice(&len32.to_le_bytes());
    img.data.extend_from_slice(&WIN_CERT_REVISION_2_0.to_le_bytes());
    img.data.extend_from_slice(&WIN_CERT_TYPE_PKCS_SIGNED_DATA.to_le_bytes());
    img.data.extend_from_slice(&p7);
    img.data.resize(padded + len as usize, 0);
    img.set_data_dir(DIR_SECURITY, at, len32)?;
    img.set_checksum(0);
    let sum = pe_checksum(&img.data, img.checksum_offset());
    img.set_checksum(sum);
    Ok(img.data)
}

/// Sets the CheckSum of an (unsigned or signed) image to the value over its bytes.
pub fn update_checksum(image: &mut [u8]) -> Result<(), PeError> {
    let img = PeImage::parse(image[..image.len().min(4096)].to_vec())?;
    let o = img.checksum_offset();
    image.get_mut(o..o + 4).ok_or(PeError::Truncated)?.fill(0);
    let sum = pe_checksum(image, o);
    image[o..o + 4].copy_from_slice(&sum.to_le_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_matches_known_small_case() {
        // Words 0x0201 + 0x0403, then + length 4.
        assert_eq!(pe_checksum(&[1, 2, 3, 4], 1000), 0x0201 + 0x0403 + 4);
        // Carry folding: 0xffff + 0x0002 = 0x1_0001 -> 0x0002.
        assert_eq!(pe_checksum(&[0xff, 0xff, 2, 0], 1000), 2 + 4);
        // The CheckSum field does not count.
        assert_eq!(pe_checksum(&[1, 0, 9, 9, 9, 9, 1, 0], 2), 2 + 8);
    }
}
