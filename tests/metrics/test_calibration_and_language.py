"""calibration_error, per_class_scores and the language-model summaries against direct loops."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossentropy.metrics import (
    Calibration,
    PerClassScores,
    bits_per_byte,
    bits_per_token,
    calibration_error,
    per_class_scores,
    perplexity,
)

SETTINGS = settings(max_examples=30, deadline=None)


def loop_ece(y, p, w, edges):
    """Reference ECE written as a plain loop over bins (Guo et al. 2017, right-closed bins)."""
    conf = p.max(axis=1)
    pred = p.argmax(axis=1)
    total, gaps, counts = w.sum(), 0.0, []
    for b in range(len(edges) - 1):
        lo, hi = edges[b], edges[b + 1]
        inside = (conf > lo) & (conf <= hi) if b > 0 else (conf <= hi)
        counts.append(int(inside.sum()))
        if w[inside].sum() > 0:
            wb = w[inside]
            acc = np.sum(wb * (pred[inside] == y[inside])) / wb.sum()
            cb = np.sum(wb * conf[inside]) / wb.sum()
            gaps += wb.sum() / total * abs(acc - cb)
    return gaps, counts


@SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 60),
    k=st.integers(2, 5),
    n_bins=st.integers(1, 20),
    weighted=st.booleans(),
)
def test_uniform_ece_matches_loop(seed, n, k, n_bins, weighted):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(k, 0.5), size=n)
    y = rng.integers(0, k, size=n)
    w = rng.uniform(0.1, 2.0, size=n) if weighted else np.ones(n)
    cal = calibration_error(
        y, p, labels=np.arange(k), sample_weight=w if weighted else None, n_bins=n_bins
    )
    ref, counts = loop_ece(y, p, w, np.linspace(0, 1, n_bins + 1))
    assert isinstance(cal, Calibration)
    assert cal.ece == pytest.approx(ref, rel=1e-10, abs=1e-14)
    assert cal.counts.tolist() == counts
    assert cal.counts.dtype == np.int64 and cal.bin_edges.shape == (n_bins + 1,)
    nonempty = cal.counts > 0
    assert np.all(np.isnan(cal.accuracy[~nonempty]))
    assert cal.mce >= cal.ece - 1e-12
    assert np.all((cal.confidence[nonempty] >= 1 / k - 1e-12) & (cal.confidence[nonempty] <= 1))


def test_quantile_bins_hold_equal_counts():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(3), size=1000)
    y = rng.integers(0, 3, size=1000)
    cal = calibration_error(y, p, n_bins=10, strategy="quantile")
    assert cal.counts.tolist() == [100] * 10
    ref, _ = loop_ece(y, p, np.ones(1000), cal.bin_edges)
    assert cal.ece == pytest.approx(ref, rel=1e-12)


def test_perfectly_calibrated_bins_have_zero_gap():
    # every sample in the 0.75 bin, 3 of 4 correct: accuracy equals confidence
    p = np.array([[0.75, 0.25]] * 4)
    y = np.array([0, 0, 0, 1])
    cal = calibration_error(y, p, n_bins=4)
    assert cal.ece == pytest.approx(0.0, abs=1e-15)
    assert cal.counts.tolist() == [0, 0, 4, 0]


def test_binary_1d_is_scored_as_two_columns():
    p = np.array([0.9, 0.2, 0.6, 0.4])
    y = np.array([1, 0, 0, 1])
    a = calibration_error(y, p, n_bins=5)
    b = calibration_error(y, np.stack([1 - p, p], axis=1), n_bins=5)
    assert a.ece == b.ece and a.counts.tolist() == b.counts.tolist()


@pytest.mark.parametrize(
    ("kwargs", "message"), [({"n_bins": 0}, "n_bins"), ({"strategy": "kmeans"}, "strategy")]
)
def test_calibration_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        calibration_error([0, 1], [[0.5, 0.5], [0.5, 0.5]], **kwargs)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 50), k=st.integers(2, 5))
def test_per_class_matches_loop_and_recombines_to_log_loss(seed, n, k):
    from crossentropy.metrics import log_loss

    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(k), size=n)
    y = rng.integers(0, k, size=n)
    s = per_class_scores(y, p, labels=np.arange(k))
    assert isinstance(s, PerClassScores)
    for c in range(k):
        rows = y == c
        assert s.counts[c] == rows.sum()
        if rows.any():
            assert s.cross_entropy[c] == pytest.approx(-np.mean(np.log(p[rows, c])), rel=1e-12)
            assert s.accuracy[c] == pytest.approx(np.mean(p[rows].argmax(axis=1) == c))
        else:
            assert np.isnan(s.cross_entropy[c]) and np.isnan(s.accuracy[c])
    present = s.counts > 0
    recombined = np.sum(s.counts[present] * s.cross_entropy[present]) / n
    assert recombined == pytest.approx(log_loss(y, p, labels=np.arange(k)), rel=1e-12)


def test_per_class_string_labels_keep_sorted_order():
    s = per_class_scores(["dog", "cat", "dog"], [[0.2, 0.8], [0.9, 0.1], [0.6, 0.4]])
    assert s.labels.tolist() == ["cat", "dog"]
    assert s.counts.tolist() == [1, 2]
    assert s.accuracy.tolist() == [1.0, 0.5]


@SETTINGS
@given(
    logp=st.lists(st.floats(-30.0, 0.0), min_size=1, max_size=50),
    n_bytes=st.integers(1, 1000),
)
def test_language_metrics_agree_with_definitions(logp, n_bytes):
    nll = -np.asarray(logp)
    mean = float(np.mean(nll))
    assert perplexity(nll) == pytest.approx(math.exp(mean), rel=1e-12)
    assert bits_per_token(nll) == pytest.approx(mean / math.log(2), rel=1e-12, abs=1e-300)
    assert bits_per_byte(nll, n_bytes) == pytest.approx(
        nll.sum() / n_bytes / math.log(2), rel=1e-12, abs=1e-300
    )
    # total with a count, or the mean alone, give the same perplexity
    assert perplexity(nll.sum(), n_tokens=nll.size) == pytest.approx(perplexity(mean), rel=1e-12)
    assert math.log2(perplexity(nll)) == pytest.approx(bits_per_token(nll), rel=1e-9, abs=1e-12)


def test_language_metrics_reject_log_probs_and_bad_counts():
    with pytest.raises(ValueError, match="Pass -log_probs"):
        perplexity(np.log([0.5, 0.25]))
    with pytest.raises(ValueError, match="n_tokens"):
        perplexity(3.0, n_tokens=0)
    with pytest.raises(ValueError, match="n_bytes"):
        bits_per_byte(3.0, n_bytes=-1)
    with pytest.raises(ValueError, match="NaN"):
        bits_per_token([1.0, float("nan")])
    assert perplexity([np.inf, 1.0]) == math.inf


def test_zero_weight_on_an_infinite_loss_is_quiet_and_dropped():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = per_class_scores([0, 1], [[0.0, 1.0], [0.5, 0.5]], sample_weight=[0.0, 1.0])
    # class 0's only sample weighs nothing: no weighted mean (NaN, like an empty class), no inf
    assert np.isnan(table.cross_entropy[0])
    assert table.cross_entropy[1] == pytest.approx(np.log(2.0), rel=1e-15)
