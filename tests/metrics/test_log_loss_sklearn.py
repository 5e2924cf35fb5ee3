"""log_loss and brier_score against sklearn on random inputs, and the places where we differ."""

import warnings

import numpy as np
import pytest
import sklearn.metrics as skm
from hypothesis import given, settings
from hypothesis import strategies as st

from crossentropy import row_sum_tolerance
from crossentropy.metrics import brier_score, log_loss

SETTINGS = settings(max_examples=40, deadline=None)


def random_case(seed: int, n: int, k: int, dtype=np.float64):
    rng = np.random.default_rng(seed)
    # concentrations below 1 give probabilities near 0 and 1, where clipping would show
    p = rng.dirichlet(np.full(k, rng.choice([0.3, 1.0, 5.0])), size=n).astype(dtype)
    y = rng.integers(0, k, size=n)
    y[:k] = np.arange(k)[: min(k, n)]  # every class present so sklearn infers all labels
    w = rng.uniform(0.0, 3.0, size=n)
    return p, y, w


@SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(6, 40),
    k=st.integers(2, 6),
    normalize=st.booleans(),
    weighted=st.booleans(),
)
def test_multiclass_matches_sklearn(seed, n, k, normalize, weighted):
    p, y, w = random_case(seed, n, k)
    sw = w if weighted else None
    ours = log_loss(y, p, sample_weight=sw, normalize=normalize)
    ref = skm.log_loss(y, p, sample_weight=sw, normalize=normalize)
    assert ours == pytest.approx(ref, rel=1e-12, abs=1e-12)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 40))
def test_binary_1d_matches_sklearn(seed, n):
    rng = np.random.default_rng(seed)
    p = rng.uniform(0, 1, size=n)
    y = rng.choice(np.array([-1, 1]), size=n)
    y[:2] = [-1, 1]
    assert log_loss(y, p) == pytest.approx(skm.log_loss(y, p), rel=1e-12, abs=1e-12)
    # (n, 1) is read the same way as (n,)
    assert log_loss(y, p[:, None]) == pytest.approx(skm.log_loss(y, p), rel=1e-12)
    assert brier_score(y, p) == pytest.approx(skm.brier_score_loss(y, p), rel=1e-12, abs=1e-15)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(3, 30))
def test_string_labels_and_missing_class_via_labels(seed, n):
    rng = np.random.default_rng(seed)
    names = np.array(["bird", "cat", "dog", "eel"])
    p = rng.dirichlet(np.ones(4), size=n)
    # "eel" never occurs, so labels= must name it
    y = names[rng.integers(0, 3, size=n)]
    ours = log_loss(y, p, labels=names)
    ref = skm.log_loss(y, p, labels=names)
    assert ours == pytest.approx(ref, rel=1e-12, abs=1e-12)
    # without labels= the classes come from y_true, which cannot explain 4 columns
    with pytest.raises(ValueError, match="4 columns but y_true gives 2 classes"):
        log_loss(["cat", "dog"], p[:2])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float32_input(dtype):
    p, y, _ = random_case(3, 50, 5, dtype)
    p = p / p.sum(axis=1, keepdims=True)
    ours = log_loss(y, p)
    ref = skm.log_loss(y, p)
    tol = 1e-6 if dtype == np.float32 else 1e-12
    assert ours == pytest.approx(ref, rel=tol)


def test_sklearn_docstring_example_and_torch_tensors():
    torch = pytest.importorskip("torch")
    p = [[0.1, 0.9], [0.9, 0.1], [0.8, 0.2], [0.35, 0.65]]
    y = ["spam", "ham", "ham", "spam"]
    assert log_loss(y, p) == pytest.approx(skm.log_loss(y, p), rel=1e-12)
    assert log_loss(torch.tensor([1, 0, 0, 1]), torch.tensor(p, dtype=torch.float64)) == (
        pytest.approx(skm.log_loss(y, p), rel=1e-12)
    )


def test_array_api_strict_input():
    xps = pytest.importorskip("array_api_strict")
    p, y, _ = random_case(5, 12, 3)
    ours = log_loss(xps.asarray(y), xps.asarray(p))
    assert ours == pytest.approx(skm.log_loss(y, p), rel=1e-12)


