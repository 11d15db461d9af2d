//! Partition layouts (docs/design.md §4.1): where each partition goes for a `partitionTableType`,
//! which filesystem it gets, and the tables that describe them. Offsets are fixed before
//! anything is written; only the root partition's end waits for the root filesystem's
//! size when diskSize is "auto".

use anyhow::{bail, Result};
use mdi_ident::{uuid_keyed_by, Seed, Uuid};
use mdi_ptable::{types, Gpt, GptPartition, Mbr, MbrPartition, GPT_SECTORS, SECTOR};

pub const MIB: u64 = 1 << 20;

/// The partition table kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    None,
    Mbr,
    Gpt,
}

/// What a partition holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// The root ext4 filesystem.
    Root,
    /// A FAT filesystem with this label, filled from this image path (`/boot`, `/efi`).
    Fat { label: &'static str, mount: &'static str },
    /// A BIOS boot partition (GRUB's core.img; empty until a boot loader is installed).
    BiosBoot,
}

/// One planned partition. `end` is None for the root until its size is known.
#[derive(Clone, Debug)]
pub struct Part {
    /// Partition number (entry index + 1).
    pub number: u32,
    pub role: Role,
    pub start: u64,
    pub end: Option<u64>,
    /// GPT type (string form) or MBR type byte.
    pub gpt_type: &'static str,
    pub mbr_type: u8,
    pub bootable: bool,
    pub name: &'static str,
    pub guid: Uuid,
}

/// A layout with every offset but the root partition's end.
#[derive(Clone, Debug)]
pub struct Plan {
    pub table: Table,
    pub parts: Vec<Part>,
    /// Bytes reserved after the root partition (the backup GPT's MiB).
    pub tail: u64,
}

/// bootSize in bytes rounded up to a whole MiB (no extra MiB, unlike nixpkgs).
pub fn boot_end(boot_size: u64) -> u64 {
    boot_size.next_multiple_of(MIB)
}

/// Smallest FAT partition we make: FAT16's minimum cluster count at 2-sector clusters is
/// about 4.1 MiB; round to a comfortable 8 MiB (the ESP before bootSize is 8 MiB on
/// nixpkgs' layouts anyway).
const MIN_FAT: u64 = 8 * MIB;

