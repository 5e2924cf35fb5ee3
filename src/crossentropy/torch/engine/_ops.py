"""The engines as custom operators (``torch.library``), so ``torch.compile(fullgraph=True)`` sees one
op per call instead of a graph break, and autograd sees one node.

Three operators take the same tensor slots (:data:`SLOTS`) and a ``spec`` string, a Python literal of
every non-tensor argument (the row math and its options, the precision, the block size, the row
backend and the process group), from which the row math and the heads are rebuilt inside:

* ``crossentropy::rows`` -> (out0, out1, saved): per-row outputs for any upstream gradient; its
  backward is ``crossentropy::rows_backward`` (the recomputing pass), or, under
  ``create_graph=True``, the derivative of a plain differentiable recomputation (exact to every
  order, materialising the logits once);
* ``crossentropy::fused`` -> (loss, out0, out1, dx, dw, db, dx2, dw2, db2): a scalar loss with the
  gradients formed in the forward pass; its backward scales them (first order only).

``crossentropy::triton_ce`` / ``triton_ce_backward`` wrap the Triton kernels that read their inputs
directly (softmax-CE on given logits, and the low-memory fused linear-CE).

Autocast is resolved before these ops are called (the spec carries the operand dtype), and the
ops run with autocast off.
"""

from __future__ import annotations

import ast
import contextlib
import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from crossentropy.torch.engine import _chunked as E
from crossentropy.torch.engine._gemm import Precision, exact_products
from crossentropy.torch.engine._rowmath import (
    LOCAL,
    CrossEntropyRows,
    DistillRows,
    KeptSet,
    LogitMap,
    LogProbRows,
    Merge,
    RowMath,
)
from crossentropy.torch.engine._topk import TopKDistillRows

__all__ = [
    "SLOTS",
    "Call",
    "call_fused",
    "call_rows",
    "call_triton_ce",
]

SLOTS = (
    "x",
    "w",
    "b",
    "x2",
    "w2",
    "b2",
    "target",
    "cweight",
    "temperature",
    "top_k",
    "top_p",
    "allowed",
    "mask",
    # distillation from a teacher's saved top-k (engine/_topk.py): (N, k) ids and log-probs
    "topk_ids",
    "topk_logprobs",
)
_HEAD_SLOTS = 6
_DTYPES = {
    str(d).replace("torch.", ""): d
    for d in (torch.float64, torch.float32, torch.bfloat16, torch.float16)
}

_NO_DOUBLE_BACKWARD_FUSED = (
    "the fused 'mean'/'sum' path forms its gradients in the forward pass and keeps no inputs, so "
    "it has no double backward (create_graph=True). For higher-order gradients pass "
    "return_aux=True (linear_cross_entropy) or reduction='none' and differentiate the result "
    "(the recomputing path, exact to every order); for a model patched by crossentropy.hf, "
    "unpatch it first."
)
_NO_DOUBLE_BACKWARD_VP = (
    "vocab-parallel losses have no double backward (create_graph=True); use the single-process "
    "path for higher-order gradients"
)


@dataclass(frozen=True)
class Call:
    """Everything about a call except its tensors (its ``repr`` is the ops' ``spec``)."""

    math: str  # "ce" | "logprob" | "distill" | "topk_distill"
    params: tuple[tuple[str, Any], ...]
    prec: Precision
    chunk: int
    rows: str = "torch"  # row backend: "torch" | "triton"
    group: str = ""  # process group name (vocab parallel) or ""

    def param(self, key: str, default: Any = None) -> Any:
        for k, v in self.params:
            if k == key:
                return v
        return default

    def encode(self) -> str:
        # a Python literal (parsed back with ast.literal_eval): plain repr, which Dynamo traces
        p = self.prec
        return repr(
            (
                self.math,
                self.params,
                (_name(p.operand), _name(p.compute), _name(p.dz), p.tensor_cores, p.exact),
                self.chunk,
                self.rows,
                self.group,
            )
        )


def _name(d: torch.dtype) -> str:
    return str(d).replace("torch.", "")


