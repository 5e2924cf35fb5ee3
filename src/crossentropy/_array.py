"""Array-API plumbing shared by the core: namespaces, argument checks and unit conversion.

Every core function accepts NumPy arrays, Python sequences, or any array-API array (torch tensors,
``array_api_strict``) and returns the caller's array type. Python sequences become NumPy arrays.
"""

from __future__ import annotations

import math
from typing import Any

import array_api_compat
import numpy as np

__all__ = [
    "REDUCTIONS",
    "as_array",
    "check_reduction",
    "log_base_divisor",
    "namespace",
]

REDUCTIONS = ("mean", "sum", "none")


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


def namespace(*arrays: Any) -> Any:
    """The array-API namespace shared by ``arrays`` (``None`` entries are ignored)."""
    present = [a for a in arrays if a is not None]
    try:
        return array_api_compat.array_namespace(*present)
    except TypeError as exc:
        raise TypeError(f"arrays from different libraries cannot be mixed: {exc}") from None


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
    if isinstance(base, bool) or not isinstance(base, (int, float)):
        raise TypeError(f"base must be a positive number other than 1 or None (nats); got {base!r}")
    if not math.isfinite(base) or base <= 0 or base == 1:
        raise ValueError(
            f"base must be a positive finite number other than 1, or None (nats); got {base!r}"
        )
    return math.log(base)
