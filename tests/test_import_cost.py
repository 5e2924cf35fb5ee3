"""What each layer pulls in when imported: counted with ``python -X importtime``, never timed.

``import crossentropy.torch`` must cost little beyond ``import torch`` itself: no torch._dynamo,
inductor, sympy or triton at import (they load on first use, e.g. under torch.compile or with
``impl="triton"``). The counts are of modules, so the test is deterministic.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
HEAVY = ("torch._dynamo", "torch._inductor", "sympy", "triton", "transformers", "keras")


def _imported(code_before: str, statement: str) -> list[str]:
    """Modules ``statement`` imports after ``code_before`` ran, from ``-X importtime`` output."""
    code = (
        f"{code_before}\nimport sys\nprint('---MARK---', file=sys.stderr, flush=True)\n{statement}"
    )
    env = dict(os.environ, PYTHONPATH=str(SRC))
    env.pop("TRITON_INTERPRET", None)
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    after = out.stderr.split("---MARK---", 1)[1]
    names = []
    for line in after.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name and name != "imported package":
                names.append(name)
    return names


def test_torch_layer_adds_no_heavy_modules_to_import_torch() -> None:
    names = _imported("import torch", "import crossentropy.torch")
    heavy = [n for n in names if n.startswith(HEAVY)]
    assert heavy == [], f"import crossentropy.torch pulled in {heavy[:10]}"
    ours = [n for n in names if n.startswith("crossentropy")]
    others = [n for n in names if not n.startswith("crossentropy")]
    assert ours, "the -X importtime parse found nothing: the test would pass vacuously"
    # the layer's own modules plus a few small helpers (array-api-compat, numpy.typing)
    assert len(others) <= 15, others


def test_core_imports_no_framework() -> None:
    names = _imported("", "import crossentropy, crossentropy.metrics")
    assert not [n for n in names if n.split(".")[0] in ("torch", "keras", "triton", "scipy")]
    assert "crossentropy" in names


@pytest.mark.parametrize("module", ["crossentropy.cli"])
def test_cli_imports_no_torch(module: str) -> None:
    names = _imported("", f"import {module}")
    assert "torch" not in names