@functools.lru_cache(maxsize=512)
def decode(spec: str) -> Call:
    math, params, (op, comp, dz, cores, exact), chunk, rows, group = ast.literal_eval(spec)
    return Call(
        math=math,
        params=tuple(params),
        prec=Precision(_DTYPES[op], _DTYPES[comp], _DTYPES[dz], bool(cores), bool(exact)),
        chunk=int(chunk),
        rows=rows,
        group=group,
    )


# ------------------------------------------------------------------------------------------------
# Rebuilding the row math, the heads and the merge from (tensors, spec)


class _GroupMerge(Merge):
    """All-reduces over a process group (vocab parallel), in the compute dtype."""

    def __init__(self, group: Any) -> None:
        self.group = group

    def max(self, m: Tensor) -> Tensor:
        import torch.distributed as dist

        m = m.clone()
        dist.all_reduce(m, op=dist.ReduceOp.MAX, group=self.group)
        return m

    def sum(self, cols: Tensor) -> Tensor:
        import torch.distributed as dist

        cols = cols.contiguous()
        dist.all_reduce(cols, op=dist.ReduceOp.SUM, group=self.group)
        return cols


def _merge(call: Call) -> Merge:
    if not call.group:
        return LOCAL
    from torch.distributed import distributed_c10d as c10d

    return _GroupMerge(c10d._resolve_process_group(call.group))  # type: ignore[arg-type]


def _lmap(call: Call, prefix: str = "", temperature: Tensor | float | None = None) -> LogitMap:
    cap = call.param(prefix + "softcap")
    return LogitMap(
        scale=float(call.param(prefix + "scale", 1.0)),
        softcap=None if cap is None else float(cap),
        temperature=temperature,
    )


def build_math(call: Call, t: dict[str, Tensor | None]) -> RowMath:
    comp = call.prec.compute
    if call.math == "ce":
        target = t["target"]
        assert target is not None
        cw = t["cweight"]
        kwargs: dict[str, Any] = dict(
            weight=cw.to(comp).contiguous() if cw is not None else None,
            ignore_index=int(call.param("ignore_index", -100)),
            label_smoothing=float(call.param("label_smoothing", 0.0)),
            num_classes=int(call.param("num_classes")),
            lmap=_lmap(call),
            offset=int(call.param("offset", 0)),
            weight_total=call.param("weight_total"),
        )
        if call.rows == "triton":
            from crossentropy.triton._rows import TritonCrossEntropyRows

            # the kernels add the bias as they read each block (rounded to the operand dtype,
            # as F.linear under autocast rounds it); the head's GEMM leaves it out
            b = t["b"]
            bias = b.to(call.prec.operand) if b is not None else None
            return TritonCrossEntropyRows(target, dz_dtype=call.prec.dz, bias=bias, **kwargs)
        return CrossEntropyRows(target, **kwargs)
    if call.math == "logprob":
        target = t["target"]
        assert target is not None
        t_temp, t_k, t_p = t["temperature"], t["top_k"], t["top_p"]
        temp: Tensor | float | None = t_temp.to(comp) if t_temp is not None else None
        if temp is None and call.param("temperature") is not None:
            temp = float(call.param("temperature"))
        top_k: Tensor | int | None = t_k
        if top_k is None and call.param("top_k") is not None:
            top_k = int(call.param("top_k"))
        top_p: Tensor | float | None = t_p.to(comp) if t_p is not None else None
        if top_p is None and call.param("top_p") is not None:
            top_p = float(call.param("top_p"))
        kept = None
        if top_k is not None or top_p is not None or t["allowed"] is not None:
            kept = KeptSet(top_k=top_k, top_p=top_p, allowed=t["allowed"])
        return LogProbRows(
            target,
            ignore_index=int(call.param("ignore_index", -100)),
            entropy=bool(call.param("entropy", False)),
            lmap=_lmap(call, temperature=temp),
            kept=kept,
            offset=int(call.param("offset", 0)),
        )
    if call.math == "distill":
        return DistillRows(
            divergence=str(call.param("divergence")),
            beta=float(call.param("beta", 0.5)),
            temperature=float(call.param("temperature", 1.0)),
            t2=bool(call.param("t2", False)),
            soft_weight=float(call.param("soft_weight", 1.0)),
            hard_weight=float(call.param("hard_weight", 0.0)),
            target=t["target"],
            ignore_index=int(call.param("ignore_index", -100)),
            mask=t["mask"],
            lmaps=(_lmap(call, "s_"), _lmap(call, "t_")),
            offset=int(call.param("offset", 0)),
        )
    if call.math == "topk_distill":
        # the teacher as saved top-k ids and log-probabilities; one head, the student's
        ids, logprobs = t["topk_ids"], t["topk_logprobs"]
        assert ids is not None and logprobs is not None
        return TopKDistillRows(
            ids=ids,
            logprobs=logprobs.to(comp),
            mode=str(call.param("mode")),
            divergence=str(call.param("divergence")),
            beta=float(call.param("beta", 0.5)),
            temperature=float(call.param("temperature", 1.0)),
            t2=bool(call.param("t2", False)),
            soft_weight=float(call.param("soft_weight", 1.0)),
            hard_weight=float(call.param("hard_weight", 0.0)),
            target=t["target"],
            ignore_index=int(call.param("ignore_index", -100)),
            mask=t["mask"],
            lmap=_lmap(call),
        )
    raise ValueError(f"unknown row math {call.math!r}")


