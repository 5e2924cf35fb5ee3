# Fused linear + softmax cross-entropy in Triton: logits = X W^T + b are never materialised.
#
# Math per row i (see _softmax_ce.py for the derivation): with z = softcap(X W^T + b), p = softmax(z),
# per-class target coefficients a_ij and A_i = sum_j a_ij,
#   ce_i = A_i lse_i - sum_j a_ij z_ij
#   dZ_ij = [(g_i A_i + h_i) p_ij - g_i a_ij] (1 - tanh^2)     (g, h: upstream grads of ce, lse)
#   dX = dZ W,  dW = dZ^T X,  db = sum_i dZ_ij
#
# Forward: a grid of (row block, vocabulary split) programs; each computes its logit tiles
# (block_n x block_v, fp32 accumulation over the hidden dim with tl.dot) and keeps an online
# max / sum of exponentials plus the target-logit and sum_j a_ij z_ij partials, all fp32. The
# splits' partials (5 floats per row per split) are merged in fp32 by a few torch ops.
# Backward ("8NDV" exact design): the vocabulary is walked in slabs of slab_v classes; a kernel
# recomputes the slab's logits and writes dZ_slab (N, slab_v) once, then two GEMMs with fp32
# accumulation give dW_slab = dZ_slab^T X (written once, never re-accumulated) and
# dX += dZ_slab W_slab into an fp32 (N, D) accumulator. No atomics: deterministic.
#
# FLOPs: forward 2NDV, backward 2NDV (recompute) + 2NDV (dX) + 2NDV (dW) = 8NDV in all.
# Memory traffic (b bytes per element): forward reads X once per vocabulary split and W once per
# row block (N/block_n times, mostly from L2); backward reads X and W about once per slab plus
# dZ_slab written and read twice (3 N V b in all).
# Extra memory beyond the gradients: the fp32 dX accumulator (4 N D bytes; the 16-bit dX is then
# rounded into its storage unless the input is a leaf), one dZ slab (N slab_v b bytes, ~64 MiB by
# default), O(N) floats of per-row statistics. Each slab's dX GEMM adds into the accumulator in
# place (addmm with an fp32 output, where torch has it); otherwise it costs one more (N, D) fp32
# temporary.
# dZ is stored in the input dtype so the GEMMs run on tensor cores; computing it in fp32 first
# keeps the logits themselves unrounded (the main source of bf16 error in eager PyTorch).

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from crossentropy.torch.engine._gemm import add_mm_f32_, to_16bit_in_place
from crossentropy.triton._config import linear_config
from crossentropy.triton._softmax_ce import (
    _M_FLOOR,
    _interpreting,
    _small,
    _softcap,
    check_device,
    check_float,
    check_rows_args,
    grad_coefs,
    on_device,
    prepare_target,
    second_order,
)

__all__ = [
    "linear_ce_backward",
    "linear_ce_forward",
    "linear_ce_rows",
]


