"""Peak memory of one Hugging Face causal-LM training step with and without ``crossentropy.hf``.

``python -m benchmarks hf_memory [--quick] [--device cuda] [--repeats=3]`` writes
``benchmarks/results/hf_memory.md`` and ``.csv``.

A tiny Llama (hidden 256, 2 layers) with a 32,000-token vocabulary takes one forward+backward
step on 4,096 tokens (2 x 2,048, 10% of the labels -100), fp32. Almost all of the step's memory is
then the loss: the ``4096 x 32000`` logits (500 MiB in fp32), their upcast copy, the softmax
and the gradient of the logits. Each variant runs in its own subprocess so that one cannot inherit
the other's heap:

* ``plain``: the model's own loss (``transformers``' ``ForCausalLMLoss`` on the full logits);
* ``fused``: the same model after ``crossentropy.hf.patch`` (``linear_cross_entropy``, logits
  never materialised).

On CPU the figure is the step's peak resident memory above the resident memory just before it
(``VmHWM`` reset through ``/proc/self/clear_refs`` after a warm-up step, read from
``/proc/self/status``); on CUDA it is ``torch.cuda.max_memory_allocated`` above the allocation
before the step. The loss of both variants is reported as a check that they computed the same
thing. Time is one step after the warm-up (CPU: wall clock, shared machine, indicative only).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import positive_int

RESULTS = Path(__file__).parent / "results"
# the flags `python -m benchmarks` hands to main()
FLAGS = ("--quick", "--device", "--repeats")
MIB = 1024 * 1024


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _child(variant: str, device: str, quick: bool) -> dict[str, Any]:
    import torch
    import transformers

    from crossentropy import hf

    torch.manual_seed(0)
    vocab, batch, length = (32000, 2, 2048) if not quick else (8000, 2, 512)
    cfg = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=length,
    )
    cfg._attn_implementation = "sdpa"
    model = transformers.LlamaForCausalLM(cfg)
    if device == "cuda":
        torch.nn.Module.cuda(model)  # transformers types its .to()/.cuda() wrappers oddly
    model.train()
    with torch.no_grad():
        model.lm_head.weight.mul_(12.0)  # LM-like logits (std about 4), not near-uniform
    if variant == "fused":
        hf.patch(model)
    ids = torch.randint(0, vocab, (batch, length), device=device)
    labels = ids.clone()
    labels[torch.rand(batch, length, device=device) < 0.1] = -100

    def step() -> float:
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        return float(loss.detach())

    step()  # warm-up: allocates the parameter gradients and the allocator's pools
    model.zero_grad(set_to_none=False)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        start = time.perf_counter()
        loss = step()
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        extra = torch.cuda.max_memory_allocated() - before
        device_name = torch.cuda.get_device_name()
    else:
        before = _status_kib("VmRSS") * 1024
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        start = time.perf_counter()
        loss = step()
        seconds = time.perf_counter() - start
        extra = _status_kib("VmHWM") * 1024 - before
        device_name = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    return {
        "variant": variant,
        "device": device_name,
        "tokens": batch * length,
        "vocab": vocab,
        "logits_mib": batch * length * vocab * 4 / MIB,
        "extra_mib": extra / MIB,
        "seconds": seconds,
        "loss": loss,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def _run_child(variant: str, device: str, quick: bool) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.hf_memory", "--child", variant, "--device", device]
    if quick:
        cmd.append("--quick")
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"hf_memory child {variant!r} failed:\n{done.stderr[-2000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks hf_memory")
    parser.add_argument("--quick", action="store_true", help="V=8000, 2 x 512 tokens")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument(
        "--repeats", type=positive_int, default=3, help="processes per variant (median reported)"
    )
    parser.add_argument("--child", choices=("plain", "fused"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quick, device = args.quick, args.device
    if args.child:
        print(json.dumps(_child(args.child, device, quick)))
        return 0
    # CPU peak RSS moves by tens of MiB between identical runs (allocator state): take the median
    # of several processes per variant, alternating the variants, and show the spread.
    runs: dict[str, list[dict[str, Any]]] = {"plain": [], "fused": []}
    for _ in range(max(1, args.repeats)):
        for variant in runs:
            runs[variant].append(_run_child(variant, device, quick))
    rows = []
    for results in runs.values():
        mems = sorted(r["extra_mib"] for r in results)
        row = dict(results[0])
        row["extra_mib"] = statistics.median(mems)
        row["extra_mib_min"], row["extra_mib_max"] = mems[0], mems[-1]
        row["seconds"] = statistics.median(r["seconds"] for r in results)
        rows.append(row)
    plain, fused = rows
    RESULTS.mkdir(exist_ok=True)
    stem = "hf_memory" + ("_quick" if quick else "") + ("_cuda" if device == "cuda" else "")
    with open(RESULTS / f"{stem}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(plain))
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        "# Hugging Face causal-LM training step: peak memory with and without crossentropy.hf",
        "",
        f"Device: {plain['device']}; torch {plain['torch']}, transformers {plain['transformers']}.",
        f"LlamaForCausalLM, hidden 256, 2 layers, vocab {plain['vocab']}, {plain['tokens']} tokens "
        "(10% labels -100), fp32, one forward+backward after a warm-up step, each variant in "
        "its own process.",
        f"The fp32 logits alone are {plain['logits_mib']:.0f} MiB.",
        "",
        f"Median of {len(runs['plain'])} processes per variant (range in brackets).",
        "",
        "| variant | loss | peak extra memory of the step | step time |",
        "|---|---|---|---|",
    ]
    for r in rows:
        spread = f"[{r['extra_mib_min']:,.0f}–{r['extra_mib_max']:,.0f}]"
        lines.append(
            f"| {r['variant']} | {r['loss']:.6f} | {r['extra_mib']:,.0f} MiB {spread} | "
            f"{r['seconds']:.2f} s |"
        )
    ratio = plain["extra_mib"] / max(fused["extra_mib"], 1e-9)
    lines += [
        "",
        f"Memory ratio plain / fused: {ratio:.1f}x; |loss difference| "
        f"{abs(plain['loss'] - fused['loss']):.2e}.",
        "",
        "CPU memory is the step's peak RSS above the RSS just before it (VmHWM after "
        "/proc/self/clear_refs); the machine is shared, so times are indicative only.",
    ]
    text = "\n".join(lines) + "\n"
    (RESULTS / f"{stem}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
