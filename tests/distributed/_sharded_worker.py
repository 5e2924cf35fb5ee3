"""One rank of the sharded-weight tests: ``python _sharded_worker.py RANK WORLD STORE OUT [PARTS]``.

Four gloo processes serve every mesh: 1-D meshes of 2 ranks (global ranks 2, 3) and 3 ranks
(1, 2, 3), so that group ranks differ from global ranks, and a 2 x 2 (dp, tp) mesh of all four.
Each part runs many cases in these long-lived processes and saves plain results
(``torch.save``) for the parent test to compare with one process on the whole batch. A collective
that waits longer than the group's timeout raises instead of hanging. Not a test module itself.
"""

from __future__ import annotations

import datetime
import os
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from _sharded_cases import (
    DTYPES,
    IGNORE,
    OPTIONS,
    D,
    DPHead,
    V,
    call_kwargs,
    dp_batches,
    inputs,
    lm_batches,
    sp_sequence,
    split_sizes,
    tiny_lm,
)
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor

from crossentropy.torch import (
    LinearCrossEntropyLoss,
    cross_entropy,
    global_valid_count,
    linear_cross_entropy,
)


def full(t: Any) -> Any:
    """A gradient as a whole plain tensor (a collective for a DTensor: every rank calls it)."""
    if isinstance(t, DTensor):
        return t.full_tensor().detach()
    return None if t is None else t.detach()


def spec(t: Any) -> Any:
    return (
        (type(t).__name__, tuple(repr(p) for p in t.placements))
        if isinstance(t, DTensor)
        else type(t).__name__
    )


# ------------------------------------------------------------------------------------------------
# functional calls with DTensor weights (distribute_tensor): TP (same tokens) and FSDP-like
# (different tokens), every option


def functional(mesh: DeviceMesh) -> dict[str, Any]:
    rank, world = mesh.get_local_rank(), mesh.size()
    out: dict[str, Any] = {}
    for d_index, dtype in enumerate(DTYPES):
        dt = getattr(torch, dtype)
        for o_index, (name, opt) in enumerate(OPTIONS.items()):
            for tokens in ("same", "different"):
                seed = 10 * o_index + d_index
                data = inputs(seed, world)
                r = 0 if tokens == "same" else rank
                x = data["x"][r].to(dt).requires_grad_()
                target = data["probs"][r].to(dt) if opt.get("probs") else data["y"][r]
                W = distribute_tensor(data["W"].to(dt), mesh, [Shard(0)]).requires_grad_()
                b = None
                if opt.get("bias"):
                    b = distribute_tensor(data["b"].to(dt), mesh, [Shard(0)]).requires_grad_()
                cw = data["cweight"].to(dt) if opt.get("cweight") else None
                loss = linear_cross_entropy(
                    x, W, target, linear_bias=b, weight=cw, **call_kwargs(opt)
                )
                up = data["up"][r] if loss.dim() else data["up"][r][0]
                loss.backward(up.to(loss.dtype))
                out[f"{name}-{dtype}-{tokens}"] = {
                    "loss": loss.detach(),
                    "x": x.grad.detach(),
                    "W": full(W.grad),
                    "b": full(b.grad) if b is not None else None,
                    "spec": spec(W.grad),
                    "bspec": spec(b.grad) if b is not None else None,
                }
    # A DTensor hidden state too (Replicate, as a TP plan hands it over): its gradient is one.
    data = inputs(3, world)
    x = distribute_tensor(data["x"][0], mesh, [Replicate()]).requires_grad_()
    W = distribute_tensor(data["W"], mesh, [Shard(0)]).requires_grad_()
    loss = linear_cross_entropy(x, W, data["y"][0])
    loss.backward()
    out["dtensor-hidden"] = {
        "loss": loss.detach(),
        "x": full(x.grad),
        "W": full(W.grad),
        "spec": spec(x.grad),
    }
    # Replicate weight: the ordinary path, no collective; the gradient is a Replicate DTensor.
    W = distribute_tensor(data["W"], mesh, [Replicate()]).requires_grad_()
    x = data["x"][rank].clone().requires_grad_()
    loss = linear_cross_entropy(x, W, data["y"][rank], reduction="sum")
    loss.backward()
    out["replicate"] = {
        "loss": loss.detach(),
        "x": x.grad,
        "W": W.grad.to_local(),
        "spec": spec(W.grad),
    }
    out.update(logits_calls(mesh))
    return out


