//! Unified kernel images (UAPI "Unified Kernel Image" specification): systemd-stub
//! (`linux<arch>.efi.stub`) with the kernel, initrd, command line, os-release ... appended as
//! PE sections, which the stub finds by name at boot. Laid out exactly as systemd's ukify
//! (src/ukify/ukify.py, `make_uki()` and `pe_add_sections()`, systemd 257) lays them out, so
//! that our UKI and `ukify build` with the same inputs are the same bytes:
//!
//! 1. the stub is prepared: a COFF symbol table left at the end of the file by old stubs is
//!    cut off (PointerToSymbolTable and NumberOfSymbols zeroed; ukify also asks pefile to set
//!    IMAGE_FILE_LOCAL_SYMS_STRIPPED, but pefile does not write flag attributes back, so the
//!    real output keeps the stub's Characteristics, and so do we); section raw data is moved
//!    to FileAlignment boundaries; SizeOfHeaders is rounded up to FileAlignment, which gives
//!    room for more section headers;
//! 2. each new section gets a header after the last one (refused unless a further header
//!    would still fit before SizeOfHeaders, ukify's check), raw data at the end of the file
//!    rounded up to FileAlignment, SizeOfRawData rounded up to FileAlignment, VirtualSize =
//!    the data length, VirtualAddress = the previous last section's end rounded up to
//!    SectionAlignment, flags MEM_READ | CNT_INITIALIZED_DATA (`.linux`: MEM_READ | CNT_CODE),
//!    and SizeOfInitializedData grows by its VirtualSize; a kernel without NX_COMPAT clears
//!    NX_COMPAT in the UKI's DllCharacteristics;
//! 3. a section the stub already has (`.sbat`) is not added but its data replaced in place,
//!    which must fit in the stub's SizeOfRawData;
//! 4. CheckSum = 0 and SizeOfImage = the last section's end rounded up to SectionAlignment.
//!
//! Nothing depends on the time or the machine: TimeDateStamp and every other field are the
//! stub's. The section order is ukify 257's by default, ukify 258's on request ([`Layout`]).

use crate::image::{round_up, scn, PeImage, Section, DIR_SECURITY, SECTION_HEADER_SIZE};
use crate::{sbat, PeError};

/// `IMAGE_DLLCHARACTERISTICS_NX_COMPAT` (PE format, "DLL Characteristics").
const NX_COMPAT: u16 = 0x0100;

/// A section to append.
#[derive(Clone, Debug)]
pub struct NewSection<'a> {
    pub name: &'a str,
    pub data: &'a [u8],
    /// VirtualSize when it is not the data length (`.linux`: the kernel's SizeOfImage).
    pub virtual_size: Option<u32>,
}

fn to_u32(v: u64, what: &str) -> Result<u32, PeError> {
    u32::try_from(v).map_err(|_| PeError::Malformed(format!("{what} exceeds 4 GiB")))
}

/// Step 1 above: cut a trailing symbol table, align raw data, round SizeOfHeaders.
fn prepare_stub(stub: &[u8]) -> Result<PeImage, PeError> {
    let mut img = PeImage::parse(stub.to_vec())?;
    let symtab = img.pointer_to_symbol_table()? as u64;
    if symtab != 0 {
        let mut size = 18 * u64::from(img.number_of_symbols()?);
        // The string table follows the symbols; its first dword is its size.
        if let Some(s) = symtab.checked_add(size).and_then(|o| usize::try_from(o).ok()) {
            if let Some(b) = img.data.get(s..s.saturating_add(4)).filter(|b| b.len() == 4) {
                size += u64::from(u32::from_le_bytes(b.try_into().expect("4 bytes")));
            }
        }
        if symtab + size == img.data.len() as u64 {
            img.data.truncate(symtab as usize);
            img.clear_symbol_table();
        }
    }
    let fa = u64::from(img.file_alignment()?);
    let sa = u64::from(img.section_alignment()?);
    // PE format, "Optional Header Windows-Specific Fields": FileAlignment is a power of two
    // (512 to 64 KiB), SectionAlignment a power of two not below it. Checked so that hostile
    // values cannot make us allocate gigabytes of padding.
    if !fa.is_power_of_two() || fa > 0x10000 || !sa.is_power_of_two() || sa < fa || sa > 0x20_0000 {
        return Err(PeError::Malformed(format!("FileAlignment {fa:#x} / SectionAlignment {sa:#x}")));
    }
    for i in 0..img.sections.len() {
        let (oldp, oldsz) = {
            let s = &img.sections[i];
            (u64::from(s.pointer_to_raw_data), u64::from(s.size_of_raw_data))
        };
        let (newp, newsz) = (round_up(oldp, fa), round_up(oldsz, fa));
        let (padp, padsz) = ((newp - oldp) as usize, (newsz - oldsz) as usize);
        if padp + padsz == 0 {
            continue;
        }
        let (op, os) = (oldp as usize, oldsz as usize);
        if op.checked_add(os).is_none_or(|e| e > img.data.len()) {
            return Err(PeError::Truncated);
        }
        let mut d = Vec::with_capacity(img.data.len() + padp + padsz);
        d.extend_from_slice(&img.data[..op]);
        d.resize(d.len() + padp, 0);
        d.extend_from_slice(&img.data[op..op + os]);
        d.resize(d.len() + padsz, 0);
        d.extend_from_slice(&img.data[op + os..]);
        img.data = d;
        img.sections[i].pointer_to_raw_data = to_u32(newp, "PointerToRawData")?;
        img.sections[i].size_of_raw_data = to_u32(newsz, "SizeOfRawData")?;
        for later in &mut img.sections[i + 1..] {
            later.pointer_to_raw_data =
                to_u32(u64::from(later.pointer_to_raw_data) + (padp + padsz) as u64, "PointerToRawData")?;
        }
    }
    let soh = round_up(u64::from(img.size_of_headers()?), fa);
    img.set_size_of_headers(to_u32(soh, "SizeOfHeaders")?);
    img.write_sections()?;
    Ok(img)
}

