"""``python -m benchmarks gpu_check``: the CUDA tests and a trimmed GPU benchmark in one call.

Built for the device tool's one H100 call (``scripts/gpu_check.sh``, README "GPU check"). Stages run
one after another, each in its own process under its own time limit (a hung kernel or a sticky
CUDA error costs that stage only), inside one overall budget (``--budget``, default 450 s). Each
stage writes its section line by line (``benchmarks/_gpu_report.py``), so a stage that is killed
keeps every row measured before.

Per-stage estimates on an H100 (process start and imports about 8 s each; Triton compiles a few
seconds per kernel variant, once per machine thanks to its disk cache; bf16 GEMMs at ~650 TFLOP/s,
so the 6NDV floor is ~44 ms at 8192 x 2304 x 256000 and ~76 ms at 16384 x 4096 x 128256;
forward+backward timings take 2 warm-up, 5 timed and 1 memory run):

===========  ========  =====  ================================================================
stage        estimate  limit  what dominates
===========  ========  =====  ================================================================
env           10 s      30 s  imports, a 8192^3 GEMM and a 4 GB copy as a health check
race          12 s      40 s  2 x 200 loops of ~3 ms (refill, kernel pair, compare)
tests         90 s     150 s  Triton compiles of ~20 kernel variants, ~25 small tests
linear_a      70 s     100 s  torch.compile (~25 s), memory='low' and CCE compiles, 7 impls
linear_b      45 s      80 s  torch.compile again (new shapes), 7 impls at ~50-300 ms
engine        25 s      45 s  two shapes: profiler pass, chunk sweep 1024/2048/4096
accuracy      20 s      45 s  float64 references (6NDV at ~60 TFLOP/s) at two logit scales
determinism   12 s      30 s  3 runs each of three default paths
softmax       12 s      30 s  8192 x 256000 inputs (4 GB), ~5 ms per call
hf_bf16       15 s      45 s  transformers import, model on the GPU, 2 x 8 steps of ~70 ms
hf_autocast   15 s      45 s  the same, fp32 weights under bf16 autocast
===========  ========  =====  ================================================================

about 330 s expected; the budget cuts the run at 450 s whatever happens. Without CUDA every stage
still starts, says so in its section and ends; the test stage collects the CUDA tests (they skip).
"""

from __future__ import annotations

import argparse
import collections
import math
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import _gpu_report as report

NEEDS_CUDA = True  # `python -m benchmarks` (all) skips this module without a GPU
# the flags `python -m benchmarks` hands to main(); the driver starts each stage with the hidden
# --stage and --deadline through `python -m benchmarks.gpu_check`
FLAGS = ("--quick", "--cpu-smoke", "--only", "--budget")
ROOT = Path(__file__).resolve().parents[1]
IGNORE = -100
BUDGET_S = 450.0
MIN_STAGE_S = 15.0  # a stage given less would only report its own start-up

# Shapes per mode: "full" (the H100 check), "quick" (small shapes on any GPU) and "smoke" (tiny
# shapes on the CPU, Triton under its interpreter: runs every line of every stage without a GPU;
# its figures measure nothing).
SHAPES: dict[str, dict[str, Any]] = {
    "full": {
        "linear": ((8192, 2304, 256000), (16384, 4096, 128256)),
        "accuracy": (4096, 2048, 128256),
        "softmax": (8192, 256000),
        "race": ((4096, 128256), (4096, 32003)),
        "race_loops": 200,
        "sweep": (1024, 2048, 4096),
        "llama": (128256, 2048, 2048),  # vocabulary, hidden, sequence length
        "health": (8192, 2**30),  # GEMM size, elements copied
    },
    "quick": {
        "linear": ((2048, 1024, 32000), (2048, 2048, 50257)),
        "accuracy": (1024, 1024, 32000),
        "softmax": (2048, 32000),
        "race": ((1024, 32003),),
        "race_loops": 200,
        "sweep": (256, 512, 1024),
        "llama": (32000, 512, 512),
        "health": (4096, 2**26),
    },
    "smoke": {
        "linear": ((64, 32, 300), (48, 40, 257)),
        "accuracy": (64, 32, 300),
        "softmax": (64, 300),
        "race": ((8, 300),),
        "race_loops": 3,
        "sweep": (16, 32, 64),
        "llama": (300, 64, 32),
        "health": (256, 2**20),
    },
}
DEVICE = "cuda"  # "cpu" in a smoke run (set by run_stage)
# The fp32 low-memory test (issue 21, item 4): named here so the test stage says whether it ran.
FP32_LOW_MEMORY_TESTS = (
    "tests/torch_layer/test_cuda_paths.py::test_low_memory_fp32_matches_float64",
    "tests/kernels/test_triton_linear_ce.py::TestCuda::test_real_shapes[fp32-masked-strided]",
)


@dataclass
class Ctx:
    mode: str  # "full", "quick" or "smoke"
    deadline: float  # time.time() at which the driver kills this stage

    def left(self) -> float:
        return self.deadline - time.time()

    def shape(self, key: str) -> Any:
        return SHAPES[self.mode][key]


@dataclass(frozen=True)
class Stage:
    name: str
    title: str
    estimate_s: int
    limit_s: int
    run: Callable[[report.Section, Ctx], Any]


# ---------------------------------------------------------------------------------------------
# shared helpers


