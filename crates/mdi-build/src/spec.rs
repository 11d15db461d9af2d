//! The build spec (docs/design.md §2.2): JSON keys named after nixpkgs' arguments, every key also
//! a kebab-case flag. Unknown keys and values are errors that name the nearest valid one.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Every key the spec accepts, in the order of docs/design.md §2.2 (plus nixpkgs arguments we
/// accept for compatibility and ignore: name, memSize).
pub const KEYS: &[&str] = &[
    "format",
    "formatOptions",
    "partitionTableType",
    "diskSize",
    "additionalSpace",
    "bootSize",
    "fsType",
    "label",
    "onlyNixStore",
    "closureInfo",
    "storeRoot",
    "system",
    "targetSystem",
    "contents",
    "rootDir",
    "additionalPaths",
    "installBootLoader",
    "bootLoader",
    "systemdBoot",
    "grub",
    "grubMkimage",
    "grubForceI686",
    "touchEFIVars",
    "efiVariables",
    "bootTimeout",
    "canTouchEfiVariables",
    "grubOptions",
    "systemdBootOptions",
    "extlinuxOptions",
    "configFile",
    "copyChannel",
    "channel",
    "nixPathRegistration",
    "passwdFile",
    "groupFile",
    "deterministic",
    "rootGPUID",
    "rootFSUID",
    "seed",
    "sourceDateEpoch",
    "baseName",
    "postVM",
    "name",
    "memSize",
];

/// One `contents` entry.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ContentEntry {
    /// Host path of a file or folder.
    pub source: PathBuf,
    /// Absolute path in the image.
    pub target: String,
    /// Octal mode for the target (string "0644" or number).
    #[serde(default)]
    pub mode: Option<Value>,
    /// Owner: number or "root".
    #[serde(default)]
    pub user: Option<Value>,
    /// Group: number or "root".
    #[serde(default)]
    pub group: Option<Value>,
}

