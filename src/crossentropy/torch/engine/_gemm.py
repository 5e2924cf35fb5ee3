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
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "Precision",
    "add_mm_f32_",
    "addmm_into_f32_works",
    "autocast_dtype",
    "fp32_output_problem",
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


def _device_fault(exc: BaseException) -> bool:
    """An error that says the device is broken, not that an op is missing: a sticky CUDA error
    left by an earlier kernel, an illegal access, a device-side assertion. Never a reason to
    fall back to another op; re-raised."""
    text = str(exc)
    return any(
        key in text
        for key in ("CUDA error", "illegal memory", "device-side assert", "unspecified launch")
    )


def _probe_operands(device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(64, 48, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(48, 40, generator=gen).to(device=device, dtype=dtype)
    return a, b, a.float() @ b.float()


# (device type, dtype) -> None when torch.mm(..., out_dtype=float32) works, else why not
_MM_OUT_DTYPE: dict[tuple[str, torch.dtype], str | None] = {}
_MM_WARNED: set[tuple[str, torch.dtype]] = set()


def fp32_output_problem(device: torch.device, dtype: torch.dtype) -> str | None:
    """None when ``torch.mm(a, b, out_dtype=torch.float32)`` computes 16-bit products with fp32
    output on ``device``, else why not (the logits are then rounded to ``dtype`` once).

    Probed once per (device type, dtype), at first use, on a small product checked against an
    fp32 reference. A missing op (older torch: ``TypeError``; no kernel for this dtype or GPU)
    falls back with a one-time warning; an error that says the device is broken (a sticky CUDA
    error from an earlier kernel) is raised, never taken for a missing feature.
    """
    key = (device.type, dtype)
    if key not in _MM_OUT_DTYPE:
        a, b, want = _probe_operands(device, dtype)
        why: str | None = None
        try:
            got = torch.mm(a, b, out_dtype=torch.float32)  # type: ignore[call-arg]
            if got.dtype != torch.float32 or not torch.allclose(got, want, rtol=1e-4, atol=1e-4):
                why = f"torch.mm(out_dtype=float32) gave {got.dtype} values off the fp32 product"
        except torch.OutOfMemoryError:
            raise  # not a missing feature: decide on a later call
        except (RuntimeError, TypeError, NotImplementedError) as exc:
            if _device_fault(exc):
                raise
            why = f"torch.mm(out_dtype=float32) is unavailable ({type(exc).__name__}: {exc})"
        _MM_OUT_DTYPE[key] = why
        if why is not None and key not in _MM_WARNED:
            _MM_WARNED.add(key)
            warnings.warn(
                f"crossentropy: {why}; {str(dtype).replace('torch.', '')} logits GEMMs on "
                f"{device.type} round their fp32 accumulation to 16 bits once (less accurate "
                "losses and gradients). explain() shows this.",
                UserWarning,
                stacklevel=3,
            )
    return _MM_OUT_DTYPE[key]


def mm_f32(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` of 16-bit operands with fp32 output and accumulation (tensor cores on CUDA)."""
    if a.device.type == "cuda":
        if fp32_output_problem(a.device, a.dtype) is None:
            return torch.mm(a, b, out_dtype=torch.float32)  # type: ignore[call-arg]
        # Older torch: the GEMM still accumulates in fp32 but rounds the result to 16 bits once.
        return torch.mm(a, b).float()
    return a.float() @ b.float()


# (device type, dtype) -> (adds in place correctly, overwrites with beta=0 correctly)
_ADDMM_INTO_F32: dict[tuple[str, torch.dtype], tuple[bool, bool]] = {}


def _addmm_probe(device: torch.device, dtype: torch.dtype) -> tuple[bool, bool]:
    key = (device.type, dtype)
    if key not in _ADDMM_INTO_F32:
        a, b, prod = _probe_operands(device, dtype)
        acc = torch.randn(prod.shape, generator=torch.Generator().manual_seed(1)).to(device)
        want = acc + prod
        results = []
        for beta, start, target in (
            (1.0, acc, want),
            (0.0, torch.full_like(acc, float("nan")), prod),
        ):
            try:
                torch.addmm(start, a, b, beta=beta, out_dtype=torch.float32, out=start)  # type: ignore[call-overload]
                ok = start.dtype == torch.float32 and torch.allclose(
                    start, target, rtol=1e-4, atol=1e-4
                )
            except torch.OutOfMemoryError:
                raise  # not a missing feature: decide on a later call
            except (RuntimeError, TypeError, NotImplementedError) as exc:
                if _device_fault(exc):
                    raise
                ok = False
            results.append(bool(ok))
        _ADDMM_INTO_F32[key] = (results[0], results[0] and results[1])
    return _ADDMM_INTO_F32[key]


def addmm_into_f32_works(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``torch.addmm(acc, a, b, out_dtype=float32, out=acc)`` adds in place, correctly.

    Checked once per (device type, dtype) on a small product against an fp32 reference, so a torch
    build without the op, or one whose ``out=`` aliasing misbehaves, falls back to a separate GEMM.
    """
    return _addmm_probe(device, dtype)[0]


def add_mm_f32_(acc: Tensor, a: Tensor, b: Tensor, *, first: bool = False) -> None:
    """``acc += a @ b`` with ``acc`` float32 (or float64), in place where torch can.

    ``first``: ``acc`` holds nothing yet (``torch.empty``) and is written, not read (``beta=0``):
    no zero-filling pass over an accumulator that may be gigabytes (a (V, D) weight gradient).
    """
    if a.dtype == acc.dtype:
        if first:
            torch.mm(a, b, out=acc)
        else:
            acc.addmm_(a, b)
    elif a.device.type == "cuda" and addmm_into_f32_works(a.device, a.dtype):
        if first and not _addmm_probe(a.device, a.dtype)[1]:
            acc.zero_()
            first = False
        torch.addmm(acc, a, b, beta=0.0 if first else 1.0, out_dtype=torch.float32, out=acc)  # type: ignore[call-overload]
    elif first:
        acc.copy_(mm_f32(a, b))
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
