"""Tiny configurations for every causal LM of the installed transformers, built generically.

A config's own defaults describe a real model (billions of parameters). :func:`tiny_config` keeps
its architecture switches and shrinks every size: the common size fields get fixed small values,
any other integer field that is large (a hidden size the table does not know, a hash vocabulary)
is capped, special token ids are moved into the small vocabulary, per-layer lists keep one layer
of each kind, dropout is switched off (both runs of a test must see the same model), and nested
configs (a text config, a decoder config) are shrunk the same way. ``FAMILY`` holds the few
values that cannot be derived generically.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import torch
import transformers
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

VOCAB = 131  # prime: no power-of-two alignment hides a chunking bug
# Input ids are drawn below this; special token ids (image, audio, ...) are moved above it.
FIRST_SPECIAL_ID = VOCAB - 16
MAX_PARAMETERS = 3_000_000

SIZES: dict[str, Any] = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    d_model=32,
    n_embd=32,
    emb_dim=32,
    embed_dim=32,
    intermediate_size=64,
    ffn_dim=64,
    decoder_ffn_dim=64,
    encoder_ffn_dim=64,
    d_ff=64,
    dff=64,
    n_inner=64,
    d_inner=64,
    intermediate_size_mlp=64,
    ffn_hidden_size=64,
    dim_ff=64,
    feed_forward_size=64,
    moe_intermediate_size=32,
    shared_expert_intermediate_size=32,
    expert_ffn_hidden_size=32,
    shared_intermediate_size=32,
    dense_intermediate_size=64,
    shared_experts_intermediate_size=32,
    num_hidden_layers=2,
    n_layer=2,
    n_layers=2,
    num_layers=2,
    decoder_layers=2,
    encoder_layers=2,
    num_attention_heads=4,
    n_head=4,
    decoder_attention_heads=4,
    encoder_attention_heads=4,
    num_key_value_heads=4,  # as many as attention heads: multi-head latent attention needs it
    head_dim=8,
    dim_head=8,
    attention_head_size=8,
    kv_channels=8,
    max_position_embeddings=64,
    n_positions=64,
    n_ctx=64,
    max_seq_len=64,
    num_experts=4,
    num_local_experts=4,
    n_routed_experts=4,
    moe_num_experts=4,
    num_experts_per_tok=2,
    n_group=1,
    topk_group=1,
    kv_lora_rank=16,
    q_lora_rank=16,
    qk_rope_head_dim=8,
    qk_nope_head_dim=8,
    v_head_dim=8,
    mamba_n_heads=8,
    mamba_d_head=8,
    mamba_d_state=16,
    mamba_chunk_size=8,
    mamba_num_heads=8,
    mamba_head_dim=8,
    ssm_state_size=16,
    state_size=16,
    chunk_size=8,
    rotary_dim=4,
    mamba_d_ssm=64,
    num_heads=8,
    moe_k=2,
)
# A few families need a consistent value the size table cannot infer (a per-layer pattern, an
# expert count), or a switch that the causal LM needs (is_decoder).
FAMILY: dict[str, dict[str, Any]] = {
    "gpt_neo": {"attention_types": [[["global", "local"], 1]]},
    "zaya": {"num_experts_per_tok": 1},
    # Hybrids whose default pattern for two layers has no attention layer. Bamba's z-loss on the
    # logits is switched on: it is the one causal LM that reads them after its loss.
    "bamba": {"attn_layer_indices": [1], "z_loss_coefficient": 0.05},
    "granitemoehybrid": {"layer_types": ["mamba", "attention"]},
    "lfm2_moe": {"layer_types": ["conv", "full_attention"]},
    "dots1": {"n_shared_experts": 1},
    "mimo_v2_flash": {"num_key_value_heads": 2},
    "reformer": {
        "is_decoder": True,
        "attn_layers": ["local", "local"],
        "axial_pos_shape": [2, 4],  # multiplies to the sequence length of the tests
        "axial_pos_embds_dim": [16, 16],
        "local_attn_chunk_length": 8,
        "lsh_attn_chunk_length": 8,
    },
    # the labels must lie in the unpadded part of the vocabulary
    "inkling2_text": {"unpadded_vocab_size": FIRST_SPECIAL_ID},
    "inkling2_loop_text": {"unpadded_vocab_size": FIRST_SPECIAL_ID},
}
# Integer fields that are not sizes, however large.
_KEEP = re.compile(r"(token_id|token_index|_id|seed|_ids)$")
_TOKEN = re.compile(r"(token_id|token_index|token_ids)$")
_DROPOUT = re.compile(r"(dropout|pdrop|drop_prob|drop_rate)")
_CAP = 32


def causal_lm_classes() -> list[tuple[str, str]]:
    """``(model_type, class name)`` for every causal LM the installed transformers maps."""
    pairs = []
    for model_type, names in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.items():
        for name in names if isinstance(names, (list, tuple)) else [names]:
            pairs.append((model_type, name))
    return pairs


def _overrides(config_class: type, default: Any, depth: int = 0) -> dict[str, Any]:
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    kwargs: dict[str, Any] = {}
    special = iter(range(FIRST_SPECIAL_ID, VOCAB))
    for name in fields:
        value = getattr(default, name, None)
        if name in SIZES:
            if value is None or (isinstance(value, int) and not isinstance(value, bool)):
                kwargs[name] = SIZES[name]
            continue
        if name.endswith("vocab_size") and isinstance(value, int):
            kwargs[name] = VOCAB
            continue
        if isinstance(value, transformers.PretrainedConfig) and depth < 3:
            # As a dict of changes, the parent builds and completes it from its own defaults.
            kwargs[name] = _overrides(type(value), value, depth + 1)
            continue
        if _DROPOUT.search(name) and isinstance(value, float):
            # Same loss in both runs: Reformer reseeds its dropout from the clock, for one.
            kwargs[name] = 0.0
            continue
        if _TOKEN.search(name):
            if isinstance(value, int) and not isinstance(value, bool) and value >= VOCAB:
                kwargs[name] = next(special, VOCAB - 1)
            elif isinstance(value, list) and any(isinstance(v, int) and v >= VOCAB for v in value):
                kwargs[name] = [next(special, VOCAB - 1) for _ in value]
            continue
        if _KEEP.search(name):
            continue
        if isinstance(value, int) and not isinstance(value, bool) and value > 64:
            kwargs[name] = _CAP
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(default, name, None)
        if isinstance(value, int) and value >= VOCAB:
            kwargs[name] = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}[name]
        elif isinstance(value, list) and any(v >= VOCAB for v in value):
            kwargs[name] = [2]
    if "is_decoder" in fields:
        kwargs["is_decoder"] = True
    kwargs.update(_fewer_layers(default, fields))
    return kwargs


def _fewer_layers(default: Any, fields: Any) -> dict[str, Any]:
    """Per-layer lists (layer types, ...) cut to one layer of each kind, at least two layers."""
    n = getattr(default, "num_hidden_layers", None)
    if not isinstance(n, int) or n <= SIZES["num_hidden_layers"]:
        return {}
    lists = {
        name: value
        for name in fields
        if isinstance(value := getattr(default, name, None), (list, tuple)) and len(value) == n
    }
    if not lists:
        return {}
    primary = lists.get("layer_types", next(iter(lists.values())))
    first: dict[str, int] = {}
    for i, kind in enumerate(primary):
        first.setdefault(repr(kind), i)
    keep = sorted(first.values())
    if len(keep) < SIZES["num_hidden_layers"]:
        keep = sorted({*keep, *range(SIZES["num_hidden_layers"])})[: SIZES["num_hidden_layers"]]
    changes: dict[str, Any] = {name: [value[i] for i in keep] for name, value in lists.items()}
    changes["num_hidden_layers"] = len(keep)
    return changes


def tiny_config(model_type: str) -> Any:
    """The config of ``model_type`` with every size shrunk (see the module docstring)."""
    config_class = CONFIG_MAPPING[model_type]
    kwargs = _overrides(config_class, config_class())
    kwargs.update(FAMILY.get(model_type, {}))
    config = config_class(**kwargs)
    config._attn_implementation = "eager"
    return config


def _for_class(config: Any, cls: type) -> Any:
    """``config``, or the nested config of the class's own type (a text config)."""
    wanted = getattr(cls, "config_class", None)
    if wanted is None or isinstance(config, wanted):
        return config
    for value in vars(config).values():
        if isinstance(value, wanted):
            value._attn_implementation = "eager"
            return value
    return config


def build(model_type: str, class_name: str, seed: int = 0) -> Any:
    """A tiny ``class_name`` in fp32 and train mode; ``ValueError`` if it would still be large."""
    cls = getattr(transformers, class_name)
    config = _for_class(tiny_config(model_type), cls)
    with torch.device("meta"):
        meta = cls(config)
    n = sum(p.numel() for p in meta.parameters())
    if n > MAX_PARAMETERS:
        raise ValueError(f"{n} parameters after shrinking (more than {MAX_PARAMETERS})")
    torch.manual_seed(seed)
    model = cls(config).float().train()
    languages = getattr(config, "languages", None)
    if hasattr(model, "set_default_language") and languages:
        model.set_default_language(languages[0])  # X-MOD's adapters need a language
    return model
