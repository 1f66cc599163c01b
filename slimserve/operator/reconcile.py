"""The phase machine, pure: spec + current status + observed children → children to apply + status.

`Pending → Compressing → Packaging → Deploying → Evaluating → Progressing → Promoted | RolledBack
| Failed`. Every decision is a function of what was observed (Job finished? Deployment ready?
report written?), so running it twice, or after an operator restart, gives the same answer and
the same deterministic child names: nothing is duplicated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Final

from slimserve.api import CompressedModel, Phase, set_condition
from slimserve.api.status import TERMINAL_PHASES
from slimserve.operator import builders as b
from slimserve.operator.settings import OperatorSettings

Manifest = dict[str, Any]
BASELINE: Final = "baseline"
OBJECTIVE_KEYS: Final = {"size": "compressionRatio", "latency": "speedup", "throughput": "throughputRps"}


@dataclass(frozen=True)
class JobState:
    """What a Job reports about itself (level, not edge)."""

    succeeded: bool = False
    failed: bool = False
    reason: str = ""
    message: str = ""

    @property
    def finished(self) -> bool:
        return self.succeeded or self.failed

    @classmethod
    def from_job(cls, job: dict[str, Any]) -> JobState:
        status = job.get("status") or {}
        for cond in status.get("conditions") or []:
            if cond.get("status") != "True":
                continue
            if cond.get("type") in ("Complete", "SuccessCriteriaMet"):
                return cls(succeeded=True, reason=cond.get("reason", "Complete"), message=cond.get("message", ""))
            if cond.get("type") in ("Failed", "FailureTarget"):
                return cls(failed=True, reason=cond.get("reason") or "JobFailed", message=cond.get("message", ""))
        if (status.get("succeeded") or 0) >= 1:
            return cls(succeeded=True, reason="Complete")
        return cls()


@dataclass(frozen=True)
class Observed:
    """The children the current phase waits on; None means the child does not exist (yet)."""

    compression_job: JobState | None = None
    compression_summary: dict[str, Any] | None = None
    packaging_job: JobState | None = None
    deployments_ready: dict[str, bool] = field(default_factory=dict)  # variant -> ready; absent = missing
    evaluator_job: JobState | None = None
    report: dict[str, Any] | None = None


@dataclass
class Plan:
    """Children to create-or-patch, autoscalers to remove, and the whole new status.

    `delete` runs before `apply`: an autoscaler still in place would scale a Deployment the plan
    sets to 0 replicas straight back up (KEDA enforces its minimum).
    """

    apply: list[Manifest] = field(default_factory=list)
    delete: list[tuple[str, str, str]] = field(default_factory=list)  # (apiVersion, kind, name)
    status: dict[str, Any] = field(default_factory=dict)
    gate_decision: str | None = None


def deployment_ready(deployment: dict[str, Any]) -> bool:
    status = deployment.get("status") or {}
    return int(status.get("readyReplicas") or 0) >= 1


def parse_report(config_map: dict[str, Any] | None) -> dict[str, Any] | None:
    """The evaluator's EvaluationReport from its ConfigMap, or None while it is not written."""
    if not config_map:
        return None
    raw = (config_map.get("data") or {}).get(b.REPORT_KEY)
    if not raw:
        return None
    try:
        report = json.loads(raw)
    except ValueError:
        return {"decision": "Inconclusive", "reason": "the report in the ConfigMap is not valid JSON", "steps": []}
    return report if isinstance(report, dict) else None


