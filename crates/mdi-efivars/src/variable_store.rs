//! The edk2 variable store inside the NV data firmware volume: VARIABLE_STORE_HEADER and
//! the list of variables after it (edk2 MdeModulePkg/Include/Guid/VariableFormat.h; the
//! UEFI spec defines the variable services, not this layout).
//!
//! ```text
//! VARIABLE_STORE_HEADER, at the firmware volume's HeaderLength:
//!   0x00 Signature GUID (authenticated or plain headers)   0x14 Format u8 (0x5a formatted)
//!   0x10 Size u32 (store header included)                  0x15 State u8 (0xfe healthy)
//!   0x16 Reserved u16, 0x18 Reserved1 u32                  0x1c end
//! then, each at a 4-byte-aligned offset (HEADER_ALIGNMENT), until a StartId other than 0x55aa:
//! AUTHENTICATED_VARIABLE_HEADER               VARIABLE_HEADER
//!   0x00 StartId u16 = 0x55aa                   0x00 StartId u16 = 0x55aa
//!   0x02 State u8, 0x03 Reserved u8             0x02 State u8, 0x03 Reserved u8
//!   0x04 Attributes u32                         0x04 Attributes u32
//!   0x08 MonotonicCount u64                     0x08 NameSize u32
//!   0x10 TimeStamp EFI_TIME (16 bytes)          0x0c DataSize u32
//!   0x20 PubKeyIndex u32                        0x10 VendorGuid
//!   0x24 NameSize u32, 0x28 DataSize u32        0x20 end
//!   0x2c VendorGuid, 0x3c end
//! followed by the UTF-16LE name (NameSize bytes, NUL included) and the data (DataSize
//! bytes), unpadded on x86 (ALIGNMENT 1); the next header starts at the next multiple of 4.
//! ```
//! Updating a variable in flash never rewrites it in place: the firmware appends the new
//! copy and clears bits of the old one's `State` (VAR_ADDED 0x3f → & VAR_IN_DELETED_TRANSITION
//! 0xfe → & VAR_DELETED 0xfd). So a store can hold dead copies; we keep them until the first
//! change, which rewrites the list compactly (as the firmware's own reclaim does).

use crate::error::{corrupt, invalid, Error, Result};
use crate::firmware_volume::FirmwareVolumeHeader;
use crate::le::{array, bytes, guid_at, put_guid, put_u16, put_u32, put_u64, u16_at, u32_at, u64_at};
use crate::{attributes as attr, Guid};

/// Size of VARIABLE_STORE_HEADER.
const STORE_HEADER_LEN: usize = 0x1c;
/// VARIABLE_STORE_FORMATTED.
const STORE_FORMATTED: u8 = 0x5a;
/// VARIABLE_STORE_HEALTHY.
const STORE_HEALTHY: u8 = 0xfe;
/// VARIABLE_DATA: the StartId of every variable header.
const VARIABLE_DATA: u16 = 0x55aa;
/// HEADER_ALIGNMENT: every variable header starts at a multiple of this.
const HEADER_ALIGNMENT: usize = 4;
/// Size of AUTHENTICATED_VARIABLE_HEADER.
const AUTH_HEADER_LEN: usize = 0x3c;
/// Size of VARIABLE_HEADER.
const PLAIN_HEADER_LEN: usize = 0x20;
/// Byte that erased flash reads as; padding and free space hold it.
const ERASED: u8 = 0xff;

/// Variable `State` values (VariableFormat.h). States only ever lose bits.
pub(crate) mod state {
    /// VAR_ADDED: the variable is complete and current.
    pub(crate) const ADDED: u8 = 0x3f;
    /// VAR_ADDED & VAR_IN_DELETED_TRANSITION: being replaced; current only if the
    /// replacement never reached VAR_ADDED.
    pub(crate) const ADDED_IN_TRANSITION: u8 = 0x3e;
}

/// Which variable header the store uses, from the store header's `Signature`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HeaderKind {
    Authenticated,
    Plain,
}

impl HeaderKind {
    fn header_len(self) -> usize {
        match self {
            HeaderKind::Authenticated => AUTH_HEADER_LEN,
            HeaderKind::Plain => PLAIN_HEADER_LEN,
        }
    }
}

/// VARIABLE_STORE_HEADER.
#[derive(Clone, Debug, PartialEq, Eq)]
struct VariableStoreHeader {
    signature: Guid,
    /// Bytes of the whole store, this header included.
    size: u32,
    format: u8,
    state: u8,
    reserved: u16,
    reserved1: u32,
}

