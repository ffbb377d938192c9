#!/usr/bin/env bash
# NBD benchmark: zcow-nbd beside qemu-nbd and nbdkit, same data, loopback,
# one run. zcow-nbd serves a zoned qcow2 image; qemu-nbd serves its plain
# twin (same bytes); nbdkit serves the raw file. Prints a Markdown table.
# Usage: benches/nbd.sh [SIZE_MIB]   (needs qemu-utils, libnbd-bin, nbdkit, fio)
set -euo pipefail
cd "$(dirname "$0")/.."
MIB=${1:-1024}
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

head -c $((MIB << 20)) /dev/urandom > "$dir/data.raw"
cp "$dir/data.raw" "$dir/plain.raw"
qemu-img convert -O qcow2 "$dir/data.raw" "$dir/plain.qcow2"
mkzoned() {
  rm -f "$1"
  "$Z/zcow-img" create -q -f qcow2 -o zone.mode=host-managed,zone.size=64M "$1" "${MIB}M"
}

# Each start_* sets $port and records the server's PID (no subshells, so
# the PIDs reach the cleanup trap).
start_zcow() { port=$(free_port); "$Z/zcow-nbd" -t -e 0 -f qcow2 -p "$port" "$1" & pids+=($!); wait_port "$port"; }
start_qemu() { port=$(free_port); qemu-nbd -t -e 0 -f qcow2 -b 127.0.0.1 -p "$port" "$1" & pids+=($!); wait_port "$port"; }
start_kit()  { port=$(free_port); nbdkit -f -i 127.0.0.1 -p "$port" file "$1" & pids+=($!); wait_port "$port"; }
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

seq_read() { # port
  local t=()
  for _ in 1 2 3; do s=$(now); nbdcopy "nbd://127.0.0.1:$1" null: ; e=$(now); t+=("$(echo "$e - $s" | bc)"); done
  printf '%s\n' "${t[@]}" | median
}
rand_read() { # port -> IOPS
  fio --name=r --ioengine=nbd --uri="nbd://127.0.0.1:$1" --rw=randread --bs=4k --iodepth=16 \
      --runtime=8 --time_based --size="${MIB}M" --output-format=json 2>/dev/null |
    /usr/bin/python3 -c 'import json,sys; t=sys.stdin.read(); print(round(json.loads(t[t.index("{"):])["jobs"][0]["read"]["iops"]))'
}

start_zcow "$dir/zoned.qcow2"; zp=$port
start_qemu "$dir/plain.qcow2"; qp=$port
start_kit "$dir/plain.raw"; kp=$port
zr=$(seq_read "$zp"); qr=$(seq_read "$qp"); kr=$(seq_read "$kp")
zi=$(rand_read "$zp"); qi=$(rand_read "$qp"); ki=$(rand_read "$kp")
stop_last; stop_last; stop_last
zw=$(seq_write zcow); qw=$(seq_write qemu)
zs=$(seq_write zcow "$dir/sparse.raw"); qs=$(seq_write qemu "$dir/sparse.raw")
zsw=$(seq_write zcow "$dir/sparse.raw" convert-W); qsw=$(seq_write qemu "$dir/sparse.raw" convert-W)
zc=$(seq_write zcow "$dir/sparse.raw" nbdcopy); qc=$(seq_write qemu "$dir/sparse.raw" nbdcopy)

echo "Data: ${MIB} MiB of random bytes. Times are medians of 3 runs; IOPS from one 8 s fio run."
echo
echo "| workload | zcow-nbd (zoned qcow2) | qemu-nbd (plain qcow2 twin) | nbdkit (raw) | zcow / qemu-nbd | zcow / nbdkit |"
echo "|---|---|---|---|---|---|"
printf '| sequential read, nbdcopy to null: (s) | %.3f | %.3f | %.3f | %.2f× faster | %.2f× faster |\n' "$zr" "$qr" "$kr" "$(echo "$qr / $zr" | bc -l)" "$(echo "$kr / $zr" | bc -l)"
printf '| sequential write, qemu-img convert -n (s) | %.3f | %.3f | – | %.2f× faster | – |\n' "$zw" "$qw" "$(echo "$qw / $zw" | bc -l)"
printf '| sparse write (zero tail in every zone), qemu-img convert -n (s) | %.3f | %.3f | – | %.2f× faster | – |\n' "$zs" "$qs" "$(echo "$qs / $zs" | bc -l)"
printf '| sparse write, qemu-img convert -n -W (s) | %.3f | %.3f | – | %.2f× faster | – |\n' "$zsw" "$qsw" "$(echo "$qsw / $zsw" | bc -l)"
printf '| sparse write, nbdcopy (s) | %.3f | %.3f | – | %.2f× faster | – |\n' "$zc" "$qc" "$(echo "$qc / $zc" | bc -l)"
printf '| 4 KiB random read, QD16, fio (IOPS) | %s | %s | %s | %.2f× | %.2f× |\n' "$zi" "$qi" "$ki" "$(echo "$zi / $qi" | bc -l)" "$(echo "$zi / $ki" | bc -l)"
