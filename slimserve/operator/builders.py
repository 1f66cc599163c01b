"""Pure builders: a CompressedModel (plus settings) in, one Kubernetes manifest dict out.

No I/O here. Handlers adopt and apply what these return; tests compare them with golden files
and validate them against the upstream schemas. Names are deterministic (never generateName),
so re-running a builder after an operator restart names the same child.

Every variant serves under one client-facing Triton model name (`model_name`), from a model
repository of its own generation (`/models/<cr>/gen-<g>/repository/<variant>`): a later generation
writes next to the files a serving stable reads, never over them, and a same-name candidate of a new
generation is a new pod template, so its pods roll and load the new weights.
With `spec.serving.modelRepository.uri` the packaging Job also uploads each repository to
`<uri>/gen-<g>/<variant>/` and Triton reads it from there (no model volume in its pods).
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
from slimserve.operator.settings import ANNOTATION_PREFIX, OperatorSettings, seconds
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


def canary_variant(status: Mapping[str, Any], generation: int) -> str | None:
    """The name the status's candidate serves under: Deployment, Service, autoscaler, repository folder.

    Its own name, unless that name is already taken by the stable variant or by the stable one
    parked at the last promotion: rolling out `int8` again after a spec change usually means new
    weights, so it serves as `int8-g<generation>` with children of its own instead of taking over
    (and, on a rollback, destroying) the ones that serve now.
    """
    candidate = status.get("candidateVariant")
    if not candidate:
        return None
    taken = {status.get("stableVariant"), status.get("previousStableVariant")}
    return f"{candidate}-g{generation}" if candidate in taken else str(candidate)


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


# ---------------------------------------------------------------------------------------------
# the pipeline's children
# ---------------------------------------------------------------------------------------------


def spec_document(model: CompressedModel) -> dict[str, Any]:
    """The CR as the YAML file the worker reads (`slimserve compress FILE.yaml`), spec only.

    Without rollout.webhooks: the operator calls them, never a worker, and their URLs (a Slack one holds its
    token) stay out of the worker pods.
    """
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "metadata": {"name": model.metadata.name},
        "spec": model.spec.model_dump(
            mode="json", by_alias=True, exclude_none=True, exclude={"rollout": {"webhooks"}}
        ),  # fmt: skip
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
    """The volume holding compressed variants and the Triton model repositories."""
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
    model: CompressedModel,
    owner: Owner,
    name: str,
    component: str,
    container: dict[str, Any],
    *,
    settings: OperatorSettings,
    backoff_limit: int,
    deadline_s: int,
    read_only_models: bool = False,
    node_selector: dict[str, str] | None = None,
    tolerations: list[dict[str, Any]] | None = None,
) -> Manifest:
    """A worker Job: no API access (its results leave through the termination message), a deadline,
    no retry of an exit code that cannot change, and garbage collection once finished."""
    container["volumeMounts"] = _worker_mounts(model, read_only_models)
    if model.spec.storage.secret_name:
        container["envFrom"] = [{"secretRef": {"name": model.spec.storage.secret_name}}]
    lbls = {**labels(owner, component), LABEL_GENERATION: str(owner.generation)}
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "securityContext": _pod_security_context(),
        "containers": [container],
        "volumes": _worker_volumes(model, owner, read_only_models),
    }
    if node_selector:
        pod["nodeSelector"] = dict(node_selector)
    if tolerations:
        pod["tolerations"] = tolerations
    if model.spec.serving.image_pull_secrets:
        pod["imagePullSecrets"] = _pull_secrets(model)
    spec: dict[str, Any] = {
        "backoffLimit": backoff_limit,
        "activeDeadlineSeconds": deadline_s,
        "ttlSecondsAfterFinished": settings.job_ttl_seconds_after_finished,
        "podFailurePolicy": {
            "rules": [{
                "action": "FailJob",
                "onExitCodes": {"containerName": "worker", "operator": "In", "values": FINAL_EXIT_CODES},
            }]
        },
        "template": {"metadata": {"labels": dict(lbls)}, "spec": pod},
    }  # fmt: skip
    return stamp({"apiVersion": "batch/v1", "kind": "Job", "metadata": _metadata(owner, name, lbls), "spec": spec})


def _worker_container(settings: OperatorSettings, script: str, resources: dict[str, Any]) -> dict[str, Any]:
    """The worker image running one shell line (so a Job can chain its summary into the termination log)."""
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


def _choice_command(model: CompressedModel, owner: Owner, stable: Served | None, stable_name: str | None) -> str:
    """`python -m slimserve.api.choice` on this generation's compression report, into the termination message."""
    choice = [
        "python -m slimserve.api.choice",
        SPEC_FILE,
        "--report",
        shlex.quote(compressed_dir(owner) + "/report.json"),
    ]
    if stable is not None:
        choice += [
            "--stable-onnx",
            shlex.quote(served_model_file(model, owner, stable)),
            "--stable",
            shlex.quote(stable_name or stable.variant),
        ]
    return f"{' '.join(choice)} > {TERMINATION_LOG}"


