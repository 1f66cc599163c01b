"""Pure builders: a CompressedModel (plus settings) in, one Kubernetes manifest dict out.

No I/O here. Handlers adopt and apply what these return; tests compare them with golden files
and validate them against the upstream schemas. Names are deterministic (never generateName),
so re-running a builder after an operator restart names the same child.
"""

from __future__ import annotations

import hashlib
import json
import math
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import yaml

from slimserve.api import API_GROUP, API_VERSION, KIND, CompressedModel
from slimserve.operator.settings import ANNOTATION_PREFIX, OperatorSettings

Manifest = dict[str, Any]
# `previous`: the stable variant before the last promotion, kept at 0 replicas for a manual way back.
Role = Literal["stable", "canary", "previous"]

SPEC_FILE: Final = "/spec/compressedmodel.yaml"
MODELS_MOUNT: Final = "/models"
HTTP_PORT: Final = 8000
GRPC_PORT: Final = 8001
METRICS_PORT: Final = 8002
SPEC_HASH_ANNOTATION: Final = f"{ANNOTATION_PREFIX}/spec-hash"
LABEL_MODEL: Final = f"{API_GROUP}/model"
LABEL_VARIANT: Final = f"{API_GROUP}/variant"
LABEL_ROLE: Final = f"{API_GROUP}/role"
LABEL_GENERATION: Final = f"{API_GROUP}/generation"
REPORT_KEY: Final = "report.json"
# Exit codes of `slimserve evaluate` that carry a decision (rolled back, inconclusive): not retried.
DECISION_EXIT_CODES: Final = [3, 4]
NON_ROOT_UID: Final = 1000

# Printed by the compression Job into its termination message: the operator reads the compact
# summary of report.json from the Pod status, without mounting the model volume itself.
SUMMARY_SCRIPT: Final = (
    'import json,sys;r=json.load(open(sys.argv[1]));'
    'k=("name","compressionRatio","accuracyDrop","speedup","throughputRps","latencyMsP99");'
    'f=lambda x:round(x,4) if isinstance(x,float) else x;'
    's={"variants":[{a:f(v.get(a)) for a in k} for v in r["variants"]],'
    '"chosen":(r.get("search") or {}).get("chosen")};'
    'print(json.dumps(s,separators=(",",":")))'
)


@dataclass(frozen=True)
class Owner:
    """The CompressedModel object a child belongs to (identity, not spec)."""

    name: str
    namespace: str
    uid: str
    generation: int

    @classmethod
    def from_body(cls, body: Any) -> Owner:
        meta = body["metadata"]
        return cls(
            name=meta["name"],
            namespace=meta.get("namespace") or "default",
            uid=meta.get("uid") or "",
            generation=int(meta.get("generation") or 1),
        )


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


def compression_job_name(owner: Owner) -> str:
    return child_name(owner.name, "compress", f"g{owner.generation}")


def packaging_job_name(owner: Owner) -> str:
    return child_name(owner.name, "package", f"g{owner.generation}")


def triton_name(owner: Owner, variant: str) -> str:
    """Deployment, Service and autoscaler of one variant share this name."""
    return child_name(owner.name, variant)


def canary_variant(status: Mapping[str, Any], generation: int) -> str | None:
    """The name the status's candidate serves under: Triton model, Deployment, Service, autoscaler.

    Its own name, unless that name is already taken by the stable variant or by the stable one
    parked at the last promotion: rolling out `int8` again after a spec change usually means new
    weights, so it serves as `int8-g<generation>` with children and model files of its own instead
    of taking over (and, on a rollback, destroying) the ones that serve now.
    """
    candidate = status.get("candidateVariant")
    if not candidate:
        return None
    taken = {status.get("stableVariant"), status.get("previousStableVariant")}
    return f"{candidate}-g{generation}" if candidate in taken else str(candidate)


def evaluator_job_name(owner: Owner, step: int, attempt: int = 0) -> str:
    return child_name(owner.name, "eval", f"g{owner.generation}", f"s{step}", f"a{attempt}" if attempt else "")


