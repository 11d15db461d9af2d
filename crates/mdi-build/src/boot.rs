//! Boot loaders without a VM (docs/design.md §4.6): the files NixOS' `switch-to-configuration boot`
//! would write, made from the system's bootspec, placed in the tree before the boot
//! partitions are written; and GRUB's BIOS boot code, placed in the first sectors after
//! the partition table.

use crate::layout::{self, Plan, Role, Table};
use crate::spec::Spec;
use anyhow::{anyhow, bail, Context, Result};
use mdi_ident::Uuid;
use mdi_nix::bootspec::{self, BootEntry};
use mdi_tree::{EntryId, FileData, Kind, Meta, Timestamp, Tree};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

/// Debian's places for the boot loader inputs (systemd-boot-efi, grub-pc-bin +
/// grub-efi-amd64-bin), the defaults when the spec names none.
const DEBIAN_SYSTEMD_BOOT: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";
const DEBIAN_GRUB: &str = "/usr/lib/grub";

/// Which boot loader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loader {
    SystemdBoot,
    Grub,
}

/// GRUB's BIOS boot code, written once the partition table is.
pub struct BiosCode {
    /// GRUB's boot.img (512 bytes).
    pub boot_img: Vec<u8>,
    /// core.img, its blocklist already pointing at `core_offset`.
    pub core_img: Vec<u8>,
    /// Byte offset of core.img on the disk.
    pub core_offset: u64,
}

/// What was installed, for the parts written after the filesystems.
pub struct Installed {
    pub loader: Loader,
    pub bios: Option<BiosCode>,
    /// The EFI loader a Boot#### entry points at (`\EFI\...`) and its description.
    pub efi_entry: Option<(String, String)>,
}

/// The loader the spec asks for, or None when none is installed.
pub fn wanted(spec: &Spec) -> Result<Option<Loader>> {
    let install = spec.install_boot_loader.unwrap_or(spec.system.is_some());
    if !install {
        return Ok(None);
    }
    if spec.system.is_none() {
        bail!("installBootLoader needs system (the NixOS toplevel whose boot.json says what to boot); set system or installBootLoader = false");
    }
    let ptt = spec.partition_table_type.as_str();
    let loader = match spec.boot_loader.as_deref() {
        Some("systemd-boot") => Loader::SystemdBoot,
        Some("grub") => Loader::Grub,
        Some(other) => bail!("bootLoader '{other}' is not known; use systemd-boot or grub"),
        None if matches!(ptt, "efi" | "efixbootldr") => Loader::SystemdBoot,
        None => Loader::Grub,
    };
    match (loader, ptt) {
        (Loader::SystemdBoot, "none") => bail!(
            "partitionTableType none has no EFI system partition for systemd-boot; choose efi, efixbootldr or hybrid, or set installBootLoader = false"
        ),
        (Loader::SystemdBoot, "legacy" | "legacy+boot" | "legacy+gpt") => bail!(
            "bootLoader systemd-boot needs an EFI system partition, which partitionTableType '{ptt}' has not; use efi, efixbootldr or hybrid, or bootLoader = \"grub\""
        ),
        _ => {}
    }
    Ok(Some(loader))
}

fn fat_mount<'a>(plan: &'a Plan, want: &str) -> Option<(&'static str, &'a layout::Part)> {
    plan.parts.iter().find_map(|p| match p.role {
        Role::Fat { label, mount } if label == want => Some((mount, p)),
        _ => None,
    })
}

/// Adds a file (and its missing parent folders) to the tree.
fn put(tree: &mut Tree, path: &str, data: FileData, size: u64, time: i64) -> Result<EntryId> {
    let dir_meta = Meta::root(0o755, Timestamp::from_secs(time));
    let (parent, name) = tree.make_parents(path.as_bytes(), &dir_meta)?;
    let kind = Kind::File { data, size };
    Ok(tree.add(parent, &name, Meta::root(0o644, Timestamp::from_secs(time)), kind, None)?)
}

/// [`put_host`] unless the path is there already (a specialisation sharing the kernel).
fn put_host_once(tree: &mut Tree, path: &str, host: &Path, what: &str, time: i64) -> Result<()> {
    if tree.lookup(path.as_bytes()).is_some() {
        return Ok(());
    }
    put_host(tree, path, host, what, time)
}

