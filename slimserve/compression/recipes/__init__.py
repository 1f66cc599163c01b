"""One module per recipe, all with the same interface: `apply(state, params, ctx) -> ModelState`."""

from __future__ import annotations

from typing import Final

from slimserve.compression.recipes import distill, finetune, lowrank, prune, quantize
from slimserve.compression.recipes.base import ModelState, Recipe, RecipeContext

REGISTRY: Final[dict[str, Recipe]] = {
    "quantize": quantize.apply,
    "prune": prune.apply,
    "lowRank": lowrank.apply,
    "distill": distill.apply,
    "fineTune": finetune.apply,
}

__all__ = ["REGISTRY", "ModelState", "Recipe", "RecipeContext"]
