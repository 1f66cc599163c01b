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
from slimserve.chart import manifests
from slimserve.chart.dashboard import build_dashboard
from slimserve.operator.handlers import seniority_priority
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
    "resyncMaxSeconds": 600,
    "workerLimit": 50,
}


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    return manifests.render_chart(values)  # type: ignore[return-value]


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


@pytest.mark.parametrize(
    "values",
    [{}, EVERYTHING_ON, {**EVERYTHING_ON, "replicaCount": 2}, {"replicaCount": 3}],
    ids=["defaults", "everything-on", "two-replicas-namespaced", "three-replicas-cluster-wide"],
)
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
    for bad in (
        {"metrics": {"port": "8080"}},
        {"watchNamespace": ["x"]},
        {"storage": {"accessMode": "RWX"}},
        {"replicaCount": 0},
        {"peering": {"lifetime": 20}},
    ):
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
    assert settings.resync_max_seconds == 600 and settings.worker_limit == 50
    assert "--standalone" in container["args"] and not [a for a in container["args"] if a.startswith("--peering")]


def _container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = by_kind(objects, "Deployment")
    return deployment["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


@pytest.mark.parametrize("namespaces", [["models", "team-b"], []], ids=["namespaced", "cluster-wide"])
def test_more_than_one_replica_peers_through_kopf_with_its_crd_objects_and_rbac(namespaces: list[str]) -> None:
    """kopf peering keeps one replica active: the CRD, an object per scope, the RBAC and --peering."""
    objects = render({"replicaCount": 2, "watchNamespaces": namespaces, "peering": {"lifetimeSeconds": 20}})
    (deployment,) = by_kind(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 2 and deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    container = _container(objects)
    assert "--peering=slimserve" in container["args"] and "--standalone" not in container["args"]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"  # kopf's identity
    lifetime = env["SLIMSERVE_PEERING_LIFETIME_SECONDS"]["value"]
    assert OperatorSettings(peering_lifetime_seconds=lifetime).peering_lifetime_seconds == 20
    # kopf watches and patches KopfPeering in each served namespace, ClusterKopfPeering when cluster-wide.
    kind, plural = ("KopfPeering", "kopfpeerings") if namespaces else ("ClusterKopfPeering", "clusterkopfpeerings")
    peerings = by_kind(objects, kind)
    assert sorted(p["metadata"].get("namespace", "") for p in peerings) == (namespaces or [""])
    assert {p["metadata"]["name"] for p in peerings} == {"slimserve"}
    for obj in peerings:
        validate_custom(obj)
    role_kind = "Role" if namespaces else "ClusterRole"
    for role in by_kind(objects, role_kind):
        if role["metadata"]["name"].endswith("-discovery") or _for_users(role):
            continue
        granted = {(v, r) for rule in role["rules"] if "kopf.dev" in rule["apiGroups"]
                   for v in rule["verbs"] for r in rule["resources"]}  # fmt: skip
        assert granted == {(v, plural) for v in ("get", "list", "watch", "patch")}
    crds = list(yaml.safe_load_all((manifests.CHART / "crds" / "kopfpeerings.yaml").read_text()))
    assert crds == manifests.build_peering_crds()
    assert {(c["spec"]["names"]["kind"], c["spec"]["scope"]) for c in crds} == {
        ("KopfPeering", "Namespaced"),
        ("ClusterKopfPeering", "Cluster"),
    }
    for crd in crds:
        kubernetes_validate.validate(crd, "1.30", strict=True)


def test_one_replica_runs_standalone_unless_peering_is_asked_for() -> None:
    objects = render({})
    assert "--standalone" in _container(objects)["args"]
    assert not by_kind(objects, "ClusterKopfPeering") and not by_kind(objects, "KopfPeering")
    peered = render({"peering": {"enabled": True, "name": "team-a"}})
    assert "--peering=team-a" in _container(peered)["args"]
    assert [p["metadata"]["name"] for p in by_kind(peered, "ClusterKopfPeering")] == ["team-a"]


def test_the_oldest_replica_has_the_highest_peering_priority() -> None:
    """kopf pauses every replica on a priority tie, and the highest one runs: oldest first, all below --dev."""
    older, newer = seniority_priority(1_700_000_000_000_000_000), seniority_priority(1_700_000_000_000_001_000)
    assert older > newer and older < 100  # `kopf freeze` (100) and `kopf run --dev` (666) still win


def _rules(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [rule for role in by_kind(objects, kind) for rule in role["rules"]]


def _for_users(role: dict[str, Any]) -> bool:
    """A ClusterRole that only aggregates into Kubernetes' view/edit/admin roles (bound to people, never
    to the operator)."""
    return any(k.startswith("rbac.authorization.k8s.io/aggregate-to-") for k in role["metadata"]["labels"])


def test_rbac_is_least_privilege() -> None:
    for values in ({}, EVERYTHING_ON):
        objects = render(values)
        for rule in _rules(objects, "ClusterRole") + _rules(objects, "Role"):
            assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
            assert "secrets" not in rule["resources"]
        # The worker Jobs need no API access: no ServiceAccount, Role or binding for them anywhere.
        assert not [o for o in objects if "worker" in o["metadata"]["name"]]
    scoped = render(EVERYTHING_ON)
    operator_roles = [r for r in by_kind(scoped, "ClusterRole") if not _for_users(r)]
    cluster_resources = {res for role in operator_roles for rule in role["rules"] for res in rule["resources"]}
    assert cluster_resources == {"customresourcedefinitions", "namespaces"}  # read-only discovery only
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]) for r in by_kind(scoped, "Role")}
    assert roles == {("models", "slimserve"), ("team-b", "slimserve")}


def test_users_bound_to_edit_can_steer_rollouts_and_view_only_reads() -> None:
    """`slimserve pause|resume|abort|promote|retry` patch the resource: `edit` (and `admin`) get that
    through aggregation, `view` gets reads only, and nothing else; `rbac.aggregateToUserRoles=false` drops both."""
    users = {r["metadata"]["name"].rsplit("-", 1)[-1]: r for r in by_kind(render({}), "ClusterRole") if _for_users(r)}
    assert set(users) == {"view", "edit"}
    assert users["view"]["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert {v for rule in users["view"]["rules"] for v in rule["verbs"]} == {"get", "list", "watch"}
    assert {k for k in users["edit"]["metadata"]["labels"] if "aggregate-to" in k} == {
        "rbac.authorization.k8s.io/aggregate-to-edit", "rbac.authorization.k8s.io/aggregate-to-admin"}  # fmt: skip
    (rule,) = users["edit"]["rules"]
    assert rule["resources"] == ["compressedmodels"] and "patch" in rule["verbs"]
    off = render({"rbac": {"aggregateToUserRoles": False}})
    assert not [r for r in by_kind(off, "ClusterRole") if _for_users(r)]


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
        "slimserve_quality_drop",
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
        "Quality drop of the candidate",
    } == titles
    gated = [p for p in dashboard["panels"] if p.get("fieldConfig", {}).get("overrides")]
    assert len(gated) == 4  # thresholds drawn as dashed lines on throughput, latency, errors and quality
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "namespace", "model"}


def test_generated_files_have_not_drifted() -> None:
    stale = [
        str(p.relative_to(ROOT)) for p, text in manifests.generated().items() if not p.exists() or p.read_text() != text
    ]
    assert stale == [], "run `python -m slimserve.chart.manifests`"


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
