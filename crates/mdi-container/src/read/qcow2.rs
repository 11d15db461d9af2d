//! qcow2 versions 2 and 3 (QEMU docs/interop/qcow2.rst; every field is big-endian).
//!
//! The header gives the cluster size and the L1 table; an L1 entry points at an L2 table
//! of one cluster, whose entries map the guest clusters: unallocated (zeros, as there is
//! no backing file), the v3 "all zeros" flag (bit 0), a plain host cluster (bits 9-55), or
//! a compressed cluster (bit 62: host offset and extra 512-byte sector count packed at
//! bit `62 - (cluster_bits - 8)`), deflated (raw deflate) or, with incompatible feature
//! bit 3 and header byte 104 = 1, a zstd frame. Extended L2 entries (incompatible bit 4)
//! add a 32-subcluster "allocated" / "reads as zero" bitmap to each entry.
//!
//! Refused with a clear error: backing files, encryption, external data files, version 1
//! and unknown incompatible features. Snapshots are ignored (the active L1 is read); the
//! refcounts are not needed to read.

use super::{be32, be64, for_each_unit, units, Format, Image, LastUnit, Src, TableCache};
use std::io;

/// Incompatible feature bits this reader understands: dirty, corrupt, compression type,
/// extended L2 entries. (Dirty and corrupt concern refcounts and writers.)
const KNOWN_INCOMPAT: u64 = 0b1_1011;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
const INCOMPAT_EXTENDED_L2: u64 = 1 << 4;
/// Bits 9-55 of L1 and standard L2 entries: a host offset.
const OFFSET_MASK: u64 = 0x00FF_FFFF_FFFF_FE00;
const OFLAG_COMPRESSED: u64 = 1 << 62;
const OFLAG_ZERO: u64 = 1;
/// Bytes of L2 tables kept in memory.
const L2_CACHE: usize = 32 << 20;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Codec {
    Deflate,
    Zstd,
}

/// Where a guest cluster is.
enum Cluster {
    Zero,
    Plain(u64),
    Compressed {
        off: u64,
        len: u64,
    },
    /// Extended L2: host cluster (0 if none) and the two subcluster bitmaps.
    Sub {
        off: u64,
        alloc: u32,
        zero: u32,
    },
}

