"""The Grafana dashboard against a real Prometheus scraping a real Triton (no Grafana server runs here).

Prometheus scrapes the targets under the labels a cluster gives them: Triton's with the chart's
PodMonitor's (namespace, pod, container, endpoint, job, and each of its `podTargetLabels` read from
the pod labels `build_triton_deployment` writes), the operator's gauges with the ServiceMonitor's
`honorLabels`. One Triton is scraped twice, as the stable and as the canary pod, so the panels'
per-variant grouping has two variants to tell apart. kube-state-metrics is the one double: a gauge
per Deployment the builders name. Every panel's every query, with the dashboard's variables resolved
as Grafana resolves them, must answer.
"""

from __future__ import annotations

import json
import math
import re
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from slimserve.api import parse_compressed_model
from slimserve.api.report import CompressionReport
from slimserve.chart.dashboard import build_dashboard
from slimserve.chart.manifests import render_chart
from slimserve.evaluator.prometheus import SCRAPE_INTERVAL_S, PrometheusServer
from slimserve.operator import builders as b
from slimserve.operator import metrics
from slimserve.operator.settings import OperatorSettings
from slimserve.processes import free_port, wait_until
from slimserve.triton.repository import build_repository
from slimserve.triton.server import TritonServer
from tests.kube.emulator import example_model

pytestmark = pytest.mark.serving

RELEASE_NS = "slimserve-system"
GATES = {"maxAccuracyDrop": 1.0, "maxP99Ms": 50, "maxErrorRate": 0.01, "minThroughputRps": 5}
STATUS = {"phase": "Progressing", "stableVariant": "baseline", "candidateVariant": "int8", "canaryWeight": 30,
          "observedGeneration": 1, "metric": "accuracy", "qualityDrop": 0.2}  # fmt: skip
# Grafana's $__rate_interval for an instant query: four scrape intervals.
RATE_INTERVAL = f"{4 * SCRAPE_INTERVAL_S}s"


def prometheus_label(name: str) -> str:
    """A Kubernetes label as prometheus-operator turns it into a target label."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def triton_targets(address: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Static configs for `address` scraped as each variant's pod, labelled as the PodMonitor labels it."""
    (monitor,) = [o for o in render_chart({}, namespace=RELEASE_NS) if o["kind"] == "PodMonitor"]
    spec = monitor["spec"]
    model = parse_compressed_model(example_model(gates=GATES))
    owner = b.Owner.from_body(example_model())
    settings = OperatorSettings(worker_image="w", triton_image="t", prometheus_url="http://p", scrape_interval="1s")
    configs, deployments = [], []
    for served, role in ((b.Served("baseline", 1), "stable"), (b.Served("int8", 1), "canary")):
        deployment = b.build_triton_deployment(model, owner, served, role, settings)  # type: ignore[arg-type]
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert {k: v["values"] for k, v in [(e["key"], e) for e in spec["selector"]["matchExpressions"]]} == {
            b.LABEL_COMPONENT: ["triton", "triton-control"]
        } and pod_labels[b.LABEL_COMPONENT] in ("triton", "triton-control")
        name = deployment["metadata"]["name"]
        labels = {prometheus_label(k): pod_labels[k] for k in spec["podTargetLabels"]}
        labels |= {
            "namespace": owner.namespace,
            "pod": f"{name}-7d9f8c6b5-x2x4z",
            "container": "triton",
            "endpoint": spec["podMetricsEndpoints"][0]["port"],
            "job": f"{monitor['metadata']['namespace']}/{monitor['metadata']['name']}",
        }
        configs.append({"targets": [address], "labels": labels})
        deployments.append(name)
    return configs, deployments


class ClusterPrometheus(PrometheusServer):
    """Prometheus with the cluster's scrape jobs: Triton pods, the operator, kube-state-metrics."""

    def __init__(self, jobs: list[dict[str, Any]], work_dir: Path) -> None:
        super().__init__([], work_dir)
        self.jobs = jobs

    def config(self) -> str:
        interval = f"{SCRAPE_INTERVAL_S}s"
        return yaml.safe_dump({"global": {"scrape_interval": interval, "evaluation_interval": interval},
                               "scrape_configs": self.jobs})  # fmt: skip


@pytest.fixture
def operator_metrics() -> Iterator[str]:
    """The operator's gauges for one model in its canary step, served as the operator serves them."""
    body = example_model(gates=GATES)
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    metrics.observe_model(parse_compressed_model(body), namespace, STATUS)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=metrics.REGISTRY)
    yield f"127.0.0.1:{port}"
    server.shutdown()
    thread.join(5)
    metrics.forget_model(namespace, name)


def kube_state_metrics(deployments: list[str]) -> tuple[str, Any]:
    registry = CollectorRegistry()
    gauge = Gauge("kube_deployment_status_replicas_available", "", ["namespace", "deployment"], registry=registry)
    for name in deployments:
        gauge.labels(example_model()["metadata"]["namespace"], name).set(1)
    port = free_port()
    server, _ = start_http_server(port, addr="127.0.0.1", registry=registry)
    return f"127.0.0.1:{port}", server


def query(url: str, expr: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}") as response:  # noqa: S310
        body = json.loads(response.read())
    assert body["status"] == "success", (expr, body)
    return body["data"]["result"]  # type: ignore[no-any-return]


