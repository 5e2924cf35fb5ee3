"""One Hugging Face Llama training step on a GPU: unpatched, ``crossentropy.hf.patch``, Liger.

``python -m benchmarks hf_gpu [--quick]`` on a CUDA machine; writes ``benchmarks/results/hf_gpu.md``.

Two setups (issue 12), hidden 2048, V=128256, 10% of the labels -100:

* pure bf16 weights, 4 layers, 4 x 2048 tokens;
* fp32 weights under bf16 autocast (what ``Trainer(bf16=True)`` runs), 2 layers, 2 x 2048 tokens.

Variants: the model's own loss; patched with the default engine; patched with ``memory="low"``;
Liger-Kernel's patch when importable. Each variant runs in its own subprocess (a fresh CUDA heap):
median step time (CUDA events, after 2 warm-up steps) and peak allocated memory above the memory
before the step. Targets: patched default <= 1.0x the unpatched time in both setups; peak memory
<= 0.25x (pure bf16) and <= 0.4x (autocast) of the unpatched step's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

NEEDS_CUDA = True
RESULTS = Path(__file__).parent / "results"
FLAGS = ("--quick",)
SETUPS = {
    "pure bf16": {"layers": 4, "batch": 4, "autocast": False},
    "fp32 weights + bf16 autocast": {"layers": 2, "batch": 2, "autocast": True},
}
VARIANTS = ("unpatched", "patched", "patched memory=low", "liger")


def llama_config(vocab: int, hidden: int, length: int, layers: int) -> Any:
    """The Llama of the training-step benchmarks (this one and gpu_check's)."""
    import transformers

    return transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=16,
        num_key_value_heads=8,
        max_position_embeddings=length,
    )


def _child(setup: str, variant: str, quick: bool) -> dict[str, Any]:
    import torch
    import transformers

    cfg = SETUPS[setup]
    vocab, hidden, length = (32000, 512, 512) if quick else (128256, 2048, 2048)
    torch.manual_seed(0)
    config = llama_config(vocab, hidden, length, cfg["layers"])
    model = transformers.LlamaForCausalLM(config).cuda()
    if not cfg["autocast"]:
        model = model.to(torch.bfloat16)
    model.train()
    if variant.startswith("patched"):
        from crossentropy import hf

        hf.patch(model, memory="low" if variant.endswith("low") else "auto")
    elif variant == "liger":
        from liger_kernel.transformers import _apply_liger_kernel_to_instance

        _apply_liger_kernel_to_instance(model=model)
    g = torch.Generator(device="cuda").manual_seed(1)
    ids = torch.randint(0, vocab, (cfg["batch"], length), device="cuda", generator=g)
    labels = ids.clone()
    labels[torch.rand(ids.shape, device="cuda", generator=g) < 0.1] = -100

    def step() -> float:
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg["autocast"]):
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        return float(loss.detach())

    for _ in range(2):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(5):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        loss = step()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    model.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    return {"ms": statistics.median(times), "peak_mib": peak, "loss": loss}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks hf_gpu")
    parser.add_argument("--quick", action="store_true", help="smaller model and vocabulary")
    quick = parser.parse_args(argv).quick
    import torch

    if not torch.cuda.is_available():
        print("hf_gpu: needs a CUDA GPU", file=sys.stderr)
        return 2
    lines = [
        "# Hugging Face Llama training step on a GPU",
        "",
        f"Device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}"
        + (" (quick shapes)" if quick else ""),
        "",
        "| setup | variant | step | vs unpatched | peak extra | vs unpatched | loss |",
        "|---|---|---|---|---|---|---|",
    ]
    for setup in SETUPS:
        base: dict[str, Any] | None = None
        for variant in VARIANTS:
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.hf_gpu", "--child", setup, variant, str(quick)],
                capture_output=True,
                text=True,
                cwd=Path(__file__).parents[1],
            )
            if out.returncode != 0:
                why = (out.stderr.strip().splitlines() or ["?"])[-1][:160].replace("|", "/")
                lines.append(f"| {setup} | {variant} | failed: {why} | | | | |")
                continue
            res = json.loads(out.stdout.strip().splitlines()[-1])
            base = base or res
            lines.append(
                f"| {setup} | {variant} | {res['ms']:.1f} ms | {res['ms'] / base['ms']:.2f}x | "
                f"{res['peak_mib']:,.0f} MiB | {res['peak_mib'] / base['peak_mib']:.2f}x | "
                f"{res['loss']:.6f} |"
            )
    RESULTS.mkdir(exist_ok=True)
    out_path = RESULTS / ("hf_gpu_quick.md" if quick else "hf_gpu.md")
    out_path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(_child(sys.argv[2], sys.argv[3], sys.argv[4] == "True")))
    else:
        raise SystemExit(main(sys.argv[1:]))
