"""fineTune: recover quality after pruning or factorization by training on the train set.

With labels it minimizes the task loss (cross-entropy, binary cross-entropy or MSE). Without labels
it distils from the *baseline* (the source model before any step) as the teacher, with a loss that
follows the quality metric: KL for class scores, 1 − cosine for embeddings, MSE otherwise. The
model being tuned cannot be its own teacher: its soft targets already carry what pruning lost.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from slimserve.api.spec import FineTune
from slimserve.compression.recipes.base import ModelState, RecipeContext, clone
from slimserve.compression.recipes.training import fit, imitation_loss, label_loss, soft_targets


def apply(state: ModelState, params: FineTune, ctx: RecipeContext) -> ModelState:
    module = state.require_module("fineTune")
    data = ctx.require_train("fineTune")
    if data.labels is not None:
        loss, what = label_loss(ctx, torch.from_numpy(data.labels).to(ctx.device))
        ctx.notes.append(f"fineTune: {params.epochs} epochs, lr {params.lr:g}, {what}")
    else:
        teacher = clone(ctx.teacher) if ctx.teacher is not None else clone(module)
        targets = soft_targets(teacher, data, ctx)
        loss, what = imitation_loss(ctx, targets, temperature=1.0)
        source = "the baseline" if ctx.teacher is not None else "the model before this step"
        ctx.notes.append(
            f"fineTune: no labels; distilled from {source} ({what}), {params.epochs} epochs, lr {params.lr:g}"
        )
    tuned = fit(module, data, loss, ctx, params.epochs, params.lr, params.batch_size, "fineTune")
    return replace(state, module=tuned, onnx_path=None, float_onnx=None)
