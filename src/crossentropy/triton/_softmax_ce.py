# Softmax cross-entropy on given logits, row by row, in Triton.
#
# Math, one row x (V,) with soft-capped logits z = c tanh(x / c) (z = x without a cap),
# p = softmax(z), lse = logsumexp(z) and per-class target coefficients a_j:
#   class id y, smoothing e, class weights w:  a_j = (1 - e) w_y [j = y] + (e / V) w_j
#   probabilities t:                           a_j = w_j ((1 - e) t_j + e / V)
#   ignored row (y == ignore_index):           a = 0
#   ce = sum_j a_j (lse - z_j) = A lse - sum_j a_j z_j,   A = sum_j a_j
# For upstream gradients g (of ce) and h (of lse):
#   d/dz_j = g (A p_j - a_j) + h p_j = (g A + h) p_j - g a_j
#   d/dx_j = d/dz_j (1 - tanh(x_j / c)^2)
# which is exact for any g and h: nothing about them is assumed in the forward pass.
#
# Design: the forward kernel streams each row once (online max / sum of exponentials, fp32) and
# keeps per row only lse and A (8 bytes). The backward kernel streams the row once more, forms
# d/dx from (lse, A, g, h) and writes it once, in place over the logits when the caller allows
# (`inplace_backward=True`). Forming the gradient already in the forward pass would save that read
# only if the upstream gradient were known then; with per-row outputs and arbitrary (g, h) it would
# cost an extra read+write to rescale in the backward, so we recompute instead.
#
# Memory traffic for N rows of V logits of b bytes (class-id targets):
#   forward  N V b read                         (+ N (4 + 4 + 4) bytes of outputs)
#   backward N V b read + N V b write           (+ V 4 bytes of class weights, cached)
#   total 3 N V b = 1.5x a device-to-device copy of the logits. Probability targets add 4 N V
#   bytes (fp32 targets) per pass. Extra memory: O(N) floats; none for d(logits) in place.
# FLOPs: ~6 per element forward (softcap +6), ~5 per element backward; one exp per element per pass.
# Deterministic: each row is reduced by one program in a fixed order; no atomics.

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from crossentropy.triton._config import softmax_config

__all__ = [
    "second_order",
    "softmax_ce_backward",
    "softmax_ce_forward",
    "softmax_ce_rows",
]

# Running-max floor: finite so that exp(m_old - m_new) never sees (-inf) - (-inf) on rows whose
# first tiles hold only -inf (masked) logits.
_M_FLOOR: tl.constexpr = tl.constexpr(-3.0e38)

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@triton.jit
def _softcap(x, cap):
    # tanh(u) = sign(u) (1 - e^{-2|u|}) / (1 + e^{-2|u|}): no overflow, tanh(-inf) = -1, so masked
    # (-inf) classes get the finite logit -cap, exactly as cap * torch.tanh(x / cap) does.
    u = x / cap
    e2 = tl.exp(-2.0 * tl.abs(u))
    th = (1.0 - e2) / (1.0 + e2)
    th = tl.where(u < 0, -th, th)
    return cap * th, th


