"""``python -m benchmarks [NAME ...] [FLAGS ...]``: run the named benchmark modules (all when none is named).

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
    """Run ``NAME ...`` (leading benchmark names; all when none) with the remaining arguments."""
    known = available()
    split = next((i for i, a in enumerate(argv) if a not in known), len(argv))
    names, flags = argv[:split], argv[split:]
    if flags and not flags[0].startswith("-"):
        print(f"benchmarks: unknown benchmark {flags[0]!r}; choose from {', '.join(known)}")
        return 2
    status = 0
    for name in names or known:
        module = importlib.import_module(f"benchmarks.{name}")
        status = max(status, int(module.main(flags) or 0))
    return status


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
