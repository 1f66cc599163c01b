"""Triton model repositories built from a compression report: one model per variant.

The same builder serves two worlds. In a cluster the official Triton image serves each variant with
its native `onnxruntime` backend (optionally with the TensorRT accelerator on GPU). On one machine
the `nvidia-pytriton` wheel's Triton has only the Python backend, so each variant becomes a
Python-backend model whose `model.py` runs the very same ONNX file with onnxruntime. Only
`config.pbtxt`'s backend section differs, so what the gate measured locally is what ships.

`build_config` is pure (typed inputs to Triton's `ModelConfig` text); `read_signature` and `build_repository` do the I/O.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal, TypeVar

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import np_to_triton_dtype

from slimserve.api.report import CompressionReport, VariantRecord
from slimserve.api.spec import Serving
from slimserve.errors import InvalidInput

RepositoryBackend = Literal["onnxruntime", "python"]
BACKENDS: Final = ("onnxruntime", "python")
MODEL_FILE: Final = "model.onnx"
VERSION: Final = "1"
PYTHON_MODEL_SOURCE: Final = Path(__file__).with_name("python_model.py")
TensorMessage = TypeVar("TensorMessage", mc.ModelInput, mc.ModelOutput)

# Ops TensorRT's ONNX parser cannot take (QOperator int8 graphs): such variants skip the accelerator.
NOT_TENSORRT_OPS: Final = frozenset(
    {
        "QLinearConv",
        "QLinearMatMul",
        "QLinearAdd",
        "QLinearMul",
        "ConvInteger",
        "MatMulInteger",
        "DynamicQuantizeLinear",
    }
)


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output as ONNX declares it; `None` in `shape` is a dynamic dimension."""

    name: str
    data_type: str
    shape: tuple[int | None, ...]


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    op_types: frozenset[str] = field(default_factory=frozenset)
    external_files: tuple[str, ...] = ()  # external-data files the graph names, relative to it


def triton_data_type(elem_type: int) -> str | None:
    """The model configuration's data type (`TYPE_FP32`) of an ONNX element type; None where Triton has none."""
    from onnx.helper import tensor_dtype_to_np_dtype

    try:
        datatype = np_to_triton_dtype(tensor_dtype_to_np_dtype(elem_type))
    except KeyError:  # not an element type this onnx knows
        return None
    if datatype is None:
        return None
    # KServe v2's BYTES tensors are TYPE_STRING in the model configuration.
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def read_signature(path: Path) -> Signature:
    """Inputs, outputs and op types of an ONNX file, without loading its weights.

    A file that is not a readable ONNX graph raises `InvalidInput` naming the file.
    """
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as exc:  # noqa: BLE001 - protobuf raises many types for a corrupted file
        raise InvalidInput(
            f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc}); re-export or re-run compression"
        ) from None
    initializers = {t.name for t in graph.initializer}

    def spec(value: object, where: str) -> TensorSpec:
        tensor_type = value.type.tensor_type  # type: ignore[attr-defined]
        name = value.name  # type: ignore[attr-defined]
        data_type = triton_data_type(tensor_type.elem_type)
        if data_type is None:
            raise InvalidInput(
                f"{path}: {where} '{name}' has ONNX element type {tensor_type.elem_type}, which Triton cannot "
                "serve; cast it to a float or integer type before export"
            )
        dims = tuple(
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor_type.shape.dim
        )
        return TensorSpec(name, data_type, dims)

    inputs = tuple(spec(v, "input") for v in graph.input if v.name not in initializers)
    outputs = tuple(spec(v, "output") for v in graph.output)
    if not inputs or not outputs:
        raise InvalidInput(f"{path}: the graph has no inputs or no outputs; re-export the model")
    external = sorted(
        {
            entry.value
            for tensor in graph.initializer
            if tensor.data_location == onnx.TensorProto.EXTERNAL
            for entry in tensor.external_data
            if entry.key == "location"
        }
    )
    return Signature(inputs, outputs, frozenset(n.op_type for n in graph.node), tuple(external))


def _dims(tensor: TensorSpec, batching: bool, model: str) -> list[int]:
    shape = list(tensor.shape)
    if batching:
        if not shape or shape[0] is not None:
            raise InvalidInput(
                f"model '{model}' {tensor.name} has shape {[d if d else -1 for d in shape]} without a dynamic "
                "batch dimension: export with a dynamic dim 0, or set spec.serving.maxBatchSize: 0"
            )
        shape = shape[1:]
    return [-1 if d is None else d for d in shape]


def _tensor(tensor: TensorSpec, dims: list[int], message: type[TensorMessage]) -> TensorMessage:
    out = message(name=tensor.name, data_type=mc.DataType.Value(tensor.data_type), dims=dims or [1])
    if not dims:  # a per-sample scalar: Triton wants dims [1] reshaped to a scalar
        out.reshape.SetInParent()
    return out


