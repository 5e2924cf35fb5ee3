"""Keras 3 losses with crossentropy's extras (ignore_class with label smoothing, z-loss, focal).

Importing this package imports Keras (``crossentropy[keras]``); ``import crossentropy`` does not.
The classes are registered for Keras serialisation under the package name ``"crossentropy"``.
"""

from crossentropy.keras._losses import (
    SparseCategoricalCrossentropy,
    SparseCategoricalFocalCrossentropy,
)

__all__ = [
    "SparseCategoricalCrossentropy",
    "SparseCategoricalFocalCrossentropy",
]
