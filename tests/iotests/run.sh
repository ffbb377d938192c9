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
# per test, default 120).
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
