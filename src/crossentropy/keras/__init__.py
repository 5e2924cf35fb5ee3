"""Keras 3 losses with crossentropy's extras (ignore_class with label smoothing, z-loss, focal).

Importing this package imports Keras (``crossentropy[keras]``); ``import crossentropy`` does not.
Keras runs on the backend named by the ``KERAS_BACKEND`` environment variable, TensorFlow when it
is unset; ``KERAS_BACKEND=torch`` runs it on PyTorch. A backend that cannot be imported is
reported in one :class:`ImportError` that says so. The classes are registered for Keras
serialisation under the package name ``"crossentropy"``.
"""

from crossentropy.keras import _backend

_backend.import_keras()

from crossentropy.keras._losses import (  # noqa: E402
    SparseCategoricalCrossentropy,
    SparseCategoricalFocalCrossentropy,
)

__all__ = [
    "SparseCategoricalCrossentropy",
    "SparseCategoricalFocalCrossentropy",
]
