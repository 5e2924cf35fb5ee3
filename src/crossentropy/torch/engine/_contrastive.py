"""Row math and tile loops of the contrastive losses (CLIP / InfoNCE / SigLIP).

One rank holds ``a`` (n, d); a block ``b_q`` (m_q, d) of the other side visits it (its own block, or
one passing round the ring of ``parallel/_ring``). The logits of the meeting are

.. math::

    s_{ij} = t\\, a_i \\cdot b_j \\;(+\\, \\beta \\text{ for the sigmoid loss})

formed a tile of (rows x cols) at a time with ``t`` folded into the GEMM operand (``a_s = t a``, as
``logit_scale * a @ b.T`` evaluates in open_clip). Nothing here communicates: the functions update
per-row statistics of ``a`` (the A->B rows) and per-column statistics of ``b_q`` (the B->A rows,
which travel with the block) and accumulate gradients into buffers the caller owns.

Softmax rows (a_i against every column j of every block; P_i its positives, K_i = |P_i|):

    l_i = lse_i - (1 / K_i) sum_{p in P_i} s_ip,   lse_i = log sum_j exp(s_ij)

kept online as (M, S, T, K): running max, sum of exp(s - M), sum of positive logits, positive count;
a new tile with row max m' merges as M* = max(M, m'), S = S e^{M - M*} + sum_j e^{s_ij - M*}, exact
up to rounding whatever order the tiles come in (the ring delivers the "vocabulary" over time, so the
two-phase max-then-sum ``Merge`` of vocab parallel does not apply). The B->A rows (columns) are the
same along dim 0 of the same tile: one GEMM serves both directions.

Its gradient, for upstream g_i of l_i (w_i = g_i / K_i), and g'_j of the column losses:

    dl/ds_ij = g_i (p_ij - [j in P_i] / K_i) + g'_j (p'_ij - [i in P'_j] / K'_j)

with p = exp(s - lse) by row and p' by column. d/da_i = t sum_j G_ij b_j,
d/db_j = sum_i G_ij a_s,i, d/dt = sum_ij G_ij a_i.b_j, d/dbeta = 0 (the bias cancels in a softmax).

Sigmoid rows: l_i = sum_j softplus(-y_ij s_ij), y = +1 on positives, -1 elsewhere; d/ds_ij =
g_i (sigmoid(s_ij) - [j in P_i]); d/dt as above, d/dbeta = sum_ij G_ij.

Excluded pairs (``exclude_self``: global i == j in the rank's own block) get s = -inf: no mass in a
softmax, softplus(-inf) = 0 and sigmoid(-inf) = 0 in the sigmoid loss.

FLOPs per meeting of n rows and m columns: 2nmd forward (one GEMM for both directions), 6nmd
backward (the logits again, d a, d b). Memory: ``blocks`` (rows x cols) tiles in the compute dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from crossentropy.torch.engine._gemm import Precision, add_mm_f32_, mm_f32

__all__ = [
    "IGNORE_ID",
    "BlockGrads",
    "Coef",
    "PairSpec",
    "Side",
    "backward_block",
    "forward_block",
    "new_stats",
    "tile_shape",
]

IGNORE_ID = -100

# rows of the (k, n) statistics tensors
MAX, SUMEXP, POSSUM, POSCOUNT = 0, 1, 2, 3  # softmax
LOSS = 0  # sigmoid: (LOSS, POSCOUNT_SIG)
POSCOUNT_SIG = 1


@dataclass(frozen=True)
class PairSpec:
    """What a meeting computes: the kind, which directions, how positives are found."""

    kind: str  # "softmax" | "sigmoid"
    columns: bool  # also the B->A rows (symmetric softmax)
    exclude_self: bool
    ids: bool  # positives by equal ids; else the diagonal of the rank's own block
    rows: int  # tile rows
    cols: int  # tile columns


@dataclass
class Side:
    """One side of a meeting in GEMM operands: ``x`` (rows, d) in the operand dtype (``a`` scaled by
    t on the A side), ``ids`` (rows,) or None."""

    x: Tensor
    ids: Tensor | None


def tile_shape(n: int, m: int, *, budget: int, blocks: int, elem: int, chunk: int | None) -> tuple:
    """(rows, cols) of a tile: ``chunk`` x ``chunk`` when given, else about ``budget`` bytes per
    buffer with ``blocks`` buffers of ``elem`` bytes (columns first, at most 2048: a tile row is
    then a few KiB, and the row statistics stay in cache)."""
    if chunk is not None:
        return max(1, min(chunk, n)), max(1, min(chunk, m))
    cols = max(1, min(m, 2048))
    rows = max(16, budget // (blocks * elem * cols))
    rows = rows // 128 * 128 if rows >= 128 else rows
    return max(1, min(rows, n)), cols


def new_stats(spec: PairSpec, size: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Empty statistics for ``size`` rows: softmax (max, sumexp, possum, poscount), sigmoid
    (loss, poscount)."""
    if spec.kind == "softmax":
        st = torch.zeros(4, size, dtype=dtype, device=device)
        st[MAX] = torch.finfo(dtype).min  # finite: exp(min - M) = 0, never nan
        return st
    return torch.zeros(2, size, dtype=dtype, device=device)


