"""Scoring predicted probabilities: log loss, perplexity, bits per token/byte, Brier, calibration.

Functions take true labels and predicted probabilities (NumPy arrays, any array-API array, or
sequences) and return NumPy float64 scalars or small named tuples. Nothing is clipped or
renormalised silently, and rows must sum to 1 within the library's one tolerance rule; :class:`ScoreAccumulator` computes the same scores chunk by chunk for data larger than
memory.
"""

from crossentropy.metrics._calibration import (
    Calibration,
    PerClassScores,
    calibration_error,
    per_class_scores,
)
from crossentropy.metrics._language import bits_per_byte, bits_per_token, perplexity
from crossentropy.metrics._log_loss import brier_score, log_loss
from crossentropy.metrics._streaming import ScoreAccumulator, Scores

__all__ = [
    "Calibration",
    "PerClassScores",
    "ScoreAccumulator",
    "Scores",
    "bits_per_byte",
    "bits_per_token",
    "brier_score",
    "calibration_error",
    "log_loss",
    "per_class_scores",
    "perplexity",
]
