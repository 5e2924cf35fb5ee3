"""crossentropy.torch.cross_entropy against torch.nn.functional.cross_entropy and float64 math."""

from __future__ import annotations

import math
import zlib

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from crossentropy.torch import CrossEntropyAux, cross_entropy

REDUCTIONS = ["mean", "sum", "none"]


def _grads(loss: torch.Tensor, inputs: list[torch.Tensor], upstream: torch.Tensor):
    return torch.autograd.grad(loss, inputs, upstream)


def _make(shape, num_classes, *, prob, seed, dtype=torch.float64, ignore_frac=0.2, ignore=-100):
    g = torch.Generator().manual_seed(seed)
    x = (3 * torch.randn(shape, generator=g, dtype=torch.float64)).to(dtype)
    if prob:
        t = torch.softmax(
            torch.randn(shape, generator=g, dtype=torch.float64), dim=1 if len(shape) > 1 else 0
        )
        return x, t.to(dtype if dtype != torch.float64 else torch.float64)
    tshape = (shape[0], *shape[2:]) if len(shape) > 1 else ()
    t = torch.randint(0, num_classes, tshape, generator=g)
    # the unbatched case keeps its one position (all-ignored is tested on its own)
    mask = torch.rand(tshape, generator=g) < (ignore_frac if tshape else 0.0)
    return x, torch.where(mask, torch.tensor(ignore), t)


