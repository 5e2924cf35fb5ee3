"""The demo's outputs: terminal tables (rich), ``demo_report.png`` (matplotlib, Agg) and JSON."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path
from typing import Any

from crossentropy.demo._classify import LOSS_LABELS

_COLORS = {"cross_entropy": "#1f77b4", "mse": "#d62728", "focal": "#2ca02c"}
# Reliability bins with fewer test samples get a marker but no line through them (too noisy).
_MIN_LINE_COUNT = 5


def _clean(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become None (JSON has no NaN or infinity)."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return _clean(value.item())
    return value


def write_json(summary: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(_clean(summary), indent=2, allow_nan=False) + "\n")


def write_png(summary: dict[str, Any], path: Path) -> None:
    """Loss curves with the entropy line and the KL gap shaded, code lengths, digits curves and
    the reliability diagram, on a 2 x 2 grid."""
    import matplotlib.pyplot as plt

    fig = draw_report(summary)
    try:
        fig.savefig(path)
    finally:
        plt.close(fig)


def draw_report(summary: dict[str, Any]) -> Any:
    """The report's figure (matplotlib, Agg); the caller closes it."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 9.5), dpi=110)
    try:
        _plot_training(axes[0, 0], summary)
        note = _plot_code_lengths(axes[0, 1], summary)
        _plot_digits_curves(axes[1, 0], summary["classification"])
        _plot_reliability(axes[1, 1], summary["classification"])
        src = summary["source"]
        fig.suptitle(
            "crossentropy demo: cross-entropy = entropy + KL = code length "
            f"(seed {summary['config']['seed']}, {summary['config']['steps']} steps"
            f"{', quick' if summary['config']['quick'] else ''}; source: {src['n_symbols']} "
            f"symbols, context {src['order']})",
            fontsize=12,
        )
        fig.tight_layout(rect=(0, 0, 1, 0.97))
        if note is not None:  # once the panel has its final size
            _clear_of(axes[0, 1], *note)
    except BaseException:
        plt.close(fig)
        raise
    return fig


