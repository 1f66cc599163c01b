"""quantize.qat: quantization-aware fine-tuning before static int8, label-free.

The float model is trained through fake quantization that mimics what onnxruntime's static
quantizer does afterwards (QOperator or QDQ, uint8 activations, int8 per-channel weights):

- weights: per output channel, symmetric, on onnxruntime's grid (scale max|w| / 127, integers in
  [-127, 127]). Per-channel rounding commutes with folding a following BatchNorm into the weights
  (both scale each output channel), so the unfolded torch weights are rounded as they stand;
- activations: per tensor, asymmetric uint8 over [min(0, lo), max(0, hi)], where lo/hi are the
  minimum and maximum on the calibration samples (minmax calibration), at the points onnxruntime
  quantizes: the graph inputs, each Conv/Linear output (after a following BatchNorm and a
  following ReLU/ReLU6/Hardtanh, which onnxruntime fuses into the integer conv), each Add and each
  average pool. The ranges are observed again every `RECALIBRATE` steps, as the weights move.

Gradients pass straight through the rounding (zero outside an activation's range). The loss is
the mean squared error to the source model's outputs (no labels: the fp32 model is the teacher),
on data.train plus data.calibration, with BatchNorm frozen (eval mode throughout). The module is
located with torch.fx; one that fx cannot trace is refused. After training the float weights are
exported and quantized as usual. Bias correction and GPTQ would fit the int8 weights back to these
float weights, undoing what the fine-tune learned, so the spec refuses GPTQ with qat and bias
correction defaults to off.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import fx, nn
from torch.nn.utils import parametrize

from slimserve.api.spec import QuantizationAware
from slimserve.compression.loading import DataSet
from slimserve.compression.recipes.base import RecipeContext
from slimserve.compression.recipes.training import output_of, soft_targets
from slimserve.errors import InvalidInput

RECALIBRATE = 50
_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CLIPS = (nn.ReLU, nn.ReLU6, nn.Hardtanh)
_POOLS = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AvgPool1d, nn.AvgPool2d)
_CLIP_FNS: set[Callable[..., Any]] = {
    torch.relu,
    nn.functional.relu,
    nn.functional.relu6,
    nn.functional.hardtanh,
    torch.clamp,
}
_ADD_FNS: set[Callable[..., Any]] = {operator.add, operator.iadd, torch.add}
_POOL_FNS: set[Callable[..., Any]] = {nn.functional.adaptive_avg_pool2d, nn.functional.avg_pool2d}


class WeightFakeQuant(nn.Module):
    """Per-output-channel symmetric int8 on onnxruntime's grid, straight-through gradients.

    Off while the activation ranges are observed: onnxruntime calibrates the float graph.
    """

    def __init__(self) -> None:
        super().__init__()
        self.active = True

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return w
        scale = (w.detach().abs().flatten(1).amax(1) / 127).clamp_min(1e-12)
        scale = scale.reshape(-1, *([1] * (w.dim() - 1)))
        return w + ((w / scale).round().clamp(-127, 127) * scale - w).detach()


class ActivationFakeQuant(nn.Module):
    """Per-tensor asymmetric uint8 over the observed range (minmax, widened to hold 0); observing, it
    records the range and passes its input through."""

    lo: torch.Tensor
    hi: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.observing = True
        self.register_buffer("lo", torch.tensor(0.0))
        self.register_buffer("hi", torch.tensor(0.0))

    def reset(self) -> None:
        self.lo.zero_()
        self.hi.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self.lo.copy_(torch.minimum(self.lo, x.detach().min()))
            self.hi.copy_(torch.maximum(self.hi, x.detach().max()))
            return x
        lo, hi = float(self.lo), float(self.hi)
        scale = max(hi - lo, 1e-12) / 255
        zero = round(-lo / scale)
        q = (torch.clamp(torch.round(x / scale) + zero, 0, 255) - zero) * scale
        inside = ((x >= lo) & (x <= hi)).to(x.dtype)
        return x * inside + (q - x * inside).detach()


class _Tracer(fx.Tracer):
    """Keeps the layers onnxruntime quantizes as single nodes, subclasses included."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, (*_LAYERS, *_NORMS, *_CLIPS, *_POOLS)) or super().is_leaf_module(m, module_qualified_name)


def _kind(node: fx.Node | None, gm: fx.GraphModule) -> str | None:
    if node is None:
        return None
    if node.op == "call_module":
        m = gm.get_submodule(str(node.target))
        for name, kinds in (("layer", _LAYERS), ("norm", _NORMS), ("clip", _CLIPS), ("pool", _POOLS)):
            if isinstance(m, kinds):
                return name
    elif node.op == "call_function":
        if node.target in _CLIP_FNS:
            return "clip"
        if node.target in _ADD_FNS:
            return "add"
        if node.target in _POOL_FNS:
            return "pool"
        if node.target is nn.functional.batch_norm:
            return "norm"
    elif node.op == "call_method":
        return {"relu": "clip", "clamp": "clip", "add": "add", "__add__": "add", "mean": "pool"}.get(str(node.target))
    return None


