"""Per-row softmax cross-entropy in plain torch: the CPU path and the oracle for the Triton kernels.

Both public functions return ``(ce_rows, lse_rows)`` for 2-D inputs, float32 (float64 for float64
inputs) of shape (N,), differentiable. Reductions, z-loss and aux outputs happen outside (``_reduce``).

Math for one row with logits x (V,), soft-capped logits s = cap * tanh(x / cap) (s = x without cap),
p = softmax(s), lse = logsumexp(s) and per-class target coefficients a_c:

* class id t, smoothing e, class weights w:  a_c = (1 - e) w_t [c = t] + (e / V) w_c
* probabilities q, smoothing e:              a_c = w_c ((1 - e) q_c + e / V)
* ignored rows: a = 0.

ce = sum_c a_c (lse - s_c) = A lse - sum_c a_c s_c with A = sum_c a_c. For upstream gradients
g (of ce) and h (of lse):

    d/ds_c = g (A p_c - a_c) + h p_c = (g A + h) p_c - g a_c
    d/dx_c = d/ds_c * (1 - tanh(x_c / cap)^2)        (softcap chain rule)

``linear_ce_rows`` applies this to logits x = input @ linear_weight.T + linear_bias, one block of rows
at a time, so only a (chunk, V) block of logits ever exists: 1 GEMM per block in the forward pass,
3 in the backward pass (recomputed logits, d input, d weight). ``FusedLinearCE`` (used by
``linear_cross_entropy`` for the scalar reductions, whose upstream gradient is known up to one scalar)
forms the gradients in the forward pass instead: 3 GEMMs per block in all, 6NDV FLOPs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from crossentropy.torch._validation import composable_only

__all__ = [
    "FusedLinearCE",
    "RowSpec",
    "autocast_off",
    "default_chunk_size",
    "first_order_only",
    "linear_ce_rows",
    "plain_linear_loss",
    "plain_logits",
    "reference_rows",
    "softmax_ce_rows",
    "twice_differentiable",
]

# Target size of one (chunk, V) fp32 logits block. Two such blocks live at once (logits and, with a
# softcap, tanh), so the loss-specific memory stays near 2 x this.
_BLOCK_BYTES = 32 * 2**20


def default_chunk_size(num_rows: int, num_classes: int) -> int:
    """Rows per block so that one fp32 (rows, V) block is about 32 MiB (a power of two >= 16)."""
    rows = max(16, _BLOCK_BYTES // (4 * max(num_classes, 1)))
    rows = 1 << (rows.bit_length() - 1)
    return max(1, min(rows, num_rows))


@dataclass(frozen=True)
class RowSpec:
    """Everything about the loss except the tensors that get gradients."""

    weight: Tensor | None  # (V,) in the compute dtype
    ignore_index: int
    label_smoothing: float
    softcap: float | None
    is_prob: bool
    num_classes: int


def row_spec(
    dtype: torch.dtype,
    target: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    softcap: float | None,
    *,
    num_classes: int,
) -> RowSpec:
    """The :class:`RowSpec` of validated arguments, class weights cast to the compute dtype."""
    return RowSpec(
        weight=weight.to(dtype) if weight is not None else None,
        ignore_index=ignore_index,
        label_smoothing=float(label_smoothing),
        softcap=softcap,
        is_prob=target.is_floating_point(),
        num_classes=num_classes,
    )


def _compute_dtype(*tensors: Tensor | None) -> torch.dtype:
    """float64 if any input is float64 (gradcheck), else float32."""
    if any(t is not None and t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32


class _Block:
    """Forward quantities of one block of rows; ``p`` overwrites the logits buffer."""

    __slots__ = ("A", "ce", "coef", "lse", "p", "sumexp", "tanh", "target", "valid")

    def __init__(self) -> None:
        self.ce: Tensor
        self.lse: Tensor
        self.p: Tensor  # exp(s - max): the softmax times sumexp (normalised in _grad_block)
        self.sumexp: Tensor
        self.tanh: Tensor | None
        self.A: Tensor  # row sum of the target coefficients a_c
        self.coef: Tensor | None  # (n, V) target coefficients (probability targets only)
        self.target: Tensor | None  # (n,) class ids clamped to [0, V) (index targets only)
        self.valid: Tensor  # (n,) bool


def _forward_block(z: Tensor, target: Tensor, spec: RowSpec, *, keep_p: bool) -> _Block:
    """Loss quantities for a block of logits ``z`` (n, V) in the compute dtype, owned (overwritten)."""
    out = _Block()
    num_classes = spec.num_classes
    eps = spec.label_smoothing
    w = spec.weight
    if spec.softcap is not None:
        th = z.div_(spec.softcap).tanh_()
        out.tanh = th if keep_p else None
        s = th * spec.softcap
    else:
        out.tanh = None
        s = z
    # shift by the row max first: ce = A log(sumexp) - sum_c a_c (s_c - max) keeps full precision
    # when the logits are large (no lse - s_t cancellation)
    m = s.amax(1)
    m = torch.where(torch.isfinite(m), m, 0.0)
    s = s.sub_(m.unsqueeze(1))
    if spec.is_prob:
        q = target.to(s.dtype)
        if eps > 0.0:
            q = q * (1.0 - eps) + eps / num_classes
        a = q * w if w is not None else q
        out.A = a.sum(1)
        # sum_c a_c s_c, with 0 * (-inf) read as 0 so masked classes with no target mass are fine
        a_s = torch.where(a == 0, 0.0, a * s).sum(1)
        out.coef = a
        out.target = None
        out.valid = torch.ones(s.shape[0], dtype=torch.bool, device=s.device)
    else:
        valid = target != spec.ignore_index
        t = torch.where(valid, target, 0).long()
        s_t = s.gather(1, t.unsqueeze(1)).squeeze(1)
        validf = valid.to(s.dtype)
        w_t = w[t] * validf if w is not None else validf
        out.A = (1.0 - eps) * w_t
        a_s = torch.where(valid, (1.0 - eps) * w_t * s_t, 0.0)
        if eps > 0.0:
            total_w = w.sum() if w is not None else torch.tensor(float(num_classes), dtype=s.dtype)
            out.A = out.A + (eps / num_classes) * total_w.to(s.device) * validf
            s_w = s @ w if w is not None else s.sum(1)
            a_s = a_s + (eps / num_classes) * torch.where(valid, s_w, 0.0)
        out.coef = None
        out.target = t
        out.valid = valid
    e = s.exp_()
    se = e.sum(1)
    log_se = se.log()
    out.lse = m + log_se
    out.ce = torch.where(out.A == 0, 0.0, out.A * log_se) - a_s
    out.p = e
    out.sumexp = se
    return out


def _grad_block(blk: _Block, spec: RowSpec, g_ce: Tensor | None, g_lse: Tensor | None) -> Tensor:
    """d loss / d logits for a block, in place in ``blk.p`` (see the module docstring)."""
    p = blk.p
    eps = spec.label_smoothing
    zero = torch.zeros_like(blk.lse)
    gc = g_ce if g_ce is not None else zero
    gl = g_lse if g_lse is not None else zero
    # (g A + h) p_c
    # one pass: the softmax normalisation 1 / sumexp folds into the row scale
    p.mul_(((gc * blk.A + gl) / blk.sumexp).unsqueeze(1))
    if spec.is_prob:
        assert blk.coef is not None
        p.sub_(blk.coef * gc.unsqueeze(1))  # - g a_c
    else:
        assert blk.target is not None
        w = spec.weight
        validf = blk.valid.to(p.dtype)
        w_t = w[blk.target] * validf if w is not None else validf
        # - g (1 - e) w_t at the target class
        p.scatter_add_(1, blk.target.unsqueeze(1), (-(1.0 - eps) * gc * w_t).unsqueeze(1))
        if eps > 0.0:
            # - g (e / V) w_c on every class of a counted row
            row = gc * validf * (eps / spec.num_classes)
            if w is not None:
                p.sub_(row.unsqueeze(1) * w.unsqueeze(0))
            else:
                p.sub_(row.unsqueeze(1))
    if blk.tanh is not None:
        # ds/dx = 1 - tanh(x / cap)^2
        p.mul_(1.0 - blk.tanh.square())
    return p


# ------------------------------------------------------------------------------------------------
# Double backward. The fast backward passes above work in place under no_grad, so they are first
# order only. Under create_graph=True (MAML-style inner loops, gradient penalties) the gradients come
# instead from differentiating a plain, out-of-place recomputation of the forward pass from the saved
# inputs: exact to every order, at the memory cost of materialising the (N, V) logits once.


def reference_rows(logits: Tensor, target: Tensor, spec: RowSpec) -> tuple[Tensor, Tensor]:
    """``(ce_rows, lse_rows)`` of 2-D logits with out-of-place, twice-differentiable torch ops."""
    dtype = _compute_dtype(logits, spec.weight)
    s = logits.to(dtype)
    if spec.softcap is not None:
        s = spec.softcap * torch.tanh(s / spec.softcap)
    lse = torch.logsumexp(s, 1)
    logp = s - lse.unsqueeze(1)
    eps, n_cls, w = spec.label_smoothing, spec.num_classes, spec.weight
    if spec.is_prob:
        q = target.to(dtype)
        if eps > 0.0:
            q = q * (1.0 - eps) + eps / n_cls
        a = q * w if w is not None else q
        ce = -torch.where(a == 0, 0.0, a * logp).sum(1)  # 0 * log 0 = 0 on masked classes
        return ce, lse
    valid = target != spec.ignore_index
    t = torch.where(valid, target, 0).long()
    validf = valid.to(dtype)
    w_t = w[t] * validf if w is not None else validf
    ce = -(1.0 - eps) * w_t * logp.gather(1, t.unsqueeze(1)).squeeze(1)
    if eps > 0.0:
        smooth = -(logp @ w if w is not None else logp.sum(1))
        ce = ce + (eps / n_cls) * validf * smooth
    return torch.where(valid, ce, 0.0), lse


def _no_autocast(tensors: Sequence[object]) -> Any:
    """The custom Functions pick their dtypes themselves (fp32 math, float64 for float64 inputs);
    inside an autocast region their matmuls and in-place updates must not be recast."""
    device = next((t.device.type for t in tensors if isinstance(t, Tensor)), "cpu")
    return torch.autocast(device_type=device, enabled=False)


def autocast_off(forward: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate an autograd.Function forward to run with autocast disabled (see _no_autocast)."""

    @functools.wraps(forward)
    def wrapper(ctx: Any, *args: Any) -> Any:
        with _no_autocast(args):
            return forward(ctx, *args)

    return wrapper