fn put_text(tree: &mut Tree, path: &str, text: String, time: i64) -> Result<()> {
    let bytes: Arc<[u8]> = text.into_bytes().into();
    let size = bytes.len() as u64;
    put(tree, path, FileData::Inline(bytes), size, time).with_context(|| format!("placing {path}"))?;
    Ok(())
}

fn put_host(tree: &mut Tree, path: &str, host: &Path, what: &str, time: i64) -> Result<()> {
    let md = std::fs::metadata(host).with_context(|| format!("{what} '{}' cannot be read", host.display()))?;
    if !md.is_file() {
        bail!("{what} '{}' is not a file", host.display());
    }
    put(tree, path, FileData::Path(host.to_path_buf()), md.len(), time).with_context(|| format!("placing {path}"))?;
    Ok(())
}

/// Where a store path's bytes are on this machine (the spec's chroot store).
fn store_file(spec: &Spec, path: &str) -> PathBuf {
    spec.store_root.join(path.trim_start_matches('/'))
}

/// `YYYY-MM-DD` of a Unix time (UTC), for the "built on" date NixOS writes.
fn date(secs: i64) -> String {
    let (y, m, d) = Timestamp::from_secs(secs).civil_date();
    format!("{y:04}-{m:02}-{d:02}")
}

/// The FAT volume ID as GRUB and blkid show it (`XXXX-XXXX`).
fn fat_uuid(p: &layout::Part) -> String {
    let v = layout::fat_volume_id(p.guid);
    format!("{:04X}-{:04X}", v >> 16, v & 0xFFFF)
}

fn timeout(spec: &Spec) -> u32 {
    spec.boot_timeout.unwrap_or(5)
}

/// Installs the boot loader's files into `tree` and prepares the BIOS boot code.
/// `root_uuid` is the root filesystem's UUID.
pub fn install(
    spec: &Spec,
    loader: Loader,
    plan: &Plan,
    tree: &mut Tree,
    time: i64,
    root_uuid: Uuid,
) -> Result<Installed> {
    let system = spec.system.as_deref().expect("checked by wanted()");
    let entry = bootspec::read(&spec.store_root, system)?;
    let phys = |p: &str| store_file(spec, p);
    match loader {
        Loader::SystemdBoot => {
            let (esp, _) = fat_mount(plan, "ESP").expect("wanted() checked the layout has an ESP");
            // efixbootldr: entries and kernels on XBOOTLDR (mounted at /boot), the loader on the ESP.
            let boot = fat_mount(plan, "BOOT").map(|(m, _)| m).unwrap_or(esp);
            let sd = spec.systemd_boot.clone().unwrap_or_else(|| PathBuf::from(DEBIAN_SYSTEMD_BOOT));
            let what = "systemdBoot (the systemd-boot EFI binary; Debian: systemd-boot-efi)";
            put_host(tree, &format!("{esp}/EFI/systemd/systemd-bootx64.efi"), &sd, what, time)?;
            put_host(tree, &format!("{esp}/EFI/BOOT/BOOTX64.EFI"), &sd, what, time)?;
            // The system, then each specialisation (sorted by name), as NixOS' builder
            // writes them: `nixos-generation-1[-specialisation-<name>].conf`.
            let main = std::iter::once((None, &entry));
            let specs = entry.specialisations.iter().map(|(n, e)| (Some(n.as_str()), e));
            for (name, e) in main.chain(specs) {
                let kernel = bootspec::efi_copy_name(&e.kernel);
                let k = format!("{boot}/EFI/nixos/{kernel}");
                put_host_once(tree, &k, &phys(&e.kernel), "the bootspec's kernel", time)?;
                let initrd = match &e.initrd {
                    Some(i) => {
                        let file = bootspec::efi_copy_name(i);
                        let at = format!("{boot}/EFI/nixos/{file}");
                        put_host_once(tree, &at, &phys(i), "the bootspec's initrd", time)?;
                        Some(file)
                    }
                    None => None,
                };
                let conf = match name {
                    None => "nixos-generation-1.conf".to_string(),
                    Some(n) => format!("nixos-generation-1-specialisation-{n}.conf"),
                };
                put_text(
                    tree,
                    &format!("{boot}/loader/entries/{conf}"),
                    sd_entry(e, name, &kernel, initrd.as_deref(), time),
                    time,
                )?;
            }
            put_text(tree, &format!("{esp}/loader/loader.conf"), sd_loader_conf(spec), time)?;
            Ok(Installed {
                loader,
                bios: None,
                efi_entry: Some(("\\EFI\\systemd\\systemd-bootx64.efi".into(), "Linux Boot Manager".into())),
            })
        }
        Loader::Grub => install_grub(spec, plan, tree, time, root_uuid, &entry),
    }
}