def _only_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def quantization_points(gm: fx.GraphModule) -> list[fx.Node]:
    """The nodes whose outputs onnxruntime's static quantizer writes as uint8."""
    points: list[fx.Node] = []
    for node in gm.graph.nodes:
        kind = _kind(node, gm)
        end = None
        if node.op == "placeholder" or kind in ("add", "pool"):
            end = node
        elif kind == "layer":
            end = node
            nxt = _only_user(end)
            if _kind(nxt, gm) == "norm" and nxt is not None:
                end = nxt
                nxt = _only_user(end)
            if _kind(nxt, gm) == "clip" and nxt is not None:
                end = nxt
        if end is not None and end not in points:
            points.append(end)
    return points


class FakeQuantized:
    """`module` traced with activation fake-quant inserted and its layers' weights parametrized.

    `graph` shares `module`'s layers: training it trains `module`. `observe(data)` records the
    activation ranges with float weights (onnxruntime calibrates the float graph), then quantizes.
    """

    def __init__(self, graph: fx.GraphModule, activations: list[ActivationFakeQuant], weights: list[WeightFakeQuant]):
        self.graph, self.activations, self.weights = graph, activations, weights

    def observing(self, on: bool) -> None:
        for a in self.activations:
            if on and not a.observing:
                a.reset()
            a.observing = on
        for w in self.weights:
            w.active = not on


def fake_quantized(module: nn.Module) -> FakeQuantized:
    """`module` (changed in place: parametrized weights) with fake quantization at onnxruntime's points."""
    try:
        graph = _Tracer().trace(module)
    except Exception as exc:  # noqa: BLE001 - fx cannot follow data-dependent control flow
        raise InvalidInput(
            f"quantize.qat: torch.fx cannot trace this model ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); "
            "drop qat for this variant"
        ) from exc
    gm = fx.GraphModule(module, graph)
    quants: list[ActivationFakeQuant] = []
    for i, node in enumerate(quantization_points(gm)):
        name = f"_qat_activation{i}"
        quant = ActivationFakeQuant()
        gm.add_submodule(name, quant)
        quants.append(quant)
        with graph.inserting_after(node):
            new = graph.call_module(name, (node,))
        node.replace_all_uses_with(new, delete_user_cb=lambda user, new=new: user is not new)  # type: ignore[misc]
    graph.lint()
    gm.recompile()
    weights = []
    for layer in module.modules():
        if isinstance(layer, _LAYERS):
            weights.append(WeightFakeQuant())
            parametrize.register_parametrization(layer, "weight", weights[-1])
    fq = FakeQuantized(gm, quants, weights)
    fq.observing(True)
    return fq


def _observe(fq: FakeQuantized, data: DataSet, ctx: RecipeContext) -> None:
    fq.observing(True)
    with torch.no_grad():
        for start in range(0, len(data), 32):
            ctx.forward(fq.graph, data.torch_inputs(slice(start, start + 32), ctx.input_names))
    fq.observing(False)


def _joined(ctx: RecipeContext, calibration: DataSet) -> DataSet:
    sets = [d for d in (ctx.train, calibration) if d is not None]
    inputs = {k: np.concatenate([d.inputs[k] for d in sets]) for k in calibration.inputs}
    return DataSet(calibration.path, inputs, None)


def fine_tune(module: nn.Module, params: QuantizationAware, ctx: RecipeContext, calibration: DataSet) -> nn.Module:
    """A copy of `module` fine-tuned through fake quantization to imitate the source model."""
    teacher = ctx.teacher if ctx.teacher is not None else module
    student = copy.deepcopy(module).eval()
    data = _joined(ctx, calibration)
    targets = soft_targets(teacher, data, ctx)
    fq = fake_quantized(student)
    torch.manual_seed(ctx.seed)
    gen = torch.Generator().manual_seed(ctx.seed)
    opt = torch.optim.Adam(student.parameters(), lr=params.lr)
    fq.graph.eval()
    with ctx.task("quantization-aware fine-tune", params.steps) as advance:
        for step in range(params.steps):
            if step % RECALIBRATE == 0:
                _observe(fq, calibration, ctx)
            idx = torch.randint(len(data), (min(params.batch_size, len(data)),), generator=gen)
            out = output_of(ctx.forward(fq.graph, data.torch_inputs(idx, ctx.input_names)), ctx)
            loss = nn.functional.mse_loss(out.float(), targets[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            advance()
    for layer in student.modules():
        if parametrize.is_parametrized(layer, "weight"):
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)
    ctx.notes.append(
        f"quantize: quantization-aware fine-tune, {params.steps} steps of Adam (lr {params.lr:g}, batch "
        f"{params.batch_size}) on the source model's outputs (MSE, no labels) over data.train + calibration "
        f"({len(data)} samples), through fake quantization at {len(fq.activations)} activations (uint8, minmax on "
        "the calibration samples) and int8 per-channel weights; bias correction off"
    )
    return student.eval()
