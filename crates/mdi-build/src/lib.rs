//! The build pipeline (docs/design.md §3): collect the tree from the spec's sources, write the
//! filesystem into the output, then the manifest and Hydra products; atomically.
#![forbid(unsafe_code)]

mod arch;
mod boot;
mod content;
mod demo;
mod external_fs;
pub mod layout;
mod output;
pub mod spec;

use anyhow::{anyhow, bail, Context, Result};
use mdi_ident::{Seed, Uuid};
use mdi_sink::RawSink;
use mdi_tree::{Meta, Timestamp};
use serde_json::json;
use sha2::{Digest, Sha256};
use spec::{DiskSize, Spec};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

pub use content::collect;
pub use output::Scratch;

/// The seed used when the spec gives none (a fixed value: images are reproducible by
/// default).
pub const DEFAULT_SEED: &str = "6b1ad0a7-9d4e-4e5b-8a8f-6d6b2d1f2a10";

/// Run-time context that is not part of the spec (it must not change the bytes).
#[derive(Clone, Default)]
pub struct RunContext {
    /// Set by a Ctrl-C handler.
    pub cancel: Option<Arc<AtomicBool>>,
    /// File bytes read so far, for progress display.
    pub progress: Option<Arc<AtomicU64>>,
    /// Shared with whoever may abandon the build (see [`Scratch::abandon`]); a build
    /// without one makes its own.
    pub scratch: Option<Arc<Scratch>>,
}

/// Test hook (fault injection): `MDI_FAIL_AT=PHASE` makes the build fail at that point,
/// `MDI_FAIL_AT=write:N` makes the N+1st write to the image fail, and `MDI_PAUSE_AT=PHASE`
/// sleeps 30 s there (for signal tests). Phases: validate, scan, write, compress, postVM,
/// manifest, rename. The test suite uses them to prove the output folder's invariant at
/// every failure point; they are not part of the interface.
fn fault(phase: &str) -> Result<()> {
    if std::env::var("MDI_PAUSE_AT").is_ok_and(|p| p == phase) {
        std::thread::sleep(std::time::Duration::from_secs(30));
    }
    if std::env::var("MDI_FAIL_AT").is_ok_and(|p| p == phase) {
        bail!("injected fault at {phase} (MDI_FAIL_AT)");
    }
    Ok(())
}

/// The write budget of `MDI_FAIL_AT=write:N`.
fn write_fault_budget() -> Option<u64> {
    std::env::var("MDI_FAIL_AT").ok()?.strip_prefix("write:")?.parse().ok()
}

/// A container whose writes fail after a budget, or whose finish (where compressed
/// formats compress and every format writes its tables) fails: see [`fault`].
struct Faulty {
    inner: mdi_sink::FailAfter<Box<dyn mdi_container::Container>>,
}

impl mdi_sink::Sink for Faulty {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.inner.write_at(offset, data)
    }
}

impl mdi_container::Container for Faulty {
    fn finish(self: Box<Self>, virtual_size: u64) -> std::io::Result<std::fs::File> {
        fault("compress").map_err(|e| std::io::Error::other(e.to_string()))?;
        self.inner.inner.finish(virtual_size)
    }
}

/// The largest virtual disk each format takes: the format's own limit, or the size at
/// which its tables (held in memory until the end) would pass 64 MiB.
fn format_max(format: &str) -> u64 {
    match format {
        // qemu's QCOW_MAX_L1_SIZE (32 MiB of L1 = 4 Mi entries × 512 MiB each).
        "qcow2" | "qcow2-compressed" => 2 << 50,
        // One u32 per 1 MiB block: 64 MiB of block map at 16 TiB.
        "vdi" => 16 << 40,
        // The VHD format's limit as qemu enforces it (VHD_MAX_SECTORS × 512).
        "vpc" => 0xff00_0000 * 512,
        // Grain-table entries are 32-bit sector numbers: 2 TiB.
        "vmdk" => 2 << 40,
        // The VHDX specification's 64 TiB.
        "vhdx" => 64 << 40,
        // File offsets are signed 64-bit; the output folder's filesystem has its own limit,
        // probed when the file is made.
        _ => i64::MAX as u64,
    }
}

