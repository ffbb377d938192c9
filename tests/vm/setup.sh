#!/usr/bin/env bash
# Fetches everything the VM tests need into a cache folder outside the
# repository, from Debian's archive, through a private apt configuration
# (/etc/apt is never modified). Idempotent: each step leaves a stamp and a
# second run with the cache present only checks the stamps.
#
#   ZCOW_VM_CACHE   cache folder (default ~/.cache/zcow-vm)
#
# What it provides (see docs/vm-tests.md):
#   kernel/          bookworm-backports linux-image-6.12.* extracted, depmod'ed
#   busybox/         busybox-static extracted (the initramfs shell)
#   zonefs-tools/    trixie's zonefs-tools (mkzonefs), extracted, never installed
#   fio-src/         Debian's fio source (t/zbd/test-zbd-support)
#   env              shell fragment with the paths above (read by run.sh)
# and installs on the host (Debian packages; the guest sees the host's /):
#   qemu-system-x86 and qemu-utils 10.0.x from bookworm-backports, kmod,
#   cpio, fio, f2fs-tools, btrfs-progs.
set -euo pipefail

CACHE=${ZCOW_VM_CACHE:-$HOME/.cache/zcow-vm}
APT=$CACHE/apt
mkdir -p "$CACHE" "$APT/lists/partial" "$APT/archives/partial" "$APT/cache" \
  "$APT/sources.list.d" "$APT/preferences.d" "$CACHE/debs"
export DEBIAN_FRONTEND=noninteractive

log() { echo "setup: $*" >&2; }

KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
cat >"$APT/sources.list.new" <<EOF
deb [signed-by=$KEYRING] http://deb.debian.org/debian bookworm main
deb [signed-by=$KEYRING] http://deb.debian.org/debian bookworm-updates main
deb [signed-by=$KEYRING] http://deb.debian.org/debian-security bookworm-security main
deb [signed-by=$KEYRING] http://deb.debian.org/debian bookworm-backports main
deb [signed-by=$KEYRING] http://deb.debian.org/debian trixie main
deb-src [signed-by=$KEYRING] http://deb.debian.org/debian bookworm main
EOF
# Backports and trixie are never chosen unless asked for by name or -t.
cat >"$APT/preferences.new" <<EOF
Package: *
Pin: release n=trixie
Pin-Priority: 1

Package: *
Pin: release n=bookworm-backports
Pin-Priority: 100
EOF
for f in sources.list preferences; do
  if ! cmp -s "$APT/$f.new" "$APT/$f"; then
    mv "$APT/$f.new" "$APT/$f"
    rm -f "$APT/.updated"
  else
    rm -f "$APT/$f.new"
  fi
done

APTOPTS=(
  -o "Dir::Etc::sourcelist=$APT/sources.list"
  -o "Dir::Etc::sourceparts=$APT/sources.list.d"
  -o "Dir::Etc::preferences=$APT/preferences"
  -o "Dir::Etc::preferencesparts=$APT/preferences.d"
  -o "Dir::State::Lists=$APT/lists"
  -o "Dir::Cache=$APT/cache"
  -o "Dir::Cache::Archives=$APT/archives"
  -o "APT::Get::List-Cleanup=false"
  -o "APT::Sandbox::User=root"
)
apt_() { apt-get "${APTOPTS[@]}" "$@"; }
apt_cache() { apt-cache "${APTOPTS[@]}" "$@"; }

# Package lists: refreshed when missing or older than a week.
if [ ! -e "$APT/.updated" ] || [ -n "$(find "$APT/.updated" -mtime +7)" ]; then
  log "apt-get update (private lists in $APT)"
  apt_ update -qq
  touch "$APT/.updated"
fi