def build_compression_job(
    model: CompressedModel,
    owner: Owner,
    settings: OperatorSettings,
    stable: Served | None = None,
    stable_name: str | None = None,
) -> Manifest:
    """`slimserve compress`, then the candidate choice (`slimserve.api.choice`) into the termination message.

    `stable` is the variant serving now when it is not the baseline: auto only offers a variant that
    beats it, judged on the model file it serves.
    """
    job = model.spec.compression.job
    script = (
        "set -e; "
        f"slimserve compress {SPEC_FILE} --base-dir {shlex.quote(inputs_dir(owner))} "
        f"--out {shlex.quote(compressed_dir(owner))}; {_choice_command(model, owner, stable, stable_name)}"
    )
    container = _worker_container(settings, script, _resources(job.cpu, job.memory, job.gpus))
    return _job(
        model, owner, compression_job_name(owner), "compression", container, settings=settings,
        backoff_limit=settings.job_backoff_limit, deadline_s=seconds(job.deadline),
        node_selector=job.node_selector,
        tolerations=[t.model_dump(mode="json", exclude_none=True) for t in job.tolerations],
    )  # fmt: skip


def build_choice_job(
    model: CompressedModel,
    owner: Owner,
    settings: OperatorSettings,
    stable: Served | None = None,
    stable_name: str | None = None,
) -> Manifest:
    """Only the candidate choice, on the compression output this generation reuses (`owner.compressed_generation`).

    The choice depends on more than that output (spec.gates.maxAccuracyDrop, spec.rollout.candidate, the
    stable serving now), so it is made again: a CPU-only pod that reads one report, no compression.
    """
    container = _worker_container(settings, "set -e; " + _choice_command(model, owner, stable, stable_name),
                                  _resources("500m", "1Gi", 0))  # fmt: skip
    return _job(
        model, owner, choice_job_name(owner), "choice", container, settings=settings,
        backoff_limit=settings.job_backoff_limit, deadline_s=settings.packaging_deadline_seconds,
        read_only_models=True,
    )  # fmt: skip


def triton_backend(model: CompressedModel, settings: OperatorSettings) -> str:
    backend = str(getattr(model.spec.serving.backend, "value", model.spec.serving.backend))
    return settings.auto_backend if backend == "auto" else backend


def build_packaging_job(
    model: CompressedModel,
    owner: Owner,
    settings: OperatorSettings,
    candidate: str,
    served: str,
    with_baseline: bool,
) -> Manifest:
    """`slimserve package`: the candidate (and, in a model's first generation, the baseline as the stable)
    into repositories of their own under this generation, each serving as the client-facing model name;
    uploaded to `repository_uri` too with an s3:// model repository (credentials: spec.storage.secretName)."""
    name = model_name(model)
    report = shlex.quote(compressed_dir(owner) + "/report.json")
    backend = triton_backend(model, settings)
    wanted = [(BASELINE, BASELINE)] if with_baseline else []
    wanted.append((candidate, served))

    def package(source: str, repository: str) -> str:
        return (f"slimserve package {SPEC_FILE} --report {report} --repository {shlex.quote(repository)} "
                f"--backend {backend} --variants {shlex.quote(f'{source}={name}')}")  # fmt: skip

    commands = []
    for source, variant in wanted:
        one = Served(variant, owner.generation)
        commands.append(package(source, repository_dir(owner, one)))
        uri = repository_uri(model, one)
        if uri:  # the volume's copy stays: a later generation's choice reads the stable's model file there
            prefix, generation, folder = uri.rsplit("/", 2)
            commands.append(f"{package(source, prefix)} --repository-version {shlex.quote(f'{generation}/{folder}')}")
    script = "set -e; " + "; ".join(commands)
    container = _worker_container(settings, script, _resources("500m", "1Gi", 0))
    return _job(
        model, owner, packaging_job_name(owner), "packaging", container, settings=settings,
        backoff_limit=settings.job_backoff_limit, deadline_s=settings.packaging_deadline_seconds,
    )  # fmt: skip


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


