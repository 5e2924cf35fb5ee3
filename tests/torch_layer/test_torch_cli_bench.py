"""``crossentropy bench`` dispatches to benchmarks/__main__.py of the working directory."""

from __future__ import annotations

import sys
from pathlib import Path

from crossentropy.cli import main


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
