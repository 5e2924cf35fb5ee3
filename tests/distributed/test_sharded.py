"""Sharded weights and tokens on gloo CPU processes: FSDP2, tensor parallel, FSDP2 x TP, sequence
parallel and DDP, each against one process on the whole batch (float64 references).

Four long-lived processes (``_sharded_worker.py``) run every part on 1-D meshes of 2 and 3 ranks
and on a 2 x 2 (dp, tp) mesh; this module compares what they saved. Their collectives time out
(``SHARDED_TIMEOUT``, 40 s) and the processes are killed after ``WORLD_TIMEOUT``, so a hang is a
failure, never a stuck run.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from _sharded_cases import (
    DTYPES,
    IGNORE,
    OPTIONS,
    TOL,
    D,
    DPHead,
    V,
    dp_batches,
    inputs,
    lm_batches,
    lm_reference,
    reference_rows,
    sp_sequence,
)
from _sharded_launch import shared_world

WORLD = 4
# the four processes take about 30 s on a busy 2-core machine; a collective that waits longer
# than SHARDED_TIMEOUT (30 s) raises in the worker, which then stops
WORLD_TIMEOUT = 150.0


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return shared_world(
        tmp_path_factory, "sharded-weights", "_sharded_worker.py", WORLD, WORLD_TIMEOUT
    )


def part(ranks: list[dict[str, Any]], name: str, size: int) -> list[dict[str, Any]]:
    """The results of one part on a 1-D mesh of ``size`` ranks (the last ``size`` processes)."""
    got = [r[f"{name}/{size}"] for r in ranks[-size:]]
    for r, res in enumerate(got):
        assert "__error__" not in res, f"rank {r} of {size}:\n{res['__error__']}"
    return got


def close(what: str, got: Any, want: torch.Tensor, dtype: str) -> None:
    assert got is not None, what
    tol = TOL[dtype]
    torch.testing.assert_close(
        got.double(), want.double(), atol=tol, rtol=tol, msg=lambda m: f"{what}: {m}"
    )


def rounded(t: torch.Tensor, dtype: str) -> torch.Tensor:
    return t.to(getattr(torch, dtype)).double().clone()


# ------------------------------------------------------------------------------------------------
# functional calls: a DTensor weight split on the vocabulary, same or different tokens per rank


def functional_reference(o_index: int, d_index: int, world: int, tokens: str) -> dict[str, Any]:
    """Each rank's loss and input gradient; the weight's gradient is the ranks' mean (FSDP's
    reduction; with the same tokens everywhere that is the one gradient of tensor parallelism)."""
    opt = list(OPTIONS.values())[o_index]
    dtype = DTYPES[d_index]
    data = inputs(10 * o_index + d_index, world)
    W = rounded(data["W"], dtype).requires_grad_()
    b = rounded(data["b"], dtype).requires_grad_() if opt.get("bias") else None
    cw = rounded(data["cweight"], dtype) if opt.get("cweight") else None
    per_rank = []
    for r in range(world):
        src = 0 if tokens == "same" else r
        x = rounded(data["x"][src], dtype).requires_grad_()
        target = rounded(data["probs"][src], dtype) if opt.get("probs") else data["y"][src]
        loss = reference_rows(x, W, target, opt, b, cw)
        up = data["up"][src] if loss.dim() else data["up"][src][0]
        (loss * up).sum().backward()
        per_rank.append({"loss": loss.detach(), "x": x.grad})
    return {
        "ranks": per_rank,
        "W": W.grad / world,
        "b": b.grad / world if b is not None else None,
    }


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("tokens", ["same", "different"])
def test_dtensor_weight_split_on_vocabulary_matches_one_process(ranks, world, tokens) -> None:
    """Every option, fp32 and float64, uneven shards: same tokens (TP) run vocab parallel, different
    tokens (FSDP2) gather the weight; loss, input, weight and bias gradients all match."""
    got = part(ranks, "functional", world)
    for d_index, dtype in enumerate(DTYPES):
        for o_index, name in enumerate(OPTIONS):
            key = f"{name}-{dtype}-{tokens}"
            ref = functional_reference(o_index, d_index, world, tokens)
            for r, res in enumerate(got):
                case = res[key]
                close(f"{key} rank {r} loss", case["loss"], ref["ranks"][r]["loss"], dtype)
                close(f"{key} rank {r} d input", case["x"], ref["ranks"][r]["x"], dtype)
                close(f"{key} rank {r} d weight", case["W"], ref["W"], dtype)
                assert case["spec"] == ("DTensor", ("Shard(dim=0)",)), case["spec"]
                if ref["b"] is not None:
                    close(f"{key} rank {r} d bias", case["b"], ref["b"], dtype)
                    assert case["bspec"] == ("DTensor", ("Shard(dim=0)",))


@pytest.mark.parametrize("world", [2, 3])
def test_dtensor_hidden_and_replicated_weight(ranks, world) -> None:
    got = part(ranks, "functional", world)
    data = inputs(3, world)
    x, W = data["x"][0].clone().requires_grad_(), data["W"].clone().requires_grad_()
    loss = F.cross_entropy(x @ W.T, data["y"][0], ignore_index=IGNORE)
    loss.backward()
    for res in got:
        case = res["dtensor-hidden"]
        close("dtensor hidden loss", case["loss"], loss.detach(), "float64")
        close("dtensor hidden d input", case["x"], x.grad, "float64")
        close("dtensor hidden d weight", case["W"], W.grad, "float64")
        assert case["spec"] == ("DTensor", ("Replicate()",))
    # Replicate(): each rank's own loss and gradient, on the ordinary path
    for r, res in enumerate(got):
        x, W = data["x"][r].clone().requires_grad_(), data["W"].clone().requires_grad_()
        loss = F.cross_entropy(x @ W.T, data["y"][r], ignore_index=IGNORE, reduction="sum")
        loss.backward()
        case = res["replicate"]
        close("replicate loss", case["loss"], loss.detach(), "float64")
        close("replicate d weight", case["W"], W.grad, "float64")
        assert case["spec"] == ("DTensor", ("Replicate()",))


def logits_reference(dtype: str, place: str, reduction: str, world: int) -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(17)
    logits = 2 * torch.randn(9, V, 2, generator=g, dtype=torch.float64)
    y = torch.randint(0, V, (9, 2), generator=g)
    y[0, 0] = IGNORE
    up = torch.randn(9, 2, generator=g, dtype=torch.float64)
    z = rounded(logits, dtype).requires_grad_()
    kw = {"label_smoothing": 0.1} if place == "classes" else {}
    chunks = [slice(0, 9)] * world if place == "classes" else []
    if place == "rows":  # DTensor Shard(0) splits as torch.chunk does
        start = 0
        for c in torch.arange(9).chunk(world):
            chunks.append(slice(start, start + len(c)))
            start += len(c)
    out = []
    for rows in chunks:
        zr, yr, ur = z[rows], y[rows], up[rows]
        ce = F.cross_entropy(zr, yr, ignore_index=IGNORE, reduction=reduction, **kw)
        if place == "classes":  # z_loss=1e-2 on the counted positions
            lse = torch.logsumexp(zr, 1)
            rows_z = 1e-2 * torch.where(yr != IGNORE, lse, 0.0) ** 2
            ce = ce + (rows_z if reduction == "none" else rows_z.sum() / (yr != IGNORE).sum())
        u = ur if reduction == "none" else ur[0, 0]
        grad = torch.autograd.grad((ce * u).sum(), z)[0]
        out.append({"loss": ce.detach(), "grad": grad})
    if place == "rows":  # the whole gradient is every rank's rows
        whole = sum(o["grad"] for o in out)
        for o in out:
            o["grad"] = whole
    return out


@pytest.mark.parametrize("world", [2, 3])
def test_cross_entropy_on_dtensor_logits(ranks, world) -> None:
    got = part(ranks, "functional", world)
    for dtype in DTYPES:
        for place in ("classes", "rows"):
            for reduction in ("mean", "none"):
                key = f"ce-{place}-{reduction}-{dtype}"
                ref = logits_reference(dtype, place, reduction, world)
                for r, res in enumerate(got):
                    close(f"{key} rank {r} loss", res[key]["loss"], ref[r]["loss"], dtype)
                    close(f"{key} rank {r} d logits", res[key]["grad"], ref[r]["grad"], dtype)
                    want = "Shard(dim=1)" if place == "classes" else "Shard(dim=0)"
                    assert res[key]["spec"] == ("DTensor", (want,))


# ------------------------------------------------------------------------------------------------
# FSDP2, TP, FSDP2 x TP with real models


def check_lm(
    key: str, ranks_res: list[dict[str, Any]], ref: dict[str, Any], dtype: str, summed: bool
) -> None:
    loss = sum(r["loss"] for r in ranks_res) if summed else None
    for r, res in enumerate(ranks_res):
        close(f"{key} loss", loss if summed else res["loss"], ref["loss"], dtype)
        assert set(res["grads"]) == set(ref["grads"]), (key, sorted(res["grads"]))
        for name, want in ref["grads"].items():
            close(f"{key} rank {r} d {name}", res["grads"][name], want, dtype)


FSDP_VARIANTS = {
    "inside": (False, False),
    "inside-tied": (False, True),
    "outside": (True, False),
    "outside-tied": (False, True),
    "module": (False, False),
}


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("variant", list(FSDP_VARIANTS))
def test_fsdp2_matches_one_process_on_the_whole_batch(ranks, world, variant) -> None:
    """fully_shard: the loss inside the forward (plain weight), outside it (the sharded DTensor
    weight, gathered once), tied embeddings, the nn.Module; gradients come back as DTensors."""
    got = part(ranks, "fsdp2", world)
    bias, tied = FSDP_VARIANTS[variant]
    batches = lm_batches(11, world)
    for dtype in DTYPES:
        key = f"{variant}-{dtype}"
        ref = lm_reference(dtype, batches, bias=bias, tied=tied)
        check_lm(key, [g[key] for g in got], ref, dtype, summed=True)
        for g in got:
            assert g[key]["spec"] == ("DTensor", ("Shard(dim=0)",))


@pytest.mark.parametrize("world", [2, 3])
def test_tensor_parallel_head_takes_vocab_parallel_path(ranks, world) -> None:
    """ColwiseParallel on the head: no process_group=, same loss and gradients, and each rank's
    logits blocks are one shard wide (memory 1 / TP)."""
    got = part(ranks, "tp", world)
    batch = lm_batches(12, 1)
    for dtype in DTYPES:
        for bias in (0, 1):
            key = f"lce-bias{bias}-{dtype}"
            ref = lm_reference(dtype, batch, bias=bool(bias), label_smoothing=0.1)
            check_lm(key, [g[key] for g in got], ref, dtype, summed=False)
            for g in got:
                case = g[key]
                assert case["spec"] == ("DTensor", ("Shard(dim=0)",))
                assert case["blocks"], "no logits block was built"
                assert all(s[1] == case["local_vocab"] for s in case["blocks"]), case["blocks"]
                assert case["local_vocab"] <= -(-V // world)
        key = f"ce-logits-{dtype}"
        ref = lm_reference(dtype, batch)
        check_lm(key, [g[key] for g in got], ref, dtype, summed=False)
        assert got[0][key]["spec"] == ("DTensor", ("Shard(dim=2)",))


def test_fsdp2_x_tp_on_a_2x2_mesh(ranks) -> None:
    """dp x tp = 2 x 2 (four processes): inside the forward the weight is TP's 1-D DTensor (vocab
    parallel over tp); outside it the FSDP-sharded 2-D DTensor (gathered over dp, vocab parallel
    over tp)."""
    got = [r["fsdp_tp"] for r in ranks]
    for r, res in enumerate(got):
        assert "__error__" not in res, f"rank {r}:\n{res['__error__']}"
    ref = {}
    for dtype in DTYPES:
        ref = lm_reference(dtype, lm_batches(13, 2), bias=True)
        for where in ("inside", "outside"):
            key = f"{where}-{dtype}"
            # ranks (dp, tp) = (0, 0), (0, 1), (1, 0), (1, 1): one loss per dp position
            loss = got[0][key]["loss"] + got[2][key]["loss"]
            close(f"{key} loss", loss, ref["loss"], dtype)
            for r, res in enumerate(got):
                close(
                    f"{key} rank {r} loss per tp",
                    res[key]["loss"],
                    got[r - r % 2][key]["loss"],
                    dtype,
                )
                for name, want in ref["grads"].items():
                    close(f"{key} rank {r} d {name}", res[key]["grads"][name], want, dtype)
            both = ("_StridedShard(dim=0, sf=2)", "Shard(dim=0)")  # FSDP2 over TP's split
            if where == "outside":
                assert got[0][key]["wspec"][1] == both
            assert all(res[key]["spec"] == ("DTensor", both) for res in got)


# ------------------------------------------------------------------------------------------------
# sequence parallel, DDP


@pytest.mark.parametrize("world", [2, 3])
def test_sequence_parallel_global_count_gives_the_whole_sequence(ranks, world) -> None:
    """Labels shifted on the whole sequence, then sliced; sum / global_valid_count: the ranks'
    losses add up to the whole sequence's mean and the gradients to its gradients."""
    got = part(ranks, "sp", world)
    seq = sp_sequence()
    for dtype in DTYPES:
        h = rounded(seq["h"], dtype).requires_grad_()
        W = rounded(seq["W"], dtype).requires_grad_()
        y = F.pad(seq["labels"], (0, 1), value=IGNORE)[1:]
        loss = F.cross_entropy(h @ W.T, y, ignore_index=IGNORE)
        loss.backward()
        for recipe in ("global-shift", "dtensor-weight"):
            key = f"{recipe}-{dtype}"
            for r, res in enumerate(got):
                case = res[key]
                close(f"{key} rank {r} loss", case["loss"], loss.detach(), dtype)
                close(f"{key} rank {r} d weight", case["W"], W.grad, dtype)
                start, stop = case["span"]
                close(f"{key} rank {r} d hidden", case["h"], h.grad[start:stop], dtype)
        # shifting inside each slice drops the first label of every later slice: a real difference
        local = got[0][f"local-shift-{dtype}"]["loss"]
        assert abs(float(local) - float(loss)) > 1e-3


