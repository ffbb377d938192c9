#!/usr/bin/env bash
# Regenerate the seed corpora of the targets nbd_server, nbd_client, check,
# engine and iocmd_parse (fuzz/make-corpus.sh does the format targets):
#   * nbd_server / nbd_client: sessions of zcow's client with zcow's server,
#     recorded through a proxy (ignored test tests/fuzz_seeds_nbd.rs), plus
#     the client sides of real peers (qemu-img info/map, qemu-io, nbdinfo
#     --map) talking to zcow-nbd through fuzz/nbd-record.py, when installed;
#   * check: the image_read seeds (real qemu-img and zcow images);
#   * engine: deterministic pseudo-random op streams;
#   * iocmd_parse: every zcow-io command line quoted in the tests and in
#     src/iocmd (one line per file).
# Usage: fuzz/make-corpus-nbd.sh   (from anywhere; needs cargo, python3)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
corpus=$here/corpus
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"; [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null || true' EXIT

rm -rf "$corpus"/{nbd_server,nbd_client,check,engine,iocmd_parse}
mkdir -p "$corpus"/{nbd_server,nbd_client,check,engine,iocmd_parse}

# zcow client <-> zcow server sessions.
(cd "$root" && ZCOW_SEED_DIR=$tmp/seeds cargo test -q --test fuzz_seeds_nbd -- --ignored write_nbd_seeds >/dev/null)
cp "$tmp"/seeds/nbd_server/* "$corpus/nbd_server/"
cp "$tmp"/seeds/nbd_client/* "$corpus/nbd_client/"

# Real peers against zcow-nbd (selector byte 0x00: raw export; 0x01: zoned).
if command -v qemu-img >/dev/null && command -v nbdinfo >/dev/null; then
    (cd "$root" && cargo build -q --bin zcow-nbd --bin zcow-img)
    bin=$root/target/debug
    qemu-img create -q -f raw "$tmp/raw.img" 256k
    "$bin/zcow-img" create -q -f qcow2 -o cluster_size=4k,zone.mode=host-managed,zone.size=8k,zone.capacity=6k,zone.conventional_zones=2,zone.max_open_zones=3,zone.max_active_zones=4 "$tmp/z.qcow2" 64k
    n=0
    for img in "$tmp/raw.img" "$tmp/z.qcow2"; do
        sel=00; case $img in *.qcow2) sel=01 ;; esac
        sock=$tmp/nbd.sock
        rm -f "$sock"
        "$bin/zcow-nbd" -t -k "$sock" "$img" >/dev/null 2>&1 &
        pid=$!
        for _ in $(seq 50); do [ -S "$sock" ] && break; sleep 0.1; done
        for cmd in "qemu-img info nbd+unix:///?socket=@P" \
                   "qemu-img map --output=json nbd+unix:///?socket=@P" \
                   "nbdinfo --map nbd+unix:///?socket=@P" \
                   "nbdinfo --map=x-zoned:state nbd+unix:///?socket=@P" \
                   "nbdinfo --list nbd+unix:///?socket=@P" \
                   "qemu-io -f raw -c 'write -P 0x5a 0 4k' -c 'read -P 0x5a 0 4k' -c 'write -z 8k 4k' -c discard\ 0\ 4k -c flush nbd+unix:///?socket=@P"; do
            n=$((n + 1))
            python3 "$here/nbd-record.py" "$sock" "$tmp/p.sock" "$tmp/rec" &
            rp=$!
            for _ in $(seq 50); do [ -S "$tmp/p.sock" ] && break; sleep 0.1; done
            eval "${cmd//@P/$tmp/p.sock}" >/dev/null 2>&1 || true
            wait "$rp" || true
            rm -f "$tmp/p.sock"
            { printf "\\x$sel"; cat "$tmp/rec.c2s"; } > "$corpus/nbd_server/peer-$sel-$n"
            { printf '\x00'; cat "$tmp/rec.s2c"; } > "$corpus/nbd_client/peer-$sel-$n"
        done
        kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
    done
fi

# check: the real images of the format corpus.
cp "$corpus"/image_read/* "$corpus/check/"

# engine: pseudo-random op streams of several lengths.
python3 - "$corpus/engine" <<'PY'
import random, sys
r = random.Random(6)
for i in range(24):
    n = [40, 80, 160, 300, 600][i % 5]
    open(f"{sys.argv[1]}/random-{i:02d}", "wb").write(bytes(r.randrange(256) for _ in range(n)))
PY

# iocmd_parse: command lines quoted in the tests and the parser.
python3 - "$root" "$corpus/iocmd_parse" <<'PY'
import glob, re, sys
root, out = sys.argv[1], sys.argv[2]
lines = set()
for f in glob.glob(f"{root}/tests/zcow_io*.rs") + glob.glob(f"{root}/src/iocmd/*.rs"):
    s = open(f).read()
    for m in re.finditer(r'(?:parse_line|stdout_of|run_script)\((?:[^"]*?)"((?:[^"\\]|\\.)*)"', s):
        lines.add(m.group(1))
    for m in re.finditer(r'"((?:aio_|alloc|break|close|discard|flush|help|info|length|map|open|read|readv|resume|remove_break|sigraise|sleep|truncate|wait_break|write|writev|zone|zap|zrp|zo |zc |zf |zr |zapp|r |w |q|quit|abort|print|sync|reopen|c )[^"]*)"', s):
        lines.add(m.group(1))
for i, l in enumerate(sorted(l.encode().decode("unicode_escape") for l in lines if len(l) < 200)):
    open(f"{out}/line-{i:03d}", "w").write(l)
PY
echo "seeds: $(for t in nbd_server nbd_client check engine iocmd_parse; do printf '%s=%s ' $t "$(ls "$corpus/$t" | wc -l)"; done)"