def _why(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _cuda(sec: report.Section) -> bool:
    """Whether the stage can run: a usable CUDA GPU, or a CPU smoke run. Writes why not."""
    if DEVICE == "cpu":
        sec.line("CPU smoke run: tiny shapes, Triton interpreted; no figure here is a GPU figure.")
        return True
    try:
        import torch
    except ImportError as exc:
        sec.line(f"no CUDA: torch is not importable ({_why(exc)})")
        return False
    if not torch.cuda.is_available():
        sec.line("no CUDA: torch.cuda.is_available() is False")
        return False
    return True


def _sync() -> None:
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _time_ms(fn: Callable[[], Any], reps: int = 5) -> float:
    """Median CUDA-event time of ``fn`` after 2 warm-up runs (compiles happen there); on the CPU
    (smoke runs) one wall-clock run after one warm-up."""
    import torch

    if DEVICE == "cpu":
        fn()
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _peak_extra_mib(fn: Callable[[], Any]) -> float:
    """Peak allocated memory during ``fn`` above what was allocated before (outputs included);
    NaN on the CPU, which has no such counter."""
    if DEVICE == "cpu":
        fn()
        return float("nan")
    from benchmarks.gpu_kernels import _peak_extra_mib as on_cuda

    return on_cuda(fn)


def _linear_inputs(n: int, d: int, v: int, std: float, seed: int) -> tuple[Any, Any, Any]:
    """bf16 hidden states and weight with logit std ``std``; targets drawn from the model's own
    softmax, 1 row in 10 ignored (as in shared/measurements)."""
    import torch

    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    x = torch.randn(n, d, device=DEVICE, generator=gen).to(torch.bfloat16)
    w = (torch.randn(v, d, device=DEVICE, generator=gen) * (std / math.sqrt(d))).to(torch.bfloat16)
    y = _sampled_targets(lambda i, j: x[i:j] @ w.T, n, gen)
    return x, w, y


def _sampled_targets(logits: Callable[[int, int], Any], n: int, gen: Any) -> Any:
    """Class ids drawn from softmax(logits), 1024 rows at a time; 1 row in 10 ignored."""
    import torch

    parts = []
    for i in range(0, n, 1024):
        p = torch.softmax(logits(i, min(n, i + 1024)).float(), 1)
        parts.append(torch.multinomial(p, 1, generator=gen)[:, 0])
        del p
    y = torch.cat(parts)
    y[torch.rand(n, device=DEVICE, generator=gen) < 0.1] = IGNORE
    return y


def _ref64(x: Any, w: Any, y: Any) -> tuple[float, Any, Any]:
    """float64 mean loss and gradients of the same (bf16) inputs, 512 rows at a time."""
    import torch
    import torch.nn.functional as F

    x64, w64 = x.double().requires_grad_(), w.double().requires_grad_()
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for i in range(0, x.shape[0], 512):
        z = x64[i : i + 512] @ w64.T
        total = total + F.cross_entropy(z, y[i : i + 512], ignore_index=IGNORE, reduction="sum")
    loss = total / (y != IGNORE).sum()
    gx, gw = torch.autograd.grad(loss, (x64, w64))
    return float(loss.detach()), gx, gw


def _fwd_bwd(loss_fn: Callable[..., Any], x: Any, w: Any, y: Any) -> Callable[[], Any]:
    """A step: loss and gradients of ``x`` and ``w``; returns (loss, dx, dw)."""
    import torch

    def step() -> Any:
        xx, ww = x.detach().requires_grad_(), w.detach().requires_grad_()
        loss = loss_fn(xx, ww, y)
        gx, gw = torch.autograd.grad(loss, (xx, ww))
        return loss.detach(), gx, gw

    return step


def _floor(x: Any, w: Any) -> Callable[[], Any]:
    """The three GEMMs of a linear-CE step (logits, d input, d weight): 6NDV, the floor."""
    import torch

    dz = torch.empty(x.shape[0], w.shape[0], device=x.device, dtype=x.dtype)

    def gemms() -> Any:
        torch.mm(x, w.T, out=dz)
        return torch.mm(dz, w), torch.mm(dz.T, x)

    return gemms


def _version(dist: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _linear_impls(sec: report.Section) -> dict[str, Callable[..., Any]]:
    """Every linear-CE implementation timed, by table label; baselines that do not import are
    named in the section instead."""
    import torch
    import torch.nn.functional as F

    from crossentropy.torch import linear_cross_entropy

    def ours(x: Any, w: Any, y: Any) -> Any:
        return linear_cross_entropy(x, w, y, ignore_index=IGNORE)

    def ours_low(x: Any, w: Any, y: Any) -> Any:
        return linear_cross_entropy(x, w, y, ignore_index=IGNORE, memory="low")

    def eager_bf16(x: Any, w: Any, y: Any) -> Any:
        return F.cross_entropy(x @ w.T, y, ignore_index=IGNORE)

    def eager_fp32(x: Any, w: Any, y: Any) -> Any:
        return F.cross_entropy((x @ w.T).float(), y, ignore_index=IGNORE)

    impls: dict[str, Callable[..., Any]] = {
        "ours, default": ours,
        "ours, memory='low'": ours_low,
        "torch eager, bf16 logits": eager_bf16,
        "torch eager, fp32 logits": eager_fp32,
    }
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

        def liger(x: Any, w: Any, y: Any) -> Any:
            return liger_fused_linear_cross_entropy(x, w, y, ignore_index=IGNORE)

        impls[f"Liger-Kernel {_version('liger-kernel')}"] = liger
    except Exception as exc:  # any import failure: the section says why
        sec.line(f"Liger-Kernel not importable: {_why(exc)}")
    try:
        from cut_cross_entropy import linear_cross_entropy as cce

        def cut(x: Any, w: Any, y: Any) -> Any:
            return cce(x, w, y, ignore_index=IGNORE)

        impls[f"Cut Cross-Entropy {_version('cut-cross-entropy')}"] = cut
    except Exception as exc:
        sec.line(f"Cut Cross-Entropy not importable: {_why(exc)}")
    # Last: its compile (tens of seconds, the slowest step of a stage) then costs no other row
    # when it runs into the stage's limit. A smoke run checks the call, not inductor (minutes of
    # C++ builds on a small CPU).
    backend = "eager" if DEVICE == "cpu" else "inductor"
    impls["torch.compile, fp32 logits"] = torch.compile(eager_fp32, backend=backend)
    return impls


def _free() -> None:
    import gc

    import torch

    gc.collect()
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------
# stages


def _health(size: int, elems: int) -> tuple[float, float]:
    """bf16 GEMM TFLOP/s and copy GB/s (read + write): a slow or throttled card shows here."""
    import torch

    a = torch.randn(size, size, device=DEVICE, dtype=torch.bfloat16)
    ms_gemm = _time_ms(lambda: a @ a, reps=10)
    src = torch.empty(elems, device=DEVICE, dtype=torch.float32)
    dst = torch.empty_like(src)
    ms_copy = _time_ms(lambda: dst.copy_(src), reps=10)
    return 2 * size**3 / ms_gemm / 1e9, 2 * src.numel() * 4 / ms_copy / 1e6


def stage_env(sec: report.Section, ctx: Ctx) -> Any:
    """Versions, where each package came from, the device, and the engines the defaults pick."""
    import importlib.util

    site = os.environ.get("GPU_CHECK_SITE", "")
    sec.table("package", "version", "from")
    for module, dist in (
        ("torch", "torch"),
        ("triton", "triton"),
        ("numpy", "numpy"),
        ("array_api_compat", "array-api-compat"),
        ("pytest", "pytest"),
        ("hypothesis", "hypothesis"),
        ("transformers", "transformers"),
        ("liger_kernel", "liger-kernel"),
        ("cut_cross_entropy", "cut-cross-entropy"),
    ):
        spec = importlib.util.find_spec(module)
        origin = spec.origin if spec is not None and spec.origin else ""
        where = (
            "missing"
            if spec is None
            else "bundle"
            if site and origin.startswith(site)
            else "this machine"
        )
        sec.row(module, _version(dist) if spec is not None else "-", where)
    sec.line()
    import crossentropy  # needs array-api-compat: the first thing the bundle is for

    sec.line(f"`import crossentropy`: works ({Path(crossentropy.__file__).parent})")
    if not _cuda(sec):
        return "versions only"
    import torch

    if DEVICE == "cuda":
        props = torch.cuda.get_device_properties(0)
        sec.line(
            f"GPU: {props.name}, {props.multi_processor_count} SMs, "
            f"{props.total_memory / 2**30:.1f} GiB, capability {props.major}.{props.minor}"
        )
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        sec.line(f"nvidia-smi: driver, max SM clock: {smi.stdout.strip() or smi.stderr.strip()}")
    except (OSError, subprocess.SubprocessError) as exc:
        sec.line(f"nvidia-smi: {_why(exc)}")
    size, elems = ctx.shape("health")
    tflops, gbps = _health(size, elems)
    sec.line(f"health: {size}^3 bf16 GEMM {tflops:.1f} TFLOP/s; copy {gbps:.0f} GB/s")
    from crossentropy.torch import cross_entropy, explain, linear_cross_entropy

    n, d, v = ctx.shape("linear")[0]
    x = torch.empty(n, d, device=DEVICE, dtype=torch.bfloat16, requires_grad=True)
    w = torch.empty(v, d, device=DEVICE, dtype=torch.bfloat16, requires_grad=True)
    y = torch.zeros(n, device=DEVICE, dtype=torch.long)
    plans = [
        ("linear_cross_entropy", explain(linear_cross_entropy, x, w, y)),
        (
            "linear_cross_entropy, memory='low'",
            explain(linear_cross_entropy, x, w, y, memory="low"),
        ),
    ]
    del x, w
    logits = torch.empty(n, v, device=DEVICE, dtype=torch.bfloat16, requires_grad=True)
    plans.append(("cross_entropy", explain(cross_entropy, logits, y)))
    for label, plan in plans:
        sec.line(f"{label} at {n} x {d} x {v}, bf16:")
        sec.line("```")
        for text in str(plan).splitlines():
            sec.line(text)
        sec.line("```")
    return "device and versions recorded"


def _row_kernels(logits: Any, target: Any, g_ce: Any, out: Any) -> Any:
    """The softmax-CE row kernels on fp32 logits: forward, then the backward writing d(logits)
    into ``out``. The one place that knows their signatures, which are being extended: adapt
    here when they change."""
    from crossentropy.triton._softmax_ce import softmax_ce_backward, softmax_ce_forward

    _, lse, big_a = softmax_ce_forward(logits, target, None, IGNORE, 0.0, None)
    return softmax_ce_backward(
        logits, target, None, lse, big_a, g_ce, None, IGNORE, 0.0, None, out=out
    )


def stage_race(sec: report.Section, ctx: Ctx) -> Any:
    """The backward row kernel writing 16-bit d(logits) in place into the first half of each fp32
    row, bitwise against the same kernel writing to a separate buffer, many times over."""
    if not _cuda(sec):
        return ("skipped", "no CUDA")
    import torch

    loops = ctx.shape("race_loops")
    sec.line(
        f"{loops} loops per shape: refill fp32 logits (std 4), run the row kernels with "
        "`out=logits.view(bfloat16)[:, :V]`, compare bitwise with `out=torch.empty(N, V, bf16)`."
    )
    sec.table(
        "N x V",
        "loops",
        "loops with a difference",
        "differing elements",
        "out-of-place vs float64 (64 rows)",
    )
    bad_total = 0
    for n, v in ctx.shape("race"):
        gen = torch.Generator(device=DEVICE).manual_seed(v)
        x0 = torch.randn(n, v, device=DEVICE, generator=gen) * 4.0
        y = torch.randint(0, v, (n,), device=DEVICE, generator=gen)
        y[torch.rand(n, device=DEVICE, generator=gen) < 0.1] = IGNORE
        g = torch.randn(n, device=DEVICE, generator=gen)
        ref = torch.empty(n, v, device=DEVICE, dtype=torch.bfloat16)
        _row_kernels(x0, y, g, ref)
        # the reference itself against float64: g (softmax - one-hot), 0 on ignored rows
        xs, ys = x0[:64].double(), y[:64]
        valid = ys != IGNORE
        d64 = torch.softmax(xs, 1)
        d64[valid, ys[valid]] -= 1.0
        d64 = d64 * (g[:64].double() * valid)[:, None]
        err = float((ref[:64].double() - d64).norm() / d64.norm().clamp_min(1e-30))
        work = torch.empty_like(x0)
        bad = torch.zeros(loops, dtype=torch.int64, device=DEVICE)
        for i in range(loops):
            work.copy_(x0)
            out = work.view(torch.bfloat16)[:, :v]
            _row_kernels(work, y, g, out)
            bad[i] = (out != ref).sum()
        loops_bad, elems_bad = int((bad > 0).sum()), int(bad.sum())
        bad_total += loops_bad
        sec.row(
            f"{n} x {v}",
            loops,
            loops_bad,
            elems_bad,
            f"{err:.2e}",
            shape=[n, v],
            loops=loops,
            loops_with_difference=loops_bad,
            differing_elements=elems_bad,
            ref_rel_err=err,
        )
        del x0, work, ref
        _free()
    if bad_total:
        return ("failed", f"in-place results differ in {bad_total} loops")
    return "in place equals out of place, bitwise, in every loop"


def cuda_test_files(root: Path = ROOT) -> list[str]:
    """Test files holding CUDA-marked tests, relative to ``root``, found by their text (no
    imports), so that a file gaining one joins the check by itself."""
    found = []
    for path in sorted((root / "tests").rglob("test_*.py")):
        text = path.read_text(encoding="utf-8")
        if "pytest.mark.cuda" in text:
            found.append(path.relative_to(root).as_posix())
    return found


def pytest_args(files: list[str]) -> list[str]:
    """The CUDA tests without the CPU-only setup: no doctests (they import every module of src/
    and the README's optional dependencies), no addopts from pyproject."""
    return [
        "-m",
        "cuda",
        "-p",
        "no:doctest",
        "-p",
        "no:cacheprovider",
        "-o",
        "addopts=",
        "-W",
        "ignore::pytest.PytestConfigWarning",  # doctest_optionflags, unknown without doctests
        "-q",
        "-rfE",
        "--tb=short",
        "--continue-on-collection-errors",
        *files,
    ]


class _Recorder:
    """pytest plugin: one section row per test as soon as its outcome is known."""

    def __init__(self, sec: report.Section) -> None:
        self.sec = sec
        self.outcomes: dict[str, str] = {}

    def _add(self, nodeid: str, outcome: str, seconds: float, why: str) -> None:
        self.outcomes[nodeid] = outcome
        self.sec.row(
            nodeid, outcome, f"{seconds:.1f}", why, test=nodeid, outcome=outcome, s=seconds, why=why
        )

    def pytest_collectreport(self, report: Any) -> None:
        if report.failed:
            lines = str(report.longrepr).strip().splitlines() or [""]
            self._add(report.nodeid or "(collection)", "collection error", 0.0, lines[-1][:200])

    def pytest_runtest_logreport(self, report: Any) -> None:
        if report.when == "call" or report.outcome != "passed":
            if report.skipped:
                reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else ""
                self._add(report.nodeid, "skipped", report.duration, str(reason)[:200])
            elif report.failed:
                lines = str(report.longrepr).strip().splitlines() or [""]
                # the first "E" line is the headline (the exception, or the assertion's message)
                msg = next((t for t in lines if t.startswith("E ")), lines[-1])
                msg = " ".join(msg.removeprefix("E").split())
                kind = "failed" if report.when == "call" else f"error ({report.when})"
                self._add(report.nodeid, kind, report.duration, msg[:200])
            else:
                self._add(report.nodeid, "passed", report.duration, "")


def stage_tests(sec: report.Section, ctx: Ctx) -> Any:
    """``pytest -m cuda`` on every file with CUDA tests, in this process, row by row."""
    import pytest
    import torch

    files = cuda_test_files()
    if not torch.cuda.is_available():
        sec.line("no CUDA: the tests are collected, and skip")
    sec.line(f"files: {', '.join(files)}")
    sec.line(f"`python -m pytest {' '.join(pytest_args(['...']))}`")
    sec.line()
    sec.table("test", "outcome", "s", "message")
    recorder = _Recorder(sec)
    sec.echo = False  # pytest prints its own progress; the rows go to the files only
    try:
        code = pytest.main(pytest_args(files), plugins=[recorder])
    finally:
        sec.echo = True
    counts = collections.Counter(recorder.outcomes.values())
    sec.line()
    for nodeid in FP32_LOW_MEMORY_TESTS:
        sec.line(
            f"fp32 low-memory test `{nodeid}`: {recorder.outcomes.get(nodeid, 'not collected')}"
        )
    summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "no tests"
    if int(code) not in (0, 5) or any(k not in ("passed", "skipped") for k in counts):
        return ("failed", f"pytest exit {int(code)}: {summary}")
    if counts and set(counts) == {"skipped"}:
        return ("skipped", f"collected, all skipped: {summary}")
    return f"pytest exit {int(code)}: {summary}"


def _linear_stage(sec: report.Section, ctx: Ctx, which: int) -> Any:
    if not _cuda(sec):
        return ("skipped", "no CUDA")

    from crossentropy.torch import explain, linear_cross_entropy

    n, d, v = ctx.shape("linear")[which]
    x, w, y = _linear_inputs(n, d, v, 4.0, seed=which)
    plan = explain(linear_cross_entropy, x.requires_grad_(), w.requires_grad_(), y)
    x, w = x.detach(), w.detach()
    sec.line(
        f"{n} x {d} x {v}, bf16, logit std 4, targets from the model's softmax, 10% ignored; "
        f"forward+backward (d input and d weight); default engine {plan.engine!r}, "
        f"block {getattr(plan, 'chunk', None)} rows."
    )
    impls = _linear_impls(sec)  # before the table: a baseline that fails to import says so here
    sec.table("impl", "ms", "x floor", "peak extra MiB", "loss")
    floor = _time_ms(_floor(x, w), reps=10)
    tflops = 6 * n * d * v / floor / 1e9
    sec.row(
        "3 GEMMs (6NDV floor)",
        f"{floor:.2f}",
        "1.00",
        "-",
        f"{tflops:.0f} TFLOP/s",
        shape=[n, d, v],
        impl="floor",
        ms=floor,
    )
    _free()
    for name, fn in impls.items():
        need = 45.0 if "compile" in name else 10.0
        if ctx.left() < need:
            sec.row(name, "not run", "", "", f"{ctx.left():.0f} s left in the stage's limit")
            continue
        step = _fwd_bwd(fn, x, w, y)
        try:
            ms = _time_ms(step)
            mib = _peak_extra_mib(step)
            loss = float(step()[0])
        except Exception as exc:
            sec.row(name, "failed", "", "", _why(exc), shape=[n, d, v], impl=name, error=_why(exc))
            _free()
            continue
        sec.row(
            name,
            f"{ms:.2f}",
            f"{ms / floor:.2f}",
            f"{mib:,.0f}",
            f"{loss:.6f}",
            shape=[n, d, v],
            impl=name,
            ms=ms,
            x_floor=ms / floor,
            extra_mib=mib,
            loss=loss,
        )
        _free()
    return f"floor {floor:.1f} ms"


def stage_linear_a(sec: report.Section, ctx: Ctx) -> Any:
    """Fused linear-CE at the first shape (Gemma-like vocabulary)."""
    return _linear_stage(sec, ctx, 0)


def stage_linear_b(sec: report.Section, ctx: Ctx) -> Any:
    """Fused linear-CE at the second shape (Llama-3-like)."""
    return _linear_stage(sec, ctx, 1)


_GEMM_NAMES = ("gemm", "nvjet", "cutlass", "xmma", "wgmma", "sm90_", "cublas")
_MM_OPS = ("aten::mm", "aten::addmm", "aten::addmm_", "aten::_addmm_activation", "aten::bmm")


def _our_kernel_names() -> list[str]:
    """Names of the Triton kernels in crossentropy.triton, read from the modules (no list to keep
    in step with the kernels)."""
    import importlib
    import pkgutil

    import crossentropy.triton as pkg

    names = []
    for info in pkgutil.iter_modules(pkg.__path__):
        module = importlib.import_module(f"{pkg.__name__}.{info.name}")
        for attr, value in vars(module).items():
            if hasattr(value, "fn") and type(value).__name__ in (
                "JITFunction",
                "InterpretedFunction",
            ):
                names.append(attr)
    return sorted(set(names), key=len, reverse=True)  # longest first: prefixes match last


def gemm_role(op: str, shapes: list[Any], d: int, v: int) -> str:
    """Which GEMM of a linear-CE step an ``aten::mm``-like op is, from its operands' shapes:
    its output is (rows, V) for the logits, (rows, D) for d input, (V, D) for d weight."""
    mats = [s for s in shapes if isinstance(s, (list, tuple)) and len(s) == 2]
    if op.startswith("aten::addmm") or op == "aten::_addmm_activation":
        mats = mats[1:3] if len(mats) >= 3 else mats[-2:]
    if len(mats) < 2:
        return "other"
    out = (mats[0][0], mats[1][1])
    if set(out) == {d, v}:
        return "d weight"
    if v in out:
        return "logits"
    if d in out:
        return "d input"
    return "other"


def kernel_breakdown(events: Any, d: int, v: int, ours: list[str]) -> dict[str, float]:
    """GPU time (ms) by category from ``torch.profiler`` events: GEMMs by role, each of our Triton
    kernels by name, everything else together."""
    from torch.autograd import DeviceType

    out: dict[str, float] = collections.defaultdict(float)
    gemm_named = 0.0
    for e in events:
        if e.device_type != DeviceType.CUDA:
            continue
        ms = e.time_range.elapsed_us() / 1e3
        low = e.name.lower()
        mine = next((k for k in ours if e.name.startswith(k)), None)
        if mine is not None:
            out[f"Triton: {mine}"] += ms
        elif any(g in low for g in _GEMM_NAMES):
            gemm_named += ms
        else:
            out["other kernels"] += ms
    by_role = 0.0
    for e in events:
        if e.device_type == DeviceType.CUDA or e.name not in _MM_OPS:
            continue
        ms = sum(
            k.duration / 1e3 for k in e.kernels if any(g in k.name.lower() for g in _GEMM_NAMES)
        )
        if ms:
            out[f"GEMM: {gemm_role(e.name, list(e.input_shapes), d, v)}"] += ms
            by_role += ms
    if gemm_named - by_role > 1e-3:
        out["GEMM: role unknown"] += gemm_named - by_role
    return dict(out)


def stage_engine(sec: report.Section, ctx: Ctx) -> Any:
    """Where the default engine's time goes (profiler, one real call), and block rows swept."""
    if not _cuda(sec):
        return ("skipped", "no CUDA")
    from torch.profiler import ProfilerActivity, profile

    from crossentropy.torch import explain, linear_cross_entropy

    ours = _our_kernel_names()
    sec.line(
        "Kernel times from torch.profiler (CUDA activity) around one forward+backward of "
        "`linear_cross_entropy` (default), summed by category; GEMM roles from the aten op's "
        "operand shapes. Wall time from CUDA events without the profiler."
    )
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE == "cuda" else [])
    for which, (n, d, v) in enumerate(ctx.shape("linear")):
        x, w, y = _linear_inputs(n, d, v, 4.0, seed=which)
        floor = _time_ms(_floor(x, w), reps=10)
        _free()

        def call(x: Any, w: Any, y: Any, chunk: int | None = None) -> Any:
            return linear_cross_entropy(x, w, y, ignore_index=IGNORE, chunk_size=chunk)

        step = _fwd_bwd(call, x, w, y)
        wall = _time_ms(step)
        with profile(activities=activities, record_shapes=True) as prof:
            step()
            _sync()
        parts = kernel_breakdown(prof.events(), d, v, ours)
        total = sum(parts.values())
        sec.line()
        sec.line(
            f"### {n} x {d} x {v}: floor {floor:.2f} ms, default {wall:.2f} ms ({wall / floor:.2f}x)"
        )
        sec.line()
        sec.table("category", "ms", "share of kernel time", "x floor")
        if not parts:
            sec.row("(no GPU kernels recorded)", "-", "-", "-", shape=[n, d, v], category="none")
        for cat, ms in sorted(parts.items(), key=lambda kv: -kv[1]):
            share = f"{ms / total:.1%}" if total else "-"
            sec.row(
                cat, f"{ms:.2f}", share, f"{ms / floor:.3f}", shape=[n, d, v], category=cat, ms=ms
            )
        if parts:
            sec.row(
                "all kernels",
                f"{total:.2f}",
                "100%",
                f"{total / floor:.3f}",
                shape=[n, d, v],
                category="total",
                ms=total,
            )
        sec.line()
        sec.table("chunk_size", "block rows (explain)", "ms", "x floor", "peak extra MiB")
        for chunk in (None, *ctx.shape("sweep")):
            if ctx.left() < 8:
                sec.row(chunk, "", "not run", "", f"{ctx.left():.0f} s left")
                continue
            xs, ws = x.detach().requires_grad_(), w.detach().requires_grad_()
            rows = getattr(
                explain(linear_cross_entropy, xs, ws, y, chunk_size=chunk), "chunk", None
            )
            sweep = _fwd_bwd(lambda a, b, c, k=chunk: call(a, b, c, k), x, w, y)
            try:
                ms, mib = _time_ms(sweep), _peak_extra_mib(sweep)
            except Exception as exc:
                sec.row(chunk, rows, "failed", "", _why(exc))
                _free()
                continue
            sec.row(
                "default" if chunk is None else chunk,
                rows,
                f"{ms:.2f}",
                f"{ms / floor:.2f}",
                f"{mib:,.0f}",
                shape=[n, d, v],
                chunk_size=chunk,
                block_rows=rows,
                ms=ms,
                x_floor=ms / floor,
                extra_mib=mib,
            )
            _free()
        del x, w, y
        _free()
    return "profiled and swept"


def stage_accuracy(sec: report.Section, ctx: Ctx) -> Any:
    """Loss and gradient errors against float64 at logit std 4 and 8."""
    if not _cuda(sec):
        return ("skipped", "no CUDA")

    n, d, v = ctx.shape("accuracy")
    sec.line(f"{n} x {d} x {v}, bf16 inputs; float64 reference of the same bf16 inputs.")
    impls = _linear_impls(sec)
    impls.pop("torch.compile, fp32 logits")  # the same math as eager: its compile time buys nothing
    sec.table("logit std", "impl", "loss abs err", "d input rel err", "d weight rel err")
    for std in (4.0, 8.0):
        x, w, y = _linear_inputs(n, d, v, std, seed=10 + int(std))
        loss64, gx64, gw64 = _ref64(x, w, y)
        for name, fn in impls.items():
            try:
                loss, gx, gw = _fwd_bwd(fn, x, w, y)()
            except Exception as exc:
                sec.row(std, name, "failed", _why(exc), "")
                continue
            le = abs(float(loss) - loss64)
            ex = float((gx.double() - gx64).norm() / gx64.norm())
            ew = float((gw.double() - gw64).norm() / gw64.norm())
            sec.row(
                std,
                name,
                f"{le:.1e}",
                f"{ex:.3%}",
                f"{ew:.3%}",
                std=std,
                impl=name,
                loss_abs_err=le,
                dx_rel_err=ex,
                dw_rel_err=ew,
            )
            del gx, gw
        del x, w, y, gx64, gw64
        _free()
    return "errors recorded"


def stage_determinism(sec: report.Section, ctx: Ctx) -> Any:
    """Bitwise equal loss and gradients over 3 runs of the default paths."""
    if not _cuda(sec):
        return ("skipped", "no CUDA")
    import torch

    from crossentropy.torch import cross_entropy, linear_cross_entropy

    sec.table("call", "shape", "loss equal", "d input equal", "d weight equal", "max abs diff")
    lin, acc = ctx.shape("linear")[0], ctx.shape("accuracy")
    cases: list[tuple[str, tuple[int, int, int], dict[str, Any]]] = [
        ("linear_cross_entropy, default", lin, {}),
        ("linear_cross_entropy, memory='low'", acc, {"memory": "low"}),
        (
            "linear_cross_entropy, default, smoothing+z-loss+softcap",
            acc,
            {"label_smoothing": 0.1, "z_loss": 1e-4, "softcap": 30.0},
        ),
    ]
    unequal = 0
    for label, (n, d, v), kw in cases:
        x, w, y = _linear_inputs(n, d, v, 4.0, seed=20)

        def fn(a: Any, b: Any, c: Any, kw: dict[str, Any] = kw) -> Any:
            return linear_cross_entropy(a, b, c, ignore_index=IGNORE, **kw)

        runs = [_fwd_bwd(fn, x, w, y)() for _ in range(3)]
        same = [all(torch.equal(r[i], runs[0][i]) for r in runs[1:]) for i in range(3)]
        diff = max(
            float((r[i].float() - runs[0][i].float()).abs().max())
            for r in runs[1:]
            for i in range(3)
        )
        unequal += not all(same)
        sec.row(
            label,
            f"{n} x {d} x {v}",
            *same,
            f"{diff:.1e}",
            call=label,
            shape=[n, d, v],
            equal=same,
            max_abs_diff=diff,
        )
        del x, w, y, runs
        _free()
    n, v = ctx.shape("softmax")
    gen = torch.Generator(device=DEVICE).manual_seed(21)
    z = (torch.randn(n, v, device=DEVICE, generator=gen) * 4).to(torch.bfloat16)
    y = torch.randint(0, v, (n,), device=DEVICE, generator=gen)
    runs = []
    for _ in range(3):
        zz = z.detach().requires_grad_()
        loss = cross_entropy(zz, y)
        runs.append((loss.detach(), *torch.autograd.grad(loss, zz)))
    same = [all(torch.equal(r[i], runs[0][i]) for r in runs[1:]) for i in range(2)]
    unequal += not all(same)
    sec.row(
        "cross_entropy, default",
        f"{n} x {v}",
        same[0],
        same[1],
        "-",
        "-",
        call="cross_entropy",
        shape=[n, v],
        equal=same,
    )
    if unequal:
        return ("failed", f"{unequal} call(s) not bitwise reproducible")
    return "bitwise equal in every run"


def _copy_ms(z: Any) -> float:
    """A device-to-device copy of ``z``: the bandwidth floor of one read and one write."""
    import torch

    copy = torch.empty_like(z)
    return _time_ms(lambda: copy.copy_(z), reps=10)


def stage_softmax(sec: report.Section, ctx: Ctx) -> Any:
    """Default ``cross_entropy`` on given bf16 logits against a device-to-device copy of them."""
    if not _cuda(sec):
        return ("skipped", "no CUDA")
    import torch
    import torch.nn.functional as F

    from benchmarks.gpu_kernels import _full_loss64
    from crossentropy.torch import cross_entropy, explain

    n, v = ctx.shape("softmax")
    gen = torch.Generator(device=DEVICE).manual_seed(30)
    z = (torch.randn(n, v, device=DEVICE, generator=gen) * 4).to(torch.bfloat16)
    y = _sampled_targets(lambda i, j: z[i:j], n, gen)
    cw = torch.rand(v, device=DEVICE, generator=gen) + 0.5
    t_copy = _copy_ms(z)
    plan = explain(cross_entropy, z.detach().requires_grad_(), y)
    sec.line(
        f"{n} x {v} bf16 logits (std 4, targets from their softmax, 10% ignored); default engine {plan.engine!r}."
    )
    sec.table("call", "ms", "x copy", "peak extra MiB", "loss abs err vs float64")
    sec.row(
        "device-to-device copy of the logits",
        f"{t_copy:.3f}",
        "1.00",
        "-",
        "-",
        impl="copy",
        ms=t_copy,
    )
    every = {"weight": cw, "smoothing": 0.1, "softcap": 30.0, "z_loss": 1e-4}
    plain = {"weight": None, "smoothing": 0.0, "softcap": None, "z_loss": 0.0}
    for label, opts, fn in (
        ("ours, default", plain, lambda a: cross_entropy(a, y, ignore_index=IGNORE)),
        (
            "ours, default, weight+smoothing+softcap+z-loss",
            every,
            lambda a: cross_entropy(
                a, y, weight=cw, ignore_index=IGNORE, label_smoothing=0.1, softcap=30.0, z_loss=1e-4
            ),
        ),
        (
            "torch eager, fp32 logits",
            plain,
            lambda a: F.cross_entropy(a.float(), y, ignore_index=IGNORE),
        ),
    ):

        def step(fn: Callable[[Any], Any] = fn) -> Any:
            a = z.detach().requires_grad_()
            loss = fn(a)
            (g,) = torch.autograd.grad(loss, a)
            return loss.detach(), g

        try:
            ms, mib = _time_ms(step, reps=10), _peak_extra_mib(step)
            err = abs(float(step()[0]) - _full_loss64(z, y, opts))
        except Exception as exc:
            sec.row(label, "failed", "", "", _why(exc))
            _free()
            continue
        sec.row(
            label,
            f"{ms:.3f}",
            f"{ms / t_copy:.2f}",
            f"{mib:,.0f}",
            f"{err:.1e}",
            impl=label,
            ms=ms,
            x_copy=ms / t_copy,
            extra_mib=mib,
            loss_abs_err=err,
        )
        _free()
    return f"copy {t_copy:.2f} ms"


HF_SETUPS: dict[str, dict[str, Any]] = {
    "bf16": {"title": "pure bf16 weights", "layers": 4, "batch": 4, "autocast": False},
    "autocast": {
        "title": "fp32 weights + bf16 autocast",
        "layers": 2,
        "batch": 2,
        "autocast": True,
    },
}


def _hf_stage(sec: report.Section, ctx: Ctx, setup: str) -> Any:
    try:
        import transformers
    except Exception as exc:
        sec.line(f"transformers not importable: {_why(exc)}")
        return ("skipped", "no transformers")
    sec.line(f"transformers {transformers.__version__}")
    if not _cuda(sec):
        return ("skipped", "no CUDA")
    import torch

    from benchmarks.hf_gpu import llama_config
    from crossentropy import hf

    cfg = HF_SETUPS[setup]
    vocab, hidden, length = ctx.shape("llama")
    config = llama_config(vocab, hidden, length, cfg["layers"])
    torch.manual_seed(0)
    with torch.device(DEVICE):  # initialised where it runs: no 700M-parameter copy
        model = transformers.LlamaForCausalLM(config)
    if not cfg["autocast"]:
        model = model.to(torch.bfloat16)
    model.train()
    gen = torch.Generator(device=DEVICE).manual_seed(1)
    ids = torch.randint(0, vocab, (cfg["batch"], length), device=DEVICE, generator=gen)
    labels = ids.clone()
    labels[torch.rand(ids.shape, device=DEVICE, generator=gen) < 0.1] = IGNORE
    sec.line(
        f"Llama, {cfg['title']}: {cfg['layers']} layers, hidden {hidden}, V={vocab}, "
        f"{cfg['batch']} x {length} tokens, 10% of labels ignored; one step = forward + backward."
    )
    sec.table("variant", "step ms", "x unpatched", "peak extra MiB", "x unpatched", "loss")

    def step() -> Any:
        model.zero_grad(set_to_none=True)
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=bool(cfg["autocast"])):
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        return loss.detach()

    base: tuple[float, float] | None = None
    for variant in ("unpatched", "crossentropy.hf.patch"):
        try:
            if variant != "unpatched":
                hf.patch(model)
            ms = _time_ms(step)
            model.zero_grad(set_to_none=True)
            mib = _peak_extra_mib(step)
            loss = float(step())
        except Exception as exc:
            sec.row(variant, "failed", "", "", "", _why(exc))
            continue
        base = base or (ms, mib)
        sec.row(
            variant,
            f"{ms:.1f}",
            f"{ms / base[0]:.2f}",
            f"{mib:,.0f}",
            f"{mib / base[1]:.2f}",
            f"{loss:.5f}",
            setup=setup,
            variant=variant,
            ms=ms,
            extra_mib=mib,
            loss=loss,
        )
    return "steps timed"


