"""Losses as ``torch.nn.Module``s: thin holders of options around the functional API."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from crossentropy.torch import _validation as V
from crossentropy.torch._extras import bce_with_logits, check_focal_args, focal_loss
from crossentropy.torch._functional import cross_entropy, linear_cross_entropy
from crossentropy.torch.engine._dispatch import Plan, check_memory, explain

__all__ = [
    "BCEWithLogitsLoss",
    "CrossEntropyLoss",
    "FocalLoss",
    "LinearCrossEntropyLoss",
]


def _options(
    fn: str, ignore_index: int, label_smoothing: float, z_loss: float, softcap: float | None
) -> None:
    V.check_options(
        fn,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
    )


class CrossEntropyLoss(nn.Module):
    r"""Module form of :func:`~crossentropy.torch.cross_entropy` (``torch.nn.CrossEntropyLoss`` plus extras).

    Args:
        weight: (C,) class weights (kept as a buffer, so ``.to()`` moves it), or None.
        ignore_index, reduction, label_smoothing, z_loss, softcap, impl: as in
            :func:`~crossentropy.torch.cross_entropy`.

    Example:
        >>> import torch
        >>> from crossentropy.torch import CrossEntropyLoss
        >>> loss = CrossEntropyLoss(label_smoothing=0.1)
        >>> x = torch.tensor([[2.0, 0.0, -1.0]])
        >>> ref = torch.nn.CrossEntropyLoss(label_smoothing=0.1)(x, torch.tensor([0]))
        >>> bool(torch.allclose(loss(x, torch.tensor([0])), ref))
        True
    """

    weight: Tensor | None

    def __init__(
        self,
        weight: Tensor | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        *,
        z_loss: float = 0.0,
        softcap: float | None = None,
        impl: str = "auto",
    ) -> None:
        super().__init__()
        fn = "CrossEntropyLoss"
        V.check_reduction(fn, reduction)
        V.check_impl(fn, impl)
        _options(fn, ignore_index, label_smoothing, z_loss, softcap)
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.z_loss = z_loss
        self.softcap = softcap
        self.impl = impl

    def _kwargs(self) -> dict[str, Any]:
        return dict(
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
            z_loss=self.z_loss,
            softcap=self.softcap,
            impl=self.impl,
        )

    def forward(self, input: Tensor, target: Tensor, token_weight: Tensor | None = None) -> Tensor:
        """The loss; ``token_weight``: per-position weights (see :func:`cross_entropy`)."""
        return cross_entropy(input, target, token_weight=token_weight, **self._kwargs())

    def explain(self, input: Tensor, target: Tensor, token_weight: Tensor | None = None) -> Plan:
        """Which engine ``self(input, target)`` runs on, and why (see :func:`explain`)."""
        return explain(cross_entropy, input, target, token_weight=token_weight, **self._kwargs())

    def extra_repr(self) -> str:
        return (
            f"reduction={self.reduction!r}, ignore_index={self.ignore_index}, "
            f"label_smoothing={self.label_smoothing}, z_loss={self.z_loss}, softcap={self.softcap}"
        )


class LinearCrossEntropyLoss(nn.Module):
    r"""Module form of :func:`~crossentropy.torch.linear_cross_entropy`; holds no projection weight.

    The output projection is passed to each call (``loss(h, lm_head.weight, y)``), so the module
    can sit next to a model whose head weight is tied or sharded without owning a copy. This differs
    from ``torch.nn.LinearCrossEntropyLoss`` of torch 2.13, which owns a ``Linear`` (its
    state_dict holds ``linear.weight``) and is called as ``loss(h, y)``.

    Example:
        >>> import torch
        >>> from crossentropy.torch import LinearCrossEntropyLoss
        >>> h, W = torch.randn(4, 8), torch.randn(11, 8)
        >>> y = torch.tensor([1, 5, 10, -100])
        >>> ref = torch.nn.functional.cross_entropy(h @ W.T, y)
        >>> bool(torch.allclose(LinearCrossEntropyLoss()(h, W, y), ref, atol=1e-6))
        True
    """

    weight: Tensor | None

    def __init__(
        self,
        weight: Tensor | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        *,
        z_loss: float = 0.0,
        softcap: float | None = None,
        impl: str = "auto",
        chunk_size: int | None = None,
        memory: str | int = "auto",
    ) -> None:
        super().__init__()
        fn = "LinearCrossEntropyLoss"
        V.check_reduction(fn, reduction)
        V.check_impl(fn, impl)
        V.check_chunk_size(fn, chunk_size)
        self.memory = check_memory(fn, memory)
        _options(fn, ignore_index, label_smoothing, z_loss, softcap)
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.z_loss = z_loss
        self.softcap = softcap
        self.impl = impl
        self.chunk_size = chunk_size

    def forward(
        self,
        input: Tensor,
        linear_weight: Tensor,
        target: Tensor,
        linear_bias: Tensor | None = None,
        token_weight: Tensor | None = None,
    ) -> Tensor:
        """The loss; ``token_weight``: per-position weights (see :func:`linear_cross_entropy`)."""
        return linear_cross_entropy(
            input,
            linear_weight,
            target,
            linear_bias=linear_bias,
            token_weight=token_weight,
            **self._kwargs(),
        )

    def _kwargs(self) -> dict[str, Any]:
        return dict(
            weight=self.weight,
            reduction=self.reduction,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            z_loss=self.z_loss,
            softcap=self.softcap,
            impl=self.impl,
            chunk_size=self.chunk_size,
            memory=self.memory,
        )

    def explain(
        self,
        input: Tensor,
        linear_weight: Tensor,
        target: Tensor,
        linear_bias: Tensor | None = None,
        token_weight: Tensor | None = None,
    ) -> Plan:
        """Which engine ``self(input, linear_weight, target)`` runs on, and why."""
        return explain(
            linear_cross_entropy,
            input,
            linear_weight,
            target,
            linear_bias=linear_bias,
            token_weight=token_weight,
            **self._kwargs(),
        )

    def extra_repr(self) -> str:
        return (
            f"reduction={self.reduction!r}, ignore_index={self.ignore_index}, "
            f"label_smoothing={self.label_smoothing}, z_loss={self.z_loss}, softcap={self.softcap}"
        )


class FocalLoss(nn.Module):
    r"""Softmax focal loss (Lin et al., 2017), class dim 1, with z-loss and soft-capping.

    .. math::

        \ell = -\alpha_t (1 - p_t)^\gamma \log p_t \quad\text{(class index } t\text{)}, \qquad
        \ell = -\sum_c \alpha_c q_c (1 - p_c)^\gamma \log p_c \quad\text{(probabilities } q\text{)}

    with :math:`p = \mathrm{softmax}(s)` of the soft-capped logits. ``mean`` divides by the sum of
    :math:`\alpha_t` over counted positions (class indices) or the number of positions
    (probabilities), so ``gamma=0`` equals :class:`CrossEntropyLoss` with ``weight=alpha``. A
    scalar ``alpha`` therefore cancels out of an index-target ``mean`` (it scales ``sum`` and
    ``none``), unlike the sigmoid focal loss of torchvision, whose mean is unweighted; the
    z-loss term is as in :func:`~crossentropy.torch.cross_entropy`. All math in fp32 (fp64 for fp64).

    Args:
        gamma: focusing parameter >= 0 (2 in the paper).
        alpha: None, a number >= 0, or (C,) class weights.
        ignore_index, reduction, z_loss, softcap: as in :func:`~crossentropy.torch.cross_entropy`.

    References:
        T.-Y. Lin, P. Goyal, R. Girshick, K. He, P. Dollár, "Focal Loss for Dense Object
        Detection", ICCV 2017.

    Example:
        >>> import torch
        >>> from crossentropy.torch import FocalLoss
        >>> x = torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
        >>> round(float(FocalLoss(gamma=2.0)(x, torch.tensor([0, 1]))), 4)
        0.2445
    """

    alpha: Tensor | float | None

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: float | Tensor | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        *,
        z_loss: float = 0.0,
        softcap: float | None = None,
    ) -> None:
        super().__init__()
        V.check_reduction("FocalLoss", reduction)
        _options("FocalLoss", ignore_index, 0.0, z_loss, softcap)
        check_focal_args("FocalLoss", gamma, alpha)
        self.gamma = gamma
        if isinstance(alpha, Tensor):
            self.register_buffer("alpha", alpha)
        else:
            self.alpha = alpha
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.z_loss = z_loss
        self.softcap = softcap

    def extra_repr(self) -> str:
        alpha = "tensor" if isinstance(self.alpha, Tensor) else self.alpha
        return (
            f"gamma={self.gamma}, alpha={alpha}, ignore_index={self.ignore_index}, "
            f"reduction={self.reduction!r}, z_loss={self.z_loss}, softcap={self.softcap}"
        )

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return focal_loss(
            input,
            target,
            gamma=self.gamma,
            alpha=self.alpha,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            z_loss=self.z_loss,
            softcap=self.softcap,
        )


class BCEWithLogitsLoss(nn.Module):
    r"""``torch.nn.BCEWithLogitsLoss`` plus label smoothing, soft-capping and ignored positions.

    .. math::

        \ell = w\,\big[(1 - y')\,s - (1 + (p_w - 1)\,y') \log\sigma(s)\big], \qquad
        y' = (1 - \epsilon)\,y + \epsilon / 2, \quad s = c \tanh(x / c)

    Positions whose target equals ``ignore_index`` (a float, e.g. -100) count for nothing; ``mean``
    then divides by the number of counted positions. Without extras it equals torch's loss.

    Args:
        weight: rescaling weight broadcast against the input, or None.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        pos_weight: weight of positive examples broadcast against the input (classes last).
        label_smoothing: :math:`\epsilon \in [0, 1]`, pulls targets towards 1/2.
        softcap: :math:`c > 0` or None.
        ignore_index: target value marking positions to skip, or None.

    Example:
        >>> import torch
        >>> from crossentropy.torch import BCEWithLogitsLoss
        >>> x, y = torch.tensor([1.5, -0.5]), torch.tensor([1.0, 0.0])
        >>> ref = torch.nn.BCEWithLogitsLoss()(x, y)
        >>> bool(torch.allclose(BCEWithLogitsLoss()(x, y), ref))
        True
    """

    weight: Tensor | None
    pos_weight: Tensor | None

    def __init__(
        self,
        weight: Tensor | None = None,
        reduction: str = "mean",
        pos_weight: Tensor | None = None,
        *,
        label_smoothing: float = 0.0,
        softcap: float | None = None,
        ignore_index: float | None = None,
    ) -> None:
        super().__init__()
        V.check_reduction("BCEWithLogitsLoss", reduction)
        _options("BCEWithLogitsLoss", -100, label_smoothing, 0.0, softcap)
        self.register_buffer("weight", weight)
        self.register_buffer("pos_weight", pos_weight)
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.softcap = softcap
        self.ignore_index = ignore_index

    def extra_repr(self) -> str:
        return (
            f"reduction={self.reduction!r}, label_smoothing={self.label_smoothing}, "
            f"softcap={self.softcap}, ignore_index={self.ignore_index}"
        )

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return bce_with_logits(
            input,
            target,
            weight=self.weight,
            pos_weight=self.pos_weight,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
            softcap=self.softcap,
            ignore_index=self.ignore_index,
        )