impl Plan {
    /// Plans `ptt` with the boot partition ending at `boot_end`.
    pub fn new(ptt: &str, boot_end: u64, seed: &Seed, root_guid: Uuid) -> Result<Plan> {
        let guid = |ty: &str, n: u64| seed.partition_uuid(Uuid::parse(ty).expect("constant"), n);
        let root = |number: u32, start: u64, name: &'static str| Part {
            number,
            role: Role::Root,
            start,
            end: None,
            gpt_type: types::LINUX_FS,
            mbr_type: 0x83,
            bootable: false,
            name,
            guid: root_guid,
        };
        let fat = |number: u32,
                   label: &'static str,
                   mount: &'static str,
                   start: u64,
                   end: u64,
                   gpt_type: &'static str,
                   name: &'static str| Part {
            number,
            role: Role::Fat { label, mount },
            start,
            end: Some(end),
            gpt_type,
            mbr_type: 0x0C,
            bootable: false,
            name,
            guid: guid(gpt_type, 0),
        };
        let bios = |number: u32| Part {
            number,
            role: Role::BiosBoot,
            start: MIB,
            end: Some(2 * MIB),
            gpt_type: types::BIOS_BOOT,
            mbr_type: 0,
            bootable: false,
            name: "no-fs",
            guid: guid(types::BIOS_BOOT, 0),
        };
        let need_boot = |from: u64, what: &str| -> Result<()> {
            if boot_end < from + MIN_FAT {
                bail!(
                    "bootSize is too small: the {what} spans {} MiB → bootSize ({} MiB), which leaves it {} MiB, and it needs at least {} MiB; set bootSize to at least {}M",
                    from / MIB,
                    boot_end / MIB,
                    boot_end.saturating_sub(from) / MIB,
                    MIN_FAT / MIB,
                    (from + MIN_FAT) / MIB
                );
            }
            Ok(())
        };
        Ok(match ptt {
            "none" => Plan { table: Table::None, parts: vec![root(0, 0, "")], tail: 0 },
            "legacy" => Plan { table: Table::Mbr, parts: vec![root(1, MIB, "")], tail: 0 },
            "legacy+boot" => {
                need_boot(MIB, "boot partition")?;
                let mut b = fat(1, "BOOT", "/boot", MIB, boot_end, types::ESP, "");
                b.bootable = true;
                b.guid = seed.uuid(b"legacy-boot-partition");
                Plan { table: Table::Mbr, parts: vec![b, root(2, boot_end, "")], tail: 0 }
            }
            "legacy+gpt" => Plan { table: Table::Gpt, parts: vec![bios(1), root(2, 2 * MIB, "primary")], tail: MIB },
            "efi" => {
                need_boot(8 * MIB, "ESP")?;
                Plan {
                    table: Table::Gpt,
                    parts: vec![
                        fat(1, "ESP", "/boot", 8 * MIB, boot_end, types::ESP, "ESP"),
                        root(2, boot_end, "primary"),
                    ],
                    tail: MIB,
                }
            }
            "efixbootldr" => {
                need_boot(100 * MIB, "XBOOTLDR partition (after the 8–100 MiB ESP)")?;
                Plan {
                    table: Table::Gpt,
                    parts: vec![
                        fat(1, "ESP", "/efi", 8 * MIB, 100 * MIB, types::ESP, "ESP"),
                        fat(2, "BOOT", "/boot", 100 * MIB, boot_end, types::XBOOTLDR, "BOOT"),
                        root(3, boot_end, "ROOT"),
                    ],
                    tail: MIB,
                }
            }
            "hybrid" => {
                need_boot(8 * MIB, "ESP")?;
                Plan {
                    table: Table::Gpt,
                    parts: vec![
                        fat(1, "ESP", "/boot", 8 * MIB, boot_end, types::ESP, "ESP"),
                        bios(2),
                        root(3, boot_end, "primary"),
                    ],
                    tail: MIB,
                }
            }
            other => bail!("unknown partitionTableType '{other}'"),
        })
    }

    /// Marks the partition holding `/boot` bootable (a FAT partition mounted there, else
    /// the root): the MBR boot indicator or the GPT legacy-BIOS-bootable attribute, which
    /// U-Boot's distro boot scans for.
    pub fn mark_bootable(&mut self) {
        let boot = self.parts.iter().position(|p| matches!(p.role, Role::Fat { mount: "/boot", .. }));
        let root = self.parts.iter().position(|p| p.role == Role::Root);
        if let Some(i) = boot.or(root) {
            self.parts[i].bootable = true;
        }
    }

    /// The root partition.
    pub fn root(&self) -> &Part {
        self.parts.iter().find(|p| p.role == Role::Root).expect("every layout has a root")
    }

    /// Root partition size for a fixed disk size, or an error with the minimum.
    pub fn root_size_for_disk(&self, disk: u64) -> Result<u64> {
        let start = self.root().start;
        let end = match self.table {
            // The root ends at the last MiB boundary before the backup GPT.
            Table::Gpt => (disk.saturating_sub(GPT_SECTORS * SECTOR)) / MIB * MIB,
            _ => disk,
        };
        if end <= start + MIB {
            bail!(
                "diskSize is too small: {} bytes leave no room for the root partition, which starts at {} MiB; set diskSize to more than {} MiB or to \"auto\"",
                disk,
                start / MIB,
                (start + self.tail) / MIB + 1
            );
        }
        Ok(end - start)
    }

    /// Disk size once the root filesystem's size is known.
    pub fn disk_size(&self, root_size: u64) -> u64 {
        self.root().start + root_size + self.tail
    }

    /// Fills in the root's end.
    pub fn finish(&mut self, root_size: u64) {
        for p in &mut self.parts {
            if p.role == Role::Root {
                p.end = Some(p.start + root_size);
            }
        }
    }

    /// The table sectors to write: (byte offset, bytes).
    pub fn encode(&self, disk: u64, seed: &Seed) -> Result<Vec<(u64, Vec<u8>)>> {
        let sectors = disk / SECTOR;
        let end = |p: &Part| p.end.expect("finished plan");
        Ok(match self.table {
            Table::None => Vec::new(),
            Table::Mbr => {
                let mut parts = Vec::new();
                for p in &self.parts {
                    let (s, n) = (p.start / SECTOR, (end(p) - p.start) / SECTOR);
                    if s + n > 0xFFFF_FFFF {
                        bail!(
                            "an MBR cannot describe a partition ending beyond 2 TiB (this disk is {} GiB); use a GPT layout (efi, hybrid, legacy+gpt) or a smaller diskSize",
                            disk >> 30
                        );
                    }
                    parts.push(MbrPartition { bootable: p.bootable, kind: p.mbr_type, start: s, sectors: n });
                }
                let sig = seed.hmac(b"mbr-disk-signature");
                let mbr = Mbr { signature: u32::from_le_bytes([sig[0], sig[1], sig[2], sig[3]]), partitions: parts };
                vec![(0, mbr.encode(&[]).to_vec())]
            }
            Table::Gpt => {
                let gpt = Gpt {
                    disk_guid: seed.uuid(b"disk-uuid"),
                    disk_sectors: sectors,
                    partitions: self
                        .parts
                        .iter()
                        .map(|p| GptPartition {
                            type_guid: Uuid::parse(p.gpt_type).expect("constant"),
                            guid: p.guid,
                            first: p.start / SECTOR,
                            last: end(p) / SECTOR - 1,
                            // Bit 2, legacy BIOS bootable: what U-Boot's distro boot and
                            // syslinux look for (UEFI 2.10 §5.3.3, Table 5.7).
                            attributes: if p.bootable { 1 << 2 } else { 0 },
                            name: p.name.to_string(),
                        })
                        .collect(),
                };
                let [a, b] = gpt.encode();
                vec![(0, Mbr::protective(sectors).encode(&[]).to_vec()), a, b]
            }
        })
    }
}

/// A FAT volume ID as systemd-repart derives it: the first 32 bits (big-endian) of the
/// filesystem UUID, itself HMAC(partition UUID, "file-system-uuid").
pub fn fat_volume_id(part_guid: Uuid) -> u32 {
    let u = uuid_keyed_by(part_guid, b"file-system-uuid");
    u32::from_be_bytes([u.0[0], u.0[1], u.0[2], u.0[3]])
}
