//! VHDX, Microsoft's Virtual Hard Disk v2 File Format ([MS-VHDX]; every field is
//! little-endian, checksums are CRC-32C): dynamic, 32 MiB payload blocks, 512-byte logical
//! and 4 KiB physical sectors, no parent, an empty log.
//!
//! Layout, every region and block 1 MiB aligned (MS-VHDX §2.2):
//!
//! | offset  | what                                                        |
//! |---------|-------------------------------------------------------------|
//! | 0       | file type identifier (§2.2.1)                               |
//! | 64 KiB  | header 1; 128 KiB: header 2 (§2.2.2)                        |
//! | 192 KiB | region table; 256 KiB: its copy (§2.2.3)                    |
//! | 1 MiB   | log, 1 MiB, all zero: LogGuid zero means it is empty (§2.3) |
//! | 2 MiB   | metadata region, 1 MiB (§2.6)                               |
//! | 3 MiB   | payload blocks, in the order they were first written        |
//! | then    | the BAT (§2.5), sized for the virtual size known at the end |
//!
//! Everything but the payload is written by `finish`, the headers last. No timestamps and
//! no random GUIDs: the identifiers come from the caller, the sequence numbers are fixed.

use crate::store::{Loc, Store};
use crate::{put_u32_le, put_u64_le, Container};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
/// Payload block size (File Parameters BlockSize): Hyper-V's default for dynamic disks and
/// QEMU's for disks over a few GiB (it picks 8 or 16 MiB below).
const BLOCK: u64 = 32 * MIB;
const LOGICAL_SECTOR: u64 = 512;
const PHYSICAL_SECTOR: u64 = 4096;
/// Payload blocks per sector bitmap block: 2^23 sectors of a chunk / sectors per block (§2.4).
const CHUNK_RATIO: u64 = (1 << 23) * LOGICAL_SECTOR / BLOCK;
/// Largest virtual disk the format allows (§2.6.2.2).
const MAX_SIZE: u64 = 64 << 40;

const HEADER_1: u64 = 64 * KIB;
const HEADER_2: u64 = 128 * KIB;
/// The header structure; the rest of its 64 KiB is reserved (zero).
const HEADER_LEN: usize = 4096;
const REGION_TABLE_1: u64 = 192 * KIB;
const REGION_TABLE_2: u64 = 256 * KIB;
/// The region table, checksummed as a whole.
const REGION_TABLE_LEN: usize = 64 * KIB as usize;
const LOG_OFF: u64 = MIB;
const LOG_LEN: u64 = MIB;
const METADATA_OFF: u64 = 2 * MIB;
const METADATA_LEN: u64 = MIB;
/// The metadata table fills the first 64 KiB of its region; the items follow.
const METADATA_TABLE_LEN: usize = 64 * KIB as usize;
const DATA_START: u64 = METADATA_OFF + METADATA_LEN;

/// Payload BAT entry states (§2.5.1.1).
const PAYLOAD_BLOCK_FULLY_PRESENT: u64 = 6;
/// Metadata table entry flags (§2.6.1.2).
const IS_VIRTUAL_DISK: u32 = 1 << 1;
const IS_REQUIRED: u32 = 1 << 2;

fn put_u16_le(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

/// A GUID in its on-disk form: Data1..3 little-endian, Data4 as bytes.
const fn guid(d1: u32, d2: u16, d3: u16, d4: u64) -> [u8; 16] {
    let (a, b, c, d) = (d1.to_le_bytes(), d2.to_le_bytes(), d3.to_le_bytes(), d4.to_be_bytes());
    [a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]
}

// Known regions (§2.2.3.2) and metadata items (§2.6.2).
const BAT_REGION: [u8; 16] = guid(0x2DC2_7766, 0xF623, 0x4200, 0x9D64_115E_9BFD_4A08);
const METADATA_REGION: [u8; 16] = guid(0x8B7C_A206, 0x4790, 0x4B9A, 0xB8FE_575F_050F_886E);
const FILE_PARAMETERS: [u8; 16] = guid(0xCAA1_6737, 0xFA36, 0x4D43, 0xB3B6_33F0_AA44_E76B);
const VIRTUAL_DISK_SIZE: [u8; 16] = guid(0x2FA5_4224, 0xCD1B, 0x4876, 0xB211_5DBE_D83B_F4B8);
const VIRTUAL_DISK_ID: [u8; 16] = guid(0xBECA_12AB, 0xB2E6, 0x4523, 0x93EF_C309_E000_C746);
const LOGICAL_SECTOR_SIZE: [u8; 16] = guid(0x8141_BF1D, 0xA96F, 0x4709, 0xBA47_F233_A8FA_AB5F);
const PHYSICAL_SECTOR_SIZE: [u8; 16] = guid(0xCDA3_48C7, 0x445D, 0x4471, 0x9CC9_E988_5251_C556);

/// The identifiers of a VHDX, stored as given (the on-disk bytes of each GUID).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VhdxIds {
    /// Header FileWriteGuid.
    pub file_write: [u8; 16],
    /// Header DataWriteGuid.
    pub data_write: [u8; 16],
    /// Virtual Disk ID metadata item (the disk's SCSI page 83 identity).
    pub virtual_disk_id: [u8; 16],
}

