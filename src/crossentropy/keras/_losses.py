"""Keras 3 loss classes with the extras of crossentropy: ignore_class with label smoothing, z-loss, focal.

The classes follow Keras's conventions: ``loss(y_true, y_pred, sample_weight=None)``,
``from_logits=False`` by default (``y_pred`` are probabilities, renormalised and clipped to
``[eps, 1 - eps]`` as Keras's own losses do), ``reduction="sum_over_batch_size"``, ``name``,
``dtype``, and ``get_config``/``from_config`` for saving. They are written with ``keras.ops`` and
so run on every Keras backend. Positions whose label equals ``ignore_class`` get a zero loss and are
masked out of the reduction, so ``"sum_over_batch_size"`` averages over the counted positions only
(Keras's rule for masks, which equals torch's ``ignore_index`` mean).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

__all__ = [
    "SparseCategoricalCrossentropy",
    "SparseCategoricalFocalCrossentropy",
]

_PACKAGE = "crossentropy"


def _check_float(name: str, value: Any, owner: str, low: float, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {name} must be a number; got {value!r}")
    value = float(value)
    if not value >= low or (high is not None and value > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{owner}: {name} must be {bound}; got {value!r}")
    return value


def _check_ignore_class(value: Any, owner: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{owner}: ignore_class must be an int or None; got {value!r}")
    return int(value)


def _log_probs(y_pred: Any, from_logits: bool) -> Any:
    """``log p`` along the last axis from logits or (Keras-style renormalised, clipped) probabilities."""
    if from_logits:
        return ops.log_softmax(y_pred, axis=-1)
    eps = keras.config.epsilon()
    p = y_pred / ops.sum(y_pred, axis=-1, keepdims=True)
    return ops.log(ops.clip(p, eps, 1.0 - eps))


def _prepare(y_true: Any, y_pred: Any, axis: int, owner: str) -> tuple[Any, Any]:
    """Class axis moved last; labels as int32 with the shape of ``y_pred`` without it."""
    y_true, y_pred = ops.convert_to_tensor(y_true), ops.convert_to_tensor(y_pred)
    rank = len(y_pred.shape)
    if rank < 1:
        raise ValueError(f"{owner}: y_pred must have a class axis; got shape {tuple(y_pred.shape)}")
    axis = axis % rank
    if axis != rank - 1:
        y_pred = ops.moveaxis(y_pred, axis, -1)
        if len(y_true.shape) == rank:
            y_true = ops.moveaxis(y_true, axis, -1)
    if len(y_true.shape) == rank and y_true.shape[-1] == 1:
        y_true = ops.squeeze(y_true, axis=-1)
    if tuple(y_true.shape) != tuple(y_pred.shape[:-1]):
        raise ValueError(
            f"{owner}: y_true must hold one class index per position, shape "
            f"{tuple(y_pred.shape[:-1])} (y_pred's shape without the class axis); got "
            f"{tuple(y_true.shape)}"
        )
    return ops.cast(y_true, "int32"), y_pred


def _masked(losses: Any, valid: Any | None) -> Any:
    if valid is None:
        return losses
    losses = ops.where(valid, losses, ops.zeros_like(losses))
    # Keras's own sparse cross-entropy with ignore_class marks the mask the same way; the Loss base
    # class then averages over the counted positions only.
    try:
        from keras.src.backend import set_keras_mask
    except ImportError:  # pragma: no cover - older Keras 3 releases set the attribute directly
        losses._keras_mask = valid
    else:
        set_keras_mask(losses, mask=valid)
    return losses


def _pick(values: Any, labels: Any) -> Any:
    """``values[..., labels]`` along the last axis."""
    return ops.squeeze(ops.take_along_axis(values, ops.expand_dims(labels, -1), axis=-1), axis=-1)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SparseCategoricalCrossentropy(keras.losses.Loss):  # type: ignore[misc]
    r"""Sparse categorical cross-entropy with ``ignore_class``, label smoothing and z-loss together.

    For a position with label :math:`y` (not ``ignore_class``), :math:`C` classes,
    :math:`\log p = \log\operatorname{softmax}(z)` and :math:`\mathrm{lse} = \log\sum_c e^{z_c}`:

    .. math::

        \ell = (1 - \varepsilon)(-\log p_y) + \frac{\varepsilon}{C}\sum_c (-\log p_c)
               + \lambda_z\, \mathrm{lse}^2,

    label smoothing :math:`\varepsilon` as in ``torch.nn.functional.cross_entropy`` and Keras's
    ``CategoricalCrossentropy`` (target :math:`(1-\varepsilon)\,\mathrm{onehot}(y) + \varepsilon/C`),
    z-loss :math:`\lambda_z` as in PaLM. Ignored positions contribute 0 and are masked out of the
    reduction: ``"sum_over_batch_size"`` divides by the number of counted positions.

    The arguments Keras's ``keras.losses.SparseCategoricalCrossentropy`` takes come first, in its
    order and with its defaults; the extras are keyword-only.

    Args:
        from_logits: whether ``y_pred`` are logits (else probabilities, as in Keras).
        ignore_class: label value to skip (e.g. ``-100`` or a padding class), or ``None``.
        reduction: a Keras reduction (``"sum_over_batch_size"``, ``"sum"``, ``"mean"``,
            ``"mean_with_sample_weight"``, ``"none"`` or ``None``).
        axis: the class axis of ``y_pred`` (default ``-1``).
        name: the loss name.
        dtype: the dtype of the computation (Keras's default float type when ``None``). Keras
            casts ``y_true`` to it before the loss sees it, so keep float32 (exact labels up to
            2**24) for vocabularies above 2048 classes: float16 rounds larger class ids.
        label_smoothing: :math:`\varepsilon \in [0, 1]` (keyword-only).
        z_loss: :math:`\lambda_z \ge 0`; needs ``from_logits=True`` (keyword-only).

    Call arguments:
        y_true: integer labels, shape ``y_pred.shape`` without the class axis (a trailing size-1
            axis is allowed).
        y_pred: logits or probabilities, float, with the class axis at ``axis``.
        sample_weight: optional weights, as for any Keras loss.

    Call returns:
        The reduced loss (a scalar) or, with ``reduction=None``/``"none"``, per-position losses.

    Example:
        >>> import numpy as np
        >>> from crossentropy.keras import SparseCategoricalCrossentropy
        >>> loss = SparseCategoricalCrossentropy(from_logits=True, ignore_class=-100,
        ...                                      label_smoothing=0.1)
        >>> logits = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [1.0, 1.0, 1.0]])
        >>> round(float(loss([0, 2, -100], logits)), 4)
        0.7016

    References:
        Szegedy et al. 2016, "Rethinking the Inception Architecture" (label smoothing);
        Chowdhery et al. 2022, "PaLM" (z-loss).
    """

    def __init__(
        self,
        from_logits: bool = False,
        ignore_class: int | None = None,
        reduction: str | None = "sum_over_batch_size",
        axis: int = -1,
        name: str = "sparse_categorical_crossentropy",
        dtype: Any = None,
        *,
        label_smoothing: float = 0.0,
        z_loss: float = 0.0,
    ) -> None:
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        owner = type(self).__name__
        self.from_logits = bool(from_logits)
        self.ignore_class = _check_ignore_class(ignore_class, owner)
        self.label_smoothing = _check_float("label_smoothing", label_smoothing, owner, 0.0, 1.0)
        self.z_loss = _check_float("z_loss", z_loss, owner, 0.0)
        if self.z_loss and not self.from_logits:
            raise ValueError(
                f"{owner}: z_loss needs logits (from_logits=True); probabilities carry no "
                "logsumexp to penalise"
            )
        self.axis = int(axis)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        labels, y_pred = _prepare(y_true, y_pred, self.axis, type(self).__name__)
        valid = None
        if self.ignore_class is not None:
            valid = ops.not_equal(labels, self.ignore_class)
            labels = ops.where(valid, labels, ops.zeros_like(labels))
        log_p = _log_probs(y_pred, self.from_logits)
        losses = -_pick(log_p, labels)
        if self.label_smoothing:
            eps = self.label_smoothing
            # ops.sum / C rather than ops.mean: Keras's torch mean computes float64 in float32.
            n_classes = ops.cast(ops.shape(log_p)[-1], log_p.dtype)
            losses = (1.0 - eps) * losses - eps * ops.sum(log_p, axis=-1) / n_classes
        if self.z_loss:
            losses = losses + self.z_loss * ops.square(ops.logsumexp(y_pred, axis=-1))
        return _masked(losses, valid)

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        config.update(
            from_logits=self.from_logits,
            ignore_class=self.ignore_class,
            label_smoothing=self.label_smoothing,
            z_loss=self.z_loss,
            axis=self.axis,
        )
        config.setdefault("dtype", self.dtype)  # Keras's own losses drop it; a float64 loss would
        return config  # come back as float32


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SparseCategoricalFocalCrossentropy(keras.losses.Loss):  # type: ignore[misc]
    r"""Keras's categorical focal loss on integer labels, with ``ignore_class``.

    For a position with label :math:`y` (not ``ignore_class``), :math:`C` classes,
    :math:`p = \operatorname{softmax}(z)` and the smoothed target
    :math:`t = (1 - \varepsilon)\,\mathrm{onehot}(y) + \varepsilon / C`:

    .. math::

        \ell = \sum_c \alpha_c\, (1 - p_c)^{\gamma}\, (-t_c \log p_c),

    which is :math:`-\alpha_y (1 - p_y)^{\gamma} \log p_y` without smoothing. This is
    ``keras.losses.CategoricalFocalCrossentropy`` on ``one_hot(y_true)``, with the same signature,
    positional order and defaults (``alpha=0.25``, ``gamma=2.0``), computed from the labels
    without building the one-hot targets; ``ignore_class`` (keyword-only) gives ignored positions
    a zero loss and masks them out of the reduction. :math:`1 - p` is computed as
    :math:`-\operatorname{expm1}(\log p)`, so it keeps its precision when :math:`p \to 1`; with
    ``from_logits=True``, :math:`\log p` comes from ``log_softmax`` (Keras clips :math:`p` to
    :math:`[\epsilon, 1 - \epsilon]` first, so the two differ where a probability is below
    :math:`10^{-7}`). ``gamma=0`` and ``alpha=1`` give the sparse categorical cross-entropy.

    Args:
        alpha: weight of every class: a non-negative float (0.25, as in Keras and the paper), a
            sequence of ``C`` per-class weights, or ``None`` for 1.
        gamma: focusing parameter :math:`\gamma \ge 0` (2 in the paper).
        from_logits: whether ``y_pred`` are logits (else probabilities, as in Keras).
        label_smoothing: :math:`\varepsilon \in [0, 1]`, as in Keras.
        axis: the class axis of ``y_pred`` (default ``-1``).
        reduction: a Keras reduction.
        name: the loss name.
        dtype: the dtype of the computation (see :class:`SparseCategoricalCrossentropy`).
        ignore_class: label value to skip, or ``None`` (keyword-only).

    Call returns:
        The reduced loss or, with ``reduction=None``/``"none"``, per-position losses.

    Example:
        >>> import numpy as np
        >>> from crossentropy.keras import SparseCategoricalFocalCrossentropy
        >>> loss = SparseCategoricalFocalCrossentropy(from_logits=True)  # alpha=0.25, gamma=2
        >>> round(float(loss([0, 1], np.array([[3.0, 0.0], [0.0, 0.0]]))), 4)
        0.0217

    References:
        Lin et al. 2017, "Focal Loss for Dense Object Detection".
    """

    def __init__(
        self,
        alpha: float | Sequence[float] | None = 0.25,
        gamma: float = 2.0,
        from_logits: bool = False,
        label_smoothing: float = 0.0,
        axis: int = -1,
        reduction: str | None = "sum_over_batch_size",
        name: str = "sparse_categorical_focal_crossentropy",
        dtype: Any = None,
        *,
        ignore_class: int | None = None,
    ) -> None:
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        owner = type(self).__name__
        self.gamma = _check_float("gamma", gamma, owner, 0.0)
        if alpha is None or (isinstance(alpha, numbers.Real) and not isinstance(alpha, bool)):
            self.alpha: float | list[float] | None = (
                None if alpha is None else _check_float("alpha", alpha, owner, 0.0)
            )
        else:
            try:
                values = [float(a) for a in alpha]  # type: ignore[union-attr]
            except (TypeError, ValueError):
                raise TypeError(
                    f"{owner}: alpha must be None, a number or a sequence of per-class numbers; "
                    f"got {alpha!r}"
                ) from None
            for a in values:
                _check_float("alpha", a, owner, 0.0)
            self.alpha = values
        self.from_logits = bool(from_logits)
        self.label_smoothing = _check_float("label_smoothing", label_smoothing, owner, 0.0, 1.0)
        self.ignore_class = _check_ignore_class(ignore_class, owner)
        self.axis = int(axis)

    def _focal(self, log_p: Any) -> Any:
        """``(1 - p)^gamma (-log p)`` elementwise; ``log p <= 0``, so ``1 - p = -expm1(log p)``
        is ``>= 0`` without a clamp."""
        losses = -log_p
        if self.gamma:
            losses = losses * ops.power(-ops.expm1(log_p), self.gamma)
        return losses

    def call(self, y_true: Any, y_pred: Any) -> Any:
        owner = type(self).__name__
        labels, y_pred = _prepare(y_true, y_pred, self.axis, owner)
        valid = None
        if self.ignore_class is not None:
            valid = ops.not_equal(labels, self.ignore_class)
            labels = ops.where(valid, labels, ops.zeros_like(labels))
        log_p = _log_probs(y_pred, self.from_logits)
        alpha = self.alpha
        if isinstance(alpha, list):
            n_classes = y_pred.shape[-1]
            if n_classes is not None and len(alpha) != n_classes:
                raise ValueError(
                    f"{owner}: alpha has {len(alpha)} per-class weights but y_pred has "
                    f"{n_classes} classes"
                )
        if self.label_smoothing:
            # Every class carries target mass eps / C, each with its own focal factor and alpha.
            terms = self._focal(log_p)
            if isinstance(alpha, list):
                terms = terms * ops.convert_to_tensor(alpha, dtype=terms.dtype)
            eps = self.label_smoothing
            n = ops.cast(ops.shape(log_p)[-1], log_p.dtype)
            losses = (1.0 - eps) * _pick(terms, labels) + eps * ops.sum(terms, axis=-1) / n
        else:
            losses = self._focal(_pick(log_p, labels))
            if isinstance(alpha, list):
                losses = losses * ops.take(ops.convert_to_tensor(alpha, dtype=losses.dtype), labels)
        if alpha is not None and not isinstance(alpha, list):
            losses = losses * alpha
        return _masked(losses, valid)

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        config.update(
            alpha=self.alpha,
            gamma=self.gamma,
            from_logits=self.from_logits,
            label_smoothing=self.label_smoothing,
            axis=self.axis,
            ignore_class=self.ignore_class,
        )
        config.setdefault("dtype", self.dtype)
        return config
