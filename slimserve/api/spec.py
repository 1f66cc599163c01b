"""The CompressedModel spec: one contract for `slimserve compress/run FILE.yaml` and the cluster.

Frozen pydantic v2 models with camelCase aliases. The CRD's openAPIV3Schema is generated from
these models (see `slimserve.api.crd`), so the YAML a user `kubectl apply`s and the YAML the
local runtime reads are validated by the same rules.

Cross-field rules live in model validators *and* as CEL rules in each class's `cel`, which the
CRD carries as `x-kubernetes-validations`; tests hold the two to the same verdicts.
"""

from __future__ import annotations

import hashlib
import json
import re
from enum import StrEnum
from typing import Annotated, ClassVar, Final, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

API_GROUP: Final = "slimserve.dev"
API_VERSION: Final = "v1alpha1"
KIND: Final = "CompressedModel"
PLURAL: Final = "compressedmodels"

# RE2-compatible (Kubernetes evaluates CRD patterns with Go's regexp): no ".." anywhere.
NO_DOTDOT_PATTERN: Final = r"^([^.]|\.([^.]|$))*$"
DNS_LABEL_PATTERN: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
FACTORY_PATTERN: Final = r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$"
DURATION_PATTERN: Final = r"^[0-9]+(ms|s|m)$"
CPU_PATTERN: Final = r"^[0-9]+(\.[0-9]+)?m?$"
MEMORY_PATTERN: Final = r"^[0-9]+(Ki|Mi|Gi|Ti)?$"
DEADLINE_PATTERN: Final = r"^[0-9]+(s|m|h)$"
DNS_SUBDOMAIN_PATTERN: Final = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
# What Triton's S3 client parses: bucket, then path segments of letters, digits, '.', '-' and '_'.
WEBHOOK_URL_PATTERN: Final = r"^https?://[^/?#\s]+(/\S*)?$"
S3_REPOSITORY_PATTERN: Final = r"^s3://[a-z0-9][a-z0-9.-]*[a-z0-9](/[0-9A-Za-z._-]+)*/?$"

# The URIs slimserve reads (slimserve.storage fetches them): one RE2 pattern per scheme, checked by
# pydantic and by the CRD's CEL rule alike. A value without "://" is a path.
URI_PATTERNS: Final = {
    "s3": r"^s3://[a-z0-9][a-z0-9.-]*[a-z0-9](/.*)?$",
    "gs": r"^gs://[a-z0-9][a-z0-9._-]*[a-z0-9](/.*)?$",
    "http": r"^https?://[^/?#]+(/.*)?$",
    "hf": r"^hf://((models|datasets)/)?[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*(@[^@]+)?(/.*)?$",
    "pvc": r"^pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/.*)?$",
    "file": r"^file:///.*$",
}
URI_FORMS: Final = (
    "s3://bucket/key, gs://bucket/key, https://host/path, hf://org/repo[@revision]/path, pvc://claim/path, "
    "file:///absolute/path, or a path relative to the YAML file's folder"
)
_ANY_URI: Final = "^(" + "|".join(p[1:-1] for p in URI_PATTERNS.values()) + ")$"

# What each pattern means, for error messages that say how to fix the value.
PATTERN_HINTS: Final = {
    NO_DOTDOT_PATTERN: "contains '..' and could escape the allowed root; use a path inside the YAML file's "
    "folder (in a cluster /models/<name>/inputs) without '..'",
    DNS_LABEL_PATTERN: "use lowercase letters, digits and '-', starting and ending with a letter or digit (e.g. int8-static)",
    FACTORY_PATTERN: "use 'module:function', e.g. model:build",
    DURATION_PATTERN: "use a duration such as 500ms, 15s or 2m",
    CPU_PATTERN: "use a Kubernetes CPU quantity such as 2 or 500m",
    MEMORY_PATTERN: "use a Kubernetes memory quantity such as 512Mi or 8Gi",
    DEADLINE_PATTERN: "use a duration in whole seconds, minutes or hours, such as 90s, 15m or 6h",
    DNS_SUBDOMAIN_PATTERN: "use the name of a Kubernetes object: lowercase letters, digits, '-' and '.'",
    WEBHOOK_URL_PATTERN: "use an http:// or https:// URL, e.g. http://qa-gate.ci.svc/confirm",
    S3_REPOSITORY_PATTERN: "use s3://bucket/prefix with path segments of letters, digits, '.', '-' and '_' "
    "(what Triton's S3 client reads), e.g. s3://models/digits/repository",
}