/// The resolved spec (defaults filled in).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Spec {
    #[serde(default = "d_format")]
    pub format: String,
    #[serde(default)]
    pub format_options: Map<String, Value>,
    #[serde(default = "d_ptt")]
    pub partition_table_type: String,
    #[serde(default = "d_auto")]
    pub disk_size: Value,
    #[serde(default = "d_additional")]
    pub additional_space: Value,
    #[serde(default = "d_boot")]
    pub boot_size: Value,
    #[serde(default = "d_ext4")]
    pub fs_type: String,
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub only_nix_store: bool,
    #[serde(default)]
    pub closure_info: Option<PathBuf>,
    #[serde(default = "d_store_root")]
    pub store_root: PathBuf,
    #[serde(default)]
    pub system: Option<String>,
    /// The Nix system double the image is for (`aarch64-linux`, …): taken from the system's
    /// bootspec when there is one (this key must then agree), else from here; default
    /// x86_64-linux. See [`Spec::target_arch`].
    #[serde(default)]
    pub target_system: Option<String>,
    #[serde(default)]
    pub contents: Vec<ContentEntry>,
    #[serde(default)]
    pub root_dir: Option<PathBuf>,
    /// Extra store paths the image must hold; each must be in closureInfo (nixpkgs adds
    /// them to its closureInfo's root paths), so they are copied and registered with it.
    #[serde(default)]
    pub additional_paths: Vec<String>,
    #[serde(default)]
    pub install_boot_loader: Option<bool>,
    #[serde(default)]
    pub boot_loader: Option<String>,
    #[serde(default)]
    pub systemd_boot: Option<PathBuf>,
    #[serde(default)]
    pub grub: Option<PathBuf>,
    #[serde(default)]
    pub grub_mkimage: Option<PathBuf>,
    /// NixOS' `boot.loader.grub.forcei686`: GRUB for 32-bit UEFI firmware on an x86_64
    /// machine (i386-efi, `BOOTIA32.EFI`).
    #[serde(default, rename = "grubForceI686")]
    pub grub_force_i686: bool,
    #[serde(default, rename = "touchEFIVars")]
    pub touch_efi_vars: bool,
    #[serde(default)]
    pub efi_variables: Option<PathBuf>,
    /// Seconds the boot menu waits (NixOS' boot.loader.timeout; default 5); -1 waits for a
    /// key (NixOS' `boot.loader.timeout = null`).
    #[serde(default)]
    pub boot_timeout: Option<i64>,
    /// NixOS' `boot.loader.efi.canTouchEfiVariables`: whether the installed EFI loader gets a
    /// Boot#### entry in efi-vars.fd (touchEFIVars). Default true.
    #[serde(default = "d_true")]
    pub can_touch_efi_variables: bool,
    /// NixOS' `boot.loader.grub.*` options that change the files GRUB's installer writes.
    #[serde(default)]
    pub grub_options: GrubOptions,
    /// NixOS' `boot.loader.systemd-boot.*` options that change the ESP.
    #[serde(default)]
    pub systemd_boot_options: SystemdBootOptions,
    /// NixOS' `boot.loader.generic-extlinux-compatible.*` options.
    #[serde(default)]
    pub extlinux_options: ExtlinuxOptions,
    #[serde(default)]
    pub config_file: Option<PathBuf>,
    /// Whether `channel` becomes root's channel. Unset means "when `channel` is given";
    /// false drops a given channel (its store path stays in the closure).
    #[serde(default)]
    pub copy_channel: Option<bool>,
    /// The channel's store path (nixpkgs' `channelSources`, `/nix/store/…-nixos-<version>`),
    /// which must be in closureInfo: it becomes root's channel as nixos-install makes it
    /// (`profiles/per-user/root/channels`, `/root/.nix-defexpr/channels`).
    #[serde(default)]
    pub channel: Option<String>,
    /// Write the closure's registration to `/nix-path-registration` (the filesystem root,
    /// which is the store itself with onlyNixStore), for systems that load their Nix
    /// database at boot with `nix-store --load-db` (make-ext4-fs' file of that name).
    #[serde(default)]
    pub nix_path_registration: bool,
    /// A passwd file (`name:x:uid:gid:…`) for the user names in `contents`; without it
    /// names are looked up in the image's own /etc/passwd.
    #[serde(default)]
    pub passwd_file: Option<PathBuf>,
    /// A group file (`name:x:gid:…`) for the group names in `contents`; without it names
    /// are looked up in the image's own /etc/group.
    #[serde(default)]
    pub group_file: Option<PathBuf>,
    #[serde(default = "d_true")]
    pub deterministic: bool,
    #[serde(default = "d_root_guid", rename = "rootGPUID")]
    pub root_gpuid: String,
    #[serde(default, rename = "rootFSUID")]
    pub root_fsuid: Option<String>,
    #[serde(default)]
    pub seed: Option<String>,
    #[serde(default)]
    pub source_date_epoch: Option<i64>,
    #[serde(default = "d_base")]
    pub base_name: String,
    #[serde(default, rename = "postVM")]
    pub post_vm: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub mem_size: Option<Value>,
}

