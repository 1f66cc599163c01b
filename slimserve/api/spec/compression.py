"""spec.compression: the recipes (quantize, prune, lowRank, distill, fineTune), their chains as variants, the search, how variants are measured and where the compression Job runs."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import ClassVar, Final, Literal

from pydantic import Field, model_validator

from slimserve.api.spec.common import (
    CPU_PATTERN,
    DEADLINE_PATTERN,
    DNS_LABEL_PATTERN,
    FACTORY_PATTERN,
    MEMORY_PATTERN,
    Model,
)

# ---------------------------------------------------------------------------------------------
# recipes: each step of a variant holds exactly one of these
# ---------------------------------------------------------------------------------------------


class QuantizeMode(StrEnum):
    static = "static"
    dynamic = "dynamic"
    fp16 = "fp16"


class Calibration(StrEnum):
    minmax = "minmax"
    entropy = "entropy"
    percentile = "percentile"


class QuantType(StrEnum):
    uint8 = "uint8"
    int8 = "int8"


class QuantFormat(StrEnum):
    qoperator = "QOperator"
    qdq = "QDQ"


class WeightRounding(StrEnum):
    nearest = "nearest"
    gptq = "gptq"


class QuantizationAware(Model):
    """Quantization-aware fine-tuning before static int8, without labels: the float model learns, through
    fake quantization that mimics onnxruntime's (uint8 activations over minmax ranges, int8 per-channel
    weights), to reproduce the source model's outputs on data.train plus data.calibration."""

    steps: int = Field(default=80, ge=1, le=100_000, description="Optimizer steps. Default 80.")
    lr: float = Field(
        default=1e-5,
        gt=0,
        le=1,
        description="Learning rate of Adam (constant). Default 0.00001 (EfficientNet-Lite0: 0.00003 gained half "
        "as much: the float model drifts further than the int8 rounding it compensates).",
    )  # fmt: skip
    batch_size: int = Field(default=16, ge=1, le=65_536, description="Training batch size. Default 16.")


