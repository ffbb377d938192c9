#!/bin/bash
# Crash: SIGKILL the server during a write load, then
#  1. zcow-img check finds no corruption in the image;
#  2. served again, every write that completed with a flush before the kill
#     reads back (raw device: 256 KiB chunks written in order through the
#     zones, each with fsync);
#  3. an f2fs file system killed the same way mounts again, every file
#     fsync'ed before the kill reads back, and fsck.f2fs is clean.
. "$(dirname "$0")/lib.sh"
need_zcow
scratch
modules
guard 60 modprobe f2fs || fail "modprobe f2fs"
head -c 16M /dev/urandom >"$SCRATCH/crash.data"

# ---- 1+2: raw device ----
img=$SCRATCH/crash.qcow2
make_image "$img" 1024 16 2 8
dev_up "$img"
acked=$SCRATCH/crash.acked
: >"$acked"
first=$((2 * 16 * 4)) # first sequential zone, in 256 KiB chunks
python3 "$(dirname "$0")/flushed_writer.py" "$DEV" "$SCRATCH/crash.data" $((first * 256 * 1024)) \
  $((256 * 1024)) 2000 "$acked" &
writer=$!
sleep "${ZCOW_VM_CRASH_AFTER:-8}"
n=$(wc -l <"$acked")
[ "$n" -gt 0 ] || fail "no write completed in the load"
dev_kill
wait_for "$writer" 60 || fail "writer stuck after the kill"
n=$(wc -l <"$acked")
say "$n flushed 256 KiB writes acknowledged before the kill"
check_image "$img"
dev_up "$img"
guard 300 python3 "$(dirname "$0")/flushed_writer.py" --verify "$DEV" "$SCRATCH/crash.data" \
  $((first * 256 * 1024)) $((256 * 1024)) "$n" || fail "flushed pieces lost after the crash"
say "all $n flushed chunks read back"
# The write pointer the restarted device reports covers every flushed piece.
read -r zstart zwp < <(blkzone report -o $(((first + n - 1) * 512)) -c 1 "$DEV" |
  sed -n 's/.*start: 0x\([0-9a-f]*\), .*wptr 0x\([0-9a-f]*\).*/\1 \2/p')
end=$(((first + n) * 512)) # sectors
[ $((0x$zstart + 0x$zwp)) -ge "$end" ] ||
  fail "write pointer $((0x$zstart + 0x$zwp)) behind the last flushed sector $end"
say "write pointer $((0x$zstart + 0x$zwp)) >= $end, the end of the flushed pieces"
dev_down

# ---- 3: f2fs ----
img=$SCRATCH/crash-f2fs.qcow2
make_image "$img" 2048 16 8
dev_up "$img"
mnt=$SCRATCH/mnt-crash
mkdir -p "$mnt"
guard 120 mkfs.f2fs -q -f -m "$DEV" || fail "mkfs.f2fs"
guard 60 mount -t f2fs "$DEV" "$mnt" || fail "mount f2fs"
acked=$SCRATCH/crash-f2fs.acked
: >"$acked"
(
  for i in $(seq 0 2000); do
    dd if="$SCRATCH/crash.data" of="$mnt/f$i" bs=256k skip=$((i % 60)) count=4 conv=fsync status=none 2>/dev/null || exit 0
    echo "$i" >>"$acked"
  done
) &
writer=$!
sleep "${ZCOW_VM_CRASH_AFTER:-8}"
dev_kill
wait_for "$writer" 60 || fail "writer stuck after the kill"
n=$(wc -l <"$acked")
[ "$n" -gt 0 ] || fail "no file fsync'ed before the kill"
say "$n files of 1 MiB fsync'ed before the kill"
guard 120 umount "$mnt" || guard 60 umount -l "$mnt" || fail "umount of the dead file system"
check_image "$img"
dev_up "$img"
guard 120 mount -t f2fs "$DEV" "$mnt" || fail "mount f2fs after the crash"
for i in $(seq 0 $((n - 1))); do
  cmp "$mnt/f$i" <(dd if="$SCRATCH/crash.data" bs=256k skip=$((i % 60)) count=4 status=none) >/dev/null ||
    fail "fsync'ed file f$i lost or damaged after the crash"
done
say "all $n fsync'ed files read back"
guard 120 umount "$mnt" || fail "umount"
guard 300 fsck.f2fs -f "$DEV" >"$SCRATCH/crash-fsck.log" 2>&1 || {
  cat "$SCRATCH/crash-fsck.log"
  fail "fsck.f2fs after the crash"
}
dev_down
say "crash: image clean, flushed data kept, f2fs clean"
