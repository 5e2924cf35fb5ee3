"""``python -m benchmarks [NAME ...] [FLAGS ...]``: run the named benchmark modules (all when none is named).

Each module ``benchmarks/<name>.py`` has ``main(argv) -> int`` and writes its tables to
``benchmarks/results/``, and lists the flags it takes in ``FLAGS``; every module takes ``--quick``
(small shapes, results under a ``_quick`` name). When no name is given, modules that set
``NEEDS_CUDA = True`` are skipped on machines without a CUDA GPU.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
import sys
from pathlib import Path


def available() -> list[str]:
    here = Path(__file__).parent
    return sorted(m.name for m in pkgutil.iter_modules([str(here)]) if not m.name.startswith("_"))


def main(argv: list[str]) -> int:
    """Run ``NAME ...`` (leading benchmark names; all when none) with the remaining arguments.

    Each module lists the flags it takes in ``FLAGS``; a flag no selected module takes is refused
    before anything runs (a typo must not start an hour of full-size runs), and each module is
    handed only its own flags. ``--flag value`` and ``--flag=value`` are both accepted.
    """
    known = available()
    if argv == ["--list"]:
        return list_benchmarks(known)
    split = next((i for i, a in enumerate(argv) if a not in known), len(argv))
    names, rest = argv[:split], argv[split:]
    if rest and not rest[0].startswith("-"):
        print(
            f"benchmarks: unknown benchmark {rest[0]!r}; choose from {', '.join(known)}",
            file=sys.stderr,
        )
        return 2
    groups: list[list[str]] = []  # one flag and the values after it
    for word in rest:
        if word in known:
            print(
                f"benchmarks: name benchmarks before flags ({word!r} comes after a flag)",
                file=sys.stderr,
            )
            return 2
        if word.startswith("-") and not _is_number(word):
            groups.append([word])
        elif groups:
            groups[-1].append(word)
        else:
            print(f"benchmarks: {word!r} is neither a benchmark nor a flag", file=sys.stderr)
            return 2
    modules = {name: importlib.import_module(f"benchmarks.{name}") for name in names or known}
    takes = {name: set(getattr(m, "FLAGS", ())) | {"-h", "--help"} for name, m in modules.items()}
    for group in groups:
        flag = group[0].split("=")[0]
        if not any(flag in t for t in takes.values()):
            offered = sorted(set().union(*takes.values()) - {"-h", "--help"})
            print(
                f"benchmarks: unknown flag {flag!r} for {', '.join(modules)}; "
                f"they take {', '.join(offered) or 'no flags'}",
                file=sys.stderr,
            )
            return 2
    status = 0
    for name, module in modules.items():
        if not names and getattr(module, "NEEDS_CUDA", False) and not _has_cuda():
            print(f"benchmarks: skipping {name} (needs a CUDA GPU; run it by name on one)")
            continue
        own = [w for g in groups if g[0].split("=")[0] in takes[name] for w in g]
        try:
            code = module.main(own)
        except SystemExit as exc:  # argparse refusing a value: report it, go on with the others
            code = exc.code if isinstance(exc.code, int) else 2
        status = max(status, int(code or 0))
    return status


def describe(name: str) -> tuple[str, tuple[str, ...], bool]:
    """(first docstring line, FLAGS, NEEDS_CUDA) of ``benchmarks/<name>.py``, read without
    importing it (some modules pull in transformers or Triton)."""
    tree = ast.parse((Path(__file__).parent / f"{name}.py").read_text(encoding="utf-8"))
    doc = (ast.get_docstring(tree) or "").strip().splitlines()
    values: dict[str, object] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name) and target.id in ("FLAGS", "NEEDS_CUDA"):
                values[target.id] = ast.literal_eval(node.value)
    flags = tuple(str(f) for f in values.get("FLAGS", ()))  # type: ignore[attr-defined]
    summary = re.sub(r"^``python -m benchmarks \w+``:\s*", "", doc[0] if doc else "")
    summary = summary.replace("``", "")
    return summary, flags, bool(values.get("NEEDS_CUDA", False))


def list_benchmarks(known: list[str]) -> int:
    """``--list``: each benchmark with what it measures and the flags it takes."""
    for name in known:
        summary, flags, needs_cuda = describe(name)
        gpu = " (CUDA only)" if needs_cuda else ""
        print(f"{name}{gpu}: {summary}")
        print(f"    flags: {', '.join(flags) or 'none'}; details: `python -m benchmarks {name} -h`")
    return 0


def _is_number(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return True


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
