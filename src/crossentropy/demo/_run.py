"""Orchestration of ``crossentropy demo``: checks the inputs, runs both parts, writes the report."""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crossentropy.demo import _report
from crossentropy.demo._classify import (
    ACCURACY_TARGET,
    EVAL_EVERY,
    LOSS_LABELS,
    LOSSES,
    load_split,
    train_classifier,
)
from crossentropy.demo._coding import baseline_bits, range_code
from crossentropy.demo._lm import (
    build_model,
    make_pairs,
    per_symbol_bits,
    probability_table,
    train_model,
)
from crossentropy.demo._source import entropy_rate, random_source

# Source of Part 1: 16 symbols, next symbol depends on the previous two (256 contexts), Dirichlet
# rows with concentration 0.5 (H is about 3 of the 4 bits a fixed-length code needs).
N_SYMBOLS = 16
ORDER = 2
CONCENTRATION = 0.5
CHAIN_LENGTH = 1000
# The checks allow this many standard errors of sampling noise: the validation cross-entropy at
# least H minus that many standard errors of the source's own code length on the same symbols
# (no model beats the entropy, except by the luck of the sample), and within that many of its
# own standard errors of the model's exact cross-entropy rate.
NOISE_SIGMAS = 4.0
# Two-sided 95% normal quantile, for the confidence intervals of sampled estimates.
Z95 = 1.959964
# Bytes of a --text file the demo models and codes (decoding runs symbol by symbol in Python).
TEXT_LIMIT = 1 << 20
TEXT_ORDER = 2
# The byte model trains on the first 90% of a --text file and codes the last 10% (both need at
# least a context and one byte to predict).
TEXT_MIN_BYTES = 2 * (TEXT_ORDER + 1)


@dataclass(frozen=True)
class Settings:
    """Sizes of one run; ``quick`` shrinks everything so the test suite can afford a run."""

    steps: int
    train_symbols: int
    val_symbols: int
    batch_size: int
    lr: float
    classifier_steps: int

    @classmethod
    def make(cls, quick: bool, steps: int | None) -> Settings:
        base = (
            cls(300, 100_000, 20_000, 1024, 0.03, 150)
            if quick
            else cls(1200, 300_000, 50_000, 1024, 0.03, 400)
        )
        return base if steps is None else dataclasses.replace(base, steps=steps)


def resolve_device(name: str) -> Any:
    """``torch.device`` for ``name`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``), checked."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(
            f"unknown device {name!r}; expected auto, cpu, cuda, cuda:N or mps"
        ) from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = 0 if device.index is None else device.index
        if index >= count:
            raise ValueError(
                f"device {name!r} is not available (this machine has {count} CUDA devices)"
            )
        return device
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device {name!r} is not available on this machine")
        return device
    raise ValueError(f"unsupported device {name!r}; expected auto, cpu, cuda, cuda:N or mps")


def read_text(path: str | os.PathLike[str]) -> tuple[bytes, int]:
    """The first ``TEXT_LIMIT`` bytes of ``path`` and the file's full size; errors are one line."""
    try:
        with open(path, "rb") as f:
            data = f.read(TEXT_LIMIT)
            size = os.fstat(f.fileno()).st_size
    except OSError as exc:
        raise OSError(f"cannot read text file '{path}': {exc.strerror or exc}") from None
    if len(data) < TEXT_MIN_BYTES:
        what = "is empty" if not data else f"has only {len(data)} bytes"
        raise ValueError(
            f"text file '{path}' {what}; the demo needs at least {TEXT_MIN_BYTES} bytes"
        )
    return data, max(size, len(data))


