"""Row math of the fused losses, written once and shared by every engine.

Every fused loss here reduces softmax rows of mapped logits

.. math::

    z = \\mathrm{softcap}(s \\cdot r) / T, \\qquad r = x W^\\top + b

(:class:`LogitMap`), formed a block of rows at a time by an engine (``_engines``). A row math object
turns one block of raw logits ``r`` into its per-row outputs, and the same block plus upstream
gradients into d(loss)/dr. Three are defined:

* :class:`CrossEntropyRows`: ``(ce, lse)`` with class weights, ``ignore_index``, label smoothing and
  probability targets (``z_loss`` lives in the reduction, on ``lse``);
* :class:`LogProbRows`: ``(log p(target), entropy)`` for RL, with temperature and a kept set
  (top-k / top-p / an allowed-id mask);
* :class:`DistillRows`: a divergence between a teacher's and a student's rows (two heads).

Vocabulary shards. A block may hold only this rank's slice of the vocabulary (classes
``[offset, offset + V_local)`` of ``V``). Every row statistic is then formed in two steps that a
:class:`Merge` joins: the row maximum (``Merge.max``, an all-reduce MAX in vocab parallel), then
sums of terms relative to that global maximum (``Merge.sum``, an all-reduce SUM). A single process
uses :data:`LOCAL`, for which both are the identity. Gradients need no communication given the
saved per-row statistics.

Each class also has ``reference``: the same outputs from whole logits with out-of-place,
differentiable torch ops (the engine for ``torch.func`` transforms, forward-mode AD and higher-order
gradients).

Derivations live next to the lines that use them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "LOCAL",
    "CrossEntropyRows",
    "DistillRows",
    "KeptSet",
    "LogProbRows",
    "LogitMap",
    "Merge",
    "RowMath",
    "distill_blocks",
    "divergence_options",
    "logprob_blocks",
]


class Merge:
    """Joins per-row partial statistics across vocabulary shards (identity in one process)."""

    def max(self, m: Tensor) -> Tensor:
        return m

    def sum(self, cols: Tensor) -> Tensor:
        return cols


LOCAL = Merge()


def _rows(t: Tensor | float | None, i0: int, i1: int) -> Tensor | float | None:
    return t[i0:i1] if isinstance(t, Tensor) and t.dim() > 0 else t


def _col(v: Tensor | float) -> Tensor | float:
    return v.unsqueeze(1) if isinstance(v, Tensor) else v


def _finite_max(z: Tensor) -> Tensor:
    """Row maxima with -inf (all classes masked) and an empty row read as 0."""
    if z.shape[1] == 0:
        return z.new_zeros(z.shape[0])
    m = z.amax(1)
    return torch.where(torch.isfinite(m), m, 0.0)


def _lowest(z: Tensor) -> float:
    return float(torch.finfo(z.dtype).min)


def _dot_rows(a: Tensor, b: Tensor) -> Tensor:
    """sum_c a_c b_c per row, without an (n, V) temporary."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)


@dataclass(frozen=True)
class LogitMap:
    """``z = softcap(scale * r) / temperature`` of raw logits ``r``; ``cap * tanh(u / cap)``.

    ``temperature`` is a float or an (N,) tensor (one per row, in the compute dtype), never
    differentiated. ``-inf`` logits (masked classes) stay ``-inf`` without a softcap and become
    ``-cap`` with one, as ``cap * torch.tanh(x / cap)`` does.
    """

    scale: float = 1.0
    softcap: float | None = None
    temperature: Tensor | float | None = None

    @property
    def identity(self) -> bool:
        return self.scale == 1.0 and self.softcap is None and self.temperature is None

    def apply_(
        self, r: Tensor, i0: int, i1: int, keep_factor: bool
    ) -> tuple[Tensor, Tensor | None]:
        """``z`` in r's storage, and (with a softcap, when ``keep_factor``) ``1 - tanh^2``."""
        if self.scale != 1.0:
            r.mul_(self.scale)
        factor = None
        if self.softcap is not None:
            th = r.div_(self.softcap).tanh_()
            if keep_factor:
                factor = 1.0 - th.square()  # d(cap tanh(u / cap))/du
            r = th.mul_(self.softcap)
        temp = _rows(self.temperature, i0, i1)
        if temp is not None:
            r.div_(_col(temp))
        return r, factor

    def chain_(self, dz: Tensor, factor: Tensor | None, i0: int, i1: int) -> Tensor:
        """d/dr from d/dz, in place: dz * scale * (1 - tanh^2) / T."""
        if factor is not None:
            dz.mul_(factor)
        temp = _rows(self.temperature, i0, i1)
        if temp is not None:
            dz.div_(_col(temp))
        if self.scale != 1.0:
            dz.mul_(self.scale)
        return dz

    def reference(self, r: Tensor) -> Tensor:
        z = r * self.scale if self.scale != 1.0 else r
        if self.softcap is not None:
            z = self.softcap * torch.tanh(z / self.softcap)
        if self.temperature is not None:
            z = z / _col(self.temperature)
        return z


Upstream = Callable[[list[Tensor]], list[Tensor | None]]