def stage_hf_bf16(sec: report.Section, ctx: Ctx) -> Any:
    """Hugging Face Llama step, pure bf16."""
    return _hf_stage(sec, ctx, "bf16")


def stage_hf_autocast(sec: report.Section, ctx: Ctx) -> Any:
    """Hugging Face Llama step, fp32 weights under bf16 autocast."""
    return _hf_stage(sec, ctx, "autocast")


STAGES = (
    Stage("env", "Environment and device", 10, 30, stage_env),
    Stage("race", "In-place 16-bit d(logits): race check", 12, 40, stage_race),
    Stage("tests", "CUDA tests (pytest -m cuda)", 90, 150, stage_tests),
    Stage("linear_a", "Fused linear-CE, first shape", 70, 100, stage_linear_a),
    Stage("linear_b", "Fused linear-CE, second shape", 45, 80, stage_linear_b),
    Stage("engine", "cuda-fast engine: kernel times and block rows", 25, 45, stage_engine),
    Stage("accuracy", "Linear-CE accuracy against float64", 20, 45, stage_accuracy),
    Stage("determinism", "Determinism over 3 runs", 12, 30, stage_determinism),
    Stage("softmax", "Softmax-CE on given logits", 12, 30, stage_softmax),
    Stage("hf_bf16", "Hugging Face Llama step, pure bf16", 15, 45, stage_hf_bf16),
    Stage(
        "hf_autocast", "Hugging Face Llama step, fp32 + bf16 autocast", 15, 45, stage_hf_autocast
    ),
)
BY_NAME = {s.name: s for s in STAGES}


