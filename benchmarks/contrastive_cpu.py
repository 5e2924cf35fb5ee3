"""``python -m benchmarks contrastive_cpu``: CLIP's loss on 2 gloo CPU ranks: contrastive_loss's ring against open_clip's ClipLoss(local_loss=True), time, peak RSS and the largest batch in the same memory.

``python -m benchmarks contrastive_cpu [--quick] [--repeats=K]`` writes
``benchmarks/results/contrastive_cpu.md`` (``contrastive_cpu_quick.md`` with ``--quick``) and
``.json``.

Both variants compute the symmetric CLIP loss of n rows per rank (d = 512, fp32, unit-norm
features, logit scale 1/0.07 as a tensor that requires grad), forward + backward, on 2 processes of
one thread each:

* ``ours``: ``contrastive_loss(a, b, logit_scale=t, process_group=WORLD)``, the B blocks passing
  round the ring, tiles of about 32 MiB;
* ``open_clip``: ``ClipLoss(local_loss=True, gather_with_grad=True)`` (open-clip-torch, its
  ``loss.py`` loaded by file path), which all-gathers both sides and builds n x 2n logits twice.

Part 1 (n = 4,096; ``--quick``: 1,024 with d = 128): each variant in its own pair of fresh
processes, one warm-up step, then ``--repeats`` timed steps: the median step time of the slower
rank, and the peak RSS of all the steps above the RSS before the first (``VmHWM`` after
``/proc/self/clear_refs``), the larger rank. The ``ours`` processes also run open_clip on the same
inputs afterwards and report the largest difference of loss and gradients (fp32).

Part 2, the largest batch each fits in the same memory: the budget is open_clip's step peak at the
Part 1 size. One step per size in fresh processes (n/4 to 2n for ours, n/4 to n for open_clip),
peak as above; the largest
measured size within the budget, and where the sizes run out, the size at which a fit of the
measured peaks (linear in n for ours, quadratic for open_clip) reaches the budget, marked as
extrapolated.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import positive_int

RESULTS = Path(__file__).parent / "results"
FLAGS = ("--quick", "--repeats")
MIB = 1024 * 1024
WORLD = 2


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> int:
    """Reset VmHWM to the current RSS; return that RSS in bytes."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_kib("VmRSS") * 1024


def _open_clip_loss() -> Any:
    import importlib.util

    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("open-clip-torch is not installed (make installs it with --no-deps)")
    path = Path(next(iter(spec.submodule_search_locations))) / "loss.py"
    loader = importlib.util.spec_from_file_location("open_clip_loss_only", path)
    assert loader is not None and loader.loader is not None
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    return module


def _child(rank: int, store: str, variant: str, n: int, d: int, steps: int, check: bool) -> dict:
    import datetime

    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    from crossentropy.torch import contrastive_loss

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        store=dist.FileStore(store, WORLD),
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=3600),
    )
    oc = _open_clip_loss()
    g = torch.Generator().manual_seed(rank)
    a = F.normalize(torch.randn(n, d, generator=g), dim=1).requires_grad_(True)
    b = F.normalize(torch.randn(n, d, generator=g), dim=1).requires_grad_(True)
    t = torch.tensor(1 / 0.07, requires_grad=True)
    clip = oc.ClipLoss(local_loss=True, gather_with_grad=True, rank=rank, world_size=WORLD)

    def step(which: str) -> Any:
        a.grad = b.grad = t.grad = None
        if which == "ours":
            loss = contrastive_loss(a, b, logit_scale=t, process_group=dist.group.WORLD)
        else:
            loss = clip(a, b, t)
        loss.backward()
        return loss.detach()

    # the peak spans every step, the warm-up included: memory the allocator keeps after a step
    # (glibc's heap holds freed blocks below its mmap threshold) is then part of the RSS before a
    # later step, and measuring from there would hide it
    times = []
    dist.barrier()
    before = _reset_peak()
    for i in range(steps):
        dist.barrier()
        t0 = time.perf_counter()
        step(variant)
        if i > 0 or steps == 1:
            times.append(time.perf_counter() - t0)
    peak = _status_kib("VmHWM") * 1024 - before
    res: dict[str, Any] = {"times": times, "peak": peak, "rss_before": before}
    if check:
        loss = step("ours")
        grads = [x.grad.clone() for x in (a, b, t)]  # type: ignore[union-attr]
        ref = step("open_clip")
        diffs = [float((x.grad - y).abs().max()) for x, y in zip((a, b, t), grads)]  # type: ignore[operator]
        res["max_diff"] = max([float((loss - ref).abs()), *diffs])
    dist.barrier()
    dist.destroy_process_group()
    return res


