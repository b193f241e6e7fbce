"""offshelf installs with the onnxruntime that fits the machine (issue 16): `pip install offshelf[cpu]` in a fresh
virtualenv brings no CUDA library, and without either extra `offshelf serve` says what to install."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from common import ROOT

SOURCES = ("pyproject.toml", "README.md", "protos", "export", "train", "service", "clients")


def test_the_cpu_extra_installs_no_cuda_library_and_serve_names_the_missing_runtime(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in SOURCES:  # what the images copy; the checkout's build/ and venvs stay out
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, source / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, str(source)], check=True, timeout=900)
    serve = [str(venv / "bin" / "python"), "-m", "offshelf.service.cli", "--repo", str(tmp_path / "repo")]
    bare = subprocess.run(serve, capture_output=True, text=True, timeout=120)
    assert bare.returncode == 1 and "pip install 'offshelf[cpu]'" in bare.stderr, bare.stderr
    subprocess.run([*pip, f"{source}[cpu]"], check=True, timeout=900)
    listed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    packages = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert "onnxruntime" in packages and "onnxruntime-gpu" not in packages
    assert not [p for p in packages if p.startswith("nvidia")], sorted(packages)
    found = subprocess.run(  # what the server's "serving" log line reports
        [
            str(venv / "bin" / "python"),
            "-c",
            "from offshelf.service.models.runtime import installed; print(installed())",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert found.stdout.startswith("onnxruntime ")
