"""Inputs and the float64 materialised reference of the contrastive-loss tests.

The reference builds the whole global similarity matrix with plain differentiable torch ops and
writes each rank's loss straight from the definitions (InfoNCE / SupCon's L_out, CLIP's average of
both directions, SigLIP's sum of -log sigmoid over pairs); autograd gives its gradients. It shares
no code with the library. Used by the single-process tests (one rank) and by the gloo workers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

IGNORE = -100


@dataclass(frozen=True)
class Case:
    kind: str = "softmax"
    symmetric: bool = True
    layout: str = "diag"  # diag | hardneg (m > n, diagonal) | ids | self (ids, exclude_self)
    reduction: str = "mean"
    chunk: int | None = None
    dtype: str = "float64"
    bias: bool = True
    uneven: bool = False
    d: int = 5
    seed: int = 0
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def exclude_self(self) -> bool:
        return self.layout == "self"

    @property
    def ids(self) -> bool:
        return self.layout in ("ids", "self")


def sizes(case: Case, world: int) -> tuple[list[int], list[int]]:
    """Rows of a and b on each rank."""
    n = [4 + (r % 3 if case.uneven else 0) for r in range(world)]
    if case.layout == "hardneg":
        m = [k + 2 + (r % 2 if case.uneven else 0) for r, k in enumerate(n)]
    else:
        m = list(n)
    return n, m


def global_inputs(case: Case, world: int) -> dict[str, torch.Tensor | None]:
    """The global batch (every rank builds the same one and keeps its part), in float64."""
    n, m = sizes(case, world)
    g = torch.Generator().manual_seed(1000 + case.seed)
    big_n, big_m = sum(n), sum(m)
    a = F.normalize(torch.randn(big_n, case.d, generator=g, dtype=torch.float64), dim=1)
    b = F.normalize(torch.randn(big_m, case.d, generator=g, dtype=torch.float64), dim=1)
    if case.layout == "self":
        b = a
    a_ids = b_ids = None
    if case.ids:
        # few classes, so most rows have several positives; some ignored rows; some ids that
        # appear on one side only (rows without a positive)
        a_ids = torch.randint(0, 4, (big_n,), generator=g)
        a_ids[torch.randperm(big_n, generator=g)[:2]] = IGNORE
        if case.layout == "self":
            b_ids = a_ids.clone()
        else:
            b_ids = torch.randint(0, 5, (big_m,), generator=g)
            b_ids[torch.randperm(big_m, generator=g)[:1]] = IGNORE
    t = torch.tensor(3.0 + case.seed % 3, dtype=torch.float64)
    beta = torch.tensor(-2.0, dtype=torch.float64) if case.bias else None
    up = torch.randn(2 * world * (max(n) + max(m)) + world, generator=g, dtype=torch.float64)
    return {"a": a, "b": b, "a_ids": a_ids, "b_ids": b_ids, "t": t, "beta": beta, "up": up}


def upstream(case: Case, world: int, rank: int, out_shape: torch.Size) -> torch.Tensor:
    """A random upstream gradient of rank ``rank``'s loss (a scalar for mean/sum)."""
    up = global_inputs(case, world)["up"]
    assert up is not None
    k = out_shape.numel() if len(out_shape) else 1
    start = rank * (k + 1)
    return up[start : start + k].reshape(out_shape)


def _direction(s: torch.Tensor, pos: torch.Tensor, excl: torch.Tensor) -> tuple:
    lse = torch.logsumexp(s.masked_fill(excl, float("-inf")), dim=1)
    k = pos.sum(1)
    counted = k > 0
    mean_pos = torch.where(pos, s, 0.0).sum(1) / k.clamp(min=1)
    return torch.where(counted, lse - mean_pos, 0.0), counted