impl VariableStoreHeader {
    fn parse(b: &[u8], off: usize) -> Result<(Self, HeaderKind)> {
        let Some(h) = array::<STORE_HEADER_LEN>(b, off) else {
            return Err(corrupt(off, "the file ends inside the variable store header"));
        };
        let header = VariableStoreHeader {
            signature: guid_at(h, 0x00), // Signature
            size: u32_at(h, 0x10),       // Size
            format: h[0x14],             // Format
            state: h[0x15],              // State
            reserved: u16_at(h, 0x16),   // Reserved
            reserved1: u32_at(h, 0x18),  // Reserved1
        };
        let kind = if header.signature == Guid::AUTHENTICATED_VARIABLE {
            HeaderKind::Authenticated
        } else if header.signature == Guid::VARIABLE {
            HeaderKind::Plain
        } else {
            return Err(Error::NotVarStore(format!(
                "the variable store signature at byte {off:#x} is {}, neither the authenticated ({}) nor the plain ({}) variable GUID",
                header.signature,
                Guid::AUTHENTICATED_VARIABLE,
                Guid::VARIABLE
            )));
        };
        if header.format != STORE_FORMATTED {
            return Err(Error::Unsupported(format!(
                "the variable store is not formatted (Format {:#04x}, expected {STORE_FORMATTED:#04x})",
                header.format
            )));
        }
        if header.state != STORE_HEALTHY {
            return Err(Error::Unsupported(format!(
                "the variable store is not marked healthy (State {:#04x}, expected {STORE_HEALTHY:#04x})",
                header.state
            )));
        }
        Ok((header, kind))
    }

    fn encode(&self) -> [u8; STORE_HEADER_LEN] {
        let mut b = [0u8; STORE_HEADER_LEN];
        put_guid(&mut b, 0x00, self.signature); // Signature
        put_u32(&mut b, 0x10, self.size); // Size
        b[0x14] = self.format; // Format
        b[0x15] = self.state; // State
        put_u16(&mut b, 0x16, self.reserved); // Reserved
        put_u32(&mut b, 0x18, self.reserved1); // Reserved1
        b
    }
}

/// One variable header with its name and data, live or not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) state: u8,
    reserved: u8,
    pub(crate) attributes: u32,
    /// Authenticated headers only; zero in plain stores.
    monotonic_count: u64,
    /// EFI_TIME (UEFI 2.10 §8.3), kept as bytes; authenticated headers only.
    timestamp: [u8; 16],
    /// Authenticated headers only.
    pub_key_index: u32,
    pub(crate) vendor: Guid,
    /// UTF-16LE, NameSize bytes, the terminating NUL included.
    pub(crate) name: Vec<u8>,
    pub(crate) data: Vec<u8>,
}

impl Record {
    /// A current variable with nothing from the clock: zero timestamp, count and key index.
    pub(crate) fn new(vendor: Guid, name: Vec<u8>, attributes: u32, data: Vec<u8>) -> Record {
        Record {
            state: state::ADDED,
            reserved: 0,
            attributes,
            monotonic_count: 0,
            timestamp: [0; 16],
            pub_key_index: 0,
            vendor,
            name,
            data,
        }
    }

    /// Decodes the record at `pos`; `Ok(None)` where the list ends (no VARIABLE_DATA).
    fn parse(b: &[u8], pos: usize, end: usize, kind: HeaderKind) -> Result<Option<(Record, usize)>> {
        let region = &b[..end];
        let (mut r, name_size, data_size) = match kind {
            HeaderKind::Authenticated => {
                let Some(h) = array::<AUTH_HEADER_LEN>(region, pos) else { return Ok(None) };
                if u16_at(h, 0x00) != VARIABLE_DATA {
                    return Ok(None); // StartId
                }
                let mut timestamp = [0u8; 16];
                timestamp.copy_from_slice(&h[0x10..0x20]); // TimeStamp
                let r = Record {
                    state: h[0x02],                   // State
                    reserved: h[0x03],                // Reserved
                    attributes: u32_at(h, 0x04),      // Attributes
                    monotonic_count: u64_at(h, 0x08), // MonotonicCount
                    timestamp,
                    pub_key_index: u32_at(h, 0x20), // PubKeyIndex
                    vendor: guid_at(h, 0x2c),       // VendorGuid
                    name: Vec::new(),
                    data: Vec::new(),
                };
                (r, u32_at(h, 0x24), u32_at(h, 0x28)) // NameSize, DataSize
            }
            HeaderKind::Plain => {
                let Some(h) = array::<PLAIN_HEADER_LEN>(region, pos) else { return Ok(None) };
                if u16_at(h, 0x00) != VARIABLE_DATA {
                    return Ok(None); // StartId
                }
                let r = Record {
                    state: h[0x02],              // State
                    reserved: h[0x03],           // Reserved
                    attributes: u32_at(h, 0x04), // Attributes
                    monotonic_count: 0,
                    timestamp: [0; 16],
                    pub_key_index: 0,
                    vendor: guid_at(h, 0x10), // VendorGuid
                    name: Vec::new(),
                    data: Vec::new(),
                };
                (r, u32_at(h, 0x08), u32_at(h, 0x0c)) // NameSize, DataSize
            }
        };
        let name_at = pos + kind.header_len();
        let overflow = || {
            corrupt(
                pos,
                format!(
                    "variable header says NameSize {name_size:#x} and DataSize {data_size:#x}, which run past the end of the variable store at {end:#x}"
                ),
            )
        };
        let name = bytes(region, name_at, name_size as usize).ok_or_else(overflow)?;
        let data_at = name_at + name.len();
        let data = bytes(region, data_at, data_size as usize).ok_or_else(overflow)?;
        r.name = name.to_vec();
        r.data = data.to_vec();
        // A header whose name and data were never completely written (VAR_HEADER_VALID_ONLY)
        // may hold garbage there; only variables that count must have a well-formed name.
        if r.is_current_candidate() && !is_nul_terminated_utf16(&r.name) {
            return Err(corrupt(pos, "a live variable's name is not a NUL-terminated UTF-16 string"));
        }
        let next = align_up(data_at + data.len());
        Ok(Some((r, next)))
    }

