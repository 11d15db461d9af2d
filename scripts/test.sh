#!/usr/bin/env bash
# The whole test suite on a fresh Debian 12 machine: installs the oracles the tests use
# (docs/design.md §7) and the corpus generator's needs, then runs every test.
#
# As root it installs with apt-get and pip first; as any other user it installs nothing and
# runs every test that does not need root (each test that cannot run says why in one line).
set -euo pipefail
cd "$(dirname "$0")/.."

# QEMU comes from bookworm-backports: Debian 12 machines often ship qemu-utils 10 from there,
# and bookworm's qemu-system-* 7.2 cannot be installed beside it (qemu-system-common 7.2
# conflicts with qemu-utils 10). The pin covers the QEMU family only, so nothing else on the
# machine moves to backports, and it works the same on a machine with no QEMU at all.
setup_qemu_backports() {
  local codename
  codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
  [ "$codename" = bookworm ] || return 0
  if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    cat >/etc/apt/sources.list.d/mdi-bookworm-backports.sources <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  fi
  cat >/etc/apt/preferences.d/mdi-qemu-backports.pref <<'PREF'
# make-disk-image's test command: the QEMU family from bookworm-backports, so that
# qemu-utils and qemu-system-* have one version (the rest of the system stays on bookworm).
Package: qemu-* seabios ipxe-qemu
Pin: release n=bookworm-backports
Pin-Priority: 500
PREF
}

if [ "$(id -u)" = 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  setup_qemu_backports
  # The aarch64 boot tests unpack Debian's arm64 kernel, busybox, systemd-boot and GRUB
  # modules (apt-get download + dpkg-deb -x; nothing arm64 is installed), so apt must know
  # the architecture.
  dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
  apt-get update -qq
  # e2fsprogs: e2fsck, debugfs, dumpe2fs; attr/acl: getfattr, getfacl; util-linux:
  # mount, losetup, blkid; fdisk: sfdisk; gdisk: sgdisk; dosfstools: fsck.fat; mtools:
  # mdir, mcopy; qemu-utils: qemu-img; sqlite3; nix-bin + jq: the store corpus
  # (scripts/make-store-corpus). Boot tests: grub-pc-bin + grub-efi-amd64-bin + grub-common
  # (grub-mkimage), systemd-boot-efi, ovmf, qemu-system-x86, linux-image-cloud-amd64 +
  # busybox-static + cpio (the stand-in system), python3-pip (virt-fw-vars from PyPI's
  # virt-firmware). Other root filesystems: btrfs-progs xfsprogs erofs-utils squashfs-tools
  # fakeroot. faketime: the reproducibility matrix builds under another wall clock.
  # aarch64 boots: qemu-system-arm with AAVMF (qemu-efi-aarch64) and U-Boot (u-boot-qemu).
  # dm-verity, UKI and Authenticode oracles: veritysetup (cryptsetup-bin), sbverify
  # (sbsigntool), openssl, pefile (python3-pefile), objdump (binutils).
  apt-get install -y -qq --no-install-recommends \
    e2fsprogs attr acl util-linux mount fdisk gdisk dosfstools mtools qemu-utils sqlite3 \
    nix-bin jq ca-certificates file xz-utils zstd \
    grub-pc-bin grub-efi-amd64-bin grub-efi-ia32-bin grub-common systemd-boot-efi ovmf qemu-system-x86 \
    linux-image-cloud-amd64 busybox-static cpio python3-pip \
    btrfs-progs xfsprogs erofs-utils squashfs-tools fakeroot faketime \
    qemu-system-arm qemu-efi-aarch64 u-boot-qemu \
    cryptsetup-bin sbsigntool openssl python3-pefile binutils >/dev/null
  # The Nix function tests mount a throw-away store over /nix in a private mount
  # namespace; Debian's nix-bin does not make the mount point (nix-setup-systemd would).
  mkdir -p /nix
  # Nothing may be left half-installed or held back.
  audit="$(dpkg --audit)"
  [ -z "$audit" ] || { printf '%s\n' "$audit" >&2; echo "dpkg --audit reports broken packages" >&2; exit 1; }
  if ! command -v virt-fw-vars >/dev/null; then
    python3 -m pip install -q --break-system-packages virt-firmware 2>/dev/null \
      || python3 -m pip install -q virt-firmware
  fi
else
  echo "note: not root: nothing is installed; tests that need root say SKIP and why" >&2
fi

# The oracles (e2fsck, debugfs, sfdisk, mkfs.*, losetup) live in /usr/sbin and /sbin, which
# are not on an ordinary user's PATH on Debian.
export PATH="$PATH:/usr/sbin:/sbin"

# ukify, the oracle for our UKIs, is not in Debian 12: Debian 13's systemd-ukify (a Python
# script) runs with bookworm's python3-pefile. Fetched with a private apt configuration into
# target/ukify (nothing is installed, the system's apt sources are untouched); the UKI tests
# say SKIP when it cannot be had.
fetch_ukify() {
  local d="$PWD/target/ukify"
  [ -x "$d/x/usr/lib/systemd/ukify" ] && { export MDI_UKIFY="$d/x/usr/lib/systemd/ukify"; return 0; }
  mkdir -p "$d"/{lists/partial,cache/archives/partial,src}
  printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' >"$d/src/trixie.sources"
  local o=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$d/src" -o "Dir::State::Lists=$d/lists"
           -o "Dir::Cache=$d/cache" -o Debug::NoLocking=1)
  if apt-get "${o[@]}" -qq update >/dev/null 2>&1 \
      && (cd "$d" && apt-get "${o[@]}" -qq download systemd-ukify >/dev/null 2>&1) \
      && dpkg-deb -x "$d"/systemd-ukify_*.deb "$d/x"; then
    export MDI_UKIFY="$d/x/usr/lib/systemd/ukify"
  else
    echo "note: could not fetch Debian 13's systemd-ukify; the ukify comparison will SKIP" >&2
  fi
}
mkdir -p target
fetch_ukify

# Tests that cannot run here write one line each (test: why) to this file; cargo test hides
# the stderr of passing tests, so the list is printed at the end, pass or fail.
export MDI_SKIP_LOG="$PWD/target/skipped-tests.txt"
mkdir -p target
: >"$MDI_SKIP_LOG"
report_skips() {
  if [ -s "$MDI_SKIP_LOG" ]; then
    echo "Skipped here ($(sort -u "$MDI_SKIP_LOG" | wc -l) lines; each says why):" >&2
    sort -u "$MDI_SKIP_LOG" | sed 's/^/  SKIP /' >&2
  fi
}
trap report_skips EXIT

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --release -- -D warnings
cargo test --workspace --release --no-fail-fast
