"""Information theory on probability vectors: entropy, cross-entropy, KL and JS divergences.

All functions reduce along ``axis`` (default ``-1``, the last axis: one distribution per row) and
follow the conventions ``0 log 0 = 0`` and ``p log(p/0) = inf`` for ``p > 0``. Inputs are checked,
never silently renormalised: a negative, NaN or infinite entry raises ``ValueError``, and so does a
slice whose total differs from 1 by more than the rounding the data may carry (the rule of
:func:`crossentropy.row_sum_tolerance` for the dtype each array came in: about 1e-5, more for many
classes and for float16 and bfloat16 arrays) or than ``sum_tol`` when given. With ``renormalize=True`` each
slice is divided by its total instead. A slice accepted within the tolerance is used as given.
"""

from __future__ import annotations

import math
import warnings
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
    first_true,
    log_base_divisor,
    normalize_axis,
    result,
)
from ._tolerance import (
    check_row_sums,
    check_sum_tol,
    dtype_eps,
    rounded_tolerance,
    sum_tolerance,
)

__all__ = ["cross_entropy", "entropy", "js_divergence", "kl_divergence"]


def _value(x: Any, index: tuple[int, ...]) -> float:
    return float(x[index])


def _distribution(
    xp: Any,
    p: Any,
    name: str,
    func: str,
    axis: int,
    renormalize: bool,
    sum_tol: float | None,
    stored: Any = None,
) -> tuple[Any, int]:
    """Check that ``p`` holds distributions along ``axis``; return it (renormalised if asked).

    ``stored`` is the dtype ``p`` came in before it was promoted to a common dtype with another
    operand (default: ``p``'s own): its rounding is the one the values carry."""
    p = as_float(xp, p, name)
    stored = p.dtype if stored is None else stored
    if p.ndim == 0:
        raise ValueError(
            f"{func}: {name} must have at least one dimension (the {axis=} axis); got a scalar"
        )
    ax = normalize_axis(axis, p.ndim)
    if p.shape[ax] == 0:
        raise ValueError(
            f"{func}: {name} has shape {tuple(p.shape)}, with no classes along {axis=}"
        )
    if math.prod(p.shape) == 0:
        return p, ax
    # One cheap pass catches negatives and NaN (min propagates NaN); a second gives the totals.
    low = xp.min(p)
    if not bool(low >= 0):
        index = first_true(xp, xp.isnan(p) | (p < 0))
        raise ValueError(
            f"{func}: {name} must hold probabilities >= 0 (not NaN); got {_value(p, index)} at index "
            f"{index} of an array of shape {tuple(p.shape)}"
        )
    # float16 and bfloat16 rows are summed in float32: their own rounding of the total would be
    # as large as the tolerance on it
    wide = xp.float32 if xp.finfo(p.dtype).bits < 32 else p.dtype
    total = xp.sum(p, axis=ax, keepdims=True, dtype=wide)
    if not bool(xp.all(xp.isfinite(total))):
        index = first_true(xp, xp.isinf(p))
        raise ValueError(
            f"{func}: {name} must hold finite probabilities; got inf at index {index} of an array "
            f"of shape {tuple(p.shape)}"
        )
    if renormalize:
        if bool(xp.any(total == 0)):
            index = first_true(xp, xp.squeeze(total == 0, axis=ax))
            raise ValueError(
                f"{func}: cannot renormalize {name}: the slice at index {index} (over {axis=}) "
                "sums to 0"
            )
        return p / xp.astype(total, p.dtype), ax
    eps = dtype_eps(stored)
    sums = check_row_sums(xp, p, total, ax, sum_tol=sum_tol, eps=eps)
    if bool(xp.any(sums.off)):
        off = xp.squeeze(sums.off, axis=ax)
        index = first_true(xp, off)
        got = _value(xp.squeeze(total, axis=ax), index)
        where = (*index[:ax], 0, *index[ax:])
        dtype = _dtype_name(stored)
        message = (
            f"{func}: {name} must sum to 1 along {axis=} ({sums.describe(where, dtype)}); "
            f"the slice at index {index} sums to {got!r}. Pass renormalize=True to divide each "
            "slice by its total, or sum_tol= to set the tolerance."
        )
        k = int(p.shape[ax])
        rounded = None if sum_tol is not None else rounded_tolerance(xp, p, got - 1, k, eps)
        if rounded is not None:
            d = rounded[0]
            message += (
                f" Its values are all multiples of 1e-{d:02d}: if they were rounded to {d} "
                f"decimals, sum_tol=crossentropy.row_sum_tolerance({dtype!r}, {k}, decimals={d}) "
                "allows that rounding."
            )
        raise ValueError(message)
    return p, ax


