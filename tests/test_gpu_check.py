"""The GPU check's CPU-side machinery: the bundle list and installer, the section files, the stage
driver's time limits, and that the CUDA test files collect without the CPU-only dependencies.

What needs a GPU is the check itself (``scripts/gpu_check.sh``); ``make gpu-dry-run`` runs it here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmarks import _gpu_bundle as bundle
from benchmarks import _gpu_report as report
from benchmarks import gpu_check

ROOT = Path(__file__).resolve().parents[1]


# -- the bundle


def test_bundle_list_pins_what_the_check_imports():
    pins = bundle.read_list()
    for name in ("array-api-compat", "pytest", "pluggy", "iniconfig", "packaging", "hypothesis"):
        assert name in pins, name
    assert pins["liger-kernel"] == "0.8.5"  # the versions of shared/measurements
    assert pins["cut-cross-entropy"] == "25.1.1"
    assert "transformers" in pins and "huggingface-hub" in pins
    assert not set(pins) & bundle.BASE


def test_bundle_versions_follow_the_test_pins():
    """Where constraints.txt pins a package too, the GPU machine gets what CI tests."""
    pinned = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pinned[bundle.normalize(name)] = version.strip()
    for name, version in bundle.read_list().items():
        if name in pinned:
            assert version == pinned[name], name


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("pytest>=8\n", "expected 'name==version'"),
        ("pytest==9.2.0\nPyTest==9.2.0\n", "listed twice"),
        ("numpy==2.4.6\n", "in the base"),
    ],
)
def test_bundle_list_refuses_unpinned_duplicate_and_base_entries(tmp_path, text, message):
    path = tmp_path / "list.txt"
    path.write_text("# comment\n\n" + text)
    with pytest.raises(ValueError, match=message):
        bundle.read_list(path)


def _wheel(folder: Path, name: str, version: str, requires: tuple[str, ...] = (), data=False):
    path = folder / f"{name}-{version}-py3-none-any.whl"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    meta += "".join(f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{name}/__init__.py", "")
        zf.writestr(f"{name}-{version}.dist-info/METADATA", meta)
        if data:
            zf.writestr(f"{name}-{version}.data/purelib/{name}_extra.py", "")
    return path


def test_bundle_check_finds_unmet_requirements(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "alpha", "1.0", ("beta>=2", "torch", "gamma; sys_platform == 'win32'"))
    _wheel(wheels, "beta", "1.5")
    _wheel(wheels, "delta", "1.0", ("alpha[extra]>=1", "epsilon; python_version < '3.11'"))
    _wheel(wheels, "stray", "0.1")
    listed = tmp_path / "list.txt"
    listed.write_text("alpha==1.0\nbeta==1.5\ndelta==1.0\nzeta==3\n")
    problems = bundle.unmet(wheels, listed)
    assert "zeta==3: no wheel" in problems
    assert "stray==0.1: not in the list" in problems
    assert any(p.startswith("alpha needs beta>=2: bundled 1.5") for p in problems)
    # torch is in the base; gamma (Windows) and epsilon (Python < 3.11) are not for the GPU machine
    assert len(problems) == 3, problems


def test_install_takes_only_what_is_missing(tmp_path):
    wheels = [
        _wheel(tmp_path, "pytest", "9.2.0"),
        _wheel(tmp_path, "array_api_compat", "1.16.0"),
        _wheel(tmp_path, "liger_kernel", "0.8.5"),
        _wheel(tmp_path, "cut_cross_entropy", "25.1.1"),
    ]
    installed = {
        "pytest": "8.3.0",  # the machine's own: kept, whatever its version
        "array-api-compat": None,
        "liger-kernel": "0.6.0",  # a baseline at another version: ours shadows it
        "cut-cross-entropy": "25.1.1",
    }
    chosen, kept = bundle.choose(wheels, installed)
    assert [bundle.wheel_name(w)[0] for w in chosen] == ["array-api-compat", "liger-kernel"]
    assert kept == ["pytest 8.3.0 (the machine's)", "cut-cross-entropy 25.1.1 (the machine's)"]


def test_unpacking_a_wheel_puts_its_data_folder_in_place(tmp_path):
    wheel = _wheel(tmp_path, "demo", "1.0", data=True)
    target = tmp_path / "site"
    target.mkdir()
    bundle._unpack(wheel, target)
    assert (target / "demo" / "__init__.py").is_file()
    assert (target / "demo_extra.py").is_file()
    assert not list(target.glob("*.data"))


# -- section files


def _info():
    return {k: k for k in ("device", "torch", "cuda", "triton", "python", "commit", "utc")}


def test_a_section_is_written_line_by_line_to_its_files_and_out(tmp_path, capsys):
    results, out = tmp_path / "results", tmp_path / "out"
    sec = report.Section(3, "race", "Race", results=results, out=out, info=_info())
    sec.table("shape", "bad")
    sec.row("8 x 300", 0)
    sec.row("4 x 5", 1, shape=[4, 5], bad=1)
    # everything so far is on disk before the section ends (a killed stage keeps it)
    md = (results / "03_race.md").read_text()
    assert md.startswith("## Race\n") and "Device: device; torch torch" in md
    assert "| shape | bad |\n|---|---|\n| 8 x 300 | 0 |\n| 4 x 5 | 1 |\n" in md
    doc = json.loads((results / "03_race.json").read_text())
    assert doc["status"] == "running"
    assert doc["rows"] == [{"shape": "8 x 300", "bad": 0}, {"shape": [4, 5], "bad": 1}]
    lines = [json.loads(t) for t in (out / report.OUT_JSONL).read_text().splitlines()]
    assert lines[0] == {"section": "race", "shape": "8 x 300", "bad": 0}
    sec.finish("ok", "fine")
    assert (out / report.OUT_MD).read_text() == (results / "03_race.md").read_text()
    assert "Status: **ok**: fine" in capsys.readouterr().out
    # the driver reopens a section to close it after a stage was killed
    again = report.Section(3, "race", "Race", results=results, out=out, fresh=False)
    assert again.status == "ok" and len(again.doc["rows"]) == 2
    again.finish("timed out", "killed")
    assert json.loads((results / "03_race.json").read_text())["status"] == "timed out"


def test_section_arguments_are_checked(tmp_path):
    sec = report.Section(1, "env", "Env", results=tmp_path, out=None, info=_info())
    with pytest.raises(ValueError, match="status must be one of"):
        sec.finish("great")
    sec.table("a", "b")
    with pytest.raises(ValueError, match="row has 1 cells, the table 2 columns"):
        sec.row("only one")
    with pytest.raises(ValueError, match="section name"):
        report.Section(1, "no spaces", "x", results=tmp_path, out=None, info=_info())


def test_cells_are_one_line_without_pipes():
    assert report.cell(0.000123456) == "0.0001235"
    assert report.cell("a|b\nc") == "a/b c"


def test_pack_puts_the_section_files_in_one_tar_under_the_folder_name(tmp_path):
    results = tmp_path / "gpu_check"
    report.Section(1, "env", "Env", results=results, out=None, info=_info()).finish("ok")
    (results / "summary.md").write_text("## Summary\n")
    report.pack(results, tmp_path / "out")
    with tarfile.open(tmp_path / "out" / report.OUT_TAR) as tar:
        names = sorted(tar.getnames())
    assert names == ["gpu_check/01_env.json", "gpu_check/01_env.md", "gpu_check/summary.md"]
    report.pack(results, None)  # no $OUT: nothing to do


def test_results_go_where_the_environment_says(monkeypatch, tmp_path):
    monkeypatch.delenv("GPU_CHECK_RESULTS", raising=False)
    assert report.results_dir() == ROOT / "benchmarks" / "results" / "gpu_check"
    assert report.results_dir("smoke").name == "gpu_check_smoke"
    monkeypatch.setenv("GPU_CHECK_RESULTS", str(tmp_path))
    assert report.results_dir("quick") == tmp_path


# -- the driver


@pytest.fixture
def dirs(monkeypatch, tmp_path):
    monkeypatch.setenv("GPU_CHECK_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    return tmp_path / "results", tmp_path / "out"


def _status(results: Path, index: int, name: str) -> str:
    return json.loads((results / f"{index:02d}_{name}.json").read_text())["status"]


def test_a_stage_past_its_limit_is_killed_and_the_budget_stops_the_rest(dirs):
    results, out = dirs
    sleeper = [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"]
    code = gpu_check.drive(
        ["env", "race"],
        mode="full",
        budget=7.0,  # 5 s are kept for writing up: env gets 2 s, race nothing
        command=lambda name, deadline, mode: sleeper,
        min_stage_s=0.5,
    )
    assert code == 1
    assert _status(results, 1, "env") == "timed out"
    assert _status(results, 2, "race") == "not run"
    summary = (results / "summary.md").read_text()
    assert "| env | timed out |" in summary and "| race | not run |" in summary
    assert "| env | timed out |" in (out / report.OUT_MD).read_text()
    with tarfile.open(out / report.OUT_TAR) as tar:
        assert "results/01_env.md" in tar.getnames()


def test_a_stage_that_dies_is_reported_with_its_last_words(dirs):
    results, _ = dirs
    crash = [sys.executable, "-c", "import sys; print('boom: no device'); sys.exit(3)"]
    code = gpu_check.drive(
        ["softmax"], mode="full", budget=60.0, command=lambda *a: crash, min_stage_s=0.5
    )
    assert code == 1
    doc = json.loads((results / "09_softmax.json").read_text())
    assert doc["status"] == "crashed" and doc["note"] == "exit code 3: boom: no device"


def test_unknown_stages_and_budgets_are_refused(capsys):
    with pytest.raises(SystemExit):
        gpu_check.main(["--only", "env,nope"])
    assert "unknown stage(s) nope" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gpu_check.main(["--budget", "0"])
    assert "--budget must be positive" in capsys.readouterr().err


def test_stage_limits_fit_the_device_call():
    """The estimates sum to well under the budget, and the budget leaves the run tool's 480 s."""
    assert sum(s.estimate_s for s in gpu_check.STAGES) <= 0.8 * gpu_check.BUDGET_S
    assert gpu_check.BUDGET_S + 20 <= 480
    assert all(s.estimate_s < s.limit_s for s in gpu_check.STAGES)
    assert len({s.name for s in gpu_check.STAGES}) == len(gpu_check.STAGES)


