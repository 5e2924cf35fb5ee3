"""DTensor arguments (FSDP2, tensor parallel, both) for the torch layer's losses.

A public loss calls :func:`dtensor_call` first. Without a ``DTensor`` among its arguments that
costs a few ``isinstance`` checks and returns ``None``; with one, it turns the call into a call on
plain tensors that the loss already knows how to run (the ordinary path, or the vocab-parallel
path with ``process_group=``) and returns its result.

A weight ``(V, D)`` (or logits, class dim 1) is read mesh dimension by mesh dimension:

- ``Replicate()``: the ranks of that dimension hold the same rows; nothing to do;
- ``Shard(0)`` (``ColwiseParallel`` on an LM head, ``fully_shard``; FSDP2 on top of tensor
  parallelism gives ``_StridedShard(0)``): the vocabulary is split across that dimension's ranks;
- anything else (``Shard(1)``: the features split; ``Partial()``): a ``ValueError`` naming them.

When the vocabulary is split, the ranks of that dimension either hold the same tokens (tensor
parallelism: the same hidden states and targets, bit for bit) or different ones (FSDP2 and any
data or sequence parallelism). One all-gather of a few integers per call (row counts,
fingerprints of the hidden states and targets, each rank's slice of the vocabulary) tells which:

- same tokens: vocab parallel over that dimension's process group; no weight is gathered and each
  rank's logits are ``V / TP`` wide;
- different tokens: the weight's rows are all-gathered over that dimension once per call (never per
  chunk), and its gradient is reduce-scattered back as the mean over the dimension's ranks of each
  rank's gradient, which is what ``fully_shard`` does with the gradient of a parameter it gathered.

On identical tokens both give the same loss and gradients (the mean of identical gradients); they
differ in cost only. The other way to use an FSDP2 shard, splitting the vocabulary over every
rank's gathered tokens, sends fewer bytes when a rank has fewer than V / 3 rows (2 ranks), but
its per-row path costs a fourth GEMM: it ran 1.2-1.35x slower on a CPU
(``benchmarks/results/sharded_cpu.md``), so the weight is gathered. It is gathered in its own
dtype: an FSDP2 ``MixedPrecisionPolicy(param_dtype=...)`` applies only to the gathers FSDP2
itself makes. Every gradient comes back as a DTensor with its input's placements (through
``DTensor.to_local``). The loss itself is a plain tensor: this rank's loss over its own rows.

Bad input on one rank raises on every rank: local problems travel with the metadata, and on the
gathering path an error raised by the loss itself is all-reduced before anyone goes on to a
backward pass that would wait for the rank that failed.

Using it from a public function: describe its arguments once with a :class:`ShardSpec`
(:data:`LINEAR_LOGPROBS` and :data:`LINEAR_DISTILLATION` here are those of ``linear_logprobs``
and ``linear_distillation_loss``) and make its first lines

.. code-block:: python

    def linear_distillation_loss(student_input, student_linear_weight, teacher_input, teacher_linear_weight,
                                 *, ..., process_group=None, ...):
        if _dtensor.any_dtensor((student_input, student_linear_weight, teacher_input, teacher_linear_weight,
                                 student_linear_bias, teacher_linear_bias, target, mask)):
            return _dtensor.dtensor_call(
                linear_distillation_loss,
                _dtensor.LINEAR_DISTILLATION,
                dict(student_input=student_input, ..., process_group=process_group, ...),
            )
        ...

with every argument in the dict. The function is then called again by keyword with plain tensors,
and ``process_group`` set when the call runs vocab parallel, so it must take a shard of the
vocabulary with ``process_group=`` as ``linear_cross_entropy`` does. Roles in a spec: ``heads``
(hidden, weight, bias per projection), ``rows`` (per-position tensors: targets, masks, per-token
temperatures; one with the hidden states' rank and ``V`` last, such as probability targets or a
mask over the vocabulary, is cut to this rank's classes), ``classes`` (``(V,)`` tensors such as
class weights, cut likewise). Several heads run vocab parallel only when all are split the same
way; otherwise each is gathered whole.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "CROSS_ENTROPY",
    "LINEAR_CROSS_ENTROPY",
    "LINEAR_DISTILLATION",
    "LINEAR_LOGPROBS",
    "ShardSpec",
    "any_dtensor",
    "dtensor_call",
    "is_fsdp_module",
]


@dataclass(frozen=True)
class ShardSpec:
    """The arguments of a loss, by role, for :func:`dtensor_call`.

    Args:
        fn: the public name, used in error messages.
        heads: ``(hidden, weight, bias)`` argument names of each projection to the vocabulary
            (bias name ``None`` when the function has none); hidden ``(..., D)``, weight ``(V, D)``.
        logits: the name of a logits argument (class dim 1, or 0 for a 1-d input) instead of heads.
        rows: per-position arguments (class ids, probability targets ``(..., V)``, per-token
            scalars), local to each rank like the hidden states.
        classes: ``(V,)`` per-class arguments (class weights), global on every rank.
        group: the name of the ``process_group`` argument.
    """

    fn: str
    heads: tuple[tuple[str, str, str | None], ...] = ()
    logits: str | None = None
    rows: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()
    group: str = "process_group"

    @property
    def names(self) -> tuple[str, ...]:
        named = [n for head in self.heads for n in head if n is not None]
        if self.logits is not None:
            named.append(self.logits)
        return (*named, *self.rows, *self.classes)


CROSS_ENTROPY = ShardSpec(
    "cross_entropy", logits="input", rows=("target", "token_weight"), classes=("weight",)
)
LINEAR_CROSS_ENTROPY = ShardSpec(
    "linear_cross_entropy",
    heads=(("input", "linear_weight", "linear_bias"),),
    rows=("target", "token_weight"),
    classes=("weight",),
)
LINEAR_LOGPROBS = ShardSpec(
    "linear_logprobs",
    heads=(("input", "linear_weight", "linear_bias"),),
    rows=("target", "temperature", "top_k", "top_p", "allowed"),
)
LINEAR_DISTILLATION = ShardSpec(
    "linear_distillation_loss",
    heads=(
        ("student_input", "student_linear_weight", "student_linear_bias"),
        ("teacher_input", "teacher_linear_weight", "teacher_linear_bias"),
    ),
    rows=("target", "mask", "token_weight"),
)


def _dtensor_type() -> Any:
    """The DTensor class if DTensors can exist yet (its module is imported), else None: the check
    costs nothing and imports nothing when no one uses DTensors."""
    for name in ("torch.distributed.tensor", "torch.distributed._tensor"):
        mod = sys.modules.get(name)
        cls = getattr(mod, "DTensor", None) if mod is not None else None
        if cls is not None:
            return cls
    return None


def any_dtensor(values: Iterable[object]) -> bool:
    """Whether any of ``values`` is a DTensor (cheap; imports nothing)."""
    cls = _dtensor_type()
    return cls is not None and any(isinstance(v, cls) for v in values)


def is_fsdp_module(module: object) -> bool:
    """Whether ``module`` is a unit of FSDP2's ``fully_shard`` (cheap; imports nothing)."""
    fsdp = sys.modules.get("torch.distributed.fsdp")
    cls = getattr(fsdp, "FSDPModule", None) if fsdp is not None else None
    return cls is not None and isinstance(module, cls)


