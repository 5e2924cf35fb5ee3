"""Generated parts of the documentation, written into docs/generated/ before `mkdocs build`.

- ``demo_report.png``: the figure of ``crossentropy demo --quick --device cpu`` (about 15 s on a
  2-core CPU), with ``demo_run.md``, a caption saying how and when it was made. It is drawn again
  only when a file of the demo package is newer than it (or with ``--force``).
- ``benchmark_results.md``: the Markdown tables in benchmarks/results/ (the ``*_quick`` ones left
  out), one section per file, in the order of their names.

Run by ``make docs``; it needs the ``demo`` extra (``.[dev]`` has it) and no network.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "generated"
DEMO_SOURCES = ROOT / "src" / "crossentropy" / "demo"
RESULTS = ROOT / "benchmarks" / "results"


def _stale(target: Path, sources: list[Path]) -> bool:
    if not target.exists():
        return True
    newest = max((s.stat().st_mtime for s in sources), default=0.0)
    return newest > target.stat().st_mtime


def demo_figure(force: bool) -> None:
    png, caption = OUT / "demo_report.png", OUT / "demo_run.md"
    sources = sorted(DEMO_SOURCES.glob("*.py"))
    if not force and not _stale(png, sources) and caption.exists():
        print(f"gen_assets: {png.relative_to(ROOT)} is up to date")
        return
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "crossentropy", "demo", "--quick", "--device", "cpu"]
        cmd += ["--out", tmp]
        print("gen_assets: " + " ".join(cmd[1:]), flush=True)
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
            raise SystemExit(f"gen_assets: the demo failed (exit status {done.returncode})")
        summary = json.loads((Path(tmp) / "demo_summary.json").read_text())
        shutil.copyfile(Path(tmp) / "demo_report.png", png)
    config, timing = summary.get("config", {}), summary.get("timing", {})
    caption.write_text(
        "Drawn while these pages were built, by `crossentropy demo --quick --device cpu` "
        f"(seed {config.get('seed', 0)}, {config.get('steps', '?')} training steps; "
        f"{float(timing.get('total_s', 0.0)):.0f} s), with crossentropy "
        f"{version('crossentropy')} and torch {version('torch')}. "
        "The full demo (`crossentropy demo`, 1200 steps) draws the same panels with a model "
        "closer to the source.\n"
    )


def _demote(text: str) -> str:
    """Headings of an included result file two levels down, under the page's own."""
    return re.sub(r"^(#{1,4}) ", lambda m: "#" * (len(m.group(1)) + 2) + " ", text, flags=re.M)


def benchmark_tables() -> None:
    files = sorted(p for p in RESULTS.glob("*.md") if not p.stem.endswith("_quick"))
    parts = []
    for path in files:
        text = path.read_text(encoding="utf-8").strip()
        if not text.startswith("#"):
            text = f"# {path.stem}\n\n{text}"
        parts.append(_demote(text) + f"\n\n*From `benchmarks/results/{path.name}`.*\n")
    if not parts:
        parts.append("No results are stored in `benchmarks/results/` yet.\n")
    (OUT / "benchmark_results.md").write_text("\n".join(parts), encoding="utf-8")
    print(f"gen_assets: {len(files)} benchmark result file(s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="run the demo even if up to date")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    demo_figure(args.force)
    benchmark_tables()


if __name__ == "__main__":
    main()
