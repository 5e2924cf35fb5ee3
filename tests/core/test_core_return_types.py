"""Stable return types: NumPy in, NumPy out (a scalar when no dimension is left), and +0.0, not -0.0,
for a certain outcome."""

from __future__ import annotations

import math

import numpy as np
import pytest

import crossentropy as ce
from crossentropy import metrics

P = np.array([[0.25, 0.75], [0.5, 0.5]])
Q = np.array([[0.5, 0.5], [0.125, 0.875]])
LOGITS = np.array([[2.0, -1.0], [0.0, 0.5]])
LABELS = np.array([0, 1])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_numpy_results_are_scalars_of_the_input_dtype_when_reduced(dtype: type) -> None:
    p, q, z = P.astype(dtype), Q.astype(dtype), LOGITS.astype(dtype)
    w = np.array([1.0, 2.0], dtype=dtype)
    scalars = {
        "entropy": ce.entropy(p[0]),
        "cross_entropy": ce.cross_entropy(p[0], q[0]),
        "kl_divergence": ce.kl_divergence(p[0], q[0], base=2),
        "js_divergence": ce.js_divergence(p[0], q[0]),
        "logsumexp": ce.logsumexp(z[0]),
        "softmax_cross_entropy": ce.softmax_cross_entropy(z, LABELS),
        "softmax_cross_entropy weight": ce.softmax_cross_entropy(z, LABELS, weight=w),
        "softmax_cross_entropy probs": ce.softmax_cross_entropy(z, p),
        "softmax_cross_entropy sum": ce.softmax_cross_entropy(z, LABELS, reduction="sum"),
        "softmax_cross_entropy one row": ce.softmax_cross_entropy(z[0], LABELS[0]),
        "sigmoid_cross_entropy": ce.sigmoid_cross_entropy(z, p),
        "binary_cross_entropy": ce.binary_cross_entropy(p, q, base=2),
        "focal_loss": ce.focal_loss(z, LABELS),
        "focal_loss alpha": ce.focal_loss(z, LABELS, alpha=0.25),
        "focal_loss probs": ce.focal_loss(z, p),
    }
    for name, value in scalars.items():
        assert type(value) is dtype, (name, type(value))  # a NumPy scalar, not a 0-d array
    arrays = {
        "entropy": ce.entropy(p),
        "cross_entropy": ce.cross_entropy(p, q),
        "kl_divergence": ce.kl_divergence(p, q),
        "js_divergence": ce.js_divergence(p, q),
        "logsumexp": ce.logsumexp(z),
        "logsumexp keepdims": ce.logsumexp(z[0], keepdims=True),
        "log_softmax": ce.log_softmax(z),
        "softmax": ce.softmax(z[0]),
        "softmax_cross_entropy none": ce.softmax_cross_entropy(z, LABELS, reduction="none"),
        "focal_loss none": ce.focal_loss(z, LABELS, reduction="none"),
    }
    for name, value in arrays.items():
        assert type(value) is np.ndarray and value.dtype == dtype, (name, type(value))
        assert value.ndim >= 1, name


def test_other_array_types_come_back_as_themselves() -> None:
    torch = pytest.importorskip("torch")
    t = torch.tensor(P)
    assert isinstance(ce.entropy(t), torch.Tensor)
    assert isinstance(ce.entropy(t[0]), torch.Tensor) and ce.entropy(t[0]).ndim == 0
    assert isinstance(
        ce.softmax_cross_entropy(torch.tensor(LOGITS), torch.tensor(LABELS)), torch.Tensor
    )


def test_metrics_return_numpy_float64_scalars() -> None:
    y = [0, 1, 1, 0]
    p = [[0.75, 0.25], [0.5, 0.5], [0.125, 0.875], [0.5, 0.5]]
    values = [
        metrics.log_loss(y, p),
        metrics.log_loss(y, p, normalize=False),
        metrics.brier_score(y, p),
        metrics.perplexity([0.5, 1.5]),
        metrics.bits_per_token([0.5, 1.5]),
        metrics.bits_per_byte([0.5, 1.5], n_bytes=3),
        metrics.calibration_error(y, p).ece,
        metrics.calibration_error(y, p).mce,
    ]
    acc = metrics.ScoreAccumulator(2)
    acc.update(np.array(y), np.array(p))
    s = acc.compute()
    values += [
        s.log_loss,
        s.accuracy,
        s.brier_score,
        s.weight,
        s.ece,
        s.log_loss_bits,
        s.perplexity,
    ]
    for v in values:
        assert type(v) is np.float64, type(v)


def positive_zero(x: object) -> bool:
    value = float(x)  # type: ignore[arg-type]
    return value == 0.0 and math.copysign(1.0, value) == 1.0


def test_a_certain_outcome_costs_positive_zero() -> None:
    assert positive_zero(ce.entropy([1, 0]))
    assert positive_zero(ce.entropy([0.0, 1.0, 0.0]))
    assert all(positive_zero(v) for v in ce.entropy(np.eye(3)))
    assert positive_zero(ce.cross_entropy([1, 0], [1, 0]))
    assert positive_zero(ce.kl_divergence([1, 0], [1, 0]))
    masked = np.array([[0.0, -np.inf]])
    assert positive_zero(ce.softmax_cross_entropy(masked, np.array([0])))
    assert positive_zero(ce.softmax_cross_entropy(masked, np.array([[1.0, 0.0]])))
    assert positive_zero(ce.softmax_cross_entropy(masked, np.array([0]), reduction="sum"))
    assert positive_zero(ce.focal_loss(masked, np.array([0])))
    assert positive_zero(ce.focal_loss(masked, np.array([[1.0, 0.0]])))
    assert positive_zero(ce.binary_cross_entropy(np.array([1.0]), np.array([1.0])))
    # the blocked NumPy path for large inputs too
    big = np.zeros((40000, 4))
    big[:, 1] = 1.0
    assert all(positive_zero(v) for v in ce.entropy(big)[:10])
    assert all(positive_zero(v) for v in ce.cross_entropy(big, big)[:10])


def test_a_certain_outcome_costs_positive_zero_in_torch() -> None:
    torch = pytest.importorskip("torch")
    assert positive_zero(ce.entropy(torch.tensor([1.0, 0.0])))
    assert positive_zero(
        ce.softmax_cross_entropy(torch.tensor([[0.0, -math.inf]]), torch.tensor([0]))
    )
