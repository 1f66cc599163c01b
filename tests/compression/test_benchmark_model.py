"""The benchmark's ResNet-18-shaped net really has ResNet-18's size and cost (11.7M params, 1.8 GMACs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.resnet import build
from slimserve.compression import measure
from slimserve.compression.export import export_onnx
from slimserve.compression.loading import DataSet, InputSpec


@pytest.mark.slow
def test_resnet18_shape(tmp_path: Path) -> None:
    data = DataSet(tmp_path, {"x": np.zeros((2, 3, 224, 224), np.float32)}, None)
    path = export_onnx(build(), data, ["x"], tmp_path / "r18.onnx")
    counts = measure.count(path, [InputSpec("x", np.dtype(np.float32), (3, 224, 224))])
    assert 11.6e6 < counts.params < 11.7e6  # torchvision's 11,689,512, less BatchNorm folded into the convs
    assert 1.80e9 < counts.macs < 1.83e9