class Quantize(Model):
    """Post-training quantization of the ONNX graph with onnxruntime (or fp16 conversion).

    Defaults are the fast ones on x86: static int8, QOperator, uint8 activations, int8
    per-channel weights. On a transformer graph (Softmax and LayerNormalization present) static int8
    quantizes only the weight MatMul/Gemm layers unless `opTypes` says otherwise: LayerNorm, Softmax,
    GELU, residual Adds, embedding Gathers and activation x activation MatMuls stay in float.
    """

    mode: QuantizeMode = Field(
        default=QuantizeMode.static,
        description="static (int8, activation ranges calibrated on data.calibration), dynamic (int8 weights, "
        "activations quantized per call; no calibration set) or fp16 (half-precision weights and activations, "
        "for GPUs). Default static.",
    )  # fmt: skip
    calibration: Calibration = Field(
        default=Calibration.minmax,
        description="How static quantization picks activation ranges (onnxruntime's calibrate_method): minmax, "
        "entropy or percentile. Default minmax.",
    )  # fmt: skip
    percentile: float = Field(
        default=99.999, gt=90, le=100,
        description="For calibration percentile: the percentile of activation values the range covers. "
        "Default 99.999. Example: 99.99.",
    )  # fmt: skip
    calibration_samples: int = Field(
        default=256, ge=1, le=100_000,
        description="Samples of data.calibration used to calibrate static quantization (a seeded subset). "
        "Default 256.",
    )  # fmt: skip
    per_channel: bool = Field(
        default=True, description="Quantize weights per output channel (true) or per tensor (false). Default true."
    )
    activation_type: QuantType = Field(
        default=QuantType.uint8,
        description="Integer type of quantized activations (static): uint8 or int8. Default uint8.",
    )
    weight_type: QuantType = Field(
        default=QuantType.int8, description="Integer type of quantized weights: int8 or uint8. Default int8."
    )
    format: QuantFormat = Field(
        default=QuantFormat.qoperator,
        description="Graph form of static quantization: QOperator (quantized operators such as QLinearConv) or "
        "QDQ (QuantizeLinear/DequantizeLinear pairs around float ops). Default QOperator.",
    )  # fmt: skip
    exclude_nodes: list[str] = Field(default_factory=list, description="Node names kept in float.")
    exclude_op_types: list[str] = Field(default_factory=list, description="Op types kept in float.")
    op_types: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="Op types to quantize (onnxruntime's op_types_to_quantize). Default (empty): on a transformer "
        "graph, static int8 quantizes MatMul and Gemm with constant weights only; elsewhere every op onnxruntime "
        "can quantize. Example: [MatMul, Gemm, Conv].",
    )
    reduce_range: bool | None = Field(
        default=None,
        description="7-bit weights (onnxruntime reduce_range), which avoids u8 x s8 saturation on x86 CPUs without "
        "VNNI. Default: on when the CPU running the compression lacks AVX-512 VNNI / AVX-VNNI, and the report "
        "says which. Example: true.",
    )
    bias_correction: bool | None = Field(
        default=None,
        description="Lower each Conv/Gemm bias by the mean output shift that int8 weight rounding causes, measured "
        "on the calibration set (static int8). Default: on when the graph has convolutions (depthwise layers need "
        "it most), off otherwise. Example: false.",
    )
    smooth_quant: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="SmoothQuant migration strength alpha (static int8): per-channel activation outliers move into "
        "the following MatMul weights, calibrated on the calibration set. Default: off. Example: 0.5.",
    )
    weight_rounding: WeightRounding = Field(
        default=WeightRounding.nearest,
        description="How int8 weights are rounded (static int8, int8 weights): nearest (onnxruntime's own) or gptq "
        "(each Conv/Gemm rounded column by column, the rounding error of each column compensated in the columns not "
        "yet rounded, to keep the layer's output on the calibration set: GPTQ/OBQ). gptq helps depthwise CNNs "
        "(EfficientNet-Lite0: 10.2 -> 8.6 points of top-1 agreement lost); same size and speed. Default nearest.",
    )
    qat: QuantizationAware | None = Field(
        default=None,
        description="Quantization-aware fine-tuning first (static int8 with uint8 activations, int8 per-channel "
        "weights, minmax calibration, weightRounding nearest; needs a PyTorch source): the float model is trained "
        "through fake quantization to imitate the source model's outputs (no labels), then quantized; bias "
        "correction defaults to off. Needs a train set like the traffic: on EfficientNet-Lite0 with 128 crops of 8 "
        "photos it gained nothing on unseen photos (11.0 points lost vs 10.2 without). Default: off. "
        "Example: {steps: 80, lr: 0.00001}.",
    )

    cel: ClassVar[list[dict[str, str]]] = [
        {
            "rule": "!has(self.weightRounding) || self.weightRounding == 'nearest' || "
            "((!has(self.mode) || self.mode == 'static') && (!has(self.weightType) || self.weightType == 'int8'))",
            "message": "weightRounding gptq needs mode static (it rounds on the calibration set) and weightType int8",
        },
        {
            "rule": "!has(self.qat) || ((!has(self.mode) || self.mode == 'static') && "
            "(!has(self.activationType) || self.activationType == 'uint8') && "
            "(!has(self.weightType) || self.weightType == 'int8') && (!has(self.perChannel) || self.perChannel) && "
            "(!has(self.calibration) || self.calibration == 'minmax') && "
            "(!has(self.weightRounding) || self.weightRounding == 'nearest'))",
            "message": "qat needs mode static, activationType uint8, weightType int8, perChannel true, calibration "
            "minmax and weightRounding nearest (the fake quantization it trains through)",
        },
    ]

    @model_validator(mode="after")
    def _rounding(self) -> Quantize:
        if self.weight_rounding == WeightRounding.gptq and (
            self.mode != QuantizeMode.static or self.weight_type != QuantType.int8
        ):
            raise ValueError(
                f"weightRounding 'gptq' needs mode 'static' (it rounds on the calibration set) and weightType "
                f"'int8' (got mode {str(self.mode)!r}, weightType {str(self.weight_type)!r}); use weightRounding "
                "'nearest' otherwise"
            )
        if self.qat is not None:
            wanted = {
                "mode": (self.mode, QuantizeMode.static),
                "activationType": (self.activation_type, QuantType.uint8),
                "weightType": (self.weight_type, QuantType.int8),
                "perChannel": (self.per_channel, True),
                "calibration": (self.calibration, Calibration.minmax),
                "weightRounding": (self.weight_rounding, WeightRounding.nearest),
            }
            wrong = [f"{k} {str(got)!r}" for k, (got, want) in wanted.items() if got != want]
            if wrong:
                raise ValueError(
                    f"qat trains through fake quantization of static int8 with uint8 activations, int8 per-channel "
                    f"weights, minmax calibration and nearest rounding (GPTQ would fit the weights back to the float "
                    f"ones); got {', '.join(wrong)}"
                )
        return self


