#!/usr/bin/env bash
# store-image.sh — benchmark make-disk-image's store-only ext4 image against the physical
# floor, systemd-repart and `mkfs.ext4 -d`, on the same Nix store corpus.
#
#   bench/store-image.sh [--preset large|small|tiny] [--runs 3] [--work DIR] [--cache warm|cold] [--cache warm|cold]
#
# See bench/README.md for what each pipeline does and how to read the figures.

set -euo pipefail
export LC_ALL=C

PRESET=large
RUNS=3
CACHE=warm
WORK=/var/tmp/mdi-bench

# Fixed identifiers, so that repeated runs do the same work.
SEED_UUID=6a1e0c35-6f2c-4bd8-9a0b-1d4c6e2f3a51   # systemd-repart --seed
FS_UUID=44444444-4444-4444-8888-888888888888      # mkfs.ext4 -U
HASH_SEED=66666666-6666-4666-8666-666666666666    # mkfs.ext4 -E hash_seed=

prog=store-image.sh
die()  { echo "$prog: error: $*" >&2; exit 1; }
note() { echo "$prog: $*" >&2; }

usage() {
  cat <<'EOF'
usage: bench/store-image.sh [--preset large|small|tiny] [--runs N] [--work DIR] [--cache warm|cold] [--cache warm|cold]

  --preset P   corpus preset (default: large; large is built with --no-huge-sparse)
  --runs N     timed runs per pipeline (default: 3); the median is reported
  --cache warm|cold  page cache before each timed run: the pipeline's inputs just read
               (warm, default) or every cache dropped (cold)
  --work DIR   work folder: .deb cache, corpus, scratch images (default: /var/tmp/mdi-bench)

Must run as root (systemd-repart attaches loop devices and mounts; the corpus generator
uses Nix's sandbox).
EOF
}

while [ $# -gt 0 ]; do
  case "$1" in
    --preset) PRESET="${2:?--preset needs a value}"; shift 2 ;;
    --preset=*) PRESET="${1#*=}"; shift ;;
    --runs) RUNS="${2:?--runs needs a value}"; shift 2 ;;
    --cache) CACHE="${2:?--cache needs warm or cold}"; shift 2 ;;
    --runs=*) RUNS="${1#*=}"; shift ;;
    --work) WORK="${2:?--work needs a folder}"; shift 2 ;;
    --work=*) WORK="${1#*=}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

case "$PRESET" in tiny|small|large) ;; *) die "--preset must be large, small or tiny (got '$PRESET')" ;; esac
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || die "--runs must be a positive integer (got '$RUNS')"
case "$CACHE" in warm|cold) ;; *) die "--cache must be warm or cold (got '$CACHE')" ;; esac

if [ "$(id -u)" -ne 0 ]; then
  die "must run as root: systemd-repart needs root to attach loop devices and mount the
new file system, and the corpus generator (make-store-corpus) needs root for Nix's build
sandbox. Rerun with sudo."
fi

# ---------------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------------
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$SCRIPT_DIR/.." && pwd)"
GEN="$REPO/scripts/make-store-corpus"
MDI="$REPO/target/release/make-disk-image"
GNU_TIME=/usr/bin/time

[ -x "$GEN" ] || die "corpus generator not found at $GEN (scripts/make-store-corpus in the repository)"

