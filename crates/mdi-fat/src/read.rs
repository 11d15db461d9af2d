//! Reading FAT12/16/32 volumes back, for `make-disk-image inspect` and `diff` (Microsoft
//! "FAT32 File System Specification" 1.03 for every offset: §3 the BPB, §4 the FAT, §6
//! directory entries, §7 long names).
//!
//! The FAT type follows from the cluster count as the specification says (not from the
//! BS_FilSysType text). Nothing read is trusted: cluster chains are followed at most as far
//! as the volume has clusters (a loop is an error, not a hang), a file's chain is only
//! followed as far as its size needs, a directory holds at most 65536 entries (§6), and
//! every region must lie inside the device.

use mdi_sink::ReadAt;
use std::io;

/// Why something could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading the device failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The volume is damaged.
    #[error("corrupt FAT: {0}")]
    Corrupt(String),
}

fn corrupt(m: impl Into<String>) -> Error {
    Error::Corrupt(m.into())
}

fn le16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

/// Receives a file's content as (file offset, bytes) pieces.
pub type Visit<'v> = dyn FnMut(u64, &[u8]) -> Result<(), Error> + 'v;

/// Most entries in one directory (§6: 65536 32-byte entries).
const MAX_DIR_ENTRIES: u64 = 65536;
/// Largest FAT loaded into memory.
const MAX_FAT_BYTES: u64 = 512 << 20;

/// The FAT width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// 12-bit entries.
    Fat12,
    /// 16-bit entries.
    Fat16,
    /// 32-bit entries (28 used).
    Fat32,
}

impl Kind {
    /// "FAT12", "FAT16" or "FAT32" (blkid's VERSION).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Fat12 => "FAT12",
            Kind::Fat16 => "FAT16",
            Kind::Fat32 => "FAT32",
        }
    }
}

/// The parsed boot sector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootSector {
    /// BPB_BytsPerSec.
    pub bytes_per_sector: u64,
    /// BPB_SecPerClus.
    pub sectors_per_cluster: u64,
    /// BPB_RsvdSecCnt.
    pub reserved_sectors: u64,
    /// BPB_NumFATs.
    pub fats: u64,
    /// BPB_RootEntCnt.
    pub root_entries: u64,
    /// BPB_TotSec16 or BPB_TotSec32.
    pub total_sectors: u64,
    /// BPB_FATSz16 or BPB_FATSz32.
    pub fat_sectors: u64,
    /// BPB_RootClus (FAT32).
    pub root_cluster: u32,
    /// BPB_FSInfo (FAT32).
    pub fsinfo_sector: u16,
    /// BS_VolID, when BS_BootSig is 0x29.
    pub volume_id: Option<u32>,
    /// BS_VolLab, trimmed, when BS_BootSig is 0x29.
    pub label: Option<String>,
    /// The sector itself.
    pub raw: Vec<u8>,
}

/// One directory entry (a short entry with its long name, if any).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The long name, else the short name as displayed.
    pub name: String,
    /// The 8.3 name as displayed ("LOADER~1.CON").
    pub short_name: String,
    /// DIR_Attr.
    pub attr: u8,
    /// First cluster (0 for an empty file).
    pub cluster: u32,
    /// DIR_FileSize.
    pub size: u32,
    /// DIR_WrtDate / DIR_WrtTime as a Unix time (the fields hold local time; read as UTC).
    pub mtime: i64,
    /// DIR_CrtDate / DIR_CrtTime (+ tenths) as a Unix time.
    pub ctime: i64,
    /// DIR_LstAccDate as a Unix time.
    pub atime: i64,
}

/// Attribute bits.
pub const ATTR_READ_ONLY: u8 = 0x01;
/// Hidden.
pub const ATTR_HIDDEN: u8 = 0x02;
/// System.
pub const ATTR_SYSTEM: u8 = 0x04;
/// The volume label entry.
pub const ATTR_VOLUME_ID: u8 = 0x08;
/// Directory.
pub const ATTR_DIRECTORY: u8 = 0x10;
/// Archive.
pub const ATTR_ARCHIVE: u8 = 0x20;

impl Entry {
    /// Whether the entry is a directory.
    pub fn is_dir(&self) -> bool {
        self.attr & ATTR_DIRECTORY != 0
    }
}

/// A directory to list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dir {
    /// The root directory (FAT12/16's fixed region, FAT32's cluster chain).
    Root,
    /// A subdirectory by its first cluster.
    Cluster(u32),
}

