"""Argument checks at the public boundary of the torch layer, and flattening to 2-D rows.

Every public function (``cross_entropy``, ``linear_cross_entropy``, the vocab-parallel variants) calls
these before any math, so bad input fails with a ``ValueError``/``TypeError`` that names the function,
the argument, what was received and what was expected.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from crossentropy.torch.engine._checks import (
    _functorch_active,
    check_target_values,
    functorch_active,
    is_compiling,
    kernel_fallback,
    probability_rows_problem,
    report_bad_rows,
)

__all__ = [
    "IMPLS",
    "KERNEL_DTYPES",
    "REDUCTIONS",
    "Rows",
    "check_chunk_size",
    "check_impl",
    "check_options",
    "check_prob_ignore_index",
    "check_reduction",
    "check_target_values",
    "check_weight",
    "composable_only",
    "composable_reason",
    "flatten_linear",
    "flatten_logits",
    "functorch_active",
    "is_compiling",
    "kernel_dtype_problem",
    "kernel_fallback",
]

REDUCTIONS = ("mean", "sum", "none")
IMPLS = ("auto", "torch", "triton")


def composable_reason(*tensors: Tensor | None, target: Tensor | None = None) -> str | None:
    """Why the call must use plain torch ops, or None.

    Under ``torch.func`` transforms (grad, vmap, jacrev, ...), with forward-mode AD dual tensors, or
    when probability targets need a gradient (distillation into a trained teacher), the engines'
    custom operators (fused backward passes for the logits' side) cannot be used; plain torch ops
    compose with every transform.
    """
    if target is not None and target.is_floating_point():
        if target.requires_grad and torch.is_grad_enabled():
            return "probability targets that require grad"
        tensors = (*tensors, target)
    if _functorch_active():
        return "a torch.func transform"
    if not _forward_ad_active():
        return None
    from torch.autograd import forward_ad

    if any(t is not None and forward_ad.unpack_dual(t).tangent is not None for t in tensors):
        return "forward-mode AD"
    return None


def composable_only(*tensors: Tensor | None, target: Tensor | None = None) -> bool:
    """True when :func:`composable_reason` gives a reason."""
    return composable_reason(*tensors, target=target) is not None


def _forward_ad_active() -> bool:
    # dual tensors exist only inside ``forward_ad.dual_level()``; skip the per-tensor probes else
    from torch.autograd import forward_ad

    level = getattr(forward_ad, "_current_level", None)
    return not isinstance(level, int) or level >= 0


def check_reduction(fn: str, reduction: object) -> str:
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"{fn}: reduction must be one of 'mean', 'sum', 'none'; got {reduction!r}")
    return reduction


KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def kernel_dtype_problem(
    inputs: dict[str, Tensor | None], weight: Tensor | None, *, one_dtype: bool = True
) -> str | None:
    """None when the Triton kernels take these inputs, else what they cannot handle.

    The kernels compute in fp32 and read fp32/bf16/fp16 inputs (all of one dtype when
    ``one_dtype``: kernels that read the inputs directly); the torch engines also take float64
    (computing in float64) and mixed dtypes.
    """
    named = {k: t.dtype for k, t in inputs.items() if t is not None}
    bad = {k: d for k, d in named.items() if d not in KERNEL_DTYPES}
    if bad:
        what = ", ".join(f"{d} {k}" for k, d in bad.items())
        return f"{what} (the kernels take fp32, bf16, fp16)"
    if one_dtype and len(set(named.values())) > 1:
        what = ", ".join(f"{d} {k}" for k, d in named.items())
        return f"mixed dtypes ({what}; the kernels take one)"
    if weight is not None and weight.dtype == torch.float64:
        return "a float64 class weight (the torch path then computes in float64)"
    return None


def check_impl(fn: str, impl: object) -> str:
    if not isinstance(impl, str) or impl not in IMPLS:
        raise ValueError(f"{fn}: impl must be one of 'auto', 'torch', 'triton'; got {impl!r}")
    return impl


def _real(fn: str, name: str, value: object) -> float:
    # numbers.Real admits NumPy scalars (np.float32(0.1)), as torch does; bools are refused.
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{fn}: {name} must be a real number; got {type(value).__name__} {value!r}")
    return float(value)


def _integer(fn: str, name: str, value: object) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{fn}: {name} must be an int; got {value!r}")
    return int(value)


def check_options(
    fn: str,
    *,
    ignore_index: object,
    label_smoothing: object,
    z_loss: object,
    softcap: object,
) -> tuple[int, float, float, float | None]:
    """Check the scalar options; return them as (ignore_index, label_smoothing, z_loss, softcap)."""
    ignore_index = _integer(fn, "ignore_index", ignore_index)
    eps = _real(fn, "label_smoothing", label_smoothing)
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"{fn}: label_smoothing must lie in [0, 1]; got {label_smoothing!r}")
    z = _real(fn, "z_loss", z_loss)
    if not (math.isfinite(z) and z >= 0.0):
        raise ValueError(f"{fn}: z_loss must be a finite number >= 0; got {z_loss!r}")
    cap: float | None = None
    if softcap is not None:
        cap = _real(fn, "softcap", softcap)
        if not (math.isfinite(cap) and cap > 0.0):
            raise ValueError(f"{fn}: softcap must be None or a finite number > 0; got {softcap!r}")
    return int(ignore_index), eps, z, cap


def check_chunk_size(fn: str, chunk_size: object) -> int | None:
    if chunk_size is None:
        return None
    if (
        isinstance(chunk_size, (bool, np.bool_))
        or not isinstance(chunk_size, numbers.Integral)
        or chunk_size < 1
    ):
        raise ValueError(f"{fn}: chunk_size must be None or a positive int; got {chunk_size!r}")
    return int(chunk_size)


def _check_tensor(fn: str, name: str, x: object) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor; got {type(x).__name__}")
    return x


def _check_float(fn: str, name: str, x: Tensor) -> None:
    if not x.is_floating_point():
        raise TypeError(f"{fn}: {name} must be a floating-point tensor; got dtype {x.dtype}")


def check_weight(fn: str, weight: Tensor | None, num_classes: int) -> Tensor | None:
    """Class weights: a 1-D floating tensor with one entry per class, or None."""
    if weight is None:
        return None
    _check_tensor(fn, "weight", weight)
    _check_float(fn, "weight", weight)
    if weight.shape != (num_classes,):
        raise ValueError(
            f"{fn}: weight must have shape ({num_classes},), one entry per class; "
            f"got {tuple(weight.shape)}"
        )
    return weight


@dataclass(frozen=True)
class Rows:
    """Inputs reshaped to rows: ``target`` is (N,) class ids or (N, C) probabilities."""

    target: Tensor
    is_prob: bool
    out_shape: tuple[int, ...]  # shape of the per-position loss for reduction="none"


def _check_target(
    fn: str, target: Tensor, index_shape: tuple[int, ...], prob_shape: tuple[int, ...]
) -> bool:
    """Decide index vs probability targets from shape and dtype; return ``is_prob``."""
    shape = tuple(target.shape)
    if shape == index_shape and not (shape == prob_shape and target.is_floating_point()):
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(
                f"{fn}: target of shape {shape} holds class indices and must have an integer "
                f"dtype (torch.long); got {target.dtype}"
            )
        return False
    if shape == prob_shape:
        if not target.is_floating_point():
            raise TypeError(
                f"{fn}: target of shape {shape} (the input's shape) holds class probabilities "
                f"and must be floating point; got {target.dtype}"
            )
        return True
    raise ValueError(
        f"{fn}: target must have shape {index_shape} (class indices) or {prob_shape} "
        f"(class probabilities) for the given input; got {shape}"
    )


def check_prob_ignore_index(fn: str, ignore_index: int) -> None:
    """Like torch, refuse an explicit ignore_index with probability targets (it would do nothing)."""
    if ignore_index != -100:
        raise ValueError(
            f"{fn}: ignore_index applies to class-index targets only; got ignore_index="
            f"{ignore_index} with probability targets (leave it at -100)"
        )


def distillation_positions(
    fn: str, target: object, mask: object, shape: tuple[int, ...], ignore_index: int, hard: float
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """The distillation losses' per-position arguments: hard-label class ids and a bool mask,
    each of the positions' ``shape`` or None. Returns them flattened, and the counted rows
    (``target != ignore_index`` and ``mask``; None when every row counts)."""
    if hard > 0.0 and target is None:
        raise ValueError(f"{fn}: hard_weight > 0 needs target (the hard labels)")
    t_flat = m_flat = None
    if target is not None:
        t = _check_tensor(fn, "target", target)
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"{fn}: target must hold integer class ids; got dtype {t.dtype}")
        if tuple(t.shape) != shape:
            raise ValueError(
                f"{fn}: target must have shape {shape} (the positions); got {tuple(t.shape)}"
            )
        t_flat = t.reshape(-1)
    if mask is not None:
        m = _check_tensor(fn, "mask", mask)
        if m.dtype != torch.bool or tuple(m.shape) != shape:
            raise ValueError(
                f"{fn}: mask must be a bool tensor of shape {shape} (True where a position "
                f"counts); got {m.dtype} of shape {tuple(m.shape)}"
            )
        m_flat = m.reshape(-1)
    valid = None
    if t_flat is not None:
        valid = t_flat != ignore_index
    if m_flat is not None:
        valid = m_flat if valid is None else valid & m_flat
    return t_flat, m_flat, valid


def check_token_weight(
    fn: str, token_weight: object, positions: tuple[int, ...], n_rows: int
) -> Tensor | None:
    """Per-position loss weights: None, or a floating tensor with the positions' shape (the
    ``"none"`` output's, e.g. (B, T)) or (N,) for the N flattened rows; finite (NaN and inf are
    refused at once on the CPU, by a device assertion on a GPU). Returns them as (N,)."""
    if token_weight is None:
        return None
    tw = _check_tensor(fn, "token_weight", token_weight)
    _check_float(fn, "token_weight", tw)
    if tuple(tw.shape) not in (positions, (n_rows,)):
        raise ValueError(
            f"{fn}: token_weight must have the positions' shape {positions} (one weight per "
            f"position) or ({n_rows},); got {tuple(tw.shape)}"
        )
    flat = tw.reshape(-1)
    report_bad_rows(fn, "token_weight", ~torch.isfinite(flat.detach()), "finite (NaN or inf)", None)
    return flat


def check_probability_target(fn: str, target: Tensor, n_classes: int) -> None:
    """Probability targets of the fused losses: every row a distribution (non-negative, summing
    to 1 within the target dtype's tolerance). ``cross_entropy`` keeps torch's semantics and does
    not call this."""
    if target.numel() == 0:
        return
    bad = probability_rows_problem(target, n_classes)
    report_bad_rows(
        fn,
        "target",
        bad,
        f"a probability distribution over the {n_classes} classes (entries >= 0 summing to 1; "
        "normalise it, or use cross_entropy on the logits, which takes any target as torch does)",
        target,
    )


def flatten_logits(fn: str, input: object, target: object) -> tuple[Tensor, Rows]:
    """(N, C, d1, ...) or (C,) logits -> (M, C) rows with matching (M,) or (M, C) targets."""
    x = _check_tensor(fn, "input", input)
    t = _check_tensor(fn, "target", target)
    _check_float(fn, "input", x)
    if x.dim() == 0:
        raise ValueError(f"{fn}: input must have shape (C,), (N, C) or (N, C, d1, ...); got ()")
    if x.dim() == 1:
        num_classes = x.shape[0]
        is_prob = _check_target(fn, t, (), (num_classes,))
        rows = x.unsqueeze(0)
        flat_t = t.reshape(1, num_classes) if is_prob else t.reshape(1)
        return rows, Rows(flat_t, is_prob, ())
    num_classes = x.shape[1]
    index_shape = (x.shape[0], *x.shape[2:])
    is_prob = _check_target(fn, t, index_shape, tuple(x.shape))
    if x.dim() == 2:
        rows = x
        flat_t = t
    else:
        rows = x.movedim(1, -1).reshape(-1, num_classes)
        flat_t = t.movedim(1, -1).reshape(-1, num_classes) if is_prob else t.reshape(-1)
    return rows, Rows(flat_t, is_prob, index_shape)


def flatten_linear(
    fn: str,
    input: object,
    linear_weight: object,
    target: object,
    linear_bias: object,
) -> tuple[Tensor, Rows]:
    """(..., D) hidden states with a (V, D) weight -> (N, D) rows and (N,) / (N, V) targets."""
    x = _check_tensor(fn, "input", input)
    w = _check_tensor(fn, "linear_weight", linear_weight)
    t = _check_tensor(fn, "target", target)
    _check_float(fn, "input", x)
    _check_float(fn, "linear_weight", w)
    if w.dim() != 2:
        raise ValueError(
            f"{fn}: linear_weight must have shape (V, D) (classes x features); got {tuple(w.shape)}"
        )
    vocab, dim = w.shape
    if x.dim() == 0 or x.shape[-1] != dim:
        raise ValueError(
            f"{fn}: input must have shape (..., {dim}) to match linear_weight {tuple(w.shape)}; "
            f"got {tuple(x.shape)}"
        )
    if linear_bias is not None:
        b = _check_tensor(fn, "linear_bias", linear_bias)
        _check_float(fn, "linear_bias", b)
        if b.shape != (vocab,):
            raise ValueError(f"{fn}: linear_bias must have shape ({vocab},); got {tuple(b.shape)}")
    lead = tuple(x.shape[:-1])
    is_prob = _check_target(fn, t, lead, (*lead, vocab))
    rows = x.reshape(-1, dim)
    flat_t = t.reshape(-1, vocab) if is_prob else t.reshape(-1)
    return rows, Rows(flat_t, is_prob, lead)