def dtensor_call(func: Callable[..., Any], spec: ShardSpec, args: Mapping[str, Any]) -> Any:
    """Run ``func(**args)`` whose tensors may be DTensors, as a call on plain tensors.

    Returns ``None`` when no argument named in ``spec`` is a DTensor (the caller then runs as
    usual); otherwise the result of ``func`` called again with plain tensors (and
    ``process_group`` set when the vocabulary stays split). See the module docstring for the rules.

    Raises:
        ValueError: an unsupported placement (named), ``process_group=`` given together with
            DTensors, or (on every rank) bad input on any rank.

    Example (one process; with more, each rank passes its own DTensor shard):

    >>> import os, tempfile, torch, torch.distributed as dist
    >>> from torch.distributed.device_mesh import init_device_mesh
    >>> from torch.distributed.tensor import Shard, distribute_tensor
    >>> from crossentropy.torch import linear_cross_entropy
    >>> store = dist.FileStore(os.path.join(tempfile.mkdtemp(), "store"), 1)
    >>> dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    >>> h, W, y = torch.randn(5, 4), torch.randn(7, 4), torch.tensor([0, 6, 3, 3, 1])
    >>> Wd = distribute_tensor(W, init_device_mesh("cpu", (1,)), [Shard(0)]).requires_grad_()
    >>> loss = linear_cross_entropy(h, Wd, y)  # dtensor_call runs it, vocab parallel here
    >>> bool(torch.allclose(loss, torch.nn.functional.cross_entropy(h @ W.T, y)))
    True
    >>> loss.backward()
    >>> type(Wd.grad).__name__, Wd.grad.placements
    ('DTensor', (Shard(dim=0),))
    >>> dist.destroy_process_group()
    """
    cls = _dtensor_type()
    if cls is None or not any(isinstance(args.get(n), cls) for n in spec.names):
        return None
    if args.get(spec.group) is not None:
        given = [n for n in spec.names if isinstance(args.get(n), cls)]
        raise ValueError(
            f"{spec.fn}: process_group= cannot be combined with DTensor arguments ({', '.join(given)}); "
            "the DTensor's device mesh says which ranks share the vocabulary"
        )
    if spec.logits is not None:
        return func(**_logits_args(spec, dict(args), cls))
    return _linear_call(func, spec, dict(args), cls)


