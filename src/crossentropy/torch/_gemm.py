"""How the logits GEMM and the gradient GEMMs of the fused losses run: dtypes and precision.

A :class:`Precision` is resolved once per call, at the public entry, from the inputs' dtypes, the
autocast state and the device:

* ``operand``: the dtype both GEMM operands are rounded to. The inputs' own dtype, or under
  ``torch.autocast`` the autocast dtype, as ``torch.nn.functional.linear`` would use.
* ``compute``: the dtype of the logits and of all softmax math: float32, float64 when any input
  is float64 (gradcheck).
* ``dz``: the dtype d(logits) is stored in for the two gradient GEMMs. The operand dtype on CUDA
  (tensor cores), the compute dtype elsewhere.
* ``tensor_cores``: 16-bit operands multiplied on CUDA with fp32 output and accumulation
  (``torch.mm(..., out_dtype=torch.float32)``). Elsewhere 16-bit operands are widened to fp32 first,
  which gives the same products exactly (a 16-bit value is exact in fp32).

Float32 operands follow ``torch.get_float32_matmul_precision()`` like every ``torch.mm``: TF32 tensor
cores where the user allowed them (``"high"``/``"medium"``), full fp32 otherwise.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "Precision",
    "add_mm_f32_",
    "addmm_into_f32_works",
    "autocast_dtype",
    "mm_f32",
    "resolve_precision",
    "to_16bit_in_place",
]

_HALF = (torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class Precision:
    """Dtypes of one fused call (see the module docstring)."""

    operand: torch.dtype
    compute: torch.dtype
    dz: torch.dtype
    tensor_cores: bool
    exact: bool = False  # full-precision fp32 products whatever torch's matmul precision says

    def describe(self) -> str:
        if self.exact:
            return "float32 operands as given, full fp32 products (no TF32); fp32 softmax math"
        ops = str(self.operand).replace("torch.", "")
        comp = str(self.compute).replace("torch.", "")
        if self.tensor_cores:
            return f"{ops} operands on tensor cores with {comp} output; {comp} softmax math"
        if self.operand in _HALF:
            return f"{ops} operands widened to {comp} (exact); {comp} softmax math"
        if self.operand == torch.float32:
            prec = torch.get_float32_matmul_precision()
            how = "full fp32 products" if prec == "highest" else f"TF32 allowed ({prec!r})"
            return f"float32 operands, {how}; {comp} softmax math"
        return f"{ops} operands; {comp} softmax math"


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The autocast dtype active for ``device_type``, or None when autocast is off there."""
    try:
        if not torch.is_autocast_enabled(device_type):
            return None
        return torch.get_autocast_dtype(device_type)
    except (RuntimeError, TypeError, AttributeError):  # a device type autocast does not know
        return None


def resolve_precision(
    device: torch.device, *dtypes: torch.dtype | None, autocast: bool = True
) -> Precision:
    """The :class:`Precision` of a call whose GEMM inputs have ``dtypes`` (None entries skipped).

    ``autocast``: honour an active ``torch.autocast`` region (the projection then runs in its dtype,
    as ``F.linear`` would). float64 inputs are never recast.
    """
    present = [d for d in dtypes if d is not None]
    if any(d == torch.float64 for d in present):
        return Precision(torch.float64, torch.float64, torch.float64, False)
    operand = None
    if autocast:
        operand = autocast_dtype(device.type)
    if operand is None:
        # one operand dtype for the GEMM: the widest of the inputs (mixed 16-bit/fp32 -> fp32)
        operand = torch.float32 if any(d == torch.float32 for d in present) else None
        if operand is None:
            operand = present[0] if present else torch.float32
    cores = device.type == "cuda" and operand in _HALF
    dz = operand if cores else torch.float32
    return Precision(operand, torch.float32, dz, cores)


def exact_fp32(device: torch.device, *dtypes: torch.dtype | None) -> Precision:
    """The precision of an fp32 head: operands widened to fp32 as given (no autocast rounding),
    full-precision products; float64 stays float64."""
    if any(d == torch.float64 for d in dtypes if d is not None):
        return Precision(torch.float64, torch.float64, torch.float64, False)
    return Precision(torch.float32, torch.float32, torch.float32, False, exact=True)


