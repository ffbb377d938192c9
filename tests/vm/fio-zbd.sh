#!/bin/bash
# fio's zoned block device suite (t/zbd/test-zbd-support from Debian's fio
# source) on the device, one test case at a time under its own timeout, so a
# request that is never completed fails that case instead of the run.
#
#   fio-zbd.sh [--target zcow|rublk|nullblk] [TEST...]
#                          default: zcow-ublk, every test case of the suite
#
# --target (or ZCOW_VM_BACKEND) picks the device: zcow-ublk serving a zoned
# qcow2 image, stock rublk 0.2.15's memory-backed zoned target (the ublk
# anchor the suite table compares with), or the kernel's zoned null_blk;
# all three get the same geometry.
#
# Not applicable, and not counted: 54 (fails on the kernel's own null_blk
# with fio 3.33). Skipped by the suite itself on any ublk device: 09 10
# (SCSI only), 42 43 49 56 (need a non-zoned disk).
# Per-test results go to $ZCOW_VM_OUT/fio-zbd.results ("NN PASS|FAIL|SKIP|NA
# SECONDS [reason]"), a copy to fio-zbd.TARGET.results.
if [ "${1:-}" = --target ]; then
  export ZCOW_VM_BACKEND=${2:?--target needs zcow, rublk or nullblk}
  shift 2
fi
. "$(dirname "$0")/lib.sh"
case $BACKEND in
  zcow | rublk | nullblk) ;;
  *) fail "unknown target $BACKEND (zcow, rublk or nullblk)" ;;
esac
scratch
modules
suite=${ZCOW_VM_FIOSRC:?}/t/zbd/test-zbd-support
[ -x "$suite" ] || fail "$suite missing (tests/vm/setup.sh)"
# 1 GiB, 4 MiB zones, 10% conventional: one of the geometries of fio's
# run-tests-against-nullb, with the conventional and sequential zone counts
# the suite asks for (>= 8 and >= 130).
img=$SCRATCH/fio-zbd.qcow2
make_image "$img" 1024 4 25
dev_up "$img"
tests=("$@")
[ ${#tests[@]} -gt 0 ] || readarray -t tests < <(sed -n 's/^test\([0-9]*\)().*/\1/p' "$suite" | sort -n)
res=${ZCOW_VM_OUT:-$SCRATCH}/fio-zbd.results
: >"$res"
pass=0 failn=0 skip=0 na=0
for t in "${tests[@]}"; do
  t=$((10#$t))
  n=$(printf %02d "$t")
  if [ "$t" = 54 ]; then
    echo "$n NA" >>"$res"
    na=$((na + 1))
    say "test $n: NA (fio 3.33 issue, fails on null_blk too)"
    continue
  fi
  s=$(date +%s)
  out=$(guard "${ZCOW_VM_FIO_TEST_TIMEOUT:-600}" "$suite" -t "$t" "$DEV" 2>&1)
  rc=$?
  secs=$(($(date +%s) - s))
  if grep -q "^Running test $n \.\.\. PASS" <<<"$out" && [ "$rc" = 0 ]; then
    st=PASS pass=$((pass + 1))
  elif grep -q "^Running test $n \.\.\. SKIP" <<<"$out"; then
    st=SKIP skip=$((skip + 1))
  else
    st=FAIL failn=$((failn + 1))
    echo "$out" | tail -n 20
    [ -r "$suite.log.$t" ] && tail -n 30 "$suite.log.$t"
    cp "$suite.log.$t" "${ZCOW_VM_OUT:-$SCRATCH}/fio-zbd.log.$n" 2>/dev/null
    # A hung case leaves the device unusable: show who waits on what, then
    # start from a fresh server.
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
      ps -eo pid,stat,wchan:32,args | awk '$2 ~ /D/ || /fio|zcow-ublk/' | grep -v awk
      for p in $(pgrep -x fio) ${SERVER:-}; do
        echo "-- /proc/$p/stack"
        cat "/proc/$p/stack" 2>/dev/null
      done
      dmesg | tail -n 20
      if [ "$BACKEND" = nullblk ]; then nullb_down; else dev_kill; fi
      dev_up "$img"
    fi
  fi
  reason=$(sed -n 's/^Running test [0-9]* \.\.\. SKIP *//p' <<<"$out")
  echo "$n $st $secs${reason:+ $reason}" >>"$res"
  say "test $n: $st (${secs}s)${reason:+ $reason}"
done
dev_down
cp "$res" "${ZCOW_VM_OUT:-$SCRATCH}/fio-zbd.$BACKEND.results"
say "fio zbd on $BACKEND: $pass passed, $failn failed, $skip skipped, $na not applicable"
[ "$failn" = 0 ]
