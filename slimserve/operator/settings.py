"""Operator settings from the environment (`SLIMSERVE_*`), read once at startup.

Everything a cluster admin sets per installation (images, Prometheus, storage, timeouts) lives
here; everything a model owner sets per model lives in the CompressedModel spec.
"""

from __future__ import annotations

from typing import Final, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# Our own finalizer and annotation prefix, so kopf's defaults never appear on our objects.
FINALIZER: Final = "slimserve.dev/finalizer"
ANNOTATION_PREFIX: Final = "slimserve.dev"
FIELD_MANAGER: Final = "slimserve-operator"


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
        default=10.0, gt=0, description="How often each CompressedModel's children are observed."
    )
    worker_service_account: str = Field(
        default="slimserve-worker",
        description="ServiceAccount of evaluator Jobs (patches their report ConfigMap).",
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
    job_backoff_limit: int = Field(default=1, ge=0, le=10, description="Retries of a failed compression Job.")
    scanning: bool = Field(
        default=True,
        description="kopf's cluster-wide scan of CRDs and namespaces; turn off where RBAC forbids it "
        "(namespaces must then be named exactly, without globs).",
    )
    watch_server_timeout_seconds: int = Field(default=270, ge=10, description="Server-side watch timeout.")
    connect_timeout_seconds: float = Field(default=10.0, gt=0)
