"""The fast fused linear-CE engine (``cuda-fast``) on the CPU: its block logic with torch GEMMs and
the Triton row kernel under the interpreter, against float64 references.

On a GPU this engine runs bf16/fp16 GEMMs on tensor cores with fp32 logits, and the row kernel
writes 16-bit d(logits) into the first half of each fp32 row. On the CPU the GEMMs are fp32; the
tests force the 16-bit d(logits) (``dz``) so the in-place writes and the widening before the
gradient GEMMs are exercised here too.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from crossentropy.torch import _functional as functional
from crossentropy.torch import explain, linear_cross_entropy
from crossentropy.torch.engine._gemm import Precision
from crossentropy.torch.engine._rowmath import LOCAL, LogitMap

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning:triton")

BF16_DZ = Precision(torch.bfloat16, torch.float32, torch.bfloat16, False)


@pytest.fixture
def bf16_dz(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the fast engine as on tensor cores: bf16 operands and bf16 d(logits)."""
    monkeypatch.setattr(functional, "resolve_precision", lambda *a, **k: BF16_DZ)


def _data(n: int, d: int, v: int, *, seed: int, std: float = 4.0, prob: bool = False):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g)
    w = torch.randn(v, d, generator=g) * (std / d**0.5)
    b = torch.randn(v, generator=g)
    if prob:
        y = torch.softmax(torch.randn(n, v, generator=g) * 2, 1)
    else:
        # targets drawn from the model's own softmax (realistic entropy), 1 in 5 ignored
        y = torch.multinomial(torch.softmax(h @ w.T, 1), 1, generator=g).squeeze(1)
        y[torch.rand(n, generator=g) < 0.2] = -100
    return h, w, b, y


def _ref(h, w, b, y, *, up, **kw):
    """float64 loss and gradients of the materialised model on the same (rounded) inputs."""
    leaves = [t.detach().double().requires_grad_() for t in (h, w, b) if t is not None]
    bias = leaves[2] if b is not None else None
    z = F.linear(leaves[0], leaves[1], bias)
    cap = kw.pop("softcap", None)
    zl = kw.pop("z_loss", 0.0)
    if cap is not None:
        z = cap * torch.tanh(z / cap)
    tgt = y.double() if y.is_floating_point() else y
    if kw.get("weight") is not None:
        kw["weight"] = kw["weight"].double()
    red = kw.get("reduction", "mean")
    loss = F.cross_entropy(z, tgt, **kw)
    if zl:
        valid = torch.ones_like(z[:, 0], dtype=torch.bool) if y.is_floating_point() else y != -100
        zrow = torch.where(valid, torch.logsumexp(z, 1) ** 2, 0.0)
        loss = loss + zl * (
            zrow if red == "none" else zrow.sum() / (valid.sum() if red == "mean" else 1)
        )
    grads = torch.autograd.grad(loss, leaves, up.double())
    return loss.detach(), grads


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b).norm() / b.norm().clamp(min=1e-30))


