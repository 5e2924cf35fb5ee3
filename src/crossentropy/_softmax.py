"""Stable ``logsumexp``, ``log_softmax`` and ``softmax`` on any array-API array.

Entries equal to ``-inf`` are allowed and mean "masked class": they get probability 0. A row that is
entirely ``-inf`` has no distribution; its ``logsumexp`` is ``-inf``, its ``log_softmax`` is ``-inf``
everywhere and its ``softmax`` is 0 everywhere (so any probability mass placed on it costs ``inf``),
and none of these produce NaN or floating-point warnings. A row holding ``+inf`` entries gets their
limit: ``logsumexp`` is ``+inf`` and the ``k`` infinite entries share the probability, ``1/k`` each.
"""

from __future__ import annotations

from typing import Any, overload

import numpy as np

from ._array import (
    Array,
    ArrayLike,
    ArrayT,
    NumPyInput,
    NumPyResult,
    as_array,
    as_float,
    namespace,
    normalize_axis,
    result,
)

__all__ = ["log_softmax", "logsumexp", "softmax"]


def _shift_and_log_total(xp: Any, x: Any, axis: int) -> tuple[Any, Any, Any]:
    """``(shifted, log_total, m)`` with ``logsumexp(x) = m + log_total`` on finite-max slices.

    The shift is the slice maximum so exp never overflows; slices whose maximum is not finite
    (all -inf, containing +inf, or NaN) are shifted by 0 and fixed by the callers using ``m``.
    """
    m = xp.max(x, axis=axis, keepdims=True)
    finite_m = xp.isfinite(m)
    shift = xp.where(finite_m, m, xp.zeros_like(m))
    shifted = xp.where(finite_m, x - shift, xp.zeros_like(x))
    # On finite-max slices the maximum contributes exp(0) = 1, so the total is >= 1.
    log_total = xp.log(xp.sum(xp.exp(shifted), axis=axis, keepdims=True))
    return shifted, log_total, m


def _lse_keepdims(xp: Any, x: Any, axis: int) -> Any:
    _, log_total, m = _shift_and_log_total(xp, x, axis)
    # Non-finite maximum: -inf slice -> -inf, a +inf entry -> +inf, NaN -> NaN; m is the answer.
    return xp.where(xp.isfinite(m), m + log_total, m)


@overload
def logsumexp(x: NumPyInput, *, axis: int = ..., keepdims: bool = ...) -> NumPyResult: ...
@overload
def logsumexp(x: ArrayT, *, axis: int = ..., keepdims: bool = ...) -> ArrayT: ...
def logsumexp(x: ArrayLike, *, axis: int = -1, keepdims: bool = False) -> Array:
    r"""Logarithm of the sum of exponentials along ``axis``, computed without overflow.

    .. math::

        \operatorname{logsumexp}(x) = m + \log \sum_i e^{x_i - m},\qquad m = \max_i x_i .

    Args:
        x: array of real numbers, any shape with at least one dimension. Integer inputs are cast to
            the default floating dtype. ``-inf`` entries are allowed (masked terms).
        axis: the axis to reduce (default ``-1``, the last).
        keepdims: keep the reduced axis with length 1.

    Returns:
        Array of ``x``'s floating dtype and array type, with ``axis`` removed (or kept with length 1);
        a NumPy scalar when a NumPy result has no dimensions left.
        A slice that is entirely ``-inf`` gives ``-inf`` (no NaN, no warning).

    Example:
        >>> import numpy as np
        >>> round(float(logsumexp(np.array([1000.0, 1000.0]))), 4)
        1000.6931
        >>> float(logsumexp(np.array([-np.inf, -np.inf])))
        -inf
    """
    a = as_array(x, "x")
    a = as_float(namespace(a), a, "x")
    xp = namespace(a)
    ax = normalize_axis(axis, a.ndim)
    with np.errstate(all="ignore"):
        out = _lse_keepdims(xp, a, ax)
    return result(out if keepdims else xp.squeeze(out, axis=ax))


