#!/usr/bin/env bash
# Run every fuzz target (or the ones named after SECONDS) for SECONDS each
# (default 60), one at a time in a single process (libFuzzer default; -jobs is
# not used because it forks workers), and print executions and
# findings per target. Built with -O -a: optimised, but with debug
# assertions and overflow checks on (-O alone turns them off, and arithmetic
# that wraps in release builds would be invisible to the fuzzers).
# Limits: -rss_limit_mb=512 (also the malloc limit), -timeout=1 (seconds
# per input).
#   fuzz/run.sh [SECONDS] [TARGET...]
# New inputs go to fuzz/target/work-corpus/<target>/ (not committed; copy
# interesting ones to fuzz/corpus/<target>/ by hand); crashes, timeouts and
# OOMs to fuzz/artifacts/<target>/. Exit status 1 if anything was found.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
secs=${1:-60}
shift || true
all=(header zoned_ext image_read image_rw image_write)
all+=(engine nbd_server nbd_client check iocmd_parse)
targets=("${@:-${all[@]}}")
[ $# -gt 0 ] || targets=("${all[@]}")

max_len() {
    case $1 in
        header) echo 16384 ;;
        zoned_ext) echo 65536 ;;
        image_read | image_rw) echo 131072 ;;
        image_write) echo 4096 ;;
        engine) echo 1024 ;;
        nbd_server | nbd_client) echo 65536 ;;
        check) echo 131072 ;;
        iocmd_parse) echo 4096 ;;
        *) echo 65536 ;;
    esac
}

flags=(-O -a -s none)
cargo +nightly fuzz build "${flags[@]}" >/dev/null 2>&1 || { cargo +nightly fuzz build "${flags[@]}"; exit 2; }
found=0
printf '%-12s %8s %12s %10s  %s\n' target seconds execs exec/s findings
for t in "${targets[@]}"; do
    work=target/work-corpus/$t
    art=artifacts/$t
    mkdir -p "$work" "$art" "corpus/$t"
    before=$(ls "$art" | wc -l)
    log=target/fuzz-$t.log
    start=$(date +%s)
    cargo +nightly fuzz run "${flags[@]}" "$t" "$work" "corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=512 -timeout=1 \
        -max_len="$(max_len "$t")" -artifact_prefix="$art/" \
        -print_final_stats=1 >"$log" 2>&1
    rc=$?
    took=$(( $(date +%s) - start ))
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    after=$(ls "$art" | wc -l)
    new=$((after - before))
    what=""
    if [ "$rc" -ne 0 ] || [ "$new" -gt 0 ]; then
        found=1
        what=$(grep -m1 -E 'panicked at|ERROR: libFuzzer|SUMMARY' "$log" | cut -c1-120)
    fi
    printf '%-12s %8s %12s %10s  %s %s\n' "$t" "$took" "${execs:-?}" "${rate:-?}" "$new" "$what"
done
exit $found
