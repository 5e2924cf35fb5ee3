"""Bad input to the losses raises ValueError/TypeError naming argument, shape/dtype and expectation."""

from __future__ import annotations

import math

import numpy as np
import pytest

import crossentropy as ce

LOGITS = np.zeros((4, 3))
LABELS = np.array([0, 1, 2, 1])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"target": np.array([0, 1, 3, 1])},
            ValueError,
            r"class index 3 at index \(2,\).*\[0, 2\]",
        ),
        ({"target": np.array([0, -5, 1, 1])}, ValueError, r"class index -5 at index \(1,\)"),
        (
            {"target": np.array([0, -100, 7, 1]), "ignore_index": -100},
            ValueError,
            r"class index 7 at index \(2,\).*ignore_index=-100",
        ),
        ({"target": np.array([0, 1])}, ValueError, r"shape.*\(4,\).*got target shape \(2,\)"),
        ({"target": np.zeros((4, 2))}, ValueError, r"probability target.*\(4, 3\).*\(4, 2\)"),
        (
            {"target": np.array(["a", "b", "c", "d"])},
            TypeError,
            "integer class indices or floating",
        ),
        ({"target": np.ones(4, dtype=bool)}, TypeError, "integer class indices or floating"),
        ({"label_smoothing": 1.5}, ValueError, r"label_smoothing must be in \[0, 1\]; got 1.5"),
        ({"label_smoothing": -0.1}, ValueError, "label_smoothing"),
        ({"label_smoothing": "0.1"}, TypeError, "label_smoothing"),
        (
            {"reduction": "avg"},
            ValueError,
            "reduction must be one of 'mean', 'sum', 'none'; got 'avg'",
        ),
        ({"base": 0}, ValueError, "base"),
        ({"weight": np.ones(2)}, ValueError, r"weight must have shape \(3,\).*got shape \(2,\)"),
        (
            {"weight": np.array([1.0, -1.0, 1.0])},
            ValueError,
            r"weight must hold.*-1.0 at index \(1,\)",
        ),
        ({"weight": np.array([1.0, np.nan, 1.0])}, ValueError, "weight"),
        ({"axis": 2}, ValueError, "axis=2 is out of range"),
        (
            {"target": np.full((4, 3), 1 / 3), "ignore_index": -100},
            ValueError,
            "ignore_index applies to class-index targets only",
        ),
        (
            {"target": np.full((4, 3), -0.5)},
            ValueError,
            r"target must hold.*-0.5 at index \(0, 0\)",
        ),
        ({"ignore_index": 1.5}, TypeError, "ignore_index must be an int"),
    ],
)
def test_softmax_cross_entropy_argument_errors(kwargs: dict, error: type, match: str) -> None:
    args = {"target": LABELS, **kwargs}
    target = args.pop("target")
    with pytest.raises(error, match=match):
        ce.softmax_cross_entropy(LOGITS, target, **args)


@pytest.mark.parametrize(("bad", "shown"), [(np.nan, "nan"), (np.inf, "inf")])
def test_nan_and_plus_inf_logits_raise_with_their_index(bad: float, shown: str) -> None:
    logits = LOGITS.copy()
    logits[2, 1] = bad
    with pytest.raises(
        ValueError, match=rf"logits must not contain NaN or \+inf.*{shown} at index \(2, 1\)"
    ):
        ce.softmax_cross_entropy(logits, LABELS)
    with pytest.raises(ValueError, match="logits"):
        ce.focal_loss(logits, LABELS)


def test_integer_logits_are_a_type_error_naming_the_dtype() -> None:
    with pytest.raises(TypeError, match="logits must have a real floating dtype; got dtype int"):
        ce.softmax_cross_entropy(np.zeros((2, 3), dtype=np.int64), np.array([0, 1]))


