"""The gate's logic: verdicts with evidence, Inconclusive for missing evidence, the failure budget."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from slimserve.api.spec import Gates
from slimserve.evaluator.gate import AccuracyEvidence, Window, decide, judge_step, judge_step_accuracy

GATES = Gates(max_accuracy_drop=1.0, p99_tolerance=0.2, min_throughput_ratio=0.9, max_error_rate=0.01, min_samples=100)
GOOD_BASE = Window(requests=900, throughput_rps=90, error_rate=0.0, p99_ms=10.0)
GOOD_CAND = Window(requests=300, throughput_rps=30, error_rate=0.0, p99_ms=11.0)
REFERENCE = Window(requests=1000, throughput_rps=100, error_rate=0.0, p99_ms=10.0)


def verdicts(step: object) -> dict[str, str]:
    return {c.name: c.verdict for c in step.checks}  # type: ignore[attr-defined]


def test_good_candidate_passes_every_check_with_evidence() -> None:
    step = judge_step(GATES, 25, GOOD_BASE, GOOD_CAND, REFERENCE)
    assert step.verdict == "Pass"
    assert verdicts(step) == {
        "samples": "Pass", "errorRate": "Pass", "p99VsBaseline": "Pass", "throughputVsBaseline": "Pass",
    }  # fmt: skip
    p99 = next(c for c in step.checks if c.name == "p99VsBaseline")
    assert (p99.value, p99.threshold, p99.baseline) == (11.0, pytest.approx(12.0), 10.0)
    thr = next(c for c in step.checks if c.name == "throughputVsBaseline")
    assert thr.value == pytest.approx(120.0)  # 30 req/s at 25% of the traffic is 120 req/s at full traffic
    assert thr.threshold == pytest.approx(90.0)


@pytest.mark.parametrize(
    ("field", "value", "check"),
    [
        ("p99_ms", 13.0, "p99VsBaseline"),
        ("error_rate", 0.05, "errorRate"),
        ("throughput_rps", 20.0, "throughputVsBaseline"),  # 80 req/s at full traffic < 0.9 x 100
    ],
)
def test_each_regression_fails_its_check(field: str, value: float, check: str) -> None:
    cand = Window(**{**vars(GOOD_CAND), field: value})
    step = judge_step(GATES, 25, GOOD_BASE, cand, REFERENCE)
    assert verdicts(step)[check] == "Fail"
    assert step.verdict == "Fail"


@pytest.mark.parametrize("bad", [math.nan, None, math.inf])
def test_nan_or_empty_measurement_is_inconclusive_never_pass(bad: float | None) -> None:
    for field, check in [
        ("p99_ms", "p99VsBaseline"),
        ("error_rate", "errorRate"),
        ("throughput_rps", "throughputVsBaseline"),
    ]:
        cand = Window(**{**vars(GOOD_CAND), field: bad})
        step = judge_step(GATES, 25, GOOD_BASE, cand, REFERENCE)
        assert verdicts(step)[check] == "Inconclusive", field
        assert step.verdict == "Inconclusive"


def test_empty_windows_are_inconclusive() -> None:
    step = judge_step(GATES, 10, Window(), Window(), None)
    assert step.verdict == "Inconclusive"
    assert set(verdicts(step).values()) == {"Inconclusive"}


def test_too_few_samples_is_inconclusive_even_when_numbers_look_good() -> None:
    cand = Window(**{**vars(GOOD_CAND), "requests": 99})
    step = judge_step(GATES, 25, GOOD_BASE, cand, REFERENCE)
    assert verdicts(step)["samples"] == "Inconclusive"
    assert step.verdict == "Inconclusive"


def test_at_100_percent_latency_is_compared_with_the_reference_window() -> None:
    step = judge_step(GATES, 100, Window(requests=0, throughput_rps=0.0, p99_ms=math.nan), GOOD_CAND, REFERENCE)
    p99 = next(c for c in step.checks if c.name == "p99VsBaseline")
    assert p99.baseline == 10.0 and "reference" in p99.detail
    no_reference = judge_step(GATES, 100, Window(requests=0), GOOD_CAND, None)
    assert verdicts(no_reference)["p99VsBaseline"] == "Inconclusive"


def test_absolute_budgets() -> None:
    gates = Gates(
        max_p99_ms=5.0, min_throughput_rps=200.0, p99_tolerance=None, min_throughput_ratio=None, min_samples=1
    )
    step = judge_step(gates, 50, GOOD_BASE, GOOD_CAND, REFERENCE)
    assert verdicts(step) == {"samples": "Pass", "errorRate": "Pass", "p99Budget": "Fail", "throughputMin": "Fail"}


def acc(n: int, base_only: int, cand_only: int, base_correct: int = 0) -> AccuracyEvidence:
    base_correct = base_correct or n - 5
    return AccuracyEvidence("accuracy", n, base_correct, base_correct - base_only + cand_only, base_only, cand_only)


def test_accuracy_is_judged_on_the_paired_interval() -> None:
    # Two disagreements out of 540: point drop 0.19, upper bound below 1 point → Pass.
    passed = judge_step_accuracy(GATES, acc(540, 2, 1))
    assert passed.verdict == "Pass" and passed.weight == 0
    # A clear regression: 30 more errors out of 540 (5.6 points) → Fail.
    assert judge_step_accuracy(GATES, acc(540, 30, 0)).verdict == "Fail"
    # Point estimate inside the budget but the interval reaches past it → Inconclusive, not Pass.
    unsure = judge_step_accuracy(GATES, acc(540, 8, 4))
    assert unsure.verdict == "Inconclusive"
    assert "larger evaluation set" in unsure.checks[0].detail


def test_accuracy_with_empty_or_small_evaluation_set_is_inconclusive() -> None:
    assert judge_step_accuracy(GATES, None).verdict == "Inconclusive"
    assert judge_step_accuracy(GATES, AccuracyEvidence("accuracy", 0, 0, 0, 0, 0)).verdict == "Inconclusive"
    assert judge_step_accuracy(GATES, acc(50, 0, 0)).verdict == "Inconclusive"  # 50 < minSamples 100


def test_fidelity_without_labels() -> None:
    ev = AccuracyEvidence("fidelity", 400, 400, 399, 1, 0)
    assert ev.baseline_pct == 100.0 and ev.drop == pytest.approx(0.25)
    assert judge_step_accuracy(GATES, ev).verdict == "Pass"


def _step(weight: int, verdict: str, name: str = "p99VsBaseline"):  # noqa: ANN202
    from slimserve.api.report import CheckResult, StepResult

    return StepResult(
        weight=weight, verdict=verdict, checks=[CheckResult(name=name, verdict=verdict, value=1, threshold=1)]
    )


def test_steps_are_judged_one_by_one_with_a_failure_budget() -> None:
    assert decide([_step(10, "Pass")], planned=3, failure_budget=0) == (None, "1/3 steps judged")
    assert decide([_step(10, "Fail")], 3, 0)[0] == "RolledBack"
    assert decide([_step(10, "Fail")], 3, 1)[0] is None  # the budget covers one failed step
    assert decide([_step(10, "Fail"), _step(50, "Fail")], 3, 1)[0] == "RolledBack"
    decision, reason = decide([_step(10, "Fail"), _step(50, "Pass"), _step(100, "Pass")], 3, 1)
    assert decision == "Promoted" and "within failureBudget 1" in reason
    assert decide([_step(10, "Pass"), _step(50, "Pass"), _step(100, "Pass")], 3, 0)[0] == "Promoted"


def test_inconclusive_step_stops_the_rollout_and_accuracy_failure_is_never_budgeted() -> None:
    assert decide([_step(10, "Pass"), _step(50, "Inconclusive")], 3, 5)[0] == "Inconclusive"
    decision, reason = decide([_step(0, "Fail", name="accuracyDrop")], 3, 5)
    assert decision == "RolledBack" and "never covered by the budget" in reason
    assert decide([], planned=0, failure_budget=0)[0] == "Inconclusive"


def test_gate_module_imports_nothing_heavy() -> None:
    code = (
        "import sys, slimserve.evaluator.gate; "
        "bad = [m for m in ('torch', 'onnxruntime', 'tritonclient', 'locust', 'numpy', 'gevent') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_throughput_failure_while_locust_was_saturated_is_inconclusive() -> None:
    slow = Window(**{**vars(GOOD_CAND), "throughput_rps": 20.0})
    step = judge_step(GATES, 25, GOOD_BASE, slow, REFERENCE, generator_bound=True)
    check = next(c for c in step.checks if c.name == "throughputVsBaseline")
    assert check.verdict == "Inconclusive" and "load generator" in check.detail
    assert step.verdict == "Inconclusive"
    # A latency regression is still a failure: the generator does not make the server slower.
    slower = Window(**{**vars(slow), "p99_ms": 30.0})
    assert judge_step(GATES, 25, GOOD_BASE, slower, REFERENCE, generator_bound=True).verdict == "Fail"
