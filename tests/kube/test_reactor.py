"""The real kopf reactor against kmock's emulator, with the test playing the cluster."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from slimserve.operator.metrics import REGISTRY
from slimserve.operator.settings import FIELD_MANAGER
from tests.kube.emulator import (
    CR,
    NS,
    SUMMARY,
    emulated_cluster,
    example_model,
    report,
    running_operator,
)

pytestmark = [
    pytest.mark.kube,
    pytest.mark.filterwarnings("ignore:read_binary is deprecated:DeprecationWarning"),  # inside kmock 0.8
]

JOB = "batch/v1/jobs"
DEPLOY = "apps/v1/deployments"
CM = "v1/configmaps"
SVC = "v1/services"
ROUTE = "gateway.networking.k8s.io/v1/httproutes"
HPA = "autoscaling/v2/horizontalpodautoscalers"


def weights(cluster, name: str = "digits") -> dict[str, int]:
    route = cluster.get(ROUTE, name)
    return {b["name"]: b["weight"] for b in route["spec"]["rules"][0]["backendRefs"]}


def script(cluster, job: str) -> str:
    return cluster.get(JOB, job)["spec"]["template"]["spec"]["containers"][0]["args"][0]


async def _to_evaluating(cluster, name: str = "digits", gen: int = 1, canary: str = "int8") -> None:
    await cluster.wait(lambda: cluster.get(JOB, f"{name}-compress-g{gen}"), message="compression Job")
    await cluster.finish_job(f"{name}-compress-g{gen}", summary=SUMMARY)
    await cluster.wait_phase(name, "Packaging")
    await cluster.finish_job(f"{name}-package-g{gen}")
    await cluster.wait_phase(name, "Deploying")
    stable = cluster.status(name)["stableVariant"]
    for deployment in (f"{name}-{stable}", f"{name}-{canary}", f"{name}--control"):
        await cluster.make_ready(deployment)
    if cluster.get(ROUTE, name) is not None:
        await cluster.accept_route(name)
    await cluster.wait_phase(name, "Evaluating")


async def _judge(
    cluster, index: int, verdict: str, weight: int, name: str = "digits", gen: int = 1, failing: str = "p99VsBaseline"
) -> None:
    job = f"{name}-eval-g{gen}-s{index}"
    await cluster.wait(lambda: cluster.get(JOB, job), message=job)
    await cluster.judge(job, report(verdict, weight, failing))
    await cluster.wait(lambda: len(cluster.status(name).get("steps") or []) == index + 1, message=f"step {index}")


def decisions(decision: str, name: str = "digits") -> float:
    labels = {"namespace": NS, "model": name, "decision": decision}
    return REGISTRY.get_sample_value("slimserve_operator_gate_decisions_total", labels) or 0.0


def test_happy_path_promotes_the_candidate(tmp_path: Path) -> None:
    decisions_before = decisions("Promoted")

    async def scenario() -> None:
        async with emulated_cluster(tmp_path) as cluster, running_operator():
            await cluster.create_model(example_model())
            await _to_evaluating(cluster)
            status = cluster.status("digits")
            assert status["candidateVariant"] == "int8" and status["sizeRatio"] == 3.9 and status["qualityDrop"] == 0.2
            assert status["endpoint"] == "Gateway models/slimserve-gateway, path /v2/models/digits"
            assert cluster.condition("digits", "Deployed")["status"] == "True"
            assert cluster.condition("digits", "TrafficReady")["status"] == "True"
            assert weights(cluster) == {"digits-baseline": 100, "digits-int8": 0}  # the quality check first
            assert "--weight 0 " in script(cluster, "digits-eval-g1-s0")
            for index, weight in enumerate([0, 10, 50]):
                await _judge(cluster, index, "Pass", weight)
                nxt = [10, 50, 100][index]
                await cluster.wait(lambda w=nxt: cluster.status("digits").get("canaryWeight") == w)
                assert cluster.status("digits")["phase"] == "Progressing"
                assert weights(cluster) == {"digits-baseline": 100 - nxt, "digits-int8": nxt}
                assert f"--weight {nxt} " in script(cluster, f"digits-eval-g1-s{index + 1}")
            await _judge(cluster, 3, "Pass", 100)
            status = await cluster.wait_phase("digits", "Promoted")
            assert status["stableVariant"] == "int8" and status["decision"] == "Promoted"
            assert status["previousStableVariant"] == "baseline" and status["stableGeneration"] == 1
            assert [s["weight"] for s in status["steps"]] == [0, 10, 50, 100]
            assert status["p99Ms"] == 4.2 and status["throughputRps"] == 95.0
            assert weights(cluster) == {"digits-int8": 100}
            # The old stable drains, then stops using resources but is kept, one `kubectl scale` away.
            await cluster.wait(
                lambda: (cluster.get(DEPLOY, "digits-baseline") or {}).get("spec", {}).get("replicas") == 0,
                message="old stable scaled to 0",
            )
            previous = cluster.get(DEPLOY, "digits-baseline")
            assert previous["metadata"]["labels"]["slimserve.dev/role"] == "previous"
            assert cluster.get(HPA, "digits-baseline") is None
            assert cluster.get(HPA, "digits-int8") is not None
            assert cluster.get(SVC, "digits-baseline") is not None
            assert cluster.get(DEPLOY, "digits--control") is None and cluster.get(SVC, "digits--control") is None
            for type in ("Promoted", "Ready"):
                cond = cluster.condition("digits", type)
                assert cond["status"] == "True" and cond["observedGeneration"] == 1
            owner = cluster.get(DEPLOY, "digits-int8")["metadata"]["ownerReferences"][0]
            assert owner["uid"] == "uid-digits" and owner["controller"] is True
            assert cluster.get(DEPLOY, "digits-int8")["metadata"]["labels"]["slimserve.dev/role"] == "stable"

    asyncio.run(scenario())
    assert decisions("Promoted") - decisions_before == 1


def test_failing_quality_rolls_back_and_leaves_stable_untouched(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with emulated_cluster(tmp_path) as cluster, running_operator():
            await cluster.create_model(example_model())
            await _to_evaluating(cluster)
            stable_versions = cluster.versions(DEPLOY, "digits-baseline")
            stable_spec = cluster.get(DEPLOY, "digits-baseline")["spec"]
            await _judge(cluster, 0, "Fail", 0)
            status = await cluster.wait_phase("digits", "RolledBack")
            assert status["decision"] == "RolledBack" and status["canaryWeight"] == 0
            assert "qualityDrop failed" in status["message"]
            assert weights(cluster) == {"digits-baseline": 100}
            assert cluster.condition("digits", "Promoted")["reason"] == "GateFailed"
            assert cluster.condition("digits", "Ready")["status"] == "True"  # stable keeps serving
            assert cluster.versions(DEPLOY, "digits-baseline") == stable_versions
            assert cluster.get(DEPLOY, "digits-baseline")["spec"] == stable_spec
            await cluster.wait(lambda: cluster.get(DEPLOY, "digits-int8")["spec"]["replicas"] == 0)
            assert cluster.get(HPA, "digits-int8") is None
            assert cluster.get(HPA, "digits-baseline") is not None
            assert cluster.get(DEPLOY, "digits--control") is None

    asyncio.run(scenario())


def test_failure_budget_reruns_the_step_at_the_same_weight_before_rolling_back(tmp_path: Path) -> None:
    async def scenario() -> None:
        model = example_model()
        model["spec"]["rollout"]["failureBudget"] = 1
        async with emulated_cluster(tmp_path) as cluster, running_operator():
            await cluster.create_model(model)
            await _to_evaluating(cluster)
            await _judge(cluster, 0, "Pass", 0)
            await _judge(cluster, 1, "Fail", 10)
            await cluster.wait(lambda: cluster.status("digits").get("failedSteps") == 1, message="failedSteps 1")
            assert "--weight 10 " in script(cluster, "digits-eval-g1-s2")  # never more traffic on a failure
            assert weights(cluster)["digits-int8"] == 10
            await _judge(cluster, 2, "Fail", 10, failing="errorRate")
            status = await cluster.wait_phase("digits", "RolledBack")
            assert "errorRate" in status["message"] and "failureBudget 1" in status["message"]

    asyncio.run(scenario())


def test_failed_compression_job_fails_with_the_pods_own_reason(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with emulated_cluster(tmp_path) as cluster, running_operator():
            await cluster.create_model(example_model())
            await cluster.wait(lambda: cluster.get(JOB, "digits-compress-g1"), message="compression Job")
            why = "error: spec.data.evaluation = '/models/digits/inputs/test.npz': file not found; fix the path"
            await cluster.finish_job("digits-compress-g1", ok=False, reason="PodFailurePolicy",
                                     message="Container worker for pod models/x failed with exit code 2",
                                     exit_code=2, output=why)  # fmt: skip
            status = await cluster.wait_phase("digits", "Failed")
            assert (
                "exit 2: error: spec.data.evaluation" in status["message"] and "PodFailurePolicy" in status["message"]
            )
            compressed = cluster.condition("digits", "Compressed")
            assert compressed["status"] == "False" and compressed["reason"] == "CompressionFailed"
            assert cluster.get(JOB, "digits-package-g1") is None

    asyncio.run(scenario())


def test_a_deleted_evaluator_job_is_created_again(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with emulated_cluster(tmp_path) as cluster, running_operator():
            await cluster.create_model(example_model())
            await _to_evaluating(cluster)
            first = cluster.get(JOB, "digits-eval-g1-s0")["metadata"]["uid"]
            async with cluster.k.request("DELETE", f"/apis/batch/v1/namespaces/{NS}/jobs/digits-eval-g1-s0") as resp:
                assert resp.status < 300
            await cluster.wait(
                lambda: (
                    (cluster.get(JOB, "digits-eval-g1-s0") or {}).get("metadata", {}).get("uid") not in (None, first)
                ),
                message="the Job recreated",
            )
            await _judge(cluster, 0, "Pass", 0)
            await cluster.wait_phase("digits", "Progressing")

    asyncio.run(scenario())


def test_operator_restart_mid_rollout_resumes_without_duplicates(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with emulated_cluster(tmp_path) as cluster:
            async with running_operator():
                await cluster.create_model(example_model())
                await _to_evaluating(cluster)
                await _judge(cluster, 0, "Pass", 0)
                await cluster.wait_phase("digits", "Progressing")
            before = {r: cluster.names(r) for r in (JOB, DEPLOY, CM, SVC, ROUTE)}
            stable_versions = cluster.versions(DEPLOY, "digits-baseline")
            # While the operator is down, the 10% evaluator finishes.
            await cluster.judge("digits-eval-g1-s1", report("Pass", 10))
            async with running_operator():
                await cluster.wait(lambda: cluster.get(JOB, "digits-eval-g1-s2"), message="step 50% after restart")
                after = {r: cluster.names(r) for r in (JOB, DEPLOY, CM, SVC, ROUTE)}
                assert after[JOB] == sorted(before[JOB] + ["digits-eval-g1-s2"])
                assert after[DEPLOY] == before[DEPLOY] == ["digits--control", "digits-baseline", "digits-int8"]
                assert after[SVC] == before[SVC]
                assert cluster.versions(DEPLOY, "digits-baseline") == stable_versions
                await _judge(cluster, 2, "Pass", 50)
                await _judge(cluster, 3, "Pass", 100)
                await cluster.wait_phase("digits", "Promoted")

    asyncio.run(scenario())


def test_a_spec_change_mid_rollout_removes_the_superseded_canary(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with emulated_cluster(tmp_path) as cluster, running_operator():
            await cluster.create_model(example_model())
            await _to_evaluating(cluster)
            await _judge(cluster, 0, "Pass", 0)
            await cluster.wait(lambda: cluster.get(JOB, "digits-eval-g1-s1"), message="the 10% step")
            await cluster.change_spec("digits", {"rollout": {"steps": [25, 100]}})
            # a rollout-only change reuses generation 1's compression output: only the choice runs again
            await cluster.wait(lambda: cluster.get(JOB, "digits-choose-g2"), message="generation 2 choice")
            status = await cluster.wait_phase("digits", "Compressing")
            assert status["observedGeneration"] == 2 and status.get("candidateVariant") is None
            assert all(c["observedGeneration"] == 2 for c in status["conditions"])
            assert weights(cluster) == {"digits-baseline": 100}  # traffic back on stable at once
            assert cluster.get(DEPLOY, "digits-int8")["spec"]["replicas"] == 0
            assert cluster.get(HPA, "digits-int8") is None and cluster.get(DEPLOY, "digits--control") is None
            assert cluster.get(JOB, "digits-eval-g1-s1") is None  # the superseded evaluator is gone
            assert cluster.get(DEPLOY, "digits-baseline") is not None

    asyncio.run(scenario())


def test_a_new_generation_of_the_stable_variant_rolls_out_under_its_own_names(tmp_path: Path) -> None:
    """New weights for `int8` after `int8` was promoted: the canary must not take over the stable's children."""

    async def scenario() -> None:
        async with emulated_cluster(tmp_path) as cluster, running_operator():
            await cluster.create_model(example_model())
            await _to_evaluating(cluster)
            for index, weight in enumerate([0, 10, 50, 100]):
                await _judge(cluster, index, "Pass", weight)
            await cluster.wait_phase("digits", "Promoted")
            stable_spec = cluster.get(DEPLOY, "digits-int8")["spec"]
            stable_versions = cluster.versions(DEPLOY, "digits-int8")

            await cluster.change_spec("digits", {"source": {"uri": "s3://models/digits-v2.onnx"}})
            await cluster.wait(lambda: cluster.get(JOB, "digits-compress-g2"), message="generation 2 compression")
            # auto compares the new variants with the file the stable serves
            assert "--stable-onnx /models/digits/gen-1/repository/int8/digits/1/model.onnx" in script(
                cluster, "digits-compress-g2"
            )
            await cluster.finish_job("digits-compress-g2", summary=SUMMARY)  # int8 chosen again
            status = await cluster.wait_phase("digits", "Packaging")
            assert status["candidateVariant"] == "int8"
            assert "serves as int8-g2" in cluster.condition("digits", "Compressed")["message"]
            assert script(cluster, "digits-package-g2").endswith(
                "--repository /models/digits/gen-2/repository/int8-g2 --backend onnxruntime --variants int8=digits"
            )
            await cluster.finish_job("digits-package-g2")
            await cluster.wait_phase("digits", "Deploying")
            canary = cluster.get(DEPLOY, "digits-int8-g2")
            assert canary["metadata"]["labels"]["slimserve.dev/role"] == "canary"
            args = canary["spec"]["template"]["spec"]["containers"][0]["args"]
            assert "--model-repository=/models/digits/gen-2/repository/int8-g2" in args
            assert "--load-model=digits" in args  # the same client-facing name
            assert canary["spec"]["selector"]["matchLabels"]["slimserve.dev/variant"] == "int8-g2"
            assert cluster.get(SVC, "digits-int8-g2") is not None
            assert cluster.get(HPA, "digits-int8-g2") is not None
            control = cluster.get(DEPLOY, "digits--control")["spec"]["template"]["spec"]["containers"][0]["args"]
            assert "--model-repository=/models/digits/gen-1/repository/int8" in control  # a copy of the stable
            for deployment in ("digits-int8-g2", "digits--control"):
                await cluster.make_ready(deployment)
            await cluster.wait_phase("digits", "Evaluating")
            await _judge(cluster, 0, "Pass", 0, gen=2)
            await cluster.wait(lambda: weights(cluster) == {"digits-int8": 90, "digits-int8-g2": 10})
            assert "--candidate-url http://digits-int8-g2.models.svc:8000" in script(cluster, "digits-eval-g2-s1")
            assert cluster.get(DEPLOY, "digits-int8")["spec"] == stable_spec
            assert cluster.versions(DEPLOY, "digits-int8") == stable_versions

            await _judge(cluster, 1, "Fail", 10, gen=2)
            status = await cluster.wait_phase("digits", "RolledBack")
            assert status["stableVariant"] == "int8" and weights(cluster) == {"digits-int8": 100}
            assert cluster.get(DEPLOY, "digits-int8")["spec"] == stable_spec  # the stable is never touched
            assert cluster.versions(DEPLOY, "digits-int8") == stable_versions
            await cluster.wait(lambda: cluster.get(DEPLOY, "digits-int8-g2")["spec"]["replicas"] == 0)

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


