"""``linear_distillation_loss``: a divergence between a teacher's and a student's output heads,
without either side's logits.

Built on the row math ``_rowmath.DistillRows`` and the two-head chunked engine: each block of rows
forms the student's and the teacher's logits for the same positions, reduces them to a per-row
divergence (and, for ``mean``/``sum``/``batchmean``, its gradients), and drops them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from crossentropy.torch import _distill_topk
from crossentropy.torch import _validation as V
from crossentropy.torch.engine import _dispatch as D
from crossentropy.torch.engine import _ops
from crossentropy.torch.engine._chunked import block_rows
from crossentropy.torch.engine._gemm import resolve_precision
from crossentropy.torch.engine._rowmath import DIVERGENCES, distill_blocks
from crossentropy.torch.parallel import _dtensor as _sharded

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
    h = V._check_tensor(fn, f"{side}_hidden", hidden)
    w = V._check_tensor(fn, f"{side}_weight", weight)
    V._check_float(fn, f"{side}_hidden", h)
    V._check_float(fn, f"{side}_weight", w)
    if w.dim() != 2:
        raise ValueError(f"{fn}: {side}_weight must have shape (V, D); got {tuple(w.shape)}")
    if h.dim() == 0 or h.shape[-1] != w.shape[1]:
        raise ValueError(
            f"{fn}: {side}_hidden must have shape (..., {w.shape[1]}) to match {side}_weight "
            f"{tuple(w.shape)}; got {tuple(h.shape)}"
        )
    b = None
    if bias is not None:
        b = V._check_tensor(fn, f"{side}_bias", bias)
        V._check_float(fn, f"{side}_bias", b)
        if b.shape != (w.shape[0],):
            raise ValueError(
                f"{fn}: {side}_bias must have shape ({w.shape[0]},); got {tuple(b.shape)}"
            )
    return h, w, b


class _Prepared:
    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)

    plan: D.Plan
    params: dict[str, Any]
    slots: dict[str, Tensor | None]
    shape: tuple[int, ...]
    reduction: str
    valid: Tensor | None
    n_rows: int
    batch: int


def _prepare(fn: str, args: tuple[Any, ...], kw: dict[str, Any]) -> _Prepared:
    s_hidden, s_weight, t_hidden, t_weight = args
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
    hs, ws, bs = _head(fn, "student", s_hidden, s_weight, kw["student_bias"])
    ht, wt, bt = _head(fn, "teacher", t_hidden, t_weight, kw["teacher_bias"])
    shape = tuple(hs.shape[:-1])
    if tuple(ht.shape[:-1]) != shape:
        raise ValueError(
            f"{fn}: student_hidden and teacher_hidden must cover the same positions; got leading "
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
    target = kw["target"]
    if hard > 0.0 and target is None:
        raise ValueError(f"{fn}: hard_weight > 0 needs target (the hard labels)")
    t_flat = None
    if target is not None:
        t = V._check_tensor(fn, "target", target)
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"{fn}: target must hold integer class ids; got dtype {t.dtype}")
        if tuple(t.shape) != shape:
            raise ValueError(
                f"{fn}: target must have shape {shape} (the positions); got {tuple(t.shape)}"
            )
        t_flat = t.reshape(-1)
    mask = kw["mask"]
    m_flat = None
    if mask is not None:
        m = V._check_tensor(fn, "mask", mask)
        if m.dtype != torch.bool or tuple(m.shape) != shape:
            raise ValueError(
                f"{fn}: mask must be a bool tensor of shape {shape} (True where a position counts); "
                f"got {m.dtype} of shape {tuple(m.shape)}"
            )
        m_flat = m.reshape(-1)
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
    blocks = distill_blocks(divergence, beta, teacher_grad)
    plan = D.plan(
        fn,
        kind="linear",
        device=xs.device,
        prec=prec,
        dtypes_ok=None if prec.compute == torch.float32 else f"{prec.compute} inputs",
        impl=kw["impl"],
        memory=mem,
        scalar=reduction != "none",
        composable=V.composable_reason(xs, ws, bs, xt, wt, bt),
        process_group=kw["process_group"],
        native_ok=None,
        triton_rows_ok="no Triton row kernel for distillation: torch row math",
        rows=xs.shape[0],
        vocab=vocab,
        blocks=blocks,
        chunk_size=chunk,
    )
    valid = None
    if t_flat is not None:
        valid = t_flat != ignore
    if m_flat is not None:
        valid = m_flat if valid is None else valid & m_flat
    return _Prepared(
        plan=plan,
        params=params,
        slots=slots,
        shape=shape,
        reduction=reduction,
        valid=valid,
        n_rows=xs.shape[0],
        batch=shape[0] if shape else 1,
    )


def _coefficients(prep: _Prepared, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Per-row weights of the scalar loss: sum, mean over counted rows, or / batch size."""
    n = prep.n_rows
    if prep.reduction == "sum":
        return torch.ones(1, n, dtype=dtype, device=device)
    if prep.reduction == "batchmean":
        return torch.full((1, n), 1.0 / max(prep.batch, 1), dtype=dtype, device=device)
    if prep.valid is None:
        return torch.full((1, n), 1.0 / max(n, 1), dtype=dtype, device=device)
    count = prep.valid.sum().to(dtype)
    return (1.0 / torch.where(count > 0, count, 1.0)).expand(1, n)