# Shapes: (N, C) aligned and odd class counts (1 and 2 are degenerate softmaxes, 33 and 129 are not
# powers of two), K-dim inputs (class dim 1 is not the last, so rows are strided), and unbatched (C,).
SHAPES = [(8, 1), (6, 2), (5, 7), (16, 33), (3, 129), (2, 5, 3), (2, 6, 3, 2), (7,)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("prob", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_matches_torch_float64(shape, prob, reduction):
    num_classes = shape[1] if len(shape) > 1 else shape[0]
    x, t = _make(
        shape, num_classes, prob=prob, seed=zlib.crc32(repr((shape, prob, reduction)).encode())
    )
    weight = torch.rand(num_classes, dtype=torch.float64) + 0.1
    for kwargs in ({}, {"weight": weight, "label_smoothing": 0.15}):
        xr = x.clone().requires_grad_(True)
        xo = x.clone().requires_grad_(True)
        ref = F.cross_entropy(xr, t, reduction=reduction, **kwargs)
        ours = cross_entropy(xo, t, reduction=reduction, **kwargs)
        assert ours.shape == ref.shape and ours.dtype == torch.float64
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
        up = torch.randn_like(ref)
        (gr,) = _grads(ref, [xr], up)
        (go,) = _grads(ours, [xo], up)
        torch.testing.assert_close(go, gr, rtol=1e-10, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 9),
    c=st.integers(1, 40),
    k=st.integers(0, 2),
    prob=st.booleans(),
    use_weight=st.booleans(),
    eps=st.sampled_from([0.0, 0.1, 1.0]),
    reduction=st.sampled_from(REDUCTIONS),
    ignore_index=st.sampled_from([-100, 0, 3]),
    seed=st.integers(0, 2**16),
)
def test_random_grid_float32(n, c, k, prob, use_weight, eps, reduction, ignore_index, seed):
    shape = (n, c, *([3] * k))
    x, t = _make(shape, c, prob=prob, seed=seed, dtype=torch.float32, ignore=ignore_index)
    if prob:
        ignore_index = -100  # torch rejects ignore_index with probability targets
    weight = (
        torch.rand(c, generator=torch.Generator().manual_seed(seed)) + 0.1 if use_weight else None
    )
    kw = dict(weight=weight, ignore_index=ignore_index, reduction=reduction, label_smoothing=eps)
    xr = x.clone().requires_grad_(True)
    xo = x.clone().requires_grad_(True)
    ref = F.cross_entropy(xr, t, **kw)
    ours = cross_entropy(xo, t, **kw)
    if reduction == "mean" and torch.isnan(ref):
        # all positions ignored: the one documented difference (0 and zero gradients)
        assert float(ours.detach()) == 0.0
        (go,) = _grads(ours, [xo], torch.randn(()))
        assert torch.count_nonzero(go) == 0
        return
    torch.testing.assert_close(ours, ref, rtol=2e-5, atol=2e-5)
    up = torch.randn_like(ref)
    (gr,) = _grads(ref, [xr], up)
    (go,) = _grads(ours, [xo], up)
    torch.testing.assert_close(go, gr, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("prob", [False, True])
def test_low_precision_no_worse_than_torch(dtype, prob):
    x64, t = _make((64, 37), 37, prob=prob, seed=5)
    x = x64.to(dtype)
    t_low = t.to(dtype) if prob else t
    x_ref = x.to(torch.float64).requires_grad_(True)
    t64 = t_low.to(torch.float64) if prob else t
    ref64 = F.cross_entropy(x_ref, t64, reduction="none", label_smoothing=0.1)
    xo = x.clone().requires_grad_(True)
    xt = x.clone().requires_grad_(True)
    ours = cross_entropy(xo, t_low, reduction="none", label_smoothing=0.1)
    theirs = F.cross_entropy(xt, t_low, reduction="none", label_smoothing=0.1)
    assert ours.dtype == torch.float32
    up = torch.randn(ref64.shape, dtype=torch.float64)
    (g64,) = _grads(ref64, [x_ref], up)
    (go,) = _grads(ours, [xo], up.float())
    (gt,) = _grads(theirs, [xt], up.to(dtype))
    assert go.dtype == dtype
    err_ours = (ours.double() - ref64).abs()
    err_torch = (theirs.double() - ref64).abs()
    assert torch.all(err_ours <= err_torch + 1e-5)
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-3
    assert (go.double() - g64).abs().max() <= (gt.double() - g64).abs().max() + tol


def _reference_extras(x, t, *, weight, ignore_index, eps, z_loss, softcap, reduction):
    """Float64 reference: torch's CE on capped logits plus the z-loss by counts, written out."""
    s = softcap * torch.tanh(x / softcap) if softcap is not None else x
    ce = F.cross_entropy(
        s, t, weight=weight, ignore_index=ignore_index, reduction=reduction, label_smoothing=eps
    )
    lse = torch.logsumexp(s, dim=1)
    valid = (
        t != ignore_index if not t.is_floating_point() else torch.ones_like(lse, dtype=torch.bool)
    )
    z = torch.where(valid, lse**2, 0.0)
    if reduction == "mean":
        return ce + z_loss * z.sum() / valid.sum()
    if reduction == "sum":
        return ce + z_loss * z.sum()
    return ce + z_loss * z


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("prob", [False, True])
def test_extras_against_reference_and_gradcheck(reduction, prob):
    x, t = _make((6, 5), 5, prob=prob, seed=11, ignore=2)
    ii = -100 if prob else 2  # torch rejects ignore_index with probability targets
    weight = torch.rand(5, dtype=torch.float64) + 0.2
    kw = dict(
        weight=weight, ignore_index=ii, eps=0.2, z_loss=0.03, softcap=2.5, reduction=reduction
    )
    ours = cross_entropy(x, t, weight, ii, reduction, 0.2, z_loss=0.03, softcap=2.5)
    torch.testing.assert_close(ours, _reference_extras(x, t, **kw), rtol=1e-12, atol=1e-12)

    def f(inp):
        return cross_entropy(inp, t, weight, ii, reduction, 0.2, z_loss=0.03, softcap=2.5)

    assert torch.autograd.gradcheck(f, (x.clone().requires_grad_(True),))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"z_loss": 0.1},
        {"softcap": 1.5},
        {"label_smoothing": 0.3, "ignore_index": 1},
        {"weight": "w", "label_smoothing": 0.3, "ignore_index": 1},
    ],
)
def test_each_extra_gradcheck(kwargs):
    x, t = _make((4, 6), 6, prob=False, seed=3, ignore=1)
    kw = {
        k: (torch.rand(6, dtype=torch.float64) + 0.1 if v == "w" else v) for k, v in kwargs.items()
    }
    up = torch.randn(4, dtype=torch.float64)

    def f(inp):
        return (cross_entropy(inp, t, reduction="none", **kw) * up).sum()

    assert torch.autograd.gradcheck(f, (x.clone().requires_grad_(True),))


