"""prune: remove whole channels with torch-pruning (structured), or zero single weights (unstructured).

Structured pruning removes channels and every tensor slice that depends on them, so the dense
model really has fewer MACs and runs faster. The final classifier (the last Linear/Conv that
runs) is never pruned: its outputs are the model's outputs. Unstructured pruning only zeroes
weights: the dense ONNX file is as large and as fast as before; only a compressed copy
(gzip) shrinks, and the record says so.
"""

from __future__ import annotations

import gzip
from dataclasses import replace

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from slimserve.api.spec import Prune
from slimserve.compression.recipes.base import ModelState, RecipeContext, final_layer, layers_of, named_module
from slimserve.errors import InvalidInput

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _weights_gzip(module: nn.Module) -> int:
    blob = b"".join(p.detach().cpu().numpy().astype(np.float32).tobytes() for p in module.parameters())
    return len(gzip.compress(blob, compresslevel=6))


def _structured(module: nn.Module, params: Prune, ctx: RecipeContext, ignored: list[nn.Module]) -> None:
    example = tuple(ctx.evaluation.torch_inputs(slice(0, 2), ctx.input_names))
    before = sum(p.numel() for p in module.parameters())
    pruner = tp.pruner.MetaPruner(
        module,
        example,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=params.ratio,
        ignored_layers=ignored,
        round_to=params.round_to,
    )
    pruner.step()
    after = sum(p.numel() for p in module.parameters())
    ctx.notes.append(f"prune: structured, {params.ratio:.0%} of channels per layer; params {before} → {after}")


def _unstructured(module: nn.Module, params: Prune, ctx: RecipeContext, ignored: list[nn.Module]) -> None:
    before = _weights_gzip(module)
    zeroed = total = 0
    with torch.no_grad():
        for layer in module.modules():
            if not isinstance(layer, _LAYERS) or layer in ignored:
                continue
            w = layer.weight
            k = int(params.ratio * w.numel())
            if k == 0:
                continue
            threshold = w.abs().flatten().kthvalue(k).values
            mask = w.abs() > threshold
            w.mul_(mask)
            zeroed += int((~mask).sum())
            total += w.numel()
    after = _weights_gzip(module)
    ctx.notes.append(
        f"prune: unstructured, {zeroed}/{total} weights set to zero; gzip of the weights {before} → {after} bytes. "
        "The dense ONNX file keeps its size and latency: zeros only help a sparse kernel or a compressed download"
    )


def apply(state: ModelState, params: Prune, ctx: RecipeContext) -> ModelState:
    module = state.require_module("prune")
    layers_of(module, "prune", _LAYERS)
    if isinstance(module, torch.jit.ScriptModule):
        raise InvalidInput("prune: a TorchScript module cannot be restructured; give a factory source "
                           "(source.format: factory, 'module:function' + state dict)")
    example = tuple(ctx.evaluation.torch_inputs(slice(0, 2), ctx.input_names))
    classifier = final_layer(module, example)
    ignored = [named_module(module, n, "prune.keepLayers") for n in params.keep_layers]
    if classifier is not None:
        ignored.append(classifier)
    module = module.to("cpu").eval()
    if params.method == "structured":
        _structured(module, params, ctx, ignored)
    else:
        _unstructured(module, params, ctx, ignored)
    return replace(state, module=module, onnx_path=None, float_onnx=None)
