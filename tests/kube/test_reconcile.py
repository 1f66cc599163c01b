"""The pure phase machine: decisions from spec, status and observed children (no cluster)."""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import replace
from typing import Any

import pytest

from slimserve.api import CompressedModel, CompressedModelStatus, parse_compressed_model
from slimserve.api.report import CheckResult, StepResult
from slimserve.errors import InvalidInput
from slimserve.operator import builders as b
from slimserve.operator.reconcile import (
    DeploymentState,
    JobState,
    Observed,
    RouteState,
    invalid_spec,
    plan,
    pod_problem,
    spec_problems,
)
from slimserve.operator.settings import OperatorSettings
from tests.kube.emulator import SUMMARY, example_model, report

SETTINGS = OperatorSettings(scrape_interval="1s", scale_down_delay_seconds=30)
NOW = "2026-01-01T00:00:00Z"
LATER = "2026-01-01T05:00:00Z"


def _model(**spec: Any):  # type: ignore[no-untyped-def]
    return parse_compressed_model(example_model(**spec))


OWNER = b.Owner.from_body(example_model())


def kinds(manifests: list[dict[str, Any]]) -> list[str]:
    return [f"{m['kind']}/{m['metadata']['name']}" for m in manifests]


def job(ok: bool | None, output: Any = "", exit_code: int | None = None) -> JobState:
    text = output if isinstance(output, str) else json.dumps(output)
    if ok is None:
        return JobState()
    code = exit_code if exit_code is not None else (0 if ok else 1)
    return JobState(succeeded=ok, failed=not ok, reason="Completed" if ok else "PodFailurePolicy", exit_code=code,
                    output=text)  # fmt: skip


def judged(verdict: str, weight: int, failing: str = "p99VsBaseline") -> JobState:
    body = report(verdict, weight, failing)
    return job(verdict == "Pass", body, exit_code={"Pass": 0, "Fail": 3, "Inconclusive": 4}[verdict])


def ready(*names: str) -> dict[str, DeploymentState]:
    return {n: DeploymentState(ready=True) for n in names}


DEPLOYED = ready("digits-baseline", "digits-int8", "digits--control")
ACCEPTED = RouteState(accepted=True)


def evaluating(model: Any = None, settings: OperatorSettings = SETTINGS) -> dict[str, Any]:
    """The status after compression, packaging and deployment of generation 1 (quality check pending)."""
    model = model or _model()
    status = plan(model, OWNER, None, Observed(), settings, NOW).status
    status = plan(model, OWNER, status, Observed(compression_job=job(True, SUMMARY)), settings, NOW).status
    status = plan(model, OWNER, status, Observed(packaging_job=job(True)), settings, NOW).status
    out = plan(model, OWNER, status, Observed(deployments=DEPLOYED, route=ACCEPTED), settings, NOW)
    assert out.status["phase"] == "Evaluating", out.status["message"]
    return out.status


def test_a_new_object_starts_compressing_with_its_children() -> None:
    out = plan(_model(), OWNER, None, Observed(), SETTINGS, NOW)
    assert out.status["phase"] == "Compressing" and out.status["observedGeneration"] == 1
    assert out.status["deadline"] == "2026-01-01T06:02:00Z"  # compression.job.deadline 6h + grace
    assert kinds(out.apply) == [
        "ConfigMap/digits-spec",
        "PersistentVolumeClaim/digits-models",
        "Job/digits-compress-g1",
    ]
    CompressedModelStatus.model_validate(out.status)  # every field is declared in the CRD


def test_waiting_is_a_no_op_and_a_missing_job_is_recreated_under_the_same_name() -> None:
    status = plan(_model(), OWNER, None, Observed(), SETTINGS, NOW).status
    waiting = plan(_model(), OWNER, status, Observed(compression_job=JobState()), SETTINGS, NOW)
    assert waiting.apply == [] and waiting.status == status
    missing = plan(_model(), OWNER, status, Observed(), SETTINGS, NOW)
    assert "Job/digits-compress-g1" in kinds(missing.apply) and missing.status["phase"] == "Compressing"


