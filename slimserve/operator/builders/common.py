"""Names, labels and the pieces every child shares: owner references, security contexts, volumes."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from slimserve.api import API_GROUP, API_VERSION, KIND, CompressedModel, CompressedModelStatus
from slimserve.operator.settings import ANNOTATION_PREFIX, OperatorSettings
from slimserve.storage.uris import PVC_MOUNT_ROOT, pvc_claim, scheme_of

Manifest = dict[str, Any]
# `previous`: the stable variant before the last promotion, kept at 0 replicas for a manual way back.
# `control`: a fresh copy of the stable that gets the canary's share of the evaluator's load, never clients'.
Role = Literal["stable", "canary", "previous", "control"]

SPEC_FILE: Final = "/spec/compressedmodel.yaml"
MODELS_MOUNT: Final = "/models"
TERMINATION_LOG: Final = "/dev/termination-log"
HTTP_PORT: Final = 8000
GRPC_PORT: Final = 8001
METRICS_PORT: Final = 8002
SPEC_HASH_ANNOTATION: Final = f"{ANNOTATION_PREFIX}/spec-hash"
LABEL_MODEL: Final = f"{API_GROUP}/model"
LABEL_VARIANT: Final = f"{API_GROUP}/variant"
LABEL_ROLE: Final = f"{API_GROUP}/role"
LABEL_GENERATION: Final = f"{API_GROUP}/generation"
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
TRITON: Final = "triton"
# The control's pods carry their own component, so no Service that clients or the stable use selects them.
TRITON_CONTROL: Final = "triton-control"
BASELINE: Final = "baseline"
# Exit codes that no retry changes: 2 invalid input, 3 a failed step, 4 an inconclusive one.
FINAL_EXIT_CODES: Final = [2, 3, 4]
NON_ROOT_UID: Final = 1000
PROBE_PERIOD_S: Final = 10
# Where a worker Job mounts spec.storage.secretName (slimserve.storage.SECRET_MOUNT_PATH; a test holds them equal).
SECRET_MOUNT_PATH: Final = "/var/run/secrets/slimserve/storage"


@dataclass(frozen=True)
class Owner:
    """The CompressedModel object a child belongs to (identity, not spec)."""

    name: str
    namespace: str
    uid: str
    generation: int
    attempt: int = 0  # status.retries: a retried generation's packaging and evaluator Jobs get new names
    # The generation whose compression output this one reuses (status.compression); 0: its own.
    compressed_generation: int = 0

    @classmethod
    def from_body(cls, body: Any) -> Owner:
        meta = body["metadata"]
        return cls(
            name=meta["name"],
            namespace=meta.get("namespace") or "default",
            uid=meta.get("uid") or "",
            generation=int(meta.get("generation") or 1),
        )


@dataclass(frozen=True)
class Served:
    """One variant as a Triton Deployment serves it: its name there and the generation of its model files."""

    variant: str
    generation: int


# ---------------------------------------------------------------------------------------------
# names, labels, common pieces
# ---------------------------------------------------------------------------------------------


def child_name(*parts: str | int) -> str:
    """A DNS-1123 label from parts; too long names keep a stable hash suffix (never collide)."""
    name = "-".join(str(p) for p in parts if p != "")
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return name[:54].rstrip("-") + "-" + digest


def spec_config_map_name(owner: Owner) -> str:
    return child_name(owner.name, "spec")


def compression_job_name(owner: Owner, generation: int | None = None) -> str:
    return child_name(owner.name, "compress", f"g{generation or owner.generation}")


def choice_job_name(owner: Owner) -> str:
    return child_name(owner.name, "choose", f"g{owner.generation}")


def reuses_compression(owner: Owner) -> bool:
    return owner.compressed_generation not in (0, owner.generation)


def compressing_job_name(owner: Owner) -> str:
    """The Job the Compressing phase waits on: compression, or only the choice from a reused output."""
    return choice_job_name(owner) if reuses_compression(owner) else compression_job_name(owner)


def _attempt(owner: Owner) -> str:
    return f"r{owner.attempt}" if owner.attempt else ""


def packaging_job_name(owner: Owner, generation: int | None = None) -> str:
    return child_name(owner.name, "package", f"g{generation or owner.generation}", _attempt(owner))


def evaluator_job_name(owner: Owner, index: int, generation: int | None = None) -> str:
    """The Job judging the `index`-th step of a generation (0 = the served quality check; retries count on).

    A retried generation (`slimserve retry`) judges its steps again under names of its own (`-r<n>`)."""
    return child_name(owner.name, "eval", f"g{generation or owner.generation}", _attempt(owner), f"s{index}")


def triton_name(owner: Owner, variant: str) -> str:
    """Deployment, Service and autoscaler of one variant share this name."""
    return child_name(owner.name, variant)


def control_name(owner: Owner) -> str:
    """Deployment and Service of the control. `<cr>--control` is never `<cr>-<variant>`: no variant starts with '-'."""
    return child_name(owner.name, "-control")


def canary_variant(status: CompressedModelStatus | Mapping[str, Any], generation: int) -> str | None:
    """The name the status's candidate serves under: Deployment, Service, autoscaler, repository folder.

    Its own name, unless that name is already taken by the stable variant or by the stable one
    parked at the last promotion: rolling out `int8` again after a spec change usually means new
    weights, so it serves as `int8-g<generation>` with children of its own instead of taking over
    (and, on a rollback, destroying) the ones that serve now.
    """
    typed = status if isinstance(status, CompressedModelStatus) else CompressedModelStatus.model_validate(status)
    candidate = typed.candidate_variant
    if not candidate:
        return None
    taken = {typed.stable_variant, typed.previous_stable_variant}
    return f"{candidate}-g{generation}" if candidate in taken else candidate


def model_name(model: CompressedModel) -> str:
    """The one Triton model name clients call, whichever variant serves it."""
    return model.spec.serving.model_name or model.metadata.name


def model_pvc_name(model: CompressedModel, owner: Owner) -> str:
    return model.spec.serving.model_repository.pvc or child_name(owner.name, "models")


def route_name(owner: Owner) -> str:
    return owner.name


def inputs_dir(owner: Owner) -> str:
    """Where the spec's relative URIs resolve in the worker Jobs (`--base-dir`): the YAML's folder.

    The user puts the files that sit next to their YAML locally (model, data sets, factory module)
    here on the model volume, so the very same YAML works with `slimserve run` and `kubectl apply`.
    """
    return f"{MODELS_MOUNT}/{owner.name}/inputs"


def compressed_dir(owner: Owner) -> str:
    """The compression output this generation packages and judges against: its own, or the one it reuses."""
    return f"{MODELS_MOUNT}/{owner.name}/gen-{owner.compressed_generation or owner.generation}/compressed"


def repository_dir(owner: Owner, served: Served) -> str:
    """The Triton model repository of one variant of one generation: one model, named `model_name`."""
    return f"{MODELS_MOUNT}/{owner.name}/gen-{served.generation}/repository/{served.variant}"


def repository_uri(model: CompressedModel, served: Served) -> str | None:
    """Where Triton reads one variant of one generation with an s3:// model repository: the model volume's
    layout under `spec.serving.modelRepository.uri` (None: Triton reads the model volume)."""
    uri = model.spec.serving.model_repository.uri
    return f"{uri.rstrip('/')}/gen-{served.generation}/{served.variant}" if uri else None


def served_model_file(model: CompressedModel, owner: Owner, served: Served) -> str:
    return f"{repository_dir(owner, served)}/{model_name(model)}/1/model.onnx"


def labels(owner: Owner, component: str, variant: str | None = None) -> dict[str, str]:
    out = {
        "app.kubernetes.io/name": "slimserve",
        "app.kubernetes.io/instance": owner.name,
        LABEL_COMPONENT: component,
        "app.kubernetes.io/managed-by": "slimserve-operator",
        "app.kubernetes.io/part-of": "slimserve",
        LABEL_MODEL: owner.name,
    }
    if variant is not None:
        out[LABEL_VARIANT] = variant
    return out


def owner_reference(owner: Owner) -> dict[str, Any]:
    """Deleting the CompressedModel garbage-collects every child through this reference."""
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(owner: Owner, name: str, lbls: dict[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": dict(lbls),
        "ownerReferences": [owner_reference(owner)],
    }


def stamp(manifest: Manifest) -> Manifest:
    """Record a hash of the desired manifest, so an apply patches only when something changed."""
    body = {k: v for k, v in manifest.items() if k != "status"}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
    manifest.setdefault("metadata", {}).setdefault("annotations", {})[SPEC_HASH_ANNOTATION] = digest
    return manifest


def _pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": NON_ROOT_UID,
        "runAsGroup": NON_ROOT_UID,
        "fsGroup": NON_ROOT_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _container_security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _resources(cpu: str, memory: str, gpus: int) -> dict[str, Any]:
    limits: dict[str, Any] = {"memory": memory}
    if gpus:
        limits["nvidia.com/gpu"] = str(gpus)
    return {"requests": {"cpu": cpu, "memory": memory}, "limits": limits}


def pvc_claims(model: CompressedModel) -> list[str]:
    """The claims the spec's pvc:// URIs name (`slimserve.storage.pvc_claims`, without the fetchers the
    operator image does not install; a test holds the two equal)."""
    source, data = model.spec.source, model.spec.data
    uris = [source.uri, source.code_uri, data.train, data.calibration, data.evaluation]
    return sorted({pvc_claim(u) for u in uris if u and scheme_of(u) == "pvc"})


def _pull_secrets(model: CompressedModel) -> list[dict[str, str]]:
    return [{"name": name} for name in model.spec.serving.image_pull_secrets]


def _worker_volumes(model: CompressedModel, owner: Owner, read_only_models: bool) -> list[dict[str, Any]]:
    """The model volume, /tmp, the spec file, the storage Secret and every claim a pvc:// URI names."""
    claim: dict[str, Any] = {"claimName": model_pvc_name(model, owner)}
    if read_only_models:
        claim["readOnly"] = True
    out: list[dict[str, Any]] = [
        {"name": "models", "persistentVolumeClaim": claim},
        {"name": "tmp", "emptyDir": {}},
        {"name": "spec", "configMap": {"name": spec_config_map_name(owner)}},
    ]
    if model.spec.storage.secret_name:
        out.append({"name": "storage", "secret": {"secretName": model.spec.storage.secret_name}})
    for i, pvc in enumerate(pvc_claims(model)):
        out.append({"name": f"pvc-{i}", "persistentVolumeClaim": {"claimName": pvc, "readOnly": True}})
    return out


