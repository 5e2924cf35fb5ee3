"""The GPU check's CPU-side machinery: the bundle list and installer."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from benchmarks import _gpu_bundle as bundle

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