def test_return_aux_fields():
    x, t = _make((10, 7), 7, prob=False, seed=2)
    n_valid = int((t != -100).sum())
    aux = cross_entropy(x, t, z_loss=0.01, return_aux=True)
    assert isinstance(aux, CrossEntropyAux)
    lse = torch.logsumexp(x, 1)
    torch.testing.assert_close(aux.lse, lse)
    valid = t != -100
    torch.testing.assert_close(aux.z_loss, 0.01 * (lse[valid] ** 2).mean())
    assert int(aux.n_valid) == n_valid and aux.n_valid.dtype == torch.int64
    torch.testing.assert_close(aux.loss, F.cross_entropy(x, t) + aux.z_loss)
    none = cross_entropy(x, t, reduction="none", return_aux=True)
    assert none.loss.shape == none.lse.shape == none.z_loss.shape == (10,)


def test_all_ignored_mean_is_zero_with_zero_grads():
    x = torch.randn(4, 5, requires_grad=True)
    t = torch.full((4,), -100)
    loss = cross_entropy(x, t, z_loss=0.1, label_smoothing=0.1)
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert x.grad is not None and torch.count_nonzero(x.grad) == 0


def test_strided_and_noncontiguous_inputs():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(11, 40, generator=g, dtype=torch.float64)
    views = [base.t().contiguous().t(), base[::2, ::3], base.t()[:, :9].t()[::1]]
    for v in views:
        t = torch.randint(0, v.shape[1], (v.shape[0],), generator=g)
        xr = v.clone().requires_grad_(True)
        vv = v.detach().clone()
        xo = torch.empty_strided(vv.shape, (1, vv.shape[0]), dtype=vv.dtype)  # column-major copy
        xo.copy_(vv)
        xo.requires_grad_(True)
        up = torch.randn(v.shape[0], dtype=torch.float64)
        ours = cross_entropy(v, t, reduction="none", label_smoothing=0.1)
        ref = F.cross_entropy(xr, t, reduction="none", label_smoothing=0.1)
        torch.testing.assert_close(ours, ref.detach())
        ours2 = cross_entropy(xo, t, reduction="none", label_smoothing=0.1)
        (g1,) = _grads(ours2, [xo], up)
        (g2,) = _grads(ref, [xr], up)
        torch.testing.assert_close(g1, g2)
    # a K-dim input with the class dim strided, probability targets from an expanded view
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    q = torch.softmax(torch.randn(1, 4, 1, dtype=torch.float64), 1).expand(3, 4, 5)
    torch.testing.assert_close(cross_entropy(x, q), F.cross_entropy(x, q.contiguous()))


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"target": torch.tensor([0, 9])}, ValueError, "class index 9"),
        ({"target": torch.tensor([0, -1])}, ValueError, "class index -1"),
        ({"target": torch.tensor([0.0, 1.0])}, TypeError, "integer"),
        ({"target": torch.zeros(2, 3, dtype=torch.long)}, TypeError, "floating"),
        ({"target": torch.tensor([0, 1, 2])}, ValueError, r"target must have shape \(2,\)"),
        ({"weight": torch.ones(4)}, ValueError, r"weight must have shape \(3,\)"),
        ({"weight": torch.ones(3, dtype=torch.long)}, TypeError, "weight"),
        ({"label_smoothing": 1.5}, ValueError, "label_smoothing"),
        ({"label_smoothing": -0.1}, ValueError, "label_smoothing"),
        ({"z_loss": -1.0}, ValueError, "z_loss"),
        ({"softcap": 0.0}, ValueError, "softcap"),
        ({"softcap": -2.0}, ValueError, "softcap"),
        ({"reduction": "avg"}, ValueError, "reduction"),
        ({"impl": "cuda"}, ValueError, "impl"),
        ({"input": torch.zeros(2, 3, dtype=torch.long)}, TypeError, "input"),
        ({"ignore_index": 1.5}, TypeError, "ignore_index"),
        ({"target": torch.ones(2, 3) / 3, "ignore_index": 0}, ValueError, "ignore_index"),
    ],
)
def test_bad_input(kwargs, exc, match):
    args = {"input": torch.zeros(2, 3), "target": torch.tensor([0, 1])}
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        cross_entropy(**args)