pub(crate) struct Qcow2 {
    src: Src,
    size: u64,
    cluster_bits: u32,
    /// Entries per L2 table.
    l2_entries: u64,
    extended: bool,
    v3: bool,
    codec: Codec,
    l1: Vec<u64>,
    l2: TableCache,
    last: LastUnit,
    header: Vec<(&'static str, String)>,
    notes: Vec<String>,
}

/// The header fields (names as in QEMU's qcow2.rst) present in `h[..n]`.
fn header_fields(h: &[u8], n: usize, v3: bool) -> Vec<(&'static str, String)> {
    let mut f = vec![
        ("version", be32(h, 4).to_string()),
        ("backing_file_offset", be64(h, 8).to_string()),
        ("backing_file_size", be32(h, 16).to_string()),
        ("cluster_bits", be32(h, 20).to_string()),
        ("size", be64(h, 24).to_string()),
        ("crypt_method", be32(h, 32).to_string()),
        ("l1_size", be32(h, 36).to_string()),
        ("l1_table_offset", format!("{:#x}", be64(h, 40))),
        ("refcount_table_offset", format!("{:#x}", be64(h, 48))),
        ("refcount_table_clusters", be32(h, 56).to_string()),
        ("nb_snapshots", be32(h, 60).to_string()),
        ("snapshots_offset", format!("{:#x}", be64(h, 64))),
    ];
    if v3 && n >= 104 {
        f.extend([
            ("incompatible_features", format!("{:#x}", be64(h, 72))),
            ("compatible_features", format!("{:#x}", be64(h, 80))),
            ("autoclear_features", format!("{:#x}", be64(h, 88))),
            ("refcount_order", be32(h, 96).to_string()),
            ("header_length", be32(h, 100).to_string()),
        ]);
        if n >= 105 && be32(h, 100) >= 105 {
            f.push(("compression_type", h[104].to_string()));
        }
    }
    f
}

impl Qcow2 {
    pub fn open(src: Src) -> io::Result<Self> {
        let mut h = [0u8; 112];
        let n = src.len.min(112) as usize;
        src.read(0, &mut h[..n], "the qcow2 header")?;
        if n < 72 {
            return Err(src.bad("qcow2 header is truncated"));
        }
        let version = be32(&h, 4);
        if version == 1 {
            // QEMU's original qcow format shares the magic (block/qcow.c QCOW_VERSION 1).
            return Err(src.unsupported(format_args!(
                "is a qcow version 1 image, which this tool does not read; convert reads {} \
                 (qemu-img convert -O qcow2 turns it into one)",
                super::detect::READABLE
            )));
        }
        if version != 2 && version != 3 {
            return Err(src.unsupported(format_args!("qcow2 version {version} is not supported")));
        }
        let v3 = version == 3;
        if be64(&h, 8) != 0 {
            return Err(src.unsupported(
                "has a backing file; convert needs a self-contained image \
                 (rebase or commit it first)",
            ));
        }
        let cluster_bits = be32(&h, 20);
        if !(9..=21).contains(&cluster_bits) {
            return Err(src.bad(format_args!("qcow2 cluster_bits {cluster_bits} is not in 9..=21")));
        }
        let (size, note) = super::whole_sectors(&src, "the qcow2 size field", be64(&h, 24));
        if be32(&h, 32) != 0 {
            return Err(src.unsupported("is encrypted, which is not supported"));
        }
        let l1_size = u64::from(be32(&h, 36));
        let l1_off = be64(&h, 40);
        let (mut incompat, mut header_len) = (0, 72);
        if v3 {
            if n < 104 {
                return Err(src.bad("qcow2 v3 header is truncated"));
            }
            incompat = be64(&h, 72);
            header_len = be32(&h, 100);
            if header_len < 104 {
                return Err(src.bad(format_args!("qcow2 header_length {header_len} is below 104")));
            }
        }
        if incompat & INCOMPAT_DATA_FILE != 0 {
            return Err(src.unsupported("keeps its data in an external data file, which is not supported"));
        }
        if incompat & !KNOWN_INCOMPAT != 0 {
            return Err(src.unsupported(format_args!(
                "has unknown qcow2 incompatible features {:#x}",
                incompat & !KNOWN_INCOMPAT
            )));
        }
        let codec = if incompat & INCOMPAT_COMPRESSION != 0 {
            if header_len < 105 || n < 105 {
                return Err(src.bad("qcow2 compression type feature without the header field"));
            }
            match h[104] {
                0 => Codec::Deflate,
                1 => Codec::Zstd,
                t => return Err(src.unsupported(format_args!("unknown qcow2 compression type {t}"))),
            }
        } else {
            Codec::Deflate
        };
        let extended = incompat & INCOMPAT_EXTENDED_L2 != 0;
        if extended && cluster_bits < 14 {
            return Err(src.bad("qcow2 extended L2 entries need clusters of 16 KiB or more"));
        }
        let cluster = 1u64 << cluster_bits;
        let l2_entries = cluster / if extended { 16 } else { 8 };
        // The L1 table must cover the virtual size.
        let need = size.div_ceil(cluster).div_ceil(l2_entries);
        if l1_size < need {
            return Err(src.bad(format_args!("qcow2 L1 table has {l1_size} entries, {need} needed for {size} bytes")));
        }
        if l1_off & 511 != 0 {
            return Err(src.bad("qcow2 L1 table offset is not aligned"));
        }
        // Entries past the virtual size are never consulted.
        let raw = src.table(l1_off, need * 8, "qcow2 L1 table")?;
        let l1 = raw.chunks_exact(8).map(|e| be64(e, 0)).collect();
        Ok(Qcow2 {
            src,
            size,
            cluster_bits,
            l2_entries,
            extended,
            v3,
            codec,
            l1,
            l2: TableCache::new(L2_CACHE),
            last: LastUnit::new(),
            header: header_fields(&h, n, v3),
            notes: note.into_iter().collect(),
        })
    }