def test_zero_probability_gives_inf_not_clipped():
    y = [0, 1, 1]
    p = [[0.5, 0.5], [1.0, 0.0], [0.2, 0.8]]
    assert log_loss(y, p) == np.inf
    clipped = log_loss(y, p, eps=1e-7)
    expected = -(np.log(0.5) + np.log(1e-7) + np.log(0.8)) / 3
    assert clipped == pytest.approx(expected, rel=1e-12)
    # a zero weight removes the row instead of producing 0 * inf = NaN
    assert log_loss(y, p, sample_weight=[1.0, 0.0, 1.0]) == pytest.approx(
        -(np.log(0.5) + np.log(0.8)) / 2, rel=1e-12
    )


def test_rows_not_summing_to_one_raise_unless_renormalized():
    y = [0, 1]
    p = np.array([[0.2, 0.6], [0.3, 0.3]])
    with pytest.raises(ValueError, match=r"row 0 sums to 0\.8"):
        log_loss(y, p)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = skm.log_loss(y, p / p.sum(axis=1, keepdims=True))
    assert log_loss(y, p, renormalize=True) == pytest.approx(ref, rel=1e-12)
    # a looser tolerance accepts rows off by more than their rounding
    assert np.isfinite(log_loss(y, [[0.33, 0.66], [0.5, 0.5]], sum_tol=0.011))


@pytest.mark.parametrize("k", [3, 10, 100])
def test_probabilities_rounded_to_4_decimals_agree_with_sklearn(k):
    # sklearn warns that the rows do not sum to one and scores them as given. An array carries no
    # decimals, so we refuse them as float64 data, saying which sum_tol declares their rounding;
    # declared, they are scored as given, without a warning, and agree with sklearn.
    rng = np.random.default_rng(k)
    p = rng.dirichlet(np.ones(k), size=400)
    y = rng.integers(0, k, size=400)
    rounded = np.round(p, 4)
    assert np.abs(rounded.sum(axis=1) - 1).max() > 1e-5
    with pytest.raises(ValueError, match=r"multiples of 1e-04.*row_sum_tolerance\('float64'"):
        log_loss(y, rounded, labels=range(k))
    tol = row_sum_tolerance(np.float64, k, decimals=4)
    with pytest.warns(UserWarning, match="do not sum to one"):
        ref = skm.log_loss(y, rounded, labels=range(k))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # sklearn clips at the dtype's epsilon (a rounded 0 on the true class), so the same here
        eps = float(np.finfo(np.float64).eps)
        ours = log_loss(y, rounded, labels=range(k), eps=eps, sum_tol=tol)
    assert ours == pytest.approx(ref, rel=1e-13)
    if not np.any(rounded[np.arange(400), y] == 0):
        assert log_loss(y, rounded, labels=range(k), sum_tol=tol) == pytest.approx(ref, rel=1e-13)
    # a row summing to 0.99 is still refused, naming both ways out
    off = rounded.copy()
    off[7] = 0.0
    off[7, :2] = (0.5, 0.49)
    with pytest.raises(ValueError, match=r"row 7 sums to 0\.99.*renormalize=True.*sum_tol="):
        log_loss(y, off, labels=range(k), sum_tol=tol)


def test_a_float32_softmax_stored_as_float64_is_scored_as_given():
    torch = pytest.importorskip("torch")
    logits = torch.randn(300, 7, generator=torch.Generator().manual_seed(1)) * 3
    p = torch.softmax(logits, -1).double().numpy()
    y = np.arange(300) % 7
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns above 1.5e-8 off
        ref = skm.log_loss(y, p)
    assert log_loss(y, p) == pytest.approx(ref, rel=1e-13)
    half = torch.softmax(logits.half(), -1).numpy()
    assert log_loss(y, half) == pytest.approx(ref, rel=1e-2)


@pytest.mark.parametrize(
    ("y", "p", "kwargs", "message"),
    [
        ([0, 1], [[0.5, 0.5], [1.5, -0.5]], {}, r"probabilities in \[0, 1\]; got 1\.5"),
        ([0, 1], [[0.5, 0.5], [np.nan, 0.5]], {}, "NaN"),
        ([0, 1, 1], [[0.5, 0.5], [0.5, 0.5]], {}, "different numbers of samples: 3 and 2"),
        ([0, 0], [[0.5, 0.5], [0.5, 0.5]], {}, "only one label"),
        ([0, 3], [[0.5, 0.5], [0.5, 0.5]], {"labels": [0, 1]}, r"y_true\[1\] = 3"),
        ([0, 1], [[0.5, 0.5], [0.5, 0.5]], {"labels": [1, 0]}, "sorted order"),
        ([0, 1], [[0.5, 0.5], [0.5, 0.5]], {"labels": ["a", "b"]}, "not one of the labels"),
        ([0, 1], [[0.5, 0.5], [0.5, 0.5]], {"eps": 0.7}, "eps must be"),
        ([0, 1], [[0.5, 0.5], [0.5, 0.5]], {"sample_weight": [1.0]}, r"shape \(2,\)"),
        ([0, 1], [[0.5, 0.5], [0.5, 0.5]], {"sample_weight": [1.0, -1.0]}, "non-negative"),
        ([0, 1], np.ones((2, 2, 2)) / 2, {}, "shape"),
        ([0, 1, 2], [[0.5, 0.5]] * 3, {}, "2 columns"),
    ],
)
def test_bad_input_raises_with_message(y, p, kwargs, message):
    with pytest.raises(ValueError, match=message):
        log_loss(y, p, **kwargs)


