"""crossentropy.hf: the fused causal-LM loss equals each model's own loss and gradients."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from crossentropy import hf  # noqa: E402

VOCAB = 211  # odd and prime: no power-of-two alignment hides a chunking bug
HIDDEN = 32
COMMON: dict[str, Any] = dict(
    vocab_size=VOCAB,
    hidden_size=HIDDEN,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    pad_token_id=0,
)


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    # Models this small gain nothing from threads, and two test workers on two cores would fight.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _llama() -> Any:
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**COMMON))


def _mistral() -> Any:
    return transformers.MistralForCausalLM(transformers.MistralConfig(**COMMON, sliding_window=8))


def _qwen2() -> Any:
    return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**COMMON))


def _gemma() -> Any:
    # Tied input/output embeddings: gradients from the loss and the embedding lookup add up.
    return transformers.GemmaForCausalLM(transformers.GemmaConfig(**COMMON, head_dim=8))


def _gemma2() -> Any:
    # A small cap so the soft-capping changes the loss a lot (default 30 barely bends tiny logits).
    cfg = transformers.Gemma2Config(
        **COMMON, head_dim=8, final_logit_softcapping=2.0, sliding_window=8
    )
    return transformers.Gemma2ForCausalLM(cfg)


def _phi3() -> Any:
    return transformers.Phi3ForCausalLM(transformers.Phi3Config(**COMMON))


def _cohere() -> Any:
    # Declares a logit scale (logits * logit_scale) and ties the embeddings.
    return transformers.CohereForCausalLM(transformers.CohereConfig(**COMMON, logit_scale=3.5))


def _granite() -> Any:
    # Declares a logit divisor (logits / logits_scaling).
    return transformers.GraniteForCausalLM(
        transformers.GraniteConfig(**COMMON, logits_scaling=0.25)
    )


def _mixtral() -> Any:
    # Mixture of experts: the model adds its router auxiliary loss to the loss it gets back.
    cfg = transformers.MixtralConfig(
        **COMMON,
        num_local_experts=4,
        num_experts_per_tok=2,
        output_router_logits=True,
        router_aux_loss_coef=0.1,
    )
    return transformers.MixtralForCausalLM(cfg)


def _phi() -> Any:
    # An lm_head with a bias.
    cfg = transformers.PhiConfig(**{k: v for k, v in COMMON.items() if k != "num_key_value_heads"})
    return transformers.PhiForCausalLM(cfg)


ARCHITECTURES: dict[str, Callable[[], Any]] = {
    "llama": _llama,
    "mistral": _mistral,
    "qwen2": _qwen2,
    "gemma": _gemma,
    "gemma2": _gemma2,
    "phi3": _phi3,
    "cohere": _cohere,
    "granite": _granite,
    "mixtral": _mixtral,
    "phi": _phi,
}


def _build(name: str, seed: int = 0) -> Any:
    torch.manual_seed(seed)
    model = ARCHITECTURES[name]()
    model.config._attn_implementation = "eager"
    with torch.no_grad():
        # Random init gives near-uniform logits (std ~0.02); LM-like logits (std of a few units)
        # make soft-capping and the gradients matter.
        model.get_output_embeddings().weight.mul_(40.0)
    return model.float().train()


def _batch(seed: int, batch: int = 3, length: int = 11) -> dict[str, Any]:
    """Right- and left-padded rows of different lengths, labels -100 on padding and at random."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, 8:] = 0  # right padding
    mask[1, :3] = 0  # left padding
    labels = ids.clone()
    labels[mask == 0] = -100
    labels[torch.rand(batch, length, generator=g) < 0.2] = -100
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _grads(model: Any) -> dict[str, Any]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_loss_and_gradients_match_the_model(name: str) -> None:
    reference = _build(name)
    model = hf.patch(copy.deepcopy(reference), impl="torch")
    batch = _batch(seed=len(name))
    # Plain mean, then gradient accumulation: transformers sums and divides by the number of
    # tokens of all micro-batches, passed as num_items_in_batch.
    for extra in ({}, {"num_items_in_batch": torch.tensor(41)}):
        reference.zero_grad(set_to_none=True)
        model.zero_grad(set_to_none=True)
        upstream = torch.randn(()) * 3
        torch.manual_seed(1)  # same dropout / router noise in both, where a model has any
        want = reference(**batch, **extra)
        (want.loss * upstream).backward()
        assert want.logits is not None and want.logits.shape[-1] == VOCAB
        torch.manual_seed(1)
        got = model(**batch, **extra)
        (got.loss * upstream).backward()

        assert got.logits is None
        assert got.loss.dtype == torch.float32
        torch.testing.assert_close(got.loss, want.loss, atol=1e-5, rtol=1e-5)
        want_grads, got_grads = _grads(reference), _grads(model)
        assert want_grads.keys() == got_grads.keys()
        for key, value in want_grads.items():
            torch.testing.assert_close(got_grads[key], value, atol=1e-5, rtol=1e-4, msg=key)


