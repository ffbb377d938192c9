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
# data, the in-kernel upper bound). Rows:
#   * sequential write 1 MiB QD4 and 4 KiB random read QD16 (of the written
#     data), fio --zonemode=zbd;
#   * zone append: zonefs on the device, 4 writers appending 512 KiB
#     O_DIRECT writes to sequential zone files (zonefs turns a synchronous
#     direct write into REQ_OP_ZONE_APPEND; the zonefs_file_dio_append
#     trace event counts them) — fio 3.33 has no zone-append load for block
#     devices;
#   * synchronous 4 KiB writes QD1 with an fsync after each (fio --fsync=1):
#     write + FLUSH, the cost of durability.
# Prints a Markdown table. ZCOW_UBLK_ARGS: extra zcow-ublk options.
set -uo pipefail
cd "$(dirname "$0")/.."
MIB=${1:-1024}
BIN=${ZCOW_BIN:-$PWD/target/release}
RUBLK=${ZCOW_RUBLK:-$HOME/.cache/zcow-vm/rublk/bin/rublk}
RUNTIME=${ZCOW_BENCH_RUNTIME:-20}
export PATH=$PATH:/usr/sbin:/sbin:${ZCOW_VM_ZONEFS:-/nonexistent}/usr/sbin
S=/var/tmp/zcow-bench
mkdir -p $S
mountpoint -q $S || mount -t tmpfs -o size=75% tmpfs $S
modprobe ublk_drv
modprobe null_blk nr_devices=0
modprobe zonefs
T=/sys/kernel/tracing
mountpoint -q $T || mount -t tracefs nodev $T 2>/dev/null
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg) (guest)" >&2

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
fio_sync() { # DEV: 4 KiB writes, each followed by fsync (IOPS)
  g 600 blkzone reset "$1" || return 1
  g 900 fio --name=ws --filename="$1" --direct=1 --zonemode=zbd --rw=write --bs=4k \
    --iodepth=1 --ioengine=psync --fsync=1 --size=$((MIB / 2))M --time_based \
    --runtime="$RUNTIME" --output-format=json |
    python3 -c 'import json,sys; j=json.load(sys.stdin); print(round(j["jobs"][0]["write"]["iops"]))'
}
zone_append() { # DEV: MiB/s of 4 writers appending to zonefs files
  local dev=$1 mnt=$S/mnt files n i ev=$T/events/zonefs/zonefs_file_dio_append/enable
  g 600 blkzone reset "$dev" || return 1
  g 120 mkzonefs -f "$dev" >/dev/null 2>&1 || { echo -; return 1; }
  mkdir -p $mnt
  g 60 mount -t zonefs "$dev" $mnt || { echo -; return 1; }
  files=$((MIB / 2 / 16))
  n=$(ls $mnt/seq | wc -l)
  [ "$files" -le "$n" ] || files=$n
  [ -w "$ev" ] && { echo >$T/trace; echo 1 >"$ev"; }
  python3 - "$mnt" "$files" <<'EOF'
import mmap, os, sys, time, threading
mnt, files = sys.argv[1], int(sys.argv[2])
bs, zone = 512 << 10, 16 << 20
m = mmap.mmap(-1, bs)  # page-aligned, as O_DIRECT wants
m.write(os.urandom(bs))
def writer(k):
    for f in range(k, files, 4):
        fd = os.open(f"{mnt}/seq/{f}", os.O_WRONLY | os.O_DIRECT)
        done = 0
        while done < zone:
            done += os.write(fd, m)
        os.close(fd)
t = time.monotonic()
ws = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
for w in ws: w.start()
for w in ws: w.join()
dt = time.monotonic() - t
print(round(files * zone / (1 << 20) / dt, 1))
EOF
  if [ -w "$ev" ]; then
    echo 0 >"$ev"
    echo "$dev: $(grep -c zonefs_file_dio_append $T/trace) zonefs_file_dio_append events (zone appends)" >&2
  fi
  g 60 umount $mnt
}
wait_dev() { for _ in $(seq 300); do [ -b "$1" ] && return 0; sleep 0.1; done; return 1; }
run_all() { # KEY DEV
  W[$1]=$(fio_bw "$2"); R[$1]=$(fio_iops "$2"); A[$1]=$(zone_append "$2"); F[$1]=$(fio_sync "$2")
}

declare -A W R A F
# zcow-ublk
"$BIN/zcow-img" create -q -f qcow2 -o zone.mode=host-managed,zone.size=16M,zone.max_open_zones=0,zone.max_append_bytes=512K $S/b.qcow2 ${MIB}M
# shellcheck disable=SC2086
"$BIN/zcow-ublk" ${ZCOW_UBLK_ARGS:-} $S/b.qcow2 >$S/zcow.out 2>&1 &
zp=$!
for _ in $(seq 300); do grep -q /dev/ublkb $S/zcow.out && break; sleep 0.1; done
d=$(grep -o -m1 '/dev/ublkb[0-9]*' $S/zcow.out)
wait_dev "$d"
run_all zcow "$d"
kill -TERM $zp; wait $zp
# rublk (memory-backed zoned)
if [ -x "$RUBLK" ]; then
  id=7
  g 60 "$RUBLK" add zoned -n $id --size ${MIB}MiB --zone-size 16MiB --conv-zones 0 >/dev/null 2>&1
  wait_dev /dev/ublkb$id
  run_all rublk /dev/ublkb$id
  g 60 "$RUBLK" del -n "$id" || true
else
  W[rublk]=-; R[rublk]=-; A[rublk]=-; F[rublk]=-
fi
# null_blk zoned (no memory backing)
modprobe -r null_blk; modprobe null_blk nr_devices=1 zoned=1 zone_size=16 gb=$((MIB / 1024)) zone_nr_conv=0 zone_max_open=0
wait_dev /dev/nullb0
run_all nullb /dev/nullb0

ratio() { python3 -c "import sys; a,b=sys.argv[1:]; print('-' if '-' in (a,b) or not a or not b else f'{float(a)/float(b):.2f}')" "$1" "$2"; }
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg) (guest)" >&2
echo
echo "| fio, ${MIB} MiB zoned device, 16 MiB zones | zcow-ublk | rublk zoned (memory) | null_blk zoned | zcow / rublk |"
echo "|---|---|---|---|---|"
echo "| sequential write 1 MiB QD4 (MiB/s) | ${W[zcow]} | ${W[rublk]} | ${W[nullb]} | $(ratio "${W[zcow]}" "${W[rublk]}") |"
echo "| random read 4 KiB QD16 (IOPS) | ${R[zcow]} | ${R[rublk]} | ${R[nullb]} | $(ratio "${R[zcow]}" "${R[rublk]}") |"
echo "| zone append 512 KiB, 4 zonefs writers (MiB/s) | ${A[zcow]} | ${A[rublk]} | ${A[nullb]} | $(ratio "${A[zcow]}" "${A[rublk]}") |"
echo "| write 4 KiB + fsync QD1 (IOPS) | ${F[zcow]} | ${F[rublk]} | ${F[nullb]} | $(ratio "${F[zcow]}" "${F[rublk]}") |"
