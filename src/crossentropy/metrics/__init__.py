"""Scoring predicted probabilities: log loss, perplexity, bits per token/byte, Brier, calibration."""

__all__: list[str] = []
