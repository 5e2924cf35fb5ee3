"""``crossentropy info``: versions, devices and which implementations are available."""

from __future__ import annotations

import argparse
import importlib
import platform


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("info", help="versions, devices and available implementations")
    parser.set_defaults(func=run)


def _version(name: str) -> str | None:
    try:
        module = importlib.import_module(name)
    except Exception:
        return None
    return str(getattr(module, "__version__", "installed"))


def run(args: argparse.Namespace) -> int:
    from crossentropy import __version__

    rows = [("crossentropy", __version__), ("python", platform.python_version())]
    for name in ("numpy", "torch", "triton", "transformers", "keras", "scipy", "sklearn"):
        rows.append((name, _version(name) or "not installed"))
    torch_version = _version("torch")
    if torch_version is not None:
        import torch

        if torch.cuda.is_available():
            rows.append(("device", f"cuda: {torch.cuda.get_device_name(0)}"))
        else:
            rows.append(("device", "cpu only"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0
