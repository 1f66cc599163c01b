"""The test plays the cluster: kmock's KubernetesEmulator plus kopf's real reactor in-process.

The emulator stores and streams objects but runs no controllers, so these helpers do what
kube-controller-manager and the kubelet would: finish Jobs (with the compression summary in a
Pod's termination message), make Deployments ready, and write evaluator reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import attrs
import kmock
import kopf
import yaml

import slimserve.operator  # noqa: F401  (registers the handlers)
from slimserve.operator.settings import OperatorSettings

NS = "models"
CR = "slimserve.dev/v1alpha1/compressedmodels"
CR_URL = f"/apis/slimserve.dev/v1alpha1/namespaces/{NS}/compressedmodels"
MERGE = {"Content-Type": "application/merge-patch+json"}
APPLY_PATCH = "application/apply-patch+yaml"


class ClusterEmulator(kmock.KubernetesEmulator):
    """kmock's emulator plus the two things kopf relies on that an API server does on each write.

    - `metadata.resourceVersion` changes on every create and patch: kopf compares it to skip the
      stale watch events that precede its own patches (without it, a handler runs several times);
    - `metadata.uid` is set on create (a recreated object gets a new one);
    - `metadata.generation` starts at 1 and grows when a patch changes `spec`;
    - a JSON patch whose `test` of resourceVersion fails is 422 (kopf retries it next cycle), not 500;
    - a server-side apply (PATCH `application/apply-patch+yaml`) needs a `fieldManager`, creates the object
      when it is not there, and records its manager in `metadata.managedFields`.

    Server-side apply is approximated: an apply to an existing object is merged as kmock merges any
    patch (dicts recursively, lists and scalars replaced), with no per-field ownership, so a field the
    manager stopped applying stays, and `force` and conflicts between managers are not modelled. For
    the operator, which applies whole manifests it alone manages, the outcome is the same.
    """

    _versions = itertools.count(2)
    # API groups this cluster does not serve (their CRDs are not installed): every request is a 404.
    missing_groups: frozenset[str] = frozenset()
    # kmock matches every request against its whole request log (quadratic over a long run): the
    # benchmark keeps only the latest requests; tests keep all.
    request_history: int | None = None

    async def _handle(self, request: Any) -> Any:
        if self.request_history is not None:
            del self._requests[: -self.request_history]
        if request.resource is not None and request.resource.group in self.missing_groups:
            raise kmock.KubernetesError(status=404, reason="NotFound", message="the server could not find the resource")
        content_type = next((v for k, v in request.headers.items() if k.lower() == "content-type"), "")
        if request.action == kmock.action.UPDATE and content_type.split(";")[0] == APPLY_PATCH:
            request = self._apply(request)
        if request.resource is not None and request.action in (kmock.action.CREATE, kmock.action.UPDATE):
            version = str(next(self._versions))
            data = request.data
            if isinstance(data, list):  # JSON patch
                current = self._current(request)
                for op in data:
                    if (
                        op.get("op") == "test"
                        and op.get("path") == "/metadata/resourceVersion"
                        and op.get("value") != (current.get("metadata") or {}).get("resourceVersion")
                    ):
                        raise kmock.KubernetesError(status=422, reason="Invalid", message="resourceVersion changed")
                data.append({"op": "add", "path": "/metadata/resourceVersion", "value": version})
            elif isinstance(data, dict):
                meta = data.setdefault("metadata", {})
                meta["resourceVersion"] = version
                if request.action == kmock.action.CREATE:
                    meta.setdefault("generation", 1)
                    meta.setdefault("uid", f"uid-{version}")
                elif "spec" in data and request.subresource is None:
                    current = self._current(request)
                    if data["spec"] != {k: (current.get("spec") or {}).get(k) for k in data["spec"]}:
                        meta["generation"] = int((current.get("metadata") or {}).get("generation") or 1) + 1
        return await super()._handle(request)

    def _apply(self, request: Any) -> Any:
        """A server-side apply as the API server takes it: validated, its manager recorded, and a create
        when the object is not there (kmock itself answers a PATCH of a missing object with 404)."""
        manager = request.params.get("fieldManager")
        data = request.data if isinstance(request.data, dict) else {}
        meta = data.get("metadata") or {}
        if not manager:
            raise kmock.KubernetesError(status=400, reason="BadRequest", message="fieldManager is required for apply")
        if not data.get("apiVersion") or not data.get("kind") or meta.get("name") != request.name:
            raise kmock.KubernetesError(status=400, reason="BadRequest",
                                        message="an apply needs apiVersion, kind and the URL's metadata.name")  # fmt: skip
        meta["managedFields"] = [{"manager": manager, "operation": "Apply", "apiVersion": data["apiVersion"],
                                  "fieldsType": "FieldsV1"}]  # fmt: skip
        if self._current(request):
            return request
        # A create from here on: kmock's create branch and reaction, which find requests by identity in its log.
        created = attrs.evolve(request, action=kmock.action.CREATE, method="POST")
        index = next(i for i in range(len(self._requests) - 1, -1, -1) if self._requests[i] is request)
        self._requests[index] = created
        return created

    def _current(self, request: Any) -> dict[str, Any]:
        try:
            obj = self.objects[request.resource, request.namespace, request.name]
        except KeyError:
            return {}
        return {} if obj.deleted else dict(obj.raw)


@kopf.on.login()
def _login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    return kopf.login_with_kubeconfig(**kwargs)


def example_model(name: str = "digits", **spec_overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "source": {"uri": "s3://models/digits.onnx"},
        "data": {"calibration": "s3://data/cal.npz", "evaluation": "s3://data/test.npz"},
        "compression": {
            "variants": [
                {"name": "int8", "steps": [{"quantize": {"mode": "static"}}]},
                {"name": "fp16", "steps": [{"quantize": {"mode": "fp16"}}]},
            ]
        },
        "rollout": {"steps": [10, 50, 100], "stepDuration": "10s"},
        "gates": {"maxAccuracyDrop": 1.0},
    }
    spec.update(spec_overrides)
    return {
        "apiVersion": "slimserve.dev/v1alpha1",
        "kind": "CompressedModel",
        "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "generation": 1, "resourceVersion": "1"},
        "spec": spec,
    }


def _int8(**over: Any) -> dict[str, Any]:
    return {"name": "int8", "compressionRatio": 3.9, "metric": "accuracy", "drop": 0.2, "dropCI": [-0.1, 0.5],
            "dropUnit": "points", "speedup": 2.8, "latencyMsP99": 1.2, "throughputRps": 900.0, "sizeBytes": 1000,
            **over}  # fmt: skip


# What the compression Job prints as its termination message (`python -m slimserve.api.choice`).
SUMMARY = {"candidate": _int8(), "reason": "best within spec.gates.maxAccuracyDrop"}


def choice(name: str = "int8") -> dict[str, Any]:
    return {"candidate": _int8(name=name), "reason": "named by spec.rollout.candidate"}


def report(verdict: str, weight: int, failing: str = "p99VsBaseline") -> dict[str, Any]:
    """An evaluator Job's termination message (`slimserve evaluate --summary-file`) for one judged step."""
    if weight == 0:
        checks = [{"name": "qualityDrop", "verdict": verdict, "value": 0.2, "threshold": 1.0}]
    else:
        checks = [
            {"name": "samples", "verdict": "Pass", "value": 900.0, "threshold": 500.0},
            {"name": "errorRate", "verdict": "Pass", "value": 0.0, "threshold": 0.01},
            {"name": "p99VsBaseline", "verdict": "Pass", "value": 0.9, "threshold": 1.25},
            {"name": "throughputVsBaseline", "verdict": "Pass", "value": 1.2, "threshold": 0.85},
        ]
        for check in checks:
            if check["name"] == failing:
                check["verdict"] = verdict
    load = {
        "candidate": {"requests": 900, "failures": 0, "rps": 95.0, "p50Ms": 2.0, "p99Ms": 4.2},
        "control": {"requests": 900, "failures": 0, "rps": 95.0, "p50Ms": 2.1, "p99Ms": 4.5},
    }
    return {"candidate": "digits", "control": "digits", "weight": weight,
            "step": {"weight": weight, "verdict": verdict, "checks": checks},
            "quality": None, "load": None if weight == 0 else load}  # fmt: skip


