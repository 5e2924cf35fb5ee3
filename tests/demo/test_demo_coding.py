"""Range coding with a model table: exact round trip, size at and never below the coder's bound."""

from __future__ import annotations

import bz2
import gzip
import lzma
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossentropy.demo._coding import (
    PRECISION,
    _coder_weights,
    baseline_bits,
    ideal_bits,
    quantize_table,
    range_code,
)
from crossentropy.demo._source import contexts_of, random_source


def _quantized_bound(seq: np.ndarray, table: np.ndarray, order: int) -> float:
    """sum_t -log2(c / 2**24) with c from quantize_table, written out symbol by symbol."""
    k = table.shape[1]
    counts = quantize_table(table)
    uniform = quantize_table(np.ones((1, k)))[0]
    bits = sum(PRECISION - math.log2(uniform[x]) for x in seq[:order])
    ctx = contexts_of(seq, k, order)
    return bits + sum(
        PRECISION - math.log2(counts[c, x]) for c, x in zip(ctx.tolist(), seq[order:].tolist())
    )


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
    table = model.astype(np.float32)
    result = range_code(seq, table, order)
    assert result.round_trip
    assert result.within_bound
    assert result.quantized_bits == pytest.approx(_quantized_bound(seq, table, order), rel=1e-12)
    # A coder cannot beat the cross-entropy of the probabilities it codes with.
    assert 0 <= result.overhead_bits == result.compressed_bits - result.quantized_bits
    assert result.overhead_bits <= 0.005 * result.quantized_bits + 64
    # Rounding to 24 bits moves the bound by at most a few bits here (no tiny probabilities).
    assert abs(result.quantization_bits) <= 1e-4 * result.ideal_bits + 1


@settings(max_examples=40, deadline=None)
@given(
    k=st.integers(2, 300),
    rows=st.integers(1, 5),
    concentration=st.floats(0.01, 5.0),
    zeros=st.floats(0.0, 0.9),
    seed=st.integers(0, 2**32 - 1),
)
def test_quantize_table_keeps_every_symbol_and_sums_to_2_to_the_24(
    k: int, rows: int, concentration: float, zeros: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    q = rng.dirichlet(np.full(k, concentration), size=rows)
    q[rng.random(q.shape) < zeros] = 0.0
    q[:, 0] += 1e-3  # no all-zero row
    counts = quantize_table(q * 7.0)  # unnormalised on purpose
    assert counts.dtype == np.int64
    assert np.all(counts >= 1)
    assert np.all(counts.sum(axis=1) == 2**PRECISION)
    q /= q.sum(axis=1, keepdims=True)
    assert np.all(np.abs(counts / 2**PRECISION - q) <= k / 2**PRECISION)


@pytest.mark.parametrize("k", [2, 3, 16, 255, 256, 1000])
def test_the_coder_uses_exactly_the_quantised_counts(k: int) -> None:
    """Probe constriction's decoder: its first symbol from the 64-bit point ``C_s * scale`` is
    ``s`` exactly where the cumulative counts ``C`` of quantize_table say (scale = (2**64 - 1)
    >> 24 is the range coder's first step), so the coder's probabilities are ``c / 2**24``."""
    import constriction

    rng = np.random.default_rng(k)
    q = rng.dirichlet(np.full(k, 0.1))
    q[rng.integers(0, k)] = 0.0  # a zero gets count 1
    counts = quantize_table(q[None])[0]
    model = constriction.stream.model.Categorical(_coder_weights(counts), perfect=False)
    cumulative = [0, *np.cumsum(counts).tolist()]
    scale = (2**64 - 1) >> PRECISION

    def first_symbol(point: int) -> int:
        words = np.array([point >> 32, point & 0xFFFFFFFF], dtype=np.uint32)
        return int(constriction.stream.queue.RangeDecoder(words).decode(model))

    for s in range(k):
        assert first_symbol(cumulative[s] * scale) == s
        assert first_symbol(cumulative[s + 1] * scale - 1) == s


def test_rounding_can_beat_the_model_bound_but_never_the_coders() -> None:
    """The issue's case: a symbol the model calls nearly impossible (1e-12, 40 bits) occurs; the
    coder's rounded probability is 2**-24 (24 bits), so the output is shorter than the model's
    bound, and still at or above the bound of the probabilities it codes with."""
    k = 4
    table = np.full((k, k), 1e-12)
    table[:, 0] = 1.0
    seq = np.zeros(400, dtype=np.int64)
    seq[20::20] = 3  # 19 symbols of 40 bits each under the model
    result = range_code(seq, table, 1)
    assert result.round_trip
    assert result.ideal_bits > 19 * 39.8
    assert result.compressed_bits < result.ideal_bits
    assert result.quantization_bits < -19 * 15
    assert 0 <= result.overhead_bits <= 64
    assert result.quantized_bits == pytest.approx(_quantized_bound(seq, table, 1), rel=1e-12)


def test_ideal_bits_is_the_sum_of_code_lengths() -> None:
    rng = np.random.default_rng(1)
    table = rng.dirichlet(np.ones(6), size=36).astype(np.float32) * 3  # rows normalised inside
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
    assert result.quantized_bits == pytest.approx(4000 * 5.0)  # 2**19 counts each, exactly
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
    assert result.within_bound


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
