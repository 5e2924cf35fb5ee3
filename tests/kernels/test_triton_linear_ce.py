"""Triton fused linear-CE rows against float64 torch.nn.functional (CPU: Triton interpreter)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from _triton_reference import (
    GRAD_RTOL,
    LOSS_ATOL,
    device,
    realistic_targets,
    ref_rows,
    rel_err,
)

from crossentropy.triton import linear_ce_rows

ROOT = Path(__file__).resolve().parents[2]

# See test_triton_softmax_ce.py: numpy warnings from masked-off lanes in the interpreter.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning:triton")


@dataclass(frozen=True)
class Case:
    n: int
    d: int
    v: int
    dtype: torch.dtype = torch.float32
    target: str = "int64"  # "int64", "int32" or "prob"
    bias: bool = False
    weight: bool = False
    ignore: bool = False
    smoothing: float = 0.0
    softcap: float | None = None
    masked: bool = False  # bias = -inf on a subset of classes no target uses
    layout: str = "contiguous"  # "strided": input rows strided, weight column-major
    std: float = 4.0  # logit std (LM-like entropy)


# Interpreter tiles: 16 rows x 32 classes x 16 hidden, 2 vocabulary splits, backward slabs of 64
# classes. N=33 leaves a partial row block, D=40 a partial hidden tile, V=257 a one-class tail in
# its last slab; V=130 splits unevenly between the two forward splits.
CASES = {
    "plain": Case(33, 40, 257),
    "tiny": Case(1, 16, 5),
    "bias-weight-ignore-int32": Case(
        7, 16, 130, target="int32", bias=True, weight=True, ignore=True
    ),
    "smoothing-softcap": Case(7, 40, 130, smoothing=0.1, softcap=5.0, std=8.0),
    "prob-bias-smoothing": Case(7, 16, 130, target="prob", bias=True, smoothing=0.1, weight=True),
    "masked-inf-bias": Case(7, 16, 130, masked=True, ignore=True),
    "strided": Case(7, 40, 130, layout="strided", bias=True),
    "all-bf16": Case(
        33, 40, 257, torch.bfloat16, "int32", True, True, True, smoothing=0.1, softcap=6.0
    ),
    "all-fp16": Case(7, 40, 130, torch.float16, bias=True, weight=True, smoothing=0.1),
}


def _inputs(case: Case, seed: int = 0) -> dict[str, torch.Tensor | None]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(case.n, case.d, generator=g, dtype=torch.float64)
    # Scale W so that the logits have standard deviation ~case.std.
    w = torch.randn(case.v, case.d, generator=g, dtype=torch.float64) * case.std / case.d**0.5
    b = torch.randn(case.v, generator=g, dtype=torch.float64) if case.bias or case.masked else None
    if case.masked:
        assert b is not None
        b[torch.rand(case.v, generator=g) < 0.3] = float("-inf")
    x, w = x.to(case.dtype), w.to(case.dtype)
    b = b.to(case.dtype) if b is not None else None
    z = x.double() @ w.double().T + (b.double() if b is not None else 0.0)
    if case.target == "prob":
        t = torch.softmax(torch.randn(case.n, case.v, generator=g, dtype=torch.float64) * 2, 1)
        target = t.float()
    else:
        y = realistic_targets(z, g)
        if case.ignore:
            y[1 % case.n] = -100
        target = y.to(torch.int32 if case.target == "int32" else torch.int64)
    weight = torch.rand(case.v, generator=g) + 0.5 if case.weight else None
    if weight is not None and case.v > 3:
        weight[3] = 0.0
    return {"x": x, "w": w, "b": b, "target": target, "weight": weight}


def _check(case: Case) -> None:
    dev = device()
    t = {k: (v.to(dev) if v is not None else None) for k, v in _inputs(case).items()}
    x, w, b = t["x"], t["w"], t["b"]
    assert x is not None and w is not None and t["target"] is not None
    if case.layout == "strided":
        x = torch.cat([x, torch.full_like(x[:, :5], 9.0)], 1)[:, : case.d]
        w = w.t().contiguous().t()
        assert x.stride(0) != case.d and w.stride(1) != 1
    params = [p.detach().requires_grad_() for p in (x, w, b) if p is not None]
    x, w = params[0], params[1]
    b = params[2] if len(params) == 3 else None
    kw = dict(
        weight=t["weight"],
        ignore_index=-100,
        label_smoothing=case.smoothing,
        softcap=case.softcap,
    )
    ce, lse = linear_ce_rows(x, w, t["target"], linear_bias=b, **kw)
    assert ce.dtype == lse.dtype == torch.float32 and ce.shape == lse.shape == (case.n,)

    refs = [p.detach().double().requires_grad_() for p in params]
    z = refs[0] @ refs[1].T + (refs[2] if b is not None else 0.0)
    ce_ref, lse_ref = ref_rows(z, t["target"], **kw)
    torch.testing.assert_close(ce.double(), ce_ref, atol=LOSS_ATOL[case.dtype], rtol=1e-5)
    torch.testing.assert_close(lse.double(), lse_ref, atol=LOSS_ATOL[case.dtype], rtol=1e-5)

    g = torch.Generator().manual_seed(1)
    g_ce = torch.randn(case.n, generator=g).to(dev)
    g_lse = torch.randn(case.n, generator=g).to(dev)
    grads = torch.autograd.grad((ce, lse), params, (g_ce, g_lse))
    grads_ref = torch.autograd.grad((ce_ref, lse_ref), refs, (g_ce.double(), g_lse.double()))
    for name, ours, ref, p in zip(("input", "weight", "bias"), grads, grads_ref, params):
        assert ours.dtype == p.dtype and ours.shape == p.shape, name
        assert torch.isfinite(ours).all(), name
        err = rel_err(ours, ref)
        assert err <= GRAD_RTOL[case.dtype], (name, err)


@pytest.mark.parametrize("name", list(CASES))
def test_linear_ce_rows_matches_float64(name: str) -> None:
    _check(CASES[name])


def test_only_input_requires_grad() -> None:
    dev = device()
    t = _inputs(Case(7, 16, 130, bias=True))
    x = t["x"].to(dev).requires_grad_()  # type: ignore[union-attr]
    w, b, y = (t[k].to(dev) for k in ("w", "b", "target"))  # type: ignore[union-attr]
    ce, _ = linear_ce_rows(x, w, y, linear_bias=b)
    gr = torch.randn(7, device=dev)
    (dx,) = torch.autograd.grad(ce, x, gr)
    xr = x.detach().double().requires_grad_()
    ce_ref, _ = ref_rows(
        xr @ w.double().T + b.double(),
        y,
        weight=None,
        ignore_index=-100,
        label_smoothing=0.0,
        softcap=None,
    )
    (dref,) = torch.autograd.grad(ce_ref, xr, gr.double())
    assert rel_err(dx, dref) <= 4e-6


def test_bad_arguments_raise_clear_errors() -> None:
    dev = device()
    x, w = torch.zeros(3, 8, device=dev), torch.zeros(5, 8, device=dev)
    y = torch.zeros(3, dtype=torch.long, device=dev)
    with pytest.raises(ValueError, match=r"linear_weight \(V, D\)"):
        linear_ce_rows(x, w[:, :4], y)
    with pytest.raises(TypeError, match="must match input dtype"):
        linear_ce_rows(x, w.half(), y)
    with pytest.raises(ValueError, match="linear_bias must have shape"):
        linear_ce_rows(x, w, y, linear_bias=torch.zeros(4, device=dev))
    with pytest.raises(ValueError, match="label_smoothing"):
        linear_ce_rows(x, w, y, label_smoothing=1.5)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
class TestCuda:
    """Real shapes on a GPU: run with ``pytest -m cuda``."""

    @pytest.mark.parametrize(
        "case",
        [
            Case(4096, 1024, 32003, torch.bfloat16),
            Case(4096, 1024, 32003, torch.bfloat16, "int32", True, True, True, 0.1, 30.0),
            Case(2048, 1024, 32003, torch.bfloat16, "prob", bias=True, smoothing=0.1),
            Case(4096, 1024, 32003, torch.float32, masked=True, layout="strided", std=8.0),
            Case(4096, 1024, 32003, torch.float16, weight=True, std=0.5),
        ],
        ids=["bf16", "bf16-all", "bf16-prob", "fp32-masked-strided", "fp16-uniformish"],
    )
    def test_real_shapes(self, case: Case) -> None:
        _check(case)

    def test_deterministic(self) -> None:
        t = _inputs(Case(4096, 1024, 32003, torch.bfloat16, bias=True, smoothing=0.1))
        params = [t[k].cuda().requires_grad_() for k in ("x", "w", "b")]  # type: ignore[union-attr]
        y = t["target"].cuda()  # type: ignore[union-attr]
        outs = []
        for _ in range(2):
            ce, lse = linear_ce_rows(params[0], params[1], y, linear_bias=params[2])
            gs = torch.autograd.grad((ce, lse), params, (torch.ones_like(ce), lse.detach()))
            outs.append((ce, lse, *gs))
        for a, b in zip(*outs):
            assert torch.equal(a, b)

    def test_index_overflow_probability_targets(self) -> None:
        # N * V > 2**31: the (N, V) probability targets are addressed with int64 offsets.
        n, d, v = 16384, 64, 131104
        g = torch.Generator(device="cuda").manual_seed(0)
        x = torch.randn(n, d, device="cuda", generator=g).to(torch.bfloat16).requires_grad_()
        w = (torch.randn(v, d, device="cuda", generator=g) * 0.5).to(torch.bfloat16)
        target = torch.rand(n, v, device="cuda", generator=g)
        target /= target.sum(1, keepdim=True)
        ce, lse = linear_ce_rows(x, w, target)
        g_ce, g_lse = torch.randn_like(ce), torch.randn_like(lse)
        (dx,) = torch.autograd.grad((ce, lse), x, (g_ce, g_lse))
        tail = slice(n - 16, n)
        xr = x.detach()[tail].double().requires_grad_()
        ce_ref, lse_ref = ref_rows(
            xr @ w.double().T,
            target[tail],
            weight=None,
            ignore_index=-100,
            label_smoothing=0.0,
            softcap=None,
        )
        torch.testing.assert_close(
            ce[tail].double(), ce_ref, atol=LOSS_ATOL[torch.bfloat16], rtol=1e-5
        )
        torch.testing.assert_close(
            lse[tail].double(), lse_ref, atol=LOSS_ATOL[torch.bfloat16], rtol=1e-5
        )
        (dref,) = torch.autograd.grad(
            (ce_ref, lse_ref), xr, (g_ce[tail].double(), g_lse[tail].double())
        )
        assert rel_err(dx[tail], dref) <= GRAD_RTOL[torch.bfloat16]


@pytest.mark.slow
def test_kernels_compile_for_sm90_without_a_gpu(tmp_path: Path) -> None:
    # The interpreter never lowers kernels; compile the GPU path for an H100 in a fresh process
    # (no TRITON_INTERPRET, empty cache) so its type and layout errors show up in CPU-only CI.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    script = Path(__file__).with_name("_compile_sm90.py")
    out = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    sys.path.insert(0, str(script.parent))
    try:
        from _compile_sm90 import jobs
    finally:
        sys.path.remove(str(script.parent))
    assert out.stdout.count("compiled for sm_90") == len(jobs()) >= 10, out.stdout
    # the fast engine's in-place 16-bit write is ordered after the loads (and the check can fail)
    assert "control: without HALF_OVER_ROW" in out.stdout, out.stdout


def test_second_order_gradients_match_torch() -> None:
    # create_graph=True: both kernels' backward differentiate a plain-torch recomputation, so a
    # Hessian-vector product through them equals torch's (fp32 throughout).
    from crossentropy.triton import softmax_ce_rows

    dev = device()
    g = torch.Generator().manual_seed(7)
    n, d, v, cap, eps = 6, 16, 40, 5.0, 0.1
    h = torch.randn(n, d, generator=g).to(dev).requires_grad_()
    w = torch.randn(v, d, generator=g).to(dev).requires_grad_()
    y = torch.randint(0, v, (n,), generator=g).to(dev)
    y[1] = -100
    up = torch.randn(n, generator=g).to(dev)

    def hvp(rows: Any) -> tuple[torch.Tensor, ...]:
        gh, gw = torch.autograd.grad(rows(h, w), (h, w), up, create_graph=True)
        u = torch.randn(gh.shape, generator=g), torch.randn(gw.shape, generator=g)
        return torch.autograd.grad((gh * u[0].to(dev)).sum() + (gw * u[1].to(dev)).sum(), (h, w))

    def ref(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        z = cap * torch.tanh(h @ w.t() / cap)
        return F.cross_entropy(z, y, reduction="none", label_smoothing=eps)

    def fused(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return linear_ce_rows(h, w, y, label_smoothing=eps, softcap=cap)[0]

    def logits(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return softmax_ce_rows(h @ w.t(), y, label_smoothing=eps, softcap=cap)[0]

    state = g.get_state()
    want = hvp(ref)
    for rows in (fused, logits):
        g.set_state(state)
        got = hvp(rows)
        for a, b in zip(got, want):
            assert rel_err(a, b.double()) < 1e-5, rel_err(a, b.double())


@pytest.mark.parametrize("elem_bytes", [2, 4])
@pytest.mark.parametrize("n", [1, 1000, 8192, 16384, 2**20])
def test_backward_slab_fits_its_budget_in_every_dtype(n: int, elem_bytes: int) -> None:
    # The backward's d(logits) slab is stored in the input dtype: ~64 MiB whatever its size, never
    # narrower than one tile, and within the grid's 65535-tile limit.
    from crossentropy.triton._config import linear_config

    cfg = linear_config(n, 4096, 128256, interpret=False, elem_bytes=elem_bytes)
    assert cfg.slab_v % cfg.block_v == 0
    assert cfg.block_v <= cfg.slab_v <= 65535 * cfg.block_v
    if cfg.slab_v > cfg.block_v:
        assert n * cfg.slab_v * elem_bytes <= 64 * 2**20
    if cfg.block_v < cfg.slab_v < 65535 * cfg.block_v:
        assert n * (cfg.slab_v + cfg.block_v) * elem_bytes > 64 * 2**20


def test_input_grad_shares_the_accumulator_only_when_autograd_will_not_keep_it() -> None:
    # A non-leaf input's dX is rounded inside the fp32 accumulator's storage (no second N x D
    # buffer); a leaf's (or a view of a leaf's) gets its own, since it would be kept as .grad.
    # The values are the same bit for bit either way.
    dev = device()
    g = torch.Generator().manual_seed(5)
    n, d, v = 9, 16, 70
    leaf = torch.randn(n, d, generator=g).to(dev, torch.bfloat16).requires_grad_()
    w = torch.randn(v, d, generator=g).to(dev, torch.bfloat16)
    y = torch.randint(0, v, (n,), generator=g).to(dev)
    up = torch.randn(n, generator=g).to(dev)

    def dx_of(x: torch.Tensor) -> torch.Tensor:
        ce, _ = linear_ce_rows(x, w, y)
        (dx,) = torch.autograd.grad(ce, x, up)
        return dx

    from_leaf = dx_of(leaf)
    non_leaf = leaf * 1
    from_non_leaf = dx_of(non_leaf)
    from_view = dx_of(leaf.view(n, d))
    assert torch.equal(from_leaf, from_non_leaf) and torch.equal(from_leaf, from_view)
    assert from_leaf.untyped_storage().nbytes() == n * d * 2
    assert from_view.untyped_storage().nbytes() == n * d * 2
    assert from_non_leaf.untyped_storage().nbytes() == n * d * 4
