"""Thin kopf handlers: read the CR, observe the children its phase waits on, apply the plan.

One `reconcile` runs on create, update and resume (so a new generation restarts at once) and a
per-object daemon repeats it every `reconcile_interval_seconds` (level-based: Job and Deployment
state is read, never waited for). Both share a per-object lock and the status last written, so
they never act on an older status than the one already stored. The decisions themselves live in
the pure `slimserve.operator.reconcile`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import kopf

from slimserve.api import API_GROUP, API_VERSION, KIND, PLURAL, Phase, parse_compressed_model
from slimserve.api.status import TERMINAL_PHASES, now_rfc3339
from slimserve.errors import InvalidInput
from slimserve.operator import builders as b
from slimserve.operator import metrics
from slimserve.operator.kube import APIError, KubeApi
from slimserve.operator.reconcile import (
    BASELINE,
    JobState,
    Observed,
    deployment_ready,
    invalid_spec_status,
    parse_report,
    parse_summary,
    plan,
)
from slimserve.operator.settings import ANNOTATION_PREFIX, FINALIZER, OperatorSettings

TEMPORARY_DELAY_SECONDS = 5.0


@kopf.on.startup()
async def configure(
    settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any
) -> None:
    """Own finalizer and annotation prefix, watch timeouts, the API client and the metrics port."""
    ops: OperatorSettings = memo.get("operator_settings") or OperatorSettings()
    memo["operator_settings"] = ops
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    settings.watching.server_timeout = ops.watch_server_timeout_seconds
    settings.watching.client_timeout = ops.watch_server_timeout_seconds + 1
    settings.watching.connect_timeout = ops.connect_timeout_seconds
    settings.networking.error_backoffs = [1, 2, 5, 10]
    if not ops.scanning:
        settings.scanning.disabled = True
    settings.posting.level = logging.INFO
    memo["kube"] = KubeApi(settings)
    if ops.metrics_port:
        metrics.serve(ops.metrics_port)
        logger.info("metrics on :%d/metrics", ops.metrics_port)


def _state(memo: kopf.Memo) -> tuple[asyncio.Lock, dict[str, Any]]:
    """The per-object lock and cache (memo is per object, copied from the operator's memo)."""
    if "lock" not in memo:
        memo["lock"] = asyncio.Lock()
        memo["written"] = {}
    return memo["lock"], memo["written"]


async def observe(
    kube: KubeApi, owner: b.Owner, status: dict[str, Any], logger: Any
) -> Observed:
    """Read only the children the current phase waits on (few requests per pass)."""
    phase = status.get("phase")
    ns = owner.namespace
    if status.get("observedGeneration") != owner.generation or phase in (None, *[p.value for p in TERMINAL_PHASES]):
        return Observed()
    if phase == Phase.compressing.value:
        name = b.compression_job_name(owner)
        job = await kube.get("batch/v1", "Job", ns, name, logger)
        state = JobState.from_job(job) if job is not None else None
        summary = None
        if state is not None and state.succeeded:
            pods = await kube.list("v1", "Pod", ns, {"job-name": name}, logger)
            for pod in pods:
                for cs in (pod.get("status") or {}).get("containerStatuses") or []:
                    terminated = (cs.get("state") or {}).get("terminated") or {}
                    if terminated.get("exitCode") == 0:
                        summary = parse_summary(terminated.get("message")) or summary
        return Observed(compression_job=state, compression_summary=summary)
    if phase == Phase.packaging.value:
        job = await kube.get("batch/v1", "Job", ns, b.packaging_job_name(owner), logger)
        return Observed(packaging_job=JobState.from_job(job) if job is not None else None)
    stable = status.get("stableVariant") or BASELINE
    candidate = b.canary_variant(status, owner.generation) or ""
    if phase == Phase.deploying.value:
        ready = {}
        for variant in (stable, candidate):
            deployment = await kube.get("apps/v1", "Deployment", ns, b.triton_name(owner, variant), logger)
            if deployment is not None:
                ready[variant] = deployment_ready(deployment)
        return Observed(deployments_ready=ready)
    step, attempt = int(status.get("canaryStep") or 0), int(status.get("failedSteps") or 0)
    report_cm = await kube.get("v1", "ConfigMap", ns, b.report_config_map_name(owner, step, attempt), logger)
    report = parse_report(report_cm)
    job = None
    if report is None:
        job = await kube.get("batch/v1", "Job", ns, b.evaluator_job_name(owner, step, attempt), logger)
    return Observed(
        evaluator_job=JobState.from_job(job) if job is not None else (JobState() if report_cm else None),
        report=report,
    )


async def reconcile_object(body: kopf.Body, memo: kopf.Memo, logger: Any) -> str:
    """One pass: parse, observe, plan, apply, write status. Returns the phase after the pass."""
    lock, written = _state(memo)
    kube: KubeApi = memo["kube"]
    ops: OperatorSettings = memo["operator_settings"]
    async with lock:
        started = time.monotonic()
        owner = b.Owner.from_body(body)
        status = dict(body.get("status") or {})
        # We are the only writer of status: what we wrote last is never older than the body we hold.
        if written.get("status") and written.get("generation", 0) >= int(status.get("observedGeneration") or 0):
            status = dict(written["status"])
        try:
            model = parse_compressed_model(
                {k: body.get(k) for k in ("apiVersion", "kind", "metadata", "spec")} | {"metadata": {
                    "name": owner.name, "namespace": owner.namespace}}
            )
        except InvalidInput as exc:
            problems = exc.problems
            if not (status.get("observedGeneration") == owner.generation and status.get("phase") == Phase.failed.value):
                new = invalid_spec_status(status, owner.generation, problems, now_rfc3339())
                await _write_status(kube, owner, status, new, written, logger)
            metrics.RECONCILES.labels("invalid").inc()
            raise kopf.PermanentError(f"invalid spec: {'; '.join(problems)}") from None
        try:
            observed = await observe(kube, owner, status, logger)
            result = plan(model, owner, status, observed, ops, now_rfc3339())
            for api_version, kind, name in result.delete:  # autoscalers first: see Plan
                if await kube.delete(api_version, kind, owner.namespace, name, logger):
                    logger.debug("deleted %s %s", kind, name)
            for manifest in result.apply:
                outcome = await kube.apply(manifest, logger)
                metrics.CHILDREN_APPLIED.labels(manifest["kind"], outcome).inc()
                if outcome != "unchanged":  # debug: not posted as a Kubernetes Event (one per child is noise)
                    logger.debug("%s %s %s", outcome, manifest["kind"], manifest["metadata"]["name"])
            if result.gate_decision:
                metrics.GATE_DECISIONS.labels(result.gate_decision).inc()
            await _write_status(kube, owner, status, result.status, written, logger)
        except APIError as exc:
            metrics.RECONCILES.labels("retry").inc()
            raise kopf.TemporaryError(f"Kubernetes API: {exc}", delay=TEMPORARY_DELAY_SECONDS) from exc
        metrics.observe_model(model, owner.namespace, result.status)
        metrics.RECONCILES.labels("ok").inc()
        metrics.RECONCILE_SECONDS.observe(time.monotonic() - started)
        return str(result.status.get("phase"))


async def _write_status(
    kube: KubeApi, owner: b.Owner, old: dict[str, Any], new: dict[str, Any], written: dict[str, Any], logger: Any
) -> None:
    """Patch status only when it changed; count and log phase transitions."""
    if new == old and written.get("status") == new:
        return
    if new != old:
        await kube.patch(
            f"{API_GROUP}/{API_VERSION}", KIND, owner.namespace, owner.name, {"status": new}, logger,
            subresource="status",
        )
    written["status"] = {k: v for k, v in new.items() if v is not None}
    written["generation"] = int(new.get("observedGeneration") or 0)
    before, after = old.get("phase") or Phase.pending.value, new.get("phase")
    if after and before != after:
        metrics.PHASE_TRANSITIONS.labels(before, after).inc()
        now = time.monotonic()
        metrics.PHASE_SECONDS.labels(before).observe(now - written.get("entered", now))
        written["entered"] = now
        logger.info("phase %s → %s: %s", before, after, new.get("message") or "")


@kopf.on.resume(API_GROUP, API_VERSION, PLURAL)
@kopf.on.create(API_GROUP, API_VERSION, PLURAL)
@kopf.on.update(API_GROUP, API_VERSION, PLURAL)
async def reconcile(body: kopf.Body, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    """Create, spec change or operator restart: act now rather than at the next daemon tick."""
    await reconcile_object(body, memo, logger)


@kopf.daemon(API_GROUP, API_VERSION, PLURAL, id="observe-children", cancellation_timeout=5.0)
async def observe_children(
    stopped: kopf.DaemonStopped, body: kopf.Body, memo: kopf.Memo, logger: Any, **_: Any
) -> None:
    """Level-based: every interval, read what the current phase waits on and move on if it is there."""
    interval = memo["operator_settings"].reconcile_interval_seconds
    while not stopped:
        delay = interval
        try:
            await reconcile_object(body, memo, logger)
        except kopf.PermanentError:
            pass  # the status says why; a spec change (new generation) wakes `reconcile`
        except kopf.TemporaryError as exc:
            delay = exc.delay or interval
            logger.warning("retrying in %ss: %s", delay, exc)
        except Exception:  # noqa: BLE001 - keep observing: the next pass reads the same level again
            metrics.RECONCILES.labels("error").inc()
            logger.exception("reconcile failed; next try in %ss", interval)
        await stopped.wait(delay)


@kopf.on.delete(API_GROUP, API_VERSION, PLURAL, optional=True)
def forget(name: str, namespace: str | None, **_: Any) -> None:
    """Children go through owner references; only the metric series are ours to drop."""
    metrics.forget_model(namespace or "", name)