def test_shift_invariance_and_value():
    x = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    t = torch.tensor([2])
    expected = -math.log(math.exp(3) / (math.exp(1) + math.exp(2) + math.exp(3)))
    assert abs(float(cross_entropy(x, t)) - expected) < 1e-12
    assert abs(float(cross_entropy(x + 100.0, t)) - expected) < 1e-12


def test_compile_matches_eager():
    g = torch.Generator().manual_seed(8)
    x = torch.randn(6, 3, 9, generator=g)
    y = torch.randint(0, 3, (6, 9), generator=g)

    def f(a, reduction):
        return cross_entropy(
            a, y, reduction=reduction, z_loss=1e-2, softcap=4.0, label_smoothing=0.1
        )

    compiled = torch.compile(f, backend="aot_eager")
    for reduction in REDUCTIONS:
        xe = x.clone().requires_grad_(True)
        xc = x.clone().requires_grad_(True)
        le, lc = f(xe, reduction), compiled(xc, reduction)
        torch.testing.assert_close(lc, le)
        up = torch.randn_like(le)
        torch.testing.assert_close(_grads(lc, [xc], up)[0], _grads(le, [xe], up)[0])


def test_large_logits_keep_precision():
    # fp32 logits near 1e4: ce must not lose digits to lse - s_t cancellation
    g = torch.Generator().manual_seed(12)
    x = (3 * torch.randn(32, 50, generator=g) + 1e4).float()
    y = torch.randint(0, 50, (32,), generator=g)
    ref = F.cross_entropy(x.double(), y, reduction="none")
    ours = cross_entropy(x, y, reduction="none")
    assert (ours.double() - ref).abs().max() < 1e-5


def test_minus_inf_masked_classes():
    # a vocabulary mask of -inf logits: class ids and probability targets with no mass there
    g = torch.Generator().manual_seed(13)
    x = torch.randn(6, 10, generator=g, dtype=torch.float64)
    mask = torch.zeros(10, dtype=torch.bool)
    mask[[1, 4, 7]] = True
    xm = x.masked_fill(mask, float("-inf")).requires_grad_(True)
    keep = (~mask).nonzero().squeeze(1)
    y_sub = torch.randint(0, len(keep), (6,), generator=g)
    q_sub = torch.softmax(torch.randn(6, len(keep), generator=g, dtype=torch.float64), 1)
    q = torch.zeros(6, 10, dtype=torch.float64)
    q[:, keep] = q_sub
    xs = x[:, keep].clone().requires_grad_(True)
    for target, target_sub in ((keep[y_sub], y_sub), (q, q_sub)):
        ours = cross_entropy(xm, target, reduction="sum")
        ref = F.cross_entropy(xs, target_sub, reduction="sum")
        torch.testing.assert_close(ours, ref)
        (go,) = _grads(ours, [xm], torch.tensor(1.7, dtype=torch.float64))
        (gr,) = _grads(ref, [xs], torch.tensor(1.7, dtype=torch.float64))
        assert torch.all(go[:, mask] == 0)
        torch.testing.assert_close(go[:, keep], gr)


def test_aux_lse_is_differentiable():
    g = torch.Generator().manual_seed(14)
    x = torch.randn(5, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 6, (5,), generator=g)
    up = torch.randn(5, generator=g, dtype=torch.float64)
    xo = x.clone().requires_grad_(True)
    xr = x.clone().requires_grad_(True)
    aux = cross_entropy(xo, y, reduction="none", return_aux=True)
    (go,) = _grads(aux.lse, [xo], up)
    (gr,) = _grads(torch.logsumexp(xr, 1), [xr], up)
    torch.testing.assert_close(go, gr)


