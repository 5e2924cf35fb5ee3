"""The chunked engine: blocks of rows of logits, formed, reduced by a row math object, dropped.

This file holds the only chunk loops of the torch layer. A call has one or two :class:`Head` objects
(the logits producers: ``x W^T + b`` with ``x`` (N, D) and ``W`` (V, D), or given logits), a row
math object (``_rowmath``) and a :class:`~crossentropy.torch._rowmath.Merge` (the identity, or
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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from crossentropy.torch._gemm import Precision, add_mm_f32_, mm_f32
from crossentropy.torch._rowmath import Merge, RowMath

__all__ = [
    "Grads",
    "Head",
    "block_rows",
    "fused",
    "rows_backward",
    "rows_forward",
]

Grads = tuple[Tensor | None, Tensor | None, Tensor | None]


def block_rows(n: int, v: int, *, budget: int, blocks: int, elem: int = 4) -> int:
    """Rows per block so that ``blocks`` (rows, v) buffers of ``elem`` bytes fit in ``budget``
    bytes: a power of two >= 16 (or n when smaller)."""
    per_row = max(1, blocks * max(v, 1) * elem)
    rows = max(16, budget // per_row)
    rows = 1 << (rows.bit_length() - 1)
    return max(1, min(rows, n))


def _blocks(n: int, chunk: int) -> list[tuple[int, int]]:
    return [(i, min(i + chunk, n)) for i in range(0, n, chunk)]


@dataclass
class _Acc:
    dx: Tensor | None
    dw: Tensor | None
    db: Tensor | None


class Head:
    """Logits of rows ``i0:i1``: ``x W^T + b`` (``w`` given) or the given logits ``x``.

    The weight is rounded to the operand dtype once per call (and widened to the compute dtype
    off tensor cores, where the GEMM then runs on exactly the rounded values).
    """

    def __init__(self, x: Tensor, w: Tensor | None, b: Tensor | None, prec: Precision) -> None:
        self.x, self.w, self.b, self.prec = x, w, b, prec
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
        if self.prec.tensor_cores:
            z = mm_f32(xc, self.w_op.t())
            return z.add_(self.b_op) if self.b_op is not None else z
        if self.b_op is not None:
            return torch.addmm(self.b_op, xc, self.w_op.t())
        return xc @ self.w_op.t()

    def buffers(self, need: Sequence[bool], sharded: bool) -> _Acc:
        """Gradient buffers: d x filled block by block, d W and d b accumulated in the compute
        dtype. ``sharded``: d x is a partial sum to be all-reduced (kept in the compute dtype)."""
        need_x, need_w, need_b = need
        comp = self.prec.compute
        dx = None
        if need_x:
            direct = self.w is None or (
                not sharded and self.prec.tensor_cores and self.x.dtype == self.prec.operand
            )
            dx = torch.empty(
                self.x.shape, dtype=self.x.dtype if direct else comp, device=self.x.device
            )
        dw = (
            torch.zeros(self.w.shape, dtype=comp, device=self.x.device)
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
            add_mm_f32_(acc.dw, dz.t(), self._x_op(i0, i1))
        if acc.db is not None:
            acc.db.add_(dz.sum(0, dtype=acc.db.dtype))

    def finish(self, acc: _Acc, reduce_dx: bool, merge: Merge) -> Grads:
        """The gradients in the inputs' own dtypes (d x all-reduced first when ``reduce_dx``)."""
        dx = acc.dx
        if dx is not None and reduce_dx and self.w is not None:
            # x is replicated on every rank; its gradient is the sum of the shards' partial sums
            # (given logits are sharded themselves: each rank owns its own gradient)
            dx = merge.sum(dx)
        return (
            dx.to(self.x.dtype) if dx is not None else None,
            acc.dw.to(self.w.dtype) if acc.dw is not None and self.w is not None else None,
            acc.db.to(self.b.dtype) if acc.db is not None and self.b is not None else None,
        )


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
            g = [gk[i0:i1].to(heads[0].prec.compute) if gk is not None else None for gk in grads]
            raws = [h.logits(i0, i1) for h in heads]
            dzs = math.backward(raws, i0, i1, merge, saved[i0:i1], g, want)
            for h, acc, dz in zip(heads, accs, dzs):
                if dz is not None:
                    h.add_grads(acc, dz, i0, i1)
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
    """The scalar loss, the per-row outputs and every head's gradients, in one pass over blocks."""
    n = heads[0].rows
    prec = heads[0].prec
    device = heads[0].x.device
    outs = [torch.empty(n, dtype=prec.compute, device=device) for _ in range(math.n_out)]
    accs = [h.buffers(nd, sharded) for h, nd in zip(heads, needs)]
    want = tuple(any(nd) for nd in needs)
    for i0, i1 in _blocks(n, chunk):

        def upstream(o: list[Tensor], i0: int = i0, i1: int = i1) -> list[Tensor | None]:
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
        if any(want):
            o, dzs = math.fused(raws, i0, i1, merge, upstream, want)
            for h, acc, dz in zip(heads, accs, dzs):
                if dz is not None:
                    h.add_grads(acc, dz, i0, i1)
        else:
            o, _ = math.forward(raws, i0, i1, merge)
        for k in range(math.n_out):
            outs[k][i0:i1] = o[k]
    loss = scalar_loss(outs, lin, quad)
    return loss, outs, [h.finish(acc, sharded, merge) for h, acc in zip(heads, accs)]
