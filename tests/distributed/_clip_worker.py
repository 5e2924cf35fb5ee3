"""One rank of the contrastive-loss tests: ``python _clip_worker.py RANK WORLD STORE OUT``.

Runs, on this rank of a gloo world, and saves with ``torch.save`` for the parent test to check:

* ``grid``: every case of ``_clip_cases.grid()`` (loss and gradients of a, b, t, beta, after a
  random upstream gradient), plus float32 and bfloat16 cases;
* ``open_clip``: our loss next to open_clip's ``ClipLoss(local_loss=True, gather_with_grad=True)``
  and ``SigLipLoss`` (bidirectional exchange) on the same inputs, with their gradients;
* ``memory``: the largest tensor allocated during forward and backward (a TorchDispatchMode that
  records the storage size of every op's outputs), ours and ClipLoss's;
* ``bad``: the exception each bad call raised on this rank (one rank's input is bad each time),
  and whether the group still worked afterwards.

open_clip is loaded from its ``loss.py`` alone (see ``load_open_clip_loss``): its package
``__init__`` imports its models, and through them torchvision, whose PyPI wheel cannot load beside
the CPU build of torch (``operator torchvision::nms does not exist``); the project installs
open-clip-torch with ``--no-deps``. Not a test module itself.
"""

from __future__ import annotations

import datetime
import importlib.util
import sys
import traceback
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from _clip_cases import Case, grid, local_inputs, upstream
from torch.utils._python_dispatch import TorchDispatchMode

from crossentropy.torch import contrastive_loss


def load_open_clip_loss() -> ModuleType | None:
    """open_clip's ``loss.py`` by file path, without running the package's ``__init__``."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "loss.py"
    loader_spec = importlib.util.spec_from_file_location("open_clip_loss_only", path)
    assert loader_spec is not None and loader_spec.loader is not None
    module = importlib.util.module_from_spec(loader_spec)
    loader_spec.loader.exec_module(module)
    return module


def run_case(case: Case, world: int, rank: int, group: Any) -> dict[str, Any]:
    inp = local_inputs(case, world, rank)
    out = contrastive_loss(
        inp["a"],
        inp["b"],
        logit_scale=inp["t"],
        logit_bias=inp["beta"],
        kind=case.kind,
        symmetric=case.symmetric,
        a_ids=inp["a_ids"],
        b_ids=inp["b_ids"],
        exclude_self=case.exclude_self,
        process_group=group,
        reduction=case.reduction,
        chunk_size=case.chunk,
    )
    out.backward(upstream(case, world, rank, out.shape).to(out.dtype))
    a, b, t, beta = inp["a"], inp["b"], inp["t"], inp["beta"]
    return {
        "loss": out.detach(),
        "a": a.grad,  # type: ignore[union-attr]
        "b": b.grad if b is not a else None,  # type: ignore[union-attr]
        "t": t.grad,  # type: ignore[union-attr]
        "beta": beta.grad if beta is not None else None,
    }


def open_clip_cases(oc: ModuleType, world: int, rank: int) -> list[dict[str, Any]]:
    """Ours and open_clip's loss and gradients on the same inputs, per case."""
    results = []
    for kind, with_bias, dtype in (
        ("softmax", False, torch.float64),
        ("softmax", True, torch.float64),
        ("sigmoid", True, torch.float64),
        ("softmax", False, torch.float32),
        ("sigmoid", True, torch.float32),
    ):
        g = torch.Generator().manual_seed(7)
        n, d = 6, 5
        big_a = F.normalize(torch.randn(world * n, d, generator=g, dtype=torch.float64), dim=1)
        big_b = F.normalize(torch.randn(world * n, d, generator=g, dtype=torch.float64), dim=1)
        ups = torch.randn(world, generator=g, dtype=torch.float64)
        pair = {}
        for who in ("ours", "open_clip"):
            a = big_a[rank * n : (rank + 1) * n].to(dtype).requires_grad_(True)
            b = big_b[rank * n : (rank + 1) * n].to(dtype).requires_grad_(True)
            t = torch.tensor(10.0, dtype=dtype, requires_grad=True)
            beta = torch.tensor(-3.0, dtype=dtype, requires_grad=True) if with_bias else None
            if who == "ours":
                loss = contrastive_loss(
                    a, b, logit_scale=t, logit_bias=beta, kind=kind,
                    process_group=dist.group.WORLD,
                )  # fmt: skip
            elif kind == "softmax":
                clip = oc.ClipLoss(
                    local_loss=True, gather_with_grad=True, rank=rank, world_size=world
                )
                loss = clip(a, b, t, beta)
            else:
                loss = oc.SigLipLoss(rank=rank, world_size=world)(a, b, t, beta)
            loss.backward(ups[rank].to(loss.dtype))
            pair[who] = {
                "loss": loss.detach(),
                "a": a.grad,
                "b": b.grad,
                "t": t.grad,
                "beta": beta.grad if beta is not None else None,
            }
        results.append({"kind": kind, "bias": with_bias, "dtype": str(dtype), **pair})
    return results


