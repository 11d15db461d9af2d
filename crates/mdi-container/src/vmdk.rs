//! VMDK sparse extents (VMware "Virtual Disk Format 5.0"): a 512-byte little-endian
//! header, an embedded text descriptor, grain directory and grain tables of 64 KiB
//! grains. `monolithicSparse` stores grains plainly; `streamOptimized` (for VMware
//! import and OVA) stores each grain deflated behind a marker, then the tables, a footer
//! and an end-of-stream marker, so it can be read front to back.

use crate::store::{Loc, Store};
use crate::{put_u32_le, put_u64_le, Container};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;

const SECTOR: u64 = 512;
/// Grain size: 128 sectors (64 KiB), VMware's and QEMU's default.
const GRAIN_SECTORS: u64 = 128;
const GRAIN: u64 = GRAIN_SECTORS * SECTOR;
/// Grain table entries per table (each table covers 32 MiB).
const GTES: u64 = 512;
/// Sectors reserved for the embedded descriptor (from sector 1).
const DESC_SECTORS: u64 = 20;
/// Grains start here: header + descriptor, rounded to a grain.
const DATA_START: u64 = GRAIN;
/// Header flags (spec §"Sparse extent header"): valid newline test, compressed grains,
/// markers.
const FLAG_NL_DETECT: u32 = 1;
const FLAG_COMPRESSED: u32 = 1 << 16;
const FLAG_MARKERS: u32 = 1 << 17;
/// gdOffset value meaning "the grain directory location is in the footer".
const GD_AT_END: u64 = u64::MAX;
/// Metadata marker types.
const MARKER_EOS: u32 = 0;
const MARKER_GT: u32 = 1;
const MARKER_GD: u32 = 2;
const MARKER_FOOTER: u32 = 3;

/// Which VMDK flavour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmdkKind {
    /// Hosted sparse extent with plain grains.
    MonolithicSparse,
    /// Deflated grains with markers, written as a stream.
    StreamOptimized,
}

/// A grain marker followed by the zlib-compressed grain, padded to a sector.
fn grain_c(v: u64, d: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let mut out = Vec::with_capacity(d.len() / 2);
    out.extend_from_slice(&(v * GRAIN_SECTORS).to_le_bytes()); // lba
    out.extend_from_slice(&[0u8; 4]); // size, set below
    let mut z = flate2::write::ZlibEncoder::new(out, flate2::Compression::default());
    z.write_all(d)?;
    let mut out = z.finish()?;
    let size = (out.len() - 12) as u32;
    out[8..12].copy_from_slice(&size.to_le_bytes());
    out.resize(out.len().next_multiple_of(SECTOR as usize), 0);
    Ok(Some(out))
}

fn grain_d(c: &[u8], len: usize) -> io::Result<Vec<u8>> {
    if c.len() < 12 {
        return Err(io::ErrorKind::InvalidData.into());
    }
    let size = u32::from_le_bytes(c[8..12].try_into().expect("4 bytes")) as usize;
    let body = c.get(12..12 + size).ok_or(io::ErrorKind::InvalidData)?;
    let mut out = Vec::with_capacity(len);
    flate2::read::ZlibDecoder::new(body).read_to_end(&mut out)?;
    out.resize(len, 0);
    Ok(out)
}

/// A VMDK being written.
pub struct Vmdk {
    store: Store,
    kind: VmdkKind,
    cid: u32,
    file_name: String,
}

impl Vmdk {
    /// Starts an image; `cid` is the descriptor's content ID (from the seed), `file_name`
    /// the extent's own name as the descriptor lists it.
    pub fn new(file: File, kind: VmdkKind, cid: u32, file_name: &str) -> Self {
        let codec = (kind == VmdkKind::StreamOptimized)
            .then_some((grain_c as crate::store::Compressor, grain_d as crate::store::Decompressor));
        let mut store = Store::new(file, GRAIN, 0, DATA_START, codec);
        store.compressed_align = SECTOR;
        Vmdk { store, kind, cid, file_name: file_name.to_string() }
    }

    fn descriptor(&self, sectors: u64) -> Vec<u8> {
        let create = match self.kind {
            VmdkKind::MonolithicSparse => "monolithicSparse",
            VmdkKind::StreamOptimized => "streamOptimized",
        };
        // The usual 16-head, 63-sector IDE geometry.
        let cyl = (sectors / (16 * 63)).min(16383);
        let text = format!(
            "# Disk DescriptorFile\nversion=1\nCID={:08x}\nparentCID=ffffffff\ncreateType=\"{create}\"\n\n# Extent description\nRW {sectors} SPARSE \"{}\"\n\n# The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = \"4\"\nddb.geometry.cylinders = \"{cyl}\"\nddb.geometry.heads = \"16\"\nddb.geometry.sectors = \"63\"\nddb.adapterType = \"ide\"\n",
            self.cid, self.file_name
        );
        let mut b = text.into_bytes();
        b.resize((DESC_SECTORS * SECTOR) as usize, 0);
        b
    }

