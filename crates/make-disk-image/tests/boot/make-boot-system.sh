#!/usr/bin/env bash
# make-boot-system.sh OUTDIR [x86_64|aarch64] — a stand-in NixOS system that really boots,
# built by real Nix into a chroot store (OUTDIR/root), for the boot tests:
#   - linux:   Debian's cloud kernel (x86_64: the installed linux-image-cloud-amd64;
#              aarch64: linux-image-cloud-arm64 fetched with apt-get download and unpacked,
#              nothing arm64 is installed), as $out/bzImage or $out/Image;
#   - initrd:  busybox (busybox-static of the architecture) + the virtio modules; its /init
#              mounts the filesystem labelled "nixos", prints the marker file only the root
#              holds and the kernel command line on the serial console, and powers off;
#   - toplevel: init, kernel, initrd links and a bootspec v1 boot.json;
#   - OUTDIR/closure-info: nixpkgs' closureInfo of the toplevel (store-paths, registration);
#   - aarch64: OUTDIR/arm64 also holds the target's systemd-boot-efi and grub-efi-arm64-bin
#     (usr/lib/systemd/boot/efi/systemd-bootaa64.efi, usr/lib/grub/arm64-efi).
# Needs root (the chroot store's sandbox), nix-bin, jq, cpio; x86_64 also busybox-static and
# the kernel; aarch64 needs `dpkg --add-architecture arm64` and apt access (scripts/test.sh).
set -euo pipefail
export LC_ALL=C
umask 022
OUT="$(realpath -m "${1:?usage: make-boot-system.sh OUTDIR [x86_64|aarch64]}")"
ARCH="${2:-x86_64}"
mkdir -p "$OUT"
case "$ARCH" in
  x86_64)
    KVER="$(ls /lib/modules | grep -- '-cloud-amd64$' | sort -V | tail -n1 || true)"
    [ -n "$KVER" ] && [ -f "/boot/vmlinuz-$KVER" ] || { echo "no linux-image-cloud-amd64 kernel installed" >&2; exit 1; }
    FILES=/ KERNEL_FILE=bzImage CONSOLE=ttyS0
    BB=/bin/busybox
    file -L "$BB" | grep -q 'statically linked' || { echo "$BB is not static; install busybox-static" >&2; exit 1; }
    EXTRA_MODS=""
    ;;
  aarch64)
    # The packages, fetched once into OUTDIR/debs and unpacked into OUTDIR/arm64.
    FILES="$OUT/arm64"
    if [ ! -f "$FILES/.done" ]; then
      mkdir -p "$OUT/debs" && rm -rf "$FILES"
      meta="$(apt-cache depends linux-image-cloud-arm64:arm64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}')"
      [ -n "$meta" ] || { echo "apt knows no linux-image-cloud-arm64:arm64; run: dpkg --add-architecture arm64 && apt-get update" >&2; exit 1; }
      # The target's boot loaders too: systemd-bootaa64.efi and GRUB's arm64-efi modules.
      pkgs="$meta busybox-static:arm64 systemd-boot-efi:arm64 grub-efi-arm64-bin:arm64"
      # shellcheck disable=SC2086 # a word list
      (cd "$OUT/debs" && apt-get download -q $pkgs >/dev/null 2>&1) \
        || { echo "apt-get download $pkgs failed" >&2; exit 1; }
      for d in "$OUT"/debs/*.deb; do dpkg-deb -x "$d" "$FILES"; done
      touch "$FILES/.done"
    fi
    KVER="$(ls "$FILES/lib/modules" | sort -V | tail -n1)"
    KERNEL_FILE=Image CONSOLE=ttyAMA0
    BB="$FILES/bin/busybox"
    # QEMU's virt machine has virtio-mmio transports besides PCI.
    EXTRA_MODS="virtio_mmio"
    ;;
  *) echo "unknown architecture '$ARCH' (x86_64 or aarch64)" >&2; exit 1 ;;
esac
NIX_SYSTEM="$ARCH-linux"

rm -rf "$OUT/build"
mkdir -p "$OUT/build/initrd/"{bin,dev,proc,sys,mnt,lib/modules} "$OUT/root"
B="$OUT/build"
cp "$FILES/boot/vmlinuz-$KVER" "$B/$KERNEL_FILE"
cp "$BB" "$B/initrd/bin/busybox"
# In dependency order (modprobe --show-depends virtio_pci virtio_blk).
MODS="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci $EXTRA_MODS virtio_blk"
for m in $MODS; do
  f="$(find "$FILES/lib/modules/$KVER/kernel/drivers" -name "$m.ko*" | head -n1)"
  [ -n "$f" ] || { echo "module $m not found for $KVER" >&2; exit 1; }
  case "$f" in
    *.xz) xz -dc "$f" >"$B/initrd/lib/modules/$m.ko" ;;
    *.zst) zstd -qdc "$f" >"$B/initrd/lib/modules/$m.ko" ;;
    *) cp "$f" "$B/initrd/lib/modules/$m.ko" ;;
  esac
done
cat >"$B/initrd/init" <<INIT
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $MODS; do insmod /lib/modules/\$m.ko || echo "MDI-BOOT-NOTE: insmod \$m failed"; done
i=0
while ! dev=\$(findfs LABEL=nixos 2>/dev/null); do
  i=\$((i+1)); [ \$i -gt 100 ] && { echo "MDI-BOOT-FAIL: no filesystem labelled nixos; block devices: \$(ls /sys/class/block)"; poweroff -f; }
  sleep 0.1
done
mount -t ext4 -o ro "\$dev" /mnt || echo "MDI-BOOT-FAIL: mount \$dev"
echo "MDI-BOOT-CMDLINE: \$(cat /proc/cmdline)"
echo "MDI-BOOT-MARKER: \$(cat /mnt/boot-marker 2>&1)"
poweroff -f
INIT
chmod 0755 "$B/initrd/init"
(cd "$B/initrd" && find . | sort | cpio -o -H newc --quiet | gzip -9n) >"$B/initrd.gz"

cat >"$B/system.nix" <<'NIX'
{ buildDir, system, kernelFile, console }:
let
  # Builders run the host's /bin/sh: the derivations are for the build machine, whatever
  # system the stand-in boots on.
  sh = script: extra: derivation ({ system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-eu" "-c" script ]; PATH = "/usr/bin:/bin"; } // extra);
  linux = sh "mkdir $out && cp $src $out/${kernelFile}" { name = "linux-boot-test"; src = /. + (buildDir + "/" + kernelFile); };
  initrd = sh "mkdir $out && cp $src $out/initrd" { name = "initrd-boot-test"; src = /. + (buildDir + "/initrd.gz"); };
  # bootspec v1 of one generation (keys sorted, as NixOS writes it with jq --sort-keys).
  bootJson = params: ''
    jq -n --sort-keys --arg t "$out" '{"org.nixos.bootspec.v1": {"system": "${system}",
      "kernel": "${linux}/${kernelFile}", "initrd": "${initrd}/initrd",
      "kernelParams": ${params},
      "label": "NixOS boot-test (Linux)", "toplevel": $t, "init": ($t + "/init")}}' '';
  stage2 = ''
    ln -s ${linux}/${kernelFile} $out/kernel
    ln -s ${initrd}/initrd $out/initrd
    printf '#!/bin/sh\necho stage 2 stand-in\n' >$out/init
    chmod 0755 $out/init
  '';
  # A specialisation: the same kernel, another command line.
  alt = sh ''
    mkdir $out
    ${stage2}
    ${bootJson ''["console=${console}", "panic=-1", "loglevel=4", "mdi.specialisation=alt"]''} >$out/boot.json
  '' { name = "nixos-system-boot-test-alt"; };
  toplevel = sh ''
    mkdir -p $out/specialisation
    ${stage2}
    ln -s ${alt} $out/specialisation/alt
    ${bootJson ''["console=${console}", "panic=-1", "loglevel=4"]''} \
      | jq --sort-keys --slurpfile alt ${alt}/boot.json '. + {"org.nixos.specialisation.v1": {"alt": $alt[0]}}' >$out/boot.json
  '' { name = "nixos-system-boot-test"; };
  closureInfo = sh ''
    export PATH=/usr/bin:/bin
    attrs=.attrs.json
    [ -e "$attrs" ] || attrs="$NIX_ATTRS_JSON_FILE"
    out="$(jq -r .outputs.out <"$attrs")"
    mkdir "$out"
    jq -r '.closure | map([.path, .narHash, .narSize, "", (.references | length)] + .references) | add | map("\(.)\n") | add' <"$attrs" | head -n -1 >"$out/registration"
    jq -r '.closure[].path' <"$attrs" >"$out/store-paths"
  '' { name = "closure-info"; __structuredAttrs = true; exportReferencesGraph.closure = [ toplevel ]; };
in { inherit toplevel closureInfo; }
NIX

mkdir -p "$B/nix-conf"
cat >"$B/nix-conf/nix.conf" <<EOF2
build-users-group =
sandbox = true
sandbox-fallback = false
sandbox-paths = /bin /usr /lib /lib64
substitute = false
substituters =
require-sigs = false
experimental-features = nix-command
EOF2
export NIX_CONF_DIR="$B/nix-conf" NIX_USER_CONF_FILES="$B/nix-conf/nix.conf"
unset NIX_REMOTE NIX_PATH NIX_STORE_DIR NIX_STATE_DIR NIX_LOG_DIR NIX_STORE 2>/dev/null || true
nix-build --store "$OUT/root" "$B/system.nix" --argstr buildDir "$B" --argstr system "$NIX_SYSTEM" --argstr kernelFile "$KERNEL_FILE" --argstr console "$CONSOLE" -A toplevel -A closureInfo --no-out-link >"$B/out" 2>"$B/log" \
  || { tail -n 30 "$B/log" >&2; exit 1; }
TOP="$(grep -v -- '-closure-info$' "$B/out" | tail -n1)"
CI="$(grep -- '-closure-info$' "$B/out" | tail -n1)"
rm -rf "$OUT/closure-info"
mkdir "$OUT/closure-info"
cp "$OUT/root$CI/registration" "$OUT/root$CI/store-paths" "$OUT/closure-info/"
echo "$TOP" >"$OUT/closure-info/toplevel"
echo "$KVER" >"$OUT/kernel-version"
