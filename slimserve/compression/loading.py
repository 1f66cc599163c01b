"""Load what a spec names: the source model and the `.npz` data sets, with errors a user can act on.

Every failure here is the user's input (a missing file, a corrupted model, an array with the wrong
name, shape or dtype), so it raises `InvalidInput` naming the spec field, the value and the fix.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
import sys
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from slimserve.api.paths import RELATIVE_HINT, resolve_uri
from slimserve.api.spec import Source
from slimserve.errors import InvalidInput

log = logging.getLogger(__name__)

LABELS = "y"
SINGLE_INPUT = "x"


@dataclass(frozen=True)
class InputSpec:
    """One model input: its name, dtype and per-sample shape (`None` for a dynamic dimension)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]
    batch: int | None = None  # fixed batch size of an ONNX source; None when dynamic
    declared: bool = True  # False when read off the evaluation set (torch sources declare no shape)


@dataclass(frozen=True)
class DataSet:
    """A `.npz` data set: one array per model input plus optional labels `y` (class ids or float targets)."""

    path: Path
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def head(self, n: int) -> DataSet:
        labels = None if self.labels is None else self.labels[:n]
        return DataSet(self.path, {k: v[:n] for k, v in self.inputs.items()}, labels)

    def batches(self, size: int) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self), size):
            yield {k: v[start : start + size] for k, v in self.inputs.items()}

    def torch_inputs(self, index: slice | np.ndarray | torch.Tensor, names: list[str]) -> list[torch.Tensor]:
        if isinstance(index, torch.Tensor):
            index = index.numpy()
        return [torch.from_numpy(np.ascontiguousarray(self.inputs[n][index])) for n in names]


@dataclass
class LoadedSource:
    """The source model: an `nn.Module` (torch formats) or an ONNX file, and how to rebuild it."""

    input_names: list[str]
    module: nn.Module | None = None
    onnx_path: Path | None = None
    factory: Callable[..., nn.Module] | None = None
    notes: list[str] = field(default_factory=list)
    by_name: bool = False  # call forward() with keyword arguments (the names are its parameters)