def test_impl_triton_without_kernels_raises(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "crossentropy.triton", None)  # makes the import fail
    with pytest.raises(RuntimeError, match="impl='triton'"):
        cross_entropy(torch.zeros(2, 3), torch.tensor([0, 1]), impl="triton")


def test_impl_triton_falls_back_for_float64_with_one_warning(monkeypatch):
    """What the kernels cannot run goes to the torch path, with one warning, never silently."""
    import warnings

    from crossentropy.torch import linear_cross_entropy
    from crossentropy.torch._functional import _prepare_cross_entropy
    from crossentropy.torch.engine import _checks

    monkeypatch.setattr(_checks, "_FALLBACK_WARNED", set())
    x = torch.randn(6, 7, dtype=torch.float64)
    y = torch.tensor([0, 6, 2, -100, 3, 1])
    h, w = torch.randn(6, 4, dtype=torch.float64), torch.randn(7, 4, dtype=torch.float64)
    calls = {
        "cross_entropy": (lambda: cross_entropy(x, y, impl="triton"), F.cross_entropy(x, y)),
        "linear_cross_entropy": (
            lambda: linear_cross_entropy(h, w, y, impl="triton"),
            F.cross_entropy(h @ w.T, y),
        ),
    }
    for name, (call, ref) in calls.items():
        with pytest.warns(UserWarning, match=rf"{name}: impl='triton' cannot handle torch.float64"):
            first = call()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # once only
            second = call()
        torch.testing.assert_close(first, ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(second, ref, rtol=1e-12, atol=1e-12)
    with pytest.warns(UserWarning, match="cannot handle process_group"):
        # a group's call is checked on each rank before the ranks agree
        _prepare_cross_entropy("cross_entropy", x, y, impl="triton", group=object())


def test_impl_triton_falls_back_for_mixed_dtypes_and_float64_class_weights(monkeypatch):
    # The torch path computes in float64 when anything is float64 and takes mixed dtypes; the
    # kernels take one fp32/bf16/fp16 dtype. Those calls go to the torch path, with a warning.
    from crossentropy.torch import linear_cross_entropy
    from crossentropy.torch.engine import _checks

    monkeypatch.setattr(_checks, "_FALLBACK_WARNED", set())
    g = torch.Generator().manual_seed(0)
    y = torch.tensor([0, 6, 2, -100, 3, 1])
    h = torch.randn(6, 4, generator=g)
    w64 = torch.randn(7, 4, dtype=torch.float64, generator=g)
    cw64 = torch.rand(7, dtype=torch.float64, generator=g) + 0.5
    x = torch.randn(6, 7, generator=g)
    cases = [
        (
            lambda: linear_cross_entropy(h, w64, y, impl="triton"),
            F.cross_entropy(h.double() @ w64.T, y),
            "torch.float64 inputs",
        ),
        (
            # the low-memory kernel reads its inputs directly, so they need one dtype; the default
            # (fast) Triton engine takes mixed dtypes: its GEMMs widen them (no warning there)
            lambda: linear_cross_entropy(h, w64.to(torch.bfloat16), y, impl="triton", memory="low"),
            F.cross_entropy(h @ w64.to(torch.bfloat16).float().T, y),
            "mixed dtypes",
        ),
        (
            lambda: cross_entropy(x, y, weight=cw64, impl="triton"),
            F.cross_entropy(x.double(), y, weight=cw64),
            "float64 class weight",
        ),
    ]
    for call, ref, reason in cases:
        with pytest.warns(UserWarning, match=reason):
            got = call()
        assert got.dtype == ref.dtype
        tol = 1e-12 if ref.dtype == torch.float64 else 1e-5
        torch.testing.assert_close(got, ref, rtol=tol, atol=tol)
