"""The rollout gate: pure functions from evidence (estimates with intervals) to verdicts.

Pure python on purpose (no numpy): the evidence is computed where the data is (the evaluator, with
numpy), and the verdicts must be reproducible from the numbers in a report.

Every check compares an interval with a threshold, as Kayenta and Argo Rollouts judge canaries:
- **Pass** when the whole interval is on the good side of the threshold,
- **Fail** when the whole interval is on the bad side,
- **Inconclusive** when it straddles the threshold, or when a value is missing or not finite.
Intervals are 90% two-sided, so each end is a one-sided 95% bound: a Pass claims "within the
threshold" at 95% confidence and a Fail claims "beyond it" at 95% confidence — the non-inferiority
test of clinical trials and of TOST, applied to a canary.
A step with too few samples (fewer than `minSamples` requests on the candidate or on the control) is
Inconclusive whatever its other checks say: noise from a handful of requests is never a Fail.

What is compared (see `slimserve.evaluator.canary` for how each interval is measured):
- quality: the paired drop of the chosen metric versus the uncompressed baseline (`maxAccuracyDrop`);
- latency: the candidate's p99 over the control's p99 in the same window, from that window's own
  requests with warm-up excluded (`p99Tolerance`), and/or the candidate's p99 itself (`maxP99Ms`);
- throughput: the candidate's capacity (samples per second of compute) over the control's, same
  window (`minThroughputRatio`), and/or the capacity itself (`minThroughputRps`);
- errors: the candidate's error rate, client-side failures included (`maxErrorRate`).
The control is a fresh copy of the stable model that receives the same share of the load as the
candidate, so both see the same batching, the same cold start and the same neighbours.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from slimserve.api.report import CheckResult, StepResult, Verdict
from slimserve.api.spec import Gates

CONFIDENCE: Final = 0.90  # two-sided; each end is a one-sided 95% bound
Z: Final = 1.6448536269514722  # the normal quantile of that one-sided 95%
QUALITY_CHECK: Final = "qualityDrop"
SAMPLES_CHECK: Final = "samples"
HARD_CHECKS: Final = frozenset({QUALITY_CHECK})  # a failure here rolls back at once, whatever the budget


@dataclass(frozen=True)
class Estimate:
    """A measured value with its 90% interval (one-sided 95% bounds); None where nothing was measured."""

    value: float | None = None
    low: float | None = None
    high: float | None = None

    @property
    def known(self) -> bool:
        return all(v is not None and math.isfinite(v) for v in (self.value, self.low, self.high))


@dataclass(frozen=True)
class QualityEvidence:
    """Both models' scores of one metric on the same samples, and the paired drop with its interval.

    `drop` is in the budgets' unit (`unit`): points, or percent error increase for mse/mae.
    """

    metric: str
    unit: str
    n: int
    baseline: float
    candidate: float
    drop: float
    drop_low: float
    drop_high: float
    method: str = ""
    detail: str = ""

    @property
    def estimate(self) -> Estimate:
        return Estimate(self.drop, self.drop_low, self.drop_high)


@dataclass(frozen=True)
class StepEvidence:
    """One canary window, candidate against the control (a copy of the stable model), same seconds."""

    weight: int
    candidate_requests: int = 0
    control_requests: int = 0
    candidate_errors: int = 0
    control_errors: int = 0
    candidate_p99_ms: Estimate = field(default_factory=Estimate)
    control_p99_ms: Estimate = field(default_factory=Estimate)
    p99_ratio: Estimate = field(default_factory=Estimate)
    candidate_capacity_rps: Estimate = field(default_factory=Estimate)
    control_capacity_rps: Estimate = field(default_factory=Estimate)
    capacity_ratio: Estimate = field(default_factory=Estimate)
    generator_bound: bool = False
    seconds: float = 0.0
    windows: int = 1


def _finite(value: float | None) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _check(
    name: str,
    estimate: Estimate,
    threshold: float | None,
    *,
    at_most: bool,
    baseline: float | None = None,
    detail: str = "",
) -> CheckResult:
    """Pass/Fail only when the whole interval is on one side of the threshold."""
    bounds = f"90% CI [{_fmt(estimate.low)}, {_fmt(estimate.high)}]"
    text = f"{detail}; {bounds}" if detail else bounds
    if not estimate.known or threshold is None or not math.isfinite(threshold):
        verdict: Verdict = "Inconclusive"
        text += "; no measurement (empty or NaN)"
    else:
        low, high = float(estimate.low), float(estimate.high)  # type: ignore[arg-type]
        good, bad = (high <= threshold, low > threshold) if at_most else (low >= threshold, high < threshold)
        verdict = "Pass" if good else "Fail" if bad else "Inconclusive"
        if verdict == "Inconclusive":
            text += "; the interval straddles the threshold"
    return CheckResult(
        name=name, verdict=verdict, value=_finite(estimate.value), threshold=_finite(threshold),
        low=_finite(estimate.low), high=_finite(estimate.high), baseline=_finite(baseline), detail=text,
    )  # fmt: skip


def _fmt(value: float | None) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.3g}"


def wilson(successes: int, n: int, z: float = Z) -> tuple[float, float]:
    """Wilson score interval of a proportion (0-1), 90% by default; (0, 1) for n = 0."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def check_quality(gates: Gates, evidence: QualityEvidence | None) -> CheckResult:
    """The paired drop's interval against `maxAccuracyDrop` (Fail only when its lower bound is over)."""
    if evidence is None or evidence.n == 0:
        return CheckResult(
            name=QUALITY_CHECK, verdict="Inconclusive", value=None, threshold=gates.max_accuracy_drop,
            detail="no served quality measurement (empty evaluation set)",
        )  # fmt: skip
    detail = (
        f"{evidence.detail}: candidate {evidence.candidate:.4g} vs baseline {evidence.baseline:.4g} on "
        f"{evidence.n} samples; drop in {evidence.unit} ({evidence.method})"
    )
    result = _check(
        QUALITY_CHECK,
        evidence.estimate,
        gates.max_accuracy_drop,
        at_most=True,
        baseline=evidence.baseline,
        detail=detail,
    )
    if evidence.n < gates.min_samples and result.verdict == "Pass":
        result = result.model_copy(
            update={"verdict": "Inconclusive", "detail": result.detail + f"; fewer than minSamples={gates.min_samples}"}
        )
    return result


