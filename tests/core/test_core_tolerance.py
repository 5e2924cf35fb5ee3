"""One rule for "is this a distribution": data within its own rounding passes, real mistakes do not.

The rule lives in ``crossentropy._tolerance``; the core, the metrics and the CLI all apply it, so
the same arrays are tested through the core here and through the metrics and the CLI in their own
test files.
"""

from __future__ import annotations

import itertools
import math
import re
import typing
import warnings

import numpy as np
import pytest
import scipy.special
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

import crossentropy as ce
from crossentropy._tolerance import (
    dtype_eps,
    rounding_decimals,
    sum_tolerance,
    text_decimals,
)
from crossentropy.metrics import log_loss

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
def test_low_precision_softmax_outputs_are_distributions_in_their_own_dtype(k: int) -> None:
    # In their own dtype they pass. Copied into a wider array they are that array's data: they
    # pass when the caller states the rounding they carry (sum_tol=row_sum_tolerance of the
    # dtype they were computed in), and rows off by more than the wide dtype allows are refused.
    torch = pytest.importorskip("torch")
    rows = max(4, 20000 // k)
    x = torch.randn(rows, k, generator=torch.Generator().manual_seed(k)) * 5
    ref = scipy.stats.entropy(softmax64(x.double().numpy()), axis=1)
    for dtype, rtol in ((torch.float32, 1e-4), (torch.float16, 2e-2), (torch.bfloat16, 5e-2)):
        p = torch.softmax(x.to(dtype), -1)
        got = ce.entropy(p)
        assert got.dtype == dtype
        np.testing.assert_allclose(got.double().numpy(), ref, rtol=rtol, atol=rtol)
        wide = p.double().numpy()  # the same numbers in a float64 NumPy array
        declared = ce.entropy(wide, sum_tol=ce.row_sum_tolerance(dtype, k))
        np.testing.assert_allclose(declared, ref, rtol=rtol, atol=rtol)
        off = np.abs(wide.sum(axis=1) - 1).max()
        if off > ce.row_sum_tolerance(np.float64, k):
            with pytest.raises(ValueError, match=f"for {k} classes of dtype float64"):
                ce.entropy(wide)
        else:
            ce.entropy(wide)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    k=st.integers(2, 300),
    decimals=st.integers(3, 8),
    peaked=st.booleans(),
)
def test_any_rounding_of_distributions_to_3_to_8_decimals_passes_when_declared(
    seed: int, k: int, decimals: int, peaked: bool
) -> None:
    # Peaked rows (alpha 0.05) put most classes below half a unit: they are written as 0 and the
    # row falls short of 1 by up to k/2 units, the case a random-walk allowance would refuse.
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(k, 0.05 if peaked else 1.0), size=20)
    q = rng.dirichlet(np.ones(k), size=20)
    rp, rq = np.round(p, decimals), np.round(q, decimals)
    tol = ce.row_sum_tolerance(np.float64, k, decimals=decimals)
    h = ce.entropy(rp, sum_tol=tol)
    terms = np.where(rp > 0, rp * np.log(np.where(rp > 0, rp, 1.0)), 0.0)
    np.testing.assert_allclose(h, -terms.sum(axis=1), rtol=1e-12, atol=1e-15)  # used as given
    rounded_q = np.round(0.5 * q + 0.5 / k, decimals)
    assert np.all(np.isfinite(ce.cross_entropy(rp, rounded_q, sum_tol=tol)))
    ce.js_divergence(rp, rq, sum_tol=tol)
    # undeclared, the array is float64 data: refused exactly when a row is off by more than that
    if np.abs(rp.sum(axis=1) - 1).max() > ce.row_sum_tolerance(np.float64, k) * (1 + 1e-9):
        with pytest.raises(ValueError, match="of dtype float64"):
            ce.entropy(rp)


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
    # an array carries no decimals: rounded ones pass with their rounding declared, and the
    # row summing to 0.99 is still refused under it
    declared = {}
    described = f"for 5 classes of dtype {np.dtype(dtype)}"
    if decimals is not None and decimals >= 3:
        declared = {"sum_tol": ce.row_sum_tolerance(dtype, 5, decimals=decimals)}
        described = f"tolerance {declared['sum_tol']:.3g}, as given"
    for f in INFO:
        with pytest.raises(ValueError, match=r"index \(17,\) sums to 0\.9") as info:
            call(f, bad, **declared)
        message = str(info.value)
        assert "renormalize=True" in message and "sum_tol=" in message, message
        assert described in message, message
        # the same rows pass once renormalised, or under a tolerance that allows 1%
        call(f, bad, renormalize=True)
        call(f, bad, sum_tol=0.011)


