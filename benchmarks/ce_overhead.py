"""``python -m benchmarks ce_overhead``: per-call cost of ``crossentropy.torch.cross_entropy``.

Forward+backward of ``cross_entropy(x, y)`` (default options, mean) against
``torch.nn.functional.cross_entropy`` on classifier-sized float32 CPU logits, one thread, in one
process. The two are timed in alternating rounds (each round: many calls of one, then of the
other), and the best round of each counts, so both see the same machine load; the ratio is ours /
torch. Writes ``benchmarks/results/ce_overhead.md``. Options: ``--rounds=R`` (default 7),
``--quick`` (fewer calls, ``ce_overhead_quick.md``).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

from benchmarks import positive_int

RESULTS = Path(__file__).parent / "results"
FLAGS = ("--rounds", "--quick")
# (rows, classes, calls per round); the three shapes and their targets
SHAPES = ((64, 10, 2000, 1.3), (256, 512, 400, 1.3), (1024, 32000, 2, 1.05))


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks ce_overhead")
    parser.add_argument(
        "--rounds",
        type=positive_int,
        default=7,
        help="alternating timed rounds per implementation; the best counts (default: 7)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a tenth of the calls, results in ce_overhead_quick.md"
    )
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = _parse(argv)
    import torch
    import torch.nn.functional as F

    from crossentropy.torch import cross_entropy

    torch.set_num_threads(1)
    rows = []
    ok = True
    for n, c, calls, target in SHAPES:
        if args.quick:
            calls = max(1, calls // 10)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(n, c, generator=g)
        y = torch.randint(0, c, (n,), generator=g)

        def step(fn: object, x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
            xx = x.detach().requires_grad_()
            loss = fn(xx, y)  # type: ignore[operator]
            loss.backward()
            return loss.detach()

        a, b = step(F.cross_entropy), step(cross_entropy)  # warm-up, and the values agree
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        best = {"torch": float("inf"), "crossentropy": float("inf")}
        for _ in range(args.rounds):
            for name, fn in (("torch", F.cross_entropy), ("crossentropy", cross_entropy)):
                start = time.perf_counter()
                for _ in range(calls):
                    step(fn)
                best[name] = min(best[name], (time.perf_counter() - start) / calls)
        ratio = best["crossentropy"] / best["torch"]
        ok &= ratio <= target
        rows.append(
            f"| ({n}, {c}) | {best['torch'] * 1e3:.3f} ms | {best['crossentropy'] * 1e3:.3f} ms "
            f"| **{ratio:.2f}x** | at most {target}x |"
        )
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# cross_entropy per-call cost: crossentropy.torch vs torch.nn.functional",
        "",
        "Forward+backward, float32 CPU logits, int64 class ids, mean; one thread; best of "
        f"{args.rounds} alternating rounds per implementation, in one process.",
        "",
        "| shape | torch | ours | ours / torch | target |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"Configuration: {stamp}; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPU cores visible (shared with other jobs); Python "
        f"{platform.python_version()}, torch {torch.__version__}.",
        "",
    ]
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("ce_overhead_quick.md" if args.quick else "ce_overhead.md")
    out.write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {out}")
    return 0 if ok else 1
