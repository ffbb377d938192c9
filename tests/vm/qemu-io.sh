#!/bin/bash
# QEMU's own zoned block layer on the device: qemu-io opens /dev/ublkbN as a
# zoned host_device (the code path a guest's zoned virtio-blk disk uses) and
# runs zone report, open, close, finish, reset and zone append. Asserted,
# exactly:
#  1. qemu-io's output on the device equals zcow-io's output for the same
#     commands on a fresh image of the same geometry (every zone's start,
#     length, capacity, write pointer, condition and type, every append
#     sector, every read-back pattern check);
#  2. after the device is removed, zcow-io's zone report of the served image
#     equals the device's last report (all zones closed before it, so the
#     states survive the power cycle unchanged) and the data reads back.
. "$(dirname "$0")/lib.sh"
need_zcow
scratch
modules
QEMU_IO=${ZCOW_VM_QEMU_IO:-qemu-io}
command -v "$QEMU_IO" >/dev/null || fail "$QEMU_IO missing (qemu-utils from bookworm-backports)"
img=$SCRATCH/qemu-io.qcow2
ref=$SCRATCH/qemu-io-ref.qcow2
# 256 MiB, 16 MiB zones, 2 conventional, 8 open at most.
make_image "$img" 256 16 2 8
make_image "$ref" 256 16 2 8
z() { echo $(($1 * 16))M; }
cmds=(
  "zrp 0 16"
  "write -P 0x11 0 64k"
  "zap -p $(z 2) 64k"
  "zap -p $(z 2) 32k"
  "zo $(z 3) 16M"
  "zap -p $(z 3) 4k"
  "zo $(z 4) 16M"
  "zc $(z 4) 16M"
  "write -P 0x22 $(z 5) 128k"
  "zc $(z 5) 16M"
  "zf $(z 6) 16M"
  "write -P 0x33 $(z 7) 1M"
  "zrs $(z 7) 16M"
  "zap -p $(z 8) 64k"
  "zf $(z 8) 16M"
  "zap -p $(z 9) 8k"
  "zap -p $(z 9) 8k"
  "zap -p $(z 9) 64k"
  "write -P 0x44 $(z 10) 4k"
  "read -P 0x11 0 64k"
  "read -P 0x22 $(z 5) 128k"
  "read -P 0xcd $(z 2) 96k"
  "read -P 0xcd $(z 9) 80k"
  "zrp 0 16"
  "zc $(z 2) 16M"
  "zc $(z 3) 16M"
  "zc $(z 9) 16M"
  "zc $(z 10) 16M"
  "zrp 0 16"
)
args=()
for c in "${cmds[@]}"; do args+=(-c "$c"); done
# The I/O statistics lines carry timings: everything else is compared.
stats() { grep -v ' ops; '; }

dev_up "$img"
say "qemu-io on $DEV: $(cat "/sys/block/${DEV#/dev/}/queue/zoned") device"
guard 120 "$QEMU_IO" --image-opts "driver=host_device,filename=$DEV,cache.direct=on" "${args[@]}" \
  >"$SCRATCH/qemu-io.raw" 2>&1 || fail "qemu-io on $DEV exited $?"
stats <"$SCRATCH/qemu-io.raw" >"$SCRATCH/qemu-io.out"
cat "$SCRATCH/qemu-io.out"
dev_down

guard 120 "$BIN/zcow-io" "${args[@]}" "$ref" >"$SCRATCH/zcow-io.raw" 2>&1 || fail "zcow-io on $ref exited $?"
stats <"$SCRATCH/zcow-io.raw" >"$SCRATCH/zcow-io.out"
diff -u "$SCRATCH/zcow-io.out" "$SCRATCH/qemu-io.out" ||
  fail "qemu-io on the device and zcow-io on an image differ (- zcow-io, + qemu-io)"
grep -q 'append sector is' "$SCRATCH/qemu-io.out" || fail "no append sector in qemu-io's output"
if grep -qiE 'error|fail|not supported|mismatch' "$SCRATCH/qemu-io.out"; then
  fail "a command failed on the device (the same failure on the image would be a zcow-io bug)"
fi
say "qemu-io on the device == zcow-io on an image: $(grep -c 'append sector' "$SCRATCH/qemu-io.out") appends, 3 reports"

# The served image after the device is gone: the last report and the data.
tail -n 16 "$SCRATCH/qemu-io.out" >"$SCRATCH/qemu-io.last"
guard 120 "$BIN/zcow-io" -c "zrp 0 16" "$img" >"$SCRATCH/image.zrp" 2>&1 || fail "zcow-io zrp on $img"
diff -u "$SCRATCH/image.zrp" "$SCRATCH/qemu-io.last" ||
  fail "the image's zones differ from the device's last report (- image, + device)"
guard 120 "$BIN/zcow-io" -c "read -P 0x11 0 64k" -c "read -P 0x22 $(z 5) 128k" \
  -c "read -P 0xcd $(z 2) 96k" -c "read -P 0xcd $(z 9) 80k" -c "read -P 0x44 $(z 10) 4k" \
  "$img" >"$SCRATCH/image.read" 2>&1 || fail "zcow-io read on $img"
if grep -q 'mismatch\|error' "$SCRATCH/image.read"; then
  cat "$SCRATCH/image.read"
  fail "data written through qemu-io does not read back from the image"
fi
check_image "$img"
say "qemu-io: device and image agree"
