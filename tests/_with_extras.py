"""Run a script as if only some extras of crossentropy were installed.

    python tests/_with_extras.py EXTRAS SCRIPT [ARGS ...]

``EXTRAS`` is a comma-separated list (``hf,demo``; ``-`` for none). Every top-level module that
only the other extras install (their requirements, minus everything the named extras and the core
pull in, dependencies of dependencies included) is made unimportable the way Python documents it,
with ``sys.modules[name] = None``: ``import`` raises ModuleNotFoundError and
``importlib.util.find_spec`` answers None, as in an environment without the package. Then
``SCRIPT`` runs as ``__main__``. The installed metadata of crossentropy says which distribution
belongs to which extra, so this file holds no list of its own.
"""

from __future__ import annotations

import importlib.metadata as metadata
import re
import runpy
import sys

from packaging.requirements import Requirement

SELF = "crossentropy"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements(dist: str, extra: str = "") -> list[Requirement]:
    try:
        texts = metadata.requires(dist) or []
    except metadata.PackageNotFoundError:
        return []
    out = []
    for text in texts:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({"extra": extra}):
            out.append(req)
    return out


def _closure(names: set[str]) -> set[str]:
    """The distributions ``names`` need, transitively (each under the markers of this machine)."""
    seen: set[str] = set()
    stack = list(names)
    while stack:
        name = _norm(stack.pop())
        if name in seen:
            continue
        seen.add(name)
        stack.extend(r.name for r in _requirements(name) if _norm(r.name) != SELF)
    return seen


def blocked_modules(extras: list[str]) -> set[str]:
    """Top-level modules installed only by extras other than ``extras``."""
    known = metadata.metadata(SELF).get_all("Provides-Extra") or []
    unknown = set(extras) - set(known)
    if unknown:
        raise SystemExit(f"_with_extras: unknown extras {sorted(unknown)}; known: {known}")
    core = {r.name for r in _requirements(SELF)}
    wanted = set(core)
    for extra in extras:
        wanted |= {r.name for r in _requirements(SELF, extra)} - core
    allowed = _closure(wanted)
    every_extra = set()
    for extra in known:
        every_extra |= {_norm(r.name) for r in _requirements(SELF, extra)}
    blocked = every_extra - allowed - {SELF}
    modules = set()
    for module, dists in metadata.packages_distributions().items():
        if dists and all(_norm(d) in blocked for d in dists):
            modules.add(module)
    return modules


def main() -> None:
    extras_text, script, *args = sys.argv[1:]
    extras = [] if extras_text == "-" else extras_text.split(",")
    for module in sorted(blocked_modules(extras)):
        sys.modules[module] = None  # type: ignore[assignment]
    sys.argv = [script, *args]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
