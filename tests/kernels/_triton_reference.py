"""Float64 references for the Triton kernel tests (torch.nn.functional where it is defined)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# Relative L2 error allowed for gradients, and absolute error for per-row ce/lse, per input dtype.
# Losses are computed in fp32 from the (rounded) inputs, so they stay tight for every dtype;
# gradients come back rounded to the input dtype. The interpreter rounds fp32 -> bf16 toward zero
# where GPUs round to nearest, so bf16 gradient errors on CPU are about twice a GPU's.
GRAD_RTOL = {torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.2e-2}
LOSS_ATOL = {torch.float32: 2e-5, torch.float16: 5e-5, torch.bfloat16: 5e-5}


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def ref_rows(
    z: Tensor,
    target: Tensor,
    *,
    weight: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    softcap: float | None,
) -> tuple[Tensor, Tensor]:
    """(ce_rows, lse_rows) in float64 from float64 logits ``z`` (differentiable)."""
    z = z.double()
    w = weight.double() if weight is not None else None
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    lse = torch.logsumexp(z, 1)
    if target.is_floating_point():
        v = z.shape[1]
        tt = (1 - label_smoothing) * target.double() + label_smoothing / v
        a = tt * w if w is not None else tt
        logp = torch.log_softmax(z, 1)
        # F.cross_entropy multiplies 0 * (-inf) into NaN where a class is masked and the target
        # has no mass there; the loss is then 0 by definition (0 log 0 = 0).
        ce = -torch.where(a != 0, a * logp, torch.zeros_like(logp)).sum(1)
        if torch.isfinite(z).all():
            torch.testing.assert_close(
                ce,
                F.cross_entropy(
                    z, target.double(), weight=w, reduction="none", label_smoothing=label_smoothing
                ),
            )
        return ce, lse
    ce = F.cross_entropy(
        z,
        target.long(),
        weight=w,
        ignore_index=ignore_index,
        reduction="none",
        label_smoothing=label_smoothing,
    )
    return ce, lse


def rel_err(ours: Tensor, ref: Tensor) -> float:
    ours64, ref64 = ours.double(), ref.double()
    return float((ours64 - ref64).norm() / ref64.norm().clamp_min(1e-30))


def realistic_targets(logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Class ids sampled from the model's own softmax (not uniform: see ANCHORS.md)."""
    probs = torch.softmax(logits.double(), 1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)
