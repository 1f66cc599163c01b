"""distill: train a smaller student on the teacher's soft targets (Hinton et al., 2015).

The teacher is the model as it stands before this step. The student comes from a factory, or
from the source factory called with a width multiplier (a parameter named `width` or
`width_multiplier`, or its only parameter). Loss: alpha·T²·KL(soft) + (1 − alpha)·CE(labels);
without labels it is the soft-target term alone.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import replace

import torch
from torch import nn

from slimserve.api.spec import Distill
from slimserve.compression.loading import call_factory, import_factory
from slimserve.compression.recipes.base import ModelState, RecipeContext
from slimserve.compression.recipes.training import LossFn, fit, imitation_loss, label_loss, soft_targets
from slimserve.errors import InvalidInput

WIDTH_PARAMETERS = ("width", "width_multiplier", "widthMultiplier")


def _width_kwarg(factory: Callable[..., nn.Module], ref: str) -> str:
    params = list(inspect.signature(factory).parameters.values())
    named = next((p.name for p in params if p.name in WIDTH_PARAMETERS), None)
    if named:
        return named
    if len(params) == 1 and params[0].kind in (params[0].POSITIONAL_OR_KEYWORD, params[0].KEYWORD_ONLY):
        return params[0].name
    raise InvalidInput(
        f"distill.student.widthMultiplier: spec.source.factory {ref!r} takes no width parameter; "
        f"add `width: float = 1.0` to it, or set distill.student.factory to a student 'module:function'"
    )


def build_student(params: Distill, ctx: RecipeContext) -> nn.Module:
    student = params.student
    if student.factory is not None:
        factory = import_factory(student.factory, ctx.base_dir, "distill.student.factory")
        return call_factory(factory, "distill.student.factory", student.factory)
    if ctx.factory is None or ctx.factory_ref is None:
        raise InvalidInput(
            f"distill.student.widthMultiplier = {student.width_multiplier}: needs source.format factory to "
            "rebuild the model at another width; set distill.student.factory instead"
        )
    kwarg = _width_kwarg(ctx.factory, ctx.factory_ref)
    return call_factory(ctx.factory, "spec.source.factory", ctx.factory_ref, **{kwarg: student.width_multiplier})


def apply(state: ModelState, params: Distill, ctx: RecipeContext) -> ModelState:
    teacher = state.require_module("distill")
    data = ctx.require_train("distill")
    torch.manual_seed(ctx.seed)
    student = build_student(params, ctx)
    targets = soft_targets(teacher, data, ctx)
    alpha, t = params.alpha, params.temperature
    soft, _ = imitation_loss(ctx, targets, t)
    loss: LossFn = soft
    if data.labels is not None:
        hard, _ = label_loss(ctx, torch.from_numpy(data.labels).to(ctx.device))

        def mixed(out: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            return alpha * soft(out, idx) + (1 - alpha) * hard(out, idx)

        loss = mixed
    else:
        ctx.notes.append("distill: no labels in the train set; the student learned from the teacher's outputs only")

    trained = fit(student, data, loss, ctx, params.epochs, params.lr, params.batch_size, "distill")
    return replace(state, module=trained, onnx_path=None, float_onnx=None)