def _plot_training(ax: Any, summary: dict[str, Any]) -> None:
    import numpy as np

    hist = summary["model"]["history"]
    h = summary["source"]["entropy_rate_bits"]
    steps = np.asarray(hist["steps"])
    train = np.asarray(hist["train_bits"])
    window = max(1, len(train) // 60)
    smooth = np.convolve(train, np.ones(window) / window, mode="valid")
    ax.plot(steps, train, color="0.8", lw=0.6, label="train loss (batch)")
    ax.plot(steps[window - 1 :], smooth, color="0.35", lw=1.2, label="train loss (moving mean)")
    ev = np.asarray(hist["eval_steps"])
    val = np.asarray(hist["val_bits"])
    ax.plot(ev, val, "o-", color="#1f77b4", ms=3, lw=1.6, label="validation cross-entropy")
    ax.axhline(h, color="k", ls="--", lw=1.2, label=f"entropy rate H = {h:.3f} bits")
    ax.fill_between(
        ev,
        h,
        val,
        where=val >= h,
        color="#1f77b4",
        alpha=0.15,
        label="gap CE − H ≈ KL(source ‖ model)",
    )
    model = summary["model"]
    rate, kl = model["cross_entropy_rate_bits"], model["kl_rate_bits"]
    # Zoom on the second half of training, where the gap is too thin to see on the full scale.
    late = ev >= ev[-1] / 2
    inset = ax.inset_axes((0.36, 0.4, 0.61, 0.3))
    inset.plot(ev[late], val[late], "o-", color="#1f77b4", ms=3, lw=1.4)
    inset.axhline(h, color="k", ls="--", lw=1.0)
    inset.axhline(rate, color="#1f77b4", ls=":", lw=1.2)
    inset.fill_between(ev[late], h, val[late], where=val[late] >= h, color="#1f77b4", alpha=0.2)
    lo, hi = model["val_cross_entropy_ci95_bits"]
    est = model["val_cross_entropy_bits"]
    inset.errorbar([ev[-1]], [est], yerr=[[est - lo], [hi - est]], color="#1f77b4", capsize=3)
    inset.set_title(
        f"last half, zoomed. Exact, final model: H + KL = {h:.4f} + {kl:.4f} = {rate:.4f} "
        f"(dotted).\nSampled: {est:.4f}, 95% interval "
        f"[{lo:.4f}, {hi:.4f}]",
        fontsize=7,
    )
    span = max(float(val[late].max()) - h, hi - h, rate - h, 0.01)
    inset.set_ylim(h - 0.15 * span, h + 1.1 * span)
    inset.tick_params(labelsize=7)
    inset.grid(alpha=0.3)
    top = max(float(val.max()), float(smooth.max())) if len(smooth) else float(val.max())
    # The curves fill the lower 55% of the panel; the zoomed inset and the legend sit above them.
    bottom = h - 0.25
    ax.set_ylim(bottom, bottom + (top + 0.05 - bottom) / 0.55)
    ax.set_xlabel("training step")
    ax.set_ylabel("bits per symbol")
    ax.set_title("Part 1: training a model of a Markov source")
    ax.legend(loc="upper right", fontsize=7.5, ncol=2)
    ax.grid(alpha=0.3)


def _plot_code_lengths(ax: Any, summary: dict[str, Any]) -> tuple[Any, list[Any]] | None:
    """The code-length bars; with a text file, also the note on what its bars show, returned
    with the bars' value labels so the caller can keep them apart."""
    groups = [
        (
            "Markov source\n(bits / symbol)",
            summary["coding"],
            summary["source"]["entropy_rate_bits"],
        )
    ]
    text = summary.get("text")
    if text:
        name = Path(text["path"]).name
        groups.append(
            (
                f"{name}: last {text['held_out_bytes']:,} bytes\n(bits / byte)",
                text["coding"],
                None,
            )
        )
    bars = [
        "entropy rate H",
        "model's bound",
        "coder's bound (rounded q)",
        "range coder",
        "gzip",
        "bz2",
        "lzma",
    ]
    colors = ["k", "#c6dbef", "#6baed6", "#1f77b4", "#fdae6b", "#e6550d", "#a63603"]
    width = 0.8 / len(bars)
    labels = []
    for g, (_, coding, h) in enumerate(groups):
        base = coding["baselines_bits_per_symbol"]
        values = [
            h,
            coding["model_bound_bits_per_symbol"],
            coding["quantized_bound_bits_per_symbol"],
            coding["bits_per_symbol"],
            base["gzip"],
            base["bz2"],
            base["lzma"],
        ]
        for i, v in enumerate(values):
            if v is None or not math.isfinite(v):
                continue
            x = g + (i - (len(bars) - 1) / 2) * width
            ax.bar(x, v, width * 0.9, color=colors[i], label=bars[i] if g == 0 else None)
            labels.append(
                ax.text(x, v, f"{v:.2f}", ha="center", va="bottom", fontsize=7, rotation=90)
            )
    ax.set_xticks(range(len(groups)), [name for name, _, _ in groups])
    fixed = summary["coding"]["fixed_length_bits_per_symbol"]
    ax.axhline(
        fixed, color="0.5", ls=":", lw=1, label=f"fixed-length code, source ({fixed:g} bits)"
    )
    ax.set_ylabel("bits per coded unit")
    coding = summary["coding"]
    ax.set_title(
        "Cross-entropy is code length\n"
        f"(range coder {coding['overhead_fraction'] * 100:+.3f}% over the cross-entropy of its "
        f"rounded q, round trip {'ok' if coding['round_trip'] else 'FAILED'})",
        fontsize=10,
    )
    top = max(ax.get_ylim()[1], fixed)
    ax.set_ylim(0, top * 1.45)
    ax.legend(fontsize=7.5, loc="upper left", ncol=2)
    ax.grid(alpha=0.3, axis="y")
    if text:
        # Said on the panel: what the file's bars show, and what they do not.
        shorter = text.get("shorter_than_range_coder", [])
        outcome = (
            f"{_join(shorter)} {'is' if len(shorter) == 1 else 'are'} shorter here: "
            "they copy long repeats from the whole file"
            if shorter
            else "it is shorter than gzip, bz2 and lzma here"
        )
        note = (
            f"{Path(text['path']).name}: a byte model that sees {text['context_bytes']} bytes "
            f"and learned from {text['train_bytes']:,} bytes. The coder spends its "
            f"cross-entropy ({text['coding']['overhead_fraction'] * 100:+.2f}%); "
            f"{outcome}. A small file and a short context: not a test of text compression."
        )
        box = ax.text(
            0.985,
            0.975,
            textwrap.fill(note, 38),
            transform=ax.transAxes,
            ha="right",
            va="top",
            multialignment="left",
            fontsize=7,
            bbox={"boxstyle": "round,pad=0.4", "fc": "white", "ec": "0.6", "alpha": 0.95},
        )
        return box, labels
    return None


# Where each loss first reaches the accuracy target: nested hollow markers of different shapes
# and sizes, so that two losses reaching it at the same step both stay visible.
_TARGET_MARKERS = {"cross_entropy": ("o", 13), "mse": ("s", 9), "focal": ("D", 6)}
# Cross-entropy and focal loss often overlap: the focal curve is dashed and drawn on top, so the
# cross-entropy curve shows through its gaps.
_LINE_STYLES = {"cross_entropy": ("-", 2.0), "mse": ("-", 1.5), "focal": ("--", 1.5)}


def note_area(box: Any, renderer: Any) -> Any:
    """Where the note ``box`` is drawn, its frame included (display coordinates)."""
    box.update_bbox_position_size(renderer)
    return box.get_bbox_patch().get_window_extent(renderer)


def _clear_of(ax: Any, box: Any, labels: list[Any]) -> None:
    """Raise the y limit until no bar label reaches into the note ``box``."""
    renderer = ax.figure.canvas.get_renderer()
    for _ in range(10):
        area = note_area(box, renderer)
        if not any(area.overlaps(t.get_window_extent(renderer)) for t in labels):
            return
        ax.set_ylim(0, ax.get_ylim()[1] * 1.12)


def _plot_digits_curves(ax: Any, part: dict[str, Any]) -> None:
    target = part.get("accuracy_target", 0.9)
    for name, r in part["losses"].items():
        c = r["curves"]
        first = r["steps_to_90pct"]
        marker, size = _TARGET_MARKERS[name]
        reached = f"{target:.0%} at step {first}" if first is not None else "never reaches it"
        style, width = _LINE_STYLES[name]
        ax.plot(
            c["eval_steps"],
            c["test_accuracy"],
            color=_COLORS[name],
            ls=style,
            lw=width,
            marker=marker,
            ms=size,
            mfc="none",
            mew=1.6,
            markevery=[c["eval_steps"].index(first)] if first is not None else [],
            label=f"{LOSS_LABELS[name]}: {reached}",
        )
    ax.axhline(target, color="0.5", ls="--", lw=1, label=f"{target:.0%} test accuracy")
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("training step (batch of 64)")
    ax.set_ylabel("test accuracy")
    ax.set_title(
        "Part 2: digits, the same network trained with three losses\n"
        f"(marker: the first evaluation at {target:.0%} test accuracy)",
        fontsize=10,
    )
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)


