"""Input handling shared by the metrics: conversion to NumPy, label encoding, probability checks.

The metrics summarise whole data sets into NumPy scalars, so they work on NumPy internally. Any
array-API array (torch tensors on the CPU, ``array_api_strict`` arrays) and Python sequences are
accepted and converted once at the boundary.
"""

from __future__ import annotations

import math
from typing import Any

import array_api_compat
import numpy as np
import numpy.typing as npt

from crossentropy._array import as_array, namespace
from crossentropy._tolerance import check_row_sums, check_sum_tol, dtype_eps, rounded_tolerance

FloatArray = npt.NDArray[np.floating[Any]]
IntArray = npt.NDArray[np.intp]


def to_numpy(x: Any, name: str) -> np.ndarray:
    """``x`` as a NumPy array (no copy when it already is one)."""
    x = as_array(x, name)
    if isinstance(x, np.ndarray):
        return x
    if array_api_compat.is_torch_array(x):
        x = x.detach().cpu()
        if x.is_floating_point() and dtype_eps(x.dtype) > dtype_eps("float16"):
            # bfloat16 and float8, which NumPy lacks: their values are float32 numbers
            x = x.float()
        return np.asarray(x.numpy())
    try:
        return np.asarray(x)
    except (TypeError, ValueError, RuntimeError):
        try:
            return np.from_dlpack(x)
        except Exception as exc:
            raise TypeError(
                f"{name}: cannot convert {type(x).__name__} to a NumPy array: {exc}"
            ) from None


def float_probs(y_pred: Any, name: str) -> tuple[FloatArray, Any]:
    """``y_pred`` as a floating NumPy array of rank 1 or 2 (integers and booleans become
    float64, bfloat16 tensors float32), and the dtype it came in: the rounding its values carry
    is that dtype's (:func:`crossentropy.row_sum_tolerance`)."""
    y_pred = as_array(y_pred, name)
    stored = y_pred.dtype
    p = to_numpy(y_pred, name)
    if p.dtype.kind in "biu":
        p = p.astype(np.float64)
    elif p.dtype.kind != "f":
        raise TypeError(f"{name} must hold floating-point probabilities; got dtype {p.dtype}")
    if p.ndim not in (1, 2):
        raise ValueError(
            f"{name} must have shape (n_samples,) or (n_samples, n_classes); got shape {p.shape}"
        )
    if p.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {p.shape}); need at least one sample")
    return p, stored


def check_prob_range(p: FloatArray, name: str) -> None:
    """Raise unless every entry of ``p`` lies in [0, 1] (NaN is reported as such)."""
    lo = float(np.min(p))
    hi = float(np.max(p))
    if math.isnan(lo) or math.isnan(hi):
        idx = np.argwhere(np.isnan(p))[0]
        raise ValueError(f"{name} contains NaN at index {tuple(int(i) for i in idx)}")
    if lo < 0 or hi > 1:
        bad = (p < 0) | (p > 1)
        idx = np.argwhere(bad)[0]
        raise ValueError(
            f"{name} must hold probabilities in [0, 1]; got {float(p[tuple(idx)])!r} at index "
            f"{tuple(int(i) for i in idx)}"
        )


def check_rows_sum_to_one(
    p: FloatArray, name: str, sum_tol: float | None, stored: Any = None
) -> None:
    """Raise unless each row of the 2-D ``p`` sums to 1 within the library's tolerance rule
    (:func:`crossentropy.row_sum_tolerance` of ``stored``, the dtype the values came in, default
    ``p``'s) or within ``sum_tol`` when given."""
    xp = namespace(p)
    stored = p.dtype if stored is None else stored
    eps = dtype_eps(stored)
    total: FloatArray = np.sum(p, axis=1, keepdims=True, dtype=np.float64)
    sums = check_row_sums(xp, p, total, 1, sum_tol=sum_tol, eps=eps)
    if np.any(sums.off):
        i = int(np.argmax(sums.off[:, 0]))
        dtype = str(getattr(stored, "name", None) or stored)
        message = (
            f"{name}: row {i} sums to {float(total[i, 0])!r}, not 1 "
            f"({sums.describe((i, 0), dtype)}); pass probabilities, renormalize=True to "
            "divide each row by its sum, or sum_tol= to set the tolerance"
        )
        k = int(p.shape[1])
        rounded = None
        if sum_tol is None:
            rounded = rounded_tolerance(xp, p, float(total[i, 0]) - 1, k, eps)
        if rounded is not None:
            d = rounded[0]
            message += (
                f". Its values are all multiples of 1e-{d:02d}: if they were rounded to {d} "
                f"decimals, sum_tol=crossentropy.row_sum_tolerance({dtype!r}, {k}, decimals={d}) "
                "allows that rounding"
            )
        raise ValueError(message)


