"""Expected calibration error with its reliability table, and the per-class breakdown."""

from __future__ import annotations

from typing import Literal, NamedTuple

import numpy as np
import numpy.typing as npt

from crossentropy._array import ArrayLike
from crossentropy.metrics._validation import FloatArray, IntArray, prepare

Int64Array = npt.NDArray[np.int64]

__all__ = ["Calibration", "PerClassScores", "calibration_error", "per_class_scores"]

STRATEGIES = ("uniform", "quantile")


class Calibration(NamedTuple):
    """Expected calibration error and the reliability table it is computed from.

    Bin ``b`` holds the samples whose top-label confidence lies in
    ``(bin_edges[b], bin_edges[b + 1]]`` (the first bin also holds ``bin_edges[0]``).
    ``confidence`` and ``accuracy`` are (weighted) means over the bin and NaN for empty bins.
    """

    ece: np.float64
    """Expected calibration error: bin-weighted mean of ``|accuracy - confidence|``."""
    mce: np.float64
    """Maximum calibration error: the largest ``|accuracy - confidence|`` over non-empty bins."""
    bin_edges: FloatArray
    """Bin edges, float64, shape ``(n_bins + 1,)``."""
    counts: Int64Array
    """Number of samples per bin, int64, shape ``(n_bins,)``."""
    confidence: FloatArray
    """Mean top-label confidence per bin, float64, shape ``(n_bins,)``."""
    accuracy: FloatArray
    """Fraction of correct top-label predictions per bin, float64, shape ``(n_bins,)``."""


class PerClassScores(NamedTuple):
    """Scores of the samples grouped by their true class, one entry per class (column order)."""

    labels: np.ndarray
    """Class labels, shape ``(k,)``."""
    counts: Int64Array
    """Number of samples whose true class is this one, int64, shape ``(k,)``."""
    cross_entropy: FloatArray
    """Mean ``-log p(true class)`` in nats over those samples (NaN when there are none)."""
    accuracy: FloatArray
    """Fraction of those samples whose top prediction is the true class (the recall)."""


def uniform_edges(n_bins: int) -> FloatArray:
    return np.linspace(0.0, 1.0, n_bins + 1)


def check_bins(n_bins: int, strategy: str) -> None:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer; got {n_bins!r}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be 'uniform' or 'quantile'; got {strategy!r}")


def top_label(p: FloatArray, index: IntArray) -> tuple[FloatArray, FloatArray]:
    """Top-label confidence (float64) and correctness (1.0 or 0.0) of each row."""
    pred = np.argmax(p, axis=1)
    conf = p[np.arange(p.shape[0]), pred].astype(np.float64)
    return conf, (pred == index).astype(np.float64)


def bin_index(conf: FloatArray, edges: FloatArray) -> IntArray:
    """Right-closed bins ``(e_b, e_{b+1}]``; values at or below ``e_0`` go to bin 0."""
    b = np.searchsorted(edges, conf, side="left") - 1
    return np.clip(b, 0, edges.shape[0] - 2).astype(np.intp)


def bin_sums(
    conf: FloatArray, correct: FloatArray, w: FloatArray | None, edges: FloatArray
) -> tuple[Int64Array, FloatArray, FloatArray, FloatArray]:
    """Per-bin count, weight, weighted confidence sum and weighted correct sum."""
    n_bins = edges.shape[0] - 1
    b = bin_index(conf, edges)
    counts = np.bincount(b, minlength=n_bins).astype(np.int64)
    ww = np.ones_like(conf) if w is None else w
    weight = np.bincount(b, weights=ww, minlength=n_bins).astype(np.float64)
    conf_sum = np.bincount(b, weights=ww * conf, minlength=n_bins).astype(np.float64)
    correct_sum = np.bincount(b, weights=ww * correct, minlength=n_bins).astype(np.float64)
    return counts, weight, conf_sum, correct_sum


