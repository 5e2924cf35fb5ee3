"""Write ``examples/predictions.csv``: the forecasts of a slightly over-confident 3-class model.

Needs: crossentropy
Run: python examples/make_predictions.py [--out examples/predictions.csv]

Each row holds the predicted probabilities of ``sunny``, ``cloudy`` and ``rainy`` (four decimals,
summing to exactly 1 in decimal) and the observed weather in the ``label`` column. The output is
deterministic: it is the file the repository ships. Score it with ``crossentropy score
examples/predictions.csv`` (the ``cli`` extra), which finds the ``label`` column by its name.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

CLASSES = ("sunny", "cloudy", "rainy")


def make(n: int = 60, seed: int = 7) -> str:
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 1.2, size=(n, len(CLASSES)))
    truth = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    observed = [rng.choice(len(CLASSES), p=row) for row in truth]
    # the forecaster sharpens the true odds (temperature 0.7): over-confident, so the ECE is visible
    sharp = np.exp(logits / 0.7)
    pred = sharp / sharp.sum(axis=1, keepdims=True)
    lines = [",".join((*CLASSES, "label"))]
    for row, label in zip(pred, observed):
        ticks = np.round(row[:-1] * 10000).astype(int)
        ticks = np.append(ticks, 10000 - ticks.sum())  # exact decimal sum of 1
        cells = [f"{t / 10000:.4f}" for t in ticks]
        lines.append(",".join((*cells, CLASSES[label])))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).with_name("predictions.csv"),
        help="where to write the CSV (default: examples/predictions.csv)",
    )
    args = parser.parse_args(argv)
    args.out.write_text(make())
    print(f"wrote {args.out}")
    return Path(args.out)


if __name__ == "__main__":
    main()
