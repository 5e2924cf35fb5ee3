"""Vocab-parallel (tensor-parallel) training of an output layer, on CPU processes with gloo.

Needs: crossentropy[torch]
Run: torchrun --nproc-per-node 2 examples/vocab_parallel.py [--vocab 1001] [--steps 30]

Also runs as one process (``python examples/vocab_parallel.py``). Every rank holds a contiguous
slice of the vocabulary of the output projection; the hidden layer is replicated. The loss,
computed without ever building the ``N x V`` logits on any rank, is the same on every rank and
equals the single-process loss on the full vocabulary, which the script checks at the end.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch
import torch.distributed as dist
import torch.nn.functional as F

from crossentropy.torch import linear_cross_entropy


def init() -> tuple[int, int]:
    if "RANK" in os.environ:  # launched by torchrun: MASTER_ADDR/PORT, RANK, WORLD_SIZE are set
        dist.init_process_group("gloo")
    else:
        store = dist.FileStore(os.path.join(tempfile.mkdtemp(), "store"), 1)
        dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    return dist.get_rank(), dist.get_world_size()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=1001, help="global vocabulary size")
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args(argv)
    rank, world = init()
    v, d, n = args.vocab, args.dim, args.tokens

    # Uneven contiguous shards in rank order: rank r owns classes [offsets[r], offsets[r + 1]).
    sizes = [v // world + (r < v % world) for r in range(world)]
    offsets = [sum(sizes[:r]) for r in range(world + 1)]
    lo, hi = offsets[rank], offsets[rank + 1]

    # The same seed everywhere: replicated data and hidden layer, and the same full output layer,
    # of which each rank keeps only its slice.
    torch.manual_seed(0)
    features = torch.randn(n, 16)
    target = torch.randint(0, v, (n,))
    target[: n // 8] = -100  # padding
    hidden = torch.nn.Linear(16, d)
    out_full = torch.randn(v, d) / d**0.5
    out_shard = torch.nn.Parameter(out_full[lo:hi].clone())
    params = [*hidden.parameters(), out_shard]
    opt = torch.optim.SGD(params, lr=0.5)
    group = dist.group.WORLD

    if rank == 0:
        print(f"world={world}  V={v} split {sizes}  D={d}  tokens={n}")
        print(
            f"logits per rank: {n} x {sizes[0]} at most (one process: {n} x {v}), built in chunks"
        )
    for step in range(args.steps):
        h = torch.tanh(hidden(features))
        loss = linear_cross_entropy(
            h, out_shard, target, label_smoothing=0.1, z_loss=1e-4, process_group=group
        )
        opt.zero_grad()
        # dL/dh is all-reduced inside, so the replicated hidden layer gets the same gradient on
        # every rank and stays in sync without any further communication.
        loss.backward()
        opt.step()
        loss = loss.detach()
        if rank == 0 and (step % 10 == 0 or step == args.steps - 1):
            print(f"step {step:3d}  loss {loss.item():.4f}")

    # Check: gather the shards and compute the same loss on the full vocabulary in one process.
    # (gloo gathers equal sizes only: pad every shard to the largest, then trim)
    padded = [torch.empty(max(sizes), d) for _ in sizes]
    mine = torch.zeros(max(sizes), d)
    mine[: hi - lo] = out_shard.detach()
    dist.all_gather(padded, mine, group=group)
    shards = [p[:s] for p, s in zip(padded, sizes)]
    with torch.no_grad():
        h = torch.tanh(hidden(features))
        ours = linear_cross_entropy(
            h, out_shard, target, label_smoothing=0.1, z_loss=1e-4, process_group=group
        )
        logits = h @ torch.cat(shards).T
        valid = target != -100
        lse = torch.logsumexp(logits, dim=1)
        ref = F.cross_entropy(logits, target, label_smoothing=0.1)
        ref = ref + 1e-4 * (lse[valid] ** 2).mean()
    if rank == 0:
        print(f"vocab-parallel loss {float(ours):.6f}  single-process loss {float(ref):.6f}")
    if abs(float(ours) - float(ref)) > 1e-5:
        raise SystemExit(f"rank {rank}: vocab-parallel loss differs from the single-process loss")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