class PruneMethod(StrEnum):
    structured = "structured"
    unstructured = "unstructured"


class PruneScope(StrEnum):
    layer = "layer"
    global_ = "global"


class Prune(Model):
    """Structured channel pruning with torch-pruning (or unstructured magnitude pruning)."""

    ratio: float = Field(
        gt=0,
        lt=1,
        description="Fraction of channels (or weights) to remove: in every layer, or over the whole network "
        "with scope global.",
    )  # fmt: skip
    method: PruneMethod = Field(
        default=PruneMethod.structured,
        description="structured removes whole channels (a smaller, faster dense model); unstructured zeroes "
        "single weights by magnitude (same file size and speed, only a gzip copy shrinks). Default structured.",
    )  # fmt: skip
    scope: PruneScope = Field(
        default=PruneScope.layer,
        description="Where ratio applies (structured only). layer removes that share of channels in every layer. "
        "global removes that share of all prunable channels, the least important across the whole network "
        "(importance compared between layers), so layers that matter little lose more and sensitive ones less; "
        "every layer keeps at least 10%. Default layer. Use global for higher ratios or models with uneven "
        "layers (e.g. mobile CNNs); not for models with attention heads.",
    )
    round_to: int | None = Field(default=None, ge=1, le=1024, description="Keep channel counts multiples of this.")
    keep_layers: list[str] = Field(default_factory=list, description="Module names never pruned.")
    head_ratio: float | None = Field(
        default=None,
        ge=0,
        lt=1,
        description="Transformers: fraction of attention heads removed per layer (whole heads; the residual width "
        "is kept). Default: `ratio`. 0 keeps every head and prunes MLP channels only. Example: 0.25.",
    )

    cel: ClassVar[list[dict[str, str]]] = [
        {
            "rule": "!has(self.scope) || self.scope == 'layer' || !has(self.method) || self.method == 'structured'",
            "message": "scope global ranks whole channels and needs method structured; set scope: layer for "
            "unstructured",
        }
    ]

    @model_validator(mode="after")
    def _global_is_structured(self) -> Prune:
        if self.scope == PruneScope.global_ and self.method != PruneMethod.structured:
            raise ValueError(
                "scope global ranks whole channels and needs method structured; unstructured zeroes weights per "
                "layer. Set scope: layer (or method: structured)"
            )
        return self


class LowRank(Model):
    """SVD factorization of Linear and 1x1 Conv layers, by rank or by kept energy."""

    rank: int | None = Field(
        default=None, ge=1, le=65_536,
        description="Rank each factorized layer keeps (capped at the layer's own); set this or energy. Example: 16.",
    )  # fmt: skip
    energy: float | None = Field(default=None, gt=0, le=1, description="Fraction of squared singular values kept.")
    layers: list[str] = Field(
        default_factory=list, description="Module names to factorize; empty means all that shrink."
    )

    cel: ClassVar[list[dict[str, str]]] = [
        {"rule": "has(self.rank) != has(self.energy)", "message": "set exactly one of 'rank' or 'energy'"}
    ]

    @model_validator(mode="after")
    def _one_of_rank_energy(self) -> LowRank:
        if (self.rank is None) == (self.energy is None):
            raise ValueError("set exactly one of 'rank' (e.g. 16) or 'energy' (e.g. 0.9)")
        return self


