#!/usr/bin/env bash
# ublk benchmark, run inside the test VM (the host cannot load ublk_drv):
#
#   tests/vm/run.sh benches/ublk.sh [SIZE_MIB]
#
# fio on three zoned block devices of the same geometry (SIZE_MIB, 16 MiB
# zones, no conventional zones): zcow-ublk serving a zoned qcow2 image
# (persistent), rublk's memory-backed zoned target (if built into the VM
# cache by `cargo install rublk --version 0.2.15 --no-default-features
# --root ~/.cache/zcow-vm/rublk`), and the kernel's zoned null_blk (memory-backed:
# data in kernel memory, the in-kernel upper bound). Rows:
#   * sequential write 1 MiB QD4 and 4 KiB random read QD16 (of the written
#     data), fio --zonemode=zbd;
#   * zone append: fio direct 1 MiB writes QD4 to a file on btrfs zoned,
#     which writes data with REQ_OP_ZONE_APPEND (fio 3.33 has no zone-append
#     load for block devices; Linux 6.12's zonefs no longer appends); the
#     block_rq_issue trace event counts the request types on stderr ("N":
#     neither read, write, discard nor flush: the zone appends);
#   * 512-byte writes QD1 (psync, no fsync): the per-request round trip;
#   * 4 KiB writes QD1 with an fsync after each (fio --fsync=1): write +
#     FLUSH, the cost of durability.
# A second zcow-ublk with -w 0 (no worker threads: the queue thread runs
# every request, the model before the workers) is the last column.
# Each row runs ZCOW_BENCH_ROUNDS times (default 3) on every device, the
# devices' order rotating between rounds, ZCOW_BENCH_RUNTIME seconds
# (default 20) each; the table shows the median of the rounds, and every
# round's value goes to stderr (under TCG single runs swing up to 2x).
# A run takes about 20 minutes with the defaults.
# Prints a Markdown table. ZCOW_UBLK_ARGS: extra zcow-ublk options.
set -uo pipefail
cd "$(dirname "$0")/.."
MIB=${1:-1024}
BIN=${ZCOW_BIN:-$PWD/target/release}
RUBLK=${ZCOW_RUBLK:-$HOME/.cache/zcow-vm/rublk/bin/rublk}
RUNTIME=${ZCOW_BENCH_RUNTIME:-20}
ROUNDS=${ZCOW_BENCH_ROUNDS:-3}
export PATH=$PATH:/usr/sbin:/sbin
S=/var/tmp/zcow-bench
mkdir -p $S
mountpoint -q $S || mount -t tmpfs -o size=75% tmpfs $S
modprobe ublk_drv
modprobe null_blk nr_devices=0
modprobe btrfs
T=/sys/kernel/tracing
mountpoint -q $T || mount -t tracefs nodev $T 2>/dev/null
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg) (guest)" >&2

