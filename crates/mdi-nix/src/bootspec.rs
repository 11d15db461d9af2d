//! The system's bootspec (`<toplevel>/boot.json`, NixOS RFC 0125) and the names NixOS'
//! boot loader installers give the files they copy. Read through the `bootspec` crate so
//! that what we accept is exactly what NixOS' own tools accept.

use std::path::{Path, PathBuf};

/// What a boot loader needs to know about one generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootEntry {
    /// The toplevel store path.
    pub toplevel: String,
    /// The Nix system double the generation is built for (`x86_64-linux`, `aarch64-linux`).
    pub system: String,
    /// `<kernel package>/<kernel file>`, a path in the store.
    pub kernel: String,
    /// `<initrd package>/<initrd file>` when the system has an initrd.
    pub initrd: Option<String>,
    /// Kernel command line parameters, in order.
    pub kernel_params: Vec<String>,
    /// The stage-2 init, `<toplevel>/init`.
    pub init: String,
    /// e.g. `NixOS 24.05 (Linux 6.6.30)`.
    pub label: String,
    /// `org.nixos.systemd-boot` extension's sortKey, when present.
    pub sort_key: Option<String>,
    /// The system's specialisations (`org.nixos.specialisation.v1`), sorted by name.
    pub specialisations: Vec<(String, BootEntry)>,
}

/// Errors reading a bootspec.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BootspecError {
    /// `boot.json` is absent or unreadable.
    #[error("the system '{system}' has no readable bootspec at '{}' ({source}); a boot loader is installed from the system's boot.json (NixOS 23.05 and later write it); set installBootLoader = false for an image without a boot loader", .file.display())]
    Missing {
        /// The toplevel.
        system: String,
        /// The physical file looked at.
        file: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// `boot.json` does not parse as bootspec v1.
    #[error("'{}' is not a valid bootspec v1 document: {what}", .file.display())]
    Invalid {
        /// The physical file.
        file: PathBuf,
        /// Why.
        what: String,
    },
}

fn store_string(p: &Path, file: &Path, what: &str) -> Result<String, BootspecError> {
    match p.to_str() {
        Some(s) if s.starts_with(crate::STORE_DIR) => Ok(s.to_string()),
        _ => Err(BootspecError::Invalid {
            file: file.to_path_buf(),
            what: format!("{what} '{}' is not a path under {}", p.display(), crate::STORE_DIR),
        }),
    }
}

/// Reads `<system>/boot.json` from the chroot store at `store_root`.
pub fn read(store_root: &Path, system: &str) -> Result<BootEntry, BootspecError> {
    let file = store_root.join(system.trim_start_matches('/')).join(bootspec::JSON_FILENAME);
    let bytes = std::fs::read(&file).map_err(|source| BootspecError::Missing {
        system: system.to_string(),
        file: file.clone(),
        source,
    })?;
    let doc: bootspec::BootJson = serde_json::from_slice(&bytes)
        .map_err(|e| BootspecError::Invalid { file: file.clone(), what: e.to_string() })?;
    let bootspec::generation::Generation::V1(v1) = doc.generation else {
        return Err(BootspecError::Invalid { file, what: "only bootspec v1 is supported".into() });
    };
    let mut entry = entry_of(v1.bootspec, &doc.extensions, &file)?;
    let mut specs: Vec<(String, BootEntry)> = Vec::new();
    for (name, sp) in v1.specialisations {
        specs.push((name.0, entry_of(sp.generation.bootspec, &sp.extensions, &file)?));
    }
    // The document is a hash map: sort so that the image does not depend on its order.
    specs.sort_by(|a, b| a.0.cmp(&b.0));
    entry.specialisations = specs;
    Ok(entry)
}

fn entry_of(
    b: bootspec::v1::BootSpecV1,
    extensions: &bootspec::Extensions,
    file: &Path,
) -> Result<BootEntry, BootspecError> {
    let sort_key = extensions
        .get("org.nixos.systemd-boot")
        .and_then(|x| x.get("sortKey"))
        .and_then(|k| k.as_str())
        .map(str::to_string);
    Ok(BootEntry {
        toplevel: store_string(&b.toplevel.0, file, "toplevel")?,
        system: b.system,
        kernel: store_string(&b.kernel, file, "kernel")?,
        initrd: b.initrd.as_deref().map(|p| store_string(p, file, "initrd")).transpose()?,
        kernel_params: b.kernel_params,
        init: store_string(&b.init, file, "init")?,
        label: b.label,
        sort_key,
        specialisations: Vec::new(),
    })
}

/// The name systemd-boot's NixOS builder copies a store file to under `EFI/nixos/`:
/// `<store basename>-<file name>.efi`, or `<store basename>.efi` when the file is a
/// store path itself (nixos/modules/system/boot/loader/systemd-boot/systemd-boot-builder.py,
/// `copy_from_file`).
pub fn efi_copy_name(store_file: &str) -> String {
    let rest = store_file.strip_prefix("/nix/store/").unwrap_or(store_file);
    match rest.split_once('/') {
        Some((base, file)) => {
            let file = file.rsplit('/').next().unwrap_or(file);
            format!("{base}-{file}.efi")
        }
        None => format!("{rest}.efi"),
    }
}

/// The name install-grub.pl copies a store file to under `/boot/kernels/` when /boot is
/// not on the store's filesystem, and extlinux-conf-builder.sh's `cleanName` under
/// `/boot/nixos/`: the path without `/nix/store/`, slashes made dashes.
pub fn grub_copy_name(store_file: &str) -> String {
    store_file.strip_prefix("/nix/store/").unwrap_or(store_file).replace('/', "-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_names_follow_nixos() {
        let k = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-linux-6.6.30/bzImage";
        assert_eq!(efi_copy_name(k), "0123456789abcdfghijklmnpqrsvwxyz-linux-6.6.30-bzImage.efi");
        assert_eq!(grub_copy_name(k), "0123456789abcdfghijklmnpqrsvwxyz-linux-6.6.30-bzImage");
        assert_eq!(
            efi_copy_name("/nix/store/0123456789abcdfghijklmnpqrsvwxyz-k"),
            "0123456789abcdfghijklmnpqrsvwxyz-k.efi"
        );
    }

    #[test]
    fn reads_a_bootspec() {
        let t = tempfile::tempdir().unwrap();
        let sys = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nixos-system";
        let dir = t.path().join(&sys[1..]);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("boot.json"),
            format!(
                r#"{{"org.nixos.bootspec.v1":{{"init":"{sys}/init","initrd":"/nix/store/0123456789abcdfghijklmnpqrsvwxyz-initrd/initrd","kernel":"/nix/store/0123456789abcdfghijklmnpqrsvwxyz-linux/bzImage","kernelParams":["console=ttyS0","loglevel=4"],"label":"NixOS test","system":"x86_64-linux","toplevel":"{sys}"}},"org.nixos.specialisation.v1":{{}},"org.nixos.systemd-boot":{{"sortKey":"nixos"}}}}"#
            ),
        )
        .unwrap();
        let b = read(t.path(), sys).unwrap();
        assert_eq!(b.kernel_params, ["console=ttyS0", "loglevel=4"]);
        assert_eq!(b.init, format!("{sys}/init"));
        assert_eq!(b.sort_key.as_deref(), Some("nixos"));
        let e = read(t.path(), "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-none").unwrap_err();
        assert!(e.to_string().contains("installBootLoader = false"), "{e}");
    }
}
