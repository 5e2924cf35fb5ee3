"""entropy, cross_entropy, kl_divergence, js_divergence: scipy references and information identities."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.special
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import jensenshannon

import crossentropy as ce

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)


@st.composite
def distributions(draw: st.DrawFn, n: int = 1) -> list[np.ndarray]:
    """``n`` arrays of distributions along the last axis, with exact zeros and odd class counts."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = draw(st.sampled_from([(1,), (2,), (7,), (3, 5), (4, 1), (2, 3, 6), (16, 33)]))
    zero_rate = draw(st.sampled_from([0.0, 0.3, 0.8]))
    out = []
    for _ in range(n):
        raw = rng.random(shape) ** draw(st.sampled_from([1, 4]))
        raw[rng.random(shape) < zero_rate] = 0.0
        # Keep at least one positive entry per row so each row is a distribution.
        raw[..., rng.integers(shape[-1])] += 0.5
        out.append(raw / raw.sum(axis=-1, keepdims=True))
    return out


@SETTINGS
@given(distributions(1))
def test_entropy_matches_scipy_and_is_non_negative(ps: list[np.ndarray]) -> None:
    (p,) = ps
    h = ce.entropy(p)
    np.testing.assert_allclose(h, scipy.stats.entropy(p, axis=-1), rtol=1e-12, atol=1e-14)
    assert np.all(np.asarray(h) >= 0)
    assert np.all(np.asarray(h) <= np.log(p.shape[-1]) + 1e-12)


@SETTINGS
@given(distributions(2))
def test_kl_and_cross_entropy_match_scipy_and_identity_holds(ps: list[np.ndarray]) -> None:
    p, q = ps
    kl = np.asarray(ce.kl_divergence(p, q))
    h_pq = np.asarray(ce.cross_entropy(p, q))
    h_p = np.asarray(ce.entropy(p))
    np.testing.assert_allclose(
        kl, scipy.special.rel_entr(p, q).sum(axis=-1), rtol=1e-12, atol=1e-13
    )
    finite = np.isfinite(kl)
    assert np.all(kl[finite] >= -1e-14)
    # Identity H(p, q) = H(p) + KL(p || q); inf on both sides when q misses mass of p.
    np.testing.assert_allclose(h_pq[finite], (h_p + kl)[finite], rtol=1e-12, atol=1e-12)
    assert np.array_equal(np.isinf(h_pq), ~finite)
    np.testing.assert_array_equal(ce.kl_divergence(p, p), np.zeros(p.shape[:-1]))


@SETTINGS
@given(distributions(2), st.sampled_from([2, 10, 0.5, math.e]))
def test_base_conversion_divides_by_log_base(ps: list[np.ndarray], base: float) -> None:
    p, q = ps
    d = math.log(base)
    for f in (ce.entropy, ce.cross_entropy, ce.kl_divergence, ce.js_divergence):
        args = (p,) if f is ce.entropy else (p, q)
        nats = np.asarray(f(*args))
        np.testing.assert_allclose(f(*args, base=base), nats / d, rtol=1e-13, atol=1e-15)


