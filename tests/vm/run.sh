#!/usr/bin/env bash
# Boots the test kernel under QEMU and runs one command in it:
#
#   tests/vm/run.sh SCRIPT [ARGS...]
#
# The guest's root is the host's / (read-only, virtio-9p) under an overlay
# with a tmpfs upper layer, so every host binary runs unchanged and guest
# writes vanish at power-off. A writable results share is mounted in the
# guest at the same path as on the host ($ZCOW_VM_OUT inside the job). The
# job's output (stdout and stderr, on a virtconsole) is streamed here; the
# kernel log goes to $ZCOW_VM_OUT/kernel.log. Exit status: the job's, or 125
# when the VM did not boot or did not report one, 124 on the overall timeout.
#
#   ZCOW_VM_CACHE    cache filled by setup.sh (default ~/.cache/zcow-vm)
#   ZCOW_VM_TIMEOUT  overall limit in seconds (default 2400)
#   ZCOW_VM_MEM      guest memory (default 4G); ZCOW_VM_SMP vCPUs (default 2)
#   ZCOW_VM_ACCEL    tcg or kvm (default: detected, see below)
#   ZCOW_VM_OUT      results folder (default: a new folder under /tmp, kept)
#   ZCOW_VM_QEMU_ARGS  extra QEMU arguments, split on blanks (a disk for a
#                    nested guest: tests/vm/nested.sh)
set -euo pipefail