    /// State VAR_ADDED, or VAR_ADDED in deleted transition: may be the current copy.
    fn is_current_candidate(&self) -> bool {
        self.state == state::ADDED || self.state == state::ADDED_IN_TRANSITION
    }

    fn encoded_len(&self, kind: HeaderKind) -> usize {
        align_up(kind.header_len() + self.name.len() + self.data.len())
    }

    fn encode_into(&self, out: &mut Vec<u8>, kind: HeaderKind) {
        let start = out.len();
        match kind {
            HeaderKind::Authenticated => {
                let mut h = [0u8; AUTH_HEADER_LEN];
                put_u16(&mut h, 0x00, VARIABLE_DATA); // StartId
                h[0x02] = self.state; // State
                h[0x03] = self.reserved; // Reserved
                put_u32(&mut h, 0x04, self.attributes); // Attributes
                put_u64(&mut h, 0x08, self.monotonic_count); // MonotonicCount
                h[0x10..0x20].copy_from_slice(&self.timestamp); // TimeStamp
                put_u32(&mut h, 0x20, self.pub_key_index); // PubKeyIndex
                put_u32(&mut h, 0x24, self.name.len() as u32); // NameSize (checked by set)
                put_u32(&mut h, 0x28, self.data.len() as u32); // DataSize (checked by set)
                put_guid(&mut h, 0x2c, self.vendor); // VendorGuid
                out.extend_from_slice(&h);
            }
            HeaderKind::Plain => {
                let mut h = [0u8; PLAIN_HEADER_LEN];
                put_u16(&mut h, 0x00, VARIABLE_DATA); // StartId
                h[0x02] = self.state; // State
                h[0x03] = self.reserved; // Reserved
                put_u32(&mut h, 0x04, self.attributes); // Attributes
                put_u32(&mut h, 0x08, self.name.len() as u32); // NameSize
                put_u32(&mut h, 0x0c, self.data.len() as u32); // DataSize
                put_guid(&mut h, 0x10, self.vendor); // VendorGuid
                out.extend_from_slice(&h);
            }
        }
        out.extend_from_slice(&self.name);
        out.extend_from_slice(&self.data);
        out.resize(start + self.encoded_len(kind), ERASED);
    }

    fn same_variable(&self, other: &Record) -> bool {
        self.vendor == other.vendor && self.name == other.name
    }
}

fn align_up(n: usize) -> usize {
    n.div_ceil(HEADER_ALIGNMENT) * HEADER_ALIGNMENT
}

fn is_nul_terminated_utf16(name: &[u8]) -> bool {
    name.len() >= 4 && name.len() % 2 == 0 && name[name.len() - 2..] == [0, 0]
}

/// `name` as stored: UTF-16LE with a terminating NUL.
fn encode_name(name: &str) -> Result<Vec<u8>> {
    if name.is_empty() || name.contains('\0') {
        return Err(invalid("variable name", format!("{name:?}: must be non-empty and contain no NUL")));
    }
    let mut b: Vec<u8> = name.encode_utf16().flat_map(u16::to_le_bytes).collect();
    b.extend_from_slice(&[0, 0]);
    Ok(b)
}

/// `name` as text, up to its NUL.
fn decode_name(name: &[u8]) -> String {
    let units: Vec<u16> =
        name.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).take_while(|&u| u != 0).collect();
    String::from_utf16_lossy(&units)
}