/// `loader/entries/nixos-generation-1.conf` as NixOS' systemd-boot builder writes it.
fn sd_entry(e: &BootEntry, specialisation: Option<&str>, kernel: &str, initrd: Option<&str>, time: i64) -> String {
    let mut s = match specialisation {
        None => String::from("title NixOS\n"),
        Some(n) => format!("title NixOS ({n})\n"),
    };
    s += &format!("sort-key {}\n", e.sort_key.as_deref().unwrap_or("nixos"));
    s += &format!("version Generation 1 {}, built on {}\n", e.label, date(time));
    s += &format!("linux /EFI/nixos/{kernel}\n");
    if let Some(i) = initrd {
        s += &format!("initrd /EFI/nixos/{i}\n");
    }
    s += &format!("options init={}", e.init);
    for p in &e.kernel_params {
        s += " ";
        s += p;
    }
    s += "\n";
    s
}

fn sd_loader_conf(spec: &Spec) -> String {
    format!("timeout {}\ndefault nixos-generation-1.conf\nconsole-mode keep\n", timeout(spec))
}

fn install_grub(
    spec: &Spec,
    plan: &Plan,
    tree: &mut Tree,
    time: i64,
    root_uuid: Uuid,
    entry: &BootEntry,
) -> Result<Installed> {
    let grub = spec.grub.clone().unwrap_or_else(|| PathBuf::from(DEBIAN_GRUB));
    let mkimage = spec.grub_mkimage.clone().unwrap_or_else(|| PathBuf::from("grub-mkimage"));
    let ptt = spec.partition_table_type.as_str();
    // Where /boot lives decides where grub.cfg and the kernels are and which filesystem
    // GRUB searches for: a FAT partition mounted at /boot (install-grub.pl copies the
    // kernels there), or the root filesystem (kernels stay in the store).
    let boot_fat = plan.parts.iter().find(|p| matches!(p.role, Role::Fat { mount: "/boot", .. }));
    let (uuid, grub_dir) = match boot_fat {
        Some(p) => (fat_uuid(p), "/grub"),
        None => {
            if !matches!(spec.fs_type.as_str(), "ext4" | "btrfs" | "xfs") {
                bail!(
                    "GRUB cannot find /boot on a {} root filesystem by UUID; use a layout with a boot partition (legacy+boot, efi, hybrid) or fsType ext4, btrfs or xfs",
                    spec.fs_type
                );
            }
            (root_uuid.to_string(), "/boot/grub")
        }
    };
    // A store file as GRUB reads it from /boot's filesystem: copied to /boot/kernels when
    // /boot is its own partition, else straight from the store.
    let place = |tree: &mut Tree, file: &str, what: &str| -> Result<String> {
        if boot_fat.is_none() {
            return Ok(file.to_string());
        }
        let rel = format!("/kernels/{}", bootspec::grub_copy_name(file));
        put_host_once(tree, &format!("/boot{rel}"), &store_file(spec, file), what, time)?;
        Ok(rel)
    };
    // The system, then each specialisation, as install-grub.pl lists them at the top level.
    let mut menu = Vec::new();
    let main = std::iter::once(("NixOS - Default".to_string(), entry));
    let specs = entry.specialisations.iter().map(|(n, e)| (format!("NixOS - {n}"), e));
    for (title, e) in main.chain(specs) {
        let kernel = place(tree, &e.kernel, "the bootspec's kernel")?;
        let initrd = e.initrd.as_deref().map(|i| place(tree, i, "the bootspec's initrd")).transpose()?;
        menu.push(MenuEntry { title, entry: e, kernel, initrd });
    }
    // GRUB's driver for the filesystem holding /boot.
    let boot_fs_module = match (boot_fat.is_some(), spec.fs_type.as_str()) {
        (true, _) => "fat",
        (false, "ext4") => "ext2",
        (false, other) => other,
    };
    put_text(tree, "/boot/grub/grub.cfg", grub_cfg(spec, &uuid, &menu), time)?;
    // partitionTableType none: no place for boot code, so only grub.cfg, as NixOS' GRUB
    // module does for `devices = [ "nodev" ]` (a VM booting the kernel directly, or a
    // disk another loader chains into).
    if ptt == "none" {
        return Ok(Installed { loader: Loader::Grub, bios: None, efi_entry: None });
    }
    let early = format!("search --no-floppy --fs-uuid --set=root {uuid}\nset prefix=($root){grub_dir}\n");

    let tmp = tempfile::tempdir().context("temporary folder for grub-mkimage")?;
    let early_cfg = tmp.path().join("early.cfg");
    std::fs::write(&early_cfg, early)?;
    // What both platforms' images embed: partition tables, the /boot filesystem, finding it
    // by UUID, the menu, and booting Linux (with a gzip initrd).
    let common_modules = [
        "part_msdos",
        "part_gpt",
        boot_fs_module,
        "search",
        "search_fs_uuid",
        "normal",
        "linux",
        "echo",
        "test",
        "configfile",
        "gzio",
    ];
    let mut bios = None;
    if matches!(ptt, "legacy" | "legacy+boot" | "legacy+gpt" | "hybrid") {
        let dir = grub.join("i386-pc");
        let modules: Vec<&str> = ["biosdisk"].iter().chain(&common_modules).copied().collect();
        let core = mkimage_run(&mkimage, &dir, "i386-pc", &early_cfg, grub_dir, &modules, tmp.path())?;
        let boot_img_path = dir.join("boot.img");
        let boot_img = std::fs::read(&boot_img_path).with_context(|| {
            format!(
                "GRUB's '{}' cannot be read; install grub-pc-bin or set grub to GRUB's lib folder",
                boot_img_path.display()
            )
        })?;
        // Where core.img goes: the gap between the MBR and the first partition, or the
        // BIOS boot partition of a GPT layout.
        let (offset, room) = match plan.table {
            Table::Gpt => {
                let p = plan.parts.iter().find(|p| p.role == Role::BiosBoot).ok_or_else(|| {
                    anyhow!("partitionTableType '{ptt}' has no BIOS boot partition for GRUB's core.img")
                })?;
                (p.start, p.end.expect("fixed") - p.start)
            }
            _ => {
                let first = plan.parts.iter().map(|p| p.start).min().expect("a partition");
                (512, first - 512)
            }
        };
        let core_img = mdi_bootcode::place_core_img(&core, offset / 512, room).map_err(|e| match e {
            mdi_bootcode::BootcodeError::TooBig { need, have } => anyhow!(
                "GRUB's core.img ({need} bytes) does not fit in the {have} bytes before the first partition / in the BIOS boot partition; use a GRUB with fewer modules or a layout with a BIOS boot partition"
            ),
            e => anyhow!("{e}"),
        })?;
        bios = Some(BiosCode { boot_img, core_img, core_offset: offset });
    }
    let mut efi_entry = None;
    if matches!(ptt, "efi" | "efixbootldr" | "hybrid") {
        let (esp, _) = fat_mount(plan, "ESP").expect("EFI layouts have an ESP");
        let dir = grub.join("x86_64-efi");
        let modules: Vec<&str> = common_modules.iter().chain(&["efi_gop", "all_video"]).copied().collect();
        let image = mkimage_run(&mkimage, &dir, "x86_64-efi", &early_cfg, grub_dir, &modules, tmp.path())?;
        let bytes: Arc<[u8]> = image.into();
        let size = bytes.len() as u64;
        put(tree, &format!("{esp}/EFI/BOOT/BOOTX64.EFI"), FileData::Inline(bytes), size, time)?;
        efi_entry = Some(("\\EFI\\BOOT\\BOOTX64.EFI".into(), "NixOS-boot".into()));
    }
    Ok(Installed { loader: Loader::Grub, bios, efi_entry })
}

