"""linear_distillation_loss with the teacher as saved top-k log-probabilities (teacher_topk_ids,
teacher_topk_logprobs), against float64 references written from the definitions: the student's
full softmax materialised, then the coarse-grained (k + 1 bins) or renormalised distributions built
row by row, and the divergences summed term by term."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from crossentropy import row_sum_tolerance
from crossentropy.torch import linear_cross_entropy, linear_distillation_loss

DIVS = ["kl", "reverse_kl", "jsd", "cross_entropy"]
MODES = ["tail", "renormalized"]


# ------------------------------------------------------------------------------------------------
# The reference


def _div(a: torch.Tensor, b: torch.Tensor, div: str, beta: float) -> torch.Tensor:
    """D(a, b) of two probability vectors, from the definitions; 0 log 0 = 0."""

    def kl(x, y):  # sum x log(x / y) over x > 0
        pos = x > 0
        return (x[pos] * (x[pos].log() - y[pos].log())).sum()

    if div == "kl" or (div == "jsd" and beta == 0.0):
        return kl(a, b)
    if div == "reverse_kl" or (div == "jsd" and beta == 1.0):
        return kl(b, a)
    if div == "cross_entropy":
        pos = a > 0
        return -(a[pos] * b[pos].log()).sum()
    m = beta * a + (1 - beta) * b
    return beta * kl(a, m) + (1 - beta) * kl(b, m)


def _reference(
    h,
    w,
    b,
    ids,
    lp,
    *,
    div,
    mode,
    beta=0.5,
    temperature=1.0,
    t2=False,
    cap=None,
    scale=1.0,
    target=None,
    hard=0.0,
    soft=1.0,
    ignore_index=-100,
    mask=None,
    reduction="mean",
    vocab_size=None,
):
    """The loss from the materialised float64 student softmax, one row at a time."""
    z = h @ w.T
    if b is not None:
        z = z + b
    z = z * scale
    if cap is not None:
        z = cap * torch.tanh(z / cap)
    if vocab_size is not None:
        z = z[..., :vocab_size]
    v = z.shape[-1]
    shape = z.shape[:-1]
    zf = z.reshape(-1, v)
    q_all = torch.softmax(zf / temperature, -1)
    ids_f, lp_f = ids.reshape(-1, ids.shape[-1]), lp.reshape(-1, ids.shape[-1]).double()
    valid = torch.ones(zf.shape[0], dtype=torch.bool)
    if target is not None:
        valid &= target.reshape(-1) != ignore_index
    if mask is not None:
        valid &= mask.reshape(-1)
    rows = []
    for r in range(zf.shape[0]):
        zero = (zf[r] * 0).sum()  # 0, still a function of the inputs (zero gradients)
        if not valid[r]:
            rows.append(zero)
            continue
        keep = [j for j in range(ids_f.shape[1]) if 0 <= int(ids_f[r, j]) < v]
        kk = [int(ids_f[r, j]) for j in keep]
        p = lp_f[r, keep].exp()
        q = q_all[r, kk]
        rest = [c for c in range(v) if c not in kk]
        if mode == "tail" and rest:
            a = torch.cat([p, (1 - p.sum()).clamp(min=0).reshape(1)])
            bb = torch.cat([q, q_all[r, rest].sum().reshape(1)])
        else:  # renormalised (also the tail mode when no class lies outside the ids)
            if not kk:
                rows.append(zero)
                continue
            a, bb = p / p.sum(), q / q.sum()
        d = _div(a, bb, div, beta) * soft * (temperature**2 if t2 else 1.0)
        if hard:
            d = d - hard * torch.log_softmax(zf[r], -1)[int(target.reshape(-1)[r])]
        rows.append(d)
    out = torch.stack(rows).reshape(shape)
    if reduction == "none":
        return out
    if reduction == "sum":
        return out.sum()
    if reduction == "batchmean":
        return out.sum() / shape[0]
    return out.sum() / valid.sum().clamp(min=1)


def _student(n, d, v, *, seed, std=3.0, bias=False):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.randn(v, d, generator=g, dtype=torch.float64) * (std / d**0.5)
    b = torch.randn(v, generator=g, dtype=torch.float64) if bias else None
    return h, w, b


def _teacher(n, v, k, *, seed, std=3.0, sorted_ids=True):
    """k ids per row and their log-probabilities under a random full teacher distribution:
    its top-k (as vLLM returns them), or k random distinct ids."""
    g = torch.Generator().manual_seed(seed)
    full = torch.log_softmax(torch.randn(n, v, generator=g, dtype=torch.float64) * std, -1)
    if sorted_ids:
        lp, ids = full.topk(k, -1)
    else:
        ids = torch.stack([torch.randperm(v, generator=g)[:k] for _ in range(n)])
        lp = full.gather(-1, ids)
    return ids, lp, full


def _leaves(ts):
    return [t.detach().clone().requires_grad_() if t is not None else None for t in ts]


def _grads(loss, leaves, up):
    wanted = [t for t in leaves if t is not None]
    return torch.autograd.grad((loss * up).sum(), wanted)


def _close(a, b, tol=1e-10):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def _ours(h, w, b, ids, lp, **kw):
    return linear_distillation_loss(
        h,
        w,
        None,
        None,
        student_linear_bias=b,
        teacher_topk_ids=ids,
        teacher_topk_logprobs=lp,
        **kw,
    )


# ------------------------------------------------------------------------------------------------
# Against the reference


@pytest.mark.parametrize("div", DIVS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("k", [1, 5, 17], ids=["k=1", "k=5", "k=V"])
@pytest.mark.parametrize("reduction", ["mean", "none"])  # fused 6NDV pass; recomputing pass
def test_every_divergence_mode_and_k_against_float64(div, mode, k, reduction):
    v = 17
    h, w, b = _student(9, 6, v, seed=k, bias=True)
    ids, lp, _ = _teacher(9, v, k, seed=100 + k, sorted_ids=k != v)
    beta = 0.3 if div == "jsd" else 0.5
    kw = dict(div=div, mode=mode, beta=beta, temperature=1.7, reduction=reduction)
    ours_l, ref_l = _leaves([h, w, b]), _leaves([h, w, b])
    ours = _ours(
        *ours_l,
        ids,
        lp,
        divergence=div,
        topk=mode,
        beta=beta,
        temperature=1.7,
        reduction=reduction,
        chunk_size=4,  # 9 rows: blocks of 4, 4 and 1
    )
    ref = _reference(*ref_l, ids, lp, **kw)
    _close(ours, ref)
    up = torch.randn_like(ref)
    for g_ours, g_ref in zip(_grads(ours, ours_l, up), _grads(ref, ref_l, up)):
        _close(g_ours, g_ref)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 6),
    v=st.integers(2, 24),
    k=st.sampled_from([1, 5, "V"]),
    div=st.sampled_from(DIVS),
    mode=st.sampled_from(MODES),
    beta=st.sampled_from([0.0, 0.3, 1.0]),
    temperature=st.sampled_from([1.0, 0.5, 2.0]),
    cap=st.sampled_from([None, 2.5]),
    scale=st.sampled_from([1.0, 0.7]),
    bias=st.booleans(),
    hard=st.sampled_from([0.0, 0.4]),
    t2=st.booleans(),
    reduction=st.sampled_from(["mean", "sum", "none", "batchmean"]),
    chunk=st.sampled_from([None, 1, 4]),
    seed=st.integers(0, 2**16),
)
def test_matches_float64_for_every_option(
    n, v, k, div, mode, beta, temperature, cap, scale, bias, hard, t2, reduction, chunk, seed
):
    k = v if k == "V" else min(k, v)
    if div != "jsd":
        beta = 0.5
    h, w, b = _student(n, 5, v, seed=seed, bias=bias)
    ids, lp, _ = _teacher(n, v, k, seed=seed + 1, sorted_ids=seed % 2 == 0)
    g = torch.Generator().manual_seed(seed + 2)
    y = torch.randint(0, v, (n,), generator=g)
    y[0] = -100  # an ignored position (its teacher data still valid here)
    mask = torch.rand(n, generator=g) > 0.2
    opts = dict(
        beta=beta,
        temperature=temperature,
        t2=t2,
        cap=cap,
        scale=scale,
        target=y,
        hard=hard,
        mask=mask,
        reduction=reduction,
    )
    ours_l, ref_l = _leaves([h, w, b]), _leaves([h, w, b])
    ours = _ours(
        *ours_l,
        ids,
        lp,
        divergence=div,
        topk=mode,
        beta=beta,
        temperature=temperature,
        t2_scaling=t2,
        student_softcap=cap,
        student_logit_scale=scale,
        target=y,
        hard_weight=hard,
        mask=mask,
        reduction=reduction,
        chunk_size=chunk,
    )
    ref = _reference(*ref_l, ids, lp, div=div, mode=mode, **opts)
    _close(ours, ref, 1e-9)
    up = torch.randn_like(ref)
    for g_ours, g_ref in zip(_grads(ours, ours_l, up), _grads(ref, ref_l, up)):
        _close(g_ours, g_ref, 1e-9)


@pytest.mark.parametrize("div", DIVS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_all_ids_equal_the_full_two_head_divergence(div, mode, temperature):
    # k = V, ids in random order: both modes are the full-vocabulary divergence, which the
    # two-head function computes from a teacher head whose (tempered) log-softmax was saved
    n, v = 8, 23
    hs, ws, bs = _student(n, 6, v, seed=1, bias=True)
    g = torch.Generator().manual_seed(2)
    ht = torch.randn(n, 7, generator=g, dtype=torch.float64)
    wt = torch.randn(v, 7, generator=g, dtype=torch.float64)
    saved = torch.log_softmax(ht @ wt.T / temperature, -1)
    ids = torch.stack([torch.randperm(v, generator=g) for _ in range(n)])
    lp = saved.gather(-1, ids)
    beta = 0.3 if div == "jsd" else 0.5
    two_l, top_l = _leaves([hs, ws, bs]), _leaves([hs, ws, bs])
    common = dict(divergence=div, beta=beta, temperature=temperature, reduction="none")
    two = linear_distillation_loss(
        two_l[0], two_l[1], ht, wt, student_linear_bias=two_l[2], **common
    )
    top = _ours(*top_l, ids, lp, topk=mode, **common)
    _close(top, two)
    up = torch.randn_like(two)
    for a, r in zip(_grads(top, top_l, up), _grads(two, two_l, up)):
        _close(a, r)


# ------------------------------------------------------------------------------------------------
# Properties


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 5),
    v=st.integers(3, 30),
    k=st.integers(1, 29),
    div=st.sampled_from(["kl", "reverse_kl", "jsd"]),
    beta=st.sampled_from([0.2, 0.5, 0.9]),
    std=st.sampled_from([1.0, 4.0]),
    seed=st.integers(0, 2**16),
)
def test_tail_is_a_lower_bound_on_the_full_divergence(n, v, k, div, beta, std, seed):
    # data-processing inequality: coarse-graining (k ids + one bin) cannot increase KL, reverse
    # KL or the JSD; with the ids holding every class it is the full divergence
    k = min(k, v)
    if div != "jsd":
        beta = 0.5
    h, w, _ = _student(n, 5, v, seed=seed, std=std)
    ids, lp, full = _teacher(n, v, k, seed=seed + 1, std=std, sorted_ids=seed % 2 == 1)
    kw = dict(divergence=div, beta=beta, reduction="none")
    tail = _ours(h, w, None, ids, lp, topk="tail", **kw)
    every = torch.arange(v).expand(n, v)
    whole = _ours(h, w, None, every, full, topk="tail", **kw)
    assert (tail >= 0).all()
    assert (tail <= whole + 1e-12).all()


@pytest.mark.parametrize("div", DIVS)
@pytest.mark.parametrize("mode", MODES)
def test_teacher_equal_to_the_student_gives_zero(div, mode):
    h, w, b = _student(6, 5, 40, seed=3, bias=True)
    own = torch.log_softmax(h @ w.T + b, -1)
    lp, ids = own.topk(7, -1)
    loss = _ours(h, w, b, ids, lp, divergence=div, topk=mode, reduction="none")
    if div == "cross_entropy":  # H(a, a), the entropy of the compared distribution
        assert (loss > 0).all()
    else:
        assert loss.abs().max() < 1e-14


def test_truncated_sum_of_peers_is_the_tail_kl_less_the_tail_term():
    # VeOmni's chunk_topk_distill_function / verl's forward_kl_topk compute sum_K p (log p - log q)
    h, w, _ = _student(10, 6, 50, seed=4)
    ids, lp, _ = _teacher(10, 50, 6, seed=5)
    tail = _ours(h, w, None, ids, lp, divergence="kl", topk="tail", reduction="none")
    lq = torch.log_softmax(h @ w.T, -1).gather(-1, ids)
    truncated = (lp.exp() * (lp - lq)).sum(-1)
    big_p, big_q = lp.exp().sum(-1), lq.exp().sum(-1)
    _close(tail - truncated, (1 - big_p) * ((1 - big_p).log() - (1 - big_q).log()))


def test_a_tail_far_below_the_kept_mass_stays_finite_and_exact():
    # The student puts all but e^-200 of its mass on the kept ids (float32 logits): 1 - Q
    # underflows to 0 in float32, yet log(1 - Q) = -200 + log(V - k) exactly.
    v, k = 64, 4
    h = torch.eye(8, dtype=torch.float32)[:2]
    w = torch.zeros(v, 8)
    w[:k] = 0.0
    w[k:] = -200.0  # the rest sit 200 below: q_rest = e^-200 / (k + (V - k) e^-200)
    ids = torch.arange(k).expand(2, k)
    lp = torch.log(torch.tensor([0.5, 0.2, 0.1, 0.1])).expand(2, k)
    loss = _ours(h, w, None, ids, lp, divergence="kl", topk="tail", reduction="none")
    # float64 by hand: q_i = 1/k (the tail's e^-200 is negligible next to k), log(1 - Q) as above
    log_q_tail = -200.0 + math.log(v - k) - math.log(k)
    p = torch.tensor([0.5, 0.2, 0.1, 0.1], dtype=torch.float64)
    expected = (p * (p.log() - math.log(1 / k))).sum() + 0.1 * (math.log(0.1) - log_q_tail)
    assert torch.isfinite(loss).all()
    torch.testing.assert_close(loss.double(), expected.expand(2), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Teacher data: vocabularies, duplicates, sums


def test_ids_past_the_students_vocabulary_raise_unless_vocab_size_drops_them():
    v = 20
    h, w, b = _student(4, 5, v, seed=6, bias=True)
    g = torch.Generator().manual_seed(7)
    big = torch.log_softmax(torch.randn(4, v + 6, generator=g, dtype=torch.float64) * 3, -1)
    _, ids = big[:, :v].topk(8, -1)
    ids[1, 0] = v + 3  # a teacher id the student lacks (its mass is the teacher's own)
    lp = big.gather(-1, ids)
    with pytest.raises(
        ValueError, match=r"teacher_topk_ids row 1 holds id 23, outside .*\[0, 20\).*vocab_size=20"
    ):
        _ours(h, w, b, ids, lp, divergence="kl")
    for mode in MODES:
        ours_l, ref_l = _leaves([h, w, b]), _leaves([h, w, b])
        ours = _ours(*ours_l, ids, lp, divergence="kl", topk=mode, vocab_size=v, reduction="none")
        # the reference skips ids >= V: in tail mode their mass is in 1 - sum p over the rest
        ref = _reference(*ref_l, ids, lp, div="kl", mode=mode, reduction="none", vocab_size=v)
        _close(ours, ref)
        up = torch.randn_like(ref)
        for a, r in zip(_grads(ours, ours_l, up), _grads(ref, ref_l, up)):
            _close(a, r)


def test_vocab_size_also_trims_a_padded_student_head():
    # a student head padded past the tokenizer: vocab_size=K compares its first K classes
    h, w, b = _student(5, 4, 30, seed=8, bias=True)
    ids, lp, _ = _teacher(5, 24, 6, seed=9)
    ours = _ours(h, w, b, ids, lp, divergence="jsd", vocab_size=24, reduction="none")
    ref = _reference(h, w, b, ids, lp, div="jsd", mode="tail", reduction="none", vocab_size=24)
    _close(ours, ref)
    with pytest.raises(ValueError, match=r"vocab_size must lie in \[1, 30\]"):
        _ours(h, w, b, ids, lp, divergence="kl", vocab_size=31)


@pytest.mark.parametrize(
    "corrupt, match",
    [
        (lambda ids, lp: ids.__setitem__((2, 3), ids[2, 1]), r"row 2 holds id \d+ twice"),
        (lambda ids, lp: ids.__setitem__((1, 0), -1), r"row 1 holds the negative id -1"),
        (lambda ids, lp: ids.__setitem__((3, 2), 99), r"row 3 holds id 99, outside"),
        (lambda ids, lp: lp.__setitem__((0, 4), 0.01), r"teacher_topk_logprobs row 0 holds 0.01"),
        (lambda ids, lp: lp.__setitem__((2, 0), float("nan")), r"row 2 holds nan"),
        (lambda ids, lp: lp.__setitem__((1, slice(None)), -0.5), r"row 1 has total probability"),
    ],
    ids=["duplicate", "negative", "out-of-range", "positive", "nan", "mass>1"],
)
def test_bad_teacher_rows_are_refused_with_the_row_named(corrupt, match):
    h, w, b = _student(5, 4, 40, seed=10)
    ids, lp, _ = _teacher(5, 40, 6, seed=11)
    corrupt(ids, lp)
    with pytest.raises(ValueError, match=match):
        _ours(h, w, b, ids, lp, divergence="kl")


def test_rows_are_named_by_position_in_batched_shapes():
    h = torch.randn(2, 3, 4, dtype=torch.float64)
    w = torch.randn(30, 4, dtype=torch.float64)
    ids, lp, _ = _teacher(6, 30, 4, seed=12)
    ids, lp = ids.reshape(2, 3, 4), lp.reshape(2, 3, 4)
    ids[1, 2, 3] = ids[1, 2, 0]
    with pytest.raises(ValueError, match=r"row 5 \(position \(1, 2\)\) holds id \d+ twice"):
        _ours(h, w, None, ids, lp, divergence="kl")


def test_mass_tolerance_is_the_core_row_sum_rule():
    h, w, b = _student(1, 4, 10, seed=13)
    ids = torch.tensor([[0, 1]])
    for dtype in (torch.float64, torch.float32, torch.bfloat16):
        tol = row_sum_tolerance(dtype, 2)
        inside = torch.tensor([[0.5, 0.5 + 0.4 * tol]], dtype=torch.float64).log().to(dtype)
        outside = torch.tensor([[0.5, 0.5 + 2.5 * tol]], dtype=torch.float64).log().to(dtype)
        loss = _ours(h, w, b, ids, inside, divergence="kl")
        assert torch.isfinite(loss)
        with pytest.raises(ValueError, match="total probability"):
            _ours(h, w, b, ids, outside, divergence="kl")


def test_positions_that_do_not_count_may_hold_anything():
    # padding rows of a collated batch: duplicate zeros, zero log-probs (mass k), ids past V
    h, w, b = _student(6, 4, 30, seed=14)
    ids, lp, _ = _teacher(6, 30, 5, seed=15)
    y = torch.randint(0, 30, (6,))
    y[4] = -100
    mask = torch.ones(6, dtype=torch.bool)
    mask[5] = False
    bad_ids, bad_lp = ids.clone(), lp.clone()
    bad_ids[4], bad_lp[4] = 0, 0.0
    bad_ids[5], bad_lp[5] = 1000, float("nan")
    for mode in MODES:
        kw = dict(divergence="reverse_kl", topk=mode, target=y, mask=mask, reduction="none")
        clean = _ours(h, w, b, ids, lp, **kw)
        dirty_l = _leaves([h, w, b])
        dirty = _ours(*dirty_l, bad_ids, bad_lp, **kw)
        _close(dirty, clean)
        assert dirty[4] == 0 and dirty[5] == 0
        grads = _grads(dirty, dirty_l, torch.randn_like(dirty))
        assert all(torch.isfinite(g).all() for g in grads)
        assert (grads[0][4:] == 0).all()


def test_teacher_log_probs_of_minus_infinity_and_low_precision():
    h, w, b = _student(4, 4, 30, seed=16)
    ids, lp, _ = _teacher(4, 30, 6, seed=17)
    lp = lp.clone()
    lp[:, -1] = float("-inf")  # vLLM may report -inf for a kept id of zero probability
    for div in ("kl", "jsd", "cross_entropy"):
        for mode in MODES:
            ours = _ours(h, w, b, ids, lp, divergence=div, topk=mode, reduction="none")
            ref = _reference(h, w, b, ids, lp, div=div, mode=mode, reduction="none")
            _close(ours, ref)
    # reverse KL: the student has mass where the teacher has none, so KL(b || a) is infinite
    rk = _ours(h, w, b, ids, lp, divergence="reverse_kl", reduction="none")
    assert torch.isinf(rk).all()
    # bfloat16 / float16 log-probs: used as given (converted exactly to the compute dtype)
    ids, lp, _ = _teacher(4, 30, 6, seed=18)
    for dtype in (torch.bfloat16, torch.float16):
        low = lp.to(dtype)
        ours = _ours(h, w, b, ids, low, divergence="kl", reduction="none")
        ref = _reference(h, w, b, ids, low.double(), div="kl", mode="tail", reduction="none")
        _close(ours, ref)


# ------------------------------------------------------------------------------------------------
# Engines, dtypes, shapes


def test_float32_is_float64_to_rounding_and_times_the_same_blocks():
    h, w, b = _student(64, 16, 300, seed=19, bias=True)
    ids, lp, _ = _teacher(64, 300, 20, seed=20)
    for mode in MODES:
        ref = _reference(h, w, b, ids, lp, div="kl", mode=mode, temperature=2.0)
        f32 = [t.float().requires_grad_() for t in (h, w, b)]
        ours = _ours(*f32, ids, lp.float(), divergence="kl", topk=mode, temperature=2.0)
        assert ours.dtype == torch.float32
        torch.testing.assert_close(ours.double(), ref, rtol=2e-5, atol=2e-6)
        ref_l = _leaves([h, w, b])
        ref = _reference(*ref_l, ids, lp, div="kl", mode=mode, temperature=2.0)
        for a, r in zip(torch.autograd.grad(ours, f32), torch.autograd.grad(ref, ref_l)):
            assert a.dtype == torch.float32
            err = float((a.detach().double() - r).norm() / r.norm())
            assert err < 1e-5, err


def test_bf16_inputs_no_worse_than_the_same_math_in_bf16_torch():
    # |ref64 - ours| <= |ref64 - plain torch on the same bf16 operands| + tol
    h, w, _ = _student(32, 32, 500, seed=21)
    ids, lp, _ = _teacher(32, 500, 20, seed=22)
    ref = _reference(h, w, None, ids, lp, div="kl", mode="tail", reduction="none")
    hb, wb = h.bfloat16(), w.bfloat16()
    ours = _ours(hb, wb, None, ids, lp.float(), divergence="kl", reduction="none")
    plain = _reference(
        hb.float().double(),
        wb.float().double(),
        None,
        ids,
        lp,
        div="kl",
        mode="tail",
        reduction="none",
    )
    assert (ours.double() - ref).abs().max() <= (plain - ref).abs().max() + 1e-4


def test_plain_path_under_torch_func_matches_the_chunked_engine():
    h, w, b = _student(5, 4, 19, seed=23, bias=True)
    ids, lp, _ = _teacher(5, 19, 5, seed=24)
    y = torch.randint(0, 19, (5,))
    for mode in MODES:
        kw = dict(divergence="jsd", beta=0.4, topk=mode, target=y, hard_weight=0.3, temperature=1.5)

        def f(ww, mode_kw=kw):
            return _ours(h, ww, b, ids, lp, **mode_kw)

        g_func = torch.func.grad(f)(w)
        wl = w.clone().requires_grad_()
        (g_engine,) = torch.autograd.grad(f(wl), [wl])
        _close(g_func, g_engine)


def test_batched_positions_reductions_and_hard_term():
    h3 = torch.randn(2, 5, 6, dtype=torch.float64)
    w = torch.randn(40, 6, dtype=torch.float64)
    ids, lp, _ = _teacher(10, 40, 8, seed=25)
    ids3, lp3 = ids.reshape(2, 5, 8), lp.reshape(2, 5, 8)
    y = torch.randint(0, 40, (2, 5))
    y[0, 1] = -100
    for reduction in ("none", "sum", "mean", "batchmean"):
        kw = dict(target=y, hard_weight=0.5, soft_weight=0.7, reduction=reduction)
        ours = _ours(
            h3, w, None, ids3, lp3, divergence="kl", t2_scaling=True, temperature=2.0, **kw
        )
        ref = _reference(
            h3,
            w,
            None,
            ids3,
            lp3,
            div="kl",
            mode="tail",
            t2=True,
            temperature=2.0,
            target=y,
            hard=0.5,
            soft=0.7,
            reduction=reduction,
        )
        assert ours.shape == ref.shape
        _close(ours, ref)
    # soft_weight=0: the hard term alone is linear_cross_entropy's mean
    only_hard = _ours(
        h3, w, None, ids3, lp3, divergence="kl", target=y, soft_weight=0.0, hard_weight=1.0
    )
    _close(only_hard, linear_cross_entropy(h3, w, y))


def test_compile_fullgraph():
    h, w, _ = _student(6, 4, 25, seed=26)
    h, w = h.float(), w.float()
    ids, lp, _ = _teacher(6, 25, 5, seed=27)
    lp = lp.float()

    def f(a, ww):
        return _ours(a, ww, None, ids, lp, divergence="kl", topk="tail", temperature=1.5)

    le_l, lc_l = _leaves([h, w]), _leaves([h, w])
    le = f(*le_l)
    lc = torch.compile(f, fullgraph=True, backend="aot_eager")(*lc_l)
    torch.testing.assert_close(lc, le)
    for a, r in zip(torch.autograd.grad(lc, lc_l), torch.autograd.grad(le, le_l)):
        torch.testing.assert_close(a, r)


# ------------------------------------------------------------------------------------------------
# Bad input


def _good():
    h, w, _ = _student(4, 3, 12, seed=28)
    ids, lp, _ = _teacher(4, 12, 3, seed=29)
    return h, w, ids, lp


@pytest.mark.parametrize(
    "change, exc, match",
    [
        (
            dict(teacher_topk_ids=None),
            ValueError,
            "needs both teacher_topk_ids and teacher_topk_logprobs",
        ),
        (
            dict(topk="dense"),
            ValueError,
            r"topk must be one of 'tail', 'renormalized'; got 'dense'",
        ),
        (
            dict(teacher_input=torch.zeros(4, 3)),
            ValueError,
            r"teacher_input must be None .* shape \(4, 3\)",
        ),
        (dict(teacher_softcap=3.0), ValueError, "teacher_softcap=3.0 cannot be used"),
        (dict(teacher_requires_grad=True), ValueError, "teacher_requires_grad=True cannot"),
        (dict(process_group=object()), ValueError, "vocab parallel is not supported"),
        (
            dict(teacher_topk_ids=torch.zeros(4, 3)),
            TypeError,
            "teacher_topk_ids must hold integer class ids; got torch.float32",
        ),
        (
            dict(teacher_topk_logprobs=torch.zeros(4, 3, dtype=torch.long)),
            TypeError,
            "teacher_topk_logprobs must be a floating-point tensor",
        ),
        (
            dict(teacher_topk_ids=torch.zeros(4, dtype=torch.long)),
            ValueError,
            r"teacher_topk_ids must have shape \(4, 'k'\)",
        ),
        (dict(teacher_topk_ids=torch.zeros(3, 2, dtype=torch.long)), ValueError, r"got \(3, 2\)"),
        (
            dict(teacher_topk_logprobs=torch.zeros(4, 2)),
            ValueError,
            r"must have teacher_topk_ids' shape \(4, 3\); got \(4, 2\)",
        ),
        (dict(divergence="tvd"), ValueError, "divergence must be one of"),
        (dict(beta=0.2), ValueError, "beta applies to divergence='jsd' only"),
        (dict(temperature=0.0), ValueError, "temperature must be a finite number > 0"),
        (dict(reduction="avg"), ValueError, "reduction must be one of"),
        (dict(hard_weight=1.0), ValueError, "hard_weight > 0 needs target"),
        (dict(student_softcap=-1.0), ValueError, "softcap must be None or a finite number > 0"),
    ],
)
def test_bad_input(change, exc, match):
    h, w, ids, lp = _good()
    kw = dict(teacher_topk_ids=ids, teacher_topk_logprobs=lp, divergence="kl")
    teacher = {k: change.pop(k) for k in ("teacher_input",) if k in change}
    kw.update(change)
    with pytest.raises(exc, match=match):
        linear_distillation_loss(h, w, teacher.get("teacher_input"), None, **kw)


def test_topk_needs_the_teacher_data():
    h, w, _, _ = _good()
    with pytest.raises(ValueError, match="needs both"):
        linear_distillation_loss(h, w, None, None, divergence="kl", topk="tail")


def test_hard_target_ids_are_checked():
    h, w, ids, lp = _good()
    y = torch.tensor([0, 1, 12, 2])
    with pytest.raises(ValueError, match=r"class index 12, outside \[0, 12\)"):
        _ours(h, w, None, ids, lp, divergence="kl", target=y, hard_weight=1.0)
    loss = _ours(h, w, None, ids, lp, divergence="kl", target=y)  # target only for ignore_index
    assert torch.isfinite(loss)


def test_two_head_call_is_unchanged_by_the_new_arguments():
    h, w, _ = _student(4, 3, 12, seed=30)
    ht, wt, _ = _student(4, 5, 12, seed=31)
    loss = linear_distillation_loss(h, w, ht, wt, divergence="kl", reduction="none")
    ref = _reference_two_head(h, w, ht, wt)
    _close(loss, ref)


def _reference_two_head(hs, ws, ht, wt):
    lq, lp = F.log_softmax(hs @ ws.T, -1), F.log_softmax(ht @ wt.T, -1)
    return (lp.exp() * (lp - lq)).sum(-1)


def test_the_plan_is_the_chunked_engine():
    from crossentropy.torch._distill_topk import plan_from_linear_distillation_loss

    h, w, ids, lp = _good()
    args = dict(
        student_input=h,
        student_linear_weight=w,
        teacher_input=None,
        teacher_linear_weight=None,
        teacher_topk_ids=ids,
        teacher_topk_logprobs=lp,
        divergence="kl",
    )
    plan = plan_from_linear_distillation_loss(args)
    assert (plan.engine, plan.mode) == ("chunked", "fused")
    plan = plan_from_linear_distillation_loss({**args, "reduction": "none"})
    assert plan.mode == "rows"


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda ids, lp: ids.__setitem__((2, 1), ids[2, 0]),
        lambda ids, lp: ids.__setitem__((0, 0), 12),
        lambda ids, lp: lp.__setitem__((1, 0), 0.5),
        lambda ids, lp: lp.__setitem__((3, slice(None)), -0.2),
    ],
    ids=["duplicate", "out-of-range", "positive", "mass>1"],
)
def test_the_device_path_asserts_without_reading_values_on_the_host(corrupt, monkeypatch):
    # on a GPU (or while compiling) the checks are torch._assert_async: no host synchronisation;
    # on CPU tensors the same assertion fails at once, which exercises that path here
    from crossentropy.torch import _validation

    h, w, ids, lp = _good()
    _ours(h, w, None, ids, lp, divergence="kl")  # the clean data pass
    monkeypatch.setattr(_validation, "is_compiling", lambda: True)
    _ours(h, w, None, ids, lp, divergence="kl")
    corrupt(ids, lp)
    with pytest.raises(
        RuntimeError, match="linear_distillation_loss: a counted row of teacher_topk"
    ):
        _ours(h, w, None, ids, lp, divergence="kl")