def _reduce(loss: torch.Tensor, counted: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / counted.sum().clamp(min=1)


def rank_losses(
    case: Case,
    world: int,
    a: torch.Tensor,
    b: torch.Tensor,
    t: torch.Tensor,
    beta: torch.Tensor | None,
    a_ids: torch.Tensor | None,
    b_ids: torch.Tensor | None,
) -> list[torch.Tensor]:
    """Each rank's loss as a differentiable function of the global a, b, t, beta."""
    n, m = sizes(case, world)
    off_n = [sum(n[:r]) for r in range(world)]
    off_m = [sum(m[:r]) for r in range(world)]
    s = t * a @ b.T
    if beta is not None:
        s = s + beta
    big_n, big_m = s.shape
    if case.ids:
        assert a_ids is not None and b_ids is not None
        pos = (a_ids[:, None] == b_ids[None, :]) & (a_ids[:, None] != IGNORE)
    else:
        pos = torch.zeros(big_n, big_m, dtype=torch.bool)
        for r in range(world):
            i = torch.arange(n[r])
            pos[off_n[r] + i, off_m[r] + i] = True
    excl = torch.zeros_like(pos)
    if case.exclude_self:
        excl = torch.eye(big_n, dtype=torch.bool)
        pos = pos & ~excl
    out = []
    for r in range(world):
        ra = slice(off_n[r], off_n[r] + n[r])
        rb = slice(off_m[r], off_m[r] + m[r])
        if case.kind == "sigmoid":
            y = torch.where(pos[ra], 1.0, -1.0).to(s.dtype)
            terms = torch.where(excl[ra], 0.0, -F.logsigmoid(y * s[ra]))
            counted = pos[ra].sum(1) > 0
            out.append(_reduce(torch.where(counted, terms.sum(1), 0.0), counted, case.reduction))
            continue
        la, ca = _direction(s[ra], pos[ra], excl[ra])
        if not case.symmetric:
            out.append(_reduce(la, ca, case.reduction))
            continue
        lb, cb = _direction(s.T[rb], pos.T[rb], excl.T[rb])
        if case.reduction == "none":
            out.append(torch.cat([la, lb]) / 2)
        else:
            out.append((_reduce(la, ca, case.reduction) + _reduce(lb, cb, case.reduction)) / 2)
    return out


def reference(case: Case, world: int) -> list[dict[str, torch.Tensor | None]]:
    """Per rank: the loss, and the gradients that rank should see (a and b: of the sum of every
    rank's loss times its upstream; t and beta: of its own loss)."""
    inp = global_inputs(case, world)
    dtype = getattr(torch, case.dtype)

    def leaf(x: torch.Tensor | None) -> torch.Tensor | None:
        # the inputs as the ranks see them: rounded to the case's dtype
        return None if x is None else x.to(dtype).double().requires_grad_(True)

    a, t, beta = leaf(inp["a"]), leaf(inp["t"]), leaf(inp["beta"])
    assert a is not None and t is not None
    b = a if case.layout == "self" else leaf(inp["b"])
    assert b is not None
    losses = rank_losses(case, world, a, b, t, beta, inp["a_ids"], inp["b_ids"])
    ups = [upstream(case, world, r, loss.shape) for r, loss in enumerate(losses)]
    total = sum((loss * u).sum() for loss, u in zip(losses, ups))
    ga, gb = torch.autograd.grad(total, [a, b], retain_graph=True)
    if case.layout == "self":
        gb = torch.zeros_like(gb)  # b is a: its gradient is all in ga
    n, m = sizes(case, world)
    out = []
    for r, (loss, u) in enumerate(zip(losses, ups)):
        params = [t] + ([beta] if beta is not None else [])
        grads = torch.autograd.grad((loss * u).sum(), params, retain_graph=True)
        out.append(
            {
                "loss": loss.detach(),
                "a": ga[sum(n[:r]) : sum(n[: r + 1])],
                "b": gb[sum(m[:r]) : sum(m[: r + 1])],
                "t": grads[0],
                "beta": grads[1] if beta is not None else None,
            }
        )
    return out


def local_inputs(case: Case, world: int, rank: int) -> dict[str, torch.Tensor | None]:
    """This rank's leaves (in the case's dtype, requiring grad) and ids."""
    inp = global_inputs(case, world)
    n, m = sizes(case, world)
    dtype = getattr(torch, case.dtype)
    sa = slice(sum(n[:rank]), sum(n[: rank + 1]))
    sb = slice(sum(m[:rank]), sum(m[: rank + 1]))
    a = inp["a"][sa].to(dtype).requires_grad_(True)  # type: ignore[index]
    b = a if case.layout == "self" else inp["b"][sb].to(dtype).requires_grad_(True)  # type: ignore[index]
    t = inp["t"].clone().requires_grad_(True)  # type: ignore[union-attr]
    beta = inp["beta"].clone().requires_grad_(True) if inp["beta"] is not None else None
    return {
        "a": a,
        "b": b,
        "t": t,
        "beta": beta,
        "a_ids": inp["a_ids"][sa] if inp["a_ids"] is not None else None,
        "b_ids": inp["b_ids"][sb] if inp["b_ids"] is not None else None,
    }


def grid() -> list[Case]:
    """Every kind, direction, positives layout and reduction; tiles smaller than a block in half
    of them (two-by-two tiles: many tiles per meeting, partial ones at the edges)."""
    cases = []
    seed = 0
    for kind in ("softmax", "sigmoid"):
        for symmetric in (True, False):
            for layout in ("diag", "hardneg", "ids", "self"):
                for reduction in ("mean", "sum", "none"):
                    seed += 1
                    cases.append(
                        Case(
                            kind=kind,
                            symmetric=symmetric,
                            layout=layout,
                            reduction=reduction,
                            chunk=2 if seed % 2 else None,
                            uneven=seed % 3 == 0,
                            bias=kind == "sigmoid" or seed % 4 == 0,
                            seed=seed,
                        )
                    )
    return cases
