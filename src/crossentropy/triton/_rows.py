"""The cross-entropy row math on blocks of fp32 logits, with the softmax-CE kernels.

This is the row backend of the fast fused linear cross-entropy (6NDV): the engine's GEMM writes a
block of fp32 logits (without the bias: the kernels add it as they read), the forward kernel reads
it once for ``(ce, lse, A)``, and the backward kernel reads it once more and writes d(logits) over
it: in the GEMM operand dtype (bf16/fp16) into the first half of each fp32 row when the gradient
GEMMs run on tensor cores (see ``softmax_ce_backward`` for why that aliasing is safe), in place in
fp32 otherwise. So a block costs one fp32 (n, V) buffer, whatever the options.

Same math as :class:`crossentropy.torch.engine._rowmath.CrossEntropyRows` (its ``reference`` is inherited),
single process only (no vocabulary shards), soft-capping inside the kernels.
"""

from __future__ import annotations

import torch
from torch import Tensor

from crossentropy.torch.engine._rowmath import LOCAL, CrossEntropyRows, Merge, Upstream
from crossentropy.triton._softmax_ce import prepare_target, softmax_ce_backward, softmax_ce_forward

__all__ = [
    "TritonCrossEntropyRows",
]


class TritonCrossEntropyRows(CrossEntropyRows):
    """:class:`CrossEntropyRows` computed by the Triton softmax-CE kernels on fp32 blocks.

    Args:
        dz_dtype: dtype of the d(logits) the engine's gradient GEMMs take (bf16/fp16 on tensor
            cores, else float32).
        bias: (V,) bias the kernels add to every row of the blocks they read (the engine's GEMM
            then leaves it out: ``Head(bias_in_rows=True)``), or None.
        The rest as in :class:`CrossEntropyRows`.
    """

    def __init__(
        self,
        target: Tensor,
        *,
        dz_dtype: torch.dtype,
        bias: Tensor | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(prepare_target(target), **kwargs)  # type: ignore[arg-type]
        if self.offset or self.lmap.scale != 1.0 or self.lmap.temperature is not None:
            raise ValueError(
                "TritonCrossEntropyRows takes a whole vocabulary and no logit scale or temperature"
            )
        self.dz_dtype = dz_dtype
        self.bias = bias
        self.blocks = 1

    def _opts(self) -> tuple[int, float, float | None]:
        return self.ignore_index, self.eps, self.lmap.softcap

    def _out(self, raw: Tensor) -> Tensor:
        if self.dz_dtype == raw.dtype:
            return raw
        # the first half of every fp32 row, as 16-bit values
        return raw.view(self.dz_dtype)[:, : raw.shape[1]]

    def forward(
        self, raws: list[Tensor], i0: int, i1: int, merge: Merge
    ) -> tuple[list[Tensor], Tensor]:
        assert merge is LOCAL
        t = self.target[i0:i1]
        ce, lse, big_a = softmax_ce_forward(raws[0], t, self.weight, *self._opts(), bias=self.bias)
        return [ce, lse], torch.stack([lse, big_a], 1)

    def backward(
        self,
        raws: list[Tensor],
        i0: int,
        i1: int,
        merge: Merge,
        saved: Tensor,
        grads: list[Tensor | None],
        heads: tuple[bool, ...],
    ) -> list[Tensor | None]:
        raw = raws[0]
        lse, big_a = saved[:, 0].contiguous(), saved[:, 1].contiguous()
        t = self.target[i0:i1]
        dz = softmax_ce_backward(
            raw,
            t,
            self.weight,
            lse,
            big_a,
            grads[0],
            grads[1],
            *self._opts(),
            out=self._out(raw),
            bias=self.bias,
        )
        return [dz]

    def fused(
        self,
        raws: list[Tensor],
        i0: int,
        i1: int,
        merge: Merge,
        upstream: Upstream,
        heads: tuple[bool, ...],
    ) -> tuple[list[Tensor], list[Tensor | None]]:
        raw = raws[0]
        t = self.target[i0:i1]
        ce, lse, big_a = softmax_ce_forward(raw, t, self.weight, *self._opts(), bias=self.bias)
        if not heads[0]:
            return [ce, lse], [None]
        g_ce, g_lse = upstream([ce, lse])
        dz = softmax_ce_backward(
            raw,
            t,
            self.weight,
            lse,
            big_a,
            g_ce,
            g_lse,
            *self._opts(),
            out=self._out(raw),
            bias=self.bias,
        )
        return [ce, lse], [dz]
