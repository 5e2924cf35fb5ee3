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
from crossentropy.torch.engine._reduce import Counts, CrossEntropyAux, reduce_rows, row_coefficients

__all__ = [
    "vocab_parallel_cross_entropy",
    "vocab_parallel_linear_cross_entropy",
]

_REDUCTIONS = V.REDUCTIONS
_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)
_CALL_LOGITS = 0x5643_4531  # "VCE1": tells the ranks apart if they call different functions
_CALL_LINEAR = 0x564C_4531  # "VLE1"
_CALL_NAMES = {
    _CALL_LOGITS: "cross_entropy",
    _CALL_LINEAR: "linear_cross_entropy",
}


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
    ("options", False),  # a hash of the other functions' own options (0 for cross-entropy)
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
    v_max: int  # the largest shard: blocks are sized by it, so every rank runs as many blocks
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
        names = sorted(_CALL_NAMES.get(c, hex(c)) for c in calls)
        raise ValueError(
            f"{fn}: the ranks of the process group called different vocab-parallel functions "
            f"({', '.join(names)}); every rank must make the same call"
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
        v_max=max(sizes),
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


def agree_shards(
    fn: str,
    process_group: Any,
    call_name: str,
    prepare: Callable[[], tuple[Any, dict[str, int]]],
    like: Tensor | None,
) -> tuple[dist.ProcessGroup, Any, _Layout]:
    """Metadata agreement for any vocab-parallel function (log-probabilities, distillation).

    ``prepare()`` checks this rank's arguments and returns ``(prepared, fields)``, where
    ``fields`` holds ``v_local``, ``features``, ``rows``, ``batch_shape``, ``dtype``,
    ``grad_flags``, the ``_target_fields`` and ``options`` (a hash of every scalar option); the
    other fields default to 0. A local error is raised on this rank and reported on the others,
    so no rank is left waiting in a collective. Returns ``(group, prepared, layout)``.
    """
    group = _check_group(fn, process_group)
    call = 0x5643_0000 + (sum(map(ord, call_name)) & 0xFFFF)
    _CALL_NAMES.setdefault(call, call_name)
    prepared, error = _guard(prepare)
    fields = None if prepared is None else prepared[1]
    layout = _agree(fn, group, call, fields, error, like)
    return group, prepared[0], layout


def options_hash(*values: object) -> int:
    """A stable 61-bit hash of scalar options (floats by their bits), for ``agree_shards``."""
    h = len(values)
    for v in values:
        if isinstance(v, float):
            x = _float_bits(v)
        elif v is None:
            x = -1
        elif isinstance(v, (bool, int)):
            x = int(v)
        else:
            x = sum((i + 1) * ord(c) for i, c in enumerate(str(v)))
        h = (h * 1_000_003 + x) % (1 << 61)
    return h


def shard_fields(
    *,
    v_local: int,
    x: Tensor,
    batch_shape: tuple[int, ...],
    target: Tensor | None,
    ignore_index: int,
    grad_tensors: list[Tensor | None],
    options: int,
) -> dict[str, int]:
    """The metadata fields of ``agree_shards`` for a (hidden states, weight shard) call."""
    grad = torch.is_grad_enabled()
    fields = {
        "v_local": v_local,
        "features": x.shape[-1],
        "rows": x.shape[0],
        "batch_shape": _shape_hash(batch_shape),
        "dtype": _DTYPES.index(x.dtype) if x.dtype in _DTYPES else 0,
        "grad_flags": sum(
            (1 << i) * int(grad and t is not None and t.requires_grad)
            for i, t in enumerate(grad_tensors)
        ),
        "options": options,
        "ignore_index": ignore_index,
    }
    if target is not None:
        fields.update(_target_fields(target, False, ignore_index))
    else:
        fields.update({"target_kind": 2, "target_min": 0, "target_max": -1, "target_hash": 0})
    return fields


# ----------------------------------------------------------------------------------------------
# The shards as engine calls: the row math and the chunked engine of the single-process layer,
# with the group's all-reduces as their Merge (see _rowmath)


def _shard_counts(
    rows: V.Rows,
    weight: Tensor | None,
    layout: _Layout,
    ignore_index: int,
    cfg_group: Any,
    dtype: torch.dtype,
) -> Counts:
    """The ``mean`` divisors: sum of the *global* w[y] over counted rows (all-reduced when the class
    weights are sharded), or the number of counted rows."""
    target = rows.target
    n = target.shape[0]
    one = torch.ones((), dtype=dtype, device=target.device)
    if rows.is_prob:
        valid = torch.ones(n, dtype=torch.bool, device=target.device)
        denom = torch.full((), float(max(n, 1)), dtype=dtype, device=target.device)
        nv = torch.tensor(n, dtype=torch.int64, device=target.device)
        return Counts(valid, denom, nv, denom)
    valid = target != ignore_index
    n_valid = valid.sum()
    n_float = n_valid.to(dtype)
    if weight is None:
        denom = n_float
    else:
        local = target - layout.offset
        inside = valid & (local >= 0) & (local < layout.v_local)
        w_t = torch.where(inside, weight.to(dtype)[torch.where(inside, local, 0)], 0.0)
        dist.all_reduce(w_t, op=dist.ReduceOp.SUM, group=cfg_group)
        denom = w_t.sum()
    return Counts(
        valid,
        torch.where(denom != 0, denom, one),
        n_valid,
        torch.where(n_float > 0, n_float, one),
    )


class _SumShards(torch.autograd.Function):
    """All-reduce SUM forward, identity backward: every rank computes the same loss from the summed
    statistics, so each rank's shard gets the gradient of that one loss (Megatron's 'g')."""

    @staticmethod
    def forward(ctx: Any, t: Tensor, group: Any) -> Tensor:  # type: ignore[override]
        out = t.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Any:  # type: ignore[override]
        return g, None


class _CopyToShards(torch.autograd.Function):
    """Identity forward, all-reduce SUM backward: a replicated input whose gradient is the sum of
    every shard's partial gradient (Megatron's 'f')."""

    @staticmethod
    def forward(ctx: Any, t: Tensor, group: Any) -> Tensor:  # type: ignore[override]
        ctx.group = group
        return t.view_as(t)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Any:  # type: ignore[override]
        g = g.clone()
        dist.all_reduce(g, op=dist.ReduceOp.SUM, group=ctx.group)
        return g, None


def _plain_shard_rows(
    logits: Tensor,
    rows: V.Rows,
    weight: Tensor | None,
    layout: _Layout,
    ignore_index: int,
    eps: float,
    softcap: float | None,
    group: Any,
) -> tuple[Tensor, Tensor]:
    """(ce, lse) rows with differentiable ops on this shard's materialised logits: the path for
    probability targets that require grad (their gradient is local: (1 - e) w_c (lse - z_c))."""
    comp = torch.float64 if logits.dtype == torch.float64 else torch.float32
    z = logits.to(comp)
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    with torch.no_grad():
        m = z.amax(1) if z.shape[1] else z.new_zeros(z.shape[0])
        m = torch.where(torch.isfinite(m), m, 0.0)
        dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
    se = _SumShards.apply(torch.exp(z - m.unsqueeze(1)).sum(1), group)
    lse = m + torch.log(se)
    q = rows.target.to(comp)
    if eps > 0.0:
        q = q * (1.0 - eps) + eps / layout.v_total
    a = q * weight.to(comp) if weight is not None else q
    # ce = A lse - sum_c a_c z_c, both sums over the whole vocabulary: each rank's d ce / d lse is
    # then the global A (0 * (-inf) on masked classes without target mass read as 0)
    big_a = _SumShards.apply(a.sum(1), group)
    a_z = _SumShards.apply(torch.where(a == 0, 0.0, a * z).sum(1), group)
    return big_a * lse - a_z, lse


def _run_shards(
    fn: str,
    *,
    group: dist.ProcessGroup,
    layout: _Layout,
    x: Tensor,
    w: Tensor | None,
    b: Tensor | None,
    rows: V.Rows,
    weight: Tensor | None,
    ignore_index: int,
    eps: float,
    z_loss: float,
    softcap: float | None,
    reduction: str,
    return_aux: bool,
    chunk_size: int | None,
) -> Tensor | CrossEntropyAux:
    """One vocab-parallel cross-entropy call on the torch engine, all-reducing over ``group``."""
    from crossentropy.torch.engine import _dispatch as D
    from crossentropy.torch.engine import _ops
    from crossentropy.torch.engine._gemm import resolve_precision

    dtypes = [x.dtype, w.dtype if w is not None else None, b.dtype if b is not None else None]
    prec = resolve_precision(
        x.device, *dtypes, weight.dtype if weight is not None else None, autocast=w is not None
    )
    weight_total = layout.weight_sum
    target = rows.target
    if rows.is_prob and target.requires_grad and torch.is_grad_enabled():
        # plain differentiable ops on this shard (the logits materialised once per rank)
        comp = prec.compute
        logits = x
        if w is not None:
            logits = _CopyToShards.apply(x, group).to(comp) @ w.to(comp).t()
            if b is not None:
                logits = logits + b.to(comp)
        ce, lse = _plain_shard_rows(logits, rows, weight, layout, ignore_index, eps, softcap, group)
    else:
        scalar = reduction != "none" and not return_aux and w is not None
        chunk = D.plan(
            fn,
            kind="linear" if w is not None else "logits",
            device=x.device,
            prec=prec,
            dtypes_ok="vocab parallel",
            impl="torch",
            memory="auto",
            scalar=scalar,
            composable=None,
            process_group=group,
            native_ok="vocab parallel",
            triton_rows_ok="vocab parallel",
            rows=x.shape[0],
            # the same block size on every rank: each block all-reduces its row statistics
            vocab=layout.v_max,
            blocks=2 if softcap is not None else 1,
            chunk_size=chunk_size,
        ).chunk
        assert chunk is not None
        params = {
            "ignore_index": ignore_index,
            "label_smoothing": eps,
            "num_classes": layout.v_total,
            "softcap": softcap,
            "offset": layout.offset,
            "weight_total": weight_total,
        }
        call = _ops.Call("ce", tuple(sorted(params.items())), prec, chunk, group=group.group_name)
        slots = {"x": x, "w": w, "b": b, "target": target, "cweight": weight}
        counts = _shard_counts(rows, weight, layout, ignore_index, group, prec.compute)
        if scalar:
            coef, zcoef = row_coefficients(
                counts, reduction=reduction, z_loss=z_loss, dtype=prec.compute
            )
            zeros = torch.zeros_like(coef)
            lin = torch.stack([coef, zeros])
            quad = torch.stack([zeros, zcoef]) if zcoef is not None else None
            loss, _ = _ops.call_fused(call, slots, lin, quad)
            return loss
        ce, lse = _ops.call_rows(call, slots)
        return reduce_rows(
            ce,
            lse,
            target,
            weight=None,
            ignore_index=ignore_index,
            reduction=reduction,
            z_loss=z_loss,
            return_aux=return_aux,
            out_shape=rows.out_shape,
            counts=counts,
        )
    counts = _shard_counts(rows, weight, layout, ignore_index, group, ce.dtype)
    return reduce_rows(
        ce,
        lse,
        target,
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
    return _run_shards(
        fn,
        group=group,
        layout=layout,
        x=logits2d,
        w=None,
        b=None,
        rows=rows,
        weight=w,
        ignore_index=ignore,
        eps=eps,
        z_loss=zl,
        softcap=cap,
        reduction=reduction,
        return_aux=return_aux,
        chunk_size=None,
    )


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
    return _run_shards(
        fn,
        group=group,
        layout=layout,
        x=x2d,
        w=linear_weight,
        b=linear_bias,
        rows=rows,
        weight=w,
        ignore_index=ignore,
        eps=eps,
        z_loss=zl,
        softcap=cap,
        reduction=reduction,
        return_aux=return_aux,
        chunk_size=chunk_size,
    )