/// ukify's `pe_add_sections()`: `stub` with `sections` appended (or, for names the stub
/// already has, replaced in place). Refuses a signed stub, as ukify does.
pub fn add_sections(stub: &[u8], sections: &[NewSection]) -> Result<Vec<u8>, PeError> {
    let mut img = prepare_stub(stub)?;
    if img.data_dir(DIR_SECURITY)?.0 != 0 {
        return Err(PeError::Malformed("the stub is signed; sign the UKI after building it".into()));
    }
    let n_original = img.sections.len();
    let fa = u64::from(img.file_alignment()?);
    let sa = u64::from(img.section_alignment()?);
    let soh = u64::from(img.size_of_headers()?);
    let table = img.section_table_offset() as u64;
    for new in sections {
        let name = Section::name_field(new.name)?;
        let last = img.sections.last().ok_or_else(|| PeError::Malformed("no sections".into()))?;
        // ukify: offset of the new header = last header's offset + 40, and refuses when
        // offset + 40 > SizeOfHeaders.
        let header_at = table + (img.sections.len() * SECTION_HEADER_SIZE) as u64;
        if header_at + SECTION_HEADER_SIZE as u64 > soh {
            return Err(PeError::Malformed(format!("no header space left for section {}", new.name)));
        }
        let len = new.data.len() as u64;
        let vsize = new.virtual_size.map_or(len, u64::from);
        let raw_size = round_up(len, fa);
        let vaddr = round_up(u64::from(last.virtual_address) + u64::from(last.virtual_size), sa);
        let characteristics =
            scn::MEM_READ | if new.name == ".linux" { scn::CNT_CODE } else { scn::CNT_INITIALIZED_DATA };
        if new.name == ".linux" {
            // ukify 257: a kernel without NX_COMPAT clears it in the UKI too, since firmware
            // that enforces it would otherwise start a UKI whose kernel cannot run under it.
            if let Ok(k) = PeImage::parse(new.data.to_vec()) {
                if k.dll_characteristics()? & NX_COMPAT == 0 {
                    let dc = img.dll_characteristics()? & !NX_COMPAT;
                    img.set_dll_characteristics(dc);
                }
            }
        }

        if let Some(i) = img.sections[..n_original].iter().position(|s| s.name == name) {
            // Replace in place (ukify's .sbat case): the data, zero-filled to the end of the
            // stub's raw area, so that no other section moves.
            let s = &img.sections[i];
            if vsize > u64::from(s.size_of_raw_data) {
                return Err(PeError::Malformed(format!(
                    "{} of {} bytes does not fit in the stub's {} bytes",
                    new.name, vsize, s.size_of_raw_data
                )));
            }
            let (p, old) = (s.pointer_to_raw_data as usize, s.size_of_raw_data as usize);
            let area = img.data.get_mut(p..p + old).ok_or(PeError::Truncated)?;
            area.fill(0);
            area[..new.data.len()].copy_from_slice(new.data);
            // ukify 257 keeps SizeOfRawData (258 sets it to the rounded new size: the same
            // whenever the stub's area is one FileAlignment unit, as systemd's are).
            img.sections[i].virtual_size = to_u32(vsize, "VirtualSize")?;
            continue;
        }

        let ptr = round_up(img.data.len() as u64, fa);
        img.data.resize(ptr as usize, 0);
        img.data.extend_from_slice(new.data);
        img.data.resize((ptr + raw_size) as usize, 0);
        img.sections.push(Section {
            name,
            virtual_size: to_u32(vsize, "VirtualSize")?,
            virtual_address: to_u32(vaddr, "VirtualAddress")?,
            size_of_raw_data: to_u32(raw_size, "SizeOfRawData")?,
            pointer_to_raw_data: to_u32(ptr, "PointerToRawData")?,
            rest: [0; 12],
            characteristics,
        });
        let init = u64::from(img.size_of_initialized_data()?) + vsize;
        img.set_size_of_initialized_data(to_u32(init, "SizeOfInitializedData")?);
    }
    img.set_checksum(0);
    let last = img.sections.last().ok_or_else(|| PeError::Malformed("no sections".into()))?;
    let size = round_up(u64::from(last.virtual_address) + u64::from(last.virtual_size), sa);
    img.set_size_of_image(to_u32(size, "SizeOfImage")?);
    img.write_sections()?;
    Ok(img.data)
}

