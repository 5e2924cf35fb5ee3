"""One dispatch function: which engine runs a call, and why.

:func:`plan` maps (device, dtypes, autocast state, float32 matmul precision, options, reduction,
``memory``, process group, grad mode / transforms, ``impl``) to an engine:

=================  ===============================================================================
engine             what runs
=================  ===============================================================================
``native``         ``torch.nn.functional.cross_entropy`` itself (float32/float64 logits and only
                   torch's own options): the fastest for small classifiers
``plain``          plain differentiable torch ops on materialised logits: ``torch.func``
                   transforms, forward-mode AD, probability targets that require grad
``chunked``        the torch engine: blocks of rows, torch GEMMs (tensor cores with fp32 output
                   for 16-bit operands on CUDA) and the torch row math; CPU default, CUDA without
                   Triton, every vocab-parallel call
``cuda-fast``      the same blocks, with the Triton softmax-CE kernels as row math writing 16-bit
                   d(logits) in place (6NDV for ``mean``/``sum``): the CUDA default for
                   ``linear_cross_entropy``
``triton-lowmem``  the exact 8NDV Triton kernel that never stores logits: ``memory="low"``
``triton-softmax`` the Triton softmax-CE kernel on given logits: the CUDA default for
                   ``cross_entropy``
=================  ===============================================================================

``fused`` mode forms the gradients in the forward pass (a scalar loss: ``mean``/``sum``); ``rows``
mode returns per-row outputs for any upstream gradient and recomputes each block in the backward
pass (``none``, ``return_aux``, log-probabilities).

:func:`explain` runs a public function's argument checks and its dispatch without computing
anything, and returns the :class:`Plan` (``print`` it for the reasons).
"""

from __future__ import annotations

import importlib
import numbers
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from crossentropy.torch.engine._gemm import Precision

if TYPE_CHECKING:
    from crossentropy.torch.engine._run import PreparedCall

__all__ = [
    "MEMORY_MODES",
    "Plan",
    "budget_bytes",
    "check_memory",
    "explain",
    "plan",
    "plan_call",
    "triton_available",
]

MEMORY_MODES = ("auto", "low")

# Bytes for one block of (rows, V) buffers when ``memory="auto"``.
# CPU: 32 MiB per buffer, measured on the 2-core CPU machine (benchmarks/results/linear_ce_cpu.md:
# 0.87x torch's chunked linear CE at 8192 x 512 x 32000).
# CUDA: 1 GiB per buffer, the block size of the H100 feasibility probe (2048 rows of 128k-256k
# vocabularies; ../shared/measurements/fastmode-proto-*.json). Not tuned on a GPU yet.
_BUDGET_AUTO = {"cpu": 32 * 2**20, "cuda": 1 << 30}
_BUDGET_LOW = {"cpu": 8 * 2**20, "cuda": 256 * 2**20}


@dataclass(frozen=True)
class Plan:
    """The engine a call runs on, and why. ``str(plan)`` is a readable explanation."""

    function: str
    engine: str
    mode: str
    precision: Precision | None = None
    chunk: int | None = None
    rows: str = "torch"
    reasons: tuple[str, ...] = field(default=())

    def __str__(self) -> str:
        lines = [
            f"{self.function}: engine {self.engine!r}"
            + (f", {self.mode} mode" if self.mode else "")
        ]
        if self.precision is not None:
            lines.append(f"  precision: {self.precision.describe()}")
        if self.chunk is not None:
            lines.append(f"  block: {self.chunk} rows")
        lines.extend(f"  - {r}" for r in self.reasons)
        return "\n".join(lines)


def check_memory(fn: str, memory: object) -> str | int:
    """``"auto"``, ``"low"`` or a positive number of bytes for one block of logits buffers."""
    if isinstance(memory, str) and memory in MEMORY_MODES:
        return memory
    if (
        isinstance(memory, numbers.Integral)
        and not isinstance(memory, (bool, np.bool_))
        and int(memory) > 0
    ):
        return int(memory)
    raise ValueError(
        f"{fn}: memory must be 'auto', 'low' or a positive number of bytes; got {memory!r}"
    )


def budget_bytes(memory: str | int, device: torch.device) -> int:
    if isinstance(memory, int):
        return memory
    table = _BUDGET_LOW if memory == "low" else _BUDGET_AUTO
    return table["cuda" if device.type == "cuda" else "cpu"]