def build_config(
    name: str,
    signature: Signature,
    serving: Serving,
    backend: RepositoryBackend,
    *,
    tensorrt: bool = False,
    intra_op_threads: int = 1,
) -> str:
    """`config.pbtxt` text for one variant (Triton's own `ModelConfig` message, in protobuf text format).

    `tensorrt` adds the TensorRT execution accelerator (onnxruntime backend on GPU) unless the graph
    holds QOperator int8 ops TensorRT cannot parse. `intra_op_threads` stays small by default: on a
    shared CPU, one spinning onnxruntime pool per instance steals the cores the others need.
    """
    if backend not in BACKENDS:
        raise InvalidInput(f"backend = {backend!r}: use one of {', '.join(BACKENDS)}")
    batching = serving.max_batch_size > 0
    config = mc.ModelConfig(
        name=name,
        backend=backend,
        max_batch_size=serving.max_batch_size,
        input=[_tensor(t, _dims(t, batching, name), mc.ModelInput) for t in signature.inputs],
        output=[_tensor(t, _dims(t, batching, name), mc.ModelOutput) for t in signature.outputs],
        instance_group=[
            mc.ModelInstanceGroup(
                count=serving.instances,
                kind=mc.ModelInstanceGroup.KIND_GPU
                if serving.instance_kind == "gpu"
                else mc.ModelInstanceGroup.KIND_CPU,
            )
        ],
        version_policy=mc.ModelVersionPolicy(latest=mc.ModelVersionPolicy.Latest(num_versions=1)),
    )
    if batching:
        batch = serving.dynamic_batching
        config.dynamic_batching.preferred_batch_size.extend(
            sorted({s for s in batch.preferred_batch_sizes if s <= serving.max_batch_size})
        )
        config.dynamic_batching.max_queue_delay_microseconds = batch.max_queue_delay_microseconds
    key = "intra_op_threads" if backend == "python" else "intra_op_thread_count"
    config.parameters[key].string_value = str(intra_op_threads)
    if backend == "onnxruntime":
        config.parameters["inter_op_thread_count"].string_value = "1"
    if (
        backend == "onnxruntime"
        and tensorrt
        and serving.instance_kind == "gpu"
        and not (signature.op_types & NOT_TENSORRT_OPS)
    ):
        config.optimization.execution_accelerators.gpu_execution_accelerator.add(
            name="tensorrt", parameters={"precision_mode": "FP16", "max_workspace_size_bytes": "1073741824"}
        )
    warmup = _warmup(signature, batching)
    if warmup is not None:
        config.model_warmup.append(warmup)
    return text_format.MessageToString(config)


def _warmup(signature: Signature, batching: bool) -> mc.ModelWarmup | None:
    """One zero-filled request of batch 1, so the first user request does not pay session start-up."""
    if any(t.data_type == "TYPE_STRING" for t in signature.inputs):
        return None
    warmup = mc.ModelWarmup(name="zeros", batch_size=1 if batching else 0)
    for t in signature.inputs:
        shape = list(t.shape[1:] if batching else t.shape) or [1]
        warmup.inputs[t.name].CopyFrom(
            mc.ModelWarmup.Input(data_type=mc.DataType.Value(t.data_type), dims=[d or 1 for d in shape], zero_data=True)
        )
    return warmup


def select_variants(report: CompressionReport, names: list[str] | None) -> list[VariantRecord]:
    """The baseline plus the named variants (all of them when `names` is empty)."""
    records = {report.baseline.name: report.baseline} | {v.name: v for v in report.variants}
    if not names:
        return list(records.values())
    unknown = [n for n in names if n not in records]
    if unknown:
        raise InvalidInput(
            f"--variants {','.join(names)}: '{unknown[0]}' is not in the report; choose from {', '.join(records)}"
        )
    return [records[report.baseline.name]] + [records[n] for n in names if n != report.baseline.name]


def _external_file(model: Path, location: str, variant: str) -> Path:
    """The file an external-data `location` names, which must lie in the model's own folder: a graph that
    points outside it (an absolute path, `..`) would copy that file into the repository that ships."""
    folder = model.parent.resolve()
    path = (folder / location).resolve()
    if Path(location).is_absolute() or ".." in Path(location).parts or not path.is_relative_to(folder):
        raise InvalidInput(
            f"variant '{variant}': {model.name} keeps weights at external data location {location!r}, outside "
            f"its folder {folder}; save the model with its external data beside it (onnx.save(..., "
            "save_as_external_data=True, location='<name>.data'))"
        )
    if not path.is_file():
        raise InvalidInput(f"variant '{variant}': external data {path} is missing; re-run compression")
    return path


def build_repository(
    report: CompressionReport,
    report_dir: Path,
    repo_dir: Path,
    backend: RepositoryBackend,
    variants: list[str] | None = None,
    serving: Serving | None = None,
    *,
    tensorrt: bool = False,
    intra_op_threads: int = 1,
    model_names: Mapping[str, str] | None = None,
) -> dict[str, Path]:
    """Write `repo_dir/<model>/{config.pbtxt, 1/model.onnx[, 1/model.py]}`; return model dirs by name.

    The Triton model name is the variant's, unless `model_names` maps it to another: a new
    generation's variant named like the stable one is written beside it, never over the files the
    stable Triton serves. The baseline is always included: the gate compares every candidate
    against it in the same run. Files are copied, not linked, so the repository can be shipped on
    its own (PVC, s3).
    """
    model_names = model_names or {}
    serving = serving or Serving()
    repo_dir.mkdir(parents=True, exist_ok=True)
    built: dict[str, Path] = {}
    for record in select_variants(report, variants):
        source = report_dir / record.path
        if not source.is_file():
            raise InvalidInput(
                f"variant '{record.name}' path = {record.path!r}: {source} not found; re-run compression"
            )
        signature = read_signature(source)
        model_name = model_names.get(record.name, record.name)
        model_dir = repo_dir / model_name
        if model_dir.exists():
            shutil.rmtree(model_dir)
        version_dir = model_dir / VERSION
        version_dir.mkdir(parents=True)
        shutil.copyfile(source, version_dir / MODEL_FILE)
        for name in signature.external_files:  # the graph names its weight files: keep the names
            external = _external_file(source, name, record.name)
            (version_dir / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(external, version_dir / name)
        if backend == "python":
            shutil.copyfile(PYTHON_MODEL_SOURCE, version_dir / "model.py")
        config = build_config(
            model_name, signature, serving, backend, tensorrt=tensorrt, intra_op_threads=intra_op_threads
        )
        (model_dir / "config.pbtxt").write_text(config)
        built[model_name] = model_dir
    return built
