"""PyTorch layer: torch-exact cross-entropy, fused linear cross-entropy, losses as nn.Modules.

Import this package only when torch is installed (``pip install 'crossentropy[torch]'``).
"""

from crossentropy.torch._data_parallel import global_valid_count
from crossentropy.torch._dispatch import explain
from crossentropy.torch._distill import linear_distillation_loss
from crossentropy.torch._extras import bce_with_logits as binary_cross_entropy_with_logits
from crossentropy.torch._extras import focal_loss
from crossentropy.torch._functional import cross_entropy, linear_cross_entropy
from crossentropy.torch._logprobs import LogProbs, linear_logprobs
from crossentropy.torch._modules import (
    BCEWithLogitsLoss,
    CrossEntropyLoss,
    FocalLoss,
    LinearCrossEntropyLoss,
)
from crossentropy.torch._reduce import CrossEntropyAux

__all__ = [
    "BCEWithLogitsLoss",
    "CrossEntropyAux",
    "CrossEntropyLoss",
    "FocalLoss",
    "LinearCrossEntropyLoss",
    "LogProbs",
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "explain",
    "focal_loss",
    "global_valid_count",
    "linear_cross_entropy",
    "linear_distillation_loss",
    "linear_logprobs",
]
