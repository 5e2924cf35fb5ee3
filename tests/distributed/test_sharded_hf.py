"""``crossentropy.hf.patch`` under FSDP2 on two gloo CPU processes, and at a sequence-shard boundary.

The two processes (``_sharded_hf_worker.py``) train a tiny Llama under ``fully_shard``, patched
and not, directly and through the ``transformers`` Trainer with accelerate's FSDP2 plugin; this
module compares what they saved.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from _sharded_launch import shared_world

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

WORLD = 2
TIMEOUT = 150.0
LAYOUTS = ("untied-root", "untied-head-unit", "tied-root")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return shared_world(tmp_path_factory, "sharded-hf", "_sharded_hf_worker.py", WORLD, TIMEOUT)


def part(ranks: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    got = [r[name] for r in ranks]
    for r, res in enumerate(got):
        assert "__error__" not in res, f"rank {r}:\n{res['__error__']}"
    return got


def close(what: str, got: torch.Tensor, want: torch.Tensor, tol: float) -> None:
    torch.testing.assert_close(got, want, atol=tol, rtol=tol, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_patched_model_under_fsdp2_matches_its_own_loss(ranks, layout) -> None:
    """Layers and root under fully_shard, tied or not; with the LM head a unit of its own its
    weight is a sharded DTensor at the loss (gathered once; gradient back as the DTensor)."""
    for r, res in enumerate(part(ranks, "models")):
        hf_, ours = res[f"{layout}-float32-hf"], res[f"{layout}-float32-patched"]
        close(f"{layout} rank {r} fp32 loss", ours["loss"], hf_["loss"], 1e-5)
        assert set(ours["grads"]) == set(hf_["grads"])
        for k in hf_["grads"]:
            close(f"{layout} rank {r} fp32 d {k}", ours["grads"][k], hf_["grads"][k], 1e-5)
        ref, ours = res[f"{layout}-float64-by-hand"], res[f"{layout}-float64-patched"]
        close(f"{layout} rank {r} float64 loss", ours["loss"], ref["loss"], 1e-10)
        for k in ref["grads"]:
            close(f"{layout} rank {r} float64 d {k}", ours["grads"][k], ref["grads"][k], 1e-10)
        assert ours["head_unit"] == (layout == "untied-head-unit")


@pytest.mark.parametrize("tied", [0, 1])
def test_trainer_with_fsdp2_patched_gives_the_same_losses_step_by_step(ranks, tied) -> None:
    for r, res in enumerate(part(ranks, "trainer")):
        plain, ours = res[f"tied{tied}-patched0"], res[f"tied{tied}-patched1"]
        assert plain["fsdp2"] and ours["fsdp2"] and ours["patched"] and not plain["patched"]
        assert len(plain["losses"]) == len(ours["losses"]) == 3
        close(f"rank {r} losses", torch.tensor(ours["losses"]), torch.tensor(plain["losses"]), 1e-5)
        for k, p in plain["params"].items():
            close(f"rank {r} {k} after 3 steps", ours["params"][k], p, 1e-5)


def test_patch_at_a_sequence_shard_boundary_behaves_as_transformers() -> None:
    """On a slice of a sequence (sequence or context parallelism), ``labels=`` are shifted inside
    the slice, so its last position has no target, exactly as transformers' own loss does; the
    labels shifted on the whole sequence and sliced go in ``shift_labels=``."""
    import transformers

    from crossentropy import hf

    cfg = transformers.LlamaConfig(
        vocab_size=37,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).double().train()
    ids = torch.randint(0, 37, (1, 12))
    whole_shift = torch.nn.functional.pad(ids, (0, 1), value=-100)[:, 1:]
    piece, shift = ids[:, :6], whole_shift[:, :6]  # the first of two sequence shards
    by_labels = model(input_ids=piece, labels=piece).loss
    by_shift = model(input_ids=piece, labels=piece, shift_labels=shift).loss
    with hf.patched(model):
        ours_labels = model(input_ids=piece, labels=piece).loss
        ours_shift = model(input_ids=piece, labels=piece, shift_labels=shift).loss
    # transformers computes its loss in fp32, so fp32 is the precision to compare in
    close("labels=", ours_labels.float(), by_labels, 1e-6)
    close("shift_labels=", ours_shift.float(), by_shift, 1e-6)
    # the slice's last position counts only with shift_labels: a real difference
    assert abs(float(by_labels) - float(by_shift)) > 1e-4
    logits = model(input_ids=piece).logits[0].float()
    want = torch.nn.functional.cross_entropy(logits, shift[0])
    close("shift_labels= is the whole-sequence target", ours_shift.float(), want, 1e-5)