# ---------------------------------------------------------------------------------------------
# running


def _section(
    stage: Stage, *, mode: str, fresh: bool, info: dict[str, str] | None = None
) -> report.Section:
    index = STAGES.index(stage) + 1
    return report.Section(
        index,
        stage.name,
        stage.title,
        results=report.results_dir(mode),
        out=report.out_dir(),
        fresh=fresh,
        info=info,
    )


def run_stage(name: str, *, mode: str, deadline: float) -> int:
    """One stage in this process (what the driver spawns): its section, whatever happens."""
    global DEVICE
    if mode == "smoke":
        DEVICE = "cpu"
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports Triton
    stage = BY_NAME[name]
    sec = _section(stage, mode=mode, fresh=True)
    sec.line(f"Estimate {stage.estimate_s} s on an H100; limit {stage.limit_s} s.")
    sec.line()
    t0 = time.monotonic()
    try:
        res = stage.run(sec, Ctx(mode=mode, deadline=deadline))
        status, note = ("ok", res) if isinstance(res, str) else res
    except Exception as exc:  # the stage's own failure: its traceback is the finding
        sec.line("```")
        for text in traceback.format_exc().strip().splitlines()[-12:]:
            sec.line(text)
        sec.line("```")
        status, note = "failed", _why(exc)
    sec.finish(status, f"{note} ({time.monotonic() - t0:.0f} s)")
    return 0


