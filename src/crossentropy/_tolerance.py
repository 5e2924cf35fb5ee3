"""When a row of numbers is a probability distribution: the one row-sum rule of the library.

The core (``entropy``, ``cross_entropy``, ...), the metrics (``log_loss``, ...) and the command line
(``crossentropy score``) accept a row of ``k`` non-negative values as a distribution when its total
is within :func:`sum_tolerance` of 1, which is the rounding the values may carry:

* arithmetic: probabilities are computed in float32 or wider, and a softmax normaliser sums ``k``
  terms, so ``1e-5 + 4 sqrt(k) eps32`` is always allowed (a float32 softmax stored as float64
  passes);
* storage: each value is within half a unit in the last place of itself in its dtype, so the total
  may be off by the dtype's ``eps``. This matters for float16 and bfloat16, also when such values
  arrive in a wider dtype: if every value is exactly a float16 (or bfloat16) number, that is the
  precision they were computed in;
* decimals: when every value is a multiple of ``10**-d`` for some ``3 <= d <= 8`` (``np.round(p,
  4)``, a CSV written with ``%.4f``), each one may be ``u = 0.5 * 10**-d`` away from the value it
  was rounded from, so the total may be ``u`` per value below 1, and ``u`` per non-zero value above
  1 (a written 0 was rounded down, never up). The row is then accepted exactly when some
  distribution rounds to it. One or two decimals are taken at face value: ``[0.5, 0.4]`` is a
  mistake far more often than the rounding of ``[0.54, 0.46]``.

A row accepted within the tolerance is used as given (as sklearn's ``log_loss`` uses it). A row
outside it raises, naming the option that divides each row by its total (``renormalize``) and the
one that sets the tolerance instead (``sum_tol``; ``--tol`` on the command line).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

__all__ = [
    "RowSums",
    "check_row_sums",
    "check_sum_tol",
    "rounding_decimals",
    "stored_precision",
    "sum_tolerance",
]

FLOOR = 1e-5
EPS32 = float(np.finfo(np.float32).eps)
MIN_DECIMALS = 3
MAX_DECIMALS = 8


def sum_tolerance(n_classes: int, *, eps: float = 0.0, decimals: int | None = None) -> float:
    r"""How far from 1 the total of a row of ``n_classes`` probabilities may be.

    .. math::

        \tau = 10^{-5} + 4\sqrt{k}\,\epsilon_{32} + \epsilon + k u ,\qquad u = \tfrac12 10^{-d},

    where ``eps`` is the machine epsilon of the dtype the values are stored in and ``d`` the number
    of decimals they were rounded to (no ``k u`` term when ``None``). Above 1, a row's written zeros
    do not count in ``k u``: they were rounded down (see :func:`check_row_sums`).

    Args:
        n_classes: ``k``, the number of values in the row.
        eps: machine epsilon of the values' dtype (0 for exact values).
        decimals: ``d``, the decimals the values were rounded to, or ``None``.

    Returns:
        The tolerance, a Python float.

    Example:
        >>> round(sum_tolerance(2, eps=2.0**-52), 7)  # float64: the arithmetic allowance
        1.07e-05
        >>> round(sum_tolerance(2, eps=2.0**-52, decimals=4), 7)  # written with 4 decimals
        0.0001107
    """
    tol = FLOOR + 4.0 * math.sqrt(n_classes) * EPS32 + eps
    if decimals is not None:
        tol += n_classes * 0.5 * 10.0**-decimals
    return tol


def check_sum_tol(sum_tol: float | None, func: str = "") -> float | None:
    """``sum_tol`` as a float after checking it is ``None`` or a non-negative finite number."""
    where = f"{func}: " if func else ""
    if sum_tol is None:
        return None
    if isinstance(sum_tol, (bool, np.bool_)) or not isinstance(sum_tol, numbers.Real):
        raise TypeError(
            f"{where}sum_tol must be a non-negative number or None (the default rule); got "
            f"{sum_tol!r}"
        )
    if not (math.isfinite(sum_tol) and sum_tol >= 0):
        raise ValueError(f"{where}sum_tol must be a non-negative finite number; got {sum_tol!r}")
    return float(sum_tol)


# Formats narrower than float32 whose numbers a wider array may hold exactly, coarsest first.
_NARROW = (("bfloat16", 2.0**-7), ("float16", 2.0**-10))
# Values examined at a time on the NumPy path, so that the temporaries stay in the CPU cache.
_BLOCK = 1 << 16
# Values examined first: a property this prefix lacks, the whole array lacks too.
_PREFIX = 4096


def _numpy_blocks_all(x: np.ndarray, test: Any) -> bool:
    """``test(block)`` for every block of the flattened ``x`` (stopping at the first False)."""
    flat = x.reshape(-1)
    return all(test(flat[i : i + _BLOCK]) for i in range(0, flat.size, _BLOCK))


def _holds_exactly(xp: Any, x: Any, name: str) -> bool:
    """Whether every value of ``x`` is a number of the format ``name`` (float16 or bfloat16)."""
    dtype = getattr(xp, name, None)

    def numpy_test(block: np.ndarray) -> bool:
        if name == "float16":
            return np.array_equal(block.astype(np.float16).astype(block.dtype), block)
        # NumPy has no bfloat16: a bfloat16 number is a float32 whose 16 low bits are 0
        f32 = block.astype(np.float32)
        if not np.array_equal(f32, block):
            return False
        return not bool(np.any(f32.view(np.uint32) & np.uint32(0xFFFF)))

    def test(a: Any) -> bool:
        if not isinstance(a, np.ndarray) and dtype is None:
            # a namespace without the format (the array API has no float16): look with NumPy,
            # which works for arrays in host memory
            try:
                a = np.from_dlpack(a)
            except (TypeError, ValueError, RuntimeError, BufferError, AttributeError):
                return False
        if isinstance(a, np.ndarray):
            return _numpy_blocks_all(a, numpy_test)
        return bool(xp.all(xp.astype(xp.astype(a, dtype), a.dtype) == a))

    try:
        flat = xp.reshape(x, (-1,))
        return test(flat[: min(_PREFIX, flat.shape[0])]) and test(flat)
    except (TypeError, ValueError, RuntimeError, OverflowError):
        return False


def stored_precision(xp: Any, x: Any) -> tuple[float, str | None]:
    """``(eps, name)`` of the coarsest of bfloat16 and float16 that holds every value of ``x``
    exactly, when it is coarser than ``x``'s own dtype; else ``(eps of x's dtype, None)``."""
    own = float(xp.finfo(x.dtype).eps)
    if math.prod(tuple(x.shape)) == 0:
        return own, None
    for name, eps in _NARROW:
        if eps > own and _holds_exactly(xp, x, name):
            return eps, name
    return own, None


def _max_decimals(eps: float) -> int:
    # A grid of 10**-d is only evidence of rounding when it is far coarser than the dtype's own
    # spacing: float32 values are tested up to 4 decimals, float64 up to 8, float16 not at all.
    if eps <= 0:
        return MAX_DECIMALS
    return max(0, min(MAX_DECIMALS, math.floor(-math.log10(100.0 * eps))))


def _on_grid(xp: Any, x: Any, d: int, slack: float) -> bool:
    """Whether every value of ``x`` is within ``slack`` of a multiple of ``10**-d``, measured in
    units of ``10**-d``."""
    scale = float(10**d)
    if isinstance(x, np.ndarray):

        def test(block: np.ndarray) -> bool:
            scaled = block.astype(np.float64) * scale
            return bool(np.abs(scaled - np.rint(scaled)).max() <= slack)

        return _numpy_blocks_all(x, test)
    scaled = xp.astype(x, xp.float64, copy=False) * scale
    return bool(xp.all(xp.abs(scaled - xp.round(scaled)) <= slack))


def rounding_decimals(xp: Any, x: Any, eps: float | None = None) -> int | None:
    """The decimals ``d`` (3 to 8) that every entry of ``x`` was rounded to, or ``None``.

    ``d`` is the smallest number of decimals at which every value is a multiple of ``10**-d``, up
    to the rounding of the dtype (``eps``, default that of ``x``); ``None`` when there is none up
    to 8 (4 for float32) or the smallest is below 3 (one or two decimals are taken as exact).
    """
    if eps is None:
        eps = float(xp.finfo(x.dtype).eps)
    top = _max_decimals(eps)
    if top < MIN_DECIMALS or math.prod(tuple(x.shape)) == 0:
        return None
    try:
        flat = xp.reshape(x, (-1,))
        biggest = float(xp.max(xp.abs(flat)))
    except (TypeError, ValueError, RuntimeError):
        return None

    def slack(d: int) -> float:
        # a value v of the grid is stored as v (1 + e) with |e| <= eps / 2, scaled exactly
        return 2.0 * eps * biggest * 10.0**d + 1e-9

    try:
        # The smallest grid holding a prefix is a lower bound for the whole array's; full-precision
        # data is refused there, and rounded data usually needs one full pass after it.
        prefix = flat[: min(_PREFIX, flat.shape[0])]
        d = next((d for d in range(top + 1) if _on_grid(xp, prefix, d, slack(d))), None)
        if d is None:
            return None
        while d <= top and not _on_grid(xp, flat, d, slack(d)):
            d += 1
    except (TypeError, ValueError, RuntimeError):  # a device without float64
        return None
    return d if MIN_DECIMALS <= d <= top else None


class RowSums:
    """The outcome of :func:`check_row_sums`: which rows are off, and each row's tolerance."""

    def __init__(
        self,
        off: Any,
        tol: Any,
        n_classes: int,
        decimals: int | None = None,
        given: bool = False,
        precision: str | None = None,
    ) -> None:
        self.off = off
        """Boolean array, True where a row's total is outside its tolerance."""
        self.tol = tol
        """The tolerance: a float, or an array with one per row (on the side of 1 it lies)."""
        self.n_classes = n_classes
        self.decimals = decimals
        """The decimals the values were found rounded to, or None."""
        self.given = given
        """Whether the caller chose the tolerance (``sum_tol``)."""
        self.precision = precision
        """The narrower format the values were found to be numbers of (float16, bfloat16)."""

    def tolerance_at(self, index: Any) -> float:
        """The tolerance of the row at ``index`` (an index into ``off``)."""
        if isinstance(self.tol, float):
            return self.tol
        return float(self.tol[index])

    def describe(self, index: Any, dtype: str = "") -> str:
        """The tolerance of one row and where it comes from, e.g. ``tolerance 1.07e-05 for 2
        classes of dtype float64``; ``dtype`` names the values' storage (empty for text)."""
        tol = self.tolerance_at(index)
        if self.given:
            return f"tolerance {tol:.3g}, as given"
        stored = f" of dtype {dtype}" if dtype else ""
        if self.precision is not None:
            stored += f" holding {self.precision} numbers"
        rounded = f" rounded to {self.decimals} decimals" if self.decimals is not None else ""
        return f"tolerance {tol:.3g} for {self.n_classes} classes{stored}{rounded}"