def logits_calls(mesh: DeviceMesh) -> dict[str, Any]:
    """cross_entropy on DTensor logits: the class dim split (vocab parallel) and the rows split."""
    out: dict[str, Any] = {}
    g = torch.Generator().manual_seed(17)
    logits = 2 * torch.randn(9, V, 2, generator=g, dtype=torch.float64)  # K-dim: (N, C, d1)
    y = torch.randint(0, V, (9, 2), generator=g)
    y[0, 0] = IGNORE
    up = torch.randn(9, 2, generator=g, dtype=torch.float64)
    for dtype in DTYPES:
        dt = getattr(torch, dtype)
        for place, kw in (("classes", {"label_smoothing": 0.1, "z_loss": 1e-2}), ("rows", {})):
            for reduction in ("mean", "none"):
                z = distribute_tensor(logits.to(dt), mesh, [Shard(1 if place == "classes" else 0)])
                z.requires_grad_()
                tgt: Any = y
                if place == "rows":
                    # a DTensor target, split the same way
                    tgt = distribute_tensor(y, mesh, [Shard(0)])
                loss = cross_entropy(z, tgt, reduction=reduction, **kw)
                u = up if place == "classes" else distribute_tensor(up, mesh, [Shard(0)]).to_local()
                loss.backward(u.to(loss.dtype) if reduction == "none" else u[0, 0].to(loss.dtype))
                out[f"ce-{place}-{reduction}-{dtype}"] = {
                    "loss": loss.detach(),
                    "grad": full(z.grad),
                    "spec": spec(z.grad),
                }
    return out


# ------------------------------------------------------------------------------------------------
# FSDP2 (fully_shard): the loss inside the forward (plain weights), outside it (a sharded
# DTensor weight, as torchtune and TRL compute it), tied embeddings, the nn.Module


def lm_grads(model: torch.nn.Module) -> dict[str, Any]:
    return {n: full(p.grad) for n, p in model.named_parameters()}


def fsdp2(mesh: DeviceMesh) -> dict[str, Any]:
    from torch.distributed.fsdp import fully_shard

    rank, world = mesh.get_local_rank(), mesh.size()
    group = mesh.get_group(0)
    batches = lm_batches(11, world)
    ids, y = batches[rank]
    out: dict[str, Any] = {}
    variants = {
        "inside": {"tied": False, "bias": False},
        "inside-tied": {"tied": True, "bias": False},
        "outside": {"tied": False, "bias": True},
        "outside-tied": {"tied": True, "bias": False},
        "module": {"tied": False, "bias": False},
    }
    for dtype in DTYPES:
        for name, kw in variants.items():
            model = tiny_lm(dtype, **kw)
            where = name.split("-")[0]
            if where != "inside" and not kw["tied"]:
                fully_shard(model.head, mesh=mesh)  # its own unit, its forward never runs
            fully_shard(model.body, mesh=mesh)
            # outside-tied: the root reshards after forward, so the tied weight is a DTensor then
            fully_shard(model, mesh=mesh, reshard_after_forward=where != "inside")
            n = global_valid_count(y, process_group=group)
            if where == "inside":
                loss = model(ids, y, reduction="sum")
            else:
                h = model(ids)
                w = model.head.weight
                assert isinstance(w, DTensor), type(w)
                b = model.head.bias
                if where == "module":
                    loss = LinearCrossEntropyLoss(reduction="sum")(h, w, y)
                else:
                    loss = linear_cross_entropy(h, w, y, linear_bias=b, reduction="sum")
            loss = loss / n * world  # DDP/FSDP average the ranks' gradients: * world undoes it
            loss.backward()
            out[f"{name}-{dtype}"] = {
                "loss": loss.detach() / world,
                "grads": lm_grads(model),
                "spec": spec(model.head.weight.grad),
            }
    return out


# ------------------------------------------------------------------------------------------------
# tensor parallel (ColwiseParallel on the head): vocab parallel with no process_group=


