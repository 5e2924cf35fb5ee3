"""``crossentropy info``: versions, devices and which implementations can run here."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import platform
from collections.abc import Callable
from typing import Any

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
        imported = importlib.import_module(module)
    except Exception as exc:  # installed but broken, e.g. keras without its default backend
        reason = " ".join(str(exc).split())[:120] or type(exc).__name__
        hint = "; KERAS_BACKEND=torch selects PyTorch" if module == "keras" else ""
        return f"{version} (installed, import failed: {reason}{hint})", False
    # the module's own version names its build where the wheel's metadata does not (PyPI's
    # CUDA torch: metadata 2.14.1, torch.__version__ 2.14.1+cu130)
    built = getattr(imported, "__version__", None)
    if isinstance(built, str) and built.startswith(version):
        version = built
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
        if not works["triton"] and not cuda:
            # installing triton would not help here: the kernels run on CUDA GPUs
            kernels = "needs a CUDA GPU (none here) and triton (crossentropy[triton])"
        elif not works["triton"]:
            kernels = "unavailable on this CUDA GPU: install crossentropy[triton]"
        elif cuda:
            kernels = "available on CUDA tensors"
        elif os.environ.get("TRITON_INTERPRET") == "1":
            kernels = "CPU interpreter only (TRITON_INTERPRET=1; for tests, slow)"
        else:
            kernels = "needs a CUDA GPU (or TRITON_INTERPRET=1 on CPU, for tests)"
        rows.append(("impl='triton'", kernels))
        rows.extend(_dispatch_rows("cuda" if cuda else "cpu"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    if works["torch"]:
        print(
            "\nFor a call of your own: print(crossentropy.torch.explain(fn, *args, **kwargs)) "
            "(the engine, its precision and block size, and why)."
        )
    return 0


def _dispatch_rows(device: str) -> list[tuple[str, str]]:
    """The engine each typical call takes on this machine, from the library's own dispatch."""
    import torch

    from crossentropy.torch import (
        cross_entropy,
        explain,
        linear_cross_entropy,
        linear_distillation_loss,
        linear_logprobs,
    )

    def t(*shape: int, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        return torch.zeros(shape, dtype=dtype, device=device)

    y = torch.zeros(4, dtype=torch.long, device=device)
    h, w = t(4, 8), t(32, 8)
    calls: dict[str, tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = {
        "cross_entropy, fp32 logits": (cross_entropy, (t(4, 32, dtype=torch.float32), y), {}),
        "cross_entropy, bf16 logits": (cross_entropy, (t(4, 32), y), {}),
        "linear_cross_entropy, bf16, mean": (linear_cross_entropy, (h, w, y), {}),
        "linear_cross_entropy, bf16, none": (
            linear_cross_entropy,
            (h, w, y),
            {"reduction": "none"},
        ),
        "linear_cross_entropy, memory='low'": (linear_cross_entropy, (h, w, y), {"memory": "low"}),
        "linear_logprobs, bf16": (linear_logprobs, (h, w, y), {"return_entropy": True}),
        "linear_distillation_loss, bf16": (
            linear_distillation_loss,
            (h, w, h, w),
            {"divergence": "kl"},
        ),
    }
    out = [(f"dispatch on {device}", "(crossentropy.torch.explain)")]
    for name, (fn, args, kw) in calls.items():
        try:
            plan = explain(fn, *args, **kw)
        except Exception as exc:  # report, never crash the info command
            out.append((f"  {name}", f"cannot say: {' '.join(str(exc).split())[:100]}"))
            continue
        mode = f", {plan.mode}" if plan.mode else ""
        out.append((f"  {name}", f"{plan.engine}{mode}"))
    return out
