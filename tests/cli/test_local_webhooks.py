"""`slimserve run` asks the rollout webhooks at the same points as the operator, against a real HTTP endpoint."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from slimserve.evaluator.rollout import run_rollout
from slimserve.local.controls import RunControls, update_controls
from slimserve.local.webhooks import LocalWebhooks
from tests.kube.test_reconcile import FakeJudge, _model
from tests.webhook_server import webhook_endpoint


def with_hooks(url: str, *hooks: dict[str, Any], **rollout: Any) -> Any:
    return _model(rollout={"steps": [10, 50, 100], "stepDuration": "1s", **rollout,
                           "webhooks": [{**h, "url": url + "/" + h["name"]} for h in hooks]})  # fmt: skip


def controls(tmp_path: Path, model: Any, said: list[str], **extra: Any) -> RunControls:
    hooks = LocalWebhooks(model, "int8", "baseline", said.append, **extra)
    return RunControls(tmp_path, manual_approval=False, say=said.append, poll_s=0.02, webhooks=hooks)


def test_confirm_promotion_holds_the_run_until_the_endpoint_answers_200(tmp_path: Path) -> None:
    said: list[str] = []
    with webhook_endpoint() as endpoint:
        endpoint.answer("/qa", 403, "QA has not signed off")
        model = with_hooks(endpoint.url, {"name": "qa", "type": "confirm-promotion"},
                           {"name": "done", "type": "post-rollout"})  # fmt: skip
        control = controls(tmp_path, model, said)
        signed = threading.Timer(1.5, lambda: endpoint.answer("/qa", 200))
        signed.start()
        outcome = run_rollout(FakeJudge(model, []), control=control)  # type: ignore[arg-type]
        assert outcome.decision == "Promoted" and len(outcome.steps) == 4
        assert len(endpoint.calls("/qa")) >= 2  # asked again once per stepDuration
        assert endpoint.calls("/qa")[0]["variant"] == "int8" and endpoint.calls("/qa")[0]["weight"] == 100
        assert control.webhooks is not None
        control.webhooks.tell(outcome.decision, outcome.reason, ended=True)
        assert endpoint.calls("/done")[0]["phase"] == "Promoted"
    assert "  confirm-promotion webhook 'qa': HTTP 403: QA has not signed off" in said
    waits = [s for s in said if s.startswith("waiting for")]
    assert waits == [
        "waiting for confirm-promotion webhook 'qa' (HTTP 403: QA has not signed off): asked again every 1 s "
        f"(slimserve abort|promote --out {tmp_path} end the wait)"
    ]  # said once, however often it is asked again
    assert said[-1] == "  confirm-promotion webhook 'qa': HTTP 200"


def test_a_rollback_webhook_answering_200_ends_the_run_before_the_next_step(tmp_path: Path) -> None:
    said: list[str] = []
    with webhook_endpoint() as endpoint:
        endpoint.answer("/alarm", 200)
        model = with_hooks(endpoint.url, {"name": "alarm", "type": "rollback"})
        outcome = run_rollout(FakeJudge(model, []), control=controls(tmp_path, model, said))  # type: ignore[arg-type]
    assert outcome.decision == "RolledBack" and [s.weight for s in outcome.steps] == [0]
    assert outcome.reason == "rollback webhook 'alarm' asked for a rollback (HTTP 200)"


def test_a_confirm_rollout_that_never_confirms_ends_the_run_inconclusive(tmp_path: Path) -> None:
    said: list[str] = []
    now = [0.0]

    def clock() -> float:
        now[0] += 0.5  # each look at the clock: half a second later
        return now[0]

    with webhook_endpoint() as endpoint:
        endpoint.answer("/ready", 503)
        model = with_hooks(endpoint.url, {"name": "ready", "type": "confirm-rollout"})
        outcome = run_rollout(FakeJudge(model, []), control=controls(tmp_path, model, said, clock=clock))  # type: ignore[arg-type]
    assert outcome.decision == "Inconclusive" and outcome.steps == []
    assert outcome.reason.startswith("confirm-rollout webhook 'ready' (HTTP 503) did not answer 2xx within 4 s")
    assert outcome.reason.endswith("no step ran")


def test_abort_ends_a_run_waiting_for_a_webhook(tmp_path: Path) -> None:
    said: list[str] = []
    with webhook_endpoint() as endpoint:
        endpoint.answer("/ready", 403)
        model = with_hooks(endpoint.url, {"name": "ready", "type": "confirm-rollout"}, stepDuration="1m")
        threading.Timer(0.3, lambda: update_controls(tmp_path, request="abort")).start()
        outcome = run_rollout(FakeJudge(model, []), control=controls(tmp_path, model, said))  # type: ignore[arg-type]
    assert outcome.decision == "RolledBack" and "aborted by hand" in outcome.reason
    assert len(endpoint.calls("/ready")) == 1
