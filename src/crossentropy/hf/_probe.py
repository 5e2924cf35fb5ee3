"""A zero-width stand-in for a causal LM's logits that records what the model does to them.

While the fused loss is active the output embedding (``lm_head``) returns a :class:`LogitsProbe`
of shape ``(..., 0)`` instead of the ``(..., V)`` logits. The model's own ``forward`` then applies
its usual post-processing (Gemma 2's ``cap * tanh(z / cap)``, Cohere's ``z * logit_scale``,
Granite's ``z / logits_scaling``, dtype casts) to the probe, which costs nothing because the probe
is empty, and every operation is recorded. :func:`logit_transform` reads the record back as

.. math::

    \\text{logits} = p \\tanh(q z) \\quad\\text{or}\\quad \\text{logits} = s z,
    \\qquad z = h W^\\top + b,

which the fused loss reproduces exactly: a scale folded into ``h`` and ``b``, and a soft-cap.
Any other operation (an additive bias, a second ``tanh``, a reduction, a detach, ...) is recorded
as unsupported, so the fused path refuses the model instead of computing a different loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from numbers import Real
from typing import Any

import torch

from crossentropy.hf._errors import UnsupportedModelError

__all__ = [
    "LogitTransform",
    "LogitsProbe",
    "Trace",
    "logit_transform",
    "make_probe",
]

# Operations that leave the values of the logits unchanged (up to dtype, which the fused loss
# handles in fp32 anyway).
_IDENTITY_OPS = frozenset(
    {"float", "to", "contiguous", "clone", "type_as", "double", "half", "bfloat16"}
)
_SCALE_OPS = frozenset({"mul", "mul_", "multiply", "__mul__", "__rmul__", "__imul__"})
_DIVIDE_OPS = frozenset({"div", "div_", "divide", "true_divide", "__truediv__", "__itruediv__"})
_TANH_OPS = frozenset({"tanh", "tanh_"})


@dataclass
class Trace:
    """What the fused loss needs from one call of the output embedding.

    Attributes:
        hidden: the input of the output embedding, shape ``(..., D)``.
        weight: the output embedding weight, shape ``(V, D)``.
        bias: its bias, shape ``(V,)``, or ``None``.
        where: the model class name, for error messages.
        ops: the operations applied to the logits since, as ``(name, scalar)`` pairs;
            ``scalar`` is ``None`` for operations without one. Unsupported operations are
            recorded as ``("unsupported", description)``.
    """

    hidden: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None
    where: str
    ops: tuple[tuple[str, Any], ...] = field(default=())


class LogitsProbe(torch.Tensor):
    """An empty tensor standing for the logits; see the module docstring."""

    _ce_trace: Trace

    @classmethod
    def __torch_function__(
        cls,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        probes = [a for a in _flat(args, kwargs) if isinstance(a, LogitsProbe)]
        if not probes:
            # The probe is nested deeper than one container level; run the op plainly. The
            # result is not a probe, so the fused loss will refuse it if it becomes the logits.
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs)
        source = probes[0]
        try:
            with torch._C.DisableTorchFunctionSubclass():
                out = func(*args, **kwargs)
        except (RuntimeError, ValueError, IndexError) as exc:
            # E.g. adding a (V,) logit bias to the (..., 0) probe, or a hand-written
            # CrossEntropyLoss on it: a shape error, reported as what it means.
            name = getattr(func, "__name__", repr(func))
            raise UnsupportedModelError(
                f"crossentropy.hf: {source._ce_trace.where} applies the operation {name!r} to "
                "the logits after its output embedding, which the fused loss cannot reproduce "
                f"({exc})"
            ) from None
        if not isinstance(out, torch.Tensor):
            # shape, dtype, device, size(), dim(), ...: no effect on the values.
            return out
        op = _describe(func, args, kwargs, source, n_probes=len(probes))
        if out is source:
            # In place (``div_``) or a no-op (``float()`` on an fp32 tensor): same object.
            source._ce_trace.ops = (*source._ce_trace.ops, op)
            return source
        trace = source._ce_trace
        new = out.as_subclass(LogitsProbe)
        new._ce_trace = Trace(trace.hidden, trace.weight, trace.bias, trace.where, (*trace.ops, op))
        return new


def make_probe(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, where: str
) -> LogitsProbe:
    """An empty ``(..., 0)`` probe for the logits ``hidden @ weight.T + bias``."""
    empty = hidden.new_empty((*hidden.shape[:-1], 0))
    probe = empty.as_subclass(LogitsProbe)
    probe._ce_trace = Trace(hidden, weight, bias, where)
    return probe


def _flat(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
    flat: list[Any] = []
    for a in (*args, *kwargs.values()):
        if isinstance(a, (list, tuple)):
            flat.extend(a)
        else:
            flat.append(a)
    return flat


def _scalar(x: Any) -> float | None:
    """``x`` as a Python float if it is a real number or a one-element plain tensor."""
    if isinstance(x, bool):
        return None
    if isinstance(x, Real):
        return float(x)
    if isinstance(x, torch.Tensor) and not isinstance(x, LogitsProbe) and x.numel() == 1:
        return float(x.detach().reshape(()).item())
    return None


def _describe(
    func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], source: Any, n_probes: int
) -> tuple[str, Any]:
    name = getattr(func, "__name__", repr(func))
    unsupported = ("unsupported", f"{name}")
    if n_probes != 1:
        return unsupported
    if name in _IDENTITY_OPS:
        return ("identity", None)
    if name in _TANH_OPS and len(args) == 1 and not kwargs:
        return ("tanh", None)
    if name in _SCALE_OPS and len(args) == 2 and not kwargs:
        other = args[1] if args[0] is source else args[0]
        value = _scalar(other)
        return ("scale", value) if value is not None else unsupported
    if name in _DIVIDE_OPS and len(args) == 2 and args[0] is source and not kwargs:
        value = _scalar(args[1])
        return ("scale", 1.0 / value) if value else unsupported
    return unsupported


@dataclass(frozen=True)
class LogitTransform:
    """``logits = softcap * tanh(input_scale * z / softcap)`` (or ``input_scale * z`` when no cap).

    ``input_scale`` multiplies the hidden states and the bias before the projection; ``softcap`` is
    the ``softcap`` argument of :func:`crossentropy.torch.linear_cross_entropy`.
    """

    input_scale: float = 1.0
    softcap: float | None = None


def logit_transform(trace: Trace) -> LogitTransform:
    """Fold a recorded chain of operations into a :class:`LogitTransform`.

    Raises:
        UnsupportedModelError: the chain contains an operation the fused loss cannot reproduce;
            the message names the model class and the operation.
    """
    where = trace.where
    pre, post, tanh_seen = 1.0, 1.0, False
    for name, value in trace.ops:
        if name == "identity":
            continue
        if name == "scale":
            if tanh_seen:
                post *= value
            else:
                pre *= value
            continue
        if name == "tanh" and not tanh_seen:
            tanh_seen = True
            continue
        what = "a second tanh" if name == "tanh" else f"the operation {value!r}"
        raise UnsupportedModelError(
            f"crossentropy.hf: {where} applies {what} to the logits after its output embedding; "
            "the fused loss supports only scaling by constants and one soft-cap "
            "(cap * tanh(z / cap)), so it cannot compute this model's loss"
        )
    if not tanh_seen:
        if not math.isfinite(pre) or pre == 0.0:
            raise UnsupportedModelError(
                f"crossentropy.hf: {where} scales its logits by {pre!r}, which is not usable"
            )
        return LogitTransform(input_scale=pre)
    # p * tanh(q z) = cap * tanh(k z / cap) with cap = p and k = p q.
    if not (math.isfinite(post) and post > 0.0 and math.isfinite(pre) and pre != 0.0):
        raise UnsupportedModelError(
            f"crossentropy.hf: {where} soft-caps its logits as {post!r} * tanh({pre!r} * z); "
            "the fused loss needs a positive finite cap"
        )
    return LogitTransform(input_scale=post * pre, softcap=post)