def service_url(owner: Owner, service: str) -> str:
    return f"http://{service}.{owner.namespace}.svc:{HTTP_PORT}"


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


def prometheus_labels(owner: Owner, model: CompressedModel, variant: str | None) -> str:
    """Label matchers of one side's Triton series, as the chart's PodMonitor labels them: this
    namespace, this CompressedModel, and the variant's pods (or, without a variant, the control's)."""
    pairs = [("namespace", owner.namespace), ("slimserve_dev_model", owner.name), ("model", model_name(model))]
    if variant is None:
        pairs.append(("app_kubernetes_io_component", TRITON_CONTROL))
    else:
        pairs += [("slimserve_dev_variant", variant), ("app_kubernetes_io_component", TRITON)]
    return ",".join(f"{k}={v}" for k, v in pairs)


def build_evaluator_job(
    model: CompressedModel,
    owner: Owner,
    index: int,
    weight: int,
    stable: str,
    candidate: str,
    settings: OperatorSettings,
) -> Manifest:
    """Judge one weight: 0 is the served quality check against this generation's uncompressed baseline
    (run in-process); a canary weight sends that share of the load to the candidate and to the control,
    the rest to the stable. The step's verdict leaves as the termination message (no API access needed).
    """
    evaluator = model.spec.rollout.evaluator
    args = [
        "slimserve evaluate", SPEC_FILE,
        "--base-dir", shlex.quote(inputs_dir(owner)),
        "--weight", str(weight),
        "--model", shlex.quote(model_name(model)),
        "--candidate-url", shlex.quote(service_url(owner, triton_name(owner, candidate))),
    ]  # fmt: skip
    if weight == 0:
        args += ["--reference-onnx", shlex.quote(compressed_dir(owner) + "/baseline.onnx")]
    else:
        args += [
            "--control-url", shlex.quote(service_url(owner, control_name(owner))),
            "--stable-url", shlex.quote(service_url(owner, triton_name(owner, stable))),
            "--candidate-labels", shlex.quote(prometheus_labels(owner, model, candidate)),
            "--control-labels", shlex.quote(prometheus_labels(owner, model, None)),
            "--prometheus-url", shlex.quote(settings.prometheus_url),
            "--scrape-interval", shlex.quote(settings.scrape_interval),
        ]  # fmt: skip
    args += ["--out", "/tmp/report.json", "--summary-file", TERMINATION_LOG]
    container = _worker_container(settings, " ".join(args), _resources(evaluator.cpu, evaluator.memory, 0))
    job = _job(
        model, owner, evaluator_job_name(owner, index), "evaluator", container, settings=settings,
        backoff_limit=1, deadline_s=seconds(evaluator.deadline), read_only_models=True,
    )  # fmt: skip
    job["metadata"]["labels"][LABEL_VARIANT] = candidate
    return stamp(job)


def route_to_stable_patch(stable_service: str, served_model: str) -> Manifest:
    """A merge patch sending all of the route's traffic to the stable when the spec cannot be read
    (an invalid spec mid-rollout); the next valid generation re-applies the whole route."""
    path = {"type": "PathPrefix", "value": f"/v2/models/{served_model}"}
    rule = {"matches": [{"path": path}], "backendRefs": [{"name": stable_service, "port": HTTP_PORT, "weight": 100}]}
    return {"metadata": {"annotations": {SPEC_HASH_ANNOTATION: None}}, "spec": {"rules": [rule]}}
