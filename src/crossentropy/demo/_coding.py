"""Cross-entropy is code length: range coding with a model's predictions, and general compressors.

A model that gives the next symbol probability :math:`q(x_t \\mid c_t)` lets an arithmetic/range
coder store a sequence in about

.. math::

    L = \\sum_t -\\log_2 q(x_t \\mid c_t) \\ \\text{bits},

which is ``n`` times the cross-entropy of the model on the sequence. A real coder works with integer
frequencies: every probability is rounded to :math:`\\hat q = c / 2^{24}` with an integer
:math:`c \\ge 1` (:func:`quantize_table`), and the coder's output can never be shorter than
:math:`\\hat L = \\sum_t -\\log_2 \\hat q(x_t \\mid c_t)`, the cross-entropy of the
distribution it really codes with. :math:`\\hat L` may lie below :math:`L`: rounding gives a symbol
the model calls nearly impossible at least :math:`2^{-24}`, and when such a symbol occurs the coder
pays 24 bits where the model's bound charges more. So both bounds are reported, and the coder's
overhead is measured against :math:`\\hat L`.

The coder is ``constriction``'s range coder; the decoder sees only the quantised table and the
symbols it has already decoded, so a successful round trip shows the code really is decodable.
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

# constriction's default categorical models code with probabilities c / 2**PRECISION.
PRECISION = 24
# Rows of probabilities handed to the encoder at once: bounds the gathered (chunk, K) float32 block.
_ENCODE_CHUNK = 16384


@dataclass(frozen=True)
class CodingResult:
    """Outcome of coding one sequence with a model table."""

    n_symbols: int
    """Length of the coded sequence."""
    ideal_bits: float
    """The model's cross-entropy bound: ``sum_t -log2 q(x_t | c_t)`` (uniform for the first
    ``order`` symbols), with the model's float probabilities."""
    quantized_bits: float
    """The same sum with the quantised probabilities ``c / 2**24`` the coder codes with: the floor
    the coder's output cannot go below."""
    compressed_bits: int
    """Real size of the range coder's output (whole 32-bit words)."""
    round_trip: bool
    """Whether decoding gave back exactly the input."""

    @property
    def overhead_bits(self) -> float:
        """Output size minus the quantised bound; never negative."""
        return self.compressed_bits - self.quantized_bits

    @property
    def quantization_bits(self) -> float:
        """Quantised bound minus the model's bound (either sign)."""
        return self.quantized_bits - self.ideal_bits

    @property
    def within_bound(self) -> bool:
        """Real size at or above the quantised bound and within 0.5% plus 64 bits of it."""
        return 0 <= self.overhead_bits <= 0.005 * self.quantized_bits + 64


