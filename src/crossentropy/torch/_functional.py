"""Public functional API: ``cross_entropy`` and ``linear_cross_entropy``."""

from __future__ import annotations

import importlib
from typing import Any, Literal, overload

import torch
from torch import Tensor

from crossentropy.torch import _validation as V
from crossentropy.torch._reduce import (
    CrossEntropyAux,
    count_rows,
    reduce_rows,
    row_coefficients,
)
from crossentropy.torch._rows import (
    FusedLinearCE,
    _compute_dtype,
    default_chunk_size,
    linear_ce_rows,
    plain_linear_loss,
    row_spec,
    softmax_ce_rows,
)

__all__ = [
    "cross_entropy",
    "linear_cross_entropy",
]


def _triton(fn: str) -> Any:
    try:
        import crossentropy.triton as kernels
    except ImportError as exc:
        raise RuntimeError(
            f"{fn}: impl='triton' needs the crossentropy.triton kernels and the triton package "
            f"(pip install 'crossentropy[triton]'); importing them failed: {exc}"
        ) from exc
    return kernels


def _vocab_parallel() -> Any:
    return importlib.import_module("crossentropy.torch._vocab_parallel")


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
        impl: ``"torch"`` (plain torch, any device), ``"triton"`` (the kernels of
            :mod:`crossentropy.triton`; CUDA, or CPU under ``TRITON_INTERPRET=1``) or ``"auto"``
            (currently the torch path everywhere; the Triton kernels become the CUDA default once
            validated on a GPU). What the kernels cannot run (float64 inputs, a process group)
            falls back from ``"triton"`` to the torch path with a one-time warning.

    Returns:
        The loss: a scalar for ``mean``/``sum``, the target's positions for ``none``; float32
        (float64 for float64 input). Gradients come back in the input's dtype. Higher-order
        gradients (``create_graph=True``, e.g. MAML or gradient penalties) are exact: that backward
        differentiates a plain recomputation (it materialises the logits once). Under
        ``torch.func`` transforms (``grad``, ``vmap``, ``jvp``, ``jacrev``) and forward-mode AD
        the computation itself uses plain torch ops, which compose with them. The vocab-parallel
        path has neither: it raises ``NotImplementedError`` under ``create_graph=True``.

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
    fn = "cross_entropy"
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
    V.check_reduction(fn, reduction)
    V.check_impl(fn, impl)
    ignore_index, eps, zl, cap = V.check_options(
        fn,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
    )
    logits, rows = V.flatten_logits(fn, input, target)
    num_classes = logits.shape[1]
    V.check_weight(fn, weight, num_classes)
    if impl == "triton":
        impl = V.kernel_or_fallback(fn, {"logits": logits}, weight, rows.target)
    if rows.is_prob:
        V.check_prob_ignore_index(fn, ignore_index)
    else:
        V.check_target_values(fn, rows.target, num_classes, ignore_index)
    rows_fn = _triton(fn).softmax_ce_rows if impl == "triton" else softmax_ce_rows
    ce_rows, lse_rows = rows_fn(
        logits,
        rows.target,
        weight=weight,
        ignore_index=ignore_index,
        label_smoothing=eps,
        softcap=cap,
    )
    return reduce_rows(
        ce_rows,
        lse_rows,
        rows.target,
        weight=weight,
        ignore_index=ignore_index,
        reduction=reduction,
        z_loss=zl,
        return_aux=return_aux,
        out_shape=rows.out_shape,
    )


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
) -> Tensor | CrossEntropyAux:
    r"""Cross-entropy of ``input @ linear_weight.T + linear_bias`` without materialising the logits.

    Equal (loss and gradients of ``input``, ``linear_weight`` and ``linear_bias``) to

    .. math::

        \ell = \mathrm{cross\_entropy}(x W^\top + b,\ t,\ \dots)

    with every option of :func:`cross_entropy`. Rows are processed in blocks of ``chunk_size``, so
    at most a (chunk_size, V) block of fp32 logits exists at a time. For ``mean`` and ``sum`` the
    gradients are formed block by block during the forward pass (each logit block is computed once:
    3 GEMMs, 6NDV FLOPs) and the backward pass only scales them. For ``none`` the backward pass
    recomputes the blocks (4 GEMMs in all) and honours any per-position upstream gradient; so does
    ``return_aux=True``, whose ``lse`` and ``z_loss`` fields carry their own gradients. Memory beyond
    the inputs and gradients: about two (chunk_size, V) fp32 blocks, the fp32 gradients kept between
    the passes (one more copy while the backward scales them), and for bf16/fp16 inputs an fp32
    copy of ``linear_weight``. Under ``torch.compile`` the ``mean``/``sum`` path runs eagerly
    (a graph break around it); Dynamo traces the ``none`` path's autograd Function. The fused
    ``mean``/``sum`` path keeps no inputs, so it has no double backward: ``create_graph=True``
    raises ``NotImplementedError`` there. ``return_aux=True`` takes the recomputing path, which is
    exact to every order (that backward materialises the (N, V) logits once), as does a call under
    ``torch.func`` transforms or forward-mode AD (plain torch ops there).
    Autocast does not recast anything inside: the arithmetic follows the inputs' dtypes (fp32
    math when any input is fp32), so under bf16 autocast with fp32 master weights pass
    ``linear_weight.to(input.dtype)`` to get bf16 matmuls (and the Triton kernels).

    Args:
        input: hidden states (..., D); any float dtype, any strides.
        linear_weight: (V, D) output projection (like ``torch.nn.Linear.weight``).
        target: class ids (...) of an integer dtype, or probabilities (..., V).
        linear_bias: (V,) or None.
        weight, reduction, ignore_index, label_smoothing, z_loss, softcap, return_aux,
            process_group, impl: as in :func:`cross_entropy`.
        chunk_size: rows per block (default: about 32 MiB of fp32 logits per block).

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
    fn = "linear_cross_entropy"
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
    V.check_reduction(fn, reduction)
    V.check_impl(fn, impl)
    ignore_index, eps, zl, cap = V.check_options(
        fn,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
    )
    chunk = V.check_chunk_size(fn, chunk_size)
    x, rows = V.flatten_linear(fn, input, linear_weight, target, linear_bias)
    vocab = linear_weight.shape[0]
    V.check_weight(fn, weight, vocab)
    if impl == "triton":
        inputs = {"input": x, "linear_weight": linear_weight, "linear_bias": linear_bias}
        impl = V.kernel_or_fallback(fn, inputs, weight, rows.target)
    if rows.is_prob:
        V.check_prob_ignore_index(fn, ignore_index)
    else:
        V.check_target_values(fn, rows.target, vocab, ignore_index)
    if impl == "triton":
        ce_rows, lse_rows = _triton(fn).linear_ce_rows(
            x,
            linear_weight,
            rows.target,
            linear_bias=linear_bias,
            weight=weight,
            ignore_index=ignore_index,
            label_smoothing=eps,
            softcap=cap,
        )
    elif reduction == "none" or return_aux:
        # the fused path knows its upstream gradient up to one scalar; per-row outputs that may be
        # differentiated on their own (aux.lse, aux.z_loss) need the recomputing path
        ce_rows, lse_rows = linear_ce_rows(
            x,
            linear_weight,
            rows.target,
            linear_bias=linear_bias,
            weight=weight,
            ignore_index=ignore_index,
            label_smoothing=eps,
            softcap=cap,
            chunk_size=chunk,
        )
    else:
        return _fused_scalar(
            x,
            linear_weight,
            linear_bias,
            rows.target,
            weight=weight,
            ignore_index=ignore_index,
            label_smoothing=eps,
            softcap=cap,
            reduction=reduction,
            z_loss=zl,
            chunk=chunk,
        )
    return reduce_rows(
        ce_rows,
        lse_rows,
        rows.target,
        weight=weight,
        ignore_index=ignore_index,
        reduction=reduction,
        z_loss=zl,
        return_aux=return_aux,
        out_shape=rows.out_shape,
    )


@torch.compiler.disable
def _fused_scalar(
    x: Tensor,
    w: Tensor,
    b: Tensor | None,
    target: Tensor,
    *,
    weight: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    softcap: float | None,
    reduction: str,
    z_loss: float,
    chunk: int | None,
) -> Tensor:
    """``mean``/``sum`` with gradients formed in the forward pass (a graph break under compile)."""
    dtype = _compute_dtype(x, w, b, weight)
    counts = count_rows(target, weight=weight, ignore_index=ignore_index, dtype=dtype)
    coef, zcoef = row_coefficients(counts, reduction=reduction, z_loss=z_loss, dtype=dtype)
    spec = row_spec(
        dtype, target, weight, ignore_index, label_smoothing, softcap, num_classes=w.shape[0]
    )
    rows = chunk or default_chunk_size(x.shape[0], w.shape[0])
    if V.composable_only(x, w, b, weight, target=target):
        return plain_linear_loss(x, w, b, target, coef, zcoef, spec)
    if not torch.is_grad_enabled():
        # no_grad / inference_mode: the Function would still see requires_grad on the parameters
        # and form every gradient in the forward pass; detached inputs make it compute the loss only.
        x, w = x.detach(), w.detach()
        b = b.detach() if b is not None else None
    loss, _, _ = FusedLinearCE.apply(x, w, b, target, coef, zcoef, spec, rows)
    return loss  # type: ignore[no-any-return]
