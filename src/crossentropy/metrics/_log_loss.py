"""Log loss and Brier score of predicted class probabilities (sklearn's arguments, no clipping)."""

from __future__ import annotations

from typing import Literal

import numpy as np

from crossentropy._array import ArrayLike
from crossentropy.metrics._validation import FloatArray, IntArray, prepare

__all__ = ["brier_score", "log_loss"]


def true_class_nll(p: FloatArray, index: IntArray, eps: float | None) -> FloatArray:
    """``-log p[i, index[i]]`` per row in float64; a zero probability gives ``inf``."""
    picked = p[np.arange(p.shape[0]), index].astype(np.float64, copy=False)
    if eps is not None:
        picked = np.clip(picked, eps, 1 - eps)
    with np.errstate(divide="ignore"):
        return -np.log(picked)


def weighted_total(values: FloatArray, w: FloatArray | None, normalize: bool) -> np.float64:
    """Sum (or weighted mean when ``normalize``) of ``values``, as a NumPy float64 scalar; zero
    weights drop their rows."""
    if w is None:
        total = np.float64(np.sum(values))
        return total / values.shape[0] if normalize else total
    keep = w > 0
    total = np.float64(np.dot(w[keep], values[keep]))
    if not normalize:
        return total
    wsum = np.float64(np.sum(w))
    if wsum == 0:
        raise ValueError("sample_weight sums to 0; the weighted mean is undefined")
    return total / wsum


def check_eps(eps: float | None) -> float | None:
    if eps is None:
        return None
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 0.5:
        raise ValueError(f"eps must be a number in (0, 0.5) or None; got {eps!r}")
    return float(eps)


def log_loss(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    *,
    labels: ArrayLike | None = None,
    sample_weight: ArrayLike | None = None,
    normalize: bool = True,
    eps: float | None = None,
    renormalize: bool = False,
    sum_tol: float | None = None,
) -> np.float64:
    r"""Log loss (cross-entropy) of predicted probabilities against true labels, in nats.

    .. math::

        L = \frac{\sum_i w_i \, (-\log p_{i, y_i})}{\sum_i w_i}
        \qquad (\text{the plain sum } \textstyle\sum_i w_i (-\log p_{i,y_i})
        \text{ when } \mathtt{normalize=False})

    Arguments and results follow :func:`sklearn.metrics.log_loss`: columns of ``y_pred`` belong to
    the sorted class labels, a 1-D ``y_pred`` holds the probability of the greater of two labels.
    Unlike sklearn, nothing is clipped silently: a zero probability on the true class gives
    ``inf`` unless ``eps`` is passed (then probabilities are clipped to ``[eps, 1 - eps]``), and
    rows that do not sum to 1 raise instead of warning. "Sum to 1" follows the library's one rule
    (:func:`crossentropy.row_sum_tolerance`): rows off by no more than the rounding of
    ``y_pred``'s dtype are accepted and used as given, as sklearn uses them, so the results agree.
    An array carries no decimals: for values rounded to 4 decimals (``np.round(p, 4)``), pass
    ``sum_tol=row_sum_tolerance(p.dtype, k, decimals=4)``.

    Args:
        y_true: labels, shape ``(n,)``; numbers, strings or booleans; or a one-hot indicator
            matrix of shape ``(n, k)``.
        y_pred: probabilities, shape ``(n, k)`` or ``(n,)`` (positive class); any float dtype.
        labels: all class labels in sorted order, needed when ``y_true`` lacks some classes.
            Unlike sklearn, which sorts them silently, an unsorted list raises: the columns of
            ``y_pred`` follow the sorted labels whatever order is passed.
        sample_weight: non-negative weights, shape ``(n,)``.
        normalize: return the weighted mean (True) or the weighted sum (False).
        eps: clip probabilities to ``[eps, 1 - eps]`` before the log; None (default) clips nothing.
        renormalize: divide each row of ``y_pred`` by its sum instead of requiring sums of 1
            (``normalize`` keeps sklearn's meaning: mean or sum).
        sum_tol: how far from 1 a row's sum may be; default:
            :func:`crossentropy.row_sum_tolerance` of ``y_pred``'s dtype.

    Returns:
        The log loss as a NumPy float64 scalar (``inf`` when a true class has probability 0).

    Raises:
        ValueError: probabilities outside [0, 1] or NaN, rows not summing to 1, labels unknown
            to ``labels``, mismatched lengths, a single class without ``labels``.

    Example:
        >>> from crossentropy.metrics import log_loss
        >>> round(float(log_loss(["spam", "ham", "ham", "spam"],
        ...                      [[.1, .9], [.9, .1], [.8, .2], [.35, .65]])), 6)
        0.216162
        >>> float(log_loss([0, 1], [0.0, 0.0]))
        inf
        >>> round(float(log_loss([0, 1], [0.0, 0.0], eps=1e-15)), 3)
        17.269
    """
    eps = check_eps(eps)
    index, p, w, _ = prepare(
        y_true,
        y_pred,
        labels=labels,
        sample_weight=sample_weight,
        renormalize=renormalize,
        sum_tol=sum_tol,
    )
    return weighted_total(true_class_nll(p, index, eps), w, normalize)