/// What a build produced.
pub struct Outcome {
    /// Final image path.
    pub image: PathBuf,
    /// The manifest written to OUT/manifest.json.
    pub manifest: serde_json::Value,
}

/// SOURCE_DATE_EPOCH: the spec's value, else the environment's, else 1 (nixpkgs' store
/// timestamp).
pub fn source_date_epoch(spec: &Spec) -> Result<i64> {
    if let Some(t) = spec.source_date_epoch {
        return Ok(t);
    }
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => v
            .trim()
            .parse()
            .map_err(|_| anyhow!("SOURCE_DATE_EPOCH='{v}' is not a whole number of seconds; unset it or fix it")),
        _ => Ok(1),
    }
}

/// The output format's writer over the (empty) output file.
fn container_for(
    spec: &Spec,
    file: std::fs::File,
    seed: &Seed,
    sde: i64,
    file_name: &str,
) -> Result<Box<dyn mdi_container::Container>> {
    use mdi_container::{Compression, Qcow2, Vdi, Vhd, Vhdx, VhdxIds, Vmdk, VmdkKind};
    let opt = |k: &str| spec.format_options.get(k).and_then(|v| v.as_str()).map(str::to_string);
    for k in spec.format_options.keys() {
        let known: &[&str] = match spec.format.as_str() {
            "qcow2-compressed" => &["compression"],
            "vpc" | "vmdk" => &["subformat"],
            _ => &[],
        };
        if !known.contains(&k.as_str()) {
            bail!(
                "formatOptions.{k} is not an option of format '{}'{}",
                spec.format,
                if known.is_empty() { String::new() } else { format!(" (it takes: {})", known.join(", ")) }
            );
        }
    }
    Ok(match spec.format.as_str() {
        "raw" => Box::new(RawSink::new(file)),
        "qcow2" => Box::new(Qcow2::new(file, Compression::None)),
        "qcow2-compressed" => Box::new(Qcow2::new(
            file,
            match opt("compression").as_deref() {
                None | Some("deflate") | Some("zlib") => Compression::Deflate,
                Some("zstd") => Compression::Zstd,
                Some(o) => bail!("formatOptions.compression '{o}' is not deflate or zstd"),
            },
        )),
        "vpc" => Box::new(Vhd::new(
            file,
            match opt("subformat").as_deref() {
                None | Some("dynamic") => false,
                Some("fixed") => true,
                Some(o) => bail!("formatOptions.subformat '{o}' is not dynamic or fixed"),
            },
            sde,
            seed.uuid(b"vhd-unique-id").0,
        )),
        "vdi" => Box::new(Vdi::new(file, seed.uuid(b"vdi-image-uuid").0, seed.uuid(b"vdi-last-snapshot-uuid").0)),
        "vmdk" => Box::new(Vmdk::new(
            file,
            match opt("subformat").as_deref() {
                None | Some("monolithicSparse") => VmdkKind::MonolithicSparse,
                Some("streamOptimized") => VmdkKind::StreamOptimized,
                Some(o) => bail!("formatOptions.subformat '{o}' is not monolithicSparse or streamOptimized"),
            },
            u32::from_be_bytes(seed.hmac(b"vmdk-cid")[..4].try_into().expect("4 bytes")),
            file_name,
        )),
        "vhdx" => Box::new(Vhdx::new(
            file,
            VhdxIds {
                file_write: seed.uuid(b"vhdx-file-write-guid").to_guid_bytes(),
                data_write: seed.uuid(b"vhdx-data-write-guid").to_guid_bytes(),
                virtual_disk_id: seed.uuid(b"vhdx-virtual-disk-id").to_guid_bytes(),
            },
        )),
        other => bail!("format '{other}' is not implemented yet"),
    })
}

