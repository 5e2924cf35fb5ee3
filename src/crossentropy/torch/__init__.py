"""PyTorch layer: torch-exact cross-entropy, fused linear cross-entropy, losses as nn.Modules.

Import this package only when torch is installed (``pip install 'crossentropy[torch]'``).
"""

from crossentropy.torch._functional import cross_entropy, linear_cross_entropy
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
    "cross_entropy",
    "linear_cross_entropy",
]
