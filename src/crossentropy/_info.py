"""Information theory on probability vectors: entropy, cross-entropy, KL and JS divergences.

All functions reduce along ``axis`` (default ``-1``, the last axis: one distribution per row) and
follow the conventions ``0 log 0 = 0`` and ``p log(p/0) = inf`` for ``p > 0``. Inputs are checked,
never silently renormalised: a negative, NaN or infinite entry, or a slice whose total differs from 1
by more than ``sqrt(eps)`` of its dtype (1.5e-8 for float64, 3.5e-4 for float32), raises
``ValueError`` unless ``normalize=True`` is passed, in which case each slice is divided by its total.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._array import as_arrays, as_float, finfo_eps, first_true, log_base_divisor, normalize_axis

__all__ = ["cross_entropy", "entropy", "js_divergence", "kl_divergence"]


def _value(x: Any, index: tuple[int, ...]) -> float:
    return float(x[index])


def _distribution(
    xp: Any, p: Any, name: str, func: str, axis: int, normalize: bool
) -> tuple[Any, int]:
    """Check that ``p`` holds distributions along ``axis``; return it (normalised if asked)."""
    if isinstance(normalize, bool) is False:
        raise TypeError(f"{func}: normalize must be True or False; got {normalize!r}")
    p = as_float(xp, p, name)
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
    total = xp.sum(p, axis=ax, keepdims=True)
    if not bool(xp.all(xp.isfinite(total))):
        index = first_true(xp, xp.isinf(p))
        raise ValueError(
            f"{func}: {name} must hold finite probabilities; got inf at index {index} of an array "
            f"of shape {tuple(p.shape)}"
        )
    if normalize:
        if bool(xp.any(total == 0)):
            index = first_true(xp, xp.squeeze(total == 0, axis=ax))
            raise ValueError(
                f"{func}: cannot normalize {name}: the slice at index {index} (over {axis=}) sums to 0"
            )
        return p / total, ax
    tol = math.sqrt(finfo_eps(xp, p))
    off = xp.abs(total - 1) > tol
    if bool(xp.any(off)):
        index = first_true(xp, xp.squeeze(off, axis=ax))
        got = _value(xp.squeeze(total, axis=ax), index)
        raise ValueError(
            f"{func}: {name} must sum to 1 along {axis=} (within {tol:.1e} for dtype {p.dtype}); "
            f"the slice at index {index} sums to {got!r}. Pass normalize=True to divide each slice "
            "by its total."
        )
    return p, ax


def _prepare(func: str, pairs: tuple[tuple[Any, str], ...]) -> tuple[Any, list[Any]]:
    """Arrays of one namespace, floating dtype and (broadcast) shape."""
    xp, arrays = as_arrays(*pairs)
    arrays = [as_float(xp, a, name) for a, (_, name) in zip(arrays, pairs)]
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
    return xp, arrays


# Rows per block on the NumPy path are chosen so one block of one operand is about this many
# elements (256 KiB of float64): the block's temporaries then stay in the CPU cache instead of
# streaming several full-size intermediate arrays through memory.
_BLOCK_ELEMENTS = 32768


def _apply(
    func: str,
    kernel: Any,
    pairs: tuple[tuple[Any, str], ...],
    axis: int,
    normalize: bool,
    base: float | None,
) -> Any:
    """Validate the distributions in ``pairs`` and reduce them with ``kernel(xp, *arrays, axis)``."""
    div = log_base_divisor(base)
    xp, arrays = _prepare(func, pairs)
    names = [name for _, name in pairs]
    with np.errstate(all="ignore"):
        out = _numpy_blocks(xp, func, kernel, arrays, names, axis, normalize)
        if out is None:
            checked = [
                _distribution(xp, a, n, func, axis, normalize) for a, n in zip(arrays, names)
            ]
            out = kernel(xp, *(a for a, _ in checked), checked[0][1])
    return out / div if div != 1.0 else out


def _numpy_blocks(
    xp: Any,
    func: str,
    kernel: Any,
    arrays: list[Any],
    names: list[str],
    axis: int,
    normalize: bool,
) -> Any | None:
    """Blocked evaluation for large C-ordered NumPy inputs reduced over the last axis, else None.

    Each block is checked as :func:`_distribution` would check it; on the first failure this returns
    None so that the generic path raises its error, naming the offending entry or slice.
    """
    first = arrays[0]
    if not all(isinstance(a, np.ndarray) and a.flags.c_contiguous for a in arrays):
        return None
    if isinstance(normalize, bool) is False or first.ndim == 0 or first.size < 4 * _BLOCK_ELEMENTS:
        return None
    if normalize_axis(axis, first.ndim) != first.ndim - 1 or first.shape[-1] == 0:
        return None
    n_classes = first.shape[-1]
    flat = [a.reshape(-1, n_classes) for a in arrays]
    rows = flat[0].shape[0]
    step = max(1, _BLOCK_ELEMENTS // n_classes)
    tol = math.sqrt(float(np.finfo(first.dtype).eps))
    out = np.empty(rows, dtype=first.dtype)
    for start in range(0, rows, step):
        blocks = [f[start : start + step] for f in flat]
        for k, block in enumerate(blocks):
            total = np.add.reduce(block, axis=1, keepdims=True)
            ok = bool(block.min() >= 0) and bool(np.isfinite(total).all())
            if ok and normalize:
                ok = bool((total > 0).all())
                blocks[k] = block / total
            elif ok:
                ok = bool(np.abs(total - 1).max() <= tol)
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
        rows = -np.einsum("ij,ij->i", p, logs)
    elif kernel is _cross_entropy:
        logs = np.log(blocks[1])
        rows = -np.einsum("ij,ij->i", p, logs)
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
    return -xp.sum(p * xp.log(safe), axis=ax)


def _cross_entropy(xp: Any, p: Any, q: Any, ax: int) -> Any:
    # Where p == 0 the term is 0 whatever q is; where p > 0 and q == 0 it is +inf.
    safe_q = xp.where(p > 0, q, xp.ones_like(q))
    return -xp.sum(p * xp.log(safe_q), axis=ax)


def _kl(xp: Any, p: Any, q: Any, ax: int) -> Any:
    # One log of the ratio: exact 0 for p == q, +inf for q == 0 < p, and 0 * log 1 where p == 0.
    positive = p > 0
    one = xp.ones_like(p)
    ratio = xp.where(positive, p / xp.where(positive, q, one), one)
    return xp.sum(p * xp.log(ratio), axis=ax)


def _js(xp: Any, p: Any, q: Any, ax: int) -> Any:
    m = (p + q) / 2
    return (_kl(xp, p, m, ax) + _kl(xp, q, m, ax)) / 2


def entropy(p: Any, *, axis: int = -1, base: float | None = None, normalize: bool = False) -> Any:
    r"""Shannon entropy of the distributions along ``axis``.

    .. math::

        H(p) = -\sum_i p_i \log p_i ,\qquad 0 \log 0 = 0 .

    Args:
        p: probabilities, any shape with at least one dimension; each slice along ``axis`` is one
            distribution (non-negative, summing to 1). NumPy, any array-API array, or a sequence.
        axis: the class axis (default ``-1``; scipy's ``entropy`` defaults to ``axis=0``).
        base: logarithm base: ``None`` for nats, ``2`` for bits.
        normalize: divide each slice by its total first instead of requiring it to sum to 1.

    Returns:
        Array of ``p``'s floating dtype and array type with ``axis`` removed; values ``>= 0``.

    Raises:
        ValueError: negative, NaN or infinite entries, or a slice not summing to 1 (unless
            ``normalize=True``).

    Example:
        >>> round(float(entropy([0.5, 0.25, 0.25], base=2)), 4)
        1.5
        >>> round(float(entropy([2, 1, 1], base=2, normalize=True)), 4)
        1.5
    """
    return _apply("entropy", _entropy, ((p, "p"),), axis, normalize, base)


def cross_entropy(
    p: Any, q: Any, *, axis: int = -1, base: float | None = None, normalize: bool = False
) -> Any:
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
        normalize: divide each slice of ``p`` and ``q`` by its total first.

    Returns:
        Array of the common floating dtype with ``axis`` removed.

    Example:
        >>> round(float(cross_entropy([0.5, 0.5], [0.25, 0.75], base=2)), 4)
        1.2075
    """
    return _apply("cross_entropy", _cross_entropy, ((p, "p"), (q, "q")), axis, normalize, base)


def kl_divergence(
    p: Any, q: Any, *, axis: int = -1, base: float | None = None, normalize: bool = False
) -> Any:
    r"""Kullback-Leibler divergence of ``q`` from ``p`` (relative entropy), along ``axis``.

    .. math::

        D_{\mathrm{KL}}(p \,\|\, q) = \sum_i p_i \log \frac{p_i}{q_i} \ge 0 ,

    with ``0 log(0/q) = 0`` and ``p log(p/0) = inf`` for ``p > 0``.

    Args:
        p: true probabilities; each slice along ``axis`` is a distribution.
        q: model probabilities, same shape as ``p`` (or broadcastable to it).
        axis: the class axis (default ``-1``).
        base: ``None`` for nats, ``2`` for bits.
        normalize: divide each slice of ``p`` and ``q`` by its total first.

    Returns:
        Array of the common floating dtype with ``axis`` removed.

    Example:
        >>> round(float(kl_divergence([0.5, 0.5], [0.25, 0.75], base=2)), 4)
        0.2075
        >>> float(kl_divergence([0.5, 0.5], [1.0, 0.0]))
        inf
    """
    return _apply("kl_divergence", _kl, ((p, "p"), (q, "q")), axis, normalize, base)


def js_divergence(
    p: Any, q: Any, *, axis: int = -1, base: float | None = None, normalize: bool = False
) -> Any:
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
        normalize: divide each slice of ``p`` and ``q`` by its total first.

    Returns:
        Array of the common floating dtype with ``axis`` removed.

    References:
        J. Lin, "Divergence measures based on the Shannon entropy", IEEE Trans. Inf. Theory, 1991.

    Example:
        >>> round(float(js_divergence([1.0, 0.0], [0.0, 1.0], base=2)), 4)
        1.0
    """
    return _apply("js_divergence", _js, ((p, "p"), (q, "q")), axis, normalize, base)
