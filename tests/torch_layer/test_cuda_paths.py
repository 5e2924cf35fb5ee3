"""GPU-only checks of the engines (``pytest -m cuda`` on a CUDA machine; see scripts/gpu_check.sh).

On the CPU these are deselected (pytest's default ``-m 'not cuda'``), or skipped when selected; the
same code paths are covered there by the interpreted kernels (tests/kernels/test_fast_engine.py)
and the dispatch tests with CUDA device objects (test_torch_dispatch.py).

The GPU check collects this file with no optional dependency but torch: transformers is imported
inside the one test that needs it, and nothing here imports hypothesis, scipy or scikit-learn.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from crossentropy.torch import (
    cross_entropy,
    explain,
    linear_cross_entropy,
    linear_distillation_loss,
    linear_logprobs,
)

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _inputs(n=2048, d=512, v=32000, std=4.0, dtype=torch.bfloat16):
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(n, d, device="cuda", generator=g).to(dtype)
    w = (torch.randn(v, d, device="cuda", generator=g) * std / d**0.5).to(dtype)
    y = torch.multinomial(torch.softmax((x @ w.T).float(), 1), 1, generator=g)[:, 0]
    y[::10] = -100
    return x, w, y


def test_default_engines_on_cuda():
    x, w, y = _inputs(64, 64, 1000)
    assert explain(linear_cross_entropy, x, w, y).engine == "cuda-fast"
    assert explain(linear_cross_entropy, x, w, y, memory="low").engine == "triton-lowmem"
    assert explain(cross_entropy, (x @ w.T), y).engine == "triton-softmax"
    p = explain(linear_logprobs, x, w, y)
    assert p.engine == "chunked" and p.precision is not None and p.precision.tensor_cores


@pytest.mark.parametrize(
    "call",
    [
        lambda x, w, y: linear_cross_entropy(x, w, y, z_loss=1e-4, label_smoothing=0.1),
        lambda x, w, y: linear_cross_entropy(x, w, y, reduction="none").sum(),
        lambda x, w, y: cross_entropy(x @ w.T, y),
        lambda x, w, y: linear_logprobs(x, w, y, return_entropy=True).entropy.sum(),
        lambda x, w, y: linear_distillation_loss(x, w, x, w, divergence="kl"),
    ],
    ids=["fused", "rows", "softmax", "logprobs", "distill"],
)
def test_no_host_synchronisation(call):
    x, w, y = _inputs(512, 256, 8000)
    xx, ww = x.detach().requires_grad_(), w.detach().requires_grad_()
    call(xx, ww, y)  # warm-up: kernel compilation may synchronise
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = call(xx, ww, y)
        torch.autograd.grad(loss, (xx, ww))
    finally:
        torch.cuda.set_sync_debug_mode(0)


@pytest.mark.parametrize("std", [4.0, 8.0])
def test_fast_path_accuracy_against_float64(std):
    x, w, y = _inputs(std=std)
    x64, w64 = x.double().requires_grad_(), w.double().requires_grad_()
    ref = F.cross_entropy(x64 @ w64.T, y)
    gx64, gw64 = torch.autograd.grad(ref, (x64, w64))
    xx, ww = x.detach().requires_grad_(), w.detach().requires_grad_()
    loss = linear_cross_entropy(xx, ww, y)
    gx, gw = torch.autograd.grad(loss, (xx, ww))
    assert abs(float(loss) - float(ref)) < 1e-5
    for a, b in ((gx, gx64), (gw, gw64)):
        assert float((a.double() - b).norm() / b.norm()) < 4e-3  # fp32 logits, bf16 dZ: ~0.3%


def test_fast_path_is_deterministic():
    x, w, y = _inputs(1024, 256, 16000)
    runs = []
    for _ in range(2):
        xx, ww = x.detach().requires_grad_(), w.detach().requires_grad_()
        loss = linear_cross_entropy(xx, ww, y, label_smoothing=0.1)
        runs.append((loss, *torch.autograd.grad(loss, (xx, ww))))
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_low_memory_fp32_matches_float64():
    # Issue 21, item 4, through the public function: fp32 (full fp32 products), logit std 8, a
    # bias with -inf on classes no target uses; the per-row loss within 2e-5 of float64, as the
    # kernel's own test asks.
    g = torch.Generator(device="cuda").manual_seed(8)
    n, d, v = 4096, 1024, 32003
    x = torch.randn(n, d, device="cuda", generator=g)
    w = torch.randn(v, d, device="cuda", generator=g) * 8.0 / d**0.5
    b = torch.randn(v, device="cuda", generator=g)
    masked = torch.rand(v, device="cuda", generator=g) < 0.3
    b[masked] = float("-inf")
    z64 = x.double() @ w.double().T + b.double()
    y = torch.multinomial(torch.softmax(z64, 1).float(), 1, generator=g)[:, 0]
    y[::10] = -100
    upstream = torch.randn(n, device="cuda", generator=g)
    params = [p.detach().requires_grad_() for p in (x, w, b)]
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        kw = dict(linear_bias=params[2], reduction="none", memory="low")
        assert (
            explain(linear_cross_entropy, params[0], params[1], y, **kw).engine == "triton-lowmem"
        )
        rows = linear_cross_entropy(params[0], params[1], y, **kw)
        grads = torch.autograd.grad(rows, params, upstream)
    finally:
        torch.set_float32_matmul_precision(before)
    refs = [p.detach().double().requires_grad_() for p in (x, w, b)]
    rows64 = F.cross_entropy(refs[0] @ refs[1].T + refs[2], y, reduction="none")
    grads64 = torch.autograd.grad(rows64, refs, upstream.double())
    torch.testing.assert_close(rows.double(), rows64, atol=2e-5, rtol=1e-5)
    for name, ours, ref in zip(("input", "weight", "bias"), grads, grads64):
        ok = torch.isfinite(ref)  # d bias on the -inf classes: 0 in both, NaN-free
        err = float((ours.double()[ok] - ref[ok]).norm() / ref[ok].norm())
        assert err <= 2e-6, (name, err)


def test_trainer_bf16_step_of_a_patched_llama_matches_unpatched():
    transformers = pytest.importorskip("transformers")
    from crossentropy import hf

    cfg = transformers.LlamaConfig(
        vocab_size=1000,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    ids = torch.randint(0, 1000, (2, 64), device="cuda")
    losses, grads = {}, {}
    for patched in (False, True):
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM(cfg).cuda().train()
        if patched:
            hf.patch(model)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        losses[patched] = float(loss)
        grads[patched] = model.lm_head.weight.grad.float()
    assert abs(losses[True] - losses[False]) < 2e-2  # unpatched rounds its logits to bf16
    rel = float((grads[True] - grads[False]).norm() / grads[False].norm())
    assert rel < 3e-2
