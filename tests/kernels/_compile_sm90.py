"""Compile every Triton kernel for sm_90 (PTX and cubin) without a GPU.

Run as a script in a process without TRITON_INTERPRET (the interpreter never lowers a kernel, so
type or layout errors of the compiled path would otherwise show up only on a GPU). Uses the GPU
tile configuration of ``crossentropy.triton._config`` and specialises arguments as the runtime JIT
does for typical LM shapes: 32-bit integers, and a divisibility-by-16 hint on every pointer and on
every integer that is a multiple of 16. Without those hints the compiler emits a different, slower
variant (no vector loads, no pipelining) than the one a GPU would run.

Unit strides are compile-time constants, as the runtime JIT specialises an integer argument equal
to 1 (so the contiguous layouts compile to the plain, vectorised loads).

Variants: bf16 class ids with every feature (the main path), float32 (full-precision ``ieee``
products in the linear kernels) and float16 probability targets, the softmax kernels for a
small vocabulary (a different tile), and the fast engine's backward row kernel, which reads fp32
logits and writes bf16 d(logits) over the first half of each row (``HALF_OVER_ROW``). Prints one
line per kernel (with the number of ``bar.sync`` barriers in its PTX) and exits non-zero on the
first failure, or when a kernel needs more shared memory than an H100 block may have.
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
) -> tuple[int, str]:
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
    return int(kernel.metadata.shared), str(kernel.asm["ptx"])


def _softmax_jobs(
    dt: str, prob: bool, n: int, v: int, out_dt: str | None = None
) -> list[tuple[Any, ...]]:
    """Forward and backward softmax kernels; ``out_dt``: a backward only, writing d(logits) of
    that dtype over the first half of each row of ``dt`` logits (the fast engine)."""
    cfg = softmax_config(n, v, interpret=False)
    consts = dict(HAS_WEIGHT=True, IS_PROB=prob, HAS_SMOOTHING=True, HAS_SOFTCAP=True)
    consts |= dict(HAS_BIAS=True, BLOCK_N=cfg.block_n, BLOCK_V=cfg.block_v)
    consts |= dict(stride_xv=1, stride_tv=1 if prob else 0)
    row = dict(target_ptr="*fp32" if prob else "*i64", stride_tn="i32", cw_ptr="*fp32")
    row |= dict(n_rows="i32", n_cols="i32", smoothing="fp32", cap="fp32", x_ptr=f"*{dt}")
    row |= dict(stride_xn="i32", bias_ptr="*fp32")
    fwd = dict(row, ce_ptr="*fp32", lse_ptr="*fp32", a_ptr="*fp32", ignore_index="i32")
    bwd = dict(row, dx_ptr=f"*{out_dt or dt}", stride_dn="i32", lse_ptr="*fp32")
    bwd |= dict(coef_ptr="*fp32", g_a_ptr="*fp32", g_s_ptr="*fp32")
    values = dict(stride_xn=v, stride_dn=v, stride_tn=v if prob else 1, n_rows=n, n_cols=v)
    opts = dict(num_warps=cfg.num_warps)
    label = f"{dt}, {'probabilities' if prob else 'class ids'}, V={v}"
    if out_dt is not None:
        values["stride_dn"] = 2 * v  # a 16-bit row over an fp32 row
        label += f", {out_dt} d(logits) over the fp32 rows"
        consts_b = dict(consts, HALF_OVER_ROW=True, stride_dv=1)
        # and with the default options (no class weights, smoothing, softcap or bias): no other
        # barrier then, the one the aliasing needs must be there by itself
        plain = dict(HAS_WEIGHT=False, HAS_SMOOTHING=False, HAS_SOFTCAP=False, HAS_BIAS=False)
        return [
            (S._softmax_ce_bwd_kernel, bwd, values, consts_b, opts, label + ", every option"),
            (S._softmax_ce_bwd_kernel, bwd, values, consts_b | plain, opts, label + ", defaults"),
        ]
    return [
        (S._softmax_ce_fwd_kernel, fwd, values, consts, opts, label),
        (
            S._softmax_ce_bwd_kernel,
            bwd,
            values,
            dict(consts, HALF_OVER_ROW=False, stride_dv=1),
            opts,
            label,
        ),
    ]


def _linear_jobs(dt: str, prob: bool, n: int, d: int, v: int) -> list[tuple[Any, ...]]:
    cfg = linear_config(n, d, v, interpret=False, elem_bytes=4 if dt == "fp32" else 2)
    consts: dict[str, object] = dict(HAS_WEIGHT=True, IS_PROB=prob, HAS_SMOOTHING=True)
    consts |= dict(HAS_SOFTCAP=True, HAS_BIAS=True, UPCAST=False)
    consts |= dict(PRECISION="ieee" if dt == "fp32" else "tf32")
    consts |= dict(BLOCK_N=cfg.block_n, BLOCK_V=cfg.block_v, BLOCK_D=cfg.block_d)
    consts |= dict(stride_xd=1, stride_wd=1, stride_tv=1 if prob else 0)
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
        *_softmax_jobs("fp32", False, 1024, 256000, out_dt="bf16"),
        *_linear_jobs("bf16", False, 8192, 2304, 256000),
        *_linear_jobs("fp32", False, 4096, 1024, 32000),
        *_linear_jobs("fp16", True, 4096, 1024, 32000),
    ]


def loop_orders_loads_before_stores(ptx: str) -> bool:
    """In the kernel's loop, a ``bar.sync`` lies after the last global load and before the first
    global store (what writing 16-bit d(logits) over the fp32 rows being read needs)."""
    lines = ptx.splitlines()
    head = next(i for i, line in enumerate(lines) if "Inner Loop Header" in line)
    body = lines[head:]
    end = next(i for i, line in enumerate(body) if line.strip().startswith("@") and "bra" in line)
    body = body[:end]
    loads = [i for i, line in enumerate(body) if "ld.global" in line]
    stores = [i for i, line in enumerate(body) if "st.global" in line]
    syncs = [i for i, line in enumerate(body) if "bar.sync" in line]
    return bool(loads and stores) and any(max(loads) < b < min(stores) for b in syncs)


def main() -> int:
    for fn, types, values, consts, opts, label in jobs():
        shared, ptx = _compile(fn, types, values, consts, **opts)
        if consts.get("HALF_OVER_ROW") and not loop_orders_loads_before_stores(ptx):
            print(
                f"{fn.__name__} ({label}): no barrier between the loop's loads and its stores",
                file=sys.stderr,
            )
            return 1
        if shared > H100_SMEM_PER_BLOCK:
            print(
                f"{fn.__name__} ({label}): needs {shared} bytes of shared memory, more than "
                f"the {H100_SMEM_PER_BLOCK} an H100 block may use",
                file=sys.stderr,
            )
            return 1
        barriers = ptx.count("bar.sync")
        print(
            f"{fn.__name__} ({label}): compiled for sm_90, {shared} bytes of shared memory, "
            f"{barriers} bar.sync"
        )
    # The control: the same default-options kernel writing to a buffer of its own has no such
    # barrier, so the check above can fail.
    fn, types, values, consts, opts, label = next(j for j in jobs() if "defaults" in j[-1])
    _, ptx = _compile(fn, types, values, dict(consts, HALF_OVER_ROW=False), **opts)
    if loop_orders_loads_before_stores(ptx):
        print("the barrier check passed a kernel without the barrier", file=sys.stderr)
        return 1
    print("control: without HALF_OVER_ROW the loop has no barrier between its loads and stores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