class Model(BaseModel):
    """Base for every spec object: frozen, camelCase in YAML, unknown fields rejected.

    `cel` holds the CEL twins of a class's cross-field validators; the CRD generator attaches
    them to the class's schema as `x-kubernetes-validations`.
    """

    cel: ClassVar[list[dict[str, str]]] = []

    model_config = ConfigDict(
        frozen=True,
        populate_by_name=True,
        alias_generator=to_camel,
        extra="forbid",
        use_enum_values=True,
    )


def _readable_uri(uri: str) -> str:
    """A URI names a scheme slimserve reads, in that scheme's shape (the CEL rule on `Uri` is its twin)."""
    if "://" not in uri:
        return uri
    scheme = uri.split("://", 1)[0].lower()
    key = "http" if scheme in ("http", "https") else scheme
    if key not in URI_PATTERNS:
        raise ValueError(f"{scheme}:// is not read by slimserve; use {URI_FORMS}")
    if not re.fullmatch(URI_PATTERNS[key], uri):
        shapes = {"s3": "s3://bucket/key", "gs": "gs://bucket/key", "http": f"{scheme}://host/path",
                  "hf": "hf://org/repo[@revision][/path] or hf://datasets/org/repo[@revision][/path]",
                  "pvc": "pvc://claim/path (a PersistentVolumeClaim name, then the path in it)",
                  "file": "file:///absolute/path"}  # fmt: skip
        raise ValueError(f"not a {scheme}:// URI slimserve reads; use {shapes[key]}")
    return uri


Uri = Annotated[
    str,
    Field(
        min_length=1,
        max_length=1024,
        pattern=NO_DOTDOT_PATTERN,
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": f"!self.contains('://') || self.matches('{_ANY_URI}')", "message": f"use {URI_FORMS}"}
            ]
        },
    ),
    AfterValidator(_readable_uri),
]


# ---------------------------------------------------------------------------------------------
# source and data
# ---------------------------------------------------------------------------------------------


class SourceFormat(StrEnum):
    onnx = "onnx"
    torchscript = "torchscript"
    torch_export = "torch-export"
    factory = "factory"


TORCH_FORMATS: Final = frozenset({"torchscript", "torch-export", "factory"})


class Source(Model):
    """Where the trained model comes from.

    `uri` is an ONNX file, a TorchScript file, a torch.export `.pt2` archive, or (format
    `factory`) a state-dict file loaded into the `nn.Module` that `factory` builds.
    Every URI in the spec is a path or one of s3://, gs://, https://, hf://, pvc://, file://
    (fetched into a content-addressed cache by `slimserve.storage`). Relative paths resolve against
    the directory of the YAML file (`--base-dir` overrides it); in a cluster that folder is
    `/models/<name>/inputs` on the model volume the worker Jobs mount.
    """

    uri: Uri = Field(
        description="Model file: a path relative to the YAML file's folder (in a cluster /models/<name>/inputs "
        "on the model volume), an absolute path, or s3://bucket/key, gs://bucket/key, https://host/path, "
        "hf://org/repo[@revision]/path, pvc://claim/path. An ONNX model's external data files beside it "
        "(model.onnx.data) come along. Example: s3://models/digits/digits_cnn.pt."
    )
    format: SourceFormat = Field(
        default=SourceFormat.onnx,
        description="onnx, torchscript, torch-export (.pt2) or factory (module:function + state dict).",
    )
    factory: str | None = Field(
        default=None,
        pattern=FACTORY_PATTERN,
        description="'module:function' returning an nn.Module; needed when format is factory.",
    )
    code_uri: Uri | None = Field(
        default=None,
        description="Folder (or one .py file) holding the modules that source.factory, a distill student's "
        "factory and quality.function import; it comes first on sys.path. Any URI form of `uri`. Default: "
        "the YAML file's folder (--base-dir). Example: s3://models/digits/model.py.",
    )


