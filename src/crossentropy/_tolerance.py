"""When a row of numbers is a probability distribution: the one row-sum rule of the library.

The core (``entropy``, ``cross_entropy``, ...), the metrics (``log_loss``, ...) and the command line
(``crossentropy score``) accept a row of ``k`` non-negative values as a distribution when its total
is within :func:`row_sum_tolerance` of 1. The tolerance is the rounding the values can carry, and it
is made only of what is known about them:

* arithmetic: probabilities are computed in float32 or wider, and a softmax normaliser sums ``k``
  terms, so ``1e-5 + 4 sqrt(k) eps32`` is always allowed (a float32 softmax stored as float64
  passes);
* storage: each value is within half a unit in the last place of itself in its dtype, so the total
  may be off by the epsilon of the array's own dtype (``2**-7`` for bfloat16, ``2**-10`` for
  float16). The dtype is all an array says about its storage: a float64 array is float64 data,
  also when every value is a bfloat16 number or a multiple of ``1e-4``. A histogram of 256 (or
  1000) counts that lost one count is such an array, and reading a format or a number of decimals
  off its values would accept it;
* decimals, for text only: a number written with ``d`` decimals (``%.4f``) is within
  ``u = 0.5 * 10**-d`` of the value it was rounded from, so a row written with ``d`` decimals may
  total ``u`` per value below 1, and ``u`` per non-zero value above 1 (a written 0 was rounded
  down, never up). A row's ``d`` is the most decimals among its numbers. The numbers parsed from
  the text are those decimal numbers, so their decimals are read from them after parsing; zeros
  at the end of a number (``0.5000``) are not seen, which only makes the rule stricter. One or two
  decimals are taken at face value: ``0.5,0.4`` is a mistake far more often than the rounding of
  ``0.54,0.46``.

An array has no decimals: values rounded to ``d`` decimals and kept in an array pass with
``sum_tol=row_sum_tolerance(dtype, k, decimals=d)``, which the refusal suggests when the values do
lie on such a grid and that rounding would explain the total.

A row accepted within the tolerance is used as given (as sklearn's ``log_loss`` uses it). A row
outside it raises, naming the option that divides each row by its total (``renormalize``) and the
one that sets the tolerance instead (``sum_tol``; ``--tol`` on the command line).
"""

from __future__ import annotations

import math
import numbers
import sys
from typing import Any

import numpy as np

__all__ = [
    "RowSums",
    "check_row_sums",
    "check_sum_tol",
    "dtype_eps",
    "rounded_tolerance",
    "rounding_decimals",
    "row_sum_tolerance",
    "sum_tolerance",
    "text_decimals",
]

FLOOR = 1e-5
EPS32 = float(np.finfo(np.float32).eps)
EPS64 = float(np.finfo(np.float64).eps)
MIN_DECIMALS = 3
MAX_DECIMALS = 8
# Floating formats NumPy lacks, by name (torch, JAX and ml_dtypes spell them so).
_EPS_BY_NAME = {
    "bfloat16": 2.0**-7,
    "float8_e4m3fn": 2.0**-3,
    "float8_e4m3fnuz": 2.0**-3,
    "float8_e5m2": 2.0**-2,
    "float8_e5m2fnuz": 2.0**-2,
}


def sum_tolerance(n_classes: int, *, eps: float = 0.0, decimals: int | None = None) -> float:
    r"""The tolerance of :func:`row_sum_tolerance`, from a machine epsilon instead of a dtype.

    .. math::

        \tau = 10^{-5} + 4\sqrt{k}\,\epsilon_{32} + \epsilon + k u ,\qquad u = \tfrac12 10^{-d}

    (no ``k u`` term when ``decimals`` is ``None``).

    Example:
        >>> round(sum_tolerance(2, eps=2.0**-52), 7)  # float64: the arithmetic allowance
        1.07e-05
    """
    tol = FLOOR + 4.0 * math.sqrt(n_classes) * EPS32 + eps
    if decimals is not None:
        tol += n_classes * 0.5 * 10.0**-decimals
    return tol


