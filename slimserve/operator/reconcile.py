"""The phase machine, pure: spec + current status + observed children → children to apply + status.

`Pending → Compressing → Packaging → Deploying → Evaluating → Progressing → Promoted | RolledBack
| Failed`. Every decision is a function of what was observed (Job finished? Deployment rolled out?
route accepted?) and of the clock against `status.deadline`, so running it twice, or after an operator
restart, gives the same answer and the same deterministic child names: nothing is duplicated.

What to judge next and when to stop is `slimserve.evaluator.policy.next_step`'s call, fed with the
steps judged so far (`status.steps`), exactly as `slimserve run` feeds it: the served quality check
(weight 0), then `spec.rollout.steps`. Each judged step is one evaluator Job.

The user's controls (`slimserve.api.controls`: pause, abort, promote, retry) are inputs too. Pause is
a level: no new step starts while it is set (the step in flight is judged and recorded; the rollout
then waits with no deadline). abort, promote and retry are one-shot requests, each acted on (or
refused, with a reason) once and recorded in `status.handledRequests`. With `spec.rollout.approval:
manual` a rollout whose steps all passed waits for a promote request. Each of these transitions
comes with an Event (`Plan.events`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Final, Literal

from pydantic import ConfigDict, ValidationError

from slimserve.api import CompressedModel, Phase, compression_hash, set_condition
from slimserve.api.controls import Controls, Request
from slimserve.api.report import CheckResult, EvaluationReport, StepResult
from slimserve.api.spec import Webhook, duration_seconds
from slimserve.api.status import (
    TERMINAL_PHASES,
    CheckVerdict,
    CompressedModelStatus,
    CompressionOutput,
    Condition,
    Drain,
    HandledRequests,
    JudgedStep,
)
from slimserve.evaluator import policy, webhooks
from slimserve.evaluator.webhooks import Answer
from slimserve.operator import builders as b
from slimserve.operator.builders import BASELINE, Served
from slimserve.operator.settings import OperatorSettings, seconds

Manifest = dict[str, Any]
ConditionStatus = Literal["True", "False", "Unknown"]
Ref = tuple[str, str, str]  # (apiVersion, kind, name)
# How long after a Job's own deadline the phase gives up (the Job controller should have failed it by then).
DEADLINE_GRACE_S: Final = 120
# The evaluator's Prometheus windows need this many scrapes (slimserve.evaluator.canary.MIN_SCRAPES).
MIN_SCRAPES: Final = 4
# Exit codes of `slimserve evaluate` that come with a judged step.
STEP_EXIT_CODES: Final = frozenset({0, 3, 4})
IN_FLIGHT: Final = frozenset({Phase.packaging, Phase.deploying, Phase.evaluating, Phase.progressing})
MESSAGE_LIMIT: Final = 600
EventType = Literal["Normal", "Warning"]
# Where a promote request can act: the canary serves (being judged, paused or waiting for approval).
PROMOTABLE: Final = frozenset({Phase.evaluating, Phase.progressing})
RETRYABLE: Final = frozenset({Phase.rolled_back, Phase.failed})


# ---------------------------------------------------------------------------------------------
# what is observed, parsed from API objects (pure: the handler fetches, these read)
# ---------------------------------------------------------------------------------------------


def _clip(text: str, limit: int = MESSAGE_LIMIT) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else "…" + text[-limit:]


def pod_problem(pod: Mapping[str, Any]) -> str:
    """Why a pod is not (or no longer) running, as `kubectl describe` would say it; "" when nothing is wrong."""
    name = (pod.get("metadata") or {}).get("name", "?")
    status = pod.get("status") or {}
    for cs in status.get("containerStatuses") or []:
        state = cs.get("state") or {}
        waiting, last = state.get("waiting") or {}, (cs.get("lastState") or {}).get("terminated") or {}
        if waiting and waiting.get("reason") not in (None, "ContainerCreating", "PodInitializing"):
            why = f"{waiting['reason']}: {waiting.get('message') or ''}".rstrip(": ")
            if last:
                why += f" (last exit {last.get('exitCode')}: {last.get('reason') or ''} {last.get('message') or ''})"
            return _clip(f"pod {name}: {why}")
        terminated = state.get("terminated") or {}
        if terminated and terminated.get("exitCode") not in (0, None):
            return _clip(f"pod {name}: exited {terminated['exitCode']} ({terminated.get('reason') or 'Error'}): "
                         f"{terminated.get('message') or ''}")  # fmt: skip
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return _clip(f"pod {name}: {cond.get('reason') or 'Unschedulable'}: {cond.get('message') or ''}")
    return ""


@dataclass(frozen=True)
class JobState:
    """What a Job and its latest finished pod report (level, not edge)."""

    succeeded: bool = False
    failed: bool = False
    reason: str = ""
    message: str = ""
    exit_code: int | None = None
    output: str = ""  # the latest finished container's termination message (or log tail)
    waiting: str = ""  # why its pod is not running, while it is not

    @property
    def finished(self) -> bool:
        return self.succeeded or self.failed

    @classmethod
    def from_objects(cls, job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]] = ()) -> JobState:
        """The Job's conditions, plus its own pods (by owner uid: a recreated Job ignores its predecessor's)."""
        uid = (job.get("metadata") or {}).get("uid")
        mine = [p for p in pods if not uid or any(
            r.get("uid") == uid for r in (p.get("metadata") or {}).get("ownerReferences") or [])]  # fmt: skip
        finished: list[Mapping[str, Any]] = []
        waiting = ""
        for pod in mine:
            for cs in (pod.get("status") or {}).get("containerStatuses") or []:
                terminated = (cs.get("state") or {}).get("terminated")
                if terminated:
                    finished.append(terminated)
            waiting = waiting or pod_problem(pod)
        last: Mapping[str, Any] = max(finished, key=lambda t: str(t.get("finishedAt") or ""), default={})
        exit_code = last.get("exitCode")
        seen = cls(exit_code=int(exit_code) if exit_code is not None else None, output=str(last.get("message") or ""),
                  waiting=waiting)  # fmt: skip
        status = job.get("status") or {}
        for cond in status.get("conditions") or []:
            if cond.get("status") != "True":
                continue
            reason, message = str(cond.get("reason") or ""), str(cond.get("message") or "")
            if cond.get("type") in ("Complete", "SuccessCriteriaMet"):
                return replace(seen, succeeded=True, reason=reason or "Complete", message=message)
            if cond.get("type") in ("Failed", "FailureTarget"):
                return replace(seen, failed=True, reason=reason or "JobFailed", message=message)
        if (status.get("succeeded") or 0) >= 1:
            return replace(seen, succeeded=True, reason="Complete")
        return seen

    def describe(self, job_name: str) -> str:
        """The reason a person acts on: the pod's own words first, then the Job's."""
        head = f"Job {job_name}"
        if self.failed:
            head += f" failed ({self.reason}{': ' + self.message if self.message else ''})"
        parts = [head]
        if self.exit_code not in (None, 0):
            parts.append(f"exit {self.exit_code}: {_clip(self.output) or 'no message'}")
        elif self.waiting:
            parts.append(self.waiting)
        elif not self.finished:
            parts.append("no running pod yet (see its events: quota, admission, a missing Secret or claim)")
        return _clip("; ".join(parts), 2 * MESSAGE_LIMIT)


@dataclass(frozen=True)
class DeploymentState:
    """Rolled out = every replica runs the current pod template and is available (`kubectl rollout status`)."""

    ready: bool = False
    failed: str = ""  # Progressing=False (ProgressDeadlineExceeded): the Deployment gave up
    waiting: str = ""  # why a pod is not ready

    @classmethod
    def from_objects(cls, deployment: Mapping[str, Any], pods: Sequence[Mapping[str, Any]] = ()) -> DeploymentState:
        meta, spec, status = (deployment.get(k) or {} for k in ("metadata", "spec", "status"))
        waiting = next((p for p in map(pod_problem, pods) if p), "")
        for cond in status.get("conditions") or []:
            if cond.get("type") == "Progressing" and cond.get("status") == "False":
                return cls(failed=_clip(f"{cond.get('reason')}: {cond.get('message') or ''}"), waiting=waiting)
        desired = int(spec.get("replicas", 1) if spec.get("replicas") is not None else 1)
        generation, observed = meta.get("generation"), status.get("observedGeneration")
        current = generation is None or observed is None or int(observed) >= int(generation)
        updated, total = int(status.get("updatedReplicas") or 0), int(status.get("replicas") or 0)
        available = int(status.get("availableReplicas") or 0)
        ready = current and updated >= desired and total <= updated and available >= max(updated, 1 if desired else 0)
        return cls(ready=ready, waiting=waiting)


@dataclass(frozen=True)
class RouteState:
    """Whether a Gateway accepted the HTTPRoute (`status.parents[].conditions`); None until one says."""

    accepted: bool | None = None
    message: str = ""

    @classmethod
    def from_objects(cls, route: Mapping[str, Any], gateway_found: bool | None) -> RouteState:
        parents = (route.get("status") or {}).get("parents") or []
        for parent in parents:
            for cond in parent.get("conditions") or []:
                if cond.get("type") == "Accepted":
                    ok = cond.get("status") == "True"
                    return cls(ok, "" if ok else f"{cond.get('reason')}: {cond.get('message') or ''}")
        if gateway_found is False:
            return cls(False, "GatewayNotFound")
        return cls(None, "no Gateway controller has reported on the route yet")


@dataclass(frozen=True)
class Observed:
    """The children the current phase waits on; None means the child does not exist (yet)."""

    compression_job: JobState | None = None
    packaging_job: JobState | None = None
    deployments: dict[str, DeploymentState] = field(default_factory=dict)  # by Deployment name; absent = missing
    route: RouteState | None = None
    evaluator_job: JobState | None = None
    api_error: str = ""  # the last failed request of this object's reconciles (a create refused by a quota)
    webhooks: dict[str, Answer] = field(default_factory=dict)  # this pass's answers, by webhook name


@dataclass
class Plan:
    """Children to create-or-patch, objects to remove, Deployments to scale, and the whole new status.

    Order in the handler: delete, route reset, apply, scale. An autoscaler still in place would scale a
    Deployment the plan sets to 0 replicas straight back up (KEDA enforces its minimum); a scale comes
    last so no manifest applied in the same pass sets the replicas back.
    """

    apply: list[Manifest] = field(default_factory=list)
    delete: list[Ref] = field(default_factory=list)
    scale: list[tuple[str, int]] = field(default_factory=list)  # (Deployment, replicas)
    route_reset: tuple[str, str] | None = None  # (stable's Service, model name): all traffic back, spec unknown
    # The status merge patch, dumped from the typed working copy: the fields set (a None deletes one).
    status: dict[str, Any] = field(default_factory=dict)
    gate_decision: str | None = None
    events: list[tuple[EventType, str]] = field(default_factory=list)  # what the user's controls did, or why not
    # Webhooks to ask before this plan can be made: the handler calls them and plans again with the answers.
    ask: list[tuple[Webhook, dict[str, Any]]] = field(default_factory=list)
    # Webhooks told what happened (post-rollout, event) once the status is written; their answers change nothing.
    notify: list[tuple[Webhook, dict[str, Any]]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# checks that need the installation (the spec alone passed pydantic and the CRD)
# ---------------------------------------------------------------------------------------------


def spec_problems(model: CompressedModel, status: Mapping[str, Any], settings: OperatorSettings) -> list[str]:
    """What this installation cannot run, each naming the field, the value and the fix.

    The step check is the twin of `slimserve.evaluator.canary.Timing.of` (tests hold them to the same
    verdicts): the evaluator would refuse the same spec, but only after compression.
    """
    rollout = model.spec.rollout
    problems = []
    scrape = duration_seconds(settings.scrape_interval)
    step, warmup = duration_seconds(rollout.step_duration), duration_seconds(rollout.warmup)
    ramp = rollout.users / max(rollout.spawn_rate, 1)
    judged = step - warmup - ramp
    if judged < MIN_SCRAPES * scrape:
        problems.append(
            f"spec.rollout.stepDuration = {rollout.step_duration!r}: after the warm-up ({warmup:g} s) and the spawn "
            f"ramp ({ramp:g} s) {judged:g} s are judged, fewer than {MIN_SCRAPES} scrapes of {scrape:g} s (the "
            f"operator's scrape interval); use at least {math.ceil(warmup + ramp + MIN_SCRAPES * scrape)}s"
        )
    longest = max(duration_seconds(rollout.max_step_duration) if rollout.max_step_duration else 4 * step, step)
    windows = math.ceil(longest / step)
    needed = step / 2 + longest + windows * 1.5 * scrape + DEADLINE_GRACE_S
    if seconds(rollout.evaluator.deadline) < needed:
        problems.append(
            f"spec.rollout.evaluator.deadline = {rollout.evaluator.deadline!r}: a canary step may take {needed:.0f} s "
            f"(warm-up, maxStepDuration {longest:g} s, Prometheus scrapes and start-up); use at least "
            f"{math.ceil(needed / 60)}m"
        )
    served_as = parse_status(status).model_name
    if served_as and served_as != b.model_name(model):
        problems.append(
            f"spec.serving.modelName = {b.model_name(model)!r}: clients call {served_as!r} (status.modelName) and the "
            "stable variant serves it; the name cannot change once served: set it back, or create a new "
            "CompressedModel for the new name"
        )
    return problems


# ---------------------------------------------------------------------------------------------
# status helpers
# ---------------------------------------------------------------------------------------------


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _after(now: str, delay_s: float) -> str:
    return (_parse_time(now) + timedelta(seconds=delay_s)).strftime("%Y-%m-%dT%H:%M:%SZ")


class WorkingStatus(CompressedModelStatus):
    """The plan's working copy: assignments are validated and mark their field set, so `patch` knows
    which fields the plan writes (an explicit None included)."""

    model_config = ConfigDict(frozen=False, validate_assignment=True)


# Fields a stored status cannot hold as null (a null there is read as absent).
_NOT_NULL: Final = frozenset({"phase", "conditions", "steps"})


def parse_status(status: Mapping[str, Any] | None) -> WorkingStatus:
    """The stored status, typed; the fields it holds (an explicit null too) are the ones set."""
    try:
        return WorkingStatus.model_validate(
            {k: v for k, v in (status or {}).items() if v is not None or k not in _NOT_NULL}
        )
    except ValidationError as exc:
        raise StatusDrift(f"the stored status does not fit CompressedModelStatus: {exc}") from None


class _Status:
    """A typed working copy of status (`status`) with condition helpers bound to generation and time."""

    def __init__(self, status: CompressedModelStatus, generation: int, now: str) -> None:
        self.status = WorkingStatus.model_validate(status.model_dump(by_alias=True, exclude_unset=True))
        if "conditions" not in self.status.model_fields_set:
            self.status.conditions = []
        self.generation = generation
        self.now = now

    def patch(self) -> dict[str, Any]:
        """The status merge patch: every field set, from the stored status or by the plan; None deletes."""
        return self.status.model_dump(mode="json", by_alias=True, exclude_unset=True)

    def condition(self, type: str, status: ConditionStatus, reason: str, message: str = "") -> None:
        conditions = set_condition(
            [c.model_dump(by_alias=True, exclude_unset=True) for c in self.status.conditions],
            type,
            status,
            reason,
            message,
            observed_generation=self.generation,
            now=self.now,
        )
        self.status.conditions = [Condition.model_validate(c) for c in conditions]

    def phase(self, phase: Phase, message: str, deadline_s: float | None = None) -> None:
        self.status.phase = phase
        self.status.message = message
        self.status.deadline = _after(self.now, deadline_s) if deadline_s is not None else None

    def past_deadline(self) -> bool:
        deadline = self.status.deadline
        return bool(deadline) and _parse_time(self.now) > _parse_time(str(deadline))


def _stable(status: CompressedModelStatus, generation: int) -> Served:
    return Served(status.stable_variant or BASELINE, int(status.stable_generation or generation))


def _steps(status: CompressedModelStatus) -> list[StepResult]:
    """`status.steps` as the policy reads them (values are not needed to decide)."""
    return [
        StepResult(weight=s.weight, verdict=s.verdict, checks=[
            CheckResult(name=c.name, verdict=c.verdict, value=None, threshold=None) for c in s.checks
        ])
        for s in status.steps
    ]  # fmt: skip


def _next(model: CompressedModel, steps: list[StepResult]) -> policy.NextStep:
    rollout = model.spec.rollout
    return policy.next_step(steps, rollout.steps, rollout.failure_budget, rollout.inconclusive_limit)


def parse_step_report(job: JobState) -> EvaluationReport | None:
    """The judged step an evaluator Job left in its termination message; None if it judged nothing."""
    if job.exit_code not in STEP_EXIT_CODES or not job.output.strip():
        return None
    try:
        return EvaluationReport.model_validate_json(job.output.strip().splitlines()[-1])
    except ValueError:
        return None


def parse_choice(output: str) -> dict[str, Any] | None:
    """The compression Job's choice (`slimserve.api.choice.summary`): {candidate: {...} | null, reason}."""
    try:
        parsed = json.loads(output.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None
    return parsed if isinstance(parsed, dict) and "candidate" in parsed else None


# ---------------------------------------------------------------------------------------------
# children of one pass
# ---------------------------------------------------------------------------------------------


def _gateway(model: CompressedModel) -> bool:
    return model.spec.rollout.traffic_split == "gateway"


def _serving_children(
    model: CompressedModel,
    owner: b.Owner,
    served: Served,
    role: b.Role,
    settings: OperatorSettings,
    replicas: int | None,
    autoscale: bool,
) -> list[Manifest]:
    out = [
        b.build_triton_deployment(model, owner, served, role, settings, replicas=replicas),
        b.build_triton_service(owner, served.variant),
    ]
    if autoscale:
        out.append(b.build_autoscaler(model, owner, served.variant, settings))
    return out


def _client_share(model: CompressedModel, settings: OperatorSettings, status: CompressedModelStatus) -> int | None:
    """Percent of client traffic on the candidate (status.clientShare): the route's weight, or in replica
    mode, from Deploying on, the candidate's pods over all pods behind the shared Service."""
    weight = status.canary_weight
    if _gateway(model) or status.phase not in IN_FLIGHT - {Phase.packaging}:
        return weight
    stable_n, canary_n = b.split_replicas(settings.split_replicas, _replica_weight(model, weight or 0))
    return round(100 * canary_n / (stable_n + canary_n))


def _replica_weight(model: CompressedModel, weight: int) -> int:
    """In replica mode the canary serves clients from its first pod: at least the first step's share."""
    return max(weight, model.spec.rollout.steps[0])


def _traffic(
    model: CompressedModel,
    owner: b.Owner,
    stable: Served,
    candidate: Served | None,
    weight: int,
    settings: OperatorSettings,
) -> list[Manifest]:
    """Children that carry the canary weight: the HTTPRoute, or the replica counts."""
    if _gateway(model):
        return [b.build_httproute(model, owner, stable.variant, candidate.variant if candidate else None, weight,
                                  settings)]  # fmt: skip
    if candidate is None:
        return [b.build_triton_deployment(model, owner, stable, "stable", settings, replicas=settings.split_replicas)]
    stable_n, canary_n = b.split_replicas(settings.split_replicas, _replica_weight(model, weight))
    return [
        b.build_triton_deployment(model, owner, stable, "stable", settings, replicas=stable_n),
        b.build_triton_deployment(model, owner, candidate, "canary", settings, replicas=canary_n),
    ]


def _deploy_children(
    model: CompressedModel, owner: b.Owner, stable: Served, candidate: Served, settings: OperatorSettings
) -> list[Manifest]:
    """Stable, canary and control Triton (Deployments, Services, autoscalers) and traffic at weight 0."""
    control = [
        b.build_triton_deployment(model, owner, stable, "control", settings,
                                  replicas=model.spec.serving.autoscaling.min_replicas),
        b.build_control_service(owner),
    ]  # fmt: skip
    if _gateway(model):
        # A canary starts at the autoscaler's minimum: an earlier rollback may have left it at 0
        # replicas, and an HPA never scales a Deployment up from 0. The stable count stays the HPA's.
        minimum = model.spec.serving.autoscaling.min_replicas
        children = _serving_children(model, owner, stable, "stable", settings, None, autoscale=True)
        children += _serving_children(model, owner, candidate, "canary", settings, minimum, autoscale=True)
        return children + control + _traffic(model, owner, stable, candidate, 0, settings)
    stable_n, canary_n = b.split_replicas(settings.split_replicas, _replica_weight(model, 0))
    children = _serving_children(model, owner, stable, "stable", settings, stable_n, autoscale=False)
    children += _serving_children(model, owner, candidate, "canary", settings, canary_n, autoscale=False)
    return children + control + [b.build_shared_service(owner)]


def _remove_control(owner: b.Owner, out: Plan) -> None:
    name = b.control_name(owner)
    out.delete += [("apps/v1", "Deployment", name), ("v1", "Service", name)]


def _drain(owner: b.Owner, variants: list[str], st: _Status, out: Plan, settings: OperatorSettings) -> None:
    """The losing side keeps its pods `scale_down_delay_seconds` while the switch propagates, then goes to 0."""
    deployments = [b.triton_name(owner, v) for v in variants]
    if settings.scale_down_delay_seconds <= 0:
        _scale_down(owner, deployments, out)
        return
    st.status.drain = Drain(deployments=deployments, at=_after(st.now, settings.scale_down_delay_seconds))


def _scale_down(owner: b.Owner, deployments: list[str], out: Plan) -> None:
    prefix = f"{owner.name}-"
    for name in deployments:
        out.delete += b.autoscaler_refs(owner, name[len(prefix) :] if name.startswith(prefix) else name)
        out.scale.append((name, 0))


def _drain_if_due(owner: b.Owner, st: _Status, out: Plan, force: bool = False) -> None:
    drain = st.status.drain
    if drain and (force or _parse_time(st.now) >= _parse_time(drain.at)):
        _scale_down(owner, list(drain.deployments), out)
        st.status.drain = None


def _supersede(owner: b.Owner, status: CompressedModelStatus, out: Plan) -> None:
    """A new generation (or an invalid spec) while one is in flight: its canary, control and Jobs go.

    The canary drains no longer: traffic is back on the stable in the same pass.
    """
    old_gen = status.observed_generation or 0
    if not old_gen or "phase" not in status.model_fields_set:
        return
    phase = status.phase
    old = b.Owner(owner.name, owner.namespace, owner.uid, old_gen, status.retries or 0, reused_generation(status))
    jobs = {
        Phase.compressing: b.compressing_job_name(old),
        Phase.packaging: b.packaging_job_name(old),
        Phase.evaluating: b.evaluator_job_name(old, len(status.steps)),
        Phase.progressing: b.evaluator_job_name(old, len(status.steps)),
    }
    if phase in jobs:
        out.delete.append(("batch/v1", "Job", jobs[phase]))
    candidate = b.canary_variant(status, old_gen)
    if phase in IN_FLIGHT - {Phase.packaging} and candidate:
        _scale_down(owner, [b.triton_name(owner, candidate)], out)
        _remove_control(owner, out)


# ---------------------------------------------------------------------------------------------
# the phase machine
# ---------------------------------------------------------------------------------------------


def reused_generation(status: CompressedModelStatus) -> int:
    """The generation whose compression output the status's generation uses when not its own (else 0)."""
    latest = status.compression
    return latest.generation if latest and latest.hash == status.compression_hash else 0


def start_pipeline(
    model: CompressedModel, owner: b.Owner, status: CompressedModelStatus, settings: OperatorSettings, now: str
) -> Plan:
    """A new generation: compress again, unless the latest compression output was made from the same
    source, data, quality and compression (`compression_hash`); whatever serves keeps serving from the
    stable variant."""
    serving = status.canary_weight is not None
    stable = _stable(status, owner.generation)
    # TrafficReady is judged again when this generation's canary deploys; approval is per generation.
    conditions = [
        c for c in status.conditions if c.type not in ("TrafficReady", "WaitingForApproval", "WaitingForWebhook")
    ]
    # The fields of the last generation's rollout are set to None (deleted); those not named are kept.
    fresh = CompressedModelStatus(
        conditions=conditions, drain=status.drain, observed_generation=owner.generation,
        stable_variant=stable.variant, stable_generation=status.stable_generation,
        previous_stable_variant=status.previous_stable_variant,
        previous_stable_generation=status.previous_stable_generation, model_name=status.model_name,
        endpoint=status.endpoint, candidate_variant=None, size_ratio=None, metric=None, quality_drop=None,
        p99_ms=None, throughput_rps=None, canary_step=None, decision=None, steps=[], failed_steps=0,
        canary_weight=0 if serving else None, retries=None, handled_requests=status.handled_requests,
        compression_hash=compression_hash(model.spec), compression=status.compression,
    )  # fmt: skip
    st = _Status(fresh, owner.generation, now)
    plan = Plan()
    _drain_if_due(owner, st, plan, force=True)
    _supersede(owner, status, plan)
    job = model.spec.compression.job
    owner = replace(owner, compressed_generation=reused_generation(st.status))
    name = b.compressing_job_name(owner)
    if b.reuses_compression(owner):
        msg = (f"compression reused from generation {owner.compressed_generation} (hash "
               f"{str(st.status.compression_hash)[:12]}): source, data, quality and compression are unchanged; Job "
               f"{name} chooses the candidate from its output")  # fmt: skip
        st.phase(Phase.compressing, f"generation {owner.generation}: {msg}",
                 settings.packaging_deadline_seconds + DEADLINE_GRACE_S)  # fmt: skip
        st.condition("Compressed", "Unknown", "Reused", msg)
        plan.events.append(("Normal", f"generation {owner.generation}: {msg}"))
    else:
        st.phase(Phase.compressing, f"compressing generation {owner.generation} ({name})",
                 seconds(job.deadline) + DEADLINE_GRACE_S)  # fmt: skip
        st.condition("Compressed", "Unknown", "Compressing", f"Job {name} is running")
    st.condition("Deployed", "Unknown", "Pending", "waiting for compression")
    st.condition("Evaluated", "Unknown", "Pending", "waiting for deployment")
    st.condition("Promoted", "Unknown", "Pending", "waiting for the gate")
    st.condition(
        "Ready",
        "True" if serving else "False",
        "ServingStable" if serving else "Compressing",
        f"stable variant {stable.variant} serves all traffic" if serving else "nothing is served yet",
    )
    plan.apply.append(b.build_spec_config_map(model, owner))
    if not model.spec.serving.model_repository.pvc:
        plan.apply.append(b.build_model_repository_pvc(model, owner, settings))
    plan.apply.append(_compression_job(model, owner, status, settings))
    if serving:
        plan.apply += _traffic(model, owner, stable, None, 0, settings)
    plan.status = st.patch()
    return plan


def _compression_job(
    model: CompressedModel, owner: b.Owner, status: CompressedModelStatus, settings: OperatorSettings
) -> Manifest:
    """The Job of the Compressing phase: compression and choice, or only the choice on a reused output."""
    stable = status.stable_variant
    served = _stable(status, owner.generation) if stable and stable != BASELINE else None
    build = b.build_choice_job if b.reuses_compression(owner) else b.build_compression_job
    return build(model, owner, settings, served, stable)


def invalid_spec(owner: b.Owner, status: Mapping[str, Any] | None, problems: list[str], now: str) -> Plan:
    """Failed with a Ready condition naming each field, value and fix; a rollout in flight is called off."""
    current = parse_status(status)
    st = _Status(current, owner.generation, now)
    plan = Plan()
    if current.observed_generation != owner.generation:
        _drain_if_due(owner, st, plan, force=True)
        _supersede(owner, current, plan)
        stable = current.stable_variant
        if stable and current.model_name and _phase(current) in IN_FLIGHT:
            plan.route_reset = (b.triton_name(owner, stable), current.model_name)
            st.status.canary_weight = 0
    msg = "invalid spec: " + "; ".join(problems)
    st.status.observed_generation = owner.generation
    st.phase(Phase.failed, msg)
    serving = current.canary_weight is not None
    st.condition(
        "Ready",
        "False",
        "InvalidSpec",
        msg + (f"; stable variant {current.stable_variant} keeps serving" if serving else ""),
    )
    plan.status = st.patch()
    return plan


def invalid_api_status(
    status: Mapping[str, Any], generation: int, condition: str, message: str, now: str, reason: str = "APIMissing"
) -> dict[str, Any]:
    """The status as it was, plus a condition saying what in the cluster blocks this model (an API it lacks,
    a child's name another object holds) and how to fix it."""
    st = _Status(parse_status(status), generation, now)
    st.condition(condition, "False", reason, message)
    return st.patch()


def owner_for(owner: b.Owner, status: CompressedModelStatus | Mapping[str, Any] | None) -> b.Owner:
    """The owner with the attempt its current generation is on (status.retries), which names its Jobs."""
    typed = status if isinstance(status, CompressedModelStatus) else parse_status(status)
    if typed.observed_generation != owner.generation:
        return replace(owner, attempt=0, compressed_generation=0)
    return replace(owner, attempt=typed.retries or 0, compressed_generation=reused_generation(typed))


def plan(
    model: CompressedModel,
    owner: b.Owner,
    status: Mapping[str, Any] | None,
    observed: Observed,
    settings: OperatorSettings,
    now: str,
    controls: Controls | None = None,
) -> Plan:
    """One level-based step of the phase machine; the user's pending requests first, then the phase.

    A plan that needs webhooks' answers (`Plan.ask`) changes nothing yet: the handler asks them and plans
    again with the answers in `observed.webhooks`. A phase change and each Event are told to the event
    webhooks, and the end of a rollout in flight to the post-rollout webhooks (`Plan.notify`).
    """
    current = parse_status(status)
    out = _plan(model, owner, current, observed, settings, now, controls)
    typed = check_status(out.status)
    out.status["clientShare"] = _client_share(model, settings, typed)
    if not out.ask:
        out.notify = _notifications(model, owner, current, typed, out)
    return out


def _phase(status: CompressedModelStatus) -> Phase | None:
    """The status's phase; None when it has none (a new object)."""
    return status.phase if "phase" in status.model_fields_set else None


STATUS_FIELDS: Final = frozenset(f.alias or name for name, f in CompressedModelStatus.model_fields.items())


class StatusDrift(Exception):
    """A plan built a status that CompressedModelStatus (and so the CRD's schema) does not declare: a bug in
    the operator, never the user's input. Raised before anything is written; kopf logs it and retries."""


def check_status(status: Mapping[str, Any]) -> CompressedModelStatus:
    """The status a plan writes, parsed by the typed model: unknown fields and wrong types are refused
    (the API server would prune an unknown field silently). `None` values are deletions in the patch."""
    unknown = sorted(set(status) - STATUS_FIELDS)
    if unknown:
        raise StatusDrift(f"status fields {unknown} are not in CompressedModelStatus")
    try:
        return CompressedModelStatus.model_validate({k: v for k, v in status.items() if v is not None})
    except ValidationError as exc:
        raise StatusDrift(f"the planned status does not fit CompressedModelStatus: {exc}") from None


def _notifications(
    model: CompressedModel, owner: b.Owner, before: CompressedModelStatus, after: CompressedModelStatus, out: Plan
) -> list[tuple[Webhook, dict[str, Any]]]:
    hooks = model.spec.rollout.webhooks
    if not hooks:
        return []
    old, new = _phase(before), after.phase
    messages = [str(after.message or new.value)] if new != old else []
    messages += [text for _, text in out.events if text not in messages]
    told = []
    if messages:  # one call per webhook and pass, its lines in order
        told += [(hook, webhooks.payload(hook, replace(_context(owner, after), message="\n".join(messages))))
                 for hook in webhooks.of_type(hooks, "event")]  # fmt: skip
    ended = new != old and new in (Phase.promoted, Phase.rolled_back) and old in IN_FLIGHT
    if ended:
        told += [
            (hook, webhooks.payload(hook, _context(owner, after))) for hook in webhooks.of_type(hooks, "post-rollout")
        ]
    return told


def _plan(
    model: CompressedModel,
    owner: b.Owner,
    status: CompressedModelStatus,
    observed: Observed,
    settings: OperatorSettings,
    now: str,
    controls: Controls | None = None,
) -> Plan:
    controls = controls or Controls()
    if status.observed_generation != owner.generation or _phase(status) is None:
        return start_pipeline(model, owner, status, settings, now)  # requests wait for the next pass
    st = _Status(status, owner.generation, now)
    out = Plan()
    _phase_step(model, owner_for(owner, status), st, observed, settings, out, controls)
    out.status = st.patch()
    return out


def _phase_step(
    model: CompressedModel,
    owner: b.Owner,
    st: _Status,
    observed: Observed,
    settings: OperatorSettings,
    out: Plan,
    controls: Controls,
) -> None:
    _drain_if_due(owner, st, out)
    acted = False
    handled = st.status.handled_requests
    for request in controls.pending(handled.model_dump(exclude_unset=True) if handled else None):
        acted = _request(request, controls.requests[request], model, owner, st, settings, out) or acted
    phase = st.status.phase
    if acted or phase in TERMINAL_PHASES or phase == Phase.pending:
        _control_conditions(st, controls, out)
        return
    owner = owner_for(owner, st.status)
    if phase == Phase.compressing:
        _compressing(model, owner, st, observed, settings, out)
    elif phase == Phase.packaging:
        _packaging(model, owner, st, observed, settings, out)
    elif phase == Phase.deploying:
        _deploying(model, owner, st, observed, settings, out, controls.paused)
    else:
        _evaluating(model, owner, st, observed, settings, out, controls.paused)
    _control_conditions(st, controls, out)


# ---------------------------------------------------------------------------------------------
# the user's controls
# ---------------------------------------------------------------------------------------------


def _request(
    request: Request,
    value: str,
    model: CompressedModel,
    owner: b.Owner,
    st: _Status,
    settings: OperatorSettings,
    out: Plan,
) -> bool:
    """Act on one request, or say why not; either way it is handled (recorded) and never acted on again."""
    handled = st.status.handled_requests
    st.status.handled_requests = HandledRequests.model_validate(
        {**(handled.model_dump(exclude_unset=True) if handled else {}), request: value}
    )
    phase = st.status.phase
    gen = owner.generation
    if request == "abort":
        if phase in TERMINAL_PHASES or phase == Phase.pending:
            out.events.append(("Warning", f"abort refused: generation {gen} is already {phase.value}"))
            return False
        _abort(model, owner, st, settings, out)
        return True
    if request == "promote":
        if phase not in PROMOTABLE:
            why = (
                f"generation {gen} is already {phase.value}"
                if phase in TERMINAL_PHASES
                else f"generation {gen} is {phase.value}: no canary serves yet (promote once it is Evaluating)"
            )
            out.events.append(("Warning", f"promote refused: {why}"))
            return False
        _promote_by_hand(model, owner, st, settings, out)
        return True
    if phase not in RETRYABLE:
        out.events.append(("Warning", f"retry refused: generation {gen} is {phase.value}; only a RolledBack or "
                                      "Failed generation is retried"))  # fmt: skip
        return False
    if not st.status.candidate_variant:
        out.events.append(("Warning", f"retry refused: generation {gen} has no compression output to deploy again "
                                      f"({st.status.message or 'compression did not finish'}); fix the cause "
                                      "and change the spec to compress again"))  # fmt: skip
        return False
    _retry(model, owner, st, settings, out)
    return True


def _in_flight_job(owner: b.Owner, st: _Status) -> str | None:
    """The Job the current phase waits on (None when it waits on none)."""
    phase = st.status.phase
    if phase == Phase.compressing:
        return b.compressing_job_name(owner)
    if phase == Phase.packaging:
        return b.packaging_job_name(owner)
    if phase in PROMOTABLE:
        return b.evaluator_job_name(owner, len(st.status.steps))
    return None


def _abort(model: CompressedModel, owner: b.Owner, st: _Status, settings: OperatorSettings, out: Plan) -> None:
    """Roll back now: the Job in flight goes, all traffic back on the stable, the canary drains."""
    phase = st.status.phase
    job = _in_flight_job(owner, st)
    if job:
        out.delete.append(("batch/v1", "Job", job))
    stable = _stable(st.status, owner.generation)
    msg = f"aborted by hand during {phase.value}: nothing promoted"
    if phase in (Phase.deploying, *PROMOTABLE):
        candidate = _candidate(st.status, owner)
        msg = f"rolled back to {stable.variant}: aborted by hand at {st.status.canary_weight or 0}% ({phase.value})"
        st.status.decision = "RolledBack"
        st.status.canary_weight = 0
        _back_to_stable(model, owner, st, stable, candidate, settings, out)
    serving = st.status.canary_weight is not None
    st.phase(
        Phase.rolled_back, msg + (f"; stable variant {stable.variant} keeps serving all traffic" if serving else "")
    )
    st.condition("Promoted", "False", "Aborted", msg)
    st.condition("Ready", "True" if serving else "False", "ServingStable" if serving else "Aborted",
                 f"stable variant {stable.variant} serves all traffic" if serving else msg)  # fmt: skip
    retry = "; `slimserve retry` deploys and judges it again" if st.status.candidate_variant else ""
    out.events.append(("Warning", msg + retry))


def _promote_by_hand(
    model: CompressedModel, owner: b.Owner, st: _Status, settings: OperatorSettings, out: Plan
) -> None:
    """Skip the remaining steps (or give the manual approval): the step in flight is called off."""
    job = _in_flight_job(owner, st)
    if job:
        out.delete.append(("batch/v1", "Job", job))
    weight = st.status.canary_weight or 0
    waiting = _condition_true(st, "WaitingForApproval")
    skipped = [w for w in model.spec.rollout.steps if w > weight] if not waiting else []
    reason = "approved by hand" if waiting else "promoted by hand at " + f"{weight}%" + (
        f", skipping the steps at {', '.join(f'{w}%' for w in skipped)}" if skipped else "")  # fmt: skip
    if waiting:
        st.condition("WaitingForApproval", "False", "Approved", "approved by `slimserve promote`")
    stable, candidate = _stable(st.status, owner.generation), _candidate(st.status, owner)
    _promote(model, owner, st, stable, candidate, settings, out, reason, "PromotedByHand")
    out.events.append(("Normal", str(st.status.message)))


def _retry(model: CompressedModel, owner: b.Owner, st: _Status, settings: OperatorSettings, out: Plan) -> None:
    """Package, deploy and judge this generation's candidate again; its compression output is reused."""
    _drain_if_due(owner, st, out, force=True)  # the canary's drain must not scale the retried canary down
    retries = (st.status.retries or 0) + 1
    owner = replace(owner, attempt=retries)
    st.status.retries = retries
    st.status.steps = []
    st.status.failed_steps = 0
    st.status.decision = None
    st.status.canary_step = None
    st.status.p99_ms = None
    st.status.throughput_rps = None
    st.status.waiting_for = None
    st.status.webhook_retry_at = None
    st.status.pre_rollout_failures = None
    candidate = st.status.candidate_variant
    msg = (f"retry {retries}: packaging, deploying and judging candidate {candidate} of generation "
           f"{owner.generation} again from its compression output (no new compression)")  # fmt: skip
    st.phase(Phase.packaging, msg, settings.packaging_deadline_seconds + DEADLINE_GRACE_S)
    serving = st.status.canary_weight is not None
    st.condition("Deployed", "Unknown", "Packaging", f"Job {b.packaging_job_name(owner)} is running")
    st.condition("Evaluated", "Unknown", "Pending", "waiting for deployment")
    st.condition("Promoted", "Unknown", "Pending", "waiting for the gate")
    stable = st.status.stable_variant or BASELINE
    st.condition("Ready", "True" if serving else "False", "ServingStable" if serving else "Retrying",
                 f"stable variant {stable} serves all traffic" if serving else "nothing is served yet")  # fmt: skip
    out.apply.append(_packaging_job(model, owner, st.status, settings))
    out.events.append(("Normal", msg))


def _condition_true(st: _Status, type: str) -> bool:
    return any(c.type == type and c.status == "True" for c in st.status.conditions)


def _control_conditions(st: _Status, controls: Controls, out: Plan) -> None:
    """Paused follows the pause request while a rollout is in flight; an ended rollout waits for nothing."""
    phase = st.status.phase
    was_paused = _condition_true(st, "Paused")
    if phase in TERMINAL_PHASES:
        for type in ("Paused", "WaitingForApproval", "WaitingForWebhook"):
            if _condition_true(st, type):
                st.condition(type, "False", "RolloutEnded", f"the rollout ended {phase.value}")
        st.status.waiting_for = None
        st.status.webhook_retry_at = None
        return
    if controls.paused and not was_paused:
        msg = "paused by `slimserve pause`: no new step starts (a step in flight is judged first); " \
              "`slimserve resume` goes on"  # fmt: skip
        st.condition("Paused", "True", "PausedByUser", msg)
        out.events.append(("Normal", f"paused during {phase.value}: {msg}"))
    elif not controls.paused and was_paused:
        st.condition("Paused", "False", "Resumed", "resumed by `slimserve resume`")
        out.events.append(("Normal", f"resumed: {st.status.message or phase.value}"))


def _fail(st: _Status, condition: str, reason: str, why: str) -> None:
    serving = st.status.canary_weight is not None
    stable = st.status.stable_variant or BASELINE
    st.phase(Phase.failed, why + (f"; stable variant {stable} keeps serving all traffic" if serving else ""))
    st.condition(condition, "False", reason, why)
    st.condition(
        "Ready",
        "True" if serving else "False",
        "ServingStable" if serving else reason,
        f"stable variant {stable} serves all traffic" if serving else why,
    )


def _job_phase(st: _Status, job: JobState | None, name: str, what: str, condition: str, api_error: str) -> str | None:
    """Common to the Job phases: "failed"/"late" after setting Failed, "missing", "running" or "done"."""
    if job is not None and job.failed:
        _fail(st, condition, f"{what}Failed", job.describe(name))
        return "failed"
    if job is not None and job.succeeded:
        return "done"
    if st.past_deadline():
        why = job.describe(name) if job is not None else f"Job {name} was never created ({api_error or 'unknown'})"
        _fail(st, condition, "DeadlineExceeded", f"{what.lower()} did not finish by {st.status.deadline}: {why}")
        return "late"
    return "missing" if job is None else "running"


def _compressing(
    model: CompressedModel, owner: b.Owner, st: _Status, observed: Observed, settings: OperatorSettings, out: Plan
) -> None:
    job = observed.compression_job
    name = b.compressing_job_name(owner)
    state = _job_phase(st, job, name, "Compression", "Compressed", observed.api_error)
    if state == "missing":  # deleted, or its create was refused: ask again
        out.apply += [b.build_spec_config_map(model, owner), _compression_job(model, owner, st.status, settings)]
    if state != "done":
        return
    assert job is not None
    reused = ""
    if b.reuses_compression(owner):
        reused = (f"reused from generation {owner.compressed_generation} (hash {str(st.status.compression_hash)[:12]}), "
                  "no new compression; ")  # fmt: skip
    else:  # the output is on the volume whatever the choice: a later generation with the same hash reuses it
        # (a status with no compressionHash is refused here, as CompressionOutput requires one)
        st.status.compression = CompressionOutput.model_validate(
            {"hash": st.status.compression_hash, "generation": owner.generation}
        )
    choice = parse_choice(job.output)
    if choice is None or choice.get("candidate") is None:
        why = choice["reason"] if choice else f"Job {name} left no candidate choice in its termination message"
        _fail(st, "Compressed", "NoCandidate", reused + why)
        return
    chosen = choice["candidate"]
    st.status.candidate_variant = chosen["name"]
    st.status.size_ratio = chosen.get("compressionRatio")
    st.status.metric = chosen.get("metric")
    st.status.quality_drop = chosen.get("drop")
    served = b.canary_variant(st.status, owner.generation)
    assert served is not None
    msg = (f"{reused}candidate {chosen['name']} ({choice.get('reason')}): size ratio {chosen.get('compressionRatio')}, "
           f"{chosen.get('metric')} drop {chosen.get('drop')} {chosen.get('dropUnit') or ''}".rstrip())  # fmt: skip
    if served != chosen["name"]:
        msg += (
            f"; it serves as {served}: {chosen['name']} is the name of a variant already deployed (stable or "
            "kept from the last promotion)"
        )
    st.condition("Compressed", "True", "CandidateChosen", msg)
    st.phase(Phase.packaging, f"packaging the model repository; {msg}",
             settings.packaging_deadline_seconds + DEADLINE_GRACE_S)  # fmt: skip
    st.condition("Deployed", "Unknown", "Packaging", f"Job {b.packaging_job_name(owner)} is running")
    out.apply.append(_packaging_job(model, owner, st.status, settings))


def _packaging_job(
    model: CompressedModel, owner: b.Owner, status: CompressedModelStatus, settings: OperatorSettings
) -> Manifest:
    served = b.canary_variant(status, owner.generation)
    assert served is not None and status.candidate_variant is not None
    first = status.stable_generation is None  # the baseline is packaged once, as the first stable
    return b.build_packaging_job(model, owner, settings, status.candidate_variant, served, with_baseline=first)


def _packaging(
    model: CompressedModel, owner: b.Owner, st: _Status, observed: Observed, settings: OperatorSettings, out: Plan
) -> None:
    state = _job_phase(st, observed.packaging_job, b.packaging_job_name(owner), "Packaging", "Deployed",
                       observed.api_error)  # fmt: skip
    if state == "missing":
        out.apply.append(_packaging_job(model, owner, st.status, settings))
    if state != "done":
        return
    if st.status.stable_generation is None:
        st.status.stable_generation = owner.generation
    stable, candidate = _stable(st.status, owner.generation), _candidate(st.status, owner)
    st.status.model_name = b.model_name(model)
    st.status.endpoint = b.endpoint(model, owner, settings)
    st.phase(Phase.deploying, f"deploying Triton for stable {stable.variant}, canary {candidate.variant} and the "
             "control", seconds(model.spec.serving.deploy_deadline))  # fmt: skip
    st.condition(
        "Deployed",
        "False",
        "WaitingForReadiness",
        f"Triton for {stable.variant}, {candidate.variant} and the control starting",
    )
    out.apply += _deploy_children(model, owner, stable, candidate, settings)


def _candidate(status: CompressedModelStatus, owner: b.Owner) -> Served:
    served = b.canary_variant(status, owner.generation)
    assert served is not None, "a candidate is chosen before packaging"
    return Served(served, owner.generation)


def _deploying(
    model: CompressedModel,
    owner: b.Owner,
    st: _Status,
    observed: Observed,
    settings: OperatorSettings,
    out: Plan,
    paused: bool = False,
) -> None:
    stable, candidate = _stable(st.status, owner.generation), _candidate(st.status, owner)
    names = {b.triton_name(owner, stable.variant): "stable", b.triton_name(owner, candidate.variant): "canary",
             b.control_name(owner): "control"}  # fmt: skip
    states = observed.deployments
    gateway = _gateway(model)
    route = observed.route or RouteState()
    failed = [f"{role} ({n}): {states[n].failed}" for n, role in names.items() if n in states and states[n].failed]
    if failed or st.past_deadline():
        waiting = [
            f"{role} ({n}): {states[n].waiting or 'not ready'}"
            for n, role in names.items()
            if n in states and not states[n].ready
        ]
        waiting += [f"{role} ({n}): never created" for n, role in names.items() if n not in states]
        if gateway and not route.accepted:
            waiting.append(f"HTTPRoute {b.route_name(owner)}: {route.message or 'not accepted'}")
        why = (
            "; ".join(failed)
            if failed
            else f"Triton was not ready by {st.status.deadline}: {'; '.join(waiting)} {observed.api_error}".rstrip()
        )
        _fail(st, "Deployed", "DeploymentFailed" if failed else "DeadlineExceeded", why)
        _scale_down(owner, [b.triton_name(owner, candidate.variant)], out)
        _remove_control(owner, out)
        return
    if any(n not in states for n in names) or (gateway and observed.route is None):
        out.apply += _deploy_children(model, owner, stable, candidate, settings)
    if gateway:
        if route.accepted:
            st.condition("TrafficReady", "True", "RouteAccepted", f"HTTPRoute {b.route_name(owner)} is accepted")
        elif observed.route is not None:
            gw = model.spec.rollout.gateway or settings.gateway_name
            why = (
                (
                    f"Gateway {gw} not found: create it, or name yours in spec.rollout.gateway (or the chart's "
                    "gateway.name)"
                )
                if route.message == "GatewayNotFound"
                else f"HTTPRoute {b.route_name(owner)} is not accepted by Gateway {gw}: {route.message}"
            )
            st.condition("TrafficReady", "False", "RouteNotAccepted", why)
    if all(n in states and states[n].ready for n in names) and (route.accepted or not gateway):
        st.condition(
            "Deployed",
            "True",
            "DeploymentsReady",
            f"Triton serves {stable.variant} (stable), {candidate.variant} (canary) and the control",
        )
        if paused:  # ready, and waiting with no deadline: the first step starts on resume
            st.phase(Phase.deploying, f"paused: Triton serves {stable.variant}, {candidate.variant} and the control; "
                     "the served quality check starts on `slimserve resume`")  # fmt: skip
            return
        verdict = _webhook_gate(model, owner, st, observed, "start", out)
        if verdict is None:
            return
        if verdict.action == "rollback":
            _roll_back(model, owner, st, stable, candidate, settings, out, "RolledBack", verdict.reason,
                       "PreRolloutFailed")  # fmt: skip
            return
        _start_step(model, owner, st, 0, 0, stable, candidate, settings, out)


def _start_step(
    model: CompressedModel,
    owner: b.Owner,
    st: _Status,
    index: int,
    weight: int,
    stable: Served,
    candidate: Served,
    settings: OperatorSettings,
    out: Plan,
) -> None:
    steps = model.spec.rollout.steps
    st.status.canary_weight = weight
    st.status.canary_step = steps.index(weight) if weight in steps else None
    job = b.evaluator_job_name(owner, index)
    deadline = seconds(model.spec.rollout.evaluator.deadline) + DEADLINE_GRACE_S
    if weight == policy.QUALITY_WEIGHT:
        st.phase(Phase.evaluating, f"served quality of canary {candidate.variant} against the baseline ({job})",
                 deadline)  # fmt: skip
        st.condition("Evaluated", "Unknown", "Evaluating", f"Job {job} judges {candidate.variant}'s served quality")
    else:
        where = steps.index(weight) + 1
        st.phase(Phase.progressing, f"canary {candidate.variant} at {weight}% (step {where} of {len(steps)}, {job})",
                 deadline)  # fmt: skip
        st.condition("Evaluated", "Unknown", "Evaluating", f"Job {job} judges {candidate.variant} at {weight}%")
    out.apply += _traffic(model, owner, stable, candidate, weight, settings)
    out.apply.append(b.build_evaluator_job(model, owner, index, weight, stable.variant, candidate.variant, settings))


def _evaluating(
    model: CompressedModel,
    owner: b.Owner,
    st: _Status,
    observed: Observed,
    settings: OperatorSettings,
    out: Plan,
    paused: bool = False,
) -> None:
    stable, candidate = _stable(st.status, owner.generation), _candidate(st.status, owner)
    judged = _steps(st.status)
    index = len(judged)
    pending = _next(model, judged)
    if pending.decision is not None:  # every step passed: waiting for approval, or for confirm-promotion webhooks
        if pending.decision == "Promoted" and model.spec.rollout.approval == "auto":
            _decide(model, owner, st, observed, stable, candidate, settings, out, pending, "")
        return
    assert pending.weight is not None
    name = b.evaluator_job_name(owner, index)
    job = observed.evaluator_job
    if job is None and not st.status.deadline:  # between steps, paused (no deadline): resume starts the next
        if not paused and _before_step(model, owner, st, observed, stable, candidate, settings, out, index):
            _start_step(model, owner, st, index, pending.weight, stable, candidate, settings, out)
        return
    if job is None or not job.finished:
        if st.past_deadline():
            why = job.describe(name) if job is not None else f"Job {name} was never created ({observed.api_error})"
            out.delete.append(("batch/v1", "Job", name))
            _give_up(
                owner,
                st,
                stable,
                candidate,
                model,
                settings,
                out,
                "DeadlineExceeded",
                f"the step at {pending.weight}% did not finish by {st.status.deadline}: {why}",
            )
        elif job is None:  # deleted, or its create was refused: ask again
            out.apply.append(b.build_evaluator_job(model, owner, index, pending.weight, stable.variant,
                                                   candidate.variant, settings))  # fmt: skip
        return
    report = parse_step_report(job)
    if report is None:
        _give_up(
            owner,
            st,
            stable,
            candidate,
            model,
            settings,
            out,
            "EvaluatorFailed",
            f"the step at {pending.weight}% was not judged: {job.describe(name)}",
        )
        return
    step = report.step
    record = JudgedStep(
        weight=step.weight,
        verdict=step.verdict,
        checks=[CheckVerdict(name=c.name, verdict=c.verdict) for c in step.checks],
    )
    st.status.steps = [*st.status.steps, record]
    mine = (report.load or {}).get("candidate")
    if mine:
        st.status.p99_ms = mine.p99_ms
        st.status.throughput_rps = mine.rps
    nxt = _next(model, [*judged, step])
    st.status.failed_steps = nxt.failures
    failing = ", ".join(f"{c.name} {c.verdict}" for c in step.checks if c.verdict != "Pass")
    where = "served quality" if step.weight == 0 else f"canary at {step.weight}%"
    if nxt.decision is None:
        assert nxt.weight is not None
        if step.verdict == "Pass":
            st.condition("Evaluated", "True", "StepPassed", f"{where} passed the gate")
        else:
            st.condition(
                "Evaluated",
                "False",
                "StepFailed" if step.verdict == "Fail" else "StepInconclusive",
                f"{where} was {step.verdict} ({failing}); judging {nxt.weight}% again ({nxt.reason})",
            )
        if paused:  # no deadline while paused: the next step starts on resume
            st.phase(st.status.phase, f"paused after the {where} step ({step.verdict}); canary "
                     f"{candidate.variant} keeps {st.status.canary_weight or 0}% until `slimserve resume` starts "
                     f"the step at {nxt.weight}%")  # fmt: skip
            return
        st.status.deadline = None  # the step is judged: between steps, until the next one starts
        if _before_step(model, owner, st, observed, stable, candidate, settings, out, index + 1):
            _start_step(model, owner, st, index + 1, nxt.weight, stable, candidate, settings, out)
        return
    out.gate_decision = nxt.decision
    if nxt.decision == "Promoted" and model.spec.rollout.approval == "manual":
        msg = (f"every step passed ({nxt.reason}); canary {candidate.variant} keeps {st.status.canary_weight}% "
               "until someone approves with `slimserve promote` (or rolls back with `slimserve abort`)")  # fmt: skip
        st.phase(st.status.phase, f"waiting for approval: {msg}")
        st.condition("WaitingForApproval", "True", "ManualApproval", msg)
        out.events.append(("Normal", f"waiting for approval: {msg}"))
        return
    _decide(model, owner, st, observed, stable, candidate, settings, out, nxt, failing)


def _decide(
    model: CompressedModel,
    owner: b.Owner,
    st: _Status,
    observed: Observed,
    stable: Served,
    candidate: Served,
    settings: OperatorSettings,
    out: Plan,
    nxt: policy.NextStep,
    failing: str,
) -> None:
    """The policy decided: a promotion first asks rollback, then confirm-promotion webhooks (and may wait)."""
    assert nxt.decision is not None, "called once the policy decided"
    if nxt.decision != "Promoted":
        _roll_back(model, owner, st, stable, candidate, settings, out, nxt.decision, f"{nxt.reason} ({failing})")
        return
    st.status.deadline = None  # judged: a wait for confirm-promotion has no deadline
    verdict = _webhook_gate(model, owner, st, observed, "promotion", out)
    if verdict is None:
        return
    if verdict.action == "rollback":
        _roll_back(model, owner, st, stable, candidate, settings, out, "RolledBack", verdict.reason, "WebhookRollback")
        return
    _promote(model, owner, st, stable, candidate, settings, out, nxt.reason)


def _before_step(
    model: CompressedModel,
    owner: b.Owner,
    st: _Status,
    observed: Observed,
    stable: Served,
    candidate: Served,
    settings: OperatorSettings,
    out: Plan,
    index: int,
) -> bool:
    """Before every step after the first, rollback webhooks are asked: True when the step may start."""
    if index == 0:
        return True
    verdict = _webhook_gate(model, owner, st, observed, "step", out)
    if verdict is not None and verdict.action == "rollback":
        _roll_back(model, owner, st, stable, candidate, settings, out, "RolledBack", verdict.reason, "WebhookRollback")
    return verdict is not None and verdict.action == "go"


def _webhook_gate(
    model: CompressedModel, owner: b.Owner, st: _Status, observed: Observed, point: webhooks.Point, out: Plan
) -> webhooks.Verdict | None:
    """The webhooks of `point` (go or rollback), or None when this pass does nothing more: their answers are
    needed first (`out.ask`), or the rollout waits for them (status.waitingFor) until status.webhookRetryAt."""
    rollout = model.spec.rollout
    hooks = webhooks.of_type(rollout.webhooks, *webhooks.POINTS[point])
    if not hooks:
        return webhooks.Verdict("go")
    retry_at = st.status.webhook_retry_at
    if retry_at and _parse_time(st.now) < _parse_time(str(retry_at)):
        return None
    failures = int(st.status.pre_rollout_failures or 0)
    verdict = webhooks.gate(hooks, point, observed.webhooks, failures, rollout.failure_budget)
    if verdict.action == "ask":
        context = _context(owner, st.status)
        out.ask = [(hook, webhooks.payload(hook, context)) for hook in verdict.ask]
        return None
    for hook in webhooks.of_type(hooks, "rollback"):  # unreachable: no rollback, but someone should know
        answer = observed.webhooks.get(hook.name)
        if answer is not None and answer.kind in ("timeout", "error"):
            out.events.append(("Warning", f"{webhooks.named(hook)} could not be asked ({answer.describe()}); the "
                                          "rollout goes on"))  # fmt: skip
    if verdict.action in ("wait", "retry"):
        every = webhooks.retry_seconds(rollout)
        retry = verdict.action == "retry"
        if retry:
            st.status.pre_rollout_failures = failures + 1
        changed = retry or verdict.waiting_for != st.status.waiting_for
        reason = "PreRolloutFailed" if retry else "ConfirmRollout" if point == "start" else "ConfirmPromotion"
        then = "the first step starts" if point == "start" else "the canary is promoted"
        msg = (
            f"waiting for {verdict.waiting_for}: asked again every {every:g} s; {then} once it answers 2xx "
            "(`slimserve abort` rolls back, `slimserve promote` promotes without it once the canary serves)"
        )
        st.status.waiting_for = verdict.waiting_for
        st.status.webhook_retry_at = _after(st.now, every)
        st.phase(st.status.phase, msg)
        st.condition("WaitingForWebhook", "True", reason, msg)
        if changed:
            out.events.append(("Warning" if retry else "Normal", msg))
        return None
    if st.status.waiting_for:
        msg = f"{st.status.waiting_for} no longer holds the rollout: " + (
            verdict.reason if verdict.action == "rollback" else "every webhook answered 2xx"
        )
        st.condition("WaitingForWebhook", "False", "Answered", msg)
        out.events.append(("Normal", msg))
    st.status.waiting_for = None
    st.status.webhook_retry_at = None
    return verdict


def _context(owner: b.Owner, status: CompressedModelStatus) -> webhooks.Context:
    return webhooks.Context(model=owner.name, namespace=owner.namespace, phase=status.phase.value,
                            variant=status.candidate_variant, stable=status.stable_variant,
                            weight=status.canary_weight, message=status.message or "")  # fmt: skip


def _promote(
    model: CompressedModel,
    owner: b.Owner,
    st: _Status,
    old: Served,
    new: Served,
    settings: OperatorSettings,
    out: Plan,
    reason: str,
    condition_reason: str = "GatePassed",
) -> None:
    """All traffic on the promoted variant; the old stable drains, then stops using resources but is kept.

    The new stable keeps its pods (label change only). The old stable's Deployment ends at 0 replicas
    without an autoscaler; its Service stays.
    """
    msg = f"{new.variant} promoted ({reason}): it serves all traffic; {old.variant} drains, then is kept at 0 replicas"
    st.status.stable_variant = new.variant
    st.status.stable_generation = new.generation
    st.status.previous_stable_variant = old.variant
    st.status.previous_stable_generation = old.generation
    st.status.decision = "Promoted"
    st.status.canary_weight = 100
    st.phase(Phase.promoted, msg)
    st.condition("Promoted", "True", condition_reason, msg)
    st.condition("Ready", "True", "Promoted", msg)
    if _gateway(model):
        out.apply += _traffic(model, owner, new, None, 0, settings)
        out.apply.append(b.build_triton_deployment(model, owner, new, "stable", settings))
        out.apply.append(b.build_triton_deployment(model, owner, old, "previous", settings))
    else:
        stable_n, _ = b.split_replicas(settings.split_replicas, _replica_weight(model, 100))
        out.apply.append(b.build_triton_deployment(model, owner, new, "stable", settings,
                                                   replicas=settings.split_replicas))  # fmt: skip
        out.apply.append(b.build_triton_deployment(model, owner, old, "previous", settings, replicas=stable_n))
    _remove_control(owner, out)
    _drain(owner, [old.variant], st, out, settings)


def _roll_back(
    model: CompressedModel,
    owner: b.Owner,
    st: _Status,
    stable: Served,
    candidate: Served,
    settings: OperatorSettings,
    out: Plan,
    decision: policy.Decision,
    reason: str,
    condition_reason: str = "",
) -> None:
    msg = (
        f"rolled back to {stable.variant}: {reason}"
        if decision == "RolledBack"
        else f"nothing promoted, {stable.variant} keeps serving: {reason}"
    )
    why = condition_reason or ("GateFailed" if decision == "RolledBack" else "Inconclusive")
    st.status.decision = decision
    st.status.canary_weight = 0
    st.phase(Phase.rolled_back, msg)
    st.condition("Evaluated", "False", why, msg)
    st.condition("Promoted", "False", why, msg)
    if condition_reason:  # a webhook's doing, not the gate's: say so where people look
        out.events.append(("Warning", msg))
    st.condition("Ready", "True", "ServingStable", f"stable variant {stable.variant} serves all traffic")
    _back_to_stable(model, owner, st, stable, candidate, settings, out)


def _give_up(
    owner: b.Owner,
    st: _Status,
    stable: Served,
    candidate: Served,
    model: CompressedModel,
    settings: OperatorSettings,
    out: Plan,
    reason: str,
    why: str,
) -> None:
    """The rollout cannot be judged (an evaluator that crashed or never ran): Failed, traffic back on stable."""
    st.status.canary_weight = 0
    _fail(st, "Evaluated", reason, why)
    _back_to_stable(model, owner, st, stable, candidate, settings, out)


def _back_to_stable(
    model: CompressedModel,
    owner: b.Owner,
    st: _Status,
    stable: Served,
    candidate: Served,
    settings: OperatorSettings,
    out: Plan,
) -> None:
    if _gateway(model):
        out.apply += _traffic(model, owner, stable, None, 0, settings)
    else:
        out.apply.append(b.build_triton_deployment(model, owner, stable, "stable", settings,
                                                   replicas=settings.split_replicas))  # fmt: skip
    _remove_control(owner, out)
    _drain(owner, [candidate.variant], st, out, settings)