CASES = {
    "plain": {},
    "bias-weight-ignore": {"bias": True, "weight": True},
    "smoothing-zloss-softcap": {"label_smoothing": 0.1, "z_loss": 1e-3, "softcap": 8.0},
    "everything": {
        "bias": True,
        "weight": True,
        "label_smoothing": 0.2,
        "z_loss": 1e-2,
        "softcap": 5.0,
    },
    "probabilities": {"prob": True, "label_smoothing": 0.1},
}


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("chunk", [3, 16])
def test_fast_engine_matches_float64(bf16_dz, case: str, reduction: str, chunk: int) -> None:
    opts = dict(CASES[case])
    prob = opts.pop("prob", False)
    use_bias, use_weight = opts.pop("bias", False), opts.pop("weight", False)
    # N=37 leaves a partial block for either chunk; V=133 is not a multiple of the row tiles
    h, w, b, y = _data(37, 24, 133, seed=len(case) + chunk, prob=prob)
    h, w = h.bfloat16(), w.bfloat16()  # what the tensor-core GEMMs read
    b = b.bfloat16() if use_bias else None  # a bf16 model's bias (operands are bf16 here)
    cw = (torch.rand(133, generator=torch.Generator().manual_seed(3)) + 0.5) if use_weight else None
    kw = dict(opts, reduction=reduction)
    if cw is not None:
        kw["weight"] = cw
    plan = explain(
        linear_cross_entropy, h, w, y, linear_bias=b, impl="triton", chunk_size=chunk, **kw
    )
    assert (plan.engine, plan.mode) == ("cuda-fast", "rows" if reduction == "none" else "fused")
    leaves = [t.clone().requires_grad_() for t in (h, w) + ((b,) if b is not None else ())]
    loss = linear_cross_entropy(
        leaves[0],
        leaves[1],
        y,
        linear_bias=leaves[2] if b is not None else None,
        impl="triton",
        chunk_size=chunk,
        **kw,
    )
    up = torch.randn(loss.shape, generator=torch.Generator().manual_seed(5))
    got = torch.autograd.grad(loss, leaves, up)
    want_loss, want = _ref(h, w, b, y, up=up, **dict(kw))
    torch.testing.assert_close(loss.double(), want_loss, rtol=1e-5, atol=2e-5)
    for name, a, r in zip(("input", "weight", "bias"), got, want):
        assert a.dtype == leaves[0].dtype if name == "input" else True
        # d(logits) is rounded to bf16 once (as on tensor cores), the gradients to bf16 at the end
        assert _rel(a, r) < 1.5e-2, (name, _rel(a, r))


def test_row_kernel_writes_16bit_dz_into_the_fp32_block() -> None:
    from crossentropy.triton._rows import TritonCrossEntropyRows

    g = torch.Generator().manual_seed(0)
    n, v = 9, 70
    raw = torch.randn(n, v, generator=g) * 3
    y = torch.randint(0, v, (n,), generator=g)
    ref = raw.clone().double().requires_grad_()
    ce_ref = F.cross_entropy(ref, y, reduction="none")
    coef = torch.rand(n, generator=g)
    (want,) = torch.autograd.grad(ce_ref, ref, coef.double())
    math = TritonCrossEntropyRows(
        y,
        dz_dtype=torch.bfloat16,
        weight=None,
        ignore_index=-100,
        label_smoothing=0.0,
        num_classes=v,
        lmap=LogitMap(),
    )
    block = raw.clone()
    outs, (dz,) = math.fused([block], 0, n, LOCAL, lambda o: [coef, None], (True,))
    assert dz is not None and dz.dtype == torch.bfloat16
    assert dz.untyped_storage().data_ptr() == block.untyped_storage().data_ptr()  # in place
    torch.testing.assert_close(outs[0].double(), ce_ref.detach(), rtol=1e-6, atol=1e-6)
    assert _rel(dz, want) < 1e-2


def test_no_accumulation_drift_across_blocks(bf16_dz) -> None:
    # d(weight) is accumulated in fp32 across blocks: 64 blocks are as accurate as one
    h, w, _, y = _data(256, 32, 96, seed=11)
    h, w = h.bfloat16(), w.bfloat16()
    _, (_, dw_ref) = _ref(h, w, None, y, up=torch.tensor(1.0))
    errs = {}
    for chunk in (256, 4):
        wl = w.clone().requires_grad_()
        loss = linear_cross_entropy(h, wl, y, impl="triton", chunk_size=chunk)
        (dw,) = torch.autograd.grad(loss, wl)
        errs[chunk] = _rel(dw.float(), dw_ref)
    assert errs[4] <= 1.1 * errs[256] + 1e-4, errs


