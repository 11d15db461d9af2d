//! VMDK hosted sparse extents in one file: monolithicSparse and streamOptimized, as
//! described in VMware's "Virtual Disk Format 1.1" technical note. Every field is
//! little-endian.
//!
//! The file starts with a 512-byte sparse extent header (magic "KDMV"): capacity and
//! grain size in sectors, grain table entries per grain table, the embedded descriptor and
//! the grain directory (GD) offset in sectors. GD entries are the sectors of grain tables
//! (GT), whose entries are the sectors of grains: 0 is a grain never written (zeros), and
//! with header flag bit 2 the value 1 is a zeroed grain. With flag bit 16 the grains are
//! compressed (zlib streams, compress algorithm 1), and with flag bit 17 each starts with a
//! grain marker (u64 LBA, u32 compressed size). streamOptimized writers may only know the
//! GD at the end: the header's GD offset is then GD_AT_END and a copy of the header with
//! the real offset sits in the footer, just before the end-of-stream marker (the last
//! three sectors are the footer marker, the footer and the end-of-stream marker).
//!
//! Delta links (a `parentCID` other than ffffffff in the descriptor) are refused.

use super::{le16, le32, le64, units, Format, Image, LastUnit, Src, TableCache};
use std::io;

const GD_AT_END: u64 = u64::MAX;
const FLAG_ZERO_GRAIN: u32 = 1 << 2;
const FLAG_COMPRESSED: u32 = 1 << 16;
const FLAG_MARKERS: u32 = 1 << 17;
/// Marker type of the footer marker.
const MARKER_FOOTER: u32 = 3;
/// Bytes of grain tables kept in memory.
const GT_CACHE: usize = 16 << 20;
/// Largest embedded descriptor read.
const MAX_DESCRIPTOR: u64 = 1 << 20;

pub(crate) struct Vmdk {
    src: Src,
    size: u64,
    grain: u64,
    gtes: u64,
    zero_grain: bool,
    compressed: bool,
    markers: bool,
    gd: Vec<u32>,
    gts: TableCache,
    last: LastUnit,
    fields: Vec<(&'static str, String)>,
}

struct Header {
    flags: u32,
    capacity: u64,
    grain: u64,
    desc_off: u64,
    desc_size: u64,
    gtes: u32,
    gd_off: u64,
    compress: u16,
}

/// Sparse extent header fields (names as in VMware's technical note).
fn header_fields(h: &[u8]) -> Vec<(&'static str, String)> {
    vec![
        ("version", le32(h, 4).to_string()),
        ("flags", format!("{:#x}", le32(h, 8))),
        ("capacity", le64(h, 12).to_string()),
        ("grainSize", le64(h, 20).to_string()),
        ("descriptorOffset", le64(h, 28).to_string()),
        ("descriptorSize", le64(h, 36).to_string()),
        ("numGTEsPerGT", le32(h, 44).to_string()),
        ("rgdOffset", le64(h, 48).to_string()),
        ("gdOffset", le64(h, 56).to_string()),
        ("overHead", le64(h, 64).to_string()),
        ("uncleanShutdown", h[72].to_string()),
        ("compressAlgorithm", le16(h, 77).to_string()),
    ]
}

fn header(h: &[u8]) -> Header {
    Header {
        flags: le32(h, 8),
        capacity: le64(h, 12),
        grain: le64(h, 20),
        desc_off: le64(h, 28),
        desc_size: le64(h, 36),
        gtes: le32(h, 44),
        gd_off: le64(h, 56),
        compress: le16(h, 77),
    }
}

impl Vmdk {
    pub fn open(src: Src) -> io::Result<Self> {
        let mut b = [0u8; 512];
        src.read(0, &mut b, "the VMDK header")?;
        let version = le32(&b, 4);
        if !(1..=3).contains(&version) {
            return Err(src.unsupported(format_args!("VMDK version {version} is not supported")));
        }
        let mut h = header(&b);
        let mut fields = header_fields(&b);
        if h.gd_off == GD_AT_END {
            // streamOptimized: the footer holds the real header.
            let end = src.len.checked_sub(1536).ok_or_else(|| src.bad("VMDK footer missing"))?;
            let mut f = [0u8; 1024];
            src.read(end, &mut f, "the VMDK footer")?;
            if le32(&f, 8) != 0 || le32(&f, 12) != MARKER_FOOTER || !f[512..].starts_with(b"KDMV") {
                return Err(src.bad("VMDK footer missing"));
            }
            h = header(&f[512..]);
            if h.gd_off == GD_AT_END {
                return Err(src.bad("VMDK footer has no grain directory offset"));
            }
            fields.extend(header_fields(&f[512..]).into_iter().map(|(k, v)| (footer_name(k), v)));
        }
        fields.extend(check_descriptor(&src, &h)?);
        if h.grain == 0 || h.grain > 1 << 16 {
            return Err(src.bad(format_args!("VMDK grain size {} is not supported", h.grain)));
        }
        if h.gtes == 0 || h.gtes > 1 << 20 {
            return Err(src.bad(format_args!("VMDK has {} entries per grain table", h.gtes)));
        }
        let compressed = h.flags & FLAG_COMPRESSED != 0;
        if compressed && h.compress != 1 {
            return Err(src.unsupported(format_args!("VMDK compression algorithm {} is not supported", h.compress)));
        }
        let size = h.capacity.checked_mul(512).ok_or_else(|| src.bad("VMDK capacity overflows"))?;
        let grain = h.grain * 512;
        let gtes = u64::from(h.gtes);
        let n = h.capacity.div_ceil(h.grain * gtes);
        let gd_off = h.gd_off.checked_mul(512).ok_or_else(|| src.bad("VMDK grain directory offset overflows"))?;
        let raw = src.table(gd_off, n.saturating_mul(4), "VMDK grain directory")?;
        let gd = raw.chunks_exact(4).map(|e| le32(e, 0)).collect();
        Ok(Vmdk {
            src,
            size,
            grain,
            gtes,
            zero_grain: h.flags & FLAG_ZERO_GRAIN != 0,
            compressed,
            markers: h.flags & FLAG_MARKERS != 0,
            gd,
            gts: TableCache::new(GT_CACHE),
            last: LastUnit::new(),
            fields,
        })
    }

