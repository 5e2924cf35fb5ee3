"""Benchmarks, run on demand (``make bench`` or ``python -m benchmarks NAME``), never by the tests."""


def positive_int(text: str) -> int:
    """argparse type for counts (rows, classes, repeats): an integer of at least 1."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