def test_a_job_past_its_deadline_fails_with_the_pods_reason() -> None:
    status = plan(_model(), OWNER, None, Observed(), SETTINGS, NOW).status
    stuck = JobState(waiting="pod digits-compress-g1-x: Unschedulable: 0/3 nodes have a GPU")
    out = plan(_model(), OWNER, status, Observed(compression_job=stuck), SETTINGS, "2026-01-01T07:00:00Z")
    assert out.status["phase"] == "Failed" and out.apply == []
    assert "0/3 nodes have a GPU" in out.status["message"]
    assert next(c for c in out.status["conditions"] if c["type"] == "Compressed")["reason"] == "DeadlineExceeded"
    never = plan(_model(), OWNER, status, Observed(api_error="Forbidden: exceeded quota"), SETTINGS,
                 "2026-01-01T07:00:00Z")  # fmt: skip
    assert never.status["phase"] == "Failed" and "never created (Forbidden: exceeded quota)" in never.status["message"]


def test_a_failed_job_fails_with_the_pods_own_words() -> None:
    status = plan(_model(), OWNER, None, Observed(), SETTINGS, NOW).status
    failed = job(False, "error: spec.data.evaluation = '/models/digits/inputs/test.npz': file not found", 2)
    out = plan(_model(), OWNER, status, Observed(compression_job=failed), SETTINGS, NOW)
    assert out.status["phase"] == "Failed"
    assert "exit 2: error: spec.data.evaluation" in out.status["message"]


def test_the_compression_jobs_choice_is_the_candidate() -> None:
    status = plan(_model(), OWNER, None, Observed(), SETTINGS, NOW).status
    out = plan(_model(), OWNER, status, Observed(compression_job=job(True, SUMMARY)), SETTINGS, NOW)
    assert out.status["phase"] == "Packaging" and out.status["candidateVariant"] == "int8"
    assert out.status["qualityDrop"] == 0.2 and out.status["metric"] == "accuracy" and out.status["sizeRatio"] == 3.9
    none = {"candidate": None, "reason": "no variant's drop is within maxAccuracyDrop 1.0 points"}
    out = plan(_model(), OWNER, status, Observed(compression_job=job(True, none)), SETTINGS, NOW)
    assert out.status["phase"] == "Failed" and "within maxAccuracyDrop" in out.status["message"]
    garbage = plan(_model(), OWNER, status, Observed(compression_job=job(True, "Traceback")), SETTINGS, NOW)
    assert garbage.status["phase"] == "Failed" and "no candidate choice" in garbage.status["message"]


def test_a_new_generation_restarts_even_when_terminal() -> None:
    status = {
        "phase": "Promoted",
        "observedGeneration": 1,
        "stableVariant": "int8",
        "canaryWeight": 100,
        "previousStableVariant": "baseline",
        "stableGeneration": 1,
        "modelName": "digits",
    }
    owner = b.Owner("digits", "models", "uid-digits", 2)
    out = plan(_model(), owner, status, Observed(), SETTINGS, NOW)
    assert out.status["phase"] == "Compressing" and out.status["stableVariant"] == "int8"
    assert out.status["previousStableVariant"] == "baseline"  # its Deployment is still there, at 0
    job_manifest = next(m for m in out.apply if m["kind"] == "Job")
    # auto must beat the stable: the Job compares with the model file the stable serves
    assert (
        "--stable-onnx /models/digits/gen-1/repository/int8/digits/1/model.onnx"
        in (job_manifest["spec"]["template"]["spec"]["containers"][0]["args"][0])
    )
    route = next(m for m in out.apply if m["kind"] == "HTTPRoute")
    assert route["spec"]["rules"][0]["backendRefs"] == [{"name": "digits-int8", "port": 8000, "weight": 100}]


def test_terminal_phases_do_nothing() -> None:
    for phase in ("Promoted", "RolledBack", "Failed"):
        status = {"phase": phase, "observedGeneration": 1}
        out = plan(_model(), OWNER, status, Observed(), SETTINGS, NOW)
        assert out.apply == [] and out.delete == [] and out.scale == []