class _Child:
    """A stage's process: its output echoed line by line, the last lines kept for the report."""

    def __init__(self, cmd: list[str]) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,  # its own process group: killed whole, pytest children too
        )
        self.tail: collections.deque[str] = collections.deque(maxlen=20)
        self.reader = threading.Thread(target=self._echo, daemon=True)
        self.reader.start()

    def _echo(self) -> None:
        assert self.proc.stdout is not None
        for text in self.proc.stdout:
            sys.stdout.write(text)
            sys.stdout.flush()
            self.tail.append(text.rstrip())

    def wait(self, limit: float) -> int | None:
        """Exit code, or None when it was killed at ``limit`` seconds."""
        try:
            code = self.proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            self.kill()
            code = None
        self.reader.join(timeout=5)
        return code

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


def _summary_lines(
    rows: list[tuple[str, str, float, float, str]], budget: float, spent: float
) -> list[str]:
    lines = [
        "## Summary",
        "",
        f"{spent:.0f} s of a {budget:.0f} s budget.",
        "",
        "| stage | status | s | limit s | note |",
        "|---|---|---|---|---|",
    ]
    for name, status, secs, limit, note in rows:
        lines.append(f"| {name} | {status} | {secs:.0f} | {limit:.0f} | {report.cell(note)} |")
    return lines


