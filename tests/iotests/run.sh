#!/usr/bin/env bash
# Run QEMU's own qemu-iotests twice, with the real QEMU tools and with
# zcow's programs substituted (as qemu-img/qemu-io/qemu-nbd symlinks), and
# print a table: test, format, real result, zcow result, first difference.
#
#   tests/iotests/run.sh [-f qcow2|raw]... [TEST...]
#
# The suite comes from Debian's `qemu` source package matching the installed
# qemu-utils, fetched with a private apt configuration (never /etc/apt) into
# ${ZCOW_IOTESTS_CACHE:-$HOME/.cache/zcow-iotests}. Nothing of QEMU is kept
# in this repository. Environment: ZCOW_BIN (directory with zcow-img,
# zcow-io, zcow-nbd; default target/release), ZCOW_IOTESTS_TIMEOUT (seconds
# per test, default 120), ZCOW_IOTESTS_KEEP=1 (keep the scratch directory).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${ZCOW_IOTESTS_CACHE:-$HOME/.cache/zcow-iotests}
bin=${ZCOW_BIN:-$repo/target/release}
per_test=${ZCOW_IOTESTS_TIMEOUT:-120}

formats=()
tests=()
while [ $# -gt 0 ]; do
    case $1 in
        -f) formats+=("$2"); shift 2 ;;
        -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) tests+=("$1"); shift ;;
    esac