def _heads(call: Call, t: dict[str, Tensor | None]) -> list[E.Head]:
    x = t["x"]
    assert x is not None
    heads = [E.Head(x, t["w"], t["b"], call.prec, bias_in_rows=call.rows == "triton")]
    if t["x2"] is not None:
        heads.append(E.Head(t["x2"], t["w2"], t["b2"], call.prec))
    return heads


def _needs(bits: int, n_heads: int) -> list[tuple[bool, bool, bool]]:
    return [tuple(bool(bits >> (3 * h + k) & 1) for k in range(3)) for h in range(n_heads)]  # type: ignore[misc]


def _flat(grads: Sequence[E.Grads], like: Tensor) -> list[Tensor]:
    out: list[Tensor] = []
    for h in range(2):
        trio = grads[h] if h < len(grads) else (None, None, None)
        out.extend(g if g is not None else like.new_empty(0) for g in trio)
    return out


@contextlib.contextmanager
def _no_autocast(device: torch.device, prec: Precision | None = None) -> Iterator[None]:
    """The ops pick their dtypes themselves: autocast off inside (and exact fp32 products when the
    call asks for them)."""
    with torch.autocast(device_type=device.type, enabled=False):
        if prec is None:
            yield
        else:
            with exact_products(prec):
                yield


def _slots(args: Sequence[Any]) -> dict[str, Tensor | None]:
    return dict(zip(SLOTS, args))


# ------------------------------------------------------------------------------------------------
# crossentropy::rows and crossentropy::rows_backward

_SLOT_SCHEMA = ", ".join(f"Tensor? {s}" for s in SLOTS)


def _rows_impl(*args: Any) -> tuple[Tensor, Tensor, Tensor]:
    t, call = _slots(args[:-1]), decode(args[-1])
    x = t["x"]
    assert x is not None
    with _no_autocast(x.device, call.prec):
        math = build_math(call, t)
        outs, saved = E.rows_forward(math, _heads(call, t), _merge(call), call.chunk)
    out1 = outs[1] if len(outs) > 1 else outs[0].new_empty(0)
    return outs[0], out1, saved


def _rows_fake(*args: Any) -> tuple[Tensor, Tensor, Tensor]:
    t, call = _slots(args[:-1]), decode(args[-1])
    x = t["x"]
    assert x is not None
    n, comp = x.shape[0], call.prec.compute
    math_out, saved = _out_shapes(call)
    o0 = x.new_empty(n, dtype=comp)
    o1 = x.new_empty(n if math_out > 1 else 0, dtype=comp)
    return o0, o1, x.new_empty(n, saved, dtype=comp)