def dtype_eps(dtype: Any) -> float:
    """Machine epsilon of ``dtype``; 0 for integer and boolean dtypes (their values are exact).

    ``dtype`` is a NumPy dtype or scalar type, another array library's dtype (``torch.bfloat16``,
    an ``array_api_strict`` dtype), or a name (``"float16"``, ``"bfloat16"``,
    ``"torch.bfloat16"``). Raises ``TypeError`` for anything else.
    """
    if isinstance(dtype, str):
        dtype = dtype.rsplit(".", 1)[-1]
        if dtype in _EPS_BY_NAME:
            return _EPS_BY_NAME[dtype]
    try:
        numpy_dtype: np.dtype[Any] | None = np.dtype(dtype)
    except TypeError:
        numpy_dtype = None
    if numpy_dtype is None:
        eps = _library_eps(dtype)
    elif numpy_dtype.kind == "f":
        eps = float(np.finfo(numpy_dtype).eps)
    elif numpy_dtype.kind in "biu":
        eps = 0.0
    else:  # ml_dtypes' bfloat16 and float8 types register with NumPy as kind "V"
        eps = _EPS_BY_NAME.get(numpy_dtype.name)
    if eps is None:
        raise TypeError(
            f"dtype must be a real numeric dtype (such as numpy.float64, torch.bfloat16 or "
            f"'float16'); got {dtype!r}"
        )
    return eps


def _library_eps(dtype: Any) -> float | None:
    """Epsilon of a dtype NumPy does not know, from its own library's ``finfo``/``iinfo``
    (``torch.finfo(torch.bfloat16)``); the library is already imported, since it made the dtype."""
    library = sys.modules.get(type(dtype).__module__.split(".")[0])
    if getattr(dtype, "is_complex", False):  # torch.finfo knows complex dtypes too
        return None
    try:
        return float(library.finfo(dtype).eps)  # type: ignore[union-attr]
    except (AttributeError, TypeError, ValueError):
        pass
    try:
        library.iinfo(dtype)  # type: ignore[union-attr]
        return 0.0
    except (AttributeError, TypeError, ValueError):
        pass
    if dtype == getattr(library, "bool", None):
        return 0.0
    return _EPS_BY_NAME.get(str(dtype).rsplit(".", 1)[-1])


def row_sum_tolerance(dtype: Any, n_classes: int, decimals: int | None = None) -> float:
    r"""How far from 1 the total of a probability row may be: the library's one row-sum rule.

    .. math::

        \tau = 10^{-5} + 4\sqrt{k}\,\epsilon_{32} + \epsilon_{\mathrm{dtype}} + k u ,
        \qquad u = \tfrac12 10^{-d} .

    The first two terms allow for the arithmetic that made the probabilities (float32 or wider;
    a softmax sums ``k`` terms), so a float32 softmax stored as float64 passes. The third is the
    rounding of storing each value in ``dtype``, the dtype the values really have: a float64 array
    gets float64's epsilon whatever its values look like. The last is for values rounded to ``d``
    decimals, as text written with ``%.4f`` is; an array has no decimals, so pass them only when
    you know how the values were rounded (``None``, the default, adds nothing).

    The core functions, the metrics and ``crossentropy score`` accept a row within this tolerance
    and use it as given; ``sum_tol=row_sum_tolerance(...)`` states the rule explicitly, for example
    for an array of values rounded to 4 decimals.

    Args:
        dtype: the dtype the probabilities are stored in: a NumPy dtype or type, another array
            library's dtype (``torch.bfloat16``), or its name (``"bfloat16"``). Integer and
            boolean dtypes hold exact values (no storage term).
        n_classes: ``k``, the number of values in the row (at least 1).
        decimals: ``d``, the decimals every value was rounded to, or ``None``.

    Returns:
        The tolerance on ``|sum(row) - 1|``, a Python float.

    Raises:
        TypeError: ``dtype`` is not a real numeric dtype; ``n_classes`` or ``decimals`` is not an
            integer.
        ValueError: ``n_classes < 1`` or ``decimals < 0``.

    Example:
        >>> import numpy as np
        >>> from crossentropy import row_sum_tolerance
        >>> round(row_sum_tolerance(np.float64, 2), 7)  # the arithmetic allowance
        1.07e-05
        >>> round(row_sum_tolerance("bfloat16", 2), 5)  # plus bfloat16's epsilon, 2**-7
        0.00783
        >>> round(row_sum_tolerance(np.float64, 5, decimals=4), 7)  # five values written as %.4f
        0.0002611
    """
    if isinstance(n_classes, (bool, np.bool_)) or not isinstance(n_classes, numbers.Integral):
        raise TypeError(f"n_classes must be an int; got {n_classes!r}")
    if n_classes < 1:
        raise ValueError(f"n_classes must be at least 1; got {n_classes}")
    if decimals is not None:
        if isinstance(decimals, (bool, np.bool_)) or not isinstance(decimals, numbers.Integral):
            raise TypeError(f"decimals must be an int or None; got {decimals!r}")
        if decimals < 0:
            raise ValueError(f"decimals must be a non-negative int or None; got {decimals}")
        decimals = int(decimals)
    return sum_tolerance(int(n_classes), eps=dtype_eps(dtype), decimals=decimals)


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


