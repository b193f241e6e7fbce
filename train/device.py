"""Where training runs (--device auto|cpu|cuda): CUDA when it works, in mixed precision there (fp16 autocast with
a gradient scaler); the CPU otherwise, in fp32."""

from __future__ import annotations

import contextlib

import torch

from offshelf.train.errors import TrainError

DEVICES = ("auto", "cpu", "cuda")


def choose(name: str) -> torch.device:
    if name not in DEVICES:
        raise TrainError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")
    cuda = torch.cuda.is_available()
    if name == "cuda" and not cuda:
        raise TrainError("--device cuda, but torch finds no working CUDA device here; use auto or cpu")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and cuda) else "cpu")


def mixed_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """fp16 autocast on CUDA; nothing on the CPU (its autocast is bfloat16, slower there than fp32)."""
    return torch.autocast("cuda", torch.float16) if device.type == "cuda" else contextlib.nullcontext()


def gradient_scaler(device: torch.device) -> torch.amp.GradScaler:
    """Scales fp16 losses so small gradients do not underflow; a pass-through on the CPU."""
    return torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
