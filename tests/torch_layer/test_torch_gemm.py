"""GEMM helpers of the fused losses (``crossentropy.torch.engine._gemm``): precision and fp32 accumulation."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from crossentropy.torch.engine._gemm import resolve_precision


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
    from crossentropy.torch.engine import _gemm as L

    real_addmm = torch.addmm

    def exact(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor, **kw: Any) -> torch.Tensor:
        return acc.add_(a.float() @ b.float())

    def overwrites(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor, **kw: Any) -> torch.Tensor:
        return acc.copy_(a.float() @ b.float())  # beta = 0 by mistake

    for fake, want in ((None, False), (exact, True), (overwrites, False)):
        monkeypatch.setattr(L, "_ADDMM_INTO_F32", {})
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
    from crossentropy.torch.engine._gemm import to_16bit_in_place

    g = torch.Generator().manual_seed(11)
    acc = torch.randn(shape, generator=g) * 1000
    want = acc.to(dtype)
    got = to_16bit_in_place(acc, dtype, chunk=chunk)
    assert got.dtype == dtype and got.shape == want.shape
    assert torch.equal(got, want)  # bitwise: every chunk read before it was overwritten
    assert got.untyped_storage().data_ptr() == acc.untyped_storage().data_ptr()
    with pytest.raises(ValueError, match="contiguous float32"):
        to_16bit_in_place(torch.zeros(4, 6).t(), dtype)


def _fresh_probe(monkeypatch: pytest.MonkeyPatch) -> Any:
    from crossentropy.torch.engine import _gemm as L

    monkeypatch.setattr(L, "_MM_OUT_DTYPE", {})
    monkeypatch.setattr(L, "_MM_WARNED", set())
    return L


def test_fp32_output_probe_falls_back_only_for_a_missing_op(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Probed once, at first use: a missing op (older torch's TypeError) falls back with a warning
    # that names it, and the reason is remembered; the op is not called again to find out.
    L = _fresh_probe(monkeypatch)
    calls = []
    real_mm = torch.mm

    def old_torch_mm(a: torch.Tensor, b: torch.Tensor, **kw: Any) -> torch.Tensor:
        calls.append(kw)
        if "out_dtype" in kw:
            raise TypeError("mm() got an unexpected keyword argument 'out_dtype'")
        return real_mm(a, b)

    monkeypatch.setattr(torch, "mm", old_torch_mm)
    dev = torch.device("cpu")
    with pytest.warns(UserWarning, match="unavailable .*TypeError.*round their fp32"):
        why = L.fp32_output_problem(dev, torch.bfloat16)
    assert why is not None and "out_dtype" in why
    n_calls = len(calls)
    assert L.fp32_output_problem(dev, torch.bfloat16) == why and len(calls) == n_calls


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("CUDA error: an illegal memory access was encountered"),
        RuntimeError("CUDA error: device-side assert triggered"),
        torch.OutOfMemoryError("CUDA out of memory"),
    ],
)
def test_fp32_output_probe_reraises_a_broken_device(
    monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    # A sticky CUDA error left by an earlier kernel (or memory pressure) is not a missing
    # feature: it is raised, and nothing is decided, so no process silently switches for good to
    # bf16-rounded logits.
    L = _fresh_probe(monkeypatch)

    def broken(*args: Any, **kw: Any) -> torch.Tensor:
        raise error

    monkeypatch.setattr(torch, "mm", broken)
    with pytest.raises(type(error)):
        L.fp32_output_problem(torch.device("cpu"), torch.bfloat16)
    assert L._MM_OUT_DTYPE == {}


def test_explain_shows_the_fp32_output_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    from crossentropy.torch.engine import _dispatch as D
    from crossentropy.torch.engine._gemm import resolve_precision

    L = _fresh_probe(monkeypatch)
    cuda = torch.device("cuda")
    prec = resolve_precision(cuda, torch.bfloat16, autocast=False)
    kw: dict[str, Any] = dict(
        kind="linear",
        device=cuda,
        prec=prec,
        dtypes_ok=None,
        impl="torch",
        memory="auto",
        scalar=True,
        composable=None,
        process_group=None,
        native_ok=None,
        triton_rows_ok=None,
        rows=64,
        vocab=1000,
        blocks=1,
        chunk_size=None,
    )
    assert not any("rounds" in r for r in D.plan("f", **kw).reasons)
    L._MM_OUT_DTYPE[("cuda", torch.bfloat16)] = "torch.mm(out_dtype=float32) is unavailable (x)"
    text = str(D.plan("f", **kw))
    assert "unavailable (x): the logits GEMM rounds its fp32 accumulation to bfloat16" in text


def test_first_block_writes_the_accumulator_without_reading_it() -> None:
    # d(weight) starts as torch.empty: the first block's GEMM overwrites it (beta = 0), so garbage
    # (here NaN) in the fresh buffer never reaches the result, and no zero-filling pass is needed.
    from crossentropy.torch.engine._gemm import add_mm_f32_

    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(6, 4, generator=g), torch.randn(4, 9, generator=g)
    for a_, b_ in ((a, b), (a.bfloat16(), b.bfloat16())):
        acc = torch.full((6, 9), float("nan"))
        add_mm_f32_(acc, a_, b_, first=True)
        add_mm_f32_(acc, a_, b_)
        torch.testing.assert_close(acc, 2 * (a_.float() @ b_.float()), rtol=1e-5, atol=1e-5)


def test_block_rows_use_the_budget_in_multiples_of_128() -> None:
    from crossentropy.torch.engine._chunked import block_rows

    # 1 GiB of fp32 logits at V=151936 holds 1766 rows: 1664 (13 x 128), not 1024
    assert block_rows(8192, 151936, budget=1 << 30, blocks=1) == 1664
    assert block_rows(8192, 256000, budget=1 << 30, blocks=1) == 1024
    assert block_rows(100, 256000, budget=1 << 30, blocks=1) == 100  # fewer rows than fit
    assert block_rows(8192, 128256, budget=2**25, blocks=1) == 64  # under 128: a power of two
    assert block_rows(8192, 10**7, budget=2**20, blocks=1) == 16  # never under 16