/// A live variable: what the firmware's GetVariable() would return.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Variable {
    /// The variable's name.
    pub name: String,
    /// Its vendor GUID.
    pub vendor: Guid,
    /// EFI_VARIABLE_* attribute bits (see [`crate::attributes`]).
    pub attributes: u32,
    /// Its value.
    pub data: Vec<u8>,
}

/// An edk2/OVMF variable-store file, decoded: firmware volume header, variable store
/// header, every variable record, and the bytes after the store (fault-tolerant-write
/// working block and spare area), which are written back untouched.
#[derive(Clone)]
pub struct VarStore {
    fv: FirmwareVolumeHeader,
    header: VariableStoreHeader,
    kind: HeaderKind,
    /// Bytes between the store header and the first variable (HEADER_ALIGN padding).
    gap: Vec<u8>,
    /// Every record in file order, dead ones included until the first change.
    records: Vec<Record>,
    /// Everything after the variable store, to the end of the input.
    tail: Vec<u8>,
}

impl std::fmt::Debug for VarStore {
    /// A summary: the tail alone is hundreds of KiB.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VarStore")
            .field("kind", &self.kind)
            .field("store_size", &self.header.size)
            .field("records", &self.records.len())
            .field("live", &self.live().len())
            .field("tail_len", &self.tail.len())
            .finish_non_exhaustive()
    }
}

impl VarStore {
    /// Decodes a variable-store file such as Debian's `/usr/share/OVMF/OVMF_VARS_4M.fd`.
    ///
    /// # Errors
    /// [`Error::NotVarStore`] if the file is no edk2 NV data firmware volume with a variable
    /// store, [`Error::Corrupt`] if a header, checksum or size in it is wrong,
    /// [`Error::Unsupported`] for a store that is not formatted and healthy.
    pub fn parse(b: &[u8]) -> Result<VarStore> {
        let fv = FirmwareVolumeHeader::parse(b)?;
        let store_at = fv.header_length();
        let (header, kind) = VariableStoreHeader::parse(b, store_at)?;
        let store_end = store_at
            .checked_add(header.size as usize)
            .filter(|&e| header.size as usize >= STORE_HEADER_LEN && e as u64 <= fv.fv_length())
            .ok_or_else(|| {
                corrupt(
                    store_at + 0x10,
                    format!(
                        "variable store Size {:#x} does not fit the firmware volume of {:#x} bytes",
                        header.size,
                        fv.fv_length()
                    ),
                )
            })?;
        let first = align_up(store_at + STORE_HEADER_LEN).min(store_end);
        let gap = b[store_at + STORE_HEADER_LEN..first].to_vec();

        let mut records: Vec<Record> = Vec::new();
        let mut pos = first;
        while let Some((r, next)) = Record::parse(b, pos, store_end, kind)? {
            if r.state == state::ADDED && records.iter().any(|o| o.state == state::ADDED && o.same_variable(&r)) {
                return Err(corrupt(pos, format!("variable {} is stored twice as live", decode_name(&r.name))));
            }
            records.push(r);
            pos = next;
        }
        Ok(VarStore { fv, header, kind, gap, records, tail: b[store_end..].to_vec() })
    }

    /// Whether variable headers carry the authenticated-variable fields.
    pub fn is_authenticated(&self) -> bool {
        self.kind == HeaderKind::Authenticated
    }

    /// Bytes available for variable headers, names and data (the store minus its header).
    pub fn capacity(&self) -> usize {
        self.header.size as usize - STORE_HEADER_LEN - self.gap.len()
    }

    /// Indices of the records that are current, as the firmware decides (edk2
    /// FindVariableEx): the VAR_ADDED copy, else the last copy still in deleted transition.
    fn live(&self) -> Vec<usize> {
        let rs = &self.records;
        (0..rs.len())
            .filter(|&i| {
                let r = &rs[i];
                r.state == state::ADDED
                    || (r.state == state::ADDED_IN_TRANSITION
                        && !rs.iter().any(|o| o.state == state::ADDED && o.same_variable(r))
                        && !rs[i + 1..].iter().any(|o| o.state == state::ADDED_IN_TRANSITION && o.same_variable(r)))
            })
            .collect()
    }

    /// The live variables, in store order.
    pub fn variables(&self) -> Vec<Variable> {
        self.live()
            .into_iter()
            .map(|i| {
                let r = &self.records[i];
                Variable {
                    name: decode_name(&r.name),
                    vendor: r.vendor,
                    attributes: r.attributes,
                    data: r.data.clone(),
                }
            })
            .collect()
    }

