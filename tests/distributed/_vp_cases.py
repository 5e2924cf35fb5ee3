"""Shared by the vocab-parallel tests and the worker processes they launch.

The parent test and every worker rebuild the same full-vocabulary inputs from a case's seed; each
worker keeps its rank's shard, runs the vocab-parallel function and saves loss and gradients; the
parent compares them with a float64 ``torch.nn.functional`` reference on the full vocabulary.
"""

from __future__ import annotations

from typing import Any

import torch

Case = dict[str, Any]


def shard_sizes(v: int, world: int) -> list[int]:
    """Uneven contiguous shards (every rank gets at least one class)."""
    sizes = [v // world] * world
    for i in range(v - sum(sizes)):
        sizes[(2 * i + 1) % world] += 1
    # Move one class from the last rank to the first to make the split uneven even when V | world.
    if world > 1 and sizes[-1] > 1:
        sizes[-1] -= 1
        sizes[0] += 1
    return sizes


def _case(cid: str, **kw: Any) -> Case:
    base: Case = {
        "id": cid,
        "path": "ce",
        "dtype": "float64",
        "V": 11,
        "batch": (6,),
        "D": 5,
        "probs": False,
        "weight": False,
        "smoothing": 0.0,
        "z_loss": 0.0,
        "softcap": None,
        "reduction": "mean",
        "ignore_frac": 0.3,
        "ignore_index": -100,
        "bias": False,
        "chunk": None,
        "aux": False,
        "all_ignored": False,
        "mask_inf": False,
        "token_weight": False,
    }
    base.update(kw)
    return base


def good_cases() -> list[Case]:
    """Grid of configurations: logits path and linear path, fp64 and fp32 (a few in bf16)."""
    grid: list[Case] = []
    configs: list[tuple[str, dict[str, Any]]] = [
        ("plain-mean", {}),
        # V=13 prime: shards of different sizes on 2 and 3 ranks.
        ("weight-smooth-mean", {"weight": True, "smoothing": 0.15, "V": 13}),
        ("none-random-upstream", {"reduction": "none", "weight": True, "batch": (7,)}),
        ("sum-softcap-zloss", {"reduction": "sum", "softcap": 2.5, "z_loss": 1e-2}),
        ("mean-zloss-smooth-weight", {"z_loss": 3e-3, "smoothing": 0.2, "weight": True}),
        ("none-softcap-zloss", {"reduction": "none", "softcap": 1.5, "z_loss": 0.1}),
        ("probs-none", {"probs": True, "reduction": "none", "weight": True, "smoothing": 0.1}),
        ("probs-mean-softcap", {"probs": True, "softcap": 3.0, "z_loss": 1e-2}),
        # K-dim inputs: (N, C, d1, d2) logits; (B, T, D) hidden states.
        ("kdim-none", {"batch": (2, 3, 2), "reduction": "none", "smoothing": 0.05}),
        ("kdim-probs-mean", {"batch": (2, 3), "probs": True}),
        ("all-ignored-mean", {"all_ignored": True, "z_loss": 0.1}),
        # ignore_index that is also a valid class id: rows with target 0 are dropped.
        (
            "ignore-class-0",
            {"ignore_index": 0, "ignore_frac": 0.0, "weight": True, "smoothing": 0.1},
        ),
        ("aux", {"aux": True, "z_loss": 0.05, "reduction": "sum"}),
        # A single position with no batch dim: logits (V_r,), target ().
        ("scalar-target", {"batch": (), "ignore_frac": 0.0}),
        # -inf logits (a vocabulary mask): a whole shard of one row, all but the target of another.
        ("masked-neg-inf", {"mask_inf": True, "z_loss": 1e-2}),
        # per-position loss weights (signed, as RL advantages), with class weights and z-loss
        ("token-weight-mean", {"token_weight": True, "weight": True, "z_loss": 1e-2}),
        ("token-weight-none", {"token_weight": True, "reduction": "none"}),
        ("token-weight-probs-sum", {"token_weight": True, "probs": True, "reduction": "sum"}),
    ]
    # bfloat16: a few configurations, fp32 math inside, gradients rounded to bf16 at the end.
    low = ("weight-smooth-mean", "none-softcap-zloss", "probs-none", "kdim-none")
    for dtype in ("float64", "float32", "bfloat16"):
        for name, kw in configs:
            if dtype == "bfloat16" and name not in low:
                continue
            for path in ("ce", "lce"):
                if path == "lce" and name == "masked-neg-inf":
                    continue  # logits path only: hidden states cannot produce -inf logits
                extra: dict[str, Any] = {}
                if path == "lce":
                    # Bias and tiny chunks exercise the chunked linear path.
                    extra = {
                        "bias": name in ("plain-mean", "none-random-upstream", "probs-none"),
                        "chunk": 2 if name != "plain-mean" else None,
                    }
                grid.append(_case(f"{path}-{name}-{dtype}", path=path, dtype=dtype, **kw, **extra))
    return grid


def full_inputs(case: Case, seed: int) -> dict[str, Any]:
    """The full-vocabulary inputs of a case, in float64, built the same way in every process."""
    g = torch.Generator().manual_seed(seed)
    v, batch, d = case["V"], tuple(case["batch"]), case["D"]
    f64 = torch.float64
    out: dict[str, Any] = {}
    if case["path"] == "ce":
        # torch layout: class dim 1, or (V,) for a single position.
        lshape = (v,) if batch == () else (batch[0], v, *batch[1:])
        out["logits"] = 2.0 * torch.randn(lshape, generator=g, dtype=f64)
        if case["mask_inf"]:
            out["logits"][0, :5] = -torch.inf
            out["logits"][1, :] = -torch.inf
            out["logits"][1, 2] = 0.0
    else:
        out["x"] = torch.randn((*batch, d), generator=g, dtype=f64)
        out["W"] = torch.randn((v, d), generator=g, dtype=f64)
        out["b"] = torch.randn((v,), generator=g, dtype=f64) if case["bias"] else None
    if case["probs"]:
        raw = torch.randn((*batch, v), generator=g, dtype=f64).softmax(-1)
        out["target"] = raw.movedim(-1, 1) if case["path"] == "ce" and len(batch) >= 1 else raw
    else:
        y = torch.randint(0, v, batch, generator=g)
        drop = torch.rand(batch, generator=g, dtype=f64) < case["ignore_frac"]
        if case["all_ignored"]:
            drop = torch.ones(batch, dtype=torch.bool)
        out["target"] = torch.where(drop, case["ignore_index"], y)
        if case["mask_inf"]:
            out["target"][0], out["target"][1] = v - 1, 2
    out["weight"] = torch.rand((v,), generator=g, dtype=f64) + 0.25 if case["weight"] else None
    out["token_weight"] = (
        torch.randn(batch, generator=g, dtype=f64) + 0.5 if case["token_weight"] else None
    )
    shape = () if case["reduction"] != "none" else batch
    out["upstream"] = torch.randn(shape, generator=g, dtype=f64)
    return out


def class_dim(case: Case) -> int:
    """Dim of the vocabulary in each tensor of the case (logits, probs targets)."""
    if case["path"] == "ce":
        return 0 if tuple(case["batch"]) == () else 1
    return -1


def shard(t: torch.Tensor | None, dim: int, offset: int, size: int) -> torch.Tensor | None:
    return None if t is None else t.narrow(dim, offset, size)


def dp_model() -> torch.nn.Linear:
    """A small classifier, identical in every process (float64)."""
    torch.manual_seed(1234)
    return torch.nn.Linear(4, 6).double()


def dp_batches(world: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One batch per rank with very uneven padding (ignore_index=-100)."""
    g = torch.Generator().manual_seed(99)
    batches = []
    for r in range(world):
        n = 5 + 3 * r
        x = torch.randn(n, 4, generator=g, dtype=torch.float64)
        y = torch.randint(0, 6, (n,), generator=g)
        pad = 4 if r == 0 else 1  # rank 0 is mostly padding
        y[:pad] = -100
        batches.append((x, y))
    return batches