class LargestTensor(TorchDispatchMode):
    """The largest storage any op produced while active (views count as their base storage)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.untyped_storage().nbytes())
        return out


def memory(oc: ModuleType | None, world: int, rank: int) -> dict[str, int]:
    """Largest tensor of one forward+backward, n = m = 96 rows per rank, d = 32, 16 x 16 tiles."""
    n, d = 96, 32
    g = torch.Generator().manual_seed(rank)
    res = {}
    for who in ("ours", "open_clip", "ours_sigmoid"):
        if who == "open_clip" and oc is None:
            continue
        a = torch.randn(n, d, generator=g).requires_grad_(True)
        b = torch.randn(n, d, generator=g).requires_grad_(True)
        t = torch.tensor(5.0, requires_grad=True)
        meter = LargestTensor()
        with meter:
            if who == "open_clip":
                assert oc is not None
                clip = oc.ClipLoss(
                    local_loss=True, gather_with_grad=True, rank=rank, world_size=world
                )
                loss = clip(a, b, t)
            else:
                loss = contrastive_loss(
                    a, b, logit_scale=t, kind="sigmoid" if who == "ours_sigmoid" else "softmax",
                    logit_bias=-1.0 if who == "ours_sigmoid" else None,
                    process_group=dist.group.WORLD, chunk_size=16,
                )  # fmt: skip
            loss.backward()
        res[who] = meter.largest
    return res


def bad_calls(world: int, rank: int) -> list[dict[str, Any]]:
    """Each call has one bad rank (``bad``); every rank must raise, and the group must work after."""
    n, d = 4, 3
    g = torch.Generator().manual_seed(3)
    a = torch.randn(n, d, generator=g)
    b = torch.randn(n, d, generator=g)
    ids = torch.arange(n)

    def call(**kw: Any) -> Any:
        args = {"a": a, "b": b, "logit_scale": 2.0, "process_group": dist.group.WORLD}
        args.update(kw)
        x, y = args.pop("a"), args.pop("b")
        return contrastive_loss(x, y, **args)

    bad_rank = world - 1
    me = rank == bad_rank
    cases = {
        "d mismatch": {"b": torch.randn(n, d + 1)} if me else {},
        "n > m with diagonal positives": {"b": b[:2]} if me else {},
        "ids on one side only": {"a_ids": ids} if me else {"a_ids": ids, "b_ids": ids},
        "non-finite scale": {"logit_scale": float("inf")} if me else {},
        "non-positive scale tensor": {"logit_scale": torch.tensor(-1.0)} if me else {},
        "ranks disagree on the scale": {"logit_scale": 3.0} if me else {},
        "ranks disagree on kind": {"kind": "sigmoid"} if me else {},
        "bad kind": {"kind": "cosine"} if me else {},
        "ids of the wrong shape": (
            {"a_ids": ids[:2], "b_ids": ids} if me else {"a_ids": ids, "b_ids": ids}
        ),
        "exclude_self without ids": {"exclude_self": True} if me else {},
        "float ids": ({"a_ids": ids.float(), "b_ids": ids} if me else {"a_ids": ids, "b_ids": ids}),
    }
    out = []
    for name, kw in cases.items():
        rec: dict[str, Any] = {"name": name, "bad_rank": bad_rank}
        try:
            call(**kw)
            rec["raised"] = None
        except (ValueError, TypeError) as exc:
            rec["raised"] = type(exc).__name__
            rec["message"] = str(exc)
        # the group still works: a good call gives the same loss on every rank
        loss = call().detach().reshape(1)
        losses = [torch.empty(1) for _ in range(world)]
        dist.all_gather(losses, loss)
        rec["after"] = [float(x) for x in losses]
        out.append(rec)
    return out


def main() -> None:
    rank, world, store, out_path = (int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        store=dist.FileStore(store, world),
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=120),
    )
    group = dist.group.WORLD
    result: dict[str, Any] = {"world": world, "rank": rank}
    try:
        oc = load_open_clip_loss()
        result["open_clip_loaded"] = oc is not None
        if oc is not None:
            result["open_clip"] = open_clip_cases(oc, world, rank)
        if world in (2, 4):
            result["memory"] = memory(oc, world, rank)
        if world >= 2:
            cases = list(grid())
            cases += [
                replace(cases[0], dtype="float32", seed=90),
                replace(cases[12], dtype="float32", seed=91),
                replace(cases[24], dtype="bfloat16", seed=92),
                replace(cases[3], dtype="bfloat16", seed=93, chunk=3),
            ]
            result["grid"] = [(c, run_case(c, world, rank, group)) for c in cases]
        if world == 4:
            result["bad"] = bad_calls(world, rank)
            # a 2-rank subgroup of global ranks 1 and 2: group ranks differ from global ranks
            sub = dist.new_group([1, 2])
            if rank in (1, 2):
                picked = [c for i, c in enumerate(grid()) if i % 5 == 0]
                result["subgroup"] = [(c, run_case(c, 2, rank - 1, sub)) for c in picked]
    except Exception:
        traceback.print_exc()
        dist.destroy_process_group()
        sys.exit(1)
    torch.save(result, out_path)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
