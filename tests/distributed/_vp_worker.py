"""One rank of the vocab-parallel tests: ``python _vp_worker.py RANK WORLD STORE OUT``.

Runs every case on this rank's shard, in the whole gloo world and again in a 2-rank subgroup, and
saves the results with ``torch.save`` for the parent test to check. Not a test module itself.
"""

from __future__ import annotations

import sys
import traceback
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from _vp_cases import Case, class_dim, full_inputs, good_cases, shard, shard_sizes

from crossentropy.torch import cross_entropy, linear_cross_entropy
from crossentropy.torch.parallel._data import global_valid_count


def run_case(case: Case, seed: int, group: Any) -> dict[str, Any]:
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    dtype = getattr(torch, case["dtype"])
    full = full_inputs(case, seed)
    sizes = shard_sizes(case["V"], world)
    off, size = sum(sizes[:rank]), sizes[rank]
    cdim = class_dim(case)

    def leaf(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(dtype).clone().requires_grad_(True)

    target = full["target"]
    if case["probs"]:
        target = leaf(shard(target, cdim, off, size))
    weight = shard(full["weight"], 0, off, size)
    weight = None if weight is None else weight.to(dtype)
    common = {
        "weight": weight,
        "reduction": case["reduction"],
        "ignore_index": case["ignore_index"],
        "label_smoothing": case["smoothing"],
        "z_loss": case["z_loss"],
        "softcap": case["softcap"],
        "return_aux": case["aux"],
        "process_group": group,
        "token_weight": None if full["token_weight"] is None else full["token_weight"].to(dtype),
    }
    grads: dict[str, torch.Tensor | None]
    if case["path"] == "ce":
        logits = leaf(shard(full["logits"], cdim, off, size))
        # Through the public API, which hands process_group calls to the vocab-parallel code.
        out = cross_entropy(logits, target, **common)
        tensors = {"input": logits}
    else:
        x = leaf(full["x"])
        w = leaf(shard(full["W"], 0, off, size))
        b = leaf(shard(full["b"], 0, off, size))
        out = linear_cross_entropy(x, w, target, linear_bias=b, chunk_size=case["chunk"], **common)
        tensors = {"input": x, "linear_weight": w, "linear_bias": b}
    if case["probs"]:
        tensors["target"] = target
    loss = out.loss if case["aux"] else out
    loss.backward(full["upstream"].to(loss.dtype))
    grads = {k: None if t is None else t.grad for k, t in tensors.items() if t is not None}
    res: dict[str, Any] = {"loss": loss.detach(), "grads": grads, "offset": off, "size": size}
    if case["aux"]:
        res["aux"] = {k: getattr(out, k).detach() for k in ("lse", "z_loss", "n_valid")}
    return res


def bad_cases(group: Any) -> dict[str, Any]:
    """Each bad call must raise on every rank, and the group must stay usable afterwards."""
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    g = torch.Generator().manual_seed(7)
    v, n, d = 9, 4, 3
    sizes = shard_sizes(v, world)
    off, size = sum(sizes[:rank]), sizes[rank]
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    W = torch.randn(v, d, generator=g, dtype=torch.float64)[off : off + size]
    full_logits = torch.randn(n, v, generator=g, dtype=torch.float64)
    logits = full_logits[:, off : off + size]
    y = torch.tensor([0, 3, 8, -100])
    last = world - 1
    calls: dict[str, Any] = {
        # One rank's linear_weight has a different D than its input: a local error there.
        "D-local-mismatch": lambda: linear_cross_entropy(
            x, torch.randn(size, d + (rank == last), dtype=torch.float64), y, process_group=group
        ),
        # One rank is consistent with itself but uses another D than the others.
        "D-differs-across-ranks": lambda: linear_cross_entropy(
            torch.randn(n, d + (rank == last), dtype=torch.float64),
            torch.randn(size, d + (rank == last), dtype=torch.float64),
            y,
            process_group=group,
        ),
        "target-outside-vocab": lambda: cross_entropy(
            logits, torch.tensor([0, v, 1, 2]), process_group=group
        ),
        "negative-target": lambda: linear_cross_entropy(
            x, W, torch.tensor([0, -3, 1, 2]), process_group=group
        ),
        "targets-differ": lambda: cross_entropy(
            logits, torch.tensor([0, 1, 2, rank]), process_group=group
        ),
        "smoothing-differs": lambda: cross_entropy(
            logits, y, label_smoothing=0.1 * (rank == last), process_group=group
        ),
        "reduction-bad-on-one-rank": lambda: cross_entropy(
            logits, y, reduction="mean" if rank != last else "avg", process_group=group
        ),
        "global-weight-vector": lambda: cross_entropy(
            logits, y, weight=torch.ones(v, dtype=torch.float64), process_group=group
        ),
        "dtype-differs": lambda: cross_entropy(
            logits.float() if rank == last else logits, y, process_group=group
        ),
        "rows-differ": lambda: cross_entropy(
            logits[: n - (rank == last)], y[: n - (rank == last)], process_group=group
        ),
        "different-functions": lambda: (
            cross_entropy(logits, y, process_group=group)
            if rank != last
            else linear_cross_entropy(x, W, y, process_group=group)
        ),
        # probability rows that sum to 2 over the whole vocabulary (each shard alone looks fine)
        "probabilities-not-normalised": lambda: linear_cross_entropy(
            x,
            W,
            2 * full_logits.softmax(1)[:, off : off + size],
            process_group=group,
        ),
        "float-class-ids": lambda: cross_entropy(logits, y.double(), process_group=group),
        # global_valid_count with float targets on one rank only: the others must not hang
        "count-float-target-one-rank": lambda: global_valid_count(
            y.double() if rank == last else y, process_group=group
        ),
        "count-bad-weight-one-rank": lambda: global_valid_count(
            y, weight=torch.ones(v) if rank != last else torch.ones(2, 2), process_group=group
        ),
    }
    out: dict[str, Any] = {}
    for name, call in calls.items():
        try:
            call()
            out[name] = (None, "no error")
        except Exception as exc:
            out[name] = (type(exc).__name__, str(exc))
    # The group must still be in step: a good call after all the bad ones.
    loss = cross_entropy(logits, y, process_group=group)
    out["after"] = (float(loss), float(F.cross_entropy(full_logits, y)))
    return out


def data_parallel(group: Any) -> dict[str, Any]:
    """Uneven padding: sum-loss / global count * world, averaged like DDP, == one big batch."""
    from _vp_cases import dp_batches, dp_model

    rank, world = dist.get_rank(group), dist.get_world_size(group)
    model = dp_model()
    x, y = dp_batches(world)[rank]

    def ddp_grads(loss: torch.Tensor) -> list[torch.Tensor]:
        # What DistributedDataParallel does to gradients: all-reduce, then divide by the world.
        model.zero_grad()
        loss.backward()
        grads = [p.grad.detach().clone() for p in model.parameters()]
        for g in grads:
            dist.all_reduce(g, group=group)
            g /= world
        return grads

    count = global_valid_count(y, process_group=group)
    grads = ddp_grads(F.cross_entropy(model(x), y, reduction="sum") / count * world)
    # The naive recipe (each rank's own mean) for contrast: DDP averages unequal means.
    naive = ddp_grads(F.cross_entropy(model(x), y))
    return {"count": int(count), "grads": grads, "naive": naive}


def logits_blocks(group: Any) -> dict[str, Any]:
    """Shapes of every logits block the linear path builds on this rank (forward and backward)."""
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    n, d, v = 300, 8, 1001
    sizes = shard_sizes(v, world)
    off, size = sum(sizes[:rank]), sizes[rank]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g).requires_grad_()
    w = torch.randn(v, d, generator=g)[off : off + size].requires_grad_()
    y = torch.randint(0, v, (n,), generator=g)
    shapes: list[tuple[int, ...]] = []
    from crossentropy.torch.engine._chunked import Head

    real_logits = Head.logits

    def recording_logits(self: Head, i0: int, i1: int) -> torch.Tensor:
        out = real_logits(self, i0, i1)
        shapes.append(tuple(out.shape))
        return out

    Head.logits = recording_logits  # type: ignore[method-assign]
    try:
        # reduction="none": the recomputing path, so the backward builds its blocks too
        loss = linear_cross_entropy(x, w, y, chunk_size=n, reduction="none", process_group=group)
        loss.backward(torch.ones_like(loss))
    finally:
        Head.logits = real_logits  # type: ignore[method-assign]
    return {"shapes": shapes, "shard": size, "n": n, "v": v}


