"""The rollout webhooks of one `slimserve run`, asked at the same points and read by the same gate as in the operator.

`slimserve.evaluator.webhooks.gate` decides what each answer means; this class asks (one line per call),
keeps the wait's clock and tells post-rollout and event webhooks. A local run cannot wait for ever (it holds
Triton, Prometheus and the terminal): a confirm-* webhook that has not answered 2xx within
`spec.rollout.maxStepDuration` (default 4 x stepDuration) ends the run Inconclusive, nothing promoted.
`slimserve abort|promote --out DIR` act while it waits, as in a cluster.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

from slimserve.api.report import Decision
from slimserve.api.resource import CompressedModel
from slimserve.api.spec import duration_seconds
from slimserve.evaluator import policy, webhooks
from slimserve.evaluator.webhooks import Answer, Context, Verdict

Call = Callable[[webhooks.Webhook, dict[str, object]], Answer]
Check = tuple[Literal["go"], None] | tuple[Literal["wait"], str] | tuple[Literal["decide"], tuple[Decision, str]]


class LocalWebhooks:
    """`check(next)` before each step and decision: go, wait (with what for), or the run's decision."""

    def __init__(
        self,
        model: CompressedModel,
        candidate: str,
        stable: str,
        say: Callable[[str], None],
        call: Call = webhooks.call,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model, self.candidate, self.stable = model, candidate, stable
        self.hooks = model.spec.rollout.webhooks
        self.say, self.call, self.clock = say, call, clock
        rollout = model.spec.rollout
        self.retry_s = webhooks.retry_seconds(rollout)  # once per stepDuration, as in a cluster
        longest = rollout.max_step_duration
        self.wait_limit_s = max(duration_seconds(longest), self.retry_s) if longest else 4 * self.retry_s
        self.started = False
        self.failures = 0
        self.since: float | None = None  # when the current wait began
        self.next_ask = 0.0
        self.waiting: str | None = None  # what the run waits for, as said
        self.weight = 0

    def context(self, phase: str, message: str = "") -> Context:
        return Context(self.model.metadata.name, "", phase, self.candidate, self.stable, self.weight, message)

    def check(self, nxt: policy.NextStep) -> Check:
        if not self.started:
            point: webhooks.Point = "start"
        elif nxt.decision is None:
            point = "step"
        elif nxt.decision == "Promoted":
            point = "promotion"
        else:
            return "go", None
        self.weight = nxt.weight if nxt.weight is not None else 100
        if not webhooks.of_type(self.hooks, *webhooks.POINTS[point]):
            self.started = True
            return "go", None
        now = self.clock()
        if self.waiting is not None and now < self.next_ask:
            return "wait", self.waiting
        verdict = self._ask(point, "Progressing" if self.started else "Deploying")
        if verdict.action in ("wait", "retry"):
            if verdict.action == "retry":
                self.failures += 1
            self.since = now if self.since is None else self.since
            if verdict.action == "wait" and now - self.since >= self.wait_limit_s:
                nothing = "no step ran" if point == "start" else "nothing promoted"
                return "decide", (
                    "Inconclusive",
                    f"{verdict.waiting_for} did not answer 2xx within {self.wait_limit_s:g} s (a local run waits "
                    f"up to spec.rollout.maxStepDuration, default 4 x stepDuration); {nothing}",
                )
            self.waiting = f"waiting for {verdict.waiting_for}: asked again every {self.retry_s:g} s"
            self.next_ask = now + self.retry_s
            return "wait", self.waiting
        self.waiting, self.since = None, None
        if verdict.action == "rollback":
            return "decide", ("RolledBack", verdict.reason)
        self.started = True
        return "go", None

    def _ask(self, point: webhooks.Point, phase: str) -> Verdict:
        answers: dict[str, Answer] = {}
        while True:
            verdict = webhooks.gate(self.hooks, point, answers, self.failures, self.model.spec.rollout.failure_budget)
            if verdict.action != "ask":
                return verdict
            for hook in verdict.ask:
                answers[hook.name] = self.call(hook, webhooks.payload(hook, self.context(phase)))
                self.say(f"  {webhooks.named(hook)}: {answers[hook.name].describe()}")

    def tell(self, phase: str, message: str, ended: bool = False) -> None:
        """event webhooks hear `message`; post-rollout webhooks too when the rollout `ended` (Promoted or
        RolledBack). A failure is shown and changes nothing."""
        types = ("event", "post-rollout") if ended else ("event",)
        for hook in webhooks.of_type(self.hooks, *types):
            answer = self.call(hook, webhooks.payload(hook, self.context(phase, message)))
            if not answer.ok:
                self.say(f"  {webhooks.named(hook)} was not told: {answer.describe()}")
