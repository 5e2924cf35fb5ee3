"""Checks the engine needs itself, shared with the public layer (which imports them from here):
whether a trace or a transform is running, the one-time ``impl='triton'`` fallback warning, and
class ids inside the vocabulary without a host synchronisation on a GPU."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

__all__ = [
    "check_target_values",
    "functorch_active",
    "is_compiling",
    "kernel_fallback",
    "probability_rows_problem",
    "report_bad_rows",
]


def is_compiling() -> bool:
    """True while torch.compile traces (data-dependent checks are skipped there)."""
    compiler = getattr(torch, "compiler", None)
    check = getattr(compiler, "is_compiling", None)
    return bool(check()) if check is not None else False


def functorch_active() -> bool:
    """True inside a ``torch.func`` transform."""
    return _functorch_active()


def _functorch_active() -> bool:
    functorch = getattr(torch._C, "_functorch", None)
    level = getattr(functorch, "maybe_current_level", None)
    return level is not None and level() is not None


_FALLBACK_WARNED: set[tuple[str, str]] = set()


def kernel_fallback(fn: str, reason: str, stacklevel: int = 3) -> str:
    """Warn once per (function, reason) that ``impl='triton'`` runs on the torch path instead."""
    if (fn, reason) not in _FALLBACK_WARNED:
        _FALLBACK_WARNED.add((fn, reason))
        warnings.warn(
            f"{fn}: impl='triton' cannot handle {reason}; this call and later ones like it use "
            "the torch path (same results). This warning is shown once.",
            UserWarning,
            stacklevel=stacklevel,
        )
    return "torch"


def check_target_values(fn: str, target: Tensor, num_classes: int, ignore_index: int) -> None:
    """Class ids must lie in [0, num_classes) unless equal to ignore_index.

    On the CPU the check is immediate and raises ``ValueError``. On a GPU (and while compiling) it
    never synchronises the host: ``torch._assert_async`` fails on the device, so a bad label stops
    the program at its next synchronisation instead of giving a silent wrong loss.
    """
    if target.numel() == 0 or _functorch_active():
        return  # vmap cannot read values; the loss' own indexing still refuses bad ids
    bad = ((target < 0) | (target >= num_classes)) & (target != ignore_index)
    if target.device.type == "cpu" and not is_compiling():
        if bool(bad.any()):
            value = int(target[bad].flatten()[0])
            raise ValueError(
                f"{fn}: target holds class index {value}, outside [0, {num_classes}) and not "
                f"ignore_index={ignore_index}"
            )
        return
    torch._assert_async(
        ~bad.any(),
        f"{fn}: target holds a class index outside [0, {num_classes}) that is not "
        f"ignore_index={ignore_index}",
    )


def probability_rows_problem(target: Tensor, n_classes: int) -> Tensor:
    """(N,) bool: rows of ``target`` that are not a distribution over ``n_classes`` classes (a
    negative entry, or a sum off 1 by more than :func:`crossentropy.row_sum_tolerance` allows for
    the target's own dtype). Computed on the device; the caller decides how to report it."""
    from crossentropy import row_sum_tolerance

    t = target.detach()
    tol = row_sum_tolerance(str(t.dtype).replace("torch.", ""), n_classes)
    acc = torch.float64 if t.dtype == torch.float64 else torch.float32
    off = (t.sum(-1, dtype=acc) - 1.0).abs() > tol
    return off | (t < 0).any(-1)


def report_bad_rows(fn: str, name: str, bad: Tensor, what: str, values: Tensor | None) -> None:
    """Raise (CPU: at once, naming the first bad row) or assert on the device (no host sync)."""
    if bad.numel() == 0 or _functorch_active():
        return
    if bad.device.type == "cpu" and not is_compiling():
        if bool(bad.any()):
            row = int(bad.nonzero()[0, 0])
            shown = ""
            if values is not None:
                r = values[row].detach()
                shown = f" (sum {float(r.double().sum()):.9g}, min {float(r.min()):.9g})"
            raise ValueError(f"{fn}: {name} row {row} is not {what}{shown}")
        return
    torch._assert_async(~bad.any(), f"{fn}: a row of {name} is not {what}")