def test_deploying_waits_for_stable_canary_control_and_an_accepted_route() -> None:
    status = evaluating()
    status = {**status, "phase": "Deploying", "steps": [], "deadline": "2026-01-01T00:20:00Z"}
    not_yet = plan(_model(), OWNER, status, Observed(deployments={**DEPLOYED, "digits--control": DeploymentState()},
                                                     route=ACCEPTED), SETTINGS, NOW)  # fmt: skip
    assert not_yet.status["phase"] == "Deploying"
    no_gateway = plan(_model(), OWNER, status, Observed(deployments=DEPLOYED, route=RouteState(False, "GatewayNotFound")),
                      SETTINGS, NOW)  # fmt: skip
    traffic = next(c for c in no_gateway.status["conditions"] if c["type"] == "TrafficReady")
    assert no_gateway.status["phase"] == "Deploying" and traffic["status"] == "False"
    assert "Gateway slimserve-gateway not found" in traffic["message"]
    late = plan(_model(), OWNER, status, Observed(deployments={**DEPLOYED, "digits-int8": DeploymentState(
        waiting="pod digits-int8-x: ImagePullBackOff: Back-off pulling image \"triton:typo\"")}, route=ACCEPTED),
        SETTINGS, "2026-01-01T00:21:00Z")  # fmt: skip
    assert late.status["phase"] == "Failed" and "ImagePullBackOff" in late.status["message"]
    assert ("digits-int8", 0) in late.scale and ("apps/v1", "Deployment", "digits--control") in late.delete


def test_judged_steps_follow_the_rollout_policy_to_promotion() -> None:
    status = evaluating()
    assert status["canaryWeight"] == 0 and status["steps"] == []
    weights = []
    for index, weight in enumerate([0, 10, 50, 100]):
        out = plan(_model(), OWNER, status, Observed(evaluator_job=judged("Pass", weight)), SETTINGS, NOW)
        status = out.status
        assert len(status["steps"]) == index + 1
        route = [m for m in out.apply if m["kind"] == "HTTPRoute"]
        if route:
            weights.append({r["name"]: r["weight"] for r in route[0]["spec"]["rules"][0]["backendRefs"]})
        if weight < 100:
            job_manifest = next(m for m in out.apply if m["kind"] == "Job")
            assert job_manifest["metadata"]["name"] == f"digits-eval-g1-s{index + 1}"
    assert weights == [
        {"digits-baseline": 90, "digits-int8": 10},
        {"digits-baseline": 50, "digits-int8": 50},
        {"digits-baseline": 0, "digits-int8": 100},
        {"digits-int8": 100},
    ]
    assert status["phase"] == "Promoted" and status["stableVariant"] == "int8" and status["stableGeneration"] == 1
    assert status["p99Ms"] == 4.2 and status["drain"]["deployments"] == ["digits-baseline"]
    assert status["drain"]["at"] == "2026-01-01T00:00:30Z"
    assert ("apps/v1", "Deployment", "digits--control") in out.delete
    assert out.gate_decision == "Promoted"
    CompressedModelStatus.model_validate(status)
    # The old stable keeps its pods until the drain is due, then goes to 0 without an autoscaler.
    early = plan(_model(), OWNER, status, Observed(), SETTINGS, "2026-01-01T00:00:10Z")
    assert early.scale == []
    due = plan(_model(), OWNER, status, Observed(), SETTINGS, "2026-01-01T00:00:31Z")
    assert due.scale == [("digits-baseline", 0)] and due.status["drain"] is None
    assert ("autoscaling/v2", "HorizontalPodAutoscaler", "digits-baseline") in due.delete


def test_a_failed_quality_check_rolls_back_at_once_and_drains_the_canary() -> None:
    status = evaluating(_model(rollout={"steps": [10, 100], "stepDuration": "10s", "failureBudget": 3}))
    out = plan(_model(rollout={"steps": [10, 100], "stepDuration": "10s", "failureBudget": 3}), OWNER, status,
               Observed(evaluator_job=judged("Fail", 0)), SETTINGS, NOW)  # fmt: skip
    assert out.status["phase"] == "RolledBack" and out.status["decision"] == "RolledBack"
    assert "qualityDrop" in out.status["message"]
    assert out.status["drain"]["deployments"] == ["digits-int8"]
    assert [m["kind"] for m in out.apply] == ["HTTPRoute"]  # the stable is never touched


def test_an_evaluator_that_judged_nothing_fails_the_rollout_with_its_reason() -> None:
    status = evaluating()
    crashed = job(False, "ServingError: model 'digits' is not served at http://digits-int8.models.svc:8000", 1)
    out = plan(_model(), OWNER, status, Observed(evaluator_job=crashed), SETTINGS, NOW)
    assert out.status["phase"] == "Failed" and "is not served at" in out.status["message"]
    assert "keeps serving" in out.status["message"] and out.status["canaryWeight"] == 0
    evaluated = next(c for c in out.status["conditions"] if c["type"] == "Evaluated")
    assert evaluated["reason"] == "EvaluatorFailed"


