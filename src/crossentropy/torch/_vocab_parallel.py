"""Vocab-parallel (tensor-parallel) cross-entropy over ``torch.distributed``.

Each rank of a process group holds a contiguous shard of the vocabulary, in rank order: rank ``r``
owns classes ``[offset_r, offset_r + V_r)`` with ``offset_r = V_0 + ... + V_{r-1}``. Shards may be
uneven; their sizes are gathered once per call. Targets hold *global* class ids and are the same on
every rank. The full ``N x V`` logits never exist anywhere: each rank computes statistics of its own
``N x V_r`` slice and the ranks combine per-row numbers only.

Forward, per row (all in fp32, or fp64 for fp64 inputs), with ``z`` the (soft-capped) logits::

    lse_r   = logsumexp of this rank's z                       (local)
    M       = max_r lse_r                                      all-reduce MAX, N floats
    S       = sum_r exp(lse_r - M),  z[target],  w[target],    all-reduce SUM, N x k floats
              sum_c w_c z_c (label smoothing),
              sum_c w_c t'_c and sum_c w_c t'_c z_c (probability targets)
    lse     = M + log S

so a call costs one small all-gather of metadata plus two all-reduces of ``N`` and ``N x k`` floats
(``k <= 4``), whatever the vocabulary size. The backward of :func:`vocab_parallel_cross_entropy`
needs no communication (each rank owns the gradient of its own logits); the backward of
:func:`vocab_parallel_linear_cross_entropy` all-reduces ``dL/d input`` (``N x D``), because every
rank's shard contributes a partial sum ``dz_r @ W_r`` to it, while ``dL/d linear_weight`` and
``dL/d linear_bias`` stay local to their shard.

Memory per rank: the logits path keeps the caller's ``N x V_r`` logits and builds fp32 copies one
chunk of rows at a time; the linear path never holds more than ``chunk_size x V_r`` logits (forward
and backward recompute them chunk by chunk), so logits memory per rank scales as ``1 / world``.

Before anything can diverge, every rank all-gathers a small int64 metadata vector (shard size,
feature size, row count, a hash of the targets, every argument). Local input errors are carried in
it too, so bad input raises ``ValueError`` (or the local ``TypeError``) on *every* rank instead of
leaving the others waiting in a collective.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, overload

import torch
import torch.distributed as dist
from torch import Tensor

from crossentropy.torch import _validation as V
from crossentropy.torch._reduce import Counts, CrossEntropyAux, reduce_rows
from crossentropy.torch._rows import (
    _compute_dtype,
    autocast_off,
    default_chunk_size,
    first_order_only,
)

__all__ = [
    "vocab_parallel_cross_entropy",
    "vocab_parallel_linear_cross_entropy",
]

_REDUCTIONS = V.REDUCTIONS
_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)
_CALL_LOGITS = 0x5643_4531  # "VCE1": tells the ranks apart if they call different functions
_CALL_LINEAR = 0x564C_4531  # "VLE1"


# ----------------------------------------------------------------------------------------------
# Argument checks (local; their errors travel through the metadata exchange). The generic ones
# are the single-process layer's; these add what only a shard needs.


def _check_options(
    fn: str,
    ignore_index: Any,
    reduction: Any,
    label_smoothing: Any,
    z_loss: Any,
    softcap: Any,
    impl: Any,
) -> tuple[int, float, float, float | None]:
    V.check_reduction(fn, reduction)
    V.check_impl(fn, impl)
    if impl == "triton":
        V.kernel_fallback(fn, "process_group (vocab parallel)")
    return V.check_options(
        fn,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
    )


def _check_shard(
    fn: str,
    rows: V.Rows,
    v_local: int,
    ignore_index: int,
    weight: Any,
    tensors: dict[str, Tensor | None],
) -> Tensor | None:
    """Checks the single-process layer does not need: dtypes, devices, the weight shard."""
    if v_local < 1:
        raise ValueError(f"{fn}: this rank's shard of the vocabulary is empty (V_local = 0)")
    device = tensors["input"].device if tensors["input"] is not None else None
    for name, t in tensors.items():
        if t is not None and t.dtype not in _DTYPES:
            raise TypeError(
                f"{fn}: {name} must be float64, float32, bfloat16 or float16; got {t.dtype}"
            )
    for name, t in {**tensors, "target": rows.target, "weight": weight}.items():
        if isinstance(t, Tensor) and t.device != device:
            raise ValueError(f"{fn}: {name} is on {t.device} but input is on {device}")
    if rows.is_prob:
        V.check_prob_ignore_index(fn, ignore_index)
    if weight is not None and isinstance(weight, Tensor) and weight.shape != (v_local,):
        raise ValueError(
            f"{fn}: weight must be this rank's shard of the class weights, shape (V_local,) = "
            f"({v_local},); got shape {tuple(weight.shape)}"
        )
    return V.check_weight(fn, weight, v_local)


# ----------------------------------------------------------------------------------------------
# Metadata exchange: the one collective every rank runs before anything can diverge


def _float_bits(x: float) -> int:
    return int(struct.unpack("<q", struct.pack("<d", float(x)))[0])


def _bits_float(b: int) -> float:
    return float(struct.unpack("<d", struct.pack("<q", int(b)))[0])


def _shape_hash(shape: tuple[int, ...]) -> int:
    h = len(shape)
    for d in shape:
        h = (h * 1_000_003 + d) % (1 << 61)
    return h


# Fields every rank must agree on (name, is a float stored as bits).
_AGREED = (
    ("features", False),
    ("rows", False),
    ("batch_shape", False),
    ("target_kind", False),
    ("reduction", False),
    ("ignore_index", False),
    ("label_smoothing", True),
    ("z_loss", True),
    ("softcap", True),
    ("has_weight", False),
    ("has_bias", False),
    ("dtype", False),
    ("grad_flags", False),
    ("target_hash", False),
)
_FIELDS = (
    "call",
    "error",
    "v_local",
    "target_min",
    "target_max",
    "weight_sum",
    *(name for name, _ in _AGREED),
)


@dataclass(frozen=True)
class _Layout:
    rank: int
    world: int
    offset: int
    v_local: int
    v_total: int
    weight_sum: float  # sum of the class weights over the whole vocabulary (V without weights)


def _collective_device(group: dist.ProcessGroup, like: Tensor | None) -> torch.device:
    backend = str(dist.get_backend(group))
    if "nccl" in backend and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if like is not None and "gloo" not in backend:
        return like.device
    return torch.device("cpu")


def _check_group(fn: str, process_group: Any) -> dist.ProcessGroup:
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError(f"{fn}: process_group was given but torch.distributed is not initialized")
    if not isinstance(process_group, dist.ProcessGroup):
        raise TypeError(
            f"{fn}: process_group must be a torch.distributed.ProcessGroup; got "
            f"{type(process_group).__name__}"
        )
    if dist.get_rank(process_group) < 0:
        raise ValueError(f"{fn}: this process is not a member of process_group")
    return process_group


def _agree(
    fn: str,
    group: dist.ProcessGroup,
    call: int,
    fields: dict[str, int] | None,
    error: BaseException | None,
    like: Tensor | None,
) -> _Layout:
    """All-gather the metadata of every rank and raise the same kind of error on all of them."""
    row = dict.fromkeys(_FIELDS, 0)
    row["call"] = call
    if error is not None or fields is None:
        row["error"] = 1
    else:
        row.update(fields)
    device = _collective_device(group, like)
    mine = torch.tensor([row[k] for k in _FIELDS], dtype=torch.int64, device=device)
    world = dist.get_world_size(group)
    gathered = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(gathered, mine, group=group)
    table = [dict(zip(_FIELDS, t.tolist())) for t in gathered]
    rank = dist.get_rank(group)

    calls = {r["call"] for r in table}
    if len(calls) > 1:
        raise ValueError(
            f"{fn}: the ranks of the process group called different vocab-parallel functions "
            "(cross_entropy on some, linear_cross_entropy on others); every rank must make the "
            "same call"
        )
    if error is not None:
        raise error
    bad = [i for i, r in enumerate(table) if r["error"]]
    if bad:
        raise ValueError(
            f"{fn}: rank(s) {bad} of the process group rejected their input (their own error "
            "message says why); no rank computed the loss"
        )
    for name, is_float in _AGREED:
        values = [r[name] for r in table]
        if len(set(values)) > 1:
            if name == "target_hash":
                raise ValueError(
                    f"{fn}: the ranks passed different target class ids; in tensor parallelism "
                    "every rank must pass the same (global) targets"
                )
            shown: list[Any] = [_bits_float(v) if is_float else v for v in values]
            if name == "dtype" and call == _CALL_LINEAR:
                shown = [f"input {_DTYPES[v % 4]} / weight {_DTYPES[v // 4]}" for v in values]
            elif name == "dtype":
                shown = [_DTYPES[v] for v in values]
            elif name == "reduction":
                shown = [_REDUCTIONS[v] for v in values]
            what = {
                "features": "the feature size D of input and linear_weight",
                "rows": "the number of rows (positions) in input and target",
                "batch_shape": "the batch shape of input and target",
                "grad_flags": "which tensors require grad (or whether grad mode is on)",
                "dtype": "the dtypes of the inputs",
            }.get(name, name)
            per_rank = ", ".join(f"rank {i}: {v}" for i, v in enumerate(shown))
            raise ValueError(
                f"{fn}: the ranks disagree on {what} ({per_rank}); every rank of the process "
                "group must pass the same arguments and the same targets"
            )
    sizes = [r["v_local"] for r in table]
    v_total = sum(sizes)
    tmin = min(r["target_min"] for r in table)
    tmax = max(r["target_max"] for r in table)
    if tmin <= tmax and (tmin < 0 or tmax >= v_total):
        badval = tmin if tmin < 0 else tmax
        raise ValueError(
            f"{fn}: target holds class id {badval}, outside the global vocabulary [0, {v_total}) "
            f"formed by the shards {sizes} (ignore_index={table[0]['ignore_index']})"
        )
    if table[0]["has_weight"]:
        weight_sum = sum(_bits_float(r["weight_sum"]) for r in table)
    else:
        weight_sum = float(v_total)
    return _Layout(
        rank=rank,
        world=world,
        offset=sum(sizes[:rank]),
        v_local=sizes[rank],
        v_total=v_total,
        weight_sum=weight_sum,
    )


def _target_fields(target: Tensor, probs: bool, ignore_index: int) -> dict[str, int]:
    if probs:
        return {"target_kind": 1, "target_min": 0, "target_max": -1, "target_hash": 0}
    if target.numel() == 0:
        return {"target_kind": 0, "target_min": 0, "target_max": -1, "target_hash": 0}
    valid = target != ignore_index
    big = torch.iinfo(torch.int64).max
    # Two cheap sums that differ when ranks pass different targets (all terms stay < 2**63).
    pos = torch.arange(target.numel(), device=target.device) % 1009 + 1
    stats = torch.stack(
        [
            torch.where(valid, target, big).min(),
            torch.where(valid, target, -1).max(),
            target.remainder(1_000_003).mul(pos).sum(),
            target.sum(),
        ]
    ).tolist()  # one device sync for all four
    tmin, tmax = stats[0], stats[1]
    h = stats[2] ^ (stats[3] & ((1 << 62) - 1))
    return {"target_kind": 0, "target_min": tmin, "target_max": tmax, "target_hash": h}


def _option_fields(
    reduction: str, ignore_index: int, label_smoothing: float, z_loss: float, softcap: float | None
) -> dict[str, int]:
    return {
        "reduction": _REDUCTIONS.index(reduction),
        "ignore_index": ignore_index,
        "label_smoothing": _float_bits(label_smoothing),
        "z_loss": _float_bits(z_loss),
        "softcap": _float_bits(0.0 if softcap is None else softcap),
    }


# ----------------------------------------------------------------------------------------------
# The math shared by both paths


@dataclass(frozen=True)
class _Config:
    group: dist.ProcessGroup
    layout: _Layout
    probs: bool
    ignore_index: int
    smoothing: float
    softcap: float | None
    cdtype: torch.dtype
    chunk: int


def _softcap(x: Tensor, cap: float | None, fresh: bool) -> Tensor:
    """``cap * tanh(x / cap)``, in place when ``x`` is a temporary of ours (``fresh``)."""
    if cap is None:
        return x
    if fresh:
        return x.div_(cap).tanh_().mul_(cap)
    return torch.tanh(x / cap).mul_(cap)


def _shard_index(y: Tensor, cfg: _Config) -> tuple[Tensor, Tensor]:
    """Local column of each target and whether it lies in this rank's shard (ignored rows: no)."""
    local = y - cfg.layout.offset
    inside = (y != cfg.ignore_index) & (local >= 0) & (local < cfg.layout.v_local)
    return torch.where(inside, local, 0), inside


