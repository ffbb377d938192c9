#!/bin/bash
# The server's life cycle as a user of rublk or ublksrv would expect it:
#  1. --id N serves /dev/ublkbN; a second server asking for the same live
#     number fails at once with a clear error (the device keeps working);
#     a second server on the same image fails on the image lock;
#  2. SIGTERM and SIGINT: the server exits 0, /dev/ublkbN and /dev/ublkcN
#     are gone, the image lock is released (zcow-io writes to the image) and
#     zcow-img check finds the image clean;
#  3. a server killed with SIGKILL leaves a stale device (/dev/ublkcN, its
#     server gone); zcow-ublk --id N removes it and serves again, with the
#     data flushed before the kill.
. "$(dirname "$0")/lib.sh"
need_zcow
scratch
modules
id=${ZCOW_VM_LIFECYCLE_ID:-5}
img=$SCRATCH/life.qcow2
other=$SCRATCH/life-other.qcow2
make_image "$img" 256 16 2
make_image "$other" 256 16 2
head -c 1M /dev/urandom >"$SCRATCH/life.data"

# gone N: neither device node of number N is left.
gone() {
  local i
  for i in $(seq 1 100); do
    [ ! -e "/dev/ublkb$1" ] && [ ! -e "/dev/ublkc$1" ] && return 0
    sleep 0.1
  done
  ls -l /dev/ublk* 2>&1
  fail "/dev/ublkb$1 or /dev/ublkc$1 still present"
}

# unlocked IMAGE: another writer can open it (the server's lock is gone).
unlocked() {
  guard 60 "$BIN/zcow-io" -c "write -P 0x5a 0 4k" "$1" >"$SCRATCH/life.io" 2>&1 || {
    cat "$SCRATCH/life.io"
    fail "$1 still locked after the server exited"
  }
}

# stop_with SIGNAL: like dev_down with another signal, then the checks of 2.
stop_with() {
  local rc i t
  say "sending SIG$1 to zcow-ublk (pid $SERVER)"
  kill "-$1" "$SERVER"
  # Bash reaps its children itself: an exited server is a zombie or gone.
  for i in $(seq 1 300); do
    case $(awk '{print $3}' "/proc/$SERVER/stat" 2>/dev/null) in '' | Z) break ;; esac
    sleep 0.2
  done
  if kill -0 "$SERVER" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$SERVER/stat" 2>/dev/null)" != Z ]; then
    cat "$SERVER_LOG"
    ps -eo pid,stat,wchan:32,args | grep -v grep | grep -E 'zcow|dd|PID'
    for t in /proc/"$SERVER"/task/*; do
      echo "-- $t $(cat "$t/comm")"
      cat "$t/stack" 2>/dev/null
    done
    fail "zcow-ublk still running 60 s after SIG$1"
  fi
  wait "$SERVER"
  rc=$?
  [ "$rc" = 0 ] || {
    cat "$SERVER_LOG"
    fail "zcow-ublk exited $rc after SIG$1"
  }
  SERVER=
  gone "$id"
  guard 120 "$BIN/zcow-img" check "$img" || fail "zcow-img check after SIG$1"
  unlocked "$img"
  say "SIG$1: exit 0, /dev/ublkb$id and /dev/ublkc$id gone, lock released, image clean"
}

# ---- 1: --id N, the number taken, the image locked ----
dev_up "$img" --id "$id"
[ "$DEV" = "/dev/ublkb$id" ] || fail "--id $id served $DEV"
guard 60 dd if="$SCRATCH/life.data" of="$DEV" bs=1M count=1 oflag=direct status=none || fail "write"
first=$SERVER
guard 60 "$BIN/zcow-ublk" --id "$id" "$other" >"$SCRATCH/life.second" 2>&1
rc=$?
cat "$SCRATCH/life.second"
[ "$rc" = 1 ] || fail "a second server on device $id exited $rc, want 1"
grep -q "ublk device $id is in use (server pid $first)" "$SCRATCH/life.second" ||
  fail "no clear error for a device number in use"
guard 60 "$BIN/zcow-ublk" "$img" >"$SCRATCH/life.locked" 2>&1
rc=$?
cat "$SCRATCH/life.locked"
[ "$rc" = 1 ] || fail "a second server on the same image exited $rc, want 1"
grep -qi "lock" "$SCRATCH/life.locked" || fail "no lock error for a second server on the image"
guard 60 cmp -n "$MiB" <(dd if="$DEV" bs=1M count=1 iflag=direct status=none) "$SCRATCH/life.data" ||
  fail "$DEV does not read back after the refused second servers"
say "device $id in use and image locked: both refused, $DEV unharmed"

# ---- 2: SIGTERM ----
stop_with TERM

# ---- 3: SIGKILL leaves a stale device; --id N recovers it ----
dev_up "$img" --id "$id"
guard 60 dd if="$SCRATCH/life.data" of="$DEV" bs=1M count=1 seek=1 oflag=direct conv=fsync status=none ||
  fail "write before the kill"
dev_kill
for i in $(seq 1 100); do
  [ ! -e "/dev/ublkb$id" ] && break
  sleep 0.1
done
[ -e "/dev/ublkc$id" ] || fail "no stale /dev/ublkc$id after SIGKILL (the test assumes the driver keeps it)"
say "after SIGKILL: /dev/ublkc$id stale, /dev/ublkb$id $([ -e "/dev/ublkb$id" ] && echo present || echo gone)"
dev_up "$img" --id "$id"
grep -q "removed stale ublk device $id" "$SERVER_LOG" || fail "no 'removed stale' note"
[ "$DEV" = "/dev/ublkb$id" ] || fail "--id $id served $DEV after the stale device"
guard 60 cmp -n "$MiB" <(dd if="$DEV" bs=1M count=1 skip=1 iflag=direct status=none) "$SCRATCH/life.data" ||
  fail "data flushed before the kill does not read back"
say "stale device $id removed and served again, flushed data intact"

# ---- 2 again: SIGINT ----
stop_with INT
say "lifecycle: all as expected"
