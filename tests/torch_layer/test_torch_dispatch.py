"""One dispatch function (``_dispatch.plan``), ``explain``, autocast and ``torch.compile``.

The decisions for CUDA are checked through ``plan`` itself with a CUDA device object (no GPU
needed); everything that runs is checked on the CPU against float64 or torch references.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from crossentropy.torch import CrossEntropyLoss, cross_entropy, explain, linear_cross_entropy
from crossentropy.torch.engine import _dispatch as D
from crossentropy.torch.engine._gemm import resolve_precision

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def _plan(device: torch.device, *, kind: str = "linear", triton: bool = True, **kw):
    args = dict(
        fn="f",
        kind=kind,
        device=device,
        prec=resolve_precision(device, torch.bfloat16, autocast=False),
        dtypes_ok=None,
        impl="auto",
        memory="auto",
        scalar=True,
        composable=None,
        process_group=None,
        native_ok=None,
        triton_rows_ok=None,
        rows=4096,
        vocab=128256,
        blocks=1,
        chunk_size=None,
    )
    args.update(kw)
    return D.plan(**args)


@pytest.fixture
def triton_on_cuda(monkeypatch: pytest.MonkeyPatch):
    def set_available(ok: bool) -> None:
        monkeypatch.setattr(
            D, "triton_available", lambda device: (ok, "" if ok else "no triton here")
        )

    set_available(True)
    return set_available


# (device, overrides, expected engine, expected mode)
DECISIONS = [
    (CUDA, {}, "cuda-fast", "fused"),
    (CUDA, {"scalar": False}, "cuda-fast", "rows"),
    (CUDA, {"memory": "low"}, "triton-lowmem", "rows"),
    (CUDA, {"impl": "torch"}, "chunked", "fused"),
    (CUDA, {"dtypes_ok": "float64 inputs"}, "chunked", "fused"),
    (CUDA, {"composable": "a torch.func transform"}, "plain", ""),
    (CUDA, {"kind": "logits", "scalar": False}, "triton-softmax", "rows"),
    (CUDA, {"kind": "logits", "impl": "torch", "native_ok": "bf16 logits"}, "chunked", "rows"),
    (CUDA, {"kind": "logits", "impl": "torch"}, "native", ""),
    (CPU, {}, "chunked", "fused"),
    (CPU, {"scalar": False}, "chunked", "rows"),
    (CPU, {"memory": "low"}, "chunked", "fused"),
    (CPU, {"kind": "logits"}, "native", ""),
    (CPU, {"kind": "logits", "native_ok": "z_loss"}, "chunked", "rows"),
    (CPU, {"composable": "forward-mode AD"}, "plain", ""),
]


@pytest.mark.parametrize(("device", "overrides", "engine", "mode"), DECISIONS)
def test_plan_decisions(triton_on_cuda, device, overrides, engine, mode) -> None:
    plan = _plan(device, **overrides)
    assert (plan.engine, plan.mode) == (engine, mode), str(plan)
    assert plan.reasons and str(plan).startswith("f: engine")


def test_cuda_without_triton_runs_the_torch_engine_on_tensor_cores(triton_on_cuda) -> None:
    triton_on_cuda(False)
    plan = _plan(CUDA)
    assert plan.engine == "chunked"
    assert plan.precision is not None and plan.precision.tensor_cores
    assert plan.precision.dz == torch.bfloat16
    assert any("no triton here" in r for r in plan.reasons)


def test_blocks_follow_the_memory_budget(triton_on_cuda) -> None:
    # 1 GiB per fp32 buffer by default on CUDA, 32 MiB on the CPU; an explicit byte budget wins
    # 2**30 / (4 * 128256) = 2093 rows, rounded down to a power of two
    assert _plan(CUDA).chunk == 2048
    assert _plan(CPU).chunk == 64  # 2**25 / (4 * 128256) = 65
    assert _plan(CPU, memory=16 * 2**20).chunk == 32
    assert _plan(CPU, blocks=2).chunk == 64  # the budget is per buffer
    assert _plan(CPU, chunk_size=100).chunk == 100


def test_explain_real_calls() -> None:
    x, y = torch.randn(8, 50), torch.randint(0, 50, (8,))
    assert explain(cross_entropy, x, y).engine == "native"
    assert explain(cross_entropy, x.bfloat16(), y).engine == "chunked"
    assert explain(cross_entropy, x, y, z_loss=1e-4).engine == "chunked"
    assert explain(CrossEntropyLoss(z_loss=1e-4), x, y).engine == "chunked"
    h, w = torch.randn(8, 16), torch.randn(50, 16)
    p = explain(linear_cross_entropy, h, w, y)
    assert (p.engine, p.mode) == ("chunked", "fused")
    assert explain(linear_cross_entropy, h, w, y, reduction="none").mode == "rows"
    assert explain(linear_cross_entropy, h, w, y, return_aux=True).mode == "rows"
    text = str(explain(linear_cross_entropy, h, w, y, chunk_size=3))
    assert "chunk_size=3" in text and "float32 operands" in text
    with pytest.raises(ValueError, match="memory must be"):
        explain(linear_cross_entropy, h, w, y, memory="tiny")
    with pytest.raises(TypeError, match="cannot explain"):
        explain(print, h)


def test_explain_sees_autocast_and_transforms() -> None:
    h, w, y = torch.randn(8, 16), torch.randn(50, 16), torch.randint(0, 50, (8,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        p = explain(linear_cross_entropy, h, w, y)
    assert p.precision is not None and p.precision.operand == torch.bfloat16
    seen = []

    def probe(hh: torch.Tensor) -> torch.Tensor:
        seen.append(explain(linear_cross_entropy, hh, w, y).engine)
        return linear_cross_entropy(hh, w, y)

    torch.func.grad(probe)(h)
    assert seen == ["plain"]


# ------------------------------------------------------------------------------------------------
# autocast: the projection in the autocast dtype, fp32 softmax math, gradients in each input's dtype


def _round(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.detach().to(dtype).double()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(
    "opts",
    [{}, {"label_smoothing": 0.1, "z_loss": 1e-3, "softcap": 6.0}, {"bias": True}],
    ids=["plain", "extras", "bias"],
)
def test_autocast_equals_the_unfused_model_with_fp32_logits(reduction: str, opts: dict) -> None:
    g = torch.Generator().manual_seed(7)
    n, d, v = 20, 24, 60
    h = torch.randn(n, d, generator=g, requires_grad=True)
    w = (torch.randn(v, d, generator=g) * 0.4).requires_grad_()
    b = torch.randn(v, generator=g, requires_grad=True) if opts.get("bias") else None
    kw = {k: val for k, val in opts.items() if k != "bias"}
    y = torch.randint(0, v, (n,), generator=g)
    y[::5] = -100
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = linear_cross_entropy(h, w, y, linear_bias=b, reduction=reduction, **kw)
    up = torch.randn(loss.shape, generator=g)
    leaves = [h, w] + ([b] if b is not None else [])
    got = torch.autograd.grad(loss, leaves, up)
    assert loss.dtype == torch.float32 and all(t.dtype == torch.float32 for t in got)
    # reference: bf16-rounded operands (what F.linear reads under autocast), float64 after that
    ref_leaves = [_round(t, torch.bfloat16).requires_grad_() for t in leaves]
    z = ref_leaves[0] @ ref_leaves[1].T
    if b is not None:
        z = z + ref_leaves[2]
    ref = cross_entropy(z, y, reduction=reduction, **kw)
    torch.testing.assert_close(loss.double(), ref, rtol=2e-6, atol=2e-6)
    want = torch.autograd.grad(ref, ref_leaves, up.double())
    for a, r in zip(got, want):
        torch.testing.assert_close(a.double(), r, rtol=1e-4, atol=1e-6)


def test_autocast_module_training_step_matches_unfused() -> None:
    # the Trainer(bf16=True) setup: fp32 master weights, bf16 autocast, fused vs materialised logits
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.Tanh())
    head = torch.nn.Linear(16, 40, bias=False)
    x, y = torch.randn(32, 12), torch.randint(0, 40, (32,))
    grads = {}
    for fused in (True, False):
        for p in (*model.parameters(), *head.parameters()):
            p.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            hid = model(x)
            if fused:
                loss = linear_cross_entropy(hid, head.weight, y)
            else:
                loss = F.cross_entropy(F.linear(hid, head.weight).float(), y)
        loss.backward()
        grads[fused] = [p.grad.clone() for p in (*model.parameters(), head.weight)]
        assert all(p.grad.dtype == torch.float32 for p in (*model.parameters(), head.weight))
    for a, b in zip(grads[True], grads[False]):
        # the unfused model rounds its logits to bf16; the fused one keeps them in fp32
        assert float((a - b).norm() / b.norm()) < 2e-2


# ------------------------------------------------------------------------------------------------
# torch.compile(fullgraph=True) on the CPU paths


def _compare(fn, args, backend="aot_eager"):
    leaves_e = [a.detach().clone().requires_grad_() if a.is_floating_point() else a for a in args]
    leaves_c = [a.detach().clone().requires_grad_() if a.is_floating_point() else a for a in args]
    compiled = torch.compile(fn, fullgraph=True, backend=backend)
    le, lc = fn(*leaves_e), compiled(*leaves_c)
    torch.testing.assert_close(lc, le)
    up = torch.randn(le.shape, generator=torch.Generator().manual_seed(1))
    we = [t for t in leaves_e if t.requires_grad]
    wc = [t for t in leaves_c if t.requires_grad]
    for a, b in zip(torch.autograd.grad(lc, wc, up), torch.autograd.grad(le, we, up)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_compile_fullgraph_linear_cross_entropy(reduction: str) -> None:
    g = torch.Generator().manual_seed(3)
    h, w, b = torch.randn(2, 6, 8, generator=g), torch.randn(21, 8, generator=g), torch.randn(21)
    y = torch.randint(0, 21, (2, 6), generator=g)
    y[0, 1] = -100

    def step(hh, ww, bb):
        return linear_cross_entropy(
            hh, ww, y, linear_bias=bb, reduction=reduction, z_loss=1e-3, softcap=5.0, chunk_size=5
        )

    _compare(step, (h, w, b))


def test_compile_fullgraph_return_aux_and_probability_targets() -> None:
    g = torch.Generator().manual_seed(4)
    h, w = torch.randn(9, 8, generator=g), torch.randn(13, 8, generator=g)
    q = torch.softmax(torch.randn(9, 13, generator=g), 1)

    def aux(hh, ww):
        out = linear_cross_entropy(hh, ww, q, z_loss=1e-2, return_aux=True)
        return out.loss + out.lse.mean()

    _compare(aux, (h, w))


@pytest.mark.parametrize(
    "kw",
    [{}, {"label_smoothing": 0.2}, {"z_loss": 1e-3, "reduction": "none"}, {"softcap": 3.0}],
    ids=["native", "native-smoothing", "zloss-none", "softcap"],
)
def test_compile_fullgraph_cross_entropy(kw: dict) -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(7, 11, generator=g)
    y = torch.randint(0, 11, (7,), generator=g)
    y[2] = -100
    _compare(lambda xx: cross_entropy(xx, y, **kw), (x,))


def test_compile_with_inductor() -> None:
    g = torch.Generator().manual_seed(6)
    h, w = torch.randn(10, 8, generator=g), torch.randn(17, 8, generator=g)
    y = torch.randint(0, 17, (10,), generator=g)
    _compare(
        lambda hh, ww: linear_cross_entropy(hh, ww, y, label_smoothing=0.1), (h, w), "inductor"
    )


def test_bad_label_under_compile_raises_not_nan() -> None:
    h, w = torch.randn(4, 8), torch.randn(5, 8)
    y = torch.tensor([0, 1, 7, 2])
    compiled = torch.compile(lambda hh: linear_cross_entropy(hh, w, y), fullgraph=True)
    with pytest.raises(RuntimeError, match="class index outside"):
        compiled(h)
