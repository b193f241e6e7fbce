"""Pooling of conv feature maps into vectors: avg (SPoC), max (MAC), gem (generalised mean), rmac (regional MAC).

Spatial sizes are fixed at export (the card's crop), so R-MAC regions are computed once here
and become static slices in the ONNX graph.
"""

from __future__ import annotations

import math

import torch
from torch import nn

POOLINGS = ("none", "avg", "max", "gem", "rmac")
EPS = 1e-6


def l2n(x: torch.Tensor) -> torch.Tensor:
    return x / (x.norm(dim=1, keepdim=True) + EPS)


def rmac_regions(height: int, width: int, levels: int = 3, overlap: float = 0.4) -> list[tuple[int, int, int, int]]:
    """(top, left, size, size) square regions at `levels` scales, as in Tolias et al., ICLR 2016."""
    side = min(height, width)
    steps = range(1, 7)  # extra regions along the longer side
    gap = [(max(height, width) - side) / s for s in steps]
    best = min(steps, key=lambda s: abs((side**2 - side * gap[s - 1]) / side**2 - overlap))
    extra_h, extra_w = (best, 0) if height > width else (0, best) if width > height else (0, 0)
    regions = []
    for level in range(1, levels + 1):
        size = math.floor(2 * side / (level + 1))
        if size < 1:
            break

        def starts(length: int, extra: int, level: int = level, size: int = size) -> list[int]:
            count = level + extra
            if count == 1:
                return [0]
            stride = (length - size) / (count - 1)
            return [int(math.floor(i * stride)) for i in range(count)]

        regions += [(top, left, size, size) for top in starts(height, extra_h) for left in starts(width, extra_w)]
    return regions


class Pool(nn.Module):
    """Pools an (N, C, H, W) map (or passes an (N, D) vector through), then optionally L2-normalises."""

    def __init__(self, kind: str, l2: bool = False, p: float = 3.0, spatial: tuple[int, int] | None = None):
        super().__init__()
        if kind not in POOLINGS:
            raise ValueError(f"unknown pooling {kind!r}; choose one of: {', '.join(POOLINGS)}")
        self.kind, self.l2, self.p = kind, l2, p
        self.regions = rmac_regions(*spatial) if kind == "rmac" and spatial else []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "none":
            x = x.flatten(1)
        elif self.kind == "avg":
            x = x.mean(dim=(2, 3))
        elif self.kind == "max":
            x = x.amax(dim=(2, 3))
        elif self.kind == "gem":
            x = x.clamp(min=EPS).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)
        else:
            x = l2n(x.amax(dim=(2, 3))) + sum(
                l2n(x[:, :, top : top + h, left : left + w].amax(dim=(2, 3))) for top, left, h, w in self.regions
            )
        return l2n(x) if self.l2 else x
