"""Shared by the sharded-weight tests (FSDP2, TP, SP, DDP) and the worker processes they launch.

Every process rebuilds the same inputs from seeds: the workers keep their rank's part, the parent
test computes float64 references on the whole batch with plain ``torch.nn.functional`` ops.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

V, D = 11, 6  # 11 classes: uneven shards on 2 ranks (6, 5) and on 3 (4, 4, 3)
IGNORE = -100

# Options of linear_cross_entropy exercised on each sharded path; "probs" means probability
# targets, "bias" a DTensor bias split like the weight, "cweight" class weights.
OPTIONS: dict[str, dict[str, Any]] = {
    "mean": {},
    "sum-smooth-zloss": {"reduction": "sum", "label_smoothing": 0.1, "z_loss": 1e-2},
    "none-softcap-bias": {"reduction": "none", "softcap": 2.0, "bias": True},
    "mean-cweight-smooth": {"cweight": True, "label_smoothing": 0.05, "chunk_size": 2},
    "probs-mean": {"probs": True, "z_loss": 1e-3},
}
DTYPES = ("float64", "float32")
# (loss, gradients) tolerances per dtype: the targets
TOL = {"float64": 1e-10, "float32": 1e-5}


def inputs(seed: int, ranks: int, rows: int = 7) -> dict[str, Any]:
    """Float64 inputs of ``ranks`` ranks (each its own rows), with ragged padding per rank."""
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    x = [torch.randn(rows + r % 2, D, generator=g, dtype=f64) for r in range(ranks)]
    y = []
    for r in range(ranks):
        t = torch.randint(0, V, (x[r].shape[0],), generator=g)
        t[: r + 1] = IGNORE  # uneven padding: rank r has r + 1 ignored rows
        y.append(t)
    probs = [torch.randn(t.shape[0], V, generator=g, dtype=f64).softmax(-1) for t in x]
    return {
        "x": x,
        "y": y,
        "probs": probs,
        "W": torch.randn(V, D, generator=g, dtype=f64),
        "b": torch.randn(V, generator=g, dtype=f64),
        "cweight": torch.rand(V, generator=g, dtype=f64) + 0.5,
        "up": [torch.randn(t.shape[0], generator=g, dtype=f64) for t in x],
    }


def call_kwargs(opt: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of linear_cross_entropy an option stands for (no tensors)."""
    skip = ("bias", "cweight", "probs")
    return {k: v for k, v in opt.items() if k not in skip}


def reference_rows(
    x: torch.Tensor,
    W: torch.Tensor,
    target: torch.Tensor,
    opt: dict[str, Any],
    b: torch.Tensor | None,
    cweight: torch.Tensor | None,
) -> torch.Tensor:
    """The loss of one rank's rows with plain torch ops (float64 in, differentiable)."""
    z = x @ W.T + (b if b is not None else 0.0)
    if opt.get("softcap") is not None:
        z = opt["softcap"] * torch.tanh(z / opt["softcap"])
    reduction = opt.get("reduction", "mean")
    ce = F.cross_entropy(
        z,
        target,
        weight=cweight,
        ignore_index=IGNORE,
        reduction=reduction,
        label_smoothing=opt.get("label_smoothing", 0.0),
    )
    zl = opt.get("z_loss", 0.0)
    if zl:
        lse = torch.logsumexp(z, 1)
        valid = (
            torch.ones_like(lse, dtype=torch.bool)
            if target.is_floating_point()
            else target != IGNORE
        )
        rows = zl * torch.where(valid, lse, 0.0) ** 2
        if reduction == "none":
            ce = ce + rows
        elif reduction == "sum":
            ce = ce + rows.sum()
        else:
            ce = ce + rows.sum() / valid.sum().clamp(min=1)
    return ce


