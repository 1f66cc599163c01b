"""config.pbtxt generation and the model repository layout (pure builder + file I/O, no server)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
import pytest
from google.protobuf import text_format
from onnx import TensorProto, helper
from tritonclient.grpc import model_config_pb2 as mc

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


def config(*args: Any, **kwargs: Any) -> mc.ModelConfig:
    """`build_config`'s text parsed back as Triton parses it."""
    return text_format.Parse(build_config(*args, **kwargs), mc.ModelConfig())


def tensors(messages: Any) -> dict[str, tuple[str, list[int]]]:
    return {t.name: (mc.DataType.Name(t.data_type), list(t.dims)) for t in messages}


def test_config_has_names_types_dims_without_batch_and_batching() -> None:
    c = config("int8", SIG, Serving(max_batch_size=16), "python")
    assert (c.name, c.backend, c.max_batch_size) == ("int8", "python", 16)
    assert tensors(c.input) == {"x": ("TYPE_FP32", [1, 8, 8])}
    assert tensors(c.output) == {"logits": ("TYPE_FP32", [10])}
    assert not c.input[0].HasField("reshape")
    assert list(c.dynamic_batching.preferred_batch_size) == [4, 8]
    assert c.dynamic_batching.max_queue_delay_microseconds == 500
    assert [(g.count, g.kind) for g in c.instance_group] == [(1, mc.ModelInstanceGroup.KIND_CPU)]
    assert c.version_policy.latest.num_versions == 1
    assert {k: v.string_value for k, v in c.parameters.items()} == {"intra_op_threads": "1"}
    (warmup,) = c.model_warmup
    assert warmup.batch_size == 1
    assert {k: (list(v.dims), v.zero_data) for k, v in warmup.inputs.items()} == {"x": ([1, 8, 8], True)}


def test_preferred_sizes_above_max_batch_are_dropped() -> None:
    serving = Serving(max_batch_size=8, dynamic_batching=DynamicBatching(preferred_batch_sizes=[4, 8, 16]))
    assert list(config("m", SIG, serving, "onnxruntime").dynamic_batching.preferred_batch_size) == [4, 8]


def test_dynamic_inner_dims_become_minus_one_and_warmup_uses_one() -> None:
    sig = Signature(
        (TensorSpec("tokens", "TYPE_INT64", (None, None)),), (TensorSpec("y", "TYPE_FP32", (None, None, 4)),)
    )
    c = config("m", sig, Serving(), "onnxruntime")
    assert tensors(c.input) == {"tokens": ("TYPE_INT64", [-1])}
    assert tensors(c.output) == {"y": ("TYPE_FP32", [-1, 4])}
    warm = c.model_warmup[0].inputs["tokens"]
    assert (warm.data_type, list(warm.dims), warm.zero_data) == (mc.TYPE_INT64, [1], True)


def test_no_batching_keeps_the_full_shape_and_omits_dynamic_batching() -> None:
    sig = Signature((TensorSpec("x", "TYPE_FP32", (1, 64)),), (TensorSpec("y", "TYPE_FP32", (1, 10)),))
    c = config("m", sig, Serving(max_batch_size=0), "onnxruntime")
    assert c.max_batch_size == 0
    assert tensors(c.input) == {"x": ("TYPE_FP32", [1, 64])}
    assert not c.HasField("dynamic_batching")
    assert c.model_warmup[0].batch_size == 0  # warm-up without batching carries no batch size


def test_string_inputs_get_no_warmup() -> None:
    sig = Signature((TensorSpec("s", "TYPE_STRING", (None,)),), (TensorSpec("y", "TYPE_FP32", (None, 4)),))
    assert len(config("m", sig, Serving(), "onnxruntime").model_warmup) == 0


def test_fixed_batch_dim_with_batching_is_invalid_input_with_the_fix() -> None:
    sig = Signature((TensorSpec("x", "TYPE_FP32", (1, 64)),), (TensorSpec("y", "TYPE_FP32", (None, 10)),))
    with pytest.raises(InvalidInput, match="maxBatchSize: 0"):
        build_config("m", sig, Serving(), "python")


def test_per_sample_scalar_is_reshaped() -> None:
    sig = Signature((TensorSpec("x", "TYPE_FP32", (None,)),), (TensorSpec("y", "TYPE_FP32", (None,)),))
    c = config("m", sig, Serving(), "onnxruntime")
    for tensor in (*c.input, *c.output):
        assert list(tensor.dims) == [1] and tensor.HasField("reshape") and list(tensor.reshape.shape) == []