def _self_span(i0: int, i1: int, j0: int, j1: int) -> tuple[int, int]:
    """Global indices g with (g, g) inside the tile rows [i0, i1) x cols [j0, j1)."""
    lo = max(i0, j0)
    return lo, max(lo, min(i1, j1))


def _logits(
    a: Side, b: Side, i0: int, i1: int, j0: int, j1: int, prec: Precision, bias: Tensor | None
) -> Tensor:
    x, y = a.x[i0:i1], b.x[j0:j1]
    if prec.tensor_cores:
        s = mm_f32(x, y.t())
        return s.add_(bias) if bias is not None else s
    if bias is not None:
        return torch.addmm(bias, x, y.t())
    return x @ y.t()


def _positive_mask(a: Side, b: Side, i0: int, i1: int, j0: int, j1: int) -> Tensor:
    """Bool (rows, cols): equal ids, neither ignored (-100)."""
    assert a.ids is not None and b.ids is not None
    ai = a.ids[i0:i1]
    return (ai.unsqueeze(1) == b.ids[j0:j1].unsqueeze(0)) & (ai != IGNORE_ID).unsqueeze(1)


def _merge_max_(st: Tensor, m_new: Tensor) -> Tensor:
    """st[MAX] = max(st[MAX], m_new); st[SUMEXP] rescaled; returns the new max (a view)."""
    big = torch.maximum(st[MAX], m_new)
    st[SUMEXP].mul_(torch.exp(st[MAX] - big))
    st[MAX].copy_(big)
    return st[MAX]


def forward_block(
    spec: PairSpec,
    a: Side,
    b: Side,
    own: bool,
    rows: Tensor,
    cols: Tensor | None,
    prec: Precision,
    bias: Tensor | None,
) -> None:
    """Adds the meeting of ``a`` with the block ``b`` to the row statistics ``rows`` (k, n) and,
    for symmetric softmax, to the column statistics ``cols`` (k, m_q) of the block. ``own``: the
    block is this rank's own (its diagonal holds the positives and the self pairs)."""
    n, m = a.x.shape[0], b.x.shape[0]
    excl = own and spec.exclude_self
    diag = own and not spec.ids
    lowest = torch.finfo(prec.compute).min
    for j0 in range(0, m, spec.cols):
        j1 = min(j0 + spec.cols, m)
        for i0 in range(0, n, spec.rows):
            i1 = min(i0 + spec.rows, n)
            s = _logits(a, b, i0, i1, j0, j1, prec, bias if spec.kind == "sigmoid" else None)
            g0, g1 = _self_span(i0, i1, j0, j1) if own else (0, 0)
            x = torch.arange(g0 - i0, g1 - i0, device=s.device)
            y = x + (i0 - j0)
            if excl and g1 > g0:
                s[x, y] = float("-inf")
            pos = _positive_mask(a, b, i0, i1, j0, j1) if spec.ids else None
            if pos is not None and excl and g1 > g0:
                pos[x, y] = False
            if spec.kind == "sigmoid":
                _sigmoid_forward(s, pos, diag, x, y, rows[:, i0:i1])
            else:
                _softmax_forward(
                    s,
                    pos,
                    diag,
                    x,
                    y,
                    rows[:, i0:i1],
                    cols[:, j0:j1] if cols is not None else None,
                    lowest,
                )


