"""The public core API list is pinned: a change to it must be deliberate."""

from __future__ import annotations

import crossentropy

CORE = {
    "binary_cross_entropy",
    "cross_entropy",
    "entropy",
    "focal_loss",
    "js_divergence",
    "kl_divergence",
    "log_softmax",
    "logsumexp",
    "row_sum_tolerance",
    "sigmoid_cross_entropy",
    "softmax",
    "softmax_cross_entropy",
}


def test_core_names_are_exported_and_documented() -> None:
    assert set(crossentropy.__all__) == CORE | {"__version__"}
    for name in CORE:
        func = getattr(crossentropy, name)
        doc = func.__doc__ or ""
        # One-line summary, the math and a doctest example in every public docstring.
        assert doc.splitlines()[0].strip(), name
        assert ".. math::" in doc, name
        assert ">>>" in doc, name
