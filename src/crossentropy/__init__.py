"""crossentropy: cross-entropy from the information-theory definition to large-vocabulary training.

The core works on NumPy arrays and any array-API array and needs no deep-learning framework.
Framework layers load lazily: ``crossentropy.torch``, ``crossentropy.hf``, ``crossentropy.keras``.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = [
    "__version__",
]