EXIT_CODES = {"Pass": 0, "Fail": 3, "Inconclusive": 4}


class Cluster:
    """The emulator plus what the controllers would do."""

    def __init__(self, emulator: kmock.KubernetesEmulator) -> None:
        self.k = emulator

    # -- reading ---------------------------------------------------------------------------------
    def get(self, resource: str, name: str) -> dict[str, Any] | None:
        try:
            obj = self.k.objects[resource, NS, name]
        except KeyError:
            return None
        if obj.deleted:
            return None
        return json.loads(json.dumps(dict(obj.raw)))

    def names(self, resource: str) -> list[str]:
        wanted = kmock.resource(resource)
        return sorted(n for (r, ns, n), o in self.k.objects.items() if r == wanted and not o.deleted)

    def versions(self, resource: str, name: str) -> int:
        return len(self.k.objects[resource, NS, name].history)

    def status(self, name: str) -> dict[str, Any]:
        return (self.get(CR, name) or {}).get("status") or {}

    def condition(self, name: str, type: str) -> dict[str, Any]:
        return next((c for c in self.status(name).get("conditions", []) if c["type"] == type), {})

    async def wait(self, what: Callable[[], Any], timeout: float = 10.0, message: str = "") -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = what()
            if value:
                return value
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out waiting for {message or what}; status: {self.status_dump()}")

    def status_dump(self) -> str:
        return json.dumps({n: self.status(n) for n in self.names(CR)}, indent=1)[:3000]

    async def wait_phase(self, name: str, phase: str, timeout: float = 10.0) -> dict[str, Any]:
        return await self.wait(
            lambda: self.status(name).get("phase") == phase and self.status(name), timeout, f"{name} in phase {phase}"
        )

    # -- writing (through HTTP, so watchers see it) ----------------------------------------------
    async def request(self, method: str, url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
        async with self.k.request(method, url, json=body, headers=headers) as resp:
            assert resp.status < 300, await resp.text()
            return await resp.json()

    async def create_model(self, body: dict[str, Any]) -> None:
        await self.request("POST", CR_URL, body)

    async def change_spec(self, name: str, spec_patch: dict[str, Any]) -> None:
        """A user's `kubectl apply`: the emulator bumps metadata.generation."""
        await self.request("PATCH", f"{CR_URL}/{name}", {"spec": spec_patch}, MERGE)

    async def finish_job(
        self,
        name: str,
        ok: bool = True,
        summary: dict[str, Any] | None = None,
        reason: str = "BackoffLimitExceeded",
        message: str = "",
        exit_code: int | None = None,
        output: str | None = None,
    ) -> None:
        """What the Job controller and the kubelet do when a Job's pod ends: a Pod owned by the Job with the
        container's exit code and termination message, and the Job's condition."""
        job = self.get("batch/v1/jobs", name)
        assert job is not None, f"Job {name} does not exist"
        code = exit_code if exit_code is not None else (0 if ok else 1)
        text = output if output is not None else (json.dumps(summary) if summary is not None else "")
        await self.request("POST", f"/api/v1/namespaces/{NS}/pods", {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{name}-x{len(self.names('v1/pods'))}", "namespace": NS,
                         "labels": {"job-name": name, "batch.kubernetes.io/job-name": name},
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": name,
                                              "uid": job["metadata"]["uid"], "controller": True}]},
            "status": {"phase": "Succeeded" if code == 0 else "Failed", "containerStatuses": [{
                "name": "worker", "state": {"terminated": {
                    "exitCode": code, "reason": "Completed" if code == 0 else "Error", "message": text,
                    "finishedAt": f"2026-01-01T00:00:{len(self.names('v1/pods')):02d}Z"}}}]},
        })  # fmt: skip
        cond = (
            {"type": "Complete", "status": "True", "reason": "Completed"}
            if ok
            else {"type": "Failed", "status": "True", "reason": reason, "message": message}
        )
        status = {"conditions": [cond], "succeeded" if ok else "failed": 1}
        await self.request("PATCH", f"/apis/batch/v1/namespaces/{NS}/jobs/{name}", {"status": status}, MERGE)

    async def judge(self, name: str, body: dict[str, Any]) -> None:
        """An evaluator Job ends with its step in the termination message (exit 0, 3 or 4)."""
        verdict = body["step"]["verdict"]
        await self.finish_job(name, ok=verdict == "Pass", reason="PodFailurePolicy", exit_code=EXIT_CODES[verdict],
                              output=json.dumps(body))  # fmt: skip

    async def make_ready(self, deployment: str) -> None:
        """The Deployment controller's view of a rolled-out Deployment (every replica current and available)."""
        current = self.get("apps/v1/deployments", deployment) or {}
        replicas = (current.get("spec") or {}).get("replicas")
        n = 1 if replicas is None else int(replicas)
        generation = (current.get("metadata") or {}).get("generation", 1)
        await self.request("PATCH", f"/apis/apps/v1/namespaces/{NS}/deployments/{deployment}", {"status": {
            "observedGeneration": generation, "replicas": n, "updatedReplicas": n, "readyReplicas": n,
            "availableReplicas": n}}, MERGE)  # fmt: skip

    async def accept_route(self, name: str) -> None:
        """A Gateway controller accepting the HTTPRoute."""
        await self.request("PATCH", f"/apis/gateway.networking.k8s.io/v1/namespaces/{NS}/httproutes/{name}",
                           {"status": {"parents": [{"parentRef": {"name": "slimserve-gateway"},
                                                    "controllerName": "example.com/gateway",
                                                    "conditions": [{"type": "Accepted", "status": "True",
                                                                    "reason": "Accepted"}]}]}}, MERGE)  # fmt: skip


