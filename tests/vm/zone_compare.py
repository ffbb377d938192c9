#!/usr/bin/env python3
"""Compares `blkzone report` of a live device with `zcow-img zone report
--output json` of its image taken after the device was removed.

The image report is the persistent state, as after a power cycle: a zone
that was open on the live device (IMP_OPEN/EXP_OPEN) is CLOSED there, or
EMPTY when nothing was written to it. Every other field must be equal:
start, length, capacity, write pointer (bytes), type and condition.
Exit 0 when they agree, 1 with one line per difference otherwise.

--any-full-wp: a FULL zone's write pointer is not compared (ZBC leaves it
undefined; null_blk reports the zone end after a finish, the capacity end
after writes; a zoned qcow2 image always the capacity end)."""
import json
import re
import sys

COND = {"nw": "NOT_WP", "em": "EMPTY", "oi": "IMP_OPEN", "oe": "EXP_OPEN",
        "cl": "CLOSED", "ro": "READ_ONLY", "fu": "FULL", "of": "OFFLINE"}
TYPE = {"CONVENTIONAL": "conventional", "SEQ_WRITE_REQUIRED": "seq-write-required",
        "SEQ_WRITE_PREFERRED": "seq-write-preferred"}
LINE = re.compile(r"start: 0x([0-9a-f]+), len 0x([0-9a-f]+), cap 0x([0-9a-f]+), "
                  r"wptr 0x([0-9a-f]+) .*zcond:\s*\d+\((\w+)\) \[type: \d+\((\w+)\)\]")


def live(path):
    zones = []
    with open(path) as f:
        for line in f:
            m = LINE.search(line)
            if not m:
                continue
            start, length, cap, wp = (int(m.group(i), 16) * 512 for i in range(1, 5))
            cond = COND[m.group(5)]
            if cond in ("IMP_OPEN", "EXP_OPEN"):
                cond = "CLOSED" if wp > 0 else "EMPTY"
            zones.append({"start": start, "length": length, "capacity": cap,
                          # blkzone prints the write pointer relative to the zone start
                          "wp": start + wp, "type": TYPE[m.group(6)], "condition": cond})
    return zones


def main():
    args = [a for a in sys.argv[1:] if a != "--any-full-wp"]
    any_full_wp = len(args) < len(sys.argv) - 1
    lv = live(args[0])
    with open(args[1]) as f:
        # QEMU's key style: write-pointer, conditions as not-wp, imp-open, ...
        img = [dict(z, wp=z["write-pointer"],
                    condition=z["condition"].upper().replace("-", "_"))
               for z in json.load(f)["zones"]]
    bad = []
    if len(lv) != len(img):
        bad.append(f"zone count: device {len(lv)}, image {len(img)}")
    for i, (a, b) in enumerate(zip(lv, img)):
        for k in ("start", "length", "capacity", "wp", "type", "condition"):
            if k == "wp" and any_full_wp and a["condition"] == b["condition"] == "FULL":
                continue
            if a[k] != b[k]:
                bad.append(f"zone {i} {k}: device {a[k]!r}, image {b[k]!r}")
    for line in bad:
        print(line)
    print(f"{len(lv)} zones compared, {len(bad)} differences")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