def test_a_bfloat16_row_summing_to_0_99_is_refused() -> None:
    torch = pytest.importorskip("torch")
    p = torch.tensor([[0.5, 0.49, 0.0], [0.25, 0.5, 0.25]], dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"sums to 0\.99.*renormalize=True"):
        ce.entropy(p)
    with pytest.raises(ValueError, match=r"of dtype float64\); .*sums to 0\.99") as info:
        ce.entropy(p.double().numpy())
    assert "bfloat16" not in str(info.value)


def test_an_array_of_rounded_values_is_judged_by_its_dtype() -> None:
    # Rows that a 4-decimal rounding explains are refused as float64 data, and pass once the
    # rounding is declared. (Text rows get the decimals they were written with: see the CLI's
    # tests, where a written 0 also narrows the tolerance above 1.)
    for row in ([0.9999, 0.0, 0.0], [0.5001, 0.5000, 0.0]):
        with pytest.raises(ValueError, match=r"tolerance 1\.08e-05 for 3 classes of dtype float64"):
            ce.entropy(row)
        ce.entropy(row, sum_tol=ce.row_sum_tolerance("float64", 3, decimals=4))


def test_sum_tol_replaces_the_rule_both_ways() -> None:
    p = np.random.default_rng(5).dirichlet(np.ones(4), size=50).astype(np.float32)
    assert np.abs(p.astype(np.float64).sum(axis=1) - 1).max() > 1e-12
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


def test_the_grid_of_values_and_the_decimals_of_text_rows() -> None:
    # rounding_decimals describes an array (for the hint of a refusal); text_decimals reads the
    # decimals each row of parsed text was written with.
    rng = np.random.default_rng(6)
    p = rng.dirichlet(np.ones(6), size=100)
    for d in range(3, 9):
        assert rounding_decimals(np, np.round(p, d)) == d
    assert rounding_decimals(np, p) is None  # full precision
    assert rounding_decimals(np, np.round(p, 2)) is None  # two decimals are taken as exact
    assert rounding_decimals(np, np.round(p, 4).astype(np.float32)) == 4
    assert rounding_decimals(np, np.round(p, 6).astype(np.float32)) is None  # finer than float32
    written = np.array(
        [
            [float(f"{v:.{d}f}") for v in row]
            for row, d in zip(p, itertools.cycle([1, 2, 3, 4, 5, 6, 7, 8, 12]))
        ]
    )
    expected = [
        d if 3 <= d <= 8 else -1 for d, _ in zip(itertools.cycle([1, 2, 3, 4, 5, 6, 7, 8, 12]), p)
    ]
    got = text_decimals(written)
    # a row whose every number ends in 0 at its last decimal reads as fewer decimals
    fewer = [
        all(f"{v:.{d}f}".endswith("0") for v in row) if d > 0 else False
        for row, d in zip(p, itertools.cycle([1, 2, 3, 4, 5, 6, 7, 8, 12]))
    ]
    for g, e, f in zip(got, expected, fewer):
        assert g == e or (f and g < e), (g, e)
    assert text_decimals(np.array([[0.5, 0.4921875], [1.0, 0.0], [0.25, 0.75]])).tolist() == [
        7,
        -1,
        -1,
    ]


