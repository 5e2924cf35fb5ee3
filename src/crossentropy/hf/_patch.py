"""Fused training loss for any Hugging Face ``*ForCausalLM``: one generic mechanism, no copied forward.

How it works, for a patched model called with ``labels`` while training:

1. the model's own ``forward`` runs unchanged, so the decoder sees exactly the arguments it
   would see without the patch (attention mask, positions, caches, ``num_items_in_batch``, ...);
2. its output embedding returns an empty logits probe (:mod:`crossentropy.hf._probe`) holding the
   final hidden states and the embedding weight, instead of the ``N x V`` logits;
3. the model post-processes the probe as it would the logits (soft-capping, scaling), which is
   recorded, and hands it to ``self.loss_function``, which the patch replaced by
   :func:`_fused_causal_lm_loss`;
4. that function shifts the labels as transformers' ``ForCausalLMLoss`` does and calls
   :func:`crossentropy.torch.linear_cross_entropy` with the recorded soft-cap and scale;
   with ``num_items_in_batch`` it sums and divides by it, as transformers does for gradient
   accumulation;
5. anything the model adds to the loss itself (a router auxiliary loss) is added by its own code;
   a z-loss on the logits (Bamba's ``logits.logsumexp(-1).pow(2).mean()``) gets the exact
   logsumexp from the probe, and any other use of the logits raises
   :class:`UnsupportedModelError` on the spot;
6. the output's ``logits`` is ``None`` (a tuple output leaves them out), never the probe.

Without ``labels``, in eval mode (unless ``fuse_in_eval=True``), and during ``generate`` the
original forward runs untouched and returns logits.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import numbers
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from crossentropy.hf._errors import UnsupportedModelError
from crossentropy.hf._probe import LogitsProbe, LogitTransform, Trace, logit_transform, make_probe

__all__ = [
    "UnsupportedModelError",
    "is_patched",
    "patch",
    "patched",
    "unpatch",
]

_STATE_ATTR = "_crossentropy_hf_state"
_M = TypeVar("_M", bound=nn.Module)


@dataclass
class _State:
    """Everything :func:`unpatch` needs to restore, plus the per-call capture flags."""

    head: nn.Linear
    model_name: str
    loss_function: Any
    had_loss_function: bool
    forward_in_dict: Any
    head_forward_in_dict: Any
    impl: str
    chunk_size: int | None
    memory: str | int
    label_smoothing: float
    z_loss: float
    fuse_in_eval: bool
    capturing: bool = False
    head_calls: int = 0
    fused_loss_calls: int = 0
    # A model that asks for logsumexp(logits) after its loss (Bamba's z-loss) gets it from the
    # loss's own pass from its second call on: the loss call then keeps (trace, transform, lse).
    share_lse: bool = False
    lse_from_loss: tuple[Trace, LogitTransform, torch.Tensor] | None = None
    lse_shared: bool = False
    # token_logprobs / distillation_loss: the loss function records the probe's trace here and
    # returns a zero loss (see crossentropy.hf._heads)
    capture: list[Trace] | None = None


def _name(model: nn.Module) -> str:
    return type(model).__name__


def _causal_lm_loss_reference() -> Any:
    from transformers.loss.loss_utils import ForCausalLMLoss

    return ForCausalLMLoss


def _check_supported(model: nn.Module) -> nn.Linear:
    try:
        from transformers import PreTrainedModel
    except ImportError as exc:  # pragma: no cover - the hf extra is missing
        raise ImportError("crossentropy.hf needs transformers; install crossentropy[hf]") from exc
    name = _name(model)
    if not isinstance(model, PreTrainedModel):
        raise TypeError(
            f"crossentropy.hf.patch expects a transformers PreTrainedModel (a *ForCausalLM); "
            f"got {name}"
        )
    if getattr(model.config, "is_encoder_decoder", False):
        raise UnsupportedModelError(
            f"crossentropy.hf.patch: {name} is an encoder-decoder model; only decoder-only "
            "causal LMs (*ForCausalLM) are supported"
        )
    head = model.get_output_embeddings()
    if head is None:
        raise UnsupportedModelError(
            f"crossentropy.hf.patch: {name} has no output embeddings (get_output_embeddings() "
            "returned None), so there is no vocabulary projection to fuse"
        )
    if not isinstance(head, nn.Linear) or type(head).forward is not nn.Linear.forward:
        raise UnsupportedModelError(
            f"crossentropy.hf.patch: the output embeddings of {name} are a "
            f"{type(head).__name__}, not a plain torch.nn.Linear; the fused loss cannot "
            "reproduce their forward"
        )
    if head.weight.dim() != 2:
        raise UnsupportedModelError(
            f"crossentropy.hf.patch: the output embedding weight of {name} has shape "
            f"{tuple(head.weight.shape)}; expected (vocab_size, hidden_size)"
        )
    loss_function = model.loss_function
    if loss_function is not _causal_lm_loss_reference():
        label = getattr(loss_function, "__name__", repr(loss_function))
        raise UnsupportedModelError(
            f"crossentropy.hf.patch: {name} computes its loss with {label} "
            f"(config loss_type={getattr(model, 'loss_type', None)!r}), not transformers' "
            "ForCausalLMLoss; only the causal LM loss can be fused"
        )
    return head


def is_patched(model: nn.Module) -> bool:
    """Whether :func:`patch` has been applied to ``model`` (and not undone)."""
    return _STATE_ATTR in model.__dict__


def _is_real(value: object) -> bool:
    # numbers.Real admits NumPy scalars, as torch does; bools (NumPy's too) are refused.
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _check_impl(impl: object) -> str:
    if not isinstance(impl, str) or impl not in ("auto", "torch", "triton"):
        raise ValueError(
            f"crossentropy.hf.patch: impl must be one of 'auto', 'torch', 'triton'; got {impl!r}"
        )
    return impl


def _check_chunk_size(chunk_size: object) -> int | None:
    if chunk_size is None:
        return None
    if (
        isinstance(chunk_size, (bool, np.bool_))
        or not isinstance(chunk_size, numbers.Integral)
        or chunk_size < 1
    ):
        raise ValueError(
            f"crossentropy.hf.patch: chunk_size must be None or a positive int; got {chunk_size!r}"
        )
    return int(chunk_size)


def patch(
    model: _M,
    *,
    impl: str = "auto",
    chunk_size: int | None = None,
    memory: str | int = "auto",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    fuse_in_eval: bool = False,
) -> _M:
    """Make a Hugging Face causal LM compute its training loss without materialising the logits.

    With labels, the loss is computed by :func:`crossentropy.torch.linear_cross_entropy` from the
    final hidden states :math:`h` and the output embedding :math:`W` (and bias :math:`b`), using
    the model's own soft-cap :math:`c` and logit scale :math:`s` when it declares them:

    .. math::

        \\ell = \\frac{1}{|T|} \\sum_{t \\in T}
            -\\log \\operatorname{softmax}\\big(c \\tanh(s (W h_t + b) / c)\\big)_{y_{t+1}},

    where :math:`T` are the positions whose shifted label is not ``ignore_index``; with
    ``num_items_in_batch=n`` the sum is divided by :math:`n` instead of :math:`|T|`, as
    transformers does for gradient accumulation. This equals the model's own loss.

    The patch is applied to this model instance only (its ``forward``, its output embedding's
    ``forward`` and its ``loss_function``); generation, calls without labels and calls in eval mode
    keep the original behaviour and return logits. While fused, the output's ``logits`` is
    ``None`` (with ``return_dict=False`` the tuple leaves them out, as transformers does for a
    ``None`` field), so the loss stays first. The one difference from the model's own loss: a
    batch whose labels are all ``ignore_index`` gives 0 (with zero gradients) instead of NaN.

    The model's forward runs on a stand-in for the logits (see :mod:`crossentropy.hf._probe`)
    that lets through only what the fused path reproduces exactly: casts, scaling by a constant
    and one soft-cap before the loss, ``logsumexp`` over the vocabulary (computed chunk by chunk,
    with gradients; Bamba adds its z-loss this way, at the cost of one more pass over the
    vocabulary), and metadata such as ``shape``. Any other use of the logits, before or after
    the loss (a reduction, indexing, arithmetic with another tensor, reading a value), raises
    :class:`UnsupportedModelError` naming the model and the operation, so a patched model either
    computes its own loss or refuses; it never computes a different one. Under ``torch.compile``
    a patched model's fused forward runs eagerly (a graph break around it: the stand-in is a
    tensor subclass that Dynamo does not trace), with the same loss and gradients; calls without
    labels compile as usual.

    Args:
        model: a transformers ``*ForCausalLM`` (Llama, Mistral, Qwen2, Gemma, Gemma 2, Phi-3, ...).
        impl: passed to ``linear_cross_entropy`` (``"auto"``, ``"torch"``, ``"triton"``).
        chunk_size: passed to ``linear_cross_entropy`` (rows per chunk; ``None`` for its default).
        memory: passed to ``linear_cross_entropy`` (``"auto"``, ``"low"`` or bytes per block).
        label_smoothing: optional label smoothing (0 reproduces the model's loss).
        z_loss: optional z-loss coefficient (0 reproduces the model's loss).
        fuse_in_eval: also fuse when the model is in eval mode (then no logits are returned when
            labels are given).

    Returns:
        The same model object, patched.

    Raises:
        TypeError: ``model`` is not a transformers model.
        UnsupportedModelError: the model has no plain linear output embedding, uses a loss other
            than the causal LM loss, or (at the first fused call) uses its logits in a way the
            fused loss cannot reproduce.

    Example:
        >>> import torch, transformers
        >>> from crossentropy.hf import patch, unpatch
        >>> cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
        ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)
        >>> _ = torch.manual_seed(0)
        >>> model = transformers.LlamaForCausalLM(cfg).train()
        >>> ids = torch.randint(0, 64, (2, 7))
        >>> want = model(input_ids=ids, labels=ids).loss.detach()
        >>> out = patch(model)(input_ids=ids, labels=ids)
        >>> out.logits is None, abs(float(out.loss.detach()) - float(want)) < 1e-5
        (True, True)
        >>> _ = unpatch(model)
    """
    if is_patched(model):
        raise ValueError(f"crossentropy.hf.patch: this {_name(model)} is already patched")
    if not _is_real(label_smoothing) or not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(
            f"crossentropy.hf.patch: label_smoothing must be in [0, 1]; got {label_smoothing!r}"
        )
    if not _is_real(z_loss) or not math.isfinite(z_loss) or z_loss < 0.0:
        raise ValueError(f"crossentropy.hf.patch: z_loss must be finite and >= 0; got {z_loss!r}")
    label_smoothing, z_loss = float(label_smoothing), float(z_loss)
    impl = _check_impl(impl)
    chunk_size = _check_chunk_size(chunk_size)
    from crossentropy.torch.engine._dispatch import check_memory

    memory = check_memory("crossentropy.hf.patch", memory)
    head = _check_supported(model)
    had_loss_function = "_loss_function" in model.__dict__
    state = _State(
        head=head,
        model_name=_name(model),
        loss_function=model.loss_function,
        had_loss_function=had_loss_function,
        forward_in_dict=model.__dict__.get("forward"),
        head_forward_in_dict=head.__dict__.get("forward"),
        impl=impl,
        chunk_size=chunk_size,
        memory=memory,
        label_smoothing=float(label_smoothing),
        z_loss=float(z_loss),
        fuse_in_eval=fuse_in_eval,
    )
    # Everything installed is a small object holding the model (or its head) and reading its state
    # from the instance, never from a closure: a deepcopy of a patched model (a reference model, an
    # EMA copy) then computes with its own weights, and the patched model pickles (torch.save).
    model.__dict__[_STATE_ATTR] = state
    head.__dict__[_STATE_ATTR] = state
    head.forward = _HeadForward(head)  # type: ignore[method-assign,assignment]
    model.forward = _ModelForward(model)  # type: ignore[method-assign]
    model.loss_function = _LossFunction(model)  # type: ignore[assignment]
    return model


class _HeadForward:
    """The output embedding's ``forward`` while patched."""

    def __init__(self, head: nn.Linear) -> None:
        self.head = head

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        return _head_forward(self.head, hidden)


class _ModelForward:
    """The model's ``forward`` while patched, with the class forward's name and signature.

    Trainer inspects ``model.forward``'s signature to decide whether to pass
    ``num_items_in_batch``; the answer stays the same as without the patch.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        functools.update_wrapper(
            self,
            type(model).forward,
            assigned=("__module__", "__name__", "__qualname__", "__doc__"),
        )

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.signature(type(self.model).forward.__get__(self.model))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if _compiling():
            return _eager_patched_forward()(self.model, args, kwargs)
        return _patched_forward(self.model, args, kwargs)


def _compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    check = getattr(compiler, "is_compiling", None)
    return bool(check()) if check is not None else False


_EAGER: list[Any] = []


def _eager_patched_forward() -> Any:
    """:func:`_patched_forward` behind ``torch.compiler.disable``: under ``torch.compile`` the
    fused forward runs eagerly (a graph break), since Dynamo cannot trace the logits stand-in.
    Built on first use, so importing this module does not load Dynamo."""
    if not _EAGER:
        _EAGER.append(torch.compiler.disable(_patched_forward, recursive=True))
    return _EAGER[0]


class _LossFunction:
    """The model's ``loss_function`` while patched."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __call__(
        self, logits: torch.Tensor, labels: torch.Tensor, vocab_size: int, **kwargs: Any
    ) -> torch.Tensor:
        return _loss_function(self.model, logits, labels, vocab_size, **kwargs)


