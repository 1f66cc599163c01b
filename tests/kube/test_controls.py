"""The user's rollout controls in the pure phase machine: pause, resume, abort, promote, retry, approval."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from slimserve.api import CompressedModelStatus
from slimserve.api.controls import Controls
from slimserve.operator.reconcile import Observed, plan
from tests.kube.emulator import NS, emulated_cluster, example_model, running_operator
from tests.kube.test_reactor import DEPLOY, JOB, _judge, _to_evaluating, weights
from tests.kube.test_reconcile import NOW, OWNER, SETTINGS, _model, evaluating, job, judged, kinds

PAUSED = Controls(paused=True)


def condition(status: dict[str, Any], type: str) -> dict[str, Any]:
    return next((c for c in status["conditions"] if c["type"] == type), {})


def route_weights(out: Any) -> dict[str, int]:
    route = next(m for m in out.apply if m["kind"] == "HTTPRoute")
    return {r["name"]: r["weight"] for r in route["spec"]["rules"][0]["backendRefs"]}


def judge(status: dict[str, Any], *steps: tuple[str, int], controls: Controls | None = None, model: Any = None):  # type: ignore[no-untyped-def]
    out = None
    for verdict, weight in steps:
        out = plan(model or _model(), OWNER, status, Observed(evaluator_job=judged(verdict, weight)), SETTINGS, NOW,
                   controls)  # fmt: skip
        status = out.status
    return out


def test_pause_lets_the_step_in_flight_finish_then_starts_no_step_until_resumed() -> None:
    status = evaluating()
    paused = plan(_model(), OWNER, status, Observed(evaluator_job=job(None)), SETTINGS, NOW, PAUSED)
    assert condition(paused.status, "Paused")["status"] == "True" and paused.apply == []
    assert paused.events == [("Normal", paused.events[0][1])] and "paused during Evaluating" in paused.events[0][1]
    judged_out = judge(paused.status, ("Pass", 0), controls=PAUSED)
    status = judged_out.status
    assert [s["weight"] for s in status["steps"]] == [0] and status["deadline"] is None
    assert judged_out.apply == [] and judged_out.events == []  # no new step, no traffic change; Paused already said
    assert "until `slimserve resume` starts the step at 10%" in status["message"]
    idle = plan(_model(), OWNER, status, Observed(), SETTINGS, "2026-01-01T09:00:00Z", PAUSED)
    assert idle.apply == [] and idle.status["phase"] == "Evaluating"  # no deadline runs out while paused
    resumed = plan(_model(), OWNER, status, Observed(), SETTINGS, NOW, Controls())
    assert "Job/digits-eval-g1-s1" in kinds(resumed.apply) and route_weights(resumed)["digits-int8"] == 10
    assert resumed.status["phase"] == "Progressing" and resumed.status["deadline"]
    assert condition(resumed.status, "Paused")["reason"] == "Resumed"
    assert len(resumed.events) == 1 and resumed.events[0][1].startswith("resumed: canary int8 at 10%")
    CompressedModelStatus.model_validate(resumed.status)


def test_abort_rolls_back_now_and_counts_once() -> None:
    status = judge(evaluating(), ("Pass", 0)).status
    abort = Controls(requests={"abort": "2026-01-01T00:00:05Z"})
    out = plan(_model(), OWNER, status, Observed(evaluator_job=job(None)), SETTINGS, NOW, abort)
    assert out.status["phase"] == "RolledBack" and out.status["canaryWeight"] == 0
    assert ("batch/v1", "Job", "digits-eval-g1-s1") in out.delete
    assert route_weights(out) == {"digits-baseline": 100}
    assert condition(out.status, "Promoted")["reason"] == "Aborted"
    assert out.status["handledRequests"] == {"abort": "2026-01-01T00:00:05Z"}
    assert out.events and out.events[0][0] == "Warning" and "aborted by hand at 10%" in out.events[0][1]
    again = plan(_model(), OWNER, out.status, Observed(), SETTINGS, NOW, abort)
    assert again.events == [] and again.apply == [] and again.delete == []
    CompressedModelStatus.model_validate(out.status)


def test_promote_skips_the_remaining_steps() -> None:
    status = judge(evaluating(), ("Pass", 0), ("Pass", 10)).status
    promote = Controls(requests={"promote": "t1"})
    out = plan(_model(), OWNER, status, Observed(evaluator_job=job(None)), SETTINGS, NOW, promote)
    assert out.status["phase"] == "Promoted" and out.status["stableVariant"] == "int8"
    assert condition(out.status, "Promoted")["reason"] == "PromotedByHand"
    assert "skipping the steps at 100%" in out.status["message"]
    assert ("batch/v1", "Job", "digits-eval-g1-s2") in out.delete
    assert route_weights(out) == {"digits-int8": 100}
    assert out.gate_decision is None  # not the gate's decision


def test_a_request_that_does_not_apply_is_refused_once_with_a_reason() -> None:
    status = plan(_model(), OWNER, None, Observed(), SETTINGS, NOW).status  # Compressing
    requests = Controls(requests={"promote": "t1", "retry": "t2"})
    out = plan(_model(), OWNER, status, Observed(compression_job=job(None)), SETTINGS, NOW, requests)
    assert out.status["phase"] == "Compressing" and out.apply == []
    assert [e[0] for e in out.events] == ["Warning", "Warning"]
    assert "no canary serves yet" in out.events[0][1] and "only a RolledBack or Failed" in out.events[1][1]
    assert out.status["handledRequests"] == {"promote": "t1", "retry": "t2"}
    later = judge(evaluating(), ("Pass", 0))  # the same values later do not promote: each request counts once
    later_status = {**later.status, "handledRequests": out.status["handledRequests"]}
    assert plan(_model(), OWNER, later_status, Observed(), SETTINGS, NOW, requests).status["phase"] != "Promoted"


def test_retry_deploys_and_judges_again_without_compressing() -> None:
    rolled_back = judge(evaluating(), ("Fail", 0)).status
    assert rolled_back["phase"] == "RolledBack"
    retry = Controls(requests={"retry": "t1"})
    out = plan(_model(), OWNER, rolled_back, Observed(), SETTINGS, NOW, retry)
    assert out.status["phase"] == "Packaging" and out.status["retries"] == 1 and out.status["steps"] == []
    assert kinds(out.apply) == ["Job/digits-package-g1-r1"]  # no compression Job
    assert out.events[0] == ("Normal", out.status["message"]) and "no new compression" in out.status["message"]
    # The rollback's drain must not scale the retried canary down later: it happens now, before deploying.
    assert ("digits-int8", 0) in out.scale and out.status["drain"] is None
    packaged = plan(_model(), OWNER, out.status, Observed(packaging_job=job(True)), SETTINGS, NOW, retry)
    assert packaged.status["phase"] == "Deploying"
    assert "Deployment/digits-int8" in kinds(packaged.apply) and "Deployment/digits--control" in kinds(packaged.apply)
    from tests.kube.test_reconcile import ACCEPTED, DEPLOYED

    deployed = plan(_model(), OWNER, packaged.status, Observed(deployments=DEPLOYED, route=ACCEPTED), SETTINGS, NOW)
    assert "Job/digits-eval-g1-r1-s0" in kinds(deployed.apply)
    CompressedModelStatus.model_validate(deployed.status)


def test_retry_without_a_compression_output_is_refused() -> None:
    status = plan(_model(), OWNER, None, Observed(), SETTINGS, NOW).status
    failed = plan(_model(), OWNER, status, Observed(compression_job=job(False, "OOMKilled", 137)), SETTINGS, NOW)
    out = plan(_model(), OWNER, failed.status, Observed(), SETTINGS, NOW, Controls(requests={"retry": "t1"}))
    assert out.status["phase"] == "Failed" and out.apply == []
    assert out.events[0][0] == "Warning" and "no compression output" in out.events[0][1]


def test_manual_approval_holds_a_passing_rollout_until_promoted() -> None:
    model = _model(rollout={"steps": [10, 50, 100], "stepDuration": "10s", "approval": "manual"})
    status = evaluating(model)
    out = judge(status, ("Pass", 0), ("Pass", 10), ("Pass", 50), ("Pass", 100), model=model)
    assert out is not None
    status = out.status
    assert status["phase"] == "Progressing" and status["canaryWeight"] == 100 and status["deadline"] is None
    assert condition(status, "WaitingForApproval")["status"] == "True"
    assert out.events and "waiting for approval" in out.events[0][1]
    idle = plan(model, OWNER, status, Observed(), SETTINGS, "2026-01-01T09:00:00Z")
    assert idle.apply == [] and idle.status["phase"] == "Progressing"
    approved = plan(model, OWNER, status, Observed(), SETTINGS, NOW, Controls(requests={"promote": "t1"}))
    assert approved.status["phase"] == "Promoted" and "approved by hand" in approved.status["message"]
    assert condition(approved.status, "WaitingForApproval")["reason"] == "Approved"


def test_paused_once_ready_the_first_step_waits() -> None:
    from tests.kube.test_reconcile import ACCEPTED, DEPLOYED

    status = evaluating()
    deploying = {**status, "phase": "Deploying", "steps": [], "deadline": "2026-01-01T00:20:00Z"}
    out = plan(_model(), OWNER, deploying, Observed(deployments=DEPLOYED, route=ACCEPTED), SETTINGS, NOW, PAUSED)
    assert out.status["phase"] == "Deploying" and out.status["deadline"] is None
    assert not [m for m in out.apply if m["kind"] == "Job"]
    late = plan(_model(), OWNER, out.status, Observed(deployments=DEPLOYED, route=ACCEPTED), SETTINGS,
                "2026-01-01T09:00:00Z", PAUSED)  # fmt: skip
    assert late.status["phase"] == "Deploying"
    resumed = plan(_model(), OWNER, out.status, Observed(deployments=DEPLOYED, route=ACCEPTED), SETTINGS, NOW)
    assert resumed.status["phase"] == "Evaluating" and "Job/digits-eval-g1-s0" in kinds(resumed.apply)


def test_controls_parse_from_annotations() -> None:
    controls = Controls.from_annotations({"rollout.slimserve.dev/paused": "true", "rollout.slimserve.dev/abort": "t1",
                                          "slimserve.dev/other": "x"})  # fmt: skip
    assert controls.paused and controls.requests == {"abort": "t1"}
    assert controls.pending({"abort": "t1"}) == [] and controls.pending({"abort": "t0"}) == ["abort"]
    assert not Controls.from_annotations({"rollout.slimserve.dev/paused": "false"}).paused


# ---------------------------------------------------------------------------------------------
# the real reactor against kmock, steered with the CLI as a user would
# ---------------------------------------------------------------------------------------------


def slimserve(*args: str, input: str | None = None) -> Any:
    """`slimserve ARGS` in a thread (the emulator serves from this test's event loop)."""
    from typer.testing import CliRunner

    from slimserve.cli.main import app

    return asyncio.to_thread(CliRunner().invoke, app, list(args), input=input)


def posted(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    """What the operator posted as Events on the CompressedModel (kopf's object logger, INFO and up)."""
    return [(r.levelname, r.getMessage()) for r in caplog.records if getattr(r, "k8s_ref", None)]


@pytest.mark.kube
@pytest.mark.filterwarnings("ignore:read_binary is deprecated:DeprecationWarning")
def test_pause_resume_and_promote_from_the_cli(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with emulated_cluster(tmp_path) as cluster, running_operator():
            await cluster.create_model(example_model())
            refused = await slimserve("promote", "digits", "-n", NS, "--yes")
            assert refused.exit_code == 2 and "a canary can be promoted once it serves" in refused.output
            await _to_evaluating(cluster)
            result = await slimserve("pause", "digits", "-n", NS)
            assert result.exit_code == 0, result.output
            await cluster.wait(lambda: cluster.condition("digits", "Paused").get("status") == "True", message="Paused")
            await _judge(cluster, 0, "Pass", 0)  # the step in flight is judged and recorded
            await asyncio.sleep(0.5)
            assert cluster.get(JOB, "digits-eval-g1-s1") is None and weights(cluster)["digits-int8"] == 0
            assert cluster.status("digits").get("deadline") is None
            result = await slimserve("resume", "digits")  # the kubeconfig context's namespace
            assert result.exit_code == 0, result.output
            await cluster.wait(lambda: cluster.get(JOB, "digits-eval-g1-s1"), message="the next step")
            assert weights(cluster)["digits-int8"] == 10
            # The pass applies its children before it writes the status: wait for the status too.
            await cluster.wait(lambda: cluster.condition("digits", "Paused")["reason"] == "Resumed", message="Resumed")
            no = await slimserve("promote", "digits", "-n", NS, input="n\n")
            assert no.exit_code == 1 and "Promote it now" in no.output
            await asyncio.sleep(0.3)
            assert cluster.status("digits")["phase"] == "Progressing"
            result = await slimserve("promote", "digits", "-n", NS, input="y\n")
            assert result.exit_code == 0, result.output
            status = await cluster.wait_phase("digits", "Promoted")
            assert status["stableVariant"] == "int8" and "skipping the steps at 50%, 100%" in status["message"]
            assert cluster.condition("digits", "Promoted")["reason"] == "PromotedByHand"
            assert weights(cluster) == {"digits-int8": 100}
            assert cluster.get(JOB, "digits-eval-g1-s1") is None  # the step in flight was called off

    with caplog.at_level("INFO", logger="kopf.objects"):
        asyncio.run(scenario())
    events = posted(caplog)
    assert any(m.startswith("paused during Evaluating") for _, m in events), events
    assert any(m.startswith("resumed: canary int8 at 10%") for _, m in events)
    assert any(level == "INFO" and "promoted by hand at 10%" in m for level, m in events)


@pytest.mark.kube
@pytest.mark.filterwarnings("ignore:read_binary is deprecated:DeprecationWarning")
def test_abort_then_retry_without_compressing_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with emulated_cluster(tmp_path) as cluster, running_operator():
            await cluster.create_model(example_model())
            await _to_evaluating(cluster)
            await _judge(cluster, 0, "Pass", 0)
            await cluster.wait(lambda: cluster.get(JOB, "digits-eval-g1-s1"), message="step 1")
            result = await slimserve("abort", "digits", "-n", NS)
            assert result.exit_code == 0, result.output
            status = await cluster.wait_phase("digits", "RolledBack")
            assert "aborted by hand at 10%" in status["message"] and weights(cluster) == {"digits-baseline": 100}
            assert cluster.get(JOB, "digits-eval-g1-s1") is None
            await cluster.wait(lambda: cluster.get(DEPLOY, "digits-int8")["spec"]["replicas"] == 0, message="drained")
            again = await slimserve("abort", "digits", "-n", NS)
            assert again.exit_code == 2 and "only a rollout in flight" in again.output
            result = await slimserve("retry", "digits", "-n", NS)
            assert result.exit_code == 0, result.output
            await cluster.wait_phase("digits", "Packaging")
            assert cluster.names(JOB).count("digits-compress-g1") == 1
            assert [n for n in cluster.names(JOB) if "compress" in n] == ["digits-compress-g1"]
            await cluster.finish_job("digits-package-g1-r1")
            await cluster.wait_phase("digits", "Deploying")
            await cluster.wait(lambda: cluster.get(DEPLOY, "digits-int8")["spec"].get("replicas") != 0,
                               message="the canary scaled up again")  # fmt: skip
            for deployment in ("digits-baseline", "digits-int8", "digits--control"):
                await cluster.make_ready(deployment)
            await cluster.accept_route("digits")
            await cluster.wait_phase("digits", "Evaluating")
            assert cluster.get(JOB, "digits-eval-g1-r1-s0") is not None
            assert cluster.status("digits")["retries"] == 1 and cluster.status("digits")["steps"] == []

    with caplog.at_level("INFO", logger="kopf.objects"):
        asyncio.run(scenario())
    events = posted(caplog)
    assert any(level == "WARNING" and "aborted by hand" in m for level, m in events), events
    assert any("retry 1: packaging, deploying and judging candidate int8" in m for _, m in events)


@pytest.mark.kube
@pytest.mark.filterwarnings("ignore:read_binary is deprecated:DeprecationWarning")
def test_manual_approval_waits_for_promote(tmp_path: Path) -> None:
    async def scenario() -> None:
        model = example_model()
        model["spec"]["rollout"]["approval"] = "manual"
        async with emulated_cluster(tmp_path) as cluster, running_operator():
            await cluster.create_model(model)
            await _to_evaluating(cluster)
            for index, weight in enumerate([0, 10, 50, 100]):
                await _judge(cluster, index, "Pass", weight)
            await cluster.wait(lambda: cluster.condition("digits", "WaitingForApproval").get("status") == "True",
                               message="WaitingForApproval")  # fmt: skip
            await asyncio.sleep(0.3)
            assert cluster.status("digits")["phase"] == "Progressing" and weights(cluster)["digits-int8"] == 100
            result = await slimserve("promote", "digits", "-n", NS, "--yes")
            assert result.exit_code == 0, result.output
            status = await cluster.wait_phase("digits", "Promoted")
            assert "approved by hand" in status["message"]
            assert cluster.condition("digits", "WaitingForApproval")["reason"] == "Approved"

    asyncio.run(scenario())