def report_config_map_name(owner: Owner, step: int, attempt: int = 0) -> str:
    return child_name(owner.name, "report", f"g{owner.generation}", f"s{step}", f"a{attempt}" if attempt else "")


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
    return f"{MODELS_MOUNT}/{owner.name}/gen-{owner.generation}/compressed"


def repository_location(model: CompressedModel, owner: Owner) -> str:
    """Where Triton reads models: an s3:// URI (read natively by Triton) or a path on the PVC."""
    return model.spec.serving.model_repository.uri or f"{MODELS_MOUNT}/{owner.name}/repository"


def labels(owner: Owner, component: str, variant: str | None = None) -> dict[str, str]:
    out = {
        "app.kubernetes.io/name": "slimserve",
        "app.kubernetes.io/instance": owner.name,
        "app.kubernetes.io/component": component,
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
        "name": name, "namespace": owner.namespace, "labels": dict(lbls), "ownerReferences": [owner_reference(owner)]
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


def _volumes(model: CompressedModel, owner: Owner, with_spec: bool) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {"name": "models", "persistentVolumeClaim": {"claimName": model_pvc_name(model, owner)}},
        {"name": "tmp", "emptyDir": {}},
    ]
    if with_spec:
        out.append({"name": "spec", "configMap": {"name": spec_config_map_name(owner)}})
    return out


def _mounts(with_spec: bool) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {"name": "models", "mountPath": MODELS_MOUNT},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if with_spec:
        out.append({"name": "spec", "mountPath": "/spec", "readOnly": True})
    return out


# ---------------------------------------------------------------------------------------------
# the pipeline's children
# ---------------------------------------------------------------------------------------------


def spec_document(model: CompressedModel) -> dict[str, Any]:
    """The CR as the YAML file the worker reads (`slimserve compress FILE.yaml`), spec only."""
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "metadata": {"name": model.metadata.name},
        "spec": model.spec.model_dump(mode="json", by_alias=True, exclude_none=True),
    }


def build_spec_config_map(model: CompressedModel, owner: Owner) -> Manifest:
    """The spec file mounted at /spec in every worker Job."""
    return stamp(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _metadata(owner, spec_config_map_name(owner), labels(owner, "spec")),
            "data": {"compressedmodel.yaml": yaml.safe_dump(spec_document(model), sort_keys=False)},
        }
    )


def build_model_repository_pvc(model: CompressedModel, owner: Owner, settings: OperatorSettings) -> Manifest:
    """The volume holding compressed variants and the Triton model repository."""
    spec: dict[str, Any] = {
        "accessModes": [settings.model_access_mode],
        "resources": {"requests": {"storage": model.spec.serving.model_repository.size}},
    }
    if settings.model_storage_class:
        spec["storageClassName"] = settings.model_storage_class
    return stamp(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": _metadata(owner, model_pvc_name(model, owner), labels(owner, "model-repository")),
            "spec": spec,
        }
    )


def _job(
    owner: Owner,
    name: str,
    component: str,
    container: dict[str, Any],
    volumes: list[dict[str, Any]],
    *,
    backoff_limit: int,
    service_account: str | None = None,
    node_selector: dict[str, str] | None = None,
    tolerations: list[dict[str, Any]] | None = None,
    pod_failure_policy: dict[str, Any] | None = None,
) -> Manifest:
    lbls = {**labels(owner, component), LABEL_GENERATION: str(owner.generation)}
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "securityContext": _pod_security_context(),
        "containers": [container],
        "volumes": volumes,
    }
    if service_account:
        pod["serviceAccountName"] = service_account
    else:
        pod["automountServiceAccountToken"] = False
    if node_selector:
        pod["nodeSelector"] = dict(node_selector)
    if tolerations:
        pod["tolerations"] = tolerations
    template = {"metadata": {"labels": dict(lbls)}, "spec": pod}
    spec: dict[str, Any] = {"backoffLimit": backoff_limit, "template": template}
    if pod_failure_policy:
        spec["podFailurePolicy"] = pod_failure_policy
    return stamp({"apiVersion": "batch/v1", "kind": "Job", "metadata": _metadata(owner, name, lbls), "spec": spec})