def _head_forward(head: nn.Linear, hidden: torch.Tensor) -> torch.Tensor:
    state: _State = head.__dict__[_STATE_ATTR]
    if not state.capturing:
        if state.head_forward_in_dict is not None:
            return state.head_forward_in_dict(hidden)  # type: ignore[no-any-return]
        return nn.Linear.forward(head, hidden)
    state.head_calls += 1
    lse = functools.partial(_exact_logsumexp, state)
    probe = make_probe(hidden, head.weight, head.bias, state.model_name, logsumexp=lse)
    return _fsdp_probe(head, probe)  # FSDP2: see the end of this module


def _patched_forward(self: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    state: _State = self.__dict__[_STATE_ATTR]

    def original() -> Any:
        if state.forward_in_dict is not None:
            return state.forward_in_dict(*args, **kwargs)
        return type(self).forward(self, *args, **kwargs)

    fuse = kwargs.get("labels") is not None and (
        self.training or state.fuse_in_eval or state.capture is not None
    )
    if not fuse or state.capturing:
        return original()
    state.capturing, state.head_calls, state.fused_loss_calls = True, 0, 0
    state.lse_from_loss, state.lse_shared = None, False
    try:
        out = original()
    except UnsupportedModelError:
        raise
    except Exception as exc:
        if state.head_calls and not state.fused_loss_calls:
            # The stand-in logits reached code other than self.loss_function (a loss written
            # into the model's forward, say), which failed on them.
            raise UnsupportedModelError(
                f"crossentropy.hf: {_name(self)} does not compute its loss through "
                f"self.loss_function, so its loss cannot be fused ({type(exc).__name__}: {exc})"
            ) from exc
        raise
    finally:
        state.capturing = False
        if state.lse_from_loss is not None and not state.lse_shared:
            state.share_lse = False  # kept for nothing: the model no longer asks for it
        state.lse_from_loss = None
    return _finish(self, state, out)


def _loss_function(
    self: nn.Module, logits: torch.Tensor, labels: torch.Tensor, vocab_size: int, **kwargs: Any
) -> torch.Tensor:
    state: _State = self.__dict__[_STATE_ATTR]
    if not isinstance(logits, LogitsProbe):
        return state.loss_function(logits, labels, vocab_size, **kwargs)  # type: ignore[no-any-return]
    state.fused_loss_calls += 1
    if state.capture is not None:
        # token_logprobs / distillation_loss want the hidden states and the head, not a loss
        state.capture.append(logits._ce_trace)
        return torch.zeros((), dtype=torch.float32, device=labels.device)
    return _fused_causal_lm_loss(self, state, logits, labels, vocab_size, **kwargs)


def unpatch(model: _M) -> _M:
    """Undo :func:`patch` on ``model`` and return it; a model that is not patched is returned as is."""
    state: _State | None = model.__dict__.pop(_STATE_ATTR, None)
    if state is None:
        return model
    _restore(model, "forward", state.forward_in_dict)
    _restore(state.head, "forward", state.head_forward_in_dict)
    state.head.__dict__.pop(_STATE_ATTR, None)
    if state.had_loss_function:
        model.loss_function = state.loss_function
    else:
        model.__dict__.pop("_loss_function", None)
    return model


def _restore(module: nn.Module, attr: str, previous: Any) -> None:
    if previous is None:
        module.__dict__.pop(attr, None)
    else:
        module.__dict__[attr] = previous


@contextlib.contextmanager
def patched(model: _M, **options: Any) -> Iterator[_M]:
    """Context manager: ``with patched(model): ...`` patches on entry and unpatches on exit.

    Keyword arguments are those of :func:`patch`.
    """
    patch(model, **options)
    try:
        yield model
    finally:
        unpatch(model)


def _finish(model: nn.Module, state: _State, out: Any) -> Any:
    name = _name(model)
    if state.head_calls != 1:
        raise UnsupportedModelError(
            f"crossentropy.hf: {name} called its output embedding {state.head_calls} times in "
            "one forward pass; the fused loss handles exactly one projection to the vocabulary"
        )
    if state.fused_loss_calls != 1:
        raise UnsupportedModelError(
            f"crossentropy.hf: {name} did not pass its logits to self.loss_function once "
            f"(passed {state.fused_loss_calls} times), so its loss cannot be fused"
        )
    # The probe refuses any arithmetic, so a loss built from it cannot exist; a model that
    # returns the logits themselves as its loss (or no loss) is refused here.
    loss = out[0] if isinstance(out, tuple) and out else getattr(out, "loss", None)
    if not isinstance(loss, torch.Tensor) or isinstance(loss, LogitsProbe):
        raise UnsupportedModelError(
            f"crossentropy.hf: {name} returned {type(loss).__name__} as its loss, not the tensor "
            "that self.loss_function computed, so its loss cannot be fused"
        )
    # The logits (the probe, or a cast or scaled copy of it) are not returned: a ModelOutput
    # gets logits=None, a tuple loses them, as when transformers builds an output with None.
    if isinstance(out, tuple):
        return tuple(x for x in out if not isinstance(x, LogitsProbe))
    for key in [k for k, v in out.items() if isinstance(v, LogitsProbe)]:
        OrderedDict.__delitem__(out, key)
        object.__setattr__(out, key, None)
    return out


def _scaled_inputs(
    trace: Trace, transform: LogitTransform
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The hidden states as (N, D) rows and the bias, both times the transform's input scale."""
    hidden, bias = trace.hidden, trace.bias
    inputs = hidden.reshape(-1, hidden.shape[-1])
    if transform.input_scale != 1.0:
        inputs = inputs * transform.input_scale
        bias = None if bias is None else bias * transform.input_scale
    return inputs, bias


def _exact_logsumexp(state: _State, trace: Trace) -> torch.Tensor:
    """``logits.logsumexp(-1)`` of the logits ``trace`` describes, without building them.

    fp32 (float64 for float64 weights), shape ``hidden.shape[:-1]``, with its gradient. Asked
    after the loss of the same logits, it comes from the loss's own pass over the vocabulary
    (from the second call on, once the model has shown that it asks); otherwise it costs one
    more chunked pass, its backward included.
    """
    from crossentropy.torch import linear_cross_entropy

    trace = _fsdp_trace(state, trace)
    transform = logit_transform(trace)
    kept = state.lse_from_loss
    if kept is not None and _same_logits(kept[0], trace) and kept[1] == transform:
        state.lse_shared = True
        return kept[2].reshape(trace.hidden.shape[:-1])
    if state.fused_loss_calls:
        state.share_lse = True
    inputs, bias = _scaled_inputs(trace, transform)
    # Any valid class does: only the logsumexp of each row is used.
    target = torch.zeros(inputs.shape[0], dtype=torch.long, device=inputs.device)
    aux = linear_cross_entropy(
        inputs,
        trace.weight,
        target,
        linear_bias=bias,
        reduction="none",
        softcap=transform.softcap,
        return_aux=True,
        impl=state.impl,
        chunk_size=state.chunk_size,
        memory=state.memory,
    )
    return aux.lse.reshape(trace.hidden.shape[:-1])


def _same_logits(a: Trace, b: Trace) -> bool:
    return a.hidden is b.hidden and a.weight is b.weight and a.bias is b.bias


def _fused_causal_lm_loss(
    model: nn.Module,
    state: _State,
    logits: LogitsProbe,
    labels: torch.Tensor,
    vocab_size: int,
    num_items_in_batch: torch.Tensor | int | None = None,
    ignore_index: int = -100,
    shift_labels: torch.Tensor | None = None,
    **_: Any,
) -> torch.Tensor:
    """transformers' ``ForCausalLMLoss`` computed from the probe without the logits."""
    from crossentropy.torch import linear_cross_entropy

    trace: Trace = _fsdp_trace(state, logits._ce_trace)
    transform = logit_transform(trace)
    weight, hidden = trace.weight, trace.hidden
    if weight.shape[0] != vocab_size:
        raise UnsupportedModelError(
            f"crossentropy.hf: {_name(model)} has an output embedding of {weight.shape[0]} rows "
            f"but a vocab_size of {vocab_size}; the fused loss needs them equal"
        )
    if shift_labels is None:
        padded = nn.functional.pad(labels, (0, 1), value=ignore_index)
        shift_labels = padded[..., 1:]
    target = shift_labels.reshape(-1).to(hidden.device)
    inputs, bias = _scaled_inputs(trace, transform)
    if target.shape[0] != inputs.shape[0]:
        raise ValueError(
            f"crossentropy.hf: {_name(model)} got labels with {target.shape[0]} positions for "
            f"hidden states with {inputs.shape[0]} positions (shape {tuple(hidden.shape)})"
        )
    reduction = "sum" if num_items_in_batch is not None else "mean"
    options: dict[str, Any] = dict(
        linear_bias=bias,
        reduction=reduction,
        ignore_index=ignore_index,
        label_smoothing=state.label_smoothing,
        z_loss=state.z_loss,
        softcap=transform.softcap,
        impl=state.impl,
        chunk_size=state.chunk_size,
        memory=state.memory,
    )
    if state.share_lse:
        # The model will ask for the logsumexp of these logits: keep the one computed here.
        aux = linear_cross_entropy(inputs, weight, target, return_aux=True, **options)
        loss = aux.loss
        state.lse_from_loss = (trace, transform, aux.lse)
    else:
        loss = linear_cross_entropy(inputs, weight, target, **options)
    if num_items_in_batch is not None:
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(loss.device)
        loss = loss / num_items_in_batch
    return loss


# ------------------------------------------------------------------------------------------------
# FSDP2: an output embedding that is a ``fully_shard`` unit of its own


def _fsdp_probe(head: nn.Module, probe: LogitsProbe) -> LogitsProbe:
    """FSDP2 hooks an unshard-before-backward onto a unit's outputs that need a gradient. The
    probe takes no part in autograd (the fused loss differentiates the hidden states and the
    head's parameters directly), so for such a head it says it needs none and FSDP2 leaves it be."""
    from crossentropy.torch.parallel._dtensor import is_fsdp_module

    if is_fsdp_module(head):
        probe._ce_trace = replace(probe._ce_trace, requires_grad=False)
    return probe


def _fsdp_trace(state: _State, trace: Trace) -> Trace:
    """The head's parameters as they are at the loss. After an FSDP2 unit's forward its gathered
    weight is freed and the module holds the sharded DTensor again, which
    :func:`crossentropy.torch.linear_cross_entropy` gathers once per call (or splits the
    vocabulary over, when the ranks hold the same tokens); its gradient goes to that DTensor."""
    from crossentropy.torch.parallel._dtensor import is_fsdp_module

    if not is_fsdp_module(state.head):
        return trace
    return replace(trace, weight=state.head.weight, bias=state.head.bias)