def normalized_table(table: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    """Model table as float64 rows that sum to 1, checked."""
    t = np.asarray(table, dtype=np.float64)
    if t.ndim != 2 or not np.all(np.isfinite(t)) or np.any(t < 0):
        raise ValueError(f"model table must be finite, non-negative and 2-D; got shape {t.shape}")
    sums = t.sum(axis=1, keepdims=True)
    if np.any(sums <= 0):
        raise ValueError("model table: every row needs a positive probability somewhere")
    return np.asarray(t / sums)


def quantize_table(table: npt.NDArray[np.floating]) -> npt.NDArray[np.int64]:
    r"""Integer frequencies :math:`c \ge 1` with :math:`\sum_x c_x = 2^{24}` on every row.

    .. math::

        c_x = 1 + \lfloor q_x (2^{24} - K) \rfloor, \text{ the rest of } 2^{24}
        \text{ added to the row's most probable symbol,}

    so every symbol stays codable and :math:`c_x / 2^{24}` is within :math:`K / 2^{24}` of
    :math:`q_x`.

    Args:
        table: ``(rows, K)`` non-negative probabilities (normalised here), ``2 <= K < 2**24 - 1``.

    Returns:
        ``(rows, K)`` int64 frequencies; the coder uses probability ``c / 2**24``.

    Example:
        >>> quantize_table(np.array([[0.5, 0.5, 0.0]])).tolist()
        [[8388608, 8388607, 1]]
    """
    q = normalized_table(table)
    k = q.shape[1]
    if not 2 <= k < (1 << PRECISION) - 1:
        raise ValueError(f"model table: need 2 <= K < 2**{PRECISION} - 1 symbols, got K={k}")
    free = (1 << PRECISION) - k
    counts = 1 + np.floor(q * free).astype(np.int64)
    # floor loses less than 1 per symbol, so the rest is in [0, K]; it goes where it costs least.
    rest = (1 << PRECISION) - counts.sum(axis=1)
    counts[np.arange(q.shape[0]), q.argmax(axis=1)] += rest
    return counts


def _coder_weights(counts: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
    """Float weights from which constriction rebuilds exactly ``counts``.

    constriction's fast quantiser (``perfect=False``) gives symbol ``i`` the left cumulative
    ``floor(W_i * (2**24 - K) / sum(w)) + i`` with ``W_i`` the running float sum of the weights
    before it. With integer weights ``w = c - 1`` every running sum is an integer below 2**24
    (exact in float32), ``sum(w) = 2**24 - K`` makes the scale exactly 1, and the cumulatives come
    out as ``sum(c[:i])``: the coder uses our ``c`` (``tests/demo/test_demo_coding.py`` probes
    this through the decoder).
    """
    return np.asarray(counts - 1, dtype=np.float32)


def ideal_bits(
    sequence: npt.NDArray[np.integer], table: npt.NDArray[np.floating], order: int
) -> float:
    """``sum_t -log2 q(x_t | c_t)`` under ``table`` (rows normalised in float64), the first
    ``order`` symbols uniform."""
    k = table.shape[1]
    seq = np.asarray(sequence, dtype=np.int64)
    ctx = contexts_of(seq, k, order)
    used, row = np.unique(ctx, return_inverse=True)
    sums = np.asarray(table[used], dtype=np.float64).sum(axis=1)
    p = np.asarray(table[ctx, seq[order:]], dtype=np.float64) / sums[row]
    with np.errstate(divide="ignore"):  # a symbol the model calls impossible costs infinitely many
        return float(order * math.log2(k) - np.log2(p).sum())


def range_code(
    sequence: npt.NDArray[np.integer], table: npt.NDArray[np.floating], order: int
) -> CodingResult:
    """Encode ``sequence`` with the context model ``table``, decode it back and measure the size.

    Args:
        sequence: symbols in ``[0, K)``, shape ``(n,)`` with ``n >= order``.
        table: ``(K**order, K)`` probabilities of the next symbol for every context index (the
            previous ``order`` symbols in base ``K``, most recent last); normalised and quantised
            (:func:`quantize_table`) here.
        order: context length.

    Returns:
        The :class:`CodingResult`: size, the model's and the quantised bound, and whether the
        round trip was exact.
    """
    import constriction

    table = np.asarray(table)
    if table.ndim != 2:
        raise ValueError(f"range_code: table must be 2-D (K**order, K); got shape {table.shape}")
    k = table.shape[1]
    if table.shape[0] != k**order:
        raise ValueError(
            f"range_code: table must have K**order = {k**order} rows, got {table.shape}"
        )
    seq = np.asarray(sequence, dtype=np.int64)
    if seq.ndim != 1 or seq.shape[0] < order:
        raise ValueError(f"range_code: sequence must be 1-D with at least {order} symbols")
    if seq.size and (seq.min() < 0 or seq.max() >= k):
        raise ValueError(
            f"range_code: symbols must lie in [0, {k}), got [{seq.min()}, {seq.max()}]"
        )
    ctx = contexts_of(seq, k, order)
    # Only the contexts that occur are quantised and handed to the coder (a byte model has 65536).
    used, row = np.unique(ctx, return_inverse=True)
    counts = quantize_table(table[used])
    weights = _coder_weights(counts)
    n = seq.shape[0]
    model = constriction.stream.model
    uniform_counts = quantize_table(np.ones((1, k)))[0]
    uniform = model.Categorical(_coder_weights(uniform_counts), perfect=False)

    encoder = constriction.stream.queue.RangeEncoder()
    encoder.encode(seq[:order].astype(np.int32), uniform)
    family = model.Categorical(perfect=False)
    for start in range(0, n - order, _ENCODE_CHUNK):
        stop = min(start + _ENCODE_CHUNK, n - order)
        symbols = seq[order + start : order + stop].astype(np.int32)
        encoder.encode(symbols, family, weights[row[start:stop]])
    compressed = encoder.get_compressed()

    row_of = np.full(k**order, -1, dtype=np.int64)
    row_of[used] = np.arange(used.shape[0])
    decoded = _decode(compressed, weights, row_of, n, order, uniform)
    # Each symbol costs -log2(c / 2**24) = 24 - log2(c) bits under the quantised model.
    c = np.concatenate([uniform_counts[seq[:order]], counts[row, seq[order:]]]).astype(np.float64)
    return CodingResult(
        n_symbols=n,
        ideal_bits=ideal_bits(seq, table, order),
        quantized_bits=float(n * PRECISION - np.log2(c).sum()),
        compressed_bits=int(compressed.size) * 32,
        round_trip=decoded is not None and bool(np.array_equal(decoded, seq)),
    )


def _decode(
    compressed: npt.NDArray[np.uint32],
    weights: npt.NDArray[np.float32],
    row_of: npt.NDArray[np.int64],
    n: int,
    order: int,
    uniform: object,
) -> npt.NDArray[np.int64] | None:
    """Decode ``n`` symbols, each with the weights row (``row_of[context]``) of the context
    decoded so far; None when decoding reaches a context the encoder never used."""
    import constriction

    k = weights.shape[1]
    decoder = constriction.stream.queue.RangeDecoder(compressed)
    out = np.empty(n, dtype=np.int64)
    ctx = 0
    for t in range(order):
        out[t] = int(decoder.decode(uniform))
        ctx = int(next_context(ctx, out[t], k, order))
    # One model object per context met, built from the same weights the encoder used.
    models: dict[int, object] = {}
    categorical = constriction.stream.model.Categorical
    for t in range(order, n):
        m = models.get(ctx)
        if m is None:
            r = int(row_of[ctx])
            if r < 0:
                return None
            m = models[ctx] = categorical(weights[r], perfect=False)
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
