#!/usr/bin/env bash
# Server CPU time per write, run inside the test VM:
#
#   tests/vm/run.sh benches/ublk-cpu.sh
#
# zcow-ublk (a zoned qcow2 image on tmpfs) and rublk's memory-backed zoned
# target, both live; two alternating rounds of fio 512-byte psync writes
# QD1 and 1 MiB libaio writes QD4 (--zonemode=zbd, 15 s each). Prints the
# writes done and the server's CPU time (the sum over its threads of
# /proc/PID/task/*/schedstat) per write. Under TCG the guest's CPU time
# includes the time its vCPU waited for the host: compare within a run.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${ZCOW_BIN:-$PWD/target/release}
RUBLK=${ZCOW_RUBLK:-$HOME/.cache/zcow-vm/rublk/bin/rublk}
export PATH=$PATH:/usr/sbin:/sbin
S=/var/tmp/zcow-cpu
mkdir -p $S
mountpoint -q $S || mount -t tmpfs tmpfs $S
modprobe ublk_drv
[ -x "$RUBLK" ] || { echo "rublk missing ($RUBLK)" >&2; exit 1; }
g() { timeout -k 10 "$@"; }
cpu() { local t=0 x f; for f in /proc/$1/task/*/schedstat; do read -r x _ <"$f"; t=$((t + x)); done; echo $t; }
one() { # NAME DEV PID FIO-ARGS...: one fio run, CPU per write
  local name=$1 dev=$2 pid=$3 c0 c1 n
  shift 3
  g 60 blkzone reset "$dev"
  c0=$(cpu "$pid")
  n=$(g 120 fio --name=c --filename="$dev" --direct=1 --zonemode=zbd --size=512M --time_based \
    --runtime=15 --output-format=json "$@" |
    python3 -c 'import json,sys; j=json.load(sys.stdin); print(j["jobs"][0]["write"]["total_ios"])')
  c1=$(cpu "$pid")
  echo "$name $*: $n writes in 15 s, server CPU $(((c1 - c0) / 1000000)) ms, $(((c1 - c0) / (n + 1) / 1000)) us per write"
}
"$BIN/zcow-img" create -q -f qcow2 -o zone.mode=host-managed,zone.size=16M,zone.max_open_zones=0 $S/a.qcow2 1G
"$BIN/zcow-ublk" $S/a.qcow2 >$S/z.out 2>&1 &
zp=$!
for _ in $(seq 300); do grep -q /dev/ublkb $S/z.out && break; sleep 0.1; done
d=$(grep -o -m1 '/dev/ublkb[0-9]*' $S/z.out)
g 60 "$RUBLK" add zoned -n 7 --size 1GiB --zone-size 16MiB --conv-zones 0 >/dev/null 2>&1
for _ in $(seq 300); do [ -b /dev/ublkb7 ] && break; sleep 0.1; done
rp=$(pgrep -n -x rublk)
for round in 1 2; do
  for k in zcow rublk; do
    if [ $k = zcow ]; then dev=$d pid=$zp; else dev=/dev/ublkb7 pid=$rp; fi
    one "$k" "$dev" "$pid" --rw=write --bs=512 --iodepth=1 --ioengine=psync
    one "$k" "$dev" "$pid" --rw=write --bs=1M --iodepth=4 --ioengine=libaio --max_open_zones=4
  done
done
kill -TERM $zp
wait $zp
g 60 "$RUBLK" del -n 7