class RowMath:
    """Interface of the row math objects (see the module docstring).

    Attributes:
        heads: number of logit heads a block holds (1, or 2 for distillation).
        n_out: number of per-row outputs.
        n_saved: columns of the per-row statistics kept between the passes of the recomputing path.
        blocks: (n, V) fp32 buffers alive at once per block of rows, for sizing the blocks.
    """

    heads = 1
    n_out = 1
    n_saved = 0
    blocks = 1

    def forward(
        self, raws: list[Tensor], i0: int, i1: int, merge: Merge
    ) -> tuple[list[Tensor], Tensor]:
        """Per-row outputs of rows ``i0:i1`` from their raw logits (overwritten), and the
        (n, n_saved) statistics :meth:`backward` needs."""
        raise NotImplementedError

    def backward(
        self,
        raws: list[Tensor],
        i0: int,
        i1: int,
        merge: Merge,
        saved: Tensor,
        grads: list[Tensor | None],
        heads: tuple[bool, ...],
    ) -> list[Tensor | None]:
        """d(sum_k grads_k . out_k)/d(raw logits) per head (None where ``heads`` says no), from
        freshly recomputed raw logits (overwritten)."""
        raise NotImplementedError

    def fused(
        self,
        raws: list[Tensor],
        i0: int,
        i1: int,
        merge: Merge,
        upstream: Upstream,
        heads: tuple[bool, ...],
    ) -> tuple[list[Tensor], list[Tensor | None]]:
        """Outputs and their gradients in one pass: ``upstream(outputs)`` gives the per-row upstream
        gradients (known in the forward pass for a scalar loss)."""
        raise NotImplementedError

    def reference(self, logits: list[Tensor]) -> list[Tensor]:
        """Per-row outputs of whole (N, V) raw logits, differentiable (single process only)."""
        raise NotImplementedError


def _zero_if_none(g: Tensor | None, like: Tensor) -> Tensor:
    return torch.zeros_like(like) if g is None else g.to(like.dtype)


# ------------------------------------------------------------------------------------------------
# Cross-entropy
#
# One row, mapped logits z, p = softmax(z), lse = logsumexp(z), per-class target coefficients a_c:
#   class id t, smoothing e, class weights w:  a_c = (1 - e) w_t [c = t] + (e / V) w_c
#   probabilities q:                           a_c = w_c ((1 - e) q_c + e / V)
#   ignored rows:                              a = 0
# ce = sum_c a_c (lse - z_c) = A lse - sum_c a_c z_c with A = sum_c a_c. For upstream gradients
# g (of ce) and h (of lse):   d/dz_c = g (A p_c - a_c) + h p_c = (g A + h) p_c - g a_c.


@dataclass
class _CEState:
    p: Tensor  # exp(z - M): the softmax times sumexp
    sumexp: Tensor
    A: Tensor
    lse: Tensor
    factor: Tensor | None


