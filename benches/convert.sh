#!/usr/bin/env bash
# zcow-img convert vs qemu-img convert on the same data, one run: wall time
# (median of 3). Prints a Markdown table.
# Usage: benches/convert.sh [SIZE_MIB]   (needs qemu-utils; default 1024 MiB)
# Files live in /dev/shm (tmpfs) so disk writeback does not swamp the copy
# paths being compared; set ZCOW_BENCH_DIR to measure another filesystem.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q --bins
Z=$PWD/target/release
size=${1:-1024}
dir=$(mktemp -d "${ZCOW_BENCH_DIR:-/dev/shm}/zcow-convert-bench.XXXXXX")
trap 'rm -rf "$dir"' EXIT

# Source: random data in three of every four 4 MiB blocks, the rest a hole.
qemu-img create -q -f raw "$dir/src.raw" "${size}M"
for ((i = 0; i < size / 4; i++)); do
  if ((i % 4 != 3)); then
    dd if=/dev/urandom of="$dir/src.raw" bs=4M count=1 seek="$i" conv=notrunc status=none
  fi
done

median() { # cmd... -> "wall cpu" seconds (medians of 3; cpu = user + sys,
  # which a loaded machine disturbs less than wall time). The output file is
  # removed before each run.
  local ws=() cs=() out
  for _ in 1 2 3; do
    rm -f "$dir/out"
    /usr/bin/time -o "$dir/time" -f '%e %U %S' "$@" >/dev/null
    out=$(tail -1 "$dir/time")
    read -r w u sy <<<"$out"
    ws+=("$w"); cs+=("$(echo "$u + $sy" | bc -l)")
  done
  echo "$(printf '%s\n' "${ws[@]}" | sort -g | sed -n 2p) $(printf '%s\n' "${cs[@]}" | sort -g | sed -n 2p)"
}

zoned_opts=zone.mode=host-managed,zone.size=64M
"$Z/zcow-img" convert -O qcow2 -o "$zoned_opts" "$dir/src.raw" "$dir/zoned.qcow2"
qemu-img convert -O qcow2 "$dir/src.raw" "$dir/plain.qcow2"

read -r q qc < <(median qemu-img convert -f raw -O qcow2 "$dir/src.raw" "$dir/out")
read -r zr zrc < <(median "$Z/zcow-img" convert -f raw -O qcow2 -o "$zoned_opts" "$dir/src.raw" "$dir/out")
read -r zp zpc < <(median "$Z/zcow-img" convert -f raw -O qcow2 "$dir/src.raw" "$dir/out")
read -r zo zoc < <(median "$Z/zcow-img" convert -O raw "$dir/zoned.qcow2" "$dir/out")
read -r qo qoc < <(median qemu-img convert -f qcow2 -O raw "$dir/plain.qcow2" "$dir/out")

echo "Baseline: qemu-img convert raw -> plain qcow2, ${q} s wall, ${qc} s CPU (${size} MiB, 3/4 data)"
echo
echo "| copy | wall | CPU (user+sys) | wall speed vs qemu-img | CPU vs qemu-img |"
echo "|---|---|---|---|---|"
row() { printf '| %s | %.3f s | %.3f s | %.2f× | %.2f× |\n' "$1" "$2" "$3" "$(echo "$q / $2" | bc -l)" "$(echo "$qc / $3" | bc -l)"; }
row "zcow-img convert raw -> zoned qcow2 (64 MiB zones)" "$zr" "$zrc"
row "zcow-img convert raw -> plain qcow2" "$zp" "$zpc"
row "zcow-img convert zoned qcow2 -> raw" "$zo" "$zoc"
row "qemu-img convert plain qcow2 -> raw (reference)" "$qo" "$qoc"
