"""Part 2: the same small network on scikit-learn's digits, trained with three different losses.

Cross-entropy is the negative log-likelihood of the labels, a proper scoring rule whose gradient
with respect to the logits is ``softmax - onehot`` and never vanishes on a confidently wrong
prediction. Mean-squared error on the softmax outputs (the Brier score) is also proper but its
gradient is damped by the softmax Jacobian where the model is confidently wrong, so it learns more
slowly; focal loss down-weights well-classified samples, which tends to leave the model
under-confident. The numbers printed by the demo are measured, not assumed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

LOSSES = ("cross_entropy", "mse", "focal")
LOSS_LABELS = {
    "cross_entropy": "cross-entropy",
    "mse": "MSE on softmax",
    "focal": "focal (gamma=2)",
}
ACCURACY_TARGET = 0.9
# Test-set evaluations every this many SGD steps: the resolution of "steps to 90% accuracy".
EVAL_EVERY = 5
N_BINS = 10


@dataclass
class ClassifierResult:
    """Test-set scores of one training run, and its curves."""

    loss: str
    accuracy: float
    log_loss_nats: float
    ece: float
    steps_to_90: int | None
    eval_steps: list[int] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)
    test_log_loss: list[float] = field(default_factory=list)
    reliability_confidence: list[float | None] = field(default_factory=list)
    reliability_accuracy: list[float | None] = field(default_factory=list)
    reliability_counts: list[int] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "log_loss_nats": self.log_loss_nats,
            "ece": self.ece,
            "steps_to_90pct": self.steps_to_90,
        }


def load_split(
    seed: int,
) -> tuple[
    npt.NDArray[np.float32], npt.NDArray[np.int64], npt.NDArray[np.float32], npt.NDArray[np.int64]
]:
    """Digits (bundled with scikit-learn, no download), stratified 75/25 split, pixels in [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
    return x_tr, y_tr, x_te, y_te


def train_classifier(
    loss_name: str,
    data: tuple[Any, Any, Any, Any],
    *,
    steps: int,
    device: Any,
    seed: int,
    batch_size: int = 64,
    lr: float = 0.05,
    eval_every: int = EVAL_EVERY,
) -> ClassifierResult:
    """Train a 64-64-10 MLP with ``loss_name`` and score it on the test split.

    The optimiser is SGD with momentum, the same for every loss: Adam would rescale each gradient
    to unit size and so hide the very thing being compared, how each loss's gradient behaves.
    """
    import torch
    from torch import nn

    import crossentropy
    from crossentropy.metrics import calibration_error, log_loss
    from crossentropy.torch import linear_cross_entropy

    if loss_name not in LOSSES:
        raise ValueError(f"train_classifier: loss must be one of {LOSSES}, got {loss_name!r}")
    torch.manual_seed(seed)
    x_tr, y_tr, x_te, y_te = (torch.as_tensor(a, device=device) for a in data)
    body = nn.Sequential(nn.Linear(x_tr.shape[1], 64), nn.GELU()).to(device)
    weight = nn.Parameter(torch.randn(10, 64, device=device) * 0.05)
    bias = nn.Parameter(torch.zeros(10, device=device))
    params = [*body.parameters(), weight, bias]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    y_te_np = y_te.cpu().numpy()
    labels = np.arange(10)

    def test_probs() -> npt.NDArray[np.float64]:
        with torch.no_grad():
            logits = nn.functional.linear(body(x_te), weight, bias).double()
            return np.asarray(torch.softmax(logits, dim=1).cpu().numpy())

    result = ClassifierResult(loss_name, 0.0, 0.0, 0.0, None)
    for step in range(1, steps + 1):
        idx = torch.randint(0, x_tr.shape[0], (batch_size,), generator=gen).to(device)
        h = body(x_tr[idx])
        target = y_tr[idx]
        if loss_name == "cross_entropy":
            loss = linear_cross_entropy(h, weight, target, linear_bias=bias)
        else:
            logits = nn.functional.linear(h, weight, bias)
            if loss_name == "mse":
                onehot = nn.functional.one_hot(target, 10).to(logits.dtype)
                # Summed over classes (the Brier score): averaging over classes as well would only
                # divide the learning rate by 10.
                loss = ((torch.softmax(logits, dim=1) - onehot) ** 2).sum(dim=1).mean()
            else:
                loss = crossentropy.focal_loss(logits, target, gamma=2.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % eval_every == 0 or step == steps:
            p = test_probs()
            acc = float(np.mean(p.argmax(axis=1) == y_te_np))
            result.eval_steps.append(step)
            result.test_accuracy.append(acc)
            result.test_log_loss.append(log_loss(y_te_np, p, labels=labels, renormalize=True))
            if result.steps_to_90 is None and acc >= ACCURACY_TARGET:
                result.steps_to_90 = step
    p = test_probs()
    result.accuracy = float(np.mean(p.argmax(axis=1) == y_te_np))
    result.log_loss_nats = log_loss(y_te_np, p, labels=labels, renormalize=True)
    cal = calibration_error(y_te_np, p, labels=labels, n_bins=N_BINS, renormalize=True)
    result.ece = float(cal.ece)
    result.reliability_confidence = [None if np.isnan(v) else float(v) for v in cal.confidence]
    result.reliability_accuracy = [None if np.isnan(v) else float(v) for v in cal.accuracy]
    result.reliability_counts = [int(c) for c in cal.counts]
    return result
