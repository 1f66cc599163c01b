"""spec.rollout and spec.gates: canary steps, the evaluator's load, approval, webhooks, and the thresholds the gate judges."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, ClassVar

from pydantic import Field, field_validator, model_validator

from slimserve.api.spec.common import (
    CPU_PATTERN,
    DEADLINE_PATTERN,
    DNS_LABEL_PATTERN,
    DURATION_PATTERN,
    MEMORY_PATTERN,
    WEBHOOK_URL_PATTERN,
    Model,
)


class TrafficSplit(StrEnum):
    gateway = "gateway"
    replicas = "replicas"


class Approval(StrEnum):
    auto = "auto"
    manual = "manual"


class WebhookType(StrEnum):
    confirm_rollout = "confirm-rollout"
    pre_rollout = "pre-rollout"
    confirm_promotion = "confirm-promotion"
    post_rollout = "post-rollout"
    rollback = "rollback"
    event = "event"


class WebhookFormat(StrEnum):
    json = "json"
    slack = "slack"


class Webhook(Model):
    """An HTTP endpoint the rollout asks (or tells) at one point, as Flagger's webhooks.

    Each call is an HTTP POST of JSON, answered within `timeout`. What an answer means depends on
    `type`: confirm-rollout and confirm-promotion wait until every such endpoint answers 2xx (asked again
    every stepDuration; nothing counts as failed); a pre-rollout answer other than 2xx (or no answer) is a
    failed check, asked again, and one failure more than rollout.failureBudget rolls back; a rollback
    endpoint answering 2xx rolls back at once; post-rollout and event are told, their failures only logged.
    """

    name: str = Field(
        max_length=63, pattern=DNS_LABEL_PATTERN,
        description="Name of the webhook, unique in rollout.webhooks; it names the webhook in status, Events and "
        "logs. Example: qa-gate.",
    )  # fmt: skip
    type: WebhookType = Field(
        description="When it is called and what its answer means: confirm-rollout (before the first step; waits "
        "for 2xx), pre-rollout (before the first step, after confirm-rollout; not 2xx is a failed check), "
        "confirm-promotion (before the promotion; waits for 2xx), rollback (before every step after the first "
        "and before the promotion, again while confirm-promotion waits; 2xx rolls back now), post-rollout (after "
        "the rollout is promoted or rolled back; told only) or event (every phase change and rollout Event; told "
        "only).",
    )
    url: str = Field(
        max_length=2048, pattern=WEBHOOK_URL_PATTERN,
        description="The http:// or https:// URL POSTed to. A Slack incoming webhook works with format slack. "
        "Example: http://qa-gate.ci.svc.cluster.local/confirm.",
    )  # fmt: skip
    timeout: str = Field(
        default="10s", pattern=DURATION_PATTERN,
        description="How long one call may take, connecting included; no answer in time is a timeout (for "
        "confirm-* a wait, for pre-rollout a failed check, for rollback no rollback). Default 10s.",
    )  # fmt: skip
    format: WebhookFormat = Field(
        default=WebhookFormat.json,
        description="json: a payload like Flagger's, {name, namespace, phase, type, variant, stable, weight, "
        "message, metadata}; slack (event and post-rollout only): {text} for a Slack (or Mattermost) incoming "
        "webhook. Default json.",
    )
    metadata: dict[str, str] = Field(
        default_factory=dict, max_length=32,
        description="Extra key-values sent in the json payload's metadata. Example: {env: staging}.",
    )  # fmt: skip

    cel: ClassVar[list[dict[str, str]]] = [
        {
            "rule": "!has(self.format) || self.format == 'json' || self.type == 'post-rollout' || self.type == 'event'",
            "message": "format slack is for post-rollout and event webhooks: Slack answers 200 to every post, so it "
            "cannot confirm, check or ask for a rollback; use format json",
        }
    ]

    @model_validator(mode="after")
    def _slack_only_tells(self) -> Webhook:
        if self.format == "slack" and self.type not in ("post-rollout", "event"):
            raise ValueError(
                f"format slack with type {self.type}: Slack answers 200 to every post, so it cannot confirm, check "
                "or ask for a rollback; use format slack with type event or post-rollout, or format json"
            )
        return self


class Evaluator(Model):
    """The evaluator Job of each judged step in a cluster (ignored locally): Locust, the served quality check
    (the evaluation set and the uncompressed baseline in memory) and the gate."""

    cpu: str = Field(default="1", pattern=CPU_PATTERN, description="CPU request. Default 1. Example: 2.")
    memory: str = Field(
        default="2Gi", pattern=MEMORY_PATTERN,
        description="Memory request and limit: the evaluation set is loaded twice (the quality check and Locust) "
        "plus the baseline ONNX model. Default 2Gi. Example: 8Gi.",
    )  # fmt: skip
    deadline: str = Field(
        default="15m", pattern=DEADLINE_PATTERN,
        description="Longest time one evaluator Job may run, waiting for a node included; then the rollout fails "
        "with the pod's reason and the stable keeps serving. Default 15m.",
    )  # fmt: skip


class Rollout(Model):
    """How the candidate replaces the stable variant: canary steps, the load that judges them, approval."""

    candidate: str = Field(
        default="auto",
        description="Variant to roll out, or 'auto' for the best variant that meets the accuracy gate.",
    )
    steps: list[Annotated[int, Field(ge=1, le=100)]] = Field(
        default_factory=lambda: [10, 50, 100],
        min_length=1,
        max_length=20,
        description="Canary weights in percent, increasing, ending at 100.",
    )
    step_duration: str = Field(
        default="15s", pattern=DURATION_PATTERN,
        description="Length of one canary window, warm-up included. Example: 15s.",
    )  # fmt: skip
    max_step_duration: str | None = Field(
        default=None, pattern=DURATION_PATTERN,
        description="A step the gate cannot decide yet (fewer than gates.minSamples requests, or an interval "
        "across a threshold) keeps sending load, in windows of stepDuration, up to this long; default 4 x "
        "stepDuration.",
    )  # fmt: skip
    warmup: str = Field(
        default="2s", pattern=DURATION_PATTERN,
        description="Seconds at the start of each step (after the spawn ramp) that are not judged.",
    )  # fmt: skip
    users: int = Field(default=8, ge=1, le=10_000, description="Concurrent Locust users (closed loop).")
    spawn_rate: int = Field(default=8, ge=1, le=10_000, description="Users started per second.")
    failure_budget: int = Field(
        default=0, ge=0, le=20,
        description="Failed steps tolerated (as Argo's failureLimit): a failed step runs again at the same "
        "weight; one failure more rolls back. A failed quality check always rolls back.",
    )  # fmt: skip
    inconclusive_limit: int = Field(
        default=1, ge=0, le=20,
        description="Inconclusive steps run again at the same weight (as Argo's inconclusiveLimit); one more "
        "ends the rollout Inconclusive: nothing promoted, the stable keeps serving.",
    )  # fmt: skip
    traffic_split: TrafficSplit = Field(
        default=TrafficSplit.gateway,
        description="gateway: an HTTPRoute on a Gateway API Gateway carries the canary weight; replicas: one "
        "Service, the weight approximated by stable and canary pod counts. Default gateway.",
    )  # fmt: skip
    gateway: str | None = Field(default=None, description="Gateway API parent (name) for the HTTPRoute.")
    approval: Approval = Field(
        default=Approval.auto,
        description="'manual' holds a rollout whose every step passed before promotion (the canary keeps its "
        "last weight, condition WaitingForApproval) until someone runs `slimserve promote`; 'auto' promotes "
        "as soon as the gate passes. Default auto.",
    )
    evaluator: Evaluator = Field(default_factory=Evaluator)
    webhooks: list[Webhook] = Field(
        default_factory=list,
        max_length=20,
        description="HTTP endpoints asked or told at each point of the rollout, as Flagger's webhooks "
        "(confirm-rollout, pre-rollout, confirm-promotion, rollback, post-rollout, event). Default none.",
    )

    cel: ClassVar[list[dict[str, str]]] = [
        {
            "rule": "!has(self.webhooks) || self.webhooks.all(w, self.webhooks.exists_one(v, v.name == w.name))",
            "message": "webhook names must be unique",
        },
        {
            # Standard CEL has no list index comprehension: walk a literal list of indices.
            "rule": "!has(self.steps) || (self.steps[size(self.steps) - 1] == 100 && "
            f"{list(range(19))}.all(i, i + 1 >= size(self.steps) || self.steps[i] < self.steps[i + 1]))",
            "message": "canary steps must increase and end at 100",
        },
    ]

    @field_validator("steps")
    @classmethod
    def _increasing(cls, steps: list[int]) -> list[int]:
        if any(b <= a for a, b in zip(steps, steps[1:], strict=False)) or steps[-1] != 100:
            raise ValueError(f"{steps} must increase and end at 100, e.g. [10, 50, 100]")
        return steps

    @field_validator("webhooks")
    @classmethod
    def _unique_webhooks(cls, hooks: list[Webhook]) -> list[Webhook]:
        names = [h.name for h in hooks]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"webhook names must be unique; '{dupes[0]}' appears more than once: rename one")
        return hooks


class Gates(Model):
    """What the candidate must show, judged on intervals (each end a one-sided 95% bound).

    A check passes when its whole interval is on the good side of the threshold, fails when the whole
    interval is on the bad side, and is inconclusive otherwise. Latency, throughput and errors compare
    the candidate with a fresh copy of the stable model (the control) that gets the same share of the
    load in the same seconds; quality compares it with the uncompressed baseline. The defaults are
    calibrated with `python -m benchmarks.gate` (see benchmarks/README.md).
    """

    max_accuracy_drop: float = Field(
        default=1.0, ge=0, le=100,
        description="Largest quality drop versus the baseline, in the metric's unit (spec.quality): points of "
        "a 0-100 score, or % error increase for mse/mae. Judged on the paired interval of the drop. Default 1.0.",
    )  # fmt: skip
    max_p99_ms: float | None = Field(
        default=None, gt=0, description="Absolute budget for the candidate's client-side p99, in milliseconds."
    )
    p99_tolerance: float | None = Field(
        default=0.25, ge=0, le=10,
        description="Candidate p99 <= control p99 x (1 + this), same window, client side. Default 0.25.",
    )  # fmt: skip
    min_throughput_rps: float | None = Field(
        default=None, gt=0, description="Absolute floor for the candidate's capacity, samples per second of compute."
    )
    min_throughput_ratio: float | None = Field(
        default=0.85, gt=0, le=100,
        description="Candidate capacity >= control capacity x this, same window: samples per second of work "
        "(CPU seconds of the serving processes locally; compute seconds from Triton's counters in a cluster). "
        "Default 0.85.",
    )  # fmt: skip
    max_error_rate: float = Field(
        default=0.01, ge=0, le=1,
        description="Largest share of failed candidate requests (timeouts, refused connections and non-2xx "
        "answers count). Default 0.01.",
    )  # fmt: skip
    min_samples: int = Field(
        default=500, ge=1, le=10_000_000,
        description="Fewer judged requests on the candidate or the control (or fewer evaluation samples) is "
        "Inconclusive, never a failure. Default 500.",
    )  # fmt: skip
