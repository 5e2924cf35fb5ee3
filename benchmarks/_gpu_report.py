"""Where ``python -m benchmarks gpu_check`` writes, line by line, so that a killed stage loses only
the measurement it was taking.

Each stage owns one section: ``NN_name.md`` and ``NN_name.json`` in the results folder
(``benchmarks/results/gpu_check/``, or ``$GPU_CHECK_RESULTS``), both stamped with the device,
torch, Triton and Python versions and the commit. When ``$OUT`` is set (the device tool's folder of
files that come back), every line also goes to ``$OUT/gpu_check.md`` and every row to
``$OUT/gpu_check.jsonl``, and after each stage the section files are packed into
``$OUT/gpu_check_results.tar`` (the tool returns at most 8 files, so not one per section).
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import tarfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
OUT_MD = "gpu_check.md"
OUT_JSONL = "gpu_check.jsonl"
OUT_TAR = "gpu_check_results.tar"
STATUSES = ("running", "ok", "failed", "skipped", "timed out", "crashed", "not run")


def results_dir(mode: str = "full") -> Path:
    """``$GPU_CHECK_RESULTS``, else ``benchmarks/results/gpu_check`` (``_quick``, ``_smoke`` for
    the small-shape modes, which git ignores)."""
    env = os.environ.get("GPU_CHECK_RESULTS")
    if env:
        return Path(env)
    return RESULTS / ("gpu_check" if mode == "full" else f"gpu_check_{mode}")


def out_dir() -> Path | None:
    env = os.environ.get("OUT")
    return Path(env) if env else None


def commit() -> str:
    """The checked-out commit: from git where the tree has one, else the bundle's note of it
    (the device tool copies the working tree without .git)."""
    try:
        done = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    note = ROOT / ".gpu-bundle" / "COMMIT"
    if note.is_file():
        return note.read_text(encoding="utf-8").strip() + " (from .gpu-bundle/COMMIT)"
    return "unknown"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def stamp(device: bool = True) -> dict[str, str]:
    """Device and versions. Triton's version is read from its metadata, not by importing it:
    importing Triton fixes TRITON_INTERPRET, which the test stage's conftest must still set.
    ``device=False`` leaves CUDA alone (the driver, which must not hold a CUDA context)."""
    info = {
        "device": "no CUDA" if device else "(see the stage sections)",
        "torch": _version("torch"),
        "cuda": "-",
        "triton": _version("triton"),
        "python": platform.python_version(),
        "commit": commit(),
        "utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
    }
    if not device:
        return info
    try:
        import torch

        info["cuda"] = str(torch.version.cuda or "-")
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info["device"] = f"{props.name} ({props.total_memory / 2**30:.0f} GiB)"
    except Exception as exc:  # a broken torch is itself a finding: report it in the stamp
        info["device"] = f"torch unusable: {type(exc).__name__}: {exc}"
    return info


def stamp_line(info: dict[str, str]) -> str:
    return (
        f"Device: {info['device']}; torch {info['torch']} (CUDA {info['cuda']}), "
        f"Triton {info['triton']}, Python {info['python']}; commit {info['commit']}; "
        f"{info['utc']} UTC"
    )


def cell(value: object) -> str:
    """One Markdown table cell: floats to 4 significant digits, no pipes or newlines."""
    if isinstance(value, float):
        text = f"{value:.4g}"
    else:
        text = str(value)
    return text.replace("|", "/").replace("\n", " ")


class Section:
    """One stage's Markdown and JSON files, rewritten or appended after every line.

    Args:
        index: position of the stage in the check (the files sort in running order).
        name: file-name stem (letters, digits, ``_``).
        title: the Markdown heading.
        results: the results folder; ``out``: ``$OUT`` or None.
        fresh: start new files (the stage) or append to existing ones (the driver, after a
            stage was killed).
        info: the stamp (computed when None).
    """

    def __init__(
        self,
        index: int,
        name: str,
        title: str,
        *,
        results: Path,
        out: Path | None,
        fresh: bool = True,
        info: dict[str, str] | None = None,
    ) -> None:
        if not name.replace("_", "").isalnum():
            raise ValueError(f"section name must be letters, digits and '_', got {name!r}")
        self.name = name
        self.md = results / f"{index:02d}_{name}.md"
        self.json = results / f"{index:02d}_{name}.json"
        self.out = out
        self.echo = True  # print each line too (off while pytest prints its own progress)
        self._columns: tuple[str, ...] = ()
        results.mkdir(parents=True, exist_ok=True)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
        if not fresh and self.json.is_file():
            self.doc: dict[str, Any] = json.loads(self.json.read_text(encoding="utf-8"))
            return
        info = stamp() if info is None else info
        self.doc = {
            "section": name,
            "title": title,
            "stamp": info,
            "status": "running",
            "note": "",
            "lines": [],
            "rows": [],
        }
        self.md.write_text("", encoding="utf-8")
        self.line(f"## {title}")
        self.line()
        self.line(stamp_line(info))
        self.line()

    # -- writing
    def line(self, text: str = "") -> None:
        """Append one Markdown line (to the section and to ``$OUT/gpu_check.md``)."""
        with self.md.open("a", encoding="utf-8") as fh:
            fh.write(text + "\n")
        if self.out is not None:
            with (self.out / OUT_MD).open("a", encoding="utf-8") as fh:
                fh.write(text + "\n")
        if text:
            self.doc["lines"].append(text)
            self._save()
        if self.echo:
            print(text, flush=True)

    def table(self, *columns: str) -> None:
        """Start a Markdown table; :meth:`row` fills it."""
        self._columns = columns
        self.line("| " + " | ".join(columns) + " |")
        self.line("|" + "---|" * len(columns))

    def row(self, *cells: object, **data: object) -> None:
        """One table row; ``data`` (default: the cells under the column names) goes to the JSON."""
        if self._columns and len(cells) != len(self._columns):
            raise ValueError(f"row has {len(cells)} cells, the table {len(self._columns)} columns")
        record = dict(data) if data else dict(zip(self._columns, cells))
        self.doc["rows"].append(record)
        if self.out is not None:
            with (self.out / OUT_JSONL).open("a", encoding="utf-8") as fh:
                fh.write(json.dumps({"section": self.name, **record}, default=str) + "\n")
        self.line("| " + " | ".join(cell(c) for c in cells) + " |")

    def finish(self, status: str, note: str = "") -> None:
        """Close the section with a status (one of ``STATUSES``) and a one-line note."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        self.doc["status"], self.doc["note"] = status, note
        self.line()
        self.line(f"Status: **{status}**" + (f": {note}" if note else ""))
        self.line()

    @property
    def status(self) -> str:
        return str(self.doc.get("status", "running"))

    def _save(self) -> None:
        tmp = self.json.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.doc, indent=1, default=str) + "\n", encoding="utf-8")
        tmp.replace(self.json)


def pack(results: Path, out: Path | None) -> None:
    """Refresh ``$OUT/gpu_check_results.tar`` with the results folder's Markdown and JSON files
    (``tar -xf ... -C benchmarks/results`` puts them back in place)."""
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (OUT_TAR + ".tmp")
    with tarfile.open(tmp, "w") as tar:
        for path in [*sorted(results.glob("*.md")), *sorted(results.glob("*.json"))]:
            tar.add(path, arcname=f"{results.name}/{path.name}")
    tmp.replace(out / OUT_TAR)