def _plot_reliability(ax: Any, part: dict[str, Any]) -> None:
    ax.plot([0, 1], [0, 1], color="0.5", ls="--", lw=1, label="perfect calibration")
    for name, r in part["losses"].items():
        rel = r["reliability"]
        pts = [
            (c, a)
            for c, a in zip(rel["confidence"], rel["accuracy"])
            if c is not None and a is not None
        ]
        if not pts:
            continue
        conf, acc = zip(*pts)
        counts = [n for n, c in zip(rel["counts"], rel["confidence"]) if c is not None]
        # The line joins bins with enough samples to mean something; every bin gets a marker.
        solid = [(c, a) for c, a, n in zip(conf, acc, counts) if n >= _MIN_LINE_COUNT]
        ax.plot(*zip(*solid) if solid else ([], []), "-", color=_COLORS[name], lw=1.2, alpha=0.8,
                label=f"{LOSS_LABELS[name]} (ECE {r['ece']:.3f})")  # fmt: skip
        # Marker area follows the number of test samples in the bin: sparse bins are noisy.
        total = max(sum(counts), 1)
        sizes = [6 + 400 * n / total for n in counts]
        ax.scatter(conf, acc, s=sizes, color=_COLORS[name], alpha=0.6, edgecolors="none")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("confidence (mean top-class probability in the bin)")
    ax.set_ylabel("accuracy in the bin")
    ax.set_title(
        "Reliability diagram (digits test set, 10 bins)\n"
        f"marker area ~ samples in the bin; lines join bins of {_MIN_LINE_COUNT}+ samples",
        fontsize=10,
    )
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)


