"""Per-token loss weights (``token_weight=``) in the fused losses: each position's loss is
multiplied by its weight inside the engines (the fused 6NDV path forms the weighted gradients in
the forward pass), equal on every engine to weighting ``reduction="none"`` by hand.

``mean`` divides by the sum of the counted positions' weights (times their class weights); the
z-loss is not weighted. Weights may be negative (RL advantages) or zero; NaN and inf raise.
Vocab parallel on 2 and 3 gloo ranks is in ``tests/distributed`` (the ``token-weight-*`` cases).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from crossentropy.torch import (
    CrossEntropyLoss,
    LinearCrossEntropyLoss,
    _pass,
    cross_entropy,
    linear_cross_entropy,
    linear_distillation_loss,
)
from crossentropy.torch.engine._dispatch import Plan

pytest.importorskip("triton")
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning:triton")


def _forced(engine: str) -> Callable[[Any], Plan]:
    def plan(call: Any) -> Plan:
        mode = "fused" if call.scalar else "rows"
        rows = "triton" if engine in ("cuda-fast", "triton-softmax", "triton-lowmem") else "torch"
        chunk = 3 if engine in ("chunked", "cuda-fast") else None
        return Plan(call.fn, engine, "" if engine == "plain" else mode, call.prec, chunk, rows)

    return plan


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


B, T, D, V = 2, 5, 6, 13


def _data(seed: int) -> dict[str, torch.Tensor]:
    g = _gen(seed)
    y = torch.randint(0, V, (B, T), generator=g)
    y[0, 1] = -100
    return {
        "h": torch.randn(B, T, D, generator=g, dtype=torch.float64),
        "w": torch.randn(V, D, generator=g, dtype=torch.float64),
        "y": y,
        "tw": torch.randn(B, T, generator=g, dtype=torch.float64) + 0.3,  # signed
        "cw": torch.rand(V, generator=g, dtype=torch.float64) + 0.5,
    }


def _by_hand(none: torch.Tensor, tw: torch.Tensor, row_w: torch.Tensor, reduction: str) -> Any:
    weighted = none * tw
    if reduction == "none":
        return weighted
    if reduction == "sum":
        return weighted.sum()
    return weighted.sum() / (row_w * tw).sum()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("engine", ["plain", "chunked", "cuda-fast", "triton-lowmem"])
def test_linear_cross_entropy_equals_weighting_none_by_hand(monkeypatch, engine, reduction):
    monkeypatch.setattr(_pass, "plan_call", _forced(engine))
    d = _data(1)
    dtype = torch.float32 if engine in ("cuda-fast", "triton-lowmem") else torch.float64
    h, w, tw, cw = (d[k].to(dtype) for k in ("h", "w", "tw", "cw"))
    y = d["y"]
    leaves = [h.clone().requires_grad_(), w.clone().requires_grad_()]
    got = linear_cross_entropy(*leaves, y, weight=cw, token_weight=tw, reduction=reduction)
    ref_leaves = [t.detach().double().requires_grad_() for t in (h, w)]
    z = ref_leaves[0] @ ref_leaves[1].T
    none = F.cross_entropy(z.movedim(-1, 1), y, weight=cw.double(), reduction="none")
    valid = y != -100
    row_w = torch.where(valid, cw.double()[y.clamp(min=0)], 0.0)
    want = _by_hand(none, tw.double(), row_w, reduction)
    up = torch.randn(want.shape, generator=_gen(2), dtype=torch.float64)
    g = torch.autograd.grad(got, leaves, up.to(got.dtype))
    r = torch.autograd.grad(want, ref_leaves, up)
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(got.double(), want.detach(), rtol=tol, atol=tol)
    for a, b in zip(g, r):
        torch.testing.assert_close(a.double(), b, rtol=tol * 10, atol=tol * 10)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("engine", ["plain", "chunked", "triton-softmax", "native"])
def test_cross_entropy_equals_weighting_none_by_hand(monkeypatch, engine, reduction):
    d = _data(3)
    x = (d["h"] @ d["w"].T).movedim(-1, 1).float()  # (B, V, T) logits
    y, tw = d["y"], d["tw"].float()
    if engine == "native":
        # F.cross_entropy takes no token weights: the dispatch never picks it for them
        from crossentropy.torch import explain

        assert explain(cross_entropy, x, y, token_weight=tw).engine != "native"
        return
    monkeypatch.setattr(_pass, "plan_call", _forced(engine))
    xl = x.clone().requires_grad_()
    got = cross_entropy(xl, y, token_weight=tw, reduction=reduction, z_loss=1e-3)
    xr = x.double().requires_grad_()
    none = F.cross_entropy(xr, y, reduction="none")
    valid = y != -100
    want = _by_hand(none, tw.double(), valid.double(), reduction)
    lse2 = torch.where(valid, torch.logsumexp(xr, 1).square(), 0.0)  # the z-loss: not weighted
    if reduction == "none":
        want = want + 1e-3 * lse2
    else:
        want = want + 1e-3 * (lse2.sum() / (valid.sum() if reduction == "mean" else 1))
    up = torch.randn(want.shape, generator=_gen(4), dtype=torch.float64)
    (g,) = torch.autograd.grad(got, xl, up.float())
    (r,) = torch.autograd.grad(want, xr, up)
    torch.testing.assert_close(got.double(), want.detach(), rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(g.double(), r, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none", "batchmean"])
def test_distillation_equals_weighting_none_by_hand(reduction):
    d = _data(5)
    ht = torch.randn(B, T, 4, generator=_gen(6), dtype=torch.float64)
    wt = torch.randn(V, 4, generator=_gen(7), dtype=torch.float64)
    y, tw = d["y"], d["tw"]
    leaves = [d["h"].clone().requires_grad_(), d["w"].clone().requires_grad_()]
    kw: dict[str, Any] = dict(divergence="jsd", target=y, hard_weight=0.5)
    got = linear_distillation_loss(*leaves, ht, wt, token_weight=tw, reduction=reduction, **kw)
    none = linear_distillation_loss(*leaves, ht, wt, reduction="none", **kw)
    valid = (y != -100).double()
    if reduction == "none":
        want = none * tw
    elif reduction == "sum":
        want = (none * tw).sum()
    elif reduction == "batchmean":
        want = (none * tw).sum() / B
    else:
        want = (none * tw).sum() / (valid * tw).sum()
    up = torch.randn(want.shape, generator=_gen(8), dtype=torch.float64)
    g = torch.autograd.grad(got, leaves, up, retain_graph=True)
    r = torch.autograd.grad(want, leaves, up)
    torch.testing.assert_close(got, want.detach(), rtol=1e-10, atol=1e-12)
    for a, b in zip(g, r):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_modules_take_token_weight_and_the_fused_path_keeps_6ndv() -> None:
    from crossentropy.torch import explain

    d = _data(9)
    h, w, y, tw = d["h"].float(), d["w"].float(), d["y"], d["tw"].float()
    plan = explain(linear_cross_entropy, h, w, y, token_weight=tw)
    assert plan.mode == "fused"  # weights enter the coefficients: no recomputing backward
    a = LinearCrossEntropyLoss()(h, w, y, token_weight=tw)
    b = linear_cross_entropy(h, w, y, token_weight=tw)
    torch.testing.assert_close(a, b)
    x = (h @ w.T).movedim(-1, 1)
    torch.testing.assert_close(
        CrossEntropyLoss()(x, y, token_weight=tw), cross_entropy(x, y, token_weight=tw)
    )


@pytest.mark.parametrize(
    ("tw", "exc", "match"),
    [
        (torch.tensor([[1.0, float("nan"), 1.0, 1.0, 1.0]] * 2), ValueError, "token_weight row 1"),
        (torch.full((2, 5), float("inf")), ValueError, "not finite"),
        (torch.ones(2, 4), ValueError, r"positions' shape \(2, 5\)"),
        (torch.ones(2, 5, dtype=torch.long), TypeError, "floating-point"),
    ],
)
def test_bad_token_weights_are_refused(tw, exc, match) -> None:
    d = _data(10)
    for call in (
        lambda: linear_cross_entropy(d["h"], d["w"], d["y"], token_weight=tw),
        lambda: cross_entropy((d["h"] @ d["w"].T).movedim(-1, 1), d["y"], token_weight=tw),
        lambda: linear_distillation_loss(
            d["h"], d["w"], d["h"], d["w"], divergence="kl", token_weight=tw
        ),
    ):
        with pytest.raises(exc, match=match):
            call()