[ $# -ge 1 ] || { echo "usage: $0 SCRIPT [ARGS...]" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
CACHE=${ZCOW_VM_CACHE:-$HOME/.cache/zcow-vm}
[ -r "$CACHE/env" ] || { echo "run.sh: $CACHE/env missing; run tests/vm/setup.sh first" >&2; exit 125; }
# shellcheck disable=SC1091
. "$CACHE/env"

OUT=${ZCOW_VM_OUT:-$(mktemp -d /tmp/zcow-vm.XXXXXX)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
case "$OUT$here" in *[[:space:]]*) echo "run.sh: paths with spaces are not supported" >&2; exit 2 ;; esac
rm -f "$OUT/rc" "$OUT/console.log" "$OUT/kernel.log"

# ---- initramfs: busybox, the 9p and overlay modules, the first-stage init ----
ird=$(mktemp -d)
trap 'rm -rf "$ird"' EXIT
mkdir -p "$ird/bin" "$ird/modules" "$ird/proc" "$ird/sys" "$ird/dev"
cp "$ZCOW_VM_BUSYBOX" "$ird/bin/busybox"
cp "$here/initramfs-init" "$ird/init"
chmod +x "$ird/init"
mods=$ZCOW_VM_MODDIR/lib/modules/$ZCOW_VM_KVER/kernel
for m in fs/netfs/netfs net/9p/9pnet net/9p/9pnet_virtio fs/9p/9p fs/overlayfs/overlay; do
  xz -dc "$mods/$m.ko.xz" >"$ird/modules/$(basename "$m").ko"
done
(cd "$ird" && find . | cpio -o -H newc --quiet | gzip -1) >"$OUT/initrd.gz"

# ---- the job: command, working directory and environment for the guest ----
cmd=("$@")
case "${cmd[0]}" in /*) ;; *) [ -e "${cmd[0]}" ] && cmd[0]=$(cd "$(dirname "${cmd[0]}")" && pwd)/$(basename "${cmd[0]}") ;; esac
{
  printf 'ZCOW_VM_CWD=%q\n' "$PWD"
  printf 'ZCOW_VM_CMD=('
  printf '%q ' "${cmd[@]}"
  printf ')\n'
  printf 'export ZCOW_VM_OUT=%q ZCOW_VM_MODDIR=%q ZCOW_VM_KVER=%q\n' "$OUT" "$ZCOW_VM_MODDIR" "$ZCOW_VM_KVER"
  printf 'export ZCOW_VM_ZONEFS=%q ZCOW_VM_FIOSRC=%q\n' "$ZCOW_VM_ZONEFS" "$ZCOW_VM_FIOSRC"
  printf 'export HOME=%q CI=%q\n' "$HOME" "${CI:-}"
  # Test knobs (ZCOW_*) travel into the guest.
  env | grep -E '^ZCOW_[A-Z0-9_]*=' | grep -vE '^ZCOW_VM_(OUT|MODDIR|KVER|ZONEFS|FIOSRC|QEMU_ARGS)=' |
    while IFS='=' read -r k v; do printf 'export %s=%q\n' "$k" "$v"; done || true
} >"$OUT/job.env"

# ---- accelerator: KVM only when it can run a stock kernel ----
accel=${ZCOW_VM_ACCEL:-}
if [ -z "$accel" ]; then
  accel=tcg
  if [ -r /dev/kvm ] && [ -w /dev/kvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo &&
    [ ! -d /sys/module/kvm_pvm ]; then
    accel=kvm
  fi
fi
case "$accel" in
  kvm) accel_args=(-accel kvm -cpu host) ;;
  tcg) accel_args=(-accel tcg,thread=multi -cpu max) ;;
  *) echo "run.sh: ZCOW_VM_ACCEL must be tcg or kvm" >&2; exit 2 ;;
esac

timeout_s=${ZCOW_VM_TIMEOUT:-2400}
echo "vm: kernel $ZCOW_VM_KVER, accel $accel, ${ZCOW_VM_SMP:-2} vCPUs, ${ZCOW_VM_MEM:-4G}, timeout ${timeout_s}s, results $OUT" >&2
start=$(date +%s)
: >"$OUT/console.log"
set +e
# no_timer_check: on a loaded host TCG is too slow for the kernel's IO-APIC
# timer check, which then panics at boot ("IO-APIC + timer doesn't work").
timeout -k 20 "$timeout_s" qemu-system-x86_64 \
  -nodefaults -no-user-config -display none -no-reboot \
  -machine q35 "${accel_args[@]}" -smp "${ZCOW_VM_SMP:-2}" -m "${ZCOW_VM_MEM:-4G}" \
  -kernel "$ZCOW_VM_KERNEL" -initrd "$OUT/initrd.gz" \
  -append "console=ttyS0 panic=-1 loglevel=4 no_timer_check zcow.out=$OUT zcow.init=$here/guest-init.sh" \
  -serial "file:$OUT/kernel.log" \
  -fsdev "local,id=hostroot,path=/,readonly=on,security_model=none,multidevs=remap" \
  -device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot \
  -fsdev "local,id=zcowout,path=$OUT,security_model=none" \
  -device virtio-9p-pci,fsdev=zcowout,mount_tag=zcowout \
  -device virtio-serial-pci \
  -chardev "file,id=job,path=$OUT/console.log" -device virtconsole,chardev=job \
  ${ZCOW_VM_QEMU_ARGS:-} \
  </dev/null >"$OUT/qemu.log" 2>&1 &
qpid=$!
# An interrupted run takes its VM with it.
trap 'kill $qpid 2>/dev/null || true; rm -rf "$ird"' EXIT
trap 'exit 130' INT TERM
tail -n +1 -F --pid=$qpid "$OUT/console.log" 2>/dev/null &
tpid=$!
wait $qpid
qrc=$?
wait $tpid
set -e
rm -f "$OUT/initrd.gz"
echo "vm: finished in $(($(date +%s) - start)) s" >&2

if [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then
  echo "vm: FAILED: overall timeout of ${timeout_s}s; last kernel messages:" >&2
  tail -n 30 "$OUT/kernel.log" >&2
  exit 124
fi
if [ ! -s "$OUT/rc" ]; then
  echo "vm: FAILED: the VM did not report an exit status (qemu exit $qrc); qemu says:" >&2
  tail -n 20 "$OUT/qemu.log" >&2
  echo "vm: last kernel messages:" >&2
  tail -n 30 "$OUT/kernel.log" >&2
  exit 125
fi
exit "$(cat "$OUT/rc")"
