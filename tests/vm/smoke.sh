#!/bin/bash
# Smoke test of the VM harness: the guest kernel's ublk and zoned null_blk
# modules load and the kernel reports zones. Run: tests/vm/run.sh tests/vm/smoke.sh
set -euo pipefail
step() { echo "smoke: $*"; }
step "kernel $(uname -r)"
timeout 30 modprobe ublk_drv
test -c /dev/ublk-control
step "ublk_drv loaded, /dev/ublk-control present"
timeout 30 modprobe null_blk nr_devices=1 zoned=1 zone_size=4 zone_nr_conv=2 gb=1 memory_backed=1
test "$(cat /sys/block/nullb0/queue/zoned)" = host-managed
zones=$(timeout 30 blkzone report /dev/nullb0 | wc -l)
step "null_blk zoned: $zones zones reported"
test "$zones" = 256
timeout 30 blkzone report -c 3 /dev/nullb0
echo "smoke: ok"
