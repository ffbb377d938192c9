#!/bin/bash
# Second stage of the test VM, PID 1 in the overlay root (the host's tree).
# Mounts the pseudo file systems (/tmp stays the overlay's: the host's /tmp
# holds the results share), makes the guest kernel's modules visible at
# /lib/modules (the host has none), runs the job written by run.sh with its
# output on the virtconsole, writes its exit status to the results share and
# powers off. Never returns: PID 1 exiting would panic the guest.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

arg() { sed -n "s/.*\\b$1=\\([^ ]*\\).*/\\1/p" /proc/cmdline; }

mount -t proc proc /proc
mount -t sysfs sys /sys
mountpoint -q /dev || mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mount -t configfs configfs /sys/kernel/config 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
hostname zcow-vm

OUT=$(arg zcow.out)
# shellcheck disable=SC1091
. "$OUT/job.env"
mkdir -p /lib/modules
mount --bind "$ZCOW_VM_MODDIR/lib/modules" /lib/modules
ln -sf /proc/self/fd /dev/fd 2>/dev/null

con=/dev/hvc0
[ -c "$con" ] || con=/dev/console
(
  cd "$ZCOW_VM_CWD" || exit 125
  exec "${ZCOW_VM_CMD[@]}"
) </dev/null >"$con" 2>&1
rc=$?
echo "$rc" >"$OUT/rc"
sync
echo o >/proc/sysrq-trigger
sleep 30
