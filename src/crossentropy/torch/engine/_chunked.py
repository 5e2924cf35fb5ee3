"""The chunked engine: blocks of rows of logits, formed, reduced by a row math object, dropped.

This file holds the only chunk loops of the torch layer. A call has one or two :class:`Head` objects
(the logits producers: ``x W^T + b`` with ``x`` (N, D) and ``W`` (V, D), or given logits), a row
math object (``_rowmath``) and a :class:`~crossentropy.torch.engine._rowmath.Merge` (the identity, or
all-reduces over a vocabulary-parallel group). Three entry points:

* :func:`rows_forward` / :func:`rows_backward`: per-row outputs with any upstream gradient. The
  backward pass recomputes each block of logits: 1 GEMM per head and block forward, 3 backward
  (the logits, d input, d weight): 8NDV FLOPs for one head.
* :func:`fused`: a scalar loss ``sum_k sum_i lin_ki out_ki + quad_ki out_ki^2`` whose upstream
  gradient is known in the forward pass (``mean``/``sum``), so each block's gradients are formed
  while the block exists: 3 GEMMs per block, 6NDV FLOPs; the backward only scales them.

Memory beyond the inputs and their gradients: one block of ``chunk`` rows times ``math.blocks``
(n, V) buffers in the compute dtype; an fp32 accumulator for d weight (V D 4 bytes, always fp32:
bf16 accumulation across blocks drifts); for 16-bit inputs off tensor cores, the weight widened
once to fp32. Deterministic: blocks are visited in order, no atomics.

The ``cuda-fast`` engine (``fused`` with the Triton row kernels, 16-bit operands on tensor cores;
N rows, V classes, D features, blocks of c rows, B = ceil(N / c) blocks), arithmetic:

* bytes per logit element: 18 = 4 (the GEMM writes fp32 logits) + 4 (the forward row kernel
  reads them, adding the bias as it reads) + 4 + 2 (the backward row kernel reads them again and
  writes 16-bit d(logits) over the first half of each row) + 2 + 2 (the d input and d weight GEMMs
  read d(logits)). The 6NDV floor's own GEMMs move 6 of them (16-bit logits out, d(logits) in
  twice), so 12 are this engine's. A bias costs nothing more (it was a separate 8-byte pass).
* bytes per call besides: the fp32 d weight accumulator, written by the first block (no zero
  fill) and read and written by each later one: (8 B - 4) V D; its rounding to 16 bits, 6 V D;
  d input, written once per block, 2 N D.
* peak memory beyond inputs and gradients: 4 c V (the fp32 block; d(logits) lives inside it) +
  4 V D (the accumulator), and 2 V D while it is rounded (the last block is freed first). The
  backward pass scales the gradients by the upstream gradient in place (unless
  ``retain_graph=True``), so no second (V, D) buffer then.
* float16 d(logits) (:func:`fp16_scale`): d input is kept in fp32 (4 N D) and float16 gradients
  are rounded only in the backward pass, after the upstream gradient (a loss scale).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from crossentropy.torch.engine._gemm import Precision, add_mm_f32_, mm_f32
from crossentropy.torch.engine._rowmath import Merge, RowMath

__all__ = [
    "Grads",
    "Head",
    "block_rows",
    "fp16_scale",
    "fused",
    "rows_backward",
    "rows_forward",
]

Grads = tuple[Tensor | None, Tensor | None, Tensor | None]


def block_rows(n: int, v: int, *, budget: int, blocks: int, elem: int = 4) -> int:
    """Rows per block so that ``blocks`` (rows, v) buffers of ``elem`` bytes fit in ``budget``
    bytes: a multiple of 128 rows (GEMM-tile friendly) when 128 or more fit, else a power of two
    >= 16; n when smaller. (A power of two throughout wasted up to half the budget: 1024 rows of
    V=151936 where 1766 fit.)"""
    per_row = max(1, blocks * max(v, 1) * elem)
    rows = max(16, budget // per_row)
    rows = rows // 128 * 128 if rows >= 128 else 1 << (rows.bit_length() - 1)
    return max(1, min(rows, n))


def _blocks(n: int, chunk: int) -> list[tuple[int, int]]:
    return [(i, min(i + chunk, n)) for i in range(0, n, chunk)]


@dataclass
class _Acc:
    dx: Tensor | None
    dw: Tensor | None
    db: Tensor | None
    dw_fresh: bool = True  # dw is torch.empty: the first block writes it (beta = 0)


class Head:
    """Logits of rows ``i0:i1``: ``x W^T + b`` (``w`` given) or the given logits ``x``.

    The weight is rounded to the operand dtype once per call (and widened to the compute dtype
    off tensor cores, where the GEMM then runs on exactly the rounded values). ``bias_in_rows``:
    the row math adds the bias itself as it reads the block (the Triton row kernels), so the logits
    leave the GEMM without it and no separate pass over the block adds it.
    """

    def __init__(
        self,
        x: Tensor,
        w: Tensor | None,
        b: Tensor | None,
        prec: Precision,
        *,
        bias_in_rows: bool = False,
    ) -> None:
        self.x, self.w, self.b, self.prec = x, w, b, prec
        self.bias_in_rows = bias_in_rows
        self.rows = x.shape[0]
        self.w_op: Tensor | None = None
        self.b_op: Tensor | None = None
        if w is not None:
            w_op = w.to(prec.operand)
            self.w_op = w_op if prec.tensor_cores else w_op.to(prec.compute)
            # the bias is rounded to the operand dtype too, as F.linear under autocast does
            self.b_op = b.to(prec.operand).to(prec.compute) if b is not None else None
        self.vocab = w.shape[0] if w is not None else x.shape[1]

    def _x_op(self, i0: int, i1: int) -> Tensor:
        xc = self.x[i0:i1].to(self.prec.operand)
        return xc if self.prec.tensor_cores else xc.to(self.prec.compute)

    def logits(self, i0: int, i1: int) -> Tensor:
        """(i1 - i0, V) logits in the compute dtype, a new buffer the caller owns."""
        if self.w_op is None:
            return self.x[i0:i1].to(self.prec.compute, copy=True)
        xc = self._x_op(i0, i1)
        bias = None if self.bias_in_rows else self.b_op
        if self.prec.tensor_cores:
            z = mm_f32(xc, self.w_op.t())
            return z.add_(bias) if bias is not None else z
        if bias is not None:
            return torch.addmm(bias, xc, self.w_op.t())
        return xc @ self.w_op.t()

    def buffers(self, need: Sequence[bool], sharded: bool, scaled: bool = False) -> _Acc:
        """Gradient buffers: d x filled block by block, d W and d b accumulated in the compute
        dtype. ``sharded``: d x is a partial sum to be all-reduced (kept in the compute dtype).
        ``scaled``: a common factor is applied to d x at the end (kept in the compute dtype, so it
        is rounded to 16 bits once, after the factor)."""
        need_x, need_w, need_b = need
        comp = self.prec.compute
        dx = None
        if need_x:
            direct = self.w is None or (
                not sharded
                and not scaled
                and self.prec.tensor_cores
                and self.x.dtype == self.prec.operand
            )
            dx = torch.empty(
                self.x.shape, dtype=self.x.dtype if direct else comp, device=self.x.device
            )
        # no zero fill: the first block writes d W (add_mm_f32_(..., first=True))
        dw = (
            torch.empty(self.w.shape, dtype=comp, device=self.x.device)
            if need_w and self.w is not None
            else None
        )
        db = (
            torch.zeros(self.vocab, dtype=comp, device=self.x.device)
            if need_b and self.b is not None
            else None
        )
        return _Acc(dx, dw, db)

    def add_grads(self, acc: _Acc, dz: Tensor, i0: int, i1: int) -> None:
        """Rows i0:i1 of d x, and their share of d W and d b, from the block's d(logits) ``dz``."""
        if self.w_op is None:
            if acc.dx is not None:
                acc.dx[i0:i1] = dz
            return
        # the gradient GEMMs take d(logits) in the operand dtype on tensor cores, else in the
        # compute dtype (a 16-bit d(logits) from the row kernel is widened exactly)
        gemm_dtype = self.prec.dz if self.prec.tensor_cores else self.prec.compute
        if dz.dtype != gemm_dtype:
            dz = dz.to(gemm_dtype)
        if acc.dx is not None:
            rows = acc.dx[i0:i1]
            if dz.dtype == rows.dtype:
                torch.mm(dz, self.w_op, out=rows)
            else:
                rows.copy_(mm_f32(dz, self.w_op))
        if acc.dw is not None:
            add_mm_f32_(acc.dw, dz.t(), self._x_op(i0, i1), first=acc.dw_fresh)
            acc.dw_fresh = False
        if acc.db is not None:
            acc.db.add_(dz.sum(0, dtype=acc.db.dtype))

    def finish(
        self,
        acc: _Acc,
        reduce_dx: bool,
        merge: Merge,
        scale: Tensor | None = None,
        keep_fp16_wide: bool = False,
    ) -> Grads:
        """The gradients in the inputs' own dtypes (d x all-reduced first when ``reduce_dx``).

        ``scale``: a factor every gradient still needs (applied in the compute dtype).
        ``keep_fp16_wide``: float16 gradients stay in the compute dtype, for the caller to round
        after the upstream gradient is applied (a loss scale, e.g. GradScaler's, must reach
        them before they are rounded to float16, or small ones flush to zero).
        """
        dx = acc.dx
        if dx is not None and reduce_dx and self.w is not None:
            # x is replicated on every rank; its gradient is the sum of the shards' partial sums
            # (given logits are sharded themselves: each rank owns its own gradient)
            dx = merge.sum(dx)
        if acc.dw is not None and acc.dw_fresh:
            acc.dw.zero_()  # no block ran (no rows)
        out: list[Tensor | None] = []
        for grad, src in ((dx, self.x), (acc.dw, self.w), (acc.db, self.b)):
            if grad is None or src is None:
                out.append(None)
                continue
            if scale is not None:
                grad = (
                    grad.mul_(scale)
                    if grad.dtype == scale.dtype
                    else grad.mul_(scale.to(grad.dtype))
                )
            keep = keep_fp16_wide and src.dtype == torch.float16
            out.append(grad if keep else grad.to(src.dtype))
        return out[0], out[1], out[2]