def twice_differentiable(
    recompute: Callable[[Any], tuple[Sequence[Tensor | None], Sequence[Tensor]]],
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate an autograd.Function backward: run it under no_grad for first-order gradients; under
    ``create_graph=True`` differentiate ``recompute(ctx)`` instead.

    ``recompute(ctx)`` returns ``(inputs, outputs)``: one entry per forward argument (the saved
    tensor, or None where no gradient is returned) and the forward outputs rebuilt from them with
    differentiable ops, one per output of the Function.
    """

    def decorate(backward: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(backward)
        def wrapper(ctx: Any, *grads: Tensor | None) -> Any:
            with _no_autocast(grads):
                return _run(ctx, grads)

        def _run(ctx: Any, grads: tuple[Tensor | None, ...]) -> Any:
            if not torch.is_grad_enabled():
                return backward(ctx, *grads)
            with torch.enable_grad():
                inputs, outputs = recompute(ctx)
                wanted: list[tuple[int, Tensor]] = [
                    (i, t)
                    for i, t in enumerate(inputs)
                    if t is not None and t.requires_grad and ctx.needs_input_grad[i]
                ]
                pairs = [(o, g) for o, g in zip(outputs, grads) if g is not None]
                result: list[Tensor | None] = [None] * len(inputs)
                if not wanted or not pairs:
                    return tuple(result)
                got = torch.autograd.grad(
                    [o for o, _ in pairs],
                    [t for _, t in wanted],
                    [g for _, g in pairs],
                    create_graph=True,
                    allow_unused=True,
                )
            for (i, _), g in zip(wanted, got):
                result[i] = g
            return tuple(result)

        return wrapper

    return decorate


def first_order_only(message: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a backward that has no double-backward path: ``NotImplementedError(message)`` under
    create_graph=True (never silently dropped second-order terms), no_grad otherwise."""

    def decorate(backward: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(backward)
        def wrapper(ctx: Any, *grads: Tensor | None) -> Any:
            if torch.is_grad_enabled():
                raise NotImplementedError(message)
            with _no_autocast(grads):
                return backward(ctx, *grads)

        return wrapper

    return decorate


# ------------------------------------------------------------------------------------------------
# softmax_ce_rows: logits given


class _SoftmaxCERows(torch.autograd.Function):
    @staticmethod
    @autocast_off
    def forward(  # type: ignore[override]
        ctx: Any, logits: Tensor, target: Tensor, spec: RowSpec
    ) -> tuple[Tensor, Tensor]:
        dtype = _compute_dtype(logits, spec.weight)
        blk = _forward_block(logits.to(dtype, copy=True), target, spec, keep_p=False)
        ctx.spec = spec
        ctx.in_dtype = logits.dtype
        ctx.save_for_backward(logits, target)
        return blk.ce, blk.lse

    @staticmethod
    def _recompute(ctx: Any) -> tuple[list[Tensor | None], tuple[Tensor, Tensor]]:
        logits, target = ctx.saved_tensors
        return [logits, None, None], reference_rows(logits, target, ctx.spec)

    @staticmethod
    @twice_differentiable(lambda ctx: _SoftmaxCERows._recompute(ctx))
    def backward(ctx: Any, g_ce: Tensor | None, g_lse: Tensor | None) -> Any:  # type: ignore[override]
        logits, target = ctx.saved_tensors
        spec: RowSpec = ctx.spec
        dtype = _compute_dtype(logits, spec.weight)
        blk = _forward_block(logits.to(dtype, copy=True), target, spec, keep_p=True)
        grad = _grad_block(blk, spec, g_ce, g_lse)
        return grad.to(ctx.in_dtype), None, None


def softmax_ce_rows(
    logits: Tensor,
    target: Tensor,
    *,
    weight: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    softcap: float | None,
) -> tuple[Tensor, Tensor]:
    """Per-row cross-entropy and logsumexp of 2-D logits (arguments already validated).

    Args:
        logits: (N, V) floating logits, any layout.
        target: (N,) integer class ids or (N, V) class probabilities.
        weight: (V,) class weights or None.
        ignore_index: class id whose rows get ce = 0 (index targets only).
        label_smoothing: e in [0, 1].
        softcap: cap > 0 or None.

    Returns:
        ``(ce_rows, lse_rows)``: (N,) float32 (float64 for float64 logits), differentiable.
    """
    dtype = _compute_dtype(logits, weight)
    spec = row_spec(
        dtype, target, weight, ignore_index, label_smoothing, softcap, num_classes=logits.shape[1]
    )
    if composable_only(logits, weight, target=target):
        with _no_autocast((logits,)):
            return reference_rows(logits, target, spec)
    ce, lse = _SoftmaxCERows.apply(logits, target, spec)
    return ce, lse


# ------------------------------------------------------------------------------------------------
# linear_ce_rows: logits = input @ linear_weight.T + linear_bias, never materialised


def _block_logits(x: Tensor, w: Tensor, b: Tensor | None, dtype: torch.dtype) -> Tensor:
    xc = x.to(dtype)
    if b is not None:
        return torch.addmm(b, xc, w.t())
    return xc @ w.t()


def _row_blocks(n: int, chunk: int) -> list[tuple[int, int]]:
    return [(i, min(i + chunk, n)) for i in range(0, n, chunk)]


_Grads = tuple[Tensor | None, Tensor | None, Tensor | None]


def _grad_buffers(x: Tensor, w: Tensor, needs: Sequence[bool], dtype: torch.dtype) -> _Grads:
    """dX (filled block by block), dW and db (accumulated over blocks) where ``needs`` asks."""
    need_x, need_w, need_b = needs[:3]
    dx = torch.empty(x.shape, dtype=dtype, device=x.device) if need_x else None
    dw = torch.zeros(w.shape, dtype=dtype, device=w.device) if need_w else None
    db = torch.zeros(w.shape[0], dtype=dtype, device=w.device) if need_b else None
    return dx, dw, db


def _add_block_grads(grads: _Grads, grad: Tensor, xb: Tensor, wc: Tensor, i0: int, i1: int) -> None:
    """Rows i0:i1 of dX, and their share of dW and db, from the block's d(logits) ``grad``."""
    dx, dw, db = grads
    if dx is not None:
        torch.mm(grad, wc, out=dx[i0:i1])
    if dw is not None:
        dw.addmm_(grad.t(), xb.to(grad.dtype))
    if db is not None:
        db.add_(grad.sum(0))


class _LinearCERows(torch.autograd.Function):
    """General per-row version: logits recomputed in backward (1 + 3 GEMMs per block)."""

    @staticmethod
    @autocast_off
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        w: Tensor,
        b: Tensor | None,
        target: Tensor,
        spec: RowSpec,
        chunk: int,
    ) -> tuple[Tensor, Tensor]:
        dtype = _compute_dtype(x, w, b, spec.weight)
        wc = w.to(dtype)
        bc = b.to(dtype) if b is not None else None
        n = x.shape[0]
        ce = torch.empty(n, dtype=dtype, device=x.device)
        lse = torch.empty(n, dtype=dtype, device=x.device)
        for i0, i1 in _row_blocks(n, chunk):
            z = _block_logits(x[i0:i1], wc, bc, dtype)
            blk = _forward_block(z, target[i0:i1], spec, keep_p=False)
            ce[i0:i1] = blk.ce
            lse[i0:i1] = blk.lse
        ctx.spec = spec
        ctx.chunk = chunk
        ctx.has_bias = b is not None
        ctx.save_for_backward(x, w, b, target)
        return ce, lse

    @staticmethod
    def _recompute(ctx: Any) -> tuple[list[Tensor | None], tuple[Tensor, Tensor]]:
        x, w, b, target = ctx.saved_tensors
        logits = plain_logits(x, w, b, ctx.spec)
        return [x, w, b, None, None, None], reference_rows(logits, target, ctx.spec)

    @staticmethod
    @twice_differentiable(lambda ctx: _LinearCERows._recompute(ctx))
    def backward(ctx: Any, g_ce: Tensor | None, g_lse: Tensor | None) -> Any:  # type: ignore[override]
        x, w, b, target = ctx.saved_tensors
        spec: RowSpec = ctx.spec
        dtype = _compute_dtype(x, w, b, spec.weight)
        wc = w.to(dtype)
        bc = b.to(dtype) if b is not None else None
        n = x.shape[0]
        grads = _grad_buffers(x, w, ctx.needs_input_grad, dtype)
        for i0, i1 in _row_blocks(n, ctx.chunk):
            xb = x[i0:i1]
            z = _block_logits(xb, wc, bc, dtype)
            blk = _forward_block(z, target[i0:i1], spec, keep_p=True)
            gc = g_ce[i0:i1].to(dtype) if g_ce is not None else None
            gl = g_lse[i0:i1].to(dtype) if g_lse is not None else None
            _add_block_grads(grads, _grad_block(blk, spec, gc, gl), xb, wc, i0, i1)
        dx, dw, db = grads
        return (
            dx.to(x.dtype) if dx is not None else None,
            dw.to(w.dtype) if dw is not None else None,
            db.to(b.dtype) if db is not None else None,
            None,
            None,
            None,
        )


def _linear_spec(
    x: Tensor,
    w: Tensor,
    b: Tensor | None,
    target: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    softcap: float | None,
) -> RowSpec:
    dtype = _compute_dtype(x, w, b, weight)
    return row_spec(
        dtype, target, weight, ignore_index, label_smoothing, softcap, num_classes=w.shape[0]
    )


def linear_ce_rows(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    *,
    linear_bias: Tensor | None,
    weight: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    softcap: float | None,
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-row cross-entropy and logsumexp of ``input @ linear_weight.T + linear_bias``.

    The (N, V) logits are never held at once: blocks of ``chunk_size`` rows are formed, reduced and
    dropped; the backward pass recomputes each block.

    Args:
        input: (N, D) floating hidden states.
        linear_weight: (V, D) output projection.
        target: (N,) integer class ids or (N, V) class probabilities.
        linear_bias: (V,) or None.
        weight, ignore_index, label_smoothing, softcap: as in :func:`softmax_ce_rows`.
        chunk_size: rows per block (default: about 32 MiB of fp32 logits per block).

    Returns:
        ``(ce_rows, lse_rows)``: (N,) float32 (float64 for float64 inputs), differentiable.
    """
    spec = _linear_spec(
        input, linear_weight, linear_bias, target, weight, ignore_index, label_smoothing, softcap
    )
    if composable_only(input, linear_weight, linear_bias, weight, target=target):
        with _no_autocast((input,)):
            logits = plain_logits(input, linear_weight, linear_bias, spec)
            return reference_rows(logits, target, spec)
    chunk = chunk_size or default_chunk_size(input.shape[0], linear_weight.shape[0])
    ce, lse = _LinearCERows.apply(input, linear_weight, linear_bias, target, spec, chunk)
    return ce, lse


def plain_logits(x: Tensor, w: Tensor, b: Tensor | None, spec: RowSpec) -> Tensor:
    """All (N, V) logits at once, with differentiable ops (double backward, torch.func)."""
    dtype = _compute_dtype(x, w, b, spec.weight)
    return _block_logits(x, w.to(dtype), b.to(dtype) if b is not None else None, dtype)


def plain_linear_loss(
    x: Tensor,
    w: Tensor,
    b: Tensor | None,
    target: Tensor,
    coef: Tensor,
    zcoef: Tensor | None,
    spec: RowSpec,
) -> Tensor:
    """What :class:`FusedLinearCE` computes, with differentiable ops (materialises the logits)."""
    with _no_autocast((x,)):
        ce, lse = reference_rows(plain_logits(x, w, b, spec), target, spec)
    return _scalar_loss(ce, lse, coef, zcoef)


def _scalar_loss(ce: Tensor, lse: Tensor, coef: Tensor, zcoef: Tensor | None) -> Tensor:
    """sum_i coef_i ce_i + zcoef_i lse_i^2 (z-loss terms only where zcoef_i != 0)."""
    loss = (coef * ce).sum()
    if zcoef is not None:
        loss = loss + torch.where(zcoef != 0, zcoef * lse.square(), 0.0).sum()
    return loss


class FusedLinearCE(torch.autograd.Function):
    """Scalar loss sum_i coef_i ce_i + zcoef_i lse_i^2 with gradients formed in the forward pass.

    ``coef`` and ``zcoef`` (N,) come from the reduction (see ``_reduce.row_coefficients``), so the
    upstream gradient of the scalar output is the only unknown and the backward pass just scales the
    stored d input / d weight / d bias (out of place: a second backward with ``retain_graph=True``
    works, at the cost of one gradient-sized copy). Returns ``(loss, ce_rows, lse_rows)``; the rows
    are detached.
    """

    @staticmethod
    @autocast_off
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        w: Tensor,
        b: Tensor | None,
        target: Tensor,
        coef: Tensor,
        zcoef: Tensor | None,
        spec: RowSpec,
        chunk: int,
    ) -> tuple[Tensor, Tensor, Tensor]:
        dtype = _compute_dtype(x, w, b, spec.weight)
        wc = w.to(dtype)
        bc = b.to(dtype) if b is not None else None
        n = x.shape[0]
        ce = torch.empty(n, dtype=dtype, device=x.device)
        lse = torch.empty(n, dtype=dtype, device=x.device)
        grads = _grad_buffers(x, w, ctx.needs_input_grad, dtype)
        any_grad = any(ctx.needs_input_grad[:3])
        for i0, i1 in _row_blocks(n, chunk):
            xb = x[i0:i1]
            z = _block_logits(xb, wc, bc, dtype)
            blk = _forward_block(z, target[i0:i1], spec, keep_p=any_grad)
            ce[i0:i1] = blk.ce
            lse[i0:i1] = blk.lse
            if not any_grad:
                continue
            gc = coef[i0:i1]
            # d(zcoef lse^2)/d lse = 2 zcoef lse
            gl = None
            if zcoef is not None:
                zc = zcoef[i0:i1]
                gl = torch.where(zc != 0, 2.0 * zc * blk.lse, 0.0)
            _add_block_grads(grads, _grad_block(blk, spec, gc, gl), xb, wc, i0, i1)
        loss = _scalar_loss(ce, lse, coef, zcoef)
        # Saved (not kept as ctx attributes) so that autograd frees them after backward. Nothing
        # else is kept between the passes, the inputs included: that is the point of this path, and
        # why it has no double backward.
        ctx.save_for_backward(*grads)
        ctx.dtypes = (x.dtype, w.dtype, b.dtype if b is not None else None)
        ctx.mark_non_differentiable(ce, lse)
        return loss, ce, lse

    @staticmethod
    @first_order_only(
        "linear_cross_entropy: the fused 'mean'/'sum' path forms its gradients in the forward pass "
        "and keeps no inputs, so it has no double backward (create_graph=True). For higher-order "
        "gradients pass return_aux=True and differentiate aux.loss (the recomputing path, exact to "
        "every order); for a model patched by crossentropy.hf, unpatch it first."
    )
    def backward(ctx: Any, g: Tensor | None, *_: Any) -> Any:  # type: ignore[override]
        out: list[Tensor | None] = []
        for grad, dtype in zip(ctx.saved_tensors, ctx.dtypes):
            if grad is None or g is None:
                out.append(None)
                continue
            # out of place, so that retain_graph=True and gradcheck's repeated backward stay exact
            out.append((grad * g.to(grad.dtype)).to(dtype))
        return (out[0], out[1], out[2], None, None, None, None, None)