def _softmax_forward(
    s: Tensor,
    pos: Tensor | None,
    diag: bool,
    x: Tensor,
    y: Tensor,
    rows: Tensor,
    cols: Tensor | None,
    lowest: float,
) -> None:
    # positives first, while s holds the logits
    if pos is not None:
        ps = torch.where(pos, s, 0.0)
        rows[POSSUM].add_(ps.sum(1))
        rows[POSCOUNT].add_(pos.sum(1, dtype=s.dtype))
        if cols is not None:
            cols[POSSUM].add_(ps.sum(0))
            cols[POSCOUNT].add_(pos.sum(0, dtype=s.dtype))
        del ps
    elif diag and x.numel():
        v = s[x, y]
        rows[POSSUM].index_add_(0, x, v)
        rows[POSCOUNT].index_add_(0, x, torch.ones_like(v))
        if cols is not None:
            cols[POSSUM].index_add_(0, y, v)
            cols[POSCOUNT].index_add_(0, y, torch.ones_like(v))
    big = _merge_max_(rows, s.amax(1).clamp_(min=lowest))
    e = torch.sub(s, big.unsqueeze(1)).exp_()
    rows[SUMEXP].add_(e.sum(1))
    if cols is not None:
        bigc = _merge_max_(cols, s.amax(0).clamp_(min=lowest))
        torch.sub(s, bigc.unsqueeze(0), out=e).exp_()
        cols[SUMEXP].add_(e.sum(0))


def _sigmoid_forward(
    s: Tensor, pos: Tensor | None, diag: bool, x: Tensor, y: Tensor, rows: Tensor
) -> None:
    # -log sigmoid(y s): y = -1 off the positives. Not F.softplus, which returns x itself above
    # its threshold of 20 (an error of e^-20 per pair); -inf (excluded) gives log sigmoid(inf) = 0
    if pos is not None:
        z = torch.where(pos, s, s.neg())
        rows[POSCOUNT_SIG].add_(pos.sum(1, dtype=s.dtype))
    else:
        z = s.neg_()
        if diag and x.numel():
            z[x, y] = -z[x, y]
            rows[POSCOUNT_SIG].index_add_(
                0, x, torch.ones(x.numel(), dtype=s.dtype, device=s.device)
            )
    rows[LOSS].sub_(torch.nn.functional.logsigmoid(z).sum(1))


@dataclass
class Coef:
    """Per-row backward coefficients of one side: softmax (lse, g, w = g / K), sigmoid (g)."""

    lse: Tensor | None
    g: Tensor
    w: Tensor | None


@dataclass
class BlockGrads:
    """Gradient accumulators of one meeting, all in the compute dtype.

    ``da``: (n, d) sum_j G_ij b_j (unscaled: the caller multiplies by t). ``db``: (m_q, d)
    sum_i G_ij a_s,i (scaled). ``dt_rows``/``dt_cols``: sum G^{rows|cols}_ij s_ij (the caller divides
    by t). ``dbias``: sum_ij G_ij (sigmoid).
    """

    da: Tensor | None
    db: Tensor | None
    dt_rows: Tensor
    dt_cols: Tensor
    dbias: Tensor