    /// The file offset of grain `g`, or None for a grain that reads as zeros.
    fn lookup(&mut self, g: u64) -> io::Result<Option<u64>> {
        let Some(&gde) = self.gd.get((g / self.gtes) as usize) else {
            return Err(self.src.bad("VMDK grain outside the grain directory"));
        };
        if gde == 0 {
            return Ok(None);
        }
        let gt = self.gts.get(&self.src, u64::from(gde) * 512, (self.gtes * 4) as usize, "VMDK grain table")?;
        let gte = le32(gt, ((g % self.gtes) * 4) as usize);
        Ok(match gte {
            0 => None,
            1 if self.zero_grain => None,
            s => Some(u64::from(s) * 512),
        })
    }

    /// Inflates the compressed grain at `off` into `self.last`.
    fn inflate(&mut self, off: u64) -> io::Result<()> {
        if self.last.key == Some(off) {
            return Ok(());
        }
        self.last.key = None;
        let grain = self.grain as usize;
        // zlib never grows data by more than a few bytes per 16 KiB block.
        let cap = 2 * self.grain + 4096;
        let (at, len) = if self.markers {
            let mut m = [0u8; 12];
            self.src.read(off, &mut m, "VMDK grain marker")?;
            let len = u64::from(le32(&m, 8));
            if len == 0 || len > cap {
                return Err(self.src.bad(format_args!("VMDK compressed grain at {off:#x} has size {len}")));
            }
            (off + 12, len)
        } else {
            (off, cap.min(self.src.len.saturating_sub(off)))
        };
        let mut input = vec![0u8; len as usize];
        self.src.read(at, &mut input, "VMDK compressed grain")?;
        self.last.data.clear();
        self.last.data.resize(grain, 0);
        let mut d = flate2::Decompress::new(true);
        let ok = match d.decompress(&input, &mut self.last.data, flate2::FlushDecompress::Finish) {
            // A short last grain is padded with zeros.
            Ok(flate2::Status::StreamEnd) => true,
            Ok(_) => d.total_out() == grain as u64,
            Err(_) => false,
        };
        if !ok {
            return Err(self.src.bad(format_args!("VMDK compressed grain at {off:#x} does not decompress")));
        }
        self.last.key = Some(off);
        Ok(())
    }