class CrossEntropyRows(RowMath):
    """Softmax cross-entropy rows ``(ce, lse)``; see the comment above for the math.

    Args:
        target: (N,) class ids (global ids in vocab parallel) or (N, V_local) probabilities.
        weight: (V_local,) class weights in the compute dtype, or None.
        ignore_index: class id of rows that count for nothing (class ids only).
        label_smoothing: e in [0, 1].
        num_classes: V, the whole vocabulary.
        lmap: the logit map (softcap, scale).
        offset: first class id of this shard.
        weight_total: sum of the class weights over the whole vocabulary (V without weights).
    """

    n_out = 2
    n_saved = 2

    def __init__(
        self,
        target: Tensor,
        *,
        weight: Tensor | None,
        ignore_index: int,
        label_smoothing: float,
        num_classes: int,
        lmap: LogitMap,
        offset: int = 0,
        weight_total: float | Tensor | None = None,
    ) -> None:
        self.target = target
        self.weight = weight
        self.ignore_index = ignore_index
        self.eps = float(label_smoothing)
        self.num_classes = num_classes
        self.lmap = lmap
        self.offset = offset
        self.is_prob = target.is_floating_point()
        if weight_total is None:
            weight_total = weight.sum() if weight is not None else float(num_classes)
        self.weight_total = weight_total
        self.blocks = 2 if lmap.softcap is not None else 1

    # per-block pieces of the target -----------------------------------------------------------
    def _ids(self, i0: int, i1: int, v_local: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(valid, inside, local column, w_t inside this shard) for class-id rows i0:i1."""
        t = self.target[i0:i1]
        valid = t != self.ignore_index
        local = t - self.offset if self.offset else t
        inside = valid & (local >= 0) & (local < v_local)
        col = torch.where(inside, local, 0).long()
        return valid, inside, col, self._w_t(inside, col)

    def _w_t(self, inside: Tensor, col: Tensor) -> Tensor:
        dtype = self.weight.dtype if self.weight is not None else torch.float32
        if self.weight is None:
            return inside.to(dtype)
        return torch.where(inside, self.weight[col], 0.0)

    def _prob_coef(self, i0: int, i1: int, dtype: torch.dtype) -> Tensor:
        q = self.target[i0:i1].to(dtype)
        if self.eps > 0.0:
            q = q * (1.0 - self.eps) + self.eps / self.num_classes
        return q * self.weight if self.weight is not None else q

    # forward ------------------------------------------------------------------------------------
    def _forward(
        self, raw: Tensor, i0: int, i1: int, merge: Merge, keep_factor: bool
    ) -> tuple[list[Tensor], _CEState]:
        z, factor = self.lmap.apply_(raw, i0, i1, keep_factor=keep_factor)
        eps, n_cls = self.eps, self.num_classes
        # shift by the (global) row max first: ce = A log(sumexp) - sum_c a_c (z_c - max) keeps
        # full precision when the logits are large (no lse - z_t cancellation)
        big_m = merge.max(_finite_max(z))
        z = z.sub_(big_m.unsqueeze(1))
        if self.is_prob:
            a = self._prob_coef(i0, i1, z.dtype)
            # sum_c a_c z_c, with 0 * (-inf) read as 0 so masked classes with no target mass are fine
            cols = [a.sum(1), torch.where(a == 0, 0.0, a * z).sum(1)]
        else:
            valid, inside, col, w_t = self._ids(i0, i1, z.shape[1])
            z_t = torch.where(inside, z.gather(1, col.unsqueeze(1)).squeeze(1), 0.0)
            cols = [w_t, torch.where(inside, w_t * z_t, 0.0)]
            if eps > 0.0:
                s_w = z @ self.weight if self.weight is not None else z.sum(1)
                cols.append(torch.where(valid, s_w, 0.0))
        e = z.exp_()
        stats = merge.sum(torch.stack([e.sum(1), *cols], 1))
        sumexp = stats[:, 0]
        log_se = sumexp.log()
        if self.is_prob:
            big_a, a_z = stats[:, 1], stats[:, 2]
        else:
            w_t, a_z = stats[:, 1], (1.0 - eps) * stats[:, 2]
            validf = valid.to(z.dtype)
            big_a = (1.0 - eps) * w_t
            if eps > 0.0:
                big_a = big_a + (eps / n_cls) * self.weight_total * validf
                a_z = a_z + (eps / n_cls) * stats[:, 3]
        ce = torch.where(big_a == 0, 0.0, big_a * log_se) - a_z
        if not self.is_prob:
            ce = torch.where(valid, ce, 0.0)
        lse = big_m + log_se
        return [ce, lse], _CEState(e, sumexp, big_a, lse, factor)

    def forward(
        self, raws: list[Tensor], i0: int, i1: int, merge: Merge
    ) -> tuple[list[Tensor], Tensor]:
        outs, st = self._forward(raws[0], i0, i1, merge, keep_factor=False)
        return outs, torch.stack([st.lse, st.A], 1)

    def fused(
        self,
        raws: list[Tensor],
        i0: int,
        i1: int,
        merge: Merge,
        upstream: Upstream,
        heads: tuple[bool, ...],
    ) -> tuple[list[Tensor], list[Tensor | None]]:
        outs, st = self._forward(raws[0], i0, i1, merge, keep_factor=heads[0])
        if not heads[0]:
            return outs, [None]
        g_ce, g_lse = upstream(outs)
        g = _zero_if_none(g_ce, st.lse)
        h = _zero_if_none(g_lse, st.lse)
        # the softmax normalisation 1 / sumexp folds into the row scale: one pass over the block
        dz = self._grad_(st.p, 1.0 / st.sumexp, st.A, g, h, i0, i1)
        return outs, [self.lmap.chain_(dz, st.factor, i0, i1)]

    # gradient -------------------------------------------------------------------------------------
    def _grad_(
        self, p: Tensor, row_scale: Tensor, big_a: Tensor, g: Tensor, h: Tensor, i0: int, i1: int
    ) -> Tensor:
        """(g A + h) p_c row_scale - g a_c, in place in ``p``."""
        eps = self.eps
        p.mul_(((g * big_a + h) * row_scale).unsqueeze(1))
        if self.is_prob:
            p.sub_(self._prob_coef(i0, i1, p.dtype) * g.unsqueeze(1))
            return p
        valid, _, col, w_t = self._ids(i0, i1, p.shape[1])
        # - g (1 - e) w_t at the target class
        p.scatter_add_(1, col.unsqueeze(1), (-(1.0 - eps) * g * w_t).unsqueeze(1))
        if eps > 0.0:
            # - g (e / V) w_c on every class of a counted row
            row = g * valid.to(p.dtype) * (eps / self.num_classes)
            if self.weight is not None:
                p.sub_(row.unsqueeze(1) * self.weight.unsqueeze(0))
            else:
                p.sub_(row.unsqueeze(1))
        return p

    def backward(
        self,
        raws: list[Tensor],
        i0: int,
        i1: int,
        merge: Merge,
        saved: Tensor,
        grads: list[Tensor | None],
        heads: tuple[bool, ...],
    ) -> list[Tensor | None]:
        z, factor = self.lmap.apply_(raws[0], i0, i1, keep_factor=True)
        lse, big_a = saved[:, 0], saved[:, 1]
        p = z.sub_(lse.unsqueeze(1)).exp_()
        g = _zero_if_none(grads[0], lse)
        h = _zero_if_none(grads[1], lse)
        dz = self._grad_(p, torch.ones_like(lse), big_a, g, h, i0, i1)
        return [self.lmap.chain_(dz, factor, i0, i1)]

    def reference(self, logits: list[Tensor]) -> list[Tensor]:
        s = self.lmap.reference(logits[0])
        lse = torch.logsumexp(s, 1)
        logp = s - lse.unsqueeze(1)
        eps, n_cls, w = self.eps, self.num_classes, self.weight
        if self.is_prob:
            a = self._prob_coef(0, s.shape[0], s.dtype)
            # 0 * log 0 = 0 on masked classes, with log p replaced first so no gradient is NaN
            ce = -(a * torch.where(a == 0, 0.0, logp)).sum(1)
            return [ce, lse]
        t = self.target
        valid = t != self.ignore_index
        col = torch.where(valid, t, 0).long()
        validf = valid.to(s.dtype)
        w_t = w[col] * validf if w is not None else validf
        ce = -(1.0 - eps) * w_t * logp.gather(1, col.unsqueeze(1)).squeeze(1)
        if eps > 0.0:
            smooth = -(logp @ w if w is not None else logp.sum(1))
            ce = ce + (eps / n_cls) * validf * smooth
        return [torch.where(valid, ce, 0.0), lse]


# ------------------------------------------------------------------------------------------------
# Log-probabilities and entropy (RL)
#
# One row, mapped logits z (temperature included), p = softmax(z), lse = logsumexp(z):
#   logp = z_t - lse,   H = lse - sum_c p_c z_c = -sum_c p_c log p_c.
# For upstream gradients g (of logp) and h (of H):
#   d logp / dz_c = [c = t] - p_c,   dH/dz_c = -p_c (z_c - sum_j p_j z_j) = -p_c (log p_c + H)
#   d/dz_c = g [c = t] - p_c (g + h (log p_c + H)).


@dataclass(frozen=True)
class KeptSet:
    """The tokens a sampler could have drawn; log-probabilities are renormalised over them.

    ``top_k`` and ``top_p`` follow vLLM's sampler (``vllm/v1/sample/ops/topk_topp_sampler.py``,
    read 2026-11): both act on the temperature-scaled logits; top-k first keeps the logits >= the
    k-th largest (ties kept); top-p then sorts the remaining probabilities in ascending order and
    drops every token whose cumulative probability is <= 1 - top_p, always keeping the largest.
    ``k >= V`` and ``p >= 1`` keep everything. ``allowed`` is an explicit (N, V) bool mask, applied
    first. Each may be per row: (N,) tensors.
    """

    top_k: Tensor | int | None = None
    top_p: Tensor | float | None = None
    allowed: Tensor | None = None

    def mask_(self, z: Tensor, i0: int, i1: int) -> Tensor:
        if self.allowed is not None:
            z.masked_fill_(~self.allowed[i0:i1], float("-inf"))
        v = z.shape[1]
        k = _rows(self.top_k, i0, i1)
        if k is not None and v > 0:
            if isinstance(k, Tensor):
                # one k per row: the k-th largest from a full sort (topk would need max(k) on the
                # host, a synchronisation)
                kk = k.clamp(1, v).long()
                kth = z.sort(1, descending=True).values.gather(1, (kk - 1).unsqueeze(1))
            else:
                kth = z.topk(min(max(int(k), 1), v), 1).values[:, -1:]
            z.masked_fill_(z < kth, float("-inf"))
        p = _rows(self.top_p, i0, i1)
        if p is not None and v > 0:
            zs, idx = z.sort(1)  # ascending
            cum = zs.softmax(1).cumsum_(1)
            drop = cum <= (1.0 - _col(p) if isinstance(p, Tensor) else 1.0 - p)
            drop[:, -1] = False  # the most likely token always stays
            z.scatter_(1, idx, zs.masked_fill_(drop, float("-inf")))
        return z


def logprob_blocks(entropy: bool, softcap: bool, kept: bool) -> int:
    """(n, V) buffers a block of :class:`LogProbRows` holds at once: the logits, plus one each for
    the entropy's exponentials, the softcap's derivative and the kept set's sort."""
    return 1 + int(entropy) + int(softcap) + int(kept)


