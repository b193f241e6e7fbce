"""offshelf installs with the onnxruntime that fits the machine (issue 16): pip resolves `offshelf[cpu]` to
onnxruntime and no CUDA library, `offshelf` alone to no onnxruntime at all, and without one `offshelf serve` says what
to install. pip resolves against the same index a real install uses (--dry-run: nothing is unpacked)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from common import ROOT

SOURCES = ("pyproject.toml", "README.md", "protos", "export", "train", "service", "clients")


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory):
    """What the images copy; the checkout's build/ and venvs stay out."""
    source = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, source / name)
    return source


def resolved(requirement: str, tmp_path) -> set[str]:
    """The packages pip would install for the requirement into an empty environment."""
    report = tmp_path / "report.json"
    install = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "-q",
        "--dry-run",
        "--ignore-installed",
        "--no-build-isolation",
        "--report",
    ]
    subprocess.run([*install, str(report), requirement], check=True, timeout=600)
    return {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}


def test_the_cpu_extra_brings_onnxruntime_and_no_cuda_library(source, tmp_path):
    packages = resolved(f"{source}[cpu]", tmp_path)
    assert "onnxruntime" in packages and "onnxruntime-gpu" not in packages
    assert not [p for p in packages if p.startswith("nvidia")], sorted(packages)


def test_without_an_extra_no_onnxruntime_comes_and_serve_names_the_extra_to_install(source, tmp_path):
    packages = resolved(str(source), tmp_path)
    assert "offshelf" in packages and not [p for p in packages if p.startswith("onnxruntime")], sorted(packages)
    program = (  # this environment as one without onnxruntime: its import fails as a missing module's does
        "import sys; sys.modules['onnxruntime'] = None; from offshelf.service.cli import main; "
        f"sys.exit(main(['--repo', {str(tmp_path / 'repo')!r}]))"
    )
    bare = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert bare.returncode == 1 and "pip install 'offshelf[cpu]'" in bare.stderr, bare.stderr
