"""The contrastive ring: the other tower's blocks pass round the ranks, nothing is gathered.

Rank r holds ``a_r`` (n_r, d) and ``b_r`` (m_r, d). Its A rows are the "tokens"; the B blocks of all
ranks are the "vocabulary", visited one at a time as they pass round a ring (rank r sends to r + 1
and receives from r - 1, with P2P isend/irecv: gloo on CPU, NCCL on GPUs). At step k rank r meets
the block of rank q = r - k; after ``world`` steps it has met every block once.

Forward. Rank r keeps the online statistics of its A rows (engine/_contrastive). For symmetric
softmax the block also carries the statistics of its own B->A rows (its columns), which each rank
it visits updates; after the last step they go one hop further, home to the owner. So one GEMM per
meeting serves both directions, and each rank's value is its own anchors' loss (CLIP's
``local_loss``).

Backward. The blocks go round again, carrying their columns' backward coefficients, and with them
travels d b of the block (with the scale gradient of its column losses), to which every rank adds
its part; after the last step it goes home. d a stays local. So the gradient that reaches each
rank's a and b is that of the sum of every rank's loss, which is what open_clip's all-gather with
gradients gives, and DDP's averaging then gives the gradient of the global-batch loss.

Per step a rank sends its block (m d elements in the input dtype) and, in the backward pass, the
block's gradient (m d in the compute dtype): 2(W - 1) + W transfers of m d per call, whatever the
world size W, with each block's transfer overlapping the meeting before it. Memory per rank:
the inputs, two blocks in flight, three d b buffers and the tiles: O((n + m) d + tile), never
n x N_global and never a gathered side.

Before anything can diverge, every rank all-gathers a small int64 vector of its sizes and every
argument; a local input error travels in it, so bad input raises on every rank (as in
``_vocab``), and the ranks must agree on everything but their batch sizes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.autograd.function import once_differentiable

from crossentropy.torch.engine import _contrastive as E
from crossentropy.torch.engine._gemm import Precision

__all__ = ["Layout", "RingCall", "agree", "bits_float", "float_bits", "guard", "run"]

_CALL = 0x434C_4950  # "CLIP": tells contrastive calls apart from other functions' exchanges
_FWD, _BWD = 1, 2
_BLOCK, _IDS, _COEF, _STATS, _ACC = 0, 1, 2, 3, 4


def float_bits(x: float) -> int:
    return int(struct.unpack("<q", struct.pack("<d", float(x)))[0])


def bits_float(b: int) -> float:
    return float(struct.unpack("<d", struct.pack("<q", int(b)))[0])


# ----------------------------------------------------------------------------------------------
# Agreement


@dataclass(frozen=True)
class Layout:
    """Who holds what: this rank, the world, every rank's row counts."""

    group: Any  # a ProcessGroup, or None in one process
    rank: int
    world: int
    n: tuple[int, ...]
    m: tuple[int, ...]

    @property
    def right(self) -> int:
        return (self.rank + 1) % self.world

    @property
    def left(self) -> int:
        return (self.rank - 1) % self.world