def _out_shapes(call: Call) -> tuple[int, int]:
    if call.math == "ce":
        return 2, 2
    if call.math == "logprob":
        return (2 if call.param("entropy") else 1), 2
    return 1, 0


_rows_op = torch.library.custom_op(
    "crossentropy::rows",
    _rows_impl,
    mutates_args=(),
    schema=f"({_SLOT_SCHEMA}, str spec) -> (Tensor, Tensor, Tensor)",
)
_rows_op.register_fake(_rows_fake)


def _rows_backward_impl(*args: Any) -> tuple[Tensor, ...]:
    g0, g1, saved = args[:3]
    t = _slots(args[3 : 3 + len(SLOTS)])
    call, bits = decode(args[-2]), int(args[-1])
    x = t["x"]
    assert x is not None
    with _no_autocast(x.device, call.prec):
        math = build_math(call, t)
        heads = _heads(call, t)
        grads = [g0, g1 if g1 is not None and g1.numel() else None][: math.n_out]
        out = E.rows_backward(
            math,
            heads,
            _merge(call),
            call.chunk,
            saved,
            grads,
            _needs(bits, len(heads)),
            sharded=bool(call.group),
        )
    return tuple(_flat(out, x))


def _grads_fake(
    t: dict[str, Tensor | None], bits: int, wide: torch.dtype | None = None
) -> tuple[Tensor, ...]:
    """Gradient outputs: each like its input; float16 ones in ``wide`` when given (the fused op
    returns them unrounded, see ``_engines.fused``)."""
    x = t["x"]
    assert x is not None
    out = []
    for i, name in enumerate(SLOTS[:_HEAD_SLOTS]):
        src = t[name]
        if src is None or not bits >> i & 1:
            out.append(x.new_empty(0))
            continue
        dtype = wide if wide is not None and src.dtype == torch.float16 else src.dtype
        out.append(src.new_empty(src.shape, dtype=dtype))
    return tuple(out)


def _rows_backward_fake(*args: Any) -> tuple[Tensor, ...]:
    return _grads_fake(_slots(args[3 : 3 + len(SLOTS)]), int(args[-1]))


_rows_backward_op = torch.library.custom_op(
    "crossentropy::rows_backward",
    _rows_backward_impl,
    mutates_args=(),
    schema=(
        f"(Tensor? g0, Tensor? g1, Tensor saved, {_SLOT_SCHEMA}, str spec, int needs) -> "
        "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)"
    ),
)
_rows_backward_op.register_fake(_rows_backward_fake)


def _needs_bits(needs_input_grad: Sequence[bool]) -> int:
    return sum(1 << i for i, need in enumerate(needs_input_grad[:_HEAD_SLOTS]) if need)


def _plain_logits(call: Call, x: Tensor, w: Tensor | None, b: Tensor | None) -> Tensor:
    """The heads' logits with differentiable ops, rounded like the engine's GEMM operands."""
    comp = call.prec.compute
    if w is None:
        return x.to(comp)
    xo = x.to(call.prec.operand).to(comp)
    wo = w.to(call.prec.operand).to(comp)
    z = xo @ wo.t()
    return z + b.to(call.prec.operand).to(comp) if b is not None else z


def reference_outputs(call: Call, t: dict[str, Tensor | None]) -> list[Tensor]:
    """The op's per-row outputs with plain differentiable torch ops (materialises the logits)."""
    with _no_autocast(t["x"].device, call.prec):  # type: ignore[union-attr]
        math = build_math(call, t)
        logits = [_plain_logits(call, t["x"], t["w"], t["b"])]  # type: ignore[arg-type]
        if t["x2"] is not None:
            logits.append(_plain_logits(call, t["x2"], t["w2"], t["b2"]))
        return math.reference(logits)


def _rows_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
    ctx.set_materialize_grads(False)
    ctx.spec = inputs[-1]
    ctx.save_for_backward(*inputs[:-1], output[2])