    /// The live variable `name` of `vendor`, if there is one.
    pub fn get(&self, name: &str, vendor: Guid) -> Option<Variable> {
        let name = encode_name(name).ok()?;
        self.live().into_iter().map(|i| &self.records[i]).find(|r| r.vendor == vendor && r.name == name).map(|r| {
            Variable { name: decode_name(&r.name), vendor: r.vendor, attributes: r.attributes, data: r.data.clone() }
        })
    }

    /// Drops dead records (deleted, half-written, superseded) and marks what remains
    /// VAR_ADDED, keeping the order. Every change does this first.
    pub fn compact(&mut self) {
        let live = self.live();
        let mut kept = Vec::with_capacity(live.len());
        for i in live {
            let mut r = self.records[i].clone();
            r.state = state::ADDED;
            kept.push(r);
        }
        self.records = kept;
    }

    /// Sets variable `name` of `vendor`: replaces the live one in its place, or appends a
    /// new one. Timestamp, MonotonicCount and PubKeyIndex are zero. Compacts the store.
    ///
    /// # Errors
    /// [`Error::Invalid`] for an empty name or one with NUL, empty data (which means
    /// "delete" to SetVariable; use [`VarStore::remove`]), or attributes a non-volatile
    /// store cannot hold (see [`crate::attributes`]).
    pub fn set(&mut self, name: &str, vendor: Guid, attributes: u32, data: Vec<u8>) -> Result<()> {
        let name_bytes = encode_name(name)?;
        self.check_attributes(name, attributes)?;
        if data.is_empty() {
            return Err(invalid("variable data", format!("{name}: empty data means delete; use remove()")));
        }
        // NameSize and DataSize are u32; anything near that never fits a store anyway.
        if data.len() > self.capacity() || name_bytes.len() > self.capacity() {
            return Err(Error::StoreFull {
                need: data.len() + name_bytes.len() + self.kind.header_len(),
                have: self.capacity(),
            });
        }
        self.compact();
        let new = Record::new(vendor, name_bytes, attributes, data);
        match self.records.iter_mut().find(|r| r.same_variable(&new)) {
            Some(r) => *r = new,
            None => self.records.push(new),
        }
        Ok(())
    }

    /// Removes the live variable `name` of `vendor`; whether there was one. Compacts the store.
    pub fn remove(&mut self, name: &str, vendor: Guid) -> bool {
        let Ok(name) = encode_name(name) else { return false };
        self.compact();
        let before = self.records.len();
        self.records.retain(|r| !(r.vendor == vendor && r.name == name));
        self.records.len() != before
    }

    fn check_attributes(&self, name: &str, a: u32) -> Result<()> {
        let bad = |why: &str| Err(invalid("variable attributes", format!("{name}: {a:#x}: {why}")));
        if a & !attr::STORABLE != 0 {
            return bad("unknown bits, or EFI_VARIABLE_APPEND_WRITE, which is a SetVariable() flag and not stored");
        }
        if a & attr::NON_VOLATILE == 0 {
            return bad("a variable store holds only non-volatile variables; add EFI_VARIABLE_NON_VOLATILE (1)");
        }
        if a & attr::RUNTIME_ACCESS != 0 && a & attr::BOOTSERVICE_ACCESS == 0 {
            return bad("EFI_VARIABLE_RUNTIME_ACCESS needs EFI_VARIABLE_BOOTSERVICE_ACCESS too (UEFI 2.10 §8.2)");
        }
        if self.kind == HeaderKind::Plain && a & attr::AUTHENTICATED != 0 {
            return bad("authenticated-write attributes need a store with authenticated variable headers");
        }
        Ok(())
    }

    /// The whole file again, the same size as the input: headers, records, erased free
    /// space, then the untouched bytes after the store.
    ///
    /// # Errors
    /// [`Error::StoreFull`] if the records do not fit the variable store.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let store_at = self.fv.header_length();
        let store_end = store_at + self.header.size as usize;
        let mut out = Vec::with_capacity(store_end + self.tail.len());
        out.extend_from_slice(&self.fv.encode());
        out.extend_from_slice(&self.header.encode());
        out.extend_from_slice(&self.gap);
        for r in &self.records {
            r.encode_into(&mut out, self.kind);
        }
        if out.len() > store_end {
            return Err(Error::StoreFull { need: out.len() - store_at, have: self.header.size as usize });
        }
        out.resize(store_end, ERASED);
        out.extend_from_slice(&self.tail);
        Ok(out)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::firmware_volume::tests::ovmf_like;
    use proptest::prelude::*;

    const NVBSRT: u32 = 7;