def _chunk_stats(z: Tensor, t: Tensor, w: Tensor | None, cfg: _Config) -> tuple[Tensor, Tensor]:
    """Per-row local logsumexp and the columns to all-reduce by SUM (column 0 filled later).

    Class ids: [_, z[y], w[y], sum_c w_c z_c]. Probabilities: [_, sum_c w_c t'_c,
    sum_c w_c t'_c z_c] with t' = (1 - e) t + e / V.
    """
    m = z.amax(dim=1)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    lse = m + torch.log((z - m[:, None]).exp_().sum(dim=1))
    e = cfg.smoothing
    v = cfg.layout.v_total
    zero = z.new_zeros(())
    if cfg.probs:
        tw = t.to(cfg.cdtype)
        if w is not None:
            tw = tw * w
        a = (1.0 - e) * tw.sum(dim=1)
        b = (1.0 - e) * (tw * z).sum(dim=1)
        if e > 0.0:
            a = a + (e / v) * (float(cfg.layout.v_local) if w is None else w.sum())
            b = b + (e / v) * (z.sum(dim=1) if w is None else z @ w)
        return lse, torch.stack([zero.expand_as(lse), a, b], dim=1)
    idx, inside = _shard_index(t, cfg)
    zy = torch.where(inside, z.gather(1, idx[:, None]).squeeze(1), zero)
    if w is None:
        wy = inside.to(cfg.cdtype)
    else:
        wy = torch.where(inside, w[idx], zero)
    cols = [zero.expand_as(lse), zy, wy]
    if e > 0.0:
        wz = z.sum(dim=1) if w is None else z @ w
        cols.append(torch.where(t != cfg.ignore_index, wz, zero))
    return lse, torch.stack(cols, dim=1)