def _world(variant: str, n: int, d: int, steps: int, check: bool) -> list[dict[str, Any]]:
    """Run one variant on 2 fresh ranks (a file store in a fresh directory)."""
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "store")
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "benchmarks.contrastive_cpu", "--child", variant]
        cmd += [str(n), str(d), str(steps), str(int(check))]
        procs = [
            subprocess.Popen(
                [*cmd, str(r), store],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            for r in range(WORLD)
        ]
        outs = [p.communicate(timeout=7200) for p in procs]
    results = []
    for p, (out, err) in zip(procs, outs):
        if p.returncode != 0:
            raise RuntimeError(f"contrastive_cpu child {variant} n={n} failed:\n{err[-3000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def _machine() -> dict[str, str]:
    import torch

    return {
        "device": f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def _fit_largest(points: list[tuple[int, int]], budget: int, degree: int) -> float | None:
    """n where a least-squares fit of peak(n) (polynomial of ``degree``) reaches ``budget``."""
    import numpy as np

    if len(points) <= degree:
        return None
    ns = np.array([p[0] for p in points], dtype=float)
    peaks = np.array([p[1] for p in points], dtype=float)
    coef = np.polyfit(ns, peaks, degree)
    coef[-1] -= budget
    roots = [r.real for r in np.roots(coef) if abs(r.imag) < 1e-9 and r.real > 0]
    return min(roots) if roots else None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks contrastive_cpu")
    parser.add_argument(
        "--quick", action="store_true", help="n=1024, d=128; results under a _quick name"
    )
    parser.add_argument(
        "--repeats", type=positive_int, default=3, help="timed steps per variant (median)"
    )
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        variant, n, d, steps, check, rank, store = args.child
        res = _child(int(rank), store, variant, int(n), int(d), int(steps), bool(int(check)))
        print(json.dumps(res))
        return 0

    n, d = (1024, 128) if args.quick else (4096, 512)
    report: dict[str, Any] = {"machine": _machine(), "n": n, "d": d, "world": WORLD}
    part1 = {}
    for variant in ("ours", "open_clip"):
        ranks = _world(variant, n, d, args.repeats + 1, check=variant == "ours")
        part1[variant] = {
            "time": max(statistics.median(r["times"]) for r in ranks),
            "peak": max(r["peak"] for r in ranks),
            "max_diff": max(r.get("max_diff", 0.0) for r in ranks),
        }
        print(f"contrastive_cpu: {variant} n={n}: {part1[variant]}", flush=True)
    report["part1"] = part1
    budget = part1["open_clip"]["peak"]
    sizes = {
        "ours": [n // 4, n // 2, n, 2 * n],
        "open_clip": [n // 4, n // 2, n],
    }
    part2: dict[str, Any] = {"budget": budget}
    for variant, ns in sizes.items():
        points = []
        for size in ns:
            if size == n:
                peak = part1[variant]["peak"]
            else:
                peak = max(r["peak"] for r in _world(variant, size, d, 1, check=False))
            points.append((size, peak))
            print(f"contrastive_cpu: {variant} n={size}: peak {peak / MIB:.0f} MiB", flush=True)
        fitted = _fit_largest(points, budget, 1 if variant == "ours" else 2)
        measured = max((s for s, p in points if p <= budget), default=None)
        part2[variant] = {"points": points, "largest_measured": measured, "fit": fitted}
    report["part2"] = part2
    stem = "contrastive_cpu_quick" if args.quick else "contrastive_cpu"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(report, indent=1))
    text = _markdown(report, args.repeats)
    (RESULTS / f"{stem}.md").write_text(text)
    print(text)
    return 0


def _markdown(report: dict[str, Any], repeats: int) -> str:
    m, n, d = report["machine"], report["n"], report["d"]
    p1, p2 = report["part1"], report["part2"]
    ours, oc = p1["ours"], p1["open_clip"]
    lines = [
        "# Contrastive (CLIP) loss on 2 gloo CPU ranks",
        "",
        f"Device: {m['device']}, shared by other jobs (times indicative; ratios are measured in "
        f"one run); torch {m['torch']}, Python {m['python']}. 2 processes, 1 thread each.",
        "",
        f"## n = {n:,} rows per rank, d = {d}",
        "",
        f"Symmetric CLIP loss (softmax, diagonal positives), fp32, forward + backward; median of "
        f"{repeats} steps after a warm-up, the slower rank. Peak: the RSS of the steps (the warm-up "
        "included) above the RSS before the first, the larger rank. Each variant in its own pair "
        "of fresh processes.",
        "",
        "| variant | step time | peak above start | vs open_clip (time / peak) |",
        "|---|---|---|---|",
        f"| open_clip `ClipLoss(local_loss=True, gather_with_grad=True)` | {oc['time']:.3f} s | "
        f"{oc['peak'] / MIB:,.0f} MiB | 1.00x / 1.00x |",
        f"| `contrastive_loss(..., process_group=WORLD)` | {ours['time']:.3f} s | "
        f"{ours['peak'] / MIB:,.0f} MiB | {ours['time'] / oc['time']:.2f}x / "
        f"{ours['peak'] / oc['peak']:.2f}x |",
        "",
        f"Largest difference from open_clip on the same inputs (loss, d a, d b, d t; fp32): "
        f"{ours['max_diff']:.1e}.",
        "",
        "## The largest batch each fits in the same memory",
        "",
        f"Budget: open_clip's peak at n = {n:,}: {p2['budget'] / MIB:,.0f} MiB. One step per "
        "size, in fresh processes; peak as above.",
        "",
        "| variant | n per rank: step peak (MiB) | largest measured n within the budget | "
        "n where a fit reaches the budget |",
        "|---|---|---|---|",
    ]
    for variant, degree in (("open_clip", "quadratic"), ("ours", "linear")):
        rec = p2[variant]
        pts = ", ".join(f"{s:,}: {p / MIB:,.0f}" for s, p in rec["points"])
        fit = "-"
        if rec["fit"]:
            beyond = rec["fit"] > max(size for size, _ in rec["points"])
            fit = f"{rec['fit']:,.0f} ({degree} fit{', extrapolated' if beyond else ''})"
        largest = f"{rec['largest_measured']:,}" if rec["largest_measured"] else "-"
        lines.append(f"| {variant} | {pts} | {largest} | {fit} |")
    fit_ours, fit_oc = p2["ours"]["fit"], p2["open_clip"]["fit"]
    if fit_ours and fit_oc:
        lines += [
            "",
            f"In the memory open_clip needs at n = {n:,}, the ring fits about "
            f"{fit_ours / fit_oc:.0f}x the batch per rank (a fit of measured peaks, not a run at "
            "that size: its step would take minutes here). Its peak grows linearly in n and does "
            "not grow with the number of ranks; open_clip's logits grow as n x (n x ranks).",
        ]
    lines += [
        "",
        "No GPU figures here: on CUDA the same blocks run with 16-bit operands on tensor cores, "
        "and their timings wait for a GPU run.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