def test_no_tensor_as_large_as_the_logits_is_created() -> None:
    # Record every tensor the fused forward+backward creates: with chunks of 8 rows none may hold
    # the N x V logits (N = 33 tokens here), while the unpatched model's largest tensor does.
    from torch.utils._python_dispatch import TorchDispatchMode

    class Largest(TorchDispatchMode):
        numel = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor):
                    Largest.numel = max(Largest.numel, t.numel())
            return out

    batch = _batch(seed=4)
    n_logits = batch["input_ids"].numel() * VOCAB
    for fused in (False, True):
        model = _build("gemma2")
        if fused:
            hf.patch(model, impl="torch", chunk_size=8)
        Largest.numel = 0
        with Largest():
            model(**batch).loss.backward()
        assert (Largest.numel >= n_logits) is not fused, (fused, Largest.numel, n_logits)


def test_bfloat16_model_is_at_least_as_accurate_as_its_own_loss() -> None:
    # Same final hidden states in both; the float64 reference applies the soft-cap to exact logits.
    model = _build("gemma2").to(torch.bfloat16)
    batch = _batch(seed=6)
    with torch.no_grad():
        hidden = model.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).last_hidden_state
    logits64 = hidden.double() @ model.lm_head.weight.detach().double().T
    cap = model.config.final_logit_softcapping
    logits64 = cap * torch.tanh(logits64 / cap)
    target = torch.nn.functional.pad(batch["labels"], (0, 1), value=-100)[:, 1:].reshape(-1)
    ref = float(torch.nn.functional.cross_entropy(logits64.reshape(-1, VOCAB), target))
    own = float(model(**batch).loss.detach())
    with hf.patched(model, impl="torch"):
        fused = model(**batch).loss
    assert fused.dtype == torch.float32
    assert abs(float(fused.detach()) - ref) <= abs(own - ref) + 1e-4


def test_soft_capping_is_applied() -> None:
    # The fused loss must differ from the uncapped loss by as much as the model's own does.
    model = _build("gemma2")
    batch = _batch(seed=3)
    capped = model(**batch).loss.detach()
    model.config.final_logit_softcapping = None
    uncapped = model(**batch).loss.detach()
    assert abs(float(capped) - float(uncapped)) > 1e-2
    with hf.patched(model, impl="torch"):
        torch.testing.assert_close(model(**batch).loss, uncapped, atol=1e-5, rtol=1e-5)
        model.config.final_logit_softcapping = 2.0
        torch.testing.assert_close(model(**batch).loss, capped, atol=1e-5, rtol=1e-5)


def test_shift_labels_argument() -> None:
    reference = _build("llama")
    model = copy.deepcopy(reference)
    batch = _batch(seed=5)
    shifted = torch.roll(batch["labels"], -1, dims=1)
    want = reference(**batch, shift_labels=shifted).loss
    with hf.patched(model, impl="torch"):
        got = model(**batch, shift_labels=shifted).loss
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_logits_generation_and_eval_are_untouched() -> None:
    reference = _build("gemma2")
    model = hf.patch(copy.deepcopy(reference), impl="torch")
    batch = _batch(seed=7)
    # No labels: the original forward, logits included.
    torch.testing.assert_close(
        model(input_ids=batch["input_ids"]).logits,
        reference(input_ids=batch["input_ids"]).logits,
    )
    # Eval mode with labels: logits and loss as before (fusing is for training).
    reference.eval()
    model.eval()
    want, got = reference(**batch), model(**batch)
    assert got.logits is not None
    torch.testing.assert_close(got.logits, want.logits)
    torch.testing.assert_close(got.loss, want.loss)
    prompt = batch["input_ids"][:1, :4]
    kwargs: dict[str, Any] = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(prompt, **kwargs), reference.generate(prompt, **kwargs))