    /// A blank 8 KiB volume shaped like OVMF's: the store fills the first 4 KiB block and
    /// a patterned second block stands for the fault-tolerant-write area.
    pub(crate) fn blank(signature: Guid) -> Vec<u8> {
        let mut b = ovmf_like(2);
        b.extend_from_slice(
            &VariableStoreHeader {
                signature,
                size: 0x1000 - 0x48,
                format: STORE_FORMATTED,
                state: STORE_HEALTHY,
                reserved: 0,
                reserved1: 0,
            }
            .encode(),
        );
        b.resize(0x1000, ERASED);
        b.extend((0..0x1000u32).map(|i| (i * 7 + 3) as u8));
        b
    }

    fn name(s: &str) -> Vec<u8> {
        encode_name(s).unwrap()
    }

    fn rec(state: u8, n: &str, data: &[u8]) -> Record {
        Record { state, ..Record::new(Guid::EFI_GLOBAL_VARIABLE, name(n), NVBSRT, data.to_vec()) }
    }

    /// A store holding `records` as given (any state), encoded by our own encoder.
    fn with_records(signature: Guid, records: Vec<Record>) -> Vec<u8> {
        let mut s = VarStore::parse(&blank(signature)).unwrap();
        s.records = records;
        s.encode().unwrap()
    }

    #[test]
    fn store_header_layout() {
        let h = VariableStoreHeader {
            signature: Guid::AUTHENTICATED_VARIABLE,
            size: 0x0003_ffb8,
            format: STORE_FORMATTED,
            state: STORE_HEALTHY,
            reserved: 0,
            reserved1: 0,
        };
        // Bytes 0x48..0x64 of Debian's OVMF_VARS_4M.fd.
        let want = [
            0x78, 0x2c, 0xf3, 0xaa, 0x7b, 0x94, 0x9a, 0x43, 0xa1, 0x80, 0x2e, 0x14, 0x4e, 0xc3, 0x77, 0x92, //
            0xb8, 0xff, 0x03, 0x00, 0x5a, 0xfe, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        ];
        assert_eq!(h.encode(), want);
    }

    #[test]
    fn authenticated_record_layout() {
        let r = Record::new(Guid::EFI_GLOBAL_VARIABLE, name("Ab"), NVBSRT, vec![0x11, 0x22, 0x33]);
        let mut out = Vec::new();
        r.encode_into(&mut out, HeaderKind::Authenticated);
        let mut want = vec![0xaa, 0x55, 0x3f, 0x00, 0x07, 0, 0, 0]; // StartId, State, Reserved, Attributes
        want.extend([0u8; 8]); // MonotonicCount
        want.extend([0u8; 16]); // TimeStamp
        want.extend([0, 0, 0, 0, 6, 0, 0, 0, 3, 0, 0, 0]); // PubKeyIndex, NameSize, DataSize
        want.extend(Guid::EFI_GLOBAL_VARIABLE.to_efi_bytes()); // VendorGuid
        want.extend([b'A', 0, b'b', 0, 0, 0, 0x11, 0x22, 0x33]); // name, data
        want.extend([0xff; 3]); // to the next multiple of 4: 60 + 6 + 3 = 69 → 72
        assert_eq!(out, want);
    }

    #[test]
    fn plain_record_layout() {
        let r = Record::new(Guid::EFI_GLOBAL_VARIABLE, name("A"), 3, vec![9]);
        let mut out = Vec::new();
        r.encode_into(&mut out, HeaderKind::Plain);
        let mut want = vec![0xaa, 0x55, 0x3f, 0x00, 3, 0, 0, 0, 4, 0, 0, 0, 1, 0, 0, 0];
        want.extend(Guid::EFI_GLOBAL_VARIABLE.to_efi_bytes());
        want.extend([b'A', 0, 0, 0, 9, 0xff, 0xff, 0xff]); // 32 + 4 + 1 = 37 → 40
        assert_eq!(out, want);
    }

    #[test]
    fn blank_round_trip_and_tail_kept() {
        for sig in [Guid::AUTHENTICATED_VARIABLE, Guid::VARIABLE] {
            let b = blank(sig);
            let s = VarStore::parse(&b).unwrap();
            assert_eq!(s.is_authenticated(), sig == Guid::AUTHENTICATED_VARIABLE);
            assert!(s.variables().is_empty());
            assert_eq!(s.encode().unwrap(), b);
            assert_eq!(s.capacity(), 0x1000 - 0x48 - 0x1c);
        }
    }

