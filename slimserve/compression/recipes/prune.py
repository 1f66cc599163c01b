"""prune: remove whole channels with torch-pruning (structured), or zero single weights (unstructured).

Structured pruning removes channels and every tensor slice that depends on them, so the dense
model really has fewer MACs and runs faster. Which channels go is decided by what they feed the
layers that read them, measured on a few calibration samples: ||W[:, c]||² · Var[a_c] summed over
every reading Linear/Conv (weight magnitude alone is blind to the BatchNorm that follows a conv:
on EfficientNet-Lite0 it left 15% top-1 agreement at 5% per layer where this leaves 55%). The
removed channels' mean (what they added on average) is folded into the readers' bias, so only
their variation is lost. The final classifier (the last Linear/Conv that
runs) is never pruned: its outputs are the model's outputs. Unstructured pruning only zeroes
weights: the dense ONNX file is as large and as fast as before; only a compressed copy
(gzip) shrinks, and the record says so.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, replace
from typing import Any, cast

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from slimserve.api.spec import Prune, PruneScope
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


_STAT_SAMPLES = 64
_IN_CHANNELS = (tp.prune_conv_in_channels, tp.prune_linear_in_channels)
_Stats = dict[nn.Module, tuple[torch.Tensor, torch.Tensor]]  # per input channel: mean, mean square


def _input_stats(module: nn.Module, ctx: RecipeContext) -> tuple[_Stats, int]:
    """Per input channel of every dense Linear/Conv (groups 1): mean and mean square over calibration samples."""
    data = ctx.calibration or ctx.train or ctx.evaluation
    n = min(len(data), _STAT_SAMPLES)
    sums: dict[nn.Module, tuple[torch.Tensor, torch.Tensor, int]] = {}

    def hook(layer: nn.Module, inputs: tuple[torch.Tensor, ...], _out: object) -> None:
        x = inputs[0].detach().double()
        x = x.reshape(-1, x.shape[-1]) if isinstance(layer, nn.Linear) else x.transpose(0, 1).flatten(1).t()
        s, q, c = sums.get(layer, (torch.zeros(x.shape[1], dtype=torch.float64),) * 2 + (0,))
        sums[layer] = (s + x.sum(0), q + (x * x).sum(0), c + x.shape[0])

    hooks = [
        m.register_forward_hook(hook)
        for m in module.modules()
        if isinstance(m, _LAYERS) and getattr(m, "groups", 1) == 1
    ]
    try:
        with torch.no_grad():
            for start in range(0, n, 16):
                ctx.forward(module, data.torch_inputs(slice(start, min(n, start + 16)), ctx.input_names))
    finally:
        for h in hooks:
            h.remove()
    return {m: ((s / c).float(), (q / c).float()) for m, (s, q, c) in sums.items()}, n


def _weight(layer: nn.Module) -> torch.Tensor:
    w = layer.weight
    assert isinstance(w, torch.Tensor)
    return w.detach()


def _reader(dep: Any, stats: _Stats) -> nn.Module | None:
    """The dense layer this dependency prunes input channels of, when its input statistics are known."""
    layer = dep.target.module
    if dep.handler in _IN_CHANNELS and layer in stats and getattr(layer, "groups", 1) == 1:
        return cast(nn.Module, layer)
    return None


class _OutputEnergy(tp.importance.GroupMagnitudeImportance):
    """A channel's importance: the variance it feeds the layers that read it, sum over readers of
    ||W[:, c]||² · Var[a_c]. Groups no measured reader sees fall back to group weight magnitude."""

    def __init__(self, stats: _Stats) -> None:
        super().__init__(p=2, group_reduction="sum", normalizer=None)
        self.stats = stats
        self.plan: dict[tuple[object, object], torch.Tensor] | None = None  # scope global: see _plan_global

    @torch.no_grad()
    def __call__(self, group: Any) -> torch.Tensor | None:
        if self.plan is not None:  # None leaves the group out of the global ranking (and whole)
            return self.plan.get(_key(group))
        energy = self.measured(group)
        return energy if energy is not None else cast(torch.Tensor | None, super().__call__(group))

    def measured(self, group: Any) -> torch.Tensor | None:
        """The fed variance per root channel, or None when no measured dense layer reads the group."""
        total: torch.Tensor | None = None
        for i, (dep, idxs) in enumerate(group):
            layer = _reader(dep, self.stats)
            if layer is None:
                continue
            mean, square = self.stats[layer]
            energy = _weight(layer).transpose(0, 1).flatten(1).pow(2).sum(1) * (square - mean * mean).clamp_min(0)
            # Sized by the root's channels (tp's own _reduce sizes by its first entry: a reader after a
            # flatten has more), each reader's channels added onto the root channel they come from.
            total = torch.zeros(len(group[0][1])) if total is None else total
            total.scatter_add_(0, torch.tensor(group[i].root_idxs, dtype=torch.long), energy[idxs].float())
        return total


def _key(group: Any) -> tuple[object, object]:
    """A group's identity across DependencyGraph.get_all_groups calls: its root layer and pruning function."""
    dep = group[0][0]
    return dep.target.module, dep.handler