def record_blocks() -> tuple[list[tuple[int, ...]], Callable[[], None]]:
    from crossentropy.torch.engine._chunked import Head

    shapes: list[tuple[int, ...]] = []
    real = Head.logits

    def recording(self: Head, i0: int, i1: int) -> torch.Tensor:
        block = real(self, i0, i1)
        shapes.append(tuple(block.shape))
        return block

    Head.logits = recording  # type: ignore[method-assign]

    def undo() -> None:
        Head.logits = real  # type: ignore[method-assign]

    return shapes, undo


def tp(mesh: DeviceMesh) -> dict[str, Any]:
    from torch.distributed.tensor.parallel import ColwiseParallel, parallelize_module

    out: dict[str, Any] = {}
    ids, y = lm_batches(12, 1)[0]  # the same tokens on every rank
    for dtype in DTYPES:
        for bias in (False, True):
            model = tiny_lm(dtype, bias=bias)
            parallelize_module(model, mesh, {"head": ColwiseParallel()})
            shapes, undo = record_blocks()
            try:
                loss = model(ids, y, label_smoothing=0.1, chunk_size=4)
            finally:
                undo()
            loss.backward()
            out[f"lce-bias{int(bias)}-{dtype}"] = {
                "loss": loss.detach(),
                "grads": lm_grads(model),
                "spec": spec(model.head.weight.grad),
                "blocks": shapes,
                "local_vocab": model.head.weight.to_local().shape[0],
            }
        # DTensor logits from the head itself (class dim split), into cross_entropy
        model = tiny_lm(dtype)
        plan = ColwiseParallel(output_layouts=Shard(-1), use_local_output=False)
        parallelize_module(model, mesh, {"head": plan})
        logits = model.head(model.hidden(ids))
        loss = cross_entropy(logits.movedim(-1, 1), y)
        loss.backward()
        out[f"ce-logits-{dtype}"] = {
            "loss": loss.detach(),
            "grads": lm_grads(model),
            "spec": spec(logits),
        }
    return out


# ------------------------------------------------------------------------------------------------
# FSDP2 x TP on a 2 x 2 mesh


def fsdp_tp(mesh: DeviceMesh) -> dict[str, Any]:
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.parallel import ColwiseParallel, parallelize_module

    dp, tpm = mesh["dp"], mesh["tp"]
    dp_rank, dp_size = dp.get_local_rank(), dp.size()
    ids, y = lm_batches(13, dp_size)[dp_rank]  # different tokens across dp, the same across tp
    out: dict[str, Any] = {}
    for dtype in DTYPES:
        for where in ("inside", "outside"):
            model = tiny_lm(dtype, bias=True)
            parallelize_module(model, tpm, {"head": ColwiseParallel()})
            if where == "outside":
                fully_shard(model.head, mesh=dp)
            fully_shard(model.body, mesh=dp)
            fully_shard(model, mesh=dp)
            n = global_valid_count(y, process_group=dp.get_group())
            if where == "inside":
                loss = model(ids, y, reduction="sum", chunk_size=3)
                wspec = None
            else:
                h = model(ids)
                w = model.head.weight
                wspec = spec(w)
                loss = linear_cross_entropy(
                    h, w, y, linear_bias=model.head.bias, reduction="sum", chunk_size=3
                )
            loss = loss / n * dp_size
            loss.backward()
            out[f"{where}-{dtype}"] = {
                "loss": loss.detach() / dp_size,
                "grads": lm_grads(model),
                "spec": spec(model.head.weight.grad),
                "wspec": wspec,
            }
    return out


# ------------------------------------------------------------------------------------------------
# sequence parallel: each rank holds a slice of one sequence