    fn header(&self, capacity: u64, gd_sector: u64) -> [u8; 512] {
        let mut h = [0u8; 512];
        let stream = self.kind == VmdkKind::StreamOptimized;
        h[0..4].copy_from_slice(b"KDMV"); // magicNumber
        put_u32_le(&mut h, 4, if stream { 3 } else { 1 }); // version
        put_u32_le(&mut h, 8, FLAG_NL_DETECT | if stream { FLAG_COMPRESSED | FLAG_MARKERS } else { 0 }); // flags
        put_u64_le(&mut h, 12, capacity); // capacity (sectors)
        put_u64_le(&mut h, 20, GRAIN_SECTORS); // grainSize (sectors)
        put_u64_le(&mut h, 28, 1); // descriptorOffset (sectors)
        put_u64_le(&mut h, 36, DESC_SECTORS); // descriptorSize (sectors)
        put_u32_le(&mut h, 44, GTES as u32); // numGTEsPerGT
        put_u64_le(&mut h, 48, 0); // rgdOffset: no redundant directory
        put_u64_le(&mut h, 56, gd_sector); // gdOffset
        put_u64_le(&mut h, 64, DATA_START / SECTOR); // overHead (sectors)
        h[72] = 0; // uncleanShutdown
        h[73] = b'\n'; // singleEndLineChar
        h[74] = b' '; // nonEndLineChar
        h[75] = b'\r'; // doubleEndLineChar1
        h[76] = b'\n'; // doubleEndLineChar2
        h[77..79].copy_from_slice(&(u16::from(stream)).to_le_bytes()); // compressAlgorithm: deflate
        h
    }
}

fn marker(val: u64, kind: u32) -> [u8; 512] {
    let mut m = [0u8; 512];
    put_u64_le(&mut m, 0, val); // numSectors of the metadata that follows
    put_u32_le(&mut m, 8, 0); // size: 0 for metadata markers
    put_u32_le(&mut m, 12, kind); // type
    m
}

impl mdi_sink::Sink for Vmdk {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.store.write(offset, data)
    }
}

impl Container for Vmdk {
    fn finish(mut self: Box<Self>, size: u64) -> io::Result<File> {
        self.store.flush()?;
        let capacity = size.div_ceil(SECTOR);
        let grains = size.div_ceil(GRAIN);
        let tables = grains.div_ceil(GTES);
        let gt_sectors = (GTES * 4).div_ceil(SECTOR);
        let gd_sectors = (tables * 4).div_ceil(SECTOR);
        let mut gts = vec![vec![0u8; (GTES * 4) as usize]; tables as usize];
        for (&v, loc) in &self.store.map {
            let sector = match *loc {
                Loc::Plain(p) => p / SECTOR,
                Loc::Compressed { off, .. } => off / SECTOR,
            };
            put_u32_le(&mut gts[(v / GTES) as usize], ((v % GTES) * 4) as usize, sector as u32);
        }
        let file = self.store.file.try_clone()?;
        let mut at = self.store.next.next_multiple_of(SECTOR);
        let stream = self.kind == VmdkKind::StreamOptimized;
        let mut gd = vec![0u8; (gd_sectors * SECTOR) as usize];
        for (i, gt) in gts.iter().enumerate() {
            if stream {
                file.write_all_at(&marker(gt_sectors, MARKER_GT), at)?;
                at += SECTOR;
            }
            put_u32_le(&mut gd, i * 4, (at / SECTOR) as u32);
            file.write_all_at(gt, at)?;
            at += gt_sectors * SECTOR;
        }
        if stream {
            file.write_all_at(&marker(gd_sectors, MARKER_GD), at)?;
            at += SECTOR;
        }
        let gd_sector = at / SECTOR;
        file.write_all_at(&gd, at)?;
        at += gd_sectors * SECTOR;
        if stream {
            // Footer: the header again, now with the directory's place; then end of stream.
            file.write_all_at(&marker(1, MARKER_FOOTER), at)?;
            file.write_all_at(&self.header(capacity, gd_sector), at + SECTOR)?;
            file.write_all_at(&marker(0, MARKER_EOS), at + 2 * SECTOR)?;
            at += 3 * SECTOR;
        }
        let head_gd = if stream { GD_AT_END } else { gd_sector };
        file.write_all_at(&self.header(capacity, head_gd), 0)?;
        file.write_all_at(&self.descriptor(capacity), SECTOR)?;
        file.set_len(at)?;
        Ok(file)
    }
}
