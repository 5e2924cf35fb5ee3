"""softmax_cross_entropy / sigmoid_cross_entropy against torch.nn.functional, float64, to 1e-10.

Random grids drawn by hypothesis: every combination of class-index or probability targets, class
weights, ignore_index, label smoothing and reduction, on unbatched, 2-D and K-dim inputs, with odd
class counts next to even ones.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import crossentropy as ce

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True)
TOL = {"rtol": 1e-10, "atol": 1e-10}


@st.composite
def ce_cases(draw: st.DrawFn) -> dict:
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    # 1 class (degenerate), 2, odd 3/5/7, and 8 (aligned).
    n_classes = draw(st.sampled_from([1, 2, 3, 5, 7, 8]))
    # () is torch's unbatched input; (n, d1, ...) are K-dim inputs with the class axis at dim 1.
    outer = draw(st.sampled_from([(), (1,), (4,), (5,), (3, 2), (2, 3, 3)]))
    kind = draw(st.sampled_from(["index", "prob"]))
    logits_t = rng.normal(
        scale=draw(st.sampled_from([0.5, 3.0, 20.0])), size=(*outer[:1], n_classes, *outer[1:])
    )
    if kind == "index":
        target = rng.integers(0, n_classes, size=outer)
    else:
        raw = rng.random((*outer[:1], n_classes, *outer[1:]))
        raw[raw < 0.2] = 0.0  # exact zeros in the target
        total = raw.sum(axis=1 if outer else 0, keepdims=True)
        target = np.where(total > 0, raw / np.where(total > 0, total, 1), 1.0 / n_classes)
    weight = None
    if draw(st.booleans()):
        weight = rng.random(n_classes) * 2
        if n_classes > 2 and draw(st.booleans()):
            weight[rng.integers(n_classes)] = 0.0
    ignore_index = None
    if kind == "index":
        ignore_index = draw(st.sampled_from([None, -100, 0, n_classes - 1]))
    smoothing = draw(st.sampled_from([0.0, 0.1, 0.37, 1.0]))
    reduction = draw(st.sampled_from(["mean", "sum", "none"]))
    return {
        "logits": logits_t,
        "target": target,
        "weight": weight,
        "ignore_index": ignore_index,
        "label_smoothing": smoothing,
        "reduction": reduction,
    }


def torch_reference(case: dict) -> np.ndarray:
    weight = None if case["weight"] is None else torch.from_numpy(case["weight"])
    ignore = -100 if case["ignore_index"] is None else case["ignore_index"]
    out = F.cross_entropy(
        torch.from_numpy(case["logits"]),
        torch.from_numpy(np.asarray(case["target"])),
        weight=weight,
        ignore_index=ignore,
        label_smoothing=case["label_smoothing"],
        reduction=case["reduction"],
    )
    return out.numpy()


def check_against_torch(ours: np.ndarray, ref: np.ndarray, case: dict) -> None:
    if case["reduction"] == "mean" and np.isnan(ref):
        # torch divides 0 by 0 when nothing counts (all ignored or zero weights); we return 0.
        assert np.asarray(case["target"]).dtype.kind == "i"
        assert float(ours) == 0.0
        return
    np.testing.assert_allclose(ours, ref, **TOL)


@SETTINGS
@given(ce_cases())
def test_softmax_cross_entropy_equals_torch_with_class_axis_1(case: dict) -> None:
    axis = 0 if case["logits"].ndim == 1 else 1
    ours = ce.softmax_cross_entropy(
        case["logits"],
        case["target"],
        axis=axis,
        weight=case["weight"],
        ignore_index=case["ignore_index"],
        label_smoothing=case["label_smoothing"],
        reduction=case["reduction"],
    )
    check_against_torch(np.asarray(ours), torch_reference(case), case)


@SETTINGS
@given(ce_cases())
def test_softmax_cross_entropy_equals_torch_with_class_axis_last(case: dict) -> None:
    # The same numbers with the class axis moved to the end (our default axis=-1).
    axis = 0 if case["logits"].ndim == 1 else 1
    logits = np.moveaxis(case["logits"], axis, -1)
    target = case["target"]
    if target.dtype.kind == "f":
        target = np.moveaxis(target, axis, -1)
    ours = ce.softmax_cross_entropy(
        logits,
        target,
        weight=case["weight"],
        ignore_index=case["ignore_index"],
        label_smoothing=case["label_smoothing"],
        reduction=case["reduction"],
    )
    check_against_torch(np.asarray(ours), torch_reference(case), case)


@SETTINGS
@given(ce_cases(), st.sampled_from([2, math.e, 10]))
def test_softmax_cross_entropy_base_divides_by_log_base(case: dict, base: float) -> None:
    kwargs = {k: case[k] for k in ("weight", "ignore_index", "label_smoothing", "reduction")}
    axis = 0 if case["logits"].ndim == 1 else 1
    nats = ce.softmax_cross_entropy(case["logits"], case["target"], axis=axis, **kwargs)
    units = ce.softmax_cross_entropy(case["logits"], case["target"], axis=axis, base=base, **kwargs)
    np.testing.assert_allclose(units, np.asarray(nats) / math.log(base), rtol=1e-12, atol=1e-15)


@st.composite
def bce_cases(draw: st.DrawFn) -> dict:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = draw(st.sampled_from([(1,), (6,), (4, 3), (5, 7), (2, 3, 5)]))
    logits = rng.normal(scale=draw(st.sampled_from([1.0, 8.0, 40.0])), size=shape)
    if draw(st.booleans()):
        target = rng.integers(0, 2, size=shape).astype(np.float64)
    else:
        target = rng.random(shape)
    weight = None
    if draw(st.booleans()):
        wshape = draw(st.sampled_from([shape, shape[-1:], (*shape[:-1], 1), ()]))
        weight = rng.random(wshape) * 3
    pos_weight = rng.random(shape[-1:]) * 4 if draw(st.booleans()) else None
    return {
        "logits": logits,
        "target": target,
        "weight": weight,
        "pos_weight": pos_weight,
        "reduction": draw(st.sampled_from(["mean", "sum", "none"])),
    }


@SETTINGS
@given(bce_cases())
def test_sigmoid_cross_entropy_equals_torch(case: dict) -> None:
    def t(x: np.ndarray | None) -> torch.Tensor | None:
        return None if x is None else torch.from_numpy(np.asarray(x))

    ref = F.binary_cross_entropy_with_logits(
        t(case["logits"]),
        t(case["target"]),
        weight=t(case["weight"]),
        pos_weight=t(case["pos_weight"]),
        reduction=case["reduction"],
    ).numpy()
    ours = ce.sigmoid_cross_entropy(
        case["logits"],
        case["target"],
        weight=case["weight"],
        pos_weight=case["pos_weight"],
        reduction=case["reduction"],
    )
    np.testing.assert_allclose(np.asarray(ours), ref, **TOL)


@SETTINGS
@given(bce_cases())
def test_binary_cross_entropy_equals_torch_away_from_its_clamp(case: dict) -> None:
    probs = 1 / (1 + np.exp(-np.clip(case["logits"], -30, 30)))
    ref = F.binary_cross_entropy(
        torch.from_numpy(probs),
        torch.from_numpy(case["target"]),
        weight=None if case["weight"] is None else torch.from_numpy(np.asarray(case["weight"])),
        reduction=case["reduction"],
    ).numpy()
    ours = ce.binary_cross_entropy(
        probs, case["target"], weight=case["weight"], reduction=case["reduction"]
    )
    np.testing.assert_allclose(np.asarray(ours), ref, **TOL)


def test_binary_cross_entropy_zero_probability_on_a_true_event_is_inf_not_torch_clamp() -> None:
    probs = np.array([0.0, 0.5, 1.0])
    target = np.array([1.0, 1.0, 1.0])
    ours = ce.binary_cross_entropy(probs, target, reduction="none")
    torch_clamped = F.binary_cross_entropy(
        torch.from_numpy(probs), torch.from_numpy(target), reduction="none"
    ).numpy()
    assert np.isinf(ours[0]) and torch_clamped[0] == pytest.approx(100.0)
    np.testing.assert_allclose(ours[1:], torch_clamped[1:], rtol=1e-12)
    # Certain and right costs exactly 0 (0 log 0 = 0), with no NaN.
    assert ours[2] == 0.0
