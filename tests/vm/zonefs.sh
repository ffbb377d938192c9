#!/bin/bash
# zonefs on the device: mkzonefs (trixie's zonefs-tools), mount, append to
# sequential zone files with O_DIRECT, read them back, file sizes follow the
# write pointers across a remount.
. "$(dirname "$0")/lib.sh"
scratch
modules
guard 60 modprobe zonefs || fail "modprobe zonefs"
command -v mkzonefs >/dev/null || fail "mkzonefs missing (tests/vm/setup.sh)"
img=$SCRATCH/zonefs.qcow2
make_image "$img" 256 16 2
dev_up "$img"
mnt=$SCRATCH/mnt-zonefs
mkdir -p "$mnt"
guard 120 mkzonefs -f "$DEV" >/dev/null || fail "mkzonefs"
guard 60 mount -t zonefs "$DEV" "$mnt" || fail "mount zonefs"
ls "$mnt/seq" | head -n 3
head -c 3M /dev/urandom >"$SCRATCH/zonefs.data"
# Appends of 1 MiB, 1 MiB, 1 MiB to seq/0 and one of 2 MiB to seq/3.
for i in 0 1 2; do
  guard 60 dd if="$SCRATCH/zonefs.data" of="$mnt/seq/0" bs=1M skip=$i count=1 seek=$i \
    oflag=direct conv=notrunc status=none || fail "append $i to seq/0"
done
guard 60 dd if="$SCRATCH/zonefs.data" of="$mnt/seq/3" bs=1M count=2 oflag=direct status=none ||
  fail "append to seq/3"
# A write that is not at the end of the file must be refused.
if guard 60 dd if="$SCRATCH/zonefs.data" of="$mnt/seq/0" bs=1M count=1 seek=0 \
  oflag=direct conv=notrunc status=none 2>/dev/null; then
  fail "zonefs accepted a write behind the write pointer"
fi
guard 60 umount "$mnt" || fail "umount"
guard 60 mount -t zonefs "$DEV" "$mnt" || fail "remount"
[ "$(stat -c %s "$mnt/seq/0")" = $((3 * MiB)) ] || fail "seq/0 size $(stat -c %s "$mnt/seq/0")"
[ "$(stat -c %s "$mnt/seq/3")" = $((2 * MiB)) ] || fail "seq/3 size $(stat -c %s "$mnt/seq/3")"
cmp "$mnt/seq/0" "$SCRATCH/zonefs.data" || fail "seq/0 content"
cmp -n $((2 * MiB)) "$mnt/seq/3" "$SCRATCH/zonefs.data" || fail "seq/3 content"
guard 60 umount "$mnt" || fail "umount"
dev_down
say "zonefs: appends read back, sizes follow write pointers after remount"