class Student(Model):
    """The student network: the source factory at a smaller width, or a factory of its own."""

    width_multiplier: float | None = Field(
        default=None, gt=0, le=1,
        description="Rebuild the model with source.factory at this width (its parameter named width or "
        "width_multiplier, or its only parameter); needs source.format factory. Example: 0.5.",
    )  # fmt: skip
    factory: str | None = Field(
        default=None, pattern=FACTORY_PATTERN,
        description="'module:function' returning the student nn.Module, imported from source.codeUri. "
        "Example: model:small.",
    )  # fmt: skip

    cel: ClassVar[list[dict[str, str]]] = [
        {
            "rule": "has(self.widthMultiplier) != has(self.factory)",
            "message": "set exactly one of 'widthMultiplier' or 'factory'",
        }
    ]

    @model_validator(mode="after")
    def _one_of(self) -> Student:
        if (self.width_multiplier is None) == (self.factory is None):
            raise ValueError("set exactly one of 'widthMultiplier' (e.g. 0.5) or 'factory' ('module:function')")
        return self


class Distill(Model):
    """Train a student on the teacher's soft targets (and labels when present)."""

    student: Student = Field(description="The student: set exactly one of widthMultiplier or factory.")
    temperature: float = Field(
        default=4.0, gt=0, le=100, description="Softmax temperature T of the soft targets. Default 4.0."
    )
    alpha: float = Field(
        default=0.7, ge=0, le=1,
        description="Weight of the soft-target loss; 1 - alpha weighs the label loss (labels only). Default 0.7.",
    )  # fmt: skip
    epochs: int = Field(default=10, ge=1, le=1000, description="Passes over data.train. Default 10.")
    lr: float = Field(
        default=1e-3,
        gt=0,
        le=10,
        description="Learning rate of AdamW (cosine schedule over the epochs). Default 0.001.",
    )
    batch_size: int = Field(default=64, ge=1, le=65_536, description="Training batch size. Default 64.")


class FineTune(Model):
    """Train the current model on the train set (after pruning or factorization)."""

    epochs: int = Field(
        default=3,
        ge=1,
        le=1000,
        description=(
            "Passes over data.train. The epoch with the lowest train-set loss (model in eval mode) is kept, "
            "the starting weights included. Default 3."
        ),
    )
    lr: float = Field(
        default=1e-3,
        gt=0,
        le=10,
        description="Learning rate of AdamW (cosine schedule over the epochs). Default 0.001.",
    )
    batch_size: int = Field(default=64, ge=1, le=65_536, description="Training batch size. Default 64.")


RECIPES: Final = ("quantize", "prune", "lowRank", "distill", "fineTune")
TORCH_RECIPES: Final = frozenset({"prune", "lowRank", "distill", "fineTune"})
TRAINING_RECIPES: Final = frozenset({"distill", "fineTune"})


