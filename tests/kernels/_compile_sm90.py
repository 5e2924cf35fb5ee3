"""Compile every Triton kernel for sm_90 (PTX and cubin) without a GPU.

Run as a script in a process without TRITON_INTERPRET (the interpreter never lowers a kernel, so
type or layout errors of the compiled path would otherwise show up only on a GPU). Uses the GPU
tile configuration of ``crossentropy.triton._config`` and specialises arguments as the runtime JIT
does for typical LM shapes: 32-bit integers, and a divisibility-by-16 hint on every pointer and on
every integer that is a multiple of 16. Without those hints the compiler emits a different, slower
variant (no vector loads, no pipelining) than the one a GPU would run.

Variants: bf16 class ids with every feature (the main path), float32 (full-precision ``ieee``
products in the linear kernels) and float16 probability targets, and the softmax kernels for a
small vocabulary (a different tile). Prints one line per kernel and exits non-zero on the first
failure, or when a kernel needs more shared memory than an H100 block may have.
"""

from __future__ import annotations

import sys
from typing import Any

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from crossentropy.triton import _linear_ce as L
from crossentropy.triton import _softmax_ce as S
from crossentropy.triton._config import linear_config, softmax_config

H100_SMEM_PER_BLOCK = 232448  # 227 KiB of opt-in dynamic shared memory per block on sm_90


def _compile(
    fn: triton.JITFunction,
    types: dict[str, str],
    values: dict[str, int],
    consts: dict[str, object],
    **opts: int,
) -> int:
    sig = {name: ("constexpr" if name in consts else types[name]) for name in fn.arg_names}
    attrs = {
        (i,): [["tt.divisibility", 16]]
        for i, name in enumerate(fn.arg_names)
        if name not in consts and (types[name].startswith("*") or values.get(name, 1) % 16 == 0)
    }
    kernel = triton.compile(
        ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs),
        target=GPUTarget("cuda", 90, 32),
        options=opts,
    )
    return int(kernel.metadata.shared)


def _softmax_jobs(dt: str, prob: bool, n: int, v: int) -> list[tuple[Any, ...]]:
    cfg = softmax_config(n, v, interpret=False)
    consts = dict(HAS_WEIGHT=True, IS_PROB=prob, HAS_SMOOTHING=True, HAS_SOFTCAP=True)
    consts |= dict(BLOCK_N=cfg.block_n, BLOCK_V=cfg.block_v)
    row = dict(target_ptr="*fp32" if prob else "*i64", stride_tn="i32", cw_ptr="*fp32")
    row |= dict(n_rows="i32", n_cols="i32", smoothing="fp32", cap="fp32", x_ptr=f"*{dt}")
    row |= dict(stride_xn="i32")
    fwd = dict(row, ce_ptr="*fp32", lse_ptr="*fp32", a_ptr="*fp32", ignore_index="i32")
    bwd = dict(row, dx_ptr=f"*{dt}", stride_dn="i32", lse_ptr="*fp32", coef_ptr="*fp32")
    bwd |= dict(g_a_ptr="*fp32", g_s_ptr="*fp32")
    values = dict(stride_xn=v, stride_dn=v, stride_tn=v if prob else 1, n_rows=n, n_cols=v)
    opts = dict(num_warps=cfg.num_warps)
    label = f"{dt}, {'probabilities' if prob else 'class ids'}, V={v}"
    return [
        (S._softmax_ce_fwd_kernel, fwd, values, consts, opts, label),
        (S._softmax_ce_bwd_kernel, bwd, values, consts, opts, label),
    ]


def _linear_jobs(dt: str, prob: bool, n: int, d: int, v: int) -> list[tuple[Any, ...]]:
    cfg = linear_config(n, d, v, interpret=False, elem_bytes=4 if dt == "fp32" else 2)
    consts: dict[str, object] = dict(HAS_WEIGHT=True, IS_PROB=prob, HAS_SMOOTHING=True)
    consts |= dict(HAS_SOFTCAP=True, HAS_BIAS=True, UPCAST=False)
    consts |= dict(PRECISION="ieee" if dt == "fp32" else "tf32")
    consts |= dict(BLOCK_N=cfg.block_n, BLOCK_V=cfg.block_v, BLOCK_D=cfg.block_d)
    common = dict(x_ptr=f"*{dt}", stride_xn="i32", w_ptr=f"*{dt}", stride_wv="i32")
    common |= dict(bias_ptr=f"*{dt}", target_ptr="*fp32" if prob else "*i64", stride_tn="i32")
    common |= dict(cw_ptr="*fp32", n_rows="i32", n_vocab="i32", n_hidden="i32")
    common |= dict(smoothing="fp32", cap="fp32")
    fwd = dict(common, part_ptr="*fp32", v_per_split="i32", ignore_index="i32")
    dz = dict(common, lse_ptr="*fp32", coef_ptr="*fp32", g_a_ptr="*fp32", g_s_ptr="*fp32")
    dz |= dict(dz_ptr=f"*{dt}", stride_dzn="i32", v_lo="i32", v_hi="i32")
    slab = min(cfg.slab_v, v)
    values = dict(stride_xn=d, stride_wv=d, stride_tn=v if prob else 1, n_rows=n, n_vocab=v)
    values |= dict(n_hidden=d, stride_dzn=slab, v_lo=0, v_hi=slab, v_per_split=cfg.block_v)
    opts = dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    label = f"{dt}, {'probabilities' if prob else 'class ids'}, {n}x{d}x{v}"
    return [
        (L._linear_ce_fwd_kernel, fwd, values, consts, opts, label),
        (L._linear_ce_dz_kernel, dz, values, consts, opts, label),
    ]


def jobs() -> list[tuple[Any, ...]]:
    return [
        *_softmax_jobs("bf16", False, 8192, 256000),
        *_softmax_jobs("fp32", True, 4096, 3000),
        *_linear_jobs("bf16", False, 8192, 2304, 256000),
        *_linear_jobs("fp32", False, 4096, 1024, 32000),
        *_linear_jobs("fp16", True, 4096, 1024, 32000),
    ]


def main() -> int:
    for fn, types, values, consts, opts, label in jobs():
        shared = _compile(fn, types, values, consts, **opts)
        if shared > H100_SMEM_PER_BLOCK:
            print(
                f"{fn.__name__} ({label}): needs {shared} bytes of shared memory, more than "
                f"the {H100_SMEM_PER_BLOCK} an H100 block may use",
                file=sys.stderr,
            )
            return 1
        print(f"{fn.__name__} ({label}): compiled for sm_90, {shared} bytes of shared memory")
    return 0


if __name__ == "__main__":
    sys.exit(main())
