"""``linear_distillation_loss``: a divergence between a teacher's and a student's output heads,
without either side's logits.

Built on the row math ``_rowmath.DistillRows`` and the two-head chunked engine: each block of rows
forms the student's and the teacher's logits for the same positions, reduces them to a per-row
divergence (and, for ``mean``/``sum``/``batchmean``, its gradients), and drops them.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from crossentropy.torch import _distill_topk, _pass
from crossentropy.torch import _validation as V
from crossentropy.torch.engine import _dispatch as D
from crossentropy.torch.engine._gemm import resolve_precision
from crossentropy.torch.engine._rowmath import DIVERGENCES, distill_blocks
from crossentropy.torch.engine._run import PreparedCall
from crossentropy.torch.parallel import _dtensor

__all__ = [
    "DIVERGENCES",
    "linear_distillation_loss",
]

REDUCTIONS = ("mean", "sum", "none", "batchmean")


def _flag(fn: str, name: str, value: object) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{fn}: {name} must be a bool; got {value!r}")
    return bool(value)


def _nonneg(fn: str, name: str, value: object) -> float:
    f = V._real(fn, name, value)
    if not (math.isfinite(f) and f >= 0.0):
        raise ValueError(f"{fn}: {name} must be a finite number >= 0; got {value!r}")
    return f


def _positive(fn: str, name: str, value: object) -> float:
    f = V._real(fn, name, value)
    if not (math.isfinite(f) and f > 0.0):
        raise ValueError(f"{fn}: {name} must be a finite number > 0; got {value!r}")
    return f


def _head(
    fn: str, side: str, hidden: object, weight: object, bias: object
) -> tuple[Tensor, Tensor, Tensor | None]:
    h = V._check_tensor(fn, f"{side}_input", hidden)
    w = V._check_tensor(fn, f"{side}_linear_weight", weight)
    V._check_float(fn, f"{side}_input", h)
    V._check_float(fn, f"{side}_linear_weight", w)
    if w.dim() != 2:
        raise ValueError(f"{fn}: {side}_linear_weight must have shape (V, D); got {tuple(w.shape)}")
    if h.dim() == 0 or h.shape[-1] != w.shape[1]:
        raise ValueError(
            f"{fn}: {side}_input must have shape (..., {w.shape[1]}) to match {side}_linear_weight "
            f"{tuple(w.shape)}; got {tuple(h.shape)}"
        )
    b = None
    if bias is not None:
        b = V._check_tensor(fn, f"{side}_linear_bias", bias)
        V._check_float(fn, f"{side}_linear_bias", b)
        if b.shape != (w.shape[0],):
            raise ValueError(
                f"{fn}: {side}_linear_bias must have shape ({w.shape[0]},); got {tuple(b.shape)}"
            )
    return h, w, b


def _prepare(fn: str, args: tuple[Any, ...], kw: dict[str, Any], group: Any) -> PreparedCall:
    s_hidden, s_weight, t_hidden, t_weight = args
    if group is not None and kw["vocab_size"] is not None:
        raise ValueError(
            f"{fn}: vocab_size is not supported with process_group (shard the heads instead)"
        )
    divergence = kw["divergence"]
    if divergence not in DIVERGENCES:
        raise ValueError(
            f"{fn}: divergence must be one of {', '.join(map(repr, DIVERGENCES))}; got {divergence!r}"
        )
    beta = V._real(fn, "beta", kw["beta"])
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"{fn}: beta must lie in [0, 1]; got {kw['beta']!r}")
    if divergence != "jsd" and beta != 0.5:
        raise ValueError(
            f"{fn}: beta applies to divergence='jsd' only; got beta={beta} with {divergence!r}"
        )
    reduction = kw["reduction"]
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(
            f"{fn}: reduction must be one of {', '.join(map(repr, REDUCTIONS))}; got {reduction!r}"
        )
    V.check_impl(fn, kw["impl"])
    temperature = _positive(fn, "temperature", kw["temperature"])
    t2 = _flag(fn, "t2_scaling", kw["t2_scaling"])
    teacher_grad = _flag(fn, "teacher_requires_grad", kw["teacher_requires_grad"])
    soft, hard = (
        _nonneg(fn, "soft_weight", kw["soft_weight"]),
        _nonneg(fn, "hard_weight", kw["hard_weight"]),
    )
    caps = {}
    scales = {}
    for side in ("student", "teacher"):
        _, _, _, cap = V.check_options(
            fn, ignore_index=-100, label_smoothing=0.0, z_loss=0.0, softcap=kw[f"{side}_softcap"]
        )
        caps[side] = cap
        scales[side] = _positive(fn, f"{side}_logit_scale", kw[f"{side}_logit_scale"])
    ignore = V._integer(fn, "ignore_index", kw["ignore_index"])
    chunk = V.check_chunk_size(fn, kw["chunk_size"])
    mem = D.check_memory(fn, kw["memory"])
    hs, ws, bs = _head(fn, "student", s_hidden, s_weight, kw["student_linear_bias"])
    ht, wt, bt = _head(fn, "teacher", t_hidden, t_weight, kw["teacher_linear_bias"])
    shape = tuple(hs.shape[:-1])
    if tuple(ht.shape[:-1]) != shape:
        raise ValueError(
            f"{fn}: student_input and teacher_input must cover the same positions; got leading "
            f"shapes {shape} and {tuple(ht.shape[:-1])}"
        )
    vs, vt = ws.shape[0], wt.shape[0]
    vocab_size = kw["vocab_size"]
    if vocab_size is None:
        if vs != vt:
            raise ValueError(
                f"{fn}: the student's vocabulary has {vs} classes and the teacher's {vt}; pass "
                f"vocab_size=K to compare the first K ids of both (e.g. a student head padded past "
                "the tokenizer's vocabulary), or use heads of one size"
            )
    else:
        k = V._integer(fn, "vocab_size", vocab_size)
        if not 1 <= k <= min(vs, vt):
            raise ValueError(
                f"{fn}: vocab_size must lie in [1, {min(vs, vt)}] (student {vs}, teacher {vt}); "
                f"got {vocab_size!r}"
            )
        # the first K rows: views, no copies
        ws, wt = ws[:k], wt[:k]
        bs = bs[:k] if bs is not None else None
        bt = bt[:k] if bt is not None else None
    vocab = ws.shape[0]
    t_flat, m_flat, valid = V.distillation_positions(
        fn, kw["target"], kw["mask"], shape, ignore, hard
    )
    tw = V.check_token_weight(fn, kw["token_weight"], shape, math.prod(shape))
    d_s, d_t = hs.shape[-1], ht.shape[-1]
    xs, xt = hs.reshape(-1, d_s), ht.reshape(-1, d_t)
    if not teacher_grad:
        # a frozen teacher: no gradient work at all on its side
        xt, wt = xt.detach(), wt.detach()
        bt = bt.detach() if bt is not None else None
    prec = resolve_precision(
        xs.device, *(t.dtype if t is not None else None for t in (xs, ws, bs, xt, wt, bt))
    )
    params: dict[str, Any] = {
        "divergence": divergence,
        "beta": beta,
        "temperature": temperature,
        "t2": t2,
        "soft_weight": soft,
        "hard_weight": hard,
        "ignore_index": ignore,
        "s_softcap": caps["student"],
        "t_softcap": caps["teacher"],
        "s_scale": scales["student"],
        "t_scale": scales["teacher"],
    }
    slots: dict[str, Tensor | None] = {
        "x": xs,
        "w": ws,
        "b": bs,
        "x2": xt,
        "w2": wt,
        "b2": bt,
        "target": t_flat,
        "mask": m_flat,
    }
    return PreparedCall(
        fn=fn,
        math="distill",
        kind="linear",
        slots=slots,
        params=params,
        prec=prec,
        reduction=reduction,
        out_shape=shape,
        vocab=vocab,
        blocks=distill_blocks(divergence, beta, teacher_grad),
        impl=kw["impl"],
        memory=mem,
        chunk_size=chunk,
        dtypes_ok=None if prec.compute == torch.float32 else f"{prec.compute} inputs",
        triton_rows_ok="no Triton row kernel for distillation: torch row math",
        composable=V.composable_reason(xs, ws, bs, xt, wt, bt),
        id_range=vocab if t_flat is not None and hard > 0.0 else None,
        valid=valid,
        batch=shape[0] if shape else 1,
        token_weight=tw,
    )


@D.register_planner("linear_distillation_loss")
def _plan(*args: Any, **kwargs: Any) -> D.Plan:
    kw = {**_DEFAULTS, **kwargs}
    if kw.get("teacher_topk_ids") is not None:
        names = ("student_input", "student_linear_weight", "teacher_input", "teacher_linear_weight")
        return _distill_topk.plan_from_linear_distillation_loss({**dict(zip(names, args)), **kw})
    if kw["process_group"] is not None:
        return D.Plan(
            "linear_distillation_loss",
            "vocab-parallel",
            "fused" if kw["reduction"] != "none" else "rows",
            reasons=("process_group given: vocab parallel over the torch engine",),
        )
    return D.plan_call(_prepare("linear_distillation_loss", args, kw, None))


_DEFAULTS: dict[str, Any] = dict(
    beta=0.5,
    temperature=1.0,
    t2_scaling=False,
    student_linear_bias=None,
    teacher_linear_bias=None,
    student_softcap=None,
    teacher_softcap=None,
    student_logit_scale=1.0,
    teacher_logit_scale=1.0,
    target=None,
    ignore_index=-100,
    mask=None,
    token_weight=None,
    soft_weight=1.0,
    hard_weight=0.0,
    reduction="mean",
    vocab_size=None,
    teacher_requires_grad=False,
    process_group=None,
    impl="auto",
    memory="auto",
    chunk_size=None,
)


def linear_distillation_loss(
    student_input: Tensor,
    student_linear_weight: Tensor,
    teacher_input: Tensor | None = None,
    teacher_linear_weight: Tensor | None = None,
    *,
    divergence: str,
    beta: float = 0.5,
    temperature: float = 1.0,
    t2_scaling: bool = False,
    student_linear_bias: Tensor | None = None,
    teacher_linear_bias: Tensor | None = None,
    student_softcap: float | None = None,
    teacher_softcap: float | None = None,
    student_logit_scale: float = 1.0,
    teacher_logit_scale: float = 1.0,
    target: Tensor | None = None,
    ignore_index: int = -100,
    mask: Tensor | None = None,
    token_weight: Tensor | None = None,
    soft_weight: float = 1.0,
    hard_weight: float = 0.0,
    reduction: str = "mean",
    vocab_size: int | None = None,
    teacher_requires_grad: bool = False,
    process_group: Any = None,
    impl: str = "auto",
    memory: str | int = "auto",
    chunk_size: int | None = None,
    teacher_topk_ids: Tensor | None = None,
    teacher_topk_logprobs: Tensor | None = None,
    topk: str | None = None,
) -> Tensor:
    r"""Distillation loss between two linear heads' next-token distributions, without logits.

    Each side's mapped logits are :math:`z = \mathrm{softcap}(s\,(h W^\top + b))` (its own softcap
    and logit scale); with :math:`u = z / T` on both sides, :math:`p = \mathrm{softmax}(u_t)`
    (teacher) and :math:`q = \mathrm{softmax}(u_s)` (student), per position:

    .. math::

        \mathrm{kl} = \mathrm{KL}(p \,\|\, q), \quad
        \mathrm{reverse\_kl} = \mathrm{KL}(q \,\|\, p), \quad
        \mathrm{cross\_entropy} = H(p, q) = -\sum_c p_c \log q_c,

        \mathrm{jsd}_\beta = \beta\, \mathrm{KL}(p \,\|\, m) + (1 - \beta)\, \mathrm{KL}(q \,\|\, m),
        \quad m = \beta p + (1 - \beta) q

    the generalised Jensen-Shannon divergence of Agarwal et al. 2024 ("On-Policy Distillation of
    Language Models: Learning from Self-Generated Mistakes", eq. 1) as TRL's GKD defines it:
    ``beta=0`` is the forward KL(p || q) and ``beta=1`` the reverse KL(q || p) there (the limits of
    the formula itself are 0), and so here. The position's loss is
    ``soft_weight * (T^2 if t2_scaling) * divergence + hard_weight * CE(z_s, target)``, the hard
    term at temperature 1 (Hinton et al. 2015 scale the soft term by T^2; that is asked for
    explicitly here, never a hidden default). The defaults are the divergence alone: nothing
    is mixed in silently.

    Reductions: ``"none"`` (per position, 0 where not counted), ``"sum"``, ``"mean"`` (over
    counted positions), ``"batchmean"`` (sum divided by the size of the first dimension of the
    hidden states, ignored positions included, as ``torch.nn.functional.kl_div`` does). The same
    name means another number in TRL: its GKD ``batchmean`` with labels divides by the counted
    (non-ignored) tokens, which is ``"mean"`` here; without labels both divide by the batch.
    Positions count unless ``target == ignore_index`` or ``mask`` is False there.

    Vocabularies: the two heads must have the same number of classes, or ``vocab_size=K`` compares
    the first K ids of both (renormalised over them): the documented way to drop a student head's
    padding past the tokenizer's vocabulary. Ids masked with ``-inf`` logits (through a bias) on
    both sides count for nothing; identical teacher and student give exactly 0 (up to the
    divergence being 0 in floating point: it is computed from differences of log-probabilities).

    Gradients reach the student's hidden states, weight and bias. The teacher is frozen (no
    gradient work on its side) unless ``teacher_requires_grad=True`` (co-training). For ``mean``,
    ``sum`` and ``batchmean`` the gradients are formed while each block exists (the student's
    three GEMMs and the teacher's one); ``none`` recomputes the blocks in the backward pass.

    Args:
        student_input: (..., D_s) hidden states of the student.
        student_linear_weight: (V, D_s) the student's output head.
        teacher_input: (..., D_t) hidden states of the teacher, same positions.
        teacher_linear_weight: (V, D_t) the teacher's output head.
        divergence: ``"kl"``, ``"reverse_kl"``, ``"jsd"`` or ``"cross_entropy"`` (required).
        beta: the JSD mixture weight in [0, 1] (``jsd`` only).
        temperature: T > 0 applied to both sides.
        t2_scaling: multiply the divergence by T^2.
        student_linear_bias, teacher_linear_bias: (V,) or None.
        student_softcap, teacher_softcap: each side's soft-cap c > 0, or None.
        student_logit_scale, teacher_logit_scale: each side's logit scale s > 0.
        target: (...) class ids for the hard-label term and for ``ignore_index``, or None.
        ignore_index: target value of positions that do not count.
        mask: (...) bool, True where a position counts, or None.
        token_weight: (...) per-position loss weights, or None: each position's loss is
            multiplied by its weight; ``mean`` divides by the sum of the counted positions'
            weights (see :func:`~crossentropy.torch.cross_entropy`); ``batchmean`` still by the
            batch size. NaN and inf are refused.
        soft_weight, hard_weight: weights of the divergence and of the hard-label CE (>= 0).
        reduction: ``"mean"``, ``"sum"``, ``"none"`` or ``"batchmean"``.
        vocab_size: compare the first K ids of both heads, or None (sizes must match).
        teacher_requires_grad: also return gradients to the teacher's inputs.
        process_group: both heads' weights (and biases) are this rank's shards of the vocabulary,
            split the same way; hidden states and targets are identical on every rank.
        impl, memory, chunk_size: as in :func:`linear_cross_entropy`. The two heads' GEMMs use one
            operand dtype, the wider of the two sides'.
        teacher_topk_ids, teacher_topk_logprobs: (..., k) the teacher as its saved top-k ids and
            log-probabilities (vLLM's ``logprobs=k``) instead of its head: pass None for
            ``teacher_input`` and ``teacher_linear_weight``; see
            :func:`crossentropy.torch._distill_topk.linear_topk_distillation_loss`.
        topk: with the top-k teacher, ``"tail"`` (k + 1 bins, the default) or
            ``"renormalized"`` (both sides restricted to the k ids).

    Returns:
        The loss, float32 (float64 for float64 inputs): a scalar, or the positions' shape for
        ``none``.

    Example:
        >>> import torch
        >>> from crossentropy.torch import linear_distillation_loss
        >>> g = torch.Generator().manual_seed(0)
        >>> hs, Ws = torch.randn(6, 8, generator=g), torch.randn(20, 8, generator=g)
        >>> ht, Wt = torch.randn(6, 16, generator=g), torch.randn(20, 16, generator=g)
        >>> loss = linear_distillation_loss(hs, Ws, ht, Wt, divergence="kl", temperature=2.0)
        >>> p = torch.softmax(ht @ Wt.T / 2, -1)
        >>> ref = (p * (p.log() - torch.log_softmax(hs @ Ws.T / 2, -1))).sum(-1).mean()
        >>> bool(torch.allclose(loss, ref, atol=1e-6))
        True
        >>> float(linear_distillation_loss(hs, Ws, hs, Ws, divergence="jsd", beta=0.3))
        0.0
    """
    if teacher_topk_ids is not None or teacher_topk_logprobs is not None or topk is not None:
        # the teacher as saved top-k log-probabilities: every argument, by name, to _distill_topk
        return _distill_topk.from_linear_distillation_loss(locals())
    fn = "linear_distillation_loss"
    if teacher_input is None or teacher_linear_weight is None:
        raise TypeError(
            f"{fn}: the teacher is needed: teacher_input and teacher_linear_weight (its hidden "
            "states and head), or teacher_topk_ids and teacher_topk_logprobs (its saved top-k)"
        )
    kw: dict[str, Any] = dict(
        divergence=divergence,
        beta=beta,
        temperature=temperature,
        t2_scaling=t2_scaling,
        student_linear_bias=student_linear_bias,
        teacher_linear_bias=teacher_linear_bias,
        student_softcap=student_softcap,
        teacher_softcap=teacher_softcap,
        student_logit_scale=student_logit_scale,
        teacher_logit_scale=teacher_logit_scale,
        target=target,
        ignore_index=ignore_index,
        mask=mask,
        token_weight=token_weight,
        soft_weight=soft_weight,
        hard_weight=hard_weight,
        reduction=reduction,
        vocab_size=vocab_size,
        teacher_requires_grad=teacher_requires_grad,
        process_group=process_group,
        impl=impl,
        memory=memory,
        chunk_size=chunk_size,
    )
    heads = (student_input, student_linear_weight, teacher_input, teacher_linear_weight)
    rowwise = (target, mask, token_weight)
    if _dtensor.any_dtensor((*heads, student_linear_bias, teacher_linear_bias, *rowwise)):
        return _dtensor.dtensor_call(  # type: ignore[no-any-return]  # FSDP2 / tensor parallel
            linear_distillation_loss,
            _dtensor.LINEAR_DISTILLATION,
            dict(
                zip(
                    (
                        "student_input",
                        "student_linear_weight",
                        "teacher_input",
                        "teacher_linear_weight",
                    ),
                    heads,
                ),
                **kw,
            ),
        )
    if process_group is not None:
        fn = f"{fn}(process_group=...)"
    # a partial, not a closure: this function hands its locals() to the top-k path, which
    # torch.compile cannot do while a closure cell is unbound
    return _pass.execute(  # type: ignore[no-any-return]
        fn, functools.partial(_prepare, fn, heads, kw), process_group
    )
