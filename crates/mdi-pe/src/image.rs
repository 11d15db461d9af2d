//! The PE/COFF headers that adding sections and signing touch, read from and written back to
//! the image bytes in place (Microsoft "PE Format" specification: "MS-DOS Stub", "COFF File
//! Header (Object and Image)", "Optional Header (Image Only)", "Optional Header Data
//! Directories", "Section Table (Section Headers)"). Every other byte of the image is kept as
//! it is, so an image read and written back unchanged is byte-identical.
//!
//! Reading never panics: offsets and counts from the file are range-checked, and anything out
//! of range is a [`PeError`].

use crate::PeError;

/// `IMAGE_NT_OPTIONAL_HDR32_MAGIC`: PE32.
pub const PE32_MAGIC: u16 = 0x10b;
/// `IMAGE_NT_OPTIONAL_HDR64_MAGIC`: PE32+.
pub const PE32PLUS_MAGIC: u16 = 0x20b;
/// Size of one section header ("Section Table").
pub const SECTION_HEADER_SIZE: usize = 40;
/// Index of the Certificate Table in the data directories ("Optional Header Data
/// Directories": entry 4, "The attribute certificate table"; its address is a file offset).
pub const DIR_SECURITY: usize = 4;

/// Section flags ("Section Flags").
pub mod scn {
    /// `IMAGE_SCN_CNT_CODE`.
    pub const CNT_CODE: u32 = 0x0000_0020;
    /// `IMAGE_SCN_CNT_INITIALIZED_DATA`.
    pub const CNT_INITIALIZED_DATA: u32 = 0x0000_0040;
    /// `IMAGE_SCN_MEM_READ`.
    pub const MEM_READ: u32 = 0x4000_0000;
}

/// One section header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Section {
    /// The 8-byte name field (NUL-padded).
    pub name: [u8; 8],
    pub virtual_size: u32,
    pub virtual_address: u32,
    pub size_of_raw_data: u32,
    pub pointer_to_raw_data: u32,
    /// PointerToRelocations, PointerToLinenumbers, NumberOfRelocations, NumberOfLinenumbers:
    /// kept as they are (zero in images).
    pub rest: [u8; 12],
    pub characteristics: u32,
}

impl Section {
    /// The name without its NUL padding.
    pub fn name_str(&self) -> String {
        let end = self.name.iter().position(|&c| c == 0).unwrap_or(8);
        String::from_utf8_lossy(&self.name[..end]).into_owned()
    }

    fn decode(b: &[u8]) -> Section {
        let u = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        Section {
            name: b[0..8].try_into().expect("8 bytes"),
            virtual_size: u(8),
            virtual_address: u(12),
            size_of_raw_data: u(16),
            pointer_to_raw_data: u(20),
            rest: b[24..36].try_into().expect("12 bytes"),
            characteristics: u(36),
        }
    }

    fn encode(&self) -> [u8; SECTION_HEADER_SIZE] {
        let mut b = [0u8; SECTION_HEADER_SIZE];
        b[0..8].copy_from_slice(&self.name);
        b[8..12].copy_from_slice(&self.virtual_size.to_le_bytes());
        b[12..16].copy_from_slice(&self.virtual_address.to_le_bytes());
        b[16..20].copy_from_slice(&self.size_of_raw_data.to_le_bytes());
        b[20..24].copy_from_slice(&self.pointer_to_raw_data.to_le_bytes());
        b[24..36].copy_from_slice(&self.rest);
        b[36..40].copy_from_slice(&self.characteristics.to_le_bytes());
        b
    }

    /// A section name as the 8-byte field; names longer than 8 bytes are refused (images have
    /// no string table to hold them).
    pub fn name_field(name: &str) -> Result<[u8; 8], PeError> {
        let b = name.as_bytes();
        if b.is_empty() || b.len() > 8 {
            return Err(PeError::Malformed(format!("section name '{name}' is not 1 to 8 bytes")));
        }
        let mut f = [0u8; 8];
        f[..b.len()].copy_from_slice(b);
        Ok(f)
    }
}

/// A PE image: its bytes, where its headers are, and its section table.
#[derive(Clone, Debug)]
pub struct PeImage {
    pub data: Vec<u8>,
    /// File offset of `PE\0\0`.
    pe: usize,
    /// File offset of the optional header.
    opt: usize,
    pe32plus: bool,
    pub sections: Vec<Section>,
}