def _double_backward(ctx: Any, slots: list[Any], grads: Sequence[Tensor | None]) -> tuple[Any, ...]:
    """create_graph=True: differentiate a plain recomputation from the saved inputs."""
    call = decode(ctx.spec)
    if call.group:
        raise NotImplementedError(_NO_DOUBLE_BACKWARD_VP)
    t = _slots(slots)
    with torch.enable_grad():
        outs = reference_outputs(call, t)
        wanted = [
            (i, slots[i])
            for i in range(_HEAD_SLOTS)
            if slots[i] is not None and ctx.needs_input_grad[i] and slots[i].requires_grad
        ]
        pairs = [(o, g) for o, g in zip(outs, grads) if g is not None and g.numel()]
        result: list[Any] = [None] * (len(SLOTS) + 1)
        if not wanted or not pairs:
            return tuple(result)
        got = torch.autograd.grad(
            [o for o, _ in pairs],
            [s for _, s in wanted],
            [g for _, g in pairs],
            create_graph=True,
            allow_unused=True,
        )
    for (i, _), g in zip(wanted, got):
        result[i] = g
    return tuple(result)


def _rows_autograd(ctx: Any, g0: Tensor | None, g1: Tensor | None, _g_saved: Any) -> Any:
    *slots, saved = ctx.saved_tensors
    if torch.is_grad_enabled():
        return _double_backward(ctx, slots, [g0, g1])
    bits = _needs_bits(ctx.needs_input_grad)
    result: list[Any] = [None] * (len(SLOTS) + 1)
    if not bits or (g0 is None and g1 is None):
        return tuple(result)
    grads = _rows_backward_op(g0, g1, saved, *slots, ctx.spec, bits)
    for i in range(_HEAD_SLOTS):
        if bits >> i & 1:
            result[i] = grads[i]
    return tuple(result)


_rows_op.register_autograd(_rows_autograd, setup_context=_rows_setup)


# ------------------------------------------------------------------------------------------------
# crossentropy::fused


def _fused_impl(*args: Any) -> tuple[Tensor, ...]:
    t = _slots(args[: len(SLOTS)])
    lin, quad = args[len(SLOTS)], args[len(SLOTS) + 1]
    call, bits = decode(args[-2]), int(args[-1])
    x = t["x"]
    assert x is not None
    with _no_autocast(x.device, call.prec):
        math = build_math(call, t)
        heads = _heads(call, t)
        loss, outs, grads = E.fused(
            math,
            heads,
            _merge(call),
            call.chunk,
            lin,
            quad,
            _needs(bits, len(heads)),
            sharded=bool(call.group),
        )
    out1 = outs[1] if len(outs) > 1 else outs[0].new_empty(0)
    return (loss, outs[0], out1, *_flat(grads, x))


def _fused_fake(*args: Any) -> tuple[Tensor, ...]:
    t = _slots(args[: len(SLOTS)])
    call, bits = decode(args[-2]), int(args[-1])
    x = t["x"]
    assert x is not None
    o0, o1, _ = _rows_fake(*args[: len(SLOTS)], args[-2])
    wide = call.prec.compute if call.prec.dz == torch.float16 else None
    return (x.new_empty((), dtype=call.prec.compute), o0, o1, *_grads_fake(t, bits, wide))


_fused_op = torch.library.custom_op(
    "crossentropy::fused",
    _fused_impl,
    mutates_args=(),
    schema=(
        f"({_SLOT_SCHEMA}, Tensor? lin, Tensor? quad, str spec, int needs) -> "
        "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)"
    ),
)
_fused_op.register_fake(_fused_fake)


def _fused_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
    # only the gradients are kept between the passes, not the inputs: the point of this path
    ctx.set_materialize_grads(False)
    ctx.spec = inputs[-2]
    ctx.save_for_backward(*output[3:])
    ctx.dtypes = [inputs[i].dtype if inputs[i] is not None else None for i in range(_HEAD_SLOTS)]


def _keeps_graph() -> bool:
    """Whether the running backward pass keeps the graph (``retain_graph=True``) or is traced;
    True when that cannot be told."""
    if torch.compiler.is_compiling():
        return True
    probe = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    if probe is None:
        return True
    try:
        return bool(probe())
    except RuntimeError:  # no backward pass running
        return True


