"""``python -m benchmarks score_rss``: peak memory of ``crossentropy score`` on a 10M-row CSV.

Writes a 10,000,000-row, 10-class prediction CSV (about 0.9 GB: ten probabilities with six decimals
that sum to exactly 1, and a label column) to a temporary directory, scores it with
``crossentropy score FILE --label-column y --json`` in a child process, and reports the child's
peak resident set size (its own ``VmHWM`` from ``/proc/self/status``, Linux) and wall time. The goal is a peak RSS
under 500 MB: the command reads the file in chunks and never holds it. Writes
``benchmarks/results/score_rss.md``. Options: ``--rows=N`` (default 10,000,000), ``--keep=PATH``
to write the CSV to PATH and keep it, ``--quick`` (200,000 rows, written to ``score_rss_quick.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from benchmarks import positive_int

RESULTS = Path(__file__).parent / "results"
# the flags `python -m benchmarks` hands to main()
FLAGS = ("--rows", "--keep", "--quick")
# The scoring process reports its own VmHWM (peak RSS of its address space since exec). The rusage
# of a child (ru_maxrss) would also count the pages it shared with this parent between fork and
# exec, which is the whole parent when other benchmarks have loaded torch first.
_CHILD = """
import sys
from crossentropy.cli import main
try:
    code = main(sys.argv[2:])
finally:
    with open("/proc/self/status") as f:
        hwm = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
    with open(sys.argv[1], "w") as f:
        f.write(hwm)
raise SystemExit(code)
"""
K = 10
SCALE = 1_000_000  # six decimals


def _chunk_bytes(rng: np.random.Generator, m: int) -> bytes:
    """``m`` CSV rows built as a byte matrix, without per-number string formatting."""
    p = rng.exponential(size=(m, K))
    p /= p.sum(axis=1, keepdims=True)
    p = p * (1 - K * 1e-5) + 1e-5  # no probability below 1e-5, so no zero after rounding
    ticks = np.floor(p * SCALE).astype(np.int64)
    ticks[:, -1] = SCALE - ticks[:, :-1].sum(axis=1)  # exact decimal sum of 1, last entry >= 0
    y = rng.integers(0, K, size=m)
    width = K * 9 + 3  # "d.dddddd," per class, then "cN\n"
    out = np.empty((m, width), dtype=np.uint8)
    for j in range(K):
        base = 9 * j
        out[:, base] = ord("0") + ticks[:, j] // SCALE
        out[:, base + 1] = ord(".")
        rest = ticks[:, j] % SCALE
        for d in range(6):
            out[:, base + 2 + d] = ord("0") + (rest // 10 ** (5 - d)) % 10
        out[:, base + 8] = ord(",")
    out[:, -3] = ord("c")
    out[:, -2] = ord("0") + y
    out[:, -1] = ord("\n")
    return out.tobytes()


def write_csv(path: Path, rows: int, chunk: int = 500_000) -> None:
    rng = np.random.default_rng(0)
    with open(path, "wb") as f:
        f.write((",".join(f"c{j}" for j in range(K)) + ",y\n").encode())
        for start in range(0, rows, chunk):
            f.write(_chunk_bytes(rng, min(chunk, rows - start)))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks score_rss")
    parser.add_argument(
        "--rows", type=positive_int, default=10_000_000, help="CSV rows (default: 10,000,000)"
    )
    parser.add_argument(
        "--keep",
        default=None,
        metavar="PATH",
        help="write the CSV to PATH and keep it (default: a temporary file, removed)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="200,000 rows, results in score_rss_quick.md"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rows = min(args.rows, 200_000)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.keep) if args.keep else Path(tmp) / "predictions.csv"
        start = time.perf_counter()
        write_csv(path, args.rows)
        write_s = time.perf_counter() - start
        size_mb = path.stat().st_size / 1e6
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
        hwm_path = Path(tmp) / "hwm.txt"
        cmd = [sys.executable, "-c", _CHILD, str(hwm_path), "score", str(path)]
        start = time.perf_counter()
        out_path, err_path = Path(tmp) / "out.json", Path(tmp) / "err.txt"
        with open(out_path, "wb") as out_f, open(err_path, "wb") as err_f:
            code = subprocess.call(
                [*cmd, "--label-column", "y", "--json"], stdout=out_f, stderr=err_f, env=env
            )
        wall = time.perf_counter() - start
        out, err = out_path.read_text(), err_path.read_text()
        peak_kib = int(hwm_path.read_text()) if hwm_path.exists() else 0
    if code != 0 or not peak_kib:
        print(err or "score_rss: the scoring process reported no peak RSS", file=sys.stderr)
        return 1
    peak_mb = peak_kib / 1024
    report = json.loads(out)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# crossentropy score: peak memory on a large CSV",
        "",
        f"`crossentropy score predictions.csv --label-column y --json` on {args.rows:,} rows x "
        f"{K} classes ({size_mb:,.0f} MB of CSV, six decimals per probability).",
        "",
        "| peak RSS of the scoring process | wall time | rows per second | goal |",
        "|---|---|---|---|",
        f"| {peak_mb:,.0f} MiB | {wall:,.1f} s | {args.rows / wall:,.0f} | < 500 MB |",
        "",
        f"Scored n = {report['n']:,}, log loss {report['log_loss_nats']:.6f} nats "
        f"(writing the file took {write_s:.0f} s).",
        "",
        f"Configuration: {stamp}; {os.cpu_count()} CPU cores visible, shared with other jobs "
        f"(times are noisy; peak RSS is not); Python {platform.python_version()}, NumPy "
        f"{np.__version__}; default --chunk-rows (65,536). One run.",
        "",
    ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / ("score_rss_quick.md" if args.quick else "score_rss.md")).write_text(
        "\n".join(lines)
    )
    print("\n".join(lines))
    return 0 if peak_mb < 500 else 1
