//! Boot loaders without a VM (docs/design.md §4.6): the files NixOS' `switch-to-configuration boot`
//! would write, made from the system's bootspec, placed in the tree before the boot
//! partitions are written; and GRUB's BIOS boot code, placed in the first sectors after
//! the partition table.

use crate::arch::Arch;
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
/// grub-efi-<arch>-bin), the defaults when the spec names none.
const DEBIAN_SYSTEMD_BOOT_DIR: &str = "/usr/lib/systemd/boot/efi";
const DEBIAN_GRUB: &str = "/usr/lib/grub";

/// Which boot loader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loader {
    SystemdBoot,
    Grub,
    /// NixOS' `boot.loader.generic-extlinux-compatible`: `/boot/extlinux/extlinux.conf`,
    /// read by U-Boot's distro boot (and syslinux-style loaders).
    Extlinux,
}

impl Loader {
    /// The `bootLoader` value naming it.
    pub fn name(self) -> &'static str {
        match self {
            Loader::SystemdBoot => "systemd-boot",
            Loader::Grub => "grub",
            Loader::Extlinux => "extlinux",
        }
    }
}

/// The architecture the image is for. A system's bootspec says it, and `targetSystem`
/// must then agree; images without a system (rootDir, store-only) take `targetSystem`,
/// default x86_64-linux. A bootspec naming an architecture we know no loader names for is
/// an error only where a loader or an EFI variable store is wanted.
pub fn target_arch(spec: &Spec) -> Result<Arch> {
    let given = spec.target_arch();
    let Some(system) = spec.system.as_deref() else {
        return Ok(given.unwrap_or(Arch::X86_64));
    };
    let Ok(entry) = bootspec::read(&spec.store_root, system) else {
        // No bootspec: the boot loader installation, if wanted, says why.
        return Ok(given.unwrap_or(Arch::X86_64));
    };
    let Some(arch) = Arch::from_nix_system(&entry.system) else {
        if spec.touch_efi_vars || spec.install_boot_loader != Some(false) {
            bail!(
                "the system's boot.json says system '{}', for which no boot loader can be installed here; supported: {}; or set installBootLoader = false",
                entry.system,
                Arch::ALL.map(Arch::nix_system).join(", ")
            );
        }
        return Ok(given.unwrap_or(Arch::X86_64));
    };
    if let Some(g) = given.filter(|g| *g != arch) {
        bail!(
            "targetSystem is '{g}' but the system's boot.json says '{arch}'; remove targetSystem (the bootspec decides) or build the system for {g}"
        );
    }
    Ok(arch)
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
pub fn wanted(spec: &Spec, arch: Arch) -> Result<Option<Loader>> {
    // A store-only image holds no /boot (nixpkgs asserts the same), even with a system.
    let install = spec.install_boot_loader.unwrap_or(spec.system.is_some() && !spec.only_nix_store);
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
        Some("extlinux") => Loader::Extlinux,
        Some(other) => bail!("bootLoader '{other}' is not known; use systemd-boot, grub or extlinux"),
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
        (Loader::Grub, "legacy" | "legacy+boot" | "legacy+gpt" | "hybrid") if !arch.has_pc_bios() => bail!(
            "partitionTableType '{ptt}' boots GRUB from a PC BIOS, which {arch} machines do not have; use partitionTableType efi (UEFI, with GRUB or systemd-boot) or bootLoader extlinux (U-Boot), which work on every architecture"
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

/// boot.loader.timeout in seconds; -1 when it is null (wait for a key).
fn timeout(spec: &Spec) -> i64 {
    spec.boot_timeout.unwrap_or(5)
}

/// The installed system's `configuration-name` (boot.loader.grub.configurationName, which
/// NixOS' GRUB module writes into every toplevel), "" when there is none.
fn configuration_name(spec: &Spec, toplevel: &str) -> String {
    let f = store_file(spec, &format!("{toplevel}/configuration-name"));
    std::fs::read_to_string(f).map(|v| v.trim_end_matches('\n').to_string()).unwrap_or_default()
}

/// The system's nixos-version as NixOS' builders read it (`cat`, Perl's chomp), or None.
fn nixos_version(spec: &Spec, toplevel: &str) -> Option<String> {
    let f = store_file(spec, &format!("{toplevel}/nixos-version"));
    std::fs::read_to_string(f).ok().map(|v| v.trim_end_matches('\n').to_string())
}

/// `path` with each part that exists spelled as in the tree, matched ignoring ASCII case:
/// on FAT, `install -D` into `efi/memtest86/` lands in the `EFI` folder bootctl made.
fn fat_spelling(tree: &Tree, path: &str) -> String {
    let mut cur = tree.lookup(b"/");
    let mut out = String::new();
    for c in path.split('/').filter(|c| !c.is_empty()) {
        let found = cur.and_then(|d| {
            tree.children(d).iter().copied().find(|&k| tree.get(k).name.eq_ignore_ascii_case(c.as_bytes()))
        });
        out.push('/');
        match found {
            Some(k) => out.push_str(&String::from_utf8_lossy(&tree.get(k).name)),
            None => out.push_str(c),
        }
        cur = found;
    }
    out
}

/// Adds a file an extraFiles/extraEntries option asks for, refusing to replace one the
/// installer wrote itself. On a FAT filesystem (`fat`) names match ignoring case.
#[allow(clippy::too_many_arguments)] // the file, where, and what asked for it
fn put_extra(
    tree: &mut Tree,
    path: &str,
    data: FileData,
    size: u64,
    mode: u16,
    time: i64,
    key: &str,
    fat: bool,
) -> Result<()> {
    let path = if fat { fat_spelling(tree, path) } else { path.to_string() };
    let path = path.as_str();
    if tree.lookup(path.as_bytes()).is_some() {
        bail!("{key} would replace '{path}', which the boot loader installation writes itself; choose another name");
    }
    let dir_meta = Meta::root(0o755, Timestamp::from_secs(time));
    let (parent, name) = tree.make_parents(path.as_bytes(), &dir_meta).with_context(|| format!("placing {path}"))?;
    let kind = Kind::File { data, size };
    tree.add(parent, &name, Meta::root(mode, Timestamp::from_secs(time)), kind, None)
        .with_context(|| format!("placing {path} ({key})"))?;
    Ok(())
}

/// Copies extraFiles (name → source) under `dir`, as `install -Dp` does (mode 0755). A
/// store path is read under the spec's store root, like the bootspec's files.
fn put_extra_files(
    spec: &Spec,
    tree: &mut Tree,
    dir: &str,
    files: &std::collections::BTreeMap<String, PathBuf>,
    time: i64,
    key: &str,
    fat: bool,
) -> Result<()> {
    for (name, src) in files {
        let src = &match src.to_str() {
            Some(p) if mdi_nix::is_store_path(p.split('/').take(4).collect::<Vec<_>>().join("/").as_str()) => {
                store_file(spec, p)
            }
            _ => src.clone(),
        };
        let md =
            std::fs::metadata(src).with_context(|| format!("{key} '{name}': '{}' cannot be read", src.display()))?;
        if !md.is_file() {
            bail!("{key} '{name}': '{}' is not a file (NixOS' installer copies files with install -D)", src.display());
        }
        put_extra(tree, &format!("{dir}/{name}"), FileData::Path(src.clone()), md.len(), 0o755, time, key, fat)?;
    }
    Ok(())
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
    arch: Arch,
) -> Result<Installed> {
    let system = spec.system.as_deref().expect("checked by wanted()");
    let entry = bootspec::read(&spec.store_root, system)?;
    let phys = |p: &str| store_file(spec, p);
    match loader {
        Loader::SystemdBoot => {
            let (esp, _) = fat_mount(plan, "ESP").expect("wanted() checked the layout has an ESP");
            // efixbootldr: entries and kernels on XBOOTLDR (mounted at /boot), the loader on the ESP.
            let boot = fat_mount(plan, "BOOT").map(|(m, _)| m).unwrap_or(esp);
            let binary = format!("systemd-boot{}.efi", arch.efi());
            let sd = spec.systemd_boot.clone().unwrap_or_else(|| Path::new(DEBIAN_SYSTEMD_BOOT_DIR).join(&binary));
            let what = format!("systemdBoot (the systemd-boot EFI binary; Debian: systemd-boot-efi:{})", arch.debian());
            check_pe_arch(&sd, &what, arch)?;
            put_host(tree, &format!("{esp}/EFI/systemd/{binary}"), &sd, &what, time)?;
            put_host(tree, &format!("{esp}/EFI/BOOT/{}", arch.removable_loader()), &sd, &what, time)?;
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
            // The copy-extra-files script of NixOS' systemd-boot module (systemd-boot.nix):
            // extraFiles to $BOOT/<name>, extraEntries to $BOOT/loader/entries/<name>, each
            // with an empty marker under $BOOT/EFI/nixos/.extra-files/ (how the builder knows
            // what to remove later). memtest86, netbootxyz, edk2-uefi-shell and windows are
            // made of these two options, so they arrive here too.
            let o = &spec.systemd_boot_options;
            let empty = || FileData::Inline(Arc::from(Vec::new()));
            let key = "systemdBootOptions.extraFiles";
            put_extra_files(spec, tree, boot, &o.extra_files, time, key, true)?;
            for name in o.extra_files.keys() {
                let marker = format!("{boot}/EFI/nixos/.extra-files/{name}");
                put_extra(tree, &marker, empty(), 0, 0o755, time, key, true)?;
            }
            let key = "systemdBootOptions.extraEntries";
            for (name, text) in &o.extra_entries {
                let bytes: Arc<[u8]> = text.clone().into_bytes().into();
                let size = bytes.len() as u64;
                put_extra(
                    tree,
                    &format!("{boot}/loader/entries/{name}"),
                    FileData::Inline(bytes),
                    size,
                    0o644,
                    time,
                    key,
                    true,
                )?;
                let marker = format!("{boot}/EFI/nixos/.extra-files/loader/entries/{name}");
                put_extra(tree, &marker, empty(), 0, 0o755, time, key, true)?;
            }
            put_text(tree, &format!("{esp}/loader/loader.conf"), sd_loader_conf(spec), time)?;
            Ok(Installed {
                loader,
                bios: None,
                efi_entry: Some((format!("\\EFI\\systemd\\{binary}"), "Linux Boot Manager".into())),
            })
        }
        Loader::Grub => install_grub(spec, plan, tree, time, root_uuid, &entry, arch),
        Loader::Extlinux => install_extlinux(spec, tree, time, &entry),
    }
}

/// Refuses an EFI binary built for another architecture than the target's: the firmware
/// would not start it.
fn check_pe_arch(file: &Path, what: &str, arch: Arch) -> Result<()> {
    let mut head = vec![0u8; 4096];
    let n = {
        use std::io::Read;
        let mut f = std::fs::File::open(file).with_context(|| format!("{what} '{}' cannot be read", file.display()))?;
        f.read(&mut head).with_context(|| format!("{what} '{}' cannot be read", file.display()))?
    };
    let m = mdi_pe::machine(&head[..n]).map_err(|e| anyhow!("{what} '{}': {e}", file.display()))?;
    if m != arch.pe_machine() {
        bail!(
            "{what} '{}' is an EFI binary for {}, but the system is {arch} and needs one for {}; give the {} build (systemd-boot{}.efi)",
            file.display(),
            mdi_pe::machine_name(m),
            mdi_pe::machine_name(arch.pe_machine()),
            arch.debian(),
            arch.efi()
        );
    }
    Ok(())
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

/// loader.conf as systemd-boot-builder.py's write_loader_conf writes it: the timeout
/// (`menu-force` for boot.loader.timeout = null, systemd-boot.nix), the default entry,
/// `editor 0` unless editor, `reboot-for-bitlocker yes` with rebootForBitlocker, the
/// console mode.
fn sd_loader_conf(spec: &Spec) -> String {
    let o = &spec.systemd_boot_options;
    let mut s = match timeout(spec) {
        -1 => "timeout menu-force\n".to_string(),
        t => format!("timeout {t}\n"),
    };
    s += "default nixos-generation-1.conf\n";
    if !o.editor {
        s += "editor 0\n";
    }
    if o.reboot_for_bitlocker {
        s += "reboot-for-bitlocker yes\n";
    }
    s += &format!("console-mode {}\n", o.console_mode);
    s
}

fn install_grub(
    spec: &Spec,
    plan: &Plan,
    tree: &mut Tree,
    time: i64,
    root_uuid: Uuid,
    entry: &BootEntry,
    arch: Arch,
) -> Result<Installed> {
    let grub = spec.grub.clone().unwrap_or_else(|| PathBuf::from(DEBIAN_GRUB));
    let mkimage = spec.grub_mkimage.clone().unwrap_or_else(|| PathBuf::from("grub-mkimage"));
    let ptt = spec.partition_table_type.as_str();
    let o = &spec.grub_options;
    let esp = fat_mount(plan, "ESP");
    // Which platforms install-grub.pl installs GRUB for (its getEfiTarget): BIOS unless
    // devices = [ "nodev" ] (grub.nix then has no `grub`) or the machine has no PC BIOS
    // (no grubTarget), EFI with efiSupport. A platform its installer would fail to install
    // on this layout is an error, not dropped.
    let bios_room = matches!(ptt, "legacy" | "legacy+boot" | "legacy+gpt" | "hybrid");
    let bios = match o.nodev {
        Some(true) => false,
        Some(false) if !arch.has_pc_bios() => false,
        Some(false) if !bios_room => bail!(
            "grubOptions.nodev is false (GRUB's BIOS boot code, NixOS' boot.loader.grub.devices), but partitionTableType '{ptt}' has no room for it ({}); set nodev (devices = [ \"nodev\" ]) or use legacy, legacy+boot, legacy+gpt or hybrid",
            if ptt == "none" { "no partition table" } else { "no BIOS boot partition" }
        ),
        Some(false) => true,
        None => bios_room && arch.has_pc_bios(),
    };
    let efi = match o.efi_support {
        Some(true) if esp.is_none() => bail!(
            "grubOptions.efiSupport is true, but partitionTableType '{ptt}' has no EFI system partition for EFI GRUB (grub-install --efi-directory would fail); use efi, efixbootldr or hybrid, or efiSupport = false"
        ),
        Some(e) => e,
        None => esp.is_some(),
    };
    // Where /boot lives decides where grub.cfg and the kernels are and which filesystem
    // GRUB searches for: a FAT partition mounted at /boot (install-grub.pl copies the
    // kernels there), or the root filesystem (kernels stay in the store unless copyKernels).
    let boot_fat = plan.parts.iter().find(|p| matches!(p.role, Role::Fat { mount: "/boot", .. }));
    let (uuid, grub_dir, boot_root) = match boot_fat {
        Some(p) => (fat_uuid(p), "/grub", "($drive1)/"),
        None => {
            if !matches!(spec.fs_type.as_str(), "ext4" | "btrfs" | "xfs") {
                bail!(
                    "GRUB cannot find /boot on a {} root filesystem by UUID; use a layout with a boot partition (legacy+boot, efi, hybrid) or fsType ext4, btrfs or xfs",
                    spec.fs_type
                );
            }
            (root_uuid.to_string(), "/boot/grub", "($drive1)/boot")
        }
    };
    // A store file as GRUB reads it from /boot's filesystem: copied to /boot/kernels when
    // /boot is its own partition or with copyKernels, else straight from the store
    // (install-grub.pl's copyToKernelsDir).
    let copy = boot_fat.is_some() || o.copy_kernels;
    let place = |tree: &mut Tree, file: &str, what: &str| -> Result<String> {
        if !copy {
            return Ok(file.to_string());
        }
        let name = bootspec::grub_copy_name(file);
        put_host_once(tree, &format!("/boot/kernels/{name}"), &store_file(spec, file), what, time)?;
        Ok(if boot_fat.is_some() { format!("/kernels/{name}") } else { format!("/boot/kernels/{name}") })
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
    // The "All configurations" submenu's generation: its configuration-name, else
    // "Configuration 1 (<date of the profile link> - <nixos-version>)"; install-grub.pl
    // skips a generation without nixos-version.
    let generation = match nixos_version(spec, &entry.toplevel) {
        Some(version) if o.configuration_limit > 0 => {
            let name = configuration_name(spec, &entry.toplevel);
            Some(if name.is_empty() { format!("Configuration 1 ({} - {version})", date(time)) } else { name })
        }
        _ => None,
    };
    // GRUB's driver for the filesystem holding /boot.
    let boot_fs_module = match (boot_fat.is_some(), spec.fs_type.as_str()) {
        (true, _) => "fat",
        (false, "ext4") => "ext2",
        (false, other) => other,
    };
    let search = format!("search --set=drive1 --fs-uuid {uuid}");
    put_text(tree, "/boot/grub/grub.cfg", grub_cfg(spec, &search, boot_root, &menu, generation.as_deref()), time)?;
    // extraFiles: grub.nix copies them (its extraPrepareConfig, `install -Dp`) to
    // efiSysMountPoint: the ESP, or /boot on layouts without one.
    let files_dir = esp.map(|(m, _)| m).unwrap_or("/boot");
    let on_fat = esp.is_some() || boot_fat.is_some();
    put_extra_files(spec, tree, files_dir, &o.extra_files, time, "grubOptions.extraFiles", on_fat)?;
    // Neither platform (partitionTableType none, or devices = [ "nodev" ] without
    // efiSupport): only the menu, as NixOS' GRUB module writes it (a VM booting the kernel
    // directly, or a disk another loader chains into).
    if !bios && !efi {
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
    let mut bios_code = None;
    if bios {
        let dir = grub.join("i386-pc");
        let modules: Vec<&str> = ["biosdisk"].iter().chain(&common_modules).copied().collect();
        let core = mkimage_run(&mkimage, &dir, "i386-pc", "grub-pc-bin", &early_cfg, grub_dir, &modules, tmp.path())?;
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
        bios_code = Some(BiosCode { boot_img, core_img, core_offset: offset });
    }
    let mut efi_entry = None;
    if efi {
        let (esp, _) = esp.expect("checked above");
        // forcei686: 32-bit UEFI firmware on an x86_64 machine runs only ia32 loaders.
        let arch = match (spec.grub_force_i686, arch) {
            (true, Arch::X86_64 | Arch::I686) => Arch::I686,
            (true, other) => bail!("grubForceI686 is for x86 machines with 32-bit UEFI firmware, not {other}"),
            (false, a) => a,
        };
        let target = arch.grub_efi_target();
        let dir = grub.join(target);
        // all_video brings the PC video drivers on x86; elsewhere the firmware's GOP is all.
        let video: &[&str] = if arch.has_pc_bios() { &["efi_gop", "all_video"] } else { &["efi_gop"] };
        let modules: Vec<&str> = common_modules.iter().chain(video).copied().collect();
        let package = arch.grub_efi_package();
        let image = mkimage_run(&mkimage, &dir, target, &package, &early_cfg, grub_dir, &modules, tmp.path())?;
        let bytes: Arc<[u8]> = image.into();
        let size = bytes.len() as u64;
        // grub-install --removable writes the firmware's fallback path; without it
        // EFI/<bootloader-id>/grub<arch>.efi, which only a Boot#### entry starts
        // (install-grub.pl: --bootloader-id, --removable when efiInstallAsRemovable).
        let id = &o.bootloader_id;
        let (file, loader_path) = if o.efi_install_as_removable {
            let loader = arch.removable_loader();
            (format!("{esp}/EFI/BOOT/{loader}"), format!("\\EFI\\BOOT\\{loader}"))
        } else {
            let loader = format!("grub{}.efi", arch.efi());
            (format!("{esp}/EFI/{id}/{loader}"), format!("\\EFI\\{id}\\{loader}"))
        };
        put(tree, &file, FileData::Inline(bytes), size, time)?;
        efi_entry = Some((loader_path, id.clone()));
    }
    Ok(Installed { loader: Loader::Grub, bios: bios_code, efi_entry })
}

#[allow(clippy::too_many_arguments)] // each is one grub-mkimage option
fn mkimage_run(
    mkimage: &Path,
    dir: &Path,
    target: &str,
    pkg: &str,
    early_cfg: &Path,
    prefix: &str,
    modules: &[&str],
    tmp: &Path,
) -> Result<Vec<u8>> {
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

/// `/boot/grub/grub.cfg` in install-grub.pl's shape: find /boot's filesystem by UUID, the
/// default entry and timeout (`-1`: wait for a key, grub.nix's value for
/// boot.loader.timeout = null), extraConfig, extraEntries before or after NixOS' entries
/// (`@bootRoot@` replaced by GRUB's path of /boot), then the "All configurations" submenu
/// with the one generation an image has (`generation`: its title; None when
/// configurationLimit is 0 or the system has no nixos-version).
fn grub_cfg(spec: &Spec, search: &str, boot_root: &str, menu: &[MenuEntry], generation: Option<&str>) -> String {
    let o = &spec.grub_options;
    let entry = |s: &mut String, title: &str, options: &str, m: &MenuEntry| {
        *s += &format!("menuentry \"{title}\" {options} {{\n{search}\n");
        if !o.extra_per_entry_config.is_empty() {
            *s += &format!("  {}\n", o.extra_per_entry_config);
        }
        *s += &format!("  linux ($drive1){} init={}", m.kernel, m.entry.init);
        for p in &m.entry.kernel_params {
            *s += " ";
            *s += p;
        }
        *s += "\n";
        if let Some(i) = &m.initrd {
            *s += &format!("  initrd ($drive1){i}\n");
        }
        *s += "}\n\n";
    };
    let mut s = String::from("# Automatically generated.  DO NOT EDIT THIS FILE!\n");
    s += &format!("{search}\n");
    s += &format!("set default={}\n", o.default);
    s += &format!("set timeout={}\n", timeout(spec));
    s += &format!("set timeout_style={}\n", o.timeout_style);
    s += &format!("{}\n", o.extra_config);
    s += "\n";
    if o.extra_entries_before_nixos {
        s += &format!("{}\n", o.extra_entries);
    }
    for (i, m) in menu.iter().enumerate() {
        // The default entry takes entryOptions; specialisations none.
        entry(&mut s, &m.title, if i == 0 { &o.entry_options } else { "" }, m);
    }
    if !o.extra_entries_before_nixos {
        s += &format!("{}\n", o.extra_entries);
    }
    s = s.replace("@bootRoot@", boot_root);
    s += "submenu \"NixOS - All configurations\" --class submenu {\n";
    if let Some(g) = generation {
        let title = format!("NixOS - {g}");
        if menu.len() == 1 {
            entry(&mut s, &title, &o.sub_entry_options, &menu[0]);
        } else {
            // A generation with specialisations is a submenu of its own.
            s += &format!("submenu \"> {title}\" --class submenu {{\n");
            entry(&mut s, &format!("{title} - Default"), &o.sub_entry_options, &menu[0]);
            for m in &menu[1..] {
                let name = m.title.trim_start_matches("NixOS - ");
                entry(&mut s, &format!("{title} - {name}"), "", m);
            }
            s += "}\n";
        }
    }
    s += "}\n";
    s
}

/// NixOS' generic-extlinux-compatible loader, as extlinux-conf-builder.sh lays it out on
/// /boot (a boot partition mounted there, else the root's /boot): the kernel, initrd and
/// device trees copied to `/boot/nixos/<store path with dashes>`, and
/// `/boot/extlinux/extlinux.conf` with the default entry and generation 1 (the builder lists
/// the system profile's generations; a new image has one). Specialisations get no entry, as
/// in NixOS. U-Boot finds the file on the partition marked bootable ([`Plan::mark_bootable`]).
fn install_extlinux(spec: &Spec, tree: &mut Tree, time: i64, entry: &BootEntry) -> Result<Installed> {
    let copy = |tree: &mut Tree, file: &str, what: &str| -> Result<String> {
        let name = bootspec::grub_copy_name(file);
        put_host_once(tree, &format!("/boot/nixos/{name}"), &store_file(spec, file), what, time)?;
        Ok(format!("../nixos/{name}"))
    };
    let kernel = copy(tree, &entry.kernel, "the bootspec's kernel")?;
    let initrd = entry.initrd.as_deref().map(|i| copy(tree, i, "the bootspec's initrd")).transpose()?;
    let dtbs = match resolve_store_link(spec, &format!("{}/dtbs", entry.toplevel))? {
        Some(dir) => {
            let sub = mdi_tree::scan_host(
                &store_file(spec, &dir),
                &mdi_tree::ScanOptions { clamp: time, keep_owner: false, keep_xattrs: false, cancel: None },
            )
            .with_context(|| format!("reading the system's device trees '{dir}'"))?;
            let name = bootspec::grub_copy_name(&dir);
            let (parent, _) = tree.make_parents(b"/boot/nixos/x", &Meta::root(0o755, Timestamp::from_secs(time)))?;
            tree.graft(parent, name.as_bytes(), sub)?;
            Some(format!("../nixos/{name}"))
        }
        None => None,
    };
    // nixos-version as the builder reads it (`$(cat …)` drops trailing newlines).
    let version_file = store_file(spec, &format!("{}/nixos-version", entry.toplevel));
    let version = std::fs::read_to_string(&version_file).map(|v| v.trim_end_matches('\n').to_string());
    if let (None, Some(n), true) =
        (&dtbs, &spec.extlinux_options.dtb_name, spec.extlinux_options.use_generation_device_tree)
    {
        bail!(
            "extlinuxOptions.dtbName is '{n}' (hardware.deviceTree.name), but the system has no dtbs folder; extlinux-conf-builder.sh stops here too"
        );
    }
    let conf =
        extlinux_conf(spec, entry, &kernel, initrd.as_deref(), dtbs.as_deref(), version.as_deref().unwrap_or(""), time);
    put_text(tree, "/boot/extlinux/extlinux.conf", conf, time)?;
    Ok(Installed { loader: Loader::Extlinux, bios: None, efi_entry: None })
}

/// `extlinux.conf` as extlinux-conf-builder.sh writes it for a system with one generation.
fn extlinux_conf(
    spec: &Spec,
    entry: &BootEntry,
    kernel: &str,
    initrd: Option<&str>,
    dtbs: Option<&str>,
    version: &str,
    time: i64,
) -> String {
    // U-Boot reads TIMEOUT in tenths of a second, and 0 as "wait forever"; NixOS writes
    // -10 for boot.loader.timeout = 0 (boot at once) and 0 for null (the module passes -1,
    // which the builder's `-t` turns into 0).
    let timeout = match timeout(spec) {
        t if t < 0 => 0,
        0 => -10,
        t => t * 10,
    };
    let o = &spec.extlinux_options;
    let mut s = String::from("# Generated file, all changes will be lost on nixos-rebuild!\n\n");
    s += "# Change this to e.g. nixos-42 to temporarily boot to an older configuration.\n";
    s += "DEFAULT nixos-default\n\n";
    s += "MENU TITLE ------------------------------------------------------------\n";
    s += &format!("TIMEOUT {timeout}\n");
    let (y, mo, d) = Timestamp::from_secs(time).civil_date();
    let secs_of_day = time.rem_euclid(86_400);
    let stamp = format!("{y:04}-{mo:02}-{d:02} {:02}:{:02}", secs_of_day / 3600, secs_of_day % 3600 / 60);
    // -g configurationLimit: how many of the profile's generations (an image has one) follow
    // the default entry.
    let generations = if o.configuration_limit > 0 { 2 } else { 1 };
    for (tag, menu) in
        [("default", "NixOS - Default".to_string()), ("1", format!("NixOS - Configuration 1 ({stamp} - {version})"))]
            .into_iter()
            .take(generations)
    {
        s += &format!("\nLABEL nixos-{tag}\n  MENU LABEL {menu}\n  LINUX {kernel}\n");
        if let Some(i) = initrd {
            s += &format!("  INITRD {i}\n");
        }
        s += &format!("  APPEND init={} {}\n", entry.init, entry.kernel_params.join(" "));
        // -r (useGenerationDeviceTree = false): no device tree line; -n dtbName: FDT.
        match (dtbs, &o.dtb_name) {
            _ if !o.use_generation_device_tree => {}
            (Some(d), Some(n)) => s += &format!("  FDT {d}/{n}\n"),
            (Some(d), None) => s += &format!("  FDTDIR {d}\n"),
            (None, _) => {}
        }
    }
    s
}

/// The store path a link in the store finally points at (absolute targets are store
/// paths, read under the spec's store root), or None when `path` does not exist.
fn resolve_store_link(spec: &Spec, path: &str) -> Result<Option<String>> {
    let mut cur = PathBuf::from(path);
    for _ in 0..16 {
        match std::fs::symlink_metadata(store_file(spec, &cur.to_string_lossy())) {
            Err(_) => return Ok(None),
            Ok(md) if !md.file_type().is_symlink() => return Ok(Some(cur.to_string_lossy().into_owned())),
            Ok(_) => {
                let t = std::fs::read_link(store_file(spec, &cur.to_string_lossy()))?;
                cur = if t.is_absolute() { t } else { cur.parent().unwrap_or(Path::new("/")).join(t) };
            }
        }
    }
    bail!("'{path}' is a symlink loop in the store")
}

/// Writes GRUB's BIOS boot code: core.img at its place and boot.img's code into the MBR,
/// whose current sector 0 (`mbr`) keeps its disk signature and partition table.
pub fn bios_writes(code: &BiosCode, mbr: &[u8; 512]) -> Result<Vec<(u64, Vec<u8>)>> {
    let head = mdi_bootcode::mbr_boot_code(&code.boot_img, mbr, code.core_offset / 512)?;
    let mut sector0 = *mbr;
    sector0[..mdi_bootcode::MBR_CODE_LEN].copy_from_slice(&head);
    Ok(vec![(0, sector0.to_vec()), (code.core_offset, code.core_img.clone())])
}

/// `efi-vars.fd` for touchEFIVars: the template with a Boot0001 load option for the
/// installed EFI loader (HD(ESP)/File(loader)) first in BootOrder, as `bootctl install` or
/// `grub-install` would leave it; the template unchanged when no EFI loader is installed.
pub fn efi_vars(spec: &Spec, plan: &Plan, installed: Option<&Installed>, arch: Arch) -> Result<Vec<u8>> {
    let (path, hint) = match (&spec.efi_variables, arch.debian_efi_vars()) {
        (Some(p), _) => (p.clone(), "the target firmware's variable-store template".to_string()),
        (None, Some((p, pkg))) => (PathBuf::from(p), format!("Debian: package {pkg}")),
        (None, None) => bail!(
            "touchEFIVars needs efiVariables for {arch}: give the target firmware's variable-store template (an edk2 VARS.fd)"
        ),
    };
    let mut template = std::fs::read(&path).with_context(|| {
        format!("efiVariables '{}' cannot be read; give a UEFI variable-store template ({hint})", path.display())
    })?;
    // Debian's AAVMF_VARS.fd is blank flash, which the firmware formats at first boot: format
    // it as the firmware would, so the boot entry can go in.
    if mdi_efivars::is_blank(&template) {
        if arch != Arch::Aarch64 {
            bail!(
                "efiVariables '{}' is blank (all zeros); only aarch64's firmware layout is known for formatting one: give a formatted VARS.fd",
                path.display()
            );
        }
        template = mdi_efivars::format_arm_virt(template.len())?;
    }
    // boot.loader.efi.canTouchEfiVariables = false: the installer runs with --no-variables
    // (bootctl) / --no-nvram (grub-install), leaving the store as it was.
    let entry = installed.and_then(|i| i.efi_entry.as_ref()).filter(|_| spec.can_touch_efi_variables);
    let Some((loader_path, description)) = entry else {
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