/// `grubOptions`: NixOS' `boot.loader.grub.*` options, by their NixOS names, as
/// install-grub.pl reads them from grub-config.xml (docs/spec.md, docs/boot-loader-options.md).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrubOptions {
    /// GRUB commands after the header, before the menu entries.
    #[serde(default)]
    pub extra_config: String,
    /// Menu text added after (or, with `extraEntriesBeforeNixOS`, before) NixOS' entries;
    /// `@bootRoot@` becomes GRUB's path of /boot.
    #[serde(default)]
    pub extra_entries: String,
    #[serde(default, rename = "extraEntriesBeforeNixOS")]
    pub extra_entries_before_nixos: bool,
    /// Lines at the start of each NixOS entry (after its search line).
    #[serde(default)]
    pub extra_per_entry_config: String,
    /// `set default=` (an index or an entry title); "saved" is refused.
    #[serde(default = "d_grub_default")]
    pub default: String,
    /// Entries in the "All configurations" submenu (0: none).
    #[serde(default = "d_100")]
    pub configuration_limit: i64,
    /// `set timeout_style=`: menu, countdown or hidden.
    #[serde(default = "d_menu")]
    pub timeout_style: String,
    /// Options of the default NixOS entry (`menuentry "…" <entryOptions> {`).
    #[serde(default = "d_entry_options")]
    pub entry_options: String,
    /// Options of the entries in the submenu.
    #[serde(default = "d_sub_entry_options")]
    pub sub_entry_options: String,
    /// Copy kernels and initrds to /boot/kernels even when /boot is on the root filesystem.
    #[serde(default)]
    pub copy_kernels: bool,
    /// Files copied to the ESP (or /boot without one): name → source.
    #[serde(default)]
    pub extra_files: BTreeMap<String, PathBuf>,
    /// Install EFI GRUB (NixOS' efiSupport). Unset: where the layout has an ESP.
    #[serde(default)]
    pub efi_support: Option<bool>,
    /// No BIOS boot code (NixOS' `devices = [ "nodev" ]`). Unset: BIOS boot code where the
    /// layout has room for it.
    #[serde(default)]
    pub nodev: Option<bool>,
    /// EFI GRUB at the removable path `EFI/BOOT/BOOT<ARCH>.EFI` (true, the default here),
    /// else at `EFI/<bootloaderId>/grub<arch>.efi` as grub-install without --removable.
    #[serde(default = "d_true")]
    pub efi_install_as_removable: bool,
    /// grub-install's --bootloader-id: the folder under EFI/ and the Boot#### description.
    #[serde(default = "d_bootloader_id")]
    pub bootloader_id: String,
}

impl Default for GrubOptions {
    fn default() -> Self {
        serde_json::from_value(Value::Object(Map::new())).expect("all fields have defaults")
    }
}

/// `systemdBootOptions`: NixOS' `boot.loader.systemd-boot.*` options that change the ESP,
/// as systemd-boot-builder.py and its copy-extra-files script use them.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SystemdBootOptions {
    /// false writes `editor 0` to loader.conf.
    #[serde(default = "d_true")]
    pub editor: bool,
    /// `console-mode` of loader.conf.
    #[serde(default = "d_keep")]
    pub console_mode: String,
    /// true writes `reboot-for-bitlocker yes`.
    #[serde(default)]
    pub reboot_for_bitlocker: bool,
    /// loader/entries/<name> → its text.
    #[serde(default)]
    pub extra_entries: BTreeMap<String, String>,
    /// Files copied to $BOOT (XBOOTLDR, else the ESP): name → source.
    #[serde(default)]
    pub extra_files: BTreeMap<String, PathBuf>,
}

impl Default for SystemdBootOptions {
    fn default() -> Self {
        serde_json::from_value(Value::Object(Map::new())).expect("all fields have defaults")
    }
}

/// `extlinuxOptions`: NixOS' `boot.loader.generic-extlinux-compatible.*` options, as
/// extlinux-conf-builder.sh takes them (-g, -r, -n).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtlinuxOptions {
    /// Generations listed besides the default entry (0: none).
    #[serde(default = "d_20")]
    pub configuration_limit: i64,
    /// false: no FDTDIR/FDT line (the builder's -r).
    #[serde(default = "d_true")]
    pub use_generation_device_tree: bool,
    /// `FDT <dtbs>/<dtbName>` instead of FDTDIR (NixOS' hardware.deviceTree.name).
    #[serde(default)]
    pub dtb_name: Option<String>,
}

impl Default for ExtlinuxOptions {
    fn default() -> Self {
        serde_json::from_value(Value::Object(Map::new())).expect("all fields have defaults")
    }
}

fn d_grub_default() -> String {
    "0".into()
}
fn d_100() -> i64 {
    100
}
fn d_20() -> i64 {
    20
}
fn d_menu() -> String {
    "menu".into()
}
fn d_keep() -> String {
    "keep".into()
}
fn d_entry_options() -> String {
    "--class nixos --unrestricted".into()
}
fn d_sub_entry_options() -> String {
    "--class nixos".into()
}
fn d_bootloader_id() -> String {
    "NixOS-boot".into()
}