def _worker_container(settings: OperatorSettings, script: str, resources: dict[str, Any]) -> dict[str, Any]:
    """The worker image running one shell line (so the compression Job can chain its summary)."""
    return {
        "name": "worker",
        "image": settings.worker_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["/bin/sh", "-c"],
        "args": [script],
        "env": [{"name": "HOME", "value": "/tmp"}, {"name": "PYTHONUNBUFFERED", "value": "1"}],
        "resources": resources,
        "securityContext": _container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def build_compression_job(model: CompressedModel, owner: Owner, settings: OperatorSettings) -> Manifest:
    """`slimserve compress` on the nodes the spec asks for (GPU limits only when gpus > 0).

    The container prints a compact summary of report.json as its termination message; the
    operator reads it from the Pod to choose the candidate and fill the status evidence.
    """
    job = model.spec.compression.job
    out = compressed_dir(owner)
    script = (
        "set -e; "
        f"slimserve compress {SPEC_FILE} --base-dir {shlex.quote(inputs_dir(owner))} --out {shlex.quote(out)}; "
        f"python -c {shlex.quote(SUMMARY_SCRIPT)} {shlex.quote(out + '/report.json')} > /dev/termination-log"
    )
    container = _worker_container(settings, script, _resources(job.cpu, job.memory, job.gpus))
    container["volumeMounts"] = _mounts(with_spec=True)
    return _job(
        owner,
        compression_job_name(owner),
        "compression",
        container,
        _volumes(model, owner, with_spec=True),
        backoff_limit=settings.job_backoff_limit,
        node_selector=job.node_selector,
        tolerations=[t.model_dump(mode="json", exclude_none=True) for t in job.tolerations],
    )


def build_packaging_job(
    model: CompressedModel, owner: Owner, settings: OperatorSettings, candidate: str, model_name: str | None = None
) -> Manifest:
    """`slimserve package`: the baseline and the candidate into the Triton model repository (onnxruntime).

    Only what will serve is written, as Triton model `model_name` when the candidate's own name is
    taken (`canary_variant`): the repository is shared by every generation, and the files of the
    variants serving or parked there must not change under them.
    """
    wanted = candidate if model_name in (None, candidate) else f"{candidate}={model_name}"
    script = (
        f"slimserve package {SPEC_FILE} --report {shlex.quote(compressed_dir(owner) + '/report.json')} "
        f"--repository {shlex.quote(repository_location(model, owner))} --backend onnxruntime "
        f"--variants {shlex.quote(wanted)}"
    )
    container = _worker_container(settings, script, _resources("500m", "1Gi", 0))
    container["volumeMounts"] = _mounts(with_spec=True)
    return _job(
        owner,
        packaging_job_name(owner),
        "packaging",
        container,
        _volumes(model, owner, with_spec=True),
        backoff_limit=settings.job_backoff_limit,
    )


def build_triton_deployment(
    model: CompressedModel, owner: Owner, variant: str, role: Role, settings: OperatorSettings,
    replicas: int | None = None,
) -> Manifest:
    """Triton serving one variant with the native onnxruntime backend.

    `replicas` is left out when an autoscaler owns the count. The role label sits on the
    Deployment only (not the pod template or selector), so promoting a canary to stable
    relabels it without restarting its pods.
    """
    serving = model.spec.serving
    name = triton_name(owner, variant)
    pod_labels = labels(owner, "triton", variant)
    selector = {LABEL_MODEL: owner.name, LABEL_VARIANT: variant, "app.kubernetes.io/component": "triton"}
    gpus = serving.gpus if serving.instance_kind == "gpu" or serving.gpus else 0
    repo = repository_location(model, owner)
    container: dict[str, Any] = {
        "name": "triton",
        "image": settings.triton_image,
        "imagePullPolicy": settings.image_pull_policy,
        "args": [
            "tritonserver",
            f"--model-repository={repo}",
            "--model-control-mode=explicit",
            f"--load-model={variant}",
            f"--http-port={HTTP_PORT}",
            f"--grpc-port={GRPC_PORT}",
            f"--metrics-port={METRICS_PORT}",
            "--metrics-config=summary_latencies=true",
            "--allow-metrics=true",
        ],
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        "readinessProbe": {
            "httpGet": {"path": "/v2/health/ready", "port": "http"},
            "periodSeconds": 5,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": "/v2/health/live", "port": "http"},
            "initialDelaySeconds": 15,
            "periodSeconds": 10,
        },
        "resources": _resources(serving.cpu, serving.memory, gpus),
        "securityContext": _container_security_context(),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}]
    if not repo.startswith("s3://"):  # Triton reads s3:// itself; a path needs the PVC, read-only
        container["volumeMounts"].insert(0, {"name": "models", "mountPath": MODELS_MOUNT, "readOnly": True})
        claim = {"claimName": model_pvc_name(model, owner), "readOnly": True}
        volumes.insert(0, {"name": "models", "persistentVolumeClaim": claim})
    meta = _metadata(owner, name, {**pod_labels, LABEL_ROLE: role})
    spec: dict[str, Any] = {
        "selector": {"matchLabels": selector},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        "template": {
            "metadata": {
                "labels": pod_labels,
                "annotations": {
                    "prometheus.io/scrape": "true",
                    "prometheus.io/port": str(METRICS_PORT),
                    "prometheus.io/path": "/metrics",
                },
            },
            "spec": {
                "automountServiceAccountToken": False,
                "securityContext": _pod_security_context(),
                "containers": [container],
                "volumes": volumes,
            },
        },
    }
    if replicas is not None:
        spec["replicas"] = replicas
    return stamp({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": spec})


def _service(owner: Owner, name: str, selector: dict[str, str], lbls: dict[str, str]) -> Manifest:
    return stamp(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _metadata(owner, name, lbls),
            "spec": {
                "type": "ClusterIP",
                "selector": selector,
                "ports": [
                    {"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"},
                    {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP"},
                    {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"},
                ],
            },
        }
    )


def build_triton_service(owner: Owner, variant: str) -> Manifest:
    """One Service per variant: the HTTPRoute's backends and the evaluator's URLs."""
    selector = {LABEL_MODEL: owner.name, LABEL_VARIANT: variant, "app.kubernetes.io/component": "triton"}
    return _service(owner, triton_name(owner, variant), selector, labels(owner, "triton", variant))


def build_shared_service(owner: Owner) -> Manifest:
    """Traffic split by replica ratio: one Service in front of every variant's pods."""
    selector = {LABEL_MODEL: owner.name, "app.kubernetes.io/component": "triton"}
    return _service(owner, owner.name, selector, labels(owner, "triton"))


def service_url(owner: Owner, variant: str) -> str:
    return f"http://{triton_name(owner, variant)}.{owner.namespace}.svc:{HTTP_PORT}"


def build_hpa(model: CompressedModel, owner: Owner, variant: str) -> Manifest:
    """autoscaling/v2 on CPU utilization (the default autoscaler)."""
    scaling = model.spec.serving.autoscaling
    name = triton_name(owner, variant)
    return stamp(
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": _metadata(owner, name, labels(owner, "autoscaler", variant)),
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                "minReplicas": scaling.min_replicas,
                "maxReplicas": scaling.max_replicas,
                "metrics": [
                    {
                        "type": "Resource",
                        "resource": {
                            "name": "cpu",
                            "target": {"type": "Utilization", "averageUtilization": scaling.target_cpu_utilization},
                        },
                    }
                ],
            },
        }
    )


def build_keda_scaledobject(
    model: CompressedModel, owner: Owner, variant: str, settings: OperatorSettings
) -> Manifest:
    """KEDA ScaledObject on the spec's PromQL (queue time or requests per second)."""
    scaling = model.spec.serving.autoscaling
    name = triton_name(owner, variant)
    assert scaling.keda_query is not None and scaling.keda_threshold is not None
    return stamp(
        {
            "apiVersion": "keda.sh/v1alpha1",
            "kind": "ScaledObject",
            "metadata": _metadata(owner, name, labels(owner, "autoscaler", variant)),
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                "minReplicaCount": scaling.min_replicas,
                "maxReplicaCount": scaling.max_replicas,
                "triggers": [
                    {
                        "type": "prometheus",
                        "metadata": {
                            "serverAddress": settings.prometheus_url,
                            "query": scaling.keda_query,
                            "threshold": f"{scaling.keda_threshold:g}",
                        },
                    }
                ],
            },
        }
    )


