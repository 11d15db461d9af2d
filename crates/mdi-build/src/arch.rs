//! The target architecture: one typed value, from the system's bootspec or the
//! `targetSystem` spec key, that picks every architecture-specific name and file a boot
//! loader installation needs.

use std::fmt;

/// A CPU architecture NixOS images are built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    I686,
    Aarch64,
    Riscv64,
}

impl Arch {
    /// Every architecture, in the order error messages list them.
    pub const ALL: [Arch; 4] = [Arch::X86_64, Arch::I686, Arch::Aarch64, Arch::Riscv64];

    /// From a Nix system double (`aarch64-linux`, as bootspec's `system` and
    /// `stdenv.hostPlatform.system` say it).
    pub fn from_nix_system(s: &str) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.nix_system() == s)
    }

    /// The Nix system double.
    pub fn nix_system(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-linux",
            Arch::I686 => "i686-linux",
            Arch::Aarch64 => "aarch64-linux",
            Arch::Riscv64 => "riscv64-linux",
        }
    }

    /// UEFI's short name for the architecture, as in `systemd-boot<efi>.efi` and nixpkgs'
    /// `stdenv.hostPlatform.efiArch`.
    pub fn efi(self) -> &'static str {
        match self {
            Arch::X86_64 => "x64",
            Arch::I686 => "ia32",
            Arch::Aarch64 => "aa64",
            Arch::Riscv64 => "riscv64",
        }
    }

    /// The removable-media boot path's file name (UEFI specification 2.10, §3.5.1.1:
    /// `\EFI\BOOT\BOOT<machine type short name>.EFI`).
    pub fn removable_loader(self) -> String {
        format!("BOOT{}.EFI", self.efi().to_ascii_uppercase())
    }

    /// The PE machine type EFI applications for this architecture carry.
    pub fn pe_machine(self) -> u16 {
        match self {
            Arch::X86_64 => mdi_pe::machine::AMD64,
            Arch::I686 => mdi_pe::machine::I386,
            Arch::Aarch64 => mdi_pe::machine::ARM64,
            Arch::Riscv64 => mdi_pe::machine::RISCV64,
        }
    }

    /// GRUB's platform for UEFI (`grub-mkimage -O`, and its module folder's name).
    pub fn grub_efi_target(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-efi",
            Arch::I686 => "i386-efi",
            Arch::Aarch64 => "arm64-efi",
            Arch::Riscv64 => "riscv64-efi",
        }
    }

    /// Whether PC BIOS firmware exists for it (GRUB's i386-pc).
    pub fn has_pc_bios(self) -> bool {
        matches!(self, Arch::X86_64 | Arch::I686)
    }

    /// Debian's architecture name, for the package hints in error messages.
    pub fn debian(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::I686 => "i386",
            Arch::Aarch64 => "arm64",
            Arch::Riscv64 => "riscv64",
        }
    }

    /// The Debian package holding GRUB's UEFI modules for this architecture.
    pub fn grub_efi_package(self) -> String {
        format!("grub-efi-{}-bin", if self == Arch::I686 { "ia32" } else { self.debian() })
    }

    /// Debian's UEFI variable-store template for QEMU's firmware of this architecture
    /// (packages ovmf, ovmf-ia32, qemu-efi-aarch64), the default `efiVariables`; None where
    /// Debian 12 has none.
    pub fn debian_efi_vars(self) -> Option<(&'static str, &'static str)> {
        match self {
            Arch::X86_64 => Some(("/usr/share/OVMF/OVMF_VARS_4M.fd", "ovmf")),
            Arch::I686 => Some(("/usr/share/OVMF/OVMF32_VARS_4M.fd", "ovmf-ia32")),
            Arch::Aarch64 => Some(("/usr/share/AAVMF/AAVMF_VARS.fd", "qemu-efi-aarch64")),
            Arch::Riscv64 => None,
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.nix_system())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_uefi_and_nixpkgs() {
        assert_eq!(Arch::X86_64.removable_loader(), "BOOTX64.EFI");
        assert_eq!(Arch::I686.removable_loader(), "BOOTIA32.EFI");
        assert_eq!(Arch::Aarch64.removable_loader(), "BOOTAA64.EFI");
        assert_eq!(Arch::Riscv64.removable_loader(), "BOOTRISCV64.EFI");
        assert_eq!(Arch::I686.grub_efi_package(), "grub-efi-ia32-bin");
        assert_eq!(Arch::Aarch64.grub_efi_package(), "grub-efi-arm64-bin");
        for a in Arch::ALL {
            assert_eq!(Arch::from_nix_system(a.nix_system()), Some(a));
        }
        assert_eq!(Arch::from_nix_system("armv7l-linux"), None);
    }
}
