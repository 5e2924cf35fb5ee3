"""``impl="triton"`` through the public functions equals ``impl="torch"`` (Triton interpreter on CPU).

The kernels read TRITON_INTERPRET when ``crossentropy.triton`` is first imported, so the check runs
in a fresh interpreter with the variable set (on a CUDA machine it runs the compiled kernels).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

SRC = Path(__file__).resolve().parents[2] / "src"

CODE = r"""
import torch
from crossentropy.torch import cross_entropy, linear_cross_entropy

g = torch.Generator().manual_seed(0)
dev = "cuda" if torch.cuda.is_available() else "cpu"
x = torch.randn(5, 37, generator=g, dtype=torch.float32).to(dev)
y = torch.tensor([0, 36, -100, 7, 3]).to(dev)
w = (torch.rand(37, generator=g) + 0.5).to(dev)
kw = dict(weight=w, label_smoothing=0.1, z_loss=1e-3, softcap=10.0, reduction="none")
up = torch.randn(5, generator=g).to(dev)
res = {}
for impl in ("torch", "triton"):
    xi = x.clone().requires_grad_(True)
    loss = cross_entropy(xi, y, impl=impl, **kw)
    (gx,) = torch.autograd.grad(loss, xi, up)
    res[impl] = (loss, gx)
torch.testing.assert_close(res["triton"][0], res["torch"][0], rtol=1e-5, atol=1e-5)
torch.testing.assert_close(res["triton"][1], res["torch"][1], rtol=1e-5, atol=1e-5)

h = torch.randn(1, 5, 16, generator=g).to(dev)
W = (torch.randn(37, 16, generator=g) * 0.5).to(dev)
b = torch.randn(37, generator=g).to(dev)
res = {}
for impl in ("torch", "triton"):
    hi, Wi, bi = (t.clone().requires_grad_(True) for t in (h, W, b))
    loss = linear_cross_entropy(hi, Wi, y.view(1, 5), linear_bias=bi, impl=impl, **kw)
    grads = torch.autograd.grad(loss, (hi, Wi, bi), up.view(1, 5))
    res[impl] = (loss, *grads)
for a, b_ in zip(res["triton"], res["torch"]):
    torch.testing.assert_close(a, b_, rtol=1e-4, atol=1e-5)
print("ok")
"""


def test_impl_triton_matches_torch_path():
    env = dict(os.environ, PYTHONPATH=str(SRC), TRITON_INTERPRET="1")
    out = subprocess.run(
        [sys.executable, "-c", CODE], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "ok"