def label_values(url: str, variable: str) -> list[str]:
    """Grafana's `label_values(selector, label)` as its Prometheus data source asks for it."""
    selector, label = re.fullmatch(r"label_values\((.*), (\w+)\)", variable).groups()  # type: ignore[union-attr]
    params = urllib.parse.urlencode({"match[]": selector})
    with urllib.request.urlopen(f"{url}/api/v1/label/{label}/values?{params}") as response:  # noqa: S310
        return json.loads(response.read())["data"]  # type: ignore[no-any-return]


def substitute(expr: str, values: dict[str, list[str]]) -> str:
    """A multi-value variable in a regex matcher, as Grafana writes it: `(a|b)`, or `a` alone."""
    for name, chosen in values.items():
        text = chosen[0] if len(chosen) == 1 else "(" + "|".join(re.escape(v) for v in chosen) + ")"
        expr = expr.replace(f"${name}", text)
    return expr.replace("$__rate_interval", RATE_INTERVAL)


def send_traffic(url: str, model: str, stop: threading.Event) -> None:
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 1, 8, 8], "datatype": "FP32",
                                   "data": np.zeros(64).tolist()}]}).encode()  # fmt: skip
    while not stop.is_set():
        request = urllib.request.Request(f"{url}/v2/models/{model}/infer", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request) as response:  # noqa: S310
            assert response.status == 200
        stop.wait(0.02)


def test_every_panel_answers_with_the_clusters_target_labels(
    compression_output: Path, operator_metrics: str, no_orphans: Path
) -> None:
    report = CompressionReport.model_validate_json((compression_output / "compression-report.json").read_text())
    repo = no_orphans / "repo"
    build_repository(report, compression_output, repo, "python", ["int8"])
    stop = threading.Event()
    with TritonServer(repo, no_orphans / "triton") as triton:
        triton_configs, deployments = triton_targets(triton.metrics_target)
        ksm, ksm_server = kube_state_metrics(deployments)
        operator_labels = {"namespace": RELEASE_NS, "pod": "slimserve-6f7d9-abcde", "service": "slimserve-metrics",
                           "endpoint": "metrics", "container": "operator", "job": "slimserve-metrics"}  # fmt: skip
        jobs = [
            {"job_name": "podMonitor/slimserve-system/slimserve-triton/0", "static_configs": triton_configs},
            {"job_name": "serviceMonitor/slimserve-system/slimserve/0", "honor_labels": True,
             "static_configs": [{"targets": [operator_metrics], "labels": operator_labels}]},
            {"job_name": "kube-state-metrics", "honor_labels": True, "static_configs": [{"targets": [ksm]}]},
        ]  # fmt: skip
        traffic = threading.Thread(target=send_traffic, args=(triton.url, "int8", stop), daemon=True)
        traffic.start()
        try:
            with ClusterPrometheus(jobs, no_orphans / "prom") as prom:
                assert wait_until(lambda: len(query(prom.url, "up == 1")) == 4, 20, interval=0.5)
                # Enough scrapes under traffic for a rate over $__rate_interval.
                assert wait_until(lambda: len(query(prom.url, substitute(
                    f"rate(nv_inference_request_success[{RATE_INTERVAL}]) > 0", {}))) == 2, 20, interval=0.5)  # fmt: skip
                dashboard = build_dashboard()
                chosen: dict[str, list[str]] = {}
                for variable in dashboard["templating"]["list"]:
                    if variable["type"] == "query":
                        chosen[variable["name"]] = label_values(prom.url, substitute(variable["query"], chosen))
                assert chosen["namespace"] == [example_model()["metadata"]["namespace"]]
                # Other models' series may be in the process-wide registry (the reactor tests run in this
                # process); the dashboard lists them all, and a user picks this one.
                assert "digits" in chosen["model"], chosen
                chosen["model"] = ["digits"]
                answers = {
                    (panel["title"], target["refId"]): query(prom.url, substitute(target["expr"], chosen))
                    for panel in dashboard["panels"]
                    for target in panel["targets"]
                }
        finally:
            stop.set()
            traffic.join(5)
            ksm_server.shutdown()
    empty = [key for key, result in answers.items() if not result]
    assert empty == [], f"panels that would show nothing: {empty}"
    not_finite = [
        key for key, result in answers.items() if not all(math.isfinite(float(r["value"][1])) for r in result)
    ]
    assert not_finite == []
    variants = {r["metric"].get("slimserve_dev_variant") for r in answers[("Throughput per variant", "A")]}
    assert variants == {"baseline", "int8"}
    # The table merges its queries on the variant: every column is one it shows or hides.
    table = next(p for p in dashboard["panels"] if p["type"] == "table")
    organize = table["transformations"][1]["options"]
    shown = set(organize["renameByName"]) | set(organize["excludeByName"]) | {"role"}
    columns = {label for (title, _), result in answers.items() if title == table["title"] for r in result
               for label in r["metric"]}  # fmt: skip
    assert columns <= shown, columns - shown
    roles = {r["metric"]["slimserve_dev_variant"]: r["metric"]["role"] for r in answers[(table["title"], "ROLE")]}
    assert roles == {"baseline": "stable", "int8": "canary"}
