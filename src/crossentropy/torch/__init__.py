"""PyTorch layer: torch-exact cross-entropy, fused linear cross-entropy, losses as nn.Modules."""

__all__: list[str] = []