def backward_block(
    spec: PairSpec,
    a: Side,
    b: Side,
    b_op: Tensor,
    own: bool,
    rc: Coef,
    cc: Coef | None,
    acc: BlockGrads,
    prec: Precision,
    bias: Tensor | None,
    want_dt_tiles: bool,
    want_dbias: bool,
) -> None:
    """Recomputes the meeting's logits tile by tile and adds its gradients to ``acc``.

    ``b_op``: the block in the operand dtype for the d a GEMM (``b.x`` itself). ``want_dt_tiles``:
    accumulate d/dt per tile (``dt_rows``/``dt_cols``; symmetric softmax, where the two directions'
    parts go to different ranks); otherwise the caller forms d/dt from ``da`` at the end.
    """
    n, m = a.x.shape[0], b.x.shape[0]
    excl = own and spec.exclude_self
    diag = own and not spec.ids
    gemm_dtype = prec.dz if prec.tensor_cores else prec.compute
    for j0 in range(0, m, spec.cols):
        j1 = min(j0 + spec.cols, m)
        for i0 in range(0, n, spec.rows):
            i1 = min(i0 + spec.rows, n)
            s = _logits(a, b, i0, i1, j0, j1, prec, bias if spec.kind == "sigmoid" else None)
            g0, g1 = _self_span(i0, i1, j0, j1) if own else (0, 0)
            x = torch.arange(g0 - i0, g1 - i0, device=s.device)
            y = x + (i0 - j0)
            if excl and g1 > g0:
                s[x, y] = float("-inf")
            pos = _positive_mask(a, b, i0, i1, j0, j1) if spec.ids else None
            if pos is not None and excl and g1 > g0:
                pos[x, y] = False
            if spec.kind == "sigmoid":
                grad = _sigmoid_grad(s, pos, diag, x, y, rc.g[i0:i1])
                if want_dbias:
                    acc.dbias.add_(grad.sum())
            else:
                grad = _softmax_grad(
                    s, pos, diag, x, y, rc, cc, i0, i1, j0, j1, acc, excl and g1 > g0, want_dt_tiles
                )
            if grad.dtype != gemm_dtype:
                grad = grad.to(gemm_dtype)
            if acc.da is not None:
                _add_mm_(acc.da[i0:i1], grad, b_op[j0:j1], prec)
            if acc.db is not None:
                _add_mm_(acc.db[j0:j1], grad.t(), a.x[i0:i1], prec)


def _add_mm_(out: Tensor, x: Tensor, y: Tensor, prec: Precision) -> None:
    if prec.tensor_cores:
        add_mm_f32_(out, x, y)
    else:
        out.addmm_(x, y)


def _softmax_grad(
    s: Tensor,
    pos: Tensor | None,
    diag: bool,
    x: Tensor,
    y: Tensor,
    rc: Coef,
    cc: Coef | None,
    i0: int,
    i1: int,
    j0: int,
    j1: int,
    acc: BlockGrads,
    has_self: bool,
    want_dt: bool,
) -> Tensor:
    assert rc.lse is not None and rc.w is not None
    g = rc.g[i0:i1]
    grad = torch.sub(s, rc.lse[i0:i1].unsqueeze(1)).exp_().mul_(g.unsqueeze(1))
    if pos is not None:
        posf = pos.to(s.dtype)
        grad.addcmul_(posf, rc.w[i0:i1].unsqueeze(1), value=-1.0)
    elif diag and x.numel():
        grad[x, y] -= rc.w[i0:i1][x]
    gc = None
    if cc is not None:
        assert cc.lse is not None and cc.w is not None
        gc = torch.sub(s, cc.lse[j0:j1].unsqueeze(0)).exp_().mul_(cc.g[j0:j1].unsqueeze(0))
        if pos is not None:
            gc.addcmul_(posf, cc.w[j0:j1].unsqueeze(0), value=-1.0)
        elif diag and x.numel():
            gc[x, y] -= cc.w[j0:j1][y]
    if want_dt:
        if has_self:
            s[x, y] = 0.0  # G = 0 there; keeps 0 * (-inf) out of the dot products
        acc.dt_rows.add_(torch.dot(grad.view(-1), s.view(-1)))
        if gc is not None:
            acc.dt_cols.add_(torch.dot(gc.view(-1), s.view(-1)))
    if gc is not None:
        grad.add_(gc)
    return grad


def _sigmoid_grad(
    s: Tensor, pos: Tensor | None, diag: bool, x: Tensor, y: Tensor, g: Tensor
) -> Tensor:
    grad = s.sigmoid_()
    if pos is not None:
        grad.sub_(pos.to(s.dtype))
    elif diag and x.numel():
        grad[x, y] -= 1.0
    return grad.mul_(g.unsqueeze(1))
