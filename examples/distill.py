"""Distil a tiny teacher LM into a smaller student, without either side's logits.

Needs: crossentropy[hf,demo]
Run: python examples/distill.py [--steps 300] [--divergence kl] [--out examples_out]

The teacher is a fixed, randomly initialised Llama (hidden 64, 2 layers); the student is smaller
(hidden 32, 1 layer) and shares the vocabulary. Each step draws fresh random token sequences and
minimises ``crossentropy.hf.distillation_loss`` (both models' own forwards, their final hidden
states and output heads; no (B, T, V) logits on either side) with AdamW. Every 25 steps the
student's KL(teacher || student) on a fixed held-out batch is recorded; it falls. The curve is
written to ``OUT/distill.png`` (with matplotlib, which the ``demo`` extra installs) and the
numbers to ``OUT/distill.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import transformers

from crossentropy import hf


def llama(hidden: int, layers: int, vocab: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    return transformers.LlamaForCausalLM(cfg)


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="optimiser steps (default: 300)")
    parser.add_argument(
        "--divergence", default="kl", choices=["kl", "reverse_kl", "jsd", "cross_entropy"]
    )
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--out", default="examples_out", help="folder for distill.png / .json")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    teacher = llama(64, 2, args.vocab, args.seed).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    # a teacher with some structure to learn: sharpen its head so its distributions are peaked
    with torch.no_grad():
        teacher.lm_head.weight.mul_(8.0)
    student = llama(32, 1, args.vocab, args.seed + 1).train()
    opt = torch.optim.AdamW(student.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(args.seed + 2)
    held_out = torch.randint(0, args.vocab, (16, 32), generator=g)
    steps, kls = [], []

    def evaluate(step: int) -> None:
        with torch.no_grad():
            kl = hf.distillation_loss(student, teacher, held_out, divergence="kl")
        steps.append(step)
        kls.append(float(kl))
        print(f"step {step:4d}  held-out KL(teacher || student) = {float(kl):.4f} nats/token")

    evaluate(0)
    for step in range(1, args.steps + 1):
        ids = torch.randint(0, args.vocab, (16, 32), generator=g)
        loss = hf.distillation_loss(student, teacher, ids, divergence=args.divergence)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 25 == 0 or step == args.steps:
            evaluate(step)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"step": steps, "held_out_kl": kls}
    (out / "distill.json").write_text(json.dumps(result, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, kls, marker="o", ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel("KL(teacher || student), nats/token")
    ax.set_title(f"Distilling without logits ({args.divergence}): held-out KL")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "distill.png", dpi=120)
    print(
        f"KL fell from {kls[0]:.4f} to {kls[-1]:.4f}; wrote {out / 'distill.png'} and {out / 'distill.json'}"
    )
    return result


if __name__ == "__main__":
    main()