    #[test]
    fn states_decide_what_is_live() {
        let b = with_records(
            Guid::AUTHENTICATED_VARIABLE,
            vec![
                rec(0x3c, "A", b"old"),  // deleted after a transition
                rec(0x3f, "A", b"new"),  // current
                rec(0x3e, "B", b"b1"),   // in transition, replacement never completed: still current
                rec(0x7f, "B", b"b2"),   // VAR_HEADER_VALID_ONLY: never completed
                rec(0x3d, "C", b"gone"), // deleted
                rec(0x3e, "D", b"d1"),   // in transition with a completed replacement
                rec(0x3f, "D", b"d2"),
                rec(0x3e, "E", b"e1"), // two in transition: the last one counts
                rec(0x3e, "E", b"e2"),
            ],
        );
        let mut s = VarStore::parse(&b).unwrap();
        assert_eq!(s.encode().unwrap(), b, "no change, every record kept");
        let live: Vec<(String, Vec<u8>)> = s.variables().into_iter().map(|v| (v.name, v.data)).collect();
        let want = [("A", "new"), ("B", "b1"), ("D", "d2"), ("E", "e2")];
        assert_eq!(live, want.map(|(n, d)| (n.to_string(), d.as_bytes().to_vec())));
        assert_eq!(s.get("C", Guid::EFI_GLOBAL_VARIABLE), None);

        s.compact();
        let again = VarStore::parse(&s.encode().unwrap()).unwrap();
        assert_eq!(again.records.len(), 4);
        assert!(again.records.iter().all(|r| r.state == state::ADDED));
        assert_eq!(again.variables(), s.variables());
    }

    #[test]
    fn set_replaces_in_place_and_appends_new() {
        let b = with_records(
            Guid::AUTHENTICATED_VARIABLE,
            vec![rec(0x3f, "A", b"1"), rec(0x3d, "X", b"dead"), rec(0x3f, "B", b"2")],
        );
        let mut s = VarStore::parse(&b).unwrap();
        s.set("A", Guid::EFI_GLOBAL_VARIABLE, 3, b"one".to_vec()).unwrap();
        s.set("A", Guid::VARIABLE, NVBSRT, b"other vendor".to_vec()).unwrap();
        let s = VarStore::parse(&s.encode().unwrap()).unwrap();
        let got: Vec<(String, Guid, u32, Vec<u8>)> =
            s.variables().into_iter().map(|v| (v.name, v.vendor, v.attributes, v.data)).collect();
        assert_eq!(
            got,
            vec![
                ("A".into(), Guid::EFI_GLOBAL_VARIABLE, 3, b"one".to_vec()),
                ("B".into(), Guid::EFI_GLOBAL_VARIABLE, NVBSRT, b"2".to_vec()),
                ("A".into(), Guid::VARIABLE, NVBSRT, b"other vendor".to_vec()),
            ]
        );
        assert_eq!(s.records.len(), 3, "the deleted record is gone");
    }

