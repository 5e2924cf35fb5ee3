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
(``k <= 4``), whatever the vocabulary size. The backward of ``cross_entropy(process_group=...)``
needs no communication (each rank owns the gradient of its own logits); the backward of the
linear losses all-reduces ``dL/d input`` (``N x D``), because every rank's shard contributes a
partial sum ``dz_r @ W_r`` to it, while ``dL/d linear_weight`` and ``dL/d linear_bias`` stay local
to their shard.

This module holds only what is specific to vocabulary shards: the cross-rank argument agreement
(:func:`agree`, which every public loss's prepared call passes through when it is given a
``process_group``) and the shard's run (:func:`run`: the engine with the group's all-reduces as
its ``Merge``, see ``engine._ops``).

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
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from crossentropy.torch.engine import _run as R
from crossentropy.torch.engine._checks import report_bad_rows
from crossentropy.torch.engine._dispatch import Plan
from crossentropy.torch.engine._reduce import Counts, count_rows

__all__ = [
    "agree",
    "check_shard",
    "run",
]

_REDUCTIONS = ("mean", "sum", "none", "batchmean")
_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)
_CALL_LOGITS = 0x5643_4531  # "VCE1": tells the ranks apart if they call different functions
_CALL_LINEAR = 0x564C_4531  # "VLE1"
_CALL_NAMES = {
    _CALL_LOGITS: "cross_entropy",
    _CALL_LINEAR: "linear_cross_entropy",
}


# ----------------------------------------------------------------------------------------------
# What only a shard needs checked (the public function checks the rest, for any call)


def check_shard(
    fn: str,
    rows: Any,
    v_local: int,
    ignore_index: int,
    weight: Any,
    tensors: dict[str, Tensor | None],
) -> Tensor | None:
    """This rank's shard: not empty, floating dtypes the engines take, one device, and class
    weights that are this shard's (shape (V_local,)), not the global vector."""
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
    if rows.is_prob and ignore_index != -100:
        raise ValueError(
            f"{fn}: ignore_index applies to class-index targets only; got ignore_index="
            f"{ignore_index} with probability targets (leave it at -100)"
        )
    if weight is None:
        return None
    if not isinstance(weight, Tensor):
        raise TypeError(f"{fn}: weight must be a torch.Tensor; got {type(weight).__name__}")
    if not weight.is_floating_point():
        raise TypeError(f"{fn}: weight must be a floating-point tensor; got dtype {weight.dtype}")
    if weight.shape != (v_local,):
        raise ValueError(
            f"{fn}: weight must be this rank's shard of the class weights, shape (V_local,) = "
            f"({v_local},); got shape {tuple(weight.shape)}"
        )
    return weight


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
                "options": "the per-position token weights or the function's own options",
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
    target: Tensor,
    weight: Tensor | None,
    layout: _Layout,
    ignore_index: int,
    cfg_group: Any,
    dtype: torch.dtype,
    token_weight: Tensor | None = None,
) -> Counts:
    """The ``mean`` divisors: the sum over counted rows of the *global* w[y] (all-reduced, the
    class weights being sharded) times the rows' token weights, or their count."""
    if weight is None or target.is_floating_point():
        return count_rows(
            target, weight=None, ignore_index=ignore_index, dtype=dtype, token_weight=token_weight
        )
    valid = target != ignore_index
    local = target - layout.offset
    inside = valid & (local >= 0) & (local < layout.v_local)
    w_t = torch.where(inside, weight.to(dtype)[torch.where(inside, local, 0)], 0.0)
    dist.all_reduce(w_t, op=dist.ReduceOp.SUM, group=cfg_group)
    # the class-weight-free counts, then the whole vocabulary's w[y] folded into the divisor
    base = count_rows(
        target, weight=None, ignore_index=ignore_index, dtype=dtype, token_weight=token_weight
    )
    row_w = w_t if base.token_weight is None else w_t * base.token_weight
    denom = torch.where(valid, row_w, 0.0).sum()
    one = torch.ones((), dtype=dtype, device=target.device)
    return base._replace(denom=torch.where(denom != 0, denom, one))


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
    target: Tensor,
    weight: Tensor | None,
    v_total: int,
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
    q = target.to(comp)
    if eps > 0.0:
        q = q * (1.0 - eps) + eps / v_total
    a = q * weight.to(comp) if weight is not None else q
    # ce = A lse - sum_c a_c z_c, both sums over the whole vocabulary: each rank's d ce / d lse is
    # then the global A (0 * (-inf) on masked classes without target mass read as 0)
    big_a = _SumShards.apply(a.sum(1), group)
    a_z = _SumShards.apply(torch.where(a == 0, 0.0, a * z).sum(1), group)
    return big_a * lse - a_z, lse