def print_summary(summary: dict[str, Any], console: Any) -> None:
    """The summary tables on a rich console."""
    from rich.table import Table

    src, model, coding = summary["source"], summary["model"], summary["coding"]
    h = src["entropy_rate_bits"]
    ok = summary["acceptance"]

    t = Table(
        title=f"Part 1: cross-entropy = entropy + KL (Markov source, {src['n_symbols']} symbols, "
        f"context {src['order']})",
        title_justify="left",
    )
    t.add_column("quantity")
    t.add_column("bits/symbol", justify="right")
    t.add_column("95% interval", justify="right")
    t.add_column("perplexity", justify="right")
    t.add_row("[bold]exact[/], from the tables", "", "", "")
    t.add_row("  entropy rate H", f"{h:.4f}", "", f"{model['source_perplexity']:.3f}")
    t.add_row("  KL(source ‖ model)", f"{model['kl_rate_bits']:.4f}", "", "")
    t.add_row("  H + KL", f"{model['h_plus_kl_bits']:.4f}", "", "")
    t.add_row(
        "  cross-entropy rate",
        f"{model['cross_entropy_rate_bits']:.4f}",
        "",
        f"{model['cross_entropy_rate_perplexity']:.3f}",
    )
    t.add_row(
        "  rate − (H + KL)",
        f"{model['identity_error_bits']:.0e}",
        "",
        "",
        end_section=True,
    )
    t.add_row(f"[bold]sampled[/], {src['val_symbols']:,} symbols", "", "", "")
    t.add_row(
        "  cross-entropy CE",
        f"{model['val_cross_entropy_bits']:.4f} ± {model['val_cross_entropy_se_bits']:.4f}",
        _interval(model["val_cross_entropy_ci95_bits"]),
        f"{model['perplexity']:.3f}",
    )
    t.add_row(
        "  KL, paired estimate",
        f"{model['paired_gap_bits']:.4f} ± {model['paired_gap_se_bits']:.4f}",
        _interval(model["paired_gap_ci95_bits"]),
        "",
        end_section=True,
    )
    sigmas = model["noise_sigmas"]
    t.add_row(f"[bold]checks[/] ({sigmas:g} std. errors)", "", "", "")
    t.add_row(
        f"  CE ≥ H − {model['noise_bits']:.4f}",
        _verdict(ok["cross_entropy_at_least_h_minus_noise"]),
        "",
        "",
    )
    t.add_row(
        f"  |CE − rate| ≤ {sigmas * model['val_cross_entropy_se_bits']:.4f}",
        _verdict(ok["cross_entropy_near_exact_rate"]),
        "",
        "",
    )
    t.caption = (
        "exact rows: from the source's and the model's probabilities. sampled rows: on held-out "
        "symbols, ± one standard error (batch means over 50 blocks); paired estimate: CE minus "
        "the source's own −log2 p on the same symbols. checks: no model codes below H, but a "
        "sample may fall below it by chance, by up to "
        f"{sigmas:g} standard errors of the source's own −log2 p on these symbols "
        f"(= {model['noise_bits']:.4f}); and the sampled CE estimates the exact rate, within "
        f"{sigmas:g} of its standard errors (= {sigmas * model['val_cross_entropy_se_bits']:.4f})."
    )
    console.print(t)
    console.print(
        _coding_table(
            f"Cross-entropy = code length ({coding['symbols']:,} validation symbols)",
            coding,
            h,
            "symbol",
        )
    )
    console.print(
        "  q̂: the coder rounds each probability to a count c/2**24 with c ≥ 1, so every symbol "
        "stays codable; its output cannot be shorter than the coder's bound, the cross-entropy "
        "of q̂. Rounding a tiny q up to 2**-24 can put that bound below the model's. The output "
        "is whole 32-bit words: on a short input that rounding is a larger percentage."
    )
    text = summary.get("text")
    if text:
        title = f"Your file {text['path']} ({text['bytes_used']:,} bytes"
        title += f" of {text['file_bytes']:,})" if text["truncated"] else ")"
        title += f": held-out last {text['held_out_bytes']:,} bytes"
        console.print(_coding_table(title, text["coding"], None, "byte"))
        console.print("  " + text_verdict(text))

    part = summary["classification"]
    c = Table(
        title=f"Part 2: digits ({part['train_size']} train / {part['test_size']} test), "
        f"{summary['config']['classifier_steps']} SGD steps per loss",
        title_justify="left",
    )
    target = f"{part['accuracy_target']:.0%}"
    for col in ("loss", "test accuracy", "log loss (nats)", "ECE", f"steps to {target}"):
        c.add_column(col, justify="left" if col == "loss" else "right")
    for name, r in part["losses"].items():
        c.add_row(
            LOSS_LABELS[name],
            f"{r['accuracy']:.3f}",
            f"{r['log_loss_nats']:.3f}",
            f"{r['ece']:.3f}",
            "not reached" if r["steps_to_90pct"] is None else str(r["steps_to_90pct"]),
        )
    c.caption = (
        f"steps to {target}: SGD steps (batches of 64) until the test accuracy first reached "
        f"{target}, measured every {part['eval_every']} steps. ECE: expected calibration error "
        "(10 bins); lower is better calibrated."
    )
    console.print(c)
    timing = summary["timing"]
    console.print(
        f"Wrote {summary['files']['png']} and {summary['files']['json']} "
        f"in {timing['total_s']:.1f} s on {summary['config']['device']}."
    )