def test_each_test_outcome_becomes_a_row(tmp_path):
    """The test stage's pytest plugin, on a passing, a failing, a skipped and an erroring test and a
    file that does not import; run in a fresh process, as the stage runs pytest."""
    (tmp_path / "test_mix.py").write_text(
        textwrap.dedent(
            """
            import pytest

            @pytest.fixture
            def broken():
                raise RuntimeError("no device")

            def test_ok():
                pass

            def test_bad():
                assert 1 == 2, "one is not two"

            @pytest.mark.skip(reason="needs a CUDA GPU")
            def test_skipped():
                pass

            def test_setup_error(broken):
                pass
            """
        )
    )
    (tmp_path / "test_broken.py").write_text("import a_module_that_is_not_there\n")
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path

        import pytest

        from benchmarks import _gpu_report as report
        from benchmarks.gpu_check import _Recorder

        sec = report.Section(3, "tests", "T", results=Path({str(tmp_path / "r")!r}), out=None)
        rec = _Recorder(sec)
        args = ["-p", "no:cacheprovider", "-o", "addopts=", "-q", "--continue-on-collection-errors"]
        pytest.main([*args, "--rootdir", {str(tmp_path)!r}, {str(tmp_path)!r}], plugins=[rec])
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads((tmp_path / "r" / "03_tests.json").read_text())["rows"]
    got = {r["test"].split("::")[-1]: (r["outcome"], r["why"]) for r in rows}
    assert got["test_ok"] == ("passed", "")
    assert got["test_bad"][0] == "failed" and "one is not two" in got["test_bad"][1]
    assert got["test_skipped"] == ("skipped", "Skipped: needs a CUDA GPU")
    assert got["test_setup_error"][0] == "error (setup)"
    assert got["test_broken.py"][0] == "collection error"
    assert "a_module_that_is_not_there" in got["test_broken.py"][1]


