//! Volume geometry: FAT type, cluster size, FAT size, region offsets (FAT spec §3.5 and
//! its cluster-size tables). Pure arithmetic, planned before anything is written.

/// Bytes per sector; we only write 512-byte sectors.
pub const SECTOR: u64 = 512;

/// FAT16 or FAT32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FatType {
    /// 16-bit FAT entries, fixed root directory.
    Fat16,
    /// 32-bit (28 used) entries, root directory in a cluster chain.
    Fat32,
}

/// Where everything is, in sectors from the volume start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub fat_type: FatType,
    pub total_sectors: u64,
    pub sectors_per_cluster: u64,
    pub reserved_sectors: u64,
    pub fat_sectors: u64,
    /// FAT16's fixed root directory, in sectors (0 on FAT32).
    pub root_dir_sectors: u64,
    /// Data clusters (numbered from 2).
    pub clusters: u64,
}

/// FAT16 root directory entries (the usual 512: 16 KiB).
pub const FAT16_ROOT_ENTRIES: u64 = 512;
/// The smallest and largest cluster counts of each type (spec §3.5).
const FAT16_MIN_CLUSTERS: u64 = 4085;
const FAT32_MIN_CLUSTERS: u64 = 65525;
const FAT32_MAX_CLUSTERS: u64 = 0x0FFF_FFF5;

impl Layout {
    /// First sector of the data region.
    pub fn data_start(&self) -> u64 {
        self.reserved_sectors + 2 * self.fat_sectors + self.root_dir_sectors
    }

    /// Cluster size in bytes.
    pub fn cluster_bytes(&self) -> u64 {
        self.sectors_per_cluster * SECTOR
    }

    /// Byte offset of cluster `c` (≥ 2).
    pub fn cluster_offset(&self, c: u64) -> u64 {
        (self.data_start() + (c - 2) * self.sectors_per_cluster) * SECTOR
    }

    /// Plans a volume of `bytes`: FAT32 if the FAT32 table's cluster size gives at least
    /// 65525 clusters, else FAT16 with the FAT16 table's. None when even FAT16 does not fit.
    pub fn plan(bytes: u64) -> Option<Layout> {
        let total = bytes / SECTOR;
        Self::fat32(total).or_else(|| Self::fat16(total))
    }

    fn solve(total: u64, spc: u64, reserved: u64, root: u64, entry_bytes: u64) -> Option<(u64, u64)> {
        // FAT size and cluster count depend on each other; iterate from a large FAT down.
        let mut fat = 1u64;
        loop {
            let meta = reserved + 2 * fat + root;
            let clusters = total.checked_sub(meta)? / spc;
            let need = ((clusters + 2) * entry_bytes).div_ceil(SECTOR);
            if need <= fat {
                return Some((fat, clusters));
            }
            fat = need;
        }
    }

    fn fat32(total: u64) -> Option<Layout> {
        // Spec's FAT32 cluster-size table (DskTableFAT32).
        let spc = match total {
            t if t <= 66_600 => return None,
            t if t <= 532_480 => 1,
            t if t <= 16_777_216 => 8,
            t if t <= 33_554_432 => 16,
            t if t <= 67_108_864 => 32,
            _ => 64,
        };
        let reserved = 32;
        let (fat, clusters) = Self::solve(total, spc, reserved, 0, 4)?;
        (FAT32_MIN_CLUSTERS..=FAT32_MAX_CLUSTERS).contains(&clusters).then_some(Layout {
            fat_type: FatType::Fat32,
            total_sectors: total,
            sectors_per_cluster: spc,
            reserved_sectors: reserved,
            fat_sectors: fat,
            root_dir_sectors: 0,
            clusters,
        })
    }

    fn fat16(total: u64) -> Option<Layout> {
        // Spec's FAT16 cluster-size table (DskTableFAT16).
        let spc = match total {
            t if t <= 8_400 => return None,
            t if t <= 32_680 => 2,
            t if t <= 262_144 => 4,
            t if t <= 524_288 => 8,
            t if t <= 1_048_576 => 16,
            t if t <= 2_097_152 => 32,
            t if t <= 4_194_304 => 64,
            _ => return None,
        };
        let root = FAT16_ROOT_ENTRIES * 32 / SECTOR;
        let (fat, clusters) = Self::solve(total, spc, 1, root, 2)?;
        (FAT16_MIN_CLUSTERS..FAT32_MIN_CLUSTERS).contains(&clusters).then_some(Layout {
            fat_type: FatType::Fat16,
            total_sectors: total,
            sectors_per_cluster: spc,
            reserved_sectors: 1,
            fat_sectors: fat,
            root_dir_sectors: root,
            clusters,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_by_size() {
        // nixpkgs' default ESP: 8 MiB → 256 MiB.
        let l = Layout::plan(248 << 20).unwrap();
        assert_eq!(l.fat_type, FatType::Fat32);
        assert!(l.clusters >= 65525);
        let l = Layout::plan(16 << 20).unwrap();
        assert_eq!(l.fat_type, FatType::Fat16);
        assert!(Layout::plan(1 << 20).is_none());
        // FAT entries cover every cluster.
        for mib in [5u64, 16, 33, 34, 40, 100, 248, 1024, 9000] {
            let l = Layout::plan(mib << 20).unwrap();
            let per = if l.fat_type == FatType::Fat32 { 4 } else { 2 };
            assert!(l.fat_sectors * SECTOR >= (l.clusters + 2) * per, "{mib} MiB");
            assert!(l.data_start() + l.clusters * l.sectors_per_cluster <= l.total_sectors);
        }
    }
}