_GLOBAL_MAX_LAYER = 0.9  # scope global: no layer loses more than this share of its channels


@dataclass
class _Plan:
    removed: dict[nn.Module, float]  # out-channel share planned per layer (before roundTo)
    channels: int  # channels ranked (groups a measured dense layer reads)
    unmeasured: int  # groups left whole: no measured reader, so no comparable importance


def _plan_global(pruner: Any, importance: _OutputEnergy, ratio: float) -> _Plan:
    """Rank every channel of every prunable group by fed variance (absolute units, comparable between
    layers: the variance the channel adds to its readers' outputs) and pick the `ratio` share of them with
    the least, each group losing at most _GLOBAL_MAX_LAYER of its channels and keeping at least one.

    torch-pruning 1.6's global ranking (one step) enforces neither limit — max_pruning_ratio is only checked
    before the step and a group it would empty is skipped silently — so the plan is made here and handed to
    it as scores: planned channels keep their fed variance, the others get it plus an offset above every
    score, so its threshold removes exactly the plan (and roundTo's extra channels are the next least)."""
    dg = pruner.DG
    measured: list[tuple[Any, int, torch.Tensor]] = []  # group, channel groups, score per channel slot
    unmeasured = 0
    for group in dg.get_all_groups(ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types):
        if not pruner._check_pruning_ratio(group):
            continue
        imp = importance.measured(group)
        if imp is None:
            unmeasured += 1
            continue
        ch_groups = pruner._get_channel_groups(group)
        measured.append((group, ch_groups, imp.double().view(ch_groups, -1).mean(0)))
    total = sum(len(d) for _, _, d in measured)
    # torch-pruning's own count for the scope, so its threshold falls exactly on the plan
    target = total - int(total * (1 - ratio))
    pool = []
    for i, (_, _, d) in enumerate(measured):
        cap = min(int(_GLOBAL_MAX_LAYER * len(d)), len(d) - 1)
        values, _order = torch.sort(d)
        pool += [(float(v), i) for v in values[:cap]]
    if target > len(pool):
        raise InvalidInput(
            f"prune.ratio {ratio} with prune.scope global: at most {len(pool) / max(total, 1):.0%} of the "
            f"{total} prunable channels can go while every layer keeps {1 - _GLOBAL_MAX_LAYER:.0%} of its own; "
            "lower ratio"
        )
    counts = [0] * len(measured)
    for _, i in sorted(pool)[:target]:
        counts[i] += 1
    offset = max((float(d.max()) for _, _, d in measured), default=0.0) + 1.0
    plan: dict[tuple[object, object], torch.Tensor] = {}
    removed: dict[nn.Module, float] = {}
    for (group, ch_groups, d), k in zip(measured, counts, strict=True):
        scores = d.clone()
        scores[torch.argsort(d)[k:]] += offset
        plan[_key(group)] = scores.repeat(ch_groups)  # torch-pruning averages the channel groups back
        for dep, _ in group:
            if dg.is_out_channel_pruning_fn(dep.handler):
                removed[dep.target.module] = k / len(d)
    importance.plan = plan
    return _Plan(removed, total, unmeasured)


@torch.no_grad()
def _fold_mean(group: Any, stats: _Stats) -> None:
    """Before the group's channels go: add W[:, removed] · E[a_removed] to each reader's bias (a bias is
    added where the layer had none), so the readers still see the removed channels' average."""
    for dep, idxs in group:
        layer = _reader(dep, stats)
        if layer is None or not idxs:
            continue
        w = _weight(layer)[:, list(idxs)]
        w = w.flatten(2).sum(2) if w.dim() > 2 else w  # kernel taps all see the constant
        delta = w @ stats[layer][0][list(idxs)].to(w.dtype)
        if layer.bias is None:
            layer.bias = nn.Parameter(delta.clone())
        else:
            bias = layer.bias
            assert isinstance(bias, torch.Tensor)
            bias.add_(delta)