/// An opened volume.
pub struct Volume<'a> {
    dev: &'a dyn ReadAt,
    /// The boot sector.
    pub boot: BootSector,
    /// FAT12, FAT16 or FAT32.
    pub kind: Kind,
    /// Data clusters (numbered from 2).
    pub clusters: u32,
    fat: Vec<u8>,
    data_start: u64,
    root_start: u64,
    /// What is unusual but readable (as fsck.fat warns about it).
    pub warnings: Vec<String>,
}

impl<'a> Volume<'a> {
    /// Opens the volume on `dev` (byte 0 = the boot sector).
    pub fn open(dev: &'a dyn ReadAt) -> Result<Volume<'a>, Error> {
        let mut b = [0u8; 512];
        dev.read_at(0, &mut b).map_err(|e| corrupt(format!("cannot read the boot sector: {e}")))?;
        let boot = parse_boot(&b)?;
        let bps = boot.bytes_per_sector;
        let root_sectors = (boot.root_entries * 32).div_ceil(bps);
        let meta = boot.reserved_sectors + boot.fats * boot.fat_sectors + root_sectors;
        if meta >= boot.total_sectors {
            return Err(corrupt(format!(
                "the reserved sectors, FATs and root directory ({meta} sectors) fill the whole volume ({} sectors)",
                boot.total_sectors
            )));
        }
        let count = (boot.total_sectors - meta) / boot.sectors_per_cluster;
        // §3.5 decides the type by the cluster count alone. Linux (fs/fat/inode.c) and
        // fsck.fat go by the BPB instead: BPB_FATSz16 = 0 means the FAT32 layout whatever
        // the count (mkfs.vfat -F 32 makes such volumes when asked to); fsck.fat accepts
        // them with a warning, and so does this reader.
        let by_count = match count {
            c if c < 4085 => Kind::Fat12,
            c if c < 65525 => Kind::Fat16,
            _ => Kind::Fat32,
        };
        let mut warnings = Vec::new();
        let kind = if boot.fat32_layout() && by_count != Kind::Fat32 {
            warnings.push(format!(
                "FAT32 by its BPB (BPB_FATSz16 is 0) but only {count} clusters, fewer than the 65525 \
                 the FAT specification (§3.5) requires; read as FAT32, as Linux and fsck.fat do, \
                 but some systems may take it for {}",
                by_count.name()
            ));
            Kind::Fat32
        } else {
            by_count
        };
        if kind == Kind::Fat32 && (boot.root_entries != 0 || boot.root_cluster < 2) {
            return Err(corrupt("a FAT32-sized volume with a fixed root directory or no BPB_RootClus"));
        }
        if kind != Kind::Fat32 && boot.root_entries == 0 {
            return Err(corrupt(format!("a {}-sized volume without root directory entries", kind.name())));
        }
        let clusters = u32::try_from(count.min(0x0FFF_FFF5)).unwrap_or(0x0FFF_FFF5);
        let entry_bits: u64 = match kind {
            Kind::Fat12 => 12,
            Kind::Fat16 => 16,
            Kind::Fat32 => 32,
        };
        let fat_bytes = ((u64::from(clusters) + 2) * entry_bits).div_ceil(8);
        if fat_bytes > boot.fat_sectors * bps {
            return Err(corrupt(format!(
                "the FAT ({} sectors) is too small for {clusters} clusters",
                boot.fat_sectors
            )));
        }
        if fat_bytes > MAX_FAT_BYTES || boot.total_sectors * bps > dev.size().saturating_add(bps) {
            // A volume claiming more than the device: refuse before allocating.
            if boot.total_sectors * bps > dev.size().saturating_add(bps) {
                return Err(corrupt(format!(
                    "the volume claims {} bytes but the partition has {}",
                    boot.total_sectors * bps,
                    dev.size()
                )));
            }
            return Err(corrupt(format!("a FAT of {fat_bytes} bytes is too large to read")));
        }
        let mut fat = vec![0u8; fat_bytes as usize];
        dev.read_at(boot.reserved_sectors * bps, &mut fat)?;
        let root_start = (boot.reserved_sectors + boot.fats * boot.fat_sectors) * bps;
        Ok(Volume { dev, data_start: meta * bps, root_start, boot, kind, clusters, fat, warnings })
    }

    /// Cluster size in bytes.
    pub fn cluster_bytes(&self) -> u64 {
        self.boot.sectors_per_cluster * self.boot.bytes_per_sector
    }

    /// Byte offset of cluster `c` (2 ≤ c < clusters + 2).
    pub fn cluster_offset(&self, c: u32) -> u64 {
        self.data_start + u64::from(c - 2) * self.cluster_bytes()
    }

    /// The FAT entry of cluster `c`.
    pub fn entry(&self, c: u32) -> u32 {
        let c = c as usize;
        match self.kind {
            Kind::Fat12 => {
                let at = c + c / 2;
                let v = le16(&self.fat, at);
                u32::from(if c % 2 == 1 { v >> 4 } else { v & 0xFFF })
            }
            Kind::Fat16 => u32::from(le16(&self.fat, 2 * c)),
            Kind::Fat32 => le32(&self.fat, 4 * c) & 0x0FFF_FFFF,
        }
    }

    fn is_end(&self, v: u32) -> bool {
        v >= match self.kind {
            Kind::Fat12 => 0xFF8,
            Kind::Fat16 => 0xFFF8,
            Kind::Fat32 => 0x0FFF_FFF8,
        }
    }

    fn valid(&self, c: u32) -> bool {
        (2..self.clusters.saturating_add(2)).contains(&c)
    }

    /// Free clusters counted in the FAT.
    pub fn free_clusters(&self) -> u32 {
        (2..self.clusters + 2).filter(|&c| self.entry(c) == 0).count() as u32
    }

    /// FAT32's FSInfo free-cluster count, when the FSInfo sector is valid.
    pub fn fsinfo_free(&self) -> Result<Option<u32>, Error> {
        if self.kind != Kind::Fat32 || self.boot.fsinfo_sector == 0 {
            return Ok(None);
        }
        let mut s = [0u8; 512];
        self.dev.read_at(u64::from(self.boot.fsinfo_sector) * self.boot.bytes_per_sector, &mut s)?;
        Ok((le32(&s, 0) == 0x4161_5252 && le32(&s, 484) == 0x6141_7272).then(|| le32(&s, 488)))
    }

    /// The clusters of the chain starting at `first`, at most `max` of them; a chain
    /// that leaves the volume, loops or ends in a bad or free entry is an error.
    pub fn chain(&self, first: u32, max: u64) -> Result<Vec<u32>, Error> {
        let mut out = Vec::new();
        let mut c = first;
        while (out.len() as u64) < max {
            if !self.valid(c) {
                return Err(corrupt(format!(
                    "cluster chain from {first} reaches cluster {c}, outside 2..{}",
                    self.clusters + 2
                )));
            }
            if out.len() as u64 > u64::from(self.clusters) {
                return Err(corrupt(format!("cluster chain from {first} loops")));
            }
            out.push(c);
            let next = self.entry(c);
            if self.is_end(next) {
                return Ok(out);
            }
            if next == 0 {
                return Err(corrupt(format!("cluster chain from {first} runs into free cluster {c}")));
            }
            c = next;
        }
        Ok(out)
    }

    /// The entries of a directory (without "." and ".." and the volume label).
    pub fn read_dir(&self, dir: Dir) -> Result<Vec<Entry>, Error> {
        let raw = self.dir_bytes(dir)?;
        Ok(parse_dir(&raw).0)
    }

    /// The root directory's volume label entry, if any.
    pub fn root_label(&self) -> Result<Option<String>, Error> {
        Ok(parse_dir(&self.dir_bytes(Dir::Root)?).1)
    }

    /// The clusters of a directory (none for FAT12/16's fixed root directory).
    pub fn dir_clusters(&self, dir: Dir) -> Result<Vec<u32>, Error> {
        let (first, what) = match dir {
            Dir::Root if self.kind != Kind::Fat32 => return Ok(Vec::new()),
            Dir::Root => (self.boot.root_cluster, "the root directory".to_string()),
            Dir::Cluster(c) => (c, format!("the directory at cluster {c}")),
        };
        let max = (MAX_DIR_ENTRIES * 32).div_ceil(self.cluster_bytes());
        let chain = self.chain(first, max + 1).map_err(|e| corrupt(format!("{what}: {e}")))?;
        if chain.len() as u64 > max {
            return Err(corrupt(format!("{what} has more than {MAX_DIR_ENTRIES} entries")));
        }
        Ok(chain)
    }

    fn dir_bytes(&self, dir: Dir) -> Result<Vec<u8>, Error> {
        if dir == Dir::Root && self.kind != Kind::Fat32 {
            let mut raw = vec![0u8; (self.boot.root_entries * 32) as usize];
            self.dev.read_at(self.root_start, &mut raw)?;
            return Ok(raw);
        }
        let cb = self.cluster_bytes();
        let chain = self.dir_clusters(dir)?;
        let mut raw = vec![0u8; chain.len() * cb as usize];
        for (k, &c) in chain.iter().enumerate() {
            self.dev.read_at(self.cluster_offset(c), &mut raw[k * cb as usize..(k + 1) * cb as usize])?;
        }
        Ok(raw)
    }

    /// The clusters of a file's data (as many as its size needs).
    pub fn file_clusters(&self, e: &Entry) -> Result<Vec<u32>, Error> {
        let need = u64::from(e.size).div_ceil(self.cluster_bytes());
        if need == 0 {
            return Ok(Vec::new());
        }
        let chain = self.chain(e.cluster, need).map_err(|x| corrupt(format!("'{}': {x}", e.name)))?;
        if (chain.len() as u64) < need {
            return Err(corrupt(format!(
                "'{}' has {} bytes but its cluster chain ends after {} clusters",
                e.name,
                e.size,
                chain.len()
            )));
        }
        Ok(chain)
    }

    /// Streams a file's content as (offset, bytes) pieces, one cluster at a time.
    pub fn read_data(&self, e: &Entry, visit: &mut Visit<'_>) -> Result<(), Error> {
        let cb = self.cluster_bytes();
        let mut buf = vec![0u8; cb as usize];
        let size = u64::from(e.size);
        for (k, c) in self.file_clusters(e)?.into_iter().enumerate() {
            let at = k as u64 * cb;
            let n = (size - at).min(cb) as usize;
            self.dev.read_at(self.cluster_offset(c), &mut buf[..n])?;
            visit(at, &buf[..n])?;
        }
        Ok(())
    }

    /// Reads a whole file into memory.
    pub fn read_file(&self, e: &Entry) -> Result<Vec<u8>, Error> {
        let mut out = vec![0u8; e.size as usize];
        self.read_data(e, &mut |at, d| {
            out[at as usize..at as usize + d.len()].copy_from_slice(d);
            Ok(())
        })?;
        Ok(out)
    }

    /// Looks up a path ("/" is the root) the way FAT does: names compared without case.
    pub fn lookup(&self, path: &str) -> Result<Option<Entry>, Error> {
        let mut dir = Dir::Root;
        let mut found: Option<Entry> = None;
        for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
            if found.as_ref().is_some_and(|e| !e.is_dir()) {
                return Ok(None);
            }
            let Some(e) = self.read_dir(dir)?.into_iter().find(|e| {
                e.name.eq_ignore_ascii_case(part)
                    || e.name.to_lowercase() == part.to_lowercase()
                    || e.short_name.eq_ignore_ascii_case(part)
            }) else {
                return Ok(None);
            };
            dir = Dir::Cluster(e.cluster);
            found = Some(e);
        }
        Ok(found)
    }

