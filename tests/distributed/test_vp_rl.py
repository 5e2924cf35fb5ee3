"""Vocab-parallel linear_logprobs and linear_distillation_loss on 3 (and 2) gloo CPU processes with
uneven vocabulary shards, against one process on the whole vocabulary."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from _vp_rl_worker import CASES, full

from crossentropy.torch import linear_distillation_loss, linear_logprobs

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src"
TOL = {"float64": 1e-10, "float32": 2e-5}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[int, Any]]:
    tmp = tmp_path_factory.mktemp("vp-rl")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), str(HERE)]),
        "OMP_NUM_THREADS": "1",
    }
    outs = [tmp / f"rank{r}.pt" for r in range(3)]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(HERE / "_vp_rl_worker.py"),
                str(r),
                "3",
                str(tmp / "store"),
                str(outs[r]),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(3)
    ]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=240)[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail("vocab-parallel RL workers did not finish in 240 s: a hang")
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-4000:]
    return [torch.load(o, weights_only=False) for o in outs]


def single_process(name: str, dtype: torch.dtype) -> dict[str, Any]:
    case = CASES[name]
    t = full(len(name), dtype)
    leaves = {k: t[k].clone().requires_grad_(True) for k in ("h", "w")}
    if case["kind"] == "logprobs":
        kw = dict(case["kw"])
        if case.get("entropy"):
            kw["temperature"] = t["temp"]
        leaves["b"] = t["b"].clone().requires_grad_(True)
        out = linear_logprobs(
            leaves["h"],
            leaves["w"],
            t["y"],
            linear_bias=leaves["b"],
            return_entropy=bool(case.get("entropy")),
            **kw,
        )
        if case.get("entropy"):
            obj = (out.logprobs * t["up"]).sum() + (out.entropy * t["up2"]).sum()
            values = [out.logprobs, out.entropy]
        else:
            obj, values = (out * t["up"]).sum(), [out]
    else:
        kw = dict(case["kw"])
        leaves["ht"] = t["ht"].clone().requires_grad_(True)
        leaves["wt"] = t["wt"].clone().requires_grad_(True)
        if case.get("bias"):
            leaves["b"] = t["b"].clone().requires_grad_(True)
            leaves["bt"] = t["bt"].clone().requires_grad_(True)
            kw.update(student_linear_bias=leaves["b"], teacher_linear_bias=leaves["bt"])
        out = linear_distillation_loss(
            leaves["h"], leaves["w"], leaves["ht"], leaves["wt"], target=t["y"], **kw
        )
        obj = (out * t["up"]).sum() if out.dim() else out * 1.3
        values = [out]
    obj.backward()
    return {"values": [v.detach() for v in values], "grads": {k: v.grad for k, v in leaves.items()}}


SHARDED = {"w", "b", "wt", "bt"}


@pytest.mark.parametrize("world", [3, 2])
def test_every_rank_equals_one_process(results: list[dict[int, Any]], world: int) -> None:
    ranks = [r[world] for r in results if world in r]
    assert len(ranks) == world
    problems = []
    for res in ranks:
        assert not res["errors"], next(iter(res["errors"].values()))
        assert "not supported with process_group" in res["topk"]
        for key, got in res["cases"].items():
            name, dtype_name = key.rsplit("-", 1)
            want = single_process(name, getattr(torch, dtype_name))
            tol = TOL[dtype_name]
            for a, b in zip(got["values"], want["values"]):
                if not torch.allclose(a, b, rtol=tol, atol=tol):
                    problems.append(f"{key}: values differ by {(a - b).abs().max():.2e}")
            sl = slice(got["offset"], got["offset"] + got["size"])
            for k, g in got["grads"].items():
                ref = want["grads"][k]
                if ref is None or g is None:
                    if (ref is None) != (g is None):
                        problems.append(f"{key}: gradient of {k} present on one side only")
                    continue
                ref = ref[sl] if k in SHARDED else ref
                if not torch.allclose(g, ref, rtol=tol, atol=tol):
                    problems.append(
                        f"{key}: gradient of {k} differs by {(g - ref).abs().max():.2e}"
                    )
    assert not problems, "\n".join(problems[:20])
