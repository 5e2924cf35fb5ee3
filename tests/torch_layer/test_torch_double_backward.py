"""Second-order gradients (create_graph=True) through the custom autograd Functions.

The fast backward passes work in place under no_grad; under create_graph=True the gradients come
from differentiating a plain recomputation instead. Checked with ``gradgradcheck`` in float64 and,
for a MAML-style inner step, against ``torch.nn.functional.cross_entropy`` on the same graph.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from _options import resolve
from torch.autograd import gradgradcheck

from crossentropy.torch import cross_entropy, linear_cross_entropy

N, V, D = 5, 7, 4


def _inputs(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, V, (N,), generator=g)
    y[1] = -100
    return {
        "x": torch.randn(N, V, dtype=torch.float64, generator=g).requires_grad_(),
        "h": torch.randn(N, D, dtype=torch.float64, generator=g).requires_grad_(),
        "w": torch.randn(V, D, dtype=torch.float64, generator=g).requires_grad_(),
        "b": torch.randn(V, dtype=torch.float64, generator=g).requires_grad_(),
        "y": y,
        "p": torch.softmax(torch.randn(N, V, dtype=torch.float64, generator=g), 1),
        "cw": torch.rand(V, dtype=torch.float64, generator=g) + 0.5,
    }


OPTIONS: list[dict[str, Any]] = [
    {},
    {"reduction": "none"},
    {"reduction": "sum", "label_smoothing": 0.2, "weight": "cw"},
    {"softcap": 3.0, "z_loss": 1e-2},
    {"target": "p", "label_smoothing": 0.1, "weight": "cw"},
    {"target": "p", "reduction": "none", "softcap": 2.0},
]


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: ",".join(o) or "default")
def test_cross_entropy_gradgradcheck(opts: dict[str, Any]) -> None:
    t = _inputs(0)
    target, kw = resolve(opts, t)
    assert gradgradcheck(lambda x: cross_entropy(x, target, **kw), (t["x"],))


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: ",".join(o) or "default")
def test_linear_cross_entropy_gradgradcheck(opts: dict[str, Any]) -> None:
    # return_aux=True: the recomputing path for every reduction (the fused mean/sum path has no
    # double backward; see the next test).
    t = _inputs(1)
    target, kw = resolve(opts, t)

    def f(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        aux = linear_cross_entropy(h, w, target, linear_bias=b, chunk_size=2, return_aux=True, **kw)
        return aux.loss  # type: ignore[union-attr]

    assert gradgradcheck(f, (t["h"], t["w"], t["b"]))


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_maml_inner_step_matches_torch(reduction: str) -> None:
    # One inner SGD step on (w, b), then the outer loss's gradient with respect to the initial
    # parameters: needs the Hessian of the inner loss.
    t = _inputs(2)
    h, w, b, y = t["h"], t["w"], t["b"], t["y"]
    g = torch.Generator().manual_seed(3)
    up = torch.rand(N, dtype=torch.float64, generator=g) if reduction == "none" else None

    def inner(loss_fn: Any) -> tuple[torch.Tensor, ...]:
        loss = loss_fn(h, w, b)
        loss = (loss * up).sum() if up is not None else loss
        gw, gb = torch.autograd.grad(loss, (w, b), create_graph=True)
        w1, b1 = w - 0.5 * gw, b - 0.5 * gb
        outer = F.cross_entropy(h @ w1.t() + b1, y.flip(0).clamp(min=0))
        return torch.autograd.grad(outer, (h, w, b))

    ours = inner(
        lambda h, w, b: (
            linear_cross_entropy(
                h, w, y, linear_bias=b, reduction=reduction, label_smoothing=0.1, return_aux=True
            ).loss
        )
    )
    ref = inner(
        lambda h, w, b: F.cross_entropy(h @ w.t() + b, y, reduction=reduction, label_smoothing=0.1)
    )
    for a, r in zip(ours, ref):
        torch.testing.assert_close(a, r, atol=1e-12, rtol=1e-10)


def test_first_order_backward_builds_no_graph() -> None:
    # Without create_graph the fast path runs: gradients carry no graph of their own.
    t = _inputs(4)
    (gx,) = torch.autograd.grad(cross_entropy(t["x"], t["y"]), t["x"])
    assert not gx.requires_grad and gx.grad_fn is None


def test_fused_path_keeps_no_input_alive_and_refuses_double_backward_clearly() -> None:
    # mean/sum hold only the gradients between the passes, so a double backward is a clear error
    # naming the way out (return_aux=True), never silently first-order.
    import weakref

    t = _inputs(5)
    h0, w, y = t["h"], t["w"], t["y"]

    def loss_of_fresh_hidden(**kw: Any) -> tuple[Any, weakref.ref]:
        hidden = torch.tanh(h0 * 1.5)  # a non-leaf only the loss would hold
        out = linear_cross_entropy(hidden, w, y, **kw)
        return out, weakref.ref(hidden)

    loss, ref = loss_of_fresh_hidden()
    assert ref() is None  # not kept alive by the fused path
    (gw,) = torch.autograd.grad(loss, w, retain_graph=True)
    torch.testing.assert_close(gw, torch.autograd.grad(_ref_loss(h0, w, y), w)[0])
    with pytest.raises(NotImplementedError, match=r"no double backward.*return_aux=True"):
        torch.autograd.grad(loss, w, create_graph=True)
    # the recomputing path keeps its inputs and gives exact second-order terms
    aux, _ = loss_of_fresh_hidden(return_aux=True)
    (gw1,) = torch.autograd.grad(aux.loss, w, create_graph=True)
    (gw2,) = torch.autograd.grad(_ref_loss(h0, w, y), w, create_graph=True)
    u = torch.randn_like(w)
    hv1 = torch.autograd.grad((gw1 * u).sum(), (h0, w))
    hv2 = torch.autograd.grad((gw2 * u).sum(), (h0, w))
    for a, b in zip(hv1, hv2):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def _ref_loss(h0: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(torch.tanh(h0 * 1.5) @ w.t(), y)


def test_probability_targets_get_their_gradient() -> None:
    # distillation into a teacher that is itself trained: d loss / d target, as torch gives it
    t = _inputs(6)
    kw: dict[str, Any] = {"label_smoothing": 0.1, "weight": t["cw"]}
    up = torch.rand(N, dtype=torch.float64)
    q = t["p"].clone().requires_grad_()
    want = torch.autograd.grad(F.cross_entropy(t["x"], q, **kw), q)[0]
    got = torch.autograd.grad(cross_entropy(t["x"], q, **kw), q)[0]
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    z = t["h"] @ t["w"].T
    for reduction in ("mean", "none"):
        ref = F.cross_entropy(z, q, reduction=reduction, **kw)
        ours = linear_cross_entropy(t["h"], t["w"], q, reduction=reduction, **kw)
        grads = up if reduction == "none" else None
        want = torch.autograd.grad(ref, q, grads)[0]
        got = torch.autograd.grad(ours, q, grads)[0]
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
