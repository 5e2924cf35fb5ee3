"""A prepared call, run on the engine its plan names, then reduced.

The public functions build one :class:`PreparedCall` (checked arguments, flattened tensors, the
row math's options and the precision); :func:`~crossentropy.torch.engine._dispatch.plan` picks
the engine; :func:`run` runs it; :func:`reduce` turns per-row outputs into what the caller gets::

    PreparedCall --plan--> Plan --run--> Result --reduce--> loss | CrossEntropyAux | LogProbs

A scalar loss whose upstream gradient is known in the forward pass (``mean``/``sum``) comes out of
:func:`run` already reduced (the fused engines form its gradients block by block with the row
coefficients of ``_reduce``); per-row outputs are reduced by :func:`reduce` with plain torch ops.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from crossentropy.torch.engine import _ops
from crossentropy.torch.engine._checks import check_target_values
from crossentropy.torch.engine._dispatch import Plan
from crossentropy.torch.engine._gemm import Precision
from crossentropy.torch.engine._reduce import (
    Counts,
    LogProbs,
    count_rows,
    reduce_rows,
    row_coefficients,
)

__all__ = [
    "PreparedCall",
    "Result",
    "reduce",
    "run",
]


@dataclass
class PreparedCall:
    """Everything a checked call carries to the later stages (built once, by the public function).

    Attributes:
        fn: the function's name, for messages.
        math: the row math: ``"ce"``, ``"logprob"``, ``"distill"`` or ``"topk_distill"``.
        kind: ``"linear"`` (hidden states and a head) or ``"logits"`` (given logits).
        slots: the custom ops' tensors by slot name (``_ops.SLOTS``): flattened to rows.
        params: the row math's options (the ops' spec).
        prec: GEMM operand, compute and d(logits) dtypes.
        reduction: ``"mean"``, ``"sum"``, ``"none"`` or (distillation) ``"batchmean"``.
        out_shape: the positions' shape (the ``"none"`` output's).
        vocab: classes per row for sizing blocks (in vocab parallel, the largest shard's).
        blocks: (rows, V) buffers a block of the row math holds at once.
        impl, memory, chunk_size: as the caller gave them (checked).
        dtypes_ok, triton_rows_ok, native_ok, composable: why an engine cannot run this call
            (None when it can); see ``plan``.
        id_range: check that the target's class ids lie in ``[0, id_range)`` before running (None:
            no check here, e.g. probability targets, or vocab parallel, whose agreement checks
            them across ranks).
        weight, z_loss, return_aux: cross-entropy's class weights and reduction extras.
        token_weight: (N,) per-row loss weights (cross-entropy, distillation), or None.
        native: the caller's own ``(input, target)``, for ``F.cross_entropy`` itself.
        entropy: log-probabilities: the entropy is a second output.
        valid, batch: distillation: counted rows (None: all) and the batch size (``batchmean``).
        group, counts: vocab parallel (set by ``parallel._vocab.agree``): the process group and
            the ``mean`` divisors of the whole vocabulary.
    """

    fn: str
    math: str
    kind: str
    slots: dict[str, Tensor | None]
    params: dict[str, Any]
    prec: Precision
    reduction: str
    out_shape: tuple[int, ...]
    vocab: int
    blocks: int
    impl: str = "auto"
    memory: str | int = "auto"
    chunk_size: int | None = None
    dtypes_ok: str | None = None
    triton_rows_ok: str | None = None
    native_ok: str | None = "not given logits"
    composable: str | None = None
    id_range: int | None = None
    weight: Tensor | None = None
    z_loss: float = 0.0
    return_aux: bool = False
    token_weight: Tensor | None = None
    native: tuple[Tensor, Tensor] | None = None
    entropy: bool = False
    valid: Tensor | None = None
    batch: int = 1
    group: Any = None
    counts: Counts | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # every slot present (None where unused), so later stages index them freely
        self.slots = {**dict.fromkeys(_ops.SLOTS), **self.slots}

    @property
    def target(self) -> Tensor | None:
        return self.slots.get("target")

    @property
    def scalar(self) -> bool:
        """A scalar loss whose gradients may be formed in the forward pass."""
        if self.math == "logprob":
            return False
        return self.reduction != "none" and not self.return_aux


@dataclass
class Result:
    """What an engine gave: the reduced loss (fused or ``F.cross_entropy``) or per-row outputs."""

    loss: Tensor | None = None
    rows: list[Tensor] | None = None


def _spec(call: PreparedCall, plan: Plan) -> _ops.Call:
    group = call.group.group_name if call.group is not None else ""
    return _ops.Call(
        call.math,
        tuple(sorted(call.params.items())),
        call.prec,
        plan.chunk or 1,
        rows=plan.rows,
        group=group,
    )


def run(call: PreparedCall, plan: Plan) -> Result:
    """Run ``call`` on the engine ``plan`` names."""
    if plan.engine == "native":
        return Result(loss=_native_cross_entropy(call))
    target = call.target
    if call.id_range is not None and target is not None:
        check_target_values(call.fn, target, call.id_range, int(call.params["ignore_index"]))
    spec = _spec(call, plan)
    t = call.slots
    if plan.engine == "plain":
        return Result(rows=_ops.reference_outputs(spec, t))
    if plan.engine == "triton-softmax":
        x = t["x"]
        assert x is not None and target is not None
        ce, lse = _ops.call_triton_ce(spec, x, None, None, target, t["cweight"])
        return Result(rows=[ce, lse])
    if plan.engine == "triton-lowmem":
        x, w, b = t["x"], t["w"], t["b"]
        assert x is not None and w is not None and target is not None
        # under autocast the kernel reads the operands cast to the autocast dtype (as F.linear);
        # the casts are ordinary autograd ops, so each gradient returns in its input's dtype
        op = call.prec.operand
        bo = b.to(op) if b is not None else None
        ce, lse = _ops.call_triton_ce(spec, x.to(op), w.to(op), bo, target, t["cweight"])
        return Result(rows=[ce, lse])
    if plan.mode == "rows" or not call.scalar:
        return Result(rows=_ops.call_rows(spec, t))
    lin, quad = _coefficients(call)
    loss, _ = _ops.call_fused(spec, t, lin, quad)
    return Result(loss=loss)


def _counts(call: PreparedCall, dtype: torch.dtype) -> Counts:
    if call.counts is not None:
        return call.counts
    target = call.target
    assert target is not None
    return count_rows(
        target,
        weight=call.weight,
        ignore_index=int(call.params["ignore_index"]),
        dtype=dtype,
        token_weight=call.token_weight,
    )


def _distill_coefficients(call: PreparedCall, dtype: torch.dtype, n: int) -> Tensor:
    """Per-row weights of a distillation loss: sum, mean over counted rows (or over their token
    weights), or / batch size; times each row's token weight."""
    x = call.slots["x"]
    assert x is not None
    device = x.device
    tw = call.token_weight.to(dtype) if call.token_weight is not None else None
    if call.reduction == "sum":
        coef = torch.ones(1, n, dtype=dtype, device=device)
    elif call.reduction == "batchmean":
        coef = torch.full((1, n), 1.0 / max(call.batch, 1), dtype=dtype, device=device)
    elif call.valid is None and tw is None:
        coef = torch.full((1, n), 1.0 / max(n, 1), dtype=dtype, device=device)
    else:
        valid = (
            call.valid if call.valid is not None else torch.ones(n, dtype=torch.bool, device=device)
        )
        total = torch.where(valid, tw, 0.0).sum() if tw is not None else valid.sum().to(dtype)
        coef = (1.0 / torch.where(total != 0, total, 1.0)).expand(1, n)
    return coef * tw if tw is not None else coef


