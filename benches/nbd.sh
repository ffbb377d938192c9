#!/usr/bin/env bash
# NBD benchmark: zcow-nbd beside qemu-nbd and nbdkit, same data, loopback,
# one run. zcow-nbd serves a zoned qcow2 image and a plain qcow2 image;
# qemu-nbd serves the plain twin (same bytes); nbdkit serves the raw file.
# Prints Markdown tables.
# Usage: benches/nbd.sh [SIZE_MIB]   (needs qemu-utils, libnbd-bin, nbdkit, fio)
# RUNS (default 5): alternating rounds of each timed copy; the table gives
# the best (on a shared machine the median mostly measures the load).
# FIO_SECS (default 8): length of each fio run.
set -euo pipefail
cd "$(dirname "$0")/.."
MIB=${1:-1024}
RUNS=${RUNS:-5}
FIO_SECS=${FIO_SECS:-8}
cargo build --release -q
Z=$PWD/target/release
dir=$(mktemp -d /var/tmp/zcow-nbd-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup EXIT

free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do nbdinfo --size "nbd://127.0.0.1:$1" >/dev/null 2>&1 && return 0; sleep 0.05; done; echo "server on $1 did not start" >&2; exit 1; }
now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
best() { sort -g | head -1; }
ratio() { echo "$1 / $2" | bc -l; }

head -c $((MIB << 20)) /dev/urandom > "$dir/data.raw"
cp "$dir/data.raw" "$dir/plain.raw"
qemu-img convert -O qcow2 "$dir/data.raw" "$dir/plain.qcow2"
mkzoned() {
  rm -f "$1"
  "$Z/zcow-img" create -q -f qcow2 -o zone.mode=host-managed,zone.size=64M "$1" "${MIB}M"
}

# Each start_* sets $port and records the server's PID (no subshells, so
# the PIDs reach the cleanup trap).
# spid maps a port to its server's PID (for its CPU time).
declare -A spid
start_zcow() { port=$(free_port); "$Z/zcow-nbd" -t -e 0 -f qcow2 -p "$port" "$1" & pids+=($!); spid[$port]=$!; wait_port "$port"; }
# zcow-nbd with read replies copied through a buffer (no sendfile), for A/B.
start_zcow_buffered() { port=$(free_port); ZCOW_NBD_ZERO_COPY=0 "$Z/zcow-nbd" -t -e 0 -f qcow2 -p "$port" "$1" & pids+=($!); spid[$port]=$!; wait_port "$port"; }
start_qemu() { port=$(free_port); qemu-nbd -t -e 0 -f qcow2 -b 127.0.0.1 -p "$port" "$1" & pids+=($!); spid[$port]=$!; wait_port "$port"; }
start_kit()  { port=$(free_port); nbdkit -f -i 127.0.0.1 -p "$port" file "$1" & pids+=($!); spid[$port]=$!; wait_port "$port"; }
TCK=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; } # user + system ticks of PID
stop_last()  { local p=${pids[-1]}; kill "$p"; wait "$p" 2>/dev/null || true; unset 'pids[-1]'; }

# Sparse source (issue 12): in every 64 MiB (one zone) the first 40 MiB are
# data, the rest a hole, so each zone has a zero tail.
rm -f "$dir/sparse.raw"; truncate -s "${MIB}M" "$dir/sparse.raw"
for ((o = 0; o < MIB; o += 64)); do
  dd if="$dir/data.raw" of="$dir/sparse.raw" bs=1M skip=$o seek=$o count=$((MIB - o < 40 ? MIB - o : 40)) conv=notrunc,sparse status=none
done

# Sequential write onto a fresh export: qemu-img convert -n by default.
seq_write() { # kind [source] [tool]
  local t=() s e src=${2:-$dir/data.raw} tool=${3:-convert}
  for _ in 1 2 3; do
    case $1 in
      zcow) mkzoned "$dir/w.qcow2"; start_zcow "$dir/w.qcow2" ;;
      qemu) qemu-img create -q -f qcow2 "$dir/w.qcow2" "${MIB}M"; start_qemu "$dir/w.qcow2" ;;
    esac
    s=$(now)
    case $tool in
      convert) qemu-img convert -n -f raw -O raw "$src" "nbd://127.0.0.1:$port" ;;
      convert-W) qemu-img convert -n -W -f raw -O raw "$src" "nbd://127.0.0.1:$port" ;;
      nbdcopy) nbdcopy "$src" "nbd://127.0.0.1:$port" ;;
    esac
    e=$(now)
    qemu-img compare -q -f raw -F raw "$src" "nbd://127.0.0.1:$port"
    stop_last
    t+=("$(echo "$e - $s" | bc)")
  done
  printf '%s\n' "${t[@]}" | median
}

# The zoned image holding the data, filled through zcow-nbd itself.
mkzoned "$dir/zoned.qcow2"
start_zcow "$dir/zoned.qcow2"; qemu-img convert -n -f raw -O raw "$dir/data.raw" "nbd://127.0.0.1:$port"; stop_last
qemu-img compare -f raw -F raw "$dir/data.raw" "$dir/plain.raw" >/dev/null

