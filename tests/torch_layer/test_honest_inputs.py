"""The same input gets the same answer on every engine, and no engine gives a silently wrong number
(issue 23, items 2, 3 and 6).

One table of inputs runs through every engine that can take it: ``native`` (``F.cross_entropy``
itself), ``plain`` (differentiable ops on materialised logits), ``chunked`` (the torch engine),
and the Triton engines under the interpreter (``triton-softmax``, ``cuda-fast``,
``triton-lowmem``). The engine is forced by replacing the dispatch's answer for a prepared call,
so every engine sees exactly the same checked arguments. Each must accept the same inputs, raise
the same error type on the others, and agree on the values.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from crossentropy.torch import _pass, cross_entropy, linear_cross_entropy
from crossentropy.torch.engine._dispatch import Plan

pytest.importorskip("triton")
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning:triton")

LOGIT_ENGINES = ("native", "plain", "chunked", "triton-softmax")
LINEAR_ENGINES = ("plain", "chunked", "cuda-fast", "triton-lowmem")


def _forced(engine: str) -> Callable[[Any], Plan]:
    def plan(call: Any) -> Plan:
        mode = "fused" if call.scalar else "rows"
        table = {
            "native": Plan(call.fn, "native", "", call.prec),
            "plain": Plan(call.fn, "plain", "", call.prec, None, "torch"),
            "chunked": Plan(call.fn, "chunked", mode, call.prec, 5, "torch"),
            "cuda-fast": Plan(call.fn, "cuda-fast", mode, call.prec, 5, "triton"),
            "triton-softmax": Plan(call.fn, "triton-softmax", "rows", call.prec, None, "triton"),
            "triton-lowmem": Plan(call.fn, "triton-lowmem", "rows", call.prec, None, "triton"),
        }
        return table[engine]

    return plan


@pytest.fixture
def force(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    def use(engine: str) -> None:
        monkeypatch.setattr(_pass, "plan_call", _forced(engine))

    return use


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


N, C, D = 7, 11, 5
INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def _outcome(call: Callable[[], torch.Tensor]) -> tuple[str, Any]:
    try:
        return "ok", call().detach()
    except (TypeError, ValueError) as exc:
        return type(exc).__name__, str(exc)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_class_ids_of_every_integer_dtype_on_every_logits_engine(force, reduction: str) -> None:
    x = torch.randn(N, C, generator=_gen(1))
    y = torch.randint(0, C, (N,), generator=_gen(2))
    y[3] = -100
    want = F.cross_entropy(x, y, reduction=reduction)
    for engine in LOGIT_ENGINES:
        force(engine)
        for dtype in INT_DTYPES:
            t = y.to(dtype) if dtype.is_signed else torch.where(y < 0, 200, y).to(dtype)
            ignore = -100 if dtype.is_signed else 200
            got = cross_entropy(x, t, ignore_index=ignore, reduction=reduction)
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6, msg=(engine, dtype))


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_class_ids_of_every_integer_dtype_on_every_linear_engine(force, reduction: str) -> None:
    h = torch.randn(N, D, generator=_gen(3))
    w = torch.randn(C, D, generator=_gen(4))
    y = torch.randint(0, C, (N,), generator=_gen(5))
    y[1] = -100
    want = F.cross_entropy(h @ w.T, y, reduction=reduction)
    for engine in LINEAR_ENGINES:
        force(engine)
        for dtype in INT_DTYPES[:4]:
            got = linear_cross_entropy(h, w, y.to(dtype), reduction=reduction)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=(engine, dtype))


# (name, target maker, loss kwargs): inputs refused the same way on every engine
BAD_LOGIT_INPUTS: dict[str, tuple[Callable[[], torch.Tensor], dict[str, Any]]] = {
    "bool ids": (lambda: torch.ones(N, dtype=torch.bool), {}),
    "float ids": (lambda: torch.zeros(N), {}),
    "id past the classes": (lambda: torch.full((N,), C), {}),
    "negative id": (lambda: torch.full((N,), -3), {}),
    "probabilities with an ignore_index": (lambda: torch.rand(N, C), {"ignore_index": 0}),
}


@pytest.mark.parametrize("name", sorted(BAD_LOGIT_INPUTS))
def test_bad_inputs_get_the_same_error_type_on_every_engine(force, name: str) -> None:
    make, kw = BAD_LOGIT_INPUTS[name]
    x = torch.randn(N, C, generator=_gen(6))
    h, w = torch.randn(N, D, generator=_gen(7)), torch.randn(C, D, generator=_gen(8))
    outcomes = {}
    for engine in LOGIT_ENGINES:
        force(engine)
        outcomes[f"logits {engine}"] = _outcome(lambda: cross_entropy(x, make(), **kw))
    for engine in LINEAR_ENGINES:
        force(engine)
        outcomes[f"linear {engine}"] = _outcome(lambda: linear_cross_entropy(h, w, make(), **kw))
    kinds = {k: v[0] for k, v in outcomes.items()}
    assert len(set(kinds.values())) == 1 and "ok" not in kinds.values(), outcomes


def test_cross_entropy_takes_any_probability_target_as_torch_does(force) -> None:
    # torch's semantics: any real-valued target (negative, unnormalised) gives what the formula
    # gives, on every engine (documented: cross_entropy does not check probability targets)
    x = torch.randn(8, 100, generator=_gen(9))
    for q in (torch.rand(8, 100, generator=_gen(10)), -torch.rand(8, 100, generator=_gen(11))):
        want = F.cross_entropy(x, q, reduction="none")
        for engine in ("plain", "chunked", "triton-softmax"):
            force(engine)
            got = cross_entropy(x, q, reduction="none")
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=engine)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_fused_losses_take_distributions_only(force, reduction: str) -> None:
    h, w = torch.randn(4, D, generator=_gen(12)), torch.randn(10, D, generator=_gen(13))
    q = torch.softmax(torch.randn(4, 10, generator=_gen(14)) * 3, 1)
    bad = {
        "unnormalised (rand * 3)": torch.rand(4, 10, generator=_gen(15)) * 3,
        "negative": -q,
        "a histogram that lost a count": torch.tensor([[100.0, 100.0, 55.0] + [0.0] * 7]) / 256,
    }
    for engine in LINEAR_ENGINES:
        force(engine)
        want = F.cross_entropy(h @ w.T, q, reduction=reduction)
        got = linear_cross_entropy(h, w, q, reduction=reduction)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=engine)
        # a bfloat16 softmax is a distribution to bfloat16's rounding: accepted
        linear_cross_entropy(h, w, q.bfloat16(), reduction=reduction)
        for name, t in bad.items():
            hh = h[: t.shape[0]]
            with pytest.raises(ValueError, match="is not a probability distribution"):
                linear_cross_entropy(hh, w, t, reduction=reduction)
            # return_aux takes the recomputing path: checked there too
            with pytest.raises(ValueError, match=f"target row {0}"):
                linear_cross_entropy(hh, w, t, return_aux=True)
            assert name  # every kind of non-distribution is refused


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_an_all_ignored_batch_is_plus_zero_on_every_engine(force, reduction: str) -> None:
    # torch sums nothing to -0.0; the library's empty mean (and sum) is +0, with zero gradients
    x = -torch.rand(6, C, generator=_gen(16)) - 1.0  # a negative sum: x.sum() * 0 is -0.0
    y = torch.full((6,), -100)
    h, w = torch.randn(6, D, generator=_gen(17)), torch.randn(C, D, generator=_gen(18))
    results = {"fast path": cross_entropy(x, y, reduction=reduction)}
    for engine in LOGIT_ENGINES:
        force(engine)
        results[f"logits {engine}"] = cross_entropy(x, y, reduction=reduction)
    for engine in LINEAR_ENGINES:
        force(engine)
        results[f"linear {engine}"] = linear_cross_entropy(h, w, y, reduction=reduction)
    for name, loss in results.items():
        assert float(loss) == 0.0 and not torch.signbit(loss), (name, loss)


def test_hf_token_logprobs_names_itself_and_the_bad_token() -> None:
    transformers = pytest.importorskip("transformers")
    from crossentropy import hf

    cfg = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg)
    ids = torch.randint(0, 64, (2, 6), generator=_gen(19))
    ids[1, 3] = 70
    with pytest.raises(
        ValueError, match=r"token_logprobs: input_ids holds token id 70 at \(1, 3\)"
    ):
        hf.token_logprobs(model, ids)
    with pytest.raises(ValueError, match="64 rows"):
        hf.token_logprobs(model, ids)
    # a head the fused loss cannot reproduce: the error names the function that was called
    model.lm_head = torch.nn.Sequential(model.lm_head)
    with pytest.raises(hf.UnsupportedModelError, match=r"crossentropy\.hf\.token_logprobs"):
        hf.token_logprobs(model, ids.clamp(max=63))