def finish_calibration(
    edges: FloatArray,
    counts: Int64Array,
    weight: FloatArray,
    conf_sum: FloatArray,
    correct_sum: FloatArray,
) -> Calibration:
    total = np.float64(np.sum(weight))
    if total <= 0:
        raise ValueError("calibration error of zero samples (or zero total weight) is undefined")
    nonempty = weight > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.where(nonempty, conf_sum / np.where(nonempty, weight, 1.0), np.nan)
        accuracy = np.where(nonempty, correct_sum / np.where(nonempty, weight, 1.0), np.nan)
    gaps = np.abs(correct_sum - conf_sum)
    ece = np.float64(np.sum(gaps)) / total
    mce = np.float64(np.max(np.abs(accuracy - confidence)[nonempty]))
    return Calibration(ece, mce, edges, counts, confidence, accuracy)


def calibration_error(
    y_true: ArrayLike,
    y_prob: ArrayLike,
    *,
    labels: ArrayLike | None = None,
    sample_weight: ArrayLike | None = None,
    n_bins: int = 15,
    strategy: Literal["uniform", "quantile"] = "uniform",
    renormalize: bool = False,
    sum_tol: float | None = None,
) -> Calibration:
    r"""Expected calibration error (ECE) of the top-label confidence, with the reliability table.

    Each sample's confidence is its largest predicted probability :math:`c_i = \max_k p_{ik}`,
    correct when that class is the true one. Samples are grouped into bins :math:`B_b` of
    confidence, and

    .. math::

        \mathrm{ECE} = \sum_b \frac{|B_b|}{n}\,\big|\mathrm{acc}(B_b) - \mathrm{conf}(B_b)\big|,
        \qquad \mathrm{MCE} = \max_b \big|\mathrm{acc}(B_b) - \mathrm{conf}(B_b)\big|

    (with sample weights, :math:`|B_b|` and the means are weighted). ``strategy="uniform"`` uses
    ``n_bins`` equal-width bins of [0, 1]; ``"quantile"`` puts bin edges at confidence quantiles
    so the bins hold about equally many samples. A 1-D ``y_prob`` is the probability of the
    greater of two labels and is scored as the two columns ``[1 - p, p]``.

    Args:
        y_true: labels, shape ``(n,)``.
        y_prob: probabilities, shape ``(n, k)`` or ``(n,)``; columns in sorted label order.
        labels: all class labels in sorted order.
        sample_weight: non-negative weights, shape ``(n,)``.
        n_bins: number of bins (default 15, as in Guo et al.).
        strategy: ``"uniform"`` or ``"quantile"`` bin edges.
        renormalize: divide each row by its sum instead of requiring sums of 1.
        sum_tol: how far from 1 a row's sum may be; default:
            :func:`crossentropy.row_sum_tolerance` of ``y_pred``'s dtype.

    Returns:
        A :class:`Calibration` named tuple ``(ece, mce, bin_edges, counts, confidence,
        accuracy)``.

    References:
        C. Guo, G. Pleiss, Y. Sun, K. Q. Weinberger, "On Calibration of Modern Neural Networks",
        ICML 2017. M. P. Naeini, G. Cooper, M. Hauskrecht, "Obtaining Well Calibrated
        Probabilities Using Bayesian Binning", AAAI 2015.

    Example:
        >>> from crossentropy.metrics import calibration_error
        >>> cal = calibration_error([0, 1, 1, 0], [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3]],
        ...                         n_bins=5)
        >>> round(float(cal.ece), 4)
        0.3
        >>> cal.counts.tolist()
        [0, 0, 1, 2, 1]
    """
    check_bins(n_bins, strategy)
    index, p, w, _ = prepare(
        y_true,
        y_prob,
        labels=labels,
        sample_weight=sample_weight,
        renormalize=renormalize,
        sum_tol=sum_tol,
        pred_name="y_prob",
    )
    conf, correct = top_label(p, index)
    if strategy == "uniform":
        edges = uniform_edges(int(n_bins))
    else:
        edges = np.quantile(conf, np.linspace(0.0, 1.0, int(n_bins) + 1))
        edges[0], edges[-1] = 0.0, 1.0
    return finish_calibration(edges, *bin_sums(conf, correct, w, edges))


