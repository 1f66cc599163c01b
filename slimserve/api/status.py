"""CompressedModel status: the phase machine, meta/v1 conditions and the evidence summary."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class Phase(StrEnum):
    pending = "Pending"
    compressing = "Compressing"
    packaging = "Packaging"
    deploying = "Deploying"
    evaluating = "Evaluating"
    progressing = "Progressing"
    promoted = "Promoted"
    rolled_back = "RolledBack"
    failed = "Failed"


TERMINAL_PHASES: Final = frozenset({Phase.promoted, Phase.rolled_back, Phase.failed})
CONDITION_TYPES: Final = (
    "Compressed",
    "Deployed",
    "TrafficReady",
    "Evaluated",
    "Promoted",
    "Ready",
    "Paused",
    "WaitingForApproval",
    "WaitingForWebhook",
)


class StatusModel(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True, alias_generator=to_camel, extra="ignore")


class Condition(StatusModel):
    """The meta/v1 Condition shape."""

    type: str = Field(
        description="Condition type: Compressed, Deployed, TrafficReady, Evaluated, Promoted, Ready, Paused, "
        "WaitingForApproval or WaitingForWebhook."
    )
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        description="A CamelCase word for why the condition is as it is. Example: GateFailed.",
    )
    message: str = Field(default="", description="A human-readable explanation.")
    observed_generation: int | None = Field(
        default=None, description="The metadata.generation the condition was set for."
    )
    last_transition_time: str = Field(description="When status last changed (RFC 3339).")


def now_rfc3339() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def set_condition(
    conditions: list[dict[str, object]],
    type: str,
    status: Literal["True", "False", "Unknown"],
    reason: str,
    message: str = "",
    observed_generation: int | None = None,
    now: str | None = None,
) -> list[dict[str, object]]:
    """Return `conditions` with `type` set; lastTransitionTime moves only when status changes."""
    previous = next((c for c in conditions if c.get("type") == type), None)
    changed = previous is None or previous.get("status") != status
    condition: dict[str, object] = {
        "type": type,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": (now or now_rfc3339()) if changed else previous["lastTransitionTime"],  # type: ignore[index]
    }
    if observed_generation is not None:
        condition["observedGeneration"] = observed_generation
    Condition.model_validate(condition)
    return [c for c in conditions if c.get("type") != type] + [condition]


class CheckVerdict(StatusModel):
    """One gate check of a judged step."""

    name: str = Field(description="The check (a gate in spec.gates, or samples). Example: qualityDrop.")
    verdict: Literal["Pass", "Fail", "Inconclusive"] = Field(description="Pass, Fail or Inconclusive.")


class JudgedStep(StatusModel):
    """One judged weight of this generation's rollout (0 = the served quality check), as the rollout policy
    (`slimserve.evaluator.policy.next_step`) reads it; the evaluator Job's pod log holds the full report."""

    weight: int = Field(description="Canary weight in percent; 0 is the served quality check.")
    verdict: Literal["Pass", "Fail", "Inconclusive"] = Field(
        description="The step's verdict: Pass, Fail or Inconclusive."
    )
    checks: list[CheckVerdict] = Field(default_factory=list, description="The verdict of each gate check.")


class Drain(StatusModel):
    deployments: list[str] = Field(description="The Deployments scaled to 0 at `at`.")
    at: str = Field(description="When they scale to 0 (RFC 3339).")


class HandledRequests(StatusModel):
    """The value of each one-shot control annotation (slimserve.api.controls) the operator last acted on."""

    abort: str | None = Field(
        default=None, description="The `slimserve abort` request (annotation value) last acted on or refused."
    )
    promote: str | None = Field(
        default=None, description="The `slimserve promote` request (annotation value) last acted on or refused."
    )
    retry: str | None = Field(
        default=None, description="The `slimserve retry` request (annotation value) last acted on or refused."
    )


class CompressionOutput(StatusModel):
    """The latest compression output on the model volume (gen-<generation>/compressed) and what it was made from."""

    hash: str = Field(description="The compression hash (status.compressionHash) of the spec it was made from.")
    generation: int = Field(description="The generation whose compression Job wrote it.")