done
[ ${#formats[@]} -gt 0 ] || formats=(qcow2 raw)

# --- 1. QEMU's suite, from the source package of the installed version ---
fetch_suite() {
    local ver apt src
    ver=$(dpkg-query -W -f='${source:Version}' qemu-utils)
    src=$cache/qemu-$ver
    if [ -x "$src/tests/qemu-iotests/check" ]; then
        echo "$src/tests/qemu-iotests"
        return
    fi
    apt=$cache/apt
    mkdir -p "$apt/lists/partial" "$apt/parts" "$apt/archives/partial" "$cache/dl"
    # deb-src for every suite that may carry the installed version.
    cat > "$apt/sources.list" <<LIST
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-backports main
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
LIST
    local o=(-o "Dir::Etc::sourcelist=$apt/sources.list" -o "Dir::Etc::sourceparts=$apt/parts"
             -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache::archives=$apt/archives"
             -o "APT::Get::Only-Source=true")
    apt-get "${o[@]}" update >&2
    # Only the upstream tarball is needed: unpack tests/qemu-iotests from it
    # rather than letting dpkg-source unpack (and patch) the whole tree.
    # The .dsc of a backport may be missing from the mirror while the
    # upstream tarball (shared by every Debian revision) is there.
    local up=${ver#*:}
    up=${up%-*}
    local orig
    orig=$(ls "$cache"/dl/qemu_"$up".orig.tar.* 2>/dev/null | head -1 || true)
    if [ -z "$orig" ]; then
        (cd "$cache/dl" && apt-get "${o[@]}" source --download-only "qemu=$ver" >&2) || true
        orig=$(ls "$cache"/dl/qemu_"$up".orig.tar.* 2>/dev/null | head -1 || true)
    fi
    [ -n "$orig" ] || { echo "run.sh: no qemu_$up.orig.tar.* from Debian" >&2; exit 1; }
    mkdir -p "$src.tmp"
    tar -xf "$orig" -C "$src.tmp" --strip-components=1 --wildcards \
        '*/tests/qemu-iotests/*' '*/python/qemu/*' '*/scripts/qmp/*' >&2 || true
    rm -rf "$src"
    mv "$src.tmp" "$src"
    echo "$src/tests/qemu-iotests"
}

# --- 2. Selection: bash tests that need only what zcow provides ---
# A test is selected for a format when it supports that format (or is
# generic), is a shell test, starts no VM or storage daemon, uses no
# blkdebug/blkverify/encryption, and runs no qemu-img subcommand besides
# create, info and check.
select_tests() {
    local dir=$1 fmt=$2 t f sub
    for f in "$dir"/[0-9][0-9][0-9]; do
        t=${f##*/}
        head -1 "$f" | grep -q bash || continue
        grep -Eq "_supported_fmt.*( |\b)($fmt|generic)\b" "$f" || continue
        grep -Eq '_launch_qemu|_send_qemu_cmd|\$QEMU_PROG|\$QEMU |_run_qemu|QSD|storage-daemon|blkdebug|blkverify|encrypt|_require_large_file|data_file|_supported_proto +(nbd|ssh|nfs|fuse)|IMGOPTSSYNTAX' "$f" && continue
        sub=$(grep -oE '\$QEMU_IMG(_PROG)?"? +[a-z]+' "$f" | awk '{print $NF}' | sort -u |
              grep -vxE 'create|info|check' || true)
        [ -z "$sub" ] || continue
        echo "$t"
    done
}

# --- 3. Run: real QEMU, then zcow under QEMU's names ---
suite=$(fetch_suite)
work=$(mktemp -d "${TMPDIR:-/tmp}/zcow-iotests.XXXXXX")
# ZCOW_IOTESTS_KEEP=1 keeps the scratch directories (outputs, .out.bad).
if [ -z "${ZCOW_IOTESTS_KEEP:-}" ]; then trap 'rm -rf "$work"' EXIT; else echo "run.sh: keeping $work" >&2; fi
mkdir -p "$work/zbin"
for t in img io nbd; do
    [ -x "$bin/zcow-$t" ] || { echo "run.sh: $bin/zcow-$t missing (cargo build --release --bins)" >&2; exit 1; }
    ln -s "$bin/zcow-$t" "$work/zbin/qemu-$t"
done

run_side() { # side fmt tests...
    local side=$1 fmt=$2; shift 2
    local img=/usr/bin/qemu-img io=/usr/bin/qemu-io nbd=/usr/bin/qemu-nbd
    if [ "$side" = zcow ]; then
        img=$work/zbin/qemu-img io=$work/zbin/qemu-io nbd=$work/zbin/qemu-nbd
    fi
    mkdir -p "$work/$side"
    (cd "$work/$side" && env TEST_DIR="$work/$side/scratch" \
        QEMU_PROG=$(command -v qemu-system-x86_64 || echo /bin/true) \
        QSD_PROG=$(command -v qemu-storage-daemon || echo /bin/true) \
        QEMU_IMG_PROG=$img QEMU_IO_PROG=$io QEMU_NBD_PROG=$nbd \
        timeout $((per_test * $#)) "$suite/check" --source-dir "$suite" \
        --build-dir "$work/$side" -tap "-$fmt" "$@" 2>/dev/null) |
        awk -v s="$side" '/^ok .* # SKIP/ {print s, $3, "skip"; next}
                           /^ok / {print s, $3, "pass"; next}
                           /^not ok / {print s, $4, "fail"}'
}

first_diff() { # fmt test
    local ref=$suite/$2.out bad=$work/zcow/scratch/$1-file-$2/$2.out.bad
    [ -f "$suite/$2.out.$1" ] && ref=$suite/$2.out.$1
    [ -f "$bad" ] || { echo "-"; return; }
    local d
    d=$(diff "$ref" "$bad" | grep -m1 -E '^[<>]' | cut -c1-90 || true)
    echo "${d:-(exit status only)}"
}

start=$(date +%s)
printf '| test | format | QEMU 10.0.2 | zcow | first difference (< expected, > zcow) |\n'
printf '|---|---|---|---|---|\n'
total_real=0 total_zcow=0 total=0
for fmt in "${formats[@]}"; do
    if [ ${#tests[@]} -gt 0 ]; then
        sel=("${tests[@]}")
    else
        mapfile -t sel < <(select_tests "$suite" "$fmt")
    fi
    [ ${#sel[@]} -gt 0 ] || continue
    declare -A res=()
    while read -r side t r; do res[$side.$t]=$r; done \
        < <(run_side real "$fmt" "${sel[@]}"; run_side zcow "$fmt" "${sel[@]}")
    for t in "${sel[@]}"; do
        r=${res[real.$t]:-none} z=${res[zcow.$t]:-none} d=""
        [ "$r" = skip ] && [ "$z" = skip ] && continue
        total=$((total + 1))
        [ "$r" = pass ] && total_real=$((total_real + 1))
        [ "$z" = pass ] && total_zcow=$((total_zcow + 1))
        [ "$z" = fail ] && d=$(first_diff "$fmt" "$t" | sed 's/|/\\|/g')
        printf '| %s | %s | %s | %s | %s |\n' "$t" "$fmt" "$r" "$z" "${d:+\`$d\`}"
    done
    unset res
done
printf '\nselected (run by at least one side): %d; QEMU passes %d; zcow passes %d; %ds\n' \
    "$total" "$total_real" "$total_zcow" $(( $(date +%s) - start ))
