"""The real kopf reactor against kmock's emulator, with the test playing the cluster."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.kube.emulator import CR, SUMMARY, emulated_cluster, example_model, report, running_operator

pytestmark = pytest.mark.kube

JOB = "batch/v1/jobs"
DEPLOY = "apps/v1/deployments"
CM = "v1/configmaps"
ROUTE = "gateway.networking.k8s.io/v1/httproutes"


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


def test_happy_path_promotes_the_candidate(tmp_path: Path) -> None:
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
            assert status["p99Ms"] == 4.2
            assert weights(cluster) == {"digits-int8": 100}
            for type in ("Promoted", "Ready"):
                cond = cluster.condition("digits", type)
                assert cond["status"] == "True" and cond["observedGeneration"] == 1
            owner = cluster.get(DEPLOY, "digits-int8")["metadata"]["ownerReferences"][0]
            assert owner["uid"] == "uid-digits" and owner["controller"] is True
            assert cluster.get(DEPLOY, "digits-int8")["metadata"]["labels"]["slimserve.dev/role"] == "stable"

    asyncio.run(scenario())
