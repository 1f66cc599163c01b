"""What every recipe shares: the model state a step transforms, and the context it runs in.

A recipe is `apply(state, params, ctx) -> ModelState`. Torch recipes (prune, lowRank, distill,
fineTune) work on `state.module`; quantize works on an ONNX graph and exports the module first.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from slimserve.compression.export import call, export_onnx
from slimserve.compression.loading import DataSet
from slimserve.errors import InvalidInput

if TYPE_CHECKING:
    from rich.progress import Progress

    from slimserve.evaluator.quality import Metric


@dataclass(frozen=True)
class ModelState:
    """A variant between steps: an nn.Module (torch recipes) or an ONNX file (after quantize).

    `float_onnx` is the float graph a quantized graph came from; params and MACs are counted on it.
    """

    module: nn.Module | None = None
    onnx_path: Path | None = None
    float_onnx: Path | None = None

    def require_module(self, recipe: str) -> nn.Module:
        if self.module is None:
            raise InvalidInput(
                f"{recipe} needs a PyTorch model but this variant is an ONNX graph at that point; "
                "give a torchscript, torch-export or factory source, and put quantize last"
            )
        return self.module


@dataclass
class RecipeContext:
    """Everything a step may need besides its parameters; one per variant."""

    variant: str
    input_names: list[str]
    evaluation: DataSet
    work_dir: Path
    base_dir: Path
    device: torch.device
    seed: int = 0
    train: DataSet | None = None
    calibration: DataSet | None = None
    factory: Callable[..., nn.Module] | None = None
    factory_ref: str | None = None
    progress: Progress | None = None
    by_name: bool = False  # the source's forward() takes the inputs as keyword arguments
    teacher: nn.Module | None = None  # the source model: what label-free training distils from
    metric: Metric | None = None  # the resolved quality metric (training without labels follows it)
    notes: list[str] = field(default_factory=list)
    _exports: int = 0

    def forward(self, module: nn.Module, tensors: list[torch.Tensor]) -> Any:
        """`module` on these inputs, each bound to its forward() parameter by name where it can be."""
        return call(module, tensors, self.input_names, self.by_name)

    def example(self, n: int = 2) -> list[torch.Tensor]:
        return self.evaluation.torch_inputs(slice(0, n), self.input_names)

    def onnx(self, state: ModelState) -> ModelState:
        """The state as an ONNX graph, exporting the module when needed."""
        if state.onnx_path is not None:
            return state
        module = state.require_module("export")
        self._exports += 1
        path = self.work_dir / f"{self.variant}.step{self._exports}.onnx"
        others = [d for d in (self.train, self.calibration) if d is not None]
        export_onnx(clone(module), self.evaluation, self.input_names, path, self.by_name, others)
        return replace(state, onnx_path=path, float_onnx=path)

    def require_train(self, recipe: str) -> DataSet:
        if self.train is None:
            raise InvalidInput(f"{recipe} trains the model but spec.data.train is missing; add a .npz train set")
        return self.train

    def task(self, description: str, total: int) -> contextlib.AbstractContextManager[Callable[[], None]]:
        return progress_task(self.progress, f"{self.variant}: {description}", total)


@contextlib.contextmanager
def progress_task(progress: Progress | None, description: str, total: int) -> Iterator[Callable[[], None]]:
    """A progress bar for a long step, removed when done (a no-op without a Progress)."""
    if progress is None:
        yield lambda: None
        return
    task_id = progress.add_task(description, total=total)
    try:
        yield lambda: progress.advance(task_id)
    finally:
        progress.remove_task(task_id)


class Recipe(Protocol):
    def __call__(self, state: ModelState, params: Any, ctx: RecipeContext) -> ModelState: ...


def clone(module: nn.Module) -> nn.Module:
    """An independent copy; deepcopy of a ScriptModule gives non-leaf parameters (untrainable)."""
    if isinstance(module, torch.jit.ScriptModule):
        buffer = io.BytesIO()
        torch.jit.save(module, buffer)
        buffer.seek(0)
        return torch.jit.load(buffer, map_location="cpu")
    return copy.deepcopy(module)


def layers_of(module: nn.Module, recipe: str, kinds: tuple[type[nn.Module], ...]) -> list[tuple[str, nn.Module]]:
    """The named layers a structural recipe can change; none means the structure is not visible."""
    found = [(n, m) for n, m in module.named_modules() if n and isinstance(m, kinds)]
    if not found:
        raise InvalidInput(
            f"{recipe}: the model has no {' or '.join(k.__name__ for k in kinds)} modules to change "
            "(TorchScript and torch.export programs do not keep them); give a factory source "
            "(source.format: factory, 'module:function' + state dict)"
        )
    return found


def first_output(out: Any) -> torch.Tensor:
    """Models may return a tuple or a dict; recipes work on the first output (the logits)."""
    if isinstance(out, dict):
        out = next(iter(out.values()))
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out  # type: ignore[no-any-return]


def final_layer(module: nn.Module, ctx: RecipeContext) -> nn.Module | None:
    """The last Linear/Conv that runs in forward(): the classifier, whose outputs must not change."""
    order: list[nn.Module] = []
    hooks = [
        m.register_forward_hook(lambda mod, _i, _o: order.append(mod))
        for m in module.modules()
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))
    ]
    try:
        was_training = module.training
        module.eval()
        with torch.no_grad():
            ctx.forward(module, ctx.example())
        module.train(was_training)
    finally:
        for h in hooks:
            h.remove()
    return order[-1] if order else None


def named_module(module: nn.Module, name: str, field_name: str) -> nn.Module:
    try:
        return module.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in module.named_modules() if n][:20]
        raise InvalidInput(f"{field_name} = {name!r}: no such module; module names are {names}") from None