missing=()
if ! { [ -x "$GNU_TIME" ] && "$GNU_TIME" --version 2>&1 | grep -q 'GNU'; }; then missing+=(time); fi
command -v systemd-repart >/dev/null || missing+=(systemd-repart)
command -v mkfs.ext4 >/dev/null      || missing+=(e2fsprogs)
command -v fakeroot >/dev/null       || missing+=(fakeroot)
command -v faketime >/dev/null       || missing+=(faketime)
command -v perl >/dev/null           || missing+=(perl-base)
command -v losetup >/dev/null        || missing+=(mount)
if [ ${#missing[@]} -gt 0 ]; then
  die "missing tools; install them with: apt-get install -y ${missing[*]}"
fi

mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"
CORPUS="$WORK/corpus-$PRESET"
STORE="$CORPUS/root/nix/store"

# ---------------------------------------------------------------------------------------
# Scratch folder and cleanup
# ---------------------------------------------------------------------------------------
SCRATCH="$(mktemp -d -p "$WORK" run.XXXXXX)"

detach_loops_of() {   # detach loop devices (and unmount their mounts) backed by file $1
  local f="$1" dev mp
  [ -e "$f" ] || return 0
  for dev in $(losetup -j "$f" -O NAME -n 2>/dev/null); do
    for mp in $(findmnt -rn -o TARGET -S "$dev" 2>/dev/null) \
              $(lsblk -rn -o MOUNTPOINT "$dev" 2>/dev/null); do
      [ -n "$mp" ] && umount -l "$mp" 2>/dev/null || true
    done
    losetup -d "$dev" 2>/dev/null || true
  done
}

cleanup() {
  local rc=$?
  set +e
  if [ -d "$SCRATCH" ]; then
    while IFS= read -r -d '' img; do detach_loops_of "$img"; done \
      < <(find "$SCRATCH" -maxdepth 3 -name '*.img' -print0 2>/dev/null)
    rm -rf -- "$SCRATCH"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------
# Inputs: corpus and make-disk-image binary
# ---------------------------------------------------------------------------------------
gen_args=(--cache "$WORK/debs")
[ "$PRESET" = large ] && gen_args+=(--no-huge-sparse)
note "corpus: $GEN ${gen_args[*]} $CORPUS $PRESET"
t0=$(date +%s)
if ! "$GEN" "${gen_args[@]}" "$CORPUS" "$PRESET" >"$SCRATCH/corpus.log" 2>&1; then
  tail -n 30 "$SCRATCH/corpus.log" >&2
  die "corpus generator failed (see the lines above)"
fi
note "corpus ready in $(( $(date +%s) - t0 )) s"
[ -d "$STORE" ] && [ -d "$CORPUS/closure-info" ] || die "corpus has no root/nix/store or closure-info/"

if [ ! -x "$MDI" ]; then
  note "building make-disk-image (cargo build --release)"
  (cd "$REPO" && cargo build --release) || die "cargo build --release failed"
fi
[ -x "$MDI" ] || die "$MDI still missing after cargo build"

# ---------------------------------------------------------------------------------------
# Copy of the store for mkfs.ext4 -d without symlinks of >= 1024 bytes
# ---------------------------------------------------------------------------------------
# e2fsprogs 1.47.0's populate_fs fails on symlink targets of 1024 bytes or more. A full
# copy (cp -a), not a hard-link copy (cp -al): with -al every file would have st_nlink >= 2,
# and mke2fs -d then runs its hard-link lookup (a linear list) for every file.
MKFS_TREE="$SCRATCH/mkfs-tree"
note "preparing the mkfs.ext4 -d tree (cp -a of the store, minus long symlinks)"
cp -a -- "$STORE" "$MKFS_TREE"
find "$MKFS_TREE" -type l -print0 \
  | perl -0ne 'chomp; my $t = readlink($_); print "$_\0" if defined $t && length($t) >= 1024' \
  > "$SCRATCH/long-symlinks"
LONG_SYMLINKS=$(tr -cd '\0' < "$SCRATCH/long-symlinks" | wc -c)
if [ "$LONG_SYMLINKS" -gt 0 ]; then
  # Remove them, then put back the parent folders' mtime (1, as Nix left it).
  perl -0ne 'chomp; unlink($_) or die "unlink $_: $!\n";
             (my $d = $_) =~ s{/[^/]*\z}{}; utime(1, 1, $d) or die "utime $d: $!\n"' \
    "$SCRATCH/long-symlinks"
fi
sync

# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------
read_all_inputs() {   # read every regular file's bytes once
  find "$@" -type f -print0 | xargs -0r cat > /dev/null
}

# Every pipeline starts from the same page-cache state: its inputs just read (warm), or
# nothing cached at all (cold). Without this the order of the pipelines decides who pays
# for disk reads (this VM's DAMON reclaim evicts the corpus within seconds).
prepare() {
  sync
  if [ "$CACHE" = cold ]; then
    echo 3 > /proc/sys/vm/drop_caches
  else
    read_all_inputs "$@"
  fi
}

# timed NAME LOG cmd...: runs cmd under GNU time; on success appends "secs kib" to
# $SCRATCH/NAME.times and returns 0; on failure returns the command's status.
timed() {
  local name="$1" log="$2"; shift 2
  local tf="$SCRATCH/time.out" rc=0
  sync
  "$GNU_TIME" -f '%e %M' -o "$tf" "$@" >"$log" 2>&1 || rc=$?
  if [ "$rc" -ne 0 ]; then return "$rc"; fi
  tail -n 1 "$tf" >> "$SCRATCH/$name.times"
}

median() { sort -n | awk '{v[NR]=$1} END {if (NR==0) exit 1; if (NR%2) printf "%.2f", v[(NR+1)/2]; else printf "%.2f", (v[NR/2]+v[NR/2+1])/2}'; }
maxcol2() { awk 'BEGIN{m=0} $2>m{m=$2} END{printf "%d", m}'; }
mib() { awk -v b="$1" 'BEGIN{printf "%.1f", b/1048576}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b+0 > 0) printf "%.2fx", a/b; else printf "n/a" }'; }
group() { echo "$1" | sed -e ':a' -e 's/\([0-9]\)\([0-9]\{3\}\)\($\|,\)/\1,\2\3/' -e 'ta'; }

stat_of() { sed -n "s/^$1=//p" "$CORPUS/meta/stats.txt" | head -n1; }

# ---------------------------------------------------------------------------------------
# Pipelines
# ---------------------------------------------------------------------------------------
MDI_OUT="$SCRATCH/mdi-out"
FLOOR_IMG="$SCRATCH/floor.img"
REPART_IMG="$SCRATCH/repart.img"
REPART_DEFS="$SCRATCH/repart.d"
MKFS_IMG="$SCRATCH/mkfs.img"

IMG_SIZE=""      # make-disk-image's image: virtual size
IMG_ALLOC=""     # and allocated (non-hole) bytes
declare -A FAILED=()

run_mdi() {
  rm -rf -- "$MDI_OUT"
  prepare "$STORE"
  timed mdi "$SCRATCH/mdi.log" \
    "$MDI" build --closure-info "$CORPUS/closure-info" --store-root "$CORPUS/root" \
      --only-nix-store true --partition-table-type none -o "$MDI_OUT" \
    || { cat "$SCRATCH/mdi.log" >&2; die "make-disk-image failed"; }
  [ -f "$MDI_OUT/nixos.img" ] || die "make-disk-image wrote no $MDI_OUT/nixos.img"
  IMG_SIZE=$(stat -c %s "$MDI_OUT/nixos.img")
  IMG_ALLOC=$(du -B1 "$MDI_OUT/nixos.img" | cut -f1)
  rm -rf -- "$MDI_OUT"
}

run_floor() {
  rm -f -- "$FLOOR_IMG"
  prepare "$STORE"
  # Read every input byte once, then write the image's allocated bytes and fsync.
  timed floor "$SCRATCH/floor.log" bash -c '
      set -euo pipefail
      find "$1" -type f -print0 | xargs -0r cat > /dev/null
      dd if=/dev/zero of="$2" bs=4M count="$3" iflag=count_bytes conv=fsync status=none
    ' floor "$STORE" "$FLOOR_IMG" "$IMG_ALLOC" \
    || { cat "$SCRATCH/floor.log" >&2; die "floor pipeline failed"; }
  rm -f -- "$FLOOR_IMG"
}

REPART_PART=0 REPART_DISK=0
setup_repart() {
  REPART_PART=$(( (IMG_SIZE + 1048575) / 1048576 * 1048576 ))
  REPART_DISK=$(( REPART_PART + 4 * 1048576 ))   # room for the GPT (1 MiB alignment + backup)
  mkdir -p "$REPART_DEFS"
  cat > "$REPART_DEFS/10-nix-store.conf" <<EOF
[Partition]
Type=linux-generic
Label=nix-store
Format=ext4
CopyFiles=$STORE:/
SizeMinBytes=$REPART_PART
SizeMaxBytes=$REPART_PART
EOF
}

run_repart() {
  [ -n "${FAILED[repart]:-}" ] && return 0
  rm -f -- "$REPART_IMG"
  prepare "$STORE"
  if ! timed repart "$SCRATCH/repart.log" \
      systemd-repart --no-pager --definitions="$REPART_DEFS" --empty=create \
        --size="$REPART_DISK" --dry-run=no --seed="$SEED_UUID" "$REPART_IMG"; then
    FAILED[repart]=1
    note "systemd-repart failed; its output:"
    sed 's/^/    /' "$SCRATCH/repart.log" >&2
  fi
  detach_loops_of "$REPART_IMG"
  rm -f -- "$REPART_IMG"
}

run_mkfs() {
  [ -n "${FAILED[mkfs]:-}" ] && return 0
  rm -f -- "$MKFS_IMG"
  prepare "$MKFS_TREE"
  if ! timed mkfs "$SCRATCH/mkfs.log" \
      faketime '2000-01-01 00:00:00' fakeroot \
        mkfs.ext4 -q -F -b 4096 -I 256 -U "$FS_UUID" -E hash_seed="$HASH_SEED" \
          -L nix-store -d "$MKFS_TREE" "$MKFS_IMG" "$(( IMG_SIZE / 4096 ))"; then
    FAILED[mkfs]=1
    note "mkfs.ext4 -d failed; its output:"
    sed 's/^/    /' "$SCRATCH/mkfs.log" >&2
  fi
  rm -f -- "$MKFS_IMG"
}

# ---------------------------------------------------------------------------------------
# Warm-up (untimed), then the runs, interleaved so that drift hits every pipeline alike
# ---------------------------------------------------------------------------------------
note "warm-up: reading the corpus and the mkfs tree once (untimed)"
read_all_inputs "$STORE" "$MKFS_TREE"
"$MDI" --help >/dev/null 2>&1 || true

for ((run = 1; run <= RUNS; run++)); do
  note "run $run/$RUNS: make-disk-image"
  run_mdi
  if [ "$run" -eq 1 ]; then setup_repart; fi
  note "run $run/$RUNS: floor"
  run_floor
  note "run $run/$RUNS: systemd-repart"
  run_repart
  note "run $run/$RUNS: mkfs.ext4 -d"
  run_mkfs
  sync
done

# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------
declare -A MED=() RSS=()
for p in mdi floor repart mkfs; do
  if [ -z "${FAILED[$p]:-}" ] && [ -s "$SCRATCH/$p.times" ]; then
    MED[$p]=$(median < "$SCRATCH/$p.times")
    RSS[$p]=$(maxcol2 < "$SCRATCH/$p.times")
  fi
done

label() {
  case "$1" in
    mdi) echo "make-disk-image" ;;
    floor) echo "floor (read+write+fsync)" ;;
    repart) echo "systemd-repart $(systemd-repart --version | awk 'NR==1{print $2}')" ;;
    mkfs) echo "mkfs.ext4 -d (fakeroot)" ;;
  esac
}

