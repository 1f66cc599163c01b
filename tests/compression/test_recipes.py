"""Each recipe on its own, on tiny models: what it promises a user (smaller, fewer MACs, close outputs)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from slimserve.api.spec import Distill, FineTune, LowRank, Prune, Quantize
from slimserve.compression import measure
from slimserve.compression.export import export_onnx, size_bytes
from slimserve.compression.loading import InputSpec
from slimserve.compression.recipes import REGISTRY, ModelState
from slimserve.errors import InvalidInput
from tests.compression.conftest import digits_build

SPECS = [InputSpec("x", np.dtype(np.float32), (1, 8, 8))]


def _accuracy(path: Path, data) -> float:  # type: ignore[no-untyped-def]
    return 100.0 * float((measure.predict(path, data).argmax(-1) == data.labels).mean())


def _torch_accuracy(module: nn.Module, data) -> float:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        pred = module.eval()(torch.from_numpy(data.inputs["x"])).argmax(1).numpy()
    return float((pred == data.labels).mean() * 100)


def _linear_count(module: nn.Module) -> int:
    return sum(isinstance(m, nn.Linear) for m in module.modules())


# -- quantize ------------------------------------------------------------------------------


@pytest.mark.slow
def test_static_int8_is_four_times_smaller_within_a_point(trained_digits, make_ctx, digits_data) -> None:
    ctx = make_ctx()
    base = ctx.onnx(ModelState(module=trained_digits))
    out = REGISTRY["quantize"](ModelState(module=trained_digits), Quantize(calibration_samples=128), ctx)
    assert out.onnx_path is not None and out.float_onnx is not None and out.module is None
    ratio = size_bytes(base.onnx_path) / size_bytes(out.onnx_path)  # type: ignore[arg-type]
    assert 3.5 < ratio < 4.2
    ops = {n.op_type for n in onnx.load(str(out.onnx_path)).graph.node}
    assert "QLinearConv" in ops  # the fast QOperator form, not QDQ
    drop = _accuracy(base.onnx_path, digits_data["evaluation"]) - _accuracy(out.onnx_path, digits_data["evaluation"])
    assert drop <= 1.0
    assert any("static int8" in n for n in ctx.notes)


def test_fp16_halves_the_size_and_keeps_fp32_io(trained_digits, make_ctx, digits_data) -> None:
    ctx = make_ctx()
    base = ctx.onnx(ModelState(module=trained_digits))
    out = REGISTRY["quantize"](base, Quantize(mode="fp16"), ctx)
    assert 1.8 < size_bytes(base.onnx_path) / size_bytes(out.onnx_path) < 2.1  # type: ignore[arg-type]
    graph = onnx.load(str(out.onnx_path)).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    ours = measure.predict(out.onnx_path, digits_data["evaluation"]).argmax(-1)
    theirs = measure.predict(base.onnx_path, digits_data["evaluation"]).argmax(-1)
    assert (ours == theirs).mean() > 0.99


def test_dynamic_int8_on_an_mlp_and_exclude_op_types(make_ctx, tmp_path) -> None:
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    ctx = make_ctx()
    out = REGISTRY["quantize"](ModelState(module=mlp), Quantize(mode="dynamic"), ctx)
    ops = [n.op_type for n in onnx.load(str(out.onnx_path)).graph.node]
    assert "MatMulInteger" in ops
    kept = REGISTRY["quantize"](
        ModelState(module=mlp), Quantize(mode="dynamic", exclude_op_types=["Gemm"]), make_ctx(variant="kept")
    )
    kept_ops = [n.op_type for n in onnx.load(str(kept.onnx_path)).graph.node]
    assert "MatMulInteger" not in kept_ops and "DynamicQuantizeLinear" not in kept_ops


def test_unknown_excluded_node_is_invalid_input(trained_digits, make_ctx) -> None:
    with pytest.raises(InvalidInput, match=r"quantize.excludeNodes = \['nope'\]: no such node"):
        REGISTRY["quantize"](ModelState(module=trained_digits), Quantize(exclude_nodes=["nope"]), make_ctx())


# -- prune ---------------------------------------------------------------------------------


def test_structured_prune_cuts_macs_and_keeps_the_classifier(trained_digits, make_ctx) -> None:
    ctx = make_ctx()
    base = ctx.onnx(ModelState(module=trained_digits))
    out = REGISTRY["prune"](ModelState(module=copy.deepcopy(trained_digits)), Prune(ratio=0.5, round_to=4), ctx)
    pruned = out.module
    assert pruned is not None
    convs = [m for m in pruned.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 64]
    assert all(c.out_channels % 4 == 0 for c in convs)
    assert list(pruned.modules())[-1].out_features == 10  # the classifier's outputs are the model's
    pruned_onnx = ctx.onnx(out).onnx_path
    assert measure.count(base.onnx_path, SPECS).macs / measure.count(pruned_onnx, SPECS).macs >= 3.0
    assert pruned(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_keep_layers_are_not_pruned(trained_digits, make_ctx) -> None:
    out = REGISTRY["prune"](ModelState(module=trained_digits), Prune(ratio=0.5, keep_layers=["0"]), make_ctx())
    assert out.module[0].out_channels == 32  # type: ignore[index]
    assert out.module[3].out_channels == 32  # type: ignore[index]


def test_keep_layers_with_unknown_name(trained_digits, make_ctx) -> None:
    with pytest.raises(InvalidInput, match=r"prune.keepLayers = 'conv9': no such module"):
        REGISTRY["prune"](ModelState(module=trained_digits), Prune(ratio=0.5, keep_layers=["conv9"]), make_ctx())


def test_unstructured_prune_is_honest_about_speed(trained_digits, make_ctx) -> None:
    ctx = make_ctx()
    params_before = sum(p.numel() for p in trained_digits.parameters())
    out = REGISTRY["prune"](ModelState(module=trained_digits), Prune(ratio=0.5, method="unstructured"), ctx)
    module = out.module
    assert module is not None and sum(p.numel() for p in module.parameters()) == params_before
    first = module[0].weight  # type: ignore[index]
    assert 0.45 < float((first == 0).float().mean()) < 0.55
    note = next(n for n in ctx.notes if "unstructured" in n)
    assert "gzip" in note and "keeps its size and latency" in note


# -- lowRank -------------------------------------------------------------------------------


def test_low_rank_by_rank_is_exact_on_a_low_rank_layer(make_ctx) -> None:
    torch.manual_seed(0)
    layer = nn.Linear(64, 64)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(64, 4) @ torch.randn(4, 64))
    model = nn.Sequential(nn.Flatten(), layer, nn.ReLU(), nn.Linear(64, 10))
    reference = copy.deepcopy(model)
    ctx = make_ctx()
    out = REGISTRY["lowRank"](ModelState(module=model), LowRank(rank=4, layers=["1"]), ctx)
    assert out.module is not None
    assert sum(p.numel() for p in out.module.parameters()) < sum(p.numel() for p in reference.parameters())
    x = torch.rand(8, 1, 8, 8)
    torch.testing.assert_close(out.module(x), reference(x), atol=1e-4, rtol=1e-4)
    assert "1(rank 4)" in ctx.notes[0]


def test_low_rank_never_grows_a_layer(make_ctx) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    ctx = make_ctx()
    out = REGISTRY["lowRank"](ModelState(module=model), LowRank(energy=1.0, layers=["1"]), ctx)
    assert _linear_count(out.module) == 1  # type: ignore[arg-type]
    assert "unchanged" in ctx.notes[0]


def test_low_rank_keeps_the_final_layer_and_multihead_attention_working(make_ctx) -> None:
    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.flat = nn.Flatten(2)  # [N, 1, 8, 8] -> [N, 1, 64]: one token of 64 features
            self.proj = nn.Linear(64, 64)
            self.attn = nn.MultiheadAttention(64, 4, batch_first=True)
            self.head = nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.proj(self.flat(x))
            return self.head(self.attn(h, h, h)[0][:, 0])

    torch.manual_seed(0)
    model = Encoder().eval()
    ctx = make_ctx()
    out = REGISTRY["lowRank"](ModelState(module=model), LowRank(rank=4), ctx)
    assert out.module is not None
    assert isinstance(out.module.attn.out_proj, nn.Linear) and isinstance(out.module.head, nn.Linear)
    assert isinstance(out.module.proj, nn.Sequential)  # the plain Linear was factorized
    out.module(torch.zeros(2, 1, 8, 8))  # MultiheadAttention still runs
    assert any("attn.out_proj (inside nn.MultiheadAttention)" in n and "head (the final layer)" in n for n in ctx.notes)


def test_low_rank_factorizes_1x1_convs(make_ctx) -> None:
    conv = nn.Conv2d(64, 64, 1)
    model = nn.Sequential(nn.Conv2d(1, 64, 3, padding=1), conv, nn.Flatten(), nn.Linear(64 * 64, 10))
    out = REGISTRY["lowRank"](ModelState(module=model), LowRank(rank=8, layers=["1"]), make_ctx())
    replaced = out.module[1]  # type: ignore[index]
    assert isinstance(replaced, nn.Sequential) and replaced[0].out_channels == 8


# -- fineTune and distill ------------------------------------------------------------------


@pytest.mark.slow
def test_fine_tune_recovers_accuracy_after_pruning(trained_digits, make_ctx, digits_data) -> None:
    ctx = make_ctx()
    pruned = REGISTRY["prune"](ModelState(module=trained_digits), Prune(ratio=0.7), ctx)
    before = _torch_accuracy(pruned.module, digits_data["evaluation"])  # type: ignore[arg-type]
    tuned = REGISTRY["fineTune"](pruned, FineTune(epochs=3, lr=2e-3), ctx)
    after = _torch_accuracy(tuned.module, digits_data["evaluation"])  # type: ignore[arg-type]
    assert after > 95.0 and after >= before
    assert any(n.startswith("fineTune: train-set loss (eval mode)") for n in ctx.notes), ctx.notes


def test_fine_tune_that_cannot_improve_returns_the_model_it_was_given(trained_digits, make_ctx, digits_data) -> None:
    """Label-free fine-tune of an unchanged model: the loss starts at zero, so every AdamW step (which does
    not shrink with the gradient) can only make it worse. The start is kept, bit for bit, and the note says so."""
    unlabeled = type(digits_data["train"])(digits_data["train"].path, digits_data["train"].inputs, None).head(128)
    ctx = make_ctx(train=unlabeled, teacher=trained_digits)
    model = copy.deepcopy(trained_digits)
    tuned = REGISTRY["fineTune"](ModelState(module=model), FineTune(epochs=2, lr=1e-2, batch_size=32), ctx)
    assert tuned.module is not None
    before, after = trained_digits.state_dict(), tuned.module.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before), "the fine-tune moved a model it could not improve"
    assert any("kept the model it was given" in n for n in ctx.notes), ctx.notes


def test_fine_tune_without_train_set_is_invalid(trained_digits, make_ctx) -> None:
    with pytest.raises(InvalidInput, match="spec.data.train is missing"):
        REGISTRY["fineTune"](ModelState(module=trained_digits), FineTune(), make_ctx(train=None))


@pytest.mark.slow
def test_distill_half_width_student_learns(trained_digits, make_ctx, digits_data) -> None:
    ctx = make_ctx()
    out = REGISTRY["distill"](
        ModelState(module=trained_digits), Distill(student={"widthMultiplier": 0.5}, epochs=4, lr=3e-3), ctx
    )
    student = out.module
    assert student is not None
    assert sum(p.numel() for p in student.parameters()) < 0.3 * sum(p.numel() for p in trained_digits.parameters())
    assert _torch_accuracy(student, digits_data["evaluation"]) > 90.0


def test_distill_without_labels_uses_soft_targets_only(trained_digits, make_ctx, digits_data) -> None:
    unlabeled = type(digits_data["train"])(digits_data["train"].path, digits_data["train"].inputs, None).head(128)
    ctx = make_ctx(train=unlabeled)
    params = Distill(student={"widthMultiplier": 0.25}, epochs=1)
    out = REGISTRY["distill"](ModelState(module=trained_digits), params, ctx)
    assert out.module is not None
    assert any("teacher's outputs only" in n for n in ctx.notes)


def test_distill_width_needs_a_width_parameter(trained_digits, make_ctx) -> None:
    def fixed() -> nn.Module:
        return digits_build()

    def two(a: int = 1, b: int = 2) -> nn.Module:
        return digits_build()

    ctx = make_ctx(factory=two, factory_ref="model:two")
    with pytest.raises(InvalidInput, match=r"takes no width parameter"):
        REGISTRY["distill"](ModelState(module=trained_digits), Distill(student={"widthMultiplier": 0.5}, epochs=1), ctx)
    ctx = make_ctx(factory=None, factory_ref=None)
    with pytest.raises(InvalidInput, match=r"needs source.format factory"):
        REGISTRY["distill"](ModelState(module=trained_digits), Distill(student={"widthMultiplier": 0.5}, epochs=1), ctx)
    assert fixed is not None


def test_distill_with_a_student_factory(trained_digits, make_ctx, tmp_path) -> None:
    (tmp_path / "students.py").write_text(
        "from torch import nn\ndef tiny():\n    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))\n"
    )
    out = REGISTRY["distill"](
        ModelState(module=trained_digits),
        Distill(student={"factory": "students:tiny"}, epochs=1),
        make_ctx(base_dir=tmp_path),
    )
    assert sum(p.numel() for p in out.module.parameters()) == 650  # type: ignore[union-attr]


def test_torch_recipe_after_quantize_is_refused(trained_digits, make_ctx) -> None:
    ctx = make_ctx()
    quantized = REGISTRY["quantize"](ModelState(module=trained_digits), Quantize(mode="fp16"), ctx)
    with pytest.raises(InvalidInput, match="prune needs a PyTorch model"):
        REGISTRY["prune"](quantized, Prune(ratio=0.5), ctx)


def test_export_has_a_dynamic_batch_dimension(trained_digits, digits_data, tmp_path) -> None:
    path = export_onnx(trained_digits, digits_data["evaluation"], ["x"], tmp_path / "m.onnx")
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == ["x"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    for batch in (1, 7):
        out = measure.session(path).run(None, {"x": digits_data["evaluation"].inputs["x"][:batch]})[0]
        assert out.shape == (batch, 10)


@pytest.mark.parametrize(
    ("options", "expected_op"),
    [
        ({"calibration": "entropy"}, "QLinearConv"),
        ({"calibration": "percentile", "percentile": 99.99}, "QLinearConv"),
        ({"format": "QDQ", "activation_type": "int8"}, "DequantizeLinear"),
    ],
)
def test_static_calibration_methods_and_formats(trained_digits, make_ctx, digits_data, options, expected_op) -> None:
    ctx = make_ctx(calibration=digits_data["calibration"].head(64))
    base = ctx.onnx(ModelState(module=trained_digits))
    out = REGISTRY["quantize"](base, Quantize(**options), ctx)
    assert expected_op in {n.op_type for n in onnx.load(str(out.onnx_path)).graph.node}
    drop = _accuracy(base.onnx_path, digits_data["evaluation"]) - _accuracy(out.onnx_path, digits_data["evaluation"])
    assert drop <= 1.0


def test_round_to_that_prunes_far_more_than_the_ratio_is_noted(trained_digits, make_ctx) -> None:
    """torch-pruning rounds the kept width down: at roundTo 32 the 32-channel conv keeps 32 or nothing,
    the 64-channel one 32 (50% for ratio 0.1). EfficientNet-Lite0's 16-channel layers lost half this way."""
    ctx = make_ctx()
    REGISTRY["prune"](ModelState(module=copy.deepcopy(trained_digits)), Prune(ratio=0.1, round_to=32), ctx)
    note = next(n for n in ctx.notes if "rounds kept channels down" in n)
    assert "64 → 32" in note and "keepLayers" in note
    plain = make_ctx()
    REGISTRY["prune"](ModelState(module=copy.deepcopy(trained_digits)), Prune(ratio=0.1, round_to=4), plain)
    assert not any("rounds kept channels down" in n for n in plain.notes)
