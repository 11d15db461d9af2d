//! cryptsetup's `veritysetup` (Debian package `cryptsetup-bin`) as the oracle: it must accept
//! the hash devices we write (`verify`, and `open` through device-mapper when root), refuse them
//! once one data byte is flipped, and `veritysetup format` with the same salt and UUID must
//! write the very same bytes and root hash.

use mdi_verity::{hash_data, hex, partition_uuids, VerityParams};
use proptest::prelude::*;
use std::path::Path;
use std::process::{Command, Output};

use mdi_testkit::skip;

fn veritysetup() -> bool {
    let ok = Command::new("veritysetup").arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        skip("veritysetup not found (apt-get install cryptsetup-bin)");
    }
    ok
}

fn run(args: &[&str]) -> Output {
    Command::new("veritysetup").args(args).output().expect("veritysetup runs")
}

fn uuid_text(u: &[u8; 16]) -> String {
    mdi_verity::Uuid(*u).to_string()
}

/// Data that is neither zero nor periodic in the block size.
fn data(blocks: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2654435761).wrapping_add(1);
    (0..blocks * 4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Writes data and our hash device, checks `veritysetup verify`, a flipped byte, and
/// `veritysetup format` with the same parameters. Returns the root hash hex.
fn check(dir: &Path, blocks: usize, salt: &[u8], seed: u32) -> String {
    let d = data(blocks, seed);
    let uuid: [u8; 16] = core::array::from_fn(|i| (i as u8) ^ (seed as u8) | 1);
    let tree = hash_data(VerityParams::new(salt.to_vec(), uuid), &d).unwrap();
    let root = hex(&tree.root_hash);
    let data_path = dir.join("data");
    let hash_path = dir.join("hash");
    std::fs::write(&data_path, &d).unwrap();
    std::fs::write(&hash_path, tree.to_bytes()).unwrap();
    let (dp, hp) = (data_path.to_str().unwrap(), hash_path.to_str().unwrap());

    let o = run(&["verify", dp, hp, &root]);
    assert!(o.status.success(), "veritysetup verify ({blocks} blocks): {}", String::from_utf8_lossy(&o.stderr));

    // `dump` reads our superblock back.
    let o = run(&["dump", hp]);
    let dump = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "dump: {}", String::from_utf8_lossy(&o.stderr));
    assert!(dump.contains(&format!("Data blocks:     \t{blocks}")) || dump.contains(&format!("{blocks}")), "{dump}");
    assert!(dump.contains(&uuid_text(&uuid)), "{dump}");

    // veritysetup writes byte-identical hash devices with the same salt and UUID.
    let theirs = dir.join("theirs");
    // veritysetup writes into an existing file without truncating it.
    let _ = std::fs::remove_file(&theirs);
    let salt_hex = if salt.is_empty() { "-".to_string() } else { hex(salt) };
    let o = run(&[
        "format",
        "--hash=sha256",
        "--format=1",
        "--data-block-size=4096",
        "--hash-block-size=4096",
        &format!("--salt={salt_hex}"),
        &format!("--uuid={}", uuid_text(&uuid)),
        dp,
        theirs.to_str().unwrap(),
    ]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "format: {}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains(&root), "veritysetup's root hash differs from ours ({root}):\n{out}");
    let (t, o) = (std::fs::read(&theirs).unwrap(), tree.to_bytes());
    let first = t.iter().zip(&o).position(|(a, b)| a != b);
    assert!(t == o, "hash devices differ ({blocks} blocks, {} vs {} bytes, first at {first:?})", t.len(), o.len());

    // One flipped data byte, anywhere, fails verification.
    let mut bad = d.clone();
    let at = (seed as usize * 7919) % bad.len();
    bad[at] ^= 0x01;
    std::fs::write(&data_path, &bad).unwrap();
    let o = run(&["verify", dp, hp, &root]);
    assert!(!o.status.success(), "verify passed with byte {at} flipped");
    root
}

#[test]
fn veritysetup_verifies_and_formats_identically() {
    if !veritysetup() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Around every level boundary (fanout 128) and a 32-byte salt as repart uses; no salt;
    // the longest salt.
    for blocks in [1, 2, 127, 128, 129, 300, 16384, 16385] {
        check(dir.path(), blocks, &[0x5a; 32], blocks as u32);
    }
    check(dir.path(), 5, &[], 5);
    check(dir.path(), 200, &[0xc3; 256], 9);
}

#[test]
fn systemd_partition_uuids_match_the_root_hash_halves() {
    if !veritysetup() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = check(dir.path(), 64, &[1; 32], 77);
    let rh: [u8; 32] = (0..32)
        .map(|i| u8::from_str_radix(&root[2 * i..2 * i + 2], 16).unwrap())
        .collect::<Vec<_>>()
        .try_into()
        .unwrap();
    let (d, h) = partition_uuids(&rh);
    // What systemd-veritysetup-generator looks for: /dev/disk/by-partuuid/ of the first and
    // last 32 hex digits of roothash=.
    assert_eq!(d.to_string().replace('-', ""), root[..32]);
    assert_eq!(h.to_string().replace('-', ""), root[32..]);
}

/// `veritysetup open` through device-mapper with our hash device, then reading the mapped
/// device gives the data back; a tampered data block reads as an I/O error. Needs root and
/// loop devices.
#[test]
fn veritysetup_open_reads_data_and_refuses_tampered_blocks() {
    if !veritysetup() {
        return;
    }
    if !nix_is_root() {
        skip("veritysetup open: needs root (device-mapper)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = data(256, 3);
    let tree = hash_data(VerityParams::new(vec![7; 32], [3; 16]), &d).unwrap();
    let root = hex(&tree.root_hash);
    let (dp, hp) = (dir.path().join("data"), dir.path().join("hash"));
    std::fs::write(&dp, &d).unwrap();
    std::fs::write(&hp, tree.to_bytes()).unwrap();
    let name = format!("mdi-verity-test-{}", std::process::id());
    let o = run(&["open", dp.to_str().unwrap(), &name, hp.to_str().unwrap(), &root]);
    if !o.status.success() {
        skip(format_args!("veritysetup open: {}", String::from_utf8_lossy(&o.stderr).trim()));
        return;
    }
    let mapped = format!("/dev/mapper/{name}");
    let read = std::fs::read(&mapped);
    let _ = run(&["close", &name]);
    assert!(read.unwrap() == d, "mapped device differs from the data");

    // Tamper with block 100 and open again: reading that block must fail, not give bytes.
    let mut bad = d.clone();
    bad[100 * 4096 + 17] ^= 0x80;
    std::fs::write(&dp, &bad).unwrap();
    let o = run(&["open", dp.to_str().unwrap(), &name, hp.to_str().unwrap(), &root]);
    assert!(o.status.success(), "open: {}", String::from_utf8_lossy(&o.stderr));
    let r = read_block_direct(&mapped, 100);
    let good = read_block_direct(&mapped, 99);
    let _ = run(&["close", &name]);
    assert!(r.is_err(), "tampered block read without error");
    assert_eq!(good.unwrap(), d[99 * 4096..100 * 4096]);
}

fn nix_is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

fn read_block_direct(dev: &str, block: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(dev)?;
    f.seek(SeekFrom::Start(block * 4096))?;
    let mut b = vec![0u8; 4096];
    f.read_exact(&mut b)?;
    Ok(b)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    /// Random sizes and salts: veritysetup verifies our tree and formats the same bytes.
    #[test]
    fn random_sizes(blocks in 1usize..3000, salt_len in 0usize..=256, seed in any::<u32>()) {
        if !veritysetup() {
            return Ok(());
        }
        let dir = tempfile::tempdir().unwrap();
        let salt: Vec<u8> = (0..salt_len).map(|i| (i as u32 ^ seed) as u8).collect();
        check(dir.path(), blocks, &salt, seed);
    }
}