@contextlib.asynccontextmanager
async def emulated_cluster(tmp_path: Path, gateway_api: bool = True) -> AsyncIterator[Cluster]:
    """The emulator with the built-in kinds, the CRD, KEDA and (unless told otherwise) the Gateway API."""
    async with ClusterEmulator() as emulator, kmock.Server(emulator):
        emulator.resources.load_bundled()
        emulator.resources[CR] = {
            "kind": "CompressedModel",
            "singular": "compressedmodel",
            "namespaced": True,
            "verbs": ["list", "watch", "get", "create", "patch", "update", "delete"],
            "subresources": ["status"],
        }
        emulator.resources["gateway.networking.k8s.io/v1/httproutes"] = {"kind": "HTTPRoute", "namespaced": True}
        emulator.resources["gateway.networking.k8s.io/v1/gateways"] = {"kind": "Gateway", "namespaced": True}
        if not gateway_api:
            emulator.missing_groups = frozenset({"gateway.networking.k8s.io"})
        emulator.resources["keda.sh/v1alpha1/scaledobjects"] = {"kind": "ScaledObject", "namespaced": True}
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "kmock",
                    "clusters": [{"name": "kmock", "cluster": {"server": str(emulator.url).rstrip("/")}}],
                    "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock", "namespace": NS}}],
                    "users": [{"name": "kmock", "user": {"token": "test"}}],
                }
            )
        )
        with _env("KUBECONFIG", str(kubeconfig)), _tempdir(tmp_path):
            yield Cluster(emulator)


