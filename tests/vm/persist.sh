#!/bin/bash
# Persistence: write through the device, stop the server, serve the image
# again: every zone (start, length, capacity, wp, condition) and every byte
# written are as they were, and zcow-img check finds the image clean.
. "$(dirname "$0")/lib.sh"
need_zcow
scratch
modules
img=$SCRATCH/persist.qcow2
make_image "$img" 512 16 2 8
head -c 8M /dev/urandom >"$SCRATCH/persist.data"
dev_up "$img"
guard 60 dd if="$SCRATCH/persist.data" of="$DEV" bs=1M count=3 seek=1 oflag=direct status=none || fail "write conventional"
guard 60 dd if="$SCRATCH/persist.data" of="$DEV" bs=1M count=8 seek=$((2 * 16)) oflag=direct status=none || fail "write zone 2"
guard 60 dd if="$SCRATCH/persist.data" of="$DEV" bs=1M count=5 seek=$((5 * 16)) oflag=direct status=none || fail "write zone 5"
guard 60 blkzone finish -o $((5 * 16 * 2048)) -c 1 "$DEV" || fail "finish zone 5"
guard 60 blkzone open -o $((7 * 16 * 2048)) -c 1 "$DEV" || fail "open zone 7"
guard 60 blkzone report "$DEV" >"$SCRATCH/persist.before" || fail "blkzone report"
dev_down
guard 120 "$BIN/zcow-img" check "$img" || fail "zcow-img check after a clean stop"
guard 60 "$BIN/zcow-img" zone report --output json "$img" >"$SCRATCH/persist.json" || fail "zone report"
guard 60 python3 "$(dirname "$0")/zone_compare.py" "$SCRATCH/persist.before" "$SCRATCH/persist.json" ||
  fail "image zones differ from the device's before the stop"
dev_up "$img"
guard 60 blkzone report "$DEV" >"$SCRATCH/persist.after" || fail "blkzone report after restart"
guard 60 python3 "$(dirname "$0")/zone_compare.py" "$SCRATCH/persist.after" "$SCRATCH/persist.json" ||
  fail "zones differ after restart"
check() { # DEV_OFFSET_MiB COUNT_MiB
  guard 60 cmp -n $(($2 * MiB)) <(dd if="$DEV" bs=1M skip="$1" count="$2" iflag=direct status=none) \
    "$SCRATCH/persist.data" || fail "data at ${1} MiB differs after restart"
}
check 1 3
check $((2 * 16)) 8
check $((5 * 16)) 5
# Zone 2 resumes at its write pointer.
guard 60 dd if="$SCRATCH/persist.data" of="$DEV" bs=1M count=1 seek=$((2 * 16 + 8)) oflag=direct status=none ||
  fail "write at zone 2's write pointer after restart"
dev_down
say "persistence: zones and data as before the restart"