def _triton_import() -> tuple[bool, str]:
    if sys.modules.get("crossentropy.triton") is not None:
        return True, ""
    try:  # a failed import is retried on the next call (and costs little: nothing is cached)
        importlib.import_module("crossentropy.triton")
    except Exception as exc:  # ImportError, or a broken install raising something else
        return False, f"{type(exc).__name__}: {exc}"
    return True, ""


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_available(device: torch.device) -> tuple[bool, str]:
    """Whether the Triton kernels can run on ``device`` (CUDA, or CPU under TRITON_INTERPRET=1)."""
    if device.type != "cuda" and not triton_interpreting():
        return False, f"the Triton kernels run on CUDA; these tensors are on {device.type}"
    if device.type not in ("cuda", "cpu"):
        return False, f"the Triton kernels do not run on {device.type}"
    ok, why = _triton_import()
    return ok, ("" if ok else f"crossentropy.triton did not import ({why})")


def plan(
    fn: str,
    *,
    kind: str,
    device: torch.device,
    prec: Precision,
    dtypes_ok: str | None,
    impl: str,
    memory: str | int,
    scalar: bool,
    composable: str | None,
    process_group: Any,
    native_ok: str | None,
    triton_rows_ok: str | None,
    rows: int,
    vocab: int,
    blocks: int,
    chunk_size: int | None,
) -> Plan:
    """The engine for one call.

    Args:
        fn: the public function's name (for messages).
        kind: ``"linear"`` (hidden states and a weight), ``"logits"`` (given logits).
        device: where the tensors live.
        prec: the resolved precision (``_gemm.resolve_precision``).
        dtypes_ok: None when the Triton kernels take these dtypes, else why not.
        impl: ``"auto"``, ``"torch"`` or ``"triton"``.
        memory: ``"auto"``, ``"low"`` or bytes.
        scalar: the loss is a ``mean``/``sum`` scalar whose gradients may be formed in the forward
            pass (False for ``none``, ``return_aux`` and per-row outputs).
        composable: None, or why plain torch ops are needed (transforms, forward AD, ...).
        process_group: a vocab-parallel group or None.
        native_ok: for ``kind="logits"``: None when ``F.cross_entropy`` itself computes this call.
        triton_rows_ok: None when the Triton row kernels compute this row math (cross-entropy),
            else why not.
        rows, vocab, blocks: rows of the call, vocabulary (local shard), (n, V) buffers per block.
        chunk_size: rows per block asked for, or None.
    """
    reasons: list[str] = []
    mode = "fused" if scalar else "rows"
    if kind == "linear" and prec.tensor_cores and device.type == "cuda":
        from crossentropy.torch.engine import _gemm

        # probed once, at first use (a known result where no GPU can run the probe)
        key = (device.type, prec.operand)
        known = key in _gemm._MM_OUT_DTYPE
        why = (
            _gemm.fp32_output_problem(device, prec.operand)
            if known or torch.cuda.is_available()
            else None
        )
        if why is not None:
            op = str(prec.operand).replace("torch.", "")
            reasons.append(
                f"{why}: the logits GEMM rounds its fp32 accumulation to {op} once (less accurate)"
            )

    def chunk() -> int:
        if chunk_size is not None:
            reasons.append(f"chunk_size={chunk_size} rows per block, as asked")
            return max(1, min(chunk_size, max(rows, 1)))
        from crossentropy.torch.engine._chunked import block_rows

        budget = budget_bytes(memory, device)
        elem = torch.finfo(prec.compute).bits // 8
        c = block_rows(rows, vocab, budget=budget * blocks, blocks=blocks, elem=elem)
        reasons.append(
            f"block of {c} rows: {blocks} buffer(s) of {c} x {vocab} {elem}-byte values within "
            f"memory={memory!r} ({budget / 2**20:.0f} MiB per buffer on {device.type})"
        )
        return c

    if composable is not None:
        reasons.append(f"{composable}: plain differentiable torch ops (materialises the logits)")
        return Plan(fn, "plain", "", prec, None, "torch", tuple(reasons))
    if process_group is not None:
        if impl == "triton":
            reasons.append("impl='triton' has no vocab-parallel kernels: the torch engine runs")
        reasons.append("process_group given: vocab parallel over the torch engine")
        return Plan(fn, "vocab-parallel", mode, prec, chunk(), "torch", tuple(reasons))

    want_triton = impl == "triton" or (impl == "auto" and device.type == "cuda")
    triton_why = None
    if want_triton:
        triton_why = dtypes_ok if dtypes_ok is not None else triton_rows_ok
        if triton_why is not None and impl == "triton":
            from crossentropy.torch.engine._checks import kernel_fallback

            kernel_fallback(fn, triton_why, stacklevel=5)
        elif triton_why is None:
            ok, why = triton_available(device)
            if not ok and impl == "triton":
                # an explicit request is never silently downgraded to another implementation
                if _triton_import()[0]:
                    raise ValueError(
                        f"{fn}: impl='triton' needs CUDA tensors, got tensors on {device}. CPU "
                        "tensors run the kernels only under the Triton interpreter: set "
                        "TRITON_INTERPRET=1 before crossentropy.triton is first imported, or use "
                        "impl='torch'."
                    )
                raise RuntimeError(
                    f"{fn}: impl='triton' needs the crossentropy.triton kernels and the triton "
                    f"package (pip install 'crossentropy[triton]'); {why}"
                )
            if not ok:
                triton_why = why
    if impl == "torch":
        reasons.append("impl='torch'")
    elif impl == "auto" and device.type != "cuda":
        reasons.append(f"impl='auto' on {device.type}: the torch engines")
    elif triton_why is not None:
        reasons.append(f"the Triton kernels cannot run this call ({triton_why}): torch engines")

    use_triton = want_triton and triton_why is None
    if kind == "logits":
        if use_triton:
            reasons.append("Triton softmax-CE kernel on the given logits (one read, one write)")
            return Plan(fn, "triton-softmax", "rows", prec, None, "triton", tuple(reasons))
        if native_ok is None:
            reasons.append("torch's own F.cross_entropy computes exactly this call")
            return Plan(fn, "native", "", prec, None, "torch", tuple(reasons))
        reasons.append(f"not F.cross_entropy itself ({native_ok}): blocks of rows in fp32")
        return Plan(fn, "chunked", "rows", prec, chunk(), "torch", tuple(reasons))

    if use_triton and memory == "low":
        reasons.append("memory='low': the exact 8NDV kernel, logits never stored")
        return Plan(fn, "triton-lowmem", "rows", prec, None, "triton", tuple(reasons))
    if use_triton:
        reasons.append(
            "GEMM to fp32 logits, Triton row kernel writing d(logits) in place"
            + (" (6NDV: gradients formed in the forward pass)" if scalar else " (rows recomputed)")
        )
        return Plan(fn, "cuda-fast", mode, prec, chunk(), "triton", tuple(reasons))
    if scalar:
        reasons.append("mean/sum: gradients formed in the forward pass (6NDV)")
    else:
        reasons.append("per-row outputs: the backward recomputes each block (8NDV)")
    return Plan(fn, "chunked", mode, prec, chunk(), "torch", tuple(reasons))