def test_a_step_too_short_for_the_scrape_interval_is_refused_before_any_work(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with emulated_cluster(tmp_path) as cluster, running_operator(scrape_interval="30s"):
            await cluster.create_model(example_model())
            status = await cluster.wait_phase("digits", "Failed")
            assert "spec.rollout.stepDuration = '10s'" in status["message"] and "use at least 123s" in status["message"]
            assert cluster.get(JOB, "digits-compress-g1") is None

    asyncio.run(scenario())


def test_replica_split_moves_replicas_instead_of_route_weights(tmp_path: Path) -> None:
    async def scenario() -> None:
        model = example_model()
        model["spec"]["rollout"] = {"steps": [25, 100], "trafficSplit": "replicas", "stepDuration": "10s"}
        async with emulated_cluster(tmp_path) as cluster, running_operator(split_replicas=4):
            await cluster.create_model(model)
            await _to_evaluating(cluster)
            replicas = {n: cluster.get(DEPLOY, n)["spec"]["replicas"] for n in ("digits-baseline", "digits-int8")}
            assert replicas == {"digits-baseline": 3, "digits-int8": 1}
            assert cluster.get(SVC, "digits")["spec"]["selector"] == {
                "slimserve.dev/model": "digits",
                "app.kubernetes.io/component": "triton",
            }
            assert cluster.get(ROUTE, "digits") is None
            await _judge(cluster, 0, "Pass", 0)
            await _judge(cluster, 1, "Pass", 25)
            await _judge(cluster, 2, "Pass", 100)
            await cluster.wait_phase("digits", "Promoted")
            await cluster.wait(lambda: cluster.get(DEPLOY, "digits-baseline")["spec"]["replicas"] == 0)
            assert cluster.get(DEPLOY, "digits-int8")["spec"]["replicas"] == 4  # scaled, never deleted
            assert cluster.get(DEPLOY, "digits-baseline")["metadata"]["labels"]["slimserve.dev/role"] == "previous"
            assert cluster.status("digits")["previousStableVariant"] == "baseline"

    asyncio.run(scenario())


def test_deploying_past_its_deadline_fails_with_the_pods_reason(tmp_path: Path) -> None:
    async def scenario() -> None:
        model = example_model(serving={"deployDeadline": "2s"})
        async with emulated_cluster(tmp_path) as cluster, running_operator():
            await cluster.create_model(model)
            await cluster.wait(lambda: cluster.get(JOB, "digits-compress-g1"), message="compression Job")
            await cluster.finish_job("digits-compress-g1", summary=SUMMARY)
            await cluster.wait_phase("digits", "Packaging")
            await cluster.finish_job("digits-package-g1")
            await cluster.wait_phase("digits", "Deploying")
            labels = cluster.get(DEPLOY, "digits-int8")["spec"]["selector"]["matchLabels"]
            await cluster.request(
                "POST",
                f"/api/v1/namespaces/{NS}/pods",
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": "digits-int8-abc", "labels": labels},
                    "status": {
                        "phase": "Pending",
                        "containerStatuses": [
                            {
                                "name": "triton",
                                "state": {
                                    "waiting": {
                                        "reason": "ImagePullBackOff",
                                        "message": 'Back-off pulling image "triton:typo"',
                                    }
                                },
                            }
                        ],
                    },
                },
            )
            await cluster.make_ready("digits-baseline")
            status = await cluster.wait_phase("digits", "Failed", timeout=15)
            assert "ImagePullBackOff" in status["message"] and "triton:typo" in status["message"]
            assert cluster.condition("digits", "Deployed")["reason"] == "DeadlineExceeded"
            assert cluster.get(DEPLOY, "digits-int8")["spec"]["replicas"] == 0

    asyncio.run(scenario())


