//! The htree directory hash: "half MD4" with the filesystem's hash seed, unsigned-char
//! variant (superblock flag EXT2_FLAGS_UNSIGNED_HASH). Algorithm as in the kernel's
//! fs/ext4/hash.c and lib/halfmd4.c; numbers are MD4's round constants.

/// MD4 round-2 and round-3 additive constants (RFC 1320 §3.4: sqrt(2) and sqrt(3) * 2^30).
const K2: u32 = 0o13240474631;
const K3: u32 = 0o15666365641;

fn f(x: u32, y: u32, z: u32) -> u32 {
    z ^ (x & (y ^ z))
}
fn g(x: u32, y: u32, z: u32) -> u32 {
    (x & y).wrapping_add((x ^ y) & z)
}
fn h(x: u32, y: u32, z: u32) -> u32 {
    x ^ y ^ z
}

fn half_md4(buf: &mut [u32; 4], inp: &[u32; 8]) {
    let [mut a, mut b, mut c, mut d] = *buf;
    macro_rules! round {
        ($f:ident, $a:ident, $b:ident, $c:ident, $d:ident, $x:expr, $s:expr) => {
            $a = $a.wrapping_add($f($b, $c, $d)).wrapping_add($x).rotate_left($s);
        };
    }
    round!(f, a, b, c, d, inp[0], 3);
    round!(f, d, a, b, c, inp[1], 7);
    round!(f, c, d, a, b, inp[2], 11);
    round!(f, b, c, d, a, inp[3], 19);
    round!(f, a, b, c, d, inp[4], 3);
    round!(f, d, a, b, c, inp[5], 7);
    round!(f, c, d, a, b, inp[6], 11);
    round!(f, b, c, d, a, inp[7], 19);

    round!(g, a, b, c, d, inp[1].wrapping_add(K2), 3);
    round!(g, d, a, b, c, inp[3].wrapping_add(K2), 5);
    round!(g, c, d, a, b, inp[5].wrapping_add(K2), 9);
    round!(g, b, c, d, a, inp[7].wrapping_add(K2), 13);
    round!(g, a, b, c, d, inp[0].wrapping_add(K2), 3);
    round!(g, d, a, b, c, inp[2].wrapping_add(K2), 5);
    round!(g, c, d, a, b, inp[4].wrapping_add(K2), 9);
    round!(g, b, c, d, a, inp[6].wrapping_add(K2), 13);

    round!(h, a, b, c, d, inp[3].wrapping_add(K3), 3);
    round!(h, d, a, b, c, inp[7].wrapping_add(K3), 9);
    round!(h, c, d, a, b, inp[2].wrapping_add(K3), 11);
    round!(h, b, c, d, a, inp[6].wrapping_add(K3), 15);
    round!(h, a, b, c, d, inp[1].wrapping_add(K3), 3);
    round!(h, d, a, b, c, inp[5].wrapping_add(K3), 9);
    round!(h, c, d, a, b, inp[0].wrapping_add(K3), 11);
    round!(h, b, c, d, a, inp[4].wrapping_add(K3), 15);

    buf[0] = buf[0].wrapping_add(a);
    buf[1] = buf[1].wrapping_add(b);
    buf[2] = buf[2].wrapping_add(c);
    buf[3] = buf[3].wrapping_add(d);
}

/// Packs up to `4 * out.len()` name bytes into words, padded with the length pattern.
fn str2hashbuf(msg: &[u8], out: &mut [u32; 8]) {
    let len = msg.len() as u32;
    let mut pad = len | (len << 8);
    pad |= pad << 16;
    let msg = &msg[..msg.len().min(32)];
    let mut num = 8usize;
    let mut idx = 0;
    let mut val = pad;
    for (i, &c) in msg.iter().enumerate() {
        if i % 4 == 0 {
            val = pad;
        }
        val = u32::from(c).wrapping_add(val << 8);
        if i % 4 == 3 {
            out[idx] = val;
            idx += 1;
            val = pad;
            num -= 1;
        }
    }
    if num > 0 {
        out[idx] = val;
        idx += 1;
        num -= 1;
    }
    while num > 0 {
        out[idx] = pad;
        idx += 1;
        num -= 1;
    }
}

/// The (major, minor) hash of a name. The major hash has bit 0 clear: in index entries
/// that bit marks a hash collision continued from the previous block.
pub(crate) fn name_hash(name: &[u8], seed: &[u32; 4]) -> (u32, u32) {
    // MD4 initial state, used when the seed is all zero.
    let mut buf = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];
    if seed.iter().any(|&w| w != 0) {
        buf = *seed;
    }
    let mut inp = [0u32; 8];
    let mut p = name;
    loop {
        str2hashbuf(p, &mut inp);
        half_md4(&mut buf, &inp);
        if p.len() <= 32 {
            break;
        }
        p = &p[32..];
    }
    let mut major = buf[1] & !1;
    // 0x7fffffff << 1 is the end-of-directory cookie for 32-bit hashes (EXT4_HTREE_EOF_32BIT).
    if major == 0x7fff_ffff << 1 {
        major = (0x7fff_ffff - 1) << 1;
    }
    (major, buf[2])
}