class Step(Model):
    """One step of a variant: exactly one recipe key."""

    quantize: Quantize | None = Field(
        default=None,
        description="Post-training quantization of the ONNX graph; must be the last step. Example: {mode: static}.",
    )
    prune: Prune | None = Field(
        default=None, description="Channel (or weight) pruning; needs a PyTorch source. Example: {ratio: 0.5}."
    )
    low_rank: LowRank | None = Field(
        default=None,
        description="SVD factorization of Linear and 1x1 Conv layers; needs a PyTorch source. Example: {energy: 0.9}.",
    )
    distill: Distill | None = Field(
        default=None,
        description="Knowledge distillation into a student; needs a PyTorch source and data.train. "
        "Example: {student: {widthMultiplier: 0.5}}.",
    )  # fmt: skip
    fine_tune: FineTune | None = Field(
        default=None,
        description="Train the current model on data.train (labels, or the baseline's outputs without them); "
        "needs a PyTorch source. Example: {epochs: 3}.",
    )  # fmt: skip

    @model_validator(mode="before")
    @classmethod
    def _known_recipe(cls, data: object) -> object:
        if isinstance(data, dict):
            unknown = [k for k in data if k not in RECIPES and k not in ("low_rank", "fine_tune")]
            if unknown:
                import difflib

                near = difflib.get_close_matches(str(unknown[0]), RECIPES, n=1)
                hint = f" (did you mean '{near[0]}'?)" if near else ""
                raise ValueError(f"unknown recipe '{unknown[0]}'{hint}; a step holds one of: {', '.join(RECIPES)}")
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> Step:
        if len(self.recipes_set()) != 1:
            raise ValueError(f"a step holds exactly one recipe key, one of: {', '.join(RECIPES)}")
        return self

    def recipes_set(self) -> list[str]:
        return [name for name in RECIPES if getattr(self, _attr(name)) is not None]

    @property
    def recipe(self) -> str:
        """The recipe's name as written in YAML (`quantize`, `lowRank`, ...)."""
        return self.recipes_set()[0]

    @property
    def params(self) -> Quantize | Prune | LowRank | Distill | FineTune:
        value = getattr(self, _attr(self.recipe))
        assert value is not None
        return value  # type: ignore[no-any-return]


def _attr(recipe: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), recipe)


class Variant(Model):
    """A named chain of recipe steps applied to the baseline, e.g. prune → fineTune → quantize."""

    name: str = Field(
        min_length=1, max_length=40, pattern=DNS_LABEL_PATTERN,
        description="Variant name, unique and not 'baseline'; it names the variant's Deployment and report entry. "
        "Example: int8-static.",
    )  # fmt: skip
    steps: list[Step] = Field(
        min_length=1, max_length=16,
        description="Recipe steps applied in order to the baseline (1 to 16), quantize last. "
        "Example: [{prune: {ratio: 0.5}}, {fineTune: {}}, {quantize: {}}].",
    )  # fmt: skip

    cel: ClassVar[list[dict[str, str]]] = [
        {
            "rule": f"{list(range(15))}.all(i, i + 1 >= size(self.steps) || !has(self.steps[i].quantize))",
            "message": "quantize must be the last step of a variant",
        }
    ]

    @model_validator(mode="after")
    def _quantize_last(self) -> Variant:
        recipes = [s.recipe for s in self.steps]
        if "quantize" in recipes[:-1]:
            raise ValueError(
                f"variant '{self.name}': steps {recipes} put quantize before another step; "
                "quantize works on the exported ONNX graph, so it must be the last step"
            )
        return self


class Objective(StrEnum):
    size = "size"
    latency = "latency"
    throughput = "throughput"


class Search(Model):
    """Accuracy-aware search: try recipes, fall back until the drop holds or the budget ends."""

    max_accuracy_drop: float = Field(gt=0, le=100, description="Allowed drop in points (accuracy %).")
    objective: Objective = Field(
        default=Objective.size,
        description="What the chosen variant must beat the baseline on: size (file bytes), latency (p50 at batch "
        "1) or throughput (samples/s). Default size.",
    )  # fmt: skip
    max_trials: int = Field(default=8, ge=1, le=100, description="Most trials (variants built and scored). Default 8.")


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Toleration(Model):
    """A Kubernetes pod toleration (core/v1 Toleration, without tolerationSeconds)."""

    key: str | None = Field(
        default=None, description="Taint key the toleration matches; empty matches every key. Example: nvidia.com/gpu."
    )
    operator: Literal["Exists", "Equal"] | None = Field(
        default=None, description="Exists (any value) or Equal (the value below); Kubernetes' default is Equal."
    )
    value: str | None = Field(default=None, description="Taint value to match with operator Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match: NoSchedule, PreferNoSchedule or NoExecute; empty matches all."
    )


