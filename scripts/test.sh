#!/usr/bin/env bash
# The whole test suite on a fresh Debian 12 machine: installs the oracles the tests use
# (DESIGN §7) and the corpus generator's needs, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # e2fsprogs: e2fsck, debugfs, dumpe2fs; attr/acl: getfattr, getfacl; util-linux:
  # mount, losetup, blkid; fdisk: sfdisk; gdisk: sgdisk; dosfstools: fsck.fat; mtools:
  # mdir, mcopy; qemu-utils: qemu-img; sqlite3; nix-bin + jq: the store corpus (../shared/corpus).
  apt-get install -y -qq --no-install-recommends \
    e2fsprogs attr acl util-linux mount fdisk gdisk dosfstools mtools qemu-utils sqlite3 \
    nix-bin jq ca-certificates >/dev/null
else
  echo "note: not root; the tests that need loop mounts, mknod or the Nix corpus will say SKIP" >&2
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --release -- -D warnings
cargo test --workspace --release
