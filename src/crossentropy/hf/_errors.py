"""The error raised when the fused loss cannot reproduce a model's own loss."""

from __future__ import annotations

__all__ = ["UnsupportedModelError"]


class UnsupportedModelError(ValueError):
    """The fused loss cannot reproduce this model's training loss; the message names the model."""
