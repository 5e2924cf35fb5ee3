"""``crossentropy demo``: cross-entropy shown by training with it.

Part 1 draws a Markov source whose entropy rate is known exactly, trains a small model on it with
:func:`crossentropy.torch.linear_cross_entropy`, shows that the validation cross-entropy approaches
the entropy rate (the gap is the KL divergence) and that a range coder driven by the model stores
the data in that many bits. Part 2 trains one network on scikit-learn's digits with cross-entropy,
MSE and focal loss. Needs the ``demo`` extra (torch, rich, matplotlib, constriction, scikit-learn).
"""

from crossentropy.demo._run import run_demo

__all__ = [
    "run_demo",
]