@triton.jit
def _softmax_ce_fwd_kernel(
    x_ptr,
    stride_xn,
    stride_xv,
    bias_ptr,
    target_ptr,
    stride_tn,
    stride_tv,
    cw_ptr,
    ce_ptr,
    lse_ptr,
    a_ptr,
    n_rows,
    n_cols,
    ignore_index,
    smoothing,
    cap,
    HAS_BIAS: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    IS_PROB: tl.constexpr,
    HAS_SMOOTHING: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < n_rows
    rows64 = rows.to(tl.int64)  # N V can exceed 2**31 elements
    x_rows = x_ptr + rows64 * stride_xn
    m = tl.full([BLOCK_N], _M_FLOOR, tl.float32)
    s = tl.zeros([BLOCK_N], tl.float32)
    az = tl.zeros([BLOCK_N], tl.float32)  # sum_j a_j z_j over the smoothing / probability part
    a_sum = tl.zeros([BLOCK_N], tl.float32)  # sum_j a_j (probability targets)
    w_sum = tl.zeros([BLOCK_N], tl.float32)  # sum_j w_j (class ids with smoothing)
    for v0 in range(0, n_cols, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_ok = cols < n_cols
        mask = row_ok[:, None] & col_ok[None, :]
        cols64 = cols.to(tl.int64)
        x = tl.load(x_rows[:, None] + cols64[None, :] * stride_xv, mask=mask, other=0.0)
        x = x.to(tl.float32)
        if HAS_BIAS:
            x += tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        if HAS_SOFTCAP:
            x, _th = _softcap(x, cap)
        z = tl.where(mask, x, float("-inf"))
        m_new = tl.maximum(m, tl.max(z, 1))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new[:, None]), 1)
        m = m_new
        if HAS_WEIGHT:
            w = tl.load(cw_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        else:
            w = tl.where(col_ok, 1.0, 0.0)
        if IS_PROB:
            t = tl.load(
                target_ptr + rows64[:, None] * stride_tn + cols64[None, :] * stride_tv,
                mask=mask,
                other=0.0,
            ).to(tl.float32)
            a = w[None, :] * ((1.0 - smoothing) * t + smoothing / n_cols)
            a = tl.where(mask, a, 0.0)
            a_sum += tl.sum(a, 1)
            # a_j = 0 contributes 0 even where z_j = -inf (a masked class the target avoids).
            az += tl.sum(tl.where(a != 0.0, a * z, 0.0), 1)
        elif HAS_SMOOTHING:
            wz = tl.where(mask & (w[None, :] != 0.0), w[None, :] * z, 0.0)
            az += tl.sum(wz, 1)
            w_sum += tl.sum(w, 0)
    lse = m + tl.log(s)
    if IS_PROB:
        big_a = a_sum
        ce = a_sum * lse - az  # sum_j a_j (lse - z_j)
    else:
        y = tl.load(target_ptr + rows64 * stride_tn, mask=row_ok, other=ignore_index).to(tl.int64)
        valid = row_ok & (y != ignore_index)
        y_safe = tl.where(valid & (y >= 0) & (y < n_cols), y, 0)
        x_y = tl.load(x_rows + y_safe * stride_xv, mask=valid, other=0.0).to(tl.float32)
        if HAS_BIAS:
            x_y += tl.load(bias_ptr + y_safe, mask=valid, other=0.0).to(tl.float32)
        if HAS_SOFTCAP:
            x_y, _th_y = _softcap(x_y, cap)
        if HAS_WEIGHT:
            w_y = tl.load(cw_ptr + y_safe, mask=valid, other=0.0).to(tl.float32)
        else:
            w_y = tl.full([BLOCK_N], 1.0, tl.float32)
        big_a = (1.0 - smoothing) * w_y
        ce = (1.0 - smoothing) * w_y * (lse - x_y)
        if HAS_SMOOTHING:
            # (e / V) sum_j w_j (lse - z_j) = (e / V) (W lse - sum_j w_j z_j)
            big_a += smoothing / n_cols * w_sum
            ce += smoothing / n_cols * (w_sum * lse - az)
        big_a = tl.where(valid, big_a, 0.0)
        ce = tl.where(valid, ce, 0.0)
    tl.store(ce_ptr + rows, ce, mask=row_ok)
    tl.store(lse_ptr + rows, lse, mask=row_ok)
    tl.store(a_ptr + rows, big_a, mask=row_ok)


@triton.jit
def _softmax_ce_bwd_kernel(
    x_ptr,
    stride_xn,
    stride_xv,
    bias_ptr,
    dx_ptr,
    stride_dn,
    stride_dv,
    target_ptr,
    stride_tn,
    stride_tv,
    cw_ptr,
    lse_ptr,
    coef_ptr,
    g_a_ptr,
    g_s_ptr,
    n_rows,
    n_cols,
    smoothing,
    cap,
    HAS_BIAS: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    IS_PROB: tl.constexpr,
    HAS_SMOOTHING: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    HALF_OVER_ROW: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < n_rows
    rows64 = rows.to(tl.int64)
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    coef = tl.load(coef_ptr + rows, mask=row_ok, other=0.0)  # g A + h
    g_a = tl.load(g_a_ptr + rows, mask=row_ok, other=0.0)  # g (1 - e) w_y (class ids)
    g_s = tl.load(g_s_ptr + rows, mask=row_ok, other=0.0)  # g e / V (class ids) or g (probs)
    if not IS_PROB:
        y = tl.load(target_ptr + rows64 * stride_tn, mask=row_ok, other=-1).to(tl.int64)
    for v0 in range(0, n_cols, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_ok = cols < n_cols
        mask = row_ok[:, None] & col_ok[None, :]
        cols64 = cols.to(tl.int64)
        x = tl.load(
            x_ptr + rows64[:, None] * stride_xn + cols64[None, :] * stride_xv, mask=mask, other=0.0
        ).to(tl.float32)
        if HAS_BIAS:
            x += tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        if HAS_SOFTCAP:
            z, th = _softcap(x, cap)
        else:
            z = x
        p = tl.exp(z - lse[:, None])
        if HAS_WEIGHT:
            w = tl.load(cw_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        else:
            w = tl.where(col_ok, 1.0, 0.0)
        if IS_PROB:
            t = tl.load(
                target_ptr + rows64[:, None] * stride_tn + cols64[None, :] * stride_tv,
                mask=mask,
                other=0.0,
            ).to(tl.float32)
            ga = g_s[:, None] * (w[None, :] * ((1.0 - smoothing) * t + smoothing / n_cols))
        else:
            ga = tl.where(cols[None, :] == y[:, None], g_a[:, None], 0.0)
            if HAS_SMOOTHING:
                ga += g_s[:, None] * w[None, :]
        dz = coef[:, None] * p - ga  # (g A + h) p_j - g a_j
        if HAS_SOFTCAP:
            dz = dz * (1.0 - th * th)  # d(c tanh(x / c))/dx = 1 - tanh^2
        if HALF_OVER_ROW:
            # 16-bit d(logits) over the first half of each fp32 row: the store of element j
            # lands in the bytes of fp32 element j // 2, which another warp of this program may
            # not have loaded yet (warps do not run in lockstep, and nothing else in this loop
            # synchronises them). All of this step's loads complete before any of its stores.
            # Later steps are safe by the same barrier: step k stores over fp32 elements
            # [k B / 2, (k + 1) B / 2), all loaded in steps <= k, never loaded again.
            tl.debug_barrier()
        tl.store(
            dx_ptr + rows64[:, None] * stride_dn + cols64[None, :] * stride_dv,
            dz.to(dx_ptr.dtype.element_ty),
            mask=mask,
        )


def _interpreting(kernel: Any) -> bool:
    return type(kernel).__name__ == "InterpretedFunction"


def check_device(fn: str, kernel: Any, *tensors: Tensor | None) -> None:
    """Raise a clear error when CPU tensors reach compiled (non-interpreted) kernels, or when the
    tensors sit on different devices."""
    devices = {t.device for t in tensors if t is not None}
    if len(devices) > 1:
        names = ", ".join(sorted(str(d) for d in devices))
        raise ValueError(f"{fn}: all tensors must be on one device, got tensors on {names}")
    if _interpreting(kernel):
        return
    for t in tensors:
        if t is not None and t.device.type != "cuda":
            raise ValueError(
                f"{fn}: the Triton kernels need CUDA tensors, got a tensor on {t.device}. CPU "
                "tensors run only under the Triton interpreter: set TRITON_INTERPRET=1 before "
                "crossentropy.triton is first imported, or use impl='torch'."
            )


def on_device(t: Tensor) -> Any:
    """Context in which kernels launch on ``t``'s GPU: Triton launches on the *current* CUDA
    device, which need not be the tensors' one (e.g. tensors on cuda:1 while cuda:0 is current)."""
    if t.device.type == "cuda":
        return torch.cuda.device(t.device)
    return nullcontext()


def check_float(fn: str, name: str, t: Tensor) -> None:
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"{fn}: {name} must be float32, bfloat16 or float16 for the Triton kernels, got "
            f"{t.dtype}; use impl='torch' for other dtypes"
        )


def grad_coefs(
    g_ce: Tensor | None,
    g_lse: Tensor | None,
    big_a: Tensor,
    target: Tensor,
    weight: Tensor | None,
    *,
    is_prob: bool,
    ignore_index: int,
    label_smoothing: float,
    n_cols: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-row scalars of d/dz_j = coef p_j - (g_a [j = y] + g_s w_j) (class ids) or
    coef p_j - g_s w_j ((1 - e) t_j + e / V) (probabilities), with coef = g A + h."""
    zero = torch.zeros_like(big_a)
    g = g_ce.float() if g_ce is not None else zero
    h = g_lse.float() if g_lse is not None else zero
    if is_prob:
        return g * big_a + h, zero, g
    valid = target != ignore_index
    g = torch.where(valid, g, zero)  # ignored rows: a = 0, whatever g holds there
    coef = g * big_a + h
    if weight is not None:
        w_y = weight.float()[torch.where(valid, target, torch.zeros_like(target)).long()]
    else:
        w_y = torch.ones_like(big_a)
    g_a = g * (1.0 - label_smoothing) * w_y
    g_s = g * (label_smoothing / n_cols)
    return coef, g_a, g_s


def _small(t: Tensor | None) -> Tensor | None:
    """A 1-D per-class or per-row tensor as the kernels read it: unit stride (a cheap copy)."""
    return t if t is None or t.is_contiguous() else t.contiguous()


def _half_over_rows(logits: Tensor, out: Tensor) -> bool:
    """Whether ``out`` is the 16-bit view over the first half of each fp32 row of ``logits``;
    False when ``out`` is a buffer of its own or ``logits`` itself. Any other overlap is refused."""
    if out.untyped_storage().data_ptr() != logits.untyped_storage().data_ptr():
        return False
    same_place = out.data_ptr() == logits.data_ptr()
    if out.dtype == logits.dtype and same_place and out.stride() == logits.stride():
        return False  # elementwise in place: each element is read, then written, by one thread
    half = (
        same_place
        and out.element_size() * 2 == logits.element_size()
        and logits.stride(1) == 1
        and out.stride(1) == 1
        and out.stride(0) * out.element_size() == logits.stride(0) * logits.element_size()
    )
    if not half:
        raise ValueError(
            "softmax_ce_backward: out overlaps the logits but is neither the logits themselves "
            "nor a 16-bit view over the first half of each fp32 row"
        )
    return True


def softmax_ce_forward(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    softcap: float | None,
    *,
    bias: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(ce, lse, A)`` rows of 2-D logits (plus ``bias``, a (V,) vector added to every row),
    float32. Any strides: the kernels take both of the logits' and of probability targets'."""
    n, v = logits.shape
    target = prepare_target(target)
    weight, bias = _small(weight), _small(bias)
    is_prob = target.is_floating_point()
    cfg = softmax_config(n, v, interpret=_interpreting(_softmax_ce_fwd_kernel))
    ce = torch.empty(n, dtype=torch.float32, device=logits.device)
    lse = torch.empty_like(ce)
    big_a = torch.empty_like(ce)
    if n > 0:
        with on_device(logits):
            _softmax_ce_fwd_kernel[(triton.cdiv(n, cfg.block_n),)](
                logits,
                logits.stride(0),
                logits.stride(1),
                bias if bias is not None else ce,
                target,
                target.stride(0),
                target.stride(1) if is_prob else 0,
                weight if weight is not None else ce,
                ce,
                lse,
                big_a,
                n,
                v,
                ignore_index,
                float(label_smoothing),
                float(softcap) if softcap is not None else 1.0,
                HAS_BIAS=bias is not None,
                HAS_WEIGHT=weight is not None,
                IS_PROB=is_prob,
                HAS_SMOOTHING=label_smoothing > 0.0,
                HAS_SOFTCAP=softcap is not None,
                BLOCK_N=cfg.block_n,
                BLOCK_V=cfg.block_v,
                num_warps=cfg.num_warps,
            )
    return ce, lse, big_a


def softmax_ce_backward(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None,
    lse: Tensor,
    big_a: Tensor,
    g_ce: Tensor | None,
    g_lse: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    softcap: float | None,
    out: Tensor | None = None,
    *,
    bias: Tensor | None = None,
) -> Tensor:
    """d(logits) for upstream gradients ``g_ce``, ``g_lse``, written into ``out``.

    ``out`` may be the logits themselves (in place: each element is read and then overwritten by
    the same thread), or a 16-bit view over the first half of each row of fp32 logits (element j
    of a row lands in bytes [2j, 2j + 2), which only hold fp32 elements <= j; the kernel orders
    each step's loads before its stores with a barrier, see ``HALF_OVER_ROW``). Default: a new
    tensor like the logits. Any strides otherwise. With ``bias`` (as in the forward pass) the
    gradient is that of the biased logits, which is also the bias' own per row.
    """
    n, v = logits.shape
    if out is None:
        out = torch.empty_like(logits)
    if tuple(out.shape) != (n, v):
        raise ValueError(
            f"softmax_ce_backward: out must have shape ({n}, {v}), got {tuple(out.shape)}"
        )
    half = _half_over_rows(logits, out)
    target = prepare_target(target)
    weight, bias = _small(weight), _small(bias)
    is_prob = target.is_floating_point()
    coef, g_a, g_s = grad_coefs(
        g_ce,
        g_lse,
        big_a,
        target,
        weight,
        is_prob=is_prob,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        n_cols=v,
    )
    cfg = softmax_config(n, v, interpret=_interpreting(_softmax_ce_bwd_kernel))
    if n > 0:
        with on_device(logits):
            _softmax_ce_bwd_kernel[(triton.cdiv(n, cfg.block_n),)](
                logits,
                logits.stride(0),
                logits.stride(1),
                bias if bias is not None else lse,
                out,
                out.stride(0),
                out.stride(1),
                target,
                target.stride(0),
                target.stride(1) if is_prob else 0,
                weight if weight is not None else lse,
                lse,
                coef,
                g_a,
                g_s,
                n,
                v,
                float(label_smoothing),
                float(softcap) if softcap is not None else 1.0,
                HAS_BIAS=bias is not None,
                HAS_WEIGHT=weight is not None,
                IS_PROB=is_prob,
                HAS_SMOOTHING=label_smoothing > 0.0,
                HAS_SOFTCAP=softcap is not None,
                HALF_OVER_ROW=half,
                BLOCK_N=cfg.block_n,
                BLOCK_V=cfg.block_v,
                num_warps=cfg.num_warps,
            )
    return out


class _SoftmaxCERows(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        logits: Tensor,
        target: Tensor,
        weight: Tensor | None,
        ignore_index: int,
        label_smoothing: float,
        softcap: float | None,
        inplace_backward: bool,
    ) -> tuple[Tensor, Tensor]:
        ce, lse, big_a = softmax_ce_forward(
            logits, target, weight, ignore_index, label_smoothing, softcap
        )
        ctx.save_for_backward(logits, target, weight, lse, big_a)
        ctx.opts = (ignore_index, float(label_smoothing), softcap, inplace_backward)
        ctx.set_materialize_grads(False)
        return ce, lse

    @staticmethod
    def backward(ctx: Any, g_ce: Tensor | None, g_lse: Tensor | None) -> Any:  # type: ignore[override]
        logits, target, weight, lse, big_a = ctx.saved_tensors
        ignore_index, eps, softcap, inplace = ctx.opts
        if g_ce is None and g_lse is None:
            return None, None, None, None, None, None, None
        if torch.is_grad_enabled():  # create_graph=True
            (dx,) = second_order(
                [logits], None, target, weight, ignore_index, eps, softcap, g_ce, g_lse
            )
            return dx, None, None, None, None, None, None
        # In place: the caller has promised not to reuse the logits.
        dx = softmax_ce_backward(
            logits,
            target,
            weight,
            lse,
            big_a,
            g_ce,
            g_lse,
            ignore_index,
            eps,
            softcap,
            out=logits.detach() if inplace else None,
        )
        return dx, None, None, None, None, None, None


def second_order(
    inputs: list[Tensor],
    bias: Tensor | None,
    target: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    softcap: float | None,
    g_ce: Tensor | None,
    g_lse: Tensor | None,
) -> tuple[Tensor | None, ...]:
    """Gradients for ``create_graph=True``: the derivative of a plain, differentiable torch
    recomputation of ``(ce, lse)`` (exact to every order; materialises the logits once).

    ``inputs`` is ``[logits]`` or ``[x, W]`` (logits ``x W^T + bias``); returns one gradient per
    input (and the bias' last, when given)."""
    from crossentropy.torch.engine._rowmath import CrossEntropyRows, LogitMap

    with torch.enable_grad():
        if len(inputs) == 1:
            logits = inputs[0].float()
        else:
            logits = inputs[0].float() @ inputs[1].float().t()
            if bias is not None:
                logits = logits + bias.float()
        math = CrossEntropyRows(
            target,
            weight=weight.float() if weight is not None else None,
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
            num_classes=logits.shape[1],
            lmap=LogitMap(softcap=softcap),
        )
        outs = math.reference([logits])
        wrt = [*inputs, *([bias] if bias is not None else [])]
        pairs = [(o, g) for o, g in zip(outs, (g_ce, g_lse)) if g is not None]
        return torch.autograd.grad(
            [o for o, _ in pairs],
            wrt,
            [g for _, g in pairs],
            create_graph=True,
            allow_unused=True,
        )


def check_rows_args(
    fn: str,
    n: int,
    v: int,
    target: Tensor,
    weight: Tensor | None,
    label_smoothing: float,
    softcap: float | None,
) -> None:
    """Shape/dtype checks shared by both entry points (values were validated by the torch layer)."""
    if target.is_floating_point():
        if tuple(target.shape) != (n, v):
            raise ValueError(
                f"{fn}: probability target must have shape ({n}, {v}), got {tuple(target.shape)}"
            )
    elif target.dtype not in (torch.int32, torch.int64) or tuple(target.shape) != (n,):
        raise ValueError(
            f"{fn}: class-id target must be int32/int64 of shape ({n},), got "
            f"{target.dtype} of shape {tuple(target.shape)}"
        )
    if weight is not None and tuple(weight.shape) != (v,):
        raise ValueError(f"{fn}: weight must have shape ({v},), got {tuple(weight.shape)}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{fn}: label_smoothing must be in [0, 1], got {label_smoothing}")
    if softcap is not None and not softcap > 0:
        raise ValueError(f"{fn}: softcap must be > 0 or None, got {softcap}")


def prepare_target(target: Tensor) -> Tensor:
    """Class ids with unit stride (a cheap copy); probability targets as they are (the kernels
    take their strides)."""
    if target.is_floating_point():
        return target
    return target if target.stride(0) == 1 or target.shape[0] <= 1 else target.contiguous()


def softmax_ce_rows(
    logits: Tensor,
    target: Tensor,
    *,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    softcap: float | None = None,
    inplace_backward: bool = False,
) -> tuple[Tensor, Tensor]:
    """Per-row softmax cross-entropy and logsumexp of 2-D logits, with Triton kernels.

    .. math::

        z = c \\tanh(x / c), \\quad
        \\mathrm{ce}_i = \\sum_j a_{ij} (\\mathrm{lse}_i - z_{ij}), \\quad
        \\mathrm{lse}_i = \\log \\sum_j e^{z_{ij}}

    with :math:`a_{ij} = (1-\\epsilon) w_{y_i} [j = y_i] + (\\epsilon / V) w_j` for class ids and
    :math:`a_{ij} = w_j ((1-\\epsilon) t_{ij} + \\epsilon / V)` for probabilities; the same values
    as ``torch.nn.functional.cross_entropy(..., reduction='none')`` (label smoothing per Szegedy et
    al. 2016; soft-capping as in Gemma 2). Targets with no mass on ``-inf`` logits give finite
    values. All math is fp32.

    Args:
        logits: (N, V) float32, bfloat16 or float16, any strides.
        target: (N,) int32/int64 class ids, or (N, V) float class probabilities.
        weight: (V,) class weights or None.
        ignore_index: class id whose rows get ce = 0 (class ids only).
        label_smoothing: epsilon in [0, 1].
        softcap: c > 0 or None.
        inplace_backward: write d(logits) over the logits buffer in the backward pass (the logits'
            values are destroyed; only for callers that no longer need them).

    Returns:
        ``(ce_rows, lse_rows)``: float32 of shape (N,), differentiable w.r.t. ``logits``; the
        gradient comes back in ``logits.dtype`` (math is fp32; with float16 logits, scale the
        loss as for eager float16, since small gradients can underflow).

    Example (CPU tensors need ``TRITON_INTERPRET=1``, so this is not run as a doctest)::

        ce, lse = softmax_ce_rows(logits.cuda(), target.cuda(), label_smoothing=0.1)
    """
    fn = "softmax_ce_rows"
    if logits.dim() != 2:
        raise ValueError(f"{fn}: logits must be 2-D (N, V), got shape {tuple(logits.shape)}")
    check_float(fn, "logits", logits)
    n, v = logits.shape
    check_rows_args(fn, n, v, target, weight, label_smoothing, softcap)
    check_device(fn, _softmax_ce_fwd_kernel, logits, target, weight)
    ce, lse = _SoftmaxCERows.apply(
        logits, target, weight, int(ignore_index), float(label_smoothing), softcap, inplace_backward
    )
    return ce, lse
