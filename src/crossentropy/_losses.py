"""Classification losses from logits or probabilities on any array-API array.

``softmax_cross_entropy`` and ``sigmoid_cross_entropy`` follow the normalisation rules of
``torch.nn.functional.cross_entropy`` and ``binary_cross_entropy_with_logits`` exactly (with the class
axis at ``axis`` instead of torch's dim 1), so results agree with torch to rounding. Deliberate
differences, all of which replace a NaN by a defined value or an error:

* ``mean`` over nothing (all positions ignored, a zero weight sum, or an empty input) is 0;
* terms with a zero coefficient are 0, so ``0 * log 0`` and ``0 * (-inf)`` (no target mass on a
  masked class, or a zero class weight there) cost nothing;
* NaN logits raise ``ValueError``, and so does ``+inf`` for the softmax losses;
* ``binary_cross_entropy`` does not clamp the log at -100: a zero probability on an event that
  happened costs ``inf``.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, overload

import numpy as np

from ._array import (
    Array,
    ArrayLike,
    ArrayT,
    NumPyInput,
    NumPyResult,
    as_arrays,
    as_float,
    check_reduction,
    first_true,
    is_floating,
    is_integral,
    log_base_divisor,
    normalize_axis,
    result,
)
from ._softmax import _log_softmax

__all__ = [
    "binary_cross_entropy",
    "focal_loss",
    "sigmoid_cross_entropy",
    "softmax_cross_entropy",
]


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in x.shape)


def _check_logits(xp: Any, logits: Any, func: str, name: str = "logits") -> Any:
    if not is_floating(xp, logits):
        raise TypeError(f"{func}: {name} must have a real floating dtype; got dtype {logits.dtype}")
    if math.prod(_shape(logits)) == 0:
        return logits
    bad = xp.isnan(logits) | (logits == float("inf"))
    if bool(xp.any(bad)):
        index = first_true(xp, bad)
        raise ValueError(
            f"{func}: {name} must not contain NaN or +inf (-inf marks a masked class); got "
            f"{float(logits[index])} at index {index} of an array of shape {_shape(logits)}"
        )
    return logits


def _check_range(
    xp: Any, x: Any, func: str, name: str, low: float | None, high: float | None
) -> None:
    """Raise unless every entry of ``x`` is finite-or-allowed and within ``[low, high]``."""
    if math.prod(_shape(x)) == 0:
        return
    bad = xp.isnan(x)
    if low is not None:
        bad = bad | (x < low)
    if high is not None:
        bad = bad | (x > high)
    if low is None or high is None:
        bad = bad | xp.isinf(x)
    if bool(xp.any(bad)):
        index = first_true(xp, bad)
        lo = "-inf" if low is None else repr(low)
        hi = "inf" if high is None else repr(high)
        what = (
            f"finite values in [{lo}, {hi}]"
            if (low is None or high is None)
            else f"values in [{lo}, {hi}]"
        )
        raise ValueError(
            f"{func}: {name} must hold {what}; got {float(x[index])} at index {index} of an "
            f"array of shape {_shape(x)}"
        )


def _check_weight(xp: Any, weight: Any, n_classes: int, func: str, name: str = "weight") -> Any:
    if weight.ndim != 1 or _shape(weight)[0] != n_classes:
        raise ValueError(
            f"{func}: {name} must have shape ({n_classes},), one entry per class; got shape "
            f"{_shape(weight)}"
        )
    weight = as_float(xp, weight, name)
    _check_range(xp, weight, func, name, 0.0, None)
    return weight


def _check_smoothing(label_smoothing: float, func: str) -> float:
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, numbers.Real):
        raise TypeError(
            f"{func}: label_smoothing must be a float in [0, 1]; got {label_smoothing!r}"
        )
    if not 0.0 <= float(label_smoothing) <= 1.0:
        raise ValueError(f"{func}: label_smoothing must be in [0, 1]; got {label_smoothing!r}")
    return float(label_smoothing)


def _zero_where(xp: Any, mask: Any, x: Any) -> Any:
    """``x`` with the entries under ``mask`` set to 0 (no NaN leaks from inf * 0)."""
    return xp.where(mask, xp.zeros_like(x), x)


def _safe_product(xp: Any, coef: Any, log_p: Any) -> Any:
    """``coef * log_p`` with ``0 * -inf`` taken as 0: no mass on a masked class costs nothing."""
    coef, log_p = xp.broadcast_arrays(coef, log_p)
    zero = coef == 0
    return xp.where(zero, xp.zeros_like(log_p), coef * xp.where(zero, xp.zeros_like(log_p), log_p))


def _reduce(xp: Any, loss: Any, reduction: str, denominator: Any | None) -> Any:
    if reduction == "none":
        return loss
    total = xp.sum(loss)
    if reduction == "sum":
        return total
    if denominator is None:
        n = math.prod(_shape(loss))
        return total / n if n else xp.zeros_like(total)
    # A zero denominator (everything ignored or weighted 0) gives 0, not torch's NaN.
    empty = denominator == 0
    return xp.where(
        empty, xp.zeros_like(total), total / xp.where(empty, xp.ones_like(denominator), denominator)
    )


def _labels(
    xp: Any,
    target: Any,
    n_classes: int,
    ignore_index: int | None,
    func: str,
) -> tuple[Any, Any]:
    """Validate class indices; return ``(valid_mask, labels with ignored entries set to 0)``."""
    if ignore_index is not None and (
        isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral)
    ):
        raise TypeError(f"{func}: ignore_index must be an int or None; got {ignore_index!r}")
    if ignore_index is not None:
        ignore_index = int(ignore_index)
    if ignore_index is None:
        valid = xp.ones(target.shape, dtype=xp.bool, device=getattr(target, "device", None))
    else:
        valid = target != ignore_index
    bad = valid & ((target < 0) | (target >= n_classes))
    if math.prod(_shape(target)) and bool(xp.any(bad)):
        index = first_true(xp, bad)
        extra = "" if ignore_index is None else f" or equal to ignore_index={ignore_index}"
        raise ValueError(
            f"{func}: target holds class index {int(target[index])} at index {index}; class "
            f"indices must be in [0, {n_classes - 1}]{extra} (the logits have {n_classes} classes)"
        )
    safe = xp.where(valid, target, xp.zeros_like(target))
    return valid, safe


def _prepare_logits(
    logits: Any, target: Any, axis: int, func: str, extra: tuple[tuple[Any, str], ...] = ()
) -> tuple[Any, Any, Any, list[Any]]:
    xp, arrays = as_arrays((logits, "logits"), (target, "target"), *extra, func=func)
    logits, target, rest = arrays[0], arrays[1], arrays[2:]
    if logits.ndim == 0:
        raise ValueError(f"{func}: logits must have a class axis; got a scalar")
    ax = normalize_axis(axis, logits.ndim)
    if logits.shape[ax] == 0:
        raise ValueError(
            f"{func}: logits have no classes along axis={axis} (shape {tuple(logits.shape)})"
        )
    _check_logits(xp, logits, func)
    # Work with the class axis last; torch and the array API both return views here.
    logits = xp.moveaxis(logits, ax, -1)
    return xp, logits, target, [ax, *rest]


@overload
def softmax_cross_entropy(
    logits: NumPyInput,
    target: NumPyInput,
    *,
    axis: int = ...,
    weight: ArrayLike | None = ...,
    ignore_index: int | None = ...,
    label_smoothing: float = ...,
    reduction: str = ...,
    base: float | None = ...,
) -> NumPyResult: ...


@overload
def softmax_cross_entropy(
    logits: ArrayT,
    target: ArrayLike,
    *,
    axis: int = ...,
    weight: ArrayLike | None = ...,
    ignore_index: int | None = ...,
    label_smoothing: float = ...,
    reduction: str = ...,
    base: float | None = ...,
) -> ArrayT: ...


def softmax_cross_entropy(
    logits: ArrayLike,
    target: ArrayLike,
    *,
    axis: int = -1,
    weight: ArrayLike | None = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    base: float | None = None,
) -> Array:
    r"""Cross-entropy between targets and the softmax of ``logits``, with torch's semantics.

    With ``log p = log_softmax(logits)`` along ``axis``, ``C`` classes, class weights ``w`` (1 when
    not given) and smoothing ``e``:

    * class-index targets ``y``: per position

      .. math::

          \ell_i = (1 - e)\,\bigl(-w_{y_i} \log p_{i, y_i}\bigr)
                   + \frac{e}{C} \sum_c \bigl(-w_c \log p_{i,c}\bigr),

      0 where ``y_i == ignore_index``; ``mean`` divides the sum by :math:`\sum_i w_{y_i}` over
      the non-ignored positions (as ``torch.nn.functional.cross_entropy``).
    * probability targets ``t`` (same shape as ``logits``): with ``t' = (1 - e) t + e / C``,

      .. math::

          \ell_i = -\sum_c w_c\, t'_{i,c} \log p_{i,c},

      and ``mean`` divides by the number of positions.

    Deliberate differences from torch: ``mean`` over no valid positions (or a zero weight sum) is 0
    instead of NaN; a masked class (logit ``-inf``) that the target gives no mass costs 0 rather than
    NaN, even under a zero class weight; NaN or ``+inf`` logits raise ``ValueError``. Label
    smoothing gives every class mass ``e / C``, so with ``e > 0`` a masked class in a counted row
    makes that row's loss ``inf`` (as in torch); an ignored row costs 0 whatever its logits.

    Args:
        logits: real floating array, class axis at ``axis``; ``-inf`` marks a masked class.
        target: integer class indices with the shape of ``logits`` without ``axis``, or floating
            probabilities with the shape of ``logits`` (non-negative; used as given).
        axis: the class axis (default ``-1``; torch's is 1).
        weight: optional per-class weights, shape ``(C,)``, non-negative.
        ignore_index: class-index value to skip (class-index targets only); ``None`` skips nothing.
        label_smoothing: ``e`` in ``[0, 1]``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per-position losses, shape of ``logits``
            without ``axis``).
        base: ``None`` for nats, ``2`` for bits.

    Returns:
        A 0-d array (``mean``/``sum``; a NumPy scalar for NumPy inputs) or the per-position losses,
        in ``logits``'s array type and dtype.

    References:
        C. Szegedy et al., "Rethinking the Inception Architecture for Computer Vision", CVPR 2016
        (label smoothing).

    Example:
        >>> import numpy as np
        >>> logits = np.array([[2.0, 0.0, -np.inf], [0.0, 0.0, 0.0]])
        >>> round(float(softmax_cross_entropy(logits, np.array([0, 2]))), 4)
        0.6128
        >>> round(float(softmax_cross_entropy(logits, np.array([0, 2]), ignore_index=2)), 4)
        0.1269
    """
    func = "softmax_cross_entropy"
    check_reduction(reduction)
    div = log_base_divisor(base)
    eps = _check_smoothing(label_smoothing, func)
    xp, z, t, (ax, w) = _prepare_logits(logits, target, axis, func, ((weight, "weight"),))
    n_classes = _shape(z)[-1]
    outer = _shape(z)[:-1]
    if w is not None:
        w = _check_weight(xp, w, n_classes, func)
        w = xp.astype(w, z.dtype)
    with np.errstate(all="ignore"):
        if is_integral(xp, t):
            if _shape(t) != outer:
                raise ValueError(
                    f"{func}: class-index target must have the shape of logits without axis={axis}, "
                    f"{outer}; got target shape {_shape(t)} for logits shape "
                    f"{_shape(xp.moveaxis(z, -1, ax))}"
                )
            valid, labels = _labels(xp, t, n_classes, ignore_index, func)
            log_p = _log_softmax(xp, z, -1)
            loss, denominator = _index_loss(xp, log_p, labels, valid, w, eps)
            out = _reduce(xp, loss, reduction, denominator)
        elif is_floating(xp, t):
            full = _shape(xp.moveaxis(z, -1, ax))
            if _shape(t) != full:
                raise ValueError(
                    f"{func}: probability target must have the shape of logits {full}; got "
                    f"{_shape(t)} (class-index targets need an integer dtype)"
                )
            if ignore_index is not None:
                raise ValueError(
                    f"{func}: ignore_index applies to class-index targets only; got probability "
                    "targets (give ignored positions an all-zero target row instead)"
                )
            _check_range(xp, t, func, "target", 0.0, None)
            log_p = _log_softmax(xp, z, -1)
            t = xp.moveaxis(xp.astype(t, z.dtype), ax, -1)
            if eps > 0:
                t = (1 - eps) * t + eps / n_classes
            coef = t if w is None else t * w
            loss = 0.0 - xp.sum(_safe_product(xp, coef, log_p), axis=-1)
            out = _reduce(xp, loss, reduction, None)
        else:
            raise TypeError(
                f"{func}: target must hold integer class indices or floating probabilities; got "
                f"dtype {t.dtype}"
            )
    return result(out / div if div != 1.0 else out)


def _pick(xp: Any, values: Any, labels: Any) -> Any:
    """``values[..., labels]`` per position: the entry of the class axis (last) named by ``labels``."""
    # int64 indices: torch's gather and index_select reject narrower index dtypes.
    labels = xp.astype(labels, xp.int64)
    if hasattr(xp, "take_along_axis"):
        return xp.take_along_axis(values, labels[..., None], axis=-1)[..., 0]
    # Older namespaces: select with a one-hot mask (select, not multiply, so -inf never meets 0).
    classes = xp.arange(
        _shape(values)[-1], dtype=labels.dtype, device=getattr(labels, "device", None)
    )
    hot = labels[..., None] == classes
    return xp.sum(xp.where(hot, values, xp.zeros_like(values)), axis=-1)


def _index_loss(
    xp: Any, log_p: Any, labels: Any, valid: Any, weight: Any | None, eps: float
) -> tuple[Any, Any]:
    """Per-position class-index loss (0 where ignored) and the ``mean`` denominator."""
    n_classes = _shape(log_p)[-1]
    picked = _pick(xp, log_p, labels)
    if weight is None:
        w_t = xp.astype(valid, log_p.dtype)
    else:
        flat = xp.astype(xp.reshape(labels, (-1,)), xp.int64)
        w_t = xp.reshape(xp.take(weight, flat, axis=0), labels.shape)
        w_t = _zero_where(xp, ~valid, w_t)
    # 0 - x rather than -x here and below: a certain prediction costs 0.0, not -0.0.
    nll = _zero_where(xp, ~valid, 0.0 - _safe_product(xp, w_t, picked))
    denominator = xp.sum(w_t)
    if eps == 0:
        return nll, denominator
    coef = xp.ones_like(log_p) if weight is None else xp.broadcast_to(weight, log_p.shape)
    smooth = 0.0 - xp.sum(_safe_product(xp, coef, log_p), axis=-1)
    smooth = _zero_where(xp, ~valid, smooth)
    return (1 - eps) * nll + (eps / n_classes) * smooth, denominator


def _softplus(xp: Any, x: Any) -> Any:
    # log(1 + e^x) = max(x, 0) + log1p(e^{-|x|}): no overflow, exact at +-inf.
    return xp.maximum(x, xp.zeros_like(x)) + xp.log1p(xp.exp(-xp.abs(x)))


@overload
def sigmoid_cross_entropy(
    logits: NumPyInput,
    target: NumPyInput,
    *,
    weight: ArrayLike | None = ...,
    pos_weight: ArrayLike | None = ...,
    reduction: str = ...,
    base: float | None = ...,
) -> NumPyResult: ...


@overload
def sigmoid_cross_entropy(
    logits: ArrayT,
    target: ArrayLike,
    *,
    weight: ArrayLike | None = ...,
    pos_weight: ArrayLike | None = ...,
    reduction: str = ...,
    base: float | None = ...,
) -> ArrayT: ...


def sigmoid_cross_entropy(
    logits: ArrayLike,
    target: ArrayLike,
    *,
    weight: ArrayLike | None = None,
    pos_weight: ArrayLike | None = None,
    reduction: str = "mean",
    base: float | None = None,
) -> Array:
    r"""Binary cross-entropy between targets and ``sigmoid(logits)``, elementwise (multi-label).

    .. math::

        \ell = w \bigl[(1 - y)\,\operatorname{softplus}(x) + p_w\, y\,\operatorname{softplus}(-x)\bigr]
             = -w \bigl[p_w\, y \log \sigma(x) + (1 - y) \log(1 - \sigma(x))\bigr],

    identical to ``torch.nn.functional.binary_cross_entropy_with_logits``; ``mean`` divides by the
    number of elements. Terms with a zero coefficient are 0, so ``x = +-inf`` with the matching
    target costs 0 (NaN logits raise).

    Args:
        logits: real floating array, any shape.
        target: probabilities in ``[0, 1]`` (hard or soft labels), same shape as ``logits``.
        weight: optional non-negative weights broadcastable to ``logits``.
        pos_weight: optional non-negative weight of positive examples, broadcast against the
            trailing dims (shape ``(C,)`` for ``(..., C)`` multi-label logits).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        base: ``None`` for nats, ``2`` for bits.

    Returns:
        A 0-d array (a NumPy scalar for NumPy inputs) or, for ``none``, an array of the shape of
        ``logits``.

    Example:
        >>> import numpy as np
        >>> round(float(sigmoid_cross_entropy(np.array([0.0, 2.0]), np.array([1.0, 0.0]))), 4)
        1.41
    """
    func = "sigmoid_cross_entropy"
    check_reduction(reduction)
    div = log_base_divisor(base)
    xp, (x, y, w, pw) = as_arrays(
        (logits, "logits"),
        (target, "target"),
        (weight, "weight"),
        (pos_weight, "pos_weight"),
        func=func,
    )
    if not is_floating(xp, x):
        raise TypeError(f"{func}: logits must have a real floating dtype; got dtype {x.dtype}")
    if math.prod(_shape(x)) and bool(xp.any(xp.isnan(x))):
        index = first_true(xp, xp.isnan(x))
        raise ValueError(f"{func}: logits must not contain NaN; got NaN at index {index}")
    if _shape(y) != _shape(x):
        raise ValueError(
            f"{func}: target must have the shape of logits {_shape(x)}; got {_shape(y)}"
        )
    y = xp.astype(as_float(xp, y, "target"), x.dtype)
    _check_range(xp, y, func, "target", 0.0, 1.0)
    with np.errstate(all="ignore"):
        positive = y if pw is None else _weights(xp, pw, x, func, "pos_weight") * y
        loss = _safe_product(xp, 1 - y, _softplus(xp, x)) + _safe_product(
            xp, positive, _softplus(xp, -x)
        )
        if w is not None:
            loss = _safe_product(xp, _weights(xp, w, x, func, "weight"), loss)
        loss = xp.broadcast_to(loss, x.shape)
        out = _reduce(xp, loss, reduction, None)
    return result(out / div if div != 1.0 else out)


def _weights(xp: Any, w: Any, x: Any, func: str, name: str) -> Any:
    w = xp.astype(as_float(xp, w, name), x.dtype)
    try:
        fits = np.broadcast_shapes(_shape(w), _shape(x)) == _shape(x)
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(
            f"{func}: {name} of shape {_shape(w)} does not broadcast to the shape {_shape(x)} "
            "of the input"
        )
    _check_range(xp, xp.reshape(w, (-1,)), func, name, 0.0, None)
    return w


@overload
def binary_cross_entropy(
    probs: NumPyInput,
    target: NumPyInput,
    *,
    weight: ArrayLike | None = ...,
    reduction: str = ...,
    base: float | None = ...,
) -> NumPyResult: ...


@overload
def binary_cross_entropy(
    probs: ArrayT,
    target: ArrayLike,
    *,
    weight: ArrayLike | None = ...,
    reduction: str = ...,
    base: float | None = ...,
) -> ArrayT: ...


def binary_cross_entropy(
    probs: ArrayLike,
    target: ArrayLike,
    *,
    weight: ArrayLike | None = None,
    reduction: str = "mean",
    base: float | None = None,
) -> Array:
    r"""Binary cross-entropy between targets and predicted probabilities, elementwise.

    .. math::

        \ell = -w \bigl[y \log q + (1 - y) \log(1 - q)\bigr],\qquad 0 \log 0 = 0,

    with ``log(1 - q)`` computed as ``log1p(-q)``. Unlike ``torch.nn.functional.binary_cross_entropy``,
    which clamps each log at -100, a zero probability on an event that happened gives ``inf``; use
    :func:`sigmoid_cross_entropy` on logits for a loss that stays finite.

    Args:
        probs: predicted probabilities in ``[0, 1]``, floating, any shape.
        target: probabilities in ``[0, 1]`` (hard or soft labels), same shape.
        weight: optional non-negative weights broadcastable to ``probs``.
        reduction: ``"mean"`` (over elements), ``"sum"`` or ``"none"``.
        base: ``None`` for nats, ``2`` for bits.

    Returns:
        A 0-d array (a NumPy scalar for NumPy inputs) or, for ``none``, an array of the shape of
        ``probs``.

    Example:
        >>> import numpy as np
        >>> round(float(binary_cross_entropy(np.array([0.5, 0.9]), np.array([1.0, 1.0]), base=2)), 4)
        0.576
    """
    func = "binary_cross_entropy"
    check_reduction(reduction)
    div = log_base_divisor(base)
    xp, (q, y, w) = as_arrays((probs, "probs"), (target, "target"), (weight, "weight"), func=func)
    q = as_float(xp, q, "probs")
    if _shape(y) != _shape(q):
        raise ValueError(
            f"{func}: target must have the shape of probs {_shape(q)}; got {_shape(y)}"
        )
    y = xp.astype(as_float(xp, y, "target"), q.dtype)
    _check_range(xp, q, func, "probs", 0.0, 1.0)
    _check_range(xp, y, func, "target", 0.0, 1.0)
    with np.errstate(all="ignore"):
        loss = 0.0 - (_safe_product(xp, y, xp.log(q)) + _safe_product(xp, 1 - y, xp.log1p(-q)))
        if w is not None:
            loss = _safe_product(xp, _weights(xp, w, q, func, "weight"), loss)
        loss = xp.broadcast_to(loss, q.shape)
        out = _reduce(xp, loss, reduction, None)
    return result(out / div if div != 1.0 else out)


def _log1mexp(xp: Any, a: Any) -> Any:
    """``log(1 - e^a)`` for ``a <= 0``, accurate near 0 and for very negative ``a`` (Mächler 2012)."""
    near = a > -math.log(2.0)
    safe_near = xp.where(near, a, xp.full_like(a, -1.0))
    safe_far = xp.where(near, xp.full_like(a, -1.0), a)
    return xp.where(near, xp.log(-xp.expm1(safe_near)), xp.log1p(-xp.exp(safe_far)))


def _focal_factor(xp: Any, log_p: Any, gamma: float) -> Any:
    """``(1 - p)^gamma`` from ``log p``, computed as ``exp(gamma * log(1 - p))``."""
    if gamma == 0:
        return xp.ones_like(log_p)
    certain = log_p >= 0
    safe = xp.where(certain, xp.full_like(log_p, -1.0), log_p)
    return xp.where(certain, xp.zeros_like(log_p), xp.exp(gamma * _log1mexp(xp, safe)))


@overload
def focal_loss(
    logits: NumPyInput,
    target: NumPyInput,
    *,
    gamma: float = ...,
    alpha: ArrayLike | None = ...,
    axis: int = ...,
    ignore_index: int | None = ...,
    reduction: str = ...,
    base: float | None = ...,
) -> NumPyResult: ...


@overload
def focal_loss(
    logits: ArrayT,
    target: ArrayLike,
    *,
    gamma: float = ...,
    alpha: ArrayLike | None = ...,
    axis: int = ...,
    ignore_index: int | None = ...,
    reduction: str = ...,
    base: float | None = ...,
) -> ArrayT: ...


def focal_loss(
    logits: ArrayLike,
    target: ArrayLike,
    *,
    gamma: float = 2.0,
    alpha: ArrayLike | None = None,
    axis: int = -1,
    ignore_index: int | None = None,
    reduction: str = "mean",
    base: float | None = None,
) -> Array:
    r"""Softmax focal loss: cross-entropy that down-weights well-classified positions.

    With ``log p = log_softmax(logits)`` along ``axis``:

    .. math::

        \ell_i = -\alpha_{y_i} (1 - p_{i,y_i})^{\gamma} \log p_{i,y_i}
        \quad\text{(class indices)},\qquad
        \ell_i = -\sum_c \alpha_c\, t_{i,c} (1 - p_{i,c})^{\gamma} \log p_{i,c}
        \quad\text{(probabilities)},

    with :math:`(1-p)^\gamma = \exp(\gamma \log(1 - e^{\log p}))` evaluated in log space. ``mean``
    uses the normalisation of :func:`softmax_cross_entropy` (the sum of :math:`\alpha_{y_i}` over
    non-ignored positions for class indices, the number of positions for probabilities), so
    ``gamma=0`` gives ``softmax_cross_entropy(logits, target, weight=alpha)``.

    Args:
        logits: real floating array, class axis at ``axis``; ``-inf`` marks a masked class.
        target: integer class indices (shape of ``logits`` without ``axis``) or floating
            probabilities (shape of ``logits``).
        gamma: focusing parameter ``>= 0`` (2 in the paper).
        alpha: ``None`` (1), a non-negative float, or per-class weights of shape ``(C,)``.
        axis: the class axis (default ``-1``).
        ignore_index: class-index value to skip; ``None`` skips nothing.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        base: ``None`` for nats, ``2`` for bits.

    Returns:
        A 0-d array (a NumPy scalar for NumPy inputs) or the per-position losses.

    References:
        T.-Y. Lin, P. Goyal, R. Girshick, K. He, P. Dollár, "Focal Loss for Dense Object
        Detection", ICCV 2017.

    Example:
        >>> import numpy as np
        >>> logits = np.array([[3.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
        >>> round(float(focal_loss(logits, np.array([0, 1]), gamma=2.0)), 4)
        0.2445
    """
    func = "focal_loss"
    check_reduction(reduction)
    div = log_base_divisor(base)
    if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real):
        raise TypeError(f"{func}: gamma must be a non-negative float; got {gamma!r}")
    if not (math.isfinite(gamma) and gamma >= 0):
        raise ValueError(f"{func}: gamma must be a non-negative finite float; got {gamma!r}")
    scalar_alpha = None
    if isinstance(alpha, numbers.Real) and not isinstance(alpha, bool):
        if not (math.isfinite(alpha) and alpha >= 0):
            raise ValueError(f"{func}: alpha must be non-negative and finite; got {alpha!r}")
        scalar_alpha, alpha = float(alpha), None
    xp, logits, target, (ax, alpha) = _prepare_logits(
        logits, target, axis, func, ((alpha, "alpha"),)
    )
    n_classes = _shape(logits)[-1]
    outer = _shape(logits)[:-1]
    if alpha is not None:
        alpha = xp.astype(_check_weight(xp, alpha, n_classes, func, "alpha"), logits.dtype)
    with np.errstate(all="ignore"):
        log_p = _log_softmax(xp, logits, -1)
        factor = _focal_factor(xp, log_p, float(gamma))
        if is_integral(xp, target):
            if _shape(target) != outer:
                raise ValueError(
                    f"{func}: class-index target must have the shape of logits without axis={axis}, "
                    f"{outer}; got {_shape(target)}"
                )
            valid, labels = _labels(xp, target, n_classes, ignore_index, func)
            picked = _pick(xp, log_p, labels)
            picked_factor = _pick(xp, factor, labels)
            if alpha is None:
                a_t = xp.astype(valid, log_p.dtype)
            else:
                flat = xp.astype(xp.reshape(labels, (-1,)), xp.int64)
                a_t = xp.reshape(xp.take(alpha, flat, axis=0), labels.shape)
                a_t = _zero_where(xp, ~valid, a_t)
            loss = _zero_where(xp, ~valid, 0.0 - _safe_product(xp, a_t * picked_factor, picked))
            out = _reduce(xp, loss, reduction, xp.sum(a_t))
        elif is_floating(xp, target):
            full = _shape(xp.moveaxis(logits, -1, ax))
            if _shape(target) != full:
                raise ValueError(
                    f"{func}: probability target must have the shape of logits {full}; got "
                    f"{_shape(target)}"
                )
            if ignore_index is not None:
                raise ValueError(f"{func}: ignore_index applies to class-index targets only")
            _check_range(xp, target, func, "target", 0.0, None)
            t = xp.moveaxis(xp.astype(target, logits.dtype), ax, -1)
            coef = t * factor if alpha is None else t * factor * alpha
            loss = 0.0 - xp.sum(_safe_product(xp, coef, log_p), axis=-1)
            out = _reduce(xp, loss, reduction, None)
        else:
            raise TypeError(
                f"{func}: target must hold integer class indices or floating probabilities; got "
                f"dtype {target.dtype}"
            )
    if scalar_alpha is not None:
        # A uniform alpha scales every term; ``mean`` keeps CE's normalisation, which ignores it.
        out = out * scalar_alpha
    return result(out / div if div != 1.0 else out)