# Values examined at a time on the NumPy path, so that the temporaries stay in the CPU cache.
_BLOCK = 1 << 16
# Values examined first: a property this prefix lacks, the whole array lacks too.
_PREFIX = 4096


def _numpy_blocks_all(x: np.ndarray, test: Any) -> bool:
    """``test(block)`` for every block of the flattened ``x`` (stopping at the first False)."""
    flat = x.reshape(-1)
    return all(test(flat[i : i + _BLOCK]) for i in range(0, flat.size, _BLOCK))


def _max_decimals(eps: float) -> int:
    # A grid of 10**-d can only be seen when it is far coarser than the dtype's own spacing:
    # float32 values are tested up to 4 decimals, float64 up to 8, float16 not at all.
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
    """The fewest decimals ``d`` (3 to 8) at which every entry of ``x`` is a multiple of
    ``10**-d``, up to the rounding of the dtype (``eps``, default that of ``x``); ``None`` when
    there is none up to 8 (4 for float32) or it is below 3.

    This describes the values; it is never taken as the way they were written (an array carries
    no decimals). Refusals use it to say which ``sum_tol`` would accept data rounded so.
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
        # The smallest grid holding a prefix is a lower bound for the whole array's.
        prefix = flat[: min(_PREFIX, flat.shape[0])]
        d = next((d for d in range(top + 1) if _on_grid(xp, prefix, d, slack(d))), None)
        if d is None:
            return None
        while d <= top and not _on_grid(xp, flat, d, slack(d)):
            d += 1
    except (TypeError, ValueError, RuntimeError):  # a device without float64
        return None
    return d if MIN_DECIMALS <= d <= top else None


def rounded_tolerance(
    xp: Any, x: Any, deviation: float, n_classes: int, eps: float
) -> tuple[int, float] | None:
    """``(d, tolerance)`` when every value of ``x`` is a multiple of ``10**-d`` (3 <= d <= 8) and
    :func:`row_sum_tolerance` with ``decimals=d`` allows ``deviation``; else ``None``.

    Only the message of a refusal uses this: it says which ``sum_tol`` accepts the data if the
    caller knows they were rounded to ``d`` decimals.
    """
    d = rounding_decimals(xp, x, eps)
    if d is None:
        return None
    tol = sum_tolerance(n_classes, eps=eps, decimals=d)
    return (d, tol) if abs(deviation) <= tol else None


def text_decimals(rows: np.ndarray) -> np.ndarray:
    """The decimals each row of ``rows`` (2-D, float64 numbers parsed from decimal text) was
    written with: the most decimals among its numbers, as an int64 array of shape ``(n,)``; -1
    where that is below 3 (taken at face value) or above 8 (rounding below the arithmetic floor
    for any row of fewer than 20000 values, and beyond what float64 shows reliably).

    A number parsed from text is the decimal number written, up to float64's rounding, so a value
    that is a multiple of ``10**-d`` was written with at most ``d`` decimals after dropping zeros
    at its end (``0.5000`` reads as one decimal).
    """
    n = rows.shape[0]
    out = np.full(n, -1, dtype=np.int64)
    if n == 0 or rows.shape[1] == 0:
        return out
    biggest = np.abs(rows).max(axis=1)
    left = np.ones(n, dtype=bool)
    for d in range(MAX_DECIMALS + 1):
        scaled = rows[left] * 10.0**d
        slack = 2.0 * EPS64 * biggest[left] * 10.0**d + 1e-9
        on = (np.abs(scaled - np.rint(scaled)) <= slack[:, None]).all(axis=1)
        where = np.flatnonzero(left)[on]
        out[where] = d
        left[where] = False
        if not left.any():
            break
    out[out < MIN_DECIMALS] = -1
    return out


class RowSums:
    """The outcome of :func:`check_row_sums`: which rows are off, and each row's tolerance."""

    def __init__(
        self,
        off: Any,
        tol: Any,
        n_classes: int,
        decimals: Any = None,
        given: bool = False,
    ) -> None:
        self.off = off
        """Boolean array, True where a row's total is outside its tolerance."""
        self.tol = tol
        """The tolerance: a float, or an array with one per row (on the side of 1 it lies)."""
        self.n_classes = n_classes
        self.decimals = decimals
        """For text: the decimals each row was written with (-1: none counted), else None."""
        self.given = given
        """Whether the caller chose the tolerance (``sum_tol``)."""

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
        written = ""
        if self.decimals is not None and int(self.decimals[index]) >= 0:
            written = f" written with {int(self.decimals[index])} decimals"
        return f"tolerance {tol:.3g} for {self.n_classes} classes{stored}{written}"


