"""Run the Triton kernels on CPU through the interpreter unless a CUDA GPU is present.

TRITON_INTERPRET is read when a kernel is decorated, i.e. when ``crossentropy.triton`` is first
imported, so it is set here, at conftest import time, before any test module of this folder
imports the kernels. With a GPU the same small-shape tests run compiled on it instead.
"""

import os

try:
    import torch

    _HAS_CUDA = torch.cuda.is_available()
except ImportError:  # pragma: no cover - torch is part of the dev environment
    _HAS_CUDA = False

if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