/// `make-disk-image convert`: reads any image format we know (ours and qemu-img's) and
/// writes it in `format`, atomically, with identity fields from `seed` and timestamps
/// from SOURCE_DATE_EPOCH (so a conversion is reproducible too).
pub fn convert(
    input: &Path,
    output: &Path,
    format: &str,
    options: &serde_json::Map<String, serde_json::Value>,
    seed: Option<&str>,
    input_format: Option<mdi_container::read::Format>,
) -> Result<Vec<String>> {
    let mut map = serde_json::Map::new();
    map.insert("format".into(), json!(format));
    map.insert("formatOptions".into(), serde_json::Value::Object(options.clone()));
    if let Some(s) = seed {
        map.insert("seed".into(), json!(s));
    }
    let spec = spec::from_map(map)?;
    let sde = source_date_epoch(&spec)?;
    let seed = Seed(Uuid::parse(spec.seed.as_deref().unwrap_or(DEFAULT_SEED))?);
    let mut img = mdi_container::read::open_as(input, input_format)
        .with_context(|| format!("cannot read image '{}'", input.display()))?;
    let size = img.virtual_size();
    let notes = img.notes();
    let dir = match output.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = output
        .file_name()
        .ok_or_else(|| anyhow!("output '{}' is not a file name", output.display()))?
        .to_string_lossy()
        .into_owned();
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".partial")
        .tempfile_in(&dir)
        .with_context(|| format!("folder '{}' is not writable; choose another output path", dir.display()))?;
    let mut sink = container_for(&spec, tmp.as_file().try_clone()?, &seed, sde, &name)?;
    const CHUNK: u64 = 1 << 20;
    let mut buf = vec![0u8; CHUNK as usize];
    let mut off = 0u64;
    while off < size {
        let n = CHUNK.min(size - off);
        if img.maybe_data(off, n)? {
            img.read_at(off, &mut buf[..n as usize])
                .with_context(|| format!("reading '{}' at byte {off}", input.display()))?;
            if !mdi_sink::is_zero(&buf[..n as usize]) {
                sink.write_at(off, &buf[..n as usize]).with_context(|| format!("writing '{}'", output.display()))?;
            }
        }
        off += n;
    }
    let f = sink.finish(size).with_context(|| format!("writing '{}'", output.display()))?;
    f.sync_all()?;
    std::fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    tmp.persist(output).map_err(|e| anyhow!("cannot move the image to '{}': {}", output.display(), e.error))?;
    Ok(notes)
}

/// Largest image whose SHA-256 goes into the manifest.
const HASH_LIMIT: u64 = 16 << 30;