    fn cluster(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Looks up guest cluster `c` (below the virtual size).
    fn lookup(&mut self, c: u64) -> io::Result<Cluster> {
        let cluster = self.cluster();
        let Some(&l1e) = self.l1.get((c / self.l2_entries) as usize) else {
            return Err(self.src.bad("qcow2 cluster outside the L1 table"));
        };
        let l2_off = l1e & OFFSET_MASK;
        if l2_off == 0 {
            return Ok(if self.extended { Cluster::Sub { off: 0, alloc: 0, zero: 0 } } else { Cluster::Zero });
        }
        if l2_off & (cluster - 1) != 0 {
            return Err(self.src.bad(format_args!("qcow2 L2 table offset {l2_off:#x} is not cluster-aligned")));
        }
        let width = if self.extended { 16 } else { 8 };
        let at = ((c % self.l2_entries) * width) as usize;
        let table = self.l2.get(&self.src, l2_off, cluster as usize, "qcow2 L2 table")?;
        let e = be64(table, at);
        let bitmap = if self.extended { be64(table, at + 8) } else { 0 };
        if e & OFLAG_COMPRESSED != 0 {
            let x = 62 - (self.cluster_bits - 8);
            let off = e & ((1u64 << x) - 1);
            let sectors = (e >> x) & ((1u64 << (self.cluster_bits - 8)) - 1);
            // The data runs to the end of its last sector, which may lie past the end of
            // the file (QEMU does not pad the last compressed cluster).
            let len = ((sectors + 1) * 512 - (off & 511)).min(self.src.len.saturating_sub(off));
            if len == 0 {
                return Err(self
                    .src
                    .bad(format_args!("qcow2 compressed cluster at {off:#x} lies past the end of the file")));
            }
            return Ok(Cluster::Compressed { off, len });
        }
        let off = e & OFFSET_MASK;
        if off & (cluster - 1) != 0 {
            return Err(self.src.bad(format_args!("qcow2 data cluster offset {off:#x} is not cluster-aligned")));
        }
        if self.extended {
            return Ok(Cluster::Sub { off, alloc: bitmap as u32, zero: (bitmap >> 32) as u32 });
        }
        if (self.v3 && e & OFLAG_ZERO != 0) || off == 0 {
            Ok(Cluster::Zero)
        } else {
            Ok(Cluster::Plain(off))
        }
    }

    /// Decompresses a cluster into `self.last`.
    fn inflate(&mut self, off: u64, len: u64) -> io::Result<()> {
        if self.last.key == Some(off) {
            return Ok(());
        }
        self.last.key = None;
        let cluster = self.cluster() as usize;
        // `len` is at most two clusters: the sector count has cluster_bits - 8 bits.
        let mut input = vec![0u8; len as usize];
        self.src.read(off, &mut input, "qcow2 compressed cluster")?;
        self.last.data.clear();
        self.last.data.resize(cluster, 0);
        let ok = match self.codec {
            Codec::Deflate => {
                let mut d = flate2::Decompress::new(false);
                d.decompress(&input, &mut self.last.data, flate2::FlushDecompress::Finish).is_ok()
                    && d.total_out() == cluster as u64
            }
            Codec::Zstd => match zstd::zstd_safe::find_frame_compressed_size(&input) {
                Ok(n) if n <= input.len() => zstd::bulk::decompress_to_buffer(&input[..n], &mut self.last.data[..])
                    .is_ok_and(|got| got == cluster),
                _ => false,
            },
        };
        if !ok {
            return Err(self
                .src
                .bad(format_args!("qcow2 compressed cluster at {off:#x} does not decompress to {cluster} bytes")));
        }
        self.last.key = Some(off);
        Ok(())
    }

    fn read_cluster(&mut self, c: u64, within: u64, buf: &mut [u8]) -> io::Result<()> {
        match self.lookup(c)? {
            Cluster::Zero => buf.fill(0),
            Cluster::Plain(off) => self.src.read(off + within, buf, "qcow2 data cluster")?,
            Cluster::Compressed { off, len } => {
                self.inflate(off, len)?;
                let w = within as usize;
                buf.copy_from_slice(&self.last.data[w..w + buf.len()]);
            }
            Cluster::Sub { off, alloc, zero } => {
                let sub = self.cluster() / 32;
                let src = &self.src;
                for_each_unit(within, buf, sub, |i, w, piece| {
                    let bit = 1u32 << i;
                    if zero & bit != 0 || alloc & bit == 0 {
                        piece.fill(0);
                        Ok(())
                    } else if off == 0 {
                        Err(src.bad("qcow2 subcluster allocated without a host cluster"))
                    } else {
                        src.read(off + i * sub + w, piece, "qcow2 data subcluster")
                    }
                })?;
            }
        }
        Ok(())
    }
}

impl Image for Qcow2 {
    fn format(&self) -> Format {
        Format::Qcow2
    }

    fn header(&self) -> &[(&'static str, String)] {
        &self.header
    }

    fn notes(&self) -> Vec<String> {
        self.notes.clone()
    }

    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.src.check_range(self.size, offset, buf.len())?;
        let cluster = self.cluster();
        for_each_unit(offset, buf, cluster, |c, w, piece| self.read_cluster(c, w, piece))
    }

    fn maybe_data(&mut self, offset: u64, len: u64) -> io::Result<bool> {
        let r = units(offset, len, self.cluster(), self.size);
        let mut c = r.start;
        while c < r.end {
            let l1e = self.l1.get((c / self.l2_entries) as usize).copied();
            if l1e.unwrap_or(0) & OFFSET_MASK == 0 {
                // A whole unallocated L2 table.
                c = (c / self.l2_entries + 1) * self.l2_entries;
                continue;
            }
            match self.lookup(c)? {
                Cluster::Zero => {}
                Cluster::Sub { alloc, zero, .. } if alloc & !zero == 0 => {}
                _ => return Ok(true),
            }
            c += 1;
        }
        Ok(false)
    }
}
