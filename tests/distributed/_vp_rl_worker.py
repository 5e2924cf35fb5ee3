"""Worker for test_vp_rl.py: vocab-parallel linear_logprobs and linear_distillation_loss on one rank.

Usage: ``_vp_rl_worker.py RANK WORLD STORE OUT``. Every rank builds the same full inputs from a
seed, keeps its contiguous shard of the vocabulary (uneven shards), runs every case and saves its
outputs and gradients; the test compares them with one process on the whole vocabulary.
"""

from __future__ import annotations

import sys
import traceback
from typing import Any

import torch
import torch.distributed as dist
from _vp_cases import shard_sizes

from crossentropy.torch import linear_distillation_loss, linear_logprobs

V, N, DS, DT = 37, 10, 6, 5


def full(seed: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = {
        "h": torch.randn(N, DS, generator=g),
        "w": torch.randn(V, DS, generator=g) * 0.8,
        "b": torch.randn(V, generator=g),
        "ht": torch.randn(N, DT, generator=g),
        "wt": torch.randn(V, DT, generator=g) * 0.8,
        "bt": torch.randn(V, generator=g),
        "temp": torch.rand(N, generator=g) + 0.5,
        "up": torch.randn(N, generator=g),
        "up2": torch.randn(N, generator=g),
    }
    t = {k: v.to(dtype) for k, v in t.items()}
    y = torch.randint(0, V, (N,), generator=g)
    y[3] = -100
    t["y"] = y
    return t


CASES: dict[str, dict[str, Any]] = {
    "logprobs": {"kind": "logprobs", "kw": {"temperature": 0.7, "softcap": 4.0}},
    "logprobs-entropy-per-token-T": {
        "kind": "logprobs",
        "entropy": True,
        "kw": {"logit_scale": 0.5},
    },
    "distill-kl-mean": {"kind": "distill", "kw": {"divergence": "kl", "temperature": 2.0}},
    "distill-jsd-none-hard": {
        "kind": "distill",
        "kw": {"divergence": "jsd", "beta": 0.3, "reduction": "none", "hard_weight": 0.5},
    },
    "distill-rkl-teacher-grad": {
        "kind": "distill",
        "kw": {"divergence": "reverse_kl", "teacher_requires_grad": True, "student_softcap": 3.0},
    },
    "distill-ce-sum-bias": {
        "kind": "distill",
        "bias": True,
        "kw": {"divergence": "cross_entropy", "reduction": "sum"},
    },
}


def run_case(name: str, case: dict[str, Any], group: Any, dtype: torch.dtype) -> dict[str, Any]:
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    sizes = shard_sizes(V, world)
    off, size = sum(sizes[:rank]), sizes[rank]
    t = full(len(name), dtype)
    sl = slice(off, off + size)

    def leaf(x: torch.Tensor) -> torch.Tensor:
        return x.clone().requires_grad_(True)

    h, w = leaf(t["h"]), leaf(t["w"][sl])
    leaves = {"h": h, "w": w}
    if case["kind"] == "logprobs":
        kw = dict(case["kw"])
        if case.get("entropy"):
            kw["temperature"] = t["temp"]
        b = leaf(t["b"][sl])
        leaves["b"] = b
        out = linear_logprobs(
            h,
            w,
            t["y"],
            linear_bias=b,
            return_entropy=bool(case.get("entropy")),
            process_group=group,
            chunk_size=4,
            **kw,
        )
        if case.get("entropy"):
            obj = (out.logprobs * t["up"]).sum() + (out.entropy * t["up2"]).sum()
            values = [out.logprobs.detach(), out.entropy.detach()]
        else:
            obj = (out * t["up"]).sum()
            values = [out.detach()]
    else:
        kw = dict(case["kw"])
        ht, wt = leaf(t["ht"]), leaf(t["wt"][sl])
        leaves.update({"ht": ht, "wt": wt})
        if case.get("bias"):
            leaves["b"], leaves["bt"] = leaf(t["b"][sl]), leaf(t["bt"][sl])
            kw.update(student_linear_bias=leaves["b"], teacher_linear_bias=leaves["bt"])
        out = linear_distillation_loss(
            h, w, ht, wt, target=t["y"], process_group=group, chunk_size=3, **kw
        )
        obj = (out * t["up"]).sum() if out.dim() else out * 1.3
        values = [out.detach()]
    obj.backward()
    grads = {k: (v.grad.clone() if v.grad is not None else None) for k, v in leaves.items()}
    return {"values": values, "grads": grads, "offset": off, "size": size}


def run_all(group: Any) -> dict[str, Any]:
    res: dict[str, Any] = {"cases": {}, "errors": {}}
    for dtype in (torch.float64, torch.float32):
        for name, case in CASES.items():
            key = f"{name}-{str(dtype)[6:]}"
            try:
                res["cases"][key] = run_case(name, case, group, dtype)
            except Exception:
                res["errors"][key] = traceback.format_exc()
    # a top-k request with a process group is refused on every rank, without a hang
    try:
        linear_logprobs(
            torch.randn(2, DS),
            torch.randn(5, DS),
            torch.tensor([0, 1]),
            top_k=3,
            process_group=group,
        )
        res["topk"] = "no error"
    except ValueError as exc:
        res["topk"] = str(exc)
    return res


def main() -> None:
    rank, world, store, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store, world), rank=rank, world_size=world)
    sub = dist.new_group(list(range(world))[-2:])
    results = {world: run_all(dist.group.WORLD)}
    if rank >= world - 2:
        results[2] = run_all(sub)
    dist.barrier()
    torch.save(results, out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
