"""One training loop for fineTune and distill: seeded, on the context's device, with a progress bar."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from slimserve.compression.loading import DataSet
from slimserve.compression.recipes.base import RecipeContext, first_output

# loss(student_logits, batch_index) -> scalar
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def soft_targets(teacher: nn.Module, data: DataSet, ctx: RecipeContext, batch_size: int = 256) -> torch.Tensor:
    """The teacher's logits on the whole set, computed once (the teacher never changes)."""
    teacher = teacher.to(ctx.device).eval()
    outs = []
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            idx = slice(start, start + batch_size)
            inputs = [t.to(ctx.device) for t in data.torch_inputs(idx, ctx.input_names)]
            outs.append(first_output(teacher(*inputs)).float())
    return torch.cat(outs)


def fit(module: nn.Module, data: DataSet, loss_fn: LossFn, ctx: RecipeContext, epochs: int, lr: float,
        batch_size: int, label: str) -> nn.Module:
    """Adam with a cosine schedule; returns the module in eval mode on the CPU."""
    torch.manual_seed(ctx.seed)
    module = module.to(ctx.device).train()
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs))
    gen = torch.Generator().manual_seed(ctx.seed)
    with ctx.task(label, epochs) as advance:
        for _ in range(epochs):
            for idx in torch.randperm(len(data), generator=gen).split(batch_size):
                inputs = [t.to(ctx.device) for t in data.torch_inputs(idx, ctx.input_names)]
                opt.zero_grad()
                loss = loss_fn(first_output(module(*inputs)), idx)
                loss.backward()
                opt.step()
            sched.step()
            advance()
    return module.to("cpu").eval()


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al.'s soft-target loss, scaled by T² so its gradients match the hard loss."""
    t = temperature
    return nn.functional.kl_div(
        nn.functional.log_softmax(student / t, dim=-1),
        nn.functional.log_softmax(teacher / t, dim=-1),
        log_target=True,
        reduction="batchmean",
    ) * (t * t)