def _fused_autograd(ctx: Any, g: Tensor | None, *_: Any) -> Any:
    if torch.is_grad_enabled():
        sharded = bool(decode(ctx.spec).group)
        raise NotImplementedError(_NO_DOUBLE_BACKWARD_VP if sharded else _NO_DOUBLE_BACKWARD_FUSED)
    result: list[Any] = [None] * (len(SLOTS) + 4)
    if g is None:
        return tuple(result)
    # The gradients were formed in the forward pass; scale them by g in their own storage (a
    # (V, D) weight gradient is gigabytes), unless the graph is kept for another backward pass
    # (retain_graph=True), which must find them unscaled.
    in_place = not _keeps_graph()
    for i, grad in enumerate(ctx.saved_tensors):
        if ctx.needs_input_grad[i] and ctx.dtypes[i] is not None and grad.numel():
            # a 0-dim g keeps grad's dtype and is multiplied unrounded (not cast to bf16 first)
            scaled = grad.mul_(g) if in_place else grad * g
            # float16 gradients arrive unrounded (fp32): rounded only now, after g (a loss scale)
            result[i] = scaled.to(ctx.dtypes[i])
    return tuple(result)


_fused_op.register_autograd(_fused_autograd, setup_context=_fused_setup)


# ------------------------------------------------------------------------------------------------
# crossentropy::triton_ce: the kernels that read their inputs directly


def _triton_impl(
    x: Tensor,
    w: Tensor | None,
    b: Tensor | None,
    target: Tensor,
    cweight: Tensor | None,
    spec: str,
) -> tuple[Tensor, Tensor, Tensor]:
    from crossentropy import triton as kernels

    call = decode(spec)
    opts = _triton_opts(call)
    if w is None:
        return kernels.softmax_ce_forward(x, target, cweight, *opts)
    return kernels.linear_ce_forward(x, w, b, target, cweight, *opts)


def _triton_opts(call: Call) -> tuple[int, float, float | None]:
    cap = call.param("softcap")
    return (
        int(call.param("ignore_index", -100)),
        float(call.param("label_smoothing", 0.0)),
        None if cap is None else float(cap),
    )


def _triton_fake(
    x: Tensor, w: Tensor | None, b: Tensor | None, target: Tensor, cweight: Tensor | None, spec: str
) -> tuple[Tensor, Tensor, Tensor]:
    n = x.shape[0]
    return tuple(x.new_empty(n, dtype=torch.float32) for _ in range(3))  # type: ignore[return-value]


_triton_op = torch.library.custom_op(
    "crossentropy::triton_ce",
    _triton_impl,
    mutates_args=(),
    schema="(Tensor x, Tensor? w, Tensor? b, Tensor target, Tensor? cweight, str spec) -> (Tensor, Tensor, Tensor)",
)
_triton_op.register_fake(_triton_fake)


def _triton_backward_impl(
    g_ce: Tensor | None,
    g_lse: Tensor | None,
    lse: Tensor,
    big_a: Tensor,
    x: Tensor,
    w: Tensor | None,
    b: Tensor | None,
    target: Tensor,
    cweight: Tensor | None,
    spec: str,
    needs: int,
) -> tuple[Tensor, Tensor, Tensor]:
    from crossentropy import triton as kernels

    call = decode(spec)
    opts = _triton_opts(call)
    if w is None:
        dx = kernels.softmax_ce_backward(x, target, cweight, lse, big_a, g_ce, g_lse, *opts)
        return dx, x.new_empty(0), x.new_empty(0)
    dxo, dw, db = kernels.linear_ce_backward(
        x,
        w,
        b,
        target,
        cweight,
        lse,
        big_a,
        g_ce,
        g_lse,
        *opts,
        needs=needs,
        dx_may_share=bool(call.param("dx_share", False)),
    )
    return (
        dxo if dxo is not None else x.new_empty(0),
        dw if dw is not None else x.new_empty(0),
        db if db is not None else x.new_empty(0),
    )


