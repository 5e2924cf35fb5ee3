"""crossentropy.torch.linear_logprobs against float64 references built from materialised logits."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from crossentropy.torch import LogProbs, explain, linear_logprobs
from crossentropy.torch.engine import _rowmath


def _data(n, d, v, *, seed, dtype=torch.float64, std=4.0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.randn(v, d, generator=g, dtype=torch.float64) * (std / d**0.5)
    b = torch.randn(v, generator=g, dtype=torch.float64)
    y = torch.randint(0, v, (n,), generator=g)
    return h.to(dtype), w.to(dtype), b.to(dtype), y


def _mapped(h, w, b, *, scale=1.0, softcap=None, temperature=1.0):
    z = h.double() @ w.double().T
    if b is not None:
        z = z + b.double()
    z = z * scale
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    t = temperature.double().unsqueeze(-1) if isinstance(temperature, torch.Tensor) else temperature
    return z / t


def _reference(z, y, ignore_index=-100):
    """(log p(y), entropy) of float64 logits; 0 at ignored positions."""
    logp = torch.log_softmax(z, -1)
    valid = y != ignore_index
    lp = logp.gather(-1, torch.where(valid, y, 0).unsqueeze(-1)).squeeze(-1)
    p = logp.exp()
    # 0 log 0 = 0, with the masked log p replaced before the product so its gradient is 0 too
    ent = -(p * torch.where(p == 0, 0.0, logp)).sum(-1)
    return torch.where(valid, lp, 0.0), torch.where(valid, ent, 0.0)


def _leaves(*ts):
    return [t.detach().clone().requires_grad_() if t is not None else None for t in ts]


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 9),
    d=st.integers(1, 8),
    v=st.integers(1, 40),
    bias=st.booleans(),
    softcap=st.sampled_from([None, 2.5]),
    scale=st.sampled_from([1.0, 0.3]),
    temperature=st.sampled_from([1.0, 0.6, "per-token"]),
    chunk=st.sampled_from([None, 1, 4]),
    ignore=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_matches_float64_with_gradients_of_both_outputs(
    n, d, v, bias, softcap, scale, temperature, chunk, ignore, seed
):
    h, w, b, y = _data(n, d, v, seed=seed)
    if ignore:
        y[0] = -100
    b = b if bias else None
    if temperature == "per-token":
        temperature = (
            torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.5
        )
    ours_l, ref_l = _leaves(h, w, b), _leaves(h, w, b)
    out = linear_logprobs(
        ours_l[0],
        ours_l[1],
        y,
        linear_bias=ours_l[2],
        temperature=temperature,
        softcap=softcap,
        logit_scale=scale,
        return_entropy=True,
        chunk_size=chunk,
    )
    assert isinstance(out, LogProbs)
    z = _mapped(*ref_l, scale=scale, softcap=softcap, temperature=temperature)
    lp, ent = _reference(z, y)
    torch.testing.assert_close(out.logprobs, lp, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.entropy, ent, rtol=1e-10, atol=1e-10)
    assert (out.logprobs <= 0).all() and (out.entropy >= 0).all()
    g1, g2 = torch.randn(n, dtype=torch.float64), torch.randn(n, dtype=torch.float64)
    wrt_o = [t for t in ours_l if t is not None]
    wrt_r = [t for t in ref_l if t is not None]
    got = torch.autograd.grad((out.logprobs * g1).sum() + (out.entropy * g2).sum(), wrt_o)
    want = torch.autograd.grad((lp * g1).sum() + (ent * g2).sum(), wrt_r)
    for a, r in zip(got, want):
        torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-10)


def test_logprobs_alone_and_batch_shapes():
    h, w, b, y = _data(12, 6, 30, seed=1)
    h3, y3 = h.reshape(3, 4, 6), y.reshape(3, 4)
    out = linear_logprobs(h3, w, y3, linear_bias=b)
    assert isinstance(out, torch.Tensor) and out.shape == (3, 4)
    lp, _ = _reference(_mapped(h, w, b), y)
    torch.testing.assert_close(out.reshape(-1), lp, rtol=1e-12, atol=1e-12)


def test_per_token_temperature_equals_a_loop_of_scalar_temperatures():
    h, w, _, y = _data(6, 5, 20, seed=2)
    temps = torch.tensor([0.5, 1.0, 1.7, 0.5, 2.0, 1.0], dtype=torch.float64)
    hl = h.clone().requires_grad_()
    out = linear_logprobs(hl, w, y, temperature=temps, return_entropy=True)
    g = torch.randn(6, dtype=torch.float64)
    (grad,) = torch.autograd.grad((out.logprobs * g).sum() + out.entropy.sum(), hl)
    for i, t in enumerate(temps.tolist()):
        hi = h[i : i + 1].clone().requires_grad_()
        one = linear_logprobs(hi, w, y[i : i + 1], temperature=t, return_entropy=True)
        torch.testing.assert_close(one.logprobs[0], out.logprobs[i], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(one.entropy[0], out.entropy[i], rtol=1e-12, atol=1e-12)
        (gi,) = torch.autograd.grad(one.logprobs[0] * g[i] + one.entropy[0], hi)
        torch.testing.assert_close(gi[0], grad[i], rtol=1e-10, atol=1e-12)


def test_no_temperature_gradient():
    h, w, _, y = _data(4, 5, 9, seed=3)
    t = torch.full((4,), 0.8, dtype=torch.float64, requires_grad=True)
    hl = h.clone().requires_grad_()
    out = linear_logprobs(hl, w, y, temperature=t)
    out.sum().backward()
    assert t.grad is None and hl.grad is not None


# ------------------------------------------------------------------------------------------------
# Kept sets: a reference sampler written from the definition


def _kept_reference(z, top_k=None, top_p=None):
    """Which tokens vLLM's sampler could draw, from the definition: top-k keeps the k largest
    logits (ties at the k-th kept); top-p keeps a token when the probability mass of the kept
    tokens ranked above it is < p (so the smallest prefix with mass >= p, by descending
    probability)."""
    keep = torch.ones_like(z, dtype=torch.bool)
    for i in range(z.shape[0]):
        row = z[i]
        if top_k is not None:
            k = int(top_k[i]) if isinstance(top_k, torch.Tensor) else top_k
            kth = sorted(row.tolist(), reverse=True)[min(k, row.numel()) - 1]
            keep[i] &= row >= kth
        if top_p is not None:
            p = float(top_p[i]) if isinstance(top_p, torch.Tensor) else top_p
            probs = torch.softmax(row.masked_fill(~keep[i], float("-inf")), 0)
            order = sorted(range(row.numel()), key=lambda j: -float(probs[j]))
            above = 0.0
            for j in order:
                if not keep[i, j]:
                    continue
                if above >= p:
                    keep[i, j] = False
                above += float(probs[j])
    return keep


@pytest.mark.parametrize(
    ("top_k", "top_p"),
    [(5, None), (None, 0.8), (7, 0.5), ("per-token", "per-token"), (1, None), (None, 1.0)],
)
def test_top_k_top_p_renormalise_over_the_kept_set(top_k, top_p):
    n, v = 8, 25
    h, w, b, _ = _data(n, 6, v, seed=5)
    g = torch.Generator().manual_seed(6)
    if top_k == "per-token":
        top_k = torch.randint(1, v + 1, (n,), generator=g)
    if top_p == "per-token":
        top_p = torch.rand(n, generator=g, dtype=torch.float64) * 0.9 + 0.1
    temp = 0.8
    z = _mapped(h, w, b, temperature=temp)
    keep = _kept_reference(z, top_k, top_p)
    # the sampled tokens come from the kept set
    y = torch.multinomial(torch.softmax(z.masked_fill(~keep, float("-inf")), -1), 1, generator=g)[
        :, 0
    ]
    out = linear_logprobs(
        h, w, y, linear_bias=b, temperature=temp, top_k=top_k, top_p=top_p, return_entropy=True
    )
    lp, ent = _reference(z.masked_fill(~keep, float("-inf")), y)
    torch.testing.assert_close(out.logprobs, lp, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.entropy, ent, rtol=1e-10, atol=1e-10)


def test_allowed_mask_and_gradient_through_the_kept_set():
    h, w, _, _ = _data(5, 4, 12, seed=7)
    g = torch.Generator().manual_seed(8)
    allowed = torch.rand(5, 12, generator=g) < 0.5
    allowed[:, 0] = True
    y = torch.zeros(5, dtype=torch.long)
    hl, hr = h.clone().requires_grad_(), h.clone().requires_grad_()
    out = linear_logprobs(hl, w, y, allowed=allowed, return_entropy=True)
    lp, ent = _reference((hr @ w.T).masked_fill(~allowed, float("-inf")), y)
    torch.testing.assert_close(out.logprobs, lp.detach(), rtol=1e-10, atol=1e-10)
    up = torch.randn(5, dtype=torch.float64)
    (a,) = torch.autograd.grad((out.logprobs * up).sum() + out.entropy.sum(), hl)
    (r,) = torch.autograd.grad((lp * up).sum() + ent.sum(), hr)
    torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-10)


# ------------------------------------------------------------------------------------------------
# Numerics


def test_masked_padded_vocabulary_and_all_negative_logits_are_finite():
    # a padded vocabulary masked with -inf, and logits that are all very negative (verl #7439:
    # a max initialised to 0 gives NaN there)
    h, w, b, y = _data(6, 4, 20, seed=9)
    b = b - 1e4
    b[15:] = float("-inf")
    y = y % 15
    hl = h.clone().requires_grad_()
    out = linear_logprobs(hl, w, y, linear_bias=b, return_entropy=True, softcap=None)
    assert torch.isfinite(out.logprobs).all() and torch.isfinite(out.entropy).all()
    lp, ent = _reference(_mapped(h, w, b), y)
    torch.testing.assert_close(out.logprobs, lp, rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(out.entropy, ent, rtol=1e-9, atol=1e-9)
    (grad,) = torch.autograd.grad(out.logprobs.sum() + out.entropy.sum(), hl)
    assert torch.isfinite(grad).all()


def test_log_probs_never_above_zero_on_peaked_rows():
    # a row with p(target) ~ 1 in fp32: rounding must not push log p above 0
    h = torch.tensor([[40.0], [90.0], [1.0]])
    w = torch.tensor([[1.0], [0.0], [-1.0]])
    y = torch.tensor([0, 0, 0])
    out = linear_logprobs(h, w, y, return_entropy=True)
    assert (out.logprobs <= 0).all() and (out.entropy >= 0).all()
    single = linear_logprobs(torch.randn(3, 2), torch.randn(1, 2), torch.zeros(3, dtype=torch.long))
    assert torch.equal(single, torch.zeros(3))


def test_entropy_off_costs_nothing(monkeypatch):
    calls = []
    real = _rowmath._dot_rows
    monkeypatch.setattr(_rowmath, "_dot_rows", lambda *a: calls.append(1) or real(*a))
    h, w, _, y = _data(8, 4, 16, seed=10)
    linear_logprobs(h.requires_grad_(), w, y).sum().backward()
    assert calls == []
    assert explain(linear_logprobs, h, w, y).chunk == 8
    linear_logprobs(h, w, y, return_entropy=True)
    assert calls


def test_fp32_head_ignores_autocast_and_tf32():
    h, w, _, y = _data(6, 16, 40, seed=11, dtype=torch.float32)
    ref, _ = _reference(_mapped(h, w, None), y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        default = linear_logprobs(h, w, y)
        exact = linear_logprobs(h, w, y, fp32_head=True)
        plan = explain(linear_logprobs, h, w, y, fp32_head=True)
    assert plan.precision is not None and plan.precision.exact
    assert (exact.double() - ref).abs().max() < 1e-6
    assert (default.double() - ref).abs().max() > 1e-4  # bf16-rounded operands
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        again = linear_logprobs(h, w, y, fp32_head=True)
        assert torch.get_float32_matmul_precision() == "medium"  # restored
    finally:
        torch.set_float32_matmul_precision(before)
    assert (again.double() - ref).abs().max() < 1e-6


def test_compile_fullgraph():
    h, w, b, y = _data(7, 5, 13, seed=12, dtype=torch.float32)

    def f(hh, ww):
        out = linear_logprobs(
            hh, ww, y, linear_bias=b, temperature=0.9, return_entropy=True, chunk_size=3
        )
        return out.logprobs.sum() + 0.1 * out.entropy.sum()

    he, we = _leaves(h, w)
    hc, wc = _leaves(h, w)
    le, lc = f(he, we), torch.compile(f, fullgraph=True, backend="aot_eager")(hc, wc)
    torch.testing.assert_close(lc, le)
    for a, r in zip(torch.autograd.grad(lc, (hc, wc)), torch.autograd.grad(le, (he, we))):
        torch.testing.assert_close(a, r)


def test_higher_order_and_func_transforms():
    h, w, _, y = _data(4, 3, 7, seed=13)

    def loss(hh):
        return linear_logprobs(hh, w, y, return_entropy=True).entropy.sum()

    ref = torch.func.grad(lambda hh: _reference(hh @ w.T, y)[1].sum())(h)
    torch.testing.assert_close(torch.func.grad(loss)(h), ref, rtol=1e-10, atol=1e-12)
    hl = h.clone().requires_grad_()
    (g1,) = torch.autograd.grad(loss(hl), hl, create_graph=True)
    (hvp,) = torch.autograd.grad(g1.sum(), hl)
    hr = h.clone().requires_grad_()
    (r1,) = torch.autograd.grad(_reference(hr @ w.T, y)[1].sum(), hr, create_graph=True)
    (rvp,) = torch.autograd.grad(r1.sum(), hr)
    torch.testing.assert_close(hvp, rvp, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"temperature": 0.0}, ValueError, "temperature must be a finite number > 0"),
        ({"temperature": torch.ones(3)}, ValueError, "temperature as a tensor must have"),
        ({"temperature": torch.tensor([[1.0, -1.0]])}, ValueError, "temperature must be finite"),
        ({"top_k": 0}, ValueError, "top_k"),
        ({"top_p": 1.5}, ValueError, "top_p"),
        ({"top_k": torch.ones(1, 2)}, TypeError, "top_k must be an integer tensor"),
        ({"allowed": torch.ones(1, 2, 7)}, TypeError, "allowed must be a bool"),
        ({"allowed": torch.ones(1, 2, dtype=torch.bool)}, ValueError, "allowed must have shape"),
        ({"target": torch.tensor([[0.5, 0.5]])}, TypeError, "integer"),
        ({"target": torch.tensor([[0, 9]])}, ValueError, "class index 9"),
        ({"logit_scale": -1.0}, ValueError, "logit_scale"),
        ({"return_entropy": "yes"}, TypeError, "return_entropy must be a bool"),
        ({"memory": 0}, ValueError, "memory"),
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
        linear_logprobs(**args)