g() { timeout -k 10 "$@"; }
fio_bw() { # DEV: sequential write MiB/s
  g 600 blkzone reset "$1" || return 1
  g 900 fio --name=sw --filename="$1" --direct=1 --zonemode=zbd --rw=write --bs=1M \
    --iodepth=4 --ioengine=libaio --size=$((MIB / 2))M --max_open_zones=4 \
    --time_based --runtime="$RUNTIME" --output-format=json | python3 -c 'import json,sys; j=json.load(sys.stdin); print(round(j["jobs"][0]["write"]["bw"]/1024,1))'
}
fio_iops() { # DEV: random read IOPS over the data written by fio_bw
  g 900 fio --name=rr --filename="$1" --direct=1 --zonemode=zbd --rw=randread --bs=4k \
    --iodepth=16 --ioengine=libaio --size=$((MIB / 2))M --time_based --runtime="$RUNTIME" \
    --output-format=json | python3 -c 'import json,sys; j=json.load(sys.stdin); print(round(j["jobs"][0]["read"]["iops"]))'
}
fio_sync() { # DEV: 4 KiB writes, each followed by fsync (IOPS)
  g 600 blkzone reset "$1" || return 1
  g 900 fio --name=ws --filename="$1" --direct=1 --zonemode=zbd --rw=write --bs=4k \
    --iodepth=1 --ioengine=psync --fsync=1 --size=$((MIB / 2))M --time_based \
    --runtime="$RUNTIME" --output-format=json |
    python3 -c 'import json,sys; j=json.load(sys.stdin); print(round(j["jobs"][0]["write"]["iops"]))'
}
fio_small() { # DEV: 512-byte writes QD1, no fsync (IOPS)
  g 600 blkzone reset "$1" || return 1
  g 900 fio --name=w5 --filename="$1" --direct=1 --zonemode=zbd --rw=write --bs=512 \
    --iodepth=1 --ioengine=psync --size=$((MIB / 2))M --time_based \
    --runtime="$RUNTIME" --output-format=json |
    python3 -c 'import json,sys; j=json.load(sys.stdin); print(round(j["jobs"][0]["write"]["iops"]))'
}
rwbs() { # the request types block_rq_issue saw, with counts
  awk '{for(i=1;i<=NF;i++) if($i=="block_rq_issue:") print $(i+2)}' $T/trace | sort | uniq -c |
    awk '{printf "%s %s, ", $2, $1}'
}
zone_append() { # DEV: MiB/s of fio direct 1 MiB writes QD4 to a file on btrfs zoned
  local dev=$1 mnt=$S/mnt ev=$T/events/block/block_rq_issue/enable bw
  g 600 blkzone reset "$dev" || return 1
  g 120 mkfs.btrfs -q -f -O zoned "$dev" >/dev/null 2>&1 || { echo -; return 1; }
  mkdir -p $mnt
  g 60 mount -t btrfs "$dev" $mnt || { echo -; return 1; }
  [ -w "$ev" ] && { echo >$T/trace; echo 1 >"$ev"; }
  bw=$(g 900 fio --name=za --directory=$mnt --rw=write --bs=1M --direct=1 --ioengine=libaio \
    --iodepth=4 --size=$((MIB / 8))M --output-format=json |
    python3 -c 'import json,sys; j=json.load(sys.stdin); print(round(j["jobs"][0]["write"]["bw"]/1024,1))')
  if [ -w "$ev" ]; then
    echo 0 >"$ev"
    echo "$dev, btrfs fio: requests issued by type: $(rwbs)" >&2
  fi
  g 60 umount $mnt
  echo "$bw"
}
wait_dev() { for _ in $(seq 300); do [ -b "$1" ] && return 0; sleep 0.1; done; return 1; }

declare -A DEV
# zcow-ublk
"$BIN/zcow-img" create -q -f qcow2 -o zone.mode=host-managed,zone.size=16M,zone.max_open_zones=0,zone.max_append_bytes=512K $S/b.qcow2 ${MIB}M
# shellcheck disable=SC2086
"$BIN/zcow-ublk" ${ZCOW_UBLK_ARGS:-} $S/b.qcow2 >$S/zcow.out 2>&1 &
zp=$!
for _ in $(seq 300); do grep -q /dev/ublkb $S/zcow.out && break; sleep 0.1; done
DEV[zcow]=$(grep -o -m1 '/dev/ublkb[0-9]*' $S/zcow.out)
wait_dev "${DEV[zcow]}"
# the same with -w 0: the queue thread runs every request (no workers)
"$BIN/zcow-img" create -q -f qcow2 -o zone.mode=host-managed,zone.size=16M,zone.max_open_zones=0,zone.max_append_bytes=512K $S/b0.qcow2 ${MIB}M
"$BIN/zcow-ublk" -w 0 $S/b0.qcow2 >$S/zcow0.out 2>&1 &
zp0=$!
for _ in $(seq 300); do grep -q /dev/ublkb $S/zcow0.out && break; sleep 0.1; done
DEV[zcow0]=$(grep -o -m1 '/dev/ublkb[0-9]*' $S/zcow0.out)
wait_dev "${DEV[zcow0]}"
# rublk (memory-backed zoned)
id=7
if [ -x "$RUBLK" ]; then
  g 60 "$RUBLK" add zoned -n $id --size ${MIB}MiB --zone-size 16MiB --conv-zones 0 >/dev/null 2>&1
  wait_dev /dev/ublkb$id && DEV[rublk]=/dev/ublkb$id