def build_autoscaler(model: CompressedModel, owner: Owner, variant: str, settings: OperatorSettings) -> Manifest:
    if model.spec.serving.autoscaling.keda_query:
        return build_keda_scaledobject(model, owner, variant, settings)
    return build_hpa(model, owner, variant)


def build_httproute(
    model: CompressedModel, owner: Owner, stable: str, candidate: str | None, canary_weight: int,
    settings: OperatorSettings,
) -> Manifest:
    """Gateway API HTTPRoute splitting traffic by backend weight (canary percent to the candidate)."""
    parent: dict[str, Any] = {"name": model.spec.rollout.gateway or settings.gateway_name}
    if not model.spec.rollout.gateway and settings.gateway_namespace:
        parent["namespace"] = settings.gateway_namespace
    backends = [
        {"name": triton_name(owner, stable), "port": HTTP_PORT, "weight": 100 - canary_weight}
    ]
    if candidate is not None and candidate != stable:
        backends.append({"name": triton_name(owner, candidate), "port": HTTP_PORT, "weight": canary_weight})
    return stamp(
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": _metadata(owner, route_name(owner), labels(owner, "route")),
            "spec": {
                "parentRefs": [parent],
                "rules": [
                    {
                        "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                        "backendRefs": backends,
                    }
                ],
            },
        }
    )


