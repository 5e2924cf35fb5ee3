"""PyTorch layer: torch-exact cross-entropy, fused linear cross-entropy, losses as nn.Modules."""

from crossentropy.torch._functional import cross_entropy, linear_cross_entropy
from crossentropy.torch._reduce import CrossEntropyAux

__all__ = [
    "CrossEntropyAux",
    "cross_entropy",
    "linear_cross_entropy",
]