fn rd16(b: &[u8], o: usize) -> Result<u16, PeError> {
    b.get(o..o.checked_add(2).ok_or(PeError::Truncated)?)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or(PeError::Truncated)
}

fn rd32(b: &[u8], o: usize) -> Result<u32, PeError> {
    b.get(o..o.checked_add(4).ok_or(PeError::Truncated)?)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or(PeError::Truncated)
}

impl PeImage {
    /// Reads the headers of `data`.
    pub fn parse(data: Vec<u8>) -> Result<PeImage, PeError> {
        crate::machine(&data)?;
        let pe = rd32(&data, 0x3C)? as usize;
        let opt = pe + 24;
        let n_sections = rd16(&data, pe + 6)? as usize;
        let opt_size = rd16(&data, pe + 20)? as usize;
        let magic = rd16(&data, opt)?;
        let pe32plus = match magic {
            PE32PLUS_MAGIC => true,
            PE32_MAGIC => false,
            m => return Err(PeError::Malformed(format!("optional header magic {m:#x}"))),
        };
        let table = opt + opt_size;
        let end =
            n_sections.checked_mul(SECTION_HEADER_SIZE).and_then(|n| n.checked_add(table)).ok_or(PeError::Truncated)?;
        let raw = data.get(table..end).ok_or(PeError::Truncated)?;
        let sections = raw.chunks_exact(SECTION_HEADER_SIZE).map(Section::decode).collect();
        let img = PeImage { data, pe, opt, pe32plus, sections };
        // The fields we use must be inside the file.
        img.size_of_headers()?;
        img.data_dir(DIR_SECURITY)?;
        Ok(img)
    }

    pub fn is_pe32plus(&self) -> bool {
        self.pe32plus
    }

    fn get32(&self, o: usize) -> Result<u32, PeError> {
        rd32(&self.data, o)
    }

    fn put32(&mut self, o: usize, v: u32) {
        self.data[o..o + 4].copy_from_slice(&v.to_le_bytes());
    }

    /// Offset of the section table.
    pub fn section_table_offset(&self) -> usize {
        let opt_size = rd16(&self.data, self.pe + 20).unwrap_or(0) as usize;
        self.opt + opt_size
    }

    pub fn pointer_to_symbol_table(&self) -> Result<u32, PeError> {
        self.get32(self.pe + 12)
    }

    pub fn number_of_symbols(&self) -> Result<u32, PeError> {
        self.get32(self.pe + 16)
    }

    /// Clears PointerToSymbolTable and NumberOfSymbols.
    pub fn clear_symbol_table(&mut self) {
        self.put32(self.pe + 12, 0);
        self.put32(self.pe + 16, 0);
    }

    pub fn size_of_initialized_data(&self) -> Result<u32, PeError> {
        self.get32(self.opt + 8)
    }

    pub fn set_size_of_initialized_data(&mut self, v: u32) {
        self.put32(self.opt + 8, v);
    }

    pub fn section_alignment(&self) -> Result<u32, PeError> {
        self.get32(self.opt + 32)
    }

    pub fn file_alignment(&self) -> Result<u32, PeError> {
        self.get32(self.opt + 36)
    }

    pub fn size_of_image(&self) -> Result<u32, PeError> {
        self.get32(self.opt + 56)
    }

    pub fn set_size_of_image(&mut self, v: u32) {
        self.put32(self.opt + 56, v);
    }

    /// DllCharacteristics (a u16 at the same offset in PE32 and PE32+).
    pub fn dll_characteristics(&self) -> Result<u16, PeError> {
        rd16(&self.data, self.opt + 70)
    }

    pub fn set_dll_characteristics(&mut self, v: u16) {
        let o = self.opt + 70;
        self.data[o..o + 2].copy_from_slice(&v.to_le_bytes());
    }

    pub fn size_of_headers(&self) -> Result<u32, PeError> {
        self.get32(self.opt + 60)
    }

    pub fn set_size_of_headers(&mut self, v: u32) {
        self.put32(self.opt + 60, v);
    }

    /// File offset of the CheckSum field (skipped by the Authenticode digest).
    pub fn checksum_offset(&self) -> usize {
        self.opt + 64
    }

