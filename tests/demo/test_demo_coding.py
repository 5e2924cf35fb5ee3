"""Range coding with a model table: exact round trip, and size at the cross-entropy bound."""

from __future__ import annotations

import bz2
import gzip
import lzma
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossentropy.demo._coding import baseline_bits, ideal_bits, range_code
from crossentropy.demo._source import random_source


@settings(max_examples=25, deadline=None)
@given(
    k=st.integers(2, 40),
    order=st.integers(1, 2),
    n=st.integers(2, 3000),
    concentration=st.floats(0.05, 3.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_round_trip_and_size_at_the_bound(
    k: int, order: int, n: int, concentration: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    source = random_source(k, order, concentration, rng)
    seq = source.sample(1, max(n, order), rng)[0]
    # Code with a model that differs from the source (so the bound is a cross-entropy, not H).
    model = random_source(k, order, 1.0, rng).transition * 0.3 + source.transition * 0.7
    result = range_code(seq, model.astype(np.float32), order)
    assert result.round_trip
    assert result.within_bound
    assert abs(result.compressed_bits - result.ideal_bits) <= 0.005 * result.ideal_bits + 64


def test_ideal_bits_is_the_sum_of_code_lengths() -> None:
    rng = np.random.default_rng(1)
    table = rng.dirichlet(np.ones(6), size=36).astype(np.float32)
    seq = rng.integers(0, 6, size=500)
    q = table.astype(np.float64)
    q /= q.sum(axis=1, keepdims=True)
    expected = 2 * math.log2(6) + sum(
        -math.log2(q[seq[t - 2] * 6 + seq[t - 1], seq[t]]) for t in range(2, 500)
    )
    assert ideal_bits(seq, table, 2) == pytest.approx(expected, rel=1e-12)


def test_uniform_model_costs_log2_k_per_symbol() -> None:
    seq = np.random.default_rng(2).integers(0, 32, size=4000)
    result = range_code(seq, np.full((32, 32), 1 / 32), 1)
    assert result.round_trip
    assert result.ideal_bits == pytest.approx(4000 * 5.0)
    assert 20000 <= result.compressed_bits <= 20000 + 64


def test_a_confident_wrong_model_still_round_trips() -> None:
    # Probabilities near zero on the symbols that occur: long codes, but decodable.
    k = 8
    table = np.full((k, k), 1e-6)
    table[:, 0] = 1.0
    seq = np.random.default_rng(3).integers(1, k, size=200)
    result = range_code(seq, table, 1)
    assert result.round_trip
    assert result.ideal_bits > 200 * 19  # each symbol costs about -log2(1e-6) bits


def test_range_code_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="rows"):
        range_code(np.array([0, 1, 2]), np.full((5, 4), 0.25), 1)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        range_code(np.array([0, 1, 7]), np.full((4, 4), 0.25), 1)
    with pytest.raises(ValueError, match="non-negative"):
        range_code(np.array([0, 1]), np.full((4, 4), -0.25), 1)


def test_baselines_are_the_compressors_output_sizes() -> None:
    data = bytes(
        random_source(16, 1, 0.3, np.random.default_rng(4))
        .sample(1, 5000, np.random.default_rng(5))[0]
        .astype(np.uint8)
    )
    sizes = baseline_bits(data)
    assert sizes["gzip"] == 8 * len(gzip.compress(data, compresslevel=9, mtime=0))
    assert sizes["bz2"] == 8 * len(bz2.compress(data, compresslevel=9))
    assert sizes["lzma"] == 8 * len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))
    assert all(0 < v < 8 * len(data) for v in sizes.values())
