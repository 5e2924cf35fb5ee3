"""Contrastive cross-entropy (CLIP, InfoNCE / NT-Xent, SupCon, SigLIP): exact, memory-bounded, and
distributed without gathering either side.

The public function checks its arguments once (on every rank, through the ring's agreement when a
process group is given), sizes the tiles, runs the ring (``parallel/_ring``, which runs the
tile loops of ``engine/_contrastive``) and reduces the per-row losses it returns.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from crossentropy.torch import _validation as V
from crossentropy.torch.engine import _contrastive as E
from crossentropy.torch.engine._dispatch import budget_bytes, check_memory
from crossentropy.torch.engine._gemm import resolve_precision
from crossentropy.torch.parallel import _ring as R

__all__ = ["ContrastiveLoss", "contrastive_loss"]

_FN = "contrastive_loss"
_KINDS = ("softmax", "sigmoid")
_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)
_DESCRIBE = {
    "n": "the rows of a",
    "m": "the rows of b",
    "d": "the feature size d of a and b",
    "dtypes": "the dtypes of a and b",
    "kind": "kind",
    "symmetric": "symmetric",
    "exclude_self": "exclude_self",
    "ids": "whether a_ids/b_ids are given",
    "reduction": "reduction",
    "grad": "which of a, b, logit_scale, logit_bias require grad (or whether grad mode is on)",
    "scale": "the value of logit_scale",
    "bias": "the value of logit_bias",
    "chunk": "chunk_size",
    "memory": "memory",
    "device": "the device type",
}
_DECODE = {
    "kind": lambda v: _KINDS[v],
    "reduction": lambda v: V.REDUCTIONS[v],
    "scale": R.bits_float,
    "bias": lambda v: None if v == -1 else R.bits_float(v),
    "dtypes": lambda v: f"a {_DTYPES[v % 4]} / b {_DTYPES[v // 4]}",
    "chunk": lambda v: None if v < 0 else v,
}


@dataclass
class _Prepared:
    a: Tensor
    b: Tensor
    a_ids: Tensor | None
    b_ids: Tensor | None
    scale: float
    bias: float | None
    scale_arg: Tensor | float  # the caller's object: a tensor carries the gradient
    bias_arg: Tensor | float | None
    memory: str | int
    chunk: int | None


def _scalar(name: str, value: object) -> float:
    """The value of a float or a one-element float tensor (one host read)."""
    if isinstance(value, Tensor):
        if value.numel() != 1 or not value.is_floating_point():
            raise TypeError(
                f"{_FN}: {name} must be a float or a one-element floating-point tensor; got a "
                f"tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
            )
        return float(value.detach().reshape(()).item())
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{_FN}: {name} must be a float or a tensor; got {type(value).__name__}")
    return float(value)


def _ids(name: str, ids: object, rows: int, side: str, device: torch.device) -> Tensor:
    if not isinstance(ids, Tensor):
        raise TypeError(f"{_FN}: {name} must be a tensor of integer ids; got {type(ids).__name__}")
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TypeError(f"{_FN}: {name} must hold integer ids; got dtype {ids.dtype}")
    if ids.shape != (rows,):
        raise ValueError(
            f"{_FN}: {name} must have shape ({rows},), one id per row of {side}; got shape "
            f"{tuple(ids.shape)}"
        )
    if ids.device != device:
        raise ValueError(f"{_FN}: {name} is on {ids.device} but a is on {device}")
    return ids.long()


def _prepare(
    a: object,
    b: object,
    logit_scale: object,
    logit_bias: object,
    kind: object,
    symmetric: object,
    a_ids: object,
    b_ids: object,
    exclude_self: object,
    reduction: object,
    chunk_size: object,
    memory: object,
) -> tuple[_Prepared, dict[str, int]]:
    if kind not in _KINDS:
        raise ValueError(f"{_FN}: kind must be 'softmax' or 'sigmoid'; got {kind!r}")
    V.check_reduction(_FN, reduction)
    for name, flag in (("symmetric", symmetric), ("exclude_self", exclude_self)):
        if not isinstance(flag, (bool, np.bool_)):
            raise TypeError(f"{_FN}: {name} must be a bool; got {flag!r}")
    chunk = V.check_chunk_size(_FN, chunk_size)
    mem = check_memory(_FN, memory)
    for name, x in (("a", a), ("b", b)):
        if not isinstance(x, Tensor):
            raise TypeError(f"{_FN}: {name} must be a torch.Tensor; got {type(x).__name__}")
        if x.dim() != 2:
            raise ValueError(
                f"{_FN}: {name} must be 2-D (rows, features); got shape {tuple(x.shape)}"
            )
        if x.dtype not in _DTYPES:
            raise TypeError(
                f"{_FN}: {name} must be float64, float32, bfloat16 or float16; got {x.dtype}"
            )
    assert isinstance(a, Tensor) and isinstance(b, Tensor)
    n, m = a.shape[0], b.shape[0]
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"{_FN}: a and b must have the same feature size d; got a {tuple(a.shape)} and b "
            f"{tuple(b.shape)}"
        )
    if b.device != a.device:
        raise ValueError(f"{_FN}: b is on {b.device} but a is on {a.device}")
    if (a_ids is None) != (b_ids is None):
        given = "a_ids" if a_ids is not None else "b_ids"
        raise ValueError(
            f"{_FN}: {given} was given without the other; pass both a_ids and b_ids (positives "
            "are the pairs with equal ids) or neither (positives are a_i and b_i)"
        )
    ai = bi = None
    if a_ids is not None:
        ai = _ids("a_ids", a_ids, n, "a", a.device)
        bi = _ids("b_ids", b_ids, m, "b", a.device)
    elif n > m:
        raise ValueError(
            f"{_FN}: with diagonal positives (no a_ids/b_ids) a_i's positive is b_i, so b needs at "
            f"least as many rows as a; got a with {n} rows and b with {m}"
        )
    if exclude_self:
        if ai is None:
            raise ValueError(
                f"{_FN}: exclude_self=True needs a_ids and b_ids (a and b are the same set, so the "
                "diagonal pairs are the excluded self pairs and cannot be the positives)"
            )
        if n != m:
            raise ValueError(
                f"{_FN}: exclude_self=True means a and b are the same set, so they must have the "
                f"same rows; got a with {n} rows and b with {m}"
            )
    scale = _scalar("logit_scale", logit_scale)
    if not (math.isfinite(scale) and scale > 0.0):
        raise ValueError(f"{_FN}: logit_scale must be finite and positive; got {scale}")
    bias = None
    if logit_bias is not None:
        bias = _scalar("logit_bias", logit_bias)
        if not math.isfinite(bias):
            raise ValueError(f"{_FN}: logit_bias must be finite; got {bias}")
    for name, t in (("logit_scale", logit_scale), ("logit_bias", logit_bias)):
        if isinstance(t, Tensor) and t.device != a.device and t.device.type != "cpu":
            raise ValueError(f"{_FN}: {name} is on {t.device} but a is on {a.device}")
    grad = torch.is_grad_enabled()
    flags = [a, b, logit_scale, logit_bias]
    fields = {
        "n": n,
        "m": m,
        "d": a.shape[1],
        "dtypes": _DTYPES.index(a.dtype) + 4 * _DTYPES.index(b.dtype),
        "kind": _KINDS.index(kind),
        "symmetric": int(bool(symmetric)),
        "exclude_self": int(bool(exclude_self)),
        "ids": int(ai is not None),
        "reduction": V.REDUCTIONS.index(reduction),
        "grad": sum(
            (1 << i) * int(grad and isinstance(t, Tensor) and t.requires_grad)
            for i, t in enumerate(flags)
        ),
        "scale": R.float_bits(scale),
        "bias": R.float_bits(bias) if bias is not None else -1,
        "chunk": chunk if chunk is not None else -1,
        "memory": mem if isinstance(mem, int) else -1 - ("auto", "low").index(mem),
        "device": {"cpu": 0, "cuda": 1}.get(a.device.type, 2),
    }
    scale_arg: Any = logit_scale
    bias_arg: Any = logit_bias
    return _Prepared(a, b, ai, bi, scale, bias, scale_arg, bias_arg, mem, chunk), fields


def contrastive_loss(
    a: Tensor,
    b: Tensor,
    *,
    logit_scale: Tensor | float,
    logit_bias: Tensor | float | None = None,
    kind: str = "softmax",
    symmetric: bool = True,
    a_ids: Tensor | None = None,
    b_ids: Tensor | None = None,
    exclude_self: bool = False,
    process_group: dist.ProcessGroup | None = None,
    reduction: str = "mean",
    chunk_size: int | None = None,
    memory: str | int = "auto",
) -> Tensor:
    r"""Contrastive cross-entropy of two sets of embeddings: CLIP, InfoNCE / NT-Xent, SupCon, SigLIP.

    The logits are :math:`s_{ij} = t\, a_i \cdot b_j + \beta` (``logit_scale`` :math:`t`,
    ``logit_bias`` :math:`\beta`); nothing is normalised inside (normalise ``a`` and ``b`` first,
    as open_clip does). :math:`P_i` are the positives of :math:`a_i` among the rows of ``b`` (of
    every rank, with ``process_group``), :math:`K_i = |P_i|`.

    ``kind="softmax"`` is the cross-entropy of each row against a target spread uniformly over
    its positives (SupCon's :math:`L_\text{out}`; one positive gives InfoNCE):

    .. math::

        \ell_i = \log \sum_{j} e^{s_{ij}} - \frac{1}{K_i} \sum_{p \in P_i} s_{ip}

    and with ``symmetric=True`` the same for the B->A direction, whose anchors are the rows of
    ``b`` that are some row of ``a``'s positive, averaged with the A->B loss as CLIP does. The bias
    cancels in a softmax (its gradient is 0). ``kind="sigmoid"`` is SigLIP's loss over every pair,
    with :math:`y_{ij} = +1` on positives and :math:`-1` elsewhere (every pair counts once, so
    ``symmetric`` changes nothing):

    .. math::

        \ell_i = \sum_{j} \log\left(1 + e^{-y_{ij} s_{ij}}\right)

    Positives: by default :math:`a_i` and :math:`b_i` on the same rank (the diagonal; extra rows
    of ``b``, beyond ``a``'s, are hard negatives, as in sentence-transformers'
    MultipleNegativesRankingLoss). With ``a_ids`` and ``b_ids`` they are the pairs with equal ids.
    **Ignored rows:** a row whose id is -100, or that has no positive anywhere in the (global)
    batch, is not an anchor: its loss is 0 and it does not count in ``mean``; it still serves as a
    negative for the other rows. ``exclude_self=True``: ``a`` and ``b`` are the same set (SimCLR's
    2N views, SupCon), and each row's pair with itself leaves the softmax and the positives.

    Reductions: ``"mean"`` divides each direction's sum by its number of anchors on this rank
    (SigLIP: by the number of counted rows of ``a``), 0 when there are none; ``"sum"``; ``"none"``
    gives the per-anchor terms whose sum is ``"sum"``: shape (n,), or (n + m,) for symmetric
    softmax (the rows of ``a`` then ``b``, each halved; 0 on rows that are not anchors).

    **Distributed** (``process_group``): ``a`` and ``b`` are this rank's part of the global batch,
    and the rows of ``b`` of every rank are the negatives. The blocks of ``b`` pass round a ring of
    the ranks (P2P isend/irecv); neither side is all-gathered and no n x N_global logits exist:
    memory per rank is O((n + m) d + tile) whatever the world size. The value on each rank is its
    own anchors' loss, and the gradients that reach ``a`` and ``b`` are those of the sum of every
    rank's loss (those of ``logit_scale`` and ``logit_bias`` of this rank's loss), exactly what
    open_clip gives with ``ClipLoss(local_loss=True, gather_with_grad=True)`` (softmax) and
    ``SigLipLoss`` (sigmoid); DDP's averaging then gives the gradient of the global-batch loss.
    Every rank must call it, with the same options, and run the backward pass. Ranks may hold
    different batch sizes. The ring runs eagerly (an autograd Function with P2P communication
    inside, not yet a custom op): ``torch.compile`` breaks its graph around the call.

    Args:
        a: (n, d) embeddings of one side (images, queries, anchors); float64, float32, bfloat16
            or float16 (math in fp32, fp64 for fp64 inputs).
        b: (m, d) embeddings of the other side (texts, documents, positives and hard negatives).
        logit_scale: :math:`t > 0`, a float or a one-element tensor (it then receives a gradient);
            CLIP passes ``log_scale.exp()``.
        logit_bias: :math:`\beta`, a float, a one-element tensor, or None (SigLIP's learned bias).
        kind: ``"softmax"`` or ``"sigmoid"``.
        symmetric: softmax only: average with the B->A direction (CLIP). ``False``: A->B only
            (InfoNCE, MultipleNegativesRankingLoss, SupCon).
        a_ids, b_ids: (n,) and (m,) integer ids (both or neither); equal ids are positives,
            -100 is ignored.
        exclude_self: ``a`` and ``b`` are the same rows; drop the pairs (i, i). Needs ids.
        process_group: a ``torch.distributed`` group over which the batch is split, or None.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        chunk_size: tiles of at most ``chunk_size x chunk_size`` logits; None sizes them from
            ``memory``.
        memory: ``"auto"``, ``"low"`` or bytes per tile buffer (as in
            :func:`~crossentropy.torch.linear_cross_entropy`).

    Returns:
        The loss, fp32 (fp64 for fp64 inputs): a scalar, or per anchor with ``"none"``.
        Gradients come back in the inputs' dtypes.

    Raises:
        ValueError, TypeError: on every rank, naming the argument, when any rank's input is bad
            (a d mismatch, ``n > m`` with diagonal positives, ids on one side only, a non-finite
            or non-positive scale, ...) or when the ranks disagree on the options.

    References:
        Radford et al., "Learning Transferable Visual Models From Natural Language Supervision"
        (CLIP), 2021. Oord et al., "Representation Learning with Contrastive Predictive Coding"
        (InfoNCE), 2018. Chen et al., "A Simple Framework for Contrastive Learning of Visual
        Representations" (SimCLR), 2020. Khosla et al., "Supervised Contrastive Learning", 2020.
        Zhai et al., "Sigmoid Loss for Language Image Pre-Training" (SigLIP), 2023.

    Example:
        >>> import torch
        >>> from crossentropy.torch import contrastive_loss
        >>> a = torch.nn.functional.normalize(torch.randn(8, 16, dtype=torch.float64), dim=1)
        >>> b = torch.nn.functional.normalize(torch.randn(8, 16, dtype=torch.float64), dim=1)
        >>> loss = contrastive_loss(a, b, logit_scale=10.0)
        >>> s = 10.0 * a @ b.T
        >>> y = torch.arange(8)
        >>> ref = (torch.nn.functional.cross_entropy(s, y) + torch.nn.functional.cross_entropy(s.T, y)) / 2
        >>> bool(torch.allclose(loss, ref))
        True
    """
    group = process_group
    if group is not None:
        if not dist.is_available() or not dist.is_initialized():
            raise ValueError(
                f"{_FN}: process_group was given but torch.distributed is not initialized"
            )
        if not isinstance(group, dist.ProcessGroup):
            raise TypeError(
                f"{_FN}: process_group must be a torch.distributed.ProcessGroup; got "
                f"{type(group).__name__}"
            )
        if dist.get_rank(group) < 0:
            raise ValueError(f"{_FN}: this process is not a member of process_group")

    def prepare() -> tuple[_Prepared, dict[str, int]]:
        return _prepare(
            a, b, logit_scale, logit_bias, kind, symmetric, a_ids, b_ids, exclude_self,
            reduction, chunk_size, memory,
        )  # fmt: skip

    if group is None:
        prep, fields = prepare()
        layout = R.Layout(None, 0, 1, (fields["n"],), (fields["m"],))
    else:
        prepared, error = R.guard(prepare)
        fields_or_none = None if prepared is None else prepared[1]
        layout = R.agree(_FN, group, fields_or_none, error, _DESCRIBE, _DECODE)
        prep = prepared[0]
    return _compute(prep, layout, kind, bool(symmetric), bool(exclude_self), reduction)


def _compute(
    prep: _Prepared,
    layout: R.Layout,
    kind: str,
    symmetric: bool,
    exclude_self: bool,
    reduction: str,
) -> Tensor:
    a, b = prep.a, prep.b
    prec = resolve_precision(a.device, a.dtype, b.dtype)
    comp = prec.compute
    ids = prep.a_ids is not None
    columns = kind == "softmax" and symmetric
    # tiles alive at once: the logits and the exponentials (+ the column gradient in the backward
    # pass of symmetric softmax, + the positives' mask with ids)
    blocks = 2 + int(columns) + int(ids)
    elem = torch.finfo(comp).bits // 8
    rows, cols = E.tile_shape(
        a.shape[0] or 1,
        max(layout.m) or 1,
        budget=budget_bytes(prep.memory, a.device),
        blocks=blocks,
        elem=elem,
        chunk=prep.chunk,
    )
    spec = E.PairSpec(kind, columns, exclude_self, ids, rows, cols)
    scale_t = _as_tensor(prep.scale_arg, prep.scale, comp, a.device)
    bias_t = None
    if prep.bias is not None:
        bias_t = _as_tensor(prep.bias_arg, prep.bias, comp, a.device)
    call = R.RingCall(spec, layout, prec, prep.a_ids, prep.b_ids, prep.scale, bias_t is not None)
    loss_a, loss_b, valid_a, valid_b = R.run(call, a, b, scale_t, bias_t)
    if columns:
        if reduction == "none":
            return torch.cat([loss_a, loss_b]) * 0.5
        if reduction == "sum":
            return (loss_a.sum() + loss_b.sum()) * 0.5
        na = valid_a.sum().clamp(min=1).to(comp)
        nb = valid_b.sum().clamp(min=1).to(comp)
        return (loss_a.sum() / na + loss_b.sum() / nb) * 0.5
    if reduction == "none":
        return loss_a
    if reduction == "sum":
        return loss_a.sum()
    return loss_a.sum() / valid_a.sum().clamp(min=1).to(comp)


def _as_tensor(t: Any, value: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    if isinstance(t, Tensor):
        return t.reshape(()).to(device=device, dtype=dtype)
    return torch.tensor(value, dtype=dtype, device=device)


class ContrastiveLoss(nn.Module):
    r"""Module form of :func:`~crossentropy.torch.contrastive_loss` with a learnable temperature.

    Holds ``log_scale`` (the logit scale is ``log_scale.exp()``) and, for ``kind="sigmoid"``, a
    learnable ``bias``. The defaults initialise them as the papers do: CLIP's
    :math:`t = 1/0.07` for softmax; SigLIP's :math:`t' = \log 10` (:math:`t = 10`) and
    :math:`b = -10` for sigmoid.

    Args:
        kind, symmetric, exclude_self, process_group, reduction, chunk_size, memory: as in
            :func:`~crossentropy.torch.contrastive_loss`.
        init_scale: the initial logit scale :math:`t` (1/0.07 for softmax, 10 for sigmoid).
        init_bias: the initial bias of the sigmoid loss (-10); softmax has none.
        learn_scale: make ``log_scale`` (and ``bias``) parameters; ``False`` keeps them as fixed
            buffers.

    Example:
        >>> import torch
        >>> from crossentropy.torch import ContrastiveLoss
        >>> clip = ContrastiveLoss()
        >>> round(float(clip.log_scale.exp()), 4)
        14.2857
        >>> a, b = torch.randn(4, 8), torch.randn(6, 8)
        >>> loss = clip(a, b)  # the 2 extra rows of b are hard negatives
        >>> loss.backward()
        >>> clip.log_scale.grad is not None
        True
    """

    log_scale: Tensor
    bias: Tensor | None

    def __init__(
        self,
        kind: str = "softmax",
        *,
        symmetric: bool = True,
        init_scale: float | None = None,
        init_bias: float | None = None,
        learn_scale: bool = True,
        exclude_self: bool = False,
        process_group: dist.ProcessGroup | None = None,
        reduction: str = "mean",
        chunk_size: int | None = None,
        memory: str | int = "auto",
    ) -> None:
        super().__init__()
        if kind not in _KINDS:
            raise ValueError(f"ContrastiveLoss: kind must be 'softmax' or 'sigmoid'; got {kind!r}")
        V.check_reduction("ContrastiveLoss", reduction)
        V.check_chunk_size("ContrastiveLoss", chunk_size)
        check_memory("ContrastiveLoss", memory)
        if init_scale is None:
            init_scale = 1.0 / 0.07 if kind == "softmax" else 10.0
        if not (math.isfinite(init_scale) and init_scale > 0):
            raise ValueError(
                f"ContrastiveLoss: init_scale must be finite and positive; got {init_scale}"
            )
        if kind == "softmax" and init_bias is not None:
            raise ValueError(
                "ContrastiveLoss: init_bias is for kind='sigmoid' (a bias cancels in a softmax)"
            )
        if kind == "sigmoid" and init_bias is None:
            init_bias = -10.0
        log_scale = torch.tensor(math.log(init_scale))
        bias = torch.tensor(float(init_bias)) if init_bias is not None else None
        if learn_scale:
            self.log_scale = nn.Parameter(log_scale)
            self.bias = nn.Parameter(bias) if bias is not None else None
        else:
            self.register_buffer("log_scale", log_scale)
            self.register_buffer("bias", bias)
        self.kind = kind
        self.symmetric = symmetric
        self.exclude_self = exclude_self
        self.process_group = process_group
        self.reduction = reduction
        self.chunk_size = chunk_size
        self.memory = memory

    def forward(
        self, a: Tensor, b: Tensor, a_ids: Tensor | None = None, b_ids: Tensor | None = None
    ) -> Tensor:
        return contrastive_loss(
            a,
            b,
            logit_scale=self.log_scale.exp(),
            logit_bias=self.bias,
            kind=self.kind,
            symmetric=self.symmetric,
            a_ids=a_ids,
            b_ids=b_ids,
            exclude_self=self.exclude_self,
            process_group=self.process_group,
            reduction=self.reduction,
            chunk_size=self.chunk_size,
            memory=self.memory,
        )

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, symmetric={self.symmetric}, reduction={self.reduction!r}"