def test_onnxruntime_backend_threads_gpu_kind_and_tensorrt() -> None:
    gpu = Serving(instance_kind="gpu", instances=2, gpus=1)
    c = config("m", SIG, gpu, "onnxruntime", tensorrt=True, intra_op_threads=2)
    assert c.backend == "onnxruntime"
    assert [(g.count, g.kind) for g in c.instance_group] == [(2, mc.ModelInstanceGroup.KIND_GPU)]
    assert {k: v.string_value for k, v in c.parameters.items()} == {
        "intra_op_thread_count": "2",
        "inter_op_thread_count": "1",
    }
    (accelerator,) = c.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt"
    assert dict(accelerator.parameters) == {"precision_mode": "FP16", "max_workspace_size_bytes": "1073741824"}
    # QOperator int8 graphs cannot go through TensorRT's parser; on CPU there is no accelerator at all.
    int8 = Signature(SIG.inputs, SIG.outputs, frozenset({"QLinearConv"}))
    assert not config("m", int8, gpu, "onnxruntime", tensorrt=True).HasField("optimization")
    assert not config("m", SIG, Serving(), "onnxruntime", tensorrt=True).HasField("optimization")


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
    report = CompressionReport.model_validate_json((compression_output / "compression-report.json").read_text())
    built = build_repository(report, compression_output, tmp_path / "py", "python", ["int8"])
    assert sorted(built) == ["baseline", "int8"]  # the baseline always comes along
    for name in built:
        assert (tmp_path / "py" / name / "1" / "model.onnx").is_file()
        assert (tmp_path / "py" / name / "1" / "model.py").is_file()
        c = text_format.Parse((tmp_path / "py" / name / "config.pbtxt").read_text(), mc.ModelConfig())
        assert (c.name, c.backend) == (name, "python")
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


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/hostname", "sub/../../outside.bin"])
def test_external_data_outside_the_model_folder_is_refused(tmp_path: Path, location: str) -> None:
    """A graph whose weights point outside its folder would copy that file into what ships."""
    import numpy as np
    from onnx import numpy_helper
    from onnx.external_data_helper import set_external_data

    (tmp_path / "outside.bin").write_bytes(np.ones((4, 4), np.float32).tobytes())
    folder = tmp_path / "model"
    folder.mkdir()
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    set_external_data(w, location=location)
    w.ClearField("raw_data")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    model = helper.make_model(helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [w]))
    onnx.save(model, str(folder / "v.onnx"))
    from slimserve.api.report import VariantRecord

    rec = VariantRecord(
        name="baseline", recipe="-", path="v.onnx", sha256="0", size_bytes=1, compression_ratio=1, params=0, macs=0,
        metric="accuracy", quality=1, quality_ci=(0, 1), quality_unit="%", drop=0, drop_ci=(0, 0), drop_unit="points",
        latency_ms_p50=1, latency_ms_p99=1, throughput_rps=1, speedup=1, compress_seconds=0,
    )  # fmt: skip
    report = CompressionReport(model="m", device="cpu", baseline=rec, variants=[])
    with pytest.raises(InvalidInput, match=r"external data location .* outside its folder"):
        build_repository(report, folder, tmp_path / "repo", "onnxruntime")
    assert not any((tmp_path / "repo").rglob("*.bin")), "nothing from outside was copied"


def test_package_writes_a_variant_under_another_model_name(compression_output: Path, tmp_path: Path) -> None:
    """What the operator's packaging Job asks when a new generation's candidate is named like the stable."""
    from typer.testing import CliRunner

    from slimserve.cli.main import app
    from tests.serving.conftest import write_spec

    repo = tmp_path / "repo"
    (repo / "int8").mkdir(parents=True)
    (repo / "int8" / "config.pbtxt").write_text('name: "int8"  # the stable serves these files')
    spec = write_spec(tmp_path / "spec", compression_output)
    args = [
        "package",
        str(spec),
        "--report",
        str(compression_output / "compression-report.json"),
        "--repository",
        str(repo),
        "--backend",
        "onnxruntime",
    ]
    result = CliRunner().invoke(app, [*args, "--variants", "int8=int8-g2"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in repo.iterdir()) == ["baseline", "int8", "int8-g2"]
    assert text_format.Parse((repo / "int8-g2" / "config.pbtxt").read_text(), mc.ModelConfig()).name == "int8-g2"
    assert (repo / "int8-g2" / "1" / "model.onnx").is_file()
    assert "the stable serves these files" in (repo / "int8" / "config.pbtxt").read_text()
    bad = CliRunner().invoke(app, [*args, "--variants", "int8=Int8_G2"])
    assert bad.exit_code == 2 and "model name 'Int8_G2'" in bad.stderr
