"""A small MLP for scikit-learn's bundled tabular sets: one output column (binary logit or regression value).

`build(features, width)`: `width` scales the hidden layers (the distillation student is `width=0.5`).
"""

from __future__ import annotations

from torch import nn


def build(features: int = 30, width: float = 1.0) -> nn.Module:
    hidden = max(4, int(round(64 * width)))
    return nn.Sequential(
        nn.Linear(features, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, 1),
    )


def binary(width: float = 1.0) -> nn.Module:
    """breast_cancer: 30 standardised features -> one logit (malignant 0 / benign 1)."""
    return build(30, width)


def regression(width: float = 1.0) -> nn.Module:
    """diabetes: 10 standardised features -> disease progression, standardised."""
    return build(10, width)
