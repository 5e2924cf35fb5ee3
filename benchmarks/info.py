"""``entropy`` and ``kl_divergence`` against ``scipy.stats.entropy`` on 1,000,000 x 100 float64.

Both sides get the same row-stochastic arrays (one distribution per row; scipy with ``axis=1``).
Runs alternate between the two implementations so that load from other processes hits both alike;
the table reports the median time of each and the ratio scipy / crossentropy (above 1: we are faster)
measured in this one run. Results: ``benchmarks/results/info.md``.

Options: ``--rows=N``
(default 1,000,000), ``--classes=K`` (default 100), ``--repeats=R`` (default 5), ``--quick``
(100,000 rows, written to ``info_quick.md``).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import positive_int

RESULTS = Path(__file__).parent / "results" / "info.md"
# the flags `python -m benchmarks` hands to main()
FLAGS = ("--rows", "--classes", "--repeats", "--quick")


def _time_pair(
    ours: Callable[[], Any], theirs: Callable[[], Any], repeats: int
) -> tuple[float, float]:
    ours()
    theirs()  # warm-up: page in the inputs and load code on both sides
    t_ours: list[float] = []
    t_theirs: list[float] = []
    for _ in range(repeats):
        for fn, sink in ((ours, t_ours), (theirs, t_theirs)):
            start = time.perf_counter()
            fn()
            sink.append(time.perf_counter() - start)
    return statistics.median(t_ours), statistics.median(t_theirs)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks info", description=__doc__)
    parser.add_argument(
        "--rows", type=positive_int, default=1_000_000, help="distributions (default: 1,000,000)"
    )
    parser.add_argument(
        "--classes", type=positive_int, default=100, help="outcomes per distribution (default: 100)"
    )
    parser.add_argument(
        "--repeats",
        type=positive_int,
        default=5,
        help="timed runs of each implementation, alternating; the median counts (default: 5)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="100,000 rows, results in info_quick.md"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rows = min(args.rows, 100_000)

    import scipy
    import scipy.stats

    import crossentropy as ce

    rng = np.random.default_rng(0)
    shape = (args.rows, args.classes)
    p = rng.random(shape)
    p /= p.sum(axis=1, keepdims=True)
    q = rng.random(shape)
    q /= q.sum(axis=1, keepdims=True)

    rows = []
    cases = [
        (
            "entropy(p)",
            lambda: ce.entropy(p),
            lambda: scipy.stats.entropy(p, axis=1),
        ),
        (
            "kl_divergence(p, q)",
            lambda: ce.kl_divergence(p, q),
            lambda: scipy.stats.entropy(p, q, axis=1),
        ),
    ]
    for name, ours, theirs in cases:
        diff = float(np.max(np.abs(np.asarray(ours()) - theirs())))
        t_ours, t_theirs = _time_pair(ours, theirs, args.repeats)
        rows.append((name, t_ours, t_theirs, t_theirs / t_ours, diff))
        print(
            f"{name:22s} crossentropy {t_ours * 1e3:8.1f} ms   scipy {t_theirs * 1e3:8.1f} ms   "
            f"ratio {t_theirs / t_ours:5.2f}x   max |diff| {diff:.1e}"
        )

    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    lines = [
        "# entropy / kl_divergence vs scipy.stats.entropy",
        "",
        f"- input: {args.rows:,} x {args.classes} float64, row-stochastic, class axis last "
        "(scipy: `axis=1`)",
        f"- median of {args.repeats} alternating runs after one warm-up; ratio = scipy / ours "
        "(above 1 means crossentropy is faster)",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}; "
        f"Python {platform.python_version()}, NumPy {np.__version__}, SciPy {scipy.__version__}, "
        f"crossentropy {ce.__version__}; {stamp}",
        f"- load average when done (1, 5, 15 min): {load}; other processes share the CPU, so "
        "absolute times are noisy and only the ratios, measured in one run, are comparable",
        "",
        "| function | crossentropy (ms) | scipy.stats.entropy (ms) | ratio | max abs diff |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, t_ours, t_theirs, ratio, diff in rows:
        lines.append(
            f"| `{name}` | {t_ours * 1e3:.1f} | {t_theirs * 1e3:.1f} | {ratio:.2f}x | {diff:.1e} |"
        )
    out = RESULTS.with_name("info_quick.md") if args.quick else RESULTS
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")
    return 0
