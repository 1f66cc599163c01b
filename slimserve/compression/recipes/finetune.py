"""fineTune: recover accuracy after pruning or factorization by training on the train set.

With labels it minimizes cross-entropy; without labels it has nothing to learn from but the
model before this step, so it distils from that copy's soft targets instead (noted in the record).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from slimserve.api.spec import FineTune
from slimserve.compression.recipes.base import ModelState, RecipeContext, clone
from slimserve.compression.recipes.training import fit, kd_loss, soft_targets


def apply(state: ModelState, params: FineTune, ctx: RecipeContext) -> ModelState:
    module = state.require_module("fineTune")
    data = ctx.require_train("fineTune")
    if data.labels is not None:
        labels = torch.from_numpy(data.labels).to(ctx.device)

        def loss(logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            return nn.functional.cross_entropy(logits, labels[idx.to(ctx.device)])
    else:
        targets = soft_targets(clone(module), data, ctx)
        ctx.notes.append("fineTune: the train set has no labels; trained on the previous model's soft targets")

        def loss(logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            return kd_loss(logits, targets[idx.to(ctx.device)], temperature=1.0)

    tuned = fit(module, data, loss, ctx, params.epochs, params.lr, params.batch_size, "fine-tune")
    return replace(state, module=tuned, onnx_path=None, float_onnx=None)
