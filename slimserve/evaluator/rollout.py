"""Judge a rollout against running servers: the served quality check, then canary steps, by the policy.

`Judge` holds what judging needs (the spec, the targets, where capacity comes from, the data); `Judge.step(weight)`
judges one weight (0 = served quality) and is what the operator's evaluator Job runs once per step;
`run_rollout` asks `slimserve.evaluator.policy` what to judge next until it decides, and is what
`slimserve run` and `benchmarks.gate` run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from slimserve.api.report import CheckResult, Decision, StepResult
from slimserve.api.spec import CompressedModelSpec
from slimserve.errors import ServingError
from slimserve.evaluator import gate, policy
from slimserve.evaluator.canary import Capacity, Measurement, Roles, Timing, measure_step, warm_up
from slimserve.evaluator.gate import QualityEvidence
from slimserve.evaluator.load import LoadResult, Target
from slimserve.evaluator.served import load_npz, output_names, predict, served_quality


class CandidateFailed(Exception):
    """The candidate could not answer (its server said so): the quality check fails."""


@dataclass
class Judge:
    """Everything needed to judge one weight of a rollout.

    `reference` answers the quality check's baseline: a served model, or outputs computed elsewhere
    (the operator's evaluator runs the uncompressed ONNX in-process). `health` is called after every
    window (the local runtime checks that Triton and Prometheus are still alive).
    """

    spec: CompressedModelSpec
    roles: Roles
    capacity: Capacity
    data: Path
    work_dir: Path
    reference: Target | np.ndarray
    base_dir: Path | None = None
    timing: Timing | None = None
    health: Callable[[], None] = lambda: None
    warmup_burst_s: float | None = None  # before the first canary step; default half a step, 0 for none
    quality: QualityEvidence | None = None
    served_outputs: dict[str, np.ndarray] = field(default_factory=dict)
    warmed: bool = False
    warmup_load: LoadResult | None = None

    def __post_init__(self) -> None:
        self.timing = self.timing or Timing.of(self.spec.rollout, 1.0)

    def step(self, weight: int) -> tuple[StepResult, Measurement | None]:
        if weight == policy.QUALITY_WEIGHT:
            try:
                return gate.judge_quality(self.spec.gates, self.judge_quality()), None
            except CandidateFailed as exc:  # a candidate that cannot answer is a worse model, not a crash
                check = CheckResult(
                    name=gate.QUALITY_CHECK,
                    verdict="Fail",
                    value=None,
                    threshold=self.spec.gates.max_accuracy_drop,
                    detail=str(exc),
                )
                return StepResult(weight=0, verdict="Fail", checks=[check]), None
        if not self.warmed:
            assert self.timing is not None
            burst = self.timing.step_s / 2 if self.warmup_burst_s is None else self.warmup_burst_s
            self.warmup_load = warm_up(self.roles, self.data, self.spec.rollout, self.work_dir, burst)
            self.warmed = True
        measurement = measure_step(
            self.capacity, self.roles, weight, self.data, self.spec.rollout, self.spec.gates, self.work_dir, self.timing
        )
        self.health()
        return gate.judge_step(self.spec.gates, measurement.evidence), measurement

    def judge_quality(self) -> QualityEvidence:
        arrays, labels = load_npz(self.data)
        output = self.spec.quality.output
        if isinstance(self.reference, Target):
            reference = predict(self.reference.url, self.reference.model, arrays, output)
        else:
            reference = self.reference
        try:
            candidate = predict(self.roles.candidate.url, self.roles.candidate.model, arrays, output)
        except ServingError as exc:
            raise CandidateFailed(f"the candidate failed to answer the evaluation set: {exc}") from exc
        self.served_outputs = {"reference": reference, "candidate": candidate}
        read = output
        if read is None and str(getattr(self.spec.quality.metric, "value", self.spec.quality.metric)) == "auto":
            read = output_names(self.roles.candidate.url, self.roles.candidate.model)[0]  # for auto's name hints
        self.quality = served_quality(self.spec.quality, reference, candidate, arrays, labels, self.base_dir, read)
        return self.quality


@dataclass(frozen=True)
class Outcome:
    decision: Decision
    reason: str
    steps: list[StepResult]
    measurements: list[Measurement]
    quality: QualityEvidence | None


# Between steps the user's controls may end the rollout (abort, promote) or hold it (pause, manual approval).
Control = Callable[[policy.NextStep], tuple[Decision, str] | None]


def run_rollout(
    judge: Judge,
    on_step: Callable[[StepResult, Measurement | None], None] | None = None,
    stage: Callable[[int], AbstractContextManager[None]] | None = None,
    control: Control | None = None,
) -> Outcome:
    """Judge weights in the policy's order until it decides; `stage(weight)` wraps each judgement.

    `control(next)` runs before each step and before the policy's decision takes effect: it may
    block (paused, waiting for approval) and returns a decision of the user's, or None to go on.
    """
    rollout = judge.spec.rollout
    steps: list[StepResult] = []
    measurements: list[Measurement] = []
    while True:
        nxt = policy.next_step(steps, rollout.steps, rollout.failure_budget, rollout.inconclusive_limit)
        override = control(nxt) if control is not None else None
        if override is not None:
            return Outcome(override[0], override[1], steps, measurements, judge.quality)
        if nxt.decision is not None:
            return Outcome(nxt.decision, nxt.reason, steps, measurements, judge.quality)
        assert nxt.weight is not None
        with stage(nxt.weight) if stage else contextlib.nullcontext():
            result, measurement = judge.step(nxt.weight)
        steps.append(result)
        if measurement is not None:
            measurements.append(measurement)
        if on_step is not None:
            on_step(result, measurement)