# ------------------------------------------------------------------------------------------------
# placements


def _placements(x: Any) -> str:
    return "(" + ", ".join(repr(p) for p in x.placements) + ")"


def _shard_dim(fn: str, name: str, x: Any, p: Any, allowed: str) -> int | None:
    """The tensor dim a placement splits (None for Replicate), or a ValueError naming it."""
    if p.is_replicate():
        return None
    dim = getattr(p, "dim", None)
    if isinstance(dim, int) and (p.is_shard() or type(p).__name__ == "_StridedShard"):
        return dim % x.dim() if x.dim() else dim
    raise ValueError(
        f"{fn}: {name} is a DTensor with placements {_placements(x)} over a mesh of shape "
        f"{tuple(x.device_mesh.shape)}; {p!r} is not supported ({allowed})"
    )


def _local_box(x: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """This rank's local shape and its offset in the global tensor."""
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shape, offset = compute_local_shape_and_global_offset(x.shape, x.device_mesh, x.placements)
    return tuple(shape), tuple(offset)


def _localize(fn: str, name: str, t: Any, cls: Any) -> Any:
    """A DTensor's local tensor (differentiable: its gradient returns as a DTensor)."""
    if not isinstance(t, cls):
        return t
    for p in t.placements:  # type: ignore[attr-defined]
        if p.is_partial():
            raise ValueError(
                f"{fn}: {name} is a DTensor with placements {_placements(t)}; a Partial() "
                "(pending sum) placement is not supported: redistribute it first"
            )
    return t.to_local()  # type: ignore[attr-defined]


def _full(t: Any, cls: Any) -> Any:
    return t.full_tensor() if isinstance(t, cls) else t  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------------------
# logits (cross_entropy): the placements say everything; no metadata exchange


def _logits_args(spec: ShardSpec, args: dict[str, Any], cls: Any) -> dict[str, Any]:
    fn, name = spec.fn, spec.logits
    assert name is not None
    x = args[name]
    piece: tuple[int, int, int] | None = None  # (offset, size, total) along the class dim
    group = None
    cdim = 1 if isinstance(x, Tensor) and x.dim() >= 2 else 0
    if isinstance(x, cls):
        allowed = "Replicate() or Shard(d) of any dim d (the class dim 1 gives vocab parallelism)"
        on_classes = [
            k
            for k, p in enumerate(x.placements)  # type: ignore[attr-defined]
            if _shard_dim(fn, name, x, p, allowed) == cdim
        ]
        if len(on_classes) > 1 or (
            on_classes and type(x.placements[on_classes[0]]).__name__ != "Shard"  # type: ignore[attr-defined]
        ):
            raise ValueError(
                f"{fn}: {name} is a DTensor with placements {_placements(x)}: its class dim is "
                "split over several mesh dimensions or with a strided layout; only one plain "
                "Shard of the class dim (one process group in vocabulary order) is supported"
            )
        if on_classes:
            mesh, k = x.device_mesh, on_classes[0]  # type: ignore[attr-defined]
            group = mesh.get_group(k)
            shape, offset = _local_box(x)
            piece = (offset[cdim], shape[cdim], x.shape[cdim])
        args[name] = _localize(fn, name, x, cls)
    for row in spec.rows:
        t = _localize(fn, row, args.get(row), cls)
        if piece is not None and isinstance(t, Tensor) and t.is_floating_point():
            # probability targets of the whole vocabulary: keep this rank's classes
            if t.dim() == x.dim() and t.shape[cdim] == piece[2] != piece[1]:
                t = t.narrow(cdim, piece[0], piece[1])
        args[row] = t
    for c in spec.classes:
        t = _full(args.get(c), cls)
        if piece is not None and isinstance(t, Tensor) and t.dim() == 1 and t.shape[0] == piece[2]:
            t = t.narrow(0, piece[0], piece[1])
        args[c] = t
    args[spec.group] = group
    return args


# ------------------------------------------------------------------------------------------------
# heads (linear losses): which mesh dims split the vocabulary, and do their ranks share tokens?


@dataclass
class _Head:
    weight: Any  # local (plain) weight rows
    bias: Any
    mesh: Any  # None for a plain weight
    split: list[int]  # mesh dims that split the vocabulary
    offset: int
    size: int
    vocab: int


def _head(fn: str, names: tuple[str, str, str | None], args: dict[str, Any], cls: Any) -> _Head:
    _, wname, bname = names
    w = args.get(wname)
    b = args.get(bname) if bname is not None else None
    if not isinstance(w, cls):
        if isinstance(b, cls):
            raise ValueError(
                f"{fn}: {bname} is a DTensor but {wname} is not; pass both as DTensors with the "
                "same placements, or both as plain tensors"
            )
        v = w.shape[0] if isinstance(w, Tensor) and w.dim() >= 1 else 0
        return _Head(w, b, None, [], 0, v, v)
    allowed = "Replicate() or Shard(0), the vocabulary split across the ranks"
    split = []
    for k, p in enumerate(w.placements):  # type: ignore[attr-defined]
        d = _shard_dim(fn, wname, w, p, allowed)
        if d == 0:
            split.append(k)
        elif d is not None:
            raise ValueError(
                f"{fn}: {wname} is a DTensor with placements {_placements(w)} over a mesh of "
                f"shape {tuple(w.device_mesh.shape)}; {p!r} splits the features (dim {d}), which "  # type: ignore[attr-defined]
                f"is not supported ({allowed})"
            )
    shape, offset = _local_box(w)
    if b is not None:
        if not isinstance(b, cls):
            if split:
                raise ValueError(
                    f"{fn}: {wname} is split by a DTensor with placements {_placements(w)} but "
                    f"{bname} is a plain tensor; pass {bname} as a DTensor with the same placements"
                )
        else:
            bshape, boffset = _local_box(b)
            if b.device_mesh != w.device_mesh or (bshape[0], boffset[0]) != (shape[0], offset[0]):  # type: ignore[attr-defined]
                raise ValueError(
                    f"{fn}: {bname} (placements {_placements(b)}) is not split like {wname} "
                    f"(placements {_placements(w)}); pass it with the same placements on the same mesh"
                )
            b = _localize(fn, bname or "", b, cls)
    return _Head(
        _localize(fn, wname, w, cls),
        b,
        w.device_mesh,  # type: ignore[attr-defined]
        split,
        offset[0],
        shape[0],
        w.shape[0],
    )


def _fingerprint(tensors: list[Any], device: torch.device) -> list[int]:
    """Two int64 numbers from the tensors' bits: the sum of every row's integer sum, and the same
    weighted by the row's position. Integer sums are exact, so the same data gives the same numbers
    on every rank whatever the reduction order; one read of each tensor, no copy of its size."""
    acc = torch.zeros(2, dtype=torch.int64, device=device)
    as_int = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    for i, t in enumerate(tensors):
        if not isinstance(t, Tensor):
            continue
        words = t.detach()
        if words.dtype == torch.bool:
            words = words.to(torch.uint8)
        elif words.is_complex():
            words = torch.view_as_real(words)
        if words.is_floating_point():
            words = words.view(as_int[words.element_size()])
        words = words.reshape(words.shape[0] if words.dim() else 1, -1)
        rows = words.sum(1, dtype=torch.int64)
        pos = torch.arange(rows.shape[0], device=rows.device) % 65_521 + 1
        acc[0] += rows.sum() + (i + 1) * 1_000_003 + words.numel()
        acc[1] += (rows * pos).sum()
    return [int(v) for v in acc.to("cpu").tolist()]


def _meta_group(mesh: Any) -> Any:
    """A process group over every rank of ``mesh`` (its rank order: see :func:`_exchange`)."""
    if mesh.ndim == 1:
        return mesh.get_group(0)
    if mesh.size() == dist.get_world_size():
        return dist.group.WORLD
    flatten = getattr(mesh, "_flatten", None)
    if flatten is None:  # pragma: no cover - torch versions without DeviceMesh._flatten
        raise ValueError(
            "a DTensor weight on a multi-dimensional mesh that spans part of the world needs a "
            "torch version with DeviceMesh._flatten"
        )
    return flatten().get_group()


def _collective_device(group: Any, like: Any) -> torch.device:
    if "nccl" in str(dist.get_backend(group)) and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return like.device if isinstance(like, Tensor) else torch.device("cpu")


_OK, _VALUE, _TYPE = 0, 1, 2


def _code(error: BaseException | None) -> int:
    if error is None:
        return _OK
    return _TYPE if isinstance(error, TypeError) else _VALUE


def _raise_if_any(fn: str, codes: dict[int, int], error: BaseException | None) -> None:
    """Raise this rank's own error, or one naming the ranks that failed."""
    if error is not None:
        raise error
    bad = sorted(r for r, c in codes.items() if c != _OK)
    if bad:
        kind = TypeError if all(codes[r] == _TYPE for r in bad) else ValueError
        raise kind(
            f"{fn}: rank(s) {bad} rejected their input (their own error message says why); no "
            "rank computed the loss"
        )


def _exchange(group: Any, row: list[int], device: torch.device) -> dict[int, list[int]]:
    """All-gather one int64 row per rank; rows keyed by global rank (the row's first field)."""
    mine = torch.tensor(row, dtype=torch.int64, device=device)
    out = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, mine, group=group)
    rows = [t.tolist() for t in out]
    return {r[0]: r for r in rows}


