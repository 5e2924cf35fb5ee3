"""Public functional API: ``cross_entropy`` and ``linear_cross_entropy``.

Each function checks its arguments once, into one ``PreparedCall`` (its ``_prepare_*`` here), and
hands it to ``_pass.execute``: plan, run, reduce. None holds a chunk loop (those live in
``engine._chunked``).
"""

from __future__ import annotations

import math
from typing import Any, Literal, overload

import torch
import torch.nn.functional as F
from torch import Tensor

from crossentropy.torch import _pass
from crossentropy.torch import _validation as V
from crossentropy.torch.engine import _dispatch as D
from crossentropy.torch.engine._gemm import autocast_dtype, resolve_precision
from crossentropy.torch.engine._reduce import CrossEntropyAux
from crossentropy.torch.engine._run import PreparedCall
from crossentropy.torch.parallel import _dtensor
from crossentropy.torch.parallel import _vocab as VP

__all__ = [
    "cross_entropy",
    "linear_cross_entropy",
]


def _check_common(
    fn: str,
    reduction: object,
    impl: object,
    ignore_index: object,
    label_smoothing: object,
    z_loss: object,
    softcap: object,
    group: Any,
) -> tuple[int, float, float, float | None]:
    V.check_reduction(fn, reduction)
    V.check_impl(fn, impl)
    if group is not None and impl == "triton":
        V.kernel_fallback(fn, "process_group (vocab parallel)")
    return V.check_options(
        fn,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
    )


def _ce_params(ignore: int, eps: float, num_classes: int, cap: float | None) -> dict[str, Any]:
    return {
        "ignore_index": ignore,
        "label_smoothing": eps,
        "num_classes": num_classes,
        "softcap": cap,
    }


def _native_problem(
    logits: Tensor,
    weight: Tensor | None,
    is_prob: bool,
    z_loss: float,
    softcap: float | None,
    return_aux: bool,
    token_weight: Tensor | None = None,
) -> str | None:
    """None when ``F.cross_entropy`` itself computes this call exactly (and in fp32/fp64)."""
    if is_prob:
        # torch reads 0 * log(0) on -inf-masked classes as NaN; the engines read it as 0
        return "probability targets"
    if logits.dtype not in (torch.float32, torch.float64):
        return f"{logits.dtype} logits (the softmax math here is fp32)"
    if weight is not None and weight.dtype != logits.dtype:
        return "a class weight of another dtype"
    if z_loss != 0.0 or softcap is not None or return_aux or token_weight is not None:
        return "z_loss, softcap, token_weight or return_aux"
    if logits.numel() == 0:
        return "an empty batch"
    return None


def _prepare_cross_entropy(
    fn: str,
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    z_loss: float = 0.0,
    softcap: float | None = None,
    token_weight: Tensor | None = None,
    return_aux: bool = False,
    impl: str = "auto",
    group: Any = None,
) -> PreparedCall:
    ignore, eps, zl, cap = _check_common(
        fn, reduction, impl, ignore_index, label_smoothing, z_loss, softcap, group
    )
    logits, rows = V.flatten_logits(fn, input, target)
    num_classes = logits.shape[1]
    tw = V.check_token_weight(fn, token_weight, rows.out_shape, logits.shape[0])
    if group is not None:
        weight = VP.check_shard(fn, rows, num_classes, ignore, weight, {"input": input})
    else:
        V.check_weight(fn, weight, num_classes)
        if rows.is_prob:
            V.check_prob_ignore_index(fn, ignore)
    target_rows = rows.target if rows.is_prob else rows.target.long()
    prec = resolve_precision(
        logits.device, logits.dtype, weight.dtype if weight is not None else None, autocast=False
    )
    return PreparedCall(
        fn=fn,
        math="ce",
        kind="logits",
        slots={"x": logits, "target": target_rows, "cweight": weight},
        params=_ce_params(ignore, eps, num_classes, cap),
        prec=prec,
        reduction=reduction,
        out_shape=rows.out_shape,
        vocab=num_classes,
        blocks=2 if cap is not None else 1,
        impl=impl,
        dtypes_ok=V.kernel_dtype_problem({"logits": logits}, weight),
        native_ok=_native_problem(logits, weight, rows.is_prob, zl, cap, return_aux, tw),
        composable=V.composable_reason(logits, weight, target=rows.target),
        id_range=None if rows.is_prob else num_classes,
        weight=weight,
        z_loss=zl,
        return_aux=return_aux,
        token_weight=tw,
        # F.cross_entropy takes int64 class ids only: every integer dtype is converted first
        native=(input, target if rows.is_prob else target.long()),
    )