class LogProbRows(RowMath):
    """``log p(target)`` and, with ``entropy``, the entropy of each row; see the comment above.

    Ignored rows (``target == ignore_index``) give 0 for both outputs, and no gradient.
    """

    n_saved = 2

    def __init__(
        self,
        target: Tensor,
        *,
        ignore_index: int,
        entropy: bool,
        lmap: LogitMap,
        kept: KeptSet | None = None,
        offset: int = 0,
    ) -> None:
        self.target = target
        self.ignore_index = ignore_index
        self.entropy = entropy
        self.lmap = lmap
        self.kept = kept
        self.offset = offset
        self.n_out = 2 if entropy else 1
        self.blocks = logprob_blocks(entropy, lmap.softcap is not None, kept is not None)

    def _ids(self, i0: int, i1: int, v_local: int) -> tuple[Tensor, Tensor, Tensor]:
        t = self.target[i0:i1]
        valid = t != self.ignore_index
        local = t - self.offset if self.offset else t
        inside = valid & (local >= 0) & (local < v_local)
        return valid, inside, torch.where(inside, local, 0).long()

    def _map(
        self, raw: Tensor, i0: int, i1: int, keep_factor: bool
    ) -> tuple[Tensor, Tensor | None]:
        z, factor = self.lmap.apply_(raw, i0, i1, keep_factor)
        if self.kept is not None:
            z = self.kept.mask_(z, i0, i1)
        return z, factor

    def forward(
        self, raws: list[Tensor], i0: int, i1: int, merge: Merge
    ) -> tuple[list[Tensor], Tensor]:
        z, _ = self._map(raws[0], i0, i1, keep_factor=False)
        big_m = merge.max(_finite_max(z))
        z = z.sub_(big_m.unsqueeze(1))
        valid, inside, col = self._ids(i0, i1, z.shape[1])
        z_t = torch.where(inside, z.gather(1, col.unsqueeze(1)).squeeze(1), 0.0)
        if self.entropy:
            e = z.exp()
            # after exp, -inf (masked) logits become the lowest finite value: e_c z_c is then 0
            pz = _dot_rows(e, z.clamp_(min=_lowest(z)))
            cols = [e.sum(1), z_t, pz]
        else:
            e = z.exp_()
            cols = [e.sum(1), z_t]
        stats = merge.sum(torch.stack(cols, 1))
        log_se = stats[:, 0].log()
        # rounding may put z_t - log(sumexp) a hair above 0 when p_t is ~1: log-probs never exceed 0
        logp = torch.where(valid, (stats[:, 1] - log_se).clamp_(max=0.0), 0.0)
        lse = big_m + log_se
        if self.entropy:
            ent = (log_se - stats[:, 2] / stats[:, 0]).clamp_(min=0.0)
            return [logp, torch.where(valid, ent, 0.0)], torch.stack([lse, ent], 1)
        return [logp], torch.stack([lse, torch.zeros_like(lse)], 1)

    def backward(
        self,
        raws: list[Tensor],
        i0: int,
        i1: int,
        merge: Merge,
        saved: Tensor,
        grads: list[Tensor | None],
        heads: tuple[bool, ...],
    ) -> list[Tensor | None]:
        z, factor = self._map(raws[0], i0, i1, keep_factor=True)
        lse, ent = saved[:, 0], saved[:, 1]
        valid, inside, col = self._ids(i0, i1, z.shape[1])
        validf = valid.to(z.dtype)
        g = _zero_if_none(grads[0], lse) * validf
        h_in = grads[1] if self.entropy and len(grads) > 1 else None
        logp = z.sub_(lse.unsqueeze(1))
        if h_in is None:
            dz = logp.exp_().mul_(-g.unsqueeze(1))
        else:
            h = h_in.to(z.dtype) * validf
            p = logp.exp()
            # -p (g + h (log p + H)); where p == 0 (masked or underflowed) the term is 0
            dz = logp.add_(ent.unsqueeze(1)).mul_(h.unsqueeze(1)).add_(g.unsqueeze(1))
            dz = dz.mul_(p).neg_().masked_fill_(p == 0, 0.0)
        dz.scatter_add_(1, col.unsqueeze(1), torch.where(inside, g, 0.0).unsqueeze(1))
        return [self.lmap.chain_(dz, factor, i0, i1)]

    def reference(self, logits: list[Tensor]) -> list[Tensor]:
        z = self.lmap.reference(logits[0])
        if self.kept is not None:
            with torch.no_grad():
                keep = torch.isfinite(self.kept.mask_(z.detach().clone(), 0, z.shape[0]))
            z = z.masked_fill(~keep, float("-inf"))
        logp_all = torch.log_softmax(z, 1)
        valid = self.target != self.ignore_index
        col = torch.where(valid, self.target, 0).long()
        logp = logp_all.gather(1, col.unsqueeze(1)).squeeze(1).clamp(max=0.0)
        out = [torch.where(valid, logp, 0.0)]
        if self.entropy:
            p = logp_all.exp()
            ent = -(p * torch.where(p == 0, 0.0, logp_all)).sum(1)
            out.append(torch.where(valid, ent.clamp(min=0.0), 0.0))
        return out