# ----------------------------------------------------------------------------------------------
# The entries: a prepared call agreed on by every rank, then run on this rank's shard


_CALL_IDS = {"cross_entropy": _CALL_LOGITS, "linear_cross_entropy": _CALL_LINEAR}


def _call_id(fn: str) -> int:
    name = fn.split("(")[0]
    if name not in _CALL_IDS:
        _CALL_IDS[name] = 0x5643_0000 + (sum(map(ord, name)) & 0xFFFF)
        _CALL_NAMES.setdefault(_CALL_IDS[name], name)
    return _CALL_IDS[name]


def _dtype_code(t: Tensor | None) -> int:
    return _DTYPES.index(t.dtype) if t is not None and t.dtype in _DTYPES else 0


def _weights_hash(tw: Tensor | None) -> int:
    """Two sums that differ when ranks pass different per-position weights (one device sync)."""
    if tw is None:
        return 0
    pos = torch.arange(tw.numel(), device=tw.device, dtype=torch.float64) % 1009 + 1
    w = tw.detach().double()
    return options_hash(*torch.stack([w.sum(), (w * pos).sum()]).tolist())


def _fields(call: R.PreparedCall) -> dict[str, int]:
    """This rank's metadata row: what every rank must agree on (see ``_AGREED``)."""
    x, w, b, target = (call.slots.get(k) for k in ("x", "w", "b", "target"))
    assert x is not None
    grad = torch.is_grad_enabled()
    if call.math != "ce":
        heads = [call.slots.get(k) for k in ("x", "w", "b", "x2", "w2", "b2")]
        opts = options_hash(
            *(v for _, v in sorted(call.params.items())),
            call.reduction,
            call.prec.exact,
            _weights_hash(call.token_weight),
        )
        return shard_fields(
            v_local=w.shape[0] if w is not None else x.shape[1],
            x=x,
            batch_shape=call.out_shape,
            target=target,
            ignore_index=int(call.params["ignore_index"]),
            grad_tensors=heads,
            options=opts,
        )
    assert target is not None
    p = call.params
    cw = call.weight
    is_prob = target.is_floating_point()
    return {
        # per-position weights are replicated like the targets: every rank must pass the same
        "options": _weights_hash(call.token_weight),
        "v_local": w.shape[0] if w is not None else x.shape[1],
        "features": x.shape[1] if w is not None else -1,
        "rows": x.shape[0],
        "batch_shape": _shape_hash(call.out_shape),
        "has_weight": int(cw is not None),
        "has_bias": int(b is not None),
        "weight_sum": _float_bits(0.0 if cw is None else float(cw.double().sum())),
        "dtype": _dtype_code(x) + (4 * _dtype_code(w) if w is not None else 0),
        "grad_flags": sum(
            (1 << i) * int(grad and t is not None and t.requires_grad)
            for i, t in enumerate([x, w, b, target])
        ),
        **_option_fields(
            call.reduction, int(p["ignore_index"]), p["label_smoothing"], call.z_loss, p["softcap"]
        ),
        **_target_fields(target, is_prob, int(p["ignore_index"])),
    }


def _guard(thunk: Callable[[], Any]) -> tuple[Any, BaseException | None]:
    try:
        return thunk(), None
    except (TypeError, ValueError) as exc:
        return None, exc


