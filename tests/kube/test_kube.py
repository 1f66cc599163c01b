"""The operator's API client against the emulator: what each call does to the cluster, and what it says back."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from slimserve.operator.builders import SPEC_HASH_ANNOTATION
from slimserve.operator.kube import KubeApi, MissingAPI, NameTaken, NotFound
from slimserve.operator.metrics import REGISTRY
from slimserve.operator.settings import FIELD_MANAGER
from tests.kube.emulator import NS, Cluster, emulated_cluster

pytestmark = [
    pytest.mark.kube,
    pytest.mark.filterwarnings("ignore:read_binary is deprecated:DeprecationWarning"),  # inside kmock 0.8
]

OWNER = {"apiVersion": "slimserve.dev/v1alpha1", "kind": "CompressedModel", "name": "digits", "uid": "uid-digits",
         "controller": True}  # fmt: skip


def config_map(data: str, spec_hash: str, name: str = "digits-config") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "data": {"model": data},
            "metadata": {"name": name, "namespace": NS, "labels": {"slimserve.dev/model": "digits"},
                         "annotations": {SPEC_HASH_ANNOTATION: spec_hash}, "ownerReferences": [OWNER]}}  # fmt: skip


def job(image: str) -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "digits-compress-g1", "namespace": NS, "ownerReferences": [OWNER]},
            "spec": {"template": {"spec": {"restartPolicy": "Never",
                                           "containers": [{"name": "worker", "image": image}]}}}}  # fmt: skip


def requests_by(verb: str) -> float:
    return REGISTRY.get_sample_value("slimserve_operator_api_requests_total", {"verb": verb}) or 0.0


def run(tmp_path: Path, scenario: Any, gateway_api: bool = True) -> None:
    async def main() -> None:
        async with emulated_cluster(tmp_path, gateway_api=gateway_api) as cluster:
            kube = await KubeApi.connect()
            try:
                await scenario(cluster, kube)
            finally:
                await kube.close()

    asyncio.run(main())


def test_apply_creates_then_patches_only_what_changed_under_the_operators_field_manager(tmp_path: Path) -> None:
    async def scenario(cluster: Cluster, kube: KubeApi) -> None:
        applies = requests_by("apply")
        assert await kube.apply(config_map("a", "h1")) == "created"
        assert await kube.apply(config_map("a", "h1")) == "unchanged"
        assert cluster.versions("v1/configmaps", "digits-config") == 1
        assert await kube.apply(config_map("b", "h2")) == "patched"
        stored = cluster.get("v1/configmaps", "digits-config") or {}
        assert stored["data"] == {"model": "b"}
        assert [(m["manager"], m["operation"]) for m in stored["metadata"]["managedFields"]] == [
            (FIELD_MANAGER, "Apply")
        ]
        assert requests_by("apply") - applies == 2  # the unchanged one was only read
        assert kube.requests == 5  # a read before each write: read + apply, read, read + apply

    run(tmp_path, scenario)


def test_a_job_is_created_once_and_never_changed(tmp_path: Path) -> None:
    async def scenario(cluster: Cluster, kube: KubeApi) -> None:
        assert await kube.apply(job("worker:1")) == "created"
        assert await kube.apply(job("worker:2")) == "unchanged"  # 409: already there
        stored = cluster.get("batch/v1/jobs", "digits-compress-g1") or {}
        assert stored["spec"]["template"]["spec"]["containers"][0]["image"] == "worker:1"

    run(tmp_path, scenario)


def test_an_object_made_by_hand_under_a_childs_name_is_refused_and_left_alone(tmp_path: Path) -> None:
    async def scenario(cluster: Cluster, kube: KubeApi) -> None:
        mine = config_map("by hand", "h0")
        del mine["metadata"]["ownerReferences"]
        await cluster.request("POST", f"/api/v1/namespaces/{NS}/configmaps", mine)
        with pytest.raises(NameTaken, match="belongs to no controller"):
            await kube.apply(config_map("a", "h1"))
        assert (cluster.get("v1/configmaps", "digits-config") or {})["data"] == {"model": "by hand"}

    run(tmp_path, scenario)


def test_reads_and_deletes_of_what_is_not_there(tmp_path: Path) -> None:
    async def scenario(cluster: Cluster, kube: KubeApi) -> None:
        await kube.apply(config_map("a", "h1"))
        await kube.apply(config_map("a", "h1", name="other"))
        assert await kube.get("v1", "ConfigMap", NS, "nothing") is None
        assert [o["metadata"]["name"] for o in await kube.list("v1", "ConfigMap", NS, {"slimserve.dev/model": "digits"})]  # fmt: skip
        assert await kube.list("v1", "ConfigMap", NS, {"slimserve.dev/model": "other"}) == []
        assert await kube.delete("v1", "ConfigMap", NS, "other") is True
        assert await kube.delete("v1", "ConfigMap", NS, "other") is False
        assert cluster.get("v1/configmaps", "other") is None
        with pytest.raises(NotFound) as gone:  # the status and the API server's own message
            await kube.patch("v1", "ConfigMap", NS, "other", {"data": {"model": "b"}})
        assert gone.value.status == 404 and "not found" in str(gone.value)
        assert await kube.scale(NS, "no-such-deployment", 2) is False

    run(tmp_path, scenario)


def test_a_kind_the_cluster_does_not_serve(tmp_path: Path) -> None:
    route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
             "metadata": {"name": "digits", "namespace": NS, "ownerReferences": [OWNER]}, "spec": {}}  # fmt: skip

    async def scenario(cluster: Cluster, kube: KubeApi) -> None:
        with pytest.raises(MissingAPI, match="Gateway API CRDs are not installed"):
            await kube.apply(route)
        assert await kube.get("gateway.networking.k8s.io/v1", "HTTPRoute", NS, "digits") is None
        assert await kube.delete("gateway.networking.k8s.io/v1", "HTTPRoute", NS, "digits") is False
        with pytest.raises(NotFound):
            await kube.patch("gateway.networking.k8s.io/v1", "HTTPRoute", NS, "digits", {"spec": {}})

    run(tmp_path, scenario, gateway_api=False)