class Data(Model):
    """Data sets as `.npz` files: one array per model input (or `x`), plus `y` labels if any.

    Each is a path or a URI, as `source.uri` is (e.g. s3://models/digits/data/test.npz).
    """

    train: Uri | None = Field(default=None, description="Training set for fine-tuning and distillation.")
    calibration: Uri | None = Field(default=None, description="Calibration set for static quantization.")
    evaluation: Uri = Field(description="Evaluation set every variant is measured on.")


class Storage(Model):
    """Credentials for the spec's remote URIs (and an s3:// model repository) in a cluster.

    Locally the same variables come from your environment: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    AWS_SESSION_TOKEN, AWS_DEFAULT_REGION, AWS_ENDPOINT_URL (MinIO and other S3-compatible stores),
    GOOGLE_APPLICATION_CREDENTIALS, HF_TOKEN, HF_ENDPOINT.
    """

    secret_name: str | None = Field(
        default=None,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="Secret in the CompressedModel's namespace whose keys become environment variables of the "
        "worker Jobs' storage step and of Triton (for an s3:// model repository): AWS_ACCESS_KEY_ID, "
        "AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, AWS_ENDPOINT_URL, HF_TOKEN, ... It is also mounted at "
        "/var/run/secrets/slimserve/storage, so GOOGLE_APPLICATION_CREDENTIALS can name a key file in it. "
        "Default: none (workload identity, or public data). Example: model-storage.",
    )


# ---------------------------------------------------------------------------------------------
# quality: one metric for compress, search, served check, gate, reports and status
# ---------------------------------------------------------------------------------------------


class MetricName(StrEnum):
    auto = "auto"
    accuracy = "accuracy"
    topk = "topk"
    agreement = "agreement"
    cosine = "cosine"
    mse = "mse"
    mae = "mae"
    r2 = "r2"
    custom = "custom"