    /// (first byte, bytes, what) of the regions outside the data area: the reserved
    /// sectors (boot sector, FSInfo, backup), the FATs and the fixed root directory.
    pub fn metadata_regions(&self) -> Vec<(u64, u64, String)> {
        let bps = self.boot.bytes_per_sector;
        let mut v = vec![(0, self.boot.reserved_sectors * bps, "reserved sectors (boot sector)".to_string())];
        for i in 0..self.boot.fats {
            v.push((
                (self.boot.reserved_sectors + i * self.boot.fat_sectors) * bps,
                self.boot.fat_sectors * bps,
                format!("FAT #{}", i + 1),
            ));
        }
        if self.kind != Kind::Fat32 {
            v.push((self.root_start, self.data_start - self.root_start, "root directory".into()));
        }
        v
    }
}

/// Decodes and checks the boot sector.
fn parse_boot(b: &[u8; 512]) -> Result<BootSector, Error> {
    let bps = u64::from(le16(b, 11));
    if !(512..=4096).contains(&bps) || !bps.is_power_of_two() {
        return Err(corrupt(format!("BPB_BytsPerSec {bps} is not 512, 1024, 2048 or 4096")));
    }
    let spc = u64::from(b[13]);
    if spc == 0 || !spc.is_power_of_two() {
        return Err(corrupt(format!("BPB_SecPerClus {spc} is not a power of two")));
    }
    let reserved = u64::from(le16(b, 14));
    let fats = u64::from(b[16]);
    if reserved == 0 || fats == 0 {
        return Err(corrupt(format!("BPB_RsvdSecCnt {reserved} or BPB_NumFATs {fats} is 0")));
    }
    let (tot16, tot32) = (u64::from(le16(b, 19)), u64::from(le32(b, 32)));
    let total = if tot16 != 0 { tot16 } else { tot32 };
    let (fsz16, fsz32) = (u64::from(le16(b, 22)), u64::from(le32(b, 36)));
    let fat32_layout = fsz16 == 0;
    let fat_sectors = if fat32_layout { fsz32 } else { fsz16 };
    if fat_sectors == 0 {
        return Err(corrupt("the FAT size is 0"));
    }
    let ext = if fat32_layout { 64 } else { 36 };
    let sig = b[ext + 2] == 0x29;
    let text = |r: std::ops::Range<usize>| String::from_utf8_lossy(&b[r]).trim_end().to_string();
    Ok(BootSector {
        bytes_per_sector: bps,
        sectors_per_cluster: spc,
        reserved_sectors: reserved,
        fats,
        root_entries: u64::from(le16(b, 17)),
        total_sectors: total,
        fat_sectors,
        root_cluster: if fat32_layout { le32(b, 44) } else { 0 },
        fsinfo_sector: if fat32_layout { le16(b, 48) } else { 0 },
        volume_id: sig.then(|| le32(b, ext + 3)),
        label: sig.then(|| text(ext + 7..ext + 18)),
        raw: b.to_vec(),
    })
}

