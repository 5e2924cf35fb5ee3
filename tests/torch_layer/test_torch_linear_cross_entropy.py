"""crossentropy.torch.linear_cross_entropy against cross_entropy(F.linear(...)) and float64 math."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from crossentropy.torch import cross_entropy, linear_cross_entropy

REDUCTIONS = ["mean", "sum", "none"]


def _data(b, t, d, v, *, prob, seed, dtype=torch.float64, bias=True, ignore_frac=0.2):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(b, t, d, generator=g, dtype=torch.float64)
    w = torch.randn(v, d, generator=g, dtype=torch.float64) * (2.0 / d**0.5)
    bb = torch.randn(v, generator=g, dtype=torch.float64) if bias else None
    if prob:
        y = torch.softmax(2 * torch.randn(b, t, v, generator=g, dtype=torch.float64), -1)
    else:
        y = torch.randint(0, v, (b, t), generator=g)
        y = torch.where(torch.rand(b, t, generator=g) < ignore_frac, torch.tensor(-100), y)

    def cast(a):
        return a.to(dtype) if a is not None else None

    return cast(h), cast(w), cast(bb), (y.to(dtype) if prob else y)


def _reference(h, w, b, y, **kw):
    logits = F.linear(h, w, b)
    if y.is_floating_point():
        out = cross_entropy(logits.flatten(0, -2), y.flatten(0, -2), **kw)
    else:
        out = cross_entropy(logits.flatten(0, -2), y.flatten(), **kw)
    if kw.get("reduction") == "none":
        out = out.reshape(h.shape[:-1])
    return out


def _leaves(*ts):
    return [t.detach().clone().requires_grad_(True) if t is not None else None for t in ts]


@settings(max_examples=30, deadline=None)
@given(
    b=st.integers(1, 3),
    t=st.integers(1, 7),
    d=st.integers(1, 9),
    v=st.integers(1, 37),
    prob=st.booleans(),
    bias=st.booleans(),
    use_weight=st.booleans(),
    eps=st.sampled_from([0.0, 0.2]),
    z_loss=st.sampled_from([0.0, 0.01]),
    softcap=st.sampled_from([None, 3.0]),
    reduction=st.sampled_from(REDUCTIONS),
    chunk=st.sampled_from([None, 1, 3]),
    seed=st.integers(0, 2**16),
)
def test_matches_materialised_logits(
    b, t, d, v, prob, bias, use_weight, eps, z_loss, softcap, reduction, chunk, seed
):
    h, w, bb, y = _data(b, t, d, v, prob=prob, seed=seed, bias=bias)
    weight = torch.rand(v, dtype=torch.float64) + 0.1 if use_weight else None
    kw = dict(
        weight=weight, reduction=reduction, label_smoothing=eps, z_loss=z_loss, softcap=softcap
    )
    h1, w1, b1 = _leaves(h, w, bb)
    h2, w2, b2 = _leaves(h, w, bb)
    ref = _reference(h1, w1, b1, y, **kw)
    ours = linear_cross_entropy(h2, w2, y, linear_bias=b2, chunk_size=chunk, **kw)
    assert ours.shape == ref.shape and ours.dtype == torch.float64
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    up = torch.randn_like(ref)
    inputs_ref = [a for a in (h1, w1, b1) if a is not None]
    inputs_ours = [a for a in (h2, w2, b2) if a is not None]
    for gr, go in zip(
        torch.autograd.grad(ref, inputs_ref, up), torch.autograd.grad(ours, inputs_ours, up)
    ):
        torch.testing.assert_close(go, gr, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("prob", [False, True])
def test_float32_against_torch_linear(reduction, prob):
    h, w, bb, y = _data(2, 33, 16, 101, prob=prob, seed=7, dtype=torch.float32)
    h1, w1, b1 = _leaves(h, w, bb)
    h2, w2, b2 = _leaves(h, w, bb)
    logits = F.linear(h1, w1, b1).flatten(0, 1)
    yt = y.flatten(0, 1) if prob else y.flatten()
    ref = F.cross_entropy(logits, yt, reduction=reduction, label_smoothing=0.1)
    if reduction == "none":
        ref = ref.reshape(2, 33)
    ours = linear_cross_entropy(
        h2, w2, y, linear_bias=b2, reduction=reduction, label_smoothing=0.1, chunk_size=8
    )
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    up = torch.randn_like(ref)
    for gr, go in zip(
        torch.autograd.grad(ref, [h1, w1, b1], up), torch.autograd.grad(ours, [h2, w2, b2], up)
    ):
        assert go.dtype == torch.float32
        torch.testing.assert_close(go, gr, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck_all_extras(reduction):
    h, w, bb, _ = _data(1, 4, 3, 5, prob=False, seed=1)
    y = torch.tensor([[2, 0, 4, 1]])  # position 0 is ignored (ignore_index=2)
    weight = torch.rand(5, dtype=torch.float64) + 0.1
    up = (
        torch.randn(1, 4, dtype=torch.float64)
        if reduction == "none"
        else torch.randn((), dtype=torch.float64)
    )

    def f(hh, ww, b):
        out = linear_cross_entropy(
            hh,
            ww,
            y,
            linear_bias=b,
            weight=weight,
            reduction=reduction,
            ignore_index=2,
            label_smoothing=0.2,
            z_loss=0.05,
            softcap=2.0,
            chunk_size=3,
        )
        return out * up

    assert torch.autograd.gradcheck(f, tuple(_leaves(h, w, bb)))


def test_gradcheck_probability_targets():
    h, w, bb, y = _data(2, 2, 3, 4, prob=True, seed=2)
    weight = torch.rand(4, dtype=torch.float64) + 0.1

    def f(hh, ww, b):
        return linear_cross_entropy(
            hh,
            ww,
            y,
            linear_bias=b,
            weight=weight,
            label_smoothing=0.1,
            z_loss=0.02,
            softcap=1.5,
            reduction="sum",
        )

    assert torch.autograd.gradcheck(f, tuple(_leaves(h, w, bb)))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_no_worse_than_torch(dtype):
    h, w, bb, y = _data(2, 24, 32, 67, prob=False, seed=4)
    h, w, bb = (a.to(dtype) for a in (h, w, bb))
    h64, w64, b64 = _leaves(h.double(), w.double(), bb.double())
    ref64 = F.cross_entropy(F.linear(h64, w64, b64).flatten(0, 1), y.flatten(), reduction="none")
    ht, wt, bt = _leaves(h, w, bb)
    theirs = F.cross_entropy(F.linear(ht, wt, bt).flatten(0, 1), y.flatten(), reduction="none")
    ho, wo, bo = _leaves(h, w, bb)
    ours = linear_cross_entropy(
        ho, wo, y, linear_bias=bo, reduction="none", chunk_size=16
    ).flatten()
    assert ours.dtype == torch.float32
    assert torch.all((ours.double() - ref64).abs() <= (theirs.double() - ref64).abs() + 1e-4)
    up = torch.randn(ref64.shape, dtype=torch.float64)
    g64 = torch.autograd.grad(ref64, [h64, w64, b64], up)
    gt = torch.autograd.grad(theirs, [ht, wt, bt], up.to(theirs.dtype))
    go = torch.autograd.grad(ours, [ho, wo, bo], up.float())
    tol = 2e-2 if dtype == torch.bfloat16 else 2e-3
    for a, b_, c in zip(g64, gt, go):
        assert c.dtype == dtype
        assert (c.double() - a).abs().max() <= (b_.double() - a).abs().max() + tol


def test_noncontiguous_inputs():
    g = torch.Generator().manual_seed(3)
    h_big = torch.randn(3, 10, 12, generator=g, dtype=torch.float64)
    h = h_big[:, ::2, ::2]  # strided in both dims
    w_t = torch.randn(6, 50, generator=g, dtype=torch.float64)
    w = w_t.t()  # (50, 6) column-major, like a tied embedding stored transposed
    y = torch.randint(0, 50, (3, 5), generator=g)
    h1, w1 = _leaves(h, w)
    ref = F.cross_entropy(F.linear(h1, w1).flatten(0, 1), y.flatten(), reduction="none").reshape(
        3, 5
    )
    h2 = h.clone().requires_grad_(True)
    hv = h2.transpose(0, 1).contiguous().transpose(0, 1)  # same values, permuted strides
    ours = linear_cross_entropy(hv, w.requires_grad_(True), y, reduction="none", chunk_size=4)
    up = torch.randn_like(ref)
    torch.testing.assert_close(ours, ref)
    gr = torch.autograd.grad(ref, [h1, w1], up)
    go = torch.autograd.grad(ours, [h2, w], up)
    for a, b in zip(gr, go):
        torch.testing.assert_close(b, a)


def test_compile_matches_eager():
    h, w, bb, y = _data(2, 6, 8, 21, prob=False, seed=9, dtype=torch.float32)

    def step(hh, ww, b, reduction):
        return linear_cross_entropy(
            hh, ww, y, linear_bias=b, reduction=reduction, z_loss=1e-3, softcap=5.0
        )

    compiled = torch.compile(step, backend="aot_eager", fullgraph=False)
    for reduction in REDUCTIONS:
        e = _leaves(h, w, bb)
        c = _leaves(h, w, bb)
        le = step(*e, reduction)
        lc = compiled(*c, reduction)
        torch.testing.assert_close(lc, le)
        up = torch.randn_like(le)
        for a, b in zip(torch.autograd.grad(le, e, up), torch.autograd.grad(lc, c, up)):
            torch.testing.assert_close(b, a)


def test_return_aux_and_second_backward():
    h, w, _, y = _data(2, 5, 4, 9, prob=False, seed=5)
    h1, w1 = _leaves(h, w)
    aux = linear_cross_entropy(h1, w1, y, z_loss=0.01, return_aux=True)
    ref = cross_entropy(F.linear(h, w).flatten(0, 1), y.flatten(), z_loss=0.01, return_aux=True)
    torch.testing.assert_close(aux.loss, ref.loss)
    torch.testing.assert_close(aux.lse, ref.lse.reshape(2, 5))
    torch.testing.assert_close(aux.z_loss, ref.z_loss)
    assert int(aux.n_valid) == int(ref.n_valid)
    up = torch.randn(())
    first = torch.autograd.grad(aux.loss, [h1, w1], up, retain_graph=True)
    second = torch.autograd.grad(aux.loss, [h1, w1], up)
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_aux_lse_and_z_loss_carry_their_own_gradients(reduction):
    # a user may add a term in aux.lse or aux.z_loss to the objective: its gradient must reach the
    # inputs exactly as through materialised logits (float64 reference, random upstream weights)
    h, w, b, y = _data(3, 4, 6, 11, prob=False, seed=21)
    ours_leaves, ref_leaves = _leaves(h, w, b), _leaves(h, w, b)
    aux = linear_cross_entropy(
        *ours_leaves[:2],
        y,
        linear_bias=ours_leaves[2],
        z_loss=0.02,
        reduction=reduction,
        return_aux=True,
    )
    logits = F.linear(ref_leaves[0], ref_leaves[1], ref_leaves[2]).flatten(0, 1)
    ref = cross_entropy(logits, y.flatten(), z_loss=0.02, reduction=reduction, return_aux=True)
    g_loss, g_lse = torch.randn_like(aux.loss), torch.randn_like(aux.lse)
    g_z = torch.randn_like(aux.z_loss)
    objective = (aux.loss * g_loss).sum() + (aux.lse * g_lse).sum() + (aux.z_loss * g_z).sum()
    ref_objective = (
        (ref.loss.reshape(aux.loss.shape) * g_loss).sum()
        + (ref.lse.reshape(aux.lse.shape) * g_lse).sum()
        + (ref.z_loss.reshape(aux.z_loss.shape) * g_z).sum()
    )
    for ours, theirs in zip(
        torch.autograd.grad(objective, ours_leaves), torch.autograd.grad(ref_objective, ref_leaves)
    ):
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"target": torch.tensor([[0, 7]])}, ValueError, "class index 7"),
        ({"target": torch.tensor([[0.0, 1.0]])}, TypeError, "integer"),
        ({"target": torch.tensor([0, 1])}, ValueError, "target must have shape"),
        ({"linear_weight": torch.zeros(7, 5)}, ValueError, "input must have shape"),
        ({"linear_weight": torch.zeros(7)}, ValueError, "linear_weight"),
        ({"linear_bias": torch.zeros(6)}, ValueError, "linear_bias"),
        ({"weight": torch.ones(3)}, ValueError, "weight"),
        ({"label_smoothing": 2.0}, ValueError, "label_smoothing"),
        ({"z_loss": -0.5}, ValueError, "z_loss"),
        ({"softcap": 0}, ValueError, "softcap"),
        ({"reduction": "batchmean"}, ValueError, "reduction"),
        ({"impl": "fast"}, ValueError, "impl"),
        ({"chunk_size": 0}, ValueError, "chunk_size"),
    ],
)
def test_bad_input(kwargs, exc, match):
    args = {
        "input": torch.zeros(1, 2, 4),
        "linear_weight": torch.zeros(7, 4),
        "target": torch.tensor([[0, 1]]),
    }
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        linear_cross_entropy(**args)


def test_fused_gradients_are_freed_by_backward():
    """The mean/sum path forms its gradients in the forward pass; backward must release them, or a
    training loop that keeps the last loss around carries a V x D gradient into the next step."""
    x = torch.randn(16, 8, requires_grad=True)
    w = torch.randn(50, 8, requires_grad=True)
    y = torch.randint(0, 50, (16,))
    loss = linear_cross_entropy(x, w, y)
    node = loss.grad_fn
    loss.backward()
    with pytest.raises(RuntimeError, match=r"freed|second time"):
        _ = node.saved_tensors


def test_no_gradient_work_without_grad_mode(monkeypatch):
    from crossentropy.torch.engine._rowmath import CrossEntropyRows

    calls = []
    real = CrossEntropyRows._grad_
    monkeypatch.setattr(
        CrossEntropyRows, "_grad_", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    x = torch.randn(16, 8, requires_grad=True)
    w = torch.randn(50, 8, requires_grad=True)
    y = torch.randint(0, 50, (16,))
    with torch.no_grad():
        a = linear_cross_entropy(x, w, y, chunk_size=4)
    with torch.inference_mode():
        b = linear_cross_entropy(x, w, y, chunk_size=4)
    assert calls == []
    ref = F.cross_entropy(x.detach() @ w.detach().T, y)
    torch.testing.assert_close(a, ref)
    torch.testing.assert_close(b, ref)
    linear_cross_entropy(x, w, y, chunk_size=4).backward()
    assert len(calls) == 4  # and with grad mode on, every block forms its gradient


def test_numpy_integer_chunk_size_is_accepted() -> None:
    import numpy as np

    g = torch.Generator().manual_seed(0)
    h, w = torch.randn(9, 4, generator=g), torch.randn(6, 4, generator=g)
    y = torch.randint(0, 6, (9,), generator=g)
    got = linear_cross_entropy(h, w, y, chunk_size=np.int64(2))
    torch.testing.assert_close(got, F.cross_entropy(h @ w.T, y), rtol=1e-6, atol=1e-6)


def _rounded(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """t's values after rounding to ``dtype``, back in t's own dtype (what autocast feeds F.linear)."""
    return t.to(dtype).to(t.dtype)


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_backward_called_inside_autocast(reduction: str) -> None:
    # torch discourages it but allows it. Under bf16 autocast the projection's operands are rounded
    # to bf16 (as F.linear would) and multiplied with fp32 accumulation; the softmax math is fp32;
    # fp32 inputs get fp32 gradients.
    g = torch.Generator().manual_seed(1)
    h = torch.randn(7, 4, generator=g, requires_grad=True)
    w = torch.randn(9, 4, generator=g, requires_grad=True)
    y = torch.randint(0, 9, (7,), generator=g)
    up = torch.rand(7, generator=g) if reduction == "none" else torch.tensor(1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = linear_cross_entropy(h, w, y, reduction=reduction)
        got = torch.autograd.grad(loss, (h, w), up)
    assert loss.dtype == torch.float32
    assert [t.dtype for t in got] == [torch.float32, torch.float32]
    hb, wb = (_rounded(t.detach(), torch.bfloat16).double().requires_grad_() for t in (h, w))
    ref = F.cross_entropy(hb @ wb.T, y, reduction=reduction)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-6, atol=1e-6)
    # d(logits) is fp32 on the CPU; the gradient GEMMs take the bf16-rounded operands
    want = torch.autograd.grad(ref, (hb, wb), up.double())
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-6)


def test_autocast_projection_matches_the_unfused_model_under_autocast() -> None:
    # the unfused model under autocast: F.linear in bf16 (logits rounded to bf16), CE in fp32. Ours
    # keeps the logits in fp32, so it is at least as close to the float64 truth of the same bf16
    # operands, and equal to the unfused model with fp32 logits.
    g = torch.Generator().manual_seed(3)
    h = torch.randn(16, 32, generator=g, requires_grad=True)
    w = (torch.randn(50, 32, generator=g) * 0.5).requires_grad_()
    y = torch.randint(0, 50, (16,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = linear_cross_entropy(h, w, y)
        unfused = F.cross_entropy(F.linear(h, w), y)
    exact = F.cross_entropy(
        _rounded(h.detach(), torch.bfloat16).double()
        @ _rounded(w.detach(), torch.bfloat16).double().T,
        y,
    )
    assert abs(float(ours) - float(exact)) <= abs(float(unfused) - float(exact)) + 1e-6
    assert abs(float(ours) - float(exact)) < 1e-5


def test_autocast_does_not_change_the_plain_path_either() -> None:
    # probability targets that require grad take plain torch ops: the same autocast semantics
    # there (bf16-rounded operands, fp32 products), so the result does not depend on
    # target.requires_grad
    g = torch.Generator().manual_seed(2)
    h, w = torch.randn(6, 4, generator=g), torch.randn(5, 4, generator=g)
    p = torch.softmax(torch.randn(6, 5, generator=g), 1)
    want = F.cross_entropy(_rounded(h, torch.bfloat16) @ _rounded(w, torch.bfloat16).T, p)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = linear_cross_entropy(h, w, p)
        plain = linear_cross_entropy(h, w, p.clone().requires_grad_())
    torch.testing.assert_close(fast, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(plain, want, rtol=1e-6, atol=1e-6)