    fn read_grain(&mut self, g: u64, within: u64, buf: &mut [u8]) -> io::Result<()> {
        match self.lookup(g)? {
            None => buf.fill(0),
            Some(off) if self.compressed => {
                self.inflate(off)?;
                let w = within as usize;
                buf.copy_from_slice(&self.last.data[w..w + buf.len()]);
            }
            Some(off) => self.src.read(off + within, buf, "VMDK grain")?,
        }
        Ok(())
    }
}

/// The footer copy of a header field.
fn footer_name(k: &'static str) -> &'static str {
    match k {
        "version" => "footer.version",
        "flags" => "footer.flags",
        "capacity" => "footer.capacity",
        "grainSize" => "footer.grainSize",
        "descriptorOffset" => "footer.descriptorOffset",
        "descriptorSize" => "footer.descriptorSize",
        "numGTEsPerGT" => "footer.numGTEsPerGT",
        "rgdOffset" => "footer.rgdOffset",
        "gdOffset" => "footer.gdOffset",
        "overHead" => "footer.overHead",
        "uncleanShutdown" => "footer.uncleanShutdown",
        _ => "footer.compressAlgorithm",
    }
}

/// Descriptor keys reported as header fields.
const DESCRIPTOR_KEYS: [(&str, &str); 8] = [
    ("version", "descriptor.version"),
    ("CID", "descriptor.CID"),
    ("parentCID", "descriptor.parentCID"),
    ("createType", "descriptor.createType"),
    ("ddb.adapterType", "descriptor.ddb.adapterType"),
    ("ddb.virtualHWVersion", "descriptor.ddb.virtualHWVersion"),
    ("ddb.uuid", "descriptor.ddb.uuid"),
    ("ddb.toolsVersion", "descriptor.ddb.toolsVersion"),
];

/// Refuses delta links: their descriptor names a parent. Returns the descriptor's known
/// keys and its extent lines as header fields.
fn check_descriptor(src: &Src, h: &Header) -> io::Result<Vec<(&'static str, String)>> {
    let mut fields = Vec::new();
    if h.desc_off == 0 || h.desc_size == 0 {
        return Ok(fields);
    }
    let (Some(off), Some(len)) = (h.desc_off.checked_mul(512), h.desc_size.checked_mul(512)) else {
        return Err(src.bad("VMDK descriptor location overflows"));
    };
    let len = len.min(MAX_DESCRIPTOR).min(src.len.saturating_sub(off));
    let text = src.table(off, len, "VMDK descriptor")?;
    let text = text.split(|&c| c == 0).next().unwrap_or_default();
    for line in String::from_utf8_lossy(text).lines() {
        let mut kv = line.splitn(2, '=');
        let key = kv.next().unwrap_or_default().trim();
        let value = kv.next().unwrap_or_default().trim().trim_matches('"');
        if key.eq_ignore_ascii_case("parentCID") && !value.eq_ignore_ascii_case("ffffffff") {
            return Err(src.unsupported("is a VMDK delta link with a parent; convert needs a self-contained image"));
        }
        if let Some((_, name)) = DESCRIPTOR_KEYS.iter().find(|(k, _)| *k == key) {
            fields.push((*name, value.to_string()));
        } else if line.trim_start().starts_with("RW ") || line.trim_start().starts_with("RDONLY ") {
            fields.push(("descriptor.extent", line.trim().to_string()));
        }
    }
    Ok(fields)
}

impl Image for Vmdk {
    fn format(&self) -> Format {
        Format::Vmdk
    }

    fn header(&self) -> &[(&'static str, String)] {
        &self.fields
    }

    fn virtual_size(&self) -> u64 {
        self.size
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.src.check_range(self.size, offset, buf.len())?;
        let grain = self.grain;
        super::for_each_unit(offset, buf, grain, |g, w, piece| self.read_grain(g, w, piece))
    }

    fn maybe_data(&mut self, offset: u64, len: u64) -> io::Result<bool> {
        let r = units(offset, len, self.grain, self.size);
        let mut g = r.start;
        while g < r.end {
            if self.gd.get((g / self.gtes) as usize).copied().unwrap_or(0) == 0 {
                // A whole grain table never written.
                g = (g / self.gtes + 1) * self.gtes;
                continue;
            }
            if self.lookup(g)?.is_some() {
                return Ok(true);
            }
            g += 1;
        }
        Ok(false)
    }
}