def check_row_sums(
    xp: Any,
    x: Any,
    total: Any,
    axis: int,
    *,
    sum_tol: float | None = None,
    eps: float | None = None,
) -> RowSums:
    """Compare the row totals of ``x`` (along ``axis``, kept as a length-1 axis) with 1.

    Args:
        xp: the array namespace of ``x``.
        x: non-negative finite values, the rows along ``axis``.
        total: ``sum(x, axis=axis, keepdims=True)``.
        axis: the class axis (non-negative).
        sum_tol: a tolerance chosen by the caller; ``None`` applies :func:`sum_tolerance`.
        eps: machine epsilon of the dtype the values were stored in before any conversion
            (default: that of ``x``).

    Returns:
        A :class:`RowSums` whose ``off`` has the shape of ``total``.
    """
    k = int(x.shape[axis])
    dev = total - 1
    if sum_tol is not None:
        return RowSums(xp.abs(dev) > sum_tol, float(sum_tol), k, given=True)
    if eps is None:
        eps = float(xp.finfo(x.dtype).eps)
    base = sum_tolerance(k, eps=eps)
    off = xp.abs(dev) > base
    if not bool(xp.any(off)):
        return RowSums(off, base, k)
    # Only data that fails the plain rule pays for finding the precision and the decimals it
    # was written with.
    narrow_eps, precision = stored_precision(xp, x)
    if narrow_eps > eps:
        eps = narrow_eps
        base = sum_tolerance(k, eps=eps)
        off = xp.abs(dev) > base
        if not bool(xp.any(off)):
            return RowSums(off, base, k, precision=precision)
    decimals = rounding_decimals(xp, x, eps)
    if decimals is None:
        return RowSums(off, base, k, precision=precision)
    below = sum_tolerance(k, eps=eps, decimals=decimals)
    # Above 1, a written 0 cannot have been rounded up: it takes back its share of k u.
    zeros = xp.astype(xp.count_nonzero(x == 0, axis=axis, keepdims=True), xp.float64)
    above = below - 0.5 * 10.0**-decimals * zeros
    dev = xp.astype(dev, xp.float64)
    off = (dev > above) | (-dev > below)
    tol = xp.where(dev > 0, above, xp.full_like(above, below))
    return RowSums(off, tol, k, decimals, precision=precision)