def test_fuse_in_eval_and_tuple_output() -> None:
    reference = _build("qwen2").eval()
    model = hf.patch(copy.deepcopy(reference), impl="torch", fuse_in_eval=True)
    batch = _batch(seed=9)
    want = reference(**batch, return_dict=False)
    got = model(**batch, return_dict=False)
    # The logits are dropped from the tuple, as when a model returns logits=None.
    assert len(got) == len(want) - 1
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)


def test_unpatch_restores_everything() -> None:
    model = _build("llama")
    forward, head_forward = model.forward, model.lm_head.forward
    loss_function = model.loss_function
    hf.patch(model)
    assert hf.is_patched(model)
    with pytest.raises(ValueError, match="already patched"):
        hf.patch(model)
    assert hf.unpatch(model) is model
    assert not hf.is_patched(model)
    assert model.forward == forward and model.lm_head.forward == head_forward
    assert model.loss_function is loss_function
    assert "_loss_function" not in model.__dict__ and "forward" not in model.__dict__
    batch = _batch(seed=11)
    assert model(**batch).logits is not None


def test_deepcopy_of_a_patched_model_uses_its_own_weights() -> None:
    # Reference/EMA models are often deep copies of the training model.
    reference = _build("gemma")
    model = hf.patch(copy.deepcopy(reference), impl="torch")
    twin = copy.deepcopy(model)
    assert hf.is_patched(twin)
    with torch.no_grad():
        for net in (reference, twin):
            net.model.norm.weight.add_(0.5)  # gemma ties lm_head to the input embedding
    batch = _batch(seed=15)
    got, want = twin(**batch), reference(**batch)
    assert got.logits is None
    torch.testing.assert_close(got.loss, want.loss, atol=1e-5, rtol=1e-5)
    assert abs(float(model(**batch).loss.detach()) - float(want.loss.detach())) > 1e-3


def test_patched_model_pickles_whole() -> None:
    import inspect
    import io

    reference = _build("gemma")
    model = hf.patch(copy.deepcopy(reference), impl="torch")
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert hf.is_patched(loaded)
    batch = _batch(seed=16)
    got, want = loaded(**batch), reference(**batch)
    assert got.logits is None
    torch.testing.assert_close(got.loss, want.loss, atol=1e-5, rtol=1e-5)
    # Trainer reads the signature of forward to decide on num_items_in_batch: unchanged.
    assert inspect.signature(loaded.forward) == inspect.signature(reference.forward)
    hf.unpatch(loaded)
    assert loaded(**batch).logits is not None


def test_label_smoothing_and_z_loss_options() -> None:
    # Optional extras: compare with an explicit computation from the model's own logits.
    reference = _build("llama")
    model = copy.deepcopy(reference)
    batch = _batch(seed=13)
    logits = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    target = torch.nn.functional.pad(batch["labels"], (0, 1), value=-100)[:, 1:].reshape(-1)
    want = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), target, label_smoothing=0.1)
    with hf.patched(model, impl="torch", label_smoothing=0.1):
        got = model(**batch).loss
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # NumPy scalars (as from a config loaded with NumPy) are numbers too
    with hf.patched(model, label_smoothing=np.float32(0.1), chunk_size=np.int64(8)):
        got = model(**batch).loss
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- what the fused path refuses


class _PostProcessedLlama(transformers.LlamaForCausalLM):
    """A causal LM that post-processes its logits with ``self.post`` after lm_head and may change
    its loss with ``self.after(loss, logits, model)`` after calling self.loss_function."""

    post: Callable[[Any, Any], Any] = staticmethod(lambda z, m: z)
    after: Callable[[Any, Any, Any], Any] = staticmethod(lambda loss, z, m: loss)

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.logit_bias = torch.nn.Parameter(torch.randn(config.vocab_size))
        self.temperature = torch.nn.Parameter(torch.tensor(2.0))

    def forward(
        self, input_ids: Any = None, labels: Any = None, return_dict: bool = True, **kwargs: Any
    ) -> Any:
        hidden = self.model(input_ids=input_ids, **kwargs).last_hidden_state
        logits = type(self).post(self.lm_head(hidden), self)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, self.vocab_size)
            loss = type(self).after(loss, logits, self)
        out = transformers.modeling_outputs.CausalLMOutputWithPast(loss=loss, logits=logits)
        return out if return_dict else out.to_tuple()