# One timed nbdcopy to null: (extra nbdcopy options after the port):
# wall time into T[key], the server's CPU time into S[key], nbdcopy's
# into C[key].
declare -A T S C
copy_time() { # key port [nbdcopy options...]
  local k=$1 p=$2 s e c0 c1 cc; shift 2
  c0=$(cpu "${spid[$p]}")
  s=$(now)
  cc=$( { TIMEFORMAT='%3U %3S'; time nbdcopy "$@" "nbd://127.0.0.1:$p" null: ; } 2>&1 | tail -1 | awk '{print $1 + $2}')
  e=$(now)
  c1=$(cpu "${spid[$p]}")
  T[$k]+="$(echo "$e - $s" | bc) "
  S[$k]+="$(echo "($c1 - $c0) / $TCK" | bc -l) "
  C[$k]+="$cc "
}
fio_iops() { # port rw [numjobs] -> aggregate IOPS of a 4 KiB QD16 run (one connection per job)
  local jobs=${3:-1} size=${4:-${MIB}M}
  fio --name=r --ioengine=nbd --uri="nbd://127.0.0.1:$1" --rw="$2" --bs=4k --iodepth=16 \
      --numjobs="$jobs" --group_reporting --runtime="$FIO_SECS" --time_based --size="$size" \
      --output-format=json 2>/dev/null |
    /usr/bin/python3 -c 'import json,sys; t=sys.stdin.read(); j=json.loads(t[t.index("{"):])["jobs"][0]; print(round(j["read"]["iops"] + j["write"]["iops"]))'
}

# Read-side servers: zoned and plain qcow2 through zcow-nbd, the plain
# twin through qemu-nbd, the raw file through nbdkit.
cp "$dir/plain.qcow2" "$dir/zplain.qcow2"
start_zcow "$dir/zoned.qcow2"; zp=$port
start_zcow "$dir/zplain.qcow2"; pp=$port
start_qemu "$dir/plain.qcow2"; qp=$port
start_kit "$dir/plain.raw"; kp=$port
cp "$dir/plain.qcow2" "$dir/bplain.qcow2"
start_zcow_buffered "$dir/bplain.qcow2"; bp=$port
# Sequential read, alternating rounds; best of RUNS each.
for ((i = 0; i < RUNS; i++)); do
  copy_time zr "$zp"; copy_time pr "$pp"; copy_time br "$bp"
  copy_time qr "$qp"; copy_time kr "$kp"
  # Multi-connection scaling: 1 against 4 connections.
  copy_time z1 "$zp" --connections=1; copy_time z4 "$zp" --connections=4
  copy_time k1 "$kp" --connections=1; copy_time k4 "$kp" --connections=4
done
stop_last
pick() { printf '%s\n' ${T[$1]} | best; }
cpus() { printf '%.3f | %.3f' "$(printf '%s\n' ${S[$1]} | median)" "$(printf '%s\n' ${C[$1]} | median)"; }
zr=$(pick zr); pr=$(pick pr); qr=$(pick qr); kr=$(pick kr); br=$(pick br)
z1=$(pick z1); z4=$(pick z4); k1=$(pick k1); k4=$(pick k4)
# Random reads: one connection, then 4 jobs on 4 connections.
zi=$(fio_iops "$zp" randread); pi=$(fio_iops "$pp" randread); qi=$(fio_iops "$qp" randread); ki=$(fio_iops "$kp" randread)
zi4=$(fio_iops "$zp" randread 4); ki4=$(fio_iops "$kp" randread 4)
# 4 KiB random writes QD16 onto allocated clusters (plain qcow2: every
# cluster holds data; raw: the file).
# Same page-cache state for every file first: how its cached pages came
# to be (large folios from big sequential writes, small ones from cp or
# 4 KiB writes) changes what the kernel charges a 4 KiB write severalfold
# (perf: ext4_block_write_begin), whichever server makes the write.
uncache() { for f in "$@"; do sync "$f"; dd if="$f" iflag=nocache count=0 status=none; done; }
uncache "$dir/zplain.qcow2" "$dir/plain.qcow2" "$dir/plain.raw"
pw=$(fio_iops "$pp" randwrite); qw4k=$(fio_iops "$qp" randwrite); kw=$(fio_iops "$kp" randwrite)
stop_last; stop_last; stop_last; stop_last
# ... and onto conventional zones: all zones but the last conventional,
# every cluster written before the run. Written locally in guest order,
# as the plain image was (filled over NBD by parallel requests, the file
# ends up laid out differently and 4 KiB writes into it cost the kernel
# up to twice as much, whichever server makes them).
conv=$((MIB / 64 - 1))
rm -f "$dir/conv.qcow2"
"$Z/zcow-img" convert -O qcow2 -o zone.mode=host-managed,zone.size=64M,zone.conventional_zones=$conv "$dir/data.raw" "$dir/conv.qcow2"
start_zcow "$dir/conv.qcow2"
uncache "$dir/conv.qcow2"
cw=$(fio_iops "$port" randwrite 1 "$((conv * 64))M")
stop_last