def test_fast_engine_is_deterministic(bf16_dz) -> None:
    h, w, _, y = _data(40, 16, 50, seed=2)
    runs = []
    for _ in range(2):
        leaves = [h.bfloat16().requires_grad_(), w.bfloat16().requires_grad_()]
        loss = linear_cross_entropy(*leaves, y, impl="triton", chunk_size=7, z_loss=1e-3)
        runs.append((loss, *torch.autograd.grad(loss, leaves)))
    for a, b2 in zip(*runs):
        assert torch.equal(a, b2)


def test_masked_vocabulary_and_strided_inputs(bf16_dz) -> None:
    # -inf bias on classes no target uses, hidden states taken every other row, int32 targets
    h, w, b, y = _data(64, 16, 40, seed=4)
    b = b.bfloat16()
    b[[3, 17, 29]] = float("-inf")
    y = torch.where(torch.isin(y, torch.tensor([3, 17, 29])), -100, y).to(torch.int32)
    hb = h.bfloat16().requires_grad_()
    hs = hb[::2]  # a strided view: the engine reads every other row of hb
    ys = y[::2]
    wl = w.bfloat16().requires_grad_()
    loss = linear_cross_entropy(hs, wl, ys, linear_bias=b, impl="triton", chunk_size=5)
    g_h, g_w = torch.autograd.grad(loss, (hb, wl))
    want_loss, want = _ref(hs, wl, b, ys.long(), up=torch.tensor(1.0))
    assert torch.isfinite(loss) and torch.isfinite(g_h).all() and torch.isfinite(g_w).all()
    torch.testing.assert_close(loss.double(), want_loss, rtol=1e-5, atol=2e-5)
    assert torch.equal(g_h[1::2], torch.zeros_like(g_h[1::2]))
    assert _rel(g_h[::2], want[0]) < 1.5e-2
    assert _rel(g_w, want[1]) < 1.5e-2


FP16_DZ = Precision(torch.float16, torch.float32, torch.float16, False)


