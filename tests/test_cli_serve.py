"""``offshelf serve``'s command line: help that names the environment variables, one-line errors for bad settings."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from offshelf.service.settings import ServiceSettings


def serve(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "offshelf.clients.cli", "serve", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200", **env},
    )


def test_help_names_each_environment_variable_next_to_its_flag_with_readable_metavars():
    result = serve("--help")
    assert result.returncode == 0, result.stderr
    # each option's entry: from its flag to the next flag
    entries = dict(re.findall(r"^  (--[\w-]+)(.*?)(?=^  -|\Z)", result.stdout, re.MULTILINE | re.DOTALL))
    for name in ServiceSettings.model_fields:
        entry = entries["--" + name.replace("_", "-")]
        assert f"OFFSHELF_{name.upper()}" in entry, name
    metavars = {flag: entry.split()[0] for flag, entry in entries.items()}
    assert (metavars["--max-batch-size"], metavars["--drain-seconds"], metavars["--repo"]) == ("INT", "SECONDS", "PATH")
    assert all(m.isupper() or m.startswith("{") for m in metavars.values()), metavars  # {a,b,c}: the choices


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["--repo", "x"], {"OFFSHELF_MAX_BATCH_SIZE": "0"}, "--max-batch-size / OFFSHELF_MAX_BATCH_SIZE must be"),
        (["--repo", "x", "--max-batch-size", "0"], {}, "--max-batch-size / OFFSHELF_MAX_BATCH_SIZE must be"),
        (["--repo", "x", "--port", "http"], {}, "--port / OFFSHELF_PORT must be a valid integer"),
        ([], {}, "--repo / OFFSHELF_REPO is required"),
    ],
)
def test_a_bad_setting_is_one_line_naming_it_and_exits_with_the_usage_code(args, env, expected):
    result = serve(*args, **env)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"offshelf serve: {expected}"), line
    if "MAX_BATCH_SIZE" in expected:
        assert "greater than or equal to 1" in line and "'0'" in line
