"""Array-API plumbing shared by the core: namespaces, argument checks and unit conversion.

Every core function accepts NumPy arrays, Python sequences, or any array-API array (torch tensors,
``array_api_strict``) and returns the caller's array type. Python sequences become NumPy arrays.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Sequence
from typing import Any, Protocol, TypeAlias, TypeVar

import array_api_compat
import numpy as np
import numpy.typing as npt

__all__ = [
    "REDUCTIONS",
    "Array",
    "ArrayLike",
    "ArrayT",
    "NumPyInput",
    "NumPyResult",
    "as_array",
    "check_reduction",
    "log_base_divisor",
    "namespace",
    "result",
]

REDUCTIONS = ("mean", "sum", "none")


class Array(Protocol):
    """What the core returns: an array of the caller's library (a NumPy scalar for a 0-d NumPy
    result), with the array API's attributes and arithmetic."""

    @property
    def shape(self) -> tuple[int, ...]: ...
    @property
    def ndim(self) -> int: ...
    @property
    def dtype(self) -> Any: ...
    def __float__(self) -> float: ...
    def __add__(self, other: Any, /) -> Any: ...
    def __sub__(self, other: Any, /) -> Any: ...
    def __mul__(self, other: Any, /) -> Any: ...
    def __truediv__(self, other: Any, /) -> Any: ...
    def __neg__(self) -> Any: ...


# What the core accepts: any array-API array (NumPy, torch, ...) or anything NumPy can convert.
ArrayLike: TypeAlias = Array | npt.ArrayLike
# The public functions are overloaded on these: NumPy arrays and Python sequences give NumPy
# results (a scalar where no dimension is left); any other array type gives its own type back.
ArrayT = TypeVar("ArrayT", bound=Array)
NumPyInput: TypeAlias = npt.NDArray[Any] | Sequence[Any] | float
NumPyResult: TypeAlias = npt.NDArray[np.floating[Any]] | np.floating[Any]


def result(x: Any) -> Any:
    """A 0-d NumPy array as the NumPy scalar of its dtype (what NumPy's own reductions return);
    anything else unchanged."""
    if isinstance(x, np.ndarray) and x.ndim == 0:
        return x[()]
    return x


def as_array(x: Any, name: str) -> Any:
    """Return ``x`` unchanged if it is an array-API array, else a NumPy array of it."""
    if array_api_compat.is_array_api_obj(x):
        return x
    if isinstance(x, (str, bytes)):
        raise TypeError(f"{name} must be an array or a sequence of numbers, got {type(x).__name__}")
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be an array or a sequence of numbers: {exc}") from None


def namespace(*arrays: Any, names: Sequence[str] = (), func: str = "") -> Any:
    """The array-API namespace shared by ``arrays`` (``None`` entries are ignored).

    Arrays of two libraries (a NumPy array and a torch tensor) raise ``TypeError`` saying which
    argument is which and how to convert one side; ``names`` names the arrays (positionally) and
    ``func`` the function, for that message."""
    present = [(a, n) for a, n in itertools.zip_longest(arrays, names) if a is not None]
    try:
        return array_api_compat.array_namespace(*(a for a, _ in present))
    except TypeError:
        raise TypeError(_mixed_message(present, func)) from None


def _library(x: Any) -> str:
    return type(x).__module__.split(".")[0]


def _mixed_message(present: list[tuple[Any, str | None]], func: str) -> str:
    """Which arguments come from which library, and how to bring them to one."""
    first, first_name = present[0]
    other, other_name = next(
        ((a, n) for a, n in present if _library(a) != _library(first)), present[-1]
    )
    libraries = {_library(first), _library(other)}
    if libraries == {"numpy", "torch"}:
        how = (
            "torch.as_tensor(array) makes a tensor of a NumPy array, and "
            "tensor.detach().cpu().numpy() a NumPy array of a tensor"
        )
    else:
        how = "with np.asarray, or the asarray of the other library"
    where = f"{func}: " if func else ""
    return (
        f"{where}{first_name or 'one array'} is a {_library(first)}.{type(first).__name__} and "
        f"{other_name or 'another'} a {_library(other)}.{type(other).__name__}: arrays from "
        f"different libraries cannot be mixed; convert one side to the other's library ({how})"
    )