# ------------------------------------------------------------------------------------------------
# Distillation: a teacher head (p) and a student head (q) over the same vocabulary.
#
# With u = z / T (both sides), q = softmax(u_s), p = softmax(u_t), lq = log q, lp = log p:
#   "cross_entropy": H(p, q) = -sum p lq            d/du_s = q - p        d/du_t = -p (lq + H)
#   "kl":            KL(p||q) = sum p (lp - lq)      d/du_s = q - p        d/du_t = p (lp - lq - KL)
#   "reverse_kl":    KL(q||p) = sum q (lq - lp)      d/du_s = q (lq - lp - KL)   d/du_t = p - q
#   "jsd" (beta):    m = beta p + (1 - beta) q, J = beta KL(p||m) + (1 - beta) KL(q||m)
#       with d = lp - lq and r = lq - log m... written as rho = lq - lm, sigma = lp - lm:
#       d/du_s = (1 - beta) q (rho - sum q rho),   d/du_t = beta p (sigma - sum p sigma)
#   (Agarwal et al. 2024, "On-Policy Distillation of Language Models", eq. 1; TRL's
#   generalized_jsd_loss: beta = 0 is the forward KL and beta = 1 the reverse KL there.)
# The hard-label term CE(z_s at T = 1, target) has d/dz_s = softmax(z_s) - onehot.
# Row loss = soft_weight * T2 * divergence + hard_weight * hard CE (T2 = T^2 when asked, else 1).

DIVERGENCES = ("kl", "reverse_kl", "jsd", "cross_entropy")


