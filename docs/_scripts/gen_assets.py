"""Generated parts of the documentation, written into docs/generated/ before `mkdocs build`.

Facts that change with the code or the installed packages (versions, counts of models, the output
of a command) are written here, from their one source, never typed into a page.

- ``demo_report.png``: the figure of ``crossentropy demo --quick --device cpu`` (about 15 s on a
  2-core CPU), with ``demo_run.md``, a caption saying how and when it was made. It is drawn again
  only when a file of the demo package is newer than it (or with ``--force``).
- ``benchmark_results.md``: the Markdown tables in benchmarks/results/ (the ``*_quick`` ones left
  out), one section per file, in the order of their names.
- ``hf_models.md``: the Hugging Face causal LMs the test sweep matches, refuses or cannot build,
  from the sweep's pinned lists (``tests/hf/_hf_outcomes.py``) and the installed transformers.
- ``examples.md``: one section per script of examples/, from its docstring (summary, the extras it
  needs, its command), which the test of the examples reads too.
- ``cli_*.txt``: what ``crossentropy score`` and ``crossentropy info`` print, run here.

Run by ``make docs``; it needs the ``demo`` and ``hf`` extras and no network.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "generated"
DEMO_SOURCES = ROOT / "src" / "crossentropy" / "demo"
RESULTS = ROOT / "benchmarks" / "results"
EXAMPLES = ROOT / "examples"
HF_TESTS = ROOT / "tests" / "hf"


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


# ------------------------------------------------------------------------------------------------
# Hugging Face: the models of the sweep


def hf_models() -> None:
    """The sweep's outcome for each causal LM class of the installed transformers."""
    sys.path.insert(0, str(HF_TESTS))
    try:
        from _hf_outcomes import CANNOT_RUN, REFUSAL_REASONS, REFUSED
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    finally:
        sys.path.remove(str(HF_TESTS))
    classes: dict[str, list[str]] = {}
    for model_type, names in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.items():
        for name in names if isinstance(names, (list, tuple)) else [names]:
            classes.setdefault(model_type, []).append(name)
    total = sum(len(v) for v in classes.values())
    refused = {t: v for t, v in classes.items() if t in REFUSED}
    untested = {t: v for t, v in classes.items() if t in CANNOT_RUN}
    n_refused = sum(len(v) for v in refused.values())
    n_untested = sum(len(v) for v in untested.values())
    lines = [
        f"With transformers {version('transformers')} (the version these pages were built "
        f"with), `tests/hf/test_hf_sweep.py` builds each of its {total} `*ForCausalLM` classes "
        "from a tiny configuration derived from the class's own. Patched, "
        f"**{total - n_refused - n_untested}** compute the same loss and gradients as unpatched; "
        f"**{n_refused}** are refused with `UnsupportedModelError`; **{n_untested}** cannot be "
        "built or run from a tiny configuration, so the sweep cannot check them (patching one "
        "of those still matches its loss or refuses, by the same mechanism).",
        "",
        "**Refused**, and why:",
        "",
        "| model type | class | why |",
        "|---|---|---|",
    ]
    for model_type in sorted(refused):
        why = REFUSAL_REASONS[REFUSED[model_type]]
        for name in refused[model_type]:
            lines.append(f"| `{model_type}` | `{name}` | {why} |")
    lines += [
        "",
        "**Not checked** (no tiny model), with what fails:",
        "",
        "| model type | class | what fails |",
        "|---|---|---|",
    ]
    for model_type in sorted(untested):
        what = CANNOT_RUN[model_type].replace("|", "\\|")
        for name in untested[model_type]:
            lines.append(f"| `{model_type}` | `{name}` | `{what}` |")
    (OUT / "hf_models.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"gen_assets: {total} causal LMs ({n_refused} refused, {n_untested} not checked)")


# ------------------------------------------------------------------------------------------------
# Examples: the page is their docstrings


@dataclass(frozen=True)
class Example:
    """What an example's docstring says about it."""

    name: str
    summary: str
    extras: tuple[str, ...]  # () when the core (NumPy) is enough
    command: str
    body: str

    @property
    def install(self) -> str:
        return f"crossentropy[{','.join(self.extras)}]" if self.extras else "crossentropy"


_NEEDS = re.compile(r"^Needs: crossentropy(?:\[([a-z,]+)\])?$")


def read_examples(folder: Path = EXAMPLES) -> list[Example]:
    """Every ``examples/*.py``: its docstring's summary line, then ``Needs: crossentropy[EXTRAS]``
    and ``Run: COMMAND`` lines, then the description. A docstring without them is an error."""
    found = []
    for path in sorted(folder.glob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        lines = (doc or "").splitlines()
        needs = _NEEDS.match(lines[2]) if len(lines) > 3 else None
        if needs is None or not lines[3].startswith("Run: ") or lines[1:2] != [""]:
            raise SystemExit(
                f"{path.relative_to(ROOT)}: the docstring must open with a summary line, a blank "
                "line, 'Needs: crossentropy[EXTRAS]' (or 'Needs: crossentropy') and "
                "'Run: COMMAND'"
            )
        extras = tuple(needs.group(1).split(",")) if needs.group(1) else ()
        body = "\n".join(lines[4:]).strip()
        found.append(Example(path.name, lines[0], extras, lines[3][len("Run: ") :], body))
    return found


def _markdown(rst: str) -> str:
    """The docstring's RST literals (``x``) as Markdown code; indented blocks stay code blocks."""
    return re.sub(r"``([^`]+)``", r"`\1`", rst).replace("::\n", ":\n")


def examples_page() -> None:
    examples = read_examples()
    lines = [
        "| script | what it shows | needs | command |",
        "|---|---|---|---|",
    ]
    for ex in examples:
        anchor = re.sub(r"[^a-z0-9_-]", "", ex.name.lower())
        lines.append(
            f"| [`{ex.name}`](#{anchor}) | {_markdown(ex.summary)} | `{ex.install}` | "
            f"`{ex.command.split(' [')[0]}` |"
        )
    for ex in examples:
        lines += [
            "",
            f"## {ex.name}",
            "",
            _markdown(ex.summary),
            "",
            f"Needs `pip install '{ex.install}'` (from a checkout: `pip install -e '.[{','.join(ex.extras)}]'`)."
            if ex.extras
            else "Needs only the core package (NumPy).",
            "",
            "```bash",
            ex.command,
            "```",
            "",
            _markdown(ex.body),
        ]
    (OUT / "examples.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"gen_assets: {len(examples)} examples")


# ------------------------------------------------------------------------------------------------
# Command-line transcripts


SCORE_FILES = {
    "pred.csv": "cat,dog,bird,label\n0.7,0.2,0.1,cat\n0.1,0.8,0.1,dog\n0.2,0.3,0.5,dog\n"
    "0.6,0.3,0.1,bird\n",
    "bad.csv": "cat,dog,label\n0.5,0.49,cat\n",
    "ids.csv": "id,cat,dog,label\n17,0.9,0.1,0\n18,0.3,0.7,1\n19,0.5,0.5,1\n",
}
# (file shown with cat, the command's arguments, a file piped to its standard input)
SCORE_RUNS: list[tuple[str | None, list[str], str | None]] = [
    ("pred.csv", ["score", "pred.csv"], None),
    ("bad.csv", ["score", "bad.csv"], None),
    ("ids.csv", ["score", "-", "--format", "csv", "--json"], "ids.csv"),
]


def _run_cli(argv: list[str], cwd: Path, stdin: Path | None = None) -> str:
    env = {**os.environ, "COLUMNS": "80", "NO_COLOR": "1"}
    env.pop("CROSSENTROPY_TRACEBACK", None)
    with open(stdin, "rb") if stdin is not None else open(os.devnull, "rb") as feed:
        done = subprocess.run(
            [sys.executable, "-m", "crossentropy", *argv],
            cwd=cwd,
            stdin=feed,
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
    if done.returncode not in (0, 2) or "Traceback" in done.stderr:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise SystemExit(f"gen_assets: crossentropy {' '.join(argv)} failed ({done.returncode})")
    return done.stderr + done.stdout


def cli_transcripts() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, text in SCORE_FILES.items():
            (folder / name).write_text(text)
        for shown, argv, stdin in SCORE_RUNS:
            parts = []
            if shown is not None:
                parts.append(f"$ cat {shown}\n{SCORE_FILES[shown]}")
            prefix = f"cat {stdin} | " if stdin else ""
            output = _run_cli(argv, folder, folder / stdin if stdin else None)
            if "--json" in argv:  # the head of the report is enough to show its form
                output = "\n".join(output.splitlines()[:12]) + "\n  ...\n"
            parts.append(f"$ {prefix}crossentropy {' '.join(argv)}\n{output}")
            stem = Path(shown or argv[1]).stem
            (OUT / f"cli_score_{stem}.txt").write_text("".join(parts), encoding="utf-8")
    info = _run_cli(["info"], ROOT)
    (OUT / "cli_info.txt").write_text("$ crossentropy info\n" + info, encoding="utf-8")
    print("gen_assets: command-line transcripts")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="run the demo even if up to date")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    demo_figure(args.force)
    benchmark_tables()
    hf_models()
    examples_page()
    cli_transcripts()


if __name__ == "__main__":
    main()
