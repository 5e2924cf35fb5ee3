"""Every engine takes every memory layout: column-major and sliced logits, hidden states and
weights; strided biases, class weights and targets; permuted (B, C, T) inputs.

The Triton engines run under the interpreter here (``TRITON_INTERPRET=1``, set by conftest). Each
call is compared with ``torch.nn.functional.cross_entropy`` in float64 on contiguous copies of the
same values, loss and gradients (a random upstream gradient for ``reduction="none"``). Before the
kernels took both strides of their 2-D inputs, these layouts gave losses off by 1-50% on the
Triton engines (and would read out of bounds on a GPU).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from crossentropy.torch import cross_entropy, explain, linear_cross_entropy

pytest.importorskip("triton")
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning:triton")

N, C, D = 13, 37, 8  # odd sizes: partial tiles and blocks everywhere


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _column_major(t: torch.Tensor) -> torch.Tensor:
    out = t.t().contiguous().t()
    assert out.stride(0) == 1 and out.shape == t.shape
    return out


def _sliced_cols(t: torch.Tensor) -> torch.Tensor:
    """The same values inside a wider buffer: rows strided, columns unit-stride, an offset."""
    wide = torch.zeros(t.shape[0], t.shape[1] + 7, dtype=t.dtype)
    wide[:, 3 : 3 + t.shape[1]] = t
    return wide[:, 3 : 3 + t.shape[1]]


def _every_other_col(t: torch.Tensor) -> torch.Tensor:
    """Columns with stride 2 (an interleaved buffer)."""
    wide = torch.zeros(t.shape[0], 2 * t.shape[1], dtype=t.dtype)
    wide[:, ::2] = t
    return wide[:, ::2]


def _strided_1d(t: torch.Tensor) -> torch.Tensor:
    wide = torch.zeros(2 * t.shape[0] + 1, dtype=t.dtype)
    wide[1::2] = t
    return wide[1::2]


LAYOUTS_2D: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "contiguous": lambda t: t,
    "column-major": _column_major,
    "sliced": _sliced_cols,
    "column-stride-2": _every_other_col,
}

# (engine the call must take, keyword arguments)
LOGIT_ENGINES = {
    "native": dict(impl="torch"),
    "chunked": dict(impl="torch", z_loss=1e-3),
    "triton-softmax": dict(impl="triton"),
}
LINEAR_ENGINES = {
    "chunked": dict(impl="torch", chunk_size=5),
    "cuda-fast": dict(impl="triton", chunk_size=5),
    "triton-lowmem": dict(impl="triton", memory="low"),
}


def _ref_loss(z: torch.Tensor, y: torch.Tensor, z_loss: float = 0.0, **kw: Any) -> torch.Tensor:
    loss = F.cross_entropy(z, y, **kw)
    if z_loss:
        lse = torch.logsumexp(z, 1)
        valid = y != -100 if not y.is_floating_point() else torch.ones_like(lse, dtype=torch.bool)
        sq = torch.where(valid, lse.square(), 0.0)
        red = kw.get("reduction", "mean")
        loss = loss + z_loss * (
            sq if red == "none" else sq.sum() / (valid.sum() if red == "mean" else 1)
        )
    return loss


def _check(
    ours: Callable[..., torch.Tensor],
    ref: Callable[..., torch.Tensor],
    leaves: list[torch.Tensor],
    reduction: str,
) -> None:
    got_in = [t.detach().requires_grad_() for t in leaves]
    want_in = [t.detach().contiguous().double().requires_grad_() for t in leaves]
    loss = ours(*got_in)
    want = ref(*want_in)
    up = torch.randn(want.shape, generator=_gen(9), dtype=torch.float64)
    got_g = torch.autograd.grad(loss, got_in, up.to(loss.dtype))
    want_g = torch.autograd.grad(want, want_in, up)
    torch.testing.assert_close(loss.double(), want.detach(), rtol=1e-5, atol=1e-5)
    for a, b, t in zip(got_g, want_g, leaves):
        assert a.shape == t.shape
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("layout", sorted(LAYOUTS_2D))
@pytest.mark.parametrize("engine", sorted(LOGIT_ENGINES))
def test_cross_entropy_logit_layouts(engine: str, layout: str, reduction: str) -> None:
    kw = dict(LOGIT_ENGINES[engine], reduction=reduction)
    x = LAYOUTS_2D[layout](torch.randn(N, C, generator=_gen(1)) * 3)
    y = _strided_1d(torch.randint(0, C, (N,), generator=_gen(2)))
    y[4] = -100
    cw = _strided_1d(torch.rand(C, generator=_gen(3)) + 0.5)
    assert explain(cross_entropy, x, y, weight=cw, **kw).engine == engine
    zl = float(kw.get("z_loss", 0.0))
    _check(
        lambda x_: cross_entropy(x_, y, weight=cw, **kw),
        lambda x_: _ref_loss(x_, y, zl, weight=cw.double(), reduction=reduction),
        [x],
        reduction,
    )


@pytest.mark.parametrize("layout", ["column-major", "column-stride-2"])
@pytest.mark.parametrize("engine", ["chunked", "triton-softmax"])
def test_cross_entropy_probability_target_layouts(engine: str, layout: str) -> None:
    kw = LOGIT_ENGINES[engine]
    x = LAYOUTS_2D[layout](torch.randn(N, C, generator=_gen(4)))
    q = LAYOUTS_2D[layout](torch.softmax(torch.randn(N, C, generator=_gen(5)), 1))
    _check(
        lambda x_: cross_entropy(x_, q, reduction="none", label_smoothing=0.1, **kw),
        lambda x_: _ref_loss(
            x_, q.double(), float(kw.get("z_loss", 0.0)), reduction="none", label_smoothing=0.1
        ),
        [x],
        "none",
    )


@pytest.mark.parametrize("engine", sorted(LOGIT_ENGINES))
def test_cross_entropy_permuted_bct(engine: str) -> None:
    # (B, C, T) logits that are a permutation of a (B, T, C) buffer (as from logits.transpose(1, 2)),
    # and (B, T) targets that are a transposed (T, B) buffer
    b, t = 3, 5
    x = torch.randn(b, t, C, generator=_gen(6)).permute(0, 2, 1)
    y = torch.randint(0, C, (t, b), generator=_gen(7)).t()
    kw = LOGIT_ENGINES[engine]
    _check(
        lambda x_: cross_entropy(x_, y, reduction="none", **kw),
        lambda x_: _ref_loss(x_, y, float(kw.get("z_loss", 0.0)), reduction="none"),
        [x],
        "none",
    )


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("w_layout", sorted(LAYOUTS_2D))
@pytest.mark.parametrize("h_layout", ["contiguous", "column-major", "sliced"])
@pytest.mark.parametrize("engine", sorted(LINEAR_ENGINES))
def test_linear_cross_entropy_layouts(
    engine: str, h_layout: str, w_layout: str, reduction: str
) -> None:
    v = C
    kw = dict(LINEAR_ENGINES[engine], reduction=reduction)
    h = LAYOUTS_2D[h_layout](torch.randn(N, D, generator=_gen(11)))
    w = LAYOUTS_2D[w_layout](torch.randn(v, D, generator=_gen(12)) * 0.7)
    b = _strided_1d(torch.randn(v, generator=_gen(13)))
    cw = _strided_1d(torch.rand(v, generator=_gen(14)) + 0.5)
    y = _strided_1d(torch.randint(0, v, (N,), generator=_gen(15)))
    y[2] = -100
    assert explain(linear_cross_entropy, h, w, y, linear_bias=b, weight=cw, **kw).engine == engine

    def ref(h_: torch.Tensor, w_: torch.Tensor, b_: torch.Tensor) -> torch.Tensor:
        return _ref_loss(h_ @ w_.t() + b_, y, weight=cw.double(), reduction=reduction)

    _check(
        lambda h_, w_, b_: linear_cross_entropy(h_, w_, y, linear_bias=b_, weight=cw, **kw),
        ref,
        [h, w, b],
        reduction,
    )


@pytest.mark.parametrize("engine", sorted(LINEAR_ENGINES))
def test_linear_cross_entropy_column_major_probability_targets(engine: str) -> None:
    v = C
    h = torch.randn(N, D, generator=_gen(21))
    w = _column_major(torch.randn(v, D, generator=_gen(22)))
    q = _column_major(torch.softmax(torch.randn(N, v, generator=_gen(23)), 1))
    kw = LINEAR_ENGINES[engine]
    _check(
        lambda h_, w_: linear_cross_entropy(h_, w_, q, reduction="none", **kw),
        lambda h_, w_: _ref_loss(h_ @ w_.t(), q.double(), reduction="none"),
        [h, w],
        "none",
    )
