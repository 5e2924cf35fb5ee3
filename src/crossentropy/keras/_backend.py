"""Import Keras, turning a missing Keras or a missing backend into one clear ``ImportError``."""

from __future__ import annotations

import importlib
import os

__all__ = ["import_keras"]

_HINT = (
    "set KERAS_BACKEND=torch to run Keras on PyTorch (pip install 'crossentropy[keras,torch]'), "
    "or install the backend Keras asks for"
)


def import_keras() -> None:
    """Import ``keras`` once; on failure raise an ``ImportError`` naming the fix.

    Keras imports its backend while it is imported itself: TensorFlow unless ``KERAS_BACKEND`` (or
    ``~/.keras/keras.json``) names another. Without TensorFlow that fails deep inside Keras with a
    long traceback about ``tensorflow``; this says what to do instead, with the chain cut.

    Raises:
        ImportError: Keras is not installed, or its backend cannot be imported.
    """
    try:
        importlib.import_module("keras")
    except ImportError as exc:
        missing = (exc.name or "").split(".")[0]
        if missing == "keras":
            raise ImportError(
                "crossentropy.keras needs Keras 3, which is not installed: "
                "pip install 'crossentropy[keras]'"
            ) from None
        backend = os.environ.get("KERAS_BACKEND")
        chosen = (
            f"KERAS_BACKEND={backend}"
            if backend
            else "KERAS_BACKEND is not set, so Keras uses its default backend, TensorFlow"
        )
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ImportError(
            f"crossentropy.keras: Keras could not import its backend ({chosen}; {reason}); {_HINT}"
        ) from None
