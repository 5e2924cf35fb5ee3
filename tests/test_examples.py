"""Every script in examples/ runs, with short settings, in an environment that has only the extras
its docstring names (the Examples page is written from the same docstrings), and shows what it
claims.

``tests/_with_extras.py`` hides every package that only other extras install, so an example
that imports one it does not declare fails here as it would in a fresh virtual environment (the
one `make demo` makes has ``.[cli,demo]``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
RUNNER = Path(__file__).with_name("_with_extras.py")


def _gen_assets() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_assets", ROOT / "docs/_scripts/gen_assets.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


CATALOG = _gen_assets().read_examples()


def _run(extras: tuple[str, ...], script: Path, args: list[str], cwd: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(RUNNER), ",".join(extras) or "-", str(script), *args]
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def _distill(tmp: Path) -> tuple[list[str], Callable[[str], None]]:
    def check(out: str) -> None:
        kl = json.loads((tmp / "distill.json").read_text())["held_out_kl"]
        assert kl[-1] < 0.7 * kl[0]
        assert (tmp / "distill.png").stat().st_size > 1000
        assert f"KL fell from {kl[0]:.4f} to {kl[-1]:.4f}" in out

    return ["--steps", "50", "--out", str(tmp)], check


def _distill_topk(tmp: Path) -> tuple[list[str], Callable[[str], None]]:
    def check(out: str) -> None:
        saved = json.loads((tmp / "distill_topk.json").read_text())
        topk, full = saved["held_out_kl_topk"], saved["held_out_kl_full"]
        assert topk[0] == full[0]  # the same initial student, measured the same way
        assert topk[-1] < 0.75 * topk[0]  # trained from the file alone
        assert full[-1] < topk[-1]  # the whole teacher tells more than its top-20
        assert (tmp / "teacher_top20.pt").stat().st_size > 0
        assert (tmp / "distill_topk.png").stat().st_size > 1000
        assert "wrote the teacher's top-20" in out

    return ["--steps", "50", "--sequences", "256", "--out", str(tmp)], check


def _grpo(tmp: Path) -> tuple[list[str], Callable[[str], None]]:
    def check(out: str) -> None:
        rows = dict(line.split() for line in out.splitlines() if len(line.split()) == 2)
        assert float(rows["loss_difference"]) < 1e-10
        assert float(rows["worst_relative_gradient_difference"]) < 1e-8
        assert float(rows["mean_ratio"]) != 1.0  # the ratios were exercised, not all 1
        assert "equals the step from materialised logits" in out

    return ["--groups", "2", "--samples", "3", "--length", "12"], check


def _predictions(tmp: Path) -> tuple[list[str], Callable[[str], None]]:
    def check(out: str) -> None:
        # the file the repository ships is the one the script writes
        assert (tmp / "p.csv").read_text() == (EXAMPLES / "predictions.csv").read_text()

    return ["--out", str(tmp / "p.csv")], check


def _vocab_parallel(tmp: Path) -> tuple[list[str], Callable[[str], None]]:
    # one process here; tests/distributed runs it under torchrun on two
    def check(out: str) -> None:
        assert "split [101]" in out and "single-process loss" in out

    return ["--steps", "2", "--vocab", "101", "--tokens", "64"], check


def _contrastive(tmp: Path) -> tuple[list[str], Callable[[str], None]]:
    # the accuracy's rise and the loss check in two processes: tests/test_example_contrastive.py
    def check(out: str) -> None:
        assert "retrieval top-1" in out and "one-process loss" in out

    return ["--steps", "10", "--every", "10", "--batch", "32", "--held-out", "64"], check


SHORT: dict[str, Callable[[Path], tuple[list[str], Callable[[str], None]]]] = {
    "contrastive_two_towers.py": _contrastive,
    "distill.py": _distill,
    "distill_topk.py": _distill_topk,
    "grpo_step.py": _grpo,
    "make_predictions.py": _predictions,
    "vocab_parallel.py": _vocab_parallel,
}


def test_every_example_has_a_docstring_header_and_short_settings() -> None:
    assert {ex.name for ex in CATALOG} == {p.name for p in EXAMPLES.glob("*.py")}
    assert {ex.name for ex in CATALOG} == set(SHORT)
    for ex in CATALOG:
        assert f"examples/{ex.name}" in ex.command  # the command runs this script


@pytest.mark.parametrize("example", CATALOG, ids=lambda ex: ex.name)
def test_example_runs_with_only_the_extras_it_names(example, tmp_path: Path) -> None:
    args, check = SHORT[example.name](tmp_path)
    check(_run(example.extras, EXAMPLES / example.name, args, tmp_path))


def test_the_extras_harness_hides_what_an_extra_does_not_install(tmp_path: Path) -> None:
    # the case: grpo_step.py in the environment `make demo` makes (.[cli,demo])
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import importlib.util, sys\n"
        "assert importlib.util.find_spec('transformers') is None\n"
        "import matplotlib, torch\n"
        "try:\n"
        "    import transformers\n"
        "except ModuleNotFoundError:\n"
        "    print('transformers hidden')\n"
    )
    assert "transformers hidden" in _run(("cli", "demo"), probe, [], tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, str(RUNNER), "cli,demo", str(EXAMPLES / "grpo_step.py"), "--groups", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    assert "ModuleNotFoundError: import of transformers halted" in done.stderr