class TinyLM(nn.Module):
    """Embedding, one tanh layer, an LM head ``(V, D)``; optionally tied to the embedding.

    ``forward(ids, target)`` computes the loss inside the forward (as Hugging Face models do);
    ``hidden(ids)`` gives the final hidden states for a loss computed outside it.
    """

    def __init__(self, bias: bool = False, tied: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(V, D)
        self.body = nn.Linear(D, D)
        self.head = nn.Linear(D, V, bias=bias)
        if tied:
            self.head.weight = self.embed.weight

    def hidden(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.body(self.embed(ids)))

    def forward(self, ids: torch.Tensor, target: torch.Tensor | None = None, **kw: Any) -> Any:
        from crossentropy.torch import linear_cross_entropy

        h = self.hidden(ids)
        if target is None:
            return h
        return linear_cross_entropy(h, self.head.weight, target, linear_bias=self.head.bias, **kw)


def tiny_lm(dtype: str, bias: bool = False, tied: bool = False) -> TinyLM:
    torch.manual_seed(1234)
    return TinyLM(bias=bias, tied=tied).to(getattr(torch, dtype))


def lm_batches(seed: int, ranks: int, length: int = 6) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Token ids and (already shifted) targets per rank, with uneven padding."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for r in range(ranks):
        ids = torch.randint(0, V, (2, length + r), generator=g)
        y = torch.randint(0, V, ids.shape, generator=g)
        y[0, : 2 * r + 1] = IGNORE
        out.append((ids, y))
    return out


def lm_reference(
    dtype: str,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    bias: bool = False,
    tied: bool = False,
    label_smoothing: float = 0.0,
) -> dict[str, Any]:
    """One process on the whole batch (float64): the mean loss and every parameter's gradient."""
    model = tiny_lm("float64", bias=bias, tied=tied)
    if dtype != "float64":  # the same rounded start as the workers
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.to(getattr(torch, dtype)).double())
    h = torch.cat([model.hidden(ids).reshape(-1, D) for ids, _ in batches])
    y = torch.cat([t.reshape(-1) for _, t in batches])
    z = h @ model.head.weight.T + (model.head.bias if bias else 0.0)
    loss = F.cross_entropy(z, y, ignore_index=IGNORE, label_smoothing=label_smoothing)
    loss.backward()
    return {
        "loss": loss.detach(),
        "grads": {n: p.grad.clone() for n, p in model.named_parameters()},
    }


def dp_batches(world: int) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Per rank, two micro-batches of (hidden, target) with very uneven padding."""
    g = torch.Generator().manual_seed(99)
    out = []
    for r in range(world):
        micro = []
        for m in range(2):
            n = 4 + 3 * r + m
            x = torch.randn(n, D, generator=g, dtype=torch.float64)
            y = torch.randint(0, V, (n,), generator=g)
            y[: (n - 1 if r == 0 and m == 0 else 1)] = IGNORE  # rank 0's first is mostly padding
            micro.append((x, y))
        out.append(micro)
    return out


def dp_model() -> nn.Linear:
    torch.manual_seed(4321)
    return nn.Linear(D, D).double()


class DPHead(nn.Module):
    """A layer and an LM head whose loss is ``linear_cross_entropy`` with ``reduction="sum"``."""

    def __init__(self) -> None:
        super().__init__()
        self.body = dp_model()
        torch.manual_seed(77)
        self.head = nn.Parameter(torch.randn(V, D, dtype=torch.float64))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from crossentropy.torch import linear_cross_entropy

        return linear_cross_entropy(torch.tanh(self.body(x)), self.head, y, reduction="sum")


def sp_sequence(seed: int = 5, length: int = 13) -> dict[str, torch.Tensor]:
    """One sequence: hidden states (T, D), token ids (T,) and labels (T,), float64."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (length,), generator=g)
    labels = ids.clone()
    # padding away from every slice's first label (slices start at 7 on 2 ranks, 5 and 9 on 3),
    # so that shifting inside a slice really loses a target
    labels[[2, 11]] = IGNORE
    return {
        "h": torch.randn(length, D, generator=g, dtype=torch.float64),
        "labels": labels,
        "W": torch.randn(V, D, generator=g, dtype=torch.float64),
    }


def split_sizes(n: int, parts: int) -> list[int]:
    """Uneven contiguous slices of a sequence (the last rank gets the remainder)."""
    base = [n // parts] * parts
    base[-1] += n - sum(base)
    base[0] += 1
    base[-1] -= 1
    return base