def test_a_missing_gateway_is_a_status_condition(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with emulated_cluster(tmp_path) as cluster, running_operator():
            await cluster.create_model(example_model())
            await cluster.wait(lambda: cluster.get(JOB, "digits-compress-g1"), message="compression Job")
            await cluster.finish_job("digits-compress-g1", summary=SUMMARY)
            await cluster.wait_phase("digits", "Packaging")
            await cluster.finish_job("digits-package-g1")
            await cluster.wait_phase("digits", "Deploying")
            for deployment in ("digits-baseline", "digits-int8", "digits--control"):
                await cluster.make_ready(deployment)
            await cluster.wait(lambda: cluster.condition("digits", "TrafficReady").get("status") == "False",
                               message="TrafficReady False")  # fmt: skip
            assert "Gateway slimserve-gateway not found" in cluster.condition("digits", "TrafficReady")["message"]
            assert cluster.status("digits")["phase"] == "Deploying"  # nothing judged through a dead route
            await cluster.accept_route("digits")
            await cluster.wait_phase("digits", "Evaluating")

    asyncio.run(scenario())


def test_missing_gateway_api_crds_are_a_status_condition(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with emulated_cluster(tmp_path, gateway_api=False) as cluster, running_operator():
            await cluster.create_model(example_model())
            await cluster.wait(lambda: cluster.get(JOB, "digits-compress-g1"), message="compression Job")
            await cluster.finish_job("digits-compress-g1", summary=SUMMARY)
            await cluster.wait_phase("digits", "Packaging")
            await cluster.finish_job("digits-package-g1")
            await cluster.wait(lambda: cluster.condition("digits", "TrafficReady").get("reason") == "APIMissing",
                               message="TrafficReady APIMissing")  # fmt: skip
            assert "trafficSplit: replicas" in cluster.condition("digits", "TrafficReady")["message"]

    asyncio.run(scenario())


def test_deleting_the_model_releases_it_for_garbage_collection(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with emulated_cluster(tmp_path) as cluster, running_operator():
            await cluster.create_model(example_model())
            await cluster.wait(lambda: cluster.get(JOB, "digits-compress-g1"), message="compression Job")
            assert cluster.get(CR, "digits")["metadata"]["finalizers"] == ["slimserve.dev/finalizer"]
            async with cluster.k.request(
                "DELETE", "/apis/slimserve.dev/v1alpha1/namespaces/models/compressedmodels/digits"
            ) as resp:
                assert resp.status < 300
            await cluster.wait(lambda: cluster.get(CR, "digits") is None, message="finalizer released")
            # Children go with their owner through the garbage collector (ownerReferences, controller=true).
            job = cluster.get(JOB, "digits-compress-g1")
            assert job["metadata"]["ownerReferences"][0]["uid"] == "uid-digits"

    asyncio.run(scenario())


def test_events_say_why_a_rollout_failed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A phase change is logged through kopf's object logger, which posts it as an Event on the
    CompressedModel (kopf's K8sPoster takes records with a `k8s_ref`, at `posting.level` INFO and up):
    the pod's reason reaches `kubectl describe`, as a Warning when the rollout failed."""

    async def scenario() -> None:
        async with emulated_cluster(tmp_path) as cluster, running_operator():
            await cluster.create_model(example_model())
            await cluster.wait(lambda: cluster.get(JOB, "digits-compress-g1"), message="compression Job")
            await cluster.finish_job("digits-compress-g1", ok=False, exit_code=137, output="OOMKilled")
            await cluster.wait_phase("digits", "Failed")

    with caplog.at_level("INFO", logger="kopf.objects"):
        asyncio.run(scenario())
    posted = [r for r in caplog.records if getattr(r, "k8s_ref", None) and "→ Failed" in r.getMessage()]
    assert posted and posted[-1].levelname == "WARNING"
    assert posted[-1].k8s_ref["name"] == "digits" and "exit 137: OOMKilled" in posted[-1].getMessage()


def test_a_gates_only_change_reuses_compression_and_a_compression_change_does_not(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with emulated_cluster(tmp_path) as cluster, running_operator():
            await cluster.create_model(example_model())
            await _to_evaluating(cluster)
            await _judge(cluster, 0, "Fail", 0)
            first = await cluster.wait_phase("digits", "RolledBack")
            assert first["compression"] == {"hash": first["compressionHash"], "generation": 1}

            await cluster.change_spec("digits", {"gates": {"maxAccuracyDrop": 2.0}})
            await cluster.wait(lambda: cluster.get(JOB, "digits-choose-g2"), message="generation 2 choice")
            assert "slimserve compress" not in script(cluster, "digits-choose-g2")
            status = await cluster.wait_phase("digits", "Compressing")
            assert status["observedGeneration"] == 2 and status["compressionHash"] == first["compressionHash"]
            assert "reused from generation 1" in cluster.condition("digits", "Compressed")["message"]
            await cluster.finish_job("digits-choose-g2", summary=SUMMARY)
            await cluster.wait_phase("digits", "Packaging")
            assert "--report /models/digits/gen-1/compressed/compression-report.json" in script(
                cluster, "digits-package-g2"
            )
            await cluster.finish_job("digits-package-g2")
            await cluster.wait_phase("digits", "Deploying")
            for deployment in ("digits-baseline", "digits-int8", "digits--control"):
                await cluster.make_ready(deployment)
            await cluster.accept_route("digits")
            await cluster.wait_phase("digits", "Evaluating")
            assert "--reference-onnx /models/digits/gen-1/compressed/baseline.onnx" in script(
                cluster, "digits-eval-g2-s0"
            )
            assert [n for n in cluster.names(JOB) if "compress" in n] == ["digits-compress-g1"]
            # Children are server-side applied under the operator's field manager; Jobs are only ever created.
            managers = cluster.get(DEPLOY, "digits-int8")["metadata"]["managedFields"]
            assert [(m["manager"], m["operation"]) for m in managers] == [(FIELD_MANAGER, "Apply")]
            assert "managedFields" not in cluster.get(JOB, "digits-compress-g1")["metadata"]

            await cluster.change_spec("digits", {"compression": {"variants": [{"name": "int8", "steps": [
                {"quantize": {"mode": "dynamic"}}]}]}})  # fmt: skip
            await cluster.wait(lambda: cluster.get(JOB, "digits-compress-g3"), message="generation 3 compression")
            await cluster.wait(lambda: cluster.status("digits")["observedGeneration"] == 3, message="generation 3")
            assert cluster.status("digits")["compressionHash"] != first["compressionHash"]
            assert cluster.get(JOB, "digits-choose-g3") is None

    asyncio.run(scenario())


def test_a_child_name_held_by_another_owner_is_never_overwritten(tmp_path: Path) -> None:
    """`digits` + variant `int8` and a model named `digits-int8` would both want Deployment `digits-int8`:
    the one that does not control it says so in its status and leaves it alone."""
    foreign = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "digits-int8", "namespace": NS, "labels": {"team": "b"},
                     "ownerReferences": [{"apiVersion": "slimserve.dev/v1alpha1", "kind": "CompressedModel",
                                          "name": "digits-int8", "uid": "uid-of-another-model", "controller": True}]},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "b"}},
                 "template": {"metadata": {"labels": {"app": "b"}},
                              "spec": {"containers": [{"name": "b", "image": "team-b/server:1"}]}}},
    }  # fmt: skip

    async def scenario() -> None:
        async with emulated_cluster(tmp_path) as cluster, running_operator():
            await cluster.request("POST", f"/apis/apps/v1/namespaces/{NS}/deployments", foreign)
            await cluster.create_model(example_model())
            await cluster.wait(lambda: cluster.get(JOB, "digits-compress-g1"), message="compression Job")
            await cluster.finish_job("digits-compress-g1", summary=SUMMARY)
            await cluster.wait_phase("digits", "Packaging")
            await cluster.finish_job("digits-package-g1")
            await cluster.wait(lambda: cluster.condition("digits", "Deployed").get("reason") == "NameTaken",
                               message="Deployed NameTaken")  # fmt: skip
            message = cluster.condition("digits", "Deployed")["message"]
            assert "Deployment digits-int8 already exists and belongs to CompressedModel digits-int8" in message
            kept = cluster.get(DEPLOY, "digits-int8")
            assert kept["spec"]["replicas"] == 3 and kept["metadata"]["labels"] == {"team": "b"}
            assert kept["spec"]["template"]["spec"]["containers"][0]["image"] == "team-b/server:1"
            # The pass that would deploy stops before its status write: no phase moves on, nothing is judged.
            assert cluster.status("digits")["phase"] == "Packaging"
            assert not [j for j in cluster.names(JOB) if "-eval-" in j]

    asyncio.run(scenario())