def rows_forward(
    math: RowMath, heads: Sequence[Head], merge: Merge, chunk: int
) -> tuple[list[Tensor], Tensor]:
    """Per-row outputs (each (N,)) and the (N, n_saved) statistics for :func:`rows_backward`."""
    n = heads[0].rows
    prec = heads[0].prec
    device = heads[0].x.device
    outs = [torch.empty(n, dtype=prec.compute, device=device) for _ in range(math.n_out)]
    saved = torch.empty(n, math.n_saved, dtype=prec.compute, device=device)
    for i0, i1 in _blocks(n, chunk):
        o, s = math.forward([h.logits(i0, i1) for h in heads], i0, i1, merge)
        for k in range(math.n_out):
            outs[k][i0:i1] = o[k]
        saved[i0:i1] = s
    return outs, saved


def _backward_block(
    math: RowMath,
    heads: Sequence[Head],
    merge: Merge,
    accs: Sequence[_Acc],
    want: tuple[bool, ...],
    saved: Tensor,
    grads: Sequence[Tensor | None],
    i0: int,
    i1: int,
) -> None:
    """One block of :func:`rows_backward` (a function of its own: see :func:`_fused_block`)."""
    g = [gk[i0:i1].to(heads[0].prec.compute) if gk is not None else None for gk in grads]
    raws = [h.logits(i0, i1) for h in heads]
    dzs = math.backward(raws, i0, i1, merge, saved[i0:i1], g, want)
    for h, acc, dz in zip(heads, accs, dzs):
        if dz is not None:
            h.add_grads(acc, dz, i0, i1)