def _groups_along(mesh: Any, k: int) -> list[list[int]]:
    """The global ranks of each process group along mesh dim ``k``, in group-rank order."""
    m = mesh.mesh
    return [sorted(g) for g in m.movedim(k, -1).reshape(-1, m.shape[k]).tolist()]


Table = dict[int, tuple[int, int]]  # global rank -> (offset, size) of its rows of the vocabulary


def _gathered(table: Table, groups: list[list[int]]) -> Table | None:
    """Each rank's rows after all-gathering along ``groups``; None when a union has gaps."""
    out: Table = {}
    for grp in groups:
        pieces = [table[r] for r in grp]
        if len(set(pieces)) == 1:  # replicated along this dim already
            union = pieces[0]
        else:
            filled = sorted(p for p in pieces if p[1] > 0)
            start = pos = filled[0][0] if filled else 0
            for off, size in filled:
                if off != pos:
                    return None
                pos += size
            union = (start, pos - start)
        for r in grp:
            out[r] = union
    return out


def _is_partition(table: Table, groups: list[list[int]], vocab: int) -> bool:
    """Every group's ranks hold non-empty consecutive slices of [0, vocab) in group-rank order."""
    for grp in groups:
        pos = 0
        for r in grp:
            off, size = table[r]
            if off != pos or size < 1:
                return False
            pos += size
        if pos != vocab:
            return False
    return True


