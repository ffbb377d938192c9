#!/usr/bin/env bash
# Regenerate the seed corpora under fuzz/corpus/ from real images:
#   * qemu-img / qemu-io images: small cluster sizes (512 B, 4 KiB), v2 and v3,
#     refcount widths, zlib and zstd compressed clusters, extended L2,
#     backing file, external data file, internal snapshots, bitmaps;
#   * zoned images (and write-target op sequences, zoned-extension bodies)
#     written by zcow's own `create` through an ignored test in
#     tests/fuzz_corpus.rs.
# Every file stays below 64 KiB except the extended-L2 image with data (80 KiB:
# five 16 KiB clusters is the smallest such image qemu-img can make).
# Usage: fuzz/make-corpus.sh   (from anywhere; needs qemu-img, qemu-io, cargo)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
corpus=$here/corpus
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"

rm -rf "$corpus/header" "$corpus/image_read" "$corpus/image_rw" "$corpus/image_write" "$corpus/zoned_ext"
mkdir -p "$corpus"/{header,image_read,image_rw,image_write,zoned_ext}
images=$tmp/images
mkdir -p "$images"

mk() { qemu-img create -q -f qcow2 "$@"; }
io() { local img=$1; shift; local args=(); for c in "$@"; do args+=(-c "$c"); done; qemu-io -f qcow2 "${args[@]}" "$img" >/dev/null; }
writes=('write -P 0xaa 0 1k' 'write -P 0x55 3k 700' 'write -z 8k 2k' 'discard 8704 512' 'write -P 0x33 63k 1k')

# Plain v3, 512-byte clusters: empty, and with data/zero/discarded clusters.
mk -o cluster_size=512 "$images/v3-c512-empty.qcow2" 64k
mk -o cluster_size=512 "$images/v3-c512-data.qcow2" 64k
io "$images/v3-c512-data.qcow2" "${writes[@]}"
# 4 KiB clusters with data spanning two L2 tables' worth of guest space.
mk -o cluster_size=4k "$images/v3-c4k-data.qcow2" 4M
io "$images/v3-c4k-data.qcow2" 'write -P 0x11 0 4k' 'write -P 0x22 2M 6k' 'write -z 12k 4k'
# v2 (compat=0.10).
mk -o cluster_size=512,compat=0.10 "$images/v2-c512-data.qcow2" 64k
io "$images/v2-c512-data.qcow2" "${writes[@]}"
# Refcount widths.
for rb in 1 8 64; do
    mk -o cluster_size=512,refcount_bits=$rb "$images/v3-c512-rc$rb.qcow2" 64k
    io "$images/v3-c512-rc$rb.qcow2" "${writes[@]}"
done
# Lazy refcounts, metadata preallocation.
mk -o cluster_size=512,lazy_refcounts=on "$images/v3-c512-lazy.qcow2" 32k
io "$images/v3-c512-lazy.qcow2" 'write -P 0x77 0 2k'
mk -o cluster_size=512,preallocation=metadata "$images/v3-c512-prealloc.qcow2" 8k
# Compressed clusters, zlib and zstd (compressible pattern + a random tail).
( (set +o pipefail; yes "zcow fuzz seed 0123456789" | head -c 6144); head -c 1024 /dev/urandom; head -c 1024 /dev/zero) > p.raw
for ct in zlib zstd; do
    qemu-img convert -q -c -O qcow2 -o cluster_size=512,compression_type=$ct p.raw "$images/v3-c512-compressed-$ct.qcow2"
done
qemu-img convert -q -c -O qcow2 -o cluster_size=4k p.raw "$images/v3-c4k-compressed-zlib.qcow2"
# Extended L2 (needs >= 16 KiB clusters): empty and with sub-cluster writes.
mk -o cluster_size=16k,extended_l2=on "$images/v3-c16k-extl2-empty.qcow2" 64k
mk -o cluster_size=16k,extended_l2=on "$images/v3-c16k-extl2-data.qcow2" 64k
io "$images/v3-c16k-extl2-data.qcow2" 'write -z 0 512' 'write -z 1k 1k'
# Backing file (qcow2 base) and a raw-backed overlay.
mk -o cluster_size=512 "$images/base.qcow2" 64k
io "$images/base.qcow2" 'write -P 0x42 0 4k'
mk -o cluster_size=512 -b base.qcow2 -F qcow2 "$images/v3-c512-backing.qcow2" 64k
io "$images/v3-c512-backing.qcow2" 'write -P 0x43 1k 1k' 'write -z 2k 512'
mv "$images/base.qcow2" base.qcow2
# External data file.
mk -o cluster_size=512,data_file=data.raw "$images/v3-c512-datafile.qcow2" 64k
# Internal snapshots: shared clusters (refcount 2, COPIED clear).
mk -o cluster_size=512 "$images/v3-c512-snapshot.qcow2" 64k
io "$images/v3-c512-snapshot.qcow2" 'write -P 0x61 0 2k'
qemu-img snapshot -c snap1 "$images/v3-c512-snapshot.qcow2"
io "$images/v3-c512-snapshot.qcow2" 'write -P 0x62 512 512'
qemu-img snapshot -c snap2 "$images/v3-c512-snapshot.qcow2"
# Persistent dirty bitmap (bitmaps extension + directory).
mk -o cluster_size=512 "$images/v3-c512-bitmap.qcow2" 64k
qemu-img bitmap --add "$images/v3-c512-bitmap.qcow2" b0
io "$images/v3-c512-bitmap.qcow2" 'write -P 0x99 0 1k'

# Zoned images, op sequences and extension bodies from zcow itself.
(cd "$root" && ZCOW_SEED_DIR="$tmp/zcow" cargo test -q --test fuzz_corpus write_seeds -- --ignored >/dev/null)
cp "$tmp"/zcow/images/* "$images/"
cp "$tmp"/zcow/image_write/* "$corpus/image_write/"
cp "$tmp"/zcow/zoned_ext/* "$corpus/zoned_ext/"

for f in "$images"/*.qcow2; do
    n=$(basename "$f" .qcow2)
    cp "$f" "$corpus/image_read/$n"
    cp "$f" "$corpus/image_rw/$n"
    head -c 4096 "$f" > "$corpus/header/$n"
done
echo "corpus:"; for d in "$corpus"/*/; do printf '  %-12s %3d files %7d bytes\n' "$(basename "$d")" "$(ls "$d" | wc -l)" "$(cat "$d"/* | wc -c)"; done
big=$(find "$corpus" -type f -size +64k)
[ -z "$big" ] || { echo "files over 64 KiB:"; ls -l $big; }