def _vocab_parallel_plan(fn: str) -> D.Plan:
    # explain() runs no collectives: the agreement, and so the shard layout, needs every rank
    return D.Plan(
        fn,
        "vocab-parallel",
        "rows",
        reasons=("process_group given: vocab parallel over the torch engine",),
    )


@D.register_planner("cross_entropy")
def _plan_cross_entropy(*args: Any, process_group: Any = None, **kwargs: Any) -> D.Plan:
    if process_group is not None:
        return _vocab_parallel_plan("cross_entropy")
    return D.plan_call(_prepare_cross_entropy("cross_entropy", *args, **kwargs))


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
        # 0 with zero gradients, on the graph (+ 0.0: a negative input sum times 0 is -0.0)
        return (input.sum() * 0.0 + 0.0).to(loss.dtype)
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
    token_weight: Tensor | None = ...,
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
    token_weight: Tensor | None = ...,
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
    token_weight: Tensor | None = None,
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
        target: class ids (N,), (N, d1, ...) or () of any integer dtype, or class probabilities
            with the input's shape. As in torch, probability targets are not checked: any real
            values are taken (negative or unnormalised rows give what the formula gives).
        weight: (C,) class weights, or None.
        ignore_index: class id whose positions are skipped (class-index targets only).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        label_smoothing: :math:`\epsilon \in [0, 1]` (Szegedy et al., 2016).
        z_loss: :math:`\lambda \ge 0`, coefficient of :math:`\mathrm{lse}^2` (PaLM, Chowdhery et al.,
            2022).
        softcap: :math:`c > 0` soft-capping logits before the softmax (Gemma 2), or None.
        token_weight: per-position loss weights, the target's positions' shape (or (N,)), or
            None. Each position's cross-entropy is multiplied by its weight, and ``mean``
            divides by the sum of the counted positions' weights (times their class weights, when
            both are given), as class weights do. Weights may be zero or negative (per-token RL
            advantages: then take ``reduction="sum"`` and divide by your token count, e.g.
            :func:`global_valid_count`, since a sum of signed weights is no divisor); NaN and
            inf are refused (at once on the CPU, on the device on a GPU). The z-loss term is
            not weighted. On the fused paths the weights enter each row's coefficient, so the
            gradients are still formed in the forward pass (6NDV).
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
        and token_weight is None
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
    if _dtensor.any_dtensor((input, target, weight)):  # FSDP2 / tensor parallel
        return _dtensor.dtensor_call(
            cross_entropy,
            _dtensor.CROSS_ENTROPY,
            dict(
                input=input,
                target=target,
                weight=weight,
                ignore_index=ignore_index,
                reduction=reduction,
                label_smoothing=label_smoothing,
                z_loss=z_loss,
                softcap=softcap,
                token_weight=token_weight,
                return_aux=return_aux,
                process_group=process_group,
                impl=impl,
            ),
        )
    fn = "cross_entropy" if process_group is None else "cross_entropy(process_group=...)"
    return _pass.execute(  # type: ignore[no-any-return]
        fn,
        lambda group: _prepare_cross_entropy(
            fn,
            input,
            target,
            weight,
            ignore_index,
            reduction,
            label_smoothing,
            z_loss=z_loss,
            softcap=softcap,
            token_weight=token_weight,
            return_aux=return_aux,
            impl=impl,
            group=group,
        ),
        process_group,
    )


# ------------------------------------------------------------------------------------------------
# linear_cross_entropy


