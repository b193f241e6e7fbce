"""A GPU server that cannot use CUDA says why in one line (issue 23, item 19): most often a driver too old for the
image's CUDA 13. NVML's answers are the input here (no GPU on the test machine); on it, the refusal itself."""

from __future__ import annotations

import time

from offshelf.service.models.cuda_check import driver_problem, too_old

from common import ServerProcess


def test_a_driver_older_than_cuda_13_is_named_with_the_driver_it_needs():
    assert too_old("535.104.05", 12020) == (
        "the NVIDIA driver 535.104.05 supports CUDA up to 12.2; this image needs CUDA 13: driver 580 or newer"
    )
    assert too_old("580.65.06", 13000) == "" and too_old("590.1", 13010) == ""


def test_without_nvml_the_problem_is_left_to_the_generic_reason():
    assert driver_problem() == ""  # no NVIDIA driver here (and no nvidia-ml-py in the CPU install)


def test_execution_provider_cuda_without_cuda_refuses_to_start_in_one_error_line(tiny_repo, tmp_path):
    server = ServerProcess(tiny_repo, tmp_path / "data", execution_provider="cuda")
    assert server.process.wait(60) == 1
    deadline = time.monotonic() + 30  # the log reader drains the pipe after the exit
    while not [line for line in server.logs if line["message"] == "stopped"] and time.monotonic() < deadline:
        time.sleep(0.05)
    errors = [line for line in server.logs if line["level"] == "error" and line["logger"].endswith("server")]
    assert len(errors) == 1, errors
    assert "execution_provider=cuda but CUDA does not work on this machine" in errors[0]["error"]
    assert "use auto (the CPU when CUDA does not work) or cpu" in errors[0]["error"]
