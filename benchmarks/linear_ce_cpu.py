"""Fused linear cross-entropy on CPU: time and peak memory of forward+backward, against torch.

``python -m benchmarks linear_ce_cpu [--rounds=R] [--repeats=K] [--quick]``

Configuration: fp32, N=8192 rows, D=512 features, V=32000 classes (``--quick``: N=2048, V=8000).
Hidden states and weight are scaled so the logits have standard deviation about 4 (LM-like entropy)
and targets are sampled from the model's own softmax, as ANCHORS.md recommends. Implementations:

* ``eager``: ``F.cross_entropy(h @ W.T, y)`` (materialises the N x V logits);
* ``torch_chunked``: ``F.linear_cross_entropy(h, W, y, options=LinearCrossEntropyOptions())``
  (torch >= 2.13's native chunked path), when the installed torch has it;
* ``crossentropy``: ``crossentropy.torch.linear_cross_entropy(h, W, y)`` (impl="torch").

Each implementation runs in a fresh subprocess that loads the same inputs, resets its peak RSS
(``/proc/self/clear_refs``) once its inputs are loaded and reads ``VmHWM`` after all passes (warm-up
included), so "extra" = peak RSS minus the RSS with inputs loaded minus the bytes of the gradients
(dh and dW). Times are the median of ``--repeats``
forward+backward passes after one warm-up; ``--rounds`` repeats the whole set in alternating order,
and the table reports each implementation's best round (the CPU is shared). The loss and the
gradients are compared with a float64 reference computed block by block in the parent.
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
# the flags `python -m benchmarks` hands to main()
FLAGS = ("--rounds", "--repeats", "--quick", "--impls", "--threads", "--tag")
IMPLS = ("eager", "torch_chunked", "crossentropy")


def _status(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def _run_impl(impl: str) -> Any:
    import torch
    import torch.nn.functional as F

    if impl == "eager":

        def step(h: Any, w: Any, y: Any) -> Any:
            return F.cross_entropy(h @ w.T, y)

    elif impl == "torch_chunked":
        options = torch.nn.LinearCrossEntropyOptions()

        def step(h: Any, w: Any, y: Any) -> Any:
            return F.linear_cross_entropy(h, w, y, options=options)

    elif impl == "crossentropy":
        from crossentropy.torch import linear_cross_entropy

        def step(h: Any, w: Any, y: Any) -> Any:
            return linear_cross_entropy(h, w, y, impl="torch")

    else:
        raise ValueError(f"unknown impl {impl!r}")
    return step


def child(data_path: str, impl: str, repeats: int, out_path: str) -> None:
    import torch

    threads = int(os.environ.get("CROSSENTROPY_BENCH_THREADS", "0"))
    if threads > 0:
        torch.set_num_threads(threads)
    data = torch.load(data_path)
    h0, w0, y = data["h"], data["w"], data["y"]
    step = _run_impl(impl)
    h = h0.clone().requires_grad_(True)
    w = w0.clone().requires_grad_(True)
    grad_bytes = h.numel() * h.element_size() + w.numel() * w.element_size()
    times = []
    loss_value = float("nan")
    # the peak covers the warm-up too: memory the allocator keeps after it still counts
    _reset_peak()
    base = _status("VmRSS")
    for i in range(repeats + 1):
        h.grad = None
        w.grad = None
        t0 = time.perf_counter()
        loss = step(h, w, y)
        loss.backward()
        elapsed = time.perf_counter() - t0
        loss_value = float(loss.detach())
        del loss
        if i >= 1:
            times.append(elapsed)
    peak = _status("VmHWM")
    assert h.grad is not None and w.grad is not None
    torch.save({"dh": h.grad, "dw": w.grad}, out_path)
    print(
        json.dumps(
            {
                "impl": impl,
                "times": times,
                "loss": loss_value,
                "base": base,
                "peak": peak,
                "grad_bytes": grad_bytes,
                "threads": torch.get_num_threads(),
            }
        )
    )


def _make_data(n: int, d: int, v: int, seed: int) -> dict[str, Any]:
    import torch

    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g)
    # logits x = h @ W.T have standard deviation ~4 when W entries have std 4 / sqrt(d)
    w = torch.randn(v, d, generator=g) * (4.0 / d**0.5)
    y = torch.empty(n, dtype=torch.long)
    for i in range(0, n, 512):
        probs = torch.softmax(h[i : i + 512] @ w.T, dim=1)
        y[i : i + 512] = torch.multinomial(probs, 1, generator=g).squeeze(1)
    return {"h": h, "w": w, "y": y}


def _reference(data: dict[str, Any]) -> tuple[float, Any, Any]:
    """Float64 loss and gradients of mean cross-entropy, block by block (plain torch math)."""
    import torch

    h = data["h"].double()
    w = data["w"].double()
    y = data["y"]
    n = h.shape[0]
    total = 0.0
    dh = torch.empty_like(h)
    dw = torch.zeros_like(w)
    for i in range(0, n, 256):
        logits = h[i : i + 256] @ w.T
        lse = torch.logsumexp(logits, 1)
        yi = y[i : i + 256]
        total += float((lse - logits.gather(1, yi[:, None]).squeeze(1)).sum())
        g = torch.softmax(logits, 1)
        g[torch.arange(len(yi)), yi] -= 1.0
        g /= n
        dh[i : i + 256] = g @ w
        dw += g.T @ h[i : i + 256]
    return total / n, dh, dw


def _rel(a: Any, b: Any) -> float:
    return float((a.double() - b).norm() / b.norm())


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks linear_ce_cpu")
    parser.add_argument(
        "--rounds",
        type=positive_int,
        default=2,
        help="times the whole set of implementations runs, in alternating order; the table "
        "reports each one's best round (default: 2)",
    )
    parser.add_argument(
        "--repeats",
        type=positive_int,
        default=3,
        help="timed forward+backward passes per implementation and round, after one warm-up; "
        "the median counts (default: 3)",
    )
    parser.add_argument("--quick", action="store_true", help="N=2048, V=8000 (a smoke run)")
    parser.add_argument(
        "--impls",
        default=",".join(IMPLS),
        metavar="A,B,...",
        help=f"comma-separated implementations to run, from {', '.join(IMPLS)} (default: all)",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--tag", default="", help="suffix of the results file name")
    args = parser.parse_args(argv)

    import torch
    import torch.nn.functional as F

    n, d, v = (2048, 512, 8000) if args.quick else (8192, 512, 32000)
    impls = [i for i in args.impls.split(",") if i]
    if "torch_chunked" in impls and not hasattr(F, "linear_cross_entropy"):
        print(f"torch {torch.__version__} has no F.linear_cross_entropy; skipping torch_chunked")
        impls.remove("torch_chunked")
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(root / "src"), str(root), *filter(None, [env.get("PYTHONPATH")])]
    )
    if args.threads > 0:
        env["CROSSENTROPY_BENCH_THREADS"] = str(args.threads)
    results: dict[str, list[dict[str, Any]]] = {i: [] for i in impls}
    with tempfile.TemporaryDirectory() as tmp:
        data_path = str(Path(tmp) / "data.pt")
        data = _make_data(n, d, v, seed=0)
        torch.save(data, data_path)
        ref_loss, ref_dh, ref_dw = _reference(data)
        for r in range(args.rounds):
            order = impls if r % 2 == 0 else impls[::-1]
            for impl in order:
                out_path = str(Path(tmp) / f"{impl}.pt")
                proc = subprocess.run(
                    [sys.executable, "-m", "benchmarks.linear_ce_cpu", "--child", impl,
                     data_path, str(args.repeats), out_path],
                    cwd=root, env=env, capture_output=True, text=True, check=False,
                )  # fmt: skip
                if proc.returncode != 0:
                    print(proc.stderr, file=sys.stderr)
                    raise RuntimeError(f"{impl} failed with status {proc.returncode}")
                res = json.loads(proc.stdout.strip().splitlines()[-1])
                grads = torch.load(out_path)
                res["dh_err"] = _rel(grads["dh"], ref_dh)
                res["dw_err"] = _rel(grads["dw"], ref_dw)
                res["loss_err"] = abs(res["loss"] - ref_loss)
                res["median"] = statistics.median(res["times"])
                res["extra"] = res["peak"] - res["base"] - res["grad_bytes"]
                results[impl].append(res)
                print(
                    f"round {r + 1} {impl:>14}: {res['median']:.3f} s (runs "
                    f"{', '.join(f'{t:.2f}' for t in res['times'])}), extra "
                    f"{res['extra'] / 2**20:,.0f} MiB, |loss - ref64| {res['loss_err']:.1e}",
                    flush=True,
                )
    text = _table(results, n, d, v, ref_loss, args)
    RESULTS.mkdir(exist_ok=True)
    name = "linear_ce_cpu" + ("_quick" if args.quick else "") + (f"_{args.tag}" if args.tag else "")
    name += ".md"
    (RESULTS / name).write_text(text)
    (RESULTS / name.replace(".md", ".json")).write_text(json.dumps(results, indent=1) + "\n")
    print(text)
    return 0


def _table(
    results: dict[str, list[dict[str, Any]]],
    n: int,
    d: int,
    v: int,
    ref_loss: float,
    args: argparse.Namespace,
) -> str:
    import torch

    best = {k: min(rs, key=lambda r: r["median"]) for k, rs in results.items() if rs}
    base = best.get("torch_chunked", best.get("eager"))
    threads = next(iter(best.values()))["threads"]
    lines = [
        "# Fused linear cross-entropy on CPU, forward + backward",
        "",
        f"N={n}, D={d}, V={v}, fp32, mean reduction, logits std ~4, targets sampled from the "
        f"model's softmax. torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs ({threads} torch threads), shared machine. "
        f"Median of {args.repeats} passes after a warm-up, best of {args.rounds} rounds "
        f"(rounds alternate the order of the implementations); "
        f"float64 reference loss {ref_loss:.6f}.",
        "",
        "| impl | time (s) | time / torch_chunked | fastest pass (s) | fastest / torch_chunked "
        "| extra peak RSS (MiB) | all rounds (s) | abs loss err | dh rel err | dW rel err |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    fastest = {k: min(t for r in rs for t in r["times"]) for k, rs in results.items() if rs}
    base_fast = fastest.get("torch_chunked", fastest.get("eager"))
    for impl, res in best.items():
        ratio = res["median"] / base["median"] if base is not None else float("nan")
        fast_ratio = fastest[impl] / base_fast if base_fast else float("nan")
        rounds = ", ".join(f"{r['median']:.2f}" for r in results[impl])
        extra = max(r["extra"] for r in results[impl])
        lines.append(
            f"| {impl} | {res['median']:.2f} | {ratio:.2f}x | {fastest[impl]:.2f} | "
            f"{fast_ratio:.2f}x | {extra / 2**20:,.0f} | {rounds} | {res['loss_err']:.1e} | "
            f"{res['dh_err']:.1e} | {res['dw_err']:.1e} |"
        )
    lines += [
        "",
        "time = median of the passes in the implementation's best round; fastest pass = minimum "
        "over all its passes (less sensitive to other load on the shared CPU). extra = the largest "
        "over rounds of (peak RSS over all passes minus the RSS with inputs loaded minus the "
        "bytes of dh and dW).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[3], sys.argv[2], int(sys.argv[4]), sys.argv[5])
    else:
        raise SystemExit(main(sys.argv[1:]))
