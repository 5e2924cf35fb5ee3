"""``linear_logprobs``: per-token log-probabilities and entropy of an output head, without logits.

The RL half of cross-entropy: policy-gradient losses (PPO, GRPO, DPO, KTO) need log p(token) of
sampled tokens under the policy, and often the per-token entropy. Built on the same row math
(``_rowmath.LogProbRows``), engines and dispatch as :func:`linear_cross_entropy`.
"""

from __future__ import annotations

import math
from typing import Any, Literal, overload

import numpy as np
import torch
from torch import Tensor

from crossentropy.torch import _pass
from crossentropy.torch import _validation as V
from crossentropy.torch.engine import _dispatch as D
from crossentropy.torch.engine._gemm import Precision, exact_fp32, resolve_precision
from crossentropy.torch.engine._reduce import LogProbs
from crossentropy.torch.engine._rowmath import logprob_blocks
from crossentropy.torch.engine._run import PreparedCall
from crossentropy.torch.parallel import _dtensor

__all__ = [
    "LogProbs",
    "linear_logprobs",
]


def _positive_float(fn: str, name: str, value: object) -> float:
    f = V._real(fn, name, value)
    if not (math.isfinite(f) and f > 0.0):
        raise ValueError(f"{fn}: {name} must be a finite number > 0; got {value!r}")
    return f


def _per_token(fn: str, name: str, t: Tensor, shape: tuple[int, ...], floating: bool) -> Tensor:
    if tuple(t.shape) != shape:
        raise ValueError(
            f"{fn}: {name} as a tensor must have the target's shape {shape}; got {tuple(t.shape)}"
        )
    if floating and not t.is_floating_point():
        raise TypeError(f"{fn}: {name} must be a floating-point tensor; got dtype {t.dtype}")
    if not floating and (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool):
        raise TypeError(f"{fn}: {name} must be an integer tensor; got dtype {t.dtype}")
    return t


def _check_values(fn: str, name: str, ok: Tensor, what: str) -> None:
    """``ok`` must hold everywhere: at once on the CPU, on the device (no sync) on a GPU."""
    if ok.device.type == "cpu" and not V.is_compiling() and not V.functorch_active():
        if not bool(ok.all()):
            raise ValueError(f"{fn}: {name} must be {what}")
    elif not V.functorch_active():
        torch._assert_async(ok.all(), f"{fn}: {name} must be {what}")


