"""RL log-probabilities and distillation on the CPU: time and peak memory against linear-CE.

``python -m benchmarks rl_cpu [--rounds=R] [--repeats=K] [--quick]``

Two configurations, fp32, logits with standard deviation about 4, targets sampled from the model:

* log-probabilities (issue 15): N=8192, D=512, V=32000. ``linear_logprobs`` alone and with the
  entropy (both with random upstream gradients), against ``linear_cross_entropy`` with ``mean``
  (the fused 6NDV path) and with ``reduction="none"`` (per-row outputs with any upstream gradient,
  the same 8NDV structure log-probabilities need);
* distillation (issue 16): N=4096, student D=512, teacher D=1024, V=32000. ``kl`` and ``jsd``
  with a frozen teacher, against ``linear_cross_entropy`` of the student at the same N and V, and
  the materialised KL (``F.kl_div`` of both sides' full logits).

Each variant runs in a fresh subprocess: "extra" = peak RSS (``VmHWM``, reset once the inputs are
loaded) minus the RSS with inputs loaded minus the bytes of the gradients. Times are the median of
``--repeats`` forward+backward passes after a warm-up; ``--rounds`` repeats the set in alternating
order and each variant's best round counts (the CPU is shared). ``--quick``: a quarter of N and V.
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
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks import positive_int

RESULTS = Path(__file__).parent / "results"
FLAGS = ("--rounds", "--repeats", "--quick")
LOGPROB_VARIANTS = ("lce_mean", "lce_none", "logprobs", "logprobs_entropy")
DISTILL_VARIANTS = ("lce_student", "distill_kl", "distill_jsd", "materialised_kl")


def _status(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def _step(variant: str) -> Any:
    import torch
    import torch.nn.functional as F

    from crossentropy.torch import linear_cross_entropy, linear_distillation_loss, linear_logprobs

    def run(t: dict[str, Any]) -> Any:
        if variant in ("lce_mean", "lce_student"):
            return linear_cross_entropy(t["h"], t["w"], t["y"])
        if variant == "lce_none":
            return (linear_cross_entropy(t["h"], t["w"], t["y"], reduction="none") * t["up"]).sum()
        if variant == "logprobs":
            return (linear_logprobs(t["h"], t["w"], t["y"]) * t["up"]).sum()
        if variant == "logprobs_entropy":
            out = linear_logprobs(t["h"], t["w"], t["y"], return_entropy=True)
            return (out.logprobs * t["up"]).sum() + (out.entropy * t["up2"]).sum()
        if variant == "distill_kl":
            return linear_distillation_loss(t["h"], t["w"], t["ht"], t["wt"], divergence="kl")
        if variant == "distill_jsd":
            return linear_distillation_loss(
                t["h"], t["w"], t["ht"], t["wt"], divergence="jsd", beta=0.5
            )
        if variant == "materialised_kl":
            lq = torch.log_softmax(t["h"] @ t["w"].T, -1)
            with torch.no_grad():
                lp = torch.log_softmax(t["ht"] @ t["wt"].T, -1)
            return F.kl_div(lq, lp, log_target=True, reduction="batchmean")
        raise ValueError(variant)

    return run


def child(data_path: str, variant: str, repeats: int) -> None:
    import torch

    data = torch.load(data_path)
    t = dict(data)
    t["h"] = data["h"].clone().requires_grad_(True)
    t["w"] = data["w"].clone().requires_grad_(True)
    grad_bytes = sum(t[k].numel() * t[k].element_size() for k in ("h", "w"))
    run = _step(variant)
    times = []
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    base = _status("VmRSS")
    for i in range(repeats + 1):
        t["h"].grad = None
        t["w"].grad = None
        t0 = time.perf_counter()
        run(t).backward()
        if i:
            times.append(time.perf_counter() - t0)
    peak = _status("VmHWM")
    print(json.dumps({"times": times, "extra": peak - base - grad_bytes}))


def _inputs(n: int, d: int, v: int, dt: int | None, path: str) -> None:
    import torch

    g = torch.Generator().manual_seed(0)
    h = torch.randn(n, d, generator=g)
    w = torch.randn(v, d, generator=g) * (4.0 / d**0.5)
    with torch.no_grad():
        y = torch.cat(
            [
                torch.multinomial(torch.softmax(h[i : i + 512] @ w.T, 1), 1, generator=g)[:, 0]
                for i in range(0, n, 512)
            ]
        )
    data = {
        "h": h,
        "w": w,
        "y": y,
        "up": torch.randn(n, generator=g),
        "up2": torch.randn(n, generator=g),
    }
    if dt is not None:
        data["ht"] = torch.randn(n, dt, generator=g)
        data["wt"] = torch.randn(v, dt, generator=g) * (4.0 / dt**0.5)
    torch.save(data, path)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks rl_cpu")
    parser.add_argument(
        "--rounds",
        type=positive_int,
        default=2,
        help="alternating rounds; each variant's best counts (default: 2)",
    )
    parser.add_argument(
        "--repeats",
        type=positive_int,
        default=3,
        help="timed passes per variant and round; the median counts (default: 3)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="N and V divided by 4, results in rl_cpu_quick.md"
    )
    return parser.parse_args(argv)


def _measure(
    path: str, variants: tuple[str, ...], args: argparse.Namespace
) -> dict[str, dict[str, float]]:
    best: dict[str, dict[str, float]] = {}
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")]
        ),
    }
    for r in range(args.rounds):
        order = variants if r % 2 == 0 else tuple(reversed(variants))
        for variant in order:
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.rl_cpu",
                    "--child",
                    path,
                    variant,
                    str(args.repeats),
                ],
                capture_output=True,
                text=True,
                env=env,
                cwd=Path(__file__).parents[1],
                check=True,
            )
            res = json.loads(out.stdout.strip().splitlines()[-1])
            t = statistics.median(res["times"])
            prev = best.get(variant)
            if prev is None or t < prev["time"]:
                best[variant] = {"time": t, "extra": res["extra"]}
            else:
                prev["extra"] = min(prev["extra"], res["extra"])
    return best


def main(argv: list[str]) -> int:
    args = _parse(argv)
    import torch

    q = 4 if args.quick else 1
    rows: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        lp_path, kd_path = os.path.join(tmp, "lp.pt"), os.path.join(tmp, "kd.pt")
        n1, v = 8192 // q, 32000 // q
        _inputs(n1, 512, v, None, lp_path)
        lp = _measure(lp_path, LOGPROB_VARIANTS, args)
        n2 = 4096 // q
        _inputs(n2, 512, v, 1024, kd_path)
        kd = _measure(kd_path, DISTILL_VARIANTS, args)

    def line(name: str, res: dict[str, float], base: dict[str, float], what: str) -> str:
        return (
            f"| {name} | {res['time']:.2f} s | **{res['time'] / base['time']:.2f}x** | "
            f"{res['extra'] / 2**20:,.0f} MiB | **{res['extra'] / max(base['extra'], 1):.2f}x** | {what} |"
        )

    rows = [
        f"## Log-probabilities: N={n1}, D=512, V={v}, fp32",
        "",
        "| variant | time | vs lce mean | extra peak RSS | vs lce mean | what |",
        "|---|---|---|---|---|---|",
        line("linear_cross_entropy mean", lp["lce_mean"], lp["lce_mean"], "fused, 6NDV"),
        line(
            "linear_cross_entropy none",
            lp["lce_none"],
            lp["lce_mean"],
            "per-row, recomputing, 8NDV",
        ),
        line("linear_logprobs", lp["logprobs"], lp["lce_mean"], "per-row, recomputing, 8NDV"),
        line(
            "linear_logprobs + entropy",
            lp["logprobs_entropy"],
            lp["lce_mean"],
            "with the entropy's gradient",
        ),
        "",
        f"Against the per-row CE path (same structure): log-probs {lp['logprobs']['time'] / lp['lce_none']['time']:.2f}x time, "
        f"{lp['logprobs']['extra'] / max(lp['lce_none']['extra'], 1):.2f}x extra memory; with entropy "
        f"{lp['logprobs_entropy']['time'] / lp['lce_none']['time']:.2f}x time, "
        f"{lp['logprobs_entropy']['extra'] / max(lp['lce_none']['extra'], 1):.2f}x extra memory.",
        "",
        f"## Distillation: N={n2}, student D=512, teacher D=1024, V={v}, fp32, frozen teacher",
        "",
        "| variant | time | vs student lce | extra peak RSS | vs student lce | what |",
        "|---|---|---|---|---|---|",
        line(
            "linear_cross_entropy (student)",
            kd["lce_student"],
            kd["lce_student"],
            "one head, fused",
        ),
        line(
            "linear_distillation_loss kl", kd["distill_kl"], kd["lce_student"], "two heads, fused"
        ),
        line(
            "linear_distillation_loss jsd", kd["distill_jsd"], kd["lce_student"], "two heads, fused"
        ),
        line(
            "materialised KL (F.kl_div)",
            kd["materialised_kl"],
            kd["lce_student"],
            "both sides' full logits",
        ),
    ]
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# RL log-probabilities and distillation on the CPU",
        "",
        "Forward+backward with random upstream gradients; each variant in its own process; extra = "
        f"peak RSS above the inputs and gradients; best of {args.rounds} alternating rounds, median "
        f"of {args.repeats} passes each.",
        "",
        *rows,
        "",
        f"Configuration: {stamp}; {platform.processor() or platform.machine()}, {os.cpu_count()} CPU "
        f"cores visible (shared with other jobs); Python {platform.python_version()}, torch "
        f"{torch.__version__}.",
        "",
    ]
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("rl_cpu_quick.md" if args.quick else "rl_cpu.md")
    out.write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        raise SystemExit(main(sys.argv[1:]))
