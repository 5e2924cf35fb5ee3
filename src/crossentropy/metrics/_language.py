"""Language-model summaries of a negative log-likelihood: perplexity, bits per token and per byte.

All three take ``nll``, negative log-likelihoods in nats: either a per-token array
(``-log p(token)``, e.g. ``-log_probs``) or a single total. The total is ``sum(nll)`` and the
number of tokens defaults to the number of entries, so a scalar with no ``n_tokens`` is read as a
mean NLL per token, and a scalar with ``n_tokens`` as a total over that many tokens.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from crossentropy._array import ArrayLike
from crossentropy.metrics._validation import to_numpy

__all__ = ["bits_per_byte", "bits_per_token", "perplexity"]


def _total_nll(nll: Any) -> tuple[float, int]:
    """``(sum of nll, number of entries)`` after checking the entries are NLLs in nats."""
    a = to_numpy(nll, "nll")
    if a.dtype.kind not in "biuf":
        raise TypeError(f"nll must be numeric (negative log-likelihoods in nats); got {a.dtype}")
    if a.size == 0:
        raise ValueError("nll is empty; need at least one token")
    a = a.astype(np.float64, copy=False)
    lo = float(np.min(a))
    if math.isnan(lo) or np.any(np.isnan(a)):
        raise ValueError("nll contains NaN")
    if lo < 0:
        raise ValueError(
            f"nll must be non-negative (negative log-likelihoods); got {lo!r}. Pass -log_probs "
            "if you have log-probabilities"
        )
    return float(np.sum(a)), int(a.size)


def _count(value: Any, name: str, default: int) -> float:
    if value is None and default > 0:
        return float(default)
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a positive number; got {value!r}")
    if not math.isfinite(float(value)) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number; got {value!r}")
    return float(value)


def _mean_nll(nll: Any, n_tokens: Any) -> float:
    total, size = _total_nll(nll)
    return total / _count(n_tokens, "n_tokens", size)


def perplexity(nll: ArrayLike, n_tokens: float | None = None) -> np.float64:
    r"""Perplexity: the exponential of the mean negative log-likelihood per token.

    .. math::

        \mathrm{PPL} = \exp\Big(\frac{1}{T}\sum_{t=1}^{T} -\log p(x_t \mid x_{<t})\Big)

    Args:
        nll: per-token NLLs in nats, any shape, or a total (with ``n_tokens``) or mean (without).
        n_tokens: number of tokens :math:`T`; default the number of entries of ``nll``.

    Returns:
        The perplexity as a NumPy float64 scalar, at least 1 (``inf`` when a token had
        probability 0).

    Example:
        >>> import numpy as np
        >>> from crossentropy.metrics import perplexity
        >>> round(float(perplexity(-np.log([0.5, 0.25]))), 4)  # geometric mean of 2 and 4
        2.8284
        >>> round(float(perplexity(np.log(10.0))), 4)  # a mean NLL of ln 10
        10.0
    """
    mean = _mean_nll(nll, n_tokens)
    return np.float64(math.exp(mean) if mean < 709.0 else math.inf)


def bits_per_token(nll: ArrayLike, n_tokens: float | None = None) -> np.float64:
    r"""Mean negative log-likelihood per token in bits (the cross-entropy rate in base 2).

    .. math::

        \mathrm{bpt} = \frac{1}{T \ln 2}\sum_{t=1}^{T} -\ln p(x_t \mid x_{<t}) = \log_2 \mathrm{PPL}

    Args:
        nll: per-token NLLs in nats, or a total (with ``n_tokens``) or mean (without).
        n_tokens: number of tokens :math:`T`; default the number of entries of ``nll``.

    Returns:
        Bits per token as a NumPy float64 scalar.

    Example:
        >>> import numpy as np
        >>> from crossentropy.metrics import bits_per_token
        >>> round(float(bits_per_token(-np.log([0.5, 0.25]))), 4)
        1.5
    """
    return np.float64(_mean_nll(nll, n_tokens) / math.log(2))


def bits_per_byte(nll: ArrayLike, n_bytes: float) -> np.float64:
    r"""Total negative log-likelihood in bits divided by the number of bytes of the text.

    Unlike bits per token this does not depend on the tokenizer, so models with different
    vocabularies can be compared on the same text (the measure used for the Pile, Gao et al. 2020).

    .. math::

        \mathrm{bpb} = \frac{1}{B \ln 2}\sum_{t=1}^{T} -\ln p(x_t \mid x_{<t})

    Args:
        nll: per-token NLLs in nats (summed), or the total NLL of the text as a scalar.
        n_bytes: number of bytes :math:`B` of the text (e.g. ``len(text.encode("utf-8"))``).

    Returns:
        Bits per byte as a NumPy float64 scalar.

    References:
        L. Gao et al., "The Pile: An 800GB Dataset of Diverse Text for Language Modeling", 2020.

    Example:
        >>> import math
        >>> from crossentropy.metrics import bits_per_byte
        >>> round(float(bits_per_byte(12 * math.log(2), n_bytes=8)), 4)  # 12 bits over 8 bytes
        1.5
    """
    total, _ = _total_nll(nll)
    return np.float64(total / (_count(n_bytes, "n_bytes", 0) * math.log(2)))
