"""prune: remove whole channels with torch-pruning (structured), or zero single weights (unstructured).

Structured pruning removes channels and every tensor slice that depends on them, so the dense
model really has fewer MACs and runs faster. The final classifier (the last Linear/Conv that
runs) is never pruned: its outputs are the model's outputs. Unstructured pruning only zeroes
weights: the dense ONNX file is as large and as fast as before; only a compressed copy
(gzip) shrinks, and the record says so.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from slimserve.api.spec import Prune
from slimserve.compression.export import Bound
from slimserve.compression.recipes.base import ModelState, RecipeContext, final_layer, layers_of, named_module
from slimserve.errors import InvalidInput

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _weights_gzip(module: nn.Module) -> int:
    blob = b"".join(p.detach().cpu().numpy().astype(np.float32).tobytes() for p in module.parameters())
    return len(gzip.compress(blob, compresslevel=6))


_QKV_NAMES = (("query", "key", "value"), ("q_proj", "k_proj", "v_proj"), ("q", "k", "v"), ("q_lin", "k_lin", "v_lin"))
_HEAD_ATTRS = ("num_attention_heads", "num_heads", "n_heads")


@dataclass
class _Attention:
    """An attention block torch-pruning can shrink by whole heads: separate q/k/v Linear projections."""

    module: nn.Module
    qkv: tuple[nn.Linear, nn.Linear, nn.Linear]
    heads_attr: str
    heads: int


def _attention_blocks(module: nn.Module) -> tuple[list[_Attention], list[str]]:
    """Head-prunable attention blocks, and the names of attention modules that are not (refused)."""
    found: list[_Attention] = []
    unknown: list[str] = []
    covered: set[int] = set()
    for name, m in module.named_modules():
        if isinstance(m, nn.MultiheadAttention):
            unknown.append(f"{name} (nn.MultiheadAttention: q/k/v packed in one in_proj weight)")
            continue
        attr = next((a for a in _HEAD_ATTRS if isinstance(getattr(m, a, None), int)), None)
        qkv = next((t for t in _QKV_NAMES if all(isinstance(getattr(m, n, None), nn.Linear) for n in t)), None)
        if attr and qkv:
            layers = tuple(getattr(m, n) for n in qkv)
            found.append(_Attention(m, layers, attr, int(getattr(m, attr))))  # type: ignore[arg-type]
            covered.update(id(x) for x in m.modules())
    for name, m in module.named_modules():
        if (
            "attention" in type(m).__name__.lower()
            and id(m) not in covered
            and not isinstance(m, nn.MultiheadAttention)
        ):
            linears = [c for c in m.children() if isinstance(c, nn.Linear)]
            if len(linears) >= 3:  # projections we cannot match to heads
                unknown.append(f"{name} ({type(m).__name__})")
    return found, unknown


def _structured(module: nn.Module, params: Prune, ctx: RecipeContext, ignored: list[nn.Module]) -> None:
    attention, unknown = _attention_blocks(module)
    if unknown:
        raise InvalidInput(
            f"prune: the model has attention that torch-pruning cannot shrink by whole heads: {', '.join(unknown[:3])}; "
            "pruning its channels would break the head layout. Use lowRank or quantize for this model, or give a "
            "model whose attention has separate query/key/value Linear layers and a num_attention_heads attribute"
        )
    before = sum(p.numel() for p in module.parameters())
    extra: dict[str, object] = {}
    if attention:
        # Keep the residual width (and so the output shape): every norm and embedding stays whole.
        ignored = ignored + [m for m in module.modules() if isinstance(m, (nn.LayerNorm, nn.Embedding))]
        head_ratio = params.ratio if params.head_ratio is None else params.head_ratio
        extra = {
            "num_heads": {layer: a.heads for a in attention for layer in a.qkv},
            "prune_num_heads": head_ratio > 0,
            "prune_head_dims": False,
            "head_pruning_ratio": head_ratio,
        }
    wrapped = Bound(module, ctx.input_names, ctx.by_name)
    pruner = tp.pruner.MetaPruner(
        wrapped,
        tuple(ctx.example()),
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=params.ratio,
        ignored_layers=ignored,
        round_to=params.round_to,
        **extra,
    )
    pruner.step()
    after = sum(p.numel() for p in module.parameters())
    what = f"{params.ratio:.0%} of channels per layer"
    if attention:
        kept = []
        for a in attention:
            q = a.qkv[0]
            heads = int(pruner.num_heads.get(q, a.heads))
            setattr(a.module, a.heads_attr, heads)
            for size_attr in ("all_head_size", "inner_dim"):
                if isinstance(getattr(a.module, size_attr, None), int):
                    setattr(a.module, size_attr, q.out_features)
            if isinstance(getattr(a.module, "attention_head_size", None), int):
                setattr(a.module, "attention_head_size", q.out_features // max(1, heads))  # noqa: B010
            kept.append(heads)
        what += (
            f"; attention heads {attention[0].heads} → {min(kept)}-{max(kept)} per layer "
            f"({len(attention)} blocks), residual width kept"
        )
    ctx.notes.append(f"prune: structured, {what}; params {before} → {after}")


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
        raise InvalidInput(
            "prune: a TorchScript module cannot be restructured; give a factory source "
            "(source.format: factory, 'module:function' + state dict)"
        )
    classifier = final_layer(module, ctx)
    ignored = [named_module(module, n, "prune.keepLayers") for n in params.keep_layers]
    if classifier is not None:
        ignored.append(classifier)
    module = module.to("cpu").eval()
    if params.method == "structured":
        _structured(module, params, ctx, ignored)
    else:
        _unstructured(module, params, ctx, ignored)
    return replace(state, module=module, onnx_path=None, float_onnx=None)
