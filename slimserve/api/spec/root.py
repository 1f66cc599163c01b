"""The spec's root, CompressedModelSpec, and the hash of what decides the compression output."""

from __future__ import annotations

import hashlib
import json

from pydantic import Field, model_validator

from slimserve.api.spec.common import Model
from slimserve.api.spec.compression import TORCH_RECIPES, TRAINING_RECIPES, Compression
from slimserve.api.spec.inputs import TORCH_FORMATS, Data, Quality, Source, Storage
from slimserve.api.spec.rollout import Gates, Rollout
from slimserve.api.spec.serving import Serving


class CompressedModelSpec(Model):
    """The desired state: the model, its data, how to score, compress, serve and roll it out."""

    source: Source
    data: Data
    quality: Quality = Field(default_factory=Quality)
    compression: Compression
    serving: Serving = Field(default_factory=Serving)
    rollout: Rollout = Field(default_factory=Rollout)
    gates: Gates = Field(default_factory=Gates)
    storage: Storage = Field(default_factory=Storage)

    @model_validator(mode="after")
    def _check_consistency(self) -> CompressedModelSpec:
        # Each check here has a CEL twin in CROSS_FIELD_RULES.
        if self.source.format == "factory" and self.source.factory is None:
            raise ValueError(
                "spec.source.factory is missing: format 'factory' needs 'module:function' that returns the nn.Module"
            )
        for i, variant in enumerate(self.compression.variants):
            for j, step in enumerate(variant.steps):
                where = f"spec.compression.variants[{i}].steps[{j}].{step.recipe}"
                if step.recipe in TORCH_RECIPES and self.source.format not in TORCH_FORMATS:
                    raise ValueError(
                        f"{where} needs a PyTorch model but source.format is '{self.source.format}'; "
                        "give a torchscript, torch-export or factory source"
                    )
                if step.recipe in TRAINING_RECIPES and self.data.train is None:
                    raise ValueError(f"{where} trains the model but data.train is missing; add a .npz train set")
                if step.quantize is not None and step.quantize.mode == "static" and self.data.calibration is None:
                    raise ValueError(
                        f"{where} is static quantization but data.calibration is missing; "
                        "add a .npz calibration set or use mode: dynamic"
                    )
        names = {v.name for v in self.compression.variants}
        if self.rollout.candidate != "auto" and self.rollout.candidate not in names:
            raise ValueError(
                f"spec.rollout.candidate '{self.rollout.candidate}' is not a variant; use 'auto' or one of {sorted(names)}"
            )
        return self


def compression_hash(spec: CompressedModelSpec) -> str:
    """sha256 of what decides the compression output: source, data, quality and compression (not its Job's
    placement). Serving, rollout, gates and storage credentials are left out: changing only those reuses the
    compression output. URIs count as written: the bytes behind one are not read, so new file contents
    under the same URI need a spec change (a new URI or version) to compress again.
    """
    parts = {
        "source": spec.source.model_dump(mode="json", by_alias=True, exclude_defaults=True),
        "data": spec.data.model_dump(mode="json", by_alias=True, exclude_defaults=True),
        "quality": spec.quality.model_dump(mode="json", by_alias=True, exclude_defaults=True),
        "compression": spec.compression.model_dump(mode="json", by_alias=True, exclude_defaults=True,
                                                   exclude={"job"}),
    }  # fmt: skip
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


# CEL twins of `_check_consistency`, carried by the CRD as x-kubernetes-validations on `spec`.
CompressedModelSpec.cel = [
    {
        "rule": "self.source.format != 'factory' || has(self.source.factory)",
        "message": "source.factory is missing: format 'factory' needs 'module:function'",
    },
    {
        "rule": "!has(self.compression.variants) || self.source.format != 'onnx' || "
        "self.compression.variants.all(v, v.steps.all(s, !has(s.prune) && !has(s.lowRank) "
        "&& !has(s.distill) && !has(s.fineTune)))",
        "message": "prune, lowRank, distill and fineTune need a PyTorch source (torchscript, torch-export or factory)",
    },
    {
        "rule": "has(self.data.train) || !has(self.compression.variants) || "
        "self.compression.variants.all(v, v.steps.all(s, !has(s.distill) && !has(s.fineTune)))",
        "message": "distill and fineTune train the model: add data.train",
    },
    {
        "rule": "has(self.data.calibration) || !has(self.compression.variants) || "
        "self.compression.variants.all(v, v.steps.all(s, !has(s.quantize) || "
        "(has(s.quantize.mode) && s.quantize.mode != 'static')))",
        "message": "static quantization needs data.calibration (or use mode: dynamic)",
    },
    {
        "rule": "!has(self.rollout) || !has(self.rollout.candidate) || self.rollout.candidate == 'auto' || "
        "(has(self.compression.variants) && self.compression.variants.exists(v, v.name == self.rollout.candidate))",
        "message": "rollout.candidate must be 'auto' or the name of a variant",
    },
]