# -- what the profiler stage sums


def test_gemm_roles_come_from_operand_shapes():
    d, v = 2304, 256000
    assert gpu_check.gemm_role("aten::mm", [[1024, d], [d, v]], d, v) == "logits"
    assert gpu_check.gemm_role("aten::mm", [[1024, v], [v, d]], d, v) == "d input"
    assert gpu_check.gemm_role("aten::mm", [[v, 1024], [1024, d]], d, v) == "d weight"
    acc = [[v, d], [v, 1024], [1024, d], [], []]
    assert gpu_check.gemm_role("aten::addmm", acc, d, v) == "d weight"
    assert gpu_check.gemm_role("aten::mm", [[3, 4], [4, 5]], d, v) == "other"


def test_kernel_breakdown_sums_gemms_by_role_and_our_kernels_by_name():
    from torch.autograd import DeviceType

    def kernel(name, us):
        span = SimpleNamespace(elapsed_us=lambda: us)
        return SimpleNamespace(device_type=DeviceType.CUDA, name=name, time_range=span)

    def op(name, shapes, kernels):
        ks = [SimpleNamespace(name=k, duration=us) for k, us in kernels]
        return SimpleNamespace(
            device_type=DeviceType.CPU, name=name, input_shapes=shapes, kernels=ks
        )

    d, v = 64, 1000
    events = [
        op("aten::mm", [[16, d], [d, v]], [("nvjet_tst_128x256", 3000)]),
        op("aten::mm", [[v, 16], [16, d]], [("sm90_xmma_gemm_bf16", 2000)]),
        op("crossentropy::fused", [], [("_softmax_ce_fwd_kernel", 500)]),
        kernel("nvjet_tst_128x256", 3000),
        kernel("sm90_xmma_gemm_bf16", 2000),
        kernel("cutlass_gemm_splitk", 250),  # launched outside any recorded op
        kernel("_softmax_ce_fwd_kernel", 500),
        kernel("_softmax_ce_bwd_kernel", 700),
        kernel("vectorized_elementwise_kernel", 100),
    ]
    got = gpu_check.kernel_breakdown(
        events, d, v, ["_softmax_ce_fwd_kernel", "_softmax_ce_bwd_kernel"]
    )
    assert got == pytest.approx(
        {
            "GEMM: logits": 3.0,
            "GEMM: d weight": 2.0,
            "GEMM: role unknown": 0.25,
            "Triton: _softmax_ce_fwd_kernel": 0.5,
            "Triton: _softmax_ce_bwd_kernel": 0.7,
            "other kernels": 0.1,
        }
    )


