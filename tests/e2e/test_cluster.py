"""What the operator creates, run for real: the bundled example from `kubectl apply` to Promoted; the S3
example (model, data and model repository in a local S3 server) steered by hand with the CLI through a
manual approval, an abort and a retry that rolls back an accuracy-wrecked candidate; a failing Job's
reason in the status.

Every Job runs its command in the worker image (a venv installed as docker/worker.Dockerfile installs
it, non-editable, from another folder): a missing dependency or a file the wheel does not ship fails
here. Every Triton Deployment runs its args with the local tritonserver. See tests/e2e/node.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from slimserve.api.status import TERMINAL_PHASES
from tests.e2e.conftest import DRAIN_S, GATEWAY_DELAY_S, digits_client, e2e_cluster, wait_phase
from tests.e2e.node import copy_inputs
from tests.kube.emulator import CR, NS

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.filterwarnings("ignore:read_binary is deprecated:DeprecationWarning"),  # inside kmock 0.8
]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "digits"
DEPLOY = "apps/v1/deployments"
JOB = "batch/v1/jobs"


def bundled_example() -> dict[str, Any]:
    (doc,) = [d for d in yaml.safe_load_all((EXAMPLE / "compressedmodel.yaml").read_text()) if d]
    return doc  # type: ignore[no-any-return]


def stable_pods(e2e: Any, deployment: str) -> dict[str, int]:
    return {p.name: p.process.pid for p in e2e.node.deployments.get(deployment, []) if p.ready and p.process}


@pytest.mark.timeout(600)
def test_the_bundled_example_is_promoted_while_its_url_keeps_answering(tmp_path: Path, worker_image: Path) -> None:
    body = bundled_example()
    name = body["metadata"]["name"]
    # Steps 50 and 100, not the example's 10/50/100: here every pod, Prometheus, the emulator and the
    # operator share 2 cores, and at a 10% share the candidate's capacity interval (Triton's wall-clock
    # compute time) straddled minThroughputRatio twice in 2 of 5 loaded runs: Inconclusive twice, then
    # RolledBack, as the policy says. The gate's calibration is benchmarks.gate's job; this test is
    # about the cluster path running its children to a promotion.
    body["spec"]["rollout"]["steps"] = [50, 100]

    async def scenario() -> None:
        async with e2e_cluster(tmp_path, worker_image) as e2e:
            cluster = e2e.cluster
            copy_inputs(EXAMPLE, e2e.pvc / f"{name}-models", name)  # README: kubectl cp onto the model volume
            await e2e.apply(body)
            await wait_phase(cluster, name, "Evaluating", timeout=300)
            status = cluster.status(name)
            candidate = status["candidateVariant"]
            assert status["endpoint"] == f"Gateway models/slimserve-gateway, path /v2/models/{name}"
            client = digits_client(e2e.node.gateway.url, name, EXAMPLE)
            async with client.running():
                promoted = await wait_phase(cluster, name, "Promoted", timeout=420)
                await cluster.wait(
                    lambda: cluster.get(DEPLOY, f"{name}-baseline")["spec"].get("replicas") == 0,
                    timeout=DRAIN_S + 30,
                    message="the old stable drained and scaled to 0",
                )
                await cluster.wait(lambda: not e2e.node.deployments.get(f"{name}-baseline"), timeout=30,
                                   message="the old stable's pods gone")  # fmt: skip
                await asyncio.sleep(2 * GATEWAY_DELAY_S)  # answered by the new stable alone
            assert promoted["stableVariant"] == candidate and promoted["decision"] == "Promoted"
            assert [s["weight"] for s in promoted["steps"]][-1] == 100 and promoted["steps"][0]["weight"] == 0
            assert all(s["verdict"] == "Pass" for s in promoted["steps"] if s["weight"] in (0, 100))
            # One URL, answered throughout: the quality check, every canary step, the switch and the drain.
            assert len(client.outcomes) > 100
            assert client.failures == [], client.failures[:5]
            assert client.correct / len(client.outcomes) > 0.9  # real answers from real models
            # The evaluator's last report, as its pod wrote it (--out), matches what the status says.
            last = max((p for p in (e2e.root / "pods").glob(f"{name}-eval-g1-s*/volumes/tmp/evaluation-report.json")),
                       key=lambda p: p.stat().st_mtime)  # fmt: skip
            report = json.loads(last.read_text())
            assert report["weight"] == 100 and report["step"]["verdict"] == "Pass"
            assert cluster.get(DEPLOY, f"{name}--control") is None

    asyncio.run(scenario())


S3_FILES = ("digits_cnn.pt", "model.py", "data/train.npz", "data/calibration.npz", "data/test.npz")


def s3_example(bucket: str) -> dict[str, Any]:
    """examples/digits/compressedmodel-s3.yaml on the test's bucket: two quick variants, a manual approval."""
    text = (EXAMPLE / "compressedmodel-s3.yaml").read_text().replace("s3://slimserve-examples/", f"s3://{bucket}/")
    (body,) = [d for d in yaml.safe_load_all(text) if d]
    spec = body["spec"]
    spec["compression"] = {
        "variants": [
            {"name": "int8-static", "steps": [{"quantize": {"mode": "static", "calibration": "minmax"}}]},
            {"name": "wrecked", "steps": [{"lowRank": {"rank": 1}}]},
        ],
        "measure": {"latencyRuns": 20, "throughputBatch": 8, "threads": 1},
    }
    spec["rollout"].update(candidate="int8-static", steps=[100], approval="manual")
    return body  # type: ignore[no-any-return]