class Quality(Model):
    """How a variant's quality is scored against the baseline, everywhere the same way.

    Budgets (`gates.maxAccuracyDrop`, `search.maxAccuracyDrop`) are in one unit per metric: points of a
    0-100 score for accuracy, topk, agreement (in %), cosine and r2 (x 100); percent relative increase
    for the error metrics mse and mae.
    """

    metric: MetricName = Field(
        default=MetricName.auto,
        description="auto (inferred from the output's shape and the labels' dtype, and reported), accuracy "
        "(class-id labels y; a one-logit or one-probability output is a binary classifier), topk, agreement "
        "(top-1 agreement with the baseline, no labels), cosine (per-sample cosine to the baseline's "
        "outputs, for embeddings), mse, mae, r2 (float labels y, or the baseline's outputs), or custom "
        "(`function` returns per-sample scores). Example: cosine.",
    )
    output: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="Name of the model output the metric reads; default: the first output. Example: logits.",
    )
    top_k: int = Field(default=5, ge=2, le=1000, description="k for metric topk. Default 5.")
    threshold: float | None = Field(
        default=None,
        description="Decision threshold of a binary classifier with one output column; default 0.5 when "
        "every baseline output lies in [0, 1] (probabilities), else 0 (logits). The report says which.",
    )
    function: str | None = Field(
        default=None,
        pattern=FACTORY_PATTERN,
        description="For metric custom: 'module:function' called as function(outputs, labels, baseline) "
        "with numpy arrays, returning one score per sample (higher is better, in the budgets' unit). "
        "Example: metrics:f1_per_sample.",
    )

    cel: ClassVar[list[dict[str, str]]] = [
        {
            "rule": "(has(self.metric) && self.metric == 'custom') == has(self.function)",
            "message": "metric custom needs 'function' (module:function), and 'function' needs metric custom",
        }
    ]

    @model_validator(mode="after")
    def _custom_function(self) -> Quality:
        if (self.metric == "custom") != (self.function is not None):
            raise ValueError(
                "metric 'custom' needs 'function: module:function', and 'function' is only read by metric custom"
            )
        return self


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
        "(EfficientNet-Lite0: 12.6 -> 10.0 points of top-1 agreement lost); same size and speed. Default nearest.",
    )

    cel: ClassVar[list[dict[str, str]]] = [
        {
            "rule": "!has(self.weightRounding) || self.weightRounding == 'nearest' || "
            "((!has(self.mode) || self.mode == 'static') && (!has(self.weightType) || self.weightType == 'int8'))",
            "message": "weightRounding gptq needs mode static (it rounds on the calibration set) and weightType int8",
        }
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
        return self


class PruneMethod(StrEnum):
    structured = "structured"
    unstructured = "unstructured"


class Prune(Model):
    """Structured channel pruning with torch-pruning (or unstructured magnitude pruning)."""

    ratio: float = Field(gt=0, lt=1, description="Fraction of channels (or weights) to remove.")
    method: PruneMethod = Field(
        default=PruneMethod.structured,
        description="structured removes whole channels (a smaller, faster dense model); unstructured zeroes "
        "single weights by magnitude (same file size and speed, only a gzip copy shrinks). Default structured.",
    )  # fmt: skip
    round_to: int | None = Field(default=None, ge=1, le=1024, description="Keep channel counts multiples of this.")
    keep_layers: list[str] = Field(default_factory=list, description="Module names never pruned.")
    head_ratio: float | None = Field(
        default=None,
        ge=0,
        lt=1,
        description="Transformers: fraction of attention heads removed per layer (whole heads; the residual width "
        "is kept). Default: `ratio`. 0 keeps every head and prunes MLP channels only. Example: 0.25.",
    )


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

    epochs: int = Field(default=3, ge=1, le=1000, description="Passes over data.train. Default 3.")
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


# ---------------------------------------------------------------------------------------------
# serving, rollout, gates
# ---------------------------------------------------------------------------------------------


class Backend(StrEnum):
    auto = "auto"
    onnxruntime = "onnxruntime"
    python = "python"


class InstanceKind(StrEnum):
    cpu = "cpu"
    gpu = "gpu"


class DynamicBatching(Model):
    """Triton's dynamic batcher (used when serving.maxBatchSize > 0)."""

    preferred_batch_sizes: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
        default_factory=lambda: [4, 8],
        description="Batch sizes the batcher prefers to form; sizes above maxBatchSize are dropped. Default [4, 8].",
    )
    max_queue_delay_microseconds: int = Field(
        default=500, ge=0, le=10_000_000,
        description="Longest a request waits in the queue for a batch to fill, in microseconds. Default 500.",
    )  # fmt: skip


class Autoscaling(Model):
    """The autoscaler of each variant's Triton Deployment: an HPA on CPU, or KEDA on a PromQL query."""

    min_replicas: int = Field(
        default=1, ge=1, le=1000,
        description="Fewest Triton pods per variant; a canary (and the control) starts at this count. Default 1.",
    )  # fmt: skip
    max_replicas: int = Field(
        default=4, ge=1, le=1000, description="Most Triton pods per variant, at least minReplicas. Default 4."
    )
    target_cpu_utilization: int = Field(
        default=70, ge=1, le=100,
        description="The HPA's target average CPU utilization, in percent of the CPU request. Default 70.",
    )  # fmt: skip
    keda_query: str | None = Field(
        default=None, max_length=4096,
        description="PromQL for a KEDA ScaledObject instead of the HPA, one per variant's Deployment: {{namespace}}, "
        "{{model}} and {{variant}} are replaced with that Deployment's, and {{variant}} is required so each scales "
        "on its own pods. Example: sum(rate(nv_inference_queue_duration_us{namespace=\"{{namespace}}\", "
        "slimserve_dev_model=\"{{model}}\", slimserve_dev_variant=\"{{variant}}\"}[1m])).",
    )  # fmt: skip
    keda_threshold: float | None = Field(
        default=None, gt=0,
        description="KEDA's target value of kedaQuery per pod; set with kedaQuery. Example: 2000.",
    )  # fmt: skip

    cel: ClassVar[list[dict[str, str]]] = [
        {
            "rule": "!has(self.maxReplicas) || !has(self.minReplicas) || self.maxReplicas >= self.minReplicas",
            "message": "maxReplicas must be at least minReplicas",
        },
        {
            "rule": "has(self.kedaQuery) == has(self.kedaThreshold)",
            "message": "set both kedaQuery and kedaThreshold, or neither",
        },
        {
            "rule": "!has(self.kedaQuery) || self.kedaQuery.contains('{{variant}}')",
            "message": "kedaQuery must select one variant's pods with {{variant}} (and {{namespace}}, {{model}})",
        },
    ]

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaling:
        if self.max_replicas < self.min_replicas:
            raise ValueError(
                f"maxReplicas ({self.max_replicas}) is below minReplicas ({self.min_replicas}); raise maxReplicas"
            )
        if (self.keda_query is None) != (self.keda_threshold is None):
            raise ValueError("set both 'kedaQuery' and 'kedaThreshold' to scale with KEDA, or neither")
        if self.keda_query is not None and "{{variant}}" not in self.keda_query:
            raise ValueError(
                f"kedaQuery = {self.keda_query!r} scales every variant on the same series; select one variant's pods, "
                'e.g. {namespace="{{namespace}}",slimserve_dev_model="{{model}}",slimserve_dev_variant="{{variant}}"}'
            )
        return self