def _coefficients(call: PreparedCall) -> tuple[Tensor, Tensor | None]:
    """(lin, quad) of the fused scalar loss: sum_k sum_i lin_ki out_ki + quad_ki out_ki^2."""
    comp = call.prec.compute
    x = call.slots["x"]
    assert x is not None
    if call.math in ("distill", "topk_distill"):
        return _distill_coefficients(call, comp, x.shape[0]), None
    counts = _counts(call, comp)
    coef, zcoef = row_coefficients(counts, reduction=call.reduction, z_loss=call.z_loss, dtype=comp)
    zeros = torch.zeros_like(coef)
    lin = torch.stack([coef, zeros])
    quad = torch.stack([zeros, zcoef]) if zcoef is not None else None
    return lin, quad


def reduce(call: PreparedCall, result: Result) -> Any:
    """The caller's value from an engine's result."""
    if result.loss is not None:
        return result.loss
    outs = result.rows
    assert outs is not None
    if call.math == "ce":
        target = call.target
        assert target is not None
        ce, lse = outs
        return reduce_rows(
            ce,
            lse,
            target,
            weight=None,
            ignore_index=int(call.params["ignore_index"]),
            reduction=call.reduction,
            z_loss=call.z_loss,
            return_aux=call.return_aux,
            out_shape=call.out_shape,
            counts=_counts(call, ce.dtype),
        )
    if call.math == "logprob":
        shaped = [o.reshape(call.out_shape) for o in outs]
        return LogProbs(shaped[0], shaped[1]) if call.entropy else shaped[0]
    (rows,) = outs
    if call.reduction == "none":
        if call.token_weight is not None:
            rows = rows * call.token_weight.to(rows.dtype)
        return rows.reshape(call.out_shape)
    return (rows * _distill_coefficients(call, rows.dtype, rows.shape[0])[0]).sum()


def _native_cross_entropy(call: PreparedCall) -> Tensor:
    """``F.cross_entropy`` itself, with one difference: an all-ignored (or zero-weight) ``mean``
    gives 0, with zero gradients, instead of NaN."""
    assert call.native is not None
    input, target = call.native
    ignore = int(call.params["ignore_index"])
    mean_of_ids = call.reduction == "mean" and not target.is_floating_point()
    reduction = "sum" if mean_of_ids else call.reduction
    try:
        loss = F.cross_entropy(
            input,
            target,
            weight=call.weight,
            ignore_index=ignore,
            reduction=reduction,
            label_smoothing=float(call.params["label_smoothing"]),
        )
    except (IndexError, RuntimeError):
        if not target.is_floating_point():
            # name the bad class id as the other paths do (torch's message varies by device)
            flat = call.target
            assert flat is not None
            check_target_values(call.fn, flat, int(call.params["num_classes"]), ignore)
        raise
    if not mean_of_ids:
        return loss
    flat = call.target
    assert flat is not None
    counts = count_rows(flat, weight=call.weight, ignore_index=ignore, dtype=loss.dtype)
    # + 0.0: torch's sum over only ignored rows is -0.0; an empty mean is +0
    return loss / counts.denom + 0.0
