import subprocess
import sys

import crossentropy
from crossentropy.cli import main


def test_import_core_loads_no_framework():
    code = (
        "import sys, crossentropy, crossentropy.metrics; "
        "bad = [m for m in ('torch', 'triton', 'transformers', 'keras', 'scipy', 'sklearn') "
        "if m in sys.modules]; print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_version_is_a_string():
    assert isinstance(crossentropy.__version__, str)


def test_cli_info_runs(capsys):
    assert main(["info"]) == 0
    assert "crossentropy" in capsys.readouterr().out


def test_cli_without_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "usage" in capsys.readouterr().out