def class_sums(
    index: IntArray, nll: FloatArray, correct: FloatArray, w: FloatArray | None, k: int
) -> tuple[Int64Array, FloatArray, FloatArray, FloatArray]:
    """Per true class: count, weight, weighted NLL sum and weighted correct sum."""
    count = np.bincount(index, minlength=k).astype(np.int64)
    ww = np.ones_like(nll) if w is None else w
    weight = np.bincount(index, weights=ww, minlength=k).astype(np.float64)
    # a zero weight must drop an infinite NLL rather than turn it into NaN
    wn = np.where(ww > 0, ww * np.where(ww > 0, nll, 0.0), 0.0) if w is not None else nll
    nll_sum = np.bincount(index, weights=wn, minlength=k).astype(np.float64)
    correct_sum = np.bincount(index, weights=ww * correct, minlength=k).astype(np.float64)
    return count, weight, nll_sum, correct_sum


def finish_per_class(
    labels: np.ndarray,
    count: Int64Array,
    weight: FloatArray,
    nll_sum: FloatArray,
    correct_sum: FloatArray,
) -> PerClassScores:
    has = weight > 0
    safe = np.where(has, weight, 1.0)
    ce = np.where(has, nll_sum / safe, np.nan)
    acc = np.where(has, correct_sum / safe, np.nan)
    return PerClassScores(labels, count, ce, acc)


def per_class_scores(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    *,
    labels: ArrayLike | None = None,
    sample_weight: ArrayLike | None = None,
    eps: float | None = None,
    renormalize: bool = False,
    sum_tol: float | None = None,
) -> PerClassScores:
    r"""Cross-entropy, count and accuracy of the samples of each true class.

    For class :math:`c` with samples :math:`S_c = \{i : y_i = c\}`:

    .. math::

        \mathrm{CE}_c = \frac{1}{|S_c|}\sum_{i \in S_c} -\log p_{ic}, \qquad
        \mathrm{acc}_c = \frac{1}{|S_c|}\,\big|\{i \in S_c : \arg\max_k p_{ik} = c\}\big|

    (weighted means with ``sample_weight``). The overall log loss is the count-weighted mean of
    the :math:`\mathrm{CE}_c`. Classes without samples get NaN.

    Args:
        y_true: labels, shape ``(n,)``.
        y_pred: probabilities, shape ``(n, k)`` or ``(n,)``; columns in sorted label order.
        labels: all class labels in sorted order.
        sample_weight: non-negative weights, shape ``(n,)``.
        eps: clip probabilities to ``[eps, 1 - eps]`` before the log (default: no clipping).
        renormalize: divide each row by its sum instead of requiring sums of 1.
        sum_tol: how far from 1 a row's sum may be; default:
            :func:`crossentropy.row_sum_tolerance` of ``y_pred``'s dtype.

    Returns:
        A :class:`PerClassScores` named tuple ``(labels, counts, cross_entropy, accuracy)``.

    Example:
        >>> from crossentropy.metrics import per_class_scores
        >>> s = per_class_scores(["a", "b", "b"], [[0.5, 0.5], [0.25, 0.75], [0.75, 0.25]])
        >>> s.labels.tolist(), s.counts.tolist(), [round(float(x), 4) for x in s.cross_entropy]
        (['a', 'b'], [1, 2], [0.6931, 0.8370])
    """
    from crossentropy.metrics._log_loss import check_eps, true_class_nll

    eps = check_eps(eps)
    index, p, w, classes = prepare(
        y_true,
        y_pred,
        labels=labels,
        sample_weight=sample_weight,
        renormalize=renormalize,
        sum_tol=sum_tol,
    )
    nll = true_class_nll(p, index, eps)
    _, correct = top_label(p, index)
    return finish_per_class(classes, *class_sums(index, nll, correct, w, p.shape[1]))