/// Runs a whole build into `out_dir`.
pub fn build(spec: &Spec, out_dir: &Path, ctx: &RunContext) -> Result<Outcome> {
    let arch = boot::target_arch(spec)?;
    let loader = boot::wanted(spec, arch)?;
    let sde = source_date_epoch(spec)?;
    let seed = Seed(Uuid::parse(spec.seed.as_deref().unwrap_or(DEFAULT_SEED))?);
    let boot_size = spec::parse_iec_value(&spec.boot_size)
        .ok_or_else(|| anyhow!("bootSize '{}' is not a size like 256M", spec.boot_size))?;
    if boot_size > 1 << 40 {
        bail!("bootSize {boot_size} bytes is larger than a boot partition can usefully be (1 TiB); choose a size like 256M");
    }
    let mut plan = layout::Plan::new(
        &spec.partition_table_type,
        layout::boot_end(boot_size),
        &seed,
        Uuid::parse(&spec.root_gpuid)?,
    )?;
    if loader == Some(boot::Loader::Extlinux) {
        plan.mark_bootable();
    }
    // Every size is checked here, before anything is allocated or scanned.
    let max = format_max(&spec.format);
    let fixed = match spec.disk_size()? {
        DiskSize::Bytes(b) if b > max => bail!(
            "diskSize {b} bytes ({} TiB) is larger than format '{}' holds ({} bytes); choose a smaller diskSize or another format",
            b >> 40,
            spec.format,
            max
        ),
        DiskSize::Bytes(b) => Some(b),
        DiskSize::Auto => None,
    };
    if spec.fs_type == "ext4" {
        let extra = spec.additional_space()?;
        let root = match fixed {
            Some(b) => plan.root_size_for_disk(b)?,
            None => extra,
        };
        if root > mdi_ext4::MAX_BYTES {
            bail!(
                "{}: a root filesystem of {root} bytes is larger than the ext4 writer makes ({} TiB); choose a smaller size (resize2fs can grow the filesystem on the running system)",
                if fixed.is_some() { "diskSize" } else { "additionalSpace" },
                mdi_ext4::MAX_BYTES >> 40
            );
        }
    } else if spec.additional_space()? > max {
        bail!("additionalSpace is larger than format '{}' holds ({max} bytes)", spec.format);
    }
    fault("validate")?;
    let t0 = std::time::Instant::now();
    let trace = std::env::var_os("MDI_TRACE").is_some();
    let phase = |what: &str| {
        if trace {
            eprintln!("[build {:>7.3}s] {what}", t0.elapsed().as_secs_f64());
        }
    };
    fault("scan")?;
    let mut tree = collect(spec, sde)?;
    phase("tree collected");
    let fs_uuid = match &spec.root_fsuid {
        Some(u) => Uuid::parse(u)?,
        None if spec.only_nix_store => seed.uuid(b"nix-store-fs-uuid"),
        None => Uuid::parse(&spec.root_gpuid)?,
    };
    // Boot partitions are mounted over /boot (and /efi): their content comes from there,
    // and the root keeps the empty mount points.
    for p in &plan.parts {
        if let layout::Role::Fat { mount, .. } = p.role {
            content::make_dir(&mut tree, mount, &Meta::root(0o755, Timestamp::from_secs(sde))).with_context(|| {
                format!("'{mount}' in the image must be a folder: a boot partition is mounted there")
            })?;
        }
    }
    let installed = match loader {
        Some(l) => Some(boot::install(spec, l, &plan, &mut tree, sde, fs_uuid, arch)?),
        None => None,
    };
    tree.finish();

    let scratch = ctx.scratch.clone().unwrap_or_default();
    let stage = output::Stage::create(out_dir, scratch.clone())?;
    let out_dir = stage.out_dir().to_path_buf();
    let file_name = format!("{}.{}", spec.base_name, spec.extension());
    let final_path = out_dir.join(&file_name);
    let staged_image = stage.path().join(&file_name);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&staged_image)
        .with_context(|| format!("output folder '{}' is not writable; choose another with -o", out_dir.display()))?;
    // A raw file of a fixed size must fit the output folder's filesystem's largest file
    // (16 TiB on ext4): ask it now (a sparse resize costs nothing) rather than after the
    // whole image is written.
    if let (Some(b), "raw") = (fixed, spec.format.as_str()) {
        file.set_len(b).and_then(|()| file.set_len(0)).map_err(|e| too_big_or(e, &out_dir, b))?;
    }
    let mut sink = container_for(spec, file.try_clone().context("output file")?, &seed, sde, &file_name)?;
    if let Some(budget) = write_fault_budget() {
        sink = Box::new(Faulty { inner: mdi_sink::FailAfter { inner: sink, budget } });
    } else if std::env::var("MDI_FAIL_AT").is_ok_and(|p| p == "compress") {
        sink = Box::new(Faulty { inner: mdi_sink::FailAfter { inner: sink, budget: u64::MAX } });
    }
    let write_err = |io: std::io::Error| {
        if io.raw_os_error() == Some(libc_efbig()) {
            return too_big(&out_dir, &io);
        }
        anyhow!(
            "cannot write the image in '{}': {io}; free space there or choose another output folder with -o",
            out_dir.display()
        )
    };
    fault("write")?;

    // Boot partitions (fixed sizes), filled from their mount point's subtree.
    let mut filesystems = Vec::new();
    for p in &plan.parts {
        let layout::Role::Fat { label, mount } = p.role else {
            continue;
        };
        let id = tree.lookup(mount.as_bytes()).expect("mount point made a folder above");
        let end = p.end.expect("boot partitions have fixed ends");
        let opts = mdi_fat::Options {
            volume_id: layout::fat_volume_id(p.guid),
            label: label.to_string(),
            time: sde,
            hidden_sectors: (p.start / 512) as u32,
        };
        let mut part_sink = mdi_sink::OffsetSink { inner: &mut *sink, offset: p.start };
        let r = mdi_fat::write(&tree, id, end - p.start, &opts, &mut part_sink).map_err(|e| match e {
            mdi_fat::Error::Write(io) => write_err(io),
            mdi_fat::Error::TooSmall { need, .. } => anyhow!(
                "bootSize is too small: the {label} partition ({} MiB) cannot hold the files below {mount}; it needs {} MiB, so set bootSize to at least {}M",
                (end - p.start) / layout::MIB,
                need.div_ceil(layout::MIB),
                (p.start + need).div_ceil(layout::MIB)
            ),
            e => anyhow::Error::new(e).context(format!("the {label} partition ({mount})")),
        })?;
        filesystems.push(json!({
            "role": if label == "ESP" { "esp" } else { "boot" },
            "partition": p.number,
            "type": if r.fat_type == mdi_fat::FatType::Fat32 { "fat32" } else { "fat16" },
            "offset": p.start,
            "size": end - p.start,
            "label": label,
            "volumeId": format!("{:08X}", opts.volume_id),
            "clusterBytes": r.cluster_bytes,
            "clusters": r.clusters,
            "freeClusters": r.free_clusters,
        }));
        tree.clear_dir(id);
    }

    // The root filesystem.
    let root_start = plan.root().start;
    let label =
        spec.label.clone().unwrap_or_else(|| if spec.only_nix_store { "nix-store".into() } else { "nixos".into() });
    let (root_size, root_fs) = if spec.fs_type == "ext4" {
        let size = match spec.disk_size()? {
            DiskSize::Auto => {
                mdi_ext4::SizeRequest::Auto { extra_bytes: spec.additional_space()?, align_bytes: layout::MIB }
            }
            DiskSize::Bytes(b) => mdi_ext4::SizeRequest::Fixed { bytes: plan.root_size_for_disk(b)? },
        };
        let opts = mdi_ext4::Options {
            size,
            uuid: fs_uuid.0,
            hash_seed: seed.uuid(b"ext4-hash-seed").0,
            label: label.as_bytes().to_vec(),
            time: sde,
            cancel: ctx.cancel.clone(),
            progress: ctx.progress.clone(),
        };
        let report = {
            let mut part_sink = mdi_sink::OffsetSink { inner: &mut *sink, offset: root_start };
            mdi_ext4::write(&tree, &opts, &mut part_sink).map_err(|e| match e {
                mdi_ext4::Error::TooSmall { need, have } => {
                    // The smallest whole-MiB disk whose root partition is at least `need`
                    // (the layout's own arithmetic, which rounds at the GPT backup).
                    let mut disk = (need + plan.disk_size(0)).div_ceil(layout::MIB) * layout::MIB;
                    while plan.root_size_for_disk(disk).map_or(true, |r| r < need) {
                        disk += layout::MIB;
                    }
                    anyhow!(
                        "diskSize is too small: the root filesystem needs at least {need} bytes but the disk leaves it {have} bytes; set diskSize to at least {} (MiB) or to \"auto\"",
                        disk / layout::MIB
                    )
                }
                mdi_ext4::Error::Write(io) => write_err(io),
                e => anyhow::Error::new(e),
            })?
        };
        let root_size = match size {
            mdi_ext4::SizeRequest::Fixed { bytes } => bytes,
            _ => report.bytes,
        };
        let fs = json!({
            "role": "root",
            "partition": plan.root().number,
            "type": "ext4",
            "offset": root_start,
            "size": report.bytes,
            "uuid": fs_uuid.to_string(),
            "label": label,
            "blocks": report.blocks,
            "freeBlocks": report.free_blocks,
            "inodes": report.inodes,
            "freeInodes": report.free_inodes,
            "groups": report.groups,
            "dataBytes": report.data_bytes,
        });
        (root_size, fs)
    } else {
        // docs/design.md §4.4: the filesystem's own mkfs tool (or our FAT writer for vfat).
        let size = match spec.disk_size()? {
            DiskSize::Auto => external_fs::Size::Auto { extra: spec.additional_space()?, align: layout::MIB },
            DiskSize::Bytes(b) => external_fs::Size::Fixed(plan.root_size_for_disk(b)?),
        };
        let opts = external_fs::Options {
            fs_type: &spec.fs_type,
            size,
            uuid: fs_uuid,
            seed,
            label: &label,
            time: sde,
            work_dir: stage.path(),
            temp_prefix: &format!(".{file_name}."),
            disk_overhead: plan.disk_size(0),
            offset: root_start,
            cancel: ctx.cancel.as_deref(),
            progress: ctx.progress.as_deref(),
        };
        let r = {
            let mut part_sink = mdi_sink::OffsetSink { inner: &mut *sink, offset: root_start };
            external_fs::write(&tree, &opts, &mut part_sink)?
        };
        let fs = json!({
            "role": "root",
            "partition": plan.root().number,
            "type": spec.fs_type,
            "offset": root_start,
            "size": r.part_bytes,
            "fsBytes": r.fs_bytes,
            "uuid": r.uuid,
            "label": r.label,
            "tool": r.tool,
            "reproducible": r.reproducible,
            "notes": r.notes,
        });
        (r.part_bytes, fs)
    };
    let disk_bytes = match spec.disk_size()? {
        DiskSize::Bytes(b) => b,
        DiskSize::Auto => plan.disk_size(root_size),
    };
    plan.finish(root_size);
    let mut table = plan.encode(disk_bytes, &seed)?;
    if let Some(bios) = installed.as_ref().and_then(|i| i.bios.as_ref()) {
        let mut mbr = [0u8; 512];
        if let Some((_, b)) = table.iter().find(|(off, _)| *off == 0) {
            mbr.copy_from_slice(&b[..512]);
        }
        table.retain(|(off, _)| *off != 0);
        table.extend(boot::bios_writes(bios, &mbr)?);
    }
    for (off, bytes) in table {
        mdi_sink::Sink::write_at(&mut *sink, off, &bytes).map_err(write_err)?;
    }
    let file = sink.finish(disk_bytes).map_err(|e| {
        if e.raw_os_error() == Some(libc_efbig()) {
            return too_big(&out_dir, &e);
        }
        anyhow!(
            "cannot finish the image in '{}': {e}; free space there or choose another output folder with -o",
            out_dir.display()
        )
    })?;
    phase("image written");
    // Flushing to disk and hashing the image both take a while: do them at once. A huge
    // sparse image is not hashed: SHA-256 would have to run over terabytes of holes.
    let file_bytes = file.metadata()?.len();
    let hash_it = file_bytes <= HASH_LIMIT;
    let (synced, sha256) = std::thread::scope(|s| {
        let sync = s.spawn(|| file.sync_all());
        let sha = if hash_it { sha256_file(&staged_image).map(Some) } else { Ok(None) };
        (sync.join().expect("sync thread"), sha)
    });
    synced.with_context(|| {
        format!(
            "cannot flush the image in '{}'; free space there or choose another output folder with -o",
            out_dir.display()
        )
    })?;
    let sha256 = sha256.context("hashing the image")?;
    phase("image flushed and hashed");
    filesystems.push(root_fs);
    let partitions: Vec<serde_json::Value> = plan
        .parts
        .iter()
        .filter(|_| plan.table != layout::Table::None)
        .map(|p| {
            json!({
                "number": p.number,
                "start": p.start,
                "size": p.end.expect("finished") - p.start,
                "type": if plan.table == layout::Table::Gpt { p.gpt_type.to_string() } else { format!("0x{:02x}", p.mbr_type) },
                "name": p.name,
                "guid": (plan.table == layout::Table::Gpt).then(|| p.guid.to_string()),
                "bootable": p.bootable,
            })
        })
        .collect();

    let manifest = json!({
        "tool": "make-disk-image",
        "version": env!("CARGO_PKG_VERSION"),
        "image": {
            "file": file_name,
            "format": spec.format,
            "virtualSize": disk_bytes,
            "fileSize": file_bytes,
            "sha256": sha256,
            "sha256Note": (!hash_it).then_some("not computed: the file is above 16 GiB (a raw image is mostly holes; hashing would read every one)"),
        },
        "partitionTableType": spec.partition_table_type,
        "system": arch.nix_system(),
        "bootLoader": installed.as_ref().map(|i| i.loader.name()),
        "efiVars": spec.touch_efi_vars.then_some("efi-vars.fd"),
        "efiLoader": installed.as_ref().and_then(|i| i.efi_entry.as_ref()).map(|(path, _)| path),
        "partitions": partitions,
        "filesystems": filesystems,
        "sourceDateEpoch": sde,
        "spec": spec,
    });
    let efi_vars =
        if spec.touch_efi_vars { Some(boot::efi_vars(spec, &plan, installed.as_ref(), arch)?) } else { None };
    let staged = stage.path();
    let write_small = |name: &str, bytes: &[u8]| -> Result<()> {
        let p = staged.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&p, bytes)?;
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        Ok(())
    };
    let fmt_name = if spec.format == "qcow2-compressed" { "qcow2" } else { spec.format.as_str() };
    fault("manifest")?;
    write_small("manifest.json", (serde_json::to_string_pretty(&manifest)? + "\n").as_bytes())
        .with_context(|| format!("cannot write manifest.json in '{}'", out_dir.display()))?;
    let products = format!("file {fmt_name}-image {}\n", final_path.display());
    write_small("nix-support/hydra-build-products", products.as_bytes())?;
    if let Some(vars) = efi_vars {
        write_small("efi-vars.fd", &vars)?;
    }
    if ctx.cancel.as_ref().is_some_and(|c| c.load(std::sync::atomic::Ordering::SeqCst)) {
        bail!("interrupted");
    }
    let fail_rename = std::env::var("MDI_FAIL_AT").is_ok_and(|p| p == "rename").then_some(1);
    let commit = stage.commit(&[&file_name, "manifest.json", "nix-support", "efi-vars.fd"], fail_rename)?;
    // postVM runs on OUT itself, with the previous build's files still kept aside: if it
    // fails (or the build is interrupted), dropping `commit` puts the folder back.
    fault("postVM")?;
    if let Some(script) = &spec.post_vm {
        let root = plan.root();
        let vars = PostVmVars {
            out: &out_dir,
            disk_image: &final_path,
            efi_vars: spec.touch_efi_vars.then(|| out_dir.join("efi-vars.fd")),
            boot_size: layout::boot_end(boot_size),
            disk_size: disk_bytes,
            root_partition: (plan.table != layout::Table::None).then_some(root.number),
            root_start: root.start,
            root_bytes: root.end.expect("finished plan") - root.start,
        };
        run_post_vm(script, &vars, &scratch)
            .map_err(|e| anyhow!("{e:#}; the output folder '{}' was left as it was", out_dir.display()))?;
    }
    if ctx.cancel.as_ref().is_some_and(|c| c.load(std::sync::atomic::Ordering::SeqCst)) {
        bail!("interrupted");
    }
    commit.finish()?;
    Ok(Outcome { image: final_path, manifest })
}