def renormalize_rows(p: FloatArray, name: str) -> FloatArray:
    """Divide each row of ``p`` by its sum; rows summing to 0 raise."""
    sums = np.sum(p, axis=1, keepdims=True)
    if np.any(sums <= 0):
        i = int(np.argmax(sums[:, 0] <= 0))
        raise ValueError(f"{name}: row {i} sums to 0 and cannot be renormalized")
    return p / sums


def encode_labels(
    y_true: Any, labels: Any, name: str = "y_true"
) -> tuple[IntArray, np.ndarray, np.ndarray]:
    """Map ``y_true`` to column indices into the sorted classes.

    Returns ``(index, classes, y)`` where ``classes`` is sorted (as sklearn's ``LabelBinarizer``
    orders them) and ``index[i]`` is the column of ``y[i]``.
    """
    y = to_numpy(y_true, name)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim == 2 and labels is None:
        return _decode_one_hot(y, name)
    if y.ndim != 1:
        raise ValueError(f"{name} must have shape (n_samples,); got shape {y.shape}")
    if y.dtype.kind == "f" and np.any(np.isnan(y)):
        raise ValueError(f"{name} contains NaN at index {int(np.argmax(np.isnan(y)))}")
    if labels is None:
        classes = np.unique(y)
        if classes.shape[0] < 2:
            shown = classes.tolist()
            raise ValueError(
                f"{name} contains only one label ({shown[0] if shown else 'none'}); pass all "
                "class labels explicitly through labels="
            )
    else:
        classes = to_numpy(labels, "labels")
        if classes.ndim != 1:
            raise ValueError(f"labels must be one-dimensional; got shape {classes.shape}")
        uniq = np.unique(classes)
        if uniq.shape[0] != classes.shape[0]:
            raise ValueError(f"labels must not contain duplicates; got {classes.tolist()}")
        if uniq.shape[0] < 2:
            raise ValueError(f"labels must contain at least two classes; got {classes.tolist()}")
        if not np.array_equal(uniq, classes):
            raise ValueError(
                f"labels must be given in sorted order, the order of the columns of the "
                f"probabilities (as in sklearn); got {classes.tolist()}, expected "
                f"{uniq.tolist()}"
            )
    try:
        index = np.minimum(np.searchsorted(classes, y), classes.shape[0] - 1)
        unknown = classes[index] != y
    except TypeError:
        raise TypeError(
            f"{name} (dtype {y.dtype}) cannot be matched with the labels (dtype {classes.dtype})"
        ) from None
    if np.any(unknown):
        i = int(np.argmax(unknown))
        raise ValueError(
            f"{name}[{i}] = {y[i].item()!r} is not one of the labels {classes.tolist()}"
        )
    return index.astype(np.intp, copy=False), classes, y