def test_large_arrays_take_the_fast_path_and_the_whole_rule() -> None:
    # 4 x 32768 elements and more go through the blocked NumPy path; rounded data makes it fall
    # back to the generic path, which finds the decimals, so the results are the same.
    rng = np.random.default_rng(7)
    p = np.round(rng.dirichlet(np.ones(8), size=40000), 4)
    q = rng.dirichlet(np.ones(8), size=40000)
    tol = ce.row_sum_tolerance(np.float64, 8, decimals=4)
    np.testing.assert_allclose(
        ce.kl_divergence(p, q, sum_tol=tol)[:50], ce.kl_divergence(p[:50], q[:50], sum_tol=tol)
    )
    with pytest.raises(ValueError, match=r"index \(\d+,\) sums to (0\.9999|1\.0001)"):
        ce.kl_divergence(p, q)  # undeclared, the rounding is more than float64's
    with pytest.raises(ValueError, match=r"index \(39999,\) sums to 0\.99"):
        ce.kl_divergence(make_off_row(p, 39999), q, sum_tol=tol)
    # once the whole array passed the rule, later blocks are still checked entry by entry
    negative = p.copy()
    negative[39000, 3] = -0.0001
    with pytest.raises(ValueError, match=r"p must hold probabilities >= 0.*\(39000, 3\)"):
        ce.kl_divergence(negative, q, sum_tol=tol)


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
        if not callable(func) or name == "row_sum_tolerance":  # no array in, a float out
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
    tol = ce.row_sum_tolerance(np.float64, 5, decimals=4)
    got = ce.entropy(lib.asarray(rounded), sum_tol=tol)
    np.testing.assert_allclose(np.from_dlpack(got), ce.entropy(rounded, sum_tol=tol), rtol=1e-12)
    with pytest.raises(ValueError, match=r"5 classes of dtype [\w.]*float64\); the slice") as info:
        ce.entropy(lib.asarray(rounded))
    # the refusal's suggestion, run as written, accepts the array
    suggested = re.search(
        r"sum_tol=crossentropy\.(row_sum_tolerance\(.*?\)) allows", str(info.value)
    )
    assert suggested is not None, info.value
    assert eval(suggested.group(1), {"row_sum_tolerance": ce.row_sum_tolerance}) == tol
    ce.entropy(lib.asarray(rounded), sum_tol=tol)
    single = rng.dirichlet(np.ones(5), size=60).astype(np.float32)
    got = ce.entropy(lib.asarray(single))
    np.testing.assert_allclose(np.from_dlpack(got), ce.entropy(single), rtol=1e-6)
    if library == "torch":  # a float16 tensor keeps float16's tolerance, as a NumPy float16 array
        half = rng.dirichlet(np.ones(5), size=60).astype(np.float16)
        np.testing.assert_allclose(
            np.from_dlpack(ce.entropy(lib.asarray(half))), ce.entropy(half), rtol=1e-3
        )
    with pytest.raises(ValueError, match=r"tolerance .*; the slice at index \(9,\) sums to 0\.99"):
        ce.entropy(lib.asarray(make_off_row(rounded, 9)), sum_tol=tol)


# ---------------------------------------------------------------------------------------------
# Issue 23, item 1: the tolerance follows the array's real dtype, never a format or a number of
# decimals read off the values.

# Values that bfloat16 holds exactly (0.4921875 = 63/128), in a float64 array: 0.0078 short of 1.
BF16_LOOKALIKE = [0.5, 0.4921875]


def test_a_float64_row_of_bfloat16_lookalikes_is_float64_data() -> None:
    # The reproduction: accepted, this row had an entropy above ln 2, the maximum for two
    # classes. Its message names the real dtype and nothing else.
    for f in INFO:
        with pytest.raises(ValueError, match=r"sums to 0\.9921875") as info:
            call(f, BF16_LOOKALIKE)
        message = str(info.value)
        assert "of dtype float64)" in message, message
        assert "bfloat16" not in message and "holding" not in message, message
    # within the float64 rule the same entropy stays below its maximum
    assert ce.entropy([0.5, 0.5]) == pytest.approx(math.log(2), rel=1e-15)