def _structured(module: nn.Module, params: Prune, ctx: RecipeContext, ignored: list[nn.Module]) -> None:
    attention, unknown = _attention_blocks(module)
    if unknown:
        raise InvalidInput(
            f"prune: the model has attention that torch-pruning cannot shrink by whole heads: {', '.join(unknown[:3])}; "
            "pruning its channels would break the head layout. Use lowRank or quantize for this model, or give a "
            "model whose attention has separate query/key/value Linear layers and a num_attention_heads attribute"
        )
    scope_global = params.scope == PruneScope.global_
    if attention and scope_global:
        raise InvalidInput(
            f"prune.scope global: the model has attention ({len(attention)} blocks) whose heads are pruned per layer "
            "(headRatio); global ranking would mix head and channel scores. Set prune.scope: layer for this model"
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
    widths = {name: _width(layer) for name, layer in module.named_modules() if isinstance(layer, _LAYERS)}
    wrapped = Bound(module, ctx.input_names, ctx.by_name)
    stats, samples = _input_stats(module, ctx)
    importance = _OutputEnergy(stats)
    pruner = tp.pruner.MetaPruner(
        wrapped,
        tuple(ctx.example()),
        importance=importance,
        pruning_ratio=params.ratio,
        global_pruning=scope_global,
        ignored_layers=ignored,
        round_to=params.round_to,
        **extra,
    )
    plan = _plan_global(pruner, importance, params.ratio) if scope_global else None
    for group in pruner.step(interactive=True):
        _fold_mean(group, stats)
        group.prune()
    after = sum(p.numel() for p in module.parameters())
    fed = (
        f"the least variance fed to the next layers on {samples} samples (their mean folded into the next layers' bias)"
    )
    if plan is None:
        what = f"scope layer, {params.ratio:.0%} of channels per layer, {fed}"
    else:
        what = (
            f"scope global, {params.ratio:.0%} of the {plan.channels} prunable channels over the whole network, {fed}; "
            + _kept_widths(module, widths, plan)
        )
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
    if params.round_to:
        _note_rounding(module, widths, params, ctx, plan)


def _width(layer: nn.Module) -> int:
    return int(layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels)  # type: ignore[arg-type]


def _kept_widths(module: nn.Module, widths: dict[str, int], plan: _Plan) -> str:
    """Scope global: the range of kept widths over the pruned layers and the most pruned ones."""
    shrunk = []
    for name, layer in module.named_modules():
        depthwise = getattr(layer, "groups", 1) > 1  # follows the layer before it: listed once
        if name in widths and isinstance(layer, _LAYERS) and not depthwise and _width(layer) < widths[name]:
            shrunk.append((_width(layer) / widths[name], name, widths[name], _width(layer)))
    skipped = f"; {plan.unmeasured} group(s) no measured layer reads kept whole" if plan.unmeasured else ""
    if not shrunk:
        return "no layer shrank" + skipped
    shrunk.sort()
    most = ", ".join(f"{n} {o} → {w}" for _, n, o, w in shrunk[:3])
    return (
        f"{len(shrunk)} layer(s) shrank, keeping {shrunk[0][0]:.0%}-{shrunk[-1][0]:.0%} of their channels "
        f"(each keeps at least {1 - _GLOBAL_MAX_LAYER:.0%}); most pruned: {most}{skipped}"
    )


def _note_rounding(
    module: nn.Module, widths: dict[str, int], params: Prune, ctx: RecipeContext, plan: _Plan | None
) -> None:
    """Say where roundTo removed much more than planned (`ratio`, or the layer's share of the global plan):
    torch-pruning rounds the kept width *down*, so a 16-channel layer at roundTo 8 keeps 8 (50%) for any
    ratio. Narrow layers of mobile CNNs suffer most."""
    over = []
    for name, layer in module.named_modules():
        if name in widths and isinstance(layer, _LAYERS):
            old, new = widths[name], _width(layer)
            planned = params.ratio if plan is None else plan.removed.get(layer, 0.0)
            if old and (old - new) / old > planned + 0.1:
                over.append(f"{name} {old} → {new}")
    if over:
        than = f"{params.ratio:.0%}" if plan is None else "their planned share"
        ctx.notes.append(
            f"prune: roundTo {params.round_to} rounds kept channels down, so {len(over)} layer(s) lost more than "
            f"{than}+10 points: {', '.join(over[:4])}{' …' if len(over) > 4 else ''}; lower roundTo "
            "or list them in keepLayers"
        )


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
