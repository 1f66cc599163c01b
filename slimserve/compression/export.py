"""torch → ONNX with a dynamic batch dimension, and the on-disk facts of an ONNX file (size, sha256).

The legacy TorchScript-based exporter (`dynamo=False`) is used: it folds BatchNorm into Conv,
writes one self-contained file for models under 2 GB, and handles `dynamic_axes` for every
module kind slimserve accepts (nn.Module, ScriptModule, unlifted torch.export modules).
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from slimserve.compression.loading import DataSet

log = logging.getLogger(__name__)

OPSET = 17
BATCH_DIM = "batch"


def output_names(n: int) -> list[str]:
    return ["output"] if n == 1 else [f"output_{i}" for i in range(n)]


def export_onnx(module: nn.Module, example: DataSet, input_names: list[str], path: Path) -> Path:
    """Export `module` (moved to CPU, eval mode) to `path`; inputs named `input_names`, dim 0 dynamic."""
    module = module.to("cpu").eval()
    sample = example.head(2)
    args = tuple(sample.torch_inputs(slice(None), input_names))
    with torch.no_grad():
        out = module(*args)
    n_out = len(out) if isinstance(out, (tuple, list)) else 1
    outputs = output_names(n_out)
    dynamic = {name: {0: BATCH_DIM} for name in [*input_names, *outputs]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer warnings
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=input_names,
            output_names=outputs,
            dynamic_axes=dynamic,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    onnx.checker.check_model(str(path))
    return path


def external_data_files(path: Path) -> list[Path]:
    """Files holding the graph's external tensors (torch's dynamo exporter writes `<name>.onnx.data`)."""
    model = onnx.load(str(path), load_external_data=False)
    files: set[str] = set()
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        tensors += [a.t for a in node.attribute if a.type == onnx.AttributeProto.TENSOR]
    for t in tensors:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            loc = next((e.value for e in t.external_data if e.key == "location"), None)
            if loc:
                files.add(loc)
    return [path.parent / f for f in sorted(files)]


def size_bytes(path: Path) -> int:
    """The model's size on disk: the ONNX file plus its external data."""
    return path.stat().st_size + sum(f.stat().st_size for f in external_data_files(path))


def sha256(path: Path) -> str:
    """Digest of the ONNX file followed by its external data files, in name order."""
    digest = hashlib.sha256()
    for f in [path, *external_data_files(path)]:
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def copy_onnx(src: Path, dst: Path) -> Path:
    """Copy an ONNX model into one self-contained file (external data inlined under 2 GB)."""
    model = onnx.load(str(src), load_external_data=True)
    if model.ByteSize() < 2**31 - 1:
        onnx.save(model, str(dst))
    else:
        onnx.save(model, str(dst), save_as_external_data=True, location=dst.name + ".data")
    return dst