/// A name of an extraFiles/extraEntries map: a relative path without `..`.
fn check_rel_name(key: &str, name: &str) -> Result<(), SpecError> {
    if name.is_empty() || name.starts_with('/') || name.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(SpecError::BadValue {
            key: key.into(),
            what: format!(
                "'{name}' is not a relative path (like efi/memtest86/memtest.efi) without '.', '..' or empty parts"
            ),
        });
    }
    Ok(())
}

fn d_format() -> String {
    "raw".into()
}
fn d_ptt() -> String {
    "legacy".into()
}
fn d_auto() -> Value {
    Value::String("auto".into())
}
fn d_additional() -> Value {
    Value::String("512M".into())
}
fn d_boot() -> Value {
    Value::String("256M".into())
}
fn d_ext4() -> String {
    "ext4".into()
}
fn d_store_root() -> PathBuf {
    PathBuf::from("/")
}
fn d_true() -> bool {
    true
}
fn d_base() -> String {
    "nixos".into()
}
/// nixpkgs' default root partition GUID (and ext4 UUID).
pub const NIXPKGS_ROOT_GUID: &str = "F222513B-DED1-49FA-B591-20CE86A2FE7F";
fn d_root_guid() -> String {
    NIXPKGS_ROOT_GUID.into()
}

/// Spec errors (docs/design.md §8): each names the input and the fix.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("unknown spec key '{key}'{}; valid keys: {}", suggest(.nearest), KEYS.join(", "))]
    UnknownKey { key: String, nearest: Option<String> },
    #[error("unknown flag '--{flag}'{}", suggest(&.nearest.as_ref().map(|n| format!("--{}", kebab(n)))))]
    UnknownFlag { flag: String, nearest: Option<String> },
    #[error("spec key '{key}': {what}")]
    BadValue { key: String, what: String },
    #[error("cannot read spec '{path}': {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("spec '{path}' is not valid JSON: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
}

fn suggest(n: &Option<String>) -> String {
    match n {
        Some(n) => format!(" (did you mean '{n}'?)"),
        None => String::new(),
    }
}

