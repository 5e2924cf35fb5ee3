"""contrastive_loss and ContrastiveLoss in one process: against a float64 materialised reference,
pytorch-metric-learning's NTXentLoss / SupConLoss, and the torch cross-entropy they reduce to.

The distributed checks (open_clip in 1-4 gloo processes, memory, bad input on one rank) are in
``tests/distributed/test_contrastive_dist.py``; both use the reference of ``_clip_cases``.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.distributed._clip_cases import Case, grid, local_inputs, reference, upstream

from crossentropy.torch import ContrastiveLoss, contrastive_loss


def _run(case: Case, **extra: object) -> dict[str, torch.Tensor | None]:
    inp = local_inputs(case, 1, 0)
    out = contrastive_loss(
        inp["a"],  # type: ignore[arg-type]
        inp["b"],  # type: ignore[arg-type]
        logit_scale=inp["t"],  # type: ignore[arg-type]
        logit_bias=inp["beta"],
        kind=case.kind,
        symmetric=case.symmetric,
        a_ids=inp["a_ids"],
        b_ids=inp["b_ids"],
        exclude_self=case.exclude_self,
        reduction=case.reduction,
        chunk_size=case.chunk,
        **extra,  # type: ignore[arg-type]
    )
    out.backward(upstream(case, 1, 0, out.shape).to(out.dtype))
    a, b, t, beta = inp["a"], inp["b"], inp["t"], inp["beta"]
    assert a is not None and b is not None and t is not None
    return {
        "loss": out.detach(),
        "a": a.grad,
        "b": b.grad if b is not a else None,
        "t": t.grad,
        "beta": beta.grad if beta is not None else None,
    }


# every kind x direction x positives layout x reduction; half of them in 2 x 2 tiles
@pytest.mark.parametrize(
    "case", grid(), ids=lambda c: f"{c.kind}-{c.symmetric}-{c.layout}-{c.reduction}-{c.chunk}"
)
def test_matches_float64_reference(case: Case) -> None:
    case = replace(case, uneven=False)
    got = _run(case)
    want = reference(case, 1)[0]
    for k in ("loss", "a", "b", "t", "beta"):
        if want[k] is None or (got[k] is None and k == "b" and case.layout == "self"):
            continue
        assert got[k] is not None, k
        torch.testing.assert_close(got[k], want[k], rtol=1e-12, atol=1e-12, msg=k)


def test_equals_torch_cross_entropy_for_clip_and_hard_negatives() -> None:
    # CLIP: the mean of the two directions' cross-entropies; MNRL: A->B over b with hard negatives
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 4, generator=g, dtype=torch.float64)
    b = torch.randn(9, 4, generator=g, dtype=torch.float64)
    s = 20.0 * a @ b.T
    y = torch.arange(6)
    mnrl = contrastive_loss(a, b, logit_scale=20.0, symmetric=False)
    torch.testing.assert_close(mnrl, F.cross_entropy(s, y), rtol=1e-13, atol=1e-13)
    clip = contrastive_loss(a, b[:6], logit_scale=20.0)
    ref = (F.cross_entropy(s[:, :6], y) + F.cross_entropy(s[:, :6].T, y)) / 2
    torch.testing.assert_close(clip, ref, rtol=1e-13, atol=1e-13)


def _pml():
    return pytest.importorskip("pytorch_metric_learning.losses")


def test_exclude_self_equals_pml_ntxent() -> None:
    # SimCLR: 2N views, each row's positive is its other view, every other row a negative
    losses = _pml()
    g = torch.Generator().manual_seed(1)
    n_pairs, d, temperature = 7, 6, 0.2
    labels = torch.arange(n_pairs).repeat(2)
    x = torch.randn(2 * n_pairs, d, generator=g, dtype=torch.float64, requires_grad=True)
    theirs = losses.NTXentLoss(temperature=temperature)(x, labels)
    (g_theirs,) = torch.autograd.grad(theirs, x)
    z = F.normalize(x, dim=1)  # PML's cosine similarity normalises inside; we do not
    ours = contrastive_loss(
        z, z, logit_scale=1 / temperature, a_ids=labels, b_ids=labels, exclude_self=True,
        symmetric=False,
    )  # fmt: skip
    (g_ours,) = torch.autograd.grad(ours, x)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-10, atol=1e-12)


def test_ids_equal_pml_supcon() -> None:
    # SupCon's L_out: several positives per row (3-4 views of a class), one row with none (its
    # class appears once: PML's AvgNonZeroReducer leaves its zero loss out, as we ignore it)
    losses = _pml()
    g = torch.Generator().manual_seed(2)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2, 3, 4, 4])
    x = torch.randn(len(labels), 5, generator=g, dtype=torch.float64, requires_grad=True)
    theirs = losses.SupConLoss(temperature=0.1)(x, labels)
    (g_theirs,) = torch.autograd.grad(theirs, x)
    z = F.normalize(x, dim=1)
    ours = contrastive_loss(
        z, z, logit_scale=10.0, a_ids=labels, b_ids=labels, exclude_self=True, symmetric=False,
        chunk_size=5,
    )  # fmt: skip
    (g_ours,) = torch.autograd.grad(ours, x)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-10, atol=1e-12)


def test_ignored_rows_and_rows_without_a_positive_do_not_count() -> None:
    g = torch.Generator().manual_seed(3)
    a = torch.randn(5, 3, generator=g, dtype=torch.float64)
    b = torch.randn(4, 3, generator=g, dtype=torch.float64)
    a_ids = torch.tensor([0, 1, -100, 9, 1])  # row 2 ignored, row 3 has no positive
    b_ids = torch.tensor([1, 0, 7, -100])
    none = contrastive_loss(a, b, logit_scale=2.0, a_ids=a_ids, b_ids=b_ids, symmetric=False,
                            reduction="none")  # fmt: skip
    assert none[2] == 0 and none[3] == 0 and (none[[0, 1, 4]] > 0).all()
    mean = contrastive_loss(a, b, logit_scale=2.0, a_ids=a_ids, b_ids=b_ids, symmetric=False)
    torch.testing.assert_close(mean, none.sum() / 3)
    # every row ignored: mean is 0, with zero gradients, not NaN
    x = a.clone().requires_grad_(True)
    zero = contrastive_loss(x, b, logit_scale=2.0, a_ids=torch.full((5,), -100), b_ids=b_ids)
    zero.backward()
    assert float(zero.detach()) == 0.0 and x.grad is not None and not x.grad.any()


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 9),
    extra=st.integers(0, 4),
    chunk=st.integers(1, 6),
    kind=st.sampled_from(["softmax", "sigmoid"]),
    seed=st.integers(0, 1000),
)
def test_tiles_do_not_change_the_result(
    n: int, extra: int, chunk: int, kind: str, seed: int
) -> None:
    # the online merge is exact up to rounding whatever the tiling: chunk_size only moves rounding
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, 4, generator=g, dtype=torch.float64) * 3
    b = torch.randn(n + extra, 4, generator=g, dtype=torch.float64) * 3
    kw = {"logit_scale": 4.0, "logit_bias": -1.0, "kind": kind}
    whole = contrastive_loss(a, b, **kw)  # type: ignore[arg-type]
    tiled = contrastive_loss(a, b, chunk_size=chunk, **kw)  # type: ignore[arg-type]
    torch.testing.assert_close(tiled, whole, rtol=1e-13, atol=1e-13)


@settings(max_examples=20, deadline=None)
@given(bias=st.floats(-50, 50), seed=st.integers(0, 1000))
def test_softmax_is_shift_invariant_in_the_bias(bias: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(4, 3, generator=g, dtype=torch.float64)
    b = torch.randn(5, 3, generator=g, dtype=torch.float64)
    beta = torch.tensor(bias, dtype=torch.float64, requires_grad=True)
    loss = contrastive_loss(a, b, logit_scale=3.0, logit_bias=beta)
    loss.backward()
    torch.testing.assert_close(loss, contrastive_loss(a, b, logit_scale=3.0))
    assert beta.grad is not None and float(beta.grad) == 0.0


def test_large_logits_stay_finite() -> None:
    # scale 100 (CLIP's cap) on unnormalised rows: logits in the thousands, no overflow
    g = torch.Generator().manual_seed(4)
    a = (torch.randn(8, 16, generator=g) * 5).requires_grad_(True)
    b = (torch.randn(8, 16, generator=g) * 5).requires_grad_(True)
    for kind in ("softmax", "sigmoid"):
        loss = contrastive_loss(a, b, logit_scale=100.0, kind=kind, chunk_size=3)
        loss.backward()
        ref = reference_float64(a.detach(), b.detach(), kind)
        assert torch.isfinite(loss) and abs(float(loss.detach()) - ref) <= 1e-5 * max(1.0, abs(ref))
        assert a.grad is not None and torch.isfinite(a.grad).all()
        a.grad = b.grad = None


def reference_float64(a: torch.Tensor, b: torch.Tensor, kind: str) -> float:
    s = 100.0 * a.double() @ b.double().T
    y = torch.arange(a.shape[0])
    if kind == "sigmoid":
        sign = torch.where(torch.eye(a.shape[0], dtype=torch.bool), 1.0, -1.0).double()
        return float(-F.logsigmoid(sign * s).sum() / a.shape[0])
    return float((F.cross_entropy(s, y) + F.cross_entropy(s.T, y)) / 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_inputs(dtype: torch.dtype) -> None:
    # fp32 math whatever the input dtype; the loss is fp32, the gradients in the input dtype; the
    # error is no worse than that of the same math in torch at that dtype, plus rounding
    g = torch.Generator().manual_seed(5)
    a64 = F.normalize(torch.randn(12, 8, generator=g, dtype=torch.float64), dim=1)
    b64 = F.normalize(torch.randn(12, 8, generator=g, dtype=torch.float64), dim=1)
    a = a64.to(dtype).requires_grad_(True)
    b = b64.to(dtype).requires_grad_(True)
    loss = contrastive_loss(a, b, logit_scale=30.0, chunk_size=5)
    loss.backward()
    assert loss.dtype == torch.float32 and a.grad is not None and a.grad.dtype == dtype
    ar, br = a.detach().double().requires_grad_(True), b.detach().double().requires_grad_(True)
    s = 30.0 * ar @ br.T
    y = torch.arange(12)
    ref = (F.cross_entropy(s, y) + F.cross_entropy(s.T, y)) / 2
    ref.backward()
    assert abs(float(loss.detach()) - float(ref.detach())) <= 1e-5
    assert ar.grad is not None
    rounding = 2**-8 if dtype == torch.bfloat16 else 1e-6
    assert float((a.grad.double() - ar.grad).abs().max()) <= rounding * float(ar.grad.abs().max())


def test_autocast_rounds_both_towers_like_a_matmul() -> None:
    # under CPU autocast (bfloat16) the logits GEMM multiplies bf16-rounded a and b, as a @ b.T
    # would, with fp32 softmax math; an enclosing autocast must not recast the tiles' GEMMs
    g = torch.Generator().manual_seed(8)
    a = torch.randn(10, 8, generator=g, requires_grad=True)
    b = torch.randn(12, 8, generator=g, requires_grad=True)
    for kind in ("softmax", "sigmoid"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = contrastive_loss(a, b, logit_scale=3.0, logit_bias=-1.0, kind=kind)
        loss.backward()
        assert loss.dtype == torch.float32 and a.grad is not None and a.grad.dtype == torch.float32
        ar, br = a.detach().bfloat16().double(), b.detach().bfloat16().double()
        s = 3.0 * ar @ br.T
        if kind == "softmax":
            y = torch.arange(10)
            ref = (F.cross_entropy(s, y) + F.cross_entropy(s[:, :10].T, y)) / 2
        else:
            sign = torch.where(torch.eye(10, 12, dtype=torch.bool), 1.0, -1.0).double()
            ref = -F.logsigmoid(sign * (s - 1.0)).sum() / 10
        assert abs(float(loss.detach()) - float(ref)) <= 1e-5 * max(1.0, abs(float(ref)))
        a.grad = b.grad = None


def test_module_initialises_as_clip_and_siglip_and_learns_the_scale() -> None:
    clip = ContrastiveLoss()
    assert abs(float(clip.log_scale.detach()) - float(torch.log(torch.tensor(1 / 0.07)))) < 1e-6
    assert clip.bias is None
    siglip = ContrastiveLoss("sigmoid")
    assert abs(siglip.log_scale.exp().item() - 10.0) < 1e-5
    assert siglip.bias is not None and siglip.bias.item() == -10.0
    g = torch.Generator().manual_seed(6)
    a = F.normalize(torch.randn(6, 4, generator=g, dtype=torch.float64), dim=1)
    b = F.normalize(torch.randn(6, 4, generator=g, dtype=torch.float64), dim=1)
    for module, kind in ((clip, "softmax"), (siglip, "sigmoid")):
        module.double()
        loss = module(a, b)
        loss.backward()
        t = module.log_scale.detach().exp().requires_grad_(True)
        beta = (
            module.bias.detach().clone().requires_grad_(True) if module.bias is not None else None
        )
        ref = contrastive_loss(a, b, logit_scale=t, logit_bias=beta, kind=kind)
        ref.backward()
        torch.testing.assert_close(loss, ref)
        # d/d log t = t d/dt
        assert t.grad is not None and module.log_scale.grad is not None
        torch.testing.assert_close(module.log_scale.grad, t.grad * t.detach())
        if beta is not None:
            assert module.bias is not None
            torch.testing.assert_close(module.bias.grad, beta.grad)
    fixed = ContrastiveLoss(learn_scale=False, init_scale=20.0)
    assert not list(fixed.parameters()) and abs(fixed.log_scale.exp().item() - 20.0) < 1e-4


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"b": torch.randn(4, 4)}, ValueError, "same feature size d"),
        ({"b": torch.randn(2, 3)}, ValueError, "at least as many rows"),
        ({"a_ids": torch.arange(4)}, ValueError, "a_ids was given without"),
        ({"logit_scale": float("nan")}, ValueError, "logit_scale must be finite"),
        ({"logit_scale": 0.0}, ValueError, "logit_scale must be finite and positive"),
        ({"logit_scale": torch.ones(2)}, TypeError, "one-element"),
        ({"logit_bias": float("inf")}, ValueError, "logit_bias must be finite"),
        ({"kind": "cosine"}, ValueError, "kind must be"),
        ({"reduction": "avg"}, ValueError, "reduction must be"),
        ({"exclude_self": True}, ValueError, "exclude_self=True needs a_ids"),
        ({"a": torch.randn(4, 3, 1)}, ValueError, "a must be 2-D"),
        ({"a": torch.randint(0, 3, (4, 3))}, TypeError, "a must be float64"),
        (
            {"a_ids": torch.arange(3), "b_ids": torch.arange(4)},
            ValueError,
            "a_ids must have shape (4,)",
        ),
        ({"a_ids": torch.arange(4.0), "b_ids": torch.arange(4)}, TypeError, "integer ids"),
        ({"chunk_size": 0}, ValueError, "chunk_size"),
        ({"memory": "huge"}, ValueError, "memory"),
        ({"symmetric": "yes"}, TypeError, "symmetric must be a bool"),
    ],
)
def test_bad_input_raises_naming_the_argument(kwargs: dict, error: type, words: str) -> None:
    args = {"a": torch.randn(4, 3), "b": torch.randn(4, 3), "logit_scale": 1.0}
    args.update(kwargs)
    a, b = args.pop("a"), args.pop("b")
    with pytest.raises(
        error, match="^contrastive_loss: .*" + words.replace("(", r"\(").replace(")", r"\)")
    ):
        contrastive_loss(a, b, **args)


def test_process_group_without_distributed_raises() -> None:
    if torch.distributed.is_initialized():
        pytest.skip("a process group is initialised in this process")
    with pytest.raises(ValueError, match="not initialized"):
        contrastive_loss(torch.randn(2, 3), torch.randn(2, 3), logit_scale=1.0,
                         process_group=object())  # type: ignore[arg-type]  # fmt: skip
