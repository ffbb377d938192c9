#!/usr/bin/env python3
"""Prints the fio zbd suite table of docs/vm-tests.md from the per-case
results that tests/vm/fio-zbd.sh writes (fio-zbd.TARGET.results, lines
"NN PASS|FAIL|SKIP|NA SECONDS [reason]"), one column pair per file:

    fio-zbd-table.py zcow-ublk=ZCOW.results rublk=RUBLK.results

A case missing from a file reads as "-". Reasons (the suite's SKIP text)
go to the last column, once."""
import re
import sys


def load(path):
    rows = {}
    with open(path) as f:
        for line in f:
            parts = line.split(maxsplit=3)
            if len(parts) < 2:
                continue
            secs = parts[2] if len(parts) > 2 else ""
            reason = parts[3].strip() if len(parts) > 3 else ""
            rows[int(parts[0], 10)] = (parts[1], secs, reason)
    return rows


def main():
    cols = []
    for arg in sys.argv[1:]:
        name, _, path = arg.partition("=")
        cols.append((name, load(path)))
    if not cols:
        print(__doc__, file=sys.stderr)
        return 2
    cases = sorted(set().union(*(c[1].keys() for c in cols)))
    head = " | ".join(f"{n} | {n} (s)" for n, _ in cols)
    print(f"| test | {head} | note |")
    print("|---|" + "---|---|" * len(cols) + "---|")
    totals = []
    for n, rows in cols:
        st = [r[0] for r in rows.values()]
        totals.append(f"{n}: {st.count('PASS')} passed, {st.count('FAIL')} failed, "
                      f"{st.count('SKIP')} skipped, {st.count('NA')} not applicable")
    for case in cases:
        cells, notes = [], []
        for _, rows in cols:
            st, secs, reason = rows.get(case, ("-", "", ""))
            cells.append(f"{st} | {secs}")
            reason = re.sub(r"/dev/\S+", "the device", reason)
            if reason and reason not in notes:
                notes.append(reason)
        print(f"| {case:02d} | " + " | ".join(cells) + f" | {'; '.join(notes)} |")
    print()
    for t in totals:
        print(t)
    return 0


if __name__ == "__main__":
    sys.exit(main())
