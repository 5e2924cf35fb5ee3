"""``crossentropy bench`` dispatches to benchmarks/__main__.py of the working directory."""

from __future__ import annotations

import sys

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