def test_a_deleted_evaluator_job_is_recreated() -> None:
    status = evaluating()
    out = plan(_model(), OWNER, status, Observed(), SETTINGS, NOW)
    assert kinds(out.apply) == ["Job/digits-eval-g1-s0"] and out.status["phase"] == "Evaluating"


class FakeJudge:
    """What `run_rollout` asks of a Judge (`slimserve run`), answering with given verdicts."""

    quality = None

    def __init__(self, model: Any, verdicts: list[str]) -> None:
        self.spec = model.spec
        self.feed = iter(verdicts + ["Pass"] * 20)

    def step(self, weight: int) -> tuple[StepResult, None]:
        verdict = next(self.feed)
        name = "qualityDrop" if weight == 0 else "p99VsBaseline"
        checks = [CheckResult(name=name, verdict=verdict, value=None, threshold=None)]  # type: ignore[arg-type]
        return StepResult(weight=weight, verdict=verdict, checks=checks), None  # type: ignore[arg-type]


def test_the_operator_decides_as_the_local_runtime_for_the_same_verdicts() -> None:
    """`slimserve run` (run_rollout) and the operator (status.steps → next_step) must agree."""
    from slimserve.evaluator.rollout import run_rollout

    rng = random.Random(7)
    sequences = [list(s) for s in itertools.product(["Pass", "Fail", "Inconclusive"], repeat=3)]
    sequences += [[rng.choice(["Pass", "Pass", "Fail", "Inconclusive"]) for _ in range(8)] for _ in range(40)]
    for budget, limit in ((0, 1), (1, 1), (2, 0)):
        rollout = {"steps": [10, 50, 100], "stepDuration": "10s", "failureBudget": budget, "inconclusiveLimit": limit}
        model = _model(rollout=rollout)
        for verdicts in sequences:
            local = run_rollout(FakeJudge(model, verdicts))  # type: ignore[arg-type]
            feed = iter(verdicts + ["Pass"] * 20)
            status = evaluating(model)
            weights = []
            while status["phase"] in ("Evaluating", "Progressing"):
                weight = status["canaryWeight"]
                weights.append(weight)
                status = plan(model, OWNER, status, Observed(evaluator_job=judged(next(feed), weight)),
                              SETTINGS, NOW).status  # fmt: skip
            decision = {"Promoted": "Promoted"}.get(status["phase"], status["decision"])
            assert decision == local.decision, (verdicts, budget, limit)
            assert weights == [s.weight for s in local.steps], (verdicts, budget, limit)


def test_a_spec_change_mid_rollout_removes_the_superseded_canary_control_and_job() -> None:
    status = evaluating()
    status = plan(_model(), OWNER, status, Observed(evaluator_job=judged("Pass", 0)), SETTINGS, NOW).status
    assert status["phase"] == "Progressing" and status["canaryWeight"] == 10
    owner = b.Owner("digits", "models", "uid-digits", 2)
    out = plan(_model(), owner, status, Observed(), SETTINGS, NOW)
    assert out.status["phase"] == "Compressing" and out.status["steps"] == []
    assert ("batch/v1", "Job", "digits-eval-g1-s1") in out.delete
    assert ("apps/v1", "Deployment", "digits--control") in out.delete and ("digits-int8", 0) in out.scale
    assert ("autoscaling/v2", "HorizontalPodAutoscaler", "digits-int8") in out.delete
    route = next(m for m in out.apply if m["kind"] == "HTTPRoute")
    assert route["spec"]["rules"][0]["backendRefs"] == [{"name": "digits-baseline", "port": 8000, "weight": 100}]


def test_an_invalid_spec_mid_rollout_calls_the_rollout_off_without_reading_the_spec() -> None:
    status = evaluating()
    status = plan(_model(), OWNER, status, Observed(evaluator_job=judged("Pass", 0)), SETTINGS, NOW).status
    owner = b.Owner("digits", "models", "uid-digits", 2)
    out = invalid_spec(owner, status, ["spec.rollout.steps = [50, 10]: must increase"], NOW)
    assert out.status["phase"] == "Failed" and out.status["canaryWeight"] == 0
    assert out.route_reset == ("digits-baseline", "digits") and ("digits-int8", 0) in out.scale
    assert "keeps serving" in next(c for c in out.status["conditions"] if c["type"] == "Ready")["message"]


