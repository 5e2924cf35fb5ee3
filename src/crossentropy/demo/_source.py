"""A seeded random Markov source whose entropy rate is known exactly.

The source emits symbols from ``{0, ..., K-1}``; the next symbol depends on the previous ``order``
symbols (the *context*) through a row of transition probabilities drawn from a symmetric Dirichlet
distribution. Seen as a first-order chain on the ``K**order`` contexts it is irreducible and
aperiodic (every row is mixed with a tiny uniform floor), so it has one stationary distribution
:math:`\\pi` and its entropy rate is

.. math::

    H = \\sum_c \\pi(c) \\, H(P(\\cdot \\mid c)) = -\\sum_c \\pi(c) \\sum_x P(x \\mid c) \\log_2 P(x \\mid c)

in bits per symbol: the expected code length of the next symbol under the true model, and the floor
below which no model's expected cross-entropy can go.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

# Mixed into every Dirichlet row so that no transition has probability zero: the chain is then
# ergodic (one stationary distribution) and no finite model is told a symbol is impossible.
_UNIFORM_FLOOR = 1e-3


@dataclass(frozen=True)
class MarkovSource:
    """A Markov source over ``n_symbols`` symbols with a context of ``order`` previous symbols.

    Attributes:
        transition: ``(n_symbols**order, n_symbols)`` float64; row ``c`` is ``P(next | context c)``.
            Context index ``c`` encodes the previous symbols ``(x[t-order], ..., x[t-1])`` in base
            ``n_symbols``, most recent symbol last (least significant).
        n_symbols: alphabet size ``K``.
        order: number of previous symbols the next one depends on.
    """

    transition: FloatArray
    n_symbols: int
    order: int

    @property
    def n_contexts(self) -> int:
        return int(self.n_symbols**self.order)

    def context_transition_matrix(self) -> FloatArray:
        """The ``(K**order, K**order)`` transition matrix of the chain on contexts."""
        n_ctx, k = self.n_contexts, self.n_symbols
        matrix = np.zeros((n_ctx, n_ctx))
        ctx = np.arange(n_ctx)
        for x in range(k):
            matrix[ctx, next_context(ctx, x, k, self.order)] += self.transition[:, x]
        return matrix

    def stationary(self) -> FloatArray:
        """The exact stationary distribution over contexts, ``pi @ M = pi`` with ``sum(pi) = 1``."""
        return stationary_distribution(self.context_transition_matrix())

    def entropy_rate(self) -> float:
        """The exact entropy rate in bits per symbol."""
        return entropy_rate(self.transition, self.stationary())

    def log2_prob(self, sequence: IntArray) -> FloatArray:
        """``log2 P(x[t] | x[t-order:t])`` for ``t >= order`` (along the last axis), float64."""
        ctx = contexts_of(sequence, self.n_symbols, self.order)
        return np.log2(self.transition[ctx, np.asarray(sequence)[..., self.order :]])

    def sample(
        self,
        n_chains: int,
        length: int,
        rng: np.random.Generator,
        stationary: FloatArray | None = None,
    ) -> IntArray:
        """Draw ``n_chains`` independent stationary sequences of ``length`` symbols, int64.

        ``stationary`` may pass :meth:`stationary` when the caller has it already.
        """
        if length < self.order:
            raise ValueError(f"sample: length must be at least order={self.order}, got {length}")
        k, order = self.n_symbols, self.order
        out = np.empty((n_chains, length), dtype=np.int64)
        # Start each chain from the stationary distribution of contexts, so that every position of
        # every chain has the stationary law and sample averages estimate H without a burn-in bias.
        pi = self.stationary() if stationary is None else stationary
        start = rng.choice(self.n_contexts, size=n_chains, p=pi)
        for j in range(order):
            out[:, j] = (start // k ** (order - 1 - j)) % k
        cumulative = np.cumsum(self.transition, axis=1)
        cumulative[:, -1] = 1.0
        ctx = start
        uniforms = rng.random((n_chains, length))
        n_ctx = self.n_contexts
        for t in range(order, length):
            # Inverse-CDF sampling of every chain's next symbol at once.
            x = (uniforms[:, t, None] > cumulative[ctx]).sum(axis=1)
            out[:, t] = x
            ctx = (ctx * k) % n_ctx + x
        return out


def random_source(
    n_symbols: int, order: int, concentration: float, rng: np.random.Generator
) -> MarkovSource:
    """Draw a :class:`MarkovSource` with symmetric-Dirichlet(``concentration``) transition rows."""
    if n_symbols < 2 or n_symbols > 256:
        raise ValueError(f"random_source: n_symbols must be in [2, 256], got {n_symbols}")
    if order < 1:
        raise ValueError(f"random_source: order must be at least 1, got {order}")
    if not concentration > 0:
        raise ValueError(f"random_source: concentration must be positive, got {concentration}")
    rows = rng.dirichlet(np.full(n_symbols, concentration), size=n_symbols**order)
    rows = (1.0 - _UNIFORM_FLOOR) * rows + _UNIFORM_FLOOR / n_symbols
    rows /= rows.sum(axis=1, keepdims=True)
    return MarkovSource(transition=rows, n_symbols=n_symbols, order=order)


def next_context(ctx: IntArray | int, x: IntArray | int, n_symbols: int, order: int) -> IntArray:
    """The context after emitting ``x`` in context ``ctx`` (drop the oldest symbol, append ``x``)."""
    return np.asarray((np.asarray(ctx) * n_symbols) % (n_symbols**order) + np.asarray(x))


def contexts_of(sequence: IntArray, n_symbols: int, order: int) -> IntArray:
    """Context index of every position ``t >= order`` of ``sequence`` (shape ``(n - order,)``)."""
    seq = np.asarray(sequence, dtype=np.int64)
    n = seq.shape[-1]
    ctx = np.zeros((*seq.shape[:-1], n - order), dtype=np.int64)
    for j in range(order):
        ctx = ctx * n_symbols + seq[..., j : n - order + j]
    return ctx


def stationary_distribution(matrix: FloatArray) -> FloatArray:
    """The stationary distribution of an ergodic row-stochastic ``matrix``.

    Solves :math:`\\pi (M - I) = 0` with :math:`\\sum \\pi = 1` directly (one balance equation is
    redundant and is replaced by the normalisation), in float64.
    """
    n = matrix.shape[0]
    system = matrix.T - np.eye(n)
    system[-1, :] = 1.0
    rhs = np.zeros(n)
    rhs[-1] = 1.0
    pi = np.linalg.solve(system, rhs)
    # Round-off can leave values like -1e-18 on states of negligible mass.
    pi = np.clip(pi, 0.0, None)
    return np.asarray(pi / pi.sum())


def entropy_rate(transition: FloatArray, stationary: FloatArray) -> float:
    """``sum_c pi(c) H(P(.|c))`` in bits, with ``0 log 0 = 0``."""
    with np.errstate(divide="ignore"):
        logs = np.where(transition > 0, np.log2(np.where(transition > 0, transition, 1.0)), 0.0)
    row_entropy = -(transition * logs).sum(axis=1)
    return float(stationary @ row_entropy)