def _dtype_name(dtype: Any) -> str:
    """``float64`` for NumPy's and array-API dtypes, ``torch.bfloat16`` for torch's."""
    return str(getattr(dtype, "name", None) or dtype)


def _options(func: str, renormalize: bool, sum_tol: float | None, normalize: bool | None) -> bool:
    """Check the options shared by the four functions; return ``renormalize``."""
    if normalize is not None:
        if renormalize:
            raise TypeError(f"{func}: pass renormalize= only (normalize= is its deprecated name)")
        warnings.warn(
            f"{func}: normalize= is deprecated; it is called renormalize= now (the name the "
            "metrics and the command line use)",
            DeprecationWarning,
            stacklevel=3,
        )
        renormalize = normalize
    if not isinstance(renormalize, (bool, np.bool_)):
        raise TypeError(f"{func}: renormalize must be True or False; got {renormalize!r}")
    check_sum_tol(sum_tol, func)
    return bool(renormalize)


def _prepare(func: str, pairs: tuple[tuple[Any, str], ...]) -> tuple[Any, list[Any], list[Any]]:
    """Arrays of one namespace, floating dtype and (broadcast) shape, and the dtype each came
    in (the one whose rounding its values carry)."""
    xp, arrays = as_arrays(*pairs, func=func)
    arrays = [as_float(xp, a, name) for a, (_, name) in zip(arrays, pairs)]
    stored = [a.dtype for a in arrays]
    if len(arrays) == 2:
        p, q = arrays
        if p.dtype != q.dtype:
            dtype = xp.result_type(p, q)
            p, q = xp.astype(p, dtype), xp.astype(q, dtype)
        if tuple(p.shape) != tuple(q.shape):
            try:
                p, q = xp.broadcast_arrays(p, q)
            except (ValueError, RuntimeError) as exc:
                raise ValueError(
                    f"{func}: p and q must have broadcastable shapes; got p {tuple(p.shape)} and "
                    f"q {tuple(q.shape)}"
                ) from exc
        arrays = [p, q]
    return xp, arrays, stored


# Rows per block on the NumPy path are chosen so one block of one operand is about this many
# elements (256 KiB of float64): the block's temporaries then stay in the CPU cache instead of
# streaming several full-size intermediate arrays through memory.
_BLOCK_ELEMENTS = 32768


def _apply(
    func: str,
    kernel: Any,
    pairs: tuple[tuple[Any, str], ...],
    axis: int,
    renormalize: bool,
    sum_tol: float | None,
    base: float | None,
) -> Any:
    """Validate the distributions in ``pairs`` and reduce them with ``kernel(xp, *arrays, axis)``."""
    div = log_base_divisor(base)
    xp, arrays, stored = _prepare(func, pairs)
    names = [name for _, name in pairs]
    with np.errstate(all="ignore"):
        out = _numpy_blocks(kernel, arrays, stored, axis, renormalize, sum_tol)
        if out is None:
            checked = [
                _distribution(xp, a, n, func, axis, renormalize, sum_tol, dtype)
                for a, n, dtype in zip(arrays, names, stored)
            ]
            out = kernel(xp, *(a for a, _ in checked), checked[0][1])
    return result(out / div if div != 1.0 else out)