def _mix_logs(d: Tensor, beta: float) -> tuple[Tensor, Tensor]:
    """``(sigma, rho) = (log p - log m, log q - log m)`` for ``d = log p - log q`` and the
    mixture ``m = beta p + (1 - beta) q``, each formed without cancellation; ``d`` is overwritten.

    With ``L = log1p(w expm1(-|d|))``, ``w = 1 - beta`` where ``d > 0`` and ``beta`` elsewhere:
    for ``d > 0``, ``log m - log p = L``, so ``sigma = -L`` and ``rho = -(d + L)``; for ``d <= 0``,
    ``log m - log q = L``, so ``sigma = d - L`` and ``rho = -L``. (Forming ``sigma`` as ``d - (d +
    L)`` instead loses ``L`` against a large ``d``: where the student gives an id almost no mass
    (or none: a -inf logit) and the teacher some, ``sigma = -log(beta)`` came out 0, off by up to
    0.04 in float64; and near beta = 1 it cost float32 about 250x the error of the direct
    formula.) Three (n, V) buffers at a time: ``d`` and two.
    """
    pos = d > 0
    big_l = torch.expm1(d.abs().neg_())
    # the weights in d's dtype (torch.where of two Python floats would be float32)
    big_l.mul_(torch.full_like(d, beta).masked_fill_(pos, 1.0 - beta)).log1p_()
    d_pos = d.clamp(min=0.0)
    sigma = d.sub_(d_pos).sub_(big_l)  # min(d, 0) - L
    rho = d_pos.add_(big_l).neg_()  # -(max(d, 0) + L)
    return sigma, rho


def divergence_options(
    divergence: str,
    beta: float,
    temperature: float,
    t2: bool,
    soft_weight: float,
    hard_weight: float,
    target: Tensor | None,
) -> tuple[str, float, float, float, float]:
    """(divergence, beta, T, soft, hard) as the distillation row maths use them: the JSD at
    beta = 0 and 1 is the forward and the reverse KL; the soft weight carries T^2 when asked;
    no hard term without targets."""
    div = divergence
    if divergence == "jsd" and beta == 0.0:
        div = "kl"
    elif divergence == "jsd" and beta == 1.0:
        div = "reverse_kl"
    t = float(temperature)
    soft = float(soft_weight) * (t**2 if t2 else 1.0)
    hard = float(hard_weight) if target is not None else 0.0
    return div, float(beta), t, soft, hard


def distill_blocks(divergence: str, beta: float, teacher_grad: bool = False) -> int:
    """(n, V) buffers a block of :class:`DistillRows` holds at once: both heads' logits, their
    exponentials, a gradient temporary, and for the JSD its mixture terms (``_mix_logs``'s d and
    its temporaries); KL and cross-entropy with a frozen teacher need three."""
    if divergence in ("kl", "cross_entropy") and not teacher_grad:
        return 3
    return 8 if divergence == "jsd" and 0.0 < beta < 1.0 else 5


