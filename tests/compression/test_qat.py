"""quantize.qat: the fake quantization it trains through must be what onnxruntime's static int8 does."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from slimserve.api.spec import Quantize
from slimserve.compression import measure
from slimserve.compression.export import export_onnx
from slimserve.compression.loading import DataSet
from slimserve.compression.recipes import REGISTRY, ModelState
from slimserve.compression.recipes.qat import fake_quantized
from slimserve.compression.recipes.quantize import preprocess, static_int8
from slimserve.errors import InvalidInput


class _Block(nn.Module):
    """Stem, depthwise, projection with BatchNorm and a residual Add, pooled into a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.project(self.dw(x)) + x
        return self.fc(torch.flatten(self.pool(x), 1))


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = _Block()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):  # folded scales of both signs and sizes, as trained nets have
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.2, 3.0)
            m.weight.data.uniform_(-2.0, 2.0)
            m.bias.data.uniform_(-0.5, 0.5)
    return net.eval()


def _images(n: int, seed: int) -> DataSet:
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n, 3, 4, 4)).repeat(4, axis=2).repeat(4, axis=3)
    return DataSet(Path("mem"), {"x": (base + 0.3 * rng.standard_normal((n, 3, 16, 16))).astype(np.float32)}, None)


def test_fake_quantization_reproduces_onnxruntimes_static_int8(tmp_path: Path) -> None:
    net = _net()
    calib, held_out = _images(64, 0), _images(64, 1)
    path = export_onnx(copy.deepcopy(net), calib, ["x"], tmp_path / "f.onnx")
    pre, _ = preprocess(path, tmp_path / "pre.onnx")
    static_int8(pre, tmp_path / "q.onnx", Quantize(), calib)
    ort_int8 = measure.predict(tmp_path / "q.onnx", held_out)

    fq = fake_quantized(net)
    # input, stem ReLU6, depthwise ReLU6, projection (after its BatchNorm), Add, pool, Linear
    assert len(fq.activations) == 7 and len(fq.weights) == 4
    with torch.no_grad():
        fq.graph(torch.from_numpy(calib.inputs["x"]))  # observing: float weights, ranges recorded
        fq.observing(False)
        fake = fq.graph(torch.from_numpy(held_out.inputs["x"])).numpy()
    with torch.no_grad():
        float_out = _net()(torch.from_numpy(held_out.inputs["x"])).numpy()
    fake_err = np.abs(fake - ort_int8).mean()
    float_err = np.abs(float_out - ort_int8).mean()
    # the same integers as onnxruntime (float summation order aside): far below int8's own error
    assert fake_err < 0.05 * float_err, (fake_err, float_err)


def test_qat_in_the_recipe_trains_then_quantizes_without_bias_correction(
    trained_digits: nn.Module, make_ctx, digits_data
) -> None:  # type: ignore[no-untyped-def]
    ctx = make_ctx(teacher=trained_digits)
    params = Quantize(qat={"steps": 4, "lr": 1e-5, "batchSize": 8})
    state = REGISTRY["quantize"](ModelState(module=copy.deepcopy(trained_digits)), params, ctx)
    assert any("quantization-aware fine-tune, 4 steps" in n for n in ctx.notes), ctx.notes
    assert not any("bias correction" in n for n in ctx.notes if not n.startswith("quantize: quantization-aware"))
    assert state.onnx_path is not None and state.float_onnx != state.onnx_path
    assert measure.predict(state.onnx_path, digits_data["evaluation"].head(8)).shape == (8, 10)
    # the source module is left as it was (no parametrization, same weights)
    assert not any(hasattr(m, "parametrizations") for m in trained_digits.modules())


def test_qat_is_refused_where_it_cannot_apply(tmp_path: Path, make_ctx, trained_digits: nn.Module) -> None:  # type: ignore[no-untyped-def]
    path = export_onnx(trained_digits, _digits_head(make_ctx), ["x"], tmp_path / "d.onnx")
    with pytest.raises(InvalidInput, match="quantize.qat needs a PyTorch model"):
        REGISTRY["quantize"](ModelState(onnx_path=path), Quantize(qat={}), make_ctx())
    for bad in ({"mode": "dynamic"}, {"weight_rounding": "gptq"}, {"activation_type": "int8"}, {"per_channel": False}):
        with pytest.raises(ValueError, match="qat trains through fake quantization"):
            Quantize(qat={}, **bad)


def _digits_head(make_ctx) -> DataSet:  # type: ignore[no-untyped-def]
    return make_ctx().evaluation.head(4)  # type: ignore[no-any-return]