def _custom(
    post: Callable[[Any, Any], Any] | None = None,
    after: Callable[[Any, Any, Any], Any] | None = None,
    name: str = "PostProcessedLlama",
) -> Any:
    attrs = {}
    if post is not None:
        attrs["post"] = staticmethod(post)
    if after is not None:
        attrs["after"] = staticmethod(after)
    cls = type(name, (_PostProcessedLlama,), attrs)
    torch.manual_seed(0)
    model = cls(transformers.LlamaConfig(**COMMON))
    model.config._attn_implementation = "eager"
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)
    return model.train()


def _plain_scalar_write(z: Any) -> Any:
    buffer = torch.zeros(1)
    buffer.copy_(z.reshape(-1)[:1])
    return buffer


def _setitem(z: Any) -> Any:
    buffer = torch.zeros(3, 11, VOCAB)
    buffer[:] = z
    return buffer


POST_PROCESSING: dict[str, tuple[Callable[[Any, Any], Any], str]] = {
    # name: (what the forward does to the logits before the loss, what the error must name)
    "learned bias": (lambda z, m: z + m.logit_bias, "'add'"),
    "relu": (lambda z, m: torch.relu(z), "'relu'"),
    "offset": (lambda z, m: z - 1.0, "'sub'"),
    "double tanh": (lambda z, m: 2.0 * torch.tanh(torch.tanh(z / 2.0)), "second tanh"),
    "divide by logits": (lambda z, m: 1.0 / z, "'__rdiv__'"),
    # a learned temperature: the fused loss would drop its gradient
    "learned temperature": (lambda z, m: z / m.temperature, "'div'"),
    "logits times logits": (lambda z, m: z * z, "'mul'"),
    "indexing": (lambda z, m: z[:], "'__getitem__'"),
    "view": (lambda z, m: z.view(-1, z.shape[-1]).view(z.shape), "'view'"),
    "integer cast": (lambda z, m: z.long(), "'long'"),
    "to int": (lambda z, m: z.to(torch.int32), "'to'"),
    "detach": (lambda z, m: z.detach(), "'detach'"),
    "softmax": (lambda z, m: torch.log(z.softmax(-1)), "'softmax'"),
    "masked fill": (lambda z, m: z.masked_fill(torch.zeros((), dtype=torch.bool), 0.0), "'masked"),
    "in-place add": (lambda z, m: z.add_(1.0), "'add_'"),
    "zero scale": (lambda z, m: z * 0.0, "scales its logits by 0.0"),
    "negative cap": (lambda z, m: -2.0 * torch.tanh(z / 2.0), "positive finite cap"),
}


@pytest.mark.parametrize("case", list(POST_PROCESSING))
def test_unknown_logit_transformation_is_refused(case: str) -> None:
    post, named = POST_PROCESSING[case]
    model = _custom(post=post)
    batch = _batch(seed=1)
    if case not in ("integer cast", "to int"):
        assert model(**batch).loss is not None  # the model itself works
    hf.patch(model, impl="torch")
    with pytest.raises(hf.UnsupportedModelError, match=rf"PostProcessedLlama.*({named})"):
        model(**batch)
    # Without labels nothing is fused, so the model still works.
    assert model(input_ids=batch["input_ids"]).logits.shape[-1] == VOCAB


def _reads_a_value(z: Any) -> Any:
    if bool((z > 0).any()):  # control flow on the values of the logits
        return z
    return z