@dataclass
class _Plan:
    steps: list[tuple[int, list[Table]]]  # (mesh dim, each head's table before the gather)
    vocab_dim: int | None
    final: list[Table]


def _plan(
    fn: str, heads: list[_Head], mesh: Any, tables: list[Table], same_tokens: dict[int, bool]
) -> _Plan:
    split = sorted({k for h in heads for k in h.split})
    # Vocab parallel over one dim whose ranks hold the same tokens (prefer the innermost one);
    # every other splitting dim is gathered. Failing that, everything is gathered.
    candidates: list[int | None] = [k for k in reversed(split) if same_tokens[k]]
    candidates.append(None)
    for vdim in candidates:
        gathers = [k for k in split if k != vdim]
        for order in itertools.permutations(gathers):
            current, steps, ok = list(tables), [], True
            for k in order:
                groups = _groups_along(mesh, k)
                nxt = [_gathered(t, groups) for t in current]
                if any(t is None for t in nxt):
                    ok = False
                    break
                steps.append((k, current))
                current = [t for t in nxt if t is not None]
            if not ok:
                continue
            if vdim is not None:
                groups = _groups_along(mesh, vdim)
                if all(_is_partition(t, groups, h.vocab) for t, h in zip(current, heads)):
                    return _Plan(steps, vdim, current)
            elif all(all(p == (0, h.vocab) for p in t.values()) for t, h in zip(current, heads)):
                return _Plan(steps, None, current)
    raise ValueError(
        f"{fn}: the weight's rows are split over the mesh in a layout that is neither one "
        "vocabulary shard per rank in rank order nor gatherable into whole rows (pieces: "
        f"{[sorted(t.items()) for t in tables]})"
    )


