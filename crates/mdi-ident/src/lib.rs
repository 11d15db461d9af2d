//! Identifiers derived from a seed, the way systemd-repart derives them.
//!
//! Every UUID, GUID, serial or hash seed that the spec does not give explicitly is
//! `HMAC-SHA256(key = seed, message = purpose)`, truncated to 16 bytes, with the RFC 4122
//! version-4 and variant bits forced (docs/design.md §5). Using repart's scheme gives us its
//! published test vectors and makes our images comparable with repart/mkosi ones.
#![forbid(unsafe_code)]

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;

/// A 128-bit identifier kept in "string order" (the order of its canonical text form).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Uuid(pub [u8; 16]);

/// A UUID text that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("'{0}' is not a UUID (expected 32 hex digits, dashes optional, e.g. F222513B-DED1-49FA-B591-20CE86A2FE7F)")]
pub struct ParseUuidError(pub String);

impl Uuid {
    /// Parses `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (dashes optional, any case).
    pub fn parse(s: &str) -> Result<Self, ParseUuidError> {
        let hexdigits: String = s.chars().filter(|c| *c != '-').collect();
        let bytes = hex::decode(&hexdigits).map_err(|_| ParseUuidError(s.to_string()))?;
        let arr: [u8; 16] = bytes.try_into().map_err(|_| ParseUuidError(s.to_string()))?;
        Ok(Uuid(arr))
    }

    /// The bytes in the mixed-endian order GPT and EFI store GUIDs in
    /// (first three fields little-endian; UEFI spec, appendix A).
    pub fn to_guid_bytes(self) -> [u8; 16] {
        let b = self.0;
        [b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = hex::encode(self.0);
        write!(f, "{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
    }
}

impl fmt::Debug for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The seed every derived identifier comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seed(pub Uuid);

impl Seed {
    /// The full 32-byte HMAC-SHA256 of `message` keyed by the seed.
    pub fn hmac(&self, message: &[u8]) -> [u8; 32] {
        hmac_sha256(&self.0 .0, message)
    }

    /// A version-4 UUID for `purpose`, as systemd-repart derives its disk GUID
    /// (purpose `disk-uuid`) and filesystem UUIDs.
    pub fn uuid(&self, purpose: &[u8]) -> Uuid {
        uuid_from_hmac(self.hmac(purpose))
    }

    /// A partition UUID as repart derives it: the message is the partition type UUID in
    /// string order, followed by the instance counter (little-endian u64) from the second
    /// partition of that type on.
    pub fn partition_uuid(&self, type_uuid: Uuid, instance: u64) -> Uuid {
        let mut msg = type_uuid.0.to_vec();
        if instance > 0 {
            msg.extend_from_slice(&instance.to_le_bytes());
        }
        uuid_from_hmac(self.hmac(&msg))
    }
}

/// Derives a UUID keyed by another UUID (repart: filesystem UUID = HMAC(partition UUID,
/// "file-system-uuid")).
pub fn uuid_keyed_by(key: Uuid, purpose: &[u8]) -> Uuid {
    uuid_from_hmac(hmac_sha256(&key.0, purpose))
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

fn uuid_from_hmac(h: [u8; 32]) -> Uuid {
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    // RFC 4122 §4.4: version 4 in the high nibble of byte 6, variant 10 in byte 8.
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    Uuid(b)
}

/// A point in time in whole seconds and nanoseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Timestamp {
    /// Seconds since 1970-01-01 00:00:00 UTC (may be negative).
    pub secs: i64,
    /// Nanoseconds within the second, below 1e9.
    pub nsecs: u32,
}

impl Timestamp {
    /// A whole-second timestamp.
    pub fn from_secs(secs: i64) -> Self {
        Timestamp { secs, nsecs: 0 }
    }

    /// (year, month, day) of the UTC date, proleptic Gregorian (the "civil from days"
    /// algorithm, eras of 400 years).
    pub fn civil_date(self) -> (i64, u32, u32) {
        let z = self.secs.div_euclid(86_400) + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let y = yoe + era * 400 + i64::from(m <= 2);
        (y, m, d)
    }

    /// Clamps to `limit` (SOURCE_DATE_EPOCH): anything later becomes exactly `limit`.
    pub fn clamp_to(self, limit: i64) -> Self {
        if self.secs >= limit {
            Timestamp::from_secs(limit)
        } else {
            self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Golden values from systemd's TEST-58-REPART (test/units/TEST-58-REPART.sh).
    fn seed() -> Seed {
        Seed(Uuid::parse("750b6cd5c4ae4012a15e7be3c29e6a47").unwrap())
    }

    #[test]
    fn repart_disk_guid() {
        assert_eq!(seed().uuid(b"disk-uuid").to_string().to_uppercase(), "1D2CE291-7CCE-4F7D-BC83-FDB49AD74EBD");
    }

    #[test]
    fn repart_partition_uuids() {
        let s = seed();
        let cases = [
            ("933AC7E1-2EB4-4F13-B844-0E14E2AEF915", 0, "4980595D-D74A-483A-AA9E-9903879A0EE5"),
            ("0657FD6D-A4AB-43C4-84E5-0933C84B4F4F", 0, "78C92DB8-3D2B-4823-B0DC-792B78F66F1E"),
            ("4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709", 0, "60F33797-1D71-4DCB-AA6F-20564F036CD0"),
            ("4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709", 1, "73A4CCD2-EAF5-44DA-A366-F99188210FDC"),
            ("8484680C-9521-48C6-9C11-B0720656F69E", 0, "7E3369DD-D653-4513-ADF5-B993A9F20C16"),
            ("B921B045-1DF0-41C3-AF44-4C6F280D3FAE", 0, "055D0227-53A6-4033-85C3-9A5973EFF483"),
            ("B921B045-1DF0-41C3-AF44-4C6F280D3FAE", 1, "F7DBBE48-8FD0-4833-8411-AA34E7C8E60A"),
        ];
        for (ty, n, want) in cases {
            let got = s.partition_uuid(Uuid::parse(ty).unwrap(), n);
            assert_eq!(got.to_string().to_uppercase(), want, "type {ty} #{n}");
        }
    }

    #[test]
    fn uuid_text_round_trip_and_guid_order() {
        let u = Uuid::parse("F222513B-DED1-49FA-B591-20CE86A2FE7F").unwrap();
        assert_eq!(u.to_string(), "f222513b-ded1-49fa-b591-20ce86a2fe7f");
        assert_eq!(&u.to_guid_bytes()[..4], &[0x3b, 0x51, 0x22, 0xf2]);
        assert!(Uuid::parse("nope").is_err());
    }

    #[test]
    fn clamp() {
        let t = Timestamp { secs: 100, nsecs: 5 };
        assert_eq!(t.clamp_to(50), Timestamp::from_secs(50));
        assert_eq!(t.clamp_to(200), t);
    }
}
