"""Triton kernels: softmax cross-entropy on given logits and fused linear cross-entropy.

Both entry points return per-row ``(ce_rows, lse_rows)`` (float32, shape (N,)) with exact
gradients; reductions, z-loss and aux outputs live in :mod:`crossentropy.torch`. CUDA tensors run
compiled kernels; CPU tensors run only under the Triton interpreter (``TRITON_INTERPRET=1`` set
before this package is first imported), which is how CI tests them.
"""

try:
    import triton  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "crossentropy.triton needs the 'triton' package (pip install 'crossentropy[triton]'); "
        f"importing it failed: {exc}. Use impl='torch' for the pure-PyTorch path."
    ) from exc

from crossentropy.triton._linear_ce import linear_ce_rows
from crossentropy.triton._softmax_ce import softmax_ce_rows

__all__ = [
    "linear_ce_rows",
    "softmax_ce_rows",
]