def _forward_rows(
    rows: int,
    make_logits: Callable[[int, int], Tensor],
    fresh: bool,
    target: Tensor,
    weight: Tensor | None,
    cfg: _Config,
    device: torch.device,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-row loss, logsumexp and the row coefficient (w[y] for ids, sum w t' for probs)."""
    ncols = 3 if cfg.probs else (4 if cfg.smoothing > 0.0 else 3)
    lse_local = torch.empty(rows, dtype=cfg.cdtype, device=device)
    sums = torch.empty(rows, ncols, dtype=cfg.cdtype, device=device)
    w = None if weight is None else weight.to(cfg.cdtype)
    for s in range(0, rows, cfg.chunk):
        stop = min(rows, s + cfg.chunk)
        z = _softcap(make_logits(s, stop), cfg.softcap, fresh)
        lse_local[s:stop], sums[s:stop] = _chunk_stats(z, target[s:stop], w, cfg)
    top = lse_local.clone()
    dist.all_reduce(top, op=dist.ReduceOp.MAX, group=cfg.group)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    sums[:, 0] = torch.exp(lse_local - top)
    dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=cfg.group)
    lse = top + torch.log(sums[:, 0])
    e = cfg.smoothing
    if cfg.probs:
        # ce = -sum_c w_c t'_c (z_c - lse) = lse * sum w t' - sum w t' z
        coef = sums[:, 1]
        ce = lse * coef - sums[:, 2]
        return ce, lse, coef
    valid = target != cfg.ignore_index
    wy = sums[:, 2]
    # ce = (1 - e) w_y (lse - z_y) + (e / V) sum_c w_c (lse - z_c)
    ce = (1.0 - e) * wy * (lse - sums[:, 1])
    if e > 0.0:
        smooth = cfg.layout.weight_sum * lse - sums[:, 3]
        ce = ce + (e / cfg.layout.v_total) * torch.where(valid, smooth, torch.zeros_like(smooth))
    return torch.where(valid, ce, torch.zeros_like(ce)), lse, wy


def _chunk_grad(
    z: Tensor,
    lse: Tensor,
    coef: Tensor,
    t: Tensor,
    w: Tensor | None,
    g_ce: Tensor,
    g_lse: Tensor,
    cfg: _Config,
) -> Tensor:
    """d loss / d z for a chunk of rows, z already soft-capped, in the compute dtype.

    Works in place on one new ``rows x V_r`` buffer (the probabilities become the gradient).
    """
    p = (z - lse[:, None]).exp_()
    e = cfg.smoothing
    if cfg.probs:
        # d/dz_c [lse * A - sum w t' z] = A p_c - w_c t'_c
        wt = t.to(cfg.cdtype, copy=True).mul_(1.0 - e).add_(e / cfg.layout.v_total)
        if w is not None:
            wt.mul_(w)
        return p.mul_((g_ce * coef + g_lse)[:, None]).addcmul_(g_ce[:, None], wt, value=-1.0)
    valid = (t != cfg.ignore_index).to(cfg.cdtype)
    gv = g_ce * valid
    # d/dz_c = ((1 - e) w_y + (e / V) W) p_c - (1 - e) w_y [c = y] - (e / V) w_c
    scale = (1.0 - e) * coef + (e / cfg.layout.v_total) * cfg.layout.weight_sum
    p.mul_((gv * scale + g_lse)[:, None])
    idx, inside = _shard_index(t, cfg)
    hit = torch.where(inside, gv * (1.0 - e) * coef, torch.zeros_like(gv))
    p.scatter_add_(1, idx[:, None], -hit[:, None])
    if e > 0.0:
        smooth = gv * (e / cfg.layout.v_total)
        if w is None:
            p.sub_(smooth[:, None])
        else:
            p.addr_(smooth, w, alpha=-1.0)
    return p


def _softcap_grad(dz: Tensor, z: Tensor, cap: float | None) -> Tensor:
    """Chain rule through the soft-cap, in place on ``dz``; consumes ``z`` (ours when capped)."""
    if cap is None:
        return dz
    # z = cap tanh(x / cap)  =>  dz/dx = 1 - tanh^2 = 1 - (z / cap)^2
    return dz.mul_(z.div_(cap).square_().neg_().add_(1.0))


def _target_grad(z: Tensor, lse: Tensor, w: Tensor | None, g_ce: Tensor, cfg: _Config) -> Tensor:
    # d/dt_c [-sum_c w_c ((1 - e) t_c + e / V) log p_c] = (1 - e) w_c (lse - z_c)
    g = (lse[:, None] - z).mul_(((1.0 - cfg.smoothing) * g_ce)[:, None])
    return g if w is None else g.mul_(w)


def _zeros_if_none(g: Tensor | None, like: Tensor) -> Tensor:
    return torch.zeros_like(like) if g is None else g.to(like.dtype)


_NO_DOUBLE_BACKWARD = (
    "vocab-parallel cross-entropy has no double backward (create_graph=True); use the "
    "single-process path for higher-order gradients"
)


class _LogitsCE(torch.autograd.Function):
    @staticmethod
    @autocast_off
    def forward(  # type: ignore[override]
        ctx: Any, logits: Tensor, target: Tensor, weight: Tensor | None, cfg: _Config
    ) -> tuple[Tensor, Tensor, Tensor]:
        rows = logits.shape[0]
        ce, lse, coef = _forward_rows(
            rows,
            lambda s, e: logits[s:e].to(cfg.cdtype),
            logits.dtype != cfg.cdtype,
            target,
            weight,
            cfg,
            logits.device,
        )
        ctx.save_for_backward(logits, target, weight, lse, coef)
        ctx.cfg = cfg
        ctx.mark_non_differentiable(coef)
        return ce, lse, coef

    @staticmethod
    @first_order_only(_NO_DOUBLE_BACKWARD)
    def backward(  # type: ignore[override]
        ctx: Any, g_ce: Tensor | None, g_lse: Tensor | None, _g_coef: Tensor | None
    ) -> tuple[Tensor | None, Tensor | None, None, None]:
        logits, target, weight, lse, coef = ctx.saved_tensors
        cfg: _Config = ctx.cfg
        g_ce = _zeros_if_none(g_ce, lse)
        g_lse = _zeros_if_none(g_lse, lse)
        w = None if weight is None else weight.to(cfg.cdtype)
        want_x, want_t = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dx = torch.empty_like(logits) if want_x else None
        dt = torch.empty_like(target) if want_t else None
        for s in range(0, logits.shape[0], cfg.chunk):
            e = min(logits.shape[0], s + cfg.chunk)
            z = _softcap(logits[s:e].to(cfg.cdtype), cfg.softcap, logits.dtype != cfg.cdtype)
            if dt is not None:
                dt[s:e] = _target_grad(z, lse[s:e], w, g_ce[s:e], cfg)
            if dx is not None:
                dz = _chunk_grad(z, lse[s:e], coef[s:e], target[s:e], w, g_ce[s:e], g_lse[s:e], cfg)
                dx[s:e] = _softcap_grad(dz, z, cfg.softcap)
        return dx, dt, None, None


class _LinearCE(torch.autograd.Function):
    @staticmethod
    @autocast_off
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        lin_w: Tensor,
        lin_b: Tensor | None,
        target: Tensor,
        weight: Tensor | None,
        cfg: _Config,
    ) -> tuple[Tensor, Tensor, Tensor]:
        w32 = lin_w.to(cfg.cdtype)
        b32 = None if lin_b is None else lin_b.to(cfg.cdtype)
        ce, lse, coef = _forward_rows(
            x.shape[0],
            lambda s, e: torch.nn.functional.linear(x[s:e].to(cfg.cdtype), w32, b32),
            True,
            target,
            weight,
            cfg,
            x.device,
        )
        ctx.save_for_backward(x, lin_w, lin_b, target, weight, lse, coef)
        ctx.cfg = cfg
        ctx.mark_non_differentiable(coef)
        return ce, lse, coef

    @staticmethod
    @first_order_only(_NO_DOUBLE_BACKWARD)
    def backward(  # type: ignore[override]
        ctx: Any, g_ce: Tensor | None, g_lse: Tensor | None, _g_coef: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        x, lin_w, lin_b, target, weight, lse, coef = ctx.saved_tensors
        cfg: _Config = ctx.cfg
        g_ce = _zeros_if_none(g_ce, lse)
        g_lse = _zeros_if_none(g_lse, lse)
        w = None if weight is None else weight.to(cfg.cdtype)
        want_x, want_w, want_b, want_t = ctx.needs_input_grad[:4]
        w32 = lin_w.to(cfg.cdtype)
        b32 = None if lin_b is None else lin_b.to(cfg.cdtype)
        rows = x.shape[0]
        dx = torch.empty(x.shape, dtype=cfg.cdtype, device=x.device) if want_x else None
        dw = torch.zeros_like(w32) if want_w else None
        db = torch.zeros(lin_w.shape[0], dtype=cfg.cdtype, device=x.device) if want_b else None
        dt = torch.empty_like(target) if want_t else None
        for s in range(0, rows, cfg.chunk):
            e = min(rows, s + cfg.chunk)
            xc = x[s:e].to(cfg.cdtype)
            z = _softcap(torch.nn.functional.linear(xc, w32, b32), cfg.softcap, True)
            if dt is not None:
                dt[s:e] = _target_grad(z, lse[s:e], w, g_ce[s:e], cfg)
            if dx is not None or dw is not None or db is not None:
                dz = _chunk_grad(z, lse[s:e], coef[s:e], target[s:e], w, g_ce[s:e], g_lse[s:e], cfg)
                dlogit = _softcap_grad(dz, z, cfg.softcap)
                if dx is not None:
                    dx[s:e] = dlogit @ w32  # this shard's partial sum of dL/dx
                if dw is not None:
                    dw.addmm_(dlogit.T, xc)
                if db is not None:
                    db += dlogit.sum(dim=0)
        if dx is not None:
            # x is replicated on every rank; its gradient is the sum of the shards' partial sums.
            dist.all_reduce(dx, op=dist.ReduceOp.SUM, group=cfg.group)
        return (
            None if dx is None else dx.to(x.dtype),
            None if dw is None else dw.to(lin_w.dtype),
            None if db is None or lin_b is None else db.to(lin_b.dtype),
            dt,
            None,
            None,
        )


# ----------------------------------------------------------------------------------------------
# Reduction: the single-process layer's, fed with counts that already hold the global w[y]


def _finish(
    ce: Tensor,
    lse: Tensor,
    coef: Tensor,
    rows: V.Rows,
    ignore_index: int,
    reduction: str,
    z_loss: float,
    return_aux: bool,
) -> Tensor | CrossEntropyAux:
    n = ce.shape[0]
    one = torch.ones((), dtype=ce.dtype, device=ce.device)
    if rows.is_prob:
        valid = torch.ones(n, dtype=torch.bool, device=ce.device)
        denom = torch.full((), float(max(n, 1)), dtype=ce.dtype, device=ce.device)
    else:
        valid = rows.target != ignore_index
        # coef = w[y] all-reduced over the ranks (1 without weights, 0 on ignored rows)
        wsum = coef.sum()
        denom = torch.where(wsum != 0, wsum, one)
    n_valid = valid.sum()
    n_float = n_valid.to(ce.dtype)
    counts = Counts(valid, denom, n_valid, torch.where(n_float > 0, n_float, one))
    return reduce_rows(
        ce,
        lse,
        rows.target,
        weight=None,
        ignore_index=ignore_index,
        reduction=reduction,
        z_loss=z_loss,
        return_aux=return_aux,
        out_shape=rows.out_shape,
        counts=counts,
    )


# ----------------------------------------------------------------------------------------------
# Public entry points (reached through crossentropy.torch.cross_entropy / linear_cross_entropy
# with process_group=...)


def _guard(thunk: Callable[[], Any]) -> tuple[Any, BaseException | None]:
    try:
        return thunk(), None
    except (TypeError, ValueError) as exc:
        return None, exc


@overload
def vocab_parallel_cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = ...,
    ignore_index: int = ...,
    reduction: str = ...,
    label_smoothing: float = ...,
    *,
    z_loss: float = ...,
    softcap: float | None = ...,
    return_aux: Literal[False] = ...,
    process_group: dist.ProcessGroup,
    impl: str = ...,
) -> Tensor: ...


