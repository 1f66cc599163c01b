"""What serves clients: Triton Deployments, Services, autoscalers and the HTTPRoute that splits traffic."""

from __future__ import annotations

import math
import shlex
from typing import Any

from slimserve.api import CompressedModel
from slimserve.operator.builders.common import (
    GRPC_PORT,
    HTTP_PORT,
    LABEL_COMPONENT,
    LABEL_MODEL,
    LABEL_ROLE,
    LABEL_VARIANT,
    METRICS_PORT,
    MODELS_MOUNT,
    PROBE_PERIOD_S,
    SPEC_HASH_ANNOTATION,
    TRITON,
    TRITON_CONTROL,
    Manifest,
    Owner,
    Role,
    Served,
    _container_security_context,
    _metadata,
    _pod_security_context,
    _pull_secrets,
    _resources,
    control_name,
    labels,
    model_name,
    model_pvc_name,
    repository_dir,
    repository_uri,
    route_name,
    service_url,
    stamp,
    triton_name,
)
from slimserve.operator.settings import OperatorSettings, seconds


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period, "failureThreshold": failures}


def triton_s3_script(uri: str) -> str:
    """`tritonserver --model-repository=<uri>` in the form Triton's S3 client reads, from the pod's environment
    (spec.storage.secretName): AWS itself takes `s3://bucket/prefix`; another endpoint (AWS_ENDPOINT_URL_S3 or
    AWS_ENDPOINT_URL, as `slimserve.storage.triton_repository_uri` reads them) goes inside the URI with its port,
    `s3://http://host:port/bucket/prefix`. Its credentials are AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    AWS_SESSION_TOKEN and AWS_DEFAULT_REGION. The flags that follow are the script's arguments ("$@")."""
    path = shlex.quote(uri[len("s3://") :])
    return (
        'endpoint="${AWS_ENDPOINT_URL_S3:-${AWS_ENDPOINT_URL:-}}"; endpoint="${endpoint%/}"; '
        'case "$endpoint" in ""|*://*:[0-9]*) ;; https://*) endpoint="$endpoint:443" ;; *) endpoint="$endpoint:80" ;; '
        f'esac; exec tritonserver --model-repository="s3://${{endpoint:+$endpoint/}}"{path} "$@"'
    )


def build_triton_deployment(
    model: CompressedModel,
    owner: Owner,
    served: Served,
    role: Role,
    settings: OperatorSettings,
    replicas: int | None = None,
) -> Manifest:
    """Triton serving one variant of one generation under the client-facing model name.

    With an s3:// model repository Triton reads `repository_uri` with the credentials of spec.storage.secretName
    (`triton_s3_script`). `replicas` is left out when an autoscaler owns the count. The role label sits on the
    Deployment only (not the pod template or selector), so promoting a canary to stable
    relabels it without restarting its pods. The control's pods get a component of their own.
    """
    serving = model.spec.serving
    name = control_name(owner) if role == "control" else triton_name(owner, served.variant)
    component = TRITON_CONTROL if role == "control" else TRITON
    pod_labels = labels(owner, component, served.variant)
    selector = {LABEL_MODEL: owner.name, LABEL_VARIANT: served.variant, LABEL_COMPONENT: component}
    gpus = serving.gpus if serving.instance_kind == "gpu" or serving.gpus else 0
    served_name = model_name(model)
    flags = [
        "--model-control-mode=explicit",
        f"--load-model={served_name}",
        f"--http-port={HTTP_PORT}",
        f"--grpc-port={GRPC_PORT}",
        f"--metrics-port={METRICS_PORT}",
        "--metrics-config=summary_latencies=true",
        "--allow-metrics=true",
    ]
    uri = repository_uri(model, served)
    container: dict[str, Any] = {
        "name": "triton",
        "image": settings.triton_image,
        "imagePullPolicy": settings.image_pull_policy,
        "args": ["tritonserver", f"--model-repository={repository_dir(owner, served)}", *flags],
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        # Triton answers HTTP only once its models are loaded: the start-up probe covers a long load
        # (a TensorRT engine build), readiness is the served model's own, liveness the server's.
        "startupProbe": _probe("/v2/health/live", PROBE_PERIOD_S,
                               max(1, math.ceil(seconds(serving.startup_timeout) / PROBE_PERIOD_S))),
        "readinessProbe": _probe(f"/v2/models/{served_name}/ready", 5, 3),
        "livenessProbe": _probe("/v2/health/live", PROBE_PERIOD_S, 3),
        # Endpoints are removed asynchronously: keep answering a few seconds after the pod is told to stop.
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", "5"]}}},
        "resources": _resources(serving.cpu, serving.memory, gpus),
        "securityContext": _container_security_context(),
        "volumeMounts": [
            {"name": "models", "mountPath": MODELS_MOUNT, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }  # fmt: skip
    volumes: list[dict[str, Any]] = [
        {"name": "models", "persistentVolumeClaim": {"claimName": model_pvc_name(model, owner), "readOnly": True}},
        {"name": "tmp", "emptyDir": {}},
    ]
    if uri:  # Triton's S3 client downloads the repository into /tmp: no model volume
        container["command"] = ["/bin/sh", "-c", triton_s3_script(uri), "tritonserver"]
        container["args"] = flags
        container["volumeMounts"] = [{"name": "tmp", "mountPath": "/tmp"}]
        volumes = [{"name": "tmp", "emptyDir": {}}]
        if model.spec.storage.secret_name:
            container["envFrom"] = [{"secretRef": {"name": model.spec.storage.secret_name}}]
    pod: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "securityContext": _pod_security_context(),
        "containers": [container],
        "volumes": volumes,
    }
    if serving.node_selector:
        pod["nodeSelector"] = dict(serving.node_selector)
    if serving.tolerations:
        pod["tolerations"] = [t.model_dump(mode="json", exclude_none=True) for t in serving.tolerations]
    if serving.runtime_class_name:
        pod["runtimeClassName"] = serving.runtime_class_name
    if serving.image_pull_secrets:
        pod["imagePullSecrets"] = _pull_secrets(model)
    meta = _metadata(owner, name, {**pod_labels, LABEL_ROLE: role})
    spec: dict[str, Any] = {
        "selector": {"matchLabels": selector},
        "progressDeadlineSeconds": seconds(serving.deploy_deadline),
        # A GPU node rarely has a spare GPU for a surge pod: replace in place there.
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1 if gpus else 0,
                                                                "maxSurge": 0 if gpus else 1}},
        "template": {"metadata": {"labels": pod_labels}, "spec": pod},
    }  # fmt: skip
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
    selector = {LABEL_MODEL: owner.name, LABEL_VARIANT: variant, LABEL_COMPONENT: TRITON}
    return _service(owner, triton_name(owner, variant), selector, labels(owner, TRITON, variant))


