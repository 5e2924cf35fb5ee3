"""contrastive_loss over 1-4 gloo CPU processes: against open_clip, a float64 reference, in memory.

Four worlds (1, 2, 3 and 4 processes: open_clip's losses use the default group, so each size is a
world of its own) run ``_clip_worker.py`` once per session. Checked here:

* open_clip: on every rank, our loss and the gradients of a, b, logit_scale and logit_bias equal
  those of ``ClipLoss(local_loss=True, gather_with_grad=True)`` (softmax) and ``SigLipLoss``
  (sigmoid, its bidirectional neighbour exchange: the 3-process world takes its odd remainder
  step) in the same process group, float64 and float32. open_clip is pinned in constraints.txt and
  installed with ``--no-deps``; its ``loss.py`` is loaded by file path (``_clip_worker``).
* the float64 materialised reference (``_clip_cases``) for every kind, direction, positives layout
  (diagonal, hard negatives, ids with several positives and ignored rows, exclude_self), reduction
  (``none`` with a random upstream gradient, ``mean``/``sum`` with a random scalar per rank, so each
  rank's gradient mixes every rank's loss with a different weight), uneven batch sizes and small
  tiles, on 2, 3 and 4 ranks; and float32 / bfloat16 cases.
* memory: the largest tensor allocated during forward and backward at 4 ranks is no larger than at
  2 (while open_clip's grows with the world: the meter can see growth).
* bad input on one rank raises ValueError/TypeError on every rank, and the group works afterwards.
* a 2-rank subgroup (global ranks 1 and 2) against the reference: the ring's P2P peers are group
  ranks, not global ranks.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from _clip_cases import reference, sizes
from _sharded_launch import shared_world

# (loss, gradients) absolute tolerances by dtype; bfloat16 gradients are rounded to 8 bits at the
# end, so theirs is relative to the largest entry
TOL = {"float64": (1e-12, 1e-12), "float32": (2e-6, 2e-6)}


@pytest.fixture(scope="module")
def worlds(tmp_path_factory: pytest.TempPathFactory) -> dict[int, list[dict[str, Any]]]:
    return {
        w: shared_world(tmp_path_factory, f"contrastive{w}", "_clip_worker.py", w, timeout=300.0)
        for w in (1, 2, 3, 4)
    }


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_equals_open_clip_on_every_rank(
    worlds: dict[int, list[dict[str, Any]]], world: int
) -> None:
    ranks = worlds[world]
    assert all(r["open_clip_loaded"] for r in ranks), "open_clip's loss.py did not load"
    for r, res in enumerate(ranks):
        for case in res["open_clip"]:
            tol = 1e-12 if case["dtype"] == "torch.float64" else 2e-6
            ours, theirs = case["ours"], case["open_clip"]
            for k in ("loss", "a", "b", "t", "beta"):
                if theirs[k] is None:
                    assert ours[k] is None, (k, case["kind"])
                    continue
                err = float((ours[k] - theirs[k]).abs().max())
                assert err <= tol * max(1.0, float(theirs[k].abs().max())), (
                    f"world {world} rank {r} {case['kind']} bias={case['bias']} {case['dtype']}: "
                    f"{k} differs from open_clip by {err}"
                )
            # the gradient is not trivially zero: the comparison had something to compare
            assert float(theirs["a"].abs().max()) > 1e-3


@pytest.mark.parametrize("world", [2, 3, 4])
def test_grid_matches_float64_reference(
    worlds: dict[int, list[dict[str, Any]]], world: int
) -> None:
    ranks = worlds[world]
    n_cases = len(ranks[0]["grid"])
    assert n_cases >= 48
    for ci in range(n_cases):
        case = ranks[0]["grid"][ci][0]
        ref = reference(case, world)
        for r, res in enumerate(ranks):
            got = res["grid"][ci][1]
            for k in ("loss", "a", "b", "t", "beta"):
                if ref[r][k] is None or (k == "b" and case.layout == "self"):
                    continue
                want = ref[r][k]
                assert got[k] is not None, (case, r, k)
                err = float((got[k].double() - want).abs().max())
                if case.dtype == "bfloat16":
                    tol = 1e-6 if k in ("loss", "t", "beta") else 2**-8 * float(want.abs().max())
                else:
                    tol = TOL[case.dtype][0 if k == "loss" else 1] * max(
                        1.0, float(want.abs().max())
                    )
                assert err <= tol + 1e-15, f"world {world} rank {r} {case}: {k} off by {err}"


def test_a_subgroup_whose_ranks_are_not_the_global_ranks(
    worlds: dict[int, list[dict[str, Any]]],
) -> None:
    # global ranks 1 and 2 of the 4-process world as group ranks 0 and 1
    members = [worlds[4][1], worlds[4][2]]
    assert len(members[0]["subgroup"]) >= 9
    for ci, (case, _) in enumerate(members[0]["subgroup"]):
        ref = reference(case, 2)
        for r, res in enumerate(members):
            got = res["subgroup"][ci][1]
            for k in ("loss", "a", "b", "t", "beta"):
                if ref[r][k] is None or (k == "b" and case.layout == "self"):
                    continue
                err = float((got[k] - ref[r][k]).abs().max())
                assert err <= 1e-12 * max(1.0, float(ref[r][k].abs().max())), (case, r, k, err)


def test_grid_covers_uneven_batches_and_hard_negatives(
    worlds: dict[int, list[dict[str, Any]]],
) -> None:
    # the reference comparison above covered ranks with different n and m, and m > n
    cases = [c for c, _ in worlds[3][0]["grid"]]
    assert any(len(set(sizes(c, 3)[0])) == 3 for c in cases)
    assert any(len(set(sizes(c, 3)[1])) > 1 and c.layout == "hardneg" for c in cases)
    assert all(
        got["loss"].shape == (sizes(c, 3)[0][0] + sizes(c, 3)[1][0],)
        for c, got in worlds[3][0]["grid"]
        if c.reduction == "none" and c.kind == "softmax" and c.symmetric
    )


def test_largest_tensor_does_not_grow_with_the_world(
    worlds: dict[int, list[dict[str, Any]]],
) -> None:
    two = max(r["memory"]["ours"] for r in worlds[2])
    four = max(r["memory"]["ours"] for r in worlds[4])
    assert four <= two
    sig_two = max(r["memory"]["ours_sigmoid"] for r in worlds[2])
    sig_four = max(r["memory"]["ours_sigmoid"] for r in worlds[4])
    assert sig_four <= sig_two
    # bounded by the inputs (96 x 32 fp32 features = 12,288 bytes) plus a few scalars: no
    # n x N_global logits, no gathered features
    assert four <= 96 * 32 * 4 + 64
    # the meter sees growth where there is some: open_clip's logits and gathered features
    oc_two = max(r["memory"]["open_clip"] for r in worlds[2])
    oc_four = max(r["memory"]["open_clip"] for r in worlds[4])
    assert oc_four >= 2 * oc_two


def test_bad_input_on_one_rank_raises_on_all(worlds: dict[int, list[dict[str, Any]]]) -> None:
    ranks = worlds[4]
    names = [c["name"] for c in ranks[0]["bad"]]
    assert len(names) >= 10
    for i, name in enumerate(names):
        for r, res in enumerate(ranks):
            rec = res["bad"][i]
            assert rec["raised"] in ("ValueError", "TypeError"), (name, r, rec)
            msg = rec["message"]
            assert msg.startswith("contrastive_loss: "), msg
            if r == rec["bad_rank"] and "disagree" not in name:
                # the bad rank's own message names what was wrong
                assert "rejected their input" not in msg, (name, msg)
            # the group still worked after the error: the same good loss everywhere
            assert len(set(rec["after"])) == 1, (name, rec["after"])
    by_name = {c["name"]: i for i, c in enumerate(ranks[0]["bad"])}
    bad = ranks[3]["bad"]
    assert "feature size d" in bad[by_name["d mismatch"]]["message"]
    assert "at least as many rows" in bad[by_name["n > m with diagonal positives"]]["message"]
    assert "a_ids was given without" in bad[by_name["ids on one side only"]]["message"]
    assert "logit_scale must be finite" in bad[by_name["non-finite scale"]]["message"]
    assert "a_ids must have shape (4,)" in bad[by_name["ids of the wrong shape"]]["message"]
    assert bad[by_name["float ids"]]["raised"] == "TypeError"
    disagree = ranks[0]["bad"][by_name["ranks disagree on the scale"]]["message"]
    assert "rank 3: 3.0" in disagree and "rank 0: 2.0" in disagree
    kinds = ranks[1]["bad"][by_name["ranks disagree on kind"]]["message"]
    assert "rank 3: sigmoid" in kinds
    others = ranks[0]["bad"][by_name["d mismatch"]]["message"]
    assert "rank(s) [3]" in others


def test_results_are_tensors_of_the_compute_dtype(worlds: dict[int, list[dict[str, Any]]]) -> None:
    for case, got in worlds[2][0]["grid"]:
        want = torch.float64 if case.dtype == "float64" else torch.float32
        assert got["loss"].dtype == want
        assert got["a"].dtype == getattr(torch, case.dtype)
