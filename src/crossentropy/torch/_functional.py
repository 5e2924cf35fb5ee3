"""Public functional API: ``cross_entropy`` and ``linear_cross_entropy``.

Each function checks its arguments, picks the row math, asks ``_dispatch.plan`` for an engine and
runs it; none holds a chunk loop (those live in ``_engines``).
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Any, Literal, overload

import torch
import torch.nn.functional as F
from torch import Tensor

from crossentropy.torch import _validation as V
from crossentropy.torch.engine import _dispatch as D
from crossentropy.torch.engine import _ops
from crossentropy.torch.engine._gemm import Precision, autocast_dtype, resolve_precision
from crossentropy.torch.engine._reduce import (
    CrossEntropyAux,
    count_rows,
    reduce_rows,
    row_coefficients,
)
from crossentropy.torch.parallel import _dtensor as _sharded

__all__ = [
    "cross_entropy",
    "linear_cross_entropy",
]


def _vocab_parallel() -> Any:
    return importlib.import_module("crossentropy.torch.parallel._vocab")


@dataclass
class _Prepared:
    """A checked call: its rows, options and plan."""

    plan: D.Plan
    x: Tensor
    rows: V.Rows
    weight: Tensor | None
    ignore_index: int
    eps: float
    z_loss: float
    softcap: float | None
    reduction: str
    return_aux: bool
    w: Tensor | None = None
    b: Tensor | None = None


def _ce_params(
    prep: _Prepared, num_classes: int, prec: Precision, **extra: Any
) -> tuple[tuple[str, Any], ...]:
    params: dict[str, Any] = {
        "ignore_index": prep.ignore_index,
        "label_smoothing": prep.eps,
        "num_classes": num_classes,
        "softcap": prep.softcap,
    }
    params.update(extra)
    return tuple(sorted(params.items()))


def _reduce(prep: _Prepared, ce: Tensor, lse: Tensor) -> Tensor | CrossEntropyAux:
    return reduce_rows(
        ce,
        lse,
        prep.rows.target,
        weight=prep.weight,
        ignore_index=prep.ignore_index,
        reduction=prep.reduction,
        z_loss=prep.z_loss,
        return_aux=prep.return_aux,
        out_shape=prep.rows.out_shape,
    )


def _check_common(
    fn: str,
    reduction: object,
    impl: object,
    ignore_index: object,
    label_smoothing: object,
    z_loss: object,
    softcap: object,
) -> tuple[int, float, float, float | None]:
    V.check_reduction(fn, reduction)
    V.check_impl(fn, impl)
    return V.check_options(
        fn,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
    )


# ------------------------------------------------------------------------------------------------
# cross_entropy


def _native_problem(
    logits: Tensor,
    weight: Tensor | None,
    is_prob: bool,
    z_loss: float,
    softcap: float | None,
    return_aux: bool,
) -> str | None:
    """None when ``F.cross_entropy`` itself computes this call exactly (and in fp32/fp64)."""
    if is_prob:
        # torch reads 0 * log(0) on -inf-masked classes as NaN; the engines read it as 0
        return "probability targets"
    if logits.dtype not in (torch.float32, torch.float64):
        return f"{logits.dtype} logits (the softmax math here is fp32)"
    if weight is not None and weight.dtype != logits.dtype:
        return "a class weight of another dtype"
    if z_loss != 0.0 or softcap is not None or return_aux:
        return "z_loss, softcap or return_aux"
    if logits.numel() == 0:
        return "an empty batch"
    return None


def _prepare_cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    z_loss: float = 0.0,
    softcap: float | None = None,
    return_aux: bool = False,
    process_group: Any = None,
    impl: str = "auto",
) -> _Prepared:
    fn = "cross_entropy"
    ignore, eps, zl, cap = _check_common(
        fn, reduction, impl, ignore_index, label_smoothing, z_loss, softcap
    )
    logits, rows = V.flatten_logits(fn, input, target)
    V.check_weight(fn, weight, logits.shape[1])
    if rows.is_prob:
        V.check_prob_ignore_index(fn, ignore)
    prec = resolve_precision(
        logits.device, logits.dtype, weight.dtype if weight is not None else None, autocast=False
    )
    native = _native_problem(logits, weight, rows.is_prob, zl, cap, return_aux)
    plan = D.plan(
        fn,
        kind="logits",
        device=logits.device,
        prec=prec,
        dtypes_ok=V.kernel_dtype_problem({"logits": logits}, weight),
        impl=impl,
        memory="auto",
        scalar=False,
        composable=V.composable_reason(logits, weight, target=rows.target),
        process_group=process_group,
        native_ok=native,
        triton_rows_ok=None,
        rows=logits.shape[0],
        vocab=logits.shape[1],
        blocks=2 if cap is not None else 1,
        chunk_size=None,
    )
    return _Prepared(plan, logits, rows, weight, ignore, eps, zl, cap, reduction, return_aux)


@D.register_planner("cross_entropy")
def _plan_cross_entropy(*args: Any, **kwargs: Any) -> D.Plan:
    if kwargs.get("process_group") is not None:
        return D.Plan(
            "cross_entropy",
            "vocab-parallel",
            "rows",
            reasons=("process_group given: vocab parallel over the torch engine",),
        )
    return _prepare_cross_entropy(*args, **kwargs).plan


def _native_cross_entropy(
    input: Tensor, target: Tensor, prep: _Prepared, num_classes: int
) -> Tensor:
    """``F.cross_entropy`` itself, with one difference: an all-ignored (or zero-weight) ``mean``
    gives 0, with zero gradients, instead of NaN."""
    mean_of_ids = prep.reduction == "mean" and not prep.rows.is_prob
    reduction = "sum" if mean_of_ids else prep.reduction
    try:
        loss = F.cross_entropy(
            input,
            target,
            weight=prep.weight,
            ignore_index=prep.ignore_index,
            reduction=reduction,
            label_smoothing=prep.eps,
        )
    except (IndexError, RuntimeError):
        if not prep.rows.is_prob:
            # name the bad class id as the other paths do (torch's message varies by device)
            V.check_target_values("cross_entropy", prep.rows.target, num_classes, prep.ignore_index)
        raise
    if not mean_of_ids:
        return loss
    counts = count_rows(
        prep.rows.target, weight=prep.weight, ignore_index=prep.ignore_index, dtype=loss.dtype
    )
    return loss / counts.denom


_NATIVE_DTYPES = (torch.float32, torch.float64)
_FAST_REDUCTIONS = ("mean", "sum", "none")
_FAST_IMPLS = ("auto", "torch")


def _fast_cross_entropy(
    input: Tensor, target: Tensor, ignore_index: int, reduction: str, label_smoothing: float
) -> Tensor:
    """``F.cross_entropy`` of 2-D CPU logits and int64 class ids (the checks were done inline).

    The one difference from torch, an all-ignored ``mean`` giving 0 instead of NaN, costs a pass
    over the targets only for ``mean`` (free of synchronisation on the CPU); under a transform or
    while compiling the value-dependent branch is taken with ``torch.where``.
    """
    try:
        loss = F.cross_entropy(
            input,
            target,
            ignore_index=ignore_index,
            reduction=reduction,
            label_smoothing=label_smoothing,
        )
    except (IndexError, RuntimeError):
        V.check_target_values("cross_entropy", target, input.shape[1], ignore_index)
        raise
    if reduction != "mean":
        return loss
    if V.is_compiling() or V.functorch_active():
        return torch.where((target != ignore_index).any(), loss, 0.0)
    # torch's mean is NaN when nothing is counted (0 / 0); a NaN from NaN logits stays NaN
    if math.isnan(loss.item()) and not bool((target != ignore_index).any()):
        return (input.sum() * 0.0).to(loss.dtype)  # 0 with zero gradients, on the graph
    return loss


@overload
def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = ...,
    ignore_index: int = ...,
    reduction: str = ...,
    label_smoothing: float = ...,
    *,
    z_loss: float = ...,
    softcap: float | None = ...,
    return_aux: Literal[False] = ...,
    process_group: Any = ...,
    impl: str = ...,
) -> Tensor: ...
@overload
def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = ...,
    ignore_index: int = ...,
    reduction: str = ...,
    label_smoothing: float = ...,
    *,
    z_loss: float = ...,
    softcap: float | None = ...,
    return_aux: Literal[True],
    process_group: Any = ...,
    impl: str = ...,
) -> CrossEntropyAux: ...
def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    z_loss: float = 0.0,
    softcap: float | None = None,
    return_aux: bool = False,
    process_group: Any = None,
    impl: str = "auto",
) -> Tensor | CrossEntropyAux:
    r"""Softmax cross-entropy of logits, identical to ``torch.nn.functional.cross_entropy``, plus extras.

    For logits :math:`x` of a position, soft-capped logits :math:`s = c\tanh(x/c)` (:math:`s = x`
    without ``softcap``), :math:`\mathrm{lse} = \log\sum_j e^{s_j}` and smoothing :math:`\epsilon`:

    .. math::

        \ell = (1-\epsilon)\, w_t (\mathrm{lse} - s_t)
              + \frac{\epsilon}{C} \sum_c w_c (\mathrm{lse} - s_c)
              \quad\text{(class index } t\text{)}, \qquad
        \ell = \sum_c w_c \big((1-\epsilon) q_c + \tfrac{\epsilon}{C}\big)(\mathrm{lse} - s_c)
              \quad\text{(probabilities } q\text{)}

    and the z-loss adds :math:`\lambda\,\mathrm{lse}^2` per counted position. ``mean`` divides the
    summed :math:`\ell` by :math:`\sum w_t` over counted positions (class indices) or by the number
    of positions (probabilities), and the z-loss sum by the number of counted positions. Ignored
    positions contribute nothing. An all-ignored ``mean`` gives 0 with zero gradients (torch: NaN).

    Args:
        input: logits (N, C), (N, C, d1, ...) or (C,); any float dtype, any strides.
        target: class ids (N,), (N, d1, ...) or () of an integer dtype, or class probabilities
            with the input's shape.
        weight: (C,) class weights, or None.
        ignore_index: class id whose positions are skipped (class-index targets only).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        label_smoothing: :math:`\epsilon \in [0, 1]` (Szegedy et al., 2016).
        z_loss: :math:`\lambda \ge 0`, coefficient of :math:`\mathrm{lse}^2` (PaLM, Chowdhery et al.,
            2022).
        softcap: :math:`c > 0` soft-capping logits before the softmax (Gemma 2), or None.
        return_aux: return :class:`CrossEntropyAux` (loss, lse, z_loss, n_valid) instead.
        process_group: shard the class dimension over this group (vocab parallel); ``input`` holds
            this rank's contiguous slice of classes, ``target`` global class ids.
        impl: ``"auto"`` (the Triton kernel on CUDA, torch on the CPU), ``"torch"`` or
            ``"triton"`` (CUDA, or CPU under ``TRITON_INTERPRET=1``). What the kernel cannot run
            (float64 inputs) falls back from ``"triton"`` to torch with a one-time warning.
            :func:`~crossentropy.torch.explain` says which engine a call takes and why.

    Returns:
        The loss: a scalar for ``mean``/``sum``, the target's positions for ``none``; float32
        (float64 for float64 input). Gradients come back in the input's dtype. Higher-order
        gradients (``create_graph=True``, e.g. MAML or gradient penalties) are exact: that backward
        differentiates a plain recomputation (it materialises the logits once). Under
        ``torch.func`` transforms (``grad``, ``vmap``, ``jvp``, ``jacrev``) and forward-mode AD
        the computation itself uses plain torch ops, which compose with them. The vocab-parallel
        path has neither: it raises ``NotImplementedError`` under ``create_graph=True``.
        Class ids are checked: on the CPU at once (``ValueError``); on a GPU without a host
        synchronisation (a device-side assertion that fails at the next synchronisation).

    Example:
        >>> import torch
        >>> from crossentropy.torch import cross_entropy
        >>> logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5]])
        >>> target = torch.tensor([0, 2])
        >>> round(float(cross_entropy(logits, target)), 4)
        0.6342
        >>> aux = cross_entropy(logits, target, z_loss=1e-4, return_aux=True)
        >>> int(aux.n_valid), round(float(aux.lse[0]), 4)
        (2, 2.1698)
    """
    if (
        # the common classifier call, on the CPU: F.cross_entropy itself after a few cheap checks
        # (its own per-call cost dominates small batches; see benchmarks/ce_overhead.py)
        type(input) is Tensor
        and type(target) is Tensor
        and weight is None
        and process_group is None
        and not return_aux
        and z_loss == 0.0
        and softcap is None
        and not input.is_cuda
        and input.dim() == 2
        and target.dim() == 1
        and target.dtype == torch.int64
        and input.dtype in _NATIVE_DTYPES
        and input.shape[0] == target.shape[0]
        and type(ignore_index) is int
        and type(label_smoothing) in (float, int)
        and 0.0 <= label_smoothing <= 1.0
        and reduction in _FAST_REDUCTIONS
        and impl in _FAST_IMPLS
        and input.shape[0] > 0
    ):
        return _fast_cross_entropy(input, target, ignore_index, reduction, float(label_smoothing))
    if _sharded.any_dtensor((input, target, weight)):  # FSDP2 / tensor parallel (_sharded)
        return _sharded.dtensor_call(
            cross_entropy,
            _sharded.CROSS_ENTROPY,
            dict(
                input=input,
                target=target,
                weight=weight,
                ignore_index=ignore_index,
                reduction=reduction,
                label_smoothing=label_smoothing,
                z_loss=z_loss,
                softcap=softcap,
                return_aux=return_aux,
                process_group=process_group,
                impl=impl,
            ),
        )
    if process_group is not None:
        return _vocab_parallel().vocab_parallel_cross_entropy(  # type: ignore[no-any-return]
            input,
            target,
            weight=weight,
            ignore_index=ignore_index,
            reduction=reduction,
            label_smoothing=label_smoothing,
            z_loss=z_loss,
            softcap=softcap,
            return_aux=return_aux,
            process_group=process_group,
            impl=impl,
        )
    prep = _prepare_cross_entropy(
        input,
        target,
        weight,
        ignore_index,
        reduction,
        label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        return_aux=return_aux,
        impl=impl,
    )
    logits, rows, plan = prep.x, prep.rows, prep.plan
    num_classes = logits.shape[1]
    if plan.engine == "native":
        return _native_cross_entropy(input, target, prep, num_classes)
    if not rows.is_prob:
        V.check_target_values("cross_entropy", rows.target, num_classes, prep.ignore_index)
    prec = plan.precision
    assert prec is not None
    if plan.engine == "plain":
        call = _ops.Call("ce", _ce_params(prep, num_classes, prec), prec, 1)
        slots = {"x": logits, "target": rows.target, "cweight": prep.weight}
        ce, lse = _ops.reference_outputs(call, {**dict.fromkeys(_ops.SLOTS), **slots})
        return _reduce(prep, ce, lse)
    if plan.engine == "triton-softmax":
        call = _ops.Call("ce", _ce_params(prep, num_classes, prec), prec, 1, rows="triton")
        ce, lse = _ops.call_triton_ce(call, logits, None, None, rows.target, prep.weight)
        return _reduce(prep, ce, lse)
    assert plan.chunk is not None
    call = _ops.Call("ce", _ce_params(prep, num_classes, prec), prec, plan.chunk)
    ce, lse = _ops.call_rows(call, {"x": logits, "target": rows.target, "cweight": prep.weight})
    return _reduce(prep, ce, lse)


# ------------------------------------------------------------------------------------------------
# linear_cross_entropy


def _prepare_linear(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    *,
    linear_bias: Tensor | None = None,
    weight: Tensor | None = None,
    reduction: str = "mean",
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    return_aux: bool = False,
    process_group: Any = None,
    impl: str = "auto",
    chunk_size: int | None = None,
    memory: str | int = "auto",
) -> _Prepared:
    fn = "linear_cross_entropy"
    ignore, eps, zl, cap = _check_common(
        fn, reduction, impl, ignore_index, label_smoothing, z_loss, softcap
    )
    chunk = V.check_chunk_size(fn, chunk_size)
    mem = D.check_memory(fn, memory)
    x, rows = V.flatten_linear(fn, input, linear_weight, target, linear_bias)
    vocab = linear_weight.shape[0]
    V.check_weight(fn, weight, vocab)
    if rows.is_prob:
        V.check_prob_ignore_index(fn, ignore)
    prec = resolve_precision(
        x.device,
        x.dtype,
        linear_weight.dtype,
        linear_bias.dtype if linear_bias is not None else None,
        weight.dtype if weight is not None else None,
    )
    # the kernels: the row kernel reads fp32 logits from torch GEMMs (any operand dtypes); the
    # low-memory kernel reads the inputs themselves (one dtype, after autocast's cast)
    if prec.compute != torch.float32:
        dtypes_ok: str | None = f"{prec.compute} inputs (the kernels take fp32, bf16, fp16)"
    elif mem == "low" and autocast_dtype(x.device.type) is None:
        dtypes_ok = V.kernel_dtype_problem(
            {"input": x, "linear_weight": linear_weight, "linear_bias": linear_bias}, weight
        )
    else:
        dtypes_ok = V.kernel_dtype_problem({}, weight)
    scalar = reduction != "none" and not return_aux
    plan = D.plan(
        fn,
        kind="linear",
        device=x.device,
        prec=prec,
        dtypes_ok=dtypes_ok,
        impl=impl,
        memory=mem,
        scalar=scalar,
        composable=V.composable_reason(x, linear_weight, linear_bias, weight, target=rows.target),
        process_group=process_group,
        native_ok=None,
        triton_rows_ok=None,
        rows=x.shape[0],
        vocab=vocab,
        blocks=2 if cap is not None else 1,
        chunk_size=chunk,
    )
    return _Prepared(
        plan,
        x,
        rows,
        weight,
        ignore,
        eps,
        zl,
        cap,
        reduction,
        return_aux,
        linear_weight,
        linear_bias,
    )


@D.register_planner("linear_cross_entropy")
def _plan_linear(*args: Any, **kwargs: Any) -> D.Plan:
    if kwargs.get("process_group") is not None:
        return D.Plan(
            "linear_cross_entropy",
            "vocab-parallel",
            "rows",
            reasons=("process_group given: vocab parallel over the torch engine",),
        )
    return _prepare_linear(*args, **kwargs).plan


def _run_linear_ce(prep: _Prepared) -> Tensor | CrossEntropyAux:
    """Run a prepared linear cross-entropy call on its engine (also used by ``hf``)."""
    plan, x, rows, w, b = prep.plan, prep.x, prep.rows, prep.w, prep.b
    assert w is not None
    vocab = w.shape[0]
    if not rows.is_prob:
        V.check_target_values("linear_cross_entropy", rows.target, vocab, prep.ignore_index)
    prec = plan.precision
    assert prec is not None
    slots: dict[str, Tensor | None] = {
        "x": x,
        "w": w,
        "b": b,
        "target": rows.target,
        "cweight": prep.weight,
    }
    if plan.engine == "plain":
        call = _ops.Call("ce", _ce_params(prep, vocab, prec), prec, 1)
        ce, lse = _ops.reference_outputs(call, {**dict.fromkeys(_ops.SLOTS), **slots})
        return _reduce(prep, ce, lse)
    if plan.engine == "triton-lowmem":
        call = _ops.Call("ce", _ce_params(prep, vocab, prec), prec, 1, rows="triton")
        op = prec.operand
        # under autocast the kernel reads the operands cast to the autocast dtype (as F.linear);
        # the casts are ordinary autograd ops, so each gradient returns in its input's dtype
        xo, wo = x.to(op), w.to(op)
        bo = b.to(op) if b is not None else None
        ce, lse = _ops.call_triton_ce(call, xo, wo, bo, rows.target, prep.weight)
        return _reduce(prep, ce, lse)
    assert plan.chunk is not None
    call = _ops.Call("ce", _ce_params(prep, vocab, prec), prec, plan.chunk, rows=plan.rows)
    if plan.mode == "rows":
        ce, lse = _ops.call_rows(call, slots)
        return _reduce(prep, ce, lse)
    counts = count_rows(
        rows.target, weight=prep.weight, ignore_index=prep.ignore_index, dtype=prec.compute
    )
    coef, zcoef = row_coefficients(
        counts, reduction=prep.reduction, z_loss=prep.z_loss, dtype=prec.compute
    )
    zeros = torch.zeros_like(coef)
    lin = torch.stack([coef, zeros])
    quad = torch.stack([zeros, zcoef]) if zcoef is not None else None
    loss, _ = _ops.call_fused(call, slots, lin, quad)
    return loss


@overload
def linear_cross_entropy(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    *,
    linear_bias: Tensor | None = ...,
    weight: Tensor | None = ...,
    reduction: str = ...,
    ignore_index: int = ...,
    label_smoothing: float = ...,
    z_loss: float = ...,
    softcap: float | None = ...,
    return_aux: Literal[False] = ...,
    process_group: Any = ...,
    impl: str = ...,
    chunk_size: int | None = ...,
    memory: str | int = ...,
) -> Tensor: ...
@overload
def linear_cross_entropy(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    *,
    linear_bias: Tensor | None = ...,
    weight: Tensor | None = ...,
    reduction: str = ...,
    ignore_index: int = ...,
    label_smoothing: float = ...,
    z_loss: float = ...,
    softcap: float | None = ...,
    return_aux: Literal[True],
    process_group: Any = ...,
    impl: str = ...,
    chunk_size: int | None = ...,
    memory: str | int = ...,
) -> CrossEntropyAux: ...
def linear_cross_entropy(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    *,
    linear_bias: Tensor | None = None,
    weight: Tensor | None = None,
    reduction: str = "mean",
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    return_aux: bool = False,
    process_group: Any = None,
    impl: str = "auto",
    chunk_size: int | None = None,
    memory: str | int = "auto",
) -> Tensor | CrossEntropyAux:
    r"""Cross-entropy of ``input @ linear_weight.T + linear_bias`` without materialising the logits.

    Equal (loss and gradients of ``input``, ``linear_weight`` and ``linear_bias``) to

    .. math::

        \ell = \mathrm{cross\_entropy}(x W^\top + b,\ t,\ \dots)

    with every option of :func:`cross_entropy`. Rows are processed in blocks, so at most a block of
    fp32 logits exists at a time. For ``mean`` and ``sum`` the gradients are formed block by block
    during the forward pass (each logit block is computed once: 3 GEMMs, 6NDV FLOPs) and the
    backward pass only scales them. For ``none`` and ``return_aux=True`` (whose ``lse`` and
    ``z_loss`` fields carry their own gradients) the backward pass recomputes the blocks (4 GEMMs
    in all) and honours any per-position upstream gradient.

    Engines (:func:`~crossentropy.torch.explain` says which one a call takes and why): on CUDA
    with Triton, torch GEMMs writing fp32 logits and a Triton row kernel writing 16-bit d(logits)
    in place (``memory="auto"``), or the exact 8NDV kernel that never stores logits
    (``memory="low"``); elsewhere, torch GEMMs and torch row math.

    Precision: the GEMM operands are the inputs' dtype, or under ``torch.autocast`` the autocast
    dtype (as ``F.linear`` would use; fp32 master weights then get fp32 gradients); 16-bit
    operands are multiplied with fp32 accumulation and fp32 output, never rounded logits; all
    softmax math is fp32. Float32 operands follow ``torch.get_float32_matmul_precision()``: TF32
    where the user allowed it, full fp32 otherwise. Float64 anywhere computes in float64.

    Memory beyond the inputs and gradients: one block of fp32 logits (two with a softcap on the
    torch engine), sized by ``memory`` (``"auto"``: 32 MiB per buffer on the CPU, 1 GiB on CUDA;
    or a number of bytes) unless ``chunk_size`` gives the rows; the fp32 d(weight) accumulator;
    off tensor cores, for 16-bit inputs, a widened fp32 copy of ``linear_weight``.

    Compiles with ``torch.compile(fullgraph=True)`` (each engine is a custom operator). The fused
    ``mean``/``sum`` path keeps no inputs, so it has no double backward: ``create_graph=True``
    raises ``NotImplementedError`` there; ``return_aux=True`` takes the recomputing path, which is
    exact to every order (that backward materialises the (N, V) logits once), as does a call under
    ``torch.func`` transforms or forward-mode AD (plain torch ops there).

    Args:
        input: hidden states (..., D); any float dtype, any strides.
        linear_weight: (V, D) output projection (like ``torch.nn.Linear.weight``).
        target: class ids (...) of an integer dtype, or probabilities (..., V).
        linear_bias: (V,) or None.
        weight, reduction, ignore_index, label_smoothing, z_loss, softcap, return_aux,
            process_group, impl: as in :func:`cross_entropy`.
        chunk_size: rows per block (default: from ``memory``).
        memory: ``"auto"``, ``"low"`` (the 8NDV kernel on CUDA; smaller blocks elsewhere) or the
            bytes one (rows, V) logits buffer may take.

    Returns:
        The loss (scalar, or the target's positions for ``none``), float32 (float64 for float64
        inputs), or :class:`CrossEntropyAux` with ``return_aux=True``.

    Example:
        >>> import torch
        >>> from crossentropy.torch import linear_cross_entropy
        >>> g = torch.Generator().manual_seed(0)
        >>> h = torch.randn(2, 3, 4, generator=g)
        >>> W = torch.randn(5, 4, generator=g)
        >>> y = torch.tensor([[0, 1, 4], [2, 3, -100]])
        >>> ours = linear_cross_entropy(h, W, y)
        >>> ref = torch.nn.functional.cross_entropy((h @ W.T).flatten(0, 1), y.flatten())
        >>> bool(torch.allclose(ours, ref))
        True
    """
    if _sharded.any_dtensor((input, linear_weight, target, linear_bias, weight)):
        return _sharded.dtensor_call(  # FSDP2 / tensor parallel (_sharded)
            linear_cross_entropy,
            _sharded.LINEAR_CROSS_ENTROPY,
            dict(
                input=input,
                linear_weight=linear_weight,
                target=target,
                linear_bias=linear_bias,
                weight=weight,
                reduction=reduction,
                ignore_index=ignore_index,
                label_smoothing=label_smoothing,
                z_loss=z_loss,
                softcap=softcap,
                return_aux=return_aux,
                process_group=process_group,
                impl=impl,
                chunk_size=chunk_size,
                memory=memory,
            ),
        )
    if process_group is not None:
        return _vocab_parallel().vocab_parallel_linear_cross_entropy(  # type: ignore[no-any-return]
            input,
            linear_weight,
            target,
            linear_bias=linear_bias,
            weight=weight,
            reduction=reduction,
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
            z_loss=z_loss,
            softcap=softcap,
            return_aux=return_aux,
            process_group=process_group,
            impl=impl,
            chunk_size=chunk_size,
        )
    prep = _prepare_linear(
        input,
        linear_weight,
        target,
        linear_bias=linear_bias,
        weight=weight,
        reduction=reduction,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        return_aux=return_aux,
        impl=impl,
        chunk_size=chunk_size,
        memory=memory,
    )
    return _run_linear_ce(prep)
