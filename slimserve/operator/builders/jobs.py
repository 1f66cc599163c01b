"""The worker Jobs of the pipeline: compression, choice, packaging, evaluation, and the spec they read."""

from __future__ import annotations

import shlex
from typing import Any

import yaml

from slimserve.api import API_GROUP, API_VERSION, KIND, CompressedModel
from slimserve.api.report import COMPRESSION_REPORT, EVALUATION_REPORT
from slimserve.operator.builders.common import (
    BASELINE,
    FINAL_EXIT_CODES,
    LABEL_GENERATION,
    LABEL_VARIANT,
    SPEC_FILE,
    TERMINATION_LOG,
    Manifest,
    Owner,
    Served,
    _container_security_context,
    _metadata,
    _pod_security_context,
    _pull_secrets,
    _resources,
    _worker_mounts,
    _worker_volumes,
    choice_job_name,
    compressed_dir,
    compression_job_name,
    control_name,
    evaluator_job_name,
    inputs_dir,
    labels,
    model_name,
    model_pvc_name,
    packaging_job_name,
    prometheus_labels,
    repository_dir,
    repository_uri,
    served_model_file,
    service_url,
    spec_config_map_name,
    stamp,
    triton_backend,
    triton_name,
)
from slimserve.operator.settings import OperatorSettings, seconds

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
        shlex.quote(f"{compressed_dir(owner)}/{COMPRESSION_REPORT}"),
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
    report = shlex.quote(f"{compressed_dir(owner)}/{COMPRESSION_REPORT}")
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
    args += ["--out", f"/tmp/{EVALUATION_REPORT}", "--summary-file", TERMINATION_LOG]
    container = _worker_container(settings, " ".join(args), _resources(evaluator.cpu, evaluator.memory, 0))
    job = _job(
        model, owner, evaluator_job_name(owner, index), "evaluator", container, settings=settings,
        backoff_limit=1, deadline_s=seconds(evaluator.deadline), read_only_models=True,
    )  # fmt: skip
    job["metadata"]["labels"][LABEL_VARIANT] = candidate
    return stamp(job)
