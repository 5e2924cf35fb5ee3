"""crossentropy.hf.token_logprobs and distillation_loss against the models' own logits."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from crossentropy import hf  # noqa: E402
from crossentropy.torch import LogProbs  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _llama(seed: int, hidden: int = 16, vocab: int = 64) -> torch.nn.Module:
    cfg = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(cfg).double()


def _gemma2(seed: int) -> torch.nn.Module:
    cfg = transformers.Gemma2Config(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        final_logit_softcapping=3.0,
    )
    torch.manual_seed(seed)
    return transformers.Gemma2ForCausalLM(cfg).double()


def _reference(model, ids, mask, temperature):
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1] / temperature
    logp = logits.log_softmax(-1)
    lp = logp.gather(-1, ids[:, 1:, None])[..., 0]
    p = logp.exp()
    ent = -(p * logp).sum(-1)
    keep = mask[:, 1:] != 0
    return torch.where(keep, lp, 0.0), torch.where(keep, ent, 0.0)


@pytest.mark.parametrize("make", [_llama, _gemma2], ids=["llama", "gemma2-softcap"])
@pytest.mark.parametrize("train", [True, False])
def test_token_logprobs_equal_the_models_logits(make, train):
    model = make(0).train(train)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 64, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # right padding
    temps = torch.rand(3, 8, generator=g, dtype=torch.float64) + 0.5
    out = hf.token_logprobs(model, ids, mask, temperature=temps, return_entropy=True)
    assert isinstance(out, LogProbs) and out.logprobs.shape == (3, 8)
    ref_lp, ref_ent = _reference(model, ids, mask, temps.unsqueeze(-1))
    torch.testing.assert_close(out.logprobs, ref_lp, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out.entropy, ref_ent, rtol=1e-9, atol=1e-9)
    # gradients to every parameter, from upstream gradients of both outputs
    up1, up2 = (
        torch.randn(3, 8, generator=g, dtype=torch.float64),
        torch.randn(3, 8, generator=g, dtype=torch.float64),
    )
    params = [p for p in model.parameters() if p.requires_grad]
    got = torch.autograd.grad(
        (out.logprobs * up1).sum() + (out.entropy * up2).sum(), params, allow_unused=True
    )
    want = torch.autograd.grad(
        (ref_lp * up1).sum() + (ref_ent * up2).sum(), params, allow_unused=True
    )
    for a, b in zip(got, want):
        if b is None:
            assert a is None or torch.count_nonzero(a) == 0
        else:
            torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)
    assert not hf.is_patched(model)  # patched for the call only


def test_token_logprobs_under_no_grad_and_on_a_patched_model():
    model = hf.patch(_llama(2))
    ids = torch.randint(0, 64, (2, 5), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        lp = hf.token_logprobs(model, ids)
    assert hf.is_patched(model) and lp.shape == (2, 4) and not lp.requires_grad
    hf.unpatch(model)
    ref, _ = _reference(model, ids, torch.ones_like(ids), 1.0)
    torch.testing.assert_close(lp, ref.detach(), rtol=1e-9, atol=1e-9)


def test_token_logprobs_refuses_bad_input():
    model = _llama(0)
    with pytest.raises(ValueError, match="input_ids must be a \\(batch, length\\)"):
        hf.token_logprobs(model, torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="at least 2 tokens"):
        hf.token_logprobs(model, torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask"):
        hf.token_logprobs(model, torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 2))


@pytest.mark.parametrize("div", ["kl", "jsd"])
def test_distillation_loss_equals_materialised_logits(div):
    student, teacher = _llama(4, hidden=8).train(), _gemma2(5).eval()
    g = torch.Generator().manual_seed(6)
    ids = torch.randint(0, 64, (2, 7), generator=g)
    labels = ids.clone()
    labels[:, :3] = -100  # the prompt is not scored
    loss = hf.distillation_loss(
        student, teacher, ids, labels=labels, divergence=div, temperature=2.0, hard_weight=0.3
    )
    zs = student(input_ids=ids).logits[:, :-1]
    with torch.no_grad():
        zt = teacher(input_ids=ids).logits[:, :-1]
    lq, lp = torch.log_softmax(zs / 2, -1), torch.log_softmax(zt / 2, -1)
    q, p = lq.exp(), lp.exp()
    if div == "kl":
        d = (p * (lp - lq)).sum(-1)
    else:
        lm = torch.log(0.5 * p + 0.5 * q)
        d = 0.5 * (p * (lp - lm)).sum(-1) + 0.5 * (q * (lq - lm)).sum(-1)
    tgt = labels[:, 1:]
    ce = torch.nn.functional.cross_entropy(zs.transpose(1, 2), tgt, reduction="none")
    keep = tgt != -100
    ref = torch.where(keep, d + 0.3 * ce, 0.0).sum() / keep.sum()
    torch.testing.assert_close(loss, ref, rtol=1e-9, atol=1e-10)
    params = list(student.parameters())
    for a, b in zip(torch.autograd.grad(loss, params), torch.autograd.grad(ref, params)):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)
    assert all(p.grad is None for p in teacher.parameters())


def test_patched_model_under_torch_compile_matches_eager():
    model = _llama(7).float().train()
    ids = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(8))
    want = model(input_ids=ids, labels=ids).loss
    (gw,) = torch.autograd.grad(want, model.lm_head.weight)
    hf.patch(model)
    out = torch.compile(model, backend="aot_eager")(input_ids=ids, labels=ids)
    (g2,) = torch.autograd.grad(out.loss, model.lm_head.weight)
    torch.testing.assert_close(out.loss, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g2, gw, rtol=1e-5, atol=1e-7)
    assert out.logits is None