/// A dynamic VHDX being written.
pub struct Vhdx {
    store: Store,
    ids: VhdxIds,
}

impl Vhdx {
    /// Starts an image in `file` (empty); `ids` identify it (derive them from the seed).
    pub fn new(file: File, ids: VhdxIds) -> Self {
        Vhdx { store: Store::new(file, BLOCK, 0, DATA_START, None), ids }
    }

    /// The header with sequence number `seq` (§2.2.2).
    fn header(&self, seq: u64) -> Vec<u8> {
        let mut h = vec![0u8; HEADER_LEN];
        h[0..4].copy_from_slice(b"head"); // Signature
        put_u64_le(&mut h, 8, seq); // SequenceNumber
        h[16..32].copy_from_slice(&self.ids.file_write); // FileWriteGuid
        h[32..48].copy_from_slice(&self.ids.data_write); // DataWriteGuid
        h[48..64].fill(0); // LogGuid: zero, the log is empty
        put_u16_le(&mut h, 64, 0); // LogVersion
        put_u16_le(&mut h, 66, 1); // Version
        put_u32_le(&mut h, 68, LOG_LEN as u32); // LogLength
        put_u64_le(&mut h, 72, LOG_OFF); // LogOffset
        let sum = crc32c::crc32c(&h);
        put_u32_le(&mut h, 4, sum); // Checksum: CRC-32C of the 4 KiB with this field zero
        h
    }

    /// The metadata table and its items (§2.6), for a disk of `size` bytes.
    fn metadata(&self, size: u64) -> Vec<u8> {
        let mut fp = [0u8; 8];
        put_u32_le(&mut fp, 0, BLOCK as u32); // BlockSize
        put_u32_le(&mut fp, 4, 0); // LeaveBlockAllocated (bit 0) 0, HasParent (bit 1) 0
        let items: [([u8; 16], u32, Vec<u8>); 5] = [
            (FILE_PARAMETERS, IS_REQUIRED, fp.to_vec()),
            (VIRTUAL_DISK_SIZE, IS_VIRTUAL_DISK | IS_REQUIRED, size.to_le_bytes().to_vec()),
            (VIRTUAL_DISK_ID, IS_VIRTUAL_DISK | IS_REQUIRED, self.ids.virtual_disk_id.to_vec()),
            (LOGICAL_SECTOR_SIZE, IS_VIRTUAL_DISK | IS_REQUIRED, (LOGICAL_SECTOR as u32).to_le_bytes().to_vec()),
            (PHYSICAL_SECTOR_SIZE, IS_VIRTUAL_DISK | IS_REQUIRED, (PHYSICAL_SECTOR as u32).to_le_bytes().to_vec()),
        ];
        let mut m = vec![0u8; METADATA_TABLE_LEN + 64];
        m[0..8].copy_from_slice(b"metadata"); // Signature
        put_u16_le(&mut m, 10, items.len() as u16); // EntryCount
        let mut at = METADATA_TABLE_LEN;
        for (i, (id, flags, data)) in items.iter().enumerate() {
            let e = 32 + i * 32;
            m[e..e + 16].copy_from_slice(id); // ItemId
            put_u32_le(&mut m, e + 16, at as u32); // Offset, from the start of the region
            put_u32_le(&mut m, e + 20, data.len() as u32); // Length
            put_u32_le(&mut m, e + 24, *flags); // IsUser (bit 0), IsVirtualDisk (1), IsRequired (2)
            m[at..at + data.len()].copy_from_slice(data);
            at += data.len();
        }
        m
    }
}

/// The region table (§2.2.3) locating the BAT and the metadata.
fn region_table(bat_off: u64, bat_len: u64) -> Vec<u8> {
    let mut t = vec![0u8; REGION_TABLE_LEN];
    t[0..4].copy_from_slice(b"regi"); // Signature
    put_u32_le(&mut t, 8, 2); // EntryCount
    for (i, (id, off, len)) in
        [(BAT_REGION, bat_off, bat_len), (METADATA_REGION, METADATA_OFF, METADATA_LEN)].into_iter().enumerate()
    {
        let e = 16 + i * 32;
        t[e..e + 16].copy_from_slice(&id); // Guid
        put_u64_le(&mut t, e + 16, off); // FileOffset
        put_u32_le(&mut t, e + 24, len as u32); // Length
        put_u32_le(&mut t, e + 28, 1); // Required
    }
    let sum = crc32c::crc32c(&t);
    put_u32_le(&mut t, 4, sum); // Checksum: CRC-32C of the 64 KiB with this field zero
    t
}