def _collective_device(group: Any) -> torch.device:
    backend = str(dist.get_backend(group))
    if "nccl" in backend and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def agree(
    fn: str,
    group: Any,
    fields: dict[str, int] | None,
    error: BaseException | None,
    describe: dict[str, str],
    decode: dict[str, Callable[[int], object]] | None = None,
) -> Layout:
    """All-gather every rank's fields (``n`` and ``m`` may differ, the others must not) and raise
    the same kind of error on every rank. ``fields`` is None when this rank's input was rejected
    (``error``); ``describe`` names a field in the messages, ``decode`` shows its value."""
    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    # the field names are the same on every rank that passed its checks; a rank that failed sends
    # zeros of the same length, which is known: every call has the same number of fields
    width = 2 + len(describe)
    row = [_CALL, 1 if error is not None or fields is None else 0]
    row += [0] * len(describe) if fields is None else [fields[k] for k in sorted(fields)]
    if len(row) != width:
        raise AssertionError("contrastive agreement: fields and descriptions differ")
    mine = torch.tensor(row, dtype=torch.int64, device=_collective_device(group))
    gathered = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(gathered, mine, group=group)
    table = [t.tolist() for t in gathered]
    if any(r[0] != _CALL for r in table):
        raise ValueError(
            f"{fn}: the ranks of the process group made different calls (some did not call "
            "contrastive_loss); every rank must make the same call"
        )
    if error is not None:
        raise error
    bad = [i for i, r in enumerate(table) if r[1]]
    if bad:
        raise ValueError(
            f"{fn}: rank(s) {bad} of the process group rejected their input (their own error "
            "message says why); no rank computed the loss"
        )
    assert fields is not None
    keys = sorted(fields)
    cols = {k: [r[2 + i] for r in table] for i, k in enumerate(keys)}
    for k in keys:
        if k in ("n", "m"):
            continue
        if len(set(cols[k])) > 1:
            show = (decode or {}).get(k, lambda v: v)
            per_rank = ", ".join(f"rank {i}: {show(v)}" for i, v in enumerate(cols[k]))
            raise ValueError(
                f"{fn}: the ranks disagree on {describe.get(k, k)} ({per_rank}); every rank of the "
                "process group must pass the same options, feature size, dtypes and scale"
            )
    return Layout(group, rank, world, tuple(cols["n"]), tuple(cols["m"]))


# ----------------------------------------------------------------------------------------------
# The ring