impl BootSector {
    /// Whether the BPB has the FAT32 layout: BPB_FATSz16 is 0 (§3.1: "On FAT32 volumes
    /// this field must be 0, and BPB_FATSz32 contains the FAT size count").
    pub fn fat32_layout(&self) -> bool {
        le16(&self.raw, 22) == 0
    }

    /// Every field by its specification name, for `diff`.
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        let b = &self.raw[..];
        let (bps, spc, reserved, fats) =
            (self.bytes_per_sector, self.sectors_per_cluster, self.reserved_sectors, self.fats);
        let (tot16, tot32) = (u64::from(le16(b, 19)), u64::from(le32(b, 32)));
        let (fsz16, fsz32) = (u64::from(le16(b, 22)), u64::from(le32(b, 36)));
        let fat32_layout = fsz16 == 0;
        let ext = if fat32_layout { 64 } else { 36 };
        let text = |r: std::ops::Range<usize>| String::from_utf8_lossy(&b[r]).trim_end().to_string();
        let mut fields = vec![
            ("BS_jmpBoot", format!("{:02x}{:02x}{:02x}", b[0], b[1], b[2])),
            ("BS_OEMName", text(3..11)),
            ("BPB_BytsPerSec", bps.to_string()),
            ("BPB_SecPerClus", spc.to_string()),
            ("BPB_RsvdSecCnt", reserved.to_string()),
            ("BPB_NumFATs", fats.to_string()),
            ("BPB_RootEntCnt", le16(b, 17).to_string()),
            ("BPB_TotSec16", tot16.to_string()),
            ("BPB_Media", format!("{:#x}", b[21])),
            ("BPB_FATSz16", fsz16.to_string()),
            ("BPB_SecPerTrk", le16(b, 24).to_string()),
            ("BPB_NumHeads", le16(b, 26).to_string()),
            ("BPB_HiddSec", le32(b, 28).to_string()),
            ("BPB_TotSec32", tot32.to_string()),
        ];
        if fat32_layout {
            fields.extend([
                ("BPB_FATSz32", fsz32.to_string()),
                ("BPB_ExtFlags", format!("{:#x}", le16(b, 40))),
                ("BPB_FSVer", format!("{:#x}", le16(b, 42))),
                ("BPB_RootClus", le32(b, 44).to_string()),
                ("BPB_FSInfo", le16(b, 48).to_string()),
                ("BPB_BkBootSec", le16(b, 50).to_string()),
            ]);
        }
        fields.extend([
            ("BS_DrvNum", format!("{:#x}", b[ext])),
            ("BS_BootSig", format!("{:#x}", b[ext + 2])),
            ("BS_VolID", format!("{:08x}", le32(b, ext + 3))),
            ("BS_VolLab", text(ext + 7..ext + 18)),
            ("BS_FilSysType", text(ext + 18..ext + 26)),
        ]);
        let code = &b[ext + 26..510];
        let used = code.iter().rposition(|&c| c != 0).map_or(0, |i| i + 1);
        fields.push(("boot code", hex(&code[..used])));
        fields.push(("signature", format!("{:02x}{:02x}", b[510], b[511])));
        fields
    }
}