def sp(mesh: DeviceMesh) -> dict[str, Any]:
    rank, world = mesh.get_local_rank(), mesh.size()
    group = mesh.get_group(0)
    seq = sp_sequence()
    sizes = split_sizes(seq["h"].shape[0], world)
    start, stop = sum(sizes[:rank]), sum(sizes[: rank + 1])
    # the recipe: shift the labels on the whole sequence, then slice (the user's job)
    shifted = F.pad(seq["labels"], (0, 1), value=IGNORE)[1:]
    out: dict[str, Any] = {}
    for dtype in DTYPES:
        dt = getattr(torch, dtype)
        for recipe in ("global-shift", "local-shift", "dtensor-weight"):
            h = seq["h"][start:stop].to(dt).clone().requires_grad_()
            if recipe == "local-shift":  # what shifting inside each slice does: boundary lost
                y = F.pad(seq["labels"][start:stop], (0, 1), value=IGNORE)[1:]
            else:
                y = shifted[start:stop]
            W: Any = seq["W"].to(dt).clone().requires_grad_()
            if recipe == "dtensor-weight":
                W = distribute_tensor(seq["W"].to(dt), mesh, [Shard(0)]).requires_grad_()
            n = global_valid_count(y, process_group=group)
            loss = linear_cross_entropy(h, W, y, reduction="sum") / n
            if recipe == "dtensor-weight":
                (loss * world).backward()  # the DTensor weight's gradient is the ranks' mean
                wgrad = full(W.grad)
            else:
                loss.backward()
                wgrad = W.grad.clone()
                dist.all_reduce(wgrad, group=group)  # replicated weight: sum the ranks' parts
            total = loss.detach().clone()
            dist.all_reduce(total, group=group)
            hgrad = h.grad / world if recipe == "dtensor-weight" else h.grad  # the * world above
            out[f"{recipe}-{dtype}"] = {
                "loss": total,
                "h": hgrad,
                "W": wgrad,
                "span": (start, stop),
            }
    return out


# ------------------------------------------------------------------------------------------------
# DDP with gradient accumulation and uneven padding


def ddp(mesh: DeviceMesh) -> dict[str, Any]:
    from torch.nn.parallel import DistributedDataParallel as DDP

    rank, world = mesh.get_local_rank(), mesh.size()
    group = mesh.get_group(0)
    micro = dp_batches(world)[rank]
    out: dict[str, Any] = {}
    for recipe in ("global-count", "local-mean"):
        model = DDP(DPHead(), process_group=group)
        n = sum(global_valid_count(y, process_group=group) for _, y in micro)
        for i, (x, y) in enumerate(micro):
            with model.no_sync() if i == 0 else _null():
                if recipe == "global-count":
                    loss = model(x, y) / n * world
                else:
                    loss = model(x, y) / (y != IGNORE).sum().clamp(min=1) / len(micro)
                loss.backward()
        out[recipe] = {
            "n": int(n),
            "grads": {k: p.grad.clone() for k, p in model.module.named_parameters()},
        }
    return out


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: Any) -> None:
        return None


# ------------------------------------------------------------------------------------------------
# how often the weight is gathered, and bad input on one rank


def gathers(mesh: DeviceMesh) -> dict[str, Any]:
    """All-gathers per forward that carry weight rows (chunk_size=1: one block per row), with an
    uneven split (V = 11) and an even one (V = 12, which moves straight into the whole weight),
    and the loss and gradients of the even one (the uneven split is in every other part)."""
    rank, world = mesh.get_local_rank(), mesh.size()
    names = [
        n for n in ("all_gather", "all_gather_single", "all_gather_into_tensor") if hasattr(dist, n)
    ]
    real = {n: getattr(dist, n) for n in names}
    calls: list[tuple[str, tuple[int, ...], torch.dtype]] = []

    def counting(name: str) -> Callable[..., Any]:
        def call(first: Any, tensor: torch.Tensor, *a: Any, **k: Any) -> Any:
            calls.append((name, tuple(tensor.shape), tensor.dtype))
            return real[name](first, tensor, *a, **k)

        return call

    out: dict[str, Any] = {}
    for vocab in (11, 12):
        data = inputs(21, world, rows=9)
        W0 = torch.randn(
            vocab, D, generator=torch.Generator().manual_seed(vocab), dtype=torch.float64
        )
        y = [t.clamp(max=vocab - 1) for t in data["y"]]
        for tokens in ("different", "same"):
            r = rank if tokens == "different" else 0
            W = distribute_tensor(W0.clone(), mesh, [Shard(0)]).requires_grad_()
            x = data["x"][r].clone().requires_grad_()
            calls.clear()
            for n in names:
                setattr(dist, n, counting(n))
            try:
                loss = linear_cross_entropy(x, W, y[r], chunk_size=1)
            finally:
                for n in names:
                    setattr(dist, n, real[n])
            loss.backward()
            weight_rows = [c for c in calls if c[2] == torch.float64 and c[1][-1:] == (D,)]
            out[f"{tokens}-{vocab}"] = {
                "weight_gathers": len(weight_rows),
                "all": calls[:],
                "rows": x.shape[0],
                "loss": loss.detach(),
                "x": x.grad,
                "W": full(W.grad),
            }
    return out