def split_text(data: bytes) -> int:
    """Where the held-out tail of a text file starts: its last tenth, with at least a context
    plus one byte on either side of the cut."""
    held = max(len(data) // 10, TEXT_ORDER + 1)
    return len(data) - held


def prepare_out(out: str | os.PathLike[str]) -> Path:
    """Create ``out`` if needed and check that files can be written in it."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise OSError(f"output directory '{out}' is an existing file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise OSError(f"output directory '{out}' is not writable: {exc.strerror or exc}") from None
    return path


@contextmanager
def _threads_for(device: Any) -> Iterator[None]:
    """One CPU thread for the demo's tiny matrices; more only add synchronisation, and on a busy
    machine they wait for each other (measured with other jobs loading both cores of a 2-core
    machine: 4 ms per training step with one torch thread, 250 ms with two)."""
    import torch
    from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

    before = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(before)


def run_demo(
    out_dir: str | os.PathLike[str] = "demo_out",
    *,
    seed: int = 0,
    steps: int | None = None,
    quick: bool = False,
    device: str = "auto",
    text: str | os.PathLike[str] | None = None,
    console: Any = None,
) -> dict[str, Any]:
    """Run the demo and write ``demo_report.png`` and ``demo_summary.json`` into ``out_dir``.

    Part 1 trains a small model on a Markov source with a known entropy rate, reports the model's
    exact cross-entropy rate next to the exact H + KL, then its sampled validation cross-entropy
    with a 95% interval, and range-codes the validation sequence with the model (and with gzip,
    bz2, lzma), next to both the model's bound and the bound of the rounded probabilities the
    coder uses. ``text`` adds the same for a byte-level model of a file.
    Part 2 trains one network on scikit-learn's digits with cross-entropy, MSE and focal loss.

    Args:
        out_dir: output directory (created if missing).
        seed: seeds the source, the data, the initialisation and the batches.
        steps: training steps of the sequence models (default 1200, 300 with ``quick``).
        quick: small sizes, for tests (well under 20 s).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        text: optional file to model byte by byte.
        console: a ``rich.console.Console`` for tables and progress bars; None prints nothing.

    Returns:
        The summary written to ``demo_summary.json``.

    Raises:
        ValueError: unknown or unavailable device, empty text file, ``steps < 1``.
        OSError: unreadable text file, output directory not writable.

    Example (about 15 s of one CPU core, so it is run by ``tests/demo``, not as a doctest)::

        summary = run_demo("demo_out", quick=True)
        m = summary["model"]  # exact: cross_entropy_rate_bits == H + kl_rate_bits (to rounding)
        print(f"KL {m['kl_rate_bits']:.3f} bits/symbol")  # about 0.08 with --quick
    """
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    # Cheap checks first, so that a typo is reported before torch is imported.
    text_data = read_text(text) if text is not None else None
    torch_device = resolve_device(device)
    out = prepare_out(out_dir)
    settings = Settings.make(quick, steps)

    started = time.perf_counter()
    timings: dict[str, float] = {}
    with _threads_for(torch_device):
        t0 = time.perf_counter()
        source_part = _part_source(settings, seed, torch_device, console)
        timings["part1_source_s"] = time.perf_counter() - t0
        text_part = None
        if text_data is not None:
            t0 = time.perf_counter()
            data, size = text_data
            text_part = _part_text(data, size, str(text), settings, seed, torch_device, console)
            timings["text_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        classify_part = _part_classify(settings, seed, torch_device, console)
        timings["part2_digits_s"] = time.perf_counter() - t0

    summary: dict[str, Any] = {
        "config": {
            "seed": seed,
            "quick": quick,
            "device": str(torch_device),
            "steps": settings.steps,
            "batch_size": settings.batch_size,
            "learning_rate": settings.lr,
            "classifier_steps": settings.classifier_steps,
            "torch_threads": 1 if torch_device.type == "cpu" else None,
            "classifier_optimizer": "SGD, momentum 0.9, lr 0.05, batch 64",
        },
        **source_part,
        "text": text_part,
        "classification": classify_part,
    }
    t0 = time.perf_counter()
    png = out / "demo_report.png"
    _report.write_png(summary, png)
    timings["report_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - started
    summary["timing"] = {k: round(v, 3) for k, v in timings.items()}
    summary["files"] = {"png": str(png), "json": str(out / "demo_summary.json")}
    _report.write_json(summary, out / "demo_summary.json")
    if console is not None:
        _report.print_summary(summary, console)
    return summary


def _progress(console: Any, description: str, total: int) -> Any:
    """A rich progress bar with the live loss in bits; None without a console, or when the
    console is not a terminal (a log file keeps no half-drawn bars: see :func:`_done`)."""
    if console is None or not console.is_terminal:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[loss]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def _done(console: Any, text: str) -> None:
    """Without a terminal, one plain line when a part has finished (in place of its bar)."""
    if console is not None and not console.is_terminal:
        console.print(text, highlight=False, soft_wrap=True)


def _train_with_bar(
    model: Any,
    train: Any,
    val: Any,
    settings: Settings,
    seed: int,
    device: Any,
    console: Any,
    description: str,
    floor_bits: float | None,
    eval_label: str = "val",
) -> Any:
    progress = _progress(console, description, settings.steps)

    def fmt(train_bits: float, val_bits: float | None) -> str:
        text = f"train {train_bits:.3f} bits"
        if val_bits is not None:
            text += f"  {eval_label} {val_bits:.3f}"
        if floor_bits is not None:
            text += f"  (H = {floor_bits:.3f})"
        return text

    started = time.perf_counter()
    last: list[str] = []
    with progress if progress is not None else nullcontext():
        task = None
        if progress is not None:
            task = progress.add_task(description, total=settings.steps, loss="")
        update_every = max(1, settings.steps // 200)

        def on_step(step: int, train_bits: float, val_bits: float | None) -> None:
            if step == settings.steps:
                last.append(fmt(train_bits, val_bits))
            if progress is not None and (step % update_every == 0 or step == settings.steps):
                progress.update(task, completed=step, loss=fmt(train_bits, val_bits))

        history = train_model(
            model, train, val, steps=settings.steps, batch_size=settings.batch_size,
            lr=settings.lr, device=device, seed=seed, on_step=on_step,
        )  # fmt: skip
    seconds = time.perf_counter() - started
    _done(console, f"{description}: {settings.steps} steps in {seconds:.1f} s; {last[-1]}")
    return history


def batch_means_se(values: np.ndarray, n_batches: int = 50) -> float:
    """Standard error of the mean of a (serially correlated) sequence by the batch-means method."""
    n = values.shape[0] // n_batches * n_batches
    means = values[:n].reshape(n_batches, -1).mean(axis=1)
    return float(means.std(ddof=1) / math.sqrt(n_batches))


def _part_source(settings: Settings, seed: int, device: Any, console: Any) -> dict[str, Any]:
    import torch

    rng = np.random.default_rng(seed)
    source = random_source(N_SYMBOLS, ORDER, CONCENTRATION, rng)
    pi = source.stationary()
    h = entropy_rate(source.transition, pi)
    train_seq = source.sample(settings.train_symbols // CHAIN_LENGTH, CHAIN_LENGTH, rng, pi)
    val_seq = source.sample(1, settings.val_symbols, rng, pi)[0]
    train = make_pairs(train_seq, N_SYMBOLS, ORDER)
    val = make_pairs(val_seq, N_SYMBOLS, ORDER)

    torch.manual_seed(seed)
    model = build_model(N_SYMBOLS, ORDER, joint_context=True)
    history = _train_with_bar(
        model, train, val, settings, seed, device, console, "Part 1: Markov source", h
    )
    model_bits = per_symbol_bits(model, val, device)
    ce = float(model_bits.mean())
    ce_se = batch_means_se(model_bits)
    true_bits = -source.log2_prob(val_seq)
    noise = NOISE_SIGMAS * batch_means_se(true_bits)
    paired = model_bits - true_bits
    paired_se = batch_means_se(paired)
    table = probability_table(model, device)
    exact = exact_rates(source.transition, table, pi)

    coded = range_code(val_seq, table, ORDER)
    raw = val_seq.astype(np.uint8).tobytes()
    base = baseline_bits(raw)
    n = val_seq.shape[0]
    return {
        "source": {
            "n_symbols": N_SYMBOLS,
            "order": ORDER,
            "concentration": CONCENTRATION,
            "entropy_rate_bits": h,
            "train_symbols": int(train_seq.size),
            "val_symbols": int(n),
        },
        "model": {
            "parameters": int(sum(p.numel() for p in model.parameters())),
            # Exact, from the source's and the model's probability tables.
            "cross_entropy_rate_bits": exact["cross_entropy"],
            "kl_rate_bits": exact["kl"],
            "h_plus_kl_bits": h + exact["kl"],
            "identity_error_bits": exact["cross_entropy"] - (h + exact["kl"]),
            "cross_entropy_rate_perplexity": 2.0 ** exact["cross_entropy"],
            # Sampled, on one validation sequence from the source.
            "val_cross_entropy_bits": ce,
            "val_cross_entropy_se_bits": ce_se,
            "val_cross_entropy_ci95_bits": [ce - Z95 * ce_se, ce + Z95 * ce_se],
            "val_true_model_bits": float(true_bits.mean()),
            # CE minus the true source's CE on the same symbols: the sampling luck of the
            # validation sequence cancels, leaving an estimate of the KL rate.
            "paired_gap_bits": float(paired.mean()),
            "paired_gap_se_bits": paired_se,
            "paired_gap_ci95_bits": [
                float(paired.mean()) - Z95 * paired_se,
                float(paired.mean()) + Z95 * paired_se,
            ],
            "se_definition": "batch means over 50 consecutive blocks of the validation sequence",
            "noise_sigmas": NOISE_SIGMAS,
            "noise_bits": noise,
            "noise_definition": f"{NOISE_SIGMAS:g} batch-means standard errors of -log2 p(x|c) "
            "under the true source on the validation sequence",
            "perplexity": 2.0**ce,
            "source_perplexity": 2.0**h,
            "history": asdict(history),
        },
        "coding": _coding_summary(coded, base, n, N_SYMBOLS),
        "acceptance": {
            "cross_entropy_rate_equals_h_plus_kl": abs(exact["cross_entropy"] - h - exact["kl"])
            <= 1e-9,
            "cross_entropy_at_least_h_minus_noise": ce >= h - noise,
            "cross_entropy_near_exact_rate": abs(ce - exact["cross_entropy"])
            <= NOISE_SIGMAS * ce_se,
            "code_length_within_bound": coded.within_bound,
            "round_trip": coded.round_trip,
        },
    }


def exact_rates(
    transition: np.ndarray, table: np.ndarray, stationary: np.ndarray
) -> dict[str, float]:
    r"""The model's exact cross-entropy rate and KL rate against the source, in bits per symbol.

    .. math::

        H(P, Q) = \sum_c \pi(c) \sum_x P(x \mid c)\,(-\log_2 Q(x \mid c)), \qquad
        \mathrm{KL} = \sum_c \pi(c) \sum_x P(x \mid c) \log_2 \frac{P(x \mid c)}{Q(x \mid c)},

    each summed on its own, so that :math:`H(P, Q) = H + \mathrm{KL}` can be checked on the
    numbers (they agree to float64 rounding).
    """
    q = np.asarray(table, dtype=np.float64)
    q = q / q.sum(axis=1, keepdims=True)
    p = np.asarray(transition, dtype=np.float64)
    # 0 log 0 = 0; a zero in q under a positive p is an infinite cost.
    with np.errstate(divide="ignore", invalid="ignore"):
        log_q = np.log2(q)
        log_p = np.log2(np.where(p > 0, p, 1.0))
        ce_rows = -np.where(p > 0, p * log_q, 0.0).sum(axis=1)
        kl_rows = np.where(p > 0, p * (log_p - log_q), 0.0).sum(axis=1)
    return {"cross_entropy": float(stationary @ ce_rows), "kl": float(stationary @ kl_rows)}


def _coding_summary(coded: Any, base: dict[str, int], n: int, k: int) -> dict[str, Any]:
    bound = coded.quantized_bits
    return {
        "symbols": n,
        "model_bound_bits": coded.ideal_bits,
        "quantized_bound_bits": bound,
        "quantization_bits": coded.quantization_bits,
        "compressed_bits": coded.compressed_bits,
        "overhead_bits": coded.overhead_bits,
        "overhead_fraction": coded.overhead_bits / bound if bound else 0.0,
        "overhead_definition": "range coder output minus the cross-entropy of the quantised "
        "probabilities (c / 2**24) it codes with; never negative",
        "within_bound": coded.within_bound,
        "round_trip": coded.round_trip,
        "bits_per_symbol": coded.compressed_bits / n,
        "model_bound_bits_per_symbol": coded.ideal_bits / n,
        "quantized_bound_bits_per_symbol": bound / n,
        "fixed_length_bits_per_symbol": math.log2(k),
        "baselines_bits": base,
        "baselines_bits_per_symbol": {name: bits / n for name, bits in base.items()},
    }


def _part_text(
    data: bytes, size: int, path: str, settings: Settings, seed: int, device: Any, console: Any
) -> dict[str, Any]:
    import torch

    seq = np.frombuffer(data, dtype=np.uint8).astype(np.int64)
    # Train on the first 90% of the file, code the held-out last 10%: a model scored on the bytes
    # it was fitted to would memorise them (random bytes would "compress" 100-fold). The general
    # compressors get the same advantage of having seen the first 90%: their figure is the size of
    # the whole file minus the size of its first 90%.
    cut = split_text(data)
    train = make_pairs(seq[:cut], 256, TEXT_ORDER)
    held = seq[cut:]
    held_pairs = make_pairs(held, 256, TEXT_ORDER)
    torch.manual_seed(seed)
    model = build_model(256, TEXT_ORDER, joint_context=False)
    history = _train_with_bar(
        model, train, held_pairs, settings, seed, device, console, "Your file", None, "held-out"
    )
    ce = float(per_symbol_bits(model, held_pairs, device).mean())
    coded = range_code(held, probability_table(model, device), TEXT_ORDER)
    whole, prefix = baseline_bits(data), baseline_bits(data[:cut])
    base = {name: whole[name] - prefix[name] for name in whole}
    return {
        # what the comparison shows: the coder spends the model's cross-entropy; whether the
        # model beats a compressor depends on the model (2 bytes of context) and the file's size
        "shorter_than_range_coder": sorted(
            (name for name in base if base[name] < coded.compressed_bits), key=base.__getitem__
        ),
        "path": path,
        "bytes_used": len(data),
        "file_bytes": size,
        "truncated": len(data) < size,
        "train_bytes": cut,
        "held_out_bytes": int(held.shape[0]),
        "context_bytes": TEXT_ORDER,
        "model_parameters": int(sum(p.numel() for p in model.parameters())),
        "cross_entropy_bits_per_byte": ce,
        "history": asdict(history),
        "coding": _coding_summary(coded, base, int(held.shape[0]), 256),
    }


def _part_classify(settings: Settings, seed: int, device: Any, console: Any) -> dict[str, Any]:
    data = load_split(seed)
    results: dict[str, Any] = {}
    progress = _progress(console, "Part 2: digits", len(LOSSES))
    runs = {}
    with progress if progress is not None else nullcontext():
        task = progress.add_task("Part 2: digits", total=len(LOSSES), loss="") if progress else None
        for name in LOSSES:
            if progress is not None:
                progress.update(task, loss=f"training with {name}")
            runs[name] = train_classifier(
                name, data, steps=settings.classifier_steps, device=device, seed=seed
            )
            if progress is not None:
                progress.advance(task)
        if progress is not None:
            progress.update(task, loss="done")
    _done(
        console,
        "Part 2: digits: "
        + ", ".join(f"{LOSS_LABELS[name]} {r.accuracy:.3f}" for name, r in runs.items())
        + " test accuracy",
    )
    for name, r in runs.items():
        results[name] = {
            **r.summary(),
            "curves": {
                "eval_steps": r.eval_steps,
                "test_accuracy": r.test_accuracy,
                "test_log_loss_nats": r.test_log_loss,
            },
            "reliability": {
                "confidence": r.reliability_confidence,
                "accuracy": r.reliability_accuracy,
                "counts": r.reliability_counts,
            },
        }
    return {
        "dataset": "sklearn digits (1797 8x8 images), stratified 75/25 split",
        "train_size": int(data[0].shape[0]),
        "test_size": int(data[2].shape[0]),
        "accuracy_target": ACCURACY_TARGET,
        "eval_every": EVAL_EVERY,
        "steps_to_target_definition": f"the first evaluation (every {EVAL_EVERY} SGD steps) at "
        f"which test accuracy reached {ACCURACY_TARGET:.0%}; null if none did",
        "losses": results,
    }
