"""The real kopf reactor against kmock's emulator, with the test playing the cluster."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from slimserve.operator.metrics import REGISTRY
from tests.kube.emulator import CR, SUMMARY, emulated_cluster, example_model, report, running_operator

pytestmark = [
    pytest.mark.kube,
    pytest.mark.filterwarnings("ignore:read_binary is deprecated:DeprecationWarning"),  # inside kmock 0.8
]

JOB = "batch/v1/jobs"
DEPLOY = "apps/v1/deployments"
CM = "v1/configmaps"
ROUTE = "gateway.networking.k8s.io/v1/httproutes"
HPA = "autoscaling/v2/horizontalpodautoscalers"


def weights(cluster, name: str = "digits") -> dict[str, int]:
    route = cluster.get(ROUTE, name)
    return {b["name"]: b["weight"] for b in route["spec"]["rules"][0]["backendRefs"]}


async def _to_evaluating(cluster, name: str = "digits") -> None:
    await cluster.wait(lambda: cluster.get(JOB, f"{name}-compress-g1"), message="compression Job")
    await cluster.finish_job(f"{name}-compress-g1", summary=SUMMARY)
    await cluster.wait_phase(name, "Packaging")
    await cluster.finish_job(f"{name}-package-g1")
    await cluster.wait_phase(name, "Deploying")
    await cluster.make_ready(f"{name}-baseline")
    await cluster.make_ready(f"{name}-int8")
    await cluster.wait_phase(name, "Evaluating")


def promoted_decisions() -> float:
    return REGISTRY.get_sample_value("slimserve_operator_gate_decisions_total", {"decision": "Promoted"}) or 0.0


def test_happy_path_promotes_the_candidate(tmp_path: Path) -> None:
    decisions_before = promoted_decisions()

    async def scenario() -> None:
        async with emulated_cluster(tmp_path) as cluster, running_operator():
            await cluster.create_model(example_model())
            await _to_evaluating(cluster)
            status = cluster.status("digits")
            assert status["candidateVariant"] == "int8" and status["sizeRatio"] == 3.9
            assert cluster.condition("digits", "Compressed")["status"] == "True"
            assert cluster.condition("digits", "Deployed")["status"] == "True"
            assert weights(cluster) == {"digits-baseline": 90, "digits-int8": 10}
            for step, weight in enumerate([10, 50, 100]):
                await cluster.wait(lambda s=step: cluster.get(JOB, f"digits-eval-g1-s{s}"), message=f"eval {step}")
                await cluster.write_report(f"digits-report-g1-s{step}", report("Promoted", weight))
                if step < 2:
                    await cluster.wait(lambda w=weight: cluster.status("digits").get("canaryWeight") not in (w,))
                    assert cluster.status("digits")["phase"] == "Progressing"
            status = await cluster.wait_phase("digits", "Promoted")
            assert status["stableVariant"] == "int8" and status["decision"] == "Promoted"
            assert status["previousStableVariant"] == "baseline"
            assert status["p99Ms"] == 4.2 and status["throughputRps"] == 950.0
            assert weights(cluster) == {"digits-int8": 100}
            # The old stable stops using resources but is kept, one `kubectl scale` away.
            previous = cluster.get(DEPLOY, "digits-baseline")
            assert previous["spec"]["replicas"] == 0
            assert previous["metadata"]["labels"]["slimserve.dev/role"] == "previous"
            assert cluster.get(HPA, "digits-baseline") is None
            assert cluster.get(HPA, "digits-int8") is not None
            assert cluster.get("v1/services", "digits-baseline") is not None
            for type in ("Promoted", "Ready"):
                cond = cluster.condition("digits", type)
                assert cond["status"] == "True" and cond["observedGeneration"] == 1
            owner = cluster.get(DEPLOY, "digits-int8")["metadata"]["ownerReferences"][0]
            assert owner["uid"] == "uid-digits" and owner["controller"] is True
            assert cluster.get(DEPLOY, "digits-int8")["metadata"]["labels"]["slimserve.dev/role"] == "stable"

    asyncio.run(scenario())
    assert promoted_decisions() - decisions_before == 3  # one gate decision per canary step


def test_failing_gate_rolls_back_and_leaves_stable_untouched(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with emulated_cluster(tmp_path) as cluster, running_operator():
            await cluster.create_model(example_model())
            await _to_evaluating(cluster)
            stable_versions = cluster.versions(DEPLOY, "digits-baseline")
            stable_spec = cluster.get(DEPLOY, "digits-baseline")["spec"]
            await cluster.write_report("digits-report-g1-s0", report("RolledBack", 10, "p99 4.9 ms > 4.5 ms x 1.1"))
            status = await cluster.wait_phase("digits", "RolledBack")
            assert status["decision"] == "RolledBack" and status["canaryWeight"] == 0
            assert "p99 4.9 ms" in status["message"]
            assert weights(cluster) == {"digits-baseline": 100}
            assert cluster.condition("digits", "Promoted")["reason"] == "GateFailed"
            assert cluster.condition("digits", "Ready")["status"] == "True"  # stable keeps serving
            assert cluster.versions(DEPLOY, "digits-baseline") == stable_versions
            assert cluster.get(DEPLOY, "digits-baseline")["spec"] == stable_spec
            assert cluster.get(DEPLOY, "digits-int8")["spec"]["replicas"] == 0
            assert cluster.get(HPA, "digits-int8") is None
            assert cluster.get(HPA, "digits-baseline") is not None

    asyncio.run(scenario())


def test_failure_budget_retries_the_step_before_rolling_back(tmp_path: Path) -> None:
    async def scenario() -> None:
        model = example_model()
        model["spec"]["rollout"]["failureBudget"] = 1
        async with emulated_cluster(tmp_path) as cluster, running_operator():
            await cluster.create_model(model)
            await _to_evaluating(cluster)
            await cluster.write_report("digits-report-g1-s0", report("Inconclusive", 10, "42 requests < 100"))
            await cluster.wait(lambda: cluster.get(JOB, "digits-eval-g1-s0-a1"), message="retry of step 0")
            await cluster.wait(lambda: cluster.status("digits").get("failedSteps") == 1, message="failedSteps 1")
            await cluster.write_report("digits-report-g1-s0-a1", report("RolledBack", 10, "error rate 5%"))
            status = await cluster.wait_phase("digits", "RolledBack")
            assert "error rate 5%" in status["message"]

    asyncio.run(scenario())


def test_failed_compression_job_fails_with_its_reason(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with emulated_cluster(tmp_path) as cluster, running_operator():
            await cluster.create_model(example_model())
            await cluster.wait(lambda: cluster.get(JOB, "digits-compress-g1"), message="compression Job")
            await cluster.finish_job("digits-compress-g1", ok=False, reason="BackoffLimitExceeded",
                                     message="Job has reached the specified backoff limit")
            status = await cluster.wait_phase("digits", "Failed")
            assert "BackoffLimitExceeded" in status["message"]
            compressed = cluster.condition("digits", "Compressed")
            assert compressed["status"] == "False" and compressed["reason"] == "JobFailed"
            assert cluster.condition("digits", "Ready")["reason"] == "CompressionFailed"
            assert cluster.get(JOB, "digits-package-g1") is None

    asyncio.run(scenario())


def test_operator_restart_mid_rollout_resumes_without_duplicates(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with emulated_cluster(tmp_path) as cluster:
            async with running_operator():
                await cluster.create_model(example_model())
                await _to_evaluating(cluster)
                await cluster.write_report("digits-report-g1-s0", report("Promoted", 10))
                await cluster.wait_phase("digits", "Progressing")
            before = {r: cluster.names(r) for r in (JOB, DEPLOY, CM, "v1/services", ROUTE)}
            stable_versions = cluster.versions(DEPLOY, "digits-baseline")
            # While the operator is down, the step-2 evaluator finishes.
            await cluster.write_report("digits-report-g1-s1", report("Promoted", 50))
            async with running_operator():
                await cluster.wait(lambda: cluster.get(JOB, "digits-eval-g1-s2"), message="step 3 after restart")
                after = {r: cluster.names(r) for r in (JOB, DEPLOY, CM, "v1/services", ROUTE)}
                assert after[JOB] == sorted(before[JOB] + ["digits-eval-g1-s2"])
                assert after[DEPLOY] == before[DEPLOY] == ["digits-baseline", "digits-int8"]
                assert after["v1/services"] == before["v1/services"]
                assert cluster.versions(DEPLOY, "digits-baseline") == stable_versions
                await cluster.write_report("digits-report-g1-s2", report("Promoted", 100))
                await cluster.wait_phase("digits", "Promoted")

    asyncio.run(scenario())


def test_spec_change_restarts_the_pipeline(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with emulated_cluster(tmp_path) as cluster, running_operator():
            await cluster.create_model(example_model())
            await _to_evaluating(cluster)
            await cluster.change_spec("digits", {"rollout": {"steps": [25, 100]}})
            await cluster.wait(lambda: cluster.get(JOB, "digits-compress-g2"), message="generation 2 compression")
            status = await cluster.wait_phase("digits", "Compressing")
            assert status["observedGeneration"] == 2 and status.get("candidateVariant") is None
            assert all(c["observedGeneration"] == 2 for c in status["conditions"])
            assert weights(cluster) == {"digits-baseline": 100}  # traffic back on stable meanwhile
            assert cluster.get(DEPLOY, "digits-baseline") is not None

    asyncio.run(scenario())


def test_a_new_generation_of_the_stable_variant_rolls_out_under_its_own_names(tmp_path: Path) -> None:
    """New weights for `int8` after `int8` was promoted: the canary must not take over the stable's children."""

    async def scenario() -> None:
        async with emulated_cluster(tmp_path) as cluster, running_operator():
            await cluster.create_model(example_model())
            await _to_evaluating(cluster)
            for step, weight in enumerate([10, 50, 100]):
                await cluster.wait(lambda s=step: cluster.get(JOB, f"digits-eval-g1-s{s}"), message=f"eval {step}")
                await cluster.write_report(f"digits-report-g1-s{step}", report("Promoted", weight))
            await cluster.wait_phase("digits", "Promoted")
            stable_spec = cluster.get(DEPLOY, "digits-int8")["spec"]
            stable_versions = cluster.versions(DEPLOY, "digits-int8")

            await cluster.change_spec("digits", {"source": {"uri": "s3://models/digits-v2.onnx"}})
            await cluster.wait(lambda: cluster.get(JOB, "digits-compress-g2"), message="generation 2 compression")
            await cluster.finish_job("digits-compress-g2", summary=SUMMARY)  # int8 chosen again
            status = await cluster.wait_phase("digits", "Packaging")
            assert status["candidateVariant"] == "int8"
            assert "serves as int8-g2" in cluster.condition("digits", "Compressed")["message"]
            script = cluster.get(JOB, "digits-package-g2")["spec"]["template"]["spec"]["containers"][0]["args"][0]
            assert script.endswith("--variants int8=int8-g2")  # the stable's model files stay as they are
            await cluster.finish_job("digits-package-g2")
            await cluster.wait_phase("digits", "Deploying")
            canary = cluster.get(DEPLOY, "digits-int8-g2")
            assert canary["metadata"]["labels"]["slimserve.dev/role"] == "canary"
            assert "--load-model=int8-g2" in canary["spec"]["template"]["spec"]["containers"][0]["args"]
            assert canary["spec"]["selector"]["matchLabels"]["slimserve.dev/variant"] == "int8-g2"
            assert cluster.get("v1/services", "digits-int8-g2") is not None
            assert cluster.get(HPA, "digits-int8-g2") is not None
            await cluster.make_ready("digits-int8-g2")
            await cluster.wait_phase("digits", "Evaluating")
            assert weights(cluster) == {"digits-int8": 90, "digits-int8-g2": 10}
            evaluator = cluster.get(JOB, "digits-eval-g2-s0")["spec"]["template"]["spec"]["containers"][0]["args"][0]
            assert "--baseline-model int8 " in evaluator and "--candidate-model int8-g2 " in evaluator
            assert cluster.get(DEPLOY, "digits-int8")["spec"] == stable_spec
            assert cluster.versions(DEPLOY, "digits-int8") == stable_versions

            await cluster.write_report("digits-report-g2-s0", report("RolledBack", 10, "accuracy -3 points"))
            status = await cluster.wait_phase("digits", "RolledBack")
            assert status["stableVariant"] == "int8" and weights(cluster) == {"digits-int8": 100}
            assert cluster.get(DEPLOY, "digits-int8")["spec"] == stable_spec  # the stable is never touched
            assert cluster.versions(DEPLOY, "digits-int8") == stable_versions
            assert cluster.get(DEPLOY, "digits-int8-g2")["spec"]["replicas"] == 0

    asyncio.run(scenario())


