"""Hugging Face transformers integration: fused training loss for any ``*ForCausalLM``.

``crossentropy.hf.patch(model)`` makes a causal LM compute its training loss with
:func:`crossentropy.torch.linear_cross_entropy` from the final hidden states and the output
embedding weight, so the ``N x V`` logits are never built; ``token_logprobs`` (RL) and
``distillation_loss`` (two models) use the same mechanism. Needs ``crossentropy[hf]``.
"""

from crossentropy.hf._errors import UnsupportedModelError
from crossentropy.hf._heads import distillation_loss, token_logprobs
from crossentropy.hf._patch import is_patched, patch, patched, unpatch

__all__ = [
    "UnsupportedModelError",
    "distillation_loss",
    "is_patched",
    "patch",
    "patched",
    "token_logprobs",
    "unpatch",
]
