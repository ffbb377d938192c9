#!/bin/bash
# Runs in the nested guest of nested.sh: the zoned virtio-blk disk (/dev/vda,
# QEMU's host_device over zcow-ublk) is host-managed, reports its zones,
# takes writes at the write pointer and resets.
set -u
say() { echo "[inner $(date +%T)] $*"; }
fail() { say "FAIL: $*"; exit 1; }
export PATH=$PATH:/usr/sbin:/sbin
timeout 60 modprobe virtio_blk || fail "modprobe virtio_blk"
for _ in $(seq 1 100); do [ -b /dev/vda ] && break; sleep 0.2; done
[ -b /dev/vda ] || fail "no /dev/vda"
model=$(cat /sys/block/vda/queue/zoned)
say "/dev/vda: $model, $(cat /sys/block/vda/queue/chunk_sectors) sectors per zone, $(cat /sys/block/vda/queue/nr_zones) zones"
[ "$model" = host-managed ] || fail "/sys/block/vda/queue/zoned is $model"
z2=$((2 * 16 * 2048))
w() { timeout 60 dd if=/dev/urandom of=/dev/vda bs=64k count="$1" seek=$((2 * 256 + $2)) oflag=direct status=none; }
timeout 60 blkzone report -c 4 /dev/vda || fail "blkzone report"
w 8 0 || fail "write at zone 2's write pointer"
timeout 60 blkzone report -o $z2 -c 1 /dev/vda | tee /tmp/r1
grep -qE 'wptr 0x0*400 ' /tmp/r1 || fail "zone 2's write pointer did not move to 512 KiB"
w 1 0 2>/dev/null && fail "a write behind the write pointer succeeded"
timeout 60 blkzone reset -o $z2 -c 1 /dev/vda || fail "blkzone reset"
w 4 0 || fail "write after the reset"
timeout 60 blkzone close -o $z2 -c 1 /dev/vda || fail "blkzone close"
timeout 60 blkzone report -o $z2 -c 1 /dev/vda | tee /tmp/r2
grep -qE 'wptr 0x0*200 .*\(cl\)' /tmp/r2 || fail "zone 2 not closed at 256 KiB after the reset"
say "host-managed zoned virtio-blk disk: report, write, reset, close work"