class ModelRepository(Model):
    """Where the Triton model repository lives in a cluster: a PVC (default) or an s3:// URI."""

    pvc: str | None = Field(
        default=None, pattern=DNS_LABEL_PATTERN,
        description="An existing PersistentVolumeClaim to use as the model volume; the operator then creates none. "
        "Default: a claim <name>-models that the operator creates. Example: shared-models.",
    )  # fmt: skip
    uri: str | None = Field(
        default=None,
        max_length=1024,
        pattern=S3_REPOSITORY_PATTERN,
        description="s3://bucket/prefix: the packaging Job uploads each variant's repository to "
        "<uri>/gen-<generation>/<variant>/ (then <variant>.complete), and Triton reads it natively with the "
        "variables of spec.storage.secretName (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION; "
        "AWS_ENDPOINT_URL with its port for MinIO); its pods mount no model volume. The worker Jobs still use "
        "the model volume. Example: s3://models/digits/repository.",
    )
    size: str = Field(
        default="5Gi", pattern=r"^[0-9]+(Mi|Gi|Ti)$",
        description="Storage request of the model volume the operator creates (not used with pvc). Default 5Gi. "
        "Example: 20Gi.",
    )  # fmt: skip


class Serving(Model):
    """How each variant is served by Triton: its model configuration, pods and autoscaler."""

    backend: Backend = Field(
        default=Backend.auto,
        description="Triton backend the model repository is packaged for: onnxruntime, python, or auto "
        "(onnxruntime; in a cluster the operator's autoBackend setting). `slimserve run` always uses python. "
        "Default auto.",
    )  # fmt: skip
    max_batch_size: int = Field(
        default=32, ge=0, le=4096,
        description="Triton's max_batch_size; 0 turns batching (and dynamic batching) off. Default 32.",
    )  # fmt: skip
    dynamic_batching: DynamicBatching = Field(default_factory=DynamicBatching)
    instances: int = Field(
        default=1, ge=1, le=64, description="Model instances per Triton pod (its instance_group count). Default 1."
    )
    instance_kind: InstanceKind = Field(
        default=InstanceKind.cpu,
        description="cpu or gpu instances; gpu also adds TensorRT to the onnxruntime backend where the graph "
        "allows. Default cpu.",
    )  # fmt: skip
    gpus: int = Field(
        default=0, ge=0, le=16,
        description="nvidia.com/gpu limit of each Triton pod. Default 0. Example: 1 with instanceKind gpu.",
    )  # fmt: skip
    cpu: str = Field(
        default="1", pattern=CPU_PATTERN,
        description="CPU request of each Triton pod, a Kubernetes quantity. Default '1'. Example: '4' or '500m'.",
    )  # fmt: skip
    memory: str = Field(
        default="2Gi", pattern=MEMORY_PATTERN,
        description="Memory request and limit of each Triton pod, a Kubernetes quantity. Default 2Gi. Example: 8Gi.",
    )  # fmt: skip
    autoscaling: Autoscaling = Field(default_factory=Autoscaling)
    model_repository: ModelRepository = Field(default_factory=ModelRepository)
    model_name: str | None = Field(
        default=None, max_length=63, pattern=DNS_LABEL_PATTERN,
        description="The one model name clients call, /v2/models/<modelName>/infer, whichever variant serves it: "
        "the stable, the canary and a promoted variant all serve under it, so neither a canary step nor a "
        "promotion changes the URL. Default: metadata.name. Example: digits.",
    )  # fmt: skip
    startup_timeout: str = Field(
        default="10m", pattern=DEADLINE_PATTERN,
        description="How long a Triton pod may take to load its model (a TensorRT engine build takes minutes) "
        "before Kubernetes restarts it (its startupProbe). Default 10m.",
    )  # fmt: skip
    deploy_deadline: str = Field(
        default="20m", pattern=DEADLINE_PATTERN,
        description="How long Deploying waits for ready stable, canary and control pods, image pulls included; "
        "then the rollout fails with the pods' reasons (ImagePullBackOff, Unschedulable, a model that fails to "
        "load). Default 20m.",
    )  # fmt: skip
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels for the Triton pods. Example: {nvidia.com/gpu.present: 'true'}."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list,
        description="Tolerations of the Triton pods, e.g. [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}].",
    )
    runtime_class_name: str | None = Field(
        default=None, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN,
        description="RuntimeClass of the Triton pods (e.g. nvidia where the GPU runtime is not the default).",
    )  # fmt: skip
    image_pull_secrets: list[Annotated[str, Field(max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)]] = Field(
        default_factory=list,
        description="Secrets (names) for pulling the Triton and worker images of this model, e.g. [nvcr-io].",
    )