def test_sigmoid_and_binary_cross_entropy_errors() -> None:
    x = np.zeros((2, 3))
    y = np.ones((2, 3))
    with pytest.raises(
        ValueError, match=r"target must have the shape of logits \(2, 3\); got \(3,\)"
    ):
        ce.sigmoid_cross_entropy(x, np.ones(3))
    with pytest.raises(ValueError, match=r"target must hold values in \[0.0, 1.0\]; got 2.0"):
        ce.sigmoid_cross_entropy(x, y * 2)
    with pytest.raises(
        ValueError, match=r"pos_weight of shape \(2,\) does not broadcast.*\(2, 3\)"
    ):
        ce.sigmoid_cross_entropy(x, y, pos_weight=np.ones(2))
    with pytest.raises(ValueError, match="pos_weight must hold"):
        ce.sigmoid_cross_entropy(x, y, pos_weight=-np.ones(3))
    with pytest.raises(ValueError, match="NaN"):
        ce.sigmoid_cross_entropy(x + np.nan, y)
    with pytest.raises(
        ValueError, match=r"probs must hold values in \[0.0, 1.0\]; got 1.5 at index \(0, 1\)"
    ):
        ce.binary_cross_entropy(np.array([[0.5, 1.5, 0.5]]), np.ones((1, 3)))
    with pytest.raises(ValueError, match=r"probs must hold.*-0.1"):
        ce.binary_cross_entropy(np.array([-0.1]), np.ones(1))
    with pytest.raises(ValueError, match="reduction"):
        ce.binary_cross_entropy(np.array([0.5]), np.ones(1), reduction="batchmean")


def test_focal_loss_argument_errors() -> None:
    with pytest.raises(ValueError, match="gamma must be a non-negative"):
        ce.focal_loss(LOGITS, LABELS, gamma=-1.0)
    with pytest.raises(ValueError, match="alpha must be non-negative"):
        ce.focal_loss(LOGITS, LABELS, alpha=-0.5)
    with pytest.raises(ValueError, match=r"alpha must have shape \(3,\)"):
        ce.focal_loss(LOGITS, LABELS, alpha=np.ones(4))


@pytest.mark.parametrize("target", [np.array([0, 0]), np.zeros((2, 0))])
def test_logits_without_classes_are_named(target: np.ndarray) -> None:
    with pytest.raises(
        ValueError, match=r"logits have no classes along axis=-1 \(shape \(2, 0\)\)"
    ):
        ce.softmax_cross_entropy(np.zeros((2, 0)), target)
    with pytest.raises(ValueError, match="logits have no classes"):
        ce.focal_loss(np.zeros((2, 0)), target)


def test_mixing_numpy_and_torch_says_which_argument_is_which_and_how_to_convert() -> None:
    # Issue 23: the message listed array_api_compat's module paths.
    torch = pytest.importorskip("torch")
    a, t = np.array([0.5, 0.5]), torch.tensor([0.25, 0.75], dtype=torch.float64)
    logits, labels = torch.zeros(2, 3, dtype=torch.float64), np.array([0, 2])
    calls = [
        (
            "kl_divergence",
            lambda: ce.kl_divergence(a, t),
            "p",
            "numpy.ndarray",
            "q",
            "torch.Tensor",
        ),
        (
            "cross_entropy",
            lambda: ce.cross_entropy(t, a),
            "p",
            "torch.Tensor",
            "q",
            "numpy.ndarray",
        ),
        (
            "js_divergence",
            lambda: ce.js_divergence(a, t),
            "p",
            "numpy.ndarray",
            "q",
            "torch.Tensor",
        ),
        (
            "softmax_cross_entropy",
            lambda: ce.softmax_cross_entropy(logits, labels),
            "logits",
            "torch.Tensor",
            "target",
            "numpy.ndarray",
        ),
        (
            "softmax_cross_entropy",
            lambda: ce.softmax_cross_entropy(logits, torch.tensor([0, 2]), weight=np.ones(3)),
            "logits",
            "torch.Tensor",
            "weight",
            "numpy.ndarray",
        ),
        (
            "focal_loss",
            lambda: ce.focal_loss(logits, labels),
            "logits",
            "torch.Tensor",
            "target",
            "numpy.ndarray",
        ),
        (
            "binary_cross_entropy",
            lambda: ce.binary_cross_entropy(t, a),
            "probs",
            "torch.Tensor",
            "target",
            "numpy.ndarray",
        ),
        (
            "sigmoid_cross_entropy",
            lambda: ce.sigmoid_cross_entropy(t, a),
            "logits",
            "torch.Tensor",
            "target",
            "numpy.ndarray",
        ),
    ]
    for func, run, first, first_type, second, second_type in calls:
        with pytest.raises(TypeError) as info:
            run()
        message = str(info.value)
        assert message.startswith(f"{func}: {first} is a {first_type} and {second} a {second_type}")
        assert "convert one side" in message and "torch.as_tensor" in message, message
        assert "array_api_compat" not in message and "/" not in message, message
    # a Python list joins the tensor's library, as before
    assert float(ce.kl_divergence(t, [0.5, 0.5])) == pytest.approx(
        0.25 * math.log(0.5) + 0.75 * math.log(1.5), rel=1e-12
    )
