"""The wheels ``scripts/gpu_check.sh`` carries to a GPU machine that has no package index.

``python -m benchmarks._gpu_bundle download DIR`` (what ``make gpu-bundle`` runs) fetches exactly
the pinned wheels of ``scripts/gpu_bundle.txt`` for CPython 3.12 on manylinux x86_64, whatever
Python runs it; ``check DIR`` says whether every requirement of those wheels is met by the bundle
or by the base that any Python with torch has; ``install DIR TARGET`` (run on the GPU machine,
standard library only) installs the wheels whose distribution that Python lacks into TARGET.

Wheels travel rather than installed folders: they are a third of the size, and the device tool
carries at most 64 MiB with the working tree.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIST = ROOT / "scripts" / "gpu_bundle.txt"
# The GPU machine's interpreter; the tags below are what pip accepts for it.
PYTHON_VERSION = "3.12"
PLATFORMS = (
    "manylinux2014_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_28_x86_64",
)
# What torch itself depends on (and numpy): present wherever torch is, so never carried.
BASE = frozenset(
    {
        "torch",
        "triton",
        "numpy",
        "filelock",
        "fsspec",
        "jinja2",
        "markupsafe",
        "networkx",
        "sympy",
        "mpmath",
        "typing-extensions",
        "setuptools",
    }
)
# Baselines whose version matters for comparison with earlier measurements: installed unless that
# exact version is already there. Every other distribution is installed only when missing, so
# that a machine's own consistent set (transformers with its hub client, say) is never mixed.
PINNED = frozenset({"liger-kernel", "cut-cross-entropy"})
# What the device tool sends in one call: the working tree and the carried paths together.
CARRY_LIMIT_MIB = 64
# Environment markers of the GPU machine, for the requirements in the wheels' metadata.
MARKERS = {
    "python_version": PYTHON_VERSION,
    "python_full_version": PYTHON_VERSION + ".3",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "extra": "",
}


def normalize(name: str) -> str:
    """PEP 503 name: lower case, runs of ``-_.`` as one ``-``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_list(path: Path = LIST) -> dict[str, str]:
    """``{normalized name: version}`` of the bundle list; every line must be ``name==version``."""
    pins: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)", line)
        if match is None:
            raise ValueError(f"{path}:{number}: expected 'name==version', got {line!r}")
        name = normalize(match[1])
        if name in pins:
            raise ValueError(f"{path}:{number}: {match[1]} is listed twice")
        if name in BASE:
            raise ValueError(f"{path}:{number}: {match[1]} is in the base every torch install has")
        pins[name] = match[2]
    return pins


def wheel_name(path: Path) -> tuple[str, str]:
    """(normalized distribution name, version) from a wheel's file name."""
    parts = path.name.split("-")
    if not path.name.endswith(".whl") or len(parts) < 5:
        raise ValueError(f"not a wheel file name: {path.name}")
    return normalize(parts[0]), parts[1]


def download(dest: Path, path: Path = LIST, python: str = sys.executable) -> None:
    """Fetch the listed wheels for the GPU machine (no dependency resolution: the list is closed)."""
    pins = read_list(path)
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.whl"):
        old.unlink()
    cmd = [python, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
    cmd += ["--python-version", PYTHON_VERSION, "--implementation", "cp", "-d", str(dest)]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    cmd += [f"{name}=={version}" for name, version in pins.items()]
    subprocess.run(cmd, check=True)


def _requirement_parser() -> type:
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pip carries its own copy
        from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef,assignment]
    return Requirement


def unmet(wheels: Path, path: Path = LIST) -> list[str]:
    """Problems that would stop an import on the GPU machine: a listed wheel missing, or a
    requirement (under the GPU machine's markers, extras left out) that neither the bundle nor
    the base meets."""
    requirement = _requirement_parser()
    pins = read_list(path)
    found = {wheel_name(w): w for w in sorted(wheels.glob("*.whl"))}
    have = {name: version for name, version in found}
    problems = [f"{n}=={v}: no wheel" for n, v in pins.items() if have.get(n) != v]
    problems += [f"{n}=={v}: not in the list" for n, v in have.items() if n not in pins]
    for (name, _), wheel in found.items():
        with zipfile.ZipFile(wheel) as zf:
            meta = next(m for m in zf.namelist() if m.endswith(".dist-info/METADATA"))
            text = zf.read(meta).decode("utf-8")
        for line in text.splitlines():
            if not line.startswith("Requires-Dist:"):
                continue
            req = requirement(line.split(":", 1)[1].strip())
            if req.marker is not None and not req.marker.evaluate(MARKERS):
                continue
            dep = normalize(req.name)
            if dep in BASE:
                continue
            if dep not in have:
                problems.append(f"{name} needs {req}: not bundled")
            elif have[dep] not in req.specifier:
                problems.append(f"{name} needs {req}: bundled {have[dep]}")
    return problems


