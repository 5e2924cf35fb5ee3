"""crossentropy.torch.linear_distillation_loss against float64 references from materialised logits."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from crossentropy.torch import explain, linear_cross_entropy, linear_distillation_loss

DIVS = ["kl", "reverse_kl", "jsd", "cross_entropy"]


def _heads(n, ds, dt, v, *, seed, dtype=torch.float64, std=4.0):
    g = torch.Generator().manual_seed(seed)
    hs = torch.randn(n, ds, generator=g, dtype=torch.float64)
    ws = torch.randn(v, ds, generator=g, dtype=torch.float64) * (std / ds**0.5)
    ht = torch.randn(n, dt, generator=g, dtype=torch.float64)
    wt = torch.randn(v, dt, generator=g, dtype=torch.float64) * (std / dt**0.5)
    y = torch.randint(0, v, (n,), generator=g)
    return [t.to(dtype) for t in (hs, ws, ht, wt)] + [y]


def _divergence(lq, lp, div, beta):
    """Per-row divergence of log-probabilities, written from the definitions (float64)."""
    q, p = lq.exp(), lp.exp()

    def plogr(a, la, lb):  # sum a (la - lb), 0 where a == 0
        return (a * torch.where(a == 0, 0.0, la - lb)).sum(-1)

    if div == "kl" or (div == "jsd" and beta == 0.0):
        return plogr(p, lp, lq)
    if div == "reverse_kl" or (div == "jsd" and beta == 1.0):
        return plogr(q, lq, lp)
    if div == "cross_entropy":
        return -(p * torch.where(p == 0, 0.0, lq)).sum(-1)
    m = beta * p + (1 - beta) * q
    lm = torch.log(m)
    return beta * plogr(p, lp, lm) + (1 - beta) * plogr(q, lq, lm)


def _reference(
    hs,
    ws,
    ht,
    wt,
    y,
    *,
    div,
    beta=0.5,
    temperature=1.0,
    t2=False,
    s_cap=None,
    t_cap=None,
    s_scale=1.0,
    t_scale=1.0,
    bs=None,
    bt=None,
    hard=0.0,
    soft=1.0,
    reduction="mean",
    ignore_index=-100,
    mask=None,
):
    def mapped(h, w, b, cap, scale):
        z = h @ w.T
        if b is not None:
            z = z + b
        z = z * scale
        return cap * torch.tanh(z / cap) if cap is not None else z

    zs, zt = mapped(hs, ws, bs, s_cap, s_scale), mapped(ht, wt, bt, t_cap, t_scale)
    lq = torch.log_softmax(zs / temperature, -1)
    lp = torch.log_softmax(zt / temperature, -1)
    rows = soft * (temperature**2 if t2 else 1.0) * _divergence(lq, lp, div, beta)
    valid = torch.ones(rows.shape, dtype=torch.bool)
    if y is not None:
        valid = y != ignore_index
        if hard:
            ce = F.cross_entropy(
                zs.reshape(-1, zs.shape[-1]),
                y.reshape(-1),
                reduction="none",
                ignore_index=ignore_index,
            ).reshape(rows.shape)
            rows = rows + hard * ce
    if mask is not None:
        valid = valid & mask
    rows = torch.where(valid, rows, 0.0)
    if reduction == "none":
        return rows
    if reduction == "sum":
        return rows.sum()
    if reduction == "batchmean":
        return rows.sum() / rows.shape[0]
    return rows.sum() / valid.sum().clamp(min=1)


def _leaves(ts):
    return [t.detach().clone().requires_grad_() if t is not None else None for t in ts]


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 7),
    v=st.integers(2, 30),
    div=st.sampled_from(DIVS),
    beta=st.sampled_from([0.0, 0.3, 0.5, 1.0]),
    temperature=st.sampled_from([1.0, 2.0, 0.5]),
    caps=st.sampled_from([(None, None), (3.0, None), (None, 5.0)]),
    scales=st.sampled_from([(1.0, 1.0), (0.5, 2.0)]),
    bias=st.booleans(),
    hard=st.sampled_from([0.0, 0.4]),
    reduction=st.sampled_from(["mean", "sum", "none", "batchmean"]),
    teacher_grad=st.booleans(),
    chunk=st.sampled_from([None, 1, 3]),
    seed=st.integers(0, 2**16),
)
def test_matches_float64_for_every_option(
    n, v, div, beta, temperature, caps, scales, bias, hard, reduction, teacher_grad, chunk, seed
):
    if div != "jsd":
        beta = 0.5
    hs, ws, ht, wt, y = _heads(n, 4, 6, v, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    y[0] = -100
    bs = torch.randn(v, generator=g, dtype=torch.float64) if bias else None
    bt = torch.randn(v, generator=g, dtype=torch.float64) if bias else None
    ours = _leaves([hs, ws, ht, wt, bs, bt])
    refs = _leaves([hs, ws, ht, wt, bs, bt])
    common = dict(
        div=div,
        beta=beta,
        temperature=temperature,
        s_cap=caps[0],
        t_cap=caps[1],
        s_scale=scales[0],
        t_scale=scales[1],
        hard=hard,
        reduction=reduction,
    )
    loss = linear_distillation_loss(
        *ours[:4],
        divergence=div,
        beta=beta,
        temperature=temperature,
        student_softcap=caps[0],
        teacher_softcap=caps[1],
        student_logit_scale=scales[0],
        teacher_logit_scale=scales[1],
        student_linear_bias=ours[4],
        teacher_linear_bias=ours[5],
        target=y,
        hard_weight=hard,
        reduction=reduction,
        teacher_requires_grad=teacher_grad,
        chunk_size=chunk,
    )
    ref = _reference(*refs[:4], y, bs=refs[4], bt=refs[5], **common)
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-10)
    up = torch.randn(loss.shape, generator=g, dtype=torch.float64)
    wanted = [0, 1, 4] + ([2, 3, 5] if teacher_grad else [])
    wanted = [i for i in wanted if ours[i] is not None]
    got = torch.autograd.grad(loss, [ours[i] for i in wanted], up)
    want = torch.autograd.grad(ref, [refs[i] for i in wanted], up)
    for i, a, r in zip(wanted, got, want):
        torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-10, msg=f"gradient of input {i}")


def test_frozen_teacher_gets_no_gradient():
    hs, ws, ht, wt, _ = _heads(6, 4, 5, 11, seed=1)
    leaves = _leaves([hs, ws, ht, wt])
    loss = linear_distillation_loss(*leaves, divergence="kl")
    loss.backward()
    assert leaves[0].grad is not None and leaves[1].grad is not None
    assert leaves[2].grad is None and leaves[3].grad is None


@pytest.mark.parametrize("div", DIVS)
def test_identical_heads_give_exactly_zero(div):
    hs, ws, *_ = _heads(9, 6, 6, 23, seed=2, dtype=torch.float32)
    out = linear_distillation_loss(
        hs, ws, hs, ws, divergence=div, beta=0.3 if div == "jsd" else 0.5, reduction="none"
    )
    if div == "cross_entropy":  # H(p, p) is the entropy, not 0
        assert (out > 0).all()
    else:
        assert torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize("div", DIVS)
def test_masked_ids_on_both_sides_are_finite_and_match_a_smaller_vocabulary(div):
    hs, ws, ht, wt, _ = _heads(5, 4, 4, 20, seed=3)
    minus = torch.zeros(20, dtype=torch.float64)
    minus[15:] = float("-inf")
    beta = 0.4 if div == "jsd" else 0.5
    leaves = _leaves([hs, ws, ht, wt])
    masked = linear_distillation_loss(
        *leaves,
        divergence=div,
        beta=beta,
        student_linear_bias=minus,
        teacher_linear_bias=minus,
        reduction="sum",
    )
    sliced = linear_distillation_loss(
        hs, ws, ht, wt, divergence=div, beta=beta, vocab_size=15, reduction="sum"
    )
    assert torch.isfinite(masked)
    torch.testing.assert_close(masked, sliced, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(masked, leaves[:2])
    assert all(torch.isfinite(g).all() for g in grads)


def test_vocabulary_sizes_must_match_unless_vocab_size_is_given():
    hs, ws, ht, wt, _ = _heads(3, 4, 4, 20, seed=4)
    with pytest.raises(
        ValueError, match="student's vocabulary has 24 classes and the teacher's 20"
    ):
        linear_distillation_loss(hs, torch.cat([ws, ws[:4]]), ht, wt, divergence="kl")
    padded = torch.cat([ws, torch.randn(4, 4, dtype=torch.float64)])
    a = linear_distillation_loss(hs, padded, ht, wt, divergence="kl", vocab_size=20)
    b = linear_distillation_loss(hs, ws, ht, wt, divergence="kl")
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="vocab_size must lie in"):
        linear_distillation_loss(hs, padded, ht, wt, divergence="kl", vocab_size=21)


def test_t2_scaling_is_explicit_and_mask_counts():
    hs, ws, ht, wt, _ = _heads(8, 4, 4, 12, seed=5)
    base = linear_distillation_loss(hs, ws, ht, wt, divergence="kl", temperature=3.0)
    scaled = linear_distillation_loss(
        hs, ws, ht, wt, divergence="kl", temperature=3.0, t2_scaling=True
    )
    torch.testing.assert_close(scaled, 9.0 * base)
    mask = torch.tensor([True, False] * 4)
    m = linear_distillation_loss(hs, ws, ht, wt, divergence="kl", mask=mask)
    ref = _reference(hs, ws, ht, wt, None, div="kl", mask=mask)
    torch.testing.assert_close(m, ref, rtol=1e-12, atol=1e-12)


def test_batch_shapes_and_reductions():
    hs, ws, ht, wt, y = _heads(12, 4, 6, 10, seed=6)
    hs3, ht3, y3 = hs.reshape(3, 4, 4), ht.reshape(3, 4, 6), y.reshape(3, 4)
    rows = linear_distillation_loss(hs3, ws, ht3, wt, divergence="jsd", target=y3, reduction="none")
    assert rows.shape == (3, 4)
    bm = linear_distillation_loss(
        hs3, ws, ht3, wt, divergence="jsd", target=y3, reduction="batchmean"
    )
    torch.testing.assert_close(bm, rows.sum() / 3)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"divergence": "js"}, ValueError, "divergence must be one of"),
        ({"divergence": "kl", "beta": 0.2}, ValueError, "beta applies to divergence='jsd' only"),
        ({"divergence": "jsd", "beta": 1.5}, ValueError, "beta must lie in"),
        ({"divergence": "kl", "hard_weight": 0.5}, ValueError, "hard_weight > 0 needs target"),
        ({"divergence": "kl", "temperature": 0.0}, ValueError, "temperature"),
        ({"divergence": "kl", "reduction": "avg"}, ValueError, "reduction"),
        ({"divergence": "kl", "target": torch.zeros(3)}, TypeError, "integer class ids"),
        ({"divergence": "kl", "mask": torch.ones(3)}, ValueError, "mask must be a bool"),
        ({"divergence": "kl", "teacher_input": torch.zeros(2, 5)}, ValueError, "same positions"),
        (
            {"divergence": "kl", "student_linear_weight": torch.zeros(7, 3)},
            ValueError,
            "student_input must have shape",
        ),
    ],
)
def test_bad_input(kwargs, exc, match):
    args = {
        "student_input": torch.zeros(3, 4),
        "student_linear_weight": torch.zeros(7, 4),
        "teacher_input": torch.zeros(3, 5),
        "teacher_linear_weight": torch.zeros(7, 5),
    }
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        linear_distillation_loss(**args)


def test_divergence_has_no_default():
    with pytest.raises(TypeError, match="divergence"):
        linear_distillation_loss(
            torch.zeros(2, 3), torch.zeros(4, 3), torch.zeros(2, 3), torch.zeros(4, 3)
        )  # type: ignore[call-arg]


@pytest.mark.parametrize("std", [4.0, 8.0])
def test_bf16_gradients_no_worse_than_the_fused_ce_path(std):
    # distillation into a one-hot-like teacher, bf16 heads: the student gradient's error against
    # float64 stays within the fused CE path's own error on the same inputs (both keep fp32 logits)
    n, d, v = 64, 32, 200
    hs, ws, ht, wt, y = _heads(n, d, d, v, seed=7, std=std)
    hb, wb = hs.bfloat16(), ws.bfloat16()
    h1 = hb.clone().requires_grad_()
    (g_ours,) = torch.autograd.grad(
        linear_distillation_loss(h1, wb, ht.bfloat16(), wt.bfloat16(), divergence="kl"), h1
    )
    # float64 reference on the same bf16-rounded inputs (both heads)
    ref_h = hb.double().requires_grad_()
    lq = torch.log_softmax(ref_h @ wb.double().T, -1)
    lp = torch.log_softmax(ht.bfloat16().double() @ wt.bfloat16().double().T, -1)
    (g_ref,) = torch.autograd.grad(_divergence(lq, lp, "kl", 0.5).mean(), ref_h)
    err = float((g_ours.double() - g_ref).norm() / g_ref.norm())
    h2 = hb.clone().requires_grad_()
    (g_ce,) = torch.autograd.grad(linear_cross_entropy(h2, wb, y), h2)
    ref_ce = hb.double().requires_grad_()
    (g_ce_ref,) = torch.autograd.grad(F.cross_entropy(ref_ce @ wb.double().T, y), ref_ce)
    ce_err = float((g_ce.double() - g_ce_ref).norm() / g_ce_ref.norm())
    assert err <= ce_err + 5e-3, (err, ce_err)


def test_compile_fullgraph_and_explain():
    hs, ws, ht, wt, y = _heads(6, 4, 5, 9, seed=8, dtype=torch.float32)

    def f(a, b):
        return linear_distillation_loss(
            a, b, ht, wt, divergence="jsd", beta=0.2, target=y, hard_weight=0.1, temperature=1.5
        )

    le_leaves, lc_leaves = _leaves([hs, ws]), _leaves([hs, ws])
    le = f(*le_leaves)
    lc = torch.compile(f, fullgraph=True, backend="aot_eager")(*lc_leaves)
    torch.testing.assert_close(lc, le)
    for a, r in zip(torch.autograd.grad(lc, lc_leaves), torch.autograd.grad(le, le_leaves)):
        torch.testing.assert_close(a, r)
    plan = explain(linear_distillation_loss, hs, ws, ht, wt, divergence="kl")
    assert (plan.engine, plan.mode) == ("chunked", "fused")
    plan = explain(linear_distillation_loss, hs, ws, ht, wt, divergence="kl", reduction="none")
    assert plan.mode == "rows"


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("chunk", [None, 7])
def test_jsd_with_ids_masked_on_the_student_side_only(beta, chunk):
    # A -inf student bias on 5 ids of V=101 where the teacher has mass: there m = beta p, so
    # log p - log m = -log(beta), finite (TRL gives NaN here). It came out 0, off by up to 0.04.
    hs, ws, ht, wt, _ = _heads(23, 8, 12, 101, seed=31)
    bs = torch.zeros(101, dtype=torch.float64)
    bs[[3, 17, 40, 41, 99]] = float("-inf")
    leaves = [t.clone().requires_grad_() for t in (hs, ws)]
    got = linear_distillation_loss(
        leaves[0],
        leaves[1],
        ht,
        wt,
        divergence="jsd",
        beta=beta,
        student_linear_bias=bs,
        reduction="none",
        chunk_size=chunk,
    )
    lq = torch.log_softmax(hs @ ws.T + bs, -1)
    lp = torch.log_softmax(ht @ wt.T, -1)
    want = _divergence(lq, lp, "jsd", beta)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    up = torch.randn(23, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    g = torch.autograd.grad(got, leaves, up)
    rl = [t.clone().requires_grad_() for t in (hs, ws)]
    lq2 = torch.log_softmax(rl[0] @ rl[1].T + bs, -1)
    # gradient reference from the mixture form (finite where q = 0: the masked ids get none)
    m = beta * lp.exp() + (1 - beta) * lq2.exp()
    q2 = lq2.exp()
    ref = beta * (lp.exp() * (lp - m.log())).sum(-1) + (1 - beta) * (
        q2 * torch.where(q2 == 0, 0.0, lq2 - m.log())
    ).sum(-1)
    r = torch.autograd.grad(ref, rl, up)
    for a, b in zip(g, r):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("beta", [0.5, 0.9, 0.99])
def test_float32_jsd_near_beta_one_is_as_accurate_as_the_log_mixture_formula(beta):
    # Peaked logits (std 32): forming log p - log m as d - (d + L) lost L against d = log p -
    # log q on ids the student nearly rules out; at beta = 0.99 that was 250x the error of the
    # float32 formula with logsumexp for log m (TRL's generalized_jsd_loss), 9e-5 against 4e-7.
    hs, ws, ht, wt, _ = _heads(64, 32, 32, 500, seed=0, std=32.0)
    got = linear_distillation_loss(
        hs.float(),
        ws.float(),
        ht.float(),
        wt.float(),
        divergence="jsd",
        beta=beta,
        reduction="none",
    )
    zs, zt = hs.float() @ ws.float().T, ht.float() @ wt.float().T

    def jsd(zs, zt):
        lq, lp = zs.log_softmax(-1), zt.log_softmax(-1)
        lm = torch.logsumexp(torch.stack([lq + math.log(1 - beta), lp + math.log(beta)]), 0)
        return beta * (lp.exp() * (lp - lm)).sum(-1) + (1 - beta) * (lq.exp() * (lq - lm)).sum(-1)

    want = jsd(zs.double(), zt.double())
    err_ours = float((got.double() - want).abs().max() / want.abs().max())
    err_formula = float((jsd(zs, zt).double() - want).abs().max() / want.abs().max())
    assert err_ours <= 3 * err_formula + 2e-7, (err_ours, err_formula)
