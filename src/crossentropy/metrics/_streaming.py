"""Streaming scores: sufficient statistics updated chunk by chunk and merged across workers."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from crossentropy._tolerance import check_sum_tol
from crossentropy.metrics._calibration import (
    Calibration,
    PerClassScores,
    bin_sums,
    check_bins,
    class_sums,
    finish_calibration,
    finish_per_class,
    top_label,
    uniform_edges,
)
from crossentropy.metrics._log_loss import brier_terms, check_eps, true_class_nll
from crossentropy.metrics._validation import (
    IntArray,
    check_prob_range,
    check_renormalize,
    check_rows_sum_to_one,
    check_sample_weight,
    float_probs,
    one_dimensional_error,
    renormalize_rows,
    to_numpy,
    two_columns,
)

__all__ = ["ScoreAccumulator", "Scores"]


@dataclass(frozen=True)
class Scores:
    """Everything :class:`ScoreAccumulator` reports, computed from its sums.

    Means are weighted by ``sample_weight`` when one was given and are over samples otherwise.
    """

    n: int
    """Number of samples scored."""
    weight: np.float64
    """Total sample weight (equal to ``n`` without weights)."""
    log_loss: np.float64
    """Mean ``-log p(true class)`` in nats (``inf`` if a true class had probability 0)."""
    accuracy: np.float64
    """Fraction of samples whose most probable class is the true one."""
    brier_score: np.float64
    """Brier score (halved for two classes, as :func:`brier_score` with ``scale_by_half="auto"``)."""
    n_zero_prob: int
    """Number of samples whose true class had probability 0 (each makes the log loss infinite)."""
    calibration: Calibration
    """Top-label ECE with its reliability table (uniform bins)."""
    per_class: PerClassScores
    """Per-true-class count, cross-entropy and accuracy."""

    @property
    def ece(self) -> np.float64:
        """Expected calibration error (``calibration.ece``)."""
        return self.calibration.ece

    @property
    def log_loss_bits(self) -> np.float64:
        """Log loss in bits."""
        return np.float64(self.log_loss / math.log(2))

    @property
    def perplexity(self) -> np.float64:
        """``exp(log_loss)``: the effective number of equally likely classes."""
        return np.float64(math.exp(self.log_loss) if self.log_loss < 709.0 else math.inf)


class ScoreAccumulator:
    r"""Accumulates log loss, accuracy, Brier score, calibration bins and per-class sums over chunks.

    Every score is a ratio of sums over samples, so the accumulator keeps only those sums
    (memory independent of the number of samples): for a chunk of true classes :math:`y_i` and
    probability rows :math:`p_i` it adds :math:`\sum_i w_i`, :math:`\sum_i -w_i \log p_{i y_i}`,
    :math:`\sum_i w_i [\arg\max p_i = y_i]`, :math:`\sum_i w_i \lVert p_i - e_{y_i}\rVert^2`, and
    the same per confidence bin and per true class. Two accumulators over different data merge
    by adding their sums, which equals scoring the concatenated data (up to float rounding).

    Args:
        classes: the number of classes ``k`` (then ``y_true`` holds integer indices ``0..k-1``),
            or the class labels in the order of the probability columns (then ``y_true`` holds
            those labels). Columns need not be sorted here, unlike :func:`log_loss`.
        n_bins: number of equal-width confidence bins for the ECE (default 15).
        eps: clip probabilities to ``[eps, 1 - eps]`` before the log (default: no clipping).
        renormalize: divide each row by its sum instead of requiring sums of 1.
        sum_tol: how far from 1 a row's sum may be; default:
            :func:`crossentropy.row_sum_tolerance` of the dtype each chunk comes in.

    Example:
        >>> from crossentropy.metrics import ScoreAccumulator
        >>> a = ScoreAccumulator(["cat", "dog"])
        >>> a.update(["cat", "dog"], [[0.75, 0.25], [0.5, 0.5]])
        >>> b = ScoreAccumulator(["cat", "dog"])
        >>> b.update(["dog"], [[0.25, 0.75]])
        >>> s = a.merge(b).compute()
        >>> s.n, round(float(s.log_loss), 4), round(float(s.accuracy), 4)
        (3, 0.4228, 0.6667)
    """

    def __init__(
        self,
        classes: int | Any,
        *,
        n_bins: int = 15,
        eps: float | None = None,
        renormalize: bool = False,
        sum_tol: float | None = None,
    ) -> None:
        if isinstance(classes, (int, np.integer)) and not isinstance(classes, bool):
            if classes < 2:
                raise ValueError(f"classes must be at least 2; got {classes}")
            self.labels: np.ndarray = np.arange(int(classes))
            self._by_index = True
        else:
            labels = to_numpy(classes, "classes")
            if labels.ndim != 1 or labels.shape[0] < 2:
                raise ValueError(
                    f"classes must be an int or a 1-D sequence of at least two labels; got "
                    f"shape {labels.shape}"
                )
            if np.unique(labels).shape[0] != labels.shape[0]:
                raise ValueError(f"classes must not contain duplicates; got {labels.tolist()}")
            self.labels = labels
            self._by_index = False
            self._order = np.argsort(labels, kind="stable")
            self._sorted = labels[self._order]
        check_bins(n_bins, "uniform")
        self.n_bins = int(n_bins)
        self.eps = check_eps(eps)
        check_renormalize(renormalize)
        self.renormalize = bool(renormalize)
        self.sum_tol = check_sum_tol(sum_tol)
        k = self.labels.shape[0]
        self.edges = uniform_edges(self.n_bins)
        self.n = 0
        self.n_zero_prob = 0
        self.weight = 0.0
        self.nll_sum = 0.0
        self.correct_sum = 0.0
        self.brier_sum = 0.0
        self.bin_count = np.zeros(self.n_bins, np.int64)
        self.bin_weight = np.zeros(self.n_bins)
        self.bin_conf = np.zeros(self.n_bins)
        self.bin_correct = np.zeros(self.n_bins)
        self.class_count = np.zeros(k, np.int64)
        self.class_weight = np.zeros(k)
        self.class_nll = np.zeros(k)
        self.class_correct = np.zeros(k)

    @property
    def n_classes(self) -> int:
        return int(self.labels.shape[0])

    def _encode(self, y_true: Any) -> IntArray:
        y = to_numpy(y_true, "y_true")
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1:
            raise ValueError(f"y_true must have shape (n_samples,); got shape {y.shape}")
        k = self.n_classes
        if self._by_index:
            if y.dtype.kind not in "iu":
                raise TypeError(
                    f"y_true must hold integer class indices when classes is an int; got dtype "
                    f"{y.dtype}"
                )
            bad = (y < 0) | (y >= k)
            if np.any(bad):
                i = int(np.argmax(bad))
                raise ValueError(f"y_true[{i}] = {int(y[i])} is not a class index in [0, {k})")
            return y.astype(np.intp, copy=False)
        try:
            pos = np.minimum(np.searchsorted(self._sorted, y), k - 1)
            unknown = self._sorted[pos] != y
        except TypeError:
            raise TypeError(
                f"y_true (dtype {y.dtype}) cannot be matched with the classes (dtype "
                f"{self.labels.dtype})"
            ) from None
        if np.any(unknown):
            i = int(np.argmax(unknown))
            raise ValueError(
                f"y_true[{i}] = {y[i].item()!r} is not one of the classes {self.labels.tolist()}"
            )
        return self._order[pos].astype(np.intp, copy=False)

    def update(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        """Add a chunk: labels ``(m,)`` and probabilities ``(m, k)`` (or ``(m,)`` for two classes).

        An empty chunk (``m = 0``, e.g. the last slice of a stream) adds nothing.
        """
        if np.size(y_true) == 0 and np.size(y_pred) == 0:
            return
        p, stored = float_probs(y_pred, "y_pred")
        if p.ndim == 1 and self.n_classes > 2:
            raise one_dimensional_error(
                p, "y_pred", "the accumulator has", self.labels, "its classes"
            )
        index = self._encode(y_true)
        if index.shape[0] != p.shape[0]:
            raise ValueError(
                f"y_true and y_pred have different numbers of samples: {index.shape[0]} and "
                f"{p.shape[0]}"
            )
        check_prob_range(p, "y_pred")
        p2 = two_columns(p)
        if p2.shape[1] != self.n_classes:
            raise ValueError(
                f"y_pred has {p2.shape[1]} columns; the accumulator has {self.n_classes} classes"
            )
        if self.renormalize:
            p2 = renormalize_rows(p2, "y_pred")
        elif p.ndim == 2 and p.shape[1] > 1:
            check_rows_sum_to_one(p2, "y_pred", self.sum_tol, stored)
        w = check_sample_weight(sample_weight, p2.shape[0])
        self._add(index, p2, w)

    def _add(self, index: IntArray, p: Any, w: Any) -> None:
        """Add validated class indices, 2-D probabilities and optional weights."""
        nll = true_class_nll(p, index, self.eps)
        conf, correct = top_label(p, index)
        brier = brier_terms(p, index)
        k = self.n_classes
        count, cw, cnll, ccorrect = class_sums(index, nll, correct, w, k)
        bcount, bw, bconf, bcorrect = bin_sums(conf, correct, w, self.edges)
        self.n += int(index.shape[0])
        self.n_zero_prob += int(
            np.count_nonzero(np.isinf(nll) if w is None else np.isinf(nll) & (w > 0))
        )
        self.weight += float(np.sum(cw))
        self.nll_sum += float(np.sum(cnll))
        self.correct_sum += float(np.sum(ccorrect))
        self.brier_sum += float(np.sum(brier) if w is None else np.dot(w, brier))
        self.class_count += count
        self.class_weight += cw
        self.class_nll += cnll
        self.class_correct += ccorrect
        self.bin_count += bcount
        self.bin_weight += bw
        self.bin_conf += bconf
        self.bin_correct += bcorrect

    def merge(self, other: ScoreAccumulator) -> ScoreAccumulator:
        """Add ``other``'s sums into this accumulator and return it (``other`` is unchanged)."""
        if not isinstance(other, ScoreAccumulator):
            raise TypeError(f"can only merge a ScoreAccumulator; got {type(other).__name__}")
        same = (
            self.n_bins == other.n_bins
            and self.eps == other.eps
            and self.labels.shape == other.labels.shape
            and bool(np.all(self.labels == other.labels))
        )
        if not same:
            raise ValueError(
                "cannot merge accumulators with different classes, n_bins or eps: "
                f"{self.labels.tolist()}/{self.n_bins}/{self.eps} and "
                f"{other.labels.tolist()}/{other.n_bins}/{other.eps}"
            )
        self.n += other.n
        self.n_zero_prob += other.n_zero_prob
        self.weight += other.weight
        self.nll_sum += other.nll_sum
        self.correct_sum += other.correct_sum
        self.brier_sum += other.brier_sum
        for name in (
            "class_count",
            "class_weight",
            "class_nll",
            "class_correct",
            "bin_count",
            "bin_weight",
            "bin_conf",
            "bin_correct",
        ):
            getattr(self, name).__iadd__(getattr(other, name))
        return self

    def compute(self) -> Scores:
        """The scores of everything added so far; raises if nothing (or only zero weight) was."""
        if self.n == 0 or self.weight <= 0:
            raise ValueError("no samples (or only zero-weight samples) to score")
        scale = 0.5 if self.n_classes < 3 else 1.0
        return Scores(
            n=self.n,
            weight=np.float64(self.weight),
            log_loss=np.float64(self.nll_sum / self.weight),
            accuracy=np.float64(self.correct_sum / self.weight),
            brier_score=np.float64(scale * self.brier_sum / self.weight),
            n_zero_prob=self.n_zero_prob,
            calibration=finish_calibration(
                self.edges.copy(),
                self.bin_count.copy(),
                self.bin_weight.copy(),
                self.bin_conf.copy(),
                self.bin_correct.copy(),
            ),
            per_class=finish_per_class(
                self.labels.copy(),
                self.class_count.copy(),
                self.class_weight.copy(),
                self.class_nll.copy(),
                self.class_correct.copy(),
            ),
        )