@pytest.mark.parametrize("world", [2, 3])
def test_ddp_gradient_accumulation_with_uneven_padding(ranks, world) -> None:
    got = part(ranks, "ddp", world)
    micro = dp_batches(world)
    model = DPHead()
    xs = torch.cat([x for m in micro for x, _ in m])
    ys = torch.cat([y for m in micro for _, y in m])
    (model(xs, ys) / (ys != IGNORE).sum()).backward()
    want = {k: p.grad for k, p in model.named_parameters()}
    for res in got:
        assert res["global-count"]["n"] == int((ys != IGNORE).sum())
        for k, w in want.items():
            close(f"ddp d {k}", res["global-count"]["grads"][k], w, "float64")
    # the per-rank mean is measurably wrong with this padding, so the test has teeth
    naive = got[0]["local-mean"]["grads"]
    assert max(float((naive[k] - w).abs().max()) for k, w in want.items()) > 1e-3


# ------------------------------------------------------------------------------------------------
# gathering, bad input


@pytest.mark.parametrize("world", [2, 3])
def test_weight_is_gathered_at_most_once_per_forward(ranks, world) -> None:
    """chunk_size=1 makes one block per row; the weight's rows are all-gathered once in all (and
    not at all when the ranks hold the same tokens: vocab parallel instead). Even split too."""
    got = part(ranks, "gathers", world)
    data = inputs(21, world, rows=9)
    for vocab in (11, 12):
        W0 = torch.randn(
            vocab, D, generator=torch.Generator().manual_seed(vocab), dtype=torch.float64
        )
        W = W0.clone().requires_grad_()
        refs = []
        for r in range(world):
            x = data["x"][r].clone().requires_grad_()
            loss = F.cross_entropy(x @ W.T, data["y"][r].clamp(max=vocab - 1), ignore_index=IGNORE)
            loss.backward()
            refs.append((loss.detach(), x.grad))
        for r, res in enumerate(got):
            case = res[f"different-{vocab}"]
            assert case["rows"] >= 9
            assert case["weight_gathers"] == 1, case["all"]
            assert res[f"same-{vocab}"]["weight_gathers"] == 0, res[f"same-{vocab}"]["all"]
            close(f"V={vocab} rank {r} loss", case["loss"], refs[r][0], "float64")
            close(f"V={vocab} rank {r} d input", case["x"], refs[r][1], "float64")
            close(f"V={vocab} rank {r} d weight", case["W"], W.grad / world, "float64")


