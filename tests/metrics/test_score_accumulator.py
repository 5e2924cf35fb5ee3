"""ScoreAccumulator: chunked and merged scoring equals scoring everything at once."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossentropy import row_sum_tolerance
from crossentropy.metrics import (
    ScoreAccumulator,
    brier_score,
    calibration_error,
    log_loss,
    per_class_scores,
)


def data(seed, n, k):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(k, 0.7), size=n)
    y = rng.integers(0, k, size=n)
    w = rng.uniform(0.0, 2.0, size=n)
    return p, y, w


def assert_same(a, b):
    assert a.n == b.n and a.n_zero_prob == b.n_zero_prob
    for name in ("weight", "log_loss", "accuracy", "brier_score", "ece"):
        assert getattr(a, name) == pytest.approx(getattr(b, name), rel=1e-12, abs=1e-13), name
    assert a.calibration.counts.tolist() == b.calibration.counts.tolist()
    assert a.per_class.counts.tolist() == b.per_class.counts.tolist()
    np.testing.assert_allclose(a.per_class.cross_entropy, b.per_class.cross_entropy, rtol=1e-12)
    np.testing.assert_allclose(a.calibration.accuracy, b.calibration.accuracy, rtol=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(2, 80),
    k=st.integers(2, 6),
    cut=st.floats(0.0, 1.0),
    weighted=st.booleans(),
)
def test_merge_equals_concatenation(seed, n, k, cut, weighted):
    p, y, w = data(seed, n, k)
    sw = w if weighted else None
    split = int(cut * n)
    whole = ScoreAccumulator(k)
    whole.update(y, p, sw)
    left, right = ScoreAccumulator(k), ScoreAccumulator(k)
    # an empty chunk is allowed on either side of the cut only through not calling update
    if split > 0:
        left.update(y[:split], p[:split], None if sw is None else sw[:split])
    if split < n:
        right.update(y[split:], p[split:], None if sw is None else sw[split:])
    assert_same(left.merge(right).compute(), whole.compute())


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(10, 60), k=st.integers(2, 5))
def test_accumulator_matches_batch_functions(seed, n, k):
    p, y, w = data(seed, n, k)
    y[:k] = np.arange(k)
    acc = ScoreAccumulator(k, n_bins=10)
    for start in range(0, n, 7):  # uneven chunks
        acc.update(y[start : start + 7], p[start : start + 7], w[start : start + 7])
    s = acc.compute()
    assert s.log_loss == pytest.approx(log_loss(y, p, sample_weight=w), rel=1e-12)
    assert s.brier_score == pytest.approx(brier_score(y, p, sample_weight=w), rel=1e-12)
    cal = calibration_error(y, p, sample_weight=w, n_bins=10)
    assert s.ece == pytest.approx(cal.ece, rel=1e-12, abs=1e-14)
    pc = per_class_scores(y, p, sample_weight=w)
    np.testing.assert_allclose(s.per_class.cross_entropy, pc.cross_entropy, rtol=1e-12)
    np.testing.assert_allclose(s.per_class.accuracy, pc.accuracy, rtol=1e-12)
    assert s.accuracy == pytest.approx(np.sum(w * (p.argmax(1) == y)) / w.sum(), rel=1e-12)
    assert s.log_loss_bits == pytest.approx(s.log_loss / np.log(2))
    assert s.perplexity == pytest.approx(np.exp(s.log_loss))


def test_labels_in_column_order_need_not_be_sorted():
    acc = ScoreAccumulator(["zebra", "ant", "moth"])
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.6, 0.1]])
    acc.update(["zebra", "moth", "zebra"], p)
    s = acc.compute()
    assert s.log_loss == pytest.approx(-(np.log(0.7) + np.log(0.8) + np.log(0.3)) / 3)
    assert s.per_class.labels.tolist() == ["zebra", "ant", "moth"]
    assert s.per_class.counts.tolist() == [2, 0, 1]


def test_zero_probability_counts_and_eps():
    p = np.array([[1.0, 0.0], [0.5, 0.5]])
    acc = ScoreAccumulator(2)
    acc.update([1, 0], p)
    s = acc.compute()
    assert s.log_loss == np.inf and s.n_zero_prob == 1
    clipped = ScoreAccumulator(2, eps=1e-6)
    clipped.update([1, 0], p)
    assert clipped.compute().log_loss == pytest.approx(-(np.log(1e-6) + np.log(0.5)) / 2)


@pytest.mark.parametrize(
    ("classes", "y", "p", "message"),
    [
        (3, [0, 3], np.full((2, 3), 1 / 3), r"y_true\[1\] = 3"),
        (3, [0.0, 1.0], np.full((2, 3), 1 / 3), "integer class indices"),
        (["a", "b"], ["a", "c"], np.full((2, 2), 0.5), r"y_true\[1\] = 'c'"),
        (3, [0, 1], np.full((2, 2), 0.5), "2 columns"),
        (2, [0, 1], [[0.5, 0.6], [0.5, 0.5]], "row 0 sums to"),
        (2, [0], [[0.5, 0.5], [0.5, 0.5]], "different numbers"),
    ],
)
def test_update_rejects_bad_chunks(classes, y, p, message):
    with pytest.raises((ValueError, TypeError), match=message):
        ScoreAccumulator(classes).update(y, p)


def test_merge_and_compute_errors():
    with pytest.raises(ValueError, match="no samples"):
        ScoreAccumulator(2).compute()
    with pytest.raises(ValueError, match="cannot merge"):
        ScoreAccumulator(2).merge(ScoreAccumulator(3))
    with pytest.raises(ValueError, match="cannot merge"):
        ScoreAccumulator(2, n_bins=5).merge(ScoreAccumulator(2))


def test_empty_chunks_add_nothing():
    p, y, _ = data(3, 20, 3)
    acc, ref = ScoreAccumulator(3), ScoreAccumulator(3)
    acc.update(y[:0], p[:0])
    acc.update(y, p)
    acc.update([], np.empty((0, 3)))
    ref.update(y, p)
    assert_same(acc.compute(), ref.compute())


def test_chunks_follow_the_one_tolerance_rule():
    p, y, _ = data(12, 200, 5)
    rounded = np.round(p, 4)
    # each chunk is judged by its dtype: a float32 chunk passes where the float64 rule refuses
    single = p.astype(np.float32)
    acc = ScoreAccumulator(5)
    acc.update(y[:100], single[:100])
    assert np.abs(single[:100].astype(np.float64).sum(axis=1) - 1).max() > 1e-12
    with pytest.raises(ValueError, match=r"of dtype float64\)"):
        acc.update(y[100:], rounded[100:])  # an array of rounded values is float64 data
    declared = ScoreAccumulator(5, sum_tol=row_sum_tolerance(np.float64, 5, decimals=4))
    declared.update(y[:100], rounded[:100])
    declared.update(y[100:], rounded[100:].astype(np.float32))
    ref = log_loss(y, rounded, labels=range(5), sum_tol=row_sum_tolerance(np.float64, 5, 4))
    assert declared.compute().log_loss == pytest.approx(ref, rel=1e-6)
    off = rounded[:3].copy()
    off[1] = (0.5, 0.49, 0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match=r"row 1 sums to 0\.99.*renormalize=True.*sum_tol="):
        ScoreAccumulator(5).update(y[:3], off)
    ScoreAccumulator(5, sum_tol=0.02).update(y[:3], off)
    ScoreAccumulator(5, renormalize=True).update(y[:3], off)
    with pytest.raises(ValueError, match="sum_tol must be a non-negative"):
        ScoreAccumulator(5, sum_tol=-1.0)
    with pytest.raises(TypeError, match="renormalize must be True or False"):
        ScoreAccumulator(5, renormalize="yes")