@SETTINGS
@given(distributions(2))
def test_js_is_symmetric_bounded_and_matches_scipy_distance_squared(ps: list[np.ndarray]) -> None:
    p, q = ps
    js = np.asarray(ce.js_divergence(p, q))
    np.testing.assert_allclose(js, ce.js_divergence(q, p), rtol=1e-13, atol=1e-15)
    assert np.all(js >= -1e-15) and np.all(js <= math.log(2) + 1e-12)
    np.testing.assert_allclose(js, jensenshannon(p, q, axis=-1) ** 2, rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(ce.js_divergence(p, q, base=2), js / math.log(2), rtol=1e-13)


def test_zero_log_zero_is_zero_and_missing_support_is_inf() -> None:
    assert float(ce.entropy([1.0, 0.0, 0.0])) == 0.0
    assert float(ce.kl_divergence([0.0, 1.0], [0.5, 0.5])) == pytest.approx(math.log(2))
    assert math.isinf(float(ce.kl_divergence([0.5, 0.5], [1.0, 0.0])))
    assert math.isinf(float(ce.cross_entropy([0.5, 0.5], [1.0, 0.0])))
    # q = 0 where p = 0 costs nothing.
    assert float(ce.kl_divergence([1.0, 0.0], [1.0, 0.0])) == 0.0
    assert float(ce.js_divergence([1.0, 0.0], [0.0, 1.0])) == pytest.approx(math.log(2))


def test_axis_argument_reduces_the_named_axis() -> None:
    rng = np.random.default_rng(1)
    p = rng.random((4, 5, 3))
    p /= p.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(ce.entropy(p, axis=1), scipy.stats.entropy(p, axis=1), rtol=1e-12)
    assert np.shape(ce.entropy(p, axis=1)) == (4, 3)


def test_renormalize_true_matches_scipy_which_always_normalises() -> None:
    rng = np.random.default_rng(2)
    counts = rng.integers(0, 9, size=(6, 4))
    counts[:, 0] += 1
    other = rng.random((6, 4)) + 0.1
    np.testing.assert_allclose(
        ce.entropy(counts, renormalize=True), scipy.stats.entropy(counts, axis=-1), rtol=1e-12
    )
    np.testing.assert_allclose(
        ce.kl_divergence(counts, other, renormalize=True),
        scipy.stats.entropy(counts, other, axis=-1),
        rtol=1e-12,
    )


@pytest.mark.parametrize(
    ("p", "match"),
    [
        ([0.5, -0.1, 0.6], r"p must hold probabilities >= 0.*-0\.1 at index \(1,\)"),
        ([0.5, float("nan"), 0.5], r"NaN.*index \(1,\)"),
        ([0.5, float("inf")], r"finite.*inf at index \(1,\)"),
        ([[0.5, 0.5], [0.5, 0.4]], r"must sum to 1.*index \(1,\) sums to 0\.9"),
    ],
)
def test_entropy_rejects_non_distributions(p: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ce.entropy(p)


def test_sum_tolerance_depends_on_dtype() -> None:
    # 5e-4 off is float16 rounding but far outside float32 or float64 rounding (whose tolerance,
    # about 1e-5, covers float32 arithmetic).
    p = np.array([0.5, 0.5 + 5e-4])
    for dtype in (np.float64, np.float32):
        with pytest.raises(ValueError, match=str(np.dtype(dtype))):
            ce.entropy(p.astype(dtype))
    assert float(ce.entropy(p.astype(np.float16))) == pytest.approx(math.log(2), rel=1e-3)


def test_divergence_argument_errors() -> None:
    with pytest.raises(ValueError, match=r"q must sum to 1"):
        ce.kl_divergence([0.5, 0.5], [0.5, 0.6])
    with pytest.raises(ValueError, match=r"broadcastable shapes.*\(2,\).*\(3,\)"):
        ce.cross_entropy([0.5, 0.5], [0.2, 0.3, 0.5])
    with pytest.raises(ValueError, match="sums to 0"):
        ce.entropy([[0.0, 0.0], [1.0, 1.0]], renormalize=True)
    with pytest.raises(ValueError, match="base"):
        ce.entropy([0.5, 0.5], base=1)
    with pytest.raises(ValueError, match="base"):
        ce.entropy([0.5, 0.5], base=-2)
    with pytest.raises(TypeError, match="base"):
        ce.entropy([0.5, 0.5], base="2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="axis=2 is out of range"):
        ce.entropy([[0.5, 0.5]], axis=2)
    with pytest.raises(TypeError, match="p must"):
        ce.entropy("abc")
    with pytest.raises(ValueError, match="scalar"):
        ce.entropy(1.0)


def test_broadcast_against_one_reference_distribution() -> None:
    rng = np.random.default_rng(3)
    p = rng.random((5, 4))
    p /= p.sum(axis=1, keepdims=True)
    ref = np.array([0.1, 0.2, 0.3, 0.4])
    np.testing.assert_allclose(
        ce.kl_divergence(p, ref), scipy.stats.entropy(p, np.tile(ref, (5, 1)), axis=1), rtol=1e-12
    )


@pytest.mark.parametrize("block", [7, 64, 1000])
def test_blocked_numpy_path_equals_generic_path(
    monkeypatch: pytest.MonkeyPatch, block: int
) -> None:
    """The NumPy fast path (cache-sized row blocks) gives the generic results and errors."""
    import crossentropy._info as info

    rng = np.random.default_rng(block)
    p = rng.random((300, 9))
    p[rng.random(p.shape) < 0.2] = 0.0
    p[:, 0] += 0.1
    p /= p.sum(axis=1, keepdims=True)
    q = rng.random((300, 9))
    q[5, p[5] > 0] = 0.0  # q misses p's support on row 5: KL and H(p, q) are inf there
    q[5, 0] = 1.0
    q /= q.sum(axis=1, keepdims=True)
    funcs = (ce.entropy, ce.cross_entropy, ce.kl_divergence, ce.js_divergence)
    generic = [np.asarray(f(p) if f is ce.entropy else f(p, q)) for f in funcs]
    monkeypatch.setattr(info, "_BLOCK_ELEMENTS", block)
    blocked = [np.asarray(f(p) if f is ce.entropy else f(p, q)) for f in funcs]
    for g, b in zip(generic, blocked):
        np.testing.assert_allclose(b, g, rtol=1e-13, atol=1e-15)
    assert np.isinf(blocked[2][5]) and np.isinf(blocked[1][5])
    np.testing.assert_allclose(blocked[2], scipy.special.rel_entr(p, q).sum(axis=1), rtol=1e-12)
    np.testing.assert_allclose(
        ce.kl_divergence(p * 3, q * 2, renormalize=True), blocked[2], rtol=1e-12, atol=1e-15
    )
    bad = q.copy()
    bad[250, 3] = -0.25
    with pytest.raises(
        ValueError, match=r"q must hold probabilities >= 0.*-0.25 at index \(250, 3\)"
    ):
        ce.kl_divergence(p, bad)
    off = p.copy()
    off[299] *= 1.01
    with pytest.raises(ValueError, match=r"index \(299,\) sums to 1.0(1|09)"):
        ce.entropy(off)