LEAKS: dict[str, tuple[Callable[[Any, Any, Any], Any], str]] = {
    # name: (what the forward does with the logits after self.loss_function, what the error names)
    "sum added to the loss": (lambda loss, z, m: loss + z.sum(), "'sum'"),
    "mean added to the loss": (lambda loss, z, m: loss + 0.1 * z.float().mean(), "'mean'"),
    "max": (lambda loss, z, m: loss + z.max(), "'max'"),
    "norm": (lambda loss, z, m: loss + torch.linalg.vector_norm(z), "'linalg_vector_norm'"),
    "square then logsumexp": (lambda loss, z, m: loss + (z * z).logsumexp(-1).mean(), "'mul'"),
    "logsumexp over positions": (lambda loss, z, m: loss + z.logsumexp(1).mean(), "other dim"),
    "logits as the loss": (lambda loss, z, m: z, "returned LogitsProbe as its loss"),
    "scaled logits as the loss": (lambda loss, z, m: z * 2.0, "returned LogitsProbe as its loss"),
    "loss plus logits": (lambda loss, z, m: loss + z, "'add'"),
    "item": (lambda loss, z, m: loss + z[0, 0, 0].item(), "'__getitem__'"),
    "float": (lambda loss, z, m: loss + float(z.reshape(-1)[0]), "'reshape'"),
    "tolist": (lambda loss, z, m: loss + len(z.tolist()), "'tolist'"),
    # the Python conversions, straight on the stand-in
    "float()": (lambda loss, z, m: loss + float(z), "'__float__'"),
    "item()": (lambda loss, z, m: loss + z.item(), "'item'"),
    "bool()": (lambda loss, z, m: loss * bool(z), "'__bool__'"),
    "comparison": (lambda loss, z, m: loss * (z >= 0.0).float().mean(), "'__ge__'|'ge'"),
    "iteration": (lambda loss, z, m: loss + sum(row.sum() for row in z), "'unbind'|'__iter__'"),
    "new tensor like it": (lambda loss, z, m: loss + z.new_ones(z.shape).sum(), "'new_ones'"),
    "numpy": (lambda loss, z, m: loss + z.detach().numpy().sum(), "'detach'"),
    "bool": (lambda loss, z, m: loss * _reads_a_value(z).new_ones(()), "'gt'"),
    "equal": (lambda loss, z, m: loss * torch.equal(z, z), "'equal'"),
    "cat": (lambda loss, z, m: loss + torch.cat([z, z]).sum(), "'cat'"),
    "stack in a list": (lambda loss, z, m: loss + torch.stack([z]).sum(), "'stack'"),
    "copy into a tensor": (lambda loss, z, m: loss + _plain_scalar_write(z).sum(), "'reshape'"),
    "setitem into a tensor": (lambda loss, z, m: loss + _setitem(z).sum(), "'__setitem__'"),
    "split": (lambda loss, z, m: loss + z.split(1)[0].sum(), "'split'"),
    "argmax accuracy": (
        lambda loss, z, m: loss + 0 * (z.argmax(-1) == 1).float().mean(),
        "'argmax'",
    ),
    "log_softmax": (lambda loss, z, m: loss + z.log_softmax(-1).mean(), "'log_softmax'"),
    "backward hook": (lambda loss, z, m: (z.register_hook(print), loss)[1], "register_hook"),
    "deepcopy": (lambda loss, z, m: (copy.deepcopy(z), loss)[1], "__deepcopy__"),
}


@pytest.mark.parametrize("case", list(LEAKS))
def test_reading_the_logits_values_is_refused(case: str) -> None:
    # After (or besides) the loss call, any use of the stand-in logits that would read their
    # values raises, instead of computing with the (..., 0) placeholder.
    after, named = LEAKS[case]
    model = _custom(after=after)
    batch = _batch(seed=2)
    hf.patch(model, impl="torch")
    with pytest.raises(hf.UnsupportedModelError, match=rf"PostProcessedLlama.*({named})"):
        model(**batch)
    with pytest.raises(hf.UnsupportedModelError, match=rf"PostProcessedLlama.*({named})"):
        model(**batch, return_dict=False)


def _z_loss_after(loss: Any, z: Any, m: Any) -> Any:
    # Bamba's z-loss, written as BambaForCausalLM.forward writes it.
    return loss + 0.05 * z.logsumexp(dim=-1).to(dtype=loss.dtype).pow(2).mean()