@contextlib.contextmanager
def _env(key: str, value: str) -> Any:
    import os

    old = os.environ.get(key)
    os.environ[key] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


@contextlib.contextmanager
def _tempdir(path: Path) -> Any:
    """The operator's API discovery cache (kubernetes_asyncio keeps one file per API server URL in the temp
    folder) in the test's own folder: every emulator has a new port, and /tmp would collect them."""
    old = tempfile.tempdir
    tempfile.tempdir = str(path)
    try:
        yield
    finally:
        tempfile.tempdir = old


@contextlib.asynccontextmanager
async def running_operator(interval: float = 0.1, **settings: Any) -> AsyncIterator[kopf.Memo]:
    """kopf's real reactor in its own thread and event loop, like a separate process.

    On stop, kopf cancels every task of its loop that it did not start with; in its own loop
    that cannot reach the emulator's server tasks, so an operator can stop and start again
    (the restart scenario) against the same emulator.
    """
    kopf_settings = kopf.OperatorSettings()
    kopf_settings.scanning.disabled = True
    kopf_settings.posting.enabled = False
    settings = {"scrape_interval": "1s", "scale_down_delay_seconds": 0, **settings}
    memo = kopf.Memo(
        operator_settings=OperatorSettings(metrics_port=0, reconcile_interval_seconds=interval, **settings)
    )
    stop = threading.Event()
    ready = threading.Event()

    def run() -> None:
        asyncio.run(
            kopf.operator(
                settings=kopf_settings, namespaces=[NS], standalone=True, stop_flag=stop, ready_flag=ready, memo=memo
            )
        )

    thread = threading.Thread(target=run, name="kopf-operator", daemon=True)
    thread.start()
    await asyncio.get_running_loop().run_in_executor(None, ready.wait, 10)
    try:
        yield memo
    finally:
        stop.set()
        await asyncio.get_running_loop().run_in_executor(None, thread.join, 15)
        assert not thread.is_alive(), "the operator did not stop"