/// Which ukify release's layout to follow (they differ in section order and `.linux`'s
/// VirtualSize; systemd-stub finds sections by name, so both boot).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Layout {
    /// systemd 257 (Debian 13, NixOS 25.05): `.osrel .cmdline .dtb .uname .splash .linux
    /// .initrd .ucode .sbat`, VirtualSize = data length. Checked against ukify 257 itself.
    #[default]
    Ukify257,
    /// systemd 258 and later: `.linux` after `.ucode` (just before `.sbat`), its VirtualSize
    /// the kernel's SizeOfImage (so that the stub can run the kernel in place).
    Ukify258,
}

/// The inputs of a UKI; `None` (or empty) parts are left out, as ukify leaves them out.
#[derive(Clone, Debug, Default)]
pub struct Uki<'a> {
    /// Whose layout.
    pub layout: Layout,
    /// systemd-stub, `linux<arch>.efi.stub` of the target's systemd.
    pub stub: &'a [u8],
    /// The kernel image (bzImage / EFI-stub kernel).
    pub linux: &'a [u8],
    /// Initrds, concatenated in order (each padded to 4 bytes when there are several).
    pub initrds: Vec<&'a [u8]>,
    /// Kernel command line (`.cmdline`), bytes as given (ukify adds no NUL).
    pub cmdline: Option<&'a [u8]>,
    /// os-release (`.osrel`).
    pub os_release: Option<&'a [u8]>,
    /// Kernel release (`.uname`), e.g. `6.1.0-57-cloud-amd64`.
    pub uname: Option<&'a [u8]>,
    /// Device tree (`.dtb`).
    pub devicetree: Option<&'a [u8]>,
    /// Boot splash (`.splash`).
    pub splash: Option<&'a [u8]>,
    /// Microcode initrd (`.ucode`).
    pub microcode: Option<&'a [u8]>,
    /// SBAT policies to merge; empty = ukify's default (the `uki,1,...` line).
    pub sbat: Vec<&'a str>,
}

impl Uki<'_> {
    /// The UKI's bytes (unsigned; sign with [`crate::authenticode`] afterwards).
    pub fn build(&self) -> Result<Vec<u8>, PeError> {
        let stub = PeImage::parse(self.stub.to_vec())?;
        // ukify 258: .linux gets the kernel's SizeOfImage as VirtualSize when the kernel is PE.
        let linux_img = PeImage::parse(self.linux.to_vec()).ok();
        let linux_vsize = linux_img.as_ref().and_then(|k| k.size_of_image().ok());
        let initrd: Option<Vec<u8>> = match self.initrds.len() {
            0 => None,
            1 => Some(self.initrds[0].to_vec()),
            _ => Some(self.initrds.iter().fold(Vec::new(), |mut v, i| {
                v.extend_from_slice(i);
                v.resize(round_up(v.len() as u64, 4) as usize, 0);
                v
            })),
        };
        let mut images = vec![&stub];
        if let Some(k) = &linux_img {
            images.push(k);
        }
        let policies: Vec<&str> = if self.sbat.is_empty() { vec![sbat::UKI_SBAT] } else { self.sbat.clone() };
        let sbat = sbat::merge(&images, &policies);

        let mut sections = Vec::new();
        let mut add = |name: &'static str, data: Option<&[u8]>, vs: Option<u32>| {
            if let Some(d) = data.filter(|d| !d.is_empty()) {
                sections.push((name, d.to_vec(), vs));
            }
        };
        add(".osrel", self.os_release, None);
        add(".cmdline", self.cmdline, None);
        add(".dtb", self.devicetree, None);
        add(".uname", self.uname, None);
        add(".splash", self.splash, None);
        if self.layout == Layout::Ukify257 {
            add(".linux", Some(self.linux), None);
        }
        add(".initrd", initrd.as_deref(), None);
        add(".ucode", self.microcode, None);
        if self.layout == Layout::Ukify258 {
            add(".linux", Some(self.linux), linux_vsize);
        }
        add(".sbat", Some(&sbat), None);
        let new: Vec<NewSection> =
            sections.iter().map(|(n, d, vs)| NewSection { name: n, data: d, virtual_size: *vs }).collect();
        add_sections(self.stub, &new)
    }
}