class TrafficSplit(StrEnum):
    gateway = "gateway"
    replicas = "replicas"


class Approval(StrEnum):
    auto = "auto"
    manual = "manual"


class WebhookType(StrEnum):
    confirm_rollout = "confirm-rollout"
    pre_rollout = "pre-rollout"
    confirm_promotion = "confirm-promotion"
    post_rollout = "post-rollout"
    rollback = "rollback"
    event = "event"


class WebhookFormat(StrEnum):
    json = "json"
    slack = "slack"


class Webhook(Model):
    """An HTTP endpoint the rollout asks (or tells) at one point, as Flagger's webhooks.

    Each call is an HTTP POST of JSON, answered within `timeout`. What an answer means depends on
    `type`: confirm-rollout and confirm-promotion wait until every such endpoint answers 2xx (asked again
    every stepDuration; nothing counts as failed); a pre-rollout answer other than 2xx (or no answer) is a
    failed check, asked again, and one failure more than rollout.failureBudget rolls back; a rollback
    endpoint answering 2xx rolls back at once; post-rollout and event are told, their failures only logged.
    """

    name: str = Field(
        max_length=63, pattern=DNS_LABEL_PATTERN,
        description="Name of the webhook, unique in rollout.webhooks; it names the webhook in status, Events and "
        "logs. Example: qa-gate.",
    )  # fmt: skip
    type: WebhookType = Field(
        description="When it is called and what its answer means: confirm-rollout (before the first step; waits "
        "for 2xx), pre-rollout (before the first step, after confirm-rollout; not 2xx is a failed check), "
        "confirm-promotion (before the promotion; waits for 2xx), rollback (before every step after the first "
        "and before the promotion, again while confirm-promotion waits; 2xx rolls back now), post-rollout (after "
        "the rollout is promoted or rolled back; told only) or event (every phase change and rollout Event; told "
        "only).",
    )
    url: str = Field(
        max_length=2048, pattern=WEBHOOK_URL_PATTERN,
        description="The http:// or https:// URL POSTed to. A Slack incoming webhook works with format slack. "
        "Example: http://qa-gate.ci.svc.cluster.local/confirm.",
    )  # fmt: skip
    timeout: str = Field(
        default="10s", pattern=DURATION_PATTERN,
        description="How long one call may take, connecting included; no answer in time is a timeout (for "
        "confirm-* a wait, for pre-rollout a failed check, for rollback no rollback). Default 10s.",
    )  # fmt: skip
    format: WebhookFormat = Field(
        default=WebhookFormat.json,
        description="json: a payload like Flagger's, {name, namespace, phase, type, variant, stable, weight, "
        "message, metadata}; slack (event and post-rollout only): {text} for a Slack (or Mattermost) incoming "
        "webhook. Default json.",
    )
    metadata: dict[str, str] = Field(
        default_factory=dict, max_length=32,
        description="Extra key-values sent in the json payload's metadata. Example: {env: staging}.",
    )  # fmt: skip

    cel: ClassVar[list[dict[str, str]]] = [
        {
            "rule": "!has(self.format) || self.format == 'json' || self.type == 'post-rollout' || self.type == 'event'",
            "message": "format slack is for post-rollout and event webhooks: Slack answers 200 to every post, so it "
            "cannot confirm, check or ask for a rollback; use format json",
        }
    ]

    @model_validator(mode="after")
    def _slack_only_tells(self) -> Webhook:
        if self.format == "slack" and self.type not in ("post-rollout", "event"):
            raise ValueError(
                f"format slack with type {self.type}: Slack answers 200 to every post, so it cannot confirm, check "
                "or ask for a rollback; use format slack with type event or post-rollout, or format json"
            )
        return self