fn mkimage_run(
    mkimage: &Path,
    dir: &Path,
    target: &str,
    early_cfg: &Path,
    prefix: &str,
    modules: &[&str],
    tmp: &Path,
) -> Result<Vec<u8>> {
    let pkg = if target == "i386-pc" { "grub-pc-bin" } else { "grub-efi-amd64-bin" };
    if !dir.join("moddep.lst").is_file() {
        bail!(
            "GRUB's {target} modules are not in '{}'; install the Debian package {pkg} or set grub to a folder holding {target}/",
            dir.display()
        );
    }
    let out = tmp.join(format!("{target}.img"));
    let o = Command::new(mkimage)
        .arg("-O")
        .arg(target)
        .arg("-d")
        .arg(dir)
        .arg("-c")
        .arg(early_cfg)
        .arg("-p")
        .arg(prefix)
        .arg("-o")
        .arg(&out)
        .args(modules)
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| {
            anyhow!(
                "cannot run '{}' ({e}); install grub-common (Debian) or set grubMkimage to grub-mkimage's path",
                mkimage.display()
            )
        })?;
    if !o.status.success() {
        bail!("{} -O {target} failed: {}", mkimage.display(), String::from_utf8_lossy(&o.stderr).trim());
    }
    Ok(std::fs::read(&out)?)
}

