#!/bin/bash
# Runs the in-guest tests one after the other, each under its own time
# limit, prints a per-test PASS/FAIL/SKIP line and a final "N passed, N failed"
# line, and exits non-zero when any test failed.
#
#   all.sh [TEST...]   default: smoke zone-report hostdev persist lifecycle qemu-io crash f2fs btrfs zonefs fio-zbd
#
#   ZCOW_VM_FIO_TESTS  test numbers given to fio-zbd.sh (default: all)
#   ZCOW_VM_TEST_TIMEOUT  per-test limit in seconds (default 900; fio-zbd 2400)
here=$(cd "$(dirname "$0")" && pwd)
tests=("$@")
[ ${#tests[@]} -gt 0 ] || tests=(smoke zone-report hostdev persist lifecycle qemu-io crash f2fs btrfs zonefs fio-zbd)
out=${ZCOW_VM_OUT:-/tmp}
summary=$out/summary
: >"$summary"
pass=0 failn=0 skip=0
for t in "${tests[@]}"; do
  args=()
  limit=${ZCOW_VM_TEST_TIMEOUT:-900}
  if [ "$t" = fio-zbd ]; then
    read -r -a args <<<"${ZCOW_VM_FIO_TESTS:-}"
    limit=${ZCOW_VM_FIO_TIMEOUT:-2400}
  fi
  echo "==== $t ${args[*]}"
  s=$(date +%s)
  timeout -k 10 "$limit" "$here/$t.sh" "${args[@]}"
  rc=$?
  secs=$(($(date +%s) - s))
  case $rc in
    0) st=PASS pass=$((pass + 1)) ;;
    77) st=SKIP skip=$((skip + 1)) ;;
    124 | 137) st="FAIL (timeout ${limit}s)" failn=$((failn + 1)) ;;
    *) st="FAIL (exit $rc)" failn=$((failn + 1)) ;;
  esac
  printf '%-12s %-22s %5ss\n' "$t" "$st" "$secs" | tee -a "$summary"
done
echo "==== summary"
cat "$summary"
[ -s "$out/fio-zbd.results" ] && {
  echo "fio zbd per test:"
  cat "$out/fio-zbd.results"
}
echo "$pass passed, $failn failed${skip:+, $skip skipped}" | sed 's/, 0 skipped//'
[ "$failn" = 0 ]
