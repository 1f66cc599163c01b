"""lowRank: replace Linear and 1x1 Conv weights W (out×in) by two thin factors from a truncated SVD.

W ≈ (U_r·S_r)(V_r): one layer of in·out weights becomes r·(in+out). A layer is factorized only
when that is fewer parameters, so the step never grows the model. Layers inside
`nn.MultiheadAttention` are skipped (it reads `out_proj.weight` directly, so a replacement would
break it), and so is the final layer (the model's outputs) unless `layers` names it; the record
says which were skipped.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from slimserve.api.spec import LowRank
from slimserve.compression.recipes.base import ModelState, RecipeContext, final_layer, layers_of, named_module


def _rank(s: torch.Tensor, params: LowRank) -> int:
    if params.rank is not None:
        return min(params.rank, len(s))
    energy = torch.cumsum(s**2, 0) / torch.sum(s**2)
    assert params.energy is not None
    return int(torch.searchsorted(energy, torch.tensor(params.energy, dtype=energy.dtype)).item()) + 1


def _factorize(layer: nn.Module, params: LowRank) -> tuple[nn.Module, int] | None:
    """A two-layer replacement and its rank, or None when it would not shrink the layer."""
    if isinstance(layer, nn.Linear):
        w = layer.weight.detach().float()
    elif isinstance(layer, nn.Conv2d) and layer.kernel_size == (1, 1) and layer.groups == 1:
        w = layer.weight.detach().float().flatten(1)
    else:
        return None
    out_f, in_f = w.shape
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    r = _rank(s, params)
    if r * (in_f + out_f) >= in_f * out_f:
        return None
    first_w = (torch.diag(s[:r]) @ vh[:r]).contiguous()  # r × in
    second_w = u[:, :r].contiguous()  # out × r
    bias = layer.bias is not None
    first: nn.Module
    second: nn.Module
    if isinstance(layer, nn.Linear):
        first, second = nn.Linear(in_f, r, bias=False), nn.Linear(r, out_f, bias=bias)
        first.weight.data.copy_(first_w)
        second.weight.data.copy_(second_w)
    else:
        first = nn.Conv2d(in_f, r, 1, stride=layer.stride, padding=layer.padding, bias=False)  # type: ignore[arg-type]
        second = nn.Conv2d(r, out_f, 1, bias=bias)
        first.weight.data.copy_(first_w[:, :, None, None])
        second.weight.data.copy_(second_w[:, :, None, None])
    if bias:
        second.bias.data.copy_(layer.bias.detach())  # type: ignore[union-attr]
    return nn.Sequential(first, second).to(layer.weight.dtype), r


def apply(state: ModelState, params: LowRank, ctx: RecipeContext) -> ModelState:
    module = state.require_module("lowRank")
    layers_of(module, "lowRank", (nn.Linear, nn.Conv2d))
    wanted = set(params.layers)
    for name in wanted:
        named_module(module, name, "lowRank.layers")
    changed: list[str] = []
    inside_mha = {id(m) for mha in module.modules() if isinstance(mha, nn.MultiheadAttention) for m in mha.modules()}
    classifier = final_layer(module, ctx)
    skipped: list[str] = []
    for name, layer in list(module.named_modules()):
        if not name or (wanted and name not in wanted):
            continue
        if id(layer) in inside_mha and not isinstance(layer, nn.MultiheadAttention):
            skipped.append(f"{name} (inside nn.MultiheadAttention)")
            continue
        if layer is classifier and not wanted:
            skipped.append(f"{name} (the final layer)")
            continue
        result = _factorize(layer, params)
        if result is None:
            continue
        new, r = result
        parent_name, _, attr = name.rpartition(".")
        setattr(module.get_submodule(parent_name) if parent_name else module, attr, new)
        changed.append(f"{name}(rank {r})")
    if skipped:
        ctx.notes.append(f"lowRank: kept as they are: {', '.join(skipped[:8])}" + (" ..." if len(skipped) > 8 else ""))
    if changed:
        ctx.notes.append(f"lowRank: factorized {', '.join(changed)}")
    else:
        ctx.notes.append("lowRank: no Linear or 1x1 Conv layer shrinks at this rank/energy; the model is unchanged")
    return replace(state, module=module, onnx_path=None, float_onnx=None)