def _log_softmax(xp: Any, x: Any, axis: int) -> Any:
    # (x - m) - log_total, not x - logsumexp: the latter rounds away log_total when |m| is huge.
    shifted, log_total, m = _shift_and_log_total(xp, x, axis)
    minus_inf = xp.full_like(x, -float("inf"))
    # An all -inf slice has no distribution: log p = -inf everywhere (never NaN).
    out = xp.where(xp.isinf(m) & (m < 0), minus_inf, shifted - log_total)
    # Slices holding +inf take the limit: their k infinite entries share the mass, log p = -log k.
    # (The losses reject +inf logits; NaN inputs stay NaN.)
    is_top = x == float("inf")
    k = xp.sum(xp.astype(is_top, x.dtype), axis=axis, keepdims=True)
    top = xp.where(is_top, -xp.log(xp.where(k > 0, k, xp.ones_like(k))), minus_inf)
    out = xp.where((m == float("inf")) & (k > 0), top, out)
    # A NaN anywhere in a slice makes the whole slice NaN (as in torch), not a uniform row.
    has_nan = xp.any(xp.isnan(x), axis=axis, keepdims=True)
    return xp.where(has_nan, xp.full_like(x, float("nan")), out)


@overload
def log_softmax(x: NumPyInput, *, axis: int = ...) -> NumPyResult: ...
@overload
def log_softmax(x: ArrayT, *, axis: int = ...) -> ArrayT: ...
def log_softmax(x: ArrayLike, *, axis: int = -1) -> Array:
    r"""Logarithm of the softmax along ``axis``, stable for large and ``-inf`` inputs.

    .. math::

        \log \operatorname{softmax}(x)_i = x_i - \operatorname{logsumexp}(x).

    Args:
        x: logits, any shape with at least one dimension; ``-inf`` marks a masked class.
        axis: the class axis (default ``-1``).

    Returns:
        Array like ``x`` (same shape, floating dtype and array type). Masked entries give ``-inf``;
        a slice that is entirely ``-inf`` gives ``-inf`` everywhere.

    Example:
        >>> import numpy as np
        >>> [round(float(v), 4) for v in log_softmax(np.array([0.0, np.log(3.0), -np.inf]))]
        [-1.3863, -0.2877, -inf]
    """
    a = as_array(x, "x")
    a = as_float(namespace(a), a, "x")
    xp = namespace(a)
    ax = normalize_axis(axis, a.ndim)
    with np.errstate(all="ignore"):
        return _log_softmax(xp, a, ax)


@overload
def softmax(x: NumPyInput, *, axis: int = ...) -> NumPyResult: ...
@overload
def softmax(x: ArrayT, *, axis: int = ...) -> ArrayT: ...
def softmax(x: ArrayLike, *, axis: int = -1) -> Array:
    r"""Softmax along ``axis``: non-negative entries that sum to 1 along the class axis.

    .. math::

        \operatorname{softmax}(x)_i = \frac{e^{x_i - m}}{\sum_j e^{x_j - m}},\qquad m = \max_j x_j .

    Args:
        x: logits, any shape with at least one dimension; ``-inf`` marks a masked class.
        axis: the class axis (default ``-1``).

    Returns:
        Array like ``x``. Masked entries give exactly 0; a slice that is entirely ``-inf`` gives 0
        everywhere (it has no distribution).

    Example:
        >>> import numpy as np
        >>> [round(float(v), 4) for v in softmax(np.array([0.0, np.log(3.0), -np.inf]))]
        [0.25, 0.75, 0.0]
    """
    a = as_array(x, "x")
    a = as_float(namespace(a), a, "x")
    xp = namespace(a)
    ax = normalize_axis(axis, a.ndim)
    with np.errstate(all="ignore"):
        return xp.exp(_log_softmax(xp, a, ax))