def test_our_kernel_names_are_read_from_the_triton_package():
    names = gpu_check._our_kernel_names()
    assert "_softmax_ce_bwd_kernel" in names and "_softmax_ce_fwd_kernel" in names


# -- the CUDA tests collect with only torch, triton, numpy and the bundle

BLOCKER = textwrap.dedent(
    """
    import importlib.abc
    import os
    import sys

    BLOCKED = set(os.environ["BLOCKED_IMPORTS"].split(","))


    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked: the GPU machine may lack it")
            return None


    sys.meta_path.insert(0, Blocker())
    """
)


def test_the_check_finds_every_file_with_cuda_tests():
    files = gpu_check.cuda_test_files()
    assert "tests/torch_layer/test_cuda_paths.py" in files
    assert "tests/kernels/test_triton_linear_ce.py" in files
    args = gpu_check.pytest_args(files)
    assert args[:2] == ["-m", "cuda"] and "no:doctest" in args and "addopts=" in args


@pytest.mark.slow
@pytest.mark.parametrize(
    ("files", "blocked"),
    [
        # every CUDA test file, with the bundle's hypothesis but none of the other test extras
        (None, "scipy,sklearn,transformers,keras,matplotlib,pandas,array_api_strict"),
        # the engine tests, with nothing but torch (and no hypothesis either)
        (
            ["tests/torch_layer/test_cuda_paths.py"],
            "scipy,sklearn,transformers,keras,matplotlib,pandas,array_api_strict,hypothesis",
        ),
    ],
    ids=["all-cuda-files", "test_cuda_paths-bare"],
)
def test_cuda_tests_collect_without_the_cpu_only_dependencies(tmp_path, files, blocked):
    (tmp_path / "block_imports.py").write_text(BLOCKER)
    files = files or gpu_check.cuda_test_files()
    env = {**os.environ, "BLOCKED_IMPORTS": blocked}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "pytest", "-p", "block_imports", "--collect-only"]
    if "hypothesis" in blocked:
        cmd += ["-p", "no:hypothesispytest"]  # its plugin would import hypothesis at start-up
    proc = subprocess.run(
        cmd + gpu_check.pytest_args(files),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "error" not in proc.stdout.lower().split("collected")[-1], proc.stdout[-3000:]
    assert "test_low_memory_fp32_matches_float64" in proc.stdout


@pytest.mark.slow
def test_cpu_smoke_run_of_two_stages(tmp_path):
    """Every line of a stage runs without a GPU in the smoke mode (tiny shapes, Triton
    interpreted); here the environment and the determinism stages, end to end."""
    env = {**os.environ, "GPU_CHECK_RESULTS": str(tmp_path / "r"), "OUT": str(tmp_path / "o")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "gpu_check",
            "--cpu-smoke",
            "--only",
            "env,determinism",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert _status(tmp_path / "r", 1, "env") == "ok"
    assert _status(tmp_path / "r", 8, "determinism") == "ok"
    assert (
        "| linear_cross_entropy, default | 64 x 32 x 300 | True | True | True |"
        in (tmp_path / "o" / report.OUT_MD).read_text()
    )