def test_non_numeric_probabilities_raise_type_error():
    with pytest.raises(TypeError, match="dtype"):
        log_loss([0, 1], np.array([["a", "b"], ["c", "d"]]))


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(6, 30), k=st.integers(3, 6))
def test_multiclass_brier_matches_sklearn(seed, n, k):
    p, y, w = random_case(seed, n, k)
    assert brier_score(y, p, sample_weight=w) == pytest.approx(
        skm.brier_score_loss(y, p, sample_weight=w), rel=1e-12, abs=1e-14
    )
    assert brier_score(y, p, scale_by_half=True) == pytest.approx(
        skm.brier_score_loss(y, p, scale_by_half=True), rel=1e-12, abs=1e-14
    )


def test_two_column_brier_matches_sklearn():
    p, y, _ = random_case(11, 30, 2)
    assert brier_score(y, p) == pytest.approx(skm.brier_score_loss(y, p), rel=1e-12)
    assert brier_score(y, p, scale_by_half=False) == pytest.approx(
        skm.brier_score_loss(y, p, scale_by_half=False), rel=1e-12
    )


def test_one_hot_y_true_matches_sklearn():
    p, y, w = random_case(8, 20, 4)
    one_hot = np.eye(4)[y]
    assert log_loss(one_hot, p, sample_weight=w) == pytest.approx(
        skm.log_loss(one_hot, p, sample_weight=w), rel=1e-12
    )
    with pytest.raises(ValueError, match="row 0 has 2"):
        log_loss(np.ones((2, 2)), [[0.5, 0.5], [0.5, 0.5]])


def test_public_api_is_pinned():
    import crossentropy.metrics as metrics

    assert sorted(metrics.__all__) == [
        "Calibration",
        "PerClassScores",
        "ScoreAccumulator",
        "Scores",
        "bits_per_byte",
        "bits_per_token",
        "brier_score",
        "calibration_error",
        "log_loss",
        "per_class_scores",
        "perplexity",
    ]
    for name in metrics.__all__:
        assert getattr(metrics, name).__doc__


@pytest.mark.parametrize("k", [3, 4, 12])  # 12: the message lists the first ten labels
def test_a_1d_y_pred_with_more_than_two_classes_says_it_is_1d_and_what_is_expected(k):
    # Issue 23: log_loss([0, 1, 2], [0.2, 0.3, 0.5]) said "y_pred has 2 columns". A 1-D y_pred
    # is one positive-class probability per sample; the probabilities of one sample are a row.
    from crossentropy.metrics import ScoreAccumulator, calibration_error

    y = list(range(k))
    row = np.full(k, 1.0 / k)
    for func, name in (
        (log_loss, "y_pred"),
        (brier_score, "y_prob"),
        (calibration_error, "y_prob"),
    ):
        with pytest.raises(ValueError) as info:
            func(y, row)
        message = str(info.value)
        for fragment in (f"{name} is 1-D (shape ({k},))", f"{k} classes", f"(n_samples, {k})"):
            assert fragment in message, message
        assert "2 columns" not in message, message
        # the shape it asks for works
        assert np.isfinite(float(log_loss(y, np.tile(row, (k, 1)))))
    with pytest.raises(ValueError, match=r"y_pred is 1-D \(shape \(\d+,\)\).*the accumulator has"):
        ScoreAccumulator(k).update(y, row)
    # two classes: a 1-D y_pred is the positive class's probability, as in sklearn
    assert log_loss([0, 1, 1], [0.2, 0.7, 0.9]) == pytest.approx(
        skm.log_loss([0, 1, 1], [0.2, 0.7, 0.9]), rel=1e-12
    )