class CompressedModelStatus(StatusModel):
    """What the operator (or the local runtime) observed; every field is declared in the CRD."""

    phase: Phase = Field(
        default=Phase.pending,
        description="Pending, Compressing, Packaging, Deploying, Evaluating, Progressing, then Promoted, "
        "RolledBack or Failed.",
    )
    observed_generation: int | None = Field(default=None, description="The metadata.generation this status describes.")
    conditions: list[Condition] = Field(
        default_factory=list, description="Kubernetes conditions, one per type (Compressed, Deployed, ... Ready)."
    )
    message: str | None = Field(default=None, description="What happens now, or why the phase was reached.")
    stable_variant: str | None = Field(
        default=None, description="The variant serving all traffic outside the canary (baseline at first)."
    )
    previous_stable_variant: str | None = Field(
        default=None,
        description="The stable variant before the last promotion: its Deployment is kept at 0 replicas "
        "(no autoscaler) with its model files (status.previousStableGeneration).",
    )
    candidate_variant: str | None = Field(
        default=None, description="The variant this generation rolls out (spec.rollout.candidate, or the chosen one)."
    )
    size_ratio: float | None = Field(default=None, description="Baseline size / candidate size.")
    metric: str | None = Field(default=None, description="The quality metric the drop is measured with.")
    quality_drop: float | None = Field(
        default=None, description="Candidate's quality drop versus the baseline (points, or % error increase)."
    )
    p99_ms: float | None = Field(
        default=None, description="Candidate's client-side p99 latency in the last judged step, in milliseconds."
    )
    throughput_rps: float | None = Field(
        default=None, description="Candidate's requests per second in the last judged step."
    )
    canary_weight: int | None = Field(
        default=None,
        description="The rollout's step: percent of the evaluator's load on the candidate (0 = the served quality check).",
    )
    client_share: int | None = Field(
        default=None,
        description="Percent of client traffic the candidate gets now. With trafficSplit gateway it is the "
        "HTTPRoute's weight (canaryWeight); with replicas it is the candidate's share of the Triton pods behind "
        "the shared Service (whole pods: 10% with 4 pods is 25%, and the candidate's first pod serves clients "
        "from Deploying on).",
    )
    canary_step: int | None = Field(
        default=None, description="Index of the current weight in spec.rollout.steps (0 = the first step)."
    )
    failed_steps: int | None = Field(default=None, description="Canary steps that failed the gate this generation.")
    decision: Literal["Promoted", "RolledBack", "Inconclusive"] | None = Field(
        default=None, description="How this generation's rollout ended: Promoted, RolledBack or Inconclusive."
    )
    steps: list[JudgedStep] = Field(default_factory=list, description="The steps judged this generation, in order.")
    model_name: str | None = Field(
        default=None,
        description="The model name clients call, fixed once a variant serves it (spec.serving.modelName).",
    )
    endpoint: str | None = Field(
        default=None,
        description="What clients call, whichever variant serves: the shared Service's URL, or the HTTPRoute's "
        "path on its Gateway; /v2/models/<modelName>/infer under it.",
    )
    stable_generation: int | None = Field(
        default=None, description="The generation whose model files the stable variant serves (gen-N on the volume)."
    )
    previous_stable_generation: int | None = Field(
        default=None, description="The generation whose model files the previous stable variant keeps."
    )
    deadline: str | None = Field(
        default=None, description="When the current phase (or canary step) fails if it has not moved on (RFC 3339)."
    )
    compression_hash: str | None = Field(
        default=None,
        description="sha256 of this generation's spec.source, data, quality and compression (less its Job's "
        "placement): equal to status.compression.hash, the compression output is reused and no compression Job "
        "runs. URIs are hashed as written (the operator reads no file): new bytes under the same URI need a new "
        "URI or version to compress again.",
    )
    compression: CompressionOutput | None = Field(
        default=None,
        description="The latest compression that succeeded: a generation with the same hash reuses its output.",
    )
    retries: int | None = Field(
        default=None,
        description="How often this generation was retried (`slimserve retry`): packaging, deployment and "
        "evaluation ran again from its compression output; its Jobs' names end in -r<retries>.",
    )
    handled_requests: HandledRequests | None = Field(
        default=None,
        description="The last abort, promote and retry request (annotation value) acted on or refused, so "
        "each request counts once.",
    )
    waiting_for: str | None = Field(
        default=None,
        description="The webhook (spec.rollout.webhooks) the rollout waits for, and its last answer. Example: "
        "confirm-promotion webhook 'qa' (HTTP 403).",
    )
    webhook_retry_at: str | None = Field(
        default=None, description="When the webhook in status.waitingFor is asked again (RFC 3339)."
    )
    pre_rollout_failures: int | None = Field(
        default=None,
        description="Failed pre-rollout webhook checks this generation; one more than spec.rollout.failureBudget "
        "rolls back.",
    )
    drain: Drain | None = Field(
        default=None,
        description="After a promotion or a rollback the losing side keeps its pods until `at` (RFC 3339), so "
        "requests routed before the switch finish; then these Deployments scale to 0.",
    )
