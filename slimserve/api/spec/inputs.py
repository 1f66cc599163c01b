"""What goes in: the trained model (spec.source), its data (spec.data), credentials (spec.storage) and the quality metric every stage scores with (spec.quality)."""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar, Final

from pydantic import Field, model_validator

from slimserve.api.spec.common import DNS_SUBDOMAIN_PATTERN, FACTORY_PATTERN, Model, Uri

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
