"""The pinned outcomes of the Hugging Face sweep (``test_hf_sweep.py``), one place for two readers.

The sweep checks that every causal LM of the installed transformers either matches its own loss
and gradients when patched, or is refused, or is listed here as one that cannot be built or run
from a tiny configuration. The documentation build (``docs/_scripts/gen_assets.py``) reads the
same lists to write the Hugging Face guide's list of refused and untested models, with the
installed transformers version and the counts, so the page cannot disagree with the test.
"""

from __future__ import annotations

# model_type: what fails, as the error says it. Checked: each still fails that way.
CANNOT_RUN: dict[str, str] = {
    # the config's defaults do not build a model (a field the generic shrink leaves unset)
    "cohere_compass_text": "KeyError: 'full_attention'",
    "dbrx": "no attribute 'rope_theta'",
    "qwen4_exp": "unsupported operand type(s) for //: 'NoneType'",
    "qwen4_exp_text": "unsupported operand type(s) for //: 'NoneType'",
    "longcat_flash": "split_with_sizes expects split_sizes",
    "zamba": "tie_weights_keys",
    "gemma4_assistant": "hidden_size_per_layer_input must be 0",
    # per-layer attributes (heterogeneous layers): a global size cannot be set generically
    "dots3_note": "is a per-layer attribute",
    "dots3_note_text": "is a per-layer attribute",
    "gemma4": "is a per-layer attribute",
    "gemma4_text": "is a per-layer attribute",
    "gemma4_unified": "is a per-layer attribute",
    "gemma4_unified_assistant": "is a per-layer attribute",
    "gemma4_unified_text": "is a per-layer attribute",
    "gemma3n_text": "The set of layer types producing a cache",
    # KV-sharing layers: a shrunk layer count leaves a layer reading a cache nobody produces
    "kolibri1_1": "must read the K/V of an earlier layer",
    # needs an optional package the dev extra does not install
    "gemma3n": "requires the timm library",
    # an image-captioning model: its loss needs image tokens in front of the text
    "git": "Expected input batch_size",
}

# model_type: the operation the refusal names. Most compute their loss in forward with
# CrossEntropyLoss()(logits.view(-1, V), ...) instead of self.loss_function.
REFUSED: dict[str, str] = {
    **{
        name: "'view'"
        for name in (
            "bart",
            "bigbird_pegasus",
            "blenderbot",
            "blenderbot-small",
            "cpmant",
            "marian",
            "mbart",
            "mvp",
            "pegasus",
            "plbart",
            "trocr",
            "whisper",
            "xlm",
            "xlnet",
        )
    },
    "prophetnet": "'__getitem__'",
    # output embeddings that are not one nn.Linear
    "dory": "not a plain torch.nn.Linear",
    # a Linear subclass with its own forward (casts the input to the weight dtype, fp32 output)
    "ergo": "not a plain torch.nn.Linear",
    "musicgen": "not a plain torch.nn.Linear",
    "musicgen_melody": "not a plain torch.nn.Linear",
}

# What each refusal above means, for the documentation (keyed by the operation the error names).
REFUSAL_REASONS: dict[str, str] = {
    "'view'": "computes its loss inside its own forward (CrossEntropyLoss on logits.view(...)), "
    "not through self.loss_function",
    "'__getitem__'": "indexes its logits inside its own forward to compute the loss",
    "not a plain torch.nn.Linear": "its output layer is not a plain torch.nn.Linear (a "
    "subclass with its own forward, or several heads)",
}