zw=$(seq_write zcow); qw=$(seq_write qemu)
zs=$(seq_write zcow "$dir/sparse.raw"); qs=$(seq_write qemu "$dir/sparse.raw")
zsw=$(seq_write zcow "$dir/sparse.raw" convert-W); qsw=$(seq_write qemu "$dir/sparse.raw" convert-W)
zc=$(seq_write zcow "$dir/sparse.raw" nbdcopy); qc=$(seq_write qemu "$dir/sparse.raw" nbdcopy)

echo "Data: ${MIB} MiB of random bytes; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
echo "Reads: best of $RUNS alternating rounds; writes: medians of 3; IOPS from one ${FIO_SECS} s fio run each."
echo
echo "| workload | zcow-nbd (zoned qcow2) | zcow-nbd (plain qcow2) | qemu-nbd (plain qcow2) | nbdkit (raw) | zoned / nbdkit | plain / nbdkit | plain / qemu-nbd |"
echo "|---|---|---|---|---|---|---|---|"
printf '| sequential read, nbdcopy to null: (s) | %.3f | %.3f | %.3f | %.3f | %.2f× | %.2f× | %.2f× |\n' "$zr" "$pr" "$qr" "$kr" "$(ratio "$kr" "$zr")" "$(ratio "$kr" "$pr")" "$(ratio "$qr" "$pr")"
printf '| 4 KiB random read, QD16, fio (IOPS) | %s | %s | %s | %s | %.2f× | %.2f× | %.2f× |\n' "$zi" "$pi" "$qi" "$ki" "$(ratio "$zi" "$ki")" "$(ratio "$pi" "$ki")" "$(ratio "$pi" "$qi")"
printf '| 4 KiB random write, QD16, fio (IOPS; zoned: conventional zones) | %s | %s | %s | %s | %.2f× | %.2f× | %.2f× |\n' "$cw" "$pw" "$qw4k" "$kw" "$(ratio "$cw" "$kw")" "$(ratio "$pw" "$kw")" "$(ratio "$pw" "$qw4k")"
echo
echo "Ratios are speed (higher is faster): time ratios inverted, IOPS as they are."
echo
echo "| sequential read, nbdcopy to null: (s) | wall, best | server CPU, median | nbdcopy CPU, median |"
echo "|---|---|---|---|"
printf '| zcow-nbd, zoned qcow2 | %.3f | %s |\n' "$zr" "$(cpus zr)"
printf '| zcow-nbd, plain qcow2 | %.3f | %s |\n' "$pr" "$(cpus pr)"
printf '| zcow-nbd, plain qcow2, buffered replies (ZCOW_NBD_ZERO_COPY=0) | %.3f | %s |\n' "$br" "$(cpus br)"
printf '| qemu-nbd, plain qcow2 | %.3f | %s |\n' "$qr" "$(cpus qr)"
printf '| nbdkit, raw | %.3f | %s |\n' "$kr" "$(cpus kr)"
echo
echo "| multi-connection (zoned qcow2) | zcow-nbd, 1 connection | zcow-nbd, 4 connections | zcow 4 / 1 | nbdkit, 1 | nbdkit, 4 | nbdkit 4 / 1 |"
echo "|---|---|---|---|---|---|---|"
printf '| sequential read, nbdcopy --connections=N (s) | %.3f | %.3f | %.2f× | %.3f | %.3f | %.2f× |\n' "$z1" "$z4" "$(ratio "$z1" "$z4")" "$k1" "$k4" "$(ratio "$k1" "$k4")"
printf '| 4 KiB random read QD16, fio N jobs on N connections (IOPS) | %s | %s | %.2f× | %s | %s | %.2f× |\n' "$zi" "$zi4" "$(ratio "$zi4" "$zi")" "$ki" "$ki4" "$(ratio "$ki4" "$ki")"
echo
echo "| write workload | zcow-nbd (zoned qcow2) | qemu-nbd (plain qcow2) | zcow / qemu-nbd |"
echo "|---|---|---|---|"
printf '| sequential write, qemu-img convert -n (s) | %.3f | %.3f | %.2f× faster |\n' "$zw" "$qw" "$(ratio "$qw" "$zw")"
printf '| sparse write (zero tail in every zone), qemu-img convert -n (s) | %.3f | %.3f | %.2f× faster |\n' "$zs" "$qs" "$(ratio "$qs" "$zs")"
printf '| sparse write, qemu-img convert -n -W (s) | %.3f | %.3f | %.2f× faster |\n' "$zsw" "$qsw" "$(ratio "$qsw" "$zsw")"
printf '| sparse write, nbdcopy (s) | %.3f | %.3f | %.2f× faster |\n' "$zc" "$qc" "$(ratio "$qc" "$zc")"
