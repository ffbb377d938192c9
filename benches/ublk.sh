#!/usr/bin/env bash
# ublk benchmark, run inside the test VM (the host cannot load ublk_drv):
#
#   tests/vm/run.sh benches/ublk.sh [SIZE_MIB]
#
# fio on three zoned block devices of the same geometry (SIZE_MIB, 16 MiB
# zones, no conventional zones): zcow-ublk serving a zoned qcow2 image
# (persistent), rublk's memory-backed zoned target (if built into the VM
# cache by `cargo install rublk --version 0.2.15 --no-default-features
# --root ~/.cache/zcow-vm/rublk`), and the kernel's zoned null_blk (no
# data, the in-kernel upper bound). Rows: sequential write 1 MiB QD4,
# 4 KiB random read QD16 (of the written data), both --zonemode=zbd.
# Prints a Markdown table.
set -uo pipefail
cd "$(dirname "$0")/.."
MIB=${1:-1024}
BIN=${ZCOW_BIN:-$PWD/target/release}
RUBLK=${ZCOW_RUBLK:-$HOME/.cache/zcow-vm/rublk/bin/rublk}
RUNTIME=${ZCOW_BENCH_RUNTIME:-20}
S=/var/tmp/zcow-bench
mkdir -p $S
mountpoint -q $S || mount -t tmpfs -o size=75% tmpfs $S
modprobe ublk_drv
modprobe null_blk nr_devices=0

g() { timeout -k 10 "$@"; }
fio_bw() { # DEV: sequential write MiB/s
  g 600 blkzone reset "$1" || return 1
  g 900 fio --name=sw --filename="$1" --direct=1 --zonemode=zbd --rw=write --bs=1M \
    --iodepth=4 --ioengine=libaio --size=$((MIB / 2))M --max_open_zones=4 \
    --output-format=json | python3 -c 'import json,sys; j=json.load(sys.stdin); print(round(j["jobs"][0]["write"]["bw"]/1024,1))'
}
fio_iops() { # DEV: random read IOPS over the data written by fio_bw
  g 900 fio --name=rr --filename="$1" --direct=1 --zonemode=zbd --rw=randread --bs=4k \
    --iodepth=16 --ioengine=libaio --size=$((MIB / 2))M --time_based --runtime="$RUNTIME" \
    --output-format=json | python3 -c 'import json,sys; j=json.load(sys.stdin); print(round(j["jobs"][0]["read"]["iops"]))'
}
wait_dev() { for _ in $(seq 300); do [ -b "$1" ] && return 0; sleep 0.1; done; return 1; }

declare -A W R
# zcow-ublk
"$BIN/zcow-img" create -q -f qcow2 -o zone.mode=host-managed,zone.size=16M,zone.max_open_zones=0 $S/b.qcow2 ${MIB}M
"$BIN/zcow-ublk" $S/b.qcow2 >$S/zcow.out 2>&1 &
zp=$!
for _ in $(seq 300); do grep -q /dev/ublkb $S/zcow.out && break; sleep 0.1; done
d=$(grep -o -m1 '/dev/ublkb[0-9]*' $S/zcow.out)
wait_dev "$d"
W[zcow]=$(fio_bw "$d"); R[zcow]=$(fio_iops "$d")
kill -TERM $zp; wait $zp
# rublk (memory-backed zoned)
if [ -x "$RUBLK" ]; then
  id=7
  g 60 "$RUBLK" add zoned -n $id --size ${MIB}MiB --zone-size 16MiB --conv-zones 0 >/dev/null 2>&1
  wait_dev /dev/ublkb$id
  W[rublk]=$(fio_bw /dev/ublkb$id); R[rublk]=$(fio_iops /dev/ublkb$id)
  g 60 "$RUBLK" del -n "$id" || true
else
  W[rublk]=-; R[rublk]=-
fi
# null_blk zoned (no memory backing)
modprobe -r null_blk; modprobe null_blk nr_devices=1 zoned=1 zone_size=16 gb=$((MIB / 1024)) zone_nr_conv=0 zone_max_open=0
wait_dev /dev/nullb0
W[nullb]=$(fio_bw /dev/nullb0); R[nullb]=$(fio_iops /dev/nullb0)

ratio() { python3 -c "import sys; a,b=sys.argv[1:]; print('-' if '-' in (a,b) else f'{float(a)/float(b):.2f}')" "$1" "$2"; }
echo
echo "| fio, ${MIB} MiB zoned device, 16 MiB zones | zcow-ublk | rublk zoned (memory) | null_blk zoned | zcow / rublk |"
echo "|---|---|---|---|---|"
echo "| sequential write 1 MiB QD4 (MiB/s) | ${W[zcow]} | ${W[rublk]} | ${W[nullb]} | $(ratio "${W[zcow]}" "${W[rublk]}") |"
echo "| random read 4 KiB QD16 (IOPS) | ${R[zcow]} | ${R[rublk]} | ${R[nullb]} | $(ratio "${R[zcow]}" "${R[rublk]}") |"
