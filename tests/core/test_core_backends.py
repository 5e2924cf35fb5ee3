"""Every core function on NumPy, array_api_strict and torch CPU tensors returns the caller's type."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import array_api_strict
import numpy as np
import pytest
import torch

import crossentropy as ce

RNG = np.random.default_rng(11)
LOGITS = RNG.normal(size=(5, 3, 4))  # class axis 1 in some calls, 2 (last) in others
P = RNG.random((5, 7)) + 0.05
P /= P.sum(axis=1, keepdims=True)
Q = RNG.random((5, 7)) + 0.05
Q /= Q.sum(axis=1, keepdims=True)
LABELS = RNG.integers(0, 4, size=(5, 3))
LABELS[0, 0] = -1
SOFT = np.exp(LOGITS[::-1]) / np.exp(LOGITS[::-1]).sum(axis=-1, keepdims=True)
WEIGHT = np.array([0.5, 1.0, 2.0, 1.5])
BIN_T = (RNG.random((5, 4)) > 0.5).astype(np.float64)
PROBS = RNG.random((5, 4)) * 0.98 + 0.01

CASES: dict[str, tuple[Callable[..., Any], tuple[np.ndarray, ...], dict[str, Any]]] = {
    "entropy": (ce.entropy, (P,), {"base": 2}),
    "cross_entropy": (ce.cross_entropy, (P, Q), {}),
    "kl_divergence": (ce.kl_divergence, (P, Q), {}),
    "js_divergence": (ce.js_divergence, (P, Q), {}),
    "logsumexp": (ce.logsumexp, (LOGITS,), {"axis": 1}),
    "log_softmax": (ce.log_softmax, (LOGITS,), {}),
    "softmax": (ce.softmax, (LOGITS,), {"axis": 0}),
    "softmax_ce_labels": (
        ce.softmax_cross_entropy,
        (LOGITS, LABELS),
        {"weight": WEIGHT, "ignore_index": -1, "label_smoothing": 0.1},
    ),
    "softmax_ce_probs": (ce.softmax_cross_entropy, (LOGITS, SOFT), {"reduction": "none"}),
    "softmax_ce_axis1": (
        ce.softmax_cross_entropy,
        (np.moveaxis(LOGITS, 2, 1), LABELS),
        {"axis": 1, "reduction": "sum", "ignore_index": -1},
    ),
    "sigmoid_ce": (ce.sigmoid_cross_entropy, (LOGITS[:, 0], BIN_T), {"pos_weight": WEIGHT}),
    "binary_ce": (ce.binary_cross_entropy, (PROBS, BIN_T), {"reduction": "none"}),
    "focal": (ce.focal_loss, (LOGITS, LABELS), {"ignore_index": -1, "alpha": WEIGHT}),
}


def to_strict(x: np.ndarray) -> Any:
    return array_api_strict.asarray(x)


def to_torch(x: np.ndarray) -> Any:
    return torch.from_numpy(np.ascontiguousarray(x))


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize(
    ("convert", "array_type"),
    [
        (to_strict, type(array_api_strict.asarray(0.0))),
        (to_torch, torch.Tensor),
        (lambda x: x, (np.ndarray, np.generic)),
    ],
    ids=["array_api_strict", "torch", "numpy"],
)
def test_backend_returns_its_own_type_and_numpy_values(
    name: str, convert: Callable[[np.ndarray], Any], array_type: Any
) -> None:
    func, args, kwargs = CASES[name]
    expected = np.asarray(func(*args, **kwargs))
    # Keyword arrays (weights) stay NumPy-free too: convert them to the backend as well.
    conv_kwargs = {k: convert(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
    out = func(*(convert(a) for a in args), **conv_kwargs)
    assert isinstance(out, array_type)
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-12, atol=1e-14)


def test_python_sequences_give_numpy_and_list_weights_join_the_tensor_namespace() -> None:
    assert isinstance(ce.entropy([0.25, 0.75]), (np.ndarray, np.generic))
    out = ce.softmax_cross_entropy(
        to_torch(LOGITS), to_torch(LABELS), weight=WEIGHT.tolist(), ignore_index=-1
    )
    assert isinstance(out, torch.Tensor)
    np.testing.assert_allclose(
        out.numpy(), ce.softmax_cross_entropy(LOGITS, LABELS, weight=WEIGHT, ignore_index=-1)
    )


def test_float32_torch_stays_float32() -> None:
    out = ce.softmax_cross_entropy(
        to_torch(LOGITS.astype(np.float32)), to_torch(LABELS), ignore_index=-1
    )
    assert out.dtype == torch.float32


def test_mixing_libraries_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="different libraries"):
        ce.kl_divergence(to_torch(P), to_strict(Q))


@pytest.mark.parametrize(
    "convert", [to_torch, to_strict, lambda x: x], ids=["torch", "strict", "numpy"]
)
@pytest.mark.parametrize("dtype", [np.int32, np.int16, np.uint8])
def test_narrow_integer_labels_work_on_every_backend(convert: Callable, dtype: type) -> None:
    labels = np.array([[0, 3, 2], [1, 1, 0], [2, 3, 3], [0, 0, 1], [3, 2, 1]])
    expected = ce.softmax_cross_entropy(LOGITS, labels, weight=WEIGHT, label_smoothing=0.2)
    out = ce.softmax_cross_entropy(
        convert(LOGITS), convert(labels.astype(dtype)), weight=convert(WEIGHT), label_smoothing=0.2
    )
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-12)
    focal = ce.focal_loss(convert(LOGITS), convert(labels.astype(dtype)), alpha=convert(WEIGHT))
    np.testing.assert_allclose(
        np.asarray(focal), ce.focal_loss(LOGITS, labels, alpha=WEIGHT), rtol=1e-12
    )
