"""Train a tiny two-tower (CLIP-style) retrieval model in 2 CPU processes with contrastive_loss.

Needs: crossentropy[torch]
Run: python examples/contrastive_two_towers.py [--steps 300] [--batch 256] [--world 2]

It starts its 2 gloo processes itself; under torchrun it takes the ones torchrun starts
(``torchrun --nproc-per-node 2 examples/contrastive_two_towers.py``).

The data are synthetic pairs: a hidden vector z gives two "modalities", x = z A + noise and
y = tanh(z B) + noise. Each tower (a small MLP) embeds one modality, and the symmetric CLIP loss
with a learnable temperature pulls the two embeddings of a pair together. Every rank draws its own
batch; the other rank's batch serves as negatives through contrastive_loss's ring (no embeddings
are all-gathered), and DistributedDataParallel averages the gradients. Rank 0 prints the top-1
retrieval accuracy (x -> y among held-out pairs) as it rises, and at the end checks that the
distributed loss equals CLIP's loss computed on the whole global batch in one process.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from crossentropy.torch import ContrastiveLoss

LATENT, X_DIM, Y_DIM, EMBED = 8, 24, 16, 16


def make_world(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The two fixed maps from the hidden vector to each modality (the same on every rank)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(LATENT, X_DIM, generator=g), torch.randn(LATENT, Y_DIM, generator=g)


def pairs(maps: tuple[torch.Tensor, torch.Tensor], n: int, g: torch.Generator) -> tuple:
    z = torch.randn(n, LATENT, generator=g)
    x = z @ maps[0] + 1.0 * torch.randn(n, X_DIM, generator=g)
    y = torch.tanh(z @ maps[1]) + 0.3 * torch.randn(n, Y_DIM, generator=g)
    return x, y


class TwoTowers(nn.Module):
    """Both towers and the loss (its learnable temperature), so DDP averages every gradient."""

    def __init__(self, group: Any) -> None:
        super().__init__()
        self.tx = nn.Sequential(nn.Linear(X_DIM, 64), nn.GELU(), nn.Linear(64, EMBED))
        self.ty = nn.Sequential(nn.Linear(Y_DIM, 64), nn.GELU(), nn.Linear(64, EMBED))
        self.loss = ContrastiveLoss(process_group=group, init_scale=1 / 0.07)

    def embed(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return F.normalize(self.tx(x), dim=1), F.normalize(self.ty(y), dim=1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss(*self.embed(x, y))


def train(rank: int, world: int, args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)  # the same initial towers on every rank
    torch.set_num_threads(1)
    group = dist.group.WORLD
    model = nn.parallel.DistributedDataParallel(TwoTowers(group))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    maps = make_world(1)
    data = torch.Generator().manual_seed(100 + rank)  # each rank its own batches
    held_out = pairs(maps, args.held_out, torch.Generator().manual_seed(7))
    accuracy: list[float] = []
    losses: list[float] = []
    for step in range(args.steps + 1):
        if step % args.every == 0 or step == args.steps:
            with torch.no_grad():
                ex, ey = model.module.embed(*held_out)
                acc = float((ex @ ey.T).argmax(1).eq(torch.arange(len(ex))).float().mean())
            accuracy.append(acc)
            if rank == 0:
                scale = float(model.module.loss.log_scale.detach().exp())
                last = f"{losses[-1]:.3f}" if losses else "  -  "
                print(
                    f"step {step:4d}  retrieval top-1 {acc:6.1%} of {args.held_out}  "
                    f"loss {last}  scale {scale:.1f}",
                    flush=True,
                )
        if step == args.steps:
            break
        x, y = pairs(maps, args.batch, data)
        loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))

    # the check: the ring's loss (each rank's own anchors, averaged over the ranks) equals CLIP's
    # loss on the whole global batch computed in one process (gathered here for the check only)
    x, y = pairs(maps, args.batch, data)
    with torch.no_grad():
        ours = model(x, y)
        dist.all_reduce(ours)
        ours /= world
        ex, ey = model.module.embed(x, y)
        all_x = [torch.empty_like(ex) for _ in range(world)]
        all_y = [torch.empty_like(ey) for _ in range(world)]
        dist.all_gather(all_x, ex)
        dist.all_gather(all_y, ey)
        s = model.module.loss.log_scale.exp() * torch.cat(all_x) @ torch.cat(all_y).T
        target = torch.arange(s.shape[0])
        ref = (F.cross_entropy(s, target) + F.cross_entropy(s.T, target)) / 2
    diff = abs(float(ours) - float(ref))
    if rank == 0:
        print(
            f"global batch {world} x {args.batch}: distributed loss {float(ours):.6f}, "
            f"one-process loss {float(ref):.6f} (difference {diff:.1e})"
        )
    return {"accuracy": accuracy, "losses": losses, "loss_difference": diff, "world": world}


def _spawned(rank: int, world: int, store: str, out: str, args: argparse.Namespace) -> None:
    dist.init_process_group("gloo", store=dist.FileStore(store, world), rank=rank, world_size=world)
    try:
        result = train(rank, world, args)
        if rank == 0:
            with open(out, "w") as f:
                json.dump(result, f)
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=256, help="pairs per rank per step")
    parser.add_argument("--held-out", type=int, default=500)
    parser.add_argument("--every", type=int, default=50, help="evaluate every this many steps")
    parser.add_argument("--world", type=int, default=2, help="processes to start")
    args = parser.parse_args(argv)
    if "RANK" in os.environ:  # torchrun
        dist.init_process_group("gloo")
        try:
            return train(dist.get_rank(), dist.get_world_size(), args)
        finally:
            dist.destroy_process_group()
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        store, out = os.path.join(tmp, "store"), os.path.join(tmp, "result.json")
        mp.spawn(_spawned, args=(args.world, store, out, args), nprocs=args.world)
        with open(out) as f:
            result: dict[str, Any] = json.load(f)
    return result


if __name__ == "__main__":
    main()