class Evaluator(Model):
    """The evaluator Job of each judged step in a cluster (ignored locally): Locust, the served quality check
    (the evaluation set and the uncompressed baseline in memory) and the gate."""

    cpu: str = Field(default="1", pattern=CPU_PATTERN, description="CPU request. Default 1. Example: 2.")
    memory: str = Field(
        default="2Gi", pattern=MEMORY_PATTERN,
        description="Memory request and limit: the evaluation set is loaded twice (the quality check and Locust) "
        "plus the baseline ONNX model. Default 2Gi. Example: 8Gi.",
    )  # fmt: skip
    deadline: str = Field(
        default="15m", pattern=DEADLINE_PATTERN,
        description="Longest time one evaluator Job may run, waiting for a node included; then the rollout fails "
        "with the pod's reason and the stable keeps serving. Default 15m.",
    )  # fmt: skip


class Rollout(Model):
    """How the candidate replaces the stable variant: canary steps, the load that judges them, approval."""

    candidate: str = Field(
        default="auto",
        description="Variant to roll out, or 'auto' for the best variant that meets the accuracy gate.",
    )
    steps: list[Annotated[int, Field(ge=1, le=100)]] = Field(
        default_factory=lambda: [10, 50, 100],
        min_length=1,
        max_length=20,
        description="Canary weights in percent, increasing, ending at 100.",
    )
    step_duration: str = Field(
        default="15s", pattern=DURATION_PATTERN,
        description="Length of one canary window, warm-up included. Example: 15s.",
    )  # fmt: skip
    max_step_duration: str | None = Field(
        default=None, pattern=DURATION_PATTERN,
        description="A step the gate cannot decide yet (fewer than gates.minSamples requests, or an interval "
        "across a threshold) keeps sending load, in windows of stepDuration, up to this long; default 4 x "
        "stepDuration.",
    )  # fmt: skip
    warmup: str = Field(
        default="2s", pattern=DURATION_PATTERN,
        description="Seconds at the start of each step (after the spawn ramp) that are not judged.",
    )  # fmt: skip
    users: int = Field(default=8, ge=1, le=10_000, description="Concurrent Locust users (closed loop).")
    spawn_rate: int = Field(default=8, ge=1, le=10_000, description="Users started per second.")
    failure_budget: int = Field(
        default=0, ge=0, le=20,
        description="Failed steps tolerated (as Argo's failureLimit): a failed step runs again at the same "
        "weight; one failure more rolls back. A failed quality check always rolls back.",
    )  # fmt: skip
    inconclusive_limit: int = Field(
        default=1, ge=0, le=20,
        description="Inconclusive steps run again at the same weight (as Argo's inconclusiveLimit); one more "
        "ends the rollout Inconclusive: nothing promoted, the stable keeps serving.",
    )  # fmt: skip
    traffic_split: TrafficSplit = Field(
        default=TrafficSplit.gateway,
        description="gateway: an HTTPRoute on a Gateway API Gateway carries the canary weight; replicas: one "
        "Service, the weight approximated by stable and canary pod counts. Default gateway.",
    )  # fmt: skip
    gateway: str | None = Field(default=None, description="Gateway API parent (name) for the HTTPRoute.")
    approval: Approval = Field(
        default=Approval.auto,
        description="'manual' holds a rollout whose every step passed before promotion (the canary keeps its "
        "last weight, condition WaitingForApproval) until someone runs `slimserve promote`; 'auto' promotes "
        "as soon as the gate passes. Default auto.",
    )
    evaluator: Evaluator = Field(default_factory=Evaluator)
    webhooks: list[Webhook] = Field(
        default_factory=list,
        max_length=20,
        description="HTTP endpoints asked or told at each point of the rollout, as Flagger's webhooks "
        "(confirm-rollout, pre-rollout, confirm-promotion, rollback, post-rollout, event). Default none.",
    )

    cel: ClassVar[list[dict[str, str]]] = [
        {
            "rule": "!has(self.webhooks) || self.webhooks.all(w, self.webhooks.exists_one(v, v.name == w.name))",
            "message": "webhook names must be unique",
        },
        {
            # Standard CEL has no list index comprehension: walk a literal list of indices.
            "rule": "!has(self.steps) || (self.steps[size(self.steps) - 1] == 100 && "
            f"{list(range(19))}.all(i, i + 1 >= size(self.steps) || self.steps[i] < self.steps[i + 1]))",
            "message": "canary steps must increase and end at 100",
        },
    ]

    @field_validator("steps")
    @classmethod
    def _increasing(cls, steps: list[int]) -> list[int]:
        if any(b <= a for a, b in zip(steps, steps[1:], strict=False)) or steps[-1] != 100:
            raise ValueError(f"{steps} must increase and end at 100, e.g. [10, 50, 100]")
        return steps

    @field_validator("webhooks")
    @classmethod
    def _unique_webhooks(cls, hooks: list[Webhook]) -> list[Webhook]:
        names = [h.name for h in hooks]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"webhook names must be unique; '{dupes[0]}' appears more than once: rename one")
        return hooks