def _run(prep: _Prepared, group_name: str = "") -> Tensor:
    plan = prep.plan
    assert plan.precision is not None
    target = prep.slots["target"]
    w = prep.slots["w"]
    assert w is not None
    if target is not None and not group_name:
        ids_ok = prep.params["hard_weight"] > 0.0
        if ids_ok:
            V.check_target_values(
                "linear_distillation_loss", target, w.shape[0], prep.params["ignore_index"]
            )
    call = _ops.Call(
        "distill",
        tuple(sorted(prep.params.items())),
        plan.precision,
        plan.chunk or 1,
        group=group_name,
    )
    if plan.engine == "plain":
        (rows,) = _ops.reference_outputs(call, {**dict.fromkeys(_ops.SLOTS), **prep.slots})
    elif prep.reduction == "none":
        (rows,) = _ops.call_rows(call, prep.slots)
    else:
        x = prep.slots["x"]
        assert x is not None
        lin = _coefficients(prep, plan.precision.compute, x.device)
        loss, _ = _ops.call_fused(call, prep.slots, lin, None)
        return loss
    if prep.reduction == "none":
        return rows.reshape(prep.shape)
    lin = _coefficients(prep, rows.dtype, rows.device)[0]
    return (rows * lin).sum()


@D.register_planner("linear_distillation_loss")
def _plan(*args: Any, **kwargs: Any) -> D.Plan:
    return _prepare("linear_distillation_loss", args, {**_DEFAULTS, **kwargs}).plan