def rows_backward(
    math: RowMath,
    heads: Sequence[Head],
    merge: Merge,
    chunk: int,
    saved: Tensor,
    grads: Sequence[Tensor | None],
    needs: Sequence[Sequence[bool]],
    sharded: bool,
) -> list[Grads]:
    """Gradients of ``sum_k grads_k . out_k`` for every head's (x, W, b), recomputing each block."""
    accs = [h.buffers(nd, sharded) for h, nd in zip(heads, needs)]
    want = tuple(any(nd) for nd in needs)
    n = heads[0].rows
    if any(want):
        for i0, i1 in _blocks(n, chunk):
            _backward_block(math, heads, merge, accs, want, saved, grads, i0, i1)
    return [h.finish(acc, sharded, merge) for h, acc in zip(heads, accs)]


def scalar_loss(outs: Sequence[Tensor], lin: Tensor | None, quad: Tensor | None) -> Tensor:
    """sum_k sum_i lin_ki out_ki + quad_ki out_ki^2 (terms with a zero coefficient are 0 even
    where the output is infinite, e.g. the lse of a fully masked row)."""
    loss = outs[0].new_zeros(())
    for k, o in enumerate(outs):
        if lin is not None:
            loss = loss + torch.where(lin[k] != 0, lin[k] * o, 0.0).sum()
        if quad is not None:
            loss = loss + torch.where(quad[k] != 0, quad[k] * o.square(), 0.0).sum()
    return loss