def bad(mesh: DeviceMesh) -> dict[str, Any]:
    rank, world = mesh.get_local_rank(), mesh.size()
    last = world - 1
    data = inputs(31, world)
    x0, y0 = data["x"][0], data["y"][0]
    xr, yr = data["x"][rank], data["y"][rank]

    def W(place: Any = None) -> DTensor:
        return distribute_tensor(data["W"], mesh, [place or Shard(0)]).requires_grad_()

    out_of_range = yr.clone()
    out_of_range[-1] = V + 3
    calls: dict[str, Callable[[], Any]] = {
        # the gathering path: the loss itself refuses on one rank; the others must not wait
        "target-outside-vocab-one-rank": lambda: linear_cross_entropy(
            xr, W(), out_of_range if rank == last else yr
        ),
        "reduction-bad-one-rank": lambda: linear_cross_entropy(
            xr, W(), yr, reduction="avg" if rank == last else "mean"
        ),
        # same tokens except one rank's feature size: not the same tokens, and a local error there
        "hidden-D-one-rank": lambda: linear_cross_entropy(
            torch.randn(x0.shape[0], D + 1, dtype=torch.float64) if rank == last else x0, W(), y0
        ),
        "hidden-not-tensor-one-rank": lambda: linear_cross_entropy(
            x0.tolist() if rank == last else x0, W(), y0
        ),
        "placement-shard-features": lambda: linear_cross_entropy(x0, W(Shard(1)), y0),
        "process-group-and-dtensor": lambda: linear_cross_entropy(
            x0, W(), y0, process_group=mesh.get_group(0)
        ),
        "plain-bias-with-split-weight": lambda: linear_cross_entropy(
            x0, W(), y0, linear_bias=data["b"]
        ),
        # vocab parallel (same tokens): a class id out of range on one rank only differs in
        # tokens, so this too goes through the gathering path and its error exchange
        "same-tokens-target-outside-one-rank": lambda: linear_cross_entropy(
            x0, W(), torch.where(torch.arange(y0.shape[0]) == 1, V if rank == last else 1, y0)
        ),
    }
    res: dict[str, Any] = {}
    for name, call in calls.items():
        start = time.monotonic()
        try:
            loss = call()
            loss.backward()
            res[name] = (None, "no error", time.monotonic() - start)
        except Exception as exc:
            res[name] = (type(exc).__name__, str(exc), time.monotonic() - start)
    # the group is still in step: a good call on each path after the bad ones
    w = W()
    res["after-different"] = float(linear_cross_entropy(xr, w, yr).detach())
    res["after-same"] = float(linear_cross_entropy(x0, W(), y0).detach())
    return res


# ------------------------------------------------------------------------------------------------
# the helper reused by other losses of the same shape: linear_logprobs, linear_distillation_loss,
# and the nn.Module over cross_entropy


