#!/usr/bin/env python3
"""Two targets compared in separate processes, taken in turn (A B B A ...).

    cargo build --release -p fyerrpc-benches --example paired
    python3 benches/alternate.py [pairs] [target A] [target B] [concurrency ...]
    python3 benches/alternate.py 40 tonic_balanced fyerrpc 16 64

Each process runs one target alone (`paired CALLS ROUNDS LEVELS TARGET`), so
neither target shares a runtime, an allocator or its servers with the other;
the order turns every pair (A then B, then B then A), so that a slow phase of
the machine falls on both alike. The ratio B/A is taken within each pair. For
every concurrency level the script prints the median ratio, its 95 %
bootstrap interval, and the median throughput of each target.

`paired`'s interleaved runs (several targets in one process, batch by batch)
resolve small differences better when the machine drifts; this script is
the check that the targets' sharing one process does not decide the result.
Environment: `CALLS` (calls per batch, default 2000), `ROUNDS` (default 10),
and `SERVERS`, `WORKERS` as `paired` reads them.
"""

import os
import random
import statistics
import subprocess
import sys

BINARY = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "target", "release", "examples", "paired"
)


def run(target, levels, calls, rounds):
    """One process of `paired` with one target: {concurrency: calls per second}."""
    done = subprocess.run(
        [BINARY, str(calls), str(rounds), *map(str, levels), target],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"paired failed for {target}: {done.stderr.strip()}")
    out = done.stdout
    result, level = {}, None
    for line in out.splitlines():
        if line.startswith("concurrency "):
            level = int(line.split()[1].rstrip(","))
        elif line.startswith("  ") and level is not None:
            result[level] = float(line.split()[1])
    missing = [c for c in levels if c not in result]
    if missing:
        raise SystemExit(f"paired printed no result for concurrency {missing}:\n{out}")
    return result


def interval(ratios, draws=2000):
    """The 2.5 % and 97.5 % points of the bootstrapped median."""
    rng = random.Random(1)
    medians = sorted(
        statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(draws)
    )
    return medians[int(draws * 0.025)], medians[int(draws * 0.975) - 1]


def main(argv):
    try:
        pairs = int(argv[0]) if argv else 20
        a, b = (argv[1], argv[2]) if len(argv) >= 3 else ("tonic_balanced", "fyerrpc")
        levels = [int(c) for c in argv[3:]] or [16, 64]
        calls = int(os.environ.get("CALLS", "2000"))
        rounds = int(os.environ.get("ROUNDS", "10"))
    except ValueError as e:
        raise SystemExit(f"usage: alternate.py [pairs] [target A] [target B] [concurrency ...]: {e}")
    if pairs < 1:
        raise SystemExit("pairs must be at least 1")
    if not os.path.exists(BINARY):
        raise SystemExit(
            f"{BINARY} is missing: cargo build --release -p fyerrpc-benches --example paired"
        )
    samples = []
    for i in range(pairs):
        if i % 2 == 0:
            ra = run(a, levels, calls, rounds)
            rb = run(b, levels, calls, rounds)
        else:
            rb = run(b, levels, calls, rounds)
            ra = run(a, levels, calls, rounds)
        samples.append((ra, rb))
        line = "  ".join(f"c{c}: {ra[c]:.0f} {rb[c]:.0f}" for c in levels)
        print(f"pair {i + 1:3}: {line}", flush=True)
    print(f"\n{pairs} pairs, {a} (A) and {b} (B) in separate processes, order turning:")
    print("| concurrency | B/A median | 95 % interval | A calls/s | B calls/s |")
    print("|---|---|---|---|---|")
    for c in levels:
        ratios = [rb[c] / ra[c] for ra, rb in samples]
        lo, hi = interval(ratios)
        print(
            f"| {c} | {statistics.median(ratios):.3f} | {lo:.3f}–{hi:.3f} | "
            f"{statistics.median(ra[c] for ra, _ in samples):,.0f} | "
            f"{statistics.median(rb[c] for _, rb in samples):,.0f} |"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
