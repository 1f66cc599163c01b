"""The rollout gate: pure functions from measurements to verdicts, with the evidence for each.

Pure python on purpose: the operator imports this module, so nothing heavy may be imported here.

A candidate is compared against the baseline measured in the same run:
- accuracy drop ≤ `maxAccuracyDrop`, judged on the 95% confidence interval of the *paired*
  difference (both models answer the same samples, so only the samples they disagree on count);
- p99 ≤ `maxP99Ms` and/or ≤ baseline p99 × (1 + `p99Tolerance`);
- throughput ≥ `minThroughputRps` and/or ≥ baseline × `minThroughputRatio`, where the candidate's
  rate is scaled up by its traffic share (10% of the requests at a 10% step) and the baseline is
  measured alone under the same load (the reference window);
- error rate ≤ `maxErrorRate`.
A missing value, NaN, or fewer than `minSamples` requests is Inconclusive — never a pass; so is a
throughput failure measured while the load generator itself was saturated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from slimserve.api.report import CheckResult, Decision, StepResult, Verdict
from slimserve.api.spec import Gates

Z95: Final = 1.959963984540054
HARD_CHECKS: Final = frozenset({"accuracyDrop"})  # a failure here is never covered by the failure budget


@dataclass(frozen=True)
class AccuracyEvidence:
    """Per-sample agreement of both models on the evaluation set, as counts.

    `baseline_only`: samples the baseline gets right and the candidate wrong; `candidate_only` the
    reverse. With `metric == "fidelity"` (no labels) the baseline's answers are the reference, so
    `baseline_correct == n` and `baseline_only` counts disagreements.
    """

    metric: Literal["accuracy", "fidelity"]
    n: int
    baseline_correct: int
    candidate_correct: int
    baseline_only: int
    candidate_only: int

    @property
    def baseline_pct(self) -> float:
        return 100.0 * self.baseline_correct / self.n if self.n else math.nan

    @property
    def candidate_pct(self) -> float:
        return 100.0 * self.candidate_correct / self.n if self.n else math.nan

    @property
    def drop(self) -> float:
        """Baseline minus candidate, in points."""
        return 100.0 * (self.baseline_only - self.candidate_only) / self.n if self.n else math.nan

    def drop_ci(self) -> tuple[float, float]:
        """95% normal-approximation interval of the paired drop, in points."""
        if not self.n:
            return (math.nan, math.nan)
        mean = (self.baseline_only - self.candidate_only) / self.n
        second = (self.baseline_only + self.candidate_only) / self.n
        se = math.sqrt(max(second - mean * mean, 0.0) / self.n)
        return (100.0 * (mean - Z95 * se), 100.0 * (mean + Z95 * se))


@dataclass(frozen=True)
class Window:
    """One model's measurements over one window (from Prometheus; None where a query was empty)."""

    requests: float | None = None
    throughput_rps: float | None = None
    error_rate: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    queue_ms: float | None = None
    avg_batch: float | None = None


def _bad(value: float | None) -> bool:
    return value is None or not math.isfinite(value)


def check_at_most(name: str, value: float | None, threshold: float | None, **extra: object) -> CheckResult:
    """Pass when `value <= threshold`; Inconclusive when either is missing or not finite."""
    baseline = extra.get("baseline")
    detail = str(extra.get("detail", ""))
    if _bad(value) or _bad(threshold):
        return CheckResult(
            name=name, verdict="Inconclusive", value=_clean(value), threshold=_clean(threshold),
            baseline=_clean(baseline), detail=(detail + "; " if detail else "") + "no measurement (empty or NaN)",
        )  # fmt: skip
    verdict: Verdict = "Pass" if value <= threshold else "Fail"  # type: ignore[operator]
    return CheckResult(
        name=name, verdict=verdict, value=value, threshold=threshold, baseline=_clean(baseline), detail=detail
    )