def test_invalid_spec_fails_with_an_actionable_condition(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with emulated_cluster(tmp_path) as cluster, running_operator():
            bad = example_model()
            bad["spec"]["rollout"]["steps"] = [50, 10]
            await cluster.create_model(bad)
            status = await cluster.wait_phase("digits", "Failed")
            ready = cluster.condition("digits", "Ready")
            assert ready["reason"] == "InvalidSpec" and "rollout.steps" in ready["message"]
            assert "must increase and end at 100" in status["message"]
            assert cluster.get(JOB, "digits-compress-g1") is None
            await cluster.change_spec("digits", {"rollout": {"steps": [10, 100]}})
            await cluster.wait(lambda: cluster.get(JOB, "digits-compress-g2"), message="fixed spec compresses")

    asyncio.run(scenario())


def test_replica_split_moves_replicas_instead_of_route_weights(tmp_path: Path) -> None:
    async def scenario() -> None:
        model = example_model()
        model["spec"]["rollout"] = {"steps": [25, 100], "trafficSplit": "replicas"}
        async with emulated_cluster(tmp_path) as cluster, running_operator(split_replicas=4):
            await cluster.create_model(model)
            await _to_evaluating(cluster)
            replicas = {n: cluster.get(DEPLOY, n)["spec"]["replicas"] for n in ("digits-baseline", "digits-int8")}
            assert replicas == {"digits-baseline": 3, "digits-int8": 1}
            assert cluster.get("v1/services", "digits")["spec"]["selector"] == {
                "slimserve.dev/model": "digits", "app.kubernetes.io/component": "triton"}
            assert cluster.get(ROUTE, "digits") is None
            await cluster.write_report("digits-report-g1-s0", report("Promoted", 25))
            await cluster.wait(lambda: cluster.get(JOB, "digits-eval-g1-s1"), message="step 2")
            await cluster.write_report("digits-report-g1-s1", report("Promoted", 100))
            await cluster.wait_phase("digits", "Promoted")
            replicas = {n: cluster.get(DEPLOY, n)["spec"]["replicas"] for n in ("digits-baseline", "digits-int8")}
            assert replicas == {"digits-baseline": 0, "digits-int8": 4}  # scaled, never deleted
            assert cluster.get(DEPLOY, "digits-baseline")["metadata"]["labels"]["slimserve.dev/role"] == "previous"
            assert cluster.status("digits")["previousStableVariant"] == "baseline"

    asyncio.run(scenario())


def test_deleting_the_model_releases_it_for_garbage_collection(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with emulated_cluster(tmp_path) as cluster, running_operator():
            await cluster.create_model(example_model())
            await cluster.wait(lambda: cluster.get(JOB, "digits-compress-g1"), message="compression Job")
            assert cluster.get(CR, "digits")["metadata"]["finalizers"] == ["slimserve.dev/finalizer"]
            async with cluster.k.request("DELETE", "/apis/slimserve.dev/v1alpha1/namespaces/models/"
                                         "compressedmodels/digits") as resp:
                assert resp.status < 300
            await cluster.wait(lambda: cluster.get(CR, "digits") is None, message="finalizer released")
            # Children go with their owner through the garbage collector (ownerReferences, controller=true).
            job = cluster.get(JOB, "digits-compress-g1")
            assert job["metadata"]["ownerReferences"][0]["uid"] == "uid-digits"

    asyncio.run(scenario())
