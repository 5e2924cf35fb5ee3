"""Triton softmax-CE rows against float64 torch.nn.functional (CPU: Triton interpreter)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("triton")

from _triton_reference import (
    GRAD_RTOL,
    LOSS_ATOL,
    device,
    realistic_targets,
    ref_rows,
    rel_err,
)

from crossentropy.triton import softmax_ce_rows
from crossentropy.triton._softmax_ce import check_device

# The interpreter evaluates masked-off lanes too (log(0) on padding rows, 0 * -inf on masked
# classes); those values are discarded by tl.where / masked stores, so numpy's warnings are noise.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning:triton")


@dataclass(frozen=True)
class Case:
    n: int
    v: int
    dtype: torch.dtype = torch.float32
    target: str = "int64"  # "int64", "int32" or "prob"
    weight: bool = False
    ignore: bool = False
    smoothing: float = 0.0
    softcap: float | None = None
    masked: bool = False  # -inf logits on a random subset of classes the target avoids
    layout: str = "contiguous"  # "rows" (strided rows) or "transposed" (column stride != 1)
    scale: float = 4.0  # logit std (LM-like entropy)


# Interpreter tiles are 4 rows x 64 classes (see _config.py): V=130 and 257 cross 3-5 tiles with
# a ragged tail, N=7 and 33 leave a partial row block; N=1, V=5 is a single partial tile.
CASES = {
    "tiny": Case(1, 5),
    "plain": Case(33, 257),
    "int32-ignore-weight": Case(7, 130, target="int32", weight=True, ignore=True),
    "smoothing-weight-ignore": Case(33, 130, weight=True, ignore=True, smoothing=0.2),
    "softcap-smoothing": Case(7, 257, softcap=5.0, smoothing=0.1, scale=8.0),
    "prob-weight-smoothing": Case(7, 130, target="prob", weight=True, smoothing=0.1),
    "masked-inf": Case(33, 130, masked=True, ignore=True),
    "masked-inf-prob": Case(7, 130, target="prob", masked=True),
    "masked-inf-softcap": Case(7, 130, masked=True, softcap=3.0, weight=True),
    # Smoothing puts mass on masked classes: ce = +inf there (as in torch), never NaN.
    "masked-inf-smoothing": Case(7, 130, masked=True, smoothing=0.1),
    "strided-rows": Case(7, 130, layout="rows", weight=True),
    "transposed": Case(7, 130, layout="transposed", smoothing=0.1),
}
# Every feature at once, in each low-precision dtype (fp32 math inside, gradient rounded).
for _dt in (torch.bfloat16, torch.float16):
    CASES[f"all-{str(_dt)[6:]}"] = Case(
        33, 257, dtype=_dt, target="int32", weight=True, ignore=True, smoothing=0.1, softcap=6.0
    )
    CASES[f"prob-{str(_dt)[6:]}"] = Case(7, 130, dtype=_dt, target="prob", weight=True)


def _inputs(case: Case, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(case.n, case.v, generator=g, dtype=torch.float64) * case.scale
    mask = torch.zeros(case.n, case.v, dtype=torch.bool)
    if case.masked:
        mask = torch.rand(case.n, case.v, generator=g) < 0.4
        mask[0, :] = True  # one row masked except one class: a degenerate softmax (p = 1)
        mask[0, 2] = False
    if case.target == "prob":
        t = torch.softmax(torch.randn(case.n, case.v, generator=g, dtype=torch.float64) * 2, 1)
        t = torch.where(mask, torch.zeros_like(t), t)
        t[0] = 0.0
        t[0, 1] = 1.0
        mask[0, 1] = False
        target = (t / t.sum(1, keepdim=True)).float()
    else:
        y = realistic_targets(x.masked_fill(mask, float("-inf")), g)
        mask[torch.arange(case.n), y] = False
        if case.ignore:
            y[1 % case.n] = -100
        target = y.to(torch.int32 if case.target == "int32" else torch.int64)
    x = x.masked_fill(mask, float("-inf"))
    weight = torch.rand(case.v, generator=g) + 0.5 if case.weight else None
    if weight is not None and case.v > 3:
        weight[3] = 0.0  # a zero class weight
    return x, target, weight


def _layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "rows":
        wide = torch.full((x.shape[0], x.shape[1] + 11), 7.0, dtype=x.dtype, device=x.device)
        wide[:, : x.shape[1]] = x
        return wide[:, : x.shape[1]]
    if layout == "transposed":
        return x.t().contiguous().t()
    return x


def _check(case: Case, *, inplace: bool = False) -> None:
    dev = device()
    x64, target, weight = _inputs(case)
    x = _layout(x64.to(case.dtype).to(dev), case.layout).requires_grad_()
    target, weight = target.to(dev), weight.to(dev) if weight is not None else None
    kw = dict(
        weight=weight, ignore_index=-100, label_smoothing=case.smoothing, softcap=case.softcap
    )
    ce, lse = softmax_ce_rows(x, target, inplace_backward=inplace, **kw)
    assert ce.dtype == lse.dtype == torch.float32 and ce.shape == lse.shape == (case.n,)

    xr = x.detach().double().requires_grad_()  # the same rounded inputs, float64 math
    ce_ref, lse_ref = ref_rows(xr, target, **kw)
    assert not ce.isnan().any() and not lse.isnan().any()
    torch.testing.assert_close(ce.double(), ce_ref, atol=LOSS_ATOL[case.dtype], rtol=1e-5)
    torch.testing.assert_close(lse.double(), lse_ref, atol=LOSS_ATOL[case.dtype], rtol=1e-5)

    g = torch.Generator().manual_seed(1)
    g_ce = torch.randn(case.n, generator=g).to(dev)
    g_lse = torch.randn(case.n, generator=g).to(dev)
    finite = torch.isfinite(ce_ref)  # smoothing on masked classes gives ce = inf, like torch
    g_ce = torch.where(finite, g_ce, torch.zeros_like(g_ce))
    (dx,) = torch.autograd.grad((ce, lse), x, (g_ce, g_lse))
    (dx_ref,) = torch.autograd.grad((ce_ref, lse_ref), xr, (g_ce.double(), g_lse.double()))
    assert dx.dtype == case.dtype and dx.shape == x.shape
    assert torch.isfinite(dx).all()
    # fp32 rounding of z - lse grows with |z| (scale 30 gives |z| ~ 100): scale the fp32 tolerance.
    # Half-precision gradients are dominated by their final rounding, so theirs is not scaled.
    zmax = float(x.detach()[torch.isfinite(x.detach())].abs().max().float())
    factor = max(1.0, zmax / 10.0) if case.dtype == torch.float32 else 1.0
    assert rel_err(dx, dx_ref) <= GRAD_RTOL[case.dtype] * factor, rel_err(dx, dx_ref)
    if case.dtype == torch.float32:
        torch.testing.assert_close(dx.double(), dx_ref, atol=1e-6 * factor, rtol=1e-5 * factor)


@pytest.mark.parametrize("name", list(CASES))
def test_softmax_ce_rows_matches_float64(name: str) -> None:
    _check(CASES[name])


def test_inplace_backward_overwrites_logits_with_gradient() -> None:
    case = Case(7, 130, smoothing=0.1, weight=True)
    x64, target, weight = _inputs(case)
    dev = device()
    buf = x64.float().to(dev)
    x = buf.clone().requires_grad_()
    ce, lse = softmax_ce_rows(x, target.to(dev), weight=weight.to(dev), label_smoothing=0.1)
    g_ce, g_lse = torch.randn(7, device=dev), torch.randn(7, device=dev)
    (dx,) = torch.autograd.grad((ce, lse), x, (g_ce, g_lse))
    leaf = buf.clone().requires_grad_()
    work = leaf * 1.0  # a non-leaf buffer the caller gives up
    ce2, lse2 = softmax_ce_rows(
        work, target.to(dev), weight=weight.to(dev), label_smoothing=0.1, inplace_backward=True
    )
    (dx2,) = torch.autograd.grad((ce2, lse2), work, (g_ce, g_lse))
    assert dx2.data_ptr() == work.data_ptr()
    torch.testing.assert_close(dx2, dx, atol=0, rtol=0)
    _check(case, inplace=True)


def test_only_one_output_used_gives_matching_gradients() -> None:
    # ctx.set_materialize_grads(False): the unused output's gradient arrives as None.
    dev = device()
    x64, target, _ = _inputs(Case(7, 130))
    x = x64.float().to(dev).requires_grad_()
    xr = x.detach().double().requires_grad_()
    ce_ref, lse_ref = ref_rows(
        xr, target.to(dev), weight=None, ignore_index=-100, label_smoothing=0.0, softcap=None
    )
    for pick in (0, 1):
        out = softmax_ce_rows(x, target.to(dev))[pick]
        gr = torch.randn(7, device=dev)
        (dx,) = torch.autograd.grad(out, x, gr)
        (dref,) = torch.autograd.grad((ce_ref, lse_ref)[pick], xr, gr.double(), retain_graph=True)
        torch.testing.assert_close(dx.double(), dref, atol=1e-6, rtol=1e-5)


def test_bad_arguments_raise_clear_errors() -> None:
    x = torch.zeros(3, 5, device=device())
    with pytest.raises(ValueError, match="logits must be 2-D"):
        softmax_ce_rows(x[0], torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="class-id target"):
        softmax_ce_rows(x, torch.zeros(4, dtype=torch.long, device=x.device))
    with pytest.raises(ValueError, match="weight must have shape"):
        softmax_ce_rows(x, torch.zeros(3, dtype=torch.long, device=x.device), weight=torch.ones(4))
    with pytest.raises(TypeError, match="float32, bfloat16 or float16"):
        softmax_ce_rows(x.double(), torch.zeros(3, dtype=torch.long, device=x.device))
    with pytest.raises(ValueError, match="one device, got tensors on cpu, meta"):
        softmax_ce_rows(x.cpu(), torch.zeros(3, dtype=torch.long, device="meta"))


def test_compiled_kernels_refuse_cpu_tensors_with_a_clear_error() -> None:
    # A compiled (non-interpreted) kernel object: CPU tensors would crash inside the launch.
    with pytest.raises(ValueError, match=r"need CUDA tensors.*TRITON_INTERPRET=1"):
        check_device("softmax_ce_rows", object(), torch.zeros(2, 3))


@settings(max_examples=8, deadline=None, derandomize=True)
@given(
    n=st.integers(1, 9),
    v=st.integers(2, 140),
    target=st.sampled_from(["int64", "int32", "prob"]),
    weight=st.booleans(),
    smoothing=st.sampled_from([0.0, 0.05, 1.0]),
    softcap=st.sampled_from([None, 2.0]),
    scale=st.sampled_from([0.5, 4.0, 30.0]),
)
def test_random_configs_match_float64(
    n: int,
    v: int,
    target: str,
    weight: bool,
    smoothing: float,
    softcap: float | None,
    scale: float,
) -> None:
    # Random sizes hit every tile/tail combination; scale 30 stresses the online max rescaling.
    _check(
        Case(
            n,
            v,
            target=target,
            weight=weight,
            ignore=target != "prob" and n > 1,
            smoothing=smoothing,
            softcap=softcap,
            scale=scale,
        )
    )


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
class TestCuda:
    """Real shapes on a GPU: run with ``pytest -m cuda``."""

    @pytest.mark.parametrize(
        "case",
        [
            Case(4096, 32003, dtype=torch.bfloat16),
            replace(
                Case(4096, 32003, dtype=torch.bfloat16),
                target="int32",
                weight=True,
                ignore=True,
                smoothing=0.1,
                softcap=30.0,
            ),
            Case(1024, 32003, dtype=torch.bfloat16, target="prob", smoothing=0.1),
            Case(4096, 32003, dtype=torch.float32, masked=True, ignore=True, layout="rows"),
            Case(4096, 32003, dtype=torch.float16, scale=8.0),
        ],
        ids=["bf16", "bf16-all", "bf16-prob", "fp32-masked-strided", "fp16-std8"],
    )
    def test_real_shapes(self, case: Case) -> None:
        _check(case)
        _check(case, inplace=True)

    def test_deterministic(self) -> None:
        x64, target, weight = _inputs(Case(2048, 50257, weight=True))
        x = x64.to(torch.bfloat16).cuda().requires_grad_()
        outs = []
        for _ in range(2):
            ce, lse = softmax_ce_rows(
                x, target.cuda(), weight=weight.cuda(), label_smoothing=0.1, softcap=15.0
            )
            (dx,) = torch.autograd.grad((ce, lse), x, (torch.ones_like(ce), lse.detach()))
            outs.append((ce, lse, dx))
        for a, b in zip(*outs):
            assert torch.equal(a, b)

    def test_index_overflow_rows(self) -> None:
        # N * V > 2**31: row offsets must be computed in int64 (forward and backward).
        n, v = 8500, 256000
        x = (torch.randn(n, v, device="cuda") * 4).to(torch.bfloat16).requires_grad_()
        y = torch.randint(0, v, (n,), device="cuda")
        ce, lse = softmax_ce_rows(x, y)
        g_ce, g_lse = torch.randn_like(ce), torch.randn_like(lse)
        (dx,) = torch.autograd.grad((ce, lse), x, (g_ce, g_lse))
        tail = slice(n - 16, n)
        xr = x.detach()[tail].double().requires_grad_()
        ce_ref, lse_ref = ref_rows(
            xr, y[tail], weight=None, ignore_index=-100, label_smoothing=0.0, softcap=None
        )
        torch.testing.assert_close(ce[tail].double(), ce_ref, atol=5e-5, rtol=1e-5)
        torch.testing.assert_close(lse[tail].double(), lse_ref, atol=5e-5, rtol=1e-5)
        (dref,) = torch.autograd.grad(
            (ce_ref, lse_ref), xr, (g_ce[tail].double(), g_lse[tail].double())
        )
        assert rel_err(dx[tail], dref) <= GRAD_RTOL[torch.bfloat16] / 2