def check_samples(gates: Gates, evidence: StepEvidence) -> CheckResult:
    fewest = min(evidence.candidate_requests, evidence.control_requests)
    enough = fewest >= gates.min_samples
    detail = (
        f"requests judged at {evidence.weight}%: candidate {evidence.candidate_requests}, "
        f"control {evidence.control_requests} (warm-up excluded)"
    )
    return CheckResult(
        name=SAMPLES_CHECK, verdict="Pass" if enough else "Inconclusive", value=float(fewest),
        threshold=float(gates.min_samples), detail=detail if enough else detail + "; fewer than minSamples",
    )  # fmt: skip


def check_errors(gates: Gates, evidence: StepEvidence) -> CheckResult:
    n, bad = evidence.candidate_requests, evidence.candidate_errors
    low, high = wilson(bad, n)
    control = f"control {evidence.control_errors}/{evidence.control_requests}"
    return _check(
        "errorRate", Estimate(bad / n if n else None, low, high), gates.max_error_rate, at_most=True,
        detail=f"candidate {bad}/{n} failed (client and server side); {control}",
    )  # fmt: skip


def judge_step(gates: Gates, evidence: StepEvidence) -> StepResult:
    """Judge one canary window; see the module docstring for what each check compares."""
    checks = [check_samples(gates, evidence), check_errors(gates, evidence)]
    control_p99 = evidence.control_p99_ms.value
    if gates.max_p99_ms is not None:
        checks.append(
            _check(
                "p99Budget",
                evidence.candidate_p99_ms,
                gates.max_p99_ms,
                at_most=True,
                detail="candidate p99 ms, client side",
            )
        )
    if gates.p99_tolerance is not None:
        checks.append(_check(
            "p99VsBaseline", evidence.p99_ratio, 1 + gates.p99_tolerance, at_most=True, baseline=1.0,
            detail=f"candidate p99 / control p99 (client side; {_fmt(evidence.candidate_p99_ms.value)} vs "
            f"{_fmt(control_p99)} ms)",
        ))  # fmt: skip
    if gates.min_throughput_rps is not None:
        checks.append(
            _check(
                "throughputMin",
                evidence.candidate_capacity_rps,
                gates.min_throughput_rps,
                at_most=False,
                detail="candidate samples per second of compute (server side)",
            )
        )
    if gates.min_throughput_ratio is not None:
        checks.append(_check(
            "throughputVsBaseline", evidence.capacity_ratio, gates.min_throughput_ratio, at_most=False, baseline=1.0,
            detail=f"candidate capacity / control capacity, samples per second of compute (server side; "
            f"{_fmt(evidence.candidate_capacity_rps.value)} vs {_fmt(evidence.control_capacity_rps.value)})",
        ))  # fmt: skip
    if evidence.generator_bound:
        # Locust itself was saturated: client-side latencies carry its scheduling delays. Relative checks
        # see the same delays on both sides; an absolute budget does not.
        checks = [
            c.model_copy(update={"verdict": "Inconclusive", "detail": c.detail + "; the load generator was saturated"})
            if c.name == "p99Budget" and c.verdict == "Fail"
            else c
            for c in checks
        ]
    return StepResult(weight=evidence.weight, verdict=step_verdict(checks), checks=checks)


def judge_quality(gates: Gates, evidence: QualityEvidence | None) -> StepResult:
    """The pre-traffic step (weight 0): served quality alone, judged before any canary request."""
    checks = [check_quality(gates, evidence)]
    return StepResult(weight=0, verdict=step_verdict(checks), checks=checks)


def step_verdict(checks: Sequence[CheckResult]) -> Verdict:
    """Too few samples → Inconclusive before anything else; then any Fail; then any Inconclusive."""
    if not checks or any(c.name == SAMPLES_CHECK and c.verdict != "Pass" for c in checks):
        return "Inconclusive"
    verdicts = {c.verdict for c in checks}
    if "Fail" in verdicts:
        return "Fail"
    return "Inconclusive" if "Inconclusive" in verdicts else "Pass"
