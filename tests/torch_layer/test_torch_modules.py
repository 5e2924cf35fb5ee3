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
    focal_loss,
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


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("prob", [False, True])
def test_focal_loss_gradients_finite_with_masked_and_confident_rows(gamma, prob):
    """-inf logits (masked classes) and p_t that rounds to 1 (gamma < 1) once gave NaN gradients."""
    torch.manual_seed(0)
    x = torch.randn(6, 5, dtype=torch.float64)
    x[0] = torch.tensor([60.0, 0.0, 0.0, 0.0, 0.0])  # p_t = 1 in floating point
    x[1:, 3] = float("-inf")  # class 3 masked everywhere but row 0
    y = torch.tensor([0, 1, 2, 4, 0, 1])
    target = F.one_hot(y, 5).double() * 0.8 + 0.05 if prob else y
    if prob:
        target[1:, 3] = 0.0
        target = target / target.sum(1, keepdim=True)
    xg = x.clone().requires_grad_()
    loss = focal_loss(xg, target, gamma=gamma, reduction="none")
    upstream = torch.rand(6, dtype=torch.float64)
    (grad,) = torch.autograd.grad(loss, xg, upstream)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    # float64 reference on the rows and classes where everything is finite, by the plain formula
    xr = x.clone().requires_grad_()
    logp = torch.log_softmax(xr, 1)
    safe = torch.where(torch.isfinite(logp), logp, 0.0)
    terms = -((1 - safe.exp()) ** gamma) * safe
    ref = (target * terms).sum(1) if prob else terms.gather(1, y[:, None]).squeeze(1)
    (gref,) = torch.autograd.grad(ref, xr, upstream)
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad[1:], gref[1:], rtol=1e-9, atol=1e-12)
    if not prob:
        assert grad[0].abs().max() < 1e-12  # the exact gradient there is ~e^-60


def test_focal_and_bce_modules_check_arguments_and_repr():
    with pytest.raises(TypeError, match="gamma must be a real number"):
        FocalLoss(gamma="2")
    with pytest.raises(ValueError, match="alpha must be None"):
        FocalLoss(alpha=-1.0)
    assert "gamma=1.5, alpha=0.25" in repr(FocalLoss(gamma=1.5, alpha=0.25))
    assert "label_smoothing=0.1" in repr(BCEWithLogitsLoss(label_smoothing=0.1))
    with pytest.raises(TypeError, match="ignore_index must be a real number"):
        BCEWithLogitsLoss(ignore_index="a")(torch.zeros(3), torch.zeros(3))


def test_numpy_scalars_are_accepted_like_torch():
    np = pytest.importorskip("numpy")
    x, y = torch.randn(4, 6, dtype=torch.float64), torch.tensor([0, 5, -100, 2])
    ours = CrossEntropyLoss(ignore_index=np.int64(-100), label_smoothing=np.float32(0.25))(x, y)
    ref = F.cross_entropy(x, y, ignore_index=-100, label_smoothing=float(np.float32(0.25)))
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
