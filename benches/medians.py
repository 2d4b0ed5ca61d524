#!/usr/bin/env python3
"""Medians and spreads of the end-to-end summaries of several e2e runs.

    cargo bench -p fyerrpc-benches --bench e2e > run1.txt   # three times or more
    python3 benches/medians.py run1.txt run2.txt run3.txt

Reads the summary tables each `e2e` run prints at its end and prints, per table and
concurrency level, the median of every column over the runs with its
spread (lowest-highest). Ratios are taken within each run first (targets
ran side by side), then their median is taken.
"""

import statistics
import sys


def summaries(path):
    """Every summary table of one run, in order: [(header, {concurrency: {column: float}})]."""
    tables = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.startswith("|"):
                continue
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if cells[0] == "concurrency":
                tables.append((cells, {}))
            elif tables and cells[0].isdigit():
                header, rows = tables[-1]
                values = {}
                for name, cell in zip(header[1:], cells[1:]):
                    try:
                        values[name] = float(cell.replace(",", ""))
                    except ValueError:
                        pass
                rows[int(cells[0])] = values
    return tables


def print_table(header, runs):
    """One table of medians; `runs` holds that table's rows of each run."""
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for conc in sorted(runs[0]):
        cells = [str(conc)]
        for name in header[1:]:
            vals = [r[conc][name] for r in runs if name in r.get(conc, {})]
            if not vals:
                cells.append("-")
                continue
            med = statistics.median(vals)
            fmt = (lambda v: f"{v:,.0f}") if med >= 1000 else (lambda v: f"{v:.2f}")
            cells.append(f"{fmt(med)} ({fmt(min(vals))}-{fmt(max(vals))})")
        print("| " + " | ".join(cells) + " |")


def main(paths):
    runs = [summaries(p) for p in paths]
    if not runs or not runs[0]:
        sys.exit("no summary table found")
    print(f"median over {len(runs)} runs (spread: lowest-highest)")
    for t, (header, _) in enumerate(runs[0]):
        tables = [r[t][1] for r in runs if len(r) > t and r[t][0] == header]
        print()
        print_table(header, tables)


if __name__ == "__main__":
    main(sys.argv[1:])