def check_row_sums(
    xp: Any,
    x: Any,
    total: Any,
    axis: int,
    *,
    sum_tol: float | None = None,
    eps: float | None = None,
    from_text: bool = False,
) -> RowSums:
    """Compare the row totals of ``x`` (along ``axis``, kept as a length-1 axis) with 1.

    Args:
        xp: the array namespace of ``x``.
        x: non-negative finite values, the rows along ``axis``.
        total: ``sum(x, axis=axis, keepdims=True)``.
        axis: the class axis (non-negative).
        sum_tol: a tolerance chosen by the caller; ``None`` applies :func:`row_sum_tolerance`.
        eps: machine epsilon of the dtype the values really have, when ``x`` was converted
            (default: that of ``x``).
        from_text: ``x`` holds numbers parsed from decimal text (a 2-D NumPy array, rows along
            axis 1): rows outside the plain tolerance get that of the decimals they were written
            with (:func:`text_decimals`).

    Returns:
        A :class:`RowSums` whose ``off`` has the shape of ``total``.
    """
    k = int(x.shape[axis])
    dev = total - 1
    if sum_tol is not None:
        return RowSums(xp.abs(dev) > sum_tol, float(sum_tol), k, given=True)
    if eps is None:
        eps = dtype_eps(x.dtype)
    base = sum_tolerance(k, eps=eps)
    off = xp.abs(dev) > base
    if not from_text or not bool(xp.any(off)):
        return RowSums(off, base, k)
    if not (isinstance(x, np.ndarray) and x.ndim == 2 and axis == 1):
        raise ValueError("from_text needs a 2-D NumPy array with its rows along axis 1")
    # Only rows that fail the plain rule pay for reading their decimals.
    rows = np.flatnonzero(off[:, 0])
    decimals = np.full(x.shape[0], -1, dtype=np.int64)
    decimals[rows] = text_decimals(x[rows])
    unit = np.where(decimals >= 0, 0.5 * 10.0 ** -np.maximum(decimals, 0), 0.0)[:, None]
    zeros = np.count_nonzero(x == 0, axis=1, keepdims=True)
    below = base + k * unit
    # Above 1, a written 0 cannot have been rounded up: it takes back its share.
    above = below - zeros * unit
    dev = np.asarray(dev, dtype=np.float64)
    off = (dev > above) | (-dev > below)
    tol = np.where(dev > 0, above, below)
    return RowSums(off, tol, k, decimals[:, None])
