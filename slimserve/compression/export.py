"""torch → ONNX with dynamic batch and sequence dimensions, and the on-disk facts of an ONNX file (size, sha256).

The legacy TorchScript-based exporter (`dynamo=False`) is used: it folds BatchNorm into Conv,
writes one self-contained file for models under 2 GB, and handles `dynamic_axes` for every
module kind slimserve accepts (nn.Module, ScriptModule, unlifted torch.export modules).
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from slimserve.compression.loading import DataSet

log = logging.getLogger(__name__)

OPSET = 17
BATCH_DIM = "batch"
SEQUENCE_DIM = "sequence"


def output_names(n: int) -> list[str]:
    return ["output"] if n == 1 else [f"output_{i}" for i in range(n)]


def flatten_outputs(out: Any) -> tuple[list[str] | None, tuple[torch.Tensor, ...]]:
    """A model's outputs as a flat tuple, with their names when it returns a dict (a ModelOutput)."""
    if isinstance(out, dict):
        items = [(k, v) for k, v in out.items() if isinstance(v, torch.Tensor)]
        return [k for k, _ in items], tuple(v for _, v in items)
    if isinstance(out, (tuple, list)):
        return None, tuple(v for v in out if isinstance(v, torch.Tensor))
    return None, (out,)


class Bound(nn.Module):
    """Positional tensors in, the model called with them by name (or by position), a flat tuple out.

    The exporter and torch-pruning trace positional tensors; the model underneath still gets each
    input bound to the parameter of the same name.
    """

    def __init__(self, module: nn.Module, names: list[str], by_name: bool) -> None:
        super().__init__()
        self.module = module
        self.names = list(names)
        self.by_name = by_name

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = call(self.module, list(tensors), self.names, self.by_name)
        return flatten_outputs(out)[1]


def call(module: nn.Module, tensors: list[torch.Tensor], names: list[str], by_name: bool) -> Any:
    """`module` applied to the inputs, each bound to its forward() parameter when `by_name`."""
    if by_name:
        return module(**dict(zip(names, tensors, strict=True)))
    return module(*tensors)


def dynamic_dims(data: list[DataSet], names: list[str]) -> dict[str, dict[int, str]]:
    """Axes that may vary: the batch, the sequence of integer (token) inputs, and any axis whose
    length differs between the data sets."""
    dims: dict[str, dict[int, str]] = {}
    for name in names:
        arrays = [d.inputs[name] for d in data if name in d.inputs]
        first = arrays[0]
        axes = {0: BATCH_DIM}
        if first.ndim >= 2 and first.dtype.kind in "iub":
            axes[1] = SEQUENCE_DIM
        for axis in range(1, first.ndim):
            if len({a.shape[axis] for a in arrays}) > 1:
                axes.setdefault(axis, SEQUENCE_DIM if axis == 1 else f"dim{axis}")
        dims[name] = axes
    return dims


def _shortened(tensors: list[torch.Tensor], names: list[str], dims: dict[str, dict[int, str]]) -> list[torch.Tensor]:
    out = []
    for name, t in zip(names, tensors, strict=True):
        for axis in dims[name]:
            if axis and t.shape[axis] > 1:
                t = t.narrow(axis, 0, t.shape[axis] - 1)
        out.append(t)
    return out


def export_onnx(
    module: nn.Module,
    example: DataSet,
    input_names: list[str],
    path: Path,
    by_name: bool = False,
    others: list[DataSet] | None = None,
) -> Path:
    """Export `module` (moved to CPU, eval mode) to `path`.

    Inputs are named `input_names`; the batch, token sequences and any axis that varies between
    the data sets are dynamic. An output axis is dynamic when it changes with a shorter input (run
    once more to see which). Dict outputs (HF ModelOutput) keep their keys as output names.
    """
    module = module.to("cpu").eval()
    sample = example.head(2)
    args = sample.torch_inputs(slice(None), input_names)
    dims = dynamic_dims([example, *(others or [])], input_names)
    with torch.no_grad():
        keys, outs = flatten_outputs(call(module, args, input_names, by_name))
        varied = any(a for d in dims.values() for a in d)
        short = (
            flatten_outputs(call(module, _shortened(args, input_names, dims), input_names, by_name))[1]
            if varied
            else outs
        )
    outputs = keys if keys and len(keys) == len(outs) else output_names(len(outs))
    sizes = {
        (axis, int(t.shape[axis])): label
        for n, t in zip(input_names, args, strict=True)
        for axis, label in dims[n].items()
        if axis
    }
    dynamic: dict[str, dict[int, str]] = dict(dims)
    for name, full, cut in zip(outputs, outs, short, strict=True):
        axes = {0: BATCH_DIM}
        for axis in range(1, full.dim()):
            if full.shape[axis] != cut.shape[axis]:
                axes[axis] = next(
                    (lab for (a, n), lab in sizes.items() if n == full.shape[axis] and a == axis), f"{name}_dim{axis}"
                )
        dynamic[name] = axes
    # The wrapper binds inputs by name and flattens dict outputs; without either need the module is
    # exported as it is, so node names stay what the user sees in other tools (`/0/Gemm`). A
    # ScriptModule takes its inputs positionally in schema order, as `args` are.
    plain = isinstance(module, torch.jit.ScriptModule) or (not by_name and keys is None)
    wrapper = module if plain else Bound(module, input_names, by_name).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer warnings
        torch.onnx.export(
            wrapper,
            tuple(args),
            str(path),
            input_names=input_names,
            output_names=outputs,
            dynamic_axes=dynamic,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    module.eval()  # the exporter restores the wrapper's (training) mode on everything inside it
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