fn hex(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(2 * b.len());
    for &x in b {
        s.push(DIGITS[usize::from(x >> 4)] as char);
        s.push(DIGITS[usize::from(x & 15)] as char);
    }
    s
}

/// Whether the sector looks like a FAT boot sector (for detection).
pub fn probe(b: &[u8]) -> bool {
    b.len() >= 512
        && (b[0] == 0xEB || b[0] == 0xE9)
        && le16(b, 510) == 0xAA55
        && b.try_into().ok().is_some_and(|s: &[u8; 512]| parse_boot(s).is_ok())
}

/// The checksum of a short name stored in its long-name entries (§7.2).
fn lfn_checksum(short: &[u8]) -> u8 {
    short.iter().fold(0u8, |sum, &c| (sum >> 1).wrapping_add((sum & 1) << 7).wrapping_add(c))
}

/// Code page 850 (IBM "Multilingual Latin 1"), bytes 0x80-0xFF. A short name holds bytes
/// of the DOS code page of whoever wrote it, which the volume does not record; mtools
/// writes CP850 by default and Windows in Western Europe uses it too, and its letters
/// cover the usual accented names (Linux mounts with CP437 unless told otherwise: the two
/// agree on 0x80-0xAF's common letters such as Ü, é, ñ).
const CP850_HIGH: [char; 128] = [
    '\u{00C7}', '\u{00FC}', '\u{00E9}', '\u{00E2}', '\u{00E4}', '\u{00E0}', '\u{00E5}', '\u{00E7}', '\u{00EA}',
    '\u{00EB}', '\u{00E8}', '\u{00EF}', '\u{00EE}', '\u{00EC}', '\u{00C4}', '\u{00C5}', '\u{00C9}', '\u{00E6}',
    '\u{00C6}', '\u{00F4}', '\u{00F6}', '\u{00F2}', '\u{00FB}', '\u{00F9}', '\u{00FF}', '\u{00D6}', '\u{00DC}',
    '\u{00F8}', '\u{00A3}', '\u{00D8}', '\u{00D7}', '\u{0192}', '\u{00E1}', '\u{00ED}', '\u{00F3}', '\u{00FA}',
    '\u{00F1}', '\u{00D1}', '\u{00AA}', '\u{00BA}', '\u{00BF}', '\u{00AE}', '\u{00AC}', '\u{00BD}', '\u{00BC}',
    '\u{00A1}', '\u{00AB}', '\u{00BB}', '\u{2591}', '\u{2592}', '\u{2593}', '\u{2502}', '\u{2524}', '\u{00C1}',
    '\u{00C2}', '\u{00C0}', '\u{00A9}', '\u{2563}', '\u{2551}', '\u{2557}', '\u{255D}', '\u{00A2}', '\u{00A5}',
    '\u{2510}', '\u{2514}', '\u{2534}', '\u{252C}', '\u{251C}', '\u{2500}', '\u{253C}', '\u{00E3}', '\u{00C3}',
    '\u{255A}', '\u{2554}', '\u{2569}', '\u{2566}', '\u{2560}', '\u{2550}', '\u{256C}', '\u{00A4}', '\u{00F0}',
    '\u{00D0}', '\u{00CA}', '\u{00CB}', '\u{00C8}', '\u{0131}', '\u{00CD}', '\u{00CE}', '\u{00CF}', '\u{2518}',
    '\u{250C}', '\u{2588}', '\u{2584}', '\u{00A6}', '\u{00CC}', '\u{2580}', '\u{00D3}', '\u{00DF}', '\u{00D4}',
    '\u{00D2}', '\u{00F5}', '\u{00D5}', '\u{00B5}', '\u{00FE}', '\u{00DE}', '\u{00DA}', '\u{00DB}', '\u{00D9}',
    '\u{00FD}', '\u{00DD}', '\u{00AF}', '\u{00B4}', '\u{00AD}', '\u{00B1}', '\u{2017}', '\u{00BE}', '\u{00B6}',
    '\u{00A7}', '\u{00F7}', '\u{00B8}', '\u{00B0}', '\u{00A8}', '\u{00B7}', '\u{00B9}', '\u{00B3}', '\u{00B2}',
    '\u{25A0}', '\u{00A0}',
];