    pub fn set_checksum(&mut self, v: u32) {
        let o = self.checksum_offset();
        self.put32(o, v);
    }

    /// File offset of data directory `i` (8 bytes: address, size).
    pub fn data_dir_offset(&self, i: usize) -> Result<usize, PeError> {
        let (count_at, dirs_at) = if self.pe32plus { (108, 112) } else { (92, 96) };
        let count = self.get32(self.opt + count_at)? as usize;
        if i >= count {
            return Err(PeError::Malformed(format!("no data directory {i} ({count} present)")));
        }
        Ok(self.opt + dirs_at + 8 * i)
    }

    /// Data directory `i`: (address, size).
    pub fn data_dir(&self, i: usize) -> Result<(u32, u32), PeError> {
        let o = self.data_dir_offset(i)?;
        Ok((self.get32(o)?, self.get32(o + 4)?))
    }

    pub fn set_data_dir(&mut self, i: usize, addr: u32, size: u32) -> Result<(), PeError> {
        let o = self.data_dir_offset(i)?;
        self.get32(o + 4)?;
        self.put32(o, addr);
        self.put32(o + 4, size);
        Ok(())
    }

    /// Writes the section table and NumberOfSections back; the table must fit before
    /// SizeOfHeaders.
    pub fn write_sections(&mut self) -> Result<(), PeError> {
        let table = self.section_table_offset();
        let end = table + self.sections.len() * SECTION_HEADER_SIZE;
        if end > self.data.len() || self.sections.len() > u16::MAX as usize {
            return Err(PeError::Malformed("section table does not fit".into()));
        }
        let n = self.sections.len() as u16;
        self.data[self.pe + 6..self.pe + 8].copy_from_slice(&n.to_le_bytes());
        for (i, s) in self.sections.iter().enumerate() {
            let o = table + i * SECTION_HEADER_SIZE;
            self.data[o..o + SECTION_HEADER_SIZE].copy_from_slice(&s.encode());
        }
        Ok(())
    }

    /// The bytes of a section's raw data (at most SizeOfRawData, cut at the end of the file).
    pub fn raw_data(&self, s: &Section) -> &[u8] {
        let start = (s.pointer_to_raw_data as usize).min(self.data.len());
        let end = start.saturating_add(s.size_of_raw_data as usize).min(self.data.len());
        &self.data[start..end]
    }
}

/// `v` rounded up to a multiple of `a` (a power of two or any non-zero value).
pub fn round_up(v: u64, a: u64) -> u64 {
    if a == 0 {
        v
    } else {
        v.div_ceil(a) * a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stub_round_trips_unchanged() {
        let p = std::path::Path::new("/usr/lib/systemd/boot/efi/linuxx64.efi.stub");
        let Ok(b) = std::fs::read(p) else { return };
        let mut img = PeImage::parse(b.clone()).unwrap();
        assert!(img.is_pe32plus());
        assert!(img.sections.iter().any(|s| s.name_str() == ".sbat"));
        img.write_sections().unwrap();
        assert!(img.data == b);
    }

    #[test]
    fn hostile_headers_are_errors() {
        let p = std::path::Path::new("/usr/lib/systemd/boot/efi/linuxx64.efi.stub");
        let Ok(b) = std::fs::read(p) else { return };
        // Cut anywhere in the headers, or with huge counts: an error, never a panic.
        for cut in [0x40, 0x80, 0x100, 0x200, 0x300] {
            let _ = PeImage::parse(b[..cut.min(b.len())].to_vec());
        }
        // Any header byte set to 0xff or 0x00: parsing and adding sections give a result or
        // an error, never a panic.
        let hdr = u32::from_le_bytes(b[0x3C..0x40].try_into().unwrap()) as usize + 24 + 240 + 400;
        for at in 0..hdr.min(b.len()) {
            for v in [0xffu8, 0x00] {
                let mut x = b.clone();
                x[at] = v;
                if let Ok(img) = PeImage::parse(x.clone()) {
                    let _ = img.data_dir(DIR_SECURITY);
                }
                let new = [crate::uki::NewSection { name: ".x", data: b"abc", virtual_size: None }];
                let _ = crate::uki::add_sections(&x, &new);
            }
        }
    }
}