/// EFBIG on Linux.
const fn libc_efbig() -> i32 {
    27
}

/// The hint for a file larger than the output folder's filesystem allows.
fn too_big(out_dir: &Path, io: &std::io::Error) -> anyhow::Error {
    anyhow!(
        "cannot write the image in '{}': {io}: the image is larger than the largest file the filesystem there holds (16 TiB on ext4 with 4 KiB blocks); choose a smaller diskSize, a format that stores only data (qcow2), or an output folder on xfs or btrfs",
        out_dir.display()
    )
}

/// [`too_big`] for EFBIG, else the usual hint, for the up-front probe of `bytes`.
fn too_big_or(io: std::io::Error, out_dir: &Path, bytes: u64) -> anyhow::Error {
    if io.raw_os_error() == Some(libc_efbig()) {
        return anyhow!(
            "diskSize {bytes} bytes: the raw image is larger than the largest file the filesystem of '{}' holds (16 TiB on ext4 with 4 KiB blocks); choose a smaller diskSize, a format that stores only data (qcow2), or an output folder on xfs or btrfs",
            out_dir.display()
        );
    }
    anyhow!("cannot make the image in '{}': {io}; choose another output folder with -o", out_dir.display())
}

/// The variables nixpkgs' postVM sees, as far as they mean something
/// without a VM and a staging folder.
struct PostVmVars<'a> {
    out: &'a Path,
    disk_image: &'a Path,
    efi_vars: Option<PathBuf>,
    boot_size: u64,
    disk_size: u64,
    root_partition: Option<u32>,
    root_start: u64,
    root_bytes: u64,
}

