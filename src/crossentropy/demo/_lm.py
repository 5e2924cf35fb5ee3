"""A small next-symbol model trained by minimising cross-entropy, with a fused output layer.

The model maps the previous ``order`` symbols to a hidden vector (an embedding, then a two-layer
MLP); the output layer and the loss are one call to
:func:`crossentropy.torch.linear_cross_entropy`, so the ``(batch, K)`` logits are never kept for
the backward pass. Minimising the mean loss over samples from a source minimises

.. math::

    \\mathbb{E}[-\\log q(x \\mid c)] = H(X \\mid C) + \\mathrm{KL}(P \\,\\|\\, Q),

the source's entropy rate plus the divergence of the model from it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from crossentropy.demo._source import contexts_of

if TYPE_CHECKING:
    import torch

LN2 = math.log(2.0)


def build_model(
    n_symbols: int, order: int, *, joint_context: bool, width: int = 128, dim: int = 64
) -> Any:
    """The context model as a ``torch.nn.Module`` with ``hidden(contexts)`` and ``weight``/``bias``.

    ``joint_context=True`` gives every one of the ``K**order`` contexts its own embedding (fast to
    fit when contexts are few); ``False`` embeds each previous symbol separately and concatenates
    (for bytes, where ``256**order`` contexts are too many to learn one by one).
    """
    import torch
    from torch import nn

    class ContextModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.n_symbols = n_symbols
            self.order = order
            self.joint_context = joint_context
            if joint_context:
                self.embed = nn.Embedding(n_symbols**order, dim)
                d_in = dim
            else:
                self.embed = nn.Embedding(n_symbols * order, dim // 2)
                d_in = (dim // 2) * order
            self.mlp = nn.Sequential(nn.Linear(d_in, width), nn.GELU(), nn.Linear(width, dim))
            # The output layer: its weight and bias go to linear_cross_entropy, not to an nn.Linear.
            self.weight = nn.Parameter(torch.randn(n_symbols, dim) / math.sqrt(dim) * 0.1)
            self.bias = nn.Parameter(torch.zeros(n_symbols))

        def hidden(self, context: torch.Tensor) -> torch.Tensor:
            """Hidden vectors ``(n, dim)`` for context indices ``(n,)`` (int64, base ``K``)."""
            if self.joint_context:
                return self.mlp(self.embed(context))
            k = self.n_symbols
            digits = [(context // k ** (self.order - 1 - j)) % k + j * k for j in range(self.order)]
            return self.mlp(self.embed(torch.stack(digits, dim=1)).flatten(1))

        def log_probs(self, context: torch.Tensor) -> torch.Tensor:
            """Log-probabilities ``(n, K)`` of the next symbol (for evaluation and coding)."""
            h = self.hidden(context)
            logits = torch.nn.functional.linear(h, self.weight, self.bias)
            return torch.log_softmax(logits.float(), dim=-1)

    return ContextModel()


@dataclass
class TrainHistory:
    """Loss curves in bits per symbol."""

    steps: list[int] = field(default_factory=list)
    train_bits: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    val_bits: list[float] = field(default_factory=list)


def make_pairs(
    sequences: npt.NDArray[np.int64], n_symbols: int, order: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(context index, next symbol) pairs of every position ``t >= order`` of each row."""
    seq = np.atleast_2d(sequences)
    ctx = contexts_of(seq, n_symbols, order).reshape(-1)
    return ctx, seq[:, order:].reshape(-1)


def train_model(
    model: Any,
    train: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]],
    val: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    device: torch.device,
    seed: int,
    n_evals: int = 20,
    on_step: Callable[[int, float, float | None], None] | None = None,
) -> TrainHistory:
    """Minimise the mean cross-entropy of ``model`` on ``train`` pairs with Adam (one-cycle lr).

    ``on_step(step, smoothed_train_bits, last_val_bits)`` is called after every step (for a
    progress bar). Returns the loss curves, in bits per symbol.
    """
    import torch

    from crossentropy.torch import linear_cross_entropy

    model.to(device)
    x = torch.as_tensor(train[0], device=device)
    y = torch.as_tensor(train[1], device=device)
    n = x.shape[0]
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    history = TrainHistory()
    eval_every = max(1, steps // n_evals)
    smoothed: float | None = None
    last_val: float | None = None
    for step in range(1, steps + 1):
        idx = torch.randint(0, n, (batch_size,), generator=gen).to(device)
        h = model.hidden(x[idx])
        loss = linear_cross_entropy(h, model.weight, y[idx], linear_bias=model.bias)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bits = float(loss.detach()) / LN2
        smoothed = bits if smoothed is None else 0.9 * smoothed + 0.1 * bits
        history.steps.append(step)
        history.train_bits.append(bits)
        if step == 1 or step % eval_every == 0 or step == steps:
            last_val = evaluate_bits(model, val, device)
            history.eval_steps.append(step)
            history.val_bits.append(last_val)
        if on_step is not None:
            on_step(step, smoothed, last_val)
    return history


def evaluate_bits(
    model: Any,
    pairs: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]],
    device: torch.device,
) -> float:
    """Mean cross-entropy of ``model`` on (context, symbol) pairs, in bits per symbol."""
    return float(per_symbol_bits(model, pairs, device).mean())


def per_symbol_bits(
    model: Any,
    pairs: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]],
    device: torch.device,
    chunk: int = 65536,
) -> npt.NDArray[np.float64]:
    """``-log2 q(x_t | c_t)`` for each pair, float64."""
    import torch

    from crossentropy.torch import linear_cross_entropy

    ctx, sym = pairs
    out = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, ctx.shape[0], chunk):
            c = torch.as_tensor(ctx[start : start + chunk], device=device)
            s = torch.as_tensor(sym[start : start + chunk], device=device)
            nats = linear_cross_entropy(
                model.hidden(c), model.weight, s, linear_bias=model.bias, reduction="none"
            )
            out.append(nats.double().cpu().numpy() / LN2)
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros(0)


def probability_table(
    model: Any, device: torch.device, chunk: int = 8192
) -> npt.NDArray[np.float64]:
    """The model's next-symbol probabilities for every context, ``(K**order, K)`` float64 (so that
    a probability below float32's range is still positive)."""
    import torch

    n_ctx = model.n_symbols**model.order
    rows = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, n_ctx, chunk):
            c = torch.arange(start, min(start + chunk, n_ctx), device=device)
            rows.append(model.log_probs(c).double().exp().cpu().numpy())
    model.train(was_training)
    return np.concatenate(rows)
