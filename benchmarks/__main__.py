"""``python -m benchmarks [NAME ...]``: run the named benchmark modules (all when none is named).

Each module ``benchmarks/<name>.py`` has ``main(argv) -> int`` and writes its tables to
``benchmarks/results/``.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def available() -> list[str]:
    here = Path(__file__).parent
    return sorted(m.name for m in pkgutil.iter_modules([str(here)]) if not m.name.startswith("_"))


def main(argv: list[str]) -> int:
    names = [a for a in argv if not a.startswith("-")] or available()
    unknown = [n for n in names if n not in available()]
    if unknown:
        print(f"benchmarks: unknown benchmark {unknown[0]!r}; choose from {', '.join(available())}")
        return 2
    flags = [a for a in argv if a.startswith("-")]
    status = 0
    for name in names:
        module = importlib.import_module(f"benchmarks.{name}")
        status = max(status, int(module.main(flags) or 0))
    return status


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
