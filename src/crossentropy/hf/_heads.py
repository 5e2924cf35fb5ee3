"""Per-token log-probabilities and distillation of causal LMs from their hidden states, no logits.

Both run the model's own forward with :func:`crossentropy.hf.patch`'s logits stand-in, which hands
back the final hidden states, the output embedding and the model's own logit transform (soft-cap,
scale) instead of the ``(B, T, V)`` logits, then call :func:`crossentropy.torch.linear_logprobs` or
:func:`crossentropy.torch.linear_distillation_loss` on them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from crossentropy.hf._errors import UnsupportedModelError
from crossentropy.hf._patch import _STATE_ATTR, _fsdp_trace, is_patched, patch, unpatch
from crossentropy.hf._probe import LogitTransform, Trace, logit_transform

__all__ = [
    "distillation_loss",
    "token_logprobs",
]


def _check_vocab(fn: str, model: nn.Module, input_ids: torch.Tensor) -> None:
    """Token ids inside the model's input vocabulary (torch's own error, "index out of range in
    self", names neither the id nor the size): at once on the CPU, on the device on a GPU."""
    get = getattr(model, "get_input_embeddings", None)
    size = getattr(get(), "num_embeddings", None) if callable(get) else None
    if not isinstance(size, int) or input_ids.numel() == 0:
        return
    bad = (input_ids < 0) | (input_ids >= size)
    where = f"crossentropy.hf.{fn}: input_ids"
    if input_ids.device.type == "cpu":
        if bool(bad.any()):
            pos = tuple(int(i) for i in bad.nonzero()[0])
            raise ValueError(
                f"{where} holds token id {int(input_ids[pos])} at {pos}, outside the vocabulary "
                f"of {type(model).__name__} (its input embeddings have {size} rows: ids 0 to "
                f"{size - 1})"
            )
        return
    torch._assert_async(
        ~bad.any(), f"{where} holds a token id outside the model's vocabulary of {size}"
    )


def _check_ids(fn: str, input_ids: object, attention_mask: object) -> torch.Tensor:
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids)
        raise ValueError(
            f"crossentropy.hf.{fn}: input_ids must be a (batch, length) tensor; got {shape}"
        )
    if input_ids.is_floating_point():
        raise TypeError(
            f"crossentropy.hf.{fn}: input_ids must hold integer token ids; got {input_ids.dtype}"
        )
    if input_ids.shape[1] < 2:
        raise ValueError(
            f"crossentropy.hf.{fn}: input_ids needs at least 2 tokens per row (a next token to score)"
        )
    if attention_mask is not None and (
        not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape
    ):
        raise ValueError(
            f"crossentropy.hf.{fn}: attention_mask must have input_ids' shape {tuple(input_ids.shape)}"
        )
    return input_ids


def _capture(
    fn: str,
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    kwargs: dict[str, Any],
) -> tuple[Trace, LogitTransform]:
    """The model's final hidden states, head and logit transform for ``input_ids``."""
    _check_vocab(fn, model, input_ids)
    temporary = not is_patched(model)
    if temporary:
        try:
            patch(model)
        except UnsupportedModelError as exc:
            # the caller called this function, not patch: the message names it
            raise UnsupportedModelError(
                str(exc).replace("crossentropy.hf.patch", f"crossentropy.hf.{fn}", 1)
            ) from None
    state = model.__dict__[_STATE_ATTR]
    state.capture = []
    try:
        # labels switch the patch on; the recorded loss is a dummy the caller never sees
        model(input_ids=input_ids, attention_mask=attention_mask, labels=input_ids, **kwargs)
        (trace,) = state.capture
    finally:
        state.capture = None
        if temporary:
            unpatch(model)
    trace = _fsdp_trace(state, trace)
    return trace, logit_transform(trace)


def _next_token_targets(
    input_ids: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor | None
) -> torch.Tensor:
    """(B, T-1) ids of the next tokens, -100 where there is none to score (padding, -100 labels)."""
    target = (labels if labels is not None else input_ids)[:, 1:].clone()
    if attention_mask is not None:
        target[attention_mask[:, 1:] == 0] = -100
    return target