def check_reduction(reduction: str, allowed: tuple[str, ...] = REDUCTIONS) -> str:
    if reduction not in allowed:
        raise ValueError(
            f"reduction must be one of {', '.join(map(repr, allowed))}; got {reduction!r}"
        )
    return reduction


def log_base_divisor(base: float | None) -> float:
    """``log(base)``: divide a quantity in nats by this to express it in ``base`` units (1 for nats)."""
    if base is None:
        return 1.0
    if isinstance(base, (bool, np.bool_)) or not isinstance(base, numbers.Real):
        raise TypeError(f"base must be a positive number other than 1 or None (nats); got {base!r}")
    if not math.isfinite(base) or base <= 0 or base == 1:
        raise ValueError(
            f"base must be a positive finite number other than 1, or None (nats); got {base!r}"
        )
    return math.log(base)


def is_floating(xp: Any, x: Any) -> bool:
    return bool(xp.isdtype(x.dtype, "real floating"))


def is_integral(xp: Any, x: Any) -> bool:
    return bool(xp.isdtype(x.dtype, "integral"))


def as_float(xp: Any, x: Any, name: str) -> Any:
    """``x`` as a real floating array: floats unchanged, integers and booleans to the default float."""
    if xp.isdtype(x.dtype, "real floating"):
        return x
    if xp.isdtype(x.dtype, "integral") or x.dtype == xp.bool:
        return xp.astype(x, _default_float(xp, x))
    raise TypeError(f"{name} must have a real numeric dtype; got dtype {x.dtype}")


def _default_float(xp: Any, x: Any) -> Any:
    try:
        info = xp.__array_namespace_info__()
        return info.default_dtypes(device=getattr(x, "device", None))["real floating"]
    except (AttributeError, TypeError, KeyError):
        return xp.float64


def normalize_axis(axis: int, ndim: int, name: str = "axis") -> int:
    """Turn a possibly negative ``axis`` into an index into ``ndim`` dimensions, or raise."""
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise TypeError(f"{name} must be an int; got {axis!r}")
    if ndim == 0:
        raise ValueError(f"{name}={axis} needs an array with at least one dimension; got a scalar")
    if not -ndim <= axis < ndim:
        raise ValueError(f"{name}={axis} is out of range for an array with {ndim} dimensions")
    return axis % ndim


def first_true(xp: Any, mask: Any) -> tuple[int, ...]:
    """Index (a tuple) of the first ``True`` of a boolean array, in C order; the mask must hold one."""
    flat = xp.reshape(mask, (-1,))
    pos = int(xp.argmax(xp.astype(flat, xp.int8)))
    return tuple(int(i) for i in np.unravel_index(pos, tuple(mask.shape)))


def as_arrays(*pairs: tuple[Any, str], func: str = "") -> tuple[Any, list[Any]]:
    """Convert ``(value, name)`` pairs to arrays of one namespace; returns ``(xp, arrays)``.

    ``None`` values stay ``None``. Python sequences and scalars join the namespace of the array
    arguments (so a list of class weights works next to a torch tensor); alone they become NumPy.
    Arrays of two libraries raise ``TypeError`` naming the arguments (``func`` names the caller).
    """
    given = [
        (v, name) for v, name in pairs if v is not None and array_api_compat.is_array_api_obj(v)
    ]
    if not given:
        converted = [None if v is None else as_array(v, name) for v, name in pairs]
        return namespace(*converted), converted
    xp = namespace(*(v for v, _ in given), names=[name for _, name in given], func=func)
    given_arrays = [v for v, _ in given]
    device = array_api_compat.device(given_arrays[0])
    arrays: list[Any] = []
    for value, name in pairs:
        if value is None or array_api_compat.is_array_api_obj(value):
            arrays.append(value)
            continue
        if isinstance(value, (str, bytes)):
            raise TypeError(f"{name} must be an array or a sequence of numbers, got {value!r}")
        try:
            arrays.append(xp.asarray(value, device=device))
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(f"{name} must be an array or a sequence of numbers: {exc}") from None
    return xp, arrays
