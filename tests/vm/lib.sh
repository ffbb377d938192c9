# Shared helpers for the in-guest tests (sourced, not run).
#
# A test script exits 0 (pass), 77 (skip: not applicable to this backend) or
# anything else (fail). Every step that talks to the device runs under
# `guard SECONDS ...`: a request that is never completed must fail the test,
# not hang the VM.
#
#   ZCOW_VM_BACKEND  zcow (default: zcow-ublk serving a qcow2 image),
#                    nullblk (the kernel's zoned null_blk: proves the scripts
#                    and gives the reference behaviour; image checks skip) or
#                    rublk (rublk's memory-backed zoned target, the ublk
#                    anchor; image checks skip)
#   ZCOW_VM_RUBLK    the rublk binary (default ~/.cache/zcow-vm/rublk/bin/rublk)
#   ZCOW_BIN         folder with zcow-img/zcow-io/zcow-ublk (target/release)

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${ZCOW_BIN:-$REPO/target/release}
BACKEND=${ZCOW_VM_BACKEND:-zcow}
RUBLK=${ZCOW_VM_RUBLK:-$HOME/.cache/zcow-vm/rublk/bin/rublk}
# rublk's device number: fixed, so a hung device can be deleted by number.
RUBLK_ID=${ZCOW_VM_RUBLK_ID:-9}
SCRATCH=/var/tmp/zcow-vm
SKIP=77
MiB=$((1 << 20))
export PATH=$PATH:/usr/sbin:/sbin:${ZCOW_VM_ZONEFS:-/nonexistent}/usr/sbin

say() { echo "[$(date +%T)] $*"; }
fail() {
  say "FAIL: $*"
  exit 1
}

# guard SECONDS CMD...: runs CMD with a time limit, names a timeout.
guard() {
  local secs=$1 rc
  shift
  timeout -k 10 "$secs" "$@"
  rc=$?
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    say "TIMEOUT after ${secs}s: $*"
  fi
  return "$rc"
}

# wait_for PID SECONDS: waits for a child to exit; 124 when it did not.
wait_for() {
  local pid=$1 i st
  for i in $(seq 1 $(($2 * 5))); do
    st=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)
    if [ -z "$st" ] || [ "$st" = Z ]; then
      wait "$pid" 2>/dev/null
      return 0
    fi
    sleep 0.2
  done
  say "TIMEOUT: pid $pid still running after $2 s ($(cat /proc/$pid/cmdline 2>/dev/null | tr '\0' ' '), state $st)"
  return 124
}

# Scratch space for images: guest RAM, gone at power-off.
scratch() {
  mkdir -p "$SCRATCH"
  mountpoint -q "$SCRATCH" || mount -t tmpfs -o size=75% tmpfs "$SCRATCH"
}

modules() {
  guard 60 modprobe ublk_drv || fail "modprobe ublk_drv"
  if [ "$BACKEND" = nullblk ]; then
    guard 60 modprobe null_blk nr_devices=0 || fail "modprobe null_blk"
    mountpoint -q /sys/kernel/config || mount -t configfs configfs /sys/kernel/config
  fi
}

# make_image FILE SIZE_MiB ZONE_MiB CONV_ZONES [MAX_OPEN] [CAPACITY_MiB]
make_image() {
  local opts="zone.mode=host-managed,zone.size=$3M,zone.conventional_zones=$4"
  [ -n "${5:-}" ] && opts+=",zone.max_open_zones=$5"
  [ -n "${6:-}" ] && opts+=",zone.capacity=$6M"
  guard 60 "$BIN/zcow-img" create -f qcow2 -o "$opts" "$1" "$2M" >/dev/null ||
    fail "zcow-img create $1"
}

# dev_up IMAGE [zcow-ublk options]: serves IMAGE, sets DEV and SERVER.
# With the nullblk backend a null_blk device of the image's geometry stands
# in (IMAGE must have been made with make_image; it is not used for data).
DEV=
SERVER=
SERVER_LOG=
dev_up() {
  local img=$1 i
  shift
  case $BACKEND in
    nullblk) nullb_up "$img"; return ;;
    rublk) rublk_up "$img"; return ;;
  esac
  SERVER_LOG=$img.server.log
  "$BIN/zcow-ublk" "$@" "$img" >"$SERVER_LOG" 2>&1 &
  SERVER=$!
  DEV=
  for i in $(seq 1 600); do
    DEV=$(grep -o -m1 '/dev/ublkb[0-9]*' "$SERVER_LOG" 2>/dev/null || true)
    [ -n "$DEV" ] && [ -b "$DEV" ] && break
    kill -0 "$SERVER" 2>/dev/null || break
    sleep 0.1
  done
  if [ -z "$DEV" ] || [ ! -b "$DEV" ]; then
    cat "$SERVER_LOG"
    fail "zcow-ublk did not bring up a device for $img"
  fi
  say "zcow-ublk (pid $SERVER) serves $img as $DEV"
}

# dev_down: SIGTERM, the device must go and the server exit 0.
dev_down() {
  case $BACKEND in
    nullblk) nullb_down; return ;;
    rublk) rublk_down; return ;;
  esac
  local rc i
  kill -TERM "$SERVER" 2>/dev/null
  for i in $(seq 1 600); do
    kill -0 "$SERVER" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$SERVER" 2>/dev/null; then
    kill -KILL "$SERVER"
    wait "$SERVER" 2>/dev/null
    cat "$SERVER_LOG"
    fail "zcow-ublk did not exit within 60 s of SIGTERM"
  fi
  wait "$SERVER"
  rc=$?
  [ "$rc" = 0 ] || {
    cat "$SERVER_LOG"
    fail "zcow-ublk exited with $rc after SIGTERM"
  }
  [ ! -e "$DEV" ] || fail "$DEV still present after the server exited"
  say "zcow-ublk stopped, $DEV removed"
  SERVER=
}