@pytest.mark.parametrize(
    "n",
    [
        256,  # every c/256 with c < 256 is a bfloat16 number
        1024,  # and a float16 one
        1000,  # every c/1000 is a multiple of 1e-3, "written with 3 decimals"
        10000,  # and of 1e-4
    ],
)
def test_a_histogram_that_lost_a_count_is_refused(n: int) -> None:
    # Counts of n samples divided by n, one count lost: the total is 1 - 1/n. No format and no
    # number of decimals the values happen to fit makes that a distribution.
    rng = np.random.default_rng(n)
    counts = rng.multinomial(n, np.full(3, 1 / 3), size=20).astype(np.float64)
    counts[5, int(np.argmax(counts[5]))] -= 1
    p = counts / n
    assert abs(p[5].sum() - (1 - 1 / n)) < 1e-12
    for f in (ce.entropy, ce.kl_divergence, ce.cross_entropy):
        with pytest.raises(ValueError, match=r"index \(5,\) sums to 0\.99"):
            call(f, p, np.full_like(p, 1 / 3))
    with pytest.raises(ValueError, match=r"row 5 sums to 0\.99"):
        log_loss(rng.integers(0, 3, size=20), p)
    # the rows that did not lose a count are distributions
    ce.entropy(np.delete(p, 5, axis=0))


@settings(max_examples=80, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    k=st.integers(2, 400),
    dtype=st.sampled_from(["float16", "float32", "float64"]),
    ratio=st.floats(0.0, 3.0),
)
def test_a_row_passes_exactly_when_within_row_sum_tolerance_of_its_dtype(
    seed: int, k: int, dtype: str, ratio: float
) -> None:
    # A row moved off 1 by `ratio` times the tolerance of its dtype: accepted when the total, as
    # the check sums it (in float32 for float16), is within the tolerance, refused otherwise.
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(k)).astype(dtype)
    tol = ce.row_sum_tolerance(np.dtype(dtype), k)
    p[int(np.argmax(p))] += np.asarray(ratio * tol, dtype=dtype)
    wide = np.float32 if dtype == "float16" else np.dtype(dtype)
    off = abs(float(np.sum(p, dtype=wide)) - 1.0)
    if abs(off - tol) < 1e-3 * tol:
        return  # on the boundary the rounding of the comparison decides
    if off <= tol:
        ce.entropy(p)
    else:
        with pytest.raises(ValueError, match=rf"for {k} classes of dtype {dtype}\)"):
            ce.entropy(p)


def test_arrays_that_really_are_low_precision_keep_their_tolerance() -> None:
    torch = pytest.importorskip("torch")
    # the same numbers that float64 refuses are a distribution in bfloat16 (eps 2**-7)
    h = ce.entropy(torch.tensor(BF16_LOOKALIKE, dtype=torch.bfloat16))
    assert h.dtype == torch.bfloat16
    half = np.array([0.5, 0.4995], dtype=np.float16)  # 0.4995 rounds to 0.49951171875
    ce.entropy(half)
    with pytest.raises(ValueError, match="of dtype float64"):
        ce.entropy(half.astype(np.float64))
    # mixed with a wider operand, each side keeps the tolerance of the dtype it came in
    q = np.array([0.25, 0.75])
    got = ce.kl_divergence(half, q)
    ref = scipy.special.rel_entr(half.astype(np.float64), q).sum()
    assert got == pytest.approx(ref, rel=1e-12)
    with pytest.raises(ValueError, match=r"q must sum to 1 .*of dtype float64"):
        ce.kl_divergence(q, half.astype(np.float64))
    # the metrics take bfloat16 tensors too, with the same tolerance
    y = [0, 1]
    rows = torch.tensor([BF16_LOOKALIKE, [0.25, 0.75]], dtype=torch.bfloat16)
    ref_loss = -(math.log(0.5) + math.log(0.75)) / 2
    assert log_loss(y, rows) == pytest.approx(ref_loss, rel=1e-12)
    with pytest.raises(ValueError, match=r"row 0 sums to 0\.9921875.*dtype torch\.float64\)"):
        log_loss(y, rows.double())


