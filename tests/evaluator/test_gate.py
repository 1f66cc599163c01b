"""The gate's rules: a check passes or fails only on its whole interval; too few samples never fails."""

from __future__ import annotations

import math

import pytest

from slimserve.api.spec import Gates
from slimserve.evaluator.gate import (
    CONFIDENCE,
    Estimate,
    QualityEvidence,
    StepEvidence,
    Z,
    judge_quality,
    judge_step,
    wilson,
)

GATES = Gates()  # the defaults users run with


def _evidence(**overrides: object) -> StepEvidence:
    base: dict[str, object] = {
        "weight": 10,
        "candidate_requests": 2000,
        "control_requests": 2000,
        "candidate_p99_ms": Estimate(10.0, 9.5, 10.5),
        "control_p99_ms": Estimate(10.0, 9.5, 10.5),
        "p99_ratio": Estimate(1.0, 0.93, 1.07),
        "capacity_ratio": Estimate(1.0, 0.96, 1.04),
        "candidate_capacity_rps": Estimate(900.0, 880.0, 920.0),
        "control_capacity_rps": Estimate(900.0, 880.0, 920.0),
    }
    base.update(overrides)
    return StepEvidence(**base)  # type: ignore[arg-type]


def _verdicts(step: object) -> dict[str, str]:
    return {c.name: c.verdict for c in step.checks}  # type: ignore[attr-defined]


def test_a_twin_passes_every_check() -> None:
    step = judge_step(GATES, _evidence())
    assert step.verdict == "Pass", _verdicts(step)


def test_a_slower_candidate_fails_only_when_the_whole_interval_is_over() -> None:
    slow = judge_step(GATES, _evidence(p99_ratio=Estimate(2.0, 1.8, 2.2)))
    assert slow.verdict == "Fail" and _verdicts(slow)["p99VsBaseline"] == "Fail"
    unsure = judge_step(GATES, _evidence(p99_ratio=Estimate(1.3, 0.9, 1.9)))
    assert unsure.verdict == "Inconclusive" and _verdicts(unsure)["p99VsBaseline"] == "Inconclusive"


def test_throughput_compares_capacity_with_the_control() -> None:
    lower = judge_step(GATES, _evidence(capacity_ratio=Estimate(0.7, 0.66, 0.74)))
    assert _verdicts(lower)["throughputVsBaseline"] == "Fail" and lower.verdict == "Fail"
    check = next(c for c in lower.checks if c.name == "throughputVsBaseline")
    assert check.low == 0.66 and check.high == 0.74 and check.threshold == GATES.min_throughput_ratio


def test_too_few_samples_is_inconclusive_even_when_other_checks_fail() -> None:
    """serving review 1.4: 30 candidate requests used to roll back on a noisy p99."""
    few = judge_step(GATES, _evidence(candidate_requests=30, p99_ratio=Estimate(3.0, 2.5, 3.5)))
    assert few.verdict == "Inconclusive"
    assert _verdicts(few)["samples"] == "Inconclusive" and _verdicts(few)["p99VsBaseline"] == "Fail"


def test_missing_measurements_are_inconclusive_never_a_pass() -> None:
    step = judge_step(GATES, _evidence(capacity_ratio=Estimate(), p99_ratio=Estimate(math.nan, math.nan, math.nan)))
    assert _verdicts(step)["throughputVsBaseline"] == "Inconclusive"
    assert _verdicts(step)["p99VsBaseline"] == "Inconclusive" and step.verdict == "Inconclusive"


def test_client_side_errors_count_in_the_error_rate() -> None:
    bad = judge_step(GATES, _evidence(candidate_errors=200))
    assert _verdicts(bad)["errorRate"] == "Fail"
    clean = judge_step(GATES, _evidence(candidate_errors=0))
    assert _verdicts(clean)["errorRate"] == "Pass"
    borderline = judge_step(GATES, _evidence(candidate_errors=20))  # 1% of 2000: the interval straddles 1%
    assert _verdicts(borderline)["errorRate"] == "Inconclusive"
    low, high = wilson(0, 2000)
    assert low == pytest.approx(0.0, abs=1e-12) and 0 < high < 0.002


def test_absolute_budgets_and_a_saturated_generator() -> None:
    gates = Gates(max_p99_ms=5.0, min_throughput_rps=1000.0)
    step = judge_step(gates, _evidence(generator_bound=True))
    verdicts = _verdicts(step)
    assert verdicts["p99Budget"] == "Inconclusive"  # Locust's own delays are in a client-side p99
    assert verdicts["throughputMin"] == "Fail"  # server-side capacity is not the generator's


def test_served_quality_is_judged_on_the_paired_interval() -> None:
    def quality(drop: float, low: float, high: float, n: int = 540) -> QualityEvidence:
        return QualityEvidence("accuracy", "points", n, 99.0, 99.0 - drop, drop, low, high)

    assert judge_quality(GATES, quality(0.0, -0.7, 0.7)).verdict == "Pass"
    assert judge_quality(GATES, quality(0.5, -0.3, 1.4)).verdict == "Inconclusive"  # straddles 1.0
    assert judge_quality(GATES, quality(3.0, 2.1, 3.9)).verdict == "Fail"
    assert judge_quality(GATES, quality(0.0, -0.9, 0.9, n=40)).verdict == "Inconclusive"  # < minSamples
    assert judge_quality(GATES, None).verdict == "Inconclusive"


@pytest.mark.parametrize(("successes", "n"), [(8, 10), (0, 540), (3, 540), (540, 540), (1000, 2000)])
def test_wilson_and_z_match_scipy(successes: int, n: int) -> None:
    """The gate stays pure Python (the operator imports it, and its image has no numpy or scipy);
    scipy, in the test environment only, is the reference it must agree with."""
    from scipy.stats import binomtest, norm

    assert norm.ppf((1 + CONFIDENCE) / 2) == pytest.approx(Z, abs=1e-12)
    reference = binomtest(successes, n).proportion_ci(CONFIDENCE, method="wilson")
    assert wilson(successes, n) == pytest.approx((reference.low, reference.high), abs=1e-12)
    assert wilson(8, 10) == pytest.approx((0.5407928, 0.9314420), abs=1e-7)  # the textbook value
