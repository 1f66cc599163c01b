"""Operator settings from the environment (`SLIMSERVE_*`), read once at startup.

Everything a cluster admin sets per installation (images, Prometheus, storage, timeouts) lives
here; everything a model owner sets per model lives in the CompressedModel spec.
"""

from __future__ import annotations

import math
from typing import Final, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from slimserve.api.spec import DURATION_PATTERN, duration_seconds

# Our own finalizer and annotation prefix, so kopf's defaults never appear on our objects.
FINALIZER: Final = "slimserve.dev/finalizer"
ANNOTATION_PREFIX: Final = "slimserve.dev"
# The field manager of the operator's server-side applies (`metadata.managedFields`, `kubectl get --show-managed-fields`).
FIELD_MANAGER: Final = "slimserve-operator"


def seconds(text: str) -> int:
    """A duration as whole seconds (Kubernetes fields), rounded up."""
    return math.ceil(duration_seconds(text))


class OperatorSettings(BaseSettings):
    """Installation-wide knobs; the chart maps its values onto these environment variables."""

    model_config = SettingsConfigDict(env_prefix="SLIMSERVE_", frozen=True, extra="ignore")

    worker_image: str = Field(
        default="ghcr.io/slimserve/slimserve-worker:0.1.0",
        description="Image with the compression/evaluation stack; runs `slimserve compress|package|evaluate`.",
    )
    triton_image: str = Field(
        default="nvcr.io/nvidia/tritonserver:24.08-py3",
        description="Official Triton image (native onnxruntime backend) for the stable and canary Deployments.",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    prometheus_url: str = Field(
        default="http://prometheus-operated.monitoring.svc:9090",
        description="Prometheus the evaluator queries (and KEDA scales on).",
    )
    metrics_port: int = Field(default=8080, ge=0, le=65535, description="Operator metrics port; 0 disables.")
    reconcile_interval_seconds: float = Field(
        default=10.0, gt=0,
        description="First resync of a CompressedModel after a change. Children's watch events and the status's "
        "deadlines wake a model at once; the resync is for what no watch reports (a Gateway accepting a route).",
    )  # fmt: skip
    resync_max_seconds: float = Field(
        default=300.0, gt=0,
        description="The resync doubles while a model's passes change nothing, up to this.",
    )  # fmt: skip
    worker_limit: int = Field(
        default=200, ge=1,
        description="Objects whose watch events kopf handles at once (settings.queueing.worker_limit); the rest "
        "queue. Bounds memory and the API requests in flight when many models are created together.",
    )  # fmt: skip
    peering_lifetime_seconds: int = Field(
        default=60, ge=10, le=3600,
        description="With peering (more than one replica), how long a replica's keep-alive counts: a standby takes "
        "over this long after the active operator's last keep-alive when it dies without exiting (kopf's "
        "settings.peering.lifetime; keep-alives go out 5-10 s sooner). A clean exit hands over at once.",
    )  # fmt: skip
    scrape_interval: str = Field(
        default="3s", pattern=DURATION_PATTERN,
        description="How often Prometheus scrapes the Triton pods (the chart's PodMonitor interval): the evaluator "
        "sizes its windows from it, and a step shorter than four scrapes is refused.",
    )  # fmt: skip
    auto_backend: Literal["onnxruntime", "python"] = Field(
        default="onnxruntime",
        description="What spec.serving.backend auto packages for: onnxruntime for the official Triton images; python "
        "for a Triton with only the Python backend (the pytriton wheel's, as the e2e tests run).",
    )
    packaging_deadline_seconds: int = Field(
        default=1800, ge=60, description="Longest time a packaging Job may run, waiting for a node included."
    )
    scale_down_delay_seconds: float = Field(
        default=30.0, ge=0,
        description="After a promotion or rollback the losing side keeps its pods this long while Gateways and "
        "kube-proxy pick up the switch, then scales to 0 (Argo Rollouts' scaleDownDelaySeconds).",
    )  # fmt: skip
    job_ttl_seconds_after_finished: int = Field(
        default=86400, ge=60, description="Finished Jobs (and their pods' logs) are deleted after this long."
    )
    model_storage_class: str | None = Field(default=None, description="StorageClass of the model repository PVC.")
    model_access_mode: Literal["ReadWriteMany", "ReadWriteOnce"] = Field(
        default="ReadWriteMany",
        description="Triton replicas on several nodes read the repository: ReadWriteMany unless single-node.",
    )
    gateway_name: str = Field(default="slimserve-gateway", description="Default Gateway for HTTPRoutes.")
    gateway_namespace: str | None = Field(default=None, description="Namespace of the default Gateway.")
    split_replicas: int = Field(
        default=4, ge=2, le=100, description="Total Triton replicas when traffic is split by replica ratio."
    )
    job_backoff_limit: int = Field(
        default=1,
        ge=0,
        le=10,
        description="Retries of a crashed compression or packaging Job (invalid input, exit 2, is never retried).",
    )
    scanning: bool = Field(
        default=True,
        description="kopf's cluster-wide scan of CRDs and namespaces; turn off where RBAC forbids it "
        "(namespaces must then be named exactly, without globs).",
    )
    watch_server_timeout_seconds: int = Field(default=270, ge=10, description="Server-side watch timeout.")
    connect_timeout_seconds: float = Field(default=10.0, gt=0)
