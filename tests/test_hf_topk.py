"""crossentropy.hf.distillation_loss with the teacher as saved top-k log-probabilities
(teacher_topk=(ids, logprobs)) against the student model's own materialised logits."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from crossentropy import hf  # noqa: E402


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


def _saved_topk(teacher, ids, k):
    """What an offline pass writes: the teacher's top-k for each next token, (B, T-1, k)."""
    with torch.no_grad():
        logp = torch.log_softmax(teacher(input_ids=ids).logits[:, :-1], -1)
    lp, top = logp.topk(k, -1)
    return top, lp


@pytest.mark.parametrize("make", [_llama, _gemma2], ids=["llama", "gemma2-softcap"])
def test_topk_tail_kl_equals_the_students_materialised_logits(make):
    student, teacher = make(1).train(), _llama(2, hidden=24).eval()
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 64, (2, 9), generator=g)
    labels = ids.clone()
    labels[:, :3] = -100  # the prompt is not scored
    top, lp = _saved_topk(teacher, ids, 6)
    loss = hf.distillation_loss(
        student, ids, labels=labels, teacher_topk=(top, lp), divergence="kl", temperature=1.5
    )
    # from the definitions: k + 1 bins on the student's own (soft-capped) logits at T = 1.5
    lq = torch.log_softmax(student(input_ids=ids).logits[:, :-1] / 1.5, -1)
    lq_k = lq.gather(-1, top)
    big_p, big_q = lp.exp().sum(-1), lq_k.exp().sum(-1)
    d = (lp.exp() * (lp - lq_k)).sum(-1) + (1 - big_p) * ((1 - big_p).log() - (1 - big_q).log())
    keep = labels[:, 1:] != -100
    ref = torch.where(keep, d, 0.0).sum() / keep.sum()
    torch.testing.assert_close(loss, ref, rtol=1e-9, atol=1e-10)
    params = list(student.parameters())
    for a, b in zip(torch.autograd.grad(loss, params), torch.autograd.grad(ref, params)):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("topk", ["tail", "renormalized"])
def test_all_64_ids_equal_the_two_model_distillation(topk):
    student, teacher = _llama(4), _llama(5, hidden=24)
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(6))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # padding: its rows do not count
    top, lp = _saved_topk(teacher, ids, 64)
    both = hf.distillation_loss(student, teacher, ids, mask, divergence="jsd", beta=0.3)
    saved = hf.distillation_loss(
        student, ids, mask, teacher_topk=(top, lp), divergence="jsd", beta=0.3, topk=topk
    )
    torch.testing.assert_close(saved, both, rtol=1e-9, atol=1e-12)


def test_teacher_topk_argument_forms():
    student, teacher = _llama(7), _llama(8)
    ids = torch.randint(0, 64, (1, 5), generator=torch.Generator().manual_seed(9))
    top, lp = _saved_topk(teacher, ids, 4)
    a = hf.distillation_loss(student, ids, teacher_topk=(top, lp), divergence="kl")
    b = hf.distillation_loss(student, input_ids=ids, teacher_topk=(top, lp), divergence="kl")
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="either as a model or as teacher_topk"):
        hf.distillation_loss(student, teacher, ids, teacher_topk=(top, lp), divergence="kl")
    with pytest.raises(TypeError, match="a pair"):
        hf.distillation_loss(student, ids, teacher_topk=top, divergence="kl")
    with pytest.raises(TypeError, match="teacher must be a"):
        hf.distillation_loss(student, None, ids, divergence="kl")
    with pytest.raises(ValueError, match=r"teacher_topk_ids must have shape \(1, 4, 'k'\)"):
        hf.distillation_loss(student, ids, teacher_topk=(top[:, 1:], lp[:, 1:]), divergence="kl")


def test_positional_mask_and_labels_after_the_input_ids():
    student, teacher = _llama(10), _llama(11)
    ids = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(12))
    mask = torch.ones_like(ids)
    mask[0, 4:] = 0
    labels = ids.clone()
    labels[:, :2] = -100
    top, lp = _saved_topk(teacher, ids, 5)
    kw = dict(teacher_topk=(top, lp), divergence="kl", reduction="none")
    by_name = hf.distillation_loss(student, input_ids=ids, attention_mask=mask, labels=labels, **kw)
    for args, more in [
        ((ids, mask, labels), {}),
        ((ids, mask), {"labels": labels}),
        ((ids,), {"attention_mask": mask, "labels": labels}),
    ]:
        torch.testing.assert_close(hf.distillation_loss(student, *args, **more, **kw), by_name)
    keep = (mask[:, 1:] != 0) & (labels[:, 1:] != -100)
    assert (by_name[~keep] == 0).all() and (by_name[keep] > 0).all()