LSE_VARIANTS: dict[str, Callable[[Any, Any, Any], Any]] = {
    "bamba": _z_loss_after,
    "torch.logsumexp keepdim": lambda loss, z, m: (
        loss + 1e-2 * torch.logsumexp(z, dim=[-1], keepdim=True).square().sum()
    ),
    "positional last dim": lambda loss, z, m: loss + 1e-2 * z.float().logsumexp(2).mean(),
    "scaled copy": lambda loss, z, m: loss + 1e-2 * (z * 0.5).logsumexp(-1).mean(),
}


@pytest.mark.parametrize("case", list(LSE_VARIANTS))
@pytest.mark.parametrize("post", ["none", "softcap"])
def test_logsumexp_of_the_logits_is_exact(case: str, post: str) -> None:
    # logsumexp over the vocabulary (a z-loss) is answered with exact values and gradients.
    softcap = (lambda z, m: 2.0 * torch.tanh(z / 2.0)) if post == "softcap" else None
    reference = _custom(post=softcap, after=LSE_VARIANTS[case])
    model = hf.patch(copy.deepcopy(reference), impl="torch", chunk_size=8)
    # The first call computes the logsumexp in a pass of its own, the second from the loss's.
    for seed in (3, 4):
        batch = _batch(seed=seed)
        reference.zero_grad(set_to_none=True)
        model.zero_grad(set_to_none=True)
        upstream = torch.randn(()) * 3
        want = reference(**batch)
        (want.loss * upstream).backward()
        got = model(**batch)
        (got.loss * upstream).backward()
        assert got.logits is None
        torch.testing.assert_close(got.loss, want.loss, atol=1e-5, rtol=1e-5)
        for (key, a), b in zip(_grads(reference).items(), _grads(model).values()):
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4, msg=key)


def test_logits_kept_by_a_hook_refuse_later_use() -> None:
    # A forward hook on lm_head sees the stand-in; whatever keeps it cannot read values from it
    # later either, during the forward or after it.
    model = _build("llama")
    kept: list[Any] = []
    model.lm_head.register_forward_hook(lambda module, args, out: kept.append(out))
    hf.patch(model, impl="torch")
    out = model(**_batch(seed=5))
    assert out.logits is None and out.loss.requires_grad
    (logits,) = kept
    assert logits.shape == (3, 11, VOCAB)
    for use in (lambda z: z.mean(), lambda z: z.argmax(-1), lambda z: z.numpy(), lambda z: z[0]):
        with pytest.raises(hf.UnsupportedModelError, match="LlamaForCausalLM"):
            use(logits)
    # The one value it answers is exact: logsumexp over the vocabulary.
    hf.unpatch(model)
    batch = _batch(seed=5)
    full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(logits.logsumexp(-1), full.logsumexp(-1), atol=1e-5, rtol=1e-5)


def test_metadata_of_the_logits_is_that_of_the_real_logits() -> None:
    # What a model may read without reading values: the real shape (V last, not 0), dtype, ...
    seen: dict[str, list[Any]] = {"plain": [], "patched": []}

    def record(z: Any, m: Any) -> Any:
        entry = (
            tuple(z.shape),
            z.size(),
            z.size(-1),
            z.size(dim=0),
            z.numel(),
            z.nelement(),
            len(z),
            z.dim(),
            z.ndim,
            z.dtype,
            z.device,
            z.requires_grad,
            z.is_floating_point(),
            z.float().shape,
            torch.numel(z),
        )
        seen["patched" if hf.is_patched(m) else "plain"].append(entry)
        return z

    model = _custom(post=record)
    batch = _batch(seed=4)
    want = model(**batch).loss
    hf.patch(model, impl="torch")
    got = model(**batch).loss
    assert seen["plain"] == seen["patched"] and len(seen["plain"]) == 1
    assert seen["plain"][0][2] == VOCAB
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # printing the stand-in says what it is
    probe_repr: list[str] = []
    hf.unpatch(model)
    model2 = _custom(post=lambda z, m: probe_repr.append(repr(z)) or z)
    hf.patch(model2, impl="torch")
    model2(**batch)
    assert probe_repr[0].startswith("LogitsProbe(shape=(3, 11, 211)")