# dev_kill: SIGKILL, no clean-up by the server. For rublk the dead device
# is deleted too (rublk leaves it behind).
dev_kill() {
  kill -KILL "$SERVER"
  wait "$SERVER" 2>/dev/null
  say "$BACKEND server (pid $SERVER) killed with SIGKILL"
  SERVER=
  if [ "$BACKEND" = rublk ]; then
    guard 60 "$RUBLK" del -n "$RUBLK_ID" >/dev/null 2>&1
  fi
}

# image_geometry IMAGE: sets size zsize zcap conv (MiB, MiB, MiB, count),
# read back from the image, so every backend tests the same device.
image_geometry() {
  local geo
  geo=$(python3 - "$BIN/zcow-img" "$1" <<'EOF'
import json, subprocess, sys
z = json.loads(subprocess.check_output([sys.argv[1], "zone", "report", "--output", "json", sys.argv[2]]))["zones"]
conv = sum(1 for x in z if x["type"] == "conventional")
print(len(z) * z[0]["length"] >> 20, z[0]["length"] >> 20, z[-1]["capacity"] >> 20, conv)
EOF
  ) || fail "reading the geometry of $1"
  read -r size zsize zcap conv <<<"$geo"
}

nullb_up() {
  local d size zsize zcap conv
  image_geometry "$1"
  d=/sys/kernel/config/nullb/zcowvm
  mkdir "$d" || fail "configfs null_blk"
  echo "$size" >"$d/size"
  echo 1 >"$d/memory_backed"
  echo 1 >"$d/zoned"
  echo "$zsize" >"$d/zone_size"
  echo "$zcap" >"$d/zone_capacity"
  echo "$conv" >"$d/zone_nr_conv"
  echo 1 >"$d/power" || fail "null_blk power on"
  # 6.x names the disk after the configfs item; older kernels nullb<index>.
  DEV=/dev/zcowvm
  [ -e /sys/block/zcowvm ] || DEV=/dev/nullb$(cat "$d/index")
  udev_settle
  say "null_blk $DEV: ${size} MiB, ${zsize} MiB zones, $conv conventional"
}
nullb_down() {
  echo 0 >/sys/kernel/config/nullb/zcowvm/power
  rmdir /sys/kernel/config/nullb/zcowvm
}
# rublk's memory-backed zoned target of the image's geometry (rublk has no
# zone capacity option: the image must have none either), in the foreground
# so that SERVER is its pid.
rublk_up() {
  local size zsize zcap conv i
  [ -x "$RUBLK" ] || fail "$RUBLK missing (cargo install rublk --version 0.2.15 --no-default-features --root ~/.cache/zcow-vm/rublk)"
  image_geometry "$1"
  [ "$zcap" = "$zsize" ] || fail "rublk cannot serve a zone capacity below the zone size"
  SERVER_LOG=$1.rublk.log
  "$RUBLK" add zoned --foreground -n "$RUBLK_ID" --size "${size}MiB" --zone-size "${zsize}MiB" \
    --conv-zones "$conv" >"$SERVER_LOG" 2>&1 &
  SERVER=$!
  DEV=/dev/ublkb$RUBLK_ID
  for i in $(seq 1 600); do
    [ -b "$DEV" ] && break
    kill -0 "$SERVER" 2>/dev/null || break
    sleep 0.1
  done
  if [ ! -b "$DEV" ]; then
    cat "$SERVER_LOG"
    fail "rublk did not bring up $DEV"
  fi
  say "rublk (pid $SERVER) serves a ${size} MiB zoned device, ${zsize} MiB zones, $conv conventional, as $DEV"
}
rublk_down() {
  guard 60 "$RUBLK" del -n "$RUBLK_ID" >/dev/null || say "rublk del -n $RUBLK_ID failed"
  wait_for "$SERVER" 60 || { kill -KILL "$SERVER"; fail "rublk did not exit after del"; }
  SERVER=
  say "rublk stopped"
}

udev_settle() {
  local i
  for i in $(seq 1 100); do
    [ -b "$DEV" ] && return 0
    sleep 0.1
  done
  fail "$DEV did not appear"
}

# check_image IMAGE: zcow-img check finds no corruption. Exit 3 (leaked
# clusters only: clusters a killed server allocated past the durable write
# pointer, space but no harm to data) passes; 2 (corruption) or anything
# else fails.
check_image() {
  local rc
  guard 300 "$BIN/zcow-img" check "$1"
  rc=$?
  case $rc in
    0) say "zcow-img check: clean" ;;
    3) say "zcow-img check: leaked clusters only, no corruption" ;;
    *) fail "zcow-img check $1 exited $rc" ;;
  esac
}

need_zcow() {
  if [ "$BACKEND" != zcow ]; then
    say "SKIP: needs the zcow backend (image checks)"
    exit "$SKIP"
  fi
}

# Stops whatever is still up when a test exits early.
cleanup() {
  if [ -n "$SERVER" ]; then kill -KILL "$SERVER" 2>/dev/null; fi
  if [ "$BACKEND" = rublk ] && [ -e "/dev/ublkc$RUBLK_ID" ]; then
    timeout 30 "$RUBLK" del -n "$RUBLK_ID" >/dev/null 2>&1
  fi
  if [ "$BACKEND" = nullblk ] && [ -d /sys/kernel/config/nullb/zcowvm ]; then nullb_down 2>/dev/null; fi
}
trap cleanup EXIT
