#!/usr/bin/env bash
# zcow-img check vs qemu-img check, same images, one run: wall time and
# CPU time (user + sys; medians of 3) and peak RSS (GNU time). Prints a
# Markdown table. Both checks run on one thread: on an idle machine wall
# time is the CPU time, on a loaded one the CPU time is the fair figure.
# Usage: benches/check.sh   (needs qemu-utils and /usr/bin/time)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
Z=$PWD/target/release
dir=$(mktemp -d /var/tmp/zcow-check-bench.XXXXXX)
trap 'rm -rf "$dir"' EXIT

measure() { # cmd... -> "seconds cpu_seconds maxrss_kib" (medians, max RSS of the runs)
  local ts=() cs=() rss=0 e u s r
  for _ in 1 2 3; do
    /usr/bin/time -o "$dir/time" -f '%e %U %S %M' "$@" >/dev/null 2>&1 || true
    read -r e u s r < <(tail -1 "$dir/time")
    ts+=("$e"); cs+=("$(echo "$u + $s" | bc)"); [ "$r" -gt "$rss" ] && rss=$r
  done
  echo "$(printf '%s\n' "${ts[@]}" | sort -g | sed -n 2p) $(printf '%s\n' "${cs[@]}" | sort -g | sed -n 2p) $rss"
}

row() { # name image [qemu-image]
  local q=${3:-$2}
  read -r zt zc zm < <(measure "$Z/zcow-img" check "$2")
  read -r qt qc qm < <(measure qemu-img check "$q")
  printf '| %s | %s s | %s s | %.2f | %.2f s | %.2f s | %.2f | %d MiB | %d MiB |\n' "$1" "$zt" "$qt" "$(echo "$zt / $qt" | bc -l)" \
    "$zc" "$qc" "$(echo "$zc / $qc" | bc -l)" $((zm / 1024)) $((qm / 1024))
}

echo "load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| image | zcow-img check | qemu-img check | time ratio | zcow CPU | qemu CPU | CPU ratio | zcow peak RSS | qemu peak RSS |"
echo "|---|---|---|---|---|---|---|---|---|"

# 64 GiB fully written: every cluster allocated and its 64 KiB of data on
# disk (preallocation=full writes them). Measured first and deleted at once:
# it needs 64 GiB of free disk.
need=$((65 * 1024 * 1024)) # KiB
if [ "$(df -k --output=avail "$dir" | tail -1)" -gt "$need" ]; then
  qemu-img create -q -f qcow2 -o preallocation=full "$dir/written64.qcow2" 64G
  row "64 GiB, 64 KiB clusters, fully written (preallocation=full)" "$dir/written64.qcow2"
  rm -f "$dir/written64.qcow2"
else
  echo "(64 GiB fully written image skipped: less than 65 GiB free under /var/tmp)" >&2
fi

# 1 TiB, preallocation=metadata: 16M clusters allocated.
qemu-img create -q -f qcow2 -o preallocation=metadata "$dir/prealloc.qcow2" 1T
# 64 GiB with 4 KiB clusters, every cluster allocated (16M L2 entries, 16x
# the fully written image's). Data clusters are sparse: check reads
# metadata only.
qemu-img create -q -f qcow2 -o preallocation=metadata,cluster_size=4k "$dir/full64.qcow2" 64G
# Zoned 1 TiB, 1,048,576 zones of 1 MiB, every other zone written (4 KiB at
# its start, through zcow-io and the engine), checked by qemu-img as the bit-5-cleared
# copy (stock QEMU refuses zoned images).
"$Z/zcow-img" create -q -f qcow2 -o cluster_size=4k,zone.mode=host-managed,zone.size=1M "$dir/zoned.qcow2" 1T
# Every other zone of the 1,048,576 gets 4 KiB: half the zones written.
seq 0 2 1048575 | awk '{print "write -q " $1 "M 4k"}' | "$Z/zcow-io" "$dir/zoned.qcow2" >/dev/null
/usr/bin/python3 - "$dir/zoned.qcow2" "$dir/zoned-copy.qcow2" <<'PY'
import sys, shutil
shutil.copy(sys.argv[1], sys.argv[2])
with open(sys.argv[2], 'r+b') as f:
    f.seek(79); b = f.read(1)[0]; f.seek(79); f.write(bytes([b & ~0x20]))
PY

row "1 TiB, preallocation=metadata (16M clusters)" "$dir/prealloc.qcow2"
row "64 GiB, 4 KiB clusters, all allocated" "$dir/full64.qcow2"
row "zoned 1 TiB, 1M zones, every other zone written" "$dir/zoned.qcow2" "$dir/zoned-copy.qcow2"