impl mdi_sink::Sink for Vhdx {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.store.write(offset, data)
    }
}

impl Container for Vhdx {
    fn finish(self: Box<Self>, size: u64) -> io::Result<File> {
        // The size must be whole logical sectors (§2.6.2.2); the padding reads as zeros.
        let size = size.next_multiple_of(LOGICAL_SECTOR);
        if size == 0 || size > MAX_SIZE {
            // QEMU cannot open an empty VHDX unless its BAT is hundreds of MiB.
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("VHDX: a disk of {size} bytes (must be 1 byte to 64 TiB)"),
            ));
        }
        let file = self.store.file.try_clone()?;
        let blocks = size.div_ceil(BLOCK);
        // A sector bitmap entry follows every CHUNK_RATIO payload entries; a dynamic disk's
        // BAT ends with the last payload entry (§2.5).
        let entries = blocks + (blocks - 1) / CHUNK_RATIO;
        let bat_off = self.store.next.next_multiple_of(MIB);
        let bat_len = (entries * 8).next_multiple_of(MIB);
        // Entries left zero: PAYLOAD_BLOCK_NOT_PRESENT, SB_BLOCK_NOT_PRESENT. The rest of
        // the region stays a hole (set_len below).
        let mut bat = vec![0u8; (entries * 8) as usize];
        for (&v, loc) in &self.store.map {
            let Loc::Plain(p) = *loc else { unreachable!("VHDX blocks are not compressed") };
            if v >= blocks {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("VHDX: data at {} is past the {size}-byte disk", v * BLOCK),
                ));
            }
            // State in bits 0..3, FileOffsetMB in bits 20..64.
            put_u64_le(&mut bat, ((v + v / CHUNK_RATIO) * 8) as usize, (p / MIB) << 20 | PAYLOAD_BLOCK_FULLY_PRESENT);
        }
        file.write_all_at(&bat, bat_off)?;
        file.write_all_at(&self.metadata(size), METADATA_OFF)?;
        let rt = region_table(bat_off, bat_len);
        file.write_all_at(&rt, REGION_TABLE_1)?;
        file.write_all_at(&rt, REGION_TABLE_2)?;
        let mut ident = [0u8; 8 + 512];
        ident[0..8].copy_from_slice(b"vhdxfile"); // Signature
        for (i, c) in "make-disk-image".encode_utf16().enumerate() {
            put_u16_le(&mut ident, 8 + 2 * i, c); // Creator, UTF-16
        }
        file.write_all_at(&ident, 0)?;
        // Both headers valid; the one with the larger sequence number is current.
        file.write_all_at(&self.header(1), HEADER_1)?;
        file.write_all_at(&self.header(2), HEADER_2)?;
        file.set_len(bat_off + bat_len)?;
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mdi_sink::Sink;
    use std::fs;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    fn qemu_img(args: &[&str]) -> (bool, String) {
        let o = Command::new("qemu-img").args(args).output().expect("qemu-img (apt-get install qemu-utils)");
        (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
    }

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mdi-vhdx-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    /// Non-zero bytes that differ with the offset and the seed.
    fn pattern(off: u64, len: usize, seed: u8) -> Vec<u8> {
        (0..len as u64).map(|i| ((off + i) % 251) as u8 ^ seed | 1).collect()
    }

    /// Writes `writes` to a VHDX of `size` bytes and to a sparse raw image of the same data.
    fn build(dir: &Path, name: &str, size: u64, writes: &[(u64, Vec<u8>)]) -> (PathBuf, PathBuf) {
        let ids = VhdxIds { file_write: [0x11; 16], data_write: [0x22; 16], virtual_disk_id: [0x33; 16] };
        let (vhdx, raw) = (dir.join(format!("{name}.vhdx")), dir.join(format!("{name}.raw")));
        let mut v: Box<dyn Container> = Box::new(Vhdx::new(File::create(&vhdx).unwrap(), ids));
        let mut r = mdi_sink::RawSink::new(File::create(&raw).unwrap());
        for (off, data) in writes {
            v.write_at(*off, data).unwrap();
            r.write_at(*off, data).unwrap();
        }
        v.finish(size).unwrap();
        r.finish_unsynced(size).unwrap();
        (vhdx, raw)
    }

    /// qemu-img finds no errors, the right size and the same data as the raw image.
    fn oracle(vhdx: &Path, raw: &Path, size: u64) {
        let (v, r) = (vhdx.to_str().unwrap(), raw.to_str().unwrap());
        let (ok, check) = qemu_img(&["check", "-f", "vhdx", v]);
        assert!(ok && check.contains("No errors were found on the image."), "qemu-img check: {check}");
        let (ok, info) = qemu_img(&["info", "--output=json", "-f", "vhdx", v]);
        assert!(ok && info.contains(&format!("\"virtual-size\": {size},")), "qemu-img info: {info}");
        let (ok, cmp) = qemu_img(&["compare", "-f", "raw", "-F", "vhdx", r, v]);
        assert!(ok && cmp.contains("Images are identical."), "qemu-img compare: {cmp}");
    }

    #[test]
    fn qemu_reads_what_was_written() {
        let dir = scratch("small");
        // Four blocks, the last one partial; block 2 never written.
        let size = 100 * MIB + 3 * 512;
        let mut gappy = pattern(50 * MIB, 3 * MIB as usize, 7);
        gappy[MIB as usize..2 * MIB as usize].fill(0);
        let writes = vec![
            (40 * MIB, pattern(40 * MIB, MIB as usize, 1)), // out of order: block 1 first
            (0, pattern(0, MIB as usize, 2)),
            (5 * MIB + 123, pattern(5 * MIB + 123, 3 * MIB as usize, 3)),
            (31 * MIB, pattern(31 * MIB, 2 * MIB as usize, 4)), // across blocks 0 and 1
            (70 * MIB, vec![0u8; 4 * MIB as usize]),            // all zero: dropped
            (4096, pattern(4096, 8192, 5)),                     // over earlier data
            (50 * MIB, gappy),
            (size - MIB - 512, pattern(size - MIB - 512, (MIB + 512) as usize, 6)), // up to the end
        ];
        let (vhdx, raw) = build(&dir, "a", size, &writes);
        oracle(&vhdx, &raw, size);
        let mut want = vec![0u8; size as usize];
        for (off, data) in &writes {
            want[*off as usize..*off as usize + data.len()].copy_from_slice(data);
        }
        let out = dir.join("converted.raw");
        let (ok, conv) =
            qemu_img(&["convert", "-f", "vhdx", "-O", "raw", vhdx.to_str().unwrap(), out.to_str().unwrap()]);
        assert!(ok, "qemu-img convert: {conv}");
        assert!(fs::read(&out).unwrap() == want, "converted image differs from the data");
        // Blocks 0, 1 and 3 are in the file, block 2 is not.
        let len = fs::metadata(&vhdx).unwrap().len();
        assert_eq!(len, DATA_START + 3 * BLOCK + MIB);
        // Deterministic: the same writes give the same bytes.
        let (again, _) = build(&dir, "b", size, &writes);
        assert!(fs::read(&vhdx).unwrap() == fs::read(&again).unwrap(), "output is not deterministic");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sector_bitmap_entries_are_interleaved() {
        let dir = scratch("large");
        // 160 blocks: payload entries 0..128, a sector bitmap entry, then 128..160.
        let size = 5 << 30;
        let writes = vec![
            (128 * BLOCK + 5 * MIB, pattern(128 * BLOCK + 5 * MIB, MIB as usize, 1)),
            (127 * BLOCK + 7, pattern(127 * BLOCK + 7, MIB as usize, 2)),
            (159 * BLOCK, pattern(159 * BLOCK, BLOCK as usize, 3)),
            (0, pattern(0, 4096, 4)),
        ];
        let (vhdx, raw) = build(&dir, "a", size, &writes);
        oracle(&vhdx, &raw, size);
        let f = File::open(&vhdx).unwrap();
        let bat_off = DATA_START + 4 * BLOCK;
        let entry = |i: u64| {
            let mut b = [0u8; 8];
            f.read_exact_at(&mut b, bat_off + i * 8).unwrap();
            u64::from_le_bytes(b)
        };
        assert_eq!(entry(129), DATA_START | PAYLOAD_BLOCK_FULLY_PRESENT); // block 128, written first
        assert_eq!(entry(128), 0); // sector bitmap of chunk 0
        assert_eq!(entry(127), (DATA_START + BLOCK) | PAYLOAD_BLOCK_FULLY_PRESENT);
        assert_eq!(entry(160), (DATA_START + 2 * BLOCK) | PAYLOAD_BLOCK_FULLY_PRESENT); // block 159, the last entry
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn data_past_the_size_or_an_empty_disk_is_refused() {
        let dir = scratch("past");
        let ids = VhdxIds { file_write: [1; 16], data_write: [2; 16], virtual_disk_id: [3; 16] };
        let mut v = Box::new(Vhdx::new(File::create(dir.join("a.vhdx")).unwrap(), ids));
        v.write_at(BLOCK, &[1]).unwrap();
        assert!(v.finish(BLOCK).is_err());
        let v = Box::new(Vhdx::new(File::create(dir.join("b.vhdx")).unwrap(), ids));
        assert!(v.finish(0).is_err(), "empty disk");
        fs::remove_dir_all(&dir).unwrap();
    }
}