def agree(fn: str, process_group: Any, prepare: Callable[[Any], R.PreparedCall]) -> R.PreparedCall:
    """This rank's prepared call, once every rank's checks and arguments agree.

    ``prepare(group)`` runs the public function's checks on this rank. A local error is raised on
    this rank and reported on the others (each raises too), so no rank is left waiting in a
    collective; ranks that disagree on arguments, shapes, dtypes or targets all raise. The call
    comes back with this rank's place in the vocabulary filled in: the first class id of its
    shard (``offset``), the whole vocabulary, blocks sized by the largest shard (every rank runs
    as many blocks; each block all-reduces its row statistics), and for cross-entropy the
    ``mean`` divisors of the whole vocabulary.
    """
    group = _check_group(fn, process_group)
    call, error = _guard(lambda: prepare(group))
    like = call.slots["x"] if call is not None else None
    fields = _fields(call) if call is not None else None
    layout = _agree(fn, group, _call_id(fn), fields, error, like)
    assert call is not None  # an error was raised by _agree on every rank
    call.group = group
    call.id_range = None  # the agreement checked the ids against the whole vocabulary
    call.composable = None
    call.vocab = layout.v_max
    call.params["offset"] = layout.offset
    if call.math == "ce" and call.kind == "linear" and call.target is not None:
        _check_probability_shards(call, layout, group)
    if call.math == "ce":
        call.params["num_classes"] = layout.v_total
        call.params["weight_total"] = layout.weight_sum
        target = call.target
        assert target is not None
        call.counts = _shard_counts(
            target,
            call.weight,
            layout,
            int(call.params["ignore_index"]),
            group,
            call.prec.compute,
            call.token_weight,
        )
    return call


def _check_probability_shards(call: R.PreparedCall, layout: _Layout, group: Any) -> None:
    """Probability targets of the linear loss, each rank holding a shard of every row: a row is a
    distribution when no shard has a negative entry and the shards' sums add up to 1 (one
    all-reduce of 2 N floats; every rank then decides, and raises, alike)."""
    from crossentropy import row_sum_tolerance

    target = call.target
    assert target is not None
    if not target.is_floating_point() or target.numel() == 0:
        return
    t = target.detach()
    acc = torch.float64 if t.dtype == torch.float64 else torch.float32
    stats = torch.stack([t.sum(-1, dtype=acc), (t < 0).any(-1).to(acc)], 1)
    dist.all_reduce(stats, op=dist.ReduceOp.SUM, group=group)
    tol = row_sum_tolerance(str(t.dtype).replace("torch.", ""), layout.v_total)
    bad = ((stats[:, 0] - 1.0).abs() > tol) | (stats[:, 1] > 0)
    report_bad_rows(
        call.fn,
        "target",
        bad,
        f"a probability distribution over the {layout.v_total} classes of all shards (entries "
        ">= 0 summing to 1)",
        None,
    )


def run(call: R.PreparedCall, plan: Plan) -> R.Result:
    """Run an agreed call on this rank's shard: the engine with the group's all-reduces as its
    row statistics' merge, or, for probability targets that require grad, differentiable torch
    ops on this shard's logits."""
    target = call.target
    if (
        call.math == "ce"
        and target is not None
        and target.is_floating_point()
        and target.requires_grad
        and torch.is_grad_enabled()
    ):
        x, w, b = call.slots["x"], call.slots["w"], call.slots["b"]
        assert x is not None
        comp = call.prec.compute
        logits = x
        if w is not None:
            logits = _CopyToShards.apply(x, call.group).to(comp) @ w.to(comp).t()
            if b is not None:
                logits = logits + b.to(comp)
        p = call.params
        ce, lse = _plain_shard_rows(
            logits,
            target,
            call.weight,
            int(p["num_classes"]),
            float(p["label_smoothing"]),
            p["softcap"],
            call.group,
        )
        return R.Result(rows=[ce, lse])
    return R.run(call, plan)
