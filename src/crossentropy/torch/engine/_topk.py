"""Row math of distillation from a teacher's saved top-k log-probabilities (one head: the student's).

The teacher is given per row as ``k`` class ids and their log-probabilities ``lp_i = log p_i``
under its full distribution (as vLLM and SGLang return them); the student's row is a block of
mapped logits ``z`` (:class:`~crossentropy.torch.engine._rowmath.LogitMap`), ``u = z / T`` and
``q = softmax(u)``. ``K`` is the row's set of kept ids: the given ids minus those the public side
dropped (ids past ``vocab_size``, marked ``-1``); ``P = sum_K p_i``, ``Q = sum_K q_i``.

Two ways to compare the distributions (``mode``):

* ``"tail"``: ``k + 1`` bins, the kept ids and one bin for every other class. The teacher's bins
  are ``(p_K, 1 - P)``, the student's ``(q_K, 1 - Q)``; the divergence between them is exact for
  these coarse-grained distributions, and a lower bound on the full one for KL, reverse KL and
  the JSD (data-processing inequality). When the student has no class outside ``K`` (k = V, or
  the others masked with -inf logits) there is no tail bin: the teacher's ``1 - P`` is then
  rounding, or mass on ids the student lacks, and both sides are compared on ``K`` alone
  (teacher renormalised), as in ``"renormalized"``.
* ``"renormalized"``: both restricted to ``K`` and renormalised: ``p_i / P`` and ``q_i / Q``.

Divergences of bin distributions ``a`` (teacher) and ``b`` (student), as in ``DistillRows``:
``kl`` = KL(a||b), ``reverse_kl`` = KL(b||a), ``cross_entropy`` = H(a, b), ``jsd`` (beta) the
generalised JSD. Rows whose compared distributions are undefined (no kept id in renormalised
mode; no tail and no teacher mass on ``K``) give 0.

Memory per block of n rows: the (n, V) logits buffer, exponentiated and turned into d(logits) in
place (plus the softcap's derivative, and for the hard-label term at T != 1 in tail mode its own
exponentials); everything else is (n, k). Per logit element the tail mode does what softmax-CE
does (a max, an exp, a sum, a scale); the renormalised mode only zeroes the buffer (its gradient
lives on ``K``). No host synchronisation; single process only (no vocabulary shards).
"""

from __future__ import annotations

import torch
from torch import Tensor

from crossentropy.torch.engine._rowmath import (
    LogitMap,
    Merge,
    RowMath,
    Upstream,
    _finite_max,
    _zero_if_none,
    divergence_options,
)

__all__ = [
    "TOPK_MODES",
    "TopKDistillRows",
    "topk_blocks",
]

TOPK_MODES = ("tail", "renormalized")

_NEG_INF = float("-inf")


def topk_blocks(mode: str, softcap: bool, hard: bool, temperature: float) -> int:
    """(n, V) buffers a block of :class:`TopKDistillRows` holds at once (see the module docstring)."""
    return 1 + int(softcap) + int(hard and mode == "tail" and temperature != 1.0)


def _safe_mul(w: Tensor, keep: Tensor, x: Tensor) -> Tensor:
    """``w * x`` where ``keep``, else 0; ``x`` is replaced before the product so an infinite or
    NaN ``x`` outside ``keep`` reaches neither the value nor a gradient."""
    return w * torch.where(keep, x, 0.0)


