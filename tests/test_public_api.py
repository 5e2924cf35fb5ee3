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


def test_the_fused_functions_share_one_naming_scheme() -> None:
    # torch's names where torch has one (F.linear_cross_entropy): input, linear_weight,
    # linear_bias, and weight for class weights only; distillation prefixes them by side.
    import inspect

    import crossentropy.torch as cet

    def names(fn: object) -> list[str]:
        return list(inspect.signature(fn).parameters)  # type: ignore[arg-type]

    for fn in (cet.linear_cross_entropy, cet.linear_logprobs):
        p = names(fn)
        assert p[:3] == ["input", "linear_weight", "target"], (fn, p)
        assert "linear_bias" in p and "bias" not in p and "hidden" not in p
    assert "weight" in names(cet.linear_cross_entropy)  # class weights
    assert "weight" not in names(cet.linear_logprobs)
    d = names(cet.linear_distillation_loss)
    assert d[:4] == [
        "student_input",
        "student_linear_weight",
        "teacher_input",
        "teacher_linear_weight",
    ]
    assert {"student_linear_bias", "teacher_linear_bias"} <= set(d)
    assert not {"student_hidden", "student_weight", "student_bias", "teacher_bias"} & set(d)
    module = names(cet.LinearCrossEntropyLoss.forward)
    assert module[1:4] == ["input", "linear_weight", "target"]