    #[test]
    fn set_zeroes_clock_fields_of_a_replaced_variable() {
        let mut old = rec(0x3f, "db", b"x");
        old.timestamp = [0xe9, 0x07, 3, 10, 2, 0x35, 0x27, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        old.monotonic_count = 5;
        old.pub_key_index = 2;
        let mut s = VarStore::parse(&with_records(Guid::AUTHENTICATED_VARIABLE, vec![old])).unwrap();
        assert_eq!(VarStore::parse(&s.encode().unwrap()).unwrap().records[0].timestamp[0], 0xe9, "kept when untouched");
        s.set("db", Guid::EFI_GLOBAL_VARIABLE, NVBSRT, b"y".to_vec()).unwrap();
        let r = &VarStore::parse(&s.encode().unwrap()).unwrap().records[0];
        assert_eq!((r.timestamp, r.monotonic_count, r.pub_key_index), ([0; 16], 0, 0));
    }

    #[test]
    fn plain_store_round_trip_and_set() {
        let b = with_records(Guid::VARIABLE, vec![rec(0x3f, "Lang", b"eng\0")]);
        let mut s = VarStore::parse(&b).unwrap();
        assert_eq!(s.encode().unwrap(), b);
        s.set("Timeout", Guid::EFI_GLOBAL_VARIABLE, NVBSRT, vec![5, 0]).unwrap();
        let e = s.encode().unwrap();
        assert_eq!(&e[0x1000..], &b[0x1000..]);
        let names: Vec<String> = VarStore::parse(&e).unwrap().variables().into_iter().map(|v| v.name).collect();
        assert_eq!(names, ["Lang", "Timeout"]);
        let err = s.set("PK", Guid::EFI_GLOBAL_VARIABLE, 0x27, vec![1]).unwrap_err();
        assert!(err.to_string().contains("authenticated"), "{err}");
    }

    #[test]
    fn remove() {
        let b = with_records(Guid::AUTHENTICATED_VARIABLE, vec![rec(0x3f, "A", b"1"), rec(0x3f, "B", b"2")]);
        let mut s = VarStore::parse(&b).unwrap();
        assert!(s.remove("A", Guid::EFI_GLOBAL_VARIABLE));
        assert!(!s.remove("A", Guid::EFI_GLOBAL_VARIABLE));
        let names: Vec<String> = s.variables().into_iter().map(|v| v.name).collect();
        assert_eq!(names, ["B"]);
    }

    #[test]
    fn rejects_bad_arguments() {
        let mut s = VarStore::parse(&blank(Guid::AUTHENTICATED_VARIABLE)).unwrap();
        let g = Guid::EFI_GLOBAL_VARIABLE;
        let msg = |r: Result<()>| r.unwrap_err().to_string();
        assert!(msg(s.set("", g, 7, vec![1])).contains("non-empty"));
        assert!(msg(s.set("a\0b", g, 7, vec![1])).contains("NUL"));
        assert!(msg(s.set("A", g, 7, vec![])).contains("remove()"));
        assert!(msg(s.set("A", g, 6, vec![1])).contains("NON_VOLATILE"));
        assert!(msg(s.set("A", g, 5, vec![1])).contains("BOOTSERVICE"));
        assert!(msg(s.set("A", g, 0x47, vec![1])).contains("APPEND_WRITE"));
        assert!(msg(s.set("A", g, 7, vec![0; 0x1000])).contains("holds only"));
    }

    #[test]
    fn full_store_is_an_error_at_encode() {
        let mut s = VarStore::parse(&blank(Guid::AUTHENTICATED_VARIABLE)).unwrap();
        // Each record: 60 header + 4 name + 1000 data = 1064 bytes; the store holds 3996.
        for n in ["A", "B", "C"] {
            s.set(n, Guid::EFI_GLOBAL_VARIABLE, 7, vec![0; 1000]).unwrap();
        }
        assert!(s.encode().is_ok());
        s.set("D", Guid::EFI_GLOBAL_VARIABLE, 7, vec![0; 1000]).unwrap();
        match s.encode() {
            Err(Error::StoreFull { need, have }) => assert_eq!((need, have), (0x1c + 4 * 1064, 0x1000 - 0x48)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rejects_broken_store_fields() {
        let good = with_records(Guid::AUTHENTICATED_VARIABLE, vec![rec(0x3f, "A", b"1")]);
        let err = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = good.clone();
            f(&mut b);
            match VarStore::parse(&b) {
                Ok(_) => panic!("the damage went unnoticed"),
                Err(e) => e.to_string(),
            }
        };
        assert!(err(&|b| b[0x48] ^= 1).contains("variable store signature"));
        assert!(err(&|b| b[0x48 + 0x14] = 0xff).contains("not formatted"));
        assert!(err(&|b| b[0x48 + 0x15] = 0xff).contains("not marked healthy"));
        assert!(err(&|b| b[0x48 + 0x12] = 0x10).contains("does not fit"));
        assert!(err(&|b| b[0x64 + 0x28 + 2] = 0xff).contains("run past the end"));
        assert!(err(&|b| b[0x64 + 0x3c + 2] = b'x').contains("NUL-terminated"));
        // The same live variable twice.
        let twice = with_records(Guid::AUTHENTICATED_VARIABLE, vec![rec(0x3f, "A", b"1"), rec(0x3f, "A", b"2")]);
        assert!(VarStore::parse(&twice).unwrap_err().to_string().contains("stored twice"));
    }

    fn sample() -> Vec<u8> {
        let mut r = vec![rec(0x3f, "BootOrder", &[1, 0]), rec(0x3c, "ConIn", &[1; 30]), rec(0x3e, "Lang", b"eng\0")];
        r.push(Record { vendor: Guid::VARIABLE, ..rec(0x3f, "Boot0001", &[7; 45]) });
        r.push(rec(0x7f, "Half", &[0xff; 9]));
        with_records(Guid::AUTHENTICATED_VARIABLE, r)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Damaged input never panics; whatever still parses encodes, re-parses and keeps
        /// its live variables and its size.
        #[test]
        fn mutated_input_never_panics(
            flips in proptest::collection::vec((0usize..0x400, any::<u8>()), 1..6),
            cut in proptest::option::of(0usize..0x2000),
        ) {
            let mut b = sample();
            for (at, v) in flips {
                b[at] = v;
            }
            if let Some(cut) = cut {
                b.truncate(cut);
            }
            if let Ok(mut s) = VarStore::parse(&b) {
                let vars = s.variables();
                let e = s.encode().unwrap();
                prop_assert_eq!(e.len(), b.len());
                prop_assert_eq!(VarStore::parse(&e).unwrap().variables(), vars.clone());
                s.compact();
                prop_assert_eq!(VarStore::parse(&s.encode().unwrap()).unwrap().variables(), vars);
            }
        }
    }
}