/// nixpkgs' helper functions that postVM scripts use (virtualbox's uses the sector ones).
const POST_VM_PRELUDE: &str = "mebibyte=$(( 1024 * 1024 ))
sectorsToKilobytes() { echo $(( ( \"$1\" * 512 ) / 1024 )); }
sectorsToBytes() { echo $(( \"$1\" * 512 )); }
round_to_nearest() { echo $(( ( $1 / $2 + 1 ) * $2 )); }
";

/// Runs postVM with bash as nixpkgs' builder does (errexit, pipefail), in a scratch folder
/// (nixpkgs' build folder), its output on stderr (stdout may carry --json).
fn run_post_vm(script: &str, v: &PostVmVars, reg: &Scratch) -> Result<()> {
    use std::os::fd::AsFd;
    let scratch = tempfile::tempdir().context("postVM: cannot make a scratch folder in TMPDIR")?;
    let stdout = std::io::stderr().as_fd().try_clone_to_owned().context("postVM: stderr")?;
    let mut cmd = std::process::Command::new("bash");
    cmd.arg("-e")
        .arg("-o")
        .arg("pipefail")
        .arg("-c")
        .arg(format!("{POST_VM_PRELUDE}{script}"))
        .env("out", v.out)
        .env("diskImage", v.disk_image)
        .env("bootSize", v.boot_size.to_string())
        .env("bootSizeMiB", format!("{}MiB", v.boot_size / layout::MIB))
        .env("diskSize", v.disk_size.to_string())
        .env("rootPartition", v.root_partition.map(|n| n.to_string()).unwrap_or_default())
        .env("START", (v.root_start / 512).to_string())
        .env("SECTORS", (v.root_bytes / 512).to_string())
        .env_remove("efiVars")
        .current_dir(scratch.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::from(stdout));
    if let Some(e) = &v.efi_vars {
        cmd.env("efiVars", e);
    }
    let mut child = cmd.spawn().context("postVM: cannot run bash; postVM scripts are bash, as in nixpkgs")?;
    // Registered so that an interrupt can stop it (see Scratch::abandon).
    if let Err(e) = reg.set_child(i32::try_from(child.id()).ok()) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    let status = child.wait();
    let _ = reg.set_child(None);
    let status = status.context("postVM: waiting for bash")?;
    if !status.success() {
        match status.code() {
            Some(c) => bail!("postVM failed with exit status {c}"),
            None => bail!("postVM failed: {status}"),
        }
    }
    Ok(())
}

/// SHA-256 of a (sparse) file. Holes are fed from a zero buffer instead of being read.
fn sha256_file(p: &Path) -> std::io::Result<String> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(p)?;
    let len = f.metadata()?.len();
    let mut h = Sha256::new();
    let zeros = vec![0u8; 1 << 20];
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    while pos < len {
        let data = match rustix::fs::seek(&f, rustix::fs::SeekFrom::Data(pos)) {
            Ok(d) => d.min(len),
            Err(rustix::io::Errno::NXIO) => len,
            Err(_) => pos,
        };
        while pos < data {
            let n = (data - pos).min(zeros.len() as u64) as usize;
            h.update(&zeros[..n]);
            pos += n as u64;
        }
        if pos >= len {
            break;
        }
        let hole = match rustix::fs::seek(&f, rustix::fs::SeekFrom::Hole(pos)) {
            Ok(e) => e.min(len),
            Err(_) => len,
        };
        while pos < hole {
            let n = (hole - pos).min(buf.len() as u64) as usize;
            f.read_exact_at(&mut buf[..n], pos)?;
            h.update(&buf[..n]);
            pos += n as u64;
        }
    }
    Ok(hex::encode(h.finalize()))
}