@pytest.fixture
def fp16_dz(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the fast engine as on tensor cores with float16: fp16 operands and fp16 d(logits). The
    interpreted row kernel takes 512 rows per program here (16k rows in a few seconds)."""
    from crossentropy.triton import _softmax_ce
    from crossentropy.triton._config import SoftmaxConfig

    monkeypatch.setattr(functional, "resolve_precision", lambda *a, **k: FP16_DZ)
    monkeypatch.setattr(
        _softmax_ce, "softmax_config", lambda n, v, interpret: SoftmaxConfig(512, 64, 1)
    )


def test_fp16_mean_over_many_rows_keeps_its_gradients(fp16_dz) -> None:
    # A mean over 16384 rows puts 1/16384 into every d(logits): rounded to fp16 with it, small
    # entries flushed (dX 2.1e-3 relative error here, 0.6% of its entries exactly 0; emulated
    # 2-5% at 64k-262k tokens). The factor now stays out of the 16-bit values, and the fp16
    # gradients are rounded after the upstream gradient, so a loss scale (GradScaler's) reaches
    # them first.
    g = torch.Generator().manual_seed(0)
    n, d, v = 16384, 16, 61
    h = torch.randn(n, d, generator=g).half()
    w = (torch.randn(v, d, generator=g) * (4 / d**0.5)).half()
    y = torch.multinomial(torch.softmax(h.double() @ w.double().T, 1), 1, generator=g).squeeze(1)
    hl, wl = h.clone().requires_grad_(), w.clone().requires_grad_()
    assert explain(linear_cross_entropy, hl, wl, y, impl="triton").engine == "cuda-fast"
    loss = linear_cross_entropy(hl, wl, y, impl="triton")
    scale = torch.tensor(256.0)  # a loss scale, as GradScaler applies
    g_h, g_w = torch.autograd.grad(loss * scale, (hl, wl))
    assert g_h.dtype == g_w.dtype == torch.float16
    want_loss, (r_h, r_w) = _ref(h, w, None, y, up=scale)
    torch.testing.assert_close(loss.double(), want_loss, rtol=1e-6, atol=1e-6)
    # fp16 rounding of d(logits) and of the result: about 2.5e-4 each
    assert _rel(g_h, r_h) < 6e-4, _rel(g_h, r_h)
    assert _rel(g_w, r_w) < 6e-4, _rel(g_w, r_w)
    assert int((g_h == 0).sum()) <= int((r_h.abs() < 2**-24 * 256).sum()) + 16


def test_fp16_scale_is_kept_out_of_every_fused_gradient(fp16_dz) -> None:
    # bias, class weights, smoothing, z-loss and a softcap: every gradient still matches with a
    # large denominator (the mean's) taken out and put back
    h, w, b, y = _data(64, 16, 40, seed=8)
    cw = torch.rand(40, generator=torch.Generator().manual_seed(1)) + 0.5
    kw = dict(weight=cw, label_smoothing=0.1, z_loss=1e-3, softcap=6.0)
    leaves = [h.half().requires_grad_(), w.half().requires_grad_(), b.half().requires_grad_()]
    loss = linear_cross_entropy(*leaves[:2], y, linear_bias=leaves[2], impl="triton", **kw)
    got = torch.autograd.grad(loss, leaves, torch.tensor(3.0))
    want_loss, want = _ref(*[t.detach() for t in leaves], y, up=torch.tensor(3.0), **kw)
    torch.testing.assert_close(loss.double(), want_loss, rtol=1e-5, atol=2e-5)
    for a, r in zip(got, want):
        assert a.dtype == torch.float16
        assert _rel(a, r) < 2e-3, _rel(a, r)


def test_engine_frees_the_last_block_before_finishing(
    bf16_dz, monkeypatch: pytest.MonkeyPatch
) -> None:
    # finish() rounds d(weight) to 16 bits (a (V, D) allocation); the last block's (rows, V)
    # logits buffer must be gone by then, or it adds to the peak (about 1 GiB at 256k classes)
    import gc

    from crossentropy.torch.engine import _chunked as _engines

    n, v, chunk = 24, 97, 8
    seen: list[list[tuple[int, ...]]] = []
    real_finish = _engines.Head.finish

    def finish(self: Any, *args: Any, **kwargs: Any) -> Any:
        gc.collect()
        alive = [
            tuple(o.shape)
            for o in gc.get_objects()
            if type(o) is torch.Tensor and o.dim() == 2 and o.shape[1] == v and o.shape[0] == chunk
        ]
        seen.append(alive)
        return real_finish(self, *args, **kwargs)

    monkeypatch.setattr(_engines.Head, "finish", finish)
    h, w, _, y = _data(n, 16, v, seed=3)
    for reduction in ("mean", "none"):
        leaves = [h.bfloat16().requires_grad_(), w.bfloat16().requires_grad_()]
        loss = linear_cross_entropy(
            *leaves, y, impl="triton", chunk_size=chunk, reduction=reduction
        )
        torch.autograd.grad(loss, leaves, torch.ones_like(loss))
    assert len(seen) == 2 and seen == [[], []], seen


def test_repeated_backward_through_the_fused_loss_is_exact(bf16_dz) -> None:
    # The fused gradients are scaled by the upstream gradient in place, except while the graph is
    # kept for another pass (retain_graph=True), which must find them unscaled.
    h, w, b, y = _data(30, 12, 45, seed=6)
    leaves = [h.bfloat16().requires_grad_(), w.bfloat16().requires_grad_()]
    loss = linear_cross_entropy(*leaves, y, linear_bias=b.bfloat16(), impl="triton", chunk_size=7)
    first = torch.autograd.grad(loss, leaves, torch.tensor(2.0), retain_graph=True)
    second = torch.autograd.grad(loss, leaves, torch.tensor(2.0), retain_graph=True)
    third = torch.autograd.grad(loss, leaves, torch.tensor(-0.5))  # last pass: in place
    for a, b2, c in zip(first, second, third):
        assert torch.equal(a, b2)
        torch.testing.assert_close(c.float(), a.float() * -0.25, rtol=1e-2, atol=1e-6)