def double_backward(group: Any) -> dict[str, str]:
    """create_graph=True through each vocab-parallel path: the error each raises (none expected to
    pass silently with dropped second-order terms)."""
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    sizes = shard_sizes(50, world)
    off, size = sum(sizes[:rank]), sizes[rank]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 4, dtype=torch.float64, generator=g).requires_grad_()
    w = torch.randn(50, 4, dtype=torch.float64, generator=g)[off : off + size].requires_grad_()
    y = torch.randint(0, 50, (6,), generator=g)
    out: dict[str, str] = {}
    runs = {
        "logits": lambda: cross_entropy(x @ w.t(), y, process_group=group),
        "linear": lambda: linear_cross_entropy(x, w, y, process_group=group),
    }
    for name, run in runs.items():
        try:
            torch.autograd.grad(run(), (x, w), create_graph=True)
            out[name] = "no error"
        except Exception as exc:
            out[name] = f"{type(exc).__name__}: {exc}"
    return out


def run_all(group: Any) -> dict[str, Any]:
    results: dict[str, Any] = {"cases": {}, "errors": {}}
    for seed, case in enumerate(good_cases()):
        try:
            results["cases"][case["id"]] = run_case(case, seed, group)
        except Exception:
            results["errors"][case["id"]] = traceback.format_exc()
    results["bad"] = bad_cases(group)
    results["dp"] = data_parallel(group)
    results["blocks"] = logits_blocks(group)
    results["double"] = double_backward(group)
    return results


def main() -> None:
    rank, world, store_path, out_path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    torch.set_num_threads(1)
    store = dist.FileStore(store_path, world)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
    # One set of processes serves two group sizes: the whole world, and a subgroup of the last
    # two ranks (whose group ranks differ from their global ranks, as in real TP x DP layouts).
    sub_ranks = list(range(world))[-2:]
    sub = dist.new_group(sub_ranks)
    results = {world: run_all(dist.group.WORLD)}
    if rank in sub_ranks and world > 2:
        results[2] = run_all(sub)
    dist.barrier()
    torch.save(results, out_path)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