echo
echo "== store-only ext4 image benchmark: preset $PRESET, $RUNS run(s), $CACHE cache, $(nproc) CPUs, $(uname -r)"
echo "input:  $(stat_of store_paths) store paths, $(group "$(stat_of entries)") entries" \
     "($(group "$(stat_of regular_files)") files, $(group "$(stat_of directories)") dirs," \
     "$(group "$(stat_of symlinks)") symlinks), $(group "$(stat_of apparent_bytes)") bytes" \
     "apparent, $(group "$(stat_of disk_bytes)") on disk, NAR total $(group "$(stat_of total_nar_size)")"
echo "image:  $(group "$IMG_SIZE") bytes ($(mib "$IMG_SIZE") MiB), $(group "$IMG_ALLOC") allocated" \
     "($(mib "$IMG_ALLOC") MiB; the floor writes this much)"
echo "repart: partition $(mib "$REPART_PART") MiB in a $(mib "$REPART_DISK") MiB GPT disk"
echo "mkfs:   tree without $LONG_SYMLINKS symlink(s) of >= 1024 bytes (e2fsprogs 1.47.0 cannot store them)"
echo
printf '%-28s %10s %14s %10s %12s   %s\n' pipeline "median s" "peak RSS MiB" "vs floor" "vs repart" "all runs (s)"
printf '%-28s %10s %14s %10s %12s   %s\n' -------- -------- ------------ -------- --------- ------------
for p in mdi floor repart mkfs; do
  if [ -n "${MED[$p]:-}" ]; then
    printf '%-28s %10s %14s %10s %12s   %s\n' "$(label "$p")" "${MED[$p]}" \
      "$(awk -v k="${RSS[$p]}" 'BEGIN{printf "%.1f", k/1024}')" \
      "$(ratio "${MED[$p]}" "${MED[floor]:-0}")" "$(ratio "${MED[$p]}" "${MED[repart]:-0}")" \
      "$(awk '{printf "%s%s", (NR>1 ? " " : ""), $1}' "$SCRATCH/$p.times")"
  else
    printf '%-28s %10s %14s %10s %12s   %s\n' "$(label "$p")" FAILED - - - -
  fi
done
echo
vs_floor=$(ratio "${MED[mdi]}" "${MED[floor]:-0}")
vs_repart=$(ratio "${MED[mdi]}" "${MED[repart]:-0}")
if [ "$vs_repart" = n/a ]; then vs_repart="systemd-repart n/a (it failed)"; else vs_repart="$vs_repart systemd-repart"; fi
echo "make-disk-image: $vs_floor floor, $vs_repart (targets: <= 1.25x floor, <= 0.75x repart)"
floor_ok=$(awk -v a="${MED[mdi]}" -v b="${MED[floor]:-0}" 'BEGIN{print (b>0 && a/b <= 1.25) ? "met" : "missed"}')
if [ -n "${MED[repart]:-}" ]; then
  repart_ok=$(awk -v a="${MED[mdi]}" -v b="${MED[repart]}" 'BEGIN{print (a/b <= 0.75) ? "met" : "missed"}')
else
  repart_ok="not measured"
fi
echo "targets: floor $floor_ok, repart $repart_ok"