def _gather_into(out: Tensor, local: Tensor, group: Any) -> None:
    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    fn(out, local, group=group)


def _reduce_scatter_into(out: Tensor, full: Tensor, group: Any) -> None:
    fn = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    fn(out, full, op=dist.ReduceOp.SUM, group=group)


class _GatherRows(torch.autograd.Function):
    """All-gather rows of a weight over a group (forward); reduce-scatter the gradient and divide
    by the group size (backward): fully_shard's treatment of a parameter it gathers. Equal pieces
    in rank order (the usual case) move straight into and out of the whole tensor; uneven ones go
    through buffers padded to the longest piece."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, local: Tensor, group: Any, pieces: list[tuple[int, int]]
    ) -> Tensor:
        start = min(off for off, size in pieces if size > 0)
        total = sum(size for _, size in pieces)
        longest = max(size for _, size in pieces)
        even = all(p == (start + i * longest, longest) for i, p in enumerate(pieces))
        ctx.group, ctx.pieces, ctx.start, ctx.longest, ctx.even = (
            group,
            pieces,
            start,
            longest,
            even,
        )
        rest = tuple(local.shape[1:])
        full = local.new_empty((total, *rest))
        if even:
            _gather_into(full, local.contiguous(), group)
            return full
        padded = local.new_zeros((longest, *rest))
        padded[: local.shape[0]] = local
        parts = [torch.empty_like(padded) for _ in pieces]
        dist.all_gather(parts, padded, group=group)
        for (off, size), part in zip(pieces, parts):
            full[off - start : off - start + size] = part[:size]
        return full

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Any:  # type: ignore[override]
        rest = tuple(grad.shape[1:])
        out = grad.new_empty((ctx.longest, *rest))
        if ctx.even:
            _reduce_scatter_into(out, grad.contiguous(), ctx.group)
            return out.div_(len(ctx.pieces)), None, None
        parts = []
        for off, size in ctx.pieces:
            part = grad.new_zeros((ctx.longest, *rest))
            part[:size] = grad[off - ctx.start : off - ctx.start + size]
            parts.append(part)
        dist.reduce_scatter(out, parts, op=dist.ReduceOp.SUM, group=ctx.group)
        mine = ctx.pieces[dist.get_rank(ctx.group)][1]
        return out[:mine].div_(len(ctx.pieces)), None, None


def _linear_call(func: Callable[..., Any], spec: ShardSpec, args: dict[str, Any], cls: Any) -> Any:
    fn = spec.fn
    heads = [_head(fn, names, args, cls) for names in spec.heads]
    meshes = [h.mesh for h in heads if h.split]
    if not meshes:  # every weight is whole on every rank: the ordinary path on local tensors
        return func(**_plain_args(spec, args, heads, cls, None, None))
    mesh = meshes[0]
    if any(m != mesh for m in meshes):
        raise ValueError(f"{fn}: the DTensor weights are split over different device meshes")

    error: BaseException | None = None
    local: dict[str, Any] = {}
    try:
        local = _plain_args(spec, args, heads, cls, None, None)
        hiddens: list[Tensor] = []
        for name, _, _ in spec.heads:
            t = local.get(name)
            if not isinstance(t, Tensor):
                raise TypeError(f"{fn}: {name} must be a torch.Tensor; got {type(t).__name__}")
            hiddens.append(t)
        tokens = hiddens + [local.get(r) for r in spec.rows]  # non-tensors (a float) are skipped
        n_rows = hiddens[0].shape[:-1].numel()
        device = heads[0].weight.device
        prints = _fingerprint(tokens, device)
    except (TypeError, ValueError) as exc:
        error, n_rows, prints = exc, -1, [0, 0]
    group = _meta_group(mesh)
    me = dist.get_rank()
    row = [me, _code(error), n_rows, *prints]
    for h in heads:
        row += [h.offset, h.size]
    table = _exchange(group, row, _collective_device(group, heads[0].weight))
    _raise_if_any(fn, {r: v[1] for r, v in table.items()}, error)

    split = sorted({k for h in heads for k in h.split})
    same_tokens = {
        k: all(len({tuple(table[r][2:5]) for r in grp}) == 1 for grp in _groups_along(mesh, k))
        for k in split
    }
    tables = [
        {r: (v[5 + 2 * i], v[6 + 2 * i]) for r, v in table.items()} for i in range(len(heads))
    ]
    plan = _plan(fn, heads, mesh, tables, same_tokens)
    for k, before in plan.steps:
        grp = mesh.get_group(k)
        members = _groups_along(mesh, k)
        mine = next(g for g in members if me in g)
        if dist.get_process_group_ranks(grp) != mine:  # pragma: no cover - defensive
            raise RuntimeError(f"{fn}: unexpected rank order in the process group of mesh dim {k}")
        for h, t in zip(heads, before):
            pieces = [t[r] for r in mine]
            if len(set(pieces)) == 1:
                continue  # this head is whole along k already
            h.weight = _GatherRows.apply(h.weight, grp, pieces)
            if h.bias is not None:
                h.bias = _GatherRows.apply(h.bias, grp, pieces)
    vgroup = mesh.get_group(plan.vocab_dim) if plan.vocab_dim is not None else None
    final = plan.final[0][me] if plan.vocab_dim is not None else None
    call = _plain_args(spec, local, heads, cls, vgroup, final)
    if not plan.steps:
        return func(**call)
    # Gathered weights: the loss runs without collectives, and one rank's error must reach the
    # others before they wait for it in the backward pass.
    try:
        out, error = func(**call), None
    except (TypeError, ValueError) as exc:
        out, error = None, exc
    codes = _exchange(group, [me, _code(error)], _collective_device(group, heads[0].weight))
    _raise_if_any(fn, {r: v[1] for r, v in codes.items()}, error)
    return out


def _plain_args(
    spec: ShardSpec,
    args: dict[str, Any],
    heads: list[_Head],
    cls: Any,
    group: Any,
    piece: tuple[int, int] | None,
) -> dict[str, Any]:
    """The call's arguments as plain tensors: hidden states and rows local, weights as planned,
    per-class tensors whole (or this rank's slice on the vocab-parallel path)."""
    fn = spec.fn
    out = dict(args)
    vocab = heads[0].vocab if heads else 0
    first = out.get(spec.heads[0][0]) if spec.heads else None
    hidden_dims = first.dim() if isinstance(first, Tensor) else -1
    for names, h in zip(spec.heads, heads):
        hidden, wname, bname = names
        x = out.get(hidden)
        if isinstance(x, cls):
            for p in x.placements:  # type: ignore[attr-defined]
                if not p.is_replicate() and getattr(p, "dim", None) in (-1, x.dim() - 1):
                    raise ValueError(
                        f"{fn}: {hidden} is a DTensor with placements {_placements(x)}: its "
                        "features (last dim) are split; gather them first (each rank needs whole "
                        "hidden vectors)"
                    )
        out[hidden] = _localize(fn, hidden, x, cls)
        out[wname] = h.weight
        if bname is not None:
            out[bname] = h.bias
    for row in spec.rows:
        t = _localize(fn, row, out.get(row), cls)
        if (
            piece is not None
            and isinstance(t, Tensor)
            and t.dim() == hidden_dims
            and t.shape[-1] == vocab != piece[1]
        ):
            # over the vocabulary per position (probability targets, a mask of allowed tokens):
            # this rank's classes
            t = t.narrow(-1, piece[0], piece[1])
        out[row] = t
    for c in spec.classes:
        t = _full(out.get(c), cls)
        if piece is not None and isinstance(t, Tensor) and t.dim() == 1 and t.shape[0] == vocab:
            t = t.narrow(0, piece[0], piece[1])
        out[c] = t
    out[spec.group] = group
    return out
