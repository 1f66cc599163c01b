"""The Helm chart through Helm's Go SDK: rendered objects validated, RBAC, dashboard, drift."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import helm_python
import jsonschema
import kubernetes_validate
import pytest
import yaml

from slimserve.api import parse_compressed_model
from slimserve.api.crd import build_crd
from slimserve.operator import manifests
from slimserve.operator.dashboard import build_dashboard
from slimserve.operator.settings import OperatorSettings
from tests.kube.schemas import SCHEMAS, validate_custom

ROOT = Path(__file__).resolve().parents[2]
EVERYTHING_ON = {
    "watchNamespaces": ["models", "team-b"],
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus"}}},
    "prometheusRule": {"enabled": True, "stuckPhaseMinutes": 30},
    "grafanaDashboard": {"enabled": True, "namespace": "monitoring"},
    "triton": {"podMonitor": {"enabled": True, "interval": "5s"}, "autoBackend": "python"},
    "scaleDownDelaySeconds": 10,
    "global": {"imageRegistry": "registry.example.com"},  # Helm passes it down from an umbrella chart
    "storage": {"storageClass": "efs", "accessMode": "ReadWriteMany"},
    "gateway": {"name": "inference", "namespace": "gateways"},
    "image": {"tag": "1.2.3"},
    "extraArgs": ["--verbose"],
}


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    return manifests.render_chart(values)  # type: ignore[return-value]


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


@pytest.mark.parametrize("values", [{}, EVERYTHING_ON], ids=["defaults", "everything-on"])
def test_every_rendered_object_is_valid(values: dict[str, Any]) -> None:
    objects = render(values)
    assert objects
    for obj in objects:
        if obj["kind"] in SCHEMAS:
            validate_custom(obj)
        else:
            kubernetes_validate.validate(obj, "1.30", strict=True)


def test_chart_lints_clean() -> None:
    assert helm_python.lint(str(manifests.CHART))["errors"] == []


def test_values_schema_rejects_typos_and_bad_types() -> None:
    chart = helm_python.Chart.load(str(manifests.CHART))
    for bad in ({"metrics": {"port": "8080"}}, {"watchNamespace": ["x"]}, {"storage": {"accessMode": "RWX"}}):
        with pytest.raises(helm_python.HelmError):
            chart.render(values=bad, name="slimserve", namespace="x", is_install=True)


def test_operator_runs_once_non_root_with_settings_it_understands() -> None:
    (deployment,) = by_kind(render(EVERYTHING_ON), "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["image"] == "ghcr.io/slimserve/slimserve-operator:1.2.3"
    assert container["args"][-2:] == ["-m", "slimserve.operator"]
    assert "--namespace=models" in container["args"] and "--all-namespaces" not in container["args"]
    env = {e["name"]: e["value"] for e in container["env"] if e["name"].startswith("SLIMSERVE_")}
    fields = {f"SLIMSERVE_{name.upper()}" for name in OperatorSettings.model_fields}
    assert set(env) <= fields, f"env vars the operator ignores: {set(env) - fields}"
    settings = OperatorSettings(**{k[len("SLIMSERVE_") :].lower(): v for k, v in env.items()})
    assert settings.gateway_namespace == "gateways" and settings.model_storage_class == "efs"
    assert settings.worker_image == "ghcr.io/slimserve/slimserve-worker:0.1.0"
    assert settings.scrape_interval == "5s" and settings.auto_backend == "python"
    assert settings.scale_down_delay_seconds == 10


def _rules(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [rule for role in by_kind(objects, kind) for rule in role["rules"]]


def test_rbac_is_least_privilege() -> None:
    for values in ({}, EVERYTHING_ON):
        objects = render(values)
        for rule in _rules(objects, "ClusterRole") + _rules(objects, "Role"):
            assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
            assert "secrets" not in rule["resources"]
        # The worker Jobs need no API access: no ServiceAccount, Role or binding for them anywhere.
        assert not [o for o in objects if "worker" in o["metadata"]["name"]]
    scoped = render(EVERYTHING_ON)
    cluster_resources = {r for rule in _rules(scoped, "ClusterRole") for r in rule["resources"]}
    assert cluster_resources == {"customresourcedefinitions", "namespaces"}  # read-only discovery only
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]) for r in by_kind(scoped, "Role")}
    assert roles == {("models", "slimserve"), ("team-b", "slimserve")}


def test_rbac_covers_every_request_the_operator_sends() -> None:
    """Each (verb, resource) the operator's code sends, against the rules the chart grants."""
    granted = {(verb, rule_resource) for rule in _rules(render({}), "ClusterRole") for verb in rule["verbs"]
               for rule_resource in rule["resources"]}  # fmt: skip
    sent = {
        ("get", "jobs"), ("create", "jobs"), ("delete", "jobs"), ("get", "pods"), ("list", "pods"),
        ("get", "configmaps"), ("create", "configmaps"), ("patch", "configmaps"),
        ("get", "persistentvolumeclaims"), ("create", "persistentvolumeclaims"),
        ("get", "deployments"), ("create", "deployments"), ("patch", "deployments"), ("delete", "deployments"),
        ("get", "services"), ("create", "services"), ("patch", "services"), ("delete", "services"),
        ("get", "horizontalpodautoscalers"), ("create", "horizontalpodautoscalers"),
        ("patch", "horizontalpodautoscalers"), ("delete", "horizontalpodautoscalers"),
        ("get", "scaledobjects"), ("create", "scaledobjects"), ("delete", "scaledobjects"),
        ("get", "httproutes"), ("create", "httproutes"), ("patch", "httproutes"), ("get", "gateways"),
        ("patch", "compressedmodels/status"), ("update", "compressedmodels/finalizers"),
        ("list", "compressedmodels"), ("watch", "compressedmodels"), ("patch", "compressedmodels"),
        ("create", "events"),
    }  # fmt: skip
    assert sent - granted == set()


