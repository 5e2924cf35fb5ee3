"""crossentropy: cross-entropy from the information-theory definition to large-vocabulary training.

The core works on NumPy arrays and any array-API array and needs no deep-learning framework.
Framework layers load lazily: ``crossentropy.torch``, ``crossentropy.hf``, ``crossentropy.keras``.
"""

from __future__ import annotations

from ._info import (
    cross_entropy,
    entropy,
    js_divergence,
    kl_divergence,
)
from ._losses import (
    binary_cross_entropy,
    focal_loss,
    sigmoid_cross_entropy,
    softmax_cross_entropy,
)
from ._softmax import (
    log_softmax,
    logsumexp,
    softmax,
)
from ._tolerance import (
    row_sum_tolerance,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "binary_cross_entropy",
    "cross_entropy",
    "entropy",
    "focal_loss",
    "js_divergence",
    "kl_divergence",
    "log_softmax",
    "logsumexp",
    "row_sum_tolerance",
    "sigmoid_cross_entropy",
    "softmax",
    "softmax_cross_entropy",
]