async def slimserve(*args: str) -> str:
    """The CLI as a user runs it: its own process, the kubeconfig of the cluster (KUBECONFIG)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from slimserve.cli.main import main; main()", *args,  # the console script's entry
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    out, _ = await process.communicate()
    assert process.returncode == 0, f"slimserve {' '.join(args)} exited {process.returncode}: {out.decode()}"
    return out.decode()


async def until(cluster: Any, name: str, what: Any, timeout: float, message: str) -> Any:
    """`cluster.wait`, but an assertion error as soon as the current generation's rollout ends instead (its
    status says why)."""

    def check() -> Any:
        status, generation = cluster.status(name), cluster.get(CR, name)["metadata"].get("generation")
        ended = status.get("phase") in TERMINAL_PHASES and status.get("observedGeneration") == generation
        assert not ended, f"{message}: {cluster.status_dump()}"
        return what()

    return await cluster.wait(check, timeout, message)


def s3_digest(fs: Any, prefix: str) -> dict[str, str]:
    return {key: fs.info(key)["ETag"] for key in sorted(fs.find(prefix))}


@pytest.mark.timeout(720)
def test_the_s3_example_steered_by_hand_approve_abort_retry(tmp_path: Path, worker_image: Path) -> None:
    """The S3 example end to end: model, data and model repository in a bucket (moto), credentials from the
    Secret that spec.storage.secretName names, Triton reading its repository natively; and the rollout
    controls, each through the real CLI: a manual approval holds until `promote --yes`; a paused generation
    is aborted with the stable untouched and serving; `retry` of that RolledBack generation packages,
    deploys and judges it again without a new compression Job (its accuracy-wrecked candidate is then
    rolled back by the quality check, with the stable still untouched)."""
    import s3fs

    from tests.storage.conftest import CREDENTIALS, start_moto, stop

    moto = start_moto(tmp_path / "moto.log")
    fs = s3fs.S3FileSystem(key=CREDENTIALS["AWS_ACCESS_KEY_ID"], secret=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                           endpoint_url=moto.endpoint, config_kwargs={"region_name": CREDENTIALS["AWS_DEFAULT_REGION"]},
                           use_listings_cache=False)  # fmt: skip
    bucket = "slimserve-e2e"
    fs.mkdir(bucket)
    for file in S3_FILES:
        fs.put_file(str(EXAMPLE / file), f"{bucket}/digits/{file}")
    body = s3_example(bucket)
    name = body["metadata"]["name"]
    repository = body["spec"]["serving"]["modelRepository"]["uri"].removeprefix("s3://")
    assert repository == f"{bucket}/digits/repository"
    secret = {**CREDENTIALS, "AWS_ENDPOINT_URL": moto.endpoint}

    async def scenario() -> None:
        async with e2e_cluster(tmp_path, worker_image) as e2e:
            cluster = e2e.cluster
            await cluster.request("POST", f"/api/v1/namespaces/{NS}/secrets", {
                "apiVersion": "v1", "kind": "Secret", "metadata": {"name": body["spec"]["storage"]["secretName"]},
                "data": {k: base64.b64encode(v.encode()).decode() for k, v in secret.items()},
            })  # fmt: skip
            await e2e.apply(body)  # nothing copied onto the model volume: every file comes from the bucket

            # 1. A manual approval holds the canary at its last weight until `slimserve promote --yes`.
            await until(cluster, name, lambda: cluster.condition(name, "WaitingForApproval").get("status") == "True",
                        timeout=480, message="waiting for approval")  # fmt: skip
            assert not (e2e.pvc / f"{name}-models" / name / "inputs").exists()
            for variant in ("baseline", "int8-static"):
                assert fs.exists(f"{repository}/gen-1/{variant}.complete")
                assert fs.exists(f"{repository}/gen-1/{variant}/{name}/1/model.onnx")
                pod = cluster.get(DEPLOY, f"{name}-{variant}")["spec"]["template"]["spec"]  # type: ignore[index]
                assert [v["name"] for v in pod["volumes"]] == ["tmp"]  # no model volume: Triton reads the bucket
                assert f"{repository}/gen-1/{variant}" in pod["containers"][0]["command"][2]
            logs = [p.read_text() for p in (e2e.root / "pods").glob(f"{name}-int8-static-*/log.txt")]
            assert any(f"s3://{moto.endpoint}/{repository}/gen-1/int8-static" in log for log in logs)
            await asyncio.sleep(3)
            assert cluster.status(name)["phase"] == "Progressing"  # held, not promoted
            client = digits_client(e2e.node.gateway.url, name, EXAMPLE)
            async with client.running():
                await cluster.wait(lambda: len(client.outcomes) > 5, timeout=60, message="the client answered")
                assert "promote requested" in await slimserve("promote", name, "-n", NS, "--yes")
                promoted = await wait_phase(cluster, name, "Promoted", timeout=60)
                assert promoted["stableVariant"] == "int8-static" and promoted["decision"] == "Promoted"
                assert cluster.condition(name, "Promoted")["reason"] == "PromotedByHand"

                # 2. The next generation, paused before it starts, is aborted: the stable never changes.
                await slimserve("pause", name, "-n", NS)
                await cluster.change_spec(name, {"rollout": {"candidate": "wrecked"}})
                await until(
                    cluster, name,
                    lambda: cluster.condition(name, "Deployed").get("observedGeneration") == 2
                    and cluster.condition(name, "Deployed").get("status") == "True"
                    and cluster.condition(name, "Paused").get("status") == "True",
                    timeout=240, message="generation 2 deployed and paused",
                )  # fmt: skip
                stable = f"{name}-int8-static"
                before = {"spec": cluster.get(DEPLOY, stable)["spec"], "versions": cluster.versions(DEPLOY, stable),  # type: ignore[index]
                          "pods": stable_pods(e2e, stable), "files": s3_digest(fs, f"{repository}/gen-1/int8-static")}  # fmt: skip
                assert before["pods"] and before["files"]
                assert cluster.status(name)["phase"] == "Deploying"
                await slimserve("abort", name, "-n", NS)
                aborted = await wait_phase(cluster, name, "RolledBack", timeout=60)
                assert cluster.condition(name, "Promoted")["reason"] == "Aborted"
                assert aborted["stableVariant"] == "int8-static" and "aborted by hand" in aborted["message"]
                await cluster.wait(lambda: cluster.get(DEPLOY, f"{name}-wrecked")["spec"].get("replicas") == 0,  # type: ignore[index]
                                   timeout=DRAIN_S + 30, message="the aborted canary scaled to 0")  # fmt: skip

                # 3. `retry` deploys and judges the RolledBack generation again from its compression output.
                await slimserve("resume", name, "-n", NS)
                await slimserve("retry", name, "-n", NS)
                retried = await cluster.wait(
                    lambda: (s := cluster.status(name)).get("retries") == 1 and s.get("phase") == "RolledBack" and s,
                    timeout=240, message="the retried generation judged",
                )  # fmt: skip
            assert retried["steps"] == [
                {"weight": 0, "verdict": "Fail", "checks": [{"name": "qualityDrop", "verdict": "Fail"}]}
            ]
            assert "qualityDrop failed" in retried["message"] and retried["stableVariant"] == "int8-static"
            jobs = cluster.names(JOB)
            assert f"{name}-package-g2-r1" in jobs and f"{name}-eval-g2-r1-s0" in jobs
            assert [j for j in jobs if "-compress-" in j] == [f"{name}-compress-g1"]  # gen 2 only chose again
            assert len([p for p in cluster.names("v1/pods") if p.startswith(f"{name}-compress-g1")]) == 1
            assert cluster.get(DEPLOY, stable)["spec"] == before["spec"]  # type: ignore[index]
            assert cluster.versions(DEPLOY, stable) == before["versions"]
            assert stable_pods(e2e, stable) == before["pods"]  # the same processes served throughout
            assert s3_digest(fs, f"{repository}/gen-1/int8-static") == before["files"]
            assert fs.exists(f"{repository}/gen-2/wrecked.complete")
            assert client.outcomes and client.failures == [], client.failures[:5]
            assert client.correct / len(client.outcomes) > 0.9  # clients never saw the wrecked model

    try:
        asyncio.run(scenario())
    finally:
        stop(moto.process)


@pytest.mark.timeout(240)
def test_a_failing_job_puts_its_reason_in_the_status(tmp_path: Path, worker_image: Path) -> None:
    body = bundled_example()
    name = body["metadata"]["name"] = "digits-typo"
    body["spec"]["data"]["evaluation"] = "data/tset.npz"  # not on the model volume

    async def scenario() -> None:
        async with e2e_cluster(tmp_path, worker_image) as e2e:
            cluster = e2e.cluster
            copy_inputs(EXAMPLE, e2e.pvc / f"{name}-models", name)
            await e2e.apply(body)
            status = await wait_phase(cluster, name, "Failed", timeout=180)
            assert "exit 2" in status["message"] and "spec.data.evaluation" in status["message"]
            assert "tset.npz" in status["message"] and "file not found" in status["message"]
            compressed = cluster.condition(name, "Compressed")
            assert compressed["reason"] == "CompressionFailed" and "tset.npz" in compressed["message"]
            # invalid input is never retried (podFailurePolicy), and nothing was packaged
            assert [n for n in cluster.names("v1/pods") if n.startswith(f"{name}-compress-g1")] != []
            assert len([n for n in cluster.names("v1/pods") if n.startswith(f"{name}-compress-g1")]) == 1
            assert cluster.get(JOB, f"{name}-package-g1") is None

    asyncio.run(scenario())
