"""``torch.func`` transforms (grad, vmap, jvp, jacrev) and forward-mode AD, against torch.

Custom autograd Functions cannot run under these transforms; the functions switch to plain torch
ops there, so results must equal ``torch.nn.functional.cross_entropy`` under the same transform.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from _options import resolve
from torch.func import grad, jacrev, jvp, vmap

from crossentropy.torch import CrossEntropyLoss, cross_entropy, linear_cross_entropy

N, V, D = 6, 5, 3


def _data(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, V, (N,), generator=g)
    y[2] = -100
    return {
        "x": torch.randn(N, V, dtype=torch.float64, generator=g),
        "y": y,
        "p": torch.softmax(torch.randn(N, V, dtype=torch.float64, generator=g), 1),
        "cw": torch.rand(V, dtype=torch.float64, generator=g) + 0.5,
        "h": torch.randn(N, D, dtype=torch.float64, generator=g),
        "w": torch.randn(V, D, dtype=torch.float64, generator=g),
    }


CASES: list[dict[str, Any]] = [
    {},
    {"weight": "cw", "label_smoothing": 0.1},
    {"reduction": "sum"},
    {"target": "p", "label_smoothing": 0.2},
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(c) or "default")
def test_grad_jacrev_and_jvp_match_torch(case: dict[str, Any]) -> None:
    d = _data(0)
    target, kw = resolve(case, d)

    def ours(x: torch.Tensor) -> torch.Tensor:
        return cross_entropy(x, target, **kw)

    def ref(x: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(x, target, **kw)

    x, t = d["x"], torch.randn_like(d["x"])
    torch.testing.assert_close(grad(ours)(x), grad(ref)(x), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(jacrev(grad(ours))(x), jacrev(grad(ref))(x), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(jvp(ours, (x,), (t,)), jvp(ref, (x,), (t,)), rtol=1e-10, atol=1e-12)


def test_per_sample_gradients_with_vmap_match_a_loop() -> None:
    d = _data(1)
    y = d["y"].clamp(min=0)  # every sample counted

    def loss(w: torch.Tensor, h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return linear_cross_entropy(h[None], w, t[None], label_smoothing=0.1)

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))(d["w"], d["h"], y)
    for i in range(N):
        w = d["w"].clone().requires_grad_()
        F.cross_entropy(d["h"][i : i + 1] @ w.T, y[i : i + 1], label_smoothing=0.1).backward()
        torch.testing.assert_close(per_sample[i], w.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_linear_cross_entropy_under_grad_matches_torch(reduction: str) -> None:
    d = _data(2)
    up = torch.rand(N, dtype=torch.float64)

    def ours(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        loss = linear_cross_entropy(h, w, d["y"], reduction=reduction, z_loss=1e-2)
        return (loss * up).sum() if reduction == "none" else loss

    def ref(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        z = h @ w.T
        valid = d["y"] != -100
        lse = torch.logsumexp(z, 1)
        zl = 1e-2 * torch.where(valid, lse.square(), 0.0)
        if reduction == "none":
            return ((F.cross_entropy(z, d["y"], reduction="none") + zl) * up).sum()
        return F.cross_entropy(z, d["y"]) + zl.sum() / valid.sum()

    got = grad(ours, argnums=(0, 1))(d["h"], d["w"])
    want = grad(ref, argnums=(0, 1))(d["h"], d["w"])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_forward_mode_dual_tensors_and_the_module() -> None:
    d = _data(3)
    tangent = torch.randn_like(d["x"])
    loss_fn = CrossEntropyLoss(weight=d["cw"])
    with fwAD.dual_level():
        dual = fwAD.make_dual(d["x"], tangent)
        got = fwAD.unpack_dual(loss_fn(dual, d["y"])).tangent
        want = fwAD.unpack_dual(F.cross_entropy(dual, d["y"], weight=d["cw"])).tangent
    assert got is not None
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