def _prepare(
    fn: str,
    input: object,
    linear_weight: object,
    target: object,
    *,
    linear_bias: object,
    temperature: object,
    softcap: object,
    logit_scale: object,
    ignore_index: object,
    return_entropy: object,
    top_k: object,
    top_p: object,
    allowed: object,
    fp32_head: object,
    impl: object,
    memory: object,
    chunk_size: object,
    group: Any,
) -> PreparedCall:
    V.check_impl(fn, impl)
    ignore, _, _, cap = V.check_options(
        fn, ignore_index=ignore_index, label_smoothing=0.0, z_loss=0.0, softcap=softcap
    )
    scale = _positive_float(fn, "logit_scale", logit_scale)
    chunk = V.check_chunk_size(fn, chunk_size)
    mem = D.check_memory(fn, memory)
    for flag, name in ((return_entropy, "return_entropy"), (fp32_head, "fp32_head")):
        if not isinstance(flag, (bool, np.bool_)):
            raise TypeError(f"{fn}: {name} must be a bool; got {flag!r}")
    x, rows = V.flatten_linear(fn, input, linear_weight, target, linear_bias)
    w = linear_weight
    assert isinstance(w, Tensor)
    if rows.is_prob:
        raise TypeError(
            f"{fn}: target holds the sampled token ids and must have an integer dtype; got "
            f"{rows.target.dtype} of shape {tuple(rows.target.shape)}"
        )
    shape = rows.out_shape
    vocab = w.shape[0]
    slots: dict[str, Tensor | None] = {"x": x, "w": w, "b": linear_bias, "target": rows.target}  # type: ignore[dict-item]
    params: dict[str, Any] = {
        "ignore_index": ignore,
        "entropy": bool(return_entropy),
        "softcap": cap,
        "scale": scale,
    }
    if isinstance(temperature, Tensor):
        temp_t = _per_token(fn, "temperature", temperature, shape, floating=True).reshape(-1)
        _check_values(
            fn, "temperature", torch.isfinite(temp_t) & (temp_t > 0), "finite and > 0 everywhere"
        )
        slots["temperature"] = temp_t
        params["temperature"] = None
    else:
        params["temperature"] = _positive_float(fn, "temperature", temperature)
    if isinstance(top_k, Tensor):
        k_t = _per_token(fn, "top_k", top_k, shape, floating=False).reshape(-1)
        _check_values(fn, "top_k", k_t >= 1, "at least 1 everywhere")
        slots["top_k"] = k_t
    elif top_k is not None:
        k = V._integer(fn, "top_k", top_k)
        if k < 1:
            raise ValueError(f"{fn}: top_k must be None or an int >= 1; got {top_k!r}")
        params["top_k"] = k
    if isinstance(top_p, Tensor):
        p_t = _per_token(fn, "top_p", top_p, shape, floating=True).reshape(-1)
        _check_values(fn, "top_p", (p_t > 0) & (p_t <= 1), "in (0, 1] everywhere")
        slots["top_p"] = p_t
    elif top_p is not None:
        p = V._real(fn, "top_p", top_p)
        if not 0.0 < p <= 1.0:
            raise ValueError(f"{fn}: top_p must be None or a number in (0, 1]; got {top_p!r}")
        params["top_p"] = p
    if allowed is not None:
        if not isinstance(allowed, Tensor) or allowed.dtype != torch.bool:
            raise TypeError(f"{fn}: allowed must be a bool tensor; got {allowed!r:.60}")
        if tuple(allowed.shape) != (*shape, vocab):
            raise ValueError(
                f"{fn}: allowed must have shape {(*shape, vocab)} (target's shape + vocabulary); "
                f"got {tuple(allowed.shape)}"
            )
        slots["allowed"] = allowed.reshape(-1, vocab)
    kept = any(slots.get(k) is not None for k in ("top_k", "top_p", "allowed")) or any(
        params.get(k) is not None for k in ("top_k", "top_p")
    )
    if group is not None and kept:
        raise ValueError(
            f"{fn}: top_k, top_p and allowed need whole vocabulary rows (a global sort); they "
            "are not supported with process_group"
        )
    b = linear_bias if isinstance(linear_bias, Tensor) else None
    prec: Precision
    if fp32_head:
        prec = exact_fp32(x.device, x.dtype, w.dtype, b.dtype if b is not None else None)
    else:
        prec = resolve_precision(x.device, x.dtype, w.dtype, b.dtype if b is not None else None)
    return PreparedCall(
        fn=fn,
        math="logprob",
        kind="linear",
        slots=slots,
        params=params,
        prec=prec,
        reduction="none",
        out_shape=shape,
        vocab=vocab,
        blocks=logprob_blocks(bool(return_entropy), cap is not None, kept),
        impl=str(impl),
        memory=mem,
        chunk_size=chunk,
        dtypes_ok=None if prec.compute == torch.float32 else f"{prec.compute} inputs",
        triton_rows_ok="no Triton row kernel for log-probabilities: torch row math",
        composable=V.composable_reason(x, w, b, target=rows.target),
        id_range=vocab,
        entropy=bool(return_entropy),
    )


@D.register_planner("linear_logprobs")
def _plan(*args: Any, **kwargs: Any) -> D.Plan:
    kw = {**_DEFAULTS, **kwargs}
    group = kw.pop("process_group")
    if group is not None:
        return D.Plan(
            "linear_logprobs",
            "vocab-parallel",
            "rows",
            reasons=("process_group given: vocab parallel over the torch engine",),
        )
    return D.plan_call(_prepare("linear_logprobs", *args, group=None, **kw))


_DEFAULTS: dict[str, Any] = dict(
    linear_bias=None,
    temperature=1.0,
    softcap=None,
    logit_scale=1.0,
    ignore_index=-100,
    return_entropy=False,
    top_k=None,
    top_p=None,
    allowed=None,
    fp32_head=False,
    impl="auto",
    memory="auto",
    chunk_size=None,
    process_group=None,
)