# Downloads package $1 (name or name/suite) into $CACHE/debs, prints the file.
download() {
  local spec=$1 name=${1%%/*} f
  (cd "$CACHE/debs" && apt_ download -qq "$spec" >/dev/null)
  f=$(ls -t "$CACHE/debs/${name}"_*.deb | head -n1)
  echo "$f"
}

# ---- host packages (the guest runs the host's binaries through 9p) ----
need=()
for pair in depmod:kmod cpio:cpio fio:fio mkfs.f2fs:f2fs-tools fsck.f2fs:f2fs-tools \
  mkfs.btrfs:btrfs-progs blkzone:util-linux; do
  PATH=$PATH:/usr/sbin:/sbin command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  log "installing from bookworm: ${need[*]}"
  apt_ install -y -qq -t bookworm $(printf '%s\n' "${need[@]}" | sort -u) >/dev/null
fi
qemu_ok() {
  command -v qemu-system-x86_64 >/dev/null 2>&1 &&
    qemu-system-x86_64 --version | grep -q 'version 10\.'
}
if ! qemu_ok; then
  log "installing qemu-system-x86 from bookworm-backports"
  apt_ install -y -qq --no-install-recommends -t bookworm-backports \
    qemu-system-x86 >/dev/null
  qemu_ok || { log "qemu-system-x86_64 10.x not available"; exit 1; }
fi
# qemu-io for tests/vm/qemu-io.sh: QEMU's zoned host_device needs 8.0 or
# later (bookworm's qemu-utils is 7.2), so the same backports 10.0.
qemu_io_ok() {
  command -v qemu-io >/dev/null 2>&1 && qemu-io --version | grep -q 'version 10\.'
}
if ! qemu_io_ok; then
  log "installing qemu-utils from bookworm-backports"
  apt_ install -y -qq --no-install-recommends -t bookworm-backports qemu-utils >/dev/null
  qemu_io_ok || { log "qemu-io 10.x not available"; exit 1; }
fi

# ---- guest kernel: bookworm-backports linux-image-6.12.* ----
if [ ! -e "$CACHE/kernel/.done" ]; then
  pkg=$(apt_cache depends -t bookworm-backports linux-image-amd64/bookworm-backports 2>/dev/null |
    sed -n 's/^ *Depends: \(linux-image-6\.12\.[^ ]*-amd64\)$/\1/p' | head -n1)
  [ -n "$pkg" ] || { log "no linux-image-6.12.* in bookworm-backports"; exit 1; }
  log "downloading $pkg"
  deb=$(download "$pkg")
  rm -rf "$CACHE/kernel"
  mkdir -p "$CACHE/kernel"
  dpkg-deb -x "$deb" "$CACHE/kernel"
  kver=$(ls "$CACHE/kernel/lib/modules" | head -n1)
  log "depmod $kver"
  depmod -b "$CACHE/kernel" "$kver"
  echo "$kver" >"$CACHE/kernel/.done"
fi
KVER=$(cat "$CACHE/kernel/.done")

# ---- busybox-static for the initramfs ----
if [ ! -x "$CACHE/busybox/bin/busybox" ]; then
  log "downloading busybox-static"
  deb=$(download busybox-static)
  rm -rf "$CACHE/busybox"
  dpkg-deb -x "$deb" "$CACHE/busybox"
fi

# ---- zonefs-tools (mkzonefs) from trixie: extracted, never installed ----
if [ ! -e "$CACHE/zonefs-tools/.done" ]; then
  log "downloading zonefs-tools (trixie)"
  deb=$(download zonefs-tools/trixie)
  rm -rf "$CACHE/zonefs-tools"
  mkdir -p "$CACHE/zonefs-tools"
  dpkg-deb -x "$deb" "$CACHE/zonefs-tools"
  touch "$CACHE/zonefs-tools/.done"
fi

# ---- fio source (t/zbd/test-zbd-support) ----
if [ ! -e "$CACHE/fio-src/.done" ]; then
  log "apt-get source fio (bookworm)"
  rm -rf "$CACHE/src" "$CACHE/fio-src"
  mkdir -p "$CACHE/src"
  (cd "$CACHE/src" && apt_ source -qq fio/bookworm >/dev/null 2>&1)
  d=$(find "$CACHE/src" -maxdepth 1 -type d -name 'fio-*' | head -n1)
  [ -x "$d/t/zbd/test-zbd-support" ] || { log "fio source lacks t/zbd"; exit 1; }
  mv "$d" "$CACHE/fio-src"
  rm -rf "$CACHE/src"
  touch "$CACHE/fio-src/.done"
fi

# The suite runs "$(dirname "$0")/../../fio": the installed fio.
ln -sfn "$(command -v fio)" "$CACHE/fio-src/fio"

cat >"$CACHE/env" <<EOF
ZCOW_VM_KVER=$KVER
ZCOW_VM_KERNEL=$CACHE/kernel/boot/vmlinuz-$KVER
ZCOW_VM_MODDIR=$CACHE/kernel
ZCOW_VM_BUSYBOX=$CACHE/busybox/bin/busybox
ZCOW_VM_ZONEFS=$CACHE/zonefs-tools
ZCOW_VM_FIOSRC=$CACHE/fio-src
EOF
log "ready: kernel $KVER, cache $CACHE"