def build_control_service(owner: Owner) -> Manifest:
    """The control's Service: the evaluator's only way to it (no route, no shared Service selects it)."""
    selector = {LABEL_MODEL: owner.name, LABEL_COMPONENT: TRITON_CONTROL}
    return _service(owner, control_name(owner), selector, labels(owner, TRITON_CONTROL))


def build_shared_service(owner: Owner) -> Manifest:
    """Traffic split by replica ratio: one Service in front of every serving variant's pods (not the control)."""
    selector = {LABEL_MODEL: owner.name, LABEL_COMPONENT: TRITON}
    return _service(owner, owner.name, selector, labels(owner, TRITON))


def endpoint(model: CompressedModel, owner: Owner, settings: OperatorSettings) -> str:
    """What clients call: `<this>/v2/models/<model_name>/infer`, whichever variant serves."""
    if model.spec.rollout.traffic_split == "gateway":
        gateway = model.spec.rollout.gateway or settings.gateway_name
        namespace = (
            settings.gateway_namespace
            if not model.spec.rollout.gateway and settings.gateway_namespace
            else owner.namespace
        )
        return f"Gateway {namespace}/{gateway}, path /v2/models/{model_name(model)}"
    return f"{service_url(owner, owner.name)}/v2/models/{model_name(model)}"


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


def keda_query(query: str, owner: Owner, variant: str) -> str:
    """The spec's PromQL for one variant's Deployment: {{namespace}}, {{model}} and {{variant}} filled in."""
    for key, value in (("namespace", owner.namespace), ("model", owner.name), ("variant", variant)):
        query = query.replace("{{" + key + "}}", value)
    return query


def build_keda_scaledobject(model: CompressedModel, owner: Owner, variant: str, settings: OperatorSettings) -> Manifest:
    """KEDA ScaledObject on the spec's PromQL, scoped to this variant's pods."""
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
                            "query": keda_query(scaling.keda_query, owner, variant),
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


def autoscaler_refs(owner: Owner, variant: str) -> list[tuple[str, str, str]]:
    """Both kinds an autoscaler of `variant` may be (the spec may have switched): deleting a missing one is a no-op."""
    name = triton_name(owner, variant)
    return [("autoscaling/v2", "HorizontalPodAutoscaler", name), ("keda.sh/v1alpha1", "ScaledObject", name)]


def build_httproute(
    model: CompressedModel,
    owner: Owner,
    stable: str,
    candidate: str | None,
    canary_weight: int,
    settings: OperatorSettings,
) -> Manifest:
    """Gateway API HTTPRoute for the client-facing model's path, split by backend weight.

    Only `/v2/models/<model_name>` is matched, so several CompressedModels share one Gateway.
    """
    parent: dict[str, Any] = {"name": model.spec.rollout.gateway or settings.gateway_name}
    if not model.spec.rollout.gateway and settings.gateway_namespace:
        parent["namespace"] = settings.gateway_namespace
    backends = [{"name": triton_name(owner, stable), "port": HTTP_PORT, "weight": 100 - canary_weight}]
    if candidate is not None and candidate != stable:
        backends.append({"name": triton_name(owner, candidate), "port": HTTP_PORT, "weight": canary_weight})
    path = {"type": "PathPrefix", "value": f"/v2/models/{model_name(model)}"}
    return stamp(
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": _metadata(owner, route_name(owner), labels(owner, "route")),
            "spec": {"parentRefs": [parent], "rules": [{"matches": [{"path": path}], "backendRefs": backends}]},
        }
    )


def split_replicas(total: int, canary_weight: int) -> tuple[int, int]:
    """(stable, canary) replicas approximating the weight; the canary gets one pod once weight > 0,
    and the stable keeps one until the promotion."""
    if canary_weight <= 0:
        return total, 0
    canary = min(total - 1, max(1, math.ceil(total * canary_weight / 100)))
    return total - canary, canary


def route_to_stable_patch(stable_service: str, served_model: str) -> Manifest:
    """A merge patch sending all of the route's traffic to the stable when the spec cannot be read
    (an invalid spec mid-rollout); the next valid generation re-applies the whole route."""
    path = {"type": "PathPrefix", "value": f"/v2/models/{served_model}"}
    rule = {"matches": [{"path": path}], "backendRefs": [{"name": stable_service, "port": HTTP_PORT, "weight": 100}]}
    return {"metadata": {"annotations": {SPEC_HASH_ANNOTATION: None}}, "spec": {"rules": [rule]}}
