#!/usr/bin/env bash
# qcow2-compressed.sh — compressed qcow2 of a store-only image of the corpus:
# make-disk-image writing qcow2-compressed directly, versus the nixpkgs path (a raw build,
# then `qemu-img convert -c -O qcow2`), deflate and zstd, on the same input in the same run.
#
#   bench/qcow2-compressed.sh [--preset large|small|tiny] [--runs 3] [--work DIR]
#
# Prints median wall times, ratios and both output sizes. Needs root (the corpus generator)
# and qemu-img. The raw build of the nixpkgs path is make-disk-image's own (the fastest raw
# builder we have), so the ratio is a lower bound on the gain over nixpkgs.
set -euo pipefail
PRESET=large RUNS=3 WORK=/var/tmp/mdi-bench
while [ $# -gt 0 ]; do
  case "$1" in
    --preset) PRESET="$2"; shift 2 ;;
    --runs) RUNS="$2"; shift 2 ;;
    --work) WORK="$2"; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" -eq 0 ] || { echo "must run as root (the corpus generator needs Nix's sandbox)" >&2; exit 1; }
command -v qemu-img >/dev/null || { echo "qemu-img missing: apt-get install qemu-utils" >&2; exit 1; }
REPO=$(cd "$(dirname "$0")/.." && pwd)
MDI="$REPO/target/release/make-disk-image"
[ -x "$MDI" ] || (cd "$REPO" && cargo build --release)
mkdir -p "$WORK"
CORPUS="$WORK/corpus-$PRESET"
extra=(); [ "$PRESET" = large ] && extra=(--no-huge-sparse)
"$REPO/scripts/make-store-corpus" --cache "$WORK/debs" "${extra[@]}" "$CORPUS" "$PRESET" >/dev/null
SCRATCH=$(mktemp -d "$WORK/qcow2-bench.XXXXXX")
trap 'rm -rf "$SCRATCH"' EXIT
common=(--closure-info "$CORPUS/closure-info" --store-root "$CORPUS/root" --only-nix-store true --partition-table-type none)

warm() { find "$CORPUS/root/nix/store" -type f -print0 | xargs -0r cat > /dev/null; sync; }
secs() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N); awk -v a="$s" -v b="$e" 'BEGIN{printf "%.2f", b-a}'; }
median() { sort -n | awk '{v[NR]=$1} END {if (NR%2) printf "%.2f", v[(NR+1)/2]; else printf "%.2f", (v[NR/2]+v[NR/2+1])/2}'; }

ours() {   # $1 = compression
  rm -rf "$SCRATCH/ours"
  "$MDI" build "${common[@]}" --format qcow2-compressed --format-options "{\"compression\":\"$1\"}" -o "$SCRATCH/ours"
}
nixpkgs() {   # $1 = compression (qemu-img's name)
  rm -rf "$SCRATCH/raw" "$SCRATCH/nix.qcow2"
  "$MDI" build "${common[@]}" -o "$SCRATCH/raw"
  qemu-img convert -f raw -O qcow2 -c -o "compression_type=$1" "$SCRATCH/raw/nixos.img" "$SCRATCH/nix.qcow2"
  sync
}

echo "== compressed qcow2 benchmark: preset $PRESET, $RUNS run(s), $(nproc) CPUs, qemu-img $(qemu-img --version | head -1 | awk '{print $3}')"
for comp in deflate zstd; do
  qcomp=$([ "$comp" = deflate ] && echo zlib || echo zstd)
  : > "$SCRATCH/o.t"; : > "$SCRATCH/n.t"
  for ((r = 1; r <= RUNS; r++)); do
    warm; secs ours "$comp" >> "$SCRATCH/o.t"; echo >> "$SCRATCH/o.t"
    osize=$(stat -c %s "$SCRATCH/ours/nixos.qcow2")
    warm; secs nixpkgs "$qcomp" >> "$SCRATCH/n.t"; echo >> "$SCRATCH/n.t"
    nsize=$(stat -c %s "$SCRATCH/nix.qcow2")
  done
  qemu-img compare -f qcow2 -F qcow2 "$SCRATCH/ours/nixos.qcow2" "$SCRATCH/nix.qcow2" >/dev/null \
    || echo "WARNING: the two images differ" >&2
  o=$(grep . "$SCRATCH/o.t" | median); n=$(grep . "$SCRATCH/n.t" | median)
  printf '%-8s make-disk-image %6.2f s %6d MiB | raw + qemu-img convert -c %6.2f s %6d MiB | time %.2fx, size %.3fx (targets: <= 0.5x, <= 1x)\n' \
    "$comp" "$o" $((osize >> 20)) "$n" $((nsize >> 20)) "$(awk -v a="$o" -v b="$n" 'BEGIN{print a/b}')" "$(awk -v a="$osize" -v b="$nsize" 'BEGIN{print a/b}')"
  printf '%-8s exact sizes: make-disk-image %d bytes, qemu-img %d bytes (%+d)\n' "$comp" "$osize" "$nsize" $((osize - nsize))
done
