"""The graph transforms around onnxruntime's quantizer: fp16 that loads, SmoothQuant, bias correction,
and what the fallback ranks; plus counts and refusals that real models exposed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from slimserve.api.spec import Prune, Quantize
from slimserve.compression import measure
from slimserve.compression.export import export_onnx
from slimserve.compression.loading import DataSet, InputSpec
from slimserve.compression.recipes import REGISTRY, ModelState
from slimserve.compression.recipes.biascorrection import correct
from slimserve.compression.recipes.quantize import fp16, static_int8
from slimserve.compression.recipes.smoothquant import smooth
from slimserve.errors import InvalidInput
from tests.compression.conftest import TokenModel, token_data


def _data(x: np.ndarray) -> DataSet:
    return DataSet(Path("mem"), {"x": x}, None)


def test_fp16_of_a_graph_with_int64_inputs_loads_and_keeps_io_types(tmp_path: Path) -> None:
    torch.manual_seed(0)
    data = DataSet(tmp_path, token_data(8), None)
    path = export_onnx(TokenModel().eval(), data, ["input_ids", "attention_mask"], tmp_path / "t.onnx", by_name=True)
    fp16(path, tmp_path / "h.onnx", Quantize(mode="fp16"), data.head(2))
    got = measure.predict(tmp_path / "h.onnx", data)
    want = measure.predict(path, data)
    assert got.dtype == np.float32 and np.abs(got - want).max() < 1e-2
    graph = onnx.load(str(tmp_path / "h.onnx")).graph
    assert [i.type.tensor_type.elem_type for i in graph.input] == [onnx.TensorProto.INT64] * 2


def _outlier_mlp(tmp_path: Path) -> tuple[Path, DataSet, DataSet]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8)).eval()
    rng = np.random.default_rng(0)

    def draw(n: int) -> np.ndarray:  # [N, tokens, features]: Linear exports as MatMul + Add, as in transformers
        x = rng.standard_normal((n, 4, 32)).astype(np.float32)
        x[..., 0] *= 200.0  # one outlier channel, as transformer activations have
        return x

    calib, evaluation = _data(draw(128)), _data(draw(256))
    path = export_onnx(net, evaluation, ["x"], tmp_path / "mlp.onnx")
    return path, calib, evaluation


def test_smoothquant_keeps_the_float_function_and_cuts_int8_error(tmp_path: Path) -> None:
    path, calib, evaluation = _outlier_mlp(tmp_path)
    ref = measure.predict(path, evaluation)
    smoothed, inserted, groups = smooth(path, tmp_path / "s.onnx", calib, alpha=0.5)
    assert groups == 2 and len(inserted) == 2
    assert np.abs(measure.predict(smoothed, evaluation) - ref).max() < 1e-3 * np.abs(ref).max()
    params = Quantize(per_channel=True)
    static_int8(path, tmp_path / "q.onnx", params, calib)
    static_int8(smoothed, tmp_path / "sq.onnx", params, calib, nodes_to_exclude=inserted)
    plain = np.mean((measure.predict(tmp_path / "q.onnx", evaluation) - ref) ** 2)
    smooth_err = np.mean((measure.predict(tmp_path / "sq.onnx", evaluation) - ref) ** 2)
    assert smooth_err < plain


def test_bias_correction_removes_the_mean_shift_of_int8_depthwise_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8)).eval()
    with torch.no_grad():
        net[0].weight.mul_(torch.linspace(0.05, 3.0, 8).view(8, 1, 1, 1))  # uneven channels: coarse rounding
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((64, 8, 6, 6)) + 3.0).astype(np.float32)  # inputs with a large mean
    path = export_onnx(net, _data(x), ["x"], tmp_path / "dw.onnx")
    corrected, changed = correct(path, tmp_path / "bc.onnx", _data(x), per_channel=False, reduce_range=True)
    assert changed == 1
    ref = measure.predict(path, _data(x))
    params = Quantize(per_channel=False, reduce_range=True)
    static_int8(path, tmp_path / "q.onnx", params, _data(x))
    static_int8(corrected, tmp_path / "qb.onnx", params, _data(x))
    shift = np.abs((measure.predict(tmp_path / "q.onnx", _data(x)) - ref).mean(axis=(0, 2, 3))).mean()
    fixed = np.abs((measure.predict(tmp_path / "qb.onnx", _data(x)) - ref).mean(axis=(0, 2, 3))).mean()
    assert fixed < shift


def test_macs_with_a_dynamic_sequence_come_from_the_data(tmp_path: Path) -> None:
    class PerToken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(50, 16)
            self.proj = nn.Linear(16, 24)

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return self.proj(self.embed(input_ids))

    ids = token_data(4, seq=12)["input_ids"]
    data = DataSet(tmp_path, {"input_ids": ids}, None)
    path = export_onnx(PerToken().eval(), data, ["input_ids"], tmp_path / "p.onnx", by_name=True)
    dims = [d.dim_param or d.dim_value for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "sequence"]
    spec = [InputSpec("input_ids", np.dtype(np.int64), (None,))]  # what the ONNX graph declares
    assert measure.count(path, spec, data).macs == 12 * 16 * 24


def test_prune_refuses_multihead_attention_with_the_reason(make_ctx) -> None:
    class WithMHA(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.flat = nn.Flatten(2)
            self.attn = nn.MultiheadAttention(64, 4, batch_first=True)
            self.head = nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.flat(x)
            return self.head(self.attn(h, h, h)[0][:, 0])

    with pytest.raises(InvalidInput, match=r"prune: .*attn \(nn.MultiheadAttention.*Use lowRank or quantize"):
        REGISTRY["prune"](ModelState(module=WithMHA().eval()), Prune(ratio=0.5), make_ctx())


def _uneven_depthwise(tmp_path: Path) -> tuple[Path, DataSet, str]:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU6(), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 4, 1)
    ).eval()
    with torch.no_grad():  # channels a thousand times apart: per-tensor int8 rounds the small ones to zero
        net[2].weight.mul_(torch.logspace(-3, 0.5, 8).view(8, 1, 1, 1))
        net[3].weight.div_(torch.logspace(-3, 0.5, 8).view(1, 8, 1, 1))
    x = np.random.default_rng(0).standard_normal((32, 3, 8, 8)).astype(np.float32)
    path = export_onnx(net, _data(x), ["x"], tmp_path / "net.onnx")
    depthwise = next(
        n.name for n in onnx.load(str(path)).graph.node if any(a.name == "group" and a.i > 1 for a in n.attribute)
    )
    return path, _data(x), depthwise


def test_a_layer_kept_in_float_between_int8_layers_stays_float_in_onnxruntime(tmp_path: Path) -> None:
    # onnxruntime's WeightBiasQuantization optimizer would quantize its weights per-tensor at load time.
    path, data, depthwise = _uneven_depthwise(tmp_path)
    ref = measure.predict(path, data)
    errors = {}
    for fmt in ("QOperator", "QDQ"):
        params = Quantize(format=fmt)
        static_int8(path, tmp_path / "all.onnx", params, data)
        static_int8(path, tmp_path / "kept.onnx", params, data, nodes_to_exclude=[depthwise])
        errors[fmt] = [
            float(np.abs(measure.predict(tmp_path / f, data) - ref).mean()) for f in ("all.onnx", "kept.onnx")
        ]
        assert errors[fmt][1] < errors[fmt][0], errors


def test_bias_correction_leaves_layers_kept_in_float_alone(tmp_path: Path) -> None:
    path, data, depthwise = _uneven_depthwise(tmp_path)
    out, changed = correct(path, tmp_path / "bc.onnx", data, per_channel=True, reduce_range=False, skip=[depthwise])
    assert changed == 2
    before = {n.name: n for n in onnx.load(str(path)).graph.node}[depthwise].input[2]
    biases = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    after = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(out)).graph.initializer}
    np.testing.assert_array_equal(after[before], biases[before])


def _depthwise_separable(tmp_path: Path) -> tuple[Path, DataSet, DataSet]:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1),
        nn.ReLU6(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16),
        nn.ReLU6(),
        nn.Conv2d(16, 24, 1),
        nn.Flatten(),
        nn.Linear(24 * 8 * 8, 10),
    ).eval()
    rng = np.random.default_rng(0)

    def draw(n: int) -> np.ndarray:  # smooth images: neighbouring pixels and channels correlate, as in photos
        base = rng.standard_normal((n, 1, 4, 4)).repeat(4, axis=2).repeat(4, axis=3)
        return (base + 0.3 * rng.standard_normal((n, 3, 16, 16))).astype(np.float32)

    calib, held_out = _data(draw(64)), _data(draw(64))
    return export_onnx(net, calib, ["x"], tmp_path / "ds.onnx"), calib, held_out


def _nearest(src: Path, dst: Path) -> Path:
    from slimserve.compression.recipes.biascorrection import _rounded
    from slimserve.compression.recipes.rounding import layers

    model = onnx.load(str(src))
    inits = {i.name: i for i in model.graph.initializer}
    for node in layers(model):
        w = onnx.numpy_helper.to_array(inits[node.input[1]])
        inits[node.input[1]].CopyFrom(onnx.numpy_helper.from_array(_rounded(w, True, 127), node.input[1]))
    onnx.save(model, str(dst))
    return dst


def test_gptq_rounding_beats_nearest_and_lands_on_onnxruntimes_int8_grid(tmp_path: Path) -> None:
    from slimserve.compression.recipes.rounding import round_weights

    path, calib, held_out = _depthwise_separable(tmp_path)
    rounded, changed = round_weights(path, tmp_path / "g.onnx", calib, per_channel=True, reduce_range=False)
    assert changed == 4  # stem, depthwise, pointwise, Gemm
    nearest = _nearest(path, tmp_path / "n.onnx")
    for data in (calib, held_out):  # weights alone: GPTQ keeps the float output closer, also on unseen inputs
        ref = measure.predict(path, data)
        gptq_err = np.mean((measure.predict(rounded, data) - ref) ** 2)
        nearest_err = np.mean((measure.predict(nearest, data) - ref) ** 2)
        assert gptq_err < 0.8 * nearest_err, (gptq_err, nearest_err)
    # onnxruntime's quantizer recomputes the scales from these weights and keeps every integer step.
    static_int8(rounded, tmp_path / "q.onnx", Quantize(), calib)
    quantized = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(tmp_path / "q.onnx")).graph.initializer}
    checked = 0
    for init in onnx.load(str(rounded)).graph.initializer:
        w = onnx.numpy_helper.to_array(init)
        if f"{init.name}_quantized" in quantized and w.ndim >= 2:
            scale = quantized[f"{init.name}_scale"].reshape(-1, *[1] * (w.ndim - 1))
            np.testing.assert_allclose(quantized[f"{init.name}_quantized"] * scale, w, rtol=1e-5, atol=1e-7)
            checked += 1
    assert checked == 4


def test_gptq_rounding_in_the_recipe_is_noted_and_refused_where_it_cannot_apply(tmp_path: Path, make_ctx) -> None:
    path, calib, held_out = _depthwise_separable(tmp_path)
    ctx = make_ctx(calibration=calib, evaluation=held_out)
    params = Quantize(weight_rounding="gptq")
    state = REGISTRY["quantize"](ModelState(onnx_path=path), params, ctx)
    assert any("GPTQ weight rounding on 4 Conv/Gemm layers" in n for n in ctx.notes), ctx.notes
    assert measure.predict(state.onnx_path, held_out).shape == (64, 10)
    for bad in ({"mode": "dynamic"}, {"mode": "fp16"}, {"weight_type": "uint8"}):
        with pytest.raises(ValueError, match="weightRounding 'gptq' needs mode 'static'"):
            Quantize(weight_rounding="gptq", **bad)
