"""GEMM helpers of the fused losses (``crossentropy.torch._gemm``): precision and fp32 accumulation."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from crossentropy.torch._gemm import resolve_precision


def test_precision_follows_inputs_autocast_and_device() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    bf16, f32, f64 = torch.bfloat16, torch.float32, torch.float64
    p = resolve_precision(cpu, bf16, bf16)
    assert (p.operand, p.compute, p.dz, p.tensor_cores) == (bf16, f32, f32, False)
    p = resolve_precision(cuda, bf16, bf16, autocast=False)
    assert (p.operand, p.compute, p.dz, p.tensor_cores) == (bf16, f32, bf16, True)
    p = resolve_precision(cuda, f32, bf16, autocast=False)  # mixed: the wider operand
    assert (p.operand, p.tensor_cores) == (f32, False)
    p = resolve_precision(cpu, f32, f64)
    assert (p.operand, p.compute, p.dz) == (f64, f64, f64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        p = resolve_precision(cpu, f32, f32)
        assert (p.operand, p.compute) == (bf16, f32)
        assert resolve_precision(cpu, f32, f32, autocast=False).operand == f32
        assert resolve_precision(cpu, f64, f64).operand == f64  # float64 is never recast
    assert "float32 operands" in resolve_precision(cpu, f32).describe()


def test_in_place_fp32_gemm_probe_trusts_only_a_correct_op(monkeypatch: pytest.MonkeyPatch) -> None:
    # The low-memory kernel's backward adds each slab's dX into its fp32 accumulator with
    # addmm(..., out_dtype=float32, out=acc) only where a one-time probe saw that op add in place
    # correctly; otherwise (op missing, or aliasing that drops acc) it keeps a separate GEMM.
    from crossentropy.torch import _gemm as L

    real_addmm = torch.addmm

    def exact(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor, **kw: Any) -> torch.Tensor:
        return acc.add_(a.float() @ b.float())

    def overwrites(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor, **kw: Any) -> torch.Tensor:
        return acc.copy_(a.float() @ b.float())  # beta = 0 by mistake

    for fake, want in ((None, False), (exact, True), (overwrites, False)):
        monkeypatch.setattr(L, "_ADDMM_INTO_F32_OK", {})
        monkeypatch.setattr(torch, "addmm", fake or real_addmm)
        # CPU torch has no addmm.dtype_out kernel, so the real op is "missing" here.
        assert L.addmm_into_f32_works(torch.device("cpu"), torch.bfloat16) is want
    monkeypatch.setattr(torch, "addmm", real_addmm)

    # float32 operands: plain in-place addmm_, same sum as a separate product.
    g = torch.Generator().manual_seed(3)
    acc = torch.randn(5, 7, generator=g)
    a, b = torch.randn(5, 3, generator=g), torch.randn(3, 7, generator=g)
    want_acc = acc + a @ b
    L.add_mm_f32_(acc, a, b)
    torch.testing.assert_close(acc, want_acc)
    # bf16 operands on CPU: the separate fp32 product.
    acc = torch.randn(5, 7, generator=g)
    a16, b16 = a.bfloat16(), b.bfloat16()
    want_acc = acc + a16.float() @ b16.float()
    L.add_mm_f32_(acc, a16, b16)
    torch.testing.assert_close(acc, want_acc, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    ("shape", "chunk"), [((0, 3), 4), ((1, 1), 4), ((5, 7), 3), ((33, 40), 64)]
)
def test_rounding_into_the_accumulator_storage_is_exact(
    dtype: torch.dtype, shape: tuple[int, int], chunk: int
) -> None:
    from crossentropy.torch._gemm import to_16bit_in_place

    g = torch.Generator().manual_seed(11)
    acc = torch.randn(shape, generator=g) * 1000
    want = acc.to(dtype)
    got = to_16bit_in_place(acc, dtype, chunk=chunk)
    assert got.dtype == dtype and got.shape == want.shape
    assert torch.equal(got, want)  # bitwise: every chunk read before it was overwritten
    assert got.untyped_storage().data_ptr() == acc.untyped_storage().data_ptr()
    with pytest.raises(ValueError, match="contiguous float32"):
        to_16bit_in_place(torch.zeros(4, 6).t(), dtype)