@overload
def vocab_parallel_cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = ...,
    ignore_index: int = ...,
    reduction: str = ...,
    label_smoothing: float = ...,
    *,
    z_loss: float = ...,
    softcap: float | None = ...,
    return_aux: Literal[True],
    process_group: dist.ProcessGroup,
    impl: str = ...,
) -> CrossEntropyAux: ...


def vocab_parallel_cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    z_loss: float = 0.0,
    softcap: float | None = None,
    return_aux: bool = False,
    process_group: dist.ProcessGroup,
    impl: str = "auto",
) -> Tensor | CrossEntropyAux:
    r"""Cross-entropy of logits whose class dimension is sharded across ``process_group``.

    Every rank passes its contiguous shard of the logits (class dim 1, as in torch) and gets the
    loss of the full vocabulary, the same on every rank. With :math:`z` the soft-capped logits
    (:math:`z = c \tanh(x / c)` when ``softcap=c``), :math:`V` the global vocabulary, :math:`e`
    the label smoothing and :math:`w` the class weights:

    .. math::

        \mathrm{lse} = \log \sum_{c=1}^{V} e^{z_c}, \qquad
        \ell = (1 - e)\, w_y (\mathrm{lse} - z_y)
               + \frac{e}{V} \sum_{c} w_c (\mathrm{lse} - z_c)
               + \lambda_z\, \mathrm{lse}^2

    and for probability targets :math:`\ell = -\sum_c w_c t'_c \log p_c` with
    :math:`t' = (1 - e) t + e / V`. ``reduction="mean"`` divides the summed cross-entropy by
    :math:`\sum w_y` over counted rows (by the number of rows for probability targets), like torch,
    and the z-loss by the number of counted rows; with nothing counted it gives 0, not NaN.

    Args:
        input: this rank's logits, shape ``(N, V_r)``, ``(N, V_r, d1, ...)`` or ``(V_r,)``; any
            float dtype (math in fp32, fp64 for fp64 input).
        target: global class ids, shape ``(N,)`` / ``(N, d1, ...)`` / ``()``, identical on every
            rank; or this rank's shard of class probabilities, the same shape as ``input``.
        weight: this rank's shard of the class weights, shape ``(V_r,)`` (not the global vector).
        ignore_index: class id whose rows are not counted (class-id targets only).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per position, shape of the batch).
        label_smoothing: :math:`e \in [0, 1]`, spread uniformly over the *global* vocabulary.
        z_loss: coefficient :math:`\lambda_z \ge 0` of :math:`\mathrm{lse}^2` (PaLM's z-loss).
        softcap: ``c > 0`` to soft-cap the logits before the softmax (Gemma 2), or ``None``.
        return_aux: also return the per-position logsumexp, the z-loss term and the count of
            counted rows, as ``CrossEntropyAux(loss, lse, z_loss, n_valid)``.
        process_group: the tensor-parallel group; rank ``r`` of it holds classes
            ``[V_0 + ... + V_{r-1}, V_0 + ... + V_r)``.
        impl: the per-rank work runs on the chunked torch path; ``"triton"`` falls back to it
            with a one-time warning.

    Returns:
        The loss (fp32, fp64 for fp64 input), scalar or batch-shaped; ``CrossEntropyAux`` with
        ``return_aux=True``. The gradient of ``input`` is this rank's shard of the full gradient.

    Raises:
        ValueError: on every rank when any rank's input is invalid, when ranks disagree on
            arguments, targets, shapes or dtypes, or when a target is outside ``[0, V)``.

    References:
        Shoeybi et al., "Megatron-LM: Training Multi-Billion Parameter Language Models Using
        Model Parallelism", 2019 (vocab-parallel cross-entropy). Chowdhery et al., "PaLM", 2022
        (z-loss). Gemma Team, "Gemma 2", 2024 (logit soft-capping).

    Example (a one-process group; with more ranks each passes its own shard):

    >>> import os, tempfile, torch, torch.distributed as dist
    >>> store = dist.FileStore(os.path.join(tempfile.mkdtemp(), "store"), 1)
    >>> dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    >>> logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
    >>> target = torch.tensor([0, 2])
    >>> loss = vocab_parallel_cross_entropy(logits, target, process_group=dist.group.WORLD)
    >>> round(float(loss), 4) == round(float(torch.nn.functional.cross_entropy(logits, target)), 4)
    True
    >>> dist.destroy_process_group()
    """
    fn = "cross_entropy(process_group=...)"
    group = _check_group(fn, process_group)

    def prepare() -> tuple[Tensor, V.Rows, Tensor | None, tuple[Any, ...], dict[str, int]]:
        opts = _check_options(fn, ignore_index, reduction, label_smoothing, z_loss, softcap, impl)
        logits2d, rows = V.flatten_logits(fn, input, target)
        w = _check_shard(fn, rows, logits2d.shape[1], opts[0], weight, {"input": input})
        if not rows.is_prob:
            rows = V.Rows(rows.target.long(), False, rows.out_shape)
        grad = torch.is_grad_enabled()
        fields = {
            "v_local": logits2d.shape[1],
            "features": -1,
            "rows": logits2d.shape[0],
            "batch_shape": _shape_hash(rows.out_shape),
            "has_weight": int(w is not None),
            "has_bias": 0,
            "weight_sum": _float_bits(0.0 if w is None else float(w.double().sum())),
            "dtype": _DTYPES.index(logits2d.dtype),
            "grad_flags": int(grad and input.requires_grad)
            + 2 * int(grad and rows.target.requires_grad),
            **_option_fields(reduction, *opts),
            **_target_fields(rows.target, rows.is_prob, opts[0]),
        }
        return logits2d, rows, w, opts, fields

    prepared, error = _guard(prepare)
    like = input if isinstance(input, Tensor) else None
    layout = _agree(fn, group, _CALL_LOGITS, None if prepared is None else prepared[4], error, like)
    logits2d, rows, w, (ignore, eps, zl, cap), _ = prepared
    cfg = _Config(
        group=group,
        layout=layout,
        probs=rows.is_prob,
        ignore_index=ignore,
        smoothing=eps,
        softcap=cap,
        cdtype=_compute_dtype(logits2d),
        chunk=default_chunk_size(logits2d.shape[0], layout.v_local),
    )
    ce, lse, coef = _LogitsCE.apply(logits2d, rows.target, w, cfg)
    return _finish(ce, lse, coef, rows, ignore, reduction, zl, return_aux)