def bin_divergence(
    div: str, beta: float, la: Tensor, lb: Tensor, a: Tensor, b: Tensor, grad: bool
) -> tuple[Tensor, Tensor | None]:
    """Per-row divergence between bin distributions ``a`` (teacher) and ``b`` (student) given
    with their logs (``-inf`` for empty bins; 0 log 0 = 0), and with ``grad`` also
    ``g_j = dD/d(log b_j)`` for every bin. Differentiable (the reference path uses the value).

    Since sum_j b_j = 1, terms proportional to b_j contribute nothing to d/du (their sum over the
    bins is d(sum_j b_j)/du = 0); each gradient below subtracts one where that keeps the numbers
    small, as ``DistillRows`` does:
      kl, cross_entropy:  g_j = -a_j
      reverse_kl:         g_j = b_j (log b_j - log a_j + 1)     -> b_j (lb_j - la_j - D)
      jsd:                g_j = (1 - beta) b_j log(b_j / m_j)  -> (1 - beta) b_j (rho_j - KL(b||m))
    (d/db_j of beta KL(a||m) + (1 - beta) KL(b||m) is (1 - beta) log(b_j / m_j): the
    -beta (1 - beta) a_j / m_j and -(1 - beta)^2 b_j / m_j terms add up to -(1 - beta).)
    """
    apos, bpos = a > 0, b > 0
    g: Tensor | None = None
    if div in ("kl", "cross_entropy"):
        value = _safe_mul(a, apos, la - lb if div == "kl" else -lb).sum(1)
        if grad:
            g = -a
        return value, g
    if div == "reverse_kl":
        d = torch.where(bpos, lb - la, 0.0)
        value = (b * d).sum(1)
        if grad:
            g = b * (d - value.unsqueeze(1))
        return value, g
    # m = beta a + (1 - beta) b; bins empty on both sides take m = 1 (their terms are 0), so
    # that the log's gradient is not 0 * inf there
    m = beta * a + (1.0 - beta) * b
    lm = torch.log(torch.where(apos | bpos, m, 1.0))
    rho = torch.where(bpos, lb - lm, 0.0)  # log(b / m)
    kl_a = _safe_mul(a, apos, la - lm).sum(1)
    kl_b = (b * rho).sum(1)
    if grad:
        g = (1.0 - beta) * b * (rho - kl_b.unsqueeze(1))
    return beta * kl_a + (1.0 - beta) * kl_b, g


class _Teacher:
    """Per-row statistics of the teacher's top-k, formed once per call for all N rows (they do
    not depend on the student): log p and p on the kept ids (-inf and 0 elsewhere), log P, and
    the tail 1 - P with its log (P may exceed 1 by the tolerance: the tail is then 0)."""

    def __init__(self, logprobs: Tensor, kept: Tensor) -> None:
        self.lp = torch.where(kept, logprobs, _NEG_INF)
        self.p = self.lp.exp()
        big_p = self.p.sum(1)
        self.log_p = big_p.log()
        self.tail = (1.0 - big_p).clamp(min=0.0)
        # log(1 - P) = log(-expm1(log P)), accurate also when P is near 0
        self.log_tail = torch.log(-torch.expm1(self.log_p.clamp(max=0.0)))