def _rows(trace: Trace) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Hidden states of the positions that predict a next token: (B, T-1, D), weight, bias."""
    return trace.hidden[:, :-1], trace.weight, trace.bias


def token_logprobs(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    temperature: float | torch.Tensor = 1.0,
    return_entropy: bool = False,
    top_k: int | torch.Tensor | None = None,
    top_p: float | torch.Tensor | None = None,
    fp32_head: bool = False,
    impl: str = "auto",
    memory: str | int = "auto",
    chunk_size: int | None = None,
    **model_kwargs: Any,
) -> Any:
    r"""Log-probability of each next token (and the entropy) under a causal LM, without its logits.

    Equals ``log_softmax(model(input_ids).logits[:, :-1] / T, -1)`` gathered at ``input_ids[:, 1:]``,
    with the model's own soft-capping and logit scaling (Gemma 2, Cohere, Granite, ...), computed
    by :func:`crossentropy.torch.linear_logprobs` from the final hidden states: the ``(B, T, V)``
    logits never exist. Gradients reach every parameter of the model (through the hidden states
    and the output embedding), from upstream gradients of the log-probabilities and the entropy.
    Works in train and eval mode and under ``torch.no_grad``; the model need not be patched.

    Args:
        model: a transformers ``*ForCausalLM``.
        input_ids: (B, T) token ids: prompt and completion.
        attention_mask: (B, T) 1/0, or None; positions whose *next* token is padding get 0.
        temperature, return_entropy, top_k, top_p, fp32_head, impl, memory, chunk_size: as in
            :func:`crossentropy.torch.linear_logprobs` (per-token tensors have shape (B, T-1)).
        model_kwargs: passed to the model's forward (e.g. ``position_ids``).

    Returns:
        (B, T-1) float32 log-probabilities, or ``LogProbs(logprobs, entropy)`` with
        ``return_entropy=True``.

    Example:
        >>> import torch, transformers
        >>> from crossentropy.hf import token_logprobs
        >>> cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
        ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)
        >>> _ = torch.manual_seed(0)
        >>> model = transformers.LlamaForCausalLM(cfg)
        >>> ids = torch.randint(0, 64, (2, 6))
        >>> lp = token_logprobs(model, ids, temperature=0.9)
        >>> logits = model(input_ids=ids).logits[:, :-1] / 0.9
        >>> ref = logits.log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0]
        >>> lp.shape, bool(torch.allclose(lp, ref, atol=1e-5))
        (torch.Size([2, 5]), True)
    """
    from crossentropy.torch import linear_logprobs

    input_ids = _check_ids("token_logprobs", input_ids, attention_mask)
    trace, transform = _capture("token_logprobs", model, input_ids, attention_mask, model_kwargs)
    hidden, weight, bias = _rows(trace)
    return linear_logprobs(
        hidden,
        weight,
        _next_token_targets(input_ids, attention_mask, None).to(hidden.device),
        linear_bias=bias,
        temperature=temperature,
        softcap=transform.softcap,
        logit_scale=transform.input_scale,
        return_entropy=return_entropy,
        top_k=top_k,
        top_p=top_p,
        fp32_head=fp32_head,
        impl=impl,
        memory=memory,
        chunk_size=chunk_size,
    )


def distillation_loss(
    student: nn.Module,
    teacher: nn.Module | torch.Tensor | None = None,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    *,
    divergence: str,
    teacher_topk: tuple[torch.Tensor, torch.Tensor] | None = None,
    teacher_requires_grad: bool = False,
    **options: Any,
) -> torch.Tensor:
    r"""Distillation loss between a teacher LM and a student LM on the same tokens, without logits.

    Runs both models' own forwards through the logits stand-in of :func:`crossentropy.hf.patch`
    (each with its own soft-cap and logit scale) and computes
    :func:`crossentropy.torch.linear_distillation_loss` between their next-token distributions at
    every position that has a next token (not padding, not a ``-100`` label). The teacher runs
    under ``torch.no_grad`` unless ``teacher_requires_grad=True``.

    Offline distillation: ``distillation_loss(student, input_ids, teacher_topk=(ids, logprobs),
    ...)`` takes the teacher as its saved top-k instead of a model (no teacher in memory), and
    compares it with the student's distribution at each position (``topk="tail"`` or
    ``"renormalized"``, see ``linear_distillation_loss``). ``ids`` and ``logprobs`` have shape
    (B, T-1, k): entry ``t`` is the teacher's top-k for the token that follows position ``t``, i.e.
    ``input_ids[:, t + 1]``. vLLM's ``prompt_logprobs=k`` for a sequence of T tokens give T entries,
    the first ``None`` (no prediction for the first token): drop it and the rest line up.

    Args:
        student: a transformers ``*ForCausalLM`` model.
        teacher: a ``*ForCausalLM`` model sharing the student's tokenizer; leave it out (or pass
            the input ids in its place) when ``teacher_topk`` is given.
        input_ids: (B, T) token ids.
        attention_mask: (B, T) 1/0, or None.
        labels: (B, T) labels (``-100`` where a position is not scored, e.g. the prompt), or None:
            then every next token counts; also the hard labels of ``hard_weight``.
        divergence: ``"kl"``, ``"reverse_kl"``, ``"jsd"`` or ``"cross_entropy"``.
        teacher_topk: ``(ids, logprobs)``, each (B, T-1, k): the teacher's saved top-k ids and
            log-probabilities for each next token, instead of a teacher model.
        teacher_requires_grad: also differentiate the teacher (co-training).
        options: the other options of :func:`crossentropy.torch.linear_distillation_loss`
            (``beta``, ``temperature``, ``t2_scaling``, ``hard_weight``, ``soft_weight``,
            ``reduction``, ``vocab_size``, ``topk``, ``impl``, ``memory``, ``chunk_size``).

    Returns:
        The loss (see ``reduction``; ``"none"`` gives (B, T-1)).
    """
    from crossentropy.torch import linear_distillation_loss

    fn = "crossentropy.hf.distillation_loss"
    if teacher_topk is not None:
        if isinstance(teacher, torch.Tensor):
            # distillation_loss(student, input_ids, [attention_mask, [labels]], teacher_topk=...):
            # the positional arguments sit one slot early; keywords are where they belong
            mask: torch.Tensor | None
            if input_ids is not None:  # the attention mask, given positionally
                if attention_mask is not None and labels is not None:
                    raise TypeError(
                        f"{fn}: with teacher_topk, pass (student, input_ids, attention_mask, "
                        "labels): one positional argument too many"
                    )
                mask, labels = input_ids, labels if labels is not None else attention_mask
            else:
                mask = attention_mask
            teacher, input_ids, attention_mask = None, teacher, mask
        if teacher is not None:
            raise ValueError(
                f"{fn}: give the teacher either as a model or as teacher_topk, not both"
            )
        if teacher_requires_grad:
            raise ValueError(f"{fn}: teacher_requires_grad needs a teacher model, not teacher_topk")
        if not isinstance(teacher_topk, (tuple, list)) or len(teacher_topk) != 2:
            raise TypeError(
                f"{fn}: teacher_topk must be a pair (ids, logprobs); got {type(teacher_topk).__name__}"
            )
    elif not isinstance(teacher, nn.Module):
        raise TypeError(
            f"{fn}: teacher must be a *ForCausalLM model (or pass teacher_topk=(ids, logprobs)); "
            f"got {type(teacher).__name__}"
        )
    input_ids = _check_ids("distillation_loss", input_ids, attention_mask)
    if labels is not None and (
        not isinstance(labels, torch.Tensor) or labels.shape != input_ids.shape
    ):
        raise ValueError(
            f"crossentropy.hf.distillation_loss: labels must have input_ids' shape {tuple(input_ids.shape)}"
        )
    s_trace, s_form = _capture("distillation_loss", student, input_ids, attention_mask, {})
    hs, ws, bs = _rows(s_trace)
    target = _next_token_targets(input_ids, attention_mask, labels).to(hs.device)
    if teacher_topk is not None:
        ids, logprobs = teacher_topk
        return linear_distillation_loss(
            hs,
            ws,
            None,  # no teacher head: the teacher is its top-k
            None,
            divergence=divergence,
            teacher_topk_ids=ids,
            teacher_topk_logprobs=logprobs,
            student_linear_bias=bs,
            student_softcap=s_form.softcap,
            student_logit_scale=s_form.input_scale,
            target=target,
            **options,
        )
    assert isinstance(teacher, nn.Module)
    with torch.set_grad_enabled(teacher_requires_grad and torch.is_grad_enabled()):
        t_trace, t_form = _capture("distillation_loss", teacher, input_ids, attention_mask, {})
    ht, wt, bt = _rows(t_trace)
    return linear_distillation_loss(
        hs,
        ws,
        ht,
        wt,
        divergence=divergence,
        student_linear_bias=bs,
        teacher_linear_bias=bt,
        student_softcap=s_form.softcap,
        teacher_softcap=t_form.softcap,
        student_logit_scale=s_form.input_scale,
        teacher_logit_scale=t_form.input_scale,
        target=target,
        teacher_requires_grad=teacher_requires_grad,
        **options,
    )