def test_bamba_z_loss_matches_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    # The model of issue 18: Bamba adds z * mean(logsumexp(logits)^2) after self.loss_function.
    cfg = transformers.BambaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        attn_layer_indices=[1],
        mamba_n_heads=8,
        mamba_d_head=8,
        mamba_d_state=16,
        mamba_chunk_size=8,
        z_loss_coefficient=0.05,
    )
    torch.manual_seed(0)
    reference = transformers.BambaForCausalLM(cfg).train()
    with torch.no_grad():
        reference.lm_head.weight.mul_(40.0)  # large logits: the z-loss is a large part
    model = hf.patch(copy.deepcopy(reference), impl="torch", chunk_size=5)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 64, (2, 8), generator=g)
    labels = ids.clone()
    labels[0, :3] = -100
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    without_z = copy.deepcopy(reference)
    without_z.z_loss_coefficient = 0.0
    plain_ce = float(without_z(input_ids=ids, labels=labels).loss.detach())
    # The first call computes the logsumexp in a pass of its own; later calls take it from the
    # loss's pass (return_aux=True), so each call below is counted.
    import crossentropy.torch

    calls: list[bool] = []
    original = crossentropy.torch.linear_cross_entropy

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(bool(kwargs.get("return_aux")))
        return original(*args, **kwargs)

    monkeypatch.setattr(crossentropy.torch, "linear_cross_entropy", counted)
    passes = []
    for extra in ({}, {"attention_mask": mask, "num_items_in_batch": torch.tensor(9)}):
        calls.clear()
        reference.zero_grad(set_to_none=True)
        model.zero_grad(set_to_none=True)
        upstream = torch.randn(()) * 3
        want = reference(input_ids=ids, labels=labels, **extra)
        (want.loss * upstream).backward()
        got = model(input_ids=ids, labels=labels, **extra)
        (got.loss * upstream).backward()
        assert got.logits is None
        torch.testing.assert_close(got.loss, want.loss, atol=1e-5, rtol=1e-5)
        want_grads, got_grads = _grads(reference), _grads(model)
        assert want_grads.keys() == got_grads.keys()
        for key, value in want_grads.items():
            torch.testing.assert_close(got_grads[key], value, atol=1e-5, rtol=1e-4, msg=key)
        passes.append(list(calls))
    assert passes == [[False, True], [True]]
    assert float(want.loss.detach()) > plain_ce + 0.1  # the z-loss term is really there
    # return_dict=False: the loss stays first, the logits are left out.
    want_tuple = reference(input_ids=ids, labels=labels, return_dict=False)
    got_tuple = model(input_ids=ids, labels=labels, return_dict=False)
    assert len(got_tuple) == len(want_tuple) - 1
    torch.testing.assert_close(got_tuple[0], want_tuple[0], atol=1e-5, rtol=1e-5)
    # Once the model stops asking (its z-loss switched off), the loss stops keeping it.
    model.z_loss_coefficient = 0.0
    for _ in range(2):
        calls.clear()
        model(input_ids=ids, labels=labels)
        passes.append(list(calls))
    assert passes[-2:] == [[True], [False]]


class _OwnLossLlama(transformers.LlamaForCausalLM):
    """Computes its loss with a CrossEntropyLoss written into forward, as Bart/Pegasus/TrOCR's
    *ForCausalLM do, instead of self.loss_function."""

    def forward(self, input_ids: Any = None, labels: Any = None, **kwargs: Any) -> Any:
        logits = self.lm_head(self.model(input_ids=input_ids, **kwargs).last_hidden_state)
        loss = None
        if labels is not None:
            loss = torch.nn.CrossEntropyLoss()(logits.view(-1, self.vocab_size), labels.view(-1))
        return transformers.modeling_outputs.CausalLMOutputWithPast(loss=loss, logits=logits)


def test_loss_written_into_forward_is_refused_by_name() -> None:
    torch.manual_seed(0)
    model = _OwnLossLlama(transformers.LlamaConfig(**COMMON)).train()
    batch = _batch(seed=1)
    assert model(**batch).loss is not None
    hf.patch(model, impl="torch")
    with pytest.raises(hf.UnsupportedModelError, match=r"_OwnLossLlama"):
        model(**batch)