def check_at_least(name: str, value: float | None, threshold: float | None, **extra: object) -> CheckResult:
    """Pass when `value >= threshold`; Inconclusive when either is missing or not finite."""
    if _bad(value) or _bad(threshold):
        return check_at_most(name, value, threshold, **extra)
    flipped = check_at_most(name, -value, -threshold, **extra)  # type: ignore[operator]
    return flipped.model_copy(update={"value": value, "threshold": threshold})


def _clean(value: object) -> float | None:
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def check_samples(gates: Gates, requests: float | None, weight: int) -> CheckResult:
    """Enough candidate requests to judge on; too few is Inconclusive (not a failure of the candidate)."""
    detail = f"candidate requests in the window at {weight}% traffic"
    enough = not _bad(requests) and requests >= gates.min_samples  # type: ignore[operator]
    return CheckResult(
        name="samples", verdict="Pass" if enough else "Inconclusive", value=_clean(requests),
        threshold=float(gates.min_samples), detail=detail if enough else detail + "; fewer than minSamples",
    )  # fmt: skip


def check_accuracy(gates: Gates, evidence: AccuracyEvidence | None) -> CheckResult:
    """Pass if the CI's upper bound is within budget, Fail if the drop is over it, else Inconclusive."""
    name = "accuracyDrop"
    if evidence is None or evidence.n == 0:
        return CheckResult(
            name=name, verdict="Inconclusive", value=None, threshold=gates.max_accuracy_drop,
            detail="no served accuracy (empty evaluation set)",
        )  # fmt: skip
    low, high = evidence.drop_ci()
    detail = (
        f"{evidence.metric} {evidence.candidate_pct:.2f}% vs baseline {evidence.baseline_pct:.2f}% on "
        f"{evidence.n} samples; drop 95% CI [{low:.2f}, {high:.2f}] points"
    )
    if evidence.n < gates.min_samples:
        verdict: Verdict = "Inconclusive"
        detail += f"; fewer than minSamples={gates.min_samples} samples"
    elif not math.isfinite(high):
        verdict = "Inconclusive"
    elif high <= gates.max_accuracy_drop:
        verdict = "Pass"
    elif evidence.drop > gates.max_accuracy_drop:
        verdict = "Fail"
    else:
        verdict = "Inconclusive"
        detail += "; the interval straddles the budget: use a larger evaluation set"
    return CheckResult(
        name=name, verdict=verdict, value=evidence.drop, threshold=gates.max_accuracy_drop,
        baseline=evidence.baseline_pct, detail=detail,
    )  # fmt: skip