def _prepare_linear(
    fn: str,
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
    token_weight: Tensor | None = None,
    return_aux: bool = False,
    impl: str = "auto",
    chunk_size: int | None = None,
    memory: str | int = "auto",
    group: Any = None,
) -> PreparedCall:
    ignore, eps, zl, cap = _check_common(
        fn, reduction, impl, ignore_index, label_smoothing, z_loss, softcap, group
    )
    chunk = V.check_chunk_size(fn, chunk_size)
    mem = D.check_memory(fn, memory)
    x, rows = V.flatten_linear(fn, input, linear_weight, target, linear_bias)
    vocab = linear_weight.shape[0]
    tw = V.check_token_weight(fn, token_weight, rows.out_shape, x.shape[0])
    if group is not None:
        tensors = {"input": input, "linear_weight": linear_weight, "linear_bias": linear_bias}
        weight = VP.check_shard(fn, rows, vocab, ignore, weight, tensors)
    else:
        V.check_weight(fn, weight, vocab)
        if rows.is_prob:
            V.check_prob_ignore_index(fn, ignore)
            # unlike cross_entropy (torch's semantics), the fused losses take distributions only
            V.check_probability_target(fn, rows.target, vocab)
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
    target_rows = rows.target if rows.is_prob else rows.target.long()
    return PreparedCall(
        fn=fn,
        math="ce",
        kind="linear",
        slots={
            "x": x,
            "w": linear_weight,
            "b": linear_bias,
            "target": target_rows,
            "cweight": weight,
        },
        params=_ce_params(ignore, eps, vocab, cap),
        prec=prec,
        reduction=reduction,
        out_shape=rows.out_shape,
        vocab=vocab,
        blocks=2 if cap is not None else 1,
        impl=impl,
        memory=mem,
        chunk_size=chunk,
        dtypes_ok=dtypes_ok,
        composable=V.composable_reason(x, linear_weight, linear_bias, weight, target=rows.target),
        id_range=None if rows.is_prob else vocab,
        weight=weight,
        z_loss=zl,
        return_aux=return_aux,
        token_weight=tw,
    )


@D.register_planner("linear_cross_entropy")
def _plan_linear(*args: Any, process_group: Any = None, **kwargs: Any) -> D.Plan:
    if process_group is not None:
        return _vocab_parallel_plan("linear_cross_entropy")
    return D.plan_call(_prepare_linear("linear_cross_entropy", *args, **kwargs))


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
    token_weight: Tensor | None = ...,
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
    token_weight: Tensor | None = ...,
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
    token_weight: Tensor | None = None,
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
        target: class ids (...) of any integer dtype, or probabilities (..., V). Unlike
            :func:`cross_entropy` (torch's semantics), probability rows must be distributions:
            entries >= 0 summing to 1 within :func:`crossentropy.row_sum_tolerance` of the
            target's dtype, checked at once on the CPU and on the device (no host
            synchronisation) on a GPU; in vocab parallel, over the whole vocabulary.
        linear_bias: (V,) or None.
        weight, reduction, label_smoothing, z_loss, softcap, token_weight, return_aux,
            process_group, impl: as in :func:`cross_entropy`.
        ignore_index: class id whose positions are skipped; -100 by default, as
            ``F.cross_entropy`` (torch's own ``F.linear_cross_entropy`` defaults to None).
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
    if _dtensor.any_dtensor((input, linear_weight, target, linear_bias, weight)):
        return _dtensor.dtensor_call(  # FSDP2 / tensor parallel
            linear_cross_entropy,
            _dtensor.LINEAR_CROSS_ENTROPY,
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
                token_weight=token_weight,
                return_aux=return_aux,
                process_group=process_group,
                impl=impl,
                chunk_size=chunk_size,
                memory=memory,
            ),
        )
    fn = "linear_cross_entropy"
    if process_group is not None:
        fn = "linear_cross_entropy(process_group=...)"
    return _pass.execute(  # type: ignore[no-any-return]
        fn,
        lambda group: _prepare_linear(
            fn,
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
            token_weight=token_weight,
            return_aux=return_aux,
            impl=impl,
            chunk_size=chunk_size,
            memory=memory,
            group=group,
        ),
        process_group,
    )