# name -> (error type on every rank, words in the message of the rank at fault, words elsewhere)
BAD = {
    "target-outside-vocab-one-rank": ("ValueError", "class", "rejected their input"),
    "reduction-bad-one-rank": ("ValueError", "reduction", "rejected their input"),
    "hidden-D-one-rank": ("ValueError", "", "rejected their input"),
    "hidden-not-tensor-one-rank": ("TypeError", "must be a torch.Tensor", "rejected their input"),
    "placement-shard-features": ("ValueError", "Shard(dim=1)", "Shard(dim=1)"),
    "process-group-and-dtensor": ("ValueError", "process_group", "process_group"),
    "plain-bias-with-split-weight": ("ValueError", "linear_bias", "linear_bias"),
    "same-tokens-target-outside-one-rank": ("ValueError", "class", "rejected their input"),
}


@pytest.mark.parametrize("world", [2, 3])
def test_bad_input_on_one_rank_raises_on_every_rank_quickly(ranks, world) -> None:
    got = part(ranks, "bad", world)
    last = world - 1
    for name, (kind, at_fault, elsewhere) in BAD.items():
        for r, res in enumerate(got):
            err, msg, seconds = res[name]
            assert err == kind, (name, r, err, msg)
            assert (at_fault if r == last else elsewhere) in msg, (name, r, msg)
            assert seconds < 20, (name, r, seconds)
    data = inputs(31, world)
    for r, res in enumerate(got):
        x, y = data["x"][r], data["y"][r]
        want = F.cross_entropy(x @ data["W"].T, y, ignore_index=IGNORE)
        assert abs(res["after-different"] - float(want)) < 1e-12
        x, y = data["x"][0], data["y"][0]
        want = F.cross_entropy(x @ data["W"].T, y, ignore_index=IGNORE)
        assert abs(res["after-same"] - float(want)) < 1e-12


@pytest.mark.parametrize("world", [2, 3])
def test_helper_reused_by_logprobs_distillation_and_the_module(ranks, world) -> None:
    """linear_logprobs and linear_distillation_loss with DTensor weights (through their hooks into
    _sharded), and CrossEntropyLoss on DTensor logits."""
    for r, res in enumerate(part(ranks, "reuse", world)):
        for key, case in res.items():
            assert len(case["got"]) == len(case["want"]), key
            for i, (a, b) in enumerate(zip(case["got"], case["want"])):
                close(f"{key} rank {r} output {i}", a, b, "float64")
