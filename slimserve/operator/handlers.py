"""Thin kopf handlers: read the CR, observe the children its phase waits on, apply the plan.

One `reconcile` runs on create, update and resume (so a new generation restarts at once). A
per-object daemon runs it again when something it waits on may have changed: a watch event of one
of its own Jobs or Deployments (`wake_owner`), the status's deadline or drain time, or a resync
that backs off from `reconcile_interval_seconds` to `resync_max_seconds` while nothing changes
(level-based: Job and Deployment state is read, never waited for). All share a per-object lock
and the status last written, so they never act on an older status than the one already stored.
The decisions themselves live in the pure `slimserve.operator.reconcile`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import kopf

from slimserve.api import API_GROUP, API_VERSION, KIND, PLURAL, CompressedModel, Phase, parse_compressed_model
from slimserve.api.controls import Controls
from slimserve.api.status import TERMINAL_PHASES, now_rfc3339
from slimserve.errors import InvalidInput
from slimserve.evaluator import webhooks
from slimserve.operator import builders as b
from slimserve.operator import metrics
from slimserve.operator.builders import BASELINE, LABEL_MODEL
from slimserve.operator.kube import APIError, KubeApi, MissingAPI, NameTaken, NotFound
from slimserve.operator.reconcile import (
    DeploymentState,
    JobState,
    Observed,
    Plan,
    RouteState,
    invalid_api_status,
    invalid_spec,
    owner_for,
    parse_status,
    plan,
    spec_problems,
)
from slimserve.operator.settings import ANNOTATION_PREFIX, FINALIZER, OperatorSettings
from slimserve.operator.wakeups import Wakeups, jitter, next_resync, seconds_until_due

TEMPORARY_DELAY_SECONDS = 5.0
MISSING_API_DELAY_SECONDS = 60.0
FIRST_LOOK_SECONDS = 2.0
# Children whose watch events wake their model (the phases wait on these); (group, plural).
CHILD_RESOURCES = (("batch", "jobs"), ("apps", "deployments"))


@kopf.on.startup()
async def configure(
    settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any
) -> None:
    """Own finalizer and annotation prefix, watch timeouts, concurrency, the API client and the metrics port."""
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
    # Children are watched only to wake their model: only ours, filtered by the API server.
    for child in CHILD_RESOURCES:
        settings.watching.label_selectors[child] = LABEL_MODEL
    # At most this many objects' events are handled at once (kopf's default is one worker per object
    # with events: a thousand creates would run a thousand handlers at once); the rest queue. An idle
    # worker keeps its slot until `idle_timeout`: 1 s, not kopf's 5 s, or the queue drains at limit/5 s.
    settings.queueing.worker_limit = ops.worker_limit
    settings.queueing.idle_timeout = 1.0
    settings.execution.max_workers = 2  # every handler is async: the thread pool is idle
    if not ops.scanning:
        settings.scanning.disabled = True
    # Peering (the chart passes --peering with more than one replica) runs only the operator with the
    # highest priority and pauses every one of them on a tie, so each replica needs its own. The
    # oldest wins: a standby that (re)starts never takes over from a live operator, and a developer's
    # `kopf run --dev` (666) or `kopf freeze` (100) still pauses them all. A nonzero --priority is kept.
    if settings.peering.priority == 0:
        settings.peering.priority = seniority_priority(time.time_ns())
    settings.peering.lifetime = ops.peering_lifetime_seconds
    settings.posting.level = logging.INFO
    memo["kube"] = await KubeApi.connect()
    memo["wakeups"] = Wakeups()  # shared: kopf copies the operator's memo shallowly into each object's
    if ops.metrics_port:
        metrics.serve(ops.metrics_port)
        logger.info("metrics on :%d/metrics", ops.metrics_port)


@kopf.on.cleanup()
async def disconnect(memo: kopf.Memo, **_: Any) -> None:
    """Close the API client's connections as the operator stops."""
    if "kube" in memo:
        await memo["kube"].close()


