"""spec.serving: how Triton serves every variant (backend, batching, autoscaling, model repository)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, ClassVar

from pydantic import Field, model_validator

from slimserve.api.spec.common import (
    CPU_PATTERN,
    DEADLINE_PATTERN,
    DNS_LABEL_PATTERN,
    DNS_SUBDOMAIN_PATTERN,
    MEMORY_PATTERN,
    S3_REPOSITORY_PATTERN,
    Model,
)
from slimserve.api.spec.compression import Toleration

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