def test_patch_checks_its_options() -> None:
    model = _build("llama")
    with pytest.raises(ValueError, match="impl must be one of"):
        hf.patch(model, impl="cuda")
    with pytest.raises(ValueError, match="chunk_size must be None or a positive int"):
        hf.patch(model, chunk_size=0)
    with pytest.raises(ValueError, match="z_loss must be finite"):
        hf.patch(model, z_loss=float("nan"))
    assert not hf.is_patched(model)


def test_model_without_output_embeddings_is_refused() -> None:
    torch.manual_seed(0)
    model = transformers.LlamaModel(transformers.LlamaConfig(**COMMON))
    with pytest.raises(hf.UnsupportedModelError, match="LlamaModel has no output embeddings"):
        hf.patch(model)


def test_non_linear_head_is_refused() -> None:
    model = _build("llama")
    model.lm_head = torch.nn.Sequential(torch.nn.Linear(HIDDEN, VOCAB))
    with pytest.raises(hf.UnsupportedModelError, match=r"LlamaForCausalLM.*Sequential"):
        hf.patch(model)


def test_other_loss_type_is_refused() -> None:
    # A config flag the path does not support: a loss other than the causal LM loss.
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(**COMMON, loss_type="ForMaskedLM")
    )
    model.loss_type = "ForMaskedLM"
    with pytest.raises(hf.UnsupportedModelError, match="LlamaForCausalLM computes its loss with"):
        hf.patch(model)


def test_non_transformers_module_is_refused() -> None:
    with pytest.raises(TypeError, match="got Linear"):
        hf.patch(torch.nn.Linear(2, 2))


def test_encoder_decoder_is_refused() -> None:
    cfg = transformers.T5Config(
        vocab_size=VOCAB, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2
    )
    with pytest.raises(
        hf.UnsupportedModelError, match="T5ForConditionalGeneration is an encoder-decoder"
    ):
        hf.patch(transformers.T5ForConditionalGeneration(cfg))


# ---------------------------------------------------------------- Trainer with gradient accumulation


class _Rows(torch.utils.data.Dataset):  # type: ignore[type-arg]
    def __init__(self, n: int, length: int) -> None:
        g = torch.Generator().manual_seed(42)
        self.rows = []
        for i in range(n):
            ids = torch.randint(1, VOCAB, (length,), generator=g)
            valid = 4 + (i * 5) % (length - 4)  # uneven lengths: num_items_in_batch matters
            mask = (torch.arange(length) < valid).long()
            labels = torch.where(mask.bool(), ids, torch.full_like(ids, -100))
            self.rows.append({"input_ids": ids * mask, "attention_mask": mask, "labels": labels})

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]


def _train(tmp_path: Any, fused: bool) -> list[float]:
    model = _build("llama", seed=1)
    if fused:
        hf.patch(model, impl="torch")
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / ("fused" if fused else "plain")),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        max_steps=3,
        learning_rate=1e-2,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        seed=0,
        save_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_Rows(12, 10))
    trainer.train()
    losses = [float(h["loss"]) for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 3
    return losses


def test_gradient_accumulation_loop_matches(tmp_path: Any) -> None:
    # What Trainer does with gradient_accumulation_steps=2: count the shifted labels of both
    # micro-batches, pass that count as num_items_in_batch, backprop each micro-batch's loss.
    data = _Rows(4, 10)
    micro = [
        {k: torch.stack([data[i][k] for i in rows]) for k in data[0]} for rows in ([0, 1], [2, 3])
    ]
    n_items = sum(int((m["labels"][:, 1:] != -100).sum()) for m in micro)
    reference = _build("phi3", seed=2)
    model = hf.patch(copy.deepcopy(reference), impl="torch")
    for net in (reference, model):
        for m in micro:
            net(**m, num_items_in_batch=torch.tensor(n_items)).loss.backward()
    for (key, want), got in zip(_grads(reference).items(), _grads(model).values()):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4, msg=key)


def test_trainer_with_gradient_accumulation_gives_the_same_losses(tmp_path: Any) -> None:
    plain = _train(tmp_path, fused=False)
    fused = _train(tmp_path, fused=True)
    assert fused == pytest.approx(plain, rel=1e-5, abs=1e-5)
    # The losses move: the steps did update the model.
    assert plain[0] != pytest.approx(plain[-1], rel=1e-3)