def seniority_priority(started_ns: int) -> int:
    """A kopf peering priority that is higher the earlier the replica started (microseconds: no ties)."""
    return -(started_ns // 1000)


def _state(memo: kopf.Memo) -> tuple[asyncio.Lock, dict[str, Any]]:
    """The per-object lock and cache (memo is per object, copied from the operator's memo)."""
    if "lock" not in memo:
        memo["lock"] = asyncio.Lock()
        memo["written"] = {}
    return memo["lock"], memo["written"]


def _wake_event(memo: kopf.Memo, body: kopf.Body) -> asyncio.Event:
    """This object's wake-up, registered where its children's watch events find it."""
    if "wake" not in memo:
        meta = body.get("metadata") or {}
        memo["wake"] = memo["wakeups"].register(meta.get("namespace") or "", meta.get("name") or "")
    return memo["wake"]  # type: ignore[no-any-return]


async def _job(kube: KubeApi, namespace: str, name: str, late: bool, logger: Any) -> JobState | None:
    """A Job, with its pods once it finished (their termination messages) or is late (why it waits)."""
    job = await kube.get("batch/v1", "Job", namespace, name, logger)
    if job is None:
        return None
    state = JobState.from_objects(job)
    if state.finished or late:
        state = JobState.from_objects(job, await kube.list("v1", "Pod", namespace, {"job-name": name}, logger))
    return state


async def _deployment(kube: KubeApi, namespace: str, name: str, logger: Any) -> DeploymentState | None:
    deployment = await kube.get("apps/v1", "Deployment", namespace, name, logger)
    if deployment is None:
        return None
    state = DeploymentState.from_objects(deployment)
    if not state.ready:  # say why: the pods' waiting reasons
        selector = ((deployment.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        state = DeploymentState.from_objects(deployment, await kube.list("v1", "Pod", namespace, selector, logger))
    return state


async def _route(kube: KubeApi, owner: b.Owner, logger: Any) -> RouteState | None:
    route = await kube.get("gateway.networking.k8s.io/v1", "HTTPRoute", owner.namespace, b.route_name(owner), logger)
    if route is None:
        return None
    state = RouteState.from_objects(route, None)
    if state.accepted is None:  # nobody reported: is the Gateway there at all?
        parent = (route.get("spec") or {}).get("parentRefs", [{}])[0]
        gateway = await kube.get("gateway.networking.k8s.io/v1", "Gateway", parent.get("namespace") or owner.namespace,
                                 parent.get("name", ""), logger)  # fmt: skip
        state = RouteState.from_objects(route, gateway is not None)
    return state


async def observe(
    kube: KubeApi,
    model: CompressedModel,
    owner: b.Owner,
    status: dict[str, Any],
    api_error: str,
    logger: Any,
) -> Observed:
    """Read only the children the current phase waits on (few requests per pass)."""
    typed = parse_status(status)
    phase = typed.phase
    ns = owner.namespace
    started = "phase" in typed.model_fields_set
    if typed.observed_generation != owner.generation or not started or phase in TERMINAL_PHASES:
        return Observed()
    deadline = typed.deadline
    late = bool(deadline) and now_rfc3339() > str(deadline)  # same format: string order is time order
    if phase == Phase.compressing:
        return Observed(compression_job=await _job(kube, ns, b.compressing_job_name(owner), late, logger),
                        api_error=api_error)  # fmt: skip
    if phase == Phase.packaging:
        return Observed(packaging_job=await _job(kube, ns, b.packaging_job_name(owner), late, logger),
                        api_error=api_error)  # fmt: skip
    if phase == Phase.deploying:
        stable = typed.stable_variant or BASELINE
        candidate = b.canary_variant(typed, owner.generation) or ""
        states = {}
        for name in (b.triton_name(owner, stable), b.triton_name(owner, candidate), b.control_name(owner)):
            state = await _deployment(kube, ns, name, logger)
            if state is not None:
                states[name] = state
        route = await _route(kube, owner, logger) if model.spec.rollout.traffic_split == "gateway" else None
        return Observed(deployments=states, route=route, api_error=api_error)
    index = len(typed.steps)
    return Observed(evaluator_job=await _job(kube, ns, b.evaluator_job_name(owner, index), late, logger),
                    api_error=api_error)  # fmt: skip


async def _execute(kube: KubeApi, owner: b.Owner, result: Plan, logger: Any) -> None:
    """Delete, reset the route, apply, scale: in that order (see Plan)."""
    ns = owner.namespace
    for api_version, kind, name in result.delete:
        if await kube.delete(api_version, kind, ns, name, logger):
            logger.debug("deleted %s %s", kind, name)
    if result.route_reset is not None:
        service, served = result.route_reset
        with contextlib.suppress(NotFound):
            await kube.patch("gateway.networking.k8s.io/v1", "HTTPRoute", ns, b.route_name(owner),
                             b.route_to_stable_patch(service, served), logger)  # fmt: skip
    for manifest in result.apply:
        outcome = await kube.apply(manifest, logger)
        metrics.CHILDREN_APPLIED.labels(manifest["kind"], outcome).inc()
        if outcome != "unchanged":  # debug: not posted as a Kubernetes Event (one per child is noise)
            logger.debug("%s %s %s", outcome, manifest["kind"], manifest["metadata"]["name"])
    for name, replicas in result.scale:
        if await kube.scale(ns, name, replicas, logger):
            logger.debug("scaled Deployment %s to %d", name, replicas)


async def reconcile_object(body: kopf.Body, memo: kopf.Memo, logger: Any) -> str:
    """One pass: parse, observe, plan, apply, write status. Returns the phase after the pass."""
    lock, written = _state(memo)
    kube: KubeApi = memo["kube"]
    ops: OperatorSettings = memo["operator_settings"]
    _wake_event(memo, body)
    async with lock:
        started = time.monotonic()
        owner = b.Owner.from_body(body)
        status = dict(body.get("status") or {})
        # We are the only writer of status: what we wrote last is never older than the body we hold.
        if written.get("status") and written.get("generation", 0) >= int(status.get("observedGeneration") or 0):
            status = dict(written["status"])
        try:
            model = parse_compressed_model(
                {k: body.get(k) for k in ("apiVersion", "kind", "metadata", "spec")}
                | {"metadata": {"name": owner.name, "namespace": owner.namespace}}
            )
            problems = spec_problems(model, status, ops)
        except InvalidInput as exc:
            problems = exc.problems
        if problems:
            if not (status.get("observedGeneration") == owner.generation and status.get("phase") == Phase.failed.value):
                result = invalid_spec(owner, status, problems, now_rfc3339())
                try:
                    await _execute(kube, owner, result, logger)
                except APIError as exc:
                    raise kopf.TemporaryError(f"Kubernetes API: {exc}", delay=TEMPORARY_DELAY_SECONDS) from exc
                await _write_status(kube, owner, status, result.status, written, logger)
            metrics.RECONCILES.labels("invalid").inc()
            raise kopf.PermanentError(f"invalid spec: {'; '.join(problems)}") from None
        try:
            controls = Controls.from_annotations((body.get("metadata") or {}).get("annotations"))
            observed = await observe(kube, model, owner_for(owner, status), status, written.get("api_error", ""),
                                     logger)  # fmt: skip
            now = now_rfc3339()
            result = plan(model, owner, status, observed, ops, now, controls)
            # A plan that needs webhooks' answers changes nothing: ask them, plan again. A point asks at most two
            # types in turn (confirm-rollout, then pre-rollout; rollback, then confirm-promotion).
            for _ in range(max(len(types) for types in webhooks.POINTS.values())):
                if not result.ask:
                    break
                answers = await _ask(result.ask, logger)
                observed = replace(observed, webhooks={**observed.webhooks, **answers})
                result = plan(model, owner, status, observed, ops, now, controls)
            await _execute(kube, owner, result, logger)
            written.pop("api_error", None)
            if result.gate_decision:
                metrics.GATE_DECISIONS.labels(owner.namespace, owner.name, result.gate_decision).inc()
            await _write_status(kube, owner, status, result.status, written, logger)
            for event_type, message in result.events:  # posted as Events on the CompressedModel
                (logger.warning if event_type == "Warning" else logger.info)("%s", message)
            if result.notify:
                await _tell(result.notify, logger)
        except MissingAPI as exc:
            # Say so in the status (a condition a person reads), not only in a retry loop's events.
            kind = "TrafficReady" if exc.kind == "HTTPRoute" else "Deployed"
            flagged = invalid_api_status(status, owner.generation, kind, str(exc), now_rfc3339())
            await _write_status(kube, owner, status, flagged, written, logger)
            metrics.RECONCILES.labels("retry").inc()
            raise kopf.TemporaryError(str(exc), delay=MISSING_API_DELAY_SECONDS) from exc
        except NameTaken as exc:
            flagged = invalid_api_status(status, owner.generation, "Deployed", str(exc), now_rfc3339(), "NameTaken")
            await _write_status(kube, owner, status, flagged, written, logger)
            logger.warning("%s", exc)
            metrics.RECONCILES.labels("retry").inc()
            raise kopf.TemporaryError(str(exc), delay=MISSING_API_DELAY_SECONDS) from exc
        except APIError as exc:
            written["api_error"] = f"{type(exc).__name__}: {exc}"
            metrics.RECONCILES.labels("retry").inc()
            raise kopf.TemporaryError(f"Kubernetes API: {exc}", delay=TEMPORARY_DELAY_SECONDS) from exc
        metrics.observe_model(model, owner.namespace, result.status)
        metrics.RECONCILES.labels("ok").inc()
        metrics.RECONCILE_SECONDS.observe(time.monotonic() - started)
        return str(result.status.get("phase"))


async def _ask(calls: list[tuple[Any, dict[str, Any]]], logger: Any) -> dict[str, webhooks.Answer]:
    """The webhooks a plan needs, all at once (each within its timeout, in threads: the loop never waits)."""
    answers = await webhooks.ask_all(calls)
    for hook, _ in calls:
        metrics.WEBHOOK_CALLS.labels(str(hook.type), answers[hook.name].kind).inc()
        logger.debug("%s: %s", webhooks.named(hook), answers[hook.name].describe())
    return answers


async def _tell(calls: list[tuple[Any, dict[str, Any]]], logger: Any) -> None:
    """post-rollout and event webhooks: a failure is a Warning Event and changes nothing."""
    answers = await webhooks.ask_all(calls)
    for hook, _ in calls:
        answer = answers[hook.name]
        metrics.WEBHOOK_CALLS.labels(str(hook.type), answer.kind).inc()
        if not answer.ok:
            logger.warning("%s was not told: %s", webhooks.named(hook), answer.describe())


async def _write_status(
    kube: KubeApi, owner: b.Owner, old: dict[str, Any], new: dict[str, Any], written: dict[str, Any], logger: Any
) -> None:
    """Patch status only when it changed; count and log phase transitions."""
    if new == old and written.get("status") == new:
        return
    if new != old:
        await kube.patch(
            f"{API_GROUP}/{API_VERSION}",
            KIND,
            owner.namespace,
            owner.name,
            {"status": new},
            logger,
            subresource="status",
        )
    written["status"] = {k: v for k, v in new.items() if v is not None}
    written["generation"] = int(new.get("observedGeneration") or 0)
    before, after = old.get("phase") or Phase.pending.value, new.get("phase")
    if after and before != after:
        metrics.PHASE_TRANSITIONS.labels(owner.namespace, owner.name, before, after).inc()
        now = time.monotonic()
        metrics.PHASE_SECONDS.labels(before).observe(now - written.get("entered", now))
        written["entered"] = now
        bad = after in (Phase.failed.value, Phase.rolled_back.value)  # a Warning Event: someone should look
        (logger.warning if bad else logger.info)("phase %s → %s: %s", before, after, new.get("message") or "")


@kopf.on.resume(API_GROUP, API_VERSION, PLURAL)
@kopf.on.create(API_GROUP, API_VERSION, PLURAL)
@kopf.on.update(API_GROUP, API_VERSION, PLURAL)
async def reconcile(body: kopf.Body, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    """Create, spec change or operator restart: act now rather than at the next wake-up."""
    metrics.WAKEUPS.labels("handler").inc()
    await reconcile_object(body, memo, logger)


async def _sleep(stopped: kopf.DaemonStopped, wake: asyncio.Event, delay: float) -> str:
    """Until a child's event, the delay, or the operator stops; says which ("child", "timer", "stopped")."""
    waits = {asyncio.ensure_future(wake.wait()): "child", asyncio.ensure_future(stopped.wait()): "stopped"}
    try:
        done, _ = await asyncio.wait(waits, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()
    return "stopped" if stopped else next((waits[t] for t in done), "timer")


@kopf.daemon(API_GROUP, API_VERSION, PLURAL, id="observe-children", cancellation_timeout=5.0)
async def observe_children(
    stopped: kopf.DaemonStopped, body: kopf.Body, memo: kopf.Memo, logger: Any, **_: Any
) -> None:
    """Level-based, woken by events: reconcile when a child changed, a deadline is due, or on a resync.

    The resync (for what no watch reports: a Gateway accepting a route, a missed event) starts at
    `reconcile_interval_seconds` and doubles while passes change nothing, up to `resync_max_seconds`.
    The create/resume handler reconciles first, so the daemon starts by waiting; it looks once after
    `FIRST_LOOK_SECONDS` if no handler has (kopf runs handlers only once its finalizer is in place,
    and a conflict there waits for the object's next watch event).
    """
    ops: OperatorSettings = memo["operator_settings"]
    wake = _wake_event(memo, body)
    written = _state(memo)[1]
    spread = jitter(str((body.get("metadata") or {}).get("uid") or ""))
    resync = ops.reconcile_interval_seconds
    retry: float | None = None
    try:
        while not stopped:
            status = written.get("status") or body.get("status") or {}
            due = seconds_until_due(status, datetime.now(UTC))
            delay = retry if retry is not None else resync * spread
            looking = not written and delay > FIRST_LOOK_SECONDS  # no handler has reconciled it yet
            if looking:
                delay = FIRST_LOOK_SECONDS
            cause = await _sleep(stopped, wake, delay if due is None else min(delay, due))
            if cause == "stopped":
                return
            if cause == "timer" and looking and written:  # the handler got there first: nothing to do
                continue
            wake.clear()
            if cause == "timer" and due is not None and due <= delay:
                cause = "deadline"
            metrics.WAKEUPS.labels(cause if retry is None else "retry").inc()
            retry = None
            before = written.get("status")
            try:
                await reconcile_object(body, memo, logger)
            except kopf.PermanentError:
                pass  # the status says why; a spec change (new generation) wakes `reconcile`
            except kopf.TemporaryError as exc:
                retry = exc.delay or ops.reconcile_interval_seconds
                logger.warning("retrying in %ss: %s", retry, exc)
            except Exception:  # noqa: BLE001 - keep observing: the next pass reads the same level again
                metrics.RECONCILES.labels("error").inc()
                retry = ops.reconcile_interval_seconds
                logger.exception("reconcile failed; next try in %ss", retry)
            resync = next_resync(resync, written.get("status") != before, ops.reconcile_interval_seconds,
                                 ops.resync_max_seconds)  # fmt: skip
    finally:
        meta = body.get("metadata") or {}
        memo["wakeups"].forget(meta.get("namespace") or "", meta.get("name") or "")


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_MODEL: kopf.PRESENT})
@kopf.on.event("apps", "v1", "deployments", labels={LABEL_MODEL: kopf.PRESENT})
async def wake_owner(event: kopf.RawEvent, resource: kopf.Resource, memo: kopf.Memo, **_: Any) -> None:
    """A Job or Deployment of ours changed status or went away: wake its model (and only it)."""
    obj = event.get("object") or {}
    if memo["wakeups"].child_event(resource.kind, event.get("type"), obj):
        metrics.CHILD_EVENTS.labels(resource.kind, "woke").inc()
    else:
        metrics.CHILD_EVENTS.labels(resource.kind, "ignored").inc()


@kopf.on.delete(API_GROUP, API_VERSION, PLURAL, optional=True)
async def forget(name: str, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    """Children go through owner references; only the metric series and the wake-up are ours to drop."""
    metrics.forget_model(namespace or "", name)
    memo["wakeups"].forget(namespace or "", name)