def _triton_backward_fake(
    g_ce: Tensor | None,
    g_lse: Tensor | None,
    lse: Tensor,
    big_a: Tensor,
    x: Tensor,
    w: Tensor | None,
    b: Tensor | None,
    target: Tensor,
    cweight: Tensor | None,
    spec: str,
    needs: int,
) -> tuple[Tensor, Tensor, Tensor]:
    out = []
    for i, src in enumerate((x, w, b)):
        out.append(
            src.new_empty(src.shape) if src is not None and needs >> i & 1 else x.new_empty(0)
        )
    return tuple(out)  # type: ignore[return-value]


_triton_backward_op = torch.library.custom_op(
    "crossentropy::triton_ce_backward",
    _triton_backward_impl,
    mutates_args=(),
    schema=(
        "(Tensor? g_ce, Tensor? g_lse, Tensor lse, Tensor big_a, Tensor x, Tensor? w, Tensor? b, "
        "Tensor target, Tensor? cweight, str spec, int needs) -> (Tensor, Tensor, Tensor)"
    ),
)
_triton_backward_op.register_fake(_triton_backward_fake)


def _triton_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
    x, w, b, target, cweight, spec = inputs
    ctx.set_materialize_grads(False)
    ctx.spec = spec
    ctx.save_for_backward(x, w, b, target, cweight, output[1], output[2])


def _triton_autograd(ctx: Any, g_ce: Tensor | None, g_lse: Tensor | None, _g_a: Any) -> Any:
    x, w, b, target, cweight, lse, big_a = ctx.saved_tensors
    if torch.is_grad_enabled():
        slots: list[Any] = [x, w, b, None, None, None, target, cweight]
        slots += [None] * (len(SLOTS) - len(slots))
        res = _double_backward(ctx, slots, [g_ce, g_lse])
        return (*res[:3], None, None, None)
    bits = _needs_bits(ctx.needs_input_grad[:3])
    if not bits or (g_ce is None and g_lse is None):
        return None, None, None, None, None, None
    dx, dw, db = _triton_backward_op(
        g_ce, g_lse, lse, big_a, x, w, b, target, cweight, ctx.spec, bits
    )
    return (
        dx if bits & 1 else None,
        dw if bits >> 1 & 1 else None,
        db if bits >> 2 & 1 else None,
        None,
        None,
        None,
    )


_triton_op.register_autograd(_triton_autograd, setup_context=_triton_setup)


# ------------------------------------------------------------------------------------------------
# Entry points used by the public functions


def _args(t: dict[str, Tensor | None]) -> list[Tensor | None]:
    return [t.get(name) for name in SLOTS]


def call_rows(call: Call, t: dict[str, Tensor | None]) -> list[Tensor]:
    """Per-row outputs through ``crossentropy::rows`` (differentiable)."""
    o0, o1, _ = _rows_op(*_args(t), call.encode())
    n_out, _ = _out_shapes(call)
    return [o0, o1][:n_out]


def call_fused(
    call: Call,
    t: dict[str, Tensor | None],
    lin: Tensor | None,
    quad: Tensor | None,
) -> tuple[Tensor, list[Tensor]]:
    """The scalar loss (differentiable) and the detached per-row outputs, ``crossentropy::fused``."""
    args = _args(t)
    grad = torch.is_grad_enabled()
    bits = 0
    for i in range(_HEAD_SLOTS):
        arg = args[i]
        if grad and arg is not None and arg.requires_grad:
            bits |= 1 << i
    loss, o0, o1, *_ = _fused_op(*args, lin, quad, call.encode(), bits)
    n_out, _ = _out_shapes(call)
    return loss, [o0.detach(), o1.detach()][:n_out]


def call_triton_ce(
    call: Call,
    x: Tensor,
    w: Tensor | None,
    b: Tensor | None,
    target: Tensor,
    cweight: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """(ce, lse) rows from the Triton kernels that read their inputs directly."""
    ce, lse, _ = _triton_op(x, w, b, target, cweight, call.encode())
    return ce, lse
