"""Loss properties: masking with -inf, shift invariance, focal loss, gradients through torch autograd."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import crossentropy as ce

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True)


@st.composite
def logits_and_labels(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits (N, C), class indices (N,) and probability targets (N, C); C odd or even."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = draw(st.sampled_from([1, 3, 8]))
    c = draw(st.sampled_from([2, 3, 7, 10]))
    logits = rng.normal(scale=draw(st.sampled_from([0.3, 3.0, 30.0])), size=(n, c))
    labels = rng.integers(0, c, size=n)
    probs = rng.random((n, c)) ** 3
    probs /= probs.sum(axis=1, keepdims=True)
    return logits, labels, probs


@SETTINGS
@given(logits_and_labels(), st.floats(-1e3, 1e3), st.sampled_from([0.0, 0.2]))
def test_softmax_cross_entropy_is_invariant_to_a_per_row_shift(
    case: tuple[np.ndarray, np.ndarray, np.ndarray], shift: float, smoothing: float
) -> None:
    logits, labels, probs = case
    rows = np.linspace(-1, 1, logits.shape[0])[:, None] * shift
    for target in (labels, probs):
        a = ce.softmax_cross_entropy(logits, target, label_smoothing=smoothing, reduction="none")
        b = ce.softmax_cross_entropy(
            logits + rows, target, label_smoothing=smoothing, reduction="none"
        )
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)


@SETTINGS
@given(logits_and_labels(), st.sampled_from(["none", "mean", "sum"]), st.sampled_from([0.0, 0.3]))
def test_gradient_through_torch_is_softmax_minus_target(
    case: tuple[np.ndarray, np.ndarray, np.ndarray], reduction: str, smoothing: float
) -> None:
    logits, labels, probs = case
    n, c = logits.shape
    for target in (labels, probs):
        x = torch.tensor(logits, requires_grad=True)
        loss = ce.softmax_cross_entropy(
            x, torch.from_numpy(target), reduction=reduction, label_smoothing=smoothing
        )
        assert isinstance(loss, torch.Tensor)
        upstream = torch.randn_like(loss, generator=torch.Generator().manual_seed(n * c))
        (loss * upstream).sum().backward()
        t = np.eye(c)[target] if target.ndim == 1 else target
        t = (1 - smoothing) * t + smoothing / c
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        g = upstream.numpy()
        scale = g[:, None] if reduction == "none" else g / (n if reduction == "mean" else 1)
        assert x.grad is not None
        np.testing.assert_allclose(x.grad.numpy(), scale * (p - t), rtol=1e-9, atol=1e-12)


def test_masked_classes_give_finite_loss_equal_to_dropping_them() -> None:
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(6, 5))
    mask = np.zeros((6, 5), dtype=bool)
    mask[:, 3:] = True
    masked = np.where(mask, -np.inf, logits)
    labels = rng.integers(0, 3, size=6)
    probs = rng.random((6, 3))
    probs /= probs.sum(axis=1, keepdims=True)
    padded = np.concatenate([probs, np.zeros((6, 2))], axis=1)
    weight = np.array([1.0, 2.0, 0.5, 0.0, 3.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for target, small_target in ((labels, labels), (padded, probs)):
            for w in (None, weight):
                ours = ce.softmax_cross_entropy(masked, target, weight=w, reduction="none")
                ref = ce.softmax_cross_entropy(
                    logits[:, :3],
                    small_target,
                    weight=None if w is None else w[:3],
                    reduction="none",
                )
                assert np.all(np.isfinite(ours))
                np.testing.assert_allclose(ours, ref, rtol=1e-12)
    # Label smoothing puts mass on every class, so a masked class then costs inf.
    assert np.isinf(float(ce.softmax_cross_entropy(masked, labels, label_smoothing=0.1)))
    # Mass on a masked class costs inf, not NaN.
    assert float(ce.softmax_cross_entropy(masked, np.full(6, 4))) == np.inf


def test_all_masked_ignored_rows_cost_nothing_and_all_ignored_mean_is_zero() -> None:
    logits = np.array([[-np.inf, -np.inf, -np.inf], [1.0, 2.0, 3.0]])
    labels = np.array([-100, 2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = ce.softmax_cross_entropy(logits, labels, ignore_index=-100, reduction="none")
        smoothed = ce.softmax_cross_entropy(
            logits, labels, ignore_index=-100, label_smoothing=0.5, reduction="none"
        )
        empty = ce.softmax_cross_entropy(logits, np.array([-100, -100]), ignore_index=-100)
    assert out[0] == 0.0 and smoothed[0] == 0.0 and np.isfinite(out[1])
    assert float(empty) == 0.0
    zero_weight = ce.softmax_cross_entropy(logits[1:], labels[1:], weight=np.array([1.0, 1.0, 0.0]))
    assert float(zero_weight) == 0.0


def focal_reference(logits: np.ndarray, target: np.ndarray, gamma: float, alpha: np.ndarray | None):
    """Direct float64 formula: -alpha_t (1 - p_t)^gamma log p_t per row (probabilities: summed)."""
    c = logits.shape[1]
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    p = np.exp(logp)
    a = np.ones(c) if alpha is None else alpha
    t = np.eye(c)[target] if target.ndim == 1 else target
    per_row = -(a * t * (1 - p) ** gamma * logp).sum(axis=1)
    denom = (a * t).sum() if target.ndim == 1 else logits.shape[0]
    return per_row, per_row.sum() / denom


@SETTINGS
@given(logits_and_labels(), st.sampled_from([0.0, 0.5, 2.0, 5.0]), st.booleans())
def test_focal_loss_matches_direct_formula(
    case: tuple[np.ndarray, np.ndarray, np.ndarray], gamma: float, use_alpha: bool
) -> None:
    logits, labels, probs = case
    alpha = np.linspace(0.25, 1.0, logits.shape[1]) if use_alpha else None
    for target in (labels, probs):
        rows, mean = focal_reference(logits, target, gamma, alpha)
        np.testing.assert_allclose(
            ce.focal_loss(logits, target, gamma=gamma, alpha=alpha, reduction="none"),
            rows,
            rtol=1e-9,
            atol=1e-12,
        )
        np.testing.assert_allclose(
            ce.focal_loss(logits, target, gamma=gamma, alpha=alpha), mean, rtol=1e-9, atol=1e-12
        )
        np.testing.assert_allclose(
            ce.focal_loss(logits, target, gamma=gamma, alpha=alpha, reduction="sum"),
            rows.sum(),
            rtol=1e-9,
            atol=1e-12,
        )


@SETTINGS
@given(logits_and_labels(), st.sampled_from([None, -1, 0]))
def test_focal_loss_with_gamma_zero_is_softmax_cross_entropy(
    case: tuple[np.ndarray, np.ndarray, np.ndarray], ignore: int | None
) -> None:
    logits, labels, probs = case
    alpha = np.linspace(0.5, 2.0, logits.shape[1])
    for reduction in ("mean", "sum", "none"):
        np.testing.assert_allclose(
            ce.focal_loss(
                logits, labels, gamma=0.0, alpha=alpha, ignore_index=ignore, reduction=reduction
            ),
            ce.softmax_cross_entropy(
                logits, labels, weight=alpha, ignore_index=ignore, reduction=reduction
            ),
            rtol=1e-12,
            atol=1e-14,
        )
        np.testing.assert_allclose(
            ce.focal_loss(logits, probs, gamma=0.0, reduction=reduction),
            ce.softmax_cross_entropy(logits, probs, reduction=reduction),
            rtol=1e-12,
            atol=1e-14,
        )


def test_focal_loss_is_accurate_for_confident_rows_and_masks() -> None:
    # p_t = 1 - 1e-12: (1 - p)^2 must be ~1e-24, not 0 from 1 - p rounding in linear space.
    logits = np.array([[0.0, np.log(1e-12), -np.inf]])
    loss = float(ce.focal_loss(logits, np.array([0]), gamma=2.0))
    expected = (1e-12) ** 2 * 1e-12  # (1 - p)^2 * -log p with -log p ~ 1e-12
    assert loss == pytest.approx(expected, rel=1e-3)
    # A scalar alpha scales the loss.
    scaled = float(ce.focal_loss(logits, np.array([1]), gamma=1.0, alpha=0.25))
    plain = float(ce.focal_loss(logits, np.array([1]), gamma=1.0))
    assert scaled == pytest.approx(0.25 * plain, rel=1e-12)


def test_sigmoid_cross_entropy_infinite_logits_with_matching_targets_cost_zero() -> None:
    x = np.array([np.inf, -np.inf, np.inf, 0.0])
    y = np.array([1.0, 0.0, 0.0, 1.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = ce.sigmoid_cross_entropy(x, y, reduction="none", pos_weight=np.array(2.0))
    assert out[0] == 0.0 and out[1] == 0.0 and out[2] == np.inf
    assert out[3] == pytest.approx(2 * np.log(2))


def test_masked_logits_backprop_finite_gradients_through_torch() -> None:
    rng = np.random.default_rng(8)
    logits = rng.normal(size=(4, 6))
    logits[:, 4:] = -np.inf
    logits[3, :] = -np.inf  # a fully masked padding row, ignored
    labels = np.array([0, 3, 2, -100])
    x = torch.tensor(logits, requires_grad=True)
    loss = ce.softmax_cross_entropy(
        x, torch.from_numpy(labels), ignore_index=-100, reduction="none"
    )
    upstream = torch.randn(4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    (loss * upstream).sum().backward()
    assert x.grad is not None
    grad = x.grad.numpy()
    assert np.all(np.isfinite(grad))
    p = np.exp(logits[:3, :4] - logits[:3, :4].max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    expected = upstream.numpy()[:3, None] * (p - np.eye(4)[labels[:3]])
    np.testing.assert_allclose(grad[:3, :4], expected, rtol=1e-10, atol=1e-14)
    assert np.all(grad[:, 4:] == 0) and np.all(grad[3] == 0)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_float32_matches_torch_float32(smoothing: float) -> None:
    rng = np.random.default_rng(4)
    logits = rng.normal(scale=4.0, size=(64, 11)).astype(np.float32)
    labels = rng.integers(0, 11, size=64)
    weight = rng.random(11).astype(np.float32)
    ours = ce.softmax_cross_entropy(logits, labels, weight=weight, label_smoothing=smoothing)
    ref = torch.nn.functional.cross_entropy(
        torch.from_numpy(logits),
        torch.from_numpy(labels),
        weight=torch.from_numpy(weight),
        label_smoothing=smoothing,
    )
    assert np.asarray(ours).dtype == np.float32
    np.testing.assert_allclose(float(ours), float(ref), rtol=2e-6)


def test_numpy_scalar_arguments_are_accepted() -> None:
    logits = np.zeros((2, 3))
    out = ce.softmax_cross_entropy(
        logits, np.array([0, 5]), ignore_index=np.int64(5), label_smoothing=np.float32(0.1)
    )
    assert float(out) == pytest.approx(np.log(3))
