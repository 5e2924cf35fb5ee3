"""Compile every Triton kernel for sm_90 (PTX and cubin) without a GPU.

Run as a script in a process without TRITON_INTERPRET (the interpreter never lowers a kernel, so
type or layout errors of the compiled path would otherwise show up only on a GPU). Uses the GPU
tile configuration of ``crossentropy.triton._config`` and the all-features variant of each kernel.
Prints one line per kernel and exits non-zero on the first failure.
"""

from __future__ import annotations

import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from crossentropy.triton import _linear_ce as L
from crossentropy.triton import _softmax_ce as S
from crossentropy.triton._config import linear_config, softmax_config


def _compile(
    fn: triton.JITFunction, types: dict[str, str], consts: dict[str, object], **opts: int
) -> int:
    sig = {name: ("constexpr" if name in consts else types[name]) for name in fn.arg_names}
    kernel = triton.compile(
        ASTSource(fn=fn, signature=sig, constexprs=consts),
        target=GPUTarget("cuda", 90, 32),
        options=opts,
    )
    return int(kernel.metadata.shared)


def main() -> int:
    dt = "bf16"
    feats = dict(HAS_WEIGHT=True, IS_PROB=False, HAS_SMOOTHING=True, HAS_SOFTCAP=True)
    sm = softmax_config(8192, 256000, interpret=False)
    sm_tiles = dict(BLOCK_N=sm.block_n, BLOCK_V=sm.block_v)
    row = dict(target_ptr="*i64", stride_tn="i64", cw_ptr="*fp32", n_rows="i32", n_cols="i32")
    fwd = dict(x_ptr=f"*{dt}", stride_xn="i64", ce_ptr="*fp32", lse_ptr="*fp32", a_ptr="*fp32")
    fwd |= dict(ignore_index="i32", smoothing="fp32", cap="fp32", **row)
    bwd = dict(x_ptr=f"*{dt}", stride_xn="i64", dx_ptr=f"*{dt}", stride_dn="i64", lse_ptr="*fp32")
    bwd |= dict(coef_ptr="*fp32", g_a_ptr="*fp32", g_s_ptr="*fp32", smoothing="fp32", cap="fp32")
    bwd |= row
    lc = linear_config(8192, 2304, 256000, interpret=False)
    lin_tiles = dict(BLOCK_N=lc.block_n, BLOCK_V=lc.block_v, BLOCK_D=lc.block_d)
    lin_opts = dict(num_warps=lc.num_warps, num_stages=lc.num_stages)
    common = dict(x_ptr=f"*{dt}", stride_xn="i64", w_ptr=f"*{dt}", stride_wv="i64")
    common |= dict(bias_ptr=f"*{dt}", target_ptr="*i32", stride_tn="i64", cw_ptr="*fp32")
    common |= dict(n_rows="i32", n_vocab="i32", n_hidden="i32", smoothing="fp32", cap="fp32")
    lfwd = dict(common, part_ptr="*fp32", v_per_split="i32", ignore_index="i32")
    ldz = dict(common, lse_ptr="*fp32", coef_ptr="*fp32", g_a_ptr="*fp32", g_s_ptr="*fp32")
    ldz |= dict(dz_ptr=f"*{dt}", stride_dzn="i64", v_lo="i32", v_hi="i32")
    lin_consts = dict(feats, HAS_BIAS=True, PRECISION="tf32", UPCAST=False, **lin_tiles)
    jobs = [
        (S._softmax_ce_fwd_kernel, fwd, dict(feats, **sm_tiles), dict(num_warps=sm.num_warps)),
        (S._softmax_ce_bwd_kernel, bwd, dict(feats, **sm_tiles), dict(num_warps=sm.num_warps)),
        (L._linear_ce_fwd_kernel, lfwd, lin_consts, lin_opts),
        (L._linear_ce_dz_kernel, ldz, lin_consts, lin_opts),
    ]
    for fn, types, consts, opts in jobs:
        shared = _compile(fn, types, consts, **opts)
        print(f"{fn.__name__}: compiled for sm_90, {shared} bytes of shared memory")
    return 0


if __name__ == "__main__":
    sys.exit(main())
