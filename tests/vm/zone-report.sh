#!/bin/bash
# blkzone report of the live device == zcow-img zone report of the image
# after the device is removed (start, length, capacity, wp, type, condition
# of every zone; open zones are closed by the power cycle).
. "$(dirname "$0")/lib.sh"
need_zcow
scratch
modules
img=$SCRATCH/report.qcow2
make_image "$img" 512 16 2 8
dev_up "$img"
zsec=$((16 * MiB / 512))
z() { echo $(($1 * zsec)); }
# A mix of states, every one made through the kernel's zoned interface.
guard 60 dd if=/dev/urandom of="$DEV" bs=64k count=4 oflag=direct status=none || fail "write conventional"
guard 60 dd if=/dev/urandom of="$DEV" bs=64k count=3 seek=$((2 * 256)) oflag=direct status=none || fail "write zone 2"
guard 60 dd if=/dev/urandom of="$DEV" bs=1M count=16 seek=$((3 * 16)) oflag=direct status=none || fail "fill zone 3"
guard 60 blkzone open -o "$(z 4)" -c 1 "$DEV" || fail "open zone 4"
guard 60 dd if=/dev/urandom of="$DEV" bs=4k count=5 seek=$((5 * 4096)) oflag=direct status=none || fail "write zone 5"
guard 60 blkzone close -o "$(z 5)" -c 1 "$DEV" || fail "close zone 5"
guard 60 blkzone finish -o "$(z 6)" -c 1 "$DEV" || fail "finish zone 6"
guard 60 dd if=/dev/urandom of="$DEV" bs=4k count=2 seek=$((7 * 4096)) oflag=direct status=none || fail "write zone 7"
guard 60 blkzone open -o "$(z 7)" -c 1 "$DEV" || fail "open zone 7"
guard 60 dd if=/dev/urandom of="$DEV" bs=1M count=2 seek=$((8 * 16)) oflag=direct status=none || fail "write zone 8"
guard 60 blkzone reset -o "$(z 8)" -c 1 "$DEV" || fail "reset zone 8"
guard 60 dd if=/dev/urandom of="$DEV" bs=1M count=1 seek=$((9 * 16)) oflag=direct status=none || fail "write zone 9"
guard 60 blkzone report "$DEV" >"$SCRATCH/live.txt" || fail "blkzone report"
head -n 11 "$SCRATCH/live.txt"
dev_down
guard 60 "$BIN/zcow-img" zone report --output json "$img" >"$SCRATCH/image.json" || fail "zcow-img zone report"
guard 60 python3 "$(dirname "$0")/zone_compare.py" "$SCRATCH/live.txt" "$SCRATCH/image.json" ||
  fail "blkzone report and zcow-img zone report differ"
# The same states seen the other way round: the image served again.
dev_up "$img"
guard 60 blkzone report "$DEV" >"$SCRATCH/live2.txt" || fail "blkzone report after restart"
dev_down
guard 60 python3 "$(dirname "$0")/zone_compare.py" "$SCRATCH/live2.txt" "$SCRATCH/image.json" ||
  fail "zones differ after serving the image again"
say "zone report: device and image agree"
