"""The ``crossentropy`` command line: ``demo``, ``score``, ``bench``, ``info``."""

from crossentropy.cli._main import CLIError, main

__all__ = [
    "CLIError",
    "main",
]
