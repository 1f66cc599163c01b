"""Rollout webhooks: what each answer means at each point, and the client against a real HTTP endpoint."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from slimserve.api.spec import Webhook
from slimserve.evaluator import webhooks
from slimserve.evaluator.webhooks import Answer, Context, call, call_async, gate, payload
from tests.webhook_server import closed_port, webhook_endpoint

OK, NO, LATE, DOWN = (
    Answer("ok", 200),
    Answer("refused", 403, "not yet"),
    Answer("timeout", detail="1s"),
    Answer("error", detail="connection refused"),
)


def hook(name: str, type: str, url: str = "http://127.0.0.1:9/x", **extra: Any) -> Webhook:
    return Webhook.model_validate({"name": name, "type": type, "url": url, **extra})


HOOKS = [
    hook("ready", "confirm-rollout"),
    hook("smoke", "pre-rollout"),
    hook("qa", "confirm-promotion"),
    hook("alarm", "rollback"),
    hook("done", "post-rollout"),
    hook("chat", "event"),
]


def test_each_point_asks_its_types_in_order_and_no_more() -> None:
    assert [h.name for h in gate(HOOKS, "start", {}).ask] == ["ready"]  # pre-rollout only once confirmed
    assert [h.name for h in gate(HOOKS, "start", {"ready": OK}).ask] == ["smoke"]
    assert gate(HOOKS, "start", {"ready": OK, "smoke": OK}).action == "go"
    assert [h.name for h in gate(HOOKS, "step", {}).ask] == ["alarm"]
    assert [h.name for h in gate(HOOKS, "promotion", {"alarm": NO}).ask] == ["qa"]
    assert gate([], "promotion", {}).action == "go"


@pytest.mark.parametrize("answer", [NO, LATE, DOWN])
def test_a_confirm_webhook_that_does_not_answer_2xx_waits_and_counts_nothing(answer: Answer) -> None:
    verdict = gate(HOOKS, "start", {"ready": answer})
    assert verdict.action == "wait" and verdict.hook is not None and verdict.hook.name == "ready"
    assert verdict.waiting_for == f"confirm-rollout webhook 'ready' ({answer.describe()})"
    assert gate(HOOKS, "promotion", {"alarm": answer, "qa": answer}).action == "wait"


def test_a_failed_pre_rollout_check_is_retried_within_the_failure_budget_then_rolls_back() -> None:
    answers = {"ready": OK, "smoke": Answer("refused", 500, "smoke test failed")}
    retry = gate(HOOKS, "start", answers, failures=0, failure_budget=1)
    assert retry.action == "retry" and "(1 of 2 allowed)" in retry.reason
    assert retry.waiting_for.startswith("pre-rollout webhook 'smoke' (HTTP 500: smoke test failed)")
    out = gate(HOOKS, "start", answers, failures=1, failure_budget=1)
    assert out.action == "rollback" and "2 failed pre-rollout check(s) > failureBudget 1" in out.reason
    assert gate(HOOKS, "start", {"ready": OK, "smoke": LATE}).action == "rollback"  # budget 0, no answer: failed


def test_only_a_2xx_from_a_rollback_webhook_rolls_back() -> None:
    assert gate(HOOKS, "step", {"alarm": OK}).action == "rollback"
    assert "rollback webhook 'alarm' asked for a rollback (HTTP 200)" in gate(HOOKS, "step", {"alarm": OK}).reason
    for answer in (NO, LATE, DOWN):  # an alarm that cannot be reached is no reason to roll back
        assert gate(HOOKS, "step", {"alarm": answer}).action == "go"
    assert gate(HOOKS, "promotion", {"alarm": OK}).action == "rollback"  # before confirm-promotion is asked


def test_payloads_are_flaggers_shape_or_slacks() -> None:
    context = Context("digits", "ml", "Progressing", "int8", "baseline", 50, "canary int8 at 50%")
    body = payload(hook("qa", "confirm-promotion", metadata={"env": "staging"}), context)
    assert body == {"name": "digits", "namespace": "ml", "phase": "Progressing", "type": "confirm-promotion",
                    "variant": "int8", "stable": "baseline", "weight": 50, "message": "canary int8 at 50%",
                    "metadata": {"env": "staging"}}  # fmt: skip
    assert payload(hook("chat", "event", format="slack"), context) == {
        "text": "[ml/digits] Progressing: canary int8 at 50%"
    }


def test_the_client_against_a_real_endpoint() -> None:
    with webhook_endpoint() as endpoint:
        endpoint.answer("/no", 403, "QA has not signed off")
        endpoint.answer("/slow", 200, delay=2.0)
        ok = call(hook("a", "confirm-rollout", endpoint.url + "/yes"), {"x": 1})
        assert ok == Answer("ok", 200) and endpoint.calls("/yes") == [{"x": 1}]
        refused = call(hook("a", "confirm-rollout", endpoint.url + "/no"), {})
        assert refused == Answer("refused", 403, "QA has not signed off")
        assert refused.describe() == "HTTP 403: QA has not signed off"
        started = time.monotonic()
        late = call(hook("a", "confirm-rollout", endpoint.url + "/slow", timeout="300ms"), {})
        assert late == Answer("timeout", detail="300ms") and time.monotonic() - started < 1.5
        assert late.describe() == "timed out after 300ms"
        missing = call(hook("a", "event", endpoint.url + "/x"), {})
        assert missing.ok  # the test endpoint answers 200 by default
    down = call(hook("a", "rollback", f"http://127.0.0.1:{closed_port()}/x"), {})
    assert down == Answer("error", detail="connection refused")


def test_the_async_client_does_not_hold_the_event_loop() -> None:
    async def scenario() -> tuple[dict[str, Answer], int]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.05)
                ticks += 1

        ticker = asyncio.create_task(tick())
        with webhook_endpoint() as endpoint:
            endpoint.answer("/slow", 200, delay=1.0)
            calls = [(hook("a", "confirm-rollout", endpoint.url + "/slow", timeout="500ms"), {}),
                     (hook("b", "pre-rollout", endpoint.url + "/fast"), {})]  # fmt: skip
            answers = await webhooks.ask_all(calls)
        ticker.cancel()
        return answers, ticks

    answers, ticks = asyncio.run(scenario())
    assert answers == {"a": Answer("timeout", detail="500ms"), "b": Answer("ok", 200)}
    assert ticks >= 5  # the loop kept running while the slow endpoint was waited for


def test_call_async_gives_up_after_the_timeout() -> None:
    with webhook_endpoint() as endpoint:
        endpoint.answer("/slow", 200, delay=1.5)
        answer = asyncio.run(call_async(hook("a", "rollback", endpoint.url + "/slow", timeout="200ms"), {}))
    assert answer.kind == "timeout"
