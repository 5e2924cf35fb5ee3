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
    import importlib.metadata

    import torch

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "crossentropy" in out
    table = out.split("\n\n")[0]
    rows = dict(line.split(None, 1) for line in table.splitlines() if not line.startswith(" "))
    assert rows["torch"].strip() == torch.__version__
    assert rows["sklearn"].strip() == importlib.metadata.version("scikit-learn")
    assert rows["impl='torch'"].startswith("available")
    assert "impl='triton'" in rows
    # the dispatch section is the library's own decision for each typical call on this machine
    engines = {
        line.rsplit("  ", 1)[0].strip(): line.rsplit("  ", 1)[1].strip()
        for line in table.splitlines()
        if line.startswith("  ")
    }
    assert engines["cross_entropy, fp32 logits"] == "native"
    assert engines["linear_cross_entropy, bf16, mean"] == "chunked, fused"
    assert engines["linear_logprobs, bf16"] == "chunked, rows"
    assert "explain(fn, *args, **kwargs)" in out


def test_cli_info_tells_installed_but_broken_from_missing(monkeypatch, capsys):
    import importlib

    real_import = importlib.import_module

    def fake_import(name, *args, **kwargs):
        if name == "keras":
            raise ImportError("No module named 'tensorflow'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", fake_import)
    assert main(["info"]) == 0
    table = capsys.readouterr().out.split("\n\n")[0]
    rows = dict(line.split(None, 1) for line in table.splitlines() if not line.startswith(" "))
    assert "installed, import failed: No module named 'tensorflow'" in rows["keras"]
    assert "KERAS_BACKEND=torch" in rows["keras"]


def _info_rows(monkeypatch, capsys, *, triton, cuda):
    import torch

    from crossentropy.cli import _info

    real_status = _info._status

    def status(module, dist):
        return (
            ("not installed", False)
            if module == "triton" and not triton
            else real_status(module, dist)
        )

    monkeypatch.setattr(_info, "_status", status)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU")
    monkeypatch.setattr(_info, "_dispatch_rows", lambda device: [])
    assert main(["info"]) == 0
    table = capsys.readouterr().out.split("\n\n")[0]
    return dict(line.split(None, 1) for line in table.splitlines() if not line.startswith(" "))


def test_cli_info_on_a_cpu_only_machine_says_the_kernels_need_a_gpu(monkeypatch, capsys):
    # installing triton would not make the kernels run without a GPU: say what they need
    rows = _info_rows(monkeypatch, capsys, triton=False, cuda=False)
    assert rows["device"] == "cpu only"
    assert rows["impl='triton'"].startswith("needs a CUDA GPU (none here)")
    # with a GPU, the missing package is what stands in the way
    rows = _info_rows(monkeypatch, capsys, triton=False, cuda=True)
    assert rows["impl='triton'"] == "unavailable on this CUDA GPU: install crossentropy[triton]"
    rows = _info_rows(monkeypatch, capsys, triton=True, cuda=False)
    assert rows["impl='triton'"].startswith("needs a CUDA GPU")


def test_a_missing_optional_package_names_the_extra_to_install(monkeypatch, capsys):
    # e.g. `crossentropy demo` after `pip install crossentropy[cli]`: one line, the extra to add
    from crossentropy.cli import _demo

    def run(args):
        raise ModuleNotFoundError("No module named 'constriction'", name="constriction")

    monkeypatch.setattr(_demo, "run", run)
    assert main(["demo", "--quick"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "'constriction'" in err and "pip install 'crossentropy[demo]'" in err


def test_cli_without_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "usage" in capsys.readouterr().out