def fp16_scale(prec: Precision, lin: Tensor | None, quad: Tensor | None) -> Tensor | None:
    """The common factor kept out of float16 d(logits), or None.

    A mean's upstream coefficients carry 1 / denominator: over 262k tokens, d(logits) rounded to
    float16 with it flushes 92-99% of its entries to zero, before any loss scale could lift them.
    So with float16 d(logits) the fused pass divides every coefficient by their largest magnitude
    (no host synchronisation: a device scalar), forms d(logits) and the gradient GEMMs at that
    scale, and applies the factor to the fp32 accumulators of d x, d W and d b at the end.
    """
    if prec.dz != torch.float16:
        return None
    parts = [t.abs().amax() for t in (lin, quad) if t is not None and t.numel()]
    if not parts:
        return None
    top = torch.stack(parts).amax()
    return torch.where(top > 0, top, torch.ones_like(top))


def _fused_block(
    math: RowMath,
    heads: Sequence[Head],
    merge: Merge,
    accs: Sequence[_Acc],
    want: tuple[bool, ...],
    lin: Tensor | None,
    quad: Tensor | None,
    i0: int,
    i1: int,
) -> list[Tensor]:
    """One block of :func:`fused`: its outputs, its gradients added to ``accs``. A function of its
    own so the block's (n, V) buffers are freed on return, before the next block or ``finish``."""

    def upstream(o: list[Tensor]) -> list[Tensor | None]:
        # d/d out_k of lin_k out_k + quad_k out_k^2, rows i0:i1
        gs: list[Tensor | None] = []
        for k, ok in enumerate(o):
            g = lin[k, i0:i1] if lin is not None else None
            if quad is not None:
                qk = quad[k, i0:i1]
                gq = torch.where(qk != 0, 2.0 * qk * ok, 0.0)
                g = gq if g is None else g + gq
            gs.append(g)
        return gs

    raws = [h.logits(i0, i1) for h in heads]
    if not any(want):
        return math.forward(raws, i0, i1, merge)[0]
    o, dzs = math.fused(raws, i0, i1, merge, upstream, want)
    for h, acc, dz in zip(heads, accs, dzs):
        if dz is not None:
            h.add_grads(acc, dz, i0, i1)
    return o


def fused(
    math: RowMath,
    heads: Sequence[Head],
    merge: Merge,
    chunk: int,
    lin: Tensor | None,
    quad: Tensor | None,
    needs: Sequence[Sequence[bool]],
    sharded: bool,
) -> tuple[Tensor, list[Tensor], list[Grads]]:
    """The scalar loss, the per-row outputs and every head's gradients, in one pass over blocks.

    With float16 d(logits) (see :func:`fp16_scale`) float16 gradients come back in the compute
    dtype, to be rounded once the upstream gradient is applied.
    """
    n = heads[0].rows
    prec = heads[0].prec
    device = heads[0].x.device
    scale = fp16_scale(prec, lin, quad)
    lin_u = lin / scale if scale is not None and lin is not None else lin
    quad_u = quad / scale if scale is not None and quad is not None else quad
    outs = [torch.empty(n, dtype=prec.compute, device=device) for _ in range(math.n_out)]
    accs = [h.buffers(nd, sharded, scaled=scale is not None) for h, nd in zip(heads, needs)]
    want = tuple(any(nd) for nd in needs)
    for i0, i1 in _blocks(n, chunk):
        o = _fused_block(math, heads, merge, accs, want, lin_u, quad_u, i0, i1)
        for k in range(math.n_out):
            outs[k][i0:i1] = o[k]
    loss = scalar_loss(outs, lin, quad)
    grads = [
        h.finish(acc, sharded, merge, scale, keep_fp16_wide=scale is not None)
        for h, acc in zip(heads, accs)
    ]
    return loss, outs, grads
