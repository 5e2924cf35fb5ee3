"""Offline distillation: a student trains from a file of its teacher's top-20 log-probabilities.

Needs: crossentropy[hf,demo]
Run: python examples/distill_topk.py [--steps 300] [--k 20] [--topk tail] [--out examples_out]

The teacher writes its top-20 once; the student learns from that file alone, beside a student
distilled from the whole teacher.

1. The teacher (a fixed random Llama, hidden 64, 2 layers, its head sharpened so its next-token
   distributions are peaked) scores a corpus of token sequences and saves, per position, the ids
   and log-probabilities of its k most likely next tokens: what vLLM's ``prompt_logprobs=k``
   gives. For a held-out batch it saves its full log-probabilities (for measuring only).
2. Student A (hidden 32, 1 layer) trains from the file: ``crossentropy.hf.distillation_loss(
   student, input_ids, teacher_topk=(ids, logprobs), divergence="kl")``. No teacher in memory,
   no (B, T, V) logits.
3. Student B, the same initial weights, trains on the same batches against the whole teacher
   (``hf.distillation_loss(student, teacher, input_ids, divergence="kl")``, both heads fused).

Every 25 steps both students' held-out KL(teacher || student) over the whole vocabulary is
printed; the held-out file holds all V ids, for which the top-k loss is the full divergence. The
curves go to ``OUT/distill_topk.png``, the numbers to ``OUT/distill_topk.json``.
"""

from __future__ import annotations

import argparse
import copy
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


@torch.no_grad()
def next_token_logprobs(teacher: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """(B, T-1, V): the teacher's log-probabilities of each next token."""
    return torch.log_softmax(teacher(input_ids=ids).logits[:, :-1].float(), -1)


def write_teacher_file(
    teacher: torch.nn.Module, corpus: torch.Tensor, held_out: torch.Tensor, k: int, path: Path
) -> None:
    """The offline pass: top-k ids (int32) and log-probabilities (float32) per position."""
    ids, logprobs = [], []
    for i in range(0, corpus.shape[0], 64):
        lp, top = next_token_logprobs(teacher, corpus[i : i + 64]).topk(k, -1)
        ids.append(top.to(torch.int32))
        logprobs.append(lp)
    full = next_token_logprobs(teacher, held_out)
    torch.save(
        {
            "input_ids": corpus,
            "topk_ids": torch.cat(ids),
            "topk_logprobs": torch.cat(logprobs),
            "held_out_ids": held_out,
            "held_out_logprobs": full,  # all V classes: for measuring the students only
        },
        path,
    )


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="optimiser steps (default: 300)")
    parser.add_argument("--k", type=int, default=20, help="ids saved per position (default: 20)")
    parser.add_argument("--topk", default="tail", choices=["tail", "renormalized"])
    parser.add_argument("--sequences", type=int, default=1024, help="corpus size (default: 1024)")
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--out", default="examples_out", help="folder for the file and results")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    teacher = llama(64, 2, args.vocab, args.seed).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        teacher.lm_head.weight.mul_(8.0)  # peaked distributions: structure worth learning
    g = torch.Generator().manual_seed(args.seed + 2)
    corpus = torch.randint(0, args.vocab, (args.sequences, 32), generator=g)
    held_out = torch.randint(0, args.vocab, (16, 32), generator=g)
    path = out / f"teacher_top{args.k}.pt"
    write_teacher_file(teacher, corpus, held_out, args.k, path)
    print(f"wrote the teacher's top-{args.k} for {args.sequences} sequences to {path}")

    saved = torch.load(path)
    every = torch.arange(args.vocab).expand(*saved["held_out_logprobs"].shape)

    def held_out_kl(student: torch.nn.Module) -> float:
        # all V ids: the top-k loss is then KL(teacher || student) over the whole vocabulary
        with torch.no_grad():
            kl = hf.distillation_loss(
                student,
                saved["held_out_ids"],
                teacher_topk=(every, saved["held_out_logprobs"]),
                divergence="kl",
            )
        return float(kl)

    student_a = llama(32, 1, args.vocab, args.seed + 1).train()
    student_b = copy.deepcopy(student_a)
    opt_a = torch.optim.AdamW(student_a.parameters(), lr=3e-3)
    opt_b = torch.optim.AdamW(student_b.parameters(), lr=3e-3)
    steps: list[float] = []
    kl_a: list[float] = []
    kl_b: list[float] = []

    def evaluate(step: int) -> None:
        steps.append(step)
        kl_a.append(held_out_kl(student_a))
        kl_b.append(held_out_kl(student_b))
        print(
            f"step {step:4d}  held-out KL(teacher || student), nats/token: "
            f"from the top-{args.k} file {kl_a[-1]:.4f}   from the whole teacher {kl_b[-1]:.4f}"
        )

    evaluate(0)
    order = torch.Generator().manual_seed(args.seed + 3)
    for step in range(1, args.steps + 1):
        rows = torch.randint(0, args.sequences, (16,), generator=order)
        ids = saved["input_ids"][rows]
        top = (saved["topk_ids"][rows], saved["topk_logprobs"][rows])
        loss_a = hf.distillation_loss(
            student_a, ids, teacher_topk=top, divergence="kl", topk=args.topk
        )
        opt_a.zero_grad(set_to_none=True)
        loss_a.backward()
        opt_a.step()
        loss_b = hf.distillation_loss(student_b, teacher, ids, divergence="kl")
        opt_b.zero_grad(set_to_none=True)
        loss_b.backward()
        opt_b.step()
        if step % 25 == 0 or step == args.steps:
            evaluate(step)

    result = {"step": steps, "held_out_kl_topk": kl_a, "held_out_kl_full": kl_b}
    (out / "distill_topk.json").write_text(json.dumps(result, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, kl_a, marker="o", ms=3, label=f"from the top-{args.k} file ({args.topk})")
    ax.plot(steps, kl_b, marker="s", ms=3, label="from the whole teacher")
    ax.set_xlabel("step")
    ax.set_ylabel("held-out KL(teacher || student), nats/token")
    ax.set_title("Offline distillation from saved top-k log-probabilities")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "distill_topk.png", dpi=120)
    print(
        f"held-out KL from the top-{args.k} file fell from {kl_a[0]:.4f} to {kl_a[-1]:.4f} "
        f"(whole teacher: {kl_b[-1]:.4f}); wrote {out / 'distill_topk.png'} and "
        f"{out / 'distill_topk.json'}"
    )
    return result


if __name__ == "__main__":
    main()