/// camelCase → kebab-case (`partitionTableType` → `partition-table-type`, `rootGPUID` →
/// `root-gpuid`, `touchEFIVars` → `touch-efi-vars`, `postVM` → `post-vm`).
pub fn kebab(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    let mut out = String::new();
    for (i, &c) in chars.iter().enumerate() {
        if c.is_ascii_uppercase() {
            let prev_lower = i > 0 && chars[i - 1].is_ascii_lowercase();
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_ascii_lowercase());
            let prev_upper = i > 0 && chars[i - 1].is_ascii_uppercase();
            if i > 0 && (prev_lower || (prev_upper && next_lower)) {
                out.push('-');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The spec key for a flag name, if any.
pub fn key_for_flag(flag: &str) -> Option<&'static str> {
    KEYS.iter().copied().find(|k| kebab(k) == flag)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.to_lowercase().chars().collect();
    let b: Vec<char> = b.to_lowercase().chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let sub = prev[j - 1] + usize::from(a[i - 1] != b[j - 1]);
            cur[j] = sub.min(prev[j] + 1).min(cur[j - 1] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The closest of `options` to `word`, when reasonably close.
pub fn nearest(word: &str, options: &[&str]) -> Option<String> {
    options
        .iter()
        .map(|o| (edit_distance(word, o), *o))
        .min()
        .filter(|(d, o)| *d <= (o.len() / 2).max(2))
        .map(|(_, o)| o.to_string())
}

/// Checks keys, then deserializes with defaults.
pub fn from_map(map: Map<String, Value>) -> Result<Spec, SpecError> {
    for k in map.keys() {
        if !KEYS.contains(&k.as_str()) {
            return Err(SpecError::UnknownKey { key: k.clone(), nearest: nearest(k, KEYS) });
        }
    }
    let spec: Spec = serde_json::from_value(Value::Object(map)).map_err(|e| {
        let msg = e.to_string();
        SpecError::BadValue { key: msg.split('`').nth(1).unwrap_or("spec").to_string(), what: msg }
    })?;
    spec.validate()?;
    Ok(spec)
}

fn one_of(key: &str, v: &str, allowed: &[&str]) -> Result<(), SpecError> {
    if allowed.contains(&v) {
        return Ok(());
    }
    Err(SpecError::BadValue {
        key: key.into(),
        what: format!("'{v}' is not one of {}{}", allowed.join(", "), suggest(&nearest(v, allowed))),
    })
}

/// Parses an IEC size as numfmt --from=iec does: plain bytes or K/M/G/T/P/E suffixes
/// (powers of 1024, optional trailing "iB"/"B").
pub fn parse_iec(s: &str) -> Option<u64> {
    let s = s.trim();
    let t = s.trim_end_matches("iB").trim_end_matches('B');
    let (num, mult) = match t.chars().last()? {
        'K' | 'k' => (&t[..t.len() - 1], 1u64 << 10),
        'M' | 'm' => (&t[..t.len() - 1], 1 << 20),
        'G' | 'g' => (&t[..t.len() - 1], 1 << 30),
        'T' | 't' => (&t[..t.len() - 1], 1 << 40),
        'P' | 'p' => (&t[..t.len() - 1], 1 << 50),
        'E' | 'e' => (&t[..t.len() - 1], 1 << 60),
        _ => (t, 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mult)
}

/// A size given as a JSON number (bytes) or an IEC string.
pub fn parse_iec_value(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => parse_iec(s),
        _ => None,
    }
}

/// Disk size as requested.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskSize {
    /// Computed.
    Auto,
    /// Bytes.
    Bytes(u64),
}

impl Spec {
    /// `targetSystem`, typed (validated when the spec was read).
    pub fn target_arch(&self) -> Option<crate::arch::Arch> {
        self.target_system.as_deref().map(|t| crate::arch::Arch::from_nix_system(t).expect("validated"))
    }

    fn validate(&self) -> Result<(), SpecError> {
        one_of("format", &self.format, &["raw", "qcow2", "qcow2-compressed", "vdi", "vpc", "vmdk", "vhdx"])?;
        one_of(
            "partitionTableType",
            &self.partition_table_type,
            &["none", "legacy", "legacy+boot", "legacy+gpt", "efi", "efixbootldr", "hybrid"],
        )?;
        one_of("fsType", &self.fs_type, &["ext4", "btrfs", "xfs", "erofs", "squashfs", "vfat"])?;
        if let Some(t) = &self.target_system {
            one_of("targetSystem", t, &crate::arch::Arch::ALL.map(crate::arch::Arch::nix_system))?;
        }
        self.disk_size()?;
        self.additional_space()?;
        if parse_iec_value(&self.boot_size).is_none() {
            return Err(SpecError::BadValue {
                key: "bootSize".into(),
                what: format!("{} is not a size like 256M", self.boot_size),
            });
        }
        if self.base_name.is_empty() || self.base_name.contains('/') || self.base_name.starts_with('.') {
            return Err(SpecError::BadValue {
                key: "baseName".into(),
                what: format!("'{}' must be a plain file name", self.base_name),
            });
        }
        if let Some(l) = &self.label {
            // Other filesystems have other limits, checked when they are made.
            if self.fs_type == "ext4" && l.len() > 16 {
                return Err(SpecError::BadValue {
                    key: "label".into(),
                    what: format!("'{l}' is longer than ext4's 16 bytes"),
                });
            }
        }
        // nixpkgs' assertions: onlyNixStore excludes contents, configFile
        // and boot loader installation.
        if self.only_nix_store {
            if !self.contents.is_empty() {
                return Err(SpecError::BadValue {
                    key: "contents".into(),
                    what: "onlyNixStore images hold only the store; remove contents or set onlyNixStore = false".into(),
                });
            }
            if self.config_file.is_some() {
                return Err(SpecError::BadValue {
                    key: "configFile".into(),
                    what: "onlyNixStore images have no /etc; remove configFile or set onlyNixStore = false".into(),
                });
            }
            if self.install_boot_loader == Some(true) {
                return Err(SpecError::BadValue {
                    key: "installBootLoader".into(),
                    what: "onlyNixStore images have no boot loader; set installBootLoader = false".into(),
                });
            }
            if self.closure_info.is_none() {
                return Err(SpecError::BadValue {
                    key: "closureInfo".into(),
                    what: "onlyNixStore needs closureInfo (a folder with store-paths and registration)".into(),
                });
            }
            // Inputs a store-only image cannot hold are refused, not dropped.
            if self.root_dir.is_some() {
                return Err(SpecError::BadValue {
                    key: "rootDir".into(),
                    what: "onlyNixStore images hold only the store; remove rootDir or set onlyNixStore = false".into(),
                });
            }
            if self.channel.is_some() && self.copy_channel != Some(false) {
                return Err(SpecError::BadValue {
                    key: "channel".into(),
                    what: "onlyNixStore images have no root profile for a channel; remove channel (or set copyChannel = false) or set onlyNixStore = false".into(),
                });
            }
        }
        if self.touch_efi_vars
            && !["hybrid", "efi", "efixbootldr", "legacy+gpt"].contains(&self.partition_table_type.as_str())
        {
            return Err(SpecError::BadValue {
                key: "touchEFIVars".into(),
                what: format!(
                    "needs a GPT layout (efi, efixbootldr, hybrid, legacy+gpt), not '{}'",
                    self.partition_table_type
                ),
            });
        }
        for (i, c) in self.contents.iter().enumerate() {
            if c.user.is_some() != c.group.is_some() {
                return Err(SpecError::BadValue {
                    key: format!("contents[{i}]"),
                    what: "set both user and group, or neither (as nixpkgs requires)".into(),
                });
            }
        }
        let needs_closure = |key: &str, what: &str| {
            if self.closure_info.is_none() {
                return Err(SpecError::BadValue {
                    key: key.into(),
                    what: format!(
                        "{what} needs closureInfo (a folder with store-paths and registration) that holds it"
                    ),
                });
            }
            Ok(())
        };
        if self.copy_channel == Some(true) && self.channel.is_none() {
            return Err(SpecError::BadValue {
                key: "copyChannel".into(),
                what: "needs channel: the channel's store path (nixpkgs' channelSources, /nix/store/…-nixos-<version>), in closureInfo".into(),
            });
        }
        if let Some(c) = &self.channel {
            if !mdi_nix::is_store_path(c) {
                return Err(SpecError::BadValue {
                    key: "channel".into(),
                    what: format!("'{c}' is not a store path (/nix/store/<hash>-<name>)"),
                });
            }
            needs_closure("channel", "a channel")?;
        }
        for p in &self.additional_paths {
            if !mdi_nix::is_store_path(p) {
                return Err(SpecError::BadValue {
                    key: "additionalPaths".into(),
                    what: format!("'{p}' is not a store path (/nix/store/<hash>-<name>)"),
                });
            }
            needs_closure("additionalPaths", &format!("'{p}'"))?;
        }
        if self.nix_path_registration {
            needs_closure("nixPathRegistration", "/nix-path-registration")?;
        }
        if let Some(s) = &self.seed {
            mdi_ident::Uuid::parse(s).map_err(|e| SpecError::BadValue { key: "seed".into(), what: e.to_string() })?;
        }
        self.validate_boot_options()?;
        mdi_ident::Uuid::parse(&self.root_gpuid)
            .map_err(|e| SpecError::BadValue { key: "rootGPUID".into(), what: e.to_string() })?;
        if let Some(s) = &self.root_fsuid {
            mdi_ident::Uuid::parse(s)
                .map_err(|e| SpecError::BadValue { key: "rootFSUID".into(), what: e.to_string() })?;
        }
        Ok(())
    }

    fn validate_boot_options(&self) -> Result<(), SpecError> {
        if let Some(t) = self.boot_timeout {
            if !(-1..=i64::from(u32::MAX)).contains(&t) {
                return Err(SpecError::BadValue {
                    key: "bootTimeout".into(),
                    what: format!("{t} is not a number of seconds (0 to 4294967295) or -1 (wait for a key)"),
                });
            }
        }
        let g = &self.grub_options;
        one_of("grubOptions.timeoutStyle", &g.timeout_style, &["menu", "countdown", "hidden"])?;
        if g.default == "saved" || g.default.contains('\n') {
            return Err(SpecError::BadValue {
                key: "grubOptions.default".into(),
                what: format!(
                    "'{}' is not supported: \"saved\" needs GRUB's environment block, which install-grub.pl keeps and this builder does not write; give an index or an entry title",
                    g.default
                ),
            });
        }
        if g.bootloader_id.is_empty() || g.bootloader_id.contains(['/', '\\']) {
            return Err(SpecError::BadValue {
                key: "grubOptions.bootloaderId".into(),
                what: format!("'{}' must be a plain folder name (EFI/<bootloaderId>/)", g.bootloader_id),
            });
        }
        for name in g.extra_files.keys() {
            check_rel_name("grubOptions.extraFiles", name)?;
        }
        let s = &self.systemd_boot_options;
        one_of("systemdBootOptions.consoleMode", &s.console_mode, &["0", "1", "2", "5", "auto", "max", "keep"])?;
        for name in s.extra_files.keys() {
            check_rel_name("systemdBootOptions.extraFiles", name)?;
        }
        for name in s.extra_entries.keys() {
            if name.contains('/') || name.is_empty() || name.starts_with('.') {
                return Err(SpecError::BadValue {
                    key: "systemdBootOptions.extraEntries".into(),
                    what: format!("'{name}' must be a plain file name in loader/entries (like memtest86.conf)"),
                });
            }
        }
        if let Some(d) = &self.extlinux_options.dtb_name {
            check_rel_name("extlinuxOptions.dtbName", d)?;
        }
        Ok(())
    }

    /// diskSize: "auto", a number of MiB, or an IEC string.
    pub fn disk_size(&self) -> Result<DiskSize, SpecError> {
        let bad = |what: String| SpecError::BadValue { key: "diskSize".into(), what };
        // Exact: a count of MiB whose bytes do not fit 64 bits is refused, not wrapped.
        let mib = |m: u64| m.checked_mul(1 << 20);
        let too_many = |m: u64| format!("{m} MiB is more bytes than a 64-bit size holds; give a size like 4G or 2T");
        match &self.disk_size {
            Value::String(s) if s == "auto" => Ok(DiskSize::Auto),
            Value::Number(n) => match n.as_u64() {
                Some(m) => mib(m).map(DiskSize::Bytes).ok_or_else(|| bad(too_many(m))),
                None => Err(bad(format!("{n} is not a whole number of MiB"))),
            },
            Value::String(s) => match s.parse::<u64>() {
                Ok(m) => mib(m).map(DiskSize::Bytes).ok_or_else(|| bad(too_many(m))),
                Err(_) => parse_iec(s).map(DiskSize::Bytes).ok_or_else(|| {
                    bad(format!("'{s}' is not \"auto\", a number of MiB or a size like 4G (below 16 EiB)"))
                }),
            },
            v => Err(bad(format!("{v} is not \"auto\" or a size"))),
        }
    }

    /// additionalSpace in bytes (numfmt --from=iec: a bare number is bytes).
    pub fn additional_space(&self) -> Result<u64, SpecError> {
        let bad = |what: String| SpecError::BadValue { key: "additionalSpace".into(), what };
        match &self.additional_space {
            Value::Number(n) => n.as_u64().ok_or_else(|| bad(format!("{n} is not a size"))),
            Value::String(s) => parse_iec(s).ok_or_else(|| bad(format!("'{s}' is not a size like 512M"))),
            v => Err(bad(format!("{v} is not a size"))),
        }
    }

    /// The channel to make root's channel, if any (`channel` unless `copyChannel` is false).
    pub fn channel_to_install(&self) -> Option<&str> {
        self.channel.as_deref().filter(|_| self.copy_channel != Some(false))
    }

    /// The output file extension for the format (docs/design.md §2.1).
    pub fn extension(&self) -> &'static str {
        match self.format.as_str() {
            "raw" => "img",
            "qcow2" | "qcow2-compressed" => "qcow2",
            "vdi" => "vdi",
            "vpc" => "vhd",
            "vmdk" => "vmdk",
            _ => "vhdx",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kebab_names() {
        assert_eq!(kebab("partitionTableType"), "partition-table-type");
        assert_eq!(kebab("rootGPUID"), "root-gpuid");
        assert_eq!(kebab("touchEFIVars"), "touch-efi-vars");
        assert_eq!(kebab("postVM"), "post-vm");
        assert_eq!(kebab("rootFSUID"), "root-fsuid");
        for k in KEYS {
            assert_eq!(key_for_flag(&kebab(k)), Some(*k));
        }
    }

    #[test]
    fn boot_loader_options() {
        let spec = |j: serde_json::Value| from_map(j.as_object().unwrap().clone());
        let s = spec(serde_json::json!({})).unwrap();
        assert_eq!(s.grub_options, GrubOptions::default());
        assert_eq!((s.grub_options.default.as_str(), s.grub_options.efi_install_as_removable), ("0", true));
        assert!(s.systemd_boot_options.editor && s.can_touch_efi_variables);
        assert_eq!(s.extlinux_options.configuration_limit, 20);
        assert_eq!(spec(serde_json::json!({"bootTimeout": -1})).unwrap().boot_timeout, Some(-1));
        for (bad, key) in [
            (serde_json::json!({"bootTimeout": -2}), "bootTimeout"),
            (serde_json::json!({"grubOptions": {"default": "saved"}}), "grubOptions.default"),
            (serde_json::json!({"grubOptions": {"timeoutStyle": "loud"}}), "grubOptions.timeoutStyle"),
            (serde_json::json!({"grubOptions": {"bootloaderId": "a/b"}}), "grubOptions.bootloaderId"),
            (serde_json::json!({"grubOptions": {"extraFiles": {"../x": "/y"}}}), "grubOptions.extraFiles"),
            (serde_json::json!({"systemdBootOptions": {"consoleMode": "big"}}), "systemdBootOptions.consoleMode"),
            (
                serde_json::json!({"systemdBootOptions": {"extraEntries": {"a/b.conf": ""}}}),
                "systemdBootOptions.extraEntries",
            ),
        ] {
            match spec(bad.clone()) {
                Err(SpecError::BadValue { key: k, .. }) => assert_eq!(k, key, "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        // Unknown option names are errors, not dropped.
        assert!(spec(serde_json::json!({"grubOptions": {"theme": "/x"}})).is_err());
    }

    #[test]
    fn unknown_key_suggests() {
        let mut m = Map::new();
        m.insert("diskSise".into(), Value::String("auto".into()));
        let e = from_map(m).unwrap_err().to_string();
        assert!(e.contains("did you mean 'diskSize'"), "{e}");
    }

    #[test]
    fn bad_enum_suggests() {
        let mut m = Map::new();
        m.insert("format".into(), Value::String("qcow".into()));
        let e = from_map(m).unwrap_err().to_string();
        assert!(e.contains("did you mean 'qcow2'"), "{e}");
    }

    #[test]
    fn iec() {
        assert_eq!(parse_iec("512M"), Some(512 << 20));
        assert_eq!(parse_iec("1G"), Some(1 << 30));
        assert_eq!(parse_iec("4096"), Some(4096));
        assert_eq!(parse_iec("1GiB"), Some(1 << 30));
        assert_eq!(parse_iec("x"), None);
    }
}
