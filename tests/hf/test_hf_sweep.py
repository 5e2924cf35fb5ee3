"""Every causal LM of the installed transformers: patched, its loss and gradients equal its own, or
the patch refuses it with UnsupportedModelError. Never a different loss.

Each model is built from a tiny config derived generically from its own (``_hf_tiny.py``). The
outcomes are pinned: a model that cannot be built or run from a tiny config is listed in
``CANNOT_RUN`` with the reason, a model the patch refuses in ``REFUSED`` with the operation the
error names. A model that changes category (a new transformers release, a change to the probe)
fails its test until the lists say so, so neither list grows silently. The lists live in
``_hf_outcomes.py``, which the documentation build reads too.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from _hf_outcomes import CANNOT_RUN, REFUSAL_REASONS, REFUSED  # noqa: E402
from _hf_tiny import FIRST_SPECIAL_ID, build, causal_lm_classes  # noqa: E402

from crossentropy import hf  # noqa: E402

CASES = sorted(set(causal_lm_classes()))


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    # Tiny matrices gain nothing from threads, and two test workers on two cores would fight.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _batch(model: Any) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, FIRST_SPECIAL_ID, (2, 8), generator=g)
    labels = ids.clone()
    labels[0, :3] = -100
    labels[1, 5] = -100
    batch: dict[str, Any] = {"input_ids": ids, "labels": labels}
    # Hybrid models build a cache even in training unless told not to.
    if "use_cache" in inspect.signature(type(model).forward).parameters:
        batch["use_cache"] = False
    return batch


def _loss_and_grads(model: Any, batch: dict[str, Any], upstream: Any) -> tuple[Any, dict[str, Any]]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # the same router noise, where a model has any
    loss = model(**batch).loss
    (loss * upstream).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def _check_refusal(model_type: str, class_name: str, exc: Exception) -> None:
    assert model_type in REFUSED, f"{class_name} is refused, and was not before: {exc}"
    assert class_name in str(exc) and REFUSED[model_type] in str(exc), str(exc)


@pytest.mark.parametrize(("model_type", "class_name"), CASES, ids=[f"{t}-{c}" for t, c in CASES])
def test_patched_loss_matches_or_is_refused(model_type: str, class_name: str) -> None:
    upstream = torch.tensor(-1.7)  # not 1: a gradient scaled by it must still match
    try:
        reference = build(model_type, class_name)
        batch = _batch(reference)
        # Copied before any forward: some models keep tensors of the last forward (RecurrentGemma).
        twin = copy.deepcopy(reference)
        try:
            model = hf.patch(twin, impl="torch", chunk_size=5)
        except hf.UnsupportedModelError as exc:
            _check_refusal(model_type, class_name, exc)
            return
        want, want_grads = _loss_and_grads(reference, batch, upstream)
    except Exception as exc:
        reason = CANNOT_RUN.get(model_type)
        assert reason is not None, (
            f"{class_name} does not build or run from a tiny config ({type(exc).__name__}: "
            f"{exc}); fix tests/hf/_hf_tiny.py or pin it in CANNOT_RUN with the reason"
        )
        assert reason in f"{type(exc).__name__}: {exc}", (reason, exc)
        pytest.skip(f"{class_name}: no tiny model ({reason})")
    assert model_type not in CANNOT_RUN, f"{class_name} runs now: take it out of CANNOT_RUN"

    try:
        got, got_grads = _loss_and_grads(model, batch, upstream)
    except hf.UnsupportedModelError as exc:
        _check_refusal(model_type, class_name, exc)
        return
    assert model_type not in REFUSED, f"{class_name} is fused now: take it out of REFUSED"

    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert got_grads.keys() == want_grads.keys()
    for key, value in want_grads.items():
        # fp32 sums of many terms: the rounding error scales with the gradient's largest entry
        # (RWKV's tied embedding has entries of several hundred)
        scale = max(1.0, float(value.abs().max()))
        torch.testing.assert_close(got_grads[key], value, atol=1e-5 * scale, rtol=1e-4, msg=key)


def test_every_refusal_has_a_reason_for_the_documentation() -> None:
    assert set(REFUSED.values()) <= set(REFUSAL_REASONS), set(REFUSED.values()) - set(
        REFUSAL_REASONS
    )


def test_pinned_models_exist() -> None:
    # A model removed from transformers leaves a stale pin behind: it must go from the lists.
    installed = {model_type for model_type, _ in CASES}
    assert set(CANNOT_RUN) <= installed, set(CANNOT_RUN) - installed
    assert set(REFUSED) <= installed, set(REFUSED) - installed