def test_rounded_arrays_pass_when_the_caller_says_how_they_were_rounded() -> None:
    # An array carries no decimals: np.round(p, 4) is float64 data. Its rounding is declared
    # through sum_tol, and the refusal says how when the values do lie on such a grid.
    p = np.round(np.random.default_rng(3).dirichlet(np.ones(5), size=200), 4)
    worst = int(np.argmax(np.abs(p.sum(axis=1) - 1)))
    assert abs(p[worst].sum() - 1) > ce.row_sum_tolerance(np.float64, 5)
    with pytest.raises(ValueError) as info:
        ce.entropy(p)
    message = str(info.value)
    assert "multiples of 1e-04" in message, message
    assert "sum_tol=crossentropy.row_sum_tolerance('float64', 5, decimals=4)" in message, message
    ce.entropy(p, sum_tol=ce.row_sum_tolerance(np.float64, 5, decimals=4))
    # no such hint where that rounding would not explain the total either
    with pytest.raises(ValueError) as info:
        ce.entropy(make_off_row(p, 3))
    assert "row_sum_tolerance" not in str(info.value)


def test_row_sum_tolerance_takes_any_librarys_dtype_and_states_the_rule() -> None:
    eps = {"float64": 2.0**-52, "float32": 2.0**-23, "float16": 2.0**-10, "bfloat16": 2.0**-7}
    for k in (1, 2, 7, 128256):
        for name, e in eps.items():
            expected = 1e-5 + 4 * math.sqrt(k) * 2.0**-23 + e
            assert ce.row_sum_tolerance(name, k) == pytest.approx(expected, rel=1e-15)
            for d in (0, 3, 4, 8):
                assert ce.row_sum_tolerance(name, k, decimals=d) == pytest.approx(
                    expected + k * 0.5 * 10.0**-d, rel=1e-15
                )
    assert ce.row_sum_tolerance(np.float32, 5) == ce.row_sum_tolerance(np.dtype("float32"), 5)
    assert (
        ce.row_sum_tolerance(np.int64, 3) == ce.row_sum_tolerance(np.bool_, 3) == sum_tolerance(3)
    )
    torch = pytest.importorskip("torch")
    for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
        assert ce.row_sum_tolerance(dtype, 10) == ce.row_sum_tolerance(str(dtype), 10)
        assert ce.row_sum_tolerance(dtype, 10) == sum_tolerance(10, eps=torch.finfo(dtype).eps)
    assert dtype_eps(torch.int32) == dtype_eps(torch.bool) == 0.0
    xps = pytest.importorskip("array_api_strict")
    assert ce.row_sum_tolerance(xps.float32, 4) == ce.row_sum_tolerance(np.float32, 4)
    for bad, error in (
        ((np.float64, 0), ValueError),
        ((np.float64, 2.0), TypeError),
        ((np.float64, True), TypeError),
        ((np.float64, 2, -1), ValueError),
        ((np.float64, 2, 4.0), TypeError),
        ((np.complex128, 2), TypeError),
        ((torch.complex64, 2), TypeError),
        (("cat", 2), TypeError),
        ((object, 2), TypeError),
    ):
        with pytest.raises(error, match=r"n_classes|decimals|dtype"):
            ce.row_sum_tolerance(*bad)


def test_the_core_applies_row_sum_tolerance_to_torch_tensors_of_each_dtype() -> None:
    # What the torch layer will apply to probability targets: the same function, the same rows.
    torch = pytest.importorskip("torch")
    k = 1000
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        tol = ce.row_sum_tolerance(dtype, k)
        for ratio, ok in ((0.5, True), (2.0, False)):
            p = torch.full((3, k), 1.0 / k, dtype=torch.float64)
            p[1, 0] += ratio * tol
            p = p.to(dtype)
            total = float(p.float().sum(dim=1)[1]) - 1.0
            assert (abs(total) <= tol) == ok, (dtype, ratio, total, tol)
            if ok:
                ce.entropy(p)
            else:
                with pytest.raises(
                    ValueError, match=rf"of dtype {dtype}\); the slice at index \(1,\)"
                ):
                    ce.entropy(p)