def plan_call(call: PreparedCall) -> Plan:
    """The engine for a prepared call (:func:`plan` with the call's own fields)."""
    x = call.slots["x"]
    assert x is not None
    return plan(
        call.fn,
        kind=call.kind,
        device=x.device,
        prec=call.prec,
        dtypes_ok=call.dtypes_ok,
        impl=call.impl,
        memory=call.memory,
        scalar=call.scalar,
        composable=call.composable,
        process_group=call.group,
        native_ok=call.native_ok,
        triton_rows_ok=call.triton_rows_ok,
        rows=x.shape[0],
        vocab=call.vocab,
        blocks=call.blocks,
        chunk_size=call.chunk_size,
    )


# ------------------------------------------------------------------------------------------------
# explain()

_PLANNERS: dict[str, Callable[..., Plan]] = {}


def register_planner(name: str) -> Callable[[Callable[..., Plan]], Callable[..., Plan]]:
    def deco(f: Callable[..., Plan]) -> Callable[..., Plan]:
        _PLANNERS[name] = f
        return f

    return deco


def explain(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Plan:
    """Which engine ``function(*args, **kwargs)`` would run on, and why, without running it.

    ``function`` is one of :func:`~crossentropy.torch.cross_entropy`,
    :func:`~crossentropy.torch.linear_cross_entropy`, :func:`~crossentropy.torch.linear_logprobs`
    and :func:`~crossentropy.torch.linear_distillation_loss`, or a loss module instance
    (``CrossEntropyLoss``, ``LinearCrossEntropyLoss``). The arguments are checked exactly as the
    call would check them.

    Example:
        >>> import torch
        >>> from crossentropy.torch import explain, linear_cross_entropy
        >>> h, W, y = torch.randn(8, 16), torch.randn(100, 16), torch.randint(0, 100, (8,))
        >>> p = explain(linear_cross_entropy, h, W, y)
        >>> p.engine, p.mode
        ('chunked', 'fused')
    """
    name = getattr(function, "__name__", None)
    forward = getattr(function, "forward", None)
    if name not in _PLANNERS and forward is not None and hasattr(function, "explain"):
        return function.explain(*args, **kwargs)  # type: ignore[no-any-return]
    if name not in _PLANNERS:
        known = ", ".join(sorted(_PLANNERS))
        raise TypeError(
            f"explain: cannot explain {function!r}; it explains {known} and the loss modules"
        )
    return _PLANNERS[name](*args, **kwargs)