def stage_command(name: str, deadline: float, mode: str) -> list[str]:
    """The command that runs one stage in a fresh process (see :func:`run_stage`)."""
    cmd = [sys.executable, "-m", "benchmarks.gpu_check", "--stage", name]
    cmd += ["--deadline", f"{deadline:.1f}"]
    return cmd + {"full": [], "quick": ["--quick"], "smoke": ["--cpu-smoke"]}[mode]


def drive(
    names: list[str],
    *,
    mode: str,
    budget: float,
    command: Callable[[str, float, str], list[str]] = stage_command,
    min_stage_s: float = MIN_STAGE_S,
) -> int:
    """Every named stage in its own process, within ``budget`` seconds in all. Exit status 0 when
    every stage ended ok or skipped (no CUDA), else 1."""
    results, out = report.results_dir(mode), report.out_dir()
    results.mkdir(parents=True, exist_ok=True)
    for old in [*results.glob("[0-9][0-9]_*.md"), *results.glob("[0-9][0-9]_*.json")]:
        old.unlink()
    info = report.stamp(device=False)
    start = time.time()
    rows: list[tuple[str, str, float, float, str]] = []
    current: list[_Child] = []

    def write_summary() -> str:
        text = "\n".join(_summary_lines(rows, budget, time.time() - start)) + "\n"
        (results / "summary.md").write_text(text, encoding="utf-8")
        report.pack(results, out)
        return text

    def on_term(signum: int, frame: Any) -> None:  # `timeout` outside: end the stage, then us
        for child in current:
            child.kill()
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        for name in names:
            stage = BY_NAME[name]
            left = budget - (time.time() - start)
            limit = min(float(stage.limit_s), left - 5.0)  # 5 s to write up after the last
            if limit < min_stage_s:
                sec = _section(stage, mode=mode, fresh=True, info=info)
                sec.finish("not run", f"{max(left, 0):.0f} s of the budget left")
                rows.append((name, sec.status, 0.0, 0.0, sec.doc["note"]))
                continue
            print(f"\n=== gpu_check: stage {name} (limit {limit:.0f} s) ===", flush=True)
            t0 = time.time()
            child = _Child(command(name, t0 + limit, mode))
            current[:] = [child]
            code = child.wait(limit)
            current.clear()
            secs = time.time() - t0
            sec = _section(stage, mode=mode, fresh=False, info=info)
            if sec.status == "running":  # the stage never closed its section
                if code is None:
                    sec.finish("timed out", f"killed after {secs:.0f} s; rows above were kept")
                else:
                    last = next((t for t in reversed(child.tail) if t.strip()), "")
                    sec.finish("crashed", f"exit code {code}: {last[:200]}")
            rows.append((name, sec.status, secs, limit, sec.doc.get("note", "")))
            write_summary()
    finally:
        signal.signal(signal.SIGTERM, previous)
        text = write_summary()
        if out is not None:
            with (out / report.OUT_MD).open("a", encoding="utf-8") as fh:
                fh.write("\n" + text)
        print("\n" + text, flush=True)
    return 0 if all(r[1] in ("ok", "skipped") for r in rows) else 1


