"""Triton kernels: softmax cross-entropy on given logits and fused linear cross-entropy.

Both entry points return per-row ``(ce_rows, lse_rows)`` (float32, shape (N,)) with exact
gradients; reductions, z-loss and aux outputs live in :mod:`crossentropy.torch`. CUDA tensors run
compiled kernels; CPU tensors run only under the Triton interpreter (``TRITON_INTERPRET=1`` set
before this package is first imported), which is how CI tests them.
"""

_HINT = "pip install 'crossentropy[triton]', or use impl='torch' for the pure-PyTorch path"
try:
    import triton
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(f"crossentropy.triton needs the 'triton' package ({_HINT}): {exc}") from exc
if not hasattr(triton, "jit"):  # pragma: no cover - e.g. a stray 'triton' folder on sys.path
    raise ImportError(
        f"crossentropy.triton: 'import triton' found {getattr(triton, '__path__', triton)!r}, "
        f"not the Triton compiler ({_HINT})"
    )

from crossentropy.triton._linear_ce import (  # noqa: E402
    linear_ce_backward,
    linear_ce_forward,
    linear_ce_rows,
)
from crossentropy.triton._softmax_ce import (  # noqa: E402
    softmax_ce_backward,
    softmax_ce_forward,
    softmax_ce_rows,
)

__all__ = [
    "linear_ce_backward",
    "linear_ce_forward",
    "linear_ce_rows",
    "softmax_ce_backward",
    "softmax_ce_forward",
    "softmax_ce_rows",
]
