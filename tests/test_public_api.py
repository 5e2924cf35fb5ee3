"""Pins the public surface of every layer: adding or removing a name must be a deliberate change."""

import importlib

import pytest

PUBLIC = {
    "crossentropy.torch": [
        "BCEWithLogitsLoss",
        "ContrastiveLoss",
        "CrossEntropyAux",
        "CrossEntropyLoss",
        "FocalLoss",
        "LinearCrossEntropyLoss",
        "LogProbs",
        "binary_cross_entropy_with_logits",
        "contrastive_loss",
        "cross_entropy",
        "explain",
        "focal_loss",
        "global_valid_count",
        "linear_cross_entropy",
        "linear_distillation_loss",
        "linear_logprobs",
    ],
    "crossentropy.hf": [
        "UnsupportedModelError",
        "distillation_loss",
        "is_patched",
        "patch",
        "patched",
        "token_logprobs",
        "unpatch",
    ],
    "crossentropy.keras": ["SparseCategoricalCrossentropy", "SparseCategoricalFocalCrossentropy"],
    "crossentropy.triton": [
        "linear_ce_backward",
        "linear_ce_forward",
        "linear_ce_rows",
        "softmax_ce_backward",
        "softmax_ce_forward",
        "softmax_ce_rows",
    ],
    "crossentropy.demo": ["run_demo"],
    "crossentropy.cli": ["CLIError", "main"],
}


@pytest.mark.parametrize("module_name", sorted(PUBLIC))
def test_public_names_are_pinned_and_importable(module_name):
    module = importlib.import_module(module_name)
    assert sorted(module.__all__) == sorted(PUBLIC[module_name])
    for name in module.__all__:
        assert getattr(module, name) is not None