def import_factory(ref: str, base_dir: Path, field_name: str) -> Callable[..., nn.Module]:
    """Import `module:function` with `base_dir` (the YAML's folder, or --base-dir) first on sys.path.

    A module of the same name imported from another folder (two examples both called `model`)
    is dropped from the cache first, so the spec always gets the file next to it.
    """
    module_name, func_name = ref.split(":", 1)
    top = module_name.split(".")[0]
    cached = sys.modules.get(top)
    cached_file = getattr(cached, "__file__", None) if cached else None
    if cached is not None and (cached_file is None or base_dir.resolve() not in Path(cached_file).resolve().parents):
        for name in [m for m in sys.modules if m == top or m.startswith(top + ".")]:
            del sys.modules[name]
    sys.path.insert(0, str(base_dir.resolve()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidInput(
            f"{field_name} = {ref!r}: cannot import module '{module_name}' ({exc}); "
            f"put {module_name.replace('.', '/')}.py in {base_dir.resolve()} (spec.source.codeUri, else the YAML file's folder or --base-dir)"
        ) from None
    except Exception as exc:  # noqa: BLE001 - user code failed at import time
        raise InvalidInput(
            f"{field_name} = {ref!r}: importing '{module_name}' failed: {type(exc).__name__}: {exc}"
        ) from None
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(str(base_dir.resolve()))
    func = getattr(module, func_name, None)
    if not callable(func):
        raise InvalidInput(
            f"{field_name} = {ref!r}: module '{module_name}' has no function '{func_name}'; fix the name"
        )
    return func  # type: ignore[no-any-return]


def call_factory(factory: Callable[..., nn.Module], field_name: str, ref: str, **kwargs: object) -> nn.Module:
    try:
        module = factory(**kwargs)
    except Exception as exc:  # noqa: BLE001 - user code
        raise InvalidInput(f"{field_name} = {ref!r}: calling it failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(module, nn.Module):
        raise InvalidInput(
            f"{field_name} = {ref!r}: returned {type(module).__name__}, not a torch.nn.Module; return the model"
        )
    return module


def binds_by_name(module: nn.Module, names: list[str]) -> bool:
    """Whether every input name is a forward() parameter, so calls can pass them as keywords.

    Keywords keep an optional argument that the data skips (BERT's token_type_ids) from shifting
    the ones after it; `x` fed to `forward(input)` stays positional.
    """
    if isinstance(module, torch.jit.ScriptModule):
        params = {a.name for a in module.forward.schema.arguments[1:]}  # type: ignore[attr-defined]
    else:
        params = set(inspect.signature(module.forward).parameters)
    return all(n in params for n in names)


def forward_input_names(module: nn.Module, available: set[str]) -> list[str]:
    """The model's inputs in forward() order; a single input is called `x` (the data contract)."""
    if isinstance(module, torch.jit.ScriptModule):
        names = [a.name for a in module.forward.schema.arguments[1:]]  # type: ignore[attr-defined]
        required = names
    else:
        params = [
            p
            for p in inspect.signature(module.forward).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        names = [p.name for p in params]
        required = [p.name for p in params if p.default is inspect.Parameter.empty]
    chosen = [n for n in names if n in available]
    if not chosen:  # e.g. nn.Sequential's forward(input) fed by the `x` array
        return [SINGLE_INPUT]
    missing = [n for n in required if n not in available]
    if missing:
        raise InvalidInput(
            f"spec.data.evaluation: the model's forward() needs {missing} but the .npz holds {sorted(available)}; "
            "save one array per model input, named after it"
        )
    return chosen


def load_source(source: Source, base_dir: Path, available_inputs: set[str]) -> LoadedSource:
    """Load the model the spec names; `available_inputs` are the evaluation set's array names."""
    path = resolve_uri(source.uri, base_dir, "spec.source.uri")
    where = f"spec.source.uri = {str(path)!r}"
    if not path.is_file():
        raise InvalidInput(f"{where}: file not found; fix the path ({RELATIVE_HINT})")
    fmt = source.format
    if fmt == "onnx":
        return _load_onnx(path, where)
    if fmt == "factory":
        assert source.factory is not None
        factory = import_factory(source.factory, base_dir, "spec.source.factory")
        module = call_factory(factory, "spec.source.factory", source.factory)
        state = _load_state_dict(path, where)
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()
            raise InvalidInput(
                f"{where}: the state dict does not fit the module that {source.factory} builds "
                f"({' '.join(first[:3])[:400]}); save it from the same architecture with torch.save(model.state_dict())"
            ) from None
        module.eval()
        names = forward_input_names(module, available_inputs)
        return LoadedSource(names, module=module, factory=factory, by_name=binds_by_name(module, names))
    if fmt == "torchscript":
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # noqa: BLE001 - corrupted or foreign file
            raise InvalidInput(
                f"{where}: not a TorchScript file ({type(exc).__name__}); save it with torch.jit.save"
            ) from None
        module.eval()
        names = forward_input_names(module, available_inputs)
        return LoadedSource(names, module=module, by_name=binds_by_name(module, names))
    if fmt == "torch-export":
        try:
            program = torch.export.load(str(path))
        except Exception as exc:  # noqa: BLE001
            raise InvalidInput(
                f"{where}: not a torch.export archive ({type(exc).__name__}); save it with torch.export.save"
            ) from None
        from torch.export.graph_signature import InputKind

        user = [s.arg.name for s in program.graph_signature.input_specs if s.kind == InputKind.USER_INPUT]
        names = [SINGLE_INPUT] if len(user) == 1 else user
        module = program.module()
        note = "source is a torch.export program: its shapes may be specialized"
        return LoadedSource(names, module=module, notes=[note])
    raise InvalidInput(f"spec.source.format = {fmt!r}: unknown format; use onnx, torchscript, torch-export or factory")


def _load_state_dict(path: Path, where: str) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupted or foreign file
        raise InvalidInput(
            f"{where}: not a readable PyTorch state dict ({type(exc).__name__}); save it with "
            "torch.save(model.state_dict(), path)"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InvalidInput(f"{where}: holds {type(state).__name__}, not a state dict; save model.state_dict()")
    return state


def _load_onnx(path: Path, where: str) -> LoadedSource:
    try:
        model = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(str(path))
    except Exception as exc:  # noqa: BLE001 - DecodeError, ValidationError, ...
        msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise InvalidInput(f"{where}: not a valid ONNX model ({msg}); re-export it (torch.onnx.export)") from None
    initializers = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in initializers]
    return LoadedSource(names, onnx_path=path)


def onnx_input_specs(path: Path) -> list[InputSpec]:
    """Name, dtype and per-sample shape of each graph input (dim 0 is the batch)."""
    model = onnx.load(str(path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    out = []
    for inp in model.graph.input:
        if inp.name in initializers:
            continue
        t = inp.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        # onnx's own element-type table; an undefined type (0) is read as float32, the exporters' default
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)) if t.elem_type else np.dtype(np.float32)
        out.append(InputSpec(inp.name, dtype, tuple(dims[1:]), dims[0] if dims else None))
    return out


def data_key(input_name: str, n_inputs: int, arrays: set[str]) -> str:
    """The `.npz` array for an input: its own name, or `x` for a single-input model."""
    if input_name in arrays or n_inputs != 1:
        return input_name
    return SINGLE_INPUT


def load_npz(path: Path, field_name: str, input_names: list[str], specs: list[InputSpec] | None = None) -> DataSet:
    """Read and check one data set against the model's inputs (names, dtypes, shapes, lengths)."""
    where = f"{field_name} = {str(path)!r}"
    if not path.is_file():
        raise InvalidInput(f"{where}: file not found; fix the path ({RELATIVE_HINT})")
    try:
        with np.load(str(path), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise InvalidInput(f"{where}: not a readable .npz ({type(exc).__name__}); write it with numpy.savez") from None
    keys = set(arrays)
    inputs: dict[str, np.ndarray] = {}
    problems: list[str] = []
    for name in input_names:
        key = data_key(name, len(input_names), keys)
        if key not in arrays:
            problems.append(
                f"{where}: no array '{name}' (holds {sorted(keys)}); save one array per model input, named after it"
                + (" (or 'x' for a single input)" if len(input_names) == 1 else "")
            )
            continue
        inputs[name] = arrays[key]
    if problems:
        raise InvalidInput(problems)
    lengths = {name: (a.shape[0] if a.ndim else 0) for name, a in inputs.items()}
    labels = arrays.get(LABELS)
    if labels is not None:
        if labels.ndim == 0 or not (
            np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.floating)
        ):
            problems.append(
                f"{where}: 'y' is {labels.dtype} {list(labels.shape)}; labels are int class ids [N] (or one per "
                "position) or float regression targets [N, ...]"
            )
        else:
            labels = labels.astype(np.int64 if np.issubdtype(labels.dtype, np.integer) else np.float32)
            lengths[LABELS] = len(labels)
    if len(set(lengths.values())) > 1:
        problems.append(f"{where}: arrays have different lengths {lengths}; every array needs the same N first")
    if min(lengths.values(), default=0) == 0:
        problems.append(f"{where}: the data set is empty; it needs at least one sample")
    for spec in specs or []:
        arr = inputs.get(spec.name)
        if arr is None:
            continue
        if arr.dtype != spec.dtype:
            problems.append(
                f"{where}: '{spec.name}' is {arr.dtype} but the model expects {spec.dtype}; "
                f"save it with .astype(np.{spec.dtype.name})"
            )
        got = tuple(arr.shape[1:])
        if len(got) != len(spec.shape) or any(w is not None and w != g for w, g in zip(spec.shape, got, strict=False)):
            want = ["N", *("?" if d is None else d for d in spec.shape)]
            expects = "the model expects" if spec.declared else "spec.data.evaluation has"
            problems.append(f"{where}: '{spec.name}' has shape {list(arr.shape)} but {expects} {want}; reshape it")
    if problems:
        raise InvalidInput(problems)
    return DataSet(path, inputs, labels)


def specs_from_data(data: DataSet) -> list[InputSpec]:
    """For torch sources the evaluation set defines the input dtypes and shapes."""
    return [InputSpec(name, arr.dtype, tuple(arr.shape[1:]), declared=False) for name, arr in data.inputs.items()]