def _verdict(ok: bool) -> str:
    return "[green]pass[/]" if ok else "[red]FAIL[/]"


def text_verdict(text: dict[str, Any]) -> str:
    """What the comparison of the byte model with the compressors shows, in one paragraph."""
    coding = text["coding"]
    over = coding["overhead_fraction"] * 100
    shorter = text.get("shorter_than_range_coder", [])
    names = {"gzip": "gzip", "bz2": "bz2", "lzma": "lzma"}
    if shorter:
        outcome = (
            f"Here {_join([names[n] for n in shorter])} "
            f"{'is' if len(shorter) == 1 else 'are'} shorter: they copy long repeats from "
            f"anywhere in the file, which a model that sees {text['context_bytes']} bytes cannot."
        )
    else:
        outcome = "Here the byte model is shorter than gzip, bz2 and lzma."
    return (
        f"What this shows: the range coder stores the held-out bytes in the byte model's "
        f"cross-entropy ({over:+.3f}% over the coder's bound). It is not a strong text model: "
        f"it sees the previous {text['context_bytes']} bytes only ({text['model_parameters']:,} "
        f"parameters) and learned from the first {text['train_bytes']:,} bytes. gzip, bz2 and "
        f"lzma are charged for the same last {text['held_out_bytes']:,} bytes (the size of the "
        f"whole file minus that of its first part). {outcome}"
    )


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _interval(ci: list[float]) -> str:
    return f"[{ci[0]:.4f}, {ci[1]:.4f}]"


def _percent(bits: float, bound: float | None) -> str:
    if bound is None or not bound or not math.isfinite(bound) or not math.isfinite(bits):
        return ""
    return f"{(bits / bound - 1) * 100:+.3f}%"


def _coding_table(title: str, coding: dict[str, Any], h: float | None, unit: str) -> Any:
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    t.add_column("code")
    t.add_column("bytes", justify="right")
    t.add_column(f"bits/{unit}", justify="right")
    t.add_column("vs model's\nbound", justify="right")
    t.add_column("vs coder's\nbound", justify="right")
    n = coding["symbols"]
    model_bound = coding["model_bound_bits"]
    coder_bound = coding["quantized_bound_bits"]

    def row(name: str, bits: float | None, size: str, against_coder: bool = False) -> None:
        bits = math.inf if bits is None else bits  # JSON stores an infinite bound as null
        t.add_row(
            name,
            size,
            _per(bits, n),
            _percent(bits, model_bound),
            _percent(bits, coder_bound) if against_coder else "",
        )

    if h is not None:
        t.add_row("entropy H × n (floor)", f"{h * n / 8:,.1f}", f"{h:.4f}", "", "")
    t.add_row("model's bound Σ−log2 q", _bytes(model_bound, 1), _per(model_bound, n), "—", "")
    row("coder's bound Σ−log2 q̂", coder_bound, _bytes(coder_bound, 1))
    trip = "round trip ok" if coding["round_trip"] else "[red]round trip FAILED[/]"
    bits = coding["compressed_bits"]
    row(f"range coder ({trip})", bits, _bytes(bits, 0), against_coder=True)
    for name, label in (("gzip", "gzip -9"), ("bz2", "bz2 -9"), ("lzma", "lzma -9e")):
        bits = coding["baselines_bits"][name]
        row(label, bits, _bytes(bits, 0))
    t.add_row(
        "fixed-length code",
        f"{coding['fixed_length_bits_per_symbol'] * n / 8:,.0f}",
        f"{coding['fixed_length_bits_per_symbol']:.4f}",
        "",
        "",
    )
    return t


def _per(bits: float | None, n: int) -> str:
    return "inf" if bits is None or not math.isfinite(bits) else f"{bits / n:.4f}"


def _bytes(bits: float | None, decimals: int) -> str:
    if bits is None or not math.isfinite(bits):
        return "inf"
    return f"{bits / 8:,.{decimals}f}"
