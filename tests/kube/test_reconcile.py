"""The pure phase machine: decisions from spec, status and observed children (no cluster)."""

from __future__ import annotations

from typing import Any

from slimserve.api import CompressedModelStatus, parse_compressed_model
from slimserve.operator import builders as b
from slimserve.operator.reconcile import JobState, Observed, choose_candidate, plan
from slimserve.operator.settings import OperatorSettings
from tests.kube.emulator import SUMMARY, example_model

SETTINGS = OperatorSettings()
NOW = "2026-01-01T00:00:00Z"


def _model(**spec: Any):  # type: ignore[no-untyped-def]
    return parse_compressed_model(example_model(**spec))


OWNER = b.Owner.from_body(example_model())


def kinds(manifests: list[dict[str, Any]]) -> list[str]:
    return [f"{m['kind']}/{m['metadata']['name']}" for m in manifests]


def test_a_new_object_starts_compressing_with_its_children() -> None:
    out = plan(_model(), OWNER, None, Observed(), SETTINGS, NOW)
    assert out.status["phase"] == "Compressing" and out.status["observedGeneration"] == 1
    assert kinds(out.apply) == [
        "ConfigMap/digits-spec", "PersistentVolumeClaim/digits-models", "Job/digits-compress-g1"]
    CompressedModelStatus.model_validate(out.status)  # every field is declared in the CRD


def test_waiting_is_a_no_op_and_a_missing_job_is_recreated_under_the_same_name() -> None:
    status = plan(_model(), OWNER, None, Observed(), SETTINGS, NOW).status
    waiting = plan(_model(), OWNER, status, Observed(compression_job=JobState()), SETTINGS, NOW)
    assert waiting.apply == [] and waiting.status == status
    missing = plan(_model(), OWNER, status, Observed(), SETTINGS, NOW)
    assert "Job/digits-compress-g1" in kinds(missing.apply) and missing.status["phase"] == "Compressing"


def test_a_new_generation_restarts_even_when_terminal() -> None:
    status = {"phase": "Promoted", "observedGeneration": 1, "stableVariant": "int8", "canaryWeight": 100,
              "previousStableVariant": "baseline"}
    owner = b.Owner("digits", "models", "uid-digits", 2)
    out = plan(_model(), owner, status, Observed(), SETTINGS, NOW)
    assert out.status["phase"] == "Compressing" and out.status["stableVariant"] == "int8"
    assert out.status["previousStableVariant"] == "baseline"  # its Deployment is still there, at 0
    assert "Job/digits-compress-g2" in kinds(out.apply)
    route = next(m for m in out.apply if m["kind"] == "HTTPRoute")
    assert route["spec"]["rules"][0]["backendRefs"] == [{"name": "digits-int8", "port": 8000, "weight": 100}]


def test_terminal_phases_do_nothing() -> None:
    for phase in ("Promoted", "RolledBack", "Failed"):
        status = {"phase": phase, "observedGeneration": 1}
        assert plan(_model(), OWNER, status, Observed(), SETTINGS, NOW).apply == []


def test_candidate_auto_takes_the_best_size_within_the_accuracy_gate() -> None:
    chosen, _ = choose_candidate(_model(), SUMMARY)
    assert chosen is not None and chosen["name"] == "int8"
    strict = _model(gates={"maxAccuracyDrop": 0.1})
    chosen, _ = choose_candidate(strict, SUMMARY)
    assert chosen is not None and chosen["name"] == "fp16"
    none, why = choose_candidate(_model(gates={"maxAccuracyDrop": 0.0}), {"variants": [SUMMARY["variants"][0]]})
    assert none is None and "maxAccuracyDrop" in why


def test_a_named_candidate_wins_over_auto() -> None:
    model = _model(rollout={"candidate": "fp16"})
    chosen, _ = choose_candidate(model, SUMMARY)
    assert chosen is not None and chosen["name"] == "fp16"


def test_replica_split_deploys_at_the_first_step_ratio_behind_one_service() -> None:
    model = _model(rollout={"trafficSplit": "replicas", "steps": [25, 100]})
    status = {"phase": "Packaging", "observedGeneration": 1, "stableVariant": "baseline", "candidateVariant": "int8"}
    out = plan(model, OWNER, status, Observed(packaging_job=JobState(succeeded=True)), SETTINGS, NOW)
    deployments = {m["metadata"]["name"]: m["spec"]["replicas"] for m in out.apply if m["kind"] == "Deployment"}
    assert deployments == {"digits-baseline": 3, "digits-int8": 1}
    assert "Service/digits" in kinds(out.apply)
    assert not [m for m in out.apply if m["kind"] in ("HTTPRoute", "HorizontalPodAutoscaler")]


def test_a_canary_rolled_back_to_zero_replicas_starts_again_at_the_autoscaler_minimum() -> None:
    status = {"phase": "Packaging", "observedGeneration": 2, "stableVariant": "baseline", "candidateVariant": "int8"}
    owner = b.Owner("digits", "models", "uid-digits", 2)
    out = plan(_model(), owner, status, Observed(packaging_job=JobState(succeeded=True)), SETTINGS, NOW)
    deployments = {m["metadata"]["name"]: m["spec"].get("replicas") for m in out.apply if m["kind"] == "Deployment"}
    assert deployments == {"digits-baseline": None, "digits-int8": 1}  # stable: the HPA keeps its count
    assert {m["metadata"]["name"] for m in out.apply if m["kind"] == "HorizontalPodAutoscaler"} == {
        "digits-baseline", "digits-int8"}


def test_promotion_parks_the_old_stable_at_zero_and_removes_its_keda_scaler() -> None:
    model = _model(serving={"autoscaling": {"kedaQuery": "sum(rate(nv_inference_request_success[1m]))",
                                            "kedaThreshold": 100}})
    status = {"phase": "Progressing", "observedGeneration": 1, "stableVariant": "baseline",
              "candidateVariant": "int8", "canaryStep": 2, "canaryWeight": 100, "failedSteps": 0}
    report = {"decision": "Promoted", "reason": "all checks passed", "steps": []}
    out = plan(model, OWNER, status, Observed(report=report), SETTINGS, NOW)
    assert out.status["phase"] == "Promoted" and out.status["previousStableVariant"] == "baseline"
    assert out.delete == [("keda.sh/v1alpha1", "ScaledObject", "digits-baseline")]
    deployments = {m["metadata"]["name"]: m for m in out.apply if m["kind"] == "Deployment"}
    assert deployments["digits-baseline"]["spec"]["replicas"] == 0
    assert deployments["digits-baseline"]["metadata"]["labels"]["slimserve.dev/role"] == "previous"
    assert "replicas" not in deployments["digits-int8"]["spec"]  # the new stable's scaler keeps its count
    assert deployments["digits-int8"]["metadata"]["labels"]["slimserve.dev/role"] == "stable"
    route = next(m for m in out.apply if m["kind"] == "HTTPRoute")
    assert route["spec"]["rules"][0]["backendRefs"] == [{"name": "digits-int8", "port": 8000, "weight": 100}]
    CompressedModelStatus.model_validate(out.status)
