"""Option sets written with tensor names, shared by the torch-layer tests."""

from __future__ import annotations

from typing import Any

import torch


def resolve(opts: dict[str, Any], tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    """``(target, kwargs)`` of an option set: ``"target"`` and ``"weight"`` name tensors."""
    kw = {k: (tensors[v] if k == "weight" else v) for k, v in opts.items() if k != "target"}
    return tensors[opts.get("target", "y")], kw
