"""logsumexp, log_softmax, softmax: scipy/torch references, -inf masking, no NaN warnings."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.special
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import crossentropy as ce

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)


@st.composite
def logit_arrays(draw: st.DrawFn) -> tuple[np.ndarray, int]:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = draw(st.sampled_from([(1,), (5,), (3, 7), (4, 2, 3), (2, 33)]))
    scale = draw(st.sampled_from([1.0, 50.0, 1000.0]))
    x = rng.normal(scale=scale, size=shape)
    if draw(st.booleans()):
        x[rng.random(shape) < 0.3] = -np.inf
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    return x, axis


@SETTINGS
@given(logit_arrays())
def test_logsumexp_matches_scipy_without_warnings(case: tuple[np.ndarray, int]) -> None:
    x, axis = case
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = ce.logsumexp(x, axis=axis)
        kept = ce.logsumexp(x, axis=axis, keepdims=True)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = scipy.special.logsumexp(x, axis=axis)
    np.testing.assert_allclose(ours, ref, rtol=1e-13, atol=1e-13)
    assert np.shape(kept) == tuple(1 if i == axis % x.ndim else s for i, s in enumerate(x.shape))


@SETTINGS
@given(logit_arrays())
def test_log_softmax_and_softmax_match_torch_on_rows_with_a_finite_entry(
    case: tuple[np.ndarray, int],
) -> None:
    x, axis = case
    x = x.copy()
    # Give every slice one finite entry; all--inf slices are checked separately.
    index = [slice(None)] * x.ndim
    index[axis] = 0
    x[tuple(index)] = 0.5
    ref = torch.log_softmax(torch.from_numpy(x), dim=axis).numpy()
    ours = ce.log_softmax(x, axis=axis)
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-12)
    p = ce.softmax(x, axis=axis)
    np.testing.assert_allclose(np.sum(p, axis=axis), 1.0, rtol=1e-12)
    assert np.all(p[np.isneginf(x)] == 0.0)


def test_all_masked_row_gives_minus_inf_and_no_nan() -> None:
    x = np.array([[-np.inf, -np.inf, -np.inf], [0.0, -np.inf, 1.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lse = ce.logsumexp(x)
        logp = ce.log_softmax(x)
        p = ce.softmax(x)
    assert lse[0] == -np.inf and np.isfinite(lse[1])
    assert np.all(logp[0] == -np.inf) and not np.any(np.isnan(logp))
    assert np.all(p[0] == 0.0)
    np.testing.assert_allclose(p[1], [1 / (1 + np.e), 0.0, np.e / (1 + np.e)], rtol=1e-14)


def test_huge_logits_do_not_overflow() -> None:
    x = np.array([1e308, 1e308, -1e308])
    assert float(ce.logsumexp(x)) == pytest.approx(1e308 + np.log(2), rel=1e-15)
    np.testing.assert_allclose(ce.softmax(x), [0.5, 0.5, 0.0])


def test_plus_inf_gives_plus_inf_logsumexp() -> None:
    assert float(ce.logsumexp(np.array([0.0, np.inf]))) == np.inf


def test_integer_input_is_promoted_and_float32_is_kept() -> None:
    assert float(ce.logsumexp([0, 0])) == pytest.approx(np.log(2))
    out = ce.softmax(np.zeros(3, dtype=np.float32))
    assert out.dtype == np.float32


def test_axis_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="axis=1 is out of range"):
        ce.softmax(np.zeros(3), axis=1)
    with pytest.raises(TypeError, match="axis must be an int"):
        ce.log_softmax(np.zeros(3), axis=0.5)  # type: ignore[arg-type]


def test_plus_inf_entries_share_the_mass_in_the_limit() -> None:
    x = np.array([[np.inf, 0.0, np.inf, -np.inf], [1.0, np.inf, 2.0, 3.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = ce.softmax(x)
    np.testing.assert_array_equal(p, [[0.5, 0.0, 0.5, 0.0], [0.0, 1.0, 0.0, 0.0]])
    assert float(ce.log_softmax(x)[0, 0]) == pytest.approx(-np.log(2))


def test_nan_rows_stay_nan_like_torch():
    import torch

    x = np.array([[np.nan, 1.0, 2.0], [0.0, 1.0, 2.0], [np.inf, np.nan, 0.0]])
    for fn, ref in ((ce.log_softmax, torch.log_softmax), (ce.softmax, torch.softmax)):
        ours = fn(x)
        expected = ref(torch.from_numpy(x), 1).numpy()
        assert np.isnan(ours[0]).all() and np.isnan(ours[2]).all()
        np.testing.assert_allclose(ours[1], expected[1], rtol=1e-15)
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(expected))


def test_base_accepts_numpy_integers():
    p = np.array([0.5, 0.25, 0.25])
    assert float(ce.entropy(p, base=np.int64(2))) == pytest.approx(1.5, rel=1e-15)
