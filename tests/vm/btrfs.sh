#!/bin/bash
# btrfs zoned on the device: mkfs.btrfs -O zoned, mount, write, remount,
# read back, btrfs scrub clean.
. "$(dirname "$0")/lib.sh"
scratch
modules
guard 60 modprobe btrfs || fail "modprobe btrfs"
img=$SCRATCH/btrfs.qcow2
make_image "$img" 2048 16 0
dev_up "$img"
mnt=$SCRATCH/mnt-btrfs
mkdir -p "$mnt"
guard 120 mkfs.btrfs -q -f -O zoned "$DEV" || fail "mkfs.btrfs -O zoned"
guard 60 mount -t btrfs "$DEV" "$mnt" || fail "mount btrfs"
guard 300 bash -c "for i in \$(seq 1 20); do head -c 8M /dev/urandom >$mnt/f\$i || exit 1; done; sync" ||
  fail "write files"
(cd "$mnt" && md5sum f*) >"$SCRATCH/btrfs.md5"
guard 120 umount "$mnt" || fail "umount"
guard 60 mount -t btrfs "$DEV" "$mnt" || fail "remount"
guard 120 bash -c "cd $mnt && md5sum -c --quiet $SCRATCH/btrfs.md5" || fail "files differ after remount"
guard 300 btrfs scrub start -B "$mnt" >"$SCRATCH/scrub.log" 2>&1 || {
  cat "$SCRATCH/scrub.log"
  fail "btrfs scrub"
}
grep -q "Error summary: *no errors found" "$SCRATCH/scrub.log" || {
  cat "$SCRATCH/scrub.log"
  fail "btrfs scrub found errors"
}
guard 120 umount "$mnt" || fail "umount"
dev_down
say "btrfs: 160 MiB written, read back after remount, scrub clean"