@contextlib.contextmanager
def exact_products(prec: Precision) -> Iterator[None]:
    """Within: fp32 matmuls use full-precision products when ``prec.exact`` (torch's global
    float32 matmul precision is set to "highest" and restored after)."""
    if not prec.exact:
        yield
        return
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


_MM_OUT_DTYPE_OK: dict[str, bool] = {}


def mm_f32(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` of 16-bit operands with fp32 output and accumulation (tensor cores on CUDA)."""
    if a.device.type == "cuda" and _MM_OUT_DTYPE_OK.get("cuda", True):
        try:
            return torch.mm(a, b, out_dtype=torch.float32)  # type: ignore[call-arg]
        except torch.OutOfMemoryError:
            raise  # not a missing feature: keep the fp32-output GEMM for later calls
        except (RuntimeError, TypeError, NotImplementedError):
            # torch without mm(..., out_dtype=) (TypeError) or without it for this dtype/GPU.
            _MM_OUT_DTYPE_OK["cuda"] = False
    if a.device.type == "cuda":
        # Older torch: the GEMM still accumulates in fp32 but rounds the result to 16 bits once.
        return torch.mm(a, b).float()
    return a.float() @ b.float()


_ADDMM_INTO_F32_OK: dict[tuple[str, torch.dtype], bool] = {}


def addmm_into_f32_works(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``torch.addmm(acc, a, b, out_dtype=float32, out=acc)`` adds in place, correctly.

    Checked once per (device type, dtype) on a small product against an fp32 reference, so a torch
    build without the op, or one whose ``out=`` aliasing misbehaves, falls back to a separate GEMM.
    """
    key = (device.type, dtype)
    if key not in _ADDMM_INTO_F32_OK:
        gen = torch.Generator().manual_seed(0)
        a = torch.randn(64, 48, generator=gen).to(device=device, dtype=dtype)
        b = torch.randn(48, 40, generator=gen).to(device=device, dtype=dtype)
        acc = torch.randn(64, 40, generator=gen).to(device)
        want = acc + a.float() @ b.float()
        try:
            torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)  # type: ignore[call-overload]
            ok = acc.dtype == torch.float32 and torch.allclose(acc, want, rtol=1e-4, atol=1e-4)
        except torch.OutOfMemoryError:
            raise  # not a missing feature: decide on a later call
        except (RuntimeError, TypeError, NotImplementedError):
            ok = False
        _ADDMM_INTO_F32_OK[key] = bool(ok)
    return _ADDMM_INTO_F32_OK[key]


def add_mm_f32_(acc: Tensor, a: Tensor, b: Tensor) -> None:
    """``acc += a @ b`` with ``acc`` float32 (or float64), in place where torch can."""
    if a.dtype == acc.dtype:
        acc.addmm_(a, b)
    elif a.device.type == "cuda" and addmm_into_f32_works(a.device, a.dtype):
        torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)  # type: ignore[call-overload]
    else:
        acc += mm_f32(a, b)


def to_16bit_in_place(acc: Tensor, dtype: torch.dtype, chunk: int = 1 << 24) -> Tensor:
    """Contiguous float32 ``acc`` rounded to the 2-byte ``dtype`` inside acc's own storage.

    Saves the separate 2-byte copy at the cost of the result keeping acc's 4-byte storage alive
    while it lives; fine for a gradient that flows on into the model and is freed, not for one kept
    as a ``.grad``. Front to back: result chunk k covers bytes [2 lo, 2 hi), which only hold fp32
    values of chunks before k or of chunk k itself, and chunk k is read into a temporary before it
    is written.
    """
    if acc.dtype != torch.float32 or not acc.is_contiguous():
        raise ValueError(
            f"to_16bit_in_place: expected a contiguous float32 tensor, got {acc.dtype}"
        )
    flat = acc.view(-1)
    m = flat.numel()
    out = flat.view(dtype)[:m]
    for lo in range(0, m, chunk):
        hi = min(m, lo + chunk)
        out[lo:hi].copy_(flat[lo:hi].to(dtype))
    return out.view(acc.shape)