def _worker_mounts(model: CompressedModel, read_only_models: bool) -> list[dict[str, Any]]:
    models: dict[str, Any] = {"name": "models", "mountPath": MODELS_MOUNT}
    if read_only_models:
        models["readOnly"] = True
    out: list[dict[str, Any]] = [
        models,
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "spec", "mountPath": "/spec", "readOnly": True},
    ]
    if model.spec.storage.secret_name:
        out.append({"name": "storage", "mountPath": SECRET_MOUNT_PATH, "readOnly": True})
    for i, pvc in enumerate(pvc_claims(model)):
        out.append({"name": f"pvc-{i}", "mountPath": f"{PVC_MOUNT_ROOT}/{pvc}", "readOnly": True})
    return out


def triton_backend(model: CompressedModel, settings: OperatorSettings) -> str:
    backend = str(getattr(model.spec.serving.backend, "value", model.spec.serving.backend))
    return settings.auto_backend if backend == "auto" else backend


def service_url(owner: Owner, service: str) -> str:
    return f"http://{service}.{owner.namespace}.svc:{HTTP_PORT}"


def prometheus_labels(owner: Owner, model: CompressedModel, variant: str | None) -> str:
    """Label matchers of one side's Triton series, as the chart's PodMonitor labels them: this
    namespace, this CompressedModel, and the variant's pods (or, without a variant, the control's)."""
    pairs = [("namespace", owner.namespace), ("slimserve_dev_model", owner.name), ("model", model_name(model))]
    if variant is None:
        pairs.append(("app_kubernetes_io_component", TRITON_CONTROL))
    else:
        pairs += [("slimserve_dev_variant", variant), ("app_kubernetes_io_component", TRITON)]
    return ",".join(f"{k}={v}" for k, v in pairs)