def parse_summary(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        summary = json.loads(text.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None
    return summary if isinstance(summary, dict) and isinstance(summary.get("variants"), list) else None


def choose_candidate(model: CompressedModel, summary: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """The variant to roll out: the named one, the search's choice, or the best one within the gate.

    Returns (variant record, why) — the record is None with a reason a person can act on.
    """
    variants = {v["name"]: v for v in summary.get("variants", []) if isinstance(v, dict) and v.get("name")}
    wanted = model.spec.rollout.candidate
    if wanted != "auto":
        if wanted not in variants:
            return None, f"rollout.candidate '{wanted}' is not in the compression report ({sorted(variants)})"
        return variants[wanted], "named by rollout.candidate"
    chosen = summary.get("chosen")
    if chosen in variants:
        return variants[chosen], "chosen by the search"
    limit = model.spec.gates.max_accuracy_drop
    eligible = [v for v in variants.values() if v.get("accuracyDrop") is not None and v["accuracyDrop"] <= limit]
    if not eligible:
        drops = ", ".join(f"{n}: {v.get('accuracyDrop')}" for n, v in sorted(variants.items()))
        return None, (
            f"no variant drops at most {limit} points of accuracy ({drops}); "
            "relax gates.maxAccuracyDrop or add recipes"
        )
    search = model.spec.compression.search
    key = OBJECTIVE_KEYS[search.objective if search else "size"]
    best = max(eligible, key=lambda v: (v.get(key) or 0.0, -(v.get("accuracyDrop") or 0.0)))
    return best, f"best {key} within maxAccuracyDrop {limit}"


def _check_value(report: dict[str, Any], needle: str) -> float | None:
    steps = report.get("steps") or []
    for check in (steps[-1].get("checks") or []) if steps else []:
        if needle in str(check.get("name", "")).lower() and isinstance(check.get("value"), int | float):
            return float(check["value"])
    return None


class _Status:
    """A mutable working copy of status with condition helpers bound to generation and time."""

    def __init__(self, status: dict[str, Any], generation: int, now: str) -> None:
        self.data = {k: v for k, v in status.items()}
        self.data.setdefault("conditions", [])
        self.generation = generation
        self.now = now

    def condition(self, type: str, status: str, reason: str, message: str = "") -> None:
        self.data["conditions"] = set_condition(
            list(self.data.get("conditions") or []), type, status, reason, message,  # type: ignore[arg-type]
            observed_generation=self.generation, now=self.now,
        )

    def phase(self, phase: Phase, message: str) -> None:
        self.data["phase"] = phase.value
        self.data["message"] = message


def _serving_children(
    model: CompressedModel, owner: b.Owner, variant: str, role: b.Role, settings: OperatorSettings,
    replicas: int | None, autoscale: bool,
) -> list[Manifest]:
    out = [
        b.build_triton_deployment(model, owner, variant, role, settings, replicas=replicas),
        b.build_triton_service(owner, variant),
    ]
    if autoscale:
        out.append(b.build_autoscaler(model, owner, variant, settings))
    return out


def _traffic(
    model: CompressedModel, owner: b.Owner, stable: str, candidate: str | None, weight: int,
    settings: OperatorSettings,
) -> list[Manifest]:
    """Children that carry the canary weight: the HTTPRoute, or the replica counts."""
    if model.spec.rollout.traffic_split == "gateway":
        return [b.build_httproute(model, owner, stable, candidate, weight, settings)]
    stable_n, canary_n = b.split_replicas(settings.split_replicas, weight)
    out = [b.build_triton_deployment(model, owner, stable, "stable", settings, replicas=stable_n)]
    if candidate is not None:
        out.append(b.build_triton_deployment(model, owner, candidate, "canary", settings, replicas=canary_n))
    return out


def _evaluation_children(
    model: CompressedModel, owner: b.Owner, step: int, attempt: int, stable: str, candidate: str,
    settings: OperatorSettings,
) -> list[Manifest]:
    return [
        b.build_report_config_map(owner, step, attempt),
        b.build_evaluator_job(model, owner, step, stable, candidate, settings, attempt=attempt),
    ]


def start_pipeline(
    model: CompressedModel, owner: b.Owner, status: dict[str, Any], settings: OperatorSettings, now: str
) -> Plan:
    """A new generation: compress again; whatever serves keeps serving from the stable variant."""
    previous_weight = status.get("canaryWeight")
    stable = status.get("stableVariant") or BASELINE
    st = _Status({"conditions": status.get("conditions") or []}, owner.generation, now)
    st.data.update(
        observedGeneration=owner.generation, stableVariant=stable,
        previousStableVariant=status.get("previousStableVariant"), candidateVariant=None, sizeRatio=None,
        accuracyDrop=None, p99Ms=None, throughputRps=None, canaryStep=None, decision=None,
        reportConfigMap=None, failedSteps=0, canaryWeight=0 if previous_weight is not None else None,
    )
    st.phase(Phase.compressing, f"compressing generation {owner.generation} ({b.compression_job_name(owner)})")
    st.condition("Compressed", "Unknown", "Compressing", f"Job {b.compression_job_name(owner)} is running")
    st.condition("Deployed", "Unknown", "Pending", "waiting for compression")
    st.condition("Evaluated", "Unknown", "Pending", "waiting for deployment")
    st.condition("Promoted", "Unknown", "Pending", "waiting for the gate")
    serving = previous_weight is not None
    st.condition("Ready", "True" if serving else "False", "ServingStable" if serving else "Compressing",
                 f"stable variant {stable} serves all traffic" if serving else "nothing is served yet")
    plan = Plan(status=st.data)
    plan.apply.append(b.build_spec_config_map(model, owner))
    if not model.spec.serving.model_repository.pvc:
        plan.apply.append(b.build_model_repository_pvc(model, owner, settings))
    plan.apply.append(b.build_compression_job(model, owner, settings))
    if serving and model.spec.rollout.traffic_split == "gateway":
        plan.apply.extend(_traffic(model, owner, stable, None, 0, settings))
    return plan


def plan(
    model: CompressedModel,
    owner: b.Owner,
    status: dict[str, Any] | None,
    observed: Observed,
    settings: OperatorSettings,
    now: str,
) -> Plan:
    """One level-based step of the phase machine."""
    status = dict(status or {})
    if status.get("observedGeneration") != owner.generation or not status.get("phase"):
        return start_pipeline(model, owner, status, settings, now)
    phase = Phase(status["phase"])
    st = _Status(status, owner.generation, now)
    out = Plan(status=st.data)
    if phase in TERMINAL_PHASES or phase == Phase.pending:
        return out
    stable = status.get("stableVariant") or BASELINE
    # From packaging on the candidate goes by the name it serves under (its own, or generation-suffixed).
    candidate = b.canary_variant(status, owner.generation)
    steps = model.spec.rollout.steps

    if phase == Phase.compressing:
        job = observed.compression_job
        if job is None:
            out.apply += [b.build_spec_config_map(model, owner), b.build_compression_job(model, owner, settings)]
        elif job.failed:
            why = f"compression Job {b.compression_job_name(owner)} failed: {job.reason}" + (
                f": {job.message}" if job.message else "")
            st.phase(Phase.failed, why)
            st.condition("Compressed", "False", "JobFailed", why)
            st.condition("Ready", "False", "CompressionFailed", why)
        elif job.succeeded:
            summary = observed.compression_summary
            chosen, why = choose_candidate(model, summary) if summary else (
                None, "the compression Job left no summary in its termination message")
            if chosen is None:
                st.phase(Phase.failed, why)
                st.condition("Compressed", "False", "NoCandidate", why)
                st.condition("Ready", "False", "NoCandidate", why)
            else:
                st.data.update(candidateVariant=chosen["name"], sizeRatio=chosen.get("compressionRatio"),
                               accuracyDrop=chosen.get("accuracyDrop"))
                served = b.canary_variant(st.data, owner.generation)
                msg = (f"candidate {chosen['name']} ({why}): size ratio {chosen.get('compressionRatio')}, "
                       f"accuracy drop {chosen.get('accuracyDrop')} points")
                if served != chosen["name"]:
                    msg += (f"; it serves as {served}: {chosen['name']} is the name of a variant already "
                            "deployed (stable or kept from the last promotion)")
                st.condition("Compressed", "True", "CandidateChosen", msg)
                st.phase(Phase.packaging, f"packaging the model repository; {msg}")
                st.condition("Deployed", "Unknown", "Packaging", f"Job {b.packaging_job_name(owner)} is running")
                out.apply.append(b.build_packaging_job(model, owner, settings, chosen["name"], served))
        return out

    assert candidate is not None, "a candidate is chosen before packaging"
    gateway = model.spec.rollout.traffic_split == "gateway"
    if phase == Phase.packaging:
        job = observed.packaging_job
        if job is None:
            out.apply.append(b.build_packaging_job(model, owner, settings, status["candidateVariant"], candidate))
        elif job.failed:
            why = f"packaging Job {b.packaging_job_name(owner)} failed: {job.reason}" + (
                f": {job.message}" if job.message else "")
            st.phase(Phase.failed, why)
            st.condition("Deployed", "False", "PackagingFailed", why)
            st.condition("Ready", "False", "PackagingFailed", why)
        elif job.succeeded:
            st.phase(Phase.deploying, f"deploying Triton for stable {stable} and canary {candidate}")
            st.condition("Deployed", "False", "WaitingForReadiness", f"Triton for {stable} and {candidate} starting")
            out.apply += _deploy_children(model, owner, stable, candidate, settings)
        return out

    if phase == Phase.deploying:
        ready = observed.deployments_ready
        if stable not in ready or candidate not in ready:
            out.apply += _deploy_children(model, owner, stable, candidate, settings)
        elif ready[stable] and ready[candidate]:
            st.condition("Deployed", "True", "DeploymentsReady",
                         f"Triton serves {stable} (stable) and {candidate} (canary)")
            out.apply += _start_step(model, owner, st, 0, stable, candidate, settings)
        return out

    # Evaluating / Progressing: one evaluator Job per canary step (and per retry).
    step = int(status.get("canaryStep") or 0)
    failures = int(status.get("failedSteps") or 0)
    job = observed.evaluator_job
    report = observed.report
    if job is None and report is None:
        out.apply += _evaluation_children(model, owner, step, failures, stable, candidate, settings)
        return out
    if report is None:
        if job is None or not job.finished:
            return out
        job_name = b.evaluator_job_name(owner, step, failures)
        report = {"decision": "Inconclusive", "steps": [],
                  "reason": f"evaluator Job {job_name} ended ({job.reason}) without a report"}
    decision = str(report.get("decision") or "Inconclusive")
    reason = str(report.get("reason") or "")
    out.gate_decision = decision
    st.data.update(p99Ms=_check_value(report, "p99"), throughputRps=_check_value(report, "throughput"))
    weight = steps[step]
    if decision == "Promoted":
        st.condition("Evaluated", "True", "StepPassed", f"canary at {weight}% passed the gate: {reason}".rstrip(": "))
        if step + 1 < len(steps):
            out.apply += _start_step(model, owner, st, step + 1, stable, candidate, settings)
            return out
        msg = (f"{candidate} promoted: it serves 100% of traffic; {stable} is kept at 0 replicas; "
               f"{reason}").rstrip("; ")
        st.data.update(stableVariant=candidate, previousStableVariant=stable, decision="Promoted", canaryWeight=100)
        st.phase(Phase.promoted, msg)
        st.condition("Promoted", "True", "GatePassed", msg)
        st.condition("Ready", "True", "Promoted", msg)
        _promote(model, owner, stable, candidate, settings, out)
        return out
    failures += 1
    st.data["failedSteps"] = failures
    budget = model.spec.rollout.failure_budget
    if failures <= budget:
        st.condition("Evaluated", "False", "StepFailed",
                     f"canary at {weight}% did not pass ({decision}: {reason}); retry {failures} of {budget}")
        out.apply += _start_step(model, owner, st, step, stable, candidate, settings)
        return out
    msg = f"rolled back to {stable}: canary {candidate} at {weight}% was {decision}: {reason}".rstrip(": ")
    st.data.update(decision="RolledBack", canaryWeight=0)
    st.phase(Phase.rolled_back, msg)
    st.condition("Evaluated", "False", "GateFailed" if decision == "RolledBack" else "Inconclusive", msg)
    st.condition("Promoted", "False", "GateFailed", msg)
    st.condition("Ready", "True", "ServingStable", f"stable variant {stable} serves all traffic")
    out.apply += _traffic(model, owner, stable, None if gateway else candidate, 0, settings)
    if gateway:
        # The canary keeps its Deployment (evidence) at zero replicas; its autoscaler must go first.
        scaler = b.build_autoscaler(model, owner, candidate, settings)
        out.delete.append((scaler["apiVersion"], scaler["kind"], scaler["metadata"]["name"]))
        out.apply.append(b.build_triton_deployment(model, owner, candidate, "canary", settings, replicas=0))
    return out


def _promote(
    model: CompressedModel, owner: b.Owner, old: str, new: str, settings: OperatorSettings, out: Plan
) -> None:
    """All traffic on the promoted variant; the old stable stops using resources but is not lost.

    The new stable keeps its pods (label change only). The old stable's Deployment stays at 0
    replicas without an autoscaler, so going back is one `kubectl scale` away; its Service stays.
    """
    if model.spec.rollout.traffic_split == "gateway":
        out.apply += _traffic(model, owner, new, None, 0, settings)
        scaler = b.build_autoscaler(model, owner, old, settings)
        out.delete.append((scaler["apiVersion"], scaler["kind"], scaler["metadata"]["name"]))
        replicas = None  # the new stable's HPA keeps its count
    else:
        replicas = settings.split_replicas
    out.apply.append(b.build_triton_deployment(model, owner, new, "stable", settings, replicas=replicas))
    out.apply.append(b.build_triton_deployment(model, owner, old, "previous", settings, replicas=0))


def _deploy_children(
    model: CompressedModel, owner: b.Owner, stable: str, candidate: str, settings: OperatorSettings
) -> list[Manifest]:
    """Stable and canary Triton (Deployment, Service, autoscaler) and traffic at weight 0."""
    gateway = model.spec.rollout.traffic_split == "gateway"
    if gateway:
        # A canary starts at the autoscaler's minimum: an earlier rollback may have left it at 0
        # replicas, and an HPA never scales a Deployment up from 0. The stable count stays the HPA's.
        minimum = model.spec.serving.autoscaling.min_replicas
        children = _serving_children(model, owner, stable, "stable", settings, None, autoscale=True)
        children += _serving_children(model, owner, candidate, "canary", settings, minimum, autoscale=True)
        children += _traffic(model, owner, stable, candidate, 0, settings)
        return children
    stable_n, canary_n = b.split_replicas(settings.split_replicas, model.spec.rollout.steps[0])
    children = _serving_children(model, owner, stable, "stable", settings, stable_n, autoscale=False)
    children += _serving_children(model, owner, candidate, "canary", settings, canary_n, autoscale=False)
    children.append(b.build_shared_service(owner))
    return children


def _start_step(
    model: CompressedModel, owner: b.Owner, st: _Status, step: int, stable: str, candidate: str,
    settings: OperatorSettings,
) -> list[Manifest]:
    weight = model.spec.rollout.steps[step]
    attempt = int(st.data.get("failedSteps") or 0)
    st.data.update(canaryStep=step, canaryWeight=weight,
                   reportConfigMap=b.report_config_map_name(owner, step, attempt))
    st.phase(Phase.evaluating if step == 0 else Phase.progressing,
             f"canary {candidate} at {weight}% (step {step + 1} of {len(model.spec.rollout.steps)})")
    st.condition("Evaluated", "Unknown", "Evaluating",
                 f"Job {b.evaluator_job_name(owner, step, attempt)} judges {candidate} at {weight}%")
    return _traffic(model, owner, stable, candidate, weight, settings) + _evaluation_children(
        model, owner, step, attempt, stable, candidate, settings)


def invalid_spec_status(
    status: dict[str, Any] | None, generation: int, problems: list[str], now: str
) -> dict[str, Any]:
    """Failed with a Ready condition naming each field, value and fix."""
    st = _Status(dict(status or {}), generation, now)
    msg = "invalid spec: " + "; ".join(problems)
    st.data["observedGeneration"] = generation
    st.phase(Phase.failed, msg)
    st.condition("Ready", "False", "InvalidSpec", msg)
    return st.data