/// One short-name byte as text: ASCII as itself, 0x80-0xFF by [`CP850_HIGH`], and the
/// control bytes no valid name holds as a visible "\xNN" escape (never a raw control
/// character on a terminal).
fn short_char(c: u8, out: &mut String) {
    match c {
        0x20..=0x7E => out.push(c as char),
        0x80..=0xFF => out.push(CP850_HIGH[usize::from(c - 0x80)]),
        _ => out.push_str(&format!("\\x{c:02x}")),
    }
}

/// An 8.3 name for display: "NAME.EXT", with the Windows NT lower-case flags applied.
fn short_display(e: &[u8]) -> String {
    let mut name = e[..11].to_vec();
    // §6.1: 0x05 in the first byte stands for 0xE5 (which marks a free entry).
    if name[0] == 0x05 {
        name[0] = 0xE5;
    }
    let nt = e[12];
    let conv = |s: &[u8], lower: bool| -> String {
        let mut t = String::new();
        for &c in s {
            short_char(c, &mut t);
        }
        let t = t.trim_end().to_string();
        if lower {
            t.to_ascii_lowercase()
        } else {
            t
        }
    };
    let base = conv(&name[..8], nt & 0x08 != 0);
    let ext = conv(&name[8..11], nt & 0x10 != 0);
    if ext.is_empty() {
        base
    } else {
        format!("{base}.{ext}")
    }
}

