#!/usr/bin/env python3
"""Medians and spreads of the end-to-end summaries of several e2e runs.

    cargo bench -p fyerrpc-benches --bench e2e > run1.txt   # three times or more
    python3 benches/medians.py run1.txt run2.txt run3.txt

Reads the summary table each `e2e` run prints at its end and prints, per
concurrency level, the median of every column over the runs with its
spread (lowest-highest). Ratios are taken within each run first (targets
ran side by side), then their median is taken.
"""

import statistics
import sys


def summary(path):
    """{concurrency: {column: float}} from the last table of one run."""
    rows, header = {}, None
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.startswith("|"):
                continue
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if cells[0] == "concurrency":
                header, rows = cells, {}
            elif header and cells[0].isdigit():
                values = {}
                for name, cell in zip(header[1:], cells[1:]):
                    try:
                        values[name] = float(cell.replace(",", ""))
                    except ValueError:
                        pass
                rows[int(cells[0])] = values
    return header, rows


def main(paths):
    runs = [summary(p) for p in paths]
    header = runs[0][0]
    if header is None:
        sys.exit("no summary table found")
    print(f"median over {len(runs)} runs (spread: lowest-highest)\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for conc in sorted(runs[0][1]):
        cells = [str(conc)]
        for name in header[1:]:
            vals = [r[1][conc][name] for r in runs if name in r[1].get(conc, {})]
            if not vals:
                cells.append("-")
                continue
            med = statistics.median(vals)
            fmt = (lambda v: f"{v:,.0f}") if med >= 1000 else (lambda v: f"{v:.2f}")
            cells.append(f"{fmt(med)} ({fmt(min(vals))}-{fmt(max(vals))})")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
