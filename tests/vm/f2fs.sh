#!/bin/bash
# f2fs on the zoned device: mkfs.f2fs -m (16 MiB zones on 2 GiB; larger
# zones leave f2fs too few for its metadata), mount, write files, remount,
# read them back, unmount, fsck.f2fs clean.
. "$(dirname "$0")/lib.sh"
scratch
modules
guard 60 modprobe f2fs || fail "modprobe f2fs"
img=$SCRATCH/f2fs.qcow2
make_image "$img" 2048 16 8
dev_up "$img"
mnt=$SCRATCH/mnt-f2fs
mkdir -p "$mnt"
guard 120 mkfs.f2fs -q -f -m "$DEV" || fail "mkfs.f2fs -m"
guard 60 mount -t f2fs "$DEV" "$mnt" || fail "mount f2fs"
guard 300 bash -c "for i in \$(seq 1 20); do head -c 8M /dev/urandom >$mnt/f\$i || exit 1; done; sync" ||
  fail "write files"
(cd "$mnt" && md5sum f*) >"$SCRATCH/f2fs.md5"
guard 120 umount "$mnt" || fail "umount"
guard 60 mount -t f2fs "$DEV" "$mnt" || fail "remount"
guard 120 bash -c "cd $mnt && md5sum -c --quiet $SCRATCH/f2fs.md5" || fail "files differ after remount"
guard 120 umount "$mnt" || fail "umount"
guard 300 fsck.f2fs -f "$DEV" >"$SCRATCH/fsck.f2fs.log" 2>&1 || {
  cat "$SCRATCH/fsck.f2fs.log"
  fail "fsck.f2fs"
}
dev_down
say "f2fs: 160 MiB written, read back after remount, fsck clean"
