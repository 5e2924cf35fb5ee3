"""One rule for "is this a distribution": data within its own rounding passes, real mistakes do not.

The rule lives in ``crossentropy._tolerance``; the core, the metrics and the CLI all apply it, so
the same arrays are tested through the core here and through the metrics and the CLI in their own
test files.
"""

from __future__ import annotations

import math
import typing
import warnings

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

import crossentropy as ce
from crossentropy._tolerance import rounding_decimals, stored_precision, sum_tolerance

INFO = (ce.entropy, ce.cross_entropy, ce.kl_divergence, ce.js_divergence)


def softmax64(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def call(f, p, q=None, **kwargs):
    return f(p, **kwargs) if f is ce.entropy else f(p, p if q is None else q, **kwargs)


def test_a_float32_softmax_stored_as_float64_is_a_distribution() -> None:
    # The reproduction: torch's float32 softmax, converted to float64, sums to 1 + 2e-8.
    torch = pytest.importorskip("torch")
    x = torch.randn(500, 10, generator=torch.Generator().manual_seed(0)) * 4
    p = torch.softmax(x, -1).double().numpy()
    assert np.abs(p.sum(axis=1) - 1).max() > math.sqrt(np.finfo(np.float64).eps)
    # used as given: the float64 formula on the same numbers (scipy divides each row by its sum
    # first, which moves the result by about as much as the rows are off)
    terms = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    np.testing.assert_allclose(ce.entropy(p), -terms.sum(axis=1), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(ce.entropy(p), scipy.stats.entropy(p, axis=1), atol=1e-6)
    q = np.roll(p, 1, axis=0)
    np.testing.assert_allclose(
        ce.kl_divergence(p, q), scipy.stats.entropy(p, q, axis=1), rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("k", [2, 10, 1000, 32000])  # the sum of k terms in float32 grows with k
def test_low_precision_softmax_outputs_are_distributions_in_their_dtype_and_wider(k: int) -> None:
    torch = pytest.importorskip("torch")
    rows = max(4, 20000 // k)
    x = torch.randn(rows, k, generator=torch.Generator().manual_seed(k)) * 5
    ref = scipy.stats.entropy(softmax64(x.double().numpy()), axis=1)
    for dtype, rtol in ((torch.float32, 1e-4), (torch.float16, 2e-2), (torch.bfloat16, 5e-2)):
        p = torch.softmax(x.to(dtype), -1)
        got = ce.entropy(p.float()).double().numpy()  # float32 arithmetic on float16 values
        np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol)
        wide = ce.entropy(p.double().numpy())  # the same numbers in a float64 NumPy array
        np.testing.assert_allclose(wide, ref, rtol=rtol, atol=rtol)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    k=st.integers(2, 300),
    decimals=st.integers(3, 8),
    peaked=st.booleans(),
)
def test_any_rounding_of_distributions_to_3_to_8_decimals_is_accepted(
    seed: int, k: int, decimals: int, peaked: bool
) -> None:
    # Peaked rows (alpha 0.05) put most classes below half a unit: they are written as 0 and the
    # row falls short of 1 by up to k/2 units, the case a random-walk allowance would refuse.
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(k, 0.05 if peaked else 1.0), size=20)
    q = rng.dirichlet(np.ones(k), size=20)
    rp, rq = np.round(p, decimals), np.round(q, decimals)
    h = ce.entropy(rp)
    terms = np.where(rp > 0, rp * np.log(np.where(rp > 0, rp, 1.0)), 0.0)
    np.testing.assert_allclose(h, -terms.sum(axis=1), rtol=1e-12, atol=1e-15)  # used as given
    assert np.all(np.isfinite(ce.cross_entropy(rp, np.round(0.5 * q + 0.5 / k, decimals))))
    ce.js_divergence(rp, rq)


def make_off_row(rows: np.ndarray, index: int) -> np.ndarray:
    """``rows`` with row ``index`` replaced by one summing to 0.99 (0.5 and 0.49, then zeros)."""
    out = rows.copy()
    out[index] = 0.0
    out[index, :2] = (0.5, 0.49)
    return out


@pytest.mark.parametrize(
    ("what", "dtype", "decimals"),
    [
        ("float64", np.float64, None),
        ("float32", np.float32, None),
        ("float16", np.float16, None),
        ("4 decimals", np.float64, 4),
        ("3 decimals", np.float64, 3),
        ("2 decimals", np.float64, 2),  # taken at face value
    ],
)
def test_a_row_summing_to_0_99_is_refused_naming_both_options(
    what: str, dtype: type, decimals: int | None
) -> None:
    rng = np.random.default_rng(4)
    if decimals == 2:  # rows that sum to 1 exactly at two decimals: hundredths of a multinomial
        p = rng.multinomial(100, np.full(5, 0.2), size=30) / 100
    else:
        p = rng.dirichlet(np.ones(5), size=30)
    if decimals is not None:
        p = np.round(p, decimals)
    bad = make_off_row(p, 17).astype(dtype)
    for f in INFO:
        with pytest.raises(ValueError, match=r"index \(17,\) sums to 0\.9") as info:
            call(f, bad)
        message = str(info.value)
        assert "renormalize=True" in message and "sum_tol=" in message, message
        assert f"for 5 classes of dtype {np.dtype(dtype)}" in message, message
        # the same rows pass once renormalised, or under a tolerance that allows 1%
        call(f, bad, renormalize=True)
        call(f, bad, sum_tol=0.011)


def test_a_bfloat16_row_summing_to_0_99_is_refused() -> None:
    torch = pytest.importorskip("torch")
    p = torch.tensor([[0.5, 0.49, 0.0], [0.25, 0.5, 0.25]], dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"sums to 0\.99.*renormalize=True"):
        ce.entropy(p)
    with pytest.raises(ValueError, match=r"holding bfloat16 numbers.*sums to 0\.99"):
        ce.entropy(p.double().numpy())


def test_written_zeros_only_widen_the_tolerance_below_one() -> None:
    # 4 decimals: each value is within 5e-5 of the one it was rounded from, and a written 0 of a
    # value that was rounded down. So three classes may fall 1.5e-4 short of 1, but exceed it only
    # by 5e-5 per non-zero value.
    ce.entropy([0.9999, 0.0, 0.0])  # short by 1e-4: three roundings down
    ce.entropy([0.5001, 0.5000, 0.0])  # over by 1e-4: two roundings up
    with pytest.raises(ValueError, match=r"tolerance 6\.08e-05 .* rounded to 4 decimals"):
        ce.entropy([1.0001, 0.0, 0.0])  # over by 1e-4: one value cannot have moved that far


def test_sum_tol_replaces_the_rule_both_ways() -> None:
    p = np.round(np.random.default_rng(5).dirichlet(np.ones(4), size=50), 4)
    ce.entropy(p)
    with pytest.raises(ValueError, match=r"tolerance 1e-12, as given"):
        ce.entropy(p, sum_tol=1e-12)
    assert float(ce.entropy([0.5, 0.49], sum_tol=0.02)) > 0
    for bad, error in ((-1e-3, ValueError), (math.nan, ValueError), ("1e-3", TypeError)):
        with pytest.raises(error, match="sum_tol"):
            ce.entropy([0.5, 0.5], sum_tol=bad)  # type: ignore[arg-type]


def test_the_tolerance_grows_with_classes_dtype_and_rounding_unit() -> None:
    eps64, eps32, eps16 = (float(np.finfo(t).eps) for t in (np.float64, np.float32, np.float16))
    for k in (2, 10, 1000):
        assert sum_tolerance(k, eps=eps64) < sum_tolerance(10 * k, eps=eps64)
        assert (
            sum_tolerance(k, eps=eps64) < sum_tolerance(k, eps=eps32) < sum_tolerance(k, eps=eps16)
        )
        for d in (3, 4, 8):
            wider, finer = sum_tolerance(k, decimals=d), sum_tolerance(k, decimals=d + 1)
            assert finer < wider
            assert wider - sum_tolerance(k) == pytest.approx(k * 0.5 * 10.0**-d)
    assert sum_tolerance(2, eps=eps64) == pytest.approx(1e-5 + 4 * math.sqrt(2) * eps32 + eps64)
    # always well below 1% for float data, so a row summing to 0.99 stays a mistake
    assert sum_tolerance(10**6, eps=eps16) < 0.01


def test_decimals_and_precision_are_found_from_the_values() -> None:
    rng = np.random.default_rng(6)
    p = rng.dirichlet(np.ones(6), size=100)
    for d in range(3, 9):
        assert rounding_decimals(np, np.round(p, d)) == d
    assert rounding_decimals(np, p) is None  # full precision
    assert rounding_decimals(np, np.round(p, 2)) is None  # two decimals are taken as exact
    assert rounding_decimals(np, np.round(p, 4).astype(np.float32)) == 4
    assert rounding_decimals(np, np.round(p, 6).astype(np.float32)) is None  # finer than float32
    assert stored_precision(np, p) == (np.finfo(np.float64).eps, None)
    assert stored_precision(np, p.astype(np.float16).astype(np.float64)) == (2.0**-10, "float16")
    assert stored_precision(np, p.astype(np.float32).astype(np.float64))[1] is None


def test_large_arrays_take_the_fast_path_and_the_whole_rule() -> None:
    # 4 x 32768 elements and more go through the blocked NumPy path; rounded data makes it fall
    # back to the generic path, which finds the decimals, so the results are the same.
    rng = np.random.default_rng(7)
    p = np.round(rng.dirichlet(np.ones(8), size=40000), 4)
    q = rng.dirichlet(np.ones(8), size=40000)
    np.testing.assert_allclose(ce.kl_divergence(p, q)[:50], ce.kl_divergence(p[:50], q[:50]))
    with pytest.raises(ValueError, match=r"index \(39999,\) sums to 0\.99"):
        ce.kl_divergence(make_off_row(p, 39999), q)
    # once the whole array passed the rule, later blocks are still checked entry by entry
    negative = p.copy()
    negative[39000, 3] = -0.0001
    with pytest.raises(ValueError, match=r"p must hold probabilities >= 0.*\(39000, 3\)"):
        ce.kl_divergence(negative, q)


def test_normalize_is_a_deprecated_name_of_renormalize() -> None:
    counts = np.array([[1.0, 3.0], [2.0, 2.0]])
    for f in INFO:
        expected = call(f, counts, renormalize=True)
        with pytest.warns(DeprecationWarning, match="renormalize="):
            np.testing.assert_array_equal(call(f, counts, normalize=True), expected)
        with pytest.raises(TypeError, match="renormalize= only"):
            call(f, counts, renormalize=True, normalize=True)
    with pytest.raises(TypeError, match="renormalize must be True or False"):
        ce.entropy([0.5, 0.5], renormalize="yes")  # type: ignore[arg-type]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ce.entropy(counts, renormalize=True)  # the new name does not warn


def test_public_core_functions_have_real_type_hints() -> None:
    for name in ce.__all__:
        func = getattr(ce, name)
        if not callable(func):
            continue
        hints = typing.get_type_hints(func)
        for arg, hint in hints.items():
            assert hint is not typing.Any, f"{name}({arg}) is annotated Any"
        overloads = typing.get_overloads(func)
        assert len(overloads) >= 2, name  # NumPy in -> NumPy out; other arrays keep their type


@pytest.mark.parametrize("library", ["torch", "array_api_strict"])
def test_the_rule_is_the_same_for_other_array_libraries(library: str) -> None:
    lib = pytest.importorskip(library)
    rng = np.random.default_rng(8)
    rounded = np.round(rng.dirichlet(np.ones(5), size=60), 4)
    half = rng.dirichlet(np.ones(5), size=60).astype(np.float16).astype(np.float64)
    for data in (rounded, half):
        got = ce.entropy(lib.asarray(data))
        np.testing.assert_allclose(np.from_dlpack(got), ce.entropy(data), rtol=1e-12)
    with pytest.raises(ValueError, match=r"rounded to 4 decimals\); the slice at index \(9,\)"):
        ce.entropy(lib.asarray(make_off_row(rounded, 9)))