@overload
def vocab_parallel_linear_cross_entropy(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    *,
    linear_bias: Tensor | None = ...,
    weight: Tensor | None = ...,
    reduction: str = ...,
    ignore_index: int = ...,
    label_smoothing: float = ...,
    z_loss: float = ...,
    softcap: float | None = ...,
    return_aux: Literal[False] = ...,
    process_group: dist.ProcessGroup,
    impl: str = ...,
    chunk_size: int | None = ...,
) -> Tensor: ...


@overload
def vocab_parallel_linear_cross_entropy(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    *,
    linear_bias: Tensor | None = ...,
    weight: Tensor | None = ...,
    reduction: str = ...,
    ignore_index: int = ...,
    label_smoothing: float = ...,
    z_loss: float = ...,
    softcap: float | None = ...,
    return_aux: Literal[True],
    process_group: dist.ProcessGroup,
    impl: str = ...,
    chunk_size: int | None = ...,
) -> CrossEntropyAux: ...


def vocab_parallel_linear_cross_entropy(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    *,
    linear_bias: Tensor | None = None,
    weight: Tensor | None = None,
    reduction: str = "mean",
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    return_aux: bool = False,
    process_group: dist.ProcessGroup,
    impl: str = "auto",
    chunk_size: int | None = None,
) -> Tensor | CrossEntropyAux:
    r"""Fused linear + cross-entropy with the output layer sharded by vocabulary across ranks.

    Equal to :func:`vocab_parallel_cross_entropy` of ``input @ linear_weight.T + linear_bias``
    (see there for the math and the reduction rules), without building the logits: each rank
    computes its ``chunk_size x V_r`` block of logits at a time, in forward and again in backward.

    .. math::

        z = \mathrm{softcap}(h W_r^\top + b_r), \qquad
        \frac{\partial L}{\partial h} = \sum_{r} \frac{\partial L}{\partial z_r} W_r

    Args:
        input: hidden states, shape ``(..., D)``, identical on every rank (replicated, as in
            Megatron's tensor parallelism); its gradient is summed across the group. Only its
            shape is checked across ranks (hashing its values would cost a pass over it): hidden
            states that differ between ranks, e.g. from dropout seeded per rank, give a wrong loss.
        linear_weight: this rank's rows of the output projection, shape ``(V_r, D)``; its
            gradient stays local.
        target: global class ids of shape ``(...)``, identical on every rank, or this rank's shard
            of class probabilities, shape ``(..., V_r)``.
        linear_bias: this rank's shard of the output bias, shape ``(V_r,)``, or ``None``.
        weight: this rank's shard of the class weights, shape ``(V_r,)``.
        reduction, ignore_index, label_smoothing, z_loss, softcap, return_aux, impl: as in
            :func:`vocab_parallel_cross_entropy`.
        process_group: the tensor-parallel group, rank order = vocabulary order.
        chunk_size: rows per block of logits; ``None`` picks about 32 MiB of fp32 logits.

    Returns:
        The loss (fp32, fp64 for fp64 input), scalar or shaped like ``input.shape[:-1]``;
        ``CrossEntropyAux`` with ``return_aux=True``. Gradients come back in the input dtypes.

    Raises:
        ValueError: on every rank when any rank's input is invalid (a different ``D`` on one
            rank, for example), when ranks disagree on arguments or targets, or when a target is
            outside the global vocabulary.

    Example (a one-process group):

    >>> import os, tempfile, torch, torch.distributed as dist
    >>> store = dist.FileStore(os.path.join(tempfile.mkdtemp(), "store"), 1)
    >>> dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    >>> h, W = torch.randn(5, 4), torch.randn(7, 4)
    >>> y = torch.tensor([0, 6, 3, 3, 1])
    >>> loss = vocab_parallel_linear_cross_entropy(h, W, y, process_group=dist.group.WORLD)
    >>> ref = torch.nn.functional.cross_entropy(h @ W.T, y)
    >>> abs(float(loss) - float(ref)) < 1e-5
    True
    >>> dist.destroy_process_group()
    """
    fn = "linear_cross_entropy(process_group=...)"
    group = _check_group(fn, process_group)

    def prepare() -> tuple[Tensor, V.Rows, Tensor | None, tuple[Any, ...], dict[str, int]]:
        opts = _check_options(fn, ignore_index, reduction, label_smoothing, z_loss, softcap, impl)
        V.check_chunk_size(fn, chunk_size)
        x2d, rows = V.flatten_linear(fn, input, linear_weight, target, linear_bias)
        tensors = {"input": input, "linear_weight": linear_weight, "linear_bias": linear_bias}
        w = _check_shard(fn, rows, linear_weight.shape[0], opts[0], weight, tensors)
        if not rows.is_prob:
            rows = V.Rows(rows.target.long(), False, rows.out_shape)
        grad = torch.is_grad_enabled()
        flags = [input, linear_weight, linear_bias, rows.target]
        fields = {
            "v_local": linear_weight.shape[0],
            "features": x2d.shape[1],
            "rows": x2d.shape[0],
            "batch_shape": _shape_hash(rows.out_shape),
            "has_weight": int(w is not None),
            "has_bias": int(linear_bias is not None),
            "weight_sum": _float_bits(0.0 if w is None else float(w.double().sum())),
            "dtype": _DTYPES.index(x2d.dtype) + 4 * _DTYPES.index(linear_weight.dtype),
            "grad_flags": sum(
                (1 << i) * int(grad and t is not None and t.requires_grad)
                for i, t in enumerate(flags)
            ),
            **_option_fields(reduction, *opts),
            **_target_fields(rows.target, rows.is_prob, opts[0]),
        }
        return x2d, rows, w, opts, fields

    prepared, error = _guard(prepare)
    like = input if isinstance(input, Tensor) else None
    layout = _agree(fn, group, _CALL_LINEAR, None if prepared is None else prepared[4], error, like)
    x2d, rows, w, (ignore, eps, zl, cap), _ = prepared
    cfg = _Config(
        group=group,
        layout=layout,
        probs=rows.is_prob,
        ignore_index=ignore,
        smoothing=eps,
        softcap=cap,
        cdtype=_compute_dtype(x2d, linear_weight, linear_bias),
        chunk=chunk_size or default_chunk_size(x2d.shape[0], layout.v_local),
    )
    ce, lse, coef = _LinearCE.apply(x2d, linear_weight, linear_bias, rows.target, w, cfg)
    return _finish(ce, lse, coef, rows, ignore, reduction, zl, return_aux)