def split_replicas(total: int, canary_weight: int) -> tuple[int, int]:
    """(stable, canary) replicas approximating the weight; the canary gets one pod once weight > 0."""
    canary = 0 if canary_weight <= 0 else min(total, max(1, math.ceil(total * canary_weight / 100)))
    stable = total - canary
    return stable, canary


def build_report_config_map(owner: Owner, step: int, attempt: int = 0) -> Manifest:
    """Where the evaluator Job of one canary step writes its full EvaluationReport."""
    lbls = {**labels(owner, "report"), LABEL_GENERATION: str(owner.generation)}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(owner, report_config_map_name(owner, step, attempt), lbls),
        "data": {},
    }


def build_evaluator_job(
    model: CompressedModel, owner: Owner, step: int, stable: str, candidate: str, settings: OperatorSettings,
    attempt: int = 0,
) -> Manifest:
    """One canary step: served accuracy, Locust, PromQL and the gate; the report lands in a ConfigMap.

    Exit codes 3 (rolled back) and 4 (inconclusive) are decisions, not crashes: the pod failure
    policy ends the Job at once instead of retrying it.
    """
    weight = model.spec.rollout.steps[step]
    report = report_config_map_name(owner, step, attempt)
    script = " ".join(
            [
                "slimserve evaluate",
                SPEC_FILE,
                "--base-dir", shlex.quote(inputs_dir(owner)),
                "--baseline-url", shlex.quote(service_url(owner, stable)),
                "--candidate-url", shlex.quote(service_url(owner, candidate)),
                "--baseline-model", shlex.quote(stable),
                "--candidate-model", shlex.quote(candidate),
                "--weight", str(weight),
                "--prometheus-url", shlex.quote(settings.prometheus_url),
                "--out", "/tmp/report.json",
                "--configmap", f"{owner.namespace}/{report}",
            ]
    )
    container = _worker_container(settings, script, _resources("1", "1Gi", 0))
    # The evaluation data set is read from the same volume the compression Job read it from.
    container["volumeMounts"] = [{**m, "readOnly": True} if m["name"] == "models" else m for m in _mounts(True)]
    volumes = _volumes(model, owner, with_spec=True)
    job = _job(
        owner,
        evaluator_job_name(owner, step, attempt),
        "evaluator",
        container,
        volumes,
        backoff_limit=1,
        service_account=settings.worker_service_account,
        pod_failure_policy={
            "rules": [
                {
                    "action": "FailJob",
                    "onExitCodes": {"containerName": "worker", "operator": "In", "values": DECISION_EXIT_CODES},
                }
            ]
        },
    )
    job["metadata"]["labels"][LABEL_VARIANT] = candidate
    return stamp(job)
