"""The e2e cluster: kmock's emulator, the real kopf operator, a node double that runs what it creates,
a real Prometheus scraping it as the chart's PodMonitor says, a Gateway, and a client calling the one
client-facing URL throughout."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from slimserve.api.status import TERMINAL_PHASES
from slimserve.chart import manifests
from slimserve.evaluator.prometheus import PromClient, find_prometheus
from slimserve.processes import ManagedProcess, free_port, wait_until
from tests.e2e.node import Api, Node, write_prometheus_config
from tests.e2e.worker_image import worker_venv
from tests.kube.emulator import NS, Cluster, emulated_cluster, running_operator

SCRAPE_INTERVAL = "1s"
GATEWAY_DELAY_S = 1.0  # a route change reaches the data plane this much later
DRAIN_S = 3.0


@pytest.fixture(scope="session")
def worker_image() -> Path:
    """The worker image as a venv (built once per machine, slimserve reinstalled from this tree)."""
    return worker_venv()


def _pod_monitor() -> tuple[list[str], list[str]]:
    """The chart's PodMonitor (defaults): the pod labels it copies onto series, the components it scrapes."""
    (monitor,) = [o for o in manifests.render_chart({}) if o["kind"] == "PodMonitor"]
    spec: Any = monitor["spec"]
    components = next(e["values"] for e in spec["selector"]["matchExpressions"]
                      if e["key"] == "app.kubernetes.io/component")  # fmt: skip
    return list(spec["podTargetLabels"]), list(components)


@dataclass
class E2E:
    cluster: Cluster
    node: Node
    root: Path
    prometheus: PromClient

    @property
    def pvc(self) -> Path:
        return self.root / "pvc"

    async def apply(self, body: dict[str, Any]) -> None:
        body = json.loads(json.dumps(body))
        body["metadata"]["namespace"] = NS
        await self.cluster.create_model(body)


@contextlib.asynccontextmanager
async def e2e_cluster(tmp_path: Path, image: Path) -> AsyncIterator[E2E]:
    root = tmp_path / "node"
    root.mkdir()
    labels, components = _pod_monitor()
    async with emulated_cluster(tmp_path) as cluster:
        # kmock matches each request against its whole log: keep it short over a minutes-long run, or the
        # emulator's CPU competes with the pods being measured.
        cluster.k.request_history = 300
        node = Node(Api(str(cluster.k.url), NS), root, image, {}, labels, components, GATEWAY_DELAY_S)
        prom_port = free_port()
        node.dns["prometheus.monitoring"] = prom_port
        config = write_prometheus_config(root / "prometheus", SCRAPE_INTERVAL, node.targets_file)
        prometheus = ManagedProcess(
            "prometheus",
            [
                find_prometheus(),
                f"--config.file={config}",
                f"--storage.tsdb.path={root / 'prometheus' / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
                "--log.level=warn",
            ],
            root / "prometheus" / "log.txt",
        )
        client = PromClient(f"http://127.0.0.1:{prom_port}")
        try:
            assert wait_until(client.ready, 30), prometheus.log_tail()
            await cluster.request("POST", f"/apis/gateway.networking.k8s.io/v1/namespaces/{NS}/gateways", {
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                "metadata": {"name": "slimserve-gateway", "namespace": NS},
                "spec": {"gatewayClassName": "e2e", "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]},
            })  # fmt: skip
            async with running_operator(
                interval=1.0, scrape_interval=SCRAPE_INTERVAL, auto_backend="python",
                scale_down_delay_seconds=DRAIN_S, prometheus_url="http://prometheus.monitoring.svc:9090",
                worker_image="slimserve-worker:e2e", triton_image="tritonserver:e2e",
            ):  # fmt: skip
                node.start()
                try:
                    yield E2E(cluster, node, root, client)
                finally:
                    await asyncio.to_thread(node.stop)
        finally:
            prometheus.stop()
        assert node.errors == [], node.errors[:5]


@dataclass
class Client:
    """A user of the model: calls the one client-facing URL every `period_s` and keeps every outcome."""

    url: str
    model: str
    x: np.ndarray
    y: np.ndarray
    period_s: float = 0.1
    outcomes: list[tuple[float, bool, str]] = field(default_factory=list)
    correct: int = 0
    stop_flag: threading.Event = field(default_factory=threading.Event)
    input: str = ""

    def _call(self, i: int) -> tuple[bool, str]:
        sample = self.x[i % len(self.x)][None].astype(np.float32)
        body = {"inputs": [{"name": self.input, "shape": list(sample.shape), "datatype": "FP32",
                            "data": sample.ravel().tolist()}]}  # fmt: skip
        request = urllib.request.Request(f"{self.url}/v2/models/{self.model}/infer", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
                answer = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return False, f"HTTP {exc.code}: {exc.read()[:200]!r}"
        except (urllib.error.URLError, OSError) as exc:
            return False, f"{type(exc).__name__}: {exc}"
        scores = np.asarray(answer["outputs"][0]["data"])
        self.correct += int(scores.argmax() == self.y[i % len(self.y)])
        return True, ""

    def _run(self) -> None:
        while not self.stop_flag.is_set():  # the model's metadata first: which input it takes
            try:
                with urllib.request.urlopen(f"{self.url}/v2/models/{self.model}", timeout=30) as response:  # noqa: S310
                    self.input = json.loads(response.read())["inputs"][0]["name"]
                break
            except (urllib.error.URLError, OSError):
                self.stop_flag.wait(0.5)
        for i in range(10**9):
            if self.stop_flag.is_set():
                return
            ok, detail = self._call(i)
            self.outcomes.append((time.monotonic(), ok, detail))
            self.stop_flag.wait(self.period_s)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Client]:
        """Calls in a thread of their own: nothing here blocks the event loop the emulator serves on."""
        thread = threading.Thread(target=self._run, name="client", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.stop_flag.set()
            await asyncio.to_thread(thread.join, 60)

    @property
    def failures(self) -> list[tuple[float, bool, str]]:
        return [o for o in self.outcomes if not o[1]]


async def wait_phase(cluster: Cluster, name: str, phase: str, timeout: float) -> dict[str, Any]:
    """The status once `name` is in `phase`; an assertion error as soon as it ends in another phase (its
    status says why), not after the whole timeout."""
    wanted = {phase, *TERMINAL_PHASES}
    status: dict[str, Any] = await cluster.wait(
        lambda: cluster.status(name).get("phase") in wanted and cluster.status(name),
        timeout,
        f"{name} in phase {phase}",
    )
    assert status["phase"] == phase, f"{name} ended {status['phase']}, not {phase}: {cluster.status_dump()}"
    return status


def digits_client(url: str, model: str, example: Path) -> Client:
    with np.load(example / "data" / "test.npz") as data:
        return Client(url, model, data["x"], data["y"])