def brier_terms(p: FloatArray, index: IntArray) -> FloatArray:
    """``sum_k (p_ik - [k = y_i])^2`` per row, in float64."""
    p64 = p.astype(np.float64, copy=False)
    picked = p64[np.arange(p64.shape[0]), index]
    sq = np.einsum("ij,ij->i", p64, p64)
    # sum_k p_k^2 - 2 p_y + 1, floored at 0 against rounding for perfect predictions
    return np.maximum(sq - 2 * picked + 1, 0.0)


def brier_score(
    y_true: ArrayLike,
    y_prob: ArrayLike,
    *,
    labels: ArrayLike | None = None,
    sample_weight: ArrayLike | None = None,
    scale_by_half: bool | Literal["auto"] = "auto",
    renormalize: bool = False,
    sum_tol: float | None = None,
) -> np.float64:
    r"""Brier score: mean squared distance between predicted probabilities and the one-hot truth.

    .. math::

        B = s \, \frac{\sum_i w_i \sum_k (p_{ik} - [k = y_i])^2}{\sum_i w_i}

    with :math:`s = 1/2` for two classes and 1 otherwise (``scale_by_half="auto"``), so that the
    binary score is :math:`\frac{1}{n}\sum_i (p_i - y_i)^2`, as
    :func:`sklearn.metrics.brier_score_loss` computes it; multiclass follows Brier (1950).
    Columns of ``y_prob`` belong to the sorted labels; a 1-D ``y_prob`` holds the probability of
    the greater of two labels (also for strings, where sklearn would ask for ``pos_label``).

    Args:
        y_true: labels, shape ``(n,)``.
        y_prob: probabilities, shape ``(n, k)`` or ``(n,)``.
        labels: all class labels in sorted order.
        sample_weight: non-negative weights, shape ``(n,)``.
        scale_by_half: multiply by 1/2 (True), not (False), or for two classes only ("auto").
        renormalize: divide each row by its sum instead of requiring sums of 1.
        sum_tol: how far from 1 a row's sum may be; default:
            :func:`crossentropy.row_sum_tolerance` of ``y_pred``'s dtype.

    Returns:
        The Brier score as a NumPy float64 scalar, in [0, 1] for two classes and [0, 2] otherwise.

    References:
        G. W. Brier, "Verification of forecasts expressed in terms of probability",
        Monthly Weather Review 78(1), 1950.

    Example:
        >>> from crossentropy.metrics import brier_score
        >>> round(float(brier_score([0, 1, 1, 0], [0.1, 0.9, 0.8, 0.3])), 4)
        0.0375
    """
    if scale_by_half not in (True, False, "auto"):
        raise ValueError(f"scale_by_half must be True, False or 'auto'; got {scale_by_half!r}")
    index, p, w, _ = prepare(
        y_true,
        y_prob,
        labels=labels,
        sample_weight=sample_weight,
        renormalize=renormalize,
        sum_tol=sum_tol,
        pred_name="y_prob",
    )
    half = p.shape[1] < 3 if scale_by_half == "auto" else bool(scale_by_half)
    score = weighted_total(brier_terms(p, index), w, normalize=True)
    return 0.5 * score if half else score