def main(argv: list[str]) -> int:
    stages_help = "; ".join(
        f"{s.name}: {s.title} (~{s.estimate_s} s, limit {s.limit_s} s)" for s in STAGES
    )
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks gpu_check",
        description="The CUDA tests and a trimmed GPU benchmark, in one call of under 8 minutes.",
        epilog=f"Stages: {stages_help}.",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small shapes on a GPU")
    size.add_argument(
        "--cpu-smoke",
        action="store_true",
        help="tiny shapes on the CPU, Triton interpreted: runs every stage's code without a GPU",
    )
    parser.add_argument("--only", default="", help="comma-separated stages to run (default: all)")
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for all stages")
    parser.add_argument("--stage", choices=sorted(BY_NAME), help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "smoke" if args.cpu_smoke else "full"
    if args.stage:
        limit = BY_NAME[args.stage].limit_s
        deadline = args.deadline if args.deadline is not None else time.time() + limit
        return run_stage(args.stage, mode=mode, deadline=deadline)
    names = [s.strip() for s in args.only.split(",") if s.strip()] or [s.name for s in STAGES]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        parser.error(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(BY_NAME)}")
    if args.budget <= 0:
        parser.error(f"--budget must be positive, got {args.budget}")
    return drive(names, mode=mode, budget=args.budget)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
