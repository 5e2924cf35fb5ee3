"""Block sizes, warps and slab sizes for the Triton kernels, all in one place.

The GPU values are first guesses for an H100 (SM90, bf16 inputs) and have not been tuned yet; the
interpreter values are small on purpose so that the CPU tests cross several tiles with tails.
Autotuning is opt-in: edit these functions (or monkeypatch them) rather than scattering constants.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "LinearConfig",
    "SoftmaxConfig",
    "linear_config",
    "next_power_of_2",
    "softmax_config",
]


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= n (1 for n <= 1)."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


@dataclass(frozen=True)
class SoftmaxConfig:
    """Tile of the softmax-CE kernels: ``block_n`` rows x ``block_v`` classes per step."""

    block_n: int
    block_v: int
    num_warps: int


@dataclass(frozen=True)
class LinearConfig:
    """Tiles of the fused linear-CE kernels.

    ``block_n x block_v`` logit tiles are accumulated over ``block_d`` slices of the hidden dim.
    ``v_splits`` programs share one row block's vocabulary in the forward pass (their partial
    logsumexps are merged in fp32 afterwards). The backward pass walks the vocabulary in slabs of
    ``slab_v`` classes: one (N, slab_v) block of d(logits) exists at a time.
    """

    block_n: int
    block_v: int
    block_d: int
    num_warps: int
    num_stages: int
    v_splits: int
    slab_v: int


def softmax_config(n_rows: int, n_cols: int, *, interpret: bool) -> SoftmaxConfig:
    """Tile for softmax-CE on (n_rows, n_cols) logits."""
    if interpret:
        # Small tiles: the CPU tests then cover several column tiles, a column tail and a row tail.
        return SoftmaxConfig(block_n=4, block_v=64, num_warps=1)
    # One row per program for LM-sized vocabularies (a row streams through in 8K-element steps);
    # several rows per program for small vocabularies so each program still moves ~4K elements.
    block_v = min(8192, max(16, next_power_of_2(n_cols)))
    block_n = max(1, min(64, 4096 // block_v))
    num_warps = 16 if block_v >= 8192 else 8 if block_v >= 2048 else 4
    return SoftmaxConfig(block_n=block_n, block_v=block_v, num_warps=num_warps)


def linear_config(
    n_rows: int,
    hidden: int,
    vocab: int,
    *,
    interpret: bool,
    num_sms: int = 132,
    elem_bytes: int = 2,
) -> LinearConfig:
    """Tiles for fused linear-CE on input (n_rows, hidden) and weight (vocab, hidden).

    ``elem_bytes`` is the input dtype's size: the backward's d(logits) slab is stored in it.
    """
    if interpret:
        return LinearConfig(
            block_n=16, block_v=32, block_d=16, num_warps=1, num_stages=1, v_splits=2, slab_v=64
        )
    block_n, block_v, block_d = 128, 128, 64
    row_blocks = -(-n_rows // block_n)
    v_tiles = -(-vocab // block_v)
    # Enough programs to fill every SM about twice, never more splits than vocabulary tiles.
    v_splits = max(1, min(v_tiles, -(-2 * num_sms // row_blocks)))
    # d(logits) slab of about 64 MiB in the input dtype.
    # At most 65535 vocabulary tiles per slab: the backward grid's second dimension is capped there.
    slab_bytes = 64 * 2**20
    slab_v = max(block_v, (slab_bytes // (elem_bytes * max(n_rows, 1))) // block_v * block_v)
    slab_v = min(slab_v, 65535 * block_v)
    return LinearConfig(
        block_n=block_n,
        block_v=block_v,
        block_d=block_d,
        num_warps=8,
        num_stages=3,
        v_splits=v_splits,
        slab_v=slab_v,
    )