class DistillRows(RowMath):
    """Per-row distillation loss between a student head (0) and a teacher head (1).

    Args:
        divergence: one of ``DIVERGENCES``.
        beta: the JSD mixture weight (``jsd`` only; 0 and 1 mean the forward and reverse KL).
        temperature: T > 0 applied to both heads' mapped logits.
        t2: multiply the divergence by T^2.
        soft_weight, hard_weight: weights of the divergence and of the hard-label CE.
        target: (N,) class ids (global) or None; rows equal to ``ignore_index`` count for nothing.
        mask: (N,) bool, rows that count, or None.
        lmaps: the student's and the teacher's logit maps (scale, softcap).
        offset: first class id of this shard (vocab parallel).

    The recomputing path keeps no statistics: its backward recomputes them from the block.
    """

    heads = 2
    n_out = 1
    n_saved = 0

    def __init__(
        self,
        *,
        divergence: str,
        beta: float,
        temperature: float,
        t2: bool,
        soft_weight: float,
        hard_weight: float,
        target: Tensor | None,
        ignore_index: int,
        mask: Tensor | None,
        lmaps: tuple[LogitMap, LogitMap],
        offset: int = 0,
    ) -> None:
        self.div, self.beta, self.temperature, self.soft, self.hard = divergence_options(
            divergence, beta, temperature, t2, soft_weight, hard_weight, target
        )
        self.target = target
        self.ignore_index = ignore_index
        self.mask = mask
        self.lmaps = lmaps
        self.offset = offset
        self.blocks = distill_blocks(divergence, beta, teacher_grad=False)

    def _valid(self, i0: int, i1: int, n: int, device: torch.device) -> Tensor:
        valid = torch.ones(n, dtype=torch.bool, device=device)
        if self.target is not None:
            valid = valid & (self.target[i0:i1] != self.ignore_index)
        if self.mask is not None:
            valid = valid & self.mask[i0:i1]
        return valid

    def _hard(
        self, zs: Tensor, i0: int, i1: int, merge: Merge, keep: bool
    ) -> tuple[Tensor, Tensor | None, Tensor, Tensor, Tensor]:
        """Hard-label CE at T = 1: (ce, exp(zs - M) or None, sumexp, inside, col)."""
        assert self.target is not None
        t = self.target[i0:i1]
        local = t - self.offset if self.offset else t
        inside = (t != self.ignore_index) & (local >= 0) & (local < zs.shape[1])
        col = torch.where(inside, local, 0).long()
        m1 = merge.max(_finite_max(zs))
        e1 = (zs - m1.unsqueeze(1)).exp_()  # zs is still needed below, at temperature T
        z_t = torch.where(inside, zs.gather(1, col.unsqueeze(1)).squeeze(1), 0.0)
        sums = merge.sum(torch.stack([e1.sum(1), z_t], 1))
        ce = m1 + sums[:, 0].log() - sums[:, 1]
        return ce, (e1 if keep else None), sums[:, 0], inside, col

    def _run(
        self,
        raws: list[Tensor],
        i0: int,
        i1: int,
        merge: Merge,
        upstream: Upstream | None,
        heads: tuple[bool, ...],
    ) -> tuple[list[Tensor], list[Tensor | None]]:
        want_s, want_t = (heads[0], heads[1]) if upstream is not None else (False, False)
        zs, fac_s = self.lmaps[0].apply_(raws[0], i0, i1, keep_factor=want_s)
        zt, fac_t = self.lmaps[1].apply_(raws[1], i0, i1, keep_factor=want_t)
        n = zs.shape[0]
        valid = self._valid(i0, i1, n, zs.device)
        hard_ce = hard_parts = None
        if self.hard != 0.0:
            hard_ce, e1, se1, inside, col = self._hard(zs, i0, i1, merge, keep=want_s)
            hard_parts = (e1, se1, inside, col)
        t = self.temperature
        us = zs.div_(t) if t != 1.0 else zs
        ut = zt.div_(t) if t != 1.0 else zt
        big = merge.max(torch.stack([_finite_max(us), _finite_max(ut)], 1))
        us.sub_(big[:, 0:1])
        ut.sub_(big[:, 1:2])
        if self.div in ("kl", "cross_entropy") and not want_t:
            return self._kl_lean(
                us, ut, fac_s, valid, hard_ce, hard_parts, i0, i1, merge, upstream, want_s
            )
        q = us.exp()
        p = ut.exp()
        # after exp, -inf (masked) logits become the lowest finite value, so that differences and
        # products with a zero probability are finite (0 where the probability is 0)
        lo = _lowest(us)
        us.clamp_(min=lo)
        ut.clamp_(min=lo)
        sums = merge.sum(torch.stack([q.sum(1), p.sum(1)], 1))
        q.div_(sums[:, 0:1])
        p.div_(sums[:, 1:2])
        lq = us.sub_(sums[:, 0].log().unsqueeze(1))  # log q (finite)
        lp = ut.sub_(sums[:, 1].log().unsqueeze(1))  # log p (finite)
        sigma = rho = None
        if self.div == "cross_entropy":
            div = -merge.sum(_dot_rows(p, lq).unsqueeze(1))[:, 0]
        elif self.div == "kl":
            div = merge.sum(_dot_rows(p, lp - lq).unsqueeze(1))[:, 0]
        elif self.div == "reverse_kl":
            div = merge.sum(_dot_rows(q, lq - lp).unsqueeze(1))[:, 0]
        else:
            beta = self.beta
            sigma, rho = _mix_logs(lp - lq, beta)  # log p - log m, log q - log m
            st = merge.sum(torch.stack([_dot_rows(p, sigma), _dot_rows(q, rho)], 1))
            div = beta * st[:, 0] + (1.0 - beta) * st[:, 1]
            kl_p, kl_q = st[:, 0], st[:, 1]
        div = div.clamp(min=0.0)
        loss = self.soft * div
        if hard_ce is not None:
            loss = loss + self.hard * hard_ce
        loss = torch.where(valid, loss, 0.0)
        if upstream is None:
            return [loss], [None, None]
        g_in = upstream([loss])[0]
        g = _zero_if_none(g_in, loss) * valid.to(loss.dtype)
        gs = g * (self.soft / t)  # the 1/T of u = z / T folds into the row scale
        col_s = gs.unsqueeze(1)
        out: list[Tensor | None] = [None, None]
        if self.div in ("kl", "cross_entropy"):
            if want_t:
                if self.div == "kl":
                    dt = (lp - lq).sub_(div.unsqueeze(1)).mul_(p)
                else:
                    dt = (lq + div.unsqueeze(1)).mul_(p).neg_()
                out[1] = dt.mul_(col_s)
            if want_s:
                out[0] = q.sub_(p).mul_(col_s)
        elif self.div == "reverse_kl":
            if want_t:
                out[1] = (p - q).mul_(col_s)
            if want_s:
                out[0] = (lq - lp).sub_(div.unsqueeze(1)).mul_(q).mul_(col_s)
        else:
            assert sigma is not None and rho is not None
            if want_t:
                out[1] = sigma.sub_(kl_p.unsqueeze(1)).mul_(p).mul_((self.beta * gs).unsqueeze(1))
            if want_s:
                ds = rho.sub_(kl_q.unsqueeze(1)).mul_(q)
                out[0] = ds.mul_(((1.0 - self.beta) * gs).unsqueeze(1))
        if want_s:
            ds0 = out[0]
            assert ds0 is not None
            if self.hard != 0.0:
                assert e1 is not None
                gh = g * self.hard
                # d(hard ce)/dz_s = softmax(z_s) - onehot(t), times the row's weight
                e1.mul_((gh / se1).unsqueeze(1))
                e1.scatter_add_(1, col.unsqueeze(1), torch.where(inside, -gh, 0.0).unsqueeze(1))
                ds0.add_(e1)
            out[0] = self.lmaps[0].chain_(ds0, fac_s, i0, i1)
        if want_t and out[1] is not None:
            out[1] = self.lmaps[1].chain_(out[1], fac_t, i0, i1)
        return [loss], out

    def _kl_lean(
        self,
        us: Tensor,
        ut: Tensor,
        fac_s: Tensor | None,
        valid: Tensor,
        hard_ce: Tensor | None,
        hard_parts: tuple[Tensor | None, Tensor, Tensor, Tensor] | None,
        i0: int,
        i1: int,
        merge: Merge,
        upstream: Upstream | None,
        want_s: bool,
    ) -> tuple[list[Tensor], list[Tensor | None]]:
        """KL(p||q) or H(p, q) with a frozen teacher in three (n, V) buffers (the general path
        holds five): with e = exp(u_t) and s_p = sum e,

            H(p, q) = log sum exp(u_s) - (e . u_s) / s_p
            KL(p||q) = (e . u_t - e . u_s) / s_p - log s_p + log sum exp(u_s)

        (exactly 0 for identical heads), and d/du_s = q - p is formed in u_t's buffer once the
        dot products no longer need it. ``us``, ``ut``: the shifted, tempered logits.
        """
        e = ut.exp()
        lo = _lowest(us)
        us.clamp_(min=lo)  # -inf (masked) -> lowest finite: e . u is then 0 there, not NaN
        ut.clamp_(min=lo)
        cols = [e.sum(1), _dot_rows(e, us)]
        if self.div == "kl":
            cols.append(_dot_rows(e, ut))
        sums = merge.sum(torch.stack(cols, 1))
        q = torch.exp(us, out=ut)  # u_t is no longer needed
        sq = merge.sum(q.sum(1).unsqueeze(1))[:, 0]
        sp, e_us = sums[:, 0], sums[:, 1]
        if self.div == "kl":
            div = (sums[:, 2] - e_us) / sp - sp.log() + sq.log()
        else:
            div = sq.log() - e_us / sp
        div = div.clamp(min=0.0)
        loss = self.soft * div
        if hard_ce is not None:
            loss = loss + self.hard * hard_ce
        loss = torch.where(valid, loss, 0.0)
        if upstream is None or not want_s:
            return [loss], [None, None]
        g_in = upstream([loss])[0]
        g = _zero_if_none(g_in, loss) * valid.to(loss.dtype)
        gs = g * (self.soft / self.temperature)
        # q / sum q - p, times the row's weight: in q's buffer
        ds = q.div_(sq.unsqueeze(1)).sub_(e.div_(sp.unsqueeze(1))).mul_(gs.unsqueeze(1))
        if hard_parts is not None:
            e1, se1, inside, col = hard_parts
            assert e1 is not None
            gh = g * self.hard
            e1.mul_((gh / se1).unsqueeze(1))
            e1.scatter_add_(1, col.unsqueeze(1), torch.where(inside, -gh, 0.0).unsqueeze(1))
            ds.add_(e1)
        return [loss], [self.lmaps[0].chain_(ds, fac_s, i0, i1), None]

    def forward(
        self, raws: list[Tensor], i0: int, i1: int, merge: Merge
    ) -> tuple[list[Tensor], Tensor]:
        outs, _ = self._run(raws, i0, i1, merge, None, (False, False))
        return outs, outs[0].new_empty(outs[0].shape[0], 0)

    def backward(
        self,
        raws: list[Tensor],
        i0: int,
        i1: int,
        merge: Merge,
        saved: Tensor,
        grads: list[Tensor | None],
        heads: tuple[bool, ...],
    ) -> list[Tensor | None]:
        return self._run(raws, i0, i1, merge, lambda _: grads, heads)[1]

    def fused(
        self,
        raws: list[Tensor],
        i0: int,
        i1: int,
        merge: Merge,
        upstream: Upstream,
        heads: tuple[bool, ...],
    ) -> tuple[list[Tensor], list[Tensor | None]]:
        return self._run(raws, i0, i1, merge, upstream, heads)

    def reference(self, logits: list[Tensor]) -> list[Tensor]:
        zs = self.lmaps[0].reference(logits[0])
        zt = self.lmaps[1].reference(logits[1])
        n = zs.shape[0]
        valid = self._valid(0, n, n, zs.device)
        t = self.temperature
        lq = torch.log_softmax(zs / t, 1)
        lp = torch.log_softmax(zt / t, 1)
        q, p = lq.exp(), lp.exp()

        def xlogy_sum(a: Tensor, b: Tensor) -> Tensor:
            # sum a * b with 0 where a == 0 (b may be infinite there), gradients included
            return (a * torch.where(a == 0, 0.0, b)).sum(1)

        if self.div == "cross_entropy":
            div = -xlogy_sum(p, lq)
        elif self.div == "kl":
            div = xlogy_sum(p, lp - lq)
        elif self.div == "reverse_kl":
            div = xlogy_sum(q, lq - lp)
        else:
            lm = torch.logsumexp(
                torch.stack([lq + math.log(1.0 - self.beta), lp + math.log(self.beta)]), 0
            )
            div = self.beta * xlogy_sum(p, lp - lm) + (1.0 - self.beta) * xlogy_sum(q, lq - lm)
        loss = self.soft * div
        if self.hard != 0.0 and self.target is not None:
            tv = self.target != self.ignore_index
            col = torch.where(tv, self.target, 0).long()
            ce = -torch.log_softmax(zs, 1).gather(1, col.unsqueeze(1)).squeeze(1)
            loss = loss + self.hard * torch.where(tv, ce, 0.0)
        return [torch.where(valid, loss, 0.0)]
