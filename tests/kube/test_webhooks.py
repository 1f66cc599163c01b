"""Rollout webhooks in the operator: the pure phase machine with given answers, then the real reactor against
kmock with a real HTTP endpoint on loopback."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from slimserve.api import CompressedModelStatus
from slimserve.evaluator.webhooks import Answer
from slimserve.operator.reconcile import Observed, Plan, plan
from tests.kube.emulator import NS, emulated_cluster, example_model, running_operator
from tests.kube.test_controls import condition, posted, slimserve
from tests.kube.test_reactor import JOB, _judge, _to_evaluating, weights
from tests.kube.test_reconcile import ACCEPTED, DEPLOYED, NOW, OWNER, SETTINGS, _model, evaluating, judged, kinds
from tests.webhook_server import webhook_endpoint

OK, NO = Answer("ok", 200), Answer("refused", 403, "QA has not signed off")
LATER = "2026-01-01T00:00:30Z"  # past the retry (stepDuration 10s)


def with_hooks(*hooks: dict[str, Any], approval: str = "auto") -> Any:
    return _model(rollout={"steps": [10, 50, 100], "stepDuration": "10s", "approval": approval,
                           "webhooks": [{"url": "http://127.0.0.1:9/x", **h} for h in hooks]})  # fmt: skip


def step(model: Any, status: dict[str, Any], observed: Observed, answers: dict[str, Answer], now: str = NOW) -> Plan:
    """One handler pass: plan, ask what it needs (here: the given answers), plan again."""
    out = plan(model, OWNER, status, observed, SETTINGS, now)
    asked: list[str] = []
    while out.ask:
        asked += [h.name for h, _ in out.ask]
        observed = replace(observed, webhooks={**observed.webhooks, **{n: answers[n] for n in asked}})
        out = plan(model, OWNER, status, observed, SETTINGS, now)
    out.status.setdefault("asked", asked)  # for the test only
    return out


def clean(status: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in status.items() if k != "asked"}


def deploying(model: Any) -> dict[str, Any]:
    status = evaluating(with_hooks())  # same children, no webhooks: then back to Deploying
    return {**status, "phase": "Deploying", "steps": [], "deadline": "2026-01-01T00:20:00Z"}


def test_confirm_rollout_holds_the_first_step_then_pre_rollout_runs_once_confirmed() -> None:
    model = with_hooks({"name": "ready", "type": "confirm-rollout"}, {"name": "smoke", "type": "pre-rollout"})
    ready = Observed(deployments=DEPLOYED, route=ACCEPTED)
    held = step(model, deploying(model), ready, {"ready": NO})
    status = clean(held.status)
    assert held.status["asked"] == ["ready"] and status["phase"] == "Deploying" and status["deadline"] is None
    assert status["waitingFor"] == "confirm-rollout webhook 'ready' (HTTP 403: QA has not signed off)"
    assert condition(status, "WaitingForWebhook")["reason"] == "ConfirmRollout"
    assert not [m for m in held.apply if m["kind"] == "Job"] and held.events[0][0] == "Normal"
    CompressedModelStatus.model_validate(status)
    early = step(model, status, ready, {})  # before webhookRetryAt: nothing is asked, nothing changes
    assert early.status["asked"] == [] and early.apply == [] and early.events == []
    assert {k: v for k, v in early.status.items() if k not in ("asked", "conditions")} == {
        k: v for k, v in status.items() if k != "conditions"}  # fmt: skip
    again = step(model, status, ready, {"ready": NO}, LATER)
    assert again.events == []  # the same answer is not told twice
    go = step(model, status, ready, {"ready": OK, "smoke": OK}, LATER)
    assert go.status["asked"] == ["ready", "smoke"] and go.status["phase"] == "Evaluating"
    assert "Job/digits-eval-g1-s0" in kinds(go.apply) and go.status["waitingFor"] is None
    assert condition(go.status, "WaitingForWebhook")["status"] == "False"


def test_a_failing_pre_rollout_webhook_rolls_back_after_the_failure_budget() -> None:
    model = _model(rollout={"steps": [10, 50, 100], "stepDuration": "10s", "failureBudget": 1,
                            "webhooks": [{"name": "smoke", "type": "pre-rollout", "url": "http://h/x"}]})  # fmt: skip
    ready = Observed(deployments=DEPLOYED, route=ACCEPTED)
    failed = Answer("refused", 500, "smoke test failed")
    first = step(model, deploying(model), ready, {"smoke": failed})
    assert first.status["phase"] == "Deploying" and first.status["preRolloutFailures"] == 1
    assert first.events[0][0] == "Warning" and "(1 of 2 allowed)" in first.events[0][1]
    second = step(model, clean(first.status), ready, {"smoke": failed}, LATER)
    assert second.status["phase"] == "RolledBack" and second.status["decision"] == "RolledBack"
    assert condition(second.status, "Promoted")["reason"] == "PreRolloutFailed"
    assert "2 failed pre-rollout check(s) > failureBudget 1" in second.status["message"]


def test_confirm_promotion_holds_the_promotion_until_it_answers_2xx() -> None:
    model = with_hooks({"name": "qa", "type": "confirm-promotion"}, {"name": "done", "type": "post-rollout"},
                       {"name": "chat", "type": "event", "format": "slack"})  # fmt: skip
    status = evaluating(model)
    for index, weight in enumerate([0, 10, 50]):
        out = step(model, status, Observed(evaluator_job=judged("Pass", weight)), {})
        assert out.status["asked"] == [] and f"Job/digits-eval-g1-s{index + 1}" in kinds(out.apply)
        status = clean(out.status)
    held = step(model, status, Observed(evaluator_job=judged("Pass", 100)), {"qa": NO})
    status = clean(held.status)
    assert status["phase"] == "Progressing" and status["canaryWeight"] == 100 and status["deadline"] is None
    assert [s["weight"] for s in status["steps"]] == [0, 10, 50, 100] and status["stableVariant"] == "baseline"
    assert status["waitingFor"] == "confirm-promotion webhook 'qa' (HTTP 403: QA has not signed off)"
    assert [h.name for h, _ in held.notify] == ["chat"]  # the wait is an Event, told to the event webhook
    assert held.notify[0][1]["text"].startswith(f"[{NS}/digits] Progressing: waiting for confirm-promotion")
    promoted = step(model, status, Observed(), {"qa": OK}, LATER)
    assert promoted.status["phase"] == "Promoted" and promoted.status["stableVariant"] == "int8"
    assert [h.name for h, _ in promoted.notify] == ["chat", "done"]
    assert promoted.notify[1][1]["phase"] == "Promoted" and promoted.notify[1][1]["variant"] == "int8"
    CompressedModelStatus.model_validate(clean(promoted.status))


def test_a_rollback_webhook_answering_2xx_rolls_back_before_the_next_step() -> None:
    model = with_hooks({"name": "alarm", "type": "rollback"})
    status = evaluating(model)
    first = step(model, status, Observed(evaluator_job=judged("Pass", 0)), {"alarm": NO})
    assert first.status["asked"] == ["alarm"] and "Job/digits-eval-g1-s1" in kinds(first.apply)
    assert first.events == []  # a refusal is the rollback webhook's "no"
    down = Answer("error", detail="connection refused")
    unreachable = step(model, status, Observed(evaluator_job=judged("Pass", 0)), {"alarm": down})
    assert "Job/digits-eval-g1-s1" in kinds(unreachable.apply)
    assert unreachable.events == [
        ("Warning", "rollback webhook 'alarm' could not be asked (error: connection refused); the rollout goes on")
    ]
    out = step(model, clean(first.status), Observed(evaluator_job=judged("Pass", 10)), {"alarm": OK})
    assert out.status["phase"] == "RolledBack" and out.status["canaryWeight"] == 0
    assert condition(out.status, "Promoted")["reason"] == "WebhookRollback"
    assert "rollback webhook 'alarm' asked for a rollback (HTTP 200)" in out.status["message"]
    assert [s["weight"] for s in out.status["steps"]] == [0, 10]  # the judged step is recorded
    assert out.events[0][0] == "Warning"


# ---------------------------------------------------------------------------------------------
# the real reactor against kmock, the webhooks on a real HTTP endpoint
# ---------------------------------------------------------------------------------------------


@pytest.mark.kube
@pytest.mark.filterwarnings("ignore:read_binary is deprecated:DeprecationWarning")
def test_confirm_promotion_blocks_promotion_until_the_endpoint_answers_200(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        with webhook_endpoint() as endpoint:
            endpoint.answer("/qa", 403, "QA has not signed off")
            model = example_model()
            model["spec"]["rollout"]["stepDuration"] = "7s"  # asked again every 7 s
            model["spec"]["rollout"]["webhooks"] = [
                {"name": "qa", "type": "confirm-promotion", "url": endpoint.url + "/qa", "timeout": "2s"},
                {"name": "done", "type": "post-rollout", "url": endpoint.url + "/done"},
            ]
            async with emulated_cluster(tmp_path) as cluster, running_operator():
                await cluster.create_model(model)
                await _to_evaluating(cluster)
                for index, weight in enumerate([0, 10, 50, 100]):
                    await _judge(cluster, index, "Pass", weight)
                await cluster.wait(lambda: cluster.status("digits").get("waitingFor"), message="waitingFor")
                status = cluster.status("digits")
                assert status["waitingFor"] == "confirm-promotion webhook 'qa' (HTTP 403: QA has not signed off)"
                assert cluster.condition("digits", "WaitingForWebhook")["reason"] == "ConfirmPromotion"
                await asyncio.sleep(1.0)
                assert cluster.status("digits")["phase"] == "Progressing" and weights(cluster)["digits-int8"] == 100
                assert cluster.status("digits")["stableVariant"] == "baseline"
                assert endpoint.calls("/done") == []
                sent = endpoint.calls("/qa")[0]
                assert (sent["name"], sent["namespace"], sent["type"], sent["variant"]) == (
                    "digits", NS, "confirm-promotion", "int8")  # fmt: skip
                endpoint.answer("/qa", 200)
                status = await cluster.wait_phase("digits", "Promoted", timeout=15)
                assert status["stableVariant"] == "int8" and status.get("waitingFor") is None
                assert weights(cluster) == {"digits-int8": 100}
                await cluster.wait(lambda: endpoint.calls("/done"), message="post-rollout")
                assert endpoint.calls("/done")[0]["phase"] == "Promoted"

    with caplog.at_level("INFO", logger="kopf.objects"):
        asyncio.run(scenario())
    events = posted(caplog)
    assert any("waiting for confirm-promotion webhook 'qa' (HTTP 403" in m for _, m in events), events
    assert any("no longer holds the rollout: every webhook answered 2xx" in m for _, m in events), events


@pytest.mark.kube
@pytest.mark.filterwarnings("ignore:read_binary is deprecated:DeprecationWarning")
def test_a_rollback_webhook_answering_200_rolls_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        with webhook_endpoint() as endpoint:
            endpoint.answer("/alarm", 404)
            model = example_model()
            model["spec"]["rollout"]["webhooks"] = [
                {"name": "alarm", "type": "rollback", "url": endpoint.url + "/alarm"},
                {"name": "chat", "type": "event", "url": endpoint.url + "/chat", "format": "slack"},
            ]
            async with emulated_cluster(tmp_path) as cluster, running_operator():
                await cluster.create_model(model)
                await _to_evaluating(cluster)
                await _judge(cluster, 0, "Pass", 0)
                await cluster.wait(lambda: cluster.get(JOB, "digits-eval-g1-s1"), message="step 1 (alarm said 404)")
                endpoint.answer("/alarm", 200)
                await _judge(cluster, 1, "Pass", 10)
                status = await cluster.wait_phase("digits", "RolledBack")
                assert "rollback webhook 'alarm' asked for a rollback (HTTP 200)" in status["message"]
                assert cluster.condition("digits", "Promoted")["reason"] == "WebhookRollback"
                assert weights(cluster) == {"digits-baseline": 100}
                assert cluster.get(JOB, "digits-eval-g1-s2") is None
                await cluster.wait(lambda: any("RolledBack" in c["text"] for c in endpoint.calls("/chat")),
                                   message="the event webhook told")  # fmt: skip
                texts = [c["text"] for c in endpoint.calls("/chat")]
                assert all(t.startswith(f"[{NS}/digits] ") for t in texts), texts

    with caplog.at_level("INFO", logger="kopf.objects"):
        asyncio.run(scenario())
    assert any(level == "WARNING" and "asked for a rollback" in m for level, m in posted(caplog))


@pytest.mark.kube
@pytest.mark.filterwarnings("ignore:read_binary is deprecated:DeprecationWarning")
def test_promote_by_hand_overrides_a_waiting_confirm_promotion(tmp_path: Path) -> None:
    async def scenario() -> None:
        with webhook_endpoint() as endpoint:
            endpoint.answer("/qa", 503)
            model = example_model()
            model["spec"]["rollout"]["webhooks"] = [
                {"name": "qa", "type": "confirm-promotion", "url": endpoint.url + "/qa"}
            ]
            async with emulated_cluster(tmp_path) as cluster, running_operator():
                await cluster.create_model(model)
                await _to_evaluating(cluster)
                for index, weight in enumerate([0, 10, 50, 100]):
                    await _judge(cluster, index, "Pass", weight)
                await cluster.wait(lambda: cluster.status("digits").get("waitingFor"), message="waitingFor")
                result = await slimserve("promote", "digits", "-n", NS, "--yes")
                assert result.exit_code == 0, result.output
                status = await cluster.wait_phase("digits", "Promoted")
                assert status.get("waitingFor") is None
                assert cluster.condition("digits", "WaitingForWebhook")["reason"] == "RolloutEnded"

    asyncio.run(scenario())


def test_webhook_urls_stay_out_of_the_worker_pods() -> None:
    from slimserve.operator import builders as b

    model = with_hooks({"name": "chat", "type": "event", "url": "https://hooks.slack.com/services/T0/B0/secret"})
    config_map = b.build_spec_config_map(model, OWNER)
    assert "hooks.slack.com" not in str(config_map) and "webhooks" not in str(config_map)
