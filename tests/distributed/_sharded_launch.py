"""Start a gloo world of worker processes once per test session and collect what they saved.

A worker is ``python WORKER RANK WORLD STORE OUT``; it writes ``torch.save`` results to ``OUT``.
Under pytest-xdist the first test process to ask runs the world and the others read its files
(the parent of ``basetemp`` is shared by the workers of one session).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src"


def launch(worker: str, world: int, tmp: Path, timeout: float) -> list[Any]:
    """Run ``worker`` on ``world`` ranks; a hang fails after ``timeout`` s, never stalls the run."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), str(HERE)]),
        "OMP_NUM_THREADS": "1",
    }
    outs = [tmp / f"rank{r}.pt" for r in range(world)]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(HERE / worker),
                str(r),
                str(world),
                str(tmp / "store"),
                str(outs[r]),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(world)
    ]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=timeout)[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"{worker}: the {world} processes did not finish in {timeout} s (a hang)")
    for r, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"{worker} rank {r} failed:\n{log[-4000:]}"
    return [torch.load(o, weights_only=False) for o in outs]


def shared_world(
    factory: pytest.TempPathFactory, name: str, worker: str, world: int, timeout: float
) -> list[Any]:
    """:func:`launch` once per session, also under pytest-xdist."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        return launch(worker, world, factory.mktemp(name), timeout)
    from filelock import FileLock

    shared = factory.getbasetemp().parent / name
    with FileLock(str(shared) + ".lock"):
        if not (shared / "done").exists():
            shared.mkdir(exist_ok=True)
            launch(worker, world, shared, timeout)
            (shared / "done").touch()
        return [torch.load(shared / f"rank{r}.pt", weights_only=False) for r in range(world)]
