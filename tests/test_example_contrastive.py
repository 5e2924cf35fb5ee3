"""The two-tower contrastive example trains in 2 CPU processes and its distributed loss is CLIP's."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_two_towers_learn_to_retrieve_in_two_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    # imported by name, not by file path: the example starts its processes with
    # torch.multiprocessing.spawn, whose children import the function's module (they get sys.path)
    monkeypatch.syspath_prepend(str(EXAMPLES))
    module = importlib.import_module("contrastive_two_towers")
    result = module.main(["--steps", "40", "--every", "20", "--batch", "64", "--held-out", "200"])
    acc = result["accuracy"]
    assert result["world"] == 2 and len(acc) == 3
    # chance is 1/200; forty steps already retrieve many of the held-out pairs
    assert acc[0] < 0.05 and acc[-1] > acc[0] + 0.1
    # the ring's loss, averaged over the ranks, is CLIP's loss on the whole global batch
    assert result["loss_difference"] < 1e-5
