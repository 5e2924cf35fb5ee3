"""``python -m benchmarks metrics``: crossentropy.metrics.log_loss against sklearn.metrics.log_loss.

Both score the same 1,000,000 x 100 float64 probabilities (rows of a Dirichlet-like random
distribution, no zeros) with integer labels, in one process, alternating calls so both see the
same machine load. Reports the median wall time of each and their ratio, checks the two results
agree, and writes ``benchmarks/results/metrics.md``. Options: ``--rows=N``, ``--classes=K``,
``--repeats=R`` (default 1,000,000, 100, 5), ``--quick`` (100,000 rows, written to
``metrics_quick.md``).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from benchmarks import positive_int

RESULTS = Path(__file__).parent / "results"
# the flags `python -m benchmarks` hands to main()
FLAGS = ("--rows", "--classes", "--repeats", "--quick")


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks metrics")
    parser.add_argument(
        "--rows",
        type=positive_int,
        default=1_000_000,
        help="predictions scored (default: 1,000,000)",
    )
    parser.add_argument(
        "--classes", type=positive_int, default=100, help="classes per prediction (default: 100)"
    )
    parser.add_argument(
        "--repeats",
        type=positive_int,
        default=5,
        help="timed calls of each implementation, alternating; the median counts (default: 5)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="100,000 rows, results in metrics_quick.md"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rows = min(args.rows, 100_000)
    return args


def main(argv: list[str]) -> int:
    args = _parse(argv)
    import sklearn
    import sklearn.metrics as skm

    from crossentropy.metrics import log_loss

    rng = np.random.default_rng(0)
    n, k = args.rows, args.classes
    p = rng.exponential(size=(n, k))
    p /= p.sum(axis=1, keepdims=True)
    y = rng.integers(0, k, size=n)
    y[:k] = np.arange(k)  # every class present, so sklearn infers all k labels

    def ours() -> float:
        return log_loss(y, p)

    def theirs() -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(skm.log_loss(y, p))

    ours()
    theirs()  # warm-up: page in the arrays, import lazily loaded code
    times: dict[str, list[float]] = {"crossentropy": [], "sklearn": []}
    values: dict[str, float] = {}
    for _ in range(args.repeats):
        for name, fn in (("crossentropy", ours), ("sklearn", theirs)):
            start = time.perf_counter()
            values[name] = fn()
            times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(t) for name, t in times.items()}
    ratio = med["sklearn"] / med["crossentropy"]
    diff = abs(values["crossentropy"] - values["sklearn"])
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# log_loss: crossentropy.metrics vs sklearn.metrics",
        "",
        f"{n:,} x {k} float64 probabilities, integer labels; median of {args.repeats} calls each, "
        "alternating, after one warm-up call each. One run, one process.",
        "",
        "| implementation | median time | all times (s) |",
        "|---|---|---|",
        *(
            f"| {name} | {med[name] * 1e3:,.0f} ms | {', '.join(f'{t:.3f}' for t in times[name])} |"
            for name in times
        ),
        "",
        f"**sklearn / crossentropy time ratio: {ratio:.1f}x** (goal: at least 2x).",
        f"Results agree: |difference| = {diff:.2e} (log loss {values['crossentropy']:.12f}).",
        "",
        f"Configuration: {stamp}; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPU cores visible (shared with other jobs, so absolute times are "
        f"noisy); Python {platform.python_version()}, NumPy {np.__version__}, scikit-learn "
        f"{sklearn.__version__}.",
        "",
        "Why it is faster: sklearn clips a copy of the whole matrix, builds an n x k one-hot label "
        "matrix and takes the log of every entry; crossentropy checks the range and row sums with "
        "reductions and takes the log of the n true-class probabilities only.",
        "",
    ]
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("metrics_quick.md" if args.quick else "metrics.md")
    out.write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {out}")
    return 0 if diff <= 1e-9 * max(1.0, abs(values["sklearn"])) else 1
