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
  # Boot tests (issue 6): grub-pc-bin + grub-efi-amd64-bin + grub-common (grub-mkimage),
  # systemd-boot-efi, ovmf, qemu-system-x86, linux-image-cloud-amd64 + busybox-static + cpio
  # (the stand-in system), python3-pip (virt-fw-vars from PyPI's virt-firmware).
  # Other root filesystems (issue 5): btrfs-progs xfsprogs erofs-utils squashfs-tools fakeroot.
  # faketime: the reproducibility matrix builds under another wall clock (issue 7).
  apt-get install -y -qq --no-install-recommends \
    e2fsprogs attr acl util-linux mount fdisk gdisk dosfstools mtools qemu-utils sqlite3 \
    nix-bin jq ca-certificates \
    grub-pc-bin grub-efi-amd64-bin grub-common systemd-boot-efi ovmf qemu-system-x86 \
    linux-image-cloud-amd64 busybox-static cpio python3-pip \
    btrfs-progs xfsprogs erofs-utils squashfs-tools fakeroot faketime >/dev/null
  if ! command -v virt-fw-vars >/dev/null; then
    python3 -m pip install -q --break-system-packages virt-firmware 2>/dev/null \
      || python3 -m pip install -q virt-firmware
  fi
else
  echo "note: not root; the tests that need loop mounts, mknod or the Nix corpus will say SKIP" >&2
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --release -- -D warnings
cargo test --workspace --release