class JobPlacement(Model):
    """Where the compression Job runs in a cluster (ignored locally)."""

    gpus: int = Field(
        default=0, ge=0, le=16,
        description="nvidia.com/gpu limit of the compression Job's pod. Default 0. Example: 1 (with device auto, "
        "training steps run on it).",
    )  # fmt: skip
    cpu: str = Field(
        default="2", pattern=CPU_PATTERN,
        description="CPU request of the compression Job, a Kubernetes quantity. Default '2'. Example: '4' or '1500m'.",
    )  # fmt: skip
    memory: str = Field(
        default="8Gi", pattern=MEMORY_PATTERN,
        description="Memory request and limit of the compression Job, a Kubernetes quantity. Default 8Gi. "
        "Example: 16Gi.",
    )  # fmt: skip
    node_selector: dict[str, str] = Field(
        default_factory=dict,
        description="Node labels for the compression Job's pod. Example: {nvidia.com/gpu.present: 'true'}.",
    )
    tolerations: list[Toleration] = Field(
        default_factory=list,
        description="Tolerations of the compression Job's pod, e.g. [{key: nvidia.com/gpu, operator: Exists, "
        "effect: NoSchedule}].",
    )  # fmt: skip
    deadline: str = Field(
        default="6h", pattern=DEADLINE_PATTERN,
        description="Longest time the compression Job may run, waiting for a node included (activeDeadlineSeconds); "
        "then the rollout fails with the pod's reason. Default 6h. Example: 30m.",
    )  # fmt: skip


class Measure(Model):
    """How each variant is measured offline (in-process onnxruntime)."""

    latency_runs: int = Field(
        default=200, ge=10, le=100_000,
        description="Batch-1 calls per variant for the p50/p99 latency, interleaved with the other variants in 10 "
        "rounds. Default 200.",
    )  # fmt: skip
    throughput_batch: int = Field(
        default=32, ge=1, le=4096,
        description="Batch size of the throughput (samples/s) measurement; a graph with a fixed batch runs at its "
        "own. Default 32.",
    )  # fmt: skip
    threads: int = Field(default=0, ge=0, le=256, description="onnxruntime intra-op threads; 0 = all cores.")


class Compression(Model):
    """The variants to build (or a search for one), and how and where they are built and measured."""

    variants: list[Variant] = Field(
        default_factory=list, max_length=32,
        description="Named recipe chains to build and score, up to 32; at least one variant or a search. "
        "Example: [{name: int8, steps: [{quantize: {}}]}].",
    )  # fmt: skip
    search: Search | None = Field(
        default=None,
        description="Accuracy-aware search for a variant within a quality budget, beside (or instead of) the "
        "variants. Example: {maxAccuracyDrop: 1.0}.",
    )  # fmt: skip
    device: Device = Field(
        default=Device.auto,
        description="Where training steps (distill, fineTune) run: auto (CUDA when visible, else CPU), cpu, or "
        "cuda (fails without a CUDA device). Default auto.",
    )  # fmt: skip
    seed: int = Field(
        default=0, ge=0,
        description="Random seed of training, calibration subsets and quality intervals, for repeatable runs. "
        "Default 0.",
    )  # fmt: skip
    measure: Measure = Field(default_factory=Measure)
    job: JobPlacement = Field(default_factory=JobPlacement)

    cel: ClassVar[list[dict[str, str]]] = [
        {
            "rule": "(has(self.variants) && size(self.variants) > 0) || has(self.search)",
            "message": "list at least one variant under 'variants' or add a 'search'",
        },
        {
            "rule": "!has(self.variants) || self.variants.all(v, self.variants.exists_one(w, w.name == v.name))",
            "message": "variant names must be unique",
        },
        {
            "rule": "!has(self.variants) || self.variants.all(v, v.name != 'baseline')",
            "message": "'baseline' is reserved for the uncompressed model",
        },
    ]

    @model_validator(mode="after")
    def _something_to_do(self) -> Compression:
        if not self.variants and self.search is None:
            raise ValueError("list at least one variant under 'variants' or add a 'search'")
        names = [v.name for v in self.variants]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"variant names must be unique; '{dupes[0]}' appears more than once")
        if "baseline" in names:
            raise ValueError("'baseline' is reserved for the uncompressed model; rename that variant")
        return self
