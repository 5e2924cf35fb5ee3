"""Focal loss and binary cross-entropy with logits, with the torch layer's extras (plain autograd)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from crossentropy.torch import _validation as V
from crossentropy.torch.engine._reduce import count_rows

__all__ = [
    "bce_with_logits",
    "check_focal_args",
    "focal_loss",
]


def _cap(x: Tensor, softcap: float | None) -> Tensor:
    return softcap * torch.tanh(x / softcap) if softcap is not None else x


def _compute(x: Tensor) -> Tensor:
    return x.double() if x.dtype == torch.float64 else x.float()


def check_focal_args(fn: str, gamma: object, alpha: object) -> tuple[float, float | None]:
    """``gamma`` as a float >= 0; a scalar ``alpha`` as a float >= 0 (None for None or a tensor)."""
    g = V._real(fn, "gamma", gamma)
    if not (math.isfinite(g) and g >= 0.0):
        raise ValueError(f"{fn}: gamma must be a finite number >= 0; got {gamma!r}")
    if alpha is None or isinstance(alpha, Tensor):
        return g, None
    a = V._real(fn, "alpha", alpha)
    if not (math.isfinite(a) and a >= 0.0):
        raise ValueError(f"{fn}: alpha must be None, a number >= 0 or a (C,) tensor; got {alpha!r}")
    return g, a


def _focal_terms(logp: Tensor, gamma: float) -> Tensor:
    """``-(1 - p)^gamma log p`` from finite ``log p <= 0``, with a finite gradient everywhere.

    ``1 - p = -expm1(log p)`` keeps its digits when p is near 1. Where it is 0 (p rounds to 1) the
    term and its gradient are 0 (their limits), even for gamma < 1, whose ``pow`` has an infinite
    derivative at 0.
    """
    if gamma == 0.0:
        return -logp
    one_minus_p = (-torch.expm1(logp)).clamp(min=0.0)
    positive = one_minus_p > 0
    focus = torch.where(positive, torch.where(positive, one_minus_p, 1.0).pow(gamma), 0.0)
    return -focus * logp


def focal_loss(
    input: Tensor,
    target: Tensor,
    *,
    gamma: float = 2.0,
    alpha: float | Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> Tensor:
    r"""Softmax focal loss (Lin et al., 2017) with torch's class dim 1; see :class:`FocalLoss`."""
    fn = "FocalLoss"
    V.check_reduction(fn, reduction)
    ignore_index, _, zl, cap = V.check_options(
        fn, ignore_index=ignore_index, label_smoothing=0.0, z_loss=z_loss, softcap=softcap
    )
    g, a = check_focal_args(fn, gamma, alpha)
    logits, rows = V.flatten_logits(fn, input, target)
    num_classes = logits.shape[1]
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    weight: Tensor | None = None
    if isinstance(alpha, Tensor):
        weight = V.check_weight(fn, alpha, num_classes)
    elif a is not None:
        weight = torch.full((num_classes,), a, dtype=dtype, device=logits.device)
    if rows.is_prob:
        V.check_prob_ignore_index(fn, ignore_index)
    else:
        V.check_target_values(fn, rows.target, num_classes, ignore_index)
    s = _cap(_compute(logits), cap)
    lse = torch.logsumexp(s, dim=1)
    logp = s - lse.unsqueeze(1)
    counts = count_rows(rows.target, weight=weight, ignore_index=ignore_index, dtype=dtype)
    # The focal term is formed only where it counts (the target class, or classes with q > 0):
    # elsewhere log p may be -inf (masked logits), and -inf * 0 would poison the gradient.
    if rows.is_prob:
        q = rows.target.to(dtype)
        used = q != 0
        logp_used = torch.where(used, logp, 0.0)
        terms = _focal_terms(logp_used, g)
        if weight is not None:
            terms = terms * weight.to(dtype).unsqueeze(0)
        per_row = torch.where(used, q * terms, 0.0).sum(1)
    else:
        t = torch.where(counts.valid, rows.target, 0).long()
        logp_t = torch.where(counts.valid, logp.gather(1, t.unsqueeze(1)).squeeze(1), 0.0)
        per_row = _focal_terms(logp_t, g)
        if weight is not None:
            per_row = per_row * weight.to(dtype)[t]
        per_row = torch.where(counts.valid, per_row, 0.0)
    z_rows = torch.where(counts.valid, lse.square(), 0.0) if zl != 0.0 else None
    if reduction == "none":
        out = per_row + zl * z_rows if z_rows is not None else per_row
        return out.reshape(rows.out_shape)
    loss = per_row.sum()
    z_sum = z_rows.sum() if z_rows is not None else None
    if reduction == "mean":
        loss = loss / counts.denom
        z_sum = z_sum / counts.n_safe if z_sum is not None else None
    return loss + zl * z_sum if z_sum is not None else loss


def bce_with_logits(
    input: Tensor,
    target: Tensor,
    *,
    weight: Tensor | None = None,
    pos_weight: Tensor | None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    softcap: float | None = None,
    ignore_index: float | None = None,
) -> Tensor:
    r"""Binary cross-entropy with logits plus smoothing, soft-capping and ignored positions."""
    fn = "BCEWithLogitsLoss"
    V.check_reduction(fn, reduction)
    _, eps, _, cap = V.check_options(
        fn, ignore_index=-100, label_smoothing=label_smoothing, z_loss=0.0, softcap=softcap
    )
    if not isinstance(input, Tensor) or not input.is_floating_point():
        raise TypeError(f"{fn}: input must be a floating-point tensor; got {input!r:.60}")
    if not isinstance(target, Tensor) or target.shape != input.shape:
        shape = tuple(target.shape) if isinstance(target, Tensor) else type(target).__name__
        raise ValueError(
            f"{fn}: target must be a tensor with the input's shape {tuple(input.shape)}; got {shape}"
        )
    for name, t in (("weight", weight), ("pos_weight", pos_weight)):
        if t is not None:
            if not isinstance(t, Tensor) or not t.is_floating_point():
                raise TypeError(f"{fn}: {name} must be a floating-point tensor or None")
            try:
                torch.broadcast_shapes(t.shape, input.shape)
            except RuntimeError:
                raise ValueError(
                    f"{fn}: {name} of shape {tuple(t.shape)} does not broadcast against the input "
                    f"{tuple(input.shape)}"
                ) from None
    if ignore_index is not None:
        ignore_index = V._real(fn, "ignore_index", ignore_index)
    x = _cap(_compute(input), cap)
    dtype = x.dtype
    y = target.to(dtype)
    valid = y != ignore_index if ignore_index is not None else None
    if valid is not None:
        y = torch.where(valid, y, 0.0)
    if eps > 0.0:
        y = y * (1.0 - eps) + 0.5 * eps
    # w [(1 - y) x - (1 + (pw - 1) y) log sigmoid(x)], the stable form torch uses
    log_sig = torch.nn.functional.logsigmoid(x)
    if pos_weight is not None:
        coef = 1.0 + (pos_weight.to(dtype) - 1.0) * y
        loss = (1.0 - y) * x - coef * log_sig
    else:
        loss = (1.0 - y) * x - log_sig
    if weight is not None:
        loss = loss * weight.to(dtype)
    if valid is not None:
        loss = torch.where(valid, loss, 0.0)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if valid is None:
        return loss.mean()
    n = valid.sum().to(dtype)
    return loss.sum() / torch.where(n > 0, n, torch.ones_like(n))