/// One GRUB menu entry: a generation and where GRUB reads its kernel and initrd.
struct MenuEntry<'a> {
    title: String,
    entry: &'a BootEntry,
    kernel: String,
    initrd: Option<String>,
}

/// `/boot/grub/grub.cfg` in install-grub.pl's shape: find the filesystem by UUID, boot the
/// bootspec's kernel with `init=` and its parameters, one entry per generation.
fn grub_cfg(spec: &Spec, uuid: &str, menu: &[MenuEntry]) -> String {
    let mut s = String::from("# Automatically generated.  DO NOT EDIT THIS FILE!\n");
    s += "set default=0\n";
    s += &format!("set timeout={}\n", timeout(spec));
    s += &format!("search --set=drive1 --fs-uuid {uuid}\n");
    for m in menu {
        s += &format!("menuentry \"{}\" --class nixos --unrestricted {{\n", m.title);
        s += &format!("search --set=drive1 --fs-uuid {uuid}\n");
        s += &format!("  linux ($drive1){} init={}", m.kernel, m.entry.init);
        for p in &m.entry.kernel_params {
            s += " ";
            s += p;
        }
        s += "\n";
        if let Some(i) = &m.initrd {
            s += &format!("  initrd ($drive1){i}\n");
        }
        s += "}\n";
    }
    s
}

/// Writes GRUB's BIOS boot code: core.img at its place and boot.img's code into the MBR,
/// whose current sector 0 (`mbr`) keeps its disk signature and partition table.
pub fn bios_writes(code: &BiosCode, mbr: &[u8; 512]) -> Result<Vec<(u64, Vec<u8>)>> {
    let head = mdi_bootcode::mbr_boot_code(&code.boot_img, mbr, code.core_offset / 512)?;
    let mut sector0 = *mbr;
    sector0[..mdi_bootcode::MBR_CODE_LEN].copy_from_slice(&head);
    Ok(vec![(0, sector0.to_vec()), (code.core_offset, code.core_img.clone())])
}

/// Debian's OVMF variable-store template (package ovmf), the default `efiVariables`.
const DEBIAN_OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// `efi-vars.fd` for touchEFIVars: the template with a Boot0001 load option for the
/// installed EFI loader (HD(ESP)/File(loader)) first in BootOrder, as `bootctl install` or
/// `grub-install` would leave it; the template unchanged when no EFI loader is installed.
pub fn efi_vars(spec: &Spec, plan: &Plan, installed: Option<&Installed>) -> Result<Vec<u8>> {
    let path = spec.efi_variables.clone().unwrap_or_else(|| PathBuf::from(DEBIAN_OVMF_VARS));
    let template = std::fs::read(&path).with_context(|| {
        format!(
            "efiVariables '{}' cannot be read; give an OVMF_VARS.fd template (Debian: package ovmf)",
            path.display()
        )
    })?;
    let Some((loader_path, description)) = installed.and_then(|i| i.efi_entry.as_ref()) else {
        // Checked like an installed store would be, so a wrong file fails here, not at boot.
        mdi_efivars::VarStore::parse(&template)
            .with_context(|| format!("efiVariables '{}' is not an OVMF variable store", path.display()))?;
        return Ok(template);
    };
    let (_, esp) = fat_mount(plan, "ESP").expect("an EFI loader is only installed with an ESP");
    let entry = mdi_efivars::BootEntry {
        number: 1,
        description: description.clone(),
        partition_number: esp.number,
        partition_start_lba: esp.start / 512,
        partition_size_lba: (esp.end.expect("fixed") - esp.start) / 512,
        partition_guid: esp.guid.0,
        loader_path: loader_path.clone(),
    };
    mdi_efivars::add_boot_entry(&template, &entry)
        .with_context(|| format!("adding the boot entry to efiVariables '{}'", path.display()))
}

#[cfg(test)]
mod tests {
    use super::date;

    #[test]
    fn dates() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(1), "1970-01-01");
        assert_eq!(date(951_782_400), "2000-02-29");
        assert_eq!(date(1_795_651_200), "2026-11-26");
    }
}
