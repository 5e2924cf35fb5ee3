"""``crossentropy info``: versions, devices and which implementations can run here."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import platform

# (module imported, distribution that installs it)
_PACKAGES = (
    ("numpy", "numpy"),
    ("torch", "torch"),
    ("triton", "triton"),
    ("transformers", "transformers"),
    ("keras", "keras"),
    ("scipy", "scipy"),
    ("sklearn", "scikit-learn"),
    ("pyarrow", "pyarrow"),
)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("info", help="versions, devices and the implementations that can run")
    parser.set_defaults(func=run)


def _status(module: str, dist: str) -> tuple[str, bool]:
    """(what to print, whether the import works) for one package."""
    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed", False
    try:
        importlib.import_module(module)
    except Exception as exc:  # installed but broken, e.g. keras without its default backend
        reason = " ".join(str(exc).split())[:120] or type(exc).__name__
        hint = "; KERAS_BACKEND=torch selects PyTorch" if module == "keras" else ""
        return f"{version} (installed, import failed: {reason}{hint})", False
    return version, True


def run(args: argparse.Namespace) -> int:
    from crossentropy import __version__

    rows = [("crossentropy", __version__), ("python", platform.python_version())]
    works: dict[str, bool] = {}
    for module, dist in _PACKAGES:
        text, works[module] = _status(module, dist)
        rows.append((module, text))
    if works["torch"]:
        import torch

        cuda = torch.cuda.is_available()
        rows.append(("device", f"cuda: {torch.cuda.get_device_name(0)}" if cuda else "cpu only"))
        rows.append(("impl='torch'", "available (crossentropy.torch)"))
        if not works["triton"]:
            kernels = "unavailable (install crossentropy[triton])"
        elif cuda:
            kernels = "available on CUDA tensors"
        elif os.environ.get("TRITON_INTERPRET") == "1":
            kernels = "CPU interpreter only (TRITON_INTERPRET=1; for tests, slow)"
        else:
            kernels = "needs a CUDA GPU (or TRITON_INTERPRET=1 on CPU, for tests)"
        rows.append(("impl='triton'", kernels))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0
