"""config.pbtxt generation and the model repository layout (pure builder + file I/O, no server)."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from slimserve.api.report import CompressionReport
from slimserve.api.spec import DynamicBatching, Serving
from slimserve.errors import InvalidInput
from slimserve.triton.repository import (
    Signature,
    TensorSpec,
    build_config,
    build_repository,
    read_signature,
)

SIG = Signature(
    inputs=(TensorSpec("x", "TYPE_FP32", (None, 1, 8, 8)),),
    outputs=(TensorSpec("logits", "TYPE_FP32", (None, 10)),),
    op_types=frozenset({"Gemm", "Relu"}),
)


def test_config_has_names_types_dims_without_batch_and_batching() -> None:
    text = build_config("int8", SIG, Serving(max_batch_size=16), "python")
    assert 'name: "int8"' in text
    assert 'backend: "python"' in text
    assert "max_batch_size: 16" in text
    assert 'name: "x"\n    data_type: TYPE_FP32\n    dims: [ 1, 8, 8 ]' in text
    assert 'name: "logits"\n    data_type: TYPE_FP32\n    dims: [ 10 ]' in text
    assert "preferred_batch_size: [ 4, 8 ]" in text
    assert "max_queue_delay_microseconds: 500" in text
    assert "kind: KIND_CPU" in text
    assert "version_policy: { latest: { num_versions: 1 } }" in text
    assert 'key: "intra_op_threads"' in text
    assert "model_warmup" in text and "zero_data: true" in text and "batch_size: 1" in text


def test_preferred_sizes_above_max_batch_are_dropped() -> None:
    serving = Serving(max_batch_size=8, dynamic_batching=DynamicBatching(preferred_batch_sizes=[4, 8, 16]))
    assert "preferred_batch_size: [ 4, 8 ]" in build_config("m", SIG, serving, "onnxruntime")


def test_dynamic_inner_dims_become_minus_one_and_warmup_uses_one() -> None:
    sig = Signature(
        (TensorSpec("tokens", "TYPE_INT64", (None, None)),), (TensorSpec("y", "TYPE_FP32", (None, None, 4)),)
    )
    text = build_config("m", sig, Serving(), "onnxruntime")
    assert "data_type: TYPE_INT64\n    dims: [ -1 ]" in text
    assert "dims: [ -1, 4 ]" in text
    assert "data_type: TYPE_INT64 dims: [ 1 ] zero_data: true" in text


def test_no_batching_keeps_the_full_shape_and_omits_dynamic_batching() -> None:
    sig = Signature((TensorSpec("x", "TYPE_FP32", (1, 64)),), (TensorSpec("y", "TYPE_FP32", (1, 10)),))
    text = build_config("m", sig, Serving(max_batch_size=0), "onnxruntime")
    assert "max_batch_size: 0" in text
    assert "dims: [ 1, 64 ]" in text
    assert "dynamic_batching" not in text
    assert "batch_size: 1" not in text  # warm-up without batching carries no batch size


def test_fixed_batch_dim_with_batching_is_invalid_input_with_the_fix() -> None:
    sig = Signature((TensorSpec("x", "TYPE_FP32", (1, 64)),), (TensorSpec("y", "TYPE_FP32", (None, 10)),))
    with pytest.raises(InvalidInput, match="maxBatchSize: 0"):
        build_config("m", sig, Serving(), "python")


def test_per_sample_scalar_is_reshaped() -> None:
    sig = Signature((TensorSpec("x", "TYPE_FP32", (None,)),), (TensorSpec("y", "TYPE_FP32", (None,)),))
    text = build_config("m", sig, Serving(), "onnxruntime")
    assert "dims: [ 1 ]\n    reshape: { shape: [ ] }" in text


def test_onnxruntime_backend_threads_gpu_kind_and_tensorrt() -> None:
    gpu = Serving(instance_kind="gpu", instances=2, gpus=1)
    text = build_config("m", SIG, gpu, "onnxruntime", tensorrt=True)
    assert 'backend: "onnxruntime"' in text
    assert "count: 2\n    kind: KIND_GPU" in text
    assert 'key: "intra_op_thread_count"' in text
    assert 'name: "tensorrt"' in text
    # QOperator int8 graphs cannot go through TensorRT's parser; on CPU there is no accelerator at all.
    int8 = Signature(SIG.inputs, SIG.outputs, frozenset({"QLinearConv"}))
    assert "tensorrt" not in build_config("m", int8, gpu, "onnxruntime", tensorrt=True)
    assert "tensorrt" not in build_config("m", SIG, Serving(), "onnxruntime", tensorrt=True)


def test_unknown_backend_is_invalid() -> None:
    with pytest.raises(InvalidInput, match="backend"):
        build_config("m", SIG, Serving(), "tensorflow")  # type: ignore[arg-type]


def _graph(path: Path, op: str = "Relu", batch: str | int = "N") -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4])
    model = helper.make_model(helper.make_graph([helper.make_node(op, ["x"], ["y"])], "g", [x], [y]))
    onnx.save(model, str(path))


def test_read_signature_from_onnx(tmp_path: Path) -> None:
    _graph(tmp_path / "m.onnx")
    sig = read_signature(tmp_path / "m.onnx")
    assert sig.inputs == (TensorSpec("x", "TYPE_FP32", (None, 4)),)
    assert sig.outputs == (TensorSpec("y", "TYPE_FP32", (None, 4)),)
    assert sig.op_types == frozenset({"Relu"})


def test_corrupted_onnx_is_invalid_input_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage that is not a protobuf" * 10)
    with pytest.raises(InvalidInput, match="bad.onnx: not a readable ONNX model"):
        read_signature(bad)


def test_build_repository_layout_for_both_backends(compression_output: Path, tmp_path: Path) -> None:
    report = CompressionReport.model_validate_json((compression_output / "report.json").read_text())
    built = build_repository(report, compression_output, tmp_path / "py", "python", ["int8"])
    assert sorted(built) == ["baseline", "int8"]  # the baseline always comes along
    for name in built:
        assert (tmp_path / "py" / name / "1" / "model.onnx").is_file()
        assert (tmp_path / "py" / name / "1" / "model.py").is_file()
        assert f'name: "{name}"' in (tmp_path / "py" / name / "config.pbtxt").read_text()
    ort = build_repository(report, compression_output, tmp_path / "ort", "onnxruntime")
    assert sorted(ort) == ["baseline", "int8", "noisy", "slow", "twin"]
    assert not (tmp_path / "ort" / "int8" / "1" / "model.py").exists()
    with pytest.raises(InvalidInput, match="'nope' is not in the report"):
        build_repository(report, compression_output, tmp_path / "x", "python", ["nope"])


def test_external_data_files_travel_with_the_model(tmp_path: Path) -> None:
    import numpy as np
    from onnx import numpy_helper

    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    model = helper.make_model(helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [w]))
    onnx.save(model, str(tmp_path / "v.onnx"), save_as_external_data=True, location="weights.bin", size_threshold=0)
    sig = read_signature(tmp_path / "v.onnx")
    assert sig.external_files == ("weights.bin",)
    from slimserve.api.report import VariantRecord

    rec = VariantRecord(
        name="baseline", recipe="-", path="v.onnx", sha256="0", size_bytes=1, compression_ratio=1, params=0, macs=0,
        metric="accuracy", quality=1, quality_ci=(0, 1), quality_unit="%", drop=0, drop_ci=(0, 0), drop_unit="points", latency_ms_p50=1, latency_ms_p99=1,
        throughput_rps=1, speedup=1, compress_seconds=0,
    )  # fmt: skip
    report = CompressionReport(model="m", device="cpu", baseline=rec, variants=[])
    build_repository(report, tmp_path, tmp_path / "repo", "onnxruntime")
    assert (tmp_path / "repo" / "baseline" / "1" / "weights.bin").is_file()


def test_package_writes_a_variant_under_another_model_name(compression_output: Path, tmp_path: Path) -> None:
    """What the operator's packaging Job asks when a new generation's candidate is named like the stable."""
    from typer.testing import CliRunner

    from slimserve.cli.main import _register, app
    from tests.serving.conftest import write_spec

    _register()
    repo = tmp_path / "repo"
    (repo / "int8").mkdir(parents=True)
    (repo / "int8" / "config.pbtxt").write_text('name: "int8"  # the stable serves these files')
    spec = write_spec(tmp_path / "spec", compression_output)
    args = ["package", str(spec), "--report", str(compression_output / "report.json"), "--repository", str(repo),
            "--backend", "onnxruntime"]
    result = CliRunner().invoke(app, [*args, "--variants", "int8=int8-g2"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in repo.iterdir()) == ["baseline", "int8", "int8-g2"]
    assert 'name: "int8-g2"' in (repo / "int8-g2" / "config.pbtxt").read_text()
    assert (repo / "int8-g2" / "1" / "model.onnx").is_file()
    assert "the stable serves these files" in (repo / "int8" / "config.pbtxt").read_text()
    bad = CliRunner().invoke(app, [*args, "--variants", "int8=Int8_G2"])
    assert bad.exit_code == 2 and "model name 'Int8_G2'" in bad.stderr
