//! PE/COFF images, the format of EFI applications (boot loaders, kernels with an EFI stub):
//! the COFF header's machine type, which says the CPU architecture the image is built for, so
//! that an installer can refuse a loader the firmware would not start ([`machine`]); the
//! headers themselves ([`image`]); unified kernel images built the way ukify builds them
//! ([`uki`], with the SBAT merge in [`sbat`]).
//!
//! Layout (Microsoft PE format specification, "MS-DOS Stub" and "COFF File Header"): the
//! file starts with the MS-DOS header, `MZ`; its 32-bit field at offset 0x3C is the file
//! offset of the PE signature `PE\0\0`, which the 20-byte COFF header follows; the
//! header's first field is the 16-bit little-endian machine type.

pub mod authenticode;
pub mod der;
pub mod image;
pub mod sbat;
pub mod uki;

/// Machine types (PE format specification, "Machine Types").
pub mod machine {
    /// Intel 386 and later (UEFI's IA32).
    pub const I386: u16 = 0x014c;
    /// x64.
    pub const AMD64: u16 = 0x8664;
    /// ARM64 little endian.
    pub const ARM64: u16 = 0xaa64;
    /// ARM Thumb-2 little endian (UEFI's ARM).
    pub const ARMNT: u16 = 0x01c4;
    /// RISC-V 64-bit address space.
    pub const RISCV64: u16 = 0x5064;
    /// LoongArch 64-bit.
    pub const LOONGARCH64: u16 = 0x6264;
}

/// Why bytes are not a PE image we can read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeError {
    /// No `MZ` at the start.
    #[error("not a PE/EFI image (no MZ header)")]
    NoDosHeader,
    /// The PE signature offset points outside the file, or not at `PE\0\0`.
    #[error("not a PE/EFI image (no PE signature at the offset the MZ header gives)")]
    NoPeSignature,
    /// A header field points past the end of the file.
    #[error("PE image truncated: a header field points past its end")]
    Truncated,
    /// Headers that cannot be what the operation needs.
    #[error("PE image unusable: {0}")]
    Malformed(String),
}

/// The machine type of the PE image `bytes` (a prefix holding the headers is enough).
pub fn machine(bytes: &[u8]) -> Result<u16, PeError> {
    if bytes.get(..2) != Some(b"MZ") {
        return Err(PeError::NoDosHeader);
    }
    let at = |o: usize, n: usize| bytes.get(o..o.checked_add(n)?);
    let lfanew = at(0x3C, 4).ok_or(PeError::NoDosHeader)?;
    let pe = u32::from_le_bytes(lfanew.try_into().expect("4 bytes")) as usize;
    if at(pe, 4) != Some(b"PE\0\0") {
        return Err(PeError::NoPeSignature);
    }
    let m = at(pe + 4, 2).ok_or(PeError::NoPeSignature)?;
    Ok(u16::from_le_bytes([m[0], m[1]]))
}

/// A machine type as people name the architecture.
pub fn machine_name(m: u16) -> String {
    match m {
        machine::I386 => "i386 (ia32)".into(),
        machine::AMD64 => "x86_64 (x64)".into(),
        machine::ARM64 => "aarch64 (aa64)".into(),
        machine::ARMNT => "32-bit ARM".into(),
        machine::RISCV64 => "riscv64".into(),
        machine::LOONGARCH64 => "loongarch64".into(),
        other => format!("machine type {other:#06x}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(pe_at: u32, m: u16) -> Vec<u8> {
        let mut b = vec![0u8; pe_at as usize + 24];
        b[..2].copy_from_slice(b"MZ");
        b[0x3C..0x40].copy_from_slice(&pe_at.to_le_bytes());
        b[pe_at as usize..pe_at as usize + 4].copy_from_slice(b"PE\0\0");
        b[pe_at as usize + 4..pe_at as usize + 6].copy_from_slice(&m.to_le_bytes());
        b
    }

    #[test]
    fn reads_the_machine_type() {
        assert_eq!(machine(&image(0x80, machine::ARM64)), Ok(machine::ARM64));
        assert_eq!(machine(&image(0x40, machine::AMD64)), Ok(machine::AMD64));
    }

    #[test]
    fn refuses_what_is_not_pe() {
        assert_eq!(machine(b"\x7fELF"), Err(PeError::NoDosHeader));
        assert_eq!(machine(b"MZ"), Err(PeError::NoDosHeader));
        let mut b = image(0x80, machine::ARM64);
        b[0x80] = b'X';
        assert_eq!(machine(&b), Err(PeError::NoPeSignature));
        // An offset past the end (or one that overflows) is no signature, not a panic.
        let mut b = image(0x80, machine::ARM64);
        b[0x3C..0x40].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(machine(&b), Err(PeError::NoPeSignature));
    }

    #[test]
    fn debian_binaries_when_present() {
        // The host's own systemd-boot, when installed, is an x64 PE image.
        let p = std::path::Path::new("/usr/lib/systemd/boot/efi/systemd-bootx64.efi");
        if let Ok(b) = std::fs::read(p) {
            assert_eq!(machine(&b), Ok(machine::AMD64));
        }
    }
}