@overload
def linear_logprobs(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    *,
    linear_bias: Tensor | None = ...,
    temperature: float | Tensor = ...,
    softcap: float | None = ...,
    logit_scale: float = ...,
    ignore_index: int = ...,
    return_entropy: Literal[False] = ...,
    top_k: int | Tensor | None = ...,
    top_p: float | Tensor | None = ...,
    allowed: Tensor | None = ...,
    fp32_head: bool = ...,
    process_group: Any = ...,
    impl: str = ...,
    memory: str | int = ...,
    chunk_size: int | None = ...,
) -> Tensor: ...
@overload
def linear_logprobs(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    *,
    linear_bias: Tensor | None = ...,
    temperature: float | Tensor = ...,
    softcap: float | None = ...,
    logit_scale: float = ...,
    ignore_index: int = ...,
    return_entropy: Literal[True],
    top_k: int | Tensor | None = ...,
    top_p: float | Tensor | None = ...,
    allowed: Tensor | None = ...,
    fp32_head: bool = ...,
    process_group: Any = ...,
    impl: str = ...,
    memory: str | int = ...,
    chunk_size: int | None = ...,
) -> LogProbs: ...
@overload
def linear_logprobs(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    *,
    linear_bias: Tensor | None = ...,
    temperature: float | Tensor = ...,
    softcap: float | None = ...,
    logit_scale: float = ...,
    ignore_index: int = ...,
    return_entropy: bool = ...,
    top_k: int | Tensor | None = ...,
    top_p: float | Tensor | None = ...,
    allowed: Tensor | None = ...,
    fp32_head: bool = ...,
    process_group: Any = ...,
    impl: str = ...,
    memory: str | int = ...,
    chunk_size: int | None = ...,
) -> Tensor | LogProbs: ...
def linear_logprobs(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    *,
    linear_bias: Tensor | None = None,
    temperature: float | Tensor = 1.0,
    softcap: float | None = None,
    logit_scale: float = 1.0,
    ignore_index: int = -100,
    return_entropy: bool = False,
    top_k: int | Tensor | None = None,
    top_p: float | Tensor | None = None,
    allowed: Tensor | None = None,
    fp32_head: bool = False,
    process_group: Any = None,
    impl: str = "auto",
    memory: str | int = "auto",
    chunk_size: int | None = None,
) -> Tensor | LogProbs:
    r"""Log-probability of each target token (and the entropy) under a linear head's softmax.

    With mapped logits :math:`z = \mathrm{softcap}(s\,(h W^\top + b)) / T` (soft-capping
    :math:`c \tanh(u / c)` as in Gemma 2; :math:`s` the logit scale, :math:`T` the temperature):

    .. math::

        \log p_t = z_t - \log\sum_j e^{z_j}, \qquad
        H = -\sum_j p_j \log p_j = \log\sum_j e^{z_j} - \sum_j p_j z_j

    per position, in fp32, without the (N, V) logits (blocks of rows, as
    :func:`linear_cross_entropy`). Log-probabilities are never above 0 and entropies never below 0
    (rounding could otherwise give a hair of either, as fused kernels elsewhere have).

    Gradients reach ``input``, ``linear_weight`` and ``linear_bias`` from any upstream gradients of the
    log-probabilities *and* of the entropy (an entropy bonus needs the latter; a detached entropy
    costs nothing in the backward):
    :math:`\partial/\partial z_c = g\,([c = t] - p_c) - h\,p_c(\log p_c + H)`. The temperature gets
    no gradient. The backward pass recomputes each block of logits (8NDV FLOPs in all).

    Kept set: ``top_k`` / ``top_p`` / ``allowed`` renormalise the distribution over the tokens a
    sampler could have drawn, matching vLLM's sampler (``vllm/v1/sample/ops/topk_topp_sampler.py``,
    read 2026-11): both act on the temperature-scaled logits; top-k keeps the logits >= the k-th
    largest (ties kept); top-p then sorts the remaining probabilities in ascending order and drops
    each token whose cumulative probability is <= 1 - top_p, always keeping the most likely one.
    ``allowed`` (a bool mask over the vocabulary, per position) is applied first. A target outside
    the kept set has log-probability ``-inf``. Top-p sorts each block of rows (about 12 bytes per
    logit of extra memory in that block).

    Args:
        input: (..., D) hidden states; any float dtype.
        linear_weight: (V, D) output head (``lm_head.weight``).
        target: (...) integer token ids (the sampled tokens).
        linear_bias: (V,) or None.
        temperature: T > 0, a float or a tensor of the target's shape (one per token).
        softcap: c > 0 or None.
        logit_scale: s > 0 applied before the softcap (Cohere-style scaled heads).
        ignore_index: positions whose target equals it get 0 (log-prob and entropy) and no
            gradient.
        return_entropy: also return the entropy (off by default: then it costs nothing).
        top_k: int >= 1 or an integer tensor of the target's shape, or None.
        top_p: float in (0, 1] or a float tensor of the target's shape, or None.
        allowed: bool (..., V) mask of the ids the sampler could draw, or None.
        fp32_head: full-precision head: the operands as given (no autocast rounding), widened to
            fp32 and multiplied with full fp32 products (no TF32), for RL trainers that must match
            a rollout engine's fp32 head. Costs an fp32 GEMM (on an H100, fp32 peak is about a
            fifteenth of bf16's dense peak by the datasheet; not measured here).
        process_group: vocab parallel: ``linear_weight`` (and ``linear_bias``) are this rank's contiguous shard
            of the vocabulary, ``target`` holds global ids, identical on every rank.
        impl, memory, chunk_size: as in :func:`linear_cross_entropy` (the row math here is torch
            on every device; on CUDA its GEMMs use tensor cores).

    Returns:
        The log-probabilities, the target's shape; or :class:`LogProbs` (logprobs, entropy) with
        ``return_entropy=True``. No host synchronisation on CUDA, so the call can be captured in a
        CUDA graph; bad ids fail on the device.

    Example:
        >>> import torch
        >>> from crossentropy.torch import linear_logprobs
        >>> g = torch.Generator().manual_seed(0)
        >>> h, W = torch.randn(2, 3, 8, generator=g), torch.randn(11, 8, generator=g)
        >>> tokens = torch.tensor([[1, 4, 10], [0, 2, -100]])
        >>> out = linear_logprobs(h, W, tokens, temperature=0.7, return_entropy=True)
        >>> ref = torch.log_softmax(h @ W.T / 0.7, -1).gather(-1, tokens.clamp(min=0)[..., None])
        >>> bool(torch.allclose(out.logprobs[0], ref[0, :, 0], atol=1e-5))
        True
        >>> out.logprobs[1, 2].item(), bool((out.entropy[0] > 0).all())
        (0.0, True)
    """
    fn = "linear_logprobs"
    kwargs: dict[str, Any] = dict(
        linear_bias=linear_bias,
        temperature=temperature,
        softcap=softcap,
        logit_scale=logit_scale,
        ignore_index=ignore_index,
        return_entropy=return_entropy,
        top_k=top_k,
        top_p=top_p,
        allowed=allowed,
        fp32_head=fp32_head,
        impl=impl,
        memory=memory,
        chunk_size=chunk_size,
    )
    if _dtensor.any_dtensor(
        (input, linear_weight, target, linear_bias, temperature, top_k, top_p, allowed)
    ):
        return _dtensor.dtensor_call(  # type: ignore[no-any-return]  # FSDP2 / tensor parallel
            linear_logprobs,
            _dtensor.LINEAR_LOGPROBS,
            dict(
                input=input,
                linear_weight=linear_weight,
                target=target,
                process_group=process_group,
                **kwargs,
            ),
        )
    if process_group is not None:
        fn = f"{fn}(process_group=...)"
    return _pass.execute(  # type: ignore[no-any-return]
        fn,
        lambda group: _prepare(fn, input, linear_weight, target, group=group, **kwargs),
        process_group,
    )