def tree_mib(root: Path = ROOT) -> float | None:
    """Size of what the device tool sends besides carried paths (tracked and untracked files that
    git does not ignore), or None without git."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=root,
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    files = [root / name for name in listed.decode().split("\0") if name]
    return sum(f.stat().st_size for f in files if f.is_file()) / 2**20


def present(name: str) -> str | None:
    """Version of an installed distribution in this interpreter, or None."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def choose(wheels: list[Path], installed: dict[str, str | None]) -> tuple[list[Path], list[str]]:
    """(wheels to install, lines saying why each other one is left out), given the versions
    already installed (``installed[name]``, None when missing)."""
    chosen, kept = [], []
    for wheel in wheels:
        name, version = wheel_name(wheel)
        there = installed.get(name)
        if there is None:
            chosen.append(wheel)
        elif name in PINNED and there != version:
            chosen.append(wheel)  # shadows the other version: comparisons need this one
        else:
            kept.append(f"{name} {there} (the machine's)")
    return chosen, kept


def _unpack(wheel: Path, target: Path) -> None:
    # A wheel is a zip of its installed files; a "<dist>.data/purelib|platlib" folder, if any,
    # belongs at the top level.
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(target)
    for data in target.glob("*.data"):
        for kind in ("purelib", "platlib"):
            sub = data / kind
            if sub.is_dir():
                for item in sub.iterdir():
                    shutil.move(str(item), str(target / item.name))
        shutil.rmtree(data)


def install(wheels: Path, target: Path) -> int:
    """Install into ``target`` the bundled wheels whose distribution this Python lacks."""
    found = sorted(wheels.glob("*.whl"))
    if not found:
        print(f"gpu bundle: no wheels in {wheels}; run 'make gpu-bundle' and carry it")
        return 0
    installed = {wheel_name(w)[0]: present(wheel_name(w)[0]) for w in found}
    chosen, kept = choose(found, installed)
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    if chosen:
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps"]
        cmd += ["--no-compile", "--disable-pip-version-check", "--target", str(target)]
        done = subprocess.run(cmd + [str(w) for w in chosen], check=False)
        if done.returncode != 0:  # no pip, or a pip that refuses: wheels are plain zip files
            print("gpu bundle: pip failed; unpacking the wheels instead")
            shutil.rmtree(target)
            target.mkdir(parents=True)
            for wheel in chosen:
                _unpack(wheel, target)
    names = ", ".join(f"{wheel_name(w)[0]} {wheel_name(w)[1]}" for w in chosen)
    print(f"gpu bundle: installed into {target}: {names or 'nothing'}")
    if kept:
        print(f"gpu bundle: already there, kept: {', '.join(kept)}")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._gpu_bundle")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("download", help="fetch the listed wheels").add_argument("dir", type=Path)
    sub.add_parser("check", help="is the bundle complete?").add_argument("dir", type=Path)
    p_install = sub.add_parser("install", help="install what this Python lacks")
    p_install.add_argument("dir", type=Path)
    p_install.add_argument("target", type=Path)
    args = parser.parse_args(argv)
    if args.cmd == "download":
        download(args.dir)
        return 0
    if args.cmd == "check":
        problems = unmet(args.dir)
        size = sum(w.stat().st_size for w in args.dir.glob("*.whl")) / 2**20
        print(f"gpu bundle: {len(read_list())} wheels, {size:.1f} MiB in {args.dir}")
        tree = tree_mib()
        if tree is not None:
            print(
                f"gpu bundle: with the working tree ({tree:.1f} MiB) the device tool carries "
                f"{size + tree:.1f} MiB of its {CARRY_LIMIT_MIB} MiB"
            )
            if size + tree > CARRY_LIMIT_MIB:
                problems.append(f"{size + tree:.1f} MiB is too much to carry")
        for p in problems:
            print(f"gpu bundle: {p}", file=sys.stderr)
        return 1 if problems else 0
    return install(args.dir, args.target)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
