"""The rollout policy, once: from the steps judged so far to the next step or the decision.

Both `slimserve run` and the operator call `next_step`; it is pure (no I/O, no heavy imports) so the
operator image stays small. The plan is the served quality check (weight 0) followed by the canary
weights of `spec.rollout.steps`. The rules follow Argo Rollouts' analysis (failureLimit,
inconclusiveLimit):
- a Pass moves to the next weight; a Pass of the last weight promotes — nothing else does;
- a failed quality check rolls back at once (no budget covers a worse model);
- any other failed step is run again *at the same weight* (never more traffic on a failure) and
  counts against `failureBudget`; one failure more than the budget rolls back;
- an Inconclusive step is run again at the same weight up to `inconclusiveLimit` times in the whole
  rollout; one more ends the rollout Inconclusive (nothing promoted, the stable keeps serving). An
  Inconclusive quality check ends it at once: the same evaluation set would give the same answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from slimserve.api.report import Decision, StepResult
from slimserve.evaluator.gate import HARD_CHECKS

QUALITY_WEIGHT: Final = 0


@dataclass(frozen=True)
class NextStep:
    """Either a decision, or the weight to judge next (0 = the served quality check) and its attempt."""

    decision: Decision | None
    reason: str
    weight: int | None = None
    attempt: int = 0
    failures: int = 0
    inconclusive: int = 0

    @property
    def done(self) -> bool:
        return self.decision is not None


def plan(weights: Sequence[int]) -> list[int]:
    """The weights judged in order: the quality check, then the canary steps."""
    return [QUALITY_WEIGHT, *weights]


def _names(step: StepResult, verdict: str) -> str:
    return ", ".join(c.name for c in step.checks if c.verdict == verdict) or "no check"


def next_step(
    steps: Sequence[StepResult], weights: Sequence[int], failure_budget: int, inconclusive_limit: int
) -> NextStep:
    """What to do after `steps` (in the order they were judged)."""
    order = plan(weights)
    index = attempt = failures = inconclusive = 0
    for step in steps:
        if index >= len(order) or step.weight != order[index]:
            expected = order[index] if index < len(order) else "none"
            raise ValueError(f"step at {step.weight}% was judged, but the plan expected {expected}")
        counts = {"failures": failures, "inconclusive": inconclusive}
        where = "served quality" if step.weight == QUALITY_WEIGHT else f"step {step.weight}%"
        if any(c.name in HARD_CHECKS and c.verdict == "Fail" for c in step.checks):
            return NextStep("RolledBack", f"{where}: {_names(step, 'Fail')} failed", **counts)
        if step.verdict == "Pass":
            index, attempt = index + 1, 0
            continue
        attempt += 1
        if step.verdict == "Fail":
            failures += 1
            if failures > failure_budget:
                return NextStep(
                    "RolledBack",
                    f"{where}: {_names(step, 'Fail')} failed; {failures} failed step(s) > failureBudget {failure_budget}",
                    failures=failures, inconclusive=inconclusive,
                )  # fmt: skip
            continue
        inconclusive += 1
        if step.weight == QUALITY_WEIGHT or inconclusive > inconclusive_limit:
            limit = (
                "" if step.weight == QUALITY_WEIGHT else f" ({inconclusive} > inconclusiveLimit {inconclusive_limit})"
            )
            return NextStep(
                "Inconclusive", f"{where}: {_names(step, 'Inconclusive')} inconclusive{limit}; nothing promoted",
                failures=failures, inconclusive=inconclusive,
            )  # fmt: skip
    if index == len(order):
        spent = f" after {failures} failed and {inconclusive} inconclusive step(s)" if failures or inconclusive else ""
        return NextStep(
            "Promoted", f"every step passed, {order[-1]}% last{spent}", failures=failures, inconclusive=inconclusive
        )
    return NextStep(
        None,
        f"{len(steps)} step(s) judged",
        weight=order[index],
        attempt=attempt,
        failures=failures,
        inconclusive=inconclusive,
    )
