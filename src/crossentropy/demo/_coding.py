"""Cross-entropy is code length: range coding with a model's predictions, and general compressors.

A model that gives the next symbol probability :math:`q(x_t \\mid c_t)` lets an arithmetic/range
coder store a sequence in about

.. math::

    L = \\sum_t -\\log_2 q(x_t \\mid c_t) \\ \\text{bits}

(plus a few bits of termination and the rounding of probabilities to integers), which is ``n``
times the cross-entropy of the model on the sequence. The coder here is ``constriction``'s range
coder with categorical models; the decoder sees only the model table and the symbols it has already
decoded, so a successful round trip shows the code really is decodable.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from crossentropy.demo._source import contexts_of, next_context

# Rows of probabilities handed to the encoder at once: bounds the gathered (chunk, K) float32 block.
_ENCODE_CHUNK = 16384


@dataclass(frozen=True)
class CodingResult:
    """Outcome of coding one sequence with a model table."""

    n_symbols: int
    """Length of the coded sequence."""
    ideal_bits: float
    """The cross-entropy bound: ``sum_t -log2 q(x_t | c_t)`` (uniform for the first ``order``)."""
    compressed_bits: int
    """Real size of the range coder's output (whole 32-bit words)."""
    round_trip: bool
    """Whether decoding gave back exactly the input."""

    @property
    def overhead_bits(self) -> float:
        return self.compressed_bits - self.ideal_bits

    @property
    def within_bound(self) -> bool:
        """Real size within 0.5% plus 64 bits of the cross-entropy bound (both directions)."""
        return abs(self.overhead_bits) <= 0.005 * self.ideal_bits + 64


def normalized_table(table: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    """Model table as float32 rows that sum to 1 (what the coder is given, encoder and decoder)."""
    t = np.asarray(table, dtype=np.float64)
    if t.ndim != 2 or not np.all(np.isfinite(t)) or np.any(t < 0):
        raise ValueError(f"model table must be finite, non-negative and 2-D; got shape {t.shape}")
    t = t / t.sum(axis=1, keepdims=True)
    return np.asarray(t, dtype=np.float32)


def ideal_bits(
    sequence: npt.NDArray[np.integer], table: npt.NDArray[np.float32], order: int
) -> float:
    """``sum_t -log2 q(x_t | c_t)`` under ``table`` (float64), the first ``order`` symbols uniform."""
    k = table.shape[1]
    seq = np.asarray(sequence, dtype=np.int64)
    ctx = contexts_of(seq, k, order)
    rows = table.astype(np.float64)
    p = rows[ctx, seq[order:]] / rows[ctx].sum(axis=1)
    return float(order * math.log2(k) - np.log2(p).sum())


def range_code(
    sequence: npt.NDArray[np.integer], table: npt.NDArray[np.floating], order: int
) -> CodingResult:
    """Encode ``sequence`` with the context model ``table``, decode it back and measure the size.

    Args:
        sequence: symbols in ``[0, K)``, shape ``(n,)`` with ``n >= order``.
        table: ``(K**order, K)`` probabilities of the next symbol for every context index (the
            previous ``order`` symbols in base ``K``, most recent last); normalised here.
        order: context length.

    Returns:
        The :class:`CodingResult` (size, bound, and whether the round trip was exact).
    """
    import constriction

    probs = normalized_table(table)
    k = probs.shape[1]
    if probs.shape[0] != k**order:
        raise ValueError(
            f"range_code: table must have K**order = {k**order} rows, got {probs.shape}"
        )
    seq = np.asarray(sequence, dtype=np.int64)
    if seq.ndim != 1 or seq.shape[0] < order:
        raise ValueError(f"range_code: sequence must be 1-D with at least {order} symbols")
    if seq.size and (seq.min() < 0 or seq.max() >= k):
        raise ValueError(
            f"range_code: symbols must lie in [0, {k}), got [{seq.min()}, {seq.max()}]"
        )
    n = seq.shape[0]
    model = constriction.stream.model
    uniform = model.Categorical(np.full(k, 1.0 / k, dtype=np.float32), perfect=False)

    encoder = constriction.stream.queue.RangeEncoder()
    encoder.encode(seq[:order].astype(np.int32), uniform)
    ctx = contexts_of(seq, k, order)
    family = model.Categorical(perfect=False)
    for start in range(0, n - order, _ENCODE_CHUNK):
        stop = min(start + _ENCODE_CHUNK, n - order)
        symbols = seq[order + start : order + stop].astype(np.int32)
        encoder.encode(symbols, family, probs[ctx[start:stop]])
    compressed = encoder.get_compressed()

    decoded = _decode(compressed, probs, n, order, uniform)
    return CodingResult(
        n_symbols=n,
        ideal_bits=ideal_bits(seq, probs, order),
        compressed_bits=int(compressed.size) * 32,
        round_trip=bool(np.array_equal(decoded, seq)),
    )


def _decode(
    compressed: npt.NDArray[np.uint32],
    probs: npt.NDArray[np.float32],
    n: int,
    order: int,
    uniform: object,
) -> npt.NDArray[np.int64]:
    """Decode ``n`` symbols, each with the model row of the context decoded so far."""
    import constriction

    k = probs.shape[1]
    decoder = constriction.stream.queue.RangeDecoder(compressed)
    out = np.empty(n, dtype=np.int64)
    ctx = 0
    for t in range(order):
        out[t] = int(decoder.decode(uniform))
        ctx = int(next_context(ctx, out[t], k, order))
    # One model object per context met, built from the same float32 row the encoder used.
    models: dict[int, object] = {}
    categorical = constriction.stream.model.Categorical
    for t in range(order, n):
        m = models.get(ctx)
        if m is None:
            m = models[ctx] = categorical(probs[ctx], perfect=False)
        x = int(decoder.decode(m))
        out[t] = x
        ctx = (ctx * k) % (k**order) + x
    return out


def baseline_bits(data: bytes) -> dict[str, int]:
    """Compressed size in bits of ``data`` with gzip, bz2 and lzma at their strongest settings."""
    return {
        "gzip": 8 * len(gzip.compress(data, compresslevel=9, mtime=0)),
        "bz2": 8 * len(bz2.compress(data, compresslevel=9)),
        "lzma": 8 * len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)),
    }
