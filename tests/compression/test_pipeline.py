"""run_compression end to end: the bundled example, compression-report.json's shape, atomic output, multi-input models."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from slimserve.api import CompressionReport, load_compressed_model
from slimserve.compression import run_compression
from slimserve.compression.export import export_onnx
from slimserve.compression.loading import DataSet
from slimserve.errors import InvalidInput
from tests.compression.conftest import DIGITS, TokenModel, digits_spec, token_data, write_spec

RECORD_KEYS = {
    "name": str,
    "recipe": str,
    "path": str,
    "sha256": str,
    "sizeBytes": int,
    "compressionRatio": float,
    "params": int,
    "macs": int,
    "metric": str,
    "metricDetail": str,
    "quality": float,
    "qualityCI": list,
    "qualityUnit": str,
    "drop": float,
    "dropCI": list,
    "dropUnit": str,
    "latencyMsP50": float,
    "latencyMsP99": float,
    "throughputRps": float,
    "speedup": float,
    "compressSeconds": float,
    "notes": list,
    "passed": (bool, type(None)),
    "served": (dict, type(None)),
    "speedupRange": (list, type(None)),
    "throughputSpeedup": (float, int, type(None)),
}


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> tuple[CompressionReport, Path]:
    """The bundled example exactly as `make demo` runs it."""
    out = tmp_path_factory.mktemp("digits") / "out"
    spec = DIGITS / "compressedmodel.yaml"
    return run_compression(load_compressed_model(spec), spec.parent, out), out


@pytest.mark.slow
def test_report_json_shape_is_stable(example: tuple[CompressionReport, Path]) -> None:
    _, out = example
    data: dict[str, Any] = json.loads((out / "compression-report.json").read_text())
    assert set(data) == {"model", "device", "baseline", "variants", "search", "failures", "environment"}
    assert data["failures"] == []
    assert (out / "compress.log").is_file()
    assert data["environment"]["cpuInstructionSets"] != ""
    for record in [data["baseline"], *data["variants"]]:
        assert set(record) == set(RECORD_KEYS)
        for key, kind in RECORD_KEYS.items():
            value = record[key]
            if kind is float:
                assert isinstance(value, (int, float)) and not isinstance(value, bool), key
            else:
                assert isinstance(value, kind), key
        assert len(record["qualityCI"]) == 2 and len(record["dropCI"]) == 2 and record["metric"] == "accuracy"
        assert record["dropUnit"] == "points" and record["qualityUnit"] == "% correct"
    assert [v["name"] for v in data["variants"]] == [
        "int8-static",
        "fp16",
        "pruned-50",
        "low-rank",
        "distilled",
        "pruned-int8",
    ]
    assert data["baseline"]["name"] == "baseline" and data["baseline"]["path"] == "baseline.onnx"
    assert CompressionReport.model_validate(data).model == "digits-cnn"


@pytest.mark.slow
def test_example_variants_keep_their_promises(example: tuple[CompressionReport, Path]) -> None:
    report, out = example
    v = {r.name: r for r in report.variants}
    base = report.baseline
    assert base.quality > 97.5
    assert 3.5 <= v["int8-static"].compression_ratio < 4.2 and v["int8-static"].drop <= 1.0
    assert 1.8 < v["fp16"].compression_ratio < 2.1
    assert base.macs / v["pruned-50"].macs >= 3.0 and v["pruned-50"].drop <= 1.0
    assert v["low-rank"].params < base.params
    assert v["distilled"].params < base.params / 3
    assert v["pruned-int8"].compression_ratio >= 8.0 and v["pruned-int8"].drop <= 1.0
    for r in report.variants:  # 540 samples: the paired interval is never narrower than a few tenths of a point
        low, high = r.drop_ci
        assert high - low > 0.3
    for r in [base, *report.variants]:
        path = out / r.path
        assert hashlib.sha256(path.read_bytes()).hexdigest() == r.sha256
    assert any("float graph before quantization" in n for n in v["int8-static"].notes)
    assert (out / "compression-report.md").read_text().count("| pruned-int8 |") == 1
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == [] and not (out / ".work").exists()


def test_a_failing_variant_is_a_result_and_the_run_goes_on(tmp_path: Path) -> None:
    variants = [
        {"name": "fp16", "steps": [{"quantize": {"mode": "fp16"}}]},
        {"name": "bad", "steps": [{"quantize": {"mode": "fp16", "excludeNodes": ["nope"]}}]},
    ]
    spec = write_spec(tmp_path, digits_spec(tmp_path, variants))
    out = tmp_path / "out"
    report = run_compression(load_compressed_model(spec), tmp_path, out)
    assert [v.name for v in report.variants] == ["fp16"]
    (failure,) = report.failures
    assert failure.name == "bad" and failure.step == "steps[0] (quantize)"
    assert "spec.compression.variants[1].steps[0].quantize.excludeNodes" in failure.reason and "nope" in failure.reason
    assert not (out / "bad.onnx").exists()
    assert json.loads((out / "compression-report.json").read_text())["failures"][0]["name"] == "bad"


def test_when_every_variant_fails_the_run_fails_and_keeps_the_previous_output(tmp_path: Path) -> None:
    variants = [{"name": "fp16", "steps": [{"quantize": {"mode": "fp16"}}]}]
    spec = write_spec(tmp_path, digits_spec(tmp_path, variants))
    out = tmp_path / "out"
    run_compression(load_compressed_model(spec), tmp_path, out)
    before = (out / "compression-report.json").read_bytes()
    bad = [{"name": "bad", "steps": [{"quantize": {"mode": "fp16", "excludeNodes": ["nope"]}}]}]
    spec = write_spec(tmp_path, digits_spec(tmp_path, bad))
    with pytest.raises(InvalidInput, match=r"variant bad \(steps\[0\] \(quantize\)\).*excludeNodes"):
        run_compression(load_compressed_model(spec), tmp_path, out)
    assert (out / "compression-report.json").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folder left


def test_out_dir_that_is_not_an_output_is_refused(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.txt").write_text("keep me")
    spec = write_spec(tmp_path, digits_spec(tmp_path, [{"name": "fp16", "steps": [{"quantize": {"mode": "fp16"}}]}]))
    with pytest.raises(InvalidInput, match="not a slimserve output"):
        run_compression(load_compressed_model(spec), tmp_path, tmp_path / "out")
    assert (tmp_path / "out" / "precious.txt").read_text() == "keep me"


def test_recipe_crash_names_the_variant_and_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from slimserve.compression.recipes import REGISTRY

    def broken(*_: object) -> None:
        raise ZeroDivisionError("boom")

    monkeypatch.setitem(REGISTRY, "lowRank", broken)
    variants = [
        {"name": "lr", "steps": [{"lowRank": {"rank": 4}}]},
        {"name": "fp16", "steps": [{"quantize": {"mode": "fp16"}}]},
    ]
    spec = write_spec(tmp_path, digits_spec(tmp_path, variants))
    report = run_compression(load_compressed_model(spec), tmp_path, tmp_path / "out")
    (failure,) = report.failures
    assert failure.name == "lr" and failure.step == "steps[0] (lowRank)"
    assert "variants[0].steps[0] (lowRank) failed: ZeroDivisionError: boom" in failure.reason
    assert [v.name for v in report.variants] == ["fp16"]


def _token_files(folder: Path) -> None:
    torch.manual_seed(0)
    model = TokenModel().eval()
    torch.save(model.state_dict(), folder / "tokens.pt")
    (folder / "tokenmodel.py").write_text(
        "from tests.compression.conftest import TokenModel\n\ndef build():\n    return TokenModel()\n"
    )
    np.savez(folder / "eval.npz", **token_data(64, seed=1))
    np.savez(folder / "train.npz", **token_data(64, seed=2))
    export_onnx(model, DataSet(folder, token_data(4), None), ["input_ids", "attention_mask"], folder / "tokens.onnx")


def test_two_int64_inputs_from_onnx_with_dynamic_int8(tmp_path: Path) -> None:
    _token_files(tmp_path)
    spec = write_spec(
        tmp_path,
        {
            "source": {"uri": "tokens.onnx", "format": "onnx"},
            "data": {"evaluation": "eval.npz"},
            "quality": {"metric": "agreement"},
            "compression": {
                "measure": {"latencyRuns": 10, "throughputBatch": 4},
                "variants": [{"name": "int8", "steps": [{"quantize": {"mode": "dynamic"}}]}],
            },
        },
    )
    report = run_compression(load_compressed_model(spec), tmp_path, tmp_path / "out")
    assert report.baseline.metric == "agreement" and report.baseline.quality == 100.0
    (int8,) = report.variants
    assert int8.quality >= 90.0 and int8.compression_ratio > 1.5
    graph = onnx.load(str(tmp_path / "out" / int8.path)).graph
    assert [(i.name, i.type.tensor_type.elem_type) for i in graph.input] == [
        ("input_ids", onnx.TensorProto.INT64),
        ("attention_mask", onnx.TensorProto.INT64),
    ]


def test_two_int64_inputs_from_a_factory_with_low_rank_and_fine_tune(tmp_path: Path) -> None:
    _token_files(tmp_path)
    spec = write_spec(
        tmp_path,
        {
            "source": {"uri": "tokens.pt", "format": "factory", "factory": "tokenmodel:build"},
            "data": {"train": "train.npz", "evaluation": "eval.npz"},
            "quality": {"metric": "agreement"},
            "compression": {
                "measure": {"latencyRuns": 10, "throughputBatch": 4},
                "variants": [{"name": "lr", "steps": [{"lowRank": {"rank": 8}}, {"fineTune": {"epochs": 1}}]}],
            },
        },
    )
    report = run_compression(load_compressed_model(spec), tmp_path, tmp_path / "out")
    (lr,) = report.variants
    assert lr.params < report.baseline.params
    # no labels: fine-tune distils from the baseline (the source), not from the factorized model itself
    assert any("distilled from the baseline" in n and "KL" in n for n in lr.notes)
    names = [i.name for i in onnx.load(str(tmp_path / "out" / "baseline.onnx")).graph.input]
    assert names == ["input_ids", "attention_mask"]


@pytest.mark.parametrize("fmt", ["torchscript", "torch-export"])
def test_torchscript_and_torch_export_sources(tmp_path: Path, trained_digits: torch.nn.Module, fmt: str) -> None:
    example = torch.zeros(2, 1, 8, 8)
    if fmt == "torchscript":
        torch.jit.save(torch.jit.trace(trained_digits, example), tmp_path / "m.pt")
        uri = "m.pt"
    else:
        program = torch.export.export(trained_digits, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
        torch.export.save(program, tmp_path / "m.pt2")
        uri = "m.pt2"
    body = digits_spec(
        tmp_path,
        [
            {"name": "int8", "steps": [{"quantize": {"calibrationSamples": 64}}]},
            {"name": "tuned", "steps": [{"fineTune": {"epochs": 1, "lr": 1e-4}}]},
        ],
    )
    body["source"] = {"uri": uri, "format": fmt}
    report = run_compression(load_compressed_model(write_spec(tmp_path, body)), tmp_path, tmp_path / "out")
    assert report.baseline.quality > 97.5
    int8, tuned = report.variants
    assert int8.compression_ratio > 3.5 and int8.drop <= 1.0 and tuned.drop <= 1.0
    body["compression"]["variants"] = [{"name": "p", "steps": [{"prune": {"ratio": 0.5}}]}]  # type: ignore[index]
    with pytest.raises(InvalidInput, match=r"variants\[0\].steps\[0\].prune: .*give a factory source"):
        run_compression(load_compressed_model(write_spec(tmp_path, body)), tmp_path, tmp_path / "out2")


def test_onnx_source_with_a_fixed_batch_is_measured_at_that_batch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    torch.onnx.export(net, (torch.zeros(1, 1, 8, 8),), str(tmp_path / "fixed.onnx"), input_names=["x"], dynamo=False)
    body = digits_spec(tmp_path, [{"name": "int8", "steps": [{"quantize": {"calibrationSamples": 50}}]}])
    body["source"] = {"uri": "fixed.onnx", "format": "onnx"}
    report = run_compression(load_compressed_model(write_spec(tmp_path, body)), tmp_path, tmp_path / "out")
    assert any("fixed batch of 1" in n for n in report.baseline.notes)
    assert report.variants[0].drop <= 1.0


def test_auto_reads_the_onnx_output_name_when_quality_output_is_unset(tmp_path: Path) -> None:
    """Regression: an unlabelled ONNX classifier whose output is named 'logits' (EfficientNet as exported by
    examples/efficientnet/prepare.py) made `auto` fail, since only spec.quality.output was consulted."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    torch.onnx.export(
        net,
        (torch.zeros(2, 1, 8, 8),),
        str(tmp_path / "cls.onnx"),
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
        dynamo=False,
    )
    with np.load(DIGITS / "data" / "test.npz") as npz:
        np.savez(tmp_path / "unlabelled.npz", x=npz["x"][:100])
    body = digits_spec(tmp_path, [{"name": "fp16", "steps": [{"quantize": {"mode": "fp16"}}]}])
    body["source"] = {"uri": "cls.onnx", "format": "onnx"}
    body["data"] = {"evaluation": "unlabelled.npz"}
    report = run_compression(load_compressed_model(write_spec(tmp_path, body)), tmp_path, tmp_path / "out")
    assert report.baseline.metric == "agreement"
    assert "output named 'logits'" in report.baseline.metric_detail
    assert report.variants[0].drop <= 1.0


def test_evaluation_data_the_model_cannot_take_is_an_input_error(tmp_path: Path) -> None:
    with np.load(DIGITS / "data" / "test.npz") as npz:
        np.savez(tmp_path / "flat.npz", x=npz["x"].reshape(len(npz["x"]), -1), y=npz["y"])
    spec = digits_spec(tmp_path, [{"name": "fp16", "steps": [{"quantize": {"mode": "fp16"}}]}])
    spec["data"]["evaluation"] = str(tmp_path / "flat.npz")  # type: ignore[index]
    with pytest.raises(
        InvalidInput, match=r"spec.data.evaluation = .*flat.npz.*cannot run on its samples \('x' \[\d+, 64\]"
    ):
        run_compression(load_compressed_model(write_spec(tmp_path, spec)), tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