_DEFAULTS: dict[str, Any] = dict(
    beta=0.5,
    temperature=1.0,
    t2_scaling=False,
    student_bias=None,
    teacher_bias=None,
    student_softcap=None,
    teacher_softcap=None,
    student_logit_scale=1.0,
    teacher_logit_scale=1.0,
    target=None,
    ignore_index=-100,
    mask=None,
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
    student_hidden: Tensor,
    student_weight: Tensor,
    teacher_hidden: Tensor,
    teacher_weight: Tensor,
    *,
    divergence: str,
    beta: float = 0.5,
    temperature: float = 1.0,
    t2_scaling: bool = False,
    student_bias: Tensor | None = None,
    teacher_bias: Tensor | None = None,
    student_softcap: float | None = None,
    teacher_softcap: float | None = None,
    student_logit_scale: float = 1.0,
    teacher_logit_scale: float = 1.0,
    target: Tensor | None = None,
    ignore_index: int = -100,
    mask: Tensor | None = None,
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
    counted positions: TRL's GKD ``batchmean`` with labels), ``"batchmean"`` (sum divided by the
    size of the first dimension of the hidden states, as ``torch.nn.functional.kl_div``).
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
        student_hidden: (..., D_s) hidden states of the student.
        student_weight: (V, D_s) the student's output head.
        teacher_hidden: (..., D_t) hidden states of the teacher, same positions.
        teacher_weight: (V, D_t) the teacher's output head.
        divergence: ``"kl"``, ``"reverse_kl"``, ``"jsd"`` or ``"cross_entropy"`` (required).
        beta: the JSD mixture weight in [0, 1] (``jsd`` only).
        temperature: T > 0 applied to both sides.
        t2_scaling: multiply the divergence by T^2.
        student_bias, teacher_bias: (V,) or None.
        student_softcap, teacher_softcap: each side's soft-cap c > 0, or None.
        student_logit_scale, teacher_logit_scale: each side's logit scale s > 0.
        target: (...) class ids for the hard-label term and for ``ignore_index``, or None.
        ignore_index: target value of positions that do not count.
        mask: (...) bool, True where a position counts, or None.
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
            ``teacher_hidden`` and ``teacher_weight``; see
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
    kw: dict[str, Any] = dict(
        divergence=divergence,
        beta=beta,
        temperature=temperature,
        t2_scaling=t2_scaling,
        student_bias=student_bias,
        teacher_bias=teacher_bias,
        student_softcap=student_softcap,
        teacher_softcap=teacher_softcap,
        student_logit_scale=student_logit_scale,
        teacher_logit_scale=teacher_logit_scale,
        target=target,
        ignore_index=ignore_index,
        mask=mask,
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
    heads = (student_hidden, student_weight, teacher_hidden, teacher_weight)
    if _sharded.any_dtensor((*heads, student_bias, teacher_bias, target, mask)):
        return _sharded.dtensor_call(  # type: ignore[no-any-return]  # FSDP2 / tensor parallel
            linear_distillation_loss,
            _sharded.LINEAR_DISTILLATION,
            dict(
                zip(
                    ("student_hidden", "student_weight", "teacher_hidden", "teacher_weight"), heads
                ),
                **kw,
            ),
        )
    if process_group is None:
        return _run(_prepare(fn, heads, kw))
    return _vocab_parallel(fn, heads, kw)


def _vocab_parallel(fn: str, args: tuple[Any, ...], kw: dict[str, Any]) -> Tensor:
    from crossentropy.torch.parallel import _vocab as VP

    fn = f"{fn}(process_group=...)"

    def prepare() -> tuple[_Prepared, dict[str, int]]:
        if kw["vocab_size"] is not None:
            raise ValueError(
                f"{fn}: vocab_size is not supported with process_group (shard the heads instead)"
            )
        prep = _prepare(fn, args, kw)
        ws, wt = prep.slots["w"], prep.slots["w2"]
        x = prep.slots["x"]
        assert ws is not None and wt is not None and x is not None
        opts = VP.options_hash(*(v for _, v in sorted(prep.params.items())), prep.reduction)
        fields = VP.shard_fields(
            v_local=ws.shape[0],
            x=x,
            batch_shape=prep.shape,
            target=prep.slots["target"],
            ignore_index=int(prep.params["ignore_index"]),
            grad_tensors=[x, ws, prep.slots["b"], prep.slots["x2"], wt],
            options=opts,
        )
        return prep, fields

    first = args[0] if isinstance(args[0], Tensor) else None
    group, prep, layout = VP.agree_shards(
        fn, kw["process_group"], "linear_distillation_loss", prepare, first
    )
    prep.params["offset"] = layout.offset
    if kw["chunk_size"] is None:
        x = prep.slots["x"]
        assert x is not None
        budget = D.budget_bytes(D.check_memory(fn, kw["memory"]), x.device)
        blocks = distill_blocks(
            kw["divergence"], float(kw["beta"]), bool(kw["teacher_requires_grad"])
        )
        chunk = block_rows(x.shape[0], layout.v_max, budget=budget * blocks, blocks=blocks)
        prep.plan = dataclasses.replace(prep.plan, chunk=chunk)
    return _run(prep, group_name=group.group_name)