class Gates(Model):
    """What the candidate must show, judged on intervals (each end a one-sided 95% bound).

    A check passes when its whole interval is on the good side of the threshold, fails when the whole
    interval is on the bad side, and is inconclusive otherwise. Latency, throughput and errors compare
    the candidate with a fresh copy of the stable model (the control) that gets the same share of the
    load in the same seconds; quality compares it with the uncompressed baseline. The defaults are
    calibrated with `python -m benchmarks.gate` (see benchmarks/README.md).
    """

    max_accuracy_drop: float = Field(
        default=1.0, ge=0, le=100,
        description="Largest quality drop versus the baseline, in the metric's unit (spec.quality): points of "
        "a 0-100 score, or % error increase for mse/mae. Judged on the paired interval of the drop. Default 1.0.",
    )  # fmt: skip
    max_p99_ms: float | None = Field(
        default=None, gt=0, description="Absolute budget for the candidate's client-side p99, in milliseconds."
    )
    p99_tolerance: float | None = Field(
        default=0.25, ge=0, le=10,
        description="Candidate p99 <= control p99 x (1 + this), same window, client side. Default 0.25.",
    )  # fmt: skip
    min_throughput_rps: float | None = Field(
        default=None, gt=0, description="Absolute floor for the candidate's capacity, samples per second of compute."
    )
    min_throughput_ratio: float | None = Field(
        default=0.85, gt=0, le=100,
        description="Candidate capacity >= control capacity x this, same window: samples per second of work "
        "(CPU seconds of the serving processes locally; compute seconds from Triton's counters in a cluster). "
        "Default 0.85.",
    )  # fmt: skip
    max_error_rate: float = Field(
        default=0.01, ge=0, le=1,
        description="Largest share of failed candidate requests (timeouts, refused connections and non-2xx "
        "answers count). Default 0.01.",
    )  # fmt: skip
    min_samples: int = Field(
        default=500, ge=1, le=10_000_000,
        description="Fewer judged requests on the candidate or the control (or fewer evaluation samples) is "
        "Inconclusive, never a failure. Default 500.",
    )  # fmt: skip


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
