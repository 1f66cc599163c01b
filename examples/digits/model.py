"""A small CNN for scikit-learn's 8x8 digits: prunable channels and a Linear head for low-rank.

`build(width)` is the factory the spec names (`model:build`); `width` scales every hidden layer,
so `width=0.5` is the student a distillation step asks for.
"""

from __future__ import annotations

from torch import nn


def _channels(base: int, width: float) -> int:
    return max(4, int(round(base * width)))


def build(width: float = 1.0) -> nn.Module:
    """Input [N, 1, 8, 8] float32 in [0, 1]; output [N, 10] logits."""
    c1, c2, c3, hidden = (_channels(c, width) for c in (32, 64, 128, 128))
    return nn.Sequential(
        nn.Conv2d(1, c1, 3, padding=1, bias=False),
        nn.BatchNorm2d(c1),
        nn.ReLU(inplace=True),
        nn.Conv2d(c1, c2, 3, padding=1, bias=False),
        nn.BatchNorm2d(c2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),  # 8x8 -> 4x4
        nn.Conv2d(c2, c3, 3, padding=1, bias=False),
        nn.BatchNorm2d(c3),
        nn.ReLU(inplace=True),
        nn.Flatten(),
        nn.Linear(c3 * 16, hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(0.2),
        nn.Linear(hidden, 10),
    )
