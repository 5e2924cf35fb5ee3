"""Loss modules: CrossEntropyLoss, LinearCrossEntropyLoss, FocalLoss, BCEWithLogitsLoss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from crossentropy.torch import (
    BCEWithLogitsLoss,
    CrossEntropyLoss,
    FocalLoss,
    LinearCrossEntropyLoss,
    cross_entropy,
    linear_cross_entropy,
)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_loss_matches_torch_module(reduction):
    g = _gen(0)
    x = torch.randn(6, 5, 3, generator=g)
    y = torch.randint(0, 5, (6, 3), generator=g)
    y[0, 0] = 1  # also the ignored class below
    w = torch.rand(5, generator=g) + 0.1
    kw = dict(weight=w, ignore_index=1, reduction=reduction, label_smoothing=0.1)
    ours, ref = CrossEntropyLoss(**kw), torch.nn.CrossEntropyLoss(**kw)
    torch.testing.assert_close(ours(x, y), ref(x, y))
    # the weight is a buffer: .double() converts it with the module
    ours64, ref64 = ours.double(), ref.double()
    assert ours64.weight is not None and ours64.weight.dtype == torch.float64
    torch.testing.assert_close(ours64(x.double(), y), ref64(x.double(), y))


def test_cross_entropy_loss_extras_forwarded():
    x = torch.randn(4, 7, generator=_gen(1))
    y = torch.tensor([0, 3, 6, 2])
    mod = CrossEntropyLoss(z_loss=0.1, softcap=2.0)
    torch.testing.assert_close(mod(x, y), cross_entropy(x, y, z_loss=0.1, softcap=2.0))
    assert "z_loss=0.1" in repr(mod)
    with pytest.raises(ValueError, match="label_smoothing"):
        CrossEntropyLoss(label_smoothing=2.0)


def test_linear_cross_entropy_loss_takes_weight_per_call():
    g = _gen(2)
    h = torch.randn(2, 5, 8, generator=g)
    W = torch.randn(13, 8, generator=g)
    b = torch.randn(13, generator=g)
    y = torch.randint(0, 13, (2, 5), generator=g)
    mod = LinearCrossEntropyLoss(reduction="sum", label_smoothing=0.2, z_loss=1e-3, chunk_size=3)
    assert list(mod.parameters()) == []
    expect = linear_cross_entropy(
        h, W, y, linear_bias=b, reduction="sum", label_smoothing=0.2, z_loss=1e-3
    )
    torch.testing.assert_close(mod(h, W, y, b), expect)
    ref = F.cross_entropy(
        F.linear(h, W, b).flatten(0, 1), y.flatten(), reduction="sum", label_smoothing=0.2
    )
    assert abs(float(mod(h, W, y, b)) - float(ref)) > 0  # the z-loss term is really added
    with pytest.raises(ValueError, match="chunk_size"):
        LinearCrossEntropyLoss(chunk_size=-1)


def _focal_reference(x, y, gamma, alpha, ignore_index):
    """Float64 focal loss written out with log_softmax (independent of the module's code)."""
    logp = torch.log_softmax(x.double(), 1)
    valid = y != ignore_index
    t = torch.where(valid, y, 0)
    lp = logp.gather(1, t[:, None]).squeeze(1)
    a = alpha.double()[t] if alpha is not None else torch.ones_like(lp)
    per = torch.where(valid, -a * (1 - lp.exp()) ** gamma * lp, 0.0)
    return per.sum() / torch.where(valid, a, 0.0).sum()


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_focal_loss_against_reference(gamma):
    g = _gen(3)
    x = 3 * torch.randn(9, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 6, (9,), generator=g)
    y[2] = -100
    alpha = torch.rand(6, generator=g, dtype=torch.float64) + 0.1
    ours = FocalLoss(gamma=gamma, alpha=alpha)(x, y)
    torch.testing.assert_close(ours, _focal_reference(x, y, gamma, alpha, -100))
    if gamma == 0.0:
        torch.testing.assert_close(ours, F.cross_entropy(x, y, weight=alpha))


def test_focal_loss_core_example_and_gradcheck():
    x = torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert abs(float(FocalLoss()(x, torch.tensor([0, 1]))) - 0.2445) < 1e-4
    g = _gen(4)
    xx = torch.randn(5, 4, 2, generator=g, dtype=torch.float64, requires_grad=True)
    q = torch.softmax(torch.randn(5, 4, 2, generator=g, dtype=torch.float64), 1)
    up = torch.randn(5, 2, generator=g, dtype=torch.float64)
    mod = FocalLoss(gamma=2.0, alpha=0.25, reduction="none", z_loss=0.01, softcap=3.0)
    assert torch.autograd.gradcheck(lambda a: (mod(a, q) * up).sum(), (xx,))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_bce_with_logits_matches_torch(reduction):
    g = _gen(5)
    x = torch.randn(4, 3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.rand(4, 3, 5, generator=g, dtype=torch.float64)
    w = torch.rand(3, 5, generator=g, dtype=torch.float64)
    pw = torch.rand(5, generator=g, dtype=torch.float64) * 3
    ours = BCEWithLogitsLoss(weight=w, reduction=reduction, pos_weight=pw)(x, y)
    ref = torch.nn.BCEWithLogitsLoss(weight=w, reduction=reduction, pos_weight=pw)(x, y)
    torch.testing.assert_close(ours, ref)
    up = torch.randn_like(ref)
    (go,) = torch.autograd.grad(ours, x, up)
    (gr,) = torch.autograd.grad(ref, x, up)
    torch.testing.assert_close(go, gr)


def test_bce_extras():
    g = _gen(6)
    x = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    y = (torch.rand(6, 4, generator=g) > 0.5).double()
    y[0, :2] = -100.0
    mod = BCEWithLogitsLoss(label_smoothing=0.2, softcap=2.0, ignore_index=-100.0)
    s = 2.0 * torch.tanh(x / 2.0)
    valid = y != -100
    ys = torch.where(valid, y, 0.0) * 0.8 + 0.1
    ref = F.binary_cross_entropy_with_logits(s, ys, reduction="none")[valid].mean()
    torch.testing.assert_close(mod(x, y), ref)
    assert torch.autograd.gradcheck(lambda a: mod(a, y), (x,))
    with pytest.raises(ValueError, match="target must be a tensor"):
        mod(x, y[:, :2])
    with pytest.raises(ValueError, match="softcap"):
        BCEWithLogitsLoss(softcap=-1.0)