@triton.jit
def _logit_tile(
    x_ptr,
    stride_xn,
    stride_xd,
    w_ptr,
    stride_wv,
    stride_wd,
    rows64,
    row_ok,
    cols,
    col_ok,
    n_hidden,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    # (BLOCK_N, BLOCK_V) tile of X W^T, accumulated in fp32 over the hidden dim. Both operands
    # are read through both their strides (column-major or sliced weights, as tied or transposed
    # checkpoints give, are read where they lie; unit strides specialise to plain loads).
    acc = tl.zeros([BLOCK_N, BLOCK_V], dtype=tl.float32)
    cols64 = cols.to(tl.int64)
    for d0 in range(0, n_hidden, BLOCK_D):
        dd = d0 + tl.arange(0, BLOCK_D)
        d_ok = dd < n_hidden
        dd64 = dd.to(tl.int64)
        xa = tl.load(
            x_ptr + rows64[:, None] * stride_xn + dd64[None, :] * stride_xd,
            mask=row_ok[:, None] & d_ok[None, :],
            other=0.0,
        )
        wb = tl.load(
            w_ptr + cols64[None, :] * stride_wv + dd64[:, None] * stride_wd,
            mask=col_ok[None, :] & d_ok[:, None],
            other=0.0,
        )
        if UPCAST:
            # The interpreter's dot multiplies bf16's raw uint16 storage; exact either way, since
            # products of bf16 values are exact in fp32.
            xa = xa.to(tl.float32)
            wb = wb.to(tl.float32)
        if PRECISION == "ieee":
            # Full-precision fp32 products: tl.dot(xa, wb, acc) would be one sequential FMA chain
            # over the whole hidden dim (loss error 6.6e-5 measured on an H100 at D=1024, logit
            # std 8); a fresh dot per BLOCK_D slice added to acc is a two-level sum (emulated
            # 5.8e-6; torch.mm 8.9e-6).
            acc += tl.dot(xa, wb, input_precision=PRECISION)
        else:
            acc = tl.dot(xa, wb, acc, input_precision=PRECISION)
    return acc


@triton.jit
def _linear_ce_fwd_kernel(
    x_ptr,
    stride_xn,
    stride_xd,
    w_ptr,
    stride_wv,
    stride_wd,
    bias_ptr,
    target_ptr,
    stride_tn,
    stride_tv,
    cw_ptr,
    part_ptr,
    n_rows,
    n_vocab,
    n_hidden,
    v_per_split,
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
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    n_splits = tl.num_programs(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < n_rows
    rows64 = rows.to(tl.int64)
    if not IS_PROB:
        y = tl.load(target_ptr + rows64 * stride_tn, mask=row_ok, other=ignore_index).to(tl.int64)
    m = tl.full([BLOCK_N], _M_FLOOR, tl.float32)
    s = tl.zeros([BLOCK_N], tl.float32)
    z_y = tl.zeros([BLOCK_N], tl.float32)  # target logit (class ids), found in one tile only
    az = tl.zeros([BLOCK_N], tl.float32)  # sum_j a_j z_j of the smoothing / probability part
    a_sum = tl.zeros([BLOCK_N], tl.float32)  # sum_j a_j (probs) or sum_j w_j (class ids)
    v_start = pid_s * v_per_split
    v_end = tl.minimum(v_start + v_per_split, n_vocab)
    for v0 in range(v_start, v_end, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_ok = cols < v_end
        mask = row_ok[:, None] & col_ok[None, :]
        z = _logit_tile(
            x_ptr,
            stride_xn,
            stride_xd,
            w_ptr,
            stride_wv,
            stride_wd,
            rows64,
            row_ok,
            cols,
            col_ok,
            n_hidden,
            BLOCK_N,
            BLOCK_V,
            BLOCK_D,
            PRECISION,
            UPCAST,
        )
        if HAS_BIAS:
            z += tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        if HAS_SOFTCAP:
            z, _th = _softcap(z, cap)
        z = tl.where(mask, z, float("-inf"))
        m_new = tl.maximum(m, tl.max(z, 1))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new[:, None]), 1)
        m = m_new
        if HAS_WEIGHT:
            w = tl.load(cw_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        else:
            w = tl.where(col_ok, 1.0, 0.0)
        if IS_PROB:
            t = tl.load(
                target_ptr + rows64[:, None] * stride_tn + cols.to(tl.int64)[None, :] * stride_tv,
                mask=mask,
                other=0.0,
            ).to(tl.float32)
            a = tl.where(mask, w[None, :] * ((1.0 - smoothing) * t + smoothing / n_vocab), 0.0)
            a_sum += tl.sum(a, 1)
            az += tl.sum(tl.where(a != 0.0, a * z, 0.0), 1)  # a_j = 0 adds 0 even at z_j = -inf
        else:
            z_y += tl.sum(tl.where(cols[None, :] == y[:, None], z, 0.0), 1)
            if HAS_SMOOTHING:
                az += tl.sum(tl.where(mask & (w[None, :] != 0.0), w[None, :] * z, 0.0), 1)
                a_sum += tl.sum(w, 0)
    # partials: (5, n_splits, n_rows) fp32
    base = part_ptr + pid_s * n_rows + rows
    stride_k = n_splits * n_rows
    tl.store(base, m, mask=row_ok)
    tl.store(base + stride_k, s, mask=row_ok)
    tl.store(base + 2 * stride_k, z_y, mask=row_ok)
    tl.store(base + 3 * stride_k, az, mask=row_ok)
    tl.store(base + 4 * stride_k, a_sum, mask=row_ok)


@triton.jit
def _linear_ce_dz_kernel(
    x_ptr,
    stride_xn,
    stride_xd,
    w_ptr,
    stride_wv,
    stride_wd,
    bias_ptr,
    target_ptr,
    stride_tn,
    stride_tv,
    cw_ptr,
    lse_ptr,
    coef_ptr,
    g_a_ptr,
    g_s_ptr,
    dz_ptr,
    stride_dzn,
    n_rows,
    n_vocab,
    n_hidden,
    v_lo,
    v_hi,
    smoothing,
    cap,
    HAS_BIAS: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    IS_PROB: tl.constexpr,
    HAS_SMOOTHING: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_v = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < n_rows
    rows64 = rows.to(tl.int64)
    cols = v_lo + pid_v * BLOCK_V + tl.arange(0, BLOCK_V)  # global class ids
    col_ok = cols < v_hi
    mask = row_ok[:, None] & col_ok[None, :]
    z = _logit_tile(
        x_ptr,
        stride_xn,
        stride_xd,
        w_ptr,
        stride_wv,
        stride_wd,
        rows64,
        row_ok,
        cols,
        col_ok,
        n_hidden,
        BLOCK_N,
        BLOCK_V,
        BLOCK_D,
        PRECISION,
        UPCAST,
    )
    if HAS_BIAS:
        z += tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_SOFTCAP:
        z, th = _softcap(z, cap)
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    coef = tl.load(coef_ptr + rows, mask=row_ok, other=0.0)  # g A + h
    g_a = tl.load(g_a_ptr + rows, mask=row_ok, other=0.0)  # g (1 - e) w_y (class ids)
    g_s = tl.load(g_s_ptr + rows, mask=row_ok, other=0.0)  # g e / V (class ids) or g (probs)
    p = tl.exp(z - lse[:, None])
    if HAS_WEIGHT:
        w = tl.load(cw_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    else:
        w = tl.where(col_ok, 1.0, 0.0)
    if IS_PROB:
        t = tl.load(
            target_ptr + rows64[:, None] * stride_tn + cols.to(tl.int64)[None, :] * stride_tv,
            mask=mask,
            other=0.0,
        ).to(tl.float32)
        ga = g_s[:, None] * (w[None, :] * ((1.0 - smoothing) * t + smoothing / n_vocab))
    else:
        y = tl.load(target_ptr + rows64 * stride_tn, mask=row_ok, other=-1).to(tl.int64)
        ga = tl.where(cols[None, :] == y[:, None], g_a[:, None], 0.0)
        if HAS_SMOOTHING:
            ga += g_s[:, None] * w[None, :]
    dz = coef[:, None] * p - ga  # (g A + h) p_j - g a_j
    if HAS_SOFTCAP:
        dz = dz * (1.0 - th * th)  # d(c tanh(x / c))/dx = 1 - tanh^2
    dz_cols = (cols - v_lo).to(tl.int64)
    tl.store(
        dz_ptr + rows64[:, None] * stride_dzn + dz_cols[None, :],
        dz.to(dz_ptr.dtype.element_ty),
        mask=mask,
    )


def _precision(dtype: torch.dtype, interp: bool) -> str:
    # fp32 inputs follow torch's float32 matmul precision, as torch.mm does: TF32 tensor cores
    # where the user allowed them, full fp32 products ("ieee") otherwise (and in the interpreter).
    if dtype != torch.float32:
        return "tf32"  # 16-bit products are exact in fp32 whatever the mode
    if interp or torch.get_float32_matmul_precision() == "highest":
        return "ieee"
    return "tf32"


def _config(x: Tensor, lin_w: Tensor) -> Any:
    n, d = x.shape
    num_sms = 132
    if x.device.type == "cuda":
        num_sms = torch.cuda.get_device_properties(x.device).multi_processor_count
    interp = _interpreting(_linear_ce_fwd_kernel)
    return linear_config(
        n, d, lin_w.shape[0], interpret=interp, num_sms=num_sms, elem_bytes=x.element_size()
    )


def linear_ce_forward(
    x: Tensor,
    lin_w: Tensor,
    lin_b: Tensor | None,
    target: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    softcap: float | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(ce, lse, A)`` rows of ``x @ lin_w.T + lin_b`` without the logits (arguments checked;
    any strides)."""
    target = prepare_target(target)
    lin_b, weight = _small(lin_b), _small(weight)
    n, d = x.shape
    v = lin_w.shape[0]
    is_prob = target.is_floating_point()
    interp = _interpreting(_linear_ce_fwd_kernel)
    cfg = _config(x, lin_w)
    v_tiles = triton.cdiv(v, cfg.block_v)
    splits = max(1, min(cfg.v_splits, v_tiles))
    v_per_split = triton.cdiv(v_tiles, splits) * cfg.block_v
    splits = triton.cdiv(v, v_per_split)
    part = torch.empty(5, splits, n, dtype=torch.float32, device=x.device)
    if n > 0:
        with on_device(x):
            _linear_ce_fwd_kernel[(triton.cdiv(n, cfg.block_n), splits)](
                x,
                x.stride(0),
                x.stride(1),
                lin_w,
                lin_w.stride(0),
                lin_w.stride(1),
                lin_b if lin_b is not None else part,
                target,
                target.stride(0),
                target.stride(1) if is_prob else 0,
                weight if weight is not None else part,
                part,
                n,
                v,
                d,
                v_per_split,
                ignore_index,
                float(label_smoothing),
                float(softcap) if softcap is not None else 1.0,
                HAS_BIAS=lin_b is not None,
                HAS_WEIGHT=weight is not None,
                IS_PROB=is_prob,
                HAS_SMOOTHING=label_smoothing > 0.0,
                HAS_SOFTCAP=softcap is not None,
                BLOCK_N=cfg.block_n,
                BLOCK_V=cfg.block_v,
                BLOCK_D=cfg.block_d,
                PRECISION=_precision(x.dtype, interp),
                UPCAST=interp and x.dtype == torch.bfloat16,
                num_warps=cfg.num_warps,
                num_stages=cfg.num_stages,
            )
    m_part, s_part, zy_part, az_part, a_part = part.unbind(0)
    # Merge the splits' online logsumexps: lse = M + log sum_k s_k e^{m_k - M}. m_k is a
    # finite floor for splits that saw only -inf, so no (-inf) - (-inf) here either.
    m_max = m_part.max(0).values
    lse = m_max + torch.log((s_part * torch.exp(m_part - m_max)).sum(0))
    az = az_part.sum(0)
    if is_prob:
        big_a = a_part.sum(0)
        ce = big_a * lse - az
    else:
        eps = float(label_smoothing)
        valid = target != ignore_index
        y_safe = torch.where(valid, target, torch.zeros_like(target)).long()
        w_y = weight.float()[y_safe] if weight is not None else torch.ones_like(lse)
        z_y = zy_part.sum(0)
        ce = (1.0 - eps) * w_y * (lse - z_y)
        big_a = (1.0 - eps) * w_y
        if eps > 0.0:
            w_sum = a_part.sum(0)
            ce = ce + eps / v * (w_sum * lse - az)  # (e/V) sum_j w_j (lse - z_j)
            big_a = big_a + eps / v * w_sum
        zero = torch.zeros_like(ce)
        ce = torch.where(valid, ce, zero)
        big_a = torch.where(valid, big_a, zero)
    return ce, lse, big_a


def linear_ce_backward(
    x: Tensor,
    lin_w: Tensor,
    lin_b: Tensor | None,
    target: Tensor,
    weight: Tensor | None,
    lse: Tensor,
    big_a: Tensor,
    g_ce: Tensor | None,
    g_lse: Tensor | None,
    ignore_index: int,
    eps: float,
    softcap: float | None,
    *,
    needs: int = 7,
    dx_may_share: bool = False,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """``(dx, dW, db)`` (bits 0, 1, 2 of ``needs``) for upstream gradients of ``(ce, lse)``.

    ``dx_may_share``: dX may be rounded into its fp32 accumulator's storage (only when autograd will
    not keep it as a ``.grad``).
    """
    target = prepare_target(target)
    lin_b, weight = _small(lin_b), _small(weight)
    is_prob = target.is_floating_point()
    n, d = x.shape
    v = lin_w.shape[0]
    coef, g_a, g_s = grad_coefs(
        g_ce,
        g_lse,
        big_a,
        target,
        weight,
        is_prob=is_prob,
        ignore_index=ignore_index,
        label_smoothing=eps,
        n_cols=v,
    )
    need_x, need_w, need_b = (bool(needs >> i & 1) for i in range(3))
    cfg = _config(x, lin_w)
    dx_acc = torch.zeros(n, d, dtype=torch.float32, device=x.device) if need_x else None
    # contiguous whatever lin_w's layout: each slab's rows of dW are one GEMM's output
    dw = torch.empty(lin_w.shape, dtype=lin_w.dtype, device=lin_w.device) if need_w else None
    db = torch.empty(v, dtype=torch.float32, device=x.device) if need_b else None
    slab = min(cfg.slab_v, max(v, 1))
    dz_buf = torch.empty(n, slab, dtype=x.dtype, device=x.device)
    for v_lo in range(0, v, slab):
        v_hi = min(v, v_lo + slab)
        dz = dz_buf[:, : v_hi - v_lo]
        if n > 0:
            grid = (triton.cdiv(n, cfg.block_n), triton.cdiv(v_hi - v_lo, cfg.block_v))
            with on_device(x):
                _linear_ce_dz_kernel[grid](
                    x,
                    x.stride(0),
                    x.stride(1),
                    lin_w,
                    lin_w.stride(0),
                    lin_w.stride(1),
                    lin_b if lin_b is not None else lse,
                    target,
                    target.stride(0),
                    target.stride(1) if is_prob else 0,
                    weight if weight is not None else lse,
                    lse,
                    coef,
                    g_a,
                    g_s,
                    dz,
                    dz.stride(0),
                    n,
                    v,
                    d,
                    v_lo,
                    v_hi,
                    eps,
                    float(softcap) if softcap is not None else 1.0,
                    HAS_BIAS=lin_b is not None,
                    HAS_WEIGHT=weight is not None,
                    IS_PROB=is_prob,
                    HAS_SMOOTHING=eps > 0.0,
                    HAS_SOFTCAP=softcap is not None,
                    BLOCK_N=cfg.block_n,
                    BLOCK_V=cfg.block_v,
                    BLOCK_D=cfg.block_d,
                    PRECISION=_precision(x.dtype, _interpreting(_linear_ce_dz_kernel)),
                    UPCAST=_interpreting(_linear_ce_dz_kernel) and x.dtype == torch.bfloat16,
                    num_warps=cfg.num_warps,
                    num_stages=cfg.num_stages,
                )
        else:
            dz.zero_()
        if dx_acc is not None:
            add_mm_f32_(dx_acc, dz, lin_w[v_lo:v_hi])
        if dw is not None:
            # All N rows of this slab at once: dW_slab is complete, written once.
            torch.mm(dz.t(), x, out=dw[v_lo:v_hi])
        if db is not None:
            db[v_lo:v_hi] = dz.sum(0, dtype=torch.float32)
    del dz_buf, dz  # before dX is rounded: the peak is the accumulator plus one slab
    dx = None
    if dx_acc is not None:
        if dx_may_share and x.element_size() == 2:
            dx = to_16bit_in_place(dx_acc, x.dtype)
        else:
            dx = dx_acc.to(x.dtype)
    dbias = db.to(lin_b.dtype) if db is not None and lin_b is not None else None
    return dx, dw, dbias


class _LinearCERows(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        lin_w: Tensor,
        lin_b: Tensor | None,
        target: Tensor,
        weight: Tensor | None,
        ignore_index: int,
        label_smoothing: float,
        softcap: float | None,
    ) -> tuple[Tensor, Tensor]:
        ce, lse, big_a = linear_ce_forward(
            x, lin_w, lin_b, target, weight, ignore_index, label_smoothing, softcap
        )
        ctx.save_for_backward(x, lin_w, lin_b, target, weight, lse, big_a)
        # dX may live in its fp32 accumulator's storage unless autograd may keep it as a .grad
        # (of x, or of the leaf that x is a view of: a view's gradient is a view too)
        root = x._base if x._base is not None else x
        ctx.dx_may_share = not (root.is_leaf or root.retains_grad or x.retains_grad)
        ctx.opts = (ignore_index, float(label_smoothing), softcap)
        ctx.set_materialize_grads(False)
        return ce, lse

    @staticmethod
    def backward(ctx: Any, g_ce: Tensor | None, g_lse: Tensor | None) -> Any:  # type: ignore[override]
        x, lin_w, lin_b, target, weight, lse, big_a = ctx.saved_tensors
        nones = (None, None, None, None, None)
        if g_ce is None and g_lse is None:
            return None, None, None, *nones
        if torch.is_grad_enabled():  # create_graph=True
            ignore_index, eps, softcap = ctx.opts
            grads = second_order(
                [x, lin_w], lin_b, target, weight, ignore_index, eps, softcap, g_ce, g_lse
            )
            db2 = grads[2] if lin_b is not None else None
            return grads[0], grads[1], db2, *nones
        needs = sum(1 << i for i in range(3) if ctx.needs_input_grad[i])
        dx, dw, db = linear_ce_backward(
            x,
            lin_w,
            lin_b,
            target,
            weight,
            lse,
            big_a,
            g_ce,
            g_lse,
            *ctx.opts,
            needs=needs,
            dx_may_share=ctx.dx_may_share,
        )
        return dx, dw, db, *nones


def linear_ce_rows(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    *,
    linear_bias: Tensor | None = None,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    softcap: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-row cross-entropy and logsumexp of ``input @ linear_weight.T + linear_bias``, fused.

    .. math::

        z = c \\tanh((X W^\\top + b) / c), \\quad
        \\mathrm{ce}_i = \\sum_j a_{ij} (\\mathrm{lse}_i - z_{ij})

    with the target coefficients :math:`a_{ij}` of :func:`softmax_ce_rows`. The (N, V) logits are
    never materialised: the forward pass keeps an online fp32 logsumexp over vocabulary tiles, and
    the backward pass recomputes logits one vocabulary slab at a time (8NDV FLOPs in all, exact
    gradients, no atomics).

    Args:
        input: (N, D) float32, bfloat16 or float16 hidden states, any strides.
        linear_weight: (V, D) output-embedding weight, same dtype, any strides.
        target: (N,) int32/int64 class ids, or (N, V) float class probabilities.
        linear_bias: (V,) or None.
        weight: (V,) class weights or None.
        ignore_index: class id whose rows get ce = 0 (class ids only).
        label_smoothing: epsilon in [0, 1].
        softcap: c > 0 or None.

    Returns:
        ``(ce_rows, lse_rows)``: float32 of shape (N,), differentiable w.r.t. ``input``,
        ``linear_weight`` and ``linear_bias``; gradients come back in their dtypes.

    Precision: bf16/fp16 products run on tensor cores with fp32 accumulation; float32 inputs use
    full-precision (``ieee``) products, which are exact to fp32 but do not use tensor cores (TF32
    would cost ~1e-3 relative error in the logits). d(logits) is stored in the input dtype, so
    float16 gradients of a mean over many rows can underflow, as in eager float16: scale the loss
    (``torch.amp.GradScaler``).

    Example (CPU tensors need ``TRITON_INTERPRET=1``, so this is not run as a doctest)::

        ce, lse = linear_ce_rows(h.cuda(), lm_head.weight, target.cuda())
    """
    fn = "linear_ce_rows"
    if input.dim() != 2 or linear_weight.dim() != 2 or input.shape[1] != linear_weight.shape[1]:
        raise ValueError(
            f"{fn}: input must be (N, D) and linear_weight (V, D), got {tuple(input.shape)} and "
            f"{tuple(linear_weight.shape)}"
        )
    check_float(fn, "input", input)
    if linear_weight.dtype != input.dtype:
        raise TypeError(
            f"{fn}: linear_weight dtype {linear_weight.dtype} must match input dtype {input.dtype}"
        )
    n = input.shape[0]
    v = linear_weight.shape[0]
    if linear_bias is not None and tuple(linear_bias.shape) != (v,):
        raise ValueError(
            f"{fn}: linear_bias must have shape ({v},), got {tuple(linear_bias.shape)}"
        )
    check_rows_args(fn, n, v, target, weight, label_smoothing, softcap)
    check_device(fn, _linear_ce_fwd_kernel, input, linear_weight, linear_bias, target, weight)
    ce, lse = _LinearCERows.apply(
        input,
        linear_weight,
        linear_bias,
        target,
        weight,
        int(ignore_index),
        float(label_smoothing),
        softcap,
    )
    return ce, lse
