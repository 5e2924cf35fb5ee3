"""A zero-width stand-in for a causal LM's logits that lets through only what it can reproduce.

While the fused loss is active the output embedding (``lm_head``) returns a :class:`LogitsProbe`
instead of the ``(..., V)`` logits. It holds no values (its storage is ``(..., 0)``), and every
torch operation that reaches it goes through :meth:`LogitsProbe.__torch_function__`, which allows
exactly three kinds:

* **value transformations the fused loss reproduces**, recorded on the probe: dtype casts and
  copies (``float()``, ``to(dtype)``, ``contiguous()``), scaling by a constant (Cohere's
  ``z * logit_scale``, Granite's ``z / logits_scaling``) and one soft-cap (Gemma 2's
  ``cap * tanh(z / cap)``). :func:`logit_transform` reads the record back as

  .. math::

      \\text{logits} = p \\tanh(q z) \\quad\\text{or}\\quad \\text{logits} = s z,
      \\qquad z = h W^\\top + b,

  which the fused loss computes exactly: the scale folded into ``h`` and ``b``, and a soft-cap;
* ``logsumexp`` over the vocabulary (Bamba's z-loss), answered with the exact values, computed
  chunk by chunk from ``h`` and ``W`` with their gradients, never from an ``N x V`` tensor;
* metadata that does not depend on the values: ``shape``, ``size()``, ``numel()``, ``dim()``,
  ``dtype``, ``device``, ``requires_grad``, ... answered as for the real logits (the last
  dimension is ``V``, not 0).

Anything else (an additive bias, a second ``tanh``, ``sum``/``mean``/``max`` over the logits,
``softmax``, indexing, ``view``, comparison, ``item()``/``float()``/``bool()``, combining the
probe with another tensor, writing it into one) raises :class:`UnsupportedModelError` on the spot,
naming the model and the operation. So every value a model can read from the probe is exact, and
none of its ``(..., 0)`` placeholder storage ever reaches a loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from numbers import Real
from typing import Any

import torch
from torch.utils import _pytree

from crossentropy.hf._errors import UnsupportedModelError

__all__ = [
    "LogitTransform",
    "LogitsProbe",
    "Trace",
    "logit_transform",
    "make_probe",
]

# Copies and casts: no change to the values beyond rounding to a floating dtype, which the fused
# loss does better in fp32 (a cast to an integer dtype is refused after the fact).
_COPY_OPS = frozenset(
    {"float", "to", "cpu", "cuda", "contiguous", "clone", "type_as", "double", "half", "bfloat16"}
)
_SCALE_OPS = frozenset({"mul", "mul_", "multiply", "__mul__", "__rmul__", "__imul__"})
_DIVIDE_OPS = frozenset({"div", "div_", "divide", "true_divide", "__truediv__", "__itruediv__"})
_TANH_OPS = frozenset({"tanh", "tanh_"})
_IN_PLACE_OPS = frozenset({"mul_", "__imul__", "div_", "__itruediv__", "tanh_"})
# Metadata a model may read from its logits: none of it depends on their values.
_METADATA_PROPERTIES = frozenset(
    {
        "shape",
        "dtype",
        "device",
        "ndim",
        "layout",
        "requires_grad",
        "is_cuda",
        "is_cpu",
        "is_meta",
        "is_mps",
        "is_xpu",
        "is_sparse",
        "is_quantized",
        "is_nested",
    }
)
_METADATA_METHODS = frozenset(
    {
        "dim",
        "ndimension",
        "is_floating_point",
        "is_complex",
        "is_contiguous",
        "get_device",
        "element_size",
    }
)


@dataclass
class Trace:
    """What the fused loss needs from one call of the output embedding.

    Attributes:
        hidden: the input of the output embedding, shape ``(..., D)``.
        weight: the output embedding weight, shape ``(V, D)``.
        bias: its bias, shape ``(V,)``, or ``None``.
        where: the model class name, for error messages.
        ops: the value transformations applied to the logits since, as ``(name, scalar)`` pairs
            with ``name`` one of ``"copy"``, ``"scale"``, ``"tanh"``; ``scalar`` is the factor of
            a scale, else ``None``.
        logsumexp: computes the exact ``logsumexp`` over the vocabulary of the logits this trace
            describes, shape ``hidden.shape[:-1]``; ``None`` where nobody provided it.
        requires_grad: whether the real logits would require a gradient.
    """

    hidden: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None
    where: str
    ops: tuple[tuple[str, Any], ...] = field(default=())
    logsumexp: Callable[[Trace], torch.Tensor] | None = None
    requires_grad: bool = False


def _refuse(where: str, what: str, why: str = "") -> UnsupportedModelError:
    return UnsupportedModelError(
        f"crossentropy.hf: {where} applies {what} to its logits (the output of its output "
        "embedding), which the fused loss cannot reproduce: it supports casts, scaling by a "
        "constant, one soft-cap (cap * tanh(z / cap)) and logsumexp over the vocabulary"
        f"{why}; unpatch the model to train it with its own loss"
    )


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
        leaves = _pytree.tree_leaves((args, kwargs))
        probes = [a for a in leaves if isinstance(a, LogitsProbe)]
        if not probes:  # pragma: no cover - torch calls this only with a probe among the inputs
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs)
        source = probes[0]
        trace = source._ce_trace
        name = _func_name(func)
        if len(probes) == 1 and args and args[0] is source:
            known, answer = _metadata(name, source, args[1:], kwargs)
            if known:
                return answer
        op = _describe(name, args, kwargs, source, n_probes=len(probes))
        if op[0] == "unsupported":
            raise _refuse(trace.where, f"the operation {op[1]!r}")
        if op[0] == "logsumexp":
            return _exact_logsumexp(trace, keepdim=bool(op[1]))
        try:
            with torch._C.DisableTorchFunctionSubclass():
                out = func(*args, **kwargs)
        except Exception as exc:  # a shape or dtype error on the empty storage
            raise _refuse(trace.where, f"the operation {name!r}", f" ({exc})") from None
        with torch._C.DisableTorchFunctionSubclass():
            same_shape = isinstance(out, torch.Tensor) and out.shape == source.shape
        if (
            not same_shape
            or not out.is_floating_point()
            or (out is not source and any(out is a for a in leaves))
        ):
            raise _refuse(trace.where, f"the operation {name!r}", " (not a floating-point copy)")
        new_trace = replace(trace, ops=(*trace.ops, op))
        logit_transform(new_trace)  # a second tanh, a zero scale, ...: refused right here
        if out is source:
            # In place (``div_``) or a no-op (``float()`` on an fp32 tensor): the same object.
            source._ce_trace = new_trace
            return source
        new = out.as_subclass(LogitsProbe)
        new._ce_trace = new_trace
        return new

    def __repr__(self, *, tensor_contents: Any = None) -> Any:  # type: ignore[override]
        trace = self._ce_trace
        return (
            f"LogitsProbe(shape={tuple(_true_shape(self))}, dtype={self.dtype}, "
            f"model={trace.where}, ops={[n for n, _ in trace.ops]})"
        )


def make_probe(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    where: str,
    logsumexp: Callable[[Trace], torch.Tensor] | None = None,
) -> LogitsProbe:
    """An empty ``(..., 0)`` probe for the logits ``hidden @ weight.T + bias``.

    Its dtype is the one ``torch.nn.functional.linear`` would give (autocast included), and
    ``logsumexp`` computes the exact logsumexp over the vocabulary when the model asks for it.
    """
    with torch.no_grad():
        empty_bias = None if bias is None else bias[:0]
        rows = hidden.detach().reshape(-1, hidden.shape[-1])[:0]
        dtype = torch.nn.functional.linear(rows, weight[:0], empty_bias).dtype
    empty = hidden.new_empty((*hidden.shape[:-1], 0), dtype=dtype)
    probe = empty.as_subclass(LogitsProbe)
    requires_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (hidden, weight, bias)
    )
    probe._ce_trace = Trace(hidden, weight, bias, where, (), logsumexp, requires_grad)
    return probe


def _func_name(func: Any) -> str:
    name = getattr(func, "__name__", None)
    if name == "__get__":  # a property of torch.Tensor: func is the descriptor's __get__
        name = getattr(getattr(func, "__self__", None), "__name__", name)
    return str(name) if name is not None else repr(func)


def _true_shape(probe: LogitsProbe) -> torch.Size:
    with torch._C.DisableTorchFunctionSubclass():
        lead = probe.shape[:-1]
    return torch.Size((*lead, probe._ce_trace.weight.shape[0]))


def _metadata(
    name: str, probe: LogitsProbe, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[bool, Any]:
    """``(True, answer)`` for a metadata query about the real logits, else ``(False, None)``."""
    shape = _true_shape(probe)
    if name == "shape" and not args and not kwargs:
        return True, shape
    if name == "size":
        dim = args[0] if args else kwargs.get("dim")
        if len(args) + len(kwargs) > 1:
            return False, None
        return True, shape if dim is None else shape[dim]
    if name in ("numel", "nelement") and not args and not kwargs:
        return True, math.prod(shape)
    if name == "__len__":
        return True, shape[0]
    if name == "requires_grad":
        return True, probe._ce_trace.requires_grad
    if (name in _METADATA_PROPERTIES or name in _METADATA_METHODS) and not args and not kwargs:
        with torch._C.DisableTorchFunctionSubclass():
            attribute = getattr(probe, name)
            return True, attribute() if name in _METADATA_METHODS else attribute
    if name in ("__repr__", "__str__") or (name == "__format__" and args in ((), ("",))):
        return True, repr(probe)
    return False, None


def _scalar(x: Any) -> float | None:
    """``x`` as a Python float if it is a real number or a one-element constant tensor.

    A tensor that requires a gradient (a learned temperature) is no constant: the fused loss would
    drop its gradient, so it is not taken.
    """
    if isinstance(x, bool):
        return None
    if isinstance(x, Real):
        return float(x)
    if (
        isinstance(x, torch.Tensor)
        and not isinstance(x, LogitsProbe)
        and x.numel() == 1
        and not x.requires_grad
        and not x.is_complex()
    ):
        return float(x.detach().reshape(()).item())
    return None


def _describe(
    name: str, args: tuple[Any, ...], kwargs: dict[str, Any], source: Any, n_probes: int
) -> tuple[str, Any]:
    """The operation as ``(kind, value)``: ``copy``, ``scale``, ``tanh``, ``logsumexp`` (value:
    keepdim) or ``unsupported`` (value: the operation's name)."""
    unsupported = ("unsupported", name)
    if n_probes != 1 or not args:
        return unsupported
    if name in _IN_PLACE_OPS and args[0] is not source:
        return unsupported  # writes into another tensor
    if name in _COPY_OPS and args[0] is source:
        if set(kwargs) - {"dtype", "device", "non_blocking", "copy", "memory_format"}:
            return unsupported
        return ("copy", None)
    if name in _TANH_OPS and args == (source,) and not kwargs:
        return ("tanh", None)
    if name in _SCALE_OPS and len(args) == 2 and not kwargs:
        value = _scalar(args[1] if args[0] is source else args[0])
        return ("scale", value) if value is not None else unsupported
    if name in _DIVIDE_OPS and len(args) == 2 and args[0] is source and not kwargs:
        value = _scalar(args[1])
        return ("scale", 1.0 / value) if value else unsupported
    if name == "logsumexp" and args[0] is source:
        return _describe_logsumexp(args[1:], kwargs, source.dim(), unsupported)
    return unsupported


def _describe_logsumexp(
    rest: tuple[Any, ...], kwargs: dict[str, Any], ndim: int, unsupported: tuple[str, Any]
) -> tuple[str, Any]:
    if len(rest) > 2 or set(kwargs) - {"dim", "keepdim"}:
        return unsupported
    named = dict(zip(("dim", "keepdim"), rest))
    if set(named) & set(kwargs):
        return unsupported
    named.update(kwargs)
    dim, keepdim = named.get("dim"), named.get("keepdim", False)
    if isinstance(dim, (list, tuple)) and len(dim) == 1:
        dim = dim[0]
    if isinstance(dim, bool) or not isinstance(dim, int) or dim not in (-1, ndim - 1):
        return ("unsupported", "logsumexp over other dimensions than the vocabulary")
    if not isinstance(keepdim, bool):
        return unsupported
    return ("logsumexp", keepdim)


def _exact_logsumexp(trace: Trace, keepdim: bool) -> torch.Tensor:
    if trace.logsumexp is None:
        raise _refuse(trace.where, "logsumexp", " (no exact logsumexp is available here)")
    lse = trace.logsumexp(trace)
    return lse.unsqueeze(-1) if keepdim else lse


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
        if name == "copy":
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
        raise _refuse(where, "a second tanh" if name == "tanh" else f"the operation {value!r}")
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