def reuse(mesh: DeviceMesh) -> dict[str, Any]:
    """linear_logprobs / linear_distillation_loss with DTensor weights (their _sharded hooks),
    against the same function on the whole weight in this process (the weight's gradient: the
    ranks' mean, all-reduced here)."""
    from crossentropy.torch import CrossEntropyLoss, linear_distillation_loss, linear_logprobs

    rank, world = mesh.get_local_rank(), mesh.size()
    group = mesh.get_group(0)
    data = inputs(41, world)
    g = torch.Generator().manual_seed(42)
    Wt = torch.randn(V, D, generator=g, dtype=torch.float64)  # a teacher head
    out: dict[str, Any] = {}

    def mean_over_ranks(t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        dist.all_reduce(t, group=group)
        return t / world

    for tokens in ("same", "different"):
        r = 0 if tokens == "same" else rank
        x, y, up = data["x"][r], data["y"][r], data["up"][r]
        temp = 0.5 + (torch.arange(x.shape[0], dtype=torch.float64) % 3) / 4
        # linear_logprobs: log-probabilities and entropies, both with upstream gradients
        got, want = [], []
        for split in (True, False):
            W: Any = data["W"].clone()
            W = distribute_tensor(W, mesh, [Shard(0)]) if split else W
            W.requires_grad_()
            h = x.clone().requires_grad_()
            kw = dict(input=h, linear_weight=W, target=y, temperature=temp, return_entropy=True)
            # the public function: a DTensor weight takes its _sharded hook
            res = linear_logprobs(**kw)
            (res.logprobs * up + res.entropy * up.flip(0)).sum().backward()
            wgrad = full(W.grad) if split else mean_over_ranks(W.grad)
            (got if split else want).append(
                [res.logprobs.detach(), res.entropy.detach(), h.grad, wgrad]
            )
        out[f"logprobs-{tokens}"] = {"got": got[0], "want": want[0]}
        # linear_distillation_loss: both heads split alike (vocab parallel or gathered), and a
        # split student with a whole teacher (gathered)
        for teacher_split in (True, False):
            got, want = [], []
            for split in (True, False):
                Ws: Any = data["W"].clone()
                Wq: Any = Wt.clone()
                if split:
                    Ws = distribute_tensor(Ws, mesh, [Shard(0)])
                    if teacher_split:
                        Wq = distribute_tensor(Wq, mesh, [Shard(0)])
                Ws.requires_grad_()
                hs, ht = x.clone().requires_grad_(), (0.5 * x).flip(0).clone()
                kw = dict(
                    student_input=hs,
                    student_linear_weight=Ws,
                    teacher_input=ht,
                    teacher_linear_weight=Wq,
                    divergence="jsd",
                    beta=0.3,
                    temperature=1.5,
                    target=y,
                    hard_weight=0.5,
                    reduction="sum",
                )
                loss = linear_distillation_loss(**kw)
                (loss * up[0]).backward()
                wgrad = full(Ws.grad) if split else mean_over_ranks(Ws.grad)
                (got if split else want).append([loss.detach(), hs.grad, wgrad])
            out[f"distill-teacher{int(teacher_split)}-{tokens}"] = {"got": got[0], "want": want[0]}
    # the nn.Module over cross_entropy, with DTensor logits split on the classes
    logits = 2 * data["x"][0] @ data["W"].T
    z = distribute_tensor(logits, mesh, [Shard(1)]).requires_grad_()
    loss = CrossEntropyLoss(label_smoothing=0.1)(z, data["y"][0])
    loss.backward()
    zp = logits.clone().requires_grad_()
    ref = F.cross_entropy(zp, data["y"][0], label_smoothing=0.1)
    ref.backward()
    out["module-ce"] = {"got": [loss.detach(), full(z.grad)], "want": [ref.detach(), zp.grad]}
    return out


# ------------------------------------------------------------------------------------------------


PARTS_1D: dict[str, Callable[[DeviceMesh], dict[str, Any]]] = {
    "functional": functional,
    "fsdp2": fsdp2,
    "tp": tp,
    "sp": sp,
    "ddp": ddp,
    "gathers": gathers,
    "bad": bad,
    "reuse": reuse,
}


def run(part: str, fn: Callable[[Any], dict[str, Any]], mesh: Any) -> Any:
    try:
        return fn(mesh)
    except Exception as exc:
        text = traceback.format_exc()
        if isinstance(exc, (RuntimeError, dist.DistBackendError)) and "imed out" in text:
            raise  # a collective waited too long: stop here (the parent reports a failure)
        return {"__error__": text}


def main() -> None:
    rank, world = int(sys.argv[1]), int(sys.argv[2])
    store_path, out_path = sys.argv[3], sys.argv[4]
    parts = sys.argv[5].split(",") if len(sys.argv) > 5 else [*PARTS_1D, "fsdp_tp"]
    torch.set_num_threads(1)
    timeout = datetime.timedelta(seconds=float(os.environ.get("SHARDED_TIMEOUT", "30")))
    store = dist.FileStore(store_path, world)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=timeout)
    meshes = {
        2: DeviceMesh("cpu", list(range(world))[-2:]),
        3: DeviceMesh("cpu", list(range(world))[-3:]),
    }
    mesh22 = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp")) if world == 4 else None
    results: dict[str, Any] = {"rank": rank}
    for part in parts:
        if part == "fsdp_tp":
            if mesh22 is not None:
                results["fsdp_tp"] = run(part, fsdp_tp, mesh22)
            continue
        for size, mesh in meshes.items():
            if mesh.get_coordinate() is not None:
                results[f"{part}/{size}"] = run(part, PARTS_1D[part], mesh)
        dist.barrier()
    torch.save(results, out_path)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