def _decode_one_hot(y: np.ndarray, name: str) -> tuple[IntArray, np.ndarray, np.ndarray]:
    """Column indices of a one-hot ``y_true`` of shape (n, k); classes are ``0..k-1``."""
    if y.dtype.kind not in "biuf" or not np.all((y == 0) | (y == 1)):
        raise ValueError(f"a 2-D {name} must be a one-hot indicator matrix of 0s and 1s")
    ones = np.count_nonzero(y, axis=1)
    if np.any(ones != 1):
        i = int(np.argmax(ones != 1))
        raise ValueError(
            f"a 2-D {name} must have exactly one 1 per row (one-hot); row {i} has {int(ones[i])}"
        )
    classes = np.arange(y.shape[1])
    return np.argmax(y, axis=1).astype(np.intp), classes, classes[np.argmax(y, axis=1)]


def check_sample_weight(sample_weight: Any, n: int) -> FloatArray | None:
    """``sample_weight`` as a float64 vector of length ``n`` with finite non-negative entries."""
    if sample_weight is None:
        return None
    w = to_numpy(sample_weight, "sample_weight")
    if w.ndim != 1 or w.shape[0] != n:
        raise ValueError(f"sample_weight must have shape ({n},); got shape {w.shape}")
    if w.dtype.kind not in "biuf":
        raise TypeError(f"sample_weight must be numeric; got dtype {w.dtype}")
    w = w.astype(np.float64, copy=False)
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("sample_weight must be finite and non-negative")
    return w


def check_renormalize(renormalize: bool) -> None:
    if not isinstance(renormalize, (bool, np.bool_)):
        raise TypeError(f"renormalize must be True or False; got {renormalize!r}")


def one_dimensional_error(
    p: FloatArray, name: str, source: str, classes: np.ndarray, order: str = "the sorted labels"
) -> ValueError:
    """The error for a 1-D ``p`` where there are more than two classes: a 1-D array is one
    probability per sample (of the positive class), not one row of probabilities."""
    k = int(classes.shape[0])
    shown = str(classes.tolist()) if k <= 10 else str(classes[:10].tolist())[:-1] + ", ...]"
    return ValueError(
        f"{name} is 1-D (shape {p.shape}), which holds one probability per sample, of the "
        f"positive class of two; {source} {k} classes {shown}, so pass {name} of shape "
        f"(n_samples, {k}), one column per class in the order of {order} (the probabilities "
        f"of a single sample are one row: shape (1, {k}))"
    )


def two_columns(p: FloatArray) -> FloatArray:
    """Binary probabilities of the positive class, shape (n,) or (n, 1), as (n, 2) columns."""
    if p.ndim == 1:
        p = p[:, None]
    if p.shape[1] == 1:
        return np.concatenate([1 - p, p], axis=1)
    return p


def prepare(
    y_true: Any,
    y_pred: Any,
    *,
    labels: Any,
    sample_weight: Any,
    renormalize: bool,
    sum_tol: float | None,
    pred_name: str = "y_pred",
) -> tuple[IntArray, FloatArray, FloatArray | None, np.ndarray]:
    """Validate a (labels, probabilities) pair; return (index, 2-D probs, weights, classes)."""
    check_renormalize(renormalize)
    check_sum_tol(sum_tol)
    p, stored = float_probs(y_pred, pred_name)
    index, classes, _ = encode_labels(y_true, labels)
    where = "labels" if labels is not None else "y_true"
    if p.ndim == 1 and classes.shape[0] > 2:
        raise one_dimensional_error(p, pred_name, f"{where} gives", classes)
    if index.shape[0] != p.shape[0]:
        raise ValueError(
            f"y_true and {pred_name} have different numbers of samples: {index.shape[0]} and "
            f"{p.shape[0]}"
        )
    check_prob_range(p, pred_name)
    p2 = two_columns(p)
    if p2.shape[1] != classes.shape[0]:
        raise ValueError(
            f"{pred_name} has {p2.shape[1]} columns but {where} gives {classes.shape[0]} classes "
            f"{classes.tolist()}; pass all class labels through labels="
        )
    if renormalize:
        p2 = renormalize_rows(p2, pred_name)
    elif p.ndim == 2 and p.shape[1] > 1:
        check_rows_sum_to_one(p2, pred_name, sum_tol, stored)
    w = check_sample_weight(sample_weight, p2.shape[0])
    return index, p2, w, classes
