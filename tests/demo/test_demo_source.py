"""The Markov source: exact stationary distribution and entropy rate against independent checks."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from crossentropy.demo._source import (
    MarkovSource,
    contexts_of,
    entropy_rate,
    random_source,
    stationary_distribution,
)


def h2(p: float) -> float:
    return -p * math.log2(p) - (1 - p) * math.log2(1 - p)


@pytest.mark.parametrize(("a", "b"), [(0.1, 0.3), (0.5, 0.5), (0.9, 0.02)])
def test_two_state_chain_by_hand(a: float, b: float) -> None:
    # P = [[1-a, a], [b, 1-b]]: pi = (b, a) / (a + b), H = pi0 h2(a) + pi1 h2(b).
    source = MarkovSource(np.array([[1 - a, a], [b, 1 - b]]), n_symbols=2, order=1)
    pi = source.stationary()
    np.testing.assert_allclose(pi, [b / (a + b), a / (a + b)], rtol=1e-12)
    expected = b / (a + b) * h2(a) + a / (a + b) * h2(b)
    assert source.entropy_rate() == pytest.approx(expected, rel=1e-12)


def test_iid_source_has_the_entropy_of_its_row() -> None:
    # All rows equal: the source is i.i.d. and H is the entropy of that row.
    row = np.array([0.5, 0.25, 0.125, 0.125])
    source = MarkovSource(np.tile(row, (16, 1)), n_symbols=4, order=2)
    assert source.entropy_rate() == pytest.approx(1.75, rel=1e-12)


@settings(max_examples=30, deadline=None)
@given(
    k=st.integers(2, 7),
    order=st.integers(1, 2),
    concentration=st.floats(0.05, 5.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_stationary_and_entropy_rate_properties(
    k: int, order: int, concentration: float, seed: int
) -> None:
    source = random_source(k, order, concentration, np.random.default_rng(seed))
    pi = source.stationary()
    m = source.context_transition_matrix()
    np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-12)
    assert np.all(pi >= 0)
    assert pi.sum() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(pi @ m, pi, atol=1e-12)
    # Independent reference for the row entropies: scipy (float64, base 2).
    ref = float(pi @ scipy.stats.entropy(source.transition, base=2, axis=1))
    h = source.entropy_rate()
    assert h == pytest.approx(ref, rel=1e-10, abs=1e-12)
    assert -1e-12 <= h <= math.log2(k) + 1e-12


def test_stationary_matches_power_iteration() -> None:
    source = random_source(5, 2, 0.3, np.random.default_rng(3))
    m = source.context_transition_matrix()
    p = np.full(m.shape[0], 1.0 / m.shape[0])
    for _ in range(2000):
        p = p @ m
    np.testing.assert_allclose(source.stationary(), p, atol=1e-10)


def test_entropy_rate_matches_a_long_sample() -> None:
    # The sample mean of -log2 P(x_t | context) over stationary chains estimates H without bias.
    source = random_source(16, 2, 0.5, np.random.default_rng(11))
    seq = source.sample(200, 1000, np.random.default_rng(12))
    bits = -source.log2_prob(seq)
    chain_means = bits.mean(axis=1)  # independent chains: an honest standard error
    se = chain_means.std(ddof=1) / math.sqrt(chain_means.size)
    assert abs(bits.mean() - source.entropy_rate()) < 4 * se
    # Context frequencies follow the stationary distribution.
    freq = np.bincount(contexts_of(seq, 16, 2).ravel(), minlength=256) / bits.size
    assert np.abs(freq - source.stationary()).max() < 0.01


def test_contexts_of_matches_a_loop() -> None:
    rng = np.random.default_rng(0)
    seq = rng.integers(0, 5, size=37)
    for order in (1, 2, 3):
        expected = [
            sum(int(seq[t - order + j]) * 5 ** (order - 1 - j) for j in range(order))
            for t in range(order, seq.size)
        ]
        np.testing.assert_array_equal(contexts_of(seq, 5, order), expected)


def test_context_matrix_moves_to_the_shifted_context() -> None:
    source = random_source(3, 2, 1.0, np.random.default_rng(0))
    m = source.context_transition_matrix()
    for (a, b), x in itertools.product(itertools.product(range(3), repeat=2), range(3)):
        assert m[a * 3 + b, b * 3 + x] == pytest.approx(source.transition[a * 3 + b, x])


def test_entropy_rate_treats_zero_probabilities_as_zero() -> None:
    transition = np.array([[0.0, 1.0], [1.0, 0.0]])  # deterministic alternation
    pi = stationary_distribution(transition)
    np.testing.assert_allclose(pi, [0.5, 0.5])
    assert entropy_rate(transition, pi) == 0.0


@pytest.mark.parametrize(
    ("k", "order", "concentration", "match"),
    [
        (1, 1, 1.0, "n_symbols"),
        (300, 1, 1.0, "n_symbols"),
        (4, 0, 1.0, "order"),
        (4, 1, 0.0, "concentration"),
    ],
)
def test_random_source_rejects_bad_arguments(
    k: int, order: int, concentration: float, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        random_source(k, order, concentration, np.random.default_rng(0))


def test_sample_rejects_length_below_order() -> None:
    source = random_source(4, 2, 1.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="length"):
        source.sample(3, 1, np.random.default_rng(0))


@settings(max_examples=30, deadline=None)
@given(
    k=st.integers(2, 12),
    order=st.integers(1, 2),
    concentration=st.floats(0.05, 3.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_exact_rates_are_h_plus_kl_and_match_scipy(
    k: int, order: int, concentration: float, seed: int
) -> None:
    """The demo's exact cross-entropy and KL rates, each against its own reference, and the
    identity H(P, Q) = H + KL on the numbers (to float64 rounding)."""
    from crossentropy.demo._run import exact_rates

    rng = np.random.default_rng(seed)
    source = random_source(k, order, concentration, rng)
    pi = source.stationary()
    # Unnormalised rows, every entry positive (a zero under a positive p would cost infinity).
    table = (rng.dirichlet(np.full(k, concentration), size=k**order) + 1e-4) * 5.0
    q = table / table.sum(axis=1, keepdims=True)
    rates = exact_rates(source.transition, table, pi)
    kl = sum(
        w * scipy.stats.entropy(p_row, q_row, base=2)
        for w, p_row, q_row in zip(pi, source.transition, q)
    )
    ce = sum(
        w * sum(-p * math.log2(qq) for p, qq in zip(p_row, q_row))
        for w, p_row, q_row in zip(pi, source.transition, q)
    )
    assert rates["kl"] == pytest.approx(kl, rel=1e-9, abs=1e-12)
    assert rates["cross_entropy"] == pytest.approx(ce, rel=1e-12)
    assert abs(rates["cross_entropy"] - (source.entropy_rate() + rates["kl"])) <= 1e-12
    # The model that is the source: KL 0, cross-entropy rate H.
    same = exact_rates(source.transition, source.transition, pi)
    assert abs(same["kl"]) <= 1e-12
    assert same["cross_entropy"] == pytest.approx(source.entropy_rate(), rel=1e-12)