def _softmax_k(lu_k: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(exp(lu_k - m), its row sums, their logsumexp) of logits with -inf at dropped entries;
    the logsumexp is -inf for a row with nothing kept."""
    m = _finite_max(lu_k)
    e = (lu_k - m.unsqueeze(1)).exp()
    s = e.sum(1)
    some = s > 0  # the log of a stand-in 1 where the sum is 0, for a finite gradient
    return e, s, torch.where(some, m + torch.where(some, s, 1.0).log(), _NEG_INF)


class TopKDistillRows(RowMath):
    """Per-row loss ``soft * (T^2 if t2) * divergence + hard * CE(z, target)`` against a
    teacher's top-k log-probabilities; see the module docstring for the math.

    Args:
        ids: (N, k) int64 kept class ids, ``-1`` where an id was dropped (past ``vocab_size``) or
            the row does not count.
        logprobs: (N, k) the teacher's log-probabilities in the compute dtype.
        mode: ``"tail"`` or ``"renormalized"``.
        divergence, beta, temperature, t2, soft_weight, hard_weight: as in ``DistillRows``.
        target: (N,) class ids for the hard-label term and ``ignore_index``, or None.
        ignore_index: target value of rows that count for nothing.
        mask: (N,) bool, rows that count, or None.
        lmap: the student's logit map (scale, softcap; no temperature: T is applied here).
    """

    heads = 1
    n_out = 1
    n_saved = 0

    def __init__(
        self,
        *,
        ids: Tensor,
        logprobs: Tensor,
        mode: str,
        divergence: str,
        beta: float,
        temperature: float,
        t2: bool,
        soft_weight: float,
        hard_weight: float,
        target: Tensor | None,
        ignore_index: int,
        mask: Tensor | None,
        lmap: LogitMap,
    ) -> None:
        if mode not in TOPK_MODES:
            raise ValueError(f"unknown top-k mode {mode!r}")
        self.ids = ids
        self.logprobs = logprobs
        self.mode = mode
        self.div, self.beta, self.temperature, self.soft, self.hard = divergence_options(
            divergence, beta, temperature, t2, soft_weight, hard_weight, target
        )
        self.target = target
        self.ignore_index = ignore_index
        self.mask = mask
        self.lmap = lmap
        self.blocks = topk_blocks(
            mode, lmap.softcap is not None, self.hard != 0.0, self.temperature
        )
        n = ids.shape[0]
        self.valid = self._valid(0, n, n, ids.device)
        self.kept = (ids >= 0) & self.valid.unsqueeze(1)
        # dropped entries read class 0 and later add 0 to it: a no-op, whatever class 0 is
        self.idx = ids.clamp(min=0)
        self.teacher = _Teacher(logprobs, self.kept)

    def _valid(self, i0: int, i1: int, n: int, device: torch.device) -> Tensor:
        valid = torch.ones(n, dtype=torch.bool, device=device)
        if self.target is not None:
            valid = valid & (self.target[i0:i1] != self.ignore_index)
        if self.mask is not None:
            valid = valid & self.mask[i0:i1]
        return valid

    def _bins(
        self,
        i0: int,
        i1: int,
        lu_k: Tensor,
        e_k: Tensor,
        s_k: Tensor,
        lse_k: Tensor,
        tail: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(la, lb, a, b, lse, live) of rows i0:i1: both sides' bins (k, or k + 1 with the tail
        last) as logs and probabilities, the student's log-normaliser, and the rows whose
        comparison is defined. Every quantity a row that is not live would divide by is
        replaced first, so that no gradient is NaN (the reference path differentiates this).

        ``lu_k``: the student's tempered logits at the kept ids (-inf elsewhere); ``e_k``,
        ``s_k``, ``lse_k``: :func:`_softmax_k` of them; ``tail``: the logsumexp of the tempered
        logits outside K (tail mode; -inf when there is no such class).
        """
        th = self.teacher
        lp_k, p_k, log_p = th.lp[i0:i1], th.p[i0:i1], th.log_p[i0:i1]
        some_k = s_k > 0
        s_safe = torch.where(some_k, s_k, 1.0)
        if tail is None:  # renormalised: softmax over K on both sides
            live = (log_p > _NEG_INF) & some_k
            col = live.unsqueeze(1)
            r_p = torch.where(live, log_p, 0.0)
            la = torch.where(col, lp_k - r_p.unsqueeze(1), _NEG_INF)
            a = torch.where(col, p_k * torch.exp(-r_p).unsqueeze(1), 0.0)
            lse = torch.where(live, lse_k, 0.0)
            lb = torch.where(col, lu_k - lse.unsqueeze(1), _NEG_INF)
            b = torch.where(col, e_k / s_safe.unsqueeze(1), 0.0)
            return la, lb, a, b, lse_k, live
        has_tail = tail > _NEG_INF
        live = has_tail | (log_p > _NEG_INF)
        lse = torch.logaddexp(tail, lse_k)
        lse_safe = torch.where(has_tail | some_k, lse, 0.0)
        # q_i = e_i exp(lse_K - lse) / s_K, and log(1 - Q) from the tail's own sum: neither
        # subtracts Q from 1, so neither loses precision when K holds nearly all the mass
        lse_k_safe = torch.where(some_k, lse_k, lse_safe)
        q_scale = torch.where(some_k, torch.exp(lse_k_safe - lse_safe) / s_safe, 0.0)
        b_k = e_k * q_scale.unsqueeze(1)
        lb_k = lu_k - lse_safe.unsqueeze(1)
        lb_t = torch.where(has_tail, tail - lse_safe, _NEG_INF)
        # the teacher: (p_K, 1 - P); without a tail bin, p_K renormalised (1 - P has nowhere
        # to go: rounding, or mass on ids the student lacks)
        r_p = torch.where(has_tail | ~live, 0.0, log_p)
        la_k = lp_k - r_p.unsqueeze(1)
        a_k = p_k * torch.exp(-r_p).unsqueeze(1)
        la_t = torch.where(has_tail, th.log_tail[i0:i1], _NEG_INF)
        a_t = torch.where(has_tail, th.tail[i0:i1], 0.0)
        la = torch.cat([la_k, la_t.unsqueeze(1)], 1)
        lb = torch.cat([lb_k, lb_t.unsqueeze(1)], 1)
        a = torch.cat([a_k, a_t.unsqueeze(1)], 1)
        b = torch.cat([b_k, lb_t.exp().unsqueeze(1)], 1)
        return la, lb, a, b, lse, live

    def _hard(self, z: Tensor, col: Tensor, in_place: bool) -> tuple[Tensor, Tensor, Tensor]:
        """Hard-label CE at T = 1 of the mapped logits ``z``: (ce, exp(z - M), sum of it)."""
        z_t = z.gather(1, col).squeeze(1)
        m1 = _finite_max(z)
        e1 = z.sub_(m1.unsqueeze(1)) if in_place else z - m1.unsqueeze(1)
        e1 = e1.exp_()
        se1 = e1.sum(1)
        return m1 + se1.log() - z_t, e1, se1

    def _run(
        self,
        raws: list[Tensor],
        i0: int,
        i1: int,
        upstream: Upstream | None,
        heads: tuple[bool, ...],
    ) -> tuple[list[Tensor], list[Tensor | None]]:
        want = heads[0] if upstream is not None else False
        z, fac = self.lmap.apply_(raws[0], i0, i1, keep_factor=want)
        valid = self.valid[i0:i1]
        kept = self.kept[i0:i1]
        idx = self.idx[i0:i1]
        t = self.temperature
        tail_mode = self.mode == "tail"
        hard = self.hard != 0.0
        # the hard term folds into the tail's pass when u = z (T = 1); else it has its own pass
        fold = hard and tail_mode and t == 1.0
        col = None
        if hard:
            assert self.target is not None
            # counted rows' targets are class ids (checked at the boundary)
            col = torch.where(valid, self.target[i0:i1], 0).long().unsqueeze(1)
        u_k = z.gather(1, idx)
        if t != 1.0:
            u_k = u_k / t
        lu_k = torch.where(kept, u_k, _NEG_INF)
        e_k, s_k, lse_k = _softmax_k(lu_k)
        hard_ce = e1 = se1 = None
        z_t = None
        tail = m_t = tsum = e = None
        if tail_mode:
            if hard and not fold:
                hard_ce, e1, se1 = self._hard(z, col, in_place=False)  # type: ignore[arg-type]
            u = z.div_(t) if t != 1.0 else z
            if fold:
                z_t = u.gather(1, col).squeeze(1)  # type: ignore[arg-type]
            # The tail: every class outside K. Its logits are set to -inf at K (adding -inf
            # there, 0 at dropped entries), its own max taken, so its sum of exponentials is
            # >= 1 whenever the tail has a finite logit: log(1 - Q) never underflows, however
            # much of the mass K holds.
            u.scatter_add_(1, idx, torch.where(kept, _NEG_INF, 0.0).to(u.dtype))
            m_t = _finite_max(u)
            e = u.sub_(m_t.unsqueeze(1)).exp_()  # exp(u_c - m_t) on the tail, 0 on K
            tsum = e.sum(1)
            tail = m_t + tsum.log()
        elif hard:
            # the full row serves the hard term alone (u_K is gathered): in place
            hard_ce, e1, se1 = self._hard(z, col, in_place=True)  # type: ignore[arg-type]
        la, lb, a, b, lse, live = self._bins(i0, i1, lu_k, e_k, s_k, lse_k, tail)
        div, g = bin_divergence(self.div, self.beta, la, lb, a, b, grad=want)
        div = torch.where(live, div, 0.0).clamp(min=0.0)  # >= 0 but for rounding
        loss = self.soft * div
        if fold:
            assert z_t is not None
            hard_ce = lse - z_t  # u = z: the student's full log-normaliser
        if hard_ce is not None:
            loss = loss + self.hard * hard_ce
        loss = torch.where(valid, loss, 0.0)
        if upstream is None or not want:
            return [loss], [None]

        assert g is not None
        g_up = _zero_if_none(upstream([loss])[0], loss) * valid.to(loss.dtype)
        gs = g_up * (self.soft / t)  # the soft term's weight, with du/dz = 1/T folded in
        g = torch.where(live.unsqueeze(1), g, 0.0)
        k = idx.shape[1]
        g_k = g[:, :k]  # 0 on bins outside K (a = b = 0 there)
        big_g = g_k.sum(1)
        b_k = b[:, :k]
        if tail_mode:
            assert e is not None and tsum is not None and m_t is not None
            # With D a function of the bins' log-probabilities and g_j = dD/d(log b_j):
            #   d log q_i / du_c = [c = i] - q_c                           (i in K)
            #   d log(1 - Q) / du_c = -q_c ([c in K] - Q) / (1 - Q)
            # so dD/du_c = sum_i g_i ([c = i] - q_c) - g_t q_c ([c in K] - Q) / (1 - Q):
            #   c outside K: q_c (-G) + g_t Q q_c / (1 - Q),   G = sum_K g_i
            #   c in K:      g_c + q_c (-G - g_t)
            # On the tail q_c = e_c s with s = exp(m_t - lse), and q_c / (1 - Q) = e_c / tsum
            # (the tail's own softmax): no division by 1 - Q, which may be 0 or inexact.
            g_t = g[:, k]
            has_tail = tsum > 0
            s = torch.where(has_tail, torch.exp(m_t - lse), 0.0)
            big_q = b_k.sum(1)
            tail_coef = torch.where(has_tail, g_t * big_q / tsum.clamp(min=1.0), 0.0)
            coef = gs * (tail_coef - big_g * s)
            vals = gs.unsqueeze(1) * (g_k + b_k * (-big_g - g_t).unsqueeze(1))
            if fold:
                # + hard (q_c - [c = t]) at T = 1: q_c = e_c s on the tail, q_i on K
                gh = g_up * self.hard
                coef = coef + gh * s
                vals = vals + gh.unsqueeze(1) * b_k
            dz = e.mul_(coef.unsqueeze(1))  # e is 0 on K: the K entries are exactly vals
        else:
            # b_i = q_i / Q depends on u_K alone: dD/du_c = g_c - b_c G on K, 0 elsewhere
            vals = gs.unsqueeze(1) * (g_k - b_k * big_g.unsqueeze(1))
            dz = z.zero_() if e1 is None else e1  # e1 (z's buffer) is scaled below first
        if hard:
            assert col is not None
            gh = g_up * self.hard
            if not fold:
                assert e1 is not None and se1 is not None
                # d(hard CE)/dz = softmax(z) - onehot(target), times the row's weight
                hard_dz = e1.mul_((gh / se1).unsqueeze(1))
                if hard_dz is not dz:
                    dz.add_(hard_dz)
            dz.scatter_add_(1, col, torch.where(valid, -gh, 0.0).unsqueeze(1))
        dz.scatter_add_(1, idx, torch.where(kept, vals, 0.0))
        return [loss], [self.lmap.chain_(dz, fac, i0, i1)]

    def forward(
        self, raws: list[Tensor], i0: int, i1: int, merge: Merge
    ) -> tuple[list[Tensor], Tensor]:
        outs, _ = self._run(raws, i0, i1, None, (False,))
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
        return self._run(raws, i0, i1, lambda _: grads, heads)[1]

    def fused(
        self,
        raws: list[Tensor],
        i0: int,
        i1: int,
        merge: Merge,
        upstream: Upstream,
        heads: tuple[bool, ...],
    ) -> tuple[list[Tensor], list[Tensor | None]]:
        return self._run(raws, i0, i1, upstream, heads)

    def reference(self, logits: list[Tensor]) -> list[Tensor]:
        z = self.lmap.reference(logits[0])
        n = z.shape[0]
        idx = self.idx
        u = z / self.temperature
        lu_k = torch.where(self.kept, u.gather(1, idx), _NEG_INF)
        e_k, s_k, lse_k = _softmax_k(lu_k)
        tail = None
        if self.mode == "tail":
            in_k = torch.zeros_like(u).scatter_add_(1, idx, self.kept.to(u.dtype)) > 0
            outside = ~in_k & (u > _NEG_INF)
            has_tail = outside.any(1, keepdim=True)
            # rows without a tail take a finite stand-in, so the logsumexp's gradient is not NaN
            ut = torch.where(outside, u, _NEG_INF).masked_fill(~has_tail, 0.0)
            tail = torch.where(has_tail.squeeze(1), torch.logsumexp(ut, 1), _NEG_INF)
        la, lb, a, b, _, live = self._bins(0, n, lu_k, e_k, s_k, lse_k, tail)
        div, _ = bin_divergence(self.div, self.beta, la, lb, a, b, grad=False)
        loss = self.soft * torch.where(live, div, 0.0)
        if self.hard != 0.0 and self.target is not None:
            col = torch.where(self.valid, self.target, 0).long().unsqueeze(1)
            ce = -torch.log_softmax(z, 1).gather(1, col).squeeze(1)
            loss = loss + self.hard * ce
        return [torch.where(self.valid, loss, 0.0)]
