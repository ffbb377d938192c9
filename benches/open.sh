#!/usr/bin/env bash
# Opening a zoned image for I/O (zcow-io: image + engine, power-cycle
# derivation of every zone's state) with 1M and 16M zones: wall time and
# CPU time (median of 3) and peak RSS (GNU time), and resident bytes per
# zone over a 64-zone image's baseline. Prints a Markdown table.
# Usage: benches/open.sh   (needs /usr/bin/time)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q --bins
Z=$PWD/target/release
dir=$(mktemp -d /var/tmp/zcow-open-bench.XXXXXX)
trap 'rm -rf "$dir"' EXIT

# 64 KiB zones: 64 zones = 4 MiB, 1M zones = 64 GiB, 16M zones = 1 TiB.
for spec in base:4M m1:64G m16:1T; do
  "$Z/zcow-img" create -q -f qcow2 -o zone.mode=host-managed,zone.size=64K \
    "$dir/${spec%%:*}.qcow2" "${spec##*:}" >/dev/null
done
sync

measure() { # image -> "wall cpu maxrss_kib" (median times, max RSS)
  local ws=() cs=() rss=0 out
  for _ in 1 2 3; do
    /usr/bin/time -o "$dir/time" -f '%e %U %S %M' "$Z/zcow-io" -r -c 'zrp 0 1' "$1" >/dev/null
    read -r w u s r < "$dir/time"
    ws+=("$w"); cs+=("$(echo "$u + $s" | bc -l)"); [ "$r" -gt "$rss" ] && rss=$r
  done
  echo "$(printf '%s\n' "${ws[@]}" | sort -g | sed -n 2p) $(printf '%s\n' "${cs[@]}" | sort -g | sed -n 2p) $rss"
}

read -r _ _ base < <(measure "$dir/base.qcow2")
echo "| zones | open, wall | open, CPU (user+sys) | peak RSS | resident bytes per zone |"
echo "|---|---|---|---|---|"
for spec in m1:1048576 m16:16777216; do
  read -r w c r < <(measure "$dir/${spec%%:*}.qcow2")
  n=${spec##*:}
  printf '| %s | %s s | %.2f s | %d MiB | %.1f |\n' "$n" "$w" "$c" $((r / 1024)) \
    "$(echo "($r - $base) * 1024 / $n" | bc -l)"
done
echo "(baseline: 64 zones, peak RSS $((base / 1024)) MiB; load average $(cut -d' ' -f1 /proc/loadavg))"
