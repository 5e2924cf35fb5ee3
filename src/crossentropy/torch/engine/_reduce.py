"""Reductions of per-row cross-entropy in plain torch, shared by every implementation.

Normalisation (same as ``torch.nn.functional.cross_entropy``):

* class-index targets, ``mean``: sum of ce over counted rows divided by the sum of ``weight[target]``
  over counted rows (the number of counted rows without ``weight``);
* probability targets, ``mean``: divided by the number of rows (``ignore_index`` does not apply);
* ``sum``: plain sum; ``none``: one value per position.

The z-loss term is ``z_loss * lse**2`` per counted position, reduced by counts: ``mean`` divides its
sum by the number of counted positions (never by the weight sum), ``sum`` sums it, ``none`` adds it
to each position's loss (0 at ignored positions). One difference from torch: when nothing is counted
(all rows ignored, or a zero weight sum) ``mean`` returns 0 with zero gradients instead of NaN.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "Counts",
    "CrossEntropyAux",
    "LogProbs",
    "count_rows",
    "reduce_rows",
    "row_coefficients",
]


class CrossEntropyAux(NamedTuple):
    """Loss with the extras a training loop logs, returned when ``return_aux=True``.

    Attributes:
        loss: the reduced loss (z-loss included), as returned without ``return_aux``.
        lse: logsumexp of each position's (soft-capped) logits, shape of the unreduced loss.
        z_loss: the z-loss term included in ``loss`` (reduced like ``loss``).
        n_valid: number of counted (non-ignored) positions, int64 scalar tensor.
    """

    loss: Tensor
    lse: Tensor
    z_loss: Tensor
    n_valid: Tensor


class LogProbs(NamedTuple):
    """Returned by :func:`~crossentropy.torch.linear_logprobs` with ``return_entropy=True``.

    Attributes:
        logprobs: log p(target) per position, float32 (float64 for float64 inputs), <= 0.
        entropy: the entropy of each position's distribution, in nats, >= 0.
    """

    logprobs: Tensor
    entropy: Tensor


class Counts(NamedTuple):
    valid: Tensor  # (N,) bool: rows that count (not ignore_index)
    denom: Tensor  # scalar: divisor of the ce sum for ``mean`` (0 replaced by 1)
    n_valid: Tensor  # int64 scalar: number of counted rows
    n_safe: Tensor  # scalar: n_valid as a float, 0 replaced by 1
    token_weight: Tensor | None = None  # (N,) per-row loss weights, in the counts' dtype


def count_rows(
    target: Tensor,
    *,
    weight: Tensor | None,
    ignore_index: int,
    dtype: torch.dtype,
    token_weight: Tensor | None = None,
) -> Counts:
    """Counted rows and the ``mean`` divisors for (N,) class ids or (N, V) probabilities.

    ``mean`` divides by the sum over counted rows of each row's weight: ``weight[target]`` (class
    weights, class ids only, as torch) times ``token_weight`` (per-row weights), 1 where absent.
    """
    n = target.shape[0]
    tw = token_weight.to(dtype) if token_weight is not None else None
    if target.is_floating_point():
        valid = torch.ones(n, dtype=torch.bool, device=target.device)
        n_valid = torch.tensor(n, dtype=torch.int64, device=target.device)
        count = torch.tensor(float(max(n, 1)), dtype=dtype, device=target.device)
        if tw is None:
            return Counts(valid, count, n_valid, count)
        denom = tw.sum()
    else:
        valid = target != ignore_index
        n_valid = valid.sum()
        count = n_valid.to(dtype)
        if weight is None:
            row_w = tw
        else:
            w_t = weight.to(dtype)[torch.where(valid, target, 0).long()]
            row_w = w_t if tw is None else w_t * tw
        denom = count if row_w is None else torch.where(valid, row_w, 0.0).sum()
    one = torch.ones((), dtype=dtype, device=target.device)
    return Counts(
        valid,
        torch.where(denom != 0, denom, one),
        n_valid,
        torch.where(count > 0, count, one),
        tw,
    )


def row_coefficients(
    counts: Counts, *, reduction: str, z_loss: float, dtype: torch.dtype
) -> tuple[Tensor, Tensor | None]:
    """(coef, zcoef) with loss = sum_i coef_i ce_i + zcoef_i lse_i^2 for ``mean`` and ``sum``."""
    n = counts.valid.shape[0]
    device = counts.valid.device
    if reduction == "mean":
        coef = (1.0 / counts.denom).to(dtype).expand(n)
    elif reduction == "sum":
        coef = torch.ones((), dtype=dtype, device=device).expand(n)
    else:
        raise ValueError(f"row_coefficients: reduction must be 'mean' or 'sum'; got {reduction!r}")
    if counts.token_weight is not None:
        # the per-row weights enter the fused pass's coefficients (ignored rows: ce is 0 there)
        coef = coef * torch.where(counts.valid, counts.token_weight.to(dtype), 0.0)
    if z_loss == 0.0:
        return coef, None
    zcoef = counts.valid.to(dtype) * z_loss
    if reduction == "mean":
        zcoef = zcoef / counts.n_safe.to(dtype)
    return coef, zcoef


def _z_rows(lse_rows: Tensor, valid: Tensor) -> Tensor:
    # where (not multiply): an ignored row's lse may be inf and must not turn into NaN
    return torch.where(valid, lse_rows.square(), 0.0)


def reduce_rows(
    ce_rows: Tensor,
    lse_rows: Tensor,
    target: Tensor,
    *,
    weight: Tensor | None,
    ignore_index: int,
    reduction: str,
    z_loss: float,
    return_aux: bool,
    out_shape: tuple[int, ...],
    counts: Counts | None = None,
) -> Tensor | CrossEntropyAux:
    """Reduce per-row (ce, lse) to the loss (and aux) with autograd through plain torch ops.

    Args:
        ce_rows, lse_rows: (N,) per-row cross-entropy and logsumexp.
        target: the flattened (N,) class ids or (N, V) probabilities the rows were computed with.
        weight, ignore_index: as given to the loss (for the ``mean`` divisor and counted rows).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        z_loss: coefficient of ``lse**2`` per counted position.
        return_aux: return a :class:`CrossEntropyAux` instead of the loss.
        out_shape: shape of the ``"none"`` output (the target's positions).
        counts: precomputed :func:`count_rows` (vocab-parallel passes its own), else computed here.
    """
    dtype = ce_rows.dtype
    if counts is None:
        counts = count_rows(target, weight=weight, ignore_index=ignore_index, dtype=dtype)
    z_rows = _z_rows(lse_rows, counts.valid) if z_loss != 0.0 else None
    if counts.token_weight is not None:
        # the cross-entropy of each row, weighted (the z-loss is a regulariser of every counted
        # row, never weighted: a negative weight must not push the logsumexp up)
        ce_rows = ce_rows * torch.where(counts.valid, counts.token_weight.to(dtype), 0.0)
    if reduction == "none":
        z_term = (z_loss * z_rows if z_rows is not None else torch.zeros_like(ce_rows)).reshape(
            out_shape
        )
        loss = ce_rows.reshape(out_shape)
        if z_rows is not None:
            loss = loss + z_term
    else:
        loss = ce_rows.sum()
        z_sum = z_rows.sum() if z_rows is not None else None
        if reduction == "mean":
            loss = loss / counts.denom
            if z_sum is not None:
                z_sum = z_sum / counts.n_safe
        if z_sum is not None:
            z_term = z_loss * z_sum
            loss = loss + z_term
        else:
            z_term = torch.zeros((), dtype=dtype, device=ce_rows.device)
    if not return_aux:
        return loss
    return CrossEntropyAux(loss, lse_rows.reshape(out_shape), z_term, counts.n_valid)
