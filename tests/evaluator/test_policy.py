"""One rollout policy: what runs next, and when it ends (the operator and `slimserve run` both use it)."""

from __future__ import annotations

import pytest

from slimserve.api.report import CheckResult, StepResult
from slimserve.evaluator.policy import next_step

WEIGHTS = [10, 50, 100]


def _step(weight: int, verdict: str, check: str = "p99VsBaseline") -> StepResult:
    name = "qualityDrop" if weight == 0 else check
    return StepResult(
        weight=weight,
        verdict=verdict,  # type: ignore[arg-type]
        checks=[CheckResult(name=name, verdict=verdict, value=None, threshold=None)],
    )  # type: ignore[arg-type]


def _run(*steps: tuple[int, str], budget: int = 0, limit: int = 1):  # type: ignore[no-untyped-def]
    return next_step([_step(w, v) for w, v in steps], WEIGHTS, budget, limit)


def test_the_plan_is_quality_then_every_weight_and_only_a_passed_last_step_promotes() -> None:
    assert (_run().weight, _run().decision) == (0, None)
    assert _run((0, "Pass")).weight == 10
    assert _run((0, "Pass"), (10, "Pass"), (50, "Pass")).weight == 100
    done = _run((0, "Pass"), (10, "Pass"), (50, "Pass"), (100, "Pass"))
    assert done.decision == "Promoted"


def test_a_failed_quality_check_rolls_back_at_once_whatever_the_budget() -> None:
    assert _run((0, "Fail"), budget=5).decision == "RolledBack"


def test_a_failed_step_reruns_the_same_weight_and_never_advances() -> None:
    again = _run((0, "Pass"), (10, "Fail"), budget=1)
    assert (again.decision, again.weight, again.attempt, again.failures) == (None, 10, 1, 1)
    assert _run((0, "Pass"), (10, "Fail"), budget=0).decision == "RolledBack"
    assert _run((0, "Pass"), (10, "Fail"), (10, "Fail"), budget=1).decision == "RolledBack"


def test_a_failed_last_step_is_never_promoted() -> None:
    """serving review 1.3: a failed 100% step inside the budget used to report Promoted."""
    nxt = _run((0, "Pass"), (10, "Pass"), (50, "Pass"), (100, "Fail"), budget=1)
    assert nxt.decision is None and nxt.weight == 100
    assert (
        _run((0, "Pass"), (10, "Pass"), (50, "Pass"), (100, "Fail"), (100, "Fail"), budget=1).decision == "RolledBack"
    )


def test_inconclusive_steps_rerun_up_to_the_limit_then_end_inconclusive() -> None:
    assert _run((0, "Pass"), (10, "Inconclusive"), limit=1).weight == 10
    assert _run((0, "Pass"), (10, "Inconclusive"), (10, "Inconclusive"), limit=1).decision == "Inconclusive"
    assert _run((0, "Inconclusive"), limit=5).decision == "Inconclusive"  # the same data would say the same


def test_steps_out_of_plan_are_refused() -> None:
    with pytest.raises(ValueError, match="plan expected"):
        _run((10, "Pass"))


def test_a_candidate_that_cannot_answer_fails_the_quality_check_and_rolls_back(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import numpy as np

    from slimserve.api.resource import parse_compressed_model
    from slimserve.evaluator.canary import Roles
    from slimserve.evaluator.load import Target
    from slimserve.evaluator.rollout import Judge

    data = tmp_path / "eval.npz"
    np.savez(data, x=np.zeros((4, 3), np.float32), y=np.zeros(4, np.int64))
    spec = parse_compressed_model({
        "apiVersion": "slimserve.dev/v1alpha1", "kind": "CompressedModel", "metadata": {"name": "m"},
        "spec": {"source": {"uri": "m.onnx"}, "data": {"evaluation": str(data)},
                 "compression": {"variants": [{"name": "a", "steps": [{"quantize": {"mode": "dynamic"}}]}]}},
    }).spec  # fmt: skip
    nowhere = Target("http://127.0.0.1:9", "a", 0, "candidate")  # nothing listens on port 9
    judge = Judge(
        spec=spec,
        roles=Roles(nowhere, nowhere, nowhere),
        capacity=None,
        data=data,  # type: ignore[arg-type]
        work_dir=tmp_path,
        reference=np.eye(3, dtype=np.float32)[[0, 1, 2, 0]],
    )
    step, _ = judge.step(0)
    assert step.verdict == "Fail" and "failed to answer" in step.checks[0].detail
    assert next_step([step], WEIGHTS, 5, 5).decision == "RolledBack"