def judge_step(
    gates: Gates,
    weight: int,
    baseline: Window,
    candidate: Window,
    reference: Window | None = None,
    accuracy: AccuracyEvidence | None = None,
    generator_bound: bool = False,
) -> StepResult:
    """Judge one canary step at `weight` percent of the traffic on the candidate.

    `baseline` and `candidate` cover the same window. `reference` is the baseline alone under the
    same load (what throughput is compared with, and the latency baseline when the step sends the
    baseline too little traffic, e.g. at 100%). `accuracy` adds the served-accuracy check.
    `generator_bound` (Locust used about a core in this or the reference window) turns a failed
    throughput check into Inconclusive: the rate then measured the load generator, not the server.
    """
    checks: list[CheckResult] = []
    if accuracy is not None:
        checks.append(check_accuracy(gates, accuracy))
    checks.append(check_samples(gates, candidate.requests, weight))
    checks.append(check_at_most("errorRate", candidate.error_rate, gates.max_error_rate))
    enough_baseline = not _bad(baseline.requests) and baseline.requests >= gates.min_samples  # type: ignore[operator]
    latency_base = baseline if enough_baseline else reference
    base_name = "baseline (same window)" if enough_baseline else "baseline (reference window)"
    if gates.max_p99_ms is not None:
        checks.append(check_at_most("p99Budget", candidate.p99_ms, gates.max_p99_ms, detail="ms, server side"))
    if gates.p99_tolerance is not None:
        base_p99 = latency_base.p99_ms if latency_base else None
        threshold = None if _bad(base_p99) else base_p99 * (1 + gates.p99_tolerance)  # type: ignore[operator]
        checks.append(
            check_at_most(
                "p99VsBaseline",
                candidate.p99_ms,
                threshold,
                baseline=base_p99,
                detail=f"ms, server side; {base_name} x (1 + {gates.p99_tolerance})",
            )  # fmt: skip
        )
    share = weight / 100.0
    scaled = None if _bad(candidate.throughput_rps) or share <= 0 else candidate.throughput_rps / share  # type: ignore[operator]
    if gates.min_throughput_rps is not None:
        checks.append(
            check_at_least(
                "throughputMin",
                scaled,
                gates.min_throughput_rps,
                detail=f"req/s at full traffic (measured rate / {share:.2f})",
            )  # fmt: skip
        )
    if gates.min_throughput_ratio is not None:
        ref_rps = reference.throughput_rps if reference else None
        if _bad(ref_rps) and enough_baseline and share < 1:
            ref_rps = baseline.throughput_rps / (1 - share)  # type: ignore[operator]
        threshold = None if _bad(ref_rps) else ref_rps * gates.min_throughput_ratio  # type: ignore[operator]
        checks.append(
            check_at_least(
                "throughputVsBaseline",
                scaled,
                threshold,
                baseline=ref_rps,
                detail=f"req/s at full traffic; baseline alone x {gates.min_throughput_ratio}",
            )  # fmt: skip
        )
    if generator_bound:
        checks = [
            c.model_copy(
                update={
                    "verdict": "Inconclusive",
                    "detail": c.detail + "; the load generator was the bottleneck, not the server",
                }
            )
            if c.name.startswith("throughput") and c.verdict == "Fail"
            else c
            for c in checks
        ]
    return StepResult(weight=weight, verdict=step_verdict(checks), checks=checks)


def judge_step_accuracy(gates: Gates, accuracy: AccuracyEvidence | None) -> StepResult:
    """The pre-traffic step (weight 0): served accuracy alone, judged before any user request is sent."""
    checks = [check_accuracy(gates, accuracy)]
    return StepResult(weight=0, verdict=step_verdict(checks), checks=checks)


def step_verdict(checks: Sequence[CheckResult]) -> Verdict:
    verdicts = {c.verdict for c in checks}
    if "Fail" in verdicts:
        return "Fail"
    if "Inconclusive" in verdicts or not checks:
        return "Inconclusive"
    return "Pass"


def decide(steps: Sequence[StepResult], planned: int, failure_budget: int) -> tuple[Decision | None, str]:
    """The decision after the steps judged so far; `None` means run the next step.

    Steps are judged one by one. A failed hard check (accuracy) rolls back at once; other failed
    steps spend the failure budget, and the first failure beyond it rolls back. An inconclusive
    step stops the rollout as Inconclusive: more traffic on unproven evidence is not a pass.
    """
    failures = 0
    for step in steps:
        failed = [c.name for c in step.checks if c.verdict == "Fail"]
        if any(name in HARD_CHECKS for name in failed):
            return "RolledBack", f"step {step.weight}%: {', '.join(failed)} failed (never covered by the budget)"
        if step.verdict == "Fail":
            failures += 1
            if failures > failure_budget:
                return "RolledBack", (
                    f"step {step.weight}%: {', '.join(failed)} failed; {failures} failed step(s) > "
                    f"failureBudget {failure_budget}"
                )
        elif step.verdict == "Inconclusive":
            unsure = [c.name for c in step.checks if c.verdict == "Inconclusive"]
            return "Inconclusive", f"step {step.weight}%: {', '.join(unsure)} inconclusive; nothing promoted"
    if len(steps) < planned:
        return None, f"{len(steps)}/{planned} steps judged"
    if not steps:
        return "Inconclusive", "no steps were judged"
    spent = f" ({failures} failed step(s) within failureBudget {failure_budget})" if failures else ""
    return "Promoted", f"all {planned} steps met the gates{spent}"