def test_triton_is_scraped_by_default_with_the_labels_the_gate_selects() -> None:
    (monitor,) = by_kind(render({}), "PodMonitor")
    assert set(monitor["spec"]["podTargetLabels"]) == {
        "slimserve.dev/model",
        "slimserve.dev/variant",
        "app.kubernetes.io/component",
    }
    assert monitor["spec"]["selector"]["matchExpressions"] == [
        {"key": "app.kubernetes.io/component", "operator": "In", "values": ["triton", "triton-control"]}
    ]
    (deployment,) = by_kind(render({}), "Deployment")
    env = {e["name"]: e["value"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["SLIMSERVE_SCRAPE_INTERVAL"] == monitor["spec"]["podMetricsEndpoints"][0]["interval"] == "3s"


def test_monitoring_objects_are_optional() -> None:
    kinds = {o["kind"] for o in render({"triton": {"podMonitor": {"enabled": False}}})}
    assert not kinds & {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
    assert not [c for c in by_kind(render({}), "ConfigMap")]
    on = render(EVERYTHING_ON)
    (rule,) = by_kind(on, "PrometheusRule")
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert {"SlimserveGateRolledBack", "SlimservePhaseStuck", "SlimserveCompressedModelFailed"} <= set(alerts)
    assert "> 1800" in alerts["SlimservePhaseStuck"]["expr"]
    (dashboard,) = by_kind(on, "ConfigMap")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["namespace"] == "monitoring"
    assert json.loads(dashboard["data"]["slimserve-rollout.json"]) == build_dashboard()


def test_dashboard_shows_what_sres_watch_during_a_rollout() -> None:
    dashboard = build_dashboard()
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for metric in (
        "nv_inference_request_success",
        "nv_inference_request_failure",
        "nv_inference_request_summary_us",
        "nv_inference_queue_duration_us",
        "nv_inference_count",
        "nv_inference_exec_count",
        "kube_deployment_status_replicas_available",
        "slimserve_canary_weight_percent",
        "slimserve_gate_threshold",
        "slimserve_variant_role",
    ):
        assert metric in exprs, metric
    titles = {p["title"] for p in dashboard["panels"]}
    assert {
        "Throughput per variant",
        "Latency p50 / p99 per variant",
        "Error rate per variant",
        "Queue time per request",
        "Average batch size",
        "Replicas",
        "Canary weight",
        "Stable vs canary",
    } == titles
    gated = [p for p in dashboard["panels"] if p.get("fieldConfig", {}).get("overrides")]
    assert len(gated) == 3  # thresholds drawn as dashed lines on throughput, latency and errors
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "namespace", "model"}


def test_generated_files_have_not_drifted() -> None:
    stale = [
        str(p.relative_to(ROOT)) for p, text in manifests.generated().items() if not p.exists() or p.read_text() != text
    ]
    assert stale == [], "run `python -m slimserve.operator.manifests`"


def test_chart_crd_is_the_api_crd() -> None:
    chart_crd = yaml.safe_load((manifests.CHART / "crds" / "compressedmodels.yaml").read_text())
    assert chart_crd == build_crd()


EXAMPLES = sorted((ROOT / "manifests" / "examples").glob("*.yaml")) + [
    ROOT / "examples" / "digits" / "compressedmodel.yaml"
]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_crs_are_valid_against_the_crd_schema(path: Path) -> None:
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for doc in yaml.safe_load_all(path.read_text()):
        jsonschema.Draft4Validator(schema).validate(doc)  # OpenAPI v3.0 keeps draft-4 exclusive bounds
        parse_compressed_model(doc)


def test_every_value_is_documented_with_a_param_line() -> None:
    source = (manifests.CHART / "values.yaml").read_text()
    documented = {line.split()[2] for line in source.splitlines() if line.strip().startswith("## @param ")}

    def leaves(node: Any, prefix: str = "") -> list[str]:
        if isinstance(node, dict) and node and prefix not in documented:
            return [leaf for k, v in node.items() for leaf in leaves(v, f"{prefix}.{k}" if prefix else k)]
        return [prefix]

    values = yaml.safe_load(source)
    assert [leaf for leaf in leaves(values) if leaf not in documented] == []
    for name in documented:  # and every @param names a real value
        node: Any = values
        for part in name.split("."):
            assert isinstance(node, dict) and part in node, name
            node = node[part]