class _Ring:
    """P2P shifts to the right neighbour; sends are waited for lazily (a send completes only when
    the neighbour posts its receive, so waiting at once could make a cycle wait on itself)."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.pending: list[Any] = []

    def post(self, send: Sequence[tuple[int, Tensor]], recv: Sequence[tuple[int, Tensor]]) -> list:
        """Post sends to the right and receives from the left (tag, tensor); returns the receives'
        works. Receives are posted in the order the left neighbour sends (NCCL matches by order)."""
        lay = self.layout
        ops = [
            dist.P2POp(dist.isend, t, group=lay.group, tag=tag, group_peer=lay.right)
            for tag, t in send
        ]
        n_send = len(ops)
        ops += [
            dist.P2POp(dist.irecv, t, group=lay.group, tag=tag, group_peer=lay.left)
            for tag, t in recv
        ]
        if not ops:
            return []
        works = dist.batch_isend_irecv(ops)
        if len(works) != len(ops):
            # a coalesced batch (NCCL) has one work for all its ops: the caller waits on it before
            # reading what was received
            return list(works) if n_send < len(ops) else self._keep(works)
        self.pending.extend(works[:n_send])
        return works[n_send:]

    def _keep(self, works: Sequence[Any]) -> list:
        self.pending.extend(works)
        return []

    def finish(self) -> None:
        for w in self.pending:
            w.wait()
        self.pending = []


def _tag(phase: int, step: int, kind: int) -> int:
    return (phase << 20) + (step << 4) + kind


@dataclass
class RingCall:
    """Everything the ring needs besides the differentiable tensors."""

    spec: E.PairSpec
    layout: Layout
    prec: Precision
    a_ids: Tensor | None
    b_ids: Tensor | None
    scale: float  # the value of logit_scale, agreed across ranks (> 0)
    need_dbias: bool


def _merge_stats_(spec: E.PairSpec, acc: Tensor, part: Tensor) -> None:
    """Joins two partial statistics of the same rows (online logsumexp), into ``acc``."""
    if spec.kind != "softmax":
        acc.add_(part)
        return
    big = torch.maximum(acc[E.MAX], part[E.MAX])
    acc[E.SUMEXP].mul_(torch.exp(acc[E.MAX] - big)).add_(
        part[E.SUMEXP] * torch.exp(part[E.MAX] - big)
    )
    acc[E.MAX].copy_(big)
    acc[E.POSSUM].add_(part[E.POSSUM])
    acc[E.POSCOUNT].add_(part[E.POSCOUNT])


def _row_losses(spec: E.PairSpec, st: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
    """(loss, valid, lse) per row from complete statistics; rows without a positive give 0."""
    if spec.kind == "softmax":
        count = st[E.POSCOUNT]
        valid = count > 0
        lse = st[E.MAX] + st[E.SUMEXP].log()
        lse = torch.where(valid, lse, 0.0)
        loss = torch.where(valid, lse - st[E.POSSUM] / count.clamp(min=1.0), 0.0)
        return loss, valid, lse
    valid = st[E.POSCOUNT_SIG] > 0
    return torch.where(valid, st[E.LOSS], 0.0), valid, None


def _operand(t: Tensor, prec: Precision) -> Tensor:
    t = t.to(prec.operand)
    return t if prec.tensor_cores else t.to(prec.compute)


def _scaled_operand(a: Tensor, scale: float, prec: Precision) -> Tensor:
    """``t a`` as the logits GEMM's operand: scaled in the compute dtype and rounded to the operand
    dtype on tensor cores; elsewhere ``a`` rounded to the operand dtype (autocast) and scaled in
    the compute dtype, as ``b`` is rounded."""
    if prec.tensor_cores:
        return (a.to(prec.compute) * scale).to(prec.operand)
    return _operand(a, prec) * scale


def _forward(call: RingCall, a: Tensor, b: Tensor, bias: Tensor | None) -> tuple:
    spec, lay, prec = call.spec, call.layout, call.prec
    comp, dev = prec.compute, a.device
    a_side = E.Side(_scaled_operand(a, call.scale, prec), call.a_ids)
    rows = E.new_stats(spec, a.shape[0], comp, dev)
    ring = _Ring(lay)
    blk, ids = b, call.b_ids
    travelling: Tensor | None = None
    incoming_stats: list = []
    for k in range(lay.world):
        q = (lay.rank - k) % lay.world
        nxt = nxt_ids = None
        recv: list[tuple[int, Tensor]] = []
        if spec.columns and k >= 1:
            travelling = torch.empty(4, lay.m[q], dtype=comp, device=dev)
            recv.append((_tag(_FWD, k - 1, _STATS), travelling))
        send: list[tuple[int, Tensor]] = []
        if k < lay.world - 1:
            m_next = lay.m[(q - 1) % lay.world]
            nxt = torch.empty(m_next, b.shape[1], dtype=b.dtype, device=dev)
            send.append((_tag(_FWD, k, _BLOCK), blk))
            recv.append((_tag(_FWD, k, _BLOCK), nxt))
            if ids is not None:
                nxt_ids = torch.empty(m_next, dtype=ids.dtype, device=dev)
                send.append((_tag(_FWD, k, _IDS), ids))
                recv.append((_tag(_FWD, k, _IDS), nxt_ids))
        works = ring.post(send, recv)
        cols = E.new_stats(spec, blk.shape[0], comp, dev) if spec.columns else None
        E.forward_block(
            spec, a_side, E.Side(_operand(blk, prec), ids), k == 0, rows, cols, prec, bias
        )
        for w in works:
            w.wait()
        if cols is not None:
            if k >= 1:
                assert travelling is not None
                _merge_stats_(spec, travelling, cols)
                cols = travelling
            travelling = cols
            if lay.world > 1:
                ring.post([(_tag(_FWD, k, _STATS), cols)], [])
        if nxt is not None:
            blk, ids = nxt, nxt_ids
    own_cols = travelling
    if spec.columns and lay.world > 1:
        own_cols = torch.empty(4, b.shape[0], dtype=comp, device=dev)
        incoming_stats = ring.post([], [(_tag(_FWD, lay.world - 1, _STATS), own_cols)])
        for w in incoming_stats:
            w.wait()
    ring.finish()
    return rows, own_cols


def _coef(spec: E.PairSpec, st: Tensor, g: Tensor | None, comp: torch.dtype) -> E.Coef:
    loss, valid, lse = _row_losses(spec, st)
    gg = torch.zeros_like(loss) if g is None else torch.where(valid, g.to(comp), 0.0)
    if spec.kind == "softmax":
        w = gg / st[E.POSCOUNT].clamp(min=1.0)
        return E.Coef(lse, gg, w)
    return E.Coef(None, gg, None)


def _backward(
    call: RingCall,
    a: Tensor,
    b: Tensor,
    bias: Tensor | None,
    rows: Tensor,
    own_cols: Tensor | None,
    g_a: Tensor | None,
    g_b: Tensor | None,
    need: tuple[bool, bool, bool, bool],
) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    spec, lay, prec = call.spec, call.layout, call.prec
    comp, dev = prec.compute, a.device
    need_a, need_b, need_t, need_bias = need
    a_c = _operand(a, prec).to(comp)  # the values the GEMMs multiply (rounded under autocast)
    a_side = E.Side(_scaled_operand(a, call.scale, prec), call.a_ids)
    rc = _coef(spec, rows, g_a, comp)
    # symmetric softmax: d/dt has a part from each direction, and the columns' part belongs to the
    # block's owner (it travels home with d b); otherwise every term is this rank's own
    dt_tiles = spec.columns and need_t
    da = (
        torch.zeros(a.shape, dtype=comp, device=dev)
        if need_a or (need_t and not dt_tiles)
        else None
    )
    dt_rows = torch.zeros((), dtype=comp, device=dev)
    dbias = torch.zeros((), dtype=comp, device=dev)
    d = b.shape[1]

    # what travels home with a block: d b (m d) and the columns' d/dt (1)
    def acc_len(m: int) -> int:
        return m * d * int(need_b) + int(dt_tiles)

    ring = _Ring(lay)
    blk, ids = b, call.b_ids
    ccoef = None
    if spec.columns:
        assert own_cols is not None
        c = _coef(spec, own_cols, g_b, comp)
        assert c.lse is not None and c.w is not None
        ccoef = torch.stack([c.lse, c.g, c.w])
    incoming: Tensor | None = None
    for k in range(lay.world):
        q = (lay.rank - k) % lay.world
        m_q = lay.m[q]
        send: list[tuple[int, Tensor]] = []
        recv: list[tuple[int, Tensor]] = []
        travels = acc_len(1) > 0 and lay.world > 1
        if k >= 1 and travels:
            incoming = torch.empty(acc_len(m_q), dtype=comp, device=dev)
            recv.append((_tag(_BWD, k - 1, _ACC), incoming))
        nxt = nxt_ids = nxt_coef = None
        if k < lay.world - 1:
            m_next = lay.m[(q - 1) % lay.world]
            nxt = torch.empty(m_next, d, dtype=b.dtype, device=dev)
            send.append((_tag(_BWD, k, _BLOCK), blk))
            recv.append((_tag(_BWD, k, _BLOCK), nxt))
            if ids is not None:
                nxt_ids = torch.empty(m_next, dtype=ids.dtype, device=dev)
                send.append((_tag(_BWD, k, _IDS), ids))
                recv.append((_tag(_BWD, k, _IDS), nxt_ids))
            if ccoef is not None:
                nxt_coef = torch.empty(3, m_next, dtype=comp, device=dev)
                send.append((_tag(_BWD, k, _COEF), ccoef))
                recv.append((_tag(_BWD, k, _COEF), nxt_coef))
        works = ring.post(send, recv)
        flat = torch.zeros(acc_len(m_q), dtype=comp, device=dev)
        db = flat[: m_q * d].view(m_q, d) if need_b else None
        dt_cols = flat[-1] if dt_tiles else torch.zeros((), dtype=comp, device=dev)
        grads = E.BlockGrads(da, db, dt_rows, dt_cols, dbias)
        cc = None
        if ccoef is not None:
            cc = E.Coef(ccoef[0], ccoef[1], ccoef[2])
        b_op = _operand(blk, prec)
        E.backward_block(
            spec,
            a_side,
            E.Side(b_op, ids),
            b_op,
            k == 0,
            rc,
            cc,
            grads,
            prec,
            bias,
            want_dt_tiles=dt_tiles,
            want_dbias=need_bias and spec.kind == "sigmoid",
        )
        for w in works:
            w.wait()
        if k >= 1 and incoming is not None:
            flat.add_(incoming)
        if travels:
            ring.post([(_tag(_BWD, k, _ACC), flat)], [])
        mine = flat
        if nxt is not None:
            blk, ids, ccoef = nxt, nxt_ids, nxt_coef if nxt_coef is not None else ccoef
    if lay.world > 1 and acc_len(1) > 0:
        mine = torch.empty(acc_len(b.shape[0]), dtype=comp, device=dev)
        for w in ring.post([], [(_tag(_BWD, lay.world - 1, _ACC), mine)]):
            w.wait()
    ring.finish()
    grad_a = grad_b = grad_t = grad_bias = None
    if need_a:
        assert da is not None
        grad_a = (da * call.scale).to(a.dtype)
    if need_b:
        grad_b = mine[: b.shape[0] * d].view(b.shape[0], d).to(b.dtype)
    if need_t:
        if dt_tiles:
            grad_t = (dt_rows + mine[-1]) / call.scale
        else:
            assert da is not None
            grad_t = torch.dot(a_c.reshape(-1), da.reshape(-1))
    if need_bias:
        grad_bias = dbias
    return grad_a, grad_b, grad_t, grad_bias


class _ContrastiveRing(torch.autograd.Function):
    """(loss of the A rows, loss of the B rows, their validity masks) with the ring's gradients."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, a: Tensor, b: Tensor, scale: Tensor, bias: Tensor | None, call: RingCall
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        # the precision was resolved at the entry (autocast included); the GEMMs here must not be
        # recast by an enclosing autocast region
        with torch.autocast(a.device.type, enabled=False):
            rows, own_cols = _forward(call, a, b, bias)
        loss_a, valid_a, _ = _row_losses(call.spec, rows)
        if own_cols is not None:
            loss_b, valid_b, _ = _row_losses(call.spec, own_cols)
        else:
            loss_b = torch.zeros(b.shape[0], dtype=loss_a.dtype, device=a.device)
            valid_b = torch.zeros(b.shape[0], dtype=torch.bool, device=a.device)
        ctx.call = call
        ctx.save_for_backward(a, b, bias, rows, own_cols)
        ctx.mark_non_differentiable(valid_a, valid_b)
        return loss_a, loss_b, valid_a, valid_b

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g_a: Tensor | None, g_b: Tensor | None, *_: Any) -> Any:  # type: ignore[override]
        a, b, bias, rows, own_cols = ctx.saved_tensors
        call: RingCall = ctx.call
        need = (
            ctx.needs_input_grad[0],
            ctx.needs_input_grad[1],
            ctx.needs_input_grad[2],
            ctx.needs_input_grad[3] if bias is not None else False,
        )
        with torch.autocast(a.device.type, enabled=False):
            grads = _backward(call, a, b, bias, rows, own_cols, g_a, g_b, need)
        grad_t = grads[2].reshape(()) if grads[2] is not None else None
        grad_bias = grads[3].reshape(()) if grads[3] is not None else None
        return grads[0], grads[1], grad_t, grad_bias, None


def run(
    call: RingCall, a: Tensor, b: Tensor, scale: Tensor, bias: Tensor | None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-row losses of the A rows (n,) and B rows (m,) (zeros where not anchors), and the masks
    of the rows that count. ``scale`` (0-d, the compute dtype) carries the gradient of t; its value
    is ``call.scale``. ``bias`` (0-d) is added to the sigmoid loss's logits."""
    out: tuple[Tensor, Tensor, Tensor, Tensor] = _ContrastiveRing.apply(a, b, scale, bias, call)
    return out


def guard(thunk: Callable[[], Any]) -> tuple[Any, BaseException | None]:
    """``thunk()`` with its TypeError/ValueError caught, for :func:`agree`."""
    try:
        return thunk(), None
    except (TypeError, ValueError) as exc:
        return None, exc