/// DOS date and time → Unix seconds (the fields hold local time; we read them as UTC,
/// which is how this tool writes them). Invalid fields give the FAT epoch's day numbers
/// clamped into range.
pub fn dos_time(date: u16, time: u16) -> i64 {
    let y = i64::from(date >> 9) + 1980;
    let m = i64::from((date >> 5) & 15).clamp(1, 12);
    let d = i64::from(date & 31).max(1);
    // Days from civil (proleptic Gregorian).
    let (y2, m2) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * m2 + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = i64::from(time >> 11) * 3600 + i64::from((time >> 5) & 63) * 60 + i64::from(time & 31) * 2;
    days * 86_400 + secs
}

/// Parses directory bytes into entries, and the volume label entry if there is one.
fn parse_dir(raw: &[u8]) -> (Vec<Entry>, Option<String>) {
    let mut out = Vec::new();
    let mut label = None;
    // Long-name parts being collected: (expected next ordinal, checksum, UTF-16 units by part).
    let mut lfn: Option<(u8, u8, Vec<[u16; 13]>)> = None;
    for e in raw.chunks_exact(32) {
        match e[0] {
            0x00 => break,
            0xE5 => {
                lfn = None;
                continue;
            }
            _ => {}
        }
        let attr = e[11];
        if attr & 0x3F == 0x0F {
            let ord = e[0];
            let mut units = [0u16; 13];
            for (k, u) in units.iter_mut().enumerate() {
                let at = match k {
                    0..=4 => 1 + 2 * k,
                    5..=10 => 14 + 2 * (k - 5),
                    _ => 28 + 2 * (k - 11),
                };
                *u = le16(e, at);
            }
            let n = ord & 0x1F;
            if ord & 0x40 != 0 && (1..=20).contains(&n) {
                let mut parts = vec![[0u16; 13]; n as usize];
                parts[n as usize - 1] = units;
                lfn = Some((n - 1, e[13], parts));
            } else if let Some((want, sum, parts)) = &mut lfn {
                if ord == *want && ord >= 1 && e[13] == *sum {
                    parts[ord as usize - 1] = units;
                    *want -= 1;
                } else {
                    lfn = None;
                }
            }
            continue;
        }
        let long = lfn.take().and_then(|(want, sum, parts)| {
            (want == 0 && sum == lfn_checksum(&e[..11])).then(|| {
                let u: Vec<u16> = parts.iter().flatten().copied().take_while(|&u| u != 0).collect();
                String::from_utf16_lossy(&u)
            })
        });
        if attr & ATTR_VOLUME_ID != 0 {
            if label.is_none() && attr & ATTR_DIRECTORY == 0 {
                label = Some(String::from_utf8_lossy(&e[..11]).trim_end().to_string());
            }
            continue;
        }
        let short = short_display(e);
        if short == "." || short == ".." {
            continue;
        }
        let cluster = (u32::from(le16(e, 20)) << 16) | u32::from(le16(e, 26));
        let crt = dos_time(le16(e, 16), le16(e, 14)) + i64::from(e[13] / 100);
        out.push(Entry {
            name: long.unwrap_or_else(|| short.clone()),
            short_name: short,
            attr,
            cluster,
            size: le32(e, 28),
            mtime: dos_time(le16(e, 24), le16(e, 22)),
            ctime: crt,
            atime: dos_time(le16(e, 18), 0),
        });
    }
    (out, label)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{write, Options};
    use mdi_sink::MemSink;
    use mdi_tree::{FileData, Kind as K, Meta, Timestamp, Tree, ROOT};
    use std::sync::Arc;

    fn volume(mib: u64) -> (Vec<u8>, Vec<u8>) {
        let t0 = Timestamp { secs: 1_700_000_000, nsecs: 0 };
        let mut t = Tree::new(Meta::root(0o755, t0));
        let big: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        let file = |d: &[u8]| K::File { data: FileData::Inline(Arc::from(d)), size: d.len() as u64 };
        let efi = t.add(ROOT, b"EFI", Meta::root(0o755, t0), K::Dir { children: vec![] }, None).unwrap();
        let boot = t.add(efi, b"BOOT", Meta::root(0o755, t0), K::Dir { children: vec![] }, None).unwrap();
        t.add(boot, b"BOOTX64.EFI", Meta::root(0o644, t0), file(&big), None).unwrap();
        t.add(ROOT, b"loader.conf", Meta::root(0o644, t0), file(b"timeout 3\n"), None).unwrap();
        t.add(ROOT, b"a rather long file name.conf", Meta::root(0o644, t0), file(b""), None).unwrap();
        t.finish();
        let opts = Options { volume_id: 0x1234_ABCD, label: "ESP".into(), time: 1_700_000_000, hidden_sectors: 2048 };
        let mut sink = MemSink::default();
        write(&t, ROOT, mib << 20, &opts, &mut sink).unwrap();
        sink.0.resize((mib << 20) as usize, 0);
        (sink.0, big)
    }

    #[test]
    fn reads_back_fat16_and_fat32() {
        for (mib, kind) in [(16, Kind::Fat16), (100, Kind::Fat32)] {
            let (img, big) = volume(mib);
            let v = Volume::open(&img).unwrap();
            assert_eq!(v.kind, kind);
            assert_eq!(v.boot.volume_id, Some(0x1234_ABCD));
            assert_eq!(v.boot.label.as_deref(), Some("ESP"));
            assert_eq!(v.root_label().unwrap().as_deref(), Some("ESP"));
            let mut names: Vec<String> = v.read_dir(Dir::Root).unwrap().into_iter().map(|e| e.name).collect();
            names.sort();
            assert_eq!(names, ["EFI", "a rather long file name.conf", "loader.conf"]);
            let e = v.lookup("/efi/boot/bootx64.efi").unwrap().unwrap();
            assert_eq!(e.mtime, 1_700_000_000);
            assert_eq!(v.read_file(&e).unwrap(), big);
            assert_eq!(v.read_file(&v.lookup("/loader.conf").unwrap().unwrap()).unwrap(), b"timeout 3\n");
            assert!(v.free_clusters() > 0 && v.free_clusters() < v.clusters);
            if kind == Kind::Fat32 {
                assert_eq!(v.fsinfo_free().unwrap(), Some(v.free_clusters()));
            }
            assert!(probe(&img[..512]));
        }
    }

    #[test]
    fn loops_and_damage_are_errors() {
        let (mut img, _) = volume(16);
        let v = Volume::open(&img).unwrap();
        let e = v.lookup("/EFI/BOOT/BOOTX64.EFI").unwrap().unwrap();
        // Point the file's second cluster back at its first.
        let fat = (v.boot.reserved_sectors * v.boot.bytes_per_sector) as usize;
        let second = v.entry(e.cluster) as usize;
        img[fat + 2 * second..fat + 2 * second + 2].copy_from_slice(&(e.cluster as u16).to_le_bytes());
        let v = Volume::open(&img).unwrap();
        // The chain is only followed as far as the size needs: a loop shows as a chain
        // through the same clusters, never a hang.
        assert!(v.chain(e.cluster, u64::MAX).is_err());
        img[11] = 3;
        assert!(Volume::open(&img).is_err());
    }

    #[test]
    fn dos_times() {
        assert_eq!(dos_time((1 << 5) | 1, 0), 315_532_800);
        let (d, t) = crate::time::dos(1_700_000_000);
        assert_eq!(dos_time(d, t), 1_700_000_000);
    }
}