def test_same_name_candidate_of_a_new_generation_gets_new_model_files_and_pods() -> None:
    status = {
        "phase": "RolledBack",
        "observedGeneration": 1,
        "stableVariant": "baseline",
        "stableGeneration": 1,
        "candidateVariant": "int8",
        "canaryWeight": 0,
        "modelName": "digits",
    }
    owner = b.Owner("digits", "models", "uid-digits", 2)
    status = plan(_model(), owner, status, Observed(), SETTINGS, NOW).status
    status = plan(_model(), owner, status, Observed(compression_job=job(True, SUMMARY)), SETTINGS, NOW).status
    packaging = plan(_model(), owner, status, Observed(packaging_job=job(True)), SETTINGS, NOW)
    deployments = {m["metadata"]["name"]: m for m in packaging.apply if m["kind"] == "Deployment"}
    args = deployments["digits-int8"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--model-repository=/models/digits/gen-2/repository/int8" in args  # not gen-1's files: the pods roll
    stable_args = deployments["digits-baseline"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--model-repository=/models/digits/gen-1/repository/baseline" in stable_args  # never rewritten
    control_args = deployments["digits--control"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert control_args == stable_args


def test_replica_split_deploys_at_the_first_step_ratio_behind_one_service() -> None:
    model = _model(rollout={"trafficSplit": "replicas", "steps": [25, 100], "stepDuration": "10s"})
    status = {"phase": "Packaging", "observedGeneration": 1, "stableVariant": "baseline", "candidateVariant": "int8"}
    out = plan(model, OWNER, status, Observed(packaging_job=job(True)), SETTINGS, NOW)
    deployments = {m["metadata"]["name"]: m["spec"]["replicas"] for m in out.apply if m["kind"] == "Deployment"}
    assert deployments == {"digits-baseline": 3, "digits-int8": 1, "digits--control": 1}
    assert "Service/digits" in kinds(out.apply)
    assert not [m for m in out.apply if m["kind"] in ("HTTPRoute", "HorizontalPodAutoscaler")]
    assert out.status["endpoint"] == "http://digits.models.svc:8000/v2/models/digits"
    # clients reach the canary's pod from Deploying on: its share is said as it is, not as the step's weight
    assert out.status["phase"] == "Deploying" and out.status["clientShare"] == 25


def test_the_client_share_is_the_pod_ratio_in_replica_mode_and_the_route_weight_with_a_gateway() -> None:
    from slimserve.operator.reconcile import _client_share as share_of
    from slimserve.operator.reconcile import parse_status

    def _client_share(model: CompressedModel, settings: OperatorSettings, status: dict[str, Any]) -> int | None:
        return share_of(model, settings, parse_status(status))  # the planner reads the typed status

    status = {"phase": "Progressing", "canaryWeight": 10}
    replicas = _model(rollout={"trafficSplit": "replicas", "steps": [10, 50, 100], "stepDuration": "10s"})
    assert _client_share(replicas, SETTINGS, status) == 25  # 1 of 4 pods, not 10%
    assert _client_share(replicas, SETTINGS, {**status, "canaryWeight": 50}) == 50
    assert _client_share(replicas, SETTINGS, {"phase": "Deploying"}) == 25  # the first pod already serves
    assert _client_share(replicas, SETTINGS, {"phase": "RolledBack", "canaryWeight": 0}) == 0
    gateway = _model(rollout={"steps": [10, 50, 100], "stepDuration": "10s"})
    assert _client_share(gateway, SETTINGS, status) == 10
    assert _client_share(gateway, SETTINGS, {"phase": "Pending"}) is None


def test_a_canary_rolled_back_to_zero_replicas_starts_again_at_the_autoscaler_minimum() -> None:
    status = {
        "phase": "Packaging",
        "observedGeneration": 2,
        "stableVariant": "baseline",
        "candidateVariant": "int8",
        "stableGeneration": 1,
    }
    owner = b.Owner("digits", "models", "uid-digits", 2)
    out = plan(_model(), owner, status, Observed(packaging_job=job(True)), SETTINGS, NOW)
    deployments = {m["metadata"]["name"]: m["spec"].get("replicas") for m in out.apply if m["kind"] == "Deployment"}
    assert deployments == {"digits-baseline": None, "digits-int8": 1, "digits--control": 1}
    assert {m["metadata"]["name"] for m in out.apply if m["kind"] == "HorizontalPodAutoscaler"} == {
        "digits-baseline",
        "digits-int8",
    }


def test_spec_checks_of_this_installation_name_field_value_and_fix() -> None:
    slow = OperatorSettings(scrape_interval="30s")
    problems = spec_problems(_model(), {}, slow)
    assert any(p.startswith("spec.rollout.stepDuration = '10s'") and "use at least 123s" in p for p in problems)
    tight = _model(rollout={"steps": [10, 100], "stepDuration": "10s", "evaluator": {"deadline": "1m"}})
    assert any("spec.rollout.evaluator.deadline = '1m'" in p for p in spec_problems(tight, {}, SETTINGS))
    renamed = _model(serving={"modelName": "digits-v2"})
    (problem,) = spec_problems(renamed, {"modelName": "digits"}, SETTINGS)
    assert "spec.serving.modelName = 'digits-v2': clients call 'digits'" in problem
    assert spec_problems(_model(), {"modelName": "digits"}, SETTINGS) == []


@pytest.mark.parametrize("step,warmup,users,rate,scrape", [
    ("15s", "2s", 8, 8, 3.0), ("15s", "2s", 8, 8, 3.5), ("10s", "2s", 8, 8, 1.0), ("10s", "5s", 16, 4, 1.0),
    ("1m", "2s", 8, 8, 10.0), ("30s", "2s", 8, 8, 10.0), ("500ms", "0s", 1, 1, 1.0), ("2m", "10s", 32, 8, 30.0),
])  # fmt: skip
def test_the_step_check_is_the_twin_of_the_evaluators(
    step: str, warmup: str, users: int, rate: int, scrape: float
) -> None:
    from slimserve.evaluator.canary import Timing

    model = _model(rollout={"steps": [10, 100], "stepDuration": step, "warmup": warmup, "users": users,
                            "spawnRate": rate, "evaluator": {"deadline": "1h"}})  # fmt: skip
    settings = OperatorSettings(scrape_interval=f"{int(scrape * 1000)}ms")
    operator_refuses = any(p.startswith("spec.rollout.stepDuration") for p in spec_problems(model, {}, settings))
    try:
        Timing.of(model.spec.rollout, scrape)
        evaluator_refuses = False
    except InvalidInput:
        evaluator_refuses = True
    assert operator_refuses == evaluator_refuses


def test_pod_problems_read_as_kubectl_describe_says_them() -> None:
    pull = {
        "metadata": {"name": "p"},
        "status": {
            "containerStatuses": [
                {"state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}}
            ]
        },
    }
    assert pod_problem(pull) == "pod p: ImagePullBackOff: Back-off pulling image"
    crash = {
        "metadata": {"name": "p"},
        "status": {
            "containerStatuses": [
                {
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {
                        "terminated": {"exitCode": 1, "reason": "Error", "message": "failed to load 'digits'"}
                    },
                }
            ]
        },
    }
    assert "CrashLoopBackOff" in pod_problem(crash) and "failed to load 'digits'" in pod_problem(crash)
    pending = {
        "metadata": {"name": "p"},
        "status": {
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/1 nodes: Insufficient cpu",
                }
            ]
        },
    }
    assert pod_problem(pending) == "pod p: Unschedulable: 0/1 nodes: Insufficient cpu"
    assert pod_problem({"metadata": {"name": "p"}, "status": {"phase": "Running"}}) == ""


def test_job_state_reads_its_own_pods_only() -> None:
    job_obj = {"metadata": {"uid": "new"}, "status": {"conditions": [{"type": "Complete", "status": "True"}]}}

    def pod(uid: str, message: str, at: str) -> dict[str, Any]:
        return {
            "metadata": {"name": uid, "ownerReferences": [{"uid": uid}]},
            "status": {
                "containerStatuses": [{"state": {"terminated": {"exitCode": 0, "message": message, "finishedAt": at}}}]
            },
        }

    state = JobState.from_objects(job_obj, [pod("old", "stale", "2026-01-02T00:00:00Z"),
                                            pod("new", "fresh", "2026-01-01T00:00:00Z")])  # fmt: skip
    assert state.succeeded and state.output == "fresh"


def test_deployment_state_is_rollout_complete_not_one_ready_pod() -> None:
    def dep(**status: Any) -> dict[str, Any]:
        return {"metadata": {"generation": 2}, "spec": {"replicas": 2}, "status": status}

    assert DeploymentState.from_objects(dep(observedGeneration=2, replicas=2, updatedReplicas=2,
                                            availableReplicas=2)).ready  # fmt: skip
    # one old pod still ready while the new template rolls out: not ready (it would judge old weights)
    assert not DeploymentState.from_objects(dep(observedGeneration=2, replicas=3, updatedReplicas=2,
                                                availableReplicas=3)).ready  # fmt: skip
    assert not DeploymentState.from_objects(dep(observedGeneration=1, replicas=2, updatedReplicas=2,
                                                availableReplicas=2)).ready  # fmt: skip
    stuck = DeploymentState.from_objects(
        dep(
            conditions=[
                {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "x"}
            ]
        )
    )
    assert stuck.failed.startswith("ProgressDeadlineExceeded")


def test_the_evaluators_summary_fits_a_termination_message_and_the_operator_reads_it() -> None:
    from slimserve.api.report import EvaluationReport, ServedQuality, TargetLoad
    from slimserve.cli.evaluate import SUMMARY_LIMIT, summary_json
    from slimserve.operator.reconcile import parse_step_report

    checks = [CheckResult(name=f"check{i}", verdict="Pass", value=1.0, threshold=2.0, low=0.5, high=1.5,
                          detail="x" * 400) for i in range(12)]  # fmt: skip
    load = {
        k: TargetLoad(requests=10**6, failures=0, rps=1234.5, p50_ms=1.0, p99_ms=4.2) for k in ("candidate", "control")
    }
    quality = ServedQuality(metric="accuracy", unit="points", n=900, baseline=98.0, candidate=97.9, drop=0.1,
                            drop_low=-0.2, drop_high=0.4, detail="y" * 5000)  # fmt: skip
    report = EvaluationReport(candidate="digits", control="digits", weight=50,
                              step=StepResult(weight=50, verdict="Pass", checks=checks), load=load,
                              quality=quality)  # fmt: skip
    text = summary_json(report)
    assert len(text) <= SUMMARY_LIMIT and "\n" not in text
    parsed = parse_step_report(JobState(succeeded=True, exit_code=0, output=text + "\n"))
    assert parsed is not None and [c.name for c in parsed.step.checks] == [c.name for c in checks]
    assert parsed.load is not None and parsed.load["candidate"].p99_ms == 4.2
    assert parsed.quality is not None and parsed.quality.drop_high == 0.4
    # a crash before the summary (exit 1, the log's tail) is not a judged step
    assert parse_step_report(JobState(failed=True, exit_code=1, output="Traceback ...")) is None


def _undeclared(value: Any, schema: dict[str, Any], where: str = "status") -> list[str]:
    """Fields the API server would prune: not in the CRD's structural status schema."""
    if isinstance(value, dict) and "properties" in schema:
        return [f"{where}.{k}" for k in value if k not in schema["properties"]] + [
            u for k, v in value.items() if k in schema["properties"]
            for u in _undeclared(v, schema["properties"][k], f"{where}.{k}")]  # fmt: skip
    if isinstance(value, list) and "items" in schema:
        return [u for i, v in enumerate(value) for u in _undeclared(v, schema["items"], f"{where}[{i}]")]
    return []


def test_every_status_field_the_operator_writes_is_declared_in_the_crd() -> None:
    from slimserve.api.crd import build_crd

    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    status = evaluating()
    written = [status]
    for weight in (0, 10, 50, 100):
        status = plan(_model(), OWNER, status, Observed(evaluator_job=judged("Pass", weight)), SETTINGS, NOW).status
        written.append(status)
    assert status["drain"] is not None and status["modelName"] == "digits"
    owner = b.Owner("digits", "models", "uid-digits", 2)
    written.append(plan(_model(), owner, status, Observed(), SETTINGS, NOW).status)
    for st in written:
        assert _undeclared(st, schema) == []


def _rolled_back_gen1(model: Any) -> dict[str, Any]:
    status = evaluating(model)
    return plan(model, OWNER, status, Observed(evaluator_job=judged("Fail", 0, "qualityDrop")), SETTINGS, NOW).status


def test_a_gates_only_change_reuses_the_compression_output() -> None:
    gen1 = _rolled_back_gen1(_model())
    assert gen1["phase"] == "RolledBack" and gen1["compression"] == {"hash": gen1["compressionHash"], "generation": 1}
    owner2 = replace(OWNER, generation=2)
    model2 = _model(gates={"maxAccuracyDrop": 2.0, "p99Tolerance": 0.5})
    out = plan(model2, owner2, gen1, Observed(), SETTINGS, NOW)
    assert out.status["compressionHash"] == gen1["compressionHash"] and out.status["phase"] == "Compressing"
    assert [m["metadata"]["name"] for m in out.apply if m["kind"] == "Job"] == ["digits-choose-g2"]
    compressed = next(c for c in out.status["conditions"] if c["type"] == "Compressed")
    assert compressed["reason"] == "Reused" and "reused from generation 1 (hash " in compressed["message"]
    assert any("reused from generation 1" in text for _, text in out.events)
    # the choice is made again (the budget changed), then packaging reads generation 1's report
    out = plan(model2, owner2, out.status, Observed(compression_job=job(True, SUMMARY)), SETTINGS, NOW)
    assert out.status["phase"] == "Packaging" and out.status["candidateVariant"] == "int8"
    assert out.status["compression"] == {"hash": gen1["compressionHash"], "generation": 1}
    assert "reused from generation 1" in next(c for c in out.status["conditions"] if c["type"] == "Compressed")[
        "message"]  # fmt: skip
    script = next(m for m in out.apply if m["kind"] == "Job")["spec"]["template"]["spec"]["containers"][0]["args"][0]
    assert (
        "--report /models/digits/gen-1/compressed/compression-report.json --repository /models/digits/gen-2/" in script
    )


def test_a_compression_change_compresses_again_and_becomes_the_output_to_reuse() -> None:
    gen1 = _rolled_back_gen1(_model())
    owner2 = replace(OWNER, generation=2)
    model2 = _model(compression={"variants": [{"name": "int8", "steps": [{"quantize": {"mode": "dynamic"}}]}]})
    out = plan(model2, owner2, gen1, Observed(), SETTINGS, NOW)
    assert out.status["compressionHash"] != gen1["compressionHash"]
    assert [m["metadata"]["name"] for m in out.apply if m["kind"] == "Job"] == ["digits-compress-g2"]
    out = plan(model2, owner2, out.status, Observed(compression_job=job(True, SUMMARY)), SETTINGS, NOW)
    assert out.status["compression"] == {"hash": out.status["compressionHash"], "generation": 2}
    assert "--report /models/digits/gen-2/compressed/compression-report.json" in str(out.apply)


def test_a_planned_status_is_checked_against_the_typed_model() -> None:
    from slimserve.operator.reconcile import StatusDrift, check_status

    typed = check_status({"phase": "Evaluating", "canaryWeight": 10, "candidateVariant": None, "steps": []})
    assert typed.phase == "Evaluating" and typed.canary_weight == 10
    with pytest.raises(StatusDrift, match="canaryWieght"):
        check_status({"phase": "Evaluating", "canaryWieght": 10})  # the API server would prune it silently
    with pytest.raises(StatusDrift, match="canaryWeight"):
        check_status({"phase": "Evaluating", "canaryWeight": "ten"})


def test_the_planned_status_is_a_merge_patch_none_deletes_and_absent_keeps() -> None:
    """The planner works on the typed status; what it writes keeps the merge-patch meaning."""
    status = {**evaluating(), "waitingFor": "confirm-rollout webhook 'qa'"}
    newer = replace(OWNER, generation=2)
    out = plan(_model(), newer, status, Observed(), SETTINGS, NOW)
    assert out.status["phase"] == "Compressing" and out.status["observedGeneration"] == 2
    for cleared in ("candidateVariant", "sizeRatio", "metric", "qualityDrop", "decision", "retries"):
        assert cleared in out.status and out.status[cleared] is None  # set to None: the patch deletes it
    assert "waitingFor" not in out.status  # not named by a new generation: the stored value stays
    same = plan(_model(), OWNER, status, Observed(), SETTINGS, NOW)  # the same generation: the whole status
    assert same.status["waitingFor"] == status["waitingFor"] and same.status["candidateVariant"] == "int8"
