"""``crossentropy bench`` dispatches to benchmarks/__main__.py of the working directory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from crossentropy.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_bench_outside_a_checkout_fails_cleanly(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".")])
    for name in [m for m in sys.modules if m == "benchmarks" or m.startswith("benchmarks.")]:
        monkeypatch.delitem(sys.modules, name)
    assert main(["bench", "linear_ce_cpu"]) == 2
    err = capsys.readouterr().err
    assert "source checkout" in err and "Traceback" not in err


def test_bench_dispatches_to_the_checkout(tmp_path, monkeypatch, capsys):
    pkg = tmp_path / "benchmarks"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text("def main(argv):\n    print('ran', argv)\n    return 3\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".")])
    for name in [m for m in sys.modules if m == "benchmarks" or m.startswith("benchmarks.")]:
        monkeypatch.delitem(sys.modules, name)
    assert main(["bench", "toy", "--quick"]) == 3
    assert "ran ['toy', '--quick']" in capsys.readouterr().out


def _toy_runner(tmp_path, monkeypatch):
    # The repository's runner over a toy package: a GPU-only module, one whose argparse refuses a
    # value (SystemExit 2), and one that runs.
    root = Path(__file__).resolve().parents[2]
    pkg = tmp_path / "benchmarks"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text((root / "benchmarks" / "__main__.py").read_text())
    (pkg / "a_gpu.py").write_text(
        "NEEDS_CUDA = True\nFLAGS = ('--quick',)\ndef main(argv):\n    return 7\n"
    )
    (pkg / "b_strict.py").write_text(
        "import argparse\n"
        "FLAGS = ('--n', '--quick')\n"
        "def main(argv):\n"
        "    parser = argparse.ArgumentParser(prog='b_strict')\n"
        "    parser.add_argument('--n', type=int)\n"
        "    parser.add_argument('--quick', action='store_true')\n"
        "    print('b got', parser.parse_args(argv))\n"
        "    return 0\n"
    )
    (pkg / "c_ok.py").write_text(
        '"""``python -m benchmarks c_ok``: the one that runs."""\n'
        "FLAGS = ('--quick',)\ndef main(argv):\n    print('c ran', argv)\n    return 0\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".")])
    for name in [m for m in sys.modules if m == "benchmarks" or m.startswith("benchmarks.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)


def test_running_all_benchmarks_skips_gpu_ones_and_hands_each_its_own_flags(
    tmp_path, monkeypatch, capsys
):
    _toy_runner(tmp_path, monkeypatch)
    assert main(["bench", "--quick", "--n", "nine"]) == 2
    captured = capsys.readouterr()
    assert "skipping a_gpu (needs a CUDA GPU" in captured.out
    assert "c ran ['--quick']" in captured.out  # --n is b_strict's alone
    assert "argument --n: invalid int value: 'nine'" in captured.err


def test_a_flag_no_benchmark_takes_is_refused_before_anything_runs(tmp_path, monkeypatch, capsys):
    _toy_runner(tmp_path, monkeypatch)
    assert main(["bench", "--quik"]) == 2
    captured = capsys.readouterr()
    assert "unknown flag '--quik'" in captured.err and "--n, --quick" in captured.err
    assert "ran" not in captured.out


def test_names_after_flags_are_refused_and_negative_values_are_values(
    tmp_path, monkeypatch, capsys
):
    _toy_runner(tmp_path, monkeypatch)
    assert main(["bench", "--quick", "c_ok"]) == 2  # would otherwise run every benchmark
    captured = capsys.readouterr()
    assert "name benchmarks before flags" in captured.err and "ran" not in captured.out
    assert main(["bench", "b_strict", "--n", "-5"]) == 0
    assert "n=-5" in capsys.readouterr().out


def test_list_names_each_benchmark_with_its_flags_without_running_it(tmp_path, monkeypatch, capsys):
    _toy_runner(tmp_path, monkeypatch)
    assert main(["bench", "--list"]) == 0
    out = capsys.readouterr().out
    assert "a_gpu (CUDA only)" in out and "flags: --n, --quick" in out
    assert "c_ok: the one that runs." in out
    assert "ran" not in out and "b got" not in out
    assert "benchmarks" not in sys.modules or "benchmarks.c_ok" not in sys.modules


@pytest.mark.parametrize("argv", [["--list"], ["linear_ce_cpu", "-h"], [], ["info", "--quick"]])
def test_outside_a_checkout_one_line_says_a_checkout_is_needed(argv, tmp_path):
    """An installed crossentropy run from a directory without benchmarks/ (the wheel does not ship
    them): one line on stderr, exit 2, no traceback."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}  # importable, but not from the cwd
    env.pop("CROSSENTROPY_TRACEBACK", None)
    proc = subprocess.run(
        [sys.executable, "-m", "crossentropy", "bench", *argv],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert lines[0].startswith("crossentropy bench: error: benchmarks need a source checkout")
    assert str(tmp_path) in lines[0]


def _help_text(text: str, flag: str) -> str | None:
    """The help argparse prints for ``flag`` (same line, or the indented line below when the
    option's name is long); None when the flag is not listed."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(rf"^  {re.escape(flag)}(?: \S+)?(?:\s{{2,}}(\S.*))?$", line)
        if m:
            if m.group(1):
                return m.group(1)
            below = lines[i + 1] if i + 1 < len(lines) else ""
            return below.strip() if re.match(r"^\s{6,}[^-\s]", below) else ""
    return None


def test_help_text_parser_reads_argparse_layouts():
    text = (
        "options:\n"
        "  -h, --help         show this help message and exit\n"
        "  --rounds ROUNDS    rounds of\n"
        "                     everything\n"
        "  --a-very-long-option-name VALUE\n"
        "                        below the name\n"
        "  --bare\n"
        "  --next NEXT        after a bare one\n"
    )
    assert _help_text(text, "--rounds") == "rounds of"
    assert _help_text(text, "--a-very-long-option-name") == "below the name"
    assert _help_text(text, "--bare") == ""
    assert _help_text(text, "--missing") is None


def _benchmark_flags() -> list[tuple[str, str]]:
    from benchmarks.__main__ import available, describe

    return [(name, flag) for name in available() for flag in describe(name)[1]]


@pytest.mark.parametrize(("name", "flag"), _benchmark_flags())
def test_bench_name_h_explains_every_flag_the_benchmark_takes(name, flag, monkeypatch, capsys):
    """`crossentropy bench NAME -h` (from the checkout) lists each of NAME's FLAGS with help."""
    monkeypatch.chdir(ROOT)
    assert main(["bench", name, "-h"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: "), out[:200]
    helped = _help_text(out, flag)
    assert helped is not None, f"{name} -h does not list {flag}"
    assert len(helped) >= 3, f"{name} -h gives {flag} no help text"