def _numpy_blocks(
    kernel: Any,
    arrays: list[Any],
    stored: list[Any],
    axis: int,
    renormalize: bool,
    sum_tol: float | None,
) -> Any | None:
    """Blocked evaluation for large C-ordered NumPy inputs reduced over the last axis, else None.

    Each block is checked as :func:`_distribution` would check it, with the tolerance of the
    dtype each array came in (``stored``). On a failure this returns None, so that the generic
    path raises its error, naming the offending entry or slice.
    """
    first = arrays[0]
    if not all(isinstance(a, np.ndarray) and a.flags.c_contiguous for a in arrays):
        return None
    if first.ndim == 0 or first.size < 4 * _BLOCK_ELEMENTS:
        return None
    if normalize_axis(axis, first.ndim) != first.ndim - 1 or first.shape[-1] == 0:
        return None
    n_classes = first.shape[-1]
    flat = [a.reshape(-1, n_classes) for a in arrays]
    rows = flat[0].shape[0]
    step = max(1, _BLOCK_ELEMENTS // n_classes)
    tols = [
        sum_tolerance(n_classes, eps=dtype_eps(dtype)) if sum_tol is None else sum_tol
        for dtype in stored
    ]
    wide = np.float32 if first.dtype.itemsize < 4 else first.dtype  # as in _distribution
    out = np.empty(rows, dtype=first.dtype)
    for start in range(0, rows, step):
        blocks = [f[start : start + step] for f in flat]
        for k, block in enumerate(blocks):
            total = np.add.reduce(block, axis=1, keepdims=True, dtype=wide)
            ok = bool(block.min() >= 0) and bool(np.isfinite(total).all())
            if ok and renormalize:
                ok = bool((total > 0).all())
                blocks[k] = block / total.astype(block.dtype)
            elif ok:
                ok = bool(np.abs(total - 1).max() <= tols[k])
            if not ok:
                # The generic path raises the error, naming the offending entry or slice.
                return None
        out[start : start + step] = _numpy_block_kernel(kernel, blocks)
    return out.reshape(first.shape[:-1])


def _numpy_block_kernel(kernel: Any, blocks: list[np.ndarray]) -> np.ndarray:
    """``kernel(np, *blocks, 1)``, with one log per element and a fused multiply-sum for the three
    plain kernels. A zero probability in ``p`` makes its row NaN here (0 * log 0); only those rows
    are recomputed with the generic kernel, which applies 0 log 0 = 0."""
    p = blocks[0]
    if kernel is _entropy:
        logs = np.log(p)
        rows = 0.0 - np.einsum("ij,ij->i", p, logs)  # 0 - x, not -x: no -0.0 for a certain row
    elif kernel is _cross_entropy:
        logs = np.log(blocks[1])
        rows = 0.0 - np.einsum("ij,ij->i", p, logs)
    elif kernel is _kl:
        logs = np.divide(p, blocks[1])
        np.log(logs, out=logs)
        rows = np.einsum("ij,ij->i", p, logs)
    else:
        return np.asarray(kernel(np, *blocks, 1))
    redo = np.isnan(rows)
    if redo.any():
        rows[redo] = kernel(np, *(b[redo] for b in blocks), 1)
    return rows


def _entropy(xp: Any, p: Any, ax: int) -> Any:
    # log of 1 where p == 0 so that p * log p is 0 * 0, never 0 * -inf.
    safe = xp.where(p > 0, p, xp.ones_like(p))
    # 0 - sum, not -sum: a certain distribution has entropy 0.0, not -0.0.
    return 0.0 - xp.sum(p * xp.log(safe), axis=ax)


def _cross_entropy(xp: Any, p: Any, q: Any, ax: int) -> Any:
    # Where p == 0 the term is 0 whatever q is; where p > 0 and q == 0 it is +inf.
    safe_q = xp.where(p > 0, q, xp.ones_like(q))
    return 0.0 - xp.sum(p * xp.log(safe_q), axis=ax)


def _kl(xp: Any, p: Any, q: Any, ax: int) -> Any:
    # One log of the ratio: exact 0 for p == q, +inf for q == 0 < p, and 0 * log 1 where p == 0.
    positive = p > 0
    one = xp.ones_like(p)
    ratio = xp.where(positive, p / xp.where(positive, q, one), one)
    return xp.sum(p * xp.log(ratio), axis=ax)


def _js(xp: Any, p: Any, q: Any, ax: int) -> Any:
    m = (p + q) / 2
    return (_kl(xp, p, m, ax) + _kl(xp, q, m, ax)) / 2


@overload
def entropy(
    p: NumPyInput,
    *,
    axis: int = ...,
    base: float | None = ...,
    renormalize: bool = ...,
    sum_tol: float | None = ...,
    normalize: bool | None = ...,
) -> NumPyResult: ...


@overload
def entropy(
    p: ArrayT,
    *,
    axis: int = ...,
    base: float | None = ...,
    renormalize: bool = ...,
    sum_tol: float | None = ...,
    normalize: bool | None = ...,
) -> ArrayT: ...


def entropy(
    p: ArrayLike,
    *,
    axis: int = -1,
    base: float | None = None,
    renormalize: bool = False,
    sum_tol: float | None = None,
    normalize: bool | None = None,
) -> Array:
    r"""Shannon entropy of the distributions along ``axis``.

    .. math::

        H(p) = -\sum_i p_i \log p_i ,\qquad 0 \log 0 = 0 .

    Args:
        p: probabilities, any shape with at least one dimension; each slice along ``axis`` is one
            distribution (non-negative, summing to 1). NumPy, any array-API array, or a sequence.
        axis: the class axis (default ``-1``; scipy's ``entropy`` defaults to ``axis=0``).
        base: logarithm base: ``None`` for nats, ``2`` for bits.
        renormalize: divide each slice by its total first instead of requiring it to sum to 1.
        sum_tol: how far from 1 a slice's total may be; default:
            :func:`~crossentropy.row_sum_tolerance` of the dtype the array came in (about 1e-5;
            more for many classes, float16 and bfloat16).
        normalize: deprecated name of ``renormalize``.

    Returns:
        Array of ``p``'s floating dtype and array type with ``axis`` removed (a NumPy scalar for
        one NumPy distribution); values ``>= 0``.

    Raises:
        ValueError: negative, NaN or infinite entries, or a slice not summing to 1 within the
            tolerance (unless ``renormalize=True``).

    Example:
        >>> round(float(entropy([0.5, 0.25, 0.25], base=2)), 4)
        1.5
        >>> round(float(entropy([2, 1, 1], base=2, renormalize=True)), 4)
        1.5
    """
    renormalize = _options("entropy", renormalize, sum_tol, normalize)
    return _apply("entropy", _entropy, ((p, "p"),), axis, renormalize, sum_tol, base)


@overload
def cross_entropy(
    p: NumPyInput,
    q: NumPyInput,
    *,
    axis: int = ...,
    base: float | None = ...,
    renormalize: bool = ...,
    sum_tol: float | None = ...,
    normalize: bool | None = ...,
) -> NumPyResult: ...


@overload
def cross_entropy(
    p: ArrayT,
    q: ArrayLike,
    *,
    axis: int = ...,
    base: float | None = ...,
    renormalize: bool = ...,
    sum_tol: float | None = ...,
    normalize: bool | None = ...,
) -> ArrayT: ...


@overload
def cross_entropy(
    p: ArrayLike,
    q: ArrayT,
    *,
    axis: int = ...,
    base: float | None = ...,
    renormalize: bool = ...,
    sum_tol: float | None = ...,
    normalize: bool | None = ...,
) -> ArrayT: ...


def cross_entropy(
    p: ArrayLike,
    q: ArrayLike,
    *,
    axis: int = -1,
    base: float | None = None,
    renormalize: bool = False,
    sum_tol: float | None = None,
    normalize: bool | None = None,
) -> Array:
    r"""Cross-entropy of the distribution ``q`` relative to the true distribution ``p``.

    .. math::

        H(p, q) = -\sum_i p_i \log q_i = H(p) + D_{\mathrm{KL}}(p \,\|\, q) .

    It is the expected code length, in nats (or ``base`` units), of symbols drawn from ``p`` and
    coded with a code optimal for ``q``. Terms with ``p_i = 0`` are 0; ``q_i = 0 < p_i`` gives
    ``inf``.

    Args:
        p: true probabilities; each slice along ``axis`` is a distribution.
        q: model probabilities, same shape as ``p`` (or broadcastable to it).
        axis: the class axis (default ``-1``).
        base: ``None`` for nats, ``2`` for bits.
        renormalize: divide each slice of ``p`` and ``q`` by its total first.
        sum_tol: how far from 1 a slice's total may be (default:
            :func:`~crossentropy.row_sum_tolerance` of the dtype each array came in).
        normalize: deprecated name of ``renormalize``.

    Returns:
        Array of the common floating dtype and array type with ``axis`` removed (a NumPy scalar for
        one NumPy distribution).

    Example:
        >>> round(float(cross_entropy([0.5, 0.5], [0.25, 0.75], base=2)), 4)
        1.2075
    """
    renormalize = _options("cross_entropy", renormalize, sum_tol, normalize)
    return _apply(
        "cross_entropy", _cross_entropy, ((p, "p"), (q, "q")), axis, renormalize, sum_tol, base
    )


@overload
def kl_divergence(
    p: NumPyInput,
    q: NumPyInput,
    *,
    axis: int = ...,
    base: float | None = ...,
    renormalize: bool = ...,
    sum_tol: float | None = ...,
    normalize: bool | None = ...,
) -> NumPyResult: ...


@overload
def kl_divergence(
    p: ArrayT,
    q: ArrayLike,
    *,
    axis: int = ...,
    base: float | None = ...,
    renormalize: bool = ...,
    sum_tol: float | None = ...,
    normalize: bool | None = ...,
) -> ArrayT: ...


@overload
def kl_divergence(
    p: ArrayLike,
    q: ArrayT,
    *,
    axis: int = ...,
    base: float | None = ...,
    renormalize: bool = ...,
    sum_tol: float | None = ...,
    normalize: bool | None = ...,
) -> ArrayT: ...


def kl_divergence(
    p: ArrayLike,
    q: ArrayLike,
    *,
    axis: int = -1,
    base: float | None = None,
    renormalize: bool = False,
    sum_tol: float | None = None,
    normalize: bool | None = None,
) -> Array:
    r"""Kullback-Leibler divergence of ``q`` from ``p`` (relative entropy), along ``axis``.

    .. math::

        D_{\mathrm{KL}}(p \,\|\, q) = \sum_i p_i \log \frac{p_i}{q_i} \ge 0 ,

    with ``0 log(0/q) = 0`` and ``p log(p/0) = inf`` for ``p > 0``.

    Args:
        p: true probabilities; each slice along ``axis`` is a distribution.
        q: model probabilities, same shape as ``p`` (or broadcastable to it).
        axis: the class axis (default ``-1``).
        base: ``None`` for nats, ``2`` for bits.
        renormalize: divide each slice of ``p`` and ``q`` by its total first.
        sum_tol: how far from 1 a slice's total may be (default:
            :func:`~crossentropy.row_sum_tolerance` of the dtype each array came in).
        normalize: deprecated name of ``renormalize``.

    Returns:
        Array of the common floating dtype and array type with ``axis`` removed (a NumPy scalar for
        one NumPy distribution).

    Example:
        >>> round(float(kl_divergence([0.5, 0.5], [0.25, 0.75], base=2)), 4)
        0.2075
        >>> float(kl_divergence([0.5, 0.5], [1.0, 0.0]))
        inf
    """
    renormalize = _options("kl_divergence", renormalize, sum_tol, normalize)
    return _apply("kl_divergence", _kl, ((p, "p"), (q, "q")), axis, renormalize, sum_tol, base)


@overload
def js_divergence(
    p: NumPyInput,
    q: NumPyInput,
    *,
    axis: int = ...,
    base: float | None = ...,
    renormalize: bool = ...,
    sum_tol: float | None = ...,
    normalize: bool | None = ...,
) -> NumPyResult: ...


@overload
def js_divergence(
    p: ArrayT,
    q: ArrayLike,
    *,
    axis: int = ...,
    base: float | None = ...,
    renormalize: bool = ...,
    sum_tol: float | None = ...,
    normalize: bool | None = ...,
) -> ArrayT: ...


@overload
def js_divergence(
    p: ArrayLike,
    q: ArrayT,
    *,
    axis: int = ...,
    base: float | None = ...,
    renormalize: bool = ...,
    sum_tol: float | None = ...,
    normalize: bool | None = ...,
) -> ArrayT: ...


def js_divergence(
    p: ArrayLike,
    q: ArrayLike,
    *,
    axis: int = -1,
    base: float | None = None,
    renormalize: bool = False,
    sum_tol: float | None = None,
    normalize: bool | None = None,
) -> Array:
    r"""Jensen-Shannon divergence between ``p`` and ``q`` along ``axis``: symmetric and bounded.

    .. math::

        \mathrm{JS}(p, q) = \tfrac12 D_{\mathrm{KL}}(p \,\|\, m) + \tfrac12 D_{\mathrm{KL}}(q \,\|\, m),
        \qquad m = \tfrac12 (p + q),

    so that ``0 <= JS <= log 2`` (1 bit). Its square root is a metric (the Jensen-Shannon distance,
    which is what ``scipy.spatial.distance.jensenshannon`` returns).

    Args:
        p, q: probabilities of the same shape (or broadcastable); slices along ``axis`` are
            distributions.
        axis: the class axis (default ``-1``).
        base: ``None`` for nats, ``2`` for bits.
        renormalize: divide each slice of ``p`` and ``q`` by its total first.
        sum_tol: how far from 1 a slice's total may be (default:
            :func:`~crossentropy.row_sum_tolerance` of the dtype each array came in).
        normalize: deprecated name of ``renormalize``.

    Returns:
        Array of the common floating dtype and array type with ``axis`` removed (a NumPy scalar for
        one NumPy distribution).

    References:
        J. Lin, "Divergence measures based on the Shannon entropy", IEEE Trans. Inf. Theory, 1991.

    Example:
        >>> round(float(js_divergence([1.0, 0.0], [0.0, 1.0], base=2)), 4)
        1.0
    """
    renormalize = _options("js_divergence", renormalize, sum_tol, normalize)
    return _apply("js_divergence", _js, ((p, "p"), (q, "q")), axis, renormalize, sum_tol, base)