fi
# null_blk zoned, memory-backed (btrfs needs its data back)
modprobe -r null_blk
modprobe null_blk nr_devices=1 zoned=1 zone_size=16 gb=$((MIB / 1024)) zone_nr_conv=0 zone_max_open=0 memory_backed=1
wait_dev /dev/nullb0 && DEV[nullb]=/dev/nullb0

# Row by row, the devices back to back, the order rotating each round, so
# a change in the host's load hits a row's devices alike.
declare -A W R A P F
median() { python3 -c 'import sys,statistics; v=[float(x) for x in sys.argv[1:] if x != "-"]; print(f"{statistics.median(v):.1f}".removesuffix(".0") if v else "-")' "$@"; }
row() { # ARRAY FUNCTION ORDER...
  local -n out=$1
  local f=$2 r k v
  shift 2
  local order=("$@")
  local -A vals=()
  for r in $(seq "$ROUNDS"); do
    for k in "${order[@]}"; do
      v=-
      [ -n "${DEV[$k]:-}" ] && v=$($f "${DEV[$k]}")
      vals[$k]="${vals[$k]:-} ${v:--}"
    done
    order=("${order[@]:1}" "${order[0]}")
  done
  for k in "$@"; do
    # shellcheck disable=SC2086
    out[$k]=$(median ${vals[$k]})
    echo "$f $k rounds:${vals[$k]}" >&2
  done
}
row W fio_bw zcow rublk zcow0 nullb
row R fio_iops rublk zcow zcow0 nullb
row A zone_append zcow rublk zcow0 nullb
row P fio_small rublk zcow zcow0 nullb
row F fio_sync zcow rublk zcow0 nullb
kill -TERM $zp $zp0; wait $zp $zp0
[ -n "${DEV[rublk]:-}" ] && { g 60 "$RUBLK" del -n "$id" || true; }

ratio() { python3 -c "import sys; a,b=sys.argv[1:]; print('-' if '-' in (a,b) or not a or not b else f'{float(a)/float(b):.2f}')" "$1" "$2"; }
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg) (guest)" >&2
echo
echo "| fio, ${MIB} MiB zoned device, 16 MiB zones | zcow-ublk | rublk zoned (memory) | null_blk zoned | zcow / rublk | zcow-ublk -w 0 |"
echo "|---|---|---|---|---|---|"
echo "| sequential write 1 MiB QD4 (MiB/s) | ${W[zcow]} | ${W[rublk]} | ${W[nullb]} | $(ratio "${W[zcow]}" "${W[rublk]}") | ${W[zcow0]} |"
echo "| random read 4 KiB QD16 (IOPS) | ${R[zcow]} | ${R[rublk]} | ${R[nullb]} | $(ratio "${R[zcow]}" "${R[rublk]}") | ${R[zcow0]} |"
echo "| zone append: fio direct 1 MiB QD4 on btrfs zoned (MiB/s) | ${A[zcow]} | ${A[rublk]} | ${A[nullb]} | $(ratio "${A[zcow]}" "${A[rublk]}") | ${A[zcow0]} |"
echo "| write 512 B QD1 psync (IOPS) | ${P[zcow]} | ${P[rublk]} | ${P[nullb]} | $(ratio "${P[zcow]}" "${P[rublk]}") | ${P[zcow0]} |"
echo "| write 4 KiB + fsync QD1 (IOPS) | ${F[zcow]} | ${F[rublk]} | ${F[nullb]} | $(ratio "${F[zcow]}" "${F[rublk]}") | ${F[zcow0]} |"
